/* The single-flight layer of the read chain: one fetch per chunk, however
 * many readers want it at once.
 *
 * Below L1 a read always fetches a whole chunk (whole.c); this layer sits
 * between L1 and the tiers that fetch (L2, L3), so concurrent misses on one
 * chunk share one fetch and its one verification.
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
		rq->tier = w->from;
		rq->whole = w;
		return chunk_whole_copy(w, rq) < 0 ? -EIO : 0;
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
