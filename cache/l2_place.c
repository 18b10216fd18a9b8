/* L2 placement: which node holds which fragment of a chunk, and under which
 * memcached key (contract of l2_locate in internal.h).
 *
 * Placement.  Fragment i of chunk N goes to the node ranked i-th by
 * rendezvous (highest random weight) hashing of N over all configured nodes,
 * so the k+m fragments are on distinct nodes and adding or removing a node
 * moves only the fragments it wins or held.  Down nodes keep their rank (the
 * placement never depends on health); their fragments are simply not asked.
 */
#include "l2_internal.h"

#include <errno.h>
#include <stdio.h>

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	x ^= x >> 31;
	return x;
}

static uint64_t fnv1a64(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (; *s; s++) {
		h ^= (uint8_t)*s;
		h *= 0x100000001b3ull;
	}
	return h;
}

uint64_t l2_node_seed(const char *addr)
{
	return mix64(fnv1a64(addr) ^ 0x6b696e646c696e67ull);
}

void l2_rank_nodes(const struct l2 *l, const char *name, unsigned *order)
{
	uint64_t hn = mix64(fnv1a64(name));
	unsigned n = l->k + l->m;
	uint64_t best[L2_MAX_FRAGS];
	unsigned cnt = 0;
	for (size_t i = 0; i < l->n_nodes; i++) {
		uint64_t w = mix64(hn ^ l->nodes[i].seed);
		/* insertion into the top-n list, ties by node order */
		unsigned pos = cnt;
		while (pos > 0 && best[pos - 1] < w)
			pos--;
		if (pos >= n)
			continue;
		unsigned last = cnt < n ? cnt : n - 1;
		for (unsigned j = last; j > pos; j--) {
			best[j] = best[j - 1];
			order[j] = order[j - 1];
		}
		best[pos] = w;
		order[pos] = (unsigned)i;
		if (cnt < n)
			cnt++;
	}
}

int l2_make_key(const struct l2 *l, const char *name, unsigned index, char *key, size_t cap, size_t *out_len)
{
	int n = snprintf(key, cap, "%s%s.%u", l->prefix, name, index);
	if (n < 0 || (size_t)n >= cap)
		return -ENAMETOOLONG;
	if (out_len)
		*out_len = (size_t)n;
	return 0;
}

int l2_locate(struct l2 *l, const char *name, unsigned index, char *addr, size_t addr_len, char *key, size_t key_len)
{
	if (!l || !name || !is_sha256_hex(name) || index >= l->k + l->m)
		return -EINVAL;
	unsigned order[L2_MAX_FRAGS];
	l2_rank_nodes(l, name, order);
	if ((size_t)snprintf(addr, addr_len, "%s", l->nodes[order[index]].addr) >= addr_len)
		return -ENAMETOOLONG;
	return l2_make_key(l, name, index, key, key_len, NULL);
}
