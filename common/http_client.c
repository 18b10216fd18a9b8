/* common: a small HTTP/1.1 client on one libcurl easy handle (http_client.h).
 *
 * The handle is reused for every request, so libcurl keeps the connection to
 * a server alive between them.  Each request sets every option it depends on,
 * so nothing from the previous one leaks into it.  A reply is collected in
 * memory: the body up to the caller's cap, the headers of the final response
 * (an interim "100 Continue" is dropped) and any trailers after the body.
 */
#define LOG_COMPONENT "http"

#include "http_client.h"

#include "common.h"

#include <curl/curl.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <strings.h>

/* A peer may send at most this many header lines (libcurl itself caps each
 * line's length). */
#define MAX_RESPONSE_HEADERS 256

struct http_client {
	CURL *curl;
	char errbuf[CURL_ERROR_SIZE];
	char *unix_socket; /* http_client_set_unix_socket(), or NULL */
	int cancel_fd;	   /* http_client_set_cancel_fd(), or -1 */
};

/* What one exchange collects while libcurl runs it. */
struct exchange {
	struct http_client_response *out;
	size_t max_body, cap;
	bool too_big;	  /* the body passed max_body */
	bool bad_headers; /* more header lines than MAX_RESPONSE_HEADERS */
	bool no_memory;
	bool once_only;	  /* not GET or HEAD: the server may act on each copy */
	unsigned sends;	  /* requests libcurl started for this exchange */
	bool resend_refused;
	int cancel_fd;	  /* the client's, for on_progress */
	bool cancelled;	  /* cancel_fd became readable */
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result = CURLE_FAILED_INIT;
static void curl_init_once(void) { curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT); }

void http_client_response_cleanup(struct http_client_response *r)
{
	if (!r)
		return;
	free(r->body);
	/* Each header is one allocation, "name\0value\0", |name| at its start. */
	for (size_t i = 0; i < r->n_headers; i++)
		free((char *)r->headers[i].name);
	free(r->headers);
	*r = (struct http_client_response){0};
}

const char *http_client_response_header(const struct http_client_response *r, const char *name)
{
	return http_header_get(r->headers, r->n_headers, name);
}

int http_client_new(struct http_client **out)
{
	pthread_once(&curl_once, curl_init_once);
	if (curl_init_result != CURLE_OK) {
		log_err("libcurl failed to initialise: %s", curl_easy_strerror(curl_init_result));
		return -ENOMEM;
	}
	struct http_client *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->curl = curl_easy_init();
	if (!c->curl) {
		free(c);
		return -ENOMEM;
	}
	c->cancel_fd = -1;
	*out = c;
	return 0;
}

void http_client_free(struct http_client *c)
{
	if (!c)
		return;
	curl_easy_cleanup(c->curl);
	free(c->unix_socket);
	free(c);
}

int http_client_set_unix_socket(struct http_client *c, const char *path)
{
	if (path && strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
		return -EINVAL;
	char *dup = NULL;
	if (path && !(dup = strdup(path)))
		return -ENOMEM;
	free(c->unix_socket);
	c->unix_socket = dup;
	return 0;
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *arg)
{
	struct exchange *x = arg;
	struct http_client_response *r = x->out;
	size_t n = size * nmemb, need;
	if (!ck_add_size(r->body_len, n, &need) || need > x->max_body) {
		x->too_big = true;
		return 0; /* aborts the transfer: CURLE_WRITE_ERROR */
	}
	if (need + 1 > x->cap) {
		size_t cap = x->cap ? x->cap : 4096;
		while (cap < need + 1)
			cap = cap > SIZE_MAX / 2 ? need + 1 : cap * 2;
		char *b = realloc(r->body, cap);
		if (!b) {
			x->no_memory = true;
			return 0;
		}
		r->body = b;
		x->cap = cap;
	}
	memcpy(r->body + r->body_len, p, n);
	r->body_len = need;
	r->body[need] = 0;
	return n;
}

static void drop_headers(struct http_client_response *r)
{
	for (size_t i = 0; i < r->n_headers; i++)
		free((char *)r->headers[i].name);
	r->n_headers = 0;
}

static size_t on_header(char *p, size_t size, size_t nmemb, void *arg)
{
	struct exchange *x = arg;
	struct http_client_response *r = x->out;
	size_t n = size * nmemb, len = n;
	/* A status line starts a response: an interim one's headers ("100
	 * Continue") are not the answer's. */
	if (len >= 5 && !memcmp(p, "HTTP/", 5)) {
		drop_headers(r);
		return n;
	}
	while (len && (p[len - 1] == '\r' || p[len - 1] == '\n'))
		len--;
	const char *colon = memchr(p, ':', len);
	if (!len || !colon || colon == p)
		return n; /* the blank line after the headers, or a line that is no header */
	if (r->n_headers >= MAX_RESPONSE_HEADERS) {
		x->bad_headers = true;
		return 0;
	}
	size_t name_len = (size_t)(colon - p);
	const char *v = colon + 1, *end = p + len;
	while (v < end && (*v == ' ' || *v == '\t'))
		v++;
	while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
		end--;
	size_t value_len = (size_t)(end - v);
	char *h = malloc(name_len + value_len + 2);
	if (!h) {
		x->no_memory = true;
		return 0;
	}
	memcpy(h, p, name_len);
	h[name_len] = 0;
	memcpy(h + name_len + 1, v, value_len);
	h[name_len + 1 + value_len] = 0;
	if (!r->headers) {
		r->headers = calloc(MAX_RESPONSE_HEADERS, sizeof(*r->headers));
		if (!r->headers) {
			free(h);
			x->no_memory = true;
			return 0;
		}
	}
	r->headers[r->n_headers++] = (struct http_header){h, h + name_len + 1};
	return n;
}

void http_client_set_cancel_fd(struct http_client *c, int fd)
{
	c->cancel_fd = fd < 0 ? -1 : fd;
}

/* Called before each request goes out on a connection.  libcurl resends a
 * request on a fresh connection when a reused one closes before any answer
 * (the server may have died holding it); that is safe for GET, not for a
 * request the server may already have acted on, so such a resend is
 * refused and the caller learns the outcome is unknown. */
static int on_prereq(void *arg, char *conn_primary_ip, char *conn_local_ip, int conn_primary_port,
		     int conn_local_port)
{
	(void)conn_primary_ip, (void)conn_local_ip, (void)conn_primary_port, (void)conn_local_port;
	struct exchange *x = arg;
	if (x->sends++ > 0 && x->once_only) {
		x->resend_refused = true;
		return CURL_PREREQFUNC_ABORT;
	}
	return CURL_PREREQFUNC_OK;
}

/* libcurl's progress callback, which it calls while a transfer waits too:
 * the place to notice the cancel fd. */
static int on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
	(void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
	struct exchange *x = arg;
	struct pollfd pf = {.fd = x->cancel_fd, .events = POLLIN};
	if (poll(&pf, 1, 0) > 0 && (pf.revents & (POLLIN | POLLHUP | POLLERR))) {
		x->cancelled = true;
		return 1; /* abort: CURLE_ABORTED_BY_CALLBACK */
	}
	return 0;
}

/* The -errno for libcurl's |rc| after an exchange that collected |x|. */
static int map_curl_error(CURLcode rc, const struct exchange *x)
{
	if (x->no_memory)
		return -ENOMEM;
	if (x->cancelled)
		return -ECANCELED;
	if (x->too_big)
		return -EMSGSIZE;
	if (x->bad_headers)
		return -EPROTO;
	/* Sent once, then the connection broke and the resend could not even
	 * connect (or was refused above): the server may have acted on it. */
	if (x->resend_refused || (x->sends > 0 && rc == CURLE_COULDNT_CONNECT))
		return -ECONNRESET;
	switch (rc) {
	case CURLE_COULDNT_CONNECT:
		return -ECONNREFUSED;
	case CURLE_OPERATION_TIMEDOUT:
		return -ETIMEDOUT;
	case CURLE_FILESIZE_EXCEEDED:
		return -EMSGSIZE;
	case CURLE_WEIRD_SERVER_REPLY:
	case CURLE_BAD_CONTENT_ENCODING:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
	case CURLE_UNSUPPORTED_PROTOCOL:
		return -EPROTO;
	case CURLE_URL_MALFORMAT:
		return -EINVAL;
	case CURLE_OUT_OF_MEMORY:
		return -ENOMEM;
	default:
		return -EIO;
	}
}

int http_client_request(struct http_client *c, const char *method, const char *url, const struct http_header *headers,
			size_t n_headers, const void *body, size_t body_len, unsigned timeout_ms, size_t max_body,
			struct http_client_response *out)
{
	*out = (struct http_client_response){0};
	if (!method || !*method || !url || !*url || timeout_ms == 0 || (!body && body_len))
		return -EINVAL;
	struct curl_slist *list = NULL;
	int r = 0;
	/* No "Expect: 100-continue" before a body: it costs a round trip (or a
	 * one-second wait on a server that ignores it). */
	bool has_type = false;
	for (size_t i = 0; i < n_headers && r == 0; i++) {
		if (!strcasecmp(headers[i].name, "Content-Type"))
			has_type = true;
		char *line = xasprintf("%s: %s", headers[i].name, headers[i].value);
		struct curl_slist *l = line ? curl_slist_append(list, line) : NULL;
		free(line);
		if (l)
			list = l;
		else
			r = -ENOMEM;
	}
	const char *extra[] = {"Expect:", has_type || !body ? NULL : "Content-Type:"};
	for (size_t i = 0; i < sizeof(extra) / sizeof(extra[0]) && r == 0; i++) {
		if (!extra[i])
			continue;
		struct curl_slist *l = curl_slist_append(list, extra[i]);
		if (l)
			list = l;
		else
			r = -ENOMEM;
	}
	if (r < 0) {
		curl_slist_free_all(list);
		return r;
	}

	struct exchange x = {.out = out, .max_body = max_body, .once_only = strcmp(method, "GET") && strcmp(method, "HEAD"),
			     .cancel_fd = c->cancel_fd};
	CURL *e = c->curl;
	curl_easy_reset(e); /* options only: the connection cache stays */
	curl_easy_setopt(e, CURLOPT_URL, url);
	if (c->unix_socket)
		curl_easy_setopt(e, CURLOPT_UNIX_SOCKET_PATH, c->unix_socket);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->errbuf);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)timeout_ms);
	curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)(max_body > INT64_MAX ? INT64_MAX : max_body));
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, list);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, &x);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, &x);
	curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq);
	curl_easy_setopt(e, CURLOPT_PREREQDATA, &x);
	if (c->cancel_fd >= 0) {
		curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_progress);
		curl_easy_setopt(e, CURLOPT_XFERINFODATA, &x);
		curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
	}
	if (!strcmp(method, "HEAD")) {
		curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
	} else if (body) {
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
		if (strcmp(method, "POST"))
			curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
	} else if (strcmp(method, "GET")) {
		curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
	}
	c->errbuf[0] = 0;
	CURLcode rc = curl_easy_perform(e);
	curl_slist_free_all(list);
	/* Nothing may keep pointing at this call's stack. */
	curl_easy_setopt(e, CURLOPT_WRITEDATA, NULL);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, NULL);
	curl_easy_setopt(e, CURLOPT_PREREQDATA, NULL);
	curl_easy_setopt(e, CURLOPT_XFERINFODATA, NULL);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, NULL);
	if (rc != CURLE_OK || x.cancelled || x.no_memory || x.too_big || x.bad_headers) {
		r = map_curl_error(rc, &x);
		log_debug("%s %s: %s (%s)", method, url, c->errbuf[0] ? c->errbuf : curl_easy_strerror(rc), strerror(-r));
		http_client_response_cleanup(out);
		return r;
	}
	if (!out->body) {
		out->body = calloc(1, 1);
		if (!out->body) {
			http_client_response_cleanup(out);
			return -ENOMEM;
		}
	}
	curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &out->status);
	return 0;
}
