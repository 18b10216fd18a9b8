/* The cache's buffer pools (cache/bufpool.c): a buffer given back is the
 * next one handed out; no more than |keep| idle buffers are kept (the rest
 * are freed: ASan's leak check sees any that are not); |keep| is capped at
 * BUF_POOL_KEEP_MAX; and four threads taking and giving back buffers never
 * get one another's (each fills its buffer and checks it is untouched before
 * giving it back). */
#include "cache/internal.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tests/check.h"

#define LEN 4096u
#define THREADS 4
#define ROUNDS 2000

static void test_reuse_and_bound(void)
{
	struct buf_pool p;
	buf_pool_init(&p, LEN, 3);
	CHECK(p.keep == 3 && p.n == 0 && p.len == LEN);
	uint8_t *a = buf_pool_get(&p);
	CHECK(a != NULL);
	memset(a, 0xa5, LEN);
	buf_pool_put(&p, a);
	CHECK(p.n == 1);
	CHECKF(buf_pool_get(&p) == a, "a buffer given back was not the next one handed out");
	CHECK(p.n == 0);
	buf_pool_put(&p, a);

	uint8_t *held[6];
	for (unsigned i = 0; i < 6; i++) {
		held[i] = buf_pool_get(&p);
		CHECK(held[i] != NULL);
		memset(held[i], (int)i, LEN); /* a whole LEN bytes each */
	}
	CHECK(p.n == 0);
	for (unsigned i = 0; i < 6; i++)
		buf_pool_put(&p, held[i]);
	CHECKF(p.n == 3, "%u idle buffers kept, want 3", p.n);
	buf_pool_put(&p, NULL);
	CHECK(p.n == 3);
	buf_pool_cleanup(&p);
	CHECK(p.n == 0);

	buf_pool_init(&p, LEN, BUF_POOL_KEEP_MAX + 10);
	CHECK(p.keep == BUF_POOL_KEEP_MAX);
	buf_pool_cleanup(&p);
}

struct worker {
	struct buf_pool *p;
	uint8_t id;
	unsigned bad, failed;
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	for (unsigned r = 0; r < ROUNDS; r++) {
		uint8_t *b = buf_pool_get(w->p);
		if (!b) {
			w->failed++;
			continue;
		}
		memset(b, w->id, LEN);
		for (size_t i = 0; i < LEN; i += 512)
			if (b[i] != w->id)
				w->bad++;
		buf_pool_put(w->p, b);
	}
	return NULL;
}

static void test_threads(void)
{
	struct buf_pool p;
	buf_pool_init(&p, LEN, 2);
	struct worker w[THREADS];
	pthread_t th[THREADS];
	for (unsigned i = 0; i < THREADS; i++) {
		w[i] = (struct worker){.p = &p, .id = (uint8_t)(i + 1)};
		CHECK(pthread_create(&th[i], NULL, worker_main, &w[i]) == 0);
	}
	for (unsigned i = 0; i < THREADS; i++) {
		pthread_join(th[i], NULL);
		CHECKF(w[i].bad == 0, "thread %u found another thread's bytes in its buffer %u times", i, w[i].bad);
		CHECK(w[i].failed == 0);
	}
	CHECK(p.n <= 2);
	buf_pool_cleanup(&p);
}

int main(void)
{
	test_reuse_and_bound();
	test_threads();
	return check_report();
}
