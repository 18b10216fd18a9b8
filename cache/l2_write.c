/* L2 writes: the libmemcached worker threads, the background thread and
 * repair (contracts of l2_put, l2_put_async and l2_report_bad in
 * internal.h).
 *
 * Writes.  Sets, deletes and health probes go through libmemcached, from a
 * small pool of worker threads per node (L2_WORKERS_PER_NODE), each with its
 * own memcached_st; they are background work, never on a read's path.
 *
 * Repair.  A read that rebuilt and verified the chunk and saw a node say
 * "not found", or send a fragment that failed its checks, queues the chunk
 * and the bad fragments' indexes to the background thread, which re-encodes
 * it and rewrites only those fragments.  The background thread has a
 * bounded queue (L2_BG_QUEUE_MAX), shared with l2_put_async and
 * l2_report_bad; when it is full work is dropped and counted, never waited
 * for.
 */
#include "l2_internal.h"

#include <errno.h>
#include <libmemcached/memcached.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define L2_BG_QUEUE_MAX 256	/* background jobs (writes, repairs, deletes) */

enum req_op { REQ_SET, REQ_DELETE };

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

enum bg_type { BG_PUT, BG_REPAIR, BG_DELETE, BG_RECHECK };

struct bg_job {
	struct bg_job *next;
	enum bg_type type;
	char name[CHUNK_NAME_HEX_LEN + 1];
	uint8_t *buf; /* BG_PUT, BG_REPAIR: the chunk, owned */
	size_t len;
	uint32_t mask; /* BG_REPAIR: the fragments to rewrite */
};

/* Bit i set for every fragment index of a k+m code. */
#define ALL_FRAGS(l) ((l)->k + (l)->m >= 32 ? 0xffffffffu : (1u << ((l)->k + (l)->m)) - 1)

/* ---- workers ------------------------------------------------------------------ */

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

/* Account a failed libmemcached request (l2_node_failed, with what
 * libmemcached says about it). */
static void node_failed_mc(struct l2_node *nd, memcached_st *mc, memcached_return_t rc, const char *what)
{
	l2_node_failed(nd, rc == MEMCACHED_TIMEOUT, memcached_fatal(rc), what, memcached_last_error_message(mc));
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

/* Wait until every request of |b| is done, then tear |b| down.  Returns
 * how many succeeded. */
static unsigned batch_wait(struct l2_batch *b)
{
	pthread_mutex_lock(&b->mu);
	while (b->pending > 0)
		pthread_cond_wait(&b->cv, &b->mu);
	unsigned ok = b->ok;
	pthread_mutex_unlock(&b->mu);
	pthread_mutex_destroy(&b->mu);
	pthread_cond_destroy(&b->cv);
	return ok;
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
			node_failed_mc(nd, mc, rc, r->op == REQ_SET ? "set" : "delete");
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

void *l2_node_worker(void *arg)
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
				l2_node_probe(nd, mc);
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
	l2_rank_nodes(l, name, order);
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
		l2_make_key(l, name, i, reqs[i].key, sizeof(reqs[i].key), &reqs[i].key_len);
		reqs[i].val = vals + (size_t)i * stride;
		reqs[i].val_len = stride;
		reqs[i].b = &b;
		node_submit(&l->nodes[order[i]], &reqs[i]);
	}
	*out_stored = batch_wait(&b);
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
	l2_rank_nodes(l, name, order);
	memset(reqs, 0, sizeof(reqs));
	for (unsigned i = 0; i < n; i++) {
		reqs[i].op = REQ_DELETE;
		reqs[i].index = i;
		l2_make_key(l, name, i, reqs[i].key, sizeof(reqs[i].key), &reqs[i].key_len);
		reqs[i].b = &b;
		node_submit(&l->nodes[order[i]], &reqs[i]);
	}
	batch_wait(&b);
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

void l2_bg_enqueue_repair(struct l2 *l, const char *name, const uint8_t *buf, size_t len, uint32_t mask)
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

void l2_bg_enqueue_recheck(struct l2 *l, const char *name)
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

void *l2_bg_main(void *arg)
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
				l2_read(l, j->name, NULL, l->bg_buf, &len, true); /* queues the repair itself */
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
