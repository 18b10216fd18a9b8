/* Trace prefetch yields to the reader it serves (blockd/prefetch.c).
 *
 * Checked by the order of events, never by time: a gate layer put in above
 * the origin (L3) of blockd's cache holds every origin fetch until the test
 * lets it through, and logs each fetch's arrival and completion.
 *   1. While a demand read of a chunk is in flight, prefetch starts no
 *      fetch: the prefetches already under way finish, the workers yield
 *      (prefetch.yielded), and the next prefetch reaches the origin only
 *      after the demand read completed.
 *   2. A reader that reads a chunk the trace lists further on than prefetch
 *      has got makes prefetch skip the entries behind it (prefetch.skipped):
 *      they never reach the origin.
 *   3. Prefetch keeps at most half the origin's parallel fetches.
 *   4. An attach without a stored trace records one whose "blocks" lists
 *      the 4 KiB blocks read, each once, as runs in first-read order.
 * The image: 24 stored chunks of random bytes; the trace lists chunks 17
 * down to 2.  Waits are bounded (a hang fails the test instead of hanging
 * it) and never asserted on. */
#include "blockd/internal.h"
#undef LOG_COMPONENT
#include "cache/internal.h"
#include "tests/check.h"
#include "tests/unit/blockd_test_image.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define N_INDEXES 24
#define N_PLAN 16
#define DEMAND_CHUNK 20 /* not in the trace */
#define WAIT_LIMIT_S 60.0

static uint8_t *plain;
static char names[N_INDEXES][CHUNK_NAME_HEX_LEN + 1];
static uint64_t plan[N_PLAN];

/* ---- the gate: an origin that lets a fetch through only when told ---------------------------------------------- */

#define MAX_EVENTS 512
struct gate_event {
	char name[CHUNK_NAME_HEX_LEN + 1];
	bool done; /* false: arrived at the origin; true: came back from it */
};

struct gate {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool open_all;
	bool released[N_INDEXES];
	struct gate_event ev[MAX_EVENTS];
	size_t n_ev;
	bool timed_out;
};

static int index_of(const char *name)
{
	for (int i = 0; i < N_INDEXES; i++)
		if (strcmp(names[i], name) == 0)
			return i;
	return -1;
}

static void gate_log(struct gate *g, const char *name, bool done)
{
	if (g->n_ev < MAX_EVENTS) {
		memcpy(g->ev[g->n_ev].name, name, CHUNK_NAME_HEX_LEN + 1);
		g->ev[g->n_ev].done = done;
		g->n_ev++;
	}
	pthread_cond_broadcast(&g->cond);
}

static int gate_read(struct cache_layer *l, struct chunk_req *rq)
{
	struct gate *g = l->state;
	int idx = index_of(rq->name);
	pthread_mutex_lock(&g->lock);
	gate_log(g, rq->name, false);
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += (time_t)WAIT_LIMIT_S;
	while (!g->open_all && !(idx >= 0 && g->released[idx]))
		if (pthread_cond_timedwait(&g->cond, &g->lock, &ts) == ETIMEDOUT) {
			g->timed_out = true; /* a hang guard: the test fails, it does not hang */
			break;
		}
	pthread_mutex_unlock(&g->lock);
	int r = cache_layer_next(l, rq);
	pthread_mutex_lock(&g->lock);
	gate_log(g, rq->name, true);
	pthread_mutex_unlock(&g->lock);
	return r;
}

static const struct cache_layer_ops gate_ops = { .name = "gate", .read = gate_read };

static void gate_reset(struct gate *g)
{
	pthread_mutex_lock(&g->lock);
	g->open_all = false;
	memset(g->released, 0, sizeof(g->released));
	g->n_ev = 0;
	pthread_mutex_unlock(&g->lock);
}

static void gate_release(struct gate *g, int idx)
{
	pthread_mutex_lock(&g->lock);
	g->released[idx] = true;
	pthread_cond_broadcast(&g->cond);
	pthread_mutex_unlock(&g->lock);
}

static void gate_open_all(struct gate *g)
{
	pthread_mutex_lock(&g->lock);
	g->open_all = true;
	pthread_cond_broadcast(&g->cond);
	pthread_mutex_unlock(&g->lock);
}

/* Position in the log of the first event for chunk |idx| (arrival or
 * completion), or -1. */
static long event_pos(struct gate *g, int idx, bool done)
{
	long pos = -1;
	pthread_mutex_lock(&g->lock);
	for (size_t i = 0; i < g->n_ev && pos < 0; i++)
		if (g->ev[i].done == done && index_of(g->ev[i].name) == idx)
			pos = (long)i;
	pthread_mutex_unlock(&g->lock);
	return pos;
}

static size_t arrivals(struct gate *g)
{
	size_t n = 0;
	pthread_mutex_lock(&g->lock);
	for (size_t i = 0; i < g->n_ev; i++)
		n += !g->ev[i].done;
	pthread_mutex_unlock(&g->lock);
	return n;
}

/* ---- the image and its trace ---------------------------------------------------------------------------------- */

/* The image (every chunk stored) and its startup trace, as a first attach
 * would have stored it. */
static int make_image(struct store *st, const struct kindling_env *env, char digest[SHA256_HEX_LEN + 1])
{
	int r = test_image_make(st, env, plain, N_INDEXES, NULL, names, digest);
	if (r < 0)
		return r;
	char key[128];
	json_t *arr = json_array();
	for (size_t i = 0; arr && i < N_PLAN; i++)
		json_array_append_new(arr, json_integer((json_int_t)plan[i]));
	json_t *o = arr ? json_pack("{s:s, s:s, s:i, s:f, s:o}", "format", "kindling-trace-1", "manifest", digest,
				    "chunk_size", (json_int_t)CHUNK_SIZE, "seconds", 10.0, "chunks", arr)
			: NULL;
	char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	if (!s)
		return -ENOMEM;
	snprintf(key, sizeof(key), "traces/%s", digest);
	r = store_put(st, key, s, strlen(s));
	free(s);
	return r;
}

/* ---- helpers ------------------------------------------------------------------------------------------------- */

static json_t *prefetch_stats(struct blockd_image *img)
{
	char *s = blockd_image_stats_json(img);
	json_t *j = s ? json_loads(s, 0, NULL) : NULL;
	free(s);
	json_t *p = json_incref(json_object_get(j, "prefetch"));
	json_decref(j);
	return p;
}

/* A prefetch counter from stats.json, or -1 if it is missing. */
static long long pf_int(struct blockd_image *img, const char *field)
{
	json_t *p = prefetch_stats(img);
	json_t *v = json_object_get(p, field);
	long long n = json_is_integer(v) ? (long long)json_integer_value(v) : -1;
	json_decref(p);
	return n;
}

static bool pf_state_is(struct blockd_image *img, const char *state)
{
	json_t *p = prefetch_stats(img);
	const char *s = json_string_value(json_object_get(p, "trace"));
	bool eq = s && strcmp(s, state) == 0;
	json_decref(p);
	return eq;
}

struct demand {
	struct blockd_image *img;
	uint64_t index;
	int r;
	bool same;
	pthread_t th;
};

static void *demand_main(void *arg)
{
	struct demand *d = arg;
	uint8_t buf[4096];
	uint64_t off = d->index * CHUNK_SIZE + 8192;
	d->r = blockd_image_read(d->img, off, buf, sizeof(buf));
	d->same = d->r == 0 && memcmp(buf, plain + off, sizeof(buf)) == 0;
	return NULL;
}

static bool arrived(struct gate *g, int idx) { return event_pos(g, idx, false) >= 0; }

/* Attach with the gate closed: two prefetch workers send the first two trace
 * entries to the origin, where they wait.  NULL if the attach failed. */
static struct blockd_image *attach_prefetching(struct blockd *b, struct gate *g)
{
	gate_reset(g);
	struct blockd_image *img = NULL;
	CHECK(blockd_attach(b, "unit:1", &img) == 0);
	if (!img)
		return NULL;
	WAIT_FOR(arrivals(g) >= 2);
	CHECK(arrivals(g) == 2 && arrived(g, (int)plan[0]) && arrived(g, (int)plan[1]));
	return img;
}

/* ---- 1. no prefetch starts while a demand read is in flight -------------------------------------------------------- */

static void test_yield(struct blockd *b, struct gate *g)
{
	struct blockd_image *img = attach_prefetching(b, g);
	if (!img)
		return;

	/* A reader asks for a chunk the trace does not list. */
	struct demand d = { .img = img, .index = DEMAND_CHUNK };
	CHECK(pthread_create(&d.th, NULL, demand_main, &d) == 0);
	WAIT_FOR(arrived(g, DEMAND_CHUNK));
	CHECK(arrived(g, DEMAND_CHUNK));

	/* The two prefetches land; with the reader's fetch in flight each worker
	 * yields instead of sending the next trace entry to the origin. */
	gate_release(g, (int)plan[0]);
	gate_release(g, (int)plan[1]);
	WAIT_FOR((pf_int(img, "yielded") > 0 ? pf_int(img, "yielded") : 0) + (long long)arrivals(g) - 3 >= 2);
	CHECK(pf_int(img, "yielded") == 2);
	CHECK(arrivals(g) == 3);
	for (int i = 2; i < N_PLAN; i++)
		CHECK(!arrived(g, (int)plan[i]));

	/* The reader's fetch completes, then prefetch goes on and drains. */
	gate_release(g, DEMAND_CHUNK);
	pthread_join(d.th, NULL);
	CHECK(d.r == 0 && d.same);
	gate_open_all(g);
	WAIT_FOR(pf_state_is(img, "prefetched"));
	CHECK(pf_state_is(img, "prefetched"));
	long demand_done = event_pos(g, DEMAND_CHUNK, true);
	CHECK(demand_done >= 0);
	for (int i = 2; i < N_PLAN; i++) {
		long a = event_pos(g, (int)plan[i], false);
		CHECK(a > demand_done);
	}
	CHECK(pf_int(img, "prefetched") == N_PLAN);
	CHECK(pf_int(img, "skipped") == 0);
	CHECK(blockd_detach(b, "unit:1") == 0);
}

/* ---- 2. a reader ahead of prefetch: prefetch skips what it went past ----------------------------------------------- */

static void test_behind(struct blockd *b, struct gate *g)
{
	struct blockd_image *img = attach_prefetching(b, g);
	if (!img)
		return;

	/* The reader reads trace entry 8 while prefetch is still at 0 and 1. */
	struct demand d = { .img = img, .index = plan[8] };
	CHECK(pthread_create(&d.th, NULL, demand_main, &d) == 0);
	WAIT_FOR(arrived(g, (int)plan[8]));
	gate_release(g, (int)plan[8]);
	pthread_join(d.th, NULL);
	CHECK(d.r == 0 && d.same);

	gate_open_all(g);
	WAIT_FOR(pf_state_is(img, "prefetched"));
	CHECK(pf_state_is(img, "prefetched"));
	/* Entries 2..7 are behind the reader: never fetched.  9..15 are ahead. */
	for (int i = 2; i < 8; i++)
		CHECK(!arrived(g, (int)plan[i]));
	for (int i = 9; i < N_PLAN; i++)
		CHECK(arrived(g, (int)plan[i]));
	CHECK(pf_int(img, "skipped") == 6);
	CHECK(pf_int(img, "prefetched") == 2 + (N_PLAN - 9));
	CHECK(blockd_detach(b, "unit:1") == 0);
}

/* An attach with no stored trace records one: besides the chunks, the 4 KiB
 * blocks readers read, each once, as runs in first-read order (a block that
 * follows the last run extends it), stored at detach. */
static void test_block_runs(const char *store_uri, const char *digest)
{
	char key[128];
	snprintf(key, sizeof(key), "traces/%s", digest);
	struct store *st = NULL;
	CHECK(store_open(store_uri, NULL, &st) == 0);
	CHECK(st && store_delete(st, key) == 0);
	struct blockd_config cfg = { .cache = { .origin_uri = store_uri, .mem_disable = true },
				     .no_readahead = true,
				     .prefetch = true };
	struct blockd *b = NULL;
	struct blockd_image *img = NULL;
	CHECK(blockd_new(&cfg, &b) == 0);
	CHECK(b && blockd_attach(b, "unit:1", &img) == 0);
	if (img) {
		uint8_t buf[3 * 4096];
		const struct { uint64_t off, len; } reads[] = {
			{ 2 * 4096 + 7, 100 }, /* block 2 */
			{ 10 * 4096, 2 * 4096 }, /* blocks 10 and 11 */
			{ 2 * 4096, 4096 },	   /* block 2 again: nothing new */
			{ 12 * 4096 + 5, 1 },  /* block 12 extends the run from 10 */
			{ 5 * 4096 - 1, 2 },   /* blocks 4 and 5 */
		};
		for (size_t i = 0; i < sizeof(reads) / sizeof(reads[0]); i++)
			CHECK(blockd_image_read(img, reads[i].off, buf, reads[i].len) == 0);
		CHECK(blockd_detach(b, "unit:1") == 0);
	}
	blockd_free(b);
	uint8_t *doc = NULL;
	size_t len = 0;
	CHECK(st && store_get(st, key, IMAGE_TRACE_MAX_BYTES, &doc, &len) == 0);
	json_t *j = doc ? json_loadb((const char *)doc, len, 0, NULL) : NULL;
	json_t *runs = json_object_get(j, "blocks");
	json_t *want = json_loads("[[2,1],[10,3],[4,2]]", 0, NULL);
	CHECK(json_integer_value(json_object_get(j, "block_size")) == 4096 && json_equal(runs, want));
	json_decref(want);
	json_decref(j);
	free(doc);
	store_free(st);
}

int main(void)
{
	char tmpl[] = "/tmp/test_blockd_prefetch.XXXXXX";
	char *dir = mkdtemp(tmpl);
	if (!dir)
		return 1;
	char *home = xasprintf("%s/home", dir), *store = xasprintf("file://%s/store", dir);
	setenv("KINDLING_HOME", home, 1);
	unsetenv("KINDLING_TENANT_KEY");
	unsetenv("KINDLING_SALT");
	for (size_t i = 0; i < N_PLAN; i++)
		plan[i] = 17 - i;

	plain = malloc((size_t)N_INDEXES * CHUNK_SIZE);
	CHECK(plain && random_bytes(plain, (size_t)N_INDEXES * CHUNK_SIZE) == 0);
	struct kindling_env env = { 0 };
	struct store *st = NULL;
	char digest[SHA256_HEX_LEN + 1];
	CHECK(kindling_env_load(&env, 0) == 0);
	CHECK(store_open(store, NULL, &st) == 0);
	CHECK(plain && st && make_image(st, &env, digest) == 0);
	store_free(st);
	kindling_env_cleanup(&env);

	struct gate g = { 0 };
	pthread_mutex_init(&g.lock, NULL);
	pthread_cond_init(&g.cond, NULL);
	struct blockd_config cfg = { .cache = { .origin_uri = store, .mem_disable = true },
				     .no_readahead = true,
				     .prefetch = true,
				     .prefetch_parallel = 2 };
	struct blockd *b = NULL;
	CHECK(blockd_new(&cfg, &b) == 0);
	if (b && cache_insert_layer(b->cache, "l3", &gate_ops, &g) == 0) {
		test_yield(b, &g);
		test_behind(b, &g);
	} else
		CHECK(!"blockd_new or the gate layer failed");
	/* Whatever failed above, let nothing wait at the gate any more. */
	gate_open_all(&g);
	blockd_free(b);
	CHECK(!g.timed_out);

	/* 3. prefetch_parallel is held to half the origin's parallel fetches. */
	struct blockd_config cfg2 = cfg;
	cfg2.prefetch_parallel = 16;
	cfg2.cache.origin_parallel = 4;
	struct blockd *b2 = NULL;
	CHECK(blockd_new(&cfg2, &b2) == 0);
	CHECK(b2 && b2->cfg.prefetch_parallel == 2);
	blockd_free(b2);

	/* 4. Without a trace, an attach records one, with the blocks read. */
	test_block_runs(store, digest);

	pthread_cond_destroy(&g.cond);
	pthread_mutex_destroy(&g.lock);
	char *cmd = xasprintf("rm -rf '%s'", dir);
	if (cmd && system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
	free(cmd);
	free(home);
	free(store);
	free(plain);
	return check_report();
}
