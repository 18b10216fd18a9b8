/* cache internals: shared between the files of cache/ only. */
#ifndef KINDLING_CACHE_INTERNAL_H
#define KINDLING_CACHE_INTERNAL_H

#define LOG_COMPONENT "cache"
#include "common/common.h"
#include "image/image.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ======================================================================
 * Buffer pools (bufpool.c): a few equal-sized buffers kept between reads,
 * so that the big per-read buffers (a chunk, an L2 fragment) stay mapped
 * instead of faulting in fresh pages on every read.
 * ====================================================================== */

#define BUF_POOL_KEEP_MAX 16u
struct buf_pool {
	pthread_mutex_t mu;
	size_t len;			/* every buffer's size */
	unsigned keep, n;		/* at most |keep| idle buffers kept */
	void *free[BUF_POOL_KEEP_MAX];
};

/* Set up |p| for buffers of |len| bytes, keeping at most |keep| (capped at
 * BUF_POOL_KEEP_MAX) idle ones. */
void buf_pool_init(struct buf_pool *p, size_t len, unsigned keep);
/* A buffer of p->len bytes (uninitialised): an idle one, or a new one from
 * malloc; NULL when out of memory.  Thread-safe. */
void *buf_pool_get(struct buf_pool *p);
/* Give back |b| (from buf_pool_get on |p|; NULL is allowed): kept if fewer
 * than p->keep are idle, else freed.  Thread-safe. */
void buf_pool_put(struct buf_pool *p, void *b);
/* Free the idle buffers; every buffer taken must have been given back or
 * freed. */
void buf_pool_cleanup(struct buf_pool *p);

/* ======================================================================
 * L2: an erasure-coded memcached fleet (l2.c and the l2_*.c files, whose
 * shared internals are in l2_internal.h)
 *
 * A chunk (ciphertext, up to CHUNK_SIZE bytes) is split into k data
 * fragments and m parity fragments (Reed-Solomon, ISA-L).  Fragment i is
 * stored under key "<prefix><chunk name>.<i>" on the node ranked i-th by
 * rendezvous hashing of the chunk name, so all k+m land on distinct nodes
 * (the fleet must have at least k+m nodes).  Each fragment value carries a
 * header: magic, version, k, m, index, the chunk length, the fragment
 * length, the chunk name, and a CRC32C of the fragment data, so a corrupt
 * or foreign fragment is recognised on its own, before decoding.
 * ====================================================================== */

struct l2_config {
	const char *const *nodes;	/* "host:port", n_nodes >= k + m */
	size_t n_nodes;
	unsigned k, m;			/* default 4 + 1 */
	unsigned timeout_ms;		/* per-node request timeout (default 200) */
	unsigned down_backoff_ms;	/* first backoff for a failed node (default 1000, doubling to 30 s) */
	const char *key_prefix;		/* memcached key prefix (default "kc:") */
};

struct l2;

struct l2_node_stats {
	char addr[64];
	bool up;
	uint64_t gets, hits, misses, errors, timeouts, corrupt;
	/* reads that left this node out as slow, and reads that asked it
	 * anyway as the probe that keeps its average current */
	uint64_t slow_skipped, slow_probes;
	uint64_t bytes_read, bytes_written;
	double latency_ewma_ms;
};

struct l2_stats {
	uint64_t gets, hits, misses, decodes, repairs_queued, repairs_done, puts;
	uint64_t bg_dropped; /* background writes and repairs dropped because the queue was full */
	/* reads done twice: a data fragment taken without its CRC turned out
	 * bad once the chunk failed its name check (l2_read.c) */
	uint64_t crc_rereads;
	size_t n_nodes;
	struct l2_node_stats *nodes; /* n_nodes entries, owned by the caller after l2_stats (free()) */
};

/* Create an L2 client.  Does not connect yet (nodes are dialled on first
 * use), so a fleet that is down does not stop a host from starting.
 * Returns 0, -EINVAL for a bad configuration (logged), or -errno. */
int l2_new(const struct l2_config *cfg, struct l2 **out);

/* Stop background work (repairs, writes) and free; NULL is allowed. */
void l2_free(struct l2 *l);

/* Fetch chunk |name|: ask all k+m nodes in parallel and rebuild the chunk
 * from the first k intact fragments to arrive.  |out| must hold CHUNK_SIZE
 * bytes.  The chunk IS checked against |name| (SHA-256, computed while the
 * fragments arrive), so bytes returned are the named chunk.  Missing or
 * corrupt fragments found on the way are rewritten in the background once
 * the chunk is known.  Nodes that are marked down are not asked.
 * Returns 0; -ENOENT if fewer than k intact fragments could be had;
 * -EBADMSG if intact-looking fragments rebuild a chunk that does not match
 * its name (the caller should l2_report_bad() it); or -errno. */
int l2_get(struct l2 *l, const char *name, uint8_t *out, size_t *out_len);

/* Encode |<buf, len>| and store its k+m fragments.  Waits for the writes.
 * Returns 0 if at least k fragments were stored, else -EIO. */
int l2_put(struct l2 *l, const char *name, const uint8_t *buf, size_t len);

/* As l2_put, but queued for a background thread; never blocks the caller
 * (a full queue drops the write and counts it).  Copies |buf|. */
void l2_put_async(struct l2 *l, const char *name, const uint8_t *buf, size_t len);

/* The caller found that the chunk l2_get returned does not match its name:
 * delete its fragments so the next read falls through and rewrites them. */
void l2_report_bad(struct l2 *l, const char *name);

/* Snapshot the counters.  Returns 0 or -ENOMEM. */
int l2_stats(struct l2 *l, struct l2_stats *out);

/* Wait until queued background writes and repairs are done (tests, prime). */
void l2_flush(struct l2 *l);

/* ======================================================================
 * L2 fragment format (l2_frag.c)
 *
 * One memcached value per fragment, our own format, all integers little
 * endian:
 *
 *   off len  field
 *     0   4  magic "KLF1"
 *     4   1  version (1)
 *     5   1  k            data fragments of the chunk
 *     6   1  m            parity fragments of the chunk
 *     7   1  index        0..k-1 data, k..k+m-1 parity
 *     8   4  chunk_len    1..CHUNK_SIZE bytes of the whole chunk
 *    12   4  frag_len     == ceil(chunk_len / k)
 *    16  64  chunk name   64 lower-case hex digits, no NUL
 *    80   4  crc32c       of the fragment data (see l2_crc32c)
 *    84   -  data         frag_len bytes; the value is exactly 84 + frag_len
 *
 * Data fragment i holds chunk bytes [i*frag_len, (i+1)*frag_len), the last
 * one zero-padded; parity fragments are Cauchy Reed-Solomon (ISA-L
 * gf_gen_cauchy1_matrix), so any k of the k+m fragments rebuild the chunk.
 * ====================================================================== */

#define L2_FRAG_MAGIC "KLF1"
#define L2_FRAG_VERSION 1
#define L2_FRAG_HDR_LEN 84u
#define L2_MAX_K 32u		/* k and m limits; k + m <= L2_MAX_FRAGS */
#define L2_MAX_M 16u
#define L2_MAX_FRAGS 32u

struct l2_fragment_view {
	unsigned k, m, index;
	uint32_t chunk_len, frag_len;
	const uint8_t *data; /* frag_len bytes inside the parsed buffer */
};

/* CRC32C (Castagnoli, as iSCSI: init ~0, final xor ~0; "123456789" gives
 * 0xe3069283) of |<p, n>|, computed with ISA-L's crc32_iscsi. */
uint32_t l2_crc32c(const uint8_t *p, size_t n);

/* Fragment data length for a chunk of |chunk_len| bytes split k ways:
 * ceil(chunk_len / k).  |k| must be non-zero. */
size_t l2_frag_len(size_t chunk_len, unsigned k);

/* Check |<buf, len>| (untrusted bytes from a memcached reply) against the
 * format above: magic, version, k == |expect_k| and m == |expect_m|, index
 * < k + m, 1 <= chunk_len <= CHUNK_SIZE, frag_len == ceil(chunk_len / k),
 * len == L2_FRAG_HDR_LEN + frag_len, name == |expect_name| (if non-NULL;
 * otherwise it must still be 64 lower-case hex digits), and the CRC.  On
 * success fills |out| (pointing into |buf|).  Returns 0 or -EBADMSG; logs
 * nothing (the caller knows which node sent it). */
int l2_fragment_parse(const uint8_t *buf, size_t len, const char *expect_name, unsigned expect_k, unsigned expect_m,
		      struct l2_fragment_view *out);

/* Write a fragment header for |<data, frag_len>| into |hdr| (L2_FRAG_HDR_LEN
 * bytes).  |name| is 64 hex digits.  Returns 0 or -EINVAL. */
int l2_fragment_header(uint8_t *hdr, const char *name, unsigned k, unsigned m, unsigned index, size_t chunk_len,
		       const uint8_t *data, size_t frag_len);

/* A Reed-Solomon k+m codec: the (k+m) x k Cauchy matrix and the encode
 * tables, built once (l2_codec_init) and read-only afterwards, so one codec
 * serves any number of threads. */
struct l2_codec {
	unsigned k, m;
	uint8_t *matrix; /* (k+m) x k, rows 0..k-1 are the identity */
	uint8_t *tables; /* ec_init_tables of the m parity rows */
};

/* Returns 0, or -EINVAL if k or m is out of range (k >= 1, m >= 0,
 * k <= L2_MAX_K, m <= L2_MAX_M, k + m <= L2_MAX_FRAGS), or -ENOMEM. */
int l2_codec_init(struct l2_codec *c, unsigned k, unsigned m);
void l2_codec_cleanup(struct l2_codec *c);

/* Encode |<chunk, len>| (1..CHUNK_SIZE bytes) into k+m fragment values:
 * fragment i is written (header and data) at |vals + i * stride| where
 * stride = L2_FRAG_HDR_LEN + l2_frag_len(len, k); |vals| holds (k+m) *
 * stride bytes.  Returns 0 or -EINVAL. */
int l2_codec_encode(const struct l2_codec *c, const char *name, const uint8_t *chunk, size_t len, uint8_t *vals);

/* The fragments of one chunk collected so far, checked for agreeing with
 * each other: the first fragment fixes chunk_len and frag_len. */
struct l2_frag_set {
	unsigned k, m, n;		     /* n: intact fragments held */
	uint32_t chunk_len, frag_len;
	const uint8_t *data[L2_MAX_FRAGS]; /* NULL if absent; not owned */
};

void l2_frag_set_init(struct l2_frag_set *s, unsigned k, unsigned m);

/* Add a parsed fragment.  Returns 0, -EEXIST for an index already held, or
 * -EBADMSG if its k, m or lengths disagree with the fragments already held
 * (the set is unchanged). */
int l2_frag_set_add(struct l2_frag_set *s, const struct l2_fragment_view *v);

/* Rebuild the chunk from k fragments of |s| (which must hold n >= k) into
 * |out| (|out_cap| >= chunk_len).  Uses the data fragments directly where
 * held (with all k of them this is a copy) and decodes the rest by
 * inverting the k x k submatrix of the rows held.  Sets |*out_len| and
 * |*decoded| (true if any parity was used).  Returns 0, -ENOENT if n < k,
 * -ENOSPC if |out_cap| is too small, -EINVAL or -ENOMEM. */
int l2_frag_set_decode(const struct l2_codec *c, const struct l2_frag_set *s, uint8_t *out, size_t out_cap,
		       size_t *out_len, bool *decoded);

/* ======================================================================
 * L2 wire: the reply to one text-protocol "get KEY" (l2_reply.c)
 *
 * An incremental parser over untrusted bytes from a memcached node.  It
 * accepts exactly: "END\r\n" (miss); "VALUE KEY FLAGS BYTES[ CAS]\r\n", BYTES
 * bytes of value, "\r\nEND\r\n" (hit); or a SERVER_ERROR / CLIENT_ERROR /
 * ERROR line.  KEY must be the key asked for and BYTES at most max_value;
 * anything else ends the reply as L2R_PROTO and the connection must be
 * dropped.  The first hdr_len value bytes go to |hdr| (the fragment header);
 * the rest go to a destination the caller picks once the header is in
 * (L2R_NEED_DST), so the bytes can land where they finally belong.
 * ====================================================================== */

enum l2_reply_state { L2R_LINE, L2R_NEED_DST, L2R_VALUE, L2R_TRAILER, L2R_DONE };
enum l2_reply_result { L2R_NONE, L2R_HIT, L2R_MISS, L2R_SERVER_ERROR, L2R_PROTO };

struct l2_reply {
	enum l2_reply_state state;
	enum l2_reply_result result; /* set when state == L2R_DONE */
	char line[256];		     /* keys are at most 250 bytes */
	size_t line_len;
	const char *key;
	size_t key_len, max_value;
	size_t value_len, got; /* value bytes announced and consumed */
	uint8_t *hdr;
	size_t hdr_len;
	uint8_t *data; /* value bytes after the header; NULL = discard them */
	size_t trailer_got;
};

/* Expect the reply to "get |key|": values up to |max_value| bytes, the first
 * |hdr_len| of them into |hdr|.  |key| and |hdr| must outlive the parse. */
void l2_reply_init(struct l2_reply *r, const char *key, size_t key_len, size_t max_value, uint8_t *hdr,
		   size_t hdr_len);

/* Consume bytes from |<p, n>|; returns how many were used.  Stops early at
 * L2R_NEED_DST (call l2_reply_set_data, then feed the rest) and at L2R_DONE
 * (bytes after the reply are not part of it). */
size_t l2_reply_feed(struct l2_reply *r, const uint8_t *p, size_t n);

/* In L2R_NEED_DST (the first hdr_len value bytes are in |hdr|): the rest of
 * the value goes to |data|, which must hold value_len - hdr_len bytes, or is
 * dropped if it is NULL. */
void l2_reply_set_data(struct l2_reply *r, uint8_t *data);

/* In L2R_VALUE: where the next value bytes belong and how many (so a recv()
 * can land there directly); NULL when they are to be dropped or in any other
 * state (then read into a scratch buffer and feed it).  After writing |n| <=
 * |*len| bytes there, call l2_reply_advance(r, n). */
uint8_t *l2_reply_window(struct l2_reply *r, size_t *len);
void l2_reply_advance(struct l2_reply *r, size_t n);

/* Check a fragment whose header and data arrived in separate buffers, as
 * l2_fragment_parse does for one contiguous value: |<hdr, L2_FRAG_HDR_LEN>|
 * and |<data, data_len>|.  Returns 0 with |*out| filled (out->data = data)
 * or -EBADMSG. */
int l2_fragment_parse_split(const uint8_t *hdr, const uint8_t *data, size_t data_len, const char *expect_name,
			    unsigned expect_k, unsigned expect_m, struct l2_fragment_view *out);

/* l2_fragment_parse_split without the CRC-32C of the data, which the caller
 * checks later with l2_fragment_crc_ok, if at all: a read whose data
 * fragments are covered by the chunk's name check needs a fragment's CRC
 * only to tell which fragment is bad once that check has failed.  Returns 0
 * with |*out| filled, or -EBADMSG. */
int l2_fragment_parse_header(const uint8_t *hdr, const uint8_t *data, size_t data_len, const char *expect_name,
			     unsigned expect_k, unsigned expect_m, struct l2_fragment_view *out);

/* Whether |<data, data_len>| matches the CRC-32C in fragment header |hdr|
 * (which l2_fragment_parse_header accepted). */
bool l2_fragment_crc_ok(const uint8_t *hdr, const uint8_t *data, size_t data_len);

/* Where fragment |index| of chunk |name| lives: the node's "host:port" into
 * |<addr, addr_len>| and the memcached key into |<key, key_len>|
 * (rendezvous ranking, as l2_get and l2_put use).  For tests and tools.
 * Returns 0, -EINVAL or -ENAMETOOLONG. */
int l2_locate(struct l2 *l, const char *name, unsigned index, char *addr, size_t addr_len, char *key, size_t key_len);

/* ======================================================================
 * The read chain (cache.c; the layers in mem.c, l1.c, flight.c, l2_layer.c,
 * l3.c; whole chunks in whole.c, verified by image.h's chunk_open)
 *
 * A read walks a chain of layers, nbdkit style: memory -> L1 -> single
 * flight -> L2 -> L3, each one small ops table that serves the request or
 * calls the next layer.  Test layers (counting, faults, delays) are put in
 * with cache_insert_layer, never with an if (testing).
 * ====================================================================== */

#include "cache.h"

struct cache_layer;

/* A whole chunk, verified (whole.c): its ciphertext hashed to its name,
 * the key checked (when a salt is configured), decrypted.  Immutable once
 * made; shared by refcount between the readers of one single-flight fetch
 * and L1's insert queue. */
#define CACHE_BLOCK 4096u
#define CACHE_BLOCKS_PER_CHUNK (CHUNK_SIZE / CACHE_BLOCK)
struct chunk_whole {
	char name[CHUNK_NAME_HEX_LEN + 1];
	uint8_t key[CHUNK_KEY_LEN];
	size_t len;			/* bytes of ciphertext (= plaintext) */
	uint8_t *cipher;		/* len bytes */
	/* len bytes, or NULL when the plaintext went straight into the
	 * buffer of the read that fetched the chunk (a whole-chunk read:
	 * chunk_req_whole), sparing a 512 KiB copy; chunk_whole_read then
	 * decrypts what others want from |cipher| (CTR: any range). */
	uint8_t *plain;
	struct buf_pool *pool;		/* |plain| goes back to it, and |cipher| too ... */
	bool cipher_pooled;		/* ... if this is set (else it is malloc'd) */
	enum cache_tier from;		/* the tier that produced it */
	int refs;			/* atomic */
};

/* The cache's pool of CHUNK_SIZE buffers, for the ciphertext and plaintext
 * of the chunk_wholes its layers make. */
struct buf_pool *cache_chunk_bufs(struct cache *c);

/* Verify |<cipher, len>| (taking ownership of |cipher|, malloc'd) against
 * |name| and, with |c|'s salt, |key|; decrypt: one pass of image.h's
 * chunk_open, the one implementation of the chunk format.  The plaintext
 * goes into |direct| (CHUNK_SIZE bytes; then w->plain is NULL) if it is not
 * NULL, else into a buffer of the whole's own.
 * Returns 0 with |*out| (refs 1), -EBADMSG if the bytes do not match or
 * |len| is 0 or above CHUNK_SIZE (cipher freed), or -ENOMEM / -EIO (cipher
 * freed). */
int chunk_whole_make(struct cache *c, const char *name, const uint8_t key[CHUNK_KEY_LEN], uint8_t *cipher,
		     size_t len, enum cache_tier from, uint8_t *direct, struct chunk_whole **out);
/* Make a chunk_whole of bytes a tier has already verified and decrypted
 * itself (l2_get_open does, as the fragments arrive), taking ownership of
 * |cipher| and |plain| (both from cache_chunk_bufs(c); |plain| NULL when the
 * tier decrypted into the reader's buffer).  Returns 0 with |*out| (refs 1),
 * -EBADMSG if |len| is 0 or above CHUNK_SIZE, or -ENOMEM; on failure both
 * buffers go back to the pool. */
int chunk_whole_adopt(struct cache *c, const char *name, const uint8_t key[CHUNK_KEY_LEN], uint8_t *cipher, uint8_t *plain,
		      size_t len, enum cache_tier from, struct chunk_whole **out);
/* chunk_whole_ref takes a reference to |w|; chunk_whole_unref drops one,
 * and the last frees it (NULL is allowed). */
void chunk_whole_ref(struct chunk_whole *w);
void chunk_whole_unref(struct chunk_whole *w);

/* Plaintext bytes [off, off + n) of |w| (within w->len) into |dst|: copied
 * from w->plain, or decrypted from w->cipher where the whole has no
 * plaintext of its own.  Returns 0, or -ENOMEM / -EIO (logged; |dst|
 * zeroed). */
int chunk_whole_read(const struct chunk_whole *w, uint32_t off, uint8_t *dst, size_t n);

/* Copy |rq|'s range of |w|'s plaintext into rq->buf (chunk_whole_read;
 * bytes past the end of a short chunk read as zero); nothing if rq->buf is
 * NULL.  Returns 0 or -errno as chunk_whole_read. */
struct chunk_req;
int chunk_whole_copy(const struct chunk_whole *w, struct chunk_req *rq);

/* Whether |rq| asks for a whole chunk into a buffer: a tier can then
 * decrypt straight into rq->buf (chunk_whole_make's |direct|) and serve it
 * with |in_place|. */
bool chunk_req_whole(const struct chunk_req *rq);

/* Serve |rq| from |w|, just fetched and verified by tier w->from (the
 * layer that fetched it): count the hit and its bytes for that tier, copy
 * |rq|'s range (unless |in_place|: the tier decrypted into rq->buf already,
 * and only the bytes past a short chunk's end are zeroed), set rq->tier,
 * and hand the caller's reference to |w| up in rq->whole.  Returns 0, or
 * -errno as chunk_whole_copy (the reference is still handed up). */
int chunk_whole_serve(struct cache *c, struct chunk_whole *w, struct chunk_req *rq, bool in_place);

/* One read through the chain. */
struct chunk_req {
	const char *name;
	const uint8_t *key;
	uint32_t off;			/* plaintext range wanted ... */
	size_t len;			/* ... (len 0 with buf NULL: prefetch) */
	uint8_t *buf;
	/* The reader reads this chunk once (cache_read_once): the memory tier
	 * does not keep what it reads from below. */
	bool once;
	/* out: the tier that served it (set by the serving layer) */
	enum cache_tier tier;
	/* out, optional: a layer that had the whole verified chunk at hand
	 * sets this (a reference the caller of the chain releases). */
	struct chunk_whole *whole;
	/* Hooks an upper tier (L1) leaves for the single-flight layer, so
	 * that a late reader never starts a second fetch: the leader calls
	 * |upper_insert| before it releases the flight, and a new leader
	 * first tries |upper_lookup| (0 = served from the upper tier). */
	int (*upper_lookup)(void *arg, struct chunk_req *rq);
	void (*upper_insert)(void *arg, struct chunk_req *rq, struct chunk_whole *w);
	void *upper_arg;
};

struct cache_layer_ops {
	const char *name;		/* required: "mem", "l1", "flight", "l2", "l3", "count" */
	/* required: fill rq->buf with rq->len plaintext bytes at rq->off of
	 * chunk rq->name, verified, or call cache_layer_next().  Sets
	 * rq->tier when it serves the read itself.  Returns 0, -EIO (no tier
	 * could produce verified bytes) or -errno. */
	int (*read)(struct cache_layer *l, struct chunk_req *rq);
	/* optional: drop |name| from this layer. */
	void (*evict)(struct cache_layer *l, const char *name);
	/* optional: release the layer's state (after every thread stopped). */
	void (*close)(struct cache_layer *l);
};

struct cache_layer {
	const struct cache_layer_ops *ops;
	void *state;
	struct cache_layer *next;	/* NULL below the last */
	struct cache *cache;
};

/* Call the layer below |l|; -EIO if there is none. */
int cache_layer_next(struct cache_layer *l, struct chunk_req *rq);

/* Put a layer with |ops| and |state| directly above the first layer named
 * |above_name| (e.g. "l3"), for tests: counting, fault and delay layers.
 * Call before any read.  Returns 0, -ENOENT if there is no such layer, or
 * -ENOMEM.  |state| stays the caller's unless ops->close frees it. */
int cache_insert_layer(struct cache *c, const char *above_name, const struct cache_layer_ops *ops, void *state);

/* Per-tier counters, updated with atomics by the layers. */
struct cache_counters {
	uint64_t hits, misses, bytes, errors, corrupt;
};
struct cache_counters *cache_tier_counters(struct cache *c, enum cache_tier t);
#define CACHE_COUNT(c, t, field, n) __atomic_fetch_add(&cache_tier_counters((c), (t))->field, (n), __ATOMIC_RELAXED)

/* Wait until L1's background insert queue is empty (tests: L1 files are
 * written off the read path).  A no-op without L1. */
void cache_wait_l1(struct cache *c);

/* The salt of |c|'s configuration (NULL if none). */
const uint8_t *cache_salt(struct cache *c, size_t *out_len);

/* Layer constructors.  Each returns 0 or -errno and fills |*ops| and
 * |*state|. */

/* mem.c */
int mem_layer_new(uint64_t max_bytes, const struct cache_layer_ops **ops, void **state);
void mem_layer_usage(void *state, uint64_t *out_bytes);

/* l1.c */
struct l1_usage {
	/* bytes and entries are the directory's, shared by every process using
	 * it; indexed is this process's index */
	uint64_t bytes, max_bytes, entries, indexed, protected_entries, open_fds;
	uint64_t queued, insert_dropped; /* background insert queue */
	uint64_t evictions;		 /* by this process, to stay in the bound or the filesystem */
};
/* Open (creating it) the L1 directory |dir|, shared with other processes
 * (l1.c, top).  On failure returns -errno with the reason, for the one
 * notice the caller logs, in |<why, why_len>|; logs nothing itself. */
int l1_layer_new(struct cache *c, const char *dir, uint64_t max_bytes, const struct cache_layer_ops **ops,
		 void **state, char *why, size_t why_len);
void l1_layer_usage(void *state, struct l1_usage *out);
/* Wait until the insert queue of the L1 layer |state| is empty. */
void l1_layer_wait(void *state);

/* flight.c; flight_layer_shared counts the reads that followed a fetch
 * already in the air rather than starting their own. */
int flight_layer_new(struct cache *c, const struct cache_layer_ops **ops, void **state);
uint64_t flight_layer_shared(void *state);

/* l2_layer.c; |l2| stays the caller's (the cache frees it after the
 * chain). */
int l2_layer_new(struct cache *c, struct l2 *l2, const struct cache_layer_ops **ops, void **state);

/* l3.c: at most |parallel| origin fetches at once (0 means 1);
 * l3_layer_fetches counts the fetches started.  |origin| stays the
 * caller's. */
int l3_layer_new(struct cache *c, struct store *origin, unsigned parallel, const struct cache_layer_ops **ops,
		 void **state);
uint64_t l3_layer_fetches(void *state);

#endif
