/* kvmm: guest memory (guest_mem.c): host mappings of guest-physical ranges,
 * behind ONE overflow-checked accessor (guest_mem_ptr); every guest address
 * the device code touches goes through it. */
#ifndef KINDLING_KVMM_GUEST_MEM_H
#define KINDLING_KVMM_GUEST_MEM_H

#include <stddef.h>
#include <stdint.h>

#define GUEST_MEM_MAX_REGIONS 8

/* One contiguous guest-physical range backed by host memory the caller owns. */
struct guest_region {
	uint64_t gpa;
	uint64_t size;
	uint8_t *host;
};

/* The guest's RAM as a small set of non-overlapping regions.  A value on the
 * stack or inside the VM object; no allocation, no hidden state. */
struct guest_mem {
	struct guest_region regions[GUEST_MEM_MAX_REGIONS];
	size_t n;
};

/* Empty |m|. */
void guest_mem_init(struct guest_mem *m);

/* Map guest-physical |<gpa, size>| onto host memory |host| (owned by the
 * caller, which keeps it alive and unmoved as long as |m| is used).  Returns 0,
 * -EINVAL for size 0, a NULL |host|, a range that wraps the 64-bit space or
 * overlaps an existing region, or -ENOSPC when GUEST_MEM_MAX_REGIONS are used. */
int guest_mem_add(struct guest_mem *m, uint64_t gpa, void *host, uint64_t size);

/* THE accessor: the host address of guest-physical |<gpa, len>|, or NULL if
 * any byte of it lies outside one single region (ranges spanning two regions
 * are refused, as Solo5's hvt does) or gpa + len overflows.  len 0 is valid at
 * any address inside a region or at its very end.  Guest memory changes under
 * our feet: copy what you validate before you use it. */
void *guest_mem_ptr(const struct guest_mem *m, uint64_t gpa, uint64_t len);

/* Copy guest |<gpa, len>| into |buf|, or |<buf, len>| into the guest.
 * Returns 0 or -EFAULT (nothing copied) when guest_mem_ptr() refuses it. */
int guest_mem_read(const struct guest_mem *m, uint64_t gpa, void *buf, size_t len);
int guest_mem_write(const struct guest_mem *m, uint64_t gpa, const void *buf, size_t len);

#endif
