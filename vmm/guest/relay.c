/* The guest init's byte relay (see relay.h).  libc only. */
#include "vmm/guest/relay.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

void guest_relay_init(struct guest_relay *r)
{
	memset(r, 0, sizeof(*r));
}

static void conn_close(struct guest_relay_conn *c)
{
	for (int i = 0; i < 2; i++) {
		if (c->fd[i] >= 0)
			close(c->fd[i]);
		c->fd[i] = -1;
		free(c->half[i].buf);
		c->half[i].buf = NULL;
	}
	free(c->replay);
	c->replay = NULL;
}

/* End |c| with a reset for its client: SO_LINGER 0 turns the close into a
 * TCP RST, so a response cut short is not mistaken for a whole one. */
static void conn_reset(struct guest_relay_conn *c)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };
	if (c->fd[0] >= 0)
		setsockopt(c->fd[0], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	conn_close(c);
}

void guest_relay_set_reopen(struct guest_relay *r, guest_relay_reopen_fn fn, void *arg)
{
	r->reopen = fn;
	r->reopen_arg = arg;
}

static void set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0)
		fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

int guest_relay_add(struct guest_relay *r, int a, int b, bool b_connecting)
{
	if (r->n == GUEST_RELAY_MAX) {
		close(a);
		close(b);
		return -EBUSY;
	}
	struct guest_relay_conn *c = &r->conns[r->n];
	memset(c, 0, sizeof(*c));
	c->fd[0] = a;
	c->fd[1] = b;
	c->connecting = b_connecting;
	c->pf[0] = c->pf[1] = -1;
	for (int i = 0; i < 2; i++) {
		set_nonblock(c->fd[i]);
		c->half[i].buf = malloc(GUEST_RELAY_BUF);
	}
	if (r->reopen)
		c->replay = malloc(GUEST_RELAY_REPLAY_MAX);
	if (!c->half[0].buf || !c->half[1].buf || (r->reopen && !c->replay)) {
		conn_close(c);
		return -ENOMEM;
	}
	r->n++;
	return 0;
}

bool guest_relay_full(const struct guest_relay *r)
{
	return r->n == GUEST_RELAY_MAX;
}

size_t guest_relay_count(const struct guest_relay *r)
{
	return r->n;
}

bool guest_relay_pending(const struct guest_relay *r)
{
	for (size_t k = 0; k < r->n; k++)
		for (int i = 0; i < 2; i++)
			if (r->conns[k].half[i].len || (r->conns[k].half[i].eof && !r->conns[k].half[i].shut))
				return true;
	return false;
}

/* Whether |c| wants to read from fd[i] (into half[i]) or write to fd[i] (from
 * half[1 - i]). */
static bool want_read(const struct guest_relay_conn *c, int i)
{
	const struct guest_relay_half *h = &c->half[i];
	return !(i == 1 && c->connecting) && !h->eof && h->len < GUEST_RELAY_BUF;
}

static bool want_write(const struct guest_relay_conn *c, int i)
{
	return !(i == 1 && c->connecting) && c->half[1 - i].len > 0;
}

size_t guest_relay_poll_set(struct guest_relay *r, struct pollfd *pf)
{
	size_t n = 0;
	for (size_t k = 0; k < r->n; k++) {
		struct guest_relay_conn *c = &r->conns[k];
		for (int i = 0; i < 2; i++) {
			short ev = (short)((want_read(c, i) ? POLLIN : 0) | (want_write(c, i) ? POLLOUT : 0));
			if (i == 1 && c->connecting)
				ev = POLLOUT; /* a connect finishes as writable (or with an error) */
			c->pf[i] = -1;
			if (!ev)
				continue;
			c->pf[i] = (int)n;
			pf[n++] = (struct pollfd){ .fd = c->fd[i], .events = ev };
		}
	}
	return n;
}

/* Keep what a replay needs of |<p, n>|, just read from fd[i]: A's bytes
 * since the last byte from B. */
static void note_replay(struct guest_relay_conn *c, int i, const uint8_t *p, size_t n)
{
	if (i == 1) {
		c->answered = true;
		return;
	}
	if (c->answered) { /* a new request: what came before was answered */
		c->answered = false;
		c->replay_len = 0;
		c->replay_over = false;
	}
	if (!c->replay || c->replay_over)
		return;
	if (n > GUEST_RELAY_REPLAY_MAX - c->replay_len) {
		c->replay_over = true;
		return;
	}
	memcpy(c->replay + c->replay_len, p, n);
	c->replay_len += n;
}

/* Read what fd[i] has into half[i].  Returns false on a failure. */
static bool pull(struct guest_relay_conn *c, int i)
{
	struct guest_relay_half *h = &c->half[i];
	while (want_read(c, i)) {
		if (h->len == 0)
			h->off = 0;
		else if (h->off + h->len == GUEST_RELAY_BUF) {
			memmove(h->buf, h->buf + h->off, h->len);
			h->off = 0;
		}
		uint8_t *at = h->buf + h->off + h->len;
		ssize_t n = recv(c->fd[i], at, GUEST_RELAY_BUF - h->off - h->len, 0);
		if (n > 0) {
			h->len += (size_t)n;
			note_replay(c, i, at, (size_t)n);
			continue;
		}
		if (n == 0) {
			h->eof = true;
			return true;
		}
		if (errno == EINTR)
			continue;
		return errno == EAGAIN || errno == EWOULDBLOCK;
	}
	return true;
}

/* Write half[1 - i]'s bytes to fd[i].  Returns false on a failure. */
static bool push(struct guest_relay *r, struct guest_relay_conn *c, int i)
{
	struct guest_relay_half *h = &c->half[1 - i];
	while (want_write(c, i)) {
		ssize_t n = send(c->fd[i], h->buf + h->off, h->len, MSG_NOSIGNAL);
		if (n > 0) {
			h->off += (size_t)n;
			h->len -= (size_t)n;
			r->bytes[1 - i] += (uint64_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
	}
	return true;
}

/* One connection after poll.  Returns false when it has to end at once. */
static bool conn_service(struct guest_relay *r, struct guest_relay_conn *c, const struct pollfd *pf)
{
	short rev[2];
	for (int i = 0; i < 2; i++)
		rev[i] = c->pf[i] >= 0 ? pf[c->pf[i]].revents : 0;
	if (!rev[0] && !rev[1])
		return true; /* nothing happened: every live connection waits on a polled descriptor */
	if (rev[0] & POLLNVAL || rev[1] & POLLNVAL)
		return false;
	if (c->connecting && rev[1]) {
		int err = 0;
		socklen_t len = sizeof(err);
		if (getsockopt(c->fd[1], SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0)
			return false;
		c->connecting = false;
	}
	/* Until the source would block or the buffer is full, and until the
	 * destination would block or the buffer is empty; what is left waits
	 * for the next poll (level-triggered, so nothing is missed). */
	for (int i = 0; i < 2; i++)
		if (!pull(c, i) || !push(r, c, 1 - i))
			return false;
	for (int i = 0; i < 2; i++) {
		struct guest_relay_half *h = &c->half[i];
		if (h->eof && h->len == 0 && !h->shut && !(i == 0 && c->connecting)) {
			/* ENOTCONN: the other side is gone already; nothing to tell it. */
			if (shutdown(c->fd[1 - i], SHUT_WR) < 0 && errno != ENOTCONN)
				return false;
			h->shut = true;
		}
	}
	return true;
}

void guest_relay_service(struct guest_relay *r, const struct pollfd *pf)
{
	for (size_t k = 0; k < r->n; k++) {
		struct guest_relay_conn *c = &r->conns[k];
		bool ok = conn_service(r, c, pf);
		if (!ok || (c->half[0].shut && c->half[1].shut)) {
			c->dead = true;
			if (ok)
				r->ended++;
			else
				r->failed++;
		}
	}
	size_t w = 0;
	for (size_t k = 0; k < r->n; k++) {
		if (r->conns[k].dead) {
			conn_close(&r->conns[k]);
			continue;
		}
		if (w != k)
			r->conns[w] = r->conns[k];
		w++;
	}
	r->n = w;
}

/* Give |c| a new stream and its client's unanswered bytes again; false when
 * it cannot be replayed. */
static bool conn_replay(struct guest_relay *r, struct guest_relay_conn *c)
{
	if (!r->reopen || !c->replay || c->answered || c->replay_over || c->half[1].eof)
		return false;
	int fd;
	bool connecting;
	if (r->reopen(r->reopen_arg, &fd, &connecting) < 0)
		return false;
	close(c->fd[1]);
	c->fd[1] = fd;
	set_nonblock(fd);
	c->connecting = connecting;
	/* Everything A sent since the last answer byte, whether the old stream
	 * took it or it still waited in half[0]: the new stream gets it all. */
	struct guest_relay_half *up = &c->half[0], *down = &c->half[1];
	memcpy(up->buf, c->replay, c->replay_len);
	up->off = 0;
	up->len = c->replay_len;
	up->shut = false; /* an end of stream from A goes to the new stream too */
	down->off = down->len = 0;
	down->eof = down->shut = false;
	return true;
}

void guest_relay_restart(struct guest_relay *r)
{
	size_t w = 0;
	for (size_t k = 0; k < r->n; k++) {
		struct guest_relay_conn *c = &r->conns[k];
		if (conn_replay(r, c)) {
			r->replayed++;
		} else {
			conn_reset(c);
			r->failed++;
			continue;
		}
		if (w != k)
			r->conns[w] = *c;
		w++;
	}
	r->n = w;
}

void guest_relay_cleanup(struct guest_relay *r)
{
	for (size_t k = 0; k < r->n; k++)
		conn_close(&r->conns[k]);
	r->n = 0;
}
