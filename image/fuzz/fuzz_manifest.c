/* Fuzz target: manifest_decode on hostile bytes, with and without the key. */
/* ctest-labels: no-tsan (a single-threaded parser: nothing for ThreadSanitizer to check) */
#include "common/common.h"
#include "image/image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint8_t key[32] = {7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
					7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7};
	struct manifest m;
	log_set_level(LOG_SILENT);
	if (manifest_decode(data, size, NULL, &m) == 0)
		manifest_cleanup(&m);
	if (manifest_decode(data, size, key, &m) == 0)
		manifest_cleanup(&m);
	return 0;
}
