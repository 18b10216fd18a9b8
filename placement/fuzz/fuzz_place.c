/* Fuzz target for what the placement service parses (placement/records.c,
 * placement/bloom.c): POST /v1/place's body from clients, and from etcd the
 * host registrations, the reservation lists and the L1 Bloom summaries.
 *
 * Input: a selector byte (0: place request, 1: host registration, 2:
 * reservations, 3: Bloom text), then the bytes.  Properties checked:
 *   - a parse either succeeds with every field in range, or fails with a
 *     reason and leaves its output empty;
 *   - a Bloom summary that decodes encodes to the same text.
 */
#include "placement/placement.h"
#include "tests/fuzz_target.h"

#include <errno.h>
#include <string.h>

static void place(const uint8_t *d, size_t n)
{
	struct placement_place_request r;
	const char *why;
	int rc = placement_place_request_parse(d, n, &r, &why);
	if (rc == 0) {
		MUST(r.function && r.version && r.memory_mb >= 1 && r.count >= 1 && r.count <= PLACEMENT_MAX_COUNT);
		MUST(r.n_exclude <= PLACEMENT_MAX_EXCLUDE);
		MUST(r.image[0] == 0 || strlen(r.image) == 64);
	} else {
		MUST(rc == -ENOMEM || (rc == -EINVAL && why && !r.function && !r.exclude));
	}
	placement_place_request_cleanup(&r);
}

static void host(const uint8_t *d, size_t n)
{
	struct placement_host_record h;
	const char *why;
	int rc = placement_host_record_parse(d, n, 4, &h, &why);
	if (rc == 0) {
		MUST(h.id && h.url && h.cell < 4 && h.memory_total_mb >= 1 && h.slots_total >= 1);
		for (size_t i = 0; i < h.n_warm; i++)
			MUST(h.warm[i].function && h.warm[i].version);
		/* The parsed host goes through the scoring as the service does. */
		struct placement_host v = { .id = h.id, .cell = h.cell, .memory_total_mb = h.memory_total_mb,
					    .memory_used_mb = h.memory_used_mb, .slots_total = h.slots_total,
					    .slots_used = h.slots_used, .l1 = h.l1.map ? &h.l1 : NULL };
		static const uint8_t chunk[1][32] = { { 1, 2, 3 } };
		struct placement_request q = { .function = "f", .memory_mb = 128, .chunks = chunk, .n_chunks = 1 };
		struct placement_config cfg;
		placement_config_init(&cfg);
		cfg.cells = 4;
		uint64_t rng = 1;
		struct placement_result res;
		int c = placement_choose(&cfg, PLACEMENT_SCORED, &q, &v, 1, &rng, &res);
		MUST(c == 0 || c == -ENOENT || c == -ENOSPC);
	} else {
		MUST(rc == -ENOMEM || (rc == -EINVAL && why && !h.id));
	}
	placement_host_record_cleanup(&h);
}

static void load(const uint8_t *d, size_t n)
{
	uint64_t mem;
	uint32_t cnt, fn;
	int rc = placement_load_parse(d, n, 1000, "f", &mem, &cnt, &fn);
	MUST(rc == 0 || (rc == -EINVAL && mem == 0 && cnt == 0 && fn == 0));
	MUST(fn <= cnt);
}

static void bloom(const uint8_t *d, size_t n)
{
	char *text = malloc(n + 1);
	if (!text)
		return;
	memcpy(text, d, n);
	text[n] = 0;
	struct placement_bloom b;
	if (placement_bloom_decode(text, &b) == 0) {
		char *again = placement_bloom_encode(&b);
		MUST(again);
		MUST(strcmp(again, text) == 0 || strlen(text) != n); /* an embedded NUL cut the input */
		free(again);
		placement_bloom_cleanup(&b);
	} else {
		MUST(b.map == NULL);
	}
	free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	switch (data[0] % 4) {
	case 0:
		place(data + 1, size - 1);
		break;
	case 1:
		host(data + 1, size - 1);
		break;
	case 2:
		load(data + 1, size - 1);
		break;
	default:
		bloom(data + 1, size - 1);
		break;
	}
	return 0;
}
