/* The placement library (placement/placement.c): scoring prefers the host
 * holding the image in L1, never picks a host without room, stays in the
 * shard while the shard has room, spreads one function, is deterministic
 * under a fixed seed; shards are stable when an unrelated host leaves; the
 * baselines; weights parsing; the overlap formula.
 *
 * ctest-labels: no-tsan (pure functions: nothing for ThreadSanitizer to check) */
#include "placement/placement.h"
#include "tests/check.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_HOSTS 40

static char ids[N_HOSTS][16];
static struct placement_host hosts[N_HOSTS];

static void fleet(void)
{
	for (size_t i = 0; i < N_HOSTS; i++) {
		snprintf(ids[i], sizeof(ids[i]), "h%zu", i);
		hosts[i] = (struct placement_host){ .id = ids[i], .memory_total_mb = 4096, .slots_total = 32 };
	}
}

static void digest_of(unsigned i, uint8_t d[32])
{
	uint64_t s = 1000 + i;
	for (int j = 0; j < 4; j++) {
		uint64_t v = placement_rng_next(&s);
		memcpy(d + 8 * j, &v, 8);
	}
}

static bool in_list(const size_t *l, size_t n, size_t v)
{
	for (size_t i = 0; i < n; i++)
		if (l[i] == v)
			return true;
	return false;
}

static void test_locality(void)
{
	fleet();
	struct placement_config cfg;
	placement_config_init(&cfg);
	cfg.shard_size = 8;
	uint8_t chunks[20][32];
	for (unsigned i = 0; i < 20; i++)
		digest_of(i, chunks[i]);
	struct placement_request req = { .function = "fn-a", .memory_mb = 256, .chunks = chunks, .n_chunks = 20 };
	size_t shard[8], n;
	placement_shard(&cfg, "fn-a", hosts, N_HOSTS, shard, &n);
	CHECK(n == 8);
	/* The image's chunks in the L1 of the shard's last host only. */
	struct placement_bloom b;
	CHECK(placement_bloom_init(&b, 1 << 12, 0) == 0);
	for (unsigned i = 0; i < 20; i++)
		placement_bloom_add_digest(&b, chunks[i]);
	struct placement_bloom empty;
	CHECK(placement_bloom_init(&empty, 1 << 12, 0) == 0);
	for (size_t i = 0; i < N_HOSTS; i++)
		hosts[i].l1 = &empty;
	hosts[shard[7]].l1 = &b;
	uint64_t rng = 7;
	for (int t = 0; t < 50; t++) {
		struct placement_result r;
		CHECK(placement_choose(&cfg, PLACEMENT_SCORED, &req, hosts, N_HOSTS, &rng, &r) == 0);
		CHECK(r.host == shard[7]);
		CHECK(r.l1_fraction == 1.0);
		CHECK(!r.spilled);
	}
	/* Without room there, never there. */
	hosts[shard[7]].memory_used_mb = 4000;
	for (int t = 0; t < 50; t++) {
		struct placement_result r;
		CHECK(placement_choose(&cfg, PLACEMENT_SCORED, &req, hosts, N_HOSTS, &rng, &r) == 0);
		CHECK(r.host != shard[7]);
		CHECK(in_list(shard, n, r.host));
	}
	/* Idle sandboxes count as room; pending reservations do not. */
	hosts[shard[7]].memory_idle_mb = 1000;
	CHECK(placement_fits(&hosts[shard[7]], &req));
	hosts[shard[7]].memory_pending_mb = 900;
	CHECK(!placement_fits(&hosts[shard[7]], &req));
	hosts[shard[7]].memory_idle_mb = hosts[shard[7]].memory_pending_mb = 0;
	hosts[shard[7]].memory_used_mb = 0;
	/* An excluded host is never chosen. */
	const char *ex[] = { hosts[shard[7]].id };
	req.exclude = ex;
	req.n_exclude = 1;
	for (int t = 0; t < 50; t++) {
		struct placement_result r;
		CHECK(placement_choose(&cfg, PLACEMENT_SCORED, &req, hosts, N_HOSTS, &rng, &r) == 0);
		CHECK(r.host != shard[7]);
	}
	placement_bloom_cleanup(&b);
	placement_bloom_cleanup(&empty);
}

static void test_shard_only_then_spill(void)
{
	fleet();
	struct placement_config cfg;
	placement_config_init(&cfg);
	cfg.shard_size = 4;
	struct placement_request req = { .function = "fn-b", .memory_mb = 512 };
	size_t shard[4], n;
	placement_shard(&cfg, "fn-b", hosts, N_HOSTS, shard, &n);
	CHECK(n == 4);
	uint64_t rng = 1;
	/* The shard hosts loaded heavily (but with room), the rest empty:
	 * still the shard. */
	for (size_t i = 0; i < n; i++)
		hosts[shard[i]].memory_used_mb = 3500;
	for (int t = 0; t < 200; t++) {
		struct placement_result r;
		CHECK(placement_choose(&cfg, PLACEMENT_SCORED, &req, hosts, N_HOSTS, &rng, &r) == 0);
		CHECK(in_list(shard, n, r.host));
		CHECK(!r.spilled);
	}
	/* The shard full: spill to the cell, or -ENOSPC without spill. */
	for (size_t i = 0; i < n; i++)
		hosts[shard[i]].slots_used = 32;
	struct placement_result r;
	CHECK(placement_choose(&cfg, PLACEMENT_SCORED, &req, hosts, N_HOSTS, &rng, &r) == 0);
	CHECK(!in_list(shard, n, r.host));
	CHECK(r.spilled);
	cfg.spill = false;
	CHECK(placement_choose(&cfg, PLACEMENT_SCORED, &req, hosts, N_HOSTS, &rng, &r) == -ENOSPC);
	/* Nothing fits anywhere. */
	cfg.spill = true;
	req.memory_mb = 5000;
	CHECK(placement_choose(&cfg, PLACEMENT_SCORED, &req, hosts, N_HOSTS, &rng, &r) == -ENOSPC);
	CHECK(placement_choose(&cfg, PLACEMENT_RANDOM, &req, hosts, N_HOSTS, &rng, &r) == -ENOSPC);
	CHECK(placement_choose(&cfg, PLACEMENT_LEAST_LOADED, &req, hosts, N_HOSTS, &rng, &r) == -ENOSPC);
	CHECK(placement_choose(&cfg, PLACEMENT_SCORED, &req, hosts, 0, &rng, &r) == -ENOENT);
}

static void test_spread(void)
{
	fleet();
	struct placement_config cfg;
	placement_config_init(&cfg);
	cfg.shard_size = 8;
	struct placement_request req = { .function = "fn-c", .memory_mb = 128 };
	size_t shard[8], n;
	placement_shard(&cfg, "fn-c", hosts, N_HOSTS, shard, &n);
	uint64_t rng = 99;
	/* Place 16 sandboxes one by one, counting them on their hosts: the
	 * function ends up on every shard host, two each at most plus one. */
	unsigned per[N_HOSTS] = { 0 };
	for (int t = 0; t < 16; t++) {
		struct placement_result r;
		CHECK(placement_choose(&cfg, PLACEMENT_SCORED, &req, hosts, N_HOSTS, &rng, &r) == 0);
		CHECK(in_list(shard, n, r.host));
		per[r.host]++;
		hosts[r.host].fn_sandboxes++;
		hosts[r.host].slots_used++;
		hosts[r.host].memory_used_mb += 128;
	}
	for (size_t i = 0; i < n; i++)
		CHECK(per[shard[i]] >= 1 && per[shard[i]] <= 3);
}

static void test_deterministic(void)
{
	fleet();
	struct placement_config cfg;
	placement_config_init(&cfg);
	cfg.epsilon = 10; /* a wide draw, so the seed matters */
	cfg.top_k = 8;
	struct placement_request req = { .function = "fn-d", .memory_mb = 128 };
	size_t a[100], b[100];
	bool differs_from_other_seed = false;
	for (int round = 0; round < 3; round++) {
		uint64_t rng = round == 2 ? 43 : 42;
		for (int t = 0; t < 100; t++) {
			struct placement_result r;
			CHECK(placement_choose(&cfg, PLACEMENT_SCORED, &req, hosts, N_HOSTS, &rng, &r) == 0);
			if (round == 0)
				a[t] = r.host;
			else if (round == 1)
				b[t] = r.host;
			else if (r.host != a[t])
				differs_from_other_seed = true;
		}
	}
	CHECK(memcmp(a, b, sizeof(a)) == 0);
	CHECK(differs_from_other_seed);
}

/* Removing a host changes only the shards that held it: those lose it and
 * gain the next host by rendezvous weight; every other shard is the same. */
static void test_shard_stability(void)
{
	fleet();
	struct placement_config cfg;
	placement_config_init(&cfg);
	cfg.shard_size = 5;
	struct placement_host less[N_HOSTS - 1];
	size_t gone = 17;
	for (size_t i = 0, j = 0; i < N_HOSTS; i++)
		if (i != gone)
			less[j++] = hosts[i];
	unsigned changed = 0, held = 0;
	for (int f = 0; f < 500; f++) {
		char fn[32];
		snprintf(fn, sizeof(fn), "function-%d", f);
		size_t s1[5], n1, s2[5], n2;
		placement_shard(&cfg, fn, hosts, N_HOSTS, s1, &n1);
		placement_shard(&cfg, fn, less, N_HOSTS - 1, s2, &n2);
		CHECK(n1 == 5 && n2 == 5);
		bool had = in_list(s1, n1, gone);
		held += had;
		size_t same = 0;
		for (size_t i = 0; i < n1; i++)
			for (size_t k = 0; k < n2; k++)
				same += strcmp(hosts[s1[i]].id, less[s2[k]].id) == 0;
		if (had) {
			CHECK(same == 4);
			changed++;
		} else {
			CHECK(same == 5);
			/* And in the same order. */
			for (size_t i = 0; i < n1; i++)
				CHECK(strcmp(hosts[s1[i]].id, less[s2[i]].id) == 0);
		}
	}
	/* About 5/40 of the functions held it. */
	CHECK(held > 20 && held < 120);
	CHECK(changed == held);
}

static void test_cells(void)
{
	fleet();
	struct placement_config cfg;
	placement_config_init(&cfg);
	cfg.cells = 4;
	for (size_t i = 0; i < N_HOSTS; i++)
		hosts[i].cell = (uint32_t)(i % 4);
	uint64_t rng = 5;
	unsigned seen[4] = { 0 };
	for (int f = 0; f < 200; f++) {
		char fn[32];
		snprintf(fn, sizeof(fn), "cellfn-%d", f);
		uint32_t c = placement_function_cell(fn, 4);
		CHECK(c == placement_function_cell(fn, 4));
		seen[c]++;
		struct placement_request req = { .function = fn, .memory_mb = 128 };
		for (int s = 0; s < 3; s++) {
			struct placement_result r;
			enum placement_strategy st = (enum placement_strategy)s;
			CHECK(placement_choose(&cfg, st, &req, hosts, N_HOSTS, &rng, &r) == 0);
			CHECK(hosts[r.host].cell == c);
		}
	}
	for (int c = 0; c < 4; c++)
		CHECK(seen[c] > 20);
	uint32_t c;
	CHECK(placement_cell_parse("cell-3", 4, &c) == 0 && c == 3);
	CHECK(placement_cell_parse("2", 4, &c) == 0 && c == 2);
	CHECK(placement_cell_parse("cell-4", 4, &c) == -EINVAL);
	CHECK(placement_cell_parse("cell-", 4, &c) == -EINVAL);
	CHECK(placement_cell_parse("cell-01", 4, &c) == -EINVAL);
	CHECK(placement_cell_parse("cell-1x", 4, &c) == -EINVAL);
	CHECK(placement_cell_parse("99999999999999999999999", 4, &c) == -EINVAL);
}

static void test_baselines(void)
{
	fleet();
	struct placement_config cfg;
	placement_config_init(&cfg);
	for (size_t i = 0; i < N_HOSTS; i++)
		hosts[i].memory_used_mb = 1000 + (i * 37) % 2000;
	hosts[23].memory_used_mb = 10;
	struct placement_request req = { .function = "fn-e", .memory_mb = 128 };
	uint64_t rng = 3;
	struct placement_result r;
	CHECK(placement_choose(&cfg, PLACEMENT_LEAST_LOADED, &req, hosts, N_HOSTS, &rng, &r) == 0);
	CHECK(r.host == 23);
	unsigned hit[N_HOSTS] = { 0 };
	for (int t = 0; t < 4000; t++) {
		CHECK(placement_choose(&cfg, PLACEMENT_RANDOM, &req, hosts, N_HOSTS, &rng, &r) == 0);
		hit[r.host]++;
	}
	for (size_t i = 0; i < N_HOSTS; i++)
		CHECK(hit[i] > 40 && hit[i] < 200);
}

static void test_config(void)
{
	struct placement_config cfg;
	placement_config_init(&cfg);
	const char *why;
	CHECK(placement_config_check(&cfg, &why) == 0 && !why);
	CHECK(placement_weights_parse("l1=8,spread=0", &cfg.w, &why) == 0);
	CHECK(cfg.w.l1 == 8 && cfg.w.spread == 0 && cfg.w.load == 16.0);
	CHECK(placement_weights_parse("", &cfg.w, &why) == 0);
	CHECK(placement_weights_parse("l3=1", &cfg.w, &why) == -EINVAL && why);
	CHECK(placement_weights_parse("l1=", &cfg.w, &why) == -EINVAL && why);
	CHECK(placement_weights_parse("l1=-1", &cfg.w, &why) == -EINVAL && why);
	CHECK(placement_weights_parse("l1=nan", &cfg.w, &why) == -EINVAL && why);
	CHECK(placement_weights_parse("l1=2,l2", &cfg.w, &why) == -EINVAL && why);
	CHECK(placement_weights_parse("l1=1x", &cfg.w, &why) == -EINVAL && why);
	CHECK(cfg.w.l1 == 8); /* unchanged by the failures */
	cfg.shard_size = 0;
	CHECK(placement_config_check(&cfg, &why) == -EINVAL && why);
	uint64_t rng = 1;
	struct placement_request req = { .function = "f", .memory_mb = 1 };
	struct placement_result r;
	CHECK(placement_choose(&cfg, PLACEMENT_SCORED, &req, hosts, N_HOSTS, &rng, &r) == -EINVAL);
}

static void test_overlap(void)
{
	double all, half;
	CHECK(placement_shard_overlap(10, 10, &all, &half) == 0 && all == 1.0 && fabs(half - 1.0) < 1e-9);
	CHECK(placement_shard_overlap(100, 1, &all, &half) == 0 && fabs(all - 0.01) < 1e-12 && fabs(half - 0.01) < 1e-12);
	/* C(1000, 8) = 2.4115e19. */
	CHECK(placement_shard_overlap(1000, 8, &all, &half) == 0);
	CHECK(fabs(all * 2.4115e19 - 1.0) < 1e-3);
	CHECK(half > 0 && half < 1e-6);
	/* n=4, k=2: P(j>=1) = 1 - C(2,2)/C(4,2) = 5/6. */
	CHECK(placement_shard_overlap(4, 2, &all, &half) == 0 && fabs(half - 5.0 / 6) < 1e-9 && fabs(all - 1.0 / 6) < 1e-9);
	CHECK(placement_shard_overlap(4, 5, &all, &half) == -EINVAL);
	CHECK(placement_shard_overlap(4, 0, &all, &half) == -EINVAL);
}

int main(void)
{
	test_locality();
	test_shard_only_then_spill();
	test_spread();
	test_deterministic();
	test_shard_stability();
	test_cells();
	test_baselines();
	test_config();
	test_overlap();
	return check_report();
}
