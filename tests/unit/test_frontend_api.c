/* The frontend without a host agent: function names and ARNs, the
 * directory state backend, SigV4 on every request, routing, Lambda's error
 * answers, records through CreateFunction (a missing image ends Failed with
 * the reason), List with Marker/MaxItems, concurrency settings, body limits,
 * and the concurrency slots behind 429.  Requests go straight to
 * frontend_http_ops, signed with common/sigv4 as a client would.
 */
#include "frontend/internal.h"

#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define CHECK(c)                                                                    \
	do {                                                                        \
		if (!(c)) {                                                         \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
			exit(1);                                                    \
		}                                                                   \
	} while (0)

static const char KEYS[] = "[test]\naws_access_key_id = AKIDFRONTENDTEST\naws_secret_access_key = s3cret/key+1\n";

struct answer {
	unsigned status;
	char type[128];
	json_t *json;
	char reason[128];
};

/* Send one request, signed with |secret| (NULL: unsigned). */
static void call(struct frontend *fe, const char *method, const char *raw_path, const char *query, const char *body,
		 const char *secret, const char *extra_name, const char *extra_value, struct answer *a)
{
	char date[17];
	sigv4_amz_date(time(NULL), date);
	struct http_header h[5] = { { "host", "127.0.0.1:9000" }, { "x-amz-date", date } };
	size_t nh = 2;
	if (extra_name)
		h[nh++] = (struct http_header){ extra_name, extra_value };
	size_t blen = body ? strlen(body) : 0;
	uint8_t hash[SHA256_LEN];
	char hex[SHA256_HEX_LEN + 1];
	sha256_buf(body ? body : "", blen, hash);
	hex_encode(hash, SHA256_LEN, hex);
	struct sigv4_request sr = { .method = method, .path = raw_path, .query = query, .headers = h, .n_headers = nh,
				    .payload_hash = hex };
	char *auth = NULL;
	if (secret) {
		struct sigv4_key k = { "AKIDFRONTENDTEST", secret };
		CHECK(sigv4_sign(&sr, date, "us-east-1", "lambda", &k, &auth) == 0);
		h[nh++] = (struct http_header){ "authorization", auth };
	}
	char *path = NULL;
	CHECK(http_path_decode(raw_path, &path) == 0);
	struct http_request req = { .method = method, .version = "HTTP/1.1", .raw_path = raw_path, .path = path,
				    .query = query ? query : "", .headers = h, .n_headers = nh,
				    .body = (const uint8_t *)(body ? body : ""), .body_len = blen, .peer = "127.0.0.1:1" };
	struct http_response resp = { .status = 200 };
	CHECK(frontend_http_ops.handle(fe, &req, &resp) == 0);
	memset(a, 0, sizeof(*a));
	a->status = resp.status;
	for (size_t i = 0; i < resp.n_headers; i++) {
		if (strcasecmp(resp.headers[i].name, "x-amzn-ErrorType") == 0)
			snprintf(a->type, sizeof(a->type), "%s", resp.headers[i].value);
		free((char *)resp.headers[i].name);
		free((char *)resp.headers[i].value);
	}
	a->json = resp.body_len ? json_loadb((const char *)resp.body, resp.body_len, 0, NULL) : NULL;
	const char *r = json_string_value(json_object_get(a->json, "Reason"));
	snprintf(a->reason, sizeof(a->reason), "%s", r ? r : "");
	if (a->status >= 400)
		CHECK(a->type[0] && json_is_string(json_object_get(a->json, "message")));
	free(resp.headers);
	free(resp.body);
	free(path);
	free(auth);
}

static void done(struct answer *a)
{
	json_decref(a->json);
	a->json = NULL;
}

static void test_names(void)
{
	char n[65], q[129];
	CHECK(frontend_parse_function_name("my-fn_1", n, sizeof(n), q, sizeof(q)) == 0 && !strcmp(n, "my-fn_1") && !*q);
	CHECK(frontend_parse_function_name("fn:$LATEST", n, sizeof(n), q, sizeof(q)) == 0 && !strcmp(q, "$LATEST"));
	CHECK(frontend_parse_function_name("fn:7", n, sizeof(n), q, sizeof(q)) == 0 && !strcmp(q, "7"));
	CHECK(frontend_parse_function_name("123456789012:function:fn", n, sizeof(n), q, sizeof(q)) == 0 && !strcmp(n, "fn"));
	CHECK(frontend_parse_function_name("arn:aws:lambda:us-east-1:123456789012:function:fn:2", n, sizeof(n), q,
					   sizeof(q)) == 0 &&
	      !strcmp(n, "fn") && !strcmp(q, "2"));
	const char *bad[] = { "", "..", ".", "a/b", "../etc", "a b", "fn:", "fn:1:2", "arn:aws:s3:::b",
			      "arn:aws:lambda:us-east-1:12:function:fn", "12345678901x:function:fn", "a\nb",
			      "x23456789012345678901234567890123456789012345678901234567890123456789", NULL };
	for (size_t i = 0; bad[i]; i++)
		CHECK(frontend_parse_function_name(bad[i], n, sizeof(n), q, sizeof(q)) == -EINVAL);
	CHECK(frontend_valid_function_name("a") && !frontend_valid_function_name("a.b"));
}

static void test_state_dir(const char *dir)
{
	void *st = NULL;
	CHECK(frontend_state_dir_open(dir, &st) == 0);
	const struct frontend_state_ops *o = &frontend_state_dir_ops;
	CHECK(o->put(st, "b", "{\"x\":1}", 7) == 0);
	CHECK(o->put(st, "a", "{}", 2) == 0);
	CHECK(o->put(st, "c", "{}", 2) == 0);
	CHECK(o->put(st, "../evil", "{}", 2) == -EINVAL);
	char *s = NULL;
	size_t len = 0;
	CHECK(o->get(st, "b", &s, &len) == 0 && len == 7 && !strcmp(s, "{\"x\":1}"));
	free(s);
	CHECK(o->get(st, "zz", &s, &len) == -ENOENT);
	struct str_list l = { 0 };
	CHECK(o->list(st, NULL, 2, &l) == 0 && l.n == 2 && !strcmp(l.items[0], "a") && !strcmp(l.items[1], "b"));
	str_list_clear(&l);
	CHECK(o->list(st, "b", 10, &l) == 0 && l.n == 1 && !strcmp(l.items[0], "c"));
	str_list_clear(&l);
	CHECK(o->del(st, "b") == 0 && o->del(st, "b") == -ENOENT);
	frontend_state_dir_close(st);
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

int main(void)
{
	char tmpl[] = "/tmp/kindling-test-frontend.XXXXXX";
	CHECK(mkdtemp(tmpl));
	char *home = xasprintf("%s/home", tmpl), *fns = xasprintf("%s/functions", tmpl), *sd = xasprintf("%s/sd", tmpl);
	setenv("KINDLING_HOME", home, 1);
	test_names();
	test_state_dir(sd);

	struct sigv4_keys *keys = NULL;
	char err[256];
	CHECK(sigv4_keys_parse(KEYS, strlen(KEYS), "test", &keys, err, sizeof(err)) == 0);
	void *st = NULL;
	CHECK(frontend_state_dir_open(fns, &st) == 0);
	struct frontend_config cfg = { .no_agent = true, .state_ops = &frontend_state_dir_ops, .state_arg = st,
				       .keys = keys, .state_dir = tmpl, .account_concurrency = 3 };
	struct frontend *fe = NULL;
	CHECK(frontend_new(&cfg, &fe) == 0);
	const char *S = "s3cret/key+1";
	struct answer a;

	/* Authentication. */
	call(fe, "GET", "/2015-03-31/functions/", NULL, NULL, NULL, NULL, NULL, &a);
	CHECK(a.status == 403 && !strcmp(a.type, "MissingAuthenticationTokenException"));
	done(&a);
	call(fe, "GET", "/2015-03-31/functions/", NULL, NULL, "wrong", NULL, NULL, &a);
	CHECK(a.status == 403 && !strcmp(a.type, "InvalidSignatureException"));
	done(&a);
	call(fe, "GET", "/2015-03-31/functions/", NULL, NULL, S, NULL, NULL, &a);
	CHECK(a.status == 200 && json_array_size(json_object_get(a.json, "Functions")) == 0);
	done(&a);

	/* CreateFunction: three functions whose image is not in the store. */
	const char *names[] = { "beta", "alpha", "gamma" };
	for (int i = 0; i < 3; i++) {
		char *body = xasprintf("{\"FunctionName\":\"%s\",\"PackageType\":\"Image\",\"Code\":{\"ImageUri\":\"missing:1\"},"
				       "\"MemorySize\":256,\"Environment\":{\"Variables\":{\"K\":\"v\"}}}",
				       names[i]);
		call(fe, "POST", "/2015-03-31/functions", NULL, body, S, NULL, NULL, &a);
		CHECK(a.status == 201);
		CHECK(!strcmp(json_string_value(json_object_get(a.json, "State")), "Pending"));
		CHECK(json_integer_value(json_object_get(a.json, "MemorySize")) == 256);
		CHECK(!json_object_get(a.json, "_ImportToken"));
		done(&a);
		free(body);
	}
	call(fe, "POST", "/2015-03-31/functions", NULL,
	     "{\"FunctionName\":\"alpha\",\"Code\":{\"ImageUri\":\"missing:1\"}}", S, NULL, NULL, &a);
	CHECK(a.status == 409 && !strcmp(a.type, "ResourceConflictException"));
	done(&a);
	/* The import fails: Failed, with the image named in the reason. */
	const char *state = NULL;
	for (int i = 0; i < 3000; i++) {
		call(fe, "GET", "/2015-03-31/functions/alpha/configuration", NULL, NULL, S, NULL, NULL, &a);
		state = json_string_value(json_object_get(a.json, "State"));
		if (state && strcmp(state, "Pending") != 0)
			break;
		done(&a);
		usleep(10000);
	}
	CHECK(state && !strcmp(state, "Failed"));
	CHECK(strstr(json_string_value(json_object_get(a.json, "StateReason")), "missing:1"));
	done(&a);
	call(fe, "POST", "/2015-03-31/functions/alpha/invocations", NULL, "{}", S, NULL, NULL, &a);
	CHECK(a.status == 409 && !strcmp(a.type, "ResourceConflictException"));
	done(&a);

	/* List with MaxItems and Marker. */
	call(fe, "GET", "/2015-03-31/functions/", "MaxItems=2", NULL, S, NULL, NULL, &a);
	CHECK(a.status == 200 && json_array_size(json_object_get(a.json, "Functions")) == 2);
	CHECK(!strcmp(json_string_value(json_object_get(a.json, "NextMarker")), "beta"));
	done(&a);
	call(fe, "GET", "/2015-03-31/functions", "Marker=beta&MaxItems=2", NULL, S, NULL, NULL, &a);
	json_t *fl = json_object_get(a.json, "Functions");
	CHECK(json_array_size(fl) == 1 && !json_object_get(a.json, "NextMarker"));
	CHECK(!strcmp(json_string_value(json_object_get(json_array_get(fl, 0), "FunctionName")), "gamma"));
	done(&a);
	call(fe, "GET", "/2015-03-31/functions/", "MaxItems=0", NULL, S, NULL, NULL, &a);
	CHECK(a.status == 400 && !strcmp(a.type, "InvalidParameterValueException"));
	done(&a);

	/* Errors. */
	struct {
		const char *method, *path, *body, *type;
		unsigned status;
	} bad[] = {
		{ "GET", "/2015-03-31/functions/nope", NULL, "ResourceNotFoundException", 404 },
		{ "GET", "/2015-03-31/functions/..%2F..%2Fetc/configuration", NULL, "InvalidParameterValueException", 400 },
		{ "GET", "/2015-03-31/functions/../../etc", NULL, "InvalidParameterValueException", 400 },
		{ "GET", "/2015-03-31/elsewhere", NULL, "UnknownOperationException", 404 },
		{ "PATCH", "/2015-03-31/functions/alpha", NULL, "UnknownOperationException", 404 },
		{ "POST", "/2015-03-31/functions", "{\"FunctionName\":", "InvalidRequestContentException", 400 },
		{ "POST", "/2015-03-31/functions", "[1]", "InvalidRequestContentException", 400 },
		{ "POST", "/2015-03-31/functions", "{\"FunctionName\":\"x\",\"Code\":{\"ImageUri\":\"a\"},\"Nope\":1}",
		  "InvalidParameterValueException", 400 },
		{ "POST", "/2015-03-31/functions", "{\"FunctionName\":\"x\",\"Code\":{\"ZipFile\":\"UEs=\"}}",
		  "InvalidParameterValueException", 400 },
		{ "POST", "/2015-03-31/functions", "{\"FunctionName\":\"x\",\"Code\":{\"ImageUri\":\"a\"},\"Timeout\":901}",
		  "InvalidParameterValueException", 400 },
		{ "PUT", "/2015-03-31/functions/alpha/configuration",
		  "{\"Environment\":{\"Variables\":{\"AWS_LAMBDA_FUNCTION_NAME\":\"x\"}}}", "InvalidParameterValueException",
		  400 },
		{ "POST", "/2015-03-31/functions/alpha/versions", "{}", "ResourceConflictException", 409 },
		{ "PUT", "/2019-09-30/functions/alpha/provisioned-concurrency", "{\"ProvisionedConcurrentExecutions\":1}",
		  "InvalidParameterValueException", 400 },
		{ "POST", "/2015-03-31/functions/alpha/invocations", "{oops", "InvalidRequestContentException", 400 },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		call(fe, bad[i].method, bad[i].path, NULL, bad[i].body, S, NULL, NULL, &a);
		if (a.status != bad[i].status || strcmp(a.type, bad[i].type) != 0)
			fprintf(stderr, "%s %s: got %u %s\n", bad[i].method, bad[i].path, a.status, a.type);
		CHECK(a.status == bad[i].status && !strcmp(a.type, bad[i].type));
		done(&a);
	}
	call(fe, "POST", "/2015-03-31/functions/alpha/invocations", NULL, "{}", S, "X-Amz-Invocation-Type", "Sometimes", &a);
	CHECK(a.status == 400 && !strcmp(a.type, "InvalidParameterValueException"));
	done(&a);

	/* SnapStart: ApplyOn is PublishedVersions or None; PublishedVersions
	 * needs an agent that snapshots (there is none here). */
	call(fe, "PUT", "/2015-03-31/functions/alpha/configuration", NULL, "{\"SnapStart\":{\"ApplyOn\":\"Sometimes\"}}",
	     S, NULL, NULL, &a);
	CHECK(a.status == 400 && !strcmp(a.type, "InvalidParameterValueException"));
	CHECK(strstr(json_string_value(json_object_get(a.json, "message")), "Value Sometimes at 'snapStart.applyOn'"));
	done(&a);
	call(fe, "PUT", "/2015-03-31/functions/alpha/configuration", NULL, "{\"SnapStart\":{\"ApplyOn\":7}}", S, NULL,
	     NULL, &a);
	CHECK(a.status == 400 && strstr(json_string_value(json_object_get(a.json, "message")), "Value 7 at"));
	done(&a);
	call(fe, "PUT", "/2015-03-31/functions/alpha/configuration", NULL, "{\"SnapStart\":{\"Apply\":\"None\"}}", S,
	     NULL, NULL, &a);
	CHECK(a.status == 400 && strstr(json_string_value(json_object_get(a.json, "message")), "'Apply' in SnapStart"));
	done(&a);
	call(fe, "PUT", "/2015-03-31/functions/alpha/configuration", NULL, "{\"SnapStart\":\"On\"}", S, NULL, NULL, &a);
	CHECK(a.status == 400 && !strcmp(a.type, "InvalidParameterValueException"));
	done(&a);
	call(fe, "POST", "/2015-03-31/functions", NULL,
	     "{\"FunctionName\":\"snappy\",\"Code\":{\"ImageUri\":\"missing:1\"},\"SnapStart\":{\"ApplyOn\":"
	     "\"PublishedVersions\"}}",
	     S, NULL, NULL, &a);
	CHECK(a.status == 400 && !strcmp(a.type, "InvalidParameterValueException"));
	CHECK(strstr(json_string_value(json_object_get(a.json, "message")), "--isolation microvm"));
	done(&a);
	call(fe, "PUT", "/2015-03-31/functions/alpha/configuration", NULL, "{\"SnapStart\":{\"ApplyOn\":\"None\"}}", S,
	     NULL, NULL, &a);
	CHECK(a.status == 200);
	json_t *ss = json_object_get(a.json, "SnapStart");
	CHECK(!strcmp(json_string_value(json_object_get(ss, "ApplyOn")), "None") &&
	      !strcmp(json_string_value(json_object_get(ss, "OptimizationStatus")), "Off"));
	done(&a);
	call(fe, "GET", "/2015-03-31/functions/gamma", NULL, NULL, S, NULL, NULL, &a);
	ss = json_object_get(json_object_get(a.json, "Configuration"), "SnapStart");
	CHECK(!strcmp(json_string_value(json_object_get(ss, "ApplyOn")), "None") &&
	      !strcmp(json_string_value(json_object_get(ss, "OptimizationStatus")), "Off"));
	done(&a);

	/* Reserved concurrency settings. */
	call(fe, "PUT", "/2017-10-31/functions/beta/concurrency", NULL, "{\"ReservedConcurrentExecutions\":2}", S, NULL,
	     NULL, &a);
	CHECK(a.status == 200 && json_integer_value(json_object_get(a.json, "ReservedConcurrentExecutions")) == 2);
	done(&a);
	call(fe, "PUT", "/2017-10-31/functions/beta/concurrency", NULL, "{\"ReservedConcurrentExecutions\":4}", S, NULL,
	     NULL, &a);
	CHECK(a.status == 400); /* above the account's 3 */
	done(&a);
	call(fe, "GET", "/2019-09-30/functions/beta/concurrency", NULL, NULL, S, NULL, NULL, &a);
	CHECK(a.status == 200 && json_integer_value(json_object_get(a.json, "ReservedConcurrentExecutions")) == 2);
	done(&a);
	call(fe, "GET", "/2015-03-31/functions/beta", NULL, NULL, S, NULL, NULL, &a);
	CHECK(json_integer_value(json_object_get(json_object_get(a.json, "Concurrency"), "ReservedConcurrentExecutions")) == 2);
	done(&a);
	call(fe, "DELETE", "/2017-10-31/functions/beta/concurrency", NULL, NULL, S, NULL, NULL, &a);
	CHECK(a.status == 204);
	done(&a);
	call(fe, "GET", "/2019-09-30/functions/beta/concurrency", NULL, NULL, S, NULL, NULL, &a);
	CHECK(a.status == 200 && json_object_size(a.json) == 0);
	done(&a);

	/* The slots behind 429: reserved first, then the account's limit. */
	struct fe_error e;
	CHECK(fe_slot_take(fe, "f", 1, &e));
	CHECK(!fe_slot_take(fe, "f", 1, &e) && e.status == 429 &&
	      !strcmp(e.reason, "ReservedFunctionConcurrentInvocationLimitExceeded"));
	CHECK(fe_slot_take(fe, "g", -1, &e) && fe_slot_take(fe, "g", -1, &e));
	CHECK(!fe_slot_take(fe, "h", -1, &e) && !strcmp(e.reason, "ConcurrentInvocationLimitExceeded"));
	CHECK(!fe_slot_take(fe, "h", 0, &e) && !strcmp(e.reason, "ReservedFunctionConcurrentInvocationLimitExceeded"));
	fe_slot_put(fe, "g", -1);
	CHECK(fe_slot_take(fe, "h", -1, &e));
	fe_slot_put(fe, "h", -1);
	fe_slot_put(fe, "g", -1);
	fe_slot_put(fe, "f", 1);

	/* Body limits: 6 MB sync, 1 MB Event, 1 MB for the rest. */
	struct http_header ev = { "X-Amz-Invocation-Type", "Event" };
	struct http_request lr = { .method = "POST", .path = "/2015-03-31/functions/f/invocations", .query = "" };
	CHECK(frontend_http_ops.body_limit(fe, &lr) == 6u << 20);
	lr.headers = &ev;
	lr.n_headers = 1;
	CHECK(frontend_http_ops.body_limit(fe, &lr) == 1u << 20);
	lr.path = "/2015-03-31/functions";
	CHECK(frontend_http_ops.body_limit(fe, &lr) == 1u << 20);

	/* Delete. */
	call(fe, "DELETE", "/2015-03-31/functions/gamma", NULL, NULL, S, NULL, NULL, &a);
	CHECK(a.status == 204);
	done(&a);
	call(fe, "GET", "/2015-03-31/functions/gamma", NULL, NULL, S, NULL, NULL, &a);
	CHECK(a.status == 404);
	done(&a);
	call(fe, "DELETE", "/2015-03-31/functions/beta", "Qualifier=$LATEST", NULL, S, NULL, NULL, &a);
	CHECK(a.status == 400);
	done(&a);

	frontend_free(fe);
	frontend_state_dir_close(st);
	sigv4_keys_free(keys);
	nftw(tmpl, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(home);
	free(fns);
	free(sd);
	printf("ok\n");
	return 0;
}
