/* virtio-vsock (virtio 1.2, 5.10 "Socket Device"), stream sockets only, with
 * Firecracker's unix-socket scheme on the host side (see kvmm.h).
 *
 * Queues: rx (0) holds device-writable buffers we fill with packets for the
 * guest, tx (1) holds the guest's packets, event (2) is never used (we never
 * migrate, so never send TRANSPORT_RESET).  A packet is a 44-byte header
 * (little-endian):
 *   0 src_cid u64   8 dst_cid u64   16 src_port u32   20 dst_port u32
 *   24 len u32      28 type u16     30 op u16         32 flags u32
 *   36 buf_alloc u32                40 fwd_cnt u32
 * then |len| payload bytes.  The driver may split both over descriptors
 * however it likes, so a chain is treated as one byte stream.
 *
 * Flow control (5.10.6.3): each side tells the other how much it can buffer
 * (buf_alloc) and how much it has consumed so far (fwd_cnt, a wrapping
 * counter); a sender keeps what it has sent minus the peer's fwd_cnt within
 * the peer's buf_alloc.  We advertise VSOCK_TX_BUF and count as consumed what
 * we wrote to the host socket; we read from the host socket only as much as
 * the guest has room for.
 *
 * Threads: notify() and reset() may come from a vCPU thread, but connections
 * are created and destroyed with kvmm_loop_add/del, which only the loop
 * thread may call while the loop runs.  So they just note the work and write
 * the device's eventfd, and everything else happens on the loop thread under
 * the device mutex. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#define LOG_COMPONENT "kvmm"
#include "common/common.h"
#include "vmm/kvmm/guest_mem.h"
#include "common/bytes.h"
#include "vmm/kvmm/loop.h"
#include "vmm/kvmm/virtio_mmio.h"
#include "vmm/kvmm/virtio_vsock.h"
#include "vmm/kvmm/virtq.h"

#define Q_RX 0
#define Q_TX 1
#define Q_EVENT 2
#define VIRTIO_VSOCK_F_STREAM 0

/* The most chains one call takes from a queue before it lets the loop serve
 * other descriptors: a guest refilling its ring as fast as we drain it must
 * not hold the loop. */
#define CHAINS_PER_TURN (2 * VIRTQ_MAX_SIZE)
#define ACCEPTS_PER_TURN 16
#define CONNECT_LINE_MAX 20 /* "CONNECT 4294967295\n" and a NUL */

/* A byte ring: |len| bytes from |head|, wrapping at |cap|. */
struct vsock_ring {
	uint8_t *buf;
	uint32_t cap, head, len;
};

enum conn_state {
	CONN_FREE = 0,
	CONN_HANDSHAKE,	    /* host client accepted, reading its CONNECT line */
	CONN_WAIT_RESPONSE, /* REQUEST owed or sent to the guest, waiting for its answer */
	CONN_ESTABLISHED,
	CONN_DEAD,	    /* host socket closed; an RST is owed to the guest, then the slot is free */
};

struct vsock_conn {
	struct virtio_vsock *v;
	enum conn_state state;
	int fd;
	bool registered;
	uint32_t events; /* what the loop watches, when registered */
	uint32_t local_port, peer_port;
	char line[CONNECT_LINE_MAX];
	size_t line_len;
	/* guest -> host: bytes not yet written to the host socket */
	struct vsock_ring tx;
	uint32_t tx_cnt;		/* payload bytes the guest sent */
	uint32_t fwd_cnt, fwd_cnt_sent; /* of those, written to the host; as last told to the guest */
	uint32_t tx_ours;		/* bytes at the front of |tx| that are ours ("OK <port>\n"), not the guest's */
	uint8_t guest_shut;		/* VSOCK_SHUTDOWN_* flags the guest sent */
	bool shut_wr_done;		/* the guest's SEND shutdown passed on to the host socket */
	/* host -> guest: bytes read from the host socket, not yet in a packet */
	struct vsock_ring rx;
	uint32_t rx_cnt; /* payload bytes sent to the guest */
	uint32_t peer_buf_alloc, peer_fwd_cnt;
	bool host_eof, host_hup, shutdown_sent;
	/* control packets owed to the guest */
	bool need_request, request_sent, need_response, need_rst, need_credit_update, need_credit_request,
		credit_request_sent;
};

/* What one packet to the guest says. */
struct pkt {
	uint32_t local_port, peer_port;
	uint16_t op;
	uint32_t flags;
	uint32_t fwd_cnt;
	uint32_t len; /* payload from the connection's rx ring */
	struct vsock_conn *c;
};

/* ---- byte rings ---------------------------------------------------------------------------------------------- */

static int ring_alloc(struct vsock_ring *r, uint32_t cap)
{
	r->buf = malloc(cap);
	if (!r->buf)
		return -ENOMEM;
	r->cap = cap;
	r->head = r->len = 0;
	return 0;
}

static void ring_free(struct vsock_ring *r)
{
	free(r->buf);
	memset(r, 0, sizeof(*r));
}

static uint32_t ring_room(const struct vsock_ring *r)
{
	return r->cap - r->len;
}

/* The used bytes (|used|) or the free space (!|used|) as up to two spans. */
static int ring_iov(const struct vsock_ring *r, bool used, struct iovec iov[2])
{
	uint32_t start = used ? r->head : (r->head + r->len) % r->cap;
	uint32_t n = used ? r->len : r->cap - r->len;
	if (n == 0)
		return 0;
	uint32_t first = r->cap - start < n ? r->cap - start : n;
	iov[0] = (struct iovec){ .iov_base = r->buf + start, .iov_len = first };
	if (first == n)
		return 1;
	iov[1] = (struct iovec){ .iov_base = r->buf, .iov_len = n - first };
	return 2;
}

static void ring_put(struct vsock_ring *r, const void *p, uint32_t n)
{
	const uint8_t *s = p;
	while (n) {
		uint32_t tail = (r->head + r->len) % r->cap;
		uint32_t k = r->cap - tail < n ? r->cap - tail : n;
		memcpy(r->buf + tail, s, k);
		r->len += k;
		s += k;
		n -= k;
	}
}

static void ring_consume(struct vsock_ring *r, uint32_t n)
{
	r->head = (r->head + n) % r->cap;
	r->len -= n;
}

/* ---- connections --------------------------------------------------------------------------------------------- */

static struct vsock_conn *conn_find(struct virtio_vsock *v, uint32_t local_port, uint32_t peer_port)
{
	for (unsigned i = 0; i < VSOCK_MAX_CONNS; i++) {
		struct vsock_conn *c = &v->conns[i];
		if (c->state != CONN_FREE && c->state != CONN_HANDSHAKE && c->local_port == local_port &&
		    c->peer_port == peer_port)
			return c;
	}
	return NULL;
}

static struct vsock_conn *conn_slot(struct virtio_vsock *v)
{
	for (unsigned i = 0; i < VSOCK_MAX_CONNS; i++)
		if (v->conns[i].state == CONN_FREE)
			return &v->conns[i];
	return NULL;
}

static void conn_close_fd(struct vsock_conn *c)
{
	if (c->registered)
		kvmm_loop_del(c->v->loop, c->fd);
	c->registered = false;
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

/* Forget |c| entirely: nothing more is owed to the guest. */
static void conn_free(struct vsock_conn *c)
{
	struct virtio_vsock *v = c->v;
	conn_close_fd(c);
	ring_free(&c->tx);
	ring_free(&c->rx);
	memset(c, 0, sizeof(*c));
	c->v = v;
	c->fd = -1;
}

/* Close the host side and owe the guest an RST (or nothing, if it never
 * heard of the connection). */
static void conn_kill(struct vsock_conn *c, const char *why)
{
	log_debug("vsock: connection %u <-> guest port %u reset: %s", c->local_port, c->peer_port, why);
	if (c->state == CONN_HANDSHAKE || (c->state == CONN_WAIT_RESPONSE && !c->request_sent)) {
		conn_free(c);
		return;
	}
	uint32_t lp = c->local_port, pp = c->peer_port;
	conn_free(c);
	c->state = CONN_DEAD;
	c->local_port = lp;
	c->peer_port = pp;
	c->need_rst = true;
}

/* Owe an RST for a packet that has no connection (dropped when the queue is
 * full: the guest's own timeouts cover that). */
static void orphan_rst(struct virtio_vsock *v, uint32_t local_port, uint32_t peer_port)
{
	if (v->rst_n == VSOCK_RST_QUEUE) {
		log_debug("vsock: RST queue full; dropping the RST to guest port %u", peer_port);
		return;
	}
	unsigned i = (v->rst_head + v->rst_n++) % VSOCK_RST_QUEUE;
	v->rst[i].local_port = local_port;
	v->rst[i].peer_port = peer_port;
}

/* How many more payload bytes the guest can take on |c|. */
static uint32_t peer_credit(const struct vsock_conn *c)
{
	uint32_t in_flight = c->rx_cnt - c->peer_fwd_cnt; /* wrapping counters, by design */
	return in_flight >= c->peer_buf_alloc ? 0 : c->peer_buf_alloc - in_flight;
}

static void conn_fd_event(void *ctx, int fd, uint32_t events);

static uint32_t conn_wanted_events(const struct vsock_conn *c)
{
	switch (c->state) {
	case CONN_HANDSHAKE:
		return EPOLLIN;
	case CONN_ESTABLISHED: {
		uint32_t e = 0;
		uint32_t credit = peer_credit(c);
		if (!c->host_eof && !(c->guest_shut & VSOCK_SHUTDOWN_RCV) && ring_room(&c->rx) && credit > c->rx.len)
			e |= EPOLLIN;
		if (c->tx.len)
			e |= EPOLLOUT;
		return e;
	}
	default:
		return 0; /* EPOLLHUP and EPOLLERR still arrive */
	}
}

/* Tell the loop what |c| waits for.  After EPOLLHUP the socket is
 * unregistered: hang-up is level-triggered and would fire forever while we
 * wait for the guest's credit; reads no longer block then, so conn_progress()
 * reads directly. */
static int conn_watch(struct vsock_conn *c)
{
	if (c->fd < 0 || c->host_hup)
		return 0;
	uint32_t e = conn_wanted_events(c);
	if (!c->registered) {
		int r = kvmm_loop_add(c->v->loop, c->fd, e, conn_fd_event, c, c->v->lock);
		if (r < 0)
			return r;
		c->registered = true;
		c->events = e;
	} else if (e != c->events) {
		int r = kvmm_loop_mod(c->v->loop, c->fd, e);
		if (r < 0)
			return r;
		c->events = e;
	}
	return 0;
}

/* Write what the guest sent to the host socket.  Returns 0 or -errno (the
 * connection is then beyond saving). */
static int conn_flush(struct vsock_conn *c)
{
	while (c->tx.len) {
		struct iovec iov[2];
		int n_iov = ring_iov(&c->tx, true, iov);
		struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t)n_iov };
		ssize_t n = sendmsg(c->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			return -errno;
		}
		ring_consume(&c->tx, (uint32_t)n);
		uint32_t ours = c->tx_ours < (uint32_t)n ? c->tx_ours : (uint32_t)n;
		c->tx_ours -= ours;
		c->fwd_cnt += (uint32_t)n - ours;
	}
	/* A guest that used up its credit waits for us to say there is room
	 * again; but not for every few bytes: each packet we send carries
	 * fwd_cnt anyway. */
	if (c->fwd_cnt - c->fwd_cnt_sent >= VSOCK_TX_BUF / 4)
		c->need_credit_update = true;
	return 0;
}

/* Read from the host socket as much as the guest has room for. */
static void conn_read(struct vsock_conn *c)
{
	for (;;) {
		uint32_t credit = peer_credit(c);
		uint32_t room = ring_room(&c->rx);
		if (credit <= c->rx.len || room == 0 || c->host_eof || (c->guest_shut & VSOCK_SHUTDOWN_RCV))
			return;
		if (room > credit - c->rx.len)
			room = credit - c->rx.len;
		struct iovec iov[2];
		int n_iov = ring_iov(&c->rx, false, iov);
		if (n_iov == 2 && iov[0].iov_len >= room) {
			iov[0].iov_len = room;
			n_iov = 1;
		} else if (n_iov == 2) {
			iov[1].iov_len = room - iov[0].iov_len;
		} else {
			iov[0].iov_len = room;
		}
		ssize_t n = readv(c->fd, iov, n_iov);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				conn_kill(c, strerror(errno));
			return;
		}
		if (n == 0) {
			c->host_eof = true;
			return;
		}
		c->rx.len += (uint32_t)n;
	}
}

/* After anything changed on |c|: pass on shutdowns, finish connections
 * both sides are done with, read what can be read, watch the right events. */
static void conn_progress(struct vsock_conn *c)
{
	if (c->state != CONN_ESTABLISHED)
		goto watch;
	if (c->host_hup)
		conn_read(c);
	if (c->state != CONN_ESTABLISHED)
		return;
	if (c->tx.len == 0 && (c->guest_shut & VSOCK_SHUTDOWN_SEND) && !c->shut_wr_done) {
		shutdown(c->fd, SHUT_WR);
		c->shut_wr_done = true;
	}
	/* Nothing can flow any more: the guest closed its socket, or each side
	 * has said it sends no more, and what the guest sent is delivered. */
	if (c->tx.len == 0 && (c->guest_shut == (VSOCK_SHUTDOWN_RCV | VSOCK_SHUTDOWN_SEND) ||
			       ((c->guest_shut & VSOCK_SHUTDOWN_SEND) && c->shutdown_sent))) {
		conn_kill(c, "closed by both sides");
		return;
	}
	if (c->host_hup && c->tx.len) {
		conn_kill(c, "the host side hung up with data still to write");
		return;
	}
	if (c->rx.len && peer_credit(c) == 0 && !c->credit_request_sent)
		c->need_credit_request = true;
watch:
	if (c->fd >= 0 && conn_watch(c) < 0)
		conn_kill(c, "cannot watch the host socket");
}

/* ---- packets to the guest (the rx queue) --------------------------------------------------------------------- */

/* The next packet |c| owes the guest, if any.  Order matters: an RST ends
 * everything; data goes before the SHUTDOWN that says there is no more. */
static bool conn_next_packet(struct vsock_conn *c, struct pkt *p)
{
	*p = (struct pkt){ .local_port = c->local_port, .peer_port = c->peer_port, .fwd_cnt = c->fwd_cnt, .c = c };
	if (c->need_rst) {
		p->op = VSOCK_OP_RST;
		return true;
	}
	if (c->state == CONN_WAIT_RESPONSE && c->need_request) {
		p->op = VSOCK_OP_REQUEST;
		return true;
	}
	if (c->state != CONN_ESTABLISHED)
		return false;
	if (c->need_response) {
		p->op = VSOCK_OP_RESPONSE;
		return true;
	}
	uint32_t credit = peer_credit(c);
	if (c->rx.len && credit) {
		p->op = VSOCK_OP_RW;
		p->len = c->rx.len < credit ? c->rx.len : credit;
		if (p->len > VSOCK_MAX_PKT)
			p->len = VSOCK_MAX_PKT;
		return true;
	}
	if (c->host_eof && c->rx.len == 0 && !c->shutdown_sent) {
		p->op = VSOCK_OP_SHUTDOWN;
		p->flags = VSOCK_SHUTDOWN_SEND | (c->host_hup ? VSOCK_SHUTDOWN_RCV : 0);
		return true;
	}
	if (c->need_credit_update) {
		p->op = VSOCK_OP_CREDIT_UPDATE;
		return true;
	}
	if (c->need_credit_request) {
		p->op = VSOCK_OP_CREDIT_REQUEST;
		return true;
	}
	return false;
}

static bool next_packet(struct virtio_vsock *v, struct pkt *p)
{
	if (v->rst_n) {
		*p = (struct pkt){ .local_port = v->rst[v->rst_head].local_port,
				   .peer_port = v->rst[v->rst_head].peer_port,
				   .op = VSOCK_OP_RST };
		return true;
	}
	for (unsigned k = 0; k < VSOCK_MAX_CONNS; k++) {
		unsigned i = (v->rr + k) % VSOCK_MAX_CONNS;
		if (v->conns[i].state != CONN_FREE && conn_next_packet(&v->conns[i], p)) {
			v->rr = i + 1;
			return true;
		}
	}
	return false;
}

/* Scatter |<src, n>| into the chain's writable buffers at stream offset
 * |*off|. */
static int chain_put(const struct guest_mem *m, const struct virtq_chain *ch, uint64_t *off, const void *src,
		     uint64_t n)
{
	const uint8_t *s = src;
	uint64_t pos = 0;
	for (size_t i = 0; i < ch->n && n; i++) {
		const struct virtq_buf *b = &ch->bufs[i];
		if (!b->write)
			continue;
		if (*off >= pos + b->len) {
			pos += b->len;
			continue;
		}
		uint64_t in = *off - pos, k = b->len - in < n ? b->len - in : n;
		if (guest_mem_write(m, b->gpa + in, s, (size_t)k) < 0)
			return -EFAULT;
		s += k;
		n -= k;
		*off += k;
		pos += b->len;
	}
	return n ? -ENOSPC : 0;
}

/* Fill |ch| with |p|.  Returns the bytes written. */
static uint32_t write_packet(struct virtio_vsock *v, const struct virtq_chain *ch, struct pkt *p)
{
	uint64_t room = ch->write_len - VSOCK_HDR_LEN;
	if (p->len > room)
		p->len = (uint32_t)room;
	if (p->op == VSOCK_OP_RW && p->len == 0)
		return 0; /* a buffer with no room for data: hand it back empty */
	uint8_t h[VSOCK_HDR_LEN];
	put_le64(h, VSOCK_HOST_CID);
	put_le64(h + 8, v->guest_cid);
	put_le32(h + 16, p->local_port);
	put_le32(h + 20, p->peer_port);
	put_le32(h + 24, p->len);
	put_le16(h + 28, VSOCK_TYPE_STREAM);
	put_le16(h + 30, p->op);
	put_le32(h + 32, p->flags);
	put_le32(h + 36, VSOCK_TX_BUF);
	put_le32(h + 40, p->fwd_cnt);
	uint64_t off = 0;
	if (chain_put(v->mmio.mem, ch, &off, h, sizeof(h)) < 0)
		return 0;
	if (p->len) {
		struct iovec iov[2];
		int n_iov = ring_iov(&p->c->rx, true, iov);
		uint32_t left = p->len;
		for (int i = 0; i < n_iov && left; i++) {
			uint32_t k = iov[i].iov_len < left ? (uint32_t)iov[i].iov_len : left;
			if (chain_put(v->mmio.mem, ch, &off, iov[i].iov_base, k) < 0)
				return 0;
			left -= k;
		}
	}
	return (uint32_t)off;
}

/* The packet is in the guest's hands: update what it said. */
static void packet_sent(struct virtio_vsock *v, const struct pkt *p)
{
	v->rx_packets++;
	struct vsock_conn *c = p->c;
	if (!c) {
		v->rst_head = (v->rst_head + 1) % VSOCK_RST_QUEUE;
		v->rst_n--;
		v->resets_sent++;
		return;
	}
	c->fwd_cnt_sent = c->fwd_cnt;
	c->need_credit_update = false;
	switch (p->op) {
	case VSOCK_OP_RST:
		v->resets_sent++;
		conn_free(c);
		return;
	case VSOCK_OP_REQUEST:
		c->need_request = false;
		c->request_sent = true;
		break;
	case VSOCK_OP_RESPONSE:
		c->need_response = false;
		break;
	case VSOCK_OP_RW:
		ring_consume(&c->rx, p->len);
		c->rx_cnt += p->len;
		break;
	case VSOCK_OP_SHUTDOWN:
		c->shutdown_sent = true;
		break;
	case VSOCK_OP_CREDIT_REQUEST:
		c->need_credit_request = false;
		c->credit_request_sent = true;
		break;
	default:
		break;
	}
	conn_progress(c);
}

/* Fill the guest's rx buffers with what is owed to it. */
static void deliver(struct virtio_vsock *v)
{
	struct virtq *q = virtio_mmio_queue(&v->mmio, Q_RX);
	struct virtq_chain ch;
	bool pushed = false;
	if (!q)
		return;
	for (unsigned turn = 0; turn < CHAINS_PER_TURN; turn++) {
		struct pkt p;
		if (!next_packet(v, &p))
			break;
		int r = virtq_pop(q, v->mmio.mem, &ch);
		if (r == -EAGAIN)
			break;
		if (r == -EPROTO) {
			virtio_mmio_needs_reset(&v->mmio, "vsock rx: avail index runs ahead of the queue");
			break;
		}
		uint32_t used = 0;
		if (r < 0 || ch.read_len || ch.write_len < VSOCK_HDR_LEN) {
			log_debug("vsock: unusable rx buffer (head %u): %s", ch.head,
				  r < 0 ? strerror(-r) : "too small or device-readable");
			v->bad_packets++;
		} else {
			used = write_packet(v, &ch, &p);
			if (used)
				packet_sent(v, &p);
		}
		if (ch.head != VIRTQ_NO_HEAD && virtq_push(q, v->mmio.mem, ch.head, used) == 0)
			pushed = true;
	}
	if (pushed && virtq_should_interrupt(q, v->mmio.mem))
		virtio_mmio_interrupt(&v->mmio, VIRTIO_MMIO_INT_VRING);
}

/* ---- packets from the guest (the tx queue) ------------------------------------------------------------------- */

/* Copy |n| bytes of the chain's readable stream from offset |off| into the
 * ring, or into |dst| when |r| is NULL. */
static int chain_get(const struct guest_mem *m, const struct virtq_chain *ch, uint64_t off, void *dst,
		     struct vsock_ring *r, uint64_t n)
{
	uint8_t *d = dst;
	uint64_t pos = 0;
	for (size_t i = 0; i < ch->n && n; i++) {
		const struct virtq_buf *b = &ch->bufs[i];
		if (b->write)
			break;
		if (off >= pos + b->len) {
			pos += b->len;
			continue;
		}
		uint64_t in = off - pos, k = b->len - in < n ? b->len - in : n;
		const void *src = guest_mem_ptr(m, b->gpa + in, k);
		if (!src)
			return -EFAULT;
		if (r) {
			ring_put(r, src, (uint32_t)k);
		} else {
			memcpy(d, src, (size_t)k);
			d += k;
		}
		n -= k;
		off += k;
		pos += b->len;
	}
	return n ? -EINVAL : 0;
}

/* The guest asks for host port |h->dst_port|: connect to "{uds}_{port}". */
static void guest_connect(struct virtio_vsock *v, uint32_t local_port, uint32_t peer_port, uint32_t buf_alloc,
			  uint32_t fwd_cnt)
{
	struct vsock_conn *c = conn_slot(v);
	if (!c) {
		log_warn("vsock: the guest opened more than %d connections; refusing one to port %u",
			 VSOCK_MAX_CONNS, local_port);
		orphan_rst(v, local_port, peer_port);
		return;
	}
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int n = snprintf(sa.sun_path, sizeof(sa.sun_path), "%s_%u", v->uds_path, local_port);
	if (n < 0 || (size_t)n >= sizeof(sa.sun_path)) { /* init checked that the longest port fits */
		orphan_rst(v, local_port, peer_port);
		return;
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		log_warn("vsock: socket for the guest's connection to port %u: %s", local_port, strerror(errno));
		orphan_rst(v, local_port, peer_port);
		return;
	}
	/* A unix connect never waits: it succeeds, or fails at once (EAGAIN
	 * when the listener's backlog is full). */
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		log_debug("vsock: guest connection to port %u: nobody accepts on %s: %s", local_port, sa.sun_path,
			  strerror(errno));
		close(fd);
		orphan_rst(v, local_port, peer_port);
		return;
	}
	if (ring_alloc(&c->tx, VSOCK_TX_BUF + CONNECT_LINE_MAX) < 0 || ring_alloc(&c->rx, VSOCK_RX_STAGE) < 0) {
		ring_free(&c->tx);
		close(fd);
		log_warn("vsock: out of memory for a connection to port %u", local_port);
		orphan_rst(v, local_port, peer_port);
		return;
	}
	c->fd = fd;
	c->state = CONN_ESTABLISHED;
	c->local_port = local_port;
	c->peer_port = peer_port;
	c->peer_buf_alloc = buf_alloc;
	c->peer_fwd_cnt = fwd_cnt;
	c->need_response = true;
	conn_progress(c);
}

static void tx_packet(struct virtio_vsock *v, const struct virtq_chain *ch)
{
	uint8_t h[VSOCK_HDR_LEN];
	if (ch->read_len < VSOCK_HDR_LEN || chain_get(v->mmio.mem, ch, 0, h, NULL, sizeof(h)) < 0) {
		log_debug("vsock: tx packet shorter than its header");
		v->bad_packets++;
		return;
	}
	uint64_t src_cid = get_le64(h), dst_cid = get_le64(h + 8);
	uint32_t src_port = get_le32(h + 16), dst_port = get_le32(h + 20), len = get_le32(h + 24);
	uint16_t type = get_le16(h + 28), op = get_le16(h + 30);
	uint32_t flags = get_le32(h + 32), buf_alloc = get_le32(h + 36), fwd_cnt = get_le32(h + 40);

	if (len > VSOCK_MAX_PKT || len > ch->read_len - VSOCK_HDR_LEN || (op != VSOCK_OP_RW && len)) {
		log_debug("vsock: tx packet op %u with payload length %u in a %llu-byte chain", op, len,
			  (unsigned long long)ch->read_len);
		v->bad_packets++;
		return;
	}
	/* A guest speaks only for itself, and only to us. */
	if (src_cid != v->guest_cid || dst_cid != VSOCK_HOST_CID) {
		log_debug("vsock: tx packet from CID %llu to CID %llu dropped", (unsigned long long)src_cid,
			  (unsigned long long)dst_cid);
		v->bad_packets++;
		return;
	}
	struct vsock_conn *c = conn_find(v, dst_port, src_port);
	if (type != VSOCK_TYPE_STREAM) {
		v->bad_packets++;
		if (c)
			conn_kill(c, "not a stream packet");
		else if (op != VSOCK_OP_RST)
			orphan_rst(v, dst_port, src_port);
		return;
	}
	if (!c) {
		if (op == VSOCK_OP_REQUEST)
			guest_connect(v, dst_port, src_port, buf_alloc, fwd_cnt);
		else if (op != VSOCK_OP_RST)
			orphan_rst(v, dst_port, src_port);
		return;
	}
	if (c->state == CONN_DEAD) {
		if (op == VSOCK_OP_RST)
			conn_free(c); /* both sides reset it: nothing owed */
		return;
	}
	if (op == VSOCK_OP_RST) {
		/* host clients see their socket closed */
		conn_free(c);
		return;
	}
	if (c->state == CONN_WAIT_RESPONSE) {
		if (op != VSOCK_OP_RESPONSE || !c->request_sent) {
			conn_kill(c, "expected a RESPONSE");
			return;
		}
		c->state = CONN_ESTABLISHED;
		char ok[32];
		int n = snprintf(ok, sizeof(ok), "OK %u\n", c->local_port);
		ring_put(&c->tx, ok, (uint32_t)n); /* the ring is empty and has room for it beyond buf_alloc */
		c->tx_ours = (uint32_t)n;
	}
	c->peer_buf_alloc = buf_alloc;
	c->peer_fwd_cnt = fwd_cnt;
	c->credit_request_sent = false;
	switch (op) {
	case VSOCK_OP_RESPONSE:
		break; /* handled above; a second one is harmless */
	case VSOCK_OP_REQUEST:
		conn_kill(c, "REQUEST on an open connection");
		return;
	case VSOCK_OP_SHUTDOWN:
		c->guest_shut |= (uint8_t)(flags & (VSOCK_SHUTDOWN_RCV | VSOCK_SHUTDOWN_SEND));
		if (c->guest_shut & VSOCK_SHUTDOWN_RCV)
			ring_consume(&c->rx, c->rx.len); /* nobody will read it */
		break;
	case VSOCK_OP_RW:
		if (c->guest_shut & VSOCK_SHUTDOWN_SEND) {
			conn_kill(c, "data after the guest's SEND shutdown");
			return;
		}
		/* What the guest may have in flight is what we advertised (the
		 * ring has room for that plus our OK line). */
		if ((uint64_t)(c->tx_cnt - c->fwd_cnt) + len > VSOCK_TX_BUF) {
			conn_kill(c, "the guest sent more than its credit");
			return;
		}
		if (chain_get(v->mmio.mem, ch, VSOCK_HDR_LEN, NULL, &c->tx, len) < 0) {
			conn_kill(c, "payload outside the chain");
			return;
		}
		c->tx_cnt += len;
		break;
	case VSOCK_OP_CREDIT_UPDATE:
		break;
	case VSOCK_OP_CREDIT_REQUEST:
		c->need_credit_update = true;
		break;
	default:
		conn_kill(c, "unknown op");
		return;
	}
	if (c->tx.len) {
		int r = conn_flush(c);
		if (r < 0) {
			conn_kill(c, strerror(-r));
			return;
		}
	}
	conn_progress(c);
}

static void take_tx(struct virtio_vsock *v)
{
	struct virtq *q = virtio_mmio_queue(&v->mmio, Q_TX);
	struct virtq_chain ch;
	bool pushed = false;
	if (!q)
		return;
	for (unsigned turn = 0;; turn++) {
		if (turn == CHAINS_PER_TURN) {
			/* More later, after the loop's other descriptors. */
			uint64_t one = 1;
			if (write(v->kick_fd, &one, sizeof(one)) < 0)
				log_debug("vsock: re-arming the kick eventfd: %s", strerror(errno));
			break;
		}
		int r = virtq_pop(q, v->mmio.mem, &ch);
		if (r == -EAGAIN)
			break;
		if (r == -EPROTO) {
			virtio_mmio_needs_reset(&v->mmio, "vsock tx: avail index runs ahead of the queue");
			break;
		}
		v->tx_packets++;
		if (r < 0) {
			log_debug("vsock: bad tx descriptor chain at head %u: %s", ch.head, strerror(-r));
			v->bad_packets++;
		} else {
			tx_packet(v, &ch);
		}
		if (ch.head != VIRTQ_NO_HEAD && virtq_push(q, v->mmio.mem, ch.head, 0) == 0)
			pushed = true;
	}
	if (pushed && virtq_should_interrupt(q, v->mmio.mem))
		virtio_mmio_interrupt(&v->mmio, VIRTIO_MMIO_INT_VRING);
}

/* ---- host sockets -------------------------------------------------------------------------------------------- */

static void drop_all(struct virtio_vsock *v)
{
	for (unsigned i = 0; i < VSOCK_MAX_CONNS; i++)
		if (v->conns[i].state != CONN_FREE)
			conn_free(&v->conns[i]);
	v->rst_head = v->rst_n = 0;
	v->reset_pending = false;
}

static uint32_t alloc_local_port(struct virtio_vsock *v)
{
	for (;;) {
		uint32_t p = v->next_port;
		v->next_port = p == UINT32_MAX - 1 ? VSOCK_FIRST_HOST_PORT : p + 1;
		bool used = false;
		for (unsigned i = 0; i < VSOCK_MAX_CONNS && !used; i++)
			used = v->conns[i].state != CONN_FREE && v->conns[i].local_port == p;
		if (!used) /* at most VSOCK_MAX_CONNS ports are taken: this ends */
			return p;
	}
}

/* "CONNECT <port>\n": strictly decimal, no sign, no spaces, fits in 32 bits. */
static int parse_connect(const char *line, size_t len, uint32_t *port)
{
	static const char kw[] = "CONNECT ";
	size_t kl = sizeof(kw) - 1;
	if (len < kl + 2 || memcmp(line, kw, kl) || line[len - 1] != '\n')
		return -EINVAL;
	uint64_t p = 0;
	for (size_t i = kl; i < len - 1; i++) {
		if (line[i] < '0' || line[i] > '9' || i - kl >= 10)
			return -EINVAL;
		p = p * 10 + (uint64_t)(line[i] - '0');
	}
	if (p > UINT32_MAX)
		return -EINVAL;
	*port = (uint32_t)p;
	return 0;
}

/* Read the client's CONNECT line without taking any byte after it: those
 * are the first data for the guest. */
static void handshake(struct vsock_conn *c)
{
	char buf[CONNECT_LINE_MAX];
	size_t want = sizeof(c->line) - 1 - c->line_len;
	ssize_t n = recv(c->fd, buf, want, MSG_PEEK | MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return;
	if (n <= 0) {
		conn_free(c);
		return;
	}
	char *nl = memchr(buf, '\n', (size_t)n);
	size_t take = nl ? (size_t)(nl - buf) + 1 : (size_t)n;
	if (recv(c->fd, c->line + c->line_len, take, MSG_DONTWAIT) != (ssize_t)take) {
		conn_free(c);
		return;
	}
	c->line_len += take;
	if (!nl) {
		if (c->line_len == sizeof(c->line) - 1) {
			log_debug("vsock: host client sent no CONNECT line; closing it");
			conn_free(c);
		}
		return;
	}
	uint32_t port;
	if (parse_connect(c->line, c->line_len, &port) < 0) {
		log_debug("vsock: host client sent a bad CONNECT line; closing it");
		conn_free(c);
		return;
	}
	if (ring_alloc(&c->tx, VSOCK_TX_BUF + CONNECT_LINE_MAX) < 0 || ring_alloc(&c->rx, VSOCK_RX_STAGE) < 0) {
		log_warn("vsock: out of memory for a connection to guest port %u", port);
		conn_free(c);
		return;
	}
	c->peer_port = port;
	c->local_port = alloc_local_port(c->v);
	c->state = CONN_WAIT_RESPONSE;
	c->need_request = true;
	conn_progress(c);
}

static void conn_fd_event(void *ctx, int fd, uint32_t events)
{
	struct vsock_conn *c = ctx;
	struct virtio_vsock *v = c->v;
	(void)fd;
	if (v->reset_pending) {
		drop_all(v);
		return;
	}
	switch (c->state) {
	case CONN_HANDSHAKE:
		handshake(c);
		break;
	case CONN_WAIT_RESPONSE:
		/* We read nothing in this state, so any event is the client
		 * going away. */
		if (events & (EPOLLHUP | EPOLLERR))
			conn_kill(c, "host client left before the guest answered");
		break;
	case CONN_ESTABLISHED:
		if (events & EPOLLERR) {
			conn_kill(c, "host socket error");
			break;
		}
		if (events & EPOLLOUT) {
			int r = conn_flush(c);
			if (r < 0) {
				conn_kill(c, strerror(-r));
				break;
			}
		}
		if (events & EPOLLIN)
			conn_read(c);
		if (c->state == CONN_ESTABLISHED && (events & EPOLLHUP) && !c->host_hup) {
			if (c->registered)
				kvmm_loop_del(v->loop, c->fd);
			c->registered = false;
			c->host_hup = true;
		}
		if (c->state == CONN_ESTABLISHED)
			conn_progress(c);
		break;
	default:
		break;
	}
	deliver(v);
}

static void listener_event(void *ctx, int fd, uint32_t events)
{
	struct virtio_vsock *v = ctx;
	(void)events;
	if (v->reset_pending)
		drop_all(v);
	for (int i = 0; i < ACCEPTS_PER_TURN; i++) {
		int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (cfd < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
				log_warn("vsock: accept on %s: %s", v->uds_path, strerror(errno));
			return;
		}
		struct vsock_conn *c = conn_slot(v);
		if (!c) {
			log_warn("vsock: %d connections open; closing a new host client on %s", VSOCK_MAX_CONNS,
				 v->uds_path);
			close(cfd);
			continue;
		}
		c->fd = cfd;
		c->state = CONN_HANDSHAKE;
		if (conn_watch(c) < 0)
			conn_free(c);
	}
}

/* ---- the device ---------------------------------------------------------------------------------------------- */

void virtio_vsock_process(struct virtio_vsock *v)
{
	if (v->reset_pending)
		drop_all(v);
	take_tx(v);
	deliver(v);
}

static void kick_event(void *ctx, int fd, uint32_t events)
{
	uint64_t n;
	(void)events;
	if (read(fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
		log_debug("vsock: reading the kick eventfd: %s", strerror(errno));
	virtio_vsock_process(ctx);
}

static void kick(struct virtio_vsock *v)
{
	uint64_t one = 1;
	if (write(v->kick_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_warn("vsock: cannot wake the device loop: %s", strerror(errno));
}

static void vsock_notify(struct virtio_mmio_dev *d, uint16_t q)
{
	(void)q; /* rx: new buffers; tx: new packets; event: nothing to do; one pass covers all */
	kick(d->opaque);
}

static void vsock_reset(struct virtio_mmio_dev *d)
{
	struct virtio_vsock *v = d->opaque;
	v->reset_pending = true;
	kick(v);
}

int virtio_vsock_transport_reset(struct virtio_vsock *v)
{
	struct virtq *q = virtio_mmio_queue(&v->mmio, Q_EVENT);
	if (!q)
		return -EAGAIN;
	struct virtq_chain *ch = malloc(sizeof(*ch));
	if (!ch)
		return -ENOMEM;
	int r = virtq_pop(q, v->mmio.mem, ch);
	if (r == -EAGAIN) {
		r = -ENOBUFS;
	} else if (r == 0) {
		/* struct virtio_vsock_event: le32 id, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET = 0. */
		uint8_t ev[4] = { 0 };
		bool fits = ch->n > 0 && ch->bufs[0].write && ch->bufs[0].len >= sizeof(ev) &&
			    guest_mem_write(v->mmio.mem, ch->bufs[0].gpa, ev, sizeof(ev)) == 0;
		virtq_push(q, v->mmio.mem, ch->head, fits ? sizeof(ev) : 0);
		r = fits ? 0 : -EINVAL;
		if (virtq_should_interrupt(q, v->mmio.mem))
			virtio_mmio_interrupt(&v->mmio, VIRTIO_MMIO_INT_VRING);
	} else if (ch->head != VIRTQ_NO_HEAD) {
		virtq_push(q, v->mmio.mem, ch->head, 0);
	}
	free(ch);
	return r;
}

static const struct virtio_dev_ops vsock_ops = {
	.device_id = VIRTIO_ID_VSOCK,
	.num_queues = 3,
	.notify = vsock_notify,
	.reset = vsock_reset,
};

int virtio_vsock_init(struct virtio_vsock *v, uint64_t guest_cid, const char *uds_path, const struct guest_mem *mem,
		      virtio_irq_fn irq, void *irq_ctx, struct kvmm_loop *loop, pthread_mutex_t *lock)
{
	memset(v, 0, sizeof(*v));
	v->listen_fd = v->kick_fd = -1;
	if (guest_cid < 3 || guest_cid > 0xfffffffeull) {
		log_err("vsock: guest CID %llu is reserved; use 3..4294967294", (unsigned long long)guest_cid);
		return -EINVAL;
	}
	if (!uds_path || !*uds_path || strlen(uds_path) + sizeof("_4294967295") > sizeof(v->uds_path)) {
		log_err("vsock: uds_path \"%s\" is empty or too long for a unix socket with a port suffix (at most "
			"%zu bytes)",
			uds_path ? uds_path : "", sizeof(v->uds_path) - sizeof("_4294967295"));
		return -EINVAL;
	}
	if (!loop) {
		log_err("vsock: no device loop");
		return -EINVAL;
	}
	strcpy(v->uds_path, uds_path);
	v->guest_cid = guest_cid;
	v->loop = loop;
	v->lock = lock;
	v->next_port = VSOCK_FIRST_HOST_PORT;
	put_le64(v->config, guest_cid);
	v->conns = calloc(VSOCK_MAX_CONNS, sizeof(*v->conns));
	if (!v->conns) {
		log_err("vsock: out of memory");
		return -ENOMEM;
	}
	for (unsigned i = 0; i < VSOCK_MAX_CONNS; i++) {
		v->conns[i].v = v;
		v->conns[i].fd = -1;
	}
	int r = virtio_mmio_init(&v->mmio, &vsock_ops, v,
				 1ull << VIRTIO_VSOCK_F_STREAM | 1ull << VIRTIO_F_RING_INDIRECT_DESC |
					 1ull << VIRTIO_F_RING_EVENT_IDX,
				 v->config, sizeof(v->config), mem, irq, irq_ctx);
	if (r < 0) {
		log_err("vsock: virtio-mmio setup: %s", strerror(-r));
		goto fail;
	}

	v->kick_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (v->kick_fd < 0) {
		r = -errno;
		log_err("vsock: eventfd: %s", strerror(-r));
		goto fail;
	}
	v->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (v->listen_fd < 0) {
		r = -errno;
		log_err("vsock: socket: %s", strerror(-r));
		goto fail;
	}
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	strcpy(sa.sun_path, uds_path);
	if (bind(v->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		r = -errno;
		log_err("vsock: bind %s: %s%s", uds_path, strerror(-r),
			r == -EADDRINUSE ? " (a stale socket? remove it, or give each VM its own uds_path)" : "");
		close(v->listen_fd);
		v->listen_fd = -1; /* not ours to unlink */
		goto fail;
	}
	if (listen(v->listen_fd, 64) < 0) {
		r = -errno;
		log_err("vsock: listen on %s: %s", uds_path, strerror(-r));
		goto fail;
	}
	r = kvmm_loop_add(loop, v->kick_fd, EPOLLIN, kick_event, v, lock);
	if (r < 0)
		goto fail;
	r = kvmm_loop_add(loop, v->listen_fd, EPOLLIN, listener_event, v, lock);
	if (r < 0)
		goto fail;
	return 0;
fail:
	virtio_vsock_destroy(v);
	return r;
}

void virtio_vsock_destroy(struct virtio_vsock *v)
{
	if (v->conns) {
		for (unsigned i = 0; i < VSOCK_MAX_CONNS; i++)
			conn_free(&v->conns[i]);
		free(v->conns);
		v->conns = NULL;
	}
	if (v->listen_fd >= 0) {
		kvmm_loop_del(v->loop, v->listen_fd);
		close(v->listen_fd);
		unlink(v->uds_path);
		v->listen_fd = -1;
	}
	if (v->kick_fd >= 0) {
		kvmm_loop_del(v->loop, v->kick_fd);
		close(v->kick_fd);
		v->kick_fd = -1;
	}
}
