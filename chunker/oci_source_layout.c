/* OCI image source: oci:DIR[:TAG], an OCI image layout directory.
 *
 * index.json names the image (by its org.opencontainers.image.ref.name tag
 * when there are several); every other document and every layer is a blob
 * at blobs/sha256/<hex>, read through a descriptor of DIR.  oci_source.c
 * walks from the manifest index.json names to the config.
 */
#include "oci_source_ops.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct layout {
	int dir_fd;
	const char *spec; /* the image's source_ref, for messages */
};

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

/* |digest| is a checked "sha256:<64 hex>" (the JSON parsers see to it). */
static void blob_path(const char *digest, char path[96])
{
	snprintf(path, 96, "blobs/sha256/%s", digest + 7);
}

/* The manifest or index |digest| (|ref| is the same digest), exactly |size|
 * bytes unless |size| is 0 ("only bounded by OCI_MAX_JSON"). */
static int layout_fetch_manifest(void *state, const char *ref, const char *digest, uint64_t size,
				 struct oci_doc *out)
{
	struct layout *lo = state;
	(void)ref;
	snprintf(out->what, sizeof(out->what), "%s: manifest %s", lo->spec, digest);
	snprintf(out->index_what, sizeof(out->index_what), "%s: index %s", lo->spec, digest);
	char path[96];
	blob_path(digest, path);
	int r = read_at(out->what, lo->dir_fd, path, size ? (size_t)size : OCI_MAX_JSON, &out->buf, &out->len);
	if (r < 0)
		return r;
	if (size && out->len != size) {
		log_err("%s: %s is %zu bytes but its descriptor says %llu", out->what, path, out->len,
			(unsigned long long)size);
		return -EBADMSG;
	}
	if ((r = oci_verify_digest(out->what, out->buf, out->len, digest)) < 0)
		return r;
	snprintf(out->digest, sizeof(out->digest), "%s", digest);
	return 0;
}

static int layout_fetch_config(void *state, const char *digest, struct oci_doc *out)
{
	struct layout *lo = state;
	snprintf(out->what, sizeof(out->what), "%s: config %s", lo->spec, digest);
	char path[96];
	blob_path(digest, path);
	return read_at(out->what, lo->dir_fd, path, OCI_MAX_JSON, &out->buf, &out->len);
}

static void layout_close(void *state)
{
	struct layout *lo = state;
	if (lo->dir_fd >= 0)
		close(lo->dir_fd);
	free(lo);
}

/* Open DIR and pick the manifest index.json names (by |tag| when given). */
static int layout_setup(struct layout *lo, const char *dir, const char *tag, struct oci_root *root)
{
	lo->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (lo->dir_fd < 0) {
		int e = errno;
		log_err("%s: cannot open layout directory %s: %s", lo->spec, dir, strerror(e));
		return -e;
	}
	if (faccessat(lo->dir_fd, "oci-layout", F_OK, 0) < 0) {
		log_err("%s: %s is not an OCI image layout (no oci-layout file); make one with skopeo copy or umoci",
			lo->spec, dir);
		return -EINVAL;
	}
	char what[256];
	uint8_t *buf;
	size_t len;
	snprintf(what, sizeof(what), "%s: index.json", lo->spec);
	int r = read_at(what, lo->dir_fd, "index.json", OCI_MAX_JSON, &buf, &len);
	if (r < 0)
		return r;
	/* The digest it names may be a nested index (a multi-platform image);
	 * oci_source.c follows it. */
	r = oci_parse_index(what, buf, len, tag, root->digest, &root->size);
	free(buf);
	if (r == 0)
		snprintf(root->ref, sizeof(root->ref), "%s", root->digest);
	return r;
}

static int layout_open(const char *rest, const struct oci_source_options *opt, struct oci_image *img,
		       void **out_state, struct oci_root *root)
{
	(void)opt;
	char *dir = strdup(rest), *tag = NULL;
	struct layout *lo = calloc(1, sizeof(*lo));
	if (!dir || !lo) {
		free(dir);
		free(lo);
		return -ENOMEM;
	}
	lo->dir_fd = -1;
	lo->spec = img->source_ref;
	/* "DIR:TAG": the rightmost ':' splits only if no '/' follows it, and
	 * only if DIR:TAG is not itself the directory. */
	char *colon = strrchr(dir, ':');
	struct stat st;
	int r = 0;
	if (colon && !strchr(colon + 1, '/') && !(stat(dir, &st) == 0 && S_ISDIR(st.st_mode))) {
		*colon = 0;
		tag = colon + 1;
		if (!*tag) {
			log_err("%s: empty tag after ':'", lo->spec);
			r = -EINVAL;
		}
	}
	if (r == 0)
		r = layout_setup(lo, dir, tag, root);
	free(dir);
	if (r < 0) {
		layout_close(lo);
		return r;
	}
	*out_state = lo;
	return 0;
}

static int layout_open_layer(void *state, const struct oci_image *img, size_t i, const char *what, int *out_fd,
			     struct byte_stream **out_raw)
{
	struct layout *lo = state;
	const struct oci_layer *l = &img->layers[i];
	(void)out_raw;
	char path[96];
	blob_path(l->digest, path);
	int fd = openat(lo->dir_fd, path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		log_err("%s: open %s: %s", what, path, strerror(e));
		return -e;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size != l->size) {
		log_err("%s: %s is %lld bytes but the manifest says %llu; the layout is corrupt", what, path,
			(long long)st.st_size, (unsigned long long)l->size);
		close(fd);
		return -EBADMSG;
	}
	*out_fd = fd;
	return 0;
}

const struct oci_source_ops oci_layout_ops = {
	.name = "oci",
	.prefix = "oci:",
	.empty_ok = false,
	.open = layout_open,
	.fetch_manifest = layout_fetch_manifest,
	.fetch_config = layout_fetch_config,
	.max_nested = 3, /* below index.json */
	.open_layer = layout_open_layer,
	.close = layout_close,
};
