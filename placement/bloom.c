/* placement: the Bloom filter of a host's L1 chunks (placement.h). */
#undef LOG_COMPONENT
#define LOG_COMPONENT "placement"

#include "placement/placement.h"

#include "common/bytes.h"
#include "common/common.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int placement_bloom_init(struct placement_bloom *b, uint32_t bits, uint32_t hashes)
{
	memset(b, 0, sizeof(*b));
	if (bits == 0)
		bits = PLACEMENT_BLOOM_DEFAULT_BITS;
	if (hashes == 0)
		hashes = PLACEMENT_BLOOM_DEFAULT_HASHES;
	if (bits < 64 || bits > PLACEMENT_BLOOM_MAX_BITS || bits % 8 || hashes > 16)
		return -EINVAL;
	b->map = calloc(bits / 8, 1);
	if (!b->map)
		return -ENOMEM;
	b->bits = bits;
	b->hashes = hashes;
	return 0;
}

void placement_bloom_cleanup(struct placement_bloom *b)
{
	free(b->map);
	memset(b, 0, sizeof(*b));
}

/* Position |i| of |digest|: double hashing on two words of a digest that is
 * already uniform. */
static uint32_t bloom_pos(const struct placement_bloom *b, const uint8_t digest[32], uint32_t i)
{
	uint64_t h1 = get_le64(digest), h2 = get_le64(digest + 8) | 1;
	return (uint32_t)((h1 + (uint64_t)i * h2) % b->bits);
}

void placement_bloom_add_digest(struct placement_bloom *b, const uint8_t digest[32])
{
	for (uint32_t i = 0; i < b->hashes; i++) {
		uint32_t p = bloom_pos(b, digest, i);
		b->map[p / 8] |= (uint8_t)(1u << (p % 8));
	}
	b->entries++;
}

bool placement_bloom_has_digest(const struct placement_bloom *b, const uint8_t digest[32])
{
	if (!b->map)
		return false;
	for (uint32_t i = 0; i < b->hashes; i++) {
		uint32_t p = bloom_pos(b, digest, i);
		if (!(b->map[p / 8] & (1u << (p % 8))))
			return false;
	}
	return true;
}

int placement_bloom_add(struct placement_bloom *b, const char *name)
{
	uint8_t d[32];
	if (strlen(name) != 64 || hex_decode(name, d, sizeof(d)) != 0)
		return -EINVAL;
	placement_bloom_add_digest(b, d);
	return 0;
}

char *placement_bloom_encode(const struct placement_bloom *b)
{
	size_t n = b->bits / 8;
	size_t b64 = 4 * ((n + 2) / 3);
	char *out = malloc(64 + b64 + 1);
	if (!out)
		return NULL;
	int h = snprintf(out, 64, "%u:%u:%u:", b->bits, b->hashes, b->entries);
	EVP_EncodeBlock((unsigned char *)out + h, b->map, (int)n);
	return out;
}

/* One "N:" of the header: decimal digits without a leading zero (so the
 * text is canonical), at most 10 of them.  The text after the colon, or
 * NULL. */
static const char *header_field(const char *p, uint64_t *out)
{
	uint64_t v = 0;
	size_t n = 0;
	for (; p[n] >= '0' && p[n] <= '9'; n++) {
		if (n == 10)
			return NULL;
		v = v * 10 + (uint64_t)(p[n] - '0');
	}
	if (n == 0 || p[n] != ':' || (n > 1 && p[0] == '0'))
		return NULL;
	*out = v;
	return p + n + 1;
}

int placement_bloom_decode(const char *text, struct placement_bloom *b)
{
	memset(b, 0, sizeof(*b));
	uint64_t bits, hashes, entries;
	const char *p = text;
	if (!(p = header_field(p, &bits)) || !(p = header_field(p, &hashes)) || !(p = header_field(p, &entries)) ||
	    entries > UINT32_MAX || bits > PLACEMENT_BLOOM_MAX_BITS || hashes == 0)
		return -EINVAL;
	int r = placement_bloom_init(b, (uint32_t)bits, (uint32_t)hashes);
	if (r < 0)
		return -EINVAL;
	size_t n = b->bits / 8, len = strlen(p);
	if (len != 4 * ((n + 2) / 3))
		goto bad;
	uint8_t *tmp = malloc(len + 1); /* holds the decoded bytes, then the text again */
	if (!tmp)
		goto bad;
	int got = EVP_DecodeBlock(tmp, (const unsigned char *)p, (int)len);
	size_t pad = (n % 3) ? 3 - n % 3 : 0;
	if (got < 0 || (size_t)got != n + pad) {
		free(tmp);
		goto bad;
	}
	memcpy(b->map, tmp, n);
	/* Only the canonical text: padding as '=', no stray bits (EVP_DecodeBlock
	 * takes data bytes where the padding belongs, and ignores unused bits). */
	EVP_EncodeBlock(tmp, b->map, (int)n);
	bool canonical = memcmp(tmp, p, len) == 0;
	free(tmp);
	if (!canonical)
		goto bad;
	b->entries = (uint32_t)entries;
	return 0;
bad:
	placement_bloom_cleanup(b);
	return -EINVAL;
}
