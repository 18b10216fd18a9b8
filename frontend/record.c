/* frontend: function records (one JSON document per function) and what the
 * host agent is told about a function version.
 *
 * A record:
 *   {"Latest": CONFIG, "Versions": {"1": CONFIG, ...}, "NextVersion": 2,
 *    "ReservedConcurrency": N (absent: none), "Provisioned": {"1": N}}
 * CONFIG holds the keys Lambda's FunctionConfiguration has, as they are
 * answered, plus private ones starting with "_" (_ImageUri, _ImageDigest,
 * _PendingImageUri, _ImportToken) that are never answered. */
#include "frontend/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define VERSION_KEY "_StoreVersion"

int fe_record_load(struct frontend *fe, const char *name, json_t **out)
{
	char *text = NULL;
	size_t len = 0;
	int64_t version = 0;
	int r = fe->ops->get_versioned ? fe->ops->get_versioned(fe->state, name, &text, &len, &version)
				       : fe->ops->get(fe->state, name, &text, &len);
	if (r < 0) {
		if (r != -ENOENT && r != -ENOTCONN) /* etcd logs its outages once */
			log_err("read the record of function %s: %s", name, strerror(-r));
		return r;
	}
	json_error_t jerr;
	json_t *j = json_loadb(text, len, 0, &jerr);
	free(text);
	if (!json_is_object(j) || !json_is_object(json_object_get(j, "Latest"))) {
		log_err("the record of function %s is corrupt (%s); delete the function and create it again", name,
			j ? "not a function record" : jerr.text);
		json_decref(j);
		return -EBADMSG;
	}
	if (fe->ops->get_versioned)
		json_object_set_new(j, VERSION_KEY, json_integer(version));
	*out = j;
	return 0;
}

int fe_record_save(struct frontend *fe, const char *name, json_t *rec)
{
	json_t *v = json_object_get(rec, VERSION_KEY);
	int64_t version = json_is_integer(v) ? (int64_t)json_integer_value(v) : 0;
	json_object_del(rec, VERSION_KEY);
	char *s = json_dumps(rec, JSON_COMPACT | JSON_SORT_KEYS);
	if (!s)
		return -ENOMEM;
	int r = fe->ops->put_if ? fe->ops->put_if(fe->state, name, s, strlen(s), version)
				: fe->ops->put(fe->state, name, s, strlen(s));
	free(s);
	if (r == 0)
		fe_cache_set(fe, name, rec);
	else if (r == -EAGAIN)
		log_info("the record of function %s changed during an update (another frontend); redoing it", name);
	return r;
}

int fe_record_delete(struct frontend *fe, const char *name)
{
	int r = fe->ops->del(fe->state, name);
	if (r == 0 || r == -ENOENT)
		fe_cache_set(fe, name, NULL);
	return r;
}

json_t *fe_record_version(json_t *rec, const char *qualifier)
{
	if (!qualifier || !*qualifier || strcmp(qualifier, "$LATEST") == 0)
		return json_object_get(rec, "Latest");
	return json_object_get(json_object_get(rec, "Versions"), qualifier);
}

json_t *fe_config_public(const json_t *cfg)
{
	json_t *out = json_object();
	const char *k;
	json_t *v;
	json_object_foreach((json_t *)cfg, k, v)
	{
		if (k[0] != '_')
			json_object_set(out, k, v);
	}
	const char *apply = json_string_value(json_object_get(cfg, "_SnapStartApplyOn"));
	const char *version = json_string_value(json_object_get(cfg, "Version"));
	bool on = apply && strcmp(apply, "PublishedVersions") == 0 && version && strcmp(version, "$LATEST") != 0;
	json_object_set_new(out, "SnapStart", json_pack("{s:s,s:s}", "ApplyOn", apply ? apply : "None",
							"OptimizationStatus", on ? "On" : "Off"));
	return out;
}

/* A NULL-terminated copy of the JSON array of strings |a|, or NULL if |a|
 * is absent or empty. */
static char **strv_from_json(const json_t *a)
{
	if (!json_is_array(a) || json_array_size(a) == 0)
		return NULL;
	size_t n = json_array_size(a);
	char **v = calloc(n + 1, sizeof(char *));
	for (size_t i = 0; v && i < n; i++) {
		const char *s = json_string_value(json_array_get(a, i));
		if (!(v[i] = strdup(s ? s : ""))) {
			strv_free(v);
			return NULL;
		}
	}
	return v;
}

int fe_fnspec_init(struct frontend *fe, const char *name, const json_t *cfg, struct fe_fnspec *spec)
{
	memset(spec, 0, sizeof(*spec));
	struct hostagent_function *f = &spec->fn;
	f->name = name;
	f->version = json_string_value(json_object_get(cfg, "Version"));
	if (!f->version)
		f->version = "$LATEST";
	spec->arn = fe_function_arn(fe, name, f->version);
	f->arn = spec->arn;
	f->image_digest = json_string_value(json_object_get(cfg, "_ImageDigest"));
	f->revision_id = json_string_value(json_object_get(cfg, "RevisionId"));
	f->memory_mb = (uint32_t)json_integer_value(json_object_get(cfg, "MemorySize"));
	f->timeout_s = (uint32_t)json_integer_value(json_object_get(cfg, "Timeout"));
	f->mode = HOSTAGENT_MODE_RUNTIME_API;
	json_t *vars = json_object_get(json_object_get(cfg, "Environment"), "Variables");
	size_t nv = json_object_size(vars), i = 0;
	spec->env = calloc(nv + 1, sizeof(char *));
	if (!spec->arn || !spec->env) {
		fe_fnspec_cleanup(spec);
		return -ENOMEM;
	}
	const char *k;
	json_t *v;
	json_object_foreach(vars, k, v)
	{
		const char *s = json_string_value(v);
		if (strcmp(k, "KINDLING_INVOKE_MODE") == 0 && s && strcmp(s, "stdio") == 0)
			f->mode = HOSTAGENT_MODE_STDIO;
		if (!(spec->env[i++] = xasprintf("%s=%s", k, s ? s : ""))) {
			fe_fnspec_cleanup(spec);
			return -ENOMEM;
		}
	}
	f->env = spec->env;
	json_t *ic = json_object_get(json_object_get(cfg, "ImageConfigResponse"), "ImageConfig");
	spec->entrypoint = strv_from_json(json_object_get(ic, "EntryPoint"));
	spec->command = strv_from_json(json_object_get(ic, "Command"));
	f->entrypoint = spec->entrypoint;
	f->command = spec->command;
	f->working_dir = json_string_value(json_object_get(ic, "WorkingDirectory"));
	f->snapshot = json_string_value(json_object_get(cfg, "_SnapshotDigest"));
	if (f->working_dir && !*f->working_dir)
		f->working_dir = NULL;
	if (!f->image_digest || !f->revision_id) {
		fe_fnspec_cleanup(spec);
		return -EINVAL;
	}
	return 0;
}

void fe_fnspec_cleanup(struct fe_fnspec *spec)
{
	free(spec->arn);
	strv_free(spec->env);
	strv_free(spec->entrypoint);
	strv_free(spec->command);
	memset(spec, 0, sizeof(*spec));
}

int fe_record_publish(struct frontend *fe, const char *name, json_t *rec, const char *description, json_t **out)
{
	json_t *latest = json_object_get(rec, "Latest");
	json_t *versions = json_object_get(rec, "Versions");
	if (!json_is_object(versions)) {
		versions = json_object();
		json_object_set_new(rec, "Versions", versions);
	}
	/* Nothing changed since the last version: that version. */
	const char *rev = json_string_value(json_object_get(latest, "RevisionId"));
	json_int_t last = json_integer_value(json_object_get(rec, "NextVersion")) - 1;
	if (last >= 1) {
		char key[24];
		snprintf(key, sizeof(key), "%lld", (long long)last);
		json_t *v = json_object_get(versions, key);
		const char *from = json_string_value(json_object_get(v, "_FromRevision"));
		if (v && rev && from && strcmp(rev, from) == 0) {
			*out = v;
			return 0;
		}
	}
	json_int_t n = last >= 1 ? last + 1 : 1;
	char key[24];
	snprintf(key, sizeof(key), "%lld", (long long)n);
	json_t *v = json_deep_copy(latest);
	if (!v)
		return -ENOMEM;
	char *arn = fe_function_arn(fe, name, key);
	json_object_set_new(v, "Version", json_string(key));
	json_object_set_new(v, "FunctionArn", json_string(arn ? arn : ""));
	json_object_set_new(v, "_FromRevision", json_string(rev ? rev : ""));
	free(arn);
	if (description)
		json_object_set_new(v, "Description", json_string(description));
	const char *apply = json_string_value(json_object_get(v, "_SnapStartApplyOn"));
	if (apply && strcmp(apply, "PublishedVersions") == 0) {
		char token[37];
		fe_uuid(token);
		json_object_set_new(v, "State", json_string("Pending"));
		json_object_set_new(v, "StateReason", json_string("The function is being created."));
		json_object_set_new(v, "StateReasonCode", json_string("Creating"));
		json_object_set_new(v, "_SnapshotToken", json_string(token));
	}
	json_object_set_new(versions, key, v);
	json_object_set_new(rec, "NextVersion", json_integer(n + 1));
	*out = v;
	return 0;
}
