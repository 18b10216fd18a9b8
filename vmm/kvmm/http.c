/* A strict HTTP/1.1 request-head parser for kvmm's API socket.
 *
 * The API socket is an attack surface (whoever can reach it can try to crash
 * the VMM), and its only legitimate clients are small: curl, Firecracker SDKs,
 * kindling itself.  So the parser accepts exactly what RFC 9112 requires of a
 * client and refuses every tolerance a lenient server grants: bare LF, line
 * folding, whitespace before the colon, duplicate or non-numeric
 * Content-Length, and Transfer-Encoding, which are the ingredients of request
 * smuggling.  It reads only inside |<buf, len>| and copies what it keeps. */
#define LOG_COMPONENT "kvmm"
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "common/common.h"
#include "vmm/kvmm/http.h"

/* RFC 9110 tchar. */
static bool is_tchar(unsigned char ch)
{
	if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
		return true;
	return ch && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

/* A field value byte: VCHAR, SP, HTAB or obs-text; never CR, LF or NUL. */
static bool is_vbyte(unsigned char ch)
{
	return ch == ' ' || ch == '\t' || (ch >= 0x21 && ch != 0x7f);
}

/* The end of the head: the offset just past the first CRLFCRLF, or 0. */
static size_t head_end(const char *buf, size_t len)
{
	for (size_t i = 0; i + 4 <= len; i++)
		if (buf[i] == '\r' && buf[i + 1] == '\n' && buf[i + 2] == '\r' && buf[i + 3] == '\n')
			return i + 4;
	return 0;
}

/* Case-insensitive comparison of the token |<p, n>| with |word|. */
static bool token_eq(const char *p, size_t n, const char *word)
{
	return strlen(word) == n && strncasecmp(p, word, n) == 0;
}

/* Walk the comma-separated Connection value and note close / keep-alive. */
static void connection_tokens(const char *v, size_t n, bool *close, bool *keep)
{
	size_t i = 0;
	while (i < n) {
		while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
			i++;
		size_t s = i;
		while (i < n && v[i] != ',' && v[i] != ' ' && v[i] != '\t')
			i++;
		if (token_eq(v + s, i - s, "close"))
			*close = true;
		else if (token_eq(v + s, i - s, "keep-alive"))
			*keep = true;
	}
}

/* The request line "METHOD SP target SP HTTP/1.x" in |<p, n>| (no CRLF). */
static int request_line(const char *p, size_t n, struct kvmm_http_req *out, char *err, size_t errlen)
{
	size_t i = 0;
	while (i < n && p[i] >= 'A' && p[i] <= 'Z')
		i++;
	if (i == 0 || i >= sizeof(out->method) || i >= n || p[i] != ' ')
		return err_set(err, errlen, -EINVAL, "malformed request line: expected an upper-case method and one space");
	memcpy(out->method, p, i);
	out->method[i] = '\0';
	size_t t = ++i;
	while (i < n && p[i] > 0x20 && p[i] < 0x7f)
		i++;
	size_t tlen = i - t;
	if (tlen == 0 || p[t] != '/')
		return err_set(err, errlen, -EINVAL, "malformed request line: the target must be a path starting with '/'");
	if (tlen >= sizeof(out->path))
		return err_set(err, errlen, -EINVAL, "request target longer than %zu bytes", sizeof(out->path) - 1);
	if (i >= n || p[i] != ' ')
		return err_set(err, errlen, -EINVAL, "malformed request line: expected one space after the target");
	memcpy(out->path, p + t, tlen);
	out->path[tlen] = '\0';
	i++;
	if (n - i != 8 || memcmp(p + i, "HTTP/1.", 7) != 0 || (p[i + 7] != '0' && p[i + 7] != '1'))
		return err_set(err, errlen, -EINVAL, "unsupported protocol version: only HTTP/1.0 and HTTP/1.1 are served");
	out->minor = p[i + 7] - '0';
	return 0;
}

/* Content-Length: 1*DIGIT, bounded before it can overflow. */
static int content_length(const char *v, size_t n, size_t *out, char *err, size_t errlen)
{
	if (n == 0)
		return err_set(err, errlen, -EINVAL, "empty Content-Length");
	size_t x = 0;
	for (size_t i = 0; i < n; i++) {
		if (v[i] < '0' || v[i] > '9')
			return err_set(err, errlen, -EINVAL, "Content-Length is not a decimal number");
		x = x * 10 + (size_t)(v[i] - '0');
		if (x > KVMM_HTTP_MAX_BODY)
			return err_set(err, errlen, -E2BIG, "request body larger than %d bytes", KVMM_HTTP_MAX_BODY);
	}
	*out = x;
	return 0;
}

int kvmm_http_parse_head(const char *buf, size_t len, struct kvmm_http_req *out, char *err, size_t errlen)
{
	memset(out, 0, sizeof(*out));
	size_t scan = len < KVMM_HTTP_MAX_HEAD ? len : KVMM_HTTP_MAX_HEAD;
	size_t end = head_end(buf, scan);
	if (!end) {
		if (len >= KVMM_HTTP_MAX_HEAD)
			return err_set(err, errlen, -EMSGSIZE, "request head larger than %d bytes", KVMM_HTTP_MAX_HEAD);
		return -EAGAIN;
	}
	/* Line by line through the head; |end| - 2 is the final empty line. */
	size_t pos = 0, nheaders = 0;
	bool have_cl = false, conn_close = false, conn_keep = false;
	int r;
	while (pos < end - 2) {
		const char *line = buf + pos;
		const char *cr = memchr(line, '\r', end - pos);
		/* head_end() found CRLFCRLF, so a CR exists; it must be a CRLF, and
		 * no bare LF may hide inside the line. */
		size_t n = (size_t)(cr - line);
		if (cr[1] != '\n' || memchr(line, '\n', n))
			return err_set(err, errlen, -EINVAL, "bare CR or LF in the request head; lines end with CRLF");
		if (pos == 0) {
			if ((r = request_line(line, n, out, err, errlen)) < 0)
				return r;
		} else {
			if (++nheaders > KVMM_HTTP_MAX_HEADERS)
				return err_set(err, errlen, -EMSGSIZE, "more than %d headers", KVMM_HTTP_MAX_HEADERS);
			if (line[0] == ' ' || line[0] == '\t')
				return err_set(err, errlen, -EINVAL, "obsolete header line folding is not accepted");
			size_t k = 0;
			while (k < n && is_tchar((unsigned char)line[k]))
				k++;
			if (k == 0 || k >= n || line[k] != ':')
				return err_set(err, errlen, -EINVAL, "malformed header line (want \"Name: value\")");
			const char *name = line;
			size_t name_len = k;
			const char *v = line + k + 1;
			size_t vn = n - k - 1;
			for (size_t i = 0; i < vn; i++)
				if (!is_vbyte((unsigned char)v[i]))
					return err_set(err, errlen, -EINVAL, "control byte in the value of header %.*s",
						   (int)name_len, name);
			while (vn && (*v == ' ' || *v == '\t'))
				v++, vn--;
			while (vn && (v[vn - 1] == ' ' || v[vn - 1] == '\t'))
				vn--;
			if (token_eq(name, name_len, "Content-Length")) {
				if (have_cl)
					return err_set(err, errlen, -EINVAL, "more than one Content-Length header");
				have_cl = true;
				if ((r = content_length(v, vn, &out->content_length, err, errlen)) < 0)
					return r;
			} else if (token_eq(name, name_len, "Transfer-Encoding")) {
				return err_set(err, errlen, -EINVAL,
					   "Transfer-Encoding is not supported; send the body with a Content-Length");
			} else if (token_eq(name, name_len, "Expect")) {
				if (!token_eq(v, vn, "100-continue"))
					return err_set(err, errlen, -EINVAL, "unsupported expectation (only 100-continue)");
				out->expect_continue = true;
			} else if (token_eq(name, name_len, "Connection")) {
				connection_tokens(v, vn, &conn_close, &conn_keep);
			}
		}
		pos += n + 2;
	}
	if (!out->method[0])
		return err_set(err, errlen, -EINVAL, "empty request line");
	/* HTTP/1.1 keeps the connection unless told otherwise; 1.0 closes
	 * unless asked to keep it. */
	out->keep_alive = conn_close ? false : out->minor == 1 ? true : conn_keep;
	/* 100-continue means nothing without a body to wait for. */
	if (out->content_length == 0)
		out->expect_continue = false;
	out->head_len = end;
	return 0;
}
