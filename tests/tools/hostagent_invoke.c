/* hostagent_invoke: drive a real host agent (placement/hostagent/) from a
 * script, for tests/integration/75-hostagent.sh.
 *
 *   hostagent_invoke --state DIR [--store URI] [--l1-dir DIR] [--budget MB] [--idle S]
 *                    [--isolation KIND] [--log-max BYTES] < SCRIPT
 *
 * It starts one agent (its blockd, FUSE mount and sandboxes under DIR) and
 * runs the script's commands, one per line, printing one JSON object per
 * result on stdout:
 *
 *   fn ALIAS key=value...    define a function: name= (default ALIAS), image=DIGEST (required),
 *                            version= ($LATEST), revision= (r1), memory= MB (128), timeout= s (3),
 *                            mode=api|stdio (api), env=K=V (repeatable), entrypoint=a,b,
 *                            command=a,b, workdir=DIR
 *   invoke ALIAS [tail] PAYLOAD     one invocation; PAYLOAD is the rest of the line
 *   start TAG ALIAS PAYLOAD         the same in the background; its result is printed by
 *   wait TAG                        ... this
 *   par ALIAS N PAYLOAD             N invocations at once; N results, in the order they end
 *   provision ALIAS N               hostagent_provision
 *   drain ALIAS VERSION|- REVISION|-   hostagent_drain of ALIAS's function name
 *   await FIELD OP VALUE            wait (at most 120 s) until a stats field compares so
 *                                   (OP: ==, >=, <=); exit 1 if it never does
 *   stats                           hostagent_get_stats
 *   log ALIAS                       the function's log, as {"log": "..."}
 *
 * An invocation's object: {"tag", "rc" (0 or -errno), "outcome" ("ok" or
 * "error"), "payload" (parsed if JSON, else a string), "cold", "init_s",
 * "duration_s", "max_memory", "tail" (with `invoke ALIAS tail`)}.  Exit
 * status 0 when the script ran to its end. */
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/common.h"
#include "image/image.h"
#include "placement/hostagent/hostagent.h"

#define MAX_FNS 32
#define MAX_JOBS 256

struct fn_def {
	char *alias;
	struct hostagent_function f;
	struct str_list env;
	char **entrypoint, **command;
	char *strings[8]; /* owned copies behind f's pointers */
	size_t n_strings;
};

struct job {
	char tag[64];
	const struct fn_def *fn;
	char *payload;
	bool tail;
	pthread_t thread;
	bool running;
	json_t *result;
};

static struct hostagent *agent;
static struct fn_def fns[MAX_FNS];
static size_t n_fns;
static struct job jobs[MAX_JOBS];
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static void emit(json_t *j)
{
	char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
	pthread_mutex_lock(&out_lock);
	printf("%s\n", s ? s : "{\"error\":\"out of memory\"}");
	fflush(stdout);
	pthread_mutex_unlock(&out_lock);
	free(s);
}

static const struct fn_def *find_fn(const char *alias)
{
	for (size_t i = 0; i < n_fns; i++)
		if (strcmp(fns[i].alias, alias) == 0)
			return &fns[i];
	fprintf(stderr, "hostagent_invoke: no function %s (define it with `fn`)\n", alias);
	exit(2);
}

static char *keep(struct fn_def *d, const char *s)
{
	char *c = strdup(s);
	if (!c || d->n_strings == sizeof(d->strings) / sizeof(d->strings[0]))
		exit(2);
	d->strings[d->n_strings++] = c;
	return c;
}

/* "a,b,c" as a NULL-terminated array. */
static char **split_commas(const char *s)
{
	size_t n = 1;
	for (const char *p = s; *p; p++)
		n += *p == ',';
	char **v = calloc(n + 1, sizeof(*v)), *dup = strdup(s), *save = NULL;
	size_t i = 0;
	for (char *t = strtok_r(dup, ",", &save); t; t = strtok_r(NULL, ",", &save))
		v[i++] = strdup(t);
	free(dup);
	return v;
}

static void define_fn(char *args)
{
	if (n_fns == MAX_FNS)
		exit(2);
	struct fn_def *d = &fns[n_fns++];
	char *save = NULL, *alias = strtok_r(args, " \t", &save);
	if (!alias)
		exit(2);
	d->alias = strdup(alias);
	d->f = (struct hostagent_function){ .name = d->alias, .version = "$LATEST", .revision_id = "r1",
					    .memory_mb = 128, .timeout_s = 3 };
	for (char *kv = strtok_r(NULL, " \t", &save); kv; kv = strtok_r(NULL, " \t", &save)) {
		char *eq = strchr(kv, '=');
		if (!eq) {
			fprintf(stderr, "hostagent_invoke: fn %s: bad argument %s\n", alias, kv);
			exit(2);
		}
		*eq = '\0';
		const char *k = kv, *v = eq + 1;
		if (strcmp(k, "name") == 0)
			d->f.name = keep(d, v);
		else if (strcmp(k, "image") == 0)
			d->f.image_digest = keep(d, v);
		else if (strcmp(k, "version") == 0)
			d->f.version = keep(d, v);
		else if (strcmp(k, "revision") == 0)
			d->f.revision_id = keep(d, v);
		else if (strcmp(k, "memory") == 0)
			d->f.memory_mb = (uint32_t)atoi(v);
		else if (strcmp(k, "timeout") == 0)
			d->f.timeout_s = (uint32_t)atoi(v);
		else if (strcmp(k, "mode") == 0)
			d->f.mode = strcmp(v, "stdio") == 0 ? HOSTAGENT_MODE_STDIO : HOSTAGENT_MODE_RUNTIME_API;
		else if (strcmp(k, "env") == 0)
			str_list_add(&d->env, v);
		else if (strcmp(k, "entrypoint") == 0)
			d->f.entrypoint = d->entrypoint = split_commas(v);
		else if (strcmp(k, "command") == 0)
			d->f.command = d->command = split_commas(v);
		else if (strcmp(k, "workdir") == 0)
			d->f.working_dir = keep(d, v);
		else {
			fprintf(stderr, "hostagent_invoke: fn %s: unknown key %s\n", alias, k);
			exit(2);
		}
	}
	if (d->env.n) {
		str_list_add(&d->env, "");
		free(d->env.items[--d->env.n]);
		d->env.items[d->env.n] = NULL;
		d->f.env = d->env.items;
	}
	if (!d->f.image_digest) {
		fprintf(stderr, "hostagent_invoke: fn %s: image= is required\n", alias);
		exit(2);
	}
}

static void uuid4(char out[37])
{
	uint8_t b[16];
	if (random_bytes(b, sizeof(b)) < 0)
		memset(b, 7, sizeof(b));
	b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
	b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
	snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3],
		 b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

static json_t *invoke_once(const char *tag, const struct fn_def *d, const char *payload, bool tail)
{
	char id[37];
	uuid4(id);
	struct hostagent_invoke_request req = {
		.fn = &d->f,
		.payload = (const uint8_t *)payload,
		.payload_len = strlen(payload),
		.request_id = id,
		.want_log_tail = tail,
	};
	struct hostagent_invoke_result res;
	int rc = hostagent_invoke(agent, &req, &res);
	json_t *j = json_object();
	json_object_set_new(j, "tag", json_string(tag));
	json_object_set_new(j, "request_id", json_string(id));
	json_object_set_new(j, "rc", json_integer(rc));
	if (rc == 0) {
		json_object_set_new(j, "outcome", json_string(res.outcome == HOSTAGENT_OK ? "ok" : "error"));
		json_error_t e;
		json_t *p = res.payload ? json_loadb((const char *)res.payload, res.payload_len, JSON_DECODE_ANY, &e) : NULL;
		if (!p)
			p = json_stringn(res.payload ? (const char *)res.payload : "", res.payload_len);
		json_object_set_new(j, "payload", p ? p : json_null());
		json_object_set_new(j, "cold", json_boolean(res.cold));
		json_object_set_new(j, "init_s", json_real(res.init_s));
		json_object_set_new(j, "duration_s", json_real(res.duration_s));
		json_object_set_new(j, "max_memory", json_integer((json_int_t)res.max_memory));
		if (tail)
			json_object_set_new(j, "tail", res.log_tail ? json_string(res.log_tail) : json_null());
	} else {
		json_object_set_new(j, "error", json_string(strerror(-rc)));
	}
	hostagent_invoke_result_cleanup(&res);
	return j;
}

static void *job_main(void *arg)
{
	struct job *jb = arg;
	jb->result = invoke_once(jb->tag, jb->fn, jb->payload, jb->tail);
	return NULL;
}

static struct job *new_job(const char *tag, const struct fn_def *d, const char *payload)
{
	for (size_t i = 0; i < MAX_JOBS; i++)
		if (!jobs[i].running && !jobs[i].result) {
			struct job *jb = &jobs[i];
			snprintf(jb->tag, sizeof(jb->tag), "%s", tag);
			jb->fn = d;
			jb->payload = strdup(payload);
			jb->running = true;
			if (pthread_create(&jb->thread, NULL, job_main, jb) != 0)
				exit(2);
			return jb;
		}
	fprintf(stderr, "hostagent_invoke: too many jobs\n");
	exit(2);
}

static void finish_job(struct job *jb)
{
	pthread_join(jb->thread, NULL);
	emit(jb->result);
	json_decref(jb->result);
	free(jb->payload);
	memset(jb, 0, sizeof(*jb));
}

static json_t *stats_json(void)
{
	struct hostagent_stats s;
	hostagent_get_stats(agent, &s);
	return json_pack("{s:I,s:I,s:i,s:i,s:i,s:i,s:i,s:I,s:I,s:I,s:I}", "memory_budget", (json_int_t)s.memory_budget,
			 "memory_in_use", (json_int_t)s.memory_in_use, "sandboxes", s.sandboxes, "starting", s.starting,
			 "busy", s.busy, "idle", s.idle, "provisioned", s.provisioned, "cold_starts",
			 (json_int_t)s.cold_starts, "warm_starts", (json_int_t)s.warm_starts, "evictions",
			 (json_int_t)s.evictions, "expirations", (json_int_t)s.expirations);
}

static bool compare(json_int_t a, const char *op, json_int_t b)
{
	return strcmp(op, "==") == 0 ? a == b : strcmp(op, ">=") == 0 ? a >= b : strcmp(op, "<=") == 0 ? a <= b : false;
}

/* The rest of the line after |n| words. */
static char *rest_after(char *line, int n)
{
	char *p = line;
	for (int i = 0; i < n; i++) {
		p += strspn(p, " \t");
		p += strcspn(p, " \t");
	}
	return p + strspn(p, " \t");
}

static void run_line(char *line)
{
	char *words[4] = { 0 }, copy[4096];
	size_t line_len = strnlen(line, sizeof(copy) - 1);
	memcpy(copy, line, line_len);
	copy[line_len] = '\0';
	char *save = NULL;
	for (int i = 0; i < 4; i++)
		words[i] = strtok_r(i ? NULL : copy, " \t", &save);
	const char *cmd = words[0];
	if (!cmd || cmd[0] == '#')
		return;
	if (strcmp(cmd, "fn") == 0) {
		define_fn(rest_after(line, 1));
	} else if (strcmp(cmd, "invoke") == 0 && words[1]) {
		bool tail = words[2] && strcmp(words[2], "tail") == 0;
		json_t *j = invoke_once("invoke", find_fn(words[1]), rest_after(line, tail ? 3 : 2), tail);
		emit(j);
		json_decref(j);
	} else if (strcmp(cmd, "start") == 0 && words[2]) {
		new_job(words[1], find_fn(words[2]), rest_after(line, 3));
	} else if (strcmp(cmd, "wait") == 0 && words[1]) {
		for (size_t i = 0; i < MAX_JOBS; i++)
			if (jobs[i].running && strcmp(jobs[i].tag, words[1]) == 0)
				finish_job(&jobs[i]);
	} else if (strcmp(cmd, "par") == 0 && words[2]) {
		const struct fn_def *d = find_fn(words[1]);
		int n = atoi(words[2]);
		const char *payload = rest_after(line, 3);
		struct job *started[MAX_JOBS];
		for (int i = 0; i < n && i < MAX_JOBS; i++)
			started[i] = new_job("par", d, payload);
		for (int i = 0; i < n && i < MAX_JOBS; i++)
			finish_job(started[i]);
	} else if (strcmp(cmd, "provision") == 0 && words[2]) {
		int rc = hostagent_provision(agent, &find_fn(words[1])->f, (unsigned)atoi(words[2]));
		json_t *j = json_pack("{s:s,s:i}", "tag", "provision", "rc", rc);
		emit(j);
		json_decref(j);
	} else if (strcmp(cmd, "drain") == 0 && words[3]) {
		hostagent_drain(agent, find_fn(words[1])->f.name, strcmp(words[2], "-") ? words[2] : NULL,
				strcmp(words[3], "-") ? words[3] : NULL);
		json_t *j = json_pack("{s:s}", "tag", "drain");
		emit(j);
		json_decref(j);
	} else if (strcmp(cmd, "await") == 0 && words[3]) {
		json_int_t want = atoll(words[3]);
		for (int i = 0; i < 1200; i++) { /* at most 120 s */
			json_t *s = stats_json();
			json_int_t v = json_integer_value(json_object_get(s, words[1]));
			json_decref(s);
			if (compare(v, words[2], want)) {
				json_t *j = json_pack("{s:s,s:s,s:I}", "tag", "await", "field", words[1], "value", v);
				emit(j);
				json_decref(j);
				return;
			}
			usleep(100000);
		}
		json_t *s = stats_json();
		char *d = json_dumps(s, JSON_COMPACT);
		fprintf(stderr, "hostagent_invoke: %s never became %s %s; stats: %s\n", words[1], words[2], words[3], d);
		free(d);
		json_decref(s);
		/* Sandboxes and jobs still run: leave without tearing anything
		 * down under them. */
		fflush(stdout);
		_exit(1);
	} else if (strcmp(cmd, "stats") == 0) {
		json_t *j = stats_json();
		json_object_set_new(j, "tag", json_string("stats"));
		emit(j);
		json_decref(j);
	} else if (strcmp(cmd, "log") == 0 && words[1]) {
		char *log = NULL;
		size_t len = 0;
		int rc = hostagent_read_log(agent, find_fn(words[1])->f.name, 1 << 20, &log, &len);
		json_t *j = json_pack("{s:s,s:i,s:s%}", "tag", "log", "rc", rc, "log", rc == 0 ? log : "", rc == 0 ? len : 0);
		emit(j);
		json_decref(j);
		free(log);
	} else {
		fprintf(stderr, "hostagent_invoke: bad command: %s\n", line);
		exit(2);
	}
}

int main(int argc, char **argv)
{
	log_set_program("hostagent_invoke");
	signal(SIGPIPE, SIG_IGN);
	struct hostagent_config cfg = { 0 };
	const char *store = NULL, *l1 = NULL;
	for (int i = 1; i + 1 < argc; i += 2) {
		const char *k = argv[i], *v = argv[i + 1];
		if (strcmp(k, "--state") == 0)
			cfg.state_dir = v;
		else if (strcmp(k, "--store") == 0)
			store = v;
		else if (strcmp(k, "--l1-dir") == 0)
			l1 = v;
		else if (strcmp(k, "--budget") == 0)
			cfg.memory_budget = strtoull(v, NULL, 10) << 20;
		else if (strcmp(k, "--idle") == 0)
			cfg.idle_timeout_s = atof(v);
		else if (strcmp(k, "--isolation") == 0)
			cfg.isolation = v;
		else if (strcmp(k, "--log-max") == 0)
			cfg.log_max_bytes = strtoull(v, NULL, 10);
		else {
			fprintf(stderr, "usage: hostagent_invoke --state DIR [--store URI] [--l1-dir DIR] [--budget MB] "
					"[--idle S] [--isolation KIND] [--log-max BYTES] < SCRIPT\n");
			return 2;
		}
	}
	char *home = kindling_home_dir(), *default_store = home ? xasprintf("%s/store", home) : NULL;
	cfg.cache.origin_uri = store ? store : default_store;
	cfg.cache.l1_dir = l1;
	if (!cfg.state_dir || !cfg.cache.origin_uri) {
		fprintf(stderr, "hostagent_invoke: --state is required\n");
		return 2;
	}
	int r = hostagent_new(&cfg, &agent);
	if (r < 0) {
		fprintf(stderr, "hostagent_invoke: cannot start the agent: %s\n", strerror(-r));
		return 1;
	}
	char line[1 << 16];
	while (fgets(line, sizeof(line), stdin)) {
		line[strcspn(line, "\n")] = '\0';
		run_line(line);
	}
	for (size_t i = 0; i < MAX_JOBS; i++)
		if (jobs[i].running)
			finish_job(&jobs[i]);
	hostagent_free(agent);
	for (size_t i = 0; i < n_fns; i++) {
		free(fns[i].alias);
		str_list_clear(&fns[i].env);
		strv_free(fns[i].entrypoint);
		strv_free(fns[i].command);
		for (size_t k = 0; k < fns[i].n_strings; k++)
			free(fns[i].strings[k]);
	}
	free(default_store);
	free(home);
	return 0;
}
