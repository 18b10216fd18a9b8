/* The L3 layer of the read chain, the last one: fetches a chunk from the
 * origin store and verifies it (whole.c).  At most |parallel| fetches run
 * at once (origin_parallel in cache.h).  A chunk the origin does not have,
 * or has corrupt, fails the read with -EIO: there is no tier below.
 */
#include "cache.h"
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

struct l3_layer {
	struct store *origin;		/* thread-safe for get: see cache.c */
	pthread_mutex_t lock;
	pthread_cond_t freed;
	unsigned in_flight, parallel;	/* the origin semaphore */
	uint64_t fetches;		/* atomic */
};

static int l3_read(struct cache_layer *l, struct chunk_req *rq)
{
	struct l3_layer *st = l->state;
	struct cache *c = l->cache;
	pthread_mutex_lock(&st->lock);
	while (st->in_flight >= st->parallel)
		pthread_cond_wait(&st->freed, &st->lock);
	st->in_flight++;
	pthread_mutex_unlock(&st->lock);

	char key[16 + CHUNK_NAME_HEX_LEN];
	snprintf(key, sizeof(key), "chunks/%s", rq->name);
	uint8_t *cipher = NULL;
	size_t len = 0;
	__atomic_fetch_add(&st->fetches, 1, __ATOMIC_RELAXED);
	int r = store_get(st->origin, key, CHUNK_SIZE, &cipher, &len);

	pthread_mutex_lock(&st->lock);
	st->in_flight--;
	pthread_cond_signal(&st->freed);
	pthread_mutex_unlock(&st->lock);

	if (r < 0) {
		if (r == -ENOENT)
			CACHE_COUNT(c, CACHE_TIER_L3, misses, 1);
		else
			CACHE_COUNT(c, CACHE_TIER_L3, errors, 1);
		log_err("chunk %s: not in any cache tier and the origin %s %s", rq->name, store_describe(st->origin),
			r == -ENOENT ? "does not have it (was the image imported into this store?)"
				     : "failed (see above; is the origin reachable?)");
		return -EIO;
	}
	struct chunk_whole *w;
	bool direct = chunk_req_whole(rq);
	r = chunk_whole_make(c, rq->name, rq->key, cipher, len, CACHE_TIER_L3, direct ? rq->buf : NULL, &w);
	if (r < 0) {
		if (r == -EBADMSG)
			CACHE_COUNT(c, CACHE_TIER_L3, corrupt, 1);
		else
			CACHE_COUNT(c, CACHE_TIER_L3, errors, 1);
		if (r == -EBADMSG)
			log_err("chunk %s from the origin %s does not match its name or key: the origin copy is "
				"corrupt, or the key is wrong (re-import the image)",
				rq->name, store_describe(st->origin));
		return -EIO;
	}
	return chunk_whole_serve(c, w, rq, direct) < 0 ? -EIO : 0;
}

static void l3_close(struct cache_layer *l)
{
	struct l3_layer *st = l->state;
	pthread_mutex_destroy(&st->lock);
	pthread_cond_destroy(&st->freed);
	free(st); /* the store belongs to the cache */
}

static const struct cache_layer_ops l3_ops = {
	.name = "l3",
	.read = l3_read,
	.close = l3_close,
};

int l3_layer_new(struct cache *c, struct store *origin, unsigned parallel, const struct cache_layer_ops **ops,
		 void **state)
{
	(void)c;
	struct l3_layer *st = calloc(1, sizeof(*st));
	if (!st)
		return -ENOMEM;
	st->origin = origin;
	st->parallel = parallel ? parallel : 1;
	pthread_mutex_init(&st->lock, NULL);
	pthread_cond_init(&st->freed, NULL);
	*ops = &l3_ops;
	*state = st;
	return 0;
}

uint64_t l3_layer_fetches(void *state)
{
	struct l3_layer *st = state;
	return __atomic_load_n(&st->fetches, __ATOMIC_RELAXED);
}
