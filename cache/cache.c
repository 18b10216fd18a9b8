/* cache: the read chain and the public API of cache.h.
 *
 * A read walks the chain of layers built by cache_new:
 *
 *   mem (mem.c) -> l1 (l1.c) -> flight (flight.c) -> l2 (l2_layer.c) -> l3 (l3.c)
 *
 * Each layer is one static ops table; it serves the read or calls the next
 * one.  Layers that are configured off are simply not in the chain.  Tests
 * put counting and fault layers in with cache_insert_layer.
 *
 * The origin store is shared by every fetching thread: the file store is
 * stateless per call (openat on a directory fd) and the http/s3 stores take
 * a pooled curl handle per call, so store_get is thread-safe; the l3 layer
 * bounds how many run at once.
 */
#include "cache.h"
#include "internal.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define HIST_BUCKETS 24

struct cache {
	uint8_t *salt;
	size_t salt_len;
	char *origin_uri;
	char *l1_dir;
	unsigned k, m;
	struct store *origin;
	struct l2 *l2;
	struct cache_layer *top;
	void *mem_state, *l1_state, *flight_state, *l3_state;
	uint64_t mem_max;
	struct cache_counters counters[CACHE_TIER_COUNT];
	uint64_t hist[CACHE_TIER_COUNT][HIST_BUCKETS];
	struct buf_pool chunk_bufs;
};

/* Idle chunk buffers kept: two per read in flight for four readers (4 MiB
 * at most). */
#define CACHE_CHUNK_BUFS_KEPT 8

struct buf_pool *cache_chunk_bufs(struct cache *c)
{
	return &c->chunk_bufs;
}

static const char *const tier_names[CACHE_TIER_COUNT] = {"none", "mem", "l1", "l2", "l3"};

const char *cache_tier_name(enum cache_tier t)
{
	return (unsigned)t < CACHE_TIER_COUNT ? tier_names[t] : "?";
}

struct cache_counters *cache_tier_counters(struct cache *c, enum cache_tier t)
{
	return &c->counters[(unsigned)t < CACHE_TIER_COUNT ? t : CACHE_TIER_NONE];
}

void cache_wait_l1(struct cache *c)
{
	if (c->l1_state)
		l1_layer_wait(c->l1_state);
}

const uint8_t *cache_salt(struct cache *c, size_t *out_len)
{
	*out_len = c->salt_len;
	return c->salt;
}

int cache_layer_next(struct cache_layer *l, struct chunk_req *rq)
{
	if (!l->next)
		return -EIO;
	return l->next->ops->read(l->next, rq);
}

/* Append a layer at the bottom of the chain. */
static int push_layer(struct cache *c, const struct cache_layer_ops *ops, void *state)
{
	struct cache_layer *l = calloc(1, sizeof(*l));
	if (!l) {
		struct cache_layer tmp = {.ops = ops, .state = state, .cache = c};
		if (ops->close)
			ops->close(&tmp);
		return -ENOMEM;
	}
	l->ops = ops;
	l->state = state;
	l->cache = c;
	struct cache_layer **p = &c->top;
	while (*p)
		p = &(*p)->next;
	*p = l;
	return 0;
}

int cache_insert_layer(struct cache *c, const char *above_name, const struct cache_layer_ops *ops, void *state)
{
	struct cache_layer **p = &c->top;
	while (*p && strcmp((*p)->ops->name, above_name) != 0)
		p = &(*p)->next;
	if (!*p)
		return -ENOENT;
	struct cache_layer *l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->ops = ops;
	l->state = state;
	l->cache = c;
	l->next = *p;
	*p = l;
	return 0;
}

int cache_new(const struct cache_config *cfg, struct cache **out)
{
	*out = NULL;
	if (!cfg || !cfg->origin_uri || !*cfg->origin_uri) {
		log_err("cache: no origin store configured (origin_uri, e.g. file:///var/lib/kindling/store)");
		return -EINVAL;
	}
	/* l2_k == 0 means the default 4+1; with l2_k set, l2_m is taken as
	 * given (0 is no parity). */
	unsigned k = cfg->l2_k ? cfg->l2_k : 4, m = cfg->l2_k ? cfg->l2_m : 1;
	if (cfg->n_l2_nodes && cfg->n_l2_nodes < (size_t)k + m) {
		log_err("cache: %zu L2 nodes cannot hold %u+%u fragments on distinct nodes; list at least %u nodes "
			"or lower k/m",
			cfg->n_l2_nodes, k, m, k + m);
		return -EINVAL;
	}
	if (cfg->salt_len > 1024) {
		log_err("cache: salt of %zu bytes is implausible", cfg->salt_len);
		return -EINVAL;
	}
	struct cache *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->k = k;
	c->m = m;
	buf_pool_init(&c->chunk_bufs, CHUNK_SIZE, CACHE_CHUNK_BUFS_KEPT);
	int r = -ENOMEM;
	if (!(c->origin_uri = strdup(cfg->origin_uri)))
		goto fail;
	if (cfg->salt) {
		if (!(c->salt = malloc(cfg->salt_len ? cfg->salt_len : 1)))
			goto fail;
		memcpy(c->salt, cfg->salt, cfg->salt_len);
		c->salt_len = cfg->salt_len;
	}
	if ((r = store_open(cfg->origin_uri, cfg->origin_options, &c->origin)) < 0) {
		log_err("cache: cannot open the origin store %s: %s", cfg->origin_uri, strerror(-r));
		goto fail;
	}
	if (cfg->n_l2_nodes) {
		struct l2_config lc = {
			.nodes = cfg->l2_nodes,
			.n_nodes = cfg->n_l2_nodes,
			.k = k,
			.m = m,
			.timeout_ms = cfg->l2_timeout_ms ? cfg->l2_timeout_ms : 200,
		};
		if ((r = l2_new(&lc, &c->l2)) < 0)
			goto fail;
	}

	const struct cache_layer_ops *ops;
	void *st;
	if (!cfg->mem_disable) {
		c->mem_max = cfg->mem_max_bytes ? cfg->mem_max_bytes : 64ull << 20;
		if ((r = mem_layer_new(c->mem_max, &ops, &st)) < 0 || (r = push_layer(c, ops, st)) < 0)
			goto fail;
		c->mem_state = st;
	}
	if (cfg->l1_dir) {
		if (!(c->l1_dir = strdup(cfg->l1_dir))) {
			r = -ENOMEM;
			goto fail;
		}
		uint64_t max = cfg->l1_max_bytes ? cfg->l1_max_bytes : 4ull << 30;
		char why[600];
		r = l1_layer_new(c, cfg->l1_dir, max, &ops, &st, why, sizeof(why));
		if (r == -ENOMEM)
			goto fail;
		if (r < 0) {
			/* the cache is an accelerator: a broken L1 must not stop the reads */
			log_warn("L1 disk cache off: %s.  Reads go to L2 and the origin without it.  Make %s a "
				 "directory this user can write, or point --l1-dir at one",
				 why, cfg->l1_dir);
			free(c->l1_dir);
			c->l1_dir = NULL;
		} else if ((r = push_layer(c, ops, st)) < 0) {
			goto fail; /* push_layer closed it */
		} else {
			c->l1_state = st;
		}
	}
	if ((r = flight_layer_new(c, &ops, &st)) < 0 || (r = push_layer(c, ops, st)) < 0)
		goto fail;
	c->flight_state = st;
	if (c->l2 && ((r = l2_layer_new(c, c->l2, &ops, &st)) < 0 || (r = push_layer(c, ops, st)) < 0))
		goto fail;
	if ((r = l3_layer_new(c, c->origin, cfg->origin_parallel ? cfg->origin_parallel : 8, &ops, &st)) < 0 ||
	    (r = push_layer(c, ops, st)) < 0)
		goto fail;
	c->l3_state = st;
	*out = c;
	return 0;
fail:
	cache_free(c);
	return r;
}

void cache_free(struct cache *c)
{
	if (!c)
		return;
	/* L2 first: its background writers may still hold chunks. */
	if (c->l2)
		l2_flush(c->l2);
	for (struct cache_layer *l = c->top, *n; l; l = n) {
		n = l->next;
		if (l->ops->close)
			l->ops->close(l);
		free(l);
	}
	l2_free(c->l2);
	store_free(c->origin);
	free(c->salt);
	free(c->origin_uri);
	free(c->l1_dir);
	buf_pool_cleanup(&c->chunk_bufs); /* the layers dropped every chunk_whole */
	free(c);
}

static unsigned hist_bucket(double us)
{
	unsigned b = 0;
	uint64_t v = us < 1 ? 1 : (uint64_t)us;
	while (v > 1 && b < HIST_BUCKETS - 1) {
		v >>= 1;
		b++;
	}
	return b;
}

static int chain_read(struct cache *c, struct chunk_req *rq, enum cache_tier *out_tier)
{
	double t0 = now_seconds();
	int r = c->top->ops->read(c->top, rq);
	chunk_whole_unref(rq->whole);
	rq->whole = NULL;
	if (r < 0) {
		if (rq->buf && rq->len)
			memset(rq->buf, 0, rq->len); /* nothing unverified leaves */
		if (r != -EINVAL && r != -ENOMEM)
			r = -EIO;
		if (out_tier)
			*out_tier = CACHE_TIER_NONE;
		return r;
	}
	double us = (now_seconds() - t0) * 1e6;
	enum cache_tier t = (unsigned)rq->tier < CACHE_TIER_COUNT ? rq->tier : CACHE_TIER_NONE;
	__atomic_fetch_add(&c->hist[t][hist_bucket(us)], 1, __ATOMIC_RELAXED);
	if (out_tier)
		*out_tier = t;
	return 0;
}

static int read_range(struct cache *c, const char *name, const uint8_t key[CHUNK_KEY_LEN], uint32_t off, void *buf,
		      size_t len, bool once, enum cache_tier *out_tier)
{
	if (out_tier)
		*out_tier = CACHE_TIER_NONE;
	if (!name || !is_sha256_hex(name) || !key || (len && !buf) || off > CHUNK_SIZE || len > CHUNK_SIZE - off)
		return -EINVAL;
	struct chunk_req rq = {.name = name, .key = key, .off = off, .len = len, .buf = len ? buf : NULL,
			       .once = once};
	return chain_read(c, &rq, out_tier);
}

int cache_read(struct cache *c, const char *name, const uint8_t key[CHUNK_KEY_LEN], uint32_t off, void *buf,
	       size_t len, enum cache_tier *out_tier)
{
	return read_range(c, name, key, off, buf, len, false, out_tier);
}

int cache_read_once(struct cache *c, const char *name, const uint8_t key[CHUNK_KEY_LEN], uint32_t off, void *buf,
		    size_t len, enum cache_tier *out_tier)
{
	return read_range(c, name, key, off, buf, len, true, out_tier);
}

int cache_prefetch(struct cache *c, const char *name, const uint8_t key[CHUNK_KEY_LEN], enum cache_tier *out_tier)
{
	if (out_tier)
		*out_tier = CACHE_TIER_NONE;
	if (!name || !is_sha256_hex(name) || !key)
		return -EINVAL;
	struct chunk_req rq = {.name = name, .key = key};
	return chain_read(c, &rq, out_tier);
}

void cache_evict(struct cache *c, const char *name)
{
	if (!name || !is_sha256_hex(name))
		return;
	for (struct cache_layer *l = c->top; l; l = l->next)
		if (l->ops->evict)
			l->ops->evict(l, name);
}

/* ---- priming L2 ------------------------------------------------------------------ */

struct prime_job {
	struct cache *c;
	const struct manifest *m;
	size_t next;		/* atomic: next chunk to take */
	uint64_t written;	/* atomic */
	int err;		/* first error, atomic */
};

static bool name_matches(const char *name, const uint8_t *buf, size_t len)
{
	uint8_t d[SHA256_LEN];
	char hex[SHA256_HEX_LEN + 1];
	sha256_buf(buf, len, d);
	hex_encode(d, SHA256_LEN, hex);
	return strcmp(hex, name) == 0;
}

static void *prime_worker(void *arg)
{
	struct prime_job *j = arg;
	struct cache *c = j->c;
	uint8_t *buf = malloc(CHUNK_SIZE);
	if (!buf) {
		int zero = 0;
		__atomic_compare_exchange_n(&j->err, &zero, -ENOMEM, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
		return NULL;
	}
	for (;;) {
		size_t i = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED);
		if (i >= j->m->n_chunks || __atomic_load_n(&j->err, __ATOMIC_RELAXED))
			break;
		const char *name = j->m->chunks[i].name;
		if (!is_sha256_hex(name))
			continue;
		size_t len = 0;
		/* Already there and intact: nothing to write. */
		if (l2_get(c->l2, name, buf, &len) == 0) /* l2_get checks the name */
			continue;
		char key[16 + CHUNK_NAME_HEX_LEN];
		snprintf(key, sizeof(key), "chunks/%s", name);
		uint8_t *cipher = NULL;
		int r = store_get(c->origin, key, CHUNK_SIZE, &cipher, &len);
		if (r == 0 && !name_matches(name, cipher, len)) {
			log_err("prime: chunk %s in the origin %s does not match its name; not writing it to L2 "
				"(run `chunkify verify` on the image)",
				name, store_describe(c->origin));
			r = -EBADMSG;
		}
		if (r == 0 && (r = l2_put(c->l2, name, cipher, len)) < 0)
			log_err("prime: writing chunk %s to L2 failed: %s (are at least k of the nodes up?)", name,
				strerror(-r));
		free(cipher);
		if (r < 0) {
			int zero = 0;
			__atomic_compare_exchange_n(&j->err, &zero, r, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
			break;
		}
		__atomic_fetch_add(&j->written, 1, __ATOMIC_RELAXED);
	}
	free(buf);
	return NULL;
}

int cache_prime_l2(struct cache *c, const struct manifest *m, uint64_t *out_written)
{
	if (out_written)
		*out_written = 0;
	if (!c->l2) {
		log_err("prime: no L2 nodes configured (--l2 HOST:PORT,...)");
		return -EINVAL;
	}
	struct prime_job j = {.c = c, .m = m};
	enum { N = 8 };
	pthread_t th[N];
	size_t started = 0;
	for (; started < N && started < m->n_chunks; started++)
		if (pthread_create(&th[started], NULL, prime_worker, &j) != 0)
			break;
	if (!started && m->n_chunks)
		prime_worker(&j);
	for (size_t i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	l2_flush(c->l2);
	if (out_written)
		*out_written = j.written;
	return j.err;
}

/* ---- stats ------------------------------------------------------------------------ */

void cache_get_stats(struct cache *c, struct cache_stats *out)
{
	memset(out, 0, sizeof(*out));
	for (unsigned t = 0; t < CACHE_TIER_COUNT; t++) {
		struct cache_counters *k = &c->counters[t];
		struct cache_tier_stats *s = &out->tier[t];
		s->hits = __atomic_load_n(&k->hits, __ATOMIC_RELAXED);
		s->misses = __atomic_load_n(&k->misses, __ATOMIC_RELAXED);
		s->bytes = __atomic_load_n(&k->bytes, __ATOMIC_RELAXED);
		s->errors = __atomic_load_n(&k->errors, __ATOMIC_RELAXED);
		s->corrupt = __atomic_load_n(&k->corrupt, __ATOMIC_RELAXED);
		for (unsigned b = 0; b < HIST_BUCKETS; b++)
			s->latency_us_hist[b] = __atomic_load_n(&c->hist[t][b], __ATOMIC_RELAXED);
	}
	if (c->l1_state) {
		struct l1_usage u;
		l1_layer_usage(c->l1_state, &u);
		out->l1_bytes = u.bytes;
		out->l1_max_bytes = u.max_bytes;
		out->l1_entries = u.entries;
		out->l1_evictions = u.evictions;
	}
	if (c->mem_state) {
		mem_layer_usage(c->mem_state, &out->mem_bytes);
		out->mem_max_bytes = c->mem_max;
	}
	out->origin_fetches = l3_layer_fetches(c->l3_state);
	out->singleflight_shared = flight_layer_shared(c->flight_state);
}

double cache_hist_percentile(const uint64_t hist[24], double p)
{
	uint64_t total = 0;
	for (int i = 0; i < HIST_BUCKETS; i++)
		total += hist[i];
	if (!total)
		return 0;
	double want = p / 100.0 * (double)total, seen = 0;
	for (int i = 0; i < HIST_BUCKETS; i++) {
		seen += (double)hist[i];
		if (seen >= want && hist[i])
			return (double)(2ull << i); /* the bucket's upper edge: never flattering */
	}
	return (double)(2ull << (HIST_BUCKETS - 1));
}

char *cache_stats_json(struct cache *c)
{
	struct cache_stats s;
	cache_get_stats(c, &s);
	json_t *root = json_object(), *tiers = json_object();
	if (!root || !tiers) {
		json_decref(root);
		json_decref(tiers);
		return NULL;
	}
	uint64_t reads = 0;
	for (unsigned t = CACHE_TIER_MEM; t < CACHE_TIER_COUNT; t++)
		reads += s.tier[t].hits;
	for (unsigned t = CACHE_TIER_MEM; t < CACHE_TIER_COUNT; t++) {
		const struct cache_tier_stats *x = &s.tier[t];
		double lookups = (double)(x->hits + x->misses);
		json_object_set_new(
		    tiers, tier_names[t],
		    json_pack("{s:I,s:I,s:I,s:I,s:I,s:f,s:f,s:f,s:f}", "hits", (json_int_t)x->hits, "misses",
			      (json_int_t)x->misses, "bytes", (json_int_t)x->bytes, "errors", (json_int_t)x->errors,
			      "corrupt", (json_int_t)x->corrupt, "hit_rate", lookups ? (double)x->hits / lookups : 0.0,
			      "share_of_reads", reads ? (double)x->hits / (double)reads : 0.0, "p50_us",
			      cache_hist_percentile(x->latency_us_hist, 50), "p99_us",
			      cache_hist_percentile(x->latency_us_hist, 99)));
	}
	json_object_set_new(root, "tiers", tiers);
	json_object_set_new(root, "mem",
			    json_pack("{s:b,s:I,s:I}", "enabled", c->mem_state != NULL, "bytes", (json_int_t)s.mem_bytes,
				      "max_bytes", (json_int_t)s.mem_max_bytes));
	json_object_set_new(root, "l1",
			    json_pack("{s:b,s:s?,s:I,s:I,s:I,s:I}", "enabled", c->l1_state != NULL, "dir", c->l1_dir,
				      "bytes", (json_int_t)s.l1_bytes, "max_bytes", (json_int_t)s.l1_max_bytes, "entries",
				      (json_int_t)s.l1_entries, "evictions", (json_int_t)s.l1_evictions));
	json_object_set_new(root, "origin",
			    json_pack("{s:s,s:I}", "uri", c->origin_uri, "fetches", (json_int_t)s.origin_fetches));
	json_object_set_new(root, "singleflight_shared", json_integer((json_int_t)s.singleflight_shared));
	json_t *l2 = json_pack("{s:b,s:i,s:i}", "enabled", c->l2 != NULL, "k", (int)c->k, "m", (int)c->m);
	struct l2_stats ls;
	if (l2 && c->l2 && l2_stats(c->l2, &ls) == 0) {
		json_t *nodes = json_array();
		size_t up = 0;
		for (size_t i = 0; i < ls.n_nodes; i++) {
			const struct l2_node_stats *n = &ls.nodes[i];
			up += n->up;
			json_array_append_new(
			    nodes, json_pack("{s:s,s:b,s:f,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "addr", n->addr, "up", n->up,
					     "latency_ms", n->latency_ewma_ms, "gets", (json_int_t)n->gets, "hits",
					     (json_int_t)n->hits, "misses", (json_int_t)n->misses, "errors",
					     (json_int_t)n->errors, "timeouts", (json_int_t)n->timeouts, "corrupt",
					     (json_int_t)n->corrupt, "bytes_read", (json_int_t)n->bytes_read,
					     "bytes_written", (json_int_t)n->bytes_written, "slow_skipped",
					     (json_int_t)n->slow_skipped, "slow_probes", (json_int_t)n->slow_probes));
		}
		json_object_set_new(l2, "nodes_up", json_integer((json_int_t)up));
		json_object_set_new(l2, "nodes", nodes);
		json_t *cnt = json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "gets", (json_int_t)ls.gets, "hits",
					(json_int_t)ls.hits, "misses", (json_int_t)ls.misses, "decodes",
					(json_int_t)ls.decodes, "repairs_queued", (json_int_t)ls.repairs_queued,
					"repairs_done", (json_int_t)ls.repairs_done, "puts", (json_int_t)ls.puts,
					"crc_rereads", (json_int_t)ls.crc_rereads);
		json_object_update(l2, cnt);
		json_decref(cnt);
		free(ls.nodes);
	}
	json_object_set_new(root, "l2", l2);
	char *out = json_dumps(root, JSON_COMPACT);
	json_decref(root);
	return out;
}
