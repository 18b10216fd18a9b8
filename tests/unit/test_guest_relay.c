/* The guest init's Runtime API relay (vmm/guest/relay.c), over real sockets:
 * unix socket pairs for both ends, and a TCP connect still under way for the
 * host side.  Bytes pass unchanged both ways in amounts far beyond the
 * buffers; a half-close reaches the other side while the other direction
 * keeps flowing; a reader that stops reading stops the relay's reads (the
 * buffers stay bounded) and everything arrives once it reads again; a side
 * that goes away ends the connection for the other; a refused connect ends
 * it; the connection limit holds; cleanup ends every connection.  Every loop
 * is bounded by a step count, never by time. */
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

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	test_both_ways_and_half_close();
	test_bounded();
	test_peer_gone();
	test_connecting();
	test_limit_and_cleanup();
	return check_report();
}
