/* The process sandbox's seccomp denylist.
 *
 * A denylist, not an allowlist, because the workload is an arbitrary image's
 * entrypoint: anything a normal program does must keep working.  What is
 * denied is what a container has no business doing and what has been the
 * kernel's attack surface again and again.  Denied calls fail with EPERM, so
 * programs that probe (e.g. for io_uring or userfaultfd) fall back cleanly. */
#define LOG_COMPONENT "sandbox"
#include <errno.h>
#include <linux/sched.h>
#include <seccomp.h>
#include <string.h>

#include "sandbox/internal.h"

static const char *const denied[] = {
	/* Replacing or extending the running kernel. */
	"kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "create_module",
	"query_module", "get_kernel_syms", "reboot",
	/* Re-arranging the file tree after setup: the sandbox's root, its
	 * read-only /proc paths and its masks must stay as they are. */
	"mount", "umount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount",
	"fspick", "mount_setattr", "chroot",
	/* New namespaces (notably user namespaces, which unlock much of the
	 * kernel to an unprivileged process) and joining other ones.  clone
	 * with CLONE_NEW* flags is filtered below; clone3 keeps its flags in
	 * memory a filter cannot read, so it gets ENOSYS and libc falls back
	 * to clone. */
	"unshare", "setns",
	/* Reading or writing other processes' memory. */
	"ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
	/* Large, often-exploited kernel interfaces a function does not need. */
	"bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
	"add_key", "request_key", "keyctl", "lookup_dcookie", "fanotify_init",
	/* Escaping path-based checks through file handles (the "shocker" escape). */
	"open_by_handle_at", "name_to_handle_at",
	/* Host-wide state: swap, clocks, accounting, quotas, kernel log. */
	"swapon", "swapoff", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "stime", "acct",
	"quotactl", "quotactl_fd", "syslog", "nfsservctl", "_sysctl", "sysfs", "uselib", "ustat", "vhangup",
	/* Direct hardware access. */
	"iopl", "ioperm", "vm86", "vm86old",
	/* NUMA placement of other processes' memory. */
	"move_pages", "migrate_pages", "mbind", "set_mempolicy",
};

void *sandbox_seccomp_build(void)
{
	scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
	if (!ctx) {
		errno = ENOMEM;
		return NULL;
	}
	int r = 0;
#if defined(__x86_64__)
	/* A 64-bit process can still make 32-bit (int 0x80) and x32 calls; put
	 * those ABIs under the same rules instead of killing 32-bit programs. */
	if ((r = seccomp_arch_add(ctx, SCMP_ARCH_X86)) < 0 && r != -EEXIST)
		goto fail;
	if ((r = seccomp_arch_add(ctx, SCMP_ARCH_X32)) < 0 && r != -EEXIST)
		goto fail;
#endif
	for (size_t i = 0; i < sizeof(denied) / sizeof(denied[0]); i++) {
		int nr = seccomp_syscall_resolve_name(denied[i]);
		if (nr == __NR_SCMP_ERROR)
			continue; /* not a syscall on any of these ABIs */
		r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 0);
		if (r < 0 && r != -EDOM && r != -EEXIST) {
			log_err("seccomp rule for %s: %s", denied[i], strerror(-r));
			goto fail;
		}
	}
	const uint64_t ns_flags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
				  CLONE_NEWNET | CLONE_NEWCGROUP | 0x00000080ULL /* CLONE_NEWTIME */;
	/* clone's flags are argument 0 on x86 and x86-64 alike.  libseccomp
	 * matches "(arg & mask) == datum", so "any namespace bit set" is one
	 * rule per bit. */
	for (int bit = 0; bit < 64; bit++) {
		uint64_t b = 1ULL << bit;
		if (!(ns_flags & b))
			continue;
		r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1, SCMP_A0(SCMP_CMP_MASKED_EQ, b, b));
		if (r < 0) {
			log_err("seccomp rule for clone: %s", strerror(-r));
			goto fail;
		}
	}
	int nr3 = seccomp_syscall_resolve_name("clone3");
	if (nr3 != __NR_SCMP_ERROR && (r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), nr3, 0)) < 0 && r != -EDOM) {
		log_err("seccomp rule for clone3: %s", strerror(-r));
		goto fail;
	}
	return ctx;
fail:
	seccomp_release(ctx);
	errno = r < 0 ? -r : EINVAL;
	return NULL;
}

int sandbox_seccomp_load(void *ctx)
{
	/* libseccomp sets no_new_privs first (SCMP_FLTATR_CTL_NNP defaults on):
	 * setuid binaries in the image cannot gain privileges either. */
	int r = seccomp_load(ctx);
	return r < 0 ? r : 0;
}
