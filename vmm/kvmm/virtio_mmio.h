/* kvmm: the virtio-mmio transport (virtio_mmio.c): the version-2 register
 * file and device-status machine, which a device model plugs into through
 * struct virtio_dev_ops.  The transport does not lock itself (see kvmm.h,
 * "Threading"). */
#ifndef KINDLING_KVMM_VIRTIO_MMIO_H
#define KINDLING_KVMM_VIRTIO_MMIO_H

#include <stdint.h>

#include "vmm/kvmm/guest_mem.h"
#include "vmm/kvmm/virtq.h"

#define VIRTIO_F_RING_INDIRECT_DESC 28
#define VIRTIO_F_RING_EVENT_IDX 29
#define VIRTIO_F_VERSION_1 32

#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 64
#define VIRTIO_STATUS_FAILED 128

/* Register offsets (virtio 1.x, 4.2.2, "MMIO Device Register Layout"). */
enum {
	VIRTIO_MMIO_MAGIC = 0x000,
	VIRTIO_MMIO_VERSION = 0x004,
	VIRTIO_MMIO_DEVICE_ID = 0x008,
	VIRTIO_MMIO_VENDOR_ID = 0x00c,
	VIRTIO_MMIO_DEVICE_FEATURES = 0x010,
	VIRTIO_MMIO_DEVICE_FEATURES_SEL = 0x014,
	VIRTIO_MMIO_DRIVER_FEATURES = 0x020,
	VIRTIO_MMIO_DRIVER_FEATURES_SEL = 0x024,
	VIRTIO_MMIO_QUEUE_SEL = 0x030,
	VIRTIO_MMIO_QUEUE_NUM_MAX = 0x034,
	VIRTIO_MMIO_QUEUE_NUM = 0x038,
	VIRTIO_MMIO_QUEUE_READY = 0x044,
	VIRTIO_MMIO_QUEUE_NOTIFY = 0x050,
	VIRTIO_MMIO_INTERRUPT_STATUS = 0x060,
	VIRTIO_MMIO_INTERRUPT_ACK = 0x064,
	VIRTIO_MMIO_STATUS = 0x070,
	VIRTIO_MMIO_QUEUE_DESC_LOW = 0x080,
	VIRTIO_MMIO_QUEUE_DESC_HIGH = 0x084,
	VIRTIO_MMIO_QUEUE_DRIVER_LOW = 0x090,
	VIRTIO_MMIO_QUEUE_DRIVER_HIGH = 0x094,
	VIRTIO_MMIO_QUEUE_DEVICE_LOW = 0x0a0,
	VIRTIO_MMIO_QUEUE_DEVICE_HIGH = 0x0a4,
	VIRTIO_MMIO_CONFIG_GENERATION = 0x0fc,
	VIRTIO_MMIO_CONFIG = 0x100,
};
#define VIRTIO_MMIO_MAGIC_VALUE 0x74726976u /* "virt" */
#define VIRTIO_MMIO_VENDOR 0x4b494e44u	    /* "KIND" */
#define VIRTIO_MMIO_INT_VRING 1
#define VIRTIO_MMIO_INT_CONFIG 2
#define VIRTIO_MMIO_MAX_QUEUES 4

struct virtio_mmio_dev;

/* What a device model plugs into the transport.  Static const tables. */
struct virtio_dev_ops {
	uint32_t device_id;  /* 2 = block */
	uint16_t num_queues; /* 1..VIRTIO_MMIO_MAX_QUEUES */
	/* Required: queue |q| was notified (QueueNotify), or the driver set
	 * DRIVER_OK with queues ready.  Process it with virtio_mmio_queue(). */
	void (*notify)(struct virtio_mmio_dev *d, uint16_t q);
	/* Optional: the driver wrote 0 to Status; drop any in-flight state. */
	void (*reset)(struct virtio_mmio_dev *d);
};

/* Raise the device's interrupt line (later: an irqfd write).  Required. */
typedef void (*virtio_irq_fn)(void *ctx);

/* A queue's layout as the driver writes it, register by register, before
 * QueueReady hands it to virtq_configure(). */
struct virtio_mmio_qcfg {
	uint16_t num;
	uint64_t desc, driver, device;
};

/* One virtio-mmio device: the transport state.  The device model keeps its
 * own state next to it and finds it through |opaque|. */
struct virtio_mmio_dev {
	const struct virtio_dev_ops *ops;
	void *opaque;
	const struct guest_mem *mem;
	virtio_irq_fn irq;
	void *irq_ctx;
	uint64_t device_features; /* offered; VIRTIO_F_VERSION_1 always included */
	const uint8_t *config;	  /* the device config space, owned by the model */
	uint32_t config_len;
	/* Registers. */
	uint32_t status, device_features_sel, driver_features_sel, queue_sel, interrupt_status, config_generation;
	uint64_t driver_features;
	struct virtio_mmio_qcfg qcfg[VIRTIO_MMIO_MAX_QUEUES];
	struct virtq vq[VIRTIO_MMIO_MAX_QUEUES];
};

/* Set |d| up in the reset state for the model |ops| with private |opaque|,
 * offering |features| (VERSION_1 is added), over |<config, config_len>|
 * (read-only to the driver), on guest RAM |mem|, raising interrupts with
 * |irq|(|irq_ctx|).  Everything passed in must outlive |d|.  Returns 0 or
 * -EINVAL for a bad ops table. */
int virtio_mmio_init(struct virtio_mmio_dev *d, const struct virtio_dev_ops *ops, void *opaque, uint64_t features,
		     const uint8_t *config, uint32_t config_len, const struct guest_mem *mem, virtio_irq_fn irq,
		     void *irq_ctx);

/* The vCPU loop's MMIO entry points: |off| is relative to the device base,
 * |len| the access width.  Registers below 0x100 take aligned 4-byte
 * accesses; the config space takes 1, 2 or 4 bytes.  A bad access reads as
 * zeros, writes nothing, and returns -EINVAL (the guest is not stopped for
 * it); otherwise 0. */
int virtio_mmio_read(struct virtio_mmio_dev *d, uint64_t off, void *data, uint32_t len);
int virtio_mmio_write(struct virtio_mmio_dev *d, uint64_t off, const void *data, uint32_t len);

/* The ready virtqueue |q| of |d|, or NULL (out of range, not ready, or the
 * device is not DRIVER_OK). */
struct virtq *virtio_mmio_queue(struct virtio_mmio_dev *d, uint16_t q);

/* The driver broke the protocol (|why| is logged at debug level): set
 * DEVICE_NEEDS_RESET and raise a config interrupt if the device is live, and
 * serve no queue until the driver resets the device. */
void virtio_mmio_needs_reset(struct virtio_mmio_dev *d, const char *why);

/* Set |why| (VIRTIO_MMIO_INT_VRING or _CONFIG) in InterruptStatus and raise
 * the line. */
void virtio_mmio_interrupt(struct virtio_mmio_dev *d, uint32_t why);

#endif
