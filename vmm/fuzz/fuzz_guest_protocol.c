/* Fuzz the invocation channel's decoder and invocation collector
 * (vmm/guest/protocol.c), the parser both the guest init and the host run
 * over bytes from the other side.  Input:
 *   [0]  bit 0: direction (0 host -> guest, 1 guest -> host);
 *        bits 1..7: the feed step (0 = everything at once, else 1..127 bytes)
 *   [1..] the stream
 * Every frame that comes out must pass guest_frame_check() again, be
 * re-encodable ('P' and 'S' payloads byte for byte through guest_api_encode()
 * and guest_restore_encode()), and (host -> guest) go through
 * guest_invocation_add() until 'G', then through guest_restore_take() as in
 * the init while its command runs; the decoder must consume every byte it is
 * given until it reports an error. */
/* ctest-labels: no-tsan (a single-threaded parser: nothing for ThreadSanitizer to check) */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vmm/guest/protocol.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	enum guest_direction dir = (data[0] & 1) ? GUEST_DIR_GUEST_TO_HOST : GUEST_DIR_HOST_TO_GUEST;
	size_t step = data[0] >> 1;
	const uint8_t *p = data + 1;
	size_t len = size - 1, off = 0;

	struct guest_decoder d;
	struct guest_invocation inv;
	uint64_t generation = 0;
	guest_decoder_init(&d, dir);
	guest_invocation_init(&inv);
	int err = 0;
	while (off < len && !err) {
		size_t chunk = step && step < len - off ? step : len - off;
		size_t pos = 0;
		while (pos < chunk) {
			size_t used = 0;
			struct guest_frame f;
			int r = guest_decoder_feed(&d, p + off + pos, chunk - pos, &used, &f);
			if (used > chunk - pos)
				abort();
			pos += used;
			if (r < 0) {
				if (r != -EPROTO && r != -EMSGSIZE && r != -ENOMEM)
					abort();
				if (guest_decoder_error(&d)[0] == '\0')
					abort();
				err = r;
				break;
			}
			if (r == 0) {
				if (pos != chunk) /* "need more" means everything was taken */
					abort();
				break;
			}
			if (guest_frame_check(dir, f.type, f.payload, f.len, NULL) != 0)
				abort();
			uint8_t hdr[GUEST_FRAME_HDR_LEN];
			guest_frame_header(hdr, f.type, f.len);
			if (hdr[0] != f.type)
				abort();
			/* Touch every payload byte, so ASan checks the whole range. */
			volatile uint8_t sum = 0;
			for (uint32_t i = 0; i < f.len; i++)
				sum = (uint8_t)(sum + f.payload[i]);
			(void)sum;
			if (dir == GUEST_DIR_HOST_TO_GUEST && inv.complete) {
				struct guest_restore rs;
				uint64_t before = generation;
				int t = guest_restore_take(&generation, &f, &rs, NULL);
				if (t != 0 && (t != -EPROTO || generation != before))
					abort();
				if (t == 0 && (f.type != GUEST_FRAME_RESTORED || generation <= before ||
					       rs.generation != generation))
					abort();
			} else if (dir == GUEST_DIR_HOST_TO_GUEST) {
				int a = guest_invocation_add(&inv, &f, NULL);
				if (a < 0 && a != -EPROTO && a != -E2BIG && a != -ENOMEM)
					abort();
				if (a == 1 && (inv.argc == 0 || inv.argv[inv.argc] != NULL))
					abort();
				if (a == 0 && f.type == GUEST_FRAME_API && inv.api.tcp_port == 0)
					abort();
			}
			if (f.type == GUEST_FRAME_API) {
				struct guest_api api;
				if (guest_api_decode(f.payload, f.len, &api) != 0 || api.tcp_port == 0)
					abort();
				uint8_t again[GUEST_API_LEN];
				guest_api_encode(again, &api);
				if (memcmp(again, f.payload, GUEST_API_LEN) != 0)
					abort();
			}
			if (f.type == GUEST_FRAME_RESTORED) {
				struct guest_restore rs;
				if (guest_restore_decode(f.payload, f.len, &rs) != 0 || rs.generation == 0)
					abort();
				uint8_t again[GUEST_RESTORE_LEN];
				guest_restore_encode(again, &rs);
				if (memcmp(again, f.payload, GUEST_RESTORE_LEN) != 0)
					abort();
			}
			if (f.type == GUEST_FRAME_EXIT) {
				int32_t code, sig;
				if (guest_exit_decode(f.payload, f.len, &code, &sig) != 0)
					abort();
			}
		}
		off += chunk;
	}
	if (err && guest_decoder_idle(&d))
		abort();
	guest_invocation_cleanup(&inv);
	guest_decoder_cleanup(&d);
	return 0;
}
