/* chunker internals: shared between the files of chunker/ only. */
#ifndef KINDLING_CHUNKER_INTERNAL_H
#define KINDLING_CHUNKER_INTERNAL_H

#define LOG_COMPONENT "chunkify"
#include "common/common.h"
#include "chunker/chunker.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ======================================================================
 * The flattened file tree (built by flatten.c, serialised by erofs_write.c)
 * ====================================================================== */

struct fs_xattr {
	char *name;	/* full name, e.g. "security.capability" */
	uint8_t *value;
	size_t len;
};

struct fs_inode;

struct fs_dirent {
	char *name;		/* one path component, no '/' */
	struct fs_inode *inode;
	unsigned layer;		/* index of the layer that last wrote this entry */
};

struct fs_inode {
	uint32_t mode;		/* full st_mode: S_IFMT bits | permission bits */
	uint32_t uid, gid;
	int64_t mtime;		/* seconds since the epoch */
	uint32_t mtime_nsec;
	uint64_t size;		/* regular: bytes; symlink: strlen(symlink) */
	uint64_t data_off;	/* regular with size > 0: byte offset of the data
				 * in the image, a multiple of EROFS_BLOCK_SIZE;
				 * the data is contiguous and the tail of its last
				 * block is zero */
	uint32_t rdev_major, rdev_minor; /* char and block devices */
	char *symlink;		/* symlink target (size bytes, NUL-terminated) */
	struct fs_xattr *xattrs; /* sorted by name, no duplicates */
	size_t n_xattrs;

	/* directories: children in no particular order; the writer sorts. */
	struct fs_dirent *children;
	size_t n_children, cap_children;
	struct fs_child_index *index; /* lookup accelerator, owned by tree.c */

	/* bookkeeping */
	unsigned refs;		/* dirents pointing here (hard links) */
	uint32_t nlink;		/* filled in by the writer */
	uint64_t nid;		/* filled in by the writer */
	uint32_t ino;		/* filled in by the writer */
};

/* tree.c */
struct fs_inode *fs_inode_new(uint32_t mode);
/* Drop one reference; frees the inode (and a directory's whole subtree) at zero. */
void fs_inode_unref(struct fs_inode *ino);
struct fs_dirent *fs_dir_lookup(struct fs_inode *dir, const char *name);
/* Add |name| -> |child| to |dir| (taking a reference on |child|).  The name
 * must not exist yet.  Returns 0 or -ENOMEM. */
int fs_dir_add(struct fs_inode *dir, const char *name, struct fs_inode *child, unsigned layer);
/* Remove |name| from |dir| (dropping its reference).  Returns 0 or -ENOENT. */
int fs_dir_remove(struct fs_inode *dir, const char *name);
/* Set or replace xattr |name|.  Returns 0 or -ENOMEM. */
int fs_inode_set_xattr(struct fs_inode *ino, const char *name, const void *value, size_t len);

/* ======================================================================
 * EROFS writer (erofs_write.c)
 * ====================================================================== */

struct erofs_image_layout {
	uint64_t meta_off;	 /* byte offset where metadata begins (512 KiB aligned) */
	uint8_t *meta;		 /* malloc'd metadata bytes to place at meta_off */
	size_t meta_len;	 /* a multiple of EROFS_BLOCK_SIZE */
	uint8_t superblock[EROFS_BLOCK_SIZE]; /* block 0 of the image */
	uint64_t image_size;	 /* meta_off + meta_len rounded up to CHUNK_SIZE */
	uint64_t inode_count;
};

/* Serialise the tree rooted at |root| as EROFS metadata placed at byte
 * |meta_off| of the image (uncompressed, 4 KiB blocks, extended inodes).
 * Regular files must already carry data_off/size pointing below meta_off.
 * Output is deterministic: the same tree always gives the same bytes.  Fills
 * nid/ino/nlink in the tree.  On success |out| owns meta (free with
 * erofs_layout_cleanup).  Returns 0, -EFBIG if a limit of the format is
 * exceeded (logged), or -ENOMEM. */
int erofs_write_metadata(struct fs_inode *root, uint64_t meta_off, struct erofs_image_layout *out);
void erofs_layout_cleanup(struct erofs_image_layout *l);

/* ======================================================================
 * Byte streams: a verified, decompressed layer or blob (blob.c)
 * ====================================================================== */

struct byte_stream {
	/* Read up to |n| bytes; returns bytes read, 0 at a clean end, or -errno
	 * (logged).  At the end of the stream every digest the stream was told
	 * to check has been checked: a mismatch is -EBADMSG, never a clean 0. */
	ssize_t (*read)(struct byte_stream *s, void *buf, size_t n);
	/* Optional (NULL when the stream cannot): the same as read, but the
	 * next up to |n| bytes are handed out in place as |*out| instead of
	 * copied; they stay valid and unchanged until the stream is closed.
	 * A plain layer in a file is mapped, so its bytes reach the tar
	 * parser without the kernel copying them (the largest cost of an
	 * import after the crypto itself).  The two calls may be mixed. */
	ssize_t (*read_ref)(struct byte_stream *s, const void **out, size_t n);
	void (*close)(struct byte_stream *s);
	const char *what; /* "layer 2 (sha256:ab12...)" for error messages */
};

static inline ssize_t byte_stream_read(struct byte_stream *s, void *buf, size_t n) { return s->read(s, buf, n); }
static inline void byte_stream_close(struct byte_stream *s)
{
	if (s)
		s->close(s);
}

/* Open |fd| (taking ownership) as a stream of |what|.  If |digest| ("sha256:
 * hex") is non-NULL the raw bytes must hash to it.  The content is then
 * decompressed according to its magic bytes (gzip via ISA-L igzip, zstd, or
 * plain tar).  If |diff_id| is non-NULL the decompressed bytes must hash to
 * it.  |max_raw| bounds the raw size (absurd sizes fail early).  Returns a
 * stream or NULL with errno set. */
struct byte_stream *blob_stream_open_fd(int fd, const char *what, const char *digest, const char *diff_id,
					uint64_t max_raw);

/* The same over an existing stream of raw bytes (for a layer inside a
 * docker-archive tar); takes ownership of |raw|. */
struct byte_stream *blob_stream_wrap(struct byte_stream *raw, const char *what, const char *digest,
				     const char *diff_id, uint64_t max_raw);

/* A stream over bytes already in memory (a test's or a fuzz target's tar).
 * byte_stream_mem_init() makes |m| read |<p, n>|, which it does not copy:
 * the bytes must outlive the stream, which also lends them (read_ref).
 * Closing it does nothing. */
struct byte_stream_mem {
	struct byte_stream base;
	const uint8_t *p;
	size_t left;
};
void byte_stream_mem_init(struct byte_stream_mem *m, const void *p, size_t n, const char *what);

/* ======================================================================
 * OCI sources (oci_*.c)
 * ====================================================================== */

struct oci_layer {
	char digest[80];	/* "sha256:..." of the blob as stored */
	char diff_id[80];	/* "sha256:..." of the uncompressed tar, "" if unknown */
	char media_type[160];
	uint64_t size;		/* declared blob size */
};

struct oci_image {
	char manifest_digest[80];
	char config_digest[80];
	size_t n_layers;
	struct oci_layer *layers;
	struct run_config config;
	char *source_ref;	/* the SOURCE string as given */
};

struct oci_source_options {
	bool insecure;		/* allow plain http to non-loopback registries */
	const char *tmp_dir;	/* where downloaded blobs may be staged */
	const char *username;	/* registry basic auth (or REGISTRY_AUTH_FILE / env) */
	const char *password;
};

struct oci_source;

/* Open SOURCE ("oci:DIR[:TAG]", "docker-archive:FILE",
 * "docker://HOST[:PORT]/REPO[:TAG|@DIGEST]"), fetch and validate its index,
 * manifest and config (digests checked, JSON shape checked, sizes bounded),
 * and fill |*out_image| (owned by the source).  Errors name the source and
 * the field at fault.  Returns 0 or -errno. */
int oci_source_open(const char *spec, const struct oci_source_options *opt, struct oci_source **out,
		    const struct oci_image **out_image);

/* Open layer |i| as a verified, decompressed tar stream (see byte_stream).
 * Returns a stream or NULL with errno set (logged). */
struct byte_stream *oci_source_open_layer(struct oci_source *src, size_t i);

void oci_source_free(struct oci_source *src);

/* Parse OCI/Docker JSON documents (oci_json.c).  These are the checked
 * parsers for untrusted registry and layout JSON; each returns 0 or -EBADMSG
 * with a logged message naming |what| and the field. */
/* An image index or a manifest list: pick the linux/amd64 (or the only, or
 * the one tagged |tag| via org.opencontainers.image.ref.name) manifest
 * descriptor.  Writes its digest to |out_digest| (80 bytes). */
int oci_parse_index(const char *what, const uint8_t *buf, size_t len, const char *tag, char *out_digest,
		    uint64_t *out_size);
/* A manifest: config digest and layers (allocated into |img|). */
int oci_parse_manifest(const char *what, const uint8_t *buf, size_t len, struct oci_image *img);
/* A config: run configuration and rootfs.diff_ids (matched to layers). */
int oci_parse_config(const char *what, const uint8_t *buf, size_t len, struct oci_image *img);
void oci_image_cleanup(struct oci_image *img);

/* Upper bounds for untrusted sizes. */
#define OCI_MAX_JSON (4u << 20)
#define OCI_MAX_LAYERS MANIFEST_MAX_LAYERS
#define OCI_MAX_BLOB (64ull << 30)

/* ======================================================================
 * Flattening (flatten.c): layer tars -> tree + image bytes, cut into chunks
 * ====================================================================== */

/* Where the image bytes go, one CHUNK_SIZE chunk at a time. */
struct chunk_sink {
	/* Return a CHUNK_SIZE buffer to fill, or NULL (out of memory). */
	uint8_t *(*get_buffer)(void *ctx);
	/* Optional: take back a buffer that will not be emitted. */
	void (*put_buffer)(void *ctx, uint8_t *buf);
	/* Hand over chunk |index|; |data| (from get_buffer) now belongs to the
	 * sink, or is NULL for a chunk known to be all zeros.  Chunks arrive in
	 * increasing index order, except chunk 0 (the superblock), which comes
	 * last.  Returns 0 or -errno, which aborts the import. */
	int (*emit)(void *ctx, uint64_t index, uint8_t *data);
	/* Optional: hand over chunk |index| whose CHUNK_SIZE bytes are |plain|,
	 * lent by a layer stream (byte_stream.read_ref) rather than copied into
	 * a buffer.  The stream stays open until the sink has no more use for
	 * the bytes (the importer closes layer streams only after its
	 * pipeline has stopped).  Same order and return value as emit. */
	int (*emit_lent)(void *ctx, uint64_t index, const uint8_t *plain);
	void *ctx;
};

struct layer_region {
	uint64_t offset, length;	/* bytes of the image */
	uint64_t files;			/* regular files with data */
};

struct flattener {
	struct fs_inode *root;
	const struct chunk_sink *sink;
	uint64_t pos;		/* next image byte to produce */
	uint64_t chunk_index;	/* the chunk |buf| holds */
	uint8_t *buf;		/* chunk being filled, or NULL */
	uint64_t max_image_size;
	/* Where the data of files placed at the end of their layer's region
	 * (flatten.c, "hot and cold data") waits until the layer's tar has been
	 * read: set it after flattener_init; NULL means $TMPDIR, else /tmp. */
	const char *spool_dir;
	bool spooling;		/* spool_fd is open (on first use) */
	int spool_fd;		/* an unlinked file */
	uint64_t spool_len;	/* bytes the current layer has spooled */
	/* The layout plan's files for the next flatten_layer call (NULL: none;
	 * see layout_plan_layer).  Set before each call. */
	const struct layout_layer *layer_layout;
};

/* The files |p| (may be NULL) places in the layer whose blob digest is
 * |layer_digest|, or NULL when it places none there. */
const struct layout_layer *layout_plan_layer(const struct layout_plan *p, const char *layer_digest);

/* Whether |l| lists |path| (as joined from a tar entry's checked
 * components), and its rank in |*out_rank|: lower ranks go first. */
bool layout_layer_rank(const struct layout_layer *l, const char *path, uint64_t *out_rank);

/* Start an empty image; chunk 0 is held back for the superblock.  Images
 * larger than |max_image_size| are refused.  Returns 0 or -ENOMEM. */
int flattener_init(struct flattener *f, const struct chunk_sink *sink, uint64_t max_image_size);

/* Apply layer |layer| (0 = bottom) read from |tar| to the tree and append its
 * data region: the files a start is likely to read first, in tar order, then,
 * from a chunk boundary on, those it almost never reads (flatten.c says
 * which); with f->layer_layout set, the files it lists go before all of
 * them, in its order, up to a chunk boundary.  |what| names the layer in errors.  Reads |tar| to its end so its
 * digests are checked.  Returns 0 or -errno (-EBADMSG for bad content,
 * logged naming the layer and the entry; -errno of the spool file). */
int flatten_layer(struct flattener *f, struct byte_stream *tar, unsigned layer, const char *what,
		  struct layer_region *out_region);

/* A layer's bytes read, checked and decompressed on a thread of its own, up
 * to |ahead| bytes (at least 4 MiB) ahead of whoever flattens them, so that
 * an import can read the next layers while it still flattens an earlier one.
 * layer_reader_start() starts reading |tar| at once; |tar| stays the
 * caller's and must stay open until layer_reader_free().  Returns 0 with
 * |*out| set, -ENOMEM or -EAGAIN (no thread). */
struct layer_reader;
int layer_reader_start(struct byte_stream *tar, size_t ahead, struct layer_reader **out);

/* Stop |lr|'s thread (waiting for a read in progress) and free it; NULL is
 * allowed.  Call it before closing the stream it reads. */
void layer_reader_free(struct layer_reader *lr);

/* flatten_layer() over bytes that |lr| reads (started by the caller, which
 * frees it afterwards): the same result, byte for byte, however far ahead
 * |lr| has read. */
int flatten_layer_read(struct flattener *f, struct layer_reader *lr, unsigned layer, const char *what,
		       struct layer_region *out_region);

/* Write the metadata region and then chunk 0.  |layout| describes the result
 * (erofs_layout_cleanup frees it).  Returns 0 or -errno. */
int flattener_finish(struct flattener *f, struct erofs_image_layout *layout);

/* Free the tree and any buffer not yet emitted. */
void flattener_cleanup(struct flattener *f);

/* Lease and GC-marker keys shared by import.c and gc.c. */
#define LEASE_PREFIX "leases/"
#define GC_MARKER "gc/running"
#define DEFAULT_LEASE_TTL 3600.0

/* True if the GC marker exists and is fresh.  Returns 1, 0 or -errno. */
int gc_marker_active(struct chunkify_ctx *c);

#endif
