/* The host agent's HTTP API (server.c) and its client (remote.c) over real
 * HTTP on loopback, against a real in-process agent (blockd, FUSE mount)
 * whose store holds no image:
 *   - warm_only with nothing warm is -EAGAIN at once, in both modes, and
 *     starts nothing (the same call without it reaches the store: -ENOENT);
 *   - provision, drain, stats and logs go through, with their errors;
 *   - SnapStart on a process-sandbox agent: GET /v1/info says it cannot
 *     snapshot and why (naming --isolation microvm), snapshot_supported is
 *     false with that reason, POST /v1/snapshot is -ENOTSUP (501
 *     not-supported) with it; bad snapshot bodies get 400 naming the field;
 *   - bad requests get 400 naming the field, unknown routes 404/405;
 *   - eight threads at once through one client;
 *   - transport failures: nothing listening is -ENOTCONN; a peer that
 *     takes the request and resets the connection is -ECONNRESET; an HTTP
 *     server that is not an agent is -EPROTO.
 * Invocations that run (cold, warm, errors, 6 MB, a killed agent) are in
 * tests/integration/79-agent-remote.sh, with real images. */
/* ctest-labels: no-tsan (blockd's FUSE threads and sandboxes; the HTTP server runs under TSan in test_hostagent_rapi) */
#include "placement/hostagent/internal.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/check.h"

#define DIGEST "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static struct hostagent_function fn(enum hostagent_mode mode)
{
	return (struct hostagent_function){
		.name = "f1",
		.version = "$LATEST",
		.image_digest = DIGEST,
		.revision_id = "r1",
		.memory_mb = 128,
		.timeout_s = 3,
		.mode = mode,
	};
}

/* A listening socket on a free loopback port. */
static int listen_any(uint16_t *port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t n = sizeof(sa);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 4) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &n) < 0) {
		perror("listen");
		exit(1);
	}
	*port = ntohs(sa.sin_port);
	return fd;
}

/* A peer that reads a request's headers and resets the connection, as a
 * host whose agent died under the invocation. */
static void *resetter(void *arg)
{
	int lfd = *(int *)arg;
	int c = accept(lfd, NULL, NULL);
	if (c < 0)
		return NULL;
	char buf[65536];
	size_t got = 0;
	while (got < sizeof(buf) - 1) {
		ssize_t k = read(c, buf + got, sizeof(buf) - 1 - got);
		if (k <= 0)
			break;
		got += (size_t)k;
		buf[got] = '\0';
		if (strstr(buf, "\r\n\r\n"))
			break;
	}
	struct linger lg = { 1, 0 };
	setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(c);
	return NULL;
}

struct reply {
	long status;
	char body[4096];
	size_t len;
	char marker[64];
};

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
	struct reply *r = arg;
	size_t k = size * n, room = sizeof(r->body) - 1 - r->len;
	memcpy(r->body + r->len, p, k < room ? k : room);
	r->len += k < room ? k : room;
	r->body[r->len] = '\0';
	return k;
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
	struct reply *r = arg;
	size_t k = size * n;
	if (k > 16 && strncasecmp(p, "Kindling-Error: ", 16) == 0)
		snprintf(r->marker, sizeof(r->marker), "%.*s", (int)strcspn(p + 16, "\r\n"), p + 16);
	return k;
}

/* A raw request with libcurl: |hdr| one extra header or NULL. */
static void raw(const char *method, const char *url, const char *hdr, const char *body, struct reply *r)
{
	memset(r, 0, sizeof(*r));
	CURL *h = curl_easy_init();
	struct curl_slist *sl = hdr ? curl_slist_append(NULL, hdr) : NULL;
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
	if (body)
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, sl);
	curl_easy_setopt(h, CURLOPT_TIMEOUT, 60L);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
	curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(h, CURLOPT_HEADERDATA, r);
	if (curl_easy_perform(h) == CURLE_OK)
		curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
	curl_slist_free_all(sl);
	curl_easy_cleanup(h);
}

/* Many threads through one client (its pool of connections). */
struct par {
	struct hostagent_remote *h;
	int eagain;
};

static void *par_main(void *arg)
{
	struct par *p = arg;
	struct hostagent_function f = fn(HOSTAGENT_MODE_RUNTIME_API);
	char id[32];
	for (int i = 0; i < 20; i++) {
		snprintf(id, sizeof(id), "par-%d", i);
		struct hostagent_invoke_request req = { .fn = &f, .request_id = id, .warm_only = true };
		struct hostagent_invoke_result res;
		p->eagain += hostagent_remote_ops.invoke(p->h, &req, &res) == -EAGAIN;
		hostagent_invoke_result_cleanup(&res);
	}
	return NULL;
}

static void test_parallel(struct hostagent_remote *h)
{
	pthread_t t[8];
	struct par p[8];
	for (int i = 0; i < 8; i++) {
		p[i] = (struct par){ h, 0 };
		pthread_create(&t[i], NULL, par_main, &p[i]);
	}
	for (int i = 0; i < 8; i++) {
		pthread_join(t[i], NULL);
		CHECK(p[i].eagain == 20);
	}
}

static void test_agent(struct hostagent *a, const char *url)
{
	struct hostagent_remote *h = NULL;
	CHECK(hostagent_remote_new(url, 0, &h) == 0);
	const struct hostagent_ops *ops = &hostagent_remote_ops;

	/* warm_only with nothing warm: -EAGAIN, nothing started, both modes. */
	for (int m = 0; m < 2; m++) {
		struct hostagent_function f = fn(m ? HOSTAGENT_MODE_STDIO : HOSTAGENT_MODE_RUNTIME_API);
		struct hostagent_invoke_request req = { .fn = &f, .payload = (const uint8_t *)"{}", .payload_len = 2,
							.request_id = "req-1", .warm_only = true };
		struct hostagent_invoke_result res;
		CHECK(ops->invoke(h, &req, &res) == -EAGAIN);
		CHECK(hostagent_invoke(a, &req, &res) == -EAGAIN); /* the same in process */
		hostagent_invoke_result_cleanup(&res);
		struct hostagent_stats st;
		hostagent_get_stats(a, &st);
		CHECK(st.sandboxes == 0 && st.cold_starts == 0);
		/* Without warm_only the agent goes to the store, which lacks the image. */
		req.warm_only = false;
		CHECK(ops->invoke(h, &req, &res) == -ENOENT);
		hostagent_invoke_result_cleanup(&res);
	}
	test_parallel(h);
	/* A bad request id: -EINVAL before anything is sent. */
	struct hostagent_function f = fn(HOSTAGENT_MODE_RUNTIME_API);
	struct hostagent_invoke_request bad = { .fn = &f, .request_id = "a/b" };
	struct hostagent_invoke_result res;
	CHECK(ops->invoke(h, &bad, &res) == -EINVAL);

	/* provision: plain mode cannot be provisioned (-EINVAL), 0 releases. */
	struct hostagent_function fs = fn(HOSTAGENT_MODE_STDIO);
	CHECK(ops->provision(h, &fs, 1) == -EINVAL);
	CHECK(ops->provision(h, &f, 0) == 0);
	ops->drain(h, "f1", "$LATEST", "r2");
	ops->drain(h, "f1", NULL, NULL);

	/* stats come across. */
	struct hostagent_stats local, remote;
	hostagent_get_stats(a, &local);
	ops->get_stats(h, &remote);
	CHECK(remote.memory_budget == local.memory_budget && remote.memory_budget == 512ull << 20);
	CHECK(remote.sandboxes == 0);

	/* logs: none yet; a bad name never leaves the client. */
	char *log = NULL;
	size_t len = 0;
	CHECK(ops->read_log(h, "f1", 1000, &log, &len) == -ENOENT && !log);
	CHECK(ops->read_log(h, "../etc", 1000, &log, &len) == -EINVAL);

	/* SnapStart: this agent runs process sandboxes, and says so. */
	char why[256] = "", digest[65] = "x";
	CHECK(!ops->snapshot_supported(h, why, sizeof(why)));
	CHECK(strstr(why, "process") && strstr(why, "--isolation microvm"));
	why[0] = '\0';
	CHECK(ops->snapshot(h, &f, "snapstart-f1:1", digest, why, sizeof(why)) == -ENOTSUP);
	CHECK(strstr(why, "--isolation microvm") && digest[0] == '\0');
	hostagent_get_stats(a, &local);
	CHECK(local.sandboxes == 0 && local.cold_starts == 0);
	hostagent_remote_free(h);

	/* The same calls over raw HTTP: refusals name what is wrong. */
	char u[256];
	struct reply r;
	snprintf(u, sizeof(u), "%s/healthz", url);
	raw("GET", u, NULL, NULL, &r);
	CHECK(r.status == 200);
	snprintf(u, sizeof(u), "%s/v1/invoke", url);
	raw("POST", u, NULL, "{}", &r);
	CHECK(r.status == 400 && strcmp(r.marker, "bad-request") == 0 && strstr(r.body, "Kindling-Function"));
	raw("POST", u, "Kindling-Function: {\"name\":\"f\",\"version\":\"1\",\"image\":\"" DIGEST "\",\"memory_mb\":1,"
		       "\"timeout_s\":3}",
	    "{}", &r);
	CHECK(r.status == 400 && strstr(r.body, "memory_mb"));
	raw("POST", u, "Kindling-Function: {\"name\":\"f\",\"version\":\"1\",\"image\":\"" DIGEST "\",\"memory_mb\":128,"
		       "\"timeout_s\":3}",
	    "{}", &r);
	CHECK(r.status == 400 && strstr(r.body, "Kindling-Request-Id"));
	raw("GET", u, NULL, NULL, &r);
	CHECK(r.status == 405);
	snprintf(u, sizeof(u), "%s/v1/provision", url);
	raw("POST", u, NULL, "{\"n\":1}", &r);
	CHECK(r.status == 400 && strstr(r.body, "function"));
	snprintf(u, sizeof(u), "%s/v1/drain", url);
	raw("POST", u, NULL, "{\"name\":7}", &r);
	CHECK(r.status == 400 && strstr(r.body, "name"));
	snprintf(u, sizeof(u), "%s/v1/logs/f1?bytes=zero", url);
	raw("GET", u, NULL, NULL, &r);
	CHECK(r.status == 400 && strstr(r.body, "bytes"));
	snprintf(u, sizeof(u), "%s/v1/info", url);
	raw("GET", u, NULL, NULL, &r);
	CHECK(r.status == 200 && strstr(r.body, "\"isolation\":\"process\"") && strstr(r.body, "\"snapshot\":false"));
	raw("POST", u, NULL, "{}", &r);
	CHECK(r.status == 405);
	snprintf(u, sizeof(u), "%s/v1/snapshot", url);
	raw("POST", u, NULL, "{\"function\":{}}", &r);
	CHECK(r.status == 400 && strcmp(r.marker, "bad-request") == 0 && strstr(r.body, "name is missing"));
	raw("POST", u, NULL, "{\"name\":\"snapstart-f:1\"}", &r);
	CHECK(r.status == 400 && strstr(r.body, "function is missing"));
	raw("POST", u, NULL, "{\"name\":\"a b\",\"function\":{}}", &r);
	CHECK(r.status == 400 && strstr(r.body, "NAME[:TAG]"));
	raw("POST", u, NULL, "{\"name\":\"s:1\",\"function\":{\"name\":\"f\",\"version\":\"1\",\"image\":\"" DIGEST
			    "\",\"memory_mb\":128,\"timeout_s\":3,\"mode\":\"stdio\"}}", &r);
	CHECK(r.status == 400 && strstr(r.body, "function.mode"));
	raw("POST", u, NULL, "{\"name\":\"s:1\",\"function\":{\"name\":\"f\",\"version\":\"1\",\"image\":\"" DIGEST
			    "\",\"memory_mb\":128,\"timeout_s\":3}}", &r);
	CHECK(r.status == 501 && strcmp(r.marker, "not-supported") == 0 && strstr(r.body, "--isolation microvm"));
	raw("GET", u, NULL, NULL, &r);
	CHECK(r.status == 405);
	snprintf(u, sizeof(u), "%s/v1/nothing", url);
	raw("GET", u, NULL, NULL, &r);
	CHECK(r.status == 404 && r.marker[0] == '\0');

	/* A server that is not an agent (a 404 without the marker): -EPROTO. */
	snprintf(u, sizeof(u), "%s/not-an-agent", url);
	CHECK(hostagent_remote_new(u, 0, &h) == 0);
	CHECK(ops->invoke(h, &bad, &res) == -EINVAL); /* checked before sending: request id */
	struct hostagent_invoke_request req = { .fn = &f, .request_id = "req-2" };
	CHECK(ops->invoke(h, &req, &res) == -EPROTO);
	CHECK(!ops->snapshot_supported(h, why, sizeof(why)) && strstr(why, "HTTP 404"));
	CHECK(ops->snapshot(h, &f, "snapstart-f1:1", digest, why, sizeof(why)) == -EPROTO &&
	      strstr(why, "error marker"));
	hostagent_remote_free(h);
}

static void test_transport(void)
{
	struct hostagent_function f = fn(HOSTAGENT_MODE_RUNTIME_API);
	struct hostagent_invoke_request req = { .fn = &f, .payload = (const uint8_t *)"{}", .payload_len = 2,
						.request_id = "req-3" };
	struct hostagent_invoke_result res;
	struct hostagent_remote *h = NULL;
	char url[64];

	/* Nothing listening: never delivered. */
	uint16_t port;
	int fd = listen_any(&port);
	close(fd);
	snprintf(url, sizeof(url), "http://127.0.0.1:%u", port);
	CHECK(hostagent_remote_new(url, 0, &h) == 0);
	CHECK(hostagent_remote_ops.invoke(h, &req, &res) == -ENOTCONN);
	CHECK(hostagent_remote_ops.provision(h, &f, 0) == -ENOTCONN);
	char why[256], digest[65];
	CHECK(!hostagent_remote_ops.snapshot_supported(h, why, sizeof(why)) && strstr(why, "cannot be reached"));
	CHECK(hostagent_remote_ops.snapshot(h, &f, "snapstart-f1:1", digest, why, sizeof(why)) == -ENOTCONN &&
	      strstr(why, "cannot be reached"));
	hostagent_remote_free(h);

	/* Taken, then the connection reset: lost after delivery. */
	fd = listen_any(&port);
	pthread_t t;
	pthread_create(&t, NULL, resetter, &fd);
	snprintf(url, sizeof(url), "http://127.0.0.1:%u", port);
	CHECK(hostagent_remote_new(url, 0, &h) == 0);
	CHECK(hostagent_remote_ops.invoke(h, &req, &res) == -ECONNRESET);
	pthread_join(t, NULL);
	close(fd);
	hostagent_remote_free(h);

	CHECK(hostagent_remote_new("ftp://x", 0, &h) == -EINVAL);
	CHECK(hostagent_remote_new("http://a b", 0, &h) == -EINVAL);
}

int main(void)
{
	if (geteuid() != 0 || access("/dev/fuse", R_OK | W_OK) != 0) {
		fprintf(stderr, "the agent's blockd needs root and /dev/fuse\n");
		return 1;
	}
	curl_global_init(CURL_GLOBAL_DEFAULT);
	char dir[] = "/tmp/kindling-agent-api.XXXXXX";
	if (!mkdtemp(dir))
		return 1;
	char home[256], store[256], state[256];
	snprintf(home, sizeof(home), "%s/home", dir);
	snprintf(store, sizeof(store), "%s/store", dir);
	snprintf(state, sizeof(state), "%s/state", dir);
	mkdir(home, 0700);
	mkdir(store, 0700);
	setenv("KINDLING_HOME", home, 1);

	struct hostagent_config cfg = { 0 };
	cfg.cache.origin_uri = store;
	cfg.state_dir = state;
	cfg.isolation = "process";
	cfg.memory_budget = 512ull << 20;
	struct hostagent *a = NULL;
	struct hostagent_server *s = NULL;
	int r = hostagent_new(&cfg, &a);
	CHECK(r == 0);
	if (r == 0)
		CHECK(hostagent_server_start(a, "127.0.0.1:0", &s) == 0);
	if (s) {
		char url[64];
		snprintf(url, sizeof(url), "http://%s", hostagent_server_address(s));
		test_agent(a, url);
	}
	hostagent_server_free(s);
	hostagent_free(a);
	test_transport();

	char cmd[512];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
	curl_global_cleanup();
	return check_report();
}
