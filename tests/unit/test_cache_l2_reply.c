/* The memcached reply parser (cache/l2_reply.c): whole replies, replies cut
 * at every byte, values received straight into the parser's window, and
 * every kind of broken reply a node could send. */
/* ctest-labels: no-tsan (single-threaded: nothing for ThreadSanitizer to check) */
#include "cache/internal.h"
#include "tests/check.h"

#include <string.h>

#define KEY "kc:abc.1"

struct parsed {
	struct l2_reply r;
	uint8_t hdr[4];
	uint8_t data[64];
	size_t used;
};

/* Feed |<in, n>| in pieces of |piece| bytes (0 = all at once); with
 * |direct|, value bytes go through the window as recv() would put them. */
static void parse(struct parsed *p, const char *in, size_t n, size_t piece, bool direct)
{
	memset(p, 0, sizeof(*p));
	l2_reply_init(&p->r, KEY, strlen(KEY), sizeof(p->data) + sizeof(p->hdr), p->hdr, sizeof(p->hdr));
	size_t off = 0;
	while (off < n && p->r.state != L2R_DONE) {
		size_t take = piece && n - off > piece ? piece : n - off;
		size_t win;
		uint8_t *w = direct ? l2_reply_window(&p->r, &win) : NULL;
		if (w) {
			take = take < win ? take : win;
			memcpy(w, in + off, take);
			l2_reply_advance(&p->r, take);
			off += take;
			continue;
		}
		off += l2_reply_feed(&p->r, (const uint8_t *)in + off, take);
		if (p->r.state == L2R_NEED_DST)
			l2_reply_set_data(&p->r, p->data);
	}
	p->used = off;
}

static void check_all_ways(const char *in, enum l2_reply_result want, size_t want_used)
{
	size_t n = strlen(in);
	for (size_t piece = 0; piece <= 9; piece++)
		for (int direct = 0; direct < 2; direct++) {
			struct parsed p;
			parse(&p, in, n, piece, direct);
			CHECK(p.r.state == L2R_DONE);
			CHECK(p.r.result == want);
			if (want == L2R_HIT || want == L2R_MISS)
				CHECK(p.used == want_used);
		}
}

static void test_hit(void)
{
	const char *in = "VALUE " KEY " 0 10\r\nHDR!abcdef\r\nEND\r\n";
	for (size_t piece = 0; piece <= 7; piece++)
		for (int direct = 0; direct < 2; direct++) {
			struct parsed p;
			parse(&p, in, strlen(in), piece, direct);
			CHECK(p.r.state == L2R_DONE && p.r.result == L2R_HIT);
			CHECK(p.r.value_len == 10 && p.r.got == 10);
			CHECK(memcmp(p.hdr, "HDR!", 4) == 0);
			CHECK(memcmp(p.data, "abcdef", 6) == 0);
			CHECK(p.used == strlen(in));
		}
	check_all_ways("VALUE " KEY " 42 10 987654321\r\nHDR!abcdef\r\nEND\r\n", L2R_HIT,
		       strlen("VALUE " KEY " 42 10 987654321\r\nHDR!abcdef\r\nEND\r\n"));
	/* A value no longer than the header, and an empty one. */
	check_all_ways("VALUE " KEY " 0 3\r\nHDR\r\nEND\r\n", L2R_HIT, strlen("VALUE " KEY " 0 3\r\nHDR\r\nEND\r\n"));
	check_all_ways("VALUE " KEY " 0 0\r\n\r\nEND\r\n", L2R_HIT, strlen("VALUE " KEY " 0 0\r\n\r\nEND\r\n"));
}

static void test_discard(void)
{
	const char *in = "VALUE " KEY " 0 10\r\nHDR!abcdef\r\nEND\r\n";
	struct l2_reply r;
	uint8_t hdr[4];
	l2_reply_init(&r, KEY, strlen(KEY), 100, hdr, sizeof(hdr));
	size_t used = l2_reply_feed(&r, (const uint8_t *)in, strlen(in));
	CHECK(r.state == L2R_NEED_DST);
	l2_reply_set_data(&r, NULL);
	size_t win;
	CHECK(l2_reply_window(&r, &win) == NULL); /* dropped bytes have no window */
	used += l2_reply_feed(&r, (const uint8_t *)in + used, strlen(in) - used);
	CHECK(r.state == L2R_DONE && r.result == L2R_HIT && used == strlen(in));
}

static void test_miss_and_errors(void)
{
	check_all_ways("END\r\n", L2R_MISS, 5);
	check_all_ways("SERVER_ERROR out of memory\r\n", L2R_SERVER_ERROR, 0);
	check_all_ways("CLIENT_ERROR line too long\r\n", L2R_SERVER_ERROR, 0);
	check_all_ways("ERROR\r\n", L2R_SERVER_ERROR, 0);
	/* A reply stops where it ends: the parser does not eat the next one. */
	struct parsed p;
	parse(&p, "END\r\nEND\r\n", 10, 0, false);
	CHECK(p.r.result == L2R_MISS && p.used == 5);
}

static void test_broken(void)
{
	const char *bad[] = {
		"VALUE kc:abc.2 0 10\r\nHDR!abcdef\r\nEND\r\n", /* another key */
		"VALUE " KEY " 0 69\r\n",			 /* larger than max_value (68) */
		"VALUE " KEY " 0 99999999999999999999999\r\n",	 /* overflows */
		"VALUE " KEY " 0 -1\r\n",
		"VALUE " KEY " x 10\r\n",
		"VALUE " KEY " 0\r\n",				 /* no length */
		"VALUE " KEY " 0 10 1 2\r\n",			 /* too many fields */
		"VALUE  " KEY " 0 10\r\n",			 /* empty field */
		"VALUE " KEY " 0 10 \r\n",			 /* trailing space */
		"VALUE " KEY " 0 10\r\nHDR!abcdef\r\nEXD\r\n",	 /* broken trailer */
		"VALUE " KEY " 0 10\r\nHDR!abcdefg\r\nEND\r\n",	 /* value longer than announced */
		"END\n",					 /* LF without CR */
		"STORED\r\n",					 /* not a reply to get */
		"",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (!*bad[i])
			continue;
		for (size_t piece = 0; piece <= 3; piece++) {
			struct parsed p;
			parse(&p, bad[i], strlen(bad[i]), piece, piece & 1);
			CHECK(p.r.state == L2R_DONE);
			CHECK(p.r.result == L2R_PROTO);
		}
	}
	/* A line longer than any reply line is refused, not buffered. */
	char longline[600];
	memset(longline, 'x', sizeof(longline));
	struct parsed p;
	parse(&p, longline, sizeof(longline), 0, false);
	CHECK(p.r.state == L2R_DONE && p.r.result == L2R_PROTO && p.used <= sizeof(p.r.line));
	/* A truncated reply is simply not done. */
	parse(&p, "VALUE " KEY " 0 10\r\nHDR!ab", strlen("VALUE " KEY " 0 10\r\nHDR!ab"), 0, true);
	CHECK(p.r.state == L2R_VALUE);
}

int main(void)
{
	test_hit();
	test_discard();
	test_miss_and_errors();
	test_broken();
	return check_report();
}
