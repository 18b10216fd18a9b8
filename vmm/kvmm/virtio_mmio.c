/* The virtio-mmio transport, version 2 (virtio 1.x, 4.2 "Virtio Over MMIO"):
 * the register file and the device-status state machine, independent of KVM.
 * The vCPU loop turns MMIO exits in the device's window into
 * virtio_mmio_read/write calls. */
#include <errno.h>
#include <string.h>

#define LOG_COMPONENT "kvmm"
#include "common/common.h"
#include "vmm/kvmm/guest_mem.h"
#include "common/bytes.h"
#include "vmm/kvmm/virtio_mmio.h"
#include "vmm/kvmm/virtq.h"

int virtio_mmio_init(struct virtio_mmio_dev *d, const struct virtio_dev_ops *ops, void *opaque, uint64_t features,
		     const uint8_t *config, uint32_t config_len, const struct guest_mem *mem, virtio_irq_fn irq,
		     void *irq_ctx)
{
	if (!ops || !ops->notify || ops->num_queues == 0 || ops->num_queues > VIRTIO_MMIO_MAX_QUEUES || !mem || !irq)
		return -EINVAL;
	if (config_len > 0x1000 - VIRTIO_MMIO_CONFIG || (config_len && !config))
		return -EINVAL;
	memset(d, 0, sizeof(*d));
	d->ops = ops;
	d->opaque = opaque;
	d->mem = mem;
	d->irq = irq;
	d->irq_ctx = irq_ctx;
	d->device_features = features | 1ull << VIRTIO_F_VERSION_1;
	d->config = config;
	d->config_len = config_len;
	for (int i = 0; i < VIRTIO_MMIO_MAX_QUEUES; i++)
		virtq_init(&d->vq[i]);
	return 0;
}

static void device_reset(struct virtio_mmio_dev *d)
{
	if (d->ops->reset)
		d->ops->reset(d);
	d->status = 0;
	d->device_features_sel = d->driver_features_sel = d->queue_sel = 0;
	d->interrupt_status = 0;
	d->driver_features = 0;
	memset(d->qcfg, 0, sizeof(d->qcfg));
	for (int i = 0; i < VIRTIO_MMIO_MAX_QUEUES; i++)
		virtq_init(&d->vq[i]);
}

/* The driver broke the protocol: tell it (3.1.1 allows DEVICE_NEEDS_RESET
 * once DRIVER_OK is set) and stop serving queues until it resets us. */
void virtio_mmio_needs_reset(struct virtio_mmio_dev *d, const char *why)
{
	log_debug("virtio-mmio device %u: %s; needs reset", d->ops->device_id, why);
	if (d->status & VIRTIO_STATUS_DRIVER_OK) {
		d->status |= VIRTIO_STATUS_NEEDS_RESET;
		virtio_mmio_interrupt(d, VIRTIO_MMIO_INT_CONFIG);
	}
}

struct virtq *virtio_mmio_queue(struct virtio_mmio_dev *d, uint16_t q)
{
	if (q >= d->ops->num_queues || !d->vq[q].ready)
		return NULL;
	if ((d->status & (VIRTIO_STATUS_DRIVER_OK | VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED)) !=
	    VIRTIO_STATUS_DRIVER_OK)
		return NULL;
	return &d->vq[q];
}

void virtio_mmio_interrupt(struct virtio_mmio_dev *d, uint32_t why)
{
	d->interrupt_status |= why;
	d->irq(d->irq_ctx);
}

static bool queue_selected(const struct virtio_mmio_dev *d)
{
	return d->queue_sel < d->ops->num_queues;
}

static uint32_t reg_read(struct virtio_mmio_dev *d, uint64_t off)
{
	switch (off) {
	case VIRTIO_MMIO_MAGIC:
		return VIRTIO_MMIO_MAGIC_VALUE;
	case VIRTIO_MMIO_VERSION:
		return 2;
	case VIRTIO_MMIO_DEVICE_ID:
		return d->ops->device_id;
	case VIRTIO_MMIO_VENDOR_ID:
		return VIRTIO_MMIO_VENDOR;
	case VIRTIO_MMIO_DEVICE_FEATURES:
		if (d->device_features_sel > 1)
			return 0;
		return (uint32_t)(d->device_features >> (32 * d->device_features_sel));
	case VIRTIO_MMIO_QUEUE_NUM_MAX:
		return queue_selected(d) ? VIRTQ_MAX_SIZE : 0;
	case VIRTIO_MMIO_QUEUE_READY:
		return queue_selected(d) ? d->vq[d->queue_sel].ready : 0;
	case VIRTIO_MMIO_INTERRUPT_STATUS:
		return d->interrupt_status;
	case VIRTIO_MMIO_STATUS:
		return d->status;
	case VIRTIO_MMIO_CONFIG_GENERATION:
		return d->config_generation;
	default:
		return 0; /* write-only or reserved */
	}
}

/* FEATURES_OK: accept the driver's features only if they are a subset of
 * ours and include VERSION_1 (we are a modern-only device, 6.1). */
static bool features_acceptable(const struct virtio_mmio_dev *d)
{
	return !(d->driver_features & ~d->device_features) && (d->driver_features & (1ull << VIRTIO_F_VERSION_1));
}

static void write_status(struct virtio_mmio_dev *d, uint32_t v)
{
	if (v == 0) {
		device_reset(d);
		return;
	}
	/* The driver only ever adds bits (3.1.1); anything else but a reset is
	 * a broken driver. */
	if ((v & d->status) != d->status || v > 0xff) {
		virtio_mmio_needs_reset(d, "status bits cleared");
		return;
	}
	uint32_t added = v & ~d->status;
	if ((added & VIRTIO_STATUS_FEATURES_OK) && !features_acceptable(d))
		added &= ~(uint32_t)VIRTIO_STATUS_FEATURES_OK; /* the driver reads it back and gives up */
	if ((added & VIRTIO_STATUS_DRIVER_OK) && !((d->status | added) & VIRTIO_STATUS_FEATURES_OK)) {
		virtio_mmio_needs_reset(d, "DRIVER_OK without FEATURES_OK");
		return;
	}
	d->status |= added;
	if (added & VIRTIO_STATUS_DRIVER_OK)
		for (uint16_t q = 0; q < d->ops->num_queues; q++)
			if (d->vq[q].ready)
				d->ops->notify(d, q);
}

static void set_half(uint64_t *v, bool high, uint32_t x)
{
	if (high)
		*v = (*v & 0xffffffffull) | (uint64_t)x << 32;
	else
		*v = (*v & ~0xffffffffull) | x;
}

static void reg_write(struct virtio_mmio_dev *d, uint64_t off, uint32_t v)
{
	/* Queue layout registers may change only while the queue is not
	 * ready (4.2.2.2); the features only before FEATURES_OK. */
	bool qok = queue_selected(d) && !d->vq[d->queue_sel].ready;
	switch (off) {
	case VIRTIO_MMIO_DEVICE_FEATURES_SEL:
		d->device_features_sel = v;
		break;
	case VIRTIO_MMIO_DRIVER_FEATURES:
		if (d->driver_features_sel <= 1 && !(d->status & VIRTIO_STATUS_FEATURES_OK))
			set_half(&d->driver_features, d->driver_features_sel == 1, v);
		break;
	case VIRTIO_MMIO_DRIVER_FEATURES_SEL:
		d->driver_features_sel = v;
		break;
	case VIRTIO_MMIO_QUEUE_SEL:
		d->queue_sel = v;
		break;
	case VIRTIO_MMIO_QUEUE_NUM:
		if (qok)
			d->qcfg[d->queue_sel].num = v <= VIRTQ_MAX_SIZE ? (uint16_t)v : 0;
		break;
	case VIRTIO_MMIO_QUEUE_DESC_LOW:
	case VIRTIO_MMIO_QUEUE_DESC_HIGH:
		if (qok)
			set_half(&d->qcfg[d->queue_sel].desc, off == VIRTIO_MMIO_QUEUE_DESC_HIGH, v);
		break;
	case VIRTIO_MMIO_QUEUE_DRIVER_LOW:
	case VIRTIO_MMIO_QUEUE_DRIVER_HIGH:
		if (qok)
			set_half(&d->qcfg[d->queue_sel].driver, off == VIRTIO_MMIO_QUEUE_DRIVER_HIGH, v);
		break;
	case VIRTIO_MMIO_QUEUE_DEVICE_LOW:
	case VIRTIO_MMIO_QUEUE_DEVICE_HIGH:
		if (qok)
			set_half(&d->qcfg[d->queue_sel].device, off == VIRTIO_MMIO_QUEUE_DEVICE_HIGH, v);
		break;
	case VIRTIO_MMIO_QUEUE_READY:
		if (!queue_selected(d))
			break;
		if (v == 0) {
			virtq_init(&d->vq[d->queue_sel]);
		} else if (qok) {
			const struct virtio_mmio_qcfg *c = &d->qcfg[d->queue_sel];
			bool ev = d->driver_features & (1ull << VIRTIO_F_RING_EVENT_IDX);
			int r = virtq_configure(&d->vq[d->queue_sel], d->mem, c->num, c->desc, c->driver, c->device,
						ev);
			if (r < 0)
				virtio_mmio_needs_reset(d, "bad queue layout");
		}
		break;
	case VIRTIO_MMIO_QUEUE_NOTIFY:
		if (v < d->ops->num_queues && virtio_mmio_queue(d, (uint16_t)v))
			d->ops->notify(d, (uint16_t)v);
		break;
	case VIRTIO_MMIO_INTERRUPT_ACK:
		d->interrupt_status &= ~v;
		break;
	case VIRTIO_MMIO_STATUS:
		write_status(d, v);
		break;
	default:
		break; /* read-only or reserved: ignored */
	}
}

int virtio_mmio_read(struct virtio_mmio_dev *d, uint64_t off, void *data, uint32_t len)
{
	memset(data, 0, len); /* a bad access reads as zeros */
	if (off >= VIRTIO_MMIO_CONFIG) {
		uint64_t c = off - VIRTIO_MMIO_CONFIG;
		if ((len != 1 && len != 2 && len != 4) || c > d->config_len || len > d->config_len - c)
			return -EINVAL;
		memcpy(data, d->config + c, len);
		return 0;
	}
	if (len != 4 || off % 4)
		return -EINVAL;
	put_le32(data, reg_read(d, off));
	return 0;
}

int virtio_mmio_write(struct virtio_mmio_dev *d, uint64_t off, const void *data, uint32_t len)
{
	if (off >= VIRTIO_MMIO_CONFIG)
		return -EINVAL; /* our config spaces are read-only */
	if (len != 4 || off % 4)
		return -EINVAL;
	reg_write(d, off, get_le32(data));
	return 0;
}
