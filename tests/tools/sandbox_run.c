/* sandbox_run: run a command from an EROFS image in a sandbox and print timings.
 *
 *   sandbox_run IMAGE.erofs|ROOTFS_DIR [--config FILE] [--json] [--user U] [--env K=V]... [--workdir D]
 *               [--mem BYTES] [--pids N] [--hostname H] [--mount auto|file|loop] [--userns BASE:COUNT|off]
 *               [--timeout SECONDS] [--isolation process|microvm|auto]
 *               [--runtime-api PORT [--runtime-api-body TEXT | --runtime-api-body-file FILE]
 *                [--runtime-api-log FILE]] [--ready-refuse]
 *               [--stop-after SECONDS | --stop-on-signal] [-- CMD ARGS...]
 *
 * Long-lived sandboxes (sandbox.h's on_ready and stop_fd):
 *   --runtime-api PORT  give the workload a Runtime API endpoint on
 *                       127.0.0.1:PORT inside the sandbox, and serve it from a
 *                       thread here with one fixed exchange per connection:
 *                       read the request's head and its Content-Length body
 *                       (for a path that starts with /half-close, read until
 *                       the client shuts its side down), then answer 200
 *                       with the body given by --runtime-api-body(-file)
 *                       (default "kindling-runtime-api\n") and close;
 *   --runtime-api-log FILE  append "request: LINE", "body: BYTES" (for
 *                       bodies up to 256 bytes) and "body-sha256: HEX LENGTH"
 *                       lines for every request served;
 *   --ready-refuse      on_ready refuses the sandbox (-ECANCELED);
 *   --stop-after S      stop the sandbox through stop_fd (a timerfd) after S
 *                       seconds;
 *   --stop-on-signal    stop it through stop_fd when SIGUSR1 arrives.
 * on_ready prints "sandbox_run: ready: pid N, memory peak file P" to stderr.
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
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "common/common.h"
#include "sandbox/sandbox.h"

static void usage(void)
{
	fprintf(stderr, "usage: sandbox_run IMAGE.erofs [--config FILE] [--json] [--user U] [--env K=V]... "
			"[--workdir D] [--mem BYTES] [--pids N] [--hostname H] [--mount auto|file|loop] [--userns BASE:COUNT|off] "
			"[--timeout S] [--isolation process|microvm|auto] [--runtime-api PORT [--runtime-api-body TEXT "
			"| --runtime-api-body-file FILE] [--runtime-api-log FILE]] [--ready-refuse] "
			"[--stop-after S | --stop-on-signal] [-- CMD ARGS...]\n");
}

/* ---- the Runtime API endpoint's server: one thread, one fixed exchange per connection ---- */

#define API_HEAD_MAX (64u << 10)
#define API_BODY_MAX (16u << 20)
#define API_LOG_TEXT_MAX 256 /* longer bodies are logged by their SHA-256 only */

struct api_server {
	int listen_fd;	 /* from on_ready; -1 until then */
	int quit[2];	 /* a byte on quit[1] ends the thread */
	char *body;	 /* the answer */
	size_t body_len;
	const char *log_path; /* or NULL */
	bool refuse;	      /* --ready-refuse */
	pthread_t thread;
	bool started;
	unsigned served; /* written by the thread; read after join */
};

/* Read up to |<buf, len>| from |fd| while watching the quit pipe.  Returns
 * the count, 0 at the end of stream, -1 on an error or quit. */
static ssize_t api_read(struct api_server *a, int fd, char *buf, size_t len)
{
	struct pollfd pf[2] = { { fd, POLLIN, 0 }, { a->quit[0], POLLIN, 0 } };
	while (poll(pf, 2, -1) < 0)
		if (errno != EINTR)
			return -1;
	if (pf[1].revents)
		return -1;
	return read(fd, buf, len);
}

/* One exchange on the accepted connection |fd|. */
static void api_serve(struct api_server *a, int fd)
{
	char *req = malloc(API_HEAD_MAX + API_BODY_MAX);
	size_t have = 0, head = 0, want = 0;
	bool until_eof = false;
	ssize_t n = 1;
	if (!req)
		return;
	/* The head, up to the blank line. */
	while (!head && have < API_HEAD_MAX && (n = api_read(a, fd, req + have, API_HEAD_MAX - have)) > 0) {
		have += (size_t)n;
		for (size_t i = 3; i < have && !head; i++)
			if (memcmp(req + i - 3, "\r\n\r\n", 4) == 0)
				head = i + 1;
	}
	if (!head) {
		free(req);
		return;
	}
	/* The head ends in "\r\n\r\n", so every number in it ends before |head|. */
	for (size_t i = 0; i + 16 < head; i++)
		if (req[i] == '\n' && strncasecmp(req + i + 1, "Content-Length:", 15) == 0)
			want = strtoul(req + i + 16, NULL, 10);
	size_t line_len = 0, path = 0;
	while (line_len < head && req[line_len] != '\r')
		line_len++;
	while (path < line_len && req[path] != ' ')
		path++;
	until_eof = line_len - path > 11 && memcmp(req + path, " /half-close", 12) == 0;
	if (want > API_BODY_MAX)
		want = API_BODY_MAX;
	/* The body: Content-Length bytes, or everything until the client's end of stream. */
	while ((until_eof || have - head < want) && have < API_HEAD_MAX + API_BODY_MAX &&
	       (n = api_read(a, fd, req + have, API_HEAD_MAX + API_BODY_MAX - have)) > 0)
		have += (size_t)n;
	if (n < 0) {
		free(req);
		return;
	}
	if (a->log_path) {
		FILE *f = fopen(a->log_path, "a");
		uint8_t sum[SHA256_LEN];
		char hex[2 * SHA256_LEN + 1];
		sha256_buf(req + head, have - head, sum);
		hex_encode(sum, sizeof(sum), hex);
		if (f) {
			fprintf(f, "request: %.*s\n", (int)line_len, req);
			if (have - head <= API_LOG_TEXT_MAX)
				fprintf(f, "body: %.*s\n", (int)(have - head), req + head);
			fprintf(f, "body-sha256: %s %zu\n", hex, have - head);
			fclose(f);
		}
	}
	char hdr[256];
	int k = snprintf(hdr, sizeof(hdr),
			 "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %zu\r\n"
			 "Connection: close\r\n\r\n",
			 a->body_len);
	if (write_full(fd, hdr, (size_t)k) == 0 && write_full(fd, a->body, a->body_len) == 0)
		a->served++;
	free(req);
}

static void *api_thread(void *arg)
{
	struct api_server *a = arg;
	for (;;) {
		struct pollfd pf[2] = { { a->listen_fd, POLLIN, 0 }, { a->quit[0], POLLIN, 0 } };
		if (poll(pf, 2, -1) < 0 && errno != EINTR)
			break;
		if (pf[1].revents)
			break;
		if (!pf[0].revents)
			continue;
		int c = accept4(a->listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0)
			continue;
		api_serve(a, c);
		close(c);
	}
	return NULL;
}

static int on_ready(void *arg, const struct sandbox_ready *rd)
{
	struct api_server *a = arg;
	fprintf(stderr, "sandbox_run: ready: pid %d, memory peak file %s\n", (int)rd->pid,
		rd->memory_peak_path[0] ? rd->memory_peak_path : "(none)");
	a->listen_fd = rd->runtime_api_fd;
	if (a->refuse)
		return -ECANCELED;
	if (a->listen_fd < 0)
		return 0;
	fcntl(a->listen_fd, F_SETFL, O_NONBLOCK);
	int r = pthread_create(&a->thread, NULL, api_thread, a);
	if (r != 0) {
		fprintf(stderr, "sandbox_run: start the Runtime API server: %s\n", strerror(r));
		return -r;
	}
	a->started = true;
	return 0;
}

/* --stop-on-signal: SIGUSR1 makes the stop descriptor readable. */
static int stop_pipe_w = -1;

static void on_sigusr1(int sig)
{
	(void)sig;
	(void)!write(stop_pipe_w, "s", 1);
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
	int i, status = 125, stop_fd = -1, stop_w = -1;
	struct api_server api = {.listen_fd = -1, .quit = {-1, -1}};
	for (i = 2; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		uint64_t n;
		if (strcmp(a, "--") == 0) {
			i++;
			break;
		} else if (strcmp(a, "--json") == 0) {
			json = true;
			continue;
		} else if (strcmp(a, "--ready-refuse") == 0) {
			api.refuse = true;
			spec.on_ready = on_ready;
			continue;
		} else if (strcmp(a, "--stop-on-signal") == 0 && stop_fd < 0) {
			int sp[2];
			if (pipe2(sp, O_CLOEXEC) < 0)
				goto done;
			stop_fd = sp[0];
			stop_w = stop_pipe_w = sp[1];
			struct sigaction sa = {.sa_handler = on_sigusr1};
			sigaction(SIGUSR1, &sa, NULL);
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
		} else if (strcmp(a, "--runtime-api") == 0 && parse_u64(v, &n) && n > 0 && n <= 65535) {
			spec.runtime_api_port = (uint16_t)n;
			spec.on_ready = on_ready;
		} else if (strcmp(a, "--runtime-api-body") == 0 && !api.body) {
			api.body = strdup(v);
			api.body_len = strlen(v);
		} else if (strcmp(a, "--runtime-api-body-file") == 0 && !api.body) {
			uint8_t *b;
			if (read_file_all(v, API_BODY_MAX, &b, &api.body_len) < 0) {
				fprintf(stderr, "sandbox_run: cannot read %s\n", v);
				goto done;
			}
			api.body = (char *)b;
		} else if (strcmp(a, "--runtime-api-log") == 0) {
			api.log_path = v;
		} else if (strcmp(a, "--stop-after") == 0 && atof(v) > 0 && stop_fd < 0) {
			double t = atof(v);
			struct itimerspec its = {.it_value = {.tv_sec = (time_t)t, .tv_nsec = (long)((t - (double)(time_t)t) * 1e9)}};
			if ((stop_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC)) < 0 ||
			    timerfd_settime(stop_fd, 0, &its, NULL) < 0) {
				fprintf(stderr, "sandbox_run: timerfd: %s\n", strerror(errno));
				goto done;
			}
		} else if (strcmp(a, "--userns") == 0 && strcmp(v, "off") == 0) {
			spec.userns_off = true;
		} else if (strcmp(a, "--userns") == 0 && sscanf(v, "%u:%u", &spec.userns_base, &spec.userns_count) == 2) {
			;
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

	if (!api.body && !(api.body = strdup("kindling-runtime-api\n")))
		goto done;
	if (!api.body_len)
		api.body_len = strlen(api.body);
	if (pipe2(api.quit, O_CLOEXEC) < 0)
		goto done;
	spec.ready_arg = &api;
	spec.stop_fd = stop_fd;
	spec.t0 = t0;
	struct sandbox_result res;
	int r = sandbox_run(ops, &spec, &res);
	if (api.started) {
		(void)!write(api.quit[1], "q", 1);
		pthread_join(api.thread, NULL);
	}
	if (r < 0)
		status = r == -ENOENT || r == -EACCES ? 127 : 125;
	else
		status = res.term_signal ? 128 + res.term_signal : res.exit_code;
	if (json) {
		json_t *j = json_pack("{s:s,s:i,s:i,s:i,s:b,s:b,s:b,s:b,s:b,s:I,s:i,s:f,s:f,s:I,s:I,s:s,s:s,s:s*}", "backend",
				      ops->name, "status", status, "exit_code", r < 0 ? -1 : res.exit_code,
				      "term_signal", r < 0 ? 0 : res.term_signal, "timed_out", r == 0 && res.timed_out,
				      "oom_killed", r == 0 && res.oom_killed, "stopped", r == 0 && res.stopped,
				      "pids_limited", r == 0 && res.pids_limited, "userns", r == 0 && res.userns,
				      "memory_peak", (json_int_t)(r < 0 ? 0 : res.memory_peak), "api_served",
				      (int)api.served, "first_output_s",
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
			"sandbox_run: backend %s, mount %s, cgroup %s: first output %.6f s, exit %.6f s, exit code %d%s%s%s\n",
			ops->name, res.mount_kind, res.cgroup_kind, res.first_output_s, res.exit_s, res.exit_code,
			res.term_signal ? ", killed by signal" : "", res.oom_killed ? " (OOM)" : "",
			res.stopped ? " (stopped)" : "");
	}
done:
	if (api.listen_fd >= 0)
		close(api.listen_fd);
	for (int k = 0; k < 2; k++)
		if (api.quit[k] >= 0)
			close(api.quit[k]);
	free(api.body);
	if (stop_fd >= 0)
		close(stop_fd);
	if (stop_w >= 0) {
		signal(SIGUSR1, SIG_DFL);
		close(stop_w);
	}
	str_list_clear(&env);
	strv_free(rc.entrypoint);
	strv_free(rc.cmd);
	strv_free(rc.env);
	free(rc.working_dir);
	free(rc.user);
	return status;
}
