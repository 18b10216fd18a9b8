/* Fuzz kvmm's HTTP request-head parser (vmm/kvmm/http.c) the way the API
 * server drives it: the bytes arrive in pieces, so every prefix of the input
 * is parsed as well as the whole, and a parsed head must describe bytes that
 * lie inside the buffer.  The input is copied into an exact-size heap block
 * so ASan sees any read past it. */
/* ctest-labels: no-tsan (a single-threaded parser: nothing for ThreadSanitizer to check) */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vmm/kvmm/http.h"

#include "tests/fuzz_target.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > KVMM_HTTP_MAX_HEAD + 64)
		return 0;
	char *buf = malloc(size ? size : 1);
	if (!buf)
		return 0;
	memcpy(buf, data, size);
	/* Prefixes: every 7th length and the full one, to keep it fast. */
	for (size_t n = 0;; n = n + 7 < size ? n + 7 : size) {
		struct kvmm_http_req q;
		char err[128];
		int r = kvmm_http_parse_head(buf, n, &q, err, sizeof(err));
		if (r == 0) {
			MUST(q.head_len >= 4 && q.head_len <= n && q.head_len <= KVMM_HTTP_MAX_HEAD);
			MUST(q.content_length <= KVMM_HTTP_MAX_BODY);
			MUST(q.path[0] == '/' && memchr(q.path, '\0', sizeof(q.path)));
			MUST(q.method[0] && memchr(q.method, '\0', sizeof(q.method)));
		} else {
			MUST(r == -EAGAIN || r == -EINVAL || r == -E2BIG || r == -EMSGSIZE);
			MUST(r == -EAGAIN || memchr(err, '\0', sizeof(err)));
		}
		if (n == size)
			break;
	}
	free(buf);
	return 0;
}
