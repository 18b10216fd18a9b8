/* oci_dump SOURCE [--insecure] [--tmp-dir DIR]
 *
 * Opens an image source the way `chunkify import` does, prints the image
 * (digests, run config, layers) as JSON on stdout, and reads every layer
 * stream to its verified end, adding each layer's decompressed byte count and
 * sha256.  Integration tests compare these across source kinds.  Exit 0 on
 * success; on failure the source's own error is on stderr and the exit is 1.
 */
#include "chunker/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/evp.h>

static json_t *strv_json(char **v)
{
	if (!v)
		return json_null();
	json_t *a = json_array();
	for (; *v; v++)
		json_array_append_new(a, json_string(*v));
	return a;
}

static json_t *str_json(const char *s) { return s ? json_string(s) : json_null(); }

/* Read a layer to its end; the stream itself checks digest and diff_id. */
static int drain(struct byte_stream *s, uint64_t *out_bytes, char out_hex[SHA256_HEX_LEN + 1])
{
	static uint8_t buf[1 << 20];
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(md);
		return -EIO;
	}
	uint64_t total = 0;
	ssize_t r;
	while ((r = byte_stream_read(s, buf, sizeof(buf))) > 0) {
		EVP_DigestUpdate(md, buf, (size_t)r);
		total += (uint64_t)r;
	}
	uint8_t h[EVP_MAX_MD_SIZE];
	unsigned hl = 0;
	EVP_DigestFinal_ex(md, h, &hl);
	EVP_MD_CTX_free(md);
	if (r < 0)
		return (int)r;
	hex_encode(h, SHA256_LEN, out_hex);
	*out_bytes = total;
	return 0;
}

int main(int argc, char **argv)
{
	const char *spec = NULL;
	struct oci_source_options opt = {0};
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--insecure") == 0)
			opt.insecure = true;
		else if (strcmp(argv[i], "--tmp-dir") == 0 && i + 1 < argc)
			opt.tmp_dir = argv[++i];
		else if (!spec && argv[i][0] != '-')
			spec = argv[i];
		else {
			fprintf(stderr, "usage: oci_dump SOURCE [--insecure] [--tmp-dir DIR]\n");
			return 2;
		}
	}
	if (!spec) {
		fprintf(stderr, "usage: oci_dump SOURCE [--insecure] [--tmp-dir DIR]\n");
		return 2;
	}
	struct oci_source *src;
	const struct oci_image *img;
	int r = oci_source_open(spec, &opt, &src, &img);
	if (r < 0) {
		fprintf(stderr, "oci_dump: %s: %s\n", spec, strerror(-r));
		return 1;
	}
	json_t *out = json_object();
	json_object_set_new(out, "source", json_string(img->source_ref));
	json_object_set_new(out, "manifest_digest", json_string(img->manifest_digest));
	json_object_set_new(out, "config_digest", json_string(img->config_digest));
	json_t *cfg = json_object();
	json_object_set_new(cfg, "entrypoint", strv_json(img->config.entrypoint));
	json_object_set_new(cfg, "cmd", strv_json(img->config.cmd));
	json_object_set_new(cfg, "env", strv_json(img->config.env));
	json_object_set_new(cfg, "working_dir", str_json(img->config.working_dir));
	json_object_set_new(cfg, "user", str_json(img->config.user));
	json_object_set_new(out, "config", cfg);
	json_t *layers = json_array();
	int rc = 0;
	for (size_t i = 0; i < img->n_layers; i++) {
		const struct oci_layer *l = &img->layers[i];
		json_t *jl = json_object();
		json_object_set_new(jl, "digest", json_string(l->digest));
		json_object_set_new(jl, "diff_id", json_string(l->diff_id));
		json_object_set_new(jl, "media_type", json_string(l->media_type));
		json_object_set_new(jl, "size", json_integer((json_int_t)l->size));
		json_array_append_new(layers, jl);
		struct byte_stream *s = oci_source_open_layer(src, i);
		if (!s) {
			fprintf(stderr, "oci_dump: %s: layer %zu: %s\n", spec, i + 1, strerror(errno));
			rc = 1;
			break;
		}
		uint64_t bytes = 0;
		char hex[SHA256_HEX_LEN + 1];
		r = drain(s, &bytes, hex);
		byte_stream_close(s);
		if (r < 0) {
			fprintf(stderr, "oci_dump: %s: layer %zu: %s\n", spec, i + 1, strerror(-r));
			rc = 1;
			break;
		}
		char d[80];
		snprintf(d, sizeof(d), "sha256:%s", hex);
		json_object_set_new(jl, "tar_bytes", json_integer((json_int_t)bytes));
		json_object_set_new(jl, "tar_sha256", json_string(d));
	}
	json_object_set_new(out, "layers", layers);
	if (rc == 0) {
		json_dumpf(out, stdout, JSON_INDENT(2) | JSON_SORT_KEYS);
		putchar('\n');
	}
	json_decref(out);
	oci_source_free(src);
	return rc;
}
