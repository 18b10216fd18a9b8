/* Fuzz target for the OCI/Docker JSON parsers (chunker/oci_json.c).
 *
 * Input: one selector byte, then a JSON document.  Every parser sees the
 * document; the selector only varies what the parsers are asked for: bit 0
 * picks a tag for the index parser, bits 1-2 the number of layers the config
 * parser must find diff_ids for.  A manifest that parses is fed on to the
 * config parser with its own layer count, as the sources do.
 */
/* ctest-labels: no-tsan (a single-threaded parser: nothing for ThreadSanitizer to check) */
#include "chunker/internal.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint8_t sel = data[0];
	const uint8_t *doc = data + 1;
	size_t len = size - 1;

	char digest[80];
	uint64_t dsize = 0;
	if (oci_parse_index("fuzz index", doc, len, (sel & 1) ? "latest" : NULL, digest, &dsize) == 0)
		if (strncmp(digest, "sha256:", 7) != 0 || !is_sha256_hex(digest + 7) || dsize > OCI_MAX_JSON)
			abort();

	struct oci_image img = {0};
	if (oci_parse_manifest("fuzz manifest", doc, len, &img) == 0) {
		if (img.n_layers > OCI_MAX_LAYERS || !is_sha256_hex(img.config_digest + 7))
			abort();
		for (size_t i = 0; i < img.n_layers; i++)
			if (!is_sha256_hex(img.layers[i].digest + 7) || img.layers[i].size > OCI_MAX_BLOB)
				abort();
		(void)oci_parse_config("fuzz manifest as config", doc, len, &img);
	}
	oci_image_cleanup(&img);

	size_t n = (sel >> 1) & 3;
	img.n_layers = n;
	img.layers = n ? calloc(n, sizeof(*img.layers)) : NULL;
	if (n && !img.layers)
		return 0;
	if (oci_parse_config("fuzz config", doc, len, &img) == 0)
		for (size_t i = 0; i < n; i++)
			if (!is_sha256_hex(img.layers[i].diff_id + 7))
				abort();
	oci_image_cleanup(&img);
	return 0;
}
