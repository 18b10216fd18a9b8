/* Layout from a recorded startup trace (chunker.h).
 *
 * A startup trace (image.h) lists, besides the chunks a start touched, the
 * 4 KiB blocks its readers read, as runs in first-read order.  Mapped onto
 * the files of the image it was recorded on, it says which files a start
 * reads and in what order; a re-import then places those files first in
 * their layer's region, together, so the start fetches chunks that hold
 * little else (flatten.c, "hot and cold data").
 *
 * The trace is untrusted (it comes from a file an operator names, copied
 * from an origin), so everything in it is checked here.  It can only steer
 * where a file's bytes go, never what they are: a stale or foreign trace
 * names files the new tar does not hold, or the wrong ones, and costs
 * layout quality alone.  The plan depends only on the trace and the traced
 * image, so the same tar with the same trace gives the same bytes.
 */
#include "internal.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define TRACE_FORMAT "kindling-trace-1"
/* A run longer than any image kindling builds (max_image_size is at most
 * 1 TiB by default) is nonsense. */
#define MAX_RUN_BLOCKS (1ull << 40)

/* ---- the trace document --------------------------------------------------- */

int layout_trace_parse(const uint8_t *buf, size_t len, const char *what, struct layout_trace *out)
{
	memset(out, 0, sizeof(*out));
	if (len > IMAGE_TRACE_MAX_BYTES) {
		log_err("layout trace %s: %zu bytes, more than a trace may hold (%u)", what, len,
			IMAGE_TRACE_MAX_BYTES);
		return -EBADMSG;
	}
	json_error_t jerr;
	json_t *root = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		log_err("layout trace %s: not valid JSON: %s (line %d); is it a startup trace (traces/<digest> "
			"in the store)?",
			what, jerr.text, jerr.line);
		return -EBADMSG;
	}
	int r = -EBADMSG;
	json_t *fmt = json_object_get(root, "format");
	json_t *digest = json_object_get(root, "manifest");
	json_t *bs = json_object_get(root, "block_size");
	json_t *blocks = json_object_get(root, "blocks");
	if (!json_is_object(root) || !json_is_string(fmt) || strcmp(json_string_value(fmt), TRACE_FORMAT) != 0) {
		log_err("layout trace %s: not a %s document", what, TRACE_FORMAT);
		goto out;
	}
	if (!json_is_string(digest) || !is_sha256_hex(json_string_value(digest))) {
		log_err("layout trace %s: \"manifest\" is not a manifest digest (64 lowercase hex digits)", what);
		goto out;
	}
	if (!blocks) {
		log_err("layout trace %s: no \"blocks\": it lists chunks only (a snapshot's trace, or one recorded "
			"by an older blockd); record a new one by running the image once with prefetch on",
			what);
		goto out;
	}
	if (!json_is_integer(bs) || json_integer_value(bs) != IMAGE_TRACE_BLOCK_SIZE || !json_is_array(blocks)) {
		log_err("layout trace %s: \"blocks\" must be an array with \"block_size\" %u", what,
			IMAGE_TRACE_BLOCK_SIZE);
		goto out;
	}
	size_t n = json_array_size(blocks);
	if (n > IMAGE_TRACE_MAX_EXTENTS) {
		log_err("layout trace %s: %zu block runs, more than a trace holds (%u)", what, n,
			IMAGE_TRACE_MAX_EXTENTS);
		goto out;
	}
	out->extents = malloc((n ? n : 1) * sizeof(*out->extents));
	if (!out->extents) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		json_t *e = json_array_get(blocks, i);
		json_t *b = json_array_get(e, 0), *c = json_array_get(e, 1);
		if (!json_is_array(e) || json_array_size(e) != 2 || !json_is_integer(b) || !json_is_integer(c) ||
		    json_integer_value(b) < 0 || json_integer_value(c) < 1 ||
		    (uint64_t)json_integer_value(b) > MAX_RUN_BLOCKS ||
		    (uint64_t)json_integer_value(c) > MAX_RUN_BLOCKS) {
			log_err("layout trace %s: blocks[%zu] is not a [first block, count] pair of a run of "
				"blocks",
				what, i);
			goto out;
		}
		out->extents[i] = (struct image_trace_extent){ .block = (uint64_t)json_integer_value(b),
							       .count = (uint64_t)json_integer_value(c) };
	}
	out->n_extents = n;
	snprintf(out->manifest_digest, sizeof(out->manifest_digest), "%s", json_string_value(digest));
	/* The digest of the bytes as given names this exact trace in the
	 * manifest of an image laid out from it. */
	uint8_t d[SHA256_LEN];
	sha256_buf(buf, len, d);
	hex_encode(d, SHA256_LEN, out->document_digest);
	r = 0;
out:
	if (r < 0)
		layout_trace_cleanup(out);
	json_decref(root);
	return r;
}

void layout_trace_cleanup(struct layout_trace *t)
{
	free(t->extents);
	memset(t, 0, sizeof(*t));
}

/* ---- lists of files ------------------------------------------------------ */

int layout_files_add(struct layout_files *l, const char *path, uint64_t data_off, uint64_t data_len)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 256;
		struct layout_file *v = realloc(l->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		l->v = v;
		l->cap = cap;
	}
	char *copy = strdup(path);
	if (!copy)
		return -ENOMEM;
	l->v[l->n++] = (struct layout_file){ .path = copy, .data_off = data_off, .data_len = data_len };
	return 0;
}

void layout_files_cleanup(struct layout_files *l)
{
	for (size_t i = 0; i < l->n; i++)
		free((char *)l->v[i].path);
	free(l->v);
	memset(l, 0, sizeof(*l));
}

/* ---- the plan ------------------------------------------------------------- */

struct layout_layer {
	char digest[80];
	struct layout_files files; /* in rank order: a file's rank is its index */
	size_t *by_path;	   /* indexes into files, sorted by path */
};

struct layout_plan {
	struct layout_layer *layers;
	size_t n_layers;
	size_t n_files;
	/* the traces it was built from, in merge order */
	size_t n_sources;
	struct manifest_layout_trace sources[MANIFEST_MAX_LAYOUT_TRACES];
};

static int cmp_file_off(const void *a, const void *b)
{
	const struct layout_file *x = *(const struct layout_file *const *)a, *y = *(const struct layout_file *const *)b;
	if (x->data_off != y->data_off)
		return x->data_off < y->data_off ? -1 : 1;
	return strcmp(x->path, y->path);
}

static int cmp_index_path(const void *a, const void *b, void *arg)
{
	const struct layout_file *v = arg;
	return strcmp(v[*(const size_t *)a].path, v[*(const size_t *)b].path);
}

/* The traced image's layer whose region holds |off|, or -1. */
static long layer_of(const struct manifest *m, uint64_t off)
{
	for (size_t i = 0; i < m->n_layers; i++)
		if (off >= m->layers[i].offset && off - m->layers[i].offset < m->layers[i].length)
			return (long)i;
	return -1;
}

/* Rank the files |t|'s runs touch: |order| gets their indexes into |files|,
 * first touched first, and |*out_n| their count. */
static void rank_files(const struct layout_trace *t, const struct layout_file *files, size_t n_files,
		       const struct layout_file **by_off, bool *ranked, size_t *order, size_t *out_n)
{
	size_t n = 0;
	/* Files' data ranges never overlap (hard links share one), so sorted by
	 * start they are sorted by end too: the first file a run touches is
	 * found by binary search on the ends. */
	for (size_t k = 0; k < t->n_extents; k++) {
		uint64_t start = t->extents[k].block * IMAGE_TRACE_BLOCK_SIZE;
		uint64_t end = start + t->extents[k].count * IMAGE_TRACE_BLOCK_SIZE;
		size_t lo = 0, hi = n_files;
		while (lo < hi) {
			size_t mid = lo + (hi - lo) / 2;
			if (by_off[mid]->data_off + by_off[mid]->data_len <= start)
				lo = mid + 1;
			else
				hi = mid;
		}
		for (size_t i = lo; i < n_files && by_off[i]->data_off < end; i++) {
			size_t idx = (size_t)(by_off[i] - files);
			if (!ranked[idx] && by_off[i]->data_off + by_off[i]->data_len > start) {
				ranked[idx] = true;
				order[n++] = idx;
			}
		}
	}
	*out_n = n;
}

/* Append |fl| to layer |l| of |p|.  Returns 0 or -ENOMEM. */
static int plan_add(struct layout_plan *p, struct layout_layer *l, const struct layout_file *fl)
{
	int r = layout_files_add(&l->files, fl->path, fl->data_off, fl->data_len);
	if (r == 0)
		p->n_files++;
	return r;
}

/* Sort each layer's index by path, for layout_layer_rank, and hand |*p|
 * over to |*out|.  Returns 0, or -ENOMEM with |*p| left to its owner. */
static int plan_finish(struct layout_plan **p, struct layout_plan **out)
{
	struct layout_plan *plan = *p;
	for (size_t i = 0; i < plan->n_layers; i++) {
		struct layout_layer *l = &plan->layers[i];
		if (!l->files.n)
			continue;
		if (!(l->by_path = malloc(l->files.n * sizeof(*l->by_path))))
			return -ENOMEM;
		for (size_t j = 0; j < l->files.n; j++)
			l->by_path[j] = j;
		qsort_r(l->by_path, l->files.n, sizeof(*l->by_path), cmp_index_path, l->files.v);
	}
	*out = plan;
	*p = NULL;
	return 0;
}

int layout_plan_build(const struct layout_trace *t, const struct manifest *traced, const struct layout_file *files,
		      size_t n_files, struct layout_plan **out)
{
	*out = NULL;
	size_t cap = n_files ? n_files : 1;
	struct layout_plan *p = calloc(1, sizeof(*p));
	const struct layout_file **by_off = calloc(cap, sizeof(*by_off));
	bool *ranked = calloc(cap, sizeof(*ranked));
	size_t *order = calloc(cap, sizeof(*order));
	int r = -ENOMEM;
	if (!p || !by_off || !ranked || !order ||
	    !(p->layers = calloc(traced->n_layers ? traced->n_layers : 1, sizeof(*p->layers))))
		goto out;
	p->n_layers = traced->n_layers;
	p->n_sources = 1;
	snprintf(p->sources[0].trace_digest, sizeof(p->sources[0].trace_digest), "%s", t->document_digest);
	snprintf(p->sources[0].recorded_on, sizeof(p->sources[0].recorded_on), "%s", t->manifest_digest);
	for (size_t i = 0; i < traced->n_layers; i++)
		snprintf(p->layers[i].digest, sizeof(p->layers[i].digest), "%s", traced->layers[i].digest);
	for (size_t i = 0; i < n_files; i++)
		by_off[i] = &files[i];
	qsort(by_off, n_files, sizeof(*by_off), cmp_file_off);
	size_t n_ranked;
	rank_files(t, files, n_files, by_off, ranked, order, &n_ranked);
	for (size_t i = 0; i < n_ranked; i++) {
		const struct layout_file *fl = &files[order[i]];
		long li = layer_of(traced, fl->data_off);
		if (li < 0)
			continue; /* not in any layer's region: nothing to place */
		if ((r = plan_add(p, &p->layers[li], fl)) < 0)
			goto out;
	}
	r = plan_finish(&p, out);
out:
	layout_plan_free(p);
	free(by_off);
	free(ranked);
	free(order);
	return r;
}

void layout_plan_free(struct layout_plan *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->n_layers; i++) {
		layout_files_cleanup(&p->layers[i].files);
		free(p->layers[i].by_path);
	}
	free(p->layers);
	free(p);
}

size_t layout_plan_files(const struct layout_plan *p)
{
	return p ? p->n_files : 0;
}

size_t layout_plan_layers_with_files(const struct layout_plan *p)
{
	size_t n = 0;
	for (size_t i = 0; p && i < p->n_layers; i++)
		n += p->layers[i].files.n != 0;
	return n;
}

/* The layer of |p| with blob digest |digest|, added (with no files) if |p|
 * has none; NULL when out of memory. */
static struct layout_layer *merged_layer(struct layout_plan *p, const char *digest)
{
	for (size_t i = 0; i < p->n_layers; i++)
		if (strcmp(p->layers[i].digest, digest) == 0)
			return &p->layers[i];
	struct layout_layer *v = realloc(p->layers, (p->n_layers + 1) * sizeof(*v));
	if (!v)
		return NULL;
	p->layers = v;
	struct layout_layer *l = &p->layers[p->n_layers++];
	memset(l, 0, sizeof(*l));
	snprintf(l->digest, sizeof(l->digest), "%s", digest);
	return l;
}

int layout_plan_merge(const struct layout_plan *const *plans, size_t n, struct layout_plan **out)
{
	*out = NULL;
	size_t n_sources = 0;
	for (size_t i = 0; i < n; i++)
		n_sources += plans[i]->n_sources;
	if (n == 0 || n_sources > MANIFEST_MAX_LAYOUT_TRACES)
		return -EINVAL;
	struct layout_plan *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	int r = 0;
	for (size_t i = 0; i < n; i++) {
		const struct layout_plan *in = plans[i];
		memcpy(p->sources + p->n_sources, in->sources, in->n_sources * sizeof(*in->sources));
		p->n_sources += in->n_sources;
		for (size_t li = 0; li < in->n_layers; li++) {
			const struct layout_layer *src = &in->layers[li];
			if (!src->files.n)
				continue;
			struct layout_layer *dst = merged_layer(p, src->digest);
			if (!dst) {
				r = -ENOMEM;
				goto out;
			}
			for (size_t fi = 0; fi < src->files.n; fi++) {
				const struct layout_file *fl = &src->files.v[fi];
				/* Placed by an earlier plan: that plan's rank stands. */
				bool earlier = false;
				uint64_t rank;
				for (size_t j = 0; j < i && !earlier; j++)
					earlier = layout_layer_rank(layout_plan_layer(plans[j], src->digest), fl->path, &rank);
				if (earlier)
					continue;
				if ((r = plan_add(p, dst, fl)) < 0)
					goto out;
			}
		}
	}
	r = plan_finish(&p, out);
out:
	layout_plan_free(p);
	return r;
}

size_t layout_plan_sources(const struct layout_plan *p, struct manifest_layout_trace out[MANIFEST_MAX_LAYOUT_TRACES])
{
	size_t n = p ? p->n_sources : 0;
	if (n)
		memcpy(out, p->sources, n * sizeof(*out));
	return n;
}

const struct layout_layer *layout_plan_layer(const struct layout_plan *p, const char *layer_digest)
{
	for (size_t i = 0; p && i < p->n_layers; i++)
		if (p->layers[i].files.n && strcmp(p->layers[i].digest, layer_digest) == 0)
			return &p->layers[i];
	return NULL;
}

bool layout_layer_rank(const struct layout_layer *l, const char *path, uint64_t *out_rank)
{
	size_t lo = 0, hi = l ? l->files.n : 0;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(l->files.v[l->by_path[mid]].path, path);
		if (c == 0) {
			*out_rank = l->by_path[mid];
			return true;
		}
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return false;
}
