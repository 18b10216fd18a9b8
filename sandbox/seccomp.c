/* The process sandbox's seccomp filter: an allowlist.
 *
 * What a function may call is what real runtimes call.  The list started from
 * Docker's default allowlist, minus everything in |denied| below, and was
 * checked against `strace -f -c` of Debian's python3, Node.js 20, OpenJDK 17
 * (a single-file program) and bash doing start-up, files, threads,
 * subprocesses, a 127.0.0.1 server and the interface list: every call they
 * made is listed, except clone3, which answers ENOSYS on purpose (below).
 * Calls of the same families that another libc or kernel may pick instead
 * (stat/fstatat/statx, pselect6/ppoll, ...) are listed too.
 * sandbox/README.md says how to regenerate and extend it.
 *
 * Three answers, not one:
 * - listed: allowed (a few with argument checks, below);
 * - in |denied|: EPERM, the answer programs that probe (io_uring, userfaultfd,
 *   unshare) expect from a container, so they fall back cleanly;
 * - anything else (new syscalls included): ENOSYS, the answer libc and
 *   runtimes treat as "this kernel does not have it" (clone3 -> clone).
 * Only the native ABI is allowed: a 32-bit (int 0x80) or x32 call kills the
 * process, because those ABIs' socketcall multiplexer cannot be filtered by
 * argument.
 *
 * Sockets: AF_UNIX, AF_INET and AF_INET6 as usual; AF_NETLINK only with
 * NETLINK_ROUTE (getifaddrs, which Node's os.networkInterfaces() and the JVM
 * call; without CAP_NET_ADMIN over the sandbox's network namespace it can
 * read, not change, the sandbox's own lo); every other family (AF_PACKET raw
 * frames, AF_VSOCK to the host, AF_KEY, ...) fails with EAFNOSUPPORT, as on a
 * kernel built without it.
 *
 * The filter is built and exported to BPF by the caller, before fork: the
 * sandbox's children then install it with two system calls and no
 * allocation (libseccomp allocates, which is unsafe after a multi-threaded
 * parent's fork).
 *
 * libseccomp compiles it once, at build time (sandbox_seccomp_compile, run
 * by sandbox/seccomp_gen.c, writes seccomp_bpf.h in the build tree), since
 * the result depends only on the lists below and the architecture; at run
 * time sandbox_seccomp_build (seccomp_prebuilt.c) copies that program,
 * which saves each sandbox start the few milliseconds libseccomp takes. */
#define LOG_COMPONENT "sandbox"
#include <errno.h>
#include <linux/filter.h>
#include <linux/netlink.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <seccomp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "sandbox/internal.h"

static const char *const allowed[] = {
	/* files and directories */
	"access", "chdir", "chmod", "chown", "close", "close_range", "copy_file_range", "creat", "dup", "dup2",
	"dup3", "faccessat", "faccessat2", "fadvise64", "fallocate", "fchdir", "fchmod", "fchmodat", "fchmodat2",
	"fchown", "fchownat", "fcntl", "fdatasync", "fgetxattr", "flistxattr", "flock", "fremovexattr",
	"fsetxattr", "fstat", "fstatfs", "fsync", "ftruncate", "futimesat", "getcwd", "getdents", "getdents64",
	"getxattr", "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "lchown",
	"lgetxattr", "link", "linkat", "listxattr", "llistxattr", "lremovexattr", "lseek", "lsetxattr", "lstat",
	"mkdir", "mkdirat", "mknod", "mknodat", "newfstatat", "open", "openat", "openat2", "pread64", "preadv",
	"preadv2", "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv",
	"removexattr", "rename", "renameat", "renameat2", "rmdir", "sendfile", "setxattr", "splice", "stat",
	"statfs", "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "tee", "truncate",
	"umask", "unlink", "unlinkat", "utime", "utimensat", "utimes", "vmsplice", "write", "writev",
	"fanotify_mark", "memfd_create",
	/* memory */
	"brk", "madvise", "membarrier", "mincore", "mlock", "mlock2", "mlockall", "mmap", "mprotect", "mremap",
	"msync", "munlock", "munlockall", "munmap", "pkey_alloc", "pkey_free", "pkey_mprotect",
	"get_mempolicy", "remap_file_pages", "map_shadow_stack",
	/* processes, threads, signals */
	"arch_prctl", "capget", "capset", "clone" /* flags checked below */, "execve", "execveat", "exit",
	"exit_group", "fork", "vfork", "futex", "futex_waitv", "futex_wake", "futex_wait", "futex_requeue",
	"get_robust_list", "set_robust_list", "get_thread_area", "set_thread_area", "set_tid_address", "getpid",
	"getppid", "gettid", "getpgid", "getpgrp", "getsid", "setpgid", "setsid", "kill", "tgkill", "tkill",
	"pidfd_open", "pidfd_send_signal", "process_mrelease", "prctl", "rseq", "restart_syscall",
	"rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend",
	"rt_sigtimedwait", "rt_tgsigqueueinfo", "sigaltstack", "signalfd", "signalfd4", "pause", "wait4", "waitid",
	"seccomp" /* only ever narrows */, "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
	/* credentials and limits (within what the capability sets allow) */
	"getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid", "getgroups", "setuid", "setgid",
	"setreuid", "setregid", "setresuid", "setresgid", "setfsuid", "setfsgid", "setgroups", "getrlimit",
	"setrlimit", "prlimit64", "getrusage", "getpriority", "setpriority", "ioprio_get", "ioprio_set",
	/* scheduling */
	"sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getattr", "sched_setattr",
	"sched_getparam", "sched_setparam", "sched_getscheduler", "sched_setscheduler",
	"sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval", "getcpu",
	/* time */
	"clock_getres", "clock_gettime", "clock_nanosleep", "gettimeofday", "nanosleep", "time", "times",
	"alarm", "getitimer", "setitimer", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
	"timer_settime", "timerfd_create", "timerfd_gettime", "timerfd_settime",
	/* waiting for descriptors */
	"epoll_create", "epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_pwait2", "epoll_wait", "eventfd",
	"eventfd2", "poll", "ppoll", "select", "pselect6", "pipe", "pipe2",
	/* sockets (socket and socketpair are checked below) */
	"accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt", "listen", "recvfrom",
	"recvmmsg", "recvmsg", "sendmmsg", "sendmsg", "sendto", "setsockopt", "shutdown",
	/* System V and POSIX IPC (the sandbox has its own IPC namespace) */
	"msgctl", "msgget", "msgrcv", "msgsnd", "semctl", "semget", "semop", "semtimedop", "shmat", "shmctl",
	"shmdt", "shmget", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedsend",
	"mq_unlink",
	/* asynchronous I/O (the old kind; io_uring is denied) */
	"io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents",
	/* system information */
	"uname", "sysinfo", "getrandom", "ioctl", "cachestat",
};

/* Allowed by name but answered EPERM: what a container has no business doing
 * and what has been the kernel's attack surface again and again.  A name here
 * wins over |allowed|. */
static const char *const denied[] = {
	/* Replacing or extending the running kernel. */
	"kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "create_module",
	"query_module", "get_kernel_syms", "reboot",
	/* Re-arranging the file tree after setup. */
	"mount", "umount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount",
	"fspick", "mount_setattr", "chroot",
	/* New namespaces and joining other ones (clone's namespace flags below). */
	"unshare", "setns",
	/* Reading or writing other processes' memory. */
	"ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
	/* Large, often-exploited kernel interfaces a function does not need. */
	"bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
	"add_key", "request_key", "keyctl", "lookup_dcookie", "fanotify_init", "memfd_secret",
	/* Escaping path-based checks through file handles (the "shocker" escape). */
	"open_by_handle_at", "name_to_handle_at",
	/* Host-wide state: swap, clocks, accounting, quotas, kernel log. */
	"swapon", "swapoff", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "acct", "quotactl",
	"quotactl_fd", "syslog", "nfsservctl", "_sysctl", "sysfs", "uselib", "ustat", "vhangup",
	/* Direct hardware access. */
	"iopl", "ioperm", "modify_ldt",
	/* NUMA placement of other processes' memory. */
	"move_pages", "migrate_pages", "mbind", "set_mempolicy",
};

static bool in_list(const char *const *list, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(list[i], name) == 0)
			return true;
	return false;
}

#define N(a) (sizeof(a) / sizeof((a)[0]))

static int add(scmp_filter_ctx ctx, uint32_t action, int nr, const char *what, unsigned n,
	       const struct scmp_arg_cmp *cmp)
{
	int r = seccomp_rule_add_array(ctx, action, nr, n, cmp);
	if (r < 0 && r != -EEXIST) {
		log_err("seccomp: rule for %s: %s", what, strerror(-r));
		return r;
	}
	return 0;
}

/* socket() and socketpair(): the families listed in the file comment. */
static int add_socket_rules(scmp_filter_ctx ctx)
{
	static const int ok[] = {AF_UNIX, AF_INET, AF_INET6};
	int r = 0;
	/* Families are small integers (AF_MAX is 46 today); everything up to 64
	 * not allowed gets an explicit EAFNOSUPPORT, anything beyond that the
	 * default ENOSYS. */
	for (int af = 0; af < 64 && r == 0; af++) {
		bool allow = false;
		for (size_t i = 0; i < N(ok); i++)
			allow |= ok[i] == af;
		struct scmp_arg_cmp fam = SCMP_A0(SCMP_CMP_MASKED_EQ, 0xffffffffu, (uint64_t)af);
		if (af == AF_NETLINK) {
			struct scmp_arg_cmp route[2] = {fam, SCMP_A2(SCMP_CMP_MASKED_EQ, 0xffffffffu, NETLINK_ROUTE)};
			struct scmp_arg_cmp other[2] = {fam, SCMP_A2(SCMP_CMP_NE, NETLINK_ROUTE)};
			r = add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(socket), "socket(AF_NETLINK, NETLINK_ROUTE)", 2, route);
			if (r == 0)
				r = add(ctx, SCMP_ACT_ERRNO(EAFNOSUPPORT), SCMP_SYS(socket), "socket(AF_NETLINK)", 2,
					other);
		} else {
			r = add(ctx, allow ? SCMP_ACT_ALLOW : SCMP_ACT_ERRNO(EAFNOSUPPORT), SCMP_SYS(socket), "socket",
				1, &fam);
		}
		if (r == 0)
			r = add(ctx, af == AF_UNIX ? SCMP_ACT_ALLOW : SCMP_ACT_ERRNO(EAFNOSUPPORT),
				SCMP_SYS(socketpair), "socketpair", 1, &fam);
	}
	return r;
}

/* clone() is allowed without namespace flags; with any, EPERM.  clone3 keeps
 * its flags in memory a filter cannot read, so it gets ENOSYS and libc falls
 * back to clone. */
static int add_clone_rules(scmp_filter_ctx ctx)
{
	const uint64_t ns_flags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
				  CLONE_NEWNET | CLONE_NEWCGROUP | 0x00000080ULL /* CLONE_NEWTIME */;
	struct scmp_arg_cmp none = SCMP_A0(SCMP_CMP_MASKED_EQ, ns_flags, 0);
	int r = add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(clone), "clone", 1, &none);
	/* libseccomp matches "(arg & mask) == datum", so "any namespace bit
	 * set" is one rule per bit. */
	for (int bit = 0; bit < 64 && r == 0; bit++) {
		uint64_t b = 1ULL << bit;
		if (!(ns_flags & b))
			continue;
		struct scmp_arg_cmp c = SCMP_A0(SCMP_CMP_MASKED_EQ, b, b);
		r = add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), "clone(CLONE_NEW*)", 1, &c);
	}
	/* clone3 is not listed, so it gets the default ENOSYS. */
	return r;
}

/* personality(): only the values runtimes set (query, and ADDR_NO_RANDOMIZE
 * with or without UNAME26-free PER_LINUX variants), as Docker allows. */
static int add_personality_rules(scmp_filter_ctx ctx)
{
	static const uint64_t ok[] = {0x0, 0x0008, 0x20000, 0x20008, 0xffffffff};
	int r = 0;
	for (size_t i = 0; i < N(ok) && r == 0; i++) {
		struct scmp_arg_cmp c = SCMP_A0(SCMP_CMP_MASKED_EQ, 0xffffffffu, ok[i]);
		r = add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(personality), "personality", 1, &c);
	}
	return r;
}

int sandbox_seccomp_compile(struct sandbox_seccomp *out)
{
	memset(out, 0, sizeof(*out));
	scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ERRNO(ENOSYS));
	if (!ctx) {
		log_err("seccomp: cannot initialise libseccomp (out of memory?)");
		return -ENOMEM;
	}
	int r = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS);
	/* no_new_privs is set by sandbox_seccomp_apply itself. */
	if (r == 0)
		r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0);
	for (size_t i = 0; i < N(allowed) && r == 0; i++) {
		if (in_list(denied, N(denied), allowed[i]) || strcmp(allowed[i], "clone") == 0)
			continue;
		int nr = seccomp_syscall_resolve_name(allowed[i]);
		if (nr == __NR_SCMP_ERROR)
			continue; /* not a system call on this architecture (e.g. "time" on arm64) */
		r = add(ctx, SCMP_ACT_ALLOW, nr, allowed[i], 0, NULL);
	}
	for (size_t i = 0; i < N(denied) && r == 0; i++) {
		int nr = seccomp_syscall_resolve_name(denied[i]);
		if (nr != __NR_SCMP_ERROR)
			r = add(ctx, SCMP_ACT_ERRNO(EPERM), nr, denied[i], 0, NULL);
	}
	if (r == 0)
		r = add_socket_rules(ctx);
	if (r == 0)
		r = add_clone_rules(ctx);
	if (r == 0)
		r = add_personality_rules(ctx);
	/* Export to BPF through an anonymous file: libseccomp 2.5 writes to a
	 * descriptor only. */
	int fd = r == 0 ? memfd_create("kindling-seccomp", MFD_CLOEXEC) : -1;
	if (r == 0 && fd < 0)
		r = -errno;
	if (r == 0 && (r = seccomp_export_bpf(ctx, fd)) < 0)
		log_err("seccomp: export the filter: %s", strerror(-r));
	seccomp_release(ctx);
	struct stat st;
	if (r == 0 && fstat(fd, &st) < 0)
		r = -errno;
	if (r == 0 && (st.st_size <= 0 || st.st_size % (off_t)sizeof(struct sock_filter) != 0 ||
		       st.st_size / (off_t)sizeof(struct sock_filter) > BPF_MAXINSNS)) {
		log_err("seccomp: the exported filter has an odd size (%lld bytes)", (long long)st.st_size);
		r = -EINVAL;
	}
	if (r == 0 && !(out->insns = malloc((size_t)st.st_size)))
		r = -ENOMEM;
	if (r == 0 && pread(fd, out->insns, (size_t)st.st_size, 0) != st.st_size)
		r = errno ? -errno : -EIO;
	if (fd >= 0)
		close(fd);
	if (r < 0) {
		log_err("seccomp: cannot build the sandbox's filter: %s", strerror(-r));
		sandbox_seccomp_free(out);
		return r;
	}
	out->n = (size_t)st.st_size / sizeof(struct sock_filter);
	return 0;
}

int sandbox_seccomp_apply(const struct sandbox_seccomp *f)
{
	struct sock_fprog prog = {.len = (unsigned short)f->n, .filter = f->insns};
	/* no_new_privs first: setuid binaries in the image cannot gain
	 * privileges, and an unprivileged caller may install the filter. */
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return -errno;
	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) < 0)
		return -errno;
	return 0;
}

void sandbox_seccomp_free(struct sandbox_seccomp *f)
{
	if (!f)
		return;
	free(f->insns);
	f->insns = NULL;
	f->n = 0;
}
