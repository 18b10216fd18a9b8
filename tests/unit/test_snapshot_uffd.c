/* The Uffd handshake parser and the fault -> chunk arithmetic of the lazy
 * memory server (snapshot/uffd_msg.c). */
/* ctest-labels: no-tsan (single-threaded: nothing for ThreadSanitizer to check) */
#include "common/common.h"
#include "snapshot/snapshot.h"
#include "tests/check.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MIB (1024ull * 1024)

static int parse(const char *json, uint64_t mem_size, struct snapshot_uffd_region **out, size_t *n)
{
	*out = NULL;
	return snapshot_uffd_parse_regions((const uint8_t *)json, strlen(json), mem_size, out, n);
}

static void test_parse(void)
{
	struct snapshot_uffd_region *g;
	size_t n;
	/* Firecracker's shape, regions given out of address order. */
	CHECK(parse("[{\"base_host_virt_addr\":1073741824,\"size\":1048576,\"offset\":3145728,\"page_size\":4096},"
		    "{\"base_host_virt_addr\":268435456,\"size\":3145728,\"offset\":0,\"page_size\":4096,\"x\":1}]",
		    4 * MIB, &g, &n) == 0);
	CHECK(n == 2 && g[0].base_host_virt_addr == 268435456 && g[0].offset == 0 && g[1].offset == 3 * MIB);
	CHECK(g[0].page_size == 4096);
	free(g);
	/* Older Firecracker: page_size_kib. */
	CHECK(parse("[{\"base_host_virt_addr\":4096,\"size\":8192,\"offset\":0,\"page_size_kib\":4}]", 8192, &g, &n) ==
	      0);
	CHECK(n == 1 && g[0].page_size == 4096);
	free(g);

	static const char *const bad[] = {
		"",
		"{}",
		"[]",
		"[1]",
		"[{\"base_host_virt_addr\":4096,\"size\":8192,\"offset\":0}]",			   /* no page size */
		"[{\"base_host_virt_addr\":4096,\"size\":8192,\"offset\":0,\"page_size\":2097152}]",	   /* huge pages */
		"[{\"base_host_virt_addr\":4097,\"size\":8192,\"offset\":0,\"page_size\":4096}]",	   /* unaligned */
		"[{\"base_host_virt_addr\":4096,\"size\":0,\"offset\":0,\"page_size\":4096}]",	   /* empty */
		"[{\"base_host_virt_addr\":4096,\"size\":8192,\"offset\":-4096,\"page_size\":4096}]", /* negative */
		"[{\"base_host_virt_addr\":4096,\"size\":12288,\"offset\":0,\"page_size\":4096}]",   /* past the memory */
		"[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":8192,\"page_size\":4096}]", /* past the memory */
		"[{\"base_host_virt_addr\":18446744073709547520,\"size\":8192,\"offset\":0,\"page_size\":4096}]", /* wraps */
		/* overlapping host ranges */
		"[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"page_size\":4096},"
		"{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":4096,\"page_size\":4096}]",
		/* overlapping file ranges */
		"[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"page_size\":4096},"
		"{\"base_host_virt_addr\":65536,\"size\":8192,\"offset\":0,\"page_size\":4096}]",
		"[{\"base_host_virt_addr\":4096,\"base_host_virt_addr\":8192,\"size\":4096,\"offset\":0,\"page_size\":4096}]",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int r = parse(bad[i], 8192, &g, &n);
		if (r != -EBADMSG)
			fprintf(stderr, "accepted bad handshake %zu: %s\n", i, bad[i]);
		CHECK(r == -EBADMSG && g == NULL);
	}
}

static void test_mapping(void)
{
	/* RAM split around a hole, the split 12 KiB past a chunk boundary's
	 * middle so one chunk lies in both regions. */
	uint64_t mem = 4 * MIB, split = 2 * MIB + 256 * 1024 + 12288;
	struct snapshot_uffd_region g[2] = {
		{.base_host_virt_addr = 0x10000000, .size = split, .offset = 0, .page_size = 4096},
		{.base_host_virt_addr = 0x40000000, .size = mem - split, .offset = split, .page_size = 4096},
	};
	size_t ri;
	uint64_t off;
	CHECK(snapshot_uffd_locate(g, 2, 0x10000000, &ri, &off) == 0 && ri == 0 && off == 0);
	CHECK(snapshot_uffd_locate(g, 2, 0x10000000 + split - 1, &ri, &off) == 0 && ri == 0 && off == split - 1);
	CHECK(snapshot_uffd_locate(g, 2, 0x10000000 + split, &ri, &off) == -ENOENT); /* the hole */
	CHECK(snapshot_uffd_locate(g, 2, 0x40000000 + 5, &ri, &off) == 0 && ri == 1 && off == split + 5);
	CHECK(snapshot_uffd_locate(g, 2, 0x40000000 + mem - split, &ri, &off) == -ENOENT);
	CHECK(snapshot_uffd_locate(g, 2, 0xfff, &ri, &off) == -ENOENT);

	uint64_t addr;
	uint32_t coff, len;
	/* Chunk 0: all in region 0. */
	CHECK(snapshot_uffd_chunk_span(&g[0], 0, mem, &addr, &coff, &len) && addr == 0x10000000 && coff == 0 &&
	      len == CHUNK_SIZE);
	CHECK(!snapshot_uffd_chunk_span(&g[1], 0, mem, &addr, &coff, &len));
	/* Chunk 4 ([2 MiB, 2.5 MiB)) straddles the split. */
	uint64_t c4 = 4ull * CHUNK_SIZE;
	CHECK(snapshot_uffd_chunk_span(&g[0], 4, mem, &addr, &coff, &len) && addr == 0x10000000 + c4 && coff == 0 &&
	      len == split - c4);
	CHECK(snapshot_uffd_chunk_span(&g[1], 4, mem, &addr, &coff, &len) && addr == 0x40000000 &&
	      coff == split - c4 && len == CHUNK_SIZE - (split - c4));
	/* Past the memory: no span. */
	CHECK(!snapshot_uffd_chunk_span(&g[1], 8, mem, &addr, &coff, &len));
	/* A memory that ends inside its last chunk cuts the span there. */
	struct snapshot_uffd_region one = {.base_host_virt_addr = 0x1000, .size = CHUNK_SIZE + 8192, .offset = 0,
					   .page_size = 4096};
	CHECK(snapshot_uffd_chunk_span(&one, 1, CHUNK_SIZE + 8192, &addr, &coff, &len) && len == 8192 &&
	      addr == 0x1000 + CHUNK_SIZE);
}

static void test_chunk_lookup(void)
{
	struct manifest_chunk chunks[4] = {{.index = 0}, {.index = 3}, {.index = 7}, {.index = 9}};
	struct manifest m = {.n_chunks = 4, .chunks = chunks};
	CHECK(snapshot_chunk(&m, 0) == &chunks[0]);
	CHECK(snapshot_chunk(&m, 7) == &chunks[2]);
	CHECK(snapshot_chunk(&m, 9) == &chunks[3]);
	CHECK(snapshot_chunk(&m, 1) == NULL && snapshot_chunk(&m, 8) == NULL && snapshot_chunk(&m, 10) == NULL);
}

int main(void)
{
	log_set_level(LOG_SILENT);
	test_parse();
	test_mapping();
	test_chunk_lookup();
	return check_report();
}
