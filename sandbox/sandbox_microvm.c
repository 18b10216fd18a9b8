/* The micro-VM sandbox: the image's entrypoint in a KVM guest run by kvmm.
 *
 *   host (this file)                          guest
 *   config.json, listen on {uds}_1024
 *   (and on {uds}_1025 for a Runtime API)
 *   kvmm --no-api --config-file config.json   boots; the image is /dev/vda
 *                                             (EROFS, read-only)
 *   accept  <------- vsock port 1024 -------  kindling-guest-init connects
 *   on_ready({uds}_1025's socket)
 *   A.. E.. W U P G  ---------------------->  listens on 127.0.0.1:PORT, runs the workload
 *   the caller accepts on {uds}_1025 <- 1025 - one vsock stream per connection the
 *                                              workload makes to 127.0.0.1:PORT
 *   O/R to out_fd/err_fd  <-----------------  O R ... X
 *   wait for kvmm                             syncs, powers off
 *
 * kvmm also serves its API on api.sock in the run's directory (--api-sock
 * with --config-file), so that sandbox_vm_snapshot() can pause it, take a
 * Full snapshot and resume it, from any thread, while this file serves the
 * guest.
 *
 * A restore (spec->restore) replaces the boot and the invocation:
 *
 *   listen on {uds}_1024 (and {uds}_1025)
 *   kvmm --api-sock api.sock
 *   PUT /snapshot/load {vmstate, memory backend,   the VM resumes where it was
 *     vsock_override: {uds}, drive_overrides:       snapshotted; the vsock transport
 *     rootfs = image_path, resume_vm}               is reset
 *   accept  <------- vsock port 1024 -------------  the init reconnects
 *   'S' (generation 1, 32 bytes of getrandom) --->  reseeds its RNG, replays the
 *                                                   unanswered Runtime API requests
 *   on_ready({uds}_1025's socket)                   over new streams
 *   O/R to out_fd/err_fd  <----------------------  O R ... X
 *
 * Everything for one run lives in a private temporary directory (the config,
 * the vsock sockets, kvmm's API socket and log), removed on every path.  A
 * timeout or spec->stop_fd kills kvmm, which ends every connection with it.
 *
 * Where the pieces are (environment):
 *   KINDLING_KVMM          the kvmm program (default: "kvmm" next to the
 *                          running executable)
 *   KINDLING_GUEST_KERNEL  the guest's kernel, a bzImage (default:
 *                          "kindling-guest-kernel" next to the executable)
 *   KINDLING_GUEST_INITRD  the guest's initramfs with kindling-guest-init
 *                          (default: "kindling-guest-initrd" next to it)
 *   KINDLING_GUEST_BOOT_TIMEOUT  seconds from kvmm's start (or a restore's
 *                          load) to the guest init's connection, 1 to 3600
 *                          (default 60; a host that emulates its CPU, as
 *                          nested KVM under QEMU's TCG does, needs more);
 *                          spec->timeout_s, if sooner, still ends the run
 *
 * The guest has no stdin (spec->in_fd is ignored) and no pids limit of ours;
 * the memory limit is the VM's RAM. */
#define LOG_COMPONENT "sandbox"
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "common/http_client.h"
#include "vmm/guest/protocol.h"
#include "sandbox/internal.h"

extern char **environ;

#define MICROVM_DEFAULT_MEM_MIB 256u
#define MICROVM_MIN_MEM_MIB 64u
#define MICROVM_GUEST_CID 3
#define MICROVM_BOOT_TIMEOUT_S 60.0 /* default bound from spawn to the init's connection */
#define MICROVM_BOOT_TIMEOUT_MAX_S 3600
#define MICROVM_POWEROFF_S 10.0	    /* from 'X' to kvmm's exit */
#define MICROVM_API_VSOCK_PORT 1025u /* where the guest init carries Runtime API connections */
#define MICROVM_ROOT_DRIVE "rootfs"  /* the image's drive_id in the VM's configuration */
#define MICROVM_API_SOCK_WAIT_S 10.0 /* from kvmm's spawn (or boot) to its API socket */
#define MICROVM_API_TIMEOUT_MS 120000u /* one API call; a snapshot writes all of guest RAM */

/* The path of |name| next to the running executable, into |<out, len>|. */
static int next_to_exe(const char *name, char *out, size_t len)
{
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n < 0)
		return -errno;
	exe[n] = '\0';
	int k = snprintf(out, len, "%s/%s", dirname(exe), name);
	return k < 0 || (size_t)k >= len ? -ENAMETOOLONG : 0;
}

static int pick_path(const char *env, const char *def, char *out, size_t len)
{
	const char *v = getenv(env);
	if (v && *v) {
		int k = snprintf(out, len, "%s", v);
		return k < 0 || (size_t)k >= len ? -ENAMETOOLONG : 0;
	}
	return next_to_exe(def, out, len);
}

int microvm_find_paths(struct microvm_paths *p, char *why, size_t len)
{
	static const struct {
		const char *env, *def, *what;
		bool exec;
	} parts[] = {
		{ "KINDLING_KVMM", "kvmm", "the kvmm program", true },
		{ "KINDLING_GUEST_KERNEL", "kindling-guest-kernel", "the guest kernel", false },
		{ "KINDLING_GUEST_INITRD", "kindling-guest-initrd", "the guest initramfs", false },
	};
	const char *bound = getenv("KINDLING_GUEST_BOOT_TIMEOUT");
	p->boot_timeout_s = MICROVM_BOOT_TIMEOUT_S;
	if (bound && *bound) {
		char *end = NULL;
		errno = 0;
		long v = strtol(bound, &end, 10);
		if (errno || *end || v < 1 || v > MICROVM_BOOT_TIMEOUT_MAX_S) {
			snprintf(why, len, "KINDLING_GUEST_BOOT_TIMEOUT=%.32s is not a number of seconds from 1 to %d",
				 bound, MICROVM_BOOT_TIMEOUT_MAX_S);
			return -EINVAL;
		}
		p->boot_timeout_s = (double)v;
	}
	char *dst[] = { p->kvmm, p->kernel, p->initrd };
	for (size_t i = 0; i < 3; i++) {
		int r = pick_path(parts[i].env, parts[i].def, dst[i], PATH_MAX);
		if (r < 0) {
			snprintf(why, len, "cannot locate %s: %s (set %s)", parts[i].what, strerror(-r), parts[i].env);
			return r;
		}
		if (access(dst[i], parts[i].exec ? X_OK : R_OK) < 0) {
			r = -errno;
			snprintf(why, len, "%s %s: %s (set %s)", parts[i].what, dst[i], strerror(-r), parts[i].env);
			return r;
		}
	}
	return 0;
}

static bool microvm_available(char *why, size_t len)
{
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		snprintf(why, len, "cannot open /dev/kvm: %s (the micro-VM needs KVM; use --isolation process)",
			 strerror(errno));
		return false;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISCHR(st.st_mode)) {
		/* A regular file a script made by mistake is not KVM; kvmm would
		 * only fail later, on its first ioctl. */
		snprintf(why, len,
			 "cannot open /dev/kvm as the KVM device: it is not a character device (remove the file that "
			 "took its name; the micro-VM needs KVM; use --isolation process)");
		close(fd);
		return false;
	}
	close(fd);
	struct microvm_paths p;
	return microvm_find_paths(&p, why, len) == 0;
}

int microvm_write_config(const struct sandbox_spec *s, const struct microvm_paths *p, const char *uds_path,
			 const char *out_path)
{
	uint64_t mib = s->memory_limit ? (s->memory_limit + (1u << 20) - 1) >> 20 : MICROVM_DEFAULT_MEM_MIB;
	if (mib < MICROVM_MIN_MEM_MIB)
		mib = MICROVM_MIN_MEM_MIB; /* a kernel and its initramfs need this much before any workload */
	if (mib > (1u << 20)) {
		log_err("microvm: a memory limit of %llu MiB is more than a micro-VM takes", (unsigned long long)mib);
		return -EINVAL;
	}
	if (!s->image_path) {
		log_err("microvm: the micro-VM boots an image file; a rootfs directory needs --isolation process");
		return -EINVAL;
	}
	json_t *root = json_pack("{s:{s:s, s:s}, s:[{s:s, s:s, s:b, s:b}], s:{s:i, s:I}, s:{s:i, s:s}}",
				 "boot-source", "kernel_image_path", p->kernel, "initrd_path", p->initrd,
				 "drives", "drive_id", MICROVM_ROOT_DRIVE, "path_on_host", s->image_path, "is_root_device", 1,
				 "is_read_only", 1,
				 "machine-config", "vcpu_count", 1, "mem_size_mib", (json_int_t)mib,
				 "vsock", "guest_cid", MICROVM_GUEST_CID, "uds_path", uds_path);
	if (!root) {
		log_err("microvm: building the VM config: out of memory or a path that is not UTF-8");
		return -EINVAL;
	}
	char *text = json_dumps(root, JSON_INDENT(2));
	json_decref(root);
	if (!text)
		return -ENOMEM;
	int r = write_file_atomic(out_path, text, strlen(text), 0600);
	free(text);
	if (r < 0)
		log_err("microvm: writing %s: %s", out_path, strerror(-r));
	return r;
}

/* argv: the override, else entrypoint then cmd; pointers into the spec. */
static int build_argv(const struct sandbox_spec *s, const char ***out)
{
	char *const *ep = s->argv_override ? s->argv_override : s->config ? s->config->entrypoint : NULL;
	char *const *cmd = s->argv_override ? NULL : s->config ? s->config->cmd : NULL;
	size_t ne = 0, nc = 0;
	while (ep && ep[ne])
		ne++;
	while (cmd && cmd[nc])
		nc++;
	if (ne + nc == 0) {
		log_err("microvm: the image has no entrypoint or cmd; give a command to run");
		return -EINVAL;
	}
	const char **v = calloc(ne + nc + 1, sizeof(*v));
	if (!v)
		return -ENOMEM;
	for (size_t i = 0; i < ne; i++)
		v[i] = ep[i];
	for (size_t i = 0; i < nc; i++)
		v[ne + i] = cmd[i];
	*out = v;
	return 0;
}

static size_t name_len(const char *kv)
{
	const char *eq = strchr(kv, '=');
	return eq ? (size_t)(eq - kv) : strlen(kv);
}

/* The image's env with |over| (sandbox_env_overrides()) replacing same-named
 * entries; entries without '=' dropped.  PATH, HOME and the like are the
 * init's business: it knows the user's passwd entry. */
static int build_env(const struct sandbox_spec *s, char *const *over, struct str_list *out)
{
	char *const *base = s->config ? s->config->env : NULL;
	for (size_t i = 0; base && base[i]; i++) {
		if (!strchr(base[i], '='))
			continue;
		bool replaced = false;
		for (size_t j = 0; over && over[j] && !replaced; j++)
			replaced = name_len(over[j]) == name_len(base[i]) &&
				   strncmp(over[j], base[i], name_len(base[i])) == 0;
		if (!replaced && str_list_add(out, base[i]) < 0)
			return -ENOMEM;
	}
	for (size_t j = 0; over && over[j]; j++)
		if (strchr(over[j], '=') && str_list_add(out, over[j]) < 0)
			return -ENOMEM;
	return str_list_add(out, "") < 0 ? -ENOMEM : 0; /* room for the NULL below */
}

/* The VM as sandbox_vm_snapshot() sees it: kvmm's API socket, and whether
 * the VM is still there.  |lock| serialises snapshots with the teardown. */
struct sandbox_vm {
	pthread_mutex_t lock;
	bool gone;
	char api_sock[256];
};

/* One run's resources, so every path cleans up the same way. */
struct vm_run {
	/* unix socket paths are short anyway: the directory's must leave room
	 * for "/v.sock_1024" in 108 bytes */
	char dir[192], config[256], uds[224], listen_path[256], api_path[256], log[256];
	struct sandbox_vm vm; /* vm.api_sock: kvmm's API socket */
	int listen_fd, conn_fd, pid_fd;
	int api_fd; /* the Runtime API's unix socket until on_ready takes it, else -1 */
	pid_t pid;
	int status;
	bool reaped;
	double boot_timeout_s;
};

static void run_cleanup(struct vm_run *v)
{
	/* A snapshot in progress finishes first; later ones find the VM gone. */
	pthread_mutex_lock(&v->vm.lock);
	v->vm.gone = true;
	pthread_mutex_unlock(&v->vm.lock);
	if (v->pid > 0 && !v->reaped) {
		kill(v->pid, SIGKILL);
		while (waitpid(v->pid, &v->status, 0) < 0 && errno == EINTR)
			;
		v->reaped = true;
	}
	if (v->conn_fd >= 0)
		close(v->conn_fd);
	if (v->listen_fd >= 0)
		close(v->listen_fd);
	if (v->pid_fd >= 0)
		close(v->pid_fd);
	if (v->api_fd >= 0)
		close(v->api_fd);
	v->conn_fd = v->listen_fd = v->pid_fd = v->api_fd = -1;
	if (v->dir[0]) {
		unlink(v->config);
		unlink(v->listen_path);
		if (v->api_path[0])
			unlink(v->api_path);
		unlink(v->uds); /* kvmm removes it; not if it was killed */
		unlink(v->vm.api_sock);
		unlink(v->log);
		if (rmdir(v->dir) < 0)
			log_warn("microvm: cannot remove %s: %s", v->dir, strerror(errno));
		v->dir[0] = '\0';
	}
}

/* The last lines of kvmm's log, for an operator's error message. */
static void log_tail(const struct vm_run *v)
{
	uint8_t *buf;
	size_t len;
	if (read_file_all(v->log, 1u << 20, &buf, &len) < 0)
		return;
	if (len == 0) {
		free(buf);
		return;
	}
	size_t from = len > 2000 ? len - 2000 : 0;
	log_err("microvm: the end of kvmm's output:\n%.*s", (int)(len - from), (const char *)buf + from);
	free(buf);
}

/* kvmm with its API on v->vm.api_sock, booting v->config unless |restore|
 * (then the API's /snapshot/load builds the VM). */
static int spawn_kvmm(struct vm_run *v, const struct microvm_paths *p, bool restore)
{
	posix_spawn_file_actions_t fa;
	if (posix_spawn_file_actions_init(&fa) != 0)
		return -ENOMEM;
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 1, v->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	posix_spawn_file_actions_adddup2(&fa, 1, 2);
	char *argv[] = { (char *)p->kvmm, "--api-sock", v->vm.api_sock, "--id", "kindling",
			 restore ? NULL : "--config-file", v->config, NULL };
	int r = posix_spawn(&v->pid, p->kvmm, &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (r != 0) {
		v->pid = -1;
		log_err("microvm: starting %s: %s (set KINDLING_KVMM)", p->kvmm, strerror(r));
		return -r;
	}
#ifdef SYS_pidfd_open
	v->pid_fd = (int)syscall(SYS_pidfd_open, v->pid, 0);
#endif
	return 0;
}

/* Whether kvmm has exited (reaping it). */
static bool kvmm_exited(struct vm_run *v)
{
	if (v->reaped)
		return true;
	pid_t w = waitpid(v->pid, &v->status, WNOHANG);
	if (w == v->pid)
		v->reaped = true;
	return v->reaped;
}

/* Milliseconds until |deadline| (now_seconds() based) for poll(), capped at
 * |cap| so a missing pidfd still notices kvmm's exit. */
static int ms_until(double deadline, int cap)
{
	double left = deadline - now_seconds();
	if (left <= 0)
		return 0;
	return left * 1000 > cap ? cap : (int)(left * 1000) + 1;
}

/* Listen on the unix socket |path|, a fresh name in the run's directory. */
static int listen_unix(const char *path, int backlog, int *out_fd)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path)) {
		log_err("microvm: %s is too long for a unix socket; set TMPDIR to a shorter directory", path);
		return -ENAMETOOLONG;
	}
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, backlog) < 0) {
		int e = errno;
		log_err("microvm: listening on %s: %s", path, strerror(e));
		if (fd >= 0)
			close(fd);
		return -e;
	}
	*out_fd = fd;
	return 0;
}

/* spec->stop_fd as a pollfd (fd -1, which poll skips, when there is none). */
static struct pollfd stop_pollfd(const struct sandbox_spec *s)
{
	return (struct pollfd){ .fd = s->stop_fd > 0 ? s->stop_fd : -1, .events = POLLIN };
}

/* Whether the polled stop_fd |pf| says stop; notes it in |out|. */
static bool stop_requested(const struct pollfd *pf, struct sandbox_result *out)
{
	if (pf->fd < 0 || !pf->revents)
		return false;
	log_info("microvm: stopped through stop_fd; killing kvmm");
	out->stopped = true;
	return true;
}

/* One request to kvmm's API at |sock|: |method| |path| with the JSON |body|
 * (or NULL), answered within |timeout_ms|, or given up with -ECANCELED as
 * soon as |cancel_fd| (-1: none) is readable.  0 for a 2xx answer; -EIO
 * for any other, with kvmm's fault_message in |<fault, flen>|; a transport
 * error as -errno with its description there. */
static int kvmm_api_call_with(const char *sock, const char *method, const char *path, const char *body,
			      unsigned timeout_ms, int cancel_fd, char *fault, size_t flen)
{
	struct http_client *c = NULL;
	struct http_client_response resp = { 0 };
	struct http_header ct = { "Content-Type", "application/json" };
	char url[128];
	snprintf(url, sizeof(url), "http://localhost%s", path);
	int r = http_client_new(&c);
	if (r == 0)
		r = http_client_set_unix_socket(c, sock);
	if (r == 0) {
		http_client_set_cancel_fd(c, cancel_fd);
		r = http_client_request(c, method, url, body ? &ct : NULL, body ? 1 : 0, body, body ? strlen(body) : 0,
					timeout_ms, 1u << 16, &resp);
	}
	if (r < 0 && !c) {
		snprintf(fault, flen, "no HTTP client for kvmm's API socket %s: %s (libcurl is needed; see above)",
			 sock, strerror(-r));
	} else if (r < 0) {
		snprintf(fault, flen, "kvmm's API socket %s: %s", sock, strerror(-r));
	} else if (resp.status < 200 || resp.status > 299) {
		json_t *j = json_loadb(resp.body, resp.body_len, 0, NULL);
		const char *m = json_string_value(json_object_get(j, "fault_message"));
		snprintf(fault, flen, "HTTP %ld: %s", resp.status, m ? m : resp.body_len ? resp.body : "(no body)");
		json_decref(j);
		r = -EIO;
	}
	http_client_response_cleanup(&resp);
	http_client_free(c);
	return r;
}

/* kvmm_api_call_with, with the API's own bound and nothing to cancel it. */
static int kvmm_api_call(const char *sock, const char *method, const char *path, const char *body, char *fault,
			 size_t flen)
{
	return kvmm_api_call_with(sock, method, path, body, MICROVM_API_TIMEOUT_MS, -1, fault, flen);
}

/* Whether something accepts connections on the unix socket |path|. */
static bool unix_listening(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return false;
	bool ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	close(fd);
	return ok;
}

int sandbox_vm_snapshot(struct sandbox_vm *vm, const char *vmstate_path, const char *mem_path)
{
	if (!vm)
		return -ENOTSUP;
	if (!vmstate_path || !mem_path || vmstate_path[0] != '/' || mem_path[0] != '/') {
		log_err("microvm: a snapshot needs absolute paths for the vmstate and the memory file (kvmm runs "
			"elsewhere)");
		return -EINVAL;
	}
	json_t *j = json_pack("{s:s, s:s, s:s}", "snapshot_type", "Full", "snapshot_path", vmstate_path,
			      "mem_file_path", mem_path);
	char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	if (!body)
		return -ENOMEM;
	char fault[1024] = "";
	int r = 0;
	pthread_mutex_lock(&vm->lock);
	if (vm->gone) {
		log_warn("microvm: no snapshot: the VM has ended");
		r = -ESRCH;
		goto out;
	}
	/* A VM booted from its config file serves its API once it runs. */
	double until = now_seconds() + MICROVM_API_SOCK_WAIT_S;
	while (!unix_listening(vm->api_sock) && now_seconds() < until)
		usleep(10000);
	if ((r = kvmm_api_call(vm->api_sock, "PATCH", "/vm", "{\"state\": \"Paused\"}", fault, sizeof(fault))) < 0) {
		log_err("microvm: snapshot: pausing the VM: %s", fault);
		goto out;
	}
	if ((r = kvmm_api_call(vm->api_sock, "PUT", "/snapshot/create", body, fault, sizeof(fault))) < 0)
		log_err("microvm: snapshot to %s and %s: %s", vmstate_path, mem_path, fault);
	int rr = kvmm_api_call(vm->api_sock, "PATCH", "/vm", "{\"state\": \"Resumed\"}", fault, sizeof(fault));
	if (rr < 0) {
		log_err("microvm: snapshot: resuming the VM: %s", fault);
		r = r < 0 ? r : rr;
	}
	if (r == 0)
		log_info("microvm: snapshot taken: %s, %s", vmstate_path, mem_path);
out:
	pthread_mutex_unlock(&vm->lock);
	free(body);
	return r;
}

/* Load spec->restore into the kvmm just spawned (API only), on this run's
 * paths, and let it run.  The load waits for whatever guest memory kvmm
 * touches on the way, so it ends early on a stop (-ECANCELED, out->stopped:
 * the memory server that would have served it may be what gave up) and at
 * the run's deadline (-ETIMEDOUT, out->timed_out). */
static int restore_load(struct vm_run *v, const struct sandbox_spec *s, struct sandbox_result *out)
{
	const struct sandbox_restore *rs = s->restore;
	double until = now_seconds() + MICROVM_API_SOCK_WAIT_S;
	while (!unix_listening(v->vm.api_sock)) {
		if (kvmm_exited(v)) {
			log_err("microvm: restore: kvmm exited (status 0x%x) before serving its API", v->status);
			return -EIO;
		}
		if (s->timeout_s > 0 && now_seconds() >= s->t0 + s->timeout_s) {
			log_warn("microvm: timed out after %.3f s before kvmm served its API; killing it",
				 s->timeout_s);
			out->timed_out = true;
			return -ETIMEDOUT;
		}
		if (now_seconds() >= until) {
			log_err("microvm: restore: kvmm did not listen on %s within %.0f s", v->vm.api_sock,
				MICROVM_API_SOCK_WAIT_S);
			return -ETIMEDOUT;
		}
		struct pollfd pf = stop_pollfd(s);
		if (poll(&pf, 1, 5) > 0 && stop_requested(&pf, out))
			return -ECANCELED;
	}
	json_t *j = json_pack("{s:s, s:{s:s, s:s}, s:b, s:{s:s}, s:[{s:s, s:s}]}", "snapshot_path",
			      rs->vmstate_path, "mem_backend", "backend_type", rs->mem_uffd_socket ? "Uffd" : "File",
			      "backend_path", rs->mem_uffd_socket ? rs->mem_uffd_socket : rs->mem_file, "resume_vm", 1,
			      "vsock_override", "uds_path", v->uds, "drive_overrides", "drive_id", MICROVM_ROOT_DRIVE,
			      "path_on_host", s->image_path);
	char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	if (!body) {
		log_err("microvm: restore: building the load request: out of memory or a path that is not UTF-8");
		return -ENOMEM;
	}
	char fault[1024] = "";
	unsigned timeout_ms = MICROVM_API_TIMEOUT_MS;
	bool run_bound = false;
	if (s->timeout_s > 0) {
		double left_ms = (s->t0 + s->timeout_s - now_seconds()) * 1000;
		if (left_ms < timeout_ms) {
			timeout_ms = left_ms < 1 ? 1 : (unsigned)left_ms;
			run_bound = true;
		}
	}
	int r = kvmm_api_call_with(v->vm.api_sock, "PUT", "/snapshot/load", body, timeout_ms,
				   s->stop_fd > 0 ? s->stop_fd : -1, fault, sizeof(fault));
	free(body);
	if (r == -ECANCELED) {
		log_info("microvm: stopped through stop_fd while kvmm loaded the snapshot; killing kvmm");
		out->stopped = true;
	} else if (r == -ETIMEDOUT && run_bound) {
		log_warn("microvm: timed out after %.3f s while kvmm loaded the snapshot; killing it", s->timeout_s);
		out->timed_out = true;
	} else if (r < 0) {
		log_err("microvm: restore of %s (memory from %s): %s", rs->vmstate_path,
			rs->mem_uffd_socket ? rs->mem_uffd_socket : rs->mem_file, fault);
	}
	return r;
}

/* The first frame on the init's new connection after a restore: generation
 * 1 (the snapshots this sandbox takes are of VMs never restored before) and
 * 32 fresh random bytes, so two restores of one snapshot diverge. */
static int send_restored(struct vm_run *v)
{
	struct guest_restore rs = { .generation = 1 };
	int r = random_bytes(rs.seed, sizeof(rs.seed));
	if (r < 0) {
		log_err("microvm: restore: no random bytes for the guest's RNG: %s", strerror(-r));
		return r;
	}
	if ((r = guest_restore_send(v->conn_fd, &rs)) < 0)
		log_err("microvm: restore: sending the restore frame to the guest init: %s", strerror(-r));
	return r;
}

/* Wait for the guest init's connection, kvmm's exit, the deadline, or a stop
 * (-ECANCELED with out->stopped set). */
static int accept_guest(struct vm_run *v, double deadline, const struct sandbox_spec *s, struct sandbox_result *out)
{
	for (;;) {
		struct pollfd pf[3] = { { v->listen_fd, POLLIN, 0 }, { v->pid_fd, POLLIN, 0 }, stop_pollfd(s) };
		int n = poll(pf, 3, ms_until(deadline, 100));
		if (n < 0 && errno != EINTR)
			return -errno;
		if (n > 0 && stop_requested(&pf[2], out))
			return -ECANCELED;
		if (pf[0].revents & POLLIN) {
			v->conn_fd = accept4(v->listen_fd, NULL, NULL, SOCK_CLOEXEC);
			if (v->conn_fd >= 0)
				return 0;
		}
		if (kvmm_exited(v)) {
			log_err("microvm: kvmm exited (status 0x%x) before the guest init connected", v->status);
			return -EIO;
		}
		if (now_seconds() >= deadline) {
			if (s->timeout_s > 0 && now_seconds() >= s->t0 + s->timeout_s) {
				log_warn("microvm: timed out after %.3f s before the guest started; killing it",
					 s->timeout_s);
				out->timed_out = true;
				return -ETIMEDOUT;
			}
			log_err("microvm: the guest init did not connect within %.0f s; is the initramfs "
				"(KINDLING_GUEST_INITRD) kindling's, and its kernel able to boot?  On a slow "
				"(emulated) host, raise KINDLING_GUEST_BOOT_TIMEOUT",
				v->boot_timeout_s);
			return -ETIMEDOUT;
		}
	}
}

/* Frames from the guest until 'X', the end of the stream, the deadline, or a
 * stop.  Returns 0 after 'X', -ETIMEDOUT, -ECANCELED (out->stopped set), or
 * -EIO / -EPROTO. */
static int serve_guest(struct vm_run *v, const struct sandbox_spec *s, struct sandbox_result *out, double deadline)
{
	struct guest_decoder d;
	guest_decoder_init(&d, GUEST_DIR_GUEST_TO_HOST);
	bool out_failed = false, failed = false;
	int r = -EIO;
	uint8_t buf[65536];
	for (;;) {
		struct pollfd pf[2] = { { v->conn_fd, POLLIN, 0 }, stop_pollfd(s) };
		int timeout = deadline > 0 ? ms_until(deadline, 1000000000) : -1;
		int n = poll(pf, 2, timeout);
		if (n < 0 && errno != EINTR) {
			r = -errno;
			break;
		}
		if (n > 0 && stop_requested(&pf[1], out)) {
			r = -ECANCELED;
			break;
		}
		if (n == 0 && deadline > 0 && now_seconds() >= deadline) {
			log_warn("microvm: timed out after %.3f s; killing it", s->timeout_s);
			out->timed_out = true;
			r = -ETIMEDOUT;
			break;
		}
		if (n <= 0 || !pf[0].revents)
			continue;
		ssize_t k = read(v->conn_fd, buf, sizeof(buf));
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			if (!failed)
				log_err("microvm: the guest closed the channel without an exit status%s",
					guest_decoder_idle(&d) ? "" : " (in the middle of a frame)");
			r = -EIO;
			break;
		}
		size_t off = 0;
		while (off < (size_t)k) {
			size_t used;
			struct guest_frame f;
			int fr = guest_decoder_feed(&d, buf + off, (size_t)k - off, &used, &f);
			off += used;
			if (fr < 0) {
				log_err("microvm: bad frame from the guest: %s", guest_decoder_error(&d));
				r = -EPROTO;
				goto done;
			}
			if (fr == 0)
				break;
			switch (f.type) {
			case GUEST_FRAME_STDOUT:
			case GUEST_FRAME_STDERR: {
				bool is_out = f.type == GUEST_FRAME_STDOUT;
				if (out->first_output_s < 0)
					out->first_output_s = now_seconds() - s->t0;
				*(is_out ? &out->out_bytes : &out->err_bytes) += f.len;
				if (!out_failed && write_full(is_out ? s->out_fd : s->err_fd, f.payload, f.len) < 0) {
					log_warn("microvm: the output descriptor stopped accepting data; "
						 "discarding the rest");
					out_failed = true;
				}
				break;
			}
			case GUEST_FRAME_FAIL:
				log_err("microvm: the guest init failed: %.*s", (int)f.len, (const char *)f.payload);
				failed = true;
				break;
			case GUEST_FRAME_EXIT: {
				int32_t code, sig;
				if (guest_exit_decode(f.payload, f.len, &code, &sig) < 0) {
					r = -EPROTO;
					goto done;
				}
				out->exit_s = now_seconds() - s->t0;
				out->exit_code = code;
				out->term_signal = sig;
				/* The init reports a command or user missing from the
				 * image as 127, like the process sandbox's -ENOENT. */
				r = !failed ? 0 : code == 127 ? -ENOENT : -EIO;
				goto done;
			}
			default:
				break; /* the decoder lets through only the four types above */
			}
		}
	}
done:
	guest_decoder_cleanup(&d);
	return r;
}

int microvm_run_with(const struct sandbox_spec *s, const struct microvm_paths *p, struct sandbox_result *out)
{
	struct vm_run v = { .listen_fd = -1, .conn_fd = -1, .pid_fd = -1, .api_fd = -1, .pid = -1,
			    .boot_timeout_s = p->boot_timeout_s > 0 ? p->boot_timeout_s : MICROVM_BOOT_TIMEOUT_S };
	const bool restore = s->restore != NULL;
	const char **argv = NULL;
	struct str_list env = { 0 }, over = { 0 };
	bool refused = false;
	int r;
	const char *user = s->user_override ? s->user_override : s->config ? s->config->user : NULL;
	const char *workdir = s->workdir_override                                              ? s->workdir_override
			      : s->config && s->config->working_dir && *s->config->working_dir ? s->config->working_dir
												: NULL;
	if (workdir && workdir[0] != '/') {
		log_err("microvm: the working directory must be absolute (got %s)", workdir);
		return -EINVAL;
	}
	pthread_mutex_init(&v.vm.lock, NULL);
	if (restore) {
		if (!s->image_path) {
			log_err("microvm: a restore reopens the image file; a rootfs directory cannot be restored");
			r = -EINVAL;
			goto out;
		}
	} else {
		if ((r = build_argv(s, &argv)) < 0 || (r = sandbox_env_overrides(s, &over)) < 0 ||
		    (r = build_env(s, over.items, &env)) < 0)
			goto out;
		free(env.items[--env.n]); /* the placeholder: the list ends in NULL now */
		env.items[env.n] = NULL;
	}

	const char *tmp = getenv("TMPDIR");
	int k = snprintf(v.dir, sizeof(v.dir), "%s/kindling-vm.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (k < 0 || (size_t)k >= sizeof(v.dir)) {
		log_err("microvm: TMPDIR %s is too long for the VM's unix sockets; set it to a shorter directory",
			tmp);
		v.dir[0] = '\0';
		r = -ENAMETOOLONG;
		goto out;
	}
	if (!mkdtemp(v.dir)) {
		r = -errno;
		log_err("microvm: cannot create a directory %s: %s (set TMPDIR to a writable directory)", v.dir,
			strerror(-r));
		v.dir[0] = '\0';
		goto out;
	}
	snprintf(v.config, sizeof(v.config), "%s/config.json", v.dir);
	snprintf(v.uds, sizeof(v.uds), "%s/v.sock", v.dir);
	snprintf(v.listen_path, sizeof(v.listen_path), "%s_%u", v.uds, GUEST_PROTO_PORT);
	snprintf(v.log, sizeof(v.log), "%s/kvmm.log", v.dir);
	snprintf(v.vm.api_sock, sizeof(v.vm.api_sock), "%s/api.sock", v.dir);
	if ((r = listen_unix(v.listen_path, 1, &v.listen_fd)) < 0)
		goto out;
	if (s->runtime_api_port) {
		/* kvmm connects each of the guest init's streams to port 1025
		 * here; the caller accepts them once on_ready has the socket. */
		snprintf(v.api_path, sizeof(v.api_path), "%s_%u", v.uds, MICROVM_API_VSOCK_PORT);
		if ((r = listen_unix(v.api_path, SANDBOX_RUNTIME_API_BACKLOG, &v.api_fd)) < 0)
			goto out;
	}
	if ((!restore && (r = microvm_write_config(s, p, v.uds, v.config)) < 0) || (r = spawn_kvmm(&v, p, restore)) < 0)
		goto out;
	if (restore && (r = restore_load(&v, s, out)) < 0)
		goto timed;

	double run_deadline = s->timeout_s > 0 ? s->t0 + s->timeout_s : 0;
	double boot_deadline = now_seconds() + v.boot_timeout_s;
	if (run_deadline > 0 && run_deadline < boot_deadline)
		boot_deadline = run_deadline;
	if ((r = accept_guest(&v, boot_deadline, s, out)) < 0)
		goto timed;
	/* One channel per VM: whatever else connects to port 1024 is refused. */
	close(v.listen_fd);
	v.listen_fd = -1;
	if (restore) {
		if ((r = send_restored(&v)) < 0)
			goto out;
		out->restored_s = now_seconds() - s->t0;
	}
	if (s->on_ready) {
		struct sandbox_ready rd = { .runtime_api_fd = v.api_fd, .pid = v.pid, .memory_peak_path = "",
					    .vm = &v.vm };
		v.api_fd = -1; /* the callee's from here on */
		if ((r = s->on_ready(s->ready_arg, &rd)) != 0) {
			log_info("microvm: on_ready refused the sandbox (%d); ending it before the workload starts", r);
			refused = true;
			goto out;
		}
	}
	/* The guest reads the invocation at once; a bound keeps a wedged
	 * guest from holding us here. */
	struct timeval tv = { .tv_sec = 10 };
	setsockopt(v.conn_fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	struct guest_api api = { .tcp_port = s->runtime_api_port, .vsock_port = MICROVM_API_VSOCK_PORT };
	r = restore ? 0
		    : guest_invocation_send(v.conn_fd, argv, (const char *const *)env.items, workdir, user,
					    s->runtime_api_port ? &api : NULL);
	if (r < 0) {
		log_err("microvm: sending the invocation to the guest: %s", strerror(-r));
		goto out;
	}
	r = serve_guest(&v, s, out, run_deadline);
timed:
	if ((r == -ETIMEDOUT && out->timed_out) || (r == -ECANCELED && out->stopped)) {
		/* A timeout or a stop is a result, as in the process sandbox. */
		kill(v.pid, SIGKILL);
		out->exit_code = -1;
		out->term_signal = SIGKILL;
		out->exit_s = now_seconds() - s->t0;
		r = 0;
		goto out;
	}
	if (r < 0)
		goto out;
	/* After 'X' the guest syncs and powers off, which ends kvmm. */
	double until = now_seconds() + MICROVM_POWEROFF_S;
	while (!kvmm_exited(&v) && now_seconds() < until) {
		struct pollfd pf = { v.pid_fd, POLLIN, 0 };
		poll(&pf, v.pid_fd >= 0 ? 1 : 0, ms_until(until, 50));
	}
	if (!v.reaped)
		log_warn("microvm: kvmm did not exit %.0f s after the workload did; killing it", MICROVM_POWEROFF_S);
	else if (!WIFEXITED(v.status) || WEXITSTATUS(v.status) != 0)
		log_warn("microvm: kvmm exited with status 0x%x after the workload finished", v.status);
out:
	if (r < 0 && v.pid > 0 && !refused)
		log_tail(&v);
	run_cleanup(&v);
	pthread_mutex_destroy(&v.vm.lock);
	free(argv);
	str_list_clear(&env);
	str_list_clear(&over);
	return r;
}

static int microvm_run(const struct sandbox_spec *s, struct sandbox_result *out)
{
	char why[512];
	if (!microvm_available(why, sizeof(why))) {
		log_err("microvm: %s", why);
		return -ENOTSUP;
	}
	struct microvm_paths p;
	int r = microvm_find_paths(&p, why, sizeof(why));
	if (r < 0) {
		log_err("microvm: %s", why);
		return r;
	}
	out->mount_kind = "virtio-blk";
	return microvm_run_with(s, &p, out);
}

const struct sandbox_ops sandbox_microvm = {
	.name = "microvm",
	.available = microvm_available,
	.run = microvm_run,
};
