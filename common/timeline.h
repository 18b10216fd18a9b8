/* common/timeline: where a start's time goes, as named phases.
 *
 * A timeline is a list of marks, each "phase NAME ended at time T"
 * (CLOCK_MONOTONIC), counted from the process's own start as the kernel
 * recorded it.  Phase i runs from mark i-1 (or the process start) to mark i,
 * so the phases sum exactly to the time from the process start to the last
 * mark.
 *
 * The marks live in a shared anonymous mapping, so processes forked after
 * timeline_new() (a sandbox's monitor, init and workload) mark the same
 * timeline as the caller; timeline_mark() allocates nothing, takes no lock
 * and makes no system call beyond clock_gettime, so a child forked from a
 * multi-threaded process, or one under a seccomp filter, may call it.
 *
 *   struct timeline *t = timeline_new();   // in main, before any fork
 *   timeline_mark(t, "pre-main");         // the first mark: time since the process start
 *   ...; timeline_mark(t, "attach");
 *   json_t *j = timeline_json(t);          // {"phases": [...], "start_source": ...}
 *   timeline_free(t);
 */
#ifndef KINDLING_COMMON_TIMELINE_H
#define KINDLING_COMMON_TIMELINE_H

#include <jansson.h>
#include <stddef.h>

#define TIMELINE_MAX_MARKS 64

struct timeline;

/* A new, empty timeline in a shared anonymous mapping, for the calling
 * process, whose start is found (as timeline_process_start() says) only when
 * first needed, by timeline_start() or timeline_json(), so the lookup costs
 * the start nothing.  Returns NULL with errno set. */
struct timeline *timeline_new(void);

/* Unmap |t|; NULL is fine.  Call once no child may still mark it. */
void timeline_free(struct timeline *t);

/* End the phase |name| now.  |name| must have static storage (a string
 * literal): a forked child writes the pointer and the caller reads it.  |t|
 * may be NULL (then nothing happens); marks past TIMELINE_MAX_MARKS are
 * dropped.  Async-signal-safe; safe after fork and under seccomp. */
void timeline_mark(struct timeline *t, const char *name);

/* As timeline_mark, at the CLOCK_MONOTONIC time |when| (now_seconds()) taken
 * earlier, e.g. at the top of main before the timeline existed. */
void timeline_mark_at(struct timeline *t, const char *name, double when);

/* The time of the last mark named |name|, in CLOCK_MONOTONIC seconds, or a
 * negative value if there is none. */
double timeline_time_of(const struct timeline *t, const char *name);

/* The start of the process that made |t|, in CLOCK_MONOTONIC seconds (as
 * now_seconds() counts), looked up on the first call.  Call it from that
 * process. */
double timeline_start(struct timeline *t);

/* Find when the calling process started, as a CLOCK_MONOTONIC time in
 * seconds, in |*out_start|, and how precise that is, in seconds, in
 * |*out_precision|; |*out_source| names the source (static string).  The
 * kernel's start time (fork, not exec) comes from taskstats' elapsed time
 * (microseconds; needs CAP_NET_ADMIN, which root has) where it answers, else
 * from /proc/self/stat's starttime (clock ticks, usually 10 ms).  Returns 0
 * or -errno. */
int timeline_process_start(double *out_start, double *out_precision, const char **out_source);

/* The timeline as a new JSON object: "phases" (an array of {"name", "ms"} in
 * time order, the first from the process start), "exec_ms" (the process
 * start to the last mark), "start_source" and "start_precision_ms".  The
 * caller adds what else it knows.  Returns NULL on allocation failure. */
json_t *timeline_json(struct timeline *t);

/* Milliseconds from the process start to the CLOCK_MONOTONIC time |t_s|. */
double timeline_ms_since_start(struct timeline *t, double t_s);

#endif
