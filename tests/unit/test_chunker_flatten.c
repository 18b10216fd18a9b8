/* The flattener's data layout (chunker/flatten.c, "hot and cold data") on
 * layers built here with libarchive: within a layer's region the hot files
 * come first in tar order, then the Python sources without bytecode, then,
 * from a chunk boundary on, the cold files; every file's bytes land at its
 * data_off; the rules look at the layer's own paths only, so a layer's region
 * is the same bytes over any lower layer; two runs give the same image; and
 * a spool that cannot be created fails the layer cleanly.  With a layout
 * plan from a startup trace (chunker/layout_trace.c), the files it lists go
 * first in their layer's region, contiguous, in the trace's order, and end on
 * a chunk boundary; the rest keep their order; a layer the plan lists
 * nothing of is the same bytes as without a plan; two runs agree.
 * Prints "N passed, M failed". */
/* ctest-labels: no-tsan (single-threaded: nothing for ThreadSanitizer to check) */
#include "chunker/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static unsigned passed, failed;

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

enum place { HOT, SOURCE, COLD, LINK };

/* One tar entry: a regular file of |size| bytes, or (LINK) a hard link to
 * |target|.  |place| is where the file's data must end up. */
struct tentry {
	const char *path;
	size_t size;
	enum place place;
	const char *target;
};

/* Layer 0, in tar order.  Sizes cross chunk boundaries so that a file split
 * across chunks or misplaced by a block shows. */
static const struct tentry layer0[] = {
	{"usr/lib/libx.so.1", 700 * 1024, HOT, NULL},
	{"usr/lib/libx.a", 90 * 1024, COLD, NULL},
	{"usr/include/x.h", 5000, HOT, NULL}, /* whole directories stay in tar order */
	{"usr/lib/python3/pkg/__init__.py", 3000, COLD, NULL},
	{"usr/lib/python3/pkg/__pycache__/__init__.cpython-311.pyc", 4100, HOT, NULL},
	{"usr/lib/python3/pkg/mod.py", 12000, SOURCE, NULL}, /* no bytecode anywhere */
	{"usr/lib/python3/late.py", 9000, COLD, NULL},	      /* its bytecode comes later in the tar */
	{"usr/lib/python3/other.pyc", 100, HOT, NULL},	      /* not in __pycache__: no source pairs with it */
	{"usr/share/doc/x/copyright", 20000, HOT, NULL},
	{"usr/lib/x86_64/libz.a.so", 3000, HOT, NULL}, /* only the suffix ".a" counts */
	{"usr/lib/x86_64/libz.a", 7000, COLD, NULL},
	{"usr/lib/python3/dist-packages/np/tests/data.bin", 300 * 1024, COLD, NULL},
	{"app/tests/fixture.txt", 1000, HOT, NULL}, /* tests/ outside site- or dist-packages */
	{"usr/lib/python3/__pycache__/late.cpython-311.opt-1.pyc", 6000, HOT, NULL},
	{"usr/lib/python3/__pycache__/orphan.cpython-311.pyc", 100, HOT, NULL}, /* bytecode for layer 1's source */
	{"usr/lib/x-static", 0, LINK, "usr/lib/libx.a"},
	{"usr/bin/x", 600 * 1024, HOT, NULL},
	{"usr/lib/python3/pkg/zz.py", 100, SOURCE, NULL},
};

/* Layer 1: orphan.py's bytecode is in layer 0, so it is not cold here. */
static const struct tentry layer1[] = {
	{"usr/lib/python3/orphan.py", 5000, SOURCE, NULL},
	{"usr/lib/liby.a", 1000, COLD, NULL},
	{"usr/lib/liby.so", 40000, HOT, NULL},
};

/* Another bottom layer, for the independence check. */
static const struct tentry layer0b[] = {
	{"usr/lib/libz.so", 123456, HOT, NULL},
	{"usr/lib/libz.a", 70000, COLD, NULL},
};

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* Byte |i| of the file at |path|: a mix of the path and the offset, so bytes
 * of another file or another block never match. */
static uint8_t content_byte(const char *path, size_t i)
{
	uint32_t h = 2166136261u;
	for (const char *p = path; *p; p++)
		h = (h ^ (uint8_t)*p) * 16777619u;
	return (uint8_t)(h + i * 131 + (i >> 12) * 7);
}

/* A ustar header field: |v| in octal, NUL-terminated, in |width| bytes. */
static void put_octal(uint8_t *field, size_t width, uint64_t v)
{
	snprintf((char *)field, width, "%0*llo", (int)width - 1, (unsigned long long)v);
}

/* A ustar archive of |entries|, in a malloc'd buffer.  Written here rather
 * than with libarchive, which chunkify loads for reading only
 * (chunker/archive_lazy.c); every path fits the 100-byte name field. */
static uint8_t *make_tar(const struct tentry *entries, size_t n, size_t *out_len)
{
	size_t cap = 1024;
	for (size_t i = 0; i < n; i++)
		cap += 512 + (entries[i].place == LINK ? 0 : (entries[i].size + 511) / 512 * 512);
	uint8_t *buf = calloc(1, cap), *p = buf;
	if (!buf)
		abort();
	for (size_t i = 0; i < n; i++) {
		const struct tentry *t = &entries[i];
		size_t size = t->place == LINK ? 0 : t->size;
		if (strlen(t->path) >= 100 || (t->target && strlen(t->target) >= 100))
			abort();
		memcpy(p, t->path, strlen(t->path));
		put_octal(p + 100, 8, 0644);
		put_octal(p + 108, 8, 0);
		put_octal(p + 116, 8, 0);
		put_octal(p + 124, 12, size);
		put_octal(p + 136, 12, 1700000000);
		p[156] = t->place == LINK ? '1' : '0';
		if (t->target)
			memcpy(p + 157, t->target, strlen(t->target));
		memcpy(p + 257, "ustar\0" "00", 8);
		memset(p + 148, ' ', 8);
		unsigned sum = 0;
		for (size_t k = 0; k < 512; k++)
			sum += p[k];
		snprintf((char *)p + 148, 8, "%06o", sum);
		p += 512;
		for (size_t k = 0; k < size; k++)
			p[k] = content_byte(t->path, k);
		p += (size + 511) / 512 * 512;
	}
	*out_len = (size_t)(p - buf) + 1024; /* two zero blocks end the archive */
	return buf;
}

/* The image as the sink received it. */
struct image {
	uint8_t *bytes;
	uint64_t size;
};

static uint8_t *get_buffer(void *ctx)
{
	(void)ctx;
	return malloc(CHUNK_SIZE);
}

static void put_buffer(void *ctx, uint8_t *buf)
{
	(void)ctx;
	free(buf);
}

static int emit(void *ctx, uint64_t index, uint8_t *data)
{
	struct image *img = ctx;
	uint64_t end = (index + 1) * CHUNK_SIZE;
	if (end > img->size) {
		uint8_t *b = realloc(img->bytes, end);
		if (!b)
			return -ENOMEM;
		memset(b + img->size, 0, end - img->size);
		img->bytes = b;
		img->size = end;
	}
	if (data)
		memcpy(img->bytes + index * CHUNK_SIZE, data, CHUNK_SIZE);
	else
		memset(img->bytes + index * CHUNK_SIZE, 0, CHUNK_SIZE);
	free(data);
	return 0;
}

/* Chunks handed over in place (emit_lent), and whether flatten_with's sink
 * takes them. */
static unsigned lent_chunks;
static bool sink_lends;

static int emit_lent(void *ctx, uint64_t index, const uint8_t *plain)
{
	uint8_t *b = get_buffer(ctx);
	if (!b)
		return -ENOMEM;
	memcpy(b, plain, CHUNK_SIZE);
	lent_chunks++;
	return emit(ctx, index, b);
}

static const struct chunk_sink sink_template = {
	.get_buffer = get_buffer, .put_buffer = put_buffer, .emit = emit};

struct layer_spec {
	const struct tentry *entries;
	size_t n;
};

/* Flatten |layers| into |img| (regions in |regions|), leaving |f| for the
 * caller to finish or clean up.  Returns the first error. */
static int flatten_with(struct flattener *f, struct chunk_sink *sink, struct image *img,
			const struct layer_spec *layers, size_t n_layers, struct layer_region *regions,
			const char *spool_dir, const struct layout_plan *plan, const char *const *digests)
{
	*sink = sink_template;
	if (sink_lends)
		sink->emit_lent = emit_lent;
	sink->ctx = img;
	memset(img, 0, sizeof(*img));
	int r = flattener_init(f, sink, 1ull << 32);
	if (r < 0)
		return r;
	f->spool_dir = spool_dir;
	for (size_t i = 0; i < n_layers; i++) {
		size_t len;
		uint8_t *tar = make_tar(layers[i].entries, layers[i].n, &len);
		struct byte_stream_mem ms;
		byte_stream_mem_init(&ms, tar, len, "test layer");
		f->layer_layout = plan ? layout_plan_layer(plan, digests[i]) : NULL;
		r = flatten_layer(f, &ms.base, (unsigned)i, "test layer", &regions[i]);
		free(tar);
		if (r < 0)
			return r;
	}
	return 0;
}

static int flatten(struct flattener *f, struct chunk_sink *sink, struct image *img, const struct layer_spec *layers,
		   size_t n_layers, struct layer_region *regions, const char *spool_dir)
{
	return flatten_with(f, sink, img, layers, n_layers, regions, spool_dir, NULL, NULL);
}

static struct fs_inode *lookup(struct fs_inode *root, const char *path)
{
	char buf[512];
	snprintf(buf, sizeof(buf), "%s", path);
	struct fs_inode *cur = root;
	char *save = NULL;
	for (char *c = strtok_r(buf, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
		struct fs_dirent *d = S_ISDIR(cur->mode) ? fs_dir_lookup(cur, c) : NULL;
		if (!d)
			return NULL;
		cur = d->inode;
	}
	return cur;
}

/* Every file's bytes are at its data_off, inside the layer's region, and the
 * groups come in order: hot (tar order), sources, then cold from a chunk
 * boundary on. */
static void check_layer(struct flattener *f, const struct image *img, const struct layer_spec *l,
			const struct layer_region *region, const char *name)
{
	uint64_t hot_end = 0, source_start = UINT64_MAX, source_end = 0, cold_start = UINT64_MAX;
	uint64_t last[3] = {0, 0, 0}, files = 0;
	for (size_t i = 0; i < l->n; i++) {
		const struct tentry *t = &l->entries[i];
		struct fs_inode *ino = lookup(f->root, t->path);
		CHECK(ino != NULL, "%s: %s is not in the tree", name, t->path);
		if (!ino)
			continue;
		if (t->place == LINK) {
			CHECK(ino == lookup(f->root, t->target), "%s: %s is not a link to %s", name, t->path,
			      t->target);
			continue;
		}
		files++;
		uint64_t off = ino->data_off, end = off + t->size;
		CHECK(ino->size == t->size && off % EROFS_BLOCK_SIZE == 0 && off >= region->offset &&
			      end <= region->offset + region->length && end <= img->size,
		      "%s: %s at %llu size %llu, outside region [%llu, +%llu) or unaligned", name, t->path,
		      (unsigned long long)off, (unsigned long long)ino->size, (unsigned long long)region->offset,
		      (unsigned long long)region->length);
		if (end > img->size)
			continue;
		size_t bad = t->size;
		for (size_t k = 0; k < t->size && bad == t->size; k++)
			if (img->bytes[off + k] != content_byte(t->path, k))
				bad = k;
		CHECK(bad == t->size, "%s: %s: byte %zu differs", name, t->path, bad);
		CHECK(off >= last[t->place], "%s: %s at %llu comes before an earlier file of its group", name,
		      t->path, (unsigned long long)off);
		last[t->place] = end;
		if (t->place == HOT && end > hot_end)
			hot_end = end;
		if (t->place == SOURCE) {
			source_start = off < source_start ? off : source_start;
			source_end = end > source_end ? end : source_end;
		}
		if (t->place == COLD && off < cold_start)
			cold_start = off;
	}
	CHECK(region->files == files, "%s: region counts %llu files, the tar has %llu", name,
	      (unsigned long long)region->files, (unsigned long long)files);
	if (source_end)
		CHECK(source_start >= hot_end, "%s: a source without bytecode at %llu, before hot data ending at %llu",
		      name, (unsigned long long)source_start, (unsigned long long)hot_end);
	CHECK(cold_start != UINT64_MAX && cold_start % CHUNK_SIZE == 0 && cold_start >= hot_end &&
		      cold_start >= source_end,
	      "%s: cold data starts at %llu: not on a chunk boundary after the hot data (ends %llu, sources %llu)",
	      name, (unsigned long long)cold_start, (unsigned long long)hot_end, (unsigned long long)source_end);
}

/* Layer 0's files a traced start read, in the order it first read them: a
 * hot file late in the tar, a cold source, a source without bytecode,
 * bytecode, and a file the layer does not hold (a stale trace). */
static const char *const traced_paths[] = {
	"usr/bin/x",
	"usr/lib/python3/late.py",
	"usr/lib/python3/pkg/mod.py",
	"usr/lib/python3/__pycache__/late.cpython-311.opt-1.pyc",
	"usr/lib/gone.so",
};
#define N_TRACED (sizeof(traced_paths) / sizeof(traced_paths[0]))

/* A plan as chunkify builds it: the traced image holds each traced file in
 * one block of layer "sha256:t0", in trace order, and one run reads them
 * all; "sha256:t1" has nothing read. */
static struct layout_plan *traced_plan(void)
{
	struct manifest_layer layers[] = {
		{.digest = "sha256:t0", .offset = CHUNK_SIZE, .length = CHUNK_SIZE},
		{.digest = "sha256:t1", .offset = 2 * CHUNK_SIZE, .length = CHUNK_SIZE},
	};
	struct manifest m = {.n_layers = 2, .layers = layers, .image_size = 4 * CHUNK_SIZE};
	struct layout_file files[N_TRACED + 1];
	for (size_t i = 0; i < N_TRACED; i++)
		files[i] = (struct layout_file){traced_paths[i], CHUNK_SIZE + i * EROFS_BLOCK_SIZE, EROFS_BLOCK_SIZE};
	files[N_TRACED] = (struct layout_file){"usr/lib/liby.so", 2 * CHUNK_SIZE, EROFS_BLOCK_SIZE};
	struct image_trace_extent run = {.block = CHUNK_SIZE / EROFS_BLOCK_SIZE, .count = N_TRACED};
	struct layout_trace t = {.extents = &run, .n_extents = 1};
	struct layout_plan *p = NULL;
	if (layout_plan_build(&t, &m, files, N_TRACED + 1, &p) < 0)
		abort();
	return p;
}

static bool is_traced(const char *path)
{
	for (size_t i = 0; i < N_TRACED; i++)
		if (strcmp(path, traced_paths[i]) == 0)
			return true;
	return false;
}

/* Every file of layer 0 holds its bytes; the traced ones come first,
 * contiguous and in trace order, up to a chunk boundary; the others keep
 * their groups (hot in tar order before cold, from a chunk boundary on). */
static void check_traced_layer(struct flattener *f, const struct image *img, const struct layer_region *region)
{
	uint64_t expect = region->offset;
	for (size_t i = 0; i < N_TRACED; i++) {
		struct fs_inode *ino = lookup(f->root, traced_paths[i]);
		if (!ino)
			continue; /* the stale entry */
		CHECK(ino->data_off == expect, "traced %s at %llu, want %llu (first, contiguous, in trace order)",
		      traced_paths[i], (unsigned long long)ino->data_off, (unsigned long long)expect);
		expect = (ino->data_off + ino->size + EROFS_BLOCK_SIZE - 1) / EROFS_BLOCK_SIZE * EROFS_BLOCK_SIZE;
	}
	uint64_t traced_end = (expect + CHUNK_SIZE - 1) / CHUNK_SIZE * CHUNK_SIZE;
	uint64_t first_other = UINT64_MAX, last_hot = 0, hot_end = 0, cold_start = UINT64_MAX;
	for (size_t i = 0; i < N(layer0); i++) {
		const struct tentry *t = &layer0[i];
		struct fs_inode *ino = lookup(f->root, t->path);
		CHECK(ino != NULL, "traced layout: %s is not in the tree", t->path);
		if (!ino || t->place == LINK)
			continue;
		uint64_t off = ino->data_off;
		size_t bad = t->size;
		for (size_t k = 0; k < t->size && bad == t->size && off + k < img->size; k++)
			if (img->bytes[off + k] != content_byte(t->path, k))
				bad = k;
		CHECK(bad == t->size && off + t->size <= region->offset + region->length,
		      "traced layout: %s: byte %zu differs or lies outside the region", t->path, bad);
		if (is_traced(t->path))
			continue;
		first_other = off < first_other ? off : first_other;
		if (t->place == HOT) {
			CHECK(off >= last_hot, "traced layout: hot %s out of tar order", t->path);
			last_hot = off;
			hot_end = off + t->size > hot_end ? off + t->size : hot_end;
		}
		if (t->place == COLD && off < cold_start)
			cold_start = off;
	}
	CHECK(first_other == traced_end, "the first untraced file is at %llu, want the chunk boundary %llu",
	      (unsigned long long)first_other, (unsigned long long)traced_end);
	CHECK(cold_start % CHUNK_SIZE == 0 && cold_start >= hot_end, "traced layout: cold data at %llu, hot ends %llu",
	      (unsigned long long)cold_start, (unsigned long long)hot_end);
}

static void test_traced_layout(const struct image *base, const struct layer_region *base_regions)
{
	static const char *const digests[] = {"sha256:t0", "sha256:t1"};
	const struct layer_spec both[] = {{layer0, N(layer0)}, {layer1, N(layer1)}};
	struct layout_plan *plan = traced_plan();
	struct image imgs[2];
	struct layer_region regions[2][2];
	for (int run = 0; run < 2; run++) {
		struct flattener f;
		struct chunk_sink sink;
		struct erofs_image_layout layout = {0};
		int r = flatten_with(&f, &sink, &imgs[run], both, 2, regions[run], NULL, plan, digests);
		if (r == 0)
			r = flattener_finish(&f, &layout);
		CHECK(r == 0, "flatten with a layout plan: %s", strerror(-r));
		if (r == 0 && run == 0) {
			check_traced_layer(&f, &imgs[0], &regions[0][0]);
			/* Layer 1, of which the plan lists nothing: the same bytes. */
			CHECK(regions[0][1].length == base_regions[1].length &&
				      !memcmp(imgs[0].bytes + regions[0][1].offset, base->bytes + base_regions[1].offset,
					      base_regions[1].length),
			      "an untraced layer's region differs from its region without a plan");
		}
		flattener_cleanup(&f);
		erofs_layout_cleanup(&layout);
	}
	CHECK(imgs[0].size == imgs[1].size && !memcmp(imgs[0].bytes, imgs[1].bytes, imgs[0].size),
	      "the same layers and plan gave two different images");
	free(imgs[0].bytes);
	free(imgs[1].bytes);
	layout_plan_free(plan);
}

int main(void)
{
	log_set_level(LOG_SILENT);
	struct flattener f;
	struct chunk_sink sink;
	struct image img;
	struct layer_region regions[2];
	const struct layer_spec both[] = {{layer0, N(layer0)}, {layer1, N(layer1)}};
	int r = flatten(&f, &sink, &img, both, 2, regions, NULL);
	CHECK(r == 0, "flatten: %s", strerror(-r));
	/* Finished, so that the last chunk of data has reached the sink too. */
	struct erofs_image_layout layout = {0};
	if (r == 0) {
		r = flattener_finish(&f, &layout);
		CHECK(r == 0, "finish: %s", strerror(-r));
	}
	if (r == 0) {
		check_layer(&f, &img, &both[0], &regions[0], "layer 0");
		check_layer(&f, &img, &both[1], &regions[1], "layer 1");
	}

	/* Layer 1's region over another bottom layer: the same bytes, so the
	 * same chunks. */
	struct flattener f2;
	struct chunk_sink sink2;
	struct image img2;
	struct layer_region regions2[2];
	const struct layer_spec other[] = {{layer0b, N(layer0b)}, {layer1, N(layer1)}};
	struct erofs_image_layout layout2 = {0};
	r = flatten(&f2, &sink2, &img2, other, 2, regions2, NULL);
	if (r == 0)
		r = flattener_finish(&f2, &layout2);
	CHECK(r == 0, "flatten over another layer: %s", strerror(-r));
	if (r == 0) {
		check_layer(&f2, &img2, &other[0], &regions2[0], "other layer 0");
		CHECK(regions2[1].length == regions[1].length && regions[1].offset + regions[1].length <= img.size &&
			      regions2[1].offset + regions2[1].length <= img2.size &&
			      !memcmp(img.bytes + regions[1].offset, img2.bytes + regions2[1].offset,
				      regions[1].length),
		      "layer 1's region differs over another lower layer");
	}
	flattener_cleanup(&f2);
	free(img2.bytes);
	erofs_layout_cleanup(&layout2);

	/* The same layers again: byte for byte the same image. */
	struct erofs_image_layout layout3 = {0};
	r = flatten(&f2, &sink2, &img2, both, 2, regions2, NULL);
	if (r == 0)
		r = flattener_finish(&f2, &layout3);
	CHECK(r == 0 && img2.size == img.size && !memcmp(img.bytes, img2.bytes, img.size),
	      "a second run gave a different image (%s)", strerror(-r));
	flattener_cleanup(&f2);
	free(img2.bytes);
	erofs_layout_cleanup(&layout3);

	/* A sink that takes whole chunks in place from the stream (a mapped
	 * layer) gets the very same image. */
	struct erofs_image_layout layout4 = {0};
	sink_lends = true;
	r = flatten(&f2, &sink2, &img2, both, 2, regions2, NULL);
	sink_lends = false;
	if (r == 0)
		r = flattener_finish(&f2, &layout4);
	CHECK(r == 0 && lent_chunks > 0, "lending sink: %s, %u chunks lent", strerror(-r), lent_chunks);
	CHECK(r == 0 && img2.size == img.size && !memcmp(img.bytes, img2.bytes, img.size),
	      "chunks taken in place gave a different image");
	flattener_cleanup(&f2);
	free(img2.bytes);
	erofs_layout_cleanup(&layout4);

	test_traced_layout(&img, regions);
	flattener_cleanup(&f);
	free(img.bytes);
	erofs_layout_cleanup(&layout);

	/* No place for the spool: the layer fails, nothing leaks. */
	r = flatten(&f, &sink, &img, both, 1, regions, "/nonexistent/kindling-spool-dir");
	CHECK(r == -ENOENT, "spool in a missing directory: got %d, want -ENOENT", r);
	flattener_cleanup(&f);
	free(img.bytes);

	printf("%u passed, %u failed\n", passed, failed);
	return failed ? 1 : 0;
}
