/* kvmm: split virtqueues (virtq.c), virtio 1.x: descriptor chains, indirect
 * tables, the avail and used rings, EVENT_IDX. */
#ifndef KINDLING_KVMM_VIRTQ_H
#define KINDLING_KVMM_VIRTQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vmm/kvmm/guest_mem.h"

#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2
#define VIRTQ_DESC_F_INDIRECT 4

/* The largest queue kvmm offers (QueueNumMax); also the longest chain it
 * accepts, direct or through an indirect table. */
#define VIRTQ_MAX_SIZE 256

/* One queue, as the driver configured it.  desc/avail/used are guest-physical
 * addresses checked by virtq_configure(). */
struct virtq {
	uint16_t size;		/* power of two, 1..VIRTQ_MAX_SIZE */
	uint64_t desc_gpa, avail_gpa, used_gpa;
	bool event_idx;		/* VIRTIO_RING_F_EVENT_IDX was negotiated */
	bool ready;		/* configured; the functions below need it */
	uint16_t last_avail;	/* the next avail ring index we consume */
	uint16_t used_idx;	/* our copy of used->idx (the guest may scribble on the ring) */
	uint16_t signalled_used; /* used_idx at the last interrupt decision (EVENT_IDX) */
};

/* One buffer of a chain: guest-physical, already checked to lie in guest RAM. */
struct virtq_buf {
	uint64_t gpa;
	uint32_t len;
	bool write; /* device-writable */
};

#define VIRTQ_NO_HEAD 0xffff

/* One descriptor chain, flattened (indirect tables expanded). */
struct virtq_chain {
	uint16_t head; /* the head index to hand back with virtq_push(), or VIRTQ_NO_HEAD */
	size_t n;
	struct virtq_buf bufs[VIRTQ_MAX_SIZE];
	uint64_t read_len, write_len; /* totals of device-readable and device-writable bytes */
};

/* Reset |q| to unconfigured. */
void virtq_init(struct virtq *q);

/* Check and take the driver's layout: |size| a power of two up to
 * VIRTQ_MAX_SIZE, the descriptor table 16-aligned, the avail ring 2-aligned and
 * the used ring 4-aligned, each wholly inside guest RAM (with the event fields
 * when |event_idx|).  Returns 0 (the queue is ready, both indices 0) or
 * -EINVAL (|q| left unconfigured). */
int virtq_configure(struct virtq *q, const struct guest_mem *m, uint16_t size, uint64_t desc_gpa, uint64_t avail_gpa,
		    uint64_t used_gpa, bool event_idx);

/* Take the next available chain and walk it into |out|.  Returns
 *   0        a chain, out->head set; hand it back with virtq_push();
 *   -EAGAIN  nothing available;
 *   -EPROTO  the avail index is more than a queue ahead: the ring is broken,
 *            nothing is consumed (the device should ask for a reset);
 *   -EINVAL, -EFAULT, -ELOOP, -E2BIG  this chain is bad (a head or next index
 *            out of range, a buffer outside guest RAM, a loop or a chain longer
 *            than the queue, a bad or nested indirect table, a readable buffer
 *            after a writable one).  The entry IS consumed; if out->head is not
 *            VIRTQ_NO_HEAD the caller pushes it back with length 0.
 * Nothing outside guest RAM is ever read or written.  With EVENT_IDX the
 * avail_event field is updated so the driver notifies for the next entry. */
int virtq_pop(struct virtq *q, const struct guest_mem *m, struct virtq_chain *out);

/* Return chain |head| to the driver with |len| bytes written into its
 * writable buffers: one used-ring element, then (release order) used->idx.
 * Returns 0 or -EINVAL (head out of range, queue not ready). */
int virtq_push(struct virtq *q, const struct guest_mem *m, uint16_t head, uint32_t len);

/* Whether the driver wants an interrupt for what was pushed since the last
 * call (VIRTQ_AVAIL_F_NO_INTERRUPT, or used_event with EVENT_IDX). */
bool virtq_should_interrupt(struct virtq *q, const struct guest_mem *m);

#endif
