/* The process sandbox's seccomp allowlist, installed in a forked child the
 * way the sandbox does it (built and exported before fork, installed with no
 * allocation after): allowed calls work, the denied list answers EPERM,
 * unlisted calls ENOSYS, clone with a namespace flag EPERM, and the socket
 * families as sandbox/README.md says; and the program compiled at build time
 * is what libseccomp compiles on this host.  Needs no privileges: no_new_privs
 * lets any process install a filter. */
/* ctest-labels: no-tsan (forks; nothing threaded to check) */
#include <errno.h>
#include <linux/netlink.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sandbox/internal.h"
#include "tests/check.h"

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif

/* errno of a failed call, 0 on success; closes a returned descriptor. */
static int err_of(long r)
{
	if (r < 0)
		return errno;
	if (r > 2)
		close((int)r);
	return 0;
}

/* Runs in the child, under the filter.  Returns the number of failed
 * expectations (each printed), the child's exit status. */
static int child_checks(void)
{
	int fails = 0;
#define EXPECT(what, got, want)                                                                                        \
	do {                                                                                                           \
		int g_ = (got);                                                                                        \
		if (g_ != (want)) {                                                                                    \
			fprintf(stderr, "FAIL %s: errno %d (%s), want %d\n", what, g_, strerror(g_), want);            \
			fails++;                                                                                       \
		}                                                                                                      \
	} while (0)
	EXPECT("getpid", err_of(syscall(SYS_getpid)), 0);
	EXPECT("socket(AF_UNIX)", err_of(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)), 0);
	EXPECT("socket(AF_INET)", err_of(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)), 0);
	EXPECT("socket(AF_INET6)", err_of(socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0)), 0);
	EXPECT("socket(AF_NETLINK, ROUTE)", err_of(socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE)), 0);
	EXPECT("socket(AF_NETLINK, AUDIT)", err_of(socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_AUDIT)),
	       EAFNOSUPPORT);
	EXPECT("socket(AF_PACKET)", err_of(socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0)), EAFNOSUPPORT);
	EXPECT("socket(AF_VSOCK)", err_of(socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0)), EAFNOSUPPORT);
	int sv[2];
	EXPECT("socketpair(AF_UNIX)", err_of(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)), 0);
	close(sv[0]);
	close(sv[1]);
	EXPECT("kexec_load", err_of(syscall(SYS_kexec_load, 0, 0, 0, 0)), EPERM);
	EXPECT("bpf", err_of(syscall(SYS_bpf, 0, 0, 0)), EPERM);
	EXPECT("unshare", err_of(syscall(SYS_unshare, CLONE_NEWUSER)), EPERM);
	EXPECT("clone(CLONE_NEWNET)", err_of(syscall(SYS_clone, CLONE_NEWNET | SIGCHLD, 0, 0, 0, 0)), EPERM);
	EXPECT("clone3", err_of(syscall(435 /* clone3 */, NULL, 0)), ENOSYS);
	EXPECT("io_uring_setup", err_of(syscall(SYS_io_uring_setup, 1, NULL)), EPERM);
	/* An unlisted call that exists: ENOSYS from the filter (the kernel
	 * itself would say EPERM without CAP_SYS_ADMIN). */
	EXPECT("sethostname (unlisted)", err_of(syscall(SYS_sethostname, "x", 1)), ENOSYS);
	EXPECT("fsmount (denied)", err_of(syscall(SYS_fsmount, -1, 0, 0)), EPERM);
	/* fork still works: the runtimes need it. */
	pid_t p = fork();
	if (p == 0)
		_exit(0);
	int st = -1;
	EXPECT("fork", p < 0 ? errno : 0, 0);
	if (p > 0)
		waitpid(p, &st, 0);
	return fails;
}

static void test_filter(void)
{
	struct sandbox_seccomp f;
	CHECK(sandbox_seccomp_build(&f) == 0);
	CHECK(f.n > 50 && f.insns != NULL);
	pid_t p = fork();
	CHECK(p >= 0);
	if (p == 0) {
		int r = sandbox_seccomp_apply(&f);
		if (r < 0) {
			fprintf(stderr, "FAIL sandbox_seccomp_apply: %s\n", strerror(-r));
			_exit(100);
		}
		_exit(child_checks());
	}
	int st = 0;
	CHECK(waitpid(p, &st, 0) == p);
	CHECK(WIFEXITED(st));
	CHECK(WEXITSTATUS(st) == 0);
	sandbox_seccomp_free(&f);
	sandbox_seccomp_free(&f); /* twice is fine */
	CHECK(f.insns == NULL && f.n == 0);
}

/* The program the build compiled is the one libseccomp compiles now, on this
 * host: the prebuilt copy is not stale. */
static void test_prebuilt_matches(void)
{
	struct sandbox_seccomp built, compiled;
	CHECK(sandbox_seccomp_build(&built) == 0);
	CHECK(sandbox_seccomp_compile(&compiled) == 0);
	CHECK(built.n == compiled.n);
	CHECK(built.n == compiled.n && memcmp(built.insns, compiled.insns, built.n * sizeof(built.insns[0])) == 0);
	sandbox_seccomp_free(&built);
	sandbox_seccomp_free(&compiled);
}

int main(void)
{
	test_filter();
	test_prebuilt_matches();
	return check_report();
}
