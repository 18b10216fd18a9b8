/* Readahead into the next chunk (blockd/blockd.c, maybe_readahead).
 *
 * Checked by behaviour, never by time: a recording layer above the origin
 * (L3) logs which chunks reach it, and the counters in stats.json say what
 * readahead did (it queues its fetches inside blockd_image_read, so
 * readahead.issued and .untraced are final when the read returns).
 *   1. Short adjacent reads (two 128 KiB reads, as the kernel's readahead
 *      makes over neighbouring small files) and random reads trigger no
 *      readahead.
 *   2. A read that continues a stream of at least readahead_min_run
 *      contiguous bytes fetches the next chunk in the background.
 *   3. While a loaded startup trace covers the start, readahead skips a
 *      chunk the trace does not list (readahead.untraced, counted once per
 *      chunk) and that chunk never reaches the origin; once the trace's
 *      window is over, the same stream reads ahead again.
 * The image: 16 stored chunks of random bytes; the trace lists 4, 5 and 6.
 * Waits are bounded (a hang fails the test instead of hanging it) and never
 * asserted on. */
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

#define N_INDEXES 16
#define WAIT_LIMIT_S 60.0
#define READ_SIZE (128u << 10) /* a kernel readahead window */

static uint8_t *plain;
static char names[N_INDEXES][CHUNK_NAME_HEX_LEN + 1];
static const uint64_t trace_chunks[] = { 4, 5, 6 };

/* ---- a layer that records which chunks reach the origin ------------------------------------------------------ */

struct recorder {
	pthread_mutex_t lock;
	unsigned arrivals[N_INDEXES];
};

static int index_of(const char *name)
{
	for (int i = 0; i < N_INDEXES; i++)
		if (strcmp(names[i], name) == 0)
			return i;
	return -1;
}

static int recorder_read(struct cache_layer *l, struct chunk_req *rq)
{
	struct recorder *rec = l->state;
	int idx = index_of(rq->name);
	pthread_mutex_lock(&rec->lock);
	if (idx >= 0)
		rec->arrivals[idx]++;
	pthread_mutex_unlock(&rec->lock);
	return cache_layer_next(l, rq);
}

static const struct cache_layer_ops recorder_ops = { .name = "recorder", .read = recorder_read };

static unsigned arrivals(struct recorder *rec, int idx)
{
	pthread_mutex_lock(&rec->lock);
	unsigned n = rec->arrivals[idx];
	pthread_mutex_unlock(&rec->lock);
	return n;
}

/* ---- helpers ------------------------------------------------------------------------------------------------- */

/* A counter from stats.json: |group| (NULL = top level) and |field|, or -1. */
static long long stat_int(struct blockd_image *img, const char *group, const char *field)
{
	char *s = blockd_image_stats_json(img);
	json_t *j = s ? json_loads(s, 0, NULL) : NULL;
	free(s);
	json_t *o = group ? json_object_get(j, group) : j;
	json_t *v = json_object_get(o, field);
	long long n = json_is_integer(v) ? (long long)json_integer_value(v) : -1;
	json_decref(j);
	return n;
}

static bool trace_state_is(struct blockd_image *img, const char *state)
{
	char *s = blockd_image_stats_json(img);
	json_t *j = s ? json_loads(s, 0, NULL) : NULL;
	free(s);
	const char *t = json_string_value(json_object_get(json_object_get(j, "prefetch"), "trace"));
	bool eq = t && strcmp(t, state) == 0;
	json_decref(j);
	return eq;
}

/* Read READ_SIZE bytes at |off| and check them against the plaintext. */
static void read_at(struct blockd_image *img, uint64_t off)
{
	static uint8_t buf[READ_SIZE];
	CHECK(blockd_image_read(img, off, buf, sizeof(buf)) == 0);
	CHECK(memcmp(buf, plain + off, sizeof(buf)) == 0);
}

static int put_trace(struct store *st, const char *digest)
{
	json_t *arr = json_array();
	for (size_t i = 0; arr && i < sizeof(trace_chunks) / sizeof(trace_chunks[0]); i++)
		json_array_append_new(arr, json_integer((json_int_t)trace_chunks[i]));
	json_t *o = arr ? json_pack("{s:s, s:s, s:i, s:f, s:o}", "format", "kindling-trace-1", "manifest", digest,
				    "chunk_size", (json_int_t)CHUNK_SIZE, "seconds", 10.0, "chunks", arr)
			: NULL;
	char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	if (!s)
		return -ENOMEM;
	char key[128];
	snprintf(key, sizeof(key), "traces/%s", digest);
	int r = store_put(st, key, s, strlen(s));
	free(s);
	return r;
}

static struct blockd *start(const struct blockd_config *cfg, struct recorder *rec)
{
	struct blockd *b = NULL;
	CHECK(blockd_new(cfg, &b) == 0);
	if (b && cache_insert_layer(b->cache, "l3", &recorder_ops, rec) != 0) {
		CHECK(!"cannot insert the recording layer");
		blockd_free(b);
		b = NULL;
	}
	return b;
}

/* ---- 1 and 2: the minimum run, without a trace --------------------------------------------------------------- */

static void test_min_run(const struct blockd_config *base, struct recorder *rec)
{
	struct blockd_config cfg = *base;
	cfg.prefetch = false;
	struct blockd *b = start(&cfg, rec);
	struct blockd_image *img = NULL;
	CHECK(b && blockd_attach(b, "unit:1", &img) == 0);
	if (!img) {
		blockd_free(b);
		return;
	}

	/* Two adjacent 128 KiB reads: 256 KiB in all, but the second continues
	 * a run of only 128 KiB.  Then random reads elsewhere. */
	read_at(img, 0);
	read_at(img, READ_SIZE);
	read_at(img, 8ull * CHUNK_SIZE + 4096 * 3);
	read_at(img, 2ull * CHUNK_SIZE + 4096);
	read_at(img, 9ull * CHUNK_SIZE);
	CHECK(stat_int(img, "readahead", "issued") == 0);
	CHECK(arrivals(rec, 1) == 0);
	CHECK(arrivals(rec, 3) == 0);
	CHECK(arrivals(rec, 10) == 0);

	/* The third read continues a 256 KiB run: chunk 1 is read ahead,
	 * while another stream (chunk 9) interleaves and stays short. */
	read_at(img, 9ull * CHUNK_SIZE + READ_SIZE);
	CHECK(stat_int(img, "readahead", "issued") == 0);
	read_at(img, 2ull * READ_SIZE);
	CHECK(stat_int(img, "readahead", "issued") == 1);
	WAIT_FOR(stat_int(img, "readahead", "fetched") == 1);
	CHECK(stat_int(img, "readahead", "fetched") == 1);
	CHECK(arrivals(rec, 1) == 1);
	CHECK(stat_int(img, "readahead", "untraced") == 0);
	/* The stream goes on within chunk 0: chunk 1 is queued once only. */
	read_at(img, 3ull * READ_SIZE);
	CHECK(stat_int(img, "readahead", "issued") == 1);
	/* A reader of chunk 1 finds it resident: no second origin fetch. */
	read_at(img, CHUNK_SIZE);
	CHECK(arrivals(rec, 1) == 1);
	CHECK(blockd_detach(b, "unit:1") == 0);
	blockd_free(b);
}

/* ---- 3. chunks the trace does not list, while it covers the start -------------------------------------------- */

/* Stream through the last 384 KiB of chunk |index|: the third read
 * continues a 256 KiB run and asks for readahead of |index| + 1. */
static void stream_to_end(struct blockd_image *img, uint64_t index)
{
	uint64_t base = (index + 1) * CHUNK_SIZE - 3ull * READ_SIZE;
	for (int i = 0; i < 3; i++)
		read_at(img, base + (uint64_t)i * READ_SIZE);
}

static void test_untraced(const struct blockd_config *base, struct recorder *rec)
{
	struct blockd_config cfg = *base;
	cfg.prefetch = true;
	cfg.trace_seconds = 3600; /* the trace covers the whole test */
	struct blockd *b = start(&cfg, rec);
	struct blockd_image *img = NULL;
	CHECK(b && blockd_attach(b, "unit:1", &img) == 0);
	if (!img) {
		blockd_free(b);
		return;
	}
	WAIT_FOR(trace_state_is(img, "prefetched"));
	CHECK(trace_state_is(img, "prefetched"));
	CHECK(stat_int(img, "prefetch", "prefetched") == 3);

	/* Chunk 7 follows the trace's last chunk and is not in it. */
	stream_to_end(img, 6);
	CHECK(stat_int(img, "readahead", "issued") == 0);
	CHECK(stat_int(img, "readahead", "untraced") == 1);
	CHECK(arrivals(rec, 7) == 0);
	/* Another stream over the same bytes: chunk 7 is counted once. */
	stream_to_end(img, 6);
	CHECK(stat_int(img, "readahead", "untraced") == 1);
	CHECK(arrivals(rec, 7) == 0);
	/* Chunk 5 is in the trace and resident: nothing to read ahead. */
	stream_to_end(img, 4);
	CHECK(stat_int(img, "readahead", "issued") == 0);
	CHECK(stat_int(img, "readahead", "untraced") == 1);
	/* A stream into another chunk the trace does not list. */
	stream_to_end(img, 11);
	CHECK(stat_int(img, "readahead", "untraced") == 2);
	CHECK(stat_int(img, "readahead", "issued") == 0);
	CHECK(arrivals(rec, 12) == 0);
	CHECK(blockd_detach(b, "unit:1") == 0);
	blockd_free(b);

	/* A trace window that is over at once: once prefetch is done the
	 * same stream reads ahead into the untraced chunk. */
	memset(rec->arrivals, 0, sizeof(rec->arrivals));
	cfg.trace_seconds = 1e-6;
	b = start(&cfg, rec);
	img = NULL;
	CHECK(b && blockd_attach(b, "unit:1", &img) == 0);
	if (!img) {
		blockd_free(b);
		return;
	}
	WAIT_FOR(trace_state_is(img, "prefetched"));
	CHECK(trace_state_is(img, "prefetched"));
	stream_to_end(img, 6);
	CHECK(stat_int(img, "readahead", "untraced") == 0);
	CHECK(stat_int(img, "readahead", "issued") == 1);
	WAIT_FOR(stat_int(img, "readahead", "fetched") == 1);
	CHECK(arrivals(rec, 7) == 1);
	CHECK(blockd_detach(b, "unit:1") == 0);
	blockd_free(b);
}

int main(void)
{
	char tmpl[] = "/tmp/test_blockd_readahead.XXXXXX";
	char *dir = mkdtemp(tmpl);
	if (!dir)
		return 1;
	char *home = xasprintf("%s/home", dir), *store = xasprintf("file://%s/store", dir);
	setenv("KINDLING_HOME", home, 1);
	unsetenv("KINDLING_TENANT_KEY");
	unsetenv("KINDLING_SALT");

	plain = malloc((size_t)N_INDEXES * CHUNK_SIZE);
	CHECK(plain && random_bytes(plain, (size_t)N_INDEXES * CHUNK_SIZE) == 0);
	struct kindling_env env = { 0 };
	struct store *st = NULL;
	char digest[SHA256_HEX_LEN + 1];
	CHECK(kindling_env_load(&env, 0) == 0);
	CHECK(store_open(store, NULL, &st) == 0);
	CHECK(plain && st && test_image_make(st, &env, plain, N_INDEXES, NULL, names, digest) == 0);
	CHECK(st && put_trace(st, digest) == 0);
	store_free(st);
	kindling_env_cleanup(&env);

	struct recorder rec = { 0 };
	pthread_mutex_init(&rec.lock, NULL);
	/* No L1; the memory tier keeps what was fetched, so each chunk reaches
	 * the origin once, and arrivals count fetches. */
	struct blockd_config cfg = { .cache = { .origin_uri = store },
				     .readahead_chunks = 1,
				     .readahead_min_run = BLOCKD_READAHEAD_MIN_RUN };
	test_min_run(&cfg, &rec);
	memset(rec.arrivals, 0, sizeof(rec.arrivals));
	test_untraced(&cfg, &rec);
	pthread_mutex_destroy(&rec.lock);

	char *cmd = xasprintf("rm -rf '%s'", dir);
	if (cmd && system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
	free(cmd);
	free(home);
	free(store);
	free(plain);
	return check_report();
}
