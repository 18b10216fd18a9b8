/* L2 fragments: the on-memcached value format, its checked parser, and the
 * Reed-Solomon codec (ISA-L) that splits a chunk into k data + m parity
 * fragments and rebuilds it from any k.  No I/O and no shared state here, so
 * the unit test and the fuzz target exercise exactly the code the L2 client
 * runs.  The format is described in internal.h ("L2 fragment format"). */
#include "internal.h"

#include "common/bytes.h"

#include <errno.h>
#include <isa-l/crc.h>
#include <isa-l/erasure_code.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

uint32_t l2_crc32c(const uint8_t *p, size_t n)
{
	uint32_t crc = 0xffffffffu;
	while (n > 0) {
		int part = n > (1u << 30) ? (1 << 30) : (int)n;
		crc = crc32_iscsi((unsigned char *)(uintptr_t)p, part, crc);
		p += part;
		n -= (size_t)part;
	}
	return ~crc;
}

size_t l2_frag_len(size_t chunk_len, unsigned k)
{
	return chunk_len / k + (chunk_len % k != 0);
}

static bool is_name_hex(const uint8_t *p)
{
	for (size_t i = 0; i < CHUNK_NAME_HEX_LEN; i++)
		if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f')))
			return false;
	return true;
}

static bool km_valid(unsigned k, unsigned m)
{
	return k >= 1 && k <= L2_MAX_K && m <= L2_MAX_M && k + m <= L2_MAX_FRAGS;
}

int l2_fragment_parse_header(const uint8_t *hdr, const uint8_t *data, size_t data_len, const char *expect_name,
			     unsigned expect_k, unsigned expect_m, struct l2_fragment_view *out)
{
	if (!hdr || memcmp(hdr, L2_FRAG_MAGIC, 4) != 0 || hdr[4] != L2_FRAG_VERSION)
		return -EBADMSG;
	unsigned k = hdr[5], m = hdr[6], index = hdr[7];
	if (k != expect_k || m != expect_m || !km_valid(k, m) || index >= k + m)
		return -EBADMSG;
	uint32_t chunk_len = get_le32(hdr + 8), frag_len = get_le32(hdr + 12);
	if (chunk_len == 0 || chunk_len > CHUNK_SIZE || frag_len != l2_frag_len(chunk_len, k) || frag_len != data_len)
		return -EBADMSG;
	if (!is_name_hex(hdr + 16))
		return -EBADMSG;
	if (expect_name && (strlen(expect_name) != CHUNK_NAME_HEX_LEN || memcmp(hdr + 16, expect_name, CHUNK_NAME_HEX_LEN)))
		return -EBADMSG;
	out->k = k;
	out->m = m;
	out->index = index;
	out->chunk_len = chunk_len;
	out->frag_len = frag_len;
	out->data = data;
	return 0;
}

bool l2_fragment_crc_ok(const uint8_t *hdr, const uint8_t *data, size_t data_len)
{
	return get_le32(hdr + 80) == l2_crc32c(data, data_len);
}

int l2_fragment_parse_split(const uint8_t *hdr, const uint8_t *data, size_t data_len, const char *expect_name,
			    unsigned expect_k, unsigned expect_m, struct l2_fragment_view *out)
{
	int r = l2_fragment_parse_header(hdr, data, data_len, expect_name, expect_k, expect_m, out);
	if (r == 0 && !l2_fragment_crc_ok(hdr, data, data_len))
		r = -EBADMSG;
	return r;
}

int l2_fragment_parse(const uint8_t *buf, size_t len, const char *expect_name, unsigned expect_k, unsigned expect_m,
		      struct l2_fragment_view *out)
{
	if (!buf || len < L2_FRAG_HDR_LEN)
		return -EBADMSG;
	return l2_fragment_parse_split(buf, buf + L2_FRAG_HDR_LEN, len - L2_FRAG_HDR_LEN, expect_name, expect_k,
				       expect_m, out);
}

int l2_fragment_header(uint8_t *hdr, const char *name, unsigned k, unsigned m, unsigned index, size_t chunk_len,
		       const uint8_t *data, size_t frag_len)
{
	if (!km_valid(k, m) || index >= k + m || chunk_len == 0 || chunk_len > CHUNK_SIZE ||
	    frag_len != l2_frag_len(chunk_len, k) || !is_sha256_hex(name))
		return -EINVAL;
	memcpy(hdr, L2_FRAG_MAGIC, 4);
	hdr[4] = L2_FRAG_VERSION;
	hdr[5] = (uint8_t)k;
	hdr[6] = (uint8_t)m;
	hdr[7] = (uint8_t)index;
	put_le32(hdr + 8, (uint32_t)chunk_len);
	put_le32(hdr + 12, (uint32_t)frag_len);
	memcpy(hdr + 16, name, CHUNK_NAME_HEX_LEN);
	put_le32(hdr + 80, l2_crc32c(data, frag_len));
	return 0;
}

int l2_codec_init(struct l2_codec *c, unsigned k, unsigned m)
{
	memset(c, 0, sizeof(*c));
	if (!km_valid(k, m))
		return -EINVAL;
	c->k = k;
	c->m = m;
	c->matrix = malloc((size_t)(k + m) * k);
	c->tables = malloc(32u * k * (m ? m : 1));
	if (!c->matrix || !c->tables) {
		l2_codec_cleanup(c);
		return -ENOMEM;
	}
	/* Cauchy rather than Vandermonde (gf_gen_rs_matrix): every k x k
	 * submatrix of a Cauchy matrix is invertible, for any k and m. */
	gf_gen_cauchy1_matrix(c->matrix, (int)(k + m), (int)k);
	if (m)
		ec_init_tables((int)k, (int)m, c->matrix + (size_t)k * k, c->tables);
	return 0;
}

void l2_codec_cleanup(struct l2_codec *c)
{
	if (!c)
		return;
	free(c->matrix);
	free(c->tables);
	c->matrix = c->tables = NULL;
}

int l2_codec_encode(const struct l2_codec *c, const char *name, const uint8_t *chunk, size_t len, uint8_t *vals)
{
	unsigned k = c->k, m = c->m;
	if (len == 0 || len > CHUNK_SIZE || !is_sha256_hex(name))
		return -EINVAL;
	size_t fl = l2_frag_len(len, k), stride = L2_FRAG_HDR_LEN + fl;
	uint8_t *data[L2_MAX_FRAGS];
	for (unsigned i = 0; i < k + m; i++)
		data[i] = vals + (size_t)i * stride + L2_FRAG_HDR_LEN;
	for (unsigned i = 0; i < k; i++) {
		size_t off = (size_t)i * fl, n = off < len ? len - off : 0;
		if (n > fl)
			n = fl;
		memcpy(data[i], chunk + off, n);
		memset(data[i] + n, 0, fl - n);
	}
	if (m)
		ec_encode_data((int)fl, (int)k, (int)m, c->tables, data, data + k);
	for (unsigned i = 0; i < k + m; i++) {
		int r = l2_fragment_header(vals + (size_t)i * stride, name, k, m, i, len, data[i], fl);
		if (r < 0)
			return r;
	}
	return 0;
}

void l2_frag_set_init(struct l2_frag_set *s, unsigned k, unsigned m)
{
	memset(s, 0, sizeof(*s));
	s->k = k;
	s->m = m;
}

int l2_frag_set_add(struct l2_frag_set *s, const struct l2_fragment_view *v)
{
	if (v->k != s->k || v->m != s->m || v->index >= s->k + s->m)
		return -EBADMSG;
	if (s->n > 0 && (v->chunk_len != s->chunk_len || v->frag_len != s->frag_len))
		return -EBADMSG;
	if (s->data[v->index])
		return -EEXIST;
	s->chunk_len = v->chunk_len;
	s->frag_len = v->frag_len;
	s->data[v->index] = v->data;
	s->n++;
	return 0;
}

/* Copy the part of data fragment |j| that lies inside the chunk. */
static void place(uint8_t *out, size_t chunk_len, size_t fl, unsigned j, const uint8_t *frag)
{
	size_t off = (size_t)j * fl;
	if (off >= chunk_len)
		return;
	size_t n = chunk_len - off < fl ? chunk_len - off : fl;
	if (frag != out + off) /* the reader may have received it in place */
		memcpy(out + off, frag, n);
}

int l2_frag_set_decode(const struct l2_codec *c, const struct l2_frag_set *s, uint8_t *out, size_t out_cap,
		       size_t *out_len, bool *decoded)
{
	unsigned k = c->k, m = c->m;
	if (s->k != k || s->m != m)
		return -EINVAL;
	if (s->n < k)
		return -ENOENT;
	size_t len = s->chunk_len, fl = s->frag_len;
	if (len == 0 || len > out_cap || fl != l2_frag_len(len, k))
		return len > out_cap ? -ENOSPC : -EINVAL;
	*out_len = len;
	*decoded = false;

	/* Choose k rows: every data fragment held, then parity to make up k. */
	unsigned rows[L2_MAX_FRAGS], nrows = 0, missing[L2_MAX_FRAGS], nmiss = 0;
	for (unsigned j = 0; j < k; j++) {
		if (s->data[j]) {
			rows[nrows++] = j;
			place(out, len, fl, j, s->data[j]);
		} else {
			missing[nmiss++] = j;
		}
	}
	if (nmiss == 0)
		return 0; /* systematic code: all data fragments held, a copy */
	for (unsigned j = k; j < k + m && nrows < k; j++)
		if (s->data[j])
			rows[nrows++] = j;
	if (nrows < k)
		return -ENOENT;

	/* data = inverse(B) * held, where B holds the matrix rows of the k
	 * fragments held; only the rows of the missing data are needed. */
	uint8_t b[L2_MAX_K * L2_MAX_K], inv[L2_MAX_K * L2_MAX_K], dm[L2_MAX_M * L2_MAX_K];
	uint8_t tables[32 * L2_MAX_K * L2_MAX_M];
	for (unsigned r = 0; r < k; r++)
		memcpy(b + (size_t)r * k, c->matrix + (size_t)rows[r] * k, k);
	if (gf_invert_matrix(b, inv, (int)k) < 0)
		return -EINVAL; /* cannot happen for a Cauchy matrix */
	for (unsigned i = 0; i < nmiss; i++)
		memcpy(dm + (size_t)i * k, inv + (size_t)missing[i] * k, k);
	ec_init_tables((int)k, (int)nmiss, dm, tables);

	uint8_t *src[L2_MAX_FRAGS], *dst[L2_MAX_FRAGS], *scratch = NULL;
	size_t n_scratch = 0;
	for (unsigned r = 0; r < k; r++)
		src[r] = (uint8_t *)(uintptr_t)s->data[rows[r]];
	for (unsigned i = 0; i < nmiss; i++)
		if ((size_t)(missing[i] + 1) * fl > len)
			n_scratch++;
	if (n_scratch) {
		scratch = malloc(n_scratch * fl);
		if (!scratch)
			return -ENOMEM;
	}
	size_t used = 0;
	bool in_scratch[L2_MAX_FRAGS];
	for (unsigned i = 0; i < nmiss; i++) {
		in_scratch[i] = (size_t)(missing[i] + 1) * fl > len; /* runs past the chunk end */
		dst[i] = in_scratch[i] ? scratch + (used++) * fl : out + (size_t)missing[i] * fl;
	}
	ec_encode_data((int)fl, (int)k, (int)nmiss, tables, src, dst);
	for (unsigned i = 0; i < nmiss; i++)
		if (in_scratch[i])
			place(out, len, fl, missing[i], dst[i]);
	free(scratch);
	*decoded = true;
	return 0;
}
