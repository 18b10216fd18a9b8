/* frontend: the async queue's etcd backend (placement/README.md).
 *
 * An accepted event is kindling/queue/SEQ (SEQ = the time accepted, this
 * frontend's id and a counter: unique and sorted by time), put before 202
 * is answered; if etcd does not answer, the invoke is refused (503) and
 * nothing is stored.  Every frontend scans kindling/queue/ each second.
 * Before delivering, a frontend claims the event: a txn creating
 * kindling/queue-claims/SEQ under its lease, only if no claim exists and
 * the event is still queued.  Delivered: both keys go in one txn.  A failed
 * attempt rewrites the event (its Attempts count) and keeps the claim.
 * After FE_MAX_ATTEMPTS the event moves to kindling/dlq/SEQ (one txn: put
 * the dead letter, delete the event and the claim).  A frontend that dies
 * loses its lease, so its claims vanish and another frontend delivers the
 * events it held (at least once). */
#include "frontend/internal.h"

#include "common/etcd.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define QUEUE_PREFIX "kindling/queue/"
#define CLAIM_PREFIX "kindling/queue-claims/"
#define DLQ_PREFIX "kindling/dlq/"

static void etcd_make_key(struct frontend *fe, const char *request_id, char *key, size_t size)
{
	(void)request_id;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	pthread_mutex_lock(&fe->qlock);
	uint64_t seq = fe->qseq++;
	pthread_mutex_unlock(&fe->qlock);
	snprintf(key, size, "%011lld.%09ld-%s-%08llu", (long long)ts.tv_sec, ts.tv_nsec, fe->id,
		 (unsigned long long)(seq % 100000000));
}

static int eq_put(struct frontend *fe, const char *key, const char *text)
{
	char *k = xasprintf(QUEUE_PREFIX "%s", key);
	int r = k ? etcd_put(fe->etcd, k, text, strlen(text), 0, NULL) : -ENOMEM;
	free(k);
	return r;
}

static int eq_load(struct frontend *fe, const char *key, char **text, size_t *len)
{
	char *k = xasprintf(QUEUE_PREFIX "%s", key);
	struct etcd_kv kv = { 0 };
	int r = k ? etcd_get(fe->etcd, k, &kv) : -ENOMEM;
	free(k);
	if (r == 0) {
		*text = (char *)kv.value;
		*len = kv.value_len;
		kv.value = NULL;
	}
	etcd_kv_cleanup(&kv);
	return r;
}

/* Apply |ops| in one txn guarded by this frontend's claim on |key| still
 * existing (if it is gone, another frontend has the event now). */
static int claimed_txn(struct frontend *fe, const char *key, const struct etcd_op *ops, size_t n)
{
	char *ck = xasprintf(CLAIM_PREFIX "%s", key);
	if (!ck)
		return -ENOMEM;
	struct etcd_cmp cmp = { .key = ck, .target = ETCD_CMP_CREATE_REVISION, .op = ETCD_GREATER, .number = 0 };
	bool ok = false;
	int r = etcd_txn(fe->etcd, &cmp, 1, ops, n, NULL, 0, &ok, NULL);
	free(ck);
	if (r == 0 && !ok) {
		log_warn("queued event %s: this frontend's claim on it is gone (its lease expired); another frontend "
			 "delivers it", key);
		return -EALREADY;
	}
	return r;
}

static int eq_update(struct frontend *fe, const char *key, const char *text)
{
	char *k = xasprintf(QUEUE_PREFIX "%s", key);
	if (!k)
		return -ENOMEM;
	struct etcd_op op = { .type = ETCD_OP_PUT, .key = k, .value = text, .value_len = strlen(text) };
	int r = claimed_txn(fe, key, &op, 1);
	free(k);
	return r;
}

static int eq_remove(struct frontend *fe, const char *key)
{
	char *k = xasprintf(QUEUE_PREFIX "%s", key), *ck = xasprintf(CLAIM_PREFIX "%s", key);
	int r = -ENOMEM;
	if (k && ck) {
		struct etcd_op ops[] = { { .type = ETCD_OP_DELETE, .key = k }, { .type = ETCD_OP_DELETE, .key = ck } };
		bool ok;
		r = etcd_txn(fe->etcd, NULL, 0, ops, 2, NULL, 0, &ok, NULL);
	}
	free(k);
	free(ck);
	return r;
}

static int eq_dead(struct frontend *fe, const char *key, const char *text)
{
	char *k = xasprintf(QUEUE_PREFIX "%s", key), *ck = xasprintf(CLAIM_PREFIX "%s", key);
	char *dk = xasprintf(DLQ_PREFIX "%s", key);
	int r = -ENOMEM;
	if (k && ck && dk) {
		struct etcd_op ops[] = { { .type = ETCD_OP_PUT, .key = dk, .value = text, .value_len = strlen(text) },
					 { .type = ETCD_OP_DELETE, .key = k },
					 { .type = ETCD_OP_DELETE, .key = ck } };
		r = claimed_txn(fe, key, ops, 3);
	}
	if (r < 0 && r != -EALREADY)
		log_err("move queued event %s to the dead letters (%s): %s; it stays queued", key, dk ? dk : "?",
			strerror(-r));
	free(k);
	free(ck);
	free(dk);
	return r;
}

static int eq_claim(struct frontend *fe, const char *key)
{
	int64_t lease = fe_fleet_lease(fe);
	if (!lease)
		return -ENOTCONN;
	char *k = xasprintf(QUEUE_PREFIX "%s", key), *ck = xasprintf(CLAIM_PREFIX "%s", key);
	char *val = xasprintf("{\"frontend\":\"%s\"}", fe->id);
	int r = -ENOMEM;
	bool ok = false;
	if (k && ck && val) {
		struct etcd_cmp cmps[] = {
			{ .key = ck, .target = ETCD_CMP_CREATE_REVISION, .op = ETCD_EQUAL, .number = 0 },
			{ .key = k, .target = ETCD_CMP_CREATE_REVISION, .op = ETCD_GREATER, .number = 0 },
		};
		struct etcd_op op = { .type = ETCD_OP_PUT, .key = ck, .value = val, .value_len = strlen(val), .lease = lease };
		r = etcd_txn(fe->etcd, cmps, 2, &op, 1, NULL, 0, &ok, NULL);
		if (r == -ENOENT)
			fe_fleet_lease_lost(fe, lease);
		struct etcd_kv kv = { 0 };
		if (r == 0 && !ok && etcd_get(fe->etcd, ck, &kv) == 0 && kv.lease == lease)
			ok = true; /* this frontend's own claim, made under this lease */
		etcd_kv_cleanup(&kv);
	}
	free(k);
	free(ck);
	free(val);
	return r < 0 ? r : ok ? 0 : -EALREADY;
}

static int eq_scan(struct frontend *fe)
{
	struct etcd_kvs q = { 0 }, c = { 0 };
	int r = etcd_range_prefix(fe->etcd, QUEUE_PREFIX, NULL, 0, &q);
	if (r == 0)
		r = etcd_range_prefix(fe->etcd, CLAIM_PREFIX, NULL, 0, &c);
	if (r < 0) {
		etcd_kvs_cleanup(&q);
		etcd_kvs_cleanup(&c);
		return r;
	}
	pthread_mutex_lock(&fe->qlock);
	size_t j = 0;
	for (size_t i = 0; i < q.n; i++) {
		const char *key = q.kvs[i].key + strlen(QUEUE_PREFIX);
		/* Both ranges are sorted: skip the events someone has claimed
		 * (this frontend's own claims are on entries it has). */
		int cmp = 1;
		while (j < c.n && (cmp = strcmp(c.kvs[j].key + strlen(CLAIM_PREFIX), key)) < 0)
			j++;
		if (j < c.n && cmp == 0)
			continue;
		fe_queue_add(fe, key);
	}
	pthread_mutex_unlock(&fe->qlock);
	etcd_kvs_cleanup(&q);
	etcd_kvs_cleanup(&c);
	return 0;
}

const struct fe_queue_backend fe_queue_etcd_backend = {
	.make_key = etcd_make_key,
	.put = eq_put,
	.load = eq_load,
	.update = eq_update,
	.remove = eq_remove,
	.dead = eq_dead,
	.claim = eq_claim,
	.scan = eq_scan,
	.rescan_s = 1.0,
};

int frontend_dlq_etcd_list(struct etcd *e, struct str_list *out)
{
	struct etcd_kvs kvs = { 0 };
	int r = etcd_range_prefix(e, DLQ_PREFIX, NULL, 0, &kvs);
	for (size_t i = 0; r == 0 && i < kvs.n; i++)
		r = str_list_add(out, (const char *)kvs.kvs[i].value);
	etcd_kvs_cleanup(&kvs);
	return r;
}
