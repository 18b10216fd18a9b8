/* Fuzz virtio-vsock's tx path (vmm/kvmm/virtio_vsock.c): hostile packets
 * from the guest, mixed with host-side activity on real unix sockets so the
 * packets meet connections in every state.  Input: records of
 *   u8 kind, u16 len (little-endian), len bytes
 * kind & 3:
 *   0  a tx packet: the bytes as header + payload; bit 2 forces the CIDs
 *      right (guest -> host), bit 3 splits the chain after the header,
 *      bit 4 aims it at a port the harness listens on (1024 or 1025)
 *   1  the host side: accept what is pending and write the bytes to every
 *      host socket the harness holds
 *   2  a host client: connect to the device's socket and write the bytes
 *      (a CONNECT line, or junk)
 *   3  a device reset, and the driver brings it up again
 * After each record the device and its loop run, and the rx buffers it
 * filled are checked against the header it promised and handed back. */
/* ctest-labels: no-tsan (a single-threaded parser: nothing for ThreadSanitizer to check) */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "vmm/kvmm/guest_mem.h"
#include "common/bytes.h"
#include "vmm/kvmm/loop.h"
#include "vmm/kvmm/virtio_mmio.h"
#include "vmm/kvmm/virtio_vsock.h"
#include "vmm/kvmm/virtq.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define BASE 0x100000ull
#define MEMSZ 0x80000ull
#define RXQ 0x0000ull
#define TXQ 0x3000ull
#define EVQ 0x6000ull
#define QSZ 16
#define RXB 0x10000ull
#define RXBUF 0x800u
#define TXB 0x20000ull
#define MAX_RECORDS 256
#define MAX_HOST 32

struct harness {
	uint8_t *ram;
	struct guest_mem mem;
	struct kvmm_loop loop;
	struct virtio_vsock v;
	char dir[64], uds[96];
	int listeners[2];
	int host[MAX_HOST];
	size_t n_host;
	uint16_t rx_avail, rx_seen, tx_avail;
};

static void no_irq(void *ctx)
{
	(void)ctx;
}

static void wr(struct harness *h, uint64_t off, uint32_t val)
{
	uint8_t b[4];
	put_le32(b, val);
	virtio_mmio_write(&h->v.mmio, off, b, 4);
}

static void set_desc(struct harness *h, uint64_t table, uint16_t i, uint64_t addr, uint32_t len, uint16_t flags,
		     uint16_t next)
{
	uint8_t *d = h->ram + table + 16u * i;
	put_le64(d, addr);
	put_le32(d + 8, len);
	put_le16(d + 12, flags);
	put_le16(d + 14, next);
}

static void rx_post(struct harness *h, uint16_t head)
{
	set_desc(h, RXQ, head, BASE + RXB + RXBUF * head, RXBUF, VIRTQ_DESC_F_WRITE, 0);
	put_le16(h->ram + RXQ + 0x1000 + 4 + 2 * (h->rx_avail % QSZ), head);
	h->rx_avail++;
	put_le16(h->ram + RXQ + 0x1000 + 2, h->rx_avail);
}

static void bring_up(struct harness *h)
{
	memset(h->ram, 0, 0x10000);
	h->rx_avail = h->rx_seen = h->tx_avail = 0;
	wr(h, VIRTIO_MMIO_STATUS, 0);
	wr(h, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	wr(h, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	wr(h, VIRTIO_MMIO_DRIVER_FEATURES, 1);
	wr(h, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
	const uint64_t bases[3] = { RXQ, TXQ, EVQ };
	for (uint32_t q = 0; q < 3; q++) {
		wr(h, VIRTIO_MMIO_QUEUE_SEL, q);
		wr(h, VIRTIO_MMIO_QUEUE_NUM, QSZ);
		wr(h, VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)(BASE + bases[q]));
		wr(h, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint32_t)(BASE + bases[q] + 0x1000));
		wr(h, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint32_t)(BASE + bases[q] + 0x2000));
		wr(h, VIRTIO_MMIO_QUEUE_READY, 1);
	}
	for (uint16_t i = 0; i < QSZ; i++)
		rx_post(h, i);
	wr(h, VIRTIO_MMIO_STATUS,
	   VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
}

/* Run what is ready on the loop once: a stop queued first makes
 * kvmm_loop_run() return after this batch. */
static void run_loop(struct harness *h)
{
	kvmm_loop_stop(&h->loop);
	kvmm_loop_run(&h->loop);
}

/* What the device wrote must be a well-formed packet from the host to the
 * guest; then the buffer goes back. */
static void rx_recycle(struct harness *h)
{
	uint16_t used = get_le16(h->ram + RXQ + 0x2000 + 2);
	for (int n = 0; h->rx_seen != used && n < 4 * QSZ; n++) {
		const uint8_t *e = h->ram + RXQ + 0x2000 + 4 + 8 * (h->rx_seen % QSZ);
		uint32_t head = get_le32(e), len = get_le32(e + 4);
		h->rx_seen++;
		if (head >= QSZ)
			abort();
		if (len) {
			const uint8_t *p = h->ram + RXB + RXBUF * head;
			if (len < VSOCK_HDR_LEN || len > RXBUF || get_le32(p + 24) != len - VSOCK_HDR_LEN ||
			    get_le64(p) != VSOCK_HOST_CID || get_le64(p + 8) != h->v.guest_cid || get_le16(p + 30) == 0 ||
			    get_le16(p + 30) > VSOCK_OP_CREDIT_REQUEST)
				abort();
		}
		rx_post(h, (uint16_t)head);
	}
}

static void tx_packet(struct harness *h, uint8_t kind, const uint8_t *p, size_t n)
{
	uint16_t k = h->tx_avail % (QSZ / 2), head = (uint16_t)(2 * k);
	uint64_t buf = TXB + 0x8000ull * k;
	if (n > 0x8000)
		n = 0x8000;
	uint8_t *b = h->ram + buf;
	memcpy(b, p, n);
	if ((kind & 4) && n >= VSOCK_HDR_LEN) {
		put_le64(b, h->v.guest_cid);
		put_le64(b + 8, VSOCK_HOST_CID);
	}
	if ((kind & 16) && n >= VSOCK_HDR_LEN)
		put_le32(b + 20, 1024 + (get_le32(b + 20) & 1));
	if ((kind & 8) && n > VSOCK_HDR_LEN) {
		set_desc(h, TXQ, head, BASE + buf, VSOCK_HDR_LEN, VIRTQ_DESC_F_NEXT, head + 1);
		set_desc(h, TXQ, head + 1, BASE + buf + VSOCK_HDR_LEN, (uint32_t)(n - VSOCK_HDR_LEN), 0, 0);
	} else {
		set_desc(h, TXQ, head, BASE + buf, (uint32_t)n, 0, 0);
	}
	put_le16(h->ram + TXQ + 0x1000 + 4 + 2 * (h->tx_avail % QSZ), head);
	h->tx_avail++;
	put_le16(h->ram + TXQ + 0x1000 + 2, h->tx_avail);
	wr(h, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
}

static void host_side(struct harness *h, const uint8_t *p, size_t n)
{
	for (int i = 0; i < 2; i++) {
		int fd;
		while (h->n_host < MAX_HOST &&
		       (fd = accept4(h->listeners[i], NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0)
			h->host[h->n_host++] = fd;
	}
	for (size_t i = 0; i < h->n_host; i++)
		if (send(h->host[i], p, n, MSG_DONTWAIT | MSG_NOSIGNAL) < 0 && errno == EPIPE) {
			close(h->host[i]);
			h->host[i] = h->host[--h->n_host];
			i--;
		}
}

static void host_client(struct harness *h, const uint8_t *p, size_t n)
{
	if (h->n_host == MAX_HOST)
		return;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	memcpy(sa.sun_path, h->uds, strlen(h->uds) + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return;
	}
	if (send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
		/* nothing to do: the device may refuse it */
	}
	h->host[h->n_host++] = fd;
}

static int listen_on(const char *uds, unsigned port)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int n = snprintf(sa.sun_path, sizeof(sa.sun_path), "%s_%u", uds, port);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0 || n < 0 || (size_t)n >= sizeof(sa.sun_path) || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(fd, 64) < 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct harness *h = calloc(1, sizeof(*h));
	if (!h)
		return 0;
	h->ram = aligned_alloc(4096, MEMSZ);
	h->listeners[0] = h->listeners[1] = -1;
	snprintf(h->dir, sizeof(h->dir), "/tmp/kindling-fuzz-vsock.XXXXXX");
	if (!h->ram || !mkdtemp(h->dir)) {
		free(h->ram);
		free(h);
		return 0;
	}
	snprintf(h->uds, sizeof(h->uds), "%s/v", h->dir);
	guest_mem_init(&h->mem);
	guest_mem_add(&h->mem, BASE, h->ram, MEMSZ);
	if (kvmm_loop_init(&h->loop) < 0)
		goto out_dir;
	if (virtio_vsock_init(&h->v, 3, h->uds, &h->mem, no_irq, NULL, &h->loop, NULL) < 0)
		goto out_loop;
	h->listeners[0] = listen_on(h->uds, 1024);
	h->listeners[1] = listen_on(h->uds, 1025);
	bring_up(h);

	size_t off = 0;
	for (int r = 0; r < MAX_RECORDS && size - off >= 3; r++) {
		uint8_t kind = data[off];
		size_t n = get_le16(data + off + 1);
		off += 3;
		if (n > size - off)
			n = size - off;
		const uint8_t *p = data + off;
		off += n;
		switch (kind & 3) {
		case 0:
			tx_packet(h, kind, p, n);
			break;
		case 1:
			host_side(h, p, n);
			break;
		case 2:
			host_client(h, p, n);
			break;
		default:
			bring_up(h);
			break;
		}
		virtio_vsock_process(&h->v);
		run_loop(h);
		rx_recycle(h);
	}

	virtio_vsock_destroy(&h->v);
out_loop:
	kvmm_loop_destroy(&h->loop);
	for (size_t i = 0; i < h->n_host; i++)
		close(h->host[i]);
	char path[128];
	for (unsigned port = 1024; port <= 1025; port++) {
		if (h->listeners[port - 1024] >= 0)
			close(h->listeners[port - 1024]);
		snprintf(path, sizeof(path), "%s_%u", h->uds, port);
		unlink(path);
	}
out_dir:
	rmdir(h->dir);
	free(h->ram);
	free(h);
	return 0;
}
