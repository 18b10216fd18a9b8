/* `kindling placement`: the fleet's placement service (placement/service.c)
 * on an HTTP server.  A thin main: options, the service, the server, and a
 * wait for SIGINT/SIGTERM. */
#include "cmd/commands.h"

#include "common/common.h"
#include "common/http_server.h"
#include "placement/placement.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void placement_usage(FILE *f)
{
	fprintf(f,
		"usage: kindling placement --etcd URLS [--listen HOST:PORT] [--store URI] [--cells N]\n"
		"                          [--shard-size K] [--no-spill] [--weights l1=4,l2=1,warm=1,load=16,spread=0.5,pack=0.1]\n"
		"                          [--burst N] [--burst-per-minute N] [--reservation-ttl S] [--max-wait-ms MS]\n"
		"                          [--seed N] [-v]\n"
		"  --etcd URLS        etcd members, comma-separated (http://127.0.0.1:2379,...)\n"
		"  --listen HOST:PORT where to answer POST /v1/place, GET /v1/hosts, GET /healthz\n"
		"                     (default 127.0.0.1:9300)\n"
		"  --store URI        the image store, to read manifests' chunk names (code locality)\n"
		"  --cells N          cells in the fleet (default 1); hosts register as cell-0 .. cell-N-1\n"
		"  --shard-size K     hosts per function shard (default 32)\n"
		"  --no-spill         never place outside a function's shard, even when it is full\n"
		"  --weights ...      scoring weights (placement/README.md)\n"
		"  --burst N          new sandboxes the fleet may start at once (default 1000)\n"
		"  --burst-per-minute N  the burst bucket's refill (default 500)\n"
		"  --reservation-ttl S   how long a reservation counts as used memory (default 30)\n"
		"  --max-wait-ms MS   a request that waited longer for its turn is answered 503\n"
		"                     Overloaded, reserving nothing (default 500)\n");
}

static bool parse_num(const char *v, double lo, double hi, double *out)
{
	char *e;
	errno = 0;
	double d = strtod(v, &e);
	if (errno || e == v || *e || !(d >= lo && d <= hi))
		return false;
	*out = d;
	return true;
}

static int handle(void *arg, const struct http_request *req, struct http_response *resp)
{
	return placement_service_handle(arg, req, resp);
}

int cmd_placement(int argc, char **argv)
{
	struct placement_service_config cfg = { 0 };
	placement_config_init(&cfg.placement);
	const char *listen = "127.0.0.1:9300";
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			placement_usage(stdout);
			return 0;
		}
		if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0) {
			log_set_level(LOG_DEBUG);
			continue;
		}
		if (strcmp(a, "--no-spill") == 0) {
			cfg.placement.spill = false;
			continue;
		}
		if (i + 1 >= argc) {
			fprintf(stderr, "kindling placement: %s needs a value\n", a);
			placement_usage(stderr);
			return 2;
		}
		const char *v = argv[++i];
		double d;
		const char *why = NULL;
		if (strcmp(a, "--etcd") == 0)
			cfg.etcd_endpoints = v;
		else if (strcmp(a, "--listen") == 0)
			listen = v;
		else if (strcmp(a, "--store") == 0)
			cfg.store_uri = v;
		else if (strcmp(a, "--cells") == 0 && parse_num(v, 1, 65536, &d))
			cfg.placement.cells = (uint32_t)d;
		else if (strcmp(a, "--shard-size") == 0 && parse_num(v, 1, PLACEMENT_MAX_SHARD_SIZE, &d))
			cfg.placement.shard_size = (uint32_t)d;
		else if (strcmp(a, "--burst") == 0 && parse_num(v, 1, 1e9, &d))
			cfg.burst_initial = d;
		else if (strcmp(a, "--burst-per-minute") == 0 && parse_num(v, 0.001, 1e9, &d))
			cfg.burst_per_minute = d;
		else if (strcmp(a, "--reservation-ttl") == 0 && parse_num(v, 1, 3600, &d))
			cfg.reservation_ttl_s = (unsigned)d;
		else if (strcmp(a, "--max-wait-ms") == 0 && parse_num(v, 1, 600000, &d))
			cfg.max_wait_ms = (unsigned)d;
		else if (strcmp(a, "--seed") == 0 && parse_num(v, 1, 1e15, &d))
			cfg.seed = (uint64_t)d;
		else if (strcmp(a, "--weights") == 0) {
			if (placement_weights_parse(v, &cfg.placement.w, &why) < 0) {
				fprintf(stderr, "kindling placement: --weights %s: %s\n", v, why);
				return 2;
			}
		} else {
			fprintf(stderr, "kindling placement: bad option or value: %s %s\n", a, v);
			placement_usage(stderr);
			return 2;
		}
	}
	if (!cfg.etcd_endpoints) {
		fprintf(stderr, "kindling placement: --etcd URLS is required (the fleet's state lives there)\n");
		placement_usage(stderr);
		return 2;
	}
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	struct placement_service *svc = NULL;
	struct http_server *srv = NULL;
	int status = 1;
	int r = placement_service_new(&cfg, &svc);
	if (r < 0) {
		fprintf(stderr, "kindling placement: the service did not start: %s (see the messages above)\n",
			strerror(-r));
		return 1;
	}
	static const struct http_server_ops ops = { .handle = handle };
	/* Every frontend keeps connections to it: more than a host agent sees. */
	struct http_server_config hcfg = {
		.ops = &ops, .arg = svc, .max_body = 256u << 10, .name = "placement", .max_connections = 1024
	};
	if ((r = http_server_start(&hcfg, listen, &srv)) < 0) {
		fprintf(stderr, "kindling placement: cannot listen on %s: %s\n", listen, strerror(-r));
		goto out;
	}
	printf("kindling placement: on http://%s (etcd %s)\n", http_server_address(srv), cfg.etcd_endpoints);
	fflush(stdout);
	int sig = 0;
	while (sigwait(&set, &sig) != 0)
		;
	log_info("signal %d: stopping", sig);
	status = 0;
out:
	http_server_free(srv);
	placement_service_free(svc);
	return status;
}
