/* Fuzz target for the HTTP request pieces kindling parses itself
 * (common/http_util.c): query strings, percent-decoding, request paths and
 * case-insensitive header lookup.  libmicrohttpd parses the request line
 * and headers; what it hands over is fed here as a server would.
 *
 * Input: a selector byte (the parameter limit), then a query/path string,
 * a NUL, and a header block of "Name: value" lines.  Properties checked:
 *   - a parsed query, encoded again and parsed again, gives the same
 *     parameters; there are never more than the limit;
 *   - decode(encode(decode(s))) == decode(s);
 *   - a decoded path starts with '/' and holds no NUL;
 *   - header lookup in any letter case finds the first header of that name.
 */
#include "common/common.h"
#include "common/http_util.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_query(const char *q, size_t max)
{
	struct http_param *p = NULL, *p2 = NULL;
	size_t n = 0, n2 = 0;
	if (http_query_parse(q, max, &p, &n) < 0)
		return;
	if (n > max)
		abort();
	char *again = calloc(1, 1);
	for (size_t i = 0; i < n && again; i++) {
		char *en = http_uri_encode(p[i].name, strlen(p[i].name), false);
		char *ev = http_uri_encode(p[i].value, strlen(p[i].value), false);
		char *next = en && ev ? xasprintf("%s%s%s=%s", again, i ? "&" : "", en, ev) : NULL;
		free(en);
		free(ev);
		free(again);
		again = next;
	}
	if (again && http_query_parse(again, max, &p2, &n2) == 0) {
		if (n2 != n)
			abort();
		for (size_t i = 0; i < n; i++)
			if (strcmp(p[i].name, p2[i].name) || strcmp(p[i].value, p2[i].value))
				abort();
		if (n && http_param_get(p2, n2, p[0].name) != p2[0].value)
			abort();
	} else if (again) {
		abort(); /* what we encoded must parse */
	}
	http_params_free(p, n);
	http_params_free(p2, n2);
	free(again);
}

static void check_decode(const char *s)
{
	char *d = NULL, *d2 = NULL;
	size_t dl, dl2;
	if (http_pct_decode(s, strlen(s), &d, &dl) < 0)
		return;
	char *e = http_uri_encode(d, dl, true);
	if (e && (http_pct_decode(e, strlen(e), &d2, &dl2) < 0 || dl2 != dl || memcmp(d, d2, dl)))
		abort();
	free(d);
	free(d2);
	free(e);
	char *path = NULL;
	if (http_path_decode(s, &path) == 0) {
		if (path[0] != '/' || s[0] != '/')
			abort();
		free(path);
	}
}

static void check_headers(char *block)
{
	struct http_header h[64];
	size_t n = 0;
	for (char *save = NULL, *line = strtok_r(block, "\n", &save); line && n < 64; line = strtok_r(NULL, "\n", &save)) {
		char *colon = strchr(line, ':');
		if (!colon)
			continue;
		*colon = 0;
		char *v = colon + 1;
		while (*v == ' ')
			v++;
		h[n++] = (struct http_header){line, v};
	}
	for (size_t i = 0; i < n; i++) {
		char upper[256];
		size_t len = strlen(h[i].name);
		if (len >= sizeof(upper))
			continue;
		for (size_t j = 0; j <= len; j++)
			upper[j] = (char)(h[i].name[j] >= 'a' && h[i].name[j] <= 'z' ? h[i].name[j] - 32 : h[i].name[j]);
		const char *want = NULL;
		for (size_t j = 0; j < n && !want; j++)
			if (!strcasecmp(h[j].name, h[i].name))
				want = h[j].value;
		if (http_header_get(h, n, upper) != want)
			abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	char *buf = malloc(size);
	if (!buf)
		return 0;
	memcpy(buf, data + 1, size - 1);
	buf[size - 1] = 0;
	size_t max = data[0] % 64;
	char *headers = buf + strlen(buf);
	if (headers < buf + size - 1)
		headers++;
	check_query(buf, max);
	check_decode(buf);
	check_headers(headers);
	free(buf);
	return 0;
}
