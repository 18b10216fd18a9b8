/* Fuzz target for the layout-trace parser (chunker/layout_trace.c) and the
 * plan built from what it accepts.
 *
 * Input: a trace document, as `chunkify import --layout-trace` reads it from
 * a file.  A document that parses is mapped onto a small fixed file table
 * (two layers, a hard link, a file outside every layer), so run offsets
 * anywhere in the 64-bit range exercise the plan's arithmetic too.
 */
/* ctest-labels: no-tsan (a single-threaded parser: nothing for ThreadSanitizer to check) */
#include "chunker/internal.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct layout_trace t;
	if (layout_trace_parse(data, size, "fuzz trace", &t) != 0)
		return 0;
	if (strlen(t.manifest_digest) != 64 || t.n_extents > IMAGE_TRACE_MAX_EXTENTS)
		abort();
	struct manifest_layer layers[] = {
		{.digest = "sha256:a", .offset = CHUNK_SIZE, .length = 2 * CHUNK_SIZE},
		{.digest = "sha256:b", .offset = 3 * CHUNK_SIZE, .length = CHUNK_SIZE},
	};
	struct manifest m = {.n_layers = 2, .layers = layers, .image_size = 8 * CHUNK_SIZE};
	const struct layout_file files[] = {
		{"a/1", CHUNK_SIZE, 8192},	   {"a/2", CHUNK_SIZE + 8192, 4096}, {"a/2-link", CHUNK_SIZE + 8192, 4096},
		{"b/1", 3 * CHUNK_SIZE, CHUNK_SIZE}, {"outside", 6 * CHUNK_SIZE, 4096},
	};
	struct layout_plan *p = NULL;
	if (layout_plan_build(&t, &m, files, sizeof(files) / sizeof(files[0]), &p) == 0) {
		if (layout_plan_files(p) > 4)
			abort();
		uint64_t rank;
		if (layout_layer_rank(layout_plan_layer(p, "sha256:a"), "outside", &rank))
			abort();
		layout_plan_free(p);
	}
	layout_trace_cleanup(&t);
	return 0;
}
