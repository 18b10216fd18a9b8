/* Checked parsers for OCI and Docker image JSON: indexes, manifests, configs.
 *
 * Every document here comes from an untrusted registry, layout directory or
 * archive.  Each field is checked for type, presence and range before use,
 * and a failure names the document (|what|) and the JSON path of the field,
 * so an operator can find the broken byte with jq.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#define ANNOTATION_REF_NAME "org.opencontainers.image.ref.name"

static const char *const index_types[] = {
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	NULL,
};
static const char *const manifest_types[] = {
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.docker.distribution.manifest.v2+json",
	NULL,
};
static const char *const config_types[] = {
	"application/vnd.oci.image.config.v1+json",
	"application/vnd.docker.container.image.v1+json",
	NULL,
};
static const char *const layer_types[] = {
	"application/vnd.oci.image.layer.v1.tar",
	"application/vnd.oci.image.layer.v1.tar+gzip",
	"application/vnd.oci.image.layer.v1.tar+zstd",
	"application/vnd.oci.image.layer.nondistributable.v1.tar",
	"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
	"application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
	"application/vnd.docker.image.rootfs.diff.tar.gzip",
	"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
	/* docker-archive layers are plain tars under this name */
	"application/vnd.docker.image.rootfs.diff.tar",
	NULL,
};

static bool in_list(const char *s, const char *const *list)
{
	for (; *list; list++)
		if (strcmp(s, *list) == 0)
			return true;
	return false;
}

static json_t *load_object(const char *what, const uint8_t *buf, size_t len)
{
	if (len > OCI_MAX_JSON) {
		log_err("%s: document is %zu bytes, more than the limit of %u", what, len, OCI_MAX_JSON);
		return NULL;
	}
	json_error_t jerr;
	json_t *root = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		log_err("%s: invalid JSON at line %d column %d: %s", what, jerr.line, jerr.column, jerr.text);
		return NULL;
	}
	if (!json_is_object(root)) {
		log_err("%s: expected a JSON object at the top level", what);
		json_decref(root);
		return NULL;
	}
	return root;
}

/* A string value; NUL bytes inside would make C see a different string than
 * the one that was hashed, so they are refused. */
static int as_string(const char *what, const char *path, json_t *v, const char **out)
{
	if (!json_is_string(v)) {
		log_err("%s: %s: expected a string", what, path);
		return -EBADMSG;
	}
	const char *s = json_string_value(v);
	if (strlen(s) != json_string_length(v)) {
		log_err("%s: %s: string contains a NUL byte", what, path);
		return -EBADMSG;
	}
	*out = s;
	return 0;
}

static int get_string(const char *what, json_t *obj, const char *key, const char *path, bool required,
		      const char **out)
{
	json_t *v = json_object_get(obj, key);
	*out = NULL;
	if (!v) {
		if (!required)
			return 0;
		log_err("%s: %s: required field is missing", what, path);
		return -EBADMSG;
	}
	return as_string(what, path, v, out);
}

static int get_size(const char *what, json_t *obj, const char *key, const char *path, uint64_t max,
		    uint64_t *out)
{
	json_t *v = json_object_get(obj, key);
	if (!v) {
		log_err("%s: %s: required field is missing", what, path);
		return -EBADMSG;
	}
	if (!json_is_integer(v)) {
		log_err("%s: %s: expected an integer", what, path);
		return -EBADMSG;
	}
	json_int_t n = json_integer_value(v);
	if (n < 0 || (uint64_t)n > max) {
		log_err("%s: %s: size %lld is out of range (0 to %llu)", what, path, (long long)n,
			(unsigned long long)max);
		return -EBADMSG;
	}
	*out = (uint64_t)n;
	return 0;
}

/* "sha256:" + 64 lower-case hex digits, nothing else. */
static int check_digest(const char *what, const char *path, const char *d)
{
	const char *colon = strchr(d, ':');
	if (!colon) {
		log_err("%s: %s: '%.80s' is not a digest (expected sha256:<64 hex digits>)", what, path, d);
		return -EBADMSG;
	}
	if ((size_t)(colon - d) != 6 || strncmp(d, "sha256", 6) != 0) {
		log_err("%s: %s: unsupported digest algorithm '%.*s' (only sha256 is supported)", what, path,
			(int)((colon - d) > 32 ? 32 : (colon - d)), d);
		return -EBADMSG;
	}
	if (!is_sha256_hex(colon + 1)) {
		log_err("%s: %s: '%.80s' is not a valid sha256 digest (expected 64 lower-case hex digits)", what,
			path, d);
		return -EBADMSG;
	}
	return 0;
}

static int get_digest(const char *what, json_t *obj, const char *key, const char *path, char out[80])
{
	const char *d;
	int r = get_string(what, obj, key, path, true, &d);
	if (r < 0)
		return r;
	if ((r = check_digest(what, path, d)) < 0)
		return r;
	snprintf(out, 80, "%s", d);
	return 0;
}

static int check_schema_version(const char *what, json_t *root)
{
	json_t *v = json_object_get(root, "schemaVersion");
	if (!v) {
		log_err("%s: schemaVersion: required field is missing", what);
		return -EBADMSG;
	}
	if (!json_is_integer(v)) {
		log_err("%s: schemaVersion: expected an integer", what);
		return -EBADMSG;
	}
	if (json_integer_value(v) != 2) {
		log_err("%s: schemaVersion: %lld is not supported (only 2; Docker schema 1 images must be "
			"converted, e.g. with skopeo copy)",
			what, (long long)json_integer_value(v));
		return -EBADMSG;
	}
	return 0;
}

/* Append |s| to a bounded, comma-separated list for error messages. */
static void list_append(char *list, size_t cap, const char *s)
{
	size_t l = strlen(list);
	if (l + 8 >= cap)
		return;
	snprintf(list + l, cap - l, "%s%s", l ? ", " : "", s);
}

struct index_entry {
	char digest[80];
	uint64_t size;
	const char *ref_name; /* borrowed from the JSON tree */
	bool linux_amd64;
};

static int parse_descriptor(const char *what, json_t *m, size_t i, struct index_entry *e)
{
	char path[96];
	const char *mt, *arch, *os;
	int r;
	if (!json_is_object(m)) {
		snprintf(path, sizeof(path), "manifests[%zu]", i);
		log_err("%s: %s: expected an object", what, path);
		return -EBADMSG;
	}
	snprintf(path, sizeof(path), "manifests[%zu].mediaType", i);
	if ((r = get_string(what, m, "mediaType", path, true, &mt)) < 0)
		return r;
	if (!in_list(mt, manifest_types) && !in_list(mt, index_types)) {
		log_err("%s: %s: unsupported media type '%.160s'", what, path, mt);
		return -EBADMSG;
	}
	snprintf(path, sizeof(path), "manifests[%zu].digest", i);
	if ((r = get_digest(what, m, "digest", path, e->digest)) < 0)
		return r;
	snprintf(path, sizeof(path), "manifests[%zu].size", i);
	if ((r = get_size(what, m, "size", path, OCI_MAX_JSON, &e->size)) < 0)
		return r;

	json_t *ann = json_object_get(m, "annotations");
	if (ann && !json_is_null(ann)) {
		if (!json_is_object(ann)) {
			snprintf(path, sizeof(path), "manifests[%zu].annotations", i);
			log_err("%s: %s: expected an object", what, path);
			return -EBADMSG;
		}
		snprintf(path, sizeof(path), "manifests[%zu].annotations[\"%s\"]", i, ANNOTATION_REF_NAME);
		if ((r = get_string(what, ann, ANNOTATION_REF_NAME, path, false, &e->ref_name)) < 0)
			return r;
	}
	json_t *plat = json_object_get(m, "platform");
	if (plat && !json_is_null(plat)) {
		if (!json_is_object(plat)) {
			snprintf(path, sizeof(path), "manifests[%zu].platform", i);
			log_err("%s: %s: expected an object", what, path);
			return -EBADMSG;
		}
		snprintf(path, sizeof(path), "manifests[%zu].platform.architecture", i);
		if ((r = get_string(what, plat, "architecture", path, true, &arch)) < 0)
			return r;
		snprintf(path, sizeof(path), "manifests[%zu].platform.os", i);
		if ((r = get_string(what, plat, "os", path, true, &os)) < 0)
			return r;
		e->linux_amd64 = strcmp(arch, "amd64") == 0 && strcmp(os, "linux") == 0;
	}
	return 0;
}

/* Contract in internal.h. */
int oci_parse_index(const char *what, const uint8_t *buf, size_t len, const char *tag, char *out_digest,
		    uint64_t *out_size)
{
	json_t *root = load_object(what, buf, len);
	if (!root)
		return -EBADMSG;
	int r = check_schema_version(what, root);
	const char *mt = NULL;
	struct index_entry *ents = NULL;
	if (r < 0)
		goto out;
	if ((r = get_string(what, root, "mediaType", "mediaType", false, &mt)) < 0)
		goto out;
	if (mt && !in_list(mt, index_types)) {
		log_err("%s: mediaType: '%.160s' is not an image index or manifest list", what, mt);
		r = -EBADMSG;
		goto out;
	}
	json_t *ms = json_object_get(root, "manifests");
	if (!json_is_array(ms)) {
		log_err("%s: manifests: %s", what, ms ? "expected an array" : "required field is missing");
		r = -EBADMSG;
		goto out;
	}
	size_t n = json_array_size(ms);
	if (n == 0) {
		log_err("%s: manifests: the index lists no image", what);
		r = -EBADMSG;
		goto out;
	}
	if (n > OCI_MAX_LAYERS) {
		log_err("%s: manifests: %zu entries, more than the limit of %u", what, n, OCI_MAX_LAYERS);
		r = -EBADMSG;
		goto out;
	}
	ents = calloc(n, sizeof(*ents));
	if (!ents) {
		r = -ENOMEM;
		goto out;
	}
	bool any_ref = false;
	for (size_t i = 0; i < n; i++) {
		if ((r = parse_descriptor(what, json_array_get(ms, i), i, &ents[i])) < 0)
			goto out;
		any_ref |= ents[i].ref_name != NULL;
	}

	const struct index_entry *pick = NULL;
	if (tag) {
		for (size_t i = 0; i < n && !pick; i++)
			if (ents[i].ref_name && strcmp(ents[i].ref_name, tag) == 0)
				pick = &ents[i];
	} else if (n == 1) {
		pick = &ents[0];
	} else if (!any_ref) {
		for (size_t i = 0; i < n && !pick; i++)
			if (ents[i].linux_amd64)
				pick = &ents[i];
	}
	if (!pick) {
		char tags[512] = "";
		for (size_t i = 0; i < n; i++)
			if (ents[i].ref_name)
				list_append(tags, sizeof(tags), ents[i].ref_name);
		if (tag)
			log_err("%s: no manifest tagged '%s'; available tags: %s", what, tag, *tags ? tags : "(none)");
		else if (any_ref)
			log_err("%s: %zu manifests and no tag given; name one of: %s", what, n, tags);
		else
			log_err("%s: %zu manifests and none for linux/amd64", what, n);
		r = -ENOENT;
		goto out;
	}
	snprintf(out_digest, 80, "%s", pick->digest);
	if (out_size)
		*out_size = pick->size;
	r = 0;
out:
	free(ents);
	json_decref(root);
	return r;
}

/* Contract in internal.h.  Replaces the layers and config digest of |img|
 * only on success. */
int oci_parse_manifest(const char *what, const uint8_t *buf, size_t len, struct oci_image *img)
{
	json_t *root = load_object(what, buf, len);
	if (!root)
		return -EBADMSG;
	struct oci_layer *layers = NULL;
	char cfg_digest[80];
	const char *mt, *cmt;
	uint64_t cfg_size;
	int r = check_schema_version(what, root);
	if (r < 0)
		goto out;
	/* The OCI spec only says SHOULD for a manifest's own mediaType; a
	 * document that is really an index must still not pass as a manifest. */
	if ((r = get_string(what, root, "mediaType", "mediaType", false, &mt)) < 0)
		goto out;
	if ((mt && in_list(mt, index_types)) || (!mt && json_object_get(root, "manifests"))) {
		log_err("%s: is an image index, not an image manifest", what);
		r = -EBADMSG;
		goto out;
	}
	if (mt && !in_list(mt, manifest_types)) {
		log_err("%s: mediaType: unsupported manifest type '%.160s'", what, mt);
		r = -EBADMSG;
		goto out;
	}

	json_t *cfg = json_object_get(root, "config");
	if (!json_is_object(cfg)) {
		log_err("%s: config: %s", what, cfg ? "expected an object" : "required field is missing");
		r = -EBADMSG;
		goto out;
	}
	if ((r = get_string(what, cfg, "mediaType", "config.mediaType", true, &cmt)) < 0)
		goto out;
	if (!in_list(cmt, config_types)) {
		log_err("%s: config.mediaType: '%.160s' is not an image config (is this an artifact, not a "
			"container image?)",
			what, cmt);
		r = -EBADMSG;
		goto out;
	}
	if ((r = get_digest(what, cfg, "digest", "config.digest", cfg_digest)) < 0)
		goto out;
	if ((r = get_size(what, cfg, "size", "config.size", OCI_MAX_JSON, &cfg_size)) < 0)
		goto out;

	json_t *ls = json_object_get(root, "layers");
	if (!json_is_array(ls)) {
		log_err("%s: layers: %s", what, ls ? "expected an array" : "required field is missing");
		r = -EBADMSG;
		goto out;
	}
	size_t n = json_array_size(ls);
	if (n > OCI_MAX_LAYERS) {
		log_err("%s: layers: %zu layers, more than the limit of %u", what, n, OCI_MAX_LAYERS);
		r = -EBADMSG;
		goto out;
	}
	if (n) {
		layers = calloc(n, sizeof(*layers));
		if (!layers) {
			r = -ENOMEM;
			goto out;
		}
	}
	for (size_t i = 0; i < n; i++) {
		json_t *l = json_array_get(ls, i);
		char path[64];
		const char *lmt;
		if (!json_is_object(l)) {
			log_err("%s: layers[%zu]: expected an object", what, i);
			r = -EBADMSG;
			goto out;
		}
		snprintf(path, sizeof(path), "layers[%zu].mediaType", i);
		if ((r = get_string(what, l, "mediaType", path, true, &lmt)) < 0)
			goto out;
		if (!in_list(lmt, layer_types)) {
			log_err("%s: %s: unsupported layer type '%.160s'", what, path, lmt);
			r = -EBADMSG;
			goto out;
		}
		snprintf(layers[i].media_type, sizeof(layers[i].media_type), "%s", lmt);
		snprintf(path, sizeof(path), "layers[%zu].digest", i);
		if ((r = get_digest(what, l, "digest", path, layers[i].digest)) < 0)
			goto out;
		snprintf(path, sizeof(path), "layers[%zu].size", i);
		if ((r = get_size(what, l, "size", path, OCI_MAX_BLOB, &layers[i].size)) < 0)
			goto out;
	}

	free(img->layers);
	img->layers = layers;
	img->n_layers = n;
	layers = NULL;
	snprintf(img->config_digest, sizeof(img->config_digest), "%s", cfg_digest);
	r = 0;
out:
	free(layers);
	json_decref(root);
	return r;
}

/* An optional array of strings (absent or null gives NULL). */
static int get_strv(const char *what, json_t *obj, const char *key, const char *path, char ***out)
{
	json_t *v = json_object_get(obj, key);
	*out = NULL;
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_array(v)) {
		log_err("%s: %s: expected an array of strings or null", what, path);
		return -EBADMSG;
	}
	size_t n = json_array_size(v), bytes;
	if (!ck_add_size(n, 1, &bytes) || !ck_mul_size(bytes, sizeof(char *), &bytes))
		return -ENOMEM;
	char **sv = calloc(1, bytes);
	if (!sv)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		char ipath[96];
		const char *s;
		snprintf(ipath, sizeof(ipath), "%s[%zu]", path, i);
		int r = as_string(what, ipath, json_array_get(v, i), &s);
		if (r < 0) {
			strv_free(sv);
			return r;
		}
		if (!(sv[i] = strdup(s))) {
			strv_free(sv);
			return -ENOMEM;
		}
	}
	*out = sv;
	return 0;
}

/* An optional string; absent, null and "" all give NULL. */
static int get_opt_str(const char *what, json_t *obj, const char *key, const char *path, char **out)
{
	json_t *v = json_object_get(obj, key);
	const char *s;
	*out = NULL;
	if (!v || json_is_null(v))
		return 0;
	int r = as_string(what, path, v, &s);
	if (r < 0 || !*s)
		return r;
	return (*out = strdup(s)) ? 0 : -ENOMEM;
}

/* Contract in internal.h.  |img| must already hold the manifest's layers;
 * its run config and diff_ids are replaced only on success. */
int oci_parse_config(const char *what, const uint8_t *buf, size_t len, struct oci_image *img)
{
	json_t *root = load_object(what, buf, len);
	if (!root)
		return -EBADMSG;
	struct run_config rc = {0};
	int r = 0;
	json_t *c = json_object_get(root, "config");
	if (c && !json_is_null(c)) {
		if (!json_is_object(c)) {
			log_err("%s: config: expected an object", what);
			r = -EBADMSG;
			goto out;
		}
		if ((r = get_strv(what, c, "Entrypoint", "config.Entrypoint", &rc.entrypoint)) < 0 ||
		    (r = get_strv(what, c, "Cmd", "config.Cmd", &rc.cmd)) < 0 ||
		    (r = get_strv(what, c, "Env", "config.Env", &rc.env)) < 0 ||
		    (r = get_opt_str(what, c, "WorkingDir", "config.WorkingDir", &rc.working_dir)) < 0 ||
		    (r = get_opt_str(what, c, "User", "config.User", &rc.user)) < 0)
			goto out;
	}

	json_t *rootfs = json_object_get(root, "rootfs");
	if (!json_is_object(rootfs)) {
		log_err("%s: rootfs: %s", what, rootfs ? "expected an object" : "required field is missing");
		r = -EBADMSG;
		goto out;
	}
	const char *type;
	if ((r = get_string(what, rootfs, "type", "rootfs.type", true, &type)) < 0)
		goto out;
	if (strcmp(type, "layers") != 0) {
		log_err("%s: rootfs.type: '%.64s' is not \"layers\"", what, type);
		r = -EBADMSG;
		goto out;
	}
	json_t *ids = json_object_get(rootfs, "diff_ids");
	if (!json_is_array(ids)) {
		log_err("%s: rootfs.diff_ids: %s", what, ids ? "expected an array" : "required field is missing");
		r = -EBADMSG;
		goto out;
	}
	size_t n = json_array_size(ids);
	if (n != img->n_layers) {
		log_err("%s: rootfs.diff_ids: %zu entries but the manifest has %zu layers", what, n, img->n_layers);
		r = -EBADMSG;
		goto out;
	}
	/* Check every entry before writing any, so a failure changes nothing. */
	for (size_t i = 0; i < n; i++) {
		char path[64];
		snprintf(path, sizeof(path), "rootfs.diff_ids[%zu]", i);
		const char *s;
		if ((r = as_string(what, path, json_array_get(ids, i), &s)) < 0)
			goto out;
		if ((r = check_digest(what, path, s)) < 0)
			goto out;
	}
	for (size_t i = 0; i < n; i++)
		snprintf(img->layers[i].diff_id, sizeof(img->layers[i].diff_id), "%s",
			 json_string_value(json_array_get(ids, i)));
	run_config_cleanup(&img->config);
	img->config = rc;
	memset(&rc, 0, sizeof(rc));
	r = 0;
out:
	run_config_cleanup(&rc);
	json_decref(root);
	return r;
}

/* Contract in internal.h; safe on a zeroed struct. */
void oci_image_cleanup(struct oci_image *img)
{
	if (!img)
		return;
	free(img->layers);
	run_config_cleanup(&img->config);
	free(img->source_ref);
	memset(img, 0, sizeof(*img));
}
