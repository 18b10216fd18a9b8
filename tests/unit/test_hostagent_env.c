/* A sandbox's Lambda environment (placement/hostagent/env.c): the reserved
 * variables with the values a real image function sees, the function's own
 * variables (never over a reserved one), Lambda's defaults only where
 * neither the image nor the function sets them, _HANDLER from CMD. */
/* ctest-labels: no-tsan (pure functions: nothing for ThreadSanitizer to check) */
#include "placement/hostagent/internal.h"

#include <stdlib.h>
#include <string.h>

#include "sandbox/sandbox.h"
#include "tests/check.h"

/* The value of |key| in |l|, or NULL; counts how often it appears. */
static const char *get(const struct str_list *l, const char *key, int *count)
{
	const char *v = NULL;
	size_t n = strlen(key);
	*count = 0;
	for (size_t i = 0; i < l->n; i++)
		if (strncmp(l->items[i], key, n) == 0 && l->items[i][n] == '=') {
			v = l->items[i] + n + 1;
			(*count)++;
		}
	return v;
}

static bool is(const struct str_list *l, const char *key, const char *want)
{
	int c;
	const char *v = get(l, key, &c);
	return v && c == 1 && strcmp(v, want) == 0;
}

static bool absent(const struct str_list *l, const char *key)
{
	int c;
	return get(l, key, &c) == NULL;
}

int main(void)
{
	char *user_env[] = { "GREETING=hi", "AWS_REGION=eu-west-9", "TZ=Europe/Paris", "_HANDLER=evil", "LANG=C", "noequals",
			     NULL };
	char *image_env[] = { "PATH=/usr/bin:/bin", "LANG=de_DE.UTF-8", NULL };
	char *image_cmd[] = { "app.handler", "--flag", NULL };
	struct hostagent_function fn = {
		.name = "my-fn",
		.version = "$LATEST",
		.image_digest = "00",
		.memory_mb = 256,
		.timeout_s = 3,
		.env = user_env,
	};
	struct ha_env_params p = {
		.fn = &fn,
		.region = "us-east-2",
		.image_env = image_env,
		.image_cmd = image_cmd,
		.log_stream = "2024/01/15/[$LATEST]0123456789abcdef0123456789abcdef",
	};
	struct str_list l = { 0 };
	CHECK(ha_env_build(&p, &l) == 0);
	CHECK(is(&l, "AWS_LAMBDA_FUNCTION_NAME", "my-fn"));
	CHECK(is(&l, "AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"));
	CHECK(is(&l, "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256"));
	CHECK(is(&l, "AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/my-fn"));
	CHECK(is(&l, "AWS_LAMBDA_LOG_STREAM_NAME", "2024/01/15/[$LATEST]0123456789abcdef0123456789abcdef"));
	CHECK(is(&l, "AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand"));
	CHECK(is(&l, "AWS_REGION", "us-east-2"));
	CHECK(is(&l, "AWS_DEFAULT_REGION", "us-east-2"));
	CHECK(is(&l, "AWS_EXECUTION_ENV", "AWS_Lambda_Image"));
	CHECK(is(&l, "LAMBDA_TASK_ROOT", "/var/task"));
	CHECK(is(&l, "LAMBDA_RUNTIME_DIR", "/var/runtime"));
	CHECK(is(&l, "TZ", ":UTC"));
	CHECK(is(&l, "_HANDLER", "app.handler"));
	/* The function's own variables; a reserved one never gets through. */
	CHECK(is(&l, "GREETING", "hi"));
	CHECK(is(&l, "LANG", "C"));
	CHECK(absent(&l, "noequals"));
	/* PATH is the image's (not repeated here); LD_LIBRARY_PATH Lambda's default. */
	CHECK(absent(&l, "PATH"));
	CHECK(is(&l, "LD_LIBRARY_PATH",
		 "/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib"));
	/* The sandbox sets the Runtime API address itself. */
	CHECK(absent(&l, "AWS_LAMBDA_RUNTIME_API"));

	/* Layered on the image's Env the way the sandbox does it. */
	struct str_list full = { 0 };
	str_list_add(&l, "");
	free(l.items[--l.n]);
	l.items[l.n] = NULL;
	CHECK(sandbox_env_build(image_env, l.items, "kindling", "/root", &full) == 0);
	CHECK(is(&full, "PATH", "/usr/bin:/bin"));
	CHECK(is(&full, "LANG", "C"));
	CHECK(is(&full, "AWS_REGION", "us-east-2"));
	str_list_clear(&full);
	str_list_clear(&l);

	/* No image Env, no function Env, a Command override, provisioned. */
	char *cmd[] = { "index.handler", NULL };
	fn.env = NULL;
	fn.command = cmd;
	p.image_env = NULL;
	p.provisioned = true;
	CHECK(ha_env_build(&p, &l) == 0);
	CHECK(is(&l, "PATH", "/usr/local/bin:/usr/bin/:/bin:/opt/bin"));
	CHECK(is(&l, "LANG", "en_US.UTF-8"));
	CHECK(is(&l, "_HANDLER", "index.handler"));
	CHECK(is(&l, "AWS_LAMBDA_INITIALIZATION_TYPE", "provisioned-concurrency"));
	str_list_clear(&l);
	p.snap_start = true;
	CHECK(ha_env_build(&p, &l) == 0);
	CHECK(is(&l, "AWS_LAMBDA_INITIALIZATION_TYPE", "snap-start"));
	str_list_clear(&l);
	/* No CMD at all: _HANDLER is empty, as on Lambda. */
	fn.command = NULL;
	p.image_cmd = NULL;
	CHECK(ha_env_build(&p, &l) == 0);
	CHECK(is(&l, "_HANDLER", ""));
	str_list_clear(&l);

	CHECK(hostagent_env_is_reserved("AWS_LAMBDA_FUNCTION_NAME"));
	CHECK(hostagent_env_is_reserved("TZ"));
	CHECK(hostagent_env_is_reserved("AWS_SECRET_ACCESS_KEY"));
	CHECK(!hostagent_env_is_reserved("PATH"));
	CHECK(!hostagent_env_is_reserved("aws_region"));

	char name[128];
	uint8_t rnd[16];
	for (int i = 0; i < 16; i++)
		rnd[i] = (uint8_t)(i * 17);
	ha_log_stream_name(name, sizeof(name), "$LATEST", 1705312800, rnd);
	CHECK(strcmp(name, "2024/01/15/[$LATEST]00112233445566778899aabbccddeeff") == 0);
	return check_report();
}
