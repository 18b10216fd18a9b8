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
 * a startup trace (image.h) and prefetching it on later serves.
 */
#ifndef KINDLING_SNAPSHOT_H
#define KINDLING_SNAPSHOT_H

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
 * The lazy memory server.
 * ====================================================================== */

struct snapshot_serve_options {
	const char *socket_path;  /* where to listen for the VMM; required */
	const char *vmstate_out;  /* where to write the vmstate; required */
	bool prefetch;		  /* prefetch a stored trace (and record one if none) */
	bool record;		  /* record a new trace even if one is stored (no prefetch then) */
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
 * chunks per tier, bytes_fetched, memory_size, fraction_fetched,
 * chunks_faulted, chunks_prefetched, chunks_zero, pages_removed, trace.
 * NULL on allocation failure. */
char *snapshot_server_report(struct snapshot_server *s);

/* Close the socket (removing its file) and free |s|; NULL is allowed. */
void snapshot_server_free(struct snapshot_server *s);

#endif
