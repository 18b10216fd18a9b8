/* blockd internals: shared between the files of blockd/ only. */
#ifndef KINDLING_BLOCKD_INTERNAL_H
#define KINDLING_BLOCKD_INTERNAL_H

#define LOG_COMPONENT "blockd"
#include "common/common.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
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

/* Where regular file |nid|'s block-mapped data sits: |*out_len| bytes at
 * device offset |*out_off| (a whole number of blocks); both 0 for any other
 * inode, an empty file, data held inline with the metadata, or a layout
 * other than flat.  Returns 0 or -EUCLEAN / -errno. */
int erofs_data_extent(struct erofs_fs *fs, uint64_t nid, uint64_t *out_off, uint64_t *out_len);

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
 * Who may connect (sock.c): the control and NBD unix sockets get an explicit
 * mode (0600, or 0660 with a group), are moved into place only once they
 * have it, and every accepted peer's credentials are checked.
 * ====================================================================== */

struct sock_access {
	bool has_group;		/* sockets 0660 with |gid|, whose members may connect */
	gid_t gid;
	char group[256];	/* its name, for log lines */
	bool allow_remote;	/* NBD over TCP on an address that is not loopback */
};

/* Fill |acc| for group |group| (NULL or "" = none: sockets 0600) and
 * |allow_remote|.  Returns 0, -ENOENT for an unknown group, or -errno
 * (logged). */
int sock_access_init(struct sock_access *acc, const char *group, bool allow_remote);

/* May a peer with |uid|, primary |gid| and supplementary |<groups,
 * n_groups>| use a blockd running as |self|?  Root and |self| always may;
 * members of |acc|'s group (if any) too.  |acc| may be NULL (no group). */
bool sock_creds_allowed(const struct sock_access *acc, uid_t self, uid_t uid, gid_t gid, const gid_t *groups,
			size_t n_groups);

/* Check the peer of the accepted unix socket |fd| (SO_PEERCRED and
 * SO_PEERGROUPS) against |acc| (may be NULL).  |*out| gets its credentials.
 * Returns 0 (allowed), -EACCES (refused) or -errno (unreadable); logs
 * nothing: the caller reports refusals through sock_log_refusal. */
int sock_peer_check(int fd, const struct sock_access *acc, struct ucred *out);

/* Rate limit for refusal log lines: one a second, the rest counted. */
struct sock_refusals {
	bool logged;
	double last;
	unsigned long suppressed;
};

/* Log the refusal (|err| from sock_peer_check) of the peer |cr| by the
 * socket named |what|, saying who may connect and how to let someone in. */
void sock_log_refusal(struct sock_refusals *rl, const char *what, const struct ucred *cr, const struct sock_access *acc,
		      int err);

/* True if |sa| is a loopback address (127.0.0.0/8, ::1, ::ffff:127.x.y.z). */
bool sock_addr_is_loopback(const struct sockaddr *sa, socklen_t len);

/* Create a listening unix socket at |path| with |acc|'s mode and group
 * (|acc| may be NULL: 0600), never visible at |path| with another mode.  A
 * stale socket there (nobody listening) is replaced; a live one gives
 * -EADDRINUSE, a file that is not a socket -EEXIST.  |what| names the socket
 * in log lines.  On success |*out_fd| listens with |backlog| and
 * |*out_dev|, |*out_ino| identify the file for sock_unlink_if_ours.
 * Returns 0 or -errno (logged, saying what to do). */
int sock_listen_unix(const char *path, const struct sock_access *acc, int backlog, const char *what, int *out_fd,
		     dev_t *out_dev, ino_t *out_ino);

/* Remove |path| if it is still the socket |dev|, |ino| (not one another
 * server put there since). */
void sock_unlink_if_ours(const char *path, dev_t dev, ino_t ino);

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
 * |exports| on a thread of its own, one thread per client.  |acc| (copied;
 * NULL = no group, loopback only) decides who may connect: a unix socket
 * gets its mode and each client's credentials are checked; a tcp address
 * that is not loopback is refused with -EPERM unless acc->allow_remote.
 * Returns 0 or -errno (logged, naming the address). */
int nbd_server_start(const char *address, const struct nbd_export *exports, size_t n_exports,
		     const struct sock_access *acc, struct nbd_server **out);

/* The address actually bound (for "tcp:127.0.0.1:0"). */
const char *nbd_server_address(const struct nbd_server *s);

/* True if the server listens on tcp: every local user can connect (TCP
 * carries no credentials); |*out_remote| says whether other hosts can too. */
bool nbd_server_is_tcp(const struct nbd_server *s, bool *out_remote);

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

/* ======================================================================
 * The blockd service (blockd.c, prefetch.c, fuse.c, control.c): attached
 * images, their counters, readahead, startup traces, the FUSE mount and the
 * control socket.
 * ====================================================================== */

#include <pthread.h>
#include <stdatomic.h>

#include "blockd.h"

struct blockd_fuse;

/* At most this many images attached at once; an image's serial number
 * (16 bits, in FUSE inode numbers) is kept unique among attached images and
 * maps to slot serial % BLOCKD_MAX_IMAGES. */
#define BLOCKD_MAX_IMAGES 256u

/* Concurrent sequential streams readahead tells apart per image. */
#define BLOCKD_STREAMS 8u

/* Per-chunk state bits (blockd_image.chunk_state). */
enum {
	CHUNK_READ = 1,		/* a reader read it since attach */
	CHUNK_RESIDENT = 2,	/* served or prefetched successfully since attach */
	CHUNK_QUEUED = 4,	/* readahead or prefetch asked for it */
	CHUNK_PREFETCHED = 8,	/* the trace prefetch fetched it */
	CHUNK_FAILED = 16,	/* the last attempt failed on every tier */
	CHUNK_FETCHED = 32,	/* brought in from L2 or L3 since attach (counted once) */
	CHUNK_UNTRACED = 64,	/* readahead skipped it: the trace does not list it (counted once) */
};

struct blockd_counters {
	_Atomic uint64_t bytes_read, reads, read_errors;
	_Atomic uint64_t hole_bytes;			/* bytes read from holes */
	_Atomic uint64_t chunk_reads[CACHE_TIER_COUNT];	/* chunk pieces served, by tier */
	/* Distinct chunks brought in from L2/L3 since attach.  Counted once per
	 * chunk: readers sharing one fetch (single flight) all see its tier. */
	_Atomic uint64_t fetched[CACHE_TIER_COUNT];
	_Atomic uint64_t chunks_read, chunks_resident;	/* distinct chunks, since attach */
	_Atomic uint64_t readahead_issued, readahead_fetched;
	_Atomic uint64_t readahead_untraced;		/* distinct chunks readahead skipped: not in the trace */
	_Atomic uint64_t prefetch_issued, prefetch_fetched, prefetch_used, prefetch_errors;
	_Atomic uint64_t prefetch_yielded;		/* times prefetch waited for demand reads */
	_Atomic uint64_t prefetch_skipped;		/* trace chunks the reader got past first */
	_Atomic uint64_t trace_len;			/* chunks recorded (or loaded) */
};

struct blockd_trace;

struct blockd_image {
	struct blockd *b;
	char *name;			/* directory name under the mount: |given|, '/' as '_' */
	char *given;			/* as given to blockd_attach */
	char digest[SHA256_HEX_LEN + 1];
	uint16_t serial;		/* unique among attached images; 0 = none */
	_Atomic unsigned refs;		/* the table's reference + readers' */
	_Atomic bool detached;
	struct manifest m;
	uint64_t n_indexes;		/* image_size / CHUNK_SIZE */
	_Atomic uint8_t *chunk_state;	/* n_indexes entries */
	struct blockdev dev;		/* read_at = the lazy read */
	double attached_at;		/* now_seconds() */
	/* Sequential-stream detection for readahead: the ends of recent
	 * streams, and how many contiguous bytes each has read up to its end. */
	_Atomic uint64_t stream_end[BLOCKD_STREAMS];
	_Atomic uint64_t stream_run[BLOCKD_STREAMS];
	_Atomic uint64_t stream_used[BLOCKD_STREAMS];	/* stream_clock at its last read */
	_Atomic uint64_t stream_clock;
	/* The EROFS view for rootfs/, opened at first use. */
	pthread_mutex_t fs_lock;
	struct erofs_fs *fs;
	int fs_err;
	struct blockd_trace *trace;	/* prefetch.c */
	struct blockd_counters c;
};

/* A queued background fetch (readahead and trace prefetch). */
struct bg_job {
	struct blockd_image *img;	/* holds a reference */
	uint64_t index;
	bool prefetch;			/* trace prefetch (else readahead) */
};

struct blockd {
	struct kindling_env env;	/* tenant key, salt */
	struct store *store;		/* manifests and startup traces */
	pthread_mutex_t store_lock;	/* |store|: one request at a time */
	struct cache *cache;
	struct blockd_config cfg;	/* string pointers not kept */
	pthread_mutex_t lock;		/* images, next_serial, nbd */
	struct blockd_image *images[BLOCKD_MAX_IMAGES];
	unsigned next_serial;
	/* The readahead pool: a bounded queue and a few threads. */
	pthread_mutex_t q_lock;
	pthread_cond_t q_cond;
	struct bg_job *q;
	size_t q_head, q_len, q_cap;
	bool q_stop;
	pthread_t *workers;
	size_t n_workers;
	/* Demand fetches in flight: reads of chunks not yet resident.  Trace
	 * prefetch starts no fetch while there are any (prefetch.c), so it
	 * never competes with the reader it serves. */
	pthread_mutex_t demand_lock;
	pthread_cond_t demand_idle;	/* broadcast when demand_fetching drops to 0 */
	unsigned demand_fetching;
	/* Who may use the control and NBD sockets (from the config). */
	struct sock_access access;
	/* NBD: restarted with the new export list when the attached set changes. */
	char *nbd_address;		/* as bound the first time (tcp port fixed) */
	struct nbd_server *nbd;
	struct blockd_fuse *fuse;
};

/* Take a reference on |img| (the caller already holds one, or b->lock). */
void blockd_image_ref(struct blockd_image *img);
/* Drop a reference; the last one frees the image. */
void blockd_image_unref(struct blockd_image *img);
/* The attached image with FUSE serial |serial|, referenced, or NULL. */
struct blockd_image *blockd_image_by_serial(struct blockd *b, uint16_t serial);
/* Referenced copies of the attached images, in serial order; free the array
 * and unref each.  Returns 0 or -ENOMEM. */
int blockd_list_images(struct blockd *b, struct blockd_image ***out, size_t *out_n);
/* The EROFS view of |img|, opened at first use.  Returns 0 or -errno. */
int blockd_image_fs(struct blockd_image *img, struct erofs_fs **out);
/* The manifest entry for chunk |index|, or NULL for a hole. */
const struct manifest_chunk *blockd_image_chunk(const struct blockd_image *img, uint64_t index);
/* Queue a background fetch of chunk |index| (readahead or prefetch); drops it
 * when the queue is full.  Returns true if queued. */
bool blockd_queue_fetch(struct blockd_image *img, uint64_t index, bool prefetch);
/* Fetch chunk |index| into the cache now, counting it as readahead or
 * prefetch.  Returns 0 or -errno. */
int blockd_fetch_chunk(struct blockd_image *img, uint64_t index, bool prefetch);

/* Wait until no demand fetch is in flight, or |*stop| is set (then true is
 * returned).  Whoever sets |*stop| must then call blockd_demand_wake. */
bool blockd_demand_wait_idle(struct blockd *b, _Atomic bool *stop, _Atomic uint64_t *yield_count);
/* Wake the waiters of blockd_demand_wait_idle (they recheck |*stop|). */
void blockd_demand_wake(struct blockd *b);

/* prefetch.c: startup traces.  trace_init gives a new image its (idle)
 * trace state before the image is published, so readers always find it;
 * returns 0 or -ENOMEM.  On attach: load the image's trace from the origin;
 * with one, start prefetching it; without, start recording.  On detach (or
 * blockd_free): stop, and store a recording not yet stored. */
int trace_init(struct blockd_image *img);
int trace_attach(struct blockd_image *img);
void trace_detach(struct blockd_image *img);
/* Free the trace state (from image_free, when no reader is left). */
void trace_free(struct blockd_trace *t);
/* A reader touched chunk |index| for the first time since attach. */
void trace_note_first_read(struct blockd_image *img, uint64_t index);
/* A reader read |len| bytes at |off| (inside the image): while recording,
 * add the blocks not read before to the trace's block runs. */
void trace_note_read_range(struct blockd_image *img, uint64_t off, uint64_t len);
/* May readahead fetch chunk |index|?  False while a loaded startup trace
 * covers the start (it is being prefetched, or the image was attached less
 * than trace_seconds ago) and does not list |index|: the trace predicts what
 * the start reads.  True otherwise.  Lock-free. */
bool trace_allows_readahead(struct blockd_image *img, uint64_t index);
/* Trace and prefetch fields for stats.json, appended to a jansson object. */
void trace_stats(struct blockd_image *img, void *json_obj);
/* Parse a stored trace |<buf, len>| for an image of |n_indexes| chunks into
 * a malloc'd array of chunk indexes (checked: untrusted bytes from the
 * origin).  Returns 0 or -EBADMSG (logged). */
int trace_parse(const uint8_t *buf, size_t len, uint64_t n_indexes, uint64_t **out, size_t *out_n);

/* fuse.c */
struct blockd_mount_options;
int fuse_start(struct blockd *b, const char *mountpoint, const struct blockd_mount_options *opt,
	       struct blockd_fuse **out);
void fuse_stop(struct blockd_fuse *f);
/* The mount point |f| serves. */
const char *fuse_mountpoint(const struct blockd_fuse *f);
/* The attached set changed: drop the kernel's cached entry for |name| in the
 * mount's root. */
void fuse_notify_root_change(struct blockd_fuse *f, const char *name);

/* control.c: the daemon's control socket (public side in blockd.h). */
/* Parse one control request line (checked: a client's bytes).  |op| is one
 * of attach, detach, ls, stats; |image| is "" when absent.  Returns 0 or
 * -EINVAL with |err| set to a message for the client. */
struct ctl_request {
	char op[16];
	char image[512];
};
int ctl_parse_request(const char *line, size_t len, struct ctl_request *out, const char **err);

#endif
