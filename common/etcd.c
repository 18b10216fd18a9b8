/* common: a client of etcd's v3 API through its JSON gateway (etcd.h).
 *
 * Every call is one POST of a JSON body to one member, answered by one JSON
 * object.  What the gateway does that a reader must expect:
 *   - keys and values are base64 (standard alphabet, padded);
 *   - int64 fields come as JSON strings ("revision":"42"), though a number
 *     is read as well;
 *   - fields at their default (0, false, "", []) are left out (proto3 JSON),
 *     so a missing field means zero;
 *   - an error is {"error","message","code"} with a gRPC code and an HTTP
 *     status to match (NotFound 404, InvalidArgument 400, Unavailable 503);
 *   - a streaming call (lease keepalive) wraps its answer in {"result":...}
 *     and an error in {"error":{"grpc_code","message"}};
 *   - etcd 3.4 serves LeaseRevoke at /v3/kv/lease/revoke only (3.5 adds
 *     /v3/lease/revoke and keeps the old path), so that path is used.
 *
 * Failover: |current| is the member that answered last.  A call starts
 * there and moves on to the next member on a transport error or a 5xx, once
 * around.  When none answers, the client is "down" until one does; the
 * change is logged once each way, never per call.
 */
#define LOG_COMPONENT "etcd"

#include "etcd.h"

#include "common.h"
#include "http_client.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_TIMEOUT_MS 2000
/* How long call() keeps trying members that fail slowly, in timeouts. */
#define FAILOVER_TIMEOUTS 2
#define MAX_MEMBERS 16
/* Idle connections kept for reuse; more callers than this each make one and
 * drop it afterwards. */
#define POOL_MAX 8
/* The largest reply read: a range of many keys, each up to etcd's 1.5 MiB
 * request limit, in base64. */
#define MAX_REPLY (64u << 20)

struct etcd {
	char **members; /* "http://host:port", no trailing slash */
	size_t n_members;
	unsigned timeout_ms;
	pthread_mutex_t lock; /* guards everything below */
	size_t current;	      /* the member that answered last */
	bool down;	      /* no member answered the last call that tried them all */
	struct http_client *idle[POOL_MAX];
	size_t n_idle;
};

/* ---- base64 (standard alphabet, padded: what Go's encoding/json writes) ---- */

static const char b64_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* A malloc'd NUL-terminated base64 of |<p, n>|, or NULL (ENOMEM). */
static char *b64_encode(const void *p, size_t n)
{
	const uint8_t *in = p;
	if (n > (SIZE_MAX - 1) / 4 * 3 - 3) {
		errno = ENOMEM;
		return NULL;
	}
	char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;
	if (!out)
		return NULL;
	size_t i = 0;
	for (; i + 3 <= n; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
		*o++ = b64_alphabet[v >> 18];
		*o++ = b64_alphabet[(v >> 12) & 63];
		*o++ = b64_alphabet[(v >> 6) & 63];
		*o++ = b64_alphabet[v & 63];
	}
	if (n - i == 1) {
		uint32_t v = (uint32_t)in[i] << 16;
		*o++ = b64_alphabet[v >> 18];
		*o++ = b64_alphabet[(v >> 12) & 63];
		*o++ = '=';
		*o++ = '=';
	} else if (n - i == 2) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
		*o++ = b64_alphabet[v >> 18];
		*o++ = b64_alphabet[(v >> 12) & 63];
		*o++ = b64_alphabet[(v >> 6) & 63];
		*o++ = '=';
	}
	*o = 0;
	return out;
}

static int b64_value(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/* Decode |<s, len>| into a malloc'd buffer with a NUL after its |*out_len|
 * bytes.  Returns 0, -EPROTO for anything but padded standard base64, or
 * -ENOMEM. */
static int b64_decode(const char *s, size_t len, uint8_t **out, size_t *out_len)
{
	if (len % 4)
		return -EPROTO;
	size_t pad = 0;
	if (len && s[len - 1] == '=')
		pad = len >= 2 && s[len - 2] == '=' ? 2 : 1;
	uint8_t *buf = malloc(len / 4 * 3 + 1), *o = buf;
	if (!buf)
		return -ENOMEM;
	for (size_t i = 0; i < len; i += 4) {
		uint32_t v = 0;
		bool last = i + 4 == len;
		for (size_t j = 0; j < 4; j++) {
			int d = b64_value(s[i + j]);
			if (d < 0 && !(last && s[i + j] == '=' && j >= 4 - pad)) {
				free(buf);
				return -EPROTO;
			}
			v = v << 6 | (uint32_t)(d < 0 ? 0 : d);
		}
		*o++ = (uint8_t)(v >> 16);
		if (!last || pad < 2)
			*o++ = (uint8_t)(v >> 8);
		if (!last || pad < 1)
			*o++ = (uint8_t)v;
	}
	*o = 0;
	*out = buf;
	*out_len = (size_t)(o - buf);
	return 0;
}

/* ---- reading replies: every field checked, absent means zero ---- */

/* |obj|'s int64 field |name| into |*out|: absent or null is 0; a JSON
 * integer or a string of decimal digits is read; anything else (a real, a
 * bool, "12x", a number past int64) is -EPROTO. */
static int get_int64(const json_t *obj, const char *name, int64_t *out)
{
	const json_t *v = json_object_get(obj, name);
	*out = 0;
	if (!v || json_is_null(v))
		return 0;
	if (json_is_integer(v)) {
		*out = (int64_t)json_integer_value(v);
		return 0;
	}
	if (!json_is_string(v))
		return -EPROTO;
	const char *s = json_string_value(v);
	size_t len = json_string_length(v);
	size_t i = s[0] == '-' ? 1 : 0;
	if (len == i || len > 20 || strlen(s) != len)
		return -EPROTO;
	for (size_t j = i; j < len; j++)
		if (s[j] < '0' || s[j] > '9')
			return -EPROTO;
	errno = 0;
	long long n = strtoll(s, NULL, 10);
	if (errno == ERANGE)
		return -EPROTO;
	*out = n;
	return 0;
}

/* |obj|'s bool field |name|: absent or null is false. */
static int get_bool(const json_t *obj, const char *name, bool *out)
{
	const json_t *v = json_object_get(obj, name);
	*out = false;
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_boolean(v))
		return -EPROTO;
	*out = json_is_true(v);
	return 0;
}

/* |obj|'s base64 field |name|, decoded (absent: empty). */
static int get_bytes(const json_t *obj, const char *name, uint8_t **out, size_t *out_len)
{
	const json_t *v = json_object_get(obj, name);
	if (!v || json_is_null(v))
		return b64_decode("", 0, out, out_len);
	if (!json_is_string(v))
		return -EPROTO;
	return b64_decode(json_string_value(v), json_string_length(v), out, out_len);
}

/* The store's revision from |reply|'s "header", which every unary reply
 * carries. */
static int get_header_revision(const json_t *reply, int64_t *revision)
{
	const json_t *h = json_object_get(reply, "header");
	if (!json_is_object(h))
		return -EPROTO;
	int r = get_int64(h, "revision", revision);
	return r < 0 ? r : *revision < 0 ? -EPROTO : 0;
}

void etcd_kv_cleanup(struct etcd_kv *kv)
{
	if (!kv)
		return;
	free(kv->key);
	free(kv->value);
	*kv = (struct etcd_kv){0};
}

void etcd_kvs_cleanup(struct etcd_kvs *kvs)
{
	if (!kvs)
		return;
	for (size_t i = 0; i < kvs->n; i++)
		etcd_kv_cleanup(&kvs->kvs[i]);
	free(kvs->kvs);
	*kvs = (struct etcd_kvs){0};
}

static int parse_kv(const json_t *o, struct etcd_kv *kv)
{
	if (!json_is_object(o))
		return -EPROTO;
	uint8_t *key = NULL;
	size_t key_len = 0;
	int r = get_bytes(o, "key", &key, &key_len);
	if (r < 0)
		return r;
	kv->key = (char *)key;
	/* etcd has no empty keys, and a key with a NUL byte is no C string. */
	if (key_len == 0 || strlen(kv->key) != key_len)
		return -EPROTO;
	if ((r = get_bytes(o, "value", &kv->value, &kv->value_len)) < 0 ||
	    (r = get_int64(o, "create_revision", &kv->create_revision)) < 0 ||
	    (r = get_int64(o, "mod_revision", &kv->mod_revision)) < 0 ||
	    (r = get_int64(o, "version", &kv->version)) < 0 || (r = get_int64(o, "lease", &kv->lease)) < 0)
		return r;
	if (kv->create_revision < 0 || kv->mod_revision < 0 || kv->version < 0)
		return -EPROTO;
	return 0;
}

/* A range reply's "kvs", "more" and header revision into |*out|. */
static int parse_range_fields(const json_t *reply, struct etcd_kvs *out)
{
	*out = (struct etcd_kvs){0};
	if (!json_is_object(reply))
		return -EPROTO;
	int r = get_header_revision(reply, &out->revision);
	if (r < 0)
		return r;
	if ((r = get_bool(reply, "more", &out->more)) < 0)
		return r;
	int64_t count;
	if ((r = get_int64(reply, "count", &count)) < 0)
		return r;
	const json_t *kvs = json_object_get(reply, "kvs");
	if (!kvs || json_is_null(kvs))
		return 0;
	if (!json_is_array(kvs))
		return -EPROTO;
	size_t n = json_array_size(kvs);
	if (n == 0)
		return 0;
	out->kvs = calloc(n, sizeof(*out->kvs));
	if (!out->kvs)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		out->n = i + 1; /* so cleanup frees what the failed one holds */
		r = parse_kv(json_array_get(kvs, i), &out->kvs[i]);
		if (r < 0) {
			etcd_kvs_cleanup(out);
			return r;
		}
	}
	return 0;
}

/* parse_range_fields, leaving |*out| zeroed when it fails. */
static int parse_range_object(const json_t *reply, struct etcd_kvs *out)
{
	int r = parse_range_fields(reply, out);
	if (r < 0)
		etcd_kvs_cleanup(out);
	return r;
}

int etcd_parse_range_reply(const char *body, size_t len, struct etcd_kvs *out)
{
	*out = (struct etcd_kvs){0};
	json_error_t jerr;
	json_t *reply = json_loadb(body, len, 0, &jerr);
	if (!reply)
		return -EPROTO;
	int r = parse_range_object(reply, out);
	json_decref(reply);
	return r == -ENOMEM ? r : r < 0 ? -EPROTO : 0;
}

/* ---- the client ---- */

/* Check one endpoint "http://host[:port][/]" and copy it without the slash.
 * Returns 0 or -EINVAL. */
static int parse_endpoint(const char *s, size_t len, char **out)
{
	size_t scheme;
	if (len > 7 && !strncmp(s, "http://", 7))
		scheme = 7;
	else if (len > 8 && !strncmp(s, "https://", 8))
		scheme = 8;
	else
		return -EINVAL;
	if (s[len - 1] == '/')
		len--;
	size_t host_end = len, i = scheme;
	if (s[i] == '[') { /* [IPv6] */
		const char *close = memchr(s + i, ']', len - i);
		if (!close || close == s + i + 1)
			return -EINVAL;
		for (const char *p = s + i + 1; p < close; p++)
			if (!(*p == ':' || *p == '.' || (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') ||
			      (*p >= 'A' && *p <= 'F')))
				return -EINVAL;
		i = (size_t)(close - s) + 1;
		host_end = i;
		if (i < len && s[i] != ':')
			return -EINVAL;
	} else {
		for (; i < len && s[i] != ':'; i++) {
			char c = s[i];
			if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
			      c == '-' || c == '_'))
				return -EINVAL;
		}
		host_end = i;
		if (host_end == scheme)
			return -EINVAL;
	}
	if (host_end < len) { /* ":port" */
		size_t digits = len - host_end - 1;
		if (digits == 0 || digits > 5)
			return -EINVAL;
		unsigned port = 0;
		for (size_t j = host_end + 1; j < len; j++) {
			if (s[j] < '0' || s[j] > '9')
				return -EINVAL;
			port = port * 10 + (unsigned)(s[j] - '0');
		}
		if (port == 0 || port > 65535)
			return -EINVAL;
	}
	*out = strndup(s, len);
	return *out ? 0 : -ENOMEM;
}

static void free_members(char **m, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(m[i]);
	free(m);
}

int etcd_new(const struct etcd_config *cfg, struct etcd **out)
{
	*out = NULL;
	const char *list = cfg ? cfg->endpoints : NULL;
	if (!list || !*list) {
		log_err("no etcd endpoints given: pass the members' client URLs, as http://127.0.0.1:2379,...");
		return -EINVAL;
	}
	char **members = calloc(MAX_MEMBERS, sizeof(*members));
	if (!members)
		return -ENOMEM;
	size_t n = 0;
	for (const char *p = list;;) {
		const char *comma = strchr(p, ',');
		size_t len = comma ? (size_t)(comma - p) : strlen(p);
		if (n == MAX_MEMBERS) {
			log_err("etcd endpoints '%s': more than %d members", list, MAX_MEMBERS);
			free_members(members, n);
			return -EINVAL;
		}
		int r = parse_endpoint(p, len, &members[n]);
		if (r < 0) {
			if (r == -EINVAL)
				log_err("etcd endpoint '%.*s' in '%s' is not a member's client URL: expected "
					"http://HOST:PORT",
					(int)len, p, list);
			free_members(members, n);
			return r;
		}
		n++;
		if (!comma)
			break;
		p = comma + 1;
	}
	struct etcd *e = calloc(1, sizeof(*e));
	if (!e) {
		free_members(members, n);
		return -ENOMEM;
	}
	e->members = members;
	e->n_members = n;
	e->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : DEFAULT_TIMEOUT_MS;
	pthread_mutex_init(&e->lock, NULL);
	*out = e;
	return 0;
}

void etcd_free(struct etcd *e)
{
	if (!e)
		return;
	for (size_t i = 0; i < e->n_idle; i++)
		http_client_free(e->idle[i]);
	pthread_mutex_destroy(&e->lock);
	free_members(e->members, e->n_members);
	free(e);
}

static int pool_get(struct etcd *e, struct http_client **out)
{
	pthread_mutex_lock(&e->lock);
	struct http_client *c = e->n_idle ? e->idle[--e->n_idle] : NULL;
	pthread_mutex_unlock(&e->lock);
	if (c) {
		*out = c;
		return 0;
	}
	return http_client_new(out);
}

static void pool_put(struct etcd *e, struct http_client *c)
{
	pthread_mutex_lock(&e->lock);
	if (e->n_idle < POOL_MAX) {
		e->idle[e->n_idle++] = c;
		c = NULL;
	}
	pthread_mutex_unlock(&e->lock);
	http_client_free(c);
}

/* The -errno for an etcd error: its gRPC |code| and |message|. */
static int grpc_errno(int64_t code, const char *message)
{
	switch (code) {
	case 3: /* InvalidArgument */
		return strstr(message, "too large") ? -EMSGSIZE : -EINVAL;
	case 5: /* NotFound: "requested lease not found" */
		return -ENOENT;
	case 7:	 /* PermissionDenied */
	case 16: /* Unauthenticated */
		return -EACCES;
	case 8: /* ResourceExhausted: "mvcc: database space exceeded" */
		return -ENOSPC;
	default:
		return -EIO;
	}
}

/* An error reply (unary {"error","message","code"}, or a stream's
 * {"error":{"grpc_code","message"}}) as -errno; logged unless -ENOENT,
 * which the caller reports. */
static int reply_error(const char *member, const char *path, long status, const json_t *reply)
{
	const json_t *err = json_object_get(reply, "error");
	const json_t *src = json_is_object(err) ? err : reply;
	int64_t code = 0;
	const char *what = "code";
	if (json_is_object(err))
		what = "grpc_code";
	const json_t *msg = json_object_get(src, "message");
	if (!json_is_string(msg))
		msg = json_is_string(err) ? err : NULL;
	const char *message = msg ? json_string_value(msg) : "";
	if (get_int64(src, what, &code) < 0 || code <= 0 || !msg) {
		log_err("etcd member %s answered %s with HTTP %ld and no etcd error in it: is this an etcd v3 "
			"gateway?",
			member, path, status);
		return -EPROTO;
	}
	int r = grpc_errno(code, message);
	if (r != -ENOENT)
		log_err("etcd member %s refused %s: %s (gRPC code %" PRId64 ")", member, path, message, code);
	return r;
}

/* POST |req| to |path| on the member that answered last, or the next ones
 * (transport errors and 5xx move on).  If none answered, every member is
 * tried again after a short pause:
 *  - while one failed fast (a 5xx, a broken connection: what members in a
 *    leader election answer), round after round until FAILOVER_TIMEOUTS
 *    timeouts have passed since the first try, since an election on a loaded
 *    host can outlast one round and a leader may be a moment away;
 *  - else, if one was there but slow, once more if the round took less than
 *    the timeout.
 * Members that all refuse connections are down, and that is said at once;
 * members that all time out are not waited on twice.  0 with |*reply| (an object; decref),
 * -ENOTCONN if none answered, -EPROTO for a reply that is no JSON object,
 * or an etcd error as -errno (reply_error). */
static int call(struct etcd *e, const char *path, json_t *req, size_t json_flags, json_t **reply)
{
	*reply = NULL;
	char *body = json_dumps(req, JSON_COMPACT);
	if (!body)
		return -ENOMEM;
	struct http_client *c;
	int r = pool_get(e, &c);
	if (r < 0) {
		free(body);
		return r;
	}
	pthread_mutex_lock(&e->lock);
	size_t start = e->current;
	pthread_mutex_unlock(&e->lock);
	static const struct http_header headers[] = {{"Content-Type", "application/json"}};
	struct http_client_response resp = {0};
	size_t member = start;
	int last = -ENOTCONN;
	/* slow: a member was there but failed; failing: one failed fast (a 5xx,
	 * a reset), which is what members in an election answer. */
	bool answered = false, slow = false, failing = false;
	double began = now_seconds();
	for (size_t k = 0;; k++) {
		if (k > 0 && k % e->n_members == 0) {
			double spent_ms = (now_seconds() - began) * 1e3;
			if (!(failing ? spent_ms < (double)FAILOVER_TIMEOUTS * e->timeout_ms
				      : slow && spent_ms < e->timeout_ms))
				break;
			slow = failing = false; /* each round decides whether another is worth it */
			struct timespec pause = { 0, 200 * 1000 * 1000 };
			nanosleep(&pause, NULL);
		}
		member = (start + k) % e->n_members;
		char *url = xasprintf("%s%s", e->members[member], path);
		if (!url) {
			r = -ENOMEM;
			break;
		}
		r = http_client_request(c, "POST", url, headers, 1, body, strlen(body), e->timeout_ms, MAX_REPLY,
					&resp);
		free(url);
		if (r == -ENOMEM || r == -EMSGSIZE)
			break;
		if (r < 0) {
			log_debug("%s%s: %s", e->members[member], path, strerror(-r));
			last = r;
			slow |= r != -ECONNREFUSED;
			failing |= r != -ECONNREFUSED && r != -ETIMEDOUT;
			continue;
		}
		if (resp.status >= 500) {
			log_debug("%s%s: HTTP %ld: %.200s", e->members[member], path, resp.status, resp.body);
			last = -EIO;
			slow = failing = true;
			http_client_response_cleanup(&resp);
			continue;
		}
		answered = true;
		break;
	}
	free(body);
	pool_put(e, c);

	pthread_mutex_lock(&e->lock);
	bool was_down = e->down;
	if (answered) {
		e->current = member;
		e->down = false;
	} else if (r != -ENOMEM && r != -EMSGSIZE) {
		e->down = true;
	}
	pthread_mutex_unlock(&e->lock);

	if (!answered) {
		if (r == -EMSGSIZE)
			log_err("etcd member %s answered %s with more than %u bytes", e->members[member], path,
				MAX_REPLY);
		if (r == -ENOMEM || r == -EMSGSIZE)
			return r;
		if (!was_down)
			log_err("no etcd member answers (%zu tried, the last: %s); is etcd running at %s? "
				"Serving from what is cached until one does",
				e->n_members, strerror(-last), e->members[start]);
		return -ENOTCONN;
	}
	if (was_down)
		log_warn("etcd member %s answers again", e->members[member]);

	json_error_t jerr;
	json_t *j = json_loadb(resp.body, resp.body_len, json_flags, &jerr);
	if (!json_is_object(j)) {
		log_err("etcd member %s answered %s with HTTP %ld and no JSON object (%s): is this an etcd v3 "
			"gateway?",
			e->members[member], path, resp.status, j ? "another JSON value" : jerr.text);
		json_decref(j);
		http_client_response_cleanup(&resp);
		return -EPROTO;
	}
	if (resp.status != 200 || (json_flags && json_object_get(j, "error"))) {
		r = reply_error(e->members[member], path, resp.status, j);
		json_decref(j);
		http_client_response_cleanup(&resp);
		return r;
	}
	http_client_response_cleanup(&resp);
	*reply = j;
	return 0;
}

/* Log a reply that failed its check, and return -EPROTO. */
static int bad_reply(struct etcd *e, const char *path, const char *what)
{
	pthread_mutex_lock(&e->lock);
	const char *member = e->members[e->current];
	pthread_mutex_unlock(&e->lock);
	log_err("etcd member %s sent a malformed reply to %s: %s", member, path, what);
	return -EPROTO;
}

/* ---- building requests ---- */

/* Set |obj|'s field |name| to the base64 of |<p, n>|.  0 or -ENOMEM. */
static int set_bytes(json_t *obj, const char *name, const void *p, size_t n)
{
	char *s = b64_encode(p, n);
	if (!s || json_object_set_new(obj, name, json_string(s)) < 0) {
		free(s);
		return -ENOMEM;
	}
	free(s);
	return 0;
}

/* Set |obj|'s int64 field |name| as the gateway writes them, a string. */
static int set_int64(json_t *obj, const char *name, int64_t v)
{
	char buf[24];
	snprintf(buf, sizeof(buf), "%" PRId64, v);
	return json_object_set_new(obj, name, json_string(buf)) < 0 ? -ENOMEM : 0;
}

static int check_key(const char *what, const char *key)
{
	if (!key || !*key) {
		log_err("etcd %s: an empty key (etcd has none)", what);
		return -EINVAL;
	}
	return 0;
}

/* The smallest key past every key starting with |<p, n>|: |p| with its last
 * byte below 0xff incremented and what follows it dropped; "\0" (the end of
 * the keyspace) when there is none.  Written into |out| (n + 1 bytes);
 * |*out_len| gets its length. */
static void prefix_end(const char *p, size_t n, char *out, size_t *out_len)
{
	while (n && (uint8_t)p[n - 1] == 0xff)
		n--;
	if (n == 0) {
		out[0] = 0;
		*out_len = 1;
		return;
	}
	memcpy(out, p, n);
	out[n - 1] = (char)((uint8_t)out[n - 1] + 1);
	*out_len = n;
}

/* Set "key" to |key| and, if |prefix|, "range_end" to the end of its
 * prefix. */
static int set_key_range(json_t *obj, const char *key, bool prefix)
{
	size_t n = strlen(key);
	int r = set_bytes(obj, "key", key, n);
	if (r < 0 || !prefix)
		return r;
	char *end = malloc(n + 1);
	if (!end)
		return -ENOMEM;
	size_t end_len;
	prefix_end(key, n, end, &end_len);
	r = set_bytes(obj, "range_end", end, end_len);
	free(end);
	return r;
}

/* ---- the calls ---- */

int etcd_get(struct etcd *e, const char *key, struct etcd_kv *out)
{
	*out = (struct etcd_kv){0};
	int r = check_key("get", key);
	if (r < 0)
		return r;
	json_t *req = json_object(), *reply = NULL;
	if (!req || set_key_range(req, key, false) < 0) {
		json_decref(req);
		return -ENOMEM;
	}
	r = call(e, "/v3/kv/range", req, 0, &reply);
	json_decref(req);
	if (r < 0)
		return r;
	struct etcd_kvs kvs;
	r = parse_range_object(reply, &kvs);
	json_decref(reply);
	if (r == -EPROTO)
		return bad_reply(e, "/v3/kv/range", "its fields are not those of a RangeResponse");
	if (r < 0)
		return r;
	if (kvs.n > 1 || (kvs.n == 1 && strcmp(kvs.kvs[0].key, key))) {
		etcd_kvs_cleanup(&kvs);
		return bad_reply(e, "/v3/kv/range", "keys other than the one asked for");
	}
	if (kvs.n == 0)
		return -ENOENT;
	*out = kvs.kvs[0];
	free(kvs.kvs);
	return 0;
}

int etcd_range_prefix(struct etcd *e, const char *prefix, const char *after, size_t limit, struct etcd_kvs *out)
{
	*out = (struct etcd_kvs){0};
	if (!prefix || limit > INT64_MAX) {
		log_err("etcd range: no prefix, or a limit past int64");
		return -EINVAL;
	}
	size_t plen = strlen(prefix);
	char *end = malloc(plen + 1);
	json_t *req = json_object(), *reply = NULL;
	int r = end && req ? 0 : -ENOMEM;
	size_t end_len = 0;
	if (r == 0) {
		prefix_end(prefix, plen, end, &end_len);
		/* Start at the prefix, or just past |after| if that is further:
		 * the smallest key above |after| is |after| followed by a NUL. */
		if (after && strcmp(after, prefix) >= 0) {
			size_t alen = strlen(after);
			char *start = malloc(alen + 1);
			if (!start)
				r = -ENOMEM;
			else {
				memcpy(start, after, alen + 1);
				r = set_bytes(req, "key", start, alen + 1);
				free(start);
			}
		} else if (plen) {
			r = set_bytes(req, "key", prefix, plen);
		} else {
			r = set_bytes(req, "key", "", 1); /* "\0": the first key */
		}
	}
	if (r == 0)
		r = set_bytes(req, "range_end", end, end_len);
	if (r == 0 && limit)
		r = set_int64(req, "limit", (int64_t)limit);
	free(end);
	if (r < 0) {
		json_decref(req);
		return r;
	}
	r = call(e, "/v3/kv/range", req, 0, &reply);
	json_decref(req);
	if (r < 0)
		return r;
	r = parse_range_object(reply, out);
	json_decref(reply);
	if (r == -EPROTO)
		return bad_reply(e, "/v3/kv/range", "its fields are not those of a RangeResponse");
	if (r == 0 && limit && out->n > limit) {
		etcd_kvs_cleanup(out);
		return bad_reply(e, "/v3/kv/range", "more keys than the limit");
	}
	return r;
}

int etcd_put(struct etcd *e, const char *key, const void *value, size_t len, int64_t lease, int64_t *revision)
{
	if (revision)
		*revision = 0;
	int r = check_key("put", key);
	if (r < 0)
		return r;
	if (!value && len) {
		log_err("etcd put %s: no value but a length of %zu", key, len);
		return -EINVAL;
	}
	json_t *req = json_object(), *reply = NULL;
	if (!req || set_key_range(req, key, false) < 0 || set_bytes(req, "value", value ? value : "", len) < 0 ||
	    (lease && set_int64(req, "lease", lease) < 0)) {
		json_decref(req);
		return -ENOMEM;
	}
	r = call(e, "/v3/kv/put", req, 0, &reply);
	json_decref(req);
	if (r < 0)
		return r;
	int64_t rev;
	r = get_header_revision(reply, &rev);
	json_decref(reply);
	if (r < 0)
		return bad_reply(e, "/v3/kv/put", "no header with the revision");
	if (revision)
		*revision = rev;
	return 0;
}

int etcd_delete(struct etcd *e, const char *key, bool prefix, int64_t *deleted)
{
	if (deleted)
		*deleted = 0;
	int r = check_key("delete", key);
	if (r < 0)
		return r;
	json_t *req = json_object(), *reply = NULL;
	if (!req || set_key_range(req, key, prefix) < 0) {
		json_decref(req);
		return -ENOMEM;
	}
	r = call(e, "/v3/kv/deleterange", req, 0, &reply);
	json_decref(req);
	if (r < 0)
		return r;
	int64_t rev, n;
	if (get_header_revision(reply, &rev) < 0 || get_int64(reply, "deleted", &n) < 0 || n < 0) {
		json_decref(reply);
		return bad_reply(e, "/v3/kv/deleterange", "no header, or a bad \"deleted\" count");
	}
	json_decref(reply);
	if (deleted)
		*deleted = n;
	return 0;
}

/* One compare as the gateway takes it. */
static int txn_compare(const struct etcd_cmp *c, json_t **out)
{
	static const char *const targets[] = {
		[ETCD_CMP_MOD_REVISION] = "MOD",
		[ETCD_CMP_CREATE_REVISION] = "CREATE",
		[ETCD_CMP_VERSION] = "VERSION",
		[ETCD_CMP_VALUE] = "VALUE",
	};
	static const char *const fields[] = {
		[ETCD_CMP_MOD_REVISION] = "mod_revision",
		[ETCD_CMP_CREATE_REVISION] = "create_revision",
		[ETCD_CMP_VERSION] = "version",
	};
	static const char *const ops[] = {
		[ETCD_EQUAL] = "EQUAL",
		[ETCD_NOT_EQUAL] = "NOT_EQUAL",
		[ETCD_LESS] = "LESS",
		[ETCD_GREATER] = "GREATER",
	};
	int r = check_key("txn compare", c->key);
	if (r < 0)
		return r;
	if ((unsigned)c->target > ETCD_CMP_VALUE || (unsigned)c->op > ETCD_GREATER ||
	    (c->target == ETCD_CMP_VALUE && !c->value && c->value_len)) {
		log_err("etcd txn: a compare on %s with an unknown target or operator, or a missing value", c->key);
		return -EINVAL;
	}
	json_t *o = json_object();
	if (!o || set_key_range(o, c->key, false) < 0 ||
	    json_object_set_new(o, "target", json_string(targets[c->target])) < 0 ||
	    json_object_set_new(o, "result", json_string(ops[c->op])) < 0 ||
	    (c->target == ETCD_CMP_VALUE ? set_bytes(o, "value", c->value ? c->value : "", c->value_len)
					 : set_int64(o, fields[c->target], c->number)) < 0) {
		json_decref(o);
		return -ENOMEM;
	}
	*out = o;
	return 0;
}

/* One operation as the gateway takes it: a RequestOp. */
static int txn_op(const struct etcd_op *op, json_t **out)
{
	int r = check_key("txn operation", op->key);
	if (r < 0)
		return r;
	if ((op->type != ETCD_OP_PUT && op->type != ETCD_OP_DELETE) ||
	    (op->type == ETCD_OP_PUT && !op->value && op->value_len)) {
		log_err("etcd txn: an operation on %s of an unknown type, or a put without its value", op->key);
		return -EINVAL;
	}
	json_t *inner = json_object(), *o = json_object();
	r = inner && o ? 0 : -ENOMEM;
	if (r == 0)
		r = set_key_range(inner, op->key, op->type == ETCD_OP_DELETE && op->prefix);
	if (r == 0 && op->type == ETCD_OP_PUT) {
		r = set_bytes(inner, "value", op->value ? op->value : "", op->value_len);
		if (r == 0 && op->lease)
			r = set_int64(inner, "lease", op->lease);
	}
	if (r == 0) {
		const char *kind = op->type == ETCD_OP_PUT ? "request_put" : "request_delete_range";
		r = json_object_set_new(o, kind, inner) < 0 ? -ENOMEM : 0;
		inner = NULL;
	}
	json_decref(inner);
	if (r < 0) {
		json_decref(o);
		return r;
	}
	*out = o;
	return 0;
}

/* Append to a new array in |req|'s field |name| the JSON of each of the
 * |n| items (each |size| bytes) at |items|, made by |make|. */
static int txn_list(json_t *req, const char *name, const void *items, size_t n, size_t size,
		    int (*make)(const void *item, json_t **out))
{
	if (n == 0)
		return 0;
	if (!items) {
		log_err("etcd txn: %zu %s but no array of them", n, name);
		return -EINVAL;
	}
	json_t *a = json_array();
	if (!a || json_object_set_new(req, name, a) < 0)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		json_t *o;
		int r = make((const char *)items + i * size, &o);
		if (r < 0)
			return r;
		if (json_array_append_new(a, o) < 0)
			return -ENOMEM;
	}
	return 0;
}

static int make_compare(const void *item, json_t **out) { return txn_compare(item, out); }
static int make_op(const void *item, json_t **out) { return txn_op(item, out); }

int etcd_txn(struct etcd *e, const struct etcd_cmp *cmps, size_t n_cmps, const struct etcd_op *then, size_t n_then,
	     const struct etcd_op *otherwise, size_t n_otherwise, bool *succeeded, int64_t *revision)
{
	*succeeded = false;
	if (revision)
		*revision = 0;
	json_t *req = json_object(), *reply = NULL;
	int r = req ? 0 : -ENOMEM;
	if (r == 0)
		r = txn_list(req, "compare", cmps, n_cmps, sizeof(*cmps), make_compare);
	if (r == 0)
		r = txn_list(req, "success", then, n_then, sizeof(*then), make_op);
	if (r == 0)
		r = txn_list(req, "failure", otherwise, n_otherwise, sizeof(*otherwise), make_op);
	if (r == 0)
		r = call(e, "/v3/kv/txn", req, 0, &reply);
	json_decref(req);
	if (r < 0)
		return r;
	int64_t rev;
	bool ok;
	const json_t *responses = json_object_get(reply, "responses");
	if (get_header_revision(reply, &rev) < 0 || get_bool(reply, "succeeded", &ok) < 0 ||
	    (responses && !json_is_array(responses) && !json_is_null(responses))) {
		json_decref(reply);
		return bad_reply(e, "/v3/kv/txn", "no header, or a bad \"succeeded\" or \"responses\"");
	}
	json_decref(reply);
	*succeeded = ok;
	if (revision)
		*revision = rev;
	return 0;
}

int etcd_lease_grant(struct etcd *e, unsigned ttl_s, int64_t *id)
{
	*id = 0;
	if (ttl_s == 0 || ttl_s > INT32_MAX) {
		log_err("etcd lease grant: a TTL of %u s (1 s or more)", ttl_s);
		return -EINVAL;
	}
	json_t *req = json_object(), *reply = NULL;
	if (!req || set_int64(req, "TTL", ttl_s) < 0) {
		json_decref(req);
		return -ENOMEM;
	}
	int r = call(e, "/v3/lease/grant", req, 0, &reply);
	json_decref(req);
	if (r < 0)
		return r;
	int64_t rev, lease, ttl;
	const json_t *err = json_object_get(reply, "error");
	if (get_header_revision(reply, &rev) < 0 || get_int64(reply, "ID", &lease) < 0 ||
	    get_int64(reply, "TTL", &ttl) < 0 || lease <= 0 || ttl <= 0 || (err && !json_is_string(err))) {
		json_decref(reply);
		return bad_reply(e, "/v3/lease/grant", "no header, or no lease ID and TTL");
	}
	if (err && json_string_length(err)) {
		log_err("etcd refused a lease of %u s: %s", ttl_s, json_string_value(err));
		json_decref(reply);
		return -EIO;
	}
	json_decref(reply);
	*id = lease;
	return 0;
}

int etcd_lease_keepalive(struct etcd *e, int64_t id, int64_t *ttl_left)
{
	if (ttl_left)
		*ttl_left = 0;
	if (id <= 0) {
		log_err("etcd lease keepalive: lease ID %" PRId64 " (leases are positive)", id);
		return -EINVAL;
	}
	json_t *req = json_object(), *reply = NULL;
	if (!req || set_int64(req, "ID", id) < 0) {
		json_decref(req);
		return -ENOMEM;
	}
	/* A stream: its first message is the answer, whatever may follow. */
	int r = call(e, "/v3/lease/keepalive", req, JSON_DISABLE_EOF_CHECK, &reply);
	json_decref(req);
	if (r < 0)
		return r;
	const json_t *result = json_object_get(reply, "result");
	int64_t rev, got, ttl;
	if (!json_is_object(result) || get_header_revision(result, &rev) < 0 || get_int64(result, "ID", &got) < 0 ||
	    get_int64(result, "TTL", &ttl) < 0 || (got != id && got != 0)) {
		json_decref(reply);
		return bad_reply(e, "/v3/lease/keepalive", "no result with the lease's ID and TTL");
	}
	json_decref(reply);
	if (ttl <= 0)
		return -ENOENT; /* expired: the gateway answers with TTL 0 (left out) */
	if (ttl_left)
		*ttl_left = ttl;
	return 0;
}

int etcd_lease_revoke(struct etcd *e, int64_t id)
{
	if (id <= 0) {
		log_err("etcd lease revoke: lease ID %" PRId64 " (leases are positive)", id);
		return -EINVAL;
	}
	json_t *req = json_object(), *reply = NULL;
	if (!req || set_int64(req, "ID", id) < 0) {
		json_decref(req);
		return -ENOMEM;
	}
	int r = call(e, "/v3/kv/lease/revoke", req, 0, &reply);
	json_decref(req);
	if (r < 0)
		return r;
	int64_t rev;
	r = get_header_revision(reply, &rev);
	json_decref(reply);
	return r < 0 ? bad_reply(e, "/v3/kv/lease/revoke", "no header") : 0;
}
