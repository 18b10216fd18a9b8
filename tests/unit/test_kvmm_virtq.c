/* Guest memory and split virtqueues (vmm/kvmm/) against well-formed and
 * hostile rings: valid chains, loops, addresses outside the guest, indirect
 * tables, ring indices that run ahead, used-ring updates, EVENT_IDX. */
/* ctest-labels: no-tsan (single-threaded: nothing for ThreadSanitizer to check) */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tests/check.h"
#include "vmm/kvmm/guest_mem.h"
#include "common/bytes.h"
#include "vmm/kvmm/virtq.h"

#define BASE 0x10000ull /* guest RAM starts here, not at 0, to catch offset mistakes */
#define MEMSZ 0x10000ull
#define DESC (BASE + 0x0000)
#define AVAIL (BASE + 0x1000)
#define USED (BASE + 0x2000)
#define DATA (BASE + 0x4000)
#define QSZ 16

static uint8_t *ram;
static struct guest_mem mem;

static uint8_t *g(uint64_t gpa)
{
	return ram + (gpa - BASE);
}

static void set_desc_at(uint64_t table, uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
	uint8_t *d = g(table + 16u * i);
	put_le64(d, addr);
	put_le32(d + 8, len);
	put_le16(d + 12, flags);
	put_le16(d + 14, next);
}

static void set_desc(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
	set_desc_at(DESC, i, addr, len, flags, next);
}

/* Offer |head| in the avail ring and bump avail->idx. */
static void offer(uint16_t head)
{
	uint16_t idx = get_le16(g(AVAIL) + 2);
	put_le16(g(AVAIL) + 4 + 2 * (idx % QSZ), head);
	put_le16(g(AVAIL) + 2, (uint16_t)(idx + 1));
}

static void reset_ram(void)
{
	memset(ram, 0, MEMSZ);
}

static void test_guest_mem(void)
{
	struct guest_mem m;
	static uint8_t a[4096], b[4096];
	guest_mem_init(&m);
	CHECK(guest_mem_add(&m, 0x1000, a, sizeof(a)) == 0);
	CHECK(guest_mem_add(&m, 0x1800, b, sizeof(b)) == -EINVAL); /* overlaps */
	CHECK(guest_mem_add(&m, 0x0, b, 0x1001) == -EINVAL);	   /* overlaps by one byte */
	CHECK(guest_mem_add(&m, UINT64_MAX - 10, b, sizeof(b)) == -EINVAL); /* wraps */
	CHECK(guest_mem_add(&m, 0x3000, NULL, 10) == -EINVAL);
	CHECK(guest_mem_add(&m, 0x3000, b, 0) == -EINVAL);
	CHECK(guest_mem_add(&m, 0x2000, b, sizeof(b)) == 0); /* adjacent is fine */
	CHECK(guest_mem_ptr(&m, 0x1000, 4096) == a);
	CHECK(guest_mem_ptr(&m, 0x1fff, 1) == a + 4095);
	CHECK(guest_mem_ptr(&m, 0x1fff, 2) == NULL); /* spans two regions: refused */
	CHECK(guest_mem_ptr(&m, 0x2000, 0) != NULL); /* the end of a or the start of b: both empty */
	CHECK(guest_mem_ptr(&m, 0x3000, 0) == b + 4096); /* the very end, length 0 */
	CHECK(guest_mem_ptr(&m, 0x3000, 1) == NULL);
	CHECK(guest_mem_ptr(&m, 0xfff, 1) == NULL);
	CHECK(guest_mem_ptr(&m, 0x1000, UINT64_MAX) == NULL);
	CHECK(guest_mem_ptr(&m, UINT64_MAX, 2) == NULL); /* gpa + len wraps */
	CHECK(guest_mem_ptr(&m, 0x1001, UINT64_MAX) == NULL);
	uint8_t x[8] = { 1, 2, 3, 4, 5, 6, 7, 8 }, y[8];
	CHECK(guest_mem_write(&m, 0x2004, x, 8) == 0);
	CHECK(guest_mem_read(&m, 0x2004, y, 8) == 0 && memcmp(x, y, 8) == 0);
	CHECK(guest_mem_write(&m, 0x2ffc, x, 8) == -EFAULT);
	CHECK(guest_mem_read(&m, 0x4000, y, 1) == -EFAULT);
	for (int i = 2; i < GUEST_MEM_MAX_REGIONS; i++)
		CHECK(guest_mem_add(&m, 0x100000ull * (uint64_t)i, b, 16) == 0);
	CHECK(guest_mem_add(&m, 0x10000000, b, 16) == -ENOSPC);
}

static void test_configure(void)
{
	struct virtq q;
	CHECK(virtq_configure(&q, &mem, 0, DESC, AVAIL, USED, false) == -EINVAL);
	CHECK(virtq_configure(&q, &mem, 3, DESC, AVAIL, USED, false) == -EINVAL);
	CHECK(virtq_configure(&q, &mem, 512, DESC, AVAIL, USED, false) == -EINVAL);
	CHECK(virtq_configure(&q, &mem, QSZ, DESC + 8, AVAIL, USED, false) == -EINVAL);
	CHECK(virtq_configure(&q, &mem, QSZ, DESC, AVAIL + 1, USED, false) == -EINVAL);
	CHECK(virtq_configure(&q, &mem, QSZ, DESC, AVAIL, USED + 2, false) == -EINVAL);
	CHECK(virtq_configure(&q, &mem, QSZ, DESC, AVAIL, BASE + MEMSZ - 8, false) == -EINVAL);
	CHECK(virtq_configure(&q, &mem, QSZ, 0, AVAIL, USED, false) == -EINVAL);
	CHECK(virtq_configure(&q, &mem, QSZ, DESC, UINT64_MAX - 1, USED, false) == -EINVAL);
	CHECK(!q.ready);
	/* The used ring ends exactly at the end of RAM: fine without the event
	 * field, not with it. */
	uint64_t tight = BASE + MEMSZ - (4 + 8 * QSZ);
	CHECK(virtq_configure(&q, &mem, QSZ, DESC, AVAIL, tight, false) == 0);
	CHECK(virtq_configure(&q, &mem, QSZ, DESC, AVAIL, tight, true) == -EINVAL);
	CHECK(virtq_configure(&q, &mem, QSZ, DESC, AVAIL, USED, false) == 0 && q.ready);
}

static void fresh(struct virtq *q, bool event_idx)
{
	reset_ram();
	int r = virtq_configure(q, &mem, QSZ, DESC, AVAIL, USED, event_idx);
	CHECK(r == 0);
}

static void test_valid_chain_and_used(void)
{
	struct virtq q;
	struct virtq_chain c;
	fresh(&q, false);
	CHECK(virtq_pop(&q, &mem, &c) == -EAGAIN);

	set_desc(5, DATA, 16, VIRTQ_DESC_F_NEXT, 9);
	set_desc(9, DATA + 0x100, 512, VIRTQ_DESC_F_NEXT, 2);
	set_desc(2, DATA + 0x400, 1, VIRTQ_DESC_F_WRITE, 0);
	offer(5);
	CHECK(virtq_pop(&q, &mem, &c) == 0);
	CHECK(c.head == 5 && c.n == 3);
	CHECK(c.bufs[0].gpa == DATA && c.bufs[0].len == 16 && !c.bufs[0].write);
	CHECK(c.bufs[1].gpa == DATA + 0x100 && c.bufs[1].len == 512 && !c.bufs[1].write);
	CHECK(c.bufs[2].gpa == DATA + 0x400 && c.bufs[2].len == 1 && c.bufs[2].write);
	CHECK(c.read_len == 528 && c.write_len == 1);
	CHECK(virtq_pop(&q, &mem, &c) == -EAGAIN);

	CHECK(virtq_push(&q, &mem, 5, 1) == 0);
	CHECK(get_le16(g(USED) + 2) == 1);
	CHECK(get_le32(g(USED) + 4) == 5 && get_le32(g(USED) + 8) == 1);
	CHECK(virtq_push(&q, &mem, QSZ, 0) == -EINVAL);
	CHECK(virtq_should_interrupt(&q, &mem));
	CHECK(!virtq_should_interrupt(&q, &mem)); /* nothing new since */

	/* The driver asks for no interrupts. */
	put_le16(g(AVAIL), 1);
	offer(2);
	CHECK(virtq_pop(&q, &mem, &c) == 0 && c.head == 2 && c.n == 1);
	CHECK(virtq_push(&q, &mem, 2, 0) == 0);
	CHECK(!virtq_should_interrupt(&q, &mem));

	/* The ring wraps: 40 more single-descriptor chains through 16 slots. */
	set_desc(1, DATA, 8, 0, 0);
	for (int i = 0; i < 40; i++) {
		offer(1);
		int r = virtq_pop(&q, &mem, &c);
		CHECK(r == 0 && c.head == 1);
		CHECK(virtq_push(&q, &mem, 1, 8) == 0);
	}
	CHECK(get_le16(g(USED) + 2) == 42);
	CHECK(get_le32(g(USED) + 4 + 8 * (41 % QSZ)) == 1);
}

static void test_hostile_chains(void)
{
	struct virtq q;
	struct virtq_chain c;
	fresh(&q, false);

	/* A loop: 0 -> 1 -> 0. */
	set_desc(0, DATA, 8, VIRTQ_DESC_F_NEXT, 1);
	set_desc(1, DATA, 8, VIRTQ_DESC_F_NEXT, 0);
	offer(0);
	CHECK(virtq_pop(&q, &mem, &c) == -ELOOP && c.head == 0 && c.n == 0);
	/* A self-loop. */
	set_desc(3, DATA, 8, VIRTQ_DESC_F_NEXT, 3);
	offer(3);
	CHECK(virtq_pop(&q, &mem, &c) == -ELOOP && c.head == 3);
	/* next out of range. */
	set_desc(4, DATA, 8, VIRTQ_DESC_F_NEXT, QSZ);
	offer(4);
	CHECK(virtq_pop(&q, &mem, &c) == -EINVAL && c.head == 4);
	/* Head out of range: consumed, nothing to push back. */
	offer(QSZ + 7);
	CHECK(virtq_pop(&q, &mem, &c) == -EINVAL && c.head == VIRTQ_NO_HEAD);
	/* Buffers outside guest RAM, including ones whose end wraps. */
	set_desc(6, BASE + MEMSZ - 4, 8, 0, 0);
	offer(6);
	CHECK(virtq_pop(&q, &mem, &c) == -EFAULT && c.head == 6);
	set_desc(6, UINT64_MAX - 2, 16, 0, 0);
	offer(6);
	CHECK(virtq_pop(&q, &mem, &c) == -EFAULT);
	set_desc(6, 0, 16, 0, 0);
	offer(6);
	CHECK(virtq_pop(&q, &mem, &c) == -EFAULT);
	set_desc(6, DATA, 0xffffffff, 0, 0);
	offer(6);
	CHECK(virtq_pop(&q, &mem, &c) == -EFAULT);
	/* A readable buffer after a writable one. */
	set_desc(7, DATA, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 8);
	set_desc(8, DATA, 8, 0, 0);
	offer(7);
	CHECK(virtq_pop(&q, &mem, &c) == -EINVAL);
	/* Bad chains were consumed; the queue still works. */
	set_desc(10, DATA, 8, 0, 0);
	offer(10);
	CHECK(virtq_pop(&q, &mem, &c) == 0 && c.head == 10 && c.n == 1);

	/* avail->idx runs more than a queue ahead: broken ring, nothing consumed. */
	uint16_t last = q.last_avail;
	put_le16(g(AVAIL) + 2, (uint16_t)(last + QSZ + 1));
	CHECK(virtq_pop(&q, &mem, &c) == -EPROTO && q.last_avail == last);
	put_le16(g(AVAIL) + 2, (uint16_t)(last - 1)); /* behind us: also more than a queue "ahead" mod 2^16 */
	CHECK(virtq_pop(&q, &mem, &c) == -EPROTO);

	/* Not configured. */
	struct virtq nq;
	virtq_init(&nq);
	CHECK(virtq_pop(&nq, &mem, &c) == -EINVAL);
	CHECK(virtq_push(&nq, &mem, 0, 0) == -EINVAL);
}

static void test_indirect(void)
{
	struct virtq q;
	struct virtq_chain c;
	const uint64_t T = DATA + 0x1000; /* an indirect table */
	fresh(&q, false);

	set_desc_at(T, 0, DATA, 16, VIRTQ_DESC_F_NEXT, 1);
	set_desc_at(T, 1, DATA + 0x200, 4096, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2);
	set_desc_at(T, 2, DATA + 0x10, 1, VIRTQ_DESC_F_WRITE, 0);
	set_desc(0, T, 3 * 16, VIRTQ_DESC_F_INDIRECT, 0);
	offer(0);
	CHECK(virtq_pop(&q, &mem, &c) == 0 && c.head == 0 && c.n == 3);
	CHECK(c.read_len == 16 && c.write_len == 4097 && c.bufs[1].gpa == DATA + 0x200);

	/* Direct descriptors before the indirect one. */
	set_desc(1, DATA + 0x20, 4, VIRTQ_DESC_F_NEXT, 2);
	set_desc(2, T, 3 * 16, VIRTQ_DESC_F_INDIRECT, 0);
	offer(1);
	CHECK(virtq_pop(&q, &mem, &c) == 0 && c.n == 4 && c.bufs[0].gpa == DATA + 0x20);

	/* INDIRECT together with NEXT. */
	set_desc(0, T, 3 * 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1);
	offer(0);
	CHECK(virtq_pop(&q, &mem, &c) == -EINVAL);
	/* Length not a multiple of 16, zero, or too long. */
	set_desc(0, T, 3 * 16 + 4, VIRTQ_DESC_F_INDIRECT, 0);
	offer(0);
	CHECK(virtq_pop(&q, &mem, &c) == -EINVAL);
	set_desc(0, T, 0, VIRTQ_DESC_F_INDIRECT, 0);
	offer(0);
	CHECK(virtq_pop(&q, &mem, &c) == -EINVAL);
	set_desc(0, T, 16 * (VIRTQ_MAX_SIZE + 1), VIRTQ_DESC_F_INDIRECT, 0);
	offer(0);
	CHECK(virtq_pop(&q, &mem, &c) == -EINVAL);
	/* Table outside guest RAM. */
	set_desc(0, BASE + MEMSZ - 32, 48, VIRTQ_DESC_F_INDIRECT, 0);
	offer(0);
	CHECK(virtq_pop(&q, &mem, &c) == -EFAULT);
	/* Nested indirect. */
	set_desc_at(T, 2, T, 48, VIRTQ_DESC_F_INDIRECT, 0);
	set_desc(0, T, 3 * 16, VIRTQ_DESC_F_INDIRECT, 0);
	offer(0);
	CHECK(virtq_pop(&q, &mem, &c) == -EINVAL);
	/* A loop inside the table, and a next beyond it. */
	set_desc_at(T, 2, DATA, 1, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
	offer(0);
	CHECK(virtq_pop(&q, &mem, &c) == -ELOOP);
	set_desc_at(T, 2, DATA, 1, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 3);
	offer(0);
	CHECK(virtq_pop(&q, &mem, &c) == -EINVAL);

	/* Longer than VIRTQ_MAX_SIZE buffers in all: one direct plus a full
	 * table of VIRTQ_MAX_SIZE. */
	const uint64_t BIG = DATA + 0x2000;
	for (uint16_t i = 0; i < VIRTQ_MAX_SIZE; i++)
		set_desc_at(BIG, i, DATA, 1, i + 1 < VIRTQ_MAX_SIZE ? VIRTQ_DESC_F_NEXT : 0, (uint16_t)(i + 1));
	set_desc(0, BIG, 16 * VIRTQ_MAX_SIZE, VIRTQ_DESC_F_INDIRECT, 0);
	offer(0);
	CHECK(virtq_pop(&q, &mem, &c) == 0 && c.n == VIRTQ_MAX_SIZE);
	set_desc(3, DATA, 1, VIRTQ_DESC_F_NEXT, 0);
	offer(3);
	CHECK(virtq_pop(&q, &mem, &c) == -E2BIG);
}

static void test_event_idx(void)
{
	struct virtq q;
	struct virtq_chain c;
	fresh(&q, true);
	uint8_t *avail_event = g(USED) + 4 + 8 * QSZ, *used_event = g(AVAIL) + 4 + 2 * QSZ;

	CHECK(virtq_pop(&q, &mem, &c) == -EAGAIN);
	CHECK(get_le16(avail_event) == 0); /* notify me at entry 0 */
	set_desc(0, DATA, 8, 0, 0);
	offer(0);
	offer(0);
	CHECK(virtq_pop(&q, &mem, &c) == 0);
	CHECK(get_le16(avail_event) == 1);
	CHECK(virtq_pop(&q, &mem, &c) == 0);
	CHECK(get_le16(avail_event) == 2);

	/* The driver wants an interrupt once used->idx passes 1 (after the
	 * second element). */
	put_le16(used_event, 1);
	CHECK(virtq_push(&q, &mem, 0, 0) == 0);
	CHECK(!virtq_should_interrupt(&q, &mem));
	CHECK(virtq_push(&q, &mem, 0, 0) == 0);
	CHECK(virtq_should_interrupt(&q, &mem));
	/* Even if the driver set NO_INTERRUPT, EVENT_IDX decides. */
	put_le16(g(AVAIL), 1);
	put_le16(used_event, 2);
	offer(0);
	CHECK(virtq_pop(&q, &mem, &c) == 0);
	CHECK(virtq_push(&q, &mem, 0, 0) == 0);
	CHECK(virtq_should_interrupt(&q, &mem));
}

int main(void)
{
	ram = aligned_alloc(4096, MEMSZ);
	if (!ram)
		return 1;
	guest_mem_init(&mem);
	if (guest_mem_add(&mem, BASE, ram, MEMSZ) < 0)
		return 1;
	test_guest_mem();
	test_configure();
	test_valid_chain_and_used();
	test_hostile_chains();
	test_indirect();
	test_event_idx();
	free(ram);
	return check_report();
}
