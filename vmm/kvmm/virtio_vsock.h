/* kvmm: virtio-vsock (virtio_vsock.c), virtio 1.2, 5.10, stream sockets only,
 * with Firecracker's host-side scheme over unix sockets:
 *   guest connects to host port P   kvmm connects to the unix socket
 *                                   "{uds_path}_{P}"; nobody there = RST;
 *   host connects to guest port P   a client connects to "{uds_path}" and
 *                                   writes "CONNECT P\n"; once the guest
 *                                   accepts it reads "OK <host port>\n", and
 *                                   the socket is closed if the guest refuses.
 * Every host socket is non-blocking and served on the device loop under the
 * device mutex.  Each connection buffers at most VSOCK_TX_BUF bytes from the
 * guest (the buf_alloc we advertise) and VSOCK_RX_STAGE bytes for the guest,
 * never more than the guest's credit allows.  A guest that breaks the
 * protocol gets its packet dropped or its connection reset, never more. */
#ifndef KINDLING_KVMM_VIRTIO_VSOCK_H
#define KINDLING_KVMM_VIRTIO_VSOCK_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "vmm/kvmm/guest_mem.h"
#include "vmm/kvmm/loop.h"
#include "vmm/kvmm/virtio_mmio.h"

#define VIRTIO_ID_VSOCK 19
#define VSOCK_HOST_CID 2
#define VSOCK_HDR_LEN 44
#define VSOCK_TYPE_STREAM 1
#define VSOCK_OP_REQUEST 1
#define VSOCK_OP_RESPONSE 2
#define VSOCK_OP_RST 3
#define VSOCK_OP_SHUTDOWN 4
#define VSOCK_OP_RW 5
#define VSOCK_OP_CREDIT_UPDATE 6
#define VSOCK_OP_CREDIT_REQUEST 7
#define VSOCK_SHUTDOWN_RCV 1
#define VSOCK_SHUTDOWN_SEND 2
#define VSOCK_MAX_CONNS 32		/* host sockets at once; more are refused (RST, or closed) */
#define VSOCK_MAX_PKT (64u * 1024)	/* the largest payload either side puts in one packet */
#define VSOCK_TX_BUF (256u * 1024)	/* guest->host buffering per connection = our buf_alloc */
#define VSOCK_RX_STAGE (64u * 1024)	/* host->guest bytes read ahead per connection */
#define VSOCK_RST_QUEUE 32		/* RSTs owed for packets without a connection */
#define VSOCK_FIRST_HOST_PORT (1u << 30) /* ports of host-initiated connections start here */

struct vsock_conn; /* private to virtio_vsock.c */

struct virtio_vsock {
	struct virtio_mmio_dev mmio;
	uint8_t config[8]; /* guest_cid, le64 */
	uint64_t guest_cid;
	char uds_path[108];
	int listen_fd;	/* on uds_path, for host-initiated connections */
	int kick_fd;	/* an eventfd: queue notifications and resets, handled on the loop thread */
	struct kvmm_loop *loop;
	pthread_mutex_t *lock;
	struct vsock_conn *conns; /* VSOCK_MAX_CONNS slots */
	unsigned rr;		  /* round-robin start for the next packet to the guest */
	uint32_t next_port;
	bool reset_pending;
	struct {
		uint32_t local_port, peer_port;
	} rst[VSOCK_RST_QUEUE];
	unsigned rst_head, rst_n;
	/* Counters for logs and tests. */
	uint64_t tx_packets, rx_packets, bad_packets, resets_sent;
};

/* Set |v| up as a vsock device for guest CID |guest_cid| (3..0xfffffffe)
 * on guest RAM |mem|, raising interrupts with |irq|(|irq_ctx|): bind and
 * listen on |uds_path| (which must not exist; it is removed again by
 * virtio_vsock_destroy()) and register the listener and the device's own
 * eventfd with |loop| under |lock| (NULL = no locking, single-threaded use).
 * The device's notify() and reset() only set work aside and wake the loop,
 * so they are safe from any thread holding |lock|.  |mem|, |loop| and |lock|
 * must outlive |v|.  Returns 0, or -EINVAL (bad CID or a path too long for
 * "{uds_path}_4294967295"), -EADDRINUSE, or another -errno, each logged with
 * the reason; on failure nothing is left open or registered. */
int virtio_vsock_init(struct virtio_vsock *v, uint64_t guest_cid, const char *uds_path, const struct guest_mem *mem,
		      virtio_irq_fn irq, void *irq_ctx, struct kvmm_loop *loop, pthread_mutex_t *lock);

/* Do the work set aside by notify() and reset() now: drop every connection
 * after a reset, take the guest's tx packets, fill its rx buffers.  The loop
 * calls it on its thread; tests and fuzzers call it directly.  The caller
 * holds |v|'s lock and is the loop's thread (or no loop runs). */
void virtio_vsock_process(struct virtio_vsock *v);

/* Tell the guest its transport was reset (after a snapshot is restored: the
 * host-side connections were not saved): one VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
 * on the event queue, and its interrupt.  The guest then drops its
 * connections and reconnects.  Caller holds |v|'s lock.  Returns 0, -EAGAIN
 * if the event queue is not live, -ENOBUFS if the driver left no buffer on
 * it, -EINVAL for a buffer too small (handed back empty), or -errno. */
int virtio_vsock_transport_reset(struct virtio_vsock *v);

/* Close every connection and the listener, unregister them from the loop
 * (call it after the loop has stopped, or on its thread), remove uds_path,
 * and free what |v| holds.  Safe after a failed init, and twice. */
void virtio_vsock_destroy(struct virtio_vsock *v);

#endif
