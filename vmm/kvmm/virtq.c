/* Split virtqueues (virtio 1.x, 2.7 "Split Virtqueues") over hostile guest
 * memory.
 *
 * Everything the driver wrote is read exactly once into a local copy, then
 * checked, then used: the guest can rewrite its rings at any moment from
 * another vCPU, so a value must not be validated in one place and re-read in
 * another.  Every guest address goes through guest_mem_ptr().
 *
 * Ring layouts (all little-endian):
 *   desc[i]  @ 16*i:  u64 addr, u32 len, u16 flags, u16 next
 *   avail:   u16 flags, u16 idx, u16 ring[size], u16 used_event
 *   used:    u16 flags, u16 idx, {u32 id, u32 len}[size], u16 avail_event
 */
#include <endian.h>
#include <errno.h>
#include <string.h>

#define LOG_COMPONENT "kvmm"
#include "common/common.h"
#include "vmm/kvmm/guest_mem.h"
#include "common/bytes.h"
#include "vmm/kvmm/virtq.h"

#define VIRTQ_AVAIL_F_NO_INTERRUPT 1

static uint64_t avail_bytes(uint16_t size, bool event_idx)
{
	return 4 + 2ull * size + (event_idx ? 2 : 0);
}

static uint64_t used_bytes(uint16_t size, bool event_idx)
{
	return 4 + 8ull * size + (event_idx ? 2 : 0);
}

void virtq_init(struct virtq *q)
{
	memset(q, 0, sizeof(*q));
}

int virtq_configure(struct virtq *q, const struct guest_mem *m, uint16_t size, uint64_t desc_gpa, uint64_t avail_gpa,
		    uint64_t used_gpa, bool event_idx)
{
	virtq_init(q);
	if (size == 0 || size > VIRTQ_MAX_SIZE || (size & (size - 1)))
		return -EINVAL;
	if (desc_gpa % 16 || avail_gpa % 2 || used_gpa % 4)
		return -EINVAL;
	void *avail = guest_mem_ptr(m, avail_gpa, avail_bytes(size, event_idx));
	void *used = guest_mem_ptr(m, used_gpa, used_bytes(size, event_idx));
	if (!guest_mem_ptr(m, desc_gpa, 16ull * size) || !avail || !used)
		return -EINVAL;
	/* The two idx fields are accessed atomically, which needs natural
	 * alignment on the host side too (guest RAM is page-aligned in kvmm, but
	 * a test or fuzz buffer might not be). */
	if ((uintptr_t)avail % 2 || (uintptr_t)used % 2)
		return -EINVAL;
	q->size = size;
	q->desc_gpa = desc_gpa;
	q->avail_gpa = avail_gpa;
	q->used_gpa = used_gpa;
	q->event_idx = event_idx;
	q->ready = true;
	return 0;
}

/* The rings' host addresses; configure checked them, and guest RAM does not
 * move, but we look them up again rather than cache raw pointers so that one
 * accessor stays the only way in. */
static uint8_t *ring(const struct guest_mem *m, uint64_t gpa, uint64_t len)
{
	return guest_mem_ptr(m, gpa, len);
}

static uint16_t load_idx(const uint8_t *ring_base)
{
	uint16_t v = __atomic_load_n((const uint16_t *)(const void *)(ring_base + 2), __ATOMIC_ACQUIRE);
	return le16toh(v);
}

/* Walk the chain starting at |head| into |out|. */
static int walk_chain(const struct virtq *q, const struct guest_mem *m, uint16_t head, struct virtq_chain *out)
{
	const uint8_t *table = ring(m, q->desc_gpa, 16ull * q->size);
	uint32_t table_n = q->size, visited = 0;
	bool indirect = false;
	uint16_t i = head;

	if (!table)
		return -EFAULT;
	for (;;) {
		/* A chain that visits more descriptors than its table holds
		 * revisits one: a loop. */
		if (visited++ >= table_n)
			return -ELOOP;
		uint8_t d[16];
		memcpy(d, table + 16u * i, sizeof(d));
		uint64_t addr = get_le64(d);
		uint32_t len = get_le32(d + 8);
		uint16_t flags = get_le16(d + 12), next = get_le16(d + 14);

		if (flags & VIRTQ_DESC_F_INDIRECT) {
			/* 2.7.5.3.1: no INDIRECT together with NEXT, no
			 * indirect inside an indirect table, and a table is a
			 * whole number of descriptors. */
			if (indirect || (flags & VIRTQ_DESC_F_NEXT))
				return -EINVAL;
			if (len == 0 || len % 16 || len / 16 > VIRTQ_MAX_SIZE)
				return -EINVAL;
			table = ring(m, addr, len);
			if (!table)
				return -EFAULT;
			table_n = len / 16;
			visited = 0;
			indirect = true;
			i = 0;
			continue;
		}
		if (out->n == VIRTQ_MAX_SIZE)
			return -E2BIG;
		if (!guest_mem_ptr(m, addr, len))
			return -EFAULT;
		bool w = flags & VIRTQ_DESC_F_WRITE;
		/* 2.7.4.2: device-readable buffers come before writable ones. */
		if (!w && out->write_len)
			return -EINVAL;
		if (!w && out->n && out->bufs[out->n - 1].write)
			return -EINVAL;
		out->bufs[out->n++] = (struct virtq_buf){ .gpa = addr, .len = len, .write = w };
		/* At most VIRTQ_MAX_SIZE buffers of < 4 GiB each: no overflow. */
		if (w)
			out->write_len += len;
		else
			out->read_len += len;
		if (!(flags & VIRTQ_DESC_F_NEXT))
			return 0;
		if (next >= table_n)
			return -EINVAL;
		i = next;
	}
}

int virtq_pop(struct virtq *q, const struct guest_mem *m, struct virtq_chain *out)
{
	out->head = VIRTQ_NO_HEAD;
	out->n = 0;
	out->read_len = out->write_len = 0;
	if (!q->ready)
		return -EINVAL;
	uint8_t *avail = ring(m, q->avail_gpa, avail_bytes(q->size, q->event_idx));
	uint8_t *used = ring(m, q->used_gpa, used_bytes(q->size, q->event_idx));
	if (!avail || !used)
		return -EFAULT;

	uint16_t idx = load_idx(avail);
	if (idx == q->last_avail && q->event_idx) {
		/* Ask for a notification at the next entry, then look again:
		 * the driver may have added one before it saw our avail_event. */
		uint16_t ev = htole16(q->last_avail);
		/* Store then load, both sequentially consistent: the store is
		 * visible before the load (a fence would say the same, but TSan
		 * cannot model fences). */
		__atomic_store_n((uint16_t *)(void *)(used + 4 + 8u * q->size), ev, __ATOMIC_SEQ_CST);
		idx = le16toh(__atomic_load_n((const uint16_t *)(const void *)(avail + 2), __ATOMIC_SEQ_CST));
	}
	uint16_t pending = (uint16_t)(idx - q->last_avail);
	if (pending == 0)
		return -EAGAIN;
	if (pending > q->size)
		return -EPROTO;

	uint16_t head = get_le16(avail + 4 + 2u * (q->last_avail % q->size));
	q->last_avail++;
	if (q->event_idx) {
		uint16_t ev = htole16(q->last_avail);
		__atomic_store_n((uint16_t *)(void *)(used + 4 + 8u * q->size), ev, __ATOMIC_RELAXED);
	}
	if (head >= q->size)
		return -EINVAL;
	out->head = head;
	int r = walk_chain(q, m, head, out);
	if (r < 0) {
		out->n = 0;
		out->read_len = out->write_len = 0;
	}
	return r;
}

int virtq_push(struct virtq *q, const struct guest_mem *m, uint16_t head, uint32_t len)
{
	if (!q->ready || head >= q->size)
		return -EINVAL;
	uint8_t *used = ring(m, q->used_gpa, used_bytes(q->size, q->event_idx));
	if (!used)
		return -EFAULT;
	uint8_t *elem = used + 4 + 8u * (q->used_idx % q->size);
	put_le32(elem, head);
	put_le32(elem + 4, len);
	q->used_idx++;
	/* The element is visible before the index that publishes it, and
	 * (sequentially consistent) before virtq_should_interrupt reads the
	 * driver's suppression fields. */
	__atomic_store_n((uint16_t *)(void *)(used + 2), htole16(q->used_idx), __ATOMIC_SEQ_CST);
	return 0;
}

bool virtq_should_interrupt(struct virtq *q, const struct guest_mem *m)
{
	if (!q->ready)
		return false;
	const uint8_t *avail = ring(m, q->avail_gpa, avail_bytes(q->size, q->event_idx));
	if (!avail)
		return false;
	/* Our used->idx store (sequentially consistent, in virtq_push) must
	 * be visible before we read the driver's suppression fields, or both
	 * sides could decide not to act: read them sequentially consistent. */
	uint16_t old = q->signalled_used, now = q->used_idx;
	q->signalled_used = now;
	if (old == now)
		return false;
	if (!q->event_idx)
		return !(le16toh(__atomic_load_n((const uint16_t *)(const void *)avail, __ATOMIC_SEQ_CST)) &
			 VIRTQ_AVAIL_F_NO_INTERRUPT);
	/* vring_need_event(): did used_idx step past used_event since the
	 * last interrupt?  All arithmetic mod 2^16 on purpose. */
	uint16_t event = le16toh(
		__atomic_load_n((const uint16_t *)(const void *)(avail + 4 + 2u * q->size), __ATOMIC_SEQ_CST));
	return (uint16_t)(now - event - 1) < (uint16_t)(now - old);
}
