/* Fuzz target: L2 fragments from a hostile memcached, through the same code
 * l2_get runs: l2_fragment_parse, l2_frag_set_add and l2_frag_set_decode.
 *
 * Input: byte 0 picks the code (4+1, 4+2, 3+2, 6+3); then records, each a
 * 16-bit little-endian length and that many bytes, one fragment value each
 * (as if node i had sent record i).  Every record is parsed against a fixed
 * chunk name and the code; intact ones are collected and, with k of them,
 * the chunk is rebuilt.
 *
 * The seed corpus (corpus/fuzz_l2_fragment/) is written by this same file
 * built with -DL2_FUZZ_GEN_CORPUS:
 *   cc -D_GNU_SOURCE -DL2_FUZZ_GEN_CORPUS -I. cache/fuzz/fuzz_l2_fragment.c cache/l2_frag.c \
 *      common/[a-z]*.c -lisal -lcrypto -lpthread -o gen && ./gen cache/fuzz/corpus/fuzz_l2_fragment
 */
/* ctest-labels: no-tsan (a single-threaded parser: nothing for ThreadSanitizer to check) */
#include "cache/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char FUZZ_NAME[] = "5f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
static const unsigned CODES[4][2] = {{4, 1}, {4, 2}, {3, 2}, {6, 3}};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	unsigned k = CODES[data[0] % 4][0], m = CODES[data[0] % 4][1];
	struct l2_codec c;
	if (l2_codec_init(&c, k, m) != 0)
		return 0;
	struct l2_frag_set s;
	l2_frag_set_init(&s, k, m);
	size_t off = 1;
	for (unsigned rec = 0; rec < L2_MAX_FRAGS && size - off >= 2; rec++) {
		size_t len = (size_t)data[off] | (size_t)data[off + 1] << 8;
		off += 2;
		if (len > size - off)
			len = size - off;
		struct l2_fragment_view v;
		if (l2_fragment_parse(data + off, len, FUZZ_NAME, k, m, &v) == 0) {
			if (v.data < data + off || v.data + v.frag_len > data + off + len)
				__builtin_trap();
			l2_frag_set_add(&s, &v);
		}
		/* Without a name to expect, the parser must still be safe. */
		l2_fragment_parse(data + off, len, NULL, k, m, &v);
		off += len;
	}
	if (s.n >= k) {
		uint8_t *out = malloc(CHUNK_SIZE);
		size_t out_len;
		bool decoded;
		if (out && l2_frag_set_decode(&c, &s, out, CHUNK_SIZE, &out_len, &decoded) == 0 &&
		    (out_len == 0 || out_len > CHUNK_SIZE))
			__builtin_trap();
		free(out);
	}
	l2_codec_cleanup(&c);
	return 0;
}

#ifdef L2_FUZZ_GEN_CORPUS
/* Seed generator: valid fragment sets and broken ones. */
struct seed {
	uint8_t buf[16384];
	size_t len;
};

static void seed_start(struct seed *s, unsigned code)
{
	s->buf[0] = (uint8_t)code;
	s->len = 1;
}

static void seed_add(struct seed *s, const uint8_t *p, size_t n)
{
	s->buf[s->len] = (uint8_t)n;
	s->buf[s->len + 1] = (uint8_t)(n >> 8);
	memcpy(s->buf + s->len + 2, p, n);
	s->len += 2 + n;
}

static void seed_write(const struct seed *s, const char *dir, const char *name)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(s->buf, 1, s->len, f) != s->len) {
		perror(path);
		exit(1);
	}
	fclose(f);
}

/* Encode a |len|-byte chunk with code |code| into |vals|; returns stride. */
static size_t encode(unsigned code, const char *name, size_t len, uint8_t *vals)
{
	struct l2_codec c;
	uint8_t chunk[2000];
	for (size_t i = 0; i < len; i++)
		chunk[i] = (uint8_t)(i * 131 + len);
	l2_codec_init(&c, CODES[code][0], CODES[code][1]);
	if (l2_codec_encode(&c, name, chunk, len, vals) != 0)
		exit(1);
	l2_codec_cleanup(&c);
	return L2_FRAG_HDR_LEN + l2_frag_len(len, CODES[code][0]);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s DIR\n", argv[0]);
		return 1;
	}
	const char *dir = argv[1];
	static const char other[] = "0000000000000000000000000000000000000000000000000000000000000001";
	uint8_t vals[9 * (L2_FRAG_HDR_LEN + 2000)], vals2[9 * (L2_FRAG_HDR_LEN + 2000)], f[L2_FRAG_HDR_LEN + 2000];
	struct seed s;
	char fname[64];

	for (unsigned code = 0; code < 4; code++) {
		unsigned k = CODES[code][0], m = CODES[code][1];
		size_t st = encode(code, FUZZ_NAME, 1000, vals);
		/* all fragments, in order */
		seed_start(&s, code);
		for (unsigned i = 0; i < k + m; i++)
			seed_add(&s, vals + i * st, st);
		snprintf(fname, sizeof(fname), "valid-%u+%u-all", k, m);
		seed_write(&s, dir, fname);
		/* the first m lost: data must be decoded */
		seed_start(&s, code);
		for (unsigned i = m; i < k + m; i++)
			seed_add(&s, vals + i * st, st);
		snprintf(fname, sizeof(fname), "valid-%u+%u-lost-first-%u", k, m, m);
		seed_write(&s, dir, fname);
		/* parity first, then data, one data fragment lost */
		seed_start(&s, code);
		for (unsigned i = k + m; i-- > 1;)
			seed_add(&s, vals + i * st, st);
		snprintf(fname, sizeof(fname), "valid-%u+%u-reversed", k, m);
		seed_write(&s, dir, fname);
	}
	size_t st = encode(0, FUZZ_NAME, 1000, vals);
	/* odd lengths: 1 byte, and a length k does not divide */
	size_t st1 = encode(0, FUZZ_NAME, 1, vals2);
	seed_start(&s, 0);
	for (unsigned i = 1; i < 5; i++)
		seed_add(&s, vals2 + i * st1, st1);
	seed_write(&s, dir, "valid-4+1-len1");
	size_t st3 = encode(2, FUZZ_NAME, 1999, vals2);
	seed_start(&s, 2);
	for (unsigned i = 2; i < 5; i++)
		seed_add(&s, vals2 + i * st3, st3);
	seed_write(&s, dir, "valid-3+2-len1999");

	/* one bad fragment among good ones, for each kind of damage */
	struct {
		const char *name;
		size_t off;
		uint8_t x;
		long dlen;
	} bad[] = {
		{"bad-crc-data", L2_FRAG_HDR_LEN + 7, 0x01, 0}, {"bad-crc-field", 81, 0xff, 0},
		{"bad-magic", 0, 0x20, 0},			 {"bad-version", 4, 0x02, 0},
		{"bad-k", 5, 0x03, 0},				 {"bad-m", 6, 0x07, 0},
		{"bad-index", 7, 0x40, 0},			 {"bad-chunk-len", 9, 0x10, 0},
		{"bad-frag-len", 15, 0x80, 0},			 {"bad-name-char", 20, 0x40, 0},
		{"truncated", 0, 0, -1},			 {"too-long", 0, 0, 1},
		{"header-only", 0, 0, -250},
	};
	for (size_t b = 0; b < sizeof(bad) / sizeof(bad[0]); b++) {
		seed_start(&s, 0);
		for (unsigned i = 0; i < 5; i++) {
			size_t n = st;
			memcpy(f, vals + i * st, st);
			if (i == 1) {
				f[bad[b].off] ^= bad[b].x;
				n = (size_t)((long)st + bad[b].dlen);
				if (bad[b].dlen > 0)
					f[st] = 0xee;
			}
			seed_add(&s, f, n);
		}
		seed_write(&s, dir, bad[b].name);
	}
	/* a valid fragment of another chunk */
	encode(0, other, 1000, vals2);
	seed_start(&s, 0);
	seed_add(&s, vals2, st);
	for (unsigned i = 1; i < 5; i++)
		seed_add(&s, vals + i * st, st);
	seed_write(&s, dir, "foreign-name");
	/* fragments of two lengths of the same name: they must not mix */
	size_t st2 = encode(0, FUZZ_NAME, 996, vals2);
	seed_start(&s, 0);
	seed_add(&s, vals2, st2);
	seed_add(&s, vals2 + st2, st2);
	seed_add(&s, vals + 2 * st, st);
	seed_add(&s, vals + 3 * st, st);
	seed_add(&s, vals + 4 * st, st);
	seed_write(&s, dir, "mixed-lengths");
	/* the same index twice */
	seed_start(&s, 0);
	for (unsigned i = 0; i < 5; i++)
		seed_add(&s, vals + (i % 3) * st, st);
	seed_write(&s, dir, "duplicate-index");
	/* nothing, and garbage */
	seed_start(&s, 1);
	seed_write(&s, dir, "empty");
	seed_start(&s, 3);
	for (unsigned i = 0; i < 200; i++)
		f[i] = (uint8_t)(i * 37);
	seed_add(&s, f, 200);
	seed_add(&s, (const uint8_t *)"KLF1", 4);
	seed_write(&s, dir, "garbage");
	printf("seeds written to %s\n", dir);
	return 0;
}
#endif
