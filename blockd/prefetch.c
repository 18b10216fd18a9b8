/* Startup-trace prefetch.
 *
 * The first attach of an image whose origin holds no trace records, for
 * trace_seconds, the order in which readers first touch each stored chunk,
 * then stores it at traces/<manifest digest> in the origin:
 *
 *   {"format": "kindling-trace-1", "manifest": "<digest>", "chunk_size": 524288,
 *    "seconds": 10.0, "chunks": [index, index, ...]}
 *
 * Alongside, it records the 4 KiB blocks readers read, as runs in first-read
 * order ("blocks"), which `chunkify import --layout-trace` maps back to the
 * files a start reads so a re-import can place them together.
 *
 * Later attaches load that trace and prefetch its chunks in order, through
 * cache_prefetch, with at most prefetch_parallel fetches in flight and at
 * most prefetch_bytes_per_s, skipping chunks a reader already touched.  A
 * prefetched chunk a reader later reads counts as used; accuracy is used
 * over prefetched.  Everything here is best effort: a missing origin or a
 * bad trace only logs, the image is served either way.
 *
 * Prefetch must never slow the reader it serves, so it yields:
 *   - it starts no fetch while a demand read of a chunk that is not yet
 *     resident is in flight (blockd_demand_wait_idle); the fetches already
 *     under way finish, and the next starts once the reader's have landed;
 *   - it keeps at most half the origin's parallel fetches (blockd_new), so
 *     a demand fetch never queues behind prefetches for an origin slot;
 *   - when a reader first reads a chunk the trace lists further on than
 *     prefetch has got, prefetch is behind the reader: it skips to just
 *     past that entry instead of fetching what the reader went past.
 *
 * A loaded trace also steers readahead (blockd.c): while it is being
 * prefetched, and for trace_seconds after attach, readahead skips the
 * chunks it does not list (trace_allows_readahead), since the trace already
 * says what the start reads.
 */
#include "internal.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TRACE_MAX_BYTES IMAGE_TRACE_MAX_BYTES

enum trace_state { TRACE_OFF, TRACE_NONE, TRACE_RECORDING, TRACE_STORED, TRACE_PREFETCHING, TRACE_DONE };

static const char *const state_names[] = { "off", "none", "recording", "stored", "prefetching", "prefetched" };

/* A trace entry by chunk index, for finding where a reader is in the plan. */
struct plan_ent {
	uint64_t index;
	size_t pos;			/* in plan[] */
};

struct blockd_trace {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	_Atomic int state;		/* enum trace_state; peeked at without the lock */
	bool stop;
	_Atomic bool stopping;		/* |stop| for waits under other locks (demand) */
	double record_until;
	uint64_t *rec;			/* recording */
	size_t n_rec, cap_rec;
	uint8_t *block_seen;		/* recording: a bit per image block read */
	struct image_trace_extent *ext;	/* recording: block runs, first-read order */
	size_t n_ext, cap_ext;
	uint64_t *plan;			/* loaded trace */
	size_t n_plan, cursor;
	struct plan_ent *by_index;	/* the plan sorted by chunk index */
	double next_send;		/* bandwidth limit: earliest start of the next fetch */
	pthread_t thread;
	bool has_thread;
	pthread_t *workers;
	size_t n_workers;
};

int trace_parse(const uint8_t *buf, size_t len, uint64_t n_indexes, uint64_t **out, size_t *out_n)
{
	return image_trace_parse(buf, len, n_indexes, out, out_n);
}

static void trace_key(const struct blockd_image *img, char *key, size_t cap)
{
	image_trace_key(img->digest, key, cap);
}

/* Store the recording (once).  Called without t->lock. */
static void store_recording(struct blockd_image *img)
{
	struct blockd_trace *t = img->trace;
	struct blockd *b = img->b;
	pthread_mutex_lock(&t->lock);
	if (t->state != TRACE_RECORDING) {
		pthread_mutex_unlock(&t->lock);
		return;
	}
	t->state = TRACE_STORED; /* no more appends */
	size_t n = t->n_rec;
	char *s = NULL;
	int er = n ? image_trace_encode_blocks(img->digest, b->cfg.trace_seconds, t->rec, n, t->ext, t->n_ext, &s) : 0;
	pthread_mutex_unlock(&t->lock);
	if (er < 0)
		return;
	if (n == 0) {
		/* Nothing was read: an empty trace would only stop the next
		 * attach from recording a useful one. */
		log_info("image %s: nothing read during the trace window; no trace stored", img->name);
		return;
	}
	char key[128];
	trace_key(img, key, sizeof(key));
	pthread_mutex_lock(&b->store_lock);
	int r = store_put(b->store, key, s, strlen(s));
	pthread_mutex_unlock(&b->store_lock);
	free(s);
	if (r < 0)
		log_warn("image %s: cannot store its startup trace at %s in %s: %s (the next attach records again)",
			 img->name, key, store_describe(b->store), strerror(-r));
	else
		log_info("image %s: stored a startup trace of %zu chunks at %s", img->name, n, key);
}

static int plan_ent_cmp(const void *a, const void *b)
{
	uint64_t x = ((const struct plan_ent *)a)->index, y = ((const struct plan_ent *)b)->index;
	return x < y ? -1 : x > y;
}

/* A reader read |index| for the first time while prefetching: if the plan
 * lists it at or past the cursor, the reader is ahead of the prefetch, which
 * skips to just past it.  Caller holds t->lock. */
static void reader_passed(struct blockd_image *img, struct blockd_trace *t, uint64_t index)
{
	struct plan_ent key = { .index = index };
	const struct plan_ent *e = t->by_index ? bsearch(&key, t->by_index, t->n_plan, sizeof(key), plan_ent_cmp) : NULL;
	if (!e || e->pos < t->cursor)
		return;
	uint64_t skipped = 0;
	for (size_t i = t->cursor; i < e->pos; i++)
		if (!(atomic_load(&img->chunk_state[t->plan[i]]) & (CHUNK_READ | CHUNK_RESIDENT | CHUNK_QUEUED)))
			skipped++;
	t->cursor = e->pos + 1;
	if (skipped) {
		atomic_fetch_add(&img->c.prefetch_skipped, skipped);
		log_debug("image %s: a reader got to chunk %llu (trace entry %zu) before prefetch; skipping %llu "
			  "entries behind it",
			  img->name, (unsigned long long)index, e->pos, (unsigned long long)skipped);
	}
}

void trace_note_first_read(struct blockd_image *img, uint64_t index)
{
	struct blockd_trace *t = img->trace;
	int st = t ? atomic_load(&t->state) : TRACE_OFF;
	if (st == TRACE_PREFETCHING) { /* racy peek; rechecked under the lock */
		pthread_mutex_lock(&t->lock);
		if (t->state == TRACE_PREFETCHING)
			reader_passed(img, t, index);
		pthread_mutex_unlock(&t->lock);
		return;
	}
	if (st != TRACE_RECORDING)
		return;
	pthread_mutex_lock(&t->lock);
	if (t->state == TRACE_RECORDING && now_seconds() < t->record_until) {
		if (t->n_rec == t->cap_rec) {
			size_t cap = t->cap_rec ? t->cap_rec * 2 : 256;
			uint64_t *p = realloc(t->rec, cap * sizeof(*p));
			if (p) {
				t->rec = p;
				t->cap_rec = cap;
			}
		}
		if (t->n_rec < t->cap_rec)
			t->rec[t->n_rec++] = index;
		atomic_store(&img->c.trace_len, t->n_rec);
	}
	pthread_mutex_unlock(&t->lock);
}

/* Append block |blk| to the recorded runs (caller holds t->lock): it
 * extends the last run when it follows it, else starts a new one while
 * there is room. */
static void note_block(struct blockd_trace *t, uint64_t blk)
{
	if (t->n_ext && t->ext[t->n_ext - 1].block + t->ext[t->n_ext - 1].count == blk) {
		t->ext[t->n_ext - 1].count++;
		return;
	}
	if (t->n_ext == t->cap_ext) {
		if (t->cap_ext >= IMAGE_TRACE_MAX_EXTENTS)
			return;
		size_t cap = t->cap_ext ? t->cap_ext * 2 : 256;
		if (cap > IMAGE_TRACE_MAX_EXTENTS)
			cap = IMAGE_TRACE_MAX_EXTENTS;
		struct image_trace_extent *p = realloc(t->ext, cap * sizeof(*p));
		if (!p)
			return;
		t->ext = p;
		t->cap_ext = cap;
	}
	t->ext[t->n_ext++] = (struct image_trace_extent){ .block = blk, .count = 1 };
}

void trace_note_read_range(struct blockd_image *img, uint64_t off, uint64_t len)
{
	struct blockd_trace *t = img->trace;
	if (!t || !len || atomic_load(&t->state) != TRACE_RECORDING) /* racy peek; rechecked under the lock */
		return;
	pthread_mutex_lock(&t->lock);
	if (t->state == TRACE_RECORDING && t->block_seen && now_seconds() < t->record_until) {
		uint64_t last = (off + len - 1) / IMAGE_TRACE_BLOCK_SIZE;
		for (uint64_t blk = off / IMAGE_TRACE_BLOCK_SIZE; blk <= last; blk++) {
			uint8_t bit = (uint8_t)(1u << (blk % 8));
			if (t->block_seen[blk / 8] & bit)
				continue;
			t->block_seen[blk / 8] |= bit;
			note_block(t, blk);
		}
	}
	pthread_mutex_unlock(&t->lock);
}

bool trace_allows_readahead(struct blockd_image *img, uint64_t index)
{
	struct blockd_trace *t = img->trace;
	int st = t ? atomic_load(&t->state) : TRACE_OFF;
	/* by_index is complete before the state becomes PREFETCHING and stays
	 * until trace_free, so it is read without the lock. */
	if (st != TRACE_PREFETCHING && st != TRACE_DONE)
		return true;
	double window = img->b->cfg.trace_seconds > 0 ? img->b->cfg.trace_seconds : 10.0;
	if (st == TRACE_DONE && now_seconds() >= img->attached_at + window)
		return true;
	struct plan_ent key = { .index = index };
	return t->by_index && bsearch(&key, t->by_index, t->n_plan, sizeof(key), plan_ent_cmp);
}

/* Wait until |deadline| (monotonic seconds) or stop; true if stopped. */
static bool wait_until(struct blockd_trace *t, double deadline)
{
	pthread_mutex_lock(&t->lock);
	while (!t->stop) {
		double left = deadline - now_seconds();
		if (left <= 0)
			break;
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		double d = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9 + left;
		ts.tv_sec = (time_t)d;
		ts.tv_nsec = (long)((d - (double)ts.tv_sec) * 1e9);
		pthread_cond_timedwait(&t->cond, &t->lock, &ts);
	}
	bool stopped = t->stop;
	pthread_mutex_unlock(&t->lock);
	return stopped;
}

static void *prefetch_worker(void *arg)
{
	struct blockd_image *img = arg;
	struct blockd_trace *t = img->trace;
	uint64_t bps = img->b->cfg.prefetch_bytes_per_s;
	for (;;) {
		/* Readers first: no new fetch while one of theirs is in flight. */
		if (blockd_demand_wait_idle(img->b, &t->stopping, &img->c.prefetch_yielded))
			return NULL;
		pthread_mutex_lock(&t->lock);
		if (t->stop || t->cursor >= t->n_plan) {
			pthread_mutex_unlock(&t->lock);
			return NULL;
		}
		uint64_t idx = t->plan[t->cursor++];
		double start = now_seconds();
		if (bps) { /* a token bucket of one chunk: start times spaced CHUNK_SIZE/bps apart */
			if (t->next_send > start)
				start = t->next_send;
			t->next_send = start + (double)CHUNK_SIZE / (double)bps;
		}
		pthread_mutex_unlock(&t->lock);
		if (bps && wait_until(t, start))
			return NULL;
		/* Skip what a reader or readahead got to first: prefetch runs
		 * ahead of the reader, never behind it. */
		uint8_t old = atomic_fetch_or(&img->chunk_state[idx], CHUNK_PREFETCHED | CHUNK_QUEUED);
		if (old & (CHUNK_READ | CHUNK_RESIDENT | CHUNK_QUEUED)) {
			if (!(old & CHUNK_PREFETCHED))
				atomic_fetch_and(&img->chunk_state[idx], (uint8_t)~CHUNK_PREFETCHED);
			continue;
		}
		atomic_fetch_add(&img->c.prefetch_issued, 1);
		blockd_fetch_chunk(img, idx, true);
	}
}

static void *trace_main(void *arg)
{
	struct blockd_image *img = arg;
	struct blockd_trace *t = img->trace;
	if (t->state == TRACE_RECORDING) {
		if (!wait_until(t, t->record_until))
			store_recording(img);
		return NULL;
	}
	/* Prefetching: a few workers pull from the plan in order (blockd_new
	 * set the count, at most half the origin's parallel fetches). */
	unsigned par = img->b->cfg.prefetch_parallel ? img->b->cfg.prefetch_parallel : 1;
	t->workers = calloc(par, sizeof(*t->workers));
	for (unsigned i = 0; t->workers && i < par; i++)
		if (pthread_create(&t->workers[t->n_workers], NULL, prefetch_worker, img) == 0)
			t->n_workers++;
	if (t->n_workers == 0)
		prefetch_worker(img);
	for (size_t i = 0; i < t->n_workers; i++)
		pthread_join(t->workers[i], NULL);
	pthread_mutex_lock(&t->lock);
	t->state = TRACE_DONE;
	pthread_mutex_unlock(&t->lock);
	log_info("image %s: trace prefetch done: %llu chunks fetched of %zu in the trace", img->name,
		 (unsigned long long)atomic_load(&img->c.prefetch_issued), t->n_plan);
	return NULL;
}

int trace_init(struct blockd_image *img)
{
	struct blockd_trace *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	pthread_mutex_init(&t->lock, NULL);
	pthread_cond_init(&t->cond, NULL);
	t->state = TRACE_OFF;
	img->trace = t;
	return 0;
}

int trace_attach(struct blockd_image *img)
{
	struct blockd *b = img->b;
	struct blockd_trace *t = img->trace;
	if (!b->cfg.prefetch)
		return 0;
	char key[128];
	trace_key(img, key, sizeof(key));
	uint8_t *buf = NULL;
	size_t len = 0;
	pthread_mutex_lock(&b->store_lock);
	int r = store_get(b->store, key, TRACE_MAX_BYTES, &buf, &len);
	pthread_mutex_unlock(&b->store_lock);
	if (r == -ENOENT) {
		/* The block bitmap is best effort: without it only "blocks" is
		 * left out of the trace. */
		uint64_t n_blocks = img->m.image_size / IMAGE_TRACE_BLOCK_SIZE;
		t->block_seen = calloc((size_t)(n_blocks / 8 + 1), 1);
		t->state = TRACE_RECORDING;
		t->record_until = now_seconds() + (b->cfg.trace_seconds > 0 ? b->cfg.trace_seconds : 10.0);
		log_info("image %s: no startup trace yet; recording one", img->name);
	} else if (r < 0) {
		t->state = TRACE_NONE;
		log_warn("image %s: cannot read its startup trace %s: %s; no prefetch this time", img->name, key,
			 strerror(-r));
		return r;
	} else {
		r = trace_parse(buf, len, img->n_indexes, &t->plan, &t->n_plan);
		free(buf);
		if (r < 0) {
			t->state = TRACE_NONE;
			log_warn("image %s: ignoring the bad startup trace %s", img->name, key);
			return r;
		}
		t->by_index = malloc((t->n_plan ? t->n_plan : 1) * sizeof(*t->by_index));
		if (!t->by_index) {
			t->state = TRACE_NONE;
			return -ENOMEM;
		}
		for (size_t i = 0; i < t->n_plan; i++)
			t->by_index[i] = (struct plan_ent){ .index = t->plan[i], .pos = i };
		qsort(t->by_index, t->n_plan, sizeof(*t->by_index), plan_ent_cmp);
		t->state = TRACE_PREFETCHING;
		atomic_store(&img->c.trace_len, t->n_plan);
		log_info("image %s: prefetching %zu chunks from its startup trace", img->name, t->n_plan);
	}
	/* No reference for the thread: trace_detach joins it before the table
	 * drops the image's reference. */
	int e = pthread_create(&t->thread, NULL, trace_main, img);
	if (e) {
		t->state = TRACE_NONE;
		log_warn("image %s: cannot start the trace thread: %s", img->name, strerror(e));
		return -e;
	}
	t->has_thread = true;
	return 0;
}

void trace_detach(struct blockd_image *img)
{
	struct blockd_trace *t = img->trace;
	if (!t)
		return;
	pthread_mutex_lock(&t->lock);
	t->stop = true;
	atomic_store(&t->stopping, true);
	pthread_cond_broadcast(&t->cond);
	pthread_mutex_unlock(&t->lock);
	blockd_demand_wake(img->b); /* workers waiting for readers to finish */
	if (t->has_thread) {
		pthread_join(t->thread, NULL);
		t->has_thread = false;
	}
	/* A detach inside the window stores what was recorded so far. */
	store_recording(img);
}

void trace_free(struct blockd_trace *t)
{
	if (!t)
		return;
	free(t->rec);
	free(t->block_seen);
	free(t->ext);
	free(t->plan);
	free(t->by_index);
	free(t->workers);
	pthread_cond_destroy(&t->cond);
	pthread_mutex_destroy(&t->lock);
	free(t);
}

void trace_stats(struct blockd_image *img, void *json_obj)
{
	json_t *o = json_obj;
	struct blockd_trace *t = img->trace;
	struct blockd_counters *c = &img->c;
	json_t *p = json_object();
	if (!p)
		return;
	uint64_t issued = atomic_load(&c->prefetch_issued), used = atomic_load(&c->prefetch_used);
	int st = t ? atomic_load(&t->state) : TRACE_OFF;
	json_object_set_new(p, "enabled", json_boolean(img->b->cfg.prefetch));
	json_object_set_new(p, "trace", json_string(state_names[st]));
	json_object_set_new(p, "trace_chunks", json_integer((json_int_t)atomic_load(&c->trace_len)));
	json_object_set_new(p, "prefetched", json_integer((json_int_t)issued));
	json_object_set_new(p, "fetched", json_integer((json_int_t)atomic_load(&c->prefetch_fetched)));
	json_object_set_new(p, "used", json_integer((json_int_t)used));
	json_object_set_new(p, "errors", json_integer((json_int_t)atomic_load(&c->prefetch_errors)));
	json_object_set_new(p, "yielded", json_integer((json_int_t)atomic_load(&c->prefetch_yielded)));
	json_object_set_new(p, "skipped", json_integer((json_int_t)atomic_load(&c->prefetch_skipped)));
	json_object_set_new(p, "accuracy", json_real(issued ? (double)used / (double)issued : 0.0));
	json_object_set_new(o, "prefetch", p);
}
