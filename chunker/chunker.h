/* chunker: the image builder behind `chunkify`.
 *
 * It imports OCI images (a layout directory, a docker-archive tar, or a
 * registry over the distribution API), flattens each into kindling's
 * deterministic EROFS image, cuts that into convergently encrypted chunks,
 * stores the new ones and publishes a sealed manifest and a ref; and it
 * collects the chunks no image references any more.  What it writes is read
 * through image/image.h, which is all a reader needs; the builder is only for
 * programs that import or collect.
 */
#ifndef KINDLING_CHUNKER_H
#define KINDLING_CHUNKER_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "image/image.h"

/* The builder's working context: the environment (KINDLING_HOME, the salt
 * and the tenant key) and the store it writes to. */
struct chunkify_ctx {
	struct kindling_env env;
	struct store *store;
	volatile sig_atomic_t *cancel;	/* set by a signal handler; may be NULL */
	double lease_ttl;		/* seconds after which a lease or GC marker is stale */
};

/* Load the environment (kindling_env_load: KINDLING_HOME, the salt and the
 * tenant key, created on first use) and open |store_uri| (NULL = the file
 * store $KINDLING_HOME/store) with |sopt| (NULL = defaults).  The lease TTL
 * comes from KINDLING_LEASE_TTL (seconds, default 3600).  Returns 0 or -errno
 * (logged); on failure nothing is left to clean up. */
int chunkify_ctx_init(struct chunkify_ctx *c, const char *store_uri, const struct store_options *sopt);

/* Close the store and wipe the secrets; safe on a zeroed struct. */
void chunkify_ctx_cleanup(struct chunkify_ctx *c);

/* ---- layout from a recorded startup trace (layout_trace.c) ---------------
 *
 * A startup trace recorded on an earlier import of an image (blockd stores
 * it at traces/<manifest digest>) says which blocks a start read first.
 * Mapped onto that import's files, it becomes a plan: for each layer, the
 * files the start read and the order it first read them in.  An import
 * given the plan places those files first in their layer's region, together
 * and in that order, then the rest as always; a layer the plan names no
 * file of is laid out exactly as without one. */

/* A parsed trace: the image it was recorded on and its block runs. */
struct layout_trace {
	char manifest_digest[65];	/* 64 hex digits */
	char document_digest[65];	/* SHA-256 of the trace document as parsed */
	struct image_trace_extent *extents; /* first-read order */
	size_t n_extents;
};

/* Parse the trace document |<buf, len>| (untrusted) named |what| in errors
 * (the file it came from).  Returns 0 with |*out| filled (release it with
 * layout_trace_cleanup), -EBADMSG for anything that is not a trace with
 * block runs (logged, naming |what| and the fault), or -ENOMEM. */
int layout_trace_parse(const uint8_t *buf, size_t len, const char *what, struct layout_trace *out);

/* Release what |t| holds; safe on a zeroed struct. */
void layout_trace_cleanup(struct layout_trace *t);

/* A regular file of the traced image: its path (no leading '/') and the
 * image bytes holding its data. */
struct layout_file {
	const char *path;
	uint64_t data_off, data_len;
};

/* A growable list of them; each path is the list's own copy. */
struct layout_files {
	struct layout_file *v;
	size_t n, cap;
};

/* Append a copy of |path| with its data range.  Returns 0 or -ENOMEM. */
int layout_files_add(struct layout_files *l, const char *path, uint64_t data_off, uint64_t data_len);

/* Free the paths and the array; safe on a zeroed struct. */
void layout_files_cleanup(struct layout_files *l);

struct layout_plan;

/* Build the plan: the files of |<files, n_files>| (every regular file of
 * the image |traced| the trace |t| was recorded on) whose data the trace's
 * runs touch, ranked by the first run that touches them (files one run
 * touches in image order), each under the layer of |traced| whose region
 * holds its data.  Runs past the image or between files touch nothing.
 * Nothing of the arguments is kept.  Returns 0 with |*out| (free it with
 * layout_plan_free) or -ENOMEM. */
int layout_plan_build(const struct layout_trace *t, const struct manifest *traced, const struct layout_file *files,
		      size_t n_files, struct layout_plan **out);

/* Free |p|; NULL is ok. */
void layout_plan_free(struct layout_plan *p);

/* How many files |p| places, and in how many layers (0 for NULL). */
size_t layout_plan_files(const struct layout_plan *p);
size_t layout_plan_layers_with_files(const struct layout_plan *p);

/* Merge the plans |<plans, n>| (1 to MANIFEST_MAX_LAYOUT_TRACES, e.g. the
 * traces of several functions that share one image) into one, by a fixed
 * rule: in each layer (matched by blob digest), the files of plans[0] in
 * its order, then those of plans[1] that plans[0] does not place, in
 * plans[1]'s order, and so on.  So the same plans in the same order give
 * the same plan, and the first plan's start is laid out exactly as on its
 * own.  The inputs are not kept.  Returns 0 with |*out| (free it with
 * layout_plan_free), -EINVAL for n out of range, or -ENOMEM. */
int layout_plan_merge(const struct layout_plan *const *plans, size_t n, struct layout_plan **out);

/* The traces |p| was built from, in merge order, as an image laid out by
 * it records them in its manifest (each trace document's SHA-256 and the
 * image it was recorded on): copied to |out|; returns how many (at most
 * MANIFEST_MAX_LAYOUT_TRACES; 0 for NULL). */
size_t layout_plan_sources(const struct layout_plan *p, struct manifest_layout_trace out[MANIFEST_MAX_LAYOUT_TRACES]);

struct import_options {
	const char *name_tag;		/* NAME[:TAG]; NULL derives it from the source */
	bool progress;			/* draw a progress bar on stderr */
	bool insecure;
	unsigned workers;		/* seal threads; 0 = one per core */
	unsigned jobs;			/* layers opened and read at once (a registry's
					 * downloads included); 0 = 2, 1 = one layer at
					 * a time; the image is the same byte for byte */
	uint64_t max_image_size;	/* 0 = 1 TiB */
	/* Where each layer puts the files a recorded start read (see
	 * layout_plan_build); NULL = the usual layout.  Layers are matched by
	 * blob digest; the plan must outlive the import. */
	const struct layout_plan *layout;
};

struct import_report {
	char manifest_digest[65];
	char ref[512];
	uint64_t chunks_total, chunks_new, chunks_dedup, chunks_zero;
	uint64_t bytes_uploaded, image_size;
	double seconds;
	unsigned workers;
};

/* Import SOURCE ("oci:DIR[:TAG]", "docker-archive:FILE",
 * "docker://HOST[:PORT]/REPO[:TAG|@DIGEST]") into |c|'s store (see
 * DESIGN.md): flatten, chunk, upload new chunks, then publish the manifest
 * and the ref, in that order.  On any failure nothing is published and no
 * temporary object is left.  Returns 0 with |*rep| filled, -ECANCELED if
 * *c->cancel was set, or -errno (logged). */
int chunkify_import(struct chunkify_ctx *c, const char *source, const struct import_options *opt,
		    struct import_report *rep);

/* Where chunkify_import_chunks reads its bytes: chunk |index| (0 up to the
 * template's image_size / CHUNK_SIZE, in order, from one thread) into |buf|
 * (CHUNK_SIZE bytes; pad a short last chunk with zeros), or set |*out_zero|
 * without filling |buf| when the chunk is known to be all zeros (a hole).
 * Returns 0 or -errno (logged), which stops the import. */
struct chunk_reader {
	int (*read)(void *ctx, uint64_t index, uint8_t *buf, bool *out_zero);
	void *ctx;
};

/* Import bytes that are not an OCI image (a micro-VM snapshot's memory and
 * vmstate, snapshot/snapshot.h) the way chunkify_import imports a flattened
 * image: cut into CHUNK_SIZE chunks, all-zero chunks dropped, the rest sealed
 * (chunk_seal), only names the store lacks uploaded, under a lease that a
 * concurrent gc respects.  Then |tmpl| (every field but the chunk table,
 * with image_size a positive multiple of CHUNK_SIZE) is published with the
 * chunk table filled in, and opt->name_tag (required) pointed at it.  On any
 * failure nothing is published.  |opt->name_tag|, |progress| and |workers|
 * are used.  Returns 0 with |*rep| filled, -ECANCELED/-EINTR when cancelled,
 * or -errno (logged). */
int chunkify_import_chunks(struct chunkify_ctx *c, const struct chunk_reader *reader, const struct manifest *tmpl,
			   const struct import_options *opt, struct import_report *rep);

struct gc_report {
	uint64_t manifests, live_chunks, chunks_seen, chunks_deleted, leases_live, leases_expired;
};

/* Delete every chunk that no manifest and no live import lease references
 * (with |dry_run|, only count them).  Never races an import: see gc.c for the
 * protocol.  Returns 0, -EBUSY if another GC runs, or -errno. */
int chunkify_gc(struct chunkify_ctx *c, bool dry_run, struct gc_report *rep);

#endif
