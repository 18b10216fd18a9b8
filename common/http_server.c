/* The HTTP server: libmicrohttpd in thread-per-connection mode, plus what it
 * lacks for kindling's APIs.
 *
 * libmicrohttpd parses HTTP/1.1, reads bodies, sends responses and runs one
 * thread per connection.  This file adds:
 *   - the raw request line (its URI-log callback sees the URI before it is
 *     unescaped), which SigV4 needs;
 *   - a per-request body limit chosen before the body is read;
 *   - a connection cap that answers 503 instead of dropping connections;
 *   - a watchdog thread that bounds every wait on a client: libmicrohttpd's
 *     own timeout only measures inactivity, so a client that sends one byte
 *     a second would hold its thread forever.  Each connection carries a
 *     deadline while the server waits on it; the watchdog shuts down the
 *     socket of a connection past its deadline, and libmicrohttpd's thread
 *     then sees the connection end.  libmicrohttpd reports a connection
 *     closed (under our lock) before it closes the socket, so the watchdog
 *     never touches a descriptor that was reused.
 *
 * Locking: one mutex per server guards the connection list, the counters
 * and the flags; no callback into the application runs under it.
 */
#define LOG_COMPONENT "http"
#include "http_server.h"

#include "common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Room libmicrohttpd needs in a connection's memory pool besides the
 * request line and headers: its bookkeeping of the headers, and room to
 * read the body through once the headers are parsed. */
#define POOL_EXTRA (2u << 10)

struct conn {
	struct conn *prev, *next;
	int fd;
	char peer[INET6_ADDRSTRLEN + 16];
	bool waiting;	 /* the server waits on the client: the deadline runs */
	double deadline; /* now_seconds() by which the wait must end */
	bool over_cap;	 /* opened beyond max_connections: answer 503 */
	bool shut;	 /* the watchdog shut it down */
};

struct req {
	struct http_server *srv;
	struct conn *conn; /* NULL if it could not be tracked */
	char *raw_uri;	   /* as on the request line, query included */
	bool started;	   /* the first call of the access handler has run */
	bool counted;	   /* counted in in_flight */
	bool bad_path;	   /* raw path does not decode */
	bool over_limit;   /* a chunked body passed the limit and is dropped */
	struct http_request r;
	char *arena; /* method, version, URI copy and header strings */
	struct http_header *headers;
	char *path;
	uint8_t *body;
	size_t body_len, body_cap, limit;
	uint64_t body_total; /* bytes of the body that came, kept or not */
};

struct http_server {
	struct http_server_config cfg; /* defaults filled in */
	struct MHD_Daemon *mhd;
	char address[sizeof(struct sockaddr_storage) + 8]; /* "unix:" + a path, or host:port */
	uint16_t port;
	double timeout; /* seconds */

	pthread_mutex_t lock;
	pthread_cond_t idle;	 /* in_flight dropped to 0 */
	pthread_cond_t wd_wake;	 /* the watchdog's alarm */
	pthread_t watchdog;
	bool wd_running, wd_quit;
	double wd_next;		 /* when the watchdog wakes up next */
	struct conn *conns;
	unsigned n_conns, in_flight;
	bool stopping, stopped;
	uint64_t requests, rejected_busy, too_large, timed_out;
};

/* ---- responses ------------------------------------------------------------------- */

static bool is_token(const char *s)
{
	if (!*s)
		return false;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		      strchr("!#$%&'*+-.^_`|~", *p)))
			return false;
	return true;
}

int http_response_add_header(struct http_response *resp, const char *name, const char *value)
{
	if (!is_token(name) || strpbrk(value, "\r\n") || !strcasecmp(name, "Content-Length") ||
	    !strcasecmp(name, "Transfer-Encoding"))
		return -EINVAL;
	if (resp->n_headers == resp->cap_headers) {
		size_t cap = resp->cap_headers ? resp->cap_headers * 2 : 8;
		struct http_header *nh = realloc(resp->headers, cap * sizeof(*nh));
		if (!nh)
			return -ENOMEM;
		resp->headers = nh;
		resp->cap_headers = cap;
	}
	char *n = strdup(name), *v = strdup(value);
	if (!n || !v) {
		free(n);
		free(v);
		return -ENOMEM;
	}
	resp->headers[resp->n_headers++] = (struct http_header){n, v};
	return 0;
}

int http_response_set_body(struct http_response *resp, const void *data, size_t len)
{
	uint8_t *copy = malloc(len ? len : 1);
	if (!copy)
		return -ENOMEM;
	if (len)
		memcpy(copy, data, len);
	http_response_take_body(resp, copy, len);
	return 0;
}

void http_response_take_body(struct http_response *resp, void *data, size_t len)
{
	free(resp->body);
	resp->body = data;
	resp->body_len = len;
}

static void response_cleanup(struct http_response *resp)
{
	for (size_t i = 0; i < resp->n_headers; i++) {
		free((char *)resp->headers[i].name);
		free((char *)resp->headers[i].value);
	}
	free(resp->headers);
	free(resp->body);
	memset(resp, 0, sizeof(*resp));
}

const char *http_request_header(const struct http_request *req, const char *name)
{
	return http_header_get(req->headers, req->n_headers, name);
}

/* ---- connection bookkeeping and the watchdog --------------------------------------- */

/* Start |c|'s deadline (lock held). */
static void conn_wait_locked(struct http_server *s, struct conn *c)
{
	c->waiting = true;
	c->deadline = now_seconds() + s->timeout;
	if (c->deadline < s->wd_next)
		pthread_cond_signal(&s->wd_wake);
}

static void *watchdog_main(void *arg)
{
	struct http_server *s = arg;
	pthread_mutex_lock(&s->lock);
	while (!s->wd_quit) {
		double now = now_seconds(), next = now + 3600;
		for (struct conn *c = s->conns; c; c = c->next) {
			if (!c->waiting || c->shut)
				continue;
			if (c->deadline > now) {
				if (c->deadline < next)
					next = c->deadline;
				continue;
			}
			/* libmicrohttpd's thread sees the connection end and
			 * closes it; until it reports that, the fd is valid. */
			shutdown(c->fd, SHUT_RDWR);
			c->shut = true;
			s->timed_out++;
			log_info("%s: closed the connection from %s: the client took more than %u ms to send a "
				 "request or take a response",
				 s->cfg.name, c->peer, s->cfg.io_timeout_ms);
		}
		s->wd_next = next;
		struct timespec ts = {.tv_sec = (time_t)next, .tv_nsec = (long)((next - (double)(time_t)next) * 1e9)};
		pthread_cond_timedwait(&s->wd_wake, &s->lock, &ts);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

static void format_peer(const struct sockaddr *sa, char *buf, size_t len)
{
	char host[INET6_ADDRSTRLEN];
	if (sa && sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		snprintf(buf, len, "%s:%u", host, ntohs(in->sin_port));
	} else if (sa && sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		snprintf(buf, len, "[%s]:%u", host, ntohs(in6->sin6_port));
	} else if (sa && sa->sa_family == AF_UNIX) {
		snprintf(buf, len, "unix");
	} else {
		snprintf(buf, len, "unknown");
	}
}

static void notify_connection(void *cls, struct MHD_Connection *connection, void **socket_context,
			      enum MHD_ConnectionNotificationCode toe)
{
	struct http_server *s = cls;
	if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
		struct conn *c = *socket_context;
		if (!c)
			return;
		pthread_mutex_lock(&s->lock);
		if (c->prev)
			c->prev->next = c->next;
		else
			s->conns = c->next;
		if (c->next)
			c->next->prev = c->prev;
		s->n_conns--;
		pthread_mutex_unlock(&s->lock);
		free(c);
		*socket_context = NULL;
		return;
	}
	struct conn *c = calloc(1, sizeof(*c));
	*socket_context = c;
	if (!c) {
		log_warn("%s: out of memory for a new connection; it will be refused", s->cfg.name);
		return;
	}
	const union MHD_ConnectionInfo *fd = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
	const union MHD_ConnectionInfo *addr = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	c->fd = fd ? fd->connect_fd : -1;
	format_peer(addr ? addr->client_addr : NULL, c->peer, sizeof(c->peer));
	pthread_mutex_lock(&s->lock);
	c->next = s->conns;
	if (s->conns)
		s->conns->prev = c;
	s->conns = c;
	s->n_conns++;
	c->over_cap = s->n_conns > s->cfg.max_connections;
	if (c->fd >= 0)
		conn_wait_locked(s, c);
	pthread_mutex_unlock(&s->lock);
}

static struct conn *conn_of(struct MHD_Connection *connection)
{
	const union MHD_ConnectionInfo *i = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	return i ? i->socket_context : NULL;
}

/* libmicrohttpd calls this with the URI exactly as sent, before it unescapes
 * it; what it returns becomes the request's context. */
static void *uri_log(void *cls, const char *uri, struct MHD_Connection *connection)
{
	struct req *q = calloc(1, sizeof(*q));
	if (!q)
		return NULL;
	q->srv = cls;
	q->conn = conn_of(connection);
	if (!(q->raw_uri = strdup(uri))) {
		free(q);
		return NULL;
	}
	return q;
}

static void req_free(struct req *q)
{
	free(q->raw_uri);
	free(q->arena);
	free(q->headers);
	free(q->path);
	free(q->body);
	free(q);
}

static void notify_completed(void *cls, struct MHD_Connection *connection, void **con_cls,
			     enum MHD_RequestTerminationCode toe)
{
	struct http_server *s = cls;
	struct req *q = *con_cls;
	(void)connection;
	(void)toe;
	if (!q)
		return;
	pthread_mutex_lock(&s->lock);
	if (q->counted && --s->in_flight == 0)
		pthread_cond_broadcast(&s->idle);
	/* The connection now waits for its next request. */
	if (q->conn && q->conn->fd >= 0)
		conn_wait_locked(s, q->conn);
	pthread_mutex_unlock(&s->lock);
	req_free(q);
	*con_cls = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	struct http_server *s = cls;
	char buf[512];
	vsnprintf(buf, sizeof(buf), fmt, ap);
	size_t n = strlen(buf);
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		buf[--n] = 0;
	log_info("%s: libmicrohttpd: %s", s->cfg.name, buf);
}

/* ---- requests -------------------------------------------------------------------- */

struct header_scan {
	size_t n, bytes;
	bool bad;		   /* a header held a NUL byte */
	struct http_header *out;   /* second pass: where to put them */
	char *at;		   /* second pass: where their strings go */
};

static enum MHD_Result scan_header(void *cls, enum MHD_ValueKind kind, const char *key, size_t key_size,
				   const char *value, size_t value_size)
{
	struct header_scan *h = cls;
	(void)kind;
	if (!value) {
		value = "";
		value_size = 0;
	}
	if (strlen(key) != key_size || strlen(value) != value_size)
		h->bad = true;
	if (h->out) {
		memcpy(h->at, key, key_size + 1);
		memcpy(h->at + key_size + 1, value, value_size + 1);
		h->out[h->n] = (struct http_header){h->at, h->at + key_size + 1};
		h->at += key_size + value_size + 2;
	}
	h->n++;
	h->bytes += key_size + value_size + 2;
	return MHD_YES;
}

/* Fill |q->r| from the connection: copies of everything, so nothing depends
 * on how long libmicrohttpd keeps its buffers.  Returns 0 or -ENOMEM. */
static int build_request(struct req *q, struct MHD_Connection *connection, const char *method, const char *version)
{
	struct header_scan h = {0};
	MHD_get_connection_values_n(connection, MHD_HEADER_KIND, scan_header, &h);
	size_t mlen = strlen(method), vlen = strlen(version), ulen = strlen(q->raw_uri);
	size_t total = h.bytes + mlen + vlen + ulen + 4; /* bounded by the connection's memory limit */
	q->arena = malloc(total);
	q->headers = calloc(h.n ? h.n : 1, sizeof(*q->headers));
	if (!q->arena || !q->headers)
		return -ENOMEM;
	char *a = q->arena;
	memcpy(a, method, mlen + 1);
	q->r.method = a;
	a += mlen + 1;
	memcpy(a, version, vlen + 1);
	q->r.version = a;
	a += vlen + 1;
	memcpy(a, q->raw_uri, ulen + 1);
	char *qm = strchr(a, '?');
	q->r.raw_path = a;
	q->r.query = qm ? qm + 1 : a + ulen;
	if (qm)
		*qm = 0;
	a += ulen + 1;
	size_t n_expected = h.n;
	h = (struct header_scan){.out = q->headers, .at = a};
	MHD_get_connection_values_n(connection, MHD_HEADER_KIND, scan_header, &h);
	if (h.n != n_expected)
		return -ENOMEM; /* cannot happen: the headers are fixed by now */
	q->r.headers = q->headers;
	q->r.n_headers = h.n;
	q->r.peer = q->conn ? q->conn->peer : "unknown";
	int r = h.bad ? -EINVAL : http_path_decode(q->r.raw_path, &q->path);
	if (r == -ENOMEM)
		return r;
	q->bad_path = r < 0;
	q->r.path = q->bad_path ? q->r.raw_path : q->path;
	return 0;
}

/* Hand |resp| to libmicrohttpd (which frees the body) and clean it up. */
static enum MHD_Result queue(struct http_server *s, struct req *q, struct MHD_Connection *connection,
			     struct http_response *resp, bool close)
{
	pthread_mutex_lock(&s->lock);
	close |= s->stopping;
	if (q->conn && q->conn->fd >= 0)
		conn_wait_locked(s, q->conn); /* the client must now take the response */
	pthread_mutex_unlock(&s->lock);

	unsigned status = resp->status;
	if (status < 200 || status > 599) {
		log_err("%s: %s %s: the handler answered status %u; sending 500", s->cfg.name, q->r.method,
			q->r.raw_path, status);
		status = 500;
	}
	struct MHD_Response *mr =
		resp->body_len ? MHD_create_response_from_buffer(resp->body_len, resp->body, MHD_RESPMEM_MUST_FREE)
			       : MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
	if (!mr) {
		log_err("%s: out of memory for a response to %s %s; closing the connection from %s", s->cfg.name,
			q->r.method, q->r.raw_path, q->r.peer);
		response_cleanup(resp);
		return MHD_NO;
	}
	if (resp->body_len)
		resp->body = NULL; /* libmicrohttpd frees it */
	for (size_t i = 0; i < resp->n_headers; i++)
		if (MHD_add_response_header(mr, resp->headers[i].name, resp->headers[i].value) == MHD_NO)
			log_warn("%s: dropped response header %s: libmicrohttpd refused it", s->cfg.name,
				 resp->headers[i].name);
	if (close)
		MHD_add_response_header(mr, MHD_HTTP_HEADER_CONNECTION, "close");
	enum MHD_Result ret = MHD_queue_response(connection, status, mr);
	MHD_destroy_response(mr);
	response_cleanup(resp);
	return ret;
}

/* Answer |q| with an error of the server's own, then close the connection
 * unless |status| is 500 (the request itself was fine). */
static enum MHD_Result answer_error(struct http_server *s, struct req *q, struct MHD_Connection *connection,
				    unsigned status, const char *reason, size_t limit)
{
	struct http_response resp = {.status = status};
	if (s->cfg.ops->error) {
		s->cfg.ops->error(s->cfg.arg, &q->r, status, reason, limit, &resp);
	} else if (http_response_add_header(&resp, "Content-Type", "text/plain; charset=utf-8") < 0 ||
		   http_response_set_body(&resp, reason, strlen(reason)) < 0) {
		response_cleanup(&resp);
		return MHD_NO;
	}
	/* At the connection limit or stopping: the client may come back (and
	 * a peer of ours tells this load shedding from a failure by it). */
	if (status == 503 && http_response_add_header(&resp, "Retry-After", "1") < 0) {
		response_cleanup(&resp);
		return MHD_NO;
	}
	return queue(s, q, connection, &resp, status != 500);
}

static enum MHD_Result first_call(struct http_server *s, struct req *q, struct MHD_Connection *connection,
				  const char *method, const char *version)
{
	pthread_mutex_lock(&s->lock);
	s->requests++;
	s->in_flight++;
	q->counted = true;
	bool stopping = s->stopping;
	pthread_mutex_unlock(&s->lock);
	if (build_request(q, connection, method, version) < 0) {
		log_err("%s: out of memory for a request from %s; closing the connection", s->cfg.name,
			q->conn ? q->conn->peer : "unknown");
		return MHD_NO;
	}
	char reason[256];
	if (!q->conn || q->conn->over_cap) {
		pthread_mutex_lock(&s->lock);
		s->rejected_busy++;
		pthread_mutex_unlock(&s->lock);
		snprintf(reason, sizeof(reason), "The server is at its limit of %u connections; retry later.",
			 s->cfg.max_connections);
		return answer_error(s, q, connection, 503, reason, 0);
	}
	if (stopping)
		return answer_error(s, q, connection, 503, "The server is shutting down.", 0);
	if (q->bad_path)
		return answer_error(s, q, connection, 400,
				    "The request path or a header is malformed (a bad percent escape or a NUL byte).", 0);
	q->limit = s->cfg.ops->body_limit ? s->cfg.ops->body_limit(s->cfg.arg, &q->r) : s->cfg.max_body;
	const char *cl = http_request_header(&q->r, "Content-Length");
	if (cl) {
		/* libmicrohttpd has checked it is a number. */
		unsigned long long len = strtoull(cl, NULL, 10);
		if (len > q->limit) {
			q->r.body_total = len;
			pthread_mutex_lock(&s->lock);
			s->too_large++;
			pthread_mutex_unlock(&s->lock);
			snprintf(reason, sizeof(reason), "Request must be smaller than %zu bytes; this one has %llu.",
				 q->limit + 1, len);
			return answer_error(s, q, connection, 413, reason, q->limit);
		}
		if (len && !(q->body = malloc((size_t)len + 1)))
			return MHD_NO;
		q->body_cap = len ? (size_t)len + 1 : 0;
	}
	return MHD_YES;
}

/* Take |<data, n>| of the body. */
static void take_body(struct http_server *s, struct req *q, const char *data, size_t n)
{
	if (!ck_add_u64(q->body_total, n, &q->body_total))
		q->body_total = UINT64_MAX;
	if (q->over_limit)
		return;
	size_t need;
	if (!ck_add_size(q->body_len, n, &need) || need > q->limit) {
		q->over_limit = true;
		free(q->body);
		q->body = NULL;
		q->body_len = q->body_cap = 0;
		pthread_mutex_lock(&s->lock);
		s->too_large++;
		pthread_mutex_unlock(&s->lock);
		return;
	}
	if (need + 1 > q->body_cap) {
		size_t cap = q->body_cap ? q->body_cap : 64u << 10;
		while (cap < need + 1)
			cap = cap > SIZE_MAX / 2 ? need + 1 : cap * 2;
		if (cap > q->limit + 1)
			cap = q->limit + 1;
		uint8_t *nb = realloc(q->body, cap);
		if (!nb) {
			/* Drop it as too large: the request cannot be served. */
			log_err("%s: out of memory for a %zu byte body from %s", s->cfg.name, need, q->r.peer);
			q->over_limit = true;
			free(q->body);
			q->body = NULL;
			q->body_len = q->body_cap = 0;
			return;
		}
		q->body = nb;
		q->body_cap = cap;
	}
	memcpy(q->body + q->body_len, data, n);
	q->body_len = need;
}

static enum MHD_Result final_call(struct http_server *s, struct req *q, struct MHD_Connection *connection)
{
	if (q->over_limit) {
		q->r.body_total = q->body_total;
		char reason[128];
		snprintf(reason, sizeof(reason), "Request must be smaller than %zu bytes.", q->limit + 1);
		return answer_error(s, q, connection, 413, reason, q->limit);
	}
	if (q->body)
		q->body[q->body_len] = 0;
	q->r.body = q->body ? q->body : (const uint8_t *)"";
	q->r.body_len = q->body_len;
	q->r.body_total = q->body_len;

	pthread_mutex_lock(&s->lock);
	if (q->conn)
		q->conn->waiting = false; /* handler time is not the client's */
	pthread_mutex_unlock(&s->lock);

	struct http_response resp = {.status = 200};
	int r = s->cfg.ops->handle(s->cfg.arg, &q->r, &resp);
	if (r < 0) {
		response_cleanup(&resp);
		char reason[256];
		snprintf(reason, sizeof(reason), "The server failed to handle the request: %s.", strerror(-r));
		log_err("%s: %s %s from %s: %s", s->cfg.name, q->r.method, q->r.raw_path, q->r.peer, strerror(-r));
		return answer_error(s, q, connection, 500, reason, 0);
	}
	return queue(s, q, connection, &resp, false);
}

static enum MHD_Result access_handler(void *cls, struct MHD_Connection *connection, const char *url,
				      const char *method, const char *version, const char *upload_data,
				      size_t *upload_data_size, void **con_cls)
{
	struct http_server *s = cls;
	struct req *q = *con_cls;
	(void)url; /* unescaped by libmicrohttpd; we decode q->raw_uri ourselves */
	if (!q)
		return MHD_NO; /* uri_log ran out of memory: drop the connection */
	if (!q->started) {
		q->started = true;
		return first_call(s, q, connection, method, version);
	}
	if (*upload_data_size) {
		take_body(s, q, upload_data, *upload_data_size);
		*upload_data_size = 0;
		return MHD_YES;
	}
	return final_call(s, q, connection);
}

/* ---- starting and stopping --------------------------------------------------------- */

static void server_free(struct http_server *s)
{
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->idle);
	pthread_cond_destroy(&s->wd_wake);
	free((char *)s->cfg.name);
	free(s);
}

static void stop_watchdog(struct http_server *s)
{
	if (!s->wd_running)
		return;
	pthread_mutex_lock(&s->lock);
	s->wd_quit = true;
	pthread_cond_signal(&s->wd_wake);
	pthread_mutex_unlock(&s->lock);
	pthread_join(s->watchdog, NULL);
	s->wd_running = false;
}

/* Describe the socket |fd| listens on into |s|.  Returns 0 or -EINVAL. */
static int describe_listener(struct http_server *s, int fd, int *out_family)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		return -errno;
	*out_family = ss.ss_family;
	if (ss.ss_family == AF_UNIX) {
		const struct sockaddr_un *un = (const struct sockaddr_un *)&ss;
		snprintf(s->address, sizeof(s->address), "unix:%s", un->sun_path);
		s->port = 0;
		return 0;
	}
	format_peer((const struct sockaddr *)&ss, s->address, sizeof(s->address));
	if (ss.ss_family == AF_INET)
		s->port = ntohs(((const struct sockaddr_in *)&ss)->sin_port);
	else if (ss.ss_family == AF_INET6)
		s->port = ntohs(((const struct sockaddr_in6 *)&ss)->sin6_port);
	else
		return -EINVAL;
	return 0;
}

int http_server_start_fd(const struct http_server_config *cfg, int fd, struct http_server **out)
{
	const char *name = cfg->name ? cfg->name : "http";
	int type = 0, listening = 0, r;
	socklen_t len = sizeof(type);
	if (!cfg->ops || !cfg->ops->handle) {
		log_err("%s: no request handler given", name);
		close(fd);
		return -EINVAL;
	}
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_STREAM ||
	    getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &(socklen_t){sizeof(listening)}) < 0 || !listening) {
		log_err("%s: descriptor %d is not a listening stream socket (bind and listen on it first)", name, fd);
		close(fd);
		return -EINVAL;
	}
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
		r = -errno;
		log_err("%s: cannot make the listening socket non-blocking: %s", name, strerror(-r));
		close(fd);
		return r;
	}

	struct http_server *s = calloc(1, sizeof(*s));
	if (!s) {
		close(fd);
		return -ENOMEM;
	}
	s->cfg = *cfg;
	s->cfg.name = strdup(name);
	if (!s->cfg.max_connections)
		s->cfg.max_connections = HTTP_SERVER_DEFAULT_CONNECTIONS;
	if (!s->cfg.max_header_bytes)
		s->cfg.max_header_bytes = HTTP_SERVER_DEFAULT_HEADER_BYTES;
	if (!s->cfg.max_body)
		s->cfg.max_body = HTTP_SERVER_DEFAULT_MAX_BODY;
	if (!s->cfg.io_timeout_ms)
		s->cfg.io_timeout_ms = HTTP_SERVER_DEFAULT_IO_TIMEOUT_MS;
	s->timeout = s->cfg.io_timeout_ms / 1000.0;
	s->wd_next = now_seconds() + 3600;
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->idle, NULL);
	pthread_cond_init(&s->wd_wake, &ca);
	pthread_condattr_destroy(&ca);
	int family = AF_INET;
	if (!s->cfg.name || (r = describe_listener(s, fd, &family)) < 0) {
		r = s->cfg.name ? r : -ENOMEM;
		close(fd);
		server_free(s);
		return r;
	}
	if ((r = -pthread_create(&s->watchdog, NULL, watchdog_main, s)) < 0) {
		log_err("%s: cannot start the watchdog thread: %s", name, strerror(-r));
		close(fd);
		server_free(s);
		return r;
	}
	s->wd_running = true;

	size_t pool;
	if (!ck_add_size(s->cfg.max_header_bytes, POOL_EXTRA, &pool))
		pool = SIZE_MAX;
	unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
			 MHD_USE_ITC | MHD_USE_ERROR_LOG;
	if (family == AF_INET6)
		flags |= MHD_USE_IPv6;
	/* On failure libmicrohttpd closes the listening socket itself. */
	s->mhd = MHD_start_daemon(flags, 0, NULL, NULL, access_handler, s, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, s,
				  MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd, MHD_OPTION_CONNECTION_LIMIT,
				  (unsigned)(s->cfg.max_connections + HTTP_SERVER_OVERFLOW_SLOTS),
				  MHD_OPTION_CONNECTION_MEMORY_LIMIT, pool, MHD_OPTION_CONNECTION_TIMEOUT, 0u,
				  MHD_OPTION_NOTIFY_CONNECTION, notify_connection, s, MHD_OPTION_NOTIFY_COMPLETED,
				  notify_completed, s, MHD_OPTION_URI_LOG_CALLBACK, uri_log, s,
				  MHD_OPTION_STRICT_FOR_CLIENT, 1, MHD_OPTION_END);
	if (!s->mhd) {
		log_err("%s: libmicrohttpd would not start on %s (see its message above; too many threads or open "
			"files?)",
			name, s->address);
		stop_watchdog(s);
		server_free(s);
		return -EIO;
	}
	log_info("%s: listening on %s", name, s->address);
	*out = s;
	return 0;
}

/* Split "host:port", "[v6]:port" into |host| and |port|. */
static int split_hostport(const char *hostport, char *host, size_t host_len, char *port, size_t port_len)
{
	const char *colon;
	const char *h = hostport;
	size_t hl;
	if (*h == '[') {
		const char *close = strchr(h, ']');
		if (!close || close[1] != ':')
			return -EINVAL;
		h++;
		hl = (size_t)(close - h);
		colon = close + 1;
	} else {
		colon = strrchr(h, ':');
		if (!colon || memchr(h, ':', (size_t)(colon - h)))
			return -EINVAL;
		hl = (size_t)(colon - h);
	}
	const char *p = colon + 1;
	size_t pl = strlen(p);
	if (hl == 0 || hl >= host_len || pl == 0 || pl >= port_len || strspn(p, "0123456789") != pl ||
	    strtoul(p, NULL, 10) > 65535)
		return -EINVAL;
	memcpy(host, h, hl);
	host[hl] = 0;
	memcpy(port, p, pl + 1);
	return 0;
}

int http_server_start(const struct http_server_config *cfg, const char *hostport, struct http_server **out)
{
	const char *name = cfg->name ? cfg->name : "http";
	char host[256], port[8];
	if (split_hostport(hostport, host, sizeof(host), port, sizeof(port)) < 0) {
		log_err("%s: listen address \"%s\" is not HOST:PORT (for example 127.0.0.1:9000 or [::1]:9000)", name,
			hostport);
		return -EINVAL;
	}
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				 .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
	struct addrinfo *res = NULL;
	int g = getaddrinfo(host, port, &hints, &res);
	if (g != 0) {
		log_err("%s: cannot resolve listen address %s: %s", name, hostport, gai_strerror(g));
		return g == EAI_MEMORY ? -ENOMEM : -EINVAL;
	}
	int r = -EADDRNOTAVAIL, fd = -1;
	for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
		if (fd < 0) {
			r = -errno;
			continue;
		}
		int one = 1;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (ai->ai_family == AF_INET6)
			setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, SOMAXCONN) < 0) {
			r = -errno;
			close(fd);
			fd = -1;
		}
	}
	freeaddrinfo(res);
	if (fd < 0) {
		log_err("%s: cannot listen on %s: %s%s", name, hostport, strerror(-r),
			r == -EADDRINUSE ? " (another server has that port: stop it or choose another)"
			: r == -EACCES	 ? " (ports below 1024 need privileges: choose another)"
					 : "");
		return r;
	}
	return http_server_start_fd(cfg, fd, out);
}

const char *http_server_address(const struct http_server *s) { return s->address; }

uint16_t http_server_port(const struct http_server *s) { return s->port; }

void http_server_get_stats(struct http_server *s, struct http_server_stats *out)
{
	pthread_mutex_lock(&s->lock);
	*out = (struct http_server_stats){
		.connections = s->n_conns,
		.in_flight = s->in_flight,
		.requests = s->requests,
		.rejected_busy = s->rejected_busy,
		.too_large = s->too_large,
		.timed_out = s->timed_out,
	};
	pthread_mutex_unlock(&s->lock);
}

void http_server_stop(struct http_server *s)
{
	pthread_mutex_lock(&s->lock);
	bool already = s->stopping;
	s->stopping = true;
	pthread_mutex_unlock(&s->lock);
	if (already)
		return;
	/* libmicrohttpd's polling thread may still hold the listening socket
	 * in poll(), which keeps it open past close(); shutdown() stops it
	 * taking connections at once. */
	MHD_socket lfd = MHD_quiesce_daemon(s->mhd);
	if (lfd != MHD_INVALID_SOCKET) {
		shutdown(lfd, SHUT_RDWR);
		close(lfd);
	}
	if (s->cfg.ops->stopping)
		s->cfg.ops->stopping(s->cfg.arg);
	/* Requests already received are answered; the watchdog keeps the
	 * clients' part of that bounded. */
	pthread_mutex_lock(&s->lock);
	while (s->in_flight)
		pthread_cond_wait(&s->idle, &s->lock);
	pthread_mutex_unlock(&s->lock);
	MHD_stop_daemon(s->mhd);
	s->mhd = NULL;
	stop_watchdog(s);
	s->stopped = true;
	log_info("%s: stopped serving %s", s->cfg.name, s->address);
}

void http_server_free(struct http_server *s)
{
	if (!s)
		return;
	http_server_stop(s);
	server_free(s);
}
