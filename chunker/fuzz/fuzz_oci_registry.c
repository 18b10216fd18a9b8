/* Fuzz target for the registry source's response parsers
 * (chunker/oci_source_registry.c): header lines, WWW-Authenticate
 * challenges and the token realm check, JSON error bodies and token replies.
 *
 * Input: one selector byte, then a response as it comes off the wire: header
 * lines up to the first empty line, then the body.  Bit 0 of the selector
 * allows plain http for the realm check; the rest picks the status code the
 * error body is described with.  Every output must stay inside its buffer,
 * and a token must never carry a byte a header line cannot.
 */
#include "chunker/oci_source_ops.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define TERMINATED(field) (memchr((field), 0, sizeof(field)) != NULL)

static void check_challenge(const char *value, bool plain_http_ok)
{
	struct registry_challenge ch;
	registry_parse_challenge(value, &ch);
	if (!TERMINATED(ch.scheme) || !TERMINATED(ch.realm) || !TERMINATED(ch.service) || !TERMINATED(ch.scope))
		abort();
	if (registry_realm_allowed(ch.realm, plain_http_ok) && strncmp(ch.realm, "https://", 8) != 0 &&
	    strncmp(ch.realm, "http://", 7) != 0)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const long statuses[] = {200, 401, 403, 404, 500, 0, -1, 999};
	if (size < 1)
		return 0;
	log_set_level(LOG_SILENT);
	uint8_t sel = data[0];
	const char *p = (const char *)data + 1, *end = p + (size - 1);

	/* Header lines, each with its line end, as libcurl hands them over. */
	struct registry_headers hdr = {0};
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t n = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
		bool blank = n == 1 || (n == 2 && p[0] == '\r');
		registry_header_line(&hdr, p, n);
		p += n;
		if (!TERMINATED(hdr.content_type) || !TERMINATED(hdr.docker_digest) || !TERMINATED(hdr.www_auth))
			abort();
		if (blank)
			break;
	}
	check_challenge(hdr.www_auth, sel & 1);

	/* The body: an error document and a token reply. */
	const uint8_t *body = (const uint8_t *)p;
	size_t blen = (size_t)(end - p);
	char st[256];
	registry_describe_error(statuses[(sel >> 1) & 7], blen ? body : NULL, blen, st, sizeof(st));
	if (!TERMINATED(st))
		abort();
	char *bearer = NULL;
	if (registry_parse_token(body, blen, &bearer) == 0) {
		const char *prefix = "Authorization: Bearer ";
		if (strncmp(bearer, prefix, strlen(prefix)) != 0 || !bearer[strlen(prefix)])
			abort();
		for (const char *t = bearer + strlen(prefix); *t; t++)
			if (*t <= ' ' || *t >= 127)
				abort();
	} else if (bearer) {
		abort();
	}
	free(bearer);

	/* The body as a challenge value too, at most as long as a header. */
	char value[sizeof(hdr.www_auth)];
	size_t vl = blen < sizeof(value) - 1 ? blen : sizeof(value) - 1;
	memcpy(value, body, vl);
	value[vl] = 0;
	check_challenge(value, sel & 1);
	return 0;
}
