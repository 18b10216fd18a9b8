/* The agent's registration in etcd: kindling/hosts/HOST under a lease,
 * re-put every second with the host's capacity, its warm sandboxes and a
 * Bloom summary of its L1 (placement/README.md has the value's shape).
 * etcd being down never stops the agent: the thread keeps trying, logs the
 * outage (rate-limited), and registers again by itself when etcd answers. */
#include "placement/hostagent/internal.h"

#include "common/etcd.h"
#include "placement/placement.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* A slot is the smallest sandbox Lambda allows: 128 MB. */
#define REG_SLOT_BYTES (128ull * 1024 * 1024)
#define REG_LOG_EVERY_S 60.0

struct hostagent_register {
	struct hostagent *a;
	struct etcd *etcd;
	char *key, *id, *url, *cell, *l1_dir;
	unsigned ttl_s, interval_ms, bloom_interval_ms;
	int64_t started;

	pthread_mutex_t lock; /* guards what follows */
	pthread_cond_t cond;  /* CLOCK_MONOTONIC */
	bool stop;
	char *l1;	   /* the encoded Bloom summary */
	uint64_t l1_bytes;
	double l1_at;	   /* now_seconds() of the last scan; < 0: never */
	int64_t lease;	   /* 0: none held */

	/* the register thread's own */
	bool failing;
	double logged_at;
	pthread_t thread;
	bool has_thread;
};

static bool host_id_ok(const char *s)
{
	size_t n = s ? strlen(s) : 0;
	if (n == 0 || n > 64)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') ||
		      s[i] == '-' || s[i] == '_' || s[i] == '.'))
			return false;
	return true;
}

/* Scan the L1 directory: every file named as a chunk goes into a Bloom
 * filter, and its size into the total.  Returns the encoded filter
 * (malloc'd) or NULL (errno). */
static char *scan_l1(const char *dir, uint64_t *bytes)
{
	struct placement_bloom b;
	*bytes = 0;
	if (placement_bloom_init(&b, 0, 0) < 0) {
		errno = ENOMEM;
		return NULL;
	}
	DIR *d = dir ? opendir(dir) : NULL;
	if (d) {
		struct dirent *de;
		while ((de = readdir(d))) {
			if (!is_sha256_hex(de->d_name) || placement_bloom_add(&b, de->d_name) < 0)
				continue;
			struct stat st;
			if (fstatat(dirfd(d), de->d_name, &st, 0) == 0)
				*bytes += (uint64_t)st.st_size;
		}
		closedir(d);
	} else if (dir && errno != ENOENT) {
		log_warn("registration: cannot read the L1 directory %s: %s (the host's L1 summary stays empty)", dir,
			 strerror(errno));
	}
	char *s = placement_bloom_encode(&b);
	placement_bloom_cleanup(&b);
	if (!s)
		errno = ENOMEM;
	return s;
}

/* Rescan L1 if the last scan is older than bloom_interval_ms. */
static void refresh_l1(struct hostagent_register *g, bool force)
{
	pthread_mutex_lock(&g->lock);
	bool due = force || g->l1_at < 0 || now_seconds() - g->l1_at >= g->bloom_interval_ms / 1000.0;
	pthread_mutex_unlock(&g->lock);
	if (!due)
		return;
	uint64_t bytes = 0;
	char *s = scan_l1(g->l1_dir, &bytes);
	if (!s)
		return;
	pthread_mutex_lock(&g->lock);
	free(g->l1);
	g->l1 = s;
	g->l1_bytes = bytes;
	g->l1_at = now_seconds();
	pthread_mutex_unlock(&g->lock);
}

char *hostagent_register_json(struct hostagent_register *g)
{
	struct hostagent_stats st;
	hostagent_get_stats(g->a, &st);
	struct hostagent_warm *w = NULL;
	size_t n = 0;
	if (hostagent_list_warm(g->a, &w, &n) < 0)
		return NULL;
	json_t *warm = json_array();
	for (size_t i = 0; warm && i < n; i++) {
		json_t *e = json_pack("{s:s,s:s,s:s,s:s,s:I,s:I,s:I}", "function", w[i].name, "version", w[i].version,
				      "revision", w[i].revision, "image", w[i].image, "idle", (json_int_t)w[i].idle,
				      "busy", (json_int_t)w[i].busy, "provisioned", (json_int_t)w[i].provisioned);
		if (!e || json_array_append_new(warm, e) < 0) {
			json_decref(warm);
			warm = NULL;
		}
	}
	hostagent_warm_free(w, n);
	/* Whether SnapStart snapshots can be taken and restored here, so
	 * frontends send them only to hosts that can. */
	char why[256];
	bool snap = hostagent_snapshot_supported(g->a, why, sizeof(why));
	pthread_mutex_lock(&g->lock);
	json_t *j = warm ? json_pack("{s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:o,s:s?,s:I,s:I,s:I}", "id", g->id, "url", g->url,
				     "cell", g->cell, "memory_total_mb", (json_int_t)(st.memory_budget >> 20),
				     "memory_used_mb", (json_int_t)(st.memory_in_use >> 20), "slots_total",
				     (json_int_t)(st.memory_budget / REG_SLOT_BYTES), "slots_used",
				     (json_int_t)st.sandboxes, "warm", warm, "l1", g->l1, "l1_bytes",
				     (json_int_t)g->l1_bytes, "started", (json_int_t)g->started, "updated",
				     (json_int_t)time(NULL))
			 : NULL;
	if (j && json_object_set_new(j, "isolation", json_string(hostagent_isolation(g->a))) == 0)
		json_object_set_new(j, "snapshot", json_boolean(snap));
	pthread_mutex_unlock(&g->lock);
	char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	return s;
}

/* Log a failure to register: the first of an outage, then once a minute. */
static void outage(struct hostagent_register *g, const char *what, int r)
{
	double now = now_seconds();
	if (g->failing && now - g->logged_at < REG_LOG_EVERY_S)
		return;
	log_warn("registration of host %s in etcd: %s: %s; the agent keeps serving and retries every %u ms%s", g->id,
		 what, strerror(-r), g->interval_ms, g->failing ? " (still failing)" : "");
	g->failing = true;
	g->logged_at = now;
}

/* One round: a lease if none, the key put, the lease kept alive. */
static void round_once(struct hostagent_register *g)
{
	pthread_mutex_lock(&g->lock);
	int64_t lease = g->lease;
	pthread_mutex_unlock(&g->lock);
	int r;
	if (!lease) {
		if ((r = etcd_lease_grant(g->etcd, g->ttl_s, &lease)) < 0) {
			outage(g, "cannot grant a lease", r);
			return;
		}
		pthread_mutex_lock(&g->lock);
		g->lease = lease;
		pthread_mutex_unlock(&g->lock);
	} else if ((r = etcd_lease_keepalive(g->etcd, lease, NULL)) < 0) {
		if (r == -ENOENT) { /* expired while etcd or this host was away: start again */
			pthread_mutex_lock(&g->lock);
			g->lease = 0;
			pthread_mutex_unlock(&g->lock);
			log_info("registration of host %s: the lease expired; registering again", g->id);
			round_once(g);
			return;
		}
		outage(g, "cannot keep the lease alive", r);
		return;
	}
	refresh_l1(g, false);
	char *v = hostagent_register_json(g);
	if (!v) {
		outage(g, "cannot build the registration", -ENOMEM);
		return;
	}
	r = etcd_put(g->etcd, g->key, v, strlen(v), lease, NULL);
	free(v);
	if (r == -ENOENT) {
		pthread_mutex_lock(&g->lock);
		g->lease = 0;
		pthread_mutex_unlock(&g->lock);
		return; /* the next round grants a new lease */
	}
	if (r < 0) {
		outage(g, "cannot put the key", r);
		return;
	}
	if (g->failing)
		log_info("registration of host %s in etcd: registered again", g->id);
	g->failing = false;
}

static void *register_main(void *arg)
{
	struct hostagent_register *g = arg;
	pthread_mutex_lock(&g->lock);
	while (!g->stop) {
		pthread_mutex_unlock(&g->lock);
		round_once(g);
		pthread_mutex_lock(&g->lock);
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		uint64_t ns = (uint64_t)ts.tv_nsec + (uint64_t)g->interval_ms * 1000000u;
		ts.tv_sec += (time_t)(ns / 1000000000u);
		ts.tv_nsec = (long)(ns % 1000000000u);
		while (!g->stop && pthread_cond_timedwait(&g->cond, &g->lock, &ts) == 0)
			;
	}
	pthread_mutex_unlock(&g->lock);
	return NULL;
}

static void register_free(struct hostagent_register *g)
{
	etcd_free(g->etcd);
	free(g->key);
	free(g->id);
	free(g->url);
	free(g->cell);
	free(g->l1_dir);
	free(g->l1);
	pthread_cond_destroy(&g->cond);
	pthread_mutex_destroy(&g->lock);
	free(g);
}

int hostagent_register_start(struct hostagent *a, const struct hostagent_register_config *cfg,
			     struct hostagent_register **out)
{
	const char *bad = !cfg->etcd_endpoints || !*cfg->etcd_endpoints ? "the etcd endpoints are missing"
			  : !host_id_ok(cfg->host_id) ? "the host id must be 1 to 64 letters, digits, '-', '_' or '.'"
			  : !cfg->url || strncmp(cfg->url, "http", 4) != 0 ? "the agent's URL must be http://HOST:PORT"
			  : cfg->cell && !host_id_ok(cfg->cell) ? "the cell must be 1 to 64 letters, digits, '-', '_' or '.'"
								 : NULL;
	if (bad) {
		log_err("registration in etcd: %s", bad);
		return -EINVAL;
	}
	struct hostagent_register *g = calloc(1, sizeof(*g));
	if (!g)
		return -ENOMEM;
	pthread_mutex_init(&g->lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&g->cond, &ca);
	pthread_condattr_destroy(&ca);
	g->a = a;
	g->ttl_s = cfg->ttl_s ? cfg->ttl_s : 5;
	g->interval_ms = cfg->interval_ms ? cfg->interval_ms : 1000;
	g->bloom_interval_ms = cfg->bloom_interval_ms ? cfg->bloom_interval_ms : 5000;
	g->started = (int64_t)time(NULL);
	g->l1_at = -1;
	g->key = xasprintf("kindling/hosts/%s", cfg->host_id);
	g->id = strdup(cfg->host_id);
	g->url = strdup(cfg->url);
	g->cell = strdup(cfg->cell ? cfg->cell : "cell-0");
	g->l1_dir = cfg->l1_dir ? strdup(cfg->l1_dir) : NULL;
	int r = 0;
	if (!g->key || !g->id || !g->url || !g->cell || (cfg->l1_dir && !g->l1_dir))
		r = -ENOMEM;
	struct etcd_config ec = { .endpoints = cfg->etcd_endpoints };
	if (r == 0)
		r = etcd_new(&ec, &g->etcd);
	if (r < 0) {
		register_free(g);
		return r;
	}
	refresh_l1(g, true);
	round_once(g);
	int e = pthread_create(&g->thread, NULL, register_main, g);
	if (e) {
		log_err("registration in etcd: cannot start its thread: %s", strerror(e));
		if (g->lease)
			etcd_lease_revoke(g->etcd, g->lease);
		register_free(g);
		return -e;
	}
	g->has_thread = true;
	*out = g;
	return 0;
}

void hostagent_register_stop(struct hostagent_register *g)
{
	if (!g)
		return;
	pthread_mutex_lock(&g->lock);
	g->stop = true;
	pthread_cond_broadcast(&g->cond);
	pthread_mutex_unlock(&g->lock);
	if (g->has_thread)
		pthread_join(g->thread, NULL);
	if (g->lease) {
		int r = etcd_lease_revoke(g->etcd, g->lease);
		if (r < 0 && r != -ENOENT)
			log_warn("registration of host %s: cannot revoke the lease (%s): the key goes when its %u s "
				 "TTL runs out",
				 g->id, strerror(-r), g->ttl_s);
	}
	register_free(g);
}
