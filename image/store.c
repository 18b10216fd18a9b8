/* chunker: origin stores.  URI parsing, backend registration and the public
 * wrappers of image.h.  Callers never see an ops table: every entry point
 * here checks its arguments and keys once, then calls the backend. */
#include "store_ops.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Every backend, in the order URIs are matched.  Adding one means one line
 * here and one ops table. */
static const struct store_ops *const store_backends[] = {
	&store_file_ops,
	&store_http_ops,
	&store_s3_ops,
};

struct store {
	const struct store_ops *ops;
	void *state;
	char *description;
};

bool store_key_valid(const char *key, bool allow_partial)
{
	size_t len = strlen(key);
	if (len > STORE_MAX_KEY || (len == 0 && !allow_partial))
		return false;
	if (key[0] == '/')
		return false;
	const char *component = key;
	for (;;) {
		const char *slash = strchr(component, '/');
		size_t clen = slash ? (size_t)(slash - component) : strlen(component);
		bool last = slash == NULL;
		/* The last component of a prefix may be empty ("chunks/") or
		 * partial; every other one must be a real name. */
		if (clen == 0 && !(last && allow_partial))
			return false;
		/* A partial last component of a prefix ("." or ".." too) only
		 * filters names; it is never used as a path. */
		bool partial = last && allow_partial;
		if (!partial && ((clen == 1 && component[0] == '.') || (clen == 2 && memcmp(component, "..", 2) == 0)))
			return false;
		/* Keys never name a temporary object: a listing hides them. */
		size_t tmp_len = sizeof(STORE_TMP_PREFIX) - 1;
		if (clen >= tmp_len && memcmp(component, STORE_TMP_PREFIX, tmp_len) == 0)
			return false;
		for (size_t i = 0; i < clen; i++)
			if ((unsigned char)component[i] < 0x20 || component[i] == 0x7f)
				return false;
		if (last)
			return true;
		component = slash + 1;
	}
}

/* The scheme of |uri| ("http" for "http://..."), copied into |out| (|cap|
 * bytes).  Returns true if |uri| has one, false for a plain path. */
static bool uri_scheme(const char *uri, char *out, size_t cap)
{
	const char *sep = strstr(uri, "://");
	if (!sep)
		return false;
	size_t len = (size_t)(sep - uri);
	if (len >= cap)
		len = cap - 1;
	for (size_t i = 0; i < len; i++)
		out[i] = (char)(uri[i] >= 'A' && uri[i] <= 'Z' ? uri[i] - 'A' + 'a' : uri[i]);
	out[len] = 0;
	return true;
}

static const struct store_ops *backend_for(const char *uri)
{
	char scheme[16];
	if (!uri_scheme(uri, scheme, sizeof(scheme)))
		return &store_file_ops;
	for (size_t b = 0; b < sizeof(store_backends) / sizeof(store_backends[0]); b++)
		for (const char *const *s = store_backends[b]->schemes; *s; s++)
			if (strcmp(*s, scheme) == 0)
				return store_backends[b];
	return NULL;
}

int store_open(const char *uri, const struct store_options *opt, struct store **out)
{
	*out = NULL;
	if (!uri || !*uri) {
		log_err("open store: empty URI (expected file:///dir, a path, http://host:port/prefix or s3://bucket/prefix)");
		return -EINVAL;
	}
	const struct store_ops *ops = backend_for(uri);
	if (!ops) {
		log_err("open store %s: unknown scheme (expected file://, http://, https:// or s3://)", uri);
		return -EINVAL;
	}
	struct store_options o = { 0 };
	if (opt)
		o = *opt;
	if (o.parallel == 0)
		o.parallel = STORE_DEFAULT_PARALLEL;
	if (o.parallel > STORE_MAX_PARALLEL)
		o.parallel = STORE_MAX_PARALLEL;
	if (o.timeout_ms == 0)
		o.timeout_ms = STORE_DEFAULT_TIMEOUT_MS;

	struct store *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->ops = ops;
	int r = ops->open(uri, &o, &s->state, &s->description);
	if (r < 0) {
		free(s);
		return r;
	}
	*out = s;
	return 0;
}

void store_free(struct store *s)
{
	if (!s)
		return;
	s->ops->close(s->state);
	free(s->description);
	free(s);
}

const char *store_describe(const struct store *s) { return s ? s->description : "(no store)"; }

/* Log and refuse a key the backends must never see. */
static int check_key(const struct store *s, const char *op, const char *key)
{
	if (key && store_key_valid(key, false))
		return 0;
	log_err("%s in %s: invalid key \"%.80s\" (keys are 1-%d bytes of relative path without empty, '.', '..' or "
		"'" STORE_TMP_PREFIX "' components)",
		op, s->description, key ? key : "(null)", STORE_MAX_KEY);
	return -EINVAL;
}

int store_get(struct store *s, const char *key, size_t max_len, uint8_t **out, size_t *out_len)
{
	if (!s || !out || !out_len)
		return -EINVAL;
	*out = NULL;
	*out_len = 0;
	int r = check_key(s, "get", key);
	return r < 0 ? r : s->ops->get(s->state, key, max_len, out, out_len);
}

int store_put(struct store *s, const char *key, const void *buf, size_t len)
{
	if (!s || (!buf && len))
		return -EINVAL;
	int r = check_key(s, "put", key);
	return r < 0 ? r : s->ops->put(s->state, key, buf ? buf : "", len);
}

int store_exists_batch(struct store *s, const char *const *keys, size_t n, bool *out_exists)
{
	if (!s || (n && (!keys || !out_exists)))
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		out_exists[i] = false;
		int r = check_key(s, "exists", keys[i]);
		if (r < 0)
			return r;
	}
	return n ? s->ops->exists_batch(s->state, keys, n, out_exists) : 0;
}

int store_put_batch(struct store *s, const char *const *keys, const void *const *bufs, const size_t *lens, size_t n)
{
	if (!s || (n && (!keys || !bufs || !lens)))
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		int r = check_key(s, "put", keys[i]);
		if (r < 0)
			return r;
		if (!bufs[i] && lens[i])
			return -EINVAL;
	}
	if (n == 0)
		return 0;
	if (s->ops->put_batch)
		return s->ops->put_batch(s->state, keys, bufs, lens, n);
	for (size_t i = 0; i < n; i++) {
		int r = s->ops->put(s->state, keys[i], bufs[i] ? bufs[i] : "", lens[i]);
		if (r < 0)
			return r;
	}
	return 0;
}

int store_delete(struct store *s, const char *key)
{
	if (!s)
		return -EINVAL;
	int r = check_key(s, "delete", key);
	return r < 0 ? r : s->ops->del(s->state, key);
}

int store_list(struct store *s, const char *prefix, store_list_cb cb, void *arg)
{
	if (!s || !cb)
		return -EINVAL;
	if (!prefix)
		prefix = "";
	if (!store_key_valid(prefix, true)) {
		log_err("list %s: invalid prefix \"%.80s\"", s->description, prefix);
		return -EINVAL;
	}
	return s->ops->list(s->state, prefix, cb, arg);
}

int store_age(struct store *s, const char *key, double *out_seconds)
{
	if (!s || !out_seconds)
		return -EINVAL;
	int r = check_key(s, "age", key);
	return r < 0 ? r : s->ops->age(s->state, key, out_seconds);
}
