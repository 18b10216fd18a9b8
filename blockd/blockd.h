/* blockd: a host's attached images, served as lazily filled block devices.
 *
 * An attached image looks like a complete block device of the image's full
 * size; only the chunks actually read are fetched, through the cache tiers
 * (cache/cache.h).  The same devices are reachable three ways:
 *   - this in-process API (kvmm links it for virtio-blk without FUSE);
 *   - a FUSE mount: MOUNT/<image>/image.raw, rootfs/, stats.json;
 *   - an NBD export per image.
 */
#ifndef KINDLING_BLOCKD_H
#define KINDLING_BLOCKD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache/cache.h"
#include "image/image.h"

struct blockd;
struct blockd_image;

/* Contiguous bytes a reader must have read before readahead fetches the
 * next chunk: two of the kernel's 128 KiB readahead windows, so such windows
 * over a few adjacent small files are not mistaken for a stream. */
#define BLOCKD_READAHEAD_MIN_RUN (256u << 10)

struct blockd_config {
	/* Where manifests, chunks and startup traces live, and the cache tiers
	 * in front of it (origin_uri is required; see cache.h for the rest). */
	struct cache_config cache;
	/* The tenant key that unseals manifests and the salt come from
	 * KINDLING_HOME (or KINDLING_TENANT_KEY / KINDLING_SALT), exactly as for
	 * chunkify: the blockd must run with the importer's KINDLING_HOME. */
	/* Record startup traces and prefetch from them (see prefetch.c).
	 * Prefetch yields to readers: it starts no fetch while a read of a
	 * chunk not yet resident is in flight, keeps at most half the origin's
	 * parallel fetches, and skips the trace entries a reader got past. */
	bool prefetch;
	unsigned prefetch_parallel;	/* 0 = 4; at most half of cache.origin_parallel */
	uint64_t prefetch_bytes_per_s;	/* 0 = unlimited */
	double trace_seconds;		/* recording window after attach; 0 = 10 s */
	/* Readahead: when reads of an image run sequentially, also fetch this
	 * many following stored chunks in the background (0 = 1).  A read is
	 * sequential when it continues a stream that has already read
	 * readahead_min_run contiguous bytes (0 = BLOCKD_READAHEAD_MIN_RUN):
	 * random reads, and the short adjacent reads
	 * the kernel's own readahead makes for small files, trigger none, so
	 * such readers fetch only what they read.  While a startup trace is
	 * being prefetched, and for trace_seconds after attach, readahead skips
	 * the chunks the trace does not list (readahead.untraced). */
	unsigned readahead_chunks;
	uint64_t readahead_min_run;
	bool no_readahead;
	/* Background fetch threads shared by readahead and prefetch (0 = 4). */
	unsigned fetch_threads;
	/* Who may use the control and NBD unix sockets.  NULL: the sockets are
	 * 0600, and only root and this process's uid may connect.  A group
	 * name: the sockets are 0660 with that group, and its members may
	 * connect too.  Every connection's credentials are checked as well
	 * (SO_PEERCRED).  The string is not kept. */
	const char *socket_group;
	/* NBD over tcp on an address other hosts can reach.  NBD has no
	 * authentication or encryption, so such an address is refused unless
	 * this is set, and then served with a warning. */
	bool nbd_allow_remote;
};

/* Create a blockd with no images attached.  Returns 0 or -errno (logged). */
int blockd_new(const struct blockd_config *cfg, struct blockd **out);

/* Unmount, stop the NBD server, detach everything (storing startup traces
 * still being recorded), free; NULL is ok. */
void blockd_free(struct blockd *b);

/* Attach IMAGE (NAME[:TAG] or a manifest digest): fetch and unseal its
 * manifest; no chunk is fetched yet (unless a startup trace exists and
 * prefetch is on).  Attaching an attached image returns the same handle.
 * Returns 0, -ENOENT (no such image, logged), or -errno. */
int blockd_attach(struct blockd *b, const char *image, struct blockd_image **out);

/* Detach IMAGE; reads in flight finish first.  Returns 0 or -ENOENT. */
int blockd_detach(struct blockd *b, const char *image);

/* The attached image called |image| (as given to attach, or its digest),
 * or NULL. */
struct blockd_image *blockd_find(struct blockd *b, const char *image);

/* The manifest digest (64 hex digits) of an attached image. */
const char *blockd_image_digest(const struct blockd_image *img);

/* Read |len| bytes at |off| of the image.  Holes read as zeros without any
 * fetch; concurrent readers of one chunk share one fetch.  Returns 0, -EIO
 * if a chunk could not be fetched from any tier (that read only; logged),
 * -EINVAL past the end.  Thread-safe.  |img| must stay attached until the
 * call returns (the FUSE and NBD paths hold references; in-process callers
 * must not detach an image they are reading). */
int blockd_image_read(struct blockd_image *img, uint64_t off, void *buf, size_t len);

uint64_t blockd_image_size(const struct blockd_image *img);
const struct manifest *blockd_image_manifest(const struct blockd_image *img);
/* The directory name of the image under the mount ("name:tag"). */
const char *blockd_image_name(const struct blockd_image *img);

/* Called by blockd_image_walk_files for each regular file: its path in the
 * image (no leading '/'), and the image bytes [data_off, data_off + data_len)
 * holding its block-mapped data.  Return non-zero to stop the walk. */
typedef int (*blockd_file_cb)(void *arg, const char *path, uint64_t data_off, uint64_t data_len);

/* Walk the image's EROFS tree depth-first, names in the order the image
 * stores them (byte order for kindling's images), and call |cb| for every
 * regular file with block-mapped data (a hard-linked file once per name).
 * Reads the metadata region through the cache like any reader.  Returns 0,
 * the callback's non-zero value if it stopped the walk, -EUCLEAN for a
 * corrupt image or one nested deeper than 256 directories (logged), or
 * -errno. */
int blockd_image_walk_files(struct blockd_image *img, blockd_file_cb cb, void *arg);

/* The image's counters as JSON (the contents of stats.json), malloc'd. */
char *blockd_image_stats_json(struct blockd_image *img);

struct blockd_mount_options {
	bool allow_other;	/* -o allow_other (needs user_allow_other for non-root) */
	unsigned max_threads;	/* FUSE worker threads; 0 = 16 */
	/* If >= 0, one byte is written here when the session ends for any
	 * reason (fusermount3 -u, umount, blockd_free), so a daemon can exit. */
	int done_fd;
};

/* Serve the FUSE mount at |mountpoint| (an existing directory) on
 * background threads: MOUNT/ lists the attached images, MOUNT/<image>/ holds
 * image.raw, rootfs/ and stats.json.  A stale FUSE mount left at
 * |mountpoint| by a killed blockd is detached first.  |opt| may be NULL.
 * At most one mount per blockd.  Returns 0 or -errno (logged). */
int blockd_mount(struct blockd *b, const char *mountpoint, const struct blockd_mount_options *opt);

/* The FUSE mount point as given to blockd_mount(), or NULL when |b| is not
 * mounted.  Valid until blockd_free(). */
const char *blockd_mountpoint(const struct blockd *b);

/* Serve every attached image over NBD at |address| ("unix:/path" or
 * "tcp:127.0.0.1:PORT"), export name = the image name (blockd_image_name).
 * Images attached or detached later change the export list: the server is
 * restarted on the same address, which drops connected clients (they
 * reconnect).  With no image attached nothing listens until the first
 * attach.  A unix socket gets the mode and peer checks of the config's
 * socket_group; a tcp address that is not loopback needs nbd_allow_remote
 * (else -EPERM).  Returns 0 or -errno (logged). */
int blockd_nbd_start(struct blockd *b, const char *address);

/* The NBD address actually bound (tcp port 0 resolved), or NULL. */
const char *blockd_nbd_address(struct blockd *b);

/* ---- the control socket: how `blockd attach|detach|ls|stats` reach a running
 * daemon (one JSON request per line, one reply per line) ---------------- */

struct blockd_ctl;

/* Serve control requests for |b| on the unix socket |path|: a thread
 * accepts, and each client is served on a thread of its own (at most 32 at
 * once), so a slow client never delays another.  A client has 5 s to send
 * each complete request line and 5 s to take each reply, or it is dropped.
 * The socket gets the mode and peer checks of the config's socket_group.
 * |state_dir| (may be NULL) records the attached set so a restarted daemon
 * can restore it.  Returns 0 or -errno (logged). */
int blockd_ctl_start(struct blockd *b, const char *path, const char *state_dir, struct blockd_ctl **out);

/* Stop serving and free |c|; NULL is ok. */
void blockd_ctl_stop(struct blockd_ctl *c);

/* Re-attach the images listed in the state directory (after a restart).
 * Every image is tried; what fails is logged.  Returns 0 or the first
 * error. */
int blockd_ctl_restore(struct blockd_ctl *c);

/* Client side: send |request| (one JSON line) to the daemon at |path| and
 * return its reply line in |*out_reply| (malloc'd).  Returns 0 or -errno
 * (logged, saying whether the daemon is running). */
int blockd_ctl_call(const char *path, const char *request, char **out_reply);

/* Client side: is a blockd this user may trust listening at |path|?  It is
 * when |path| is a unix socket owned by root or the effective user and not
 * writable by everyone, in a directory owned by root or that user that no
 * one else may write (unless sticky), and the process listening on it
 * (SO_PEERCRED) runs as root or that user.  Returns 0 if so; -ENOENT when
 * nothing is at |path|; -ECONNREFUSED when a socket is there but nothing
 * listens (stale); -EPERM when an owner or a mode is wrong; another -errno
 * when it cannot be told.  On failure |why| (|why_len| bytes) gets one
 * sentence naming the path and what is wrong.  Logs nothing: the caller
 * decides whether a missing daemon is an error. */
int blockd_ctl_find(const char *path, char *why, size_t why_len);

#endif
