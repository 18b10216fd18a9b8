/* L2 erasure coding without memcached: encode and decode with every
 * combination of up to m lost fragments for 4+1, 4+2, 3+2 and 6+3 at several
 * chunk lengths; the fragment parser's accept and reject cases; l2_new's
 * configuration checks; and a fleet whose nodes all refuse connections
 * (reads give -ENOENT, nodes are reported down, nothing hangs). */
/* ctest-labels: no-tsan (single-threaded: nothing for ThreadSanitizer to check) */
#include "cache/internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tests/check.h"

static const char NAME[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
static const char OTHER[] = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

static void fill(uint8_t *p, size_t n, uint32_t seed)
{
	uint32_t x = seed * 2654435761u + 1;
	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		p[i] = (uint8_t)x;
	}
}

/* Every subset of lost fragments of size <= m, for one k+m and length. */
static void test_code(unsigned k, unsigned m, size_t len)
{
	struct l2_codec c;
	CHECK(l2_codec_init(&c, k, m) == 0);
	unsigned n = k + m;
	size_t fl = l2_frag_len(len, k), stride = L2_FRAG_HDR_LEN + fl;
	uint8_t *chunk = malloc(len), *vals = malloc(n * stride), *out = malloc(CHUNK_SIZE);
	fill(chunk, len, (uint32_t)(len + k * 31 + m));
	CHECK(l2_codec_encode(&c, NAME, chunk, len, vals) == 0);

	struct l2_fragment_view v[L2_MAX_FRAGS];
	for (unsigned i = 0; i < n; i++) {
		CHECK(l2_fragment_parse(vals + i * stride, stride, NAME, k, m, &v[i]) == 0);
		CHECK(v[i].index == i && v[i].chunk_len == len && v[i].frag_len == fl);
	}
	/* The data fragments are the chunk itself (systematic code). */
	CHECK(memcmp(vals + L2_FRAG_HDR_LEN, chunk, fl < len ? fl : len) == 0);

	unsigned combos = 0, bad = 0;
	for (uint32_t lost = 0; lost < (1u << n); lost++) {
		if ((unsigned)__builtin_popcount(lost) > m)
			continue;
		struct l2_frag_set s;
		l2_frag_set_init(&s, k, m);
		/* Add in a scrambled order, as replies arrive. */
		for (unsigned t = 0; t < n; t++) {
			unsigned i = (t * 7 + lost) % n;
			if (!(lost & (1u << i)) && l2_frag_set_add(&s, &v[i]) != 0)
				bad++;
		}
		size_t got = 0;
		bool decoded = true;
		memset(out, 0xa5, CHUNK_SIZE);
		int r = l2_frag_set_decode(&c, &s, out, CHUNK_SIZE, &got, &decoded);
		bool data_lost = (lost & ((1u << k) - 1)) != 0;
		if (r != 0 || got != len || memcmp(out, chunk, len) != 0 || decoded != data_lost) {
			bad++;
			fprintf(stderr, "k=%u m=%u len=%zu lost=%#x: r=%d got=%zu decoded=%d\n", k, m, len, lost, r,
				got, decoded);
		}
		/* Nothing written past the chunk. */
		if (len < CHUNK_SIZE && out[len] != 0xa5)
			bad++;
		combos++;
	}
	CHECK(bad == 0);
	CHECK(combos > 0);

	/* One more loss than m: not enough. */
	if (m + 1 <= n) {
		struct l2_frag_set s;
		l2_frag_set_init(&s, k, m);
		for (unsigned i = m + 1; i < n; i++)
			l2_frag_set_add(&s, &v[i]);
		size_t got;
		bool decoded;
		CHECK(l2_frag_set_decode(&c, &s, out, CHUNK_SIZE, &got, &decoded) == -ENOENT);
	}
	/* Too small an output buffer. */
	{
		struct l2_frag_set s;
		l2_frag_set_init(&s, k, m);
		for (unsigned i = 0; i < n; i++)
			l2_frag_set_add(&s, &v[i]);
		size_t got;
		bool decoded;
		CHECK(l2_frag_set_decode(&c, &s, out, len - 1, &got, &decoded) == (len > 1 ? -ENOSPC : -ENOSPC));
	}
	free(chunk);
	free(vals);
	free(out);
	l2_codec_cleanup(&c);
}

static void test_crc(void)
{
	CHECK(l2_crc32c((const uint8_t *)"123456789", 9) == 0xe3069283u);
	CHECK(l2_crc32c((const uint8_t *)"", 0) == 0);
}

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static void test_parser(void)
{
	const unsigned k = 4, m = 1;
	const size_t len = 1000, fl = 250, stride = L2_FRAG_HDR_LEN + fl;
	struct l2_codec c;
	CHECK(l2_codec_init(&c, k, m) == 0);
	uint8_t chunk[1000], vals[5 * (L2_FRAG_HDR_LEN + 250)], f[L2_FRAG_HDR_LEN + 251];
	fill(chunk, len, 9);
	CHECK(l2_codec_encode(&c, NAME, chunk, len, vals) == 0);
	const uint8_t *good = vals + 2 * stride;
	struct l2_fragment_view v;
	CHECK(l2_fragment_parse(good, stride, NAME, k, m, &v) == 0);
	CHECK(v.index == 2 && v.data == good + L2_FRAG_HDR_LEN);
	CHECK(l2_fragment_parse(good, stride, NULL, k, m, &v) == 0);

	/* Wrong expectations. */
	CHECK(l2_fragment_parse(good, stride, OTHER, k, m, &v) == -EBADMSG);
	CHECK(l2_fragment_parse(good, stride, "0123", k, m, &v) == -EBADMSG);
	CHECK(l2_fragment_parse(good, stride, NAME, 3, m, &v) == -EBADMSG);
	CHECK(l2_fragment_parse(good, stride, NAME, k, 2, &v) == -EBADMSG);
	/* Size mismatches: short, long, empty, NULL. */
	CHECK(l2_fragment_parse(good, stride - 1, NAME, k, m, &v) == -EBADMSG);
	memcpy(f, good, stride);
	f[stride] = 0;
	CHECK(l2_fragment_parse(f, stride + 1, NAME, k, m, &v) == -EBADMSG);
	CHECK(l2_fragment_parse(good, 0, NAME, k, m, &v) == -EBADMSG);
	CHECK(l2_fragment_parse(good, L2_FRAG_HDR_LEN - 1, NAME, k, m, &v) == -EBADMSG);
	CHECK(l2_fragment_parse(NULL, 0, NAME, k, m, &v) == -EBADMSG);

	/* Each header field tampered with. */
	struct {
		size_t off;
		uint8_t x;
	} flips[] = {{0, 1}, {3, 0x20}, {4, 1}, {5, 1}, {6, 1}, {7, 0x10}, {8, 1}, {12, 1}, {16, 1}, {79, 1}, {80, 1},
		     {83, 0x80}, {L2_FRAG_HDR_LEN, 1}, {stride - 1, 0x40}};
	for (size_t i = 0; i < sizeof(flips) / sizeof(flips[0]); i++) {
		memcpy(f, good, stride);
		f[flips[i].off] ^= flips[i].x;
		int r = l2_fragment_parse(f, stride, NAME, k, m, &v);
		if (r != -EBADMSG)
			fprintf(stderr, "flip at %zu accepted\n", flips[i].off);
		CHECK(r == -EBADMSG);
	}
	/* Index out of range, with a matching CRC. */
	memcpy(f, good, stride);
	f[7] = 5;
	CHECK(l2_fragment_parse(f, stride, NAME, k, m, &v) == -EBADMSG);
	/* An upper-case name is not ours. */
	memcpy(f, good, stride);
	f[16] = 'A';
	CHECK(l2_fragment_parse(f, stride, NULL, k, m, &v) == -EBADMSG);
	/* chunk_len 0, > CHUNK_SIZE, and a frag_len that would overflow. */
	memcpy(f, good, stride);
	put32(f + 8, 0);
	put32(f + 12, 0);
	CHECK(l2_fragment_parse(f, L2_FRAG_HDR_LEN, NAME, k, m, &v) == -EBADMSG);
	memcpy(f, good, stride);
	put32(f + 8, CHUNK_SIZE + 1);
	put32(f + 12, (CHUNK_SIZE + 1 + 3) / 4);
	CHECK(l2_fragment_parse(f, stride, NAME, k, m, &v) == -EBADMSG);
	memcpy(f, good, stride);
	put32(f + 12, 0xffffffffu);
	CHECK(l2_fragment_parse(f, stride, NAME, k, m, &v) == -EBADMSG);
	/* A consistent header for another length, but the wrong size. */
	memcpy(f, good, stride);
	put32(f + 8, 996);
	put32(f + 12, 249);
	CHECK(l2_fragment_parse(f, stride, NAME, k, m, &v) == -EBADMSG);

	/* The set refuses fragments that disagree with each other. */
	struct l2_frag_set s;
	struct l2_fragment_view a, b;
	l2_frag_set_init(&s, k, m);
	CHECK(l2_fragment_parse(vals, stride, NAME, k, m, &a) == 0);
	CHECK(l2_frag_set_add(&s, &a) == 0);
	CHECK(l2_frag_set_add(&s, &a) == -EEXIST);
	uint8_t chunk2[999], vals2[5 * (L2_FRAG_HDR_LEN + 250)];
	fill(chunk2, sizeof(chunk2), 3);
	CHECK(l2_codec_encode(&c, NAME, chunk2, sizeof(chunk2), vals2) == 0);
	CHECK(l2_fragment_parse(vals2 + stride, stride, NAME, k, m, &b) == 0);
	CHECK(l2_frag_set_add(&s, &b) == -EBADMSG);
	CHECK(s.n == 1);

	/* Encoding refuses bad input. */
	CHECK(l2_codec_encode(&c, "nothex", chunk, len, vals) == -EINVAL);
	CHECK(l2_codec_encode(&c, NAME, chunk, 0, vals) == -EINVAL);
	l2_codec_cleanup(&c);
	CHECK(l2_codec_init(&c, 0, 1) == -EINVAL);
	CHECK(l2_codec_init(&c, 20, 17) == -EINVAL);
	CHECK(l2_codec_init(&c, 4, 0) == 0);
	l2_codec_cleanup(&c);
}

/* A port on 127.0.0.1 with nothing listening. */
static unsigned dead_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || getsockname(fd, (struct sockaddr *)&a, &al) < 0)
		return 1;
	close(fd);
	return ntohs(a.sin_port);
}

static void test_config_and_dead_fleet(void)
{
	char addrs[5][32];
	const char *nodes[5];
	for (int i = 0; i < 5; i++) {
		snprintf(addrs[i], sizeof(addrs[i]), "127.0.0.1:%u", dead_port());
		nodes[i] = addrs[i];
	}
	struct l2 *l = NULL;
	struct l2_config cfg = {.nodes = nodes, .n_nodes = 4, .k = 4, .m = 1, .timeout_ms = 100};
	CHECK(l2_new(&cfg, &l) == -EINVAL && l == NULL); /* fewer than k + m nodes */
	cfg.n_nodes = 5;
	cfg.k = 0; /* defaults: 4 + 1 */
	cfg.key_prefix = "bad prefix";
	CHECK(l2_new(&cfg, &l) == -EINVAL);
	cfg.key_prefix = NULL;
	const char *dup[5] = {nodes[0], nodes[1], nodes[2], nodes[3], nodes[0]};
	cfg.nodes = dup;
	CHECK(l2_new(&cfg, &l) == -EINVAL);
	const char *junk[5] = {nodes[0], nodes[1], nodes[2], nodes[3], "no-port"};
	cfg.nodes = junk;
	CHECK(l2_new(&cfg, &l) == -EINVAL);
	cfg.nodes = nodes;
	CHECK(l2_new(&cfg, &l) == 0 && l != NULL);
	l2_free(NULL);

	uint8_t *buf = malloc(CHUNK_SIZE);
	size_t len;
	fill(buf, 4096, 1);
	/* Nothing listens: the first read finds every node refusing. */
	CHECK(l2_get(l, NAME, buf, &len) == -ENOENT);
	CHECK(l2_put(l, NAME, buf, 4096) == -EIO);
	CHECK(l2_get(l, NAME, buf, &len) == -ENOENT);
	CHECK(l2_get(l, "not-a-name", buf, &len) == -EINVAL);
	l2_put_async(l, NAME, buf, 4096);
	l2_report_bad(l, NAME);
	l2_flush(l);
	struct l2_stats st;
	CHECK(l2_stats(l, &st) == 0);
	CHECK(st.n_nodes == 5 && st.gets == 2 && st.misses == 2 && st.hits == 0);
	unsigned down = 0;
	for (size_t i = 0; i < st.n_nodes; i++)
		down += !st.nodes[i].up;
	CHECK(down == 5);
	char addr[64], key[256];
	CHECK(l2_locate(l, NAME, 0, addr, sizeof(addr), key, sizeof(key)) == 0);
	CHECK(strcmp(key, "kc:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.0") == 0);
	CHECK(l2_locate(l, NAME, 5, addr, sizeof(addr), key, sizeof(key)) == -EINVAL);
	/* The five fragments land on five distinct nodes. */
	char seen[5][64];
	bool distinct = true;
	for (unsigned i = 0; i < 5; i++) {
		l2_locate(l, OTHER, i, seen[i], sizeof(seen[i]), key, sizeof(key));
		for (unsigned j = 0; j < i; j++)
			distinct &= strcmp(seen[i], seen[j]) != 0;
	}
	CHECK(distinct);
	free(st.nodes);
	free(buf);
	l2_free(l);
}

int main(void)
{
	log_set_level(LOG_SILENT);
	test_crc();
	static const unsigned codes[][2] = {{4, 1}, {4, 2}, {3, 2}, {6, 3}};
	static const size_t lens[] = {1, 5, 1000, 4097, CHUNK_SIZE - 1, CHUNK_SIZE};
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
		for (size_t j = 0; j < sizeof(lens) / sizeof(lens[0]); j++)
			test_code(codes[i][0], codes[i][1], lens[j]);
	test_parser();
	test_config_and_dead_fleet();
	return check_report();
}
