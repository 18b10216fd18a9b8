/* kindling: run an image from the store, lazily, in a sandbox.
 *
 *   kindling run IMAGE [--store URI] [--l2 HOST:PORT,...] [--l1-dir DIR] [--l1-size BYTES]
 *                      [--isolation process|microvm|auto] [--no-prefetch] [--readahead N]
 *                      [--readahead-min-run BYTES] [--timeout S]
 *                      [--memory SIZE|none] [--pids N|none] [--userns BASE[:COUNT]|off] [--json] [-v]
 *                      [-- CMD ARGS...]
 *
 * The whole cold-start path in one process: an in-process blockd attaches
 * IMAGE (only its manifest is fetched), serves it on a private FUSE mount, and
 * the sandbox picked by --isolation mounts MOUNT/<image>/image.raw and runs
 * the image's entrypoint (or CMD ARGS).  Chunks are fetched only as the
 * workload reads them, through the memory, L1, L2 and origin tiers.  The
 * workload's output is streamed as it arrives; at exit a report goes to
 * stderr (one JSON object as the last line with --json): time to first output
 * and to exit, counted from the start of `kindling run`, bytes fetched against
 * the image size, and where the chunks came from.
 *
 * With --isolation microvm (or auto on a host with /dev/kvm) image.raw is the
 * root disk of a kvmm micro-VM instead; KINDLING_KVMM, KINDLING_GUEST_KERNEL
 * and KINDLING_GUEST_INITRD say where kvmm and the guest's kernel and
 * initramfs are (default: next to this program).
 *
 * Defaults come from KINDLING_HOME (default ~/.kindling), as for chunkify:
 * the store is $KINDLING_HOME/store and the L1 cache $KINDLING_HOME/l1, so a
 * second run of the same image on this host is warm.
 *
 * Exit status: the command's; 128+N if signal N ended it; 127 if the command
 * is not in the image; 125 if the image or the sandbox could not be set up;
 * 2 for bad usage.
 */
#define LOG_COMPONENT "kindling"
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

#include "blockd/blockd.h"
#include "cmd/commands.h"
#include "common/common.h"
#include "image/image.h"
#include "sandbox/sandbox.h"

#define EXIT_USAGE 2
#define EXIT_SETUP 125
#define EXIT_NOCMD 127

struct run_opts {
	const char *image;
	const char *store;
	const char *l1_dir;
	uint64_t l1_size;
	const char *isolation;
	struct str_list l2;
	bool no_prefetch, json;
	int readahead; /* chunks; -1 = blockd's default */
	uint64_t readahead_min_run; /* bytes; 0 = blockd's default */
	double timeout_s;
	uint64_t memory; /* bytes; 0 = no limit */
	uint32_t pids;	 /* 0 = no limit */
	uint32_t userns_base, userns_count;
	bool userns_off;
	int verbose;
	char **argv; /* after "--", NULL-terminated, or NULL */
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: kindling run IMAGE [options] [-- CMD ARGS...]\n"
		"       kindling serve|logs|dlq ... (the Lambda-compatible service; kindling serve --help)\n"
		"       kindling agent ... (one host of a fleet; kindling agent --help)\n"
		"\n"
		"Attach IMAGE (NAME[:TAG] or a manifest digest) lazily and run its entrypoint (or CMD ARGS)\n"
		"in a sandbox; report time to first output, time to exit and what was fetched from where.\n"
		"\n"
		"  --store URI           origin store [$KINDLING_HOME/store]\n"
		"  --l2 HOST:PORT,...    memcached L2 nodes, Reed-Solomon 4+1 [no L2]\n"
		"  --l1-dir DIR          L1 disk cache [$KINDLING_HOME/l1]\n"
		"  --l1-size BYTES       L1 size, K/M/G suffixes [4G]\n"
		"  --isolation KIND      process, microvm or auto [auto]: auto takes the micro-VM where\n"
		"                        /dev/kvm and its parts are there, else the process sandbox\n"
		"  --no-prefetch         neither record a startup trace nor prefetch from one\n"
		"  --readahead N         chunks fetched ahead of sequential readers [1]; 0 disables\n"
		"  --readahead-min-run BYTES  contiguous bytes a reader reads before readahead starts [256K]\n"
		"  --timeout S           kill the workload after S seconds [never]\n"
		"  --memory SIZE         memory limit (at least 4M), K/M/G suffixes, or none [1G]; the OOM killer\n"
		"                        ends the workload past it (exit status 137)\n"
		"  --pids N              processes and threads the workload may have at once, or none [1024]\n"
		"  --userns BASE[:COUNT] map the workload's ids 0..COUNT-1 to host ids BASE.. [1000000000:65536];\n"
		"                        off runs it without a user namespace (its root is then the host's)\n"
		"  --json                the report as one JSON object (last line on stderr)\n"
		"  -v                    log blockd and sandbox progress\n"
		"KINDLING_HOME defaults to ~/.kindling; it holds the tenant key and salt, as for chunkify.\n"
		"The micro-VM's parts: KINDLING_KVMM, KINDLING_GUEST_KERNEL, KINDLING_GUEST_INITRD\n"
		"[kvmm, kindling-guest-kernel, kindling-guest-initrd next to this program].\n"
		"Exit status: the command's; 128+N for signal N; 127 command not found; 125 setup failed.\n");
}

/* "BASE" or "BASE:COUNT" for --userns; BASE > 0 (0 would map root to root),
 * COUNT >= 1 and the range inside the 32-bit ids. */
static int parse_userns(const char *v, struct run_opts *o)
{
	char *end;
	errno = 0;
	unsigned long long base = strtoull(v, &end, 10), count = 65536;
	if (end == v || errno)
		return -EINVAL;
	if (*end == ':') {
		const char *c = end + 1;
		count = strtoull(c, &end, 10);
		if (end == c || errno)
			return -EINVAL;
	}
	if (*end || base == 0 || count == 0 || base + count > 4294967295ull)
		return -EINVAL;
	o->userns_base = (uint32_t)base;
	o->userns_count = (uint32_t)count;
	return 0;
}

/* Parse `run`'s arguments (|argv| starts after "run").  Returns 0 or -EINVAL
 * (reported on stderr). */
static int parse_args(int argc, char **argv, struct run_opts *o)
{
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--") == 0) {
			/* argv[argc] is NULL, so the tail is already NULL-terminated. */
			if (i + 1 < argc)
				o->argv = argv + i + 1;
			break;
		} else if (strcmp(a, "--json") == 0) {
			o->json = true;
		} else if (strcmp(a, "--no-prefetch") == 0) {
			o->no_prefetch = true;
		} else if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0) {
			o->verbose++;
		} else if (a[0] == '-' && a[1] == '-') {
			if (!v) {
				fprintf(stderr, "kindling run: %s needs a value\n", a);
				return -EINVAL;
			}
			i++;
			if (strcmp(a, "--store") == 0)
				o->store = v;
			else if (strcmp(a, "--l1-dir") == 0)
				o->l1_dir = v;
			else if (strcmp(a, "--isolation") == 0)
				o->isolation = v;
			else if (strcmp(a, "--l1-size") == 0 && parse_size(v, &o->l1_size) == 0)
				;
			else if (strcmp(a, "--readahead") == 0 && atoi(v) >= 0 && atoi(v) <= 64 && v[0] >= '0' &&
				 v[0] <= '9')
				o->readahead = atoi(v);
			else if (strcmp(a, "--readahead-min-run") == 0 && parse_size(v, &o->readahead_min_run) == 0 &&
				 o->readahead_min_run > 0)
				;
			else if (strcmp(a, "--timeout") == 0 && atof(v) > 0)
				o->timeout_s = atof(v);
			else if (strcmp(a, "--memory") == 0 && strcmp(v, "none") == 0)
				o->memory = 0;
			else if (strcmp(a, "--memory") == 0 && parse_size(v, &o->memory) == 0 && o->memory >= (4u << 20))
				;
			else if (strcmp(a, "--pids") == 0 && strcmp(v, "none") == 0)
				o->pids = 0;
			else if (strcmp(a, "--pids") == 0 && v[0] >= '1' && v[0] <= '9' && strtoul(v, NULL, 10) <= 4194304)
				o->pids = (uint32_t)strtoul(v, NULL, 10);
			else if (strcmp(a, "--userns") == 0 && strcmp(v, "off") == 0)
				o->userns_off = true;
			else if (strcmp(a, "--userns") == 0 && parse_userns(v, o) == 0)
				;
			else if (strcmp(a, "--l2") == 0) {
				char *dup = strdup(v), *save = NULL;
				if (!dup)
					return -ENOMEM;
				for (char *t = strtok_r(dup, ",", &save); t; t = strtok_r(NULL, ",", &save))
					if (str_list_add(&o->l2, t) < 0) {
						free(dup);
						return -ENOMEM;
					}
				free(dup);
			} else {
				fprintf(stderr, "kindling run: bad option %s %s\n", a, v);
				return -EINVAL;
			}
		} else if (a[0] == '-') {
			fprintf(stderr, "kindling run: unknown option %s\n", a);
			return -EINVAL;
		} else if (!o->image) {
			o->image = a;
		} else {
			fprintf(stderr, "kindling run: one image only (got %s and %s); a command goes after --\n",
				o->image, a);
			return -EINVAL;
		}
	}
	if (!o->image) {
		fprintf(stderr, "kindling run: which image? (NAME[:TAG] or a manifest digest)\n");
		return -EINVAL;
	}
	return 0;
}

/* ---- signals ----------------------------------------------------------------------------------------------- */

/* SIGINT, SIGTERM and SIGHUP are blocked in every thread (set before any
 * exists) and taken by one thread, so the FUSE mount is never left behind by
 * a default action.  The first one is forwarded to the sandbox's monitor (our
 * child), which passes it on to the workload: the run then ends the normal
 * way, with full cleanup.  A second one, or one with no child to forward to,
 * lazily unmounts the mount point and exits at once. */
struct sig_watch {
	sigset_t set;
	const char *mountpoint; /* set once before the thread starts */
	pid_t self;
};

static int forward_to_children(pid_t self, int sig)
{
	/* The sandbox forks from the main thread, whose tid is the pid. */
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)self, (int)self);
	FILE *f = fopen(path, "re");
	int n = 0, pid;
	if (!f)
		return 0;
	while (fscanf(f, "%d", &pid) == 1)
		n += kill(pid, sig) == 0;
	fclose(f);
	return n;
}

static void *sig_main(void *arg)
{
	struct sig_watch *w = arg;
	bool forwarded = false;
	for (;;) {
		int sig;
		if (sigwait(&w->set, &sig) != 0)
			continue;
		if (!forwarded && forward_to_children(w->self, sig) > 0) {
			forwarded = true;
			continue;
		}
		/* Nothing to wait for (or asked twice): leave now, but never
		 * leave a dead FUSE mount behind. */
		if (umount2(w->mountpoint, MNT_DETACH) == 0)
			rmdir(w->mountpoint);
		_exit(128 + sig);
	}
	return NULL;
}

/* ---- the report --------------------------------------------------------------------------------------------- */

static uint64_t jint(json_t *o, const char *k) { return (uint64_t)json_integer_value(json_object_get(o, k)); }

static void mib(char *buf, size_t len, uint64_t bytes) { snprintf(buf, len, "%.1f MiB", (double)bytes / (1 << 20)); }

/* Build the report from the sandbox result and blockd's counters for the
 * image (|stats|, the stats.json object).  Returns a new JSON object. */
static json_t *build_report(const struct run_opts *o, const struct sandbox_ops *ops, int r,
			    const struct sandbox_result *res, int status, double attach_s, const struct manifest *m,
			    json_t *stats)
{
	json_t *fetched = json_object_get(stats, "fetched_by_tier");
	uint64_t l2 = jint(fetched, "l2"), l3 = jint(fetched, "l3");
	uint64_t resident = jint(stats, "chunks_resident");
	/* Every chunk that became resident and was not fetched from L2 or L3
	 * came off this host's disk: the memory tier starts empty in each run,
	 * and only fetched chunks enter it before they are read. */
	uint64_t l1 = resident > l2 + l3 ? resident - l2 - l3 : 0;
	uint64_t meta = m->image_size > m->metadata_offset ? m->image_size - m->metadata_offset : 0;
	json_t *j = json_pack("{s:s,s:s,s:s,s:s,s:s,s:i,s:i,s:i,s:b,s:f,s:f,s:f}", "image", o->image, "digest",
			      json_string_value(json_object_get(stats, "digest")), "backend", ops->name, "mount",
			      r < 0 ? "" : res->mount_kind, "cgroup", r < 0 ? "" : res->cgroup_kind, "status", status,
			      "exit_code", r < 0 ? -1 : res->exit_code, "term_signal", r < 0 ? 0 : res->term_signal,
			      "timed_out", r == 0 && res->timed_out, "attach_s", attach_s, "first_output_s",
			      r < 0 ? -1.0 : res->first_output_s, "exit_s", r < 0 ? -1.0 : res->exit_s);
	if (!j)
		return NULL;
	json_object_set_new(j, "image_size", json_integer((json_int_t)m->image_size));
	json_object_set_new(j, "metadata_bytes", json_integer((json_int_t)meta));
	json_object_set_new(j, "chunks_stored", json_integer((json_int_t)m->n_chunks));
	json_object_set_new(j, "bytes_fetched", json_integer((json_int_t)((l2 + l3) * CHUNK_SIZE)));
	json_object_set_new(j, "bytes_read", json_object_get(stats, "bytes_read"));
	json_incref(json_object_get(stats, "bytes_read"));
	json_object_set_new(j, "chunks_read", json_integer((json_int_t)jint(stats, "chunks_read")));
	json_object_set_new(j, "chunks", json_pack("{s:I,s:I,s:I}", "l1", (json_int_t)l1, "l2", (json_int_t)l2, "l3",
						   (json_int_t)l3));
	json_object_set_new(j, "bytes",
			    json_pack("{s:I,s:I,s:I}", "l1", (json_int_t)(l1 * CHUNK_SIZE), "l2",
				      (json_int_t)(l2 * CHUNK_SIZE), "l3", (json_int_t)(l3 * CHUNK_SIZE)));
	json_t *served = json_object_get(stats, "served_by_tier"), *pf = json_object_get(stats, "prefetch");
	json_t *ra = json_object_get(stats, "readahead");
	if (served)
		json_object_set(j, "served_by_tier", served);
	if (ra)
		json_object_set(j, "readahead", ra);
	if (pf)
		json_object_set(j, "prefetch", pf);
	json_object_set_new(j, "out_bytes", json_integer((json_int_t)(r < 0 ? 0 : res->out_bytes)));
	json_object_set_new(j, "err_bytes", json_integer((json_int_t)(r < 0 ? 0 : res->err_bytes)));
	json_object_set_new(j, "memory_limit", json_integer((json_int_t)o->memory));
	json_object_set_new(j, "pids_limit", json_integer((json_int_t)o->pids));
	json_object_set_new(j, "oom_killed", json_boolean(r == 0 && res->oom_killed));
	json_object_set_new(j, "pids_limited", json_boolean(r == 0 && res->pids_limited));
	json_object_set_new(j, "userns", json_boolean(r == 0 && res->userns));
	if (r < 0)
		json_object_set_new(j, "error", json_string(strerror(-r)));
	return j;
}

static void print_report(json_t *j)
{
	char size[32], fetched[32], readb[32], b1[32], b2[32], b3[32];
	uint64_t image_size = jint(j, "image_size"), bf = jint(j, "bytes_fetched");
	json_t *c = json_object_get(j, "chunks"), *b = json_object_get(j, "bytes"), *pf = json_object_get(j, "prefetch");
	mib(size, sizeof(size), image_size);
	mib(fetched, sizeof(fetched), bf);
	mib(readb, sizeof(readb), jint(j, "bytes_read"));
	mib(b1, sizeof(b1), jint(b, "l1"));
	mib(b2, sizeof(b2), jint(b, "l2"));
	mib(b3, sizeof(b3), jint(b, "l3"));
	const char *error = json_string_value(json_object_get(j, "error"));
	double first = json_real_value(json_object_get(j, "first_output_s"));
	if (error) {
		fprintf(stderr, "kindling: %s: the command did not run (%s); attach %.3f s, exit status %d (%s sandbox)\n",
			json_string_value(json_object_get(j, "image")), error,
			json_real_value(json_object_get(j, "attach_s")),
			(int)json_integer_value(json_object_get(j, "status")),
			json_string_value(json_object_get(j, "backend")));
	} else {
		char first_text[32] = "none";
		if (first >= 0)
			snprintf(first_text, sizeof(first_text), "%.3f s", first);
		fprintf(stderr, "kindling: %s: first output %s, exit %.3f s (attach %.3f s), exit status %d (%s sandbox, %s mount)\n",
			json_string_value(json_object_get(j, "image")), first_text, json_real_value(json_object_get(j, "exit_s")),
			json_real_value(json_object_get(j, "attach_s")), (int)json_integer_value(json_object_get(j, "status")),
			json_string_value(json_object_get(j, "backend")), json_string_value(json_object_get(j, "mount")));
	}
	fprintf(stderr, "kindling: fetched %s of a %s image (%.1f%%); the sandbox read %s through blockd\n", fetched,
		size, image_size ? 100.0 * (double)bf / (double)image_size : 0.0, readb);
	fprintf(stderr, "kindling: chunks: L1 %llu (%s), L2 %llu (%s), L3 %llu (%s)", (unsigned long long)jint(c, "l1"),
		b1, (unsigned long long)jint(c, "l2"), b2, (unsigned long long)jint(c, "l3"), b3);
	const char *trace = json_string_value(json_object_get(pf, "trace"));
	if (!json_is_true(json_object_get(pf, "enabled")))
		fprintf(stderr, "; prefetch off\n");
	else if (trace && (strcmp(trace, "recording") == 0 || strcmp(trace, "stored") == 0 || strcmp(trace, "none") == 0))
		/* A first start has nothing to prefetch: it records what the next one will. */
		fprintf(stderr, "; prefetch: no startup trace yet, recording one for the next start\n");
	else
		fprintf(stderr, "; prefetch: trace %s, %llu of %llu trace chunks prefetched, accuracy %.2f\n", trace,
			(unsigned long long)jint(pf, "prefetched"), (unsigned long long)jint(pf, "trace_chunks"),
			json_real_value(json_object_get(pf, "accuracy")));
}

/* ---- run ---------------------------------------------------------------------------------------------------- */

static int cmd_run(int argc, char **argv, double t0)
{
	/* Limits by default: one runaway function must not take the host. */
	struct run_opts o = { .isolation = "auto", .readahead = -1, .memory = 1ull << 30, .pids = 1024 };
	int status = EXIT_USAGE;
	char *home = NULL, *store = NULL, *l1 = NULL, *mnt = NULL, *raw = NULL;
	struct blockd *b = NULL;
	json_t *report = NULL;
	if (parse_args(argc, argv, &o) < 0) {
		usage(stderr);
		goto out;
	}
	status = EXIT_SETUP;
	log_set_level(o.verbose > 1 ? LOG_DEBUG : o.verbose ? LOG_INFO : LOG_WARN);

	/* Refuse an isolation this host cannot give before touching anything. */
	char notice[512];
	const struct sandbox_ops *ops = sandbox_pick(o.isolation, notice, sizeof(notice));
	if (!ops) {
		fprintf(stderr, "kindling run: %s\n", notice);
		goto out;
	}
	if (notice[0])
		fprintf(stderr, "kindling: %s\n", notice);

	home = kindling_home_dir();
	store = o.store ? strdup(o.store) : home ? xasprintf("%s/store", home) : NULL;
	l1 = o.l1_dir ? strdup(o.l1_dir) : home ? xasprintf("%s/l1", home) : NULL;
	const char *tmp = getenv("TMPDIR");
	mnt = xasprintf("%s/kindling-run.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!home || !store || !l1 || !mnt)
		goto out;
	/* The L1 directory is the cache's to create; one it cannot use runs the
	 * image without L1 (one notice), never fails it. */
	int r;
	if (!mkdtemp(mnt)) {
		log_err("cannot create a mount point %s: %s (set TMPDIR to a writable directory)", mnt,
			strerror(errno));
		free(mnt);
		mnt = NULL;
		goto out;
	}

	/* From here on every thread (blockd's, FUSE's) inherits the mask. */
	struct sig_watch sw = { .mountpoint = mnt, .self = getpid() };
	sigemptyset(&sw.set);
	sigaddset(&sw.set, SIGINT);
	sigaddset(&sw.set, SIGTERM);
	sigaddset(&sw.set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sw.set, NULL);
	signal(SIGPIPE, SIG_IGN); /* a closed stdout must not kill us before cleanup */
	pthread_t sig_thread;
	if ((r = pthread_create(&sig_thread, NULL, sig_main, &sw)) != 0) {
		log_err("cannot start the signal thread: %s", strerror(r));
		goto out;
	}
	pthread_detach(sig_thread);

	/* Running reads an existing store; it never creates one. */
	struct store_options store_opt = { .must_exist = true };
	struct blockd_config cfg = {
		.cache = { .origin_uri = store, .origin_options = &store_opt, .l1_dir = l1, .l1_max_bytes = o.l1_size,
			   .l2_nodes = (const char *const *)o.l2.items, .n_l2_nodes = o.l2.n },
		.prefetch = !o.no_prefetch,
		.readahead_chunks = o.readahead > 0 ? (unsigned)o.readahead : 0,
		.no_readahead = o.readahead == 0,
		.readahead_min_run = o.readahead_min_run,
	};
	struct blockd_image *img = NULL;
	struct blockd_mount_options mopt = { .done_fd = -1 };
	if ((r = blockd_new(&cfg, &b)) < 0)
		goto out;
	unsigned errors_before = log_errors_logged();
	if ((r = blockd_attach(b, o.image, &img)) < 0) {
		/* One failure, one message: the attach said why, unless it could not. */
		if (log_errors_logged() == errors_before)
			fprintf(stderr, "kindling run: cannot attach %s from %s: %s\n", o.image, store, strerror(-r));
		goto out;
	}
	if ((r = blockd_mount(b, mnt, &mopt)) < 0)
		goto out;
	raw = xasprintf("%s/%s/image.raw", mnt, blockd_image_name(img));
	if (!raw)
		goto out;
	double attach_s = now_seconds() - t0;

	const struct manifest *m = blockd_image_manifest(img);
	struct sandbox_spec spec = {
		.image_path = raw,
		.config = &m->config,
		.argv_override = o.argv,
		.in_fd = -1,
		.out_fd = STDOUT_FILENO,
		.err_fd = STDERR_FILENO,
		.t0 = t0,
		.timeout_s = o.timeout_s,
		.memory_limit = o.memory,
		.pids_limit = o.pids,
		.userns_base = o.userns_base,
		.userns_count = o.userns_count,
		.userns_off = o.userns_off,
	};
	struct sandbox_result res;
	r = sandbox_run(ops, &spec, &res);
	if (r < 0)
		status = r == -ENOENT || r == -EACCES ? EXIT_NOCMD : EXIT_SETUP;
	else
		status = res.term_signal ? 128 + res.term_signal : res.exit_code;
	/* Say plainly when a limit, not the program, ended or hobbled the run. */
	char lim[32];
	if (r == 0 && res.oom_killed) {
		mib(lim, sizeof(lim), o.memory);
		fprintf(stderr, "kindling run: the workload ran out of memory: it used more than its limit of %s and the "
			"OOM killer ended it (raise it with --memory)\n", lim);
	}
	if (r == 0 && res.pids_limited)
		fprintf(stderr, "kindling run: the workload reached its limit of %u processes: forks beyond it failed "
			"(a fork bomb, or raise it with --pids)\n", o.pids);
	if (r == 0 && res.timed_out)
		fprintf(stderr, "kindling run: the workload was killed after its --timeout of %g s\n", o.timeout_s);

	char *s = blockd_image_stats_json(img);
	json_t *stats = s ? json_loads(s, 0, NULL) : NULL;
	free(s);
	report = stats ? build_report(&o, ops, r, &res, status, attach_s, m, stats) : NULL;
	json_decref(stats);
	if (!report)
		log_warn("cannot build the report (out of memory?)");
out:
	/* Unmounts, stores the startup trace being recorded, frees. */
	blockd_free(b);
	if (mnt && rmdir(mnt) < 0)
		log_warn("cannot remove the mount point %s: %s", mnt, strerror(errno));
	if (report) {
		if (o.json) {
			char *js = json_dumps(report, JSON_COMPACT | JSON_PRESERVE_ORDER);
			if (js)
				fprintf(stderr, "%s\n", js);
			free(js);
		} else {
			print_report(report);
		}
	}
	json_decref(report);
	free(raw);
	free(mnt);
	free(l1);
	free(store);
	free(home);
	str_list_clear(&o.l2);
	return status;
}

int main(int argc, char **argv)
{
	log_set_program("kindling");
	double t0 = now_seconds();
	if (argc >= 2 && strcmp(argv[1], "run") == 0)
		return cmd_run(argc - 2, argv + 2, t0);
	if (argc >= 2 && strcmp(argv[1], "serve") == 0)
		return cmd_serve(argc - 2, argv + 2);
	if (argc >= 2 && strcmp(argv[1], "agent") == 0)
		return cmd_agent(argc - 2, argv + 2);
	if (argc >= 2 && strcmp(argv[1], "logs") == 0)
		return cmd_logs(argc - 2, argv + 2);
	if (argc >= 2 && strcmp(argv[1], "dlq") == 0)
		return cmd_dlq(argc - 2, argv + 2);
	if (argc >= 2 && strcmp(argv[1], "placement") == 0)
		return cmd_placement(argc - 2, argv + 2);
	if (argc >= 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
		usage(stdout);
		return 0;
	}
	usage(stderr);
	return EXIT_USAGE;
}
