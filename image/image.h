/* image: kindling's runtime image library.
 *
 * Everything a reader of what chunkify writes needs, and nothing of the
 * builder: the origin stores (file, http, s3) behind one ops table, the chunk
 * format (convergent AES-256-CTR, named by the SHA-256 of the ciphertext), the
 * sealed image manifest, refs (NAME:TAG -> manifest digest), and the
 * environment every kindling program builds the same way (KINDLING_HOME, the
 * deployment salt, the tenant key, the default store).  See DESIGN.md, "Data
 * formats".  It sits just above common/ and below everything else.
 */
#ifndef KINDLING_IMAGE_H
#define KINDLING_IMAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define CHUNK_SIZE (512u * 1024u)
#define CHUNK_KEY_LEN 32
#define CHUNK_NAME_HEX_LEN 64
#define EROFS_BLOCK_SIZE 4096u

/* ======================================================================
 * Stores.  Objects are whole byte strings under keys such as
 * "chunks/<name>", "manifests/<digest>", "refs/<name>/<tag>".
 * ====================================================================== */

struct store;

struct store_options {
	/* s3:// only: "http://127.0.0.1:4568" style endpoint; NULL means the
	 * environment (KINDLING_S3_ENDPOINT or AWS_ENDPOINT_URL), else AWS. */
	const char *s3_endpoint;
	/* s3:// only: region for SigV4; NULL means AWS_REGION or us-east-1. */
	const char *s3_region;
	/* Allow plain http to a non-loopback host. */
	bool insecure;
	/* Requests in flight at once for batched operations (0 = 16). */
	unsigned parallel;
	/* Per-request timeout in milliseconds (0 = 30000). */
	unsigned timeout_ms;
	/* file:// only: fail with -ENOENT (logged, naming the directory) if the
	 * store's directory does not exist, instead of creating it.  Readers set
	 * it, so a mistyped --store never leaves an empty store behind. */
	bool must_exist;
};

/* Open the store named by |uri|: "file:///abs/dir", a plain path,
 * "http(s)://host:port/prefix" or "s3://bucket/prefix".  |opt| may be NULL
 * for defaults.  A file store's directory is created if missing (unless
 * opt->must_exist).  Credentials
 * for s3 come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and optional
 * AWS_SESSION_TOKEN).  On success |*out| owns the store (store_free).
 * Returns 0, -EINVAL for a malformed URI (logged, naming it), or -errno. */
int store_open(const char *uri, const struct store_options *opt, struct store **out);

/* Close |s| and free it; NULL is allowed. */
void store_free(struct store *s);

/* file:// only: if opening |s| created its directory and the store still
 * holds no object, remove the directory again (with its empty
 * subdirectories): for an importer that fails before storing anything, so a
 * failed first import leaves no empty store behind.  Anything else is left
 * alone.  Returns 0 or -errno. */
int store_undo_create(struct store *s);

/* A short printable description ("file:///x", "s3://b/p at http://...")
 * owned by |s|. */
const char *store_describe(const struct store *s);

/* Fetch object |key| into a malloc'd buffer the caller frees.  Objects larger
 * than |max_len| fail with -EFBIG before being read whole.  Returns 0,
 * -ENOENT if absent, or -EIO / -errno for transport errors (logged). */
int store_get(struct store *s, const char *key, size_t max_len, uint8_t **out, size_t *out_len);

/* Store |<buf, len>| under |key|, replacing any old value atomically: a
 * reader sees the old or the new bytes, never a mix, and a failed put leaves
 * no partial object or temporary file.  Returns 0 or -errno (logged). */
int store_put(struct store *s, const char *key, const void *buf, size_t len);

/* For each of |n| keys set |out_exists[i]|.  Remote stores pipeline the
 * checks (|parallel| at a time), never one round trip after another.
 * Returns 0 or -errno if any check failed for a reason other than absence. */
int store_exists_batch(struct store *s, const char *const *keys, size_t n, bool *out_exists);

/* Upload |n| objects in parallel (remote stores) or in turn (file store);
 * same guarantees as store_put for each.  Returns 0 or the first -errno. */
int store_put_batch(struct store *s, const char *const *keys, const void *const *bufs, const size_t *lens, size_t n);

/* Delete |key|.  Deleting an absent key succeeds.  Returns 0 or -errno. */
int store_delete(struct store *s, const char *key);

/* Called once per key found by store_list; return non-zero to stop early
 * (store_list then returns that value). */
typedef int (*store_list_cb)(void *arg, const char *key);

/* List every key that starts with |prefix| (for example "chunks/"), in no
 * particular order, calling |cb| for each full key.  Temporary objects of an
 * in-progress put are never listed.  Returns 0, the callback's non-zero
 * value, or -errno. */
int store_list(struct store *s, const char *prefix, store_list_cb cb, void *arg);

/* Seconds since |key| was last written, or -ENOENT / -errno.  Used to expire
 * leases and markers of crashed processes. */
int store_age(struct store *s, const char *key, double *out_seconds);

/* ======================================================================
 * Chunks.
 * ====================================================================== */

/* Convergent encryption of one chunk: key = SHA-256(salt || plain),
 * ciphertext = AES-256-CTR(key, IV 0), name = SHA-256(ciphertext) as hex.
 * |cipher| must hold |len| bytes.  Returns 0 or -EIO (crypto failure). */
int chunk_seal(const uint8_t *salt, size_t salt_len, const uint8_t *plain, size_t len, uint8_t key[CHUNK_KEY_LEN],
	       uint8_t *cipher, char name[CHUNK_NAME_HEX_LEN + 1]);

/* Check that |<cipher, len>| is named |name|, decrypt it into |plain| with
 * |key|, and, if |salt| is non-NULL, check that key == SHA-256(salt || plain),
 * all in one interleaved pass (each piece is hashed, decrypted and hashed
 * again while it is in the CPU cache), which is what the read path needs.
 * |name| may be NULL when the caller has already checked the name (the L2
 * client hashes fragments as they arrive).  Returns 0, -EBADMSG if the name or
 * the key does not match (|plain| is zeroed), or -EIO (OpenSSL failed,
 * logged). */
int chunk_open(const char *name, const uint8_t key[CHUNK_KEY_LEN], const uint8_t *salt, size_t salt_len,
	       const uint8_t *cipher, size_t len, uint8_t *plain);

/* Decrypt (or encrypt: CTR is symmetric) |<in, len>| that starts at byte
 * |off| of a chunk sealed with |key|, into |out|: any |off| (the counter
 * block is off / 16, big endian, as with IV 0 at offset 0, and off % 16
 * bytes of its key stream are skipped).  In place is allowed.  For reading
 * part of a chunk whose ciphertext was verified earlier.  Returns 0 or -EIO
 * (logged). */
int chunk_ctr_at(const uint8_t key[CHUNK_KEY_LEN], uint64_t off, const uint8_t *in, size_t len, uint8_t *out);

/* A chunk key's AES-256-CTR state for decrypting one chunk piece by piece,
 * in any order, without setting the key up again for each piece.
 * chunk_ctr_new sets |*out| (freed with chunk_ctr_free, which accepts NULL)
 * and returns 0, or -ENOMEM / -EIO (logged).  chunk_ctr_run is
 * chunk_ctr_at with that state: |<in, len>| starts at byte |off| of the
 * chunk, any |off|, in place allowed; returns 0 or -EIO (logged).  One
 * thread at a time per state. */
struct chunk_ctr;
int chunk_ctr_new(const uint8_t key[CHUNK_KEY_LEN], struct chunk_ctr **out);
int chunk_ctr_run(struct chunk_ctr *c, uint64_t off, const uint8_t *in, size_t len, uint8_t *out);
void chunk_ctr_free(struct chunk_ctr *c);

/* ======================================================================
 * Manifests.
 * ====================================================================== */

struct run_config {
	char **entrypoint; /* NULL-terminated, may be NULL */
	char **cmd;	   /* NULL-terminated, may be NULL */
	char **env;	   /* NULL-terminated "K=V", may be NULL */
	char *working_dir; /* may be NULL */
	char *user;	   /* may be NULL */
};

struct manifest_chunk {
	uint64_t index;			      /* chunk index: byte offset / CHUNK_SIZE */
	char name[CHUNK_NAME_HEX_LEN + 1];   /* "" until known */
	uint8_t key[CHUNK_KEY_LEN];	      /* zero when the manifest was opened without a key */
};

/* The most layers an image may have (the OCI sources refuse more). */
#define MANIFEST_MAX_LAYERS 512

struct manifest_layer {
	char digest[80];	/* "sha256:..." of the layer blob */
	uint64_t offset;	/* where its data region starts in the image */
	uint64_t length;	/* bytes of that region */
};

/* What a manifest describes.  A manifest without a "kind" field is an image
 * (every manifest written before snapshots existed). */
enum manifest_kind {
	MANIFEST_KIND_IMAGE = 0,	/* a flattened EROFS image */
	MANIFEST_KIND_SNAPSHOT,		/* a micro-VM snapshot (snapshot/snapshot.h) */
};

/* A snapshot's own fields.  Its chunk index space holds the guest memory
 * file from byte 0 (mem_size bytes), then, from the next chunk boundary
 * (vmstate_offset), the VMM's vmstate file (vmstate_size bytes). */
struct manifest_snapshot {
	char image_digest[65];	/* manifest digest of the image the VM ran */
	uint64_t mem_size;	/* bytes of guest memory; a multiple of 4096, > 0 */
	uint64_t vmstate_offset;/* a multiple of CHUNK_SIZE, >= mem_size */
	uint64_t vmstate_size;	/* bytes; vmstate_offset + vmstate_size <= image_size */
};

/* "image" or "snapshot", for listings and errors. */
const char *manifest_kind_name(enum manifest_kind kind);

/* A startup trace an image's layout came from (chunkify import
 * --layout-trace): the SHA-256 of the trace document as given, and the
 * manifest digest of the image it was recorded on, both 64 hex digits. */
struct manifest_layout_trace {
	char trace_digest[65];
	char recorded_on[65];
};

/* The most traces one layout may be merged from. */
#define MANIFEST_MAX_LAYOUT_TRACES 16

struct manifest {
	enum manifest_kind kind;
	struct manifest_snapshot snapshot; /* MANIFEST_KIND_SNAPSHOT only */
	char source_manifest_digest[80]; /* "sha256:..." of the OCI manifest */
	char source_config_digest[80];   /* "sha256:..." of the OCI config */
	char *source_ref;		 /* what was imported, for humans */
	struct run_config config;
	uint64_t image_size;		 /* bytes; a multiple of chunk_size */
	uint32_t chunk_size;		 /* CHUNK_SIZE */
	uint64_t metadata_offset;	 /* where the EROFS metadata region starts */
	size_t n_layers;
	struct manifest_layer *layers;
	size_t n_chunks; /* non-zero chunks, sorted by index */
	struct manifest_chunk *chunks;
	bool keys_present; /* false when opened without the tenant key */
	/* An image laid out from startup traces names them, in the order
	 * their files were placed (optional: manifests from before the field,
	 * and images in the usual layout, have none). */
	size_t n_layout_traces;
	struct manifest_layout_trace layout_traces[MANIFEST_MAX_LAYOUT_TRACES];
};

/* Release everything |c| owns (not |c| itself); safe on a zeroed struct. */
void run_config_cleanup(struct run_config *c);

/* |c| as the manifest stores it: {"entrypoint", "cmd", "env": [strings] or
 * null, "working_dir", "user": a string or null}.  Returns a new object, or
 * NULL on allocation failure. */
json_t *run_config_to_json(const struct run_config *c);

/* Parse |j| (untrusted, the shape run_config_to_json writes) into |*out|,
 * which the caller releases with run_config_cleanup.  Returns 0, or -EBADMSG
 * for a malformed object (logged; |*out| is then zeroed) or -ENOMEM. */
int run_config_from_json(json_t *j, struct run_config *out);

/* Release everything |m| owns (not |m| itself); safe on a zeroed struct. */
void manifest_cleanup(struct manifest *m);

/* Serialise |m| and seal its keys with |tenant_key| (AES-256-GCM, the whole
 * manifest as associated data, a nonce derived from the content so the same
 * manifest always gives the same bytes).  |*out| is malloc'd.  Returns 0 or
 * -errno. */
int manifest_encode(const struct manifest *m, const uint8_t tenant_key[32], uint8_t **out, size_t *out_len);

/* Parse and authenticate |<buf, len>|.  With |tenant_key| the keys are
 * unsealed and every byte is authenticated; with NULL only the public part
 * (names, sizes, config) is parsed, which is what garbage collection needs.
 * Returns 0, -EBADMSG for a malformed or tampered manifest (logged with the
 * reason), -EKEYREJECTED if it was sealed for another tenant key. */
int manifest_decode(const uint8_t *buf, size_t len, const uint8_t *tenant_key, struct manifest *out);

/* ======================================================================
 * Images: refs and manifests in a store.
 * ====================================================================== */

/* Parse NAME[:TAG] into "NAME/TAG", the key under refs/ (the tag defaults to
 * "latest").  Returns 0, -EINVAL (logged, naming the character at fault) or
 * -ENAMETOOLONG. */
int image_parse_name_tag(const char *s, char *out, size_t out_len);

/* Resolve |image| (NAME[:TAG], sha256:HEX or HEX) to a manifest digest of 64
 * hex digits.  A NAME[:TAG] goes through refs/ in |s|, and its ref must carry
 * |tenant_key|'s signature over that name, tag and digest (image_ref_put), so
 * nobody without the key can point a tag at another manifest.  There is no
 * rollback protection: an earlier signed value of the same tag can be put
 * back by anyone who can write to the store; pin a digest to rule that out.
 * Returns 0, -ENOENT (logged, naming the image and the store), -EKEYREJECTED
 * for a ref this key did not sign (logged, saying how to re-tag), -EBADMSG for
 * a corrupt ref, or -errno. */
int image_resolve(struct store *s, const char *image, const uint8_t tenant_key[32], char digest[65]);

/* Point |image| (NAME[:TAG]) at manifest |digest| (64 hex digits) in |s|,
 * signed with |tenant_key| (see image_resolve).  The caller has checked that
 * the manifest exists.  Returns 0 or -errno (logged). */
int image_ref_put(struct store *s, const uint8_t tenant_key[32], const char *image, const char *digest);

/* Fetch manifests/<digest> from |s|, check that its bytes hash to |digest|,
 * and decode it: with |tenant_key| the chunk keys are unsealed, with NULL only
 * the public part is read (see manifest_decode).  Returns 0 with |*m| filled
 * (manifest_cleanup frees it) or -errno (logged). */
int image_load(struct store *s, const char *digest, const uint8_t *tenant_key, struct manifest *m);

/* ======================================================================
 * Startup traces: which chunks a start touched first, in order, stored at
 * traces/<manifest digest> so later starts can prefetch them (blockd for
 * images, snapshot-serve for snapshot memory).
 *   {"format": "kindling-trace-1", "manifest": "<digest>", "chunk_size":
 *    524288, "seconds": S, "chunks": [index, ...],
 *    "block_size": 4096, "blocks": [[block, count], ...]}
 * "blocks" (optional; blockd writes it for images) lists the 4 KiB blocks
 * readers first read, as runs in first-read order, each block once: what
 * `chunkify import --layout-trace` maps back to files (chunker/layout_trace.c
 * holds its parser).
 * ====================================================================== */

#define IMAGE_TRACE_MAX_BYTES (16u << 20)
#define IMAGE_TRACE_BLOCK_SIZE 4096u
/* Runs of blocks a trace keeps at most: about 5 MiB of JSON, inside
 * IMAGE_TRACE_MAX_BYTES; a start that reads more scattered runs than this
 * keeps the first ones. */
#define IMAGE_TRACE_MAX_EXTENTS 200000u

/* |count| blocks of IMAGE_TRACE_BLOCK_SIZE from block number |block|. */
struct image_trace_extent {
	uint64_t block, count;
};

/* "traces/<digest>" into |key| (|cap| >= 80). */
void image_trace_key(const char *digest, char *key, size_t cap);

/* Encode |<indexes, n>| recorded over |seconds| for manifest |digest| as a
 * trace document: a malloc'd NUL-terminated string in |*out|.  Returns 0 or
 * -ENOMEM. */
int image_trace_encode(const char *digest, double seconds, const uint64_t *indexes, size_t n, char **out);

/* As image_trace_encode, plus the block runs |<ext, n_ext>| (in first-read
 * order) as "blocks"; with |n_ext| 0 the document is image_trace_encode's.
 * Returns 0 or -ENOMEM. */
int image_trace_encode_blocks(const char *digest, double seconds, const uint64_t *indexes, size_t n,
			      const struct image_trace_extent *ext, size_t n_ext, char **out);

/* Parse a stored (untrusted) trace |<buf, len>| for a manifest of
 * |n_indexes| chunks into |*out| (malloc'd, caller frees; repeated indexes
 * dropped).  Returns 0, -EBADMSG (logged as a warning) or -ENOMEM. */
int image_trace_parse(const uint8_t *buf, size_t len, uint64_t n_indexes, uint64_t **out, size_t *out_n);

/* ======================================================================
 * The environment: KINDLING_HOME and the secrets in it.  Every program
 * builds one, the same way, so they agree on where things are.
 * ====================================================================== */

struct kindling_env {
	char *home;		 /* KINDLING_HOME, or ~/.kindling; created 0700 */
	uint8_t salt[64];	 /* the deployment salt for chunk keys */
	size_t salt_len;	 /* 0 when the salt was optional and absent */
	uint8_t tenant_key[32];	 /* seals the chunk keys in manifests */
	bool have_tenant_key;
	char *default_store_uri; /* $home/store */
};

enum kindling_env_flags {
	/* Load the salt only if KINDLING_SALT or $home/salt already exists
	 * (salt_len stays 0 otherwise) and skip the tenant key: for tools that
	 * only read chunks and must not mint a salt no importer uses. */
	KINDLING_ENV_READ_ONLY = 1u << 0,
};

/* Fill |env| from the process environment:
 *   - home: KINDLING_HOME if set and non-empty, else $HOME/.kindling, else
 *     /root/.kindling; created (0700) if missing;
 *   - salt: KINDLING_SALT (32 to 128 hex digits) or $home/salt, created on
 *     first use (64 hex digits, 0600);
 *   - tenant key: the file KINDLING_TENANT_KEY names, or $home/tenant.key,
 *     created on first use (0600; a warning if group or others can read it);
 *   - the default store: $home/store.
 * |flags| is a mask of enum kindling_env_flags.  Returns 0, or -errno with a
 * message that names the variable or file at fault; on failure |env| is left
 * zeroed.  kindling_env_cleanup releases it. */
int kindling_env_load(struct kindling_env *env, unsigned flags);

/* The home directory alone, resolved as kindling_env_load does (KINDLING_HOME,
 * else $HOME/.kindling, else /root/.kindling) but neither created nor read:
 * for programs that only need a path in it.  malloc'd; NULL with errno set. */
char *kindling_home_dir(void);

/* Free what |env| owns and wipe its secrets; safe on a zeroed struct. */
void kindling_env_cleanup(struct kindling_env *env);

/* "$home/|name|", malloc'd; NULL with errno set on failure. */
char *kindling_env_path(const struct kindling_env *env, const char *name);

#endif
