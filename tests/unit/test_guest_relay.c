/* The guest init's Runtime API relay (vmm/guest/relay.c), over real sockets:
 * unix socket pairs for both ends, and a TCP connect still under way for the
 * host side.  Bytes pass unchanged both ways in amounts far beyond the
 * buffers; a half-close reaches the other side while the other direction
 * keeps flowing; a reader that stops reading stops the relay's reads (the
 * buffers stay bounded) and everything arrives once it reads again; a side
 * that goes away ends the connection for the other; a refused connect ends
 * it; the connection limit holds; cleanup ends every connection.  After a
 * restore (guest_relay_restart()), a request with no answer yet reaches a new
 * stream byte for byte (with its end of stream, and whether the old stream
 * had taken it or not), while a connection answered in part, one whose
 * request outgrew the replay bound, or one the new stream cannot be opened
 * for is reset.  Every loop is bounded by a step count, never by time. */
/* ctest-labels: no-tsan (single-threaded: the relay is part of the init's poll loop) */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tests/check.h"
#include "vmm/guest/relay.h"

#define MAX_STEPS 200000

/* One round of the init's loop, without waiting. */
static void step(struct guest_relay *r)
{
	struct pollfd pf[GUEST_RELAY_POLLFDS];
	size_t n = guest_relay_poll_set(r, pf);
	if (poll(pf, n, 0) > 0)
		guest_relay_service(r, pf);
}

static void pair(int sv[2])
{
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
}

/* A relay with one connection: the client's pair |c| (c[0] the test's end,
 * c[1] the relay's A) joined to the server's pair |s| (s[1] is B). */
static void joined(struct guest_relay *r, int c[2], int s[2])
{
	guest_relay_init(r);
	pair(c);
	pair(s);
	CHECK(guest_relay_add(r, c[1], s[1], false) == 0);
}

/* The test's end of one direction: |len| bytes of |src| to write to |wfd|,
 * read back from |rfd| into |dst|. */
struct flow {
	const uint8_t *src;
	uint8_t *dst;
	size_t len, sent, got;
	int wfd, rfd;
	bool eof; /* rfd reached its end */
};

/* Move what can move without blocking; true if anything did. */
static bool flow_turn(struct flow *f)
{
	bool moved = false;
	if (f->sent < f->len) {
		ssize_t n = write(f->wfd, f->src + f->sent, f->len - f->sent);
		if (n > 0) {
			f->sent += (size_t)n;
			moved = true;
		}
	}
	if (!f->eof) {
		uint8_t tmp[8192];
		ssize_t n = read(f->rfd, tmp, sizeof(tmp));
		if (n > 0 && f->got + (size_t)n <= f->len) {
			memcpy(f->dst + f->got, tmp, (size_t)n);
			f->got += (size_t)n;
			moved = true;
		} else if (n > 0) {
			f->got += (size_t)n; /* more than was sent: the check below fails */
		} else if (n == 0) {
			f->eof = true;
		}
	}
	return moved;
}

static uint8_t *pattern(size_t len, uint32_t seed)
{
	uint8_t *p = malloc(len);
	CHECK(p != NULL);
	for (size_t i = 0; p && i < len; i++) {
		seed = seed * 1103515245u + 12345u;
		p[i] = (uint8_t)(seed >> 16);
	}
	return p;
}

/* 3 MiB each way at once, then a half-close each way in turn. */
static void test_both_ways_and_half_close(void)
{
	struct guest_relay r;
	int c[2], s[2];
	joined(&r, c, s);
	const size_t len = 3u << 20;
	uint8_t *up = pattern(len, 1), *down = pattern(len, 2), *up_got = calloc(1, len), *down_got = calloc(1, len);
	struct flow f_up = { .src = up, .dst = up_got, .len = len, .wfd = c[0], .rfd = s[0] };
	struct flow f_down = { .src = down, .dst = down_got, .len = len, .wfd = s[0], .rfd = c[0] };
	for (int i = 0; i < MAX_STEPS && (f_up.got < len || f_down.got < len); i++) {
		flow_turn(&f_up);
		flow_turn(&f_down);
		step(&r);
		CHECK(r.conns[0].half[0].len <= GUEST_RELAY_BUF && r.conns[0].half[1].len <= GUEST_RELAY_BUF);
	}
	CHECK(f_up.got == len && memcmp(up, up_got, len) == 0);
	CHECK(f_down.got == len && memcmp(down, down_got, len) == 0);
	CHECK(r.bytes[0] == len && r.bytes[1] == len && !guest_relay_pending(&r));

	/* The client says it is done sending: the server sees the end of its
	 * request, and can still answer. */
	CHECK(shutdown(c[0], SHUT_WR) == 0);
	char buf[64];
	ssize_t n = -1;
	for (int i = 0; i < MAX_STEPS && n != 0; i++) {
		step(&r);
		n = read(s[0], buf, sizeof(buf));
	}
	CHECK(n == 0);
	CHECK(write(s[0], "late reply", 10) == 10);
	CHECK(shutdown(s[0], SHUT_WR) == 0);
	size_t have = 0;
	bool eof = false;
	for (int i = 0; i < MAX_STEPS && !eof; i++) {
		step(&r);
		n = read(c[0], buf + have, sizeof(buf) - have);
		if (n > 0)
			have += (size_t)n;
		eof = n == 0;
	}
	CHECK(eof && have == 10 && memcmp(buf, "late reply", 10) == 0);
	/* Both directions ended: the connection is gone, counted as ended. */
	CHECK(guest_relay_count(&r) == 0 && r.ended == 1 && r.failed == 0);
	close(c[0]);
	close(s[0]);
	free(up);
	free(down);
	free(up_got);
	free(down_got);
}

/* A server that does not read: the relay stops reading from the client once
 * its buffer is full, so the client's writes block; nothing is lost. */
static void test_bounded(void)
{
	struct guest_relay r;
	int c[2], s[2];
	joined(&r, c, s);
	const size_t len = 64u << 20; /* far more than the relay and both socket buffers hold */
	uint8_t *src = pattern(len, 3), *got = calloc(1, len);
	struct flow f = { .src = src, .dst = got, .len = len, .wfd = c[0], .rfd = -1, .eof = true };
	int idle = 0;
	for (int i = 0; i < MAX_STEPS && idle < 100; i++) {
		idle = flow_turn(&f) ? 0 : idle + 1;
		step(&r);
	}
	CHECK(idle == 100 && f.sent < len); /* the client is blocked... */
	CHECK(r.conns[0].half[0].len == GUEST_RELAY_BUF); /* ...and the relay holds one full buffer */
	CHECK(guest_relay_pending(&r));
	/* The server reads again: everything arrives, in order. */
	f.rfd = s[0];
	f.eof = false;
	for (int i = 0; i < MAX_STEPS && f.got < len; i++) {
		flow_turn(&f);
		step(&r);
	}
	CHECK(f.got == len && memcmp(src, got, len) == 0);
	guest_relay_cleanup(&r);
	close(c[0]);
	close(s[0]);
	free(src);
	free(got);
}

/* The host side goes away with the client still sending: the relay's write
 * fails, and the client sees its connection end. */
static void test_peer_gone(void)
{
	struct guest_relay r;
	int c[2], s[2];
	joined(&r, c, s);
	close(s[0]);
	CHECK(write(c[0], "request", 7) == 7);
	for (int i = 0; i < MAX_STEPS && guest_relay_count(&r); i++)
		step(&r);
	CHECK(guest_relay_count(&r) == 0 && r.failed == 1);
	char b[8];
	CHECK(read(c[0], b, sizeof(b)) == 0);
	close(c[0]);
}

/* A TCP listener on 127.0.0.1; its port in |*port|. */
static int tcp_listener(uint16_t *port)
{
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sa);
	CHECK(l >= 0 && bind(l, (struct sockaddr *)&sa, sizeof(sa)) == 0 && listen(l, 4) == 0 &&
	      getsockname(l, (struct sockaddr *)&sa, &sl) == 0);
	*port = ntohs(sa.sin_port);
	return l;
}

/* A non-blocking connect to 127.0.0.1:|port|; |*under_way| when it returned
 * EINPROGRESS.  Returns the socket, or -1 if the connect failed at once. */
static int tcp_connect(uint16_t port, bool *under_way)
{
	int b = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int k = connect(b, (struct sockaddr *)&sa, sizeof(sa));
	*under_way = k < 0 && errno == EINPROGRESS;
	if (k < 0 && !*under_way) {
		close(b);
		return -1;
	}
	return b;
}

/* B still connecting: the client's bytes and its end of stream wait for the
 * connect, then go through; a refused connect ends the connection. */
static void test_connecting(void)
{
	struct guest_relay r;
	guest_relay_init(&r);
	uint16_t port;
	int l = tcp_listener(&port);
	int c[2];
	pair(c);
	bool under_way;
	int b = tcp_connect(port, &under_way);
	CHECK(b >= 0);
	CHECK(write(c[0], "GET /next", 9) == 9 && shutdown(c[0], SHUT_WR) == 0);
	CHECK(guest_relay_add(&r, c[1], b, under_way) == 0);
	int srv = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	CHECK(srv >= 0);
	char buf[32];
	size_t have = 0;
	ssize_t n = 1;
	for (int i = 0; i < MAX_STEPS && n != 0; i++) {
		step(&r);
		struct pollfd pf = { srv, POLLIN, 0 };
		if (poll(&pf, 1, 0) == 1 && (n = read(srv, buf + have, sizeof(buf) - have)) > 0)
			have += (size_t)n;
	}
	CHECK(n == 0 && have == 9 && memcmp(buf, "GET /next", 9) == 0);
	CHECK(write(srv, "ok", 2) == 2);
	close(srv);
	have = 0;
	n = 1;
	for (int i = 0; i < MAX_STEPS && n != 0; i++) {
		step(&r);
		if ((n = read(c[0], buf + have, sizeof(buf) - have)) > 0)
			have += (size_t)n;
	}
	CHECK(n == 0 && have == 2 && memcmp(buf, "ok", 2) == 0);
	for (int i = 0; i < MAX_STEPS && guest_relay_count(&r); i++)
		step(&r);
	CHECK(guest_relay_count(&r) == 0 && r.ended == 1);
	close(c[0]);

	/* Nobody listens any more: the connect is refused (now or later). */
	close(l);
	pair(c);
	b = tcp_connect(port, &under_way);
	if (b >= 0) {
		CHECK(under_way);
		CHECK(guest_relay_add(&r, c[1], b, true) == 0);
		for (int i = 0; i < MAX_STEPS && guest_relay_count(&r); i++)
			step(&r);
		CHECK(guest_relay_count(&r) == 0 && r.failed == 1);
		CHECK(read(c[0], buf, sizeof(buf)) == 0);
	} else {
		close(c[1]); /* refused at once: the init closes the client itself */
	}
	close(c[0]);
}

static bool is_open(int fd)
{
	return fcntl(fd, F_GETFD) >= 0;
}

/* GUEST_RELAY_MAX connections, then no more; cleanup ends them all. */
static void test_limit_and_cleanup(void)
{
	struct guest_relay r;
	guest_relay_init(&r);
	int ends[GUEST_RELAY_MAX][2];
	for (int i = 0; i < GUEST_RELAY_MAX; i++) {
		int c[2], s[2];
		pair(c);
		pair(s);
		ends[i][0] = c[0];
		ends[i][1] = s[0];
		CHECK(!guest_relay_full(&r));
		CHECK(guest_relay_add(&r, c[1], s[1], false) == 0);
	}
	CHECK(guest_relay_full(&r) && guest_relay_count(&r) == GUEST_RELAY_MAX);
	int c[2], s[2];
	pair(c);
	pair(s);
	CHECK(guest_relay_add(&r, c[1], s[1], false) == -EBUSY);
	CHECK(!is_open(c[1]) && !is_open(s[1]));
	close(c[0]);
	close(s[0]);
	CHECK(write(ends[5][0], "x", 1) == 1);
	for (int i = 0; i < 100; i++)
		step(&r);
	guest_relay_cleanup(&r);
	CHECK(guest_relay_count(&r) == 0);
	for (int i = 0; i < GUEST_RELAY_MAX; i++) {
		char b[4];
		ssize_t n = read(ends[i][0], b, sizeof(b));
		CHECK(n == 0);
		n = read(ends[i][1], b, sizeof(b));
		CHECK(n == (i == 5 ? 1 : 0));
		close(ends[i][0]);
		close(ends[i][1]);
	}
}

/* The reopen callback's side: each new stream is a socket pair, the relay
 * gets one end and the test keeps the other as the new "host". */
struct reopener {
	int host[4]; /* the host ends of the streams opened so far */
	int n;
	bool refuse;
};

static int reopen_pair(void *arg, int *out_fd, bool *out_connecting)
{
	struct reopener *ro = arg;
	if (ro->refuse || ro->n == 4)
		return -ECONNREFUSED;
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	ro->host[ro->n++] = sv[0];
	*out_fd = sv[1];
	*out_connecting = false;
	return 0;
}

/* A relay that can replay, with one connection (as joined()). */
static void joined_replay(struct guest_relay *r, struct reopener *ro, int c[2], int s[2])
{
	guest_relay_init(r);
	*ro = (struct reopener){ .n = 0 };
	guest_relay_set_reopen(r, reopen_pair, ro);
	pair(c);
	pair(s);
	CHECK(guest_relay_add(r, c[1], s[1], false) == 0);
}

/* Step |r| and read from |fd| until |want| bytes or its end of stream;
 * returns how many arrived in |buf|, with |*eof| set at the end. */
static size_t collect(struct guest_relay *r, int fd, uint8_t *buf, size_t want, bool *eof)
{
	size_t have = 0;
	*eof = false;
	for (int i = 0; i < MAX_STEPS && have < want && !*eof; i++) {
		step(r);
		ssize_t n = read(fd, buf + have, want - have);
		if (n > 0)
			have += (size_t)n;
		*eof = n == 0 || (n < 0 && errno != EAGAIN);
	}
	return have;
}

static const char next_req[] = "GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: 127.0.0.1:9001\r\n\r\n";

/* The runtime's long-poll, taken by the old stream and unanswered when the
 * snapshot was taken: the new stream gets it again, byte for byte, and the
 * answer goes back to the client on the same TCP connection. */
static void test_restart_replays_pending(void)
{
	struct guest_relay r;
	struct reopener ro;
	int c[2], s[2];
	joined_replay(&r, &ro, c, s);
	size_t len = strlen(next_req);
	uint8_t got[256];
	bool eof;
	CHECK(write(c[0], next_req, len) == (ssize_t)len);
	CHECK(collect(&r, s[0], got, len, &eof) == len && memcmp(got, next_req, len) == 0);
	close(s[0]); /* the transport reset: the old host side is gone */
	guest_relay_restart(&r);
	CHECK(guest_relay_count(&r) == 1 && r.replayed == 1 && r.failed == 0 && ro.n == 1);
	memset(got, 0, sizeof(got));
	CHECK(collect(&r, ro.host[0], got, sizeof(got), &eof) == len && memcmp(got, next_req, len) == 0);
	static const char answer[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
	CHECK(write(ro.host[0], answer, strlen(answer)) == (ssize_t)strlen(answer));
	CHECK(collect(&r, c[0], got, strlen(answer), &eof) == strlen(answer) && memcmp(got, answer, strlen(answer)) == 0);

	/* Answered in full, then the next request (a keep-alive connection):
	 * only the new request is replayed after a second restore. */
	static const char second[] = "POST /2018-06-01/runtime/invocation/1/response HTTP/1.1\r\n\r\nok";
	CHECK(write(c[0], second, strlen(second)) == (ssize_t)strlen(second));
	CHECK(collect(&r, ro.host[0], got, strlen(second), &eof) == strlen(second));
	close(ro.host[0]);
	guest_relay_restart(&r);
	CHECK(guest_relay_count(&r) == 1 && r.replayed == 2 && ro.n == 2);
	memset(got, 0, sizeof(got));
	CHECK(collect(&r, ro.host[1], got, sizeof(got), &eof) == strlen(second) &&
	      memcmp(got, second, strlen(second)) == 0);
	guest_relay_cleanup(&r);
	close(ro.host[1]);
	close(c[0]);
}

/* Bytes the old stream never took (they waited in the relay's buffer or in
 * the client's socket), more bytes after the restore, and the client's end
 * of stream: the new stream gets them all, in order, then the end. */
static void test_restart_unsent_and_eof(void)
{
	struct guest_relay r;
	struct reopener ro;
	int c[2], s[2];
	joined_replay(&r, &ro, c, s);
	CHECK(write(c[0], "GET /a", 6) == 6);
	step(&r);
	CHECK(write(c[0], "bc HTTP/1.0\r\n", 13) == 13); /* not yet read by the relay */
	close(s[0]);
	guest_relay_restart(&r);
	CHECK(r.replayed == 1 && guest_relay_count(&r) == 1);
	CHECK(write(c[0], "\r\n", 2) == 2 && shutdown(c[0], SHUT_WR) == 0);
	uint8_t got[64];
	bool eof;
	size_t n = collect(&r, ro.host[0], got, sizeof(got), &eof);
	CHECK(eof && n == 21 && memcmp(got, "GET /abc HTTP/1.0\r\n\r\n", 21) == 0);
	/* Half-closed, a restore again: the bytes and the end are replayed. */
	close(ro.host[0]);
	guest_relay_restart(&r);
	n = collect(&r, ro.host[1], got, sizeof(got), &eof);
	CHECK(eof && n == 21 && memcmp(got, "GET /abc HTTP/1.0\r\n\r\n", 21) == 0 && r.replayed == 2);
	CHECK(write(ro.host[1], "done", 4) == 4 && shutdown(ro.host[1], SHUT_WR) == 0);
	n = collect(&r, c[0], got, sizeof(got), &eof);
	CHECK(eof && n == 4 && memcmp(got, "done", 4) == 0);
	for (int i = 0; i < MAX_STEPS && guest_relay_count(&r); i++)
		step(&r);
	CHECK(guest_relay_count(&r) == 0 && r.ended == 1 && r.failed == 0);
	close(ro.host[1]);
	close(c[0]);
}

/* Reset, never replayed: a connection answered in part, and one whose
 * request went past the bound; without a reopen callback, or when it fails,
 * every connection is reset.  A connection at exactly the bound is
 * replayed. */
static void test_restart_resets(void)
{
	struct guest_relay r;
	struct reopener ro;
	int c[2], s[2];
	uint8_t got[64];
	bool eof;

	/* Mid-response. */
	joined_replay(&r, &ro, c, s);
	CHECK(write(c[0], "GET / HTTP/1.1\r\n\r\n", 18) == 18);
	CHECK(collect(&r, s[0], got, 18, &eof) == 18);
	CHECK(write(s[0], "HTTP/1.1 200 OK\r\n", 17) == 17);
	CHECK(collect(&r, c[0], got, 17, &eof) == 17);
	close(s[0]);
	guest_relay_restart(&r);
	CHECK(guest_relay_count(&r) == 0 && r.failed == 1 && r.replayed == 0 && ro.n == 0);
	ssize_t k = read(c[0], got, sizeof(got));
	CHECK(k == 0 || (k < 0 && errno == ECONNRESET)); /* a TCP client sees ECONNRESET */
	close(c[0]);

	/* Answer bytes passed on to the client, which has not read them yet:
	 * as mid-response. */
	joined_replay(&r, &ro, c, s);
	CHECK(write(c[0], "GET", 3) == 3);
	CHECK(collect(&r, s[0], got, 3, &eof) == 3);
	CHECK(write(s[0], "HTTP", 4) == 4);
	for (int i = 0; i < 100; i++)
		step(&r);
	CHECK(r.bytes[1] == 4);
	close(s[0]);
	guest_relay_restart(&r);
	CHECK(guest_relay_count(&r) == 0 && r.failed == 1 && ro.n == 0);
	close(c[0]);

	/* The bound: exactly GUEST_RELAY_REPLAY_MAX bytes are replayed, one
	 * more is not. */
	for (size_t extra = 0; extra < 2; extra++) {
		size_t len = GUEST_RELAY_REPLAY_MAX + extra;
		uint8_t *req = pattern(len, 9), *back = calloc(1, len + 1);
		joined_replay(&r, &ro, c, s);
		struct flow f = { .src = req, .dst = back, .len = len, .wfd = c[0], .rfd = s[0] };
		for (int i = 0; i < MAX_STEPS && f.got < len; i++) {
			flow_turn(&f);
			step(&r);
		}
		CHECK(f.got == len);
		close(s[0]);
		guest_relay_restart(&r);
		if (extra == 0) {
			CHECK(r.replayed == 1 && guest_relay_count(&r) == 1);
			memset(back, 0, len);
			CHECK(collect(&r, ro.host[0], back, len + 1, &eof) == len && memcmp(back, req, len) == 0);
			guest_relay_cleanup(&r);
			close(ro.host[0]);
		} else {
			CHECK(r.replayed == 0 && r.failed == 1 && guest_relay_count(&r) == 0 && ro.n == 0);
		}
		close(c[0]);
		free(req);
		free(back);
	}

	/* The new stream cannot be opened: reset. */
	joined_replay(&r, &ro, c, s);
	ro.refuse = true;
	CHECK(write(c[0], "GET", 3) == 3);
	step(&r);
	close(s[0]);
	guest_relay_restart(&r);
	CHECK(guest_relay_count(&r) == 0 && r.failed == 1);
	CHECK(read(c[0], got, sizeof(got)) <= 0);
	close(c[0]);

	/* No reopen callback: every connection is reset, as before restores. */
	joined(&r, c, s);
	CHECK(write(c[0], "GET", 3) == 3);
	step(&r);
	close(s[0]);
	guest_relay_restart(&r);
	CHECK(guest_relay_count(&r) == 0 && r.failed == 1 && r.replayed == 0);
	close(c[0]);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	test_both_ways_and_half_close();
	test_bounded();
	test_peer_gone();
	test_connecting();
	test_limit_and_cleanup();
	test_restart_replays_pending();
	test_restart_unsent_and_eof();
	test_restart_resets();
	return check_report();
}
