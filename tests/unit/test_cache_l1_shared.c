/* One L1 directory shared by several processes at once, each reading from
 * several threads: every read returns the right bytes, every process uses
 * L1 (none is locked out), a chunk written by one is served to the others
 * from L1, the size bound holds across processes while they evict each
 * other's entries, and an L1 path that cannot be used leaves the cache
 * working without L1, as does one held exclusively by another process past
 * the bounded wait (the origin fetches are counted in cache_stats).
 * The threads of each process run under ThreadSanitizer too. */
#include "cache/internal.h"
#include "tests/check.h"
#include "tests/unit/cache_test_origin.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define N_CHUNKS 24
#define CHUNK_LEN (64u * 1024u) /* short chunks keep the test quick; the format allows any length */
#define ENTRY (8192u + CHUNK_LEN)
#define PROCS 4
#define THREADS 4
#define WAIT_S 120 /* every process is killed by alarm() after this: no test hangs */

static const uint8_t salt[16] = "test-salt-share.";
static struct test_scratch scratch;
static const char *dir = scratch.dir, *origin_uri = scratch.origin_uri, *l1_dir = scratch.l1_dir;

static struct test_chunk chunks[N_CHUNKS];

/* ---- set-up ------------------------------------------------------------------------ */

static struct cache *open_cache(const char *l1, uint64_t l1_max)
{
	struct cache_config cfg = {
		.origin_uri = origin_uri,
		.l1_dir = l1,
		.l1_max_bytes = l1_max,
		.mem_disable = true,
		.salt = salt,
		.salt_len = sizeof(salt),
	};
	return test_cache_open(&cfg, NULL, NULL);
}

static void wipe_l1(void)
{
	test_rm_rf(l1_dir);
}

static bool read_ok(struct cache *c, int i, uint32_t off, size_t len, enum cache_tier *tier)
{
	uint8_t *buf = malloc(len);
	bool ok = buf && cache_read(c, chunks[i].name, chunks[i].key, off, buf, len, tier) == 0 &&
		  memcmp(buf, chunks[i].plain + off, len) == 0;
	free(buf);
	return ok;
}

/* ---- the readers: PROCS processes of THREADS threads ------------------------------ */

struct reader {
	struct cache *c;
	unsigned seed;
	int n_chunks;		/* read chunks [0, n_chunks) */
	unsigned rounds;
	bool evict;		/* also drop chunks now and then (cache_evict) */
	bool ok;
};

static void *reader_main(void *arg)
{
	struct reader *rd = arg;
	uint64_t x = 0x2545f4914f6cdd1dull * (rd->seed + 1);
	rd->ok = true;
	for (unsigned n = 0; n < rd->rounds * (unsigned)rd->n_chunks; n++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		int i = (int)(x % (uint64_t)rd->n_chunks);
		uint32_t off = (uint32_t)((x >> 20) % CHUNK_LEN);
		size_t len = (x >> 40) & 1 ? CHUNK_LEN - off : (CHUNK_LEN - off < 4096 ? CHUNK_LEN - off : 4096);
		rd->ok &= read_ok(rd->c, i, off, len, NULL);
		if (rd->evict && (x >> 50) % 16 == 0)
			cache_evict(rd->c, chunks[(x >> 30) % (uint64_t)rd->n_chunks].name);
	}
	return NULL;
}

/* One process: a cache on the shared L1 and THREADS readers.  Exit status
 * 0 when every read was right and L1 was on and served reads. */
static int child_main(int proc, uint64_t l1_max, int n_chunks, unsigned rounds, bool evict)
{
	alarm(WAIT_S);
	struct cache *c = open_cache(l1_dir, l1_max);
	if (!c)
		return 2;
	struct reader rd[THREADS];
	pthread_t t[THREADS];
	for (int i = 0; i < THREADS; i++) {
		rd[i] = (struct reader){.c = c, .seed = (unsigned)(proc * THREADS + i), .n_chunks = n_chunks,
					.rounds = rounds, .evict = evict};
		if (pthread_create(&t[i], NULL, reader_main, &rd[i]) != 0)
			return 3;
	}
	bool ok = true;
	for (int i = 0; i < THREADS; i++) {
		pthread_join(t[i], NULL);
		ok &= rd[i].ok;
	}
	struct cache_stats s;
	cache_get_stats(c, &s);
	bool l1_used = s.l1_max_bytes == l1_max && s.tier[CACHE_TIER_L1].hits > 0;
	cache_free(c);
	if (!ok)
		return 4;
	return l1_used ? 0 : 5;
}

/* Run PROCS processes at once (child_main); true when all exited 0. */
static bool run_procs(uint64_t l1_max, int n_chunks, unsigned rounds, bool evict)
{
	pid_t pids[PROCS];
	for (int p = 0; p < PROCS; p++) {
		fflush(NULL);
		pids[p] = fork();
		if (pids[p] == 0)
			_exit(child_main(p, l1_max, n_chunks, rounds, evict));
		if (pids[p] < 0) {
			perror("fork");
			return false;
		}
	}
	bool ok = true;
	for (int p = 0; p < PROCS; p++) {
		int st = 0;
		while (waitpid(pids[p], &st, 0) < 0 && errno == EINTR)
			;
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			fprintf(stderr, "reader process %d: %s %d\n", p, WIFEXITED(st) ? "exit" : "signal",
				WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
			ok = false;
		}
	}
	return ok;
}

/* ---- tests ------------------------------------------------------------------------------ */

/* Room for everything: all processes fill one L1, and afterwards a new
 * process reads every chunk from L1 without touching the origin. */
static void test_shared_fill(void)
{
	wipe_l1();
	uint64_t max = 64ull << 20;
	CHECK(run_procs(max, N_CHUNKS, 3, false));
	unsigned files, tmps;
	uint64_t disk = test_l1_usage(l1_dir, &files, &tmps);
	CHECK(files == N_CHUNKS && tmps == 0 && disk == (uint64_t)N_CHUNKS * ENTRY);

	struct cache *c = open_cache(l1_dir, max);
	if (!c) {
		CHECK(0);
		return;
	}
	bool all = true;
	for (int i = 0; i < N_CHUNKS; i++) {
		enum cache_tier t;
		all &= read_ok(c, i, 0, CHUNK_LEN, &t) && t == CACHE_TIER_L1;
	}
	CHECK(all);
	struct cache_stats s;
	cache_get_stats(c, &s);
	CHECK(s.origin_fetches == 0);
	CHECK(s.l1_entries == N_CHUNKS && s.l1_bytes == disk);
	cache_free(c);
}

/* A bound of 6 entries for 16 chunks: the processes evict each other's
 * entries while they read.  Every read is right, and once a new process
 * has recounted the directory the bound holds exactly. */
static void test_shared_bound(void)
{
	wipe_l1();
	uint64_t max = 6ull * ENTRY;
	CHECK(run_procs(max, 16, 4, true));
	unsigned files, tmps;
	uint64_t disk = test_l1_usage(l1_dir, &files, &tmps);
	/* the shared counters are exact but for races with a rescan: allow a
	 * few entries over until the next exclusive start recounts */
	CHECK(tmps == 0 && disk <= max + (uint64_t)PROCS * ENTRY);

	struct cache *c = open_cache(l1_dir, max);
	if (!c) {
		CHECK(0);
		return;
	}
	disk = test_l1_usage(l1_dir, &files, &tmps);
	struct cache_stats s;
	cache_get_stats(c, &s);
	CHECK(disk <= max && s.l1_bytes == disk && s.l1_entries == files);
	bool all = true;
	for (int i = 0; i < 16; i++)
		all &= read_ok(c, i, 0, CHUNK_LEN, NULL);
	CHECK(all);
	cache_wait_l1(c);
	cache_get_stats(c, &s);
	disk = test_l1_usage(l1_dir, &files, &tmps);
	CHECK(disk <= max && s.l1_bytes == disk && s.l1_evictions > 0);
	cache_free(c);
}

/* Two handles on one directory, as two processes would have: what one
 * writes after the other opened is an L1 hit in the other (taken in on the
 * miss), and an eviction by one is at worst a clean miss in the other: a
 * file it has open still reads (its inode), one it indexed but never opened
 * is a miss, not corruption. */
static void test_two_handles(void)
{
	wipe_l1();
	uint64_t max = 64ull << 20;
	struct cache *a = open_cache(l1_dir, max), *b = NULL;
	if (!a) {
		CHECK(0);
		return;
	}
	enum cache_tier t;
	CHECK(read_ok(a, 3, 0, CHUNK_LEN, &t) && t == CACHE_TIER_L3);
	CHECK(read_ok(a, 5, 0, CHUNK_LEN, &t) && t == CACHE_TIER_L3);
	cache_wait_l1(a);
	b = open_cache(l1_dir, max); /* indexes 3 and 5 in its scan */
	if (!b) {
		CHECK(0);
		cache_free(a);
		return;
	}
	CHECK(read_ok(b, 3, 4096, 8192, &t) && t == CACHE_TIER_L1); /* opens 3 */
	CHECK(read_ok(a, 7, 0, CHUNK_LEN, &t) && t == CACHE_TIER_L3);
	cache_wait_l1(a);
	CHECK(read_ok(b, 7, 0, CHUNK_LEN, &t) && t == CACHE_TIER_L1); /* taken in on the miss */
	struct cache_stats s;
	cache_get_stats(b, &s);
	CHECK(s.origin_fetches == 0);
	CHECK(s.l1_entries == 3 && s.l1_bytes == 3ull * ENTRY);
	cache_evict(a, chunks[3].name);
	cache_evict(a, chunks[5].name);
	CHECK(read_ok(b, 3, 0, CHUNK_LEN, &t) && t == CACHE_TIER_L1);
	CHECK(read_ok(b, 5, 0, CHUNK_LEN, &t) && t == CACHE_TIER_L3);
	cache_get_stats(b, &s);
	CHECK(s.tier[CACHE_TIER_L1].corrupt == 0);
	CHECK(s.origin_fetches == 1);
	cache_free(a);
	cache_free(b);
}

/* An L1 path that cannot be used does not stop the cache: it runs without
 * L1 and reads come from the origin. */
static void test_unusable(void)
{
	char p[600];
	/* a regular file where the directory should be: fails for root too */
	snprintf(p, sizeof(p), "%s/not-a-dir", dir);
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	CHECK(fd >= 0);
	if (fd >= 0)
		close(fd);
	struct cache *c = open_cache(p, 64ull << 20);
	CHECK(c != NULL);
	if (c) {
		enum cache_tier t;
		struct cache_stats s;
		cache_get_stats(c, &s);
		CHECK(s.l1_max_bytes == 0);
		CHECK(read_ok(c, 1, 0, CHUNK_LEN, &t) && t == CACHE_TIER_L3);
		cache_free(c);
	}
	/* another process holding the lock exclusively (as one from before L1
	 * was shared would): cache_new waits its bounded time, then goes on
	 * without L1 */
	wipe_l1();
	snprintf(p, sizeof(p), "%s/.lock", l1_dir);
	CHECK(mkdir_p(l1_dir, 0700) == 0);
	fd = open(p, O_RDWR | O_CREAT, 0600);
	CHECK(fd >= 0 && flock(fd, LOCK_EX) == 0);
	c = open_cache(l1_dir, 64ull << 20);
	CHECK(c != NULL);
	if (c) {
		struct cache_stats s;
		cache_get_stats(c, &s);
		CHECK(s.l1_max_bytes == 0);
		cache_free(c);
	}
	if (fd >= 0)
		close(fd);
	/* a directory where the shared counters' file should be */
	wipe_l1();
	snprintf(p, sizeof(p), "%s/.usage", l1_dir);
	CHECK(mkdir_p(p, 0700) == 0);
	c = open_cache(l1_dir, 64ull << 20);
	CHECK(c != NULL);
	if (c) {
		enum cache_tier t;
		CHECK(read_ok(c, 2, 0, CHUNK_LEN, &t) && t == CACHE_TIER_L3);
		cache_free(c);
	}
}

int main(void)
{
	test_scratch_make("test_cache_l1_shared", &scratch);
	alarm(4 * WAIT_S);
	test_chunks_make(origin_uri, salt, sizeof(salt), chunks, N_CHUNKS, CHUNK_LEN, CHUNK_LEN, 0x9e3779b97f4a7c15ull);

	test_shared_fill();
	test_shared_bound();
	test_two_handles();
	test_unusable();

	test_chunks_free(chunks, N_CHUNKS);
	test_rm_rf(dir);
	return check_report();
}
