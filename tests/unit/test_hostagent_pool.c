/* The host agent's pool bookkeeping (placement/hostagent/pool.c): which
 * idle sandbox an invocation takes, which idle sandboxes a cold start
 * evicts under the memory budget, which ones expire, what a drain
 * concerns.  No sandbox runs: the entries are built by hand. */
/* ctest-labels: no-tsan (single-threaded bookkeeping: nothing for ThreadSanitizer to check) */
#include "placement/hostagent/internal.h"

#include <errno.h>
#include <string.h>

#include "tests/check.h"

#define MB (1024ull * 1024ull)

static const struct pool_key K1 = { "fn", "$LATEST", "r1", "aa" };
static const struct pool_key K1_REV2 = { "fn", "$LATEST", "r2", "aa" };
static const struct pool_key K1_V1 = { "fn", "1", "r1", "aa" };
static const struct pool_key K2 = { "other", "$LATEST", "r1", "bb" };

static struct pool_entry entry(struct pool_key k, enum pool_state st, uint64_t mem_mb, double last_used)
{
	return (struct pool_entry){ .key = k, .state = st, .memory = mem_mb * MB, .last_used = last_used };
}

static void test_pick(void)
{
	struct pool p = { 0 };
	struct pool_entry busy = entry(K1, POOL_BUSY, 128, 50), old = entry(K1, POOL_IDLE, 128, 10),
			  recent = entry(K1, POOL_IDLE, 128, 20), other = entry(K2, POOL_IDLE, 128, 30),
			  rev2 = entry(K1_REV2, POOL_IDLE, 128, 40), draining = entry(K1, POOL_IDLE, 128, 45);
	draining.draining = true;
	struct pool_entry *all[] = { &busy, &old, &recent, &other, &rev2, &draining };
	for (size_t i = 0; i < 6; i++)
		CHECK(pool_add(&p, all[i]) == 0);
	CHECK(p.n == 6);
	/* The most recently used idle one of exactly that key, never a draining one. */
	CHECK(pool_pick_idle(&p, &K1) == &recent);
	CHECK(pool_pick_idle(&p, &K1_REV2) == &rev2);
	CHECK(pool_pick_idle(&p, &K1_V1) == NULL);
	/* A provisioned idle one goes first, even if older. */
	old.provisioned = true;
	CHECK(pool_pick_idle(&p, &K1) == &old);
	old.provisioned = false;
	/* Starting, busy, ending and one-shot entries are never taken. */
	recent.state = POOL_STARTING;
	old.state = POOL_ENDING;
	CHECK(pool_pick_idle(&p, &K1) == NULL);
	recent.state = POOL_IDLE;
	recent.oneshot = true;
	CHECK(pool_pick_idle(&p, &K1) == NULL);
	pool_remove(&p, &recent);
	pool_remove(&p, &recent); /* absent: nothing happens */
	CHECK(p.n == 5);
	pool_cleanup(&p);
	CHECK(p.n == 0 && p.v == NULL);
}

static void test_admit(void)
{
	struct pool p = { 0 };
	struct pool_entry a = entry(K1, POOL_IDLE, 256, 30), b = entry(K1, POOL_IDLE, 256, 10),
			  c = entry(K2, POOL_IDLE, 256, 20), busy = entry(K2, POOL_BUSY, 256, 5),
			  prov = entry(K2, POOL_IDLE, 256, 1), ending = entry(K1, POOL_ENDING, 4096, 0);
	prov.provisioned = true;
	struct pool_entry *all[] = { &a, &b, &c, &busy, &prov, &ending };
	for (size_t i = 0; i < 6; i++)
		CHECK(pool_add(&p, all[i]) == 0);
	/* ENDING entries do not count. */
	CHECK(pool_memory_in_use(&p) == 5 * 256 * MB);

	struct pool_entry *v[8];
	size_t n = 99;
	/* Fits as is. */
	CHECK(pool_plan_admit(&p, 256 * MB, 1536 * MB, v, &n) == 0 && n == 0);
	/* One over: the least recently used idle, unprovisioned one (b). */
	CHECK(pool_plan_admit(&p, 256 * MB, 1280 * MB, v, &n) == 0 && n == 1 && v[0] == &b);
	/* Two over: b then c (least recently used first), never busy nor provisioned. */
	CHECK(pool_plan_admit(&p, 512 * MB, 1280 * MB, v, &n) == 0 && n == 2 && v[0] == &b && v[1] == &c);
	/* A small need still evicts a whole sandbox. */
	CHECK(pool_plan_admit(&p, 1 * MB, 1280 * MB, v, &n) == 0 && n == 1 && v[0] == &b);
	/* Everything evictable is not enough: -EBUSY, no victims. */
	CHECK(pool_plan_admit(&p, 1024 * MB, 1280 * MB, v, &n) == -EBUSY && n == 0);
	/* Only busy and provisioned left. */
	a.state = b.state = c.state = POOL_BUSY;
	CHECK(pool_plan_admit(&p, 256 * MB, 1280 * MB, v, &n) == -EBUSY && n == 0);
	/* A need that would overflow. */
	CHECK(pool_plan_admit(&p, UINT64_MAX, UINT64_MAX, v, &n) == -EBUSY);
	/* A single sandbox larger than the whole budget. */
	struct pool empty = { 0 };
	CHECK(pool_plan_admit(&empty, 2048 * MB, 1024 * MB, v, &n) == -EBUSY);
	pool_cleanup(&p);
}

static void test_expire_and_provisioned(void)
{
	struct pool p = { 0 };
	struct pool_entry old = entry(K1, POOL_IDLE, 128, 100), fresh = entry(K1, POOL_IDLE, 128, 195),
			  prov_old = entry(K1, POOL_IDLE, 128, 0), busy_old = entry(K1, POOL_BUSY, 128, 0),
			  prov_ending = entry(K1, POOL_ENDING, 128, 0), prov_starting = entry(K1, POOL_STARTING, 128, 0);
	prov_old.provisioned = prov_ending.provisioned = prov_starting.provisioned = true;
	struct pool_entry *all[] = { &old, &fresh, &prov_old, &busy_old, &prov_ending, &prov_starting };
	for (size_t i = 0; i < 6; i++)
		CHECK(pool_add(&p, all[i]) == 0);
	struct pool_entry *v[8];
	CHECK(pool_expired(&p, 200, 100, v) == 1 && v[0] == &old); /* exactly at the limit expires */
	CHECK(pool_expired(&p, 200, 101, v) == 0);
	CHECK(pool_expired(&p, 1000, 1, v) == 2);
	/* Provisioned entries not ending, of that key. */
	CHECK(pool_count_provisioned(&p, &K1) == 2);
	CHECK(pool_count_provisioned(&p, &K2) == 0);
	pool_cleanup(&p);
}

static void test_drain(void)
{
	struct pool_entry latest_r1 = entry(K1, POOL_IDLE, 1, 0), latest_r2 = entry(K1_REV2, POOL_IDLE, 1, 0),
			  v1 = entry(K1_V1, POOL_IDLE, 1, 0), other = entry(K2, POOL_IDLE, 1, 0);
	/* UpdateFunctionCode of $LATEST to r2: only $LATEST's other revisions. */
	CHECK(pool_drain_matches(&latest_r1, "fn", "$LATEST", "r2"));
	CHECK(!pool_drain_matches(&latest_r2, "fn", "$LATEST", "r2"));
	CHECK(!pool_drain_matches(&v1, "fn", "$LATEST", "r2"));
	CHECK(!pool_drain_matches(&other, "fn", "$LATEST", "r2"));
	/* DeleteFunction: every version and revision of that function. */
	CHECK(pool_drain_matches(&latest_r1, "fn", NULL, NULL));
	CHECK(pool_drain_matches(&v1, "fn", NULL, NULL));
	CHECK(!pool_drain_matches(&other, "fn", NULL, NULL));
	/* Deleting version 1. */
	CHECK(pool_drain_matches(&v1, "fn", "1", NULL));
	CHECK(!pool_drain_matches(&latest_r1, "fn", "1", NULL));
	CHECK(pool_key_equal(&K1, &(struct pool_key){ "fn", "$LATEST", "r1", "aa" }));
	CHECK(!pool_key_equal(&K1, &(struct pool_key){ "fn", "$LATEST", "r1", "ab" }));
}

int main(void)
{
	test_pick();
	test_admit();
	test_expire_and_provisioned();
	test_drain();
	return check_report();
}
