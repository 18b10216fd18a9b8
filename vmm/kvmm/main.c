/* kvmm: one micro-VM per process, driven like Firecracker.
 *
 *   kvmm [--api-sock PATH] [--config-file FILE] [--no-api] [--id ID]
 *        [--log-path PATH] [--level LEVEL] [--boot-timer] [--no-seccomp]
 *        [--chroot DIR] [--user USER] [--memory-limit SIZE] [--pids-limit N]
 *
 * The last four do what Firecracker's jailer does around it: a cgroup with
 * limits, a chroot holding what the VM needs, and an unprivileged user; they
 * are applied first, before any file of the configuration is opened, so
 * every path (the config file's too) is inside the jail.
 *
 * With the API (the default) it serves Firecracker's REST API on PATH and
 * boots on PUT /actions InstanceStart, or at once when --config-file is
 * given too.  With --no-api the config file is the whole description.  The
 * guest's serial console is on stdout.  The process exits 0 when the guest
 * powers off or reboots, 1 on any failure (the reason is logged). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define LOG_COMPONENT "kvmm"
#include "common/common.h"
#include "vmm/kvmm/kvmm.h"

#define DEFAULT_API_SOCK "/run/firecracker.socket"

struct opts {
	const char *api_sock, *config_file, *id, *log_path, *level;
	bool no_api, boot_timer, no_seccomp;
	struct kvmm_jail jail;
	bool jailed;
};

/* The VM as the API hooks and the main thread share it. */
struct runner {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct kvmm_vm *vm; /* set once, when InstanceStart succeeded */
	bool seccomp;
	double t0; /* process start, for the boot-time line */
	const char *id;
};

static void usage(FILE *f)
{
	fprintf(f, "usage: kvmm [--api-sock PATH] [--config-file FILE] [--no-api] [--id ID]\n"
		   "            [--log-path PATH] [--level Error|Warning|Info|Debug] [--boot-timer] [--no-seccomp]\n"
		   "\n"
		   "  --api-sock PATH     serve Firecracker's API here (default " DEFAULT_API_SOCK ")\n"
		   "  --config-file FILE  Firecracker's JSON configuration; boots at once\n"
		   "  --no-api            no API socket (needs --config-file)\n"
		   "  --id ID             instance id, used in log lines\n"
		   "  --log-path PATH     append kvmm's log there instead of stderr\n"
		   "  --level LEVEL       log level (default Warning)\n"
		   "  --boot-timer        accepted for Firecracker compatibility; kvmm always prints\n"
		   "                      the time from process start to InstanceStart\n"
		   "  --no-seccomp        do not confine kvmm's threads (for debugging a filter)\n"
		   "  --chroot DIR        jail: chroot here first (holding dev/kvm, the kernel, the drives)\n"
		   "  --user USER         jail: then run as USER (uid[:gid] or name[:group] of the host)\n"
		   "  --memory-limit SIZE jail: a cgroup kvmm-ID with this memory limit (e.g. 512M)\n"
		   "  --pids-limit N      jail: the same cgroup's limit on tasks\n");
}

static int parse_level(const char *s, enum log_level *out)
{
	static const struct {
		const char *name;
		enum log_level level;
	} names[] = {
		{ "off", LOG_SILENT }, { "error", LOG_ERR }, { "warning", LOG_WARN }, { "warn", LOG_WARN },
		{ "info", LOG_INFO },  { "debug", LOG_DEBUG }, { "trace", LOG_DEBUG },
	};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (strcasecmp(s, names[i].name) == 0) {
			*out = names[i].level;
			return 0;
		}
	}
	return -EINVAL;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
	enum {
		O_API_SOCK = 256,
		O_CONFIG,
		O_NO_API,
		O_ID,
		O_LOG_PATH,
		O_LEVEL,
		O_BOOT_TIMER,
		O_NO_SECCOMP,
		O_CHROOT,
		O_USER,
		O_MEMORY,
		O_PIDS,
	};
	static const struct option longopts[] = {
		{ "api-sock", required_argument, NULL, O_API_SOCK },
		{ "config-file", required_argument, NULL, O_CONFIG },
		{ "no-api", no_argument, NULL, O_NO_API },
		{ "id", required_argument, NULL, O_ID },
		{ "log-path", required_argument, NULL, O_LOG_PATH },
		{ "level", required_argument, NULL, O_LEVEL },
		{ "boot-timer", no_argument, NULL, O_BOOT_TIMER },
		{ "no-seccomp", no_argument, NULL, O_NO_SECCOMP },
		{ "chroot", required_argument, NULL, O_CHROOT },
		{ "user", required_argument, NULL, O_USER },
		{ "memory-limit", required_argument, NULL, O_MEMORY },
		{ "pids-limit", required_argument, NULL, O_PIDS },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	memset(o, 0, sizeof(*o));
	o->api_sock = DEFAULT_API_SOCK;
	o->id = "anonymous-instance";
	int c;
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case O_API_SOCK:
			o->api_sock = optarg;
			break;
		case O_CONFIG:
			o->config_file = optarg;
			break;
		case O_NO_API:
			o->no_api = true;
			break;
		case O_ID:
			o->id = optarg;
			break;
		case O_LOG_PATH:
			o->log_path = optarg;
			break;
		case O_LEVEL:
			o->level = optarg;
			break;
		case O_BOOT_TIMER:
			o->boot_timer = true;
			break;
		case O_NO_SECCOMP:
			o->no_seccomp = true;
			break;
		case O_CHROOT:
			o->jail.chroot_dir = optarg;
			o->jailed = true;
			break;
		case O_USER:
			o->jail.user = optarg;
			o->jailed = true;
			break;
		case O_MEMORY: {
			uint64_t v;
			if (parse_size(optarg, &v) < 0 || v == 0) {
				fprintf(stderr, "kvmm: --memory-limit %s: want a size such as 512M or 2G\n", optarg);
				return -EINVAL;
			}
			o->jail.memory_limit = v;
			o->jailed = true;
			break;
		}
		case O_PIDS: {
			char *end;
			errno = 0;
			unsigned long v = strtoul(optarg, &end, 10);
			if (errno || *end || end == optarg || v == 0 || v > UINT32_MAX) {
				fprintf(stderr, "kvmm: --pids-limit %s: want a positive number\n", optarg);
				return -EINVAL;
			}
			o->jail.pids_limit = (uint32_t)v;
			o->jailed = true;
			break;
		}
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			return -EINVAL;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "kvmm: unexpected argument \"%s\"\n", argv[optind]);
		usage(stderr);
		return -EINVAL;
	}
	o->jail.id = o->id;
	if (o->no_api && !o->config_file) {
		fprintf(stderr, "kvmm: --no-api needs --config-file: without the API nothing else can configure the VM\n");
		return -EINVAL;
	}
	return 0;
}

/* Route the log to |path| (appended, created 0600): stderr becomes it. */
static int open_log(const char *path)
{
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		int e = errno;
		fprintf(stderr, "kvmm: --log-path %s: %s\n", path, strerror(e));
		return -e;
	}
	if (fd != STDERR_FILENO) {
		if (dup2(fd, STDERR_FILENO) < 0) {
			int e = errno;
			fprintf(stderr, "kvmm: --log-path %s: dup2: %s\n", path, strerror(e));
			close(fd);
			return -e;
		}
		close(fd);
	}
	return 0;
}

/* Start |vm| (created or restored) and hand it to the runner; on failure
 * destroy it.  |how| goes into the boot-time line. */
static int run_vm(struct runner *run, struct kvmm_vm *vm, const char *how, char *err, size_t errlen)
{
	kvmm_vm_set_seccomp(vm, run->seccomp);
	int r = kvmm_vm_start(vm);
	if (r < 0) {
		snprintf(err, errlen, "cannot start the VM: %s (kvmm's log has the details)", strerror(-r));
		kvmm_vm_destroy(vm);
		return r;
	}
	/* Like Firecracker's boot timer: the time from process start until
	 * the vCPUs run, one line whatever the log level. */
	fprintf(stderr, "kvmm: instance %s %s %.3f ms after kvmm started\n", run->id, how,
		(now_seconds() - run->t0) * 1e3);
	pthread_mutex_lock(&run->lock);
	run->vm = vm;
	pthread_cond_broadcast(&run->cond);
	pthread_mutex_unlock(&run->lock);
	return 0;
}

/* Create and start the VM; on success hand it to the runner. */
static int boot(struct runner *run, const struct kvmm_config *cfg, char *err, size_t errlen)
{
	struct kvmm_vm *vm;
	int r = kvmm_vm_create(cfg, &vm);
	if (r < 0) {
		/* The most common cause by far gets named in the API's answer
		 * too, not only in the log. */
		int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
		if (kvm < 0)
			snprintf(err, errlen,
				 "cannot open /dev/kvm: %s (does this host have KVM, and may kvmm's user open it?)",
				 strerror(errno));
		else
			snprintf(err, errlen, "cannot create the VM: %s (kvmm's log has the details)", strerror(-r));
		if (kvm >= 0)
			close(kvm);
		return r;
	}
	return run_vm(run, vm, "started", err, errlen);
}

static int hook_instance_start(void *ctx, const struct kvmm_config *cfg, char *err, size_t errlen)
{
	return boot(ctx, cfg, err, errlen);
}

static int hook_ctrl_alt_del(void *ctx, char *err, size_t errlen)
{
	struct runner *run = ctx;
	pthread_mutex_lock(&run->lock);
	struct kvmm_vm *vm = run->vm;
	pthread_mutex_unlock(&run->lock);
	int r = vm ? kvmm_vm_send_ctrl_alt_del(vm) : -EAGAIN;
	if (r == -EAGAIN)
		snprintf(err, errlen, "the VM is not running, or its keyboard is disabled");
	else if (r == -EBUSY)
		snprintf(err, errlen, "the guest has not read the previous key presses yet; try again");
	else if (r < 0)
		snprintf(err, errlen, "%s", strerror(-r));
	return r;
}

static struct kvmm_vm *runner_vm(struct runner *run)
{
	pthread_mutex_lock(&run->lock);
	struct kvmm_vm *vm = run->vm;
	pthread_mutex_unlock(&run->lock);
	return vm;
}

static int hook_set_paused(void *ctx, bool pause, char *err, size_t errlen)
{
	struct kvmm_vm *vm = runner_vm(ctx);
	int r = !vm ? -EAGAIN : pause ? kvmm_vm_pause(vm) : kvmm_vm_resume(vm);
	if (r == -EAGAIN)
		snprintf(err, errlen, "the VM is not running (it ended or never started)");
	else if (r < 0)
		snprintf(err, errlen, "%s", strerror(-r));
	return r;
}

static int hook_snapshot_create(void *ctx, const char *snapshot_path, const char *mem_file_path, char *err,
				size_t errlen)
{
	struct kvmm_vm *vm = runner_vm(ctx);
	if (!vm) {
		snprintf(err, errlen, "the VM is not running");
		return -EAGAIN;
	}
	return kvmm_vm_snapshot_create(vm, snapshot_path, mem_file_path, err, errlen);
}

static int hook_snapshot_load(void *ctx, struct kvmm_config *cfg, const char *snapshot_path, bool uffd,
			      const char *backend_path, const struct kvmm_restore_overrides *ov, bool resume, char *err,
			      size_t errlen)
{
	struct runner *run = ctx;
	struct kvmm_vm *vm;
	int r = kvmm_vm_restore(snapshot_path, uffd ? KVMM_MEM_UFFD : KVMM_MEM_FILE, backend_path, ov, resume, cfg,
				&vm, err, errlen);
	if (r < 0)
		return r;
	return run_vm(run, vm, "restored", err, errlen);
}

static int load_config(const struct opts *o, struct kvmm_config *cfg)
{
	char err[512];
	int r = kvmm_config_load_file(cfg, o->config_file, err, sizeof(err));
	if (r < 0) {
		log_err("--config-file %s: %s", o->config_file, err[0] ? err : strerror(-r));
		return r;
	}
	r = kvmm_config_validate(cfg, err, sizeof(err));
	if (r < 0)
		log_err("--config-file %s: %s", o->config_file, err);
	return r;
}

int main(int argc, char **argv)
{
	struct runner run = { .t0 = now_seconds() };
	struct opts o;
	struct kvmm_config cfg;
	struct kvmm_api *api = NULL;
	int r;

	if (parse_args(argc, argv, &o) < 0)
		return 1;
	if (o.log_path && open_log(o.log_path) < 0)
		return 1;
	if (o.level) {
		enum log_level lv;
		if (parse_level(o.level, &lv) < 0) {
			fprintf(stderr, "kvmm: --level %s: want Off, Error, Warning, Info, Debug or Trace\n", o.level);
			return 1;
		}
		log_set_level(lv);
	}
	/* A console or API peer that goes away must be an error return from
	 * write(), not the end of the VM. */
	signal(SIGPIPE, SIG_IGN);

	/* A snapshot's vmstate checksum needs libcrypto, which kindling opens on
	 * first use; neither the jail's root nor the API thread's seccomp filter
	 * would let it be opened then.  Without the API there are no snapshots. */
	if (!o.no_api)
		crypto_lib_load();

	/* The jail comes first, while kvmm is one thread and has opened
	 * nothing the VM will use. */
	if (o.jailed && kvmm_jail_enter(&o.jail) < 0)
		return 1;

	pthread_mutex_init(&run.lock, NULL);
	pthread_cond_init(&run.cond, NULL);
	run.seccomp = !o.no_seccomp;
	run.id = o.id;
	kvmm_config_init(&cfg);
	if (o.config_file && load_config(&o, &cfg) < 0) {
		kvmm_config_free(&cfg);
		return 1;
	}

	char err[512];
	if (o.no_api) {
		r = boot(&run, &cfg, err, sizeof(err));
		kvmm_config_free(&cfg); /* the VM keeps nothing of it */
		if (r < 0) {
			log_err("%s", err);
			return 1;
		}
	} else {
		struct kvmm_api_hooks hooks = {
			.ctx = &run,
			.instance_start = hook_instance_start,
			.send_ctrl_alt_del = hook_ctrl_alt_del,
			.set_paused = hook_set_paused,
			.snapshot_create = hook_snapshot_create,
			.snapshot_load = hook_snapshot_load,
			.seccomp = run.seccomp,
		};
		/* Firecracker replaces a stale socket file; kvmm_api_start()
		 * does, and refuses anything that is not a socket. */
		if (o.config_file) {
			/* Booted from the file; the API serves the rest. */
			r = boot(&run, &cfg, err, sizeof(err));
			if (r < 0) {
				log_err("%s", err);
				kvmm_config_free(&cfg);
				return 1;
			}
		}
		r = kvmm_api_start(&api, o.api_sock, &cfg, &hooks);
		if (r < 0) {
			if (run.vm)
				kvmm_vm_destroy(run.vm);
			kvmm_config_free(&cfg);
			return 1;
		}
		if (o.config_file)
			kvmm_api_set_running(api);
		log_info("instance %s: waiting for InstanceStart on %s", o.id, o.api_sock);
		pthread_mutex_lock(&run.lock);
		while (!run.vm)
			pthread_cond_wait(&run.cond, &run.lock);
		pthread_mutex_unlock(&run.lock);
	}

	/* From here the main thread only waits and tears down. */
	if (run.seccomp && kvmm_seccomp_apply(KVMM_THREAD_VMM) < 0) {
		kvmm_api_stop(api);
		kvmm_vm_destroy(run.vm);
		kvmm_config_free(&cfg);
		return 1;
	}
	r = kvmm_vm_wait(run.vm);
	kvmm_api_stop(api);
	kvmm_vm_destroy(run.vm);
	kvmm_config_free(&cfg);
	if (r < 0) {
		log_err("instance %s: the VM failed: %s", o.id, strerror(-r));
		return 1;
	}
	log_info("instance %s: the guest shut down", o.id);
	return 0;
}
