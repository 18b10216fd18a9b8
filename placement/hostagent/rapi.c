/* One sandbox's Runtime API endpoint: the hand-over of invocations between
 * the agent (rapi_assign, rapi_wait) and the runtime inside the sandbox
 * (GET .../invocation/next, POST .../response, .../error, .../init/error).
 *
 * The runtime's side follows Lambda's state machine as the Runtime
 * Interface Emulator implements it (internal/lambda/core/states.go,
 * rapi/handler):
 *   - /next long-polls until an event is assigned, and may be called again
 *     while an invocation is out (it then waits for the next one);
 *   - /response and /error for an id other than the last one handed out
 *     are 400 InvalidRequestID; for that id once it has been answered (or
 *     given up on) they are 403 InvalidStateTransition;
 *   - a response over 6 MB is answered 413 RequestEntityTooLarge and the
 *     invocation gets Function.ResponseSizeTooLarge;
 *   - /init/error is accepted only before the first /next (403 after), and
 *     ends the sandbox: the invocation waiting for it gets the error.
 * One lock guards the state; the agent's thread waits on a condition
 * variable, the runtime's requests on the same one.
 *
 * The HTTP side is common/http_server, on the listening socket the sandbox
 * hands over.  It refuses a body over HA_MAX_PAYLOAD itself, before reading
 * it; its error callback (on_server_error) then answers as the route would
 * with the body left out, which is where an oversized response becomes
 * Function.ResponseSizeTooLarge. */
#include "placement/hostagent/internal.h"

#include "common/http_server.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum rt_state { RT_STARTED, RT_READY, RT_RUNNING, RT_RESPONDED, RT_INIT_ERROR };

/* The emulator's names, which its InvalidStateTransition messages carry. */
static const char *const rt_state_names[] = {
	"RuntimeStartedState", "RuntimeReadyState", "RuntimeRunningState", "RuntimeResponseSentState",
	"RuntimeInitErrorState",
};

struct rapi {
	pthread_mutex_t lock;
	pthread_cond_t cond; /* CLOCK_MONOTONIC */
	char name[96];
	struct rapi_hooks hooks;
	struct http_server *server;
	bool ended;
	enum rt_state state;
	double first_next_at; /* < 0 until the first /next */
	struct rapi_invocation *cur;
	char last_id[HA_REQUEST_ID_MAX + 1]; /* the id last handed out */
	bool init_error;
	uint8_t *init_body;
	size_t init_len;
	char init_type[HA_ERROR_TYPE_MAX + 1];
};

int rapi_new(const char *name, const struct rapi_hooks *hooks, struct rapi **out)
{
	struct rapi *r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&r->cond, &ca);
	pthread_condattr_destroy(&ca);
	pthread_mutex_init(&r->lock, NULL);
	snprintf(r->name, sizeof(r->name), "%s", name);
	if (hooks)
		r->hooks = *hooks;
	r->first_next_at = -1;
	*out = r;
	return 0;
}

/* ---- answers ------------------------------------------------------------------------------------------------- */

static int reply(struct http_response *resp, unsigned status, const char *json)
{
	resp->status = status;
	int e = http_response_add_header(resp, "Content-Type", "application/json");
	return e ? e : http_response_set_body(resp, json, strlen(json));
}

static int reply_error(struct http_response *resp, unsigned status, const char *type, const char *message)
{
	char *j = ha_error_json(type, message);
	if (!j)
		return -ENOMEM;
	http_response_take_body(resp, j, strlen(j));
	resp->status = status;
	return http_response_add_header(resp, "Content-Type", "application/json");
}

static int reply_transition(struct http_response *resp, enum rt_state from, const char *to)
{
	char msg[256];
	snprintf(msg, sizeof(msg), "State transition from %s to %s failed for runtime. Error: State transition is not "
		 "allowed", rt_state_names[from], to);
	return reply_error(resp, 403, "InvalidStateTransition", msg);
}

static int reply_accepted(struct http_response *resp) { return reply(resp, 202, "{\"status\":\"OK\"}"); }

/* ---- the runtime's requests ------------------------------------------------------------------------------------ */

static int64_t epoch_ms_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Decode standard base64 (padding optional) into a malloc'd, NUL-terminated
 * buffer.  Returns 0 or -EINVAL / -ENOMEM. */
static int base64_decode(const char *in, char **out)
{
	size_t n = strlen(in);
	char *o = malloc(n / 4 * 3 + 4);
	if (!o)
		return -ENOMEM;
	uint32_t acc = 0;
	size_t bits = 0, j = 0, pad = 0;
	for (size_t i = 0; i < n; i++) {
		char c = in[i];
		int v = c >= 'A' && c <= 'Z' ? c - 'A' : c >= 'a' && c <= 'z' ? c - 'a' + 26 : c >= '0' && c <= '9' ? c - '0' + 52
		      : c == '+' ? 62 : c == '/' ? 63 : c == '=' ? -2 : -1;
		if (v == -1 || (v >= 0 && pad)) {
			free(o);
			return -EINVAL;
		}
		if (v == -2) {
			pad++;
			continue;
		}
		acc = acc << 6 | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			o[j++] = (char)(acc >> bits & 0xff);
		}
	}
	if (pad > 2 || bits >= 6) {
		free(o);
		return -EINVAL;
	}
	o[j] = '\0';
	*out = o;
	return 0;
}

/* The event and its headers, for the runtime.  Called locked, with |inv|
 * just handed over. */
static int reply_event(struct rapi *r, struct rapi_invocation *inv, struct http_response *resp)
{
	char deadline[32];
	snprintf(deadline, sizeof(deadline), "%lld", (long long)(epoch_ms_now() + (int64_t)inv->timeout_s * 1000));
	int e = http_response_add_header(resp, "Lambda-Runtime-Aws-Request-Id", inv->request_id);
	if (!e)
		e = http_response_add_header(resp, "Lambda-Runtime-Deadline-Ms", deadline);
	if (!e && inv->arn && *inv->arn)
		e = http_response_add_header(resp, "Lambda-Runtime-Invoked-Function-Arn", inv->arn);
	if (!e && inv->trace_id && *inv->trace_id)
		e = http_response_add_header(resp, "Lambda-Runtime-Trace-Id", inv->trace_id);
	if (!e && inv->client_context && *inv->client_context) {
		/* The invoker's X-Amz-Client-Context is base64; runtimes get the
		 * JSON itself. */
		char *json = NULL;
		if (base64_decode(inv->client_context, &json) == 0) {
			for (char *p = json; *p; p++)
				if (*p == '\r' || *p == '\n')
					*p = ' ';
			e = http_response_add_header(resp, "Lambda-Runtime-Client-Context", json);
			if (e == -EINVAL)
				e = 0;
		} else {
			log_warn("%s: invocation %s: the client context is not base64; not passing it on", r->name,
				 inv->request_id);
		}
		free(json);
	}
	if (!e)
		e = http_response_add_header(resp, "Content-Type", "application/json");
	if (e)
		return e;
	resp->status = 200;
	return http_response_set_body(resp, inv->payload, inv->payload_len);
}

static int do_next(struct rapi *r, struct http_response *resp)
{
	pthread_mutex_lock(&r->lock);
	bool first = r->first_next_at < 0 && !r->ended;
	if (first) {
		r->first_next_at = now_seconds();
		if (r->state == RT_STARTED)
			r->state = RT_READY;
	}
	pthread_mutex_unlock(&r->lock);
	if (first && r->hooks.first_next)
		r->hooks.first_next(r->hooks.arg);

	pthread_mutex_lock(&r->lock);
	if (r->state == RT_RESPONDED)
		r->state = RT_READY;
	while (!r->ended && !(r->cur && !r->cur->handed))
		pthread_cond_wait(&r->cond, &r->lock);
	if (r->ended) {
		pthread_mutex_unlock(&r->lock);
		/* The sandbox ended: there will be no work for this runtime. */
		return reply_error(resp, 500, "InternalServerError", "Internal Server Error");
	}
	struct rapi_invocation *inv = r->cur;
	inv->handed = true;
	inv->handed_at = now_seconds();
	snprintf(r->last_id, sizeof(r->last_id), "%s", inv->request_id);
	r->state = RT_RUNNING;
	if (r->hooks.handed)
		r->hooks.handed(r->hooks.arg, inv->request_id);
	int e = reply_event(r, inv, resp);
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
	return e;
}

/* The outcome is in; wake the agent.  Called locked. */
static void complete_locked(struct rapi *r, struct rapi_invocation *inv)
{
	inv->done = true;
	inv->done_at = now_seconds();
	r->state = RT_RESPONDED;
	pthread_cond_broadcast(&r->cond);
}

/* The body of |q|: "" when the server refused it (on_server_error). */
static const uint8_t *body_of(const struct http_request *q) { return q->body ? q->body : (const uint8_t *)""; }

static int do_answer(struct rapi *r, const struct rapi_target *t, const struct http_request *q,
		     struct http_response *resp)
{
	bool is_error = t->route == RAPI_ROUTE_ERROR;
	const char *to = is_error ? "RuntimeInvocationErrorResponseState" : "RuntimeInvocationResponseState";
	if (t->id_invalid)
		return reply_error(resp, 400, "InvalidRequestID", "Invalid request ID");
	pthread_mutex_lock(&r->lock);
	if (!r->last_id[0] || strcmp(t->request_id, r->last_id) != 0) {
		pthread_mutex_unlock(&r->lock);
		return reply_error(resp, 400, "InvalidRequestID", "Invalid request ID");
	}
	struct rapi_invocation *inv = r->cur;
	if (!inv || !inv->handed || inv->done || strcmp(inv->request_id, t->request_id) != 0) {
		enum rt_state from = r->state;
		pthread_mutex_unlock(&r->lock);
		return reply_transition(resp, from, to);
	}
	int e = 0;
	if (!is_error) {
		const char *mode = http_request_header(q, "Lambda-Runtime-Function-Response-Mode");
		if (mode && strcmp(mode, "streaming") != 0) {
			inv->is_error = true;
			snprintf(inv->error_type, sizeof(inv->error_type), "Runtime.InvalidResponseModeHeader");
			char *j = ha_error_json(inv->error_type, "");
			inv->body = (uint8_t *)j;
			inv->body_len = j ? strlen(j) : 0;
			complete_locked(r, inv);
			pthread_mutex_unlock(&r->lock);
			return reply_error(resp, 400, "InvalidFunctionResponseMode", "Invalid function response mode");
		}
		if (q->body_total > HA_MAX_PAYLOAD) {
			inv->is_error = true;
			snprintf(inv->error_type, sizeof(inv->error_type), "Function.ResponseSizeTooLarge");
			char *j = ha_err_oversize(q->body_total);
			inv->body = (uint8_t *)j;
			inv->body_len = j ? strlen(j) : 0;
			complete_locked(r, inv);
			pthread_mutex_unlock(&r->lock);
			char msg[96];
			snprintf(msg, sizeof(msg), "Exceeded maximum allowed payload size (%u bytes).", HA_MAX_PAYLOAD);
			return reply_error(resp, 413, "RequestEntityTooLarge", msg);
		}
		uint8_t *copy = malloc(q->body_len + 1);
		if (copy) {
			memcpy(copy, body_of(q), q->body_len);
			copy[q->body_len] = '\0';
			inv->body = copy;
			inv->body_len = q->body_len;
			inv->is_error = false;
			complete_locked(r, inv);
		} else {
			e = -ENOMEM;
		}
	} else {
		inv->is_error = true;
		rapi_error_type(http_request_header(q, "Lambda-Runtime-Function-Error-Type"), inv->error_type,
				sizeof(inv->error_type));
		e = rapi_error_payload(body_of(q), q->body_len, inv->error_type, &inv->body, &inv->body_len);
		if (e == 0)
			complete_locked(r, inv);
	}
	pthread_mutex_unlock(&r->lock);
	if (e < 0) {
		log_warn("%s: out of memory for the runtime's answer", r->name);
		return reply_error(resp, 500, "InternalServerError", "Internal Server Error");
	}
	return reply_accepted(resp);
}

static int do_init_error(struct rapi *r, const struct http_request *q, struct http_response *resp)
{
	pthread_mutex_lock(&r->lock);
	if (r->first_next_at >= 0 || r->init_error) {
		enum rt_state from = r->state;
		pthread_mutex_unlock(&r->lock);
		return reply_transition(resp, from, "RuntimeInitErrorState");
	}
	rapi_error_type(http_request_header(q, "Lambda-Runtime-Function-Error-Type"), r->init_type, sizeof(r->init_type));
	int e = rapi_error_payload(body_of(q), q->body_len, r->init_type, &r->init_body, &r->init_len);
	if (e == 0) {
		r->init_error = true;
		r->state = RT_INIT_ERROR;
		pthread_cond_broadcast(&r->cond);
	}
	pthread_mutex_unlock(&r->lock);
	if (e < 0)
		return reply_error(resp, 500, "InternalServerError", "Internal Server Error");
	if (r->hooks.init_error)
		r->hooks.init_error(r->hooks.arg);
	return reply_accepted(resp);
}

/* Answer |q|, routed to |t|, unless it is /next: nothing here blocks. */
static int answer_now(struct rapi *r, const struct rapi_target *t, const struct http_request *q,
		      struct http_response *resp)
{
	switch (t->route) {
	case RAPI_ROUTE_RESPONSE:
	case RAPI_ROUTE_ERROR:
		return do_answer(r, t, q, resp);
	case RAPI_ROUTE_INIT_ERROR:
		return do_init_error(r, q, resp);
	case RAPI_ROUTE_BAD_METHOD:
		resp->status = 405;
		return 0;
	case RAPI_ROUTE_NEXT:
	case RAPI_ROUTE_NONE:
		break;
	}
	resp->status = 404;
	int e = http_response_add_header(resp, "Content-Type", "text/plain; charset=utf-8");
	return e ? e : http_response_set_body(resp, "404 page not found\n", 19);
}

static int handle(void *arg, const struct http_request *q, struct http_response *resp)
{
	struct rapi *r = arg;
	struct rapi_target t;
	rapi_route_parse(q->method, q->path, &t);
	return t.route == RAPI_ROUTE_NEXT ? do_next(r, resp) : answer_now(r, &t, q, resp);
}

/* Bodies of up to HA_MAX_PAYLOAD are read; the body of /next is read and
 * ignored.  Nothing is read for a path or method the API does not have:
 * the refusal comes to on_server_error, which answers 404 or 405. */
static size_t body_limit(void *arg, const struct http_request *q)
{
	(void)arg;
	struct rapi_target t;
	rapi_route_parse(q->method, q->path, &t);
	return t.route == RAPI_ROUTE_NONE || t.route == RAPI_ROUTE_BAD_METHOD ? 0 : HA_MAX_PAYLOAD;
}

/* The answers the server gives itself.  A body over the limit (413) is
 * answered as the route would answer it with an empty body and
 * q->body_total for its size, so that the request id and state are checked
 * first and an oversized response completes its invocation with
 * Function.ResponseSizeTooLarge (do_answer); /next and its body are
 * refused with 413 RequestEntityTooLarge. */
static void on_server_error(void *arg, const struct http_request *q, unsigned status, const char *reason,
			    size_t limit, struct http_response *resp)
{
	struct rapi *r = arg;
	int e;
	if (status == 413 && q->body_total <= limit) {
		/* Refused within the limit: the server had no memory for it. */
		e = reply_error(resp, 500, "InternalServerError", "Internal Server Error");
	} else if (status == 413) {
		struct rapi_target t;
		rapi_route_parse(q->method, q->path, &t);
		if (t.route == RAPI_ROUTE_NEXT) {
			char msg[96];
			snprintf(msg, sizeof(msg), "Exceeded maximum allowed payload size (%u bytes).", HA_MAX_PAYLOAD);
			e = reply_error(resp, 413, "RequestEntityTooLarge", msg);
		} else {
			e = answer_now(r, &t, q, resp);
		}
	} else if (status == 500) {
		e = reply_error(resp, 500, "InternalServerError", "Internal Server Error");
	} else {
		e = http_response_add_header(resp, "Content-Type", "text/plain; charset=utf-8");
		if (!e)
			e = http_response_set_body(resp, reason, strlen(reason));
	}
	if (e < 0)
		log_warn("%s: cannot fill in the %u answer to %s %s: %s; it goes out as it is", r->name, resp->status,
			 q->method, q->raw_path, strerror(-e));
}

static const struct http_server_ops rapi_server_ops = {
	.handle = handle,
	.body_limit = body_limit,
	.error = on_server_error,
};

/* Connections one endpoint serves at once: a runtime uses one or two. */
#define RAPI_CONNECTIONS 32u
/* How long the endpoint waits on a runtime between its requests: in effect
 * never (about 49 days), as Lambda's Runtime API does not cut a runtime's
 * connection either.  A runtime may keep a connection idle for as long as
 * its invocation runs (from /next to its answer) and then reuse it, and a
 * function's timeout has no bound here.  Nothing is lost: the runtime is
 * the only client, and it could hold the endpoint's threads in /next
 * anyway; every wait ends when the sandbox does, since its sockets close
 * with it. */
#define RAPI_IO_TIMEOUT_MS UINT_MAX

int rapi_serve(struct rapi *r, int fd)
{
	struct http_server_config cfg = {
		.ops = &rapi_server_ops,
		.arg = r,
		.max_connections = RAPI_CONNECTIONS,
		.max_body = HA_MAX_PAYLOAD,
		.io_timeout_ms = RAPI_IO_TIMEOUT_MS,
		.name = r->name,
	};
	struct http_server *h = NULL;
	int e = http_server_start_fd(&cfg, fd, &h);
	if (e < 0)
		return e;
	pthread_mutex_lock(&r->lock);
	bool ended = r->ended;
	if (!ended)
		r->server = h;
	pthread_mutex_unlock(&r->lock);
	if (ended) {
		http_server_free(h);
		return -ESHUTDOWN;
	}
	return 0;
}

void rapi_end(struct rapi *r)
{
	pthread_mutex_lock(&r->lock);
	r->ended = true;
	struct http_server *h = r->server;
	r->server = NULL;
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
	/* Every handler that waits has been woken and answers; stopping waits
	 * for those answers to go out and joins the server's threads. */
	http_server_free(h);
}

void rapi_free(struct rapi *r)
{
	if (!r)
		return;
	rapi_end(r);
	free(r->init_body);
	pthread_cond_destroy(&r->cond);
	pthread_mutex_destroy(&r->lock);
	free(r);
}

/* ---- the agent's side -------------------------------------------------------------------------------------------- */

int rapi_assign(struct rapi *r, struct rapi_invocation *inv)
{
	pthread_mutex_lock(&r->lock);
	int e = r->ended ? -ESHUTDOWN : r->cur ? -EBUSY : 0;
	if (e == 0) {
		inv->handed = inv->done = inv->released = inv->is_error = false;
		inv->body = NULL;
		inv->body_len = 0;
		inv->error_type[0] = '\0';
		r->cur = inv;
		pthread_cond_broadcast(&r->cond);
	}
	pthread_mutex_unlock(&r->lock);
	return e;
}

static void deadline_ts(double t, struct timespec *ts)
{
	double whole = (double)(int64_t)t;
	ts->tv_sec = (time_t)whole;
	ts->tv_nsec = (long)((t - whole) * 1e9);
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

enum rapi_outcome rapi_wait(struct rapi *r, struct rapi_invocation *inv, double take_deadline)
{
	enum rapi_outcome o;
	pthread_mutex_lock(&r->lock);
	for (;;) {
		if (inv->done) {
			o = RAPI_DONE;
			break;
		}
		if (r->init_error && !inv->handed) {
			o = RAPI_INIT_ERROR;
			inv->is_error = true;
			snprintf(inv->error_type, sizeof(inv->error_type), "%s", r->init_type);
			inv->body = malloc(r->init_len + 1);
			if (inv->body) {
				memcpy(inv->body, r->init_body, r->init_len);
				inv->body[r->init_len] = '\0';
				inv->body_len = r->init_len;
			}
			break;
		}
		if (r->ended) {
			o = RAPI_ENDED;
			break;
		}
		double deadline = inv->handed ? inv->handed_at + inv->timeout_s : take_deadline;
		if (now_seconds() >= deadline) {
			o = RAPI_TIMEOUT;
			break;
		}
		struct timespec ts;
		deadline_ts(deadline, &ts);
		pthread_cond_timedwait(&r->cond, &r->lock, &ts);
	}
	inv->released = true;
	if (r->cur == inv)
		r->cur = NULL;
	pthread_mutex_unlock(&r->lock);
	return o;
}

double rapi_first_next_at(struct rapi *r)
{
	pthread_mutex_lock(&r->lock);
	double t = r->first_next_at;
	pthread_mutex_unlock(&r->lock);
	return t;
}
