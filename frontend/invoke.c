/* frontend: Invoke (RequestResponse, Event, DryRun) and the concurrency
 * limits. */
#include "frontend/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static struct fe_counter *counter(struct frontend *fe, const char *name, bool create)
{
	for (struct fe_counter *c = fe->counters; c; c = c->next)
		if (strcmp(c->name, name) == 0)
			return c;
	if (!create)
		return NULL;
	struct fe_counter *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	snprintf(c->name, sizeof(c->name), "%s", name);
	c->next = fe->counters;
	fe->counters = c;
	return c;
}

void fe_throttled(struct fe_error *e, const char *name, long reserved, unsigned account)
{
	if (reserved >= 0) {
		fe_set_error(e, 429, "TooManyRequestsException",
			     "Rate Exceeded. Function %s has %ld reserved concurrency, all in use.", name, reserved);
		e->reason = "ReservedFunctionConcurrentInvocationLimitExceeded";
	} else {
		fe_set_error(e, 429, "TooManyRequestsException",
			     "Rate Exceeded. The account's concurrency limit (%u) is in use.", account);
		e->reason = "ConcurrentInvocationLimitExceeded";
	}
}

bool fe_slot_take(struct frontend *fe, const char *name, long reserved, struct fe_error *e)
{
	if (fe->etcd)
		return fe_conc_etcd_take(fe, name, reserved, e);
	pthread_mutex_lock(&fe->lock);
	struct fe_counter *c = counter(fe, name, true);
	bool ok = false;
	if (!c) {
		fe_set_error(e, 500, "ServiceException", "out of memory");
	} else if (reserved >= 0 && c->inflight >= (unsigned long)reserved) {
		fe_throttled(e, name, reserved, fe->account_concurrency);
	} else if (fe->inflight_total >= fe->account_concurrency) {
		fe_throttled(e, name, -1, fe->account_concurrency);
	} else {
		c->inflight++;
		fe->inflight_total++;
		ok = true;
	}
	pthread_mutex_unlock(&fe->lock);
	return ok;
}

void fe_slot_put(struct frontend *fe, const char *name, long reserved)
{
	if (fe->etcd) {
		fe_conc_etcd_put(fe, name, reserved);
		return;
	}
	pthread_mutex_lock(&fe->lock);
	struct fe_counter *c = counter(fe, name, false);
	if (c && c->inflight)
		c->inflight--;
	if (fe->inflight_total)
		fe->inflight_total--;
	pthread_mutex_unlock(&fe->lock);
}

int fe_run(struct frontend *fe, const char *name, const json_t *cfg, const char *request_id, const uint8_t *payload,
	   size_t len, bool tail, const char *client_context, unsigned wait_ms, struct hostagent_invoke_result *out,
	   struct fe_error *e)
{
	memset(out, 0, sizeof(*out));
	if (!fe->agent) {
		fe_set_error(e, 502, "ServiceException", "this kindling serve runs no host agent");
		return -ENODEV;
	}
	struct fe_fnspec spec;
	int r = fe_fnspec_init(fe, name, cfg, &spec);
	if (r < 0) {
		fe_set_error(e, 502, "ResourceNotReadyException", "function %s has no image yet", name);
		return r;
	}
	struct hostagent_invoke_request req = {
		.fn = &spec.fn,
		.payload = payload,
		.payload_len = len,
		.request_id = request_id,
		.client_context = client_context,
		.want_log_tail = tail,
	};
	double deadline = now_seconds() + wait_ms / 1000.0;
	for (;;) {
		r = fe->agent->invoke(fe->agent_arg, &req, out);
		if (r != -EBUSY || now_seconds() >= deadline)
			break;
		hostagent_invoke_result_cleanup(out);
		memset(out, 0, sizeof(*out));
		struct timespec ts = { 0, 50 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	if (r == -EBUSY) {
		fe_set_error(e, 429, "TooManyRequestsException",
			     "Rate Exceeded. The host's sandbox memory is full of busy sandboxes; try again.");
		e->reason = "ConcurrentInvocationLimitExceeded";
	} else if (r == -EDQUOT) {
		fe_set_error(e, 429, "TooManyRequestsException",
			     "Rate Exceeded. The fleet is starting new sandboxes as fast as its burst limit allows; "
			     "try again.");
		e->reason = "ConcurrentInvocationLimitExceeded";
	} else if (r == -ENOENT) {
		fe_set_error(e, 502, "InvalidRuntimeException", "The image %s of function %s is not in the store.",
			     spec.fn.image_digest, name);
	} else if (r == -EHOSTUNREACH || r == -ENOTCONN) {
		/* A fleet with its control plane down: warm sandboxes still
		 * answer, a cold start cannot be placed.  Fail fast. */
		fe_set_error(e, 503, "ServiceException",
			     "No host can start a sandbox for function %s now (the placement service or the shared "
			     "store is unreachable); warm sandboxes keep serving. Retry shortly.", name);
	} else if (r == -ECONNRESET) {
		fe_set_error(e, 502, "ServiceException",
			     "The host running function %s was lost during the invocation; it may or may not have "
			     "completed.", name);
	} else if (r == -ESHUTDOWN) {
		fe_set_error(e, 503, "ServiceException", "kindling serve is shutting down");
	} else if (r < 0) {
		fe_set_error(e, 502, "InvalidRuntimeException", "No sandbox could be started for function %s: %s.", name,
			     strerror(-r));
	}
	fe_fnspec_cleanup(&spec);
	return r;
}

/* The record's reserved concurrency, or -1. */
static long reserved_of(json_t *rec)
{
	json_t *v = json_object_get(rec, "ReservedConcurrency");
	return json_is_integer(v) ? (long)json_integer_value(v) : -1;
}

int fe_handle_invoke(struct frontend *fe, const struct http_request *req, const char *fname,
		     struct http_response *resp)
{
	struct fe_error e = { 0 };
	char name[65], qual[129];
	if (frontend_parse_function_name(fname, name, sizeof(name), qual, sizeof(qual)) < 0) {
		fe_set_error(&e, 400, "InvalidParameterValueException", "Invalid function name: %.200s", fname);
		fe_answer_error(resp, &e);
		return 0;
	}
	struct http_param *params = NULL;
	size_t n_params = 0;
	if (http_query_parse(req->query, 16, &params, &n_params) < 0) {
		fe_set_error(&e, 400, "InvalidParameterValueException", "Malformed query string");
		fe_answer_error(resp, &e);
		return 0;
	}
	const char *q = http_param_get(params, n_params, "Qualifier");
	if (q && *q) {
		if (*qual && strcmp(qual, q) != 0) {
			http_params_free(params, n_params);
			fe_set_error(&e, 400, "InvalidParameterValueException",
				     "The derived qualifier from the function name does not match the specified qualifier.");
			fe_answer_error(resp, &e);
			return 0;
		}
		snprintf(qual, sizeof(qual), "%.128s", q);
	}
	http_params_free(params, n_params);

	const char *type = http_request_header(req, "X-Amz-Invocation-Type");
	if (!type)
		type = "RequestResponse";
	bool event = strcmp(type, "Event") == 0, dry = strcmp(type, "DryRun") == 0;
	if (!event && !dry && strcmp(type, "RequestResponse") != 0) {
		fe_set_error(&e, 400, "InvalidParameterValueException",
			     "X-Amz-Invocation-Type must be RequestResponse, Event or DryRun, not '%.64s'", type);
		fe_answer_error(resp, &e);
		return 0;
	}
	const char *logtype = http_request_header(req, "X-Amz-Log-Type");
	if (logtype && strcmp(logtype, "Tail") != 0 && strcmp(logtype, "None") != 0) {
		fe_set_error(&e, 400, "InvalidParameterValueException", "X-Amz-Log-Type must be None or Tail");
		fe_answer_error(resp, &e);
		return 0;
	}
	if (req->body_len > (event ? FE_ASYNC_PAYLOAD_MAX : FE_SYNC_PAYLOAD_MAX)) {
		fe_set_error(&e, 413, "RequestTooLargeException", "Request must be smaller than %u bytes for the %s operation",
			     event ? FE_ASYNC_PAYLOAD_MAX : FE_SYNC_PAYLOAD_MAX, "Invoke");
		fe_answer_error(resp, &e);
		return 0;
	}
	if (req->body_len) {
		json_error_t jerr;
		json_t *p = json_loadb((const char *)req->body, req->body_len, JSON_DECODE_ANY, &jerr);
		if (!p) {
			fe_set_error(&e, 400, "InvalidRequestContentException",
				     "Could not parse request body into json: %s (line %d, column %d)", jerr.text, jerr.line,
				     jerr.column);
			fe_answer_error(resp, &e);
			return 0;
		}
		json_decref(p);
	}

	/* From the cache: no store read on the invoke path (a record is at
	 * most FE_CACHE_TTL_S stale, and kept while the store is down). */
	json_t *rec = NULL;
	int r = fe_cache_get(fe, name, &rec);
	char *arn = fe_function_arn(fe, name, qual);
	if (r < 0) {
		if (r == -ENOENT)
			fe_set_error(&e, 404, "ResourceNotFoundException", "Function not found: %s", arn ? arn : name);
		else if (r == -ENOTCONN)
			fe_set_error(&e, 503, "ServiceException",
				     "Function %s is not cached on this frontend and the shared store (etcd) does not "
				     "answer. Retry shortly.", name);
		else
			fe_set_error(&e, 500, "ServiceException", "cannot read the record of function %s", name);
		free(arn);
		fe_answer_error(resp, &e);
		return 0;
	}
	json_t *cfg = fe_record_version(rec, qual);
	const char *state = json_string_value(json_object_get(cfg, "State"));
	if (!cfg) {
		fe_set_error(&e, 404, "ResourceNotFoundException", "Function not found: %s", arn ? arn : name);
	} else if (!state || strcmp(state, "Active") != 0) {
		fe_set_error(&e, 409, "ResourceConflictException",
			     "The operation cannot be performed at this time. The function is currently in the following state: %s",
			     state ? state : "Pending");
	}
	free(arn);
	if (e.status) {
		json_decref(rec);
		fe_answer_error(resp, &e);
		return 0;
	}
	const char *version = json_string_value(json_object_get(cfg, "Version"));
	char request_id[37];
	fe_uuid(request_id);
	http_response_add_header(resp, "X-Amzn-RequestId", request_id);
	if (dry) {
		json_decref(rec);
		resp->status = 204;
		return 0;
	}
	if (event) {
		r = fe_queue_put(fe, name, version, request_id, req->body, req->body_len);
		json_decref(rec);
		if (r == -ENOTCONN) {
			fe_set_error(&e, 503, "ServiceException",
				     "The event could not be queued: the shared store (etcd) does not answer; nothing was "
				     "accepted. Retry shortly.");
			fe_answer_error(resp, &e);
		} else if (r < 0) {
			fe_set_error(&e, 500, "ServiceException", "The event could not be queued: %s", strerror(-r));
			fe_answer_error(resp, &e);
		} else {
			resp->status = 202;
		}
		return 0;
	}
	long reserved = reserved_of(rec);
	if (!fe_slot_take(fe, name, reserved, &e)) {
		json_decref(rec);
		fe_answer_error(resp, &e);
		return 0;
	}
	struct hostagent_invoke_result res;
	bool tail = logtype && strcmp(logtype, "Tail") == 0;
	r = fe_run(fe, name, cfg, request_id, req->body, req->body_len, tail,
		   http_request_header(req, "X-Amz-Client-Context"), fe->sync_wait_ms, &res, &e);
	fe_slot_put(fe, name, reserved);
	if (r < 0) {
		json_decref(rec);
		hostagent_invoke_result_cleanup(&res);
		fe_answer_error(resp, &e);
		return 0;
	}
	http_response_add_header(resp, "X-Amz-Executed-Version", version);
	if (res.outcome == HOSTAGENT_FUNCTION_ERROR)
		http_response_add_header(resp, "X-Amz-Function-Error", "Unhandled");
	if (tail && res.log_tail) {
		char *b = fe_base64(res.log_tail, strlen(res.log_tail));
		if (b)
			http_response_add_header(resp, "X-Amz-Log-Result", b);
		free(b);
	}
	http_response_add_header(resp, "Content-Type", "application/json");
	resp->status = 200;
	http_response_take_body(resp, res.payload, res.payload_len);
	res.payload = NULL;
	res.payload_len = 0;
	hostagent_invoke_result_cleanup(&res);
	json_decref(rec);
	return 0;
}
