/* kindling: run an image from the store, lazily, in a sandbox.
 *
 *   kindling run IMAGE [--store URI] [--l2 HOST:PORT,...] [--l1-dir DIR] [--l1-size BYTES]
 *                      [--isolation process|microvm|auto] [--no-prefetch] [--readahead N]
 *                      [--readahead-min-run BYTES] [--timeout S]
 *                      [--memory SIZE|none] [--pids N|none] [--userns BASE[:COUNT]|off] [--json] [-v]
 *                      [--timings FILE] [--blockd SOCK | --private-blockd] [--snapshot NAME[:TAG] [--snapshot-info FILE]]
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
 * With --blockd SOCK the image is attached to an already running `blockd
 * serve` through its control socket instead, and run from that daemon's FUSE
 * mount: no private blockd starts, and chunks, page cache and the memory tier
 * stay warm from one run to the next.  The serving blockd owns the cache, so
 * the cache options are refused with --blockd.
 *
 * Without --blockd, a run uses the host's blockd the same way when one is
 * listening at $KINDLING_BLOCKD_CONTROL or else $KINDLING_HOME/blockd.sock
 * (where `blockd serve` listens by default), as docker and podman use their
 * host daemon.  The socket, its directory and the listening process must
 * belong to root or this user and be writable by no one else, or the run
 * says why and starts a private blockd; so does a stale socket, and a daemon
 * that cannot attach the image.  A cache option, --snapshot or
 * --private-blockd keep the run on a private blockd.  The report says which
 * ("blockd": "shared" or "private", and "blockd_control").
 *
 * --timings FILE writes where the start went, as one JSON object, when the
 * run ends: "phases" ({"name", "ms"} in order, from the process's own start
 * to the workload's execve: pre-main, argument handling, blockd, attach,
 * mount, the sandbox's namespaces, cgroup, seccomp, credentials...),
 * "exec_ms" (their sum), "first_output_ms", "exit_ms" and "total_ms" (to the
 * workload's exit), all from the process start (common/timeline.h says how
 * it is found and "start_precision_ms" how precisely).
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
#include <fcntl.h>
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
#include "common/timeline.h"
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
	const char *timings;   /* --timings FILE, or NULL */
	const char *blockd;    /* --blockd SOCK, the host's blockd found at its control socket, or NULL */
	bool private_blockd;   /* --private-blockd: never use the host's blockd */
	const char *cache_opt; /* the first cache option given (refused with --blockd), or NULL */
	const char *snapshot;	   /* --snapshot NAME[:TAG], or NULL */
	const char *snapshot_info; /* --snapshot-info FILE, or NULL */
	/* the host memory tier of a restore: on by default (snapstart_restore_options) */
	bool no_host_mem;	   /* --no-host-mem */
	const char *host_mem_dir;  /* --host-mem-dir DIR, or NULL: snapshot_hostmem_default_dir() */
	uint64_t host_mem_size;	   /* --host-mem-size SIZE, or 0: the default bound */
	const char *host_mem_opt;  /* the first --host-mem-* given (refused with --no-host-mem), or NULL */
	bool help;
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: kindling run IMAGE [options] [-- CMD ARGS...]\n"
		"       kindling serve|logs|dlq ... (the Lambda-compatible service; kindling serve --help)\n"
		"       kindling agent ... (one host of a fleet; kindling agent --help)\n"
		"       kindling snapshot-serve NAME[:TAG] --socket PATH --vmstate-out FILE ... (restore a\n"
		"                micro-VM snapshot's memory lazily; kindling snapshot-serve --help)\n"
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
		"  --timings FILE        when the run ends, write where the start went to FILE as JSON: phases\n"
		"                        from the process start to the workload's exec (pre-main, attach, mount,\n"
		"                        namespaces, cgroup, seccomp, credentials...), first output, exit\n"
		"  --blockd SOCK         attach IMAGE to the running `blockd serve` with control socket SOCK and\n"
		"                        run it from that daemon's mount (warm across runs) instead of starting\n"
		"                        a private blockd; the cache options (--store, --l1-*, --l2, --readahead*,\n"
		"                        --no-prefetch) belong to that daemon then.  Without it a blockd\n"
		"                        listening at $KINDLING_BLOCKD_CONTROL or $KINDLING_HOME/blockd.sock,\n"
		"                        owned by root or this user, is used the same way unless a cache\n"
		"                        option or --snapshot is given\n"
		"  --private-blockd      start a blockd of this run's own even if the host's is running\n"
		"  --snapshot NAME[:TAG] micro-VM only: if the store has snapshot NAME of this image and this\n"
		"                        invocation (command, env, working dir, user), restore it and go on\n"
		"                        from where it was taken; otherwise boot, and when the workload's first\n"
		"                        stdout line (\"ready\") arrives, pause the VM, snapshot it, store the\n"
		"                        snapshot as NAME and carry on\n"
		"  --snapshot-info FILE  with --snapshot, write the snapshot's figures to FILE as JSON: restored\n"
		"                        or created; memory fetched (bytes, fraction of guest RAM, chunks per\n"
		"                        tier, and served_by: host, cache or host+cache), prefetched chunks,\n"
		"                        time to the first output\n"
		"  --host-mem-dir DIR    with --snapshot, keep a restore's verified memory in the host memory\n"
		"                        tier in DIR (0700; default $XDG_RUNTIME_DIR/kindling/snapshot-mem, else\n"
		"                        /dev/shm/kindling-UID/snapshot-mem), so a later restore of the same\n"
		"                        snapshot on this host fills its memory from there, with no fetch\n"
		"  --host-mem-size SIZE  bound on the tier's files (default 2G; the least recently used go)\n"
		"  --no-host-mem         restore without the host memory tier: every chunk through the cache\n"
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
		} else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			o->help = true;
			return 0;
		} else if (strcmp(a, "--no-prefetch") == 0) {
			o->no_prefetch = true;
			o->cache_opt = o->cache_opt ? o->cache_opt : a;
		} else if (strcmp(a, "--private-blockd") == 0) {
			o->private_blockd = true;
		} else if (strcmp(a, "--no-host-mem") == 0) {
			o->no_host_mem = true;
		} else if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0) {
			o->verbose++;
		} else if (a[0] == '-' && a[1] == '-') {
			if (!v) {
				fprintf(stderr, "kindling run: %s needs a value\n", a);
				return -EINVAL;
			}
			i++;
			if (strcmp(a, "--store") == 0 || strcmp(a, "--l1-dir") == 0 || strcmp(a, "--l1-size") == 0 ||
			    strcmp(a, "--l2") == 0 || strcmp(a, "--readahead") == 0 ||
			    strcmp(a, "--readahead-min-run") == 0)
				o->cache_opt = o->cache_opt ? o->cache_opt : a;
			if (strcmp(a, "--timings") == 0 && *v)
				o->timings = v;
			else if (strcmp(a, "--snapshot") == 0 && *v)
				o->snapshot = v;
			else if (strcmp(a, "--snapshot-info") == 0 && *v)
				o->snapshot_info = v;
			else if (strcmp(a, "--host-mem-dir") == 0 && *v)
				o->host_mem_dir = v, o->host_mem_opt = o->host_mem_opt ? o->host_mem_opt : a;
			else if (strcmp(a, "--host-mem-size") == 0 && parse_size(v, &o->host_mem_size) == 0 &&
				 o->host_mem_size > 0)
				o->host_mem_opt = o->host_mem_opt ? o->host_mem_opt : a;
			else if (strcmp(a, "--blockd") == 0 && *v)
				o->blockd = v;
			else if (strcmp(a, "--store") == 0)
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
	if (o->snapshot_info && !o->snapshot) {
		fprintf(stderr, "kindling run: --snapshot-info goes with --snapshot NAME[:TAG]\n");
		return -EINVAL;
	}
	if ((o->host_mem_opt || o->no_host_mem) && !o->snapshot) {
		fprintf(stderr, "kindling run: %s goes with --snapshot NAME[:TAG] (the host memory tier holds a "
			"restored snapshot's memory)\n", o->no_host_mem ? "--no-host-mem" : o->host_mem_opt);
		return -EINVAL;
	}
	if (o->host_mem_opt && o->no_host_mem) {
		fprintf(stderr, "kindling run: %s configures the host memory tier and --no-host-mem turns it off: "
			"give one of them\n", o->host_mem_opt);
		return -EINVAL;
	}
	if (o->snapshot && o->blockd) {
		fprintf(stderr, "kindling run: --snapshot serves the snapshot's memory from this run's own cache; "
			"run it without --blockd\n");
		return -EINVAL;
	}
	if (o->blockd && o->private_blockd) {
		fprintf(stderr, "kindling run: --blockd %s uses a running blockd and --private-blockd starts one for "
			"this run: give one of them\n", o->blockd);
		return -EINVAL;
	}
	if (o->blockd && o->cache_opt) {
		fprintf(stderr, "kindling run: %s configures the cache, and with --blockd the blockd serving %s owns "
			"the cache: give it to `blockd serve` instead, or run without --blockd\n", o->cache_opt,
			o->blockd);
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
		if (w->mountpoint && umount2(w->mountpoint, MNT_DETACH) == 0)
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
	const char *control = json_string_value(json_object_get(j, "blockd_control"));
	if (control)
		fprintf(stderr, "kindling: served by the running blockd at %s (counters since it attached the image; "
			"--private-blockd for a blockd of this run's own)\n", control);
	else
		fprintf(stderr, "kindling: served by a private blockd of this run's own\n");
}

/* ---- --blockd: an image attached to a running blockd ------------------------------------------------------- */

/* What the serving blockd's attach reply says about the image. */
struct shared_image {
	char *name; /* the directory under the mount */
	char *raw;  /* MOUNT/<name>/image.raw */
	struct manifest m; /* config, image_size, metadata_offset, n_chunks only */
};

static void shared_image_cleanup(struct shared_image *si)
{
	free(si->name);
	free(si->raw);
	manifest_cleanup(&si->m);
}

/* Ask the blockd at |sock| to attach |image|.  Returns 0 with |*si| filled,
 * or -errno after one clear message on stderr. */
static int shared_attach(const char *sock, const char *image, struct shared_image *si)
{
	memset(si, 0, sizeof(*si));
	json_t *q = json_pack("{s:s,s:s}", "op", "attach", "image", image);
	char *line = q ? json_dumps(q, JSON_COMPACT) : NULL, *reply = NULL;
	json_decref(q);
	if (!line)
		return -ENOMEM;
	unsigned errors_before = log_errors_logged();
	int r = blockd_ctl_call(sock, line, &reply);
	free(line);
	if (r < 0) {
		if (log_errors_logged() == errors_before)
			fprintf(stderr, "kindling run: cannot reach the blockd at %s: %s (is `blockd serve --control %s` "
				"running?)\n", sock, strerror(-r), sock);
		return r;
	}
	json_t *j = json_loads(reply, 0, NULL);
	free(reply);
	const char *name = json_string_value(json_object_get(j, "image"));
	const char *mnt = json_string_value(json_object_get(j, "mount"));
	if (!json_is_true(json_object_get(j, "ok"))) {
		const char *err = json_string_value(json_object_get(j, "error"));
		fprintf(stderr, "kindling run: the blockd at %s cannot attach %s: %s\n", sock, image,
			err ? err : "malformed reply");
		r = json_integer_value(json_object_get(j, "errno")) == ENOENT ? -ENOENT : -EIO;
	} else if (!name || !mnt || !*mnt || strchr(name, '/')) {
		fprintf(stderr, "kindling run: the blockd at %s %s\n", sock,
			mnt && !*mnt ? "serves no FUSE mount (start it with `blockd serve --mount DIR`)"
				     : "sent an attach reply without the image's mount (an older blockd?)");
		r = -EPROTO;
	} else if ((r = run_config_from_json(json_object_get(j, "config"), &si->m.config)) < 0) {
		fprintf(stderr, "kindling run: the blockd at %s sent a malformed run configuration\n", sock);
	} else {
		si->m.image_size = (uint64_t)json_integer_value(json_object_get(j, "size"));
		si->m.metadata_offset = (uint64_t)json_integer_value(json_object_get(j, "metadata_offset"));
		si->m.n_chunks = (size_t)json_integer_value(json_object_get(j, "chunks_stored"));
		si->name = strdup(name);
		si->raw = xasprintf("%s/%s/image.raw", mnt, name);
		r = si->name && si->raw ? 0 : -ENOMEM;
	}
	json_decref(j);
	if (r < 0)
		shared_image_cleanup(si);
	return r;
}

/* The serving blockd's stats.json object for |name|, or NULL. */
static json_t *shared_stats(const char *sock, const char *name)
{
	json_t *q = json_pack("{s:s,s:s}", "op", "stats", "image", name);
	char *line = q ? json_dumps(q, JSON_COMPACT) : NULL, *reply = NULL;
	json_decref(q);
	json_t *stats = NULL;
	if (line && blockd_ctl_call(sock, line, &reply) == 0) {
		json_t *j = json_loads(reply, 0, NULL);
		stats = json_incref(json_object_get(j, "stats"));
		json_decref(j);
	}
	free(line);
	free(reply);
	return json_is_object(stats) ? stats : (json_decref(stats), NULL);
}

/* The host's blockd control socket: $KINDLING_BLOCKD_CONTROL, else
 * $KINDLING_HOME/blockd.sock (where `blockd serve` listens by default).
 * Returns a malloc'd path, or NULL. */
static char *host_blockd_control(const char *home)
{
	const char *e = getenv("KINDLING_BLOCKD_CONTROL");
	if (e && *e)
		return strdup(e);
	return home ? xasprintf("%s/blockd.sock", home) : NULL;
}

/* Should this run use the host's blockd?  Only when nothing asked for a
 * private one: --private-blockd, a cache option (only a private blockd
 * honours it) or --snapshot (which serves memory from its own cache).
 * Returns the trusted control socket (malloc'd) or NULL; says on stderr why
 * a socket that is there cannot be used, and stays quiet when none is. */
static char *find_host_blockd(const struct run_opts *o, const char *home)
{
	if (o->blockd || o->private_blockd || o->cache_opt || o->snapshot)
		return NULL;
	char *sock = host_blockd_control(home), why[512];
	if (!sock)
		return NULL;
	int r = blockd_ctl_find(sock, why, sizeof(why));
	if (r == 0)
		return sock;
	if (r != -ENOENT)
		fprintf(stderr, "kindling: not using the host's blockd: %s; running with a private blockd\n", why);
	free(sock);
	return NULL;
}

/* ---- --timings ------------------------------------------------------------------------------------------------ */

/* Write the timeline and what the run learned to |fd| (opened before the run,
 * so a bad path failed before anything ran). */
static void write_timings(int fd, const char *path, struct timeline *tl, const struct run_opts *o,
			  const struct sandbox_ops *ops, int r, const struct sandbox_result *res, int status,
			  double t0, double end)
{
	json_t *j = timeline_json(tl);
	if (!j) {
		log_warn("cannot write the timings to %s: out of memory", path);
		return;
	}
	/* first_output_s and exit_s count from t0 (the top of main). */
	double first = r == 0 && res->first_output_s >= 0 ? timeline_ms_since_start(tl, t0 + res->first_output_s) : -1;
	double exit_at = r == 0 ? t0 + res->exit_s : end;
	json_object_set_new(j, "total_ms", json_real(timeline_ms_since_start(tl, exit_at)));
	json_object_set_new(j, "first_output_ms", json_real(first));
	json_object_set_new(j, "exit_ms", json_real(timeline_ms_since_start(tl, exit_at)));
	json_object_set_new(j, "end_ms", json_real(timeline_ms_since_start(tl, end)));
	json_object_set_new(j, "image", json_string(o->image));
	json_object_set_new(j, "backend", json_string(ops ? ops->name : ""));
	json_object_set_new(j, "blockd", json_string(o->blockd ? "shared" : "private"));
	if (o->blockd)
		json_object_set_new(j, "blockd_control", json_string(o->blockd));
	json_object_set_new(j, "status", json_integer(status));
	char *s = json_dumps(j, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
	json_decref(j);
	if (!s || write_full(fd, s, strlen(s)) < 0 || write_full(fd, "\n", 1) < 0)
		log_warn("cannot write the timings to %s: %s", path, strerror(s ? errno : ENOMEM));
	free(s);
}

/* ---- run ---------------------------------------------------------------------------------------------------- */

static int cmd_run(int argc, char **argv, double t0)
{
	/* Limits by default: one runaway function must not take the host. */
	struct run_opts o = { .isolation = "auto", .readahead = -1, .memory = 1ull << 30, .pids = 1024 };
	int status = EXIT_USAGE, timings_fd = -1;
	char *home = NULL, *store = NULL, *l1 = NULL, *mnt = NULL, *raw = NULL, *host_sock = NULL;
	struct blockd *b = NULL;
	struct timeline *tl = NULL;
	struct shared_image si = { 0 };
	const struct sandbox_ops *ops = NULL;
	struct sandbox_result res;
	struct blockd_image *img = NULL;
	bool ran = false;
	int r = -EINVAL;
	struct run_snapshot *snap = NULL;
	struct str_list eff = { 0 }; /* the command a snapshot records, when the image's */
	json_t *report = NULL;
	if (parse_args(argc, argv, &o) < 0) {
		usage(stderr);
		goto out;
	}
	if (o.help) {
		usage(stdout);
		status = 0;
		goto out;
	}
	/* A bad --timings path fails here, before anything runs. */
	if (o.timings && (timings_fd = open(o.timings, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0) {
		fprintf(stderr, "kindling run: --timings %s: cannot open it for writing: %s\n", o.timings,
			strerror(errno));
		goto out;
	}
	if (o.timings && !(tl = timeline_new())) {
		fprintf(stderr, "kindling run: --timings: %s\n", strerror(errno));
		goto out;
	}
	timeline_mark_at(tl, "pre-main", t0);
	status = EXIT_SETUP;
	log_set_level(o.verbose > 1 ? LOG_DEBUG : o.verbose ? LOG_INFO : LOG_WARN);

	/* Refuse an isolation this host cannot give before touching anything. */
	char notice[512];
	ops = sandbox_pick(o.isolation, notice, sizeof(notice));
	if (!ops) {
		fprintf(stderr, "kindling run: %s\n", notice);
		goto out;
	}
	if (notice[0])
		fprintf(stderr, "kindling: %s\n", notice);
	if (o.snapshot && strcmp(ops->name, "microvm") != 0) {
		fprintf(stderr, "kindling run: --snapshot needs the micro-VM (--isolation microvm); the %s sandbox "
			"has no memory to snapshot\n", ops->name);
		goto out;
	}
	timeline_mark(tl, "args");

	/* An explicit --blockd must work; the host's blockd found on its own
	 * may fail, and then this run falls back to a private one. */
	bool explicit_blockd = o.blockd != NULL;
	if (!explicit_blockd) {
		home = kindling_home_dir();
		if ((host_sock = find_host_blockd(&o, home)))
			o.blockd = host_sock;
		timeline_mark(tl, "blockd-find");
		store = o.store ? strdup(o.store) : home ? xasprintf("%s/store", home) : NULL;
		l1 = o.l1_dir ? strdup(o.l1_dir) : home ? xasprintf("%s/l1", home) : NULL;
		const char *tmp = getenv("TMPDIR");
		mnt = xasprintf("%s/kindling-run.XXXXXX", tmp && *tmp ? tmp : "/tmp");
		if (!home || !store || !l1 || !mnt)
			goto out;
		/* The L1 directory is the cache's to create; one it cannot use runs the
		 * image without L1 (one notice), never fails it. */
		if (!mkdtemp(mnt)) {
			log_err("cannot create a mount point %s: %s (set TMPDIR to a writable directory)", mnt,
				strerror(errno));
			free(mnt);
			mnt = NULL;
			goto out;
		}
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
		r = -r;
		goto out;
	}
	pthread_detach(sig_thread);
	timeline_mark(tl, "setup");

	const struct manifest *m;
	if (o.blockd) {
		/* A running blockd: one request, and its mount serves the image. */
		r = shared_attach(o.blockd, o.image, &si);
		if (r < 0 && explicit_blockd)
			goto out;
		if (r < 0) {
			fprintf(stderr, "kindling: the host's blockd at %s cannot run %s (see above); running it with a "
				"private blockd\n", o.blockd, o.image);
			o.blockd = NULL;
		} else {
			m = &si.m;
			raw = strdup(si.raw);
			if (!raw)
				goto out;
			timeline_mark(tl, "blockd-attach");
		}
	}
	if (!o.blockd) {
		/* Running reads an existing store; it never creates one. */
		struct store_options store_opt = { .must_exist = true };
		struct blockd_config cfg = {
			.cache = { .origin_uri = store, .origin_options = &store_opt, .l1_dir = l1,
				   .l1_max_bytes = o.l1_size, .l2_nodes = (const char *const *)o.l2.items,
				   .n_l2_nodes = o.l2.n },
			.prefetch = !o.no_prefetch,
			.readahead_chunks = o.readahead > 0 ? (unsigned)o.readahead : 0,
			.no_readahead = o.readahead == 0,
			.readahead_min_run = o.readahead_min_run,
		};
		struct blockd_mount_options mopt = { .done_fd = -1 };
		if ((r = blockd_new(&cfg, &b)) < 0)
			goto out;
		timeline_mark(tl, "blockd-new");
		unsigned errors_before = log_errors_logged();
		if ((r = blockd_attach(b, o.image, &img)) < 0) {
			/* One failure, one message: the attach said why, unless it could not. */
			if (log_errors_logged() == errors_before)
				fprintf(stderr, "kindling run: cannot attach %s from %s: %s\n", o.image, store,
					strerror(-r));
			goto out;
		}
		timeline_mark(tl, "attach");
		if ((r = blockd_mount(b, mnt, &mopt)) < 0)
			goto out;
		raw = xasprintf("%s/%s/image.raw", mnt, blockd_image_name(img));
		if (!raw)
			goto out;
		m = blockd_image_manifest(img);
		timeline_mark(tl, "fuse-mount");
	}
	double attach_s = now_seconds() - t0;

	/* The invocation a snapshot records and a restore must match. */
	char **eff_argv = NULL;
	if (o.snapshot) {
		if (o.argv) {
			eff_argv = o.argv;
		} else {
			for (size_t i = 0; m->config.entrypoint && m->config.entrypoint[i]; i++)
				if (str_list_add(&eff, m->config.entrypoint[i]) < 0)
					goto out;
			for (size_t i = 0; m->config.cmd && m->config.cmd[i]; i++)
				if (str_list_add(&eff, m->config.cmd[i]) < 0)
					goto out;
			if (str_list_add(&eff, "") < 0)
				goto out;
			free(eff.items[--eff.n]);
			eff.items[eff.n] = NULL;
			eff_argv = eff.items;
		}
	}
	struct run_config identity = { .entrypoint = eff_argv, .env = m->config.env,
				       .working_dir = m->config.working_dir, .user = m->config.user };
	if (o.snapshot) {
		struct run_snapshot_options so = { .ref = o.snapshot, .image = o.image, .identity = &identity,
						   .store_uri = store, .l1_dir = l1, .l1_size = o.l1_size,
						   .l2 = (const char *const *)o.l2.items, .n_l2 = o.l2.n,
						   .prefetch = !o.no_prefetch, .host_mem_off = o.no_host_mem,
						   .host_mem_dir = o.host_mem_dir, .host_mem_size = o.host_mem_size };
		r = run_snapshot_new(&so, &snap);
		if (r < 0) {
			fprintf(stderr, "kindling run: --snapshot %s: cannot use it (see above)\n", o.snapshot);
			goto out;
		}
	}

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
		.timeline = tl,
	};
	if (snap && (r = run_snapshot_arm(snap, &spec)) < 0)
		goto out;
	r = sandbox_run(ops, &spec, &res);
	ran = true;
	if (snap && run_snapshot_finish(snap, r, &res, t0, o.snapshot_info) < 0 && r == 0)
		r = -EIO; /* the memory server failed and stopped the VM */
	if (r < 0)
		status = r == -ENOENT || r == -EACCES ? EXIT_NOCMD : EXIT_SETUP;
	else
		status = res.term_signal ? 128 + res.term_signal : res.exit_code;
	if (r == -EIO && snap)
		goto out; /* the restore failed: no report of a run that did not happen */
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

	json_t *stats;
	if (o.blockd) {
		stats = shared_stats(o.blockd, si.name);
	} else {
		char *s = blockd_image_stats_json(img);
		stats = s ? json_loads(s, 0, NULL) : NULL;
		free(s);
	}
	report = stats ? build_report(&o, ops, r, &res, status, attach_s, m, stats) : NULL;
	json_decref(stats);
	if (!report)
		log_warn("cannot build the report (out of memory?)");
	if (report) {
		/* Which blockd served the run: "shared" (--blockd or the host's,
		 * found at its control socket) or "private" (this run's own). */
		json_object_set_new(report, "blockd", json_string(o.blockd ? "shared" : "private"));
		if (o.blockd)
			json_object_set_new(report, "blockd_control", json_string(o.blockd));
	}
	if (report && o.blockd)
		/* The serving blockd counts from its attach, not from this run. */
		json_object_set_new(report, "counters", json_string("since the shared blockd attached the image"));
out:;
	double end = now_seconds();
	run_snapshot_free(snap);
	str_list_clear(&eff);
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
	if (timings_fd >= 0 && tl)
		write_timings(timings_fd, o.timings, tl, &o, ops, ran ? r : -ECANCELED, &res, status, t0, end);
	if (timings_fd >= 0)
		close(timings_fd);
	timeline_free(tl);
	shared_image_cleanup(&si);
	json_decref(report);
	free(raw);
	free(mnt);
	free(host_sock);
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
	if (argc >= 2 && strcmp(argv[1], "snapshot-serve") == 0)
		return cmd_snapshot_serve(argc - 2, argv + 2);
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
