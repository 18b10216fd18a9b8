#include "http_util.h"

#include "common.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const char *http_header_get(const struct http_header *headers, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (!strcasecmp(headers[i].name, name))
			return headers[i].value;
	return NULL;
}

int http_pct_decode(const char *s, size_t len, char **out, size_t *out_len)
{
	size_t cap;
	if (!ck_add_size(len, 1, &cap))
		return -ENOMEM;
	char *buf = malloc(cap), *o = buf;
	if (!buf)
		return -ENOMEM;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c != '%') {
			*o++ = (char)c;
			continue;
		}
		/* Both digits must be inside |<s, len>|. */
		char digits[3] = {len - i > 2 ? s[i + 1] : 0, len - i > 2 ? s[i + 2] : 0, 0};
		uint8_t byte;
		if (!digits[0] || !digits[1] || hex_decode(digits, &byte, 1) < 0) {
			free(buf);
			return -EINVAL;
		}
		*o++ = (char)byte;
		i += 2;
	}
	*o = 0;
	*out = buf;
	*out_len = (size_t)(o - buf);
	return 0;
}

int http_path_decode(const char *raw, char **out)
{
	if (raw[0] != '/')
		return -EINVAL;
	char *p;
	size_t n;
	int r = http_pct_decode(raw, strlen(raw), &p, &n);
	if (r < 0)
		return r;
	if (strlen(p) != n) {
		free(p);
		return -EINVAL;
	}
	*out = p;
	return 0;
}

char *http_uri_encode(const char *s, size_t len, bool keep_slash)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t cap;
	if (!ck_mul_size(len, 3, &cap) || !ck_add_size(cap, 1, &cap)) {
		errno = ENOMEM;
		return NULL;
	}
	char *out = malloc(cap), *o = out;
	if (!out)
		return NULL;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		bool unreserved = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
				  c == '.' || c == '_' || c == '~';
		if (unreserved || (keep_slash && c == '/')) {
			*o++ = (char)c;
		} else {
			*o++ = '%';
			*o++ = hex[c >> 4];
			*o++ = hex[c & 15];
		}
	}
	*o = 0;
	return out;
}

void http_params_free(struct http_param *params, size_t n)
{
	if (!params)
		return;
	for (size_t i = 0; i < n; i++) {
		free(params[i].name);
		free(params[i].value);
	}
	free(params);
}

/* Decode |<s, len>| into a C string; an encoded NUL is -EINVAL. */
static int decode_cstr(const char *s, size_t len, char **out)
{
	size_t n;
	int r = http_pct_decode(s, len, out, &n);
	if (r < 0)
		return r;
	if (strlen(*out) != n) {
		free(*out);
		*out = NULL;
		return -EINVAL;
	}
	return 0;
}

int http_query_parse(const char *query, size_t max_params, struct http_param **out, size_t *out_n)
{
	*out = NULL;
	*out_n = 0;
	struct http_param *params = NULL;
	size_t n = 0, cap = 0;
	int r = 0;
	for (const char *p = query; *p;) {
		const char *end = strchr(p, '&');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		if (len) {
			if (n == max_params) {
				r = -E2BIG;
				goto fail;
			}
			if (n == cap) {
				size_t ncap = cap ? cap * 2 : 8;
				struct http_param *np = realloc(params, ncap * sizeof(*np));
				if (!np) {
					r = -ENOMEM;
					goto fail;
				}
				params = np;
				cap = ncap;
			}
			const char *eq = memchr(p, '=', len);
			size_t name_len = eq ? (size_t)(eq - p) : len;
			params[n].name = params[n].value = NULL;
			n++;
			if ((r = decode_cstr(p, name_len, &params[n - 1].name)) < 0 ||
			    (r = decode_cstr(eq ? eq + 1 : "", eq ? len - name_len - 1 : 0, &params[n - 1].value)) < 0)
				goto fail;
		}
		p += len;
		if (*p == '&')
			p++;
	}
	*out = params;
	*out_n = n;
	return 0;
fail:
	http_params_free(params, n);
	return r;
}

const char *http_param_get(const struct http_param *params, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (!strcmp(params[i].name, name))
			return params[i].value;
	return NULL;
}
