/* L2: the erasure-coded memcached fleet client (contract in internal.h).
 *
 * Placement.  Fragment i of chunk N goes to the node ranked i-th by
 * rendezvous (highest random weight) hashing of N over all configured nodes,
 * so the k+m fragments are on distinct nodes and adding or removing a node
 * moves only the fragments it wins or held.  Down nodes keep their rank (the
 * placement never depends on health); their fragments are simply not asked.
 *
 * Parallel reads.  Every node has a small pool of persistent worker threads
 * (L2_WORKERS_PER_NODE), each with its own memcached_st, serving the node's
 * request queues (a high-priority queue for reads, a low one for background
 * writes and repairs).  l2_get queues one request per node and sleeps on a
 * condition variable until k intact fragments are in (or every node has
 * answered); a slow node therefore costs nothing once k have arrived, and its
 * late reply only feeds repair.  Threads rather than one epoll loop because
 * libmemcached's calls are blocking per memcached_st and it exposes no
 * readiness API to multiplex many servers' replies without reimplementing its
 * protocol; a pool per node keeps one node's requests concurrent, and a slow
 * or dead node only ties up its own workers.  A read request still queued
 * when its read has already finished is dropped unsent, and a node whose read
 * queue is full (L2_NODE_QUEUE_MAX) is not asked, so a slow node never builds
 * an unbounded backlog.
 *
 * Read contexts are reference counted (the reader plus one per request in
 * flight), so late replies land in memory that is still valid; the last
 * reference decides on repair: if the chunk was rebuilt and some node said
 * "not found" or sent a fragment that failed its check, the context (with
 * the k fragments it holds) goes to the background thread, which rebuilds the
 * chunk, checks it against its name (SHA-256, so garbage is never spread),
 * re-encodes it and rewrites only the bad fragments.  The background thread
 * has a bounded queue (L2_BG_QUEUE_MAX), shared with l2_put_async and
 * l2_report_bad; when it is full work is dropped and counted, never waited for.
 *
 * Health.  A connection error or timeout (memcached_fatal) marks a node down
 * for down_backoff_ms; worker 0 of that node probes it (a get of a key that is
 * never stored) when the backoff expires, and each failed probe doubles the
 * backoff up to 30 s.  Requests to a down node fail at once without touching
 * the network; nothing is ever retried in a loop.
 *
 * Wire: libmemcached, text protocol (memcached 1.6 deprecates the binary
 * one), non-blocking I/O with TCP_NODELAY and every timeout from timeout_ms.
 */
#include "internal.h"

#include <errno.h>
#include <libmemcached/memcached.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define L2_WORKERS_PER_NODE 4	/* concurrent requests per node */
#define L2_NODE_QUEUE_MAX 64	/* queued reads per node before it is skipped */
#define L2_BG_QUEUE_MAX 256	/* background jobs (writes, repairs, deletes) */
#define L2_BACKOFF_MAX_MS 30000u
#define L2_KEY_MAX 160
#define L2_PREFIX_MAX 64
#define L2_PROBE_KEY "l2-probe.never-stored"

enum req_op { REQ_GET, REQ_SET, REQ_DELETE };

/* What a read learnt about one fragment. */
enum frag_state { FS_UNASKED = 0, FS_PENDING, FS_INTACT, FS_MISSING, FS_CORRUPT, FS_ERROR };

struct l2_getctx;

/* Completion of a group of writes or deletes; lives on the waiter's stack. */
struct l2_batch {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	unsigned pending, ok;
};

struct l2_req {
	struct l2_req *next;
	enum req_op op;
	unsigned index; /* fragment index */
	char key[L2_KEY_MAX];
	size_t key_len;
	struct l2_getctx *g;			/* REQ_GET */
	const uint8_t *val;			/* REQ_SET, owned by the batch's waiter */
	size_t val_len;
	struct l2_batch *b;			/* REQ_SET, REQ_DELETE */
};

struct l2_getctx {
	struct l2 *l;
	pthread_mutex_t mu;
	pthread_cond_t cv; /* CLOCK_MONOTONIC */
	unsigned refs, asked, answered;
	bool done;	  /* the reader stopped waiting; the set is frozen */
	bool decoded_ok;  /* the reader rebuilt the chunk */
	char name[CHUNK_NAME_HEX_LEN + 1];
	struct l2_frag_set set;
	char *vals[L2_MAX_FRAGS]; /* memcached values backing set.data */
	uint8_t state[L2_MAX_FRAGS];
	struct l2_req reqs[L2_MAX_FRAGS];
};

struct l2_node;
struct l2_worker {
	struct l2_node *node;
	unsigned idx;
	pthread_t thread;
	bool started;
};

struct l2_node {
	struct l2 *l;
	char addr[64], host[64];
	unsigned port;
	uint64_t seed; /* rendezvous hash of addr */
	pthread_mutex_t mu;
	pthread_cond_t cv; /* CLOCK_MONOTONIC */
	struct l2_req *hi_head, *hi_tail, *lo_head, *lo_tail;
	unsigned hi_len;
	bool stop;
	/* health */
	bool down, probing;
	unsigned gen; /* bumped when the node goes down: workers drop their old connections */
	unsigned backoff_ms;
	double retry_at;
	/* counters (addr and up are filled in by l2_stats) */
	struct l2_node_stats st;
	struct l2_worker workers[L2_WORKERS_PER_NODE];
};

enum bg_type { BG_PUT, BG_REPAIR, BG_DELETE };

struct bg_job {
	struct bg_job *next;
	enum bg_type type;
	char name[CHUNK_NAME_HEX_LEN + 1];
	uint8_t *buf; /* BG_PUT, owned */
	size_t len;
	struct l2_getctx *g; /* BG_REPAIR, owned */
};

struct l2 {
	unsigned k, m, timeout_ms, down_backoff_ms;
	char prefix[L2_PREFIX_MAX + 1];
	struct l2_codec codec;
	size_t n_nodes;
	struct l2_node *nodes;

	pthread_mutex_t bg_mu;
	pthread_cond_t bg_cv, bg_idle;
	struct bg_job *bg_head, *bg_tail;
	unsigned bg_len, bg_active, gets_inflight;
	bool bg_stop, bg_started;
	pthread_t bg_thread;
	uint8_t *bg_scratch; /* CHUNK_SIZE, the background thread's */

	/* global counters, atomics */
	uint64_t gets, hits, misses, decodes, repairs_queued, repairs_done, puts, bg_dropped;
};

/* Bit i set for every fragment index of a k+m code. */
#define ALL_FRAGS(l) ((l)->k + (l)->m >= 32 ? 0xffffffffu : (1u << ((l)->k + (l)->m)) - 1)

#define COUNT(l, field) __atomic_fetch_add(&(l)->field, 1, __ATOMIC_RELAXED)

/* ---- small helpers -------------------------------------------------------- */

static void deadline_in(double secs, struct timespec *ts)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	double s = (double)ts->tv_sec + (double)ts->tv_nsec / 1e9 + secs;
	ts->tv_sec = (time_t)s;
	ts->tv_nsec = (long)((s - (double)ts->tv_sec) * 1e9);
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

static double mono_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

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

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	x ^= x >> 31;
	return x;
}

static uint64_t fnv1a64(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (; *s; s++) {
		h ^= (uint8_t)*s;
		h *= 0x100000001b3ull;
	}
	return h;
}

/* The k+m nodes of |name|, best first (rendezvous hashing). */
static void rank_nodes(const struct l2 *l, const char *name, unsigned *order)
{
	uint64_t hn = mix64(fnv1a64(name));
	unsigned n = l->k + l->m;
	uint64_t best[L2_MAX_FRAGS];
	unsigned cnt = 0;
	for (size_t i = 0; i < l->n_nodes; i++) {
		uint64_t w = mix64(hn ^ l->nodes[i].seed);
		/* insertion into the top-n list, ties by node order */
		unsigned pos = cnt;
		while (pos > 0 && best[pos - 1] < w)
			pos--;
		if (pos >= n)
			continue;
		unsigned last = cnt < n ? cnt : n - 1;
		for (unsigned j = last; j > pos; j--) {
			best[j] = best[j - 1];
			order[j] = order[j - 1];
		}
		best[pos] = w;
		order[pos] = (unsigned)i;
		if (cnt < n)
			cnt++;
	}
}

static int make_key(const struct l2 *l, const char *name, unsigned index, char *key, size_t cap, size_t *out_len)
{
	int n = snprintf(key, cap, "%s%s.%u", l->prefix, name, index);
	if (n < 0 || (size_t)n >= cap)
		return -ENAMETOOLONG;
	if (out_len)
		*out_len = (size_t)n;
	return 0;
}

/* ---- node health ------------------------------------------------------------ */

static void node_latency(struct l2_node *nd, double ms)
{
	/* caller holds nd->mu */
	if (nd->st.latency_ewma_ms == 0)
		nd->st.latency_ewma_ms = ms;
	else
		nd->st.latency_ewma_ms = 0.8 * nd->st.latency_ewma_ms + 0.2 * ms;
}

/* Account a failed request; a connection-level failure marks the node down. */
static void node_failed(struct l2_node *nd, memcached_st *mc, memcached_return_t rc, const char *what)
{
	bool fatal = memcached_fatal(rc);
	pthread_mutex_lock(&nd->mu);
	if (rc == MEMCACHED_TIMEOUT)
		nd->st.timeouts++;
	else
		nd->st.errors++;
	bool newly_down = false;
	if (fatal && !nd->down) {
		nd->down = true;
		nd->gen++;
		newly_down = true;
		nd->backoff_ms = nd->l->down_backoff_ms;
		nd->retry_at = mono_now() + nd->backoff_ms / 1000.0;
		pthread_cond_broadcast(&nd->cv); /* worker 0 schedules the probe */
	}
	unsigned backoff = nd->backoff_ms;
	pthread_mutex_unlock(&nd->mu);
	if (newly_down)
		log_warn("l2: %s on %s failed: %s; node marked down, probing again in %u ms (is memcached running on %s?)",
			 what, nd->addr, memcached_last_error_message(mc), backoff, nd->addr);
	else if (!fatal)
		log_warn("l2: %s on %s failed: %s (is memcached on %s started with -I 2m and enough memory?)", what,
			 nd->addr, memcached_last_error_message(mc), nd->addr);
}

/* Worker 0 of a down node: one probe when the backoff has expired. */
static void node_probe(struct l2_node *nd, memcached_st *mc)
{
	size_t vlen;
	uint32_t flags;
	memcached_return_t rc;
	char key[L2_KEY_MAX];
	snprintf(key, sizeof(key), "%s%s", nd->l->prefix, L2_PROBE_KEY);
	char *v = memcached_get(mc, key, strlen(key), &vlen, &flags, &rc);
	free(v);
	bool ok = rc == MEMCACHED_SUCCESS || rc == MEMCACHED_NOTFOUND;
	pthread_mutex_lock(&nd->mu);
	nd->probing = false;
	if (ok) {
		nd->down = false;
		nd->backoff_ms = 0;
	} else {
		nd->backoff_ms = nd->backoff_ms * 2 > L2_BACKOFF_MAX_MS ? L2_BACKOFF_MAX_MS : nd->backoff_ms * 2;
		nd->retry_at = mono_now() + nd->backoff_ms / 1000.0;
	}
	unsigned backoff = nd->backoff_ms;
	pthread_mutex_unlock(&nd->mu);
	if (ok)
		log_info("l2: node %s answers again, marked up", nd->addr);
	else
		log_debug("l2: probe of %s failed (%s); next probe in %u ms", nd->addr, memcached_strerror(mc, rc),
			  backoff);
}

/* ---- read contexts ---------------------------------------------------------- */

static void bg_enqueue_repair(struct l2 *l, struct l2_getctx *g);

static void getctx_free(struct l2_getctx *g)
{
	for (unsigned i = 0; i < L2_MAX_FRAGS; i++)
		free(g->vals[i]);
	pthread_mutex_destroy(&g->mu);
	pthread_cond_destroy(&g->cv);
	free(g);
}

static void getctx_release(struct l2_getctx *g)
{
	pthread_mutex_lock(&g->mu);
	bool last = --g->refs == 0;
	pthread_mutex_unlock(&g->mu);
	if (!last)
		return;
	struct l2 *l = g->l;
	bool repair = false;
	if (g->decoded_ok)
		for (unsigned i = 0; i < l->k + l->m; i++)
			if (g->state[i] == FS_MISSING || g->state[i] == FS_CORRUPT)
				repair = true;
	if (repair)
		bg_enqueue_repair(l, g); /* takes g */
	else
		getctx_free(g);
	pthread_mutex_lock(&l->bg_mu);
	l->gets_inflight--;
	pthread_cond_broadcast(&l->bg_idle);
	pthread_mutex_unlock(&l->bg_mu);
}

/* A worker's answer for fragment |index|: |val| (malloc'd, taken) on a hit.
 * Returns the state recorded (a fragment that passes its own check but
 * disagrees with the others counts as corrupt). */
static enum frag_state getctx_answer(struct l2_getctx *g, unsigned index, enum frag_state st, char *val,
				     const struct l2_fragment_view *v)
{
	pthread_mutex_lock(&g->mu);
	g->answered++;
	if (st == FS_INTACT && !g->done) {
		if (l2_frag_set_add(&g->set, v) == 0) {
			g->vals[index] = val;
			val = NULL;
		} else {
			st = FS_CORRUPT;
		}
	}
	g->state[index] = (uint8_t)st;
	/* Wake the reader only when it can go on (k fragments in, or every
	 * node answered), not once per fragment. */
	if (g->set.n >= g->l->k || g->answered >= g->asked)
		pthread_cond_signal(&g->cv);
	pthread_mutex_unlock(&g->mu);
	free(val);
	return st;
}

/* ---- workers ------------------------------------------------------------------ */

static memcached_st *worker_mc(struct l2_node *nd)
{
	struct l2 *l = nd->l;
	memcached_st *mc = memcached_create(NULL);
	if (!mc)
		return NULL;
	if (memcached_failed(memcached_server_add(mc, nd->host, (in_port_t)nd->port))) {
		memcached_free(mc);
		return NULL;
	}
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_TCP_NODELAY, 1);
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_NO_BLOCK, 1);
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_POLL_TIMEOUT, l->timeout_ms);
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_CONNECT_TIMEOUT, l->timeout_ms);
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_RCV_TIMEOUT, (uint64_t)l->timeout_ms * 1000);
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_SND_TIMEOUT, (uint64_t)l->timeout_ms * 1000);
	/* Our own health tracking decides when to try a node again. */
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_RETRY_TIMEOUT, 0);
	return mc;
}

static void batch_done(struct l2_batch *b, bool ok)
{
	pthread_mutex_lock(&b->mu);
	b->pending--;
	if (ok)
		b->ok++;
	pthread_cond_broadcast(&b->cv);
	pthread_mutex_unlock(&b->mu);
}

/* Run |r| on |mc|, or fail it without I/O if |skip| (node down, stopping). */
static void run_req(struct l2_node *nd, memcached_st *mc, struct l2_req *r, bool skip)
{
	struct l2 *l = nd->l;
	memcached_return_t rc;
	double t0;

	if (r->op == REQ_GET) {
		struct l2_getctx *g = r->g;
		pthread_mutex_lock(&g->mu);
		bool late = g->done;
		pthread_mutex_unlock(&g->mu);
		if (skip || late || !mc) {
			getctx_answer(g, r->index, skip || !mc ? FS_ERROR : FS_UNASKED, NULL, NULL);
			getctx_release(g);
			return;
		}
		size_t vlen = 0;
		uint32_t flags;
		t0 = mono_now();
		char *v = memcached_get(mc, r->key, r->key_len, &vlen, &flags, &rc);
		double ms = (mono_now() - t0) * 1000;
		if (rc == MEMCACHED_SUCCESS && v) {
			struct l2_fragment_view fv;
			bool good = l2_fragment_parse((const uint8_t *)v, vlen, g->name, l->k, l->m, &fv) == 0 &&
				    fv.index == r->index;
			enum frag_state st = getctx_answer(g, r->index, good ? FS_INTACT : FS_CORRUPT, v, &fv);
			pthread_mutex_lock(&nd->mu);
			nd->st.gets++;
			nd->st.hits++;
			nd->st.bytes_read += vlen;
			if (st == FS_CORRUPT)
				nd->st.corrupt++;
			node_latency(nd, ms);
			pthread_mutex_unlock(&nd->mu);
			if (st == FS_CORRUPT)
				log_warn("l2: fragment %s from %s is corrupt (%zu bytes); it will be rewritten", r->key,
					 nd->addr, vlen);
		} else {
			free(v);
			if (rc == MEMCACHED_SUCCESS) { /* an empty value */
				getctx_answer(g, r->index, FS_CORRUPT, NULL, NULL);
				pthread_mutex_lock(&nd->mu);
				nd->st.gets++;
				nd->st.hits++;
				nd->st.corrupt++;
				node_latency(nd, ms);
				pthread_mutex_unlock(&nd->mu);
			} else if (rc == MEMCACHED_NOTFOUND) {
				getctx_answer(g, r->index, FS_MISSING, NULL, NULL);
				pthread_mutex_lock(&nd->mu);
				nd->st.gets++;
				nd->st.misses++;
				node_latency(nd, ms);
				pthread_mutex_unlock(&nd->mu);
			} else {
				getctx_answer(g, r->index, FS_ERROR, NULL, NULL);
				pthread_mutex_lock(&nd->mu);
				nd->st.gets++;
				pthread_mutex_unlock(&nd->mu);
				node_failed(nd, mc, rc, "get");
			}
		}
		getctx_release(g);
		return;
	}

	bool ok = false;
	if (!skip && mc) {
		if (r->op == REQ_SET) {
			rc = memcached_set(mc, r->key, r->key_len, (const char *)r->val, r->val_len, 0, 0);
			ok = memcached_success(rc);
		} else {
			rc = memcached_delete(mc, r->key, r->key_len, 0);
			ok = memcached_success(rc) || rc == MEMCACHED_NOTFOUND;
		}
		if (ok) {
			pthread_mutex_lock(&nd->mu);
			if (r->op == REQ_SET)
				nd->st.bytes_written += r->val_len;
			pthread_mutex_unlock(&nd->mu);
		} else {
			node_failed(nd, mc, rc, r->op == REQ_SET ? "set" : "delete");
		}
	}
	batch_done(r->b, ok);
}

static struct l2_req *pop_req(struct l2_node *nd)
{
	struct l2_req *r = nd->hi_head;
	if (r) {
		nd->hi_head = r->next;
		if (!nd->hi_head)
			nd->hi_tail = NULL;
		nd->hi_len--;
		return r;
	}
	r = nd->lo_head;
	if (r) {
		nd->lo_head = r->next;
		if (!nd->lo_head)
			nd->lo_tail = NULL;
	}
	return r;
}

static void *node_worker(void *arg)
{
	struct l2_worker *w = arg;
	struct l2_node *nd = w->node;
	memcached_st *mc = worker_mc(nd);
	if (!mc)
		log_err("l2: cannot set up a libmemcached handle for %s: out of memory", nd->addr);

	unsigned gen = 0;
	pthread_mutex_lock(&nd->mu);
	for (;;) {
		struct l2_req *r = pop_req(nd);
		if (r) {
			bool skip = nd->down || nd->stop;
			bool stale = gen != nd->gen;
			gen = nd->gen;
			pthread_mutex_unlock(&nd->mu);
			if (stale && mc)
				memcached_quit(mc); /* its socket may be from before the node failed */
			run_req(nd, mc, r, skip);
			pthread_mutex_lock(&nd->mu);
			continue;
		}
		if (nd->stop)
			break;
		if (w->idx == 0 && nd->down && !nd->probing && mc) {
			if (mono_now() >= nd->retry_at) {
				nd->probing = true;
				gen = nd->gen;
				pthread_mutex_unlock(&nd->mu);
				memcached_quit(mc);
				node_probe(nd, mc);
				pthread_mutex_lock(&nd->mu);
				continue;
			}
			struct timespec ts;
			deadline_in(nd->retry_at - mono_now(), &ts);
			pthread_cond_timedwait(&nd->cv, &nd->mu, &ts);
			continue;
		}
		pthread_cond_wait(&nd->cv, &nd->mu);
	}
	pthread_mutex_unlock(&nd->mu);
	if (mc)
		memcached_free(mc);
	return NULL;
}

/* Queue |r| on |nd|; a stopped node fails it at once. */
static void node_submit(struct l2_node *nd, struct l2_req *r, bool high)
{
	r->next = NULL;
	pthread_mutex_lock(&nd->mu);
	if (nd->stop) {
		pthread_mutex_unlock(&nd->mu);
		run_req(nd, NULL, r, true);
		return;
	}
	if (high) {
		if (nd->hi_tail)
			nd->hi_tail->next = r;
		else
			nd->hi_head = r;
		nd->hi_tail = r;
		nd->hi_len++;
	} else {
		if (nd->lo_tail)
			nd->lo_tail->next = r;
		else
			nd->lo_head = r;
		nd->lo_tail = r;
	}
	pthread_cond_signal(&nd->cv);
	pthread_mutex_unlock(&nd->mu);
}

/* ---- writes ------------------------------------------------------------------ */

/* Encode |<buf, len>| and write the fragments whose bit is set in |mask| to
 * their nodes (skipping down ones), waiting for every write.  Sets
 * |*out_stored| to the fragments written.  Returns 0 or -errno. */
static int l2_store(struct l2 *l, const char *name, const uint8_t *buf, size_t len, uint32_t mask,
		    unsigned *out_stored)
{
	unsigned n = l->k + l->m, order[L2_MAX_FRAGS];
	*out_stored = 0;
	size_t fl = l2_frag_len(len, l->k), stride = L2_FRAG_HDR_LEN + fl, total;
	if (!ck_mul_size(stride, n, &total))
		return -EINVAL;
	uint8_t *vals = malloc(total);
	struct l2_req *reqs = calloc(n, sizeof(*reqs));
	if (!vals || !reqs) {
		free(vals);
		free(reqs);
		return -ENOMEM;
	}
	int r = l2_codec_encode(&l->codec, name, buf, len, vals);
	if (r < 0)
		goto out;
	rank_nodes(l, name, order);
	struct l2_batch b = {.pending = 0, .ok = 0};
	pthread_mutex_init(&b.mu, NULL);
	pthread_cond_init(&b.cv, NULL);
	bool want[L2_MAX_FRAGS] = {false};
	for (unsigned i = 0; i < n; i++) {
		if (!(mask & (1u << i)))
			continue;
		struct l2_node *nd = &l->nodes[order[i]];
		pthread_mutex_lock(&nd->mu);
		want[i] = !nd->down;
		pthread_mutex_unlock(&nd->mu);
		if (want[i])
			b.pending++;
	}
	for (unsigned i = 0; i < n; i++) {
		if (!want[i])
			continue;
		reqs[i].op = REQ_SET;
		reqs[i].index = i;
		make_key(l, name, i, reqs[i].key, sizeof(reqs[i].key), &reqs[i].key_len);
		reqs[i].val = vals + (size_t)i * stride;
		reqs[i].val_len = stride;
		reqs[i].b = &b;
		node_submit(&l->nodes[order[i]], &reqs[i], false);
	}
	pthread_mutex_lock(&b.mu);
	while (b.pending > 0)
		pthread_cond_wait(&b.cv, &b.mu);
	*out_stored = b.ok;
	pthread_mutex_unlock(&b.mu);
	pthread_mutex_destroy(&b.mu);
	pthread_cond_destroy(&b.cv);
out:
	free(reqs);
	free(vals);
	return r;
}

static void l2_delete_all(struct l2 *l, const char *name)
{
	unsigned n = l->k + l->m, order[L2_MAX_FRAGS];
	struct l2_req reqs[L2_MAX_FRAGS];
	struct l2_batch b = {.pending = n, .ok = 0};
	pthread_mutex_init(&b.mu, NULL);
	pthread_cond_init(&b.cv, NULL);
	rank_nodes(l, name, order);
	memset(reqs, 0, sizeof(reqs));
	for (unsigned i = 0; i < n; i++) {
		reqs[i].op = REQ_DELETE;
		reqs[i].index = i;
		make_key(l, name, i, reqs[i].key, sizeof(reqs[i].key), &reqs[i].key_len);
		reqs[i].b = &b;
		node_submit(&l->nodes[order[i]], &reqs[i], false);
	}
	pthread_mutex_lock(&b.mu);
	while (b.pending > 0)
		pthread_cond_wait(&b.cv, &b.mu);
	pthread_mutex_unlock(&b.mu);
	pthread_mutex_destroy(&b.mu);
	pthread_cond_destroy(&b.cv);
}

/* ---- the background thread ------------------------------------------------- */

static bool bg_enqueue(struct l2 *l, struct bg_job *j)
{
	pthread_mutex_lock(&l->bg_mu);
	if (l->bg_stop || l->bg_len >= L2_BG_QUEUE_MAX) {
		bool stopping = l->bg_stop;
		pthread_mutex_unlock(&l->bg_mu);
		if (!stopping) {
			COUNT(l, bg_dropped);
			log_debug("l2: background queue full, dropping %s", j->name);
		}
		return false;
	}
	j->next = NULL;
	if (l->bg_tail)
		l->bg_tail->next = j;
	else
		l->bg_head = j;
	l->bg_tail = j;
	l->bg_len++;
	pthread_cond_signal(&l->bg_cv);
	pthread_mutex_unlock(&l->bg_mu);
	return true;
}

static void bg_job_free(struct bg_job *j)
{
	if (j->g)
		getctx_free(j->g);
	free(j->buf);
	free(j);
}

static void bg_enqueue_repair(struct l2 *l, struct l2_getctx *g)
{
	struct bg_job *j = calloc(1, sizeof(*j));
	if (!j) {
		getctx_free(g);
		return;
	}
	j->type = BG_REPAIR;
	memcpy(j->name, g->name, sizeof(j->name));
	j->g = g;
	if (bg_enqueue(l, j))
		COUNT(l, repairs_queued);
	else
		bg_job_free(j);
}

static void bg_repair(struct l2 *l, struct l2_getctx *g)
{
	size_t len;
	bool decoded;
	int r = l2_frag_set_decode(&l->codec, &g->set, l->bg_scratch, CHUNK_SIZE, &len, &decoded);
	if (r < 0) {
		log_warn("l2: repair of %s: cannot rebuild the chunk: %s", g->name, strerror(-r));
		return;
	}
	/* Only a chunk that matches its name is spread again. */
	uint8_t digest[SHA256_LEN];
	char hex[SHA256_HEX_LEN + 1];
	sha256_buf(l->bg_scratch, len, digest);
	hex_encode(digest, SHA256_LEN, hex);
	if (strcmp(hex, g->name) != 0) {
		log_warn("l2: repair of %s: the fragments rebuild a chunk that does not match its name; not rewritten",
			 g->name);
		return;
	}
	uint32_t mask = 0;
	unsigned want = 0, stored;
	for (unsigned i = 0; i < l->k + l->m; i++)
		if (g->state[i] == FS_MISSING || g->state[i] == FS_CORRUPT) {
			mask |= 1u << i;
			want++;
		}
	r = l2_store(l, g->name, l->bg_scratch, len, mask, &stored);
	if (r == 0 && stored == want)
		COUNT(l, repairs_done);
	else
		log_debug("l2: repair of %s: %u of %u fragments rewritten", g->name, stored, want);
}

static void *bg_main(void *arg)
{
	struct l2 *l = arg;
	pthread_mutex_lock(&l->bg_mu);
	for (;;) {
		struct bg_job *j = l->bg_head;
		if (l->bg_stop)
			break;
		if (!j) {
			pthread_cond_wait(&l->bg_cv, &l->bg_mu);
			continue;
		}
		l->bg_head = j->next;
		if (!l->bg_head)
			l->bg_tail = NULL;
		l->bg_len--;
		l->bg_active = 1;
		pthread_mutex_unlock(&l->bg_mu);

		unsigned stored;
		switch (j->type) {
		case BG_PUT:
			if (l2_store(l, j->name, j->buf, j->len, ALL_FRAGS(l), &stored) == 0 &&
			    stored >= l->k)
				COUNT(l, puts);
			break;
		case BG_REPAIR:
			bg_repair(l, j->g);
			break;
		case BG_DELETE:
			l2_delete_all(l, j->name);
			break;
		}
		bg_job_free(j);

		pthread_mutex_lock(&l->bg_mu);
		l->bg_active = 0;
		pthread_cond_broadcast(&l->bg_idle);
	}
	/* Stopping: what is still queued is dropped. */
	struct bg_job *j = l->bg_head;
	l->bg_head = l->bg_tail = NULL;
	l->bg_len = 0;
	pthread_cond_broadcast(&l->bg_idle);
	pthread_mutex_unlock(&l->bg_mu);
	while (j) {
		struct bg_job *next = j->next;
		bg_job_free(j);
		j = next;
	}
	return NULL;
}

/* ---- public API ---------------------------------------------------------------- */

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
	nd->seed = mix64(fnv1a64(spec) ^ 0x6b696e646c696e67ull);
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
	int r = l2_codec_init(&l->codec, k, m);
	if (r < 0)
		goto fail;
	l->bg_scratch = malloc(CHUNK_SIZE);
	l->nodes = calloc(cfg->n_nodes, sizeof(*l->nodes));
	if (!l->bg_scratch || !l->nodes) {
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
			r = -pthread_create(&wk->thread, NULL, node_worker, wk);
			if (r < 0) {
				log_err("l2: cannot start a worker thread: %s", strerror(-r));
				goto fail;
			}
			wk->started = true;
		}
	r = -pthread_create(&l->bg_thread, NULL, bg_main, l);
	if (r < 0) {
		log_err("l2: cannot start the background thread: %s", strerror(-r));
		goto fail;
	}
	l->bg_started = true;
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
		pthread_mutex_destroy(&l->nodes[i].mu);
		pthread_cond_destroy(&l->nodes[i].cv);
	}
	free(l->nodes);
	free(l->bg_scratch);
	l2_codec_cleanup(&l->codec);
	pthread_mutex_destroy(&l->bg_mu);
	pthread_cond_destroy(&l->bg_cv);
	pthread_cond_destroy(&l->bg_idle);
	free(l);
}

int l2_get(struct l2 *l, const char *name, uint8_t *out, size_t *out_len)
{
	if (!l || !name || !is_sha256_hex(name) || !out || !out_len)
		return -EINVAL;
	COUNT(l, gets);
	unsigned n = l->k + l->m, order[L2_MAX_FRAGS];
	rank_nodes(l, name, order);

	/* Decide whom to ask first, so the reference count is final before
	 * any worker can see the context. */
	bool ask[L2_MAX_FRAGS];
	unsigned n_ask = 0;
	for (unsigned i = 0; i < n; i++) {
		struct l2_node *nd = &l->nodes[order[i]];
		pthread_mutex_lock(&nd->mu);
		ask[i] = !nd->down && !nd->stop && nd->hi_len < L2_NODE_QUEUE_MAX;
		pthread_mutex_unlock(&nd->mu);
		n_ask += ask[i];
	}
	if (n_ask < l->k) {
		COUNT(l, misses);
		return -ENOENT;
	}
	struct l2_getctx *g = calloc(1, sizeof(*g));
	if (!g)
		return -ENOMEM;
	g->l = l;
	pthread_mutex_init(&g->mu, NULL);
	if (cond_init_mono(&g->cv) < 0) {
		pthread_mutex_destroy(&g->mu);
		free(g);
		return -ENOMEM;
	}
	memcpy(g->name, name, sizeof(g->name));
	l2_frag_set_init(&g->set, l->k, l->m);
	g->refs = 1 + n_ask;
	g->asked = n_ask;
	pthread_mutex_lock(&l->bg_mu);
	l->gets_inflight++;
	pthread_mutex_unlock(&l->bg_mu);
	for (unsigned i = 0; i < n; i++) {
		if (!ask[i])
			continue;
		struct l2_req *r = &g->reqs[i];
		g->state[i] = FS_PENDING;
		r->op = REQ_GET;
		r->index = i;
		r->g = g;
		make_key(l, name, i, r->key, sizeof(r->key), &r->key_len);
	}
	for (unsigned i = 0; i < n; i++)
		if (ask[i])
			node_submit(&l->nodes[order[i]], &g->reqs[i], true);

	/* Every request ends within about timeout_ms of reaching its worker;
	 * the deadline only bounds a reader stuck behind queued requests. */
	struct timespec dl;
	deadline_in((2.0 * l->timeout_ms + 100) / 1000.0, &dl);
	pthread_mutex_lock(&g->mu);
	while (g->set.n < l->k && g->answered < g->asked)
		if (pthread_cond_timedwait(&g->cv, &g->mu, &dl) == ETIMEDOUT)
			break;
	g->done = true;
	struct l2_frag_set set = g->set;
	pthread_mutex_unlock(&g->mu);

	int r = -ENOENT;
	bool decoded = false;
	if (set.n >= l->k)
		r = l2_frag_set_decode(&l->codec, &set, out, CHUNK_SIZE, out_len, &decoded);
	if (r == 0) {
		COUNT(l, hits);
		if (decoded)
			COUNT(l, decodes);
		pthread_mutex_lock(&g->mu);
		g->decoded_ok = true;
		pthread_mutex_unlock(&g->mu);
	} else {
		COUNT(l, misses);
		if (r != -ENOENT)
			log_warn("l2: get %s: cannot rebuild the chunk from %u fragments: %s", name, set.n, strerror(-r));
		r = -ENOENT;
	}
	getctx_release(g);
	return r;
}

int l2_put(struct l2 *l, const char *name, const uint8_t *buf, size_t len)
{
	if (!l || !name || !is_sha256_hex(name) || !buf || len == 0 || len > CHUNK_SIZE)
		return -EINVAL;
	unsigned stored;
	int r = l2_store(l, name, buf, len, ALL_FRAGS(l), &stored);
	if (r < 0)
		return r;
	if (stored < l->k) {
		log_debug("l2: put %s: only %u of %u fragments stored (are the memcached nodes up?)", name, stored,
			 l->k + l->m);
		return -EIO;
	}
	COUNT(l, puts);
	return 0;
}

void l2_put_async(struct l2 *l, const char *name, const uint8_t *buf, size_t len)
{
	if (!l || !name || !is_sha256_hex(name) || !buf || len == 0 || len > CHUNK_SIZE)
		return;
	struct bg_job *j = calloc(1, sizeof(*j));
	uint8_t *copy = j ? malloc(len) : NULL;
	if (!copy) {
		free(j);
		COUNT(l, bg_dropped);
		return;
	}
	memcpy(copy, buf, len);
	j->type = BG_PUT;
	memcpy(j->name, name, sizeof(j->name));
	j->buf = copy;
	j->len = len;
	if (!bg_enqueue(l, j))
		bg_job_free(j);
}

void l2_report_bad(struct l2 *l, const char *name)
{
	if (!l || !name || !is_sha256_hex(name))
		return;
	struct bg_job *j = calloc(1, sizeof(*j));
	if (!j)
		return;
	j->type = BG_DELETE;
	memcpy(j->name, name, sizeof(j->name));
	log_warn("l2: chunk %s rebuilt from L2 does not match its name; deleting its fragments", name);
	if (!bg_enqueue(l, j))
		bg_job_free(j);
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
#undef LOAD
	return 0;
}

void l2_flush(struct l2 *l)
{
	if (!l)
		return;
	pthread_mutex_lock(&l->bg_mu);
	while ((l->bg_len > 0 || l->bg_active || l->gets_inflight > 0) && !l->bg_stop)
		pthread_cond_wait(&l->bg_idle, &l->bg_mu);
	pthread_mutex_unlock(&l->bg_mu);
}

int l2_locate(struct l2 *l, const char *name, unsigned index, char *addr, size_t addr_len, char *key, size_t key_len)
{
	if (!l || !name || !is_sha256_hex(name) || index >= l->k + l->m)
		return -EINVAL;
	unsigned order[L2_MAX_FRAGS];
	rank_nodes(l, name, order);
	if ((size_t)snprintf(addr, addr_len, "%s", l->nodes[order[index]].addr) >= addr_len)
		return -ENAMETOOLONG;
	return make_key(l, name, index, key, key_len, NULL);
}
