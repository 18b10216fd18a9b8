/* cache_reader: read every chunk of an image through cache_read and check
 * the bytes against the exported image; print per-tier counts as JSON.
 *
 *   cache_reader --store URI --origin URI [--l2 H:P,...] [--k N --m N]
 *                [--l1-dir DIR] [--mem] [--threads N] [--passes N]
 *                [--kill-at N --kill-pid PID ...] IMAGE EXPORTED_FILE
 *
 * --store is where the manifest (and the salt and tenant key, from
 * KINDLING_HOME) are; --origin is the cache's L3 and may be an empty store.
 * --kill-at N sends SIGKILL to every --kill-pid (servers the calling test
 * started) once N chunks have been read: a node dies in the middle of a run.
 * --list prints "INDEX NAME KEYHEX" per chunk instead, and reads nothing.
 * Exit 0 if every chunk read back byte-identical, 1 otherwise. */
#include "chunker/chunker.h"
#include "common/common.h"
#include "cache/cache.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct run {
	struct cache *cache;
	const struct manifest *m;
	int img_fd;
	size_t next;		/* atomic */
	uint64_t bad, errors;	/* atomic */
	uint64_t by_tier[CACHE_TIER_COUNT];
	size_t kill_at;
	pid_t kill_pids[8];
	size_t n_kill;
	int killed;		/* atomic */
	size_t total;
};

static void *reader(void *arg)
{
	struct run *r = arg;
	uint8_t *buf = malloc(CHUNK_SIZE), *want = malloc(CHUNK_SIZE);
	for (;;) {
		size_t i = __atomic_fetch_add(&r->next, 1, __ATOMIC_RELAXED);
		if (i >= r->total)
			break;
		if (r->n_kill && i >= r->kill_at && __atomic_exchange_n(&r->killed, 1, __ATOMIC_RELAXED) == 0)
			for (size_t k = 0; k < r->n_kill; k++)
				kill(r->kill_pids[k], SIGKILL);
		const struct manifest_chunk *mc = &r->m->chunks[i % r->m->n_chunks];
		enum cache_tier t;
		int e = cache_read(r->cache, mc->name, mc->key, 0, buf, CHUNK_SIZE, &t);
		if (e < 0) {
			fprintf(stderr, "chunk %llu (%s): cache_read: %s\n", (unsigned long long)mc->index, mc->name,
				strerror(-e));
			__atomic_fetch_add(&r->errors, 1, __ATOMIC_RELAXED);
			continue;
		}
		__atomic_fetch_add(&r->by_tier[t], 1, __ATOMIC_RELAXED);
		if (pread(r->img_fd, want, CHUNK_SIZE, (off_t)(mc->index * CHUNK_SIZE)) != CHUNK_SIZE ||
		    memcmp(buf, want, CHUNK_SIZE) != 0) {
			fprintf(stderr, "chunk %llu (%s): WRONG BYTES from %s\n", (unsigned long long)mc->index, mc->name,
				cache_tier_name(t));
			__atomic_fetch_add(&r->bad, 1, __ATOMIC_RELAXED);
		}
	}
	free(buf);
	free(want);
	return NULL;
}

int main(int argc, char **argv)
{
	const char *store = NULL, *origin = NULL, *l1 = NULL;
	char *l2 = NULL;
	unsigned k = 0, m = 1, threads = 1, passes = 1;
	bool mem = false, list = false;
	struct run run = {.img_fd = -1};
	static const struct option opts[] = {
		{"store", required_argument, NULL, 's'}, {"origin", required_argument, NULL, 'o'},
		{"l2", required_argument, NULL, 'n'},	 {"k", required_argument, NULL, 'k'},
		{"m", required_argument, NULL, 'm'},	 {"l1-dir", required_argument, NULL, 'd'},
		{"mem", no_argument, NULL, 'M'},	 {"threads", required_argument, NULL, 't'},
		{"passes", required_argument, NULL, 'p'}, {"kill-at", required_argument, NULL, 'a'},
		{"kill-pid", required_argument, NULL, 'P'}, {"list", no_argument, NULL, 'L'},
		{NULL, 0, NULL, 0},
	};
	int ch;
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 's': store = optarg; break;
		case 'o': origin = optarg; break;
		case 'n': l2 = strdup(optarg); break;
		case 'k': k = (unsigned)atoi(optarg); break;
		case 'm': m = (unsigned)atoi(optarg); break;
		case 'd': l1 = optarg; break;
		case 'M': mem = true; break;
		case 'L': list = true; break;
		case 't': threads = (unsigned)atoi(optarg); break;
		case 'p': passes = (unsigned)atoi(optarg); break;
		case 'a': run.kill_at = (size_t)atoll(optarg); break;
		case 'P':
			if (run.n_kill < 8)
				run.kill_pids[run.n_kill++] = (pid_t)atoi(optarg);
			break;
		default: return 2;
		}
	}
	if (argc - optind != 2 || !store || !origin || threads < 1 || threads > 64) {
		fprintf(stderr, "usage: cache_reader --store URI --origin URI [options] IMAGE EXPORTED_FILE\n");
		return 2;
	}
	const char *nodes[64];
	size_t n_nodes = 0;
	for (char *save = NULL, *t = l2 ? strtok_r(l2, ",", &save) : NULL; t && n_nodes < 64;
	     t = strtok_r(NULL, ",", &save))
		nodes[n_nodes++] = t;

	struct chunkify_ctx ctx;
	if (chunkify_ctx_init(&ctx, store, NULL) < 0)
		return 1;
	char digest[SHA256_HEX_LEN + 1];
	struct manifest man = {0};
	if (image_resolve(ctx.store, argv[optind], digest) < 0 || image_load(ctx.store, digest, ctx.env.tenant_key, &man) < 0) {
		chunkify_ctx_cleanup(&ctx);
		return 1;
	}
	if (list) {
		for (size_t i = 0; i < man.n_chunks; i++) {
			char hex[2 * CHUNK_KEY_LEN + 1];
			hex_encode(man.chunks[i].key, CHUNK_KEY_LEN, hex);
			printf("%llu %s %s\n", (unsigned long long)man.chunks[i].index, man.chunks[i].name, hex);
		}
		manifest_cleanup(&man);
		chunkify_ctx_cleanup(&ctx);
		return 0;
	}
	run.img_fd = open(argv[optind + 1], O_RDONLY | O_CLOEXEC);
	if (run.img_fd < 0) {
		perror(argv[optind + 1]);
		manifest_cleanup(&man);
		chunkify_ctx_cleanup(&ctx);
		return 1;
	}
	struct cache_config cfg = {
		.origin_uri = origin,
		.l2_nodes = nodes,
		.n_l2_nodes = n_nodes,
		.l2_k = k,
		.l2_m = m,
		.l1_dir = l1,
		.mem_disable = !mem,
		.salt = ctx.env.salt,
		.salt_len = ctx.env.salt_len,
	};
	if (cache_new(&cfg, &run.cache) < 0) {
		close(run.img_fd);
		manifest_cleanup(&man);
		chunkify_ctx_cleanup(&ctx);
		return 1;
	}
	run.m = &man;
	run.total = man.n_chunks * passes;
	pthread_t th[64];
	for (unsigned i = 0; i < threads; i++)
		pthread_create(&th[i], NULL, reader, &run);
	for (unsigned i = 0; i < threads; i++)
		pthread_join(th[i], NULL);
	struct cache_stats s;
	cache_get_stats(run.cache, &s);
	char *js = cache_stats_json(run.cache);
	printf("{\"chunks\":%zu,\"reads\":%zu,\"bad\":%llu,\"errors\":%llu,\"served\":{\"mem\":%llu,\"l1\":%llu,\"l2\":%llu,"
	       "\"l3\":%llu},\"origin_fetches\":%llu,\"l1_corrupt\":%llu,\"l2_corrupt\":%llu,\"stats\":%s}\n",
	       man.n_chunks, run.total, (unsigned long long)run.bad, (unsigned long long)run.errors,
	       (unsigned long long)run.by_tier[CACHE_TIER_MEM], (unsigned long long)run.by_tier[CACHE_TIER_L1],
	       (unsigned long long)run.by_tier[CACHE_TIER_L2], (unsigned long long)run.by_tier[CACHE_TIER_L3],
	       (unsigned long long)s.origin_fetches, (unsigned long long)s.tier[CACHE_TIER_L1].corrupt,
	       (unsigned long long)s.tier[CACHE_TIER_L2].corrupt, js ? js : "null");
	free(js);
	cache_free(run.cache); /* waits for background L2 writes and repairs */
	close(run.img_fd);
	manifest_cleanup(&man);
	chunkify_ctx_cleanup(&ctx);
	free(l2);
	return run.bad || run.errors ? 1 : 0;
}
