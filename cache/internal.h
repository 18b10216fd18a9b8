/* cache internals: shared between the files of cache/ only. */
#ifndef KINDLING_CACHE_INTERNAL_H
#define KINDLING_CACHE_INTERNAL_H

#define LOG_COMPONENT "cache"
#include "../common/common.h"
#include "../chunker/chunker.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ======================================================================
 * L2: an erasure-coded memcached fleet (l2.c, l2_proto.c)
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
	uint64_t bytes_read, bytes_written;
	double latency_ewma_ms;
};

struct l2_stats {
	uint64_t gets, hits, misses, decodes, repairs_queued, repairs_done, puts;
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
 * bytes.  Missing or corrupt fragments found on the way are rewritten in the
 * background once the chunk is known.  Nodes that are marked down are not
 * asked.  The result is NOT checked against |name| here: the caller does
 * that, and calls l2_report_bad() if it does not match.
 * Returns 0, -ENOENT if fewer than k fragments could be had, or -errno. */
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

#endif
