/* virtio-vsock end to end without KVM: this test is the guest's driver
 * (rings in a malloc'd guest RAM, MMIO register writes under the device
 * mutex, as a vCPU makes them), the device runs on a real device loop thread,
 * and the host side is real unix sockets.  Covers guest->host connect, data
 * both ways and shutdown; host->guest CONNECT/OK, a refused CONNECT and bad
 * CONNECT lines; RST when nobody listens; credit flow control with 4 MiB each
 * way, checked byte for byte; a guest overrunning its credit; malformed
 * packets and rx buffers; and a device reset. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/common.h"
#include "tests/check.h"
#include "vmm/kvmm/guest_mem.h"
#include "common/bytes.h"
#include "vmm/kvmm/loop.h"
#include "vmm/kvmm/virtio_mmio.h"
#include "vmm/kvmm/virtio_vsock.h"
#include "vmm/kvmm/virtq.h"

#define CID 42
#define BASE 0x100000ull
#define MEMSZ 0x400000ull
#define RXQ 0x0000ull
#define TXQ 0x3000ull
#define EVQ 0x6000ull
#define RX_QSZ 128 /* two descriptors per buffer */
#define RX_BUFS 64
#define RX_DATA 4096
#define RXB 0x10000ull
#define TX_QSZ 32
#define TX_SLOTS 16
#define TXB 0x100000ull
#define TX_SLOT_SZ 0x10100ull
#define TIMEOUT_MS 10000
#define BIG (4u << 20)

static uint8_t *ram;
static struct guest_mem mem;
static struct virtio_vsock dev;
static pthread_mutex_t dev_lock = PTHREAD_MUTEX_INITIALIZER;
static struct kvmm_loop loop;
static int irq_fd;
static char dir[64], uds[80];

static uint16_t rx_avail, rx_seen, tx_avail, tx_seen;

struct pk {
	uint64_t src_cid, dst_cid;
	uint32_t src_port, dst_port, len;
	uint16_t type, op;
	uint32_t flags, buf_alloc, fwd_cnt;
	uint8_t data[RX_DATA];
};

static void raise_irq(void *ctx)
{
	uint64_t one = 1;
	(void)ctx;
	if (write(irq_fd, &one, sizeof(one)) < 0)
		abort();
}

static uint8_t *g(uint64_t off)
{
	return ram + off;
}

static uint32_t rd(uint64_t off)
{
	uint8_t v[4];
	CHECK(virtio_mmio_read(&dev.mmio, off, v, 4) == 0);
	return get_le32(v);
}

static void wr(uint64_t off, uint32_t val)
{
	uint8_t v[4];
	put_le32(v, val);
	CHECK(virtio_mmio_write(&dev.mmio, off, v, 4) == 0);
}

static void set_desc(uint64_t table, uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
	uint8_t *d = g(table + 16u * i);
	put_le64(d, addr);
	put_le32(d + 8, len);
	put_le16(d + 12, flags);
	put_le16(d + 14, next);
}

static void queue_setup(uint16_t q, uint16_t size, uint64_t base)
{
	wr(VIRTIO_MMIO_QUEUE_SEL, q);
	wr(VIRTIO_MMIO_QUEUE_NUM, size);
	wr(VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)(BASE + base));
	wr(VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
	wr(VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint32_t)(BASE + base + 0x1000));
	wr(VIRTIO_MMIO_QUEUE_DRIVER_HIGH, 0);
	wr(VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint32_t)(BASE + base + 0x2000));
	wr(VIRTIO_MMIO_QUEUE_DEVICE_HIGH, 0);
	wr(VIRTIO_MMIO_QUEUE_READY, 1);
	CHECK(rd(VIRTIO_MMIO_QUEUE_READY) == 1);
}

/* Offer rx buffer |i|: even ones split header and data over two
 * descriptors, odd ones are one descriptor. */
static void rx_post(uint16_t head)
{
	uint16_t i = head / 2;
	uint64_t buf = BASE + RXB + 0x1100ull * i;
	if (i % 2) {
		set_desc(RXQ, head, buf, VSOCK_HDR_LEN + RX_DATA, VIRTQ_DESC_F_WRITE, 0);
	} else {
		set_desc(RXQ, head, buf, VSOCK_HDR_LEN, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, head + 1);
		set_desc(RXQ, head + 1, buf + VSOCK_HDR_LEN, RX_DATA, VIRTQ_DESC_F_WRITE, 0);
	}
	put_le16(g(RXQ + 0x1000) + 4 + 2 * (rx_avail % RX_QSZ), head);
	rx_avail++;
	put_le16(g(RXQ + 0x1000) + 2, rx_avail);
}

/* The driver's side of device initialisation, under the device mutex. */
static void bring_up(void)
{
	pthread_mutex_lock(&dev_lock);
	memset(ram, 0, 0x10000);
	rx_avail = rx_seen = tx_avail = tx_seen = 0;
	wr(VIRTIO_MMIO_STATUS, 0);
	wr(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
	wr(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	wr(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	wr(VIRTIO_MMIO_DRIVER_FEATURES, 0);
	wr(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	wr(VIRTIO_MMIO_DRIVER_FEATURES, 1); /* VERSION_1 */
	uint32_t s = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK;
	wr(VIRTIO_MMIO_STATUS, s);
	CHECK(rd(VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK);
	queue_setup(0, RX_QSZ, RXQ);
	queue_setup(1, TX_QSZ, TXQ);
	queue_setup(2, 4, EVQ);
	for (uint16_t i = 0; i < RX_BUFS; i++)
		rx_post((uint16_t)(2 * i));
	wr(VIRTIO_MMIO_STATUS, s | VIRTIO_STATUS_DRIVER_OK);
	CHECK(rd(VIRTIO_MMIO_STATUS) == (s | VIRTIO_STATUS_DRIVER_OK));
	pthread_mutex_unlock(&dev_lock);
}

/* Wait (bounded) for the device to raise its interrupt. */
static void wait_irq(int ms)
{
	struct pollfd p = { .fd = irq_fd, .events = POLLIN };
	if (poll(&p, 1, ms) == 1) {
		uint64_t n;
		if (read(irq_fd, &n, sizeof(n)) < 0)
			abort();
	}
}

/* Put |<bytes, n>| on the tx queue (split after the header when |split|),
 * notify, and wait until the device has taken it.  Returns 0 or -ETIMEDOUT. */
static int g_send_raw(const uint8_t *bytes, size_t n, bool split)
{
	pthread_mutex_lock(&dev_lock);
	uint16_t k = tx_avail % TX_SLOTS, head = (uint16_t)(2 * k);
	uint64_t buf = BASE + TXB + TX_SLOT_SZ * k;
	memcpy(g(buf - BASE), bytes, n);
	if (split && n > VSOCK_HDR_LEN) {
		set_desc(TXQ, head, buf, VSOCK_HDR_LEN, VIRTQ_DESC_F_NEXT, head + 1);
		set_desc(TXQ, head + 1, buf + VSOCK_HDR_LEN, (uint32_t)(n - VSOCK_HDR_LEN), 0, 0);
	} else {
		set_desc(TXQ, head, buf, (uint32_t)n, 0, 0);
	}
	put_le16(g(TXQ + 0x1000) + 4 + 2 * (tx_avail % TX_QSZ), head);
	tx_avail++;
	put_le16(g(TXQ + 0x1000) + 2, tx_avail);
	wr(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
	pthread_mutex_unlock(&dev_lock);
	for (int waited = 0; waited < TIMEOUT_MS; waited++) {
		pthread_mutex_lock(&dev_lock);
		uint16_t used = get_le16(g(TXQ + 0x2000) + 2);
		pthread_mutex_unlock(&dev_lock);
		if (used == tx_avail) {
			tx_seen = used;
			return 0;
		}
		wait_irq(1);
	}
	return -ETIMEDOUT;
}

static void hdr(uint8_t *h, uint16_t op, uint32_t src_port, uint32_t dst_port, uint32_t len, uint32_t flags,
		uint32_t buf_alloc, uint32_t fwd_cnt)
{
	put_le64(h, CID);
	put_le64(h + 8, VSOCK_HOST_CID);
	put_le32(h + 16, src_port);
	put_le32(h + 20, dst_port);
	put_le32(h + 24, len);
	put_le16(h + 28, VSOCK_TYPE_STREAM);
	put_le16(h + 30, op);
	put_le32(h + 32, flags);
	put_le32(h + 36, buf_alloc);
	put_le32(h + 40, fwd_cnt);
}

static uint8_t txbuf[VSOCK_HDR_LEN + VSOCK_MAX_PKT];

static int g_send(uint16_t op, uint32_t src_port, uint32_t dst_port, uint32_t flags, uint32_t buf_alloc,
		  uint32_t fwd_cnt, const void *data, uint32_t len)
{
	hdr(txbuf, op, src_port, dst_port, len, flags, buf_alloc, fwd_cnt);
	if (len)
		memcpy(txbuf + VSOCK_HDR_LEN, data, len);
	return g_send_raw(txbuf, VSOCK_HDR_LEN + len, len % 2);
}

/* Take the next packet from the rx queue (bounded wait) and give the
 * buffer back.  Returns 0 or -ETIMEDOUT. */
static int g_recv(struct pk *p, int ms)
{
	for (int waited = 0; waited <= ms; waited++) {
		pthread_mutex_lock(&dev_lock);
		if (get_le16(g(RXQ + 0x2000) + 2) != rx_seen) {
			const uint8_t *e = g(RXQ + 0x2000) + 4 + 8 * (rx_seen % RX_QSZ);
			uint16_t head = (uint16_t)get_le32(e);
			uint32_t used = get_le32(e + 4);
			rx_seen++;
			const uint8_t *h = g(RXB + 0x1100ull * (head / 2));
			CHECK(used >= VSOCK_HDR_LEN && used <= VSOCK_HDR_LEN + RX_DATA);
			p->src_cid = get_le64(h);
			p->dst_cid = get_le64(h + 8);
			p->src_port = get_le32(h + 16);
			p->dst_port = get_le32(h + 20);
			p->len = get_le32(h + 24);
			p->type = get_le16(h + 28);
			p->op = get_le16(h + 30);
			p->flags = get_le32(h + 32);
			p->buf_alloc = get_le32(h + 36);
			p->fwd_cnt = get_le32(h + 40);
			CHECK(p->len == used - VSOCK_HDR_LEN);
			CHECK(p->src_cid == VSOCK_HOST_CID && p->dst_cid == CID && p->type == VSOCK_TYPE_STREAM);
			if (p->len <= RX_DATA)
				memcpy(p->data, h + VSOCK_HDR_LEN, p->len);
			rx_post(head);
			wr(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
			pthread_mutex_unlock(&dev_lock);
			return 0;
		}
		pthread_mutex_unlock(&dev_lock);
		wait_irq(1);
	}
	return -ETIMEDOUT;
}

/* Expect the next packet to be |op| between |local| (host) and |peer|
 * (guest); returns whether it was. */
static bool expect(struct pk *p, uint16_t op, uint32_t local, uint32_t peer)
{
	if (g_recv(p, TIMEOUT_MS) < 0) {
		fprintf(stderr, "no packet from the device (wanted op %u)\n", op);
		return false;
	}
	if (p->op != op || p->src_port != local || p->dst_port != peer) {
		fprintf(stderr, "got op %u %u->%u, wanted op %u %u->%u\n", p->op, p->src_port, p->dst_port, op, local,
			peer);
		return false;
	}
	return true;
}

/* Nothing more from the device within |ms|. */
static bool quiet(int ms)
{
	struct pk p;
	return g_recv(&p, ms) == -ETIMEDOUT;
}

static uint64_t stat_bad(void)
{
	pthread_mutex_lock(&dev_lock);
	uint64_t n = dev.bad_packets;
	pthread_mutex_unlock(&dev_lock);
	return n;
}

/* ---- host side ----------------------------------------------------------------------------------------------- */

static int host_listen(uint32_t port)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s_%u", uds, port);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 8) < 0)
		abort();
	return fd;
}

static void set_timeouts(int fd)
{
	struct timeval tv = { .tv_sec = TIMEOUT_MS / 1000 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

static int host_accept(int lfd)
{
	struct pollfd p = { .fd = lfd, .events = POLLIN };
	if (poll(&p, 1, TIMEOUT_MS) != 1)
		return -1;
	int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (fd >= 0)
		set_timeouts(fd);
	return fd;
}

static int host_connect(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", uds);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		abort();
	set_timeouts(fd);
	return fd;
}

/* Read exactly |n| bytes (bounded by the socket timeout). */
static bool read_exact(int fd, void *buf, size_t n)
{
	uint8_t *b = buf;
	while (n) {
		ssize_t r = read(fd, b, n);
		if (r <= 0)
			return false;
		b += r;
		n -= (size_t)r;
	}
	return true;
}

static bool at_eof(int fd)
{
	char c;
	return read(fd, &c, 1) == 0;
}

/* Closed by the other end: EOF, or a reset if it left bytes unread. */
static bool closed(int fd)
{
	char c;
	ssize_t n = read(fd, &c, 1);
	return n == 0 || (n < 0 && errno == ECONNRESET);
}

static uint8_t pattern(uint64_t i)
{
	return (uint8_t)(i * 131 + (i >> 12) * 7 + 3);
}

struct bulk {
	int fd;
	uint64_t done;
	bool ok;
	int delay_ms;
};

static void *host_writer(void *arg)
{
	struct bulk *b = arg;
	static uint8_t chunk[65536];
	b->ok = true;
	while (b->done < BIG) {
		size_t n = 0;
		for (; n < sizeof(chunk) && b->done + n < BIG; n++)
			chunk[n] = pattern(b->done + n);
		if (write_full(b->fd, chunk, n) < 0) {
			b->ok = false;
			break;
		}
		b->done += n;
	}
	close(b->fd);
	return NULL;
}

static void *host_reader(void *arg)
{
	struct bulk *b = arg;
	static uint8_t chunk[65536];
	b->ok = true;
	usleep((useconds_t)b->delay_ms * 1000); /* let the device's buffer fill: its credit runs out */
	for (;;) {
		ssize_t n = read(b->fd, chunk, sizeof(chunk));
		if (n < 0) {
			b->ok = false;
			break;
		}
		if (n == 0)
			break;
		for (ssize_t i = 0; i < n; i++)
			if (chunk[i] != pattern(b->done + (uint64_t)i))
				b->ok = false;
		b->done += (uint64_t)n;
	}
	close(b->fd);
	return NULL;
}

/* ---- tests --------------------------------------------------------------------------------------------------- */

static void test_registers(void)
{
	pthread_mutex_lock(&dev_lock);
	CHECK(rd(VIRTIO_MMIO_DEVICE_ID) == VIRTIO_ID_VSOCK);
	uint8_t c[4];
	CHECK(virtio_mmio_read(&dev.mmio, VIRTIO_MMIO_CONFIG, c, 4) == 0 && get_le32(c) == CID);
	CHECK(virtio_mmio_read(&dev.mmio, VIRTIO_MMIO_CONFIG + 4, c, 4) == 0 && get_le32(c) == 0);
	CHECK(virtio_mmio_read(&dev.mmio, VIRTIO_MMIO_CONFIG + 8, c, 1) == -EINVAL);
	wr(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	CHECK(rd(VIRTIO_MMIO_DEVICE_FEATURES) & 1);
	wr(VIRTIO_MMIO_QUEUE_SEL, 3);
	CHECK(rd(VIRTIO_MMIO_QUEUE_NUM_MAX) == 0); /* three queues only */
	pthread_mutex_unlock(&dev_lock);

	struct virtio_vsock bad;
	CHECK(virtio_vsock_init(&bad, 2, uds, &mem, raise_irq, NULL, &loop, &dev_lock) == -EINVAL);
	CHECK(virtio_vsock_init(&bad, 0xffffffffull, uds, &mem, raise_irq, NULL, &loop, &dev_lock) == -EINVAL);
	char longp[120];
	memset(longp, 'x', sizeof(longp) - 1);
	longp[sizeof(longp) - 1] = 0;
	CHECK(virtio_vsock_init(&bad, 3, longp, &mem, raise_irq, NULL, &loop, &dev_lock) == -EINVAL);
	CHECK(virtio_vsock_init(&bad, 3, uds, &mem, raise_irq, NULL, &loop, &dev_lock) == -EADDRINUSE);
	virtio_vsock_destroy(&bad);
	struct stat st;
	CHECK(stat(uds, &st) == 0); /* a failed init leaves the other device's socket alone */
}

static void test_guest_to_host(void)
{
	struct pk p;
	int lfd = host_listen(1234);
	CHECK(g_send(VSOCK_OP_REQUEST, 5000, 1234, 0, 65536, 0, NULL, 0) == 0);
	CHECK(expect(&p, VSOCK_OP_RESPONSE, 1234, 5000));
	CHECK(p.buf_alloc == VSOCK_TX_BUF && p.fwd_cnt == 0);
	int h = host_accept(lfd);
	CHECK(h >= 0);

	CHECK(g_send(VSOCK_OP_RW, 5000, 1234, 0, 65536, 0, "hello", 5) == 0);
	char buf[16] = { 0 };
	CHECK(read_exact(h, buf, 5) && memcmp(buf, "hello", 5) == 0);
	CHECK(write(h, "world!", 6) == 6);
	CHECK(expect(&p, VSOCK_OP_RW, 1234, 5000));
	CHECK(p.len == 6 && memcmp(p.data, "world!", 6) == 0);

	/* The guest's half-close reaches the host as EOF, and the host's
	 * close comes back as SHUTDOWN, then the RST that ends it. */
	CHECK(g_send(VSOCK_OP_SHUTDOWN, 5000, 1234, VSOCK_SHUTDOWN_SEND, 65536, 6, NULL, 0) == 0);
	CHECK(at_eof(h));
	close(h);
	CHECK(expect(&p, VSOCK_OP_SHUTDOWN, 1234, 5000));
	CHECK(p.flags & VSOCK_SHUTDOWN_SEND);
	CHECK(expect(&p, VSOCK_OP_RST, 1234, 5000));
	/* The connection is gone: data on it is answered with RST. */
	CHECK(g_send(VSOCK_OP_RW, 5000, 1234, 0, 65536, 6, "x", 1) == 0);
	CHECK(expect(&p, VSOCK_OP_RST, 1234, 5000));

	/* A guest that closes its socket (both flags) while the host still
	 * has it open: the host sees EOF and the guest gets its RST. */
	CHECK(g_send(VSOCK_OP_REQUEST, 5001, 1234, 0, 65536, 0, NULL, 0) == 0);
	CHECK(expect(&p, VSOCK_OP_RESPONSE, 1234, 5001));
	h = host_accept(lfd);
	CHECK(h >= 0);
	CHECK(g_send(VSOCK_OP_SHUTDOWN, 5001, 1234, VSOCK_SHUTDOWN_SEND | VSOCK_SHUTDOWN_RCV, 65536, 0, NULL, 0) ==
	      0);
	CHECK(expect(&p, VSOCK_OP_RST, 1234, 5001));
	CHECK(at_eof(h));
	close(h);

	/* The guest resets a connection: the host sees EOF, nothing comes back. */
	CHECK(g_send(VSOCK_OP_REQUEST, 5002, 1234, 0, 65536, 0, NULL, 0) == 0);
	CHECK(expect(&p, VSOCK_OP_RESPONSE, 1234, 5002));
	h = host_accept(lfd);
	CHECK(g_send(VSOCK_OP_RST, 5002, 1234, 0, 65536, 0, NULL, 0) == 0);
	CHECK(at_eof(h));
	CHECK(quiet(50));
	close(h);
	close(lfd);
}

static void test_nobody_listens(void)
{
	struct pk p;
	CHECK(g_send(VSOCK_OP_REQUEST, 6000, 999, 0, 65536, 0, NULL, 0) == 0);
	CHECK(expect(&p, VSOCK_OP_RST, 999, 6000));
	/* A packet for a connection that does not exist: RST; an RST for one:
	 * nothing (never answer an RST with an RST). */
	CHECK(g_send(VSOCK_OP_RW, 6001, 998, 0, 65536, 0, "abc", 3) == 0);
	CHECK(expect(&p, VSOCK_OP_RST, 998, 6001));
	CHECK(g_send(VSOCK_OP_RST, 6001, 998, 0, 65536, 0, NULL, 0) == 0);
	CHECK(quiet(50));
}

static void test_host_to_guest(void)
{
	struct pk p;
	int c = host_connect();
	static const char hello[] = "CONNECT 77\nearly";
	CHECK(write(c, hello, sizeof(hello) - 1) == (ssize_t)sizeof(hello) - 1);
	CHECK(g_recv(&p, TIMEOUT_MS) == 0);
	CHECK(p.op == VSOCK_OP_REQUEST && p.dst_port == 77 && p.src_port >= VSOCK_FIRST_HOST_PORT);
	uint32_t hp = p.src_port;
	CHECK(quiet(50)); /* nothing flows before the guest answers */
	CHECK(g_send(VSOCK_OP_RESPONSE, 77, hp, 0, 65536, 0, NULL, 0) == 0);
	char line[32] = { 0 }, want[32];
	int n = snprintf(want, sizeof(want), "OK %u\n", hp);
	CHECK(read_exact(c, line, (size_t)n) && memcmp(line, want, (size_t)n) == 0);
	CHECK(expect(&p, VSOCK_OP_RW, hp, 77)); /* the bytes after the CONNECT line */
	CHECK(p.len == 5 && memcmp(p.data, "early", 5) == 0);
	CHECK(g_send(VSOCK_OP_RW, 77, hp, 0, 65536, 5, "pong", 4) == 0);
	CHECK(read_exact(c, line, 4) && memcmp(line, "pong", 4) == 0);
	/* The guest resets it: the client's socket is closed. */
	CHECK(g_send(VSOCK_OP_RST, 77, hp, 0, 65536, 5, NULL, 0) == 0);
	CHECK(at_eof(c));
	close(c);

	/* The guest refuses: closed, no OK. */
	c = host_connect();
	CHECK(write(c, "CONNECT 78\n", 11) == 11);
	CHECK(g_recv(&p, TIMEOUT_MS) == 0 && p.op == VSOCK_OP_REQUEST && p.dst_port == 78);
	CHECK(g_send(VSOCK_OP_RST, 78, p.src_port, 0, 0, 0, NULL, 0) == 0);
	CHECK(at_eof(c));
	close(c);

	/* Bad lines are closed without bothering the guest; so is a line split
	 * over several writes if it is good. */
	static const char *bad[] = { "CONNECT x\n", "CONNECT -1\n", "CONNECT 4294967296\n", "connect 5\n",
				     "CONNECT 123456789012345678\n", "CONNECT \n" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		c = host_connect();
		CHECK(write(c, bad[i], strlen(bad[i])) == (ssize_t)strlen(bad[i]));
		CHECK(closed(c));
		close(c);
	}
	CHECK(quiet(50));
	c = host_connect();
	CHECK(write(c, "CONN", 4) == 4);
	usleep(20000);
	CHECK(write(c, "ECT 4294967295\n", 15) == 15);
	CHECK(g_recv(&p, TIMEOUT_MS) == 0 && p.op == VSOCK_OP_REQUEST && p.dst_port == 4294967295u);
	/* The client leaves before the guest answers: the guest gets an RST. */
	close(c);
	CHECK(expect(&p, VSOCK_OP_RST, p.src_port, 4294967295u));
}

/* 4 MiB host -> guest into a 32 KiB guest buffer that the guest empties only
 * when it is full: the device must stop at the credit and go on after each
 * CREDIT_UPDATE. */
static void test_flow_host_to_guest(void)
{
	const uint32_t alloc = 32 * 1024;
	struct pk p;
	int lfd = host_listen(2000);
	CHECK(g_send(VSOCK_OP_REQUEST, 7000, 2000, 0, alloc, 0, NULL, 0) == 0);
	CHECK(expect(&p, VSOCK_OP_RESPONSE, 2000, 7000));
	struct bulk b = { .fd = host_accept(lfd) };
	pthread_t t;
	CHECK(pthread_create(&t, NULL, host_writer, &b) == 0);

	uint32_t received = 0, consumed = 0;
	unsigned full = 0, over = 0, bad = 0, credit_requests = 0;
	bool eof = false;
	while (!eof) {
		if (g_recv(&p, TIMEOUT_MS) < 0)
			break;
		if (p.op == VSOCK_OP_RW) {
			for (uint32_t i = 0; i < p.len; i++)
				if (p.data[i] != pattern(received + i))
					bad++;
			received += p.len;
		} else if (p.op == VSOCK_OP_SHUTDOWN) {
			eof = true;
		} else if (p.op == VSOCK_OP_CREDIT_REQUEST) {
			credit_requests++;
		}
		if (received - consumed > alloc)
			over++;
		if (received - consumed == alloc || p.op == VSOCK_OP_CREDIT_REQUEST) {
			full += received - consumed == alloc;
			consumed = received;
			CHECK(g_send(VSOCK_OP_CREDIT_UPDATE, 7000, 2000, 0, alloc, consumed, NULL, 0) == 0);
		}
	}
	pthread_join(t, NULL);
	CHECK(b.ok && b.done == BIG);
	CHECK(eof && received == BIG && bad == 0 && over == 0);
	CHECK(full >= BIG / alloc - 1);
	(void)credit_requests;
	/* Close the guest side; the device owes the final RST. */
	CHECK(g_send(VSOCK_OP_SHUTDOWN, 7000, 2000, VSOCK_SHUTDOWN_SEND | VSOCK_SHUTDOWN_RCV, alloc, received, NULL,
		     0) == 0);
	CHECK(expect(&p, VSOCK_OP_RST, 2000, 7000));
	close(lfd);
}

/* 4 MiB guest -> host while the host reads late: the guest keeps within the
 * device's credit, stalls, and goes on with each CREDIT_UPDATE. */
static void test_flow_guest_to_host(void)
{
	struct pk p;
	int lfd = host_listen(2001);
	CHECK(g_send(VSOCK_OP_REQUEST, 7001, 2001, 0, 65536, 0, NULL, 0) == 0);
	CHECK(expect(&p, VSOCK_OP_RESPONSE, 2001, 7001));
	uint32_t dev_alloc = p.buf_alloc, dev_fwd = p.fwd_cnt, sent = 0;
	struct bulk b = { .fd = host_accept(lfd), .delay_ms = 300 };
	pthread_t t;
	CHECK(pthread_create(&t, NULL, host_reader, &b) == 0);

	static uint8_t chunk[VSOCK_MAX_PKT];
	unsigned stalls = 0, rounds = 0;
	while (sent < BIG && rounds++ < 100000) {
		uint32_t credit = dev_alloc - (sent - dev_fwd);
		if (credit == 0) {
			stalls++;
			CHECK(g_send(VSOCK_OP_CREDIT_REQUEST, 7001, 2001, 0, 65536, 0, NULL, 0) == 0);
			if (g_recv(&p, TIMEOUT_MS) < 0)
				break;
			CHECK(p.op == VSOCK_OP_CREDIT_UPDATE);
			dev_alloc = p.buf_alloc;
			dev_fwd = p.fwd_cnt;
			continue;
		}
		uint32_t n = credit < sizeof(chunk) ? credit : sizeof(chunk);
		if (n > BIG - sent)
			n = BIG - sent;
		for (uint32_t i = 0; i < n; i++)
			chunk[i] = pattern(sent + i);
		CHECK(g_send(VSOCK_OP_RW, 7001, 2001, 0, 65536, 0, chunk, n) == 0);
		sent += n;
		/* Credit updates the device volunteers. */
		while (g_recv(&p, 0) == 0) {
			CHECK(p.op == VSOCK_OP_CREDIT_UPDATE);
			dev_alloc = p.buf_alloc;
			dev_fwd = p.fwd_cnt;
		}
	}
	CHECK(sent == BIG && stalls > 0);
	CHECK(g_send(VSOCK_OP_SHUTDOWN, 7001, 2001, VSOCK_SHUTDOWN_SEND, 65536, 0, NULL, 0) == 0);
	pthread_join(t, NULL);
	CHECK(b.ok && b.done == BIG);
	/* The reader closed after EOF: SHUTDOWN, then RST (perhaps after a
	 * last credit update). */
	p.op = 0;
	for (int i = 0; i < 1000; i++)
		if (g_recv(&p, TIMEOUT_MS) < 0 || p.op != VSOCK_OP_CREDIT_UPDATE)
			break;
	CHECK(p.op == VSOCK_OP_SHUTDOWN);
	CHECK(expect(&p, VSOCK_OP_RST, 2001, 7001));
	close(lfd);
}

/* A guest that ignores the credit is reset, and the host socket closed. */
static void test_credit_overrun(void)
{
	struct pk p;
	int lfd = host_listen(2002);
	CHECK(g_send(VSOCK_OP_REQUEST, 7002, 2002, 0, 65536, 0, NULL, 0) == 0);
	CHECK(expect(&p, VSOCK_OP_RESPONSE, 2002, 7002));
	int h = host_accept(lfd);
	static uint8_t chunk[VSOCK_MAX_PKT];
	bool reset = false;
	for (int i = 0; i < 64 && !reset; i++) {
		CHECK(g_send(VSOCK_OP_RW, 7002, 2002, 0, 65536, 0, chunk, sizeof(chunk)) == 0);
		while (!reset && g_recv(&p, 0) == 0)
			reset = p.op == VSOCK_OP_RST;
	}
	CHECK(reset);
	static uint8_t sink[1 << 16];
	ssize_t n;
	while ((n = read(h, sink, sizeof(sink))) > 0)
		;
	CHECK(n == 0);
	close(h);
	close(lfd);
}

static void test_malformed(void)
{
	struct pk p;
	uint64_t bad = stat_bad();
	uint8_t h[VSOCK_HDR_LEN + 8];

	/* Shorter than the header. */
	hdr(h, VSOCK_OP_REQUEST, 1, 1234, 0, 0, 0, 0);
	CHECK(g_send_raw(h, 20, false) == 0);
	/* A payload length beyond the chain, and beyond any packet. */
	hdr(h, VSOCK_OP_RW, 1, 1234, 100, 0, 0, 0);
	CHECK(g_send_raw(h, VSOCK_HDR_LEN + 8, true) == 0);
	hdr(h, VSOCK_OP_RW, 1, 1234, VSOCK_MAX_PKT + 1, 0, 0, 0);
	CHECK(g_send_raw(h, VSOCK_HDR_LEN + 8, true) == 0);
	/* A payload on a control packet. */
	hdr(h, VSOCK_OP_REQUEST, 1, 1234, 8, 0, 0, 0);
	CHECK(g_send_raw(h, VSOCK_HDR_LEN + 8, true) == 0);
	/* Somebody else's CID, and a destination other than the host. */
	hdr(h, VSOCK_OP_REQUEST, 1, 999, 0, 0, 0, 0);
	put_le64(h, CID + 1);
	CHECK(g_send_raw(h, VSOCK_HDR_LEN, false) == 0);
	hdr(h, VSOCK_OP_REQUEST, 1, 999, 0, 0, 0, 0);
	put_le64(h + 8, 1);
	CHECK(g_send_raw(h, VSOCK_HDR_LEN, false) == 0);
	CHECK(quiet(50)); /* dropped: none of those earns an RST */
	CHECK(stat_bad() == bad + 6);

	/* Not a stream: refused with an RST. */
	hdr(h, VSOCK_OP_REQUEST, 2, 999, 0, 0, 0, 0);
	put_le16(h + 28, 2);
	CHECK(g_send_raw(h, VSOCK_HDR_LEN, false) == 0);
	CHECK(expect(&p, VSOCK_OP_RST, 999, 2));

	/* A descriptor outside guest RAM. */
	pthread_mutex_lock(&dev_lock);
	uint16_t head = (uint16_t)(2 * (tx_avail % TX_SLOTS));
	set_desc(TXQ, head, BASE + MEMSZ - 8, 64, 0, 0);
	put_le16(g(TXQ + 0x1000) + 4 + 2 * (tx_avail % TX_QSZ), head);
	tx_avail++;
	put_le16(g(TXQ + 0x1000) + 2, tx_avail);
	wr(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
	pthread_mutex_unlock(&dev_lock);
	for (int i = 0; i < TIMEOUT_MS && stat_bad() != bad + 8; i++)
		wait_irq(1);
	CHECK(stat_bad() == bad + 8);

	/* An rx buffer too small for a header, then one that is
	 * device-readable: both handed back empty; the RST goes into the next
	 * good buffer. */
	pthread_mutex_lock(&dev_lock);
	uint64_t spare = BASE + 0x300000;
	/* Descriptors 3 and 7 are free: buffers 1 and 3 use one descriptor. */
	set_desc(RXQ, 3, spare, 16, VIRTQ_DESC_F_WRITE, 0);
	set_desc(RXQ, 7, spare, 64, 0, 0);
	/* Put the two bad ones in front of the ring's good buffers: rewrite
	 * the next two avail entries the device will read. */
	uint16_t next = dev.mmio.vq[0].last_avail;
	for (int k = 0; k < 2; k++) {
		uint16_t slot = (uint16_t)((next + k) % RX_QSZ);
		uint16_t good = get_le16(g(RXQ + 0x1000) + 4 + 2 * slot);
		put_le16(g(RXQ + 0x1000) + 4 + 2 * slot, (uint16_t)(k ? 7 : 3));
		rx_post(good); /* the good ones go to the end */
	}
	pthread_mutex_unlock(&dev_lock);
	CHECK(g_send(VSOCK_OP_RW, 6100, 997, 0, 0, 0, "z", 1) == 0);
	/* The first two used elements are the bad buffers with length 0. */
	for (int i = 0; i < TIMEOUT_MS; i++) {
		pthread_mutex_lock(&dev_lock);
		uint16_t used = get_le16(g(RXQ + 0x2000) + 2);
		pthread_mutex_unlock(&dev_lock);
		if ((uint16_t)(used - rx_seen) >= 3)
			break;
		wait_irq(1);
	}
	pthread_mutex_lock(&dev_lock);
	for (int k = 0; k < 2; k++) {
		const uint8_t *e = g(RXQ + 0x2000) + 4 + 8 * (rx_seen % RX_QSZ);
		CHECK(get_le32(e) == (uint32_t)(k ? 7 : 3) && get_le32(e + 4) == 0);
		rx_seen++;
	}
	pthread_mutex_unlock(&dev_lock);
	CHECK(expect(&p, VSOCK_OP_RST, 997, 6100));
	CHECK(stat_bad() == bad + 10);

	/* Still healthy. */
	int lfd = host_listen(2003);
	CHECK(g_send(VSOCK_OP_REQUEST, 7003, 2003, 0, 65536, 0, NULL, 0) == 0);
	CHECK(expect(&p, VSOCK_OP_RESPONSE, 2003, 7003));
	int hfd = host_accept(lfd);
	/* A second REQUEST on an open connection resets it. */
	CHECK(g_send(VSOCK_OP_REQUEST, 7003, 2003, 0, 65536, 0, NULL, 0) == 0);
	CHECK(expect(&p, VSOCK_OP_RST, 2003, 7003));
	CHECK(at_eof(hfd));
	close(hfd);
	close(lfd);
}

/* A device reset drops every connection. */
static void test_reset(void)
{
	struct pk p;
	int lfd = host_listen(2004);
	CHECK(g_send(VSOCK_OP_REQUEST, 7004, 2004, 0, 65536, 0, NULL, 0) == 0);
	CHECK(expect(&p, VSOCK_OP_RESPONSE, 2004, 7004));
	int h = host_accept(lfd);
	pthread_mutex_lock(&dev_lock);
	wr(VIRTIO_MMIO_STATUS, 0);
	pthread_mutex_unlock(&dev_lock);
	CHECK(at_eof(h));
	close(h);
	bring_up();
	CHECK(g_send(VSOCK_OP_REQUEST, 7004, 2004, 0, 65536, 0, NULL, 0) == 0);
	CHECK(expect(&p, VSOCK_OP_RESPONSE, 2004, 7004));
	h = host_accept(lfd);
	CHECK(h >= 0);
	close(h);
	close(lfd);
}

/* After a restore: VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (id 0) goes into the
 * driver's event buffer, with its interrupt; no buffer or a short one is
 * refused and said so. */
static void test_transport_reset(void)
{
	uint64_t drain;
	pthread_mutex_lock(&dev_lock);
	CHECK(virtio_vsock_transport_reset(&dev) == -ENOBUFS); /* the driver posted no event buffer */
	/* Two event buffers: a good one, then one too short for the event. */
	memset(g(TXB), 0xee, 8);
	set_desc(EVQ, 0, BASE + TXB, 8, VIRTQ_DESC_F_WRITE, 0);
	set_desc(EVQ, 1, BASE + TXB + 64, 2, VIRTQ_DESC_F_WRITE, 0);
	put_le16(g(EVQ + 0x1000) + 4, 0);
	put_le16(g(EVQ + 0x1000) + 6, 1);
	put_le16(g(EVQ + 0x1000) + 2, 2);
	while (read(irq_fd, &drain, sizeof(drain)) > 0)
		;
	CHECK(virtio_vsock_transport_reset(&dev) == 0);
	CHECK(get_le32(g(TXB)) == 0 && g(TXB)[4] == 0xee);	     /* id 0, 4 bytes written */
	CHECK(get_le16(g(EVQ + 0x2000) + 2) == 1);		     /* used idx */
	CHECK(get_le32(g(EVQ + 0x2000) + 4) == 0 && get_le32(g(EVQ + 0x2000) + 8) == 4); /* head 0, len 4 */
	CHECK(read(irq_fd, &drain, sizeof(drain)) == sizeof(drain)); /* the interrupt */
	CHECK(virtio_vsock_transport_reset(&dev) == -EINVAL);	     /* 2 bytes: handed back empty */
	CHECK(get_le16(g(EVQ + 0x2000) + 2) == 2 && get_le32(g(EVQ + 0x2000) + 16) == 0);
	CHECK(virtio_vsock_transport_reset(&dev) == -ENOBUFS);
	pthread_mutex_unlock(&dev_lock);
}

static void *loop_thread(void *arg)
{
	kvmm_loop_run(arg);
	return NULL;
}

int main(void)
{
	snprintf(dir, sizeof(dir), "/tmp/kindling-test-vsock.XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	snprintf(uds, sizeof(uds), "%s/v.sock", dir);
	ram = aligned_alloc(4096, MEMSZ);
	irq_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (!ram || irq_fd < 0)
		return 1;
	guest_mem_init(&mem);
	CHECK(guest_mem_add(&mem, BASE, ram, MEMSZ) == 0);
	CHECK(kvmm_loop_init(&loop) == 0);
	CHECK(virtio_vsock_init(&dev, CID, uds, &mem, raise_irq, NULL, &loop, &dev_lock) == 0);
	pthread_t lt;
	CHECK(pthread_create(&lt, NULL, loop_thread, &loop) == 0);

	test_registers();
	bring_up();
	test_guest_to_host();
	test_nobody_listens();
	test_host_to_guest();
	test_flow_host_to_guest();
	test_flow_guest_to_host();
	test_credit_overrun();
	test_malformed();
	test_reset();
	test_transport_reset();

	kvmm_loop_stop(&loop);
	pthread_join(lt, NULL);
	virtio_vsock_destroy(&dev);
	virtio_vsock_destroy(&dev);
	struct stat st;
	CHECK(stat(uds, &st) < 0 && errno == ENOENT);
	kvmm_loop_destroy(&loop);
	char path[160];
	for (uint32_t port = 1234; port <= 2004; port++) {
		snprintf(path, sizeof(path), "%s_%u", uds, port);
		unlink(path);
	}
	rmdir(dir);
	free(ram);
	close(irq_fd);
	return check_report();
}
