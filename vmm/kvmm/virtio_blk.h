/* kvmm: virtio-blk, read-only (virtio_blk.c): a block device over a
 * read_at() backend, on the virtio-mmio transport. */
#ifndef KINDLING_KVMM_VIRTIO_BLK_H
#define KINDLING_KVMM_VIRTIO_BLK_H

#include <stddef.h>
#include <stdint.h>

#include "vmm/kvmm/guest_mem.h"
#include "vmm/kvmm/virtio_mmio.h"

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2
#define VIRTIO_BLK_ID_BYTES 20
#define VIRTIO_BLK_F_SEG_MAX 2
#define VIRTIO_BLK_F_RO 5
#define VIRTIO_BLK_F_BLK_SIZE 6
#define VIRTIO_BLK_F_FLUSH 9

/* Where the disk's bytes come from: blockd's in-process device or a file. */
struct virtio_blk_backend {
	/* Required: fill all of |<buf, len>| from byte |off|.  0 or -errno. */
	int (*read_at)(void *ctx, uint64_t off, void *buf, size_t len);
	/* Optional: make earlier reads durable (nothing to do read-only). */
	int (*flush)(void *ctx);
	void *ctx;
	uint64_t size; /* bytes; a multiple of 512 is exposed, a tail is cut */
};

struct virtio_blk {
	struct virtio_mmio_dev mmio;
	struct virtio_blk_backend be;
	char id[VIRTIO_BLK_ID_BYTES];
	uint8_t config[24]; /* capacity, size_max, seg_max, geometry, blk_size (little-endian) */
	uint64_t requests, errors; /* counters for logs and tests */
};

/* Set |b| up over |be| (copied) with serial |id| (up to 20 bytes, may be
 * NULL), on guest RAM |mem|, raising interrupts through |irq|(|irq_ctx|).
 * Offers VERSION_1, RO, FLUSH, SEG_MAX, BLK_SIZE, INDIRECT_DESC and EVENT_IDX.
 * Returns 0 or -EINVAL. */
int virtio_blk_init(struct virtio_blk *b, const struct virtio_blk_backend *be, const char *id,
		    const struct guest_mem *mem, virtio_irq_fn irq, void *irq_ctx);

#endif
