/* cachectl: look at and through kindling's chunk cache.
 *
 *   cachectl status [--json]      L2 nodes up/down with latency (probed), L1 use
 *   cachectl get NAME KEYHEX      read one chunk through the tiers
 */
#define LOG_COMPONENT "cachectl"
#include "cache/cache.h"
#include "image/image.h"
#include "common/common.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void usage(FILE *out)
{
	fprintf(out,
		"usage: cachectl [OPTIONS] COMMAND ...\n"
		"\n"
		"  status [--json] [--no-probe]  L2 nodes (up/down, latency), L1 use and hit rates\n"
		"  get NAME KEYHEX [--out FILE]  read chunk NAME (sealed with KEYHEX) through memory, L1, L2, L3;\n"
		"                                writes the 512 KiB plaintext to FILE (default stdout) and the\n"
		"                                tier that served it to stderr (--json: with the counters)\n"
		"\n"
		"Options (defaults in brackets):\n"
		"  --origin URI        the L3 origin store [$KINDLING_HOME/store; KINDLING_HOME defaults to ~/.kindling]\n"
		"  --l2 H:P,H:P,...    the L2 memcached nodes [$KINDLING_L2_NODES, else none: L2 off]\n"
		"  --k N, --m N        L2 data and parity fragments per chunk [4 and 1]; needs >= k+m nodes\n"
		"  --timeout-ms N      per-node L2 request timeout [200]\n"
		"  --l1-dir DIR        the L1 disk cache directory [get: $KINDLING_HOME/l1; status: reported if given]\n"
		"  --l1-size SIZE      L1 size bound, with K/M/G suffixes [4G]\n"
		"  --mem-size SIZE     memory tier size [64M]\n"
		"  --no-key-check      skip the key == SHA-256(salt || plaintext) check [checked when the\n"
		"                      deployment salt is known: $KINDLING_SALT or $KINDLING_HOME/salt]\n"
		"  -v, --verbose       log more (KINDLING_DEBUG=1 for everything)\n");
}

struct opts {
	const char *origin, *l1_dir, *out;
	char *l2_spec;
	unsigned k, m, timeout_ms;
	uint64_t l1_size, mem_size;
	bool json, no_probe, no_key_check;
};

static int parse_uint(const char *s, unsigned max, unsigned *out)
{
	char *end;
	unsigned long v = strtoul(s, &end, 10);
	if (end == s || *end || v > max)
		return -EINVAL;
	*out = (unsigned)v;
	return 0;
}

/* Split "a,b,c" in place into |nodes| (at most 64). */
static size_t split_nodes(char *spec, const char **nodes)
{
	size_t n = 0;
	for (char *save = NULL, *t = spec ? strtok_r(spec, ",", &save) : NULL; t && n < 64;
	     t = strtok_r(NULL, ",", &save))
		nodes[n++] = t;
	return n;
}

static void l1_dir_usage(const char *dir, uint64_t *bytes, uint64_t *entries)
{
	*bytes = *entries = 0;
	DIR *d = opendir(dir);
	struct dirent *de;
	while (d && (de = readdir(d))) {
		if (!is_sha256_hex(de->d_name))
			continue;
		char *p = xasprintf("%s/%s", dir, de->d_name);
		struct stat st;
		if (p && stat(p, &st) == 0) {
			*bytes += (uint64_t)st.st_size;
			(*entries)++;
		}
		free(p);
	}
	if (d)
		closedir(d);
}

static int cmd_status(struct cache *c, const struct opts *o, size_t n_nodes)
{
	if (n_nodes && !o->no_probe) {
		/* Ask every node for a few names nobody stores: each node gets
		 * requests, so its state and latency are current. */
		uint8_t *buf = malloc(CHUNK_SIZE), key[CHUNK_KEY_LEN] = {0};
		for (size_t i = 0; buf && i < 2 * n_nodes + 2; i++) {
			uint8_t rnd[SHA256_LEN];
			char name[SHA256_HEX_LEN + 1];
			random_bytes(rnd, sizeof(rnd));
			hex_encode(rnd, sizeof(rnd), name);
			log_set_level(LOG_SILENT); /* the misses are the point */
			cache_read(c, name, key, 0, buf, 4096, NULL);
			log_set_level(LOG_WARN);
		}
		free(buf);
	}
	char *js = cache_stats_json(c);
	json_t *root = js ? json_loads(js, 0, NULL) : NULL;
	free(js);
	if (!root)
		return -ENOMEM;
	json_t *l1 = json_object_get(root, "l1");
	if (o->l1_dir) {
		uint64_t bytes, entries;
		l1_dir_usage(o->l1_dir, &bytes, &entries);
		json_object_set_new(l1, "dir", json_string(o->l1_dir));
		json_object_set_new(l1, "bytes", json_integer((json_int_t)bytes));
		json_object_set_new(l1, "entries", json_integer((json_int_t)entries));
		json_object_set_new(l1, "max_bytes", json_integer((json_int_t)o->l1_size));
	}
	if (o->json) {
		char *s = json_dumps(root, JSON_COMPACT);
		printf("%s\n", s ? s : "{}");
		free(s);
		json_decref(root);
		return 0;
	}
	printf("origin  %s\n", json_string_value(json_object_get(json_object_get(root, "origin"), "uri")));
	json_t *l2 = json_object_get(root, "l2");
	json_t *nodes = json_object_get(l2, "nodes");
	if (json_is_true(json_object_get(l2, "enabled"))) {
		printf("L2      %lld+%lld coding, %lld of %zu nodes up\n",
		       (long long)json_integer_value(json_object_get(l2, "k")),
		       (long long)json_integer_value(json_object_get(l2, "m")),
		       (long long)json_integer_value(json_object_get(l2, "nodes_up")), json_array_size(nodes));
		size_t i;
		json_t *n;
		json_array_foreach(nodes, i, n)
		{
			bool up = json_is_true(json_object_get(n, "up"));
			printf("  %-22s %-4s  latency %7.3f ms  gets %lld  hits %lld  errors %lld  timeouts %lld\n",
			       json_string_value(json_object_get(n, "addr")), up ? "up" : "DOWN",
			       json_real_value(json_object_get(n, "latency_ms")),
			       (long long)json_integer_value(json_object_get(n, "gets")),
			       (long long)json_integer_value(json_object_get(n, "hits")),
			       (long long)json_integer_value(json_object_get(n, "errors")),
			       (long long)json_integer_value(json_object_get(n, "timeouts")));
		}
	} else {
		printf("L2      off (no nodes: --l2 HOST:PORT,... or KINDLING_L2_NODES)\n");
	}
	if (o->l1_dir) {
		double b = (double)json_integer_value(json_object_get(l1, "bytes"));
		printf("L1      %s: %lld entries, %.1f MiB of %.0f MiB (%.1f%%)\n", o->l1_dir,
		       (long long)json_integer_value(json_object_get(l1, "entries")), b / (1 << 20),
		       (double)o->l1_size / (1 << 20), o->l1_size ? 100.0 * b / (double)o->l1_size : 0.0);
	} else {
		printf("L1      not shown (--l1-dir DIR)\n");
	}
	printf("hit rates of this process (a live host's are in blockd's stats.json):\n");
	json_t *tiers = json_object_get(root, "tiers");
	const char *tn[] = {"mem", "l1", "l2", "l3"};
	for (size_t i = 0; i < 4; i++) {
		json_t *t = json_object_get(tiers, tn[i]);
		printf("  %-4s hits %lld  misses %lld  hit rate %.1f%%  corrupt %lld  errors %lld\n", tn[i],
		       (long long)json_integer_value(json_object_get(t, "hits")),
		       (long long)json_integer_value(json_object_get(t, "misses")),
		       100 * json_real_value(json_object_get(t, "hit_rate")),
		       (long long)json_integer_value(json_object_get(t, "corrupt")),
		       (long long)json_integer_value(json_object_get(t, "errors")));
	}
	json_decref(root);
	return 0;
}

static int cmd_get(struct cache *c, const struct opts *o, const char *name, const char *keyhex)
{
	uint8_t key[CHUNK_KEY_LEN];
	if (!is_sha256_hex(name) || strlen(keyhex) != 64 || hex_decode(keyhex, key, sizeof(key)) < 0) {
		fprintf(stderr, "cachectl get: NAME and KEYHEX must be 64 lower-case hex digits each\n");
		return -EINVAL;
	}
	uint8_t *buf = malloc(CHUNK_SIZE);
	if (!buf)
		return -ENOMEM;
	enum cache_tier tier;
	double t0 = now_seconds();
	int r = cache_read(c, name, key, 0, buf, CHUNK_SIZE, &tier);
	double us = (now_seconds() - t0) * 1e6;
	if (r == 0) {
		FILE *f = o->out ? fopen(o->out, "wb") : stdout;
		if (!f || fwrite(buf, 1, CHUNK_SIZE, f) != CHUNK_SIZE || (o->out && fclose(f) != 0))
			r = -errno ? -errno : -EIO;
	}
	free(buf);
	if (r < 0)
		return r;
	if (o->json) {
		char *js = cache_stats_json(c);
		fprintf(stderr, "{\"tier\":\"%s\",\"us\":%.0f,\"stats\":%s}\n", cache_tier_name(tier), us,
			js ? js : "null");
		free(js);
	} else {
		fprintf(stderr, "chunk %s: served by %s in %.0f us\n", name, cache_tier_name(tier), us);
	}
	return 0;
}

int main(int argc, char **argv)
{
	log_set_program("cachectl");
	struct opts o = {.l1_size = 4ull << 30, .mem_size = 64ull << 20};
	enum { O_ORIGIN = 256, O_L2, O_K, O_M, O_TIMEOUT, O_L1DIR, O_L1SIZE, O_MEMSIZE, O_JSON, O_NOPROBE, O_OUT, O_NOKEY };
	static const struct option longopts[] = {
		{"origin", required_argument, NULL, O_ORIGIN},	   {"l2", required_argument, NULL, O_L2},
		{"k", required_argument, NULL, O_K},		   {"m", required_argument, NULL, O_M},
		{"timeout-ms", required_argument, NULL, O_TIMEOUT}, {"l1-dir", required_argument, NULL, O_L1DIR},
		{"l1-size", required_argument, NULL, O_L1SIZE},	   {"mem-size", required_argument, NULL, O_MEMSIZE},
		{"json", no_argument, NULL, O_JSON},		   {"no-probe", no_argument, NULL, O_NOPROBE},
		{"out", required_argument, NULL, O_OUT},	   {"no-key-check", no_argument, NULL, O_NOKEY},
		{"verbose", no_argument, NULL, 'v'},		   {"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	int ch, bad = 0;
	bool m_set = false;
	while ((ch = getopt_long(argc, argv, "vh", longopts, NULL)) != -1) {
		switch (ch) {
		case O_ORIGIN: o.origin = optarg; break;
		case O_L2: free(o.l2_spec); o.l2_spec = strdup(optarg); break;
		case O_K: bad |= parse_uint(optarg, 32, &o.k) < 0 || o.k == 0; break;
		case O_M: bad |= parse_uint(optarg, 32, &o.m) < 0; m_set = true; break;
		case O_TIMEOUT: bad |= parse_uint(optarg, 600000, &o.timeout_ms) < 0; break;
		case O_L1DIR: o.l1_dir = optarg; break;
		case O_L1SIZE: bad |= parse_size(optarg, &o.l1_size) < 0; break;
		case O_MEMSIZE: bad |= parse_size(optarg, &o.mem_size) < 0; break;
		case O_JSON: o.json = true; break;
		case O_NOPROBE: o.no_probe = true; break;
		case O_OUT: o.out = optarg; break;
		case O_NOKEY: o.no_key_check = true; break;
		case 'v': log_set_level(LOG_INFO); break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (bad) {
		fprintf(stderr, "cachectl: bad option value (see --help)\n");
		return 2;
	}
	int nargs = argc - optind;
	const char *cmd = nargs > 0 ? argv[optind] : NULL;
	if (!cmd || !((strcmp(cmd, "status") == 0 && nargs == 1) || (strcmp(cmd, "get") == 0 && nargs == 3))) {
		usage(stderr);
		return 2;
	}
	bool get = strcmp(cmd, "get") == 0;
	if (m_set && !o.k)
		o.k = 4; /* --m alone: k keeps its default */
	if (o.k && !m_set)
		o.m = 1;
	if (!o.l2_spec && getenv("KINDLING_L2_NODES"))
		o.l2_spec = strdup(getenv("KINDLING_L2_NODES"));
	const char *nodes[64];
	size_t n_nodes = split_nodes(o.l2_spec, nodes);
	/* The salt is only read, never created here: a salt no importer used
	 * would fail every key check. */
	struct kindling_env env;
	if (kindling_env_load(&env, KINDLING_ENV_READ_ONLY) < 0) {
		free(o.l2_spec);
		return 1;
	}
	char *origin = strdup(o.origin ? o.origin : env.default_store_uri);
	char *l1 = o.l1_dir ? strdup(o.l1_dir) : get ? kindling_env_path(&env, "l1") : NULL;
	bool have_salt = !o.no_key_check && env.salt_len > 0;
	struct cache_config cfg = {
		.origin_uri = origin,
		.l2_nodes = nodes,
		.n_l2_nodes = n_nodes,
		.l2_k = o.k,
		.l2_m = o.m,
		.l2_timeout_ms = o.timeout_ms,
		/* status never opens L1 itself: a running blockd holds it */
		.l1_dir = get ? l1 : NULL,
		.l1_max_bytes = o.l1_size,
		.mem_max_bytes = o.mem_size,
		.mem_disable = !get,
		.salt = have_salt ? env.salt : NULL,
		.salt_len = have_salt ? env.salt_len : 0,
	};
	struct cache *c = NULL;
	int r = cache_new(&cfg, &c);
	if (r == 0)
		r = get ? cmd_get(c, &o, argv[optind + 1], argv[optind + 2]) : cmd_status(c, &o, n_nodes);
	cache_free(c);
	kindling_env_cleanup(&env);
	free(origin);
	free(l1);
	free(o.l2_spec);
	if (r < 0) {
		fprintf(stderr, "cachectl: %s failed: %s\n", cmd, strerror(-r));
		return 1;
	}
	return 0;
}
