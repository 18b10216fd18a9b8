/* frontend: the durable queue of Event invocations.
 *
 * Each accepted event is one file in STATE/queue/ (written to a temporary
 * name, fsync'd, renamed, the directory fsync'd) before 202 is answered:
 *   {"RequestId", "FunctionName", "Qualifier", "Payload" (base64),
 *    "Attempts", "AcceptedAt"}
 * Worker threads deliver them oldest first.  Delivered: the file goes.  A
 * function error (or a sandbox that could not start) counts an attempt; the
 * first retry waits retry_delay_ms, the second twice that; after
 * FE_MAX_ATTEMPTS the entry, with "LastError", moves to STATE/dlq/ (written
 * there before it leaves queue/).  Throttling, a Pending function and a full
 * host do not count: the event waits and tries again.  At start every file
 * in queue/ is loaded again, so an event accepted before a crash is
 * delivered (at least once). */
#include "frontend/internal.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void q_insert(struct frontend *fe, struct fe_qentry *e)
{
	/* Sorted by file name: the names start with the time accepted. */
	struct fe_qentry **p = &fe->queue;
	while (*p && strcmp((*p)->file, e->file) < 0)
		p = &(*p)->next;
	e->next = *p;
	*p = e;
}

static int q_add(struct frontend *fe, const char *file, double not_before)
{
	struct fe_qentry *e = calloc(1, sizeof(*e));
	if (!e || !(e->file = strdup(file))) {
		free(e);
		return -ENOMEM;
	}
	e->not_before = not_before;
	q_insert(fe, e);
	pthread_cond_signal(&fe->qcond);
	return 0;
}

int fe_queue_put(struct frontend *fe, const char *name, const char *qualifier, const char *request_id,
		 const uint8_t *payload, size_t len)
{
	char *b64 = fe_base64(payload ? payload : (const uint8_t *)"", len);
	json_t *j = b64 ? json_pack("{s:s,s:s,s:s,s:s,s:i,s:I}", "RequestId", request_id, "FunctionName", name,
				    "Qualifier", qualifier, "Payload", b64, "Attempts", 0, "AcceptedAt",
				    (json_int_t)time(NULL))
			: NULL;
	free(b64);
	char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	if (!text)
		return -ENOMEM;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	pthread_mutex_lock(&fe->qlock);
	uint64_t seq = fe->qseq++;
	pthread_mutex_unlock(&fe->qlock);
	char file[128];
	snprintf(file, sizeof(file), "%011lld.%09ld-%06llu-%s.json", (long long)ts.tv_sec, ts.tv_nsec,
		 (unsigned long long)(seq % 1000000), request_id);
	char *path = xasprintf("%s/%s", fe->queue_dir, file);
	int r = path ? write_file_atomic(path, text, strlen(text), 0600) : -ENOMEM;
	if (r == 0)
		r = fe_fsync_dir(fe->queue_dir);
	free(path);
	free(text);
	if (r < 0) {
		log_err("queue an event for %s in %s: %s (is the disk full?)", name, fe->queue_dir, strerror(-r));
		return r;
	}
	pthread_mutex_lock(&fe->qlock);
	r = q_add(fe, file, 0);
	pthread_mutex_unlock(&fe->qlock);
	return r;
}

enum outcome { DELIVERED, LATER, FAILED, DEAD };

/* Try |j| once.  |*err| gets the error JSON for FAILED/DEAD. */
static enum outcome deliver(struct frontend *fe, json_t *j, json_t **err)
{
	const char *name = json_string_value(json_object_get(j, "FunctionName"));
	const char *qual = json_string_value(json_object_get(j, "Qualifier"));
	const char *id = json_string_value(json_object_get(j, "RequestId"));
	const char *b64 = json_string_value(json_object_get(j, "Payload"));
	uint8_t *payload = NULL;
	size_t len = 0;
	if (!name || !qual || !id || !b64 || !frontend_valid_function_name(name) || fe_unbase64(b64, &payload, &len) < 0) {
		*err = json_pack("{s:s,s:s}", "errorType", "Kindling.CorruptQueueEntry", "errorMessage",
				 "the queue entry is not a valid event");
		return DEAD;
	}
	pthread_mutex_lock(&fe->lock);
	json_t *rec = NULL;
	int r = fe_record_load(fe, name, &rec);
	pthread_mutex_unlock(&fe->lock);
	json_t *cfg = r == 0 ? fe_record_version(rec, qual) : NULL;
	if (!cfg) {
		free(payload);
		json_decref(rec);
		if (r < 0 && r != -ENOENT)
			return LATER;
		*err = json_pack("{s:s,s:s+}", "errorType", "ResourceNotFoundException", "errorMessage",
				 "Function not found: ", name);
		return DEAD;
	}
	const char *state = json_string_value(json_object_get(cfg, "State"));
	if (state && strcmp(state, "Failed") == 0) {
		free(payload);
		json_decref(rec);
		*err = json_pack("{s:s,s:s}", "errorType", "ResourceConflictException", "errorMessage",
				 "the function is in state Failed");
		return DEAD;
	}
	if (!state || strcmp(state, "Active") != 0) {
		free(payload);
		json_decref(rec);
		return LATER;
	}
	struct fe_error e = { 0 };
	json_t *rv = json_object_get(rec, "ReservedConcurrency");
	if (!fe_slot_take(fe, name, json_is_integer(rv) ? (long)json_integer_value(rv) : -1, &e)) {
		free(payload);
		json_decref(rec);
		return LATER;
	}
	struct hostagent_invoke_result res;
	r = fe_run(fe, name, cfg, id, payload, len, false, NULL, 0, &res, &e);
	fe_slot_put(fe, name);
	free(payload);
	json_decref(rec);
	enum outcome o;
	if (r == -EBUSY || r == -ESHUTDOWN) {
		o = LATER;
	} else if (r < 0) {
		*err = json_pack("{s:s,s:s}", "errorType", e.type, "errorMessage", e.message);
		o = FAILED;
	} else if (res.outcome == HOSTAGENT_FUNCTION_ERROR) {
		json_error_t jerr;
		*err = json_loadb((const char *)res.payload, res.payload_len, 0, &jerr);
		if (!*err)
			*err = json_pack("{s:s,s:s%}", "errorType", "Unhandled", "errorMessage", (const char *)res.payload,
					 res.payload_len);
		o = FAILED;
	} else {
		o = DELIVERED;
	}
	hostagent_invoke_result_cleanup(&res);
	return o;
}

/* Handle |qe| (busy, off the lock): returns the delay before it may run
 * again, or a negative number when it has left the queue. */
static double process(struct frontend *fe, struct fe_qentry *qe)
{
	char *path = xasprintf("%s/%s", fe->queue_dir, qe->file);
	uint8_t *text = NULL;
	size_t len = 0;
	int r = path ? read_file_all(path, 4u << 20, &text, &len) : -ENOMEM;
	if (r < 0) {
		if (r != -ENOENT)
			log_err("read queued event %s: %s", path ? path : qe->file, strerror(-r));
		free(path);
		return r == -ENOENT ? -1 : 5;
	}
	json_error_t jerr;
	json_t *j = json_loadb((const char *)text, len, 0, &jerr);
	free(text);
	json_t *err = NULL;
	enum outcome o = j ? deliver(fe, j, &err) : DEAD;
	if (!j) {
		j = json_pack("{s:s}", "File", qe->file);
		err = json_pack("{s:s,s:s}", "errorType", "Kindling.CorruptQueueEntry", "errorMessage", jerr.text);
	}
	double delay = -1;
	const char *fn = json_string_value(json_object_get(j, "FunctionName"));
	const char *id = json_string_value(json_object_get(j, "RequestId"));
	if (o == LATER) {
		delay = 0.5;
	} else if (o == FAILED || o == DEAD) {
		json_int_t attempts = json_integer_value(json_object_get(j, "Attempts")) + 1;
		json_object_set_new(j, "Attempts", json_integer(attempts));
		if (err)
			json_object_set(j, "LastError", err);
		char *s = json_dumps(j, JSON_COMPACT);
		if (o == FAILED && attempts < FE_MAX_ATTEMPTS) {
			r = s ? write_file_atomic(path, s, strlen(s), 0600) : -ENOMEM;
			if (r == 0)
				r = fe_fsync_dir(fe->queue_dir);
			delay = (fe->retry_delay_ms / 1000.0) * (double)(1u << (attempts - 1));
			log_info("event %s for %s failed (attempt %lld); retrying in %.1f s", id ? id : "?", fn ? fn : "?",
				 (long long)attempts, delay);
		} else {
			json_object_set_new(j, "FailedAt", json_integer((json_int_t)time(NULL)));
			free(s);
			s = json_dumps(j, JSON_COMPACT);
			char *dpath = xasprintf("%s/%s", fe->dlq_dir, qe->file);
			r = s && dpath ? write_file_atomic(dpath, s, strlen(s), 0600) : -ENOMEM;
			if (r == 0)
				r = fe_fsync_dir(fe->dlq_dir);
			if (r == 0 && unlink(path) == 0)
				fe_fsync_dir(fe->queue_dir);
			if (r < 0) {
				log_err("move event %s to the dead-letter list %s: %s; it stays queued", qe->file,
					fe->dlq_dir, strerror(-r));
				delay = 10;
			} else {
				log_warn("event %s for %s dead-lettered after %lld attempts: %s", id ? id : "?",
					 fn ? fn : "?", (long long)attempts, dpath);
			}
			free(dpath);
		}
		free(s);
	} else {
		if (unlink(path) == 0)
			fe_fsync_dir(fe->queue_dir);
	}
	json_decref(err);
	json_decref(j);
	free(path);
	return delay;
}

static void *worker_main(void *arg)
{
	struct frontend *fe = arg;
	pthread_mutex_lock(&fe->qlock);
	while (!fe->qstop) {
		double now = now_seconds(), next = now + 1;
		struct fe_qentry *pick = NULL;
		for (struct fe_qentry *e = fe->queue; e; e = e->next) {
			if (e->busy)
				continue;
			if (e->not_before <= now) {
				pick = e;
				break;
			}
			if (e->not_before < next)
				next = e->not_before;
		}
		if (!pick) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			double wait = next - now;
			ts.tv_sec += (time_t)wait;
			ts.tv_nsec += (long)((wait - (double)(time_t)wait) * 1e9);
			if (ts.tv_nsec >= 1000000000) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000;
			}
			pthread_cond_timedwait(&fe->qcond, &fe->qlock, &ts);
			continue;
		}
		pick->busy = true;
		pthread_mutex_unlock(&fe->qlock);
		double delay = process(fe, pick);
		pthread_mutex_lock(&fe->qlock);
		pick->busy = false;
		if (delay < 0) {
			for (struct fe_qentry **p = &fe->queue; *p; p = &(*p)->next)
				if (*p == pick) {
					*p = pick->next;
					break;
				}
			free(pick->file);
			free(pick);
		} else {
			pick->not_before = now_seconds() + delay;
		}
	}
	pthread_mutex_unlock(&fe->qlock);
	return NULL;
}

int fe_queue_start(struct frontend *fe, unsigned workers)
{
	int r;
	if ((r = mkdir_p(fe->queue_dir, 0700)) < 0 || (r = mkdir_p(fe->dlq_dir, 0700)) < 0) {
		log_err("create %s and %s: %s", fe->queue_dir, fe->dlq_dir, strerror(-r));
		return r;
	}
	DIR *d = opendir(fe->queue_dir);
	if (!d) {
		r = -errno;
		log_err("open the event queue %s: %s", fe->queue_dir, strerror(-r));
		return r;
	}
	struct dirent *de;
	unsigned n = 0;
	pthread_mutex_lock(&fe->qlock);
	while ((de = readdir(d))) {
		size_t l = strlen(de->d_name);
		if (de->d_name[0] == '.' || l < 6 || strcmp(de->d_name + l - 5, ".json") != 0)
			continue;
		if (q_add(fe, de->d_name, 0) == 0)
			n++;
	}
	pthread_mutex_unlock(&fe->qlock);
	closedir(d);
	if (n)
		log_info("%u queued event(s) from %s will be delivered", n, fe->queue_dir);
	fe->workers = calloc(workers, sizeof(pthread_t));
	if (!fe->workers)
		return -ENOMEM;
	for (unsigned i = 0; i < workers; i++) {
		if ((r = pthread_create(&fe->workers[i], NULL, worker_main, fe)) != 0) {
			log_err("start an event worker: %s", strerror(r));
			return -r;
		}
		fe->n_workers++;
	}
	return 0;
}

void fe_queue_stop(struct frontend *fe)
{
	pthread_mutex_lock(&fe->qlock);
	fe->qstop = true;
	pthread_cond_broadcast(&fe->qcond);
	pthread_mutex_unlock(&fe->qlock);
	for (unsigned i = 0; i < fe->n_workers; i++)
		pthread_join(fe->workers[i], NULL);
	free(fe->workers);
	fe->workers = NULL;
	fe->n_workers = 0;
	while (fe->queue) {
		struct fe_qentry *e = fe->queue;
		fe->queue = e->next;
		free(e->file);
		free(e);
	}
}
