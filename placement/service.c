/* placement: the placement service (placement.h, `kindling placement`).
 *
 * One place request: read the hosts (kindling/hosts/, cached for
 * hosts_cache_ms) and their pending reservations (kindling/load/); take
 * tokens from the fleet-wide burst bucket (kindling/burst, CAS); score with
 * the library; reserve on the chosen host by a transaction on
 * kindling/load/HOST that compares its mod_revision (expired reservations
 * pruned on the way); on a conflict, re-read that host's reservations and
 * score again, a bounded number of times.  Requests in one process are
 * serialised (one lock); several services conflict through etcd only.
 *
 * The values of kindling/burst and kindling/load/HOST last read or written
 * are kept with their mod_revision, so a placement usually costs two
 * compare-and-put transactions and no reads; a failed compare drops the
 * kept value and the retry reads it afresh.  A request that waited longer
 * than max_wait_ms for the lock is answered 503 {"reason":"Overloaded"}
 * without reserving anything: its frontend has likely given up on it, and a
 * reservation nobody uses would hold a host's room for reservation_ttl_s. */
#include "placement/internal.h"
#include "placement/placement.h"

#include "common/common.h"
#include "common/etcd.h"
#include "common/http_server.h"
#include "image/image.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HOSTS_PREFIX "kindling/hosts/"
#define LOAD_PREFIX "kindling/load/"
#define BURST_KEY "kindling/burst"
#define MANIFEST_CACHE 64
#define WARN_SLOTS 64
#define WARN_EVERY_MS 60000
#define PLACE_BODY_LIMIT (256u << 10)

struct host_entry {
	struct placement_host_record rec;
	char *load;		/* kindling/load/HOST's value, NULL if none */
	size_t load_len;
	int64_t load_rev;	/* its mod_revision (0: the key is absent) */
	bool load_known;	/* |load| and |load_rev| are what etcd last said */
};

struct manifest_entry {
	char digest[65];
	uint8_t (*chunks)[32];
	size_t n;
	uint64_t used;
};

struct warned {
	char what[96];
	uint64_t at_ms;
};

struct placement_service {
	struct placement_service_config cfg;
	char *endpoints;
	struct etcd *etcd;
	struct store *store;
	pthread_mutex_t lock;
	/* under |lock|: */
	struct host_entry *hosts;
	size_t n_hosts;
	uint64_t hosts_at_ms;
	bool hosts_valid;
	struct manifest_entry manifests[MANIFEST_CACHE];
	uint64_t manifest_tick;
	struct warned warned[WARN_SLOTS];
	size_t warn_next;
	uint64_t rng;
	char *burst;		/* kindling/burst's value as last read or written */
	int64_t burst_rev;	/* its mod_revision (0: absent) */
	bool burst_known;
};

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int64_t unix_s(void) { return (int64_t)time(NULL); }

/* True if |what| was not warned about in the last minute (and records it
 * now).  Under |lock|. */
static bool warn_due(struct placement_service *s, const char *what)
{
	uint64_t now = mono_ms();
	for (size_t i = 0; i < WARN_SLOTS; i++)
		if (s->warned[i].at_ms && strncmp(s->warned[i].what, what, sizeof(s->warned[i].what) - 1) == 0) {
			if (now - s->warned[i].at_ms < WARN_EVERY_MS)
				return false;
			s->warned[i].at_ms = now;
			return true;
		}
	struct warned *w = &s->warned[s->warn_next++ % WARN_SLOTS];
	snprintf(w->what, sizeof(w->what), "%s", what);
	w->at_ms = now;
	return true;
}

int placement_service_new(const struct placement_service_config *cfg, struct placement_service **out)
{
	*out = NULL;
	if (!cfg->etcd_endpoints || !*cfg->etcd_endpoints) {
		log_err("placement service: no etcd endpoints (--etcd http://HOST:PORT,...)");
		return -EINVAL;
	}
	struct placement_service *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->cfg = *cfg;
	if (s->cfg.placement.cells == 0)
		placement_config_init(&s->cfg.placement);
	const char *why;
	if (placement_config_check(&s->cfg.placement, &why) < 0) {
		log_err("placement service: %s", why);
		free(s);
		return -EINVAL;
	}
	if (!s->cfg.hosts_cache_ms)
		s->cfg.hosts_cache_ms = 500;
	if (!s->cfg.reservation_ttl_s)
		s->cfg.reservation_ttl_s = 30;
	if (!s->cfg.retries)
		s->cfg.retries = 5;
	if (!s->cfg.max_wait_ms)
		s->cfg.max_wait_ms = 500;
	if (!(s->cfg.burst_initial > 0))
		s->cfg.burst_initial = 1000;
	if (!(s->cfg.burst_per_minute > 0))
		s->cfg.burst_per_minute = 500;
	s->rng = cfg->seed ? cfg->seed : (uint64_t)time(NULL) ^ ((uint64_t)mono_ms() << 20);
	s->cfg.store_uri = NULL;
	s->endpoints = strdup(cfg->etcd_endpoints);
	s->cfg.etcd_endpoints = s->endpoints;
	pthread_mutex_init(&s->lock, NULL);
	int r = s->endpoints ? 0 : -ENOMEM;
	if (!r) {
		struct etcd_config ec = { .endpoints = s->endpoints };
		r = etcd_new(&ec, &s->etcd);
	}
	if (!r && cfg->store_uri) {
		struct store_options so = { .must_exist = true };
		r = store_open(cfg->store_uri, &so, &s->store);
	}
	if (r < 0) {
		placement_service_free(s);
		return r;
	}
	*out = s;
	return 0;
}

static void hosts_clear(struct placement_service *s)
{
	for (size_t i = 0; i < s->n_hosts; i++) {
		placement_host_record_cleanup(&s->hosts[i].rec);
		free(s->hosts[i].load);
	}
	free(s->hosts);
	s->hosts = NULL;
	s->n_hosts = 0;
	s->hosts_valid = false;
}

void placement_service_free(struct placement_service *s)
{
	if (!s)
		return;
	hosts_clear(s);
	free(s->burst);
	for (size_t i = 0; i < MANIFEST_CACHE; i++)
		free(s->manifests[i].chunks);
	etcd_free(s->etcd);
	store_free(s->store);
	pthread_mutex_destroy(&s->lock);
	free(s->endpoints);
	free(s);
}

/* ---- answers ---- */

static int reply_json(struct http_response *resp, unsigned status, json_t *j)
{
	resp->status = status;
	char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	if (!text)
		return -ENOMEM;
	http_response_take_body(resp, text, strlen(text));
	return http_response_add_header(resp, "Content-Type", "application/json");
}

static int reply_message(struct http_response *resp, unsigned status, const char *msg)
{
	return reply_json(resp, status, json_pack("{s:s}", "message", msg));
}

/* ---- the hosts and their reservations, from etcd ---- */

static struct host_entry *host_find(struct placement_service *s, const char *id)
{
	for (size_t i = 0; i < s->n_hosts; i++)
		if (strcmp(s->hosts[i].rec.id, id) == 0)
			return &s->hosts[i];
	return NULL;
}

/* Keep |<value, len>| (NULL: absent) at |rev| as |h|'s reservations. */
static int set_load(struct host_entry *h, const void *value, size_t len, int64_t rev)
{
	free(h->load);
	h->load = NULL;
	h->load_len = 0;
	h->load_rev = rev;
	h->load_known = true;
	if (!value)
		return 0;
	h->load = malloc(len + 1);
	if (!h->load)
		return -ENOMEM;
	memcpy(h->load, value, len);
	h->load[len] = 0;
	h->load_len = len;
	return 0;
}

/* Forget what |h|'s reservations were: the next reservation reads them. */
static void forget_load(struct host_entry *h)
{
	set_load(h, NULL, 0, 0);
	h->load_known = false;
}

/* Read the hosts and their reservations unless the last read is fresh.
 * Under |lock|.  0, or -ENOTCONN / -EPROTO / -errno from etcd. */
static int refresh_hosts(struct placement_service *s, bool force)
{
	if (!force && s->hosts_valid && mono_ms() - s->hosts_at_ms < s->cfg.hosts_cache_ms)
		return 0;
	struct etcd_kvs kvs = { 0 }, loads = { 0 };
	int r = etcd_range_prefix(s->etcd, HOSTS_PREFIX, NULL, 0, &kvs);
	if (r == 0)
		r = etcd_range_prefix(s->etcd, LOAD_PREFIX, NULL, 0, &loads);
	if (r < 0) {
		etcd_kvs_cleanup(&kvs);
		etcd_kvs_cleanup(&loads);
		return r;
	}
	hosts_clear(s);
	s->hosts = calloc(kvs.n ? kvs.n : 1, sizeof(*s->hosts));
	if (!s->hosts) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < kvs.n; i++) {
		const char *name = kvs.kvs[i].key + strlen(HOSTS_PREFIX);
		struct host_entry *h = &s->hosts[s->n_hosts];
		h->load_known = true; /* no kindling/load/ key for it: none pending */
		const char *why;
		int pr = placement_host_record_parse(kvs.kvs[i].value, kvs.kvs[i].value_len, s->cfg.placement.cells,
						     &h->rec, &why);
		if (pr == -ENOMEM) {
			r = pr;
			goto out;
		}
		if (pr == 0 && strcmp(h->rec.id, name) != 0) {
			why = "its \"id\" is not the name in its key";
			placement_host_record_cleanup(&h->rec);
			pr = -EINVAL;
		}
		if (pr < 0) {
			char what[96];
			snprintf(what, sizeof(what), "host %.80s", name);
			if (warn_due(s, what))
				log_warn("skipping host %s: its registration at %s%s is malformed: %s (is its agent the "
					 "same kindling version?)",
					 name, HOSTS_PREFIX, name, why);
			continue;
		}
		s->n_hosts++;
	}
	for (size_t i = 0; i < loads.n; i++) {
		struct host_entry *h = host_find(s, loads.kvs[i].key + strlen(LOAD_PREFIX));
		if (h && set_load(h, loads.kvs[i].value, loads.kvs[i].value_len, loads.kvs[i].mod_revision) < 0) {
			r = -ENOMEM;
			goto out;
		}
	}
	s->hosts_valid = true;
	s->hosts_at_ms = mono_ms();
out:
	if (r < 0)
		hosts_clear(s);
	etcd_kvs_cleanup(&kvs);
	etcd_kvs_cleanup(&loads);
	return r;
}

/* ---- an image's chunks, from its manifest ---- */

/* The chunk digests of manifest |digest| into |*out| (malloc'd; NULL, 0
 * when unknown: placement then goes without locality).  Not under |lock|
 * while it reads the store. */
static void image_chunks(struct placement_service *s, const char *digest, uint8_t (**out)[32], size_t *n_out)
{
	*out = NULL;
	*n_out = 0;
	if (!s->store || !*digest)
		return;
	pthread_mutex_lock(&s->lock);
	for (size_t i = 0; i < MANIFEST_CACHE; i++) {
		struct manifest_entry *e = &s->manifests[i];
		if (e->chunks && strcmp(e->digest, digest) == 0) {
			e->used = ++s->manifest_tick;
			*out = malloc(e->n * 32 + 1);
			if (*out) {
				memcpy(*out, e->chunks, e->n * 32);
				*n_out = e->n;
			}
			pthread_mutex_unlock(&s->lock);
			return;
		}
	}
	pthread_mutex_unlock(&s->lock);
	struct manifest m = { 0 };
	int r = image_load(s->store, digest, NULL, &m);
	if (r < 0) {
		/* image_load logged why; placement goes on without locality. */
		return;
	}
	uint8_t(*chunks)[32] = malloc(m.n_chunks * 32 + 1);
	size_t n = 0;
	for (size_t i = 0; chunks && i < m.n_chunks; i++)
		if (hex_decode(m.chunks[i].name, chunks[n], 32) == 0)
			n++;
	manifest_cleanup(&m);
	if (!chunks)
		return;
	pthread_mutex_lock(&s->lock);
	struct manifest_entry *victim = &s->manifests[0];
	for (size_t i = 0; i < MANIFEST_CACHE; i++)
		if (s->manifests[i].used < victim->used)
			victim = &s->manifests[i];
	uint8_t(*copy)[32] = malloc(n * 32 + 1);
	if (copy) {
		free(victim->chunks);
		memcpy(copy, chunks, n * 32);
		victim->chunks = copy;
		victim->n = n;
		memcpy(victim->digest, digest, 65);
		victim->used = ++s->manifest_tick;
	}
	pthread_mutex_unlock(&s->lock);
	*out = chunks;
	*n_out = n;
}

/* ---- the burst bucket ---- */

/* Take |n| tokens from kindling/burst.  0 with |*granted|, or -errno from
 * etcd (-EAGAIN: kept conflicting).  Under |lock|. */
static int burst_take(struct placement_service *s, unsigned n, bool *granted)
{
	*granted = false;
	for (unsigned attempt = 0; attempt <= s->cfg.retries; attempt++) {
		if (!s->burst_known) {
			struct etcd_kv kv = { 0 };
			int r = etcd_get(s->etcd, BURST_KEY, &kv);
			if (r < 0 && r != -ENOENT)
				return r;
			free(s->burst);
			s->burst = r == 0 ? strdup((const char *)kv.value) : NULL;
			s->burst_rev = r == 0 ? kv.mod_revision : 0;
			etcd_kv_cleanup(&kv);
			if (r == 0 && !s->burst)
				return -ENOMEM;
			s->burst_known = true;
		}
		int64_t now = unix_s();
		double tokens = s->cfg.burst_initial;
		if (s->burst) {
			json_error_t err;
			json_t *j = json_loads(s->burst, 0, &err);
			json_t *t = json_object_get(j, "tokens"), *at = json_object_get(j, "at");
			if (json_is_number(t) && json_is_integer(at) && json_number_value(t) >= 0) {
				double elapsed = (double)(now - json_integer_value(at));
				tokens = json_number_value(t) + (elapsed > 0 ? elapsed : 0) * s->cfg.burst_per_minute / 60.0;
				if (tokens > s->cfg.burst_initial)
					tokens = s->cfg.burst_initial;
			} else if (warn_due(s, BURST_KEY)) {
				log_warn("%s holds no {\"tokens\",\"at\"}: starting the burst bucket afresh", BURST_KEY);
			}
			json_decref(j);
		}
		if (tokens < n) {
			/* Another service may have refilled or spent it since. */
			s->burst_known = false;
			return 0;
		}
		json_t *nj = json_pack("{s:f,s:I}", "tokens", tokens - n, "at", (json_int_t)now);
		char *text = nj ? json_dumps(nj, JSON_COMPACT) : NULL;
		json_decref(nj);
		if (!text)
			return -ENOMEM;
		struct etcd_cmp cmp = { .key = BURST_KEY, .target = ETCD_CMP_MOD_REVISION, .op = ETCD_EQUAL,
					.number = s->burst_rev };
		struct etcd_op put = { .type = ETCD_OP_PUT, .key = BURST_KEY, .value = text, .value_len = strlen(text) };
		bool ok = false;
		int64_t rev = 0;
		int r = etcd_txn(s->etcd, &cmp, 1, &put, 1, NULL, 0, &ok, &rev);
		if (r < 0 || !ok) {
			free(text);
			s->burst_known = false;
			if (r < 0)
				return r;
			continue;
		}
		/* The put's mod_revision is the transaction's revision. */
		free(s->burst);
		s->burst = text;
		s->burst_rev = rev;
		*granted = true;
		return 0;
	}
	return -EAGAIN;
}

/* ---- reserving ---- */

/* The view of every host for |pr|.  Under |lock|. */
static int build_view(struct placement_service *s, const struct placement_place_request *pr,
		      struct placement_host *view)
{
	int64_t now = unix_s();
	for (size_t i = 0; i < s->n_hosts; i++) {
		struct host_entry *h = &s->hosts[i];
		struct placement_host *v = &view[i];
		memset(v, 0, sizeof(*v));
		v->id = h->rec.id;
		v->cell = h->rec.cell;
		v->memory_total_mb = h->rec.memory_total_mb;
		v->memory_used_mb = h->rec.memory_used_mb;
		v->slots_total = h->rec.slots_total;
		v->slots_used = h->rec.slots_used;
		v->l1 = h->rec.l1.map ? &h->rec.l1 : NULL;
		for (size_t w = 0; w < h->rec.n_warm; w++) {
			const struct placement_host_warm *e = &h->rec.warm[w];
			if (strcmp(e->function, pr->function) != 0)
				continue;
			v->fn_sandboxes += e->idle + e->busy;
			if (strcmp(e->version, pr->version) == 0)
				v->warm_idle += e->idle;
		}
		if (h->load) {
			uint32_t fn = 0;
			if (placement_load_parse(h->load, h->load_len, now, pr->function, &v->memory_pending_mb,
						 &v->slots_pending, &fn) == 0)
				v->fn_sandboxes += fn;
		}
	}
	return 0;
}

/* A reservation id: the function and 64 random bits. */
static void reservation_id(struct placement_service *s, const char *function, char *out, size_t len)
{
	snprintf(out, len, "%.100s-%016" PRIx64, function, placement_rng_next(&s->rng));
}

enum reserve_outcome { RESERVED, CONFLICT, NO_ROOM };

/* Try once to add a reservation on |h| for |pr|, given the registration
 * |h| has and its reservations as last known (read afresh when not known).
 * Keeps what it read or wrote in |h|.  0 with |*outcome|, or -errno from
 * etcd. */
static int reserve_once(struct placement_service *s, struct host_entry *h, const struct placement_place_request *pr,
			const char *rid, enum reserve_outcome *outcome)
{
	char key[512];
	snprintf(key, sizeof(key), "%s%s", LOAD_PREFIX, h->rec.id);
	if (!h->load_known) {
		struct etcd_kv kv = { 0 };
		int r = etcd_get(s->etcd, key, &kv);
		if (r < 0 && r != -ENOENT)
			return r;
		r = r == 0 ? set_load(h, kv.value, kv.value_len, kv.mod_revision) : set_load(h, NULL, 0, 0);
		etcd_kv_cleanup(&kv);
		if (r < 0)
			return r;
	}
	int64_t now = unix_s();
	json_t *list = json_array();
	uint64_t pending = 0;
	uint32_t pending_slots = 0;
	if (h->load) {
		json_error_t err;
		json_t *j = json_loadb(h->load, h->load_len, 0, &err);
		uint64_t mem;
		uint32_t cnt;
		if (placement_load_parse(h->load, h->load_len, now, NULL, &mem, &cnt, NULL) == 0) {
			json_t *a = json_object_get(j, "reservations");
			for (size_t i = 0; i < json_array_size(a); i++) {
				json_t *e = json_array_get(a, i);
				if (json_integer_value(json_object_get(e, "until")) > now)
					json_array_append(list, e);
			}
			pending = mem;
			pending_slots = cnt;
		} else if (warn_due(s, key)) {
			log_warn("%s is malformed: replacing it (its reservations are lost; they expire in %us anyway)",
				 key, s->cfg.reservation_ttl_s);
		}
		json_decref(j);
	}
	/* With what is reserved now, does it still fit? */
	struct placement_host v = { .id = h->rec.id,
				    .memory_total_mb = h->rec.memory_total_mb,
				    .memory_used_mb = h->rec.memory_used_mb,
				    .memory_pending_mb = pending,
				    .slots_total = h->rec.slots_total,
				    .slots_used = h->rec.slots_used,
				    .slots_pending = pending_slots };
	struct placement_request q = { .function = pr->function, .memory_mb = pr->memory_mb };
	if (!placement_fits(&v, &q)) {
		json_decref(list);
		*outcome = NO_ROOM;
		/* What we know may be stale: another service's reservations expire. */
		forget_load(h);
		return 0;
	}
	json_array_append_new(list, json_pack("{s:s,s:s,s:I,s:I}", "id", rid, "function", pr->function, "memory_mb",
					      (json_int_t)pr->memory_mb, "until",
					      (json_int_t)(now + s->cfg.reservation_ttl_s)));
	json_t *doc = json_pack("{s:o}", "reservations", list);
	char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
	json_decref(doc);
	if (!text)
		return -ENOMEM;
	struct etcd_cmp cmp = { .key = key, .target = ETCD_CMP_MOD_REVISION, .op = ETCD_EQUAL, .number = h->load_rev };
	struct etcd_op put = { .type = ETCD_OP_PUT, .key = key, .value = text, .value_len = strlen(text) };
	bool ok = false;
	int64_t rev = 0;
	int r = etcd_txn(s->etcd, &cmp, 1, &put, 1, NULL, 0, &ok, &rev);
	if (r == 0 && ok)
		r = set_load(h, text, strlen(text), rev); /* the put's mod_revision is the txn's revision */
	else
		forget_load(h);
	free(text);
	if (r < 0)
		return r;
	*outcome = ok ? RESERVED : CONFLICT;
	return 0;
}

/* Place one sandbox of |pr|: choose, reserve, re-score on conflict.  0
 * with |*chosen| (an index into s->hosts) and |rid| filled; -ENOENT (no
 * host in the cell), -ENOSPC (none with room), -EAGAIN (kept conflicting),
 * or -errno from etcd.  Under |lock|. */
static int place_one(struct placement_service *s, const struct placement_place_request *pr,
		     const uint8_t (*chunks)[32], size_t n_chunks, size_t *chosen, char *rid, size_t rid_len)
{
	struct placement_host *view = calloc(s->n_hosts ? s->n_hosts : 1, sizeof(*view));
	if (!view)
		return -ENOMEM;
	const char **excl = calloc(pr->n_exclude + s->cfg.retries + 2, sizeof(char *));
	if (!excl) {
		free(view);
		return -ENOMEM;
	}
	size_t n_excl = pr->n_exclude;
	for (size_t i = 0; i < pr->n_exclude; i++)
		excl[i] = pr->exclude[i];
	int r = -EAGAIN;
	reservation_id(s, pr->function, rid, rid_len);
	for (unsigned attempt = 0; attempt <= s->cfg.retries; attempt++) {
		build_view(s, pr, view);
		struct placement_request q = { .function = pr->function,
					       .version = pr->version,
					       .image = pr->image,
					       .memory_mb = pr->memory_mb,
					       .chunks = chunks,
					       .n_chunks = n_chunks,
					       .exclude = excl,
					       .n_exclude = n_excl };
		struct placement_result res;
		r = placement_choose(&s->cfg.placement, PLACEMENT_SCORED, &q, view, s->n_hosts, &s->rng, &res);
		if (r < 0)
			break;
		enum reserve_outcome o;
		r = reserve_once(s, &s->hosts[res.host], pr, rid, &o);
		if (r < 0)
			break;
		if (o == RESERVED) {
			*chosen = res.host;
			log_debug("placed %s (%s) on %s: score %.3f, %.0f%% of its chunks in L1%s", pr->function,
				  pr->version, s->hosts[res.host].rec.id, res.score, res.l1_fraction * 100,
				  res.spilled ? ", outside its shard" : "");
			break;
		}
		if (o == NO_ROOM) /* the host filled up meanwhile: not this one */
			excl[n_excl++] = s->hosts[res.host].rec.id;
		r = -EAGAIN;
	}
	free(excl);
	free(view);
	return r;
}

static int store_down_reply(struct placement_service *s, struct http_response *resp, int r)
{
	char msg[768];
	if (r == -ENOTCONN)
		snprintf(msg, sizeof(msg), "etcd is unreachable (%.600s): cold starts cannot be placed until it is back",
			 s->endpoints);
	else
		snprintf(msg, sizeof(msg), "reading the fleet's state from etcd failed: %s", strerror(-r));
	return reply_message(resp, 503, msg);
}

static int handle_place(struct placement_service *s, const struct http_request *req, struct http_response *resp)
{
	struct placement_place_request pr;
	const char *why;
	int r = placement_place_request_parse(req->body, req->body_len, &pr, &why);
	if (r == -ENOMEM)
		return r;
	if (r < 0) {
		char msg[256];
		snprintf(msg, sizeof(msg), "bad place request: %s", why);
		return reply_message(resp, 400, msg);
	}
	uint64_t arrived_ms = mono_ms();
	uint8_t(*chunks)[32] = NULL;
	size_t n_chunks = 0;
	image_chunks(s, pr.image, &chunks, &n_chunks);
	pthread_mutex_lock(&s->lock);
	uint64_t waited_ms = mono_ms() - arrived_ms;
	if (waited_ms > s->cfg.max_wait_ms) {
		if (warn_due(s, "overloaded"))
			log_warn("a place request for %s waited %" PRIu64 " ms for its turn (more than %u ms): answering "
				 "Overloaded without reserving; more placement services, or fewer concurrent cold starts, "
				 "would help",
				 pr.function, waited_ms, s->cfg.max_wait_ms);
		char msg[256];
		snprintf(msg, sizeof(msg), "the placement service is overloaded (the request waited %" PRIu64 " ms); retry",
			 waited_ms);
		r = reply_json(resp, 503, json_pack("{s:s,s:s}", "reason", "Overloaded", "message", msg));
		goto out;
	}
	r = refresh_hosts(s, false);
	if (r < 0) {
		r = store_down_reply(s, resp, r);
		goto out;
	}
	if (s->n_hosts == 0) {
		r = reply_message(resp, 503, "no host is registered (under kindling/hosts/ in etcd): start kindling agents");
		goto out;
	}
	bool granted;
	r = burst_take(s, pr.count, &granted);
	if (r < 0 && r != -EAGAIN) {
		r = store_down_reply(s, resp, r);
		goto out;
	}
	if (r == -EAGAIN || !granted) {
		char msg[256];
		snprintf(msg, sizeof(msg),
			 "the fleet's burst of new sandboxes is used up (%.0f at once, then %.0f a minute); retry later",
			 s->cfg.burst_initial, s->cfg.burst_per_minute);
		r = reply_json(resp, 429,
			       json_pack("{s:s,s:s,s:s}", "reason", "ConcurrentInvocationLimitExceeded", "limit", "burst",
					 "message", msg));
		goto out;
	}
	json_t *list = json_array();
	int last = 0;
	for (unsigned i = 0; i < pr.count; i++) {
		size_t chosen;
		char rid[128];
		last = place_one(s, &pr, (const uint8_t(*)[32])chunks, n_chunks, &chosen, rid, sizeof(rid));
		if (last < 0)
			break;
		json_array_append_new(list, json_pack("{s:s,s:s,s:s}", "host", s->hosts[chosen].rec.id, "url",
						      s->hosts[chosen].rec.url, "reservation", rid));
	}
	if (json_array_size(list) == 0) {
		json_decref(list);
		char msg[512];
		if (last == -ENOENT || last == -ENOSPC)
			snprintf(msg, sizeof(msg), "no host in function %.170s's cell has room for %" PRIu64 " MB%s",
				 pr.function, pr.memory_mb, pr.n_exclude ? " (after the exclusions)" : "");
		else if (last == -EAGAIN)
			snprintf(msg, sizeof(msg), "reservations for %.170s kept conflicting with other placements; retry",
				 pr.function);
		else if (last == -ENOMEM) {
			r = -ENOMEM;
			goto out;
		} else {
			r = store_down_reply(s, resp, last);
			goto out;
		}
		/* Full is not down: the caller waits and asks again, or answers 429. */
		r = reply_json(resp, 503, json_pack("{s:s,s:s}", "reason", last == -EAGAIN ? "Conflict" : "NoCapacity",
						    "message", msg));
		goto out;
	}
	if (pr.count == 1) {
		json_t *one = json_incref(json_array_get(list, 0));
		json_decref(list);
		r = reply_json(resp, 200, one);
	} else {
		r = reply_json(resp, 200, list);
	}
out:
	pthread_mutex_unlock(&s->lock);
	free(chunks);
	placement_place_request_cleanup(&pr);
	return r;
}

static int handle_hosts(struct placement_service *s, struct http_response *resp)
{
	pthread_mutex_lock(&s->lock);
	int r = refresh_hosts(s, false);
	if (r < 0) {
		r = store_down_reply(s, resp, r);
		goto out;
	}
	json_t *a = json_array();
	int64_t now = unix_s();
	for (size_t i = 0; i < s->n_hosts; i++) {
		struct host_entry *h = &s->hosts[i];
		uint64_t pmem = 0;
		uint32_t pslots = 0;
		if (h->load)
			placement_load_parse(h->load, h->load_len, now, NULL, &pmem, &pslots, NULL);
		json_t *warm = json_array();
		for (size_t w = 0; w < h->rec.n_warm; w++)
			json_array_append_new(warm, json_pack("{s:s,s:s,s:i,s:i}", "function", h->rec.warm[w].function,
							      "version", h->rec.warm[w].version, "idle",
							      (int)h->rec.warm[w].idle, "busy", (int)h->rec.warm[w].busy));
		char cell[32];
		snprintf(cell, sizeof(cell), "cell-%u", h->rec.cell);
		json_array_append_new(
			a, json_pack("{s:s,s:s,s:s,s:I,s:I,s:I,s:i,s:i,s:i,s:I,s:o}", "id", h->rec.id, "url", h->rec.url,
				     "cell", cell, "memory_total_mb", (json_int_t)h->rec.memory_total_mb,
				     "memory_used_mb", (json_int_t)h->rec.memory_used_mb, "memory_pending_mb",
				     (json_int_t)pmem, "slots_total", (int)h->rec.slots_total, "slots_used",
				     (int)h->rec.slots_used, "slots_pending", (int)pslots, "l1_entries",
				     (json_int_t)h->rec.l1.entries, "warm", warm));
	}
	r = reply_json(resp, 200, json_pack("{s:o}", "hosts", a));
out:
	pthread_mutex_unlock(&s->lock);
	return r;
}

int placement_service_handle(struct placement_service *s, const struct http_request *req, struct http_response *resp)
{
	bool get = strcmp(req->method, "GET") == 0, post = strcmp(req->method, "POST") == 0;
	if (strcmp(req->path, "/healthz") == 0)
		return get ? reply_json(resp, 200, json_pack("{s:b}", "ok", 1)) : reply_message(resp, 405, "use GET");
	if (strcmp(req->path, "/v1/hosts") == 0)
		return get ? handle_hosts(s, resp) : reply_message(resp, 405, "use GET");
	if (strcmp(req->path, "/v1/place") == 0) {
		if (!post)
			return reply_message(resp, 405, "use POST");
		if (req->body_len > PLACE_BODY_LIMIT)
			return reply_message(resp, 413, "the place request is too large");
		return handle_place(s, req, resp);
	}
	return reply_message(resp, 404, "no such path (POST /v1/place, GET /v1/hosts, GET /healthz)");
}
