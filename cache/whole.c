/* Whole chunks: below L1 a read always fetches a whole chunk, because the
 * L2 fleet and the origin store only deal in whole chunks.  Each fetched
 * chunk is verified once, in one pass (chunk_whole_make, which calls
 * image.h's chunk_open; the L2 read does that pass itself as fragments
 * arrive, and its bytes are adopted with chunk_whole_adopt), and handed up
 * the chain as a
 * refcounted chunk_whole; the tiers above never hash a whole chunk again.
 * A read that wants the whole chunk gets the plaintext straight into its
 * own buffer (chunk_req_whole), and the chunk_whole keeps only the
 * ciphertext: the others that want it decrypt their range from that
 * (chunk_whole_read), which costs less than copying 512 KiB for every
 * whole-chunk read.
 */
#include "cache.h"
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void chunk_whole_ref(struct chunk_whole *w)
{
	__atomic_fetch_add(&w->refs, 1, __ATOMIC_RELAXED);
}

/* Give back a whole's buffers: |plain| (may be NULL) to |pool|, |cipher|
 * to |pool| if |cipher_pooled|, else to free (the store malloc'd it). */
static void bufs_give_back(struct buf_pool *pool, uint8_t *cipher, bool cipher_pooled, uint8_t *plain)
{
	if (cipher_pooled)
		buf_pool_put(pool, cipher);
	else
		free(cipher);
	buf_pool_put(pool, plain);
}

void chunk_whole_unref(struct chunk_whole *w)
{
	if (!w || __atomic_sub_fetch(&w->refs, 1, __ATOMIC_ACQ_REL) != 0)
		return;
	bufs_give_back(w->pool, w->cipher, w->cipher_pooled, w->plain);
	free(w);
}

/* Wrap |cipher| (from |pool| if |cipher_pooled|, else malloc'd) and
 * |plain| (from |pool|); on failure both are given back. */
static int whole_new(const char *name, const uint8_t key[CHUNK_KEY_LEN], struct buf_pool *pool, uint8_t *cipher,
		     bool cipher_pooled, uint8_t *plain, size_t len, enum cache_tier from, struct chunk_whole **out)
{
	*out = NULL;
	struct chunk_whole *w = len == 0 || len > CHUNK_SIZE ? NULL : calloc(1, sizeof(*w));
	if (!w) {
		bufs_give_back(pool, cipher, cipher_pooled, plain);
		return len == 0 || len > CHUNK_SIZE ? -EBADMSG : -ENOMEM;
	}
	memcpy(w->name, name, CHUNK_NAME_HEX_LEN + 1);
	memcpy(w->key, key, CHUNK_KEY_LEN);
	w->len = len;
	w->cipher = cipher;
	w->plain = plain;
	w->pool = pool;
	w->cipher_pooled = cipher_pooled;
	w->from = from;
	w->refs = 1;
	*out = w;
	return 0;
}

int chunk_whole_adopt(struct cache *c, const char *name, const uint8_t key[CHUNK_KEY_LEN], uint8_t *cipher,
		      uint8_t *plain, size_t len, enum cache_tier from, struct chunk_whole **out)
{
	return whole_new(name, key, cache_chunk_bufs(c), cipher, true, plain, len, from, out);
}

int chunk_whole_make(struct cache *c, const char *name, const uint8_t key[CHUNK_KEY_LEN], uint8_t *cipher,
		     size_t len, enum cache_tier from, uint8_t *direct, struct chunk_whole **out)
{
	*out = NULL;
	if (len == 0 || len > CHUNK_SIZE) {
		free(cipher);
		return -EBADMSG;
	}
	struct buf_pool *pool = cache_chunk_bufs(c);
	uint8_t *plain = direct ? NULL : buf_pool_get(pool);
	if (!direct && !plain) {
		free(cipher);
		return -ENOMEM;
	}
	size_t salt_len;
	const uint8_t *salt = cache_salt(c, &salt_len);
	int r = chunk_open(name, key, salt, salt_len, cipher, len, direct ? direct : plain);
	if (r < 0) {
		free(cipher);
		buf_pool_put(pool, plain);
		return r;
	}
	return whole_new(name, key, pool, cipher, false, plain, len, from, out);
}

int chunk_whole_read(const struct chunk_whole *w, uint32_t off, uint8_t *dst, size_t n)
{
	if (w->plain) {
		memcpy(dst, w->plain + off, n);
		return 0;
	}
	int r = chunk_ctr_at(w->key, off, w->cipher + off, n, dst);
	if (r < 0)
		memset(dst, 0, n);
	return r;
}

int chunk_whole_copy(const struct chunk_whole *w, struct chunk_req *rq)
{
	if (!rq->buf || !rq->len)
		return 0;
	size_t have = rq->off < w->len ? w->len - rq->off : 0;
	size_t n = rq->len < have ? rq->len : have;
	int r = n ? chunk_whole_read(w, rq->off, rq->buf, n) : 0;
	memset(rq->buf + n, 0, rq->len - n);
	return r;
}

bool chunk_req_whole(const struct chunk_req *rq)
{
	return rq->buf && rq->off == 0 && rq->len == CHUNK_SIZE;
}

int chunk_whole_serve(struct cache *c, struct chunk_whole *w, struct chunk_req *rq, bool in_place)
{
	CACHE_COUNT(c, w->from, hits, 1);
	CACHE_COUNT(c, w->from, bytes, w->len);
	int r = 0;
	if (in_place)
		memset(rq->buf + w->len, 0, rq->len - w->len);
	else
		r = chunk_whole_copy(w, rq);
	rq->tier = w->from;
	rq->whole = w;
	return r;
}
