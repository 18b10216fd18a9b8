/* randread: latency of 4 KiB random reads of a file, over chunks that are
 * already resident (bench/coldstart.sh).
 *
 *   randread FILE INDEX_FILE COUNT [--drop-page-cache] [--seed N]
 *
 * INDEX_FILE lists 512 KiB chunk indexes, one per line.  First every listed
 * chunk is read whole (so an L1 cache behind FILE holds it), then, with
 * --drop-page-cache, the kernel's page cache of FILE is dropped
 * (POSIX_FADV_DONTNEED): for blockd's image.raw this makes every later read
 * go through FUSE to blockd instead of being answered by the kernel.  Then
 * COUNT distinct 4 KiB blocks chosen at random inside those chunks are read
 * with pread, in random order, under POSIX_FADV_RANDOM so the kernel adds no
 * readahead.  Prints one JSON object: reads, p50/p90/p99/mean in
 * microseconds, and how many sampled pages were still in the page cache
 * before the timed reads (mincore; 0 is what a FUSE measurement wants).
 */
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (512u * 1024u)
#define BLOCK 4096u

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* xorshift64*: a seeded generator local to this run, so runs repeat. */
static uint64_t next_rand(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 2685821657736338717ull;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: randread FILE INDEX_FILE COUNT [--drop-page-cache] [--seed N]\n");
		return 2;
	}
	bool drop = false;
	uint64_t seed = 42;
	for (int i = 4; i < argc; i++) {
		if (strcmp(argv[i], "--drop-page-cache") == 0)
			drop = true;
		else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc)
			seed = strtoull(argv[++i], NULL, 10) | 1;
		else {
			fprintf(stderr, "randread: bad option %s\n", argv[i]);
			return 2;
		}
	}
	size_t count = strtoul(argv[3], NULL, 10);
	int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
	FILE *ixf = fopen(argv[2], "re");
	struct stat st;
	if (fd < 0 || !ixf || fstat(fd, &st) < 0) {
		fprintf(stderr, "randread: open %s / %s: %s\n", argv[1], argv[2], strerror(errno));
		return 1;
	}
	size_t n_idx = 0, cap = 0;
	uint64_t *idx = NULL, v;
	while (fscanf(ixf, "%" SCNu64, &v) == 1) {
		if ((v + 1) * CHUNK > (uint64_t)st.st_size)
			continue;
		if (n_idx == cap) {
			cap = cap ? cap * 2 : 256;
			uint64_t *nidx = realloc(idx, cap * sizeof(*idx));
			if (!nidx)
				return 1;
			idx = nidx;
		}
		idx[n_idx++] = v;
	}
	fclose(ixf);
	size_t blocks = n_idx * (CHUNK / BLOCK);
	if (!n_idx || count == 0 || count > blocks) {
		fprintf(stderr, "randread: %zu chunks listed (%zu blocks); cannot take %zu distinct reads\n", n_idx,
			blocks, count);
		return 1;
	}
	char *buf = malloc(CHUNK);
	if (!buf)
		return 1;
	/* Warm: every listed chunk read whole. */
	for (size_t i = 0; i < n_idx; i++)
		if (pread(fd, buf, CHUNK, (off_t)(idx[i] * CHUNK)) != (ssize_t)CHUNK) {
			fprintf(stderr, "randread: warm read of chunk %" PRIu64 ": %s\n", idx[i], strerror(errno));
			return 1;
		}
	if (drop)
		posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);

	/* |count| distinct blocks: a partial Fisher-Yates shuffle of all blocks. */
	uint32_t *perm = malloc(blocks * sizeof(*perm));
	double *lat = malloc(count * sizeof(*lat));
	if (!perm || !lat)
		return 1;
	for (size_t i = 0; i < blocks; i++)
		perm[i] = (uint32_t)i;
	for (size_t i = 0; i < count; i++) {
		size_t j = i + (size_t)(next_rand(&seed) % (blocks - i));
		uint32_t t = perm[i];
		perm[i] = perm[j];
		perm[j] = t;
	}
	/* How many sampled pages the kernel still caches (mmap + mincore). */
	size_t cached = 0;
	void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	if (map != MAP_FAILED) {
		for (size_t i = 0; i < count; i++) {
			uint64_t off = idx[perm[i] / (CHUNK / BLOCK)] * CHUNK + (uint64_t)(perm[i] % (CHUNK / BLOCK)) * BLOCK;
			unsigned char vec = 0;
			if (mincore((char *)map + off, BLOCK, &vec) == 0)
				cached += vec & 1;
		}
		munmap(map, (size_t)st.st_size);
	}
	double sum = 0;
	for (size_t i = 0; i < count; i++) {
		uint64_t off = idx[perm[i] / (CHUNK / BLOCK)] * CHUNK + (uint64_t)(perm[i] % (CHUNK / BLOCK)) * BLOCK;
		double t0 = now_us();
		if (pread(fd, buf, BLOCK, (off_t)off) != (ssize_t)BLOCK) {
			fprintf(stderr, "randread: pread at %" PRIu64 ": %s\n", off, strerror(errno));
			return 1;
		}
		lat[i] = now_us() - t0;
		sum += lat[i];
	}
	qsort(lat, count, sizeof(*lat), cmp_double);
	printf("{\"reads\":%zu,\"p50_us\":%.2f,\"p90_us\":%.2f,\"p99_us\":%.2f,\"mean_us\":%.2f,\"page_cached_before\":%zu}\n",
	       count, lat[count / 2], lat[count * 9 / 10], lat[count * 99 / 100], sum / (double)count, cached);
	free(lat);
	free(perm);
	free(buf);
	free(idx);
	close(fd);
	return 0;
}
