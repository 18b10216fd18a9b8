/* The FUSE inspection mount (libfuse3 low-level API, multi-threaded loop).
 *
 *   MOUNT/                       the attached images
 *   MOUNT/<image>/image.raw      the lazy block device as a read-only file
 *   MOUNT/<image>/rootfs/        the image's tree, read by blockd's EROFS reader
 *   MOUNT/<image>/stats.json     the image's counters (a fresh snapshot per open)
 *
 * Inode numbers are computed, never stored, so forget needs no bookkeeping:
 *
 *   1                                 the mount's root
 *   serial << 48 | 1, 2, 3            <image>/, image.raw, stats.json
 *   serial << 48 | 1 << 47 | nid      rootfs nodes (EROFS nid < 2^47)
 *
 * |serial| is the image's attach serial (16 bits, never shared by two
 * attached images, reused only after 65535 attaches), so an old inode of a
 * detached image never names a node of another one: its operations fail
 * with ESTALE, while files opened before the detach keep reading the image
 * they opened (the handle holds a reference).  Images are immutable, so
 * their entries and attributes are cached by the kernel for a day; the root
 * listing and stats.json are not cached.
 */
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define IMMUTABLE_TIMEOUT 86400.0
#define ROOT_TIMEOUT 1.0

#define INO_SERIAL_SHIFT 48
#define INO_ROOTFS_BIT (1ull << 47)
#define INO_LOW_MASK ((1ull << INO_SERIAL_SHIFT) - 1)
enum { NODE_DIR = 1, NODE_RAW = 2, NODE_STATS = 3 };

struct blockd_fuse {
	struct blockd *b;
	struct fuse_session *se;
	char *mountpoint;
	pthread_t thread;
	bool has_thread;
	int done_fd;
	unsigned max_threads;
	dev_t dev;		/* of the mount, for the connection's abort file */
	struct timespec mounted_at;

	/* Open files, by handle.  fh is slot | generation << 32, never a
	 * pointer: when a reader is interrupted the kernel may send RELEASE
	 * while that reader's READ is still being served, and the release
	 * must not free what the read uses. */
	pthread_mutex_t of_lock;
	struct open_file **of_tab;
	uint32_t of_cap;
	uint32_t of_gen;
};

/* What an open file's fh points to. */
struct open_file {
	struct blockd_image *img;	/* referenced; NULL for stats.json */
	char *data;			/* stats.json snapshot */
	size_t len;
	uint32_t gen;
	unsigned refs;			/* the handle's own, plus one per read in progress */
};

static void open_file_free(struct open_file *of)
{
	blockd_image_unref(of->img);
	free(of->data);
	free(of);
}

/* Register |of|; returns its fh, or 0 when out of memory. */
static uint64_t handle_add(struct blockd_fuse *f, struct open_file *of)
{
	uint64_t fh = 0;
	pthread_mutex_lock(&f->of_lock);
	uint32_t slot = 0;
	while (slot < f->of_cap && f->of_tab[slot])
		slot++;
	if (slot == f->of_cap) {
		uint32_t cap = f->of_cap ? f->of_cap * 2 : 64;
		struct open_file **t = realloc(f->of_tab, cap * sizeof(*t));
		if (t) {
			memset(t + f->of_cap, 0, (cap - f->of_cap) * sizeof(*t));
			f->of_tab = t;
			f->of_cap = cap;
		}
	}
	if (slot < f->of_cap) {
		of->gen = ++f->of_gen ? f->of_gen : ++f->of_gen; /* 0 is never a generation */
		of->refs = 1;
		f->of_tab[slot] = of;
		fh = (uint64_t)of->gen << 32 | slot;
	}
	pthread_mutex_unlock(&f->of_lock);
	return fh;
}

/* The open file behind |fh| with a reference for the caller, or NULL if it
 * was released. */
static struct open_file *handle_get(struct blockd_fuse *f, uint64_t fh)
{
	uint32_t slot = (uint32_t)fh, gen = (uint32_t)(fh >> 32);
	struct open_file *of = NULL;
	pthread_mutex_lock(&f->of_lock);
	if (slot < f->of_cap && f->of_tab[slot] && f->of_tab[slot]->gen == gen) {
		of = f->of_tab[slot];
		of->refs++;
	}
	pthread_mutex_unlock(&f->of_lock);
	return of;
}

static void handle_put(struct blockd_fuse *f, struct open_file *of)
{
	pthread_mutex_lock(&f->of_lock);
	bool last = --of->refs == 0;
	pthread_mutex_unlock(&f->of_lock);
	if (last)
		open_file_free(of);
}

/* Forget |fh| and drop the handle's own reference. */
static void handle_release(struct blockd_fuse *f, uint64_t fh)
{
	uint32_t slot = (uint32_t)fh, gen = (uint32_t)(fh >> 32);
	struct open_file *of = NULL;
	pthread_mutex_lock(&f->of_lock);
	if (slot < f->of_cap && f->of_tab[slot] && f->of_tab[slot]->gen == gen) {
		of = f->of_tab[slot];
		f->of_tab[slot] = NULL;
	}
	pthread_mutex_unlock(&f->of_lock);
	if (of)
		handle_put(f, of);
}

static uint64_t make_ino(uint16_t serial, uint64_t low) { return (uint64_t)serial << INO_SERIAL_SHIFT | low; }
static uint16_t ino_serial(fuse_ino_t ino) { return (uint16_t)(ino >> INO_SERIAL_SHIFT); }
static uint64_t ino_low(fuse_ino_t ino) { return ino & INO_LOW_MASK; }
static bool ino_is_rootfs(fuse_ino_t ino) { return ino != FUSE_ROOT_ID && (ino_low(ino) & INO_ROOTFS_BIT); }
static uint64_t ino_nid(fuse_ino_t ino) { return ino_low(ino) & ~INO_ROOTFS_BIT; }

static struct blockd_fuse *fs_of(fuse_req_t req) { return fuse_req_userdata(req); }

/* The image an inode belongs to, referenced; NULL once it is detached. */
static struct blockd_image *image_of(fuse_req_t req, fuse_ino_t ino)
{
	return blockd_image_by_serial(fs_of(req)->b, ino_serial(ino));
}

static void synth_attr(struct blockd_fuse *f, fuse_ino_t ino, mode_t mode, nlink_t nlink, off_t size,
		       struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_mode = mode;
	st->st_nlink = nlink;
	st->st_size = size;
	st->st_blksize = 4096;
	st->st_blocks = (blkcnt_t)((size + 511) / 512);
	st->st_atim = st->st_mtim = st->st_ctim = f->mounted_at;
}

static char *stats_snapshot(struct blockd_image *img, size_t *len)
{
	char *s = blockd_image_stats_json(img);
	*len = s ? strlen(s) : 0;
	return s;
}

/* Attributes of a node that is not in rootfs/.  Returns 0 or -errno. */
static int node_attr(struct blockd_fuse *f, struct blockd_image *img, uint64_t low, struct stat *st)
{
	fuse_ino_t ino = make_ino(img->serial, low);
	switch (low) {
	case NODE_DIR:
		synth_attr(f, ino, S_IFDIR | 0555, 3, 0, st);
		return 0;
	case NODE_RAW:
		synth_attr(f, ino, S_IFREG | 0444, 1, (off_t)blockd_image_size(img), st);
		return 0;
	case NODE_STATS: {
		size_t len;
		char *s = stats_snapshot(img, &len);
		free(s);
		synth_attr(f, ino, S_IFREG | 0444, 1, (off_t)len, st);
		return 0;
	}
	}
	return -ENOENT;
}

static int erofs_to_stat(uint16_t serial, const struct erofs_stat *es, struct stat *st)
{
	if (es->nid >= INO_ROOTFS_BIT)
		return -EOVERFLOW;
	memset(st, 0, sizeof(*st));
	st->st_ino = make_ino(serial, INO_ROOTFS_BIT | es->nid);
	st->st_mode = es->mode;
	st->st_nlink = es->nlink;
	st->st_uid = es->uid;
	st->st_gid = es->gid;
	st->st_size = (off_t)es->size;
	st->st_rdev = makedev(es->rdev_major, es->rdev_minor);
	st->st_blksize = 4096;
	st->st_blocks = (blkcnt_t)((es->size + 511) / 512);
	st->st_mtim.tv_sec = es->mtime;
	st->st_mtim.tv_nsec = es->mtime_nsec;
	st->st_atim = st->st_ctim = st->st_mtim;
	return 0;
}

/* The EROFS tree of |img| for a rootfs/ operation.  Returns 0 or -errno. */
static int fs_for(struct blockd_image *img, struct erofs_fs **fs)
{
	int r = blockd_image_fs(img, fs);
	return r == -EUCLEAN ? -EIO : r;
}

static int rootfs_attr(struct blockd_image *img, uint64_t nid, struct stat *st)
{
	struct erofs_fs *fs;
	int r = fs_for(img, &fs);
	if (r < 0)
		return r;
	struct erofs_stat es;
	r = erofs_getattr(fs, nid, &es);
	if (r < 0)
		return r == -EUCLEAN ? -EIO : r;
	return erofs_to_stat(img->serial, &es, st);
}

static void reply_entry(fuse_req_t req, const struct stat *st, double timeout)
{
	struct fuse_entry_param e = { .ino = st->st_ino, .attr = *st, .attr_timeout = timeout, .entry_timeout = timeout };
	fuse_reply_entry(req, &e);
}

/* The attached image whose directory is |name|, referenced, or NULL. */
static struct blockd_image *image_named(struct blockd *b, const char *name)
{
	struct blockd_image **v;
	size_t n;
	if (blockd_list_images(b, &v, &n) < 0)
		return NULL;
	struct blockd_image *found = NULL;
	for (size_t i = 0; i < n; i++) {
		if (!found && strcmp(v[i]->name, name) == 0)
			found = v[i];
		else
			blockd_image_unref(v[i]);
	}
	free(v);
	return found;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct blockd_fuse *f = fs_of(req);
	struct stat st;
	int r;
	if (parent == FUSE_ROOT_ID) {
		struct blockd_image *img = image_named(f->b, name);
		if (!img) {
			fuse_reply_err(req, ENOENT); /* not cached: images come and go */
			return;
		}
		node_attr(f, img, NODE_DIR, &st);
		blockd_image_unref(img);
		reply_entry(req, &st, ROOT_TIMEOUT);
		return;
	}
	struct blockd_image *img = image_of(req, parent);
	if (!img) {
		fuse_reply_err(req, ESTALE);
		return;
	}
	double timeout = IMMUTABLE_TIMEOUT;
	if (!ino_is_rootfs(parent)) {
		if (ino_low(parent) != NODE_DIR)
			r = -ENOTDIR;
		else if (strcmp(name, "image.raw") == 0)
			r = node_attr(f, img, NODE_RAW, &st);
		else if (strcmp(name, "stats.json") == 0) {
			r = node_attr(f, img, NODE_STATS, &st);
			timeout = 0;
		} else if (strcmp(name, "rootfs") == 0) {
			struct erofs_fs *fs;
			r = fs_for(img, &fs);
			if (r == 0)
				r = rootfs_attr(img, erofs_root(fs), &st);
		} else
			r = -ENOENT;
	} else {
		struct erofs_fs *fs;
		struct erofs_stat es;
		r = fs_for(img, &fs);
		if (r == 0)
			r = erofs_lookup(fs, ino_nid(parent), name, &es);
		if (r == -EUCLEAN)
			r = -EIO;
		if (r == 0)
			r = erofs_to_stat(img->serial, &es, &st);
	}
	blockd_image_unref(img);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	reply_entry(req, &st, timeout);
}

static size_t count_images(struct blockd *b)
{
	struct blockd_image **v;
	size_t n;
	if (blockd_list_images(b, &v, &n) < 0)
		return 0;
	for (size_t i = 0; i < n; i++)
		blockd_image_unref(v[i]);
	free(v);
	return n;
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)fi;
	struct blockd_fuse *f = fs_of(req);
	struct stat st;
	if (ino == FUSE_ROOT_ID) {
		synth_attr(f, ino, S_IFDIR | 0555, (nlink_t)(2 + count_images(f->b)), 0, &st);
		fuse_reply_attr(req, &st, ROOT_TIMEOUT);
		return;
	}
	struct blockd_image *img = image_of(req, ino);
	if (!img) {
		fuse_reply_err(req, ESTALE);
		return;
	}
	int r = ino_is_rootfs(ino) ? rootfs_attr(img, ino_nid(ino), &st) : node_attr(f, img, ino_low(ino), &st);
	blockd_image_unref(img);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_attr(req, &st, ino_low(ino) == NODE_STATS ? 0 : IMMUTABLE_TIMEOUT);
}

/* ---- directories --------------------------------------------------------------------------------------------- */

struct dirbuf {
	fuse_req_t req;
	bool plus;
	char *buf;
	size_t cap, len;
	bool full;
};

/* Add one entry; false once the reply buffer is full. */
static bool dir_add(struct dirbuf *d, const char *name, const struct stat *st, off_t next, double timeout)
{
	size_t room = d->cap - d->len, need;
	if (d->plus) {
		struct fuse_entry_param e = { .ino = st->st_ino, .attr = *st, .attr_timeout = timeout,
					      .entry_timeout = timeout };
		need = fuse_add_direntry_plus(d->req, d->buf + d->len, room, name, &e, next);
	} else
		need = fuse_add_direntry(d->req, d->buf + d->len, room, name, st, next);
	if (need > room) {
		d->full = true;
		return false;
	}
	d->len += need;
	return true;
}

static mode_t ftype_mode(unsigned t)
{
	static const mode_t m[] = { 0, S_IFREG, S_IFDIR, S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK, S_IFLNK };
	return t < sizeof(m) / sizeof(m[0]) ? m[t] : 0;
}

struct erofs_dir_ctx {
	struct dirbuf *d;
	struct blockd_image *img;
	struct erofs_fs *fs;
	int err;
};

static int erofs_dir_cb(void *arg, const char *name, size_t name_len, uint64_t nid, unsigned file_type,
			uint64_t next_cookie)
{
	struct erofs_dir_ctx *c = arg;
	char nm[256];
	if (name_len == 0 || name_len >= sizeof(nm) || nid >= INO_ROOTFS_BIT)
		return 0; /* the reader checked names; skip what FUSE cannot carry */
	memcpy(nm, name, name_len);
	nm[name_len] = 0;
	struct stat st;
	bool dot = strcmp(nm, ".") == 0 || strcmp(nm, "..") == 0;
	if (c->d->plus && !dot) {
		int r = rootfs_attr(c->img, nid, &st);
		if (r < 0) {
			c->err = r;
			return 1;
		}
	} else {
		memset(&st, 0, sizeof(st));
		st.st_ino = make_ino(c->img->serial, INO_ROOTFS_BIT | nid);
		st.st_mode = ftype_mode(file_type);
	}
	if (c->d->plus && dot) {
		/* The kernel makes no dentry for "." and ".."; send no attributes
		 * it could cache wrongly. */
		memset(&st, 0, sizeof(st));
		st.st_mode = S_IFDIR;
		st.st_ino = 0;
	}
	return dir_add(c->d, nm, &st, (off_t)next_cookie, IMMUTABLE_TIMEOUT) ? 0 : 1;
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus)
{
	struct blockd_fuse *f = fs_of(req);
	struct dirbuf d = { .req = req, .plus = plus, .cap = size };
	d.buf = malloc(size ? size : 1);
	if (!d.buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	int r = 0;
	struct stat st;
	if (ino == FUSE_ROOT_ID) {
		struct blockd_image **v;
		size_t n;
		r = blockd_list_images(f->b, &v, &n);
		if (r == 0) {
			/* Offsets: 1 = after ".", 2 = after "..", 2 + i + 1 = after image i. */
			for (off_t i = off; i < (off_t)n + 2 && !d.full; i++) {
				if (i < 2) {
					synth_attr(f, FUSE_ROOT_ID, S_IFDIR | 0555, 2, 0, &st);
					if (plus)
						st.st_ino = 0;
					dir_add(&d, i == 0 ? "." : "..", &st, i + 1, 0);
				} else {
					node_attr(f, v[i - 2], NODE_DIR, &st);
					dir_add(&d, v[i - 2]->name, &st, i + 1, ROOT_TIMEOUT);
				}
			}
			for (size_t i = 0; i < n; i++)
				blockd_image_unref(v[i]);
			free(v);
		}
	} else {
		struct blockd_image *img = image_of(req, ino);
		if (!img)
			r = -ESTALE;
		else if (!ino_is_rootfs(ino)) {
			static const char *const names[] = { ".", "..", "image.raw", "rootfs", "stats.json" };
			for (off_t i = off; i < 5 && !d.full && r == 0; i++) {
				if (i < 2) {
					node_attr(f, img, NODE_DIR, &st);
					if (plus)
						st.st_ino = 0;
				} else if (i == 2)
					node_attr(f, img, NODE_RAW, &st);
				else if (i == 3) {
					struct erofs_fs *fs;
					r = fs_for(img, &fs);
					if (r == 0)
						r = rootfs_attr(img, erofs_root(fs), &st);
					if (r < 0)
						break;
				} else
					node_attr(f, img, NODE_STATS, &st);
				dir_add(&d, names[i], &st, i + 1, i == 4 ? 0 : IMMUTABLE_TIMEOUT);
			}
		} else {
			struct erofs_dir_ctx c = { .d = &d, .img = img };
			r = fs_for(img, &c.fs);
			if (r == 0)
				r = erofs_readdir(c.fs, ino_nid(ino), (uint64_t)off, erofs_dir_cb, &c);
			if (r == 0)
				r = c.err;
			if (r == -EUCLEAN)
				r = -EIO;
		}
		blockd_image_unref(img);
	}
	/* Entries already in the buffer go out; an error with none is an error. */
	if (r < 0 && d.len == 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_buf(req, d.buf, d.len);
	free(d.buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)fi;
	do_readdir(req, ino, size, off, false);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)fi;
	do_readdir(req, ino, size, off, true);
}

/* ---- files ----------------------------------------------------------------------------------------------------- */

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if ((fi->flags & O_ACCMODE) != O_RDONLY) {
		fuse_reply_err(req, EROFS);
		return;
	}
	struct blockd_image *img = ino == FUSE_ROOT_ID ? NULL : image_of(req, ino);
	if (!img) {
		fuse_reply_err(req, ino == FUSE_ROOT_ID ? EISDIR : ESTALE);
		return;
	}
	struct open_file *of = calloc(1, sizeof(*of));
	if (!of) {
		blockd_image_unref(img);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	if (!ino_is_rootfs(ino) && ino_low(ino) == NODE_STATS) {
		/* One snapshot per open, so a reader sees one consistent
		 * document; direct_io because its size changes. */
		of->data = stats_snapshot(img, &of->len);
		blockd_image_unref(img);
		if (!of->data) {
			free(of);
			fuse_reply_err(req, ENOMEM);
			return;
		}
		fi->direct_io = 1;
	} else if (!ino_is_rootfs(ino) && ino_low(ino) != NODE_RAW) {
		blockd_image_unref(img);
		free(of);
		fuse_reply_err(req, EISDIR);
		return;
	} else {
		of->img = img; /* the handle keeps the image alive past a detach */
		fi->keep_cache = 1; /* immutable: the page cache stays valid */
	}
	struct blockd_fuse *f = fs_of(req);
	fi->fh = handle_add(f, of);
	if (!fi->fh) {
		open_file_free(of);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	if (fuse_reply_open(req, fi) != 0)
		handle_release(f, fi->fh);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	if (off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	/* |req| is gone once replied to: keep what we need from it. */
	struct blockd_fuse *f = fs_of(req);
	struct open_file *of = handle_get(f, fi->fh);
	if (!of) {
		fuse_reply_err(req, EBADF);
		return;
	}
	if (!of->img) { /* stats.json */
		size_t o = (uint64_t)off < of->len ? (size_t)off : of->len;
		size_t n = of->len - o < size ? of->len - o : size;
		fuse_reply_buf(req, of->data + o, n);
		handle_put(f, of);
		return;
	}
	char *buf = malloc(size ? size : 1);
	if (!buf) {
		handle_put(f, of);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	int r = 0;
	size_t n = 0;
	if (ino_is_rootfs(ino)) {
		struct erofs_fs *fs;
		r = fs_for(of->img, &fs);
		if (r == 0)
			r = erofs_read(fs, ino_nid(ino), (uint64_t)off, buf, size, &n);
		if (r == -EUCLEAN || r == -EINVAL)
			r = -EIO;
	} else {
		uint64_t isz = blockd_image_size(of->img);
		if ((uint64_t)off < isz) {
			n = (uint64_t)size < isz - (uint64_t)off ? size : (size_t)(isz - (uint64_t)off);
			r = blockd_image_read(of->img, (uint64_t)off, buf, n);
		}
	}
	handle_put(f, of);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_buf(req, buf, n);
	free(buf);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	handle_release(fs_of(req), fi->fh);
	fuse_reply_err(req, 0);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	if (!ino_is_rootfs(ino)) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	struct blockd_image *img = image_of(req, ino);
	if (!img) {
		fuse_reply_err(req, ESTALE);
		return;
	}
	char target[4097];
	struct erofs_fs *fs;
	int r = fs_for(img, &fs);
	if (r == 0)
		r = erofs_readlink(fs, ino_nid(ino), target, sizeof(target));
	blockd_image_unref(img);
	if (r == -EUCLEAN || r == -ERANGE)
		r = -EIO;
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_readlink(req, target);
}

/* Shared tail of listxattr/getxattr: size 0 asks for the length only. */
static void reply_xattr(fuse_req_t req, int r, const char *buf, size_t len, size_t size)
{
	if (r == -EUCLEAN)
		r = -EIO;
	if (r < 0)
		fuse_reply_err(req, -r);
	else if (size == 0)
		fuse_reply_xattr(req, len);
	else
		fuse_reply_buf(req, buf, len);
}

/* getxattr of |name|, or listxattr when |name| is NULL: the same lookup and
 * the same size protocol, on rootfs/ inodes only. */
static void xattr_op(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	if (!ino_is_rootfs(ino)) {
		if (name)
			fuse_reply_err(req, ENODATA);
		else
			reply_xattr(req, 0, NULL, 0, size);
		return;
	}
	struct blockd_image *img = image_of(req, ino);
	if (!img) {
		fuse_reply_err(req, ESTALE);
		return;
	}
	char *buf = size ? malloc(size) : NULL;
	size_t len = 0;
	struct erofs_fs *fs;
	int r = size && !buf ? -ENOMEM : fs_for(img, &fs);
	if (r == 0)
		r = name ? erofs_getxattr(fs, ino_nid(ino), name, buf, size, &len)
			 : erofs_listxattr(fs, ino_nid(ino), buf, size, &len);
	blockd_image_unref(img);
	reply_xattr(req, r, buf, len, size);
	free(buf);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	xattr_op(req, ino, NULL, size);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	xattr_op(req, ino, name, size);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	(void)ino;
	struct statvfs sv = { .f_bsize = 4096, .f_frsize = 4096, .f_namemax = 255 };
	fuse_reply_statfs(req, &sv);
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	/* Big reads cut FUSE round trips for image.raw; the kernel clamps. */
	conn->max_readahead = 1u << 20;
	if (conn->capable & FUSE_CAP_READDIRPLUS)
		conn->want |= FUSE_CAP_READDIRPLUS;
}

static const struct fuse_lowlevel_ops ops = {
	.init = op_init,
	.lookup = op_lookup,
	.getattr = op_getattr,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.open = op_open,
	.read = op_read,
	.release = op_release,
	.readlink = op_readlink,
	.listxattr = op_listxattr,
	.getxattr = op_getxattr,
	.statfs = op_statfs,
};

/* ---- the session ----------------------------------------------------------------------------------------- */

static void *loop_main(void *arg)
{
	struct blockd_fuse *f = arg;
	struct fuse_loop_config *cfg = fuse_loop_cfg_create();
	int r;
	if (!cfg)
		r = fuse_session_loop(f->se);
	else {
		fuse_loop_cfg_set_max_threads(cfg, f->max_threads);
		fuse_loop_cfg_set_idle_threads(cfg, f->max_threads / 2 ? f->max_threads / 2 : 1);
		r = fuse_session_loop_mt(f->se, cfg);
		fuse_loop_cfg_destroy(cfg);
	}
	log_info("fuse: the session on %s ended (%d)", f->mountpoint, r);
	if (f->done_fd >= 0) {
		char c = 'x';
		ssize_t w = write(f->done_fd, &c, 1);
		(void)w;
	}
	return NULL;
}

/* A FUSE mount whose daemon died answers every request with ENOTCONN.  Detach
 * it (lazily: readers still inside it keep their error) so a new mount can
 * take the place.  statfs, not stat: the kernel answers stat from cached
 * attributes for a while after the death, statfs always asks the daemon. */
const char *fuse_mountpoint(const struct blockd_fuse *f) { return f->mountpoint; }

static int clear_stale_mount(const char *mountpoint)
{
	struct statfs sfs;
	if (statfs(mountpoint, &sfs) == 0 || (errno != ENOTCONN && errno != ECONNABORTED))
		return 0;
	log_warn("fuse: %s is a stale FUSE mount (its blockd died); detaching it", mountpoint);
	if (umount2(mountpoint, MNT_DETACH) == 0)
		return 0;
	int err = errno;
	/* Not root: fusermount3 may unmount it for us. */
	pid_t pid = fork();
	if (pid == 0) {
		execlp("fusermount3", "fusermount3", "-u", "-z", mountpoint, (char *)NULL);
		_exit(127);
	}
	int status = 0;
	if (pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return 0;
	log_err("fuse: cannot detach the stale mount at %s: %s (try `fusermount3 -u -z %s`)", mountpoint,
		strerror(err), mountpoint);
	return -err;
}

void fuse_stop(struct blockd_fuse *f)
{
	if (!f)
		return;
	if (f->se) {
		fuse_session_exit(f->se);
		if (f->has_thread) {
			/* The loop's threads sit in read(2) on the session fd.  Wake
			 * them by ending the connection (detach the mount, abort the
			 * connection so even open files let go) and join them BEFORE
			 * fuse_session_unmount closes that fd: closing it under a
			 * reader is a race on the descriptor number. */
			if (umount2(f->mountpoint, MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT)
				log_debug("fuse: detach %s: %s", f->mountpoint, strerror(errno));
			if (f->dev) {
				char path[96];
				snprintf(path, sizeof(path), "/sys/fs/fuse/connections/%u/abort", minor(f->dev));
				int fd = open(path, O_WRONLY | O_CLOEXEC);
				if (fd >= 0) {
					ssize_t w = write(fd, "1", 1);
					(void)w;
					close(fd);
				}
			}
			pthread_join(f->thread, NULL);
		}
		fuse_session_unmount(f->se);
		fuse_session_destroy(f->se);
	}
	log_info("fuse: unmounted %s", f->mountpoint);
	/* Files the kernel never released (the connection was aborted). */
	for (uint32_t i = 0; i < f->of_cap; i++)
		if (f->of_tab[i])
			open_file_free(f->of_tab[i]);
	free(f->of_tab);
	pthread_mutex_destroy(&f->of_lock);
	free(f->mountpoint);
	free(f);
}

int fuse_start(struct blockd *b, const char *mountpoint, const struct blockd_mount_options *opt,
	       struct blockd_fuse **out)
{
	struct blockd_fuse *f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	f->b = b;
	pthread_mutex_init(&f->of_lock, NULL);
	f->done_fd = opt ? opt->done_fd : -1;
	f->max_threads = opt && opt->max_threads ? opt->max_threads : 16;
	clock_gettime(CLOCK_REALTIME, &f->mounted_at);
	f->mountpoint = strdup(mountpoint);
	if (!f->mountpoint) {
		pthread_mutex_destroy(&f->of_lock);
		free(f);
		return -ENOMEM;
	}
	int r = clear_stale_mount(mountpoint);
	if (r < 0) {
		fuse_stop(f);
		return r;
	}
	char optstr[160];
	snprintf(optstr, sizeof(optstr), "ro,default_permissions,fsname=blockd,subtype=kindling%s",
		 opt && opt->allow_other ? ",allow_other" : "");
	char *argv[] = { "blockd", "-o", optstr, NULL };
	struct fuse_args args = FUSE_ARGS_INIT(3, argv);
	f->se = fuse_session_new(&args, &ops, sizeof(ops), f);
	fuse_opt_free_args(&args);
	if (!f->se) {
		log_err("fuse: cannot create a session (is libfuse3 working?)");
		fuse_stop(f);
		return -EIO;
	}
	if (fuse_session_mount(f->se, mountpoint) != 0) {
		log_err("fuse: cannot mount on %s (does the directory exist, is /dev/fuse usable, and for a "
			"non-root user, is fusermount3 installed?)",
			mountpoint);
		fuse_session_destroy(f->se);
		f->se = NULL;
		fuse_stop(f);
		return -EIO;
	}
	int e = pthread_create(&f->thread, NULL, loop_main, f);
	if (e) {
		log_err("fuse: cannot start the session thread: %s", strerror(e));
		fuse_stop(f);
		return -e;
	}
	f->has_thread = true;
	/* The mount's device names its connection in /sys/fs/fuse/connections
	 * (used by fuse_stop); the loop thread answers this stat. */
	struct stat st;
	if (stat(mountpoint, &st) == 0)
		f->dev = st.st_dev;
	log_info("fuse: serving %s", mountpoint);
	*out = f;
	return 0;
}

void fuse_notify_root_change(struct blockd_fuse *f, const char *name)
{
	/* Fails harmlessly if the kernel never looked the name up. */
	fuse_lowlevel_notify_inval_entry(f->se, FUSE_ROOT_ID, name, strlen(name));
}
