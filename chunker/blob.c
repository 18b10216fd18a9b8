/* Verified, decompressed blob streams.
 *
 * A layer arrives as raw bytes (a file, or an entry inside a docker-archive
 * tar).  The raw bytes are hashed as they are read and compared with the
 * blob's digest at the end; the content is decompressed according to its
 * magic bytes and the decompressed bytes are hashed and compared with the
 * layer's diff_id.  A reader therefore sees a clean end of stream only after
 * every digest it asked for has matched.
 *
 * gzip goes through ISA-L's igzip rather than zlib: igzip inflates several
 * times faster than zlib on the same core, and gzip inflate is the single
 * largest CPU cost of an import (layers are mostly gzip).  zstd goes through
 * libzstd's streaming API.
 */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <isa-l/igzip_lib.h>
#include <openssl/evp.h>
#include <zstd.h>

/* Big buffers amortise the per-call cost of read(2) and of the inflaters;
 * they are allocated once per stream, never per read. */
#define BLOB_IN_SIZE (256u << 10)
#define BLOB_OUT_SIZE (1u << 20)

enum blob_kind { BLOB_PLAIN, BLOB_GZIP, BLOB_ZSTD };

struct blob_stream {
	struct byte_stream pub; /* first, so a byte_stream * is a blob_stream * */
	int fd;			/* raw source: a file ... */
	struct byte_stream *raw; /* ... or another stream */
	char *what;

	bool check_digest, check_diff;
	char digest[80], diff_id[80];
	EVP_MD_CTX *raw_md; /* over the raw bytes; NULL when nothing needs it */
	EVP_MD_CTX *out_md; /* over the decompressed bytes; NULL when skipped */
	uint64_t max_raw, raw_total;

	enum blob_kind kind;
	uint8_t *in;
	size_t in_pos, in_len;
	bool raw_eof;
	uint8_t *out;
	size_t out_pos, out_len;

	struct inflate_state *inf;
	bool gz_member_done; /* between two gzip members (or at the end) */
	ZSTD_DCtx *zd;
	size_t zret; /* last ZSTD_decompressStream hint: 0 = frame complete */

	/* A plain blob in a regular file, mapped on the first read_ref: the
	 * parser reads the page cache in place instead of a copy of it. */
	const uint8_t *map;
	size_t map_len;

	int err;   /* sticky: once a read failed, every later read fails */
	bool done; /* end reached and verified */
};

static int fail(struct blob_stream *b, int err)
{
	b->err = err;
	return err;
}

/* Read raw bytes from the source, hashing and counting them. */
static ssize_t raw_read(struct blob_stream *b, uint8_t *buf, size_t n)
{
	ssize_t r;
	if (b->raw) {
		r = byte_stream_read(b->raw, buf, n);
	} else {
		do
			r = read(b->fd, buf, n);
		while (r < 0 && errno == EINTR);
		if (r < 0) {
			r = -errno;
			log_err("%s: read: %s", b->what, strerror(errno));
		}
	}
	if (r <= 0)
		return r;
	uint64_t total;
	if (!ck_add_u64(b->raw_total, (uint64_t)r, &total) || total > b->max_raw) {
		log_err("%s: blob is larger than its declared size of %llu bytes; the source is corrupt or was "
			"modified",
			b->what, (unsigned long long)b->max_raw);
		return -EFBIG;
	}
	b->raw_total = total;
	if (b->raw_md && EVP_DigestUpdate(b->raw_md, buf, (size_t)r) != 1) {
		log_err("%s: sha256 update failed", b->what);
		return -EIO;
	}
	return r;
}

/* Top up the input buffer; returns bytes added, 0 at the raw end, or -errno. */
static ssize_t fill_in(struct blob_stream *b)
{
	if (b->in_pos == b->in_len) {
		b->in_pos = b->in_len = 0;
	} else if (b->in_pos > 0) {
		memmove(b->in, b->in + b->in_pos, b->in_len - b->in_pos);
		b->in_len -= b->in_pos;
		b->in_pos = 0;
	}
	if (b->in_len == BLOB_IN_SIZE)
		return -ENOBUFS; /* callers only fill an input they have drained */
	ssize_t r = raw_read(b, b->in + b->in_len, BLOB_IN_SIZE - b->in_len);
	if (r > 0)
		b->in_len += (size_t)r;
	else if (r == 0)
		b->raw_eof = true;
	return r;
}

static int md_final_hex(EVP_MD_CTX *md, char out[SHA256_HEX_LEN + 1])
{
	uint8_t h[EVP_MAX_MD_SIZE];
	unsigned int hl = 0;
	if (EVP_DigestFinal_ex(md, h, &hl) != 1 || hl != SHA256_LEN)
		return -EIO;
	hex_encode(h, SHA256_LEN, out);
	return 0;
}

/* The raw end has been reached and everything decompressed: check digests. */
static int finish(struct blob_stream *b)
{
	char raw_hex[SHA256_HEX_LEN + 1] = "", out_hex[SHA256_HEX_LEN + 1] = "";
	if (b->raw_md && md_final_hex(b->raw_md, raw_hex) < 0) {
		log_err("%s: sha256 final failed", b->what);
		return fail(b, -EIO);
	}
	if (b->out_md && md_final_hex(b->out_md, out_hex) < 0) {
		log_err("%s: sha256 final failed", b->what);
		return fail(b, -EIO);
	}
	if (b->check_digest && strcmp(b->digest + 7, raw_hex) != 0) {
		log_err("%s: digest mismatch: expected %s, got sha256:%s (the blob is corrupt or was tampered with)",
			b->what, b->digest, raw_hex);
		return fail(b, -EBADMSG);
	}
	if (b->check_diff) {
		/* An uncompressed blob is its own content: the raw hash serves. */
		const char *got = b->kind == BLOB_PLAIN ? raw_hex : out_hex;
		if (strcmp(b->diff_id + 7, got) != 0) {
			log_err("%s: uncompressed content (diff_id): digest mismatch: expected %s, got sha256:%s",
				b->what, b->diff_id, got);
			return fail(b, -EBADMSG);
		}
	}
	b->done = true;
	return 0;
}

static ssize_t deliver(struct blob_stream *b, void *buf, size_t n)
{
	size_t k = b->out_len - b->out_pos;
	if (k > n)
		k = n;
	memcpy(buf, b->out + b->out_pos, k);
	b->out_pos += k;
	return (ssize_t)k;
}

/* Refill |out| from the gzip input; 0 with out_len == 0 means the end. */
static int gzip_produce(struct blob_stream *b)
{
	b->out_pos = b->out_len = 0;
	for (;;) {
		if (b->in_pos == b->in_len && !b->raw_eof) {
			ssize_t r = fill_in(b);
			if (r < 0)
				return fail(b, (int)r);
			continue;
		}
		if (b->gz_member_done) {
			/* Another member may follow (pigz and concatenated gzip
			 * files do this); zero padding is tolerated as gzip(1)
			 * does, anything else is garbage. */
			while (b->in_pos < b->in_len && b->in[b->in_pos] == 0)
				b->in_pos++;
			if (b->in_pos == b->in_len) {
				if (b->raw_eof)
					return 0;
				continue;
			}
			if (b->in[b->in_pos] != 0x1f) {
				log_err("%s: trailing garbage after gzip stream at raw byte %llu", b->what,
					(unsigned long long)(b->raw_total - (b->in_len - b->in_pos)));
				return fail(b, -EBADMSG);
			}
			isal_inflate_reset(b->inf);
			b->inf->crc_flag = ISAL_GZIP;
			b->gz_member_done = false;
		}
		size_t avail = b->in_len - b->in_pos;
		b->inf->next_in = b->in + b->in_pos;
		b->inf->avail_in = (uint32_t)avail;
		b->inf->next_out = b->out;
		b->inf->avail_out = BLOB_OUT_SIZE;
		int ret = isal_inflate(b->inf);
		if (ret < 0) {
			log_err("%s: corrupt gzip stream (igzip error %d near raw byte %llu)", b->what, ret,
				(unsigned long long)(b->raw_total - avail));
			return fail(b, -EBADMSG);
		}
		size_t used = avail - b->inf->avail_in;
		b->in_pos += used;
		b->out_len = BLOB_OUT_SIZE - b->inf->avail_out;
		if (b->inf->block_state == ISAL_BLOCK_FINISH)
			b->gz_member_done = true;
		if (b->out_len > 0)
			return 0;
		if (b->gz_member_done)
			continue;
		if (b->raw_eof && b->in_pos == b->in_len) {
			log_err("truncated gzip stream in %s (after %llu raw bytes); re-fetch or re-export the image",
				b->what, (unsigned long long)b->raw_total);
			return fail(b, -EBADMSG);
		}
		if (used == 0 && b->in_len - b->in_pos == BLOB_IN_SIZE) {
			log_err("%s: gzip decoder made no progress", b->what);
			return fail(b, -EBADMSG);
		}
	}
}

static int zstd_produce(struct blob_stream *b)
{
	b->out_pos = b->out_len = 0;
	for (;;) {
		if (b->in_pos == b->in_len && !b->raw_eof) {
			ssize_t r = fill_in(b);
			if (r < 0)
				return fail(b, (int)r);
			continue;
		}
		/* After a complete frame an empty call would only ask for the
		 * next frame's header: the end is here. */
		if (b->raw_eof && b->in_pos == b->in_len && b->zret == 0)
			return 0;
		ZSTD_inBuffer zin = {b->in + b->in_pos, b->in_len - b->in_pos, 0};
		ZSTD_outBuffer zout = {b->out, BLOB_OUT_SIZE, 0};
		size_t ret = ZSTD_decompressStream(b->zd, &zout, &zin);
		if (ZSTD_isError(ret)) {
			log_err("%s: corrupt zstd stream: %s", b->what, ZSTD_getErrorName(ret));
			return fail(b, -EBADMSG);
		}
		b->zret = ret;
		b->in_pos += zin.pos;
		b->out_len = zout.pos;
		if (b->out_len > 0)
			return 0;
		if (b->raw_eof && b->in_pos == b->in_len && b->zret != 0) {
			log_err("truncated zstd stream in %s (after %llu raw bytes); re-fetch or re-export the image",
				b->what, (unsigned long long)b->raw_total);
			return fail(b, -EBADMSG);
		}
		if (zin.pos == 0 && b->in_len - b->in_pos == BLOB_IN_SIZE) {
			log_err("%s: zstd decoder made no progress", b->what);
			return fail(b, -EBADMSG);
		}
	}
}

/* What a read of |*n| bytes returns without reading: the sticky error, or 0
 * at the end or for n = 0 (true, with |*ret| set).  Clamps |*n| otherwise. */
static bool stream_ended(struct blob_stream *b, size_t *n, ssize_t *ret)
{
	*ret = b->err;
	if (b->err || b->done || *n == 0)
		return true;
	if (*n > SSIZE_MAX)
		*n = SSIZE_MAX;
	return false;
}

/* Map a plain blob that is a regular file.  Where it cannot be mapped (a
 * pipe, an empty file, no address space left) |b->map| stays NULL and the
 * bytes are read and copied as usual. */
static void map_plain(struct blob_stream *b)
{
	struct stat st;
	if (b->fd < 0 || fstat(b->fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size <= 0 ||
	    (uint64_t)st.st_size >= SIZE_MAX)
		return;
	/* Mapping one byte more than the declared size is enough for the size
	 * check to fire and keeps an absurd file from using the address space.
	 * A file that shrinks while mapped ends the import with SIGBUS, never
	 * with a wrong image; blobs are written once and renamed into place. */
	uint64_t len = (uint64_t)st.st_size;
	if (b->max_raw < UINT64_MAX && len > b->max_raw + 1)
		len = b->max_raw + 1;
	void *p = mmap(NULL, (size_t)len, PROT_READ, MAP_PRIVATE, b->fd, 0);
	if (p == MAP_FAILED)
		return;
	/* Read once, front to back: read ahead and drop behind. */
	madvise(p, (size_t)len, MADV_SEQUENTIAL);
	b->map = p;
	b->map_len = (size_t)len;
}

/* read_ref of a mapped plain blob: the probe's bytes (still in |in|, which a
 * plain blob never refills), then the mapping from where the probe ended. */
static ssize_t blob_read_ref(struct byte_stream *s, const void **out, size_t n)
{
	struct blob_stream *b = (struct blob_stream *)s;
	ssize_t ended;
	if (stream_ended(b, &n, &ended))
		return ended;
	if (b->in_pos < b->in_len) {
		size_t k = b->in_len - b->in_pos;
		if (k > n)
			k = n;
		*out = b->in + b->in_pos;
		b->in_pos += k;
		return (ssize_t)k;
	}
	uint64_t at = b->raw_total;
	if (!b->raw_eof && at >= b->map_len) {
		/* The mapping is used up; a file that grew since it was mapped
		 * has been modified, and its digest would not match either. */
		uint8_t probe;
		ssize_t r;
		do
			r = pread(b->fd, &probe, 1, (off_t)at);
		while (r < 0 && errno == EINTR);
		if (r != 0) {
			int e = r < 0 ? -errno : -EBADMSG;
			log_err("%s: %s", b->what, r < 0 ? strerror(-e) : "the blob grew while it was read; the source was modified");
			return fail(b, e);
		}
		b->raw_eof = true;
	}
	if (b->raw_eof) {
		int e = finish(b);
		return e < 0 ? e : 0;
	}
	size_t k = b->map_len - (size_t)at;
	if (k > n)
		k = n;
	uint64_t total = at + k;
	if (total > b->max_raw) {
		log_err("%s: blob is larger than its declared size of %llu bytes; the source is corrupt or was "
			"modified",
			b->what, (unsigned long long)b->max_raw);
		return fail(b, -EFBIG);
	}
	if (b->raw_md && EVP_DigestUpdate(b->raw_md, b->map + at, k) != 1) {
		log_err("%s: sha256 update failed", b->what);
		return fail(b, -EIO);
	}
	b->raw_total = total;
	*out = b->map + at;
	return (ssize_t)k;
}

static ssize_t blob_read(struct byte_stream *s, void *buf, size_t n)
{
	struct blob_stream *b = (struct blob_stream *)s;
	ssize_t ended;
	if (stream_ended(b, &n, &ended))
		return ended;

	if (b->kind == BLOB_PLAIN && b->map) {
		/* Mapped: read is read_ref plus the one copy a caller that
		 * wants the bytes in its own buffer asks for. */
		const void *p;
		ssize_t k = blob_read_ref(s, &p, n);
		if (k > 0)
			memcpy(buf, p, (size_t)k);
		return k;
	}
	if (b->kind == BLOB_PLAIN) {
		/* The magic-byte probe left a few bytes in |in|; after those the
		 * raw bytes go straight to the caller with no copy. */
		if (b->in_pos < b->in_len) {
			size_t k = b->in_len - b->in_pos;
			if (k > n)
				k = n;
			memcpy(buf, b->in + b->in_pos, k);
			b->in_pos += k;
			return (ssize_t)k;
		}
		if (!b->raw_eof) {
			ssize_t r = raw_read(b, buf, n);
			if (r < 0)
				return fail(b, (int)r);
			if (r > 0)
				return r;
			b->raw_eof = true;
		}
		int e = finish(b);
		return e < 0 ? e : 0;
	}

	if (b->out_pos == b->out_len) {
		int e = b->kind == BLOB_GZIP ? gzip_produce(b) : zstd_produce(b);
		if (e < 0)
			return e;
		if (b->out_len == 0) {
			e = finish(b);
			return e < 0 ? e : 0;
		}
	}
	ssize_t k = deliver(b, buf, n);
	if (b->out_md && EVP_DigestUpdate(b->out_md, buf, (size_t)k) != 1) {
		log_err("%s: sha256 update failed", b->what);
		return fail(b, -EIO);
	}
	return k;
}

static void blob_close(struct byte_stream *s)
{
	struct blob_stream *b = (struct blob_stream *)s;
	if (!b)
		return;
	if (b->raw)
		byte_stream_close(b->raw);
	if (b->map)
		munmap((void *)b->map, b->map_len);
	if (b->fd >= 0)
		close(b->fd);
	EVP_MD_CTX_free(b->raw_md);
	EVP_MD_CTX_free(b->out_md);
	free(b->inf);
	ZSTD_freeDCtx(b->zd);
	free(b->in);
	free(b->out);
	free(b->what);
	free(b);
}

static bool valid_digest(const char *d)
{
	return d && strncmp(d, "sha256:", 7) == 0 && is_sha256_hex(d + 7);
}

static struct byte_stream *blob_open(int fd, struct byte_stream *raw, const char *what, const char *digest,
				     const char *diff_id, uint64_t max_raw)
{
	int err = ENOMEM;
	struct blob_stream *b = calloc(1, sizeof(*b));
	if (!b) {
		if (raw)
			byte_stream_close(raw);
		if (fd >= 0)
			close(fd);
		errno = ENOMEM;
		return NULL;
	}
	b->fd = fd;
	b->raw = raw;
	b->pub.read = blob_read;
	b->pub.close = blob_close;
	b->max_raw = max_raw;
	b->what = strdup(what ? what : "blob");
	if (!b->what)
		goto fail;
	b->pub.what = b->what;
	if ((digest && !valid_digest(digest)) || (diff_id && *diff_id && !valid_digest(diff_id))) {
		log_err("%s: bad digest to verify against (%s); only sha256 digests are supported", b->what,
			digest && !valid_digest(digest) ? digest : diff_id);
		err = EINVAL;
		goto fail;
	}
	if (digest) {
		b->check_digest = true;
		snprintf(b->digest, sizeof(b->digest), "%s", digest);
	}
	if (diff_id && *diff_id) {
		b->check_diff = true;
		snprintf(b->diff_id, sizeof(b->diff_id), "%s", diff_id);
	}
	b->in = malloc(BLOB_IN_SIZE);
	if (!b->in)
		goto fail;
	if (b->check_digest || b->check_diff) {
		b->raw_md = EVP_MD_CTX_new();
		if (!b->raw_md || EVP_DigestInit_ex(b->raw_md, EVP_sha256(), NULL) != 1)
			goto fail_crypto;
	}

	/* Probe the magic bytes; short blobs simply end up plain. */
	while (b->in_len < 4 && !b->raw_eof) {
		ssize_t r = fill_in(b);
		if (r < 0) {
			err = (int)-r;
			goto fail;
		}
	}
	if (b->in_len >= 2 && b->in[0] == 0x1f && b->in[1] == 0x8b)
		b->kind = BLOB_GZIP;
	else if (b->in_len >= 4 && b->in[0] == 0x28 && b->in[1] == 0xb5 && b->in[2] == 0x2f && b->in[3] == 0xfd)
		b->kind = BLOB_ZSTD;
	else
		b->kind = BLOB_PLAIN;

	if (b->kind != BLOB_PLAIN) {
		b->out = malloc(BLOB_OUT_SIZE);
		if (!b->out)
			goto fail;
		if (b->check_diff) {
			b->out_md = EVP_MD_CTX_new();
			if (!b->out_md || EVP_DigestInit_ex(b->out_md, EVP_sha256(), NULL) != 1)
				goto fail_crypto;
		}
	}
	if (b->kind == BLOB_GZIP) {
		b->inf = malloc(sizeof(*b->inf));
		if (!b->inf)
			goto fail;
		isal_inflate_init(b->inf);
		b->inf->crc_flag = ISAL_GZIP;
	} else if (b->kind == BLOB_ZSTD) {
		b->zd = ZSTD_createDCtx();
		if (!b->zd)
			goto fail;
		b->zret = 1;
	}
	if (b->kind == BLOB_PLAIN && !b->raw_eof) {
		map_plain(b);
		if (b->map)
			b->pub.read_ref = blob_read_ref;
	}
	return &b->pub;

fail_crypto:
	log_err("%s: cannot set up sha256 (OpenSSL)", b->what ? b->what : "blob");
	err = EIO;
fail:
	blob_close(&b->pub);
	errno = err;
	return NULL;
}

/* Contract in internal.h.  |max_raw| is a hard bound: a blob with more raw
 * bytes fails with -EFBIG (pass UINT64_MAX for "unknown"). */
struct byte_stream *blob_stream_open_fd(int fd, const char *what, const char *digest, const char *diff_id,
					uint64_t max_raw)
{
	if (fd < 0) {
		errno = EBADF;
		return NULL;
	}
	return blob_open(fd, NULL, what, digest, diff_id, max_raw);
}

/* Contract in internal.h; |raw| is closed even on failure. */
struct byte_stream *blob_stream_wrap(struct byte_stream *raw, const char *what, const char *digest,
				     const char *diff_id, uint64_t max_raw)
{
	if (!raw) {
		errno = EINVAL;
		return NULL;
	}
	return blob_open(-1, raw, what, digest, diff_id, max_raw);
}

/* ---- streams over memory ---------------------------------------------------- */

static ssize_t mem_read(struct byte_stream *s, void *buf, size_t n)
{
	struct byte_stream_mem *m = (struct byte_stream_mem *)s;
	if (n > m->left)
		n = m->left;
	memcpy(buf, m->p, n);
	m->p += n;
	m->left -= n;
	return (ssize_t)n;
}

/* The bytes outlive the stream (byte_stream_mem_init), so they can be lent. */
static ssize_t mem_read_ref(struct byte_stream *s, const void **out, size_t n)
{
	struct byte_stream_mem *m = (struct byte_stream_mem *)s;
	if (n > m->left)
		n = m->left;
	*out = m->p;
	m->p += n;
	m->left -= n;
	return (ssize_t)n;
}

static void mem_close(struct byte_stream *s)
{
	(void)s; /* the bytes are the caller's */
}

void byte_stream_mem_init(struct byte_stream_mem *m, const void *p, size_t n, const char *what)
{
	*m = (struct byte_stream_mem){ .base = { .read = mem_read, .read_ref = mem_read_ref, .close = mem_close, .what = what },
				       .p = p,
				       .left = n };
}
