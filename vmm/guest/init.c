/* kindling-guest-init: PID 1 of a kindling micro-VM's initramfs.
 *
 * It turns a stock distribution kernel plus an EROFS image on /dev/vda into
 * one function invocation:
 *
 *   1. mount /proc, /sys, /dev (devtmpfs);
 *   2. load the modules listed in /modules.order (paths inside the
 *      initramfs, dependencies first) with finit_module;
 *   3. connect AF_VSOCK to the host (CID 2), port 1024 or kindling.port=N
 *      from the kernel command line; every later failure is reported there;
 *   4. wait for /dev/vda, mount it EROFS read-only under a tmpfs-backed
 *      overlay, mount proc/sys/dev/tmp inside, and make it the root;
 *   5. read the invocation (vmm/guest/protocol.h: argv, env, workdir, user,
 *      the Runtime API endpoint, then go); waiting here is how a warm VM
 *      idles;
 *   6. with a Runtime API endpoint, bring lo up and listen on
 *      127.0.0.1:PORT; each connection accepted there gets a vsock stream of
 *      its own to the host, and the relay (vmm/guest/relay.h) joins the two;
 *   7. run it as the image's user (resolved from the image's /etc/passwd and
 *      /etc/group), relaying stdout and stderr as 'O' and 'R' frames;
 *   8. once the command has exited and its output is drained, end every
 *      Runtime API connection, send 'X' with the exit status, sync, and
 *      power off.
 *
 * A failure at any step prints to the console, sends 'F' with what failed
 * (when the channel is up) and 'X' with 127 (command not found) or 126
 * (anything else), and powers off.  The init never returns: PID 1 exiting
 * would panic the kernel.
 *
 * Static, small, libc only (plus the shared protocol codec and the image
 * user/env/PATH helpers), so it runs from any initramfs.
 */
#define LOG_COMPONENT "guest-init"
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/vm_sockets.h>

#include "common/common.h"
#include "vmm/guest/protocol.h"
#include "vmm/guest/relay.h"
#include "sandbox/sandbox.h"

#define EXIT_NOT_FOUND 127
#define EXIT_CANNOT_RUN 126

#define MODULES_ORDER "/modules.order"
#define MODULES_ORDER_MAX (64u << 10)
#define ROOT_DEV "/dev/vda"
#define ROOT_WAIT_MS 10000	/* virtio-blk probes while its module loads; this is slack */
#define CONNECT_WAIT_MS 10000	/* the host listens before the VM starts; this is slack */
#define DRAIN_GRACE_MS 200	/* output still arriving after the command exited */
#define RELAY_BUF (64u << 10)
#define FAIL_MAX 1024
#define CLOSE_WAIT_S 2		/* for the host to take the last frames */
#define HOSTNAME "kindling"

/* All of the init's state; one on main's stack. */
struct init {
	int chan;		 /* the vsock connection, -1 until connected */
	unsigned port;
	char earlier[FAIL_MAX];	 /* failures that were not fatal by themselves (a module) */
};

static double uptime(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_BOOTTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* Append |s| to the string in |<dst, cap>|, cutting it to fit. */
static void append(char *dst, size_t cap, const char *s)
{
	size_t used = strlen(dst), len = strlen(s);
	if (used + 1 >= cap)
		return;
	if (len > cap - used - 1)
		len = cap - used - 1;
	memcpy(dst + used, s, len);
	dst[used + len] = '\0';
}

/* The end of every path: flush the filesystems and switch the VM off, which
 * ends kvmm.  If the kernel refuses, exiting makes it panic, and panic=1 in
 * kvmm's command line turns that into a reboot, which ends kvmm too. */
__attribute__((noreturn)) static void power_off(void)
{
	sync();
	reboot(RB_POWER_OFF);
	log_err("reboot(RB_POWER_OFF): %s; exiting so the kernel panics and the VM stops", strerror(errno));
	_exit(1);
}

/* Close the channel only once the host has what we sent.  Powering off right
 * after the last write can lose it: the VMM may stop before its device has
 * taken the packets off the queue.  Closing with SO_LINGER sends the vsock
 * SHUTDOWN and waits (bounded) for the host's RST, which a VMM sends once the
 * data before it went to the host socket.  A host that never answers costs
 * CLOSE_WAIT_S. */
static void close_channel(struct init *in)
{
	if (in->chan < 0)
		return;
	struct linger lg = { .l_onoff = 1, .l_linger = CLOSE_WAIT_S };
	double t = uptime();
	if (setsockopt(in->chan, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) < 0)
		log_warn("SO_LINGER on the channel: %s; the last frames may be lost", strerror(errno));
	close(in->chan);
	in->chan = -1;
	log_info("channel closed in %.3f s", uptime() - t);
}

/* Report a failure: the console always; the host as 'F' then 'X' |code|
 * when the channel is up.  Then power off. */
__attribute__((noreturn, format(printf, 3, 4))) static void fail(struct init *in, int code, const char *fmt, ...)
{
	char msg[FAIL_MAX];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n >= 0 && in->earlier[0]) {
		append(msg, sizeof(msg), " (earlier: ");
		append(msg, sizeof(msg), in->earlier);
		append(msg, sizeof(msg), ")");
	}
	log_err("%s", msg);
	if (in->chan >= 0) {
		uint8_t x[GUEST_EXIT_LEN];
		guest_exit_encode(x, code, 0);
		if (guest_frame_send(in->chan, GUEST_FRAME_FAIL, msg, strlen(msg)) < 0 ||
		    guest_frame_send(in->chan, GUEST_FRAME_EXIT, x, sizeof(x)) < 0)
			log_err("could not report the failure to the host: the channel is gone");
		close_channel(in);
	} else {
		log_err("no channel to the host: the failure is only on this console");
	}
	power_off();
}

/* Remember a non-fatal failure, so a later fatal one can mention it. */
__attribute__((format(printf, 2, 3))) static void note(struct init *in, const char *fmt, ...)
{
	char msg[FAIL_MAX / 2];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_err("%s", msg);
	if (in->earlier[0])
		append(in->earlier, sizeof(in->earlier), "; ");
	append(in->earlier, sizeof(in->earlier), msg);
}

/* The kernel gives PID 1 /dev/console as fds 0-2 when the initramfs has it;
 * if not, open it once devtmpfs is up, so messages are not lost. */
static void console_fds(void)
{
	if (fcntl(2, F_GETFD) >= 0)
		return;
	int fd = open("/dev/console", O_RDWR | O_NOCTTY);
	if (fd < 0)
		return;
	for (int i = 0; i < 3; i++)
		if (fd != i)
			dup2(fd, i);
	if (fd > 2)
		close(fd);
}

/* mount(2), tolerating |ok_errno| (0 = none); creates the mount point. */
static int mount_at(const char *src, const char *dir, const char *type, unsigned long flags, const char *data,
		    int ok_errno)
{
	if (mkdir(dir, 0755) < 0 && errno != EEXIST)
		return -errno;
	if (mount(src, dir, type, flags, data) < 0 && errno != ok_errno)
		return -errno;
	return 0;
}

static void mount_early(struct init *in)
{
	int r;
	/* Before /proc and /dev exist there is nobody to tell but the console. */
	if ((r = mount_at("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, 0)) < 0)
		fail(in, EXIT_CANNOT_RUN, "mount /proc: %s", strerror(-r));
	if ((r = mount_at("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, 0)) < 0)
		fail(in, EXIT_CANNOT_RUN, "mount /sys: %s", strerror(-r));
	/* EBUSY: a kernel with DEVTMPFS_MOUNT already put one there. */
	if ((r = mount_at("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755", EBUSY)) < 0)
		fail(in, EXIT_CANNOT_RUN, "mount /dev (devtmpfs; CONFIG_DEVTMPFS is needed): %s", strerror(-r));
	console_fds();
}

/* kindling.port=N from /proc/cmdline, else GUEST_PROTO_PORT. */
static unsigned cmdline_port(struct init *in)
{
	char buf[4096];
	int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return GUEST_PROTO_PORT;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return GUEST_PROTO_PORT;
	buf[n] = '\0';
	static const char key[] = "kindling.port=";
	for (char *tok = strtok(buf, " \t\n"); tok; tok = strtok(NULL, " \t\n")) {
		if (strncmp(tok, key, sizeof(key) - 1) != 0)
			continue;
		const char *v = tok + sizeof(key) - 1;
		char *end;
		errno = 0;
		unsigned long p = strtoul(v, &end, 10);
		/* VMADDR_PORT_ANY (-1U) is not a port one can connect to. */
		if (errno || end == v || *end || *v == '-' || p == 0 || p >= 0xffffffffUL) {
			note(in, "kindling.port=%s is not a port number; using %u", v, GUEST_PROTO_PORT);
			return GUEST_PROTO_PORT;
		}
		return (unsigned)p;
	}
	return GUEST_PROTO_PORT;
}

/* Load each module of /modules.order in order.  A module that fails is noted,
 * not fatal: the step that needs it fails with a clearer message. */
static void load_modules(struct init *in)
{
	uint8_t *text = NULL;
	size_t len = 0;
	int r = read_file_all(MODULES_ORDER, MODULES_ORDER_MAX, &text, &len);
	if (r == -ENOENT)
		return; /* everything is built in */
	if (r < 0) {
		note(in, "read %s: %s", MODULES_ORDER, strerror(-r));
		return;
	}
	char *s = malloc(len + 1);
	if (!s) {
		free(text);
		note(in, "read %s: out of memory", MODULES_ORDER);
		return;
	}
	memcpy(s, text, len);
	s[len] = '\0';
	free(text);
	unsigned loaded = 0;
	for (char *save = NULL, *line = strtok_r(s, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (line[0] == '#' || line[0] == '\0')
			continue;
		int fd = open(line, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			note(in, "module %s: %s", line, strerror(errno));
			continue;
		}
		if (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST)
			note(in, "load module %s: %s", line, strerror(errno));
		else
			loaded++;
		close(fd);
	}
	free(s);
	log_info("%u modules loaded at %.3f s", loaded, uptime());
}

/* Connect to the host's port |in->port|, retrying while the vsock transport
 * comes up (its device probes as the module loads) for CONNECT_WAIT_MS. */
static void connect_host(struct init *in)
{
	struct sockaddr_vm sa = {
		.svm_family = AF_VSOCK,
		.svm_cid = GUEST_PROTO_HOST_CID,
		.svm_port = in->port,
	};
	int err = 0;
	for (unsigned waited = 0; waited <= CONNECT_WAIT_MS; waited += 20) {
		int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
			in->chan = fd;
			log_info("connected to the host on vsock port %u at %.3f s", in->port, uptime());
			return;
		}
		err = errno;
		if (fd >= 0)
			close(fd);
		sleep_ms(20);
	}
	fail(in, EXIT_CANNOT_RUN,
	     "connect to the host over vsock (CID 2, port %u): %s; does the VM have a vsock device, and is the host "
	     "listening on {uds_path}_%u?",
	     in->port, strerror(err), in->port);
}

static void wait_for_dev(struct init *in, const char *path)
{
	struct stat st;
	for (unsigned waited = 0; waited <= ROOT_WAIT_MS; waited += 10) {
		if (stat(path, &st) == 0 && S_ISBLK(st.st_mode))
			return;
		sleep_ms(10);
	}
	fail(in, EXIT_CANNOT_RUN, "%s did not appear within %u ms: the VM needs a virtio-blk root drive", path,
	     ROOT_WAIT_MS);
}

/* The image, read-only, under a writable tmpfs overlay, becomes the root. */
static void mount_root(struct init *in)
{
	int r;
	wait_for_dev(in, ROOT_DEV);
	if ((r = mount_at(ROOT_DEV, "/lower", "erofs", MS_RDONLY, NULL, 0)) < 0)
		fail(in, EXIT_CANNOT_RUN, "mount %s (EROFS) on /lower: %s; is the drive a kindling image?", ROOT_DEV,
		     strerror(-r));
	if ((r = mount_at("tmpfs", "/rw", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755", 0)) < 0)
		fail(in, EXIT_CANNOT_RUN, "mount tmpfs on /rw: %s", strerror(-r));
	if (mkdir("/rw/upper", 0755) < 0 || mkdir("/rw/work", 0755) < 0)
		fail(in, EXIT_CANNOT_RUN, "mkdir in /rw: %s", strerror(errno));
	if ((r = mount_at("overlay", "/newroot", "overlay", 0, "lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work",
			  0)) < 0)
		fail(in, EXIT_CANNOT_RUN, "mount the overlay on /newroot: %s", strerror(-r));

	static const struct {
		const char *src, *dir, *type;
		unsigned long flags;
		const char *data;
	} inner[] = {
		{ "proc", "/newroot/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL },
		{ "sysfs", "/newroot/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL },
		{ "devtmpfs", "/newroot/dev", "devtmpfs", MS_NOSUID, "mode=0755" },
		{ "devpts", "/newroot/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620" },
		{ "tmpfs", "/newroot/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777" },
		{ "tmpfs", "/newroot/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777" },
	};
	for (size_t i = 0; i < sizeof(inner) / sizeof(inner[0]); i++)
		if ((r = mount_at(inner[i].src, inner[i].dir, inner[i].type, inner[i].flags, inner[i].data, 0)) < 0)
			fail(in, EXIT_CANNOT_RUN, "mount %s on %s: %s", inner[i].type, inner[i].dir + 8, strerror(-r));

	/* The initramfs is rootfs, which cannot be pivoted away: move the new
	 * root over it and chroot, as switch_root does. */
	if (chdir("/newroot") < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 || chdir("/") < 0)
		fail(in, EXIT_CANNOT_RUN, "switch to the new root: %s", strerror(errno));
	log_info("root mounted at %.3f s", uptime());
}

/* Read frames until 'G'.  There is no time limit: a warm VM waits here. */
static void read_invocation(struct init *in, struct guest_invocation *inv)
{
	struct guest_decoder d;
	guest_decoder_init(&d, GUEST_DIR_HOST_TO_GUEST);
	uint8_t *buf = malloc(RELAY_BUF);
	if (!buf)
		fail(in, EXIT_CANNOT_RUN, "out of memory reading the invocation");
	while (!inv->complete) {
		ssize_t n = read(in->chan, buf, RELAY_BUF);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			log_err("the host closed the channel before the invocation was complete%s%s; powering off",
				n < 0 ? ": " : "", n < 0 ? strerror(errno) : "");
			power_off();
		}
		size_t pos = 0;
		while (pos < (size_t)n && !inv->complete) {
			size_t used;
			struct guest_frame f;
			int r = guest_decoder_feed(&d, buf + pos, (size_t)n - pos, &used, &f);
			pos += used;
			if (r < 0)
				fail(in, EXIT_CANNOT_RUN, "bad invocation from the host: %s", guest_decoder_error(&d));
			if (r == 0)
				break;
			const char *why;
			r = guest_invocation_add(inv, &f, &why);
			if (r < 0)
				fail(in, EXIT_CANNOT_RUN, "bad invocation from the host: %s", why);
		}
	}
	free(buf);
	guest_decoder_cleanup(&d);
}

/* The child's half: become the user, go to the working directory, exec.  A
 * failure is written to |status_fd| as errno plus a step byte, then _exit. */
__attribute__((noreturn)) static void child(const char *exe, char *const *argv, char *const *envp, const char *workdir,
					     const struct sandbox_user *u, int out, int err, int status_fd,
					     const sigset_t *saved)
{
	int step = 0;
	/* Ignored signals stay ignored across exec: give the command the
	 * defaults PID 1 does not have. */
	signal(SIGPIPE, SIG_DFL);
	sigprocmask(SIG_SETMASK, saved, NULL);
	setsid();
	int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (null < 0 || dup2(null, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
		goto fail;
	step = 1;
	if (chdir(workdir) < 0)
		goto fail;
	step = 2;
	if (setgroups(u->n_groups, u->n_groups ? (const gid_t *)u->groups : NULL) < 0 || setgid(u->gid) < 0 ||
	    setuid(u->uid) < 0)
		goto fail;
	step = 3;
	execve(exe, argv, envp);
fail:;
	int e[2] = { errno, step };
	(void)!write(status_fd, e, sizeof(e));
	_exit(EXIT_CANNOT_RUN);
}

/* Send |<p, len>| as |type| frames; false if the host is gone. */
static bool relay(struct init *in, uint8_t type, const uint8_t *p, size_t len)
{
	int r = guest_frame_send(in->chan, type, p, len);
	if (r < 0)
		log_err("send output to the host: %s; stopping the command", strerror(-r));
	return r == 0;
}

/* Read what |fd| has now (non-blocking) and relay it; returns false on EOF or
 * error (the pipe is done), true while it stays open. */
static bool pump(struct init *in, int fd, uint8_t type, uint8_t *buf, bool *host_gone)
{
	for (;;) {
		ssize_t n = read(fd, buf, RELAY_BUF);
		if (n > 0) {
			if (!relay(in, type, buf, (size_t)n)) {
				*host_gone = true;
				return false;
			}
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		return n < 0 && errno == EAGAIN;
	}
}

/* The Runtime API endpoint: the listening socket inside the guest, the vsock
 * port its connections go to on the host, and the relay that joins them. */
struct api {
	int listen_fd; /* -1: no endpoint */
	unsigned vsock_port;
	struct guest_relay relay;
};

/* Listen on 127.0.0.1:|inv->api.tcp_port| (with lo up), if the invocation
 * asks for an endpoint. */
static void api_open(struct init *in, const struct guest_invocation *inv, struct api *a)
{
	a->listen_fd = -1;
	a->vsock_port = inv->api.vsock_port;
	guest_relay_init(&a->relay);
	if (!inv->api.tcp_port)
		return;
	sandbox_loopback_up();
	int r = sandbox_runtime_api_listen(inv->api.tcp_port, &a->listen_fd);
	if (r < 0)
		fail(in, EXIT_CANNOT_RUN, "listen for the Runtime API on 127.0.0.1:%u: %s", inv->api.tcp_port,
		     strerror(-r));
	fcntl(a->listen_fd, F_SETFL, O_NONBLOCK);
	log_info("Runtime API on 127.0.0.1:%u, carried to the host's vsock port %u", inv->api.tcp_port,
		 a->vsock_port);
}

/* Take one connection from the endpoint and open its stream to the host.  A
 * connection that cannot get one is closed (the client sees it end). */
static void api_accept(struct api *a)
{
	int c = accept4(a->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (c < 0) {
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
			log_warn("Runtime API: accept: %s", strerror(errno));
		return;
	}
	struct sockaddr_vm sa = {
		.svm_family = AF_VSOCK,
		.svm_cid = GUEST_PROTO_HOST_CID,
		.svm_port = a->vsock_port,
	};
	int v = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int r = v < 0 ? -1 : connect(v, (struct sockaddr *)&sa, sizeof(sa));
	if (v < 0 || (r < 0 && errno != EINPROGRESS)) {
		log_warn("Runtime API: connect to the host (vsock port %u): %s; closing the workload's connection",
			 a->vsock_port, strerror(errno));
		close(c);
		if (v >= 0)
			close(v);
		return;
	}
	if ((r = guest_relay_add(&a->relay, c, v, r < 0)) < 0)
		log_warn("Runtime API: relay a connection: %s", strerror(-r));
}

/* End the endpoint and every connection through it. */
static void api_close(struct api *a)
{
	if (a->listen_fd < 0)
		return;
	log_info("Runtime API: %zu connections open at the end, %llu ended, %llu cut short; %llu bytes to the host, "
		 "%llu from it",
		 guest_relay_count(&a->relay), (unsigned long long)a->relay.ended, (unsigned long long)a->relay.failed,
		 (unsigned long long)a->relay.bytes[0], (unsigned long long)a->relay.bytes[1]);
	guest_relay_cleanup(&a->relay);
	close(a->listen_fd);
	a->listen_fd = -1;
}

/* Reap every child that has exited (PID 1 inherits all orphans); note the
 * status of |pid| when it is among them. */
static void reap(pid_t pid, bool *done, int *status)
{
	int st;
	pid_t p;
	while ((p = waitpid(-1, &st, WNOHANG)) > 0)
		if (p == pid) {
			*done = true;
			*status = st;
		}
}

static void run(struct init *in, struct guest_invocation *inv)
{
	struct sandbox_user u;
	int r = sandbox_user_resolve(inv->user, "/etc/passwd", "/etc/group", &u);
	if (r < 0)
		fail(in, EXIT_CANNOT_RUN, "user \"%s\": %s", inv->user ? inv->user : "", strerror(-r));

	if (sethostname(HOSTNAME, strlen(HOSTNAME)) < 0)
		log_warn("sethostname: %s", strerror(errno));
	struct str_list env = { 0 };
	if (sandbox_env_build(inv->envp, NULL, HOSTNAME, u.home, &env) < 0)
		fail(in, EXIT_CANNOT_RUN, "build the environment: out of memory");
	char **envp = calloc(env.n + 1, sizeof(char *));
	if (!envp)
		fail(in, EXIT_CANNOT_RUN, "build the environment: out of memory");
	memcpy(envp, env.items, env.n * sizeof(char *));

	const char *workdir = inv->workdir ? inv->workdir : "/";
	/* Docker and runc create a missing working directory; so do we. */
	if ((r = mkdir_p(workdir, 0755)) < 0)
		fail(in, EXIT_CANNOT_RUN, "create the working directory %s: %s", workdir, strerror(-r));

	char exe[PATH_MAX];
	r = sandbox_path_lookup(inv->argv[0], sandbox_env_get(envp, "PATH"), exe, sizeof(exe));
	if (r == -ENOENT)
		fail(in, EXIT_NOT_FOUND, "%s: command not found in the image", inv->argv[0]);
	if (r < 0)
		fail(in, EXIT_CANNOT_RUN, "%s: %s", inv->argv[0], strerror(-r));
	struct api api;
	api_open(in, inv, &api);

	int out[2], err[2], st[2];
	if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0 || pipe2(st, O_CLOEXEC) < 0)
		fail(in, EXIT_CANNOT_RUN, "pipe: %s", strerror(errno));

	/* SIGCHLD through a signalfd, so poll wakes the moment the command ends. */
	sigset_t mask, saved;
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	if (sigprocmask(SIG_BLOCK, &mask, &saved) < 0)
		fail(in, EXIT_CANNOT_RUN, "sigprocmask: %s", strerror(errno));
	int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0)
		fail(in, EXIT_CANNOT_RUN, "signalfd: %s", strerror(errno));

	log_info("running %s at %.3f s", exe, uptime());
	pid_t pid = fork();
	if (pid < 0)
		fail(in, EXIT_CANNOT_RUN, "fork: %s", strerror(errno));
	if (pid == 0)
		child(exe, inv->argv, envp, workdir, &u, out[1], err[1], st[1], &saved);
	close(out[1]);
	close(err[1]);
	close(st[1]);

	/* Did exec work?  The status pipe closes on exec, or carries errno. */
	int e[2];
	ssize_t n;
	while ((n = read(st[0], e, sizeof(e))) < 0 && errno == EINTR)
		;
	close(st[0]);
	if (n == (ssize_t)sizeof(e)) {
		static const char *const steps[] = { "set up stdio", "chdir to the working directory",
						     "switch to the user", "exec" };
		int code = (e[1] == 3 && (e[0] == ENOENT || e[0] == ENOTDIR)) ? EXIT_NOT_FOUND : EXIT_CANNOT_RUN;
		fail(in, code, "%s: %s: %s", inv->argv[0], steps[e[1] & 3], strerror(e[0]));
	}

	fcntl(out[0], F_SETFL, O_NONBLOCK);
	fcntl(err[0], F_SETFL, O_NONBLOCK);
	uint8_t *buf = malloc(RELAY_BUF);
	if (!buf)
		fail(in, EXIT_CANNOT_RUN, "out of memory for the output relay");
	bool out_open = true, err_open = true, done = false, host_gone = false;
	int status = 0;
	double exited_at = 0;
	/* Until the command exits, its pipes close and the relay has passed on
	 * what it holds.  A daemon it left behind may keep them open: after
	 * exit, DRAIN_GRACE_MS of silence ends it. */
	while (!host_gone && (!done || out_open || err_open || guest_relay_pending(&api.relay))) {
		struct pollfd p[4 + GUEST_RELAY_POLLFDS] = {
			{ .fd = out_open ? out[0] : -1, .events = POLLIN },
			{ .fd = err_open ? err[0] : -1, .events = POLLIN },
			{ .fd = sfd, .events = POLLIN },
			/* No new connections once the command is gone, or while the relay is full. */
			{ .fd = !done && !guest_relay_full(&api.relay) ? api.listen_fd : -1, .events = POLLIN },
		};
		nfds_t np = 4 + guest_relay_poll_set(&api.relay, p + 4);
		int pr = poll(p, np, done ? DRAIN_GRACE_MS : -1);
		if (pr < 0 && errno != EINTR)
			fail(in, EXIT_CANNOT_RUN, "poll: %s", strerror(errno));
		if (pr == 0 && done)
			break;
		if (pr > 0)
			guest_relay_service(&api.relay, p + 4);
		if (p[3].revents & POLLIN)
			api_accept(&api);
		if (out_open && (p[0].revents & (POLLIN | POLLHUP | POLLERR)))
			out_open = pump(in, out[0], GUEST_FRAME_STDOUT, buf, &host_gone);
		if (err_open && (p[1].revents & (POLLIN | POLLHUP | POLLERR)))
			err_open = pump(in, err[0], GUEST_FRAME_STDERR, buf, &host_gone);
		if (p[2].revents & POLLIN) {
			struct signalfd_siginfo si;
			while (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
				;
			bool was = done;
			reap(pid, &done, &status);
			if (done && !was)
				exited_at = uptime();
		}
	}
	if (host_gone) {
		kill(-pid, SIGKILL);
		log_err("the host is gone; powering off without an exit status");
		power_off();
	}
	api_close(&api);
	free(buf);
	int32_t code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
	int32_t sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
	log_info("%s exited at %.3f s: code %d signal %d", inv->argv[0], exited_at, code, sig);
	uint8_t x[GUEST_EXIT_LEN];
	guest_exit_encode(x, code, sig);
	if ((r = guest_frame_send(in->chan, GUEST_FRAME_EXIT, x, sizeof(x))) < 0)
		log_err("send the exit status to the host: %s", strerror(-r));
	str_list_clear(&env);
	free(envp);
}

int main(void)
{
	struct init in = { .chan = -1, .port = GUEST_PROTO_PORT };
	log_set_level(LOG_INFO);
	/* The first console line: benchmarks time the boot up to here. */
	log_info("kindling guest init started");
	/* Run anywhere else, it would remount and power off that system. */
	if (getpid() != 1) {
		log_err("this is the guest init of a kindling micro-VM; it only runs as PID 1 of the VM's initramfs");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	umask(022);
	mount_early(&in);
	log_info("kernel up at %.3f s", uptime());
	in.port = cmdline_port(&in);
	load_modules(&in);
	connect_host(&in);
	mount_root(&in);
	struct guest_invocation inv;
	guest_invocation_init(&inv);
	read_invocation(&in, &inv);
	run(&in, &inv);
	guest_invocation_cleanup(&inv);
	close_channel(&in);
	power_off();
}
