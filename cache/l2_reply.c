/* The memcached text-protocol reply to one "get KEY", parsed incrementally
 * from untrusted bytes (contract in internal.h, "L2 wire").
 *
 * Why our own reader rather than libmemcached's on the read path: a 4+1 read
 * wants the value bytes to land straight in the chunk buffer, fragment i at
 * i * frag_len, and the name hash to run over fragment 0 while fragments 1..3
 * are still on the wire.  libmemcached hands back a malloc'd copy only when
 * the whole value is in, from a blocking call per server.  Writes, deletes
 * and health probes still go through libmemcached (l2_write.c,
 * l2_health.c). */
#include "internal.h"

#include <string.h>

#define TRAILER "\r\nEND\r\n"
#define TRAILER_LEN 7u

void l2_reply_init(struct l2_reply *r, const char *key, size_t key_len, size_t max_value, uint8_t *hdr,
		   size_t hdr_len)
{
	memset(r, 0, sizeof(*r));
	r->state = L2R_LINE;
	r->key = key;
	r->key_len = key_len;
	r->max_value = max_value;
	r->hdr = hdr;
	r->hdr_len = hdr_len;
}

static bool parse_u64(const char *s, size_t n, uint64_t max, uint64_t *out)
{
	if (n == 0 || n > 20)
		return false;
	uint64_t v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		unsigned d = (unsigned)(s[i] - '0');
		if (v > (max - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*out = v;
	return true;
}

static void fail(struct l2_reply *r, enum l2_reply_result why)
{
	r->state = L2R_DONE;
	r->result = why;
}

/* A whole line (without CR LF) has arrived. */
static void on_line(struct l2_reply *r)
{
	const char *p = r->line;
	size_t n = r->line_len;
	if (n == 3 && memcmp(p, "END", 3) == 0) {
		fail(r, L2R_MISS);
		return;
	}
	if ((n >= 12 && memcmp(p, "SERVER_ERROR", 12) == 0) || (n >= 12 && memcmp(p, "CLIENT_ERROR", 12) == 0) ||
	    (n == 5 && memcmp(p, "ERROR", 5) == 0)) {
		fail(r, L2R_SERVER_ERROR);
		return;
	}
	/* VALUE <key> <flags> <bytes>[ <cas>] */
	if (n < 6 || memcmp(p, "VALUE ", 6) != 0) {
		fail(r, L2R_PROTO);
		return;
	}
	const char *f[4];
	size_t fl[4], nf = 0, i = 6;
	while (i < n && nf < 4) {
		size_t s = i;
		while (i < n && p[i] != ' ')
			i++;
		if (i == s) { /* two spaces in a row */
			fail(r, L2R_PROTO);
			return;
		}
		f[nf] = p + s;
		fl[nf++] = i - s;
		if (i < n)
			i++; /* the space */
	}
	uint64_t flags, bytes, cas;
	if (i < n || nf < 3 || p[n - 1] == ' ' || fl[0] != r->key_len || memcmp(f[0], r->key, r->key_len) != 0 ||
	    !parse_u64(f[1], fl[1], UINT32_MAX, &flags) || !parse_u64(f[2], fl[2], SIZE_MAX, &bytes) ||
	    (nf == 4 && !parse_u64(f[3], fl[3], UINT64_MAX, &cas))) {
		fail(r, L2R_PROTO);
		return;
	}
	if (bytes > r->max_value) {
		fail(r, L2R_PROTO);
		return;
	}
	r->value_len = (size_t)bytes;
	r->got = 0;
	r->trailer_got = 0;
	r->state = r->value_len == 0 ? L2R_TRAILER : r->hdr_len == 0 && r->value_len > 0 ? L2R_NEED_DST : L2R_VALUE;
}

/* Where value byte |r->got| goes, and how many contiguous bytes go there. */
static uint8_t *value_window(struct l2_reply *r, size_t *len)
{
	if (r->got < r->hdr_len) {
		size_t in_hdr = r->hdr_len - r->got;
		size_t left = r->value_len - r->got;
		*len = in_hdr < left ? in_hdr : left;
		return r->hdr + r->got;
	}
	*len = r->value_len - r->got;
	return r->data ? r->data + (r->got - r->hdr_len) : NULL;
}

uint8_t *l2_reply_window(struct l2_reply *r, size_t *len)
{
	*len = 0;
	if (r->state != L2R_VALUE || r->got >= r->value_len)
		return NULL;
	return value_window(r, len);
}

void l2_reply_set_data(struct l2_reply *r, uint8_t *data)
{
	if (r->state == L2R_NEED_DST) {
		r->data = data;
		r->state = L2R_VALUE;
	}
}

static void value_advance(struct l2_reply *r, size_t n)
{
	r->got += n;
	if (r->got == r->value_len) {
		r->state = L2R_TRAILER;
		r->trailer_got = 0;
	} else if (r->got == r->hdr_len) {
		/* The header is in: the caller can judge it before choosing
		 * where the rest goes. */
		r->state = L2R_NEED_DST;
	}
}

void l2_reply_advance(struct l2_reply *r, size_t n)
{
	size_t win;
	if (r->state == L2R_VALUE && value_window(r, &win) && n <= win)
		value_advance(r, n);
}

size_t l2_reply_feed(struct l2_reply *r, const uint8_t *p, size_t n)
{
	size_t used = 0;
	while (used < n && r->state != L2R_DONE && r->state != L2R_NEED_DST) {
		switch (r->state) {
		case L2R_LINE: {
			uint8_t c = p[used++];
			if (c == '\n') {
				if (r->line_len == 0 || r->line[r->line_len - 1] != '\r') {
					fail(r, L2R_PROTO);
					break;
				}
				r->line_len--;
				on_line(r);
				break;
			}
			if (r->line_len + 1 >= sizeof(r->line)) {
				fail(r, L2R_PROTO);
				break;
			}
			r->line[r->line_len++] = (char)c;
			break;
		}
		case L2R_VALUE: {
			size_t win;
			uint8_t *dst = value_window(r, &win);
			size_t take = n - used < win ? n - used : win;
			if (dst)
				memcpy(dst, p + used, take);
			used += take;
			value_advance(r, take);
			break;
		}
		case L2R_TRAILER:
			if (p[used++] != (uint8_t)TRAILER[r->trailer_got]) {
				fail(r, L2R_PROTO);
				break;
			}
			if (++r->trailer_got == TRAILER_LEN)
				fail(r, L2R_HIT);
			break;
		default:
			break;
		}
	}
	return used;
}
