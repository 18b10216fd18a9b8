/* The L2 layer of the read chain: reads a chunk from the memcached fleet
 * (the L2 client, l2.c and the l2_*.c files), and writes what the origin
 * returns back into it.
 *
 * l2_get_open checks the chunk against its name, decrypts it and, with a
 * salt, checks the key, each fragment as it arrives, so the chunk_whole is
 * adopted as it is (chunk_whole_adopt), without the second pass
 * chunk_whole_make would make.  A chunk that l2_get_open rebuilt but
 * does not match its name or its key is reported (l2_report_bad deletes its
 * fragments); whatever went wrong, the read goes on to L3.
 */
#include "cache.h"
#include "l2_internal.h"

#include <errno.h>
#include <stdlib.h>

struct l2_layer {
	struct l2 *l2;
};

static int l2_layer_read(struct cache_layer *l, struct chunk_req *rq)
{
	struct l2_layer *st = l->state;
	struct cache *c = l->cache;
	struct buf_pool *bufs = cache_chunk_bufs(c);
	/* A whole-chunk read is decrypted straight into the reader's buffer. */
	bool direct = chunk_req_whole(rq);
	uint8_t *cipher = buf_pool_get(bufs), *plain = direct ? NULL : buf_pool_get(bufs);
	if (!cipher || (!direct && !plain)) {
		buf_pool_put(bufs, cipher);
		buf_pool_put(bufs, plain);
		return -ENOMEM;
	}
	struct l2_open op = {.key = rq->key, .plain = direct ? rq->buf : plain};
	op.salt = cache_salt(c, &op.salt_len);
	size_t len = 0;
	int r = l2_get_open(st->l2, rq->name, &op, cipher, &len);
	if (r == 0) {
		struct chunk_whole *w;
		r = chunk_whole_adopt(c, rq->name, rq->key, cipher, plain, len, CACHE_TIER_L2, &w);
		if (r == 0)
			return chunk_whole_serve(c, w, rq, direct) < 0 ? -EIO : 0;
	} else {
		buf_pool_put(bufs, cipher);
		buf_pool_put(bufs, plain);
	}
	if (r == -EBADMSG) {
		CACHE_COUNT(c, CACHE_TIER_L2, corrupt, 1);
		log_warn("L2 returned chunk %s with bytes that do not match its name or key; dropping its "
			 "fragments and reading the origin",
			 rq->name);
		l2_report_bad(st->l2, rq->name);
	} else if (r == -ENOENT) {
		CACHE_COUNT(c, CACHE_TIER_L2, misses, 1);
	} else {
		CACHE_COUNT(c, CACHE_TIER_L2, errors, 1);
	}
	r = cache_layer_next(l, rq);
	/* Read-through: what the origin gave goes into L2, off the read's
	 * critical path. */
	if (r == 0 && rq->whole && rq->whole->from == CACHE_TIER_L3)
		l2_put_async(st->l2, rq->name, rq->whole->cipher, rq->whole->len);
	return r;
}

static void l2_layer_close(struct cache_layer *l)
{
	free(l->state); /* the l2 client belongs to the cache */
}

static const struct cache_layer_ops l2_layer_ops = {
	.name = "l2",
	.read = l2_layer_read,
	.close = l2_layer_close,
};

int l2_layer_new(struct cache *c, struct l2 *l2, const struct cache_layer_ops **ops, void **state)
{
	(void)c;
	struct l2_layer *st = calloc(1, sizeof(*st));
	if (!st)
		return -ENOMEM;
	st->l2 = l2;
	*ops = &l2_layer_ops;
	*state = st;
	return 0;
}
