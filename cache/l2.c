/* L2: the erasure-coded memcached fleet client (contract in internal.h).
 *
 * A chunk is split into k data and m parity fragments, each on its own
 * node, and is read back from the first k intact ones to arrive.  The
 * client, file by file:
 *
 *   l2_place.c   which node holds fragment i of a chunk (rendezvous hashing)
 *   l2_read.c    l2_get: k+m parallel gets on our own non-blocking
 *                connections, polled from the reading thread, the name hash
 *                run while the fragments arrive
 *   l2_pool.c    the per-node pool of read connections, and the drainer
 *                thread that takes the late replies off a read's hands
 *   l2_write.c   sets and deletes on libmemcached worker threads per node;
 *                the background thread that runs l2_put_async, repairs and
 *                re-checks
 *   l2_health.c  marking a node down, its backoff and probe
 *   l2_frag.c    the fragment format and the Reed-Solomon codec
 *   l2_reply.c   the parser of memcached's reply to a get
 *
 * Each file's top comment says why its part works as it does; the
 * structures they share, and which lock guards what, are in l2_internal.h.
 * This file creates and frees the client (the order in which its threads
 * stop matters: see l2_free), and holds l2_stats and l2_flush.
 *
 * Wire: the text protocol (memcached 1.6 deprecates the binary one), TCP_NODELAY,
 * every timeout from timeout_ms.
 */
#include "l2_internal.h"

#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int cond_init_mono(pthread_cond_t *cv)
{
	pthread_condattr_t a;
	int r = pthread_condattr_init(&a);
	if (r)
		return -r;
	pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	r = pthread_cond_init(cv, &a);
	pthread_condattr_destroy(&a);
	return -r;
}

static int parse_node(struct l2_node *nd, const char *spec)
{
	const char *colon = spec ? strrchr(spec, ':') : NULL;
	if (!colon || colon == spec || (size_t)(colon - spec) >= sizeof(nd->host) || strlen(spec) >= sizeof(nd->addr))
		return -EINVAL;
	char *end;
	errno = 0;
	unsigned long port = strtoul(colon + 1, &end, 10);
	if (errno || *end || end == colon + 1 || port == 0 || port > 65535)
		return -EINVAL;
	memcpy(nd->host, spec, (size_t)(colon - spec));
	nd->host[colon - spec] = '\0';
	nd->port = (unsigned)port;
	snprintf(nd->addr, sizeof(nd->addr), "%s", spec);
	nd->seed = l2_node_seed(spec);
	return 0;
}

/* Resolve a node's address once, so reads never wait on the resolver. */
static int node_resolve(struct l2_node *nd)
{
	char port[8];
	snprintf(port, sizeof(port), "%u", nd->port);
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
	int e = getaddrinfo(nd->host, port, &hints, &ai);
	if (e != 0 || !ai) {
		log_err("l2: cannot resolve memcached node %s: %s (check the node list)", nd->addr, gai_strerror(e));
		return -EINVAL;
	}
	memcpy(&nd->sa, ai->ai_addr, ai->ai_addrlen);
	nd->sa_len = ai->ai_addrlen;
	freeaddrinfo(ai);
	return 0;
}

int l2_new(const struct l2_config *cfg, struct l2 **out)
{
	*out = NULL;
	if (!cfg || (cfg->n_nodes && !cfg->nodes)) {
		log_err("l2: no configuration");
		return -EINVAL;
	}
	unsigned k = cfg->k ? cfg->k : 4, m = cfg->k ? cfg->m : 1;
	if (k > L2_MAX_K || m > L2_MAX_M || k + m > L2_MAX_FRAGS) {
		log_err("l2: %u+%u coding is out of range (k <= %u, m <= %u, k + m <= %u)", k, m, L2_MAX_K, L2_MAX_M,
			L2_MAX_FRAGS);
		return -EINVAL;
	}
	if (cfg->n_nodes < k + m) {
		log_err("l2: %u+%u coding needs at least %u memcached nodes, %zu configured", k, m, k + m, cfg->n_nodes);
		return -EINVAL;
	}
	const char *prefix = cfg->key_prefix ? cfg->key_prefix : "kc:";
	if (strlen(prefix) > L2_PREFIX_MAX) {
		log_err("l2: key prefix \"%s\" is longer than %u bytes", prefix, L2_PREFIX_MAX);
		return -EINVAL;
	}
	for (const char *p = prefix; *p; p++)
		if (*p <= ' ' || *p >= 0x7f) {
			log_err("l2: key prefix \"%s\" has a space or control character (not allowed in memcached keys)",
				prefix);
			return -EINVAL;
		}

	struct l2 *l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->drain_ep = l->drain_wake = -1;
	l->k = k;
	l->m = m;
	l->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : 200;
	l->down_backoff_ms = cfg->down_backoff_ms ? cfg->down_backoff_ms : 1000;
	if (l->down_backoff_ms > L2_BACKOFF_MAX_MS)
		l->down_backoff_ms = L2_BACKOFF_MAX_MS;
	snprintf(l->prefix, sizeof(l->prefix), "%s", prefix);
	pthread_mutex_init(&l->bg_mu, NULL);
	pthread_cond_init(&l->bg_cv, NULL);
	pthread_cond_init(&l->bg_idle, NULL);
	buf_pool_init(&l->scratch, (size_t)(m + 1) * l2_frag_len(CHUNK_SIZE, k), L2_SCRATCH_KEPT);
	int r = l2_codec_init(&l->codec, k, m);
	if (r < 0)
		goto fail;
	r = l2_drain_init(l);
	if (r < 0)
		goto fail;
	l->nodes = calloc(cfg->n_nodes, sizeof(*l->nodes));
	if (!l->nodes) {
		r = -ENOMEM;
		goto fail;
	}
	for (size_t i = 0; i < cfg->n_nodes; i++) {
		struct l2_node *nd = &l->nodes[i];
		nd->l = l;
		if (parse_node(nd, cfg->nodes[i]) < 0) {
			log_err("l2: node \"%s\" is not host:port", cfg->nodes[i] ? cfg->nodes[i] : "(null)");
			r = -EINVAL;
			goto fail;
		}
		for (size_t j = 0; j < i; j++)
			if (strcmp(l->nodes[j].addr, nd->addr) == 0) {
				log_err("l2: node %s is listed twice (fragments must be on distinct nodes)", nd->addr);
				r = -EINVAL;
				goto fail;
			}
		r = node_resolve(nd);
		if (r < 0)
			goto fail;
		pthread_mutex_init(&nd->mu, NULL);
		r = cond_init_mono(&nd->cv);
		if (r < 0)
			goto fail;
		l->n_nodes = i + 1; /* from here on l2_free tears this node down */
	}
	for (size_t i = 0; i < l->n_nodes; i++)
		for (unsigned w = 0; w < L2_WORKERS_PER_NODE; w++) {
			struct l2_worker *wk = &l->nodes[i].workers[w];
			wk->node = &l->nodes[i];
			wk->idx = w;
			r = -pthread_create(&wk->thread, NULL, l2_node_worker, wk);
			if (r < 0) {
				log_err("l2: cannot start a worker thread: %s", strerror(-r));
				goto fail;
			}
			wk->started = true;
		}
	r = -pthread_create(&l->bg_thread, NULL, l2_bg_main, l);
	if (r < 0) {
		log_err("l2: cannot start the background thread: %s", strerror(-r));
		goto fail;
	}
	l->bg_started = true;
	r = -pthread_create(&l->drain_thread, NULL, l2_drain_main, l);
	if (r < 0) {
		log_err("l2: cannot start the drainer thread: %s", strerror(-r));
		goto fail;
	}
	l->drain_started = true;
	*out = l;
	return 0;
fail:
	l2_free(l);
	return r;
}

void l2_free(struct l2 *l)
{
	if (!l)
		return;
	/* The background thread first: its current job still needs the nodes. */
	pthread_mutex_lock(&l->bg_mu);
	l->bg_stop = true;
	pthread_cond_broadcast(&l->bg_cv);
	pthread_mutex_unlock(&l->bg_mu);
	if (l->bg_started)
		pthread_join(l->bg_thread, NULL);
	/* Then the drainer, and the late replies it still holds. */
	l2_drain_stop(l);
	for (size_t i = 0; i < l->n_nodes; i++) {
		struct l2_node *nd = &l->nodes[i];
		pthread_mutex_lock(&nd->mu);
		nd->stop = true;
		pthread_cond_broadcast(&nd->cv);
		pthread_mutex_unlock(&nd->mu);
	}
	for (size_t i = 0; i < l->n_nodes; i++)
		for (unsigned w = 0; w < L2_WORKERS_PER_NODE; w++)
			if (l->nodes[i].workers[w].started)
				pthread_join(l->nodes[i].workers[w].thread, NULL);
	for (size_t i = 0; i < l->n_nodes; i++) {
		l2_conn_drop_idle_locked(&l->nodes[i]); /* every thread is gone */
		pthread_mutex_destroy(&l->nodes[i].mu);
		pthread_cond_destroy(&l->nodes[i].cv);
	}
	free(l->nodes);
	free(l->bg_buf);
	buf_pool_cleanup(&l->scratch);
	pthread_mutex_destroy(&l->drain_mu);
	pthread_cond_destroy(&l->drain_empty);
	l2_codec_cleanup(&l->codec);
	pthread_mutex_destroy(&l->bg_mu);
	pthread_cond_destroy(&l->bg_cv);
	pthread_cond_destroy(&l->bg_idle);
	free(l);
}

int l2_stats(struct l2 *l, struct l2_stats *out)
{
	memset(out, 0, sizeof(*out));
	out->nodes = calloc(l->n_nodes, sizeof(*out->nodes));
	if (!out->nodes)
		return -ENOMEM;
	out->n_nodes = l->n_nodes;
	for (size_t i = 0; i < l->n_nodes; i++) {
		struct l2_node *nd = &l->nodes[i];
		pthread_mutex_lock(&nd->mu);
		out->nodes[i] = nd->st;
		out->nodes[i].up = !nd->down;
		pthread_mutex_unlock(&nd->mu);
		snprintf(out->nodes[i].addr, sizeof(out->nodes[i].addr), "%s", nd->addr);
	}
#define LOAD(f) out->f = __atomic_load_n(&l->f, __ATOMIC_RELAXED)
	LOAD(gets);
	LOAD(hits);
	LOAD(misses);
	LOAD(decodes);
	LOAD(repairs_queued);
	LOAD(repairs_done);
	LOAD(puts);
	LOAD(bg_dropped);
	LOAD(crc_rereads);
#undef LOAD
	return 0;
}

void l2_flush(struct l2 *l)
{
	if (!l)
		return;
	/* The drainer's late replies first: they may queue re-checks. */
	pthread_mutex_lock(&l->drain_mu);
	while (l->n_drains > 0 && !l->drain_stop)
		pthread_cond_wait(&l->drain_empty, &l->drain_mu);
	pthread_mutex_unlock(&l->drain_mu);
	pthread_mutex_lock(&l->bg_mu);
	while ((l->bg_len > 0 || l->bg_active) && !l->bg_stop)
		pthread_cond_wait(&l->bg_idle, &l->bg_mu);
	pthread_mutex_unlock(&l->bg_mu);
}
