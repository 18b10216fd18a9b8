/* common: a client of etcd's v3 API, through its JSON gateway (libcurl).
 *
 * kindling's fleet keeps its shared state in etcd (Debian's etcd-server, v3
 * API): function records, host registrations under leases, the async queue,
 * concurrency holdings, placement reservations.  etcd's gRPC API would need
 * a gRPC stack in C; its JSON gateway (POST /v3/kv/range, /v3/kv/put,
 * /v3/kv/txn, /v3/lease/...) is the same API over HTTP/1.1 with keys and
 * values in base64, and libcurl is already how kindling speaks HTTP.
 *
 * A client is given every member's URL.  Each call goes to the member that
 * answered last; when that one does not answer (refused, reset, timed out,
 * or a 5xx), the next is tried, and so on once around, so losing one member
 * of three costs one failed attempt, never an error.  When no member
 * answers, the call returns -ENOTCONN (logged once per outage, not per
 * call): callers treat that as "the shared store is down" and keep serving
 * from what they cached (static stability).
 *
 * Keys and values are byte strings; keys used by kindling are printable
 * ("kindling/functions/NAME").  Every reply is parsed with jansson and
 * checked field by field (a member, or something posing as one, is not
 * trusted to send well-formed JSON): a reply that does not parse is -EPROTO.
 *
 * All calls are thread-safe; a client keeps a small pool of connections.
 */
#ifndef KINDLING_COMMON_ETCD_H
#define KINDLING_COMMON_ETCD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct etcd_config {
	/* Member client URLs, comma-separated: "http://127.0.0.1:2379,...".
	 * Required. */
	const char *endpoints;
	/* The time one attempt on one member may take (0 = 2000 ms). */
	unsigned timeout_ms;
};

struct etcd;

/* A key and its value, as a range returns them. */
struct etcd_kv {
	char *key;		/* malloc'd, NUL-terminated */
	uint8_t *value;		/* malloc'd, NUL-terminated (not counted in value_len) */
	size_t value_len;
	int64_t create_revision, mod_revision, version;
	int64_t lease;		/* 0 if none */
};

struct etcd_kvs {
	struct etcd_kv *kvs;
	size_t n;
	int64_t revision;	/* the store's revision the range was read at */
	bool more;		/* the limit cut the range short */
};

/* Free what |kv| owns; safe on a zeroed struct. */
void etcd_kv_cleanup(struct etcd_kv *kv);
/* Free what |kvs| owns; safe on a zeroed struct. */
void etcd_kvs_cleanup(struct etcd_kvs *kvs);

/* Make a client for the members in |cfg| (no connection is made yet).
 * Returns 0 with |*out| (etcd_free), or -EINVAL for a bad endpoint list
 * (logged, naming it), or -ENOMEM. */
int etcd_new(const struct etcd_config *cfg, struct etcd **out);

/* Free; NULL is fine.  No call may be in progress. */
void etcd_free(struct etcd *e);

/* The value of |key| into |*out|.  Returns 0, -ENOENT if the key does not
 * exist, -ENOTCONN if no member answers, -EPROTO for a bad reply, or
 * -errno. */
int etcd_get(struct etcd *e, const char *key, struct etcd_kv *out);

/* The keys starting with |prefix|, in key order, those after |after| only
 * (NULL: from the first), at most |limit| (0 = all).  Returns 0 with |*out|
 * (possibly n = 0), -ENOTCONN, -EPROTO or -errno. */
int etcd_range_prefix(struct etcd *e, const char *prefix, const char *after, size_t limit, struct etcd_kvs *out);

/* Set |key| to |<value, len>|, attached to |lease| (0 = none).  |*revision|
 * (may be NULL) gets the store's revision after the put.  Returns 0,
 * -ENOENT if the lease does not exist (any more), -ENOTCONN, or -errno. */
int etcd_put(struct etcd *e, const char *key, const void *value, size_t len, int64_t lease, int64_t *revision);

/* Delete |key| (|prefix| false) or every key starting with it (true).
 * |*deleted| (may be NULL) gets how many went.  Deleting nothing is 0. */
int etcd_delete(struct etcd *e, const char *key, bool prefix, int64_t *deleted);

/* ---- transactions ---- */

enum etcd_cmp_target {
	ETCD_CMP_MOD_REVISION,	  /* |number| against the key's mod_revision (0: key absent) */
	ETCD_CMP_CREATE_REVISION, /* |number| against its create_revision (0: key absent) */
	ETCD_CMP_VERSION,	  /* |number| against its version (0: key absent) */
	ETCD_CMP_VALUE,		  /* |<value, value_len>| against its value */
};

enum etcd_cmp_op { ETCD_EQUAL, ETCD_NOT_EQUAL, ETCD_LESS, ETCD_GREATER };

struct etcd_cmp {
	const char *key;
	enum etcd_cmp_target target;
	enum etcd_cmp_op op;
	int64_t number;
	const void *value;
	size_t value_len;
};

enum etcd_op_type { ETCD_OP_PUT, ETCD_OP_DELETE };

struct etcd_op {
	enum etcd_op_type type;
	const char *key;
	const void *value;	/* PUT */
	size_t value_len;
	int64_t lease;		/* PUT: 0 = none */
	bool prefix;		/* DELETE: every key starting with |key| */
};

/* If every compare holds, apply |then| (all of them, atomically), else
 * apply |otherwise|.  |*succeeded| tells which; |*revision| (may be NULL)
 * gets the store's revision after it.  Returns 0 (whichever branch ran),
 * -ENOTCONN, -EPROTO, or -errno (a bad lease in an op: -ENOENT). */
int etcd_txn(struct etcd *e, const struct etcd_cmp *cmps, size_t n_cmps, const struct etcd_op *then, size_t n_then,
	     const struct etcd_op *otherwise, size_t n_otherwise, bool *succeeded, int64_t *revision);

/* ---- leases ---- */

/* Grant a lease of |ttl_s| seconds: 0 with |*id|, -ENOTCONN or -errno. */
int etcd_lease_grant(struct etcd *e, unsigned ttl_s, int64_t *id);

/* Renew lease |id| once.  |*ttl_left| (may be NULL) gets its new TTL.
 * Returns 0, -ENOENT if it has expired (its keys are gone: grant a new one
 * and put them again), -ENOTCONN or -errno. */
int etcd_lease_keepalive(struct etcd *e, int64_t id, int64_t *ttl_left);

/* Revoke lease |id|, deleting its keys.  0, -ENOENT, -ENOTCONN or -errno. */
int etcd_lease_revoke(struct etcd *e, int64_t id);

/* ---- the reply parser, separate for its fuzz target ---- */

/* Parse a range reply ({"header":{"revision"},"kvs":[...],"more"}) from
 * |<body, len>| into |*out|.  0 or -EPROTO. */
int etcd_parse_range_reply(const char *body, size_t len, struct etcd_kvs *out);

#endif
