/* Startup traces (image.h): the stored document and its checked parser. */
#include "internal.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TRACE_FORMAT "kindling-trace-1"

void image_trace_key(const char *digest, char *key, size_t cap)
{
	snprintf(key, cap, "traces/%s", digest);
}

int image_trace_encode(const char *digest, double seconds, const uint64_t *indexes, size_t n, char **out)
{
	return image_trace_encode_blocks(digest, seconds, indexes, n, NULL, 0, out);
}

/* [[block, count], ...], or NULL on allocation failure. */
static json_t *extents_to_json(const struct image_trace_extent *ext, size_t n_ext)
{
	json_t *arr = json_array();
	for (size_t i = 0; arr && i < n_ext; i++) {
		json_t *pair = json_pack("[I, I]", (json_int_t)ext[i].block, (json_int_t)ext[i].count);
		if (!pair || json_array_append_new(arr, pair) < 0) {
			json_decref(arr);
			arr = NULL;
		}
	}
	return arr;
}

int image_trace_encode_blocks(const char *digest, double seconds, const uint64_t *indexes, size_t n,
			      const struct image_trace_extent *ext, size_t n_ext, char **out)
{
	*out = NULL;
	json_t *arr = json_array();
	for (size_t i = 0; arr && i < n; i++)
		if (json_array_append_new(arr, json_integer((json_int_t)indexes[i])) < 0) {
			json_decref(arr);
			arr = NULL;
		}
	if (!arr)
		return -ENOMEM;
	json_t *o = json_pack("{s:s, s:s, s:i, s:f, s:o}", "format", TRACE_FORMAT, "manifest", digest, "chunk_size",
			      (json_int_t)CHUNK_SIZE, "seconds", seconds, "chunks", arr);
	if (o && n_ext) {
		json_t *blocks = extents_to_json(ext, n_ext);
		if (!blocks || json_object_set_new(o, "block_size", json_integer(IMAGE_TRACE_BLOCK_SIZE)) < 0 ||
		    json_object_set_new(o, "blocks", blocks) < 0) {
			json_decref(o);
			o = NULL;
		}
	}
	*out = o ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	return *out ? 0 : -ENOMEM;
}

int image_trace_parse(const uint8_t *buf, size_t len, uint64_t n_indexes, uint64_t **out, size_t *out_n)
{
	json_error_t jerr;
	json_t *root = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		log_warn("trace: not valid JSON: %s (line %d)", jerr.text, jerr.line);
		return -EBADMSG;
	}
	int r = -EBADMSG;
	uint64_t *v = NULL;
	uint8_t *seen = NULL;
	json_t *fmt = json_object_get(root, "format");
	json_t *cs = json_object_get(root, "chunk_size");
	json_t *chunks = json_object_get(root, "chunks");
	if (!json_is_string(fmt) || strcmp(json_string_value(fmt), TRACE_FORMAT) != 0 || !json_is_integer(cs) ||
	    json_integer_value(cs) != CHUNK_SIZE || !json_is_array(chunks)) {
		log_warn("trace: not a %s object with chunk_size %u and a chunks array", TRACE_FORMAT, CHUNK_SIZE);
		goto out;
	}
	size_t n = json_array_size(chunks);
	if (n > n_indexes) {
		log_warn("trace: %zu entries for an image of %llu chunks", n, (unsigned long long)n_indexes);
		goto out;
	}
	v = malloc((n ? n : 1) * sizeof(*v));
	seen = calloc(n_indexes ? n_indexes : 1, 1);
	if (!v || !seen) {
		r = -ENOMEM;
		goto out;
	}
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		json_t *e = json_array_get(chunks, i);
		if (!json_is_integer(e) || json_integer_value(e) < 0 ||
		    (uint64_t)json_integer_value(e) >= n_indexes) {
			log_warn("trace: chunks[%zu] is not a chunk index of this image", i);
			goto out;
		}
		uint64_t idx = (uint64_t)json_integer_value(e);
		if (!seen[idx]) { /* a repeated index would only waste a fetch */
			seen[idx] = 1;
			v[k++] = idx;
		}
	}
	*out = v;
	*out_n = k;
	v = NULL;
	r = 0;
out:
	free(v);
	free(seen);
	json_decref(root);
	return r;
}

