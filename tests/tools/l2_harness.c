/* l2_harness: drives the L2 client (cache/l2*.c) against real memcached
 * servers for tests/integration/30-l2-memcached.sh.
 *
 *   l2_harness [-k K] [-m M] [-t TIMEOUT_MS] [-b BACKOFF_MS] -n HOST:PORT[,HOST:PORT...] COMMAND ...
 *
 *   gen DIR COUNT SEED        write COUNT random chunks to DIR/<sha256 of the bytes> (no nodes needed);
 *                             every 8th is a random length in 1..CHUNK_SIZE, the rest CHUNK_SIZE
 *   put DIR                   l2_put every chunk file in DIR
 *   verify DIR [-r REPEAT] [-j THREADS] [--hook N CMD]...
 *                             l2_get every chunk (REPEAT passes) and compare it byte for byte with
 *                             its file; before read number N (0-based) run CMD with system(3).
 *                             With -j, THREADS threads each read every chunk concurrently (and
 *                             re-put every 16th with l2_put_async); prints "parallel ... bad=0"
 *   corrupt NAME INDEX MODE [OTHER]
 *                             overwrite fragment INDEX of NAME in memcached, bypassing l2: MODE is
 *                             garbage (random bytes), flip (one data bit of the real fragment),
 *                             short (a truncated fragment), foreign (fragment INDEX of chunk OTHER)
 *                             or delete (the fragment removed)
 *   open DIR                  l2_get_open every chunk of DIR: without a salt it must decrypt to
 *                             what chunk_ctr_at makes of the file, with a salt and a key that is
 *                             not the chunk's it must be refused (-EBADMSG, plaintext zeroed); then
 *                             seal, put and open two chunks (a full one and one whose fragments do
 *                             not start on a 16-byte block) with their real key and the salt;
 *                             prints "open ok=N bad=0"
 *   locate NAME INDEX         print the node ("host:port") that holds fragment INDEX of NAME
 *   check DIR                 read every fragment of every chunk straight from memcached and run
 *                             l2_fragment_parse on it
 *   check-frag NAME INDEX     the same for one fragment; prints valid, missing or invalid
 *
 * Each command ends with l2_flush and prints the counters:
 *   node ADDR up=1 gets=.. hits=.. misses=.. errors=.. timeouts=.. corrupt=.. lat_ms=.. slow_skipped=.. slow_probes=..
 *   l2 gets=.. hits=.. misses=.. decodes=.. repairs_queued=.. repairs_done=.. puts=.. dropped=.. crc_rereads=..
 * Exit status: 0, or 1 on any mismatch, unexpected error, or bad usage.
 */
#include "cache/l2_internal.h"

#include <dirent.h>
#include <errno.h>
#include <libmemcached/memcached.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_NODES 64
#define MAX_HOOKS 8

static void usage(void)
{
	fprintf(stderr, "usage: l2_harness [-k K] [-m M] [-t MS] [-b MS] -n HOST:PORT,... "
			"gen|put|verify|corrupt|check|check-frag ...\n");
	exit(1);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The chunk files of |dir| (names that are SHA-256 hex), sorted. */
static char **list_chunks(const char *dir, size_t *out_n)
{
	DIR *d = opendir(dir);
	if (!d) {
		fprintf(stderr, "l2_harness: open %s: %s\n", dir, strerror(errno));
		exit(1);
	}
	char **v = NULL;
	size_t n = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!is_sha256_hex(e->d_name))
			continue;
		v = realloc(v, (n + 1) * sizeof(*v));
		v[n++] = strdup(e->d_name);
	}
	closedir(d);
	qsort(v, n, sizeof(*v), cmp_str);
	*out_n = n;
	return v;
}

static uint8_t *load_chunk(const char *dir, const char *name, size_t *len)
{
	char path[4096];
	uint8_t *buf;
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int r = read_file_all(path, CHUNK_SIZE, &buf, len);
	if (r < 0) {
		fprintf(stderr, "l2_harness: read %s: %s\n", path, strerror(-r));
		exit(1);
	}
	return buf;
}

static uint64_t rng_next(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static int cmd_gen(const char *dir, unsigned count, uint64_t seed)
{
	uint8_t *buf = malloc(CHUNK_SIZE);
	uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
	if (mkdir_p(dir, 0755) < 0)
		return 1;
	for (unsigned i = 0; i < count; i++) {
		size_t len = (i % 8 == 7) ? 1 + rng_next(&s) % CHUNK_SIZE : CHUNK_SIZE;
		for (size_t j = 0; j < len; j += 8) {
			uint64_t v = rng_next(&s);
			memcpy(buf + j, &v, len - j < 8 ? len - j : 8);
		}
		uint8_t d[SHA256_LEN];
		char name[SHA256_HEX_LEN + 1], path[4096];
		sha256_buf(buf, len, d);
		hex_encode(d, SHA256_LEN, name);
		snprintf(path, sizeof(path), "%s/%s", dir, name);
		if (write_file_atomic(path, buf, len, 0644) < 0)
			return 1;
	}
	free(buf);
	printf("gen %u\n", count);
	return 0;
}

static void print_stats(struct l2 *l)
{
	struct l2_stats st;
	if (l2_stats(l, &st) < 0)
		return;
	for (size_t i = 0; i < st.n_nodes; i++) {
		const struct l2_node_stats *n = &st.nodes[i];
		printf("node %s up=%d gets=%llu hits=%llu misses=%llu errors=%llu timeouts=%llu corrupt=%llu "
		       "read=%llu written=%llu lat_ms=%.3f slow_skipped=%llu slow_probes=%llu\n",
		       n->addr, n->up, (unsigned long long)n->gets, (unsigned long long)n->hits,
		       (unsigned long long)n->misses, (unsigned long long)n->errors, (unsigned long long)n->timeouts,
		       (unsigned long long)n->corrupt, (unsigned long long)n->bytes_read,
		       (unsigned long long)n->bytes_written, n->latency_ewma_ms, (unsigned long long)n->slow_skipped,
		       (unsigned long long)n->slow_probes);
	}
	printf("l2 gets=%llu hits=%llu misses=%llu decodes=%llu repairs_queued=%llu repairs_done=%llu puts=%llu "
	       "dropped=%llu crc_rereads=%llu\n",
	       (unsigned long long)st.gets, (unsigned long long)st.hits, (unsigned long long)st.misses,
	       (unsigned long long)st.decodes, (unsigned long long)st.repairs_queued,
	       (unsigned long long)st.repairs_done, (unsigned long long)st.puts, (unsigned long long)st.bg_dropped,
	       (unsigned long long)st.crc_rereads);
	free(st.nodes);
}

static int cmd_put(struct l2 *l, const char *dir)
{
	size_t n, ok = 0, bad = 0;
	char **names = list_chunks(dir, &n);
	for (size_t i = 0; i < n; i++) {
		size_t len;
		uint8_t *buf = load_chunk(dir, names[i], &len);
		if (l2_put(l, names[i], buf, len) == 0)
			ok++;
		else
			bad++;
		free(buf);
		free(names[i]);
	}
	free(names);
	printf("put ok=%zu failed=%zu\n", ok, bad);
	return 0;
}

/* One l2_get_open of |name|; 1 if it returned |want| and, on success,
 * ciphertext |<cipher, len>| and plaintext |expect|, on failure a zeroed
 * plaintext. */
static int open_one(struct l2 *l, const char *name, const struct l2_open *op, int want, const uint8_t *cipher,
		    size_t len, const uint8_t *expect)
{
	uint8_t *got = malloc(CHUNK_SIZE);
	memset(op->plain, 0xa5, CHUNK_SIZE);
	size_t got_len = 0;
	int r = l2_get_open(l, name, op, got, &got_len);
	bool ok = r == want;
	if (ok && r == 0)
		ok = got_len == len && memcmp(got, cipher, len) == 0 && memcmp(op->plain, expect, len) == 0;
	for (size_t i = 0; ok && r < 0 && i < CHUNK_SIZE; i++)
		ok = op->plain[i] == 0;
	if (!ok)
		fprintf(stderr, "l2_harness: open %s: returned %d (want %d) or wrong bytes\n", name, r, want);
	free(got);
	return ok;
}

static int cmd_open(struct l2 *l, const char *dir)
{
	static const uint8_t salt[32] = "l2-harness-salt";
	uint8_t key[CHUNK_KEY_LEN] = {7, 1, 2, 3};
	uint8_t *plain = malloc(CHUNK_SIZE), *expect = malloc(CHUNK_SIZE), *cipher = malloc(CHUNK_SIZE);
	size_t n, ok = 0, bad = 0;
	char **names = list_chunks(dir, &n);
	for (size_t i = 0; i < n; i++) {
		size_t len;
		uint8_t *buf = load_chunk(dir, names[i], &len);
		struct l2_open op = {.key = key, .plain = plain};
		if (chunk_ctr_at(key, 0, buf, len, expect) < 0)
			exit(1);
		open_one(l, names[i], &op, 0, buf, len, expect) ? ok++ : bad++;
		op.salt = salt;
		op.salt_len = sizeof(salt);
		open_one(l, names[i], &op, -EBADMSG, buf, len, expect) ? ok++ : bad++;
		free(buf);
		free(names[i]);
	}
	free(names);
	/* Sealed chunks, read with their own key and the salt. */
	static const size_t lens[] = {CHUNK_SIZE, 100003};
	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		char name[CHUNK_NAME_HEX_LEN + 1];
		for (size_t j = 0; j < lens[i]; j++)
			expect[j] = (uint8_t)(j * 31 + i + (j >> 9));
		if (chunk_seal(salt, sizeof(salt), expect, lens[i], key, cipher, name) < 0 ||
		    l2_put(l, name, cipher, lens[i]) < 0) {
			fprintf(stderr, "l2_harness: open: seal or put of a %zu-byte chunk failed\n", lens[i]);
			bad++;
			continue;
		}
		struct l2_open op = {.key = key, .salt = salt, .salt_len = sizeof(salt), .plain = plain};
		open_one(l, name, &op, 0, cipher, lens[i], expect) ? ok++ : bad++;
	}
	printf("open ok=%zu bad=%zu\n", ok, bad);
	free(plain);
	free(expect);
	free(cipher);
	return bad ? 1 : 0;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

struct hook {
	unsigned at;
	const char *cmd;
};

/* verify -j: threads reading the same chunks concurrently, each in its own
 * order, each read checked byte for byte. */
struct par {
	struct l2 *l;
	char **names;
	uint8_t **want;
	size_t *want_len, n;
	unsigned seed;
	size_t ok, enoent, bad;
};

static void *par_main(void *arg)
{
	struct par *p = arg;
	uint8_t *got = malloc(CHUNK_SIZE);
	for (size_t t = 0; t < p->n; t++) {
		size_t i = (t * 7 + p->seed * 13) % p->n, len;
		int r = l2_get(p->l, p->names[i], got, &len);
		if (r == 0 && len == p->want_len[i] && memcmp(got, p->want[i], len) == 0)
			p->ok++;
		else if (r == -ENOENT)
			p->enoent++;
		else
			p->bad++;
		if (t % 16 == 0)
			l2_put_async(p->l, p->names[i], p->want[i], p->want_len[i]);
	}
	free(got);
	return NULL;
}

static int cmd_verify(struct l2 *l, const char *dir, unsigned repeat, unsigned jobs, const struct hook *hooks,
		      size_t n_hooks)
{
	size_t n;
	char **names = list_chunks(dir, &n);
	uint8_t **want = calloc(n, sizeof(*want));
	size_t *want_len = calloc(n, sizeof(*want_len));
	for (size_t i = 0; i < n; i++)
		want[i] = load_chunk(dir, names[i], &want_len[i]);
	if (jobs > 1) {
		struct par p[64];
		pthread_t th[64];
		size_t ok = 0, enoent = 0, bad = 0;
		for (unsigned j = 0; j < jobs && j < 64; j++) {
			p[j] = (struct par){.l = l, .names = names, .want = want, .want_len = want_len, .n = n, .seed = j};
			pthread_create(&th[j], NULL, par_main, &p[j]);
		}
		for (unsigned j = 0; j < jobs && j < 64; j++) {
			pthread_join(th[j], NULL);
			ok += p[j].ok;
			enoent += p[j].enoent;
			bad += p[j].bad;
		}
		printf("parallel threads=%u ok=%zu enoent=%zu bad=%zu\n", jobs, ok, enoent, bad);
		for (size_t i = 0; i < n; i++) {
			free(want[i]);
			free(names[i]);
		}
		free(want);
		free(want_len);
		free(names);
		return bad ? 1 : 0;
	}
	uint8_t *got = malloc(CHUNK_SIZE);
	size_t total = n * repeat, ok = 0, enoent = 0, mismatch = 0, err = 0, reads = 0;
	double *ms = calloc(total ? total : 1, sizeof(double));
	for (unsigned rep = 0; rep < repeat; rep++)
		for (size_t i = 0; i < n; i++, reads++) {
			for (size_t h = 0; h < n_hooks; h++)
				if (hooks[h].at == reads) {
					fflush(stdout);
					if (system(hooks[h].cmd) != 0)
						fprintf(stderr, "l2_harness: hook \"%s\" failed\n", hooks[h].cmd);
				}
			size_t len = 0;
			double t0 = now_seconds();
			int r = l2_get(l, names[i], got, &len);
			ms[reads] = (now_seconds() - t0) * 1000;
			if (r == 0) {
				if (len == want_len[i] && memcmp(got, want[i], len) == 0) {
					ok++;
				} else {
					mismatch++;
					fprintf(stderr, "l2_harness: MISMATCH for %s (%zu bytes, want %zu)\n", names[i], len,
						want_len[i]);
				}
			} else if (r == -ENOENT) {
				enoent++;
			} else {
				err++;
				fprintf(stderr, "l2_harness: get %s: %s\n", names[i], strerror(-r));
			}
		}
	qsort(ms, total, sizeof(double), cmp_double);
	double p50 = total ? ms[total / 2] : 0, p99 = total ? ms[(size_t)((double)total * 0.99)] : 0;
	if (total && (size_t)((double)total * 0.99) >= total)
		p99 = ms[total - 1];
	printf("verify ok=%zu enoent=%zu mismatch=%zu err=%zu p50_ms=%.3f p99_ms=%.3f max_ms=%.3f\n", ok, enoent,
	       mismatch, err, p50, p99, total ? ms[total - 1] : 0);
	for (size_t i = 0; i < n; i++) {
		free(want[i]);
		free(names[i]);
	}
	free(want);
	free(want_len);
	free(names);
	free(got);
	free(ms);
	return mismatch || err ? 1 : 0;
}

/* Raw libmemcached handles, one per node, bypassing l2. */
struct raw_pool {
	size_t n;
	char addr[MAX_NODES][64];
	memcached_st *mc[MAX_NODES];
};

static void raw_pool_cleanup(struct raw_pool *p)
{
	for (size_t i = 0; i < p->n; i++)
		memcached_free(p->mc[i]);
	p->n = 0;
}

/* The raw handle on the node holding fragment |index| of |name|. */
static memcached_st *raw_node(struct raw_pool *p, struct l2 *l, const char *name, unsigned index, char *key,
			      size_t key_cap)
{
	char addr[64];
	if (l2_locate(l, name, index, addr, sizeof(addr), key, key_cap) < 0) {
		fprintf(stderr, "l2_harness: cannot locate %s.%u\n", name, index);
		exit(1);
	}
	for (size_t i = 0; i < p->n; i++)
		if (strcmp(p->addr[i], addr) == 0)
			return p->mc[i];
	if (p->n == MAX_NODES)
		exit(1);
	snprintf(p->addr[p->n], sizeof(p->addr[p->n]), "%s", addr);
	char *colon = strrchr(addr, ':');
	*colon = '\0';
	memcached_st *mc = memcached_create(NULL);
	memcached_server_add(mc, addr, (in_port_t)atoi(colon + 1));
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_POLL_TIMEOUT, 1000);
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_CONNECT_TIMEOUT, 1000);
	return p->mc[p->n++] = mc;
}

/* 0 valid, 1 missing, 2 invalid, 3 node error */
static int check_one(struct raw_pool *p, struct l2 *l, unsigned k, unsigned m, const char *name, unsigned index)
{
	char key[256];
	memcached_st *mc = raw_node(p, l, name, index, key, sizeof(key));
	size_t vlen;
	uint32_t flags;
	memcached_return_t rc;
	char *v = memcached_get(mc, key, strlen(key), &vlen, &flags, &rc);
	int res;
	struct l2_fragment_view fv;
	if (rc == MEMCACHED_NOTFOUND)
		res = 1;
	else if (rc != MEMCACHED_SUCCESS)
		res = 3;
	else
		res = v && l2_fragment_parse((const uint8_t *)v, vlen, name, k, m, &fv) == 0 && fv.index == index
			  ? 0
			  : 2;
	free(v);
	return res;
}

static int cmd_corrupt(struct l2 *l, unsigned k, unsigned m, const char *name, unsigned index, const char *mode,
		       const char *other)
{
	char key[256], okey[256];
	struct raw_pool pool = {0};
	memcached_st *mc = raw_node(&pool, l, name, index, key, sizeof(key));
	size_t vlen = 0;
	uint32_t flags;
	memcached_return_t rc;
	char *v = NULL;
	if (strcmp(mode, "delete") == 0) {
		rc = memcached_delete(mc, key, strlen(key), 0);
		int c = memcached_success(rc) ? check_one(&pool, l, k, m, name, index) : 3;
		raw_pool_cleanup(&pool);
		printf("deleted %s.%u: now %s\n", name, index, c == 1 ? "missing" : "UNEXPECTEDLY PRESENT");
		return c == 1 ? 0 : 1;
	}
	if (strcmp(mode, "garbage") == 0) {
		vlen = 1000 + (size_t)getpid() % 5000;
		v = malloc(vlen);
		if (random_bytes(v, vlen) < 0)
			return 1;
	} else if (strcmp(mode, "flip") == 0 || strcmp(mode, "short") == 0) {
		v = memcached_get(mc, key, strlen(key), &vlen, &flags, &rc);
		if (!v || vlen <= L2_FRAG_HDR_LEN + 1) {
			fprintf(stderr, "l2_harness: fragment %s not found to corrupt\n", key);
			return 1;
		}
		if (strcmp(mode, "flip") == 0)
			v[L2_FRAG_HDR_LEN + (vlen - L2_FRAG_HDR_LEN) / 2] ^= 0x10;
		else
			vlen -= 1;
	} else if (strcmp(mode, "foreign") == 0 && other) {
		memcached_st *omc = raw_node(&pool, l, other, index, okey, sizeof(okey));
		v = memcached_get(omc, okey, strlen(okey), &vlen, &flags, &rc);
		if (!v) {
			fprintf(stderr, "l2_harness: fragment %s not found\n", okey);
			return 1;
		}
	} else {
		usage();
	}
	rc = memcached_set(mc, key, strlen(key), v, vlen, 0, 0);
	free(v);
	if (!memcached_success(rc)) {
		fprintf(stderr, "l2_harness: raw set of %s failed\n", key);
		raw_pool_cleanup(&pool);
		return 1;
	}
	int c = check_one(&pool, l, k, m, name, index);
	raw_pool_cleanup(&pool);
	printf("corrupted %s.%u (%s): now %s\n", name, index, mode, c == 2 ? "invalid" : "UNEXPECTEDLY VALID");
	return c == 2 ? 0 : 1;
}

static int cmd_check(struct l2 *l, unsigned k, unsigned m, const char *dir)
{
	size_t n, counts[4] = {0};
	struct raw_pool pool = {0};
	char **names = list_chunks(dir, &n);
	for (size_t i = 0; i < n; i++) {
		for (unsigned j = 0; j < k + m; j++)
			counts[check_one(&pool, l, k, m, names[i], j)]++;
		free(names[i]);
	}
	free(names);
	raw_pool_cleanup(&pool);
	printf("fragments valid=%zu missing=%zu invalid=%zu unreachable=%zu\n", counts[0], counts[1], counts[2],
	       counts[3]);
	return 0;
}

int main(int argc, char **argv)
{
	const char *nodes_arg = NULL;
	unsigned k = 4, m = 1, timeout = 200, backoff = 1000;
	int opt;
	while ((opt = getopt(argc, argv, "+k:m:t:b:n:")) != -1) {
		switch (opt) {
		case 'k': k = (unsigned)atoi(optarg); break;
		case 'm': m = (unsigned)atoi(optarg); break;
		case 't': timeout = (unsigned)atoi(optarg); break;
		case 'b': backoff = (unsigned)atoi(optarg); break;
		case 'n': nodes_arg = optarg; break;
		default: usage();
		}
	}
	if (optind >= argc)
		usage();
	const char *cmd = argv[optind++];
	if (strcmp(cmd, "gen") == 0) {
		if (argc - optind != 3)
			usage();
		return cmd_gen(argv[optind], (unsigned)atoi(argv[optind + 1]), strtoull(argv[optind + 2], NULL, 10));
	}
	if (!nodes_arg)
		usage();
	char *nodes_copy = strdup(nodes_arg), *save = NULL;
	const char *nodes[MAX_NODES];
	size_t n_nodes = 0;
	for (char *t = strtok_r(nodes_copy, ",", &save); t && n_nodes < MAX_NODES; t = strtok_r(NULL, ",", &save))
		nodes[n_nodes++] = t;
	struct l2_config cfg = {.nodes = nodes, .n_nodes = n_nodes, .k = k, .m = m, .timeout_ms = timeout,
				.down_backoff_ms = backoff, .key_prefix = "kt:"};
	struct l2 *l;
	int r = l2_new(&cfg, &l);
	if (r < 0) {
		fprintf(stderr, "l2_harness: l2_new: %s\n", strerror(-r));
		return 1;
	}
	int rc = 1;
	if (strcmp(cmd, "put") == 0 && argc - optind == 1) {
		rc = cmd_put(l, argv[optind]);
	} else if (strcmp(cmd, "verify") == 0 && argc - optind >= 1) {
		const char *dir = argv[optind++];
		unsigned repeat = 1, jobs = 1;
		struct hook hooks[MAX_HOOKS];
		size_t n_hooks = 0;
		while (optind < argc) {
			if (strcmp(argv[optind], "-r") == 0 && optind + 1 < argc) {
				repeat = (unsigned)atoi(argv[optind + 1]);
				optind += 2;
			} else if (strcmp(argv[optind], "-j") == 0 && optind + 1 < argc) {
				jobs = (unsigned)atoi(argv[optind + 1]);
				optind += 2;
			} else if (strcmp(argv[optind], "--hook") == 0 && optind + 2 < argc && n_hooks < MAX_HOOKS) {
				hooks[n_hooks].at = (unsigned)atoi(argv[optind + 1]);
				hooks[n_hooks++].cmd = argv[optind + 2];
				optind += 3;
			} else {
				usage();
			}
		}
		rc = cmd_verify(l, dir, repeat, jobs, hooks, n_hooks);
	} else if (strcmp(cmd, "corrupt") == 0 && argc - optind >= 3) {
		rc = cmd_corrupt(l, k, m, argv[optind], (unsigned)atoi(argv[optind + 1]), argv[optind + 2],
				 argc - optind >= 4 ? argv[optind + 3] : NULL);
	} else if (strcmp(cmd, "locate") == 0 && argc - optind == 2) {
		char addr[128], key[L2_KEY_MAX];
		rc = l2_locate(l, argv[optind], (unsigned)atoi(argv[optind + 1]), addr, sizeof(addr), key, sizeof(key)) == 0
			     ? (printf("%s\n", addr), 0)
			     : 1;
	} else if (strcmp(cmd, "open") == 0 && argc - optind == 1) {
		rc = cmd_open(l, argv[optind]);
	} else if (strcmp(cmd, "check") == 0 && argc - optind == 1) {
		rc = cmd_check(l, k, m, argv[optind]);
	} else if (strcmp(cmd, "check-frag") == 0 && argc - optind == 2) {
		struct raw_pool pool = {0};
		int c = check_one(&pool, l, k, m, argv[optind], (unsigned)atoi(argv[optind + 1]));
		raw_pool_cleanup(&pool);
		static const char *const what[] = {"valid", "missing", "invalid", "unreachable"};
		printf("%s\n", what[c]);
		rc = 0;
	} else {
		usage();
	}
	l2_flush(l);
	print_stats(l);
	l2_free(l);
	free(nodes_copy);
	return rc;
}
