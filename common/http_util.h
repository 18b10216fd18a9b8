/* common: the pieces of an HTTP message that the HTTP server (http_server.h)
 * and AWS Signature Version 4 (sigv4.h) share: a header list with
 * case-insensitive lookup, percent-decoding of paths and query strings, and
 * RFC 3986 percent-encoding.
 *
 * Everything here reads untrusted bytes from the network, so every function
 * checks its input and refuses what it cannot represent instead of guessing;
 * common/fuzz/fuzz_http_util.c drives them all.
 */
#ifndef KINDLING_COMMON_HTTP_UTIL_H
#define KINDLING_COMMON_HTTP_UTIL_H

#include <stdbool.h>
#include <stddef.h>

/* One header as received or to be sent.  Names compare case-insensitively;
 * a list may hold one name several times (in arrival order). */
struct http_header {
	const char *name;
	const char *value;
};

/* The value of the first header in |<headers, n>| named |name| (compared
 * case-insensitively, as HTTP requires), or NULL if there is none. */
const char *http_header_get(const struct http_header *headers, size_t n, const char *name);

/* Percent-decode |<s, len>|: "%XX" (either case) becomes that byte and every
 * other byte stays as it is ('+' too: it means space only in HTML forms, and
 * AWS clients encode a space as "%20").  |*out| gets a malloc'd,
 * NUL-terminated copy of |*out_len| bytes, which may itself contain NUL bytes
 * if the input encoded them.  Returns 0, -EINVAL for a '%' not followed by
 * two hex digits, or -ENOMEM. */
int http_pct_decode(const char *s, size_t len, char **out, size_t *out_len);

/* Decode a request path as sent on the request line (no query) into a C
 * string for routing.  The result is not normalised: "." and ".." segments
 * stay, so a router must refuse them where they matter.  Returns 0 with
 * |*out| malloc'd, -EINVAL if |raw| does not start with '/', has a malformed
 * escape, or decodes to a NUL byte, or -ENOMEM. */
int http_path_decode(const char *raw, char **out);

/* RFC 3986 percent-encoding of |<s, len>|: the unreserved characters
 * A-Z a-z 0-9 - . _ ~ stay, and so does '/' if |keep_slash|; every other
 * byte becomes "%XX" in upper-case hex.  This is SigV4's UriEncode().
 * Returns a malloc'd string or NULL (errno ENOMEM). */
char *http_uri_encode(const char *s, size_t len, bool keep_slash);

/* One query parameter, both parts decoded and owned. */
struct http_param {
	char *name;
	char *value;
};

/* Split the raw query string |query| (the part after '?', without it) at
 * '&', each piece at its first '=' (a piece without one has the value ""),
 * and percent-decode both parts.  Empty pieces ("a=1&&b=2") are skipped.
 * At most |max_params| parameters are accepted.  |*out| (free with
 * http_params_free) gets the parameters in query order, |*out_n| their
 * count; an empty query gives NULL and 0.  Returns 0, -EINVAL for a
 * malformed escape or an encoded NUL byte, -E2BIG for more than
 * |max_params| parameters, or -ENOMEM. */
int http_query_parse(const char *query, size_t max_params, struct http_param **out, size_t *out_n);

/* Free |<params, n>| as returned by http_query_parse; NULL is fine. */
void http_params_free(struct http_param *params, size_t n);

/* The value of the first parameter in |<params, n>| named exactly |name|
 * (query names are case-sensitive), or NULL. */
const char *http_param_get(const struct http_param *params, size_t n, const char *name);

#endif
