/* frontend: authentication, routing and the control-plane calls of the
 * Lambda API, and the frontend's life cycle. */
#include "frontend/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define MAX_SEGMENTS 6

/* ---- request bodies ------------------------------------------------------------------------------------------------ */

/* The body as a JSON object (an empty body is {}), or NULL with |e| set. */
static json_t *body_object(const struct http_request *req, struct fe_error *e)
{
	if (req->body_len == 0)
		return json_object();
	json_error_t jerr;
	json_t *j = json_loadb((const char *)req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
	if (!j) {
		fe_set_error(e, 400, "InvalidRequestContentException",
			     "Could not parse request body into json: %s (line %d, column %d)", jerr.text, jerr.line,
			     jerr.column);
		return NULL;
	}
	if (!json_is_object(j)) {
		json_decref(j);
		fe_set_error(e, 400, "InvalidRequestContentException", "The request body must be a JSON object");
		return NULL;
	}
	return j;
}

/* Refuse a key of |j| not in |known| (NULL-terminated). */
static bool only_known(json_t *j, const char *const *known, const char *what, struct fe_error *e)
{
	const char *k;
	json_t *v;
	json_object_foreach(j, k, v)
	{
		size_t i = 0;
		while (known[i] && strcmp(known[i], k) != 0)
			i++;
		if (!known[i]) {
			fe_set_error(e, 400, "InvalidParameterValueException", "Unknown field '%.64s' in %s", k, what);
			return false;
		}
	}
	return true;
}

static bool get_int(json_t *j, const char *key, long lo, long hi, long *out, struct fe_error *e)
{
	json_t *v = json_object_get(j, key);
	if (!v)
		return true;
	if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
		fe_set_error(e, 400, "InvalidParameterValueException", "%s must be an integer from %ld to %ld", key, lo,
			     hi);
		return false;
	}
	*out = (long)json_integer_value(v);
	return true;
}

static bool get_str(json_t *j, const char *key, size_t max, const char **out, struct fe_error *e)
{
	json_t *v = json_object_get(j, key);
	if (!v)
		return true;
	if (!json_is_string(v) || json_string_length(v) > max) {
		fe_set_error(e, 400, "InvalidParameterValueException", "%s must be a string of at most %zu characters",
			     key, max);
		return false;
	}
	*out = json_string_value(v);
	return true;
}

static bool strv_ok(json_t *a)
{
	if (!json_is_array(a) || json_array_size(a) > 1500)
		return false;
	size_t i;
	json_t *v;
	json_array_foreach(a, i, v)
	{
		if (!json_is_string(v) || json_string_length(v) > 1024 || strlen(json_string_value(v)) != json_string_length(v))
			return false;
	}
	return true;
}

/* Check and apply Timeout, MemorySize, Description, Role, Environment and
 * ImageConfig of |body| to |cfg|. */
static bool apply_settings(json_t *body, json_t *cfg, struct fe_error *e)
{
	long v;
	const char *s;
	v = -1;
	if (!get_int(body, "Timeout", 1, 900, &v, e))
		return false;
	if (v >= 0)
		json_object_set_new(cfg, "Timeout", json_integer(v));
	v = -1;
	if (!get_int(body, "MemorySize", 128, 10240, &v, e))
		return false;
	if (v >= 0)
		json_object_set_new(cfg, "MemorySize", json_integer(v));
	s = NULL;
	if (!get_str(body, "Description", 256, &s, e))
		return false;
	if (s)
		json_object_set_new(cfg, "Description", json_string(s));
	s = NULL;
	if (!get_str(body, "Role", 2048, &s, e))
		return false;
	if (s)
		json_object_set_new(cfg, "Role", json_string(s));
	json_t *env = json_object_get(body, "Environment");
	if (env) {
		static const char *const known[] = { "Variables", NULL };
		if (!json_is_object(env) || !only_known(env, known, "Environment", e))
			return e->status ? false
					 : (fe_set_error(e, 400, "InvalidParameterValueException",
							 "Environment must be an object"),
					    false);
		json_t *vars = json_object_get(env, "Variables");
		if (!vars)
			vars = json_object();
		else
			json_incref(vars);
		if (!json_is_object(vars)) {
			json_decref(vars);
			fe_set_error(e, 400, "InvalidParameterValueException", "Environment.Variables must be an object");
			return false;
		}
		size_t total = 0;
		const char *k;
		json_t *val;
		json_object_foreach(vars, k, val)
		{
			bool key_ok = (k[0] >= 'a' && k[0] <= 'z') || (k[0] >= 'A' && k[0] <= 'Z');
			for (const char *c = k; key_ok && *c; c++)
				key_ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
					 *c == '_';
			if (!key_ok || strlen(k) > 128) {
				fe_set_error(e, 400, "InvalidParameterValueException",
					     "Environment variable name '%.64s' must start with a letter and hold only letters, digits and '_'",
					     k);
				json_decref(vars);
				return false;
			}
			if (!json_is_string(val) || strlen(json_string_value(val)) != json_string_length(val)) {
				fe_set_error(e, 400, "InvalidParameterValueException",
					     "The value of environment variable %.64s must be a string", k);
				json_decref(vars);
				return false;
			}
			if (hostagent_env_is_reserved(k)) {
				fe_set_error(e, 400, "InvalidParameterValueException",
					     "Lambda was unable to configure your environment variables because the environment variables you have provided contains reserved keys that are currently not supported for modification. Reserved keys used in this request: %.64s",
					     k);
				json_decref(vars);
				return false;
			}
			total += strlen(k) + json_string_length(val);
		}
		if (total > 4096) {
			fe_set_error(e, 400, "InvalidParameterValueException",
				     "Lambda was unable to configure your environment variables because the environment variables you have provided exceeded the 4KB limit.");
			json_decref(vars);
			return false;
		}
		json_object_set_new(cfg, "Environment", json_pack("{s:o}", "Variables", vars));
	}
	json_t *ic = json_object_get(body, "ImageConfig");
	if (ic) {
		static const char *const known[] = { "EntryPoint", "Command", "WorkingDirectory", NULL };
		if (!json_is_object(ic)) {
			fe_set_error(e, 400, "InvalidParameterValueException", "ImageConfig must be an object");
			return false;
		}
		if (!only_known(ic, known, "ImageConfig", e))
			return false;
		json_t *ep = json_object_get(ic, "EntryPoint"), *cmd = json_object_get(ic, "Command");
		json_t *wd = json_object_get(ic, "WorkingDirectory");
		if ((ep && !strv_ok(ep)) || (cmd && !strv_ok(cmd))) {
			fe_set_error(e, 400, "InvalidParameterValueException",
				     "ImageConfig.EntryPoint and .Command must be lists of at most 1500 strings");
			return false;
		}
		if (wd && (!json_is_string(wd) || json_string_length(wd) > 1000 ||
			   (json_string_length(wd) && json_string_value(wd)[0] != '/'))) {
			fe_set_error(e, 400, "InvalidParameterValueException",
				     "ImageConfig.WorkingDirectory must be an absolute path of at most 1000 characters");
			return false;
		}
		json_object_set_new(cfg, "ImageConfigResponse", json_pack("{s:O}", "ImageConfig", ic));
	}
	return true;
}

/* Check SnapStart of |body| ({"ApplyOn": "PublishedVersions" | "None"}):
 * true with |*apply| its ApplyOn (NULL when the body has no SnapStart;
 * points into |body|), or false with |e|.  PublishedVersions needs a host
 * agent whose sandboxes can be snapshotted, which a remote agent or a fleet
 * is asked over the network: call this without fe->lock held. */
static bool check_snapstart(struct frontend *fe, json_t *body, const char **apply_out, struct fe_error *e)
{
	*apply_out = NULL;
	json_t *ss = json_object_get(body, "SnapStart");
	if (!ss)
		return true;
	static const char *const known[] = { "ApplyOn", NULL };
	if (!json_is_object(ss)) {
		fe_set_error(e, 400, "InvalidParameterValueException",
			     "SnapStart must be an object: {\"ApplyOn\": \"PublishedVersions\" | \"None\"}");
		return false;
	}
	if (!only_known(ss, known, "SnapStart", e))
		return false;
	json_t *ao = json_object_get(ss, "ApplyOn");
	const char *apply = json_string_value(ao);
	if (!ao)
		apply = "None";
	if (!apply || (strcmp(apply, "PublishedVersions") != 0 && strcmp(apply, "None") != 0)) {
		char *shown = ao ? json_dumps(ao, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
		fe_set_error(e, 400, "InvalidParameterValueException",
			     "1 validation error detected: Value %.64s at 'snapStart.applyOn' failed to satisfy constraint: "
			     "Member must satisfy enum value set: [PublishedVersions, None]",
			     apply ? apply : shown ? shown : "null");
		free(shown);
		return false;
	}
	if (strcmp(apply, "PublishedVersions") == 0) {
		char why[256] = "the host agents kindling serve runs functions on cannot take snapshots: SnapStart "
				"needs agents with --isolation microvm";
		if (!fe->agent || !fe->agent->snapshot || !fe->agent->snapshot_supported ||
		    !fe->agent->snapshot_supported(fe->agent_arg, why, sizeof(why))) {
			fe_set_error(e, 400, "InvalidParameterValueException",
				     "SnapStart ApplyOn PublishedVersions is not supported here: %s", why);
			return false;
		}
	}
	*apply_out = apply;
	return true;
}

/* Record what check_snapstart accepted in |cfg| as _SnapStartApplyOn. */
static void record_snapstart(json_t *cfg, const char *apply)
{
	if (apply)
		json_object_set_new(cfg, "_SnapStartApplyOn", json_string(apply));
}

/* ImageUri: a source kindling imports or an image in the store. */
static bool image_uri_ok(const char *uri, struct fe_error *e)
{
	size_t n = strlen(uri);
	bool ok = n > 0 && n <= 1024;
	for (size_t i = 0; ok && i < n; i++)
		ok = (unsigned char)uri[i] > 0x20 && uri[i] != 0x7f;
	if (!ok)
		fe_set_error(e, 400, "InvalidParameterValueException",
			     "ImageUri must name docker://HOST/REPO:TAG, oci:DIR[:TAG], docker-archive:FILE or an image in the store (NAME:TAG or a digest)");
	return ok;
}

/* ---- the calls ------------------------------------------------------------------------------------------------------- */

struct call {
	struct frontend *fe;
	const struct http_request *req;
	struct http_response *resp;
	struct fe_error e;
	char name[65], qual[129];
	struct http_param *params;
	size_t n_params;
	bool conflict; /* a save lost a compare-and-swap: redo the call */
};

static const char *param(struct call *c, const char *name)
{
	return http_param_get(c->params, c->n_params, name);
}

/* Load the record of c->name (under fe->lock), 404 if none. */
static json_t *load(struct call *c)
{
	json_t *rec = NULL;
	int r = fe_record_load(c->fe, c->name, &rec);
	if (r == -ENOENT) {
		char *arn = fe_function_arn(c->fe, c->name, c->qual);
		fe_set_error(&c->e, 404, "ResourceNotFoundException", "Function not found: %s", arn ? arn : c->name);
		free(arn);
	} else if (r < 0) {
		fe_set_error(&c->e, 500, "ServiceException", "The record of function %s cannot be read (%s)", c->name,
			     strerror(-r));
	}
	return rec;
}

static bool save(struct call *c, json_t *rec)
{
	int r = fe_record_save(c->fe, c->name, rec);
	if (r == -EAGAIN)
		c->conflict = true;
	if (r == -EAGAIN)
		fe_set_error(&c->e, 409, "ResourceConflictException",
			     "The function %s was being changed by another request at the same time; try again.", c->name);
	else if (r < 0)
		fe_set_error(&c->e, 500, "ServiceException", "The record of function %s cannot be written (%s)", c->name,
			     strerror(-r));
	return r == 0;
}

static json_t *version_or_404(struct call *c, json_t *rec)
{
	json_t *cfg = fe_record_version(rec, c->qual);
	if (!cfg) {
		char *arn = fe_function_arn(c->fe, c->name, c->qual);
		fe_set_error(&c->e, 404, "ResourceNotFoundException", "Function not found: %s", arn ? arn : c->name);
		free(arn);
	}
	return cfg;
}

static bool update_in_progress(struct call *c, json_t *cfg)
{
	const char *st = json_string_value(json_object_get(cfg, "State"));
	const char *lus = json_string_value(json_object_get(cfg, "LastUpdateStatus"));
	if ((st && strcmp(st, "Pending") == 0) || (lus && strcmp(lus, "InProgress") == 0)) {
		char *arn = fe_function_arn(c->fe, c->name, NULL);
		fe_set_error(&c->e, 409, "ResourceConflictException",
			     "The operation cannot be performed at this time. An update is in progress for resource: %s",
			     arn ? arn : c->name);
		free(arn);
		return true;
	}
	return false;
}

static bool revision_matches(struct call *c, json_t *body, json_t *cfg)
{
	const char *want = json_string_value(json_object_get(body, "RevisionId"));
	const char *have = json_string_value(json_object_get(cfg, "RevisionId"));
	if (want && (!have || strcmp(want, have) != 0)) {
		fe_set_error(&c->e, 412, "PreconditionFailedException",
			     "The Revision Id provided does not match the latest Revision Id. Call the GetFunction/GetAlias API to retrieve the latest Revision Id");
		return false;
	}
	return true;
}

static void start_import(json_t *cfg, const char *uri, char token[37])
{
	fe_uuid(token);
	json_object_set_new(cfg, "_ImportToken", json_string(token));
	json_object_set_new(cfg, "_PendingImageUri", json_string(uri));
}

static void create_function(struct call *c)
{
	static const char *const known[] = { "FunctionName", "Role", "Code", "PackageType", "Description", "Timeout",
					     "MemorySize", "Environment", "ImageConfig", "Publish", "Architectures", "Tags",
					     "TracingConfig", "LoggingConfig", "EphemeralStorage", "VpcConfig",
					     "DeadLetterConfig", "KMSKeyArn", "Layers", "FileSystemConfigs",
					     "CodeSigningConfigArn", "SnapStart", "Runtime", "Handler", NULL };
	json_t *body = body_object(c->req, &c->e);
	if (!body || !only_known(body, known, "CreateFunction", &c->e)) {
		json_decref(body);
		return;
	}
	const char *fname = NULL, *pt = NULL, *uri = NULL;
	json_t *code = json_object_get(body, "Code");
	json_t *arch = json_object_get(body, "Architectures"), *layers = json_object_get(body, "Layers");
	if (!get_str(body, "FunctionName", 170, &fname, &c->e) || !get_str(body, "PackageType", 16, &pt, &c->e))
		goto out;
	if (!fname || frontend_parse_function_name(fname, c->name, sizeof(c->name), c->qual, sizeof(c->qual)) < 0 ||
	    *c->qual) {
		fe_set_error(&c->e, 400, "InvalidParameterValueException",
			     "FunctionName must be 1 to 64 letters, digits, '-' or '_' (or an unqualified ARN of one)");
		goto out;
	}
	if (json_object_get(body, "Runtime") || json_object_get(body, "Handler") || (pt && strcmp(pt, "Image") != 0)) {
		fe_set_error(&c->e, 400, "InvalidParameterValueException",
			     "kindling runs container images only: give PackageType Image and Code.ImageUri, without Runtime or Handler");
		goto out;
	}
	if (!json_is_object(code) || !json_is_string(json_object_get(code, "ImageUri")) || json_object_size(code) != 1) {
		fe_set_error(&c->e, 400, "InvalidParameterValueException",
			     "Code must be {\"ImageUri\": IMAGE} (zip files and S3 code are not supported)");
		goto out;
	}
	uri = json_string_value(json_object_get(code, "ImageUri"));
	if (!image_uri_ok(uri, &c->e))
		goto out;
	if (arch && (!json_is_array(arch) || json_array_size(arch) != 1 ||
		     !json_is_string(json_array_get(arch, 0)) ||
		     strcmp(json_string_value(json_array_get(arch, 0)), "x86_64") != 0)) {
		fe_set_error(&c->e, 400, "InvalidParameterValueException", "Architectures must be [\"x86_64\"]");
		goto out;
	}
	if (layers && (!json_is_array(layers) || json_array_size(layers) != 0)) {
		fe_set_error(&c->e, 400, "InvalidParameterValueException", "Layers are not supported for images");
		goto out;
	}
	json_t *publish = json_object_get(body, "Publish");
	if (publish && !json_is_boolean(publish)) {
		fe_set_error(&c->e, 400, "InvalidParameterValueException", "Publish must be true or false");
		goto out;
	}
	char ts[40], rev[37], token[37];
	fe_timestamp(ts);
	fe_uuid(rev);
	char *arn = fe_function_arn(c->fe, c->name, NULL);
	char *role = xasprintf("arn:aws:iam::%s:role/kindling-function", c->fe->account_id);
	json_t *cfg = json_pack("{s:s,s:s,s:s,s:i,s:s,s:i,s:i,s:s,s:s,s:s,s:s,s:[s],s:{s:i},s:{s:s},s:s,s:s,s:s,s:s}",
				"FunctionName", c->name, "FunctionArn", arn ? arn : "", "Role", role ? role : "",
				"CodeSize", 0, "Description", "", "Timeout", 3, "MemorySize", 128, "LastModified", ts,
				"CodeSha256", "", "Version", "$LATEST", "PackageType", "Image", "Architectures",
				"x86_64", "EphemeralStorage", "Size", 512, "TracingConfig", "Mode", "PassThrough",
				"RevisionId", rev, "State", "Pending", "StateReason", "The function is being created.",
				"StateReasonCode", "Creating");
	free(arn);
	free(role);
	const char *snap_apply = NULL;
	if (!cfg || !apply_settings(body, cfg, &c->e) || !check_snapstart(c->fe, body, &snap_apply, &c->e)) {
		if (!cfg)
			fe_set_error(&c->e, 500, "ServiceException", "out of memory");
		json_decref(cfg);
		goto out;
	}
	record_snapstart(cfg, snap_apply);
	start_import(cfg, uri, token);
	if (json_is_true(publish))
		json_object_set_new(cfg, "_PublishOnActive", json_true());
	pthread_mutex_lock(&c->fe->lock);
	json_t *old = NULL;
	int r = fe_record_load(c->fe, c->name, &old);
	json_decref(old);
	if (r == 0) {
		char *a = fe_function_arn(c->fe, c->name, NULL);
		fe_set_error(&c->e, 409, "ResourceConflictException", "Function already exist: %s", a ? a : c->name);
		free(a);
	} else if (r != -ENOENT) {
		fe_set_error(&c->e, 500, "ServiceException", "The record of function %s cannot be read", c->name);
	}
	json_t *rec = NULL;
	if (!c->e.status) {
		rec = json_pack("{s:O,s:{},s:i}", "Latest", cfg, "Versions", "NextVersion", 1);
		if (save(c, rec))
			fe_import_queue(c->fe, c->name, uri, token);
	}
	pthread_mutex_unlock(&c->fe->lock);
	if (!c->e.status) {
		log_info("function %s created from %s", c->name, uri);
		fe_answer_json(c->resp, 201, fe_config_public(cfg));
	}
	json_decref(rec);
	json_decref(cfg);
out:
	json_decref(body);
}

static json_t *code_of(const json_t *cfg)
{
	const char *uri = json_string_value(json_object_get(cfg, "_ImageUri"));
	const char *pend = json_string_value(json_object_get(cfg, "_PendingImageUri"));
	const char *dig = json_string_value(json_object_get(cfg, "_ImageDigest"));
	json_t *code = json_pack("{s:s}", "RepositoryType", "kindling");
	json_object_set_new(code, "ImageUri", json_string(uri ? uri : pend ? pend : ""));
	if (dig) {
		char *r = xasprintf("%s@sha256:%s", uri ? uri : "", dig);
		json_object_set_new(code, "ResolvedImageUri", json_string(r ? r : ""));
		free(r);
	}
	return code;
}

static void get_function(struct call *c, bool config_only)
{
	pthread_mutex_lock(&c->fe->lock);
	json_t *rec = load(c);
	pthread_mutex_unlock(&c->fe->lock);
	json_t *cfg = rec ? version_or_404(c, rec) : NULL;
	if (cfg) {
		json_t *pub = fe_config_public(cfg);
		if (config_only) {
			fe_answer_json(c->resp, 200, pub);
		} else {
			json_t *out = json_pack("{s:o,s:o,s:{}}", "Configuration", pub, "Code", code_of(cfg), "Tags");
			json_t *rc = json_object_get(rec, "ReservedConcurrency");
			if (json_is_integer(rc))
				json_object_set_new(out, "Concurrency",
						    json_pack("{s:O}", "ReservedConcurrentExecutions", rc));
			fe_answer_json(c->resp, 200, out);
		}
	}
	json_decref(rec);
}

static void list_functions(struct call *c, bool versions_of_one)
{
	long max = 50;
	const char *mi = param(c, "MaxItems"), *marker = param(c, "Marker");
	if (mi) {
		char *end;
		max = strtol(mi, &end, 10);
		if (!*mi || *end || max < 1 || max > 10000) {
			fe_set_error(&c->e, 400, "InvalidParameterValueException", "MaxItems must be from 1 to 10000");
			return;
		}
	}
	if (marker && *marker && !frontend_valid_function_name(marker) && !versions_of_one) {
		fe_set_error(&c->e, 400, "InvalidParameterValueException", "Invalid Marker");
		return;
	}
	json_t *list = json_array();
	if (versions_of_one) {
		pthread_mutex_lock(&c->fe->lock);
		json_t *rec = load(c);
		pthread_mutex_unlock(&c->fe->lock);
		if (!rec) {
			json_decref(list);
			return;
		}
		json_array_append_new(list, fe_config_public(json_object_get(rec, "Latest")));
		json_int_t next = json_integer_value(json_object_get(rec, "NextVersion"));
		for (json_int_t v = 1; v < next; v++) {
			char key[24];
			snprintf(key, sizeof(key), "%lld", (long long)v);
			json_t *cfg = json_object_get(json_object_get(rec, "Versions"), key);
			if (cfg)
				json_array_append_new(list, fe_config_public(cfg));
		}
		json_decref(rec);
		fe_answer_json(c->resp, 200, json_pack("{s:o}", "Versions", list));
		return;
	}
	bool all = param(c, "FunctionVersion") && strcmp(param(c, "FunctionVersion"), "ALL") == 0;
	struct str_list names = { 0 };
	pthread_mutex_lock(&c->fe->lock);
	int r = c->fe->ops->list(c->fe->state, marker && *marker ? marker : NULL, (size_t)max + 1, &names);
	for (size_t i = 0; r == 0 && i < names.n && i < (size_t)max; i++) {
		json_t *rec = NULL;
		if (fe_record_load(c->fe, names.items[i], &rec) < 0)
			continue;
		json_array_append_new(list, fe_config_public(json_object_get(rec, "Latest")));
		if (all) {
			const char *k;
			json_t *v;
			json_object_foreach(json_object_get(rec, "Versions"), k, v)
				json_array_append_new(list, fe_config_public(v));
		}
		json_decref(rec);
	}
	pthread_mutex_unlock(&c->fe->lock);
	if (r < 0) {
		fe_set_error(&c->e, 500, "ServiceException", "The function records cannot be listed (%s)", strerror(-r));
		json_decref(list);
	} else {
		json_t *out = json_pack("{s:o}", "Functions", list);
		if (names.n > (size_t)max)
			json_object_set_new(out, "NextMarker", json_string(names.items[max - 1]));
		fe_answer_json(c->resp, 200, out);
	}
	str_list_clear(&names);
}

static void delete_function(struct call *c)
{
	if (strcmp(c->qual, "$LATEST") == 0) {
		fe_set_error(&c->e, 400, "InvalidParameterValueException",
			     "$LATEST version cannot be deleted without deleting the function.");
		return;
	}
	pthread_mutex_lock(&c->fe->lock);
	json_t *rec = load(c);
	json_t *gone = json_array(); /* the versions whose SnapStart snapshots go */
	if (rec && *c->qual) {
		json_t *versions = json_object_get(rec, "Versions");
		if (json_object_get(json_object_get(versions, c->qual), "_SnapshotToken"))
			json_array_append_new(gone, json_string(c->qual));
		if (!json_object_get(versions, c->qual)) {
			version_or_404(c, rec);
		} else {
			json_object_del(versions, c->qual);
			json_object_del(json_object_get(rec, "Provisioned"), c->qual);
			save(c, rec);
		}
	} else if (rec) {
		const char *k;
		json_t *v;
		json_object_foreach(json_object_get(rec, "Versions"), k, v)
			if (json_object_get(v, "_SnapshotToken"))
				json_array_append_new(gone, json_string(k));
		int r = fe_record_delete(c->fe, c->name);
		if (r < 0)
			fe_set_error(&c->e, 500, "ServiceException", "The record of function %s cannot be deleted (%s)",
				     c->name, strerror(-r));
	}
	pthread_mutex_unlock(&c->fe->lock);
	json_decref(rec);
	if (c->e.status) {
		json_decref(gone);
		return;
	}
	if (c->fe->agent)
		c->fe->agent->drain(c->fe->agent_arg, c->name, *c->qual ? c->qual : NULL, NULL);
	size_t i;
	json_t *gv;
	json_array_foreach(gone, i, gv)
		fe_snapstart_forget(c->fe, c->name, json_string_value(gv));
	json_decref(gone);
	log_info("function %s%s%s deleted", c->name, *c->qual ? ":" : "", c->qual);
	c->resp->status = 204;
}

/* Drain the old sandboxes of $LATEST after a change to |cfg|. */
static void drain_latest(struct call *c, json_t *cfg)
{
	const char *rev = json_string_value(json_object_get(cfg, "RevisionId"));
	if (c->fe->agent && rev)
		c->fe->agent->drain(c->fe->agent_arg, c->name, "$LATEST", rev);
}

static void update_configuration(struct call *c)
{
	static const char *const known[] = { "Role", "Description", "Timeout", "MemorySize", "Environment",
					     "ImageConfig", "RevisionId", "TracingConfig", "LoggingConfig",
					     "EphemeralStorage", "VpcConfig", "DeadLetterConfig", "KMSKeyArn",
					     "Layers", "FileSystemConfigs", "SnapStart", NULL };
	if (*c->qual) {
		fe_set_error(&c->e, 400, "InvalidParameterValueException",
			     "Only $LATEST can be configured: published versions are immutable");
		return;
	}
	json_t *body = body_object(c->req, &c->e);
	if (!body || !only_known(body, known, "UpdateFunctionConfiguration", &c->e)) {
		json_decref(body);
		return;
	}
	const char *snap_apply = NULL;
	if (!check_snapstart(c->fe, body, &snap_apply, &c->e)) {
		json_decref(body);
		return;
	}
	pthread_mutex_lock(&c->fe->lock);
	json_t *rec = load(c);
	json_t *cfg = rec ? json_object_get(rec, "Latest") : NULL;
	if (cfg && !update_in_progress(c, cfg) && revision_matches(c, body, cfg) && apply_settings(body, cfg, &c->e)) {
		record_snapstart(cfg, snap_apply);
		char ts[40], rev[37];
		fe_timestamp(ts);
		fe_uuid(rev);
		json_object_set_new(cfg, "LastModified", json_string(ts));
		json_object_set_new(cfg, "RevisionId", json_string(rev));
		json_object_set_new(cfg, "LastUpdateStatus", json_string("Successful"));
		save(c, rec);
	}
	pthread_mutex_unlock(&c->fe->lock);
	if (!c->e.status) {
		drain_latest(c, cfg);
		fe_answer_json(c->resp, 200, fe_config_public(cfg));
	}
	json_decref(rec);
	json_decref(body);
}

static void update_code(struct call *c)
{
	static const char *const known[] = { "ImageUri", "Publish", "DryRun", "RevisionId", "Architectures", NULL };
	json_t *body = body_object(c->req, &c->e);
	if (!body || !only_known(body, known, "UpdateFunctionCode (kindling takes ImageUri only)", &c->e)) {
		json_decref(body);
		return;
	}
	const char *uri = NULL;
	if (!get_str(body, "ImageUri", 1024, &uri, &c->e) || (uri ? !image_uri_ok(uri, &c->e) : false)) {
		json_decref(body);
		return;
	}
	if (!uri) {
		fe_set_error(&c->e, 400, "InvalidParameterValueException", "ImageUri is required");
		json_decref(body);
		return;
	}
	bool dry = json_is_true(json_object_get(body, "DryRun"));
	pthread_mutex_lock(&c->fe->lock);
	json_t *rec = load(c);
	json_t *cfg = rec ? json_object_get(rec, "Latest") : NULL;
	if (cfg && !update_in_progress(c, cfg) && revision_matches(c, body, cfg) && !dry) {
		char token[37], ts[40];
		fe_timestamp(ts);
		start_import(cfg, uri, token);
		json_object_set_new(cfg, "LastModified", json_string(ts));
		json_object_set_new(cfg, "LastUpdateStatus", json_string("InProgress"));
		json_object_set_new(cfg, "LastUpdateStatusReason", json_string("The function is being updated."));
		json_object_set_new(cfg, "LastUpdateStatusReasonCode", json_string("Updating"));
		if (json_is_true(json_object_get(body, "Publish")))
			json_object_set_new(cfg, "_PublishOnActive", json_true());
		if (save(c, rec))
			fe_import_queue(c->fe, c->name, uri, token);
	}
	pthread_mutex_unlock(&c->fe->lock);
	if (!c->e.status)
		fe_answer_json(c->resp, 200, fe_config_public(cfg));
	json_decref(rec);
	json_decref(body);
}

static void publish_version(struct call *c)
{
	static const char *const known[] = { "CodeSha256", "Description", "RevisionId", NULL };
	json_t *body = body_object(c->req, &c->e);
	const char *desc = NULL, *sha = NULL;
	if (!body || !only_known(body, known, "PublishVersion", &c->e) ||
	    !get_str(body, "Description", 256, &desc, &c->e) || !get_str(body, "CodeSha256", 128, &sha, &c->e)) {
		json_decref(body);
		return;
	}
	pthread_mutex_lock(&c->fe->lock);
	json_t *rec = load(c);
	json_t *cfg = rec ? json_object_get(rec, "Latest") : NULL, *v = NULL;
	if (cfg && !update_in_progress(c, cfg) && revision_matches(c, body, cfg)) {
		const char *st = json_string_value(json_object_get(cfg, "State"));
		const char *have = json_string_value(json_object_get(cfg, "CodeSha256"));
		if (!st || strcmp(st, "Active") != 0)
			fe_set_error(&c->e, 409, "ResourceConflictException",
				     "The operation cannot be performed at this time. The function is currently in the following state: %s",
				     st ? st : "Pending");
		else if (sha && (!have || strcmp(sha, have) != 0))
			fe_set_error(&c->e, 412, "PreconditionFailedException",
				     "CodeSHA256 (%s) is different from current CodeSHA256 in $LATEST (%s). Please try again with the CodeSHA256 in $LATEST.",
				     sha, have ? have : "");
		else if (fe_record_publish(c->fe, c->name, rec, desc, &v) < 0)
			fe_set_error(&c->e, 500, "ServiceException", "out of memory");
		else if (save(c, rec) && fe_snapstart_queue(c->fe, c->name, v) < 0)
			log_err("function %s: no memory to queue the SnapStart snapshot of version %s; restart kindling "
				"serve to retry it", c->name, json_string_value(json_object_get(v, "Version")));
	}
	pthread_mutex_unlock(&c->fe->lock);
	if (!c->e.status)
		fe_answer_json(c->resp, 201, fe_config_public(v));
	json_decref(rec);
	json_decref(body);
}

static void function_concurrency(struct call *c, const char *method)
{
	long n = -1;
	json_t *body = NULL;
	if (strcmp(method, "PUT") == 0) {
		static const char *const known[] = { "ReservedConcurrentExecutions", NULL };
		body = body_object(c->req, &c->e);
		if (!body || !only_known(body, known, "PutFunctionConcurrency", &c->e) ||
		    !get_int(body, "ReservedConcurrentExecutions", 0, c->fe->account_concurrency, &n, &c->e)) {
			json_decref(body);
			return;
		}
		json_decref(body);
		if (n < 0) {
			fe_set_error(&c->e, 400, "InvalidParameterValueException", "ReservedConcurrentExecutions is required");
			return;
		}
	}
	pthread_mutex_lock(&c->fe->lock);
	json_t *rec = load(c);
	json_t *cur = rec ? json_object_get(rec, "ReservedConcurrency") : NULL;
	json_t *out = NULL;
	if (rec && strcmp(method, "GET") == 0) {
		out = json_is_integer(cur) ? json_pack("{s:O}", "ReservedConcurrentExecutions", cur) : json_object();
	} else if (rec && strcmp(method, "PUT") == 0) {
		json_object_set_new(rec, "ReservedConcurrency", json_integer(n));
		if (save(c, rec))
			out = json_pack("{s:i}", "ReservedConcurrentExecutions", (int)n);
	} else if (rec) {
		json_object_del(rec, "ReservedConcurrency");
		save(c, rec);
	}
	pthread_mutex_unlock(&c->fe->lock);
	json_decref(rec);
	if (!c->e.status)
		fe_answer_json(c->resp, out ? 200 : 204, out);
	else
		json_decref(out);
}

static void provisioned_answer(struct call *c, long n, const char *ts, unsigned requested_total, unsigned status)
{
	struct hostagent_stats st = { 0 };
	if (c->fe->agent)
		c->fe->agent->get_stats(c->fe->agent_arg, &st);
	/* The agent counts initialised provisioned sandboxes over all
	 * functions: READY once that covers every function's request. */
	bool ready = c->fe->agent && st.provisioned >= requested_total;
	json_t *out = json_pack("{s:i,s:i,s:i,s:s,s:s}", "RequestedProvisionedConcurrentExecutions", (int)n,
				"AllocatedProvisionedConcurrentExecutions", ready ? (int)n : 0,
				"AvailableProvisionedConcurrentExecutions", ready ? (int)n : 0, "Status",
				ready ? "READY" : "IN_PROGRESS", "LastModified", ts);
	fe_answer_json(c->resp, status, out);
}

static void provisioned_concurrency(struct call *c, const char *method)
{
	const char *q = param(c, "Qualifier");
	if (q && *q)
		snprintf(c->qual, sizeof(c->qual), "%.128s", q);
	if (!*c->qual || strcmp(c->qual, "$LATEST") == 0) {
		fe_set_error(&c->e, 400, "InvalidParameterValueException",
			     "Provisioned Concurrency Configs cannot be applied to unpublished function versions: give Qualifier=VERSION");
		return;
	}
	long n = -1;
	if (strcmp(method, "PUT") == 0) {
		static const char *const known[] = { "ProvisionedConcurrentExecutions", NULL };
		json_t *body = body_object(c->req, &c->e);
		bool ok = body && only_known(body, known, "PutProvisionedConcurrencyConfig", &c->e) &&
			  get_int(body, "ProvisionedConcurrentExecutions", 1, 1000, &n, &c->e);
		json_decref(body);
		if (!ok)
			return;
		if (n < 0) {
			fe_set_error(&c->e, 400, "InvalidParameterValueException", "ProvisionedConcurrentExecutions is required");
			return;
		}
	}
	pthread_mutex_lock(&c->fe->lock);
	json_t *rec = load(c);
	json_t *cfg = rec ? version_or_404(c, rec) : NULL;
	json_t *prov = rec ? json_object_get(rec, "Provisioned") : NULL;
	if (rec && !json_is_object(prov)) {
		prov = json_object();
		json_object_set_new(rec, "Provisioned", prov);
	}
	json_t *cur = prov ? json_object_get(prov, c->qual) : NULL;
	long have = json_is_integer(json_object_get(cur, "N")) ? (long)json_integer_value(json_object_get(cur, "N")) : 0;
	char ts[40];
	fe_timestamp(ts);
	if (cfg && strcmp(method, "GET") == 0) {
		if (!cur)
			fe_set_error(&c->e, 404, "ProvisionedConcurrencyConfigNotFoundException",
				     "No Provisioned Concurrency Config found for this function");
		else
			snprintf(ts, sizeof(ts), "%s", json_string_value(json_object_get(cur, "LastModified")) ?: ts);
		n = have;
	} else if (cfg) {
		long want = strcmp(method, "PUT") == 0 ? n : 0;
		if (strcmp(method, "DELETE") == 0 && !cur) {
			fe_set_error(&c->e, 404, "ProvisionedConcurrencyConfigNotFoundException",
				     "No Provisioned Concurrency Config found for this function");
		} else {
			struct fe_fnspec spec;
			int r = c->fe->agent ? fe_fnspec_init(c->fe, c->name, cfg, &spec) : -ENODEV;
			if (r == 0) {
				r = c->fe->agent->provision(c->fe->agent_arg, &spec.fn, (unsigned)want);
				fe_fnspec_cleanup(&spec);
			}
			if (r == -EINVAL)
				fe_set_error(&c->e, 400, "InvalidParameterValueException",
					     "Functions in plain stdio mode (KINDLING_INVOKE_MODE=stdio) cannot be provisioned");
			else if (r == -EBUSY)
				fe_set_error(&c->e, 400, "InvalidParameterValueException",
					     "%ld provisioned sandboxes of %s do not fit this host's sandbox memory budget",
					     want, c->name);
			else if (r < 0)
				fe_set_error(&c->e, 500, "ServiceException", "Provisioning failed: %s", strerror(-r));
			if (!c->e.status) {
				if (want)
					json_object_set_new(prov, c->qual,
							    json_pack("{s:i,s:s}", "N", (int)want, "LastModified", ts));
				else
					json_object_del(prov, c->qual);
				if (save(c, rec))
					c->fe->provisioned_requested = c->fe->provisioned_requested - (unsigned)have + (unsigned)want;
			}
		}
	}
	unsigned requested_total = c->fe->provisioned_requested;
	pthread_mutex_unlock(&c->fe->lock);
	json_decref(rec);
	if (c->e.status)
		return;
	if (strcmp(method, "DELETE") == 0)
		c->resp->status = 204;
	else
		provisioned_answer(c, n, ts, requested_total, strcmp(method, "PUT") == 0 ? 202 : 200);
}

/* ---- routing -------------------------------------------------------------------------------------------------------- */

static bool authenticate(struct frontend *fe, const struct http_request *req, struct fe_error *e)
{
	if (!fe->keys)
		return true;
	struct sigv4_request sr = {
		.method = req->method,
		.path = req->raw_path,
		.query = req->query,
		.headers = req->headers,
		.n_headers = req->n_headers,
	};
	struct sigv4_verdict v;
	memset(&v, 0, sizeof(v));
	int r = sigv4_verify(&fe->verifier, &sr, req->body, req->body_len, time(NULL), &v);
	bool ok = r == 0 && v.status == SIGV4_ACCEPTED;
	if (r < 0)
		fe_set_error(e, 500, "ServiceException", "The signature could not be checked (%s)", strerror(-r));
	else if (!ok) {
		fe_set_error(e, (unsigned)v.http_status, v.error_type, "%s", v.message ? v.message : "access denied");
		log_info("refused %s %s from %s: %s", req->method, req->raw_path, req->peer, v.error_type);
	}
	sigv4_verdict_cleanup(&v);
	return ok;
}

/* Split the raw path into at most MAX_SEGMENTS segments, each
 * percent-decoded on its own (so an encoded '/' stays inside its segment,
 * where a name check refuses it).  Returns the count, or 0 if the path
 * does not fit or a segment does not decode to a C string. */
static size_t split_path(const char *raw, char *buf, size_t size, char **seg)
{
	size_t n = 0, used = 0;
	const char *p = raw;
	if (*p == '/')
		p++;
	for (;;) {
		const char *end = strchr(p, '/');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		char *dec = NULL;
		size_t dlen = 0;
		if (n == MAX_SEGMENTS || http_pct_decode(p, len, &dec, &dlen) < 0)
			return 0;
		if (strlen(dec) != dlen || used + dlen + 1 > size) {
			free(dec);
			return 0;
		}
		memcpy(buf + used, dec, dlen + 1);
		free(dec);
		seg[n++] = buf + used;
		used += dlen + 1;
		if (!end)
			break;
		p = end + 1;
	}
	return n;
}

static void route(struct call *c)
{
	const struct http_request *req = c->req;
	const char *m = req->method;
	char path[1024];
	char *seg[MAX_SEGMENTS];
	size_t n = split_path(req->raw_path, path, sizeof(path), seg);
	if (n == 0) {
		fe_set_error(&c->e, 404, "UnknownOperationException", "Unknown operation %.16s %.200s", m, req->path);
		return;
	}
	if (n > 1 && !*seg[n - 1])
		n--; /* a trailing slash */
	const char *api = seg[0];
	if (n >= 2 && strcmp(seg[1], "functions") == 0) {
		if (n == 2 && strcmp(api, "2015-03-31") == 0) {
			if (strcmp(m, "GET") == 0)
				return list_functions(c, false);
			if (strcmp(m, "POST") == 0)
				return create_function(c);
		} else if (n >= 3) {
			if (!*seg[2] || frontend_parse_function_name(seg[2], c->name, sizeof(c->name), c->qual,
								     sizeof(c->qual)) < 0) {
				fe_set_error(&c->e, 400, "InvalidParameterValueException",
					     "Invalid function name '%.128s': use 1 to 64 letters, digits, '-' or '_', NAME:QUALIFIER or the function's ARN",
					     seg[2]);
				return;
			}
			const char *q = param(c, "Qualifier");
			if (q && *q && strcmp(seg[n - 1], "provisioned-concurrency") != 0) {
				if (*c->qual && strcmp(c->qual, q) != 0) {
					fe_set_error(&c->e, 400, "InvalidParameterValueException",
						     "The derived qualifier from the function name does not match the specified qualifier.");
					return;
				}
				char full[300];
				snprintf(full, sizeof(full), "%s:%s", c->name, q);
				if (frontend_parse_function_name(full, c->name, sizeof(c->name), c->qual, sizeof(c->qual)) < 0) {
					fe_set_error(&c->e, 400, "InvalidParameterValueException", "Invalid Qualifier '%.128s'", q);
					return;
				}
			}
			const char *sub = n >= 4 ? seg[3] : NULL;
			if (n > 4)
				goto unknown;
			if (strcmp(api, "2015-03-31") == 0) {
				if (!sub && strcmp(m, "GET") == 0)
					return get_function(c, false);
				if (!sub && strcmp(m, "DELETE") == 0)
					return delete_function(c);
				if (sub && strcmp(sub, "configuration") == 0 && strcmp(m, "GET") == 0)
					return get_function(c, true);
				if (sub && strcmp(sub, "configuration") == 0 && strcmp(m, "PUT") == 0)
					return update_configuration(c);
				if (sub && strcmp(sub, "code") == 0 && strcmp(m, "PUT") == 0)
					return update_code(c);
				if (sub && strcmp(sub, "versions") == 0 && strcmp(m, "POST") == 0)
					return publish_version(c);
				if (sub && strcmp(sub, "versions") == 0 && strcmp(m, "GET") == 0)
					return list_functions(c, true);
				if (sub && strcmp(sub, "invocations") == 0 && strcmp(m, "POST") == 0) {
					fe_handle_invoke(c->fe, req, seg[2], c->resp);
					return;
				}
			} else if (sub && strcmp(sub, "concurrency") == 0 &&
				   ((strcmp(api, "2017-10-31") == 0 && (strcmp(m, "PUT") == 0 || strcmp(m, "DELETE") == 0)) ||
				    (strcmp(api, "2019-09-30") == 0 && strcmp(m, "GET") == 0))) {
				return function_concurrency(c, m);
			} else if (sub && strcmp(sub, "provisioned-concurrency") == 0 && strcmp(api, "2019-09-30") == 0 &&
				   (strcmp(m, "PUT") == 0 || strcmp(m, "GET") == 0 || strcmp(m, "DELETE") == 0)) {
				return provisioned_concurrency(c, m);
			}
		}
	}
unknown:
	fe_set_error(&c->e, 404, "UnknownOperationException", "Unknown operation %.16s %.200s", m, req->path);
}

static int fe_handle(void *arg, const struct http_request *req, struct http_response *resp)
{
	struct frontend *fe = arg;
	struct call c;
	memset(&c, 0, sizeof(c));
	c.fe = fe;
	c.req = req;
	c.resp = resp;
	if (!authenticate(fe, req, &c.e)) {
		fe_answer_error(resp, &c.e);
		return 0;
	}
	if (http_query_parse(req->query, 32, &c.params, &c.n_params) < 0) {
		fe_set_error(&c.e, 400, "InvalidParameterValueException", "Malformed query string");
		fe_answer_error(resp, &c.e);
		return 0;
	}
	route(&c);
	/* Another frontend changed the record between our read and write:
	 * redo the whole call on the fresh record (bounded). */
	for (int i = 1; c.conflict && i < FE_RECORD_RETRIES; i++) {
		memset(&c.e, 0, sizeof(c.e));
		c.conflict = false;
		c.name[0] = c.qual[0] = '\0';
		route(&c);
	}
	http_params_free(c.params, c.n_params);
	if (c.e.status)
		fe_answer_error(resp, &c.e);
	char rid[37];
	bool have_rid = false;
	for (size_t i = 0; i < resp->n_headers; i++)
		have_rid |= strcasecmp(resp->headers[i].name, "X-Amzn-RequestId") == 0;
	if (!have_rid) {
		fe_uuid(rid);
		http_response_add_header(resp, "X-Amzn-RequestId", rid);
	}
	return 0;
}

static size_t fe_body_limit(void *arg, const struct http_request *req)
{
	(void)arg;
	size_t n = strlen(req->path);
	if (strcmp(req->method, "POST") == 0 && ((n >= 12 && strcmp(req->path + n - 12, "/invocations") == 0) ||
						 (n >= 13 && strcmp(req->path + n - 13, "/invocations/") == 0))) {
		const char *t = http_request_header(req, "X-Amz-Invocation-Type");
		return t && strcmp(t, "Event") == 0 ? FE_ASYNC_PAYLOAD_MAX : FE_SYNC_PAYLOAD_MAX;
	}
	return FE_CONTROL_BODY_MAX;
}

static void fe_http_error(void *arg, const struct http_request *req, unsigned status, const char *reason, size_t limit,
			  struct http_response *resp)
{
	(void)arg;
	(void)req;
	struct fe_error e;
	if (status == 413)
		fe_set_error(&e, 413, "RequestTooLargeException", "Request must be smaller than %zu bytes for the %s operation",
			     limit, strstr(req->path, "/invocations") ? "InvokeFunction" : "requested");
	else if (status == 400)
		fe_set_error(&e, 400, "InvalidRequestContentException", "%s", reason);
	else if (status == 503)
		fe_set_error(&e, 503, "ServiceException", "kindling serve is busy or stopping: %s", reason);
	else
		fe_set_error(&e, status, "ServiceException", "%s", reason);
	fe_answer_error(resp, &e);
}

const struct http_server_ops frontend_http_ops = {
	.handle = fe_handle,
	.body_limit = fe_body_limit,
	.error = fe_http_error,
};

/* ---- life cycle ------------------------------------------------------------------------------------------------------ */

/* At start: re-queue the imports of functions still Pending and the
 * SnapStart snapshots of versions still Pending, and provision what the
 * records ask for. */
static void resume(struct frontend *fe)
{
	struct str_list names = { 0 };
	if (fe->ops->list(fe->state, NULL, SIZE_MAX, &names) < 0)
		return;
	for (size_t i = 0; i < names.n; i++) {
		json_t *rec = NULL;
		if (fe_record_load(fe, names.items[i], &rec) < 0)
			continue;
		json_t *cfg = json_object_get(rec, "Latest");
		const char *tok = json_string_value(json_object_get(cfg, "_ImportToken"));
		const char *uri = json_string_value(json_object_get(cfg, "_PendingImageUri"));
		if (tok && uri)
			fe_import_queue(fe, names.items[i], uri, tok);
		const char *k;
		json_t *v;
		json_object_foreach(json_object_get(rec, "Versions"), k, v)
			if (fe_snapstart_queue(fe, names.items[i], v) < 0)
				log_err("function %s: no memory to queue the SnapStart snapshot of version %s", names.items[i], k);
		json_object_foreach(json_object_get(rec, "Provisioned"), k, v)
		{
			unsigned n = (unsigned)json_integer_value(json_object_get(v, "N"));
			json_t *vc = fe_record_version(rec, k);
			struct fe_fnspec spec;
			if (!vc || !fe->agent || fe_fnspec_init(fe, names.items[i], vc, &spec) < 0)
				continue;
			fe->provisioned_requested += n;
			if (fe->agent->provision(fe->agent_arg, &spec.fn, n) < 0)
				log_warn("function %s:%s: cannot provision %u sandboxes again", names.items[i], k, n);
			fe_fnspec_cleanup(&spec);
		}
		json_decref(rec);
	}
	str_list_clear(&names);
}

int frontend_new(const struct frontend_config *cfg, struct frontend **out)
{
	if (!cfg->state_ops || !cfg->state_dir || (!cfg->agent_ops && !cfg->no_agent)) {
		log_err("frontend_new: state_ops, state_dir and agent are required");
		return -EINVAL;
	}
	struct frontend *fe = calloc(1, sizeof(*fe));
	if (!fe)
		return -ENOMEM;
	fe->agent = cfg->no_agent ? NULL : cfg->agent_ops;
	fe->agent_arg = cfg->agent_arg;
	fe->no_agent = cfg->no_agent;
	fe->ops = cfg->state_ops;
	fe->state = cfg->state_arg;
	fe->keys = cfg->keys;
	fe->region = strdup(cfg->region ? cfg->region : "us-east-1");
	fe->account_id = strdup(cfg->account_id ? cfg->account_id : "000000000000");
	fe->state_dir = strdup(cfg->state_dir);
	fe->queue_dir = xasprintf("%s/queue", cfg->state_dir);
	fe->dlq_dir = xasprintf("%s/dlq", cfg->state_dir);
	fe->account_concurrency = cfg->account_concurrency ? cfg->account_concurrency : 1000;
	fe->sync_wait_ms = cfg->sync_wait_ms ? cfg->sync_wait_ms : 3000;
	fe->retry_delay_ms = cfg->retry_delay_ms ? cfg->retry_delay_ms : 2000;
	fe->snapshot_attempts = cfg->snapshot_attempts ? cfg->snapshot_attempts : 4;
	fe->snapshot_retry_ms = cfg->snapshot_retry_ms ? cfg->snapshot_retry_ms : 5000;
	fe->verifier.service = "lambda";
	fe->verifier.lookup = sigv4_keys_lookup;
	fe->verifier.lookup_arg = (void *)cfg->keys;
	pthread_mutex_init(&fe->lock, NULL);
	pthread_mutex_init(&fe->qlock, NULL);
	pthread_cond_init(&fe->qcond, NULL);
	pthread_mutex_init(&fe->cache_lock, NULL);
	pthread_mutex_init(&fe->bg_lock, NULL);
	pthread_cond_init(&fe->bg_cond, NULL);
	pthread_mutex_init(&fe->lease_lock, NULL);
	pthread_mutex_init(&fe->conc_lock, NULL);
	pthread_mutex_init(&fe->grow_lock, NULL);
	fe_import_init(fe);
	if (cfg->etcd) {
		const char *id = cfg->frontend_id;
		size_t n = id ? strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") : 0;
		if (!id || !*id || id[n] || n > 64) {
			log_err("frontend id '%s' is not 1 to 64 of [A-Za-z0-9_.-]; give each frontend its own",
				id ? id : "(none)");
			frontend_free(fe);
			return -EINVAL;
		}
		fe->etcd = cfg->etcd;
		fe->id = strdup(id);
		fe->url = cfg->advertise_url ? strdup(cfg->advertise_url) : NULL;
		if (!fe->id || (cfg->advertise_url && !fe->url)) {
			frontend_free(fe);
			return -ENOMEM;
		}
		if (fe_fleet_start(fe) < 0)
			log_warn("frontend %s: etcd does not answer; starting anyway (Event invokes and functions not "
				 "yet cached get 503 until it is back)", fe->id);
	}
	if (!fe->region || !fe->account_id || !fe->state_dir || !fe->queue_dir || !fe->dlq_dir) {
		frontend_free(fe);
		return -ENOMEM;
	}
	int r = mkdir_p(fe->state_dir, 0700);
	if (r < 0) {
		log_err("create the state directory %s: %s", fe->state_dir, strerror(-r));
		frontend_free(fe);
		return r;
	}
	fe->cc.cancel = &fe->cancel;
	if ((r = chunkify_ctx_init(&fe->cc, cfg->store_uri, NULL)) < 0) {
		log_err("open the image store %s: %s (check --store)", cfg->store_uri ? cfg->store_uri : "(default)",
			strerror(-r));
		frontend_free(fe);
		return r;
	}
	fe->cc.cancel = &fe->cancel;
	fe->have_cc = true;
	if ((r = fe_import_start(fe)) < 0 || (r = fe_queue_start(fe, cfg->async_workers ? cfg->async_workers : 4)) < 0 ||
	    (r = fe_bg_start(fe)) < 0) {
		frontend_free(fe);
		return r;
	}
	resume(fe);
	*out = fe;
	return 0;
}

void frontend_free(struct frontend *fe)
{
	if (!fe)
		return;
	fe_queue_stop(fe);
	fe_bg_stop(fe);
	fe_import_stop(fe);
	fe_import_destroy(fe);
	if (fe->etcd)
		fe_fleet_stop(fe);
	fe_cache_clear(fe);
	if (fe->have_cc)
		chunkify_ctx_cleanup(&fe->cc);
	while (fe->counters) {
		struct fe_counter *c = fe->counters;
		fe->counters = c->next;
		free(c);
	}
	pthread_mutex_destroy(&fe->lock);
	pthread_mutex_destroy(&fe->qlock);
	pthread_cond_destroy(&fe->qcond);
	pthread_mutex_destroy(&fe->cache_lock);
	pthread_mutex_destroy(&fe->bg_lock);
	pthread_cond_destroy(&fe->bg_cond);
	pthread_mutex_destroy(&fe->lease_lock);
	pthread_mutex_destroy(&fe->conc_lock);
	pthread_mutex_destroy(&fe->grow_lock);
	free(fe->id);
	free(fe->url);
	free(fe->region);
	free(fe->account_id);
	free(fe->state_dir);
	free(fe->queue_dir);
	free(fe->dlq_dir);
	free(fe);
}
