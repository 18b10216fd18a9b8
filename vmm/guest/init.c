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
 * Restore.  The VM may be snapshotted while the command runs and restored
 * later, any number of times; the VMM then resets every vsock connection.
 * When the channel breaks (an end of stream or an error, read or write)
 * while the command runs or its output drains, the command goes on and the
 * init reconnects to the same port (guest_backoff_next()'s schedule: waits
 * doubling from 10 ms to 500 ms, 10 s of them in all; it says so on the
 * console and ends as when the host is gone if that runs out).  The host's
 * first frame on the new connection must be 'S', within 10 s; then the init
 *   a. mixes the 32 bytes of 'S' into the kernel's RNG with RNDADDENTROPY
 *      (credited as 256 bits) and forces a reseed with RNDRESEEDCRNG, so
 *      getrandom() diverges at once between two VMs restored from one
 *      snapshot; if that fails, the command is ended and the failure
 *      reported ('F', 'X' 126): a workload must not run on shared random
 *      state.  (Random state the workload keeps in its own memory, as a
 *      user-space PRNG does, is its business: the hook below is for that.)
 *   b. writes the restore generation, in decimal and a newline, to
 *      /run/kindling/restore (0644, replaced atomically), in the root the
 *      workload sees (the image under its tmpfs overlay); no file means the
 *      VM was never restored;
 *   c. runs /etc/kindling/after-restore from the image, if there is one: as
 *      the command's user, in its working directory, with its environment
 *      plus KINDLING_RESTORE_GENERATION=N, stdin /dev/null, its stdout and
 *      stderr sent to the host as 'R' (stderr) frames, for at most 10 s (then
 *      its process group is killed); how it ended goes to the console, and
 *      the command goes on either way;
 *   d. gives every Runtime API connection whose request had no answer yet a
 *      new stream with that request again (vmm/guest/relay.h), and resets the
 *      others;
 * and goes on sending output and, in the end, 'X' on the new connection.
 * Output the command wrote meanwhile waits in its pipes; a frame whose send
 * failed is sent again whole on the new connection.  Any other frame from
 * the host after 'G' ends the run as a protocol failure.
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
#include <sys/ioctl.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/random.h>
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

/* A stream socket connected to the host's vsock port |port| in |*out_fd|.
 * |nonblock|: the connect may still be under way (|*in_progress| set) when
 * this returns.  Returns 0 or -errno. */
static int vsock_connect(unsigned port, bool nonblock, int *out_fd, bool *in_progress)
{
	struct sockaddr_vm sa = {
		.svm_family = AF_VSOCK,
		.svm_cid = GUEST_PROTO_HOST_CID,
		.svm_port = port,
	};
	int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
	if (fd < 0)
		return -errno;
	bool pending = false;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;
		if (!nonblock || e != EINPROGRESS) {
			close(fd);
			return -e;
		}
		pending = true;
	}
	if (in_progress)
		*in_progress = pending;
	*out_fd = fd;
	return 0;
}

/* Connect to the host's port |in->port|, retrying while the vsock transport
 * comes up (its device probes as the module loads) for CONNECT_WAIT_MS. */
static void connect_host(struct init *in)
{
	int r = 0;
	for (unsigned waited = 0; waited <= CONNECT_WAIT_MS; waited += 20) {
		if ((r = vsock_connect(in->port, false, &in->chan, NULL)) == 0) {
			log_info("connected to the host on vsock port %u at %.3f s", in->port, uptime());
			return;
		}
		sleep_ms(20);
	}
	fail(in, EXIT_CANNOT_RUN,
	     "connect to the host over vsock (CID 2, port %u): %s; does the VM have a vsock device, and is the host "
	     "listening on {uds_path}_%u?",
	     in->port, strerror(-r), in->port);
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

/* What child() was doing when it failed, by the step it reports. */
static const char *const child_steps[] = { "set up stdio", "chdir to the working directory", "switch to the user",
					   "exec" };

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

/* The command while it runs, and what a restore needs of it. */
struct job {
	pid_t pid;
	bool done; /* it exited; |status| is its wait status */
	int status;
	double exited_at;
	int sfd;		      /* SIGCHLD, through a signalfd */
	const sigset_t *saved;	      /* the signal mask children start with */
	const struct sandbox_user *u; /* the image's user */
	char *const *envp;
	const char *workdir;
	uint8_t *buf;	    /* RELAY_BUF: output read from a pipe */
	uint8_t held_type;  /* buf[0, held_len) was read from a pipe but not sent yet, as held_type */
	size_t held_len;
	bool awaiting;	    /* reconnected after the channel broke: 'S' must come first */
	double await_until; /* ... by then */
	struct guest_backoff backoff;	/* reconnects since the last 'S' (or the start) */
	struct guest_decoder from_host; /* frames on the channel after 'G' */
	uint64_t generation;		/* the last restore applied; 0: never restored */
};

/* Reap every child that has exited (PID 1 inherits all orphans); note the
 * command's status, and |other|'s (a hook; -1 for none) when it is among
 * them. */
static void reap(struct job *j, pid_t other, bool *other_done, int *other_status)
{
	int st;
	pid_t p;
	while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
		if (p == j->pid && !j->done) {
			j->done = true;
			j->status = st;
			j->exited_at = uptime();
		} else if (p == other) {
			*other_done = true;
			*other_status = st;
		}
	}
}

/* Take what the signalfd holds and reap. */
static void on_sigchld(struct job *j, pid_t other, bool *other_done, int *other_status)
{
	struct signalfd_siginfo si;
	while (read(j->sfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
		;
	reap(j, other, other_done, other_status);
}

/* Send the output held in j->buf, if any.  Returns 0, or -errno when the
 * channel is broken: then it stays held, for the next connection. */
static int flush_held(struct init *in, struct job *j)
{
	if (!j->held_len)
		return 0;
	int r = guest_frame_send(in->chan, j->held_type, j->buf, j->held_len);
	if (r == 0)
		j->held_len = 0;
	return r;
}

/* Read what the pipe |fd| has now (non-blocking) and send it as |type|
 * frames.  Returns 1 while the pipe stays open, 0 at its end or on a read
 * error, -errno when the channel broke (what was read is held, not lost). */
static int pump(struct init *in, struct job *j, int fd, uint8_t type)
{
	for (;;) {
		ssize_t n = read(fd, j->buf, RELAY_BUF);
		if (n > 0) {
			j->held_type = type;
			j->held_len = (size_t)n;
			int r = flush_held(in, j);
			if (r < 0)
				return r;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		return n < 0 && errno == EAGAIN ? 1 : 0;
	}
}

/* The Runtime API endpoint: the listening socket inside the guest, the vsock
 * port its connections go to on the host, and the relay that joins them. */
struct api {
	int listen_fd; /* -1: no endpoint */
	unsigned vsock_port;
	struct guest_relay relay;
};

/* The relay's reopen callback: a new stream to the host for a connection
 * replayed after a restore. */
static int api_stream_open(void *arg, int *out_fd, bool *out_connecting)
{
	const struct api *a = arg;
	return vsock_connect(a->vsock_port, true, out_fd, out_connecting);
}

/* Listen on 127.0.0.1:|inv->api.tcp_port| (with lo up), if the invocation
 * asks for an endpoint. */
static void api_open(struct init *in, const struct guest_invocation *inv, struct api *a)
{
	a->listen_fd = -1;
	a->vsock_port = inv->api.vsock_port;
	guest_relay_init(&a->relay);
	if (!inv->api.tcp_port)
		return;
	guest_relay_set_reopen(&a->relay, api_stream_open, a);
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
	int v;
	bool connecting;
	int r = vsock_connect(a->vsock_port, true, &v, &connecting);
	if (r < 0) {
		log_warn("Runtime API: connect to the host (vsock port %u): %s; closing the workload's connection",
			 a->vsock_port, strerror(-r));
		close(c);
		return;
	}
	if ((r = guest_relay_add(&a->relay, c, v, connecting)) < 0)
		log_warn("Runtime API: relay a connection: %s", strerror(-r));
}

/* End the endpoint and every connection through it. */
static void api_close(struct api *a)
{
	if (a->listen_fd < 0)
		return;
	log_info("Runtime API: %zu connections open at the end, %llu ended, %llu cut short, %llu replayed after a "
		 "restore; %llu bytes to the host, %llu from it",
		 guest_relay_count(&a->relay), (unsigned long long)a->relay.ended, (unsigned long long)a->relay.failed,
		 (unsigned long long)a->relay.replayed, (unsigned long long)a->relay.bytes[0],
		 (unsigned long long)a->relay.bytes[1]);
	guest_relay_cleanup(&a->relay);
	close(a->listen_fd);
	a->listen_fd = -1;
}

/* ---- restore -------------------------------------------------------------------------------------------------- */

#define RESTORE_WAIT_MS 10000 /* from the new connection to the host's 'S' */
#define RESTORE_DIR "/run/kindling"
#define RESTORE_FILE RESTORE_DIR "/restore"
#define HOOK_PATH "/etc/kindling/after-restore"
#define HOOK_TIMEOUT_MS 10000
#define HOOK_KILL_WAIT_MS 1000 /* after SIGKILL, for the hook to be reaped */

/* The channel broke (|why|) while the command runs: most likely the VM was
 * restored from a snapshot and the VMM reset every vsock connection.  The
 * command goes on; reconnect on the backoff schedule and wait for 'S'.  If
 * the host cannot be reached, the command ends as when the host is gone.
 * The schedule starts over only once an 'S' arrives, so a host that takes
 * each connection and drops it does not keep the init trying forever. */
static void channel_broke(struct init *in, struct job *j, const char *why)
{
	log_warn("the channel to the host broke (%s) at %.3f s; reconnecting (a VM restored from a snapshot does this)",
		 why, uptime());
	close(in->chan);
	in->chan = -1;
	/* A frame cut by the break is dropped: 'S' starts the next stream. */
	guest_decoder_cleanup(&j->from_host);
	guest_decoder_init(&j->from_host, GUEST_DIR_HOST_TO_GUEST);
	struct guest_backoff *b = &j->backoff;
	int r;
	unsigned delay;
	while ((r = vsock_connect(in->port, false, &in->chan, NULL)) < 0) {
		if (guest_backoff_next(b, &delay) < 0) {
			log_err("could not reconnect to the host on vsock port %u: %u attempts over %u ms, the last: %s; "
				"ending the command without an exit status and powering off",
				in->port, b->attempts + 1, b->waited_ms, strerror(-r));
			kill(-j->pid, SIGKILL);
			power_off();
		}
		sleep_ms(delay);
	}
	log_info("reconnected to the host on vsock port %u at %.3f s (%u retries so far); waiting for 'S'", in->port,
		 uptime(), b->attempts);
	j->awaiting = true;
	j->await_until = uptime() + RESTORE_WAIT_MS / 1000.0;
}

/* Mix |seed| into the kernel's RNG, credited in full, and make the CRNG
 * reseed from it now, so getrandom() in this VM and in another restored from
 * the same snapshot diverge from here on.  Returns 0 or -errno. */
static int reseed(const uint8_t seed[GUEST_SEED_LEN])
{
	union {
		struct rand_pool_info info;
		uint8_t raw[sizeof(struct rand_pool_info) + GUEST_SEED_LEN];
	} u;
	u.info.entropy_count = GUEST_SEED_LEN * 8;
	u.info.buf_size = GUEST_SEED_LEN;
	memcpy(u.raw + sizeof(struct rand_pool_info), seed, GUEST_SEED_LEN);
	int r = 0;
	int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
	if (fd < 0 || ioctl(fd, RNDADDENTROPY, &u.info) < 0 || ioctl(fd, RNDRESEEDCRNG) < 0)
		r = -errno;
	if (fd >= 0)
		close(fd);
	explicit_bzero(&u, sizeof(u));
	return r;
}

/* Write |generation| to RESTORE_FILE, which the workload reads (the init's
 * root is the workload's: the image under its tmpfs overlay). */
static int record_generation(uint64_t generation)
{
	char text[32];
	int n = snprintf(text, sizeof(text), "%llu\n", (unsigned long long)generation);
	int r = mkdir_p(RESTORE_DIR, 0755);
	return r < 0 ? r : write_file_atomic(RESTORE_FILE, text, (size_t)n, 0644);
}

/* Run the image's HOOK_PATH, if it has one, as the command's user in its
 * working directory with its environment plus
 * KINDLING_RESTORE_GENERATION=N, stdin /dev/null and its stdout and stderr
 * sent as 'R' frames; at most HOOK_TIMEOUT_MS, then its process group is
 * killed.  Its failures go to the console; the command goes on either way. */
static void run_hook(struct init *in, struct job *j)
{
	struct stat st;
	if (stat(HOOK_PATH, &st) < 0) {
		if (errno != ENOENT)
			log_warn("after-restore hook %s: %s; not run", HOOK_PATH, strerror(errno));
		return;
	}
	size_t n = 0;
	while (j->envp[n])
		n++;
	char gen[64];
	snprintf(gen, sizeof(gen), "KINDLING_RESTORE_GENERATION=%llu", (unsigned long long)j->generation);
	char **envp = calloc(n + 2, sizeof(char *));
	int out[2] = { -1, -1 }, sp[2] = { -1, -1 };
	if (!envp || pipe2(out, O_CLOEXEC) < 0 || pipe2(sp, O_CLOEXEC) < 0) {
		log_warn("after-restore hook: %s; not run", envp ? strerror(errno) : "out of memory");
		goto out;
	}
	memcpy(envp, j->envp, n * sizeof(char *));
	envp[n] = gen;
	char *argv[] = { (char *)HOOK_PATH, NULL };
	double t0 = uptime();
	pid_t pid = fork();
	if (pid < 0) {
		log_warn("after-restore hook: fork: %s; not run", strerror(errno));
		goto out;
	}
	if (pid == 0)
		child(HOOK_PATH, argv, envp, j->workdir, j->u, out[1], out[1], sp[1], j->saved);
	close(out[1]);
	close(sp[1]);
	out[1] = sp[1] = -1;
	int e[2];
	ssize_t k;
	while ((k = read(sp[0], e, sizeof(e))) < 0 && errno == EINTR)
		;
	if (k == (ssize_t)sizeof(e))
		log_warn("after-restore hook %s: %s: %s; not run", HOOK_PATH, child_steps[e[1] & 3], strerror(e[0]));
	fcntl(out[0], F_SETFL, O_NONBLOCK);
	bool done = false, piped = true, killed = false, sending = true;
	int status = 0;
	double deadline = t0 + HOOK_TIMEOUT_MS / 1000.0;
	uint8_t buf[4096];
	/* Until it exits and its output is passed on; a daemon it left behind
	 * holding the pipe does not hold the init. */
	while (!done || piped) {
		struct pollfd p[2] = { { piped ? out[0] : -1, POLLIN, 0 }, { j->sfd, POLLIN, 0 } };
		double left = deadline - uptime();
		int pr = poll(p, 2, done ? DRAIN_GRACE_MS : left > 0 ? (int)(left * 1000) + 1 : 0);
		if (pr < 0 && errno != EINTR)
			break;
		if (p[1].revents & POLLIN)
			on_sigchld(j, pid, &done, &status);
		while (piped && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
			ssize_t got = read(out[0], buf, sizeof(buf));
			if (got < 0 && errno == EINTR)
				continue;
			if (got <= 0) {
				piped = got < 0 && errno == EAGAIN;
				break;
			}
			int r = sending ? guest_frame_send(in->chan, GUEST_FRAME_STDERR, buf, (size_t)got) : 0;
			if (r < 0) {
				/* The main loop finds the broken channel again and reconnects. */
				log_warn("after-restore hook: send its output: %s; dropping the rest of it", strerror(-r));
				sending = false;
			}
		}
		if (done && piped && pr == 0)
			break; /* exited, and its pipe stays quiet: someone it left holds it */
		if (uptime() >= deadline && !done) {
			if (killed) {
				log_warn("after-restore hook: not reaped %u ms after SIGKILL; going on", HOOK_KILL_WAIT_MS);
				break;
			}
			log_warn("after-restore hook %s: still running after %u ms; killing it", HOOK_PATH,
				 HOOK_TIMEOUT_MS);
			kill(-pid, SIGKILL);
			killed = true;
			deadline = uptime() + HOOK_KILL_WAIT_MS / 1000.0;
		}
	}
	if (done && !killed && k != (ssize_t)sizeof(e))
		log_info("after-restore hook %s: exit code %d signal %d in %.3f s", HOOK_PATH,
			 WIFEXITED(status) ? WEXITSTATUS(status) : -1, WIFSIGNALED(status) ? WTERMSIG(status) : 0,
			 uptime() - t0);
out:
	for (int i = 0; i < 2; i++) {
		if (out[i] >= 0)
			close(out[i]);
		if (sp[i] >= 0)
			close(sp[i]);
	}
	free(envp);
}

/* The host's 'S' for the generation |rs|: reseed, record it, run the hook,
 * then give the Runtime API connections new streams. */
static void apply_restore(struct init *in, struct job *j, struct api *a, struct guest_restore *rs)
{
	log_info("restored from a snapshot: generation %llu at %.3f s", (unsigned long long)rs->generation, uptime());
	int r = reseed(rs->seed);
	explicit_bzero(rs->seed, sizeof(rs->seed));
	/* Two VMs restored from one snapshot would share their random state:
	 * a workload must not go on like that. */
	if (r < 0) {
		kill(-j->pid, SIGKILL);
		fail(in, EXIT_CANNOT_RUN, "reseed the kernel's RNG after a restore (RNDADDENTROPY, RNDRESEEDCRNG): %s",
		     strerror(-r));
	}
	if ((r = record_generation(rs->generation)) < 0)
		log_warn("record the restore generation in %s: %s", RESTORE_FILE, strerror(-r));
	run_hook(in, j);
	j->awaiting = false;
	guest_backoff_init(&j->backoff);
	guest_relay_restart(&a->relay);
	log_info("Runtime API: %zu connections carried over the restore, %llu cut short so far",
		 guest_relay_count(&a->relay), (unsigned long long)a->relay.failed);
}

/* The channel is readable: the host's 'S' after a reconnect, or its end. */
static void from_host(struct init *in, struct job *j, struct api *a)
{
	uint8_t buf[512];
	ssize_t n = read(in->chan, buf, sizeof(buf));
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n <= 0) {
		channel_broke(in, j, n == 0 ? "end of stream" : strerror(errno));
		return;
	}
	size_t pos = 0;
	while (pos < (size_t)n) {
		size_t used;
		struct guest_frame f;
		int r = guest_decoder_feed(&j->from_host, buf + pos, (size_t)n - pos, &used, &f);
		pos += used;
		if (r < 0)
			fail(in, EXIT_CANNOT_RUN, "bad frame from the host while the command runs: %s",
			     guest_decoder_error(&j->from_host));
		if (r == 0)
			break;
		/* 'S' comes once, first, on each connection made after a break. */
		const char *why = "the host sends nothing after 'G' but 'S', first on a connection made after a break";
		struct guest_restore rs;
		if (!j->awaiting || guest_restore_take(&j->generation, &f, &rs, &why) < 0)
			fail(in, EXIT_CANNOT_RUN, "bad frame '%c' from the host while the command runs: %s",
			     f.type >= 0x20 && f.type < 0x7f ? f.type : '?', why);
		apply_restore(in, j, a, &rs);
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
	struct job j = { .saved = &saved, .u = &u, .envp = envp, .workdir = workdir };
	j.sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	if (j.sfd < 0)
		fail(in, EXIT_CANNOT_RUN, "signalfd: %s", strerror(errno));
	guest_decoder_init(&j.from_host, GUEST_DIR_HOST_TO_GUEST);
	guest_backoff_init(&j.backoff);

	log_info("running %s at %.3f s", exe, uptime());
	j.pid = fork();
	if (j.pid < 0)
		fail(in, EXIT_CANNOT_RUN, "fork: %s", strerror(errno));
	if (j.pid == 0)
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
		int code = (e[1] == 3 && (e[0] == ENOENT || e[0] == ENOTDIR)) ? EXIT_NOT_FOUND : EXIT_CANNOT_RUN;
		fail(in, code, "%s: %s: %s", inv->argv[0], child_steps[e[1] & 3], strerror(e[0]));
	}

	fcntl(out[0], F_SETFL, O_NONBLOCK);
	fcntl(err[0], F_SETFL, O_NONBLOCK);
	j.buf = malloc(RELAY_BUF);
	if (!j.buf)
		fail(in, EXIT_CANNOT_RUN, "out of memory for the output relay");
	/* stdout, stderr */
	const int pipe_fd[2] = { out[0], err[0] };
	const uint8_t pipe_type[2] = { GUEST_FRAME_STDOUT, GUEST_FRAME_STDERR };
	bool pipe_open[2] = { true, true };
	/* Until the command exits, its pipes close and the relay has passed on
	 * what it holds.  A daemon it left behind may keep them open: after
	 * exit, DRAIN_GRACE_MS of silence ends it.  While the channel is down
	 * (between a break and the host's 'S') output waits in the pipes and
	 * the Runtime API connections wait where they are. */
	for (;;) {
		bool live = !j.awaiting;
		if (live && (r = flush_held(in, &j)) < 0) {
			channel_broke(in, &j, strerror(-r));
			continue;
		}
		if (live && j.done && !pipe_open[0] && !pipe_open[1] && !guest_relay_pending(&api.relay))
			break;
		struct pollfd p[5 + GUEST_RELAY_POLLFDS] = {
			{ .fd = live && pipe_open[0] ? pipe_fd[0] : -1, .events = POLLIN },
			{ .fd = live && pipe_open[1] ? pipe_fd[1] : -1, .events = POLLIN },
			{ .fd = j.sfd, .events = POLLIN },
			/* No new connections once the command is gone, or while the relay is full. */
			{ .fd = live && !j.done && !guest_relay_full(&api.relay) ? api.listen_fd : -1, .events = POLLIN },
			{ .fd = in->chan, .events = POLLIN },
		};
		nfds_t np = 5 + (live ? guest_relay_poll_set(&api.relay, p + 5) : 0);
		int timeout = -1;
		if (j.awaiting) {
			double left = j.await_until - uptime();
			timeout = left > 0 ? (int)(left * 1000) + 1 : 0;
		} else if (j.done) {
			timeout = DRAIN_GRACE_MS;
		}
		int pr = poll(p, np, timeout);
		if (pr < 0 && errno != EINTR)
			fail(in, EXIT_CANNOT_RUN, "poll: %s", strerror(errno));
		if (pr == 0 && j.awaiting && uptime() >= j.await_until)
			fail(in, EXIT_CANNOT_RUN, "the host took the connection made after the channel broke but sent no "
			     "'S' within %u ms", RESTORE_WAIT_MS);
		if (pr == 0 && j.done && live)
			break;
		if (pr <= 0)
			continue;
		if (p[2].revents & POLLIN)
			on_sigchld(&j, -1, NULL, NULL);
		/* The channel first: after a restore the relay's streams are
		 * broken too, and must be replayed, not ended. */
		if (p[4].revents) {
			from_host(in, &j, &api);
			continue; /* the rest of |p| may be stale now */
		}
		if (!live)
			continue;
		r = 0;
		for (int i = 0; i < 2 && r >= 0; i++)
			if (pipe_open[i] && (p[i].revents & (POLLIN | POLLHUP | POLLERR)) &&
			    (r = pump(in, &j, pipe_fd[i], pipe_type[i])) == 0)
				pipe_open[i] = false;
		if (r < 0) {
			channel_broke(in, &j, strerror(-r));
			continue;
		}
		guest_relay_service(&api.relay, p + 5);
		if (p[3].revents & POLLIN)
			api_accept(&api);
	}
	api_close(&api);
	free(j.buf);
	guest_decoder_cleanup(&j.from_host);
	int32_t code = WIFEXITED(j.status) ? WEXITSTATUS(j.status) : -1;
	int32_t sig = WIFSIGNALED(j.status) ? WTERMSIG(j.status) : 0;
	log_info("%s exited at %.3f s: code %d signal %d", inv->argv[0], j.exited_at, code, sig);
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
