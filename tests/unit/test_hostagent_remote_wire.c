/* The host agent's HTTP API wire format (placement/hostagent/wire.c): the
 * function spec round-trips through its JSON; every malformed field is
 * refused with a message naming it; provision, drain and snapshot bodies,
 * the snapshot's answer and the agent's info; the mapping of the agent's
 * errors to statuses and markers and back. */
/* ctest-labels: no-tsan (single-threaded parsers: nothing for ThreadSanitizer to check) */
#include "placement/hostagent/internal.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/check.h"

#define DIGEST "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

/* Parse |json| and expect -EINVAL with |field| in the message. */
static void refused(const char *json, const char *field)
{
	struct ha_wire_function w;
	char err[256] = "";
	int r = ha_wire_function_parse(json, &w, err, sizeof(err));
	CHECK(r == -EINVAL);
	if (!strstr(err, field))
		fprintf(stderr, "for %s: message '%s' does not name %s\n", json, err, field);
	CHECK(strstr(err, field) != NULL);
	ha_wire_function_cleanup(&w);
}

static void test_round_trip(void)
{
	char *env[] = { "A=1", "B=two words", NULL }, *cmd[] = { "handler.main", NULL }, *ep[] = { "/bin/sh", "-c", NULL };
	struct hostagent_function f = {
		.name = "my-fn",
		.version = "$LATEST",
		.arn = "arn:aws:lambda:us-east-1:000000000000:function:my-fn",
		.image_digest = DIGEST,
		.revision_id = "r-1",
		.memory_mb = 256,
		.timeout_s = 30,
		.env = env,
		.entrypoint = ep,
		.command = cmd,
		.working_dir = "/var/task",
		.mode = HOSTAGENT_MODE_STDIO,
	};
	char *j = ha_wire_function_json(&f);
	CHECK(j != NULL);
	CHECK(j && !strchr(j, '\n') && !strchr(j, '\r'));
	struct ha_wire_function w;
	char err[256] = "";
	CHECK(ha_wire_function_parse(j, &w, err, sizeof(err)) == 0);
	CHECK(strcmp(w.f.name, "my-fn") == 0 && strcmp(w.f.version, "$LATEST") == 0);
	CHECK(strcmp(w.f.image_digest, DIGEST) == 0 && strcmp(w.f.revision_id, "r-1") == 0);
	CHECK(strcmp(w.f.arn, f.arn) == 0 && strcmp(w.f.working_dir, "/var/task") == 0);
	CHECK(w.f.memory_mb == 256 && w.f.timeout_s == 30 && w.f.mode == HOSTAGENT_MODE_STDIO);
	CHECK(w.f.env && strcmp(w.f.env[1], "B=two words") == 0 && !w.f.env[2]);
	CHECK(w.f.entrypoint && strcmp(w.f.entrypoint[1], "-c") == 0 && !w.f.entrypoint[2]);
	CHECK(w.f.command && strcmp(w.f.command[0], "handler.main") == 0);
	ha_wire_function_cleanup(&w);
	free(j);

	/* Non-ASCII stays in one header-safe line. */
	char *env2[] = { "GREETING=h\xc3\xa9llo\nworld", NULL };
	f.env = env2;
	f.mode = HOSTAGENT_MODE_RUNTIME_API;
	j = ha_wire_function_json(&f);
	CHECK(j && !strchr(j, '\n'));
	for (const char *p = j; p && *p; p++)
		CHECK((unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f);
	CHECK(ha_wire_function_parse(j, &w, err, sizeof(err)) == 0);
	CHECK(w.f.env && strcmp(w.f.env[0], "GREETING=h\xc3\xa9llo\nworld") == 0);
	CHECK(w.f.mode == HOSTAGENT_MODE_RUNTIME_API);
	ha_wire_function_cleanup(&w);
	free(j);
}

static void test_refusals(void)
{
	refused(NULL, "Kindling-Function");
	refused("{", "not JSON");
	refused("[]", "object");
	refused("{\"version\":\"1\",\"image\":\"" DIGEST "\",\"memory_mb\":128,\"timeout_s\":3}", "name");
	refused("{\"name\":\"a/b\",\"version\":\"1\",\"image\":\"" DIGEST "\",\"memory_mb\":128,\"timeout_s\":3}", "name");
	refused("{\"name\":\"f\",\"version\":\"1\",\"image\":\"" DIGEST "\",\"memory_mb\":128,\"timeout_s\":3,\"name\":\"g\"}",
		"duplicate");
	refused("{\"name\":\"f\",\"image\":\"" DIGEST "\",\"memory_mb\":128,\"timeout_s\":3}", "version");
	refused("{\"name\":\"f\",\"version\":\"a b\",\"image\":\"" DIGEST "\",\"memory_mb\":128,\"timeout_s\":3}", "version");
	refused("{\"name\":\"f\",\"version\":\"1\",\"image\":\"ABC\",\"memory_mb\":128,\"timeout_s\":3}", "image");
	refused("{\"name\":\"f\",\"version\":\"1\",\"image\":\"" DIGEST "\",\"timeout_s\":3}", "memory_mb");
	refused("{\"name\":\"f\",\"version\":\"1\",\"image\":\"" DIGEST "\",\"memory_mb\":64,\"timeout_s\":3}", "memory_mb");
	refused("{\"name\":\"f\",\"version\":\"1\",\"image\":\"" DIGEST "\",\"memory_mb\":\"128\",\"timeout_s\":3}",
		"memory_mb");
	refused("{\"name\":\"f\",\"version\":\"1\",\"image\":\"" DIGEST "\",\"memory_mb\":128,\"timeout_s\":0}", "timeout_s");
	refused("{\"name\":\"f\",\"version\":\"1\",\"image\":\"" DIGEST "\",\"memory_mb\":128,\"timeout_s\":901}",
		"timeout_s");
	refused("{\"name\":\"f\",\"version\":\"1\",\"image\":\"" DIGEST "\",\"memory_mb\":128,\"timeout_s\":3,\"mode\":\"x\"}",
		"mode");
	refused("{\"name\":\"f\",\"version\":\"1\",\"image\":\"" DIGEST "\",\"memory_mb\":128,\"timeout_s\":3,\"env\":\"A=1\"}",
		"env");
	refused("{\"name\":\"f\",\"version\":\"1\",\"image\":\"" DIGEST "\",\"memory_mb\":128,\"timeout_s\":3,\"env\":[\"A\"]}",
		"env[0]");
	refused("{\"name\":\"f\",\"version\":\"1\",\"image\":\"" DIGEST "\",\"memory_mb\":128,\"timeout_s\":3,\"env\":[\"=1\"]}",
		"env[0]");
	refused("{\"name\":\"f\",\"version\":\"1\",\"image\":\"" DIGEST
		"\",\"memory_mb\":128,\"timeout_s\":3,\"command\":[\"a\",1]}",
		"command[1]");
	refused("{\"name\":\"f\",\"version\":\"1\",\"image\":\"" DIGEST
		"\",\"memory_mb\":128,\"timeout_s\":3,\"entrypoint\":[\"a\\u0000b\"]}",
		"u0000"); /* jansson refuses NUL in strings */
	refused("{\"name\":\"f\\u0000x\",\"version\":\"1\",\"image\":\"" DIGEST "\",\"memory_mb\":128,\"timeout_s\":3}",
		"u0000");
	refused("{\"name\":\"f\",\"version\":\"1\",\"image\":\"" DIGEST
		"\",\"memory_mb\":128,\"timeout_s\":3,\"working_dir\":\"rel\"}",
		"working_dir");
	refused("{\"name\":\"f\",\"version\":\"1\",\"image\":\"" DIGEST "\",\"memory_mb\":128,\"timeout_s\":3,\"arn\":\"\"}",
		"arn");
}

static void test_bodies(void)
{
	struct ha_wire_function w;
	unsigned n = 99;
	char err[256] = "";
	const char *ok = "{\"function\":{\"name\":\"f\",\"version\":\"1\",\"image\":\"" DIGEST
			 "\",\"memory_mb\":128,\"timeout_s\":3},\"n\":2}";
	CHECK(ha_wire_provision_parse((const uint8_t *)ok, strlen(ok), &w, &n, err, sizeof(err)) == 0 && n == 2);
	CHECK(w.f.name && strcmp(w.f.name, "f") == 0);
	ha_wire_function_cleanup(&w);
	const char *neg = "{\"function\":{},\"n\":-1}";
	CHECK(ha_wire_provision_parse((const uint8_t *)neg, strlen(neg), &w, &n, err, sizeof(err)) == -EINVAL);
	CHECK(strstr(err, "n must") != NULL);
	ha_wire_function_cleanup(&w);
	CHECK(ha_wire_provision_parse(NULL, 0, &w, &n, err, sizeof(err)) == -EINVAL);
	ha_wire_function_cleanup(&w);

	void *root = NULL;
	const char *name, *version, *keep;
	const char *d = "{\"name\":\"f\",\"version\":\"$LATEST\",\"keep_revision\":\"r2\"}";
	CHECK(ha_wire_drain_parse((const uint8_t *)d, strlen(d), &root, &name, &version, &keep, err, sizeof(err)) == 0);
	CHECK(strcmp(name, "f") == 0 && strcmp(version, "$LATEST") == 0 && strcmp(keep, "r2") == 0);
	json_decref(root);
	d = "{\"name\":\"f\"}";
	CHECK(ha_wire_drain_parse((const uint8_t *)d, strlen(d), &root, &name, &version, &keep, err, sizeof(err)) == 0);
	CHECK(version == NULL && keep == NULL);
	json_decref(root);
	d = "{\"name\":\"../x\"}";
	CHECK(ha_wire_drain_parse((const uint8_t *)d, strlen(d), &root, &name, &version, &keep, err, sizeof(err)) ==
	      -EINVAL);
	CHECK(strstr(err, "name") != NULL);
	json_decref(root);
	d = "{\"name\":\"f\",\"version\":7}";
	CHECK(ha_wire_drain_parse((const uint8_t *)d, strlen(d), &root, &name, &version, &keep, err, sizeof(err)) ==
	      -EINVAL);
	CHECK(strstr(err, "version") != NULL);
	json_decref(root);
}

static void test_statuses(void)
{
	static const int errs[] = { -EINVAL, -ENOENT, -EAGAIN, -EBUSY, -ESHUTDOWN, -ENOTSUP, -ETIMEDOUT, -ECHILD, -EIO };
	static const unsigned statuses[] = { 400, 404, 409, 429, 503, 501, 504, 422, 500 };
	for (size_t i = 0; i < sizeof(errs) / sizeof(errs[0]); i++) {
		unsigned st;
		const char *m;
		ha_wire_status(errs[i], &st, &m);
		CHECK(st == statuses[i]);
		CHECK(ha_wire_errno(m) == errs[i]);
	}
	unsigned st;
	const char *m;
	ha_wire_status(-ENOSPC, &st, &m);
	CHECK(st == 500 && ha_wire_errno(m) == -EIO);
	CHECK(ha_wire_errno(NULL) == -EPROTO && ha_wire_errno("teapot") == -EPROTO);

	char *s = ha_wire_json_string("\"a\\nb\"");
	CHECK(s && strcmp(s, "a\nb") == 0);
	free(s);
	CHECK(ha_wire_json_string("7") == NULL && ha_wire_json_string("\"x") == NULL && ha_wire_json_string(NULL) == NULL);
	CHECK(ha_wire_name_ok("a-B_9") && !ha_wire_name_ok("") && !ha_wire_name_ok("a.b") && !ha_wire_name_ok(NULL));
}

#define SNAP_DIGEST "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define SNAP_FN "{\"name\":\"f\",\"version\":\"1\",\"image\":\"" SNAP_DIGEST "\",\"memory_mb\":128,\"timeout_s\":3"

/* Parse the snapshot body |b|: its result, with |err| and |*name|. */
static int snap_parse(const char *b, char *err, size_t err_len, const char **name)
{
	struct ha_wire_function w;
	int r = ha_wire_snapshot_parse((const uint8_t *)b, strlen(b), &w, name, err, err_len);
	if (r == 0)
		CHECK(strcmp(*name, "snapstart-f:1") == 0 && strcmp(w.f.name, "f") == 0 && !w.f.snapshot);
	ha_wire_function_cleanup(&w);
	return r;
}

static void test_snapshot(void)
{
	/* The function's snapshot rides along and comes back. */
	struct hostagent_function f = { .name = "f", .version = "1", .image_digest = SNAP_DIGEST, .memory_mb = 128,
					.timeout_s = 3, .snapshot = "snapstart-f:1" };
	char *j = ha_wire_function_json(&f);
	struct ha_wire_function w;
	char err[256];
	CHECK(j && ha_wire_function_parse(j, &w, err, sizeof(err)) == 0 && w.f.snapshot &&
	      strcmp(w.f.snapshot, "snapstart-f:1") == 0);
	ha_wire_function_cleanup(&w);
	free(j);
	CHECK(ha_wire_function_parse(SNAP_FN ",\"snapshot\":\"a b\"}", &w, err, sizeof(err)) == -EINVAL &&
	      strstr(err, "snapshot"));
	ha_wire_function_cleanup(&w);
	CHECK(ha_wire_function_parse(SNAP_FN ",\"snapshot\":7}", &w, err, sizeof(err)) == -EINVAL &&
	      strstr(err, "snapshot must be a string"));
	ha_wire_function_cleanup(&w);

	/* POST /v1/snapshot's body. */
	const char *name = NULL;
	CHECK(snap_parse("{\"function\":" SNAP_FN "},\"name\":\"snapstart-f:1\"}", err, sizeof(err), &name) == 0);
	CHECK(snap_parse("[]", err, sizeof(err), &name) == -EINVAL && strstr(err, "JSON object"));
	CHECK(snap_parse("{", err, sizeof(err), &name) == -EINVAL && strstr(err, "not JSON"));
	CHECK(snap_parse("{\"function\":" SNAP_FN "}}", err, sizeof(err), &name) == -EINVAL &&
	      strstr(err, "name is missing"));
	CHECK(snap_parse("{\"function\":" SNAP_FN "},\"name\":\"" SNAP_DIGEST "\"}", err, sizeof(err), &name) ==
		      -EINVAL &&
	      strstr(err, "NAME[:TAG]"));
	CHECK(snap_parse("{\"name\":\"snapstart-f:1\"}", err, sizeof(err), &name) == -EINVAL &&
	      strstr(err, "function is missing"));
	CHECK(snap_parse("{\"function\":" SNAP_FN ",\"mode\":\"stdio\"},\"name\":\"snapstart-f:1\"}", err,
			 sizeof(err), &name) == -EINVAL &&
	      strstr(err, "function.mode"));
	CHECK(snap_parse("{\"function\":" SNAP_FN ",\"snapshot\":\"x:1\"},\"name\":\"snapstart-f:1\"}", err,
			 sizeof(err), &name) == -EINVAL &&
	      strstr(err, "function.snapshot"));
	CHECK(snap_parse("{\"function\":{\"name\":\"f\"},\"name\":\"snapstart-f:1\"}", err, sizeof(err), &name) ==
		      -EINVAL &&
	      strstr(err, "version"));

	/* Its answer. */
	char digest[65];
	const char *a = "{\"digest\":\"" SNAP_DIGEST "\"}";
	CHECK(ha_wire_snapshot_answer_parse((const uint8_t *)a, strlen(a), digest, err, sizeof(err)) == 0 &&
	      strcmp(digest, SNAP_DIGEST) == 0);
	a = "{\"digest\":\"ABC\"}";
	CHECK(ha_wire_snapshot_answer_parse((const uint8_t *)a, strlen(a), digest, err, sizeof(err)) == -EINVAL &&
	      strstr(err, "digest") && digest[0] == '\0');
	CHECK(ha_wire_snapshot_answer_parse(NULL, 0, digest, err, sizeof(err)) == -EINVAL);

	/* GET /v1/info. */
	bool snap = false;
	char why[128];
	a = "{\"isolation\":\"microvm\",\"snapshot\":true}";
	CHECK(ha_wire_info_parse((const uint8_t *)a, strlen(a), &snap, why, sizeof(why), err, sizeof(err)) == 0 && snap);
	a = "{\"isolation\":\"process\",\"snapshot\":false,\"snapshot_why\":\"use microvm\"}";
	CHECK(ha_wire_info_parse((const uint8_t *)a, strlen(a), &snap, why, sizeof(why), err, sizeof(err)) == 0 && !snap &&
	      strcmp(why, "use microvm") == 0);
	a = "{\"snapshot\":\"yes\"}";
	CHECK(ha_wire_info_parse((const uint8_t *)a, strlen(a), &snap, why, sizeof(why), err, sizeof(err)) == -EINVAL &&
	      !snap && strstr(err, "snapshot must be true or false"));
}

int main(void)
{
	test_round_trip();
	test_refusals();
	test_bodies();
	test_statuses();
	test_snapshot();
	return check_report();
}
