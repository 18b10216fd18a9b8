/* Fuzz target: the VMM's Uffd handshake body (snapshot_uffd_parse_regions),
 * and the fault arithmetic over whatever it accepts. */
/* ctest-labels: no-tsan (a single-threaded parser: nothing for ThreadSanitizer to check) */
#include "common/common.h"
#include "snapshot/snapshot.h"
#include "tests/fuzz_target.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint64_t mem_size = 64ull << 20;
	struct snapshot_uffd_region *g = NULL;
	size_t n = 0;
	log_set_level(LOG_SILENT);
	if (snapshot_uffd_parse_regions(data, size, mem_size, &g, &n) != 0) {
		MUST(g == NULL);
		return 0;
	}
	MUST(n >= 1 && n <= SNAPSHOT_UFFD_MAX_REGIONS);
	for (size_t i = 0; i < n; i++) {
		MUST(g[i].size && g[i].offset + g[i].size <= mem_size);
		MUST(i == 0 || g[i - 1].base_host_virt_addr + g[i - 1].size <= g[i].base_host_virt_addr);
		size_t ri;
		uint64_t off;
		MUST(snapshot_uffd_locate(g, n, g[i].base_host_virt_addr + g[i].size - 1, &ri, &off) == 0 && ri == i &&
		     off == g[i].offset + g[i].size - 1);
		uint64_t addr;
		uint32_t coff, len;
		uint64_t index = g[i].offset / CHUNK_SIZE;
		MUST(snapshot_uffd_chunk_span(&g[i], index, mem_size, &addr, &coff, &len));
		MUST(len > 0 && len % 4096 == 0 && coff + len <= CHUNK_SIZE && addr == g[i].base_host_virt_addr);
	}
	free(g);
	return 0;
}
