/* kindling agent: one host of a fleet.  The host agent
 * (placement/hostagent/) in a process of its own, serving its HTTP API to
 * frontends on other hosts, and registered in etcd when given --etcd.
 *
 *   kindling agent --listen HOST:PORT [--home DIR] [--etcd URLS] [--host-id ID] [--cell NAME]
 *                  [--url URL] [--store URI] [--l1 DIR] [--memory-budget SIZE]
 *                  [--isolation process|microvm|auto] [--idle-timeout S] [--region R] [-v]
 *
 * Defaults (--home sets KINDLING_HOME, default ~/.kindling): the file store
 * $KINDLING_HOME/store, state (FUSE mount, logs) in $KINDLING_HOME/agent, L1
 * in $KINDLING_HOME/agent-l1, the host id from gethostname(), the URL
 * http://LISTEN.  SIGTERM or SIGINT: the registration's lease is revoked
 * (the host leaves etcd at once), the API stops, the sandboxes end.
 *
 * cmd_hostagent_start, the agent's set-up shared with `kindling serve`,
 * lives here too.
 */
#define LOG_COMPONENT "kindling"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd/commands.h"
#include "common/common.h"
#include "image/image.h"
#include "placement/hostagent/hostagent.h"

#define EXIT_USAGE 2

int cmd_hostagent_start(const char *prog, const struct cmd_agent_opts *o, struct hostagent **out)
{
	struct hostagent_config acfg = { 0 };
	acfg.cache.origin_uri = o->store;
	acfg.cache.l1_dir = o->l1_dir;
	acfg.state_dir = o->state_dir;
	acfg.isolation = o->isolation;
	acfg.memory_budget = o->memory_budget;
	acfg.idle_timeout_s = o->idle_timeout_s;
	acfg.region = o->region;
	int r = hostagent_new(&acfg, out);
	if (r < 0)
		fprintf(stderr, "%s: the host agent did not start: %s (see the messages above)\n", prog, strerror(-r));
	return r;
}

static void agent_usage(FILE *f)
{
	fprintf(f, "usage: kindling agent --listen HOST:PORT [--home DIR] [--etcd URLS] [--host-id ID] [--cell NAME]\n"
		   "                      [--url URL] [--store URI] [--l1 DIR] [--memory-budget SIZE]\n"
		   "                      [--isolation process|microvm|auto] [--idle-timeout S] [--region R] [-v]\n");
}

int cmd_agent(int argc, char **argv)
{
	const char *listen = NULL, *home_arg = NULL, *etcd = NULL, *host_id = NULL, *cell = NULL, *url_arg = NULL;
	struct cmd_agent_opts o = { 0 };
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "-v") == 0) {
			log_set_level(LOG_DEBUG);
			continue;
		}
		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			agent_usage(stdout);
			return 0;
		}
		if (!v) {
			fprintf(stderr, "kindling agent: unknown option or missing value: %s\n", a);
			agent_usage(stderr);
			return EXIT_USAGE;
		}
		i++;
		if (strcmp(a, "--listen") == 0)
			listen = v;
		else if (strcmp(a, "--home") == 0)
			home_arg = v;
		else if (strcmp(a, "--etcd") == 0)
			etcd = v;
		else if (strcmp(a, "--host-id") == 0)
			host_id = v;
		else if (strcmp(a, "--cell") == 0)
			cell = v;
		else if (strcmp(a, "--url") == 0)
			url_arg = v;
		else if (strcmp(a, "--store") == 0)
			o.store = v;
		else if (strcmp(a, "--l1") == 0)
			o.l1_dir = v;
		else if (strcmp(a, "--isolation") == 0)
			o.isolation = v;
		else if (strcmp(a, "--region") == 0)
			o.region = v;
		else if (strcmp(a, "--memory-budget") == 0) {
			if (parse_size(v, &o.memory_budget) < 0 || o.memory_budget == 0) {
				fprintf(stderr, "kindling agent: --memory-budget %s: give a size such as 2G\n", v);
				return EXIT_USAGE;
			}
		} else if (strcmp(a, "--idle-timeout") == 0) {
			char *end;
			o.idle_timeout_s = strtod(v, &end);
			if (!*v || *end || o.idle_timeout_s <= 0 || o.idle_timeout_s > 1e9) {
				fprintf(stderr, "kindling agent: --idle-timeout %s: give a positive number of seconds\n", v);
				return EXIT_USAGE;
			}
		} else {
			fprintf(stderr, "kindling agent: unknown option %s\n", a);
			agent_usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (!listen) {
		fprintf(stderr, "kindling agent: --listen HOST:PORT is required\n");
		agent_usage(stderr);
		return EXIT_USAGE;
	}
	if (home_arg && setenv("KINDLING_HOME", home_arg, 1) < 0) {
		fprintf(stderr, "kindling agent: cannot set KINDLING_HOME: %s\n", strerror(errno));
		return 1;
	}
	char hostname[256] = "";
	if (!host_id) {
		if (gethostname(hostname, sizeof(hostname) - 1) < 0 || !*hostname) {
			fprintf(stderr, "kindling agent: no host name; give --host-id\n");
			return EXIT_USAGE;
		}
		host_id = hostname;
	}

	int status = 1;
	char *home = kindling_home_dir();
	char *def_store = home ? xasprintf("%s/store", home) : NULL;
	char *state = home ? xasprintf("%s/agent", home) : NULL;
	char *def_l1 = home ? xasprintf("%s/agent-l1", home) : NULL;
	char *url = NULL;
	struct hostagent *agent = NULL;
	struct hostagent_server *srv = NULL;
	struct hostagent_register *reg = NULL;
	if (!home || !def_store || !state || !def_l1) {
		fprintf(stderr, "kindling agent: out of memory\n");
		goto out;
	}
	if (mkdir_p(state, 0700) < 0) {
		fprintf(stderr, "kindling agent: cannot create %s: %s\n", state, strerror(errno));
		goto out;
	}
	if (!o.store)
		o.store = def_store;
	if (!o.l1_dir)
		o.l1_dir = def_l1;
	o.state_dir = state;

	/* Signals go to the thread that waits for them below. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (cmd_hostagent_start("kindling agent", &o, &agent) < 0)
		goto out;
	int r = hostagent_server_start(agent, listen, &srv);
	if (r < 0) {
		fprintf(stderr, "kindling agent: cannot listen on %s: %s\n", listen, strerror(-r));
		goto out;
	}
	url = url_arg ? strdup(url_arg) : xasprintf("http://%s", hostagent_server_address(srv));
	if (!url)
		goto out;
	if (etcd) {
		struct hostagent_register_config rc = {
			.etcd_endpoints = etcd,
			.host_id = host_id,
			.url = url,
			.cell = cell,
			.l1_dir = o.l1_dir,
		};
		if ((r = hostagent_register_start(agent, &rc, &reg)) < 0) {
			fprintf(stderr, "kindling agent: cannot register in etcd: %s\n", strerror(-r));
			goto out;
		}
	}
	printf("kindling agent: host %s on %s (state %s%s%s)\n", host_id, url, state, etcd ? ", etcd " : "",
	       etcd ? etcd : "");
	fflush(stdout);
	int sig = 0;
	while (sigwait(&set, &sig) != 0)
		;
	log_info("signal %d: stopping", sig);
	status = 0;
out:
	hostagent_register_stop(reg); /* first: the host leaves etcd before it stops answering */
	hostagent_server_free(srv);
	hostagent_free(agent);
	free(url);
	free(home);
	free(def_store);
	free(state);
	free(def_l1);
	return status;
}
