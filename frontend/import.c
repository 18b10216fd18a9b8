/* frontend: the image imports behind CreateFunction and UpdateFunctionCode.
 *
 * One thread takes the jobs in order: a source kindling can import
 * (docker://, oci:, docker-archive:) goes through chunkify_import into the
 * store; anything else is an image already in the store (NAME[:TAG] or a
 * digest) and is resolved.  The outcome is written into the function's
 * record if its _ImportToken is still the job's (a later update or a
 * delete wins): the function becomes Active (LastUpdateStatus Successful)
 * or Failed with the reason.
 *
 * A second thread takes SnapStart's jobs the same way (a snapshot boots a
 * VM and waits for its runtime; imports do not wait behind it): the host
 * agent boots a published
 * version, snapshots it at its runtime's first /next and imports the
 * snapshot as fe_snapstart_name(); the version becomes Active with the
 * snapshot's manifest digest (_SnapshotDigest, which its cold starts
 * restore from) if its _SnapshotToken is still the job's, or Failed with
 * the step that failed. */
#include "frontend/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static bool is_import_source(const char *uri)
{
	return strncmp(uri, "docker://", 9) == 0 || strncmp(uri, "oci:", 4) == 0 ||
	       strncmp(uri, "docker-archive:", 15) == 0;
}

/* One read-modify-write of the record: -EAGAIN if it lost a race with
 * another frontend (apply redoes it). */
static int apply_once(struct frontend *fe, const struct fe_import *job, int rc, const char *digest)
{
	pthread_mutex_lock(&fe->lock);
	json_t *rec = NULL;
	if (fe_record_load(fe, job->name, &rec) < 0) {
		pthread_mutex_unlock(&fe->lock);
		return 0;
	}
	json_t *cfg = json_object_get(rec, "Latest");
	const char *tok = json_string_value(json_object_get(cfg, "_ImportToken"));
	if (!tok || strcmp(tok, job->token) != 0) {
		/* Overtaken by a later update, or already applied. */
		json_decref(rec);
		pthread_mutex_unlock(&fe->lock);
		return 0;
	}
	bool creating = !json_object_get(cfg, "_ImageDigest");
	json_t *published = NULL;
	char rev[37], ts[40];
	fe_timestamp(ts);
	json_object_del(cfg, "_ImportToken");
	json_object_del(cfg, "_PendingImageUri");
	if (rc == 0) {
		json_object_set_new(cfg, "LastModified", json_string(ts));
		fe_uuid(rev);
		json_object_set_new(cfg, "_ImageDigest", json_string(digest));
		json_object_set_new(cfg, "_ImageUri", json_string(job->uri));
		json_object_set_new(cfg, "CodeSha256", json_string(digest));
		json_object_set_new(cfg, "RevisionId", json_string(rev));
		json_object_set_new(cfg, "State", json_string("Active"));
		json_object_del(cfg, "StateReason");
		json_object_del(cfg, "StateReasonCode");
		json_object_set_new(cfg, "LastUpdateStatus", json_string("Successful"));
		json_object_del(cfg, "LastUpdateStatusReason");
		json_object_del(cfg, "LastUpdateStatusReasonCode");
		if (json_is_true(json_object_get(cfg, "_PublishOnActive")))
			fe_record_publish(fe, job->name, rec, NULL, &published);
	} else {
		char msg[400];
		snprintf(msg, sizeof(msg), "kindling could not %s image %s: %s (see the log of kindling serve)",
			 is_import_source(job->uri) ? "import" : "find", job->uri, strerror(-rc));
		const char *code = rc == -ENOENT ? "ImageDeleted" : "InvalidImage";
		if (creating) {
			json_object_set_new(cfg, "State", json_string("Failed"));
			json_object_set_new(cfg, "StateReason", json_string(msg));
			json_object_set_new(cfg, "StateReasonCode", json_string(code));
		}
		json_object_set_new(cfg, "LastUpdateStatus", json_string("Failed"));
		json_object_set_new(cfg, "LastUpdateStatusReason", json_string(msg));
		json_object_set_new(cfg, "LastUpdateStatusReasonCode", json_string(code));
	}
	json_object_del(cfg, "_PublishOnActive");
	int r = fe_record_save(fe, job->name, rec);
	if (r == 0 && published && fe_snapstart_queue(fe, job->name, published) < 0)
		log_err("function %s: no memory to queue its SnapStart snapshot; restart kindling serve to retry it",
			job->name);
	pthread_mutex_unlock(&fe->lock);
	if (r == 0 && rc == 0 && !creating && fe->agent)
		fe->agent->drain(fe->agent_arg, job->name, "$LATEST", rev);
	if (r == 0 && rc == 0)
		log_info("function %s: image %s is %s", job->name, job->uri, digest);
	json_decref(rec);
	return r;
}

static void apply(struct frontend *fe, const struct fe_import *job, int rc, const char *digest)
{
	for (int i = 0; i < FE_RECORD_RETRIES && apply_once(fe, job, rc, digest) == -EAGAIN; i++)
		;
}

static void job_free(struct fe_import *j)
{
	if (!j)
		return;
	free(j->name);
	free(j->uri);
	free(j->token);
	free(j->version);
	free(j);
}

static void job_enqueue(struct fe_jobs *q, struct fe_import *j)
{
	pthread_mutex_lock(&q->lock);
	*q->tail = j;
	q->tail = &j->next;
	pthread_cond_signal(&q->cond);
	pthread_mutex_unlock(&q->lock);
}

/* ---- SnapStart -------------------------------------------------------------------------------------------------- */

char *fe_snapstart_name(const char *name, const char *version)
{
	return xasprintf("snapstart-%s:%s", name, version);
}

/* One read-modify-write of the version's record after its snapshot: Active
 * with |digest| (rc 0) or Failed with |why|.  -EAGAIN if it lost a race. */
static int snapshot_apply_once(struct frontend *fe, const struct fe_import *job, int rc, const char *digest,
			       const char *why)
{
	pthread_mutex_lock(&fe->lock);
	json_t *rec = NULL;
	int lr = fe_record_load(fe, job->name, &rec);
	if (lr < 0) {
		pthread_mutex_unlock(&fe->lock);
		if (rc == 0 && lr == -ENOENT) /* the function was deleted while the snapshot was taken */
			fe_snapstart_forget(fe, job->name, job->version);
		return 0;
	}
	json_t *v = json_object_get(json_object_get(rec, "Versions"), job->version);
	const char *tok = json_string_value(json_object_get(v, "_SnapshotToken"));
	const char *st = json_string_value(json_object_get(v, "State"));
	if (!tok || strcmp(tok, job->token) != 0 || !st || strcmp(st, "Pending") != 0) {
		/* Deleted, or already applied: by another frontend, which took a
		 * snapshot of its own (every frontend that starts re-queues a
		 * Pending version) and recorded its digest.  Ours overwrote the
		 * ref meanwhile: point it back at the recorded one, so the ref
		 * and the version agree and gc keeps the snapshot the version
		 * restores. */
		const char *recorded = json_string_value(json_object_get(v, "_SnapshotDigest"));
		char *keep = rc == 0 && recorded && strcmp(recorded, digest) != 0 ? strdup(recorded) : NULL;
		json_decref(rec);
		pthread_mutex_unlock(&fe->lock);
		if (rc == 0 && !v) /* deleted while the snapshot was taken: its ref goes too */
			fe_snapstart_forget(fe, job->name, job->version);
		if (keep && fe->have_cc && is_sha256_hex(keep) &&
		    image_ref_put(fe->cc.store, fe->cc.env.tenant_key, job->uri, keep) == 0)
			log_info("function %s: version %s keeps SnapStart snapshot %s, taken by another frontend; %s "
				 "points at it again", job->name, job->version, keep, job->uri);
		free(keep);
		return 0;
	}
	if (rc == 0) {
		json_object_set_new(v, "State", json_string("Active"));
		json_object_del(v, "StateReason");
		json_object_del(v, "StateReasonCode");
		json_object_set_new(v, "_SnapshotDigest", json_string(digest));
	} else {
		char msg[400];
		snprintf(msg, sizeof(msg), "SnapStart: %s", why);
		json_object_set_new(v, "State", json_string("Failed"));
		json_object_set_new(v, "StateReason", json_string(msg));
		json_object_set_new(v, "StateReasonCode",
				    json_string(rc == -ECHILD || rc == -ETIMEDOUT ? "FunctionError" : "InternalError"));
	}
	int r = fe_record_save(fe, job->name, rec);
	pthread_mutex_unlock(&fe->lock);
	json_decref(rec);
	return r;
}

/* Take the snapshot of |fn|, trying again while the agent is lost (a
 * transport failure: it may have died or be restarting) up to
 * fe->snapshot_attempts tries.  Returns the agent's result; -ESHUTDOWN
 * when the frontend stops meanwhile (the version stays Pending). */
static int snapshot_tries(struct frontend *fe, const struct fe_import *job, const struct hostagent_function *fn,
			  char digest[65], char *why, size_t why_len)
{
	int rc = -ENOTCONN;
	for (unsigned t = 1; t <= fe->snapshot_attempts; t++) {
		log_info("function %s: taking the SnapStart snapshot of version %s as %s", job->name, job->version,
			 job->uri);
		rc = fe->agent->snapshot(fe->agent_arg, fn, job->uri, digest, why, why_len);
		if (rc != -ENOTCONN && rc != -ECONNRESET)
			return rc;
		log_warn("function %s: SnapStart snapshot of version %s, try %u of %u: %s%s", job->name, job->version,
			 t, fe->snapshot_attempts, why, t < fe->snapshot_attempts ? "; trying again" : "");
		/* A job queued meanwhile signals the queue and may end the
		 * wait early: one try sooner, still within the bound. */
		struct fe_jobs *q = &fe->snapshots;
		if (t < fe->snapshot_attempts && fe_wait_unless_stopped(&q->lock, &q->cond, &q->stop, fe->snapshot_retry_ms))
			return -ESHUTDOWN;
	}
	char last[256];
	snprintf(last, sizeof(last), "%s", why);
	snprintf(why, why_len, "%u tries of the snapshot were cut short by a lost host agent (the last: %s)",
		 fe->snapshot_attempts, last);
	return rc;
}

static void run_snapshot_job(struct frontend *fe, const struct fe_import *job)
{
	char digest[65] = "", why[400] = "";
	int rc;
	pthread_mutex_lock(&fe->lock);
	json_t *rec = NULL;
	rc = fe_record_load(fe, job->name, &rec);
	pthread_mutex_unlock(&fe->lock);
	if (rc < 0)
		return; /* the function is gone */
	json_t *v = json_object_get(json_object_get(rec, "Versions"), job->version);
	const char *tok = json_string_value(json_object_get(v, "_SnapshotToken"));
	if (!tok || strcmp(tok, job->token) != 0) {
		json_decref(rec);
		return;
	}
	struct fe_fnspec spec;
	if (!fe->agent || !fe->agent->snapshot) {
		rc = -ENOTSUP;
		snprintf(why, sizeof(why), "the host agent cannot take snapshots (run the agents with --isolation "
			 "microvm)");
	} else if ((rc = fe_fnspec_init(fe, job->name, v, &spec)) < 0) {
		snprintf(why, sizeof(why), "the version's configuration is incomplete (%s)", strerror(-rc));
	} else {
		spec.fn.snapshot = NULL; /* this start boots */
		rc = snapshot_tries(fe, job, &spec.fn, digest, why, sizeof(why));
		fe_fnspec_cleanup(&spec);
	}
	json_decref(rec);
	if (rc == -ESHUTDOWN)
		return; /* the version stays Pending and is redone at the next start */
	if (rc < 0)
		log_err("function %s: version %s failed: SnapStart: %s", job->name, job->version, why);
	else
		log_info("function %s: version %s is Active with SnapStart snapshot %s", job->name, job->version,
			 digest);
	for (int i = 0; i < FE_RECORD_RETRIES && snapshot_apply_once(fe, job, rc, digest, why) == -EAGAIN; i++)
		;
}

int fe_snapstart_queue(struct frontend *fe, const char *name, const json_t *v)
{
	const char *tok = json_string_value(json_object_get(v, "_SnapshotToken"));
	const char *st = json_string_value(json_object_get(v, "State"));
	const char *version = json_string_value(json_object_get(v, "Version"));
	if (!tok || !st || strcmp(st, "Pending") != 0 || !version)
		return 0;
	struct fe_import *j = calloc(1, sizeof(*j));
	if (!j || !(j->name = strdup(name)) || !(j->uri = fe_snapstart_name(name, version)) ||
	    !(j->token = strdup(tok)) || !(j->version = strdup(version))) {
		job_free(j);
		return -ENOMEM;
	}
	job_enqueue(&fe->snapshots, j);
	return 0;
}

void fe_snapstart_forget(struct frontend *fe, const char *name, const char *version)
{
	char *ref = fe_snapstart_name(name, version);
	char nt[512], key[600];
	if (!ref || !fe->have_cc || image_parse_name_tag(ref, nt, sizeof(nt)) < 0) {
		free(ref);
		return;
	}
	snprintf(key, sizeof(key), "refs/%s", nt);
	int r = store_delete(fe->cc.store, key);
	if (r < 0 && r != -ENOENT)
		log_warn("function %s: the ref of SnapStart snapshot %s cannot be removed (%s); remove it with "
			 "`chunkify rm %s`", name, ref, strerror(-r), ref);
	else if (r == 0)
		log_info("function %s: removed SnapStart snapshot %s (its chunks go at the next `chunkify gc`)", name,
			 ref);
	free(ref);
}

static void run_job(struct frontend *fe, const struct fe_import *job)
{
	if (job->version) {
		run_snapshot_job(fe, job);
		return;
	}
	char digest[65] = "";
	int rc;
	if (!fe->have_cc) {
		rc = -EIO;
	} else if (is_import_source(job->uri)) {
		struct import_options opt = { .workers = 1 };
		struct import_report rep;
		memset(&rep, 0, sizeof(rep));
		rc = chunkify_import(&fe->cc, job->uri, &opt, &rep);
		if (rc == 0)
			snprintf(digest, sizeof(digest), "%s", rep.manifest_digest);
	} else {
		rc = image_resolve(fe->cc.store, job->uri, fe->cc.env.tenant_key, digest);
	}
	if (rc == -ECANCELED)
		return; /* shutting down: the record stays Pending and is redone at the next start */
	if (rc < 0)
		log_err("function %s: image %s: %s", job->name, job->uri, strerror(-rc));
	apply(fe, job, rc, digest);
}

static void *jobs_main(void *arg)
{
	struct fe_jobs *q = arg;
	pthread_mutex_lock(&q->lock);
	for (;;) {
		while (!q->stop && !q->head)
			pthread_cond_wait(&q->cond, &q->lock);
		if (q->stop)
			break;
		struct fe_import *job = q->head;
		q->head = job->next;
		if (!q->head)
			q->tail = &q->head;
		pthread_mutex_unlock(&q->lock);
		run_job(q->fe, job);
		job_free(job);
		pthread_mutex_lock(&q->lock);
	}
	pthread_mutex_unlock(&q->lock);
	return NULL;
}

int fe_import_queue(struct frontend *fe, const char *name, const char *uri, const char *token)
{
	struct fe_import *j = calloc(1, sizeof(*j));
	if (!j || !(j->name = strdup(name)) || !(j->uri = strdup(uri)) || !(j->token = strdup(token))) {
		job_free(j);
		return -ENOMEM;
	}
	job_enqueue(&fe->imports, j);
	return 0;
}

void fe_import_init(struct frontend *fe)
{
	struct fe_jobs *queues[] = { &fe->imports, &fe->snapshots };
	for (size_t i = 0; i < 2; i++) {
		struct fe_jobs *q = queues[i];
		q->fe = fe;
		pthread_mutex_init(&q->lock, NULL);
		pthread_cond_init(&q->cond, NULL);
		q->head = NULL;
		q->tail = &q->head;
	}
}

int fe_import_start(struct frontend *fe)
{
	struct fe_jobs *queues[] = { &fe->imports, &fe->snapshots };
	static const char *const what[] = { "import", "SnapStart" };
	for (size_t i = 0; i < 2; i++) {
		int r = pthread_create(&queues[i]->thread, NULL, jobs_main, queues[i]);
		if (r) {
			log_err("start the %s thread: %s", what[i], strerror(r));
			fe_import_stop(fe);
			return -r;
		}
		queues[i]->started = true;
	}
	return 0;
}

void fe_import_stop(struct frontend *fe)
{
	struct fe_jobs *queues[] = { &fe->imports, &fe->snapshots };
	fe->cancel = 1;
	for (size_t i = 0; i < 2; i++) {
		struct fe_jobs *q = queues[i];
		if (!q->started)
			continue;
		pthread_mutex_lock(&q->lock);
		q->stop = true;
		pthread_cond_broadcast(&q->cond);
		pthread_mutex_unlock(&q->lock);
	}
	for (size_t i = 0; i < 2; i++) {
		struct fe_jobs *q = queues[i];
		if (q->started)
			pthread_join(q->thread, NULL);
		q->started = false;
		while (q->head) {
			struct fe_import *j = q->head;
			q->head = j->next;
			job_free(j);
		}
		q->tail = &q->head;
	}
}

void fe_import_destroy(struct frontend *fe)
{
	if (!fe->imports.fe)
		return; /* fe_import_init() was not reached */
	struct fe_jobs *queues[] = { &fe->imports, &fe->snapshots };
	for (size_t i = 0; i < 2; i++) {
		pthread_mutex_destroy(&queues[i]->lock);
		pthread_cond_destroy(&queues[i]->cond);
	}
}
