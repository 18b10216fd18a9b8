/* kvmm: HTTP/1.1 requests (http.c): a checked parser for the API socket. */
#ifndef KINDLING_KVMM_HTTP_H
#define KINDLING_KVMM_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#define KVMM_HTTP_MAX_HEAD 8192	     /* request line and headers, with the blank line */
#define KVMM_HTTP_MAX_BODY (64 * 1024) /* Firecracker's bodies are small JSON objects */
#define KVMM_HTTP_MAX_HEADERS 64
#define KVMM_HTTP_MAX_PATH 256

/* One request head.  Strings are NUL-terminated copies. */
struct kvmm_http_req {
	char method[8];		     /* "GET", "PUT", "PATCH", ...: upper-case letters */
	char path[KVMM_HTTP_MAX_PATH]; /* origin-form, starts with '/', as sent (no decoding) */
	int minor;		     /* 1 for HTTP/1.1, 0 for HTTP/1.0 */
	size_t head_len;	     /* bytes of the head, blank line included: the body starts there */
	size_t content_length;	     /* 0 if there is no Content-Length */
	bool keep_alive;	     /* the connection stays open after the response */
	bool expect_continue;	     /* "Expect: 100-continue": answer 100 before reading the body */
};

/* Parse the request head at the start of |<buf, len>| (untrusted bytes).
 * Strict: CRLF line ends, a token method, an origin-form target of printable
 * ASCII, HTTP/1.0 or 1.1, token header names, no obsolete line folding, no
 * control bytes in values, at most KVMM_HTTP_MAX_HEADERS headers, one
 * Content-Length of digits only up to KVMM_HTTP_MAX_BODY, no
 * Transfer-Encoding (request smuggling and chunked bodies are refused), and
 * no Expect other than 100-continue.
 * Returns 0 with |*out| filled; -EAGAIN if the head is not complete yet and
 * may still fit in KVMM_HTTP_MAX_HEAD (read more and call again with the
 * whole buffer); -E2BIG for a body over KVMM_HTTP_MAX_BODY (HTTP 413);
 * -EMSGSIZE for a head over KVMM_HTTP_MAX_HEAD or too many headers (431);
 * -EINVAL for anything malformed or refused (400).  On error a message for
 * the client is in |<err, errlen>|; the connection cannot be resynchronised
 * and must be closed after the error response. */
int kvmm_http_parse_head(const char *buf, size_t len, struct kvmm_http_req *out, char *err, size_t errlen);

#endif
