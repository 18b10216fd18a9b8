/* The invocation channel's codec (vmm/guest/protocol.c): frames round-trip
 * through a pipe in every split, the decoder refuses what the protocol
 * forbids before buffering it, the invocation collector enforces order
 * and limits, 'S' (restored) is refused in every way it can be wrong and
 * taken only with a growing generation, and the reconnect schedule backs off
 * to a bounded total. */
/* ctest-labels: no-tsan (single-threaded: nothing for ThreadSanitizer to check) */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/check.h"
#include "vmm/guest/protocol.h"

/* Decode all of |<p, len>| feeding |step| bytes at a time (0 = all at once)
 * into |frames| (up to |max|).  Returns the frame count, or the error. */
static int decode_all(enum guest_direction dir, const uint8_t *p, size_t len, size_t step, struct guest_frame *frames,
		      uint8_t (*copies)[64], int max, bool *idle)
{
	struct guest_decoder d;
	guest_decoder_init(&d, dir);
	int n = 0;
	size_t off = 0;
	while (off < len) {
		size_t chunk = step && step < len - off ? step : len - off;
		size_t pos = 0;
		while (pos < chunk) {
			size_t used;
			struct guest_frame f;
			int r = guest_decoder_feed(&d, p + off + pos, chunk - pos, &used, &f);
			pos += used;
			if (r < 0) {
				guest_decoder_cleanup(&d);
				return r;
			}
			if (r == 1 && n < max) {
				frames[n] = f;
				/* The payload is only valid until the next feed. */
				memcpy(copies[n], f.payload, f.len < 64 ? f.len : 64);
				frames[n].payload = copies[n];
				n++;
			}
			if (r == 0 && used == 0)
				break;
		}
		off += chunk;
	}
	*idle = guest_decoder_idle(&d);
	guest_decoder_cleanup(&d);
	return n;
}

static size_t put(uint8_t *buf, size_t off, uint8_t type, const void *p, uint32_t len)
{
	guest_frame_header(buf + off, type, len);
	if (len)
		memcpy(buf + off + GUEST_FRAME_HDR_LEN, p, len);
	return off + GUEST_FRAME_HDR_LEN + len;
}

static void test_roundtrip_splits(void)
{
	uint8_t buf[256];
	size_t n = 0;
	uint8_t x[GUEST_EXIT_LEN];
	guest_exit_encode(x, -1, 9);
	n = put(buf, n, 'O', "hello\n", 6);
	n = put(buf, n, 'R', "err", 3);
	n = put(buf, n, 'F', "mount /dev/vda: No such device", 30);
	n = put(buf, n, 'X', x, GUEST_EXIT_LEN);
	for (size_t step = 0; step <= 7; step++) {
		struct guest_frame f[8];
		uint8_t copies[8][64];
		bool idle = false;
		int got = decode_all(GUEST_DIR_GUEST_TO_HOST, buf, n, step, f, copies, 8, &idle);
		CHECK(got == 4);
		CHECK(idle);
		if (got != 4)
			continue;
		CHECK(f[0].type == 'O' && f[0].len == 6 && memcmp(f[0].payload, "hello\n", 6) == 0);
		CHECK(f[1].type == 'R' && f[1].len == 3);
		CHECK(f[2].type == 'F' && f[2].len == 30);
		int32_t code = 0, sig = 0;
		CHECK(f[3].type == 'X' && guest_exit_decode(f[3].payload, f[3].len, &code, &sig) == 0);
		CHECK(code == -1 && sig == 9);
	}
	/* A partial frame at the end is not idle. */
	struct guest_frame f[8];
	uint8_t copies[8][64];
	bool idle = true;
	CHECK(decode_all(GUEST_DIR_GUEST_TO_HOST, buf, 14, 1, f, copies, 8, &idle) == 1 && !idle);
	CHECK(decode_all(GUEST_DIR_GUEST_TO_HOST, buf, 3, 1, f, copies, 8, &idle) == 0 && !idle);
}

static int decode_one(enum guest_direction dir, const uint8_t *p, size_t len, const char **why)
{
	struct guest_decoder d;
	guest_decoder_init(&d, dir);
	size_t used;
	struct guest_frame f;
	int r = guest_decoder_feed(&d, p, len, &used, &f);
	*why = guest_decoder_error(&d);
	/* Errors are sticky. */
	if (r < 0) {
		int r2 = guest_decoder_feed(&d, p, len, &used, &f);
		CHECK(r2 == r && used == 0);
	}
	guest_decoder_cleanup(&d);
	return r;
}

static void test_refusals(void)
{
	uint8_t buf[64];
	const char *why;
	size_t n;

	/* Types of the other direction, and unknown ones. */
	n = put(buf, 0, 'A', "ls", 2);
	CHECK(decode_one(GUEST_DIR_GUEST_TO_HOST, buf, n, &why) == -EPROTO && strstr(why, "unknown"));
	n = put(buf, 0, 'O', "x", 1);
	CHECK(decode_one(GUEST_DIR_HOST_TO_GUEST, buf, n, &why) == -EPROTO);
	n = put(buf, 0, 'Z', "", 0);
	CHECK(decode_one(GUEST_DIR_HOST_TO_GUEST, buf, n, &why) == -EPROTO);
	CHECK(decode_one(GUEST_DIR_GUEST_TO_HOST, buf, n, &why) == -EPROTO);

	/* Too long: refused from the header alone, before any payload. */
	guest_frame_header(buf, 'O', GUEST_FRAME_MAX + 1);
	CHECK(decode_one(GUEST_DIR_GUEST_TO_HOST, buf, GUEST_FRAME_HDR_LEN, &why) == -EMSGSIZE);
	guest_frame_header(buf, 'A', 0xffffffffu);
	CHECK(decode_one(GUEST_DIR_HOST_TO_GUEST, buf, GUEST_FRAME_HDR_LEN, &why) == -EMSGSIZE);
	/* Exactly the maximum is fine as far as the header goes. */
	{
		struct guest_decoder d;
		guest_decoder_init(&d, GUEST_DIR_GUEST_TO_HOST);
		guest_frame_header(buf, 'O', GUEST_FRAME_MAX);
		size_t used;
		struct guest_frame f;
		CHECK(guest_decoder_feed(&d, buf, GUEST_FRAME_HDR_LEN, &used, &f) == 0 && used == GUEST_FRAME_HDR_LEN);
		CHECK(!guest_decoder_idle(&d));
		guest_decoder_cleanup(&d);
	}

	/* Per-type payload rules. */
	n = put(buf, 0, 'G', "x", 1);
	CHECK(decode_one(GUEST_DIR_HOST_TO_GUEST, buf, n, &why) == -EPROTO);
	n = put(buf, 0, 'X', "1234567", 7);
	CHECK(decode_one(GUEST_DIR_GUEST_TO_HOST, buf, n, &why) == -EPROTO && strstr(why, "8 bytes"));
	n = put(buf, 0, 'E', "NOEQUALS", 8);
	CHECK(decode_one(GUEST_DIR_HOST_TO_GUEST, buf, n, &why) == -EPROTO);
	n = put(buf, 0, 'E', "=v", 2);
	CHECK(decode_one(GUEST_DIR_HOST_TO_GUEST, buf, n, &why) == -EPROTO);
	n = put(buf, 0, 'E', "K=", 2);
	CHECK(decode_one(GUEST_DIR_HOST_TO_GUEST, buf, n, &why) == 1);
	n = put(buf, 0, 'A', "a\0b", 3);
	CHECK(decode_one(GUEST_DIR_HOST_TO_GUEST, buf, n, &why) == -EPROTO && strstr(why, "NUL"));
	n = put(buf, 0, 'A', "", 0);
	CHECK(decode_one(GUEST_DIR_HOST_TO_GUEST, buf, n, &why) == 1);
	n = put(buf, 0, 'W', "tmp", 3);
	CHECK(decode_one(GUEST_DIR_HOST_TO_GUEST, buf, n, &why) == -EPROTO);
	n = put(buf, 0, 'U', "", 0);
	CHECK(decode_one(GUEST_DIR_HOST_TO_GUEST, buf, n, &why) == -EPROTO);
	n = put(buf, 0, 'O', "", 0);
	CHECK(decode_one(GUEST_DIR_GUEST_TO_HOST, buf, n, &why) == -EPROTO);
	n = put(buf, 0, 'O', "\0\1\2", 3);
	CHECK(decode_one(GUEST_DIR_GUEST_TO_HOST, buf, n, &why) == 1);
	n = put(buf, 0, 'F', "", 0);
	CHECK(decode_one(GUEST_DIR_GUEST_TO_HOST, buf, n, &why) == -EPROTO);

	/* 'P': exactly 6 bytes, both ports usable, host to guest only. */
	uint8_t ap[GUEST_API_LEN];
	struct guest_api api = { .tcp_port = 9001, .vsock_port = 1025 }, back;
	guest_api_encode(ap, &api);
	CHECK(ap[0] == 0x29 && ap[1] == 0x23 && ap[2] == 0x01 && ap[3] == 0x04 && ap[4] == 0 && ap[5] == 0);
	n = put(buf, 0, 'P', ap, GUEST_API_LEN);
	CHECK(decode_one(GUEST_DIR_HOST_TO_GUEST, buf, n, &why) == 1);
	CHECK(decode_one(GUEST_DIR_GUEST_TO_HOST, buf, n, &why) == -EPROTO);
	n = put(buf, 0, 'P', ap, GUEST_API_LEN - 1);
	CHECK(decode_one(GUEST_DIR_HOST_TO_GUEST, buf, n, &why) == -EPROTO && strstr(why, "6 bytes"));
	CHECK(guest_api_decode(ap, GUEST_API_LEN, &back) == 0 && back.tcp_port == 9001 && back.vsock_port == 1025);
	static const struct guest_api bad_api[] = { { 0, 1025 }, { 9001, 0 }, { 9001, 0xffffffffu } };
	for (size_t i = 0; i < sizeof(bad_api) / sizeof(bad_api[0]); i++) {
		guest_api_encode(ap, &bad_api[i]);
		n = put(buf, 0, 'P', ap, GUEST_API_LEN);
		CHECK(decode_one(GUEST_DIR_HOST_TO_GUEST, buf, n, &why) == -EPROTO && strstr(why, "port"));
		CHECK(guest_api_decode(ap, GUEST_API_LEN, &back) == -EPROTO);
	}

	int32_t c, s;
	CHECK(guest_exit_decode(buf, 7, &c, &s) == -EPROTO);
	CHECK(guest_frame_send(-1, 'O', buf, (size_t)GUEST_FRAME_MAX + 1) == -EMSGSIZE);
}

/* Add a frame of |type| with text |s| to |inv|. */
static int add(struct guest_invocation *inv, uint8_t type, const char *s, const char **why)
{
	struct guest_frame f = { .type = type, .payload = (const uint8_t *)s, .len = (uint32_t)strlen(s) };
	return guest_invocation_add(inv, &f, why);
}

static void test_invocation(void)
{
	struct guest_invocation inv;
	const char *why;
	guest_invocation_init(&inv);
	CHECK(add(&inv, 'G', "", &why) == -EPROTO); /* nothing to run */
	for (int i = 0; i < 9; i++)
		CHECK(add(&inv, 'A', i == 0 ? "/bin/sh" : "x", &why) == 0);
	CHECK(add(&inv, 'E', "A=1", &why) == 0);
	CHECK(add(&inv, 'W', "/app", &why) == 0);
	CHECK(add(&inv, 'W', "/tmp", &why) == -EPROTO);
	CHECK(add(&inv, 'U', "1000:1000", &why) == 0);
	CHECK(add(&inv, 'U', "0", &why) == -EPROTO);
	CHECK(add(&inv, 'O', "out", &why) == -EPROTO);
	uint8_t ap[GUEST_API_LEN];
	guest_api_encode(ap, &(struct guest_api){ .tcp_port = 0, .vsock_port = 1025 });
	struct guest_frame pf = { .type = 'P', .payload = ap, .len = GUEST_API_LEN };
	CHECK(guest_invocation_add(&inv, &pf, &why) == -EPROTO && inv.api.tcp_port == 0);
	guest_api_encode(ap, &(struct guest_api){ .tcp_port = 8080, .vsock_port = 5000 });
	CHECK(guest_invocation_add(&inv, &pf, &why) == 0);
	CHECK(guest_invocation_add(&inv, &pf, &why) == -EPROTO && strstr(why, "second"));
	CHECK(add(&inv, 'G', "", &why) == 1 && inv.complete);
	CHECK(add(&inv, 'A', "late", &why) == -EPROTO && strstr(why, "after"));
	CHECK(inv.argc == 9 && strcmp(inv.argv[0], "/bin/sh") == 0 && inv.argv[9] == NULL);
	CHECK(inv.envc == 1 && strcmp(inv.envp[0], "A=1") == 0 && inv.envp[1] == NULL);
	CHECK(strcmp(inv.workdir, "/app") == 0 && strcmp(inv.user, "1000:1000") == 0);
	CHECK(inv.api.tcp_port == 8080 && inv.api.vsock_port == 5000);
	guest_invocation_cleanup(&inv);
	CHECK(inv.api.tcp_port == 0);
	CHECK(inv.argc == 0 && inv.argv == NULL);

	/* Limits: the argument count, then the total size. */
	guest_invocation_init(&inv);
	int r = 0, i;
	for (i = 0; i <= GUEST_INV_MAX_ARGS && r == 0; i++)
		r = add(&inv, 'A', "a", &why);
	CHECK(r == -E2BIG && i == GUEST_INV_MAX_ARGS + 1 && inv.argc == GUEST_INV_MAX_ARGS);
	guest_invocation_cleanup(&inv);
	char *big = malloc(GUEST_FRAME_MAX);
	CHECK(big != NULL);
	if (big) {
		memset(big, 'v', GUEST_FRAME_MAX - 1);
		big[0] = 'K';
		big[1] = '=';
		big[GUEST_FRAME_MAX - 1] = '\0';
		r = 0;
		for (i = 0; i < 16 && r == 0; i++)
			r = add(&inv, 'E', big, &why);
		CHECK(r == -E2BIG && inv.bytes <= GUEST_INV_MAX_BYTES && inv.envc == 8);
		guest_invocation_cleanup(&inv);
		free(big);
	}
}

static struct guest_restore sample_restore(uint64_t generation)
{
	struct guest_restore rs = { .generation = generation };
	for (int i = 0; i < GUEST_SEED_LEN; i++)
		rs.seed[i] = (uint8_t)(0xa0 + i);
	return rs;
}

/* 'S': its layout, every refusal in the decoder, in guest_restore_decode(),
 * in guest_restore_take() and in guest_restore_send(), and where it may come. */
static void test_restore(void)
{
	uint8_t p[GUEST_RESTORE_LEN], buf[128];
	const char *why;
	struct guest_restore rs = sample_restore(0x0102030405060708ull), back;
	guest_restore_encode(p, &rs);
	CHECK(p[0] == 0x08 && p[7] == 0x01 && p[8] == 0xa0 && p[39] == 0xa0 + 31);
	CHECK(guest_restore_decode(p, sizeof(p), &back) == 0 && back.generation == rs.generation &&
	      memcmp(back.seed, rs.seed, GUEST_SEED_LEN) == 0);

	/* The decoder: host to guest only, exactly 40 bytes, generation and seed set. */
	size_t n = put(buf, 0, 'S', p, GUEST_RESTORE_LEN);
	CHECK(decode_one(GUEST_DIR_HOST_TO_GUEST, buf, n, &why) == 1);
	CHECK(decode_one(GUEST_DIR_GUEST_TO_HOST, buf, n, &why) == -EPROTO && strstr(why, "unknown"));
	n = put(buf, 0, 'S', p, GUEST_RESTORE_LEN - 1);
	CHECK(decode_one(GUEST_DIR_HOST_TO_GUEST, buf, n, &why) == -EPROTO && strstr(why, "40 bytes"));
	CHECK(guest_restore_decode(p, GUEST_RESTORE_LEN - 1, &back) == -EPROTO);
	guest_frame_header(buf, 'S', GUEST_RESTORE_LEN + 1); /* refused from the header alone */
	CHECK(decode_one(GUEST_DIR_HOST_TO_GUEST, buf, GUEST_FRAME_HDR_LEN, &why) == -EPROTO &&
	      strstr(why, "40 bytes"));
	n = put(buf, 0, 'S', "", 0);
	CHECK(decode_one(GUEST_DIR_HOST_TO_GUEST, buf, n, &why) == -EPROTO);
	struct guest_restore gen0 = sample_restore(0), zero_seed = { .generation = 1 };
	const struct guest_restore *bad[] = { &gen0, &zero_seed };
	for (size_t i = 0; i < 2; i++) {
		guest_restore_encode(p, bad[i]);
		n = put(buf, 0, 'S', p, GUEST_RESTORE_LEN);
		CHECK(decode_one(GUEST_DIR_HOST_TO_GUEST, buf, n, &why) == -EPROTO && strstr(why, "'S'"));
		CHECK(guest_restore_decode(p, GUEST_RESTORE_LEN, &back) == -EPROTO);
		CHECK(guest_frame_check(GUEST_DIR_HOST_TO_GUEST, 'S', p, GUEST_RESTORE_LEN, NULL) == -EPROTO);
		CHECK(guest_restore_send(-1, bad[i]) == -EINVAL); /* refused before any write */
	}
	/* One set seed byte is enough. */
	zero_seed.seed[GUEST_SEED_LEN - 1] = 1;
	guest_restore_encode(p, &zero_seed);
	CHECK(guest_restore_decode(p, GUEST_RESTORE_LEN, &back) == 0 && back.generation == 1);

	/* Not part of an invocation: before 'G' it is refused, after it the
	 * collector refuses everything. */
	struct guest_invocation inv;
	guest_invocation_init(&inv);
	guest_restore_encode(p, &rs);
	struct guest_frame sf = { .type = 'S', .payload = p, .len = GUEST_RESTORE_LEN };
	CHECK(guest_invocation_add(&inv, &sf, &why) == -EPROTO && strstr(why, "before 'G'"));
	struct guest_frame af = { .type = 'A', .payload = (const uint8_t *)"x", .len = 1 };
	struct guest_frame gf = { .type = 'G', .payload = (const uint8_t *)"", .len = 0 };
	CHECK(guest_invocation_add(&inv, &af, &why) == 0);
	CHECK(guest_invocation_add(&inv, &sf, &why) == -EPROTO && !inv.complete);
	CHECK(guest_invocation_add(&inv, &gf, &why) == 1);
	CHECK(guest_invocation_add(&inv, &sf, &why) == -EPROTO && strstr(why, "after 'G'"));
	guest_invocation_cleanup(&inv);

	/* After 'G': only 'S', each generation above the last. */
	uint64_t gen = 0;
	struct guest_restore got;
	rs = sample_restore(1);
	guest_restore_encode(p, &rs);
	CHECK(guest_restore_take(&gen, &sf, &got, &why) == 0 && gen == 1 && got.generation == 1 &&
	      memcmp(got.seed, rs.seed, GUEST_SEED_LEN) == 0);
	CHECK(guest_restore_take(&gen, &sf, &got, &why) == -EPROTO && strstr(why, "not above") && gen == 1);
	rs = sample_restore(7); /* generations may skip: a snapshot's restores are numbered by the host */
	guest_restore_encode(p, &rs);
	CHECK(guest_restore_take(&gen, &sf, &got, NULL) == 0 && gen == 7);
	rs = sample_restore(3);
	guest_restore_encode(p, &rs);
	CHECK(guest_restore_take(&gen, &sf, &got, &why) == -EPROTO && gen == 7);
	CHECK(guest_restore_take(&gen, &af, &got, &why) == -EPROTO && strstr(why, "other than 'S'"));
	CHECK(guest_restore_take(&gen, &gf, &got, &why) == -EPROTO && gen == 7);
	sf.len = GUEST_RESTORE_LEN - 1; /* a frame that did not come through the decoder */
	rs = sample_restore(8);
	guest_restore_encode(p, &rs);
	CHECK(guest_restore_take(&gen, &sf, &got, &why) == -EPROTO && gen == 7);
	guest_restore_encode(p, &gen0);
	sf.len = GUEST_RESTORE_LEN;
	CHECK(guest_restore_take(&gen, &sf, &got, &why) == -EPROTO && gen == 7);

	/* guest_restore_send() through a pipe, split in small reads, and the
	 * decoder with guest_restore_take() on the other end. */
	int pp[2];
	CHECK(pipe(pp) == 0);
	rs = sample_restore(2);
	struct guest_restore rs2 = sample_restore(3);
	rs2.seed[5] = 0;
	CHECK(guest_restore_send(pp[1], &rs) == 0 && guest_restore_send(pp[1], &rs2) == 0);
	close(pp[1]);
	struct guest_decoder d;
	guest_decoder_init(&d, GUEST_DIR_HOST_TO_GUEST);
	gen = 1;
	int taken = 0;
	uint8_t small[3];
	ssize_t k;
	while ((k = read(pp[0], small, sizeof(small))) > 0) {
		size_t pos = 0;
		while (pos < (size_t)k) {
			size_t used;
			struct guest_frame f;
			int r = guest_decoder_feed(&d, small + pos, (size_t)k - pos, &used, &f);
			pos += used;
			CHECK(r >= 0);
			if (r <= 0)
				break;
			CHECK(guest_restore_take(&gen, &f, &got, NULL) == 0);
			const struct guest_restore *want = taken == 0 ? &rs : &rs2;
			CHECK(got.generation == want->generation && memcmp(got.seed, want->seed, GUEST_SEED_LEN) == 0);
			taken++;
		}
	}
	CHECK(taken == 2 && gen == 3 && guest_decoder_idle(&d));
	guest_decoder_cleanup(&d);
	close(pp[0]);
}

/* The reconnect schedule: doubling waits, capped, cut to the total, then
 * give up (and stay given up). */
static void test_backoff(void)
{
	struct guest_backoff b;
	guest_backoff_init(&b);
	unsigned d, sum = 0, prev = 0, steps = 0;
	int r;
	while ((r = guest_backoff_next(&b, &d)) == 0 && steps < 10000) {
		CHECK(d > 0 && d <= GUEST_RECONNECT_STEP_MS);
		if (steps == 0)
			CHECK(d == GUEST_RECONNECT_FIRST_MS);
		else if (sum + GUEST_RECONNECT_STEP_MS <= GUEST_RECONNECT_TOTAL_MS)
			CHECK(d == (prev * 2 < GUEST_RECONNECT_STEP_MS ? prev * 2 : GUEST_RECONNECT_STEP_MS));
		sum += d;
		prev = d;
		steps++;
	}
	CHECK(r == -ETIMEDOUT && sum == GUEST_RECONNECT_TOTAL_MS && b.waited_ms == sum && b.attempts == steps);
	CHECK(steps > 10 && steps < 100); /* many tries, but a bounded number */
	CHECK(guest_backoff_next(&b, &d) == -ETIMEDOUT && b.attempts == steps);
	guest_backoff_init(&b); /* the next outage starts over */
	CHECK(guest_backoff_next(&b, &d) == 0 && d == GUEST_RECONNECT_FIRST_MS);
}

/* The sender and the decoder agree, through a real pipe. */
static void test_send_over_pipe(void)
{
	int p[2];
	CHECK(pipe(p) == 0);
	const char *argv[] = { "/bin/echo", "", "two words", NULL };
	const char *envp[] = { "PATH=/bin", "X=a=b", NULL };
	const struct guest_api api = { .tcp_port = 9001, .vsock_port = 1025 };
	CHECK(guest_invocation_send(p[1], argv, envp, "/work", "app:staff", &api) == 0);
	const struct guest_api no_port = { .tcp_port = 0, .vsock_port = 1025 };
	CHECK(guest_invocation_send(p[1], argv, NULL, NULL, NULL, &no_port) == -EINVAL);
	const char *bad[] = { "ok", NULL };
	const char *badenv[] = { "NOEQ", NULL };
	CHECK(guest_invocation_send(p[1], bad, badenv, NULL, NULL, NULL) == -EINVAL);
	const char *none[] = { NULL };
	CHECK(guest_invocation_send(p[1], none, NULL, NULL, NULL, NULL) == -EINVAL);
	close(p[1]);

	struct guest_decoder d;
	struct guest_invocation inv;
	guest_decoder_init(&d, GUEST_DIR_HOST_TO_GUEST);
	guest_invocation_init(&inv);
	uint8_t buf[7]; /* small reads: frames arrive in pieces */
	ssize_t got;
	int done = 0;
	while (!done && (got = read(p[0], buf, sizeof(buf))) > 0) {
		size_t pos = 0;
		while (pos < (size_t)got && !done) {
			size_t used;
			struct guest_frame f;
			int r = guest_decoder_feed(&d, buf + pos, (size_t)got - pos, &used, &f);
			pos += used;
			CHECK(r >= 0);
			if (r < 0)
				done = -1;
			else if (r == 1) {
				int a = guest_invocation_add(&inv, &f, NULL);
				CHECK(a >= 0);
				if (a != 0)
					done = a;
			}
		}
	}
	CHECK(done == 1 && inv.complete);
	CHECK(inv.argc == 3 && strcmp(inv.argv[1], "") == 0 && strcmp(inv.argv[2], "two words") == 0);
	CHECK(inv.envc == 2 && strcmp(inv.envp[1], "X=a=b") == 0);
	CHECK(inv.workdir && strcmp(inv.workdir, "/work") == 0 && inv.user && strcmp(inv.user, "app:staff") == 0);
	CHECK(inv.api.tcp_port == 9001 && inv.api.vsock_port == 1025);
	/* The refused second invocation left "A ok" in the pipe before failing on its env. */
	guest_invocation_cleanup(&inv);
	guest_decoder_cleanup(&d);
	close(p[0]);

	/* Writing to a closed peer is an error, not a signal. */
	CHECK(pipe(p) == 0);
	close(p[0]);
	signal(SIGPIPE, SIG_IGN);
	CHECK(guest_frame_send(p[1], 'O', "x", 1) == -EPIPE);
	close(p[1]);
}

int main(void)
{
	test_roundtrip_splits();
	test_refusals();
	test_invocation();
	test_send_over_pipe();
	test_restore();
	test_backoff();
	return check_report();
}
