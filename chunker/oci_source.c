/* OCI image sources: where `chunkify import` gets an image from.
 *
 *   oci:DIR[:TAG]                 an OCI image layout directory (oci_source_layout.c)
 *   docker-archive:FILE           a `docker save` / skopeo docker-archive tar (oci_source_archive.c)
 *   docker://HOST[:PORT]/REPO[:TAG|@DIGEST]   a registry, distribution API v2 (oci_source_registry.c)
 *
 * This file picks the source by prefix, walks from the first document to the
 * manifest and the config for the sources that serve documents by digest,
 * and wraps layer bytes in verifying streams.  Every source ends in the same
 * verified shape: an oci_image whose manifest and config digests were
 * computed from the bytes actually read, and layer streams that check the
 * blob digest and the diff_id as they are consumed (blob.c).  Nothing a
 * source says about itself is trusted before it has been hashed.
 *
 * Each source's state lives in the handle.  Layers may be opened from
 * several threads; each stream is then independent.
 */
#include "oci_source_ops.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

/* Every source, matched by prefix.  Adding one means one line here and one
 * ops table. */
static const struct oci_source_ops *const oci_sources[] = {
	&oci_layout_ops,
	&oci_archive_ops,
	&oci_registry_ops,
};

struct oci_source {
	const struct oci_source_ops *ops;
	void *state;
	struct oci_image img;
};

/* ======================================================================
 * Shared helpers
 * ====================================================================== */

/* Contract in oci_source_ops.h. */
void oci_digest_str(const void *p, size_t n, char out[80])
{
	uint8_t h[SHA256_LEN];
	char hex[SHA256_HEX_LEN + 1];
	sha256_buf(p, n, h);
	hex_encode(h, SHA256_LEN, hex);
	snprintf(out, 80, "sha256:%s", hex);
}

/* Contract in oci_source_ops.h. */
int oci_verify_digest(const char *what, const uint8_t *buf, size_t len, const char *want)
{
	char got[80];
	oci_digest_str(buf, len, got);
	if (strcmp(got, want) != 0) {
		log_err("%s: digest mismatch: expected %s, got %s (corrupt or tampered content)", what, want, got);
		return -EBADMSG;
	}
	return 0;
}

/* Contract in oci_source_ops.h. */
void oci_doc_cleanup(struct oci_doc *d)
{
	free(d->buf);
	*d = (struct oci_doc){0};
}

enum doc_kind { DOC_MANIFEST, DOC_INDEX };

/* Decide whether a fetched document is an index or a manifest.  The parsers
 * do the real checking; this only looks at the declared content type, then
 * at mediaType or a "manifests" key. */
static enum doc_kind sniff_doc(const uint8_t *buf, size_t len, const char *content_type)
{
	static const char *const index_types[] = {"application/vnd.oci.image.index.v1+json",
						  "application/vnd.docker.distribution.manifest.list.v2+json"};
	for (size_t i = 0; i < 2; i++)
		if (strncmp(content_type, index_types[i], strlen(index_types[i])) == 0)
			return DOC_INDEX;
	enum doc_kind k = DOC_MANIFEST;
	json_t *root = json_loadb((const char *)buf, len, 0, NULL);
	if (json_is_object(root)) {
		json_t *mt = json_object_get(root, "mediaType");
		if (json_is_string(mt)) {
			for (size_t i = 0; i < 2; i++)
				if (strcmp(json_string_value(mt), index_types[i]) == 0)
					k = DOC_INDEX;
		} else if (json_is_array(json_object_get(root, "manifests"))) {
			k = DOC_INDEX;
		}
	}
	json_decref(root);
	return k;
}

/* From |root| through nested indexes to the manifest, then the config: the
 * part of opening that every source serving documents by digest shares. */
static int resolve_image(const struct oci_source_ops *ops, void *state, const struct oci_root *root,
			 struct oci_image *img)
{
	char ref[sizeof(root->ref)], digest[80];
	uint64_t size = root->size;
	snprintf(ref, sizeof(ref), "%s", root->ref);
	snprintf(digest, sizeof(digest), "%s", root->digest);
	struct oci_doc d = {0};
	int r;
	for (unsigned depth = 0;; depth++) {
		oci_doc_cleanup(&d);
		if ((r = ops->fetch_manifest(state, ref, digest, size, &d)) < 0)
			goto out;
		if (sniff_doc(d.buf, d.len, d.content_type) == DOC_MANIFEST)
			break;
		if (depth == ops->max_nested) {
			log_err("%s: indexes nested too deeply", d.what);
			r = -EBADMSG;
			goto out;
		}
		/* An index reached here is chosen from by platform (linux/amd64
		 * or its only entry), never by a ref.name tag. */
		if ((r = oci_parse_index(d.index_what, d.buf, d.len, NULL, digest, &size)) < 0)
			goto out;
		snprintf(ref, sizeof(ref), "%s", digest);
	}
	if ((r = oci_parse_manifest(d.what, d.buf, d.len, img)) < 0)
		goto out;
	snprintf(img->manifest_digest, sizeof(img->manifest_digest), "%s", d.digest);

	oci_doc_cleanup(&d);
	if ((r = ops->fetch_config(state, img->config_digest, &d)) < 0)
		goto out;
	if ((r = oci_verify_digest(d.what, d.buf, d.len, img->config_digest)) < 0)
		goto out;
	r = oci_parse_config(d.what, d.buf, d.len, img);
out:
	oci_doc_cleanup(&d);
	return r;
}

static const struct oci_source_ops *source_for(const char *spec)
{
	for (size_t s = 0; s < sizeof(oci_sources) / sizeof(oci_sources[0]); s++) {
		const struct oci_source_ops *ops = oci_sources[s];
		size_t n = strlen(ops->prefix);
		if (strncmp(spec, ops->prefix, n) == 0 && (spec[n] || ops->empty_ok))
			return ops;
	}
	return NULL;
}

static char *layer_what(const struct oci_source *src, size_t i)
{
	const struct oci_layer *l = &src->img.layers[i];
	return xasprintf("layer %zu (%s) of %s", i + 1, *l->digest ? l->digest : l->diff_id, src->img.source_ref);
}

/* ======================================================================
 * Public entry points
 * ====================================================================== */

/* Contract in internal.h.  The source's layer list and run config stay valid
 * until oci_source_free. */
int oci_source_open(const char *spec, const struct oci_source_options *opt, struct oci_source **out,
		    const struct oci_image **out_image)
{
	struct oci_source *src = calloc(1, sizeof(*src));
	if (!src)
		return -ENOMEM;
	if (!(src->img.source_ref = strdup(spec))) {
		free(src);
		return -ENOMEM;
	}
	int r;
	const struct oci_source_ops *ops = source_for(spec);
	if (!ops) {
		log_err("%s: unknown image source; use oci:DIR[:TAG], docker-archive:FILE or "
			"docker://HOST[:PORT]/REPO[:TAG|@DIGEST]",
			spec);
		r = -EINVAL;
	} else {
		struct oci_root root = {0};
		log_debug("%s: opening with the %s source", spec, ops->name);
		r = ops->open(spec + strlen(ops->prefix), opt, &src->img, &src->state, &root);
		if (r == 0)
			src->ops = ops;
		if (r == 0 && ops->fetch_manifest)
			r = resolve_image(ops, src->state, &root, &src->img);
	}
	if (r == 0 && src->img.n_layers == 0) {
		log_err("%s: the image has no layers", spec);
		r = -EBADMSG;
	}
	if (r < 0) {
		oci_source_free(src);
		return r;
	}
	*out = src;
	if (out_image)
		*out_image = &src->img;
	return 0;
}

/* Contract in internal.h. */
struct byte_stream *oci_source_open_layer(struct oci_source *src, size_t i)
{
	if (!src || i >= src->img.n_layers) {
		errno = EINVAL;
		return NULL;
	}
	char *what = layer_what(src, i);
	if (!what)
		return NULL;
	const struct oci_layer *l = &src->img.layers[i];
	const char *digest = *l->digest ? l->digest : NULL; /* docker-archive layers may have none */
	int fd = -1;
	struct byte_stream *raw = NULL, *s = NULL;
	int r = src->ops->open_layer(src->state, &src->img, i, what, &fd, &raw);
	if (r < 0)
		errno = -r;
	else if (raw)
		s = blob_stream_wrap(raw, what, digest, l->diff_id, l->size);
	else
		s = blob_stream_open_fd(fd, what, digest, l->diff_id, l->size);
	int e = errno;
	free(what);
	errno = e;
	return s;
}

/* Contract in internal.h; NULL is allowed. */
void oci_source_free(struct oci_source *src)
{
	if (!src)
		return;
	if (src->ops)
		src->ops->close(src->state);
	oci_image_cleanup(&src->img);
	free(src);
}
