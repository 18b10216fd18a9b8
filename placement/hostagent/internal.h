/* hostagent internals: shared between the files of placement/hostagent/ only.
 *
 *   pool.c         which sandbox an invocation takes, which ones to evict or
 *                  expire: pure bookkeeping over an array, no threads
 *   runtime_api.c  the Runtime API's request routing and Lambda's error
 *                  payloads and messages: pure, fuzzed
 *   env.c          the Lambda environment of a sandbox: pure
 *   fnlog.c        per-function log files (rotated), Lambda's START / END /
 *                  REPORT lines, and the pump that copies a sandbox's output
 *                  into them while keeping the invocation's tail
 *   rapi.c         one sandbox's Runtime API endpoint: the hand-over of an
 *                  invocation between the agent and the runtime, served by
 *                  common/http_server on the listening socket the sandbox
 *                  hands over
 *   hostagent.c    the agent: blockd, images, sandbox threads, the reaper
 */
#ifndef KINDLING_HOSTAGENT_INTERNAL_H
#define KINDLING_HOSTAGENT_INTERNAL_H

#define LOG_COMPONENT "hostagent"
#include "common/common.h"
#include "placement/hostagent/hostagent.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The largest response or error body a runtime may post, and the largest
 * stdout of a plain-mode run: Lambda's 6 MB synchronous limit, as the
 * Runtime Interface Emulator counts it (6 MiB + 100 bytes). */
#define HA_MAX_PAYLOAD (6u * 1024u * 1024u + 100u)
/* Longest request id the Runtime API routes accept (Lambda's are UUIDs). */
#define HA_REQUEST_ID_MAX 128
/* Longest Lambda-Runtime-Function-Error-Type kept. */
#define HA_ERROR_TYPE_MAX 128
/* The log tail an invocation returns (X-Amz-Log-Result is the last 4 KB). */
#define HA_LOG_TAIL 4096
/* Longest function name (Lambda's limit for a plain name). */
#define HA_NAME_MAX 64

/* ======================================================================
 * The pool (pool.c): the agent's view of its sandboxes, for choosing.
 * Every function here reads or changes only what it is given; the caller
 * holds whatever lock protects the entries.
 * ====================================================================== */

enum pool_state {
	POOL_STARTING = 0, /* being set up, no invocation: a provisioned sandbox before its first /next */
	POOL_IDLE,	   /* initialised and waiting for work */
	POOL_BUSY,	   /* running an invocation (or a cold start for one) */
	POOL_ENDING,	   /* told to end; its memory no longer counts */
};

/* What makes sandboxes interchangeable.  Strings are owned by whoever owns
 * the entry; revision and digest may be "" but not NULL. */
struct pool_key {
	const char *name, *version, *revision, *digest;
};

struct pool_entry {
	struct pool_key key;
	enum pool_state state;
	uint64_t memory;   /* bytes this sandbox may use (its memory limit) */
	double last_used;  /* now_seconds() when it last became idle or busy */
	bool provisioned;  /* kept by provisioned concurrency: never expired nor evicted */
	bool draining;	   /* end it when its current invocation is over */
	bool oneshot;	   /* a plain-mode run: never idle, never reused */
};

/* A set of entries (not owned: the entries live in the sandboxes). */
struct pool {
	struct pool_entry **v;
	size_t n, cap;
};

/* Add |e|.  Returns 0 or -ENOMEM. */
int pool_add(struct pool *p, struct pool_entry *e);

/* Remove |e| if it is there. */
void pool_remove(struct pool *p, struct pool_entry *e);

/* Free the array (not the entries). */
void pool_cleanup(struct pool *p);

/* True if |a| and |b| name the same function version, revision and image. */
bool pool_key_equal(const struct pool_key *a, const struct pool_key *b);

/* The idle entry of |k| an invocation should take, or NULL: a provisioned
 * one first (that is what provisioned concurrency is for), else the most
 * recently used (so the least recently used ones age out).  Draining
 * entries are never taken. */
struct pool_entry *pool_pick_idle(const struct pool *p, const struct pool_key *k);

/* The memory counted against the budget: every entry not ENDING. */
uint64_t pool_memory_in_use(const struct pool *p);

/* Decide how to fit a new sandbox of |need| bytes under |budget|: if it fits
 * as things are, 0 with no victims; else the idle, unprovisioned entries to
 * end, least recently used first, just enough to make room, in
 * |victims| (room for p->n) and |*n_victims|.  -EBUSY (and no victims) if
 * even ending every such entry would not make room. */
int pool_plan_admit(const struct pool *p, uint64_t need, uint64_t budget, struct pool_entry **victims,
		    size_t *n_victims);

/* The idle, unprovisioned entries that have been idle for |idle_timeout|
 * seconds or more at |now|, into |out| (room for p->n).  Returns how many. */
size_t pool_expired(const struct pool *p, double now, double idle_timeout, struct pool_entry **out);

/* How many entries of |k| are provisioned and not ENDING. */
unsigned pool_count_provisioned(const struct pool *p, const struct pool_key *k);

/* True if hostagent_drain(name, version, keep_revision) concerns |e|: same
 * function name, same version unless |version| is NULL, and a revision other
 * than |keep_revision| unless that is NULL. */
bool pool_drain_matches(const struct pool_entry *e, const char *name, const char *version, const char *keep_revision);

/* ======================================================================
 * The Runtime API's requests and Lambda's errors (runtime_api.c).  Input
 * comes from the runtime inside the sandbox: untrusted.
 * ====================================================================== */

enum rapi_route {
	RAPI_ROUTE_NONE = 0,	   /* no such path: 404 */
	RAPI_ROUTE_BAD_METHOD,	   /* a known path, another method: 405 */
	RAPI_ROUTE_NEXT,	   /* GET  /2018-06-01/runtime/invocation/next */
	RAPI_ROUTE_RESPONSE,	   /* POST /2018-06-01/runtime/invocation/{id}/response */
	RAPI_ROUTE_ERROR,	   /* POST /2018-06-01/runtime/invocation/{id}/error */
	RAPI_ROUTE_INIT_ERROR,	   /* POST /2018-06-01/runtime/init/error */
};

struct rapi_target {
	enum rapi_route route;
	/* RESPONSE and ERROR: the id from the path, when it is 1 to
	 * HA_REQUEST_ID_MAX bytes; otherwise "" and |id_invalid| (Lambda answers
	 * such a path InvalidRequestID). */
	char request_id[HA_REQUEST_ID_MAX + 1];
	bool id_invalid;
};

/* Route a request by its |method| and decoded |path| (no query).  Never
 * fails: what is not the Runtime API is RAPI_ROUTE_NONE. */
void rapi_route_parse(const char *method, const char *path, struct rapi_target *out);

/* The error type to report for a runtime's Lambda-Runtime-Function-Error-Type
 * header |value| (NULL if absent), as Lambda filters it: a value of the form
 * Runtime.Name or Function.Name (a capital, then letters) is kept, any other
 * value starting "Function." becomes "Function.Unknown", anything else
 * "Runtime.Unknown".  Writes a NUL-terminated string to |<out, len>| (len >=
 * HA_ERROR_TYPE_MAX + 1). */
void rapi_error_type(const char *value, char *out, size_t len);

/* The error payload an invocation returns for an error the runtime posted:
 * |<body, len>| itself when it is a JSON object, otherwise
 * {"errorMessage": <the body as text>, "errorType": |type|}.  |*out| is
 * malloc'd and NUL-terminated.  Returns 0 or -ENOMEM. */
int rapi_error_payload(const uint8_t *body, size_t len, const char *type, uint8_t **out, size_t *out_len);

/* {"errorMessage": |message|, "errorType": |type|} as a malloc'd string, or
 * NULL (errno set).  NULs and bytes that are not UTF-8 become U+FFFD. */
char *ha_error_json(const char *type, const char *message);

/* "2020-11-10T05:46:57.874Z" for |epoch_ms| into |buf| (>= 25 bytes). */
void ha_format_timestamp(int64_t epoch_ms, char *buf, size_t len);

/* The messages Lambda gives for the failures the agent itself sees, each a
 * malloc'd error JSON (NULL with errno set on allocation failure):
 *   timeout        Sandbox.Timedout, "<timestamp> <id> Task timed out after N.00 seconds"
 *   exit           |type| (Runtime.ExitError, Runtime.OutOfMemory),
 *                  "RequestId: <id> Error: Runtime exited with error: exit status N"
 *                  or "... signal: killed" (Go's names for signals)
 *   entrypoint     Runtime.InvalidEntrypoint, "RequestId: <id> Error: fork/exec <path>: <strerror>"
 *   oversize       Function.ResponseSizeTooLarge, "Response payload size (N bytes) exceeded maximum
 *                  allowed payload size (6291556 bytes)."
 *   shutdown       Sandbox.Failure, "RequestId: <id> Error: the host agent is shutting down" */
char *ha_err_timeout(const char *request_id, uint32_t timeout_s, int64_t epoch_ms);
char *ha_err_exit(const char *type, const char *request_id, int exit_code, int term_signal);
char *ha_err_entrypoint(const char *request_id, const char *path, int err);
char *ha_err_oversize(uint64_t size);
char *ha_err_shutdown(const char *request_id);

/* Go's name for signal |sig| ("killed", "segmentation fault"), as Lambda
 * prints it after "signal: ". */
const char *ha_signal_name(int sig, char *buf, size_t len);

/* ======================================================================
 * The environment (env.c).
 * ====================================================================== */

struct ha_env_params {
	const struct hostagent_function *fn;
	const char *region;
	char *const *image_env; /* the image's Env; may be NULL */
	char *const *image_cmd; /* the image's Cmd, for _HANDLER when fn->command is NULL; may be NULL */
	bool provisioned;	/* AWS_LAMBDA_INITIALIZATION_TYPE provisioned-concurrency */
	/* AWS_LAMBDA_INITIALIZATION_TYPE snap-start (over provisioned), as
	 * Lambda sets it for a SnapStart version: the sandbox is booted to be
	 * snapshotted, and its restored copies keep its environment. */
	bool snap_start;
	const char *log_stream; /* AWS_LAMBDA_LOG_STREAM_NAME */
};

/* Append to |out| the "K=V" entries that go on top of the image's Env
 * (sandbox_spec.env_override): the function's Environment.Variables except
 * reserved keys, the reserved Lambda variables, and LANG, PATH and
 * LD_LIBRARY_PATH with Lambda's values where neither the image nor the
 * function sets them.  Returns 0 or -ENOMEM. */
int ha_env_build(const struct ha_env_params *p, struct str_list *out);

/* "2024/01/15/[$LATEST]" followed by 32 hex digits of |rnd|, for |epoch_s|,
 * into |<buf, len>|. */
void ha_log_stream_name(char *buf, size_t len, const char *version, int64_t epoch_s, const uint8_t rnd[16]);

/* ======================================================================
 * Logs (fnlog.c).
 * ====================================================================== */

/* One function's log file, LOGDIR/NAME.log, rotated to NAME.log.1 when it
 * would pass its size bound.  Thread-safe. */
struct fnlog;

/* Open (append) |dir|/|name|.log; |max_bytes| bounds the file (at least
 * 64 KiB).  Returns 0 or -errno (logged). */
int fnlog_open(const char *dir, const char *name, uint64_t max_bytes, struct fnlog **out);

/* Close and free; NULL is ok. */
void fnlog_free(struct fnlog *l);

/* Append |<buf, len>| in one write, rotating first if the file would pass
 * its bound.  Returns 0 or -errno (logged once per kind of failure). */
int fnlog_write(struct fnlog *l, const void *buf, size_t len);

/* The last |max| bytes of |dir|/|name|.log.1 followed by |name|.log, into
 * malloc'd |*out| (NUL-terminated; |*out_len| excludes the NUL).  Returns 0,
 * -ENOENT if neither exists, or -errno. */
int fnlog_read(const char *dir, const char *name, size_t max, char **out, size_t *out_len);

/* The last HA_LOG_TAIL bytes written to it. */
struct tail_ring {
	char buf[HA_LOG_TAIL];
	uint64_t total; /* bytes ever appended since the last reset */
};

void tail_reset(struct tail_ring *t);
void tail_append(struct tail_ring *t, const void *p, size_t n);
/* The kept bytes, oldest first, malloc'd and NUL-terminated; NULL (errno
 * set) on allocation failure. */
char *tail_dup(const struct tail_ring *t);

/* Lambda's REPORT line, newline-terminated, into |<buf, len>|:
 * "REPORT RequestId: ID\tDuration: 12.34 ms\tBilled Duration: 13 ms\tMemory
 * Size: 128 MB\tMax Memory Used: 20 MB\t" and, when |init_s| >= 0, "Init
 * Duration: 56.78 ms\t".  Billed duration is rounded up to the millisecond
 * and, as Lambda bills images, includes the init duration.  With |restored|
 * (a SnapStart restore: |init_s| is the restore's time) it is "Restore
 * Duration: 56.78 ms\tBilled Restore Duration: 57 ms\t" instead, and the
 * billed duration is the invocation's alone, as Lambda reports SnapStart. */
void ha_format_report(char *buf, size_t len, const char *request_id, double duration_s, double init_s, bool restored,
		      uint32_t memory_mb, uint64_t max_memory);

/* The pump: a thread that copies a sandbox's stdout and stderr (the read
 * ends of two pipes) into the function's log line by line, and keeps the
 * tail of the current invocation.  In plain mode stdout is the response
 * instead: it is captured whole, up to a bound.  The pipes are never waited
 * on for end-of-file (forked sandboxes may hold copies of their write
 * ends): the owner says when the output is over (pump_finish). */
struct pump;

enum pump_kind {
	PUMP_LOG,     /* line by line into the log and the invocation's tail */
	PUMP_CAPTURE, /* into a buffer of at most |capture_max| bytes; the rest counted and dropped */
};

struct pump_config {
	struct fnlog *log;	   /* where PUMP_LOG lines go; borrowed */
	int out_fd, err_fd;	   /* read ends, non-blocking; the pump owns and closes them */
	enum pump_kind out_kind;   /* stderr is always PUMP_LOG */
	size_t capture_max;
};

/* Start a pump.  Returns 0 or -errno (the fds are closed on failure). */
int pump_start(const struct pump_config *cfg, struct pump **out);

/* Write |line| (with its newline) to the log after what the sandbox has
 * written so far: the output already in the pipes is copied first (with
 * |wait_quiet|, until they stay quiet for a couple of milliseconds, at most
 * about 20 ms: what the workload wrote just before it answered may still be
 * in the sandbox's copy loop), and any unterminated line is ended.  Goes
 * into the tail when capturing. */
void pump_mark(struct pump *p, const char *line, bool wait_quiet);

/* Start keeping the tail: reset it and capture from now on. */
void pump_capture_begin(struct pump *p);

/* Stop capturing and return the tail (malloc'd, NUL-terminated), or NULL. */
char *pump_capture_end(struct pump *p);

/* The last HA_LOG_TAIL bytes of stderr, malloc'd and NUL-terminated, or
 * NULL. */
char *pump_stderr_tail(struct pump *p);

/* The workload is gone: copy what is left in the pipes, end any
 * unterminated line and stop the thread.  pump_mark still works afterwards
 * (it then writes straight to the log).  Idempotent. */
void pump_finish(struct pump *p);

/* A PUMP_CAPTURE stdout: the bytes (at most capture_max; the pump keeps
 * ownership) and how many came in all. */
const uint8_t *pump_captured(struct pump *p, size_t *len, uint64_t *total);

/* pump_finish, close, free; NULL is ok. */
void pump_free(struct pump *p);

/* ======================================================================
 * One sandbox's Runtime API endpoint (rapi.c).
 * ====================================================================== */

struct rapi;

struct rapi_hooks {
	/* Optional, each called at most once, from a server thread with no
	 * lock of the endpoint held: the runtime asked for work for the first
	 * time (init is over); the runtime posted /runtime/init/error (the
	 * owner should end the sandbox). */
	void (*first_next)(void *arg);
	void (*init_error)(void *arg);
	/* Optional: the event of invocation |request_id| is being handed to the
	 * runtime (called with the endpoint's lock held, before the runtime
	 * sees it: the place for the START line; it must not call into the
	 * endpoint). */
	void (*handed)(void *arg, const char *request_id);
	void *arg;
};

/* Make an endpoint with nothing to serve yet; |name| is for log messages.
 * Returns 0 or -errno. */
int rapi_new(const char *name, const struct rapi_hooks *hooks, struct rapi **out);

/* Serve the Runtime API on |fd| (a listening stream socket; taken in every
 * case) with common/http_server: one thread per connection, so /next can
 * long-poll.  At most once.  Returns 0 or -errno (logged). */
int rapi_serve(struct rapi *r, int fd);

/* The sandbox is gone: waiters in rapi_wait and the runtime's /next return
 * (/next with a 500), the server stops once the answers in flight are sent
 * (the runtime's sockets closed with the sandbox, so that is at once), and
 * its threads are joined.  Idempotent.  Not from a server thread. */
void rapi_end(struct rapi *r);

/* rapi_end and free; NULL is ok. */
void rapi_free(struct rapi *r);

enum rapi_outcome {
	RAPI_DONE = 0,	    /* the runtime posted a response or an error: |response| or |error| */
	RAPI_INIT_ERROR,    /* the runtime posted /runtime/init/error before taking the event */
	RAPI_TIMEOUT,	    /* the runtime did not take the event, or did not answer, in time */
	RAPI_ENDED,	    /* the sandbox ended first */
};

/* One invocation handed to a runtime.  The caller fills the inputs and keeps
 * them valid until rapi_wait returns; rapi_wait fills the outputs. */
struct rapi_invocation {
	const char *request_id, *arn, *trace_id, *client_context; /* trace_id, client_context may be NULL */
	const uint8_t *payload;
	size_t payload_len;
	uint32_t timeout_s; /* from the hand-over to the answer */

	/* outputs (valid after rapi_wait) */
	bool handed;	    /* the runtime took the event */
	double handed_at;   /* now_seconds() of the hand-over */
	double done_at;	    /* now_seconds() of the answer */
	bool is_error;	    /* RAPI_DONE: the runtime posted an error (or a response over the limit) */
	uint8_t *body;	    /* RAPI_DONE, RAPI_INIT_ERROR: the response, or the error payload (malloc'd, owned by
			     * the caller, NUL-terminated) */
	size_t body_len;
	char error_type[HA_ERROR_TYPE_MAX + 1]; /* is_error, RAPI_INIT_ERROR: the filtered type */

	/* private to rapi.c */
	bool done, released;
};

/* Give |inv| to the runtime: its next /next (or the one waiting) takes it.
 * Returns 0, -EBUSY if another invocation is in hand, -ESHUTDOWN if the
 * sandbox ended. */
int rapi_assign(struct rapi *r, struct rapi_invocation *inv);

/* Wait for |inv|'s outcome.  Until the runtime takes the event the wait
 * ends at |take_deadline| (now_seconds() time); after, at the hand-over plus
 * inv->timeout_s.  Whatever the outcome, |inv| is no longer the endpoint's
 * afterwards: a late answer for it is refused. */
enum rapi_outcome rapi_wait(struct rapi *r, struct rapi_invocation *inv, double take_deadline);

/* When the runtime first asked for work (now_seconds()), or < 0 if never. */
double rapi_first_next_at(struct rapi *r);

/* ======================================================================
 * wire.c: the agent's HTTP API as both ends see it (pure, fuzzed).
 *
 * POST /v1/invoke carries the event as the raw body; the function and the
 * request's options ride in headers (HA_H_*), the function as compact
 * ASCII-only JSON (ha_wire_function_json).  The answer to an invocation
 * that ran is 200 with the response or error JSON as the raw body and the
 * result in headers; a call the agent refused is an error status with
 * HA_H_ERROR naming why (ha_wire_status), so a client never mistakes some
 * other server's 404 for the agent's.
 * ====================================================================== */

#define HA_H_FUNCTION "Kindling-Function"	/* the function spec, JSON */
#define HA_H_REQUEST_ID "Kindling-Request-Id"
#define HA_H_TRACE_ID "Kindling-Trace-Id"
#define HA_H_CLIENT_CONTEXT "Kindling-Client-Context"
#define HA_H_WANT_TAIL "Kindling-Want-Log-Tail"	/* "1" */
#define HA_H_WARM_ONLY "Kindling-Warm-Only"	/* "1" */
#define HA_H_OUTCOME "Kindling-Outcome"		/* "ok" | "error" */
#define HA_H_COLD "Kindling-Cold"		/* "1" | "0" */
#define HA_H_INIT_S "Kindling-Init-S"
#define HA_H_DURATION_S "Kindling-Duration-S"
#define HA_H_MAX_MEMORY "Kindling-Max-Memory"
#define HA_H_LOG_TAIL "Kindling-Log-Tail"	/* a JSON string (ASCII, escaped) */
#define HA_H_ERROR "Kindling-Error"		/* why a call was refused: a marker below */

/* The largest request header block the agent accepts (the function spec
 * with its environment rides there). */
#define HA_WIRE_MAX_HEADERS (64u << 10)
/* The largest JSON body of the other calls. */
#define HA_WIRE_MAX_JSON (64u << 10)

/* A function spec parsed from the wire: |f| points into |root| and the
 * arrays here.  ha_wire_function_cleanup frees it. */
struct ha_wire_function {
	struct hostagent_function f;
	void *root; /* json_t */
	char **env, **entrypoint, **command;
};

/* Parse and check the function spec |json| (untrusted) into |*out|:
 * {"name","version","image","revision","arn","memory_mb","timeout_s",
 * "env":["K=V"],"entrypoint":[...],"command":[...],"working_dir",
 * "mode":"api"|"stdio","snapshot"}, with name, version, image, memory_mb and
 * timeout_s required (snapshot: what a SnapStart version's cold starts
 * restore from, ha_wire_store_name_ok).  Returns 0, or -EINVAL with |err| saying which field is wrong
 * and why, or -ENOMEM.  Cleanup |*out| in every case. */
int ha_wire_function_parse(const char *json, struct ha_wire_function *out, char *err, size_t err_len);

void ha_wire_function_cleanup(struct ha_wire_function *w);

/* |f| as the JSON ha_wire_function_parse reads (compact, ASCII-only, so it
 * fits a header), malloc'd, or NULL. */
char *ha_wire_function_json(const struct hostagent_function *f);

/* The body of POST /v1/provision: {"function":{spec},"n":N}.  Same
 * contract as ha_wire_function_parse. */
int ha_wire_provision_parse(const uint8_t *body, size_t len, struct ha_wire_function *fn, unsigned *n, char *err,
			    size_t err_len);

/* The body of POST /v1/drain: {"name","version"?,"keep_revision"?}.  The
 * strings point into |*root| (json_decref it in every case).  0 or -EINVAL
 * with |err| naming the field. */
int ha_wire_drain_parse(const uint8_t *body, size_t len, void **root, const char **name, const char **version,
			const char **keep_revision, char *err, size_t err_len);

/* The body of POST /v1/snapshot: {"function":{spec},"name":"NAME[:TAG]"},
 * the function a Runtime API one without a snapshot of its own (it boots),
 * |*name| where the snapshot is stored (not a digest), pointing into
 * fn->root.  Same contract as ha_wire_function_parse. */
int ha_wire_snapshot_parse(const uint8_t *body, size_t len, struct ha_wire_function *fn, const char **name, char *err,
			   size_t err_len);

/* The answer to a snapshot that was taken: {"digest": 64 hex digits} (the
 * stored snapshot's manifest digest) into |digest|.  0, or -EINVAL with
 * |err| saying what is wrong with it. */
int ha_wire_snapshot_answer_parse(const uint8_t *body, size_t len, char digest[65], char *err, size_t err_len);

/* The answer of GET /v1/info: {"isolation": "microvm"|"process",
 * "snapshot": bool, "snapshot_why": "..."}.  0 with |*snapshot| (whether
 * the agent's sandboxes can be snapshotted) and, when they cannot, the
 * agent's reason in |<why, why_len>|; or -EINVAL with |err|. */
int ha_wire_info_parse(const uint8_t *body, size_t len, bool *snapshot, char *why, size_t why_len, char *err,
		       size_t err_len);

/* The status and HA_H_ERROR marker the agent answers an error |err| of
 * hostagent_* with: -EINVAL 400 "bad-request", -ENOENT 404 "not-found",
 * -EAGAIN 409 "no-warm-sandbox", -EBUSY 429 "full", -ESHUTDOWN 503
 * "shutting-down", -ENOTSUP 501 "not-supported", -ETIMEDOUT 504
 * "timed-out", -ECHILD 422 "function-failed" (the last three from
 * snapshots), anything else 500 "agent-error". */
void ha_wire_status(int err, unsigned *status, const char **marker);

/* The -errno a client returns for the marker |marker| (untrusted; NULL or
 * unknown: -EPROTO, the peer is not an agent). */
int ha_wire_errno(const char *marker);

/* True if |s| is a function name: 1 to HA_NAME_MAX letters, digits, '-'
 * or '_'. */
bool ha_wire_name_ok(const char *s);

/* The longest snapshot name or digest on the wire. */
#define HA_STORE_NAME_MAX 256u

/* True if |s| names something in the store: a manifest digest or
 * NAME[:TAG], 1 to HA_STORE_NAME_MAX printable ASCII characters without
 * spaces (the store's own parser checks the rest when it is used). */
bool ha_wire_store_name_ok(const char *s);

/* True if |s| is printable ASCII without '/' of at most |max| bytes, and
 * not empty (nor NULL) unless |empty_ok|: versions, revisions, request
 * ids (they end up in headers, paths and log lines). */
bool ha_token_ok(const char *s, size_t max, bool empty_ok);

/* A JSON string's contents from header |value| (untrusted), malloc'd, or
 * NULL if it is not a JSON string. */
char *ha_wire_json_string(const char *value);

#endif
