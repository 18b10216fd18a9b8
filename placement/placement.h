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

#endif
