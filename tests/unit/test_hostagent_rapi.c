/* One sandbox's Runtime API endpoint (placement/hostagent/rapi.c, served
 * by common/http_server) over real HTTP on loopback: this test plays the
 * runtime with libcurl (and raw sockets for a chunked body or a length with
 * no body behind it) and the agent with rapi_assign / rapi_wait, and checks
 * what Lambda's Runtime API answers: the event and its headers, 202 for
 * answers, 400 InvalidRequestID, 403 InvalidStateTransition, 413 for a
 * response over 6 MB (and Function.ResponseSizeTooLarge for the invoker,
 * with the size, however the body came), oversized bodies elsewhere, init
 * errors before and after /next, the long-poll, timeouts, and the end of
 * the sandbox waking everyone.  Runs under ThreadSanitizer. */
#include "placement/hostagent/internal.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tests/check.h"

static char base[64];
static uint16_t port;

static int listen_any(void)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t n = sizeof(sa);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 16) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &n) < 0) {
		perror("listen");
		exit(1);
	}
	port = ntohs(sa.sin_port);
	snprintf(base, sizeof(base), "http://127.0.0.1:%u/2018-06-01/runtime", port);
	return fd;
}

struct reply {
	long status; /* 0: the connection failed */
	char *body;
	size_t len;
	char headers[4096];
};

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
	struct reply *r = arg;
	char *nb = realloc(r->body, r->len + size * n + 1);
	if (!nb)
		return 0;
	memcpy(nb + r->len, p, size * n);
	r->len += size * n;
	nb[r->len] = '\0';
	r->body = nb;
	return size * n;
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
	struct reply *r = arg;
	size_t have = strlen(r->headers);
	if (have + size * n < sizeof(r->headers)) {
		memcpy(r->headers + have, p, size * n);
		r->headers[have + size * n] = '\0';
	}
	return size * n;
}

/* One request; |path| is appended to the runtime base. */
static struct reply http(const char *method, const char *path, const void *body, size_t len, const char *header)
{
	struct reply r = { 0 };
	char url[512];
	snprintf(url, sizeof(url), "%s%s", base, path);
	CURL *c = curl_easy_init();
	struct curl_slist *h = NULL;
	if (header)
		h = curl_slist_append(h, header);
	h = curl_slist_append(h, "Expect:");
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, &r);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	if (body) {
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
	}
	if (curl_easy_perform(c) == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
	curl_slist_free_all(h);
	curl_easy_cleanup(c);
	return r;
}

/* Send |head| (a request line and headers, with the blank line) on a new
 * connection, then |chunks| chunks of |chunk_len| bytes of 'c' and the last
 * chunk when |chunks| > 0, and read the answer until the server closes (at
 * most 60 s).  For what curl does not send: a Content-Length with no body
 * behind it, or a chunked body. */
static struct reply raw(const char *head, size_t chunks, size_t chunk_len)
{
	struct reply r = { 0 };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct timeval tv = { .tv_sec = 60 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		perror("connect");
		exit(1);
	}
	bool sent = send(fd, head, strlen(head), MSG_NOSIGNAL) == (ssize_t)strlen(head);
	char *chunk = malloc(chunk_len + 1);
	memset(chunk, 'c', chunk_len);
	for (size_t i = 0; sent && i < chunks; i++) {
		char size[32];
		snprintf(size, sizeof(size), "%zx\r\n", chunk_len);
		sent = send(fd, size, strlen(size), MSG_NOSIGNAL) > 0 &&
		       send(fd, chunk, chunk_len, MSG_NOSIGNAL) == (ssize_t)chunk_len &&
		       send(fd, "\r\n", 2, MSG_NOSIGNAL) == 2;
	}
	if (sent && chunks)
		sent = send(fd, "0\r\n\r\n", 5, MSG_NOSIGNAL) == 5;
	free(chunk);
	CHECK(sent);
	char buf[8192];
	size_t len = 0;
	for (;;) {
		ssize_t n = recv(fd, buf + len, sizeof(buf) - 1 - len, 0);
		if (n <= 0 || (len += (size_t)n) == sizeof(buf) - 1)
			break;
	}
	close(fd);
	buf[len] = '\0';
	char *body = strstr(buf, "\r\n\r\n");
	if (strncmp(buf, "HTTP/1.1 ", 9) != 0 || !body)
		return r;
	r.status = strtol(buf + 9, NULL, 10);
	snprintf(r.headers, sizeof(r.headers), "%.*s", (int)(body + 2 - buf), buf);
	r.body = strdup(body + 4);
	r.len = strlen(r.body);
	return r;
}

static const char *header_value(const struct reply *r, const char *name, char *buf, size_t len)
{
	const char *p = strcasestr(r->headers, name);
	if (!p || p[strlen(name)] != ':')
		return NULL;
	p += strlen(name) + 1;
	while (*p == ' ')
		p++;
	size_t n = strcspn(p, "\r\n");
	snprintf(buf, len, "%.*s", (int)n, p);
	return buf;
}

static bool error_type_is(const struct reply *r, const char *type)
{
	json_error_t e;
	json_t *j = r->body ? json_loads(r->body, 0, &e) : NULL;
	bool ok = j && strcmp(json_string_value(json_object_get(j, "errorType")) ?: "", type) == 0 &&
		  json_string_value(json_object_get(j, "errorMessage"));
	json_decref(j);
	return ok;
}

static void reply_free(struct reply *r) { free(r->body); }

/* ---- hooks ---- */

struct hook_log {
	pthread_mutex_t lock;
	int first_next, init_error, handed;
	char last_handed[64];
};

static void h_first(void *arg)
{
	struct hook_log *h = arg;
	pthread_mutex_lock(&h->lock);
	h->first_next++;
	pthread_mutex_unlock(&h->lock);
}
static void h_init_error(void *arg)
{
	struct hook_log *h = arg;
	pthread_mutex_lock(&h->lock);
	h->init_error++;
	pthread_mutex_unlock(&h->lock);
}
static void h_handed(void *arg, const char *id)
{
	struct hook_log *h = arg;
	pthread_mutex_lock(&h->lock);
	h->handed++;
	snprintf(h->last_handed, sizeof(h->last_handed), "%s", id);
	pthread_mutex_unlock(&h->lock);
}

static struct rapi *endpoint(struct hook_log *h)
{
	memset(h, 0, sizeof(*h));
	pthread_mutex_init(&h->lock, NULL);
	struct rapi_hooks hooks = { .first_next = h_first, .init_error = h_init_error, .handed = h_handed, .arg = h };
	struct rapi *r = NULL;
	CHECK(rapi_new("test endpoint", &hooks, &r) == 0);
	CHECK(rapi_serve(r, listen_any()) == 0);
	return r;
}

static void inv_init(struct rapi_invocation *inv, const char *id, const char *payload, uint32_t timeout_s)
{
	memset(inv, 0, sizeof(*inv));
	inv->request_id = id;
	inv->arn = "arn:aws:lambda:us-east-1:000000000000:function:fn";
	inv->trace_id = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
	inv->client_context = "eyJjdXN0b20iOnsiYSI6MX19"; /* {"custom":{"a":1}} */
	inv->payload = (const uint8_t *)payload;
	inv->payload_len = strlen(payload);
	inv->timeout_s = timeout_s;
}

/* Assign |inv| and take it as the runtime would (GET /next, 200). */
static void hand_over(struct rapi *r, struct rapi_invocation *inv, const char *id, const char *payload)
{
	inv_init(inv, id, payload, 30);
	CHECK(rapi_assign(r, inv) == 0);
	struct reply next = http("GET", "/invocation/next", NULL, 0, NULL);
	CHECK(next.status == 200);
	reply_free(&next);
}

static void test_happy_path(void)
{
	struct hook_log h;
	struct rapi *r = endpoint(&h);
	struct rapi_invocation inv;
	inv_init(&inv, "req-1", "{\"n\":1}", 30);
	CHECK(rapi_assign(r, &inv) == 0);
	CHECK(rapi_assign(r, &inv) == -EBUSY);
	struct reply next = http("GET", "/invocation/next", NULL, 0, NULL);
	char v[256];
	CHECK(next.status == 200 && next.body && strcmp(next.body, "{\"n\":1}") == 0);
	CHECK(header_value(&next, "Lambda-Runtime-Aws-Request-Id", v, sizeof(v)) && strcmp(v, "req-1") == 0);
	CHECK(header_value(&next, "Lambda-Runtime-Invoked-Function-Arn", v, sizeof(v)) &&
	      strcmp(v, "arn:aws:lambda:us-east-1:000000000000:function:fn") == 0);
	CHECK(header_value(&next, "Lambda-Runtime-Trace-Id", v, sizeof(v)) && strncmp(v, "Root=1-5759e988", 15) == 0);
	CHECK(header_value(&next, "Lambda-Runtime-Client-Context", v, sizeof(v)) &&
	      strcmp(v, "{\"custom\":{\"a\":1}}") == 0);
	CHECK(header_value(&next, "Content-Type", v, sizeof(v)) && strcmp(v, "application/json") == 0);
	/* The deadline is epoch milliseconds, about 30 s from now. */
	CHECK(header_value(&next, "Lambda-Runtime-Deadline-Ms", v, sizeof(v)) && strtoll(v, NULL, 10) > 1600000000000LL);
	reply_free(&next);
	pthread_mutex_lock(&h.lock);
	CHECK(h.first_next == 1 && h.handed == 1 && strcmp(h.last_handed, "req-1") == 0);
	pthread_mutex_unlock(&h.lock);

	struct reply other = http("POST", "/invocation/not-it/response", "x", 1, NULL);
	CHECK(other.status == 400 && error_type_is(&other, "InvalidRequestID"));
	reply_free(&other);
	struct reply ok = http("POST", "/invocation/req-1/response", "{\"ok\":true}", 11, NULL);
	CHECK(ok.status == 202 && ok.body && strcmp(ok.body, "{\"status\":\"OK\"}") == 0);
	reply_free(&ok);
	struct reply twice = http("POST", "/invocation/req-1/response", "{}", 2, NULL);
	CHECK(twice.status == 403 && error_type_is(&twice, "InvalidStateTransition"));
	CHECK(twice.body && strstr(twice.body, "RuntimeResponseSentState"));
	reply_free(&twice);
	struct reply err_after = http("POST", "/invocation/req-1/error", "{}", 2, NULL);
	CHECK(err_after.status == 403 && error_type_is(&err_after, "InvalidStateTransition"));
	reply_free(&err_after);

	CHECK(rapi_wait(r, &inv, now_seconds() + 30) == RAPI_DONE);
	CHECK(!inv.is_error && inv.body && strcmp((char *)inv.body, "{\"ok\":true}") == 0 && inv.body_len == 11);
	CHECK(inv.handed && inv.done_at >= inv.handed_at);
	free(inv.body);

	/* init/error after /next is refused. */
	struct reply late_init = http("POST", "/init/error", "{}", 2, NULL);
	CHECK(late_init.status == 403 && error_type_is(&late_init, "InvalidStateTransition"));
	reply_free(&late_init);

	/* An error, with its type header; a JSON object passes through. */
	hand_over(r, &inv, "req-2", "{}");
	const char *e = "{\"errorMessage\":\"boom\",\"errorType\":\"Handled\"}";
	struct reply er = http("POST", "/invocation/req-2/error", e, strlen(e), "Lambda-Runtime-Function-Error-Type: Function.Boom");
	CHECK(er.status == 202);
	reply_free(&er);
	CHECK(rapi_wait(r, &inv, now_seconds() + 30) == RAPI_DONE);
	CHECK(inv.is_error && strcmp(inv.error_type, "Function.Boom") == 0 && strcmp((char *)inv.body, e) == 0);
	free(inv.body);

	/* A non-JSON error body is wrapped, with the filtered type. */
	hand_over(r, &inv, "req-3", "{}");
	er = http("POST", "/invocation/req-3/error", "it broke", 8, "Lambda-Runtime-Function-Error-Type: Error");
	CHECK(er.status == 202);
	reply_free(&er);
	CHECK(rapi_wait(r, &inv, now_seconds() + 30) == RAPI_DONE);
	CHECK(inv.is_error && strcmp(inv.error_type, "Runtime.Unknown") == 0);
	CHECK(inv.body && strstr((char *)inv.body, "\"errorMessage\":\"it broke\""));
	free(inv.body);

	/* Unknown paths and methods. */
	struct reply nf = http("GET", "/invocation/nothing", NULL, 0, NULL);
	CHECK(nf.status == 404);
	reply_free(&nf);
	struct reply bm = http("DELETE", "/invocation/next", NULL, 0, NULL);
	CHECK(bm.status == 405);
	reply_free(&bm);
	rapi_free(r);
	pthread_mutex_destroy(&h.lock);
}

static void test_oversize(void)
{
	struct hook_log h;
	struct rapi *r = endpoint(&h);
	struct rapi_invocation inv;
	hand_over(r, &inv, "big", "{}");
	/* The answer comes from the headers, before any of the body: the body
	 * is not sent here, since a client still sending when the server
	 * closes may see the connection reset before it reads the 413. */
	struct reply big = raw("POST /2018-06-01/runtime/invocation/big/response HTTP/1.1\r\nHost: x\r\n"
			       "Content-Length: 6291557\r\n\r\n",
			       0, 0);
	CHECK(big.status == 413 && error_type_is(&big, "RequestEntityTooLarge"));
	reply_free(&big);
	CHECK(rapi_wait(r, &inv, now_seconds() + 30) == RAPI_DONE);
	CHECK(inv.is_error && strcmp(inv.error_type, "Function.ResponseSizeTooLarge") == 0);
	CHECK(inv.body && strstr((char *)inv.body, "Response payload size (6291557 bytes) exceeded"));
	free(inv.body);

	/* Exactly the limit is fine. */
	hand_over(r, &inv, "edge", "{}");
	size_t n = HA_MAX_PAYLOAD;
	char *body = malloc(n);
	memset(body, 'b', n);
	struct reply edge = http("POST", "/invocation/edge/response", body, n, NULL);
	free(body);
	CHECK(edge.status == 202);
	reply_free(&edge);
	CHECK(rapi_wait(r, &inv, now_seconds() + 30) == RAPI_DONE && !inv.is_error && inv.body_len == HA_MAX_PAYLOAD);
	free(inv.body);

	/* A chunked response has no length up front: it is read to its end
	 * and its whole size reported. */
	hand_over(r, &inv, "chunky", "{}");
	struct reply ch = raw("POST /2018-06-01/runtime/invocation/chunky/response HTTP/1.1\r\nHost: x\r\n"
			      "Transfer-Encoding: chunked\r\n\r\n",
			      97, 65536); /* 6356992 bytes */
	CHECK(ch.status == 413 && error_type_is(&ch, "RequestEntityTooLarge"));
	reply_free(&ch);
	CHECK(rapi_wait(r, &inv, now_seconds() + 30) == RAPI_DONE);
	CHECK(inv.is_error && strcmp(inv.error_type, "Function.ResponseSizeTooLarge") == 0);
	CHECK(inv.body && strstr((char *)inv.body, "Response payload size (6356992 bytes) exceeded"));
	free(inv.body);

	/* An oversized body is checked as its route would check it: the
	 * request id first (none of the 7 MB is sent: the answer comes from
	 * the headers). */
	hand_over(r, &inv, "huge", "{}");
	struct reply wrong = raw("POST /2018-06-01/runtime/invocation/not-it/response HTTP/1.1\r\nHost: x\r\n"
				 "Content-Length: 7000000\r\n\r\n",
				 0, 0);
	CHECK(wrong.status == 400 && error_type_is(&wrong, "InvalidRequestID"));
	reply_free(&wrong);
	/* An oversized error report is accepted without its body: the
	 * invocation fails with the runtime's type and no message. */
	struct reply er = raw("POST /2018-06-01/runtime/invocation/huge/error HTTP/1.1\r\nHost: x\r\n"
			      "Lambda-Runtime-Function-Error-Type: Function.Huge\r\nContent-Length: 7000000\r\n\r\n",
			      0, 0);
	CHECK(er.status == 202 && er.body && strcmp(er.body, "{\"status\":\"OK\"}") == 0);
	reply_free(&er);
	CHECK(rapi_wait(r, &inv, now_seconds() + 30) == RAPI_DONE);
	CHECK(inv.is_error && strcmp(inv.error_type, "Function.Huge") == 0);
	CHECK(inv.body && strstr((char *)inv.body, "\"errorMessage\":\"\""));
	free(inv.body);
	/* Paths and methods the API does not have: 404 and 405, body or not. */
	struct reply nf = raw("POST /2018-06-01/runtime/elsewhere HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n",
			      0, 0);
	CHECK(nf.status == 404 && nf.body && strcmp(nf.body, "404 page not found\n") == 0);
	reply_free(&nf);
	struct reply bm = raw("PUT /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n",
			      0, 0);
	CHECK(bm.status == 405);
	reply_free(&bm);
	/* /next reads a body and ignores it. */
	inv_init(&inv, "with-body", "{\"b\":1}", 30);
	CHECK(rapi_assign(r, &inv) == 0);
	struct reply nb = raw("GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
			      "Transfer-Encoding: chunked\r\n\r\n",
			      1, 100);
	CHECK(nb.status == 200 && nb.body && strcmp(nb.body, "{\"b\":1}") == 0);
	reply_free(&nb);
	struct reply done = http("POST", "/invocation/with-body/response", "{}", 2, NULL);
	CHECK(done.status == 202);
	reply_free(&done);
	CHECK(rapi_wait(r, &inv, now_seconds() + 30) == RAPI_DONE && !inv.is_error);
	free(inv.body);
	rapi_free(r);
	pthread_mutex_destroy(&h.lock);
}

static void test_init_error(void)
{
	struct hook_log h;
	struct rapi *r = endpoint(&h);
	struct rapi_invocation inv;
	inv_init(&inv, "cold", "{}", 30);
	CHECK(rapi_assign(r, &inv) == 0);
	const char *e = "{\"errorMessage\":\"Cannot find module 'index'\",\"errorType\":\"Runtime.ImportModuleError\"}";
	struct reply ie = http("POST", "/init/error", e, strlen(e), "Lambda-Runtime-Function-Error-Type: Runtime.ImportModuleError");
	CHECK(ie.status == 202);
	reply_free(&ie);
	struct reply again = http("POST", "/init/error", e, strlen(e), NULL);
	CHECK(again.status == 403);
	reply_free(&again);
	pthread_mutex_lock(&h.lock);
	CHECK(h.init_error == 1 && h.first_next == 0);
	pthread_mutex_unlock(&h.lock);
	CHECK(rapi_wait(r, &inv, now_seconds() + 30) == RAPI_INIT_ERROR);
	CHECK(!inv.handed && strcmp(inv.error_type, "Runtime.ImportModuleError") == 0 && strcmp((char *)inv.body, e) == 0);
	free(inv.body);
	rapi_free(r);
	pthread_mutex_destroy(&h.lock);
}

struct poller {
	pthread_t t;
	struct reply r;
	const char *path;
};

static void *poll_main(void *arg)
{
	struct poller *p = arg;
	p->r = http("GET", p->path, NULL, 0, NULL);
	return NULL;
}

static void test_long_poll_timeout_end(void)
{
	struct hook_log h;
	struct rapi *r = endpoint(&h);
	/* The runtime waits in /next before there is any work. */
	struct poller p = { .path = "/invocation/next" };
	pthread_create(&p.t, NULL, poll_main, &p);
	for (int i = 0; i < 1000; i++) { /* until the runtime is in /next (bounded) */
		if (rapi_first_next_at(r) >= 0)
			break;
		usleep(10000);
	}
	CHECK(rapi_first_next_at(r) >= 0);
	struct rapi_invocation inv;
	inv_init(&inv, "slow", "{\"sleep\":true}", 1);
	CHECK(rapi_assign(r, &inv) == 0);
	pthread_join(p.t, NULL);
	CHECK(p.r.status == 200 && p.r.body && strcmp(p.r.body, "{\"sleep\":true}") == 0);
	reply_free(&p.r);
	/* It never answers: the invocation times out one second after the hand-over. */
	CHECK(rapi_wait(r, &inv, now_seconds() + 30) == RAPI_TIMEOUT);
	CHECK(inv.handed && !inv.body);
	struct reply late = http("POST", "/invocation/slow/response", "{}", 2, NULL);
	CHECK(late.status == 403 && error_type_is(&late, "InvalidStateTransition"));
	reply_free(&late);

	/* Nobody takes the event before its deadline. */
	inv_init(&inv, "untaken", "{}", 30);
	CHECK(rapi_assign(r, &inv) == 0);
	CHECK(rapi_wait(r, &inv, now_seconds() + 0.2) == RAPI_TIMEOUT && !inv.handed);

	/* The sandbox ends while the runtime waits in /next and the agent waits
	 * on an invocation: both return. */
	struct poller p2 = { .path = "/invocation/next" };
	pthread_create(&p2.t, NULL, poll_main, &p2);
	struct rapi_invocation inv2;
	inv_init(&inv2, "never", "{}", 30);
	/* Give the poller's request a way in first (bounded): it cannot take
	 * anything, so the order does not matter for the outcome. */
	usleep(50000);
	rapi_end(r);
	pthread_join(p2.t, NULL);
	CHECK(p2.r.status != 200);
	reply_free(&p2.r);
	CHECK(rapi_assign(r, &inv2) == -ESHUTDOWN);
	rapi_free(r);
	pthread_mutex_destroy(&h.lock);
}

int main(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
	test_happy_path();
	test_oversize();
	test_init_error();
	test_long_poll_timeout_end();
	curl_global_cleanup();
	return check_report();
}
