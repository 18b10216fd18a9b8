/* sandbox internals: pieces the sandbox backends share, and the helpers the
 * unit tests reach directly.  Nothing outside sandbox/ (and its tests)
 * includes this. */
#ifndef KINDLING_SANDBOX_INTERNAL_H
#define KINDLING_SANDBOX_INTERNAL_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <linux/filter.h>
#include <sys/types.h>

#include "common/common.h"
#include "sandbox/sandbox.h"

/* ---- what the backends share (sandbox/sandbox.c) ------------------------------ */

#define SANDBOX_RUNTIME_API_ENV "AWS_LAMBDA_RUNTIME_API"

/* The environment the sandbox sets over the image's: s->env_override, then,
 * with s->runtime_api_port, AWS_LAMBDA_RUNTIME_API=127.0.0.1:PORT (a later
 * entry replaces an earlier one of the same name).  Appended to |out|, which
 * is NULL-terminated afterwards (out->items[out->n] == NULL).  Returns 0 or
 * -ENOMEM (|out| then holds what was added; str_list_clear it). */
int sandbox_env_overrides(const struct sandbox_spec *s, struct str_list *out);

/* ---- seccomp (sandbox/seccomp.c) --------------------------------------------- */

/* A seccomp filter as classic BPF, ready for seccomp(SECCOMP_SET_MODE_FILTER). */
struct sandbox_seccomp {
	struct sock_filter *insns; /* malloc'd */
	size_t n;
};

/* The process sandbox's allowlist (see seccomp.c for the list, the answers
 * and the socket rules) as BPF in |out|: a copy of the program libseccomp
 * compiled at build time (sandbox_seccomp_compile's output, in the build
 * tree's seccomp_bpf.h).  Call it before fork: it allocates.  Returns 0 or
 * -ENOMEM (logged); |out| is empty on failure.  Release with
 * sandbox_seccomp_free. */
int sandbox_seccomp_build(struct sandbox_seccomp *out);

/* Compile the allowlist with libseccomp for the architecture this runs on
 * and export it to |out| (what the build does once; the unit test checks
 * that it matches sandbox_seccomp_build's copy).  Returns 0 or -errno
 * (logged); |out| is empty on failure.  Release with sandbox_seccomp_free. */
int sandbox_seccomp_compile(struct sandbox_seccomp *out);

/* Install |f| on the calling thread, setting no_new_privs first.  Allocates
 * nothing and takes no lock, so it is safe in a child forked from a
 * multi-threaded process.  Returns 0 or -errno. */
int sandbox_seccomp_apply(const struct sandbox_seccomp *f);

/* Free |f|'s instructions; NULL or an empty filter is fine. */
void sandbox_seccomp_free(struct sandbox_seccomp *f);

/* ---- the micro-VM sandbox (sandbox/sandbox_microvm.c) ------------------------ */

/* Where kvmm, the guest kernel and the guest initramfs are. */
struct microvm_paths {
	char kvmm[PATH_MAX], kernel[PATH_MAX], initrd[PATH_MAX];
	/* From spawn (or a restore's load) to the init's connection; 0 means
	 * the default (60 s). */
	double boot_timeout_s;
};

/* Locate the three from KINDLING_KVMM, KINDLING_GUEST_KERNEL and
 * KINDLING_GUEST_INITRD, each defaulting to a file next to the running
 * executable ("kvmm", "kindling-guest-kernel", "kindling-guest-initrd"), and
 * check that kvmm is executable and the others readable; take the boot bound
 * from KINDLING_GUEST_BOOT_TIMEOUT (whole seconds, 1 to 3600; default 60).
 * Returns 0, or -errno with a one-line reason naming the variable to set in
 * |<why, len>| (-EINVAL for a boot bound that is not such a number). */
int microvm_find_paths(struct microvm_paths *p, char *why, size_t len);

/* Write the Firecracker-style config file for |s| to |out_path|: boot-source
 * (|p|'s kernel and initramfs, kvmm's default command line), the image as the
 * read-only root drive, one vCPU, memory from s->memory_limit rounded up to
 * MiB (at least 64; 256 without a limit), and vsock CID 3 on |uds_path|.
 * Returns 0, -EINVAL (no image file, an absurd limit) or -errno, logged. */
int microvm_write_config(const struct sandbox_spec *s, const struct microvm_paths *p, const char *uds_path,
			 const char *out_path);

/* sandbox_microvm's run() without the /dev/kvm check, over |p| (so a test
 * can put a stand-in for kvmm there): listen on "{uds}_1024" (and, with
 * s->runtime_api_port, on "{uds}_1025" for the guest init's Runtime API
 * streams) in a private temporary directory, start "kvmm --no-api
 * --config-file", accept the guest init, call s->on_ready with the second
 * socket, send the invocation (with a 'P' frame for the endpoint), copy
 * 'O'/'R' to s->out_fd/err_fd, take 'X' as the result, kill kvmm at
 * s->timeout_s or when s->stop_fd is readable (then timed_out or stopped is
 * set and 0 returned), wait for kvmm to exit, remove the directory.  Returns
 * 0 with |*out| filled, on_ready's value if it refused, or -errno (logged,
 * with the end of kvmm's output). */
int microvm_run_with(const struct sandbox_spec *s, const struct microvm_paths *p, struct sandbox_result *out);

#endif
