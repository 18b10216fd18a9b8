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
 * delivered (at least once).
 *
 * Where the events are kept is a small backend table (struct
 * fe_queue_backend): the directories above on a single host (here), etcd in
 * a fleet (queue_etcd.c: any frontend may deliver any event, after claiming
 * it under its lease).  The delivery logic below is the same for both. */
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

int fe_queue_add(struct frontend *fe, const char *file)
{
	for (struct fe_qentry *q = fe->queue; q; q = q->next)
		if (strcmp(q->file, file) == 0)
			return -EEXIST;
	struct fe_qentry *e = calloc(1, sizeof(*e));
	if (!e || !(e->file = strdup(file))) {
		free(e);
		return -ENOMEM;
	}
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
	char key[192];
	fe->qb->make_key(fe, request_id, key, sizeof(key));
	int r = fe->qb->put(fe, key, text);
	free(text);
	if (r < 0) {
		if (r != -ENOTCONN)
			log_err("queue an event for %s (%s): %s", name, key, strerror(-r));
		return r;
	}
	pthread_mutex_lock(&fe->qlock);
	r = fe_queue_add(fe, key);
	pthread_mutex_unlock(&fe->qlock);
	return r == -EEXIST ? 0 : r; /* a scan saw it first */
}

/* ---- the directory backend ---- */

static char *qpath(struct frontend *fe, const char *key)
{
	return xasprintf("%s/%s", fe->queue_dir, key);
}

static void dir_make_key(struct frontend *fe, const char *request_id, char *key, size_t size)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	pthread_mutex_lock(&fe->qlock);
	uint64_t seq = fe->qseq++;
	pthread_mutex_unlock(&fe->qlock);
	snprintf(key, size, "%011lld.%09ld-%06llu-%s.json", (long long)ts.tv_sec, ts.tv_nsec,
		 (unsigned long long)(seq % 1000000), request_id);
}

static int dir_update(struct frontend *fe, const char *key, const char *text)
{
	char *path = qpath(fe, key);
	int r = path ? write_file_atomic(path, text, strlen(text), 0600) : -ENOMEM;
	if (r == 0)
		r = fe_fsync_dir(fe->queue_dir);
	if (r < 0)
		log_err("write queued event %s in %s: %s (is the disk full?)", key, fe->queue_dir, strerror(-r));
	free(path);
	return r;
}

static int dir_load(struct frontend *fe, const char *key, char **text, size_t *len)
{
	char *path = qpath(fe, key);
	uint8_t *buf = NULL;
	int r = path ? read_file_all(path, 4u << 20, &buf, len) : -ENOMEM;
	if (r < 0 && r != -ENOENT)
		log_err("read queued event %s: %s", path ? path : key, strerror(-r));
	free(path);
	*text = (char *)buf;
	return r;
}

static int dir_remove(struct frontend *fe, const char *key)
{
	char *path = qpath(fe, key);
	int r = !path ? -ENOMEM : unlink(path) == 0 ? 0 : -errno;
	if (r == 0)
		fe_fsync_dir(fe->queue_dir);
	free(path);
	return r;
}

static int dir_dead(struct frontend *fe, const char *key, const char *text)
{
	char *dpath = xasprintf("%s/%s", fe->dlq_dir, key);
	int r = dpath ? write_file_atomic(dpath, text, strlen(text), 0600) : -ENOMEM;
	if (r == 0)
		r = fe_fsync_dir(fe->dlq_dir);
	if (r < 0)
		log_err("move event %s to the dead-letter list %s: %s; it stays queued", key, fe->dlq_dir, strerror(-r));
	else
		dir_remove(fe, key);
	free(dpath);
	return r;
}

static int dir_scan(struct frontend *fe)
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
		if (fe_queue_add(fe, de->d_name) == 0)
			n++;
	}
	pthread_mutex_unlock(&fe->qlock);
	closedir(d);
	if (n)
		log_info("%u queued event(s) from %s will be delivered", n, fe->queue_dir);
	return 0;
}

const struct fe_queue_backend fe_queue_dir_backend = {
	.make_key = dir_make_key,
	.put = dir_update,
	.load = dir_load,
	.update = dir_update,
	.remove = dir_remove,
	.dead = dir_dead,
	.scan = dir_scan,
};

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
	json_t *rec = NULL;
	int r = fe_cache_get(fe, name, &rec);
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
	long reserved = json_is_integer(rv) ? (long)json_integer_value(rv) : -1;
	if (!fe_slot_take(fe, name, reserved, &e)) {
		free(payload);
		json_decref(rec);
		return LATER;
	}
	struct hostagent_invoke_result res;
	r = fe_run(fe, name, cfg, id, payload, len, false, NULL, 0, &res, &e);
	fe_slot_put(fe, name, reserved);
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
 * again, or a negative number when it has left the queue (here). */
static double process(struct frontend *fe, struct fe_qentry *qe)
{
	int r;
	if (qe->delivered) /* only its removal failed (the store was down) */
		return fe->qb->remove(fe, qe->file) < 0 ? 1 : -1;
	if (fe->qb->claim && qe->claim_epoch != fe_fleet_epoch(fe)) {
		uint64_t epoch = fe_fleet_epoch(fe);
		r = fe->qb->claim(fe, qe->file);
		if (r == -EALREADY)
			return -1; /* another frontend's, or delivered */
		if (r < 0)
			return 1; /* the store is down: try again */
		qe->claim_epoch = epoch;
	}
	char *text = NULL;
	size_t len = 0;
	r = fe->qb->load(fe, qe->file, &text, &len);
	if (r < 0)
		return r == -ENOENT ? -1 : 5;
	json_error_t jerr;
	json_t *j = json_loadb(text, len, 0, &jerr);
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
		if (o == FAILED && attempts < FE_MAX_ATTEMPTS) {
			char *s = json_dumps(j, JSON_COMPACT);
			r = s ? fe->qb->update(fe, qe->file, s) : -ENOMEM;
			free(s);
			delay = (fe->retry_delay_ms / 1000.0) * (double)(1u << (attempts - 1));
			log_info("event %s for %s failed (attempt %lld); retrying in %.1f s", id ? id : "?", fn ? fn : "?",
				 (long long)attempts, delay);
		} else {
			json_object_set_new(j, "FailedAt", json_integer((json_int_t)time(NULL)));
			char *s = json_dumps(j, JSON_COMPACT);
			r = s ? fe->qb->dead(fe, qe->file, s) : -ENOMEM;
			free(s);
			if (r < 0)
				delay = 10;
			else
				log_warn("event %s for %s dead-lettered after %lld attempts (%s)", id ? id : "?",
					 fn ? fn : "?", (long long)attempts, qe->file);
		}
	} else if (fe->qb->remove(fe, qe->file) < 0 && fe->qb->claim) {
		qe->delivered = true; /* the store is down: remove it when it is back */
		delay = 1;
	}
	json_decref(err);
	json_decref(j);
	return delay;
}

static void *worker_main(void *arg)
{
	struct frontend *fe = arg;
	pthread_mutex_lock(&fe->qlock);
	while (!fe->qstop) {
		double now = now_seconds(), next = now + 1;
		if (fe->qb->rescan_s > 0 && now >= fe->next_scan && !fe->scanning) {
			/* Events accepted by other frontends, or left by a dead one. */
			fe->scanning = true;
			fe->next_scan = now + fe->qb->rescan_s;
			pthread_mutex_unlock(&fe->qlock);
			fe->qb->scan(fe);
			pthread_mutex_lock(&fe->qlock);
			fe->scanning = false;
			continue;
		}
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
	fe->qb = fe->etcd ? &fe_queue_etcd_backend : &fe_queue_dir_backend;
	int r = fe->qb->scan(fe);
	if (r < 0 && r != -ENOTCONN)
		return r;
	fe->next_scan = now_seconds() + fe->qb->rescan_s;
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
