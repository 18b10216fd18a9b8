/* cache: kindling's chunk read path.
 *
 * Given a chunk name (and, where the caller has it, the key), returns
 * verified bytes as fast as the tier allows, whatever fails around it:
 *
 *   memory tier   small, hot, plaintext
 *   L1            per-host disk cache, size-bounded, scan-resistant, crash-safe,
 *                 shared by the processes of a host
 *   L2            memcached fleet, each chunk Reed-Solomon coded k+m (ISA-L)
 *   L3            the origin store (image.h: file, http, s3)
 *
 * Every chunk is verified before a byte leaves this layer; bad bytes from any
 * tier are dropped and the read goes on to the next tier.  Concurrent reads
 * of one chunk share one fetch.  After an L3 fetch the chunk goes into L1 and,
 * in the background, into L2.
 */
#ifndef KINDLING_CACHE_H
#define KINDLING_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "image/image.h"

struct cache;

struct cache_config {
	/* L3, the origin store URI (image.h store_open).  Required. */
	const char *origin_uri;
	const struct store_options *origin_options;

	/* L2.  n_l2_nodes == 0 disables L2. */
	const char *const *l2_nodes;	/* "host:port" */
	size_t n_l2_nodes;
	unsigned l2_k, l2_m;		/* l2_k 0 = 4+1; with l2_k set, l2_m as given (0 = no parity) */
	unsigned l2_timeout_ms;		/* 0 = 200 */

	/* L1.  l1_dir NULL disables L1. */
	const char *l1_dir;
	uint64_t l1_max_bytes;		/* 0 = 4 GiB */

	/* Memory tier.  0 = 64 MiB; set mem_disable to turn it off. */
	uint64_t mem_max_bytes;
	bool mem_disable;

	/* Origin fetches in flight at once, so an empty L2 does not become a
	 * herd on the origin.  0 = 8. */
	unsigned origin_parallel;

	/* Salt for the key check (key == SHA-256(salt || plaintext)) on chunks
	 * fetched from L2 or L3.  NULL skips that check (names are always
	 * checked). */
	const uint8_t *salt;
	size_t salt_len;
};

/* Which tier served a read. */
enum cache_tier { CACHE_TIER_NONE = 0, CACHE_TIER_MEM, CACHE_TIER_L1, CACHE_TIER_L2, CACHE_TIER_L3, CACHE_TIER_COUNT };

/* Name of a tier for logs and stats ("mem", "l1", "l2", "l3"). */
const char *cache_tier_name(enum cache_tier t);

/* Create a cache.  Opens (and, if it holds entries from an earlier run or
 * another process, re-validates the index of) the L1 directory, which other
 * processes may use at the same time, and starts background threads.  An L1
 * directory that cannot be used (not creatable, not writable, a file in its
 * place) does not fail the call: the cache runs without L1 and logs one
 * warning saying why and what to do.  Returns 0, -EINVAL for a bad
 * configuration (logged), or -errno. */
int cache_new(const struct cache_config *cfg, struct cache **out);

/* Stop background work (waits for queued L2 writes) and free; NULL is ok. */
void cache_free(struct cache *c);

/* Read |len| bytes at |off| (off + len <= CHUNK_SIZE) of the plaintext of
 * chunk |name| sealed with |key| into |buf|.  The chunk is fetched from the
 * fastest tier that has it and verified (name, and key if a salt is
 * configured) before any byte is returned.  Small reads of a chunk already
 * in memory or L1 do not hash the whole chunk: L1 keeps per-4 KiB digests
 * that were computed when the whole chunk was verified.  |out_tier| (may be
 * NULL) says which tier served it.  Thread-safe.
 * Returns 0, -EIO if no tier could produce verified bytes (logged with the
 * reason per tier), -EINVAL for a bad range. */
int cache_read(struct cache *c, const char *name, const uint8_t key[CHUNK_KEY_LEN], uint32_t off, void *buf,
	       size_t len, enum cache_tier *out_tier);

/* As cache_read, for a reader that reads each chunk once and keeps the
 * bytes itself (a snapshot server copying them into guest memory): a chunk
 * the memory tier holds is served from it, but a chunk read from below is
 * not copied into the memory tier, where it would only push out chunks that
 * other reads want.  L1 and L2 keep it as for cache_read.  Returns as
 * cache_read. */
int cache_read_once(struct cache *c, const char *name, const uint8_t key[CHUNK_KEY_LEN], uint32_t off, void *buf,
		    size_t len, enum cache_tier *out_tier);

/* Fetch chunk |name| into L1 (and memory) without returning it: readahead
 * and prefetch use this.  Returns 0 or -errno as cache_read. */
int cache_prefetch(struct cache *c, const char *name, const uint8_t key[CHUNK_KEY_LEN], enum cache_tier *out_tier);

/* Write every stored chunk of |m| into L2 (fetching from L3 what L2 lacks),
 * ahead of the image's first start.  |out_written| (may be NULL) counts the
 * chunks written.  Returns 0 or -errno. */
int cache_prime_l2(struct cache *c, const struct manifest *m, uint64_t *out_written);

/* Drop chunk |name| from the memory tier and L1 (tests, operators). */
void cache_evict(struct cache *c, const char *name);

struct cache_tier_stats {
	uint64_t hits, misses, bytes, errors, corrupt;
	/* latency histogram of reads served by this tier, in power-of-two
	 * microsecond buckets: bucket i counts reads in [2^i, 2^(i+1)) us */
	uint64_t latency_us_hist[24];
};

struct cache_stats {
	struct cache_tier_stats tier[CACHE_TIER_COUNT];
	uint64_t l1_bytes, l1_max_bytes, l1_entries;	/* the directory's, across processes */
	uint64_t l1_evictions;				/* by this cache */
	uint64_t mem_bytes, mem_max_bytes;
	uint64_t origin_fetches, singleflight_shared;
};

/* Snapshot the counters.  Thread-safe. */
void cache_get_stats(struct cache *c, struct cache_stats *out);

/* The counters, L2 node states (up/down, latency, errors per node) and L1
 * use as one JSON object (malloc'd, caller frees), for stats.json and
 * `cachectl status`.  Returns NULL on allocation failure. */
char *cache_stats_json(struct cache *c);

/* Percentile |p| (0..100) in microseconds from a latency histogram. */
double cache_hist_percentile(const uint64_t hist[24], double p);

#endif
