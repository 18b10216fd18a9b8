/* L2 reads: the name hash on a thread of its own (contract in
 * l2_internal.h).
 *
 * Why: an L2 hit is bound by the reading thread's own work, not by the
 * wire.  SHA-256 of the 512 KiB ciphertext (the name check) must run over
 * the fragments in order and is the largest part of that work; done on the
 * reading thread it competes with receiving and decrypting the other
 * fragments, so the hash of the last fragments starts only once they are in
 * and after the earlier ones are hashed.  With a hasher thread taking the
 * fragments in order as the reader offers them, the hash starts at the first
 * fragment and runs while the reader receives and decrypts the rest: the
 * read ends about one hash after its first fragment arrived.
 *
 * A read borrows an idle hasher for its duration, or hashes on its own
 * thread when every hasher is busy (many concurrent reads already keep the
 * cores busy, and waiting for a hasher would only add a queue).  A host with
 * one CPU gets no hashers.
 */
#include "l2_internal.h"

#include <errno.h>
#include <openssl/evp.h>
#include <string.h>
#include <unistd.h>

struct l2_hasher {
	pthread_t thread;
	bool started;
	pthread_mutex_t mu;
	pthread_cond_t cv; /* the hasher waits for fragments, the reader for done */
	bool stop;
	/* The borrowed job, all under |mu|: busy from l2_hash_begin to
	 * l2_hash_end; fragments 0..next-1 are in the hash. */
	bool busy, cancel, done, failed;
	EVP_MD_CTX *md;
	unsigned k, next;
	const uint8_t *data[L2_MAX_K];
	size_t len[L2_MAX_K];
	bool offered[L2_MAX_K];
};

static void *hasher_main(void *arg)
{
	struct l2_hasher *h = arg;
	pthread_mutex_lock(&h->mu);
	while (!h->stop) {
		if (h->busy && !h->done) {
			if (h->cancel || h->next == h->k) {
				h->done = true;
				pthread_cond_broadcast(&h->cv);
				continue;
			}
			if (h->offered[h->next]) {
				const uint8_t *p = h->data[h->next];
				size_t n = h->len[h->next];
				EVP_MD_CTX *md = h->md;
				/* The reader does not touch the hash or an offered
				 * fragment until done, so the lock can go. */
				pthread_mutex_unlock(&h->mu);
				bool ok = n == 0 || EVP_DigestUpdate(md, p, n) == 1;
				pthread_mutex_lock(&h->mu);
				h->next++;
				if (!ok) {
					h->failed = true;
					h->cancel = true;
				}
				continue;
			}
		}
		pthread_cond_wait(&h->cv, &h->mu);
	}
	pthread_mutex_unlock(&h->mu);
	return NULL;
}

int l2_hashers_start(struct l2 *l)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned n = cpus > 1 ? (unsigned)(cpus - 1) : 0;
	if (n > L2_HASHERS_MAX)
		n = L2_HASHERS_MAX;
	for (unsigned i = 0; i < n; i++) {
		struct l2_hasher *h = calloc(1, sizeof(*h));
		if (!h)
			return -ENOMEM;
		pthread_mutex_init(&h->mu, NULL);
		pthread_cond_init(&h->cv, NULL);
		l->hashers[l->n_hashers++] = h; /* from here on l2_hashers_stop frees it */
		int r = -pthread_create(&h->thread, NULL, hasher_main, h);
		if (r < 0) {
			log_err("l2: cannot start a hasher thread: %s", strerror(-r));
			return r;
		}
		h->started = true;
	}
	return 0;
}

void l2_hashers_stop(struct l2 *l)
{
	for (unsigned i = 0; i < l->n_hashers; i++) {
		struct l2_hasher *h = l->hashers[i];
		pthread_mutex_lock(&h->mu);
		h->stop = true;
		pthread_cond_broadcast(&h->cv);
		pthread_mutex_unlock(&h->mu);
		if (h->started)
			pthread_join(h->thread, NULL);
		pthread_mutex_destroy(&h->mu);
		pthread_cond_destroy(&h->cv);
		free(h);
	}
	l->n_hashers = 0;
}

struct l2_hasher *l2_hash_begin(struct l2 *l, EVP_MD_CTX *md, unsigned k)
{
	for (unsigned i = 0; i < l->n_hashers; i++) {
		struct l2_hasher *h = l->hashers[i];
		pthread_mutex_lock(&h->mu);
		bool idle = !h->busy && !h->stop;
		if (idle) {
			h->busy = true;
			h->cancel = h->done = h->failed = false;
			h->md = md;
			h->k = k;
			h->next = 0;
			memset(h->offered, 0, sizeof(h->offered));
		}
		pthread_mutex_unlock(&h->mu);
		if (idle)
			return h;
	}
	return NULL;
}

void l2_hash_offer(struct l2_hasher *h, unsigned i, const uint8_t *data, size_t len)
{
	pthread_mutex_lock(&h->mu);
	if (i < h->k && !h->offered[i]) {
		h->data[i] = data;
		h->len[i] = len;
		h->offered[i] = true;
		if (i == h->next)
			pthread_cond_broadcast(&h->cv);
	}
	pthread_mutex_unlock(&h->mu);
}

bool l2_hash_offered(struct l2_hasher *h, unsigned i)
{
	pthread_mutex_lock(&h->mu);
	bool offered = i < h->k && h->offered[i];
	pthread_mutex_unlock(&h->mu);
	return offered;
}

int l2_hash_end(struct l2_hasher *h, bool cancel)
{
	pthread_mutex_lock(&h->mu);
	/* Waiting for a fragment that will never be offered would hang the
	 * read: without every fragment this is a cancel. */
	bool complete = true;
	for (unsigned i = 0; i < h->k; i++)
		complete = complete && h->offered[i];
	if (cancel || !complete) {
		h->cancel = true;
		pthread_cond_broadcast(&h->cv);
	}
	while (!h->done)
		pthread_cond_wait(&h->cv, &h->mu);
	int r = h->failed || !complete ? -EIO : cancel ? -ECANCELED : 0;
	h->busy = false;
	h->md = NULL;
	pthread_mutex_unlock(&h->mu);
	return r;
}
