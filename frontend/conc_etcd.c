/* frontend: the fleet's lease and concurrency limits (placement/README.md).
 *
 * A frontend keeps one lease (FE_LEASE_TTL_S, renewed each second by the
 * background thread) with kindling/frontends/ID on it.  Its queue claims and
 * its concurrency holdings are attached to it, so they vanish when the
 * frontend dies.  If the lease expires anyway (etcd was unreachable longer
 * than its TTL), a new one is granted when etcd answers again, and the
 * holdings and claims are made again as they are needed (lease epochs).
 *
 * Concurrency is counted per scope ("account", and "function/NAME" for a
 * function with reserved concurrency).  Each frontend holds some slots of a
 * scope, kindling/concurrency/SCOPE/holders/ID = {"held":N}.  Taking a slot
 * is local while the frontend holds a free one.  Otherwise it grows its
 * holding by one: it reads the scope (the guard and every holder, one range
 * at one revision), checks that the other holders' sum plus its new holding
 * stays within the limit, and writes its holder key and bumps the guard in a
 * txn that compares the guard's mod_revision with what it read -- so two
 * frontends growing at once cannot both get the last slot.  Slots unused
 * for FE_HOLD_IDLE_S go back (the holder key is lowered, or deleted).
 *
 * With etcd down a frontend keeps what it holds: invocations within its
 * holdings go on, those beyond get 429 (the usual Reasons) until etcd is
 * back. */
#include "frontend/internal.h"

#include "common/etcd.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#define STORE_DOWN_BACKOFF_S 1.0
#define GROW_ATTEMPTS 16

uint64_t fe_fleet_epoch(struct frontend *fe)
{
	return __atomic_load_n(&fe->lease_epoch, __ATOMIC_ACQUIRE);
}

int64_t fe_fleet_lease(struct frontend *fe)
{
	pthread_mutex_lock(&fe->lease_lock);
	if (!fe->lease) {
		int64_t id = 0;
		char *key = xasprintf("kindling/frontends/%s", fe->id);
		json_t *j = json_pack("{s:s,s:s}", "url", fe->url ? fe->url : "", "id", fe->id);
		char *val = j ? json_dumps(j, JSON_COMPACT) : NULL;
		json_decref(j);
		int r = key && val ? etcd_lease_grant(fe->etcd, FE_LEASE_TTL_S, &id) : -ENOMEM;
		if (r == 0)
			r = etcd_put(fe->etcd, key, val, strlen(val), id, NULL);
		if (r == 0) {
			fe->lease = id;
			__atomic_add_fetch(&fe->lease_epoch, 1, __ATOMIC_RELEASE);
			log_info("frontend %s: lease %" PRIx64 " on %s", fe->id, (uint64_t)id, key);
		} else if (r != -ENOTCONN) {
			log_warn("frontend %s: cannot take a lease in etcd: %s; retrying each second", fe->id,
				 strerror(-r));
		}
		free(key);
		free(val);
	}
	int64_t lease = fe->lease;
	pthread_mutex_unlock(&fe->lease_lock);
	return lease;
}

void fe_fleet_lease_lost(struct frontend *fe, int64_t lease)
{
	pthread_mutex_lock(&fe->lease_lock);
	if (fe->lease == lease && lease) {
		log_warn("frontend %s: lease %" PRIx64 " is gone (revoked, or expired while etcd was unreachable "
			 "for more than %d s); its concurrency holdings and queue claims went with it and are taken "
			 "again as needed",
			 fe->id, (uint64_t)lease, FE_LEASE_TTL_S);
		fe->lease = 0;
	}
	pthread_mutex_unlock(&fe->lease_lock);
}

int fe_fleet_start(struct frontend *fe)
{
	return fe_fleet_lease(fe) ? 0 : -ENOTCONN;
}

void fe_fleet_stop(struct frontend *fe)
{
	if (fe->lease && etcd_lease_revoke(fe->etcd, fe->lease) < 0)
		log_warn("frontend %s: could not revoke its lease; its holdings go when it expires (%d s)", fe->id,
			 FE_LEASE_TTL_S);
	fe->lease = 0;
	while (fe->holds) {
		struct fe_hold *h = fe->holds;
		fe->holds = h->next;
		free(h);
	}
}

static struct fe_hold *hold(struct frontend *fe, const char *scope)
{
	for (struct fe_hold *h = fe->holds; h; h = h->next)
		if (strcmp(h->scope, scope) == 0)
			return h;
	struct fe_hold *h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	snprintf(h->scope, sizeof(h->scope), "%s", scope);
	h->next = fe->holds;
	fe->holds = h;
	return h;
}

/* The slots |h| holds under the current lease (conc_lock held). */
static unsigned held_now(struct frontend *fe, const struct fe_hold *h)
{
	return h->epoch == fe_fleet_epoch(fe) ? h->held : 0;
}

/* Write this frontend's holding of |scope| as |n| (0: delete the key),
 * bumping the guard and only if it is still at |guard_rev| when |guard_rev|
 * >= 0.  0, -EAGAIN (the guard moved), -ENOTCONN, -errno. */
static int write_holding(struct frontend *fe, const char *scope, unsigned n, int64_t guard_rev, int64_t lease)
{
	char *hk = xasprintf("kindling/concurrency/%s/holders/%s", scope, fe->id);
	char *gk = xasprintf("kindling/concurrency/%s/guard", scope);
	char val[48];
	snprintf(val, sizeof(val), "{\"held\":%u}", n);
	int r = -ENOMEM;
	bool ok = false;
	if (hk && gk) {
		struct etcd_cmp cmp = { .key = gk, .target = ETCD_CMP_MOD_REVISION, .op = ETCD_EQUAL, .number = guard_rev };
		struct etcd_op ops[2] = {
			{ .type = n ? ETCD_OP_PUT : ETCD_OP_DELETE, .key = hk, .value = val, .value_len = strlen(val),
			  .lease = n ? lease : 0 },
			{ .type = ETCD_OP_PUT, .key = gk, .value = "{}", .value_len = 2 },
		};
		r = etcd_txn(fe->etcd, guard_rev >= 0 ? &cmp : NULL, guard_rev >= 0 ? 1 : 0, ops,
			     guard_rev >= 0 ? 2 : 1, NULL, 0, &ok, NULL);
		if (r == -ENOENT)
			fe_fleet_lease_lost(fe, lease);
	}
	free(hk);
	free(gk);
	return r < 0 ? r : ok ? 0 : -EAGAIN;
}

/* Grow this frontend's holding of |scope| to between |least| and |most|
 * slots, as many as keep the fleet's total within |limit|.  0 with |*got|,
 * -EDQUOT (not even |least| would fit), -ENOTCONN, -errno. */
static int grow(struct frontend *fe, const char *scope, unsigned least, unsigned most, unsigned limit,
		unsigned *got)
{
	char *prefix = xasprintf("kindling/concurrency/%s/", scope);
	char *mine = xasprintf("kindling/concurrency/%s/holders/%s", scope, fe->id);
	int r = prefix && mine ? -EAGAIN : -ENOMEM;
	for (int i = 0; i < GROW_ATTEMPTS && r == -EAGAIN; i++) {
		int64_t lease = fe_fleet_lease(fe);
		if (!lease) {
			r = -ENOTCONN;
			break;
		}
		struct etcd_kvs kvs = { 0 };
		r = etcd_range_prefix(fe->etcd, prefix, NULL, 0, &kvs);
		if (r < 0)
			break;
		int64_t guard_rev = 0;
		uint64_t others = 0;
		size_t plen = strlen(prefix);
		for (size_t k = 0; k < kvs.n; k++) {
			const char *rest = kvs.kvs[k].key + plen;
			if (strcmp(rest, "guard") == 0) {
				guard_rev = kvs.kvs[k].mod_revision;
			} else if (strncmp(rest, "holders/", 8) == 0 && strcmp(kvs.kvs[k].key, mine) != 0) {
				json_t *j = json_loadb((const char *)kvs.kvs[k].value, kvs.kvs[k].value_len, 0, NULL);
				json_int_t n = json_integer_value(json_object_get(j, "held"));
				json_decref(j);
				others += n > 0 ? (uint64_t)n : 0;
			}
		}
		etcd_kvs_cleanup(&kvs);
		if (others + least > limit) {
			r = -EDQUOT;
			break;
		}
		unsigned want = others + most > limit ? (unsigned)(limit - others) : most;
		r = write_holding(fe, scope, want, guard_rev, lease);
		if (r == 0)
			*got = want;
		if (r == -ENOENT)
			r = -EAGAIN; /* the lease went: take a new one, read again */
	}
	free(prefix);
	free(mine);
	return r;
}

/* Take one slot of |scope| (limit |limit|): true, or false with |e| set. */
static bool take(struct frontend *fe, const char *scope, const char *name, long reserved, unsigned limit,
		 struct fe_error *e)
{
	pthread_mutex_lock(&fe->conc_lock);
	struct fe_hold *h = hold(fe, scope);
	if (!h) {
		pthread_mutex_unlock(&fe->conc_lock);
		fe_set_error(e, 500, "ServiceException", "out of memory");
		return false;
	}
	if (h->inuse < held_now(fe, h)) {
		h->inuse++;
		h->last_used = now_seconds();
		pthread_mutex_unlock(&fe->conc_lock);
		return true;
	}
	bool down = now_seconds() < fe->store_down_until;
	pthread_mutex_unlock(&fe->conc_lock);
	if (down) {
		fe_throttled(e, name, reserved, limit);
		return false;
	}

	/* Grow, with no other write of this frontend's holdings in between;
	 * local takes and puts go on meanwhile.  One grower asks for a slot
	 * for each taker queued behind it too (as many as fit), so a burst of
	 * N new invocations costs about one etcd write, not N in a row. */
	pthread_mutex_lock(&fe->conc_lock);
	h->growers++;
	pthread_mutex_unlock(&fe->conc_lock);
	pthread_mutex_lock(&fe->grow_lock);
	uint64_t epoch = fe_fleet_epoch(fe);
	pthread_mutex_lock(&fe->conc_lock);
	h->growers--;
	bool ok = h->inuse < held_now(fe, h); /* a put or another's growth while we waited */
	unsigned base = held_now(fe, h) > h->inuse ? held_now(fe, h) : h->inuse, queued = h->growers;
	if (ok) {
		h->inuse++;
		h->last_used = now_seconds();
	}
	pthread_mutex_unlock(&fe->conc_lock);
	unsigned got = 0;
	int r = ok ? 0 : grow(fe, scope, base + 1, base + 1 + queued, limit, &got);
	pthread_mutex_lock(&fe->conc_lock);
	if (!ok && r == 0) {
		h->held = got;
		h->epoch = epoch == fe_fleet_epoch(fe) ? epoch : 0;
		h->inuse++;
		h->last_used = now_seconds();
		ok = true;
	} else if (r == -ENOTCONN) {
		fe->store_down_until = now_seconds() + STORE_DOWN_BACKOFF_S;
	}
	pthread_mutex_unlock(&fe->conc_lock);
	pthread_mutex_unlock(&fe->grow_lock);
	if (!ok) {
		if (r != -EDQUOT && r != -ENOTCONN)
			log_warn("concurrency scope %s: cannot grow this frontend's holding: %s", scope, strerror(-r));
		fe_throttled(e, name, reserved, limit);
	}
	return ok;
}

static void put(struct frontend *fe, const char *scope)
{
	pthread_mutex_lock(&fe->conc_lock);
	for (struct fe_hold *h = fe->holds; h; h = h->next)
		if (strcmp(h->scope, scope) == 0) {
			if (h->inuse)
				h->inuse--;
			h->last_used = now_seconds();
			break;
		}
	pthread_mutex_unlock(&fe->conc_lock);
}

bool fe_conc_etcd_take(struct frontend *fe, const char *name, long reserved, struct fe_error *e)
{
	char scope[80];
	snprintf(scope, sizeof(scope), "function/%s", name);
	if (reserved >= 0 && !take(fe, scope, name, reserved, (unsigned)reserved, e))
		return false;
	if (!take(fe, "account", name, -1, fe->account_concurrency, e)) {
		if (reserved >= 0)
			put(fe, scope);
		return false;
	}
	return true;
}

void fe_conc_etcd_put(struct frontend *fe, const char *name, long reserved)
{
	char scope[80];
	snprintf(scope, sizeof(scope), "function/%s", name);
	if (reserved >= 0)
		put(fe, scope);
	put(fe, "account");
}

void fe_fleet_tick(struct frontend *fe)
{
	pthread_mutex_lock(&fe->lease_lock);
	int64_t lease = fe->lease;
	pthread_mutex_unlock(&fe->lease_lock);
	if (lease) {
		int r = etcd_lease_keepalive(fe->etcd, lease, NULL);
		if (r == -ENOENT)
			fe_fleet_lease_lost(fe, lease);
		if (r == -ENOTCONN) {
			pthread_mutex_lock(&fe->conc_lock);
			fe->store_down_until = now_seconds() + STORE_DOWN_BACKOFF_S;
			pthread_mutex_unlock(&fe->conc_lock);
			return;
		}
	}
	lease = fe_fleet_lease(fe);
	if (!lease)
		return;
	/* Give back the slots idle for FE_HOLD_IDLE_S: lower the holding
	 * here first, then in etcd (the store never shows less than is
	 * held); put it back if etcd did not take it.  The account scope keeps
	 * one slot, so one warm invoke at a time goes on with etcd down. */
	pthread_mutex_lock(&fe->grow_lock);
	double now = now_seconds();
	pthread_mutex_lock(&fe->conc_lock);
	bool down = now < fe->store_down_until;
	struct fe_hold *first = fe->holds; /* holds are only ever prepended */
	pthread_mutex_unlock(&fe->conc_lock);
	for (struct fe_hold *h = first; h && !down; h = h->next) {
		pthread_mutex_lock(&fe->conc_lock);
		unsigned floor = strcmp(h->scope, "account") == 0 ? 1 : 0;
		unsigned old = held_now(fe, h), n = h->inuse > floor ? h->inuse : floor;
		bool idle = old > n && now - h->last_used >= FE_HOLD_IDLE_S;
		if (idle)
			h->held = n;
		uint64_t epoch = h->epoch;
		pthread_mutex_unlock(&fe->conc_lock);
		int r = idle ? write_holding(fe, h->scope, n, -1, lease) : 0;
		if (r < 0) {
			pthread_mutex_lock(&fe->conc_lock);
			if (h->epoch == epoch && r != -ENOENT)
				h->held = old;
			if (r == -ENOTCONN)
				fe->store_down_until = now_seconds() + STORE_DOWN_BACKOFF_S;
			pthread_mutex_unlock(&fe->conc_lock);
			break;
		}
	}
	pthread_mutex_unlock(&fe->grow_lock);
}
