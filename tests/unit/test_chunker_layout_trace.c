/* Layout traces (chunker/layout_trace.c): the checked parser refuses what is
 * not a trace with block runs, naming the fault; a document blockd writes
 * (image_trace_encode_blocks) parses back to the same runs; and the plan
 * ranks the files a trace's runs touch by first touch, under the layer whose
 * region holds their data, ignoring runs that touch no file; and plans
 * merge in the order given.
 * Prints "N passed, M failed". */
/* ctest-labels: no-tsan (single-threaded: nothing for ThreadSanitizer to check) */
#include "chunker/internal.h"
#include "tests/check.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DIGEST "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define HEAD "{\"format\":\"kindling-trace-1\",\"manifest\":\"" DIGEST "\",\"chunk_size\":524288,\"chunks\":[1]"

static int parse(const char *doc, struct layout_trace *t)
{
	return layout_trace_parse((const uint8_t *)doc, strlen(doc), "test.json", t);
}

static void test_parser(void)
{
	static const char *const bad[] = {
		"",
		"not json",
		"[1, 2]",
		"{\"format\":\"kindling-trace-2\",\"manifest\":\"" DIGEST "\",\"block_size\":4096,\"blocks\":[]}",
		"{\"format\":\"kindling-trace-1\",\"manifest\":\"ABC\",\"block_size\":4096,\"blocks\":[]}",
		"{\"format\":\"kindling-trace-1\",\"manifest\":\"" DIGEST "0\",\"block_size\":4096,\"blocks\":[]}",
		HEAD "}", /* chunks only: a snapshot's trace or an older blockd's */
		HEAD ",\"block_size\":512,\"blocks\":[]}",
		HEAD ",\"blocks\":[]}",
		HEAD ",\"block_size\":4096,\"blocks\":{}}",
		HEAD ",\"block_size\":4096,\"blocks\":[[1]]}",
		HEAD ",\"block_size\":4096,\"blocks\":[[1,2,3]]}",
		HEAD ",\"block_size\":4096,\"blocks\":[[-1,2]]}",
		HEAD ",\"block_size\":4096,\"blocks\":[[1,0]]}",
		HEAD ",\"block_size\":4096,\"blocks\":[[1,\"2\"]]}",
		HEAD ",\"block_size\":4096,\"blocks\":[[1,2.5]]}",
		HEAD ",\"block_size\":4096,\"blocks\":[[1099511627777,1]]}",
		HEAD ",\"block_size\":4096,\"blocks\":[[1,1099511627777]]}",
		HEAD ",\"block_size\":4096,\"block_size\":4096,\"blocks\":[]}",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct layout_trace t;
		int r = parse(bad[i], &t);
		CHECKF(r == -EBADMSG && t.extents == NULL, "bad trace %zu parsed (%d): %s", i, r, bad[i]);
	}

	struct layout_trace t;
	int r = parse(HEAD ",\"block_size\":4096,\"blocks\":[[7,3],[2,1],[100,20]],\"seconds\":1.5}", &t);
	CHECKF(r == 0 && t.n_extents == 3 && t.extents[0].block == 7 && t.extents[0].count == 3 &&
		      t.extents[1].block == 2 && t.extents[2].count == 20 && strcmp(t.manifest_digest, DIGEST) == 0,
	      "a good trace: %d", r);
	layout_trace_cleanup(&t);

	/* What blockd stores parses back to the same runs. */
	uint64_t chunks[] = {0, 3};
	struct image_trace_extent ext[] = {{.block = 300, .count = 2}, {.block = 5, .count = 1}};
	char *doc = NULL;
	r = image_trace_encode_blocks(DIGEST, 2.0, chunks, 2, ext, 2, &doc);
	CHECKF(r == 0 && doc, "encode: %d", r);
	if (doc) {
		r = parse(doc, &t);
		CHECKF(r == 0 && t.n_extents == 2 && t.extents[0].block == 300 && t.extents[0].count == 2 &&
			      t.extents[1].block == 5 && t.extents[1].count == 1,
		      "encoded trace does not parse back: %d", r);
		layout_trace_cleanup(&t);
		free(doc);
	}
	/* Without runs the document is the chunk-only one, which a layout
	 * refuses. */
	r = image_trace_encode_blocks(DIGEST, 2.0, chunks, 2, NULL, 0, &doc);
	CHECKF(r == 0 && doc && !strstr(doc, "blocks") && parse(doc, &t) == -EBADMSG, "chunk-only trace: %d", r);
	free(doc);
}

#define B IMAGE_TRACE_BLOCK_SIZE

/* The traced image of the plan tests: layer "la" at [512 KiB, 2 MiB), "lb"
 * at [2 MiB, 3 MiB). */
static const struct manifest_layer two_layers[] = {
	{.digest = "sha256:la", .offset = 1 * CHUNK_SIZE, .length = 3 * CHUNK_SIZE},
	{.digest = "sha256:lb", .offset = 4 * CHUNK_SIZE, .length = 2 * CHUNK_SIZE},
};
static const struct manifest two_layer_image = {
	.n_layers = 2, .layers = (struct manifest_layer *)two_layers, .image_size = 8 * CHUNK_SIZE};

static void test_plan(void)
{
	const struct manifest m = two_layer_image;
	uint64_t a = CHUNK_SIZE, b = 4 * CHUNK_SIZE;
	const struct layout_file files[] = {
		{"a/one", a, 2 * B},	      {"a/two", a + 2 * B, 1 * B},  {"a/three", a + 3 * B, 5 * B},
		{"a/link-to-three", a + 3 * B, 5 * B}, /* a hard link: the same data */
		{"a/unread", a + 8 * B, 1 * B}, {"b/first", b, 1 * B},	      {"b/big", b + 4 * B, 40 * B},
	};
	/* First reads: the middle of b/big, then b/first, then a run over the
	 * end of a/one and all of a/two, then one block in a/three, again
	 * b/big, and runs past every file (metadata). */
	struct image_trace_extent ext[] = {
		{.block = b / B + 10, .count = 1}, {.block = b / B, .count = 1},   {.block = a / B + 1, .count = 2},
		{.block = a / B + 5, .count = 1},  {.block = b / B + 4, .count = 1}, {.block = 7 * CHUNK_SIZE / B, .count = 5},
	};
	struct layout_trace t = {.extents = ext, .n_extents = sizeof(ext) / sizeof(ext[0])};
	struct layout_plan *p = NULL;
	int r = layout_plan_build(&t, &m, files, sizeof(files) / sizeof(files[0]), &p);
	CHECKF(r == 0 && p, "plan: %d", r);
	if (!p)
		return;
	CHECKF(layout_plan_files(p) == 6 && layout_plan_layers_with_files(p) == 2, "plan has %zu files in %zu layers",
	      layout_plan_files(p), layout_plan_layers_with_files(p));
	const struct layout_layer *la = layout_plan_layer(p, "sha256:la"), *lb = layout_plan_layer(p, "sha256:lb");
	CHECKF(la && lb && !layout_plan_layer(p, "sha256:other"), "layers by digest");
	uint64_t r1 = 99, r2 = 99, r3 = 99, r4 = 99, rf = 99, rb = 99, ru = 99;
	CHECKF(layout_layer_rank(lb, "b/big", &rb) && layout_layer_rank(lb, "b/first", &rf) && rb < rf,
	      "b/big (first read) ranks %llu, b/first %llu", (unsigned long long)rb, (unsigned long long)rf);
	CHECKF(layout_layer_rank(la, "a/one", &r1) && layout_layer_rank(la, "a/two", &r2) &&
		      layout_layer_rank(la, "a/three", &r3) && layout_layer_rank(la, "a/link-to-three", &r4) &&
		      r1 < r2 && r2 < r3 && r4 != r3,
	      "layer a ranks one %llu two %llu three %llu link %llu", (unsigned long long)r1,
	      (unsigned long long)r2, (unsigned long long)r3, (unsigned long long)r4);
	CHECKF(!layout_layer_rank(la, "a/unread", &ru) && !layout_layer_rank(la, "b/big", &ru) &&
		      !layout_layer_rank(NULL, "a/one", &ru),
	      "an unread file, or one of another layer, has a rank");
	layout_plan_free(p);

	/* A trace that touches no file: an empty plan, which places nothing. */
	struct image_trace_extent none[] = {{.block = 7 * CHUNK_SIZE / B, .count = 1}};
	struct layout_trace t2 = {.extents = none, .n_extents = 1};
	r = layout_plan_build(&t2, &m, files, sizeof(files) / sizeof(files[0]), &p);
	CHECKF(r == 0 && layout_plan_files(p) == 0 && !layout_plan_layer(p, "sha256:la"), "plan of no file");
	layout_plan_free(p);
	layout_plan_free(NULL);
}

/* Two plans merge by the fixed rule: per layer, the first plan's files in
 * its order, then the second's others in its order; a layer only the
 * second names comes along; the sources are both traces, in order. */
static void test_merge(void)
{
	const struct manifest m = two_layer_image;
	uint64_t a = CHUNK_SIZE, b = 4 * CHUNK_SIZE;
	const struct layout_file files[] = {
		{"a/one", a, 1 * B}, {"a/two", a + 1 * B, 1 * B}, {"a/three", a + 2 * B, 1 * B}, {"b/x", b, 1 * B},
	};
	size_t n_files = sizeof(files) / sizeof(files[0]);
	/* First: a/two, a/one.  Second: a/three, a/one, b/x. */
	struct image_trace_extent e1[] = {{.block = a / B + 1, .count = 1}, {.block = a / B, .count = 1}};
	struct image_trace_extent e2[] = {
		{.block = a / B + 2, .count = 1}, {.block = a / B, .count = 1}, {.block = b / B, .count = 1}};
	struct layout_trace t1 = {.extents = e1, .n_extents = 2, .manifest_digest = DIGEST, .document_digest = DIGEST};
	struct layout_trace t2 = {.extents = e2, .n_extents = 3, .manifest_digest = DIGEST};
	memset(t2.document_digest, 'e', 64);
	struct layout_plan *p1 = NULL, *p2 = NULL, *mp = NULL;
	CHECK(layout_plan_build(&t1, &m, files, n_files, &p1) == 0 && layout_plan_build(&t2, &m, files, n_files, &p2) == 0);
	if (!p1 || !p2)
		goto out;
	const struct layout_plan *both[] = {p1, p2};
	CHECK(layout_plan_merge(both, 2, &mp) == 0 && mp);
	if (!mp)
		goto out;
	CHECKF(layout_plan_files(mp) == 4 && layout_plan_layers_with_files(mp) == 2, "merged plan has %zu files in %zu layers",
	       layout_plan_files(mp), layout_plan_layers_with_files(mp));
	uint64_t r_two = 99, r_one = 99, r_three = 99, r_x = 99;
	const struct layout_layer *la = layout_plan_layer(mp, "sha256:la");
	CHECK(layout_layer_rank(la, "a/two", &r_two) && layout_layer_rank(la, "a/one", &r_one) &&
	      layout_layer_rank(la, "a/three", &r_three));
	CHECKF(r_two == 0 && r_one == 1 && r_three == 2, "layer a ranks two %llu one %llu three %llu",
	       (unsigned long long)r_two, (unsigned long long)r_one, (unsigned long long)r_three);
	CHECK(layout_layer_rank(layout_plan_layer(mp, "sha256:lb"), "b/x", &r_x) && r_x == 0);
	struct manifest_layout_trace src[MANIFEST_MAX_LAYOUT_TRACES];
	CHECK(layout_plan_sources(mp, src) == 2 && strcmp(src[0].trace_digest, DIGEST) == 0 &&
	      src[1].trace_digest[0] == 'e' && strcmp(src[1].recorded_on, DIGEST) == 0);
	CHECK(layout_plan_sources(NULL, src) == 0);
	struct layout_plan *none = NULL;
	CHECK(layout_plan_merge(both, 0, &none) == -EINVAL && !none);
out:
	layout_plan_free(mp);
	layout_plan_free(p1);
	layout_plan_free(p2);
}

int main(void)
{
	log_set_level(LOG_SILENT);
	test_parser();
	test_plan();
	test_merge();
	return check_report();
}
