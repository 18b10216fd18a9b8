/* placement: cells, shuffle shards, scoring and the choice (placement.h).
 * Pure code: no I/O and no global state, shared by the placement service
 * and bench/placement_sim. */
#include "placement/placement.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void placement_config_init(struct placement_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->cells = PLACEMENT_DEFAULT_CELLS;
	cfg->shard_size = PLACEMENT_DEFAULT_SHARD_SIZE;
	cfg->spill = true;
	cfg->top_k = PLACEMENT_DEFAULT_TOP_K;
	cfg->epsilon = PLACEMENT_DEFAULT_EPSILON;
	cfg->w = (struct placement_weights){ .l1 = 4.0, .l2 = 1.0, .warm = 1.0, .load = 16.0, .spread = 0.5, .pack = 0.1 };
}

static bool weight_ok(double v) { return isfinite(v) && v >= 0 && v <= 1e6; }

int placement_config_check(const struct placement_config *cfg, const char **why)
{
	const char *w = NULL;
	if (cfg->cells < 1 || cfg->cells > 65536)
		w = "cells must be 1 .. 65536";
	else if (cfg->shard_size < 1 || cfg->shard_size > PLACEMENT_MAX_SHARD_SIZE)
		w = "shard size must be 1 .. 1024";
	else if (cfg->top_k < 1 || cfg->top_k > PLACEMENT_MAX_TOP_K)
		w = "top_k must be 1 .. 16";
	else if (!isfinite(cfg->epsilon) || cfg->epsilon < 0)
		w = "epsilon must be a finite number >= 0";
	else if (!weight_ok(cfg->w.l1) || !weight_ok(cfg->w.l2) || !weight_ok(cfg->w.warm) || !weight_ok(cfg->w.load) ||
		 !weight_ok(cfg->w.spread) || !weight_ok(cfg->w.pack))
		w = "weights must be finite numbers 0 .. 1e6";
	if (why)
		*why = w;
	return w ? -EINVAL : 0;
}

int placement_weights_parse(const char *text, struct placement_weights *w, const char **why)
{
	static const struct {
		const char *name;
		size_t off;
	} names[] = {
		{ "l1", offsetof(struct placement_weights, l1) },     { "l2", offsetof(struct placement_weights, l2) },
		{ "warm", offsetof(struct placement_weights, warm) }, { "load", offsetof(struct placement_weights, load) },
		{ "spread", offsetof(struct placement_weights, spread) },
		{ "pack", offsetof(struct placement_weights, pack) },
	};
	struct placement_weights tmp = *w;
	const char *p = text;
	while (*p) {
		const char *eq = strchr(p, '=');
		const char *end = strchr(p, ',');
		if (!end)
			end = p + strlen(p);
		if (!eq || eq > end) {
			if (why)
				*why = "each weight is NAME=NUMBER (l1, l2, warm, load, spread, pack)";
			return -EINVAL;
		}
		size_t i, nl = (size_t)(eq - p);
		for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
			if (strlen(names[i].name) == nl && memcmp(names[i].name, p, nl) == 0)
				break;
		if (i == sizeof(names) / sizeof(names[0])) {
			if (why)
				*why = "unknown weight (known: l1, l2, warm, load, spread, pack)";
			return -EINVAL;
		}
		char num[64];
		size_t vl = (size_t)(end - eq - 1);
		if (vl == 0 || vl >= sizeof(num)) {
			if (why)
				*why = "a weight's value is missing or too long";
			return -EINVAL;
		}
		memcpy(num, eq + 1, vl);
		num[vl] = 0;
		char *e;
		double v = strtod(num, &e);
		if (*e || !weight_ok(v)) {
			if (why)
				*why = "a weight's value is not a number 0 .. 1e6";
			return -EINVAL;
		}
		memcpy((char *)&tmp + names[i].off, &v, sizeof(v));
		p = *end ? end + 1 : end;
	}
	*w = tmp;
	if (why)
		*why = NULL;
	return 0;
}

/* splitmix64's finaliser: a bijective 64-bit mix. */
static uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

uint64_t placement_rng_next(uint64_t *state) { return mix64(*state += 0x9e3779b97f4a7c15ull); }

/* A uniform double in [0, 1). */
static double rng_unit(uint64_t *state) { return (double)(placement_rng_next(state) >> 11) * 0x1.0p-53; }

static uint64_t fnv1a(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
	return h;
}

uint32_t placement_function_cell(const char *function, uint32_t cells)
{
	if (cells <= 1)
		return 0;
	return (uint32_t)(mix64(fnv1a(function) ^ 0x63656c6cull) % cells);
}

int placement_cell_parse(const char *text, uint32_t cells, uint32_t *out)
{
	if (strncmp(text, "cell-", 5) == 0)
		text += 5;
	if (*text < '0' || *text > '9' || (text[0] == '0' && text[1]))
		return -EINVAL;
	uint64_t v = 0;
	for (; *text; text++) {
		if (*text < '0' || *text > '9')
			return -EINVAL;
		v = v * 10 + (uint64_t)(*text - '0');
		if (v >= cells)
			return -EINVAL;
	}
	*out = (uint32_t)v;
	return 0;
}

static uint64_t rendezvous_h(uint64_t fh, const char *host_id) { return mix64(fh ^ mix64(fnv1a(host_id) + 0x9e3779b97f4a7c15ull)); }

uint64_t placement_rendezvous(const char *function, const char *host_id)
{
	return rendezvous_h(fnv1a(function), host_id);
}

static bool in_cell(const struct placement_host *h, uint32_t cell) { return h->cell == cell; }

/* The shard of the function hashed |fh| in |cell|, best first. */
static void shard_of(uint32_t k, uint64_t fh, uint32_t cell, const struct placement_host *hosts, size_t n_hosts,
		     size_t *out, size_t *n_out)
{
	uint64_t best[PLACEMENT_MAX_SHARD_SIZE];
	size_t n = 0;
	for (size_t i = 0; i < n_hosts; i++) {
		if (!in_cell(&hosts[i], cell))
			continue;
		uint64_t w = rendezvous_h(fh, hosts[i].id);
		if (n == k && w <= best[n - 1])
			continue;
		size_t j = n < k ? n++ : n - 1;
		/* Ties (equal weights) keep the earlier host: the order is total
		 * for distinct ids in practice. */
		while (j > 0 && best[j - 1] < w) {
			best[j] = best[j - 1];
			out[j] = out[j - 1];
			j--;
		}
		best[j] = w;
		out[j] = i;
	}
	*n_out = n;
}

void placement_shard(const struct placement_config *cfg, const char *function, const struct placement_host *hosts,
		     size_t n_hosts, size_t *out, size_t *n_out)
{
	uint32_t cell = placement_function_cell(function, cfg->cells);
	uint32_t k = cfg->shard_size < 1 ? 1 : cfg->shard_size > PLACEMENT_MAX_SHARD_SIZE ? PLACEMENT_MAX_SHARD_SIZE
											   : cfg->shard_size;
	shard_of(k, fnv1a(function), cell, hosts, n_hosts, out, n_out);
}

static bool excluded(const struct placement_host *h, const struct placement_request *req)
{
	for (size_t i = 0; i < req->n_exclude; i++)
		if (req->exclude[i] && strcmp(req->exclude[i], h->id) == 0)
			return true;
	return false;
}

bool placement_fits(const struct placement_host *h, const struct placement_request *req)
{
	if (excluded(h, req))
		return false;
	uint64_t idle = h->memory_idle_mb < h->memory_used_mb ? h->memory_idle_mb : h->memory_used_mb;
	uint64_t need = h->memory_used_mb - idle + h->memory_pending_mb + req->memory_mb;
	if (need < req->memory_mb || need > h->memory_total_mb) /* the first: overflow */
		return false;
	return (uint64_t)h->slots_used + h->slots_pending < h->slots_total;
}

/* The load after placing |req| on |h|: the larger of the memory and slot
 * fractions in use, pending reservations included, in 0 .. 1. */
static double load_after(const struct placement_host *h, const struct placement_request *req)
{
	double mem = h->memory_total_mb
			     ? ((double)h->memory_used_mb + (double)h->memory_pending_mb + (double)req->memory_mb) /
				       (double)h->memory_total_mb
			     : 1.0;
	double slots = h->slots_total ? ((double)h->slots_used + h->slots_pending + 1.0) / h->slots_total : 1.0;
	double u = mem > slots ? mem : slots;
	return u > 1.0 ? 1.0 : u;
}

static double l1_fraction(const struct placement_host *h, const struct placement_request *req)
{
	if (!h->l1 || !h->l1->map || req->n_chunks == 0)
		return 0;
	size_t in = 0;
	for (size_t i = 0; i < req->n_chunks; i++)
		in += placement_bloom_has_digest(h->l1, req->chunks[i]);
	return (double)in / (double)req->n_chunks;
}

double placement_score(const struct placement_config *cfg, const struct placement_host *h,
		       const struct placement_request *req, double *l1_frac)
{
	const struct placement_weights *w = &cfg->w;
	double f1 = l1_fraction(h, req);
	double l2 = req->l2_fraction < 0 ? 0 : req->l2_fraction > 1 ? 1 : req->l2_fraction;
	double u = load_after(h, req);
	double s = w->l1 * f1 + w->l2 * l2 * (1 - f1);
	if (h->warm_idle)
		s += w->warm;
	s -= w->load * u * u;
	s += w->pack * u;
	s -= w->spread * log2(1.0 + h->fn_sandboxes);
	if (l1_frac)
		*l1_frac = f1;
	return s;
}

struct cand {
	size_t host;
	double score, f1;
};

/* Keep |c| in the best-first list |top| of at most |k|. */
static void top_insert(struct cand *top, size_t *n, size_t k, struct cand c)
{
	if (*n == k && c.score <= top[*n - 1].score)
		return;
	size_t j = *n < k ? (*n)++ : *n - 1;
	while (j > 0 && top[j - 1].score < c.score) {
		top[j] = top[j - 1];
		j--;
	}
	top[j] = c;
}

/* Draw among |top| (best first): hosts within epsilon of the best, each
 * weighted by epsilon minus its distance from the best (plus a small floor,
 * so the one at the edge still has a chance). */
static size_t draw(const struct cand *top, size_t n, double epsilon, uint64_t *rng, size_t *n_cands)
{
	double best = top[0].score, weights[PLACEMENT_MAX_TOP_K], sum = 0;
	size_t m = 0;
	for (; m < n && best - top[m].score <= epsilon; m++) {
		weights[m] = epsilon - (best - top[m].score) + epsilon * 0.1 + 1e-12;
		sum += weights[m];
	}
	*n_cands = m;
	double x = rng_unit(rng) * sum;
	for (size_t i = 0; i < m; i++) {
		if (x < weights[i])
			return i;
		x -= weights[i];
	}
	return m - 1;
}

static int choose_scored(const struct placement_config *cfg, const struct placement_request *req,
			 const struct placement_host *hosts, size_t n_hosts, uint32_t cell, uint64_t *rng,
			 struct placement_result *out)
{
	size_t shard[PLACEMENT_MAX_SHARD_SIZE], n_shard;
	shard_of(cfg->shard_size, fnv1a(req->function), cell, hosts, n_hosts, shard, &n_shard);
	if (n_shard == 0)
		return -ENOENT;
	struct cand top[PLACEMENT_MAX_TOP_K];
	size_t n_top = 0;
	for (size_t i = 0; i < n_shard; i++) {
		const struct placement_host *h = &hosts[shard[i]];
		if (!placement_fits(h, req))
			continue;
		struct cand c = { .host = shard[i] };
		c.score = placement_score(cfg, h, req, &c.f1);
		top_insert(top, &n_top, cfg->top_k, c);
	}
	bool spilled = false;
	if (n_top == 0) {
		if (!cfg->spill)
			return -ENOSPC;
		/* The shard is all excluded or full: the rest of the cell. */
		for (size_t i = 0; i < n_hosts; i++) {
			const struct placement_host *h = &hosts[i];
			if (!in_cell(h, cell) || !placement_fits(h, req))
				continue;
			bool member = false;
			for (size_t j = 0; j < n_shard && !member; j++)
				member = shard[j] == i;
			if (member)
				continue;
			struct cand c = { .host = i };
			c.score = placement_score(cfg, h, req, &c.f1);
			top_insert(top, &n_top, cfg->top_k, c);
		}
		if (n_top == 0)
			return -ENOSPC;
		spilled = true;
	}
	size_t pick = draw(top, n_top, cfg->epsilon, rng, &out->candidates);
	out->host = top[pick].host;
	out->score = top[pick].score;
	out->l1_fraction = top[pick].f1;
	out->spilled = spilled;
	return 0;
}

static int choose_baseline(enum placement_strategy strategy, const struct placement_request *req,
			   const struct placement_host *hosts, size_t n_hosts, uint32_t cell, uint64_t *rng,
			   struct placement_result *out)
{
	size_t seen = 0, fit = 0, pick = SIZE_MAX, ties = 0;
	double best = 2.0;
	for (size_t i = 0; i < n_hosts; i++) {
		const struct placement_host *h = &hosts[i];
		if (!in_cell(h, cell))
			continue;
		seen++;
		if (!placement_fits(h, req))
			continue;
		fit++;
		if (strategy == PLACEMENT_RANDOM) {
			/* Reservoir sampling: uniform over the hosts that fit. */
			if (placement_rng_next(rng) % fit == 0)
				pick = i;
			continue;
		}
		double u = load_after(h, req);
		if (u < best - 1e-12) {
			best = u;
			pick = i;
			ties = 1;
		} else if (u <= best + 1e-12 && placement_rng_next(rng) % ++ties == 0) {
			pick = i;
		}
	}
	if (seen == 0)
		return -ENOENT;
	if (pick == SIZE_MAX)
		return -ENOSPC;
	out->host = pick;
	out->score = load_after(&hosts[pick], req);
	out->l1_fraction = l1_fraction(&hosts[pick], req);
	out->spilled = false;
	out->candidates = strategy == PLACEMENT_RANDOM ? fit : ties;
	return 0;
}

int placement_choose(const struct placement_config *cfg, enum placement_strategy strategy,
		     const struct placement_request *req, const struct placement_host *hosts, size_t n_hosts,
		     uint64_t *rng, struct placement_result *out)
{
	if (placement_config_check(cfg, NULL) < 0 || !req->function)
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	uint32_t cell = placement_function_cell(req->function, cfg->cells);
	switch (strategy) {
	case PLACEMENT_SCORED:
		return choose_scored(cfg, req, hosts, n_hosts, cell, rng, out);
	case PLACEMENT_RANDOM:
	case PLACEMENT_LEAST_LOADED:
		return choose_baseline(strategy, req, hosts, n_hosts, cell, rng, out);
	}
	return -EINVAL;
}

/* log C(n, k). */
static double log_choose(double n, double k) { return lgamma(n + 1) - lgamma(k + 1) - lgamma(n - k + 1); }

int placement_shard_overlap(uint32_t cell_hosts, uint32_t shard_size, double *p_all, double *p_half)
{
	if (shard_size < 1 || shard_size > cell_hosts)
		return -EINVAL;
	double n = cell_hosts, k = shard_size, total = log_choose(n, k);
	*p_all = exp(-total);
	double half = 0;
	for (uint32_t j = (shard_size + 1) / 2; j <= shard_size; j++) {
		if (n - k < k - j)
			continue;
		half += exp(log_choose(k, j) + log_choose(n - k, k - j) - total);
	}
	*p_half = half > 1 ? 1 : half;
	return 0;
}
