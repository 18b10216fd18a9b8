/* Fuzz target: a memcached node's reply to "get KEY", through the parser
 * l2_get and the drainer run (l2_reply.c), fed the way they feed it.
 *
 * Input: byte 0 picks how the bytes arrive (bits 0-3: piece size 1..16 or
 * all at once; bit 4: value bytes written straight into the parser's window
 * as a recv() would, else fed through l2_reply_feed; bit 5: the value is
 * discarded rather than kept); the rest is what the node sent.
 *
 * Seeds (corpus/fuzz_l2_reply/) are plain replies, one per file; they were
 * written by hand: hit, hit with CAS, miss, errors, and broken variants. */
/* ctest-labels: no-tsan (a single-threaded parser: nothing for ThreadSanitizer to check) */
#include "cache/internal.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_KEY "kc:0123.0"
#define FUZZ_MAX 4096
#define FUZZ_HDR 8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	unsigned mode = data[0];
	size_t piece = (mode & 15) ? (mode & 15) : SIZE_MAX;
	bool direct = mode & 16, discard = mode & 32;
	data++;
	size--;

	struct l2_reply r;
	uint8_t hdr[FUZZ_HDR];
	uint8_t *val = malloc(FUZZ_MAX);
	if (!val)
		return 0;
	l2_reply_init(&r, FUZZ_KEY, strlen(FUZZ_KEY), FUZZ_MAX, hdr, sizeof(hdr));
	size_t off = 0;
	while (off < size && r.state != L2R_DONE) {
		size_t n = size - off < piece ? size - off : piece;
		size_t win;
		uint8_t *w = direct ? l2_reply_window(&r, &win) : NULL;
		if (w) {
			if (n > win)
				n = win;
			memcpy(w, data + off, n);
			l2_reply_advance(&r, n);
			off += n;
			continue;
		}
		size_t used = l2_reply_feed(&r, data + off, n);
		if (used > n)
			__builtin_trap();
		off += used;
		if (r.state == L2R_NEED_DST) {
			if (r.value_len <= r.hdr_len || r.value_len > FUZZ_MAX || r.got != r.hdr_len)
				__builtin_trap();
			l2_reply_set_data(&r, discard ? NULL : val);
		} else if (used == 0 && r.state != L2R_DONE) {
			__builtin_trap(); /* no progress on input that was there */
		}
	}
	if (r.state == L2R_DONE) {
		if (r.result == L2R_NONE)
			__builtin_trap();
		if (r.result == L2R_HIT && (r.got != r.value_len || r.value_len > FUZZ_MAX))
			__builtin_trap();
	}
	free(val);
	return 0;
}
