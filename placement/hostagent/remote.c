/* A remote host agent as a struct hostagent_ops: the agent's HTTP API
 * (server.c, wire.c) through common/http_client, with a pool of clients so
 * that many invocations run at once over kept-alive connections. */
#include "placement/hostagent/internal.h"

#include "common/http_client.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The time every call but invoke may take, by default. */
#define REMOTE_DEFAULT_TIMEOUT_MS 10000u
/* Beyond the function's own time: an image attach and a sandbox start. */
#define REMOTE_COLD_MARGIN_MS 60000u
#define REMOTE_WARM_MARGIN_MS 15000u
/* Idle clients kept for reuse. */
#define REMOTE_POOL_MAX 64u

struct hostagent_remote {
	char *url; /* no trailing '/' */
	unsigned timeout_ms;
	pthread_mutex_t lock;
	struct http_client *idle[REMOTE_POOL_MAX];
	size_t n_idle;
};

int hostagent_remote_new(const char *url, unsigned timeout_ms, struct hostagent_remote **out)
{
	size_t n = url ? strlen(url) : 0;
	bool ok = n > 7 && n < 1024 && (strncmp(url, "http://", 7) == 0 || strncmp(url, "https://", 8) == 0);
	for (size_t i = 0; ok && i < n; i++)
		ok = (unsigned char)url[i] > 0x20 && (unsigned char)url[i] < 0x7f;
	if (!ok) {
		log_err("host agent URL '%s' is not valid: give http://HOST:PORT", url ? url : "(none)");
		return -EINVAL;
	}
	struct hostagent_remote *h = calloc(1, sizeof(*h));
	if (!h || !(h->url = strdup(url))) {
		free(h);
		return -ENOMEM;
	}
	while (n > 0 && h->url[n - 1] == '/')
		h->url[--n] = '\0';
	h->timeout_ms = timeout_ms ? timeout_ms : REMOTE_DEFAULT_TIMEOUT_MS;
	pthread_mutex_init(&h->lock, NULL);
	*out = h;
	return 0;
}

void hostagent_remote_free(struct hostagent_remote *h)
{
	if (!h)
		return;
	for (size_t i = 0; i < h->n_idle; i++)
		http_client_free(h->idle[i]);
	pthread_mutex_destroy(&h->lock);
	free(h->url);
	free(h);
}

static struct http_client *take(struct hostagent_remote *h)
{
	struct http_client *c = NULL;
	pthread_mutex_lock(&h->lock);
	if (h->n_idle)
		c = h->idle[--h->n_idle];
	pthread_mutex_unlock(&h->lock);
	if (!c && http_client_new(&c) < 0)
		return NULL;
	return c;
}

static void give_back(struct hostagent_remote *h, struct http_client *c)
{
	pthread_mutex_lock(&h->lock);
	if (h->n_idle < REMOTE_POOL_MAX) {
		h->idle[h->n_idle++] = c;
		c = NULL;
	}
	pthread_mutex_unlock(&h->lock);
	http_client_free(c);
}

/* One exchange with the agent.  Transport errors become the hostagent_ops
 * ones: -ENOTCONN when nothing took the request (refused), -ECONNRESET for
 * the rest (a reset, a timeout, a broken reply: the agent may have acted
 * on it).  Returns 0 with |*resp| (any status), or that -errno. */
static int exchange(struct hostagent_remote *h, const char *method, const char *path,
		    const struct http_header *headers, size_t n_headers, const void *body, size_t len,
		    unsigned timeout_ms, size_t max_body, struct http_client_response *resp)
{
	memset(resp, 0, sizeof(*resp));
	char *url = xasprintf("%s%s", h->url, path);
	struct http_client *c = url ? take(h) : NULL;
	if (!c) {
		free(url);
		return -ENOMEM;
	}
	int r = http_client_request(c, method, url, headers, n_headers, body, len, timeout_ms, max_body, resp);
	free(url);
	if (r == 0) {
		give_back(h, c);
		return 0;
	}
	http_client_free(c); /* its connection is in an unknown state */
	http_client_response_cleanup(resp);
	if (r == -ENOMEM)
		return r;
	if (r == -EINVAL) {
		log_err("host agent %s: %s %s: the URL is not valid", h->url, method, path);
		return r;
	}
	if (r == -ECONNREFUSED)
		return -ENOTCONN;
	log_warn("host agent %s: %s %s: %s", h->url, method, path,
		 r == -ETIMEDOUT	? "no answer in time (is the host overloaded or gone?)"
		 : r == -EMSGSIZE ? "the answer is larger than any agent sends"
				  : "the connection broke before the answer (did the agent die?)");
	return -ECONNRESET;
}

/* The error an answer other than 200 stands for (logged when it is not the
 * agent's own refusal). */
static int refusal(struct hostagent_remote *h, const char *what, const struct http_client_response *resp)
{
	int r = ha_wire_errno(http_client_response_header(resp, HA_H_ERROR));
	if (r == -EPROTO)
		log_err("host agent %s: %s: HTTP %ld without the agent's error marker: is %s a kindling agent?", h->url,
			what, resp->status, h->url);
	else if (r == -EINVAL || r == -EIO)
		log_err("host agent %s: %s refused: %.*s", h->url, what, (int)(resp->body_len > 512 ? 512 : resp->body_len),
			resp->body ? resp->body : "");
	return r;
}

/* The errors only a snapshot gives are, for invoke and provision, the
 * agent's other failures (-EIO), as their contract says. */
static int invoke_error(int r)
{
	return r == -ENOTSUP || r == -ETIMEDOUT || r == -ECHILD ? -EIO : r;
}

static double header_double(const struct http_client_response *resp, const char *name)
{
	const char *v = http_client_response_header(resp, name);
	char *end;
	double d = v ? strtod(v, &end) : 0;
	return v && end != v && d >= 0 && d < 1e9 ? d : 0;
}

static int remote_invoke(void *arg, const struct hostagent_invoke_request *req, struct hostagent_invoke_result *out)
{
	struct hostagent_remote *h = arg;
	memset(out, 0, sizeof(*out));
	if (!req || !req->fn || !req->request_id || (req->payload_len && !req->payload))
		return -EINVAL;
	if (!ha_token_ok(req->request_id, HA_REQUEST_ID_MAX, false)) {
		log_err("invocation for host agent %s: the request id must be 1 to %d printable characters without '/'",
			h->url, HA_REQUEST_ID_MAX);
		return -EINVAL;
	}
	char *spec = ha_wire_function_json(req->fn);
	if (!spec)
		return -ENOMEM;
	struct http_header hdr[8];
	size_t n = 0;
	hdr[n++] = (struct http_header){ HA_H_FUNCTION, spec };
	hdr[n++] = (struct http_header){ HA_H_REQUEST_ID, req->request_id };
	hdr[n++] = (struct http_header){ "Content-Type", "application/octet-stream" };
	if (req->trace_id && *req->trace_id)
		hdr[n++] = (struct http_header){ HA_H_TRACE_ID, req->trace_id };
	if (req->client_context && *req->client_context)
		hdr[n++] = (struct http_header){ HA_H_CLIENT_CONTEXT, req->client_context };
	if (req->want_log_tail)
		hdr[n++] = (struct http_header){ HA_H_WANT_TAIL, "1" };
	if (req->warm_only)
		hdr[n++] = (struct http_header){ HA_H_WARM_ONLY, "1" };
	/* A cold start may wait the function's timeout for the runtime's first
	 * /next, then the invocation its timeout again. */
	uint64_t t = (uint64_t)req->fn->timeout_s * 1000u;
	t = req->warm_only ? t + REMOTE_WARM_MARGIN_MS : 2 * t + REMOTE_COLD_MARGIN_MS;
	struct http_client_response resp;
	int r = exchange(h, "POST", "/v1/invoke", hdr, n, req->payload, req->payload_len,
			 t > UINT32_MAX ? UINT32_MAX : (unsigned)t, HA_MAX_PAYLOAD + 4096, &resp);
	free(spec);
	if (r < 0)
		return r;
	if (resp.status != 200) {
		r = invoke_error(refusal(h, "invoke", &resp));
		http_client_response_cleanup(&resp);
		return r;
	}
	const char *outcome = http_client_response_header(&resp, HA_H_OUTCOME);
	if (!outcome || (strcmp(outcome, "ok") != 0 && strcmp(outcome, "error") != 0)) {
		log_err("host agent %s: an invocation's answer has no %s: is it a kindling agent?", h->url, HA_H_OUTCOME);
		http_client_response_cleanup(&resp);
		return -ECONNRESET; /* it took the invocation; what became of it is unknown */
	}
	out->outcome = strcmp(outcome, "ok") == 0 ? HOSTAGENT_OK : HOSTAGENT_FUNCTION_ERROR;
	const char *cold = http_client_response_header(&resp, HA_H_COLD);
	out->cold = cold && strcmp(cold, "1") == 0;
	out->init_s = header_double(&resp, HA_H_INIT_S);
	out->duration_s = header_double(&resp, HA_H_DURATION_S);
	const char *mem = http_client_response_header(&resp, HA_H_MAX_MEMORY);
	out->max_memory = mem ? strtoull(mem, NULL, 10) : 0;
	out->log_tail = ha_wire_json_string(http_client_response_header(&resp, HA_H_LOG_TAIL));
	out->payload = (uint8_t *)resp.body; /* NUL-terminated, as the local agent's */
	out->payload_len = resp.body_len;
	resp.body = NULL;
	if (!out->payload && (out->payload = malloc(1)))
		out->payload[0] = '\0';
	http_client_response_cleanup(&resp);
	if (!out->payload) {
		hostagent_invoke_result_cleanup(out);
		return -ENOMEM;
	}
	return 0;
}

/* POST the JSON |body| (malloc'd, NULL if it could not be made; freed here)
 * to |path|: 0 on a 200, else the error. */
static int post_json(struct hostagent_remote *h, const char *path, const char *what, char *body)
{
	if (!body)
		return -ENOMEM;
	struct http_header hdr[] = { { "Content-Type", "application/json" } };
	struct http_client_response resp;
	int r = exchange(h, "POST", path, hdr, 1, body, strlen(body), h->timeout_ms, HA_WIRE_MAX_JSON, &resp);
	free(body);
	if (r == 0 && resp.status != 200)
		r = refusal(h, what, &resp);
	http_client_response_cleanup(&resp);
	return r;
}

static int remote_provision(void *arg, const struct hostagent_function *fn, unsigned n)
{
	char *spec = ha_wire_function_json(fn);
	char *body = spec ? xasprintf("{\"function\":%s,\"n\":%u}", spec, n) : NULL;
	free(spec);
	return invoke_error(post_json(arg, "/v1/provision", "provision", body));
}

static void remote_drain(void *arg, const char *name, const char *version, const char *keep_revision)
{
	struct hostagent_remote *h = arg;
	json_t *j = json_pack("{s:s,s:s?,s:s?}", "name", name, "version", version, "keep_revision", keep_revision);
	char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	int r = post_json(h, "/v1/drain", "drain", body);
	if (r < 0)
		log_warn("host agent %s: drain of %s did not go through (%s): its old sandboxes end when they expire",
			 h->url, name ? name : "?", strerror(-r));
}

static uint64_t field(json_t *j, const char *key)
{
	json_int_t v = json_integer_value(json_object_get(j, key));
	return v > 0 ? (uint64_t)v : 0;
}

static void remote_get_stats(void *arg, struct hostagent_stats *out)
{
	struct hostagent_remote *h = arg;
	memset(out, 0, sizeof(*out));
	struct http_client_response resp;
	int r = exchange(h, "GET", "/v1/stats", NULL, 0, NULL, 0, h->timeout_ms, HA_WIRE_MAX_JSON, &resp);
	json_t *j = r == 0 && resp.status == 200 ? json_loadb(resp.body, resp.body_len, 0, NULL) : NULL;
	if (!json_is_object(j)) {
		if (r == 0)
			log_warn("host agent %s: its stats did not come (HTTP %ld)", h->url, resp.status);
	} else {
		out->memory_budget = field(j, "memory_budget");
		out->memory_in_use = field(j, "memory_in_use");
		out->sandboxes = (unsigned)field(j, "sandboxes");
		out->starting = (unsigned)field(j, "starting");
		out->busy = (unsigned)field(j, "busy");
		out->idle = (unsigned)field(j, "idle");
		out->provisioned = (unsigned)field(j, "provisioned");
		out->cold_starts = field(j, "cold_starts");
		out->warm_starts = field(j, "warm_starts");
		out->evictions = field(j, "evictions");
		out->expirations = field(j, "expirations");
	}
	json_decref(j);
	http_client_response_cleanup(&resp);
}

static int remote_read_log(void *arg, const char *name, size_t max, char **out, size_t *out_len)
{
	struct hostagent_remote *h = arg;
	*out = NULL;
	*out_len = 0;
	if (!name || !ha_wire_name_ok(name) || max == 0)
		return -EINVAL;
	if (max > (64u << 20))
		max = 64u << 20;
	char path[HA_NAME_MAX + 64];
	snprintf(path, sizeof(path), "/v1/logs/%s?bytes=%zu", name, max);
	struct http_client_response resp;
	int r = exchange(h, "GET", path, NULL, 0, NULL, 0, h->timeout_ms, max + 1, &resp);
	if (r == 0 && resp.status != 200)
		r = refusal(h, "read log", &resp);
	if (r == 0) {
		*out = resp.body ? resp.body : strdup("");
		*out_len = resp.body ? resp.body_len : 0;
		resp.body = NULL;
		if (!*out)
			r = -ENOMEM;
	}
	http_client_response_cleanup(&resp);
	return r;
}

/* The message of the agent's refusal body ({"error","message"}), or
 * |fallback|, into |<why, why_len>|. */
static void refusal_message(const struct http_client_response *resp, const char *fallback, char *why, size_t why_len)
{
	json_t *j = resp->body ? json_loadb(resp->body, resp->body_len, 0, NULL) : NULL;
	const char *m = json_string_value(json_object_get(j, "message"));
	snprintf(why, why_len, "%s", m && *m ? m : fallback);
	json_decref(j);
}

static bool remote_snapshot_supported(void *arg, char *why, size_t len)
{
	struct hostagent_remote *h = arg;
	struct http_client_response resp;
	int r = exchange(h, "GET", "/v1/info", NULL, 0, NULL, 0, h->timeout_ms, HA_WIRE_MAX_JSON, &resp);
	bool snap = false;
	char err[256] = "";
	if (r < 0)
		snprintf(why, len, "the host agent at %s cannot be reached (%s): is kindling agent running there?",
			 h->url, strerror(-r));
	else if (resp.status != 200)
		snprintf(why, len, "the host agent at %s answered GET /v1/info with HTTP %ld: is it a kindling agent "
			 "of this version?", h->url, resp.status);
	else if (ha_wire_info_parse((const uint8_t *)resp.body, resp.body_len, &snap, why, len, err, sizeof(err)) < 0)
		snprintf(why, len, "the host agent at %s answered GET /v1/info with what is not its info (%s)", h->url,
			 err);
	http_client_response_cleanup(&resp);
	return snap;
}

static int remote_snapshot(void *arg, const struct hostagent_function *fn, const char *name, char digest[65],
			   char *why, size_t why_len)
{
	struct hostagent_remote *h = arg;
	digest[0] = '\0';
	char *spec = ha_wire_function_json(fn);
	json_t *body = spec ? json_pack("{s:o,s:s}", "function", json_loads(spec, 0, NULL), "name", name) : NULL;
	char *text = body ? json_dumps(body, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
	json_decref(body);
	free(spec);
	if (!text) {
		snprintf(why, why_len, "no memory for the snapshot request");
		return -ENOMEM;
	}
	/* The agent gives the runtime's init 300 s plus the function's timeout,
	 * then snapshots and stores the memory: allow for that. */
	uint64_t t = (300u + (uint64_t)fn->timeout_s) * 1000u + 2 * REMOTE_COLD_MARGIN_MS;
	struct http_header hdr[] = { { "Content-Type", "application/json" } };
	struct http_client_response resp;
	int r = exchange(h, "POST", "/v1/snapshot", hdr, 1, text, strlen(text), (unsigned)t, HA_WIRE_MAX_JSON, &resp);
	free(text);
	char err[256];
	if (r < 0) {
		snprintf(why, why_len, "the host agent at %s %s", h->url,
			 r == -ENOTCONN ? "cannot be reached (is kindling agent running there?)"
					: "was lost while it took the snapshot (see its log)");
	} else if (resp.status != 200) {
		r = ha_wire_errno(http_client_response_header(&resp, HA_H_ERROR));
		if (r == -EPROTO)
			snprintf(why, why_len, "the host agent at %s answered HTTP %ld without its error marker: is it "
				 "a kindling agent of this version?", h->url, resp.status);
		else
			refusal_message(&resp, strerror(-r), why, why_len);
		log_err("host agent %s: snapshot %s of %s:%s: %s", h->url, name, fn->name, fn->version, why);
	} else if (ha_wire_snapshot_answer_parse((const uint8_t *)resp.body, resp.body_len, digest, err,
						 sizeof(err)) < 0) {
		r = -EPROTO;
		snprintf(why, why_len, "the host agent at %s answered the snapshot with what is not its answer (%s)",
			 h->url, err);
		log_err("host agent %s: snapshot %s: %s", h->url, name, why);
	}
	http_client_response_cleanup(&resp);
	return r;
}

const struct hostagent_ops hostagent_remote_ops = {
	.invoke = remote_invoke,
	.provision = remote_provision,
	.drain = remote_drain,
	.get_stats = remote_get_stats,
	.read_log = remote_read_log,
	.snapshot_supported = remote_snapshot_supported,
	.snapshot = remote_snapshot,
};
