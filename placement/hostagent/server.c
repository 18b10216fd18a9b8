/* The agent's HTTP API (`kindling agent`): what frontends call to run
 * invocations on this host, on common/http_server.  The wire format is
 * wire.c's; the README's "agent" section lists the routes. */
#include "placement/hostagent/internal.h"

#include "common/http_server.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct hostagent_server {
	struct hostagent *a;
	struct http_server *http;
};

/* Answer |resp| with the refusal for |err|: its status, the marker in
 * HA_H_ERROR and {"error": marker, "message": |message|}. */
static int refuse(struct http_response *resp, int err, const char *message)
{
	unsigned status;
	const char *marker;
	ha_wire_status(err, &status, &marker);
	resp->status = status;
	json_t *j = json_pack("{s:s,s:s}", "error", marker, "message", message ? message : strerror(-err));
	char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	if (!s)
		return -ENOMEM;
	http_response_take_body(resp, s, strlen(s));
	int r = http_response_add_header(resp, HA_H_ERROR, marker);
	return r < 0 ? r : http_response_add_header(resp, "Content-Type", "application/json");
}

static bool flag(const struct http_request *req, const char *name)
{
	const char *v = http_request_header(req, name);
	return v && strcmp(v, "1") == 0;
}

static int add_double(struct http_response *resp, const char *name, double v)
{
	char buf[64];
	snprintf(buf, sizeof(buf), "%.6f", v);
	return http_response_add_header(resp, name, buf);
}

static int handle_invoke(struct hostagent_server *s, const struct http_request *req, struct http_response *resp)
{
	char err[256];
	struct ha_wire_function w;
	int r = ha_wire_function_parse(http_request_header(req, HA_H_FUNCTION), &w, err, sizeof(err));
	if (r < 0) {
		ha_wire_function_cleanup(&w);
		if (r != -EINVAL)
			return r;
		char *m = xasprintf("%s: %s", HA_H_FUNCTION, err);
		r = refuse(resp, -EINVAL, m ? m : err);
		free(m);
		return r;
	}
	const char *id = http_request_header(req, HA_H_REQUEST_ID);
	if (!ha_token_ok(id, HA_REQUEST_ID_MAX, false)) {
		ha_wire_function_cleanup(&w);
		return refuse(resp, -EINVAL, HA_H_REQUEST_ID " must be 1 to 128 printable characters without '/'");
	}
	struct hostagent_invoke_request ir = {
		.fn = &w.f,
		.payload = req->body,
		.payload_len = req->body_len,
		.request_id = id,
		.trace_id = http_request_header(req, HA_H_TRACE_ID),
		.client_context = http_request_header(req, HA_H_CLIENT_CONTEXT),
		.want_log_tail = flag(req, HA_H_WANT_TAIL),
		.warm_only = flag(req, HA_H_WARM_ONLY),
	};
	struct hostagent_invoke_result out;
	r = hostagent_invoke(s->a, &ir, &out);
	ha_wire_function_cleanup(&w);
	if (r < 0) {
		hostagent_invoke_result_cleanup(&out);
		return refuse(resp, r, r == -EINVAL ? "the invocation request is not valid (see the agent's log)" : NULL);
	}
	char *tail = NULL;
	if (out.log_tail) {
		json_t *t = json_string(out.log_tail);
		if (!t) { /* not UTF-8: a function may print any bytes; keep the ASCII ones */
			for (char *c = out.log_tail; *c; c++)
				if ((unsigned char)*c >= 0x80)
					*c = '?';
			t = json_string(out.log_tail);
		}
		tail = t ? json_dumps(t, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_ENCODE_ANY) : NULL;
		json_decref(t);
	}
	char mem[32];
	snprintf(mem, sizeof(mem), "%llu", (unsigned long long)out.max_memory);
	if ((r = http_response_add_header(resp, HA_H_OUTCOME, out.outcome == HOSTAGENT_OK ? "ok" : "error")) < 0 ||
	    (r = http_response_add_header(resp, HA_H_COLD, out.cold ? "1" : "0")) < 0 ||
	    (r = add_double(resp, HA_H_INIT_S, out.init_s)) < 0 ||
	    (r = add_double(resp, HA_H_DURATION_S, out.duration_s)) < 0 ||
	    (r = http_response_add_header(resp, HA_H_MAX_MEMORY, mem)) < 0 ||
	    (tail && (r = http_response_add_header(resp, HA_H_LOG_TAIL, tail)) < 0)) {
		free(tail);
		hostagent_invoke_result_cleanup(&out);
		return r;
	}
	free(tail);
	http_response_take_body(resp, out.payload, out.payload_len);
	out.payload = NULL;
	hostagent_invoke_result_cleanup(&out);
	return 0;
}

static int handle_provision(struct hostagent_server *s, const struct http_request *req, struct http_response *resp)
{
	char err[256];
	struct ha_wire_function w;
	unsigned n = 0;
	int r = ha_wire_provision_parse(req->body, req->body_len, &w, &n, err, sizeof(err));
	if (r == 0)
		r = hostagent_provision(s->a, &w.f, n);
	else if (r == -EINVAL) {
		ha_wire_function_cleanup(&w);
		return refuse(resp, r, err);
	}
	ha_wire_function_cleanup(&w);
	if (r < 0)
		return refuse(resp, r, r == -EINVAL ? "the agent refused it (see its log)" : NULL);
	return http_response_set_body(resp, "{}", 2);
}

static int handle_drain(struct hostagent_server *s, const struct http_request *req, struct http_response *resp)
{
	char err[256];
	void *root = NULL;
	const char *name = NULL, *version = NULL, *keep = NULL;
	int r = ha_wire_drain_parse(req->body, req->body_len, &root, &name, &version, &keep, err, sizeof(err));
	if (r == 0)
		hostagent_drain(s->a, name, version, keep);
	json_decref(root);
	if (r < 0)
		return refuse(resp, r, err);
	return http_response_set_body(resp, "{}", 2);
}

/* Answer |resp| with the JSON object |j| (a reference taken here). */
static int answer_json(struct http_response *resp, json_t *j)
{
	char *t = j ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	if (!t)
		return -ENOMEM;
	http_response_take_body(resp, t, strlen(t));
	return http_response_add_header(resp, "Content-Type", "application/json");
}

/* SnapStart: boot the function, snapshot it, store the snapshot as the
 * body's name.  Blocks for all of that (minutes at most). */
static int handle_snapshot(struct hostagent_server *s, const struct http_request *req, struct http_response *resp)
{
	char err[256];
	struct ha_wire_function w;
	const char *name = NULL;
	int r = ha_wire_snapshot_parse(req->body, req->body_len, &w, &name, err, sizeof(err));
	if (r < 0) {
		ha_wire_function_cleanup(&w);
		return r == -EINVAL ? refuse(resp, r, err) : r;
	}
	char digest[65] = "", why[400] = "";
	r = hostagent_snapshot(s->a, &w.f, name, digest, why, sizeof(why));
	ha_wire_function_cleanup(&w);
	if (r < 0)
		return refuse(resp, r, why[0] ? why : NULL);
	return answer_json(resp, json_pack("{s:s}", "digest", digest));
}

/* What the agent can do, for a frontend deciding whether SnapStart can be
 * configured. */
static int handle_info(struct hostagent_server *s, struct http_response *resp)
{
	char why[256] = "";
	bool snap = hostagent_snapshot_supported(s->a, why, sizeof(why));
	return answer_json(resp, json_pack("{s:s,s:b,s:s?}", "isolation", hostagent_isolation(s->a), "snapshot", snap,
					   "snapshot_why", snap ? NULL : why));
}

static int handle_stats(struct hostagent_server *s, struct http_response *resp)
{
	struct hostagent_stats st;
	hostagent_get_stats(s->a, &st);
	json_t *j = json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "memory_budget",
			      (json_int_t)st.memory_budget, "memory_in_use", (json_int_t)st.memory_in_use, "sandboxes",
			      (json_int_t)st.sandboxes, "starting", (json_int_t)st.starting, "busy", (json_int_t)st.busy,
			      "idle", (json_int_t)st.idle, "provisioned", (json_int_t)st.provisioned, "cold_starts",
			      (json_int_t)st.cold_starts, "warm_starts", (json_int_t)st.warm_starts, "evictions",
			      (json_int_t)st.evictions, "expirations", (json_int_t)st.expirations);
	return answer_json(resp, j);
}

static int handle_logs(struct hostagent_server *s, const struct http_request *req, const char *name,
		       struct http_response *resp)
{
	struct http_param *params = NULL;
	size_t n = 0;
	int r = http_query_parse(req->query, 16, &params, &n);
	if (r < 0)
		return refuse(resp, -EINVAL, "the query does not parse");
	uint64_t max = 1u << 20;
	const char *b = http_param_get(params, n, "bytes");
	if (b && (parse_size(b, &max) < 0 || max == 0 || max > (64u << 20))) {
		http_params_free(params, n);
		return refuse(resp, -EINVAL, "bytes must be a size from 1 to 64M");
	}
	http_params_free(params, n);
	char *log = NULL;
	size_t len = 0;
	r = hostagent_read_log(s->a, name, (size_t)max, &log, &len);
	if (r == -EINVAL)
		return refuse(resp, r, "the function name must be 1 to 64 letters, digits, '-' or '_'");
	if (r < 0)
		return refuse(resp, r, r == -ENOENT ? "the function never ran on this host" : NULL);
	http_response_take_body(resp, log, len);
	return http_response_add_header(resp, "Content-Type", "text/plain; charset=utf-8");
}

static int handle(void *arg, const struct http_request *req, struct http_response *resp)
{
	struct hostagent_server *s = arg;
	bool get = strcmp(req->method, "GET") == 0, post = strcmp(req->method, "POST") == 0;
	const char *p = req->path;
	if (strcmp(p, "/healthz") == 0 && get)
		return http_response_set_body(resp, "ok\n", 3);
	if (strcmp(p, "/v1/invoke") == 0 && post)
		return handle_invoke(s, req, resp);
	if (strcmp(p, "/v1/provision") == 0 && post)
		return handle_provision(s, req, resp);
	if (strcmp(p, "/v1/drain") == 0 && post)
		return handle_drain(s, req, resp);
	if (strcmp(p, "/v1/snapshot") == 0 && post)
		return handle_snapshot(s, req, resp);
	if (strcmp(p, "/v1/stats") == 0 && get)
		return handle_stats(s, resp);
	if (strcmp(p, "/v1/info") == 0 && get)
		return handle_info(s, resp);
	if (strncmp(p, "/v1/logs/", 9) == 0 && get)
		return handle_logs(s, req, p + 9, resp);
	bool known = strcmp(p, "/healthz") == 0 || strcmp(p, "/v1/invoke") == 0 || strcmp(p, "/v1/provision") == 0 ||
		     strcmp(p, "/v1/drain") == 0 || strcmp(p, "/v1/snapshot") == 0 || strcmp(p, "/v1/stats") == 0 ||
		     strcmp(p, "/v1/info") == 0 || strncmp(p, "/v1/logs/", 9) == 0;
	resp->status = known ? 405 : 404;
	const char *m = known ? "method not allowed\n" : "no such route (the agent serves /v1/invoke, /v1/provision, "
							 "/v1/drain, /v1/snapshot, /v1/stats, /v1/info, "
							 "/v1/logs/NAME, /healthz)\n";
	return http_response_set_body(resp, m, strlen(m));
}

static size_t body_limit(void *arg, const struct http_request *req)
{
	(void)arg;
	return strcmp(req->path, "/v1/invoke") == 0 ? HA_MAX_PAYLOAD : HA_WIRE_MAX_JSON;
}

static const struct http_server_ops server_ops = {
	.handle = handle,
	.body_limit = body_limit,
};

int hostagent_server_start(struct hostagent *a, const char *listen, struct hostagent_server **out)
{
	struct hostagent_server *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->a = a;
	struct http_server_config cfg = {
		.ops = &server_ops,
		.arg = s,
		.max_header_bytes = HA_WIRE_MAX_HEADERS,
		.max_body = HA_MAX_PAYLOAD,
		/* Frontends keep connections open between invocations. */
		.io_timeout_ms = 120000,
		.name = "host agent api",
	};
	int r = http_server_start(&cfg, listen, &s->http);
	if (r < 0) {
		free(s);
		return r;
	}
	*out = s;
	return 0;
}

const char *hostagent_server_address(const struct hostagent_server *s)
{
	return http_server_address(s->http);
}

void hostagent_server_free(struct hostagent_server *s)
{
	if (!s)
		return;
	http_server_free(s->http);
	free(s);
}
