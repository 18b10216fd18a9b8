/* sandbox_run: run a command from an EROFS image in a sandbox and print timings.
 *
 *   sandbox_run IMAGE.erofs|ROOTFS_DIR [--config FILE] [--json] [--user U] [--env K=V]... [--workdir D]
 *               [--mem BYTES] [--pids N] [--hostname H] [--mount auto|file|loop]
 *               [--timeout SECONDS] [--isolation process|microvm|auto] [-- CMD ARGS...]
 *
 * --config takes `chunkify inspect IMAGE --json` output (or just its "config"
 * object) for the image's entrypoint, cmd, env, working dir and user; the
 * other flags override it, and CMD ARGS replace entrypoint+cmd.  The
 * command's output goes to stdout/stderr; a summary line follows on stderr
 * (a JSON object with --json).  Exit status: the command's, 128+N if signal N
 * ended it, 127 if the command is not in the image, 125 if the sandbox could
 * not be set up.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/common.h"
#include "sandbox/sandbox.h"

static void usage(void)
{
	fprintf(stderr, "usage: sandbox_run IMAGE.erofs [--config FILE] [--json] [--user U] [--env K=V]... "
			"[--workdir D] [--mem BYTES] [--pids N] [--hostname H] [--mount auto|file|loop] "
			"[--timeout S] [--isolation process|microvm|auto] [-- CMD ARGS...]\n");
}

/* A JSON array of strings as a NULL-terminated vector (NULL for null/absent). */
static char **strv(json_t *a)
{
	if (!json_is_array(a))
		return NULL;
	size_t n = json_array_size(a);
	char **v = calloc(n + 1, sizeof(*v));
	if (!v)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		const char *s = json_string_value(json_array_get(a, i));
		v[i] = strdup(s ? s : "");
	}
	return v;
}

static int load_config(const char *path, struct run_config *rc)
{
	json_error_t err;
	json_t *j = json_load_file(path, 0, &err);
	if (!j) {
		fprintf(stderr, "sandbox_run: %s:%d: %s\n", path, err.line, err.text);
		return -EINVAL;
	}
	json_t *c = json_object_get(j, "config");
	if (!c)
		c = j;
	rc->entrypoint = strv(json_object_get(c, "entrypoint"));
	rc->cmd = strv(json_object_get(c, "cmd"));
	rc->env = strv(json_object_get(c, "env"));
	const char *wd = json_string_value(json_object_get(c, "working_dir"));
	const char *user = json_string_value(json_object_get(c, "user"));
	rc->working_dir = wd ? strdup(wd) : NULL;
	rc->user = user ? strdup(user) : NULL;
	json_decref(j);
	return 0;
}

static bool parse_u64(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-')
		return false;
	*out = v;
	return true;
}

int main(int argc, char **argv)
{
	double t0 = now_seconds();
	if (argc < 2 || argv[1][0] == '-') {
		usage();
		return 125;
	}
	struct run_config rc = {0};
	struct sandbox_spec spec = {.image_path = argv[1], .config = &rc, .in_fd = -1, .out_fd = 1, .err_fd = 2};
	struct stat st;
	if (stat(argv[1], &st) == 0 && S_ISDIR(st.st_mode)) { /* a plain rootfs directory */
		spec.image_path = NULL;
		spec.rootfs_dir = argv[1];
	}
	struct str_list env = {0};
	bool json = false;
	const char *isolation = "process";
	int i, status = 125;
	for (i = 2; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		uint64_t n;
		if (strcmp(a, "--") == 0) {
			i++;
			break;
		} else if (strcmp(a, "--json") == 0) {
			json = true;
			continue;
		}
		if (!v) {
			usage();
			goto done;
		}
		i++;
		if (strcmp(a, "--config") == 0) {
			if (load_config(v, &rc) < 0)
				goto done;
		} else if (strcmp(a, "--user") == 0) {
			spec.user_override = v;
		} else if (strcmp(a, "--env") == 0) {
			if (str_list_add(&env, v) < 0)
				goto done;
		} else if (strcmp(a, "--workdir") == 0) {
			spec.workdir_override = v;
		} else if (strcmp(a, "--hostname") == 0) {
			spec.hostname = v;
		} else if (strcmp(a, "--isolation") == 0) {
			isolation = v;
		} else if (strcmp(a, "--mem") == 0 && parse_u64(v, &n)) {
			spec.memory_limit = n;
		} else if (strcmp(a, "--pids") == 0 && parse_u64(v, &n) && n <= UINT32_MAX - 2) {
			spec.pids_limit = (uint32_t)n;
		} else if (strcmp(a, "--timeout") == 0 && atof(v) > 0) {
			spec.timeout_s = atof(v);
		} else if (strcmp(a, "--mount") == 0 && (!strcmp(v, "auto") || !strcmp(v, "file") || !strcmp(v, "loop"))) {
			spec.mount = !strcmp(v, "file") ? SANDBOX_MOUNT_FILE
				     : !strcmp(v, "loop") ? SANDBOX_MOUNT_LOOP
							  : SANDBOX_MOUNT_AUTO;
		} else {
			fprintf(stderr, "sandbox_run: bad option %s %s\n", a, v);
			usage();
			goto done;
		}
	}
	if (i < argc)
		spec.argv_override = argv + i;
	if (env.n) {
		if (str_list_add(&env, "") < 0)
			goto done;
		free(env.items[--env.n]);
		env.items[env.n] = NULL;
		spec.env_override = env.items;
	}

	char notice[512];
	const struct sandbox_ops *ops = sandbox_pick(isolation, notice, sizeof(notice));
	if (!ops) {
		fprintf(stderr, "sandbox_run: %s\n", notice);
		goto done;
	}
	if (notice[0])
		fprintf(stderr, "sandbox_run: %s\n", notice);

	spec.t0 = t0;
	struct sandbox_result res;
	int r = sandbox_run(ops, &spec, &res);
	if (r < 0)
		status = r == -ENOENT || r == -EACCES ? 127 : 125;
	else
		status = res.term_signal ? 128 + res.term_signal : res.exit_code;
	if (json) {
		json_t *j = json_pack("{s:s,s:i,s:i,s:i,s:b,s:b,s:f,s:f,s:I,s:I,s:s,s:s,s:s*}", "backend",
				      ops->name, "status", status, "exit_code", r < 0 ? -1 : res.exit_code,
				      "term_signal", r < 0 ? 0 : res.term_signal, "timed_out", r == 0 && res.timed_out,
				      "oom_killed", r == 0 && res.oom_killed, "first_output_s",
				      r < 0 ? -1.0 : res.first_output_s, "exit_s", r < 0 ? -1.0 : res.exit_s, "out_bytes",
				      (json_int_t)(r < 0 ? 0 : res.out_bytes), "err_bytes",
				      (json_int_t)(r < 0 ? 0 : res.err_bytes), "mount", r < 0 ? "" : res.mount_kind,
				      "cgroup", r < 0 ? "" : res.cgroup_kind, "error", r < 0 ? strerror(-r) : NULL);
		char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
		fprintf(stderr, "%s\n", s);
		free(s);
		json_decref(j);
	} else if (r < 0) {
		fprintf(stderr, "sandbox_run: %s\n", strerror(-r));
	} else {
		fprintf(stderr,
			"sandbox_run: backend %s, mount %s, cgroup %s: first output %.6f s, exit %.6f s, exit code %d%s%s\n",
			ops->name, res.mount_kind, res.cgroup_kind, res.first_output_s, res.exit_s, res.exit_code,
			res.term_signal ? ", killed by signal" : "", res.oom_killed ? " (OOM)" : "");
	}
done:
	str_list_clear(&env);
	strv_free(rc.entrypoint);
	strv_free(rc.cmd);
	strv_free(rc.env);
	free(rc.working_dir);
	free(rc.user);
	return status;
}
