/* The process sandbox: an image's entrypoint in namespaces, on a kernel EROFS
 * mount of the image under a tmpfs overlay.
 *
 * Processes, from the caller down:
 *
 *   caller ── M (monitor) ── I (init, pid 1 of the new pid namespace) ── E (the workload, pid 2)
 *
 * - M is forked from a caller that may be multi-threaded (the host agent), so
 *   M and everything under it allocate nothing from the heap and take no
 *   lock another thread may have held at fork: what needs malloc (argv, the
 *   environment, the BPF seccomp filter, paths) is built by the caller before
 *   fork, and the image's /etc/passwd is read into mmap'd buffers.  M first
 *   closes every descriptor it did not get on purpose (a multi-threaded caller
 *   has many, and each sandbox would otherwise pin them for its lifetime),
 *   waits until the caller has put it in the sandbox cgroup, creates the
 *   user namespace (through a short-lived helper child whose maps it writes),
 *   unshares the mount, uts, ipc, net and pid namespaces, and forks I.  M then
 *   only forwards signals and waits.
 * - I is pid 1.  It builds the file tree (EROFS, overlay, pivot_root, /proc,
 *   /dev, /tmp), sets the hostname and brings up lo, forks E and then reaps
 *   every zombie until E exits.  Why a separate init instead of exec'ing the
 *   entrypoint as pid 1: entrypoints (shell scripts, language runtimes) do not
 *   reap orphans re-parented to them, and pid 1 gets no default signal
 *   actions, so a SIGTERM would be silently dropped.  I is our code, forwards
 *   signals and reports E's exact exit status (a pid 1 cannot re-raise a fatal
 *   signal on itself).  When E exits, I exits, and the kernel kills whatever is
 *   left in the namespace, so no daemon outlives the run.
 * - E is cloned from I sharing its memory until it execs (CLONE_VM |
 *   CLONE_VFORK, as posix_spawn does; I waits meanwhile), so starting it
 *   copies no page tables.  E moves itself into the device cgroup (cgroup
 *   v1), joins the user namespace, drops every capability outside a small
 *   set, switches to the image's user, installs the seccomp allowlist and
 *   execs the command.
 *
 * The user namespace: M has a helper child unshare(CLONE_NEWUSER), writes its
 * uid_map and gid_map ("0 BASE COUNT") as host root, and keeps a descriptor
 * of the namespace.  I mounts the image (EROFS needs the host's privileges),
 * then makes the mount idmapped through that namespace, so the image's uid 0
 * files are host uid BASE, which is root inside; the overlay sits on top of
 * the idmapped layer.  Every mount, and the network namespace, stays owned by
 * the host's user namespace: root inside holds its capabilities only over
 * its own namespace, and can neither mount nor create devices.
 *
 * I reports to the caller over a pipe (struct report): which mount was used,
 * a setup error (errno), E's exit status.  E's stdout and stderr are pipes the
 * caller copies to the spec's descriptors, timing the first byte.  If the
 * caller or M dies, PR_SET_PDEATHSIG kills I, which ends the namespace; the
 * mounts live only in the sandbox's mount namespace and vanish with it.
 *
 * With an on_ready callback, I and the caller also share a seqpacket socket
 * pair (the "ready channel").  Once everything else is set up, I listens on
 * the Runtime API port (the spec's, if any) inside the new network namespace,
 * where lo is up by then, and sends that socket to the caller with
 * SCM_RIGHTS; the caller hands it to on_ready on its own thread, from the
 * loop that copies output and watches the timeout and stop_fd, and answers
 * "go"; only then does I fork E.  I opens the socket, rather than the caller
 * entering the namespace with setns(): setns() moves the calling thread, so a
 * multi-threaded caller would need a thread of its own for it, while I is in
 * the namespace already, with lo up.  A refusal kills M, which ends I before
 * E exists.
 */
#define LOG_COMPONENT "sandbox"
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/loop.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sandbox/internal.h"

/* One message from I (or E before exec) to the caller.  Smaller than
 * PIPE_BUF, so each write is atomic and reads never split a message. */
struct report {
	int32_t kind; /* REP_* */
	int32_t value;
};
enum { REP_MOUNT_FILE = 1, REP_MOUNT_LOOP, REP_ERROR /* value = errno */, REP_EXIT /* value = wait status */,
       REP_MOUNT_DIR, REP_USERNS /* the workload gets its user namespace */ };

/* What the children need; built by the caller before fork so the children
 * only read it. */
struct plan {
	const struct sandbox_spec *spec;
	int image_fd; /* the image file, or an O_PATH descriptor of spec->rootfs_dir */
	char *rootfs_path; /* spec->rootfs_dir made absolute (realpath), or NULL */
	char **argv; /* NULL-terminated */
	const char *user;
	const char *workdir;
	const char *hostname;
	char **env; /* the workload's environment, NULL-terminated; HOME at env[home_idx] */
	size_t home_idx; /* SIZE_MAX when the image or the overrides set HOME */
	struct sandbox_seccomp filter;
	uint32_t userns_base, userns_count; /* count 0: no user namespace */
	int userns_fd; /* set in M: the user namespace, or -1 */
	int devcg_fd;  /* set in M: the device cgroup's tasks file, or -1 */
	int out_w, err_w, rep_w, sync_r;
	int ready_w; /* I's end of the ready channel, or -1 without on_ready */
};

#define SCRATCH "/tmp" /* covered by a fresh tmpfs in the sandbox's own mount namespace */
/* Leftover cgroups a run removes at most, per hierarchy (see the sweep). */
#define SANDBOX_CGROUP_SWEEP_MAX 16u

static void report(int fd, int kind, int value)
{
	struct report m = {kind, value};
	if (write(fd, &m, sizeof(m)) != (ssize_t)sizeof(m))
		_exit(125); /* the caller is gone; nothing left to tell */
}

/* Log a setup failure at the point it happens, tell the caller, and stop:
 * I is pid 1, so its exit takes the whole namespace down with it. */
__attribute__((noreturn)) static void setup_fail(const struct plan *p, int err)
{
	report(p->rep_w, REP_ERROR, err);
	_exit(126);
}

static int xmount(const char *src, const char *dst, const char *type, unsigned long flags, const char *data)
{
	if (mount(src, dst, type, flags, data) < 0) {
		int e = errno;
		log_err("sandbox: mount %s on %s (%s): %s", src ? src : "-", dst, type ? type : "bind/remount",
			strerror(e));
		return -e;
	}
	return 0;
}

static int mkdir_if_missing(const char *path, mode_t mode)
{
	if (mkdir(path, mode) < 0 && errno != EEXIST) {
		int e = errno;
		log_err("sandbox: mkdir %s: %s", path, strerror(e));
		return -e;
	}
	return 0;
}

/* ---- the image: file-backed EROFS, or a loop device ------------------------------------------------------------ */

static int mount_loop(int image_fd, const char *dst)
{
	int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
	if (ctl < 0) {
		int e = errno;
		log_err("sandbox: open /dev/loop-control: %s (is the loop driver available?)", strerror(e));
		return -e;
	}
	int r = -EBUSY;
	/* Another process can take the free device between GET_FREE and
	 * CONFIGURE; try a few times. */
	for (int attempt = 0; attempt < 8 && r == -EBUSY; attempt++) {
		int n = ioctl(ctl, LOOP_CTL_GET_FREE);
		if (n < 0) {
			r = -errno;
			log_err("sandbox: LOOP_CTL_GET_FREE: %s", strerror(-r));
			break;
		}
		char dev[64];
		snprintf(dev, sizeof(dev), "/dev/loop%d", n);
		int lfd = open(dev, O_RDONLY | O_CLOEXEC);
		if (lfd < 0) {
			r = -errno;
			log_err("sandbox: open %s: %s (loop device nodes missing?)", dev, strerror(-r));
			break;
		}
		/* AUTOCLEAR: the device detaches itself once unmounted and
		 * closed, so teardown needs no step of ours, on any path. */
		struct loop_config cfg;
		memset(&cfg, 0, sizeof(cfg));
		cfg.fd = (uint32_t)image_fd;
		cfg.block_size = 4096;
		cfg.info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR;
		if (ioctl(lfd, LOOP_CONFIGURE, &cfg) < 0) {
			r = -errno;
			close(lfd);
			if (r != -EBUSY)
				log_err("sandbox: LOOP_CONFIGURE %s: %s", dev, strerror(-r));
			continue;
		}
		r = xmount(dev, dst, "erofs", MS_RDONLY | MS_NODEV | MS_NOSUID, NULL);
		close(lfd);
	}
	close(ctl);
	return r;
}

/* Bind the plain directory |dir_fd| (spec->rootfs_dir, opened in this mount
 * namespace) read-only at |dst|.  Returns REP_MOUNT_DIR or -errno. */
static int mount_dir(const struct plan *p, int dir_fd, const char *dst)
{
	char src[64];
	snprintf(src, sizeof(src), "/proc/self/fd/%d", dir_fd);
	/* Not MS_REC: the workload sees the directory itself, not whatever the
	 * host mounted below it. */
	int r = xmount(src, dst, NULL, MS_BIND, NULL);
	if (r == 0)
		r = xmount(NULL, dst, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NODEV | MS_NOSUID, NULL);
	if (r < 0)
		log_err("sandbox: cannot use the directory %s as the root: %s", p->spec->rootfs_dir, strerror(-r));
	return r < 0 ? r : REP_MOUNT_DIR;
}

/* Mount the image (or bind the rootfs directory) at |dst|.  Returns
 * REP_MOUNT_FILE, REP_MOUNT_LOOP or REP_MOUNT_DIR, or -errno. */
static int mount_image(const struct plan *p, int dir_fd, const char *dst)
{
	/* The source is the descriptor the caller opened, so the path may be
	 * anywhere (even under the /tmp this namespace just covered). */
	char src[64];
	snprintf(src, sizeof(src), "/proc/self/fd/%d", p->image_fd);
	if (p->spec->rootfs_dir)
		return mount_dir(p, dir_fd, dst);
	if (p->spec->mount != SANDBOX_MOUNT_LOOP) {
		/* nosuid does not hide the bits from ls -l; it and no_new_privs
		 * each make them inert. */
		if (mount(src, dst, "erofs", MS_RDONLY | MS_NODEV | MS_NOSUID, NULL) == 0)
			return REP_MOUNT_FILE;
		int e = errno;
		/* ENOTBLK: the kernel lacks CONFIG_EROFS_FS_BACKED_BY_FILE and
		 * wanted a block device. */
		if (p->spec->mount == SANDBOX_MOUNT_FILE || (e != ENOTBLK && e != EINVAL && e != EOPNOTSUPP)) {
			log_err("sandbox: mount -t erofs %s: %s (is it an EROFS image? does the kernel have erofs?)",
				p->spec->image_path, strerror(e));
			return -e;
		}
		log_info("sandbox: file-backed EROFS mount refused (%s); using a loop device", strerror(e));
	}
	int r = mount_loop(p->image_fd, dst);
	return r < 0 ? r : REP_MOUNT_LOOP;
}

/* ---- the file tree inside -------------------------------------------------------------------------------------- */

/* The tmpfs options that make a scratch filesystem's root owned by the
 * sandbox's root: with a user namespace, host id userns_base. */
static void owner_opts(const struct plan *p, char *buf, size_t len)
{
	if (p->userns_fd >= 0)
		snprintf(buf, len, ",uid=%u,gid=%u", p->userns_base, p->userns_base);
	else
		buf[0] = '\0';
}

/* /dev: a fresh tmpfs holding the standard nodes only.  The tmpfs itself is
 * nodev, so a node the workload managed to create there would not open; the
 * nodes below are bind mounts of the host's, each its own mount. */
static int make_dev(const struct plan *p, const char *root)
{
	char path[PATH_MAX], opts[128], own[64];
	owner_opts(p, own, sizeof(own));
	snprintf(path, sizeof(path), "%s/dev", root);
	int r = mkdir_if_missing(path, 0755);
	if (r == 0)
		r = xmount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NOEXEC | MS_NODEV, "mode=755,size=64k");
	/* Bind the host's nodes rather than mknod: no process of the sandbox
	 * ever holds CAP_MKNOD, and in a user namespace it could not anyway. */
	static const char *const nodes[] = {"null", "zero", "full", "random", "urandom", "tty"};
	for (size_t i = 0; r == 0 && i < sizeof(nodes) / sizeof(nodes[0]); i++) {
		char host[64];
		snprintf(host, sizeof(host), "/dev/%s", nodes[i]);
		snprintf(path, sizeof(path), "%s/dev/%s", root, nodes[i]);
		int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0666);
		if (fd < 0) {
			r = -errno;
			log_err("sandbox: create %s: %s", path, strerror(-r));
			break;
		}
		close(fd);
		r = xmount(host, path, NULL, MS_BIND, NULL);
	}
	/* Pseudo-terminals: a devpts of the sandbox's own (no host terminal
	 * shows in it), with /dev/ptmx pointing at its multiplexer. */
	if (r == 0) {
		snprintf(path, sizeof(path), "%s/dev/pts", root);
		r = mkdir_if_missing(path, 0755);
		if (r == 0)
			r = xmount("devpts", path, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620");
	}
	static const char *const links[][2] = {
		{"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"}, {"/proc/self/fd/1", "stdout"},
		{"/proc/self/fd/2", "stderr"}, {"/proc/kcore", "core"}, {"pts/ptmx", "ptmx"},
	};
	for (size_t i = 0; r == 0 && i < sizeof(links) / sizeof(links[0]); i++) {
		snprintf(path, sizeof(path), "%s/dev/%s", root, links[i][1]);
		if (symlink(links[i][0], path) < 0) {
			r = -errno;
			log_err("sandbox: symlink %s: %s", path, strerror(-r));
		}
	}
	if (r == 0) {
		snprintf(path, sizeof(path), "%s/dev/shm", root);
		r = mkdir_if_missing(path, 01777);
		snprintf(opts, sizeof(opts), "mode=1777,size=65536k%s", own);
		if (r == 0)
			r = xmount("shm", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, opts);
	}
	return r;
}

/* /proc as Docker leaves it: writable for the process's own entries, but the
 * knobs that reach the whole host read-only, and the leaks masked. */
static int harden_proc(void)
{
	static const char *const ro[] = {"/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs"};
	static const char *const masked_files[] = {"/proc/kcore", "/proc/keys", "/proc/timer_list",
						   "/proc/sched_debug", "/proc/latency_stats", "/proc/timer_stats"};
	static const char *const masked_dirs[] = {"/proc/acpi", "/proc/scsi", "/proc/asound"};
	for (size_t i = 0; i < sizeof(ro) / sizeof(ro[0]); i++) {
		if (access(ro[i], F_OK) < 0)
			continue;
		int r = xmount(ro[i], ro[i], NULL, MS_BIND | MS_REC, NULL);
		if (r == 0)
			r = xmount(NULL, ro[i], NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
				   NULL);
		if (r < 0)
			return r;
	}
	for (size_t i = 0; i < sizeof(masked_files) / sizeof(masked_files[0]); i++)
		if (access(masked_files[i], F_OK) == 0 && xmount("/dev/null", masked_files[i], NULL, MS_BIND, NULL) < 0)
			return -EPERM;
	for (size_t i = 0; i < sizeof(masked_dirs) / sizeof(masked_dirs[0]); i++)
		if (access(masked_dirs[i], F_OK) == 0 &&
		    xmount("tmpfs", masked_dirs[i], "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0") < 0)
			return -EPERM;
	return 0;
}

/* Enter |root| as the new /.  pivot_root(".", ".") stacks the old root under
 * the new one, and the detach then drops every host mount from view. */
static int enter_root(const char *root)
{
	if (chdir(root) < 0) {
		int e = errno;
		log_err("sandbox: chdir %s: %s", root, strerror(e));
		return -e;
	}
	if (syscall(SYS_pivot_root, ".", ".") == 0) {
		if (umount2(".", MNT_DETACH) < 0) {
			int e = errno;
			log_err("sandbox: detach the old root: %s", strerror(e));
			return -e;
		}
		return chdir("/") < 0 ? -errno : 0;
	}
	/* Fallback: pivot_root refuses when the current root is the initramfs
	 * (rootfs cannot be unmounted).  Move the new root over / and chroot;
	 * weaker, because the old root stays reachable to anything that can
	 * escape a chroot, which the capability and seccomp rules prevent. */
	int e = errno;
	log_warn("sandbox: pivot_root failed (%s); falling back to MS_MOVE + chroot", strerror(e));
	if (mount(".", "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 || chdir("/") < 0) {
		e = errno;
		log_err("sandbox: chroot into %s: %s", root, strerror(e));
		return -e;
	}
	return 0;
}

/* Make the image mount at |dir| idmapped through the sandbox's user
 * namespace, and give the overlay's upper root the owner and mode of the
 * image's root (the upper root is what / shows).  Returns 0 or -errno; on
 * failure nothing has changed. */
static int idmap_lower(const struct plan *p, const char *dir, const char *upper)
{
	int t = (int)syscall(SYS_open_tree, AT_FDCWD, dir, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
	if (t < 0)
		return -errno;
	struct mount_attr a;
	memset(&a, 0, sizeof(a));
	a.attr_set = MOUNT_ATTR_IDMAP;
	a.userns_fd = (uint64_t)p->userns_fd;
	int r = 0;
	if (syscall(SYS_mount_setattr, t, "", AT_EMPTY_PATH, &a, sizeof(a)) < 0 ||
	    syscall(SYS_move_mount, t, "", AT_FDCWD, dir, MOVE_MOUNT_F_EMPTY_PATH) < 0)
		r = -errno;
	close(t);
	struct stat st;
	if (r == 0 && stat(dir, &st) == 0 && (chown(upper, st.st_uid, st.st_gid) < 0 || chmod(upper, st.st_mode & 07777) < 0))
		r = -errno;
	return r;
}

/* Per network namespace knobs that root inside would otherwise lack: its
 * capabilities do not cover the network namespace (owned by the host's user
 * namespace), so let it bind ports below 1024 and ping without raw sockets,
 * as Docker does.  Best effort: a kernel without them runs without. */
static void net_sysctls(void)
{
	static const char *const kv[][2] = {{"/proc/sys/net/ipv4/ip_unprivileged_port_start", "0"},
					    {"/proc/sys/net/ipv4/ping_group_range", "0 2147483647"}};
	for (size_t i = 0; i < sizeof(kv) / sizeof(kv[0]); i++) {
		int fd = open(kv[i][0], O_WRONLY | O_CLOEXEC);
		if (fd < 0 || write(fd, kv[i][1], strlen(kv[i][1])) < 0)
			log_debug("sandbox: set %s: %s", kv[i][0], strerror(errno));
		if (fd >= 0)
			close(fd);
	}
}

/* The whole file tree; runs in I, in the new namespaces, before pivot. */
static int build_tree(struct plan *p, int *mount_kind)
{
	int r;
	/* Nothing done here may leak to the host, nor the host's later mounts in. */
	if ((r = xmount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL)) < 0)
		return r;
	/* A rootfs directory is opened again here, by path, before the scratch
	 * tmpfs may cover it: bind mounts only take sources from the caller's
	 * own mount namespace, and the caller's descriptor points into the
	 * host's.  (I exits soon; the descriptor is close-on-exec.) */
	int dir_fd = -1;
	if (p->rootfs_path && (dir_fd = open(p->rootfs_path, O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0) {
		r = -errno;
		log_err("sandbox: open the rootfs directory %s: %s", p->rootfs_path, strerror(-r));
		return r;
	}
	if ((r = mkdir_if_missing(SCRATCH, 01777)) < 0)
		return r;
	/* The overlay's upper layer.  Its pages are charged to the sandbox's
	 * memory cgroup, which bounds it when a limit is set. */
	if ((r = xmount("kindling-scratch", SCRATCH, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0700")) < 0)
		return r;
	static const char *const dirs[] = {SCRATCH "/lower", SCRATCH "/upper", SCRATCH "/work", SCRATCH "/root"};
	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++)
		if ((r = mkdir_if_missing(dirs[i], 0755)) < 0)
			return r;
	r = mount_image(p, dir_fd, SCRATCH "/lower");
	if (dir_fd >= 0)
		close(dir_fd);
	if (r < 0)
		return r;
	*mount_kind = r;
	timeline_mark(p->spec->timeline, "mount-image");
	if (p->userns_fd >= 0 && (r = idmap_lower(p, SCRATCH "/lower", SCRATCH "/upper")) < 0) {
		log_warn("sandbox: notice: cannot map the image's owners into the sandbox's user namespace (idmapped "
			 "mount: %s; the kernel needs 5.19+ and a filesystem that supports it); running without a "
			 "user namespace, so root inside is the host's root, held back by capabilities, seccomp and "
			 "the other namespaces only",
			 strerror(-r));
		close(p->userns_fd);
		p->userns_fd = -1;
	}
	if ((r = xmount("overlay", SCRATCH "/root", "overlay", MS_NODEV | MS_NOSUID,
			"lowerdir=" SCRATCH "/lower,upperdir=" SCRATCH "/upper,workdir=" SCRATCH "/work")) < 0)
		return r;
	static const char *const in_root[] = {SCRATCH "/root/proc", SCRATCH "/root/tmp"};
	for (size_t i = 0; i < sizeof(in_root) / sizeof(in_root[0]); i++)
		if ((r = mkdir_if_missing(in_root[i], 0755)) < 0)
			return r;
	if ((r = make_dev(p, SCRATCH "/root")) < 0)
		return r;
	char opts[96], own[64];
	owner_opts(p, own, sizeof(own));
	snprintf(opts, sizeof(opts), "mode=1777%s", own);
	if ((r = xmount("tmpfs", SCRATCH "/root/tmp", "tmpfs", MS_NOSUID | MS_NODEV, opts)) < 0)
		return r;
	if ((r = enter_root(SCRATCH "/root")) < 0)
		return r;
	/* proc must be mounted from inside the new pid namespace to show it. */
	if ((r = xmount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL)) < 0)
		return r;
	net_sysctls(); /* before harden_proc makes /proc/sys read-only */
	if ((r = harden_proc()) < 0)
		return r;
	if (sethostname(p->hostname, strlen(p->hostname)) < 0) {
		r = -errno;
		log_err("sandbox: sethostname %s: %s", p->hostname, strerror(-r));
		return r;
	}
	sandbox_loopback_up(); /* a workload without lo still runs; logged */
	timeline_mark(p->spec->timeline, "file-tree");
	return 0;
}

/* ---- E: become the workload ------------------------------------------------------------------------------------ */

/* The capabilities a function keeps (bounding, permitted and effective sets;
 * the inheritable and ambient sets are emptied).  Smaller than Docker's
 * default: what entrypoints running as root do to their own files and
 * processes, and nothing about devices, mounts, raw sockets or the kernel.
 *   CHOWN, DAC_OVERRIDE, FOWNER, FSETID: set up files owned by other users
 *     (package scripts, "chown app /data", writing as root over any mode);
 *   SETUID, SETGID: drop to another user (su-exec, gosu, runuser);
 *   KILL: signal its own children that run as other users;
 *   NET_BIND_SERVICE: listen on a port below 1024.
 * Gone compared with Docker: MKNOD (device nodes), NET_RAW (raw and packet
 * sockets; ping works through ping sockets), SYS_CHROOT, SETPCAP, SETFCAP,
 * AUDIT_WRITE.  In a user namespace each applies to the namespace's own
 * files and processes only. */
static bool cap_kept(int cap)
{
	switch (cap) {
	case CAP_CHOWN: case CAP_DAC_OVERRIDE: case CAP_FOWNER: case CAP_FSETID: case CAP_KILL: case CAP_SETGID:
	case CAP_SETUID: case CAP_NET_BIND_SERVICE:
		return true;
	default:
		return false;
	}
}

static int drop_caps(void)
{
	for (int cap = 0; cap < 64; cap++) {
		if (cap_kept(cap))
			continue;
		if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
			if (errno == EINVAL)
				break; /* past the kernel's last capability */
			int e = errno;
			log_err("sandbox: drop capability %d: %s", cap, strerror(e));
			return -e;
		}
	}
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
		return -errno;
	struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
	struct __user_cap_data_struct d[2];
	memset(d, 0, sizeof(d));
	if (syscall(SYS_capget, &h, d) < 0)
		return -errno;
	uint32_t keep[2] = {0, 0};
	for (int cap = 0; cap < 64; cap++)
		if (cap_kept(cap))
			keep[cap / 32] |= 1u << (cap % 32);
	for (int i = 0; i < 2; i++) {
		d[i].effective &= keep[i];
		d[i].permitted &= keep[i];
		d[i].inheritable = 0;
	}
	if (syscall(SYS_capset, &h, d) < 0) {
		int e = errno;
		log_err("sandbox: set the capability sets: %s", strerror(e));
		return -e;
	}
	return 0;
}

__attribute__((noreturn)) static void run_workload(const struct plan *p, const struct sandbox_user *u, char **env)
{
	const struct sandbox_spec *s = p->spec;
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	for (int sig = 1; sig < NSIG; sig++)
		signal(sig, SIG_DFL);
	setsid();
	timeline_mark(s->timeline, "fork-workload");
	/* Into the device cgroup now, after I's loop device (which the
	 * allowlist would refuse) and before anything of the workload's. */
	if (p->devcg_fd >= 0 && write(p->devcg_fd, "0", 1) != 1) {
		int e = errno;
		log_err("sandbox: join the device cgroup: %s", strerror(e));
		setup_fail(p, e);
	}

	int in = s->in_fd;
	if (in < 0 && (in = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0) {
		log_err("sandbox: open /dev/null: %s", strerror(errno));
		setup_fail(p, errno);
	}
	if (dup2(in, 0) < 0 || dup2(p->out_w, 1) < 0 || dup2(p->err_w, 2) < 0)
		setup_fail(p, errno);
	/* Nothing else of the caller's may reach the workload; the report pipe
	 * stays open until exec, which is how an exec failure gets back. */
	syscall(SYS_close_range, 3, ~0U, 4 /* CLOSE_RANGE_CLOEXEC */);

	/* Join the user namespace before dropping capabilities: entering one
	 * resets every capability set to full (over that namespace only). */
	if (p->userns_fd >= 0 && setns(p->userns_fd, CLONE_NEWUSER) < 0) {
		int e = errno;
		log_err("sandbox: join the sandbox's user namespace: %s", strerror(e));
		setup_fail(p, e);
	}
	int r = drop_caps();
	if (r < 0)
		setup_fail(p, -r);
	if (p->userns_fd >= 0 && (u->uid >= p->userns_count || u->gid >= p->userns_count)) {
		log_err("sandbox: uid %u / gid %u is outside the sandbox's user namespace (ids 0..%u); give a wider "
			"mapping (kindling run --userns BASE:COUNT) or another user",
			u->uid, u->gid, p->userns_count - 1);
		setup_fail(p, EINVAL);
	}
	gid_t groups[SANDBOX_MAX_GROUPS];
	for (size_t i = 0; i < u->n_groups; i++)
		groups[i] = u->groups[i];
	if (setgroups(u->n_groups, groups) < 0 || setresgid(u->gid, u->gid, u->gid) < 0 ||
	    setresuid(u->uid, u->uid, u->uid) < 0) {
		int e = errno;
		log_err("sandbox: switch to uid %u gid %u: %s", u->uid, u->gid, strerror(e));
		setup_fail(p, e);
	}
	if (chdir(p->workdir) < 0) {
		int e = errno;
		log_err("sandbox: working directory %s: %s (as uid %u)", p->workdir, strerror(e), u->uid);
		setup_fail(p, e);
	}
	timeline_mark(s->timeline, "credentials");
	/* Looked up after the switch, so "executable" means executable by the
	 * image's user, as execvp would decide. */
	char path[PATH_MAX];
	if ((r = sandbox_path_lookup(p->argv[0], sandbox_env_get(env, "PATH"), path, sizeof(path))) < 0) {
		log_err("sandbox: command \"%s\" not found in the image (PATH=%s): %s", p->argv[0],
			sandbox_env_get(env, "PATH"), strerror(-r));
		setup_fail(p, -r);
	}
	timeline_mark(s->timeline, "path-lookup");
	/* The last step before exec: from here on the allowlist applies. */
	if ((r = sandbox_seccomp_apply(&p->filter)) < 0) {
		log_err("sandbox: load the seccomp filter: %s", strerror(-r));
		setup_fail(p, -r);
	}
	timeline_mark(s->timeline, "seccomp-load"); /* the last mark: the program is exec'd now */
	execve(path, p->argv, env);
	int e = errno;
	log_err("sandbox: exec %s: %s", path, strerror(e));
	setup_fail(p, e);
}

/* The children below (the user namespace's holder, the workload) share their
 * parent's memory until they exec or exit, so making them copies no page
 * tables.  ThreadSanitizer cannot follow such a child: it runs on the
 * parent's thread state, and its first instrumented call corrupts it.  A
 * TSan build therefore gives them a copy of the memory instead, as a fork
 * would (their parents are single-threaded): the same behaviour without the
 * saving. */
#if defined(__SANITIZE_THREAD__)
#define CLONE_VM_UNLESS_TSAN 0
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CLONE_VM_UNLESS_TSAN 0
#endif
#endif
#ifndef CLONE_VM_UNLESS_TSAN
#define CLONE_VM_UNLESS_TSAN CLONE_VM
#endif

/* What E starts from, on I's stack. */
struct workload_args {
	const struct plan *p;
	const struct sandbox_user *u;
};

static int workload_main(void *arg)
{
	const struct workload_args *a = arg;
	run_workload(a->p, a->u, a->p->env);
}

/* In I: start E and return its pid, or -errno.  E shares I's memory until it
 * execs or exits (CLONE_VM | CLONE_VFORK, as posix_spawn does), on a stack of
 * its own, while I waits: no page tables are copied and nothing is copied on
 * write, which a fork of the caller's large address space pays for.  E has
 * its own descriptor table, working directory, signal handlers and
 * credentials (no CLONE_FILES, CLONE_FS, CLONE_SIGHAND), and writes nothing
 * of I's but errno, so I continues exactly as after a fork. */
static pid_t spawn_workload(const struct plan *p, const struct sandbox_user *u)
{
	static const size_t stack_size = 256 * 1024;
	char *stack = mmap(NULL, stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
	if (stack == MAP_FAILED)
		return -errno;
	struct workload_args a = { .p = p, .u = u };
	pid_t e = clone(workload_main, stack + stack_size, CLONE_VM_UNLESS_TSAN | CLONE_VFORK | SIGCHLD, &a);
	int err = errno;
	munmap(stack, stack_size); /* E has exec'd or exited: its stack is free */
	return e < 0 ? -err : e;
}

/* ---- the ready channel ----------------------------------------------------------------------------------------- */

#define READY_TAG 'r' /* I -> caller: set up; the Runtime API socket rides along, if any */
#define READY_GO 'g'  /* caller -> I: on_ready accepted; start the workload */

/* In I: open the Runtime API endpoint if the spec asks for one, send it to the
 * caller, and wait for its go.  Without one, I ends (and with it the
 * namespace): the caller refused, or is gone. */
static void ready_handshake(const struct plan *p)
{
	int lfd = -1, r;
	if (p->spec->runtime_api_port && (r = sandbox_runtime_api_listen(p->spec->runtime_api_port, &lfd)) < 0)
		setup_fail(p, -r);
	char tag = READY_TAG;
	struct iovec iov = { .iov_base = &tag, .iov_len = 1 };
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} u;
	memset(&u, 0, sizeof(u));
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (lfd >= 0) {
		mh.msg_control = u.buf;
		mh.msg_controllen = sizeof(u.buf);
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &lfd, sizeof(int));
	}
	if (sendmsg(p->ready_w, &mh, MSG_NOSIGNAL) != 1)
		_exit(125); /* the caller is gone */
	if (lfd >= 0)
		close(lfd); /* the caller's copy is the endpoint now */
	char go = 0;
	ssize_t n;
	while ((n = read(p->ready_w, &go, 1)) < 0 && errno == EINTR)
		;
	if (n != 1 || go != READY_GO)
		_exit(125);
	close(p->ready_w);
}

/* In the caller: take I's ready message from |fd| and hand it to on_ready.
 * Returns 0 once I was told to go (or when I died first, which the report
 * pipe explains), on_ready's non-zero value if it refused, or -EPROTO for a
 * message that is not what I sends. */
static int ready_serve(const struct sandbox_spec *s, int fd, pid_t m, const struct sandbox_cgroup *cg)
{
	char tag = 0;
	struct iovec iov = { .iov_base = &tag, .iov_len = 1 };
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} u;
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf) };
	ssize_t n;
	while ((n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR)
		;
	if (n <= 0)
		return 0; /* I ended before it was ready */
	struct sandbox_ready rd = { .runtime_api_fd = -1, .pid = m };
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(sizeof(int)))
			memcpy(&rd.runtime_api_fd, CMSG_DATA(c), sizeof(int));
	if (tag != READY_TAG || (mh.msg_flags & MSG_CTRUNC) || (rd.runtime_api_fd >= 0) != (s->runtime_api_port != 0)) {
		log_err("sandbox: the sandbox's init sent a malformed ready message");
		if (rd.runtime_api_fd >= 0)
			close(rd.runtime_api_fd);
		return -EPROTO;
	}
	sandbox_cgroup_peak_file(cg, rd.memory_peak_path, sizeof(rd.memory_peak_path));
	int r = s->on_ready(s->ready_arg, &rd);
	if (r != 0) {
		log_info("sandbox: on_ready refused the sandbox (%d); ending it before the workload starts", r);
		return r;
	}
	char go = READY_GO;
	if (send(fd, &go, 1, MSG_NOSIGNAL) != 1)
		log_debug("sandbox: the init went away before the go: %s", strerror(errno));
	return 0;
}

/* ---- I: pid 1 ------------------------------------------------------------------------------------------------ */

static void noop_handler(int sig) { (void)sig; }

static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

/* Block SIGCHLD and the forwarded signals, with a handler installed: pid 1
 * drops signals whose action is the default, and sigwaitinfo then picks them
 * up synchronously. */
static void block_signals(sigset_t *set)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = noop_handler;
	sigemptyset(set);
	sigaddset(set, SIGCHLD);
	sigaction(SIGCHLD, &sa, NULL);
	for (size_t i = 0; i < sizeof(forwarded) / sizeof(forwarded[0]); i++) {
		sigaddset(set, forwarded[i]);
		sigaction(forwarded[i], &sa, NULL);
	}
	sigprocmask(SIG_BLOCK, set, NULL);
}

/* Wait for |child| while forwarding signals to it and reaping everything
 * else that exits.  Returns |child|'s wait status. */
static int supervise(pid_t child, const sigset_t *set)
{
	for (;;) {
		siginfo_t si;
		int sig = sigwaitinfo(set, &si);
		if (sig < 0)
			continue;
		if (sig != SIGCHLD) {
			kill(child, sig);
			continue;
		}
		int st;
		pid_t w;
		while ((w = waitpid(-1, &st, WNOHANG)) > 0)
			if (w == child)
				return st;
	}
}

__attribute__((noreturn)) static void init_main(struct plan *p)
{
	sigset_t set;
	block_signals(&set);
	timeline_mark(p->spec->timeline, "fork-init");
	int kind = 0;
	int r = build_tree(p, &kind);
	if (r < 0)
		setup_fail(p, -r);
	report(p->rep_w, kind, 0);

	report(p->rep_w, REP_USERNS, p->userns_fd >= 0);

	/* Resolved inside, from the image's own files; no heap (see the top). */
	struct sandbox_user u;
	if ((r = sandbox_user_resolve(p->user, "/etc/passwd", "/etc/group", &u)) < 0)
		setup_fail(p, -r);
	char home_kv[PATH_MAX + 8];
	if (p->home_idx != SIZE_MAX && u.home[0]) {
		snprintf(home_kv, sizeof(home_kv), "HOME=%s", u.home);
		p->env[p->home_idx] = home_kv;
	}
	/* Docker creates a missing working directory, owned by root; so do we
	 * (in the overlay), owned by the sandbox's root. */
	if (access(p->workdir, F_OK) < 0) {
		if ((r = mkdir_p(p->workdir, 0755)) < 0) {
			log_err("sandbox: create working directory %s: %s", p->workdir, strerror(-r));
			setup_fail(p, -r);
		}
		if (p->userns_fd >= 0 && chown(p->workdir, p->userns_base, p->userns_base) < 0)
			log_warn("sandbox: chown the working directory %s: %s", p->workdir, strerror(errno));
	}
	timeline_mark(p->spec->timeline, "image-user");

	if (p->ready_w >= 0) {
		ready_handshake(p);
		timeline_mark(p->spec->timeline, "ready");
	}
	pid_t e = spawn_workload(p, &u);
	if (e < 0)
		setup_fail(p, -e);
	close(p->out_w);
	close(p->err_w);
	if (p->userns_fd >= 0)
		close(p->userns_fd);
	/* I runs under the same filter for the rest of its life. */
	if ((r = sandbox_seccomp_apply(&p->filter)) < 0)
		log_warn("sandbox: seccomp on init: %s", strerror(-r));
	int st = supervise(e, &set);
	report(p->rep_w, REP_EXIT, st);
	_exit(0);
}

/* ---- M: the monitor outside the pid namespace ---------------------------------------------------------------- */

/* Close every descriptor but the |n| in |keep| (negative entries ignored).
 * No allocation: runs in M right after fork. */
static void close_all_but(int *keep, size_t n)
{
	for (size_t i = 1; i < n; i++) /* insertion sort; n is about ten */
		for (size_t j = i; j > 0 && keep[j - 1] > keep[j]; j--) {
			int t = keep[j];
			keep[j] = keep[j - 1];
			keep[j - 1] = t;
		}
	unsigned next = 0;
	for (size_t i = 0; i < n; i++) {
		if (keep[i] < 0 || (unsigned)keep[i] < next)
			continue;
		if ((unsigned)keep[i] > next && syscall(SYS_close_range, next, (unsigned)keep[i] - 1, 0) < 0)
			for (unsigned fd = next; fd < (unsigned)keep[i]; fd++)
				close((int)fd);
		next = (unsigned)keep[i] + 1;
	}
	if (syscall(SYS_close_range, next, ~0U, 0) < 0)
		for (unsigned fd = next; fd < 65536; fd++)
			close((int)fd);
}

/* The user namespace's placeholder process: it only has to exist until M
 * has written the maps and opened the namespace, and it shares M's memory, so
 * it touches nothing but its own stack: it waits for the pipe to close.
 * |arg| is the pipe; the helper's descriptor table is a copy of M's, so it
 * closes its own write end first, or the read would never see EOF. */
static int userns_holder(void *arg)
{
	const int *down = arg;
	char c;
	close(down[1]);
	ssize_t n = read(down[0], &c, 1);
	(void)n;
	return 0;
}

/* In M: create the sandbox's user namespace and return a descriptor of it,
 * or -1 with a notice (the host lacks user namespaces, or they are
 * disabled).  A helper child is cloned straight into a new user namespace and
 * waits while M, root in the host's namespace, writes the mappings: a process
 * cannot map ids other than its own into a namespace it created.  The helper
 * shares M's memory (CLONE_VM), so making it copies no page tables, which a
 * fork of a large caller's address space would. */
static int make_userns(const struct plan *p)
{
	int down[2];
	if (pipe2(down, O_CLOEXEC) < 0)
		return -1;
	/* The helper's stack; it needs a read() and nothing more. */
	static const size_t stack_size = 64 * 1024;
	char *stack = mmap(NULL, stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
	pid_t h = -1;
	int e = 0, fd = -1;
	if (stack == MAP_FAILED)
		e = errno;
	else if ((h = clone(userns_holder, stack + stack_size, CLONE_VM_UNLESS_TSAN | CLONE_NEWUSER | SIGCHLD, down)) <
		 0)
		e = errno;
	close(down[0]); /* the helper has its own copy of the descriptor table */
	if (e == 0) {
		char path[64], map[64];
		int n = snprintf(map, sizeof(map), "0 %u %u\n", p->userns_base, p->userns_count);
		static const char *const files[] = {"uid_map", "gid_map"};
		for (int i = 0; i < 2 && e == 0; i++) {
			snprintf(path, sizeof(path), "/proc/%d/%s", (int)h, files[i]);
			int mfd = open(path, O_WRONLY | O_CLOEXEC);
			if (mfd < 0 || write(mfd, map, (size_t)n) != n)
				e = errno ? errno : EIO;
			if (mfd >= 0)
				close(mfd);
		}
		snprintf(path, sizeof(path), "/proc/%d/ns/user", (int)h);
		if (e == 0 && (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
			e = errno;
	}
	close(down[1]); /* the helper's read returns 0: it exits */
	if (h > 0)
		while (waitpid(h, NULL, 0) < 0 && errno == EINTR)
			;
	if (stack != MAP_FAILED)
		munmap(stack, stack_size);
	if (e != 0) {
		log_warn("sandbox: notice: no user namespace for the workload (%s; is user.max_user_namespaces 0, or "
			 "the kernel built without CONFIG_USER_NS?); root inside is the host's root, held back by "
			 "capabilities, seccomp and the other namespaces only",
			 strerror(e));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

__attribute__((noreturn)) static void monitor_main(struct plan *p, pid_t caller)
{
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != caller)
		_exit(125);
	/* Nothing of the caller's beyond what the sandbox uses. */
	int keep[] = {0, 1, 2, p->image_fd, p->out_w, p->err_w, p->rep_w, p->sync_r, p->ready_w, p->spec->in_fd};
	close_all_but(keep, sizeof(keep) / sizeof(keep[0]));
	sigset_t set;
	block_signals(&set);
	/* Wait until the caller has made the cgroups, then join them before
	 * forking anything, so that every process of the sandbox starts inside.
	 * The message is "g", the device cgroup's tasks file ("" if none) and
	 * NUL, then each cgroup v1 tasks file to join now, NUL-terminated (none
	 * on cgroup v2, where the caller has moved us already). */
	char msg[4 * PATH_MAX];
	size_t got = 0;
	ssize_t k;
	while (got < sizeof(msg) - 1 && (k = read(p->sync_r, msg + got, sizeof(msg) - 1 - got)) != 0) {
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			_exit(125);
		got += (size_t)k;
	}
	if (got < 2 || msg[0] != 'g' || msg[got - 1] != '\0')
		_exit(125);
	close(p->sync_r);
	const char *devcg = msg + 1;
	for (const char *join = devcg + strlen(devcg) + 1; join < msg + got; join += strlen(join) + 1) {
		int r = sandbox_cgroup_join_self(join);
		if (r < 0)
			setup_fail(p, -r);
	}
	timeline_mark(p->spec->timeline, "cgroup-join");
	if (devcg[0] && (p->devcg_fd = open(devcg, O_WRONLY | O_CLOEXEC)) < 0) {
		int e = errno;
		log_err("sandbox: open the device cgroup's %s: %s", devcg, strerror(e));
		setup_fail(p, e);
	}
	if (p->userns_count) {
		p->userns_fd = make_userns(p);
		timeline_mark(p->spec->timeline, "userns");
	}
	if (unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWPID) < 0) {
		int e = errno;
		log_err("sandbox: unshare namespaces: %s (needs root / CAP_SYS_ADMIN)", strerror(e));
		setup_fail(p, e);
	}
	timeline_mark(p->spec->timeline, "namespaces");
	pid_t init = fork();
	if (init < 0)
		setup_fail(p, errno);
	if (init == 0) {
		/* If M dies, so does the namespace.  (getppid() is 0 here, M
		 * being outside the new pid namespace, so the usual "did the
		 * parent die before prctl" check cannot be made; the window is
		 * the few instructions since fork.) */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
			_exit(125);
		init_main(p);
	}
	close(p->out_w);
	close(p->err_w);
	close(p->rep_w);
	if (p->ready_w >= 0)
		close(p->ready_w);
	if (p->userns_fd >= 0)
		close(p->userns_fd);
	if (p->devcg_fd >= 0)
		close(p->devcg_fd);
	close(p->image_fd);
	int st = supervise(init, &set);
	if (WIFSIGNALED(st)) {
		signal(WTERMSIG(st), SIG_DFL);
		sigprocmask(SIG_UNBLOCK, &set, NULL);
		raise(WTERMSIG(st));
	}
	_exit(WIFEXITED(st) ? WEXITSTATUS(st) : 125);
}

/* ---- the caller's side ------------------------------------------------------------------------------------------ */

static bool process_available(char *why, size_t len)
{
	if (geteuid() != 0) {
		snprintf(why, len, "the process sandbox needs root (mounts, namespaces, cgroups); run as root");
		return false;
	}
	return true;
}

/* argv: the override, else entrypoint followed by cmd.  NULL-terminated,
 * pointing into the spec (nothing copied). */
static int build_argv(const struct sandbox_spec *s, char ***out)
{
	size_t n = 0, ne = 0, nc = 0;
	char *const *ep = s->argv_override ? s->argv_override : s->config ? s->config->entrypoint : NULL;
	char *const *cmd = s->argv_override ? NULL : s->config ? s->config->cmd : NULL;
	while (ep && ep[ne])
		ne++;
	while (cmd && cmd[nc])
		nc++;
	if (!ck_add_size(ne, nc, &n) || !ck_add_size(n, 1, &n))
		return -EOVERFLOW;
	if (n == 1) {
		log_err("sandbox: the image has no entrypoint or cmd; give a command to run");
		return -EINVAL;
	}
	char **v = calloc(n, sizeof(*v));
	if (!v)
		return -ENOMEM;
	for (size_t i = 0; i < ne; i++)
		v[i] = ep[i];
	for (size_t i = 0; i < nc; i++)
		v[ne + i] = cmd[i];
	*out = v;
	return 0;
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

/* Copy what is in |fd| to |to|; counts bytes and stamps the first one.
 * Returns false at EOF. */
static bool pump(int fd, int to, uint64_t *count, const struct sandbox_spec *s, struct sandbox_result *out,
		 bool *write_failed)
{
	char buf[65536];
	ssize_t n = read(fd, buf, sizeof(buf));
	if (n < 0)
		return errno == EINTR || errno == EAGAIN;
	if (n == 0)
		return false;
	if (out->first_output_s < 0)
		out->first_output_s = now_seconds() - s->t0;
	*count += (uint64_t)n;
	if (!*write_failed && write_full(to, buf, (size_t)n) < 0) {
		/* Keep draining, or the workload would block on a full pipe. */
		log_warn("sandbox: the output descriptor stopped accepting data; discarding the rest");
		*write_failed = true;
	}
	return true;
}

static int process_run(const struct sandbox_spec *s, struct sandbox_result *out)
{
	char why[256];
	if (!process_available(why, sizeof(why))) {
		log_err("sandbox: %s", why);
		return -EPERM;
	}
	struct plan p = {.spec = s, .image_fd = -1, .out_w = -1, .err_w = -1, .rep_w = -1, .sync_r = -1, .ready_w = -1,
			 .userns_fd = -1, .devcg_fd = -1, .home_idx = SIZE_MAX};
	p.hostname = s->hostname ? s->hostname : "kindling";
	p.user = s->user_override ? s->user_override : s->config ? s->config->user : NULL;
	p.workdir = s->workdir_override ? s->workdir_override
		    : s->config && s->config->working_dir && *s->config->working_dir ? s->config->working_dir
										      : "/";
	if (strlen(p.hostname) > 64 || p.workdir[0] != '/') {
		log_err("sandbox: hostname must be at most 64 bytes and the working directory absolute (got %s)",
			p.workdir);
		return -EINVAL;
	}
	int out_r = -1, err_r = -1, rep_r = -1, sync_w = -1, ready_r = -1;
	struct sandbox_cgroup cg;
	memset(&cg, 0, sizeof(cg));
	struct str_list env_over = {0}, env = {0};
	pid_t m = -1;
	if (!s->userns_off) {
		p.userns_base = s->userns_base ? s->userns_base : SANDBOX_USERNS_DEFAULT_BASE;
		p.userns_count = s->userns_count ? s->userns_count : SANDBOX_USERNS_DEFAULT_COUNT;
		if (p.userns_count > UINT32_MAX - p.userns_base) {
			log_err("sandbox: user namespace mapping %u:%u runs past the last id", p.userns_base,
				p.userns_count);
			return -EINVAL;
		}
	}
	int r = build_argv(s, &p.argv);
	if (r < 0)
		return r;
	/* Everything the children need from the heap is made here, before
	 * fork (see the top of the file). */
	if ((r = sandbox_env_overrides(s, &env_over)) < 0)
		goto out;
	char *const *base_env = s->config ? s->config->env : NULL;
	if ((r = sandbox_env_build(base_env, env_over.items, p.hostname, "", &env)) < 0 ||
	    (r = str_list_add(&env, "")) < 0)
		goto out;
	free(env.items[--env.n]); /* the "" made room for the NULL terminator */
	env.items[env.n] = NULL;
	p.env = env.items;
	/* HOME comes from the image's passwd entry, read inside: keep the slot. */
	if (!sandbox_env_get(base_env, "HOME") && !sandbox_env_get(env_over.items, "HOME"))
		for (size_t i = 0; i < env.n; i++)
			if (strncmp(env.items[i], "HOME=", 5) == 0)
				p.home_idx = i;
	timeline_mark(s->timeline, "sandbox-env");
	if ((r = sandbox_seccomp_build(&p.filter)) < 0)
		goto out;
	timeline_mark(s->timeline, "seccomp-build");
	if (s->on_ready) {
		int sp[2];
		if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0) {
			r = -errno;
			log_err("sandbox: socketpair for the ready channel: %s", strerror(-r));
			goto out;
		}
		ready_r = sp[0];
		p.ready_w = sp[1];
	}
	/* O_PATH for a directory: it is only ever a bind source. */
	p.image_fd = s->rootfs_dir ? open(s->rootfs_dir, O_PATH | O_DIRECTORY | O_CLOEXEC)
				   : open(s->image_path, O_RDONLY | O_CLOEXEC);
	if (p.image_fd >= 0 && s->rootfs_dir && !(p.rootfs_path = realpath(s->rootfs_dir, NULL))) {
		close_fd(&p.image_fd);
		errno = errno ? errno : ENOMEM;
	}
	if (p.image_fd < 0) {
		r = -errno;
		log_err("sandbox: open %s %s: %s", s->rootfs_dir ? "rootfs directory" : "image",
			s->rootfs_dir ? s->rootfs_dir : s->image_path, strerror(-r));
		goto out;
	}
	int fds[4][2];
	for (int i = 0; i < 4; i++)
		fds[i][0] = fds[i][1] = -1;
	for (int i = 0; i < 4; i++)
		if (pipe2(fds[i], O_CLOEXEC) < 0) {
			r = -errno;
			for (int j = 0; j < i; j++) {
				close(fds[j][0]);
				close(fds[j][1]);
			}
			log_err("sandbox: pipe: %s", strerror(-r));
			goto out;
		}
	out_r = fds[0][0], p.out_w = fds[0][1];
	err_r = fds[1][0], p.err_w = fds[1][1];
	rep_r = fds[2][0], p.rep_w = fds[2][1];
	p.sync_r = fds[3][0], sync_w = fds[3][1];

	pid_t caller = getpid();
	m = fork();
	if (m < 0) {
		r = -errno;
		log_err("sandbox: fork: %s", strerror(-r));
		goto out;
	}
	if (m == 0) {
		close(out_r);
		close(err_r);
		close(rep_r);
		close(sync_w);
		if (ready_r >= 0)
			close(ready_r);
		monitor_main(&p, caller);
	}
	timeline_mark(s->timeline, "fork-monitor");
	close_fd(&p.ready_w);
	close_fd(&p.out_w);
	close_fd(&p.err_w);
	close_fd(&p.rep_w);
	close_fd(&p.sync_r);

	/* Limits first, then let M go: nothing in the sandbox runs unlimited. */
	char name[64], notice[1536];
	snprintf(name, sizeof(name), SANDBOX_CGROUP_PREFIX "%d", (int)m);
	sandbox_cgroup_create(&cg, name, s->memory_limit, s->pids_limit ? s->pids_limit + 2u : 0, notice,
			      sizeof(notice));
	/* pids_limit + 2: M and I are ours, not the workload's. */
	if (notice[0])
		log_warn("%s", notice);
	out->cgroup_kind = cg.kind == SANDBOX_CG_V2 ? "v2" : cg.kind == SANDBOX_CG_V1 ? "v1" : "none";
	/* v2: the caller moves M.  v1: M joins itself through the tasks files
	 * (see the message below), which spares the start an RCU grace period. */
	if (cg.kind == SANDBOX_CG_V2 && (r = sandbox_cgroup_attach(&cg, m)) < 0)
		goto kill;
	if ((r = sandbox_cgroup_devices(&cg, name, notice, sizeof(notice))) < 0)
		goto kill;
	if (notice[0])
		log_warn("%s", notice);
	timeline_mark(s->timeline, "cgroup");
	/* "g", the device cgroup's tasks file, NUL, and on v1 the tasks files
	 * M joins before it forks (see monitor_main). */
	char go[4 * PATH_MAX], file[PATH_MAX];
	size_t gn = 1;
	go[0] = 'g';
	const char *dirs[] = {cg.dev_dir, cg.kind == SANDBOX_CG_V1 ? cg.mem_dir : "",
			      cg.kind == SANDBOX_CG_V1 ? cg.pids_dir : ""};
	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		if ((r = sandbox_cgroup_tasks_file(dirs[i], file, sizeof(file))) < 0)
			goto kill;
		if (i > 0 && !file[0])
			continue;
		size_t n = strlen(file) + 1;
		memcpy(go + gn, file, n);
		gn += n;
	}
	if ((r = write_full(sync_w, go, gn)) < 0)
		goto kill;
	close_fd(&sync_w);

	int setup_err = 0, refused = 0;
	bool exited = false, out_failed = false, err_failed = false;
	/* Output, reports, the ready channel, stop_fd; the loop lasts as long as
	 * the first three are open.  Killing M ends everything: it takes I with
	 * it (PDEATHSIG), and with I the namespace. */
	enum { PF_OUT, PF_ERR, PF_REP, PF_READY, PF_STOP, PF_N };
	struct pollfd pf[PF_N] = {{out_r, POLLIN, 0}, {err_r, POLLIN, 0}, {rep_r, POLLIN, 0}, {ready_r, POLLIN, 0},
				  {s->stop_fd > 0 ? s->stop_fd : -1, POLLIN, 0}};
	while (pf[PF_OUT].fd >= 0 || pf[PF_ERR].fd >= 0 || pf[PF_REP].fd >= 0) {
		int timeout = -1;
		if (s->timeout_s > 0 && !out->timed_out && !out->stopped) {
			double left = s->t0 + s->timeout_s - now_seconds();
			timeout = left <= 0 ? 0 : left > 1e6 ? 1000000000 : (int)(left * 1000) + 1;
		}
		int n = poll(pf, PF_N, timeout);
		if (n < 0 && errno != EINTR) {
			r = -errno;
			log_err("sandbox: poll: %s", strerror(-r));
			goto kill;
		}
		if (n == 0) {
			log_warn("sandbox: timed out after %.3f s; killing it", s->timeout_s);
			out->timed_out = true;
			kill(m, SIGKILL);
			continue;
		}
		if (pf[PF_STOP].fd >= 0 && pf[PF_STOP].revents) {
			log_info("sandbox: stopped through stop_fd; killing it");
			out->stopped = true;
			kill(m, SIGKILL);
			pf[PF_STOP].fd = -1;
		}
		if (pf[PF_READY].fd >= 0 && pf[PF_READY].revents) {
			int k = out->stopped || out->timed_out ? 0 : ready_serve(s, ready_r, m, &cg);
			if (k != 0) {
				refused = k;
				kill(m, SIGKILL);
			}
			close_fd(&ready_r);
			pf[PF_READY].fd = -1;
		}
		for (int i = 0; i < 2; i++)
			if (pf[i].fd >= 0 && pf[i].revents &&
			    !pump(pf[i].fd, i ? s->err_fd : s->out_fd, i ? &out->err_bytes : &out->out_bytes, s, out,
				  i ? &err_failed : &out_failed)) {
				close(pf[i].fd);
				pf[i].fd = -1;
			}
		if (pf[2].fd >= 0 && pf[2].revents) {
			struct report msg;
			ssize_t k = read(rep_r, &msg, sizeof(msg));
			if (k == (ssize_t)sizeof(msg)) {
				if (msg.kind == REP_MOUNT_FILE || msg.kind == REP_MOUNT_LOOP || msg.kind == REP_MOUNT_DIR)
					out->mount_kind = msg.kind == REP_MOUNT_FILE	? "file"
							  : msg.kind == REP_MOUNT_LOOP ? "loop"
											: "dir";
				else if (msg.kind == REP_USERNS)
					out->userns = msg.value != 0;
				else if (msg.kind == REP_ERROR && !setup_err)
					setup_err = msg.value > 0 ? msg.value : EIO;
				else if (msg.kind == REP_EXIT && !exited) {
					exited = true;
					out->exit_s = now_seconds() - s->t0;
					if (WIFEXITED(msg.value))
						out->exit_code = WEXITSTATUS(msg.value);
					else if (WIFSIGNALED(msg.value))
						out->term_signal = WTERMSIG(msg.value);
				}
			} else if (k == 0 || (k < 0 && errno != EINTR)) {
				close(pf[2].fd);
				pf[2].fd = -1;
			}
		}
	}
	out_r = err_r = rep_r = -1;
	/* M's exit, without reaping it yet: its pid stays taken while the
	 * cgroup's counters are read below, so no other caller's sweep
	 * (sandbox_cgroup_sweep) removes the cgroup under them. */
	siginfo_t si;
	while (waitid(P_PID, (id_t)m, &si, WEXITED | WNOWAIT) < 0 && errno == EINTR)
		;
	out->oom_killed = sandbox_cgroup_oom_killed(&cg);
	out->pids_limited = sandbox_cgroup_pids_limited(&cg);
	out->memory_peak = sandbox_cgroup_memory_peak(&cg); /* before the cgroup goes, below */
	int st = 0;
	while (waitpid(m, &st, 0) < 0 && errno == EINTR)
		;
	m = -1;
	if (!exited) {
		/* No exit report: I died (OOM killer, timeout, setup failure). */
		out->exit_s = now_seconds() - s->t0;
		if (WIFSIGNALED(st))
			out->term_signal = WTERMSIG(st);
		else if (!setup_err && !out->timed_out && !out->stopped && !refused) {
			log_err("sandbox: the sandbox's init exited with status %d before reporting", WEXITSTATUS(st));
			setup_err = EIO;
		}
	}
	if (out->oom_killed && out->term_signal == 0 && out->exit_code < 0)
		out->term_signal = SIGKILL;
	/* A setup error wins over an exit status: with one, the workload never
	 * ran (E reports, e.g., a missing command before exec, then exits). */
	r = refused ? refused : setup_err ? -setup_err : 0;
	goto out;

kill:
	if (m > 0) {
		kill(m, SIGKILL);
		while (waitpid(m, NULL, 0) < 0 && errno == EINTR)
			;
		m = -1;
	}
out:
	close_fd(&out_r);
	close_fd(&err_r);
	close_fd(&rep_r);
	close_fd(&sync_w);
	close_fd(&ready_r);
	close_fd(&p.ready_w);
	close_fd(&p.out_w);
	close_fd(&p.err_w);
	close_fd(&p.rep_w);
	close_fd(&p.sync_r);
	close_fd(&p.image_fd);
	/* Off the start's path: the cgroups sandboxes of killed callers left
	 * here, a bounded few per run, so a host does not pile them up. */
	sandbox_cgroup_sweep(&cg, SANDBOX_CGROUP_SWEEP_MAX);
	sandbox_cgroup_destroy(&cg);
	free(p.rootfs_path);
	free(p.argv);
	str_list_clear(&env_over);
	str_list_clear(&env);
	sandbox_seccomp_free(&p.filter);
	return r;
}

const struct sandbox_ops sandbox_process = {
	.name = "process",
	.available = process_available,
	.run = process_run,
};
