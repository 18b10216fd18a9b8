/* Fuzz target for what a runtime inside a sandbox sends the agent's Runtime
 * API endpoint (placement/hostagent/runtime_api.c): the request's method and
 * path (rapi_route_parse), its Lambda-Runtime-Function-Error-Type header
 * (rapi_error_type) and an error body (rapi_error_payload).  The HTTP framing
 * itself is libmicrohttpd's.
 *
 * Input: byte 0 picks the method (GET, POST, other), then the path up to the
 * first '\n', the error-type header up to the next '\n', and the rest is the
 * body. */
/* ctest-labels: no-tsan (single-threaded parsers: nothing for ThreadSanitizer to check) */
#include "placement/hostagent/internal.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A NUL-terminated copy of |<p, n>| (NULs inside cut it short, as they do
 * for a C string from the HTTP server). */
static char *cstr(const uint8_t *p, size_t n)
{
	char *s = malloc(n + 1);
	if (!s)
		abort();
	memcpy(s, p, n);
	s[n] = '\0';
	return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	static const char *const methods[] = { "GET", "POST", "PUT" };
	const char *method = methods[data[0] % 3];
	const uint8_t *p = data + 1, *end = data + size;
	const uint8_t *nl = memchr(p, '\n', (size_t)(end - p));
	char *path = cstr(p, nl ? (size_t)(nl - p) : (size_t)(end - p));
	p = nl ? nl + 1 : end;
	nl = memchr(p, '\n', (size_t)(end - p));
	char *type_hdr = cstr(p, nl ? (size_t)(nl - p) : (size_t)(end - p));
	p = nl ? nl + 1 : end;

	struct rapi_target t;
	rapi_route_parse(method, path, &t);
	if (!memchr(t.request_id, 0, sizeof(t.request_id)))
		abort();
	if ((t.route == RAPI_ROUTE_RESPONSE || t.route == RAPI_ROUTE_ERROR) && !t.id_invalid &&
	    (t.request_id[0] == '\0' || strchr(t.request_id, '/')))
		abort();
	if (t.route != RAPI_ROUTE_RESPONSE && t.route != RAPI_ROUTE_ERROR && (t.request_id[0] || t.id_invalid))
		abort();

	char type[HA_ERROR_TYPE_MAX + 1];
	rapi_error_type(type_hdr, type, sizeof(type));
	/* Whatever came, the type is printable and never carries a line break
	 * into a header or a log. */
	for (const char *q = type; *q; q++)
		if ((unsigned char)*q < 0x20 || (unsigned char)*q >= 0x7f)
			abort();
	if (!strchr(type, '.'))
		abort();

	uint8_t *out = NULL;
	size_t len = 0;
	if (rapi_error_payload(p, (size_t)(end - p), type, &out, &len) == 0) {
		/* The invoker always gets a JSON object. */
		json_error_t e;
		json_t *j = json_loadb((const char *)out, len, 0, &e);
		if (!json_is_object(j) || out[len] != '\0')
			abort();
		json_decref(j);
		free(out);
	}
	free(path);
	free(type_hdr);
	return 0;
}
