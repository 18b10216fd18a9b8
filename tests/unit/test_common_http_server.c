/* The HTTP server (common/http_server.c) driven by libcurl and raw sockets
 * on 127.0.0.1: routing, the raw path, case-insensitive headers, large
 * bodies, body limits (413 without reading the body, the refused size, an
 * error callback that answers such a request itself), keep-alive, twenty
 * handlers blocked at once, a slowloris client cut off while others are
 * served, the connection cap, oversized headers, and a shutdown that waits
 * for a blocked handler.  Nothing here measures time: every wait has a
 * generous bound and only its outcome is checked. */
#include "common/http_server.h"
#include "common/common.h"
#include "tests/check.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define WAIT_BOUND_S 60.0

/* ---- the application under test ---------------------------------------------------------- */

struct app {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int blocked;	     /* handlers inside /block now */
	bool release;	     /* let them go */
	int handler_done;    /* /block handlers that returned */
	bool stopping_called;
	bool stop_returned;  /* set by the test once http_server_stop returned */
	bool done_before_stop_returned;
	struct http_server *srv; /* for handlers that report stats */
};

static struct app app = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static int handle(void *arg, const struct http_request *req, struct http_response *resp)
{
	struct app *a = arg;
	if (!strncmp(req->path, "/echo", 5)) {
		uint8_t d[SHA256_LEN];
		char sha[SHA256_HEX_LEN + 1];
		sha256_buf(req->body, req->body_len, d);
		hex_encode(d, sizeof(d), sha);
		int dups = 0;
		for (size_t i = 0; i < req->n_headers; i++)
			dups += !strcasecmp(req->headers[i].name, "x-dup");
		const char *t1 = http_request_header(req, "X-TEST"), *t2 = http_request_header(req, "x-test");
		unsigned conns = 0;
		if (a->srv) {
			struct http_server_stats st;
			http_server_get_stats(a->srv, &st);
			conns = st.connections;
		}
		char *text = xasprintf("method=%s\nraw_path=%s\npath=%s\nquery=%s\nx-test=%s\nsame=%d\ndups=%d\npeer=%s\n"
				       "body_len=%zu\ntotal=%llu\nsha=%s\nnul=%d\nconns=%u\n",
				       req->method, req->raw_path, req->path, req->query, t1 ? t1 : "(none)", t1 == t2,
				       dups, req->peer, req->body_len, (unsigned long long)req->body_total, sha,
				       req->body[req->body_len] == 0, conns);
		if (!text)
			return -ENOMEM;
		http_response_take_body(resp, text, strlen(text));
		return http_response_add_header(resp, "X-Echo-Method", req->method);
	}
	if (!strcmp(req->path, "/block")) {
		pthread_mutex_lock(&a->lock);
		a->blocked++;
		pthread_cond_broadcast(&a->cond);
		while (!a->release)
			pthread_cond_wait(&a->cond, &a->lock);
		a->blocked--;
		a->handler_done++;
		if (!a->stop_returned)
			a->done_before_stop_returned = true;
		pthread_mutex_unlock(&a->lock);
		return http_response_set_body(resp, "released", 8);
	}
	if (!strcmp(req->path, "/fail"))
		return -EIO;
	if (!strcmp(req->path, "/teapot")) {
		resp->status = 418;
		return http_response_add_header(resp, "X-Custom", "short and stout");
	}
	if (!strcmp(req->path, "/badstatus")) {
		resp->status = 99;
		return 0;
	}
	resp->status = 404;
	return http_response_set_body(resp, "no route", 8);
}

/* Set by callbacks in server threads; CHECKed by the main thread. */
static _Atomic int limit_saw_body;

static size_t body_limit(void *arg, const struct http_request *req)
{
	(void)arg;
	if (req->body)
		limit_saw_body++;
	return !strncmp(req->path, "/small", 6) ? 1024 : 8u << 20;
}

static void error_response(void *arg, const struct http_request *req, unsigned status, const char *reason, size_t limit,
			   struct http_response *resp)
{
	(void)arg;
	(void)limit;
	char *body = xasprintf("{\"status\":%u,\"message\":\"%s\",\"total\":%llu}", status, reason,
			       (unsigned long long)req->body_total);
	if (body)
		http_response_take_body(resp, body, strlen(body));
	if (status == 413)
		http_response_add_header(resp, "x-amzn-ErrorType", "RequestTooLargeException");
	/* An application may answer a refused request itself. */
	if (status == 413 && !strcmp(req->path, "/small/accept"))
		resp->status = 202;
}

static void stopping(void *arg)
{
	struct app *a = arg;
	pthread_mutex_lock(&a->lock);
	a->stopping_called = true;
	pthread_cond_broadcast(&a->cond);
	pthread_mutex_unlock(&a->lock);
}

static const struct http_server_ops ops = {
	.handle = handle,
	.body_limit = body_limit,
	.error = error_response,
	.stopping = stopping,
};

static struct http_server *start(unsigned max_conns, unsigned timeout_ms, size_t max_header)
{
	struct http_server_config cfg = {.ops = &ops, .arg = &app, .max_connections = max_conns,
					 .io_timeout_ms = timeout_ms, .max_header_bytes = max_header, .name = "test"};
	struct http_server *s = NULL;
	int r = http_server_start(&cfg, "127.0.0.1:0", &s);
	CHECK(r == 0 && s);
	if (s) {
		CHECK(http_server_port(s) != 0);
		char want[64];
		snprintf(want, sizeof(want), "127.0.0.1:%u", http_server_port(s));
		CHECK(!strcmp(http_server_address(s), want));
	}
	app.srv = s;
	return s;
}

/* Wait (at most WAIT_BOUND_S) until |pred(s)|; false if it never came. */
static bool wait_for(bool (*pred)(struct http_server *, unsigned), struct http_server *s, unsigned n)
{
	double end = now_seconds() + WAIT_BOUND_S;
	while (!pred(s, n)) {
		if (now_seconds() > end)
			return false;
		usleep(1000);
	}
	return true;
}

static bool connections_are(struct http_server *s, unsigned n)
{
	struct http_server_stats st;
	http_server_get_stats(s, &st);
	return st.connections == n;
}

/* ---- clients -------------------------------------------------------------------------- */

struct result {
	long status;
	char body[16384];
	size_t len;
	char headers[4096];
	size_t hlen;
	CURLcode code;
	long connects;
};

/* Append |<p, len>| to |<buf, cap>| (holding |*used|), keeping it a string. */
static size_t append(char *buf, size_t cap, size_t *used, const char *p, size_t len)
{
	size_t room = cap - 1 - *used, take = len < room ? len : room;
	memcpy(buf + *used, p, take);
	*used += take;
	buf[*used] = 0;
	return len;
}

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
	struct result *r = arg;
	return append(r->body, sizeof(r->body), &r->len, p, size * n);
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
	struct result *r = arg;
	return append(r->headers, sizeof(r->headers), &r->hlen, p, size * n);
}

/* One request on |easy| (a fresh handle if NULL) to |path| on |s|. */
static void request(CURL *easy, struct http_server *s, const char *method, const char *path, const void *body,
		    size_t len, struct curl_slist *headers, struct result *out)
{
	CURL *c = easy ? easy : curl_easy_init();
	memset(out, 0, sizeof(*out));
	char url[512];
	snprintf(url, sizeof(url), "http://%s%s", http_server_address(s), path);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_PATH_AS_IS, 1L);
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)WAIT_BOUND_S);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, out);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
	if (body) {
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
	} else {
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, NULL);
		curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
		curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	}
	out->code = curl_easy_perform(c);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
	curl_easy_getinfo(c, CURLINFO_NUM_CONNECTS, &out->connects);
	if (!easy)
		curl_easy_cleanup(c);
}

/* A raw TCP connection to |s|, with a receive bound. */
static int raw_connect(struct http_server *s)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(http_server_port(s))};
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	struct timeval tv = {.tv_sec = (time_t)WAIT_BOUND_S};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Read from |fd| until the peer closes; false if the bound passed first. */
static bool read_to_eof(int fd, char *buf, size_t cap, size_t *out_len)
{
	size_t len = 0;
	for (;;) {
		char tmp[4096];
		ssize_t n = recv(fd, tmp, sizeof(tmp), 0);
		if (n == 0 || (n < 0 && errno == ECONNRESET))
			break;
		if (n < 0)
			return false; /* EAGAIN: the receive bound passed */
		size_t take = (size_t)n < cap - 1 - len ? (size_t)n : cap - 1 - len;
		memcpy(buf + len, tmp, take);
		len += take;
	}
	buf[len] = 0;
	*out_len = len;
	return true;
}

/* ---- tests ---------------------------------------------------------------------------- */

static void test_routing_and_raw_path(struct http_server *s)
{
	struct result r;
	struct curl_slist *h = curl_slist_append(NULL, "X-Test: hello there");
	h = curl_slist_append(h, "x-dup: 1");
	h = curl_slist_append(h, "X-Dup: 2");
	request(NULL, s, "GET", "/echo/a%3Ab/c%20d?x=1&y=%2F&z", NULL, 0, h, &r);
	CHECK(r.code == CURLE_OK && r.status == 200);
	CHECK(strstr(r.body, "method=GET\n") && strstr(r.body, "raw_path=/echo/a%3Ab/c%20d\n"));
	CHECK(strstr(r.body, "\npath=/echo/a:b/c d\n") && strstr(r.body, "\nquery=x=1&y=%2F&z\n"));
	CHECK(strstr(r.body, "\nx-test=hello there\n") && strstr(r.body, "\nsame=1\n") && strstr(r.body, "\ndups=2\n"));
	CHECK(strstr(r.body, "\npeer=127.0.0.1:") && strstr(r.body, "\nbody_len=0\n") && strstr(r.body, "\nnul=1\n"));
	CHECK(strstr(r.headers, "X-Echo-Method: GET\r\n") != NULL);
	curl_slist_free_all(h);

	request(NULL, s, "DELETE", "/echo", NULL, 0, NULL, &r);
	CHECK(r.status == 200 && strstr(r.body, "method=DELETE\n") && strstr(r.body, "\nquery=\n"));
	request(NULL, s, "GET", "/elsewhere", NULL, 0, NULL, &r);
	CHECK(r.status == 404 && !strcmp(r.body, "no route"));
	request(NULL, s, "GET", "/teapot", NULL, 0, NULL, &r);
	CHECK(r.status == 418 && strstr(r.headers, "X-Custom: short and stout\r\n"));
	request(NULL, s, "GET", "/badstatus", NULL, 0, NULL, &r);
	CHECK(r.status == 500);
	request(NULL, s, "GET", "/fail", NULL, 0, NULL, &r);
	CHECK(r.status == 500 && strstr(r.body, "Input/output error"));
	/* Paths that do not decode are the server's 400. */
	request(NULL, s, "GET", "/echo/%zz", NULL, 0, NULL, &r);
	CHECK(r.status == 400 && strstr(r.body, "\"status\":400"));
	request(NULL, s, "GET", "/echo/a%00b", NULL, 0, NULL, &r);
	CHECK(r.status == 400);
	request(NULL, s, "GET", "/echo/ok", NULL, 0, NULL, &r);
	CHECK(r.status == 200);
}

static void test_bodies(struct http_server *s)
{
	size_t n = 5u << 20, cap = 9u << 20;
	uint8_t *big = malloc(cap);
	for (size_t i = 0; i < cap; i++)
		big[i] = (uint8_t)(i * 2654435761u >> 13);
	uint8_t d[SHA256_LEN];
	char sha[SHA256_HEX_LEN + 1], want[128];
	sha256_buf(big, n, d);
	hex_encode(d, sizeof(d), sha);
	snprintf(want, sizeof(want), "\nbody_len=%zu\ntotal=%zu\nsha=%s\n", n, n, sha);
	struct result r;
	request(NULL, s, "POST", "/echo/big", big, n, NULL, &r);
	CHECK(r.code == CURLE_OK && r.status == 200 && strstr(r.body, want));

	/* Over the route's limit: 413 from the error callback. */
	request(NULL, s, "POST", "/small", big, 2048, NULL, &r);
	CHECK(r.status == 413 && strstr(r.headers, "x-amzn-ErrorType: RequestTooLargeException\r\n"));
	CHECK(strstr(r.body, "Request must be smaller than 1025 bytes"));
	request(NULL, s, "POST", "/small", big, 1024, NULL, &r);
	CHECK(r.status == 404);
	/* Over the 8 MiB limit of other routes: curl sends Expect:
	 * 100-continue and gets 413 without sending the body. */
	request(NULL, s, "POST", "/echo/too-big", big, cap, NULL, &r);
	CHECK(r.status == 413 && strstr(r.body, "smaller than 8388609 bytes"));
	free(big);

	struct http_server_stats before, after;
	http_server_get_stats(s, &before);
	/* A gigabyte announced and never sent: the answer comes anyway, and
	 * the server closes the connection instead of reading on. */
	int fd = raw_connect(s);
	CHECK(fd >= 0);
	const char *req = "POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\nonly this much";
	CHECK(send(fd, req, strlen(req), MSG_NOSIGNAL) == (ssize_t)strlen(req));
	char buf[4096];
	size_t len = 0;
	CHECK(read_to_eof(fd, buf, sizeof(buf), &len));
	CHECK(!strncmp(buf, "HTTP/1.1 413 ", 13) && strstr(buf, "RequestTooLargeException"));
	CHECK(strstr(buf, "\"total\":1073741824}"));
	close(fd);
	http_server_get_stats(s, &after);
	CHECK(after.too_large == before.too_large + 1);

	/* The error callback may answer with a status of its own; the body is
	 * still not read, so the connection still closes. */
	fd = raw_connect(s);
	CHECK(fd >= 0);
	req = "POST /small/accept HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n";
	CHECK(send(fd, req, strlen(req), MSG_NOSIGNAL) == (ssize_t)strlen(req));
	CHECK(read_to_eof(fd, buf, sizeof(buf), &len));
	CHECK(!strncmp(buf, "HTTP/1.1 202 ", 13) && strcasestr(buf, "\r\nConnection: close\r\n"));
	CHECK(strstr(buf, "\"status\":413,") && strstr(buf, "\"total\":5000}"));
	close(fd);

	/* A chunked body has no length up front: it is dropped once past the
	 * limit and then answered 413. */
	fd = raw_connect(s);
	CHECK(fd >= 0);
	const char *head = "POST /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
	CHECK(send(fd, head, strlen(head), MSG_NOSIGNAL) == (ssize_t)strlen(head));
	char chunk[600];
	memset(chunk, 'z', sizeof(chunk));
	for (int i = 0; i < 4; i++) {
		char hdr[16];
		snprintf(hdr, sizeof(hdr), "%zx\r\n", sizeof(chunk));
		CHECK(send(fd, hdr, strlen(hdr), MSG_NOSIGNAL) > 0);
		CHECK(send(fd, chunk, sizeof(chunk), MSG_NOSIGNAL) == (ssize_t)sizeof(chunk));
		CHECK(send(fd, "\r\n", 2, MSG_NOSIGNAL) == 2);
	}
	CHECK(send(fd, "0\r\n\r\n", 5, MSG_NOSIGNAL) == 5);
	CHECK(read_to_eof(fd, buf, sizeof(buf), &len));
	CHECK(!strncmp(buf, "HTTP/1.1 413 ", 13));
	CHECK(strstr(buf, "\"total\":2400}")); /* every byte that came, though only 1024 were kept */
	close(fd);

	/* A chunked body within the limit arrives whole. */
	fd = raw_connect(s);
	const char *ok = "POST /echo/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
			 "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
	CHECK(send(fd, ok, strlen(ok), MSG_NOSIGNAL) == (ssize_t)strlen(ok));
	CHECK(read_to_eof(fd, buf, sizeof(buf), &len));
	sha256_buf("hello world", 11, d);
	hex_encode(d, sizeof(d), sha);
	snprintf(want, sizeof(want), "\nbody_len=11\ntotal=11\nsha=%s\n", sha);
	CHECK(!strncmp(buf, "HTTP/1.1 200 ", 13) && strstr(buf, want));
	close(fd);
}

static void test_keep_alive(struct http_server *s)
{
	CURL *c = curl_easy_init();
	struct result a, b;
	request(c, s, "GET", "/echo/1", NULL, 0, NULL, &a);
	request(c, s, "POST", "/echo/2", "body", 4, NULL, &b);
	CHECK(a.status == 200 && b.status == 200);
	CHECK(a.connects == 1 && b.connects == 0);
	const char *pa = strstr(a.body, "\npeer="), *pb = strstr(b.body, "\npeer=");
	CHECK(pa && pb && strcspn(pa + 1, "\n") == strcspn(pb + 1, "\n") && !strncmp(pa, pb, strcspn(pa + 1, "\n")));
	/* A handler failure does not end the connection. */
	request(c, s, "GET", "/fail", NULL, 0, NULL, &a);
	request(c, s, "GET", "/echo/3", NULL, 0, NULL, &b);
	CHECK(a.status == 500 && b.status == 200 && b.connects == 0);
	curl_easy_cleanup(c);
}

struct client {
	pthread_t t;
	struct http_server *s;
	const char *path;
	struct result r;
};

static void *client_main(void *arg)
{
	struct client *c = arg;
	request(NULL, c->s, "GET", c->path, NULL, 0, NULL, &c->r);
	return NULL;
}

/* Wait until |n| handlers are blocked (or the bound passes). */
static bool wait_blocked(int n)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += (time_t)WAIT_BOUND_S;
	pthread_mutex_lock(&app.lock);
	int r = 0;
	while (app.blocked < n && r == 0)
		r = pthread_cond_timedwait(&app.cond, &app.lock, &ts);
	bool ok = app.blocked >= n;
	pthread_mutex_unlock(&app.lock);
	return ok;
}

static void release_all(bool release)
{
	pthread_mutex_lock(&app.lock);
	app.release = release;
	pthread_cond_broadcast(&app.cond);
	pthread_mutex_unlock(&app.lock);
}

static void test_concurrent_blocking(struct http_server *s)
{
	enum { N = 20 };
	static struct client c[N];
	release_all(false);
	for (int i = 0; i < N; i++) {
		c[i].s = s;
		c[i].path = "/block";
		pthread_create(&c[i].t, NULL, client_main, &c[i]);
	}
	/* All twenty are inside the handler at the same moment... */
	CHECK(wait_blocked(N));
	struct http_server_stats st;
	http_server_get_stats(s, &st);
	CHECK(st.in_flight >= N);
	/* ...and the server still answers others meanwhile. */
	struct result r;
	request(NULL, s, "GET", "/echo/meanwhile", NULL, 0, NULL, &r);
	CHECK(r.status == 200);
	release_all(true);
	for (int i = 0; i < N; i++) {
		pthread_join(c[i].t, NULL);
		CHECK(c[i].r.status == 200 && !strcmp(c[i].r.body, "released"));
	}
	release_all(false);
}

/* A client that sends its request one byte at a time, forever, until the
 * server hangs up. */
struct slow {
	pthread_t t;
	struct http_server *s;
	bool cut;	    /* the server closed the connection */
	_Atomic bool open;  /* connected and still trickling */
};

static void *slow_main(void *arg)
{
	struct slow *sl = arg;
	int fd = raw_connect(sl->s);
	if (fd < 0)
		return NULL;
	sl->open = true;
	const char *start = "GET /echo/slow HTTP/1.1\r\nHost: x\r\nX-Slow: ";
	if (send(fd, start, strlen(start), MSG_NOSIGNAL) < 0)
		goto out;
	double end = now_seconds() + WAIT_BOUND_S;
	while (now_seconds() < end) {
		if (send(fd, "a", 1, MSG_NOSIGNAL) < 0) {
			sl->cut = true;
			break;
		}
		char b;
		ssize_t n = recv(fd, &b, 1, MSG_DONTWAIT);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
			sl->cut = true;
			break;
		}
		usleep(20000);
	}
out:
	sl->open = false;
	close(fd);
	return NULL;
}

static void test_slowloris(void)
{
	struct http_server *s = start(0, 3000, 0);
	if (!s)
		return;
	struct slow sl = {.s = s};
	pthread_create(&sl.t, NULL, slow_main, &sl);
	CHECK(wait_for(connections_are, s, 1));
	/* Others are served while it trickles. */
	int served_while_open = 0;
	for (int i = 0; i < 5; i++) {
		struct result r;
		bool was_open = sl.open;
		request(NULL, s, "GET", "/echo/fast", NULL, 0, NULL, &r);
		CHECK(r.status == 200);
		served_while_open += was_open && sl.open && strstr(r.body, "\nconns=2\n");
	}
	CHECK(served_while_open > 0);
	/* ...and it is cut off by the timeout, not by its own bound. */
	pthread_join(sl.t, NULL);
	CHECK(sl.cut);
	struct http_server_stats st;
	http_server_get_stats(s, &st);
	CHECK(st.timed_out >= 1);
	CHECK(wait_for(connections_are, s, 0));
	app.srv = NULL;
	http_server_free(s);
}

static void test_connection_cap(void)
{
	struct http_server *s = start(2, 0, 0);
	if (!s)
		return;
	int a = raw_connect(s), b = raw_connect(s);
	CHECK(a >= 0 && b >= 0);
	CHECK(wait_for(connections_are, s, 2));
	struct result r;
	request(NULL, s, "GET", "/echo/third", NULL, 0, NULL, &r);
	CHECK(r.status == 503 && strstr(r.body, "limit of 2 connections") && strstr(r.headers, "Connection: close"));
	CHECK(strstr(r.headers, "Retry-After: 1"));
	struct http_server_stats st;
	http_server_get_stats(s, &st);
	CHECK(st.rejected_busy == 1);
	close(a);
	CHECK(wait_for(connections_are, s, 1));
	request(NULL, s, "GET", "/echo/third", NULL, 0, NULL, &r);
	CHECK(r.status == 200);
	close(b);
	app.srv = NULL;
	http_server_free(s);
}

static void test_header_limit(void)
{
	struct http_server *s = start(0, 0, 8192);
	if (!s)
		return;
	char *big = malloc(20000);
	memcpy(big, "X-Big: ", 7);
	memset(big + 7, 'h', 16000);
	big[16007] = 0;
	struct curl_slist *h = curl_slist_append(NULL, big);
	struct result r;
	request(NULL, s, "GET", "/echo/big-header", NULL, 0, h, &r);
	if (r.status != 431)
		fprintf(stderr, "big header: status %ld, curl %d, %s\n", r.status, (int)r.code, r.body);
	CHECK(r.status == 431);
	curl_slist_free_all(h);
	memset(big + 7, 'h', 4000);
	big[4007] = 0;
	h = curl_slist_append(NULL, big);
	request(NULL, s, "GET", "/echo/fits", NULL, 0, h, &r);
	CHECK(r.status == 200);
	curl_slist_free_all(h);
	free(big);
	app.srv = NULL;
	http_server_free(s);
}

static void *stop_main(void *arg)
{
	http_server_stop(arg);
	pthread_mutex_lock(&app.lock);
	app.stop_returned = true;
	pthread_mutex_unlock(&app.lock);
	return NULL;
}

static void test_shutdown_waits(void)
{
	struct http_server *s = start(0, 0, 0);
	if (!s)
		return;
	release_all(false);
	app.stopping_called = app.stop_returned = app.done_before_stop_returned = false;
	app.handler_done = 0;
	/* An idle keep-alive connection, which stop simply closes. */
	CURL *idle = curl_easy_init();
	struct result r;
	request(idle, s, "GET", "/echo/idle", NULL, 0, NULL, &r);
	CHECK(r.status == 200);

	struct client c = {.s = s, .path = "/block"};
	pthread_create(&c.t, NULL, client_main, &c);
	CHECK(wait_blocked(1));
	pthread_t stopper;
	pthread_create(&stopper, NULL, stop_main, s);
	/* stop told the application, and cannot return while the handler is
	 * blocked (only this thread releases it). */
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += (time_t)WAIT_BOUND_S;
	pthread_mutex_lock(&app.lock);
	while (!app.stopping_called && pthread_cond_timedwait(&app.cond, &app.lock, &ts) == 0)
		;
	CHECK(app.stopping_called && !app.stop_returned && app.handler_done == 0);
	pthread_mutex_unlock(&app.lock);
	/* No new connections once stopping. */
	CHECK(raw_connect(s) < 0);

	release_all(true);
	pthread_join(stopper, NULL);
	pthread_join(c.t, NULL);
	CHECK(app.stop_returned && app.done_before_stop_returned && app.handler_done == 1);
	/* The blocked request got its whole answer, and was told to close. */
	CHECK(c.r.code == CURLE_OK && c.r.status == 200 && !strcmp(c.r.body, "released"));
	CHECK(strstr(c.r.headers, "Connection: close") != NULL);
	http_server_stop(s); /* again: nothing to do */
	curl_easy_cleanup(idle);
	release_all(false);
	app.srv = NULL;
	http_server_free(s);
}

static void test_start_variants(void)
{
	struct http_server_config cfg = {.ops = &ops, .arg = &app};
	struct http_server *s = NULL;
	CHECK(http_server_start(&cfg, "127.0.0.1", &s) == -EINVAL);
	CHECK(http_server_start(&cfg, "127.0.0.1:99999", &s) == -EINVAL);
	CHECK(http_server_start(&cfg, ":80", &s) == -EINVAL);
	CHECK(http_server_start(&cfg, "::1:80", &s) == -EINVAL);
	CHECK(http_server_start(&cfg, "[::1]80", &s) == -EINVAL);
	struct http_server_config no_handler = {.ops = &(struct http_server_ops){0}};
	CHECK(http_server_start(&no_handler, "127.0.0.1:0", &s) == -EINVAL);

	CHECK(http_server_start(&cfg, "127.0.0.1:0", &s) == 0);
	if (s) {
		char taken[64];
		snprintf(taken, sizeof(taken), "127.0.0.1:%u", http_server_port(s));
		struct http_server *t = NULL;
		CHECK(http_server_start(&cfg, taken, &t) == -EADDRINUSE && !t);
		http_server_free(s);
	}

	/* An already-listening descriptor, as from another namespace. */
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET};
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	CHECK(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 && listen(fd, 16) == 0);
	s = NULL;
	CHECK(http_server_start_fd(&cfg, fd, &s) == 0);
	if (s) {
		socklen_t len = sizeof(sa);
		getsockname(fd, (struct sockaddr *)&sa, &len);
		CHECK(http_server_port(s) == ntohs(sa.sin_port));
		struct result r;
		request(NULL, s, "GET", "/echo/fd", NULL, 0, NULL, &r);
		CHECK(r.status == 200);
		http_server_free(s);
	}
	int notlistening = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(http_server_start_fd(&cfg, notlistening, &s) == -EINVAL);
	CHECK(fcntl(notlistening, F_GETFD) < 0); /* taken and closed */

	/* A unix socket. */
	char dir[] = "/tmp/kindling-test-http.XXXXXX";
	CHECK(mkdtemp(dir) != NULL);
	struct sockaddr_un un = {.sun_family = AF_UNIX};
	snprintf(un.sun_path, sizeof(un.sun_path), "%s/api.sock", dir);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(bind(fd, (struct sockaddr *)&un, sizeof(un)) == 0 && listen(fd, 16) == 0);
	s = NULL;
	CHECK(http_server_start_fd(&cfg, fd, &s) == 0);
	if (s) {
		char want[128];
		snprintf(want, sizeof(want), "unix:%s", un.sun_path);
		CHECK(!strcmp(http_server_address(s), want) && http_server_port(s) == 0);
		CURL *c = curl_easy_init();
		struct result r = {0};
		curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, un.sun_path);
		curl_easy_setopt(c, CURLOPT_URL, "http://localhost/echo/unix");
		curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
		curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
		curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)WAIT_BOUND_S);
		CHECK(curl_easy_perform(c) == CURLE_OK && strstr(r.body, "raw_path=/echo/unix\n") &&
		      strstr(r.body, "\npeer=unix\n"));
		curl_easy_cleanup(c);
		http_server_free(s);
	}
	unlink(un.sun_path);
	rmdir(dir);
	http_server_free(NULL);
}

static void test_response_helpers(void)
{
	struct http_response r = {.status = 200};
	CHECK(http_response_add_header(&r, "Content-Length", "5") == -EINVAL);
	CHECK(http_response_add_header(&r, "transfer-encoding", "chunked") == -EINVAL);
	CHECK(http_response_add_header(&r, "Bad Name", "x") == -EINVAL);
	CHECK(http_response_add_header(&r, "", "x") == -EINVAL);
	CHECK(http_response_add_header(&r, "X-Split", "a\r\nInjected: yes") == -EINVAL);
	for (int i = 0; i < 20; i++)
		CHECK(http_response_add_header(&r, "X-Many", "v") == 0);
	CHECK(r.n_headers == 20);
	CHECK(http_response_set_body(&r, "abc", 3) == 0 && r.body_len == 3 && !memcmp(r.body, "abc", 3));
	CHECK(http_response_set_body(&r, "", 0) == 0 && r.body_len == 0);
	for (size_t i = 0; i < r.n_headers; i++) {
		free((char *)r.headers[i].name);
		free((char *)r.headers[i].value);
	}
	free(r.headers);
	free(r.body);
}

int main(void)
{
	log_set_level(LOG_WARN);
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		fprintf(stderr, "curl_global_init failed\n");
		return 1;
	}
	test_response_helpers();
	struct http_server *s = start(0, 0, 0);
	if (s) {
		test_routing_and_raw_path(s);
		test_bodies(s);
		test_keep_alive(s);
		test_concurrent_blocking(s);
		app.srv = NULL;
		http_server_free(s);
	}
	test_slowloris();
	test_connection_cap();
	test_header_limit();
	test_shutdown_waits();
	test_start_variants();
	CHECK(limit_saw_body == 0);
	curl_global_cleanup();
	return check_report();
}
