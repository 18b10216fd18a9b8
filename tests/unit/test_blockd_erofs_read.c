/* blockd's EROFS reader against real images and two independent references.
 *
 * Builds a source tree (files around block boundaries, a 1000-entry
 * directory, nested directories, short and long symlinks, hard links,
 * devices, a fifo, xattrs incl. shared ones and a file capability, assorted
 * owners and mtimes), turns it into images with mkfs.erofs in several
 * variants (default, noinline, compact inodes, extended inodes with shared
 * xattrs, chunk-based, lz4) and with kindling's own writer, then walks each
 * image with the reader and compares every property with the source tree
 * (lstat, readlink, read, llistxattr/lgetxattr) and with the kernel's mount
 * of the same image (the same plus st_ino = nid, directory sizes and
 * d_type).  Then it damages images on purpose: truncation, a zeroed
 * superblock, nids past the end, bad dirent name offsets, unsorted names,
 * absurd xattr counts, inline data across a block boundary, and expects
 * -EUCLEAN (or the documented error) without a crash or a hang.
 *
 * Needs root (mknod, mount) and mkfs.erofs: otherwise exits 77.  Without a
 * working kernel mount the mount comparisons are skipped, the rest runs.
 */
#include "blockd/internal.h"
#undef LOG_COMPONENT
#include "chunker/internal.h"
#include "common/erofs_format.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

static unsigned passed, failed;

#define CHECK(cond, ...)                                                                                             \
	do {                                                                                                         \
		if (cond) {                                                                                          \
			passed++;                                                                                    \
		} else {                                                                                             \
			failed++;                                                                                    \
			fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                         \
			fprintf(stderr, __VA_ARGS__);                                                                \
			fputc('\n', stderr);                                                                         \
		}                                                                                                    \
	} while (0)

static char tmp[256];
static bool have_mount;

/* ---- block devices over a file or a buffer ------------------------------------------------ */

struct membuf {
	uint8_t *data;
	size_t len;
};

static int mem_read(void *ctx, uint64_t off, void *buf, size_t len)
{
	struct membuf *m = ctx;
	if (off > m->len || len > m->len - off)
		return -EINVAL;
	memcpy(buf, m->data + off, len);
	return 0;
}

static int load(const char *path, struct membuf *m)
{
	uint8_t *p;
	size_t n;
	int r = read_file_all(path, 1u << 30, &p, &n);
	if (r < 0) {
		fprintf(stderr, "read %s: %s\n", path, strerror(-r));
		return r;
	}
	m->data = p;
	m->len = n;
	return 0;
}

static struct blockdev mem_dev(struct membuf *m)
{
	return (struct blockdev){.read_at = mem_read, .size = m->len, .ctx = m};
}

/* ---- helpers ---------------------------------------------------------------------------------- */

static int run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int run(const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	int st = system(cmd);
	if (st != 0)
		fprintf(stderr, "command failed (%d): %s\n", st, cmd);
	return st == 0 ? 0 : -1;
}

static void put_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || (len && write(fd, data, len) != (ssize_t)len)) {
		perror(path);
		exit(1);
	}
	close(fd);
}

static void fill(uint8_t *p, size_t n, unsigned seed)
{
	uint32_t x = seed * 2654435761u + 1;
	for (size_t i = 0; i < n; i++) {
		x = x * 1103515245u + 12345u;
		p[i] = (uint8_t)(x >> 16);
	}
}

static void set_mtime(const char *path, time_t sec, long nsec)
{
	struct timespec ts[2] = {{sec, nsec}, {sec, nsec}};
	if (utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW) < 0)
		perror(path);
}

static void xset(const char *path, const char *name, const void *v, size_t n)
{
	if (lsetxattr(path, name, v, n, 0) < 0) {
		fprintf(stderr, "setxattr %s %s: %s\n", path, name, strerror(errno));
		exit(1);
	}
}

/* The source tree every mkfs image is built from. */
static void make_tree(const char *root)
{
	char p[512], q[512];
	static uint8_t buf[3 * 1024 * 1024];
	const size_t sizes[] = {0, 1, 100, 4095, 4096, 4097, 8191, 8192, 12289, 65536 + 17, 1048576 + 123,
				3 * 1048576};
	mkdir(root, 0755);
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		snprintf(p, sizeof(p), "%s/f%zu", root, sizes[i]);
		fill(buf, sizes[i], (unsigned)i + 1);
		put_file(p, buf, sizes[i]);
		set_mtime(p, 1600000000 + (time_t)i * 1000, (long)i * 1000003);
	}
	/* Compressible, so the lz4 image has a compressed inode. */
	memset(buf, 'A', 200000);
	snprintf(p, sizeof(p), "%s/compressible", root);
	put_file(p, buf, 200000);

	snprintf(p, sizeof(p), "%s/big", root);
	mkdir(p, 0755);
	for (int i = 0; i < 1000; i++) {
		char name[800];
		int pad = i % 7 == 0 ? 200 : i % 3;
		snprintf(name, sizeof(name), "%s/e%04d%.*s", p, i, pad,
			 "________________________________________________________________________________"
			 "________________________________________________________________________________"
			 "________________________________________________________________________________");
		char c = (char)('a' + i % 26);
		put_file(name, &c, 1);
	}
	snprintf(p, sizeof(p), "%s/a/b/c/d", root);
	mkdir_p(p, 0750);
	snprintf(p, sizeof(p), "%s/a/b/c/d/leaf", root);
	put_file(p, "leaf\n", 5);
	snprintf(p, sizeof(p), "%s/a/b/file", root);
	put_file(p, "in b\n", 5);

	snprintf(p, sizeof(p), "%s/sym-short", root);
	if (symlink("f100", p) < 0)
		perror(p);
	char target[3001];
	memset(target, 't', 3000);
	target[3000] = '\0';
	memcpy(target, "a/", 2);
	snprintf(p, sizeof(p), "%s/sym-long", root);
	if (symlink(target, p) < 0)
		perror(p);
	snprintf(p, sizeof(p), "%s/sym-dangling", root);
	if (symlink("/nonexistent/x", p) < 0)
		perror(p);

	snprintf(p, sizeof(p), "%s/f4097", root);
	snprintf(q, sizeof(q), "%s/hard1", root);
	if (link(p, q) < 0)
		perror(q);
	snprintf(q, sizeof(q), "%s/a/hard2", root);
	if (link(p, q) < 0)
		perror(q);

	snprintf(p, sizeof(p), "%s/dev-chr", root);
	if (mknod(p, S_IFCHR | 0620, makedev(1, 3)) < 0)
		perror(p);
	snprintf(p, sizeof(p), "%s/dev-blk", root);
	if (mknod(p, S_IFBLK | 0600, makedev(259, 70000)) < 0)
		perror(p);
	snprintf(p, sizeof(p), "%s/fifo", root);
	if (mkfifo(p, 0641) < 0)
		perror(p);

	/* Owners: small (compact inodes can hold them) and large. */
	snprintf(p, sizeof(p), "%s/f100", root);
	if (lchown(p, 1234, 5678) < 0)
		perror(p);
	snprintf(p, sizeof(p), "%s/f8191", root);
	if (lchown(p, 100000, 200000) < 0)
		perror(p);
	snprintf(p, sizeof(p), "%s/sym-short", root);
	if (lchown(p, 42, 43) < 0)
		perror(p);
	snprintf(p, sizeof(p), "%s/f1", root);
	chmod(p, 04755);

	/* xattrs: unique ones and ones several inodes share (mkfs makes those
	 * shared xattrs). */
	const uint8_t cap[20] = {0, 0, 0, 2, 0, 0x10, 0, 0};
	snprintf(p, sizeof(p), "%s/f1", root);
	xset(p, "user.one", "1", 1);
	xset(p, "user.shared", "shared-value", 12);
	xset(p, "trusted.overlay.opaque", "y", 1);
	snprintf(p, sizeof(p), "%s/f4096", root);
	xset(p, "security.capability", cap, sizeof(cap));
	xset(p, "user.shared", "shared-value", 12);
	xset(p, "user.empty", "", 0);
	snprintf(p, sizeof(p), "%s/a", root);
	xset(p, "user.shared", "shared-value", 12);
	xset(p, "user.dir", "on a directory", 14);
	static char bigval[3000];
	memset(bigval, 'v', sizeof(bigval));
	snprintf(p, sizeof(p), "%s/f100", root);
	xset(p, "user.bigvalue", bigval, sizeof(bigval));
	for (int i = 0; i < 20; i++) {
		char n[64], v[64];
		snprintf(n, sizeof(n), "user.many.%02d", i);
		snprintf(v, sizeof(v), "value %d", i);
		xset(p, n, v, strlen(v));
	}

	snprintf(p, sizeof(p), "%s/a/b/c", root);
	set_mtime(p, 1234567890, 5);
	snprintf(p, sizeof(p), "%s/sym-short", root);
	set_mtime(p, 1500000000, 0);
}

/* ---- reading a whole file, directory listing ------------------------------------------------- */

struct entry {
	char name[256];
	uint64_t nid, cookie;
	unsigned type;
};

struct listing {
	struct entry *e;
	size_t n, cap, stop_after;
};

static int list_cb(void *arg, const char *name, size_t name_len, uint64_t nid, unsigned file_type,
		   uint64_t next_cookie)
{
	struct listing *l = arg;
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 64;
		l->e = realloc(l->e, l->cap * sizeof(*l->e));
	}
	struct entry *e = &l->e[l->n++];
	snprintf(e->name, sizeof(e->name), "%.*s", (int)name_len, name);
	e->nid = nid;
	e->type = file_type;
	e->cookie = next_cookie;
	return l->stop_after && l->n >= l->stop_after;
}

static unsigned ft_of(mode_t m)
{
	switch (m & S_IFMT) {
	case S_IFREG: return EROFS_FT_REG_FILE;
	case S_IFDIR: return EROFS_FT_DIR;
	case S_IFCHR: return EROFS_FT_CHRDEV;
	case S_IFBLK: return EROFS_FT_BLKDEV;
	case S_IFIFO: return EROFS_FT_FIFO;
	case S_IFSOCK: return EROFS_FT_SOCK;
	case S_IFLNK: return EROFS_FT_SYMLINK;
	default: return EROFS_FT_UNKNOWN;
	}
}

static unsigned dt_to_ft(unsigned char dt)
{
	switch (dt) {
	case DT_REG: return EROFS_FT_REG_FILE;
	case DT_DIR: return EROFS_FT_DIR;
	case DT_CHR: return EROFS_FT_CHRDEV;
	case DT_BLK: return EROFS_FT_BLKDEV;
	case DT_FIFO: return EROFS_FT_FIFO;
	case DT_SOCK: return EROFS_FT_SOCK;
	case DT_LNK: return EROFS_FT_SYMLINK;
	default: return EROFS_FT_UNKNOWN;
	}
}

static int name_sort(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted, NUL-separated names of a listxattr buffer, as one string for
 * comparison ("a\nb\n"). */
static char *xattr_names(const char *list, size_t len)
{
	char *names[512];
	size_t n = 0;
	for (size_t off = 0; off < len && n < 512; off += strlen(list + off) + 1)
		names[n++] = (char *)list + off;
	qsort(names, n, sizeof(*names), name_sort);
	size_t total = 1;
	for (size_t i = 0; i < n; i++)
		total += strlen(names[i]) + 1;
	char *s = calloc(1, total);
	for (size_t i = 0; i < n; i++) {
		strcat(s, names[i]);
		strcat(s, "\n");
	}
	return s;
}

/* ---- comparing an image with a reference tree ------------------------------------------------------ */

enum {
	CMP_MTIME = 1,		/* the reference's mtimes must match (sec) */
	CMP_MTIME_NSEC = 2,
	CMP_INO = 4,		/* st_ino == nid (the kernel's numbering) */
	CMP_DIRSIZE = 8,	/* directory sizes and nlink */
	CMP_NO_COMPRESSED = 16, /* the image has no compressed inodes */
};

struct cmp_stats {
	unsigned entries, files, bytes_mb, dirs, links, xattrs;
};

static void compare_xattrs(struct erofs_fs *fs, uint64_t nid, const char *ref, const char *rel)
{
	char a[16384], b[16384];
	size_t alen = 0, need = 0;
	int r = erofs_listxattr(fs, nid, NULL, 0, &need);
	CHECK(r == 0, "%s: listxattr size: %s", rel, strerror(-r));
	r = erofs_listxattr(fs, nid, a, sizeof(a), &alen);
	CHECK(r == 0 && alen == need, "%s: listxattr: %d, %zu vs %zu", rel, r, alen, need);
	if (alen) {
		size_t dummy;
		CHECK(erofs_listxattr(fs, nid, a, alen - 1, &dummy) == -ERANGE, "%s: short listxattr buffer", rel);
	}
	ssize_t blen = llistxattr(ref, b, sizeof(b));
	if (blen < 0)
		blen = 0;
	char *sa = xattr_names(a, alen), *sb = xattr_names(b, (size_t)blen);
	CHECK(!strcmp(sa, sb), "%s: xattr names differ: reader [%s] reference [%s]", rel, sa, sb);
	free(sa);
	free(sb);
	for (size_t off = 0; off < (size_t)blen; off += strlen(b + off) + 1) {
		const char *name = b + off;
		static char va[70000], vb[70000];
		ssize_t nb = lgetxattr(ref, name, vb, sizeof(vb));
		size_t na = 0, nz = 0;
		r = erofs_getxattr(fs, nid, name, va, sizeof(va), &na);
		CHECK(r == 0 && nb >= 0 && na == (size_t)nb && !memcmp(va, vb, na), "%s: xattr %s: %d, %zu vs %zd",
		      rel, name, r, na, nb);
		r = erofs_getxattr(fs, nid, name, NULL, 0, &nz);
		CHECK(r == 0 && nz == na, "%s: xattr %s size query: %d %zu", rel, name, r, nz);
		if (na > 1) {
			r = erofs_getxattr(fs, nid, name, va, na - 1, &nz);
			CHECK(r == -ERANGE, "%s: xattr %s short buffer: %d", rel, name, r);
		}
	}
	size_t n;
	r = erofs_getxattr(fs, nid, "user.definitely-not-there", a, sizeof(a), &n);
	CHECK(r == -ENODATA, "%s: missing xattr: %d", rel, r);
}

static void compare_file(struct erofs_fs *fs, uint64_t nid, const char *ref, const char *rel, uint64_t size,
			 struct cmp_stats *cs)
{
	uint8_t *want = NULL, *got;
	size_t wlen = 0;
	if (read_file_all(ref, 1u << 30, &want, &wlen) < 0) {
		CHECK(0, "%s: cannot read reference", rel);
		return;
	}
	CHECK(wlen == size, "%s: reference has %zu bytes, image %llu", rel, wlen, (unsigned long long)size);
	got = malloc(wlen + 8192);
	/* Odd piece sizes cross every block and chunk boundary differently. */
	const size_t pieces[] = {wlen + 100, 4096, 3001, 65536 + 511};
	for (size_t k = 0; k < sizeof(pieces) / sizeof(pieces[0]); k++) {
		size_t off = 0, n = 0;
		int r = 0;
		memset(got, 0x5a, wlen + 8192);
		while (off < wlen) {
			r = erofs_read(fs, nid, off, got + off, pieces[k], &n);
			if (r < 0 || !n)
				break;
			off += n;
		}
		CHECK(r == 0 && off == wlen && !memcmp(got, want, wlen), "%s: content (pieces of %zu): r=%d off=%zu",
		      rel, pieces[k], r, off);
		if (k >= 1 && wlen < 20000)
			break;
	}
	size_t n = 7;
	int r = erofs_read(fs, nid, wlen, got, 100, &n);
	CHECK(r == 0 && n == 0, "%s: read at EOF: %d %zu", rel, r, n);
	r = erofs_read(fs, nid, UINT64_MAX - 10, got, 100, &n);
	CHECK(r == 0 && n == 0, "%s: read far past EOF: %d %zu", rel, r, n);
	if (wlen > 10) {
		r = erofs_read(fs, nid, wlen - 3, got, 100, &n);
		CHECK(r == 0 && n == 3 && !memcmp(got, want + wlen - 3, 3), "%s: read over EOF: %d %zu", rel, r, n);
	}
	cs->files++;
	cs->bytes_mb += (unsigned)(wlen >> 20);
	free(want);
	free(got);
}

/* Walk the image from the root (an explicit stack, no recursion) and compare
 * every entry with the same path under |ref|. */
static void compare_tree(struct erofs_fs *fs, const char *ref, unsigned flags, struct cmp_stats *cs)
{
	struct item {
		uint64_t nid, parent;
		char rel[1024];
	};
	size_t cap = 4096, n = 0;
	struct item *stack = malloc(cap * sizeof(*stack));
	stack[n++] = (struct item){erofs_root(fs), erofs_root(fs), ""};
	memset(cs, 0, sizeof(*cs));

	while (n) {
		struct item it = stack[--n];
		char path[2048];
		snprintf(path, sizeof(path), "%s%s", ref, it.rel);
		const char *rel = it.rel[0] ? it.rel : "/";
		struct erofs_stat st;
		struct stat ls;
		int r = erofs_getattr(fs, it.nid, &st);
		CHECK(r == 0, "%s: getattr: %s", rel, strerror(-r));
		if (r < 0 || lstat(path, &ls) < 0) {
			CHECK(r < 0 ? true : false, "%s: missing in the reference", rel);
			continue;
		}
		cs->entries++;
		CHECK(st.nid == it.nid, "%s: nid %llu", rel, (unsigned long long)st.nid);
		CHECK(st.mode == ls.st_mode, "%s: mode %o vs %o", rel, st.mode, ls.st_mode);
		CHECK(st.uid == ls.st_uid && st.gid == ls.st_gid, "%s: owner %u:%u vs %u:%u", rel, st.uid, st.gid,
		      ls.st_uid, ls.st_gid);
		if (!S_ISDIR(ls.st_mode) || (flags & CMP_DIRSIZE)) {
			CHECK(st.nlink == ls.st_nlink, "%s: nlink %u vs %lu", rel, st.nlink,
			      (unsigned long)ls.st_nlink);
			CHECK(st.size == (uint64_t)ls.st_size, "%s: size %llu vs %lld", rel,
			      (unsigned long long)st.size, (long long)ls.st_size);
		}
		if (flags & CMP_MTIME)
			CHECK(st.mtime == ls.st_mtim.tv_sec, "%s: mtime %lld vs %lld", rel, (long long)st.mtime,
			      (long long)ls.st_mtim.tv_sec);
		if (flags & CMP_MTIME_NSEC)
			CHECK(st.mtime_nsec == (uint32_t)ls.st_mtim.tv_nsec, "%s: mtime nsec %u vs %ld", rel,
			      st.mtime_nsec, ls.st_mtim.tv_nsec);
		if (flags & CMP_INO)
			CHECK(st.ino == ls.st_ino && (st.nid == 0 || st.ino == st.nid), "%s: ino %llu vs %llu", rel,
			      (unsigned long long)st.ino, (unsigned long long)ls.st_ino);
		if (S_ISCHR(ls.st_mode) || S_ISBLK(ls.st_mode))
			CHECK(st.rdev_major == major(ls.st_rdev) && st.rdev_minor == minor(ls.st_rdev),
			      "%s: rdev %u:%u vs %u:%u", rel, st.rdev_major, st.rdev_minor, major(ls.st_rdev),
			      minor(ls.st_rdev));
		compare_xattrs(fs, it.nid, path, rel);

		char lbuf[8192];
		size_t got;
		if (S_ISREG(ls.st_mode)) {
			struct erofs_stat cst;
			r = 0;
			if (!(flags & CMP_NO_COMPRESSED)) {
				r = erofs_read(fs, it.nid, 0, lbuf, 1, &got);
				if (r == -EOPNOTSUPP)
					continue; /* compressed: refused, as documented */
			}
			compare_file(fs, it.nid, path, rel, st.size, cs);
			CHECK(erofs_readlink(fs, it.nid, lbuf, sizeof(lbuf)) == -EINVAL, "%s: readlink on a file", rel);
			CHECK(erofs_lookup(fs, it.nid, "x", &cst) == -ENOTDIR, "%s: lookup in a file", rel);
			CHECK(erofs_readdir(fs, it.nid, 0, list_cb, &(struct listing){0}) == -ENOTDIR,
			      "%s: readdir of a file", rel);
		} else if (S_ISLNK(ls.st_mode)) {
			char want[8192];
			ssize_t wl = readlink(path, want, sizeof(want) - 1);
			r = erofs_readlink(fs, it.nid, lbuf, sizeof(lbuf));
			CHECK(wl >= 0 && r == 0 && strlen(lbuf) == (size_t)wl && !memcmp(lbuf, want, (size_t)wl),
			      "%s: readlink %d", rel, r);
			if (wl > 0)
				CHECK(erofs_readlink(fs, it.nid, lbuf, (size_t)wl) == -ERANGE, "%s: readlink ERANGE", rel);
			CHECK(erofs_read(fs, it.nid, 0, lbuf, 10, &got) == -EINVAL, "%s: read of a symlink", rel);
			cs->links++;
		} else if (S_ISDIR(ls.st_mode)) {
			cs->dirs++;
			CHECK(erofs_read(fs, it.nid, 0, lbuf, 10, &got) == -EISDIR, "%s: read of a directory", rel);
			struct listing l = {0};
			r = erofs_readdir(fs, it.nid, 0, list_cb, &l);
			CHECK(r == 0, "%s: readdir: %s", rel, strerror(-r));
			/* The reference's names and types, sorted. */
			DIR *d = opendir(path);
			char **names = NULL;
			unsigned char *types = NULL;
			size_t nn = 0;
			struct dirent *de;
			while (d && (de = readdir(d))) {
				names = realloc(names, (nn + 1) * sizeof(*names));
				types = realloc(types, nn + 1);
				names[nn] = strdup(de->d_name);
				types[nn] = de->d_type;
				nn++;
			}
			if (d)
				closedir(d);
			bool same = nn == l.n, sorted = true;
			size_t dots = 0;
			for (size_t i = 0; i < l.n; i++) {
				struct entry *e = &l.e[i];
				if (i && strcmp(l.e[i - 1].name, e->name) >= 0)
					sorted = false;
				if (!strcmp(e->name, ".")) {
					dots++;
					CHECK(e->nid == it.nid, "%s: \".\" is nid %llu", rel, (unsigned long long)e->nid);
					continue;
				}
				if (!strcmp(e->name, "..")) {
					dots++;
					CHECK(e->nid == it.parent, "%s: \"..\" is nid %llu, parent %llu", rel,
					      (unsigned long long)e->nid, (unsigned long long)it.parent);
					continue;
				}
				size_t j = 0;
				while (j < nn && strcmp(names[j], e->name))
					j++;
				if (j == nn) {
					same = false;
					continue;
				}
				struct stat cs2;
				char cp[2048];
				int k = snprintf(cp, sizeof(cp), "%s/%s", path, e->name);
				if (k > 0 && (size_t)k < sizeof(cp) && lstat(cp, &cs2) == 0)
					CHECK(e->type == ft_of(cs2.st_mode), "%s/%s: file type %u", rel, e->name, e->type);
				if (types[j] != DT_UNKNOWN)
					CHECK(e->type == dt_to_ft(types[j]), "%s/%s: d_type", rel, e->name);
				/* lookup agrees with readdir */
				struct erofs_stat lst;
				r = erofs_lookup(fs, it.nid, e->name, &lst);
				CHECK(r == 0 && lst.nid == e->nid, "%s/%s: lookup %d nid %llu vs %llu", rel, e->name, r,
				      (unsigned long long)lst.nid, (unsigned long long)e->nid);
				if (n == cap) {
					cap *= 2;
					stack = realloc(stack, cap * sizeof(*stack));
				}
				struct item *c = &stack[n++];
				c->nid = e->nid;
				c->parent = it.nid;
				int kk = snprintf(c->rel, sizeof(c->rel), "%s/%s", it.rel, e->name);
				if (kk < 0 || (size_t)kk >= sizeof(c->rel))
					n--; /* too deep for this test's paths: skip */
			}
			CHECK(same && dots == 2, "%s: listing differs (%zu entries vs %zu, %zu dots)", rel, l.n, nn, dots);
			CHECK(sorted, "%s: listing is not in name order", rel);
			/* Names that are not there: before, between and after. */
			struct erofs_stat lst;
			const char *absent[] = {"\x01", "-", "e0000_x", "m", "zzzzzz", "e0500 "};
			for (size_t i = 0; i < sizeof(absent) / sizeof(absent[0]); i++) {
				size_t j = 0;
				while (j < nn && strcmp(names[j], absent[i]))
					j++;
				if (j == nn)
					CHECK(erofs_lookup(fs, it.nid, absent[i], &lst) == -ENOENT, "%s: lookup \"%s\"",
					      rel, absent[i]);
			}
			char longname[300];
			memset(longname, 'q', 299);
			longname[299] = '\0';
			CHECK(erofs_lookup(fs, it.nid, longname, &lst) == -ENOENT, "%s: over-long name", rel);
			CHECK(erofs_lookup(fs, it.nid, "", &lst) == -ENOENT, "%s: empty name", rel);
			/* Resuming from every 97th cookie gives the rest of the listing. */
			for (size_t i = 0; i < l.n; i += 97) {
				struct listing rest = {0};
				r = erofs_readdir(fs, it.nid, l.e[i].cookie, list_cb, &rest);
				bool ok = r == 0 && rest.n == l.n - i - 1;
				for (size_t k = 0; ok && k < rest.n; k++)
					ok = !strcmp(rest.e[k].name, l.e[i + 1 + k].name) &&
					     rest.e[k].cookie == l.e[i + 1 + k].cookie;
				CHECK(ok, "%s: readdir resumed after entry %zu", rel, i);
				free(rest.e);
			}
			struct listing one = {.stop_after = 1};
			r = erofs_readdir(fs, it.nid, 0, list_cb, &one);
			CHECK(r == 0 && one.n == 1, "%s: readdir stops when asked", rel);
			free(one.e);
			for (size_t i = 0; i < nn; i++)
				free(names[i]);
			free(names);
			free(types);
			free(l.e);
		}
	}
	free(stack);
}

/* ---- images ---------------------------------------------------------------------------------------------- */

struct variant {
	const char *name, *opts;
	unsigned src_flags; /* what the source tree must agree on */
	bool compressed;
};

static void check_image(const char *img, const char *src, const struct variant *v)
{
	struct membuf m;
	if (load(img, &m) < 0) {
		CHECK(0, "%s: load", v->name);
		return;
	}
	struct blockdev dev = mem_dev(&m);
	struct erofs_fs *fs;
	int r = erofs_open(&dev, &fs);
	CHECK(r == 0, "%s: open: %s", v->name, strerror(-r));
	if (r < 0) {
		free(m.data);
		return;
	}
	struct cmp_stats cs;
	unsigned f = v->src_flags | (v->compressed ? 0 : CMP_NO_COMPRESSED);
	unsigned before = failed;
	if (src) {
		compare_tree(fs, src, f, &cs);
		printf("  %-22s vs source: %u entries, %u files, %u dirs, %u symlinks\n", v->name, cs.entries, cs.files,
		       cs.dirs, cs.links);
	}
	if (have_mount) {
		char mnt[300];
		snprintf(mnt, sizeof(mnt), "%s/mnt", tmp);
		mkdir(mnt, 0755);
		if (run("mount -t erofs -o ro %s %s", img, mnt) == 0) {
			compare_tree(fs, mnt, CMP_MTIME | CMP_MTIME_NSEC | CMP_INO | CMP_DIRSIZE |
						      (v->compressed ? 0 : CMP_NO_COMPRESSED),
				     &cs);
			printf("  %-22s vs kernel: %u entries, %u files, %u dirs, %u symlinks\n", v->name, cs.entries,
			       cs.files, cs.dirs, cs.links);
			umount(mnt);
		} else {
			CHECK(0, "%s: kernel mount", v->name);
		}
	}
	if (failed != before)
		fprintf(stderr, "  (failures above are in image %s)\n", v->name);
	erofs_close(fs);
	free(m.data);
}

/* kindling's writer: a small tree, data below meta_off, metadata at meta_off. */
static int write_kindling_image(const char *img)
{
	struct fs_inode *root = fs_inode_new(S_IFDIR | 0755);
	uint64_t data_off = EROFS_BLOCK_SIZE;
	static uint8_t data[CHUNK_SIZE];
	int fd = open(img, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (!root || fd < 0)
		return -1;
	const size_t sizes[] = {0, 1, 4096, 5000, 70000};
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		struct fs_inode *f = fs_inode_new(S_IFREG | 0644);
		char name[32];
		f->size = sizes[i];
		f->mtime = 1700000000 + (int64_t)i;
		f->mtime_nsec = (uint32_t)i * 7;
		f->uid = (uint32_t)i * 1000;
		f->gid = 70000;
		if (sizes[i]) {
			f->data_off = data_off;
			fill(data, sizes[i], 77 + (unsigned)i);
			if (pwrite(fd, data, sizes[i], (off_t)data_off) != (ssize_t)sizes[i])
				return -1;
			data_off += (sizes[i] + EROFS_BLOCK_SIZE - 1) / EROFS_BLOCK_SIZE * EROFS_BLOCK_SIZE;
		}
		snprintf(name, sizeof(name), "file%zu", sizes[i]);
		fs_dir_add(root, name, f, 0);
		if (i == 2) {
			fs_dir_add(root, "hardlink", f, 0);
			fs_inode_set_xattr(f, "user.k", "kindling", 8);
			const uint8_t cap[20] = {0, 0, 0, 2, 0, 0x20, 0, 0};
			fs_inode_set_xattr(f, "security.capability", cap, sizeof(cap));
		}
		fs_inode_unref(f);
	}
	struct fs_inode *dir = fs_inode_new(S_IFDIR | 0700);
	for (int i = 0; i < 600; i++) {
		char name[64];
		snprintf(name, sizeof(name), "entry-%05d-padding-padding", i);
		struct fs_inode *e = fs_inode_new(i % 2 ? S_IFIFO | 0644 : S_IFCHR | 0600);
		e->rdev_major = 4;
		e->rdev_minor = (uint32_t)i;
		fs_dir_add(dir, name, e, 0);
		fs_inode_unref(e);
	}
	fs_inode_set_xattr(dir, "trusted.overlay.opaque", "y", 1);
	fs_dir_add(root, "many", dir, 0);
	fs_inode_unref(dir);
	struct fs_inode *l = fs_inode_new(S_IFLNK | 0777);
	l->symlink = strdup("many/entry-00001-padding-padding");
	l->size = strlen(l->symlink);
	fs_dir_add(root, "link", l, 0);
	fs_inode_unref(l);

	struct erofs_image_layout lay;
	int r = erofs_write_metadata(root, CHUNK_SIZE, &lay);
	fs_inode_unref(root);
	if (r < 0)
		return r;
	if (pwrite(fd, lay.superblock, sizeof(lay.superblock), 0) != (ssize_t)sizeof(lay.superblock) ||
	    pwrite(fd, lay.meta, lay.meta_len, (off_t)lay.meta_off) != (ssize_t)lay.meta_len ||
	    ftruncate(fd, (off_t)lay.image_size) < 0)
		r = -1;
	erofs_layout_cleanup(&lay);
	close(fd);
	return r;
}

/* ---- hostile images ---------------------------------------------------------------------------------------- */

/* Walk everything; return the first error other than the documented
 * ENOENT/EOPNOTSUPP-style answers (or 0). */
struct walkres {
	int first_err;
	unsigned errs, other;
};

static void note(struct walkres *w, int r)
{
	if (r == 0 || r == -ENOENT || r == -ENOTDIR || r == -EISDIR || r == -EINVAL || r == -ENODATA)
		return;
	if (!w->first_err)
		w->first_err = r;
	if (r == -EUCLEAN)
		w->errs++;
	else if (r != -EOPNOTSUPP && r != -ERANGE)
		w->other++;
}

static void walk_all(struct erofs_fs *fs, struct walkres *w)
{
	uint64_t queue[4096];
	size_t head = 0, tail = 0;
	queue[tail++] = erofs_root(fs);
	uint8_t *buf = malloc(1 << 16);
	while (head < tail) {
		uint64_t nid = queue[head++];
		struct erofs_stat st;
		size_t n;
		int r = erofs_getattr(fs, nid, &st);
		note(w, r);
		if (r < 0)
			continue;
		note(w, erofs_listxattr(fs, nid, (char *)buf, sizeof(buf), &n));
		note(w, erofs_getxattr(fs, nid, "user.shared", buf, sizeof(buf), &n));
		if (S_ISREG(st.mode)) {
			for (uint64_t off = 0; off < st.size; off += n) {
				r = erofs_read(fs, nid, off, buf, sizeof(buf), &n);
				note(w, r);
				if (r < 0 || !n)
					break;
			}
		} else if (S_ISLNK(st.mode)) {
			note(w, erofs_readlink(fs, nid, (char *)buf, 4096));
		} else if (S_ISDIR(st.mode)) {
			struct listing l = {0};
			note(w, erofs_readdir(fs, nid, 0, list_cb, &l));
			for (size_t i = 0; i < l.n; i++) {
				struct erofs_stat s2;
				note(w, erofs_lookup(fs, nid, l.e[i].name, &s2));
				if (strcmp(l.e[i].name, ".") && strcmp(l.e[i].name, "..") && tail < 4096)
					queue[tail++] = l.e[i].nid;
			}
			free(l.e);
		}
	}
	free(buf);
}

struct thread_arg {
	struct erofs_fs *fs;
	struct walkres w;
};

static void *walk_thread(void *p)
{
	struct thread_arg *a = p;
	for (int i = 0; i < 3; i++)
		walk_all(a->fs, &a->w);
	return NULL;
}

/* Readers share one erofs_fs: four threads walk the whole tree at once. */
static void test_threads(const char *img)
{
	struct membuf m;
	if (load(img, &m) < 0)
		return;
	struct blockdev dev = mem_dev(&m);
	struct erofs_fs *fs;
	if (erofs_open(&dev, &fs) == 0) {
		pthread_t t[4];
		struct thread_arg a[4];
		for (int i = 0; i < 4; i++) {
			a[i] = (struct thread_arg){.fs = fs};
			pthread_create(&t[i], NULL, walk_thread, &a[i]);
		}
		for (int i = 0; i < 4; i++) {
			pthread_join(t[i], NULL);
			CHECK(!a[i].w.errs && !a[i].w.other, "thread %d: %u errors (%d)", i, a[i].w.errs, a[i].w.first_err);
		}
		erofs_close(fs);
	}
	free(m.data);
}

static int open_and_walk(struct membuf *m, struct walkres *w)
{
	struct blockdev dev = mem_dev(m);
	struct erofs_fs *fs;
	memset(w, 0, sizeof(*w));
	int r = erofs_open(&dev, &fs);
	if (r < 0)
		return r;
	walk_all(fs, w);
	erofs_close(fs);
	return 0;
}

static struct membuf dup_buf(const struct membuf *m)
{
	struct membuf c = {malloc(m->len), m->len};
	memcpy(c.data, m->data, m->len);
	return c;
}

/* Clear the superblock checksum feature so a patched superblock is read. */
static void no_sb_crc(struct membuf *m)
{
	uint8_t *p = m->data + EROFS_SB_OFFSET + offsetof(struct erofs_disk_super, feature_compat);
	put_le32(p, get_le32(p) & ~EROFS_COMPAT_SB_CRC);
}

static uint64_t inode_pos(const struct membuf *m, uint64_t nid)
{
	uint32_t meta = get_le32(m->data + EROFS_SB_OFFSET + offsetof(struct erofs_disk_super, meta_blkaddr));
	return (uint64_t)meta * 4096 + nid * 32;
}

/* Where directory |nid|'s first block of entries is. */
static uint64_t dir_data_pos(const struct membuf *m, uint64_t nid)
{
	uint64_t ip = inode_pos(m, nid);
	uint16_t ifmt = get_le16(m->data + ip), icount = get_le16(m->data + ip + 2);
	uint64_t size = (ifmt & 1) ? get_le64(m->data + ip + 8) : get_le32(m->data + ip + 8);
	if ((ifmt >> 1 & 7) == 2 && size <= 4096)
		return ip + ((ifmt & 1) ? 64 : 32) + (icount ? 12 + 4 * (icount - 1u) : 0);
	return (uint64_t)get_le32(m->data + ip + 16) * 4096;
}

static uint64_t nid_of(struct erofs_fs *fs, const char *path)
{
	uint64_t nid = erofs_root(fs);
	char buf[512];
	snprintf(buf, sizeof(buf), "%s", path);
	for (char *save, *c = strtok_r(buf, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
		struct erofs_stat st;
		if (erofs_lookup(fs, nid, c, &st) < 0)
			return UINT64_MAX;
		nid = st.nid;
	}
	return nid;
}

static void test_hostile(const char *img_inline, const char *img_noinline, const char *img_chunk)
{
	struct membuf orig, noin, chunk;
	if (load(img_inline, &orig) < 0 || load(img_noinline, &noin) < 0 || load(img_chunk, &chunk) < 0) {
		CHECK(0, "load hostile bases");
		return;
	}
	struct walkres w;
	struct blockdev dev;
	struct erofs_fs *fs;
	int r;

	/* The undamaged image walks without errors. */
	r = open_and_walk(&orig, &w);
	CHECK(r == 0 && !w.errs && !w.other, "clean image: open %d, %u errors (%d)", r, w.errs, w.first_err);

	/* Zeroed superblock; bad magic; tiny devices. */
	struct membuf c = dup_buf(&orig);
	memset(c.data + EROFS_SB_OFFSET, 0, 128);
	CHECK(open_and_walk(&c, &w) == -EUCLEAN, "zeroed superblock");
	for (size_t len = 0; len < 1200; len += 97) {
		struct membuf t = {orig.data, len};
		CHECK(open_and_walk(&t, &w) == -EUCLEAN, "%zu-byte device", len);
	}
	free(c.data);

	/* Truncation: at block boundaries something must be missing and be
	 * reported; anywhere else only the documented errors may appear. */
	unsigned cuts = 0, reported = 0, bad = 0;
	for (size_t base = 4096; base < orig.len; base += 4096) {
		for (size_t len = base; len < base + 4096 && len < orig.len; len += 1500) {
			struct membuf t = dup_buf(&orig);
			t.len = len;
			r = open_and_walk(&t, &w);
			cuts++;
			if (r == -EUCLEAN || w.errs)
				reported++;
			else if (len == base)
				bad++;
			if (w.other || (r < 0 && r != -EUCLEAN))
				bad++;
			free(t.data);
		}
	}
	CHECK(!bad && reported, "truncations: %u cuts, %u reported, %u unreported or wrong", cuts, reported, bad);
	/* The same for the noinline and chunk-based images. */
	struct membuf *others[] = {&noin, &chunk};
	for (size_t k = 0; k < 2; k++) {
		bad = 0;
		for (size_t len = 4096; len < others[k]->len; len += 4096) {
			struct membuf t = {others[k]->data, len};
			r = open_and_walk(&t, &w);
			if ((r != -EUCLEAN && !w.errs) || w.other)
				bad++;
		}
		CHECK(!bad, "truncations of image %zu: %u unreported", k, bad);
	}

	/* Checksum, magic, block size, features. */
	c = dup_buf(&orig);
	c.data[EROFS_SB_OFFSET + 100] ^= 1; /* a reserved byte, covered by the crc */
	dev = mem_dev(&c);
	CHECK(erofs_open(&dev, &fs) == -EUCLEAN, "superblock crc mismatch");
	no_sb_crc(&c);
	r = erofs_open(&dev, &fs);
	CHECK(r == 0, "without crc the image opens: %d", r);
	if (!r)
		erofs_close(fs);
	c.data[EROFS_SB_OFFSET + offsetof(struct erofs_disk_super, blkszbits)] = 30;
	CHECK(erofs_open(&dev, &fs) == -EUCLEAN, "block size 2^30");
	c.data[EROFS_SB_OFFSET + offsetof(struct erofs_disk_super, blkszbits)] = 14;
	CHECK(erofs_open(&dev, &fs) == -EOPNOTSUPP, "block size 16 KiB");
	c.data[EROFS_SB_OFFSET + offsetof(struct erofs_disk_super, blkszbits)] = 12;
	put_le32(c.data + EROFS_SB_OFFSET + offsetof(struct erofs_disk_super, feature_incompat), 0x100);
	CHECK(erofs_open(&dev, &fs) == -EOPNOTSUPP, "unknown incompat feature");
	put_le32(c.data + EROFS_SB_OFFSET + offsetof(struct erofs_disk_super, feature_incompat), 0);
	put_le32(c.data + EROFS_SB_OFFSET + offsetof(struct erofs_disk_super, meta_blkaddr), 0xffffffffu);
	CHECK(erofs_open(&dev, &fs) == -EUCLEAN, "metadata past the end");
	free(c.data);

	/* Root not a directory; root nid past the end. */
	dev = mem_dev(&orig);
	r = erofs_open(&dev, &fs);
	CHECK(r == 0, "open base");
	if (r < 0)
		return;
	uint64_t root = erofs_root(fs);
	uint64_t f_nid = nid_of(fs, "f4096"), sym_nid = nid_of(fs, "sym-short"), f1 = nid_of(fs, "f1");
	uint64_t a_nid = nid_of(fs, "a");
	struct erofs_stat st;
	/* nids beyond the device */
	CHECK(erofs_getattr(fs, orig.len / 32 + 5, &st) == -EUCLEAN, "nid past the end");
	CHECK(erofs_getattr(fs, UINT64_MAX, &st) == -EUCLEAN, "nid 2^64-1");
	CHECK(erofs_getattr(fs, UINT64_MAX / 32 + 1, &st) == -EUCLEAN, "nid overflowing the offset");
	CHECK(erofs_readdir(fs, UINT64_MAX, 0, list_cb, &(struct listing){0}) == -EUCLEAN, "readdir of a bad nid");
	CHECK(erofs_lookup(fs, UINT64_MAX, "a", &st) == -EUCLEAN, "lookup in a bad nid");
	size_t n;
	char buf[8192];
	CHECK(erofs_read(fs, UINT64_MAX, 0, buf, 1, &n) == -EUCLEAN, "read of a bad nid");
	CHECK(erofs_listxattr(fs, UINT64_MAX, buf, sizeof(buf), &n) == -EUCLEAN, "listxattr of a bad nid");
	erofs_close(fs);

	c = dup_buf(&orig);
	no_sb_crc(&c);
	put_le16(c.data + EROFS_SB_OFFSET + offsetof(struct erofs_disk_super, root_nid), (uint16_t)f_nid);
	CHECK(open_and_walk(&c, &w) == -EUCLEAN, "root is a regular file");
	put_le16(c.data + EROFS_SB_OFFSET + offsetof(struct erofs_disk_super, root_nid), 0xffff);
	CHECK(open_and_walk(&c, &w) == -EUCLEAN, "root nid past the end");
	free(c.data);

	/* Inode damage on the inline image. */
	struct {
		const char *what;
		uint64_t nid;
		size_t off; /* within the inode */
		unsigned width;
		uint64_t value;
		int (*op)(struct erofs_fs *, uint64_t);
	} patches[] = {
		{"bogus mode", f_nid, 4, 2, 0170644, NULL},
		{"xattr icount 65535", f_nid, 2, 2, 0xffff, NULL},
		{"xattr icount 65535 on a dir", a_nid, 2, 2, 0xffff, NULL},
		{"symlink size 0", sym_nid, 8, 4, 0, NULL},
		{"huge inline size", sym_nid, 8, 4, 5000, NULL},
		{"unknown layout", f_nid, 0, 2, 7u << 1 | 1, NULL},
	};
	for (size_t i = 0; i < sizeof(patches) / sizeof(patches[0]); i++) {
		c = dup_buf(&orig);
		no_sb_crc(&c);
		uint64_t pos = inode_pos(&c, patches[i].nid) + patches[i].off;
		if (patches[i].off == 8 && !(get_le16(c.data + inode_pos(&c, patches[i].nid)) & 1))
			pos = inode_pos(&c, patches[i].nid) + 8; /* compact: same offset */
		if (patches[i].width == 2)
			put_le16(c.data + pos, (uint16_t)patches[i].value);
		else
			put_le32(c.data + pos, (uint32_t)patches[i].value);
		if (i == 5)
			put_le16(c.data + pos, (uint16_t)(get_le16(orig.data + pos) | 7u << 1));
		r = open_and_walk(&c, &w);
		CHECK(r == 0 && (w.errs || w.first_err == -EOPNOTSUPP) && !w.other, "%s: open %d, %u errors, first %d",
		      patches[i].what, r, w.errs, w.first_err);
		free(c.data);
	}

	/* Shared xattrs: too many for the area, and an id past the end. */
	c = dup_buf(&orig);
	no_sb_crc(&c);
	uint64_t ip = inode_pos(&c, f1);
	unsigned isize = (get_le16(c.data + ip) & 1) ? 64 : 32;
	dev = mem_dev(&c);
	c.data[ip + isize + 4] = 255;
	r = erofs_open(&dev, &fs);
	CHECK(r == 0, "open");
	if (!r) {
		CHECK(erofs_listxattr(fs, f1, buf, sizeof(buf), &n) == -EUCLEAN, "255 shared xattrs");
		CHECK(erofs_getxattr(fs, f1, "user.one", buf, sizeof(buf), &n) == -EUCLEAN, "255 shared xattrs get");
		c.data[ip + isize + 4] = orig.data[ip + isize + 4];
		if (c.data[ip + isize + 4]) {
			put_le32(c.data + ip + isize + 12, 0xffffffffu);
			CHECK(erofs_listxattr(fs, f1, buf, sizeof(buf), &n) == -EUCLEAN, "shared xattr id past the end");
		} else {
			CHECK(0, "f1 was expected to have a shared xattr");
		}
		/* An inline entry whose value runs past the area. */
		memcpy(c.data + ip, orig.data + ip, 4096 - ip % 4096);
		unsigned sc = c.data[ip + isize + 4];
		uint64_t e0 = ip + isize + 12 + 4 * sc;
		put_le16(c.data + e0 + 2, 0xfff0);
		CHECK(erofs_listxattr(fs, f1, buf, sizeof(buf), &n) == -EUCLEAN, "xattr value past the area");
		/* A long-prefix entry is refused. */
		memcpy(c.data + ip, orig.data + ip, 4096 - ip % 4096);
		c.data[e0 + 1] = 0x80;
		CHECK(erofs_listxattr(fs, f1, buf, sizeof(buf), &n) == -EOPNOTSUPP, "long xattr prefix");
		erofs_close(fs);
	}
	free(c.data);

	/* Directory blocks on the noinline image (FLAT_PLAIN directories). */
	dev = mem_dev(&noin);
	if (erofs_open(&dev, &fs) == 0) {
		uint64_t big = nid_of(fs, "big");
		root = erofs_root(fs);
		erofs_close(fs);
		uint64_t bpos = inode_pos(&noin, big);
		unsigned blayout = get_le16(noin.data + bpos) >> 1 & 7;
		CHECK(blayout == 0 || blayout == 2, "big is flat in the noinline image: %u", blayout);
		uint64_t blk0 = (uint64_t)get_le32(noin.data + bpos + 16) * 4096;
		struct {
			const char *what;
			size_t off;
			uint16_t value;
		} dp[] = {
			{"first nameoff 0", 8, 0},
			{"first nameoff past the block", 8, 0xfff0},
			{"first nameoff 4095", 8, 4095},
			{"second nameoff past the block", 12 + 8, 0xfff0},
			{"second nameoff before the first", 12 + 8, 12},
			{"second nameoff inside the dirent array", 12 + 8, 13},
		};
		for (size_t i = 0; i < sizeof(dp) / sizeof(dp[0]); i++) {
			c = dup_buf(&noin);
		no_sb_crc(&c);
			put_le16(c.data + blk0 + dp[i].off, dp[i].value);
			dev = mem_dev(&c);
			r = erofs_open(&dev, &fs);
			if (r == 0) {
				struct listing l = {0};
				int r1 = erofs_readdir(fs, big, 0, list_cb, &l);
				free(l.e);
				int r2 = erofs_lookup(fs, big, "e0000", &st);
				int r3 = erofs_lookup(fs, big, "e0001__", &st);
				CHECK(r1 == -EUCLEAN && (r2 == -EUCLEAN || r2 == 0 || r2 == -ENOENT) &&
					      (r3 == -EUCLEAN || r3 == 0 || r3 == -ENOENT),
				      "%s: readdir %d lookups %d %d", dp[i].what, r1, r2, r3);
				walk_all(fs, &w);
				CHECK(!w.other, "%s: walk", dp[i].what);
				erofs_close(fs);
			}
			free(c.data);
		}
		/* A NUL inside a name that is not the block's last (found by
		 * the fuzzer), and a '/' in a name. */
		for (int k = 0; k < 2; k++) {
			c = dup_buf(&noin);
			no_sb_crc(&c);
			uint16_t n0 = get_le16(c.data + blk0 + 8);
			c.data[blk0 + n0 + 2] = k ? '/' : '\0'; /* the second byte of ".." */
			dev = mem_dev(&c);
			if (erofs_open(&dev, &fs) == 0) {
				struct listing l = {0};
				r = erofs_readdir(fs, big, 0, list_cb, &l);
				CHECK(r == -EUCLEAN && l.n == 1, "name with %s: %d after %zu", k ? "'/'" : "NUL", r, l.n);
				free(l.e);
				erofs_close(fs);
			}
			free(c.data);
		}
		/* The last name of the block runs to the block end (no NUL). */
		c = dup_buf(&noin);
		no_sb_crc(&c);
		memset(c.data + blk0, 0, 4096);
		put_le64(c.data + blk0, big);
		put_le16(c.data + blk0 + 8, 24);
		put_le64(c.data + blk0 + 12, big);
		put_le16(c.data + blk0 + 12 + 8, 25);
		memset(c.data + blk0 + 24, 'z', 4096 - 24);
		dev = mem_dev(&c);
		if (erofs_open(&dev, &fs) == 0) {
			struct listing l = {0};
			r = erofs_readdir(fs, big, 0, list_cb, &l);
			CHECK(r == -EUCLEAN && l.n == 1, "last name overrunning 255 bytes: %d after %zu", r, l.n);
			free(l.e);
			erofs_close(fs);
		}
		free(c.data);
		/* Unsorted blocks and names: lookups finish (found or not). */
		c = dup_buf(&noin);
		no_sb_crc(&c);
		uint64_t size = get_le32(c.data + bpos + 8);
		if (get_le16(c.data + bpos) & 1)
			size = get_le64(c.data + bpos + 8);
		for (uint64_t b = 0; b + 1 < size / 4096; b += 2) {
			uint8_t tmpb[4096];
			memcpy(tmpb, c.data + blk0 + b * 4096, 4096);
			memcpy(c.data + blk0 + b * 4096, c.data + blk0 + (b + 1) * 4096, 4096);
			memcpy(c.data + blk0 + (b + 1) * 4096, tmpb, 4096);
		}
		dev = mem_dev(&c);
		if (erofs_open(&dev, &fs) == 0) {
			unsigned found = 0, missing = 0, other = 0;
			for (int i = 0; i < 1000; i++) {
				char name[32];
				snprintf(name, sizeof(name), "e%04d", i);
				r = erofs_lookup(fs, big, name, &st);
				found += r == 0;
				missing += r == -ENOENT;
				other += r != 0 && r != -ENOENT;
			}
			CHECK(other == 0 && found + missing == 1000, "unsorted directory: %u found %u missing %u other",
			      found, missing, other);
			erofs_close(fs);
		}
		free(c.data);
		/* A directory that lists itself as a child: the nid API just
		 * answers; walking it is the caller's business. */
		c = dup_buf(&noin);
		no_sb_crc(&c);
		uint64_t rblk = dir_data_pos(&c, root);
		put_le64(c.data + rblk + 24, root); /* third entry */
		dev = mem_dev(&c);
		if (erofs_open(&dev, &fs) == 0) {
			walk_all(fs, &w);
			CHECK(!w.other, "self-referencing directory");
			erofs_close(fs);
		}
		free(c.data);
		/* A directory size far past the device. */
		c = dup_buf(&noin);
		no_sb_crc(&c);
		if (get_le16(c.data + bpos) & 1) {
			put_le64(c.data + bpos + 8, 1ull << 50);
			dev = mem_dev(&c);
			if (erofs_open(&dev, &fs) == 0) {
				CHECK(erofs_getattr(fs, big, &st) == -EUCLEAN, "2^50-byte directory");
				erofs_close(fs);
			}
			put_le64(c.data + bpos + 8, 1ull << 39);
			if (erofs_open(&dev, &fs) == 0) {
				struct listing l = {.stop_after = 1u << 30};
				r = erofs_readdir(fs, big, 0, list_cb, &l);
				CHECK(r == -EUCLEAN, "2^39-byte directory: %d after %zu entries", r, l.n);
				free(l.e);
				erofs_close(fs);
			}
		}
		free(c.data);
	}

	/* Chunk-based: a hole, and a chunk index past the end. */
	dev = mem_dev(&chunk);
	if (erofs_open(&dev, &fs) == 0) {
		uint64_t nid = nid_of(fs, "f65553");
		uint8_t *want = malloc(65553), *got = malloc(65553);
		size_t wn = 0;
		r = erofs_read(fs, nid, 0, want, 65553, &wn);
		erofs_close(fs);
		uint64_t ipos = inode_pos(&chunk, nid);
		uint16_t ifmt = get_le16(chunk.data + ipos);
		unsigned isz = (ifmt & 1) ? 64 : 32;
		uint16_t icount = get_le16(chunk.data + ipos + 2);
		uint32_t cfmt = get_le16(chunk.data + ipos + 16);
		unsigned unit = (cfmt & 0x20) ? 8 : 4;
		uint64_t chunksz = 4096ull << (cfmt & 0x1f);
		uint64_t table = ipos + isz + (icount ? 12 + 4 * (icount - 1u) : 0);
		table = (table + unit - 1) / unit * unit;
		CHECK(r == 0 && wn == 65553 && (ifmt >> 1 & 7) == 4, "chunk-based file: %d, layout %u", r, ifmt >> 1 & 7);
		c = dup_buf(&chunk);
		no_sb_crc(&c);
		put_le32(c.data + table + 1 * unit + (unit == 8 ? 4 : 0), 0xffffffffu);
		dev = mem_dev(&c);
		if (erofs_open(&dev, &fs) == 0) {
			size_t gn = 0;
			r = erofs_read(fs, nid, 0, got, 65553, &gn);
			bool ok = r == 0 && gn == 65553 && !memcmp(got, want, chunksz) &&
				  !memcmp(got + 2 * chunksz, want + 2 * chunksz, 65553 - 2 * chunksz);
			for (uint64_t i = chunksz; ok && i < 2 * chunksz; i++)
				ok = got[i] == 0;
			CHECK(ok, "EROFS_NULL_ADDR chunk reads as zeros (%d)", r);
			/* The same file in the 8-byte chunk-index form (mkfs
			 * 1.5 writes block maps unless it has a blob device):
			 * a copy of the inode in a block appended to the image. */
			if (unit == 4) {
				struct membuf x = {calloc(1, c.len + 8192), c.len + 8192};
				memcpy(x.data, c.data, c.len);
				uint64_t at = (c.len + 4095) / 4096 * 4096;
				uint64_t head = isz + (icount ? 12 + 4 * (icount - 1u) : 0);
				memcpy(x.data + at, c.data + ipos, head);
				put_le16(x.data + at + 16, (uint16_t)(cfmt | 0x20));
				uint64_t xt = (at + head + 7) / 8 * 8;
				uint64_t nchunks = (65553 + chunksz - 1) / chunksz;
				for (uint64_t k = 0; k < nchunks; k++) {
					put_le16(x.data + xt + 8 * k + 2, (uint16_t)k); /* device_id: ignored */
					put_le32(x.data + xt + 8 * k + 4, get_le32(c.data + table + 4 * k));
				}
				struct blockdev xdev = mem_dev(&x);
				struct erofs_fs *xfs;
				if (erofs_open(&xdev, &xfs) == 0) {
					uint64_t meta = get_le32(x.data + EROFS_SB_OFFSET +
								       offsetof(struct erofs_disk_super, meta_blkaddr));
					uint64_t xnid = (at - meta * 4096) / 32;
					memset(got, 0x77, 65553);
					r = erofs_read(xfs, xnid, 0, got, 65553, &gn);
					bool xok = r == 0 && gn == 65553 && !memcmp(got, want, chunksz) &&
						  !memcmp(got + 2 * chunksz, want + 2 * chunksz, 65553 - 2 * chunksz);
					for (uint64_t i = chunksz; xok && i < 2 * chunksz; i++)
						xok = got[i] == 0;
					CHECK(xok, "chunk-index form: %d %zu", r, gn);
					put_le32(x.data + xt + 8 * 3 + 4, 0x7ffffff0u);
					CHECK(erofs_read(xfs, xnid, 0, got, 65553, &gn) == -EUCLEAN, "chunk index past the end");
					put_le16(x.data + at + 16, (uint16_t)(cfmt | 0x40));
					CHECK(erofs_getattr(xfs, xnid, &st) == -EOPNOTSUPP, "unknown chunk format bits");
					erofs_close(xfs);
				}
				free(x.data);
			}
			put_le32(c.data + table + 2 * unit + (unit == 8 ? 4 : 0), 0x7fffffffu);
			r = erofs_read(fs, nid, 0, got, 65553, &gn);
			CHECK(r == -EUCLEAN, "chunk past the end: %d", r);
			erofs_close(fs);
		}
		free(c.data);
		free(want);
		free(got);
	}

	/* Random single-byte damage anywhere in the metadata: never anything
	 * but the documented errors (ASan/UBSan catch the rest). */
	srand(12345);
	unsigned other = 0;
	for (int i = 0; i < 300; i++) {
		c = dup_buf(&orig);
		no_sb_crc(&c);
		size_t meta_len = c.len < 3 * 4096 ? c.len : 3 * 4096;
		for (int k = 0; k < 1 + i % 4; k++)
			c.data[1024 + (size_t)rand() % (meta_len - 1024)] ^= (uint8_t)(1u << (rand() % 8));
		r = open_and_walk(&c, &w);
		if ((r < 0 && r != -EUCLEAN && r != -EOPNOTSUPP) || w.other)
			other++;
		free(c.data);
	}
	CHECK(other == 0, "random damage: %u walks with undocumented errors", other);

	free(orig.data);
	free(noin.data);
	free(chunk.data);
}

/* ---- main -------------------------------------------------------------------------------------------------- */

int main(void)
{
	if (geteuid() != 0) {
		fprintf(stderr, "test_blockd_erofs_read: needs root (mknod, mount): skipped\n");
		return 77;
	}
	if (system("mkfs.erofs --help >/dev/null 2>&1") != 0 && system("command -v mkfs.erofs >/dev/null") != 0) {
		fprintf(stderr, "test_blockd_erofs_read: mkfs.erofs not installed: skipped\n");
		return 77;
	}
	log_set_level(getenv("KINDLING_DEBUG") ? LOG_DEBUG : LOG_SILENT);
	snprintf(tmp, sizeof(tmp), "/tmp/test_blockd_erofs_read.XXXXXX");
	if (!mkdtemp(tmp)) {
		perror("mkdtemp");
		return 1;
	}
	char src[300], img[400], mnt[300];
	snprintf(src, sizeof(src), "%s/src", tmp);
	snprintf(mnt, sizeof(mnt), "%s/mnt", tmp);
	make_tree(src);

	/* Can the kernel mount EROFS here? */
	snprintf(img, sizeof(img), "%s/probe.img", tmp);
	mkdir(mnt, 0755);
	if (run("mkfs.erofs --quiet %s %s/a >/dev/null", img, src) == 0 &&
	    run("mount -t erofs -o ro %s %s 2>/dev/null", img, mnt) == 0) {
		have_mount = true;
		umount(mnt);
	} else {
		fprintf(stderr, "kernel cannot mount EROFS here: comparing with the source tree only\n");
	}

	const struct variant variants[] = {
		{"default", "", CMP_MTIME | CMP_MTIME_NSEC, false},
		{"noinline", "-Enoinline_data", CMP_MTIME | CMP_MTIME_NSEC, false},
		{"compact-ignore-mtime", "--ignore-mtime", 0, false},
		{"extended-shared-x1", "-Eforce-inode-extended -x1", CMP_MTIME | CMP_MTIME_NSEC, false},
		{"chunk-4k", "--chunksize 4096", CMP_MTIME | CMP_MTIME_NSEC, false},
		{"chunk-64k-noinline", "--chunksize 65536 -Enoinline_data", CMP_MTIME | CMP_MTIME_NSEC, false},
		{"lz4", "-zlz4", CMP_MTIME | CMP_MTIME_NSEC, true},
	};
	char paths[8][400];
	for (size_t i = 0; i < sizeof(variants) / sizeof(variants[0]); i++) {
		snprintf(paths[i], sizeof(paths[i]), "%s/%s.img", tmp, variants[i].name);
		if (run("mkfs.erofs --quiet %s %s %s >/dev/null", variants[i].opts, paths[i], src) < 0) {
			CHECK(0, "mkfs.erofs %s", variants[i].opts);
			continue;
		}
		check_image(paths[i], src, &variants[i]);
	}

	test_threads(paths[0]);

	/* The lz4 image really has a compressed inode, and it is refused. */
	{
		struct membuf m;
		if (load(paths[6], &m) == 0) {
			struct blockdev dev = mem_dev(&m);
			struct erofs_fs *fs;
			if (erofs_open(&dev, &fs) == 0) {
				uint64_t nid = nid_of(fs, "compressible");
				struct erofs_stat st;
				char b[16];
				size_t n;
				CHECK(erofs_getattr(fs, nid, &st) == 0 && st.size == 200000, "compressed getattr");
				CHECK(erofs_read(fs, nid, 0, b, sizeof(b), &n) == -EOPNOTSUPP, "compressed read");
				erofs_close(fs);
			}
			free(m.data);
		}
	}

	/* kindling's own writer. */
	snprintf(img, sizeof(img), "%s/kindling.img", tmp);
	int r = write_kindling_image(img);
	CHECK(r == 0, "kindling writer: %d", r);
	if (r == 0) {
		const struct variant kv = {"kindling-writer", "", 0, false};
		check_image(img, NULL, &kv);
		if (!have_mount)
			fprintf(stderr, "kindling writer image checked without a reference\n");
	}

	/* A small image for the hostile cases (seconds, not minutes). */
	char small[300], hs[3][400];
	snprintf(small, sizeof(small), "%s/small", tmp);
	mkdir(small, 0755);
	run("cp -a %s/f1 %s/f4096 %s/f100 %s/f65553 %s/sym-short %s/a %s/big %s/ 2>/dev/null", src, src, src, src, src,
	    src, src, small);
	snprintf(hs[0], sizeof(hs[0]), "%s/h-inline.img", tmp);
	snprintf(hs[1], sizeof(hs[1]), "%s/h-noinline.img", tmp);
	snprintf(hs[2], sizeof(hs[2]), "%s/h-chunk.img", tmp);
	if (run("mkfs.erofs --quiet %s %s", hs[0], small) == 0 &&
	    run("mkfs.erofs --quiet -Enoinline_data %s %s", hs[1], small) == 0 &&
	    run("mkfs.erofs --quiet --chunksize 4096 %s %s", hs[2], small) == 0)
		test_hostile(hs[0], hs[1], hs[2]);
	else
		CHECK(0, "mkfs for hostile images");

	run("rm -rf %s", tmp);
	printf("%u passed, %u failed\n", passed, failed);
	return failed ? 1 : 0;
}
