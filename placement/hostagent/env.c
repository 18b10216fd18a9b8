/* A sandbox's environment, as Lambda builds it for a container image.
 *
 * Layers, lowest first: the image's Env (the sandbox applies it), the
 * function's Environment.Variables, then the variables Lambda reserves,
 * which nothing overrides.  LANG, PATH and LD_LIBRARY_PATH are Lambda's
 * unreserved defaults: set only where neither the image nor the function
 * sets them.  AWS_LAMBDA_RUNTIME_API is the sandbox's to set.
 *
 * The reserved names are the Runtime Interface Emulator's (rapidcore/env:
 * its platform, runtime and credential keys) plus those AWS's documentation
 * lists as reserved; a dump of a real image function's environment
 * (AWS_EXECUTION_ENV=AWS_Lambda_Image, _HANDLER empty without a CMD, the log
 * stream name "YYYY/MM/DD/[VERSION]<32 hex>") shows the values. */
#include "placement/hostagent/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const reserved[] = {
	"_HANDLER",
	"_X_AMZN_TRACE_ID",
	"AWS_ACCESS_KEY",
	"AWS_ACCESS_KEY_ID",
	"AWS_DEFAULT_REGION",
	"AWS_EXECUTION_ENV",
	"AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
	"AWS_LAMBDA_FUNCTION_NAME",
	"AWS_LAMBDA_FUNCTION_VERSION",
	"AWS_LAMBDA_INITIALIZATION_TYPE",
	"AWS_LAMBDA_LOG_GROUP_NAME",
	"AWS_LAMBDA_LOG_STREAM_NAME",
	"AWS_LAMBDA_RUNTIME_API",
	"AWS_REGION",
	"AWS_SECRET_ACCESS_KEY",
	"AWS_SESSION_TOKEN",
	"LAMBDA_RUNTIME_DIR",
	"LAMBDA_TASK_ROOT",
	"TZ",
};

bool hostagent_env_is_reserved(const char *key)
{
	for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++)
		if (strcmp(key, reserved[i]) == 0)
			return true;
	return false;
}

/* The key of "K=V" in a buffer, or false if there is no '=' or it is too
 * long. */
static bool env_key(const char *kv, char *key, size_t len)
{
	const char *eq = strchr(kv, '=');
	if (!eq || eq == kv || (size_t)(eq - kv) >= len)
		return false;
	memcpy(key, kv, (size_t)(eq - kv));
	key[eq - kv] = '\0';
	return true;
}

static bool has_key(char *const *env, const char *key)
{
	char k[256];
	for (size_t i = 0; env && env[i]; i++)
		if (env_key(env[i], k, sizeof(k)) && strcmp(k, key) == 0)
			return true;
	return false;
}

static int add(struct str_list *out, const char *key, const char *value)
{
	char *kv = xasprintf("%s=%s", key, value);
	if (!kv)
		return -ENOMEM;
	int r = str_list_add(out, kv);
	free(kv);
	return r;
}

int ha_env_build(const struct ha_env_params *p, struct str_list *out)
{
	const struct hostagent_function *fn = p->fn;
	int r = 0;
	char key[256];
	/* The function's variables, without the reserved ones (the frontend
	 * refuses those; this is the agent's own guard). */
	for (size_t i = 0; fn->env && fn->env[i] && r == 0; i++) {
		if (!env_key(fn->env[i], key, sizeof(key)))
			continue;
		if (hostagent_env_is_reserved(key)) {
			log_warn("function %s: the environment variable %s is reserved by Lambda; ignoring the "
				 "function's value", fn->name, key);
			continue;
		}
		r = str_list_add(out, fn->env[i]);
	}
	/* Lambda's unreserved defaults, where nobody set them. */
	static const char *const defaults[][2] = {
		{ "LANG", "en_US.UTF-8" },
		{ "PATH", "/usr/local/bin:/usr/bin/:/bin:/opt/bin" },
		{ "LD_LIBRARY_PATH", "/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib" },
	};
	for (size_t i = 0; i < sizeof(defaults) / sizeof(defaults[0]) && r == 0; i++)
		if (!has_key(p->image_env, defaults[i][0]) && !has_key(fn->env, defaults[i][0]))
			r = add(out, defaults[i][0], defaults[i][1]);

	char *const *cmd = fn->command ? fn->command : p->image_cmd;
	char mem[16], group[HA_NAME_MAX + 16];
	const char *init_type = p->snap_start ? "snap-start" : p->provisioned ? "provisioned-concurrency" : "on-demand";
	snprintf(mem, sizeof(mem), "%u", fn->memory_mb);
	snprintf(group, sizeof(group), "/aws/lambda/%s", fn->name);
	const char *const fixed[][2] = {
		{ "_HANDLER", cmd && cmd[0] ? cmd[0] : "" },
		{ "AWS_DEFAULT_REGION", p->region },
		{ "AWS_EXECUTION_ENV", "AWS_Lambda_Image" },
		{ "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", mem },
		{ "AWS_LAMBDA_FUNCTION_NAME", fn->name },
		{ "AWS_LAMBDA_FUNCTION_VERSION", fn->version },
		{ "AWS_LAMBDA_INITIALIZATION_TYPE", init_type },
		{ "AWS_LAMBDA_LOG_GROUP_NAME", group },
		{ "AWS_LAMBDA_LOG_STREAM_NAME", p->log_stream },
		{ "AWS_REGION", p->region },
		{ "LAMBDA_RUNTIME_DIR", "/var/runtime" },
		{ "LAMBDA_TASK_ROOT", "/var/task" },
		{ "TZ", ":UTC" },
	};
	for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]) && r == 0; i++)
		r = add(out, fixed[i][0], fixed[i][1]);
	return r;
}

void ha_log_stream_name(char *buf, size_t len, const char *version, int64_t epoch_s, const uint8_t rnd[16])
{
	time_t t = (time_t)epoch_s;
	struct tm tm;
	gmtime_r(&t, &tm);
	char hex[33];
	hex_encode(rnd, 16, hex);
	snprintf(buf, len, "%04d/%02d/%02d/[%s]%s", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, version, hex);
}
