/* frontend: the record cache of the invoke path, and the background thread.
 *
 * An invocation reads its function's record from memory, never from the
 * store: on a single host that saves a file read per invoke, and in a fleet
 * it is what keeps warm invokes working with every etcd member down (static
 * stability).  A record enters the cache on its first invoke (a load) and
 * on every write this frontend makes; the background thread reloads every
 * cached record once a second (FE_CACHE_TTL_S), so a change made through
 * another frontend is seen here within about a second.  A reload that fails
 * (the store is down) keeps the record as it was, indefinitely; a reload
 * that finds the record deleted drops it.
 *
 * The same thread, on etcd, renews the frontend's lease and gives back the
 * concurrency slots left idle (conc_etcd.c). */
#include "frontend/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static struct fe_cached **find(struct frontend *fe, const char *name)
{
	struct fe_cached **p = &fe->cache;
	while (*p && strcmp((*p)->name, name) != 0)
		p = &(*p)->next;
	return p;
}

/* Put |rec| (a reference is stolen; NULL drops) as the record of |name|. */
static void cache_store(struct frontend *fe, const char *name, json_t *rec)
{
	pthread_mutex_lock(&fe->cache_lock);
	struct fe_cached **p = find(fe, name);
	if (*p && rec) {
		json_decref((*p)->rec);
		(*p)->rec = rec;
	} else if (*p) {
		struct fe_cached *c = *p;
		*p = c->next;
		json_decref(c->rec);
		free(c);
	} else if (rec) {
		struct fe_cached *c = calloc(1, sizeof(*c));
		if (c) {
			snprintf(c->name, sizeof(c->name), "%s", name);
			c->rec = rec;
			c->next = fe->cache;
			fe->cache = c;
		} else {
			json_decref(rec);
		}
	}
	pthread_mutex_unlock(&fe->cache_lock);
}

void fe_cache_set(struct frontend *fe, const char *name, const json_t *rec)
{
	cache_store(fe, name, rec ? json_deep_copy(rec) : NULL);
}

int fe_cache_get(struct frontend *fe, const char *name, json_t **out)
{
	pthread_mutex_lock(&fe->cache_lock);
	/* A copy: json_t reference counts are not for sharing between
	 * threads (jansson reads them unsynchronised). */
	struct fe_cached *c = *find(fe, name);
	json_t *copy = c ? json_deep_copy(c->rec) : NULL;
	pthread_mutex_unlock(&fe->cache_lock);
	if (c && !copy)
		return -ENOMEM;
	if (c) {
		*out = copy;
		return 0;
	}
	json_t *rec = NULL;
	int r = fe_record_load(fe, name, &rec);
	if (r < 0)
		return r;
	cache_store(fe, name, json_deep_copy(rec));
	*out = rec;
	return 0;
}

void fe_cache_clear(struct frontend *fe)
{
	while (fe->cache) {
		struct fe_cached *c = fe->cache;
		fe->cache = c->next;
		json_decref(c->rec);
		free(c);
	}
}

/* Reload every cached record once. */
static void refresh(struct frontend *fe)
{
	struct str_list names = { 0 };
	pthread_mutex_lock(&fe->cache_lock);
	for (struct fe_cached *c = fe->cache; c; c = c->next)
		if (str_list_add(&names, c->name) < 0)
			break;
	pthread_mutex_unlock(&fe->cache_lock);
	for (size_t i = 0; i < names.n; i++) {
		json_t *rec = NULL;
		int r = fe_record_load(fe, names.items[i], &rec);
		if (r == 0)
			cache_store(fe, names.items[i], rec);
		else if (r == -ENOENT)
			cache_store(fe, names.items[i], NULL);
		else if (r == -ENOTCONN)
			break; /* the store is down: keep what we have */
	}
	str_list_clear(&names);
}

static void *bg_main(void *arg)
{
	struct frontend *fe = arg;
	pthread_mutex_lock(&fe->bg_lock);
	while (!fe->bg_stop) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += (time_t)FE_CACHE_TTL_S;
		pthread_cond_timedwait(&fe->bg_cond, &fe->bg_lock, &ts);
		if (fe->bg_stop)
			break;
		pthread_mutex_unlock(&fe->bg_lock);
		if (fe->etcd)
			fe_fleet_tick(fe);
		refresh(fe);
		pthread_mutex_lock(&fe->bg_lock);
	}
	pthread_mutex_unlock(&fe->bg_lock);
	return NULL;
}

int fe_bg_start(struct frontend *fe)
{
	int r = pthread_create(&fe->bg_thread, NULL, bg_main, fe);
	if (r != 0) {
		log_err("start the frontend's background thread: %s", strerror(r));
		return -r;
	}
	fe->bg_started = true;
	return 0;
}

void fe_bg_stop(struct frontend *fe)
{
	if (!fe->bg_started)
		return;
	pthread_mutex_lock(&fe->bg_lock);
	fe->bg_stop = true;
	pthread_cond_broadcast(&fe->bg_cond);
	pthread_mutex_unlock(&fe->bg_lock);
	pthread_join(fe->bg_thread, NULL);
	fe->bg_started = false;
}
