/* SnapStart in the frontend, with a test-double host agent whose snapshots
 * succeed or fail on demand: PublishVersion of a SnapStart function answers
 * Pending (StateReasonCode Creating) and the version becomes Active with
 * OptimizationStatus On and the snapshot's digest in the spec its cold
 * starts get, or Failed with the step in StateReason; the agent is asked
 * for snapstart-NAME:VERSION of that version, booting; a function without
 * SnapStart publishes Active at once; an agent that cannot snapshot refuses
 * ApplyOn PublishedVersions with its reason; invoking a Pending version is
 * 409; when another frontend records its own snapshot of the version
 * first, the ref snapstart-NAME:VERSION is pointed back at the recorded
 * one; a snapshot cut short by a lost agent (-ECONNRESET) twice is tried
 * again and the version goes Active, one lost on every try goes Failed
 * after the bound with a reason that says so.  Requests go straight to frontend_http_ops, unsigned (no keys).
 */
#include "frontend/internal.h"

#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CHECK(c)                                                                    \
	do {                                                                        \
		if (!(c)) {                                                         \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
			exit(1);                                                    \
		}                                                                   \
	} while (0)

#define DIGEST "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define SNAP_DIGEST "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
#define OTHER_DIGEST "aaaabbbbccccddddaaaabbbbccccddddaaaabbbbccccddddaaaabbbbccccdddd"

/* The double: what it was asked, and what it answers. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static bool supported = true, fail_next, race_next;
static unsigned lost_next; /* snapshots still to be cut short by a lost agent */
/* The frontend under test, for the double that plays another frontend. */
static struct frontend *the_fe;
static unsigned snapshots;
static char last_name[128], last_version[32], last_invoked_snapshot[80];
static bool last_had_snapshot;

static int fake_invoke(void *arg, const struct hostagent_invoke_request *req, struct hostagent_invoke_result *out)
{
	(void)arg;
	pthread_mutex_lock(&lock);
	snprintf(last_invoked_snapshot, sizeof(last_invoked_snapshot), "%s", req->fn->snapshot ? req->fn->snapshot : "");
	pthread_mutex_unlock(&lock);
	memset(out, 0, sizeof(*out));
	out->payload = (uint8_t *)strdup("{}");
	out->payload_len = 2;
	return out->payload ? 0 : -ENOMEM;
}

static int fake_provision(void *arg, const struct hostagent_function *fn, unsigned n)
{
	(void)arg, (void)fn, (void)n;
	return 0;
}

static void fake_drain(void *arg, const char *name, const char *version, const char *keep_revision)
{
	(void)arg, (void)name, (void)version, (void)keep_revision;
}

static void fake_stats(void *arg, struct hostagent_stats *out)
{
	(void)arg;
	memset(out, 0, sizeof(*out));
}

static int fake_read_log(void *arg, const char *name, size_t max, char **out, size_t *out_len)
{
	(void)arg, (void)name, (void)max, (void)out, (void)out_len;
	return -ENOENT;
}

static bool fake_supported(void *arg, char *why, size_t len)
{
	(void)arg;
	pthread_mutex_lock(&lock);
	bool ok = supported;
	pthread_mutex_unlock(&lock);
	if (!ok)
		snprintf(why, len, "the double says no: use --isolation microvm");
	return ok;
}

static int fake_snapshot(void *arg, const struct hostagent_function *fn, const char *name, char digest[65], char *why,
			 size_t why_len)
{
	(void)arg;
	pthread_mutex_lock(&lock);
	snapshots++;
	snprintf(last_name, sizeof(last_name), "%s", name);
	snprintf(last_version, sizeof(last_version), "%s", fn->version);
	last_had_snapshot = fn->snapshot != NULL;
	bool fail = fail_next, race = race_next, lost = lost_next > 0;
	fail_next = race_next = false;
	if (lost)
		lost_next--;
	pthread_mutex_unlock(&lock);
	if (lost) {
		/* What the remote client says of an agent that died mid-call. */
		snprintf(why, why_len, "the host agent at http://127.0.0.1:9 was lost while it took the snapshot");
		return -ECONNRESET;
	}
	if (race) {
		/* Another frontend finishes its snapshot of this version first:
		 * the record says Active with that one's digest. */
		pthread_mutex_lock(&the_fe->lock);
		json_t *rec = NULL;
		CHECK(fe_record_load(the_fe, fn->name, &rec) == 0);
		json_t *v = json_object_get(json_object_get(rec, "Versions"), fn->version);
		json_object_set_new(v, "State", json_string("Active"));
		json_object_set_new(v, "_SnapshotDigest", json_string(OTHER_DIGEST));
		CHECK(fe_record_save(the_fe, fn->name, rec) == 0);
		pthread_mutex_unlock(&the_fe->lock);
		json_decref(rec);
	}
	if (fail) {
		snprintf(why, why_len, "the runtime did not ask for work (GET /runtime/invocation/next) in time");
		return -ETIMEDOUT;
	}
	snprintf(digest, 65, "%s", SNAP_DIGEST);
	return 0;
}

static const struct hostagent_ops fake_ops = {
	.invoke = fake_invoke,
	.provision = fake_provision,
	.drain = fake_drain,
	.get_stats = fake_stats,
	.read_log = fake_read_log,
	.snapshot_supported = fake_supported,
	.snapshot = fake_snapshot,
};

struct answer {
	unsigned status;
	json_t *json;
};

static void call(struct frontend *fe, const char *method, const char *path, const char *query, const char *body,
		 struct answer *a)
{
	struct http_header h[1] = { { "host", "127.0.0.1:9000" } };
	char *dpath = NULL;
	CHECK(http_path_decode(path, &dpath) == 0);
	struct http_request req = { .method = method, .version = "HTTP/1.1", .raw_path = path, .path = dpath,
				    .query = query ? query : "", .headers = h, .n_headers = 1,
				    .body = (const uint8_t *)(body ? body : ""), .body_len = body ? strlen(body) : 0,
				    .peer = "127.0.0.1:1" };
	struct http_response resp = { .status = 200 };
	CHECK(frontend_http_ops.handle(fe, &req, &resp) == 0);
	a->status = resp.status;
	a->json = resp.body_len ? json_loadb((const char *)resp.body, resp.body_len, 0, NULL) : NULL;
	for (size_t i = 0; i < resp.n_headers; i++) {
		free((char *)resp.headers[i].name);
		free((char *)resp.headers[i].value);
	}
	free(resp.headers);
	free(resp.body);
	free(dpath);
}

static const char *str(json_t *j, const char *key) { return json_string_value(json_object_get(j, key)); }

/* An Active function |name| as an import would leave it, with SnapStart
 * ApplyOn |apply| (NULL: none). */
static void put_active(struct frontend *fe, const char *name, const char *apply)
{
	json_t *latest = json_pack("{s:s,s:s,s:s,s:i,s:i,s:s,s:s,s:s,s:s}", "FunctionName", name, "Version", "$LATEST",
				   "State", "Active", "MemorySize", 128, "Timeout", 3, "RevisionId", "rev-1",
				   "_ImageDigest", DIGEST, "CodeSha256", DIGEST, "PackageType", "Image");
	if (apply)
		json_object_set_new(latest, "_SnapStartApplyOn", json_string(apply));
	json_t *rec = json_pack("{s:o,s:{},s:i}", "Latest", latest, "Versions", "NextVersion", 1);
	pthread_mutex_lock(&fe->lock);
	CHECK(fe_record_save(fe, name, rec) == 0);
	pthread_mutex_unlock(&fe->lock);
	json_decref(rec);
}

/* Poll version |q| of |name| until it leaves Pending (at most 30 s); its
 * configuration in |a|. */
static void wait_settled(struct frontend *fe, const char *name, const char *q, struct answer *a)
{
	char path[128], query[64];
	snprintf(path, sizeof(path), "/2015-03-31/functions/%s/configuration", name);
	snprintf(query, sizeof(query), "Qualifier=%s", q);
	for (int i = 0; i < 3000; i++) {
		call(fe, "GET", path, query, NULL, a);
		CHECK(a->status == 200);
		if (strcmp(str(a->json, "State"), "Pending") != 0)
			return;
		json_decref(a->json);
		usleep(10000);
	}
	CHECK(!"the version stayed Pending");
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb, (void)flag, (void)ftw;
	remove(path);
	return 0;
}

int main(void)
{
	char tmpl[] = "/tmp/kindling-test-snapstart.XXXXXX";
	CHECK(mkdtemp(tmpl));
	char *home = xasprintf("%s/home", tmpl), *fns = xasprintf("%s/functions", tmpl);
	setenv("KINDLING_HOME", home, 1);
	void *st = NULL;
	CHECK(frontend_state_dir_open(fns, &st) == 0);
	struct frontend_config cfg = { .agent_ops = &fake_ops, .state_ops = &frontend_state_dir_ops, .state_arg = st,
				       .state_dir = tmpl, .snapshot_retry_ms = 1 };
	struct frontend *fe = NULL;
	CHECK(frontend_new(&cfg, &fe) == 0);
	the_fe = fe;
	struct answer a;

	/* Publish a SnapStart function: Pending, then Active with On. */
	put_active(fe, "snap", "PublishedVersions");
	call(fe, "GET", "/2015-03-31/functions/snap/configuration", NULL, NULL, &a);
	CHECK(a.status == 200 && !strcmp(str(json_object_get(a.json, "SnapStart"), "ApplyOn"), "PublishedVersions") &&
	      !strcmp(str(json_object_get(a.json, "SnapStart"), "OptimizationStatus"), "Off"));
	json_decref(a.json);
	call(fe, "POST", "/2015-03-31/functions/snap/versions", NULL, "{}", &a);
	CHECK(a.status == 201 && !strcmp(str(a.json, "Version"), "1") && !strcmp(str(a.json, "State"), "Pending") &&
	      !strcmp(str(a.json, "StateReasonCode"), "Creating") && !json_object_get(a.json, "_SnapshotToken"));
	json_decref(a.json);
	wait_settled(fe, "snap", "1", &a);
	CHECK(!strcmp(str(a.json, "State"), "Active") && !json_object_get(a.json, "StateReasonCode") &&
	      !strcmp(str(json_object_get(a.json, "SnapStart"), "OptimizationStatus"), "On"));
	json_decref(a.json);
	pthread_mutex_lock(&lock);
	CHECK(snapshots == 1 && !strcmp(last_name, "snapstart-snap:1") && !strcmp(last_version, "1") &&
	      !last_had_snapshot);
	pthread_mutex_unlock(&lock);

	/* Its invocations carry the snapshot's digest; $LATEST's none. */
	call(fe, "POST", "/2015-03-31/functions/snap/invocations", "Qualifier=1", "{}", &a);
	CHECK(a.status == 200);
	json_decref(a.json);
	pthread_mutex_lock(&lock);
	CHECK(!strcmp(last_invoked_snapshot, SNAP_DIGEST));
	pthread_mutex_unlock(&lock);
	call(fe, "POST", "/2015-03-31/functions/snap/invocations", NULL, "{}", &a);
	CHECK(a.status == 200);
	json_decref(a.json);
	pthread_mutex_lock(&lock);
	CHECK(!strcmp(last_invoked_snapshot, ""));
	pthread_mutex_unlock(&lock);

	/* A failed snapshot: Failed with the step, and invoking it is 409. */
	call(fe, "PUT", "/2015-03-31/functions/snap/configuration", NULL, "{\"Timeout\": 5}", &a);
	CHECK(a.status == 200);
	json_decref(a.json);
	pthread_mutex_lock(&lock);
	fail_next = true;
	pthread_mutex_unlock(&lock);
	call(fe, "POST", "/2015-03-31/functions/snap/versions", NULL, "{}", &a);
	CHECK(a.status == 201 && !strcmp(str(a.json, "Version"), "2") && !strcmp(str(a.json, "State"), "Pending"));
	json_decref(a.json);
	wait_settled(fe, "snap", "2", &a);
	CHECK(!strcmp(str(a.json, "State"), "Failed") && !strcmp(str(a.json, "StateReasonCode"), "FunctionError") &&
	      strstr(str(a.json, "StateReason"), "SnapStart: the runtime did not ask for work"));
	json_decref(a.json);
	call(fe, "POST", "/2015-03-31/functions/snap/invocations", "Qualifier=2", "{}", &a);
	CHECK(a.status == 409);
	json_decref(a.json);

	/* Without SnapStart a version is Active at once and never snapshotted. */
	put_active(fe, "plain", NULL);
	call(fe, "POST", "/2015-03-31/functions/plain/versions", NULL, "{}", &a);
	CHECK(a.status == 201 && !strcmp(str(a.json, "State"), "Active") &&
	      !strcmp(str(json_object_get(a.json, "SnapStart"), "ApplyOn"), "None") &&
	      !strcmp(str(json_object_get(a.json, "SnapStart"), "OptimizationStatus"), "Off"));
	json_decref(a.json);

	/* ApplyOn None on an update: the next version is not snapshotted. */
	call(fe, "PUT", "/2015-03-31/functions/snap/configuration", NULL, "{\"SnapStart\": {\"ApplyOn\": \"None\"}}", &a);
	CHECK(a.status == 200 && !strcmp(str(json_object_get(a.json, "SnapStart"), "ApplyOn"), "None"));
	json_decref(a.json);
	call(fe, "POST", "/2015-03-31/functions/snap/versions", NULL, "{}", &a);
	CHECK(a.status == 201 && !strcmp(str(a.json, "Version"), "3") && !strcmp(str(a.json, "State"), "Active"));
	json_decref(a.json);

	/* Another frontend's snapshot of the version is recorded first: the
	 * version keeps it, and the ref (which this frontend's snapshot
	 * overwrote) points at it again. */
	put_active(fe, "race", "PublishedVersions");
	pthread_mutex_lock(&lock);
	race_next = true;
	pthread_mutex_unlock(&lock);
	call(fe, "POST", "/2015-03-31/functions/race/versions", NULL, "{}", &a);
	CHECK(a.status == 201 && !strcmp(str(a.json, "State"), "Pending"));
	json_decref(a.json);
	char ref[65] = "";
	for (int i = 0; i < 3000 && strcmp(ref, OTHER_DIGEST) != 0; i++) {
		if (image_resolve(fe->cc.store, "snapstart-race:1", fe->cc.env.tenant_key, ref) < 0 ||
		    strcmp(ref, OTHER_DIGEST) != 0)
			usleep(10000);
	}
	CHECK(!strcmp(ref, OTHER_DIGEST));
	wait_settled(fe, "race", "1", &a);
	CHECK(!strcmp(str(a.json, "State"), "Active"));
	json_decref(a.json);

	/* An agent lost mid-call twice: the version stays Pending and the
	 * snapshot is tried again, Active on the third try. */
	put_active(fe, "lost", "PublishedVersions");
	pthread_mutex_lock(&lock);
	lost_next = 2;
	pthread_mutex_unlock(&lock);
	call(fe, "POST", "/2015-03-31/functions/lost/versions", NULL, "{}", &a);
	CHECK(a.status == 201 && !strcmp(str(a.json, "Version"), "1") && !strcmp(str(a.json, "State"), "Pending"));
	json_decref(a.json);
	wait_settled(fe, "lost", "1", &a);
	CHECK(!strcmp(str(a.json, "State"), "Active"));
	json_decref(a.json);
	pthread_mutex_lock(&lock);
	CHECK(snapshots == 6 && lost_next == 0);
	pthread_mutex_unlock(&lock);

	/* Lost on every try: Failed after the default bound of 4 tries, the
	 * reason saying so and naming the agent. */
	call(fe, "PUT", "/2015-03-31/functions/lost/configuration", NULL, "{\"Timeout\": 5}", &a);
	CHECK(a.status == 200);
	json_decref(a.json);
	pthread_mutex_lock(&lock);
	lost_next = 100;
	pthread_mutex_unlock(&lock);
	call(fe, "POST", "/2015-03-31/functions/lost/versions", NULL, "{}", &a);
	CHECK(a.status == 201 && !strcmp(str(a.json, "Version"), "2"));
	json_decref(a.json);
	wait_settled(fe, "lost", "2", &a);
	CHECK(!strcmp(str(a.json, "State"), "Failed") && !strcmp(str(a.json, "StateReasonCode"), "InternalError") &&
	      strstr(str(a.json, "StateReason"), "SnapStart: 4 tries of the snapshot were cut short") &&
	      strstr(str(a.json, "StateReason"), "http://127.0.0.1:9"));
	json_decref(a.json);
	pthread_mutex_lock(&lock);
	CHECK(snapshots == 10 && lost_next == 96);
	lost_next = 0;
	pthread_mutex_unlock(&lock);

	/* An agent that cannot snapshot refuses PublishedVersions, with why. */
	pthread_mutex_lock(&lock);
	supported = false;
	pthread_mutex_unlock(&lock);
	call(fe, "PUT", "/2015-03-31/functions/snap/configuration", NULL,
	     "{\"SnapStart\": {\"ApplyOn\": \"PublishedVersions\"}}", &a);
	CHECK(a.status == 400 && strstr(str(a.json, "message"), "the double says no: use --isolation microvm"));
	json_decref(a.json);
	pthread_mutex_lock(&lock);
	CHECK(snapshots == 10);
	pthread_mutex_unlock(&lock);

	frontend_free(fe);
	frontend_state_dir_close(st);
	nftw(tmpl, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(home);
	free(fns);
	printf("ok\n");
	return 0;
}
