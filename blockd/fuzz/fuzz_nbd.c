/* Fuzz target for the NBD server's protocol state machine.
 *
 * The input is one hostile client's byte stream, fed to a session (the
 * same code every server thread runs) in pieces whose sizes come from the
 * first byte, so messages split at every boundary.  The second byte makes
 * the reply channel fail after that many sends (0 = never).  The export is
 * a 256 KiB in-memory device whose reads covering BAD_OFF fail with -EIO.
 * The parsers are also called directly on the raw input.
 */
/* ctest-labels: no-tsan (a single-threaded parser: nothing for ThreadSanitizer to check) */
#include "blockd/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define DEV_SIZE (256u * 1024)
#define BAD_OFF (200u * 1024)

static uint8_t image[DEV_SIZE];

static int mem_read(void *ctx, uint64_t off, void *buf, size_t len)
{
	(void)ctx;
	if (off > DEV_SIZE || len > DEV_SIZE - off)
		abort(); /* the server must range-check before it reads */
	if (BAD_OFF >= off && BAD_OFF < off + len)
		return -EIO;
	memcpy(buf, image + off, len);
	return 0;
}

struct sink {
	unsigned calls, fail_after;
	uint64_t bytes;
};

static int sink_emit(void *ctx, const void *buf, size_t len)
{
	struct sink *k = ctx;
	if (len == 0 || !buf)
		abort(); /* never asked to send nothing */
	if (k->fail_after && ++k->calls >= k->fail_after)
		return -EPIPE;
	/* Touch the bytes so ASan checks the whole range. */
	const volatile uint8_t *p = buf;
	k->bytes += p[0] + p[len - 1];
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool init;
	if (!init) {
		log_set_level(LOG_SILENT);
		for (size_t i = 0; i < DEV_SIZE; i++)
			image[i] = (uint8_t)(i ^ (i >> 8));
		init = true;
	}

	/* The parsers straight on the input. */
	struct nbd_request q;
	struct nbd_option o;
	char name[128];
	uint16_t infos[8];
	size_t n_info;
	(void)nbd_parse_request(data, size, &q);
	(void)nbd_parse_option_header(data, size, &o);
	(void)nbd_parse_go(data, size, name, sizeof(name), infos, 8, &n_info);

	if (size < 2)
		return 0;
	size_t piece = data[0] ? data[0] : 65536;
	struct sink k = { .fail_after = data[1] };
	data += 2;
	size -= 2;

	struct blockdev dev = { .read_at = mem_read, .size = DEV_SIZE, .ctx = NULL };
	struct nbd_export exp[2] = { { .name = "disk", .dev = &dev, .description = "fuzz disk" },
				     { .name = "", .dev = &dev } };
	struct nbd_session *s;
	if (nbd_session_new(exp, 2, "fuzz", sink_emit, &k, &s) < 0)
		return 0;
	while (size > 0) {
		size_t n = size < piece ? size : piece;
		if (nbd_session_feed(s, data, n) != 0)
			break;
		data += n;
		size -= n;
	}
	nbd_session_free(s);
	return 0;
}
