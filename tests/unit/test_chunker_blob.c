/* Unit test of blob streams (chunker/blob.c) on data generated here: plain,
 * gzip (gzip(1)), multi-member gzip, zstd (libzstd), both digests, truncated
 * streams and the raw-size bound.  Prints "N passed, M failed". */
/* ctest-labels: no-tsan (single-threaded: nothing for ThreadSanitizer to check) */
#include "chunker/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zstd.h>

static unsigned passed, failed;
static char dir[256];

#define CHECK(cond, ...)                                                                                       \
	do {                                                                                                   \
		if (cond) {                                                                                    \
			passed++;                                                                              \
		} else {                                                                                       \
			failed++;                                                                              \
			fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                   \
			fprintf(stderr, __VA_ARGS__);                                                          \
			fputc('\n', stderr);                                                                   \
		}                                                                                              \
	} while (0)

static void digest_of(const void *p, size_t n, char out[80])
{
	uint8_t h[SHA256_LEN];
	char hex[SHA256_HEX_LEN + 1];
	sha256_buf(p, n, h);
	hex_encode(h, SHA256_LEN, hex);
	snprintf(out, 80, "sha256:%s", hex);
}

static int write_all(const char *path, const void *p, size_t n)
{
	return write_file_atomic(path, p, n, 0600);
}

static uint8_t *slurp(const char *path, size_t *n)
{
	uint8_t *b = NULL;
	if (read_file_all(path, 1u << 30, &b, n) < 0)
		return NULL;
	return b;
}

/* Read the whole stream in odd-sized pieces; returns 0 or the error. */
static int drain(struct byte_stream *s, uint8_t **out, size_t *out_len)
{
	size_t cap = 1 << 20, len = 0;
	uint8_t *buf = malloc(cap);
	ssize_t r;
	size_t step = 7777;
	for (;;) {
		if (cap - len < step) {
			cap *= 2;
			buf = realloc(buf, cap);
		}
		r = byte_stream_read(s, buf + len, step);
		if (r <= 0)
			break;
		len += (size_t)r;
		step = step == 7777 ? 300000 : 7777;
	}
	*out = buf;
	*out_len = len;
	return r < 0 ? (int)r : 0;
}

/* Open |path| as a stream and read it; returns the final status. */
static int run(const char *path, const char *digest, const char *diff_id, uint64_t max_raw, const uint8_t *expect,
	       size_t expect_len)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -errno;
	struct byte_stream *s = blob_stream_open_fd(fd, path, digest, diff_id, max_raw);
	if (!s)
		return -errno;
	uint8_t *got;
	size_t got_len;
	int r = drain(s, &got, &got_len);
	if (r == 0 && expect && (got_len != expect_len || memcmp(got, expect, expect_len) != 0)) {
		fprintf(stderr, "%s: content differs (%zu vs %zu bytes)\n", path, got_len, expect_len);
		r = -EPROTO;
	}
	/* A finished or failed stream keeps saying so. */
	if (r == 0 && byte_stream_read(s, got, 1) != 0)
		r = -EPROTO;
	free(got);
	byte_stream_close(s);
	return r;
}

/* Read |path| mixing read_ref and read (a mapped plain blob offers both);
 * every lent span must still hold its bytes when the stream has ended.
 * Returns the final status, or -ENOTSUP if the stream does not lend. */
static int run_ref(const char *path, const char *digest, uint64_t max_raw, const uint8_t *expect, size_t expect_len)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -errno;
	struct byte_stream *s = blob_stream_open_fd(fd, path, digest, digest, max_raw);
	if (!s)
		return -errno;
	if (!s->read_ref) {
		byte_stream_close(s);
		return -ENOTSUP;
	}
	struct span {
		const void *p;
		size_t at, len;
	} spans[4096];
	size_t n_spans = 0, at = 0;
	uint8_t *copy = malloc(5000);
	ssize_t r;
	for (unsigned i = 0;; i++) {
		if (i % 3 == 2) {
			r = byte_stream_read(s, copy, i % 2 ? 5000 : 1);
			if (r > 0 && (expect && ((size_t)r > expect_len - at || memcmp(copy, expect + at, (size_t)r))))
				r = -EPROTO;
		} else {
			const void *p = NULL;
			r = s->read_ref(s, &p, i % 2 ? 65536 : 200000);
			if (r > 0 && n_spans < sizeof(spans) / sizeof(spans[0]))
				spans[n_spans++] = (struct span){p, at, (size_t)r};
		}
		if (r <= 0)
			break;
		at += (size_t)r;
	}
	for (size_t i = 0; r == 0 && expect && i < n_spans; i++)
		if (spans[i].at + spans[i].len > expect_len ||
		    memcmp(spans[i].p, expect + spans[i].at, spans[i].len) != 0)
			r = -EPROTO;
	if (r == 0 && expect && at != expect_len)
		r = -EPROTO;
	free(copy);
	byte_stream_close(s);
	return (int)r;
}

static char *paths[32];
static size_t n_paths;

/* A path in the scratch directory, valid until the end of main. */
static char *tmp_path(const char *name)
{
	char *p = xasprintf("%s/%s", dir, name);
	if (!p || n_paths == sizeof(paths) / sizeof(paths[0]))
		abort();
	return paths[n_paths++] = p;
}

static int sh(const char *fmt, const char *a, const char *b)
{
	char cmd[2048];
	snprintf(cmd, sizeof(cmd), fmt, a, b);
	return system(cmd);
}

/* Memory-backed raw stream for blob_stream_wrap. */
struct mem_stream {
	struct byte_stream pub;
	const uint8_t *p;
	size_t len, pos;
};
static ssize_t mem_read(struct byte_stream *s, void *buf, size_t n)
{
	struct mem_stream *m = (struct mem_stream *)s;
	size_t k = m->len - m->pos < n ? m->len - m->pos : n;
	memcpy(buf, m->p + m->pos, k);
	m->pos += k;
	return (ssize_t)k;
}
static void mem_close(struct byte_stream *s) { free(s); }

int main(void)
{
	snprintf(dir, sizeof(dir), "%s/test_chunker_blob.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	/* 3 MiB of half-compressible data: crosses every internal buffer. */
	size_t n = 3u << 20;
	uint8_t *data = malloc(n);
	uint32_t x = 12345;
	for (size_t i = 0; i < n; i++) {
		x = x * 1103515245u + 12345u;
		data[i] = (i / 4096) % 2 ? (uint8_t)(x >> 24) : (uint8_t)(i % 251);
	}
	char d_plain[80];
	digest_of(data, n, d_plain);
	const char *plain = tmp_path("plain.tar");
	write_all(plain, data, n);

	/* plain: digest == diff_id */
	CHECK(run(plain, d_plain, d_plain, n, data, n) == 0, "plain");
	CHECK(run(plain, NULL, NULL, UINT64_MAX, data, n) == 0, "plain, no digests");
	CHECK(run(plain, d_plain, NULL, n - 1, NULL, 0) == -EFBIG, "plain over max_raw");

	/* plain, lent in place (mapped) and mixed with copying reads */
	CHECK(run_ref(plain, d_plain, n, data, n) == 0, "plain, read_ref");
	CHECK(run_ref(plain, NULL, UINT64_MAX, data, n) == 0, "plain, read_ref, no digest");
	CHECK(run_ref(plain, d_plain, n - 1, NULL, 0) == -EFBIG, "plain, read_ref, over max_raw");
	data[n / 2] ^= 1;
	const char *changed = tmp_path("changed.tar");
	write_all(changed, data, n);
	data[n / 2] ^= 1;
	CHECK(run_ref(changed, d_plain, n, NULL, 0) == -EBADMSG, "plain, read_ref, wrong digest");

	/* gzip */
	const char *gz = tmp_path("layer.tar.gz");
	CHECK(sh("gzip -c -6 %s > %s", plain, gz) == 0, "gzip CLI");
	size_t gz_len;
	uint8_t *gzb = slurp(gz, &gz_len);
	char d_gz[80];
	digest_of(gzb, gz_len, d_gz);
	CHECK(run(gz, d_gz, d_plain, gz_len, data, n) == 0, "gzip");
	CHECK(run(gz, d_plain, d_plain, gz_len, NULL, 0) == -EBADMSG, "gzip: wrong digest");
	CHECK(run(gz, d_gz, d_gz, gz_len, NULL, 0) == -EBADMSG, "gzip: wrong diff_id");
	CHECK(run(gz, d_gz, d_plain, gz_len - 1, NULL, 0) == -EFBIG, "gzip over max_raw");
	CHECK(run_ref(gz, d_gz, gz_len, NULL, 0) == -ENOTSUP, "gzip is not lent in place");

	/* truncated gzip: must fail even with no digest to check */
	const char *gzt = tmp_path("trunc.tar.gz");
	write_all(gzt, gzb, gz_len / 2);
	CHECK(run(gzt, NULL, NULL, UINT64_MAX, NULL, 0) == -EBADMSG, "truncated gzip");
	write_all(gzt, gzb, gz_len - 4); /* only the ISIZE trailer missing */
	CHECK(run(gzt, NULL, NULL, UINT64_MAX, NULL, 0) == -EBADMSG, "gzip without trailer");

	/* corrupt gzip: a flipped byte in the middle */
	gzb[gz_len / 2] ^= 0x55;
	write_all(gzt, gzb, gz_len);
	CHECK(run(gzt, NULL, NULL, UINT64_MAX, NULL, 0) == -EBADMSG, "corrupt gzip");
	gzb[gz_len / 2] ^= 0x55;

	/* multi-member gzip: two members, then trailing zeros */
	const char *p1 = tmp_path("part1"), *p2 = tmp_path("part2"), *mm = tmp_path("multi.tar.gz");
	write_all(p1, data, n / 3);
	write_all(p2, data + n / 3, n - n / 3);
	char cmd_a[1024];
	snprintf(cmd_a, sizeof(cmd_a), "%s %s", p1, p2);
	CHECK(sh("gzip -c %s > %s", p1, mm) == 0 && sh("gzip -c %s >> %s", p2, mm) == 0, "gzip members");
	CHECK(run(mm, NULL, d_plain, UINT64_MAX, data, n) == 0, "multi-member gzip");
	CHECK(sh("head -c 1000 /dev/zero >> %s%s", mm, "") == 0, "pad");
	CHECK(run(mm, NULL, d_plain, UINT64_MAX, data, n) == 0, "multi-member gzip, zero padded");
	CHECK(sh("printf garbage >> %s%s", mm, "") == 0, "garbage");
	CHECK(run(mm, NULL, d_plain, UINT64_MAX, NULL, 0) == -EBADMSG, "gzip + trailing garbage");

	/* zstd */
	size_t zcap = ZSTD_compressBound(n);
	uint8_t *zb = malloc(zcap);
	size_t z_len = ZSTD_compress(zb, zcap, data, n, 3);
	CHECK(!ZSTD_isError(z_len), "ZSTD_compress");
	const char *zs = tmp_path("layer.tar.zst");
	write_all(zs, zb, z_len);
	char d_zs[80];
	digest_of(zb, z_len, d_zs);
	CHECK(run(zs, d_zs, d_plain, z_len, data, n) == 0, "zstd");
	CHECK(run(zs, d_zs, d_zs, z_len, NULL, 0) == -EBADMSG, "zstd: wrong diff_id");
	const char *zt = tmp_path("trunc.tar.zst");
	write_all(zt, zb, z_len / 2);
	CHECK(run(zt, NULL, NULL, UINT64_MAX, NULL, 0) == -EBADMSG, "truncated zstd");
	write_all(zt, zb, z_len - 1);
	CHECK(run(zt, NULL, NULL, UINT64_MAX, NULL, 0) == -EBADMSG, "zstd missing last byte");
	/* two zstd frames back to back are one stream */
	uint8_t *z2 = malloc(z_len * 2);
	memcpy(z2, zb, z_len);
	memcpy(z2 + z_len, zb, z_len);
	write_all(zt, z2, z_len * 2);
	CHECK(run(zt, NULL, NULL, UINT64_MAX, NULL, 0) == 0, "two zstd frames");

	/* zstd CLI output, if present, must read too */
	if (system("command -v zstd >/dev/null 2>&1") == 0) {
		const char *zc = tmp_path("cli.tar.zst");
		CHECK(sh("zstd -q -c %s > %s", plain, zc) == 0, "zstd CLI");
		CHECK(run(zc, NULL, d_plain, UINT64_MAX, data, n) == 0, "zstd from the CLI");
	}

	/* wrap: a raw stream from memory, gzip inside */
	struct mem_stream *m = calloc(1, sizeof(*m));
	m->pub.read = mem_read;
	m->pub.close = mem_close;
	m->pub.what = "mem";
	m->p = gzb;
	m->len = gz_len;
	struct byte_stream *s = blob_stream_wrap(&m->pub, "wrapped layer", d_gz, d_plain, gz_len);
	CHECK(s != NULL, "wrap");
	if (s) {
		uint8_t *got;
		size_t got_len;
		CHECK(drain(s, &got, &got_len) == 0 && got_len == n && memcmp(got, data, n) == 0, "wrap content");
		free(got);
		byte_stream_close(s);
	}

	/* tiny inputs: empty, and shorter than any magic */
	const char *tiny = tmp_path("tiny");
	char d_empty[80];
	digest_of("", 0, d_empty);
	write_all(tiny, "", 0);
	CHECK(run(tiny, d_empty, d_empty, 0, (const uint8_t *)"", 0) == 0, "empty blob");
	write_all(tiny, "\x1f", 1);
	CHECK(run(tiny, NULL, NULL, 10, (const uint8_t *)"\x1f", 1) == 0, "one byte");
	write_all(tiny, "\x1f\x8b", 2);
	CHECK(run(tiny, NULL, NULL, 10, NULL, 0) == -EBADMSG, "gzip magic only");

	/* a malformed digest to check against is refused up front */
	int fd = open(plain, O_RDONLY);
	s = blob_stream_open_fd(fd, "bad digest", "md5:abc", NULL, n);
	CHECK(!s && errno == EINVAL, "bad digest string");

	free(data);
	free(gzb);
	free(zb);
	free(z2);
	(void)cmd_a;
	sh("rm -rf %s%s", dir, "");
	for (size_t i = 0; i < n_paths; i++)
		free(paths[i]);
	printf("%u passed, %u failed\n", passed, failed);
	return failed ? 1 : 0;
}
