/* frontend: private declarations shared by its files. */
#ifndef KINDLING_FRONTEND_INTERNAL_H
#define KINDLING_FRONTEND_INTERNAL_H

#undef LOG_COMPONENT
#define LOG_COMPONENT "frontend"

#include "frontend/frontend.h"

#include "chunker/chunker.h"
#include "placement/hostagent/hostagent.h"

#include <jansson.h>
#include <pthread.h>
#include <signal.h>

#define FE_SYNC_PAYLOAD_MAX (6u << 20) /* Lambda: 6 MB */
#define FE_ASYNC_PAYLOAD_MAX (1u << 20)		 /* Lambda: 1 MB (256 KB before 2025) */
#define FE_CONTROL_BODY_MAX (1u << 20)
#define FE_MAX_ATTEMPTS 3 /* an Event invocation and its two retries */

/* A Lambda error to answer with. */
struct fe_error {
	unsigned status;
	const char *type;   /* x-amzn-ErrorType */
	const char *reason; /* TooManyRequestsException's Reason, or NULL */
	char message[2048];
};

/* Invocations in flight, per function. */
struct fe_counter {
	char name[65];
	unsigned inflight;
	struct fe_counter *next;
};

/* An Event invocation waiting in the queue. */
struct fe_qentry {
	char *file; /* its key: the name in queue/, or SEQ in kindling/queue/ */
	double not_before;
	bool busy;
	uint64_t claim_epoch; /* etcd: claimed under this lease epoch (0: not) */
	bool delivered;	      /* delivered; only its removal is left */
	struct fe_qentry *next;
};

/* Where the async queue keeps its events; the delivery logic (queue.c) is
 * the same for both.  Keys sort in acceptance order.  queue.c's dir backend
 * is STATE/queue + STATE/dlq; queue_etcd.c's is kindling/queue/,
 * kindling/queue-claims/ and kindling/dlq/. */
struct fe_queue_backend {
	/* Make the key of a new event into |<key, size>|. */
	void (*make_key)(struct frontend *fe, const char *request_id, char *key, size_t size);
	/* Store a new event durably.  0 or -errno (-ENOTCONN: store down). */
	int (*put)(struct frontend *fe, const char *key, const char *text);
	/* Read an event: 0, -ENOENT (gone: delivered elsewhere), -errno. */
	int (*load)(struct frontend *fe, const char *key, char **text, size_t *len);
	/* Replace a queued event (after a failed attempt). */
	int (*update)(struct frontend *fe, const char *key, const char *text);
	/* Remove a delivered event. */
	int (*remove)(struct frontend *fe, const char *key);
	/* Move an event to the dead letters as |text|. */
	int (*dead)(struct frontend *fe, const char *key, const char *text);
	/* optional: make the event this frontend's to deliver: 0, -EALREADY
	 * (another frontend has it, or it is gone), or -errno. */
	int (*claim)(struct frontend *fe, const char *key);
	/* Add the stored events not yet in fe->queue (under qlock: no). */
	int (*scan)(struct frontend *fe);
	/* Seconds between scans after the first (0: only at start). */
	double rescan_s;
};
extern const struct fe_queue_backend fe_queue_dir_backend, fe_queue_etcd_backend;

/* A function record in the cache (cache.c). */
struct fe_cached {
	char name[65];
	json_t *rec; /* never leaves the cache: readers get copies */
	struct fe_cached *next;
};

/* Concurrency slots this frontend holds in etcd for one scope
 * (conc_etcd.c). */
struct fe_hold {
	char scope[80]; /* "account" or "function/NAME" */
	unsigned held, inuse; /* held counts only under lease epoch |epoch| */
	unsigned growers;     /* takers waiting to grow it (conc_lock) */
	uint64_t epoch;
	double last_used;
	struct fe_hold *next;
};

/* An image import for CreateFunction or UpdateFunctionCode. */
struct fe_import {
	/* An image: |uri| for function |name|, applied if the record's
	 * _ImportToken is still |token|.  A SnapStart snapshot (|version| set):
	 * of that published version, named |uri|, applied if the version's
	 * _SnapshotToken is still |token|. */
	char *name, *uri, *token, *version;
	struct fe_import *next;
};

/* A queue of jobs and the one thread that takes them in order (import.c). */
struct fe_jobs {
	struct frontend *fe;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct fe_import *head, **tail;
	bool stop, started;
	pthread_t thread;
};

struct frontend {
	const struct hostagent_ops *agent; /* NULL with no_agent */
	void *agent_arg;
	bool no_agent;
	const struct frontend_state_ops *ops;
	void *state;
	const struct sigv4_keys *keys;
	struct sigv4_verifier verifier;
	char *region, *account_id, *state_dir, *queue_dir, *dlq_dir;
	unsigned account_concurrency, sync_wait_ms, retry_delay_ms;
	unsigned snapshot_attempts, snapshot_retry_ms;

	/* The fleet: NULL on a single host. */
	struct etcd *etcd;
	char *id;
	pthread_mutex_t lease_lock;
	int64_t lease; /* 0: none yet (or lost) */
	uint64_t lease_epoch; /* bumped by every new lease */
	char *url;
	pthread_mutex_t conc_lock; /* the holds' counters */
	pthread_mutex_t grow_lock; /* serialises this frontend's holder writes */
	struct fe_hold *holds;
	double store_down_until; /* skip growing until then (conc_lock) */

	/* The record cache and the background thread refreshing it (and, on
	 * etcd, keeping the lease and giving back idle slots). */
	pthread_mutex_t cache_lock;
	struct fe_cached *cache;
	pthread_mutex_t bg_lock;
	pthread_cond_t bg_cond;
	bool bg_stop, bg_started;
	pthread_t bg_thread;

	/* Guards the records' read-modify-write cycles and the counters. */
	pthread_mutex_t lock;
	unsigned inflight_total;
	struct fe_counter *counters;
	unsigned provisioned_requested; /* sum over every record */

	/* The store, for imports and resolving NAME:TAG; only the import
	 * thread uses it. */
	struct chunkify_ctx cc;
	bool have_cc;
	volatile sig_atomic_t cancel;
	/* Image imports, and SnapStart's snapshots on a thread of their own:
	 * a snapshot boots a VM and waits for its runtime, which should not
	 * hold up other functions' imports. */
	struct fe_jobs imports, snapshots;

	/* The async queue. */
	pthread_mutex_t qlock;
	pthread_cond_t qcond;
	struct fe_qentry *queue;
	bool qstop;
	uint64_t qseq;
	const struct fe_queue_backend *qb;
	double next_scan;
	bool scanning;
	pthread_t *workers;
	unsigned n_workers;
};

/* ---- util.c ---- */
int fe_fsync_dir(const char *dir);
/* A fresh UUID v4 into |out|. */
void fe_uuid(char out[37]);
/* "2026-12-05T13:06:11.000+0000" */
void fe_timestamp(char out[40]);
/* Wait up to |ms| milliseconds on |cond| (with |lock|, which the caller
 * does not hold) unless |*stop|, which is read under |lock| and ends the
 * wait when it is set and |cond| broadcast.  Returns |*stop|. */
bool fe_wait_unless_stopped(pthread_mutex_t *lock, pthread_cond_t *cond, const bool *stop, unsigned ms);
char *fe_base64(const void *data, size_t len);
/* Decode |s|; malloc'd; -EINVAL for bad base64. */
int fe_unbase64(const char *s, uint8_t **out, size_t *out_len);
void fe_set_error(struct fe_error *e, unsigned status, const char *type, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* Answer |resp| with |e| as Lambda does. */
void fe_answer_error(struct http_response *resp, const struct fe_error *e);
/* Answer |resp| with |status| and |j| (stolen; may be NULL for no body). */
void fe_answer_json(struct http_response *resp, unsigned status, json_t *j);
char *fe_function_arn(const struct frontend *fe, const char *name, const char *qualifier);

/* ---- record.c: function records ---- */
#define FE_RECORD_RETRIES 8 /* a control-plane cycle redone on a conflict */
/* The record of |name|: 0 with |*out| (a new reference), -ENOENT, -errno.
 * On a versioned store the version read is kept in the record (the private
 * top-level key "_StoreVersion") for fe_record_save. */
int fe_record_load(struct frontend *fe, const char *name, json_t **out);
/* Write |rec| (and refresh the cache).  On a versioned store the write is
 * a compare-and-swap against the version fe_record_load read (none: only
 * if there is no record): -EAGAIN if the record changed meanwhile (redo
 * the whole cycle).  0 or -errno. */
int fe_record_save(struct frontend *fe, const char *name, json_t *rec);
/* Delete the record of |name| (and drop it from the cache). */
int fe_record_delete(struct frontend *fe, const char *name);

/* ---- cache.c: the record cache for the invoke path ---- */
#define FE_CACHE_TTL_S 1.0
/* The record of |name| from the cache, loading it on a miss: 0 with |*out|
 * (the caller's own copy), -ENOENT, -errno. */
int fe_cache_get(struct frontend *fe, const char *name, json_t **out);
/* Set (|rec| non-NULL, a copy is kept) or drop the cached record. */
void fe_cache_set(struct frontend *fe, const char *name, const json_t *rec);
/* Start and stop the background thread (cache refresh, lease, idle
 * slots). */
int fe_bg_start(struct frontend *fe);
void fe_bg_stop(struct frontend *fe);
void fe_cache_clear(struct frontend *fe);
/* The configuration of |qualifier| ("" or "$LATEST" or a version) in |rec|
 * (borrowed), or NULL. */
json_t *fe_record_version(json_t *rec, const char *qualifier);
/* Publish $LATEST of |rec| as the next version (or find the version that
 * already has its revision): |*out| borrowed from |rec|.  A new version of
 * a function with SnapStart ApplyOn PublishedVersions is Pending
 * (StateReasonCode Creating) with a _SnapshotToken until its snapshot is
 * taken: queue it with fe_snapstart_queue once the record is saved.  0 or
 * -ENOMEM. */
int fe_record_publish(struct frontend *fe, const char *name, json_t *rec, const char *description, json_t **out);
/* A copy of |cfg| without the private "_" keys, for an answer, with
 * SnapStart {"ApplyOn", "OptimizationStatus"} as Lambda gives it (On only
 * for a published version with ApplyOn PublishedVersions). */
json_t *fe_config_public(const json_t *cfg);
/* One function version as the host agent needs it; its strings live in
 * |spec|. */
struct fe_fnspec {
	struct hostagent_function fn;
	char *arn;
	char **env, **entrypoint, **command;
};
int fe_fnspec_init(struct frontend *fe, const char *name, const json_t *cfg, struct fe_fnspec *spec);
void fe_fnspec_cleanup(struct fe_fnspec *spec);

/* ---- import.c ---- */
/* Set up the two job queues (empty, no thread yet); jobs queued before
 * fe_import_start() wait for it.  fe_import_destroy() undoes it. */
void fe_import_init(struct frontend *fe);
void fe_import_destroy(struct frontend *fe);
/* Start the import thread and the SnapStart thread.  Returns 0 or -errno
 * (logged); on failure neither runs. */
int fe_import_start(struct frontend *fe);
/* Cancel what runs (an import ends with -ECANCELED, a snapshot with
 * -ESHUTDOWN: both are redone at the next start), join both threads and drop
 * the jobs still queued.  Safe to call when fe_import_start() failed. */
void fe_import_stop(struct frontend *fe);
/* Queue the import of |uri| for function |name|, applied if the record's
 * _ImportToken is still |token| when it ends. */
int fe_import_queue(struct frontend *fe, const char *name, const char *uri, const char *token);
/* SnapStart: if the published version |v| of function |name| waits for its
 * snapshot (State Pending with a _SnapshotToken), queue the job that has
 * the host agent take it (hostagent_ops.snapshot) and makes the version
 * Active, or Failed with the step that failed as its StateReason.  Returns
 * 0 or -ENOMEM. */
int fe_snapstart_queue(struct frontend *fe, const char *name, const json_t *v);

/* The name a SnapStart snapshot of version |version| of function |name| is
 * stored under: "snapstart-NAME:VERSION" (a NAME:TAG in the store, listed
 * by `chunkify ls`), malloc'd, or NULL. */
char *fe_snapstart_name(const char *name, const char *version);

/* Version |version| of function |name| is deleted: remove its SnapStart
 * snapshot's ref from the store (if it is there); the manifest and its
 * chunks are left to `chunkify gc`.  A failure is logged only. */
void fe_snapstart_forget(struct frontend *fe, const char *name, const char *version);

/* ---- invoke.c ---- */
/* Fill |e| with Lambda's 429 for |name|'s reserved concurrency |reserved|
 * (>= 0), or for the account's |account| (reserved < 0). */
void fe_throttled(struct fe_error *e, const char *name, long reserved, unsigned account);
/* Take a slot for |name| with reserved concurrency |reserved| (-1: none).
 * Returns true, or false with |e| set to Lambda's 429. */
bool fe_slot_take(struct frontend *fe, const char *name, long reserved, struct fe_error *e);
void fe_slot_put(struct frontend *fe, const char *name, long reserved);
/* Run one invocation on the agent, waiting up to |wait_ms| for room when
 * the host is full.  0 with |out|, or -errno with |e| filled. */
int fe_run(struct frontend *fe, const char *name, const json_t *cfg, const char *request_id, const uint8_t *payload,
	   size_t len, bool tail, const char *client_context, unsigned wait_ms, struct hostagent_invoke_result *out,
	   struct fe_error *e);
int fe_handle_invoke(struct frontend *fe, const struct http_request *req, const char *fname,
		     struct http_response *resp);

/* ---- conc_etcd.c: the fleet's lease and concurrency holdings ---- */
#define FE_LEASE_TTL_S 6
#define FE_HOLD_IDLE_S 2.0
/* Grant the frontend's lease and put kindling/frontends/ID.  0 or -errno. */
int fe_fleet_start(struct frontend *fe);
/* Revoke the lease (its holdings and claims go with it) and free. */
void fe_fleet_stop(struct frontend *fe);
/* The current lease (granting a new one if it was lost), or 0 when etcd
 * does not answer. */
int64_t fe_fleet_lease(struct frontend *fe);
/* The lease |lease| was found gone: forget it (the next fe_fleet_lease
 * grants another). */
void fe_fleet_lease_lost(struct frontend *fe, int64_t lease);
/* Once a second: renew the lease, give back slots idle for
 * FE_HOLD_IDLE_S. */
void fe_fleet_tick(struct frontend *fe);
/* The current lease epoch (bumped by every new lease). */
uint64_t fe_fleet_epoch(struct frontend *fe);
bool fe_conc_etcd_take(struct frontend *fe, const char *name, long reserved, struct fe_error *e);
void fe_conc_etcd_put(struct frontend *fe, const char *name, long reserved);

/* ---- queue.c ---- */
int fe_queue_start(struct frontend *fe, unsigned workers);
/* Add the stored event |key| to fe->queue (qlock held): 0, -EEXIST if it is
 * there already, -ENOMEM. */
int fe_queue_add(struct frontend *fe, const char *key);
void fe_queue_stop(struct frontend *fe);
/* Write the event durably and queue it.  0 or -errno (logged; -ENOTCONN:
 * the shared store does not answer, nothing was accepted). */
int fe_queue_put(struct frontend *fe, const char *name, const char *qualifier, const char *request_id,
		 const uint8_t *payload, size_t len);

#endif
