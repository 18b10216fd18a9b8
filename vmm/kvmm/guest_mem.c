/* Guest memory: host mappings of guest-physical ranges and the one accessor
 * every guest address goes through. */
#include <errno.h>
#include <string.h>

#define LOG_COMPONENT "kvmm"
#include "common/common.h"
#include "vmm/kvmm/guest_mem.h"

void guest_mem_init(struct guest_mem *m)
{
	memset(m, 0, sizeof(*m));
}

int guest_mem_add(struct guest_mem *m, uint64_t gpa, void *host, uint64_t size)
{
	uint64_t end;
	if (!host || size == 0 || !ck_add_u64(gpa, size, &end))
		return -EINVAL;
	if (size > SIZE_MAX)
		return -EINVAL; /* the host side must be addressable as one object */
	for (size_t i = 0; i < m->n; i++) {
		const struct guest_region *r = &m->regions[i];
		/* Regions were checked on the way in, so r->gpa + r->size does not wrap. */
		if (gpa < r->gpa + r->size && r->gpa < end)
			return -EINVAL;
	}
	if (m->n == GUEST_MEM_MAX_REGIONS)
		return -ENOSPC;
	m->regions[m->n++] = (struct guest_region){ .gpa = gpa, .size = size, .host = host };
	return 0;
}

void *guest_mem_ptr(const struct guest_mem *m, uint64_t gpa, uint64_t len)
{
	for (size_t i = 0; i < m->n; i++) {
		const struct guest_region *r = &m->regions[i];
		if (gpa < r->gpa)
			continue;
		/* off <= size and len <= size - off: no addition of guest
		 * values, so nothing can wrap. */
		uint64_t off = gpa - r->gpa;
		if (off > r->size || len > r->size - off)
			continue;
		return r->host + off;
	}
	return NULL;
}

int guest_mem_read(const struct guest_mem *m, uint64_t gpa, void *buf, size_t len)
{
	const void *p = guest_mem_ptr(m, gpa, len);
	if (!p)
		return -EFAULT;
	memcpy(buf, p, len);
	return 0;
}

int guest_mem_write(const struct guest_mem *m, uint64_t gpa, const void *buf, size_t len)
{
	void *p = guest_mem_ptr(m, gpa, len);
	if (!p)
		return -EFAULT;
	memcpy(p, buf, len);
	return 0;
}
