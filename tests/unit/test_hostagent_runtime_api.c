/* The Runtime API's request routing and Lambda's error payloads and
 * messages (placement/hostagent/runtime_api.c), checked against what the
 * Runtime Interface Emulator and Lambda answer. */
/* ctest-labels: no-tsan (pure functions: nothing for ThreadSanitizer to check) */
#include "placement/hostagent/internal.h"

#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "tests/check.h"

static void test_routes(void)
{
	struct rapi_target t;
	rapi_route_parse("GET", "/2018-06-01/runtime/invocation/next", &t);
	CHECK(t.route == RAPI_ROUTE_NEXT);
	rapi_route_parse("POST", "/2018-06-01/runtime/invocation/next", &t);
	CHECK(t.route == RAPI_ROUTE_BAD_METHOD);
	rapi_route_parse("POST", "/2018-06-01/runtime/invocation/8476a536-e9f4-11e8-9739-2dfe598c3fcd/response", &t);
	CHECK(t.route == RAPI_ROUTE_RESPONSE && !t.id_invalid &&
	      strcmp(t.request_id, "8476a536-e9f4-11e8-9739-2dfe598c3fcd") == 0);
	rapi_route_parse("POST", "/2018-06-01/runtime/invocation/abc/error", &t);
	CHECK(t.route == RAPI_ROUTE_ERROR && strcmp(t.request_id, "abc") == 0);
	rapi_route_parse("GET", "/2018-06-01/runtime/invocation/abc/error", &t);
	CHECK(t.route == RAPI_ROUTE_BAD_METHOD);
	rapi_route_parse("POST", "/2018-06-01/runtime/init/error", &t);
	CHECK(t.route == RAPI_ROUTE_INIT_ERROR);
	rapi_route_parse("PUT", "/2018-06-01/runtime/init/error", &t);
	CHECK(t.route == RAPI_ROUTE_BAD_METHOD);
	/* An empty or over-long id is a known route with an invalid id. */
	rapi_route_parse("POST", "/2018-06-01/runtime/invocation//response", &t);
	CHECK(t.route == RAPI_ROUTE_RESPONSE && t.id_invalid && t.request_id[0] == '\0');
	char path[512];
	snprintf(path, sizeof(path), "/2018-06-01/runtime/invocation/%0*d/response", HA_REQUEST_ID_MAX + 1, 7);
	rapi_route_parse("POST", path, &t);
	CHECK(t.route == RAPI_ROUTE_RESPONSE && t.id_invalid);
	snprintf(path, sizeof(path), "/2018-06-01/runtime/invocation/%0*d/response", HA_REQUEST_ID_MAX, 7);
	rapi_route_parse("POST", path, &t);
	CHECK(t.route == RAPI_ROUTE_RESPONSE && !t.id_invalid && strlen(t.request_id) == HA_REQUEST_ID_MAX);
	/* Everything else is not found, strictly. */
	const char *none[] = {
		"/2018-06-01/runtime/invocation/next/",	 "/2018-06-01/runtime/invocation/a/b/response",
		"/2018-06-01/runtime/invocation/a/respons", "/2018-06-01/runtime/invocation",
		"/2018-06-02/runtime/invocation/next",	 "/runtime/invocation/next",
		"",					 "/2018-06-01/runtime/init/error/x",
		"/2018-06-01/runtime/invocation/a",
	};
	for (size_t i = 0; i < sizeof(none) / sizeof(none[0]); i++) {
		rapi_route_parse("POST", none[i], &t);
		CHECK(t.route == RAPI_ROUTE_NONE);
	}
	rapi_route_parse(NULL, NULL, &t);
	CHECK(t.route == RAPI_ROUTE_NONE);
}

static void test_error_type(void)
{
	char out[HA_ERROR_TYPE_MAX + 1];
	struct {
		const char *in, *want;
	} cases[] = {
		{ "Runtime.ImportModuleError", "Runtime.ImportModuleError" },
		{ "Function.MyError", "Function.MyError" },
		{ "Error", "Runtime.Unknown" },
		{ NULL, "Runtime.Unknown" },
		{ "", "Runtime.Unknown" },
		{ "Function.x", "Function.Unknown" },
		{ "Runtime.a", "Runtime.Unknown" },
		{ "Runtime.A", "Runtime.Unknown" }, /* a capital and at least one more letter */
		{ "My Runtime.HandlerError", "My Runtime.HandlerError" }, /* matched anywhere, as Lambda does */
		{ "Runtime.Bad\r\nX-Injected: 1", "Runtime.Unknown" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		rapi_error_type(cases[i].in, out, sizeof(out));
		CHECK(strcmp(out, cases[i].want) == 0);
	}
	char longer[HA_ERROR_TYPE_MAX + 16];
	memset(longer, 'a', sizeof(longer) - 1);
	memcpy(longer, "Runtime.Xy", 10);
	longer[sizeof(longer) - 1] = '\0';
	rapi_error_type(longer, out, sizeof(out));
	CHECK(strcmp(out, "Runtime.Unknown") == 0);
}

/* Parse |s| as a JSON object and return field |k|'s string (static copy). */
static const char *field(const char *s, const char *k)
{
	static char buf[8192];
	json_error_t e;
	json_t *j = json_loads(s, 0, &e);
	const char *v = json_string_value(json_object_get(j, k));
	snprintf(buf, sizeof(buf), "%s", v ? v : "<none>");
	json_decref(j);
	return buf;
}

static void test_error_payload(void)
{
	uint8_t *out = NULL;
	size_t len = 0;
	/* A JSON object passes through as it came. */
	const char *obj = "{\"errorMessage\":\"boom\",\"errorType\":\"TypeError\",\"stackTrace\":[\"a\"]}";
	CHECK(rapi_error_payload((const uint8_t *)obj, strlen(obj), "Runtime.Unknown", &out, &len) == 0);
	CHECK(len == strlen(obj) && memcmp(out, obj, len) == 0 && out[len] == '\0');
	free(out);
	/* Anything else is wrapped. */
	const char *text = "plain failure";
	CHECK(rapi_error_payload((const uint8_t *)text, strlen(text), "Function.Oops", &out, &len) == 0);
	CHECK(strcmp(field((char *)out, "errorMessage"), "plain failure") == 0);
	CHECK(strcmp(field((char *)out, "errorType"), "Function.Oops") == 0);
	free(out);
	CHECK(rapi_error_payload((const uint8_t *)"[1,2]", 5, "Runtime.Unknown", &out, &len) == 0);
	CHECK(strcmp(field((char *)out, "errorMessage"), "[1,2]") == 0);
	free(out);
	CHECK(rapi_error_payload((const uint8_t *)"", 0, "Runtime.Unknown", &out, &len) == 0);
	CHECK(strcmp(field((char *)out, "errorMessage"), "") == 0);
	free(out);
	/* Bytes that are not UTF-8 are replaced, so the result is valid JSON. */
	const uint8_t bad[] = { 'a', 0xff, 0xc3, 0x28, 'b', 0xed, 0xa0, 0x80, 0xe2, 0x82 };
	CHECK(rapi_error_payload(bad, sizeof(bad), "Runtime.Unknown", &out, &len) == 0);
	CHECK(strcmp(field((char *)out, "errorMessage"), "a\xef\xbf\xbd\xef\xbf\xbd(b\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
							 "\xef\xbf\xbd\xef\xbf\xbd") == 0);
	free(out);
	/* A NUL becomes U+FFFD too: consumers in C must see the whole message. */
	const uint8_t nul[] = { 'x', 0, 'y' };
	CHECK(rapi_error_payload(nul, sizeof(nul), "Runtime.Unknown", &out, &len) == 0);
	CHECK(strlen((char *)out) == len && strcmp(field((char *)out, "errorMessage"), "x\xef\xbf\xbdy") == 0);
	free(out);
	/* A JSON object with trailing garbage is not an object. */
	const char *trail = "{\"a\":1} x";
	CHECK(rapi_error_payload((const uint8_t *)trail, strlen(trail), "Runtime.Unknown", &out, &len) == 0);
	CHECK(strcmp(field((char *)out, "errorMessage"), trail) == 0);
	free(out);
}

static void test_messages(void)
{
	char ts[32];
	ha_format_timestamp(1605000000123LL, ts, sizeof(ts));
	CHECK(strcmp(ts, "2020-11-10T09:20:00.123Z") == 0);

	char *j = ha_err_timeout("req-1", 3, 1605000000123LL);
	CHECK(j && strcmp(field(j, "errorType"), "Sandbox.Timedout") == 0);
	CHECK(j && strcmp(field(j, "errorMessage"), "2020-11-10T09:20:00.123Z req-1 Task timed out after 3.00 seconds") == 0);
	/* The emulator's field order. */
	CHECK(j && strncmp(j, "{\"errorType\":", 13) == 0);
	free(j);

	j = ha_err_exit("Runtime.ExitError", "req-2", 1, 0);
	CHECK(j && strcmp(field(j, "errorMessage"), "RequestId: req-2 Error: Runtime exited with error: exit status 1") == 0);
	CHECK(j && strcmp(field(j, "errorType"), "Runtime.ExitError") == 0);
	free(j);
	j = ha_err_exit("Runtime.OutOfMemory", "req-3", -1, SIGKILL);
	CHECK(j && strcmp(field(j, "errorMessage"), "RequestId: req-3 Error: Runtime exited with error: signal: killed") == 0);
	CHECK(j && strcmp(field(j, "errorType"), "Runtime.OutOfMemory") == 0);
	free(j);
	j = ha_err_exit("Runtime.ExitError", "req-4", 0, 0);
	CHECK(j && strcmp(field(j, "errorMessage"), "RequestId: req-4 Error: Runtime exited without providing a reason") == 0);
	free(j);

	j = ha_err_entrypoint("req-5", "/var/task/bootstrap", ENOENT);
	CHECK(j && strcmp(field(j, "errorType"), "Runtime.InvalidEntrypoint") == 0);
	CHECK(j && strcmp(field(j, "errorMessage"),
			  "RequestId: req-5 Error: fork/exec /var/task/bootstrap: no such file or directory") == 0);
	free(j);
	j = ha_err_oversize(7000000);
	CHECK(j && strcmp(field(j, "errorType"), "Function.ResponseSizeTooLarge") == 0);
	CHECK(j && strcmp(field(j, "errorMessage"), "Response payload size (7000000 bytes) exceeded maximum allowed "
						     "payload size (6291556 bytes).") == 0);
	free(j);
	j = ha_err_shutdown("req-6");
	CHECK(j && strcmp(field(j, "errorType"), "Sandbox.Failure") == 0);
	free(j);

	char b[64];
	CHECK(strcmp(ha_signal_name(SIGKILL, b, sizeof(b)), "killed") == 0);
	CHECK(strcmp(ha_signal_name(SIGSEGV, b, sizeof(b)), "segmentation fault") == 0);
	CHECK(strcmp(ha_signal_name(SIGABRT, b, sizeof(b)), "aborted") == 0);
	CHECK(strcmp(ha_signal_name(SIGXCPU, b, sizeof(b)), "CPU time limit exceeded") == 0);
	CHECK(strcmp(ha_signal_name(999, b, sizeof(b)), "signal 999") == 0);
}

int main(void)
{
	test_routes();
	test_error_type();
	test_error_payload();
	test_messages();
	return check_report();
}
