/* The cache's memory and L1 tiers and the single-flight path, with a file
 * origin: bit flips found and refetched, restarts keep L1, the size bound
 * holds, scans do not flush the hot set, and 16 threads reading overlapping
 * chunks fetch each chunk from the origin exactly once (also run under
 * ThreadSanitizer).  Origin reads are counted by a layer put in above L3. */
#include "cache/internal.h"
#include "tests/check.h"
#include "tests/unit/cache_test_origin.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define N_CHUNKS 96
static const uint8_t salt[16] = "test-salt-l1....";
static struct test_scratch scratch;
static const char *dir = scratch.dir, *origin_uri = scratch.origin_uri, *l1_dir = scratch.l1_dir;

static struct test_chunk chunks[N_CHUNKS];

/* ---- a counting (and optionally delaying) layer above the origin ------------ */

struct counter {
	pthread_mutex_t lock;
	unsigned fetches[N_CHUNKS];
	unsigned total;
	unsigned delay_us;
};

static int find_chunk(const char *name)
{
	for (int i = 0; i < N_CHUNKS; i++)
		if (strcmp(chunks[i].name, name) == 0)
			return i;
	return -1;
}

static int count_read(struct cache_layer *l, struct chunk_req *rq)
{
	struct counter *k = l->state;
	int i = find_chunk(rq->name);
	pthread_mutex_lock(&k->lock);
	if (i >= 0)
		k->fetches[i]++;
	k->total++;
	unsigned delay = k->delay_us;
	pthread_mutex_unlock(&k->lock);
	if (delay)
		usleep(delay);
	return cache_layer_next(l, rq);
}

static const struct cache_layer_ops count_ops = {.name = "count", .read = count_read};

static unsigned origin_reads(struct counter *k)
{
	pthread_mutex_lock(&k->lock);
	unsigned n = k->total;
	pthread_mutex_unlock(&k->lock);
	return n;
}

static void counter_reset(struct counter *k)
{
	pthread_mutex_lock(&k->lock);
	memset(k->fetches, 0, sizeof(k->fetches));
	k->total = 0;
	pthread_mutex_unlock(&k->lock);
}

/* ---- set-up --------------------------------------------------------------------- */

static struct cache *open_cache(uint64_t l1_max, bool mem, struct counter *k)
{
	struct cache_config cfg = {
		.origin_uri = origin_uri,
		.l1_dir = l1_dir,
		.l1_max_bytes = l1_max,
		.mem_disable = !mem,
		.mem_max_bytes = 8u << 20,
		.salt = salt,
		.salt_len = sizeof(salt),
	};
	return test_cache_open(&cfg, k ? &count_ops : NULL, k);
}

static void wipe_l1(void)
{
	DIR *d = opendir(l1_dir);
	struct dirent *de;
	while (d && (de = readdir(d))) {
		if (de->d_name[0] == '.' && (!de->d_name[1] || de->d_name[1] == '.'))
			continue;
		char p[600];
		snprintf(p, sizeof(p), "%s/%s", l1_dir, de->d_name);
		unlink(p);
	}
	if (d)
		closedir(d);
}

static bool read_ok(struct cache *c, int i, uint32_t off, size_t len, enum cache_tier *tier)
{
	uint8_t *buf = malloc(len ? len : 1);
	int r = cache_read(c, chunks[i].name, chunks[i].key, off, buf, len, tier);
	bool ok = r == 0;
	if (ok) {
		size_t have = off < chunks[i].len ? chunks[i].len - off : 0;
		size_t n = len < have ? len : have;
		ok = memcmp(buf, chunks[i].plain + off, n) == 0 && is_all_zero(buf + n, len - n);
	}
	free(buf);
	return ok;
}

#define ENTRY (8192u + CHUNK_SIZE)

/* ---- tests ---------------------------------------------------------------------- */

static void test_tiers_and_ranges(void)
{
	wipe_l1();
	struct counter k = {.lock = PTHREAD_MUTEX_INITIALIZER};
	struct cache *c = open_cache(64ull << 20, true, &k);
	CHECK(c != NULL);
	if (!c)
		return;
	enum cache_tier t;
	CHECK(read_ok(c, 0, 0, CHUNK_SIZE, &t) && t == CACHE_TIER_L3);
	CHECK(read_ok(c, 0, 0, CHUNK_SIZE, &t) && t == CACHE_TIER_MEM);
	cache_evict(c, chunks[0].name);
	CHECK(read_ok(c, 0, 4096, 4096, &t) && t == CACHE_TIER_L3);
	CHECK(read_ok(c, 0, 8192, 4096, &t) && t == CACHE_TIER_L1);
	CHECK(read_ok(c, 0, 8192, 4096, &t) && t == CACHE_TIER_MEM);
	/* unaligned ranges across blocks, and the short last chunk */
	CHECK(read_ok(c, 0, 12345, 70001, &t) && t != CACHE_TIER_NONE);
	CHECK(read_ok(c, 0, CHUNK_SIZE - 5, 5, &t));
	int last = N_CHUNKS - 1;
	CHECK(read_ok(c, last, 0, CHUNK_SIZE, &t) && t == CACHE_TIER_L3);
	cache_evict(c, chunks[last].name);
	CHECK(read_ok(c, last, 0, CHUNK_SIZE, &t) && t == CACHE_TIER_L3);
	CHECK(read_ok(c, last, 100 * 1024, 8192, &t) && t == CACHE_TIER_MEM);
	/* a bad range and a wrong key */
	uint8_t b[16];
	CHECK(cache_read(c, chunks[0].name, chunks[0].key, CHUNK_SIZE - 4, b, 16, NULL) == -EINVAL);
	CHECK(cache_read(c, "nothex", chunks[0].key, 0, b, 16, NULL) == -EINVAL);
	uint8_t bad[CHUNK_KEY_LEN];
	memcpy(bad, chunks[1].key, sizeof(bad));
	bad[0] ^= 1;
	/* A whole-chunk read is decrypted straight into the caller's buffer:
	 * with the wrong key nothing of it may be left there. */
	uint8_t *whole = malloc(CHUNK_SIZE);
	memset(whole, 0x5a, CHUNK_SIZE);
	CHECK(cache_read(c, chunks[1].name, bad, 0, whole, CHUNK_SIZE, &t) == -EIO && t == CACHE_TIER_NONE);
	CHECK(is_all_zero(whole, CHUNK_SIZE));
	free(whole);
	CHECK(cache_read(c, chunks[1].name, bad, 0, b, 16, &t) == -EIO && t == CACHE_TIER_NONE);
	CHECK(read_ok(c, 1, 0, 16, &t));
	char *js = cache_stats_json(c);
	CHECK(js && strstr(js, "\"l1\""));
	free(js);
	cache_free(c);
}

/* cache_read_once: served from memory when there, never copied into it;
 * L1 keeps it as for cache_read. */
static void test_read_once(void)
{
	wipe_l1();
	struct cache *c = open_cache(64ull << 20, true, NULL);
	CHECK(c != NULL);
	if (!c)
		return;
	uint8_t *buf = malloc(CHUNK_SIZE);
	enum cache_tier t;
	struct cache_stats s;
	CHECK(buf && cache_read_once(c, chunks[2].name, chunks[2].key, 0, buf, CHUNK_SIZE, &t) == 0 &&
	      t == CACHE_TIER_L3 && memcmp(buf, chunks[2].plain, CHUNK_SIZE) == 0);
	cache_get_stats(c, &s);
	CHECK(s.mem_bytes == 0);
	cache_wait_l1(c);
	CHECK(cache_read_once(c, chunks[2].name, chunks[2].key, 4096, buf, 8192, &t) == 0 && t == CACHE_TIER_L1 &&
	      memcmp(buf, chunks[2].plain + 4096, 8192) == 0);
	cache_get_stats(c, &s);
	CHECK(s.mem_bytes == 0);
	/* A chunk cache_read put in memory is served from there. */
	CHECK(read_ok(c, 3, 0, CHUNK_SIZE, &t) && t == CACHE_TIER_L3);
	CHECK(cache_read_once(c, chunks[3].name, chunks[3].key, 0, buf, CHUNK_SIZE, &t) == 0 &&
	      t == CACHE_TIER_MEM && memcmp(buf, chunks[3].plain, CHUNK_SIZE) == 0);
	/* The same refusals as cache_read; nothing unverified leaves. */
	uint8_t bad[CHUNK_KEY_LEN];
	memcpy(bad, chunks[4].key, sizeof(bad));
	bad[0] ^= 1;
	CHECK(cache_read_once(c, chunks[4].name, bad, 0, buf, CHUNK_SIZE, &t) == -EIO && t == CACHE_TIER_NONE &&
	      is_all_zero(buf, CHUNK_SIZE));
	CHECK(cache_read_once(c, chunks[4].name, chunks[4].key, CHUNK_SIZE - 4, buf, 16, NULL) == -EINVAL);
	free(buf);
	cache_free(c);
}

/* Flip bit |bit| of byte |off| of chunk |i|'s L1 file. */
static void flip(int i, off_t off, int bit)
{
	char p[600];
	snprintf(p, sizeof(p), "%s/%s", l1_dir, chunks[i].name);
	int fd = open(p, O_RDWR);
	uint8_t b = 0;
	if (fd < 0 || pread(fd, &b, 1, off) != 1)
		fprintf(stderr, "flip: cannot read %s\n", p);
	b ^= (uint8_t)(1u << bit);
	if (fd < 0 || pwrite(fd, &b, 1, off) != 1)
		fprintf(stderr, "flip: cannot write %s\n", p);
	if (fd >= 0)
		close(fd);
}

static void test_bit_flip(void)
{
	wipe_l1();
	struct counter k = {.lock = PTHREAD_MUTEX_INITIALIZER};
	struct cache *c = open_cache(64ull << 20, false, &k);
	if (!c) {
		CHECK(0);
		return;
	}
	enum cache_tier t;
	for (int i = 0; i < 4; i++)
		CHECK(read_ok(c, i, 0, CHUNK_SIZE, &t) && t == CACHE_TIER_L3);
	cache_wait_l1(c); /* L1 files are written in the background */
	counter_reset(&k);
	/* a flip in the data: found by the 4 KiB block check on the next read
	 * that touches that block (whole and small reads alike) */
	flip(0, 8192 + 300000, 3);
	CHECK(read_ok(c, 0, 0, CHUNK_SIZE, &t) && t == CACHE_TIER_L3);
	flip(1, 8192 + 4096 * 7 + 5, 0);
	CHECK(read_ok(c, 1, 4096 * 7, 4096, &t) && t == CACHE_TIER_L3);
	CHECK(k.fetches[0] == 1 && k.fetches[1] == 1);
	struct cache_stats s;
	cache_get_stats(c, &s);
	CHECK(s.tier[CACHE_TIER_L1].corrupt == 2);
	/* refetched into L1, clean again */
	CHECK(read_ok(c, 0, 0, CHUNK_SIZE, &t) && t == CACHE_TIER_L1);
	CHECK(read_ok(c, 1, 4096 * 7, 4096, &t) && t == CACHE_TIER_L1);
	cache_wait_l1(c);
	/* reads of other blocks of a chunk with a flipped block still work,
	 * the flipped block is still caught */
	flip(2, 8192 + 4096 * 100, 7);
	CHECK(read_ok(c, 2, 0, 4096, &t) && t == CACHE_TIER_L1);
	CHECK(read_ok(c, 2, 4096 * 100, 4096, &t) && t == CACHE_TIER_L3);
	cache_free(c);

	/* flips in the header (name, key check, table) are found at start-up */
	flip(3, 20, 1);
	flip(0, 4096 + 64, 2);
	counter_reset(&k);
	c = open_cache(64ull << 20, false, &k);
	if (!c) {
		CHECK(0);
		return;
	}
	CHECK(read_ok(c, 3, 0, 4096, &t) && t == CACHE_TIER_L3);
	CHECK(read_ok(c, 0, 0, 4096, &t) && t == CACHE_TIER_L3);
	CHECK(read_ok(c, 1, 0, 4096, &t) && t == CACHE_TIER_L1);
	CHECK(k.total == 2);
	cache_free(c);
}

static void test_restart(void)
{
	wipe_l1();
	struct counter k = {.lock = PTHREAD_MUTEX_INITIALIZER};
	struct cache *c = open_cache(64ull << 20, true, &k);
	if (!c) {
		CHECK(0);
		return;
	}
	for (int i = 0; i < 24; i++)
		CHECK(read_ok(c, i, 0, CHUNK_SIZE, NULL));
	cache_free(c);
	/* a torn write from a crash, left behind */
	char p[600];
	snprintf(p, sizeof(p), "%s/.tmp-%s.99", l1_dir, chunks[30].name);
	int fd = open(p, O_WRONLY | O_CREAT, 0600);
	CHECK(fd >= 0 && write(fd, "partial", 7) == 7);
	close(fd);
	counter_reset(&k);
	c = open_cache(64ull << 20, true, &k);
	if (!c) {
		CHECK(0);
		return;
	}
	CHECK(access(p, F_OK) != 0);
	struct cache_stats s;
	cache_get_stats(c, &s);
	CHECK(s.l1_entries == 24);
	bool all = true;
	for (int i = 0; i < 24; i++) {
		enum cache_tier t;
		all &= read_ok(c, i, (uint32_t)i * 4096, 4096, &t) && t == CACHE_TIER_L1;
		all &= read_ok(c, i, 0, CHUNK_SIZE, &t) && t == CACHE_TIER_L1;
	}
	CHECK(all);
	CHECK(origin_reads(&k) == 0);
	cache_free(c);
}

static uint64_t rng = 88172645463325252ull;
static uint64_t next_rand(void)
{
	rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
	return rng;
}

static void test_size_bound(void)
{
	wipe_l1();
	uint64_t max = 20ull * ENTRY + 1000;
	struct counter k = {.lock = PTHREAD_MUTEX_INITIALIZER};
	struct cache *c = open_cache(max, false, &k);
	if (!c) {
		CHECK(0);
		return;
	}
	bool ok = true, bound = true;
	for (int n = 0; n < 1500; n++) {
		/* skewed: half the reads go to 10 chunks, the rest anywhere */
		int i = (next_rand() & 1) ? (int)(next_rand() % 10) : (int)(next_rand() % N_CHUNKS);
		uint32_t off = (uint32_t)(next_rand() % CHUNK_SIZE);
		size_t len = 1 + next_rand() % (CHUNK_SIZE - off);
		if (next_rand() % 4)
			len = len > 4096 ? 4096 : len;
		ok &= read_ok(c, i, off, len, NULL);
		if (n % 7 == 0)
			cache_evict(c, chunks[next_rand() % N_CHUNKS].name);
		if (n % 100 == 0) {
			struct cache_stats s;
			cache_get_stats(c, &s);
			bound &= s.l1_bytes <= max;
		}
	}
	CHECK(ok);
	CHECK(bound);
	cache_wait_l1(c); /* no insert half-written while we count files */
	struct cache_stats s;
	cache_get_stats(c, &s);
	unsigned files, tmps;
	uint64_t disk = test_l1_usage(l1_dir, &files, &tmps);
	CHECK(s.l1_bytes <= max && disk <= max && tmps == 0);
	CHECK(files == s.l1_entries);
	/* the hot chunks paid off */
	CHECK(s.tier[CACHE_TIER_L1].hits > s.tier[CACHE_TIER_L1].misses);
	cache_free(c);
}

static void test_scan_resistance(void)
{
	wipe_l1();
	uint64_t max = 20ull * ENTRY;
	struct counter k = {.lock = PTHREAD_MUTEX_INITIALIZER};
	struct cache *c = open_cache(max, false, &k);
	if (!c) {
		CHECK(0);
		return;
	}
	enum { HOT = 8 };
	/* the hot set: read twice (4 KiB reads here and there) */
	for (int round = 0; round < 2; round++)
		for (int i = 0; i < HOT; i++)
			CHECK(read_ok(c, i, 4096u * (unsigned)round, 4096, NULL));
	/* a one-pass scan of 70 other chunks, each read 4 KiB at a time from
	 * start to end the way a file copy would: 3.5x the cache */
	bool ok = true;
	for (int i = HOT; i < HOT + 70; i++)
		for (uint32_t off = 0; off < CHUNK_SIZE; off += 64 * 1024)
			ok &= read_ok(c, i, off, 4096, NULL);
	CHECK(ok);
	counter_reset(&k);
	for (int i = 0; i < HOT; i++)
		CHECK(read_ok(c, i, 0, CHUNK_SIZE, NULL));
	CHECK(origin_reads(&k) == 0);
	struct cache_stats s;
	cache_get_stats(c, &s);
	CHECK(s.l1_bytes <= max);
	cache_free(c);
}

/* A read that comes right after a fetch, before L1's background write has
 * finished, is served by L1 (from the queued chunk), not by a second fetch. */
static void test_insert_queue(void)
{
	wipe_l1();
	struct counter k = {.lock = PTHREAD_MUTEX_INITIALIZER};
	struct cache *c = open_cache(64ull << 20, false, &k);
	if (!c) {
		CHECK(0);
		return;
	}
	enum cache_tier t;
	bool ok = true;
	for (int i = 0; i < 8; i++) {
		ok &= read_ok(c, i, 0, CHUNK_SIZE, &t) && t == CACHE_TIER_L3;
		ok &= read_ok(c, i, 4096, 4096, &t) && t == CACHE_TIER_L1;
	}
	CHECK(ok);
	CHECK(origin_reads(&k) == 8);
	cache_wait_l1(c);
	struct cache_stats s;
	cache_get_stats(c, &s);
	CHECK(s.l1_entries == 8);
	unsigned files, tmps;
	test_l1_usage(l1_dir, &files, &tmps);
	CHECK(files == 8 && tmps == 0);
	cache_free(c);
}

/* ---- 16 threads, overlapping chunks ------------------------------------------- */

#define THREADS 16
#define MT_CHUNKS 24
struct mt_arg {
	struct cache *c;
	int id;
	bool ok;
};

static void *mt_worker(void *p)
{
	struct mt_arg *a = p;
	a->ok = true;
	uint64_t x = 0x1234567ull * (uint64_t)(a->id + 1);
	for (int round = 0; round < 3; round++)
		for (int j = 0; j < MT_CHUNKS; j++) {
			/* threads start at different chunks and go in different
			 * directions, so each chunk is wanted by many at once */
			int i = (a->id % 2) ? (j + a->id) % MT_CHUNKS : (MT_CHUNKS - 1 - j + a->id) % MT_CHUNKS;
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			uint32_t off = (uint32_t)(x % (CHUNK_SIZE / 4096)) * 4096;
			/* a whole chunk (decrypted into this buffer when this
			 * thread leads the fetch; the followers decrypt their
			 * ranges from the ciphertext), the rest of one, or a
			 * block */
			unsigned kind = (unsigned)((x >> 32) % 4);
			if (kind == 0)
				off = 0;
			size_t len = kind == 0 ? CHUNK_SIZE : kind == 1 ? CHUNK_SIZE - off : 4096;
			a->ok &= read_ok(a->c, i, off, len, NULL);
		}
	return NULL;
}

static void test_single_flight(bool mem)
{
	wipe_l1();
	struct counter k = {.lock = PTHREAD_MUTEX_INITIALIZER, .delay_us = 3000};
	struct cache *c = open_cache(256ull << 20, mem, &k);
	if (!c) {
		CHECK(0);
		return;
	}
	pthread_t th[THREADS];
	struct mt_arg args[THREADS];
	for (int t = 0; t < THREADS; t++) {
		args[t] = (struct mt_arg){.c = c, .id = t};
		pthread_create(&th[t], NULL, mt_worker, &args[t]);
	}
	bool ok = true;
	for (int t = 0; t < THREADS; t++) {
		pthread_join(th[t], NULL);
		ok &= args[t].ok;
	}
	CHECK(ok);
	bool once = true;
	for (int i = 0; i < MT_CHUNKS; i++) {
		if (k.fetches[i] != 1)
			fprintf(stderr, "chunk %d fetched %u times from the origin\n", i, k.fetches[i]);
		once &= k.fetches[i] == 1;
	}
	CHECK(once);
	CHECK(k.total == MT_CHUNKS);
	struct cache_stats s;
	cache_get_stats(c, &s);
	CHECK(s.origin_fetches == MT_CHUNKS);
	CHECK(s.singleflight_shared > 0);
	cache_free(c);
}

int main(void)
{
	test_scratch_make("test_cache_l1", &scratch);
	/* the last chunk is short, to cover a partial last block */
	test_chunks_make(origin_uri, salt, sizeof(salt), chunks, N_CHUNKS, CHUNK_SIZE, 100 * 1024 + 123,
			 0x9e3779b97f4a7c15ull);

	test_tiers_and_ranges();
	test_read_once();
	test_bit_flip();
	test_restart();
	test_size_bound();
	test_scan_resistance();
	test_insert_queue();
	test_single_flight(true);
	test_single_flight(false);

	test_chunks_free(chunks, N_CHUNKS);
	test_rm_rf(dir);
	return check_report();
}
