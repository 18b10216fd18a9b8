/* The L1 summary (placement/bloom.c): encode/decode round trip, membership,
 * and malformed text refused.
 *
 * ctest-labels: no-tsan (pure functions: nothing for ThreadSanitizer to check) */
#include "placement/placement.h"
#include "common/common.h"
#include "tests/check.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static void name_of(unsigned i, char name[65])
{
	static const char hex[] = "0123456789abcdef";
	uint64_t s = i * 2654435761u + 1;
	for (int j = 0; j < 64; j++) {
		s = s * 6364136223846793005ull + 1442695040888963407ull;
		name[j] = hex[(s >> 59) & 15];
	}
	name[64] = 0;
}

int main(void)
{
	struct placement_bloom b, c;
	CHECK(placement_bloom_init(&b, 1 << 14, 7) == 0);
	char name[65];
	for (unsigned i = 0; i < 500; i++) {
		name_of(i, name);
		CHECK(placement_bloom_add(&b, name) == 0);
	}
	CHECK(placement_bloom_add(&b, "xyz") == -EINVAL);
	char *text = placement_bloom_encode(&b);
	CHECK(text != NULL);
	CHECK(strncmp(text, "16384:7:500:", 12) == 0);
	CHECK(placement_bloom_decode(text, &c) == 0);
	CHECK(c.bits == b.bits && c.hashes == b.hashes && c.entries == 500);
	CHECK(memcmp(b.map, c.map, b.bits / 8) == 0);
	/* Every name added is there; few others are. */
	unsigned fp = 0;
	for (unsigned i = 0; i < 500; i++) {
		uint8_t d[32];
		name_of(i, name);
		CHECK(hex_decode(name, d, 32) == 0);
		CHECK(placement_bloom_has_digest(&c, d));
	}
	for (unsigned i = 1000; i < 3000; i++) {
		uint8_t d[32];
		name_of(i, name);
		CHECK(hex_decode(name, d, 32) == 0);
		fp += placement_bloom_has_digest(&c, d);
	}
	CHECK(fp < 20);
	placement_bloom_cleanup(&c);

	/* Malformed text: each refused, leaving |c| empty. */
	size_t len = strlen(text);
	char *bad = malloc(len + 8);
	const char *cases[] = {
		"",
		"16384:7:500",
		"16384:7:500:",
		"x:7:500:AAAA",
		"16385:7:500:AAAA",
		"16384:0:500:AAAA",
		"16384:17:500:AAAA",
		"32:7:0:AAAA",
		"99999999999:7:0:AAAA",
		"16384:7:99999999999:AAAA",
		"64:2:1:AAAAAAAAAAA5", /* a data byte where the padding belongs (found by fuzz_place) */
		"64:2:1:AAAAAAAAAAB=", /* stray bits below the padding */
		"064:2:1:AAAAAAAAAAA=", /* a leading zero (found by fuzz_place) */
		" 64:2:1:AAAAAAAAAAA=",
		"+64:2:1:AAAAAAAAAAA=",
	};
	CHECK(placement_bloom_decode("64:2:1:AAAAAAAAAAA=", &c) == 0);
	placement_bloom_cleanup(&c);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		CHECK(placement_bloom_decode(cases[i], &c) == -EINVAL);
		CHECK(c.map == NULL);
	}
	/* Truncated, extended, a bad base64 character. */
	memcpy(bad, text, len - 4);
	bad[len - 4] = 0;
	CHECK(placement_bloom_decode(bad, &c) == -EINVAL);
	memcpy(bad, text, len + 1);
	strcat(bad, "AAAA");
	CHECK(placement_bloom_decode(bad, &c) == -EINVAL);
	memcpy(bad, text, len + 1);
	bad[len - 10] = '*';
	CHECK(placement_bloom_decode(bad, &c) == -EINVAL);
	free(bad);
	free(text);
	placement_bloom_cleanup(&b);
	return check_report();
}
