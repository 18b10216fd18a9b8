/* blockd: the per-host daemon (`blockd serve`) and its CLI (attach, detach,
 * ls, stats), which talk to the daemon over its control socket. */
#define LOG_COMPONENT "blockd"
#include "blockd/blockd.h"
#include "common/common.h"
#include "image/image.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

static void usage(FILE *f)
{
	fprintf(f,
		"usage: blockd serve --store URI --mount DIR [options]\n"
		"       blockd [--control SOCK] attach IMAGE | detach IMAGE | ls | stats [IMAGE]\n"
		"\n"
		"serve options (defaults in brackets):\n"
		"  --store URI              origin store: file:///dir, http://host:port/prefix, s3://bucket/prefix\n"
		"  --mount DIR              FUSE mount point (MOUNT/<image>/image.raw, rootfs/, stats.json)\n"
		"  --control SOCK           control socket [$KINDLING_BLOCKD_CONTROL or $KINDLING_HOME/blockd.sock]\n"
		"  --nbd ADDR               also serve every image over NBD: unix:/path or tcp:HOST:PORT [off]\n"
		"  --nbd-allow-remote       allow a tcp --nbd address other hosts can reach (NBD has no\n"
		"                           authentication or encryption) [loopback only]\n"
		"  --socket-group NAME      control and NBD unix sockets 0660 with group NAME, whose members\n"
		"                           may use them [0600: root and blockd's own user only]\n"
		"  --state-dir DIR          keep the attached set here; re-attach it on restart [off]\n"
		"  --l1-dir DIR             L1 disk cache directory [no L1]\n"
		"  --l1-size BYTES          L1 size, K/M/G suffixes allowed [4G]\n"
		"  --mem-size BYTES         memory tier size [64M]; 0 disables it\n"
		"  --l2 HOST:PORT,...       memcached L2 nodes [no L2]\n"
		"  --k N --m N              L2 Reed-Solomon data and parity fragments [4+1]\n"
		"  --no-prefetch            neither record startup traces nor prefetch from them\n"
		"  --trace-seconds S        startup trace recording window [10]\n"
		"  --prefetch-parallel N    trace prefetch fetches in flight [4; at most half the origin's]\n"
		"  --prefetch-rate BYTES    trace prefetch bandwidth per second [unlimited]\n"
		"  --readahead N            chunks fetched ahead of sequential readers [1]; 0 disables\n"
		"  --readahead-min-run BYTES  contiguous bytes a reader reads before readahead starts [256K]\n"
		"  --allow-other            let other users into the FUSE mount\n"
		"  -v, --verbose            log info lines; twice for debug\n"
		"The tenant key and salt come from KINDLING_HOME, as for chunkify.\n"
		"SIGTERM or `fusermount3 -u DIR` stops the daemon cleanly.\n");
}

static int parse_uint(const char *s, unsigned max, unsigned *out)
{
	uint64_t v;
	if (parse_size(s, &v) < 0 || v > max)
		return -EINVAL;
	*out = (unsigned)v;
	return 0;
}

static char *default_control(void)
{
	const char *e = getenv("KINDLING_BLOCKD_CONTROL");
	if (e && *e)
		return strdup(e);
	char *home = kindling_home_dir();
	char *path = home ? xasprintf("%s/blockd.sock", home) : NULL;
	free(home);
	return path;
}

static int serve(int argc, char **argv)
{
	enum { O_STORE = 256, O_MOUNT, O_CONTROL, O_NBD, O_STATE, O_L1DIR, O_L1SIZE, O_MEM, O_L2, O_K, O_M, O_NOPF,
	       O_TRACES, O_PFPAR, O_PFRATE, O_RA, O_RAMIN, O_ALLOW, O_REMOTE, O_GROUP };
	static const struct option opts[] = {
		{ "store", required_argument, NULL, O_STORE },
		{ "mount", required_argument, NULL, O_MOUNT },
		{ "control", required_argument, NULL, O_CONTROL },
		{ "nbd", required_argument, NULL, O_NBD },
		{ "state-dir", required_argument, NULL, O_STATE },
		{ "l1-dir", required_argument, NULL, O_L1DIR },
		{ "l1-size", required_argument, NULL, O_L1SIZE },
		{ "mem-size", required_argument, NULL, O_MEM },
		{ "l2", required_argument, NULL, O_L2 },
		{ "k", required_argument, NULL, O_K },
		{ "m", required_argument, NULL, O_M },
		{ "no-prefetch", no_argument, NULL, O_NOPF },
		{ "trace-seconds", required_argument, NULL, O_TRACES },
		{ "prefetch-parallel", required_argument, NULL, O_PFPAR },
		{ "prefetch-rate", required_argument, NULL, O_PFRATE },
		{ "readahead", required_argument, NULL, O_RA },
		{ "readahead-min-run", required_argument, NULL, O_RAMIN },
		{ "allow-other", no_argument, NULL, O_ALLOW },
		{ "nbd-allow-remote", no_argument, NULL, O_REMOTE },
		{ "socket-group", required_argument, NULL, O_GROUP },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct blockd_config cfg = { .prefetch = true, .trace_seconds = 10.0 };
	struct blockd_mount_options mopt = { .done_fd = -1 };
	const char *mount = NULL, *nbd = NULL, *state = NULL;
	char *control = NULL;
	struct str_list l2 = { 0 };
	int verbose = 0, c, rc = 1;
	unsigned ra = 1;
	bool bad = false;
	optind = 1;
	while ((c = getopt_long(argc, argv, "vh", opts, NULL)) != -1) {
		switch (c) {
		case O_STORE: cfg.cache.origin_uri = optarg; break;
		case O_MOUNT: mount = optarg; break;
		case O_CONTROL:
			free(control);
			control = strdup(optarg);
			break;
		case O_NBD: nbd = optarg; break;
		case O_STATE: state = optarg; break;
		case O_L1DIR: cfg.cache.l1_dir = optarg; break;
		case O_L1SIZE: bad |= parse_size(optarg, &cfg.cache.l1_max_bytes) < 0; break;
		case O_MEM:
			bad |= parse_size(optarg, &cfg.cache.mem_max_bytes) < 0;
			cfg.cache.mem_disable = cfg.cache.mem_max_bytes == 0;
			break;
		case O_L2: {
			char *dup = strdup(optarg), *save = NULL;
			for (char *t = dup ? strtok_r(dup, ",", &save) : NULL; t; t = strtok_r(NULL, ",", &save))
				bad |= str_list_add(&l2, t) < 0;
			free(dup);
			break;
		}
		case O_K: bad |= parse_uint(optarg, 64, &cfg.cache.l2_k) < 0; break;
		case O_M: bad |= parse_uint(optarg, 64, &cfg.cache.l2_m) < 0; break;
		case O_NOPF: cfg.prefetch = false; break;
		case O_TRACES: {
			char *end;
			cfg.trace_seconds = strtod(optarg, &end);
			bad |= *end || !(cfg.trace_seconds > 0 && cfg.trace_seconds < 86400);
			break;
		}
		case O_PFPAR: bad |= parse_uint(optarg, 256, &cfg.prefetch_parallel) < 0 || !cfg.prefetch_parallel; break;
		case O_PFRATE: bad |= parse_size(optarg, &cfg.prefetch_bytes_per_s) < 0; break;
		case O_RA: bad |= parse_uint(optarg, 64, &ra) < 0; break;
		case O_RAMIN:
			bad |= parse_size(optarg, &cfg.readahead_min_run) < 0 || !cfg.readahead_min_run;
			break;
		case O_ALLOW: mopt.allow_other = true; break;
		case O_REMOTE: cfg.nbd_allow_remote = true; break;
		case O_GROUP: cfg.socket_group = optarg; bad |= !*optarg; break;
		case 'v': verbose++; break;
		case 'h': usage(stdout); rc = 0; goto out;
		default: bad = true;
		}
	}
	if (bad || optind != argc || !cfg.cache.origin_uri || !mount) {
		fprintf(stderr, "blockd serve: %s\n",
			bad || optind != argc ? "bad arguments" : "--store and --mount are required");
		usage(stderr);
		rc = 2;
		goto out;
	}
	cfg.readahead_chunks = ra;
	cfg.no_readahead = ra == 0;
	cfg.cache.l2_nodes = (const char *const *)l2.items;
	cfg.cache.n_l2_nodes = l2.n;
	if (!control)
		control = default_control();
	if (!control)
		goto out;
	/* Set up logging before any thread exists: log_msg's first call is not
	 * thread-safe. */
	log_set_level(verbose > 1 ? LOG_DEBUG : LOG_INFO);
	log_info("starting: store %s, mount %s, control %s", cfg.cache.origin_uri, mount, control);

	/* Signals arrive on a signalfd; every thread inherits the blocked mask. */
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);
	int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
	int done[2] = { -1, -1 };
	if (sfd < 0 || pipe2(done, O_CLOEXEC) < 0) {
		log_err("signalfd/pipe: %s", strerror(errno));
		goto out;
	}
	mopt.done_fd = done[1];

	struct blockd *b = NULL;
	struct blockd_ctl *ctl = NULL;
	int r = blockd_new(&cfg, &b);
	if (r == 0)
		r = blockd_mount(b, mount, &mopt);
	if (r == 0 && nbd)
		r = blockd_nbd_start(b, nbd);
	if (r == 0)
		r = blockd_ctl_start(b, control, state, &ctl);
	if (r == 0)
		blockd_ctl_restore(ctl); /* what fails to re-attach is logged; serve the rest */
	if (r == 0) {
		printf("blockd: ready (mount %s, control %s%s%s)\n", mount, control, nbd ? ", nbd " : "",
		       nbd ? blockd_nbd_address(b) : "");
		fflush(stdout);
		struct pollfd p[2] = { { .fd = sfd, .events = POLLIN }, { .fd = done[0], .events = POLLIN } };
		for (;;) {
			if (poll(p, 2, -1) < 0 && errno != EINTR)
				break;
			if (p[0].revents) {
				struct signalfd_siginfo si;
				if (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
					log_info("signal %u: shutting down", si.ssi_signo);
				break;
			}
			if (p[1].revents) {
				log_info("the FUSE mount went away (fusermount3 -u?): shutting down");
				break;
			}
		}
		rc = 0;
	}
	blockd_ctl_stop(ctl);
	blockd_free(b);
	close(sfd);
	close(done[0]);
	close(done[1]);
	if (rc == 0)
		log_info("stopped");
out:
	free(control);
	str_list_clear(&l2);
	return rc;
}

/* The CLI: one request to the daemon, its reply on stdout. */
static int client(const char *control, const char *op, const char *image)
{
	json_t *q = image ? json_pack("{s:s, s:s}", "op", op, "image", image) : json_pack("{s:s}", "op", op);
	char *line = q ? json_dumps(q, JSON_COMPACT) : NULL;
	json_decref(q);
	if (!line)
		return 1;
	char *reply = NULL;
	int r = blockd_ctl_call(control, line, &reply);
	free(line);
	if (r < 0)
		return 1;
	json_t *j = json_loads(reply, 0, NULL);
	int rc = 1;
	if (!j)
		fprintf(stderr, "blockd: the daemon sent a reply that is not JSON: %s\n", reply);
	else if (!json_is_true(json_object_get(j, "ok")))
		fprintf(stderr, "blockd %s%s%s: %s\n", op, image ? " " : "", image ? image : "",
			json_string_value(json_object_get(j, "error")) ? json_string_value(json_object_get(j, "error"))
									: "failed");
	else {
		rc = 0;
		if (strcmp(op, "ls") == 0) {
			json_t *arr = json_object_get(j, "images"), *e;
			size_t i;
			json_array_foreach(arr, i, e)
			{
				printf("%s\t%s\t%lld\n", json_string_value(json_object_get(e, "name")),
				       json_string_value(json_object_get(e, "digest")),
				       (long long)json_integer_value(json_object_get(e, "size")));
			}
		} else if (strcmp(op, "stats") == 0) {
			json_t *s = json_object_get(j, image ? "stats" : "images");
			char *out = json_dumps(image ? s : j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
			if (out)
				printf("%s\n", out);
			free(out);
		} else if (strcmp(op, "attach") == 0)
			printf("%s\t%s\n", json_string_value(json_object_get(j, "image")),
			       json_string_value(json_object_get(j, "digest")));
	}
	json_decref(j);
	free(reply);
	return rc;
}

int main(int argc, char **argv)
{
	log_set_program("blockd");
	if (argc >= 2 && strcmp(argv[1], "serve") == 0)
		return serve(argc - 1, argv + 1);
	char *control = NULL;
	int i = 1;
	for (; i < argc && argv[i][0] == '-'; i++) {
		if (strcmp(argv[i], "--control") == 0 && i + 1 < argc) {
			free(control);
			control = strdup(argv[++i]);
		} else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			usage(stdout);
			free(control);
			return 0;
		} else {
			usage(stderr);
			free(control);
			return 2;
		}
	}
	if (!control)
		control = default_control();
	int rc = 2;
	const char *cmd = i < argc ? argv[i] : "";
	int nargs = argc - i - 1;
	if ((strcmp(cmd, "attach") == 0 || strcmp(cmd, "detach") == 0) && nargs == 1)
		rc = client(control, cmd, argv[i + 1]);
	else if (strcmp(cmd, "ls") == 0 && nargs == 0)
		rc = client(control, cmd, NULL);
	else if (strcmp(cmd, "stats") == 0 && nargs <= 1)
		rc = client(control, cmd, nargs ? argv[i + 1] : NULL);
	else
		usage(stderr);
	free(control);
	return rc;
}
