/* common/etcd.c and common/http_client.c against real servers on 127.0.0.1.
 *
 * http_client against a scripted server in this process: headers collected
 * in order, no "Expect: 100-continue" before a body, one connection kept for
 * two requests, -EMSGSIZE past the body cap (with and without a length),
 * -ETIMEDOUT from a server that never answers, -EPROTO from one that is no
 * HTTP server, -ECONNREFUSED where nothing listens.
 *
 * etcd_parse_range_reply on replies with wrong types, huge numbers, bad
 * base64, no header, and numbers where the gateway writes strings.
 *
 * The client against a real cluster of three etcd members (Debian's
 * etcd-server, started by tests/tools/etcd.sh on ports 24100-24899):
 * put/get (binary bytes, an empty value and 1 MiB), ranges by prefix with
 * |after| and |limit| (more=true), deletes of one key and of a prefix,
 * transactions down both branches, a CAS counter incremented 200 times by
 * each of two threads that ends at exactly 400, leases (keepalive, revoke,
 * expiry removing their keys within a bounded wait), and failover: a member
 * that never answers costs one timeout, one follower killed and then the
 * leader killed cost no call, all three killed make every call -ENOTCONN
 * within a bounded time (logged once), and the same client works again once
 * they are back (logged once).  Bad endpoint lists are -EINVAL.
 *
 * The process forks: the parent starts the cluster, runs the tests in the
 * child, and stops the cluster whatever the child did (a sanitizer abort
 * included), so no member outlives the test.
 */
#include "common/common.h"
#include "common/etcd.h"
#include "common/http_client.h"
#include "tests/check.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *workdir;

/* Run |fmt| in bash after sourcing tests/tools/etcd.sh; its exit status. */
static int sh_etcd(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh_etcd(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *cmd = NULL;
	if (vasprintf(&cmd, fmt, ap) < 0)
		cmd = NULL;
	va_end(ap);
	if (!cmd)
		return -1;
	char *full = xasprintf("bash -c '. \"$KINDLING_SOURCE_DIR/tests/tools/etcd.sh\" && %s'", cmd);
	free(cmd);
	int st = full ? system(full) : -1;
	free(full);
	return st == -1 || !WIFEXITED(st) ? -1 : WEXITSTATUS(st);
}

static char *read_text(const char *name)
{
	char *path = xasprintf("%s/%s", workdir, name);
	uint8_t *buf = NULL;
	size_t len = 0;
	int r = path ? read_file_all(path, 4096, &buf, &len) : -ENOMEM;
	free(path);
	if (r < 0)
		return NULL;
	char *s = (char *)buf;
	s = realloc(s, len + 1);
	if (!s) {
		free(buf);
		return NULL;
	}
	s[len] = 0;
	while (len && s[len - 1] == '\n')
		s[--len] = 0;
	return s;
}

/* ---- a scripted HTTP server for http_client ---- */

/* SCRIPT_DROP_SECOND answers the first request on a connection, reads the
 * second and closes without answering, as a server that dies holding it;
 * then it answers one more connection.  SCRIPT_DROP_SECOND_GONE stops
 * listening before it closes, so a resend finds nobody. */
enum script {
	SCRIPT_OK,
	SCRIPT_KEEPALIVE,
	SCRIPT_BIG_LENGTH,
	SCRIPT_BIG_CLOSE,
	SCRIPT_SILENT,
	SCRIPT_GARBAGE,
	SCRIPT_DROP_SECOND,
	SCRIPT_DROP_SECOND_GONE
};

struct scripted {
	int listen_fd;
	int stop[2]; /* written when the client is done: no resend will come */
	enum script script;
	char request[8192]; /* the (first) request's head */
	size_t request_body;
	int accepted, requests;
};

/* Read one request (head and Content-Length body) from |fd|; false at EOF. */
static bool read_request(struct scripted *s, int fd)
{
	char buf[8192];
	size_t len = 0;
	char *end = NULL;
	while (!end) {
		if (len + 1 >= sizeof(buf))
			return false;
		ssize_t n = recv(fd, buf + len, sizeof(buf) - 1 - len, 0);
		if (n <= 0)
			return false;
		len += (size_t)n;
		buf[len] = 0;
		end = strstr(buf, "\r\n\r\n");
	}
	size_t head = (size_t)(end + 4 - buf), body = 0;
	const char *cl = strcasestr(buf, "\r\nContent-Length:");
	if (cl && cl < end)
		body = strtoul(cl + 17, NULL, 10);
	if (s->requests == 0) {
		memcpy(s->request, buf, head);
		s->request[head] = 0;
		s->request_body = body;
	}
	size_t have = len - head;
	while (have < body) {
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		if (n <= 0)
			return false;
		have += (size_t)n;
	}
	s->requests++;
	return true;
}

static void send_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w <= 0)
			return;
		p += w;
		n -= (size_t)w;
	}
}

static void *scripted_serve(void *arg)
{
	struct scripted *s = arg;
	int fd = accept(s->listen_fd, NULL, NULL);
	if (fd < 0)
		return NULL;
	s->accepted++;
	static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Test: one\r\nx-test:  two \r\n"
				 "Connection: close\r\n\r\nhello";
	static const char again[] = "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
	char big[4096];
	memset(big, 'a', sizeof(big));
	switch (s->script) {
	case SCRIPT_OK:
		if (read_request(s, fd))
			send_all(fd, ok, sizeof(ok) - 1);
		break;
	case SCRIPT_KEEPALIVE:
		while (s->requests < 2 && read_request(s, fd))
			send_all(fd, again, sizeof(again) - 1);
		break;
	case SCRIPT_BIG_LENGTH:
	case SCRIPT_BIG_CLOSE:
		if (read_request(s, fd)) {
			const char *h = s->script == SCRIPT_BIG_LENGTH
						? "HTTP/1.1 200 OK\r\nContent-Length: 40960\r\n\r\n"
						: "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n";
			send_all(fd, h, strlen(h));
			for (int i = 0; i < 10; i++)
				send_all(fd, big, sizeof(big));
		}
		break;
	case SCRIPT_SILENT: /* read the request, then wait for the client to give up */
		if (read_request(s, fd)) {
			char c;
			while (recv(fd, &c, 1, 0) > 0)
				;
		}
		break;
	case SCRIPT_GARBAGE:
		if (read_request(s, fd))
			send_all(fd, "SSH-2.0-OpenSSH_9.2\r\n\r\n", 24);
		break;
	case SCRIPT_DROP_SECOND:
	case SCRIPT_DROP_SECOND_GONE:
		if (read_request(s, fd))
			send_all(fd, again, sizeof(again) - 1);
		if (read_request(s, fd) && s->script == SCRIPT_DROP_SECOND_GONE) {
			close(s->listen_fd);
			s->listen_fd = -1;
		}
		close(fd);
		fd = -1;
		/* A resend, if the client makes one, gets an answer. */
		struct pollfd p[2] = {{.fd = s->listen_fd, .events = POLLIN}, {.fd = s->stop[0], .events = POLLIN}};
		if (s->listen_fd >= 0 && poll(p, 2, 60000) > 0 && (p[0].revents & POLLIN) &&
		    (fd = accept(s->listen_fd, NULL, NULL)) >= 0) {
			s->accepted++;
			if (read_request(s, fd))
				send_all(fd, again, sizeof(again) - 1);
		}
		break;
	}
	if (fd < 0)
		return NULL;
	close(fd);
	return NULL;
}

static int listen_loopback(unsigned *port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 8) < 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &al) < 0) {
		perror("listen on 127.0.0.1");
		exit(1);
	}
	*port = ntohs(a.sin_port);
	return fd;
}

/* One exchange of |c| with the scripted server running |script|. */
static int scripted_request(struct http_client *c, struct scripted *s, enum script script, const char *body,
			    size_t max_body, unsigned timeout_ms, struct http_client_response *resp)
{
	unsigned port;
	s->listen_fd = listen_loopback(&port);
	s->script = script;
	s->accepted = s->requests = 0;
	s->request[0] = 0;
	if (pipe2(s->stop, O_CLOEXEC) < 0) {
		perror("pipe2");
		exit(1);
	}
	pthread_t t;
	pthread_create(&t, NULL, scripted_serve, s);
	char url[64];
	snprintf(url, sizeof(url), "http://127.0.0.1:%u/path?q=1", port);
	const struct http_header h[] = {{"Content-Type", "application/json"}, {"X-Mine", "yes"}};
	int r = http_client_request(c, body ? "POST" : "GET", url, h, 2, body, body ? strlen(body) : 0, timeout_ms,
				    max_body, resp);
	if (r == 0 && script == SCRIPT_KEEPALIVE) {
		http_client_response_cleanup(resp);
		r = http_client_request(c, "PUT", url, h, 1, "x", 1, timeout_ms, max_body, resp);
	}
	if (r == 0 && (script == SCRIPT_DROP_SECOND || script == SCRIPT_DROP_SECOND_GONE)) {
		http_client_response_cleanup(resp);
		r = http_client_request(c, body ? "POST" : "GET", url, h, 2, body, body ? strlen(body) : 0,
					timeout_ms, max_body, resp);
	}
	if (write(s->stop[1], "x", 1) != 1)
		perror("write");
	pthread_join(t, NULL);
	close(s->stop[0]);
	close(s->stop[1]);
	if (s->listen_fd >= 0)
		close(s->listen_fd);
	return r;
}

/* Write to the fd at |arg| once the request under test is under way; the
 * write's result comes back through pthread_join (CHECK is not
 * thread-safe). */
static void *cancel_later(void *arg)
{
	usleep(200 * 1000);
	return write(*(int *)arg, "x", 1) == 1 ? arg : NULL;
}

static void test_http_client(void)
{
	struct http_client *c;
	CHECK(http_client_new(&c) == 0);
	struct scripted s = {0};
	struct http_client_response resp;

	/* A body of 100 KiB: libcurl would ask "Expect: 100-continue" first. */
	size_t big_len = 100 * 1024;
	char *body = malloc(big_len + 1);
	memset(body, 'b', big_len);
	body[big_len] = 0;
	CHECK(scripted_request(c, &s, SCRIPT_OK, body, 1024, 5000, &resp) == 0);
	CHECK(resp.status == 200 && resp.body_len == 5 && !strcmp(resp.body, "hello"));
	CHECK(resp.n_headers == 4); /* Content-Length, X-Test twice, Connection */
	CHECK(http_client_response_header(&resp, "x-TEST") && !strcmp(http_client_response_header(&resp, "x-TEST"), "one"));
	CHECK(resp.n_headers == 4 && !strcmp(resp.headers[2].name, "x-test") && !strcmp(resp.headers[2].value, "two"));
	CHECK(!http_client_response_header(&resp, "X-None"));
	CHECK(!strcasestr(s.request, "\r\nExpect:"));
	CHECK(strcasestr(s.request, "\r\nX-Mine: yes\r\n") && strcasestr(s.request, "\r\nContent-Type: application/json"));
	CHECK(!strncmp(s.request, "POST /path?q=1 HTTP/1.1\r\n", 25) && s.request_body == big_len);
	http_client_response_cleanup(&resp);
	free(body);

	CHECK(scripted_request(c, &s, SCRIPT_OK, NULL, 1024, 5000, &resp) == 0);
	CHECK(!strncmp(s.request, "GET /path?q=1 HTTP/1.1\r\n", 24));
	http_client_response_cleanup(&resp);

	/* Two requests, one connection. */
	CHECK(scripted_request(c, &s, SCRIPT_KEEPALIVE, "{}", 1024, 5000, &resp) == 0);
	CHECK(s.accepted == 1 && s.requests == 2 && resp.status == 201 && !strcmp(resp.body, "ok"));
	http_client_response_cleanup(&resp);

	/* The server dies holding a request: a GET is resent on a fresh
	 * connection; a POST is not (the server may have acted on it), whether
	 * a resend could have connected or not. */
	CHECK(scripted_request(c, &s, SCRIPT_DROP_SECOND, NULL, 1024, 5000, &resp) == 0);
	CHECK(s.accepted == 2 && s.requests == 3 && resp.status == 201);
	http_client_response_cleanup(&resp);
	CHECK(scripted_request(c, &s, SCRIPT_DROP_SECOND, "{}", 1024, 5000, &resp) == -ECONNRESET);
	CHECK(s.requests == 2);
	CHECK(scripted_request(c, &s, SCRIPT_DROP_SECOND_GONE, "{}", 1024, 5000, &resp) == -ECONNRESET);
	CHECK(s.accepted == 1 && s.requests == 2);

	CHECK(scripted_request(c, &s, SCRIPT_BIG_LENGTH, NULL, 1000, 5000, &resp) == -EMSGSIZE);
	CHECK(resp.body == NULL && resp.n_headers == 0);
	CHECK(scripted_request(c, &s, SCRIPT_BIG_CLOSE, NULL, 1000, 5000, &resp) == -EMSGSIZE);
	CHECK(scripted_request(c, &s, SCRIPT_BIG_CLOSE, NULL, 40960, 5000, &resp) == 0);
	CHECK(resp.body_len == 40960);
	http_client_response_cleanup(&resp);
	CHECK(scripted_request(c, &s, SCRIPT_SILENT, "{}", 1000, 300, &resp) == -ETIMEDOUT);
	CHECK(scripted_request(c, &s, SCRIPT_GARBAGE, "{}", 1000, 5000, &resp) == -EPROTO);

	/* A cancel fd: quiet, it changes nothing; readable before the request
	 * or while the server sits on it, the request ends with -ECANCELED
	 * long before its 120 s bound (ctest's timeout would catch a wait). */
	int cancel[2];
	CHECK(pipe2(cancel, O_CLOEXEC) == 0);
	http_client_set_cancel_fd(c, cancel[0]);
	CHECK(scripted_request(c, &s, SCRIPT_OK, NULL, 1024, 5000, &resp) == 0 && resp.status == 200);
	http_client_response_cleanup(&resp);
	pthread_t canceller;
	CHECK(pthread_create(&canceller, NULL, cancel_later, &cancel[1]) == 0);
	CHECK(scripted_request(c, &s, SCRIPT_SILENT, "{}", 1000, 120000, &resp) == -ECANCELED);
	CHECK(s.requests == 1); /* it was sent, then given up on */
	void *wrote = NULL;
	pthread_join(canceller, &wrote);
	CHECK(wrote != NULL);
	/* Readable already: a server that never accepts (the kernel's backlog
	 * takes the connection) is not waited for either. */
	unsigned mute_port;
	int mute = listen_loopback(&mute_port);
	char mute_url[64];
	snprintf(mute_url, sizeof(mute_url), "http://127.0.0.1:%u/", mute_port);
	CHECK(http_client_request(c, "GET", mute_url, NULL, 0, NULL, 0, 120000, 100, &resp) == -ECANCELED);
	close(mute);
	http_client_set_cancel_fd(c, -1);
	CHECK(scripted_request(c, &s, SCRIPT_OK, NULL, 1024, 5000, &resp) == 0 && resp.status == 200);
	http_client_response_cleanup(&resp);
	close(cancel[0]);
	close(cancel[1]);

	/* Nothing listening: a port just closed. */
	unsigned port;
	close(listen_loopback(&port));
	char url[64];
	snprintf(url, sizeof(url), "http://127.0.0.1:%u/", port);
	CHECK(http_client_request(c, "GET", url, NULL, 0, NULL, 0, 2000, 100, &resp) == -ECONNREFUSED);
	CHECK(http_client_request(c, "GET", "", NULL, 0, NULL, 0, 2000, 100, &resp) == -EINVAL);
	CHECK(http_client_request(c, "GET", url, NULL, 0, NULL, 0, 0, 100, &resp) == -EINVAL);
	http_client_response_cleanup(&resp);
	http_client_free(c);
	http_client_free(NULL);
}

/* ---- the parser ---- */

static int parse(const char *s, struct etcd_kvs *k) { return etcd_parse_range_reply(s, strlen(s), k); }

static void test_parser(void)
{
	struct etcd_kvs k;
	CHECK(parse("{\"header\":{\"revision\":\"7\"},\"kvs\":[{\"key\":\"YS8x\",\"create_revision\":\"2\","
		    "\"mod_revision\":\"6\",\"version\":\"2\",\"value\":\"AP8B\",\"lease\":\"5508362247435229964\"},"
		    "{\"key\":\"YS8y\"}],\"more\":true,\"count\":\"3\"}",
		    &k) == 0);
	CHECK(k.n == 2 && k.revision == 7 && k.more);
	CHECK(k.n == 2 && !strcmp(k.kvs[0].key, "a/1") && k.kvs[0].value_len == 3 && k.kvs[0].value[1] == 0xff);
	CHECK(k.n == 2 && k.kvs[0].lease == 5508362247435229964 && k.kvs[0].mod_revision == 6);
	/* A key with no value and zero fields left out: all zero. */
	CHECK(k.n == 2 && k.kvs[1].value_len == 0 && k.kvs[1].value[0] == 0 && k.kvs[1].version == 0);
	etcd_kvs_cleanup(&k);
	etcd_kvs_cleanup(&k);

	/* Numbers where the gateway writes strings are read too; no kvs is n = 0. */
	CHECK(parse("{\"header\":{\"revision\":5},\"kvs\":[{\"key\":\"YQ==\",\"mod_revision\":3}]}", &k) == 0);
	CHECK(k.n == 1 && k.revision == 5 && k.kvs[0].mod_revision == 3 && !k.more);
	etcd_kvs_cleanup(&k);
	CHECK(parse("{\"header\":{}}", &k) == 0 && k.n == 0 && k.kvs == NULL && k.revision == 0);

	static const char *const bad[] = {
		"",
		"[]",
		"{\"kvs\":[]}",						  /* no header */
		"{\"header\":[]}",					  /* header not an object */
		"{\"header\":{\"revision\":\"99999999999999999999\"}}",	  /* past int64 */
		"{\"header\":{\"revision\":99999999999999999999}}",	  /* past int64 */
		"{\"header\":{\"revision\":\"12x\"}}",			  /* not a number */
		"{\"header\":{\"revision\":1.5}}",			  /* a real */
		"{\"header\":{\"revision\":\"-1\"}}",			  /* negative */
		"{\"header\":{},\"kvs\":{}}",				  /* kvs not an array */
		"{\"header\":{},\"kvs\":[1]}",				  /* a kv not an object */
		"{\"header\":{},\"kvs\":[{\"key\":\"YQ\"}]}",		  /* unpadded */
		"{\"header\":{},\"kvs\":[{\"key\":\"Y@==\"}]}",		  /* not base64 */
		"{\"header\":{},\"kvs\":[{\"key\":\"Y=Q=\"}]}",		  /* padding inside */
		"{\"header\":{},\"kvs\":[{\"key\":\"YQBi\"}]}",		  /* a NUL in the key */
		"{\"header\":{},\"kvs\":[{}]}",				  /* no key */
		"{\"header\":{},\"kvs\":[{\"key\":7}]}",		  /* key not a string */
		"{\"header\":{},\"kvs\":[{\"key\":\"YQ==\",\"value\":1}]}", /* value not a string */
		"{\"header\":{},\"more\":\"yes\"}",			  /* more not a bool */
		"{\"header\":{},\"kvs\":[{\"key\":\"YQ==\"},{\"key\":\"\"}]}", /* the second kv bad */
		"{\"header\":{}} trailing",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int r = parse(bad[i], &k);
		CHECK(r == -EPROTO && k.n == 0 && k.kvs == NULL && k.revision == 0);
		if (r != -EPROTO)
			fprintf(stderr, "parsed, but should not have: %s\n", bad[i]);
	}
}

/* ---- against the cluster ---- */

static void test_bad_endpoints(void)
{
	static const char *const bad[] = {"",	   "http://",		 "ftp://x",	"http://a,,http://b",
					  "http://h:99999", "http://h:", "http://h/path", "127.0.0.1:2379",
					  "http://h:2379,"};
	struct etcd *e = (struct etcd *)1;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		CHECK(etcd_new(&(struct etcd_config){.endpoints = bad[i]}, &e) == -EINVAL && e == NULL);
	}
	CHECK(etcd_new(&(struct etcd_config){0}, &e) == -EINVAL);
	CHECK(etcd_new(&(struct etcd_config){.endpoints = "http://127.0.0.1:1/,https://[::1]:2379,http://h"}, &e) == 0);
	etcd_free(e);
	etcd_free(NULL);
}

static void test_kv(struct etcd *e)
{
	struct etcd_kv kv;
	int64_t rev = 0, rev2 = 0;
	CHECK(etcd_get(e, "test/kv/missing", &kv) == -ENOENT);
	static const uint8_t bin[] = {0, 1, 0xff, 0xfe, '"', '\\', 0, '\n', 0x80};
	CHECK(etcd_put(e, "test/kv/bin", bin, sizeof(bin), 0, &rev) == 0 && rev > 0);
	CHECK(etcd_get(e, "test/kv/bin", &kv) == 0);
	CHECK(kv.value_len == sizeof(bin) && !memcmp(kv.value, bin, sizeof(bin)) && kv.value[kv.value_len] == 0);
	CHECK(!strcmp(kv.key, "test/kv/bin") && kv.mod_revision == rev && kv.create_revision == rev && kv.version == 1);
	CHECK(kv.lease == 0);
	etcd_kv_cleanup(&kv);
	etcd_kv_cleanup(&kv);
	CHECK(etcd_put(e, "test/kv/bin", "x", 1, 0, &rev2) == 0 && rev2 > rev);
	CHECK(etcd_get(e, "test/kv/bin", &kv) == 0 && kv.version == 2 && kv.create_revision == rev);
	etcd_kv_cleanup(&kv);
	CHECK(etcd_put(e, "test/kv/empty", NULL, 0, 0, NULL) == 0);
	CHECK(etcd_get(e, "test/kv/empty", &kv) == 0 && kv.value_len == 0 && kv.value && kv.value[0] == 0);
	etcd_kv_cleanup(&kv);

	size_t big_len = 1 << 20;
	uint8_t *big = malloc(big_len);
	CHECK(random_bytes(big, big_len) == 0);
	CHECK(etcd_put(e, "test/kv/big", big, big_len, 0, NULL) == 0);
	CHECK(etcd_get(e, "test/kv/big", &kv) == 0 && kv.value_len == big_len && !memcmp(kv.value, big, big_len));
	etcd_kv_cleanup(&kv);
	free(big);

	CHECK(etcd_put(e, "", "x", 1, 0, NULL) == -EINVAL);
	CHECK(etcd_get(e, "", &kv) == -EINVAL);
	CHECK(etcd_put(e, "test/kv/x", NULL, 3, 0, NULL) == -EINVAL);
	CHECK(etcd_put(e, "test/kv/x", "x", 1, 12345, NULL) == -ENOENT); /* no such lease */

	int64_t deleted = -1;
	CHECK(etcd_delete(e, "test/kv/bin", false, &deleted) == 0 && deleted == 1);
	CHECK(etcd_get(e, "test/kv/bin", &kv) == -ENOENT);
	CHECK(etcd_delete(e, "test/kv/bin", false, &deleted) == 0 && deleted == 0);
	CHECK(etcd_delete(e, "test/kv/", true, &deleted) == 0 && deleted == 2);
	CHECK(etcd_get(e, "test/kv/big", &kv) == -ENOENT);
}

static void test_range(struct etcd *e)
{
	static const char *const keys[] = {"test/r/a", "test/r/b", "test/r/c", "test/r/d", "test/r/e"};
	CHECK(etcd_put(e, "test/r0", "out", 3, 0, NULL) == 0); /* the byte after '/' */
	CHECK(etcd_put(e, "test/q", "out", 3, 0, NULL) == 0);
	for (int i = 4; i >= 0; i--)
		CHECK(etcd_put(e, keys[i], keys[i], strlen(keys[i]), 0, NULL) == 0);
	struct etcd_kvs k;
	CHECK(etcd_range_prefix(e, "test/r/", NULL, 0, &k) == 0 && k.n == 5 && !k.more && k.revision > 0);
	for (size_t i = 0; i < k.n && i < 5; i++)
		CHECK(!strcmp(k.kvs[i].key, keys[i]) && !strcmp((char *)k.kvs[i].value, keys[i]));
	etcd_kvs_cleanup(&k);
	CHECK(etcd_range_prefix(e, "test/r/", NULL, 2, &k) == 0 && k.n == 2 && k.more);
	CHECK(k.n == 2 && !strcmp(k.kvs[1].key, "test/r/b"));
	etcd_kvs_cleanup(&k);
	CHECK(etcd_range_prefix(e, "test/r/", "test/r/b", 0, &k) == 0 && k.n == 3 && !k.more);
	CHECK(k.n == 3 && !strcmp(k.kvs[0].key, "test/r/c") && !strcmp(k.kvs[2].key, "test/r/e"));
	etcd_kvs_cleanup(&k);
	/* Pages of two, each after the last key of the one before. */
	char last[64] = "";
	size_t seen = 0, pages = 0;
	for (bool more = true; more && pages < 10; pages++) {
		CHECK(etcd_range_prefix(e, "test/r/", last[0] ? last : NULL, 2, &k) == 0);
		for (size_t i = 0; i < k.n; i++, seen++)
			CHECK(seen < 5 && !strcmp(k.kvs[i].key, keys[seen]));
		if (k.n)
			snprintf(last, sizeof(last), "%s", k.kvs[k.n - 1].key);
		more = k.more;
		etcd_kvs_cleanup(&k);
	}
	CHECK(seen == 5 && pages == 3);
	CHECK(etcd_range_prefix(e, "test/r/", "test/r/e", 0, &k) == 0 && k.n == 0);
	CHECK(etcd_range_prefix(e, "test/r/", "test/s", 0, &k) == 0 && k.n == 0);
	CHECK(etcd_range_prefix(e, "test/r/", "a", 0, &k) == 0 && k.n == 5); /* |after| before the prefix */
	etcd_kvs_cleanup(&k);
	CHECK(etcd_range_prefix(e, "test/none/", NULL, 0, &k) == 0 && k.n == 0 && k.kvs == NULL);
	CHECK(etcd_range_prefix(e, "", NULL, 0, &k) == 0 && k.n >= 7); /* everything */
	etcd_kvs_cleanup(&k);

	int64_t deleted = 0;
	CHECK(etcd_delete(e, "test/r/", true, &deleted) == 0 && deleted == 5);
	CHECK(etcd_range_prefix(e, "test/r", NULL, 0, &k) == 0 && k.n == 1 && !strcmp(k.kvs[0].key, "test/r0"));
	etcd_kvs_cleanup(&k);
	CHECK(etcd_delete(e, "test/", true, &deleted) == 0 && deleted == 2);
}

static void test_txn(struct etcd *e)
{
	int64_t rev, rev2;
	bool ok = true;
	CHECK(etcd_put(e, "test/t/k", "v1", 2, 0, &rev) == 0);
	struct etcd_cmp cmp = {.key = "test/t/k", .target = ETCD_CMP_MOD_REVISION, .op = ETCD_EQUAL, .number = rev};
	struct etcd_op then[] = {{.type = ETCD_OP_PUT, .key = "test/t/k", .value = "v2", .value_len = 2},
				 {.type = ETCD_OP_PUT, .key = "test/t/then", .value = "1", .value_len = 1}};
	struct etcd_op otherwise[] = {{.type = ETCD_OP_PUT, .key = "test/t/else", .value = "1", .value_len = 1}};
	CHECK(etcd_txn(e, &cmp, 1, then, 2, otherwise, 1, &ok, &rev2) == 0 && ok && rev2 == rev + 1);
	struct etcd_kv kv;
	CHECK(etcd_get(e, "test/t/k", &kv) == 0 && !strcmp((char *)kv.value, "v2") && kv.mod_revision == rev2);
	etcd_kv_cleanup(&kv);
	CHECK(etcd_get(e, "test/t/then", &kv) == 0);
	etcd_kv_cleanup(&kv);
	/* The same compare again is stale now: the other branch runs. */
	CHECK(etcd_txn(e, &cmp, 1, then, 2, otherwise, 1, &ok, &rev) == 0 && !ok && rev == rev2 + 1);
	CHECK(etcd_get(e, "test/t/else", &kv) == 0);
	etcd_kv_cleanup(&kv);
	CHECK(etcd_get(e, "test/t/k", &kv) == 0 && !strcmp((char *)kv.value, "v2"));
	etcd_kv_cleanup(&kv);
	/* Create only if absent (version 0), compare values, delete a prefix. */
	struct etcd_cmp absent = {.key = "test/t/new", .target = ETCD_CMP_VERSION, .op = ETCD_EQUAL, .number = 0};
	struct etcd_op create = {.type = ETCD_OP_PUT, .key = "test/t/new", .value = "n", .value_len = 1};
	CHECK(etcd_txn(e, &absent, 1, &create, 1, NULL, 0, &ok, NULL) == 0 && ok);
	CHECK(etcd_txn(e, &absent, 1, &create, 1, NULL, 0, &ok, NULL) == 0 && !ok);
	struct etcd_cmp value[] = {{.key = "test/t/k", .target = ETCD_CMP_VALUE, .op = ETCD_EQUAL, .value = "v2", .value_len = 2},
				   {.key = "test/t/new", .target = ETCD_CMP_CREATE_REVISION, .op = ETCD_GREATER, .number = 0}};
	struct etcd_op wipe = {.type = ETCD_OP_DELETE, .key = "test/t/", .prefix = true};
	CHECK(etcd_txn(e, value, 2, &wipe, 1, NULL, 0, &ok, NULL) == 0 && ok);
	struct etcd_kvs k;
	CHECK(etcd_range_prefix(e, "test/t/", NULL, 0, &k) == 0 && k.n == 0);
	/* No compares: the success branch; a bad lease in an op: -ENOENT. */
	CHECK(etcd_txn(e, NULL, 0, &create, 1, NULL, 0, &ok, NULL) == 0 && ok);
	struct etcd_op leased = {.type = ETCD_OP_PUT, .key = "test/t/l", .value = "x", .value_len = 1, .lease = 999};
	CHECK(etcd_txn(e, NULL, 0, &leased, 1, NULL, 0, &ok, NULL) == -ENOENT);
	struct etcd_cmp bad = {.key = "test/t/k", .target = (enum etcd_cmp_target)9};
	CHECK(etcd_txn(e, &bad, 1, NULL, 0, NULL, 0, &ok, NULL) == -EINVAL);
	CHECK(etcd_txn(e, NULL, 2, NULL, 0, NULL, 0, &ok, NULL) == -EINVAL);
	CHECK(etcd_delete(e, "test/t/", true, NULL) == 0);
}

/* Two threads increment one counter with compare-and-swap on mod_revision. */
struct cas_arg {
	struct etcd *e;
	int errors, conflicts;
};

static void *cas_worker(void *arg)
{
	struct cas_arg *a = arg;
	for (int i = 0; i < 200 && a->errors < 5;) {
		struct etcd_kv kv;
		long n = 0;
		int64_t mod = 0;
		int r = etcd_get(a->e, "test/cas/counter", &kv);
		if (r == 0) {
			n = strtol((char *)kv.value, NULL, 10);
			mod = kv.mod_revision;
			etcd_kv_cleanup(&kv);
		} else if (r != -ENOENT) {
			a->errors++;
			continue;
		}
		char buf[32];
		int len = snprintf(buf, sizeof(buf), "%ld", n + 1);
		struct etcd_cmp cmp = {.key = "test/cas/counter", .target = ETCD_CMP_MOD_REVISION, .op = ETCD_EQUAL, .number = mod};
		struct etcd_op put = {.type = ETCD_OP_PUT, .key = "test/cas/counter", .value = buf, .value_len = (size_t)len};
		bool ok;
		r = etcd_txn(a->e, &cmp, 1, &put, 1, NULL, 0, &ok, NULL);
		if (r < 0)
			a->errors++;
		else if (ok)
			i++;
		else
			a->conflicts++;
	}
	return NULL;
}

static void test_cas(struct etcd *e)
{
	struct cas_arg a[2] = {{.e = e}, {.e = e}};
	pthread_t t[2];
	for (int i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, cas_worker, &a[i]);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	CHECK(a[0].errors == 0 && a[1].errors == 0);
	struct etcd_kv kv;
	CHECK(etcd_get(e, "test/cas/counter", &kv) == 0 && !strcmp((char *)kv.value, "400") && kv.version == 400);
	printf("cas: 400 increments by two threads, %d conflicts retried\n", a[0].conflicts + a[1].conflicts);
	etcd_kv_cleanup(&kv);
	CHECK(etcd_delete(e, "test/cas/", true, NULL) == 0);
}

static void test_leases(struct etcd *e)
{
	int64_t id = 0, ttl = 0;
	struct etcd_kv kv;
	CHECK(etcd_lease_grant(e, 30, &id) == 0 && id > 0);
	CHECK(etcd_put(e, "test/l/a", "a", 1, id, NULL) == 0);
	CHECK(etcd_get(e, "test/l/a", &kv) == 0 && kv.lease == id);
	etcd_kv_cleanup(&kv);
	CHECK(etcd_lease_keepalive(e, id, &ttl) == 0 && ttl > 0 && ttl <= 30);
	CHECK(etcd_lease_revoke(e, id) == 0);
	CHECK(etcd_get(e, "test/l/a", &kv) == -ENOENT);
	CHECK(etcd_lease_revoke(e, id) == -ENOENT);
	CHECK(etcd_lease_keepalive(e, id, &ttl) == -ENOENT && ttl == 0);
	CHECK(etcd_put(e, "test/l/a", "a", 1, id, NULL) == -ENOENT);
	CHECK(etcd_lease_grant(e, 0, &id) == -EINVAL);
	CHECK(etcd_lease_keepalive(e, 0, NULL) == -EINVAL);

	/* Expiry: a 2 s lease not kept alive takes its keys with it. */
	CHECK(etcd_lease_grant(e, 2, &id) == 0);
	CHECK(etcd_put(e, "test/l/b", "b", 1, id, NULL) == 0);
	CHECK(etcd_put(e, "test/l/c", "c", 1, id, NULL) == 0);
	int r = 0;
	double t0 = now_seconds();
	while (now_seconds() - t0 < 20 && (r = etcd_get(e, "test/l/b", &kv)) == 0) {
		etcd_kv_cleanup(&kv);
		usleep(200 * 1000);
	}
	CHECK(r == -ENOENT);
	CHECK(etcd_get(e, "test/l/c", &kv) == -ENOENT);
	CHECK(etcd_lease_keepalive(e, id, NULL) == -ENOENT);
}

static char *endpoints_from(const char *all, const int *order, int n)
{
	char *urls[3] = {0};
	char *copy = strdup(all), *save = NULL;
	int i = 0;
	for (char *t = strtok_r(copy, ",", &save); t && i < 3; t = strtok_r(NULL, ",", &save))
		urls[i++] = t;
	char *out = NULL;
	if (i == 3 && n == 3)
		out = xasprintf("%s,%s,%s", urls[order[0]], urls[order[1]], urls[order[2]]);
	free(copy);
	return out;
}

static int leader_index(void)
{
	if (sh_etcd("etcd_leader_index >\"$ETCD_WORKDIR/leader\"") != 0)
		return -1;
	char *s = read_text("cluster/leader");
	int l = s ? atoi(s) : -1;
	free(s);
	return l;
}

/* A put and a get of a fresh key; 0 if both worked. */
static int roundtrip(struct etcd *e, int i)
{
	char key[64], val[32];
	snprintf(key, sizeof(key), "test/f/%d", i);
	snprintf(val, sizeof(val), "v%d", i);
	int r = etcd_put(e, key, val, strlen(val), 0, NULL);
	struct etcd_kv kv;
	if (r == 0 && (r = etcd_get(e, key, &kv)) == 0) {
		r = strcmp((char *)kv.value, val) ? -EPROTO : 0;
		etcd_kv_cleanup(&kv);
	}
	return r;
}

/* A lone member in a leader election: "no leader" (HTTP 503) to the first
 * |fail_first| requests, each on its own connection, then answers a put. */
struct electing {
	struct scripted s;
	int fail_first;
	pthread_t thread;
};

static void *electing_serve(void *arg)
{
	struct electing *el = arg;
	static const char no_leader_body[] = "{\"error\":\"etcdserver: no leader\",\"code\":14}";
	static const char put_body[] = "{\"header\":{\"revision\":\"7\"}}";
	for (;;) {
		struct pollfd p[2] = {{.fd = el->s.listen_fd, .events = POLLIN}, {.fd = el->s.stop[0], .events = POLLIN}};
		if (poll(p, 2, 60000) <= 0 || !(p[0].revents & POLLIN))
			return NULL;
		int fd = accept(el->s.listen_fd, NULL, NULL);
		if (fd < 0)
			return NULL;
		if (read_request(&el->s, fd)) {
			bool electing = el->s.requests <= el->fail_first;
			const char *body = electing ? no_leader_body : put_body;
			char head[160];
			int n = snprintf(head, sizeof(head), "HTTP/1.1 %s\r\nContent-Type: application/json\r\n"
							     "Content-Length: %zu\r\nConnection: close\r\n\r\n",
					 electing ? "503 Service Unavailable" : "200 OK", strlen(body));
			send_all(fd, head, (size_t)n);
			send_all(fd, body, strlen(body));
		}
		close(fd);
	}
}

/* Put through a client whose only member is |el|; returns the put's result
 * and sets |*requests| to how many requests the member saw. */
static int put_through_election(struct electing *el, int fail_first, int *requests)
{
	memset(el, 0, sizeof(*el));
	unsigned port;
	el->s.listen_fd = listen_loopback(&port);
	el->fail_first = fail_first;
	CHECK(pipe(el->s.stop) == 0);
	CHECK(pthread_create(&el->thread, NULL, electing_serve, el) == 0);
	char *eps = xasprintf("http://127.0.0.1:%u", port);
	struct etcd *e = NULL;
	int r = -EINVAL;
	if (eps && etcd_new(&(struct etcd_config){.endpoints = eps, .timeout_ms = 2000}, &e) == 0)
		r = etcd_put(e, "test/election", "v", 1, 0, NULL);
	etcd_free(e);
	free(eps);
	(void)!write(el->s.stop[1], "x", 1);
	pthread_join(el->thread, NULL);
	close(el->s.listen_fd);
	close(el->s.stop[0]);
	close(el->s.stop[1]);
	*requests = el->s.requests;
	return r;
}

static void test_election(void)
{
	/* Five "no leader" answers (a second of rounds 200 ms apart) and then a
	 * leader: the put goes through.  A client that gave up after two rounds
	 * failed here while the election was nearly over. */
	struct electing el;
	int requests = 0;
	CHECK(put_through_election(&el, 5, &requests) == 0);
	CHECK(requests == 6);
	/* No leader ever: the client gives up (-ENOTCONN), having tried for
	 * about two timeouts, one round per 200 ms at most. */
	CHECK(put_through_election(&el, 1000, &requests) == -ENOTCONN);
	CHECK(requests >= 3 && requests <= 21);
}

static void test_failover(const char *all)
{
	/* A member that accepts connections but never answers: one timeout, then
	 * the client stays with the member that answered. */
	unsigned port;
	int hole = listen_loopback(&port);
	char *eps = xasprintf("http://127.0.0.1:%u,%s", port, all);
	struct etcd *e;
	CHECK(etcd_new(&(struct etcd_config){.endpoints = eps, .timeout_ms = 500}, &e) == 0);
	for (int i = 0; i < 5; i++)
		CHECK(roundtrip(e, i) == 0);
	etcd_free(e);
	free(eps);
	close(hole);

	/* A follower the client is talking to, killed: no call fails. */
	int leader = leader_index();
	CHECK(leader >= 0);
	int f = (leader + 1) % 3, order[3] = {f, (f + 1) % 3, (f + 2) % 3};
	eps = endpoints_from(all, order, 3);
	CHECK(eps && etcd_new(&(struct etcd_config){.endpoints = eps, .timeout_ms = 5000}, &e) == 0);
	free(eps);
	CHECK(roundtrip(e, 10) == 0);
	CHECK(sh_etcd("kill_etcd_member %d", f) == 0);
	int failed = 0;
	for (int i = 0; i < 20; i++)
		failed += roundtrip(e, 100 + i) != 0;
	CHECK(failed == 0);
	CHECK(sh_etcd("restart_etcd_member %d && wait_etcd_healthy 60", f) == 0);

	/* The leader killed: the two left elect another within a bounded wait,
	 * and from then on no call fails. */
	leader = leader_index();
	CHECK(leader >= 0);
	CHECK(sh_etcd("kill_etcd_member %d", leader) == 0);
	double t0 = now_seconds();
	int r = -1;
	while (now_seconds() - t0 < 30 && (r = roundtrip(e, 200)) != 0)
		usleep(200 * 1000);
	CHECK(r == 0);
	failed = 0;
	for (int i = 0; i < 20; i++)
		failed += roundtrip(e, 300 + i) != 0;
	CHECK(failed == 0);
	CHECK(sh_etcd("restart_etcd_member %d && wait_etcd_healthy 60", leader) == 0);
	etcd_free(e);
}

/* Count the lines of |path| containing |needle|. */
static int count_lines(const char *path, const char *needle)
{
	FILE *f = fopen(path, "r");
	char line[2048];
	int n = 0;
	while (f && fgets(line, sizeof(line), f))
		n += strstr(line, needle) != NULL;
	if (f)
		fclose(f);
	return n;
}

static void test_outage(struct etcd *e)
{
	CHECK(roundtrip(e, 400) == 0);
	/* Capture this client's log lines while every member is down. */
	char *log = xasprintf("%s/outage.log", workdir);
	fflush(stderr);
	int saved = dup(2), fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	CHECK(saved >= 0 && fd >= 0 && dup2(fd, 2) == 2);
	close(fd);
	CHECK(sh_etcd("kill_etcd_member 0 && kill_etcd_member 1 && kill_etcd_member 2") == 0);
	struct etcd_kv kv;
	int64_t id;
	bool ok;
	for (int i = 0; i < 5; i++) {
		double t0 = now_seconds();
		CHECK(etcd_get(e, "test/f/400", &kv) == -ENOTCONN);
		CHECK(etcd_put(e, "test/f/x", "x", 1, 0, NULL) == -ENOTCONN);
		CHECK(etcd_lease_grant(e, 5, &id) == -ENOTCONN);
		CHECK(etcd_txn(e, NULL, 0, NULL, 0, NULL, 0, &ok, NULL) == -ENOTCONN);
		/* Refused connections fail at once; the bound is each member's
		 * timeout for each of the four calls, with room to spare. */
		CHECK(now_seconds() - t0 < 4 * 3 * 2.0 + 10);
	}
	CHECK(sh_etcd("restart_etcd_member 0 && restart_etcd_member 1 && restart_etcd_member 2 && "
		      "wait_etcd_healthy 60") == 0);
	/* Back: the same client works again. */
	int r = -1;
	double t0 = now_seconds();
	while (now_seconds() - t0 < 30 && (r = roundtrip(e, 401)) != 0)
		usleep(200 * 1000);
	CHECK(r == 0);
	CHECK(etcd_get(e, "test/f/400", &kv) == 0);
	etcd_kv_cleanup(&kv);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	int down = count_lines(log, "no etcd member answers"), back = count_lines(log, "answers again");
	printf("outage: logged %d time(s) down, %d time(s) back\n", down, back);
	CHECK(down == 1 && back == 1);
	free(log);
}

static int run_tests(const char *endpoints)
{
	test_http_client();
	test_parser();
	test_bad_endpoints();
	test_election();
	struct etcd *e = NULL;
	CHECK(etcd_new(&(struct etcd_config){.endpoints = endpoints}, &e) == 0);
	if (!e)
		return check_report();
	test_kv(e);
	test_range(e);
	test_txn(e);
	test_cas(e);
	test_leases(e);
	test_failover(endpoints);
	test_outage(e);
	CHECK(etcd_delete(e, "test/", true, NULL) == 0);
	etcd_free(e);
	return check_report();
}

int main(void)
{
	if (!getenv("KINDLING_SOURCE_DIR")) {
		fprintf(stderr, "KINDLING_SOURCE_DIR is not set (run this test through ctest)\n");
		return 1;
	}
	char tmpl[] = "/tmp/kindling-etcd-test.XXXXXX";
	workdir = mkdtemp(tmpl);
	if (!workdir) {
		perror("mkdtemp");
		return 1;
	}
	char *wd = xasprintf("%s/cluster", workdir);
	setenv("ETCD_WORKDIR", wd, 1);
	free(wd);
	fflush(NULL);
	if (sh_etcd("base=$(etcd_pick_baseport 24100 24900 3) && start_etcd_cluster \"$ETCD_WORKDIR\" \"$base\" 3 && "
		    "echo \"$ETCD_ENDPOINTS\" >\"$ETCD_WORKDIR/endpoints\"") != 0) {
		fprintf(stderr, "could not start a 3-member etcd cluster (logs under %s/cluster)\n", workdir);
		sh_etcd("stop_etcd_cluster");
		return 1;
	}
	char *endpoints = read_text("cluster/endpoints");
	printf("etcd cluster: %s\n", endpoints ? endpoints : "?");
	fflush(NULL);
	pid_t child = endpoints ? fork() : -1;
	if (child == 0)
		_exit(run_tests(endpoints));
	int st = 0;
	if (child > 0)
		waitpid(child, &st, 0);
	sh_etcd("stop_etcd_cluster");
	int rc = child > 0 && WIFEXITED(st) ? WEXITSTATUS(st) : 1;
	if (child > 0 && WIFSIGNALED(st))
		fprintf(stderr, "the test process died of signal %d\n", WTERMSIG(st));
	if (rc == 0) {
		char *rm = xasprintf("rm -rf '%s'", workdir);
		if (rm && system(rm) != 0)
			fprintf(stderr, "could not remove %s\n", workdir);
		free(rm);
	} else {
		fprintf(stderr, "etcd logs kept under %s/cluster\n", workdir);
	}
	free(endpoints);
	return rc;
}
