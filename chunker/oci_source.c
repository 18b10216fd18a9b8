/* OCI image sources: where `chunkify import` gets an image from.
 *
 *   oci:DIR[:TAG]                 an OCI image layout directory
 *   docker-archive:FILE           a `docker save` / skopeo docker-archive tar
 *   docker://HOST[:PORT]/REPO[:TAG|@DIGEST]   a registry (distribution API v2)
 *
 * Every source ends in the same verified shape: an oci_image whose manifest
 * and config digests were computed from the bytes actually read, and layer
 * streams that check the blob digest and the diff_id as they are consumed
 * (blob.c).  Nothing a source says about itself is trusted before it has been
 * hashed.
 *
 * Registry state lives in the handle; the only process-wide state is libcurl's
 * global init, done once.  A source serialises its own registry requests, so
 * layers may be opened from several threads; each stream is then independent.
 */
#include "internal.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>
#include <curl/curl.h>
#include <jansson.h>
#include <openssl/evp.h>

enum src_kind { SRC_LAYOUT, SRC_ARCHIVE, SRC_REGISTRY };

struct registry {
	char *host;	/* as given, "127.0.0.1:5000", for messages and URLs */
	char *base;	/* "https://host" */
	char *repo;
	char *ref;	/* tag or "sha256:..." */
	bool ref_is_digest;
	bool plain_http_ok; /* http allowed for the token realm and redirects */
	char *user, *pass;
	char *bearer;	/* "Authorization: Bearer ..." once a token is held */
	bool use_basic;	/* the registry asked for basic auth */
	char *tmp_dir;
	CURL *curl;	/* kept for connection reuse; guarded by |lock| */
	pthread_mutex_t lock;
};

struct oci_source {
	enum src_kind kind;
	struct oci_image img;
	int dir_fd;		/* layout */
	char *archive_path;	/* archive */
	char **layer_names;	/* archive: entry name of each layer */
	struct registry reg;	/* registry */
	bool reg_init;
};

/* ======================================================================
 * Shared helpers
 * ====================================================================== */

static void sha256_digest_str(const void *p, size_t n, char out[80])
{
	uint8_t h[SHA256_LEN];
	char hex[SHA256_HEX_LEN + 1];
	sha256_buf(p, n, h);
	hex_encode(h, SHA256_LEN, hex);
	snprintf(out, 80, "sha256:%s", hex);
}

/* Check a fetched document against the digest that named it. */
static int verify_digest(const char *what, const uint8_t *buf, size_t len, const char *want)
{
	char got[80];
	sha256_digest_str(buf, len, got);
	if (strcmp(got, want) != 0) {
		log_err("%s: digest mismatch: expected %s, got %s (corrupt or tampered content)", what, want, got);
		return -EBADMSG;
	}
	return 0;
}

enum doc_kind { DOC_MANIFEST, DOC_INDEX };

/* Decide whether a fetched document is an index or a manifest.  The parsers
 * do the real checking; this only looks at mediaType or a "manifests" key. */
static enum doc_kind sniff_doc(const uint8_t *buf, size_t len, const char *content_type)
{
	static const char *const index_types[] = {"application/vnd.oci.image.index.v1+json",
						  "application/vnd.docker.distribution.manifest.list.v2+json"};
	for (size_t i = 0; content_type && i < 2; i++)
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

static char *layer_what(const struct oci_source *src, size_t i)
{
	const struct oci_layer *l = &src->img.layers[i];
	return xasprintf("layer %zu (%s) of %s", i + 1, *l->digest ? l->digest : l->diff_id, src->img.source_ref);
}

/* ======================================================================
 * oci:DIR[:TAG]
 * ====================================================================== */

/* Read a file below |dfd|, refusing anything larger than |max|. */
static int read_at(const char *what, int dfd, const char *path, size_t max, uint8_t **out, size_t *out_len)
{
	int fd = openat(dfd, path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0 && errno == ELOOP) /* blobs may be symlinks in some layouts */
		fd = openat(dfd, path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		log_err("%s: open %s: %s", what, path, strerror(e));
		return -e;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		log_err("%s: %s is not a regular file", what, path);
		close(fd);
		return -EINVAL;
	}
	if ((uint64_t)st.st_size > max) {
		log_err("%s: %s is %lld bytes, more than the %zu expected", what, path, (long long)st.st_size, max);
		close(fd);
		return -EFBIG;
	}
	size_t cap = (size_t)st.st_size, len = 0;
	uint8_t *buf = malloc(cap ? cap : 1);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	while (len < cap) {
		ssize_t r = read(fd, buf + len, cap - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			int e = r < 0 ? errno : EIO;
			log_err("%s: read %s: %s", what, path, r < 0 ? strerror(e) : "file shrank while reading");
			free(buf);
			close(fd);
			return -e;
		}
		len += (size_t)r;
	}
	close(fd);
	*out = buf;
	*out_len = len;
	return 0;
}

static int layout_blob_path(const char *digest, char path[96])
{
	snprintf(path, 96, "blobs/sha256/%s", digest + 7);
	return 0;
}

/* Read and verify a JSON blob; |size| is the declared size, or 0 for "only
 * bounded by OCI_MAX_JSON". */
static int layout_read_json_blob(struct oci_source *src, const char *what, const char *digest, uint64_t size,
				 uint8_t **out, size_t *out_len)
{
	char path[96];
	layout_blob_path(digest, path);
	int r = read_at(what, src->dir_fd, path, size ? (size_t)size : OCI_MAX_JSON, out, out_len);
	if (r < 0)
		return r;
	if (size && *out_len != size) {
		log_err("%s: %s is %zu bytes but its descriptor says %llu", what, path, *out_len,
			(unsigned long long)size);
		r = -EBADMSG;
	} else {
		r = verify_digest(what, *out, *out_len, digest);
	}
	if (r < 0) {
		free(*out);
		*out = NULL;
	}
	return r;
}

static int layout_open(struct oci_source *src, const char *rest)
{
	char *dir = strdup(rest), *tag = NULL;
	if (!dir)
		return -ENOMEM;
	/* "DIR:TAG": the rightmost ':' splits only if no '/' follows it, and
	 * only if DIR:TAG is not itself the directory. */
	char *colon = strrchr(dir, ':');
	struct stat st;
	if (colon && !strchr(colon + 1, '/') && !(stat(dir, &st) == 0 && S_ISDIR(st.st_mode))) {
		*colon = 0;
		tag = colon + 1;
		if (!*tag) {
			log_err("%s: empty tag after ':'", src->img.source_ref);
			free(dir);
			return -EINVAL;
		}
	}
	int r;
	uint8_t *buf = NULL;
	size_t len;
	char what[256], digest[80];
	uint64_t size;
	src->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (src->dir_fd < 0) {
		r = -errno;
		log_err("%s: cannot open layout directory %s: %s", src->img.source_ref, dir, strerror(-r));
		goto out;
	}
	if (faccessat(src->dir_fd, "oci-layout", F_OK, 0) < 0) {
		log_err("%s: %s is not an OCI image layout (no oci-layout file); make one with skopeo copy or umoci",
			src->img.source_ref, dir);
		r = -EINVAL;
		goto out;
	}
	snprintf(what, sizeof(what), "%s: index.json", src->img.source_ref);
	if ((r = read_at(what, src->dir_fd, "index.json", OCI_MAX_JSON, &buf, &len)) < 0)
		goto out;
	r = oci_parse_index(what, buf, len, tag, digest, &size);
	free(buf);
	buf = NULL;
	if (r < 0)
		goto out;
	/* A layout may point at a nested index (a multi-platform image). */
	for (int depth = 0;; depth++) {
		snprintf(what, sizeof(what), "%s: manifest %s", src->img.source_ref, digest);
		if ((r = layout_read_json_blob(src, what, digest, size, &buf, &len)) < 0)
			goto out;
		if (sniff_doc(buf, len, NULL) == DOC_MANIFEST)
			break;
		if (depth == 3) {
			log_err("%s: indexes nested too deeply", what);
			r = -EBADMSG;
			goto out;
		}
		snprintf(what, sizeof(what), "%s: index %s", src->img.source_ref, digest);
		r = oci_parse_index(what, buf, len, NULL, digest, &size);
		free(buf);
		buf = NULL;
		if (r < 0)
			goto out;
	}
	if ((r = oci_parse_manifest(what, buf, len, &src->img)) < 0)
		goto out;
	snprintf(src->img.manifest_digest, sizeof(src->img.manifest_digest), "%s", digest);
	free(buf);
	buf = NULL;
	snprintf(what, sizeof(what), "%s: config %s", src->img.source_ref, src->img.config_digest);
	if ((r = layout_read_json_blob(src, what, src->img.config_digest, 0, &buf, &len)) < 0)
		goto out;
	r = oci_parse_config(what, buf, len, &src->img);
out:
	free(buf);
	free(dir);
	return r;
}

static struct byte_stream *layout_open_layer(struct oci_source *src, size_t i, const char *what)
{
	const struct oci_layer *l = &src->img.layers[i];
	char path[96];
	layout_blob_path(l->digest, path);
	int fd = openat(src->dir_fd, path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		log_err("%s: open %s: %s", what, path, strerror(e));
		errno = e;
		return NULL;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size != l->size) {
		log_err("%s: %s is %lld bytes but the manifest says %llu; the layout is corrupt", what, path,
			(long long)st.st_size, (unsigned long long)l->size);
		close(fd);
		errno = EBADMSG;
		return NULL;
	}
	return blob_stream_open_fd(fd, what, l->digest, l->diff_id, l->size);
}

/* ======================================================================
 * docker-archive:FILE
 *
 * The tar holds manifest.json ([{Config, RepoTags, Layers}]), the config
 * file and one plain tar per layer.  There is no OCI manifest inside, so the
 * image's manifest digest is defined as the sha256 of the manifest.json
 * entry: stable for the same archive, and it changes whenever the set of
 * layers or the config does.  The config digest is the sha256 of the config
 * bytes.  Layers are checked against the config's diff_ids, and against
 * their file name when the name is a digest (<hex>.tar, blobs/sha256/<hex>).
 * ====================================================================== */

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
static int archive_scan(struct oci_source *src, const char *cfg_name, uint8_t **cfg_buf, size_t *cfg_len,
			bool *resolved, bool *progress)
{
	struct archive *a;
	struct archive_entry *e;
	int r = archive_begin(src->archive_path, src->img.source_ref, &a), ar;
	if (r < 0)
		return r;
	while ((ar = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
		const char *name = entry_name(e);
		if (!*cfg_buf && strcmp(name, cfg_name) == 0 && archive_entry_filetype(e) == AE_IFREG) {
			char what[512];
			snprintf(what, sizeof(what), "%s: %s", src->img.source_ref, name);
			if ((r = archive_read_entry(a, e, what, OCI_MAX_JSON, cfg_buf, cfg_len)) < 0)
				goto out;
			*progress = true;
			continue;
		}
		for (size_t i = 0; i < src->img.n_layers; i++) {
			if (resolved[i] || strcmp(name, src->layer_names[i]) != 0)
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
				free(src->layer_names[i]);
				src->layer_names[i] = t;
				*progress = true;
			} else if (archive_entry_filetype(e) == AE_IFREG) {
				int64_t sz = archive_entry_size(e);
				if (sz < 0 || (uint64_t)sz > OCI_MAX_BLOB) {
					log_err("%s: %s: absurd size %lld", src->img.source_ref, name, (long long)sz);
					r = -EBADMSG;
					goto out;
				}
				src->img.layers[i].size = (uint64_t)sz;
				resolved[i] = true;
				*progress = true;
			}
		}
	}
	if (ar != ARCHIVE_EOF) {
		log_err("%s: reading the tar: %s (is this a docker-archive tar?)", src->img.source_ref,
			archive_error_string(a));
		r = -EBADMSG;
	}
out:
	archive_read_free(a);
	return r;
}

static int archive_open(struct oci_source *src, const char *path)
{
	char what[512], *cfg_name = NULL;
	uint8_t *mbuf = NULL, *cbuf = NULL;
	size_t mlen = 0, clen = 0;
	bool *resolved = NULL;
	struct archive *a = NULL;
	struct archive_entry *e;
	int r, ar;
	if (!(src->archive_path = strdup(path)))
		return -ENOMEM;
	if ((r = archive_begin(path, src->img.source_ref, &a)) < 0)
		return r;
	while ((ar = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
		if (strcmp(entry_name(e), "manifest.json") == 0) {
			snprintf(what, sizeof(what), "%s: manifest.json", src->img.source_ref);
			if ((r = archive_read_entry(a, e, what, OCI_MAX_JSON, &mbuf, &mlen)) < 0)
				goto out;
			break;
		}
	}
	if (!mbuf) {
		log_err("%s: %s", src->img.source_ref,
			ar == ARCHIVE_OK || ar == ARCHIVE_EOF ? "no manifest.json in the archive (is this a docker save / "
								"skopeo docker-archive tar?)"
							      : archive_error_string(a));
		r = -EBADMSG;
		goto out;
	}
	archive_read_free(a);
	a = NULL;
	snprintf(what, sizeof(what), "%s: manifest.json", src->img.source_ref);
	if ((r = parse_docker_manifest(what, mbuf, mlen, &cfg_name, &src->layer_names, &src->img.n_layers)) < 0)
		goto out;
	sha256_digest_str(mbuf, mlen, src->img.manifest_digest);

	size_t n = src->img.n_layers;
	src->img.layers = calloc(n ? n : 1, sizeof(*src->img.layers));
	resolved = calloc(n ? n : 1, sizeof(*resolved));
	if (!src->img.layers || !resolved) {
		r = -ENOMEM;
		goto out;
	}
	/* Links may point forwards or backwards; a few passes settle them. */
	for (int pass = 0;; pass++) {
		bool progress = false, all = cbuf != NULL;
		if ((r = archive_scan(src, cfg_name, &cbuf, &clen, resolved, &progress)) < 0)
			goto out;
		for (size_t i = 0; i < n; i++)
			all &= resolved[i];
		if (all)
			break;
		if (!progress || pass == 4) {
			for (size_t i = 0; i < n; i++)
				if (!resolved[i]) {
					log_err("%s: layer %zu: %s is not in the archive (or is a dangling link)",
						src->img.source_ref, i + 1, src->layer_names[i]);
					r = -EBADMSG;
					goto out;
				}
			log_err("%s: config %s is not in the archive", src->img.source_ref, cfg_name);
			r = -EBADMSG;
			goto out;
		}
	}
	for (size_t i = 0; i < n; i++) {
		struct oci_layer *l = &src->img.layers[i];
		snprintf(l->media_type, sizeof(l->media_type), "application/vnd.docker.image.rootfs.diff.tar");
		if (!name_digest(src->layer_names[i], ".tar", l->digest))
			l->digest[0] = 0;
	}
	sha256_digest_str(cbuf, clen, src->img.config_digest);
	char named[80];
	if (name_digest(cfg_name, ".json", named) && strcmp(named, src->img.config_digest) != 0) {
		log_err("%s: config %s: digest mismatch: expected %s, got %s (corrupt or tampered archive)",
			src->img.source_ref, cfg_name, named, src->img.config_digest);
		r = -EBADMSG;
		goto out;
	}
	snprintf(what, sizeof(what), "%s: config %s", src->img.source_ref, cfg_name);
	r = oci_parse_config(what, cbuf, clen, &src->img);
out:
	if (a)
		archive_read_free(a);
	free(resolved);
	free(cfg_name);
	free(mbuf);
	free(cbuf);
	return r;
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

static struct byte_stream *archive_open_layer(struct oci_source *src, size_t i, const char *what)
{
	const struct oci_layer *l = &src->img.layers[i];
	struct archive *a;
	struct archive_entry *e;
	int r = archive_begin(src->archive_path, what, &a), ar;
	if (r < 0) {
		errno = -r;
		return NULL;
	}
	while ((ar = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
		if (archive_entry_filetype(e) == AE_IFREG && !archive_entry_hardlink(e) &&
		    strcmp(entry_name(e), src->layer_names[i]) == 0)
			break;
	}
	if (ar != ARCHIVE_OK) {
		log_err("%s: %s not found in %s: %s", what, src->layer_names[i], src->archive_path,
			ar == ARCHIVE_EOF ? "the archive changed since it was opened" : archive_error_string(a));
		archive_read_free(a);
		errno = EBADMSG;
		return NULL;
	}
	if ((uint64_t)archive_entry_size(e) != l->size) {
		log_err("%s: entry size changed since the archive was opened", what);
		archive_read_free(a);
		errno = EBADMSG;
		return NULL;
	}
	struct archive_stream *as = calloc(1, sizeof(*as));
	if (!as || !(as->what = strdup(what))) {
		free(as);
		archive_read_free(a);
		errno = ENOMEM;
		return NULL;
	}
	as->a = a;
	as->pub.read = archive_stream_read;
	as->pub.close = archive_stream_close;
	as->pub.what = as->what;
	return blob_stream_wrap(&as->pub, what, *l->digest ? l->digest : NULL, l->diff_id, l->size);
}

/* ======================================================================
 * docker://HOST[:PORT]/REPO[:TAG|@DIGEST]  (OCI distribution API v2)
 * ====================================================================== */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;
static void curl_init_once(void) { curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

#define MANIFEST_ACCEPT                                                                                        \
	"Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "           \
	"application/vnd.docker.distribution.manifest.v2+json, "                                                \
	"application/vnd.docker.distribution.manifest.list.v2+json"
#define ERROR_BODY_MAX (64u << 10)

/* Loopback registries (tests, local caches) may speak plain http. */
static bool host_is_loopback(const char *hostport)
{
	char h[256];
	const char *end;
	if (hostport[0] == '[') {
		end = strchr(hostport, ']');
		if (!end)
			return false;
		snprintf(h, sizeof(h), "%.*s", (int)(end - hostport - 1), hostport + 1);
	} else {
		end = strchr(hostport, ':');
		snprintf(h, sizeof(h), "%.*s", end ? (int)(end - hostport) : (int)strlen(hostport), hostport);
	}
	if (strcasecmp(h, "localhost") == 0)
		return true;
	struct in_addr a4;
	struct in6_addr a6;
	if (inet_pton(AF_INET, h, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	if (inet_pton(AF_INET6, h, &a6) == 1)
		return IN6_IS_ADDR_LOOPBACK(&a6);
	return false;
}

static bool valid_repo(const char *r)
{
	if (!*r || strlen(r) > 255)
		return false;
	for (const char *p = r; *p; p++)
		if (!(islower((unsigned char)*p) || isdigit((unsigned char)*p) || strchr("._-/", *p)))
			return false;
	return r[0] != '/' && r[strlen(r) - 1] != '/' && !strstr(r, "//");
}

static bool valid_tag(const char *t)
{
	size_t n = strlen(t);
	if (n == 0 || n > 128 || t[0] == '.' || t[0] == '-')
		return false;
	for (const char *p = t; *p; p++)
		if (!(isalnum((unsigned char)*p) || strchr("_.-", *p)))
			return false;
	return true;
}

struct http_resp {
	long status;
	char content_type[256];
	char docker_digest[80];
	char www_auth[1024];
	/* body sinks: memory (buf) or a file (fd >= 0) */
	int fd;
	uint8_t *buf;
	size_t len, cap, max;
	bool too_big;
	int write_err;
	uint8_t *err_body;
	size_t err_len;
	CURL *curl;
};

static void copy_header_value(char *dst, size_t cap, const char *v, size_t n)
{
	while (n && (*v == ' ' || *v == '\t')) {
		v++;
		n--;
	}
	while (n && (v[n - 1] == '\r' || v[n - 1] == '\n' || v[n - 1] == ' '))
		n--;
	snprintf(dst, cap, "%.*s", (int)(n < cap ? n : cap - 1), v);
}

static size_t on_header(char *p, size_t size, size_t nmemb, void *arg)
{
	struct http_resp *h = arg;
	size_t n = size * nmemb;
	/* Each response of a redirect or auth exchange starts afresh. */
	if (n >= 5 && strncmp(p, "HTTP/", 5) == 0) {
		h->content_type[0] = h->docker_digest[0] = h->www_auth[0] = 0;
		return n;
	}
	static const struct {
		const char *name;
		size_t off, cap;
	} want[] = {
		{"content-type:", offsetof(struct http_resp, content_type), sizeof(((struct http_resp *)0)->content_type)},
		{"docker-content-digest:", offsetof(struct http_resp, docker_digest),
		 sizeof(((struct http_resp *)0)->docker_digest)},
		{"www-authenticate:", offsetof(struct http_resp, www_auth), sizeof(((struct http_resp *)0)->www_auth)},
	};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		size_t l = strlen(want[i].name);
		if (n >= l && strncasecmp(p, want[i].name, l) == 0)
			copy_header_value((char *)h + want[i].off, want[i].cap, p + l, n - l);
	}
	return n;
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *arg)
{
	struct http_resp *h = arg;
	size_t n = size * nmemb;
	long code = 0;
	curl_easy_getinfo(h->curl, CURLINFO_RESPONSE_CODE, &code);
	if (code < 200 || code >= 300) {
		/* Error bodies only feed the message; keep a bounded prefix. */
		size_t room = ERROR_BODY_MAX - h->err_len, k = n < room ? n : room;
		if (k) {
			uint8_t *nb = realloc(h->err_body, h->err_len + k + 1);
			if (nb) {
				memcpy(nb + h->err_len, p, k);
				h->err_len += k;
				nb[h->err_len] = 0;
				h->err_body = nb;
			}
		}
		return n;
	}
	size_t total;
	if (!ck_add_size(h->len, n, &total) || total > h->max) {
		h->too_big = true;
		return 0; /* aborts the transfer */
	}
	if (h->fd >= 0) {
		size_t off = 0;
		while (off < n) {
			ssize_t w = write(h->fd, p + off, n - off);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0) {
				h->write_err = w < 0 ? errno : EIO;
				return 0;
			}
			off += (size_t)w;
		}
	} else {
		if (total > h->cap) {
			size_t nc = h->cap ? h->cap : 16384;
			while (nc < total)
				nc = nc > h->max / 2 ? h->max : nc * 2;
			uint8_t *nb = realloc(h->buf, nc);
			if (!nb) {
				h->write_err = ENOMEM;
				return 0;
			}
			h->buf = nb;
			h->cap = nc;
		}
		memcpy(h->buf + h->len, p, n);
	}
	h->len = total;
	return n;
}

/* The registry's error, "404 MANIFEST_UNKNOWN: manifest unknown", from its
 * JSON error body when it has one. */
static void describe_status(const struct http_resp *h, char *out, size_t cap)
{
	int n = snprintf(out, cap, "%ld", h->status);
	json_t *root = h->err_body ? json_loadb((const char *)h->err_body, h->err_len, 0, NULL) : NULL;
	json_t *errs = json_object_get(root, "errors"), *e0 = json_array_get(errs, 0);
	json_t *code = json_object_get(e0, "code"), *msg = json_object_get(e0, "message");
	if (n > 0 && (size_t)n < cap && json_is_string(code))
		snprintf(out + n, cap - (size_t)n, " %.64s%s%.160s", json_string_value(code),
			 json_is_string(msg) ? ": " : "", json_is_string(msg) ? json_string_value(msg) : "");
	json_decref(root);
}

/* Parse `Bearer realm="..",service="..",scope=".."` (or Basic) into its
 * scheme and parameters. */
static void parse_challenge(const char *v, char *scheme, size_t scap, char *realm, char *service, char *scope,
			    size_t cap)
{
	realm[0] = service[0] = scope[0] = 0;
	size_t i = 0;
	while (*v && *v != ' ' && i + 1 < scap)
		scheme[i++] = *v++;
	scheme[i] = 0;
	while (*v) {
		while (*v == ' ' || *v == ',')
			v++;
		const char *k = v;
		while (*v && *v != '=' && *v != ',')
			v++;
		size_t kl = (size_t)(v - k);
		if (*v != '=')
			continue;
		v++;
		char val[1024];
		size_t vl = 0;
		if (*v == '"') {
			v++;
			while (*v && *v != '"') {
				if (*v == '\\' && v[1])
					v++;
				if (vl + 1 < sizeof(val))
					val[vl++] = *v;
				v++;
			}
			if (*v == '"')
				v++;
		} else {
			while (*v && *v != ',' && *v != ' ') {
				if (vl + 1 < sizeof(val))
					val[vl++] = *v;
				v++;
			}
		}
		val[vl] = 0;
		char *dst = NULL;
		if (kl == 5 && strncasecmp(k, "realm", 5) == 0)
			dst = realm;
		else if (kl == 7 && strncasecmp(k, "service", 7) == 0)
			dst = service;
		else if (kl == 5 && strncasecmp(k, "scope", 5) == 0)
			dst = scope;
		if (dst)
			snprintf(dst, cap, "%s", val);
	}
}

/* One HTTP GET with the registry's current credentials. */
static int http_get_once(struct registry *reg, const char *url, const char *accept, bool send_auth,
			 struct http_resp *h)
{
	CURL *c = reg->curl;
	char errbuf[CURL_ERROR_SIZE] = "";
	struct curl_slist *hdrs = NULL, *t;
	curl_easy_reset(c);
	h->curl = c;
	if (accept && (t = curl_slist_append(hdrs, accept)))
		hdrs = t;
	if (send_auth && reg->bearer && (t = curl_slist_append(hdrs, reg->bearer)))
		hdrs = t;
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "kindling-chunkify/1");
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
	curl_easy_setopt(c, CURLOPT_MAXREDIRS, 5L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	/* Blob redirects (to object stores) must not downgrade to http. */
	curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, reg->plain_http_ok ? "http,https" : "https");
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 30L);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, h);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, h);
	if (send_auth && reg->use_basic && reg->user) {
		curl_easy_setopt(c, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
		curl_easy_setopt(c, CURLOPT_USERNAME, reg->user);
		curl_easy_setopt(c, CURLOPT_PASSWORD, reg->pass ? reg->pass : "");
	}
	CURLcode cr = curl_easy_perform(c);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &h->status);
	curl_slist_free_all(hdrs);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, NULL);
	if (h->too_big)
		return -EFBIG;
	if (h->write_err)
		return -h->write_err;
	if (cr != CURLE_OK) {
		log_err("registry %s: GET %s: %s (is the registry running and reachable?)", reg->host, url,
			*errbuf ? errbuf : curl_easy_strerror(cr));
		return -EIO;
	}
	return 0;
}

static void resp_reset(struct http_resp *h)
{
	free(h->err_body);
	h->err_body = NULL;
	h->err_len = 0;
	h->len = 0;
	h->too_big = false;
	h->write_err = 0;
	h->status = 0;
	if (h->fd >= 0) {
		if (ftruncate(h->fd, 0) < 0 || lseek(h->fd, 0, SEEK_SET) < 0)
			h->write_err = errno;
	}
}

/* Fetch a bearer token as the challenge asks, with basic credentials if we
 * have them. */
static int fetch_token(struct registry *reg, const char *realm, const char *service, const char *scope)
{
	if (strncmp(realm, "https://", 8) != 0) {
		const char *hp = realm + 7;
		char host[256];
		size_t hl = strcspn(hp, "/?#");
		snprintf(host, sizeof(host), "%.*s", (int)(hl < sizeof(host) ? hl : sizeof(host) - 1), hp);
		if (strncmp(realm, "http://", 7) != 0 || (!reg->plain_http_ok && !host_is_loopback(host))) {
			log_err("registry %s: refusing token realm '%.200s' (not https; use --insecure to allow)",
				reg->host, realm);
			return -EACCES;
		}
	}
	char *esc_service = curl_easy_escape(reg->curl, service, 0);
	char *esc_scope = curl_easy_escape(reg->curl, scope, 0);
	char *url = NULL;
	if (esc_service && esc_scope)
		url = xasprintf("%s%cservice=%s&scope=%s", realm, strchr(realm, '?') ? '&' : '?', esc_service,
				esc_scope);
	curl_free(esc_service);
	curl_free(esc_scope);
	if (!url)
		return -ENOMEM;
	struct http_resp h = {.fd = -1, .max = 1u << 20};
	bool basic = reg->use_basic;
	reg->use_basic = reg->user != NULL;
	int r = http_get_once(reg, url, NULL, true, &h);
	reg->use_basic = basic;
	if (r == -EFBIG)
		log_err("registry %s: token reply from %s is too large", reg->host, realm);
	if (r < 0)
		goto out;
	if (h.status != 200) {
		char st[256];
		describe_status(&h, st, sizeof(st));
		log_err("registry %s: token server %s refused: %s%s", reg->host, realm, st,
			reg->user ? " (check KINDLING_REGISTRY_USER / KINDLING_REGISTRY_PASSWORD)"
				  : " (credentials may be needed: set KINDLING_REGISTRY_USER / KINDLING_REGISTRY_PASSWORD)");
		r = h.status == 401 || h.status == 403 ? -EACCES : -EIO;
		goto out;
	}
	json_t *root = json_loadb((const char *)h.buf, h.len, 0, NULL);
	json_t *tok = json_object_get(root, "token");
	if (!json_is_string(tok) || !json_string_length(tok))
		tok = json_object_get(root, "access_token");
	const char *ts = json_is_string(tok) ? json_string_value(tok) : NULL;
	bool ok = ts && *ts && strlen(ts) == json_string_length(tok) && strlen(ts) < 16384;
	for (const char *p = ts; ok && *p; p++)
		ok = *p > ' ' && *p < 127; /* no header injection */
	if (!ok) {
		log_err("registry %s: token server %s sent no usable \"token\" or \"access_token\"", reg->host, realm);
		r = -EBADMSG;
	} else {
		free(reg->bearer);
		reg->bearer = xasprintf("Authorization: Bearer %s", ts);
		r = reg->bearer ? 0 : -ENOMEM;
	}
	json_decref(root);
out:
	free(url);
	free(h.buf);
	free(h.err_body);
	return r;
}

/* GET |path| below the registry's /v2/, authenticating when challenged.
 * The body goes to |h| (memory or fd) bounded by h->max.  |what| names the
 * object for messages.  Returns 0 on a 2xx, or -errno (logged). */
static int registry_get(struct registry *reg, const char *what, const char *path, const char *accept,
			struct http_resp *h)
{
	char *url = xasprintf("%s/v2/%s", reg->base, path);
	if (!url)
		return -ENOMEM;
	int r = 0;
	bool tried_bearer = false, tried_basic = false;
	for (int attempt = 0;; attempt++) {
		resp_reset(h);
		if (h->write_err) {
			r = -h->write_err;
			break;
		}
		r = http_get_once(reg, url, accept, true, h);
		if (r == -EFBIG)
			log_err("registry %s: %s: the response is larger than the %zu bytes expected", reg->host, what,
				h->max);
		else if (r < 0 && h->write_err)
			log_err("registry %s: %s: writing the download: %s", reg->host, what, strerror(h->write_err));
		if (r < 0)
			break;
		if (h->status >= 200 && h->status < 300)
			break;
		if (h->status == 401 && attempt < 3) {
			char scheme[32], realm[1024], service[1024], scope[1024];
			parse_challenge(h->www_auth, scheme, sizeof(scheme), realm, service, scope, sizeof(realm));
			if (strcasecmp(scheme, "Bearer") == 0 && *realm && !tried_bearer) {
				if (!*scope)
					snprintf(scope, sizeof(scope), "repository:%s:pull", reg->repo);
				tried_bearer = true;
				if ((r = fetch_token(reg, realm, service, scope)) < 0)
					break;
				continue;
			}
			if (strcasecmp(scheme, "Basic") == 0 && reg->user && !tried_basic) {
				tried_basic = true;
				reg->use_basic = true;
				continue;
			}
		}
		char st[256];
		describe_status(h, st, sizeof(st));
		const char *hint = "";
		if (h->status == 401)
			hint = reg->user ? " (credentials rejected; check KINDLING_REGISTRY_USER / KINDLING_REGISTRY_PASSWORD)"
					 : " (authentication required: set KINDLING_REGISTRY_USER and "
					   "KINDLING_REGISTRY_PASSWORD)";
		log_err("registry %s: %s: %s%s", reg->host, what, st, hint);
		r = h->status == 404 ? -ENOENT : (h->status == 401 || h->status == 403) ? -EACCES : -EIO;
		break;
	}
	free(url);
	return r;
}

static int registry_parse_spec(struct registry *reg, const char *spec, const char *rest)
{
	const char *slash = strchr(rest, '/');
	if (!slash || slash == rest || !slash[1]) {
		log_err("%s: expected docker://HOST[:PORT]/REPO[:TAG|@DIGEST]", spec);
		return -EINVAL;
	}
	reg->host = strndup(rest, (size_t)(slash - rest));
	char *repo = strdup(slash + 1);
	if (!reg->host || !repo) {
		free(repo);
		return -ENOMEM;
	}
	char *at = strchr(repo, '@'), *ref = NULL;
	if (at) {
		*at = 0;
		ref = at + 1;
		if (strncmp(ref, "sha256:", 7) != 0 || !is_sha256_hex(ref + 7)) {
			log_err("%s: '%s' is not a sha256 digest", spec, ref);
			free(repo);
			return -EINVAL;
		}
		reg->ref_is_digest = true;
	} else {
		char *colon = strrchr(repo, ':');
		if (colon && !strchr(colon, '/')) {
			*colon = 0;
			ref = colon + 1;
		}
		if (ref && !valid_tag(ref)) {
			log_err("%s: '%s' is not a valid tag", spec, ref);
			free(repo);
			return -EINVAL;
		}
	}
	if (!valid_repo(repo)) {
		log_err("%s: '%s' is not a valid repository name (lower-case letters, digits, . _ - /)", spec, repo);
		free(repo);
		return -EINVAL;
	}
	/* Docker Hub's registry lives elsewhere and puts official images under
	 * library/. */
	if (strcmp(reg->host, "docker.io") == 0) {
		free(reg->host);
		reg->host = strdup("registry-1.docker.io");
	}
	if (strcmp(reg->host ? reg->host : "", "registry-1.docker.io") == 0 && !strchr(repo, '/'))
		reg->repo = xasprintf("library/%s", repo);
	else
		reg->repo = strdup(repo);
	reg->ref = strdup(ref ? ref : "latest");
	free(repo);
	return reg->host && reg->repo && reg->ref ? 0 : -ENOMEM;
}

static int registry_fetch_doc(struct registry *reg, const char *what, const char *ref, size_t max,
			      struct http_resp *h)
{
	char *path = xasprintf("%s/manifests/%s", reg->repo, ref);
	if (!path)
		return -ENOMEM;
	*h = (struct http_resp){.fd = -1, .max = max};
	int r = registry_get(reg, what, path, MANIFEST_ACCEPT, h);
	free(path);
	return r;
}

static int registry_open(struct oci_source *src, const char *rest, const struct oci_source_options *opt)
{
	struct registry *reg = &src->reg;
	int r;
	pthread_once(&curl_once, curl_init_once);
	if (curl_init_rc != CURLE_OK) {
		log_err("libcurl init failed: %s", curl_easy_strerror(curl_init_rc));
		return -EIO;
	}
	if (pthread_mutex_init(&reg->lock, NULL) != 0)
		return -ENOMEM;
	src->reg_init = true;
	if ((r = registry_parse_spec(reg, src->img.source_ref, rest)) < 0)
		return r;
	bool loop = host_is_loopback(reg->host), insecure = opt && opt->insecure;
	reg->plain_http_ok = loop || insecure;
	reg->base = xasprintf("%s://%s", reg->plain_http_ok ? "http" : "https", reg->host);
	const char *u = opt && opt->username ? opt->username : getenv("KINDLING_REGISTRY_USER");
	const char *p = opt && opt->username ? opt->password : getenv("KINDLING_REGISTRY_PASSWORD");
	if (u && *u) {
		reg->user = strdup(u);
		reg->pass = strdup(p ? p : "");
		if (!reg->user || !reg->pass)
			return -ENOMEM;
	}
	const char *td = opt && opt->tmp_dir ? opt->tmp_dir : getenv("TMPDIR");
	reg->tmp_dir = strdup(td && *td ? td : "/tmp");
	reg->curl = curl_easy_init();
	if (!reg->base || !reg->tmp_dir || !reg->curl)
		return -ENOMEM;

	char what[512], digest[80];
	struct http_resp h = {.fd = -1};
	const char *ref = reg->ref;
	uint64_t size = OCI_MAX_JSON;
	snprintf(digest, sizeof(digest), "%s", reg->ref_is_digest ? reg->ref : "");
	for (int depth = 0;; depth++) {
		snprintf(what, sizeof(what), "manifest for %s%c%s", reg->repo, strncmp(ref, "sha256:", 7) ? ':' : '@',
			 ref);
		if ((r = registry_fetch_doc(reg, what, ref, (size_t)size, &h)) < 0)
			goto out;
		char got[80];
		sha256_digest_str(h.buf, h.len, got);
		char full_what[600];
		snprintf(full_what, sizeof(full_what), "registry %s: %s", reg->host, what);
		if (*digest && strcmp(got, digest) != 0) {
			log_err("%s: digest mismatch: expected %s, got %s", full_what, digest, got);
			r = -EBADMSG;
			goto out;
		}
		if (!*digest && strncmp(h.docker_digest, "sha256:", 7) == 0 && strcmp(h.docker_digest, got) != 0) {
			log_err("%s: digest mismatch: Docker-Content-Digest says %s, content hashes to %s", full_what,
				h.docker_digest, got);
			r = -EBADMSG;
			goto out;
		}
		if (sniff_doc(h.buf, h.len, h.content_type) == DOC_MANIFEST) {
			if ((r = oci_parse_manifest(full_what, h.buf, h.len, &src->img)) < 0)
				goto out;
			snprintf(src->img.manifest_digest, sizeof(src->img.manifest_digest), "%s", got);
			break;
		}
		if (depth == 2) {
			log_err("%s: indexes nested too deeply", full_what);
			r = -EBADMSG;
			goto out;
		}
		if ((r = oci_parse_index(full_what, h.buf, h.len, NULL, digest, &size)) < 0)
			goto out;
		free(h.buf);
		free(h.err_body);
		h = (struct http_resp){.fd = -1};
		ref = digest;
	}
	free(h.buf);
	free(h.err_body);
	h = (struct http_resp){.fd = -1, .max = OCI_MAX_JSON};
	snprintf(what, sizeof(what), "config %s of %s", src->img.config_digest, reg->repo);
	char *path = xasprintf("%s/blobs/%s", reg->repo, src->img.config_digest);
	if (!path) {
		r = -ENOMEM;
		goto out;
	}
	r = registry_get(reg, what, path, NULL, &h);
	free(path);
	if (r < 0)
		goto out;
	char full_what[600];
	snprintf(full_what, sizeof(full_what), "registry %s: %s", reg->host, what);
	if ((r = verify_digest(full_what, h.buf, h.len, src->img.config_digest)) < 0)
		goto out;
	r = oci_parse_config(full_what, h.buf, h.len, &src->img);
out:
	free(h.buf);
	free(h.err_body);
	return r;
}

/* A file for one downloaded blob that disappears by itself: O_TMPFILE where
 * the filesystem has it, else a name unlinked at once. */
static int open_tmp_blob(const char *dir)
{
	int fd = open(dir, O_TMPFILE | O_RDWR | O_EXCL | O_CLOEXEC, 0600);
	if (fd >= 0)
		return fd;
	char *path = xasprintf("%s/.tmp-kindling-blob-XXXXXX", dir);
	if (!path)
		return -1;
	fd = mkostemp(path, O_CLOEXEC);
	if (fd >= 0)
		unlink(path);
	int e = errno;
	free(path);
	errno = e;
	return fd;
}

static struct byte_stream *registry_open_layer(struct oci_source *src, size_t i, const char *what)
{
	struct registry *reg = &src->reg;
	const struct oci_layer *l = &src->img.layers[i];
	int fd = open_tmp_blob(reg->tmp_dir);
	if (fd < 0) {
		int e = errno;
		log_err("%s: cannot create a temporary file in %s: %s (set TMPDIR to a writable directory)", what,
			reg->tmp_dir, strerror(e));
		errno = e;
		return NULL;
	}
	char *path = xasprintf("%s/blobs/%s", reg->repo, l->digest);
	char *msg = xasprintf("blob %s (%s)", l->digest, what);
	struct http_resp h = {.fd = fd, .max = (size_t)l->size};
	int r = path && msg ? 0 : -ENOMEM;
	if (!r) {
		pthread_mutex_lock(&reg->lock);
		r = registry_get(reg, msg, path, NULL, &h);
		pthread_mutex_unlock(&reg->lock);
	}
	if (!r && h.len != l->size) {
		log_err("registry %s: %s: got %zu bytes, the manifest says %llu", reg->host, msg, h.len,
			(unsigned long long)l->size);
		r = -EBADMSG;
	}
	if (!r && lseek(fd, 0, SEEK_SET) < 0)
		r = -errno;
	free(path);
	free(msg);
	free(h.err_body);
	if (r < 0) {
		close(fd);
		errno = -r;
		return NULL;
	}
	return blob_stream_open_fd(fd, what, l->digest, l->diff_id, l->size);
}

static void registry_cleanup(struct registry *reg)
{
	if (reg->curl)
		curl_easy_cleanup(reg->curl);
	free(reg->host);
	free(reg->base);
	free(reg->repo);
	free(reg->ref);
	free(reg->user);
	if (reg->pass)
		explicit_bzero(reg->pass, strlen(reg->pass));
	free(reg->pass);
	if (reg->bearer)
		explicit_bzero(reg->bearer, strlen(reg->bearer));
	free(reg->bearer);
	free(reg->tmp_dir);
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
	src->dir_fd = -1;
	if (!(src->img.source_ref = strdup(spec))) {
		free(src);
		return -ENOMEM;
	}
	int r;
	if (strncmp(spec, "oci:", 4) == 0 && spec[4]) {
		src->kind = SRC_LAYOUT;
		r = layout_open(src, spec + 4);
	} else if (strncmp(spec, "docker-archive:", 15) == 0 && spec[15]) {
		src->kind = SRC_ARCHIVE;
		r = archive_open(src, spec + 15);
	} else if (strncmp(spec, "docker://", 9) == 0) {
		src->kind = SRC_REGISTRY;
		r = registry_open(src, spec + 9, opt);
	} else {
		log_err("%s: unknown image source; use oci:DIR[:TAG], docker-archive:FILE or "
			"docker://HOST[:PORT]/REPO[:TAG|@DIGEST]",
			spec);
		r = -EINVAL;
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
	struct byte_stream *s = NULL;
	switch (src->kind) {
	case SRC_LAYOUT:
		s = layout_open_layer(src, i, what);
		break;
	case SRC_ARCHIVE:
		s = archive_open_layer(src, i, what);
		break;
	case SRC_REGISTRY:
		s = registry_open_layer(src, i, what);
		break;
	}
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
	if (src->dir_fd >= 0)
		close(src->dir_fd);
	free(src->archive_path);
	if (src->layer_names) {
		for (size_t i = 0; src->layer_names[i]; i++)
			free(src->layer_names[i]);
		free(src->layer_names);
	}
	registry_cleanup(&src->reg);
	if (src->reg_init)
		pthread_mutex_destroy(&src->reg.lock);
	oci_image_cleanup(&src->img);
	free(src);
}
