/* The pool's choices: which idle sandbox an invocation takes, which idle
 * sandboxes make room for a cold start, which have been idle too long.  Pure
 * bookkeeping over an array of entries, so the unit tests can drive every
 * case without starting a sandbox; hostagent.c calls it under its lock. */
#include "placement/hostagent/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int pool_add(struct pool *p, struct pool_entry *e)
{
	if (p->n == p->cap) {
		size_t cap = p->cap ? p->cap * 2 : 16;
		struct pool_entry **v = realloc(p->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		p->v = v;
		p->cap = cap;
	}
	p->v[p->n++] = e;
	return 0;
}

void pool_remove(struct pool *p, struct pool_entry *e)
{
	for (size_t i = 0; i < p->n; i++)
		if (p->v[i] == e) {
			memmove(p->v + i, p->v + i + 1, (p->n - i - 1) * sizeof(*p->v));
			p->n--;
			return;
		}
}

void pool_cleanup(struct pool *p)
{
	free(p->v);
	memset(p, 0, sizeof(*p));
}

bool pool_key_equal(const struct pool_key *a, const struct pool_key *b)
{
	return strcmp(a->name, b->name) == 0 && strcmp(a->version, b->version) == 0 &&
	       strcmp(a->revision, b->revision) == 0 && strcmp(a->digest, b->digest) == 0;
}

struct pool_entry *pool_pick_idle(const struct pool *p, const struct pool_key *k)
{
	struct pool_entry *best = NULL;
	for (size_t i = 0; i < p->n; i++) {
		struct pool_entry *e = p->v[i];
		if (e->state != POOL_IDLE || e->draining || e->oneshot || !pool_key_equal(&e->key, k))
			continue;
		if (!best || (e->provisioned && !best->provisioned) ||
		    (e->provisioned == best->provisioned && e->last_used > best->last_used))
			best = e;
	}
	return best;
}

uint64_t pool_memory_in_use(const struct pool *p)
{
	uint64_t sum = 0;
	for (size_t i = 0; i < p->n; i++)
		if (p->v[i]->state != POOL_ENDING)
			sum += p->v[i]->memory;
	return sum;
}

static bool evictable(const struct pool_entry *e) { return e->state == POOL_IDLE && !e->provisioned && !e->oneshot; }

int pool_plan_admit(const struct pool *p, uint64_t need, uint64_t budget, struct pool_entry **victims,
		    size_t *n_victims)
{
	*n_victims = 0;
	uint64_t used = pool_memory_in_use(p), want;
	if (!ck_add_u64(used, need, &want))
		return -EBUSY;
	if (want <= budget)
		return 0;
	/* Candidates, least recently used first (insertion sort: pools are a
	 * few hundred sandboxes at most). */
	size_t n = 0;
	uint64_t freeable = 0;
	for (size_t i = 0; i < p->n; i++) {
		struct pool_entry *e = p->v[i];
		if (!evictable(e))
			continue;
		size_t j = n++;
		while (j > 0 && victims[j - 1]->last_used > e->last_used) {
			victims[j] = victims[j - 1];
			j--;
		}
		victims[j] = e;
		freeable += e->memory;
	}
	if (want - budget > freeable)
		return -EBUSY;
	uint64_t freed = 0;
	size_t k = 0;
	while (want - freed > budget)
		freed += victims[k++]->memory;
	*n_victims = k;
	return 0;
}

size_t pool_expired(const struct pool *p, double now, double idle_timeout, struct pool_entry **out)
{
	size_t n = 0;
	for (size_t i = 0; i < p->n; i++)
		if (evictable(p->v[i]) && now - p->v[i]->last_used >= idle_timeout)
			out[n++] = p->v[i];
	return n;
}

unsigned pool_count_provisioned(const struct pool *p, const struct pool_key *k)
{
	unsigned n = 0;
	for (size_t i = 0; i < p->n; i++)
		if (p->v[i]->provisioned && p->v[i]->state != POOL_ENDING && pool_key_equal(&p->v[i]->key, k))
			n++;
	return n;
}

bool pool_drain_matches(const struct pool_entry *e, const char *name, const char *version, const char *keep_revision)
{
	return strcmp(e->key.name, name) == 0 && (!version || strcmp(e->key.version, version) == 0) &&
	       (!keep_revision || strcmp(e->key.revision, keep_revision) != 0);
}
