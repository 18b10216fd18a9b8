/* A small HTTP server on Debian's libmicrohttpd, for the Runtime API: it
 * serves a listening socket the sandbox handed over, one thread per
 * connection so that a handler can block (a runtime's /next long-poll waits
 * for as long as the sandbox is idle), and it reads bodies only up to a
 * limit.  libmicrohttpd does the HTTP/1.1 parsing; this file only adapts it.
 * It is kept small and behind internal.h so that it can give way to a
 * shared server in common/ without touching rapi.c. */
#include "placement/hostagent/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Connections one Runtime API endpoint serves at once: a runtime uses one
 * or two. */
#define HTTPD_CONNECTIONS 32

struct httpd {
	struct MHD_Daemon *d;
	const struct httpd_ops *ops;
	void *arg;
	char name[96];
};

struct req_ctx {
	size_t limit;
	uint8_t *body;
	size_t len, alloc;
	uint64_t total;
	bool answered;
};

const char *httpd_header(const struct httpd_request *req, const char *name)
{
	return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

static bool header_safe(const char *s)
{
	return strpbrk(s, "\r\n") == NULL;
}

int httpd_response_header(struct httpd_response *resp, const char *name, const char *value)
{
	if (resp->n_headers == HTTPD_MAX_HEADERS)
		return -ENOSPC;
	if (!header_safe(name) || !header_safe(value) || !*name)
		return -EINVAL;
	char *n = strdup(name), *v = strdup(value);
	if (!n || !v) {
		free(n);
		free(v);
		return -ENOMEM;
	}
	resp->headers[resp->n_headers].name = n;
	resp->headers[resp->n_headers].value = v;
	resp->n_headers++;
	return 0;
}

static void response_cleanup(struct httpd_response *resp)
{
	for (size_t i = 0; i < resp->n_headers; i++) {
		free(resp->headers[i].name);
		free(resp->headers[i].value);
	}
	free(resp->body);
	memset(resp, 0, sizeof(*resp));
}

static enum MHD_Result answer(struct httpd *h, struct MHD_Connection *c, struct req_ctx *rc, const char *method,
			      const char *url)
{
	rc->answered = true;
	struct httpd_request q = {
		.method = method,
		.path = url,
		.conn = c,
		.body = rc->body ? rc->body : (const uint8_t *)"",
		.body_len = rc->len,
		.body_total = rc->total,
	};
	struct httpd_response resp = { .status = 200 };
	if (h->ops->handle(h->arg, &q, &resp) < 0) {
		response_cleanup(&resp);
		return MHD_NO;
	}
	struct MHD_Response *mr =
	    resp.body_len ? MHD_create_response_from_buffer(resp.body_len, resp.body, MHD_RESPMEM_MUST_FREE)
			  : MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
	if (!mr) {
		log_warn("%s: out of memory for a response", h->name);
		response_cleanup(&resp);
		return MHD_NO;
	}
	if (resp.body_len)
		resp.body = NULL; /* libmicrohttpd frees it with the response */
	bool ok = true;
	if (resp.content_type)
		ok = MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE, resp.content_type) == MHD_YES;
	for (size_t i = 0; ok && i < resp.n_headers; i++)
		ok = MHD_add_response_header(mr, resp.headers[i].name, resp.headers[i].value) == MHD_YES;
	/* A body left unread cannot be skipped to reach a next request. */
	if (ok && rc->total > rc->len)
		ok = MHD_add_response_header(mr, MHD_HTTP_HEADER_CONNECTION, "close") == MHD_YES;
	enum MHD_Result ret = ok ? MHD_queue_response(c, resp.status, mr) : MHD_NO;
	MHD_destroy_response(mr);
	response_cleanup(&resp);
	return ret;
}

static bool parse_length(const char *s, uint64_t *out)
{
	if (!s || *s < '0' || *s > '9')
		return false;
	uint64_t v = 0;
	for (; *s >= '0' && *s <= '9'; s++)
		if (!ck_mul_u64(v, 10, &v) || !ck_add_u64(v, (uint64_t)(*s - '0'), &v))
			return false;
	*out = v;
	return *s == '\0';
}

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *c, const char *url, const char *method,
				 const char *version, const char *upload_data, size_t *upload_data_size, void **con_cls)
{
	(void)version;
	struct httpd *h = cls;
	struct req_ctx *rc = *con_cls;
	if (!rc) {
		if (!(rc = calloc(1, sizeof(*rc))))
			return MHD_NO;
		*con_cls = rc;
		rc->limit = h->ops->body_limit(h->arg, method, url);
		uint64_t cl;
		if (parse_length(MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH), &cl) &&
		    cl > rc->limit) {
			/* Answer at once, without reading a byte of it. */
			rc->total = cl;
			return answer(h, c, rc, method, url);
		}
		return MHD_YES;
	}
	if (rc->answered) {
		*upload_data_size = 0;
		return MHD_YES;
	}
	if (*upload_data_size) {
		size_t n = *upload_data_size;
		rc->total += n;
		size_t keep = rc->len < rc->limit ? rc->limit - rc->len : 0;
		if (keep > n)
			keep = n;
		if (keep) {
			if (rc->len + keep + 1 > rc->alloc) {
				size_t want = rc->alloc ? rc->alloc : 4096;
				while (want < rc->len + keep + 1)
					want *= 2;
				if (want > rc->limit + 1)
					want = rc->limit + 1;
				uint8_t *nb = realloc(rc->body, want);
				if (!nb)
					return MHD_NO;
				rc->body = nb;
				rc->alloc = want;
			}
			memcpy(rc->body + rc->len, upload_data, keep);
			rc->len += keep;
			rc->body[rc->len] = '\0';
		}
		*upload_data_size = 0;
		return MHD_YES;
	}
	return answer(h, c, rc, method, url);
}

static void completed_cb(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
	(void)cls;
	(void)c;
	(void)toe;
	struct req_ctx *rc = *con_cls;
	if (rc) {
		free(rc->body);
		free(rc);
		*con_cls = NULL;
	}
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	struct httpd *h = cls;
	char msg[512];
	vsnprintf(msg, sizeof(msg), fmt, ap);
	size_t n = strlen(msg);
	while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
		msg[--n] = '\0';
	log_debug("%s: libmicrohttpd: %s", h->name, msg);
}

int httpd_start(const struct httpd_ops *ops, void *arg, int fd, const char *name, struct httpd **out)
{
	struct httpd *h = calloc(1, sizeof(*h));
	if (!h) {
		close(fd);
		return -ENOMEM;
	}
	h->ops = ops;
	h->arg = arg;
	snprintf(h->name, sizeof(h->name), "%s", name);
	/* libmicrohttpd takes a descriptor of its own: it closes it when it
	 * stops, and on most (not all) of its start failures, so ours is
	 * closed here in every case. */
	int mfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	int e = errno;
	close(fd);
	if (mfd < 0) {
		log_err("%s: cannot duplicate the Runtime API socket: %s", name, strerror(e));
		free(h);
		return -e;
	}
	h->d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
				    MHD_USE_ITC | MHD_USE_ERROR_LOG,
				0, NULL, NULL, access_cb, h, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h,
				MHD_OPTION_LISTEN_SOCKET, mfd, MHD_OPTION_NOTIFY_COMPLETED, completed_cb, h,
				MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTPD_CONNECTIONS, MHD_OPTION_END);
	if (!h->d) {
		log_err("%s: libmicrohttpd would not serve the Runtime API socket (run with KINDLING_DEBUG=1 for "
			"its reason)", name);
		free(h);
		return -EIO;
	}
	*out = h;
	return 0;
}

void httpd_stop(struct httpd *h)
{
	if (!h)
		return;
	MHD_stop_daemon(h->d);
	free(h);
}
