/* The whole-chunk half of the read chain: single flight, L2 and L3.
 *
 * Below L1 a read always fetches a whole chunk: the L2 fleet and the origin
 * store only deal in whole chunks.  Each fetched chunk is verified here,
 * once, in one pass (chunk_whole_make), and handed up as a refcounted
 * chunk_whole; the tiers above never hash a whole chunk again.
 *
 * The L1 write is off the reader's critical path.  The flight leader hands
 * the verified chunk to L1 (rq->upper_insert, l1.c), which only queues it:
 * the chunk_whole goes on L1's bounded insert queue and, from that moment,
 * L1 serves reads of it from the queued plaintext (it is verified; a read
 * of it counts as an L1 hit).  A background thread computes the per-4 KiB
 * digest table from the verified ciphertext, writes the file and, under
 * L1's lock, both publishes the index entry and takes the chunk off the
 * queue, so there is no moment when the chunk is in neither: a reader that
 * arrives after the flight has landed, before or after the write, finds it
 * in L1 and never starts a second fetch.  The upper_insert call happens
 * before the flight is released, so a follower that comes late (flight
 * done, -EAGAIN) also finds it there.  Only when the queue is full (the
 * insert is dropped and counted) or the write fails does a later reader
 * fetch again, as it would after an eviction.  cache_free waits for the
 * queue (l1_close).
 */
#include "cache.h"
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

/* ---- verified whole chunks ------------------------------------------------ */

void chunk_whole_ref(struct chunk_whole *w)
{
	__atomic_fetch_add(&w->refs, 1, __ATOMIC_RELAXED);
}

void chunk_whole_unref(struct chunk_whole *w)
{
	if (!w || __atomic_sub_fetch(&w->refs, 1, __ATOMIC_ACQ_REL) != 0)
		return;
	free(w->cipher);
	free(w->plain);
	free(w);
}

/* The critical path of a fetch from L2 or L3 does only what verification
 * needs, in one interleaved pass over the chunk (each piece is hashed,
 * decrypted and, with a salt, hashed again while it is in the CPU cache):
 *   - the name check, SHA-256 of the ciphertext (unless the tier did it:
 *     l2_get hashes fragments as they arrive, overlapped with the network);
 *   - the decryption, AES-256-CTR;
 *   - the key check, SHA-256(salt || plaintext), only when a salt is
 *     configured.  Hosts normally run without the salt (as Lambda's do): the
 *     name check already binds the bytes, and the key comes from a manifest
 *     the host trusts.
 * The per-4 KiB digest table L1 keeps is not computed here: L1 computes it
 * from the verified ciphertext in its background insert (l1.c). */
#define VERIFY_STEP (16u * 1024u)

int chunk_whole_make(struct cache *c, const char *name, const uint8_t key[CHUNK_KEY_LEN], uint8_t *cipher,
		     size_t len, bool name_checked, enum cache_tier from, struct chunk_whole **out)
{
	*out = NULL;
	if (len == 0 || len > CHUNK_SIZE) {
		free(cipher);
		return -EBADMSG;
	}
	struct chunk_whole *w = calloc(1, sizeof(*w));
	uint8_t *plain = malloc(len);
	if (!w || !plain) {
		free(w);
		free(plain);
		free(cipher);
		return -ENOMEM;
	}
	size_t salt_len;
	const uint8_t *salt = cache_salt(c, &salt_len);
	static const uint8_t iv[16] = {0};
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	EVP_MD_CTX *kmd = salt ? EVP_MD_CTX_new() : NULL;
	EVP_CIPHER_CTX *cx = EVP_CIPHER_CTX_new();
	int r = md && cx && (!salt || kmd) && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 &&
			EVP_EncryptInit_ex(cx, EVP_aes_256_ctr(), NULL, key, iv) == 1 &&
			(!salt || (EVP_DigestInit_ex(kmd, EVP_sha256(), NULL) == 1 &&
				   EVP_DigestUpdate(kmd, salt, salt_len) == 1))
		    ? 0
		    : -EIO;
	for (size_t o = 0; r == 0 && o < len; o += VERIFY_STEP) {
		size_t n = len - o < VERIFY_STEP ? len - o : VERIFY_STEP;
		int outl = 0;
		if ((!name_checked && EVP_DigestUpdate(md, cipher + o, n) != 1) ||
		    EVP_EncryptUpdate(cx, plain + o, &outl, cipher + o, (int)n) != 1 || (size_t)outl != n ||
		    (salt && EVP_DigestUpdate(kmd, plain + o, n) != 1))
			r = -EIO;
	}
	uint8_t digest[SHA256_LEN];
	unsigned dlen = 0;
	if (r == 0 && !name_checked && (EVP_DigestFinal_ex(md, digest, &dlen) != 1 || dlen != SHA256_LEN))
		r = -EIO;
	if (r == 0 && !name_checked) {
		char hex[SHA256_HEX_LEN + 1];
		hex_encode(digest, SHA256_LEN, hex);
		r = strcmp(hex, name) == 0 ? 0 : -EBADMSG;
	}
	if (r == 0 && salt) {
		if (EVP_DigestFinal_ex(kmd, digest, &dlen) != 1 || dlen != SHA256_LEN)
			r = -EIO;
		else if (memcmp(digest, key, CHUNK_KEY_LEN) != 0)
			r = -EBADMSG;
	}
	if (r == -EIO)
		log_err("SHA-256 or AES-256-CTR failed (OpenSSL); is libcrypto working?");
	EVP_MD_CTX_free(md);
	EVP_MD_CTX_free(kmd);
	EVP_CIPHER_CTX_free(cx);
	if (r < 0) {
		free(cipher);
		free(plain);
		free(w);
		return r;
	}
	memcpy(w->name, name, CHUNK_NAME_HEX_LEN + 1);
	memcpy(w->key, key, CHUNK_KEY_LEN);
	w->len = len;
	w->cipher = cipher;
	w->plain = plain;
	w->from = from;
	w->refs = 1;
	*out = w;
	return 0;
}

void chunk_whole_copy(const struct chunk_whole *w, struct chunk_req *rq)
{
	if (!rq->buf || !rq->len)
		return;
	size_t have = rq->off < w->len ? w->len - rq->off : 0;
	size_t n = rq->len < have ? rq->len : have;
	memcpy(rq->buf, w->plain + rq->off, n);
	memset(rq->buf + n, 0, rq->len - n);
}

/* ---- single flight ---------------------------------------------------------------- */

struct flight {
	char name[CHUNK_NAME_HEX_LEN + 1];
	struct flight *next;
	int refs;			/* under flight_state.lock */
	bool done;
	int err;			/* -EAGAIN: served by the upper tier, look there again */
	struct chunk_whole *whole;
};

struct flight_state {
	pthread_mutex_t lock;
	pthread_cond_t done;		/* broadcast when any flight lands */
	struct flight *flights;		/* in the air; few at a time, so a list */
	uint64_t shared;		/* atomic */
};

static int flight_read(struct cache_layer *l, struct chunk_req *rq)
{
	struct flight_state *fs = l->state;
	pthread_mutex_lock(&fs->lock);
	struct flight *f = fs->flights;
	while (f && strcmp(f->name, rq->name) != 0)
		f = f->next;
	if (f) {
		/* Follow the fetch already in the air. */
		f->refs++;
		__atomic_fetch_add(&fs->shared, 1, __ATOMIC_RELAXED);
		while (!f->done)
			pthread_cond_wait(&fs->done, &fs->lock);
		int err = f->err;
		struct chunk_whole *w = f->whole;
		if (w)
			chunk_whole_ref(w);
		bool last = --f->refs == 0;
		pthread_mutex_unlock(&fs->lock);
		if (last) {
			chunk_whole_unref(f->whole);
			free(f);
		}
		if (err == -EAGAIN && rq->upper_lookup && rq->upper_lookup(rq->upper_arg, rq) == 0)
			return 0;
		if (err == -EAGAIN) /* it left the upper tier again already: fetch ourselves */
			return cache_layer_next(l, rq);
		if (err < 0)
			return err;
		chunk_whole_copy(w, rq);
		rq->tier = w->from;
		rq->whole = w;
		return 0;
	}
	f = calloc(1, sizeof(*f));
	if (!f) {
		pthread_mutex_unlock(&fs->lock);
		return -ENOMEM;
	}
	memcpy(f->name, rq->name, CHUNK_NAME_HEX_LEN + 1);
	f->refs = 1;
	f->next = fs->flights;
	fs->flights = f;
	pthread_mutex_unlock(&fs->lock);

	/* The leader.  An earlier leader may have put the chunk in the upper
	 * tier between our miss there and our arrival here. */
	int r;
	if (rq->upper_lookup && rq->upper_lookup(rq->upper_arg, rq) == 0) {
		r = -EAGAIN;
	} else {
		r = cache_layer_next(l, rq);
		if (r == 0 && rq->whole && rq->upper_insert)
			rq->upper_insert(rq->upper_arg, rq, rq->whole);
	}

	pthread_mutex_lock(&fs->lock);
	for (struct flight **p = &fs->flights; *p; p = &(*p)->next)
		if (*p == f) {
			*p = f->next;
			break;
		}
	f->done = true;
	f->err = r;
	if (r == 0 && rq->whole) {
		f->whole = rq->whole;
		chunk_whole_ref(f->whole);
	} else if (r == 0) {
		f->err = -EAGAIN; /* served without a whole chunk: followers look upstairs */
	}
	bool last = --f->refs == 0;
	pthread_cond_broadcast(&fs->done);
	pthread_mutex_unlock(&fs->lock);
	if (last) {
		chunk_whole_unref(f->whole);
		free(f);
	}
	return r == -EAGAIN ? 0 : r;
}

static void flight_close(struct cache_layer *l)
{
	struct flight_state *fs = l->state;
	pthread_mutex_destroy(&fs->lock);
	pthread_cond_destroy(&fs->done);
	free(fs);
}

static const struct cache_layer_ops flight_ops = {
	.name = "flight",
	.read = flight_read,
	.close = flight_close,
};

int flight_layer_new(struct cache *c, const struct cache_layer_ops **ops, void **state)
{
	(void)c;
	struct flight_state *fs = calloc(1, sizeof(*fs));
	if (!fs)
		return -ENOMEM;
	pthread_mutex_init(&fs->lock, NULL);
	pthread_cond_init(&fs->done, NULL);
	*ops = &flight_ops;
	*state = fs;
	return 0;
}

uint64_t flight_layer_shared(void *state)
{
	struct flight_state *fs = state;
	return __atomic_load_n(&fs->shared, __ATOMIC_RELAXED);
}

/* ---- L2: the memcached fleet ------------------------------------------------------ */

struct l2_layer {
	struct l2 *l2;
};

static int l2_layer_read(struct cache_layer *l, struct chunk_req *rq)
{
	struct l2_layer *st = l->state;
	struct cache *c = l->cache;
	uint8_t *cipher = malloc(CHUNK_SIZE);
	if (!cipher)
		return -ENOMEM;
	size_t len = 0;
	int r = l2_get(st->l2, rq->name, cipher, &len);
	if (r == 0) {
		struct chunk_whole *w;
		r = chunk_whole_make(c, rq->name, rq->key, cipher, len, true, CACHE_TIER_L2, &w);
		if (r == 0) {
			CACHE_COUNT(c, CACHE_TIER_L2, hits, 1);
			CACHE_COUNT(c, CACHE_TIER_L2, bytes, w->len);
			chunk_whole_copy(w, rq);
			rq->tier = CACHE_TIER_L2;
			rq->whole = w;
			return 0;
		}
	} else {
		free(cipher);
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

/* ---- L3: the origin store --------------------------------------------------------- */

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
	r = chunk_whole_make(c, rq->name, rq->key, cipher, len, false, CACHE_TIER_L3, &w);
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
	CACHE_COUNT(c, CACHE_TIER_L3, hits, 1);
	CACHE_COUNT(c, CACHE_TIER_L3, bytes, w->len);
	chunk_whole_copy(w, rq);
	rq->tier = CACHE_TIER_L3;
	rq->whole = w;
	return 0;
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
