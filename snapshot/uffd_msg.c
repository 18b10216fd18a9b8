/* Firecracker's Uffd handshake: the checked parser of the VMM's region list,
 * and the arithmetic from a fault address to a memory chunk and back.
 *
 * The VMM sends one message: a JSON array of GuestRegionUffdMapping objects
 * (firecracker src/vmm/src/persist.rs)
 *   [{"base_host_virt_addr": N, "size": N, "offset": N, "page_size": 4096}]
 * (older Firecracker sent "page_size_kib": 4 instead of "page_size") with
 * the userfaultfd as SCM_RIGHTS. */
#include "internal.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define bad(...)                                                                                                       \
	do {                                                                                                           \
		log_err("uffd handshake: " __VA_ARGS__);                                                               \
		r = -EBADMSG;                                                                                          \
		goto out;                                                                                              \
	} while (0)

static bool get_u64(json_t *o, const char *field, uint64_t *out)
{
	json_t *v = json_object_get(o, field);
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return false;
	*out = (uint64_t)json_integer_value(v);
	return true;
}

static int cmp_host(const void *a, const void *b)
{
	uint64_t x = ((const struct snapshot_uffd_region *)a)->base_host_virt_addr;
	uint64_t y = ((const struct snapshot_uffd_region *)b)->base_host_virt_addr;
	return x < y ? -1 : x > y;
}

int snapshot_uffd_parse_regions(const uint8_t *buf, size_t len, uint64_t mem_size, struct snapshot_uffd_region **out,
				size_t *out_n)
{
	int r = 0;
	struct snapshot_uffd_region *v = NULL;
	json_error_t jerr;
	json_t *root = len <= SNAPSHOT_UFFD_MAX_MSG ? json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, &jerr)
						    : NULL;
	if (!root) {
		log_err("uffd handshake: the VMM's message is not valid JSON (%s); is it Firecracker's "
			"GuestRegionUffdMapping list?", len > SNAPSHOT_UFFD_MAX_MSG ? "too long" : jerr.text);
		return -EBADMSG;
	}
	size_t n = json_is_array(root) ? json_array_size(root) : 0;
	if (n == 0 || n > SNAPSHOT_UFFD_MAX_REGIONS)
		bad("expected a JSON array of 1 to %d regions", SNAPSHOT_UFFD_MAX_REGIONS);
	if (!(v = calloc(n, sizeof(*v)))) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		json_t *o = json_array_get(root, i);
		struct snapshot_uffd_region *g = &v[i];
		if (!json_is_object(o))
			bad("region %zu: expected an object", i);
		if (!get_u64(o, "base_host_virt_addr", &g->base_host_virt_addr) || !get_u64(o, "size", &g->size) ||
		    !get_u64(o, "offset", &g->offset))
			bad("region %zu: base_host_virt_addr, size and offset must be non-negative integers", i);
		uint64_t kib;
		if (json_object_get(o, "page_size")) {
			if (!get_u64(o, "page_size", &g->page_size))
				bad("region %zu: page_size must be a non-negative integer", i);
		} else if (get_u64(o, "page_size_kib", &kib) && kib <= (1u << 20)) {
			g->page_size = kib * 1024;
		} else
			bad("region %zu: needs page_size (bytes) or page_size_kib", i);
		if (g->page_size != SNAPSHOT_PAGE)
			bad("region %zu: page size %llu is not supported (4096-byte pages only; no huge pages)", i,
			    (unsigned long long)g->page_size);
		if (g->size == 0 || g->size % SNAPSHOT_PAGE || g->offset % SNAPSHOT_PAGE ||
		    g->base_host_virt_addr % SNAPSHOT_PAGE)
			bad("region %zu: size, offset and address must be non-zero multiples of the page size", i);
		if (g->base_host_virt_addr + g->size < g->base_host_virt_addr)
			bad("region %zu: the address range wraps", i);
		if (g->offset > mem_size || g->size > mem_size - g->offset)
			bad("region %zu: file range [%llu, +%llu) lies outside the %llu-byte memory of this snapshot; "
			    "was the VM restored from another snapshot?", i, (unsigned long long)g->offset,
			    (unsigned long long)g->size, (unsigned long long)mem_size);
	}
	qsort(v, n, sizeof(*v), cmp_host);
	for (size_t i = 1; i < n; i++)
		if (v[i - 1].base_host_virt_addr + v[i - 1].size > v[i].base_host_virt_addr)
			bad("regions at 0x%llx and 0x%llx overlap in the VMM's address space",
			    (unsigned long long)v[i - 1].base_host_virt_addr, (unsigned long long)v[i].base_host_virt_addr);
	for (size_t i = 0; i < n; i++)
		for (size_t j = i + 1; j < n; j++)
			if (v[i].offset < v[j].offset + v[j].size && v[j].offset < v[i].offset + v[i].size)
				bad("regions at 0x%llx and 0x%llx map overlapping parts of the memory file",
				    (unsigned long long)v[i].base_host_virt_addr,
				    (unsigned long long)v[j].base_host_virt_addr);
	*out = v;
	*out_n = n;
	v = NULL;
out:
	free(v);
	json_decref(root);
	return r;
}

int snapshot_uffd_locate(const struct snapshot_uffd_region *regions, size_t n, uint64_t addr, size_t *out_region,
			 uint64_t *out_mem_off)
{
	size_t lo = 0, hi = n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct snapshot_uffd_region *g = &regions[mid];
		if (addr < g->base_host_virt_addr)
			hi = mid;
		else if (addr - g->base_host_virt_addr >= g->size)
			lo = mid + 1;
		else {
			*out_region = mid;
			*out_mem_off = g->offset + (addr - g->base_host_virt_addr);
			return 0;
		}
	}
	return -ENOENT;
}

bool snapshot_uffd_chunk_span(const struct snapshot_uffd_region *g, uint64_t index, uint64_t mem_size,
			      uint64_t *out_addr, uint32_t *out_chunk_off, uint32_t *out_len)
{
	if (index >= (mem_size + CHUNK_SIZE - 1) / CHUNK_SIZE)
		return false;
	uint64_t c0 = index * CHUNK_SIZE, c1 = c0 + CHUNK_SIZE;
	if (c1 > mem_size)
		c1 = mem_size;
	uint64_t s = c0 > g->offset ? c0 : g->offset;
	uint64_t e = c1 < g->offset + g->size ? c1 : g->offset + g->size;
	if (s >= e)
		return false;
	*out_addr = g->base_host_virt_addr + (s - g->offset);
	*out_chunk_off = (uint32_t)(s - c0);
	*out_len = (uint32_t)(e - s);
	return true;
}
