/* The agent's HTTP API as both ends see it: the function spec as JSON, the
 * bodies of provision and drain, and the mapping between the agent's errors
 * and HTTP statuses.  Everything that arrives here is untrusted (a frontend,
 * or anything that can reach the agent's port): each field is checked for
 * its type and range, and a refusal names the field. */
#include "placement/hostagent/internal.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The most entries an env, entrypoint or command array may have, and the
 * longest element (Lambda's whole environment is 4 KB). */
#define WIRE_MAX_ARGS 256u
#define WIRE_MAX_ARG 4096u

static int fail(char *err, size_t err_len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t err_len, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, err_len, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

bool ha_wire_name_ok(const char *s)
{
	size_t max = HA_NAME_MAX;
	size_t n = s ? strlen(s) : 0;
	if (n == 0 || n > max)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') ||
		      s[i] == '-' || s[i] == '_'))
			return false;
	return true;
}

bool ha_wire_store_name_ok(const char *s)
{
	size_t n = s ? strlen(s) : 0;
	if (n == 0 || n > HA_STORE_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
			return false;
	return true;
}

bool ha_token_ok(const char *s, size_t max, bool empty_ok)
{
	size_t n = s ? strlen(s) : 0;
	if ((n == 0 && !empty_ok) || n > max)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f || s[i] == '/')
			return false;
	return true;
}

/* The string member |key| of |o|: 0 with |*out| (NULL if absent and not
 * |required|), or -EINVAL.  A string holding NUL is refused (it would be cut
 * short as a C string). */
static int get_str(json_t *o, const char *key, bool required, const char **out, char *err, size_t err_len)
{
	json_t *v = json_object_get(o, key);
	*out = NULL;
	if (!v || json_is_null(v)) {
		if (required)
			return fail(err, err_len, "%s is missing", key);
		return 0;
	}
	if (!json_is_string(v))
		return fail(err, err_len, "%s must be a string", key);
	if (strlen(json_string_value(v)) != json_string_length(v))
		return fail(err, err_len, "%s holds a NUL byte", key);
	*out = json_string_value(v);
	return 0;
}

static int get_uint(json_t *o, const char *key, uint32_t lo, uint32_t hi, uint32_t *out, char *err, size_t err_len)
{
	json_t *v = json_object_get(o, key);
	if (!v)
		return fail(err, err_len, "%s is missing", key);
	if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
		return fail(err, err_len, "%s must be an integer from %u to %u", key, lo, hi);
	*out = (uint32_t)json_integer_value(v);
	return 0;
}

/* The array of strings |key| as a NULL-terminated vector pointing into
 * |o| (NULL if absent).  |kv|: each must be "K=V" with a non-empty K. */
static int get_strv(json_t *o, const char *key, bool kv, char ***out, char *err, size_t err_len)
{
	json_t *v = json_object_get(o, key);
	*out = NULL;
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_array(v) || json_array_size(v) > WIRE_MAX_ARGS)
		return fail(err, err_len, "%s must be an array of at most %u strings", key, WIRE_MAX_ARGS);
	size_t n = json_array_size(v);
	char **vec = calloc(n + 1, sizeof(*vec));
	if (!vec)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		json_t *e = json_array_get(v, i);
		const char *s = json_string_value(e);
		if (!s || strlen(s) != json_string_length(e) || json_string_length(e) > WIRE_MAX_ARG) {
			free(vec);
			return fail(err, err_len, "%s[%zu] must be a string of at most %u bytes without NUL", key, i,
				    WIRE_MAX_ARG);
		}
		if (kv && (s[0] == '=' || !strchr(s, '='))) {
			free(vec);
			return fail(err, err_len, "%s[%zu] must be KEY=VALUE", key, i);
		}
		vec[i] = (char *)s;
	}
	*out = vec;
	return 0;
}

static int function_from(json_t *o, struct ha_wire_function *w, char *err, size_t err_len)
{
	struct hostagent_function *f = &w->f;
	if (!json_is_object(o))
		return fail(err, err_len, "the function must be a JSON object");
	const char *mode = NULL;
	int r;
	if ((r = get_str(o, "name", true, &f->name, err, err_len)) < 0 ||
	    (r = get_str(o, "version", true, &f->version, err, err_len)) < 0 ||
	    (r = get_str(o, "image", true, &f->image_digest, err, err_len)) < 0 ||
	    (r = get_str(o, "revision", false, &f->revision_id, err, err_len)) < 0 ||
	    (r = get_str(o, "arn", false, &f->arn, err, err_len)) < 0 ||
	    (r = get_str(o, "working_dir", false, &f->working_dir, err, err_len)) < 0 ||
	    (r = get_str(o, "mode", false, &mode, err, err_len)) < 0 ||
	    (r = get_str(o, "snapshot", false, &f->snapshot, err, err_len)) < 0)
		return r;
	if (!ha_wire_name_ok(f->name))
		return fail(err, err_len, "name must be 1 to %d letters, digits, '-' or '_'", HA_NAME_MAX);
	if (!ha_token_ok(f->version, 64, false))
		return fail(err, err_len, "version must be 1 to 64 printable characters without '/'");
	if (!is_sha256_hex(f->image_digest))
		return fail(err, err_len, "image must be a manifest digest of 64 lower-case hex digits");
	if (f->revision_id && !ha_token_ok(f->revision_id, 128, true))
		return fail(err, err_len, "revision must be at most 128 printable characters without '/'");
	if (f->arn && (!*f->arn || strlen(f->arn) > 256))
		return fail(err, err_len, "arn must be 1 to 256 printable characters");
	for (const char *p = f->arn; p && *p; p++)
		if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
			return fail(err, err_len, "arn must be 1 to 256 printable characters");
	if (f->working_dir && (f->working_dir[0] != '/' || strlen(f->working_dir) > 1024))
		return fail(err, err_len, "working_dir must be an absolute path of at most 1024 bytes");
	if (f->snapshot && !ha_wire_store_name_ok(f->snapshot))
		return fail(err, err_len, "snapshot must be a manifest digest or NAME[:TAG] of 1 to %u printable "
			    "characters", HA_STORE_NAME_MAX);
	if (!mode || strcmp(mode, "api") == 0)
		f->mode = HOSTAGENT_MODE_RUNTIME_API;
	else if (strcmp(mode, "stdio") == 0)
		f->mode = HOSTAGENT_MODE_STDIO;
	else
		return fail(err, err_len, "mode must be \"api\" or \"stdio\"");
	/* Lambda's ranges: 128 MB to 10 GB, 1 s to 15 minutes. */
	if ((r = get_uint(o, "memory_mb", 128, 10240, &f->memory_mb, err, err_len)) < 0 ||
	    (r = get_uint(o, "timeout_s", 1, 900, &f->timeout_s, err, err_len)) < 0)
		return r;
	if ((r = get_strv(o, "env", true, &w->env, err, err_len)) < 0 ||
	    (r = get_strv(o, "entrypoint", false, &w->entrypoint, err, err_len)) < 0 ||
	    (r = get_strv(o, "command", false, &w->command, err, err_len)) < 0)
		return r;
	f->env = w->env;
	f->entrypoint = w->entrypoint;
	f->command = w->command;
	return 0;
}

int ha_wire_function_parse(const char *json, struct ha_wire_function *out, char *err, size_t err_len)
{
	memset(out, 0, sizeof(*out));
	if (!json)
		return fail(err, err_len, "the function (%s) is missing", HA_H_FUNCTION);
	json_error_t je;
	json_t *root = json_loads(json, JSON_REJECT_DUPLICATES, &je);
	if (!root)
		return fail(err, err_len, "the function is not JSON: %s", je.text);
	out->root = root;
	return function_from(root, out, err, err_len);
}

void ha_wire_function_cleanup(struct ha_wire_function *w)
{
	if (!w)
		return;
	free(w->env);
	free(w->entrypoint);
	free(w->command);
	json_decref(w->root);
	memset(w, 0, sizeof(*w));
}

static json_t *strv_json(char *const *v)
{
	json_t *a = json_array();
	for (size_t i = 0; a && v && v[i]; i++)
		if (json_array_append_new(a, json_string(v[i])) < 0) {
			json_decref(a);
			return NULL;
		}
	return a;
}

char *ha_wire_function_json(const struct hostagent_function *f)
{
	json_t *o = json_pack("{s:s?,s:s?,s:s?,s:s?,s:s?,s:I,s:I,s:s}", "name", f->name, "version", f->version, "image",
			      f->image_digest, "revision", f->revision_id, "arn", f->arn, "memory_mb",
			      (json_int_t)f->memory_mb, "timeout_s", (json_int_t)f->timeout_s, "mode",
			      f->mode == HOSTAGENT_MODE_STDIO ? "stdio" : "api");
	if (!o)
		return NULL;
	bool ok = true;
	if (f->working_dir)
		ok = json_object_set_new(o, "working_dir", json_string(f->working_dir)) == 0;
	if (ok && f->snapshot)
		ok = json_object_set_new(o, "snapshot", json_string(f->snapshot)) == 0;
	if (ok && f->env)
		ok = json_object_set_new(o, "env", strv_json(f->env)) == 0;
	if (ok && f->entrypoint)
		ok = json_object_set_new(o, "entrypoint", strv_json(f->entrypoint)) == 0;
	if (ok && f->command)
		ok = json_object_set_new(o, "command", strv_json(f->command)) == 0;
	char *s = ok ? json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
	json_decref(o);
	return s;
}

int ha_wire_provision_parse(const uint8_t *body, size_t len, struct ha_wire_function *fn, unsigned *n, char *err,
			    size_t err_len)
{
	memset(fn, 0, sizeof(*fn));
	json_error_t je;
	json_t *root = body ? json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &je) : NULL;
	if (!root)
		return fail(err, err_len, "the body is not JSON: %s", body ? je.text : "empty");
	fn->root = root;
	if (!json_is_object(root))
		return fail(err, err_len, "the body must be a JSON object {\"function\", \"n\"}");
	json_t *jn = json_object_get(root, "n");
	if (!json_is_integer(jn) || json_integer_value(jn) < 0 || json_integer_value(jn) > 10000)
		return fail(err, err_len, "n must be an integer from 0 to 10000");
	*n = (unsigned)json_integer_value(jn);
	json_t *jf = json_object_get(root, "function");
	if (!jf)
		return fail(err, err_len, "function is missing");
	return function_from(jf, fn, err, err_len);
}

int ha_wire_drain_parse(const uint8_t *body, size_t len, void **root, const char **name, const char **version,
			const char **keep_revision, char *err, size_t err_len)
{
	json_error_t je;
	json_t *o = body ? json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &je) : NULL;
	*root = o;
	if (!o)
		return fail(err, err_len, "the body is not JSON: %s", body ? je.text : "empty");
	if (!json_is_object(o))
		return fail(err, err_len, "the body must be a JSON object {\"name\", \"version\", \"keep_revision\"}");
	int r;
	if ((r = get_str(o, "name", true, name, err, err_len)) < 0 ||
	    (r = get_str(o, "version", false, version, err, err_len)) < 0 ||
	    (r = get_str(o, "keep_revision", false, keep_revision, err, err_len)) < 0)
		return r;
	if (!ha_wire_name_ok(*name))
		return fail(err, err_len, "name must be 1 to %d letters, digits, '-' or '_'", HA_NAME_MAX);
	if (*version && !ha_token_ok(*version, 64, false))
		return fail(err, err_len, "version must be 1 to 64 printable characters without '/'");
	if (*keep_revision && !ha_token_ok(*keep_revision, 128, true))
		return fail(err, err_len, "keep_revision must be at most 128 printable characters without '/'");
	return 0;
}

/* Load |body| as a JSON object: 0 with |*root| (json_decref it in every
 * case), or -EINVAL naming what it should have been. */
static int load_object(const uint8_t *body, size_t len, const char *shape, json_t **root, char *err, size_t err_len)
{
	json_error_t je;
	*root = body ? json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &je) : NULL;
	if (!*root)
		return fail(err, err_len, "the body is not JSON: %s", body ? je.text : "empty");
	if (!json_is_object(*root))
		return fail(err, err_len, "the body must be a JSON object %s", shape);
	return 0;
}

int ha_wire_snapshot_parse(const uint8_t *body, size_t len, struct ha_wire_function *fn, const char **name, char *err,
			   size_t err_len)
{
	memset(fn, 0, sizeof(*fn));
	*name = NULL;
	json_t *root = NULL;
	int r = load_object(body, len, "{\"function\", \"name\"}", &root, err, err_len);
	fn->root = root;
	if (r < 0)
		return r;
	if ((r = get_str(root, "name", true, name, err, err_len)) < 0)
		return r;
	if (!ha_wire_store_name_ok(*name) || is_sha256_hex(*name))
		return fail(err, err_len, "name must be NAME[:TAG] of 1 to %u printable characters (where the "
			    "snapshot is stored)", HA_STORE_NAME_MAX);
	json_t *jf = json_object_get(root, "function");
	if (!jf)
		return fail(err, err_len, "function is missing");
	if ((r = function_from(jf, fn, err, err_len)) < 0)
		return r;
	if (fn->f.snapshot)
		return fail(err, err_len, "function.snapshot must be absent: the snapshot is taken from a boot");
	if (fn->f.mode != HOSTAGENT_MODE_RUNTIME_API)
		return fail(err, err_len, "function.mode must be \"api\": only a Runtime API function is snapshotted");
	return 0;
}

int ha_wire_snapshot_answer_parse(const uint8_t *body, size_t len, char digest[65], char *err, size_t err_len)
{
	digest[0] = '\0';
	json_t *root = NULL;
	int r = load_object(body, len, "{\"digest\"}", &root, err, err_len);
	const char *d = NULL;
	if (r == 0 && (r = get_str(root, "digest", true, &d, err, err_len)) == 0 && !is_sha256_hex(d))
		r = fail(err, err_len, "digest must be a manifest digest of 64 lower-case hex digits");
	if (r == 0)
		memcpy(digest, d, 65);
	json_decref(root);
	return r;
}

int ha_wire_info_parse(const uint8_t *body, size_t len, bool *snapshot, char *why, size_t why_len, char *err,
		       size_t err_len)
{
	*snapshot = false;
	if (why_len)
		why[0] = '\0';
	json_t *root = NULL;
	int r = load_object(body, len, "{\"isolation\", \"snapshot\", \"snapshot_why\"}", &root, err, err_len);
	const char *w = NULL;
	json_t *s = r == 0 ? json_object_get(root, "snapshot") : NULL;
	if (r == 0 && !json_is_boolean(s))
		r = fail(err, err_len, "snapshot must be true or false");
	if (r == 0)
		r = get_str(root, "snapshot_why", false, &w, err, err_len);
	if (r == 0) {
		*snapshot = json_is_true(s);
		if (!*snapshot && why_len)
			snprintf(why, why_len, "%s", w ? w : "the host agent cannot take snapshots");
	}
	json_decref(root);
	return r;
}

static const struct {
	int err;
	unsigned status;
	const char *marker;
} wire_errors[] = {
	{ -EINVAL, 400, "bad-request" },     { -ENOENT, 404, "not-found" },
	{ -EAGAIN, 409, "no-warm-sandbox" }, { -EBUSY, 429, "full" },
	{ -ESHUTDOWN, 503, "shutting-down" }, { -ENOTSUP, 501, "not-supported" },
	{ -ETIMEDOUT, 504, "timed-out" },    { -ECHILD, 422, "function-failed" },
	/* The last entry is what every other error maps to. */
	{ -EIO, 500, "agent-error" },
};

void ha_wire_status(int err, unsigned *status, const char **marker)
{
	size_t n = sizeof(wire_errors) / sizeof(wire_errors[0]);
	for (size_t i = 0; i < n; i++)
		if (wire_errors[i].err == err || i == n - 1) {
			*status = wire_errors[i].status;
			*marker = wire_errors[i].marker;
			return;
		}
}

int ha_wire_errno(const char *marker)
{
	for (size_t i = 0; marker && i < sizeof(wire_errors) / sizeof(wire_errors[0]); i++)
		if (strcmp(marker, wire_errors[i].marker) == 0)
			return wire_errors[i].err;
	return -EPROTO;
}

char *ha_wire_json_string(const char *value)
{
	if (!value)
		return NULL;
	json_t *v = json_loads(value, JSON_DECODE_ANY, NULL);
	char *s = json_is_string(v) ? strndup(json_string_value(v), json_string_length(v)) : NULL;
	json_decref(v);
	return s;
}
