/* blockd internals: shared between the files of blockd/ only. */
#ifndef KINDLING_BLOCKD_INTERNAL_H
#define KINDLING_BLOCKD_INTERNAL_H

#define LOG_COMPONENT "blockd"
#include "../common/common.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

/* A read-only random-access byte source: the lazy image, a plain file in
 * tests, or a fuzzer's buffer.  read_at fills exactly |len| bytes at |off|
 * or fails; reads past |size| fail with -EINVAL.  Must be thread-safe. */
struct blockdev {
	int (*read_at)(void *ctx, uint64_t off, void *buf, size_t len);
	uint64_t size;
	void *ctx;
};

static inline int blockdev_read(const struct blockdev *d, uint64_t off, void *buf, size_t len)
{
	return d->read_at(d->ctx, off, buf, len);
}

/* ======================================================================
 * EROFS reader (erofs_read.c): blockd's own reader for the file tree the
 * FUSE mount serves under rootfs/.  Images are hostile input: every offset,
 * size, nid and name is checked before use; a bad image gives -EUCLEAN
 * (logged once with the reason), never a crash or an out-of-bounds read.
 * ====================================================================== */

struct erofs_fs;

struct erofs_stat {
	uint64_t nid;
	uint32_t mode;		/* S_IFMT | permissions */
	uint32_t uid, gid;
	uint32_t nlink;
	uint64_t size;
	int64_t mtime;
	uint32_t mtime_nsec;
	uint32_t rdev_major, rdev_minor;
	uint64_t ino;		/* stable inode number for st_ino */
};

/* Open the filesystem on |dev| (the superblock is checked).  |dev| must
 * outlive the result.  Returns 0, -EUCLEAN for a bad image, or -errno. */
int erofs_open(const struct blockdev *dev, struct erofs_fs **out);
void erofs_close(struct erofs_fs *fs);

/* The root directory's nid. */
uint64_t erofs_root(const struct erofs_fs *fs);

/* Look up |name| (one component) in directory |dir|.  Returns 0 and fills
 * |out|, -ENOENT, -ENOTDIR, or -EUCLEAN. */
int erofs_lookup(struct erofs_fs *fs, uint64_t dir, const char *name, struct erofs_stat *out);

/* Stat inode |nid|.  Returns 0 or -EUCLEAN / -errno. */
int erofs_getattr(struct erofs_fs *fs, uint64_t nid, struct erofs_stat *out);

/* Called for each directory entry; return non-zero to stop (erofs_readdir
 * then returns 0).  |next_cookie| resumes the listing after this entry. */
typedef int (*erofs_dirent_cb)(void *arg, const char *name, size_t name_len, uint64_t nid, unsigned file_type,
			       uint64_t next_cookie);

/* List directory |dir| from |cookie| (0 = the start), "." and ".."
 * included.  Returns 0, -ENOTDIR or -EUCLEAN. */
int erofs_readdir(struct erofs_fs *fs, uint64_t dir, uint64_t cookie, erofs_dirent_cb cb, void *arg);

/* Read up to |len| bytes of regular file |nid| at |off|; |*out_n| is the
 * count (0 at or past the end).  Returns 0, -EISDIR, -EINVAL, -EUCLEAN. */
int erofs_read(struct erofs_fs *fs, uint64_t nid, uint64_t off, void *buf, size_t len, size_t *out_n);

/* Copy symlink |nid|'s target, NUL-terminated, into |buf| of |cap| bytes.
 * Returns 0, -EINVAL (not a symlink), -ERANGE (too small), -EUCLEAN. */
int erofs_readlink(struct erofs_fs *fs, uint64_t nid, char *buf, size_t cap);

/* List xattr names as a NUL-separated list (listxattr(2) format).  With
 * |cap| 0 only |*out_len| is set.  Returns 0, -ERANGE or -EUCLEAN. */
int erofs_listxattr(struct erofs_fs *fs, uint64_t nid, char *buf, size_t cap, size_t *out_len);

/* Value of xattr |name|.  With |cap| 0 only |*out_len| is set.  Returns 0,
 * -ENODATA, -ERANGE or -EUCLEAN. */
int erofs_getxattr(struct erofs_fs *fs, uint64_t nid, const char *name, void *buf, size_t cap, size_t *out_len);

/* ======================================================================
 * NBD server (nbd.c): a read-only export of a blockdev over the NBD
 * protocol's fixed newstyle handshake, on a unix or TCP socket.
 * ====================================================================== */

struct nbd_server;

struct nbd_export {
	const char *name;		/* export name clients ask for ("" = default) */
	const struct blockdev *dev;	/* must outlive the server */
	const char *description;	/* optional */
};

/* Listen on |address| ("unix:/path/sock" or "tcp:127.0.0.1:10809") and serve
 * |exports| on a thread of its own, one thread per client.  Returns 0 or
 * -errno (logged, naming the address). */
int nbd_server_start(const char *address, const struct nbd_export *exports, size_t n_exports,
		     struct nbd_server **out);

/* The address actually bound (for "tcp:127.0.0.1:0"). */
const char *nbd_server_address(const struct nbd_server *s);

/* Stop accepting, close every client, join the threads, free. */
void nbd_server_stop(struct nbd_server *s);

/* The protocol's checked parsers, exposed for the fuzz target and unit
 * tests.  Each consumes a client-to-server message in |<buf, len>| and
 * returns 0, -EAGAIN if more bytes are needed, or -EPROTO. */
struct nbd_request {
	uint16_t flags, type;
	uint64_t cookie, offset;
	uint32_t length;
};
int nbd_parse_request(const uint8_t *buf, size_t len, struct nbd_request *out);

struct nbd_option {
	uint32_t option;
	uint32_t length;	/* of the option data that follows the header */
};
int nbd_parse_option_header(const uint8_t *buf, size_t len, struct nbd_option *out);

/* Parse NBD_OPT_GO / NBD_OPT_INFO data: export name and info requests. */
int nbd_parse_go(const uint8_t *data, size_t len, char *name, size_t name_cap, uint16_t *info_reqs,
		 size_t info_cap, size_t *n_info);

/* The protocol state machine, free of I/O so the fuzz target drives it
 * directly.  The server feeds it what a client sends and it answers through
 * |emit|, which sends |<buf, len>| to the client, all of it (0 or -errno). */
typedef int (*nbd_emit_fn)(void *ctx, const void *buf, size_t len);

struct nbd_session;

/* Create a session serving |exports| (borrowed; they must outlive it) and
 * emit the server greeting.  |peer| names the client in log lines
 * (copied).  Returns 0 or -errno. */
int nbd_session_new(const struct nbd_export *exports, size_t n_exports, const char *peer, nbd_emit_fn emit,
		    void *emit_ctx, struct nbd_session **out);

/* Feed client bytes.  Returns 0 to go on, 1 when the session ended cleanly
 * (NBD_OPT_ABORT, NBD_CMD_DISC; the client's EOF must still close it),
 * -EPROTO on a protocol violation (logged with the reason), or the emit
 * callback's error.  After a non-zero return, feed nothing more. */
int nbd_session_feed(struct nbd_session *s, const uint8_t *buf, size_t len);

void nbd_session_free(struct nbd_session *s);

#endif
