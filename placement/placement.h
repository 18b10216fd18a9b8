/* placement: where a function's cold start runs, in a fleet of hosts.
 *
 * The fleet's pieces (see placement/README.md): stateless frontends, one or
 * more placement services, a host agent per host, and etcd for the state
 * they share.  This header is the placement library: the summary of a
 * host's L1 that agents publish, and (below) the scoring, shuffle sharding
 * and choice that the placement service and bench/placement_sim both use.
 */
#ifndef KINDLING_PLACEMENT_H
#define KINDLING_PLACEMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- the L1 summary: which chunks a host holds ----
 *
 * A Bloom filter over chunk names.  A chunk's name is SHA-256 of its
 * ciphertext, so its bytes are already uniform: the k bit positions are
 * taken from the name's digest directly (bytes 0..7 and 8..15 as two 64-bit
 * little-endian words h1, h2; position i is (h1 + i*h2) mod bits), with no
 * further hashing.  Agents publish it base64 in their registration;
 * placement asks it how much of an image a host holds.  A false positive
 * makes a host look a little warmer than it is, never colder. */

#define PLACEMENT_BLOOM_DEFAULT_BITS (1u << 17) /* 16 KiB: ~1% false positives at 13,000 chunks (6.5 GiB) */
#define PLACEMENT_BLOOM_DEFAULT_HASHES 7u
#define PLACEMENT_BLOOM_MAX_BITS (1u << 24)

struct placement_bloom {
	uint32_t bits;		/* a multiple of 8, 64 .. PLACEMENT_BLOOM_MAX_BITS */
	uint32_t hashes;	/* 1 .. 16 */
	uint32_t entries;	/* names added (for the operator; not used by queries) */
	uint8_t *map;		/* bits/8 bytes, malloc'd */
};

/* An empty filter of |bits| bits and |hashes| hashes (0, 0 = the defaults).
 * 0, -EINVAL (out of range) or -ENOMEM. */
int placement_bloom_init(struct placement_bloom *b, uint32_t bits, uint32_t hashes);

/* Free what |b| holds; safe on a zeroed struct. */
void placement_bloom_cleanup(struct placement_bloom *b);

/* Add the chunk |name| (64 lowercase hex digits).  -EINVAL if it is not. */
int placement_bloom_add(struct placement_bloom *b, const char *name);

/* Add a chunk by its 32-byte digest. */
void placement_bloom_add_digest(struct placement_bloom *b, const uint8_t digest[32]);

/* True if |digest| may be in |b| (false: it certainly is not). */
bool placement_bloom_has_digest(const struct placement_bloom *b, const uint8_t digest[32]);

/* The filter as text: "BITS:HASHES:ENTRIES:BASE64" (malloc'd), or NULL. */
char *placement_bloom_encode(const struct placement_bloom *b);

/* Parse placement_bloom_encode's text (untrusted: from etcd) into |*b|.
 * 0, or -EINVAL naming nothing (the caller names the host it came from). */
int placement_bloom_decode(const char *text, struct placement_bloom *b);

/* ---- hosts, requests and the choice ----
 *
 * Everything below is pure: no I/O, no clock, no global state.  Randomness
 * comes from a caller-owned 64-bit state (placement_rng_next), so the same
 * inputs and seed give the same host.
 *
 * Cells.  A fleet is cut into |cells| cells; a function belongs to one
 * (placement_function_cell, a stable hash of its name) and hosts say which
 * they are in.  Nothing of a function runs outside its cell, so a cell is
 * the blast radius of anything that goes wrong with one function.
 *
 * Shuffle sharding.  Inside its cell a function runs only on its shard: the
 * |shard_size| hosts with the highest rendezvous hash of (function, host
 * id).  A host joining or leaving changes only the shards it is (or
 * becomes) part of, and two functions share all of their shard hosts only
 * rarely (placement_shard_overlap), so one function's burst or poison hits
 * few of any other's hosts.  Only when every shard host is excluded or full
 * may a cold start spill to the rest of the cell (placement_config.spill).
 *
 * Scoring, higher is better, for a host that fits the request:
 *   locality   w.l1 * f1 + w.l2 * l2_fraction * (1 - f1)
 *              f1: the fraction of the image's chunks the host's L1 Bloom
 *              holds; l2_fraction: the caller's estimate of how much of the
 *              rest the fleet-wide L2 holds (equal for every host)
 *   warm       w.warm if the host has an idle sandbox of this version
 *   load       - w.load * u^2, u = max(memory, slots) used after placing,
 *              counting pending reservations: convex, so a nearly full host
 *              is avoided hard and a lightly loaded one hardly at all
 *   pack       + w.pack * u: slight, so that among hosts of similar score
 *              the fuller wins and whole hosts stay free for big functions
 *   spread     - w.spread * log2(1 + sandboxes of this function on the host)
 * then one of the best is drawn at random (top_k hosts within epsilon of
 * the best score, weighted by how close they are), so many placement
 * services deciding at once do not all pick the same host. */

#define PLACEMENT_DEFAULT_CELLS 1u
#define PLACEMENT_DEFAULT_SHARD_SIZE 32u
#define PLACEMENT_DEFAULT_TOP_K 3u
#define PLACEMENT_DEFAULT_EPSILON 0.25
#define PLACEMENT_MAX_TOP_K 16u
#define PLACEMENT_MAX_SHARD_SIZE 1024u

enum placement_strategy {
	PLACEMENT_SCORED,	/* shards and scoring, as above */
	PLACEMENT_RANDOM,	/* uniform over the cell's hosts that fit (a baseline) */
	PLACEMENT_LEAST_LOADED, /* the cell's host with the lowest u (a baseline) */
};

/* The scoring weights.  The defaults (placement_config_init) come from
 * bench/placement_sim; see placement/README.md for the figures. */
struct placement_weights {
	double l1;     /* 4.0: the whole image in this host's L1 */
	double l2;     /* 1.0: the whole image in the fleet's L2 */
	double warm;   /* 1.0: an idle sandbox of this version on the host */
	double load;   /* 16.0: times u^2 */
	double spread; /* 0.5: times log2(1 + sandboxes of this function) */
	double pack;   /* 0.1: times u */
};

struct placement_config {
	uint32_t cells;	     /* 1 .. 65536; default 1 */
	uint32_t shard_size; /* 1 .. PLACEMENT_MAX_SHARD_SIZE; default 32 */
	bool spill;	     /* leave the shard when all of it is excluded or full; default true */
	uint32_t top_k;	     /* 1 .. PLACEMENT_MAX_TOP_K; default 3 */
	double epsilon;	     /* score distance from the best still drawn; default 0.25 */
	struct placement_weights w;
};

/* Fill |cfg| with the defaults above. */
void placement_config_init(struct placement_config *cfg);

/* Check |cfg|'s ranges.  0, or -EINVAL with |*why| (may be NULL) set to a
 * static text naming the field at fault. */
int placement_config_check(const struct placement_config *cfg, const char **why);

/* Parse "l1=4,l2=1,warm=1,load=16,spread=0.5,pack=0.1" (any subset, any
 * order) into |w|, leaving unnamed weights as they are.  Weights are finite
 * and >= 0.  0, or -EINVAL with |*why| (may be NULL) naming the term at
 * fault (a static text). */
int placement_weights_parse(const char *text, struct placement_weights *w, const char **why);

/* One host as a request sees it.  The caller fills the per-request fields
 * (warm_idle, fn_sandboxes) for the function being placed. */
struct placement_host {
	const char *id;			/* unique in the fleet; the shard hash is over it */
	uint32_t cell;			/* 0 .. cells-1 (see placement_cell_parse) */
	uint64_t memory_total_mb, memory_used_mb;
	uint64_t memory_pending_mb;	/* reserved by placement, not yet in use */
	uint64_t memory_idle_mb;	/* part of used held by idle sandboxes the host
					 * evicts when it needs room (0: unknown) */
	uint32_t slots_total, slots_used;
	uint32_t slots_pending;		/* reservations not yet in use */
	uint32_t warm_idle;		/* idle sandboxes of the requested version */
	uint32_t fn_sandboxes;		/* sandboxes of the requested function, any state */
	const struct placement_bloom *l1; /* NULL: nothing known */
};

struct placement_request {
	const char *function;
	const char *version;
	const char *image;		/* manifest digest (not used by the scoring) */
	uint64_t memory_mb;
	const uint8_t (*chunks)[32];	/* the image's chunk digests (may be NULL if n_chunks is 0) */
	size_t n_chunks;
	double l2_fraction;		/* 0 .. 1: the caller's estimate; 0 if unknown */
	const char *const *exclude;	/* host ids never to choose */
	size_t n_exclude;
};

struct placement_result {
	size_t host;	  /* index into the hosts array */
	double score;	  /* its score (PLACEMENT_SCORED), or its u (baselines) */
	double l1_fraction; /* of the image's chunks in its L1 Bloom */
	bool spilled;	  /* it is outside the function's shard */
	size_t candidates; /* hosts the draw was among */
};

/* Next value of the caller's generator (splitmix64); any seed is fine. */
uint64_t placement_rng_next(uint64_t *state);

/* The cell of |function| among |cells| (>= 1): a stable hash of the name. */
uint32_t placement_function_cell(const char *function, uint32_t cells);

/* Parse a host's cell name, "cell-N" or "N", into |*out| (< |cells|).
 * 0, or -EINVAL (the caller names the host). */
int placement_cell_parse(const char *text, uint32_t cells, uint32_t *out);

/* The rendezvous weight of |host_id| for |function|: a function's shard is
 * the hosts of its cell with the highest weights. */
uint64_t placement_rendezvous(const char *function, const char *host_id);

/* |function|'s shard among |hosts| (its cell's hosts, best first): up to
 * cfg->shard_size indexes into |hosts| written to |out| (room for
 * cfg->shard_size), their number to |*n_out|.  Excluded and full hosts are
 * still members: the shard depends only on the function and the host ids. */
void placement_shard(const struct placement_config *cfg, const char *function, const struct placement_host *hosts,
		     size_t n_hosts, size_t *out, size_t *n_out);

/* True if |h| can take |req| now: not excluded, memory and a slot free
 * (counting pending reservations; idle sandboxes count as free). */
bool placement_fits(const struct placement_host *h, const struct placement_request *req);

/* |h|'s score for |req| under |cfg| (PLACEMENT_SCORED's formula above);
 * |*l1_fraction| (may be NULL) gets f1. */
double placement_score(const struct placement_config *cfg, const struct placement_host *h,
		       const struct placement_request *req, double *l1_fraction);

/* Choose the host for |req| among |hosts| by |strategy|, drawing from
 * |*rng|.  Hosts of other cells than the function's are ignored.  Returns
 * 0 with |*out| filled, -ENOENT if the function's cell has no hosts, or
 * -ENOSPC if none of them can take it (all excluded or full; with spill
 * off, all of the shard).  -EINVAL for a bad |cfg|. */
int placement_choose(const struct placement_config *cfg, enum placement_strategy strategy,
		     const struct placement_request *req, const struct placement_host *hosts, size_t n_hosts,
		     uint64_t *rng, struct placement_result *out);

/* How much shards overlap, for a cell of |cell_hosts| hosts and shards of
 * |shard_size|, if shards were uniform random subsets (rendezvous hashing
 * makes them so): |*p_all| is the chance that another given function's
 * shard is exactly this one's (1 / C(n, k)), |*p_half| that it shares at
 * least half (ceil(k/2)) of its hosts (hypergeometric tail).  With F
 * functions in the cell, the expected number sharing a whole shard with a
 * given one is (F - 1) * p_all.  -EINVAL unless 1 <= shard_size <=
 * cell_hosts. */
int placement_shard_overlap(uint32_t cell_hosts, uint32_t shard_size, double *p_all, double *p_half);

/* ---- the placement service (placement/service.c) ----
 *
 * `kindling placement`: POST /v1/place, GET /v1/hosts, GET /healthz, over
 * the hosts registered in etcd (placement/README.md has the keys, the
 * request and answer formats).  Unlike the library above it does I/O: etcd
 * through common/etcd.h and manifests from a store (image/image.h). */

struct http_request;
struct http_response;

/* POST /v1/place's body, parsed.  Strings are malloc'd. */
struct placement_place_request {
	char *function;
	char *version;	   /* "$LATEST" if absent */
	char image[65];	   /* manifest digest, 64 hex digits; "" if absent */
	uint64_t memory_mb;
	char **exclude;
	size_t n_exclude;
	unsigned count;	   /* 1 .. PLACEMENT_MAX_COUNT; 1 if absent */
};

#define PLACEMENT_MAX_COUNT 64u
#define PLACEMENT_MAX_EXCLUDE 1024u

/* Parse |<body, len>| (untrusted JSON) into |*out|.  0, or -EINVAL with
 * |*why| set to a static text naming the field at fault (|*out| is then
 * empty), or -ENOMEM.  placement_place_request_cleanup frees it either way. */
int placement_place_request_parse(const void *body, size_t len, struct placement_place_request *out,
				  const char **why);
void placement_place_request_cleanup(struct placement_place_request *r);

/* A host's registration (kindling/hosts/HOST), parsed. */
struct placement_host_warm {
	char *function, *version;
	uint32_t idle, busy;
};

struct placement_host_record {
	char *id, *url;
	uint32_t cell;
	uint64_t memory_total_mb, memory_used_mb;
	uint32_t slots_total, slots_used;
	struct placement_host_warm *warm;
	size_t n_warm;
	struct placement_bloom l1; /* empty (map NULL) if the host sent none */
};

/* Parse a registration (untrusted: whatever is in etcd) with |cells| cells
 * configured.  0, or -EINVAL with |*why| naming the field at fault (the
 * caller names the host), or -ENOMEM.  Cleanup frees it either way. */
int placement_host_record_parse(const void *json, size_t len, uint32_t cells, struct placement_host_record *out,
				const char **why);
void placement_host_record_cleanup(struct placement_host_record *h);

/* A host's pending reservations (kindling/load/HOST) at |now| (unix
 * seconds): expired ones are ignored.  |function| (may be NULL) counts
 * that function's own in |*fn_count|.  0 or -EINVAL (malformed). */
int placement_load_parse(const void *json, size_t len, int64_t now, const char *function, uint64_t *memory_mb,
			 uint32_t *count, uint32_t *fn_count);

struct placement_service_config {
	const char *etcd_endpoints;	/* required: "http://127.0.0.1:2379,..." */
	const char *store_uri;		/* where manifests are; NULL: no code locality */
	struct placement_config placement; /* placement_config_init's defaults if zeroed */
	unsigned hosts_cache_ms;	/* how long a read of the hosts is reused; 0 = 500 */
	unsigned reservation_ttl_s;	/* a reservation's life; 0 = 30 */
	unsigned retries;		/* re-scores after a conflicting reservation; 0 = 5 */
	unsigned max_wait_ms;		/* a request that waited longer for its turn gets 503
					   {"reason":"Overloaded"} and no reservation; 0 = 500 */
	double burst_initial;		/* new sandboxes the fleet may start at once; 0 = 1000 */
	double burst_per_minute;	/* the bucket's refill; 0 = 500 */
	uint64_t seed;			/* for the draw; 0 = from the clock */
};

struct placement_service;

/* Make a service: an etcd client and (if store_uri) the store; nothing is
 * read yet.  0 with |*out|, -EINVAL for a bad configuration (logged,
 * naming it), or -errno. */
int placement_service_new(const struct placement_service_config *cfg, struct placement_service **out);

/* Free; NULL is fine.  No handle call may be in progress. */
void placement_service_free(struct placement_service *s);

/* Answer |req| into |resp|: POST /v1/place, GET /v1/hosts, GET /healthz
 * (others 404/405).  Thread-safe.  Returns 0 (every answer, errors
 * included, is in |resp|) or -ENOMEM. */
int placement_service_handle(struct placement_service *s, const struct http_request *req,
			     struct http_response *resp);

#endif
