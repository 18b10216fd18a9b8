/* snapshot: micro-VM memory snapshots stored as kindling images and served
 * lazily.
 *
 * A snapshot (kvmm's or Firecracker's `PUT /snapshot/create`) is a vmstate
 * file (opaque bytes) and a guest memory file.  snapshot_import cuts the
 * memory into convergent 512 KiB chunks exactly as images are cut (the
 * chunker's pipeline: all-zero chunks not stored, only new names uploaded),
 * stores the vmstate in the chunks after the memory, and publishes a sealed
 * manifest of kind snapshot (image.h, struct manifest_snapshot) naming the
 * image the VM ran.
 *
 * A snapshot server restores it: it writes the vmstate out, then takes a
 * VMM's userfaultfd over a unix socket (Firecracker's Uffd handshake) and
 * fills guest memory chunk by chunk as the guest faults, through the cache
 * (memory -> L1 -> L2 -> origin), recording the order of the first serve as
 * a startup trace (image.h) and prefetching it on later serves.  With the
 * host memory tier, what one restore served verified is kept on the host,
 * and later restores there fill faults from it without fetch or crypto.
 */
#ifndef KINDLING_SNAPSHOT_H
#define KINDLING_SNAPSHOT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache/cache.h"
#include "chunker/chunker.h"
#include "image/image.h"

/* ======================================================================
 * Import and load.
 * ====================================================================== */

struct snapshot_import_options {
	const char *name_tag;	  /* NAME[:TAG] to publish; required */
	const char *mem_path;	  /* the guest memory file; required */
	const char *vmstate_path; /* the VMM's vmstate file; required */
	const char *from_image;	  /* NAME[:TAG] or digest of the image the VM ran; required, must exist */
	/* What the VM runs, recorded as the manifest's run configuration so a
	 * restore can check it is asked for the same invocation (`kindling run
	 * --snapshot` records its command as entrypoint, no cmd, and the env,
	 * working dir and user); NULL = the image's own configuration. */
	const struct run_config *config;
	bool progress;		  /* progress bar on stderr */
	unsigned workers;	  /* seal threads; 0 = one per core */
};

/* Import a snapshot into |c|'s store (chunkify_import_chunks): memory chunks
 * from index 0, the vmstate from the chunk boundary after the memory, then a
 * manifest of kind snapshot and the ref |opt->name_tag|.  The source image
 * is resolved (and its manifest opened with the tenant key) first; an
 * unknown image, an empty or unaligned memory file (not a multiple of 4096
 * bytes) or an empty vmstate is refused before anything is stored.  On any
 * failure no ref is published.  Returns 0 with |*rep| filled, or -errno
 * (logged, naming the file or image at fault). */
int snapshot_import(struct chunkify_ctx *c, const struct snapshot_import_options *opt, struct import_report *rep);

/* Resolve |ref| (NAME[:TAG] or a digest) in |s| and load its manifest with
 * |tenant_key| (NULL: only the public part).  A manifest that is not a
 * snapshot is refused with -EMEDIUMTYPE (logged, saying what it is).
 * Returns 0 with |digest| and |*m| filled (manifest_cleanup frees it), or
 * -errno (logged). */
int snapshot_load(struct store *s, const char *ref, const uint8_t *tenant_key, char digest[65], struct manifest *m);

/* The manifest chunk that holds memory chunk |index| of |m|, or NULL for an
 * all-zero (unstored) chunk.  Binary search; |m|'s chunks are sorted. */
const struct manifest_chunk *snapshot_chunk(const struct manifest *m, uint64_t index);

/* Read |m|'s vmstate through |cache| (every chunk verified) into a
 * malloc'd buffer (*out, caller frees) of m->snapshot.vmstate_size bytes.
 * Returns 0, or -EIO (logged, naming the chunk) when a chunk cannot be
 * produced verified by any tier. */
int snapshot_read_vmstate(struct cache *cache, const struct manifest *m, const char *what, uint8_t **out,
			  size_t *out_len);

/* ======================================================================
 * The Uffd handshake (Firecracker's GuestRegionUffdMapping).
 * ====================================================================== */

struct snapshot_uffd_region {
	uint64_t base_host_virt_addr; /* where the VMM mapped the region */
	uint64_t size;		      /* bytes, a multiple of page_size */
	uint64_t offset;	      /* where the region starts in the memory file */
	uint64_t page_size;	      /* bytes; 4096 ("page_size", or "page_size_kib": 4) */
};

#define SNAPSHOT_UFFD_MAX_REGIONS 64
#define SNAPSHOT_UFFD_MAX_MSG 65536

/* Parse the VMM's handshake body |<buf, len>| (untrusted): a JSON array of
 * 1 to SNAPSHOT_UFFD_MAX_REGIONS objects {"base_host_virt_addr", "size",
 * "offset", "page_size" (bytes) or "page_size_kib"}; unknown fields are
 * ignored.  Every region must use 4096-byte pages, be page aligned, lie
 * inside a memory file of |mem_size| bytes and overlap no other region,
 * neither in the host's address space nor in the file.  On success
 * |*out| (malloc'd, caller frees) holds |*out_n| regions sorted by host
 * address.  Returns 0, -EBADMSG (logged, naming the field and region), or
 * -ENOMEM. */
int snapshot_uffd_parse_regions(const uint8_t *buf, size_t len, uint64_t mem_size, struct snapshot_uffd_region **out,
				size_t *out_n);

/* The region of |<regions, n>| (sorted as parsed) that holds host address
 * |addr|, with the memory file offset |addr| stands for.  Returns 0 or
 * -ENOENT when no region holds it. */
int snapshot_uffd_locate(const struct snapshot_uffd_region *regions, size_t n, uint64_t addr, size_t *out_region,
			 uint64_t *out_mem_off);

/* Where memory chunk |index| lies in |region|: the host address |*out_addr|,
 * the offset |*out_chunk_off| inside the chunk and |*out_len| bytes (page
 * multiples; a chunk past |mem_size| is cut there).  Returns true, or false
 * when the chunk and the region do not meet. */
bool snapshot_uffd_chunk_span(const struct snapshot_uffd_region *region, uint64_t index, uint64_t mem_size,
			      uint64_t *out_addr, uint32_t *out_chunk_off, uint32_t *out_len);

/* ======================================================================
 * The host memory tier (hostmem.c): a snapshot's verified, decrypted
 * memory kept in a host-local sparse file (tmpfs by default), so a later
 * restore on the same host fills faults from it without fetching, hashing
 * or decrypting.  Soft state: deleting it costs only speed.
 * ====================================================================== */

#define SNAPSHOT_HOSTMEM_DEFAULT_MAX (2ull << 30)

struct snapshot_hostmem_options {
	const char *dir;     /* the tier's directory (0700, created); NULL = no tier */
	uint64_t max_bytes;  /* bound on the files in |dir|; 0 = SNAPSHOT_HOSTMEM_DEFAULT_MAX */
};

struct snapshot_hostmem;

/* The default directory: $XDG_RUNTIME_DIR/kindling/snapshot-mem, else
 * /dev/shm/kindling-<uid>/snapshot-mem (both tmpfs on Debian).  malloc'd;
 * NULL with errno set. */
char *snapshot_hostmem_default_dir(void);

/* Open (creating if needed) the memory file of the snapshot whose manifest
 * digest is |digest| and whose memory is |mem_size| bytes, in o->dir.  The
 * directory must be this user's with mode 0700; a file there that is not a
 * regular 0600 file of this user, or whose header or size is not this
 * snapshot's (foreign, or left half-made), is replaced.  Files of other
 * snapshots are evicted, least recently opened first, until this one's full
 * size fits in o->max_bytes.  Safe against concurrent opens of the same
 * snapshot by other processes.  Returns 0 with |*out|
 * (snapshot_hostmem_close), -ENOSPC when the snapshot alone does not fit,
 * or -errno (logged as a warning: a restore goes on without the tier). */
int snapshot_hostmem_open(const struct snapshot_hostmem_options *o, const char *digest, uint64_t mem_size,
			  struct snapshot_hostmem **out);

/* Read memory chunk |index| into |<buf, len>| (len >= the chunk's length:
 * CHUNK_SIZE, less for a last chunk cut by the memory size).  Returns 0
 * when the chunk is present and its bytes match the CRC-64 stored with
 * them, -ENOENT when it was never stored, -EBADMSG when it is damaged
 * (the caller fetches it again and puts it back), -EINVAL for a bad index.
 * Thread-safe. */
int snapshot_hostmem_get(struct snapshot_hostmem *h, uint64_t index, uint8_t *buf, size_t len);

/* Keep memory chunk |index| from |<plain, len>|, bytes the caller has
 * verified (the cache's name and key checks): the bytes first, then their
 * entry, so a writer that stops between the two leaves the chunk absent.
 * Returns 0 or -errno (logged as a warning; the restore goes on).
 * Thread-safe. */
int snapshot_hostmem_put(struct snapshot_hostmem *h, uint64_t index, const uint8_t *plain, size_t len);

/* The file's path, for logs and reports. */
const char *snapshot_hostmem_path(const struct snapshot_hostmem *h);

/* Close; NULL is fine.  The file stays for later restores. */
void snapshot_hostmem_close(struct snapshot_hostmem *h);

/* ======================================================================
 * The lazy memory server.
 * ====================================================================== */

struct snapshot_serve_options {
	const char *socket_path;  /* where to listen for the VMM; required */
	const char *vmstate_out;  /* where to write the vmstate; required */
	bool prefetch;		  /* prefetch a stored trace (and record one if none) */
	bool record;		  /* record a new trace even if one is stored (no prefetch then) */
	/* The host memory tier: chunks found there are filled from it, chunks
	 * fetched through the cache are kept there.  dir NULL: off. */
	struct snapshot_hostmem_options host_mem;
};

struct snapshot_server;

/* Prepare to serve snapshot |m| (opened with the tenant key, kind snapshot)
 * whose manifest digest is |digest|, called |name| in logs: read and verify
 * the vmstate through |cache| and write it to opt->vmstate_out (atomically,
 * 0600), check that every stored chunk exists in |store| (the origin,
 * store_exists_batch), load its trace from |store|, and listen on
 * opt->socket_path (a stale socket file there is replaced).  Nothing of that
 * fails silently: a missing or corrupt chunk is -EIO or -ENOENT, logged
 * naming the chunk and the snapshot, before any VMM can connect.  |cache|,
 * |store| and |m| must outlive the server.  Returns 0 with |*out|, or
 * -errno (logged). */
int snapshot_server_new(struct cache *cache, struct store *store, const struct manifest *m, const char *digest,
			const char *name, const struct snapshot_serve_options *opt, struct snapshot_server **out);

/* Accept one VMM, take its regions and userfaultfd, and serve page faults
 * (and prefetch in the background) until the VMM closes its connection,
 * then store a recorded trace.  |*cancel| (may be NULL), set by a signal
 * handler, ends serving early.  Returns 0 when the VMM hung up, -EBADMSG
 * for a bad handshake, -EIO when a chunk failed verification at every tier
 * (logged naming the chunk and the snapshot: the VM cannot go on honestly,
 * so serving stops), -EINTR when cancelled, or -errno. */
int snapshot_server_run(struct snapshot_server *s, volatile int *cancel);

/* The counters as one JSON object (malloc'd string, caller frees): faults,
 * chunks per tier (host: the host memory tier; mem, l1, l2, l3: the
 * cache's), bytes_fetched (through the cache), memory_size,
 * fraction_fetched, chunks_faulted, chunks_prefetched, chunks_zero,
 * pages_removed, trace, host_mem (the tier's file, or "off"),
 * host_mem_damaged (chunks found damaged there and fetched again) and
 * served_by ("host": every chunk from the host memory tier, "cache": every
 * one fetched through the cache, "host+cache", or "none").
 * NULL on allocation failure. */
char *snapshot_server_report(struct snapshot_server *s);

/* Close the socket (removing its file) and free |s|; NULL is allowed. */
void snapshot_server_free(struct snapshot_server *s);

/* ======================================================================
 * SnapStart: taking a running micro-VM's snapshot into the store, and
 * restoring one through a memory server (snapstart.c).  The composition
 * `kindling run --snapshot` and the host agent's SnapStart functions share;
 * when the workload is ready and what a snapshot must match are theirs.
 * ====================================================================== */

struct sandbox_vm;
struct sandbox_spec;

/* Make a private directory for one snapshot's files (the vmstate, the
 * memory file, the memory server's socket): |what|.XXXXXX under $TMPDIR
 * (else /tmp), into |<dir, len>|.  Returns 0 or -errno (logged, saying to
 * set TMPDIR to a writable directory). */
int snapstart_workdir(const char *what, char *dir, size_t len);

/* Remove what snapstart_take and a restore leave in |dir| and |dir| itself
 * (a warning if it cannot); "" is ignored. */
void snapstart_workdir_remove(const char *dir);

/* Take a Full snapshot of the running micro-VM |*vm| (sandbox_vm_snapshot:
 * paused, written to |dir|/vm.vmstate and |dir|/vm.mem, resumed) and import
 * it (snapshot_import) with |opt|'s name_tag, from_image and config
 * (mem_path and vmstate_path are set here); the files are removed either
 * way.  |*vm| is read with |lock| held, and |lock| is held across the
 * snapshot, so the owner of the VM can set it to NULL under |lock| when
 * sandbox_run() returns (the snapshot is then -ESRCH).  |*out_snapshot_at|
 * (may be NULL) gets now_seconds() when the VM was resumed.  Returns 0 with
 * |*rep| filled, or -errno (logged, naming the step that failed: "taking
 * the snapshot" or "importing it"). */
int snapstart_take(struct chunkify_ctx *c, pthread_mutex_t *lock, struct sandbox_vm *const *vm, const char *dir,
		   const struct snapshot_import_options *opt, struct import_report *rep, double *out_snapshot_at);

struct snapstart_restore_options {
	struct cache *cache;	 /* the memory comes through it; required, outlives the restore */
	struct store *store;	 /* the origin the cache reads; required, outlives the restore */
	const struct manifest *m; /* the snapshot (snapshot_load); required, outlives the restore */
	const char *digest;	 /* its manifest digest; required */
	const char *name;	 /* for logs: the snapshot's NAME[:TAG]; required */
	const char *dir;	 /* a private directory (snapstart_workdir); required */
	bool prefetch;		 /* snapshot_serve_options.prefetch */
	/* snapshot_serve_options.host_mem: a host that restores a snapshot
	 * again gets it from its own memory tier.  On by default, so every
	 * caller that leaves these zero (the host agent, `kindling run`) gets
	 * it: dir NULL means snapshot_hostmem_default_dir(); host_mem_off
	 * turns the tier off (a restore that must fetch, or a host without a
	 * tmpfs to spare). */
	struct snapshot_hostmem_options host_mem;
	bool host_mem_off;
	/* On a failure of the memory server the sandbox must stop: an 8-byte
	 * 1 is written here (an eventfd or a pipe the sandbox's stop_fd reads;
	 * not owned).  -1: the restore makes its own pipe and
	 * snapstart_restore_arm sets it as spec->stop_fd. */
	int stop_fd;
};

struct snapstart_restore;

/* Prepare a restore of |o->m|: the snapshot server (snapshot_server_new:
 * the vmstate written to o->dir/vm.vmstate, every chunk checked, a socket
 * on o->dir/uffd.sock) serving on a thread of its own.  A server that fails
 * (a chunk no tier can produce verified) stops the sandbox through the stop
 * descriptor: no VM runs on without its memory.  Returns 0 with |*out|
 * (snapstart_restore_free), or -errno (logged). */
int snapstart_restore_start(const struct snapstart_restore_options *o, struct snapstart_restore **out);

/* Make |spec| restore from |r| (spec->restore; spec->stop_fd when |r| has
 * its own pipe).  |r| must outlive sandbox_run(). */
void snapstart_restore_arm(struct snapstart_restore *r, struct sandbox_spec *spec);

/* After sandbox_run() returned |run_result|: end the server (cancelled if
 * the VM never ran: |run_result| < 0) and wait for its thread.  With
 * |report| (may be NULL), the server's counters as JSON
 * (snapshot_server_report, malloc'd, or NULL).  Returns 0, or -EIO when
 * serving the memory failed (logged; the VM was stopped). */
int snapstart_restore_finish(struct snapstart_restore *r, int run_result, char **report);

/* Stop the server if it still runs and free; NULL is fine.  The directory
 * is the caller's (snapstart_workdir_remove). */
void snapstart_restore_free(struct snapstart_restore *r);

#endif
