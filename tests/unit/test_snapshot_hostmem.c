/* The host memory tier (snapshot/hostmem.c): what it keeps reads back; a
 * damaged chunk, a foreign or half-made file and a directory others can
 * write are not trusted; eviction keeps the bound; concurrent users of one
 * snapshot (threads with handles of their own, as separate restores have)
 * agree byte for byte. */
#include "common/common.h"
#include "snapshot/snapshot.h"
#include "tests/check.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MEM_SIZE (4 * CHUNK_SIZE + 8192) /* the last chunk is cut short */
#define DIGEST_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define DIGEST_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define DIGEST_C "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"
#define THREADS 4

static uint8_t *chunk_bytes(uint64_t index)
{
	uint8_t *b = malloc(CHUNK_SIZE);
	for (size_t i = 0; b && i < CHUNK_SIZE; i++)
		b[i] = (uint8_t)(i * 7 + index * 31 + (i >> 12));
	return b;
}

static char *file_of(const char *dir, const char *digest)
{
	return xasprintf("%s/%s.mem", dir, digest);
}

static void test_round_trip_and_damage(const char *dir)
{
	struct snapshot_hostmem_options o = {.dir = dir};
	struct snapshot_hostmem *h = NULL;
	uint8_t *b = chunk_bytes(1), *got = malloc(CHUNK_SIZE);
	CHECK(snapshot_hostmem_open(&o, DIGEST_A, MEM_SIZE, &h) == 0 && h);
	CHECK(snapshot_hostmem_get(h, 1, got, CHUNK_SIZE) == -ENOENT);
	CHECK(snapshot_hostmem_put(h, 1, b, CHUNK_SIZE) == 0);
	CHECK(snapshot_hostmem_get(h, 1, got, CHUNK_SIZE) == 0 && memcmp(got, b, CHUNK_SIZE) == 0);
	/* The last chunk holds 8192 bytes. */
	CHECK(snapshot_hostmem_put(h, 4, b, CHUNK_SIZE) == 0);
	CHECK(snapshot_hostmem_get(h, 4, got, CHUNK_SIZE) == 0 && memcmp(got, b, 8192) == 0);
	CHECK(snapshot_hostmem_get(h, 5, got, CHUNK_SIZE) == -EINVAL);
	CHECK(snapshot_hostmem_get(h, 1, got, 4096) == -EINVAL);
	snapshot_hostmem_close(h);

	/* A later open (another restore) finds what was kept. */
	CHECK(snapshot_hostmem_open(&o, DIGEST_A, MEM_SIZE, &h) == 0);
	CHECK(snapshot_hostmem_get(h, 1, got, CHUNK_SIZE) == 0 && memcmp(got, b, CHUNK_SIZE) == 0);

	/* One flipped byte of the kept memory: detected, not served. */
	char *path = file_of(dir, DIGEST_A);
	int fd = open(path, O_RDWR);
	struct stat st;
	CHECK(fd >= 0 && fstat(fd, &st) == 0);
	off_t at = st.st_size - MEM_SIZE + CHUNK_SIZE + 1000; /* data of chunk 1 */
	uint8_t x = 0;
	CHECK(pread(fd, &x, 1, at) == 1);
	x ^= 0x40;
	CHECK(pwrite(fd, &x, 1, at) == 1);
	CHECK(snapshot_hostmem_get(h, 1, got, CHUNK_SIZE) == -EBADMSG);
	/* Put back (as the server does after fetching it again): whole again. */
	CHECK(snapshot_hostmem_put(h, 1, b, CHUNK_SIZE) == 0);
	CHECK(snapshot_hostmem_get(h, 1, got, CHUNK_SIZE) == 0 && memcmp(got, b, CHUNK_SIZE) == 0);
	/* An entry whose bytes never landed (a writer stopped between them):
	 * copy chunk 1's entry onto chunk 2, whose data is a hole. */
	uint8_t e[16];
	CHECK(pread(fd, e, sizeof(e), 4096 + 16) == 16 && pwrite(fd, e, sizeof(e), 4096 + 2 * 16) == 16);
	CHECK(snapshot_hostmem_get(h, 2, got, CHUNK_SIZE) == -EBADMSG);
	close(fd);
	snapshot_hostmem_close(h);
	free(path);
	free(b);
	free(got);
}

static void test_foreign_and_incomplete(const char *dir)
{
	struct snapshot_hostmem_options o = {.dir = dir};
	struct snapshot_hostmem *h = NULL;
	uint8_t *b = chunk_bytes(0), *got = malloc(CHUNK_SIZE);
	char *path = file_of(dir, DIGEST_B);

	/* A file of another snapshot's shape under this name: its header
	 * says another digest.  Made by opening DIGEST_C and renaming. */
	char *pc = file_of(dir, DIGEST_C);
	CHECK(snapshot_hostmem_open(&o, DIGEST_C, MEM_SIZE, &h) == 0);
	CHECK(snapshot_hostmem_put(h, 0, b, CHUNK_SIZE) == 0);
	snapshot_hostmem_close(h);
	CHECK(rename(pc, path) == 0);
	CHECK(snapshot_hostmem_open(&o, DIGEST_B, MEM_SIZE, &h) == 0);
	CHECK(snapshot_hostmem_get(h, 0, got, CHUNK_SIZE) == -ENOENT); /* replaced, not trusted */
	snapshot_hostmem_close(h);

	/* Same digest, another memory size (a different header). */
	CHECK(snapshot_hostmem_open(&o, DIGEST_B, MEM_SIZE, &h) == 0);
	CHECK(snapshot_hostmem_put(h, 0, b, CHUNK_SIZE) == 0);
	snapshot_hostmem_close(h);
	CHECK(snapshot_hostmem_open(&o, DIGEST_B, MEM_SIZE + 4096, &h) == 0);
	CHECK(snapshot_hostmem_get(h, 0, got, CHUNK_SIZE) == -ENOENT);
	snapshot_hostmem_close(h);

	/* Cut short (a half-made file): replaced. */
	CHECK(snapshot_hostmem_open(&o, DIGEST_B, MEM_SIZE, &h) == 0);
	CHECK(snapshot_hostmem_put(h, 0, b, CHUNK_SIZE) == 0);
	snapshot_hostmem_close(h);
	CHECK(truncate(path, 8192) == 0);
	CHECK(snapshot_hostmem_open(&o, DIGEST_B, MEM_SIZE, &h) == 0);
	CHECK(snapshot_hostmem_get(h, 0, got, CHUNK_SIZE) == -ENOENT);
	snapshot_hostmem_close(h);

	/* Garbage, readable by others, and a symlink: none is used. */
	CHECK(unlink(path) == 0);
	CHECK(write_file_atomic(path, "not a snapshot", 14, 0644) == 0);
	CHECK(snapshot_hostmem_open(&o, DIGEST_B, MEM_SIZE, &h) == 0);
	CHECK(snapshot_hostmem_get(h, 0, got, CHUNK_SIZE) == -ENOENT);
	struct stat st;
	CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
	snapshot_hostmem_close(h);
	CHECK(unlink(path) == 0 && symlink("/dev/zero", path) == 0);
	CHECK(snapshot_hostmem_open(&o, DIGEST_B, MEM_SIZE, &h) == 0);
	CHECK(lstat(path, &st) == 0 && S_ISREG(st.st_mode));
	snapshot_hostmem_close(h);

	/* A tier directory others can write into is not used at all. */
	char *open_dir = xasprintf("%s/open", dir);
	CHECK(mkdir(open_dir, 0777) == 0 && chmod(open_dir, 0777) == 0);
	struct snapshot_hostmem_options bad = {.dir = open_dir};
	CHECK(snapshot_hostmem_open(&bad, DIGEST_B, MEM_SIZE, &h) == -EPERM && !h);
	rmdir(open_dir);
	/* Nor one whose parent others can write (they could swap the tier);
	 * a sticky parent, as /tmp and /dev/shm are, is fine. */
	char *loose_tier = xasprintf("%s/loose", open_dir);
	CHECK(mkdir(open_dir, 0700) == 0 && chmod(open_dir, 0777) == 0);
	struct snapshot_hostmem_options loose = {.dir = loose_tier};
	CHECK(snapshot_hostmem_open(&loose, DIGEST_B, MEM_SIZE, &h) == -EPERM && !h);
	CHECK(chmod(open_dir, 01777) == 0);
	CHECK(snapshot_hostmem_open(&loose, DIGEST_B, MEM_SIZE, &h) == 0 && h);
	snapshot_hostmem_close(h);
	free(loose_tier);
	free(open_dir);

	free(pc);
	free(path);
	free(b);
	free(got);
}

static void test_eviction(const char *dir)
{
	/* Each file is 4 KiB of header, 4 KiB of entries and MEM_SIZE; room for two. */
	uint64_t one = 8192 + MEM_SIZE;
	struct snapshot_hostmem_options o = {.dir = dir, .max_bytes = 2 * one + 4096};
	struct snapshot_hostmem *h = NULL;
	uint8_t *b = chunk_bytes(3);
	const char *digests[3] = {DIGEST_A, DIGEST_B, DIGEST_C};
	for (int i = 0; i < 3; i++) {
		CHECK(snapshot_hostmem_open(&o, digests[i], MEM_SIZE, &h) == 0);
		for (uint64_t c = 0; c < 4; c++)
			CHECK(snapshot_hostmem_put(h, c, b, CHUNK_SIZE) == 0);
		snapshot_hostmem_close(h);
		usleep(10000); /* distinct modification times: the LRU's order */
	}
	/* A was used least recently: evicted when C made room. */
	char *pa = file_of(dir, DIGEST_A), *pb = file_of(dir, DIGEST_B), *pc = file_of(dir, DIGEST_C);
	CHECK(access(pa, F_OK) != 0 && access(pb, F_OK) == 0 && access(pc, F_OK) == 0);
	/* Opening B again makes C the oldest; A's return evicts C. */
	CHECK(snapshot_hostmem_open(&o, DIGEST_B, MEM_SIZE, &h) == 0);
	snapshot_hostmem_close(h);
	usleep(10000);
	CHECK(snapshot_hostmem_open(&o, DIGEST_A, MEM_SIZE, &h) == 0);
	snapshot_hostmem_close(h);
	CHECK(access(pa, F_OK) == 0 && access(pb, F_OK) == 0 && access(pc, F_OK) != 0);
	/* A snapshot larger than the whole bound is not kept at all. */
	struct snapshot_hostmem_options tiny = {.dir = dir, .max_bytes = MEM_SIZE};
	CHECK(snapshot_hostmem_open(&tiny, DIGEST_C, MEM_SIZE, &h) == -ENOSPC && !h);
	free(pa);
	free(pb);
	free(pc);
	free(b);
}

struct user {
	const char *dir;
	int id, failures;
};

/* One restore: opens the file itself (racing the others' creation), puts
 * every chunk and reads every chunk back. */
static void *user_main(void *arg)
{
	struct user *u = arg;
	struct snapshot_hostmem_options o = {.dir = u->dir};
	struct snapshot_hostmem *h = NULL;
	uint8_t *got = malloc(CHUNK_SIZE);
	if (snapshot_hostmem_open(&o, DIGEST_C, MEM_SIZE, &h) < 0 || !got) {
		u->failures++;
		free(got);
		return NULL;
	}
	for (int round = 0; round < 3; round++)
		for (uint64_t c = 0; c < 5; c++) {
			uint64_t index = (c + (uint64_t)u->id) % 5;
			uint8_t *want = chunk_bytes(index);
			int r = snapshot_hostmem_get(h, index, got, CHUNK_SIZE);
			if (r == 0 && memcmp(got, want, index == 4 ? 8192 : CHUNK_SIZE) != 0)
				u->failures++; /* served bytes that are not the chunk's */
			else if (r != 0 && r != -ENOENT && r != -EBADMSG)
				u->failures++;
			if (r != 0 && snapshot_hostmem_put(h, index, want, CHUNK_SIZE) < 0)
				u->failures++;
			free(want);
		}
	/* After everyone's puts finished for this user: all present. */
	for (uint64_t c = 0; c < 5; c++) {
		uint8_t *want = chunk_bytes(c);
		int r = snapshot_hostmem_get(h, c, got, CHUNK_SIZE);
		if (r < 0 && snapshot_hostmem_put(h, c, want, CHUNK_SIZE) < 0)
			u->failures++;
		free(want);
	}
	snapshot_hostmem_close(h);
	free(got);
	return NULL;
}

static void test_concurrent_users(const char *dir)
{
	char *sub = xasprintf("%s/concurrent", dir);
	pthread_t t[THREADS];
	struct user u[THREADS];
	for (int i = 0; i < THREADS; i++) {
		u[i] = (struct user){.dir = sub, .id = i};
		CHECK(pthread_create(&t[i], NULL, user_main, &u[i]) == 0);
	}
	for (int i = 0; i < THREADS; i++) {
		pthread_join(t[i], NULL);
		CHECK(u[i].failures == 0);
	}
	/* Afterwards the one file holds every chunk whole. */
	struct snapshot_hostmem_options o = {.dir = sub};
	struct snapshot_hostmem *h = NULL;
	uint8_t *got = malloc(CHUNK_SIZE);
	CHECK(snapshot_hostmem_open(&o, DIGEST_C, MEM_SIZE, &h) == 0);
	for (uint64_t c = 0; h && c < 5; c++) {
		uint8_t *want = chunk_bytes(c);
		CHECK(snapshot_hostmem_get(h, c, got, CHUNK_SIZE) == 0 && memcmp(got, want, c == 4 ? 8192 : CHUNK_SIZE) == 0);
		free(want);
	}
	snapshot_hostmem_close(h);
	free(got);
	free(sub);
}

int main(void)
{
	log_set_level(LOG_SILENT);
	char tmpl[] = "/tmp/test_hostmem.XXXXXX";
	char *dir = mkdtemp(tmpl);
	CHECK(dir != NULL);
	if (!dir)
		return check_report();
	char *tier = xasprintf("%s/tier", dir);
	test_round_trip_and_damage(tier);
	test_foreign_and_incomplete(tier);
	test_eviction(tier);
	test_concurrent_users(tier);
	char *cmd = xasprintf("rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", dir);
	free(cmd);
	free(tier);
	return check_report();
}
