/* L2 read connections: a pool of idle connections per node, and the
 * drainer (the read itself is in l2_read.c).
 *
 * The pool.  l2_get talks to memcached over its own non-blocking sockets.
 * A connection whose reply ended cleanly goes back to its node's pool (at
 * most L2_IDLE_MAX idle per node), so a read normally sends its requests at
 * once, without a connect.  The pool follows the node's health
 * (l2_health.c): when a node goes down its idle connections are closed, and
 * one that was out at the time is closed instead of coming back.
 *
 * The drainer.  A read stops waiting once k intact fragments are in, so
 * that a slow node costs it nothing; the connections still waiting for a
 * reply are parked with the drainer thread (at most L2_DRAIN_MAX, all nodes
 * together), which watches them in one epoll set, reads the rest of each
 * reply, judges the fragment (a late "not found" or corrupt fragment gets
 * the chunk re-checked in the background, which repairs it) and returns the
 * connection to the pool.  A reply still missing four timeouts after its
 * connection was parked is given up on, and the connection closed.
 */
#include "l2_internal.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define L2_DRAIN_MAX 64		/* connections parked for a late reply, all nodes */

/* ---- the pool ------------------------------------------------------------------ */

void l2_conn_drop_idle_locked(struct l2_node *nd)
{
	for (unsigned i = 0; i < nd->n_idle; i++)
		close_fd(nd->idle_fd[i]);
	nd->n_idle = 0;
}

int l2_conn_take(struct l2_node *nd, unsigned *gen)
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

void l2_conn_put(struct l2_node *nd, int fd, unsigned gen)
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

int l2_conn_dial(struct l2_node *nd, bool *connecting)
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

int l2_conn_pump(int fd, struct l2_reply *rp, void (*place)(void *ctx), void *ctx)
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

/* ---- the drainer ---------------------------------------------------------------- */

/* A connection parked with the drainer until its late reply is in. */
struct l2_drain {
	struct l2_drain *next;
	struct l2 *l;
	struct l2_node *nd;
	int fd;
	unsigned gen, index;
	double t0, since; /* request sent, parked */
	char name[CHUNK_NAME_HEX_LEN + 1];
	char key[L2_KEY_MAX];
	uint8_t hdr[L2_FRAG_HDR_LEN];
	uint8_t *data; /* from l->scratch: the value past the header, to judge it */
	struct l2_reply rp;
};

/* A buffer for a late fragment's |dlen| bytes of data: the reply's length
 * is bounded by the largest fragment (l2_reply_init's |max_value|), which
 * a scratch buffer holds; NULL beyond that or when out of memory (the
 * fragment is then judged corrupt). */
static uint8_t *drain_buf(struct l2 *l, size_t dlen)
{
	return dlen <= l->scratch.len ? buf_pool_get(&l->scratch) : NULL;
}

static void drain_free(struct l2_drain *d)
{
	buf_pool_put(&d->l->scratch, d->data);
	free(d);
}

static void drain_place(void *ctx)
{
	struct l2_drain *d = ctx;
	d->data = drain_buf(d->l, d->rp.value_len - d->rp.hdr_len);
	l2_reply_set_data(&d->rp, d->data);
}

/* A parked reply ended (|st| from l2_conn_pump, or -ETIMEDOUT): judge the
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
		l2_node_latency(nd, (now_seconds() - d->t0) * 1000);
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
		l2_bg_enqueue_recheck(l, d->name);
	if (res == L2R_HIT || res == L2R_MISS)
		l2_conn_put(nd, d->fd, d->gen);
	else
		close(d->fd);
	drain_free(d);
}

void l2_conn_park(struct l2 *l, struct l2_node *nd, int fd, unsigned gen, unsigned index, double t0,
		  const struct l2_reply *rp, const char *key, const uint8_t *hdr, const char *name)
{
	struct l2_drain *d = calloc(1, sizeof(*d));
	if (!d) {
		close(fd);
		return;
	}
	d->l = l;
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
		d->data = drain_buf(l, dlen);
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
	drain_free(d);
}

int l2_drain_init(struct l2 *l)
{
	pthread_mutex_init(&l->drain_mu, NULL);
	pthread_cond_init(&l->drain_empty, NULL);
	l->drain_ep = epoll_create1(EPOLL_CLOEXEC);
	l->drain_wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	/* The wake-up eventfd is the one entry whose data.ptr is NULL. */
	struct epoll_event wake_ev = {.events = EPOLLIN, .data.ptr = NULL};
	if (l->drain_ep < 0 || l->drain_wake < 0 ||
	    epoll_ctl(l->drain_ep, EPOLL_CTL_ADD, l->drain_wake, &wake_ev) < 0) {
		int r = -errno;
		log_err("l2: cannot set up the drainer's epoll: %s", strerror(errno));
		return r;
	}
	return 0;
}

void *l2_drain_main(void *arg)
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
			int st = l2_conn_pump(d->fd, &d->rp, drain_place, d);
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

void l2_drain_stop(struct l2 *l)
{
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
		drain_free(d);
	}
	close_fd(l->drain_ep);
	close_fd(l->drain_wake);
}
