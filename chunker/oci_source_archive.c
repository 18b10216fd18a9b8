/* OCI image source: docker-archive:FILE, a `docker save` / skopeo
 * docker-archive tar.
 *
 * The tar holds manifest.json ([{Config, RepoTags, Layers}]), the config
 * file and one plain tar per layer.  There is no OCI manifest inside, so the
 * image's manifest digest is defined as the sha256 of the manifest.json
 * entry: stable for the same archive, and it changes whenever the set of
 * layers or the config does.  The config digest is the sha256 of the config
 * bytes.  Layers are checked against the config's diff_ids, and against
 * their file name when the name is a digest (<hex>.tar, blobs/sha256/<hex>).
 * open fills the whole image; there are no documents to fetch by digest.
 */
#include "oci_source_ops.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <archive.h>
#include <archive_entry.h>
#include <jansson.h>

struct docker_archive {
	char *path;
	char **layer_names; /* entry name of each layer, NULL-terminated */
};

static int archive_begin(const char *path, const char *what, struct archive **out)
{
	struct archive *a = archive_read_new();
	if (!a)
		return -ENOMEM;
	archive_read_support_format_tar(a);
	/* libarchive seeks over entry data it is not asked for on a regular
	 * file, so re-scanning the outer tar per layer stays cheap. */
	if (archive_read_open_filename(a, path, 1 << 16) != ARCHIVE_OK) {
		log_err("%s: cannot open %s: %s", what, path, archive_error_string(a));
		int e = archive_errno(a) > 0 ? archive_errno(a) : EINVAL;
		archive_read_free(a);
		return -e;
	}
	*out = a;
	return 0;
}

/* Entry names compare without a leading "./". */
static const char *entry_name(struct archive_entry *e)
{
	const char *n = archive_entry_pathname(e);
	if (!n)
		return "";
	while (n[0] == '.' && n[1] == '/')
		n += 2;
	return n;
}

static int archive_read_entry(struct archive *a, struct archive_entry *e, const char *what, size_t max,
			      uint8_t **out, size_t *out_len)
{
	int64_t sz = archive_entry_size(e);
	if (sz < 0 || (uint64_t)sz > max) {
		log_err("%s: entry is %lld bytes, more than the limit of %zu", what, (long long)sz, max);
		return -EFBIG;
	}
	uint8_t *buf = malloc(sz ? (size_t)sz : 1);
	if (!buf)
		return -ENOMEM;
	size_t len = 0;
	while (len < (size_t)sz) {
		la_ssize_t r = archive_read_data(a, buf + len, (size_t)sz - len);
		if (r <= 0) {
			log_err("%s: read: %s", what, r < 0 ? archive_error_string(a) : "unexpected end of archive");
			free(buf);
			return -EIO;
		}
		len += (size_t)r;
	}
	*out = buf;
	*out_len = len;
	return 0;
}

/* Resolve a symlink target relative to the entry's directory, folding "."
 * and ".." so it can be compared with other entry names. */
static char *resolve_link(const char *entry, const char *target)
{
	char *joined;
	if (target[0] == '/') {
		joined = strdup(target + 1);
	} else {
		const char *slash = strrchr(entry, '/');
		joined = xasprintf("%.*s%s", slash ? (int)(slash - entry + 1) : 0, entry, target);
	}
	if (!joined)
		return NULL;
	char *out = malloc(strlen(joined) + 1);
	if (!out) {
		free(joined);
		return NULL;
	}
	size_t ol = 0;
	for (char *save = NULL, *tok = strtok_r(joined, "/", &save); tok; tok = strtok_r(NULL, "/", &save)) {
		if (strcmp(tok, ".") == 0)
			continue;
		if (strcmp(tok, "..") == 0) {
			while (ol > 0 && out[ol - 1] != '/')
				ol--;
			if (ol > 0)
				ol--;
			continue;
		}
		if (ol)
			out[ol++] = '/';
		memcpy(out + ol, tok, strlen(tok));
		ol += strlen(tok);
	}
	out[ol] = 0;
	free(joined);
	return out;
}

/* "<hex>.tar", "<hex>.json", "blobs/sha256/<hex>": the digest a name
 * promises, or false. */
static bool name_digest(const char *name, const char *suffix, char out[80])
{
	const char *base = strrchr(name, '/');
	char hex[SHA256_HEX_LEN + 1];
	if (strncmp(name, "blobs/sha256/", 13) == 0 && is_sha256_hex(name + 13)) {
		snprintf(out, 80, "sha256:%s", name + 13);
		return true;
	}
	base = base ? base + 1 : name;
	if (strlen(base) != SHA256_HEX_LEN + strlen(suffix) || strcmp(base + SHA256_HEX_LEN, suffix) != 0)
		return false;
	memcpy(hex, base, SHA256_HEX_LEN);
	hex[SHA256_HEX_LEN] = 0;
	if (!is_sha256_hex(hex))
		return false;
	snprintf(out, 80, "sha256:%s", hex);
	return true;
}

/* Parse docker's manifest.json: exactly one image; its config and layer
 * entry names. */
static int parse_docker_manifest(const char *what, const uint8_t *buf, size_t len, char **out_config,
				 char ***out_layers, size_t *out_n)
{
	json_error_t jerr;
	json_t *root = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		log_err("%s: invalid JSON at line %d column %d: %s", what, jerr.line, jerr.column, jerr.text);
		return -EBADMSG;
	}
	int r = -EBADMSG;
	char **names = NULL;
	size_t n = 0;
	if (!json_is_array(root) || json_array_size(root) == 0) {
		log_err("%s: expected a non-empty array of images", what);
		goto out;
	}
	if (json_array_size(root) > 1) {
		log_err("%s: the archive holds %zu images; only single-image archives are supported (save one "
			"image per archive)",
			what, json_array_size(root));
		goto out;
	}
	json_t *img = json_array_get(root, 0);
	if (!json_is_object(img)) {
		log_err("%s: [0]: expected an object", what);
		goto out;
	}
	json_t *cfg = json_object_get(img, "Config"), *ls = json_object_get(img, "Layers");
	json_t *tags = json_object_get(img, "RepoTags");
	if (!json_is_string(cfg) || strlen(json_string_value(cfg)) != json_string_length(cfg)) {
		log_err("%s: [0].Config: %s", what, cfg ? "expected a string" : "required field is missing");
		goto out;
	}
	if (tags && !json_is_null(tags) && !json_is_array(tags)) {
		log_err("%s: [0].RepoTags: expected an array of strings or null", what);
		goto out;
	}
	if (!json_is_array(ls)) {
		log_err("%s: [0].Layers: %s", what, ls ? "expected an array" : "required field is missing");
		goto out;
	}
	n = json_array_size(ls);
	if (n > OCI_MAX_LAYERS) {
		log_err("%s: [0].Layers: %zu layers, more than the limit of %u", what, n, OCI_MAX_LAYERS);
		goto out;
	}
	names = calloc(n + 1, sizeof(*names));
	if (!names) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		json_t *l = json_array_get(ls, i);
		if (!json_is_string(l) || strlen(json_string_value(l)) != json_string_length(l) ||
		    !json_string_length(l)) {
			log_err("%s: [0].Layers[%zu]: expected a non-empty string", what, i);
			goto out;
		}
		const char *s = json_string_value(l);
		while (s[0] == '.' && s[1] == '/')
			s += 2;
		if (!(names[i] = strdup(s))) {
			r = -ENOMEM;
			goto out;
		}
	}
	const char *c = json_string_value(cfg);
	while (c[0] == '.' && c[1] == '/')
		c += 2;
	if (!(*out_config = strdup(c))) {
		r = -ENOMEM;
		goto out;
	}
	*out_layers = names;
	*out_n = n;
	names = NULL;
	r = 0;
out:
	if (names)
		for (size_t i = 0; i < n; i++)
			free(names[i]);
	free(names);
	json_decref(root);
	return r;
}

/* One pass over the archive: read the config if |cfg_out| is still empty,
 * and for each layer name record its size or follow its link. */
static int archive_scan(struct docker_archive *da, struct oci_image *img, const char *cfg_name, uint8_t **cfg_buf,
			size_t *cfg_len, bool *resolved, bool *progress)
{
	struct archive *a;
	struct archive_entry *e;
	int r = archive_begin(da->path, img->source_ref, &a), ar;
	if (r < 0)
		return r;
	while ((ar = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
		const char *name = entry_name(e);
		if (!*cfg_buf && strcmp(name, cfg_name) == 0 && archive_entry_filetype(e) == AE_IFREG) {
			char what[512];
			snprintf(what, sizeof(what), "%s: %s", img->source_ref, name);
			if ((r = archive_read_entry(a, e, what, OCI_MAX_JSON, cfg_buf, cfg_len)) < 0)
				goto out;
			*progress = true;
			continue;
		}
		for (size_t i = 0; i < img->n_layers; i++) {
			if (resolved[i] || strcmp(name, da->layer_names[i]) != 0)
				continue;
			const char *hl = archive_entry_hardlink(e), *sl = archive_entry_symlink(e);
			if (hl || (sl && archive_entry_filetype(e) == AE_IFLNK)) {
				/* A repeated layer is stored once and linked. */
				char *t = hl ? strdup(hl) : resolve_link(name, sl);
				if (!t) {
					r = -ENOMEM;
					goto out;
				}
				if (hl)
					while (t[0] == '.' && t[1] == '/')
						memmove(t, t + 2, strlen(t + 2) + 1);
				free(da->layer_names[i]);
				da->layer_names[i] = t;
				*progress = true;
			} else if (archive_entry_filetype(e) == AE_IFREG) {
				int64_t sz = archive_entry_size(e);
				if (sz < 0 || (uint64_t)sz > OCI_MAX_BLOB) {
					log_err("%s: %s: absurd size %lld", img->source_ref, name, (long long)sz);
					r = -EBADMSG;
					goto out;
				}
				img->layers[i].size = (uint64_t)sz;
				resolved[i] = true;
				*progress = true;
			}
		}
	}
	if (ar != ARCHIVE_EOF) {
		log_err("%s: reading the tar: %s (is this a docker-archive tar?)", img->source_ref,
			archive_error_string(a));
		r = -EBADMSG;
	}
out:
	archive_read_free(a);
	return r;
}

/* Read manifest.json, find every layer and the config, and fill |img|. */
static int archive_setup(struct docker_archive *da, struct oci_image *img)
{
	char what[512], *cfg_name = NULL;
	uint8_t *mbuf = NULL, *cbuf = NULL;
	size_t mlen = 0, clen = 0;
	bool *resolved = NULL;
	struct archive *a = NULL;
	struct archive_entry *e;
	int r, ar;
	if ((r = archive_begin(da->path, img->source_ref, &a)) < 0)
		return r;
	while ((ar = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
		if (strcmp(entry_name(e), "manifest.json") == 0) {
			snprintf(what, sizeof(what), "%s: manifest.json", img->source_ref);
			if ((r = archive_read_entry(a, e, what, OCI_MAX_JSON, &mbuf, &mlen)) < 0)
				goto out;
			break;
		}
	}
	if (!mbuf) {
		log_err("%s: %s", img->source_ref,
			ar == ARCHIVE_OK || ar == ARCHIVE_EOF ? "no manifest.json in the archive (is this a docker save / "
								"skopeo docker-archive tar?)"
							      : archive_error_string(a));
		r = -EBADMSG;
		goto out;
	}
	archive_read_free(a);
	a = NULL;
	snprintf(what, sizeof(what), "%s: manifest.json", img->source_ref);
	if ((r = parse_docker_manifest(what, mbuf, mlen, &cfg_name, &da->layer_names, &img->n_layers)) < 0)
		goto out;
	oci_digest_str(mbuf, mlen, img->manifest_digest);

	size_t n = img->n_layers;
	img->layers = calloc(n ? n : 1, sizeof(*img->layers));
	resolved = calloc(n ? n : 1, sizeof(*resolved));
	if (!img->layers || !resolved) {
		r = -ENOMEM;
		goto out;
	}
	/* Links may point forwards or backwards; a few passes settle them. */
	for (int pass = 0;; pass++) {
		bool progress = false, all = cbuf != NULL;
		if ((r = archive_scan(da, img, cfg_name, &cbuf, &clen, resolved, &progress)) < 0)
			goto out;
		for (size_t i = 0; i < n; i++)
			all &= resolved[i];
		if (all)
			break;
		if (!progress || pass == 4) {
			for (size_t i = 0; i < n; i++)
				if (!resolved[i]) {
					log_err("%s: layer %zu: %s is not in the archive (or is a dangling link)",
						img->source_ref, i + 1, da->layer_names[i]);
					r = -EBADMSG;
					goto out;
				}
			log_err("%s: config %s is not in the archive", img->source_ref, cfg_name);
			r = -EBADMSG;
			goto out;
		}
	}
	for (size_t i = 0; i < n; i++) {
		struct oci_layer *l = &img->layers[i];
		snprintf(l->media_type, sizeof(l->media_type), "application/vnd.docker.image.rootfs.diff.tar");
		if (!name_digest(da->layer_names[i], ".tar", l->digest))
			l->digest[0] = 0;
	}
	oci_digest_str(cbuf, clen, img->config_digest);
	char named[80];
	if (name_digest(cfg_name, ".json", named) && strcmp(named, img->config_digest) != 0) {
		log_err("%s: config %s: digest mismatch: expected %s, got %s (corrupt or tampered archive)",
			img->source_ref, cfg_name, named, img->config_digest);
		r = -EBADMSG;
		goto out;
	}
	snprintf(what, sizeof(what), "%s: config %s", img->source_ref, cfg_name);
	r = oci_parse_config(what, cbuf, clen, img);
out:
	if (a)
		archive_read_free(a);
	free(resolved);
	free(cfg_name);
	free(mbuf);
	free(cbuf);
	return r;
}

static void archive_close(void *state)
{
	struct docker_archive *da = state;
	free(da->path);
	strv_free(da->layer_names);
	free(da);
}

static int archive_open(const char *rest, const struct oci_source_options *opt, struct oci_image *img,
			void **out_state, struct oci_root *root)
{
	(void)opt;
	(void)root;
	struct docker_archive *da = calloc(1, sizeof(*da));
	if (!da || !(da->path = strdup(rest))) {
		free(da);
		return -ENOMEM;
	}
	int r = archive_setup(da, img);
	if (r < 0) {
		archive_close(da);
		return r;
	}
	*out_state = da;
	return 0;
}

/* The data of one tar entry as a raw byte stream. */
struct archive_stream {
	struct byte_stream pub;
	struct archive *a;
	char *what;
};

static ssize_t archive_stream_read(struct byte_stream *s, void *buf, size_t n)
{
	struct archive_stream *as = (struct archive_stream *)s;
	la_ssize_t r = archive_read_data(as->a, buf, n);
	if (r < 0) {
		log_err("%s: reading from the archive: %s", s->what, archive_error_string(as->a));
		return -EIO;
	}
	return (ssize_t)r;
}

static void archive_stream_close(struct byte_stream *s)
{
	struct archive_stream *as = (struct archive_stream *)s;
	archive_read_free(as->a);
	free(as->what);
	free(as);
}

static int archive_open_layer(void *state, const struct oci_image *img, size_t i, const char *what, int *out_fd,
			      struct byte_stream **out_raw)
{
	struct docker_archive *da = state;
	const struct oci_layer *l = &img->layers[i];
	struct archive *a;
	struct archive_entry *e;
	(void)out_fd;
	int r = archive_begin(da->path, what, &a), ar;
	if (r < 0)
		return r;
	while ((ar = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
		if (archive_entry_filetype(e) == AE_IFREG && !archive_entry_hardlink(e) &&
		    strcmp(entry_name(e), da->layer_names[i]) == 0)
			break;
	}
	if (ar != ARCHIVE_OK) {
		log_err("%s: %s not found in %s: %s", what, da->layer_names[i], da->path,
			ar == ARCHIVE_EOF ? "the archive changed since it was opened" : archive_error_string(a));
		archive_read_free(a);
		return -EBADMSG;
	}
	if ((uint64_t)archive_entry_size(e) != l->size) {
		log_err("%s: entry size changed since the archive was opened", what);
		archive_read_free(a);
		return -EBADMSG;
	}
	struct archive_stream *as = calloc(1, sizeof(*as));
	if (!as || !(as->what = strdup(what))) {
		free(as);
		archive_read_free(a);
		return -ENOMEM;
	}
	as->a = a;
	as->pub.read = archive_stream_read;
	as->pub.close = archive_stream_close;
	as->pub.what = as->what;
	*out_raw = &as->pub;
	return 0;
}

const struct oci_source_ops oci_archive_ops = {
	.name = "docker-archive",
	.prefix = "docker-archive:",
	.empty_ok = false,
	.open = archive_open,
	.open_layer = archive_open_layer,
	.close = archive_close,
};
