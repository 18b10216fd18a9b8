/* A read-only virtio-blk device (virtio 1.x, 5.2 "Block Device") over a
 * read_at() backend.
 *
 * A request is one chain: a 16-byte device-readable header (u32 type, u32
 * reserved, u64 sector), the data buffers, and a final device-writable status
 * byte.  The driver may split any of it across descriptors however it likes
 * (2.6.4 "Message Framing"), so we treat the chain as a byte stream and never
 * assume one descriptor per part. */
#include <errno.h>
#include <string.h>

#define LOG_COMPONENT "kvmm"
#include "common/common.h"
#include "vmm/kvmm/guest_mem.h"
#include "common/bytes.h"
#include "vmm/kvmm/virtio_blk.h"
#include "vmm/kvmm/virtio_mmio.h"
#include "vmm/kvmm/virtq.h"

#define SECTOR 512u

static struct virtio_blk *blk_of(struct virtio_mmio_dev *d)
{
	return d->opaque;
}

/* Copy |len| bytes of the chain's readable stream into |buf|. */
static int gather_readable(const struct guest_mem *m, const struct virtq_chain *c, void *buf, size_t len)
{
	uint8_t *o = buf;
	for (size_t i = 0; i < c->n && len && !c->bufs[i].write; i++) {
		size_t n = c->bufs[i].len < len ? c->bufs[i].len : len;
		if (guest_mem_read(m, c->bufs[i].gpa, o, n) < 0)
			return -EFAULT;
		o += n;
		len -= n;
	}
	return len ? -EINVAL : 0;
}

/* The writable data region is every writable byte but the last (the status).
 * Calls |fn| on each piece, in order, with its stream offset. */
typedef int (*piece_fn)(struct virtio_blk *b, uint64_t stream_off, void *host, size_t len, void *arg);

static int for_each_data_piece(struct virtio_blk *b, const struct virtq_chain *c, uint64_t data_len, piece_fn fn,
			       void *arg)
{
	uint64_t done = 0;
	for (size_t i = 0; i < c->n && done < data_len; i++) {
		if (!c->bufs[i].write)
			continue;
		uint64_t n = c->bufs[i].len;
		if (n > data_len - done)
			n = data_len - done;
		if (n == 0)
			continue;
		void *host = guest_mem_ptr(b->mmio.mem, c->bufs[i].gpa, n);
		if (!host)
			return -EFAULT;
		int r = fn(b, done, host, (size_t)n, arg);
		if (r < 0)
			return r;
		done += n;
	}
	return 0;
}

static int piece_read(struct virtio_blk *b, uint64_t stream_off, void *host, size_t len, void *arg)
{
	uint64_t base = *(const uint64_t *)arg, off;
	if (!ck_add_u64(base, stream_off, &off))
		return -EINVAL;
	return b->be.read_at(b->be.ctx, off, host, len);
}

static int piece_id(struct virtio_blk *b, uint64_t stream_off, void *host, size_t len, void *arg)
{
	(void)arg;
	/* GET_ID data is at most 20 bytes (the caller caps data_len). */
	memcpy(host, b->id + stream_off, len);
	return 0;
}

/* Serve one well-formed chain; returns the status byte and sets |*written| to
 * the data bytes placed in the guest. */
static uint8_t serve(struct virtio_blk *b, const struct virtq_chain *c, uint64_t data_len, uint64_t *written)
{
	uint8_t hdr[16];
	*written = 0;
	if (gather_readable(b->mmio.mem, c, hdr, sizeof(hdr)) < 0)
		return VIRTIO_BLK_S_IOERR;
	uint32_t type = get_le32(hdr);
	uint64_t sector = get_le64(hdr + 8);

	switch (type) {
	case VIRTIO_BLK_T_IN: {
		uint64_t off, end, cap = b->be.size / SECTOR * SECTOR;
		if (data_len % SECTOR || !ck_mul_u64(sector, SECTOR, &off) || !ck_add_u64(off, data_len, &end) ||
		    end > cap) {
			log_debug("virtio-blk: read of %llu bytes at sector %llu is outside the %llu-byte disk",
				  (unsigned long long)data_len, (unsigned long long)sector, (unsigned long long)cap);
			return VIRTIO_BLK_S_IOERR;
		}
		int r = for_each_data_piece(b, c, data_len, piece_read, &off);
		if (r < 0) {
			log_err("virtio-blk: read %llu bytes at %llu: %s", (unsigned long long)data_len,
				(unsigned long long)off, strerror(-r));
			return VIRTIO_BLK_S_IOERR;
		}
		*written = data_len;
		return VIRTIO_BLK_S_OK;
	}
	case VIRTIO_BLK_T_GET_ID: {
		uint64_t n = data_len < VIRTIO_BLK_ID_BYTES ? data_len : VIRTIO_BLK_ID_BYTES;
		if (for_each_data_piece(b, c, n, piece_id, NULL) < 0)
			return VIRTIO_BLK_S_IOERR;
		*written = n;
		return VIRTIO_BLK_S_OK;
	}
	case VIRTIO_BLK_T_FLUSH:
		if (b->be.flush && b->be.flush(b->be.ctx) < 0)
			return VIRTIO_BLK_S_IOERR;
		return VIRTIO_BLK_S_OK;
	case VIRTIO_BLK_T_OUT:
		return VIRTIO_BLK_S_IOERR; /* read-only disk (we offer VIRTIO_BLK_F_RO) */
	default:
		return VIRTIO_BLK_S_UNSUPP;
	}
}

/* Handle one chain; returns the used length to report. */
static uint32_t handle(struct virtio_blk *b, const struct virtq_chain *c)
{
	/* The status byte is the last byte of the last buffer, which must be
	 * writable; without it we cannot even say "error". */
	if (c->n == 0 || !c->bufs[c->n - 1].write || c->bufs[c->n - 1].len == 0) {
		b->errors++;
		return 0;
	}
	const struct virtq_buf *last = &c->bufs[c->n - 1];
	uint64_t data_len = c->write_len - 1, written = 0;
	/* The used length is 32 bits, so is any request we serve. */
	uint8_t status = c->write_len > UINT32_MAX ? VIRTIO_BLK_S_IOERR : serve(b, c, data_len, &written);
	if (status != VIRTIO_BLK_S_OK)
		b->errors++;
	if (guest_mem_write(b->mmio.mem, last->gpa + last->len - 1, &status, 1) < 0)
		return 0;
	return (uint32_t)(written + 1); /* written < write_len <= UINT32_MAX */
}

static void blk_notify(struct virtio_mmio_dev *d, uint16_t qi)
{
	struct virtio_blk *b = blk_of(d);
	struct virtq *q = virtio_mmio_queue(d, qi);
	struct virtq_chain c;
	bool pushed = false;

	if (!q)
		return;
	for (;;) {
		int r = virtq_pop(q, d->mem, &c);
		if (r == -EAGAIN)
			break;
		if (r == -EPROTO) {
			virtio_mmio_needs_reset(d, "avail index runs ahead of the queue");
			break;
		}
		b->requests++;
		uint32_t used = 0;
		if (r < 0) {
			log_debug("virtio-blk: bad descriptor chain at head %u: %s", c.head, strerror(-r));
			b->errors++;
		} else {
			used = handle(b, &c);
		}
		if (c.head != VIRTQ_NO_HEAD && virtq_push(q, d->mem, c.head, used) == 0)
			pushed = true;
	}
	if (pushed && virtq_should_interrupt(q, d->mem))
		virtio_mmio_interrupt(d, VIRTIO_MMIO_INT_VRING);
}

static const struct virtio_dev_ops blk_ops = {
	.device_id = 2,
	.num_queues = 1,
	.notify = blk_notify,
	.reset = NULL,
};

int virtio_blk_init(struct virtio_blk *b, const struct virtio_blk_backend *be, const char *id,
		    const struct guest_mem *mem, virtio_irq_fn irq, void *irq_ctx)
{
	if (!be || !be->read_at)
		return -EINVAL;
	memset(b, 0, sizeof(*b));
	b->be = *be;
	if (id) /* 20 bytes, NUL-padded, not terminated when full: the spec's format */
		memcpy(b->id, id, strnlen(id, sizeof(b->id)));
	put_le64(b->config, be->size / SECTOR);	     /* capacity in 512-byte sectors */
	put_le32(b->config + 8, 0);			     /* size_max (not offered) */
	put_le32(b->config + 12, VIRTQ_MAX_SIZE - 2);    /* seg_max: header and status take two descriptors */
	put_le32(b->config + 20, SECTOR);		     /* blk_size */
	uint64_t features = 1ull << VIRTIO_BLK_F_RO | 1ull << VIRTIO_BLK_F_FLUSH | 1ull << VIRTIO_BLK_F_SEG_MAX |
			    1ull << VIRTIO_BLK_F_BLK_SIZE | 1ull << VIRTIO_F_RING_INDIRECT_DESC |
			    1ull << VIRTIO_F_RING_EVENT_IDX;
	return virtio_mmio_init(&b->mmio, &blk_ops, b, features, b->config, sizeof(b->config), mem, irq, irq_ctx);
}
