/* frontend: the Lambda-compatible HTTP API (`/2015-03-31/functions...`).
 *
 * The frontend answers the Lambda API as the AWS CLI v2 and the AWS SDKs
 * send it: it authenticates every request with AWS Signature V4 against a
 * credentials file, keeps function records (configuration, published
 * versions, reserved and provisioned concurrency) behind a small state ops
 * table, imports images for CreateFunction and UpdateFunctionCode in the
 * background (chunker/chunker.h), enforces the concurrency limits (429),
 * keeps a durable on-disk queue for asynchronous (Event) invocations with
 * retries and a dead-letter list, and hands every invocation to a host agent
 * (placement/hostagent/hostagent.h), which runs it.
 *
 * It is plain request-in, response-out over common/http_server.h: the
 * server calls frontend_http_ops with the frontend as its argument.  All
 * calls are thread-safe.  See frontend/README.md for the routes, the state
 * layout, the queue and the error mapping.
 */
#ifndef KINDLING_FRONTEND_H
#define KINDLING_FRONTEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"
#include "common/http_server.h"
#include "common/sigv4.h"

struct hostagent_ops;
struct etcd;

/* ---- function state ----------------------------------------------------------------------------------------------- */

/* Where function records live.  A record is one function's whole state (its
 * $LATEST configuration, its published versions, its concurrency settings),
 * a JSON document keyed by the function's name.  The frontend serialises its
 * own read-modify-write cycles; a backend only has to make each call atomic
 * and durable (a put that returned 0 survives a crash).  A store shared by
 * several frontends (etcd) also gives get_versioned and put_if, and the
 * frontend then redoes a cycle whose record changed under it (compare and
 * swap).  The local-directory backend is frontend_state_dir_* (one frontend
 * owns a directory, so its own lock is enough: it leaves them NULL); the
 * etcd one is frontend_state_etcd_*. */
struct frontend_state_ops {
	/* required: the record of |name| into |*out| (malloc'd, NUL-terminated,
	 * |*out_len| bytes without the NUL).  0, -ENOENT, or -errno. */
	int (*get)(void *arg, const char *name, char **out, size_t *out_len);
	/* required: create or replace the record of |name| with |<data, len>|.
	 * 0 or -errno. */
	int (*put)(void *arg, const char *name, const char *data, size_t len);
	/* required: delete the record of |name|.  0, -ENOENT, or -errno. */
	int (*del)(void *arg, const char *name);
	/* required: the names of the records, sorted (bytewise), those after
	 * |after| only (NULL: from the start), at most |max|, appended to
	 * |out|.  0 or -errno. */
	int (*list)(void *arg, const char *after, size_t max, struct str_list *out);
	/* optional (with put_if): like get, and |*version| gets the record's
	 * version, a number > 0 that changes with every put. */
	int (*get_versioned)(void *arg, const char *name, char **out, size_t *out_len, int64_t *version);
	/* optional: put only if the record's version is still |version| (0:
	 * only if there is no record).  0, -EAGAIN if it is not (read it again
	 * and redo the change), or -errno. */
	int (*put_if)(void *arg, const char *name, const char *data, size_t len, int64_t version);
};

/* The local-directory backend: one file per function, DIR/NAME.json,
 * written to a temporary name, fsync'd, renamed, and the directory fsync'd.
 * Names reaching it have been validated (frontend_valid_function_name). */
extern const struct frontend_state_ops frontend_state_dir_ops;

/* Open (creating it 0700 if missing) the directory backend on |dir|.
 * Returns 0 with |*out| (the ops' argument; frontend_state_dir_close), or
 * -errno (logged). */
int frontend_state_dir_open(const char *dir, void **out);

/* Free what frontend_state_dir_open made; NULL is fine. */
void frontend_state_dir_close(void *state);

/* The etcd backend: the record of NAME is the value of
 * kindling/functions/NAME (placement/README.md), versioned by its
 * mod_revision.  |e| is borrowed and must outlive the backend.  Returns 0
 * with |*out| (frontend_state_etcd_close) or -ENOMEM. */
extern const struct frontend_state_ops frontend_state_etcd_ops;
int frontend_state_etcd_open(struct etcd *e, void **out);
void frontend_state_etcd_close(void *state);

/* The dead letters kept in etcd (kindling/dlq/SEQ), oldest first, each
 * one's JSON text appended to |out| (as `kindling dlq` prints them from
 * STATE/dlq/ on a single host).  0, -ENOTCONN if no etcd member answers,
 * or -errno. */
int frontend_dlq_etcd_list(struct etcd *e, struct str_list *out);

/* ---- the fleet router ---------------------------------------------------------------------------------------------- */

/* Runs invocations on the hosts of a fleet (frontend/route.c): warm ones
 * straight on a host known to have the function version warm (this
 * frontend's own record of where it ran, then the hosts' registrations in
 * etcd), cold ones where the placement service says.  Provisioned
 * concurrency is a plan in etcd shared by every frontend.  SnapStart
 * snapshots are taken on a host placement chooses among those whose
 * registration says they can snapshot (micro-VM agents), and the versions
 * that restore one start only on such hosts; a snapshot waits for a busy
 * placement and is placed again when its host is lost mid-call, and
 * snapshot answers -EHOSTUNREACH once those tries are spent.  Its ops
 * table is frontend_router_ops, given to frontend_config.agent_ops. */
struct frontend_router_config {
	/* The fleet's etcd (host registrations, provisioning plans).
	 * Required; borrowed, must outlive the router. */
	struct etcd *etcd;
	/* Placement services, comma-separated "http://HOST:PORT".  NULL or
	 * none: no cold start can be placed (-EHOSTUNREACH), which suits a
	 * router made only to read logs or stats. */
	const char *placement_urls;
	/* One placement request's bound (0 = 2000 ms). */
	unsigned placement_timeout_ms;
	/* SnapStart snapshots.  While placement is busy or every capable host
	 * is full, the snapshot asks again up to |snapshot_busy_waits| times
	 * (0 = 60); a snapshot cut short by a lost agent (connection refused
	 * or broken mid-call) is placed again up to |snapshot_attempts| tries
	 * in all (0 = 3).  Both wait |snapshot_wait_ms| (0 = 1000) before
	 * asking again, so 60 busy waits are about a minute. */
	unsigned snapshot_busy_waits, snapshot_attempts, snapshot_wait_ms;
};

struct frontend_router;

/* Make a router and start its reader of host registrations (every second;
 * the last good view is kept while etcd is down).  0 with |*out|
 * (frontend_router_free), -EINVAL for a bad URL (logged), or -errno. */
int frontend_router_new(const struct frontend_router_config *cfg, struct frontend_router **out);

/* Stop the reader and free; NULL is fine.  No call may be in progress. */
void frontend_router_free(struct frontend_router *rt);

/* The router as a struct hostagent_ops; the argument is a struct
 * frontend_router. */
extern const struct hostagent_ops frontend_router_ops;

/* ---- the frontend ------------------------------------------------------------------------------------------------- */

struct frontend_config {
	/* Runs the invocations: the in-process agent (hostagent_local_ops with
	 * a struct hostagent), or a fleet.  Required unless |no_agent| (tests
	 * of the API alone: every invocation then fails with 502). */
	const struct hostagent_ops *agent_ops;
	void *agent_arg;
	bool no_agent;
	/* The fleet's shared store, or NULL (a single host: the queue and the
	 * dead letters on disk under |state_dir|, concurrency counted in this
	 * process).  With it, the async queue, the dead letters and the
	 * concurrency holdings live in etcd (placement/README.md), under a
	 * lease this frontend keeps on kindling/frontends/|frontend_id|; use
	 * frontend_state_etcd_ops for the records too.  Borrowed. */
	struct etcd *etcd;
	/* This frontend's id in the fleet: 1 to 64 of [A-Za-z0-9_.-], unique
	 * among the live frontends.  Required with |etcd|. */
	const char *frontend_id;
	/* The URL this frontend answers on, published in
	 * kindling/frontends/|frontend_id| (NULL: none). */
	const char *advertise_url;
	/* Function records.  Required. */
	const struct frontend_state_ops *state_ops;
	void *state_arg;
	/* Access keys.  NULL turns authentication off (the caller warns). */
	const struct sigv4_keys *keys;
	/* The directory for the frontend's own files: the async queue
	 * (queue/), the dead letters (dlq/).  Created if missing.  Required. */
	const char *state_dir;
	/* The store images are imported into and resolved in (NULL = the file
	 * store under KINDLING_HOME). */
	const char *store_uri;
	/* The region and account in ARNs (NULL = "us-east-1", "000000000000"). */
	const char *region, *account_id;
	/* Invocations in flight at once over all functions (0 = 1000). */
	unsigned account_concurrency;
	/* How long a synchronous invocation may wait for room in the host's
	 * sandbox memory budget before it is answered 429 (0 = 3000 ms). */
	unsigned sync_wait_ms;
	/* Threads delivering Event invocations (0 = 4). */
	unsigned async_workers;
	/* The wait before the first retry of a failed Event invocation; the
	 * second waits twice as long (0 = 2000 ms). */
	unsigned retry_delay_ms;
	/* A SnapStart snapshot cut short because the agent was lost (its
	 * connection refused or broken mid-call: it died or restarted) is
	 * tried again, the version staying Pending, up to |snapshot_attempts|
	 * tries in all (0 = 4), |snapshot_retry_ms| apart (0 = 5000 ms, time
	 * for an agent to come back).  The agent's own refusal is final.  A
	 * fleet's router places such a snapshot again by itself
	 * (frontend_router_config) and answers -EHOSTUNREACH when it gives
	 * up, which is final here. */
	unsigned snapshot_attempts, snapshot_retry_ms;
};

struct frontend;

/* Start a frontend: open the store, load the async queue from
 * |cfg->state_dir|/queue (every event accepted before a crash is delivered
 * again), restart the imports of functions still Pending, provision what
 * the records ask for, and start the delivery workers.  Returns 0 with
 * |*out| (frontend_free), or -errno (logged with what to do). */
int frontend_new(const struct frontend_config *cfg, struct frontend **out);

/* Stop the workers and the imports (an event in delivery stays queued and
 * is delivered again on the next start), and free; NULL is fine.  Call it
 * after the HTTP server has stopped. */
void frontend_free(struct frontend *fe);

/* The HTTP side: http_server_config.ops with the frontend as the argument.
 * handle answers one request; body_limit gives 6 MB for synchronous
 * invocations, 1 MB for Event ones and 1 MB for the rest; error writes the
 * server's own refusals (413 ...) as Lambda errors. */
extern const struct http_server_ops frontend_http_ops;

/* True if |name| is a valid function name: 1 to 64 of [A-Za-z0-9_-]. */
bool frontend_valid_function_name(const char *name);

/* Split a FunctionName as Lambda accepts it in a path or a body -- "NAME",
 * "NAME:QUALIFIER", "ACCOUNT:function:NAME[:QUALIFIER]" or
 * "arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]" -- into the
 * name (copied into |<name, name_size>|) and the qualifier ("" if none, into
 * |<qual, qual_size>|).  A qualifier is "$LATEST" or 1 to 128 of
 * [A-Za-z0-9_-].  Returns 0 or -EINVAL (anything else, including any '/',
 * "." or ".."). */
int frontend_parse_function_name(const char *in, char *name, size_t name_size, char *qual, size_t qual_size);

#endif
