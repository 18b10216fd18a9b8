/* kvmm: isolation (jail.c): a seccomp allowlist per thread, and a
 * jailer-like confinement of the whole process. */
#ifndef KINDLING_KVMM_JAIL_H
#define KINDLING_KVMM_JAIL_H

#include <pthread.h>
#include <stdint.h>

/* kvmm's threads, each with its own seccomp allowlist (jail.c lists each call
 * and why it is there). */
enum kvmm_thread_kind {
	KVMM_THREAD_VMM,     /* main, after setup: waits for the VM, tears it down, exits */
	KVMM_THREAD_VCPU,    /* KVM_RUN and its exits, which reach device code (DRIVER_OK notify) */
	KVMM_THREAD_DEVICES, /* the kvmm_loop: eventfds, disk reads, vsock's unix sockets */
	KVMM_THREAD_API,     /* the API socket, once the VM runs */
};

/* Stack size of every thread kvmm starts: ample for its code (the deepest
 * is jansson parsing an API body, at most 2048 levels of nesting), and under
 * one 2 MiB huge page, so that on a host whose transparent huge pages are
 * "always" no stack can be backed by one.  With glibc's default 8 MiB stacks
 * a single huge page fault on a stack added 2 MiB to kvmm's own memory. */
#define KVMM_THREAD_STACK (1u << 20)

/* pthread_create(t, fn, arg) with a KVMM_THREAD_STACK stack.  Returns 0 or
 * a positive error number, as pthread_create does. */
int kvmm_thread_create(pthread_t *t, void *(*fn)(void *), void *arg);

/* Install |kind|'s allowlist on the calling thread only (threads it creates
 * later inherit it), with no_new_privs.  Call it at the end of the thread's
 * setup: files, sockets, mappings and threads it still needs must exist by
 * then.  A call outside the list kills the whole process with SIGSYS
 * (SCMP_ACT_KILL_PROCESS): the parent sees WTERMSIG == SIGSYS and the kernel
 * log names the call (audit type=1326, "syscall=N").  Returns 0 or -errno
 * (logged). */
int kvmm_seccomp_apply(enum kvmm_thread_kind kind);

/* A jailer-like confinement of the kvmm process itself, as Firecracker's
 * jailer sets up before it executes Firecracker. */
struct kvmm_jail {
	/* cgroup "kvmm-<id>" (v2, else v1 as sandbox/cgroup.c finds them) with these
	 * limits; 0 and 0 = no cgroup.  The cgroup outlives kvmm (it cannot be
	 * removed from inside the chroot): whoever started kvmm removes it;
	 * its path is logged at info level. */
	uint64_t memory_limit; /* bytes */
	uint32_t pids_limit;
	const char *id; /* names the cgroup; [A-Za-z0-9_-], 1..64 chars; required with limits */
	/* chroot into this directory (NULL = none).  The caller has placed in it,
	 * by hard link, bind mount or mknod as it prefers, everything kvmm opens
	 * later (dev/kvm, the kernel, drives, the socket directories); config
	 * paths are then relative to it. */
	const char *chroot_dir;
	/* Drop to this user (NULL = keep the current one): OCI style "uid",
	 * "uid:gid", "name" or "name:group", resolved against the HOST's
	 * /etc/passwd and /etc/group before the chroot.  Supplementary groups
	 * are cleared. */
	const char *user;
};

/* Confine the calling process as |j| says, in this order: cgroup (created and
 * joined), chroot and chdir("/"), drop groups, gid and uid (checked: regaining
 * root must fail), then no_new_privs.  Call it from the main thread before
 * other threads exist (ids and the root are per process, but glibc's setuid
 * broadcast and chroot semantics are simplest single-threaded).
 * Returns 0, or -errno (logged with what to fix: not root, missing jail
 * directory, unknown user) with the process possibly partly confined: exit. */
int kvmm_jail_enter(const struct kvmm_jail *j);

#endif
