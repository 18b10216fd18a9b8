/* frontend: the etcd backend for function records: kindling/functions/NAME
 * (placement/README.md), versioned by the key's mod_revision, so that two
 * frontends changing one record never lose an update (put_if is a txn
 * comparing it). */
#include "frontend/internal.h"

#include "common/etcd.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define FUNCTIONS_PREFIX "kindling/functions/"

struct state_etcd {
	struct etcd *e;
};

int frontend_state_etcd_open(struct etcd *e, void **out)
{
	struct state_etcd *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->e = e;
	*out = s;
	return 0;
}

void frontend_state_etcd_close(void *state)
{
	free(state);
}

static char *record_key(const char *name)
{
	if (!frontend_valid_function_name(name)) {
		errno = EINVAL;
		return NULL;
	}
	char *k = xasprintf(FUNCTIONS_PREFIX "%s", name);
	if (!k)
		errno = ENOMEM;
	return k;
}

static int se_get_versioned(void *arg, const char *name, char **out, size_t *out_len, int64_t *version)
{
	struct state_etcd *s = arg;
	char *key = record_key(name);
	if (!key)
		return -errno;
	struct etcd_kv kv = { 0 };
	int r = etcd_get(s->e, key, &kv);
	free(key);
	if (r < 0)
		return r;
	*out = (char *)kv.value; /* NUL-terminated */
	*out_len = kv.value_len;
	*version = kv.mod_revision;
	kv.value = NULL;
	etcd_kv_cleanup(&kv);
	return 0;
}

static int se_get(void *arg, const char *name, char **out, size_t *out_len)
{
	int64_t version;
	return se_get_versioned(arg, name, out, out_len, &version);
}

static int se_put_if(void *arg, const char *name, const char *data, size_t len, int64_t version)
{
	struct state_etcd *s = arg;
	char *key = record_key(name);
	if (!key)
		return -errno;
	struct etcd_cmp cmp = { .key = key, .target = ETCD_CMP_MOD_REVISION, .op = ETCD_EQUAL, .number = version };
	struct etcd_op put = { .type = ETCD_OP_PUT, .key = key, .value = data, .value_len = len };
	bool ok = false;
	int r = etcd_txn(s->e, &cmp, 1, &put, 1, NULL, 0, &ok, NULL);
	if (r < 0)
		log_err("write the record of function %s to etcd (%s): %s", name, key, strerror(-r));
	free(key);
	return r < 0 ? r : ok ? 0 : -EAGAIN;
}

static int se_put(void *arg, const char *name, const char *data, size_t len)
{
	struct state_etcd *s = arg;
	char *key = record_key(name);
	if (!key)
		return -errno;
	int r = etcd_put(s->e, key, data, len, 0, NULL);
	if (r < 0)
		log_err("write the record of function %s to etcd (%s): %s", name, key, strerror(-r));
	free(key);
	return r;
}

static int se_del(void *arg, const char *name)
{
	struct state_etcd *s = arg;
	char *key = record_key(name);
	if (!key)
		return -errno;
	int64_t n = 0;
	int r = etcd_delete(s->e, key, false, &n);
	free(key);
	return r < 0 ? r : n ? 0 : -ENOENT;
}

static int se_list(void *arg, const char *after, size_t max, struct str_list *out)
{
	struct state_etcd *s = arg;
	char *from = after ? xasprintf(FUNCTIONS_PREFIX "%s", after) : NULL;
	if (after && !from)
		return -ENOMEM;
	struct etcd_kvs kvs = { 0 };
	int r = etcd_range_prefix(s->e, FUNCTIONS_PREFIX, from, max == SIZE_MAX ? 0 : max, &kvs);
	free(from);
	for (size_t i = 0; r == 0 && i < kvs.n; i++) {
		const char *name = kvs.kvs[i].key + strlen(FUNCTIONS_PREFIX);
		if (frontend_valid_function_name(name))
			r = str_list_add(out, name);
	}
	etcd_kvs_cleanup(&kvs);
	return r;
}

const struct frontend_state_ops frontend_state_etcd_ops = {
	.get = se_get,
	.put = se_put,
	.del = se_del,
	.list = se_list,
	.get_versioned = se_get_versioned,
	.put_if = se_put_if,
};
