/* EROFS writer against two independent readers: fsck.erofs (erofs-utils) and
 * the kernel's EROFS driver.
 *
 * Builds a tree covering what container images contain (nested and large
 * directories, 255-byte names, files around block boundaries, a sparse 5 GiB
 * file, hard links, short and long symlinks, devices, fifos, sockets, big ids,
 * setuid/sticky bits, nanosecond mtimes, xattrs incl. a file capability),
 * writes block 0 + file data + metadata into a sparse image, runs
 * `fsck.erofs --extract`, mounts the image read-only and checks every entry
 * with lstat, readlink, read, listxattr/getxattr and readdir.  Also checks
 * that the writer is deterministic and rejects what the format cannot hold.
 *
 * Needs root (mount, device nodes): otherwise, or if the kernel cannot mount
 * EROFS at all, it exits 77.
 */
/* ctest-labels: no-tsan (single-threaded: nothing for ThreadSanitizer to check) */
#include "chunker/internal.h"
#include "common/erofs_format.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#define KIB 1024ull
#define MIB (1024ull * KIB)
#define GIB (1024ull * MIB)
#define BIG_SIZE (5 * GIB + 123)

/* A regular file's expected content; NULL for the sparse file. */
struct tfile {
	struct fs_inode *fi;
	uint8_t *content;
	unsigned seed;
};

/* One directory entry the test created, with its full path. */
struct trec {
	char *path;		/* "/a/b" relative to the image root */
	struct fs_inode *fi;
	struct fs_inode *dir;
	char *name;
};

struct t {
	unsigned passed, failed;
	struct fs_inode **inodes;
	size_t n_inodes;
	struct trec *recs;
	size_t n_recs;
	struct tfile *files;
	size_t n_files;
	unsigned mtime_counter;
	struct fs_inode *big;
	unsigned big_seed;
};

#define CHECK(t, cond, ...)                                                                                          \
	do {                                                                                                         \
		if (cond) {                                                                                          \
			(t)->passed++;                                                                               \
		} else {                                                                                             \
			(t)->failed++;                                                                               \
			fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                         \
			fprintf(stderr, __VA_ARGS__);                                                                \
			fputc('\n', stderr);                                                                         \
		}                                                                                                    \
	} while (0)

static void *xcalloc(size_t n, size_t sz)
{
	void *p = calloc(n ? n : 1, sz ? sz : 1);
	if (!p) {
		perror("calloc");
		abort();
	}
	return p;
}

static void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (!p) {
		perror("realloc");
		abort();
	}
	return p;
}

static char *xstrdup(const char *s)
{
	char *d = strdup(s);
	if (!d)
		abort();
	return d;
}

/* ---- tree building (tree.c stand-ins, local to the test) ------------------------- */

static struct fs_inode *t_new(struct t *t, uint32_t mode)
{
	struct fs_inode *fi = xcalloc(1, sizeof(*fi));
	fi->mode = mode;
	fi->uid = 0;
	fi->gid = 0;
	/* Distinct, nanosecond-precise mtimes so a mix-up shows. */
	t->mtime_counter++;
	fi->mtime = 1700000000 + (int64_t)t->mtime_counter * 3677;
	fi->mtime_nsec = (uint32_t)((t->mtime_counter * 123456791u) % 1000000000u);
	t->inodes = xrealloc(t->inodes, (t->n_inodes + 1) * sizeof(*t->inodes));
	t->inodes[t->n_inodes++] = fi;
	return fi;
}

static const char *t_add(struct t *t, struct fs_inode *dir, const char *dirpath, const char *name,
			 struct fs_inode *child)
{
	if (dir->n_children == dir->cap_children) {
		dir->cap_children = dir->cap_children ? dir->cap_children * 2 : 8;
		dir->children = xrealloc(dir->children, dir->cap_children * sizeof(*dir->children));
	}
	struct fs_dirent *d = &dir->children[dir->n_children++];
	d->name = xstrdup(name);
	d->inode = child;
	d->layer = 0;
	child->refs++;

	t->recs = xrealloc(t->recs, (t->n_recs + 1) * sizeof(*t->recs));
	struct trec *r = &t->recs[t->n_recs++];
	size_t n = strlen(dirpath) + strlen(name) + 2;
	r->path = xcalloc(1, n);
	snprintf(r->path, n, "%s/%s", strcmp(dirpath, "/") ? dirpath : "", name);
	r->fi = child;
	r->dir = dir;
	r->name = d->name;
	return r->path;
}

static struct fs_inode *t_dir(struct t *t, struct fs_inode *parent, const char *ppath, const char *name,
			      const char **out_path)
{
	struct fs_inode *d = t_new(t, S_IFDIR | 0755);
	*out_path = t_add(t, parent, ppath, name, d);
	return d;
}

static void pattern(uint8_t *buf, size_t n, uint64_t off, unsigned seed)
{
	for (size_t i = 0; i < n; i++) {
		uint64_t o = off + i;
		/* The block number term makes a misplaced block visible. */
		buf[i] = (uint8_t)((o * 131u + seed * 7u + (o >> 12) * 13u) ^ seed);
	}
}

static struct fs_inode *t_file(struct t *t, struct fs_inode *dir, const char *dpath, const char *name,
			       uint64_t size, uint32_t mode)
{
	struct fs_inode *fi = t_new(t, S_IFREG | mode);
	fi->size = size;
	t->files = xrealloc(t->files, (t->n_files + 1) * sizeof(*t->files));
	struct tfile *f = &t->files[t->n_files++];
	f->fi = fi;
	f->seed = (unsigned)t->n_files * 17u + 3u;
	f->content = NULL;
	if (size && size < GIB) {
		f->content = xcalloc(1, size);
		pattern(f->content, size, 0, f->seed);
	}
	t_add(t, dir, dpath, name, fi);
	return fi;
}

static void t_symlink(struct t *t, struct fs_inode *dir, const char *dpath, const char *name, size_t len)
{
	struct fs_inode *fi = t_new(t, S_IFLNK | 0777);
	fi->symlink = xcalloc(1, len + 1);
	for (size_t i = 0; i < len; i++)
		fi->symlink[i] = (char)('a' + (i * 7 + len) % 26);
	if (len > 2)
		fi->symlink[len / 2] = '/';
	fi->size = len;
	t_add(t, dir, dpath, name, fi);
}

/* Set xattrs keeping them sorted by name, as the tree's contract says. */
static void t_xattr(struct fs_inode *fi, const char *name, const void *value, size_t len)
{
	fi->xattrs = xrealloc(fi->xattrs, (fi->n_xattrs + 1) * sizeof(*fi->xattrs));
	size_t i = fi->n_xattrs;
	while (i > 0 && strcmp(fi->xattrs[i - 1].name, name) > 0) {
		fi->xattrs[i] = fi->xattrs[i - 1];
		i--;
	}
	fi->xattrs[i].name = xstrdup(name);
	fi->xattrs[i].value = xcalloc(1, len);
	memcpy(fi->xattrs[i].value, value, len);
	fi->xattrs[i].len = len;
	fi->n_xattrs++;
}

static void t_free(struct t *t)
{
	for (size_t i = 0; i < t->n_inodes; i++) {
		struct fs_inode *fi = t->inodes[i];
		for (size_t j = 0; j < fi->n_children; j++)
			free(fi->children[j].name);
		free(fi->children);
		for (size_t j = 0; j < fi->n_xattrs; j++) {
			free(fi->xattrs[j].name);
			free(fi->xattrs[j].value);
		}
		free(fi->xattrs);
		free(fi->symlink);
		free(fi);
	}
	free(t->inodes);
	for (size_t i = 0; i < t->n_recs; i++)
		free(t->recs[i].path);
	free(t->recs);
	for (size_t i = 0; i < t->n_files; i++)
		free(t->files[i].content);
	free(t->files);
}

/* A v2 file capability blob (struct vfs_cap_data): cap_net_bind_service,
 * effective. */
static void cap_blob(uint8_t out[20])
{
	memset(out, 0, 20);
	uint32_t magic = 0x02000000u | 0x1u, permitted = 1u << 10;
	for (int i = 0; i < 4; i++) {
		out[i] = (uint8_t)(magic >> (8 * i));
		out[4 + i] = (uint8_t)(permitted >> (8 * i));
	}
}

static struct fs_inode *build_tree(struct t *t)
{
	struct fs_inode *root = t_new(t, S_IFDIR | 0755);
	root->refs = 1;
	const char *p1, *p2, *p3, *p4, *pbig, *plong, *phl, *pother, *pdev, *px, *pnames;
	char name[300];

	/* Nested directories. */
	struct fs_inode *d1 = t_dir(t, root, "/", "d1", &p1);
	struct fs_inode *d2 = t_dir(t, d1, p1, "d2", &p2);
	struct fs_inode *d3 = t_dir(t, d2, p2, "d3", &p3);
	struct fs_inode *d4 = t_dir(t, d3, p3, "d4", &p4);
	t_file(t, d4, p4, "deep", 10, 0644);
	d3->mode = S_IFDIR | 01777; /* sticky */
	d2->uid = 100000;
	d2->gid = 65537;

	/* Sizes around block boundaries. */
	static const uint64_t sizes[] = {0, 1, 4095, 4096, 4097, 3 * MIB};
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		snprintf(name, sizeof(name), "size_%llu", (unsigned long long)sizes[i]);
		t_file(t, d1, p1, name, sizes[i], 0644);
	}
	struct fs_inode *su = t_file(t, root, "/", "setuid", 100, 04755);
	su->uid = 4294967294u;
	su->gid = 4000000000u;
	t_file(t, root, "/", "setgid", 200, 02711);

	/* A sparse file over 4 GiB. */
	struct fs_inode *dbig = t_dir(t, root, "/", "big", &pbig);
	t->big = t_file(t, dbig, pbig, "sparse5g", BIG_SIZE, 0600);
	t->big_seed = t->files[t->n_files - 1].seed;

	/* A directory of 600 entries spanning several blocks, with names of
	 * every length class and bytes that sort around '.'. */
	struct fs_inode *many = t_dir(t, root, "/", "many", &pnames);
	for (int i = 0; i < 600; i++) {
		int len = snprintf(name, sizeof(name), "entry-%04d-", i);
		int pad = (i * 37) % 60;
		for (int k = 0; k < pad; k++)
			name[len++] = (char)('a' + (i + k) % 26);
		name[len] = '\0';
		if (i % 50 == 0) {
			const char *dp;
			t_dir(t, many, pnames, name, &dp);
		} else {
			t_file(t, many, pnames, name, i % 3 ? 0 : (uint64_t)i, 0644);
		}
	}
	t_file(t, many, pnames, "-dash", 1, 0644);
	t_file(t, many, pnames, ".hidden", 1, 0644);
	t_file(t, many, pnames, "A", 1, 0644);
	t_file(t, many, pnames, "\xc3\xa9t\xc3\xa9", 1, 0644);
	t_file(t, many, pnames, "ab", 1, 0644);
	t_file(t, many, pnames, "a", 1, 0644);

	/* 130 entries of 20-byte names: one full block and a 96-byte tail, which
	 * the writer inlines after the inode. */
	const char *pmid;
	struct fs_inode *mid = t_dir(t, root, "/", "mid", &pmid);
	for (int i = 0; i < 130; i++) {
		snprintf(name, sizeof(name), "m%019d", i);
		t_file(t, mid, pmid, name, 0, 0644);
	}

	/* 255-byte names, on files and on a directory. */
	struct fs_inode *dlong = t_dir(t, root, "/", "longnames", &plong);
	for (int c = 0; c < 3; c++) {
		memset(name, 'L' + c, 255);
		name[255] = '\0';
		t_file(t, dlong, plong, name, (uint64_t)c * 1000, 0644);
	}
	memset(name, 'z', 255);
	name[255] = '\0';
	const char *pld;
	struct fs_inode *ld = t_dir(t, dlong, plong, name, &pld);
	t_file(t, ld, pld, "inside", 5, 0644);

	/* One inode under three names in two directories. */
	struct fs_inode *hl = t_dir(t, root, "/", "hl", &phl);
	struct fs_inode *other = t_dir(t, root, "/", "other", &pother);
	struct fs_inode *shared = t_file(t, hl, phl, "a", 5000, 0640);
	t_add(t, hl, phl, "b", shared);
	t_add(t, other, pother, "c", shared);
	shared->uid = 1234;

	/* Symlinks: short, 3000 bytes, and 4000 bytes (plain tail block). */
	t_symlink(t, root, "/", "lnk_short", 5);
	t_symlink(t, root, "/", "lnk_3000", 3000);
	t_symlink(t, other, pother, "lnk_4000", 4000);
	t_symlink(t, other, pother, "lnk_1", 1);

	/* 48 long symlinks in a row: each one not inlined moves the cursor 64
	 * bytes, so at least one must be inlined (lnk_4000 covers plain). */
	const char *plinks;
	struct fs_inode *links = t_dir(t, root, "/", "links", &plinks);
	for (int i = 0; i < 48; i++) {
		snprintf(name, sizeof(name), "l%02d", i);
		t_symlink(t, links, plinks, name, 3000 - (size_t)i);
	}

	/* Devices, fifo, socket. */
	struct fs_inode *dev = t_dir(t, root, "/", "dev", &pdev);
	struct fs_inode *c = t_new(t, S_IFCHR | 0666);
	c->rdev_major = 1;
	c->rdev_minor = 3;
	t_add(t, dev, pdev, "null", c);
	struct fs_inode *b = t_new(t, S_IFBLK | 0660);
	b->rdev_major = 259;
	b->rdev_minor = 300000;
	b->gid = 6;
	t_add(t, dev, pdev, "blk", b);
	t_add(t, dev, pdev, "fifo", t_new(t, S_IFIFO | 0600));
	t_add(t, dev, pdev, "sock", t_new(t, S_IFSOCK | 0755));

	/* Xattrs. */
	struct fs_inode *dx = t_dir(t, root, "/", "x", &px);
	t_xattr(dx, "user.dir", "dv", 2);
	struct fs_inode *xf = t_file(t, dx, px, "xfile", 77, 0755);
	uint8_t cap[20], big[1200];
	cap_blob(cap);
	pattern(big, sizeof(big), 0, 99);
	t_xattr(xf, "user.a", "1", 1);
	t_xattr(xf, "user.empty", "", 0);
	t_xattr(xf, "user.big", big, 1024);
	t_xattr(xf, "trusted.t", "trusted-value", 13);
	t_xattr(xf, "security.capability", cap, sizeof(cap));
	/* Several inodes with ~1 KiB of xattrs push inodes across block
	 * boundaries. */
	for (int i = 0; i < 6; i++) {
		snprintf(name, sizeof(name), "xa%d", i);
		struct fs_inode *f = t_file(t, dx, px, name, (uint64_t)i, 0644);
		t_xattr(f, "user.k", big, 900 + (size_t)i * 37);
	}
	const char *pxd;
	struct fs_inode *xd = t_dir(t, dx, px, "xdir", &pxd);
	t_xattr(xd, "user.big", big, 1000);
	t_xattr(xd, "trusted.overlay.opaque", "y", 1);
	t_file(t, xd, pxd, "f", 3, 0644);
	t_xattr(root, "user.root", "r", 1);
	return root;
}

/* ---- image writing ------------------------------------------------------------------- */

static int pwrite_all(int fd, const void *buf, size_t n, uint64_t off)
{
	const uint8_t *p = buf;
	while (n) {
		ssize_t w = pwrite(fd, p, n, (off_t)off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		n -= (size_t)w;
		off += (uint64_t)w;
	}
	return 0;
}

/* Place every regular file's data from 512 KiB on; returns the metadata
 * offset (the next 512 KiB boundary). */
static uint64_t place_data(struct t *t)
{
	uint64_t cur = CHUNK_SIZE;
	for (size_t i = 0; i < t->n_files; i++) {
		struct fs_inode *fi = t->files[i].fi;
		if (!fi->size)
			continue;
		fi->data_off = cur;
		cur += (fi->size + EROFS_BLOCK_SIZE - 1) / EROFS_BLOCK_SIZE * EROFS_BLOCK_SIZE;
	}
	return (cur + CHUNK_SIZE - 1) / CHUNK_SIZE * CHUNK_SIZE;
}

/* The ranges of the sparse file that hold data; the rest is a hole. */
static const uint64_t big_ranges[][2] = {
	{0, 4096},
	{4 * GIB - 2048, 4096},
	{BIG_SIZE - 100, 100},
};

static int write_image(struct t *t, const char *path, const struct erofs_image_layout *l)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	int r = 0;
	if (ftruncate(fd, (off_t)l->image_size) < 0)
		r = -errno;
	if (!r)
		r = pwrite_all(fd, l->superblock, sizeof(l->superblock), 0);
	for (size_t i = 0; !r && i < t->n_files; i++) {
		const struct tfile *f = &t->files[i];
		if (f->content)
			r = pwrite_all(fd, f->content, f->fi->size, f->fi->data_off);
	}
	for (size_t i = 0; !r && i < sizeof(big_ranges) / sizeof(big_ranges[0]); i++) {
		uint8_t buf[4096];
		pattern(buf, big_ranges[i][1], big_ranges[i][0], t->big_seed);
		r = pwrite_all(fd, buf, big_ranges[i][1], t->big->data_off + big_ranges[i][0]);
	}
	if (!r)
		r = pwrite_all(fd, l->meta, l->meta_len, l->meta_off);
	if (close(fd) < 0 && !r)
		r = -errno;
	return r;
}

/* Run argv; returns its exit status, or -1 if it could not run. */
static int run(char *const argv[], bool quiet)
{
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		if (quiet) {
			int fd = open("/dev/null", O_WRONLY);
			if (fd >= 0)
				dup2(fd, 1);
		}
		execvp(argv[0], argv);
		_exit(127);
	}
	int st;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void rm_rf(const char *path)
{
	char *argv[] = {"rm", "-rf", "--one-file-system", (char *)path, NULL};
	run(argv, false);
}

/* ---- checks ---------------------------------------------------------------------------- */

static char *join(const char *a, const char *b)
{
	char *s = NULL;
	if (asprintf(&s, "%s%s", a, b) < 0)
		abort();
	return s;
}

static uint32_t expected_nlink(const struct t *t, const struct fs_inode *fi)
{
	uint32_t n = 0;
	if (S_ISDIR(fi->mode)) {
		n = 2;
		for (size_t i = 0; i < fi->n_children; i++)
			n += S_ISDIR(fi->children[i].inode->mode);
		return n;
	}
	for (size_t i = 0; i < t->n_recs; i++)
		n += t->recs[i].fi == fi;
	return n;
}

static const struct tfile *file_of(const struct t *t, const struct fs_inode *fi)
{
	for (size_t i = 0; i < t->n_files; i++)
		if (t->files[i].fi == fi)
			return &t->files[i];
	return NULL;
}

static void check_content(struct t *t, const char *path, const struct tfile *f)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	CHECK(t, fd >= 0, "open %s: %s", path, strerror(errno));
	if (fd < 0)
		return;
	if (f->content) {
		uint8_t *buf = xcalloc(1, f->fi->size + 1);
		size_t got = 0;
		ssize_t n;
		while ((n = read(fd, buf + got, f->fi->size + 1 - got)) > 0)
			got += (size_t)n;
		CHECK(t, got == f->fi->size && !memcmp(buf, f->content, got), "%s: content differs (%zu of %llu bytes)",
		      path, got, (unsigned long long)f->fi->size);
		free(buf);
	} else if (f->fi == t->big) {
		uint8_t buf[4096], want[4096];
		for (size_t i = 0; i < sizeof(big_ranges) / sizeof(big_ranges[0]); i++) {
			size_t n = big_ranges[i][1];
			pattern(want, n, big_ranges[i][0], t->big_seed);
			ssize_t got = pread(fd, buf, n, (off_t)big_ranges[i][0]);
			CHECK(t, got == (ssize_t)n && !memcmp(buf, want, n), "%s: bytes at %llu differ", path,
			      (unsigned long long)big_ranges[i][0]);
		}
		static const uint64_t holes[] = {4096, GIB, 4 * GIB + 8192, BIG_SIZE - 8192};
		memset(want, 0, sizeof(want));
		for (size_t i = 0; i < sizeof(holes) / sizeof(holes[0]); i++) {
			ssize_t got = pread(fd, buf, 4096, (off_t)holes[i]);
			CHECK(t, got == 4096 && !memcmp(buf, want, 4096), "%s: hole at %llu not zero", path,
			      (unsigned long long)holes[i]);
		}
		CHECK(t, pread(fd, buf, 10, (off_t)BIG_SIZE) == 0, "%s: read past EOF", path);
	} else {
		char c;
		CHECK(t, read(fd, &c, 1) == 0, "%s: empty file has data", path);
	}
	close(fd);
}

static void check_xattrs(struct t *t, const char *path, const struct fs_inode *fi)
{
	char list[4096];
	ssize_t n = llistxattr(path, list, sizeof(list));
	CHECK(t, n >= 0, "listxattr %s: %s", path, strerror(errno));
	if (n < 0)
		return;
	size_t count = 0;
	for (ssize_t off = 0; off < n; off += (ssize_t)strlen(list + off) + 1) {
		count++;
		bool known = false;
		for (size_t i = 0; i < fi->n_xattrs; i++)
			known |= !strcmp(fi->xattrs[i].name, list + off);
		CHECK(t, known, "%s: unexpected xattr %s", path, list + off);
	}
	CHECK(t, count == fi->n_xattrs, "%s: %zu xattrs listed, want %zu", path, count, fi->n_xattrs);
	for (size_t i = 0; i < fi->n_xattrs; i++) {
		uint8_t val[2048];
		ssize_t got = lgetxattr(path, fi->xattrs[i].name, val, sizeof(val));
		CHECK(t, got == (ssize_t)fi->xattrs[i].len && !memcmp(val, fi->xattrs[i].value, fi->xattrs[i].len),
		      "%s: xattr %s: got %zd bytes (%s)", path, fi->xattrs[i].name, got,
		      got < 0 ? strerror(errno) : "value differs");
	}
}

static int dent_name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static uint8_t dtype_of(uint32_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFREG: return DT_REG;
	case S_IFDIR: return DT_DIR;
	case S_IFLNK: return DT_LNK;
	case S_IFCHR: return DT_CHR;
	case S_IFBLK: return DT_BLK;
	case S_IFIFO: return DT_FIFO;
	case S_IFSOCK: return DT_SOCK;
	default: return DT_UNKNOWN;
	}
}

/* readdir must list exactly ".", ".." and the children, in strict byte
 * order (EROFS keeps directories sorted), with the right types and inodes. */
static void check_readdir(struct t *t, const char *mnt, const char *path, const struct fs_inode *dir)
{
	char *full = join(mnt, path);
	DIR *d = opendir(full);
	CHECK(t, d != NULL, "opendir %s: %s", full, strerror(errno));
	if (!d) {
		free(full);
		return;
	}
	size_t n = 0, cap = dir->n_children + 2;
	char **names = xcalloc(cap + 1, sizeof(*names));
	char *prev = NULL;
	bool sorted = true, types_ok = true, inos_ok = true;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (prev && strcmp(prev, e->d_name) >= 0)
			sorted = false;
		if (n < cap + 1)
			names[n] = xstrdup(e->d_name);
		prev = n < cap + 1 ? names[n] : prev;
		n++;
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		for (size_t i = 0; i < dir->n_children; i++) {
			if (strcmp(dir->children[i].name, e->d_name))
				continue;
			types_ok &= e->d_type == dtype_of(dir->children[i].inode->mode);
			char *cp = xcalloc(1, strlen(full) + strlen(e->d_name) + 2);
			sprintf(cp, "%s/%s", full, e->d_name);
			struct stat st;
			inos_ok &= lstat(cp, &st) == 0 && st.st_ino == e->d_ino;
			free(cp);
		}
	}
	closedir(d);
	CHECK(t, n == dir->n_children + 2, "%s: readdir gave %zu entries, want %zu", full, n, dir->n_children + 2);
	CHECK(t, sorted, "%s: readdir order is not strict byte order", full);
	CHECK(t, types_ok, "%s: wrong d_type", full);
	CHECK(t, inos_ok, "%s: d_ino differs from st_ino", full);
	if (n == dir->n_children + 2) {
		char **want = xcalloc(n, sizeof(*want));
		want[0] = ".";
		want[1] = "..";
		for (size_t i = 0; i < dir->n_children; i++)
			want[i + 2] = dir->children[i].name;
		qsort(want, n, sizeof(*want), dent_name_cmp);
		bool same = true;
		for (size_t i = 0; i < n; i++)
			same &= !strcmp(want[i], names[i]);
		CHECK(t, same, "%s: readdir names differ from the tree", full);
		free(want);
	}
	for (size_t i = 0; i < n && i < cap + 1; i++)
		free(names[i]);
	free(names);
	free(full);
}

static void check_inode(struct t *t, const char *full, const struct fs_inode *fi, struct stat *out_st)
{
	struct stat st;
	int r = lstat(full, &st);
	CHECK(t, r == 0, "lstat %s: %s", full, strerror(errno));
	if (r)
		return;
	*out_st = st;
	CHECK(t, st.st_mode == fi->mode, "%s: mode %o, want %o", full, st.st_mode, fi->mode);
	CHECK(t, st.st_uid == fi->uid && st.st_gid == fi->gid, "%s: owner %u:%u, want %u:%u", full, st.st_uid,
	      st.st_gid, fi->uid, fi->gid);
	CHECK(t, st.st_mtim.tv_sec == fi->mtime && st.st_mtim.tv_nsec == (long)fi->mtime_nsec,
	      "%s: mtime %lld.%09ld, want %lld.%09u", full, (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec,
	      (long long)fi->mtime, fi->mtime_nsec);
	uint32_t nl = expected_nlink(t, fi);
	CHECK(t, st.st_nlink == nl, "%s: nlink %lu, want %u", full, (unsigned long)st.st_nlink, nl);
	if (S_ISREG(fi->mode) || S_ISLNK(fi->mode))
		CHECK(t, (uint64_t)st.st_size == fi->size, "%s: size %lld, want %llu", full, (long long)st.st_size,
		      (unsigned long long)fi->size);
	if (S_ISCHR(fi->mode) || S_ISBLK(fi->mode))
		CHECK(t, major(st.st_rdev) == fi->rdev_major && minor(st.st_rdev) == fi->rdev_minor,
		      "%s: rdev %u:%u, want %u:%u", full, major(st.st_rdev), minor(st.st_rdev), fi->rdev_major,
		      fi->rdev_minor);
	if (S_ISLNK(fi->mode)) {
		char buf[4200];
		ssize_t n = readlink(full, buf, sizeof(buf));
		CHECK(t, n == (ssize_t)fi->size && !memcmp(buf, fi->symlink, fi->size), "%s: readlink gave %zd bytes",
		      full, n);
	}
	if (S_ISREG(fi->mode))
		check_content(t, full, file_of(t, fi));
	if (!S_ISLNK(fi->mode) && !S_ISCHR(fi->mode) && !S_ISBLK(fi->mode) && !S_ISFIFO(fi->mode) &&
	    !S_ISSOCK(fi->mode))
		check_xattrs(t, full, fi);
	else
		CHECK(t, fi->n_xattrs == 0, "test bug: xattrs on %s are not checked", full);
}

static void check_mounted(struct t *t, const char *mnt, struct fs_inode *root, const struct erofs_image_layout *l)
{
	struct stat rst;
	check_inode(t, mnt, root, &rst);
	check_readdir(t, mnt, "/", root);

	struct stat *sts = xcalloc(t->n_recs, sizeof(*sts));
	for (size_t i = 0; i < t->n_recs; i++) {
		char *full = join(mnt, t->recs[i].path);
		check_inode(t, full, t->recs[i].fi, &sts[i]);
		if (S_ISDIR(t->recs[i].fi->mode))
			check_readdir(t, mnt, t->recs[i].path, t->recs[i].fi);
		free(full);
	}
	/* Hard links share an inode number; distinct inodes do not. */
	bool ino_ok = true;
	for (size_t i = 0; i < t->n_recs; i++)
		for (size_t j = i + 1; j < t->n_recs; j++)
			if ((t->recs[i].fi == t->recs[j].fi) != (sts[i].st_ino == sts[j].st_ino)) {
				ino_ok = false;
				fprintf(stderr, "ino mismatch: %s %s\n", t->recs[i].path, t->recs[j].path);
			}
	CHECK(t, ino_ok, "inode numbers do not match hard links");
	free(sts);

	struct statvfs sv;
	CHECK(t, statvfs(mnt, &sv) == 0 && sv.f_bsize == 4096 && sv.f_blocks == l->image_size / 4096,
	      "statvfs: bsize %lu blocks %llu, want %llu", (unsigned long)sv.f_bsize, (unsigned long long)sv.f_blocks,
	      (unsigned long long)(l->image_size / 4096));
}

/* What fsck.erofs extracted: file types, contents and symlink targets. */
static void check_extracted(struct t *t, const char *dir)
{
	for (size_t i = 0; i < t->n_recs; i++) {
		const struct fs_inode *fi = t->recs[i].fi;
		if (fi == t->big)
			continue; /* not in the extracted image, see run_fsck */
		char *full = join(dir, t->recs[i].path);
		struct stat st;
		int r = lstat(full, &st);
		CHECK(t, r == 0 && (st.st_mode & S_IFMT) == (fi->mode & S_IFMT), "extracted %s: missing or wrong type",
		      full);
		if (r == 0 && S_ISREG(fi->mode)) {
			const struct tfile *f = file_of(t, fi);
			if (f->content || !fi->size) {
				uint8_t *buf = NULL;
				size_t len = 0;
				r = read_file_all(full, 4 * MIB, &buf, &len);
				CHECK(t, r == 0 && len == fi->size && (!len || !memcmp(buf, f->content, len)),
				      "extracted %s: content differs", full);
				free(buf);
			} else {
				CHECK(t, (uint64_t)st.st_size == fi->size, "extracted %s: size differs", full);
			}
		}
		if (r == 0 && S_ISLNK(fi->mode)) {
			char buf[4200];
			ssize_t n = readlink(full, buf, sizeof(buf));
			CHECK(t, n == (ssize_t)fi->size && !memcmp(buf, fi->symlink, fi->size),
			      "extracted %s: link target differs", full);
		}
		free(full);
	}
}

/* ---- limits and errors ------------------------------------------------------------------ */

static void check_rejects(struct t *t)
{
	struct erofs_image_layout l;
	char name[300];

	{
		struct t s = {0};
		struct fs_inode *root = t_new(&s, S_IFDIR | 0755);
		memset(name, 'n', 256);
		name[256] = '\0';
		t_add(&s, root, "/", name, t_new(&s, S_IFREG | 0644));
		CHECK(t, erofs_write_metadata(root, CHUNK_SIZE, &l) == -EFBIG, "256-byte name not rejected");
		t_free(&s);
	}
	{
		struct t s = {0};
		struct fs_inode *root = t_new(&s, S_IFDIR | 0755);
		struct fs_inode *f = t_new(&s, S_IFREG | 0644);
		t_xattr(f, "os2.weird", "v", 1);
		t_add(&s, root, "/", "f", f);
		CHECK(t, erofs_write_metadata(root, CHUNK_SIZE, &l) == -EINVAL, "unknown xattr prefix not rejected");
		t_free(&s);
	}
	{
		struct t s = {0};
		struct fs_inode *root = t_new(&s, S_IFDIR | 0755);
		struct fs_inode *f = t_new(&s, S_IFREG | 0644);
		f->size = 10;
		f->data_off = CHUNK_SIZE; /* overlaps the metadata */
		t_add(&s, root, "/", "f", f);
		CHECK(t, erofs_write_metadata(root, CHUNK_SIZE, &l) == -EINVAL, "data past meta_off not rejected");
		t_free(&s);
	}
	{
		struct t s = {0};
		struct fs_inode *root = t_new(&s, S_IFDIR | 0755);
		t_add(&s, root, "/", "f", t_new(&s, S_IFREG | 0644));
		t_add(&s, root, "/", "f", t_new(&s, S_IFREG | 0644));
		CHECK(t, erofs_write_metadata(root, CHUNK_SIZE, &l) == -EINVAL, "duplicate name not rejected");
		CHECK(t, erofs_write_metadata(root, 4096, &l) == -EINVAL, "unaligned meta_off not rejected");
		t_free(&s);
	}
	{
		/* A minimal tree: the root alone. */
		struct t s = {0};
		struct fs_inode *root = t_new(&s, S_IFDIR | 0755);
		int r = erofs_write_metadata(root, CHUNK_SIZE, &l);
		CHECK(t, r == 0 && l.meta_len == 4096 && l.image_size == 2 * CHUNK_SIZE && l.inode_count == 1 &&
			     root->nid == 1 && root->nlink == 2,
		      "empty root: r=%d", r);
		if (!r)
			erofs_layout_cleanup(&l);
		t_free(&s);
	}
}

/* fsck.erofs 1.5 checks the full image's metadata; with --extract (which
 * decodes every file and writes it out) it segfaults on any file over 4 GiB,
 * mkfs.erofs's own images included, so extraction runs on a second image of
 * the same tree without the sparse file. */
static void run_fsck(struct t *t, struct fs_inode *root, uint64_t meta_off, const char *img, const char *ext)
{
	char *argv1[] = {"fsck.erofs", (char *)img, NULL};
	int rc = run(argv1, true);
	CHECK(t, rc == 0, "fsck.erofs %s exited %d (127: is erofs-utils installed?)", img, rc);

	struct fs_inode *bigdir = NULL;
	for (size_t i = 0; i < t->n_recs; i++)
		if (t->recs[i].fi == t->big)
			bigdir = t->recs[i].dir;
	bigdir->n_children--; /* the sparse file is its only and last entry */
	struct erofs_image_layout l2;
	char *img2 = join(img, ".small");
	int r = erofs_write_metadata(root, meta_off, &l2);
	CHECK(t, r == 0, "erofs_write_metadata without the sparse file: %s", strerror(-r));
	if (!r) {
		r = write_image(t, img2, &l2);
		CHECK(t, r == 0, "write %s: %s", img2, strerror(-r));
		erofs_layout_cleanup(&l2);
	}
	if (!r) {
		char *arg = join("--extract=", ext);
		char *argv2[] = {"fsck.erofs", arg, img2, NULL};
		rc = run(argv2, true);
		CHECK(t, rc == 0, "fsck.erofs --extract=%s %s exited %d", ext, img2, rc);
		free(arg);
		if (rc == 0)
			check_extracted(t, ext);
		rm_rf(ext);
	}
	unlink(img2);
	free(img2);
	bigdir->n_children++;
}

/* ---- main ---------------------------------------------------------------------------------- */

/* White-box: the metadata region is laid out depth-first over directories.
 * Every directory's subtree occupies a contiguous range of inodes (hard
 * links, placed where first named, aside), and a directory's full blocks sit
 * after its own inode and just before its entries' inodes. */
static void check_depth_first(struct t *t, const struct erofs_image_layout *l)
{
	unsigned dirs_with_blocks = 0;
	for (size_t i = 0; i < t->n_recs; i++) {
		const struct trec *d = &t->recs[i];
		if (!S_ISDIR(d->fi->mode))
			continue;
		size_t plen = strlen(d->path);
		uint64_t lo = UINT64_MAX, hi = 0, first_entry = UINT64_MAX;
		for (size_t j = 0; j < t->n_recs; j++) {
			const struct trec *e = &t->recs[j];
			if (e->fi->refs > 1 || strncmp(e->path, d->path, plen) || e->path[plen] != '/')
				continue;
			lo = e->fi->nid < lo ? e->fi->nid : lo;
			hi = e->fi->nid > hi ? e->fi->nid : hi;
			if (e->dir == d->fi && e->fi->nid < first_entry)
				first_entry = e->fi->nid;
		}
		for (size_t j = 0; lo <= hi && j < t->n_recs; j++) {
			const struct trec *e = &t->recs[j];
			bool inside = !strncmp(e->path, d->path, plen) && e->path[plen] == '/';
			CHECK(t, inside || e->fi->refs > 1 || e->fi->nid < lo || e->fi->nid > hi,
			      "%s (nid %llu) sits among the inodes of %s/ (nids %llu..%llu)", e->path,
			      (unsigned long long)e->fi->nid, d->path, (unsigned long long)lo, (unsigned long long)hi);
		}
		const uint8_t *di = l->meta + d->fi->nid * EROFS_SLOT_SIZE;
		uint64_t size = get_le64(di + offsetof(struct erofs_disk_inode_ext, i_size));
		uint32_t blkaddr = get_le32(di + offsetof(struct erofs_disk_inode_ext, i_u));
		if (size < 4096 || first_entry == UINT64_MAX)
			continue;
		uint64_t blocks_at = ((uint64_t)blkaddr - l->meta_off / 4096) * 4096;
		uint64_t blocks_end = blocks_at + size / 4096 * 4096;
		CHECK(t, blocks_at > d->fi->nid * EROFS_SLOT_SIZE && blocks_end <= first_entry * EROFS_SLOT_SIZE &&
				 first_entry * EROFS_SLOT_SIZE - blocks_end < 4096,
		      "%s: blocks at meta offset %llu..%llu, its inode at %llu, its first entry's at %llu", d->path,
		      (unsigned long long)blocks_at, (unsigned long long)blocks_end,
		      (unsigned long long)(d->fi->nid * EROFS_SLOT_SIZE),
		      (unsigned long long)(first_entry * EROFS_SLOT_SIZE));
		dirs_with_blocks++;
	}
	CHECK(t, dirs_with_blocks > 0, "no directory with full blocks to check");
}

int main(void)
{
	struct t t = {0};
	struct erofs_image_layout l, l2;
	char tmp[] = "/tmp/kindling-erofs-XXXXXX";

	if (geteuid() != 0) {
		printf("SKIP: needs root to mount the image and extract device nodes\n");
		return 77;
	}
	if (!mkdtemp(tmp)) {
		perror("mkdtemp");
		return 1;
	}
	char *img = join(tmp, "/image.raw"), *mnt = join(tmp, "/mnt"), *ext = join(tmp, "/extract");
	bool mounted = false, skipped = false;

	check_rejects(&t);

	struct fs_inode *root = build_tree(&t);
	uint64_t meta_off = place_data(&t);
	int r = erofs_write_metadata(root, meta_off, &l);
	CHECK(&t, r == 0, "erofs_write_metadata: %s", strerror(-r));
	if (r)
		goto out;
	CHECK(&t, l.meta_off == meta_off && l.meta_len % 4096 == 0 && l.image_size % CHUNK_SIZE == 0 &&
		      l.image_size >= meta_off + l.meta_len && l.inode_count == t.n_inodes,
	      "layout fields: meta_len %zu image_size %llu inodes %llu", l.meta_len, (unsigned long long)l.image_size,
	      (unsigned long long)l.inode_count);
	CHECK(&t, root->nid == 1, "root nid %llu", (unsigned long long)root->nid);

	/* White-box: the layouts this test means to cover really occur. */
	unsigned long_links[2] = {0, 0};
	for (size_t i = 0; i < t.n_recs; i++) {
		const struct trec *rec = &t.recs[i];
		const uint8_t *di = l.meta + rec->fi->nid * EROFS_SLOT_SIZE;
		unsigned layout = (get_le16(di) >> EROFS_IFMT_LAYOUT_SHIFT) & EROFS_IFMT_LAYOUT_MASK;
		uint64_t size = get_le64(di + offsetof(struct erofs_disk_inode_ext, i_size));
		if (!strcmp(rec->path, "/mid"))
			CHECK(&t, layout == EROFS_LAYOUT_FLAT_INLINE && size == 4096 + 96,
			      "/mid: layout %u size %llu, want inline tail after one block", layout,
			      (unsigned long long)size);
		if (!strcmp(rec->path, "/many"))
			CHECK(&t, size > 3 * 4096, "/many: only %llu bytes", (unsigned long long)size);
		if (!strncmp(rec->path, "/links/", 7))
			long_links[layout == EROFS_LAYOUT_FLAT_INLINE]++;
		if (!strcmp(rec->path, "/other/lnk_4000"))
			CHECK(&t, layout == EROFS_LAYOUT_FLAT_PLAIN, "/other/lnk_4000 not plain");
	}

	CHECK(&t, long_links[1] > 0, "long symlinks: %u plain, none inline", long_links[0]);
	check_depth_first(&t, &l);

	/* Determinism: the same tree gives the same bytes. */
	r = erofs_write_metadata(root, meta_off, &l2);
	CHECK(&t, r == 0 && l2.meta_len == l.meta_len && !memcmp(l2.meta, l.meta, l.meta_len) &&
		      !memcmp(l2.superblock, l.superblock, sizeof(l.superblock)),
	      "second write differs");
	if (!r)
		erofs_layout_cleanup(&l2);

	r = write_image(&t, img, &l);
	CHECK(&t, r == 0, "write %s: %s", img, strerror(-r));
	if (r)
		goto out_layout;

	/* fsck.erofs: an independent reader of every inode, dir and file. */
	run_fsck(&t, root, meta_off, img, ext);

	/* The kernel: a file-backed mount, else a loop device. */
	if (mkdir(mnt, 0755) < 0) {
		CHECK(&t, false, "mkdir %s: %s", mnt, strerror(errno));
		goto out_layout;
	}
	if (mount(img, mnt, "erofs", MS_RDONLY, NULL) == 0) {
		mounted = true;
	} else {
		fprintf(stderr, "file-backed mount failed (%s); trying a loop device\n", strerror(errno));
		char *argv[] = {"mount", "-t", "erofs", "-o", "ro,loop", img, mnt, NULL};
		mounted = run(argv, false) == 0;
	}
	if (!mounted) {
		fprintf(stderr, "cannot mount EROFS here\n");
		skipped = true;
	} else {
		check_mounted(&t, mnt, root, &l);
		if (umount2(mnt, 0) < 0) {
			CHECK(&t, false, "umount %s: %s", mnt, strerror(errno));
			umount2(mnt, MNT_DETACH);
		}
	}

out_layout:
	erofs_layout_cleanup(&l);
out:
	/* KINDLING_TEST_KEEP=1 leaves the image behind for dump.erofs. */
	if (getenv("KINDLING_TEST_KEEP"))
		fprintf(stderr, "kept %s\n", tmp);
	else
		rm_rf(tmp);
	t_free(&t);
	free(img);
	free(mnt);
	free(ext);
	printf("%u passed, %u failed\n", t.passed, t.failed);
	if (t.failed)
		return 1;
	return skipped ? 77 : 0;
}
