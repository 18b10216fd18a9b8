/* Fuzz the split-virtqueue walker (vmm/kvmm/virtq.c) with hostile guest
 * memory.  Input: an 8-byte layout header, then the guest memory image.
 *   [0]    log2 of the queue size (mod 9: 1..256)
 *   [1]    bit 0: EVENT_IDX
 *   [2..3] descriptor table offset / 16   (little-endian, from the RAM base)
 *   [4..5] avail ring offset / 2
 *   [6..7] used ring offset / 4
 *   [8..]  guest RAM: the first half at GPA 0x1000, the second half one page
 *          after the first ends, so buffers can straddle a hole
 * Every chain is walked; each buffer of a good chain is read (readable) or
 * filled (writable) the way a device would, so ASan sees any pointer the
 * accessor should not have handed out; every head goes back to the used ring. */
/* ctest-labels: no-tsan (a single-threaded parser: nothing for ThreadSanitizer to check) */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vmm/kvmm/guest_mem.h"
#include "common/bytes.h"
#include "vmm/kvmm/virtq.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define RAM_GPA 0x1000ull
#define RAM_MAX (1u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 8 || size - 8 > RAM_MAX)
		return 0;
	uint16_t qsize = (uint16_t)(1u << (data[0] % 9));
	bool event_idx = data[1] & 1;
	uint64_t desc = RAM_GPA + 16ull * get_le16(data + 2);
	uint64_t avail = RAM_GPA + 2ull * get_le16(data + 4);
	uint64_t used = RAM_GPA + 4ull * get_le16(data + 6);
	size_t len = size - 8, half = len / 2;
	if (len < 2)
		return 0;

	/* Two exact-size heap blocks, so a stray byte is an ASan report. */
	uint8_t *lo = malloc(half), *hi = malloc(len - half);
	if (!lo || !hi) {
		free(lo);
		free(hi);
		return 0;
	}
	memcpy(lo, data + 8, half);
	memcpy(hi, data + 8 + half, len - half);
	struct guest_mem m;
	guest_mem_init(&m);
	if (guest_mem_add(&m, RAM_GPA, lo, half) < 0 || guest_mem_add(&m, RAM_GPA + half + 0x1000, hi, len - half) < 0)
		goto out;

	struct virtq q;
	if (virtq_configure(&q, &m, qsize, desc, avail, used, event_idx) < 0)
		goto out;
	static struct virtq_chain c;
	volatile uint8_t sink = 0;
	for (unsigned i = 0; i < 2u * qsize + 2; i++) {
		int r = virtq_pop(&q, &m, &c);
		if (r == -EAGAIN || r == -EPROTO)
			break;
		uint32_t written = 0;
		for (size_t k = 0; r == 0 && k < c.n; k++) {
			uint8_t *p = guest_mem_ptr(&m, c.bufs[k].gpa, c.bufs[k].len);
			if (!p)
				abort(); /* virtq_pop() promised every buffer is in RAM */
			if (c.bufs[k].write) {
				memset(p, 0xa5, c.bufs[k].len);
				written += c.bufs[k].len;
			} else if (c.bufs[k].len) {
				sink ^= p[0] ^ p[c.bufs[k].len - 1];
			}
		}
		if (c.head != VIRTQ_NO_HEAD)
			virtq_push(&q, &m, c.head, written);
		virtq_should_interrupt(&q, &m);
	}
	(void)sink;
out:
	free(lo);
	free(hi);
	return 0;
}
