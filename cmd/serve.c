/* kindling serve / logs / dlq: the Lambda-compatible function service on
 * one host, and the operator's views of its logs and dead letters.
 *
 *   kindling serve [--listen HOST:PORT] [--credentials FILE] [--store URI] [--state-dir DIR] [--no-auth]
 *                  [--isolation process|microvm|auto] [--memory-budget SIZE] [--idle-timeout S]
 *                  [--account-concurrency N] [--retry-delay-ms MS] [--async-workers N] [--region R] [-v]
 *                  [--agent URL | --etcd URL[,URL...] --placement URL[,URL...] [--frontend-id ID]]
 *   kindling logs FUNCTION [--state-dir DIR] [--bytes N]
 *   kindling dlq [--state-dir DIR | --etcd URL[,URL...]]
 *
 * Defaults (KINDLING_HOME, default ~/.kindling): the API on 127.0.0.1:9000,
 * the file store $KINDLING_HOME/store, state in $KINDLING_HOME/serve
 * (functions/, queue/, dlq/, agent/ with logs/), credentials in
 * $KINDLING_HOME/credentials (made with a fresh key, profile "kindling", on
 * the first start if missing).  The frontend (frontend/) and the host agent
 * (placement/hostagent/) do the work; this file only puts them together.
 * With --etcd it is one frontend of a fleet (placement/README.md): function
 * state, the Event queue and the concurrency limits live in etcd, and
 * invocations run on the fleet's `kindling agent`s through the router
 * (frontend/route.c), cold starts placed by --placement.  With --agent it
 * keeps its state in the directory but runs every invocation on that one
 * `kindling agent` (hostagent_remote_ops), which must read the same store.
 */
#define LOG_COMPONENT "kindling"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cmd/commands.h"
#include "common/common.h"
#include "common/http_server.h"
#include "common/etcd.h"
#include "common/sigv4.h"
#include "frontend/frontend.h"
#include "image/image.h"
#include "placement/hostagent/hostagent.h"

#define EXIT_USAGE 2

static void serve_usage(FILE *f)
{
	fprintf(f, "usage: kindling serve [--listen HOST:PORT] [--credentials FILE] [--store URI] [--state-dir DIR]\n"
		   "                      [--no-auth] [--isolation process|microvm|auto] [--memory-budget SIZE]\n"
		   "                      [--idle-timeout S] [--account-concurrency N] [--retry-delay-ms MS]\n"
		   "                      [--async-workers N] [--region REGION] [-v]\n"
		   "                      [--agent URL | --etcd URL[,URL...] --placement URL[,URL...]\n"
		   "                       [--frontend-id ID]]\n"
		   "       kindling logs FUNCTION [--state-dir DIR] [--bytes N]\n"
		   "       kindling dlq [--state-dir DIR | --etcd URL[,URL...]]\n");
}

/* $KINDLING_HOME/serve, or |dir|. */
static char *state_dir_or_default(const char *dir)
{
	if (dir)
		return strdup(dir);
	char *home = kindling_home_dir();
	char *s = home ? xasprintf("%s/serve", home) : NULL;
	free(home);
	return s;
}

/* Write a credentials file with one fresh key under profile "kindling". */
static int make_credentials(const char *path)
{
	static const char up[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
	static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	uint8_t r[56];
	int rc = random_bytes(r, sizeof(r));
	if (rc < 0)
		return rc;
	char id[21] = "AKIA", secret[41];
	for (int i = 0; i < 16; i++)
		id[4 + i] = up[r[i] % 32];
	id[20] = '\0';
	for (int i = 0; i < 40; i++)
		secret[i] = b64[r[16 + i] % 64];
	secret[40] = '\0';
	char *text = xasprintf("# kindling serve's access keys, in the AWS CLI's credentials format.\n"
			       "# Add a key: a new [profile] section with aws_access_key_id and aws_secret_access_key,\n"
			       "# then restart kindling serve.\n"
			       "[kindling]\naws_access_key_id = %s\naws_secret_access_key = %s\n",
			       id, secret);
	if (!text)
		return -ENOMEM;
	char *dir = strdup(path);
	char *slash = dir ? strrchr(dir, '/') : NULL;
	if (slash && slash != dir) {
		*slash = '\0';
		mkdir_p(dir, 0700);
	}
	free(dir);
	rc = write_file_atomic(path, text, strlen(text), 0600);
	explicit_bzero(text, strlen(text));
	free(text);
	return rc;
}

/* A frontend's id in the fleet when --frontend-id is not given: the
 * machine's name and the API's port, "web1-9000" (etcd key-safe). */
static char *fleet_frontend_id(const char *listen)
{
	char host[64] = "frontend";
	gethostname(host, sizeof(host) - 1);
	host[sizeof(host) - 1] = 0;
	const char *port = strrchr(listen, ':');
	char *id = xasprintf("%.40s-%.8s", host, port ? port + 1 : "0");
	for (char *p = id; p && *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
		      *p == '_' || *p == '.'))
			*p = '_';
	return id;
}

int cmd_serve(int argc, char **argv)
{
	const char *listen = "127.0.0.1:9000", *creds = NULL, *store = NULL, *state_arg = NULL, *isolation = NULL;
	const char *region = NULL, *etcd_urls = NULL, *placement_urls = NULL, *frontend_id = NULL, *agent_url = NULL;
	bool no_auth = false;
	uint64_t budget = 0;
	double idle = 0;
	unsigned account = 0, retry_ms = 0, workers = 0;
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		bool takes = true;
		if (strcmp(a, "--no-auth") == 0) {
			no_auth = true;
			takes = false;
		} else if (strcmp(a, "-v") == 0) {
			log_set_level(LOG_DEBUG);
			takes = false;
		} else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			serve_usage(stdout);
			return 0;
		} else if (!v) {
			fprintf(stderr, "kindling serve: unknown option or missing value: %s\n", a);
			serve_usage(stderr);
			return EXIT_USAGE;
		} else if (strcmp(a, "--listen") == 0) {
			listen = v;
		} else if (strcmp(a, "--credentials") == 0) {
			creds = v;
		} else if (strcmp(a, "--store") == 0) {
			store = v;
		} else if (strcmp(a, "--state-dir") == 0) {
			state_arg = v;
		} else if (strcmp(a, "--isolation") == 0) {
			isolation = v;
		} else if (strcmp(a, "--region") == 0) {
			region = v;
		} else if (strcmp(a, "--etcd") == 0) {
			etcd_urls = v;
		} else if (strcmp(a, "--agent") == 0) {
			agent_url = v;
		} else if (strcmp(a, "--placement") == 0) {
			placement_urls = v;
		} else if (strcmp(a, "--frontend-id") == 0) {
			frontend_id = v;
		} else if (strcmp(a, "--memory-budget") == 0) {
			if (parse_size(v, &budget) < 0) {
				fprintf(stderr, "kindling serve: --memory-budget %s: give a size such as 2G\n", v);
				return EXIT_USAGE;
			}
		} else if (strcmp(a, "--idle-timeout") == 0 || strcmp(a, "--account-concurrency") == 0 ||
			   strcmp(a, "--retry-delay-ms") == 0 || strcmp(a, "--async-workers") == 0) {
			char *end;
			double d = strtod(v, &end);
			if (!*v || *end || d <= 0 || d > 1e9) {
				fprintf(stderr, "kindling serve: %s %s: give a positive number\n", a, v);
				return EXIT_USAGE;
			}
			if (strcmp(a, "--idle-timeout") == 0)
				idle = d;
			else if (strcmp(a, "--account-concurrency") == 0)
				account = (unsigned)d;
			else if (strcmp(a, "--retry-delay-ms") == 0)
				retry_ms = (unsigned)d;
			else
				workers = (unsigned)d;
		} else {
			fprintf(stderr, "kindling serve: unknown option %s\n", a);
			serve_usage(stderr);
			return EXIT_USAGE;
		}
		if (takes)
			i++;
	}

	if (agent_url && etcd_urls) {
		fprintf(stderr, "kindling serve: give --agent URL (one remote agent) or --etcd (a fleet), not both\n");
		return EXIT_USAGE;
	}
	if ((agent_url || etcd_urls) && (isolation || budget || idle > 0)) {
		fprintf(stderr, "kindling serve: --isolation, --memory-budget and --idle-timeout are the agents' options "
				"with --agent or --etcd: give them to kindling agent\n");
		return EXIT_USAGE;
	}

	int status = 1;
	char *home = kindling_home_dir();
	char *state = state_dir_or_default(state_arg);
	char *def_store = home ? xasprintf("%s/store", home) : NULL;
	char *def_creds = home ? xasprintf("%s/credentials", home) : NULL;
	char *fn_dir = state ? xasprintf("%s/functions", state) : NULL;
	char *agent_dir = state ? xasprintf("%s/agent", state) : NULL;
	char *l1_dir = state ? xasprintf("%s/l1", state) : NULL;
	struct sigv4_keys *keys = NULL;
	struct hostagent *agent = NULL;
	struct etcd *etcd = NULL;
	struct frontend_router *router = NULL;
	struct hostagent_remote *remote = NULL;
	char *fe_id = NULL;
	void *st = NULL;
	struct frontend *fe = NULL;
	struct http_server *srv = NULL;
	if (!home || !state || !def_store || !def_creds || !fn_dir || !agent_dir || !l1_dir) {
		fprintf(stderr, "kindling serve: out of memory or no home directory (set KINDLING_HOME)\n");
		goto out;
	}
	if (mkdir_p(state, 0700) < 0) {
		fprintf(stderr, "kindling serve: cannot create the state directory %s: %s\n", state, strerror(errno));
		goto out;
	}
	if (!creds)
		creds = def_creds;
	if (no_auth) {
		log_warn("authentication is OFF (--no-auth): anyone who can reach %s can create and invoke functions",
			 listen);
	} else {
		char err[512];
		int r = sigv4_keys_load(creds, &keys, err, sizeof(err));
		if (r == -ENOENT && strcmp(creds, def_creds) == 0) {
			if ((r = make_credentials(creds)) < 0) {
				fprintf(stderr, "kindling serve: cannot write %s: %s\n", creds, strerror(-r));
				goto out;
			}
			fprintf(stderr, "kindling serve: made a new access key in %s (profile \"kindling\")\n", creds);
			r = sigv4_keys_load(creds, &keys, err, sizeof(err));
		}
		if (r < 0) {
			fprintf(stderr, "kindling serve: %s\n(give --credentials FILE in the AWS CLI's credentials format, or --no-auth)\n",
				err);
			goto out;
		}
		if (sigv4_keys_count(keys) == 0) {
			fprintf(stderr, "kindling serve: %s holds no access key; add a [profile] with aws_access_key_id and aws_secret_access_key\n",
				creds);
			goto out;
		}
	}

	/* Signals go to the thread that waits for them below. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	struct cmd_agent_opts ao = {
		.store = store ? store : def_store,
		.l1_dir = l1_dir,
		.state_dir = agent_dir,
		.isolation = isolation,
		.region = region,
		.memory_budget = budget,
		.idle_timeout_s = idle,
	};
	int r;
	const struct hostagent_ops *agent_ops = &hostagent_local_ops;
	void *agent_arg;
	if (etcd_urls) {
		/* One frontend of a fleet: state in etcd, invocations on the
		 * fleet's host agents, no agent of its own. */
		if (!placement_urls) {
			fprintf(stderr, "kindling serve: --etcd needs --placement URL[,URL] (the placement services that "
					"choose hosts for cold starts)\n");
			goto out;
		}
		fe_id = frontend_id ? strdup(frontend_id) : fleet_frontend_id(listen);
		struct etcd_config ecfg = { .endpoints = etcd_urls };
		struct frontend_router_config rcfg = { .placement_urls = placement_urls };
		if (!fe_id || (r = etcd_new(&ecfg, &etcd)) < 0)
			goto out;
		rcfg.etcd = etcd;
		if ((r = frontend_router_new(&rcfg, &router)) < 0 || (r = frontend_state_etcd_open(etcd, &st)) < 0)
			goto out;
		agent_ops = &frontend_router_ops;
		agent_arg = router;
	} else if (agent_url) {
		/* State here, invocations (and SnapStart's snapshots) on one
		 * remote agent. */
		if ((r = hostagent_remote_new(agent_url, 0, &remote)) < 0 ||
		    (r = frontend_state_dir_open(fn_dir, &st)) < 0)
			goto out;
		agent_ops = &hostagent_remote_ops;
		agent_arg = remote;
	} else {
		if ((r = cmd_hostagent_start("kindling serve", &ao, &agent)) < 0)
			goto out;
		if ((r = frontend_state_dir_open(fn_dir, &st)) < 0)
			goto out;
		agent_arg = agent;
	}
	struct frontend_config fcfg = {
		.agent_ops = agent_ops,
		.agent_arg = agent_arg,
		.state_ops = etcd ? &frontend_state_etcd_ops : &frontend_state_dir_ops,
		.state_arg = st,
		.etcd = etcd,
		.frontend_id = fe_id,
		.keys = keys,
		.state_dir = state,
		.store_uri = store,
		.region = region,
		.account_concurrency = account,
		.retry_delay_ms = retry_ms,
		.async_workers = workers,
	};
	if ((r = frontend_new(&fcfg, &fe)) < 0) {
		fprintf(stderr, "kindling serve: the frontend did not start: %s (see the messages above)\n", strerror(-r));
		goto out;
	}
	struct http_server_config hcfg = {
		.ops = &frontend_http_ops,
		.arg = fe,
		.io_timeout_ms = 60000,
		.max_body = 6u << 20,
		.name = "lambda api",
	};
	if ((r = http_server_start(&hcfg, listen, &srv)) < 0) {
		fprintf(stderr, "kindling serve: cannot listen on %s: %s\n", listen, strerror(-r));
		goto out;
	}
	printf("kindling serve: Lambda API on http://%s (state %s", http_server_address(srv), state);
	if (keys)
		printf(", credentials %s", creds);
	printf(")\n");
	if (keys)
		printf("  try: AWS_SHARED_CREDENTIALS_FILE=%s aws --profile PROFILE --region us-east-1 --endpoint-url http://%s lambda list-functions\n"
		       "  (PROFILE: a [section] of that file; the one kindling generates is \"kindling\")\n",
		       creds, http_server_address(srv));
	fflush(stdout);
	int sig = 0;
	while (sigwait(&set, &sig) != 0)
		;
	log_info("signal %d: stopping", sig);
	status = 0;
out:
	http_server_free(srv);
	frontend_free(fe);
	hostagent_free(agent);
	frontend_router_free(router);
	hostagent_remote_free(remote);
	if (etcd)
		frontend_state_etcd_close(st);
	else
		frontend_state_dir_close(st);
	etcd_free(etcd);
	free(fe_id);
	sigv4_keys_free(keys);
	free(home);
	free(state);
	free(def_store);
	free(def_creds);
	free(fn_dir);
	free(agent_dir);
	free(l1_dir);
	return status;
}

/* Parse "[--state-dir DIR] [--bytes N]" after the positional arguments. */
static int state_opts(int argc, char **argv, const char **state, uint64_t *bytes)
{
	for (int i = 0; i < argc; i += 2) {
		if (i + 1 >= argc)
			return -1;
		if (strcmp(argv[i], "--state-dir") == 0)
			*state = argv[i + 1];
		else if (bytes && strcmp(argv[i], "--bytes") == 0 && parse_size(argv[i + 1], bytes) == 0)
			;
		else
			return -1;
	}
	return 0;
}

int cmd_logs(int argc, char **argv)
{
	const char *state_arg = NULL;
	uint64_t max = 1u << 20;
	if (argc < 1 || argv[0][0] == '-' || state_opts(argc - 1, argv + 1, &state_arg, &max) < 0) {
		serve_usage(stderr);
		return EXIT_USAGE;
	}
	if (!frontend_valid_function_name(argv[0])) {
		fprintf(stderr, "kindling logs: '%s' is not a function name\n", argv[0]);
		return EXIT_USAGE;
	}
	char *state = state_dir_or_default(state_arg);
	char *cur = state ? xasprintf("%s/agent/logs/%s.log", state, argv[0]) : NULL;
	char *old = state ? xasprintf("%s/agent/logs/%s.log.1", state, argv[0]) : NULL;
	uint8_t *a = NULL, *b = NULL;
	size_t al = 0, bl = 0;
	int ra = old ? read_file_all(old, 64u << 20, &a, &al) : -ENOMEM;
	int rb = cur ? read_file_all(cur, 64u << 20, &b, &bl) : -ENOMEM;
	int status = 0;
	if (ra < 0 && rb < 0) {
		fprintf(stderr, "kindling logs: no log for function %s in %s/agent/logs (has it run?)\n", argv[0],
			state ? state : "?");
		status = 1;
	} else {
		size_t skip = al + bl > max ? al + bl - max : 0;
		size_t s1 = skip < al ? skip : al;
		fwrite(a + s1, 1, al - s1, stdout);
		size_t s2 = skip > al ? skip - al : 0;
		fwrite(b + s2, 1, bl - s2, stdout);
	}
	free(a);
	free(b);
	free(cur);
	free(old);
	free(state);
	return status;
}

static int cmp_names(const void *x, const void *y)
{
	return strcmp(*(char *const *)x, *(char *const *)y);
}

/* The dead letters of a fleet, from etcd. */
static int dlq_etcd(const char *urls)
{
	struct etcd_config ecfg = { .endpoints = urls };
	struct etcd *e = NULL;
	struct str_list letters = { 0 };
	int r = etcd_new(&ecfg, &e);
	if (r == 0)
		r = frontend_dlq_etcd_list(e, &letters);
	if (r < 0)
		fprintf(stderr, "kindling dlq: cannot read the dead letters from etcd at %s: %s\n", urls, strerror(-r));
	for (size_t i = 0; i < letters.n; i++)
		printf("%s\n", letters.items[i]);
	str_list_clear(&letters);
	etcd_free(e);
	return r < 0 ? 1 : 0;
}

int cmd_dlq(int argc, char **argv)
{
	const char *state_arg = NULL;
	if (argc == 2 && strcmp(argv[0], "--etcd") == 0)
		return dlq_etcd(argv[1]);
	if (state_opts(argc, argv, &state_arg, NULL) < 0) {
		serve_usage(stderr);
		return EXIT_USAGE;
	}
	char *state = state_dir_or_default(state_arg);
	char *dir = state ? xasprintf("%s/dlq", state) : NULL;
	DIR *d = dir ? opendir(dir) : NULL;
	if (!d) {
		if (errno == ENOENT) {
			free(dir);
			free(state);
			return 0; /* nothing dead-lettered yet */
		}
		fprintf(stderr, "kindling dlq: %s: %s\n", dir ? dir : "?", strerror(errno));
		free(dir);
		free(state);
		return 1;
	}
	struct str_list names = { 0 };
	struct dirent *e;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.' && strstr(e->d_name, ".json"))
			str_list_add(&names, e->d_name);
	closedir(d);
	if (names.n)
		qsort(names.items, names.n, sizeof(char *), cmp_names);
	for (size_t i = 0; i < names.n; i++) {
		char *p = xasprintf("%s/%s", dir, names.items[i]);
		uint8_t *buf = NULL;
		size_t len = 0;
		if (p && read_file_all(p, 8u << 20, &buf, &len) == 0) {
			fwrite(buf, 1, len, stdout);
			putchar('\n');
		}
		free(buf);
		free(p);
	}
	str_list_clear(&names);
	free(dir);
	free(state);
	return 0;
}
