/* kvmm's confinement, after Firecracker's jailer and its per-thread seccomp
 * filters: the process goes into a cgroup and a chroot and drops to an
 * unprivileged user, and each thread, once set up, keeps only the system
 * calls its job needs.  A guest that breaks out of KVM into a vCPU thread
 * then finds no execve, no new network sockets, no file opens.
 *
 * Unlike the process sandbox's denylist (sandbox/seccomp.c), these are
 * allowlists: kvmm is our own code, so we know every call it makes, and
 * anything else is an attack or a bug.  Either way the process dies
 * (SCMP_ACT_KILL_PROCESS): a half-working VMM is worse than none. */
#define LOG_COMPONENT "kvmm"
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/kvm.h>
#include <seccomp.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sandbox/sandbox.h"
#include "vmm/kvmm/jail.h"

/* ---- seccomp allowlists ------------------------------------------------------- */

/* Every kvmm thread: the C library's own needs (malloc grows and trims the
 * heap and its per-thread arenas; mutexes and condition variables are
 * futexes; a thread that ends calls exit), logging (write to stderr, stdio's
 * fstat on first use), clocks and sleeps, and the signals kvmm uses to kick
 * a vCPU out of KVM_RUN (pthread_kill is tgkill on our own pid).  An ending
 * thread may also unset its alternate signal stack (sigaltstack; the
 * sanitizer runtimes do), which only ever concerns the thread itself. */
static const char *const base_calls[] = {
	"read",	     "write",	       "readv",		"writev",     "close",	      "lseek",
	"fstat",     "newfstatat",     "futex",		"exit",	      "exit_group",   "rt_sigreturn",
	"rt_sigprocmask", "restart_syscall", "munmap",	"mremap",     "madvise",      "brk",
	"clock_gettime", "clock_nanosleep", "nanosleep", "gettid",	      "getpid",	      "tgkill",
	"sched_yield", "getrandom",     "sigaltstack", NULL,
};

/* vCPU threads: KVM_RUN and its exits.  MMIO exits reach device code, and a
 * driver setting DRIVER_OK makes the transport call the device's notify on
 * the vCPU thread, so the device calls (disk reads, vsock's unix sockets,
 * loop registrations) are here too; network sockets are not. */
static const char *const vcpu_calls[] = {"pread64", "preadv", "recvfrom", "recvmsg", "sendto", "sendmsg",
					 "connect", "shutdown", "fcntl", "epoll_ctl", NULL};

/* The device loop: epoll over eventfds and sockets, disk reads, vsock's unix
 * sockets (connect for guest-initiated streams, accept for host-initiated). */
static const char *const devices_calls[] = {"epoll_wait", "epoll_pwait", "epoll_ctl", "pread64", "preadv",
					    "recvfrom",	  "recvmsg",	 "sendto",    "sendmsg", "connect",
					    "accept",	  "accept4",	 "shutdown",  "fcntl",	 "getsockopt",
					    "fsync",	  "fdatasync",	 NULL};

/* The API thread once the VM runs: its one socket, SendCtrlAltDel, pause
 * (an eventfd write and vCPU kicks, in the base list) and PUT
 * /snapshot/create: the two files, each created under a temporary name
 * (allow_create_only(): no existing file can be opened), written (sparse:
 * pwrite at offsets, ftruncate for the size), synced and renamed, or
 * unlinked after a failure. */
static const char *const api_calls[] = {"poll",	   "ppoll",	"accept",    "accept4",	 "recvfrom",
					"recvmsg", "sendto",	"sendmsg",   "shutdown", "fcntl",
					"getsockopt", "pwrite64", "ftruncate", "fsync",	 "rename",
					"renameat", "renameat2", "unlink",    "unlinkat", NULL};

/* The main thread after setup: wait for the VM to end (condition variables,
 * joins, polls, signals), then tear down: close and unmap, remove the socket
 * files it made. */
static const char *const vmm_calls[] = {"poll",	 "ppoll",	 "epoll_wait",	"epoll_pwait", "epoll_ctl",
					"wait4", "rt_sigtimedwait", "rt_sigsuspend", "rt_sigaction", "pause",
					"unlink", "unlinkat",	  "shutdown",	    "fsync",	    "sigaltstack",
					NULL};

static const char *kind_name(enum kvmm_thread_kind k)
{
	switch (k) {
	case KVMM_THREAD_VMM:
		return "vmm";
	case KVMM_THREAD_VCPU:
		return "vcpu";
	case KVMM_THREAD_DEVICES:
		return "devices";
	case KVMM_THREAD_API:
		return "api";
	}
	return "?";
}

static int allow_list(scmp_filter_ctx ctx, const char *const *names)
{
	for (; *names; names++) {
		int nr = seccomp_syscall_resolve_name(*names);
		if (nr == __NR_SCMP_ERROR)
			continue; /* not a call on this architecture (e.g. epoll_wait on arm64) */
		int r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);
		if (r < 0 && r != -EEXIST) {
			log_err("seccomp: allow %s: %s", *names, strerror(-r));
			return r;
		}
	}
	return 0;
}

/* Allow ioctl(fd, req, ...) for each request in |<reqs, n>| and no other. */
static int allow_ioctls(scmp_filter_ctx ctx, const unsigned long *reqs, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		/* The request is an unsigned int in the kernel; compare the low
		 * 32 bits so a sign-extended value from a caller still matches. */
		int r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1,
					 SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffull, (scmp_datum_t)reqs[i]));
		if (r < 0) {
			log_err("seccomp: allow ioctl %#lx: %s", reqs[i], strerror(-r));
			return r;
		}
	}
	return 0;
}

/* Memory mappings and protections without PROT_EXEC: nothing kvmm maps is
 * code after setup, so a new executable page is an exploit's. */
static int allow_noexec_mem(scmp_filter_ctx ctx)
{
	int r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(mmap), 1, SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0));
	if (r == 0)
		r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(mprotect), 1,
				     SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0));
	if (r < 0)
		log_err("seccomp: allow mmap/mprotect without PROT_EXEC: %s", strerror(-r));
	return r;
}

/* openat() only to create a new file, write-only (O_CREAT | O_EXCL |
 * O_WRONLY): what a snapshot writes; nothing that exists can be read or
 * changed through it. */
static int allow_create_only(scmp_filter_ctx ctx)
{
	const scmp_datum_t mask = O_ACCMODE | O_CREAT | O_EXCL | O_TRUNC | O_APPEND;
	int r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(openat), 1,
				 SCMP_A2(SCMP_CMP_MASKED_EQ, mask, O_WRONLY | O_CREAT | O_EXCL));
	if (r < 0)
		log_err("seccomp: allow openat(O_CREAT|O_EXCL|O_WRONLY): %s", strerror(-r));
	return r;
}

/* socket(AF_UNIX, ...) only: vsock's host side is unix sockets, and a
 * compromised device must not reach the network. */
static int allow_unix_socket(scmp_filter_ctx ctx)
{
	int r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(socket), 1, SCMP_A0(SCMP_CMP_EQ, AF_UNIX, 0));
	if (r < 0)
		log_err("seccomp: allow socket(AF_UNIX): %s", strerror(-r));
	return r;
}

int kvmm_thread_create(pthread_t *t, void *(*fn)(void *), void *arg)
{
	pthread_attr_t attr;
	int r = pthread_attr_init(&attr);
	if (r)
		return r;
	r = pthread_attr_setstacksize(&attr, KVMM_THREAD_STACK);
	if (!r)
		r = pthread_create(t, &attr, fn, arg);
	pthread_attr_destroy(&attr);
	return r;
}

int kvmm_seccomp_apply(enum kvmm_thread_kind kind)
{
	static const unsigned long vcpu_ioctls[] = {
		KVM_RUN,	   KVM_GET_REGS,	 KVM_SET_REGS,	  KVM_GET_SREGS,  KVM_SET_SREGS,
		KVM_GET_VCPU_EVENTS, KVM_SET_VCPU_EVENTS, KVM_IRQ_LINE,	  KVM_IRQ_LINE_STATUS, KVM_SIGNAL_MSI,
	};
	/* Ctrl-Alt-Del and shutdown paths may pulse an interrupt line on the VM fd. */
	static const unsigned long irq_ioctls[] = {KVM_IRQ_LINE, KVM_IRQ_LINE_STATUS};
	/* The API thread reads the paused VM's state for a snapshot: getters
	 * only, on the vCPU and VM fds. */
	static const unsigned long api_ioctls[] = {
		KVM_IRQ_LINE,	   KVM_IRQ_LINE_STATUS, KVM_GET_REGS,	    KVM_GET_SREGS,   KVM_GET_XSAVE,
		KVM_GET_FPU,	   KVM_GET_XCRS,	KVM_GET_LAPIC,	    KVM_GET_MSRS,    KVM_GET_VCPU_EVENTS,
		KVM_GET_DEBUGREGS, KVM_GET_MP_STATE,	KVM_GET_TSC_KHZ,    KVM_GET_CLOCK,   KVM_GET_IRQCHIP,
		KVM_GET_PIT2,
	};
	static const unsigned long sock_ioctls[] = {FIONBIO, FIONREAD};

	scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
	if (!ctx) {
		log_err("seccomp: cannot create a filter (out of memory?)");
		return -ENOMEM;
	}
	int r = allow_list(ctx, base_calls);
	if (r == 0)
		r = allow_noexec_mem(ctx);
	if (r == 0) {
		switch (kind) {
		case KVMM_THREAD_VCPU:
			if ((r = allow_list(ctx, vcpu_calls)) == 0 && (r = allow_unix_socket(ctx)) == 0)
				r = allow_ioctls(ctx, vcpu_ioctls, sizeof(vcpu_ioctls) / sizeof(vcpu_ioctls[0]));
			break;
		case KVMM_THREAD_DEVICES:
			if ((r = allow_list(ctx, devices_calls)) == 0 && (r = allow_unix_socket(ctx)) == 0)
				r = allow_ioctls(ctx, sock_ioctls, sizeof(sock_ioctls) / sizeof(sock_ioctls[0]));
			break;
		case KVMM_THREAD_API:
			if ((r = allow_list(ctx, api_calls)) == 0 && (r = allow_create_only(ctx)) == 0)
				r = allow_ioctls(ctx, api_ioctls, sizeof(api_ioctls) / sizeof(api_ioctls[0]));
			break;
		case KVMM_THREAD_VMM:
			if ((r = allow_list(ctx, vmm_calls)) == 0)
				r = allow_ioctls(ctx, irq_ioctls, sizeof(irq_ioctls) / sizeof(irq_ioctls[0]));
			break;
		default:
			log_err("seccomp: unknown thread kind %d", (int)kind);
			r = -EINVAL;
		}
	}
	/* Without TSYNC the filter goes on this thread alone; libseccomp sets
	 * no_new_privs first (SCMP_FLTATR_CTL_NNP is on by default). */
	if (r == 0 && (r = seccomp_load(ctx)) < 0)
		log_err("seccomp: loading the %s filter: %s (kernel without seccomp filters?)", kind_name(kind),
			strerror(-r));
	seccomp_release(ctx);
	if (r == 0)
		log_debug("seccomp: %s thread %d confined; a call outside its allowlist kills kvmm with SIGSYS "
			  "(the kernel log names it: audit type=1326 syscall=N)",
			  kind_name(kind), (int)gettid());
	return r < 0 ? r : 0;
}

/* ---- the jail ------------------------------------------------------------------------ */

static bool jail_id_ok(const char *id)
{
	size_t n = id ? strlen(id) : 0;
	if (n == 0 || n > 64)
		return false;
	for (size_t i = 0; i < n; i++) {
		char ch = id[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' ||
		      ch == '-'))
			return false;
	}
	return true;
}

static int jail_cgroup(const struct kvmm_jail *j)
{
	if (!j->memory_limit && !j->pids_limit)
		return 0;
	if (!jail_id_ok(j->id)) {
		log_err("jail: an id of 1..64 letters, digits, '_' or '-' is needed to name the cgroup");
		return -EINVAL;
	}
	char name[80], notice[1200];
	snprintf(name, sizeof(name), "kvmm-%s", j->id);
	struct sandbox_cgroup cg;
	int r = sandbox_cgroup_create(&cg, name, j->memory_limit, j->pids_limit, notice, sizeof(notice));
	if (r < 0) {
		log_err("jail: cgroup %s: %s", name, strerror(-r));
		return r;
	}
	/* The process sandbox runs without limits when no cgroup works; a
	 * jail that was asked for limits must not. */
	if (cg.kind == SANDBOX_CG_NONE) {
		log_err("jail: %s", notice);
		return -ENOTSUP;
	}
	if (notice[0])
		log_warn("jail: %s", notice);
	if ((r = sandbox_cgroup_attach(&cg, getpid())) < 0) {
		sandbox_cgroup_destroy(&cg);
		return r;
	}
	if (cg.kind == SANDBOX_CG_V2)
		log_info("jail: in cgroup %s; remove it after kvmm exits", cg.v2_dir);
	else
		log_info("jail: in cgroups %s %s; remove them after kvmm exits", cg.mem_dir, cg.pids_dir);
	return 0;
}

static int jail_drop(const struct sandbox_user *u)
{
	if (setgroups(0, NULL) < 0) {
		int e = errno;
		log_err("jail: setgroups: %s (is kvmm started as root?)", strerror(e));
		return -e;
	}
	if (setresgid(u->gid, u->gid, u->gid) < 0 || setresuid(u->uid, u->uid, u->uid) < 0) {
		int e = errno;
		log_err("jail: switching to uid %u gid %u: %s", u->uid, u->gid, strerror(e));
		return -e;
	}
	/* Belt and braces: an unprivileged user must not get root back. */
	if (u->uid != 0 && (setuid(0) == 0 || seteuid(0) == 0)) {
		log_err("jail: uid %u could switch back to root; refusing to run", u->uid);
		return -EPERM;
	}
	return 0;
}

int kvmm_jail_enter(const struct kvmm_jail *j)
{
	struct sandbox_user u;
	int r;
	/* Resolve the user while the host's /etc is still visible. */
	if (j->user && (r = sandbox_user_resolve(j->user, "/etc/passwd", "/etc/group", &u)) < 0) {
		log_err("jail: user \"%s\": %s; give a uid:gid or a user of this host", j->user, strerror(-r));
		return r;
	}
	if ((r = jail_cgroup(j)) < 0)
		return r;
	if (j->chroot_dir) {
		if (chdir(j->chroot_dir) < 0 || chroot(".") < 0 || chdir("/") < 0) {
			r = -errno;
			log_err("jail: chroot into %s: %s (does it exist, and is kvmm root?)", j->chroot_dir,
				strerror(-r));
			return r;
		}
	}
	if (j->user && (r = jail_drop(&u)) < 0)
		return r;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
		r = -errno;
		log_err("jail: no_new_privs: %s", strerror(-r));
		return r;
	}
	log_info("jail: entered (root %s, uid %d, gid %d)", j->chroot_dir ? j->chroot_dir : "/", (int)getuid(),
		 (int)getgid());
	return 0;
}
