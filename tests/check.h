/* The one assertion macro unit tests share: counts, reports the failing
 * line, and never stops the test early, so one run shows every failure.
 * End main() with check_report(). */
#ifndef KINDLING_TESTS_CHECK_H
#define KINDLING_TESTS_CHECK_H

#include <stdio.h>

static int check_passed, check_failed;

#define CHECK(cond)                                                                                                    \
	do {                                                                                                           \
		if (cond)                                                                                              \
			check_passed++;                                                                                \
		else {                                                                                                 \
			check_failed++;                                                                                \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);                      \
		}                                                                                                      \
	} while (0)

/* CHECK with a printf-style message saying what was seen, for checks whose
 * condition alone does not tell why it failed. */
#define CHECKF(cond, ...)                                                                                              \
	do {                                                                                                           \
		if (cond)                                                                                              \
			check_passed++;                                                                                \
		else {                                                                                                 \
			check_failed++;                                                                                \
			fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);                       \
			fprintf(stderr, __VA_ARGS__);                                                                  \
			fputc('\n', stderr);                                                                           \
		}                                                                                                      \
	} while (0)

/* Print "N passed, M failed" and return the exit status for main(). */
static inline int check_report(void)
{
	printf("%d passed, %d failed\n", check_passed, check_failed);
	return check_failed ? 1 : 0;
}

#endif
