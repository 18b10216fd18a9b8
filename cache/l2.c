/* L2: the erasure-coded memcached fleet client (contract in internal.h).
 *
 * Placement.  Fragment i of chunk N goes to the node ranked i-th by
 * rendezvous (highest random weight) hashing of N over all configured nodes,
 * so the k+m fragments are on distinct nodes and adding or removing a node
 * moves only the fragments it wins or held.  Down nodes keep their rank (the
 * placement never depends on health); their fragments are simply not asked.
 *
 * Parallel reads.  l2_get does its own I/O: it takes one idle connection per
 * node from that node's pool (or dials one, non-blocking), sends k+m text
 * protocol "get"s at once and polls them all from the calling thread.  The
 * reply parser (l2_reply.c) lets each data fragment's bytes land in the
 * caller's buffer at i * frag_len, and the SHA-256 of the chunk (the name
 * check) runs over fragment 0, 1, ... as each arrives, while the others are
 * still on the wire; so a hit costs about one round trip plus the hash of
 * what was not hashed yet, with no thread hand-off and no copy.  As soon as
 * k intact fragments are in, the read stops waiting: a missing data
 * fragment is rebuilt from parity, and the connections still waiting for
 * late replies are handed to the drainer thread, which reads the rest of
 * each reply, judges the fragment (a late "not found" or corrupt fragment
 * gets the chunk re-checked and repaired) and puts the connection back in
 * the pool; a slow node therefore costs a read nothing once k have arrived.
 *
 * Repair.  A read that rebuilt and verified the chunk and saw a node say
 * "not found", or send a fragment that failed its checks, queues the chunk
 * and the bad fragments' indexes to the background thread, which re-encodes
 * it and rewrites only those fragments.  The background thread has a
 * bounded queue (L2_BG_QUEUE_MAX), shared with l2_put_async and
 * l2_report_bad; when it is full work is dropped and counted, never waited
 * for.
 *
 * Writes.  Sets, deletes and health probes go through libmemcached, from a
 * small pool of worker threads per node (L2_WORKERS_PER_NODE), each with its
 * own memcached_st; they are background work, never on a read's path.
 *
 * Health.  A connection error or timeout (memcached_fatal) marks a node down
 * for down_backoff_ms; worker 0 of that node probes it (a get of a key that is
 * never stored) when the backoff expires, and each failed probe doubles the
 * backoff up to 30 s.  Requests to a down node fail at once without touching
 * the network; nothing is ever retried in a loop.
 *
 * Wire: the text protocol (memcached 1.6 deprecates the binary one), TCP_NODELAY,
 * every timeout from timeout_ms.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <libmemcached/memcached.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define L2_WORKERS_PER_NODE 4	/* concurrent background writes per node */
#define L2_IDLE_MAX 16		/* idle read connections kept per node */
#define L2_DRAIN_MAX 64		/* connections parked for a late reply, all nodes */
#define L2_SCRATCH_MAX 8	/* pooled scratch buffers for parity fragments */
#define L2_BG_QUEUE_MAX 256	/* background jobs (writes, repairs, deletes) */
#define L2_BACKOFF_MAX_MS 30000u
#define L2_KEY_MAX 160
#define L2_PREFIX_MAX 64
#define L2_PROBE_KEY "l2-probe.never-stored"

enum req_op { REQ_SET, REQ_DELETE };

/* What a read learnt about one fragment. */
enum frag_state { FS_UNASKED = 0, FS_PENDING, FS_INTACT, FS_MISSING, FS_CORRUPT, FS_ERROR };

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
	const uint8_t *val;			/* REQ_SET, owned by the batch's waiter */
	size_t val_len;
	struct l2_batch *b;			/* REQ_SET, REQ_DELETE */
};

/* A connection parked with the drainer until its late reply is in. */
struct l2_drain {
	struct l2_drain *next;
	struct l2_node *nd;
	int fd;
	unsigned gen, index;
	double t0, since; /* request sent, parked */
	char name[CHUNK_NAME_HEX_LEN + 1];
	char key[L2_KEY_MAX];
	uint8_t hdr[L2_FRAG_HDR_LEN];
	uint8_t *data; /* malloc'd: the value past the header, to judge it */
	struct l2_reply rp;
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
	struct l2_req *lo_head, *lo_tail;
	bool stop;
	/* read connections (l2_get) */
	struct sockaddr_storage sa;
	socklen_t sa_len;
	int idle_fd[L2_IDLE_MAX];
	unsigned idle_gen[L2_IDLE_MAX];
	unsigned n_idle;
	/* health */
	bool down, probing;
	unsigned gen; /* bumped when the node goes down: workers drop their old connections */
	unsigned backoff_ms;
	double retry_at;
	/* counters (addr and up are filled in by l2_stats) */
	struct l2_node_stats st;
	struct l2_worker workers[L2_WORKERS_PER_NODE];
};

enum bg_type { BG_PUT, BG_REPAIR, BG_DELETE, BG_RECHECK };

struct bg_job {
	struct bg_job *next;
	enum bg_type type;
	char name[CHUNK_NAME_HEX_LEN + 1];
	uint8_t *buf; /* BG_PUT, BG_REPAIR: the chunk, owned */
	size_t len;
	uint32_t mask; /* BG_REPAIR: the fragments to rewrite */
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
	unsigned bg_len, bg_active;
	uint8_t *bg_buf; /* CHUNK_SIZE, the background thread's, for re-checks */

	/* the drainer: late replies of reads that already had k fragments */
	pthread_mutex_t drain_mu;
	pthread_cond_t drain_empty;
	struct l2_drain *drains;
	unsigned n_drains;
	int drain_ep, drain_wake;
	bool drain_stop, drain_started;
	pthread_t drain_thread;
	bool bg_stop, bg_started;
	pthread_t bg_thread;
	/* scratch for parity fragments (and a data fragment that runs past
	 * CHUNK_SIZE) of reads in flight: (m + 1) * max fragment length each */
	pthread_mutex_t scratch_mu;
	uint8_t *scratch[L2_SCRATCH_MAX];
	unsigned n_scratch;
	size_t scratch_len;

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

static void close_fd(int fd)
{
	if (fd >= 0)
		close(fd);
}

/* Drop a node's pooled read connections; caller holds nd->mu.  They may be
 * from before the node failed. */
static void node_drop_conns_locked(struct l2_node *nd)
{
	for (unsigned i = 0; i < nd->n_idle; i++)
		close_fd(nd->idle_fd[i]);
	nd->n_idle = 0;
}

/* Account a failed request.  A connection-level failure (|fatal|) marks the
 * node down for its backoff; worker 0 probes it afterwards. */
static void node_failed_as(struct l2_node *nd, bool timeout, bool fatal, const char *what, const char *detail)
{
	pthread_mutex_lock(&nd->mu);
	if (timeout)
		nd->st.timeouts++;
	else
		nd->st.errors++;
	bool newly_down = false;
	if (fatal && !nd->down) {
		nd->down = true;
		nd->gen++;
		newly_down = true;
		nd->backoff_ms = nd->l->down_backoff_ms;
		nd->retry_at = now_seconds() + nd->backoff_ms / 1000.0;
		node_drop_conns_locked(nd);
		pthread_cond_broadcast(&nd->cv); /* worker 0 schedules the probe */
	}
	unsigned backoff = nd->backoff_ms;
	pthread_mutex_unlock(&nd->mu);
	if (newly_down)
		log_warn("l2: %s on %s failed: %s; node marked down, probing again in %u ms (is memcached running on %s?)",
			 what, nd->addr, detail, backoff, nd->addr);
	else if (!fatal)
		log_warn("l2: %s on %s failed: %s (is memcached on %s started with -I 2m and enough memory?)", what,
			 nd->addr, detail, nd->addr);
}

static void node_failed(struct l2_node *nd, memcached_st *mc, memcached_return_t rc, const char *what)
{
	node_failed_as(nd, rc == MEMCACHED_TIMEOUT, memcached_fatal(rc), what, memcached_last_error_message(mc));
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
		nd->retry_at = now_seconds() + nd->backoff_ms / 1000.0;
	}
	unsigned backoff = nd->backoff_ms;
	pthread_mutex_unlock(&nd->mu);
	if (ok)
		log_info("l2: node %s answers again, marked up", nd->addr);
	else
		log_debug("l2: probe of %s failed (%s); next probe in %u ms", nd->addr, memcached_strerror(mc, rc),
			  backoff);
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
	memcached_return_t rc;
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
	struct l2_req *r = nd->lo_head;
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
			if (now_seconds() >= nd->retry_at) {
				nd->probing = true;
				gen = nd->gen;
				pthread_mutex_unlock(&nd->mu);
				memcached_quit(mc);
				node_probe(nd, mc);
				pthread_mutex_lock(&nd->mu);
				continue;
			}
			struct timespec ts;
			deadline_in(nd->retry_at - now_seconds(), &ts);
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
static void node_submit(struct l2_node *nd, struct l2_req *r)
{
	r->next = NULL;
	pthread_mutex_lock(&nd->mu);
	if (nd->stop) {
		pthread_mutex_unlock(&nd->mu);
		run_req(nd, NULL, r, true);
		return;
	}
	if (nd->lo_tail)
		nd->lo_tail->next = r;
	else
		nd->lo_head = r;
	nd->lo_tail = r;
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
		node_submit(&l->nodes[order[i]], &reqs[i]);
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
		node_submit(&l->nodes[order[i]], &reqs[i]);
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
	free(j->buf);
	free(j);
}

/* A background job of |type| for chunk |name| holding a copy of |<buf, len>|
 * (none if |buf| is NULL), or NULL (counted as dropped) without memory. */
static struct bg_job *bg_job_new(struct l2 *l, enum bg_type type, const char *name, const uint8_t *buf, size_t len)
{
	struct bg_job *j = calloc(1, sizeof(*j));
	uint8_t *copy = j && buf ? malloc(len) : NULL;
	if (!j || (buf && !copy)) {
		free(j);
		COUNT(l, bg_dropped);
		return NULL;
	}
	if (buf)
		memcpy(copy, buf, len);
	j->type = type;
	memcpy(j->name, name, sizeof(j->name));
	j->buf = copy;
	j->len = buf ? len : 0;
	return j;
}

/* Queue a rewrite of the fragments in |mask| of the verified chunk
 * |<buf, len>| (copied). */
static void bg_enqueue_repair(struct l2 *l, const char *name, const uint8_t *buf, size_t len, uint32_t mask)
{
	struct bg_job *j = bg_job_new(l, BG_REPAIR, name, buf, len);
	if (!j)
		return;
	j->mask = mask;
	if (bg_enqueue(l, j))
		COUNT(l, repairs_queued);
	else
		bg_job_free(j);
}

static int l2_read(struct l2 *l, const char *name, uint8_t *out, size_t *out_len, bool wait_all);

static void bg_enqueue_recheck(struct l2 *l, const char *name)
{
	struct bg_job *j = bg_job_new(l, BG_RECHECK, name, NULL, 0);
	if (j && !bg_enqueue(l, j))
		bg_job_free(j);
}

static void bg_repair(struct l2 *l, const struct bg_job *j)
{
	unsigned want = (unsigned)__builtin_popcount(j->mask), stored;
	int r = l2_store(l, j->name, j->buf, j->len, j->mask, &stored);
	if (r == 0 && stored == want)
		COUNT(l, repairs_done);
	else
		log_debug("l2: repair of %s: %u of %u fragments rewritten", j->name, stored, want);
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
			bg_repair(l, j);
			break;
		case BG_DELETE:
			l2_delete_all(l, j->name);
			break;
		case BG_RECHECK: {
			size_t len;
			if (l->bg_buf || (l->bg_buf = malloc(CHUNK_SIZE)))
				l2_read(l, j->name, l->bg_buf, &len, true); /* queues the repair itself */
			break;
		}
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

static void *drain_main(void *arg);

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
	int r = l2_codec_init(&l->codec, k, m);
	if (r < 0)
		goto fail;
	pthread_mutex_init(&l->scratch_mu, NULL);
	pthread_mutex_init(&l->drain_mu, NULL);
	pthread_cond_init(&l->drain_empty, NULL);
	l->drain_ep = epoll_create1(EPOLL_CLOEXEC);
	l->drain_wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	struct epoll_event wake_ev = {.events = EPOLLIN, .data.ptr = NULL};
	if (l->drain_ep < 0 || l->drain_wake < 0 ||
	    epoll_ctl(l->drain_ep, EPOLL_CTL_ADD, l->drain_wake, &wake_ev) < 0) {
		r = -errno;
		log_err("l2: cannot set up the drainer's epoll: %s", strerror(errno));
		goto fail;
	}
	l->scratch_len = (size_t)(m + 1) * l2_frag_len(CHUNK_SIZE, k);
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
	r = -pthread_create(&l->drain_thread, NULL, drain_main, l);
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
	pthread_mutex_lock(&l->drain_mu);
	l->drain_stop = true;
	pthread_cond_broadcast(&l->drain_empty);
	pthread_mutex_unlock(&l->drain_mu);
	uint64_t one = 1;
	if (l->drain_wake >= 0 && write(l->drain_wake, &one, sizeof(one)) < 0)
		log_debug("l2: waking the drainer: %s", strerror(errno));
	if (l->drain_started)
		pthread_join(l->drain_thread, NULL);
	while (l->drains) {
		struct l2_drain *d = l->drains;
		l->drains = d->next;
		close(d->fd);
		free(d->data);
		free(d);
	}
	close_fd(l->drain_ep);
	close_fd(l->drain_wake);
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
		node_drop_conns_locked(&l->nodes[i]); /* every thread is gone */
		pthread_mutex_destroy(&l->nodes[i].mu);
		pthread_cond_destroy(&l->nodes[i].cv);
	}
	free(l->nodes);
	free(l->bg_buf);
	for (unsigned i = 0; i < l->n_scratch; i++)
		free(l->scratch[i]);
	pthread_mutex_destroy(&l->scratch_mu);
	pthread_mutex_destroy(&l->drain_mu);
	pthread_cond_destroy(&l->drain_empty);
	l2_codec_cleanup(&l->codec);
	pthread_mutex_destroy(&l->bg_mu);
	pthread_cond_destroy(&l->bg_cv);
	pthread_cond_destroy(&l->bg_idle);
	free(l);
}

/* ---- reads ------------------------------------------------------------------------ */

static uint8_t *scratch_get(struct l2 *l)
{
	pthread_mutex_lock(&l->scratch_mu);
	uint8_t *b = l->n_scratch ? l->scratch[--l->n_scratch] : NULL;
	pthread_mutex_unlock(&l->scratch_mu);
	return b ? b : malloc(l->scratch_len);
}

static void scratch_put(struct l2 *l, uint8_t *b)
{
	if (!b)
		return;
	pthread_mutex_lock(&l->scratch_mu);
	if (l->n_scratch < L2_SCRATCH_MAX) {
		l->scratch[l->n_scratch++] = b;
		b = NULL;
	}
	pthread_mutex_unlock(&l->scratch_mu);
	free(b);
}

/* Give a connection whose last reply ended cleanly back to its node's pool. */
static void conn_put(struct l2_node *nd, int fd, unsigned gen)
{
	pthread_mutex_lock(&nd->mu);
	if (gen == nd->gen && !nd->down && !nd->stop && nd->n_idle < L2_IDLE_MAX) {
		nd->idle_fd[nd->n_idle] = fd;
		nd->idle_gen[nd->n_idle++] = gen;
		fd = -1;
	}
	pthread_mutex_unlock(&nd->mu);
	close_fd(fd);
}

/* Move whatever has arrived on |fd| into the reply |rp|: value bytes
 * straight into their window, the rest through a small stage.  |place| is
 * called when the reply needs a destination for its value.  Returns 1 when
 * the reply is complete (bytes past it make it L2R_PROTO: the stream is out
 * of step), 0 when nothing more has arrived, or -errno (-EPIPE for EOF). */
static int reply_pump(int fd, struct l2_reply *rp, void (*place)(void *ctx), void *ctx)
{
	uint8_t stage[4096];
	for (;;) {
		size_t win;
		uint8_t *dst = l2_reply_window(rp, &win);
		ssize_t n = dst ? recv(fd, dst, win, MSG_DONTWAIT) : recv(fd, stage, sizeof(stage), MSG_DONTWAIT);
		if (n == 0)
			return -EPIPE;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
		}
		if (dst) {
			l2_reply_advance(rp, (size_t)n);
			continue;
		}
		size_t used = 0;
		while (used < (size_t)n && rp->state != L2R_DONE) {
			used += l2_reply_feed(rp, stage + used, (size_t)n - used);
			if (rp->state == L2R_NEED_DST)
				place(ctx);
		}
		if (rp->state == L2R_DONE) {
			if (used != (size_t)n)
				rp->result = L2R_PROTO;
			return 1;
		}
	}
}

static void bg_enqueue_recheck(struct l2 *l, const char *name);

static void drain_place(void *ctx)
{
	struct l2_drain *d = ctx;
	d->data = malloc(d->rp.value_len - d->rp.hdr_len);
	l2_reply_set_data(&d->rp, d->data);
}

/* A parked reply ended (|st| from reply_pump, or -ETIMEDOUT): judge the
 * fragment, account it, and recycle or close the connection.  A late "not
 * found" or a corrupt fragment means the read that gave up on it did not
 * learn that the fragment is bad: the chunk is read again in full. */
static void drain_finish(struct l2 *l, struct l2_drain *d, int st)
{
	struct l2_node *nd = d->nd;
	epoll_ctl(l->drain_ep, EPOLL_CTL_DEL, d->fd, NULL);
	pthread_mutex_lock(&l->drain_mu);
	for (struct l2_drain **p = &l->drains; *p; p = &(*p)->next)
		if (*p == d) {
			*p = d->next;
			break;
		}
	if (--l->n_drains == 0)
		pthread_cond_broadcast(&l->drain_empty);
	pthread_mutex_unlock(&l->drain_mu);

	enum l2_reply_result res = st == 1 ? d->rp.result : L2R_NONE;
	bool corrupt = false;
	if (res == L2R_HIT) {
		struct l2_fragment_view v;
		size_t dlen = d->rp.value_len > L2_FRAG_HDR_LEN ? d->rp.value_len - L2_FRAG_HDR_LEN : 0;
		corrupt = !d->data || d->rp.value_len <= L2_FRAG_HDR_LEN ||
			  l2_fragment_parse_split(d->hdr, d->data, dlen, d->name, l->k, l->m, &v) != 0 ||
			  v.index != d->index;
	}
	pthread_mutex_lock(&nd->mu);
	nd->st.gets++;
	if (res == L2R_HIT) {
		nd->st.hits++;
		nd->st.bytes_read += d->rp.value_len;
		nd->st.corrupt += corrupt;
	} else if (res == L2R_MISS) {
		nd->st.misses++;
	}
	if (res == L2R_HIT || res == L2R_MISS) {
		node_latency(nd, (now_seconds() - d->t0) * 1000);
	} else if (st == -ETIMEDOUT) {
		nd->st.timeouts++;
	} else {
		nd->st.errors++;
	}
	pthread_mutex_unlock(&nd->mu);
	if (corrupt)
		log_warn("l2: fragment %s from %s is corrupt (%zu bytes, a late reply); it will be rewritten", d->key,
			 nd->addr, d->rp.value_len);
	if (res == L2R_MISS || corrupt)
		bg_enqueue_recheck(l, d->name);
	if (res == L2R_HIT || res == L2R_MISS)
		conn_put(nd, d->fd, d->gen);
	else
		close(d->fd);
	free(d->data);
	free(d);
}

static void *drain_main(void *arg)
{
	struct l2 *l = arg;
	struct epoll_event evs[16];
	for (;;) {
		int n = epoll_wait(l->drain_ep, evs, 16, 100);
		pthread_mutex_lock(&l->drain_mu);
		bool stop = l->drain_stop;
		pthread_mutex_unlock(&l->drain_mu);
		if (stop)
			break;
		for (int i = 0; i < n; i++) {
			struct l2_drain *d = evs[i].data.ptr;
			if (!d) {
				uint64_t v;
				if (read(l->drain_wake, &v, sizeof(v)) < 0)
					log_debug("l2: drainer wake-up read: %s", strerror(errno));
				continue;
			}
			int st = reply_pump(d->fd, &d->rp, drain_place, d);
			if (st != 0)
				drain_finish(l, d, st);
		}
		/* A reply more than a few timeouts late is not coming. */
		double now = now_seconds(), limit = 4.0 * l->timeout_ms / 1000.0;
		for (;;) {
			pthread_mutex_lock(&l->drain_mu);
			struct l2_drain *old = l->drains;
			while (old && now - old->since <= limit)
				old = old->next;
			pthread_mutex_unlock(&l->drain_mu);
			if (!old)
				break;
			drain_finish(l, old, -ETIMEDOUT);
		}
	}
	return NULL;
}

/* Take a pooled connection of |nd|, or return -1 to dial a new one. */
static int conn_take(struct l2_node *nd, unsigned *gen)
{
	pthread_mutex_lock(&nd->mu);
	int fd = -1;
	while (fd < 0 && nd->n_idle > 0) {
		nd->n_idle--;
		if (nd->idle_gen[nd->n_idle] == nd->gen)
			fd = nd->idle_fd[nd->n_idle];
		else
			close_fd(nd->idle_fd[nd->n_idle]);
	}
	*gen = nd->gen;
	pthread_mutex_unlock(&nd->mu);
	return fd;
}

/* Hand a connection whose reply is still on its way to the drainer.  The
 * value bytes already received (into the reader's buffer, which it is about
 * to release) are copied so the fragment can still be judged. */
static void conn_park(struct l2 *l, struct l2_node *nd, int fd, unsigned gen, unsigned index, double t0,
		      const struct l2_reply *rp, const char *key, const uint8_t *hdr, const char *name)
{
	struct l2_drain *d = calloc(1, sizeof(*d));
	if (!d) {
		close(fd);
		return;
	}
	d->nd = nd;
	d->fd = fd;
	d->gen = gen;
	d->index = index;
	d->t0 = t0;
	d->since = now_seconds();
	memcpy(d->name, name, sizeof(d->name));
	snprintf(d->key, sizeof(d->key), "%s", key);
	memcpy(d->hdr, hdr, L2_FRAG_HDR_LEN);
	d->rp = *rp;
	d->rp.key = d->key;
	d->rp.hdr = d->hdr;
	bool ok = true;
	if (rp->data) {
		size_t dlen = rp->value_len - rp->hdr_len, have = rp->got > rp->hdr_len ? rp->got - rp->hdr_len : 0;
		d->data = malloc(dlen);
		if (d->data)
			memcpy(d->data, rp->data, have);
		ok = d->data != NULL;
		d->rp.data = d->data;
	}
	pthread_mutex_lock(&l->drain_mu);
	ok = ok && !l->drain_stop && l->n_drains < L2_DRAIN_MAX;
	if (ok) {
		d->next = l->drains;
		l->drains = d;
		l->n_drains++;
	}
	pthread_mutex_unlock(&l->drain_mu);
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = d};
	if (ok && epoll_ctl(l->drain_ep, EPOLL_CTL_ADD, fd, &ev) == 0)
		return;
	if (ok) { /* not watched: take it back out */
		drain_finish(l, d, -EIO);
		return;
	}
	close(fd);
	free(d->data);
	free(d);
}

static int conn_dial(struct l2_node *nd, bool *connecting)
{
	int fd = socket(nd->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	*connecting = false;
	if (connect(fd, (const struct sockaddr *)&nd->sa, nd->sa_len) < 0) {
		if (errno != EINPROGRESS) {
			int e = errno;
			close(fd);
			return -e;
		}
		*connecting = true;
	}
	return fd;
}

static uint32_t ld_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* One fragment being read by l2_get. */
struct frag_read {
	struct l2_node *nd;
	int fd;
	unsigned gen;
	bool connecting, pooled;
	enum frag_state st;
	double t0;
	char key[L2_KEY_MAX];
	size_t key_len;
	uint8_t hdr[L2_FRAG_HDR_LEN];
	uint8_t *data; /* where its data went */
	struct l2_reply rp;
};

static int frag_send(struct frag_read *f)
{
	char req[L2_KEY_MAX + 8];
	int n = snprintf(req, sizeof(req), "get %s\r\n", f->key);
	ssize_t w = send(f->fd, req, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
	return w == n ? 0 : w < 0 ? -errno : -EIO;
}

/* Send fragment |f|'s request on a pooled connection of its node.  Returns
 * true if it went out; false if the pool was empty or its connection dead
 * (the node closed it while it sat in the pool): then dial with
 * frag_dial(). */
static bool frag_send_pooled(struct frag_read *f)
{
	f->t0 = now_seconds();
	f->fd = conn_take(f->nd, &f->gen);
	if (f->fd < 0)
		return false;
	f->pooled = true;
	if (frag_send(f) == 0)
		return true;
	close(f->fd);
	f->fd = -1;
	return false;
}

/* Dial a new connection for fragment |f| and send its request once it is
 * connected (at once on loopback, else from the poll loop). */
static int frag_dial(struct frag_read *f)
{
	f->pooled = false;
	f->fd = conn_dial(f->nd, &f->connecting);
	if (f->fd < 0)
		return f->fd;
	if (f->connecting)
		return 0;
	int r = frag_send(f);
	if (r < 0) {
		close(f->fd);
		f->fd = -1;
	}
	return r;
}

struct read_state {
	struct l2 *l;
	const char *name;
	uint8_t *out;
	struct frag_read f[L2_MAX_FRAGS];
	unsigned n, pending, intact;
	struct l2_frag_set set;
	size_t fl; /* fragment length, fixed by the first VALUE line */
	uint8_t *scratch;
	EVP_MD_CTX *md;
	unsigned hashed; /* data fragments 0..hashed-1 are in the name hash */
	bool hash_failed;
};

/* Where fragment i's data goes once its length is known: data fragments at
 * their place in the chunk, parity (and a data fragment that would run past
 * CHUNK_SIZE) in scratch. */
static uint8_t *frag_dst(struct read_state *rs, unsigned i)
{
	struct l2 *l = rs->l;
	size_t fl = rs->fl;
	if (i < l->k && (size_t)(i + 1) * fl <= CHUNK_SIZE)
		return rs->out + (size_t)i * fl;
	if (!rs->scratch)
		rs->scratch = scratch_get(l);
	if (!rs->scratch)
		return NULL;
	return rs->scratch + (size_t)(i < l->k ? l->m : i - l->k) * fl;
}

/* Feed the name hash every data fragment that is in, in order. */
static void hash_ready(struct read_state *rs)
{
	struct l2 *l = rs->l;
	while (!rs->hash_failed && rs->hashed < l->k && rs->set.data[rs->hashed]) {
		size_t off = (size_t)rs->hashed * rs->set.frag_len;
		if (off < rs->set.chunk_len) {
			size_t n = rs->set.chunk_len - off < rs->set.frag_len ? rs->set.chunk_len - off : rs->set.frag_len;
			if (EVP_DigestUpdate(rs->md, rs->set.data[rs->hashed], n) != 1)
				rs->hash_failed = true;
		}
		rs->hashed++;
	}
}

/* A reply is complete: judge the fragment and account it to its node. */
static void frag_finish(struct read_state *rs, unsigned i)
{
	struct l2 *l = rs->l;
	struct frag_read *f = &rs->f[i];
	struct l2_node *nd = f->nd;
	double ms = (now_seconds() - f->t0) * 1000;
	rs->pending--;
	enum l2_reply_result res = f->rp.result;
	if (res == L2R_HIT) {
		struct l2_fragment_view v;
		size_t dlen = f->rp.value_len > L2_FRAG_HDR_LEN ? f->rp.value_len - L2_FRAG_HDR_LEN : 0;
		bool good = f->data && f->rp.value_len > L2_FRAG_HDR_LEN &&
			    l2_fragment_parse_split(f->hdr, f->data, dlen, rs->name, l->k, l->m, &v) == 0 &&
			    v.index == i && l2_frag_set_add(&rs->set, &v) == 0;
		f->st = good ? FS_INTACT : FS_CORRUPT;
		if (good)
			rs->intact++;
		else
			log_warn("l2: fragment %s from %s is corrupt (%zu bytes); it will be rewritten", f->key,
				 nd->addr, f->rp.value_len);
	} else if (res == L2R_MISS) {
		f->st = FS_MISSING;
	} else {
		f->st = FS_ERROR;
	}
	pthread_mutex_lock(&nd->mu);
	nd->st.gets++;
	if (res == L2R_HIT) {
		nd->st.hits++;
		nd->st.bytes_read += f->rp.value_len;
		if (f->st == FS_CORRUPT)
			nd->st.corrupt++;
	} else if (res == L2R_MISS) {
		nd->st.misses++;
	}
	if (res == L2R_HIT || res == L2R_MISS)
		node_latency(nd, ms);
	pthread_mutex_unlock(&nd->mu);

	if (res == L2R_HIT || res == L2R_MISS) {
		conn_put(nd, f->fd, f->gen);
	} else {
		close(f->fd);
		node_failed_as(nd, false, res == L2R_PROTO, "get",
			       res == L2R_PROTO ? "a reply that is not memcached's text protocol"
						: "memcached answered with an error");
	}
	f->fd = -1;
	if (f->st == FS_INTACT)
		hash_ready(rs);
}

/* The connection of fragment i died (reset, EOF, failed connect). */
static void frag_broken(struct read_state *rs, unsigned i, int err)
{
	struct frag_read *f = &rs->f[i];
	close_fd(f->fd);
	f->fd = -1;
	f->st = FS_ERROR;
	rs->pending--;
	pthread_mutex_lock(&f->nd->mu);
	f->nd->st.gets++;
	pthread_mutex_unlock(&f->nd->mu);
	node_failed_as(f->nd, false, true, "get", err ? strerror(err) : "connection closed");
}

/* Fragment i's header is in: pick where its data goes.  The first header
 * that passes every check but the CRC (which needs the data) fixes the
 * fragment length; data that disagrees with it, or behind a bad header, is
 * read and dropped, so garbage never lands over another fragment's bytes. */
static void frag_place(struct read_state *rs, unsigned i)
{
	struct l2 *l = rs->l;
	struct frag_read *f = &rs->f[i];
	size_t dlen = f->rp.value_len - L2_FRAG_HDR_LEN;
	uint8_t *dst = NULL;
	if (memcmp(f->hdr, L2_FRAG_MAGIC, 4) == 0 && f->hdr[4] == L2_FRAG_VERSION && f->hdr[5] == l->k &&
	    f->hdr[6] == l->m && f->hdr[7] == i && memcmp(f->hdr + 16, rs->name, CHUNK_NAME_HEX_LEN) == 0) {
		uint32_t chunk_len = ld_le32(f->hdr + 8), frag_len = ld_le32(f->hdr + 12);
		if (chunk_len >= 1 && chunk_len <= CHUNK_SIZE && frag_len == l2_frag_len(chunk_len, l->k) &&
		    frag_len == dlen && (rs->fl == 0 || rs->fl == dlen)) {
			rs->fl = dlen;
			dst = frag_dst(rs, i);
		}
	}
	f->data = dst;
	l2_reply_set_data(&f->rp, dst);
}

struct place_ctx {
	struct read_state *rs;
	unsigned i;
};

static void frag_place_cb(void *ctx)
{
	struct place_ctx *pc = ctx;
	frag_place(pc->rs, pc->i);
}

/* Move whatever has arrived on fragment i's connection into place. */
static void frag_read_ready(struct read_state *rs, unsigned i)
{
	struct place_ctx pc = {rs, i};
	int r = reply_pump(rs->f[i].fd, &rs->f[i].rp, frag_place_cb, &pc);
	if (r == 1)
		frag_finish(rs, i);
	else if (r < 0)
		frag_broken(rs, i, r == -EPIPE ? 0 : -r);
}

static void frag_connected(struct read_state *rs, unsigned i)
{
	struct frag_read *f = &rs->f[i];
	int err = 0;
	socklen_t len = sizeof(err);
	if (getsockopt(f->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err == 0)
		err = -frag_send(f);
	if (err) {
		frag_broken(rs, i, err);
		return;
	}
	f->connecting = false;
}

/* l2_get, and the background re-check, which waits for every node's answer
 * (|wait_all|) so that it sees every missing fragment. */
static int l2_read(struct l2 *l, const char *name, uint8_t *out, size_t *out_len, bool wait_all)
{
	unsigned order[L2_MAX_FRAGS];
	rank_nodes(l, name, order);

	struct read_state *rs = calloc(1, sizeof(*rs));
	if (!rs)
		return -ENOMEM;
	rs->l = l;
	rs->name = name;
	rs->out = out;
	rs->n = l->k + l->m;
	l2_frag_set_init(&rs->set, l->k, l->m);
	rs->md = EVP_MD_CTX_new();
	if (!rs->md || EVP_DigestInit_ex(rs->md, EVP_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(rs->md);
		free(rs);
		log_err("l2: SHA-256 (OpenSSL) cannot be set up; is libcrypto working?");
		return -EIO;
	}
	size_t max_value = L2_FRAG_HDR_LEN + l2_frag_len(CHUNK_SIZE, l->k);
	for (unsigned i = 0; i < rs->n; i++) {
		struct frag_read *f = &rs->f[i];
		f->nd = &l->nodes[order[i]];
		f->fd = -1;
		f->st = FS_UNASKED;
		pthread_mutex_lock(&f->nd->mu);
		bool up = !f->nd->down && !f->nd->stop;
		pthread_mutex_unlock(&f->nd->mu);
		if (!up)
			continue;
		make_key(l, name, i, f->key, sizeof(f->key), &f->key_len);
		l2_reply_init(&f->rp, f->key, f->key_len, max_value, f->hdr, L2_FRAG_HDR_LEN);
		f->st = FS_PENDING;
		if (frag_send_pooled(f))
			rs->pending++;
	}
	/* New connections only after every pooled request is out: a node
	 * whose connections are all still busy with late replies (a slow
	 * one) must not delay the requests to the others. */
	for (unsigned i = 0; i < rs->n; i++) {
		struct frag_read *f = &rs->f[i];
		if (f->st != FS_PENDING || f->fd >= 0)
			continue;
		int r = frag_dial(f);
		if (r < 0) {
			f->st = FS_ERROR;
			node_failed_as(f->nd, false, true, "connect", strerror(-r));
			continue;
		}
		rs->pending++;
	}

	/* Poll until k intact fragments are in, every node has answered, or
	 * the timeout passes. */
	double deadline = now_seconds() + l->timeout_ms / 1000.0;
	while ((wait_all || rs->intact < l->k) && rs->pending > 0) {
		struct pollfd pfd[L2_MAX_FRAGS];
		unsigned idx[L2_MAX_FRAGS], np = 0;
		for (unsigned i = 0; i < rs->n; i++)
			if (rs->f[i].fd >= 0) {
				pfd[np] = (struct pollfd){.fd = rs->f[i].fd, .events = rs->f[i].connecting ? POLLOUT : POLLIN};
				idx[np++] = i;
			}
		double left = deadline - now_seconds();
		if (left <= 0)
			break;
		int pr = poll(pfd, np, (int)(left * 1000) + 1);
		if (pr < 0 && errno != EINTR)
			break;
		for (unsigned j = 0; pr > 0 && j < np; j++) {
			if (!pfd[j].revents)
				continue;
			unsigned i = idx[j];
			if (rs->f[i].connecting)
				frag_connected(rs, i);
			else
				frag_read_ready(rs, i);
		}
	}

	/* Replies that are in already are judged now (a quick "not found"
	 * should lead to a repair); the rest are late or lost. */
	for (unsigned i = 0; i < rs->n && rs->intact >= l->k; i++)
		if (rs->f[i].fd >= 0 && !rs->f[i].connecting)
			frag_read_ready(rs, i);
	for (unsigned i = 0; i < rs->n; i++) {
		struct frag_read *f = &rs->f[i];
		if (f->fd < 0)
			continue;
		if (rs->intact >= l->k) {
			if (f->connecting)
				close(f->fd);
			else
				conn_park(l, f->nd, f->fd, f->gen, i, f->t0, &f->rp, f->key, f->hdr, name);
		} else {
			close(f->fd);
			node_failed_as(f->nd, true, true, "get", "no reply within the timeout");
		}
		f->fd = -1;
	}

	int r = -ENOENT;
	bool decoded = false;
	if (rs->intact >= l->k)
		r = l2_frag_set_decode(&l->codec, &rs->set, out, CHUNK_SIZE, out_len, &decoded);
	if (r == 0) {
		/* The data fragments not hashed yet are in |out| now. */
		size_t off = (size_t)rs->hashed * rs->set.frag_len;
		uint8_t digest[SHA256_LEN];
		unsigned dlen = 0;
		if (rs->hash_failed || (off < *out_len && EVP_DigestUpdate(rs->md, out + off, *out_len - off) != 1) ||
		    EVP_DigestFinal_ex(rs->md, digest, &dlen) != 1) {
			log_err("l2: SHA-256 (OpenSSL) failed; is libcrypto working?");
			r = -EIO;
		} else {
			char hex[SHA256_HEX_LEN + 1];
			hex_encode(digest, SHA256_LEN, hex);
			if (strcmp(hex, name) != 0)
				r = -EBADMSG;
		}
	}
	if (r == 0) {
		COUNT(l, hits);
		if (decoded)
			COUNT(l, decodes);
		uint32_t bad = 0;
		for (unsigned i = 0; i < rs->n; i++)
			if (rs->f[i].st == FS_MISSING || rs->f[i].st == FS_CORRUPT)
				bad |= 1u << i;
		if (bad)
			bg_enqueue_repair(l, name, out, *out_len, bad);
	} else {
		COUNT(l, misses);
		if (r == -EBADMSG)
			log_warn("l2: chunk %s rebuilt from intact fragments does not match its name; the caller drops "
				 "its fragments",
				 name);
		else if (r != -ENOENT && r != -EIO)
			log_warn("l2: get %s: cannot rebuild the chunk from %u fragments: %s", name, rs->set.n,
				 strerror(-r));
		if (r != -EBADMSG && r != -EIO)
			r = -ENOENT;
	}
	scratch_put(l, rs->scratch);
	EVP_MD_CTX_free(rs->md);
	free(rs);
	return r;
}

int l2_get(struct l2 *l, const char *name, uint8_t *out, size_t *out_len)
{
	if (!l || !name || !is_sha256_hex(name) || !out || !out_len)
		return -EINVAL;
	COUNT(l, gets);
	return l2_read(l, name, out, out_len, false);
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
	struct bg_job *j = bg_job_new(l, BG_PUT, name, buf, len);
	if (j && !bg_enqueue(l, j))
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
