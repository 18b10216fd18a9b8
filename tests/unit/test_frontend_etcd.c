/* The frontend on etcd: two frontends in this process sharing a real
 * 3-member etcd cluster (tests/tools/etcd.sh, ports 25100-25899).
 *
 *  - records: two threads, one per frontend, each increment a counter in one
 *    record 40 times through fe_record_load/fe_record_save (compare and swap,
 *    redone on -EAGAIN): it ends at exactly 80; concurrent
 *    UpdateFunctionConfiguration calls on both all answer 200;
 *  - fleet-wide reserved concurrency: with ReservedConcurrency 4, six
 *    blocked invokes on each frontend admit 4 in total, the other 8 get 429
 *    ReservedFunctionConcurrentInvocationLimitExceeded; with no reservation
 *    and an account limit of 5, 5 are admitted and the rest get
 *    ConcurrentInvocationLimitExceeded;
 *  - revoking a frontend's lease removes its holdings; it takes a new lease
 *    by itself and invokes again;
 *  - an Event accepted and claimed by frontend A, A freed without
 *    delivering it: frontend B delivers it;
 *  - an Event failing 3 times is a dead letter in kindling/dlq/ (with
 *    Attempts 3), listed by frontend_dlq_etcd_list;
 *  - SnapStart state in etcd: a published SnapStart version is Pending in
 *    its record in etcd; a frontend stopped while the snapshot runs
 *    (the agent answers -ESHUTDOWN) leaves it Pending there, and the next
 *    frontend to start re-queues it and records Active with the
 *    snapshot's digest; a snapshot that fails records Failed with the step
 *    (StateReason "SnapStart: ...", FunctionError); an agent that cannot
 *    snapshot refuses ApplyOn PublishedVersions;
 *  - the fleet router's SnapStart (frontend_router_ops), with two fake
 *    agents and a fake placement service on loopback: with only a host
 *    whose registration says "snapshot": false, snapshot_supported is
 *    false naming --isolation microvm; once a "snapshot": true host
 *    registers, the snapshot is placed with the other excluded and taken
 *    there (its digest comes back); a placement that answers busy twice
 *    is asked again and the snapshot taken, one busy past the router's
 *    bound fails -EBUSY saying so; an agent lost mid-call (connection
 *    reset unanswered) twice gets the snapshot placed again and taken on
 *    the third try, one lost on every try fails -EHOSTUNREACH after the
 *    bound, naming the agent; an agent's refusal comes back at once with
 *    its errno and message, and a cold start of a version that restores a
 *    snapshot goes to the capable host while one that boots may go to
 *    either;
 *  - every etcd member killed: warm invokes keep answering 200 from the
 *    record cache and the holdings, Event invokes get 503 ServiceException;
 *    members back: an Event is accepted and delivered again.
 *
 * The host agent is test_agent_ops below, a test double: the real agents
 * are tested elsewhere; here only what the frontend hands them matters.
 * The process forks: the parent runs the cluster and stops it whatever the
 * child did.
 */
#include "frontend/internal.h"

#include "common/etcd.h"
#include "common/http_server.h"
#include "placement/hostagent/hostagent.h"
#include "tests/check.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *workdir;

static int sh_etcd(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh_etcd(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *cmd = NULL;
	if (vasprintf(&cmd, fmt, ap) < 0)
		cmd = NULL;
	va_end(ap);
	if (!cmd)
		return -1;
	char *full = xasprintf("bash -c '. \"$KINDLING_SOURCE_DIR/tests/tools/etcd.sh\" && %s'", cmd);
	free(cmd);
	fflush(NULL);
	int st = full ? system(full) : -1;
	free(full);
	return st == -1 || !WIFEXITED(st) ? -1 : WEXITSTATUS(st);
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

/* ---- test_agent_ops: a host agent test double ---------------------------------------------------------------------- */

enum agent_mode { AGENT_OK, AGENT_BUSY, AGENT_FAIL, AGENT_GATE };

/* What the double's SnapStart snapshots do. */
enum snap_mode { SNAP_OK, SNAP_FAIL, SNAP_SHUTDOWN, SNAP_UNSUPPORTED };

#define SNAP_DIGEST "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"

struct test_agent {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	enum agent_mode mode;
	bool gate_open;
	unsigned running, max_running, invokes;
	enum snap_mode snap;
	unsigned snapshots;
	char snap_name[128];
};

static int ta_invoke(void *arg, const struct hostagent_invoke_request *req, struct hostagent_invoke_result *out)
{
	struct test_agent *a = arg;
	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&a->lock);
	enum agent_mode mode = a->mode;
	if (mode == AGENT_BUSY) {
		pthread_mutex_unlock(&a->lock);
		return -EBUSY;
	}
	a->invokes++;
	a->running++;
	if (a->running > a->max_running)
		a->max_running = a->running;
	pthread_cond_broadcast(&a->cond);
	while (mode == AGENT_GATE && !a->gate_open)
		pthread_cond_wait(&a->cond, &a->lock);
	a->running--;
	pthread_mutex_unlock(&a->lock);
	const char *body = mode == AGENT_FAIL ? "{\"errorType\":\"Boom\",\"errorMessage\":\"test failure\"}" : "{\"ok\":1}";
	out->outcome = mode == AGENT_FAIL ? HOSTAGENT_FUNCTION_ERROR : HOSTAGENT_OK;
	out->payload = (uint8_t *)strdup(body);
	out->payload_len = strlen(body);
	(void)req;
	return 0;
}

static int ta_provision(void *arg, const struct hostagent_function *fn, unsigned n)
{
	(void)arg;
	(void)fn;
	(void)n;
	return 0;
}

static void ta_drain(void *arg, const char *name, const char *version, const char *keep_revision)
{
	(void)arg;
	(void)name;
	(void)version;
	(void)keep_revision;
}

static void ta_get_stats(void *arg, struct hostagent_stats *out)
{
	(void)arg;
	memset(out, 0, sizeof(*out));
}

static int ta_read_log(void *arg, const char *name, size_t max, char **out, size_t *out_len)
{
	(void)arg;
	(void)name;
	(void)max;
	(void)out;
	(void)out_len;
	return -ENOENT;
}

static bool ta_snapshot_supported(void *arg, char *why, size_t len)
{
	struct test_agent *a = arg;
	pthread_mutex_lock(&a->lock);
	bool ok = a->snap != SNAP_UNSUPPORTED;
	pthread_mutex_unlock(&a->lock);
	if (!ok)
		snprintf(why, len, "the double runs process sandboxes: use --isolation microvm");
	return ok;
}

static int ta_snapshot(void *arg, const struct hostagent_function *fn, const char *name, char digest[65], char *why,
		       size_t why_len)
{
	struct test_agent *a = arg;
	(void)fn;
	pthread_mutex_lock(&a->lock);
	a->snapshots++;
	snprintf(a->snap_name, sizeof(a->snap_name), "%s", name);
	enum snap_mode mode = a->snap;
	pthread_mutex_unlock(&a->lock);
	if (mode == SNAP_SHUTDOWN) {
		snprintf(why, why_len, "the host agent is shutting down");
		return -ESHUTDOWN;
	}
	if (mode == SNAP_FAIL) {
		snprintf(why, why_len, "the runtime exited or reported an init error before it asked for work");
		return -ECHILD;
	}
	snprintf(digest, 65, "%s", SNAP_DIGEST);
	return 0;
}

static const struct hostagent_ops test_agent_ops = {
	.invoke = ta_invoke,
	.provision = ta_provision,
	.drain = ta_drain,
	.get_stats = ta_get_stats,
	.read_log = ta_read_log,
	.snapshot_supported = ta_snapshot_supported,
	.snapshot = ta_snapshot,
};

static void agent_init(struct test_agent *a, enum agent_mode mode)
{
	memset(a, 0, sizeof(*a));
	pthread_mutex_init(&a->lock, NULL);
	pthread_cond_init(&a->cond, NULL);
	a->mode = mode;
}

static void agent_set(struct test_agent *a, enum agent_mode mode, bool gate_open)
{
	pthread_mutex_lock(&a->lock);
	a->mode = mode;
	a->gate_open = gate_open;
	a->max_running = 0;
	pthread_cond_broadcast(&a->cond);
	pthread_mutex_unlock(&a->lock);
}

static unsigned agent_get(struct test_agent *a, unsigned *field)
{
	pthread_mutex_lock(&a->lock);
	unsigned v = *field;
	pthread_mutex_unlock(&a->lock);
	return v;
}

/* ---- frontends and requests ---------------------------------------------------------------------------------------- */

struct node {
	struct etcd *etcd;
	void *state;
	struct test_agent agent;
	struct frontend *fe;
	char id[16];
};

static const char *endpoints;

static int node_start(struct node *n, const char *id, unsigned account, enum agent_mode mode)
{
	memset(n, 0, sizeof(*n));
	snprintf(n->id, sizeof(n->id), "%s", id);
	agent_init(&n->agent, mode);
	struct etcd_config ec = { .endpoints = endpoints, .timeout_ms = 1000 };
	int r = etcd_new(&ec, &n->etcd);
	if (r == 0)
		r = frontend_state_etcd_open(n->etcd, &n->state);
	char *dir = xasprintf("%s/fe-%s", workdir, id);
	struct frontend_config cfg = {
		.agent_ops = &test_agent_ops,
		.agent_arg = &n->agent,
		.state_ops = &frontend_state_etcd_ops,
		.state_arg = n->state,
		.state_dir = dir,
		.store_uri = NULL,
		.account_concurrency = account,
		.sync_wait_ms = 100,
		.async_workers = 2,
		.retry_delay_ms = 50,
		.etcd = n->etcd,
		.frontend_id = id,
	};
	if (r == 0)
		r = frontend_new(&cfg, &n->fe);
	free(dir);
	return r;
}

static void node_stop(struct node *n)
{
	frontend_free(n->fe);
	frontend_state_etcd_close(n->state);
	etcd_free(n->etcd);
	n->fe = NULL;
}

struct answer {
	unsigned status;
	char type[128], reason[128];
};

static void invoke(struct frontend *fe, const char *fn, const char *type, struct answer *a)
{
	char raw[256];
	snprintf(raw, sizeof(raw), "/2015-03-31/functions/%s/invocations", fn);
	struct http_header h[1] = { { "X-Amz-Invocation-Type", type } };
	struct http_request req = { .method = "POST", .version = "HTTP/1.1", .raw_path = raw, .path = raw, .query = "",
				    .headers = h, .n_headers = 1, .body = (const uint8_t *)"{}", .body_len = 2,
				    .peer = "127.0.0.1:1" };
	struct http_response resp = { .status = 200 };
	frontend_http_ops.handle(fe, &req, &resp);
	memset(a, 0, sizeof(*a));
	a->status = resp.status;
	for (size_t i = 0; i < resp.n_headers; i++) {
		if (strcasecmp(resp.headers[i].name, "x-amzn-ErrorType") == 0)
			snprintf(a->type, sizeof(a->type), "%s", resp.headers[i].value);
		free((char *)resp.headers[i].name);
		free((char *)resp.headers[i].value);
	}
	json_t *j = resp.body_len ? json_loadb((const char *)resp.body, resp.body_len, 0, NULL) : NULL;
	const char *r = json_string_value(json_object_get(j, "Reason"));
	snprintf(a->reason, sizeof(a->reason), "%s", r ? r : "");
	json_decref(j);
	free(resp.headers);
	free(resp.body);
}

static unsigned call_status(struct frontend *fe, const char *method, const char *raw, const char *body)
{
	struct http_request req = { .method = method, .version = "HTTP/1.1", .raw_path = raw, .path = raw, .query = "",
				    .body = (const uint8_t *)body, .body_len = strlen(body), .peer = "127.0.0.1:1" };
	struct http_response resp = { .status = 200 };
	frontend_http_ops.handle(fe, &req, &resp);
	for (size_t i = 0; i < resp.n_headers; i++) {
		free((char *)resp.headers[i].name);
		free((char *)resp.headers[i].value);
	}
	free(resp.headers);
	free(resp.body);
	return resp.status;
}

/* An Active record for |name| (reserved concurrency |reserved|, -1: none). */
static void put_record(struct etcd *e, const char *name, long reserved)
{
	json_t *rec = json_pack("{s:{s:s,s:s,s:s,s:s,s:s,s:i,s:i,s:s},s:{},s:i}", "Latest", "FunctionName", name,
				"State", "Active", "Version", "$LATEST", "RevisionId", "rev-1", "_ImageDigest",
				"sha256:0000000000000000000000000000000000000000000000000000000000000000", "MemorySize",
				128, "Timeout", 3, "LastUpdateStatus", "Successful", "Versions", "NextVersion", 1);
	if (reserved >= 0)
		json_object_set_new(rec, "ReservedConcurrency", json_integer(reserved));
	char *s = json_dumps(rec, JSON_COMPACT);
	char *key = xasprintf("kindling/functions/%s", name);
	CHECK(etcd_put(e, key, s, strlen(s), 0, NULL) == 0);
	free(key);
	free(s);
	json_decref(rec);
}

static size_t count_prefix(struct etcd *e, const char *prefix)
{
	struct etcd_kvs kvs = { 0 };
	if (etcd_range_prefix(e, prefix, NULL, 0, &kvs) < 0)
		return (size_t)-1;
	size_t n = kvs.n;
	etcd_kvs_cleanup(&kvs);
	return n;
}

/* The sum of the holders' "held" in |scope|. */
static long held_sum(struct etcd *e, const char *scope)
{
	char *prefix = xasprintf("kindling/concurrency/%s/holders/", scope);
	struct etcd_kvs kvs = { 0 };
	long sum = etcd_range_prefix(e, prefix, NULL, 0, &kvs) < 0 ? -1 : 0;
	for (size_t i = 0; sum >= 0 && i < kvs.n; i++) {
		json_t *j = json_loadb((const char *)kvs.kvs[i].value, kvs.kvs[i].value_len, 0, NULL);
		sum += (long)json_integer_value(json_object_get(j, "held"));
		json_decref(j);
	}
	etcd_kvs_cleanup(&kvs);
	free(prefix);
	return sum;
}

#define WAIT_UNTIL(cond, seconds)                                                                                      \
	do {                                                                                                           \
		for (int _i = 0; _i < (seconds) * 20 && !(cond); _i++)                                                 \
			sleep_ms(50);                                                                                  \
	} while (0)

/* ---- SnapStart's state in etcd ------------------------------------------------------------------------------------- */

/* Version |version| of |name| as its record in etcd holds it (a new
 * reference), or NULL. */
static json_t *etcd_version(struct etcd *e, const char *name, const char *version)
{
	char *key = xasprintf("kindling/functions/%s", name);
	struct etcd_kv kv = { 0 };
	json_t *rec = key && etcd_get(e, key, &kv) == 0 ? json_loadb((const char *)kv.value, kv.value_len, 0, NULL) : NULL;
	etcd_kv_cleanup(&kv);
	free(key);
	json_t *v = json_object_get(json_object_get(rec, "Versions"), version);
	json_incref(v);
	json_decref(rec);
	return v;
}

/* The State of that version in etcd ("" if none); |out| holds 32 bytes. */
static const char *etcd_version_state(struct etcd *e, const char *name, const char *version, char out[32])
{
	json_t *v = etcd_version(e, name, version);
	const char *st = json_string_value(json_object_get(v, "State"));
	snprintf(out, 32, "%s", st ? st : "");
	json_decref(v);
	return out;
}

static void test_snapstart(struct etcd *e)
{
	json_t *rec = json_pack("{s:{s:s,s:s,s:s,s:s,s:s,s:s,s:i,s:i,s:s,s:s},s:{},s:i}", "Latest", "FunctionName",
				"snapfn", "State", "Active", "Version", "$LATEST", "RevisionId", "rev-1", "_ImageDigest",
				"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "CodeSha256",
				"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "MemorySize", 128,
				"Timeout", 3, "LastUpdateStatus", "Successful", "_SnapStartApplyOn", "PublishedVersions",
				"Versions", "NextVersion", 1);
	char *text = json_dumps(rec, JSON_COMPACT);
	CHECK(etcd_put(e, "kindling/functions/snapfn", text, strlen(text), 0, NULL) == 0);
	free(text);
	json_decref(rec);

	/* Published while its frontend stops: Pending in etcd. */
	struct node s1;
	CHECK(node_start(&s1, "S1", 5, AGENT_OK) == 0);
	pthread_mutex_lock(&s1.agent.lock);
	s1.agent.snap = SNAP_SHUTDOWN;
	pthread_mutex_unlock(&s1.agent.lock);
	CHECK(call_status(s1.fe, "POST", "/2015-03-31/functions/snapfn/versions", "{}") == 201);
	WAIT_UNTIL(agent_get(&s1.agent, &s1.agent.snapshots) == 1, 30);
	CHECK(agent_get(&s1.agent, &s1.agent.snapshots) == 1 && strcmp(s1.agent.snap_name, "snapstart-snapfn:1") == 0);
	node_stop(&s1);
	char st[32];
	CHECK(strcmp(etcd_version_state(e, "snapfn", "1", st), "Pending") == 0);
	json_t *v = etcd_version(e, "snapfn", "1");
	CHECK(json_is_string(json_object_get(v, "_SnapshotToken")) && !json_object_get(v, "_SnapshotDigest"));
	json_decref(v);

	/* The next frontend re-queues it: Active in etcd with the digest. */
	struct node s2;
	CHECK(node_start(&s2, "S2", 5, AGENT_OK) == 0);
	WAIT_UNTIL(strcmp(etcd_version_state(e, "snapfn", "1", st), "Pending") != 0, 30);
	CHECK(strcmp(etcd_version_state(e, "snapfn", "1", st), "Active") == 0);
	v = etcd_version(e, "snapfn", "1");
	const char *digest = json_string_value(json_object_get(v, "_SnapshotDigest"));
	CHECK(digest && strcmp(digest, SNAP_DIGEST) == 0 && !json_object_get(v, "StateReason"));
	json_decref(v);
	CHECK(agent_get(&s2.agent, &s2.agent.snapshots) == 1 && strcmp(s2.agent.snap_name, "snapstart-snapfn:1") == 0);

	/* A failed snapshot: Failed in etcd, with the step. */
	pthread_mutex_lock(&s2.agent.lock);
	s2.agent.snap = SNAP_FAIL;
	pthread_mutex_unlock(&s2.agent.lock);
	CHECK(call_status(s2.fe, "PUT", "/2015-03-31/functions/snapfn/configuration", "{\"Timeout\": 5}") == 200);
	CHECK(call_status(s2.fe, "POST", "/2015-03-31/functions/snapfn/versions", "{}") == 201);
	WAIT_UNTIL(strcmp(etcd_version_state(e, "snapfn", "2", st), "Pending") != 0, 30);
	CHECK(strcmp(etcd_version_state(e, "snapfn", "2", st), "Failed") == 0);
	v = etcd_version(e, "snapfn", "2");
	const char *reason = json_string_value(json_object_get(v, "StateReason"));
	CHECK(reason && strncmp(reason, "SnapStart: the runtime exited", 29) == 0);
	const char *code = json_string_value(json_object_get(v, "StateReasonCode"));
	CHECK(code && strcmp(code, "FunctionError") == 0);
	json_decref(v);

	/* An agent that cannot snapshot refuses the configuration. */
	pthread_mutex_lock(&s2.agent.lock);
	s2.agent.snap = SNAP_UNSUPPORTED;
	pthread_mutex_unlock(&s2.agent.lock);
	CHECK(call_status(s2.fe, "PUT", "/2015-03-31/functions/snapfn/configuration",
			  "{\"SnapStart\": {\"ApplyOn\": \"PublishedVersions\"}}") == 400);
	node_stop(&s2);
	CHECK(etcd_delete(e, "kindling/functions/snapfn", false, NULL) == 0);
}

/* ---- the fleet router's SnapStart ------------------------------------------------------------------------------------ */

/* A fake `kindling agent`: counts its snapshot and invoke calls, and takes
 * a snapshot or refuses it as timed out. */
struct fake_agent {
	pthread_mutex_t lock;
	unsigned snapshots, invokes;
	bool refuse;
	struct http_server *http;
	char url[64];
};

static int fake_agent_handle(void *arg, const struct http_request *req, struct http_response *resp)
{
	struct fake_agent *fa = arg;
	pthread_mutex_lock(&fa->lock);
	bool refuse = fa->refuse;
	if (strcmp(req->path, "/v1/snapshot") == 0)
		fa->snapshots++;
	else if (strcmp(req->path, "/v1/invoke") == 0)
		fa->invokes++;
	pthread_mutex_unlock(&fa->lock);
	if (strcmp(req->path, "/v1/snapshot") == 0 && refuse) {
		resp->status = 504;
		const char *b = "{\"error\":\"timed-out\",\"message\":\"the runtime did not ask for work in time\"}";
		http_response_add_header(resp, "Kindling-Error", "timed-out");
		return http_response_set_body(resp, b, strlen(b));
	}
	if (strcmp(req->path, "/v1/snapshot") == 0) {
		const char *b = "{\"digest\":\"" SNAP_DIGEST "\"}";
		return http_response_set_body(resp, b, strlen(b));
	}
	if (strcmp(req->path, "/v1/invoke") == 0) {
		http_response_add_header(resp, "Kindling-Outcome", "ok");
		return http_response_set_body(resp, "{}", 2);
	}
	resp->status = 404;
	return 0;
}

static const struct http_server_ops fake_agent_ops = { .handle = fake_agent_handle };

/* A host agent that is lost mid-call: it takes each connection, reads what
 * arrives first of the request and resets the connection unanswered, as an
 * agent that dies or restarts while it takes a snapshot. */
struct lost_agent {
	int fd;
	pthread_t thread;
	pthread_mutex_t lock;
	unsigned calls;
	char url[64];
};

static void *lost_agent_main(void *arg)
{
	struct lost_agent *la = arg;
	for (;;) {
		int c = accept(la->fd, NULL, NULL);
		if (c < 0)
			break; /* shut down */
		char buf[256];
		(void)!recv(c, buf, sizeof(buf), 0);
		pthread_mutex_lock(&la->lock);
		la->calls++;
		pthread_mutex_unlock(&la->lock);
		struct linger reset = { .l_onoff = 1, .l_linger = 0 };
		setsockopt(c, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
		close(c);
	}
	return NULL;
}

static void lost_agent_start(struct lost_agent *la)
{
	memset(la, 0, sizeof(*la));
	pthread_mutex_init(&la->lock, NULL);
	la->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sa);
	CHECK(la->fd >= 0 && bind(la->fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 && listen(la->fd, 16) == 0);
	CHECK(getsockname(la->fd, (struct sockaddr *)&sa, &len) == 0);
	snprintf(la->url, sizeof(la->url), "http://127.0.0.1:%u", ntohs(sa.sin_port));
	CHECK(pthread_create(&la->thread, NULL, lost_agent_main, la) == 0);
}

static void lost_agent_stop(struct lost_agent *la)
{
	shutdown(la->fd, SHUT_RDWR); /* wakes accept() */
	pthread_join(la->thread, NULL);
	close(la->fd);
	pthread_mutex_destroy(&la->lock);
}

/* A fake placement service over the two agents: the first one not in the
 * request's exclude list, and the exclude lists it saw.  It answers 503
 * NoCapacity to the next |busy| requests, and places the next |lost|
 * requests on the lost agent (host h3); |places| counts the requests. */
struct fake_placement {
	pthread_mutex_t lock;
	struct fake_agent *agents[2];
	struct lost_agent *lost_agent;
	unsigned busy, lost, places;
	char last_exclude[128];
	struct http_server *http;
};

static int fake_place_handle(void *arg, const struct http_request *req, struct http_response *resp)
{
	struct fake_placement *fp = arg;
	json_t *j = json_loadb((const char *)req->body, req->body_len, 0, NULL);
	json_t *ex = json_object_get(j, "exclude");
	char *exs = ex ? json_dumps(ex, JSON_COMPACT) : NULL;
	const char *ids[2] = { "h1", "h2" };
	int pick = -1;
	for (int i = 0; i < 2 && pick < 0; i++) {
		bool excluded = false;
		size_t k;
		json_t *e;
		json_array_foreach(ex, k, e)
			excluded |= json_is_string(e) && strcmp(json_string_value(e), ids[i]) == 0;
		if (!excluded)
			pick = i;
	}
	pthread_mutex_lock(&fp->lock);
	snprintf(fp->last_exclude, sizeof(fp->last_exclude), "%s", exs ? exs : "");
	fp->places++;
	bool busy = fp->busy > 0, lost = !busy && fp->lost > 0;
	if (busy)
		fp->busy--;
	else if (lost)
		fp->lost--;
	pthread_mutex_unlock(&fp->lock);
	free(exs);
	json_decref(j);
	if (busy)
		pick = -1;
	json_t *a = pick < 0 ? json_pack("{s:s}", "reason", "NoCapacity")
		    : lost   ? json_pack("{s:s,s:s}", "host", "h3", "url", fp->lost_agent->url)
			     : json_pack("{s:s,s:s}", "host", ids[pick], "url", fp->agents[pick]->url);
	char *t = json_dumps(a, JSON_COMPACT);
	json_decref(a);
	resp->status = pick < 0 ? 503 : 200;
	http_response_take_body(resp, t, strlen(t));
	return 0;
}

static const struct http_server_ops fake_place_ops = { .handle = fake_place_handle };

static void put_host(struct etcd *e, const char *id, const char *url, bool snapshot)
{
	char *key = xasprintf("kindling/hosts/%s", id);
	char *v = xasprintf("{\"id\":\"%s\",\"url\":\"%s\",\"isolation\":\"%s\",\"snapshot\":%s}", id, url,
			    snapshot ? "microvm" : "process", snapshot ? "true" : "false");
	CHECK(etcd_put(e, key, v, strlen(v), 0, NULL) == 0);
	free(key);
	free(v);
}

/* A counter that a fake's server thread updates under |lock|. */
static unsigned locked_count(pthread_mutex_t *lock, const unsigned *field)
{
	pthread_mutex_lock(lock);
	unsigned v = *field;
	pthread_mutex_unlock(lock);
	return v;
}

static unsigned fake_count(struct fake_agent *fa, unsigned *field)
{
	return locked_count(&fa->lock, field);
}

static unsigned placement_count(struct fake_placement *fp)
{
	return locked_count(&fp->lock, &fp->places);
}

static unsigned lost_count(struct lost_agent *la)
{
	return locked_count(&la->lock, &la->calls);
}

/* Set the fake placement's busy and lost answers to come, and zero its
 * count of requests. */
static void placement_script(struct fake_placement *fp, unsigned busy, unsigned lost)
{
	pthread_mutex_lock(&fp->lock);
	fp->busy = busy;
	fp->lost = lost;
	fp->places = 0;
	pthread_mutex_unlock(&fp->lock);
}


/* Whether the last placement request excluded exactly |want| (JSON). */
static bool excluded(struct fake_placement *fp, const char *want)
{
	pthread_mutex_lock(&fp->lock);
	bool same = strcmp(fp->last_exclude, want) == 0;
	pthread_mutex_unlock(&fp->lock);
	return same;
}

static void test_route_snapstart(struct etcd *e)
{
	struct fake_agent fa[2];
	struct lost_agent la;
	lost_agent_start(&la);
	struct fake_placement fp = { .agents = { &fa[0], &fa[1] }, .lost_agent = &la };
	pthread_mutex_init(&fp.lock, NULL);
	for (int i = 0; i < 2; i++) {
		memset(&fa[i], 0, sizeof(fa[i]));
		pthread_mutex_init(&fa[i].lock, NULL);
		struct http_server_config c = { .ops = &fake_agent_ops, .arg = &fa[i], .name = "fake agent" };
		CHECK(http_server_start(&c, "127.0.0.1:0", &fa[i].http) == 0);
		snprintf(fa[i].url, sizeof(fa[i].url), "http://%s", http_server_address(fa[i].http));
	}
	struct http_server_config pc = { .ops = &fake_place_ops, .arg = &fp, .name = "fake placement" };
	CHECK(http_server_start(&pc, "127.0.0.1:0", &fp.http) == 0);
	char *purl = xasprintf("http://%s", http_server_address(fp.http));

	/* Only a process agent: SnapStart cannot be configured. */
	CHECK(etcd_delete(e, "kindling/hosts/", true, NULL) == 0);
	put_host(e, "h1", fa[0].url, false);
	/* Few and short waits: the retries below are counted, not timed. */
	struct frontend_router_config rc = { .etcd = e, .placement_urls = purl, .snapshot_busy_waits = 3,
					     .snapshot_attempts = 3, .snapshot_wait_ms = 1 };
	struct frontend_router *rt = NULL;
	CHECK(frontend_router_new(&rc, &rt) == 0);
	const struct hostagent_ops *ops = &frontend_router_ops;
	char why[256] = "";
	CHECK(!ops->snapshot_supported(rt, why, sizeof(why)));
	CHECK(strstr(why, "none of the fleet's 1 host agents") && strstr(why, "--isolation microvm"));

	/* A micro-VM agent joins: the snapshot is placed there, h1 excluded. */
	put_host(e, "h2", fa[1].url, true);
	CHECK(ops->snapshot_supported(rt, why, sizeof(why)));
	struct hostagent_function fn = { .name = "snapfn", .version = "1", .image_digest = SNAP_DIGEST,
					 .revision_id = "rev-1", .memory_mb = 128, .timeout_s = 3 };
	char digest[65] = "";
	CHECK(ops->snapshot(rt, &fn, "snapstart-snapfn:1", digest, why, sizeof(why)) == 0);
	CHECK(strcmp(digest, SNAP_DIGEST) == 0);
	CHECK(fake_count(&fa[1], &fa[1].snapshots) == 1 && fake_count(&fa[0], &fa[0].snapshots) == 0);
	CHECK(excluded(&fp, "[\"h1\"]"));

	/* Placement busy (or the fleet full) twice, then it places: the
	 * snapshot waits through it and is taken (the version goes Active). */
	placement_script(&fp, 2, 0);
	digest[0] = '\0';
	CHECK(ops->snapshot(rt, &fn, "snapstart-snapfn:1", digest, why, sizeof(why)) == 0);
	CHECK(strcmp(digest, SNAP_DIGEST) == 0);
	CHECK(placement_count(&fp) == 3 && fake_count(&fa[1], &fa[1].snapshots) == 2);

	/* Busy past the bound (1 ask and 3 waits): -EBUSY, and the reason
	 * says placement stayed busy; no agent was asked. */
	placement_script(&fp, 100, 0);
	CHECK(ops->snapshot(rt, &fn, "snapstart-snapfn:1", digest, why, sizeof(why)) == -EBUSY);
	CHECK(placement_count(&fp) == 4 && fake_count(&fa[1], &fa[1].snapshots) == 2);
	CHECK(strstr(why, "placement stayed busy") && strstr(why, "4 asks"));

	/* A host agent lost mid-call twice: the snapshot is placed again and
	 * taken on the third try. */
	placement_script(&fp, 0, 2);
	CHECK(ops->snapshot(rt, &fn, "snapstart-snapfn:1", digest, why, sizeof(why)) == 0);
	CHECK(lost_count(&la) == 2 && placement_count(&fp) == 3 && fake_count(&fa[1], &fa[1].snapshots) == 3);

	/* Lost on every try: -EHOSTUNREACH after the bound of 3, saying so. */
	placement_script(&fp, 0, 100);
	CHECK(ops->snapshot(rt, &fn, "snapstart-snapfn:1", digest, why, sizeof(why)) == -EHOSTUNREACH);
	CHECK(lost_count(&la) == 5 && placement_count(&fp) == 3 && fake_count(&fa[1], &fa[1].snapshots) == 3);
	CHECK(strstr(why, "3 tries of the snapshot were cut short") && strstr(why, la.url));
	placement_script(&fp, 0, 0);

	/* The agent's refusal comes back with its errno and message, at
	 * once: it is the agent's answer, not a lost agent. */
	pthread_mutex_lock(&fa[1].lock);
	fa[1].refuse = true;
	pthread_mutex_unlock(&fa[1].lock);
	CHECK(ops->snapshot(rt, &fn, "snapstart-snapfn:1", digest, why, sizeof(why)) == -ETIMEDOUT);
	CHECK(strstr(why, "the runtime did not ask for work in time") != NULL);
	CHECK(placement_count(&fp) == 1 && fake_count(&fa[1], &fa[1].snapshots) == 4);

	/* Cold starts: a restoring version only on the capable host. */
	fn.snapshot = SNAP_DIGEST;
	struct hostagent_invoke_request req = { .fn = &fn, .payload = (const uint8_t *)"{}", .payload_len = 2,
						.request_id = "snap-req-1" };
	struct hostagent_invoke_result res;
	CHECK(ops->invoke(rt, &req, &res) == 0 && res.outcome == HOSTAGENT_OK);
	hostagent_invoke_result_cleanup(&res);
	CHECK(fake_count(&fa[1], &fa[1].invokes) == 1 && fake_count(&fa[0], &fa[0].invokes) == 0);
	CHECK(excluded(&fp, "[\"h1\"]"));
	fn.snapshot = NULL;
	fn.version = "$LATEST";
	req.request_id = "snap-req-2";
	CHECK(ops->invoke(rt, &req, &res) == 0);
	hostagent_invoke_result_cleanup(&res);
	CHECK(excluded(&fp, "[]") && fake_count(&fa[0], &fa[0].invokes) == 1);

	frontend_router_free(rt);
	CHECK(etcd_delete(e, "kindling/hosts/", true, NULL) == 0);
	http_server_free(fp.http);
	for (int i = 0; i < 2; i++) {
		http_server_free(fa[i].http);
		pthread_mutex_destroy(&fa[i].lock);
	}
	pthread_mutex_destroy(&fp.lock);
	lost_agent_stop(&la);
	free(purl);
}

/* ---- records: compare and swap --------------------------------------------------------------------------------------- */

struct incr_arg {
	struct frontend *fe;
	int failures;
};

static void *incr_main(void *p)
{
	struct incr_arg *a = p;
	for (int i = 0; i < 40; i++) {
		int r = -EAGAIN;
		for (int t = 0; t < 200 && r == -EAGAIN; t++) {
			json_t *rec = NULL;
			pthread_mutex_lock(&a->fe->lock);
			r = fe_record_load(a->fe, "casfn", &rec);
			if (r == 0) {
				json_int_t n = json_integer_value(json_object_get(rec, "Counter"));
				json_object_set_new(rec, "Counter", json_integer(n + 1));
				r = fe_record_save(a->fe, "casfn", rec);
			}
			pthread_mutex_unlock(&a->fe->lock);
			json_decref(rec);
		}
		if (r != 0)
			a->failures++;
	}
	return NULL;
}

struct update_arg {
	struct frontend *fe;
	const char *tag;
	int not_200;
};

/* Each thread makes fewer updates than the API's redo cycles
 * (FE_RECORD_RETRIES): a cycle loses its compare-and-swap only to another
 * thread's committed update, so no update can lose every cycle however the
 * two threads are scheduled, and any answer but 200 is a fault. */
#define UPDATES_PER_THREAD (FE_RECORD_RETRIES - 1)

static void *update_main(void *p)
{
	struct update_arg *a = p;
	for (int i = 0; i < UPDATES_PER_THREAD; i++) {
		char body[128];
		snprintf(body, sizeof(body), "{\"Description\":\"%s-%d\"}", a->tag, i);
		unsigned st = call_status(a->fe, "PUT", "/2015-03-31/functions/casfn/configuration", body);
		if (st != 200) {
			fprintf(stderr, "update %s-%d answered %u\n", a->tag, i, st);
			a->not_200++;
		}
	}
	return NULL;
}

static void test_records_cas(struct node *a, struct node *b, struct etcd *e)
{
	put_record(e, "casfn", -1);
	struct incr_arg ia = { a->fe, 0 }, ib = { b->fe, 0 };
	pthread_t ta, tb;
	pthread_create(&ta, NULL, incr_main, &ia);
	pthread_create(&tb, NULL, incr_main, &ib);
	pthread_join(ta, NULL);
	pthread_join(tb, NULL);
	CHECK(ia.failures == 0 && ib.failures == 0);
	json_t *rec = NULL;
	CHECK(fe_record_load(a->fe, "casfn", &rec) == 0);
	printf("CAS counter after 2 x 40 increments from two frontends: %lld\n",
	       (long long)json_integer_value(json_object_get(rec, "Counter")));
	CHECK(json_integer_value(json_object_get(rec, "Counter")) == 80);
	json_decref(rec);

	/* The API's cycles redo themselves on a conflict. */
	struct update_arg ua = { a->fe, "a", 0 }, ub = { b->fe, "b", 0 };
	pthread_create(&ta, NULL, update_main, &ua);
	pthread_create(&tb, NULL, update_main, &ub);
	pthread_join(ta, NULL);
	pthread_join(tb, NULL);
	CHECK(ua.not_200 == 0 && ub.not_200 == 0);
	/* The counter survived the API's writes. */
	CHECK(fe_record_load(b->fe, "casfn", &rec) == 0);
	CHECK(json_integer_value(json_object_get(rec, "Counter")) == 80);
	json_decref(rec);
	/* Frontend B sees A's last change within the cache's bound. */
	CHECK(call_status(a->fe, "PUT", "/2015-03-31/functions/casfn/configuration", "{\"Timeout\":9}") == 200);
	json_t *cached = NULL;
	bool seen = false;
	for (int i = 0; i < 100 && !seen; i++) {
		CHECK(fe_cache_get(b->fe, "casfn", &cached) == 0);
		seen = json_integer_value(json_object_get(json_object_get(cached, "Latest"), "Timeout")) == 9;
		json_decref(cached);
		if (!seen)
			sleep_ms(50);
	}
	CHECK(seen);
}

/* ---- fleet-wide concurrency -------------------------------------------------------------------------------------------- */

struct burst_arg {
	struct frontend *fe;
	const char *fn;
	struct answer a;
};

static void *burst_main(void *p)
{
	struct burst_arg *b = p;
	invoke(b->fe, b->fn, "RequestResponse", &b->a);
	return NULL;
}

/* Six blocked invokes of |fn| on each frontend: |admit| run, the rest get
 * 429 with |reason|. */
static void burst(struct node *a, struct node *b, const char *fn, unsigned admit, const char *reason)
{
	agent_set(&a->agent, AGENT_GATE, false);
	agent_set(&b->agent, AGENT_GATE, false);
	struct burst_arg args[12];
	pthread_t th[12];
	for (int i = 0; i < 12; i++) {
		args[i] = (struct burst_arg){ i % 2 ? b->fe : a->fe, fn, { 0 } };
		pthread_create(&th[i], NULL, burst_main, &args[i]);
	}
	WAIT_UNTIL(agent_get(&a->agent, &a->agent.running) + agent_get(&b->agent, &b->agent.running) >= admit, 60);
	/* Give the refused ones time to be refused, and any excess to show. */
	sleep_ms(1500);
	unsigned running = agent_get(&a->agent, &a->agent.running) + agent_get(&b->agent, &b->agent.running);
	printf("%s: %u running on two frontends (limit %u)\n", fn, running, admit);
	CHECK(running == admit);
	agent_set(&a->agent, AGENT_OK, true);
	agent_set(&b->agent, AGENT_OK, true);
	unsigned ok = 0, throttled = 0;
	for (int i = 0; i < 12; i++) {
		pthread_join(th[i], NULL);
		if (args[i].a.status == 200)
			ok++;
		else if (args[i].a.status == 429 && strcmp(args[i].a.type, "TooManyRequestsException") == 0 &&
			 strcmp(args[i].a.reason, reason) == 0)
			throttled++;
		else
			fprintf(stderr, "unexpected answer %u %s %s\n", args[i].a.status, args[i].a.type, args[i].a.reason);
	}
	CHECK(ok == admit && throttled == 12 - admit);
}

static void test_concurrency(struct node *a, struct node *b, struct etcd *e)
{
	put_record(e, "resfn", 4);
	burst(a, b, "resfn", 4, "ReservedFunctionConcurrentInvocationLimitExceeded");
	CHECK(held_sum(e, "function/resfn") <= 4);
	/* Idle holdings are given back. */
	long sum = -1;
	for (int i = 0; i < 200 && sum != 0; i++) {
		sum = held_sum(e, "function/resfn");
		if (sum)
			sleep_ms(50);
	}
	CHECK(sum == 0);
	put_record(e, "plainfn", -1);
	burst(a, b, "plainfn", 5, "ConcurrentInvocationLimitExceeded");
}

static void test_lease_revoked(struct node *a, struct etcd *e)
{
	/* Hold slots on A, then revoke A's lease behind its back. */
	agent_set(&a->agent, AGENT_GATE, false);
	struct burst_arg arg = { a->fe, "resfn", { 0 } };
	pthread_t th;
	pthread_create(&th, NULL, burst_main, &arg);
	WAIT_UNTIL(agent_get(&a->agent, &a->agent.running) == 1, 30);
	CHECK(count_prefix(e, "kindling/concurrency/function/resfn/holders/A") == 1);
	struct etcd_kv kv = { 0 };
	CHECK(etcd_get(e, "kindling/frontends/A", &kv) == 0 && kv.lease != 0);
	CHECK(etcd_lease_revoke(e, kv.lease) == 0);
	etcd_kv_cleanup(&kv);
	CHECK(count_prefix(e, "kindling/concurrency/function/resfn/holders/A") == 0);
	CHECK(count_prefix(e, "kindling/concurrency/account/holders/A") == 0);
	agent_set(&a->agent, AGENT_OK, true);
	pthread_join(th, NULL);
	CHECK(arg.a.status == 200);
	/* A takes a new lease by itself and grows again. */
	bool back = false;
	for (int i = 0; i < 200 && !back; i++) {
		back = etcd_get(e, "kindling/frontends/A", &kv) == 0;
		etcd_kv_cleanup(&kv);
		if (!back)
			sleep_ms(50);
	}
	CHECK(back);
	struct answer ans;
	invoke(a->fe, "resfn", "RequestResponse", &ans);
	CHECK(ans.status == 200);
}

/* ---- the queue ------------------------------------------------------------------------------------------------------------ */

static void test_handoff(struct etcd *e)
{
	struct node a, b;
	CHECK(node_start(&a, "A2", 100, AGENT_BUSY) == 0);
	put_record(e, "evfn", -1);
	struct answer ans;
	invoke(a.fe, "evfn", "Event", &ans);
	CHECK(ans.status == 202);
	CHECK(count_prefix(e, "kindling/queue/") == 1);
	/* A claims it and keeps failing to place it (a full host), then dies. */
	WAIT_UNTIL(count_prefix(e, "kindling/queue-claims/") == 1, 30);
	CHECK(count_prefix(e, "kindling/queue-claims/") == 1);
	node_stop(&a);
	CHECK(count_prefix(e, "kindling/queue-claims/") == 0);
	CHECK(count_prefix(e, "kindling/queue/") == 1);
	CHECK(node_start(&b, "B2", 100, AGENT_OK) == 0);
	WAIT_UNTIL(count_prefix(e, "kindling/queue/") == 0, 60);
	CHECK(count_prefix(e, "kindling/queue/") == 0);
	CHECK(agent_get(&b.agent, &b.agent.invokes) == 1);
	CHECK(count_prefix(e, "kindling/queue-claims/") == 0);
	node_stop(&b);
}

static void test_dead_letter(struct node *a, struct node *b, struct etcd *e)
{
	agent_set(&a->agent, AGENT_FAIL, true);
	agent_set(&b->agent, AGENT_FAIL, true);
	struct answer ans;
	invoke(a->fe, "evfn", "Event", &ans);
	CHECK(ans.status == 202);
	WAIT_UNTIL(count_prefix(e, "kindling/dlq/") == 1, 60);
	CHECK(count_prefix(e, "kindling/queue/") == 0);
	struct str_list dl = { 0 };
	CHECK(frontend_dlq_etcd_list(e, &dl) == 0 && dl.n == 1);
	json_t *j = dl.n ? json_loads(dl.items[0], 0, NULL) : NULL;
	CHECK(json_integer_value(json_object_get(j, "Attempts")) == FE_MAX_ATTEMPTS);
	const char *et = json_string_value(json_object_get(json_object_get(j, "LastError"), "errorType"));
	CHECK(et && strcmp(et, "Boom") == 0);
	json_decref(j);
	str_list_clear(&dl);
	agent_set(&a->agent, AGENT_OK, true);
	agent_set(&b->agent, AGENT_OK, true);
}

/* ---- static stability -------------------------------------------------------------------------------------------------- */

static unsigned invokes(struct node *a, struct node *b)
{
	return agent_get(&a->agent, &a->agent.invokes) + agent_get(&b->agent, &b->agent.invokes);
}

static void test_etcd_down(struct node *a, struct node *b, struct etcd *e)
{
	struct answer ans;
	invoke(a->fe, "plainfn", "RequestResponse", &ans);
	CHECK(ans.status == 200);
	CHECK(sh_etcd("kill_etcd_member 0 && kill_etcd_member 1 && kill_etcd_member 2") == 0);
	struct etcd_kv kv = { 0 };
	CHECK(etcd_get(e, "kindling/functions/plainfn", &kv) == -ENOTCONN);
	unsigned ok = 0;
	for (int i = 0; i < 20; i++) {
		invoke(a->fe, "plainfn", "RequestResponse", &ans);
		ok += ans.status == 200;
		if (ans.status != 200)
			fprintf(stderr, "invoke with etcd down: %u %s %s\n", ans.status, ans.type, ans.reason);
		sleep_ms(100);
	}
	printf("with every etcd member down: %u of 20 warm invokes answered 200\n", ok);
	CHECK(ok == 20);
	invoke(a->fe, "plainfn", "Event", &ans);
	CHECK(ans.status == 503 && strcmp(ans.type, "ServiceException") == 0);
	CHECK(sh_etcd("restart_etcd_member 0 && restart_etcd_member 1 && restart_etcd_member 2 && wait_etcd_healthy 60") ==
	      0);
	/* Back: Event invokes are accepted and delivered again. */
	unsigned before = invokes(a, b);
	for (int i = 0; i < 100; i++) {
		invoke(a->fe, "plainfn", "Event", &ans);
		if (ans.status == 202)
			break;
		sleep_ms(100);
	}
	CHECK(ans.status == 202);
	WAIT_UNTIL(invokes(a, b) > before, 60);
	CHECK(invokes(a, b) > before);
	invoke(a->fe, "plainfn", "RequestResponse", &ans);
	CHECK(ans.status == 200);
}

static int run_tests(void)
{
	struct etcd *e = NULL;
	struct etcd_config ec = { .endpoints = endpoints, .timeout_ms = 1000 };
	CHECK(etcd_new(&ec, &e) == 0);
	test_handoff(e); /* first: no other frontend may take the event */
	test_snapstart(e); /* no other frontend may take the snapshot job */
	test_route_snapstart(e);
	struct node a, b;
	CHECK(node_start(&a, "A", 5, AGENT_OK) == 0);
	CHECK(node_start(&b, "B", 5, AGENT_OK) == 0);
	if (check_failed)
		return check_report();
	test_records_cas(&a, &b, e);
	test_concurrency(&a, &b, e);
	test_lease_revoked(&a, e);
	test_dead_letter(&a, &b, e);
	test_etcd_down(&a, &b, e);
	node_stop(&a);
	node_stop(&b);
	CHECK(count_prefix(e, "kindling/frontends/") == 0);
	etcd_free(e);
	return check_report();
}

int main(void)
{
	if (!getenv("KINDLING_SOURCE_DIR")) {
		fprintf(stderr, "KINDLING_SOURCE_DIR is not set (run this test through ctest)\n");
		return 1;
	}
	char tmpl[] = "/tmp/kindling-fe-etcd-test.XXXXXX";
	workdir = mkdtemp(tmpl);
	if (!workdir) {
		perror("mkdtemp");
		return 1;
	}
	setenv("KINDLING_HOME", workdir, 1);
	char *wd = xasprintf("%s/cluster", workdir);
	setenv("ETCD_WORKDIR", wd, 1);
	free(wd);
	if (sh_etcd("base=$(etcd_pick_baseport 25100 25900 3) && start_etcd_cluster \"$ETCD_WORKDIR\" \"$base\" 3 && "
		    "echo \"$ETCD_ENDPOINTS\" >\"$ETCD_WORKDIR/endpoints\"") != 0) {
		fprintf(stderr, "could not start a 3-member etcd cluster (logs under %s/cluster)\n", workdir);
		sh_etcd("stop_etcd_cluster");
		return 1;
	}
	char *path = xasprintf("%s/cluster/endpoints", workdir);
	uint8_t *buf = NULL;
	size_t len = 0;
	if (!path || read_file_all(path, 4096, &buf, &len) < 0) {
		sh_etcd("stop_etcd_cluster");
		return 1;
	}
	free(path);
	char *ep = calloc(1, len + 1);
	memcpy(ep, buf, len);
	free(buf);
	while (len && ep[len - 1] == '\n')
		ep[--len] = 0;
	endpoints = ep;
	printf("etcd cluster: %s\n", endpoints);
	fflush(NULL);
	pid_t child = fork();
	if (child == 0)
		_exit(run_tests());
	int st = 0;
	if (child > 0)
		waitpid(child, &st, 0);
	sh_etcd("stop_etcd_cluster");
	int rc = child > 0 && WIFEXITED(st) ? WEXITSTATUS(st) : 1;
	if (child > 0 && WIFSIGNALED(st))
		fprintf(stderr, "the test process died of signal %d\n", WTERMSIG(st));
	if (rc == 0) {
		char *rm = xasprintf("rm -rf '%s'", workdir);
		if (rm && system(rm) != 0)
			fprintf(stderr, "could not remove %s\n", workdir);
		free(rm);
	} else {
		fprintf(stderr, "etcd logs kept under %s/cluster\n", workdir);
	}
	free(ep);
	return rc;
}
