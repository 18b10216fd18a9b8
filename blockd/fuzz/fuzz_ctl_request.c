/* Fuzz target for blockd's parsers of bytes it does not control: control
 * socket request lines (ctl_parse_request) and startup traces read from the
 * origin (trace_parse).  The first byte picks the parser. */
/* ctest-labels: no-tsan (a single-threaded parser: nothing for ThreadSanitizer to check) */
#include "blockd/internal.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	if (data[0] & 1) {
		struct ctl_request q;
		const char *err = NULL;
		int r = ctl_parse_request((const char *)data + 1, size - 1, &q, &err);
		if (r == 0) {
			/* A parsed request is NUL-terminated and names a known op. */
			if (!memchr(q.op, 0, sizeof(q.op)) || !memchr(q.image, 0, sizeof(q.image)))
				abort();
			if (strcmp(q.op, "attach") && strcmp(q.op, "detach") && strcmp(q.op, "ls") && strcmp(q.op, "stats"))
				abort();
		} else if (!err)
			abort(); /* every refusal tells the client why */
	} else {
		uint64_t *v = NULL;
		size_t n = 0;
		uint64_t n_indexes = 1 + (data[0] >> 1); /* a small image: indexes get range-checked */
		if (trace_parse(data + 1, size - 1, n_indexes, &v, &n) == 0) {
			for (size_t i = 0; i < n; i++)
				if (v[i] >= n_indexes)
					abort();
			free(v);
		}
	}
	return 0;
}
