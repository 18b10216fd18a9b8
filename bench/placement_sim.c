/* bench/placement_sim: a fleet of simulated hosts, driven by a synthetic
 * arrival trace, placed by the real placement library (placement.h: the
 * same cells, shards, scoring and Bloom summaries as the service), against
 * random and least-loaded placement.
 *
 * The model, per simulated host: memory and slots; sandboxes that run an
 * invocation, then stay idle (warm) until an idle timeout, or until the host
 * needs their memory for a new one (the least recently used idle sandbox
 * goes first); an L1 of a bounded number of 512 KiB chunks with LRU
 * eviction; and the Bloom summary of that L1 that the host publishes, rebuilt
 * every 5 simulated seconds as the agents do, and passed to placement as
 * text (encoded, then decoded, as through etcd).  An invocation goes to an
 * idle sandbox of its function anywhere in the fleet (the frontends route
 * warm invokes); only without one is it a cold start, placed by the strategy
 * under test; the new sandbox reads its image's startup chunks through the
 * host's L1.
 *
 * The trace: functions with Zipf popularity; arrivals Poisson at a rate that
 * follows one compressed day (a sine over the run); cron functions that fire
 * together at every minute and every hour boundary, with fan-out; images
 * built from a few OS bases and runtime layers (shared, Zipf popular), of
 * which 20% add a unique layer (so ~80% add no unique chunks, as in the
 * Lambda paper).  Every strategy replays the same trace (same seed).
 *
 * Output: a Markdown table on stdout; with --data DIR, DIR/summary.dat and
 * DIR/series.dat for bench/placement_sim.sh's plot.  Deterministic given the
 * seed. */
#include "placement/placement.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK_BYTES (512u << 10)
#define NONE16 0xffffu

struct params {
	uint32_t hosts, cell_hosts, shard_size;
	uint64_t host_memory_mb;
	uint32_t host_slots;
	uint32_t functions_per_host;
	double zipf_s;
	double rate_per_host; /* mean invocations per host per second */
	uint32_t seconds;
	uint32_t idle_ttl_s;
	uint32_t l1_chunks;
	uint32_t bloom_bits, bloom_refresh_s;
	double mean_duration_ms;
	uint64_t seed;
	struct placement_weights w;
	bool weights_set;
	const char *data_dir;
};

/* ---- a host's L1: LRU over chunk ids, with an open-addressing index ---- */

struct l1 {
	uint32_t cap, n, mask;
	uint32_t *chunk;	/* per slot */
	uint16_t *prev, *next;	/* LRU list: head = most recent */
	uint16_t head, tail;
	uint16_t *index;	/* chunk -> slot + 1 (0: empty), linear probing */
};

static uint32_t hash32(uint32_t x)
{
	x ^= x >> 16;
	x *= 0x7feb352d;
	x ^= x >> 15;
	x *= 0x846ca68b;
	return x ^ (x >> 16);
}

static int l1_init(struct l1 *c, uint32_t cap)
{
	memset(c, 0, sizeof(*c));
	uint32_t isz = 1;
	while (isz < cap * 2)
		isz <<= 1;
	c->cap = cap;
	c->mask = isz - 1;
	c->chunk = calloc(cap, sizeof(*c->chunk));
	c->prev = calloc(cap, sizeof(*c->prev));
	c->next = calloc(cap, sizeof(*c->next));
	c->index = calloc(isz, sizeof(*c->index));
	c->head = c->tail = NONE16;
	return c->chunk && c->prev && c->next && c->index ? 0 : -ENOMEM;
}

static void l1_cleanup(struct l1 *c)
{
	free(c->chunk);
	free(c->prev);
	free(c->next);
	free(c->index);
}

static uint32_t l1_find(const struct l1 *c, uint32_t chunk, uint32_t *pos)
{
	uint32_t p = hash32(chunk) & c->mask;
	while (c->index[p]) {
		if (c->chunk[c->index[p] - 1] == chunk) {
			*pos = p;
			return c->index[p] - 1;
		}
		p = (p + 1) & c->mask;
	}
	*pos = p;
	return NONE16;
}

static void l1_unlink(struct l1 *c, uint16_t s)
{
	if (c->prev[s] != NONE16)
		c->next[c->prev[s]] = c->next[s];
	else
		c->head = c->next[s];
	if (c->next[s] != NONE16)
		c->prev[c->next[s]] = c->prev[s];
	else
		c->tail = c->prev[s];
}

static void l1_push_front(struct l1 *c, uint16_t s)
{
	c->prev[s] = NONE16;
	c->next[s] = c->head;
	if (c->head != NONE16)
		c->prev[c->head] = s;
	c->head = s;
	if (c->tail == NONE16)
		c->tail = s;
}

/* Remove index entry at |p| (backward-shift deletion). */
static void l1_index_del(struct l1 *c, uint32_t p)
{
	uint32_t q = p;
	for (;;) {
		q = (q + 1) & c->mask;
		if (!c->index[q])
			break;
		uint32_t home = hash32(c->chunk[c->index[q] - 1]) & c->mask;
		/* Move q's entry to p if its home is not within (p, q]. */
		if ((q > p && (home <= p || home > q)) || (q < p && (home <= p && home > q))) {
			c->index[p] = c->index[q];
			p = q;
		}
	}
	c->index[p] = 0;
}

/* Touch |chunk|: true on a hit; a miss inserts it, evicting the LRU. */
static bool l1_access(struct l1 *c, uint32_t chunk)
{
	uint32_t pos;
	uint32_t s = l1_find(c, chunk, &pos);
	if (s != NONE16) {
		l1_unlink(c, (uint16_t)s);
		l1_push_front(c, (uint16_t)s);
		return true;
	}
	if (c->n == c->cap) {
		uint16_t v = c->tail;
		uint32_t vp;
		l1_find(c, c->chunk[v], &vp);
		l1_index_del(c, vp);
		l1_unlink(c, v);
		s = v;
		l1_find(c, chunk, &pos); /* the deletion may have moved the free slot */
	} else {
		s = c->n++;
	}
	c->chunk[s] = chunk;
	c->index[pos] = (uint16_t)(s + 1);
	l1_push_front(c, (uint16_t)s);
	return false;
}

/* ---- the fleet ---- */

struct function {
	char name[16];
	uint32_t memory_mb;
	uint32_t os, runtime;	     /* layer ids */
	uint32_t unique_first, unique_n; /* chunk range of its own layer */
	uint32_t *sandboxes;	     /* live sandbox ids */
	uint32_t n_sandboxes, cap_sandboxes;
	bool cron_minute, cron_hour;
	uint32_t fanout;
};

struct layer {
	uint32_t first, n;
};

enum sb_state { SB_FREE, SB_BUSY, SB_IDLE };

struct sandbox {
	uint32_t fn, host;
	uint8_t state;
	uint64_t last_used_ms;
};

struct host {
	char id[16];
	uint32_t sandboxes[64];
	uint32_t n_sandboxes;
	struct l1 l1;
	struct placement_bloom bloom; /* built from the L1 at each refresh */
	struct placement_bloom published; /* what placement sees: bloom's text, decoded */
	bool l1_ready, dirty;
};

struct completion {
	uint64_t t;
	uint32_t sb;
};

struct stats {
	uint64_t invocations, cold, rejected, spilled;
	uint64_t bytes_needed, bytes_hit;
	uint64_t started, ended, evicted;
	double imbalance_sum;
	uint64_t imbalance_n;
	double max_imbalance;
};

struct sim {
	const struct params *p;
	enum placement_strategy strategy;
	struct placement_config cfg;
	uint32_t cells;
	struct function *fns;
	uint32_t n_fns;
	double *zipf_cdf;
	struct layer os[4], rt[60];
	uint8_t (*digests)[32];
	uint32_t n_chunks;
	struct host *hosts;
	struct placement_host *view;
	struct sandbox *sbs;
	uint32_t n_sbs, cap_sbs, *free_sbs, n_free;
	struct completion *heap;
	size_t n_heap, cap_heap;
	uint64_t rng_trace, rng_place;
	struct stats st;
	uint8_t (*req_chunks)[32];
	/* per-minute series */
	uint64_t *min_inv, *min_cold, *min_need, *min_hit;
};

static double unit(uint64_t *r) { return (double)(placement_rng_next(r) >> 11) * 0x1.0p-53; }

static uint32_t zipf_small(uint64_t *r, uint32_t n, double s)
{
	double tot = 0;
	for (uint32_t i = 1; i <= n; i++)
		tot += pow(i, -s);
	double x = unit(r) * tot;
	for (uint32_t i = 1; i <= n; i++) {
		x -= pow(i, -s);
		if (x < 0)
			return i - 1;
	}
	return n - 1;
}

static void *xcalloc(size_t n, size_t sz)
{
	void *p = calloc(n ? n : 1, sz);
	if (!p) {
		fprintf(stderr, "placement_sim: out of memory\n");
		exit(1);
	}
	return p;
}

/* ---- the trace's world: functions, layers, chunks ---- */

static void build_world(struct sim *s)
{
	const struct params *p = s->p;
	uint64_t r = p->seed ^ 0x776f726c64ull;
	uint32_t next_chunk = 0;
	for (int i = 0; i < 4; i++) {
		s->os[i] = (struct layer){ next_chunk, 12 };
		next_chunk += 12;
	}
	for (int i = 0; i < 60; i++) {
		uint32_t n = 8 + (uint32_t)(unit(&r) * 32);
		s->rt[i] = (struct layer){ next_chunk, n };
		next_chunk += n;
	}
	s->n_fns = p->hosts * p->functions_per_host;
	s->fns = xcalloc(s->n_fns, sizeof(*s->fns));
	static const uint32_t mem[] = { 128, 256, 512, 1024, 2048 };
	static const double mem_p[] = { 0.3, 0.3, 0.2, 0.15, 0.05 };
	for (uint32_t i = 0; i < s->n_fns; i++) {
		struct function *f = &s->fns[i];
		snprintf(f->name, sizeof(f->name), "fn-%u", i);
		double x = unit(&r);
		int m = 0;
		while (m < 4 && x >= mem_p[m]) {
			x -= mem_p[m];
			m++;
		}
		f->memory_mb = mem[m];
		f->os = zipf_small(&r, 4, 1.0);
		f->runtime = zipf_small(&r, 60, 1.0);
		if (unit(&r) < 0.2) {
			f->unique_n = 4 + (uint32_t)(unit(&r) * 56);
			f->unique_first = next_chunk;
			next_chunk += f->unique_n;
		}
		double c = unit(&r);
		f->cron_minute = c < 0.005;
		f->cron_hour = c >= 0.005 && c < 0.02;
		f->fanout = 1 + (uint32_t)(unit(&r) * (f->cron_hour ? 40 : 8));
	}
	s->n_chunks = next_chunk;
	s->digests = xcalloc(next_chunk, 32);
	for (uint32_t c = 0; c < next_chunk; c++) {
		uint64_t d = p->seed * 31 + c;
		for (int j = 0; j < 4; j++) {
			uint64_t v = placement_rng_next(&d);
			memcpy(s->digests[c] + 8 * j, &v, 8);
		}
	}
	s->zipf_cdf = xcalloc(s->n_fns, sizeof(double));
	double tot = 0;
	for (uint32_t i = 0; i < s->n_fns; i++)
		s->zipf_cdf[i] = (tot += pow(i + 1, -p->zipf_s));
	for (uint32_t i = 0; i < s->n_fns; i++)
		s->zipf_cdf[i] /= tot;
}

static uint32_t pick_function(struct sim *s)
{
	double x = unit(&s->rng_trace);
	uint32_t lo = 0, hi = s->n_fns - 1;
	while (lo < hi) {
		uint32_t mid = (lo + hi) / 2;
		if (s->zipf_cdf[mid] < x)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Visit |f|'s startup chunks: the OS base, the runtime layer, its own. */
#define FOR_CHUNKS(s, f, c)                                                                                            \
	for (int part_ = 0; part_ < 3; part_++)                                                                        \
		for (uint32_t c = part_ == 0 ? s->os[f->os].first : part_ == 1 ? s->rt[f->runtime].first : f->unique_first, \
			      end_ = c + (part_ == 0 ? s->os[f->os].n : part_ == 1 ? s->rt[f->runtime].n : f->unique_n); \
		     c < end_; c++)

/* ---- sandboxes and hosts ---- */

static void heap_push(struct sim *s, uint64_t t, uint32_t sb)
{
	if (s->n_heap == s->cap_heap) {
		s->cap_heap = s->cap_heap ? s->cap_heap * 2 : 1024;
		s->heap = realloc(s->heap, s->cap_heap * sizeof(*s->heap));
		if (!s->heap)
			exit(1);
	}
	size_t i = s->n_heap++;
	while (i > 0 && s->heap[(i - 1) / 2].t > t) {
		s->heap[i] = s->heap[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	s->heap[i] = (struct completion){ t, sb };
}

static struct completion heap_pop(struct sim *s)
{
	struct completion top = s->heap[0], last = s->heap[--s->n_heap];
	size_t i = 0;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= s->n_heap)
			break;
		if (c + 1 < s->n_heap && s->heap[c + 1].t < s->heap[c].t)
			c++;
		if (s->heap[c].t >= last.t)
			break;
		s->heap[i] = s->heap[c];
		i = c;
	}
	if (s->n_heap)
		s->heap[i] = last;
	return top;
}

static void fn_remove(struct function *f, uint32_t sb)
{
	for (uint32_t i = 0; i < f->n_sandboxes; i++)
		if (f->sandboxes[i] == sb) {
			f->sandboxes[i] = f->sandboxes[--f->n_sandboxes];
			return;
		}
}

static void sandbox_end(struct sim *s, uint32_t id)
{
	struct sandbox *sb = &s->sbs[id];
	struct host *h = &s->hosts[sb->host];
	struct placement_host *v = &s->view[sb->host];
	struct function *f = &s->fns[sb->fn];
	v->memory_used_mb -= f->memory_mb;
	v->memory_idle_mb -= f->memory_mb; /* only idle ones end */
	v->slots_used--;
	for (uint32_t i = 0; i < h->n_sandboxes; i++)
		if (h->sandboxes[i] == id) {
			h->sandboxes[i] = h->sandboxes[--h->n_sandboxes];
			break;
		}
	fn_remove(f, id);
	sb->state = SB_FREE;
	s->free_sbs[s->n_free++] = id;
	s->st.ended++;
}

/* Make room for |mb| and a slot on host |hi| by ending its least recently
 * used idle sandboxes. */
static void host_make_room(struct sim *s, uint32_t hi, uint64_t mb)
{
	struct placement_host *v = &s->view[hi];
	struct host *h = &s->hosts[hi];
	while (v->memory_used_mb + mb > v->memory_total_mb || v->slots_used >= v->slots_total) {
		uint32_t victim = UINT32_MAX;
		for (uint32_t i = 0; i < h->n_sandboxes; i++) {
			struct sandbox *sb = &s->sbs[h->sandboxes[i]];
			if (sb->state == SB_IDLE && (victim == UINT32_MAX || sb->last_used_ms < s->sbs[victim].last_used_ms))
				victim = h->sandboxes[i];
		}
		if (victim == UINT32_MAX)
			return; /* cannot happen: placement checked the fit */
		sandbox_end(s, victim);
		s->st.evicted++;
	}
}

/* Rebuild a host's summary from its L1 and publish it the way an agent
 * does: as text, which placement decodes. */
static void refresh_bloom(struct sim *s, struct host *h)
{
	memset(h->bloom.map, 0, h->bloom.bits / 8);
	h->bloom.entries = 0;
	for (uint32_t i = 0; i < h->l1.n; i++)
		placement_bloom_add_digest(&h->bloom, s->digests[h->l1.chunk[i]]);
	char *text = placement_bloom_encode(&h->bloom);
	placement_bloom_cleanup(&h->published);
	if (!text || placement_bloom_decode(text, &h->published) < 0) {
		fprintf(stderr, "placement_sim: a Bloom summary did not survive encoding\n");
		exit(1);
	}
	free(text);
	h->dirty = false;
}

static void host_l1_ready(struct sim *s, uint32_t hi)
{
	struct host *h = &s->hosts[hi];
	if (h->l1_ready)
		return;
	if (l1_init(&h->l1, s->p->l1_chunks) < 0 || placement_bloom_init(&h->bloom, s->p->bloom_bits, 0) < 0 ||
	    placement_bloom_init(&h->published, s->p->bloom_bits, 0) < 0) {
		fprintf(stderr, "placement_sim: out of memory\n");
		exit(1);
	}
	s->view[hi].l1 = &h->published;
	h->l1_ready = true;
}

static uint32_t minute_of(uint64_t t_ms) { return (uint32_t)(t_ms / 60000); }

static void cold_start(struct sim *s, uint32_t fi, uint64_t now_ms, uint64_t end_ms)
{
	struct function *f = &s->fns[fi];
	const struct params *p = s->p;
	uint32_t cell = placement_function_cell(f->name, s->cells);
	size_t first = (size_t)cell * p->cell_hosts, n = p->cell_hosts;
	if (first + n > p->hosts)
		n = p->hosts - first;
	size_t nc = 0;
	FOR_CHUNKS(s, f, c)
	memcpy(s->req_chunks[nc++], s->digests[c], 32);
	for (uint32_t i = 0; i < f->n_sandboxes; i++)
		s->view[s->sbs[f->sandboxes[i]].host].fn_sandboxes++;
	struct placement_request req = { .function = f->name, .version = "1", .memory_mb = f->memory_mb,
					 .chunks = (const uint8_t(*)[32])s->req_chunks, .n_chunks = nc };
	struct placement_result r;
	int rc = placement_choose(&s->cfg, s->strategy, &req, s->view + first, n, &s->rng_place, &r);
	for (uint32_t i = 0; i < f->n_sandboxes; i++)
		s->view[s->sbs[f->sandboxes[i]].host].fn_sandboxes = 0;
	if (rc < 0) {
		s->st.rejected++;
		return;
	}
	s->st.spilled += r.spilled;
	uint32_t hi = (uint32_t)(first + r.host);
	host_make_room(s, hi, f->memory_mb);
	host_l1_ready(s, hi);
	struct host *h = &s->hosts[hi];
	/* The new sandbox reads its startup chunks through the L1. */
	uint64_t need = 0, hit = 0;
	FOR_CHUNKS(s, f, c)
	{
		need += CHUNK_BYTES;
		if (l1_access(&h->l1, c))
			hit += CHUNK_BYTES;
	}
	h->dirty = true;
	s->st.bytes_needed += need;
	s->st.bytes_hit += hit;
	s->min_need[minute_of(now_ms)] += need;
	s->min_hit[minute_of(now_ms)] += hit;
	uint32_t id = s->n_free ? s->free_sbs[--s->n_free] : s->n_sbs++;
	if (id >= s->cap_sbs) {
		fprintf(stderr, "placement_sim: too many sandboxes\n");
		exit(1);
	}
	s->sbs[id] = (struct sandbox){ .fn = fi, .host = hi, .state = SB_BUSY, .last_used_ms = now_ms };
	h->sandboxes[h->n_sandboxes++] = id;
	if (f->n_sandboxes == f->cap_sandboxes) {
		f->cap_sandboxes = f->cap_sandboxes ? 2 * f->cap_sandboxes : 4;
		f->sandboxes = realloc(f->sandboxes, f->cap_sandboxes * sizeof(uint32_t));
		if (!f->sandboxes)
			exit(1);
	}
	f->sandboxes[f->n_sandboxes++] = id;
	s->view[hi].memory_used_mb += f->memory_mb;
	s->view[hi].slots_used++;
	s->st.started++;
	s->st.cold++;
	s->min_cold[minute_of(now_ms)]++;
	heap_push(s, end_ms, id);
}

static void invoke(struct sim *s, uint32_t fi, uint64_t now_ms)
{
	struct function *f = &s->fns[fi];
	s->st.invocations++;
	s->min_inv[minute_of(now_ms)]++;
	uint64_t dur = 1 + (uint64_t)(-log(1.0 - unit(&s->rng_trace)) * s->p->mean_duration_ms);
	/* Warm: the most recently used idle sandbox of the function. */
	uint32_t best = UINT32_MAX;
	for (uint32_t i = 0; i < f->n_sandboxes; i++) {
		struct sandbox *sb = &s->sbs[f->sandboxes[i]];
		if (sb->state == SB_IDLE && (best == UINT32_MAX || sb->last_used_ms > s->sbs[best].last_used_ms))
			best = f->sandboxes[i];
	}
	if (best != UINT32_MAX) {
		struct sandbox *sb = &s->sbs[best];
		sb->state = SB_BUSY;
		s->view[sb->host].memory_idle_mb -= f->memory_mb;
		heap_push(s, now_ms + dur, best);
		return;
	}
	cold_start(s, fi, now_ms, now_ms + dur);
}

static void complete_until(struct sim *s, uint64_t t_ms)
{
	while (s->n_heap && s->heap[0].t <= t_ms) {
		struct completion c = heap_pop(s);
		struct sandbox *sb = &s->sbs[c.sb];
		sb->state = SB_IDLE;
		sb->last_used_ms = c.t;
		s->view[sb->host].memory_idle_mb += s->fns[sb->fn].memory_mb;
	}
}

static void expire_idle(struct sim *s, uint64_t now_ms)
{
	uint64_t ttl = (uint64_t)s->p->idle_ttl_s * 1000;
	for (uint32_t i = 0; i < s->n_sbs; i++)
		if (s->sbs[i].state == SB_IDLE && s->sbs[i].last_used_ms + ttl <= now_ms)
			sandbox_end(s, i);
}

static void sample_imbalance(struct sim *s)
{
	double max = 0, sum = 0;
	for (uint32_t i = 0; i < s->p->hosts; i++) {
		double u = (double)s->view[i].memory_used_mb / (double)s->view[i].memory_total_mb;
		sum += u;
		if (u > max)
			max = u;
	}
	double mean = sum / s->p->hosts;
	if (mean <= 0)
		return;
	s->st.imbalance_sum += max / mean;
	s->st.imbalance_n++;
	if (max / mean > s->st.max_imbalance)
		s->st.max_imbalance = max / mean;
}

struct arrival {
	uint32_t offset_ms, fn;
};

static int cmp_arrival(const void *a, const void *b)
{
	const struct arrival *x = a, *y = b;
	return x->offset_ms < y->offset_ms ? -1 : x->offset_ms > y->offset_ms ? 1 : (x->fn > y->fn) - (x->fn < y->fn);
}

/* Poisson(|mean|): exact for small means, normal for large ones. */
static uint32_t poisson(uint64_t *r, double mean)
{
	if (mean > 50) {
		double u1 = unit(r), u2 = unit(r);
		double z = sqrt(-2 * log(1 - u1)) * cos(2 * M_PI * u2);
		double v = mean + sqrt(mean) * z;
		return v < 0 ? 0 : (uint32_t)(v + 0.5);
	}
	double l = exp(-mean), pr = 1;
	uint32_t k = 0;
	do {
		k++;
		pr *= unit(r);
	} while (pr > l);
	return k - 1;
}

static void run(struct sim *s)
{
	const struct params *p = s->p;
	s->rng_trace = p->seed;
	s->rng_place = p->seed ^ 0x706c616365ull;
	size_t cap_arr = 1024;
	struct arrival *arr = xcalloc(cap_arr, sizeof(*arr));
	for (uint32_t sec = 0; sec < p->seconds; sec++) {
		uint64_t t0 = (uint64_t)sec * 1000;
		/* One compressed day: a trough at the start and end, a peak at
		 * the middle, 4:1. */
		double day = 0.25 + 0.75 * (1 - cos(2 * M_PI * sec / p->seconds)) / 2;
		double mean = p->rate_per_host * p->hosts * day / 0.625;
		uint32_t n = poisson(&s->rng_trace, mean);
		size_t k = 0;
		bool minute = sec % 60 == 0, hour = sec % 3600 == 0;
		size_t extra = 0;
		if (minute || hour)
			for (uint32_t i = 0; i < s->n_fns; i++)
				if ((minute && s->fns[i].cron_minute) || (hour && s->fns[i].cron_hour))
					extra += s->fns[i].fanout;
		if (n + extra > cap_arr) {
			cap_arr = n + extra;
			free(arr);
			arr = xcalloc(cap_arr, sizeof(*arr));
		}
		for (uint32_t i = 0; i < n; i++)
			arr[k++] = (struct arrival){ (uint32_t)(unit(&s->rng_trace) * 1000), pick_function(s) };
		if (extra)
			for (uint32_t i = 0; i < s->n_fns; i++)
				if ((minute && s->fns[i].cron_minute) || (hour && s->fns[i].cron_hour))
					for (uint32_t j = 0; j < s->fns[i].fanout; j++)
						arr[k++] = (struct arrival){ (uint32_t)(unit(&s->rng_trace) * 200), i };
		qsort(arr, k, sizeof(*arr), cmp_arrival);
		for (size_t i = 0; i < k; i++) {
			uint64_t t = t0 + arr[i].offset_ms;
			complete_until(s, t);
			invoke(s, arr[i].fn, t);
		}
		complete_until(s, t0 + 999);
		if (sec % 10 == 9)
			expire_idle(s, t0 + 999);
		if (sec % p->bloom_refresh_s == p->bloom_refresh_s - 1)
			for (uint32_t i = 0; i < p->hosts; i++)
				if (s->hosts[i].dirty)
					refresh_bloom(s, &s->hosts[i]);
		if (sec % 60 == 59)
			sample_imbalance(s);
	}
	free(arr);
}

static const char *strategy_name(enum placement_strategy st)
{
	return st == PLACEMENT_SCORED ? "scored" : st == PLACEMENT_RANDOM ? "random" : "least-loaded";
}

static void sim_init(struct sim *s, const struct params *p, enum placement_strategy st)
{
	memset(s, 0, sizeof(*s));
	s->p = p;
	s->strategy = st;
	placement_config_init(&s->cfg);
	s->cells = (p->hosts + p->cell_hosts - 1) / p->cell_hosts;
	s->cfg.cells = s->cells;
	s->cfg.shard_size = p->shard_size;
	if (p->weights_set)
		s->cfg.w = p->w;
	build_world(s);
	s->hosts = xcalloc(p->hosts, sizeof(*s->hosts));
	s->view = xcalloc(p->hosts, sizeof(*s->view));
	for (uint32_t i = 0; i < p->hosts; i++) {
		snprintf(s->hosts[i].id, sizeof(s->hosts[i].id), "host-%u", i);
		s->view[i] = (struct placement_host){ .id = s->hosts[i].id,
						      .cell = i / p->cell_hosts,
						      .memory_total_mb = p->host_memory_mb,
						      .slots_total = p->host_slots };
	}
	s->cap_sbs = p->hosts * p->host_slots;
	s->sbs = xcalloc(s->cap_sbs, sizeof(*s->sbs));
	s->free_sbs = xcalloc(s->cap_sbs, sizeof(uint32_t));
	s->req_chunks = xcalloc(4 * 12 + 40 + 64, 32);
	uint32_t minutes = p->seconds / 60 + 1;
	s->min_inv = xcalloc(minutes, 8);
	s->min_cold = xcalloc(minutes, 8);
	s->min_need = xcalloc(minutes, 8);
	s->min_hit = xcalloc(minutes, 8);
}

static void sim_cleanup(struct sim *s)
{
	for (uint32_t i = 0; i < s->n_fns; i++)
		free(s->fns[i].sandboxes);
	for (uint32_t i = 0; i < s->p->hosts; i++)
		if (s->hosts[i].l1_ready) {
			l1_cleanup(&s->hosts[i].l1);
			placement_bloom_cleanup(&s->hosts[i].bloom);
			placement_bloom_cleanup(&s->hosts[i].published);
		}
	free(s->fns);
	free(s->zipf_cdf);
	free(s->digests);
	free(s->hosts);
	free(s->view);
	free(s->sbs);
	free(s->free_sbs);
	free(s->heap);
	free(s->req_chunks);
	free(s->min_inv);
	free(s->min_cold);
	free(s->min_need);
	free(s->min_hit);
}

static void usage(void)
{
	fprintf(stderr,
		"usage: placement_sim [--quick] [--hosts N] [--cell-hosts N] [--shard-size K] [--minutes M]\n"
		"                     [--host-memory-mb MB]\n"
		"                     [--rate R] [--seed S] [--weights l1=..,l2=..,warm=..,load=..,spread=..,pack=..]\n"
		"                     [--data DIR]\n"
		"  --quick: 1,000 hosts (the default is 10,000); a Markdown table goes to stdout,\n"
		"  --data DIR also writes DIR/summary.dat and DIR/series.dat for the plot.\n");
}

static bool parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
	char *e;
	errno = 0;
	unsigned long v = strtoul(s, &e, 10);
	if (errno || *e || e == s || v < lo || v > hi)
		return false;
	*out = (uint32_t)v;
	return true;
}

int main(int argc, char **argv)
{
	struct params p = {
		.hosts = 10000,
		.cell_hosts = 1000,
		.shard_size = PLACEMENT_DEFAULT_SHARD_SIZE,
		.host_memory_mb = 4096,
		.host_slots = 32,
		.functions_per_host = 10,
		.zipf_s = 1.0,
		.rate_per_host = 0.2,
		.seconds = 3 * 3600,
		.idle_ttl_s = 600,
		.l1_chunks = 1024,
		.bloom_bits = 1u << 14,
		.bloom_refresh_s = 5,
		.mean_duration_ms = 800,
		.seed = 1,
	};
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		uint32_t u;
		if (strcmp(a, "--quick") == 0) {
			p.hosts = 1000;
			continue;
		}
		if (!v) {
			usage();
			return 2;
		}
		i++;
		if (strcmp(a, "--hosts") == 0 && parse_u32(v, 10, 100000, &u))
			p.hosts = u;
		else if (strcmp(a, "--cell-hosts") == 0 && parse_u32(v, 10, 100000, &u))
			p.cell_hosts = u;
		else if (strcmp(a, "--shard-size") == 0 && parse_u32(v, 1, PLACEMENT_MAX_SHARD_SIZE, &u))
			p.shard_size = u;
		else if (strcmp(a, "--minutes") == 0 && parse_u32(v, 1, 7 * 24 * 60, &u))
			p.seconds = u * 60;
		else if (strcmp(a, "--host-memory-mb") == 0 && parse_u32(v, 256, 1u << 24, &u))
			p.host_memory_mb = u;
		else if (strcmp(a, "--seed") == 0 && parse_u32(v, 0, UINT32_MAX, &u))
			p.seed = u;
		else if (strcmp(a, "--rate") == 0) {
			char *e;
			p.rate_per_host = strtod(v, &e);
			if (*e || !(p.rate_per_host > 0 && p.rate_per_host < 100)) {
				fprintf(stderr, "placement_sim: --rate %s: want invocations per host per second, 0 .. 100\n", v);
				return 2;
			}
		} else if (strcmp(a, "--weights") == 0) {
			const char *why;
			struct placement_config d;
			placement_config_init(&d);
			p.w = d.w;
			if (placement_weights_parse(v, &p.w, &why) < 0) {
				fprintf(stderr, "placement_sim: --weights %s: %s\n", v, why);
				return 2;
			}
			p.weights_set = true;
		} else if (strcmp(a, "--data") == 0)
			p.data_dir = v;
		else {
			fprintf(stderr, "placement_sim: bad option or value: %s %s\n", a, v);
			usage();
			return 2;
		}
	}
	if (p.cell_hosts > p.hosts)
		p.cell_hosts = p.hosts;
	if (p.shard_size > p.cell_hosts) {
		fprintf(stderr, "placement_sim: --shard-size %u is more than a cell's %u hosts\n", p.shard_size,
			p.cell_hosts);
		return 2;
	}
	static const enum placement_strategy strategies[] = { PLACEMENT_SCORED, PLACEMENT_RANDOM, PLACEMENT_LEAST_LOADED };
	struct stats res[3];
	FILE *series = NULL, *summary = NULL;
	uint32_t minutes = p.seconds / 60;
	uint64_t(*ser)[4][3] = xcalloc(minutes, sizeof(*ser));
	for (int k = 0; k < 3; k++) {
		struct sim s;
		sim_init(&s, &p, strategies[k]);
		run(&s);
		res[k] = s.st;
		for (uint32_t m = 0; m < minutes; m++) {
			ser[m][0][k] = s.min_inv[m];
			ser[m][1][k] = s.min_cold[m];
			ser[m][2][k] = s.min_need[m];
			ser[m][3][k] = s.min_hit[m];
		}
		sim_cleanup(&s);
	}
	struct placement_config d;
	placement_config_init(&d);
	const struct placement_weights *w = p.weights_set ? &p.w : &d.w;
	printf("placement_sim: %u hosts (cells of %u, shards of %u), %u functions, %u simulated minutes, seed %llu\n",
	       p.hosts, p.cell_hosts, p.shard_size, p.hosts * p.functions_per_host, minutes, (unsigned long long)p.seed);
	double p_all, p_half;
	if (placement_shard_overlap(p.cell_hosts, p.shard_size, &p_all, &p_half) == 0)
		printf("shard overlap (cells of %u, shards of %u): another function shares all of a shard with "
		       "probability %.3g, at least half of it %.3g; of the %u functions in a cell, %.3g expected to "
		       "share a whole shard with a given one, %.3g at least half\n",
		       p.cell_hosts, p.shard_size, p_all, p_half, p.functions_per_host * p.cell_hosts,
		       p_all * (p.functions_per_host * p.cell_hosts - 1), p_half * (p.functions_per_host * p.cell_hosts - 1));
	printf("weights: l1=%g l2=%g warm=%g load=%g spread=%g pack=%g\n\n", w->l1, w->l2, w->warm, w->load, w->spread,
	       w->pack);
	printf("| strategy | invocations | cold starts | cold-start fraction | L1 hit rate (bytes) | imbalance max/mean "
	       "(mean, worst) | churn per invocation | churn per host-hour | evictions | spilled | rejected |\n");
	printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
	double host_hours = (double)p.hosts * p.seconds / 3600.0;
	for (int k = 0; k < 3; k++) {
		struct stats *st = &res[k];
		printf("| %s | %llu | %llu | %.4f | %.3f | %.2f, %.2f | %.4f | %.2f | %llu | %llu | %llu |\n",
		       strategy_name(strategies[k]), (unsigned long long)st->invocations, (unsigned long long)st->cold,
		       (double)st->cold / (double)st->invocations,
		       st->bytes_needed ? (double)st->bytes_hit / (double)st->bytes_needed : 0,
		       st->imbalance_n ? st->imbalance_sum / st->imbalance_n : 0, st->max_imbalance,
		       (double)(st->started + st->ended) / (double)st->invocations,
		       (double)(st->started + st->ended) / host_hours, (unsigned long long)st->evicted,
		       (unsigned long long)st->spilled, (unsigned long long)st->rejected);
	}
	if (p.data_dir) {
		char path[4096];
		snprintf(path, sizeof(path), "%s/summary.dat", p.data_dir);
		summary = fopen(path, "w");
		snprintf(path, sizeof(path), "%s/series.dat", p.data_dir);
		series = fopen(path, "w");
		if (!summary || !series) {
			fprintf(stderr, "placement_sim: cannot write in %s: %s\n", p.data_dir, strerror(errno));
			return 1;
		}
		fprintf(summary, "# strategy cold_fraction l1_hit imbalance churn_per_invocation\n");
		for (int k = 0; k < 3; k++) {
			struct stats *st = &res[k];
			fprintf(summary, "%s %.5f %.5f %.4f %.5f\n", strategy_name(strategies[k]),
				(double)st->cold / (double)st->invocations,
				st->bytes_needed ? (double)st->bytes_hit / (double)st->bytes_needed : 0,
				st->imbalance_n ? st->imbalance_sum / st->imbalance_n : 0,
				(double)(st->started + st->ended) / (double)st->invocations);
		}
		/* Per 5 minutes: invocations/s and, per strategy, cold-start
		 * fraction and L1 hit rate. */
		fprintf(series, "# minute inv_per_s cold_scored cold_random cold_least l1_scored l1_random l1_least\n");
		for (uint32_t m = 0; m + 5 <= minutes; m += 5) {
			uint64_t a[4][3] = { { 0 } };
			for (uint32_t j = m; j < m + 5; j++)
				for (int x = 0; x < 4; x++)
					for (int k = 0; k < 3; k++)
						a[x][k] += ser[j][x][k];
			fprintf(series, "%u %.1f", m, (double)a[0][0] / 300.0);
			for (int k = 0; k < 3; k++)
				fprintf(series, " %.5f", a[0][k] ? (double)a[1][k] / (double)a[0][k] : 0);
			for (int k = 0; k < 3; k++)
				fprintf(series, " %.5f", a[2][k] ? (double)a[3][k] / (double)a[2][k] : 0);
			fprintf(series, "\n");
		}
		fclose(summary);
		fclose(series);
	}
	free(ser);
	return 0;
}
