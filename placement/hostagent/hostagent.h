/* hostagent: one host's function sandboxes.
 *
 * The host agent runs functions from kindling images on this host.  It
 * attaches each image lazily through one in-process blockd (so a cold start
 * fetches only the chunks the function touches), starts sandboxes through
 * sandbox/sandbox.h, serves each sandbox the Lambda Runtime API on the
 * endpoint the sandbox opens inside itself, keeps sandboxes warm after an
 * invocation and gives the next invocation of the same function version to an
 * idle one, ends idle sandboxes after a while and evicts the least recently
 * used when the host's memory budget for sandboxes is full, and keeps the
 * logs.
 *
 * It knows nothing of HTTP clients, credentials or the Lambda API: the
 * frontend (frontend/frontend.h) decides what to invoke and enforces the
 * limits; the agent runs it.  In a fleet, the frontend reaches remote agents
 * through the same calls (placement/).
 *
 * Every call is thread-safe; hostagent_invoke blocks its caller for the
 * length of the invocation, and many may run at once.
 */
#ifndef KINDLING_HOSTAGENT_H
#define KINDLING_HOSTAGENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache/cache.h"

struct hostagent;

struct hostagent_config {
	/* Where images come from and the cache tiers in front of them (see
	 * cache.h; origin_uri is required).  The tenant key and salt come from
	 * KINDLING_HOME, as for every kindling program. */
	struct cache_config cache;
	/* Directory for the agent's own state: the FUSE mount of the attached
	 * images, per-function logs.  Created if missing.  Required. */
	const char *state_dir;
	/* "process", "microvm" or "auto" (NULL = "auto"), as `kindling run
	 * --isolation`. */
	const char *isolation;
	/* The memory all sandboxes together may be given (the sum of their
	 * functions' MemorySize); 0 = half the host's RAM.  A cold start that
	 * does not fit evicts idle sandboxes, least recently used first, and
	 * fails with -EBUSY if that is not enough. */
	uint64_t memory_budget;
	/* Seconds an idle sandbox stays warm (0 = 600). */
	double idle_timeout_s;
	/* The region and account in ARNs and the environment (NULL =
	 * "us-east-1", "000000000000"). */
	const char *region, *account_id;
	/* The Runtime API port inside each sandbox (0 = 9001). */
	uint16_t runtime_api_port;
	/* Processes one sandbox may have at once (0 = 1024). */
	uint32_t pids_limit;
	/* The size a function's log file may reach before it is rotated (the
	 * previous one is kept as NAME.log.1); 0 = 8 MiB. */
	uint64_t log_max_bytes;
};

/* How a function's code is run. */
enum hostagent_mode {
	/* The image's entrypoint is a Lambda runtime: it polls the Runtime API
	 * (AWS_LAMBDA_RUNTIME_API).  The sandbox stays up between invocations. */
	HOSTAGENT_MODE_RUNTIME_API = 0,
	/* A plain image: each invocation runs the entrypoint once with the event
	 * on stdin; its stdout is the response (at most 6 MB) and a non-zero
	 * exit status is a function error (Runtime.ExitError, the end of its
	 * stderr as the message).  The image stays attached, so the next run
	 * reads from a warm cache.  The micro-VM backend gives the workload no
	 * stdin yet, so this mode wants the process sandbox. */
	HOSTAGENT_MODE_STDIO,
};

/* One function version, as the agent needs it.  Everything is copied by the
 * agent where it keeps it; the caller's strings need to live only for the
 * call. */
struct hostagent_function {
	const char *name;	  /* "my-fn" */
	const char *version;	  /* "$LATEST", "1", ... */
	const char *arn;	  /* the function's ARN, qualified with the version */
	/* The image, by manifest digest (64 hex digits): a function version's
	 * code never changes under a name, so warm sandboxes are keyed by it. */
	const char *image_digest;
	/* Changes whenever the configuration a sandbox is built from changes
	 * (UpdateFunctionConfiguration); sandboxes of another revision are never
	 * reused and drain. */
	const char *revision_id;
	uint32_t memory_mb;	  /* MemorySize: the sandbox's memory limit */
	uint32_t timeout_s;	  /* Timeout: an invocation is ended after this */
	/* Environment.Variables as "K=V", NULL-terminated; may be NULL.  Keys
	 * Lambda reserves (hostagent_env_is_reserved) are ignored. */
	char *const *env;
	char *const *entrypoint;  /* ImageConfig overrides, NULL-terminated; NULL = the image's */
	char *const *command;
	const char *working_dir;  /* NULL = the image's */
	enum hostagent_mode mode;
	/* SnapStart: the snapshot this version's cold starts restore from (its
	 * manifest digest, or NAME[:TAG]), as hostagent_snapshot took it; NULL
	 * = cold starts boot.  A restored sandbox runs the snapshot's command,
	 * environment and memory (taken from this same version), so it is
	 * given only for a published version whose configuration never
	 * changes.  Provisioned sandboxes restore too. */
	const char *snapshot;
};

enum hostagent_outcome {
	HOSTAGENT_OK = 0,		/* the function returned |payload| */
	HOSTAGENT_FUNCTION_ERROR,	/* the function (or its runtime) failed: |payload| is Lambda's
					 * error JSON ({"errorMessage", "errorType", ...}) */
};

struct hostagent_invoke_request {
	const struct hostagent_function *fn;
	const uint8_t *payload;	/* the event; may be NULL with len 0 */
	size_t payload_len;
	const char *request_id;	/* the invocation's id (a UUID) */
	const char *trace_id;	/* X-Amzn-Trace-Id to pass on; NULL = a new one */
	/* X-Amz-Client-Context (base64); the runtime gets the decoded JSON as
	 * Lambda-Runtime-Client-Context.  May be NULL. */
	const char *client_context;
	bool want_log_tail;	/* fill hostagent_invoke_result.log_tail */
	/* Only an idle warm sandbox will do: if there is none, return -EAGAIN
	 * at once rather than start one (a frontend's warm path in a fleet:
	 * a cold start there goes through placement first).  A Runtime API
	 * function needs an idle sandbox of its version, revision and image (a
	 * warm one whose runtime exited meanwhile is -EAGAIN too, not a cold
	 * start).  A plain-mode run keeps no sandbox, only its image attached,
	 * so there "warm" means the image is attached on this host (whichever
	 * function ran it last): the run starts the entrypoint on a warm
	 * cache. */
	bool warm_only;
};

struct hostagent_invoke_result {
	enum hostagent_outcome outcome;
	uint8_t *payload;	/* malloc'd; the response or the error JSON */
	size_t payload_len;
	char *log_tail;		/* malloc'd: the last 4 KiB of this invocation's log, START to
				 * REPORT, when asked; else NULL */
	bool cold;		/* a new sandbox was started for it */
	double init_s;		/* cold: sandbox start to the runtime's first /next */
	double duration_s;	/* the event handed over to the response */
	uint64_t max_memory;	/* bytes, the sandbox's peak so far; 0 if unknown */
};

/* Free what |r| owns; safe on a zeroed struct. */
void hostagent_invoke_result_cleanup(struct hostagent_invoke_result *r);

/* Start an agent with no sandboxes: its blockd, its FUSE mount under
 * cfg->state_dir, its reaper of idle sandboxes.  Returns 0 with |*out| owned
 * by the caller (hostagent_free), or -errno (logged with what to do). */
int hostagent_new(const struct hostagent_config *cfg, struct hostagent **out);

/* End every sandbox (in-flight invocations fail with a function error naming
 * the shutdown, Sandbox.Failure), wait for the calls in progress to return,
 * unmount, free; NULL is ok.  No call may start once this has begun. */
void hostagent_free(struct hostagent *a);

/* Run one invocation of |req->fn| and wait for it: take an idle warm sandbox
 * of that function version, revision and image, or start one (a cold start:
 * attach the image, start the sandbox, wait for the runtime's first
 * /runtime/invocation/next, for at most the function's timeout).  The event
 * goes to the runtime with the deadline hand-over + Timeout.  Function
 * errors, timeouts (Sandbox.Timedout, "<time> <id> Task timed out after
 * N.00 seconds"), a runtime that exits (Runtime.ExitError), runs out of
 * memory (Runtime.OutOfMemory), never asks for work, cannot start
 * (Runtime.InvalidEntrypoint) or reports an init error are results, not
 * failures: 0 with |out->outcome| = HOSTAGENT_FUNCTION_ERROR and Lambda's
 * error JSON; the sandbox concerned is ended (after a handler's own error it
 * stays warm).  |req->request_id| must be 1 to 128 printable characters
 * without '/'.  Returns 0 with |*out| filled (hostagent_invoke_result_cleanup
 * in every case), or -EINVAL for a bad request (logged), -ENOENT if the
 * image is not in the store, -EBUSY if the memory budget is full of busy or
 * provisioned sandboxes, -EAGAIN with |req->warm_only| and nothing warm
 * (not logged), -ESHUTDOWN while the agent is being freed, or another
 * -errno when no sandbox could be set up (logged). */
int hostagent_invoke(struct hostagent *a, const struct hostagent_invoke_request *req,
		     struct hostagent_invoke_result *out);

/* Keep |n| initialised sandboxes of |fn| (provisioned concurrency): start the
 * missing ones in the background (their runtimes see
 * AWS_LAMBDA_INITIALIZATION_TYPE=provisioned-concurrency), replace those
 * that end, and exempt them from idle expiry and eviction; invocations take
 * them first.  A later call replaces the target; n = 0 releases them (they
 * become ordinary warm sandboxes).  Returns 0, -EINVAL for a bad or plain
 * mode function, -EBUSY if every provisioned sandbox together would not fit
 * the memory budget, -ESHUTDOWN, or -ENOMEM. */
int hostagent_provision(struct hostagent *a, const struct hostagent_function *fn, unsigned n);

/* Drain the sandboxes of function |name| -- of its version |version| only,
 * unless that is NULL -- whose revision is not |keep_revision| (NULL: all of
 * them): idle ones end now, busy ones end after their current invocation,
 * never during it.  Provisioned concurrency of what is drained is released
 * too (provision again for the new revision).  For UpdateFunctionCode and
 * UpdateFunctionConfiguration (|version| "$LATEST", the new revision: the
 * published versions keep running) and DeleteFunction (a version, or
 * NULL for the whole function, with no revision kept). */
void hostagent_drain(struct hostagent *a, const char *name, const char *version, const char *keep_revision);

/* Whether this agent's sandboxes can be snapshotted (the micro-VM backend:
 * `--isolation microvm`, or auto on a host with /dev/kvm).  With false, a
 * one-line reason for the operator goes to |<why, len>|. */
bool hostagent_snapshot_supported(struct hostagent *a, char *why, size_t len);

/* The sandbox backend the agent runs ("process" or "microvm"), for the
 * operator and the agent's GET /v1/info; a static string. */
const char *hostagent_isolation(const struct hostagent *a);

/* SnapStart: take the snapshot of |fn| (a Runtime API function) that its
 * cold starts will restore from.  Boot a sandbox of |fn| (not offered to
 * invocations), wait until its runtime is initialised -- its first
 * GET /runtime/invocation/next, which stays pending: the restored guest
 * replays it, so a restored runtime receives the invocation it asks for --
 * then pause the VM, snapshot it and import the snapshot into the store as
 * |name| (NAME[:TAG]; snapstart_take), and end the sandbox.  Blocks for all
 * of that: the init is given at most 300 s plus the function's timeout.
 * Returns 0 with the snapshot's manifest digest in |digest| (what
 * hostagent_function.snapshot takes), or -errno with |<why, why_len>|
 * naming the step that failed for the function's StateReason (and logged):
 * -ENOTSUP where sandboxes cannot be snapshotted, -EINVAL for a bad or
 * plain-mode function, -ENOENT if the image is not in the store, -EBUSY if
 * the memory budget is full, -EIO if the sandbox could not be started (its
 * reason in |why|), -ETIMEDOUT if the runtime never asked for work, -ECHILD
 * if it exited or failed its init first, -ESHUTDOWN. */
int hostagent_snapshot(struct hostagent *a, const struct hostagent_function *fn, const char *name, char digest[65],
		       char *why, size_t why_len);

struct hostagent_stats {
	uint64_t memory_budget, memory_in_use;	/* bytes */
	/* Sandboxes alive and not ending: sandboxes = starting + idle + busy. */
	unsigned sandboxes, starting, busy, idle;
	unsigned provisioned;	/* provisioned sandboxes that are initialised (idle or busy) */
	uint64_t cold_starts, warm_starts, evictions, expirations;
};

/* A snapshot of the agent's counters. */
void hostagent_get_stats(struct hostagent *a, struct hostagent_stats *out);

/* One function version's sandboxes on this host, for its registration. */
struct hostagent_warm {
	char *name, *version, *revision, *image; /* malloc'd; revision "" if none */
	unsigned idle, busy;	/* sandboxes waiting for work / running one (or starting for one) */
	unsigned provisioned;	/* of them, provisioned ones that are initialised */
};

/* The sandboxes alive and not ending, grouped by (name, version, revision,
 * image), in no particular order; plain-mode runs are not counted (they keep
 * nothing warm).  Returns 0 with |*out| (|*n| entries, possibly 0; free with
 * hostagent_warm_free), or -ENOMEM. */
int hostagent_list_warm(struct hostagent *a, struct hostagent_warm **out, size_t *n);

/* Free what hostagent_list_warm returned; NULL is ok. */
void hostagent_warm_free(struct hostagent_warm *v, size_t n);

/* The agent's log of function |name|: its invocations' output with Lambda's
 * START, END and REPORT lines, oldest first, at most |max| bytes from the end.
 * |*out| is malloc'd.  Returns 0, -ENOENT if the function never ran here, or
 * -errno. */
int hostagent_read_log(struct hostagent *a, const char *name, size_t max, char **out, size_t *out_len);

/* ---- a host that runs invocations, whoever it is ----
 *
 * The frontend runs invocations through this table, so it does not know
 * whether they run in this process (hostagent_local_ops, |arg| a struct
 * hostagent), on one remote agent (hostagent_remote_ops), or anywhere in a
 * fleet (the frontend's router).  Each entry has the contract of the
 * hostagent_* function of the same name above; a remote or fleet
 * implementation adds these errors to invoke:
 *   -ENOTCONN   no agent could be reached, and the invocation was not
 *               handed to any (safe to retry elsewhere);
 *   -ECONNRESET the agent was lost while it held the invocation (it may or
 *               may not have run: a sync caller reports it, an async one
 *               retries);
 *   -EHOSTUNREACH no host can take a cold start now (placement or the
 *               shared store is down): a clear 5xx for the caller;
 *   -EDQUOT     the fleet's burst limit on new sandboxes is used up: 429. */
struct hostagent_ops {
	int (*invoke)(void *arg, const struct hostagent_invoke_request *req, struct hostagent_invoke_result *out);
	int (*provision)(void *arg, const struct hostagent_function *fn, unsigned n);
	void (*drain)(void *arg, const char *name, const char *version, const char *keep_revision);
	void (*get_stats)(void *arg, struct hostagent_stats *out);
	int (*read_log)(void *arg, const char *name, size_t max, char **out, size_t *out_len);
	/* SnapStart (hostagent_snapshot_supported, hostagent_snapshot).
	 * Optional: a table without them cannot snapshot.  snapshot_supported
	 * may ask the agent over the network (remote), or read the fleet's
	 * registrations (the router: true if any host can). */
	bool (*snapshot_supported)(void *arg, char *why, size_t len);
	int (*snapshot)(void *arg, const struct hostagent_function *fn, const char *name, char digest[65], char *why,
			size_t why_len);
};

extern const struct hostagent_ops hostagent_local_ops;

/* ---- one agent over HTTP (`kindling agent`) ----
 *
 * The agent's API, for frontends on other hosts (server.c; the routes and
 * headers are in README.md, "The agent's HTTP API"):
 *   POST /v1/invoke      the event as the raw body, the function and options
 *                        in Kindling-* headers; 200 with the response or
 *                        error JSON and the result in headers
 *   POST /v1/provision   {"function":{...},"n":N}
 *   POST /v1/drain       {"name","version","keep_revision"}
 *   POST /v1/snapshot    {"function":{...},"name":"NAME[:TAG]"}: SnapStart's
 *                        hostagent_snapshot; 200 {"digest"} or a refusal
 *                        whose message names the step that failed
 *   GET  /v1/info        {"isolation","snapshot":bool,"snapshot_why"}
 *   GET  /v1/stats, GET /v1/logs/NAME?bytes=N, GET /healthz
 * A call the agent refuses gets a status and a Kindling-Error marker:
 * 400 bad-request, 404 not-found, 409 no-warm-sandbox (-EAGAIN), 429 full
 * (-EBUSY), 503 shutting-down, 500 agent-error; and from a snapshot 501
 * not-supported (-ENOTSUP), 504 timed-out (-ETIMEDOUT), 422
 * function-failed (-ECHILD). */
struct hostagent_server;

/* Serve |a|'s API on |listen| ("127.0.0.1:9101"; port 0 picks one).  |a|
 * must outlive the server.  Returns 0 with |*out| (hostagent_server_free),
 * or -errno from http_server_start (logged). */
int hostagent_server_start(struct hostagent *a, const char *listen, struct hostagent_server **out);

/* "127.0.0.1:41234": where |s| listens. */
const char *hostagent_server_address(const struct hostagent_server *s);

/* Stop accepting calls, wait for those in progress to be answered, free;
 * NULL is ok.  Free the server before its agent. */
void hostagent_server_free(struct hostagent_server *s);

/* A client of one remote agent, for hostagent_remote_ops (|arg|).
 * Thread-safe: it keeps a pool of connections. */
struct hostagent_remote;

/* A client of the agent at |url| ("http://127.0.0.1:9101"); |timeout_ms|
 * bounds every call but invoke (0 = 10 s); an invocation may take the
 * function's Timeout twice (the runtime's init, then the call) plus a
 * minute for the image and the sandbox (warm_only: Timeout + 15 s).  No
 * connection is made yet.  Returns 0 with |*out| (hostagent_remote_free),
 * -EINVAL for a URL that is not http(s)://... (logged), or -ENOMEM. */
int hostagent_remote_new(const char *url, unsigned timeout_ms, struct hostagent_remote **out);

/* Free; NULL is ok.  No call may be in progress. */
void hostagent_remote_free(struct hostagent_remote *h);

/* The table over a struct hostagent_remote.  invoke returns, besides the
 * agent's own errors (-EINVAL, -ENOENT, -EAGAIN, -EBUSY, -ESHUTDOWN, -EIO
 * for any other failure there): -ENOTCONN when the connection was refused
 * (nothing got the invocation), -ECONNRESET when the exchange broke after
 * the request may have gone out (reset, timeout, an answer that is not the
 * agent's), -EPROTO for an error status without the agent's marker.
 * drain and get_stats log their failures (get_stats then reports zeros);
 * read_log returns -ENOENT if the function never ran there.
 * snapshot_supported asks the agent (GET /v1/info; false with the reason
 * when it cannot snapshot or cannot be reached); snapshot returns the
 * agent's errors of hostagent_snapshot with its reason in |why|, and
 * -ENOTCONN, -ECONNRESET or -EPROTO as invoke does (|why| says which). */
extern const struct hostagent_ops hostagent_remote_ops;

/* ---- the agent's registration in etcd (placement/README.md) ---- */

struct hostagent_register_config {
	const char *etcd_endpoints; /* "http://127.0.0.1:2379,..."; required */
	const char *host_id;	    /* HOST in kindling/hosts/HOST: 1 to 64 of [A-Za-z0-9_.-]; required */
	const char *url;	    /* where frontends reach the agent's API; required */
	const char *cell;	    /* NULL = "cell-0" */
	const char *l1_dir;	    /* the L1 directory whose chunks the Bloom summary lists; NULL = none */
	unsigned ttl_s;		    /* the lease's TTL (0 = 5) */
	unsigned interval_ms;	    /* how often the key is re-put and the lease kept alive (0 = 1000) */
	unsigned bloom_interval_ms; /* how often the L1 directory is scanned again (0 = 5000) */
};

struct hostagent_register;

/* Register |a| in etcd and keep it registered, from a thread of its own:
 * grant a lease of ttl_s, put kindling/hosts/HOST under it with the host's
 * capacity, warm sandboxes and L1 summary, re-put it every interval and
 * keep the lease alive; when the lease has expired or etcd was unreachable,
 * grant a new one and register again once etcd answers.  While etcd is
 * down the agent keeps serving: failures are only logged (once a minute at
 * most).  The first registration is attempted before this returns, but
 * its failure is not an error.  |a| must outlive the registration.
 * Returns 0 with |*out| (hostagent_register_stop), -EINVAL for a bad
 * config (logged, naming the field), or -errno. */
int hostagent_register_start(struct hostagent *a, const struct hostagent_register_config *cfg,
			     struct hostagent_register **out);

/* The registration as JSON, as it would be put now (for tests and the
 * operator): malloc'd, or NULL. */
char *hostagent_register_json(struct hostagent_register *r);

/* Stop the thread and revoke the lease, so the host leaves etcd at once
 * (best effort: if etcd is down the key expires with its TTL); NULL is
 * ok. */
void hostagent_register_stop(struct hostagent_register *r);

/* True if Lambda reserves the environment variable |key| (AWS_REGION,
 * AWS_LAMBDA_FUNCTION_NAME, _HANDLER, TZ, ...): a function's
 * Environment.Variables cannot set it.  For the frontend's checks. */
bool hostagent_env_is_reserved(const char *key);

#endif
