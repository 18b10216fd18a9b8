/* Fuzz target: the tar-and-whiteout flattener and the EROFS writer on a
 * hostile layer.  The input is split into up to three layers at the marker
 * "\n--next-layer--\n", so whiteouts and opaque directories meet lower
 * layers. */
/* ctest-labels: no-tsan (a single-threaded parser: nothing for ThreadSanitizer to check) */
#include "chunker/internal.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct discard {
	uint8_t *buf;
};

static uint8_t *get_buffer(void *ctx)
{
	return ((struct discard *)ctx)->buf;
}

static int emit(void *ctx, uint64_t index, uint8_t *data)
{
	(void)ctx;
	(void)index;
	(void)data;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char marker[] = "\n--next-layer--\n";
	log_set_level(LOG_SILENT);
	struct discard d = {.buf = malloc(CHUNK_SIZE)};
	struct chunk_sink sink = {.get_buffer = get_buffer, .emit = emit, .ctx = &d};
	struct flattener f;
	if (!d.buf || flattener_init(&f, &sink, 1ull << 32) < 0) {
		free(d.buf);
		return 0;
	}
	f.sink = &sink;
	int r = 0;
	for (unsigned layer = 0; layer < 3 && r == 0 && size; layer++) {
		const uint8_t *end = memmem(data, size, marker, sizeof(marker) - 1);
		size_t len = end ? (size_t)(end - data) : size;
		struct byte_stream_mem ms;
		byte_stream_mem_init(&ms, data, len, "fuzz layer");
		struct layer_region region;
		r = flatten_layer(&f, &ms.base, layer, "fuzz layer", &region);
		size_t skip = end ? len + sizeof(marker) - 1 : len;
		data += skip;
		size -= skip;
	}
	if (r == 0) {
		struct erofs_image_layout layout = {0};
		if (flattener_finish(&f, &layout) == 0)
			erofs_layout_cleanup(&layout);
	}
	f.buf = NULL; /* the single discard buffer is not the pool's */
	flattener_cleanup(&f);
	free(d.buf);
	return 0;
}
