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

/* An Event invocation waiting in queue/. */
struct fe_qentry {
	char *file; /* the name in queue/ */
	double not_before;
	bool busy;
	struct fe_qentry *next;
};

/* An image import for CreateFunction or UpdateFunctionCode. */
struct fe_import {
	char *name, *uri, *token;
	struct fe_import *next;
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
	pthread_mutex_t import_lock;
	pthread_cond_t import_cond;
	struct fe_import *imports, **imports_tail;
	bool import_stop, import_started;
	pthread_t import_thread;

	/* The async queue. */
	pthread_mutex_t qlock;
	pthread_cond_t qcond;
	struct fe_qentry *queue;
	bool qstop;
	uint64_t qseq;
	pthread_t *workers;
	unsigned n_workers;
};

/* ---- util.c ---- */
int fe_fsync_dir(const char *dir);
/* A fresh UUID v4 into |out|. */
void fe_uuid(char out[37]);
/* "2026-12-05T13:06:11.000+0000" */
void fe_timestamp(char out[40]);
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
/* The record of |name|: 0 with |*out| (a new reference), -ENOENT, -errno. */
int fe_record_load(struct frontend *fe, const char *name, json_t **out);
int fe_record_save(struct frontend *fe, const char *name, json_t *rec);
/* The configuration of |qualifier| ("" or "$LATEST" or a version) in |rec|
 * (borrowed), or NULL. */
json_t *fe_record_version(json_t *rec, const char *qualifier);
/* Publish $LATEST of |rec| as the next version (or find the version that
 * already has its revision): |*out| borrowed from |rec|.  0 or -ENOMEM. */
int fe_record_publish(struct frontend *fe, const char *name, json_t *rec, const char *description, json_t **out);
/* A copy of |cfg| without the private "_" keys, for an answer. */
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
int fe_import_start(struct frontend *fe);
void fe_import_stop(struct frontend *fe);
/* Queue the import of |uri| for function |name|, applied if the record's
 * _ImportToken is still |token| when it ends. */
int fe_import_queue(struct frontend *fe, const char *name, const char *uri, const char *token);

/* ---- invoke.c ---- */
/* Take a slot for |name| with reserved concurrency |reserved| (-1: none).
 * Returns true, or false with |e| set to Lambda's 429. */
bool fe_slot_take(struct frontend *fe, const char *name, long reserved, struct fe_error *e);
void fe_slot_put(struct frontend *fe, const char *name);
/* Run one invocation on the agent, waiting up to |wait_ms| for room when
 * the host is full.  0 with |out|, or -errno with |e| filled. */
int fe_run(struct frontend *fe, const char *name, const json_t *cfg, const char *request_id, const uint8_t *payload,
	   size_t len, bool tail, const char *client_context, unsigned wait_ms, struct hostagent_invoke_result *out,
	   struct fe_error *e);
int fe_handle_invoke(struct frontend *fe, const struct http_request *req, const char *fname,
		     struct http_response *resp);

/* ---- queue.c ---- */
int fe_queue_start(struct frontend *fe, unsigned workers);
void fe_queue_stop(struct frontend *fe);
/* Write the event durably and queue it.  0 or -errno (logged). */
int fe_queue_put(struct frontend *fe, const char *name, const char *qualifier, const char *request_id,
		 const uint8_t *payload, size_t len);

#endif
