/* cache_bench: latency of verified, decrypted chunk reads per cache tier,
 * with raw memcached GETs from the same run as the floor, and the L2 tail
 * with one slow node for 4+1, 4+0 and whole-copy replication.  Figures are
 * without the salt (name check only) unless a row says "salt"; the L2 hit is
 * also measured with L1 on, back to back and with L1's writer idle.  Driven by
 * bench/cache.sh, which starts memcached, nginx and the delay proxy.
 *
 *   cache_bench --file-origin URI --http-origin URI --nodes H:P,... (5)
 *               --slow-nodes H:P,... (the same 5, one through the proxy)
 *               --l1-dir DIR [--chunks N] [--iters N] [--l2-passes-only]
 *
 * Replication is emulated here with libmemcached (cache/l2 has no such
 * mode): each chunk's ciphertext is SET whole on every node, and a read GETs
 * it from its rendezvous-primary node (highest SHA-256(addr || name)), then
 * verifies and decrypts it exactly like the cache does.  No hedging: that is
 * the point of comparison with k-of-(k+m) reads.
 *
 * The L2 hit's verify passes, interleaved (--l2-passes-only runs just this,
 * with the raw floors): read by read in turn, on one 4+1 L2 client, (a) the
 * two passes the L2 layer used to make, l2_get (the name hashed as the
 * fragments land) and then chunk_open decrypting the whole chunk, (b)
 * l2_get_open, which decrypts each fragment as it lands, and (c) the floor
 * itself, a raw 128 KiB GET plus SHA-256 + AES-256-CTR of 512 KiB; so the
 * three see the same load, and their ratios hold on a busy machine. */
#include "cache/l2_internal.h"

#include <ctype.h>
#include <errno.h>
#include <libmemcached/memcached.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const uint8_t salt[32] = "cache-bench-salt................";
/* Hosts normally run without the salt (the key check is then skipped and
 * only the name is checked), as Lambda's do: the headline figures are
 * without it, and the L2 hit is measured with it as well. */
static bool use_salt;

struct chunk {
	char name[CHUNK_NAME_HEX_LEN + 1];
	uint8_t key[CHUNK_KEY_LEN];
	uint8_t *cipher;
};

static struct chunk *chunks;
static size_t n_chunks = 64;
static unsigned iters = 2000;
static uint64_t rng = 0x243f6a8885a308d3ull;

static uint64_t rnd(void)
{
	rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
	return rng;
}

static double now_us(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

struct lat {
	double p50, p99, p999;
	double faults; /* minor page faults per read, the whole process (they cost ~25 us each on some VMs) */
	double *samples; /* every read's latency in us, sorted; row() writes them out for the bench suite */
	size_t n;
};

static long minor_faults(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_minflt;
}

static struct lat summarize(double *v, size_t n, long faults)
{
	qsort(v, n, sizeof(*v), cmp_d);
	struct lat l = {v[n / 2], v[(size_t)((double)n * 0.99)], v[(size_t)((double)n * 0.999)],
			(double)faults / (double)n, malloc(n * sizeof(*v)), n};
	if (!l.samples) {
		fprintf(stderr, "cache_bench: out of memory keeping %zu samples\n", n);
		exit(1);
	}
	memcpy(l.samples, v, n * sizeof(*v));
	return l;
}

/* Write L's samples, one per line, to $KINDLING_BENCH_SAMPLES/<WHAT as a
 * file name>.txt, so the bench suite can plot whole distributions; nothing
 * when the variable is unset. */
static void dump_samples(const char *what, struct lat l)
{
	const char *dir = getenv("KINDLING_BENCH_SAMPLES");
	if (!dir || !*dir)
		return;
	char slug[128];
	size_t j = 0;
	for (const char *c = what; *c && j + 1 < sizeof(slug); c++) {
		if (isalnum((unsigned char)*c) || *c == '+')
			slug[j++] = (char)tolower((unsigned char)*c);
		else if (j && slug[j - 1] != '-')
			slug[j++] = '-';
	}
	while (j && slug[j - 1] == '-')
		j--;
	slug[j] = 0;
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s.txt", dir, slug);
	FILE *f = fopen(path, "w");
	if (!f) {
		fprintf(stderr, "cache_bench: cannot write samples to %s: %s\n", path, strerror(errno));
		exit(1);
	}
	for (size_t i = 0; i < l.n; i++)
		fprintf(f, "%.1f\n", l.samples[i]);
	if (fclose(f) != 0) {
		fprintf(stderr, "cache_bench: writing %s failed: %s\n", path, strerror(errno));
		exit(1);
	}
}

static size_t split(char *spec, const char **out)
{
	size_t n = 0;
	for (char *save = NULL, *t = strtok_r(spec, ",", &save); t && n < 16; t = strtok_r(NULL, ",", &save))
		out[n++] = t;
	return n;
}

static struct cache *open_cache(const char *origin, const char *const *nodes, size_t n_nodes, unsigned k, unsigned m,
				const char *l1, bool mem)
{
	struct cache_config cfg = {
		.origin_uri = origin,
		.l2_nodes = nodes,
		.n_l2_nodes = n_nodes,
		.l2_k = k,
		.l2_m = m,
		.l1_dir = l1,
		.l1_max_bytes = 1ull << 30,
		.mem_disable = !mem,
		.mem_max_bytes = 256ull << 20,
		.salt = use_salt ? salt : NULL,
		.salt_len = use_salt ? sizeof(salt) : 0,
	};
	struct cache *c;
	if (cache_new(&cfg, &c) < 0) {
		fprintf(stderr, "cache_bench: cache_new failed\n");
		exit(1);
	}
	return c;
}

/* |iters| reads of |len| bytes (whole chunks at 0, or 4 KiB at a random
 * block) of random chunks; each must be served by |want|. */
static bool evict_after; /* drop each chunk after its read, so every read is a miss above L2 */
static bool settle_after; /* let L1's background writer finish (untimed) before the next read */

static struct lat measure(struct cache *c, size_t len, enum cache_tier want, unsigned n)
{
	double *v = malloc(n * sizeof(*v));
	uint8_t *buf = malloc(CHUNK_SIZE);
	unsigned wrong = 0;
	long f0 = minor_faults();
	for (unsigned i = 0; i < n; i++) {
		struct chunk *ch = &chunks[rnd() % n_chunks];
		uint32_t off = len == CHUNK_SIZE ? 0 : (uint32_t)(rnd() % (CHUNK_SIZE / 4096)) * 4096;
		enum cache_tier t;
		double t0 = now_us();
		int r = cache_read(c, ch->name, ch->key, off, buf, len, &t);
		v[i] = now_us() - t0;
		if (r < 0) {
			fprintf(stderr, "cache_bench: read failed\n");
			exit(1);
		}
		wrong += t != want;
		if (settle_after)
			cache_wait_l1(c);
		if (evict_after)
			cache_evict(c, ch->name);
	}
	if (wrong)
		fprintf(stderr, "cache_bench: note: %u of %u reads were served by another tier than %s\n", wrong, n,
			cache_tier_name(want));
	struct lat l = summarize(v, n, minor_faults() - f0);
	free(v);
	free(buf);
	return l;
}

static void warm(struct cache *c)
{
	uint8_t *buf = malloc(CHUNK_SIZE);
	for (size_t i = 0; i < n_chunks; i++)
		cache_read(c, chunks[i].name, chunks[i].key, 0, buf, CHUNK_SIZE, NULL);
	free(buf);
}

static void prime(struct cache *c)
{
	struct manifest m = {0};
	m.n_chunks = n_chunks;
	m.chunks = calloc(n_chunks, sizeof(*m.chunks));
	for (size_t i = 0; i < n_chunks; i++) {
		m.chunks[i].index = i;
		memcpy(m.chunks[i].name, chunks[i].name, sizeof(chunks[i].name));
	}
	uint64_t w;
	if (cache_prime_l2(c, &m, &w) < 0) {
		fprintf(stderr, "cache_bench: prime failed\n");
		exit(1);
	}
	free(m.chunks);
}

static memcached_st *mc_open(const char *addr)
{
	char host[64];
	snprintf(host, sizeof(host), "%s", addr);
	char *colon = strrchr(host, ':');
	*colon = 0;
	memcached_st *mc = memcached_create(NULL);
	memcached_server_add(mc, host, (in_port_t)atoi(colon + 1));
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_TCP_NODELAY, 1);
	return mc;
}

static void flush_all(const char *const *nodes, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		memcached_st *mc = mc_open(nodes[i]);
		memcached_flush(mc, 0);
		memcached_free(mc);
	}
}

/* The raw floor: GET of a |len|-byte value from one node. */
static struct lat raw_get(const char *node, size_t len, unsigned n)
{
	memcached_st *mc = mc_open(node);
	uint8_t *val = malloc(len);
	for (size_t i = 0; i < len; i++)
		val[i] = (uint8_t)rnd();
	char key[64];
	snprintf(key, sizeof(key), "bench-raw-%zu", len);
	if (memcached_set(mc, key, strlen(key), (char *)val, len, 0, 0) != MEMCACHED_SUCCESS) {
		fprintf(stderr, "cache_bench: raw set failed (memcached -I 2m?)\n");
		exit(1);
	}
	double *v = malloc(n * sizeof(*v));
	long f0 = minor_faults();
	for (unsigned i = 0; i < n; i++) {
		size_t got;
		uint32_t flags;
		memcached_return_t rc;
		double t0 = now_us();
		char *p = memcached_get(mc, key, strlen(key), &got, &flags, &rc);
		v[i] = now_us() - t0;
		if (!p || got != len) {
			fprintf(stderr, "cache_bench: raw get failed\n");
			exit(1);
		}
		free(p);
	}
	struct lat l = summarize(v, n, minor_faults() - f0);
	free(v);
	free(val);
	memcached_free(mc);
	return l;
}

/* The CPU floor of a verified read: SHA-256 (the name check) and
 * AES-256-CTR (the decryption) of one 512 KiB chunk, in this process. */
static struct lat verify_floor(unsigned n)
{
	uint8_t *in = malloc(CHUNK_SIZE), *out = malloc(CHUNK_SIZE), key[32] = {1}, iv[16] = {0}, md[32];
	for (size_t i = 0; i < CHUNK_SIZE; i++)
		in[i] = (uint8_t)rnd();
	double *v = malloc(n * sizeof(*v));
	long f0 = minor_faults();
	for (unsigned i = 0; i < n; i++) {
		double t0 = now_us();
		EVP_CIPHER_CTX *cx = EVP_CIPHER_CTX_new();
		int outl;
		unsigned mdl;
		if (!cx || !EVP_Digest(in, CHUNK_SIZE, md, &mdl, EVP_sha256(), NULL) ||
		    !EVP_EncryptInit_ex(cx, EVP_aes_256_ctr(), NULL, key, iv) ||
		    !EVP_EncryptUpdate(cx, out, &outl, in, CHUNK_SIZE)) {
			fprintf(stderr, "cache_bench: OpenSSL failed\n");
			exit(1);
		}
		EVP_CIPHER_CTX_free(cx);
		v[i] = now_us() - t0;
	}
	struct lat l = summarize(v, n, minor_faults() - f0);
	free(v);
	free(in);
	free(out);
	return l;
}

/* Whole-copy replication, emulated: SET everywhere, GET from the primary. */
static struct lat replicated(const char *const *nodes, size_t n_nodes, unsigned n)
{
	memcached_st *mc[16];
	for (size_t i = 0; i < n_nodes; i++)
		mc[i] = mc_open(nodes[i]);
	size_t *primary = calloc(n_chunks, sizeof(*primary));
	for (size_t c = 0; c < n_chunks; c++) {
		uint8_t best[SHA256_LEN] = {0};
		for (size_t i = 0; i < n_nodes; i++) {
			char buf[200];
			uint8_t d[SHA256_LEN];
			int len = snprintf(buf, sizeof(buf), "%s|%s", nodes[i], chunks[c].name);
			sha256_buf(buf, (size_t)len, d);
			if (i == 0 || memcmp(d, best, SHA256_LEN) > 0) {
				memcpy(best, d, SHA256_LEN);
				primary[c] = i;
			}
			char key[100];
			snprintf(key, sizeof(key), "rep:%s", chunks[c].name);
			memcached_set(mc[i], key, strlen(key), (char *)chunks[c].cipher, CHUNK_SIZE, 0, 0);
		}
	}
	double *v = malloc(n * sizeof(*v));
	long f0 = minor_faults();
	uint8_t *plain = malloc(CHUNK_SIZE);
	for (unsigned i = 0; i < n; i++) {
		size_t c = rnd() % n_chunks, got;
		char key[100];
		snprintf(key, sizeof(key), "rep:%s", chunks[c].name);
		uint32_t flags;
		memcached_return_t rc;
		double t0 = now_us();
		char *p = memcached_get(mc[primary[c]], key, strlen(key), &got, &flags, &rc);
		int r = p && got == CHUNK_SIZE
			    ? chunk_open(chunks[c].name, chunks[c].key, use_salt ? salt : NULL, use_salt ? sizeof(salt) : 0,
					 (uint8_t *)p, got, plain)
			    : -EIO;
		v[i] = now_us() - t0;
		free(p);
		if (r < 0) {
			fprintf(stderr, "cache_bench: replicated get failed\n");
			exit(1);
		}
	}
	struct lat l = summarize(v, n, minor_faults() - f0);
	free(v);
	free(plain);
	free(primary);
	for (size_t i = 0; i < n_nodes; i++)
		memcached_free(mc[i]);
	return l;
}

static void row(const char *what, struct lat l, const char *base_name, double base)
{
	printf("  %-34s p50 %8.1f us  p99 %8.1f us  p99.9 %8.1f us  faults/read %5.1f", what, l.p50, l.p99, l.p999,
	       l.faults);
	if (base_name)
		printf("   p50 = %.2fx %s", l.p50 / base, base_name);
	printf("\n");
	dump_samples(what, l);
}

/* The L2 hit's passes, interleaved read by read (see the top). */
static void l2_passes(const char *origin, const char *const *nodes, size_t n_nodes, unsigned n)
{
	struct l2_config cfg = {.nodes = nodes, .n_nodes = n_nodes, .k = 4, .m = 1};
	struct l2 *l;
	if (l2_new(&cfg, &l) < 0) {
		fprintf(stderr, "cache_bench: l2_new failed\n");
		exit(1);
	}
	for (size_t i = 0; i < n_chunks; i++)
		if (l2_put(l, chunks[i].name, chunks[i].cipher, CHUNK_SIZE) < 0) {
			fprintf(stderr, "cache_bench: l2_put failed\n");
			exit(1);
		}
	memcached_st *mc = mc_open(nodes[1]);
	uint8_t *val = malloc(128 * 1024), *cipher = malloc(CHUNK_SIZE), *plain = malloc(CHUNK_SIZE);
	uint8_t *in = malloc(CHUNK_SIZE), key[32] = {1}, iv[16] = {0}, md[32];
	for (size_t i = 0; i < 128 * 1024; i++)
		val[i] = (uint8_t)rnd();
	for (size_t i = 0; i < CHUNK_SIZE; i++)
		in[i] = (uint8_t)rnd();
	static const char rkey[] = "bench-raw-passes";
	if (memcached_set(mc, rkey, strlen(rkey), (char *)val, 128 * 1024, 0, 0) != MEMCACHED_SUCCESS) {
		fprintf(stderr, "cache_bench: raw set failed\n");
		exit(1);
	}
	/* The whole read through the cache's layers, as cache_read serves it:
	 * L2 only (no memory tier, no L1), so every read is an L2 hit. */
	struct cache *c = open_cache(origin, nodes, n_nodes, 4, 1, NULL, false);
	unsigned not_l2 = 0;
	double *v[4];
	for (int k = 0; k < 4; k++)
		v[k] = malloc(n * sizeof(double));
	long f0 = minor_faults();
	for (unsigned i = 0; i < 4 * n; i++) {
		struct chunk *ch = &chunks[rnd() % n_chunks];
		size_t len = 0;
		int r = 0;
		double t0 = now_us();
		if (i % 4 == 0) {
			r = l2_get(l, ch->name, cipher, &len);
			if (r == 0)
				r = chunk_open(NULL, ch->key, NULL, 0, cipher, len, plain);
		} else if (i % 4 == 3) {
			enum cache_tier t;
			r = cache_read(c, ch->name, ch->key, 0, plain, CHUNK_SIZE, &t);
			not_l2 += r == 0 && t != CACHE_TIER_L2;
		} else if (i % 4 == 1) {
			struct l2_open op = {.key = ch->key, .plain = plain};
			r = l2_get_open(l, ch->name, &op, cipher, &len);
		} else {
			size_t got;
			uint32_t flags;
			memcached_return_t rc;
			char *p = memcached_get(mc, rkey, strlen(rkey), &got, &flags, &rc);
			EVP_CIPHER_CTX *cx = EVP_CIPHER_CTX_new();
			int outl;
			unsigned mdl;
			r = p && got == 128 * 1024 && cx && EVP_Digest(in, CHUNK_SIZE, md, &mdl, EVP_sha256(), NULL) &&
				    EVP_EncryptInit_ex(cx, EVP_aes_256_ctr(), NULL, key, iv) &&
				    EVP_EncryptUpdate(cx, plain, &outl, in, CHUNK_SIZE)
				? 0
				: -EIO;
			EVP_CIPHER_CTX_free(cx);
			free(p);
		}
		v[i % 4][i / 4] = now_us() - t0;
		if (r < 0) {
			fprintf(stderr, "cache_bench: L2 passes: read %u failed: %s\n", i, strerror(-r));
			exit(1);
		}
	}
	long faults = minor_faults() - f0;
	struct lat two = summarize(v[0], n, faults / 4), one = summarize(v[1], n, faults / 4),
		   floor = summarize(v[2], n, faults / 4), through = summarize(v[3], n, faults / 4);
	if (not_l2)
		fprintf(stderr, "cache_bench: note: %u of %u reads through the cache were not L2 hits\n", not_l2, n);
	printf("\nL2 hit passes, interleaved read by read (4+1, no salt, %u reads each)\n", n);
	row("floor: 128 KiB GET + SHA + AES", floor, NULL, 0);
	row("l2_get, then chunk_open", two, "floor", floor.p50);
	row("l2_get_open (decrypt on arrival)", one, "floor", floor.p50);
	row("cache_read, L2 hit (the whole read)", through, "floor", floor.p50);
	printf("  %-34s p50 %.2fx, p99 %.2fx the two-pass read\n", "decrypt on arrival:", one.p50 / two.p50,
	       one.p99 / two.p99);
	printf("  %-34s p50 %.2fx l2_get_open\n", "the cache's layers around it:", through.p50 / one.p50);
	printf("  L2 hit p50 through the cache <= 1.2x this floor: %.2fx %s\n", through.p50 / floor.p50,
	       through.p50 <= 1.2 * floor.p50 ? "MET" : "MISSED");
	for (int k = 0; k < 4; k++)
		free(v[k]);
	free(two.samples);
	free(one.samples);
	free(floor.samples);
	free(through.samples);
	cache_free(c);
	free(val);
	free(cipher);
	free(plain);
	free(in);
	memcached_free(mc);
	l2_free(l);
}

int main(int argc, char **argv)
{
	const char *file_origin = NULL, *http_origin = NULL, *l1 = NULL;
	char *nodes_s = NULL, *slow_s = NULL;
	bool passes_only = false;
	for (int i = 1; i < argc; i += 2) {
		if (!strcmp(argv[i], "--l2-passes-only")) {
			passes_only = true;
			i--; /* a flag without a value */
		} else if (i + 1 == argc)
			break;
		else if (!strcmp(argv[i], "--file-origin"))
			file_origin = argv[i + 1];
		else if (!strcmp(argv[i], "--http-origin"))
			http_origin = argv[i + 1];
		else if (!strcmp(argv[i], "--nodes"))
			nodes_s = argv[i + 1];
		else if (!strcmp(argv[i], "--slow-nodes"))
			slow_s = argv[i + 1];
		else if (!strcmp(argv[i], "--l1-dir"))
			l1 = argv[i + 1];
		else if (!strcmp(argv[i], "--chunks"))
			n_chunks = (size_t)atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--iters"))
			iters = (unsigned)atoi(argv[i + 1]);
	}
	if (!file_origin || !http_origin || !nodes_s || !slow_s || !l1 || n_chunks < 8 || iters < 100) {
		fprintf(stderr, "usage: cache_bench --file-origin URI --http-origin URI --nodes L --slow-nodes L "
				"--l1-dir DIR [--chunks N] [--iters N]\n");
		return 2;
	}
	const char *nodes[16], *slow[16];
	size_t n_nodes = split(nodes_s, nodes), n_slow = split(slow_s, slow);

	/* chunks, in both origins */
	struct store *fs, *hs;
	if (store_open(file_origin, NULL, &fs) < 0 || store_open(http_origin, NULL, &hs) < 0)
		return 1;
	chunks = calloc(n_chunks, sizeof(*chunks));
	uint8_t *plain = malloc(CHUNK_SIZE);
	for (size_t i = 0; i < n_chunks; i++) {
		for (size_t o = 0; o < CHUNK_SIZE; o += 8) {
			uint64_t x = rnd();
			memcpy(plain + o, &x, 8);
		}
		chunks[i].cipher = malloc(CHUNK_SIZE);
		chunk_seal(salt, sizeof(salt), plain, CHUNK_SIZE, chunks[i].key, chunks[i].cipher, chunks[i].name);
		char key[100];
		snprintf(key, sizeof(key), "chunks/%s", chunks[i].name);
		if (store_put(fs, key, chunks[i].cipher, CHUNK_SIZE) < 0 || store_put(hs, key, chunks[i].cipher, CHUNK_SIZE) < 0)
			return 1;
	}
	free(plain);
	store_free(fs);
	store_free(hs);

	printf("kindling cache benchmark: %zu chunks of 512 KiB, %u reads per figure, verified and decrypted "
	       "(name check; key check only where \"salt\" is said)\n\n",
	       n_chunks, iters);

	if (passes_only) {
		flush_all(nodes, n_nodes);
		l2_passes(file_origin, nodes, n_nodes, iters);
		return 0;
	}

	/* floor: raw memcached GETs */
	struct lat raw128 = raw_get(nodes[1], 128 * 1024, iters), raw512 = raw_get(nodes[1], CHUNK_SIZE, iters);

	/* memory and L1 */
	struct cache *c = open_cache(file_origin, NULL, 0, 0, 0, NULL, true);
	warm(c);
	struct lat mem512 = measure(c, CHUNK_SIZE, CACHE_TIER_MEM, iters);
	struct lat mem4k = measure(c, 4096, CACHE_TIER_MEM, iters * 5);
	cache_free(c);
	c = open_cache(file_origin, NULL, 0, 0, 0, l1, false);
	warm(c);
	struct lat l1_512 = measure(c, CHUNK_SIZE, CACHE_TIER_L1, iters);
	struct lat l1_4k = measure(c, 4096, CACHE_TIER_L1, iters * 5);
	cache_free(c);

	/* L2 4+1 healthy */
	flush_all(nodes, n_nodes);
	c = open_cache(file_origin, nodes, n_nodes, 4, 1, NULL, false);
	prime(c);
	struct lat l2_41 = measure(c, CHUNK_SIZE, CACHE_TIER_L2, iters);
	struct cache_stats s;
	cache_get_stats(c, &s);
	uint64_t l2_origin = s.origin_fetches;
	cache_free(c);
	/* the same with L1 on: every read is an L2 hit whose chunk then goes
	 * into L1 (evicted again after the read, so the next one is a hit in
	 * L2 again) */
	char l1b[600];
	snprintf(l1b, sizeof(l1b), "%s-l2", l1);
	c = open_cache(file_origin, nodes, n_nodes, 4, 1, l1b, false);
	evict_after = true;
	struct lat l2_41l1 = measure(c, CHUNK_SIZE, CACHE_TIER_L2, iters); /* back to back */
	settle_after = true;
	struct lat l2_41l1s = measure(c, CHUNK_SIZE, CACHE_TIER_L2, iters); /* writer idle at each read */
	evict_after = settle_after = false;
	cache_free(c);
	/* the same with the key check (salt configured) */
	use_salt = true;
	c = open_cache(file_origin, nodes, n_nodes, 4, 1, NULL, false);
	struct lat l2_41salt = measure(c, CHUNK_SIZE, CACHE_TIER_L2, iters);
	cache_free(c);
	use_salt = false;

	/* L3 */
	c = open_cache(file_origin, NULL, 0, 0, 0, NULL, false);
	struct lat l3f = measure(c, CHUNK_SIZE, CACHE_TIER_L3, iters);
	cache_free(c);
	c = open_cache(http_origin, NULL, 0, 0, 0, NULL, false);
	struct lat l3h = measure(c, CHUNK_SIZE, CACHE_TIER_L3, iters / 2);
	cache_free(c);

	/* one slow node: 4+1 and 4+0 through the slow list, replication */
	unsigned tail_iters = iters / 2;
	flush_all(nodes, n_nodes);
	c = open_cache(file_origin, slow, n_slow, 4, 1, NULL, false);
	prime(c);
	struct lat slow41 = measure(c, CHUNK_SIZE, CACHE_TIER_L2, tail_iters);
	cache_free(c);
	flush_all(nodes, n_nodes);
	c = open_cache(file_origin, nodes, n_nodes, 4, 0, NULL, false);
	prime(c);
	struct lat l2_40 = measure(c, CHUNK_SIZE, CACHE_TIER_L2, tail_iters);
	cache_free(c);
	c = open_cache(file_origin, slow, n_slow, 4, 0, NULL, false);
	prime(c);
	struct lat slow40 = measure(c, CHUNK_SIZE, CACHE_TIER_L2, tail_iters);
	cache_free(c);
	flush_all(nodes, n_nodes);
	struct lat rep = replicated(nodes, n_nodes, tail_iters);
	struct lat slowrep = replicated(slow, n_slow, tail_iters);

	struct lat vfloor = verify_floor(iters);
	printf("floor: raw memcached GET (libmemcached, one node), and the CPU cost of verifying a chunk\n");
	row("128 KiB value", raw128, NULL, 0);
	row("512 KiB value", raw512, NULL, 0);
	row("SHA-256 + AES-256-CTR of 512 KiB", vfloor, NULL, 0);
	double l2_floor = raw128.p50 + vfloor.p50;
	printf("\n512 KiB chunk read, verified and decrypted, per tier\n");
	row("memory", mem512, "raw 512 KiB GET", raw512.p50);
	row("L1 (disk, page cache warm)", l1_512, "raw 512 KiB GET", raw512.p50);
	row("L2 4+1 (5 memcached), no salt", l2_41, "raw 128 KiB GET", raw128.p50);
	printf("  %-34s p50 = %.2fx raw 512 KiB GET; origin reads during L2 run: %llu\n", "", l2_41.p50 / raw512.p50,
	       (unsigned long long)l2_origin);
	printf("  %-34s p50 = %.2fx the floor of a verified L2 read (raw 128 KiB GET + SHA-256 + AES: %.0f us)\n", "",
	       l2_41.p50 / l2_floor, l2_floor);
	row("L2 4+1, L1 on, back to back", l2_41l1, "raw 128 KiB GET", raw128.p50);
	row("L2 4+1, L1 on, L1 writer idle", l2_41l1s, "raw 128 KiB GET", raw128.p50);
	row("L2 4+1, salt (key check)", l2_41salt, "raw 128 KiB GET", raw128.p50);
	printf("  %-34s p50 = %.2fx raw 512 KiB GET\n", "", l2_41salt.p50 / raw512.p50);
	row("L3 file", l3f, "raw 512 KiB GET", raw512.p50);
	row("L3 http (nginx)", l3h, "raw 512 KiB GET", raw512.p50);
	printf("\n4 KiB read\n");
	row("memory, 4 KiB", mem4k, "512 KiB memory read", mem512.p50);
	row("L1, 4 KiB", l1_4k, "512 KiB L1 read", l1_512.p50);
	printf("\nL2 tail with one of 5 nodes behind a 20 ms delay proxy (healthy = same coding, no proxy)\n");
	row("4+1 healthy", l2_41, NULL, 0);
	row("4+1 one slow node", slow41, NULL, 0);
	row("4+0 healthy", l2_40, NULL, 0);
	row("4+0 one slow node", slow40, NULL, 0);
	row("replication (primary copy) healthy", rep, NULL, 0);
	row("replication one slow node", slowrep, NULL, 0);
	printf("  p99 slow/healthy: 4+1 %.2fx, 4+0 %.2fx, replication %.2fx\n", slow41.p99 / l2_41.p99,
	       slow40.p99 / l2_40.p99, slowrep.p99 / rep.p99);

	printf("\ntargets\n");
	printf("  L2 hit p50 <= 500 us: %.0f us %s; p99 <= 2000 us: %.0f us %s (no salt)\n", l2_41.p50,
	       l2_41.p50 <= 500 ? "MET" : "MISSED", l2_41.p99, l2_41.p99 <= 2000 ? "MET" : "MISSED");
	printf("  L2 hit with salt: p50 %.0f us %s; p99 %.0f us %s\n", l2_41salt.p50,
	       l2_41salt.p50 <= 500 ? "MET" : "MISSED", l2_41salt.p99, l2_41salt.p99 <= 2000 ? "MET" : "MISSED");
	printf("  4 KiB read p50 <= 50 us: L1 %.1f us %s, memory %.1f us %s\n", l1_4k.p50,
	       l1_4k.p50 <= 50 ? "MET" : "MISSED", mem4k.p50, mem4k.p50 <= 50 ? "MET" : "MISSED");
	printf("  4+1 p99 with a slow node within 1.5x of healthy: %.2fx %s (4+0: %.2fx)\n", slow41.p99 / l2_41.p99,
	       slow41.p99 / l2_41.p99 <= 1.5 ? "MET" : "MISSED", slow40.p99 / l2_40.p99);
	flush_all(nodes, n_nodes);
	l2_passes(file_origin, nodes, n_nodes, iters);
	struct lat *all[] = {&raw128, &raw512, &mem512, &mem4k, &l1_512, &l1_4k, &l2_41, &l2_41l1, &l2_41l1s,
			     &l2_41salt, &l3f, &l3h, &slow41, &l2_40, &slow40, &rep, &slowrep, &vfloor};
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		free(all[i]->samples);
	for (size_t i = 0; i < n_chunks; i++)
		free(chunks[i].cipher);
	free(chunks);
	return 0;
}
