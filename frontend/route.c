/* frontend: the fleet router, a struct hostagent_ops that runs each
 * invocation on some host of a fleet.
 *
 * A warm invoke goes straight to a host that has the function version warm:
 * first the hosts this frontend itself ran it on (most recent first), then
 * those whose registration in etcd lists an idle sandbox of it.  Each gets
 * the invocation with warm_only, so a host whose sandboxes are all busy or
 * gone answers at once and the next is tried.  Only when no host has one
 * does the router ask the placement service where to start a sandbox (a
 * cold start), and invoke there.
 *
 * Static stability: the warm path needs neither etcd nor placement.  The
 * registrations are read by a background thread every second and the last
 * good view is kept while etcd is down; the frontend's own warm list needs
 * nothing at all.  With placement or etcd down, a cold start fails fast
 * with -EHOSTUNREACH (503 for the client).  A placement service that is up
 * but behind (503 Overloaded, or no answer in time) is a busy fleet, not a
 * down one: -EBUSY, which the caller waits on and then answers 429.
 *
 * An invocation is sent to a host at most once: a host that took it and
 * then vanished gives -ECONNRESET (502: it may or may not have run), never a
 * second run elsewhere; only a host that refused the connection is skipped
 * for the next.
 *
 * Provisioned concurrency is a plan in etcd, kindling/provisioned/NAME/VER:
 * {"revision", "hosts": {HOST: N}}.  Any frontend applying it reads the plan,
 * keeps the hosts that are still registered, places the rest, tells every
 * host its share, and writes the plan back (compare-and-swap), so two
 * frontends starting together do not provision twice. */
#include "frontend/internal.h"

#include "common/etcd.h"
#include "common/http_client.h"
#include "placement/placement.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ROUTE_REFRESH_MS 1000
#define ROUTE_DOWN_S 5.0		/* a host that refused a connection is skipped this long */
#define ROUTE_WARM_MAX 4096		/* entries in the frontend's own warm list */
#define ROUTE_WARM_TRIES 4		/* warm hosts tried before a cold start */
#define ROUTE_COLD_TRIES 3		/* hosts placed before giving up */
#define ROUTE_SNAPSHOT_BUSY_WAITS 60	/* waits for a busy placement before a snapshot fails */
#define ROUTE_SNAPSHOT_ATTEMPTS 3	/* tries of a snapshot that a lost agent cut short */
#define ROUTE_SNAPSHOT_WAIT_MS 1000	/* between two asks of a snapshot's placement */
#define ROUTE_PLACE_BODY_MAX (64u << 10)
#define ROUTE_STATS_BODY_MAX (64u << 10)

/* A sandbox of a function version on a host, from a registration. */
struct route_warm_reg {
	char *name, *version, *revision;
	unsigned idle, provisioned;
};

/* A registered host, as last read from etcd. */
struct route_host {
	char *id, *url;
	bool snapshot; /* its sandboxes can be snapshotted and restored (a micro-VM agent) */
	struct route_warm_reg *warm;
	size_t n_warm;
};

/* Somewhere this frontend ran a function version. */
struct route_warm {
	char *key; /* "NAME\nVERSION\nREVISION" */
	char *url;
	double used;
};

/* A host agent's client, and when it last refused us. */
struct route_agent {
	char *url;
	struct hostagent_remote *remote;
	double down_until;
};

struct frontend_router {
	struct etcd *etcd;
	char **placement;
	size_t n_placement, placement_next;
	unsigned placement_timeout_ms;
	unsigned snapshot_busy_waits, snapshot_attempts, snapshot_wait_ms;

	pthread_mutex_t lock;
	struct route_host *hosts;	/* the last good view of the registrations */
	size_t n_hosts;
	bool have_hosts;
	struct route_warm *warm;
	size_t n_warm;
	struct route_agent *agents;
	size_t n_agents;
	struct http_client **clients;	/* idle placement clients */
	size_t n_clients;

	pthread_t refresher;
	pthread_mutex_t stop_lock;
	pthread_cond_t stop_cond;
	bool stop, started;
};

/* ---- small pieces ------------------------------------------------------------------------------------------------ */

static char *warm_key(const struct hostagent_function *fn)
{
	return xasprintf("%s\n%s\n%s", fn->name, fn->version, fn->revision_id);
}

static void host_cleanup(struct route_host *h)
{
	for (size_t i = 0; i < h->n_warm; i++) {
		free(h->warm[i].name);
		free(h->warm[i].version);
		free(h->warm[i].revision);
	}
	free(h->warm);
	free(h->id);
	free(h->url);
}

static void hosts_free(struct route_host *hosts, size_t n)
{
	for (size_t i = 0; i < n; i++)
		host_cleanup(&hosts[i]);
	free(hosts);
}

static struct http_client *client_get(struct frontend_router *rt)
{
	struct http_client *c = NULL;
	pthread_mutex_lock(&rt->lock);
	if (rt->n_clients)
		c = rt->clients[--rt->n_clients];
	pthread_mutex_unlock(&rt->lock);
	if (!c && http_client_new(&c) < 0)
		return NULL;
	return c;
}

static void client_put(struct frontend_router *rt, struct http_client *c)
{
	pthread_mutex_lock(&rt->lock);
	struct http_client **v = realloc(rt->clients, (rt->n_clients + 1) * sizeof(*v));
	if (v) {
		rt->clients = v;
		v[rt->n_clients++] = c;
		c = NULL;
	}
	pthread_mutex_unlock(&rt->lock);
	http_client_free(c);
}

/* The agent client of |url|, made on first use.  Called with rt->lock. */
static struct route_agent *agent_locked(struct frontend_router *rt, const char *url)
{
	for (size_t i = 0; i < rt->n_agents; i++)
		if (strcmp(rt->agents[i].url, url) == 0)
			return &rt->agents[i];
	struct route_agent *v = realloc(rt->agents, (rt->n_agents + 1) * sizeof(*v));
	if (!v)
		return NULL;
	rt->agents = v;
	struct route_agent *a = &v[rt->n_agents];
	memset(a, 0, sizeof(*a));
	if (!(a->url = strdup(url)) || hostagent_remote_new(url, 0, &a->remote) < 0) {
		free(a->url);
		return NULL;
	}
	rt->n_agents++;
	return a;
}

/* The remote client of |url| if it is not marked down, else NULL.  Clients
 * are never freed before the router, so the pointer stays good. */
static struct hostagent_remote *agent_for(struct frontend_router *rt, const char *url, bool ignore_down)
{
	pthread_mutex_lock(&rt->lock);
	struct route_agent *a = agent_locked(rt, url);
	struct hostagent_remote *r = a && (ignore_down || a->down_until <= now_seconds()) ? a->remote : NULL;
	pthread_mutex_unlock(&rt->lock);
	return r;
}

static void agent_mark_down(struct frontend_router *rt, const char *url)
{
	pthread_mutex_lock(&rt->lock);
	struct route_agent *a = agent_locked(rt, url);
	if (a)
		a->down_until = now_seconds() + ROUTE_DOWN_S;
	/* Forget it as a warm host; a registration brings it back. */
	for (size_t i = 0; i < rt->n_warm;) {
		if (strcmp(rt->warm[i].url, url) == 0) {
			free(rt->warm[i].key);
			free(rt->warm[i].url);
			rt->warm[i] = rt->warm[--rt->n_warm];
		} else {
			i++;
		}
	}
	pthread_mutex_unlock(&rt->lock);
}

static void warm_forget(struct frontend_router *rt, const char *key, const char *url)
{
	pthread_mutex_lock(&rt->lock);
	for (size_t i = 0; i < rt->n_warm; i++)
		if (strcmp(rt->warm[i].key, key) == 0 && strcmp(rt->warm[i].url, url) == 0) {
			free(rt->warm[i].key);
			free(rt->warm[i].url);
			rt->warm[i] = rt->warm[--rt->n_warm];
			break;
		}
	pthread_mutex_unlock(&rt->lock);
}

static void warm_note(struct frontend_router *rt, const char *key, const char *url)
{
	pthread_mutex_lock(&rt->lock);
	double now = now_seconds();
	for (size_t i = 0; i < rt->n_warm; i++)
		if (strcmp(rt->warm[i].key, key) == 0 && strcmp(rt->warm[i].url, url) == 0) {
			rt->warm[i].used = now;
			goto out;
		}
	if (rt->n_warm == ROUTE_WARM_MAX) {
		/* Full: the least recently used entry goes. */
		size_t lru = 0;
		for (size_t i = 1; i < rt->n_warm; i++)
			if (rt->warm[i].used < rt->warm[lru].used)
				lru = i;
		free(rt->warm[lru].key);
		free(rt->warm[lru].url);
		rt->warm[lru] = rt->warm[--rt->n_warm];
	} else {
		struct route_warm *v = realloc(rt->warm, (rt->n_warm + 1) * sizeof(*v));
		if (!v)
			goto out;
		rt->warm = v;
	}
	struct route_warm *w = &rt->warm[rt->n_warm];
	w->key = strdup(key);
	w->url = strdup(url);
	w->used = now;
	if (w->key && w->url) {
		rt->n_warm++;
	} else {
		free(w->key);
		free(w->url);
	}
out:
	pthread_mutex_unlock(&rt->lock);
}

/* ---- the registrations ------------------------------------------------------------------------------------------- */

static char *json_strdup(json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));
	return s ? strdup(s) : NULL;
}

/* One registration (untrusted: anything may write etcd) into |h|.  0 or
 * -EINVAL. */
static int host_parse(const struct etcd_kv *kv, struct route_host *h)
{
	memset(h, 0, sizeof(*h));
	json_t *j = json_loadb((const char *)kv->value, kv->value_len, JSON_REJECT_DUPLICATES, NULL);
	int r = -EINVAL;
	if (!json_is_object(j))
		goto out;
	h->id = json_strdup(j, "id");
	h->url = json_strdup(j, "url");
	if (!h->id || !h->url || strncmp(h->url, "http://", 7) != 0)
		goto out;
	h->snapshot = json_is_true(json_object_get(j, "snapshot"));
	json_t *warm = json_object_get(j, "warm");
	size_t n = json_is_array(warm) ? json_array_size(warm) : 0;
	if (n && !(h->warm = calloc(n, sizeof(*h->warm))))
		goto out;
	for (size_t i = 0; i < n; i++) {
		json_t *w = json_array_get(warm, i);
		struct route_warm_reg *rw = &h->warm[h->n_warm];
		rw->name = json_strdup(w, "function");
		rw->version = json_strdup(w, "version");
		rw->revision = json_strdup(w, "revision");
		json_int_t idle = json_integer_value(json_object_get(w, "idle"));
		json_int_t prov = json_integer_value(json_object_get(w, "provisioned"));
		rw->idle = idle > 0 && idle < 1000000 ? (unsigned)idle : 0;
		rw->provisioned = prov > 0 && prov < 1000000 ? (unsigned)prov : 0;
		if (!rw->name || !rw->version || !rw->revision) {
			free(rw->name);
			free(rw->version);
			free(rw->revision);
			continue;
		}
		h->n_warm++;
	}
	r = 0;
out:
	json_decref(j);
	if (r < 0)
		host_cleanup(h);
	return r;
}

/* Read the registrations.  0, or -errno with the old view kept. */
static int refresh_hosts(struct frontend_router *rt)
{
	struct etcd_kvs kvs = { 0 };
	int r = etcd_range_prefix(rt->etcd, "kindling/hosts/", NULL, 0, &kvs);
	if (r < 0)
		return r;
	struct route_host *hosts = kvs.n ? calloc(kvs.n, sizeof(*hosts)) : NULL;
	size_t n = 0;
	for (size_t i = 0; i < kvs.n && (hosts || !kvs.n); i++) {
		if (host_parse(&kvs.kvs[i], &hosts[n]) == 0)
			n++;
		else
			log_debug("skipping the malformed host registration %s", kvs.kvs[i].key);
	}
	etcd_kvs_cleanup(&kvs);
	if (kvs.n && !hosts)
		return -ENOMEM;
	pthread_mutex_lock(&rt->lock);
	struct route_host *old = rt->hosts;
	size_t old_n = rt->n_hosts;
	rt->hosts = hosts;
	rt->n_hosts = n;
	rt->have_hosts = true;
	pthread_mutex_unlock(&rt->lock);
	hosts_free(old, old_n);
	return 0;
}

/* Wait |ms| milliseconds, or less when the router stops.  Returns true
 * when it is stopping. */
static bool stop_wait_ms(struct frontend_router *rt, unsigned ms)
{
	return fe_wait_unless_stopped(&rt->stop_lock, &rt->stop_cond, &rt->stop, ms);
}

static void *refresher_main(void *arg)
{
	struct frontend_router *rt = arg;
	do
		refresh_hosts(rt);
	while (!stop_wait_ms(rt, ROUTE_REFRESH_MS));
	return NULL;
}

/* The URLs to try warm for |fn|: this frontend's own (most recent first),
 * then registered hosts with an idle sandbox of it.  Malloc'd strings in
 * |out|. */
static void warm_candidates(struct frontend_router *rt, const struct hostagent_function *fn, const char *key,
			    struct str_list *out)
{
	pthread_mutex_lock(&rt->lock);
	for (size_t round = 0; round < ROUTE_WARM_TRIES; round++) {
		/* Selection by recency without sorting the whole list. */
		double best = -1;
		size_t bi = SIZE_MAX;
		for (size_t i = 0; i < rt->n_warm; i++) {
			if (strcmp(rt->warm[i].key, key) != 0 || rt->warm[i].used <= best)
				continue;
			bool seen = false;
			for (size_t k = 0; k < out->n && !seen; k++)
				seen = strcmp(out->items[k], rt->warm[i].url) == 0;
			if (!seen) {
				best = rt->warm[i].used;
				bi = i;
			}
		}
		if (bi == SIZE_MAX)
			break;
		str_list_add(out, rt->warm[bi].url);
	}
	for (size_t i = 0; i < rt->n_hosts && out->n < ROUTE_WARM_TRIES; i++) {
		const struct route_host *h = &rt->hosts[i];
		for (size_t w = 0; w < h->n_warm; w++) {
			const struct route_warm_reg *rw = &h->warm[w];
			if (rw->idle == 0 || strcmp(rw->name, fn->name) || strcmp(rw->version, fn->version) ||
			    strcmp(rw->revision, fn->revision_id))
				continue;
			bool seen = false;
			for (size_t k = 0; k < out->n && !seen; k++)
				seen = strcmp(out->items[k], h->url) == 0;
			if (!seen)
				str_list_add(out, h->url);
			break;
		}
	}
	pthread_mutex_unlock(&rt->lock);
}

/* The ids of the registered hosts that cannot take or restore SnapStart
 * snapshots (process-sandbox agents), added to |out|: what a placement
 * that needs a micro-VM host excludes.  Returns how many hosts are
 * registered in all. */
static size_t snapless_hosts(struct frontend_router *rt, struct str_list *out)
{
	pthread_mutex_lock(&rt->lock);
	size_t n = rt->n_hosts;
	for (size_t i = 0; i < rt->n_hosts; i++)
		if (!rt->hosts[i].snapshot)
			str_list_add(out, rt->hosts[i].id);
	pthread_mutex_unlock(&rt->lock);
	return n;
}

/* ---- the placement service --------------------------------------------------------------------------------------- */

/* Ask placement where to start |count| sandboxes of |fn|, avoiding the host
 * ids in |exclude|.  0 with |*out| (the answer's JSON, a new reference),
 * -EHOSTUNREACH (no placement service answers, or it cannot see the fleet),
 * -EBUSY (no host has room, or placement is overloaded: a 503 Overloaded or
 * no answer in time), -EDQUOT (the fleet's burst limit), -errno. */
static int place(struct frontend_router *rt, const struct hostagent_function *fn, unsigned count,
		 const struct str_list *exclude, json_t **out)
{
	json_t *ex = json_array();
	for (size_t i = 0; exclude && i < exclude->n; i++)
		json_array_append_new(ex, json_string(exclude->items[i]));
	json_t *req = json_pack("{s:s, s:s, s:s, s:i, s:i, s:o}", "function", fn->name, "version", fn->version, "image",
				fn->image_digest, "memory_mb", (json_int_t)fn->memory_mb, "count", (json_int_t)count,
				"exclude", ex);
	char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
	json_decref(req);
	struct http_client *c = body ? client_get(rt) : NULL;
	if (!c) {
		free(body);
		return -ENOMEM;
	}
	const struct http_header hdr[] = { { "Content-Type", "application/json" } };
	int r = -EHOSTUNREACH;
	bool slow = false; /* one accepted the request but did not answer in time */
	size_t first;
	pthread_mutex_lock(&rt->lock);
	first = rt->placement_next;
	pthread_mutex_unlock(&rt->lock);
	for (size_t t = 0; t < rt->n_placement; t++) {
		size_t i = (first + t) % rt->n_placement;
		char *url = xasprintf("%s/v1/place", rt->placement[i]);
		struct http_client_response resp = { 0 };
		int q = url ? http_client_request(c, "POST", url, hdr, 1, body, strlen(body), rt->placement_timeout_ms,
						  ROUTE_PLACE_BODY_MAX, &resp)
			    : -ENOMEM;
		free(url);
		json_t *j = q == 0 ? json_loadb(resp.body, resp.body_len, 0, NULL) : NULL;
		const char *reason = json_string_value(json_object_get(j, "reason"));
		bool shed = http_client_response_header(&resp, "Retry-After") != NULL; /* load shedding */
		bool full = reason && (strcmp(reason, "NoCapacity") == 0 || strcmp(reason, "Conflict") == 0 ||
				       strcmp(reason, "Overloaded") == 0);
		if (q == 0 && resp.status == 503 && (shed || full)) {
			/* Every host of the function's cell is full, or
			 * placement is behind on cold starts or shedding
			 * connections: the caller may wait for room (then
			 * 429). */
			json_decref(j);
			http_client_response_cleanup(&resp);
			r = -EBUSY;
			break;
		}
		if (q < 0 || resp.status >= 500) {
			json_decref(j);
			if (q < 0)
				log_debug("placement %s: %s", rt->placement[i], strerror(-q));
			else
				log_debug("placement %s answered %ld: %.200s", rt->placement[i], resp.status,
					  resp.body ? resp.body : "");
			/* It took the connection and then failed it: there, and behind. */
			slow |= q == -ETIMEDOUT || q == -EIO || q == -ECONNRESET;
			http_client_response_cleanup(&resp);
			if (q == -ENOMEM) {
				r = q;
				break;
			}
			/* A 503 may mean this one cannot see etcd; another might. */
			continue;
		}
		pthread_mutex_lock(&rt->lock);
		rt->placement_next = i;
		pthread_mutex_unlock(&rt->lock);
		if (resp.status == 200 && json_is_object(j)) {
			*out = j;
			r = 0;
		} else {
			r = resp.status == 429 ? -EDQUOT : -EPROTO;
			if (r == -EPROTO)
				log_err("placement %s answered %ld to a placement of %s: %.200s", rt->placement[i],
					resp.status, fn->name, resp.body ? resp.body : "");
			json_decref(j);
		}
		http_client_response_cleanup(&resp);
		break;
	}
	/* Up but behind on cold starts is not down: wait for it like for a
	 * full fleet (then 429), rather than 503. */
	if (r == -EHOSTUNREACH && slow)
		r = -EBUSY;
	client_put(rt, c);
	free(body);
	return r;
}

/* Split one placement answer ({"host","url"}) into its strings. */
static bool placed_host(json_t *p, const char **host, const char **url)
{
	*host = json_string_value(json_object_get(p, "host"));
	*url = json_string_value(json_object_get(p, "url"));
	return *host && *url && strncmp(*url, "http://", 7) == 0;
}

/* ---- invoke ------------------------------------------------------------------------------------------------------ */

static int route_invoke(void *arg, const struct hostagent_invoke_request *req, struct hostagent_invoke_result *out)
{
	struct frontend_router *rt = arg;
	memset(out, 0, sizeof(*out));
	char *key = warm_key(req->fn);
	if (!key)
		return -ENOMEM;
	struct hostagent_invoke_request warm = *req;
	warm.warm_only = true;

	/* Warm: hosts known to have the version. */
	struct str_list cands = { 0 };
	warm_candidates(rt, req->fn, key, &cands);
	int r = -EAGAIN;
	for (size_t i = 0; i < cands.n; i++) {
		struct hostagent_remote *h = agent_for(rt, cands.items[i], false);
		if (!h)
			continue;
		r = hostagent_remote_ops.invoke(h, &warm, out);
		if (r == 0) {
			warm_note(rt, key, cands.items[i]);
			goto done;
		}
		hostagent_invoke_result_cleanup(out);
		if (r == -ENOTCONN)
			agent_mark_down(rt, cands.items[i]);
		else if (r == -EAGAIN)
			warm_forget(rt, key, cands.items[i]);
		else if (r != -EBUSY && r != -ESHUTDOWN)
			goto done; /* -ECONNRESET, -ENOENT, -EINVAL: the caller's answer */
	}

	/* Cold: placement names a host; a version that restores a SnapStart
	 * snapshot only one whose agent can restore it. */
	struct str_list exclude = { 0 };
	if (req->fn->snapshot)
		snapless_hosts(rt, &exclude);
	r = -EHOSTUNREACH;
	for (unsigned t = 0; t < ROUTE_COLD_TRIES; t++) {
		json_t *p = NULL;
		r = place(rt, req->fn, 1, &exclude, &p);
		if (r < 0)
			break;
		const char *host, *url;
		if (!placed_host(p, &host, &url)) {
			log_err("placement answered a placement of %s without a host and an http:// url", req->fn->name);
			json_decref(p);
			r = -EPROTO;
			break;
		}
		struct hostagent_remote *h = agent_for(rt, url, true);
		r = h ? hostagent_remote_ops.invoke(h, req, out) : -ENOMEM;
		if (r == 0) {
			warm_note(rt, key, url);
			json_decref(p);
			break;
		}
		hostagent_invoke_result_cleanup(out);
		log_debug("function %s: the host %s placed it on answered %s", req->fn->name, host, strerror(-r));
		if (r == -ENOTCONN)
			agent_mark_down(rt, url);
		bool retry = r == -ENOTCONN || r == -EBUSY || r == -ESHUTDOWN;
		if (retry)
			str_list_add(&exclude, host);
		json_decref(p);
		if (!retry)
			break;
	}
	/* Every host placed refused: nobody could take it. */
	if (r == -ENOTCONN || r == -ESHUTDOWN)
		r = -EHOSTUNREACH;
	str_list_clear(&exclude);
done:
	str_list_clear(&cands);
	free(key);
	return r;
}

/* ---- provisioned concurrency ------------------------------------------------------------------------------------- */

/* The registered host |id|'s URL (malloc'd), or NULL. */
static char *host_url(struct frontend_router *rt, const char *id)
{
	char *url = NULL;
	pthread_mutex_lock(&rt->lock);
	for (size_t i = 0; i < rt->n_hosts && !url; i++)
		if (strcmp(rt->hosts[i].id, id) == 0)
			url = strdup(rt->hosts[i].url);
	pthread_mutex_unlock(&rt->lock);
	return url;
}

static int route_provision(void *arg, const struct hostagent_function *fn, unsigned n)
{
	struct frontend_router *rt = arg;
	if (refresh_hosts(rt) < 0) {
		log_err("function %s:%s: cannot provision %u sandboxes while etcd is unreachable", fn->name,
			fn->version, n);
		return -EHOSTUNREACH;
	}
	char *pkey = xasprintf("kindling/provisioned/%s/%s", fn->name, fn->version);
	if (!pkey)
		return -ENOMEM;
	int r = -EAGAIN;
	for (unsigned attempt = 0; attempt < 5 && r == -EAGAIN; attempt++) {
		struct etcd_kv kv = { 0 };
		int g = etcd_get(rt->etcd, pkey, &kv);
		if (g < 0 && g != -ENOENT) {
			r = g == -ENOTCONN ? -EHOSTUNREACH : g;
			break;
		}
		json_t *old = g == 0 ? json_loadb((const char *)kv.value, kv.value_len, 0, NULL) : NULL;
		const char *old_rev = json_string_value(json_object_get(old, "revision"));
		json_t *old_hosts = json_object_get(old, "hosts");
		bool same_rev = old_rev && strcmp(old_rev, fn->revision_id) == 0;

		/* Keep what still runs, up to n; everything else is released. */
		json_t *plan = json_object(), *release = json_object();
		unsigned kept = 0;
		const char *hid;
		json_t *hv;
		json_object_foreach(old_hosts, hid, hv)
		{
			json_int_t c = json_integer_value(hv);
			char *url = host_url(rt, hid);
			if (same_rev && url && c > 0 && kept < n) {
				unsigned take = (unsigned)c < n - kept ? (unsigned)c : n - kept;
				json_object_set_new(plan, hid, json_integer(take));
				kept += take;
			}
			if (url && !(same_rev && json_object_get(plan, hid)))
				json_object_set_new(release, hid, json_string(url));
			free(url);
		}
		/* Place the rest, one sandbox at a time so placement spreads them. */
		r = 0;
		for (unsigned i = kept; i < n && r == 0; i++) {
			json_t *p = NULL;
			r = place(rt, fn, 1, NULL, &p);
			const char *host, *url;
			if (r == 0 && placed_host(p, &host, &url)) {
				json_t *cur = json_object_get(plan, host);
				json_object_set_new(plan, host, json_integer(json_integer_value(cur) + 1));
			} else if (r == 0) {
				r = -EPROTO;
			}
			json_decref(p);
		}
		/* Tell each host its share, then record the plan. */
		json_object_foreach(plan, hid, hv)
		{
			if (r < 0)
				break;
			char *url = host_url(rt, hid);
			struct hostagent_remote *h = url ? agent_for(rt, url, true) : NULL;
			int q = h ? hostagent_remote_ops.provision(h, fn, (unsigned)json_integer_value(hv)) : -ENOTCONN;
			if (q < 0) {
				log_err("function %s:%s: host %s refused %lld provisioned sandboxes: %s", fn->name,
					fn->version, hid, (long long)json_integer_value(hv), strerror(-q));
				r = q;
			}
			free(url);
		}
		if (r == 0) {
			json_object_foreach(release, hid, hv)
			{
				struct hostagent_remote *h = agent_for(rt, json_string_value(hv), true);
				if (h)
					hostagent_remote_ops.provision(h, fn, 0);
			}
			json_t *doc = json_pack("{s:s, s:O}", "revision", fn->revision_id, "hosts", plan);
			char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
			json_decref(doc);
			struct etcd_cmp cmp = { .key = pkey, .target = ETCD_CMP_MOD_REVISION, .op = ETCD_EQUAL,
						.number = g == 0 ? kv.mod_revision : 0 };
			struct etcd_op op = n ? (struct etcd_op){ .type = ETCD_OP_PUT, .key = pkey, .value = text,
								 .value_len = text ? strlen(text) : 0 }
					      : (struct etcd_op){ .type = ETCD_OP_DELETE, .key = pkey };
			bool ok = false;
			r = text ? etcd_txn(rt->etcd, &cmp, 1, &op, 1, NULL, 0, &ok, NULL) : -ENOMEM;
			free(text);
			if (r == 0 && !ok)
				r = -EAGAIN; /* another frontend changed the plan: start over from it */
			else if (r == -ENOTCONN)
				r = -EHOSTUNREACH;
		}
		json_decref(plan);
		json_decref(release);
		json_decref(old);
		etcd_kv_cleanup(&kv);
	}
	free(pkey);
	if (r == -EDQUOT)
		r = -EBUSY;
	return r;
}

/* ---- drain, stats, logs: every registered host ------------------------------------------------------------------- */

/* The URLs of every registered host (malloc'd, in |out|). */
static void all_hosts(struct frontend_router *rt, struct str_list *out)
{
	pthread_mutex_lock(&rt->lock);
	for (size_t i = 0; i < rt->n_hosts; i++)
		str_list_add(out, rt->hosts[i].url);
	pthread_mutex_unlock(&rt->lock);
}

static void route_drain(void *arg, const char *name, const char *version, const char *keep_revision)
{
	struct frontend_router *rt = arg;
	refresh_hosts(rt);
	struct str_list urls = { 0 };
	all_hosts(rt, &urls);
	/* Sandboxes of another revision are never reused (the revision is part
	 * of what a warm invoke asks for), so a host missed here only keeps
	 * idle ones until they expire. */
	for (size_t i = 0; i < urls.n; i++) {
		struct hostagent_remote *h = agent_for(rt, urls.items[i], false);
		if (h)
			hostagent_remote_ops.drain(h, name, version, keep_revision);
	}
	str_list_clear(&urls);
}

static void route_get_stats(void *arg, struct hostagent_stats *out)
{
	struct frontend_router *rt = arg;
	memset(out, 0, sizeof(*out));
	struct str_list urls = { 0 };
	all_hosts(rt, &urls);
	for (size_t i = 0; i < urls.n; i++) {
		struct hostagent_remote *h = agent_for(rt, urls.items[i], false);
		struct hostagent_stats s = { 0 };
		if (!h)
			continue;
		hostagent_remote_ops.get_stats(h, &s);
		out->memory_budget += s.memory_budget;
		out->memory_in_use += s.memory_in_use;
		out->sandboxes += s.sandboxes;
		out->starting += s.starting;
		out->busy += s.busy;
		out->idle += s.idle;
		out->provisioned += s.provisioned;
		out->cold_starts += s.cold_starts;
		out->warm_starts += s.warm_starts;
		out->evictions += s.evictions;
		out->expirations += s.expirations;
	}
	str_list_clear(&urls);
}

/* A function's log from every host that ran it, host by host, each with a
 * line naming the host, the last |max| bytes of that. */
static int route_read_log(void *arg, const char *name, size_t max, char **out, size_t *out_len)
{
	struct frontend_router *rt = arg;
	struct str_list urls = { 0 };
	all_hosts(rt, &urls);
	char *all = NULL;
	size_t len = 0;
	int r = -ENOENT;
	for (size_t i = 0; i < urls.n; i++) {
		struct hostagent_remote *h = agent_for(rt, urls.items[i], false);
		char *part = NULL;
		size_t plen = 0;
		if (!h || hostagent_remote_ops.read_log(h, name, max, &part, &plen) < 0)
			continue;
		char *head = xasprintf("==> host %s <==\n", urls.items[i]);
		size_t hl = head ? strlen(head) : 0;
		char *v = head ? realloc(all, len + hl + plen + 1) : NULL;
		if (!v) {
			free(head);
			free(part);
			free(all);
			str_list_clear(&urls);
			return -ENOMEM;
		}
		all = v;
		memcpy(all + len, head, hl);
		memcpy(all + len + hl, part, plen);
		len += hl + plen;
		all[len] = 0;
		free(head);
		free(part);
		r = 0;
	}
	str_list_clear(&urls);
	if (r == 0 && len > max) {
		memmove(all, all + len - max, max);
		len = max;
		all[len] = 0;
	}
	*out = all;
	*out_len = len;
	return r;
}

/* ---- SnapStart: on a host that can snapshot ------------------------------------------------------------------------ */

static bool route_snapshot_supported(void *arg, char *why, size_t len)
{
	struct frontend_router *rt = arg;
	refresh_hosts(rt); /* etcd down: the last view decides */
	struct str_list snapless = { 0 };
	size_t n = snapless_hosts(rt, &snapless);
	bool ok = n > snapless.n;
	str_list_clear(&snapless);
	if (!ok && n == 0)
		snprintf(why, len, "no host agent is registered in etcd: start kindling agent --etcd ... --isolation "
			 "microvm on a host with /dev/kvm");
	else if (!ok)
		snprintf(why, len, "none of the fleet's %zu host agents can take snapshots (they run process "
			 "sandboxes): start one with kindling agent --isolation microvm on a host with /dev/kvm", n);
	return ok;
}

/* Placement chooses among the hosts that can snapshot (the others are
 * excluded), and the snapshot is taken there; it lands in the fleet's
 * shared store, so every micro-VM host can restore it.
 *
 * The version stays Pending while there is hope:
 * - placement behind (no answer in time) or every capable host full: ask
 *   again, as an invocation waits for room, up to snapshot_busy_waits;
 * - the agent lost (connection refused, or broken mid-call: it died or
 *   restarted): place the snapshot again, on another capable host or the
 *   same one once it is back, up to snapshot_attempts tries in all, each
 *   failure logged with the host;
 * - a host full or shutting down, or one that says it cannot snapshot:
 *   excluded, and another placed (ROUTE_COLD_TRIES hosts).
 * The agent's own refusal (function-failed, timed-out, invalid) is final. */
static int route_snapshot(void *arg, const struct hostagent_function *fn, const char *name, char digest[65], char *why,
			  size_t why_len)
{
	struct frontend_router *rt = arg;
	refresh_hosts(rt);
	struct str_list exclude = { 0 };
	snapless_hosts(rt, &exclude);
	int r = -EHOSTUNREACH;
	unsigned busy_waits = 0, lost = 0, declined = 0;
	for (;;) {
		json_t *p = NULL;
		const char *host, *url;
		r = place(rt, fn, 1, &exclude, &p);
		if (r == -EBUSY && busy_waits < rt->snapshot_busy_waits) {
			busy_waits++;
			log_debug("function %s: placement is busy; asking again for snapshot %s (%u of %u)", fn->name,
				  name, busy_waits, rt->snapshot_busy_waits);
			if (!stop_wait_ms(rt, rt->snapshot_wait_ms))
				continue;
			r = -ESHUTDOWN; /* the version stays Pending for the next start */
			snprintf(why, why_len, "the frontend stopped while the snapshot waited for placement");
			break;
		}
		if (r == -EBUSY) {
			snprintf(why, why_len, "placement stayed busy or every host that can take the snapshot stayed full "
				 "through %u asks %u ms apart: add room (another kindling agent with --isolation microvm) "
				 "or check the placement service's log", busy_waits + 1, rt->snapshot_wait_ms);
			break;
		}
		if (r < 0) {
			snprintf(why, why_len, "placement found no host that can take the snapshot (%s): is a kindling "
				 "agent with --isolation microvm registered and does it have room?",
				 r == -EHOSTUNREACH ? "no placement service answers" : strerror(-r));
			break;
		}
		if (!placed_host(p, &host, &url)) {
			json_decref(p);
			r = -EPROTO;
			snprintf(why, why_len, "placement answered without a host and an http:// url");
			break;
		}
		struct hostagent_remote *h = agent_for(rt, url, true);
		log_info("function %s: taking SnapStart snapshot %s on host %s", fn->name, name, host);
		r = h ? hostagent_remote_ops.snapshot(h, fn, name, digest, why, why_len) : -ENOMEM;
		if (r == -ENOTCONN || r == -ECONNRESET) {
			/* A transport failure, not the agent's answer: the
			 * host is not excluded, so it may come back. */
			lost++;
			log_warn("function %s: snapshot %s on host %s failed (try %u of %u): %s", fn->name, name, host,
				 lost, rt->snapshot_attempts, why);
			if (r == -ENOTCONN)
				agent_mark_down(rt, url);
			json_decref(p);
			if (lost < rt->snapshot_attempts && !stop_wait_ms(rt, rt->snapshot_wait_ms))
				continue;
			if (lost < rt->snapshot_attempts) {
				r = -ESHUTDOWN;
				snprintf(why, why_len, "the frontend stopped while the snapshot waited to be tried again");
				break;
			}
			char last[256];
			snprintf(last, sizeof(last), "%s", why);
			snprintf(why, why_len, "%u tries of the snapshot were cut short by a lost host agent (the last: "
				 "%s)", lost, last);
			break;
		}
		bool other = r == -EBUSY || r == -ESHUTDOWN || r == -ENOTSUP;
		if (other)
			str_list_add(&exclude, host);
		json_decref(p);
		if (!other || ++declined >= ROUTE_COLD_TRIES)
			break;
	}
	str_list_clear(&exclude);
	/* The hosts placed were lost on every try: nobody could take it, and
	 * the tries are spent (the caller does not try again). */
	return r == -ENOTCONN || r == -ECONNRESET ? -EHOSTUNREACH : r;
}

const struct hostagent_ops frontend_router_ops = {
	.invoke = route_invoke,
	.provision = route_provision,
	.drain = route_drain,
	.get_stats = route_get_stats,
	.read_log = route_read_log,
	.snapshot_supported = route_snapshot_supported,
	.snapshot = route_snapshot,
};

/* ---- life cycle -------------------------------------------------------------------------------------------------- */

int frontend_router_new(const struct frontend_router_config *cfg, struct frontend_router **out)
{
	if (!cfg->etcd) {
		log_err("the fleet router needs etcd");
		return -EINVAL;
	}
	struct frontend_router *rt = calloc(1, sizeof(*rt));
	if (!rt)
		return -ENOMEM;
	rt->etcd = cfg->etcd;
	rt->placement_timeout_ms = cfg->placement_timeout_ms ? cfg->placement_timeout_ms : 2000;
	rt->snapshot_busy_waits = cfg->snapshot_busy_waits ? cfg->snapshot_busy_waits : ROUTE_SNAPSHOT_BUSY_WAITS;
	rt->snapshot_attempts = cfg->snapshot_attempts ? cfg->snapshot_attempts : ROUTE_SNAPSHOT_ATTEMPTS;
	rt->snapshot_wait_ms = cfg->snapshot_wait_ms ? cfg->snapshot_wait_ms : ROUTE_SNAPSHOT_WAIT_MS;
	pthread_mutex_init(&rt->lock, NULL);
	pthread_mutex_init(&rt->stop_lock, NULL);
	pthread_cond_init(&rt->stop_cond, NULL);
	int r = 0;
	char *list = strdup(cfg->placement_urls ? cfg->placement_urls : ""), *save = NULL;
	for (char *u = list ? strtok_r(list, ",", &save) : NULL; u && r == 0; u = strtok_r(NULL, ",", &save)) {
		size_t ul = strlen(u);
		while (ul && u[ul - 1] == '/')
			u[--ul] = 0;
		if (strncmp(u, "http://", 7) != 0 || ul <= 7) {
			log_err("placement service URL '%s' is not http://HOST:PORT", u);
			r = -EINVAL;
			break;
		}
		char **v = realloc(rt->placement, (rt->n_placement + 1) * sizeof(*v));
		if (!v || !(v[rt->n_placement] = strdup(u))) {
			if (v)
				rt->placement = v;
			r = -ENOMEM;
			break;
		}
		rt->placement = v;
		rt->n_placement++;
	}
	if (!list)
		r = -ENOMEM;
	free(list);
	if (r == 0) {
		/* A first view before the first invoke; etcd may be down, which
		 * only means no host is known yet. */
		refresh_hosts(rt);
		if ((r = -pthread_create(&rt->refresher, NULL, refresher_main, rt)) == 0)
			rt->started = true;
	}
	if (r < 0) {
		frontend_router_free(rt);
		return r;
	}
	*out = rt;
	return 0;
}

void frontend_router_free(struct frontend_router *rt)
{
	if (!rt)
		return;
	if (rt->started) {
		pthread_mutex_lock(&rt->stop_lock);
		rt->stop = true;
		pthread_cond_broadcast(&rt->stop_cond);
		pthread_mutex_unlock(&rt->stop_lock);
		pthread_join(rt->refresher, NULL);
	}
	hosts_free(rt->hosts, rt->n_hosts);
	for (size_t i = 0; i < rt->n_warm; i++) {
		free(rt->warm[i].key);
		free(rt->warm[i].url);
	}
	free(rt->warm);
	for (size_t i = 0; i < rt->n_agents; i++) {
		hostagent_remote_free(rt->agents[i].remote);
		free(rt->agents[i].url);
	}
	free(rt->agents);
	for (size_t i = 0; i < rt->n_clients; i++)
		http_client_free(rt->clients[i]);
	free(rt->clients);
	for (size_t i = 0; i < rt->n_placement; i++)
		free(rt->placement[i]);
	free(rt->placement);
	pthread_mutex_destroy(&rt->lock);
	pthread_mutex_destroy(&rt->stop_lock);
	pthread_cond_destroy(&rt->stop_cond);
	free(rt);
}
