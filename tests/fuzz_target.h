/* What every fuzz target shares: the libFuzzer entry point it defines (the
 * corpus replay main, tests/fuzz_replay_main.c, calls the same function) and
 * MUST(), the invariant check a fuzzer reports as a crash. */
#ifndef KINDLING_TESTS_FUZZ_TARGET_H
#define KINDLING_TESTS_FUZZ_TARGET_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A broken invariant is a crash the fuzzer reports, in every build type
 * (assert() vanishes under NDEBUG). */
#define MUST(c)                                                                                                        \
	do {                                                                                                           \
		if (!(c))                                                                                              \
			abort();                                                                                       \
	} while (0)

#endif
