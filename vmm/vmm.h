/* vmm: run an image's entrypoint in a sandbox.
 *
 * One interface, several backends.  A backend is a `struct sandbox_ops`; the
 * backends this build has are listed in one explicit array (vmm/sandbox.c) and
 * chosen by name with sandbox_pick() (`--isolation process|microvm|auto`).
 * Today the process sandbox (namespaces, cgroups, seccomp around a kernel
 * EROFS mount of the image) is the only one; the KVM micro-VM will implement
 * the same ops and take the same spec.
 *
 * A sandbox runs one image file (a flattened EROFS image: `chunkify export`'s
 * output, or blockd's lazily filled MOUNT/<image>/image.raw) read-only, with
 * writes going to a throw-away layer, and streams the workload's stdout and
 * stderr to the caller's descriptors as they arrive.
 */
#ifndef KINDLING_VMM_H
#define KINDLING_VMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chunker/chunker.h" /* struct run_config */

/* How the process sandbox attaches the image file to the kernel's EROFS
 * driver.  Backends that do not mount on the host ignore it. */
enum sandbox_mount {
	SANDBOX_MOUNT_AUTO = 0, /* file-backed mount, falling back to a loop device */
	SANDBOX_MOUNT_FILE,	/* file-backed mount only */
	SANDBOX_MOUNT_LOOP,	/* loop device only (LOOP_CONFIGURE) */
};

/* What to run.  The caller owns every pointer; they need to stay valid only
 * for the duration of sandbox_run(). */
struct sandbox_spec {
	const char *image_path;		  /* the EROFS image file; or NULL with rootfs_dir */
	/* Instead of an image: a plain directory (an unpacked rootfs, e.g. from
	 * `umoci unpack`), bind-mounted read-only as the overlay's lower layer.
	 * Exactly one of image_path and rootfs_dir is set.  It exists so the
	 * eager baseline (pull + unpack) runs in the very same sandbox. */
	const char *rootfs_dir;
	const struct run_config *config;  /* the image's run configuration; may be NULL */
	char *const *argv_override;	  /* NULL-terminated; replaces entrypoint+cmd entirely; may be NULL */
	char *const *env_override;	  /* NULL-terminated "K=V", set on top of config->env; may be NULL */
	const char *user_override;	  /* "uid", "uid:gid", "name", "name:group"; NULL = config->user */
	const char *workdir_override;	  /* absolute; NULL = config->working_dir, else "/" */
	const char *hostname;		  /* NULL = "kindling" */
	uint64_t memory_limit;		  /* bytes, 0 = no limit */
	uint32_t pids_limit;		  /* processes the workload may have at once, 0 = no limit */
	enum sandbox_mount mount;
	int in_fd;			  /* the workload's stdin; -1 = /dev/null */
	int out_fd, err_fd;		  /* where its stdout and stderr are copied as they arrive (a caller
					   * whose descriptors may close should ignore SIGPIPE) */
	double t0;			  /* now_seconds() at the caller's "start"; timings count from here */
	double timeout_s;		  /* kill everything after this long from t0; 0 = never */
};

/* How it went.  Filled by sandbox_run() on success. */
struct sandbox_result {
	int exit_code;		/* the workload's exit status, or -1 if a signal ended it */
	int term_signal;	/* the signal that ended it, or 0 */
	bool timed_out;		/* killed because timeout_s passed */
	bool oom_killed;	/* the memory limit's OOM killer fired in the sandbox */
	double first_output_s;	/* first byte on stdout or stderr, seconds after t0; -1 if none */
	double exit_s;		/* the workload's exit, seconds after t0 */
	uint64_t out_bytes, err_bytes;
	const char *backend;	/* the ops name, e.g. "process" */
	const char *mount_kind; /* "file", "loop" or "dir" (process sandbox); static string */
	const char *cgroup_kind; /* "v2", "v1" or "none"; static string */
};

/* One sandbox backend.  Tables are static const; every callback is required. */
struct sandbox_ops {
	const char *name; /* "process", "microvm" */
	/* Whether this host can run this backend.  On false, a one-line reason
	 * for an operator goes to |<why, len>|. */
	bool (*available)(char *why, size_t len);
	/* Run |spec| to completion; see sandbox_run(). */
	int (*run)(const struct sandbox_spec *spec, struct sandbox_result *out);
};

/* The process sandbox: new mount, pid, ipc, uts and net namespaces; the image
 * mounted read-only under a tmpfs overlay; pivot_root; cgroup memory and pids
 * limits where the host allows them; a seccomp denylist; needs root. */
extern const struct sandbox_ops sandbox_process;

/* The micro-VM: kvmm boots the guest kernel with the image as a read-only
 * virtio-blk root, and kindling's guest init runs the workload, talking to us
 * over vsock (vmm/sandbox_microvm.c lists the environment variables that say
 * where kvmm, the kernel and the initramfs are).  Needs /dev/kvm. */
extern const struct sandbox_ops sandbox_microvm;

/* Choose a backend for |isolation|: "process", "microvm" or "auto" (NULL means
 * "auto").  "auto" takes the micro-VM where /dev/kvm exists and a micro-VM
 * backend is built in, else the process sandbox, and then writes a one-line
 * notice for the operator to |<notice, len>| (otherwise it is set to "").
 * Returns the backend, or NULL with errno set and the reason in |notice|:
 * ENOENT for an unknown name, ENOTSUP when the requested backend is not built
 * in or cannot run on this host. */
const struct sandbox_ops *sandbox_pick(const char *isolation, char *notice, size_t len);

/* Run |spec| in |ops|'s sandbox and wait for it: set the sandbox up (on the
 * image file, or on spec->rootfs_dir), start the workload, copy its output to spec->out_fd/err_fd, tear everything down
 * (mounts, cgroups, processes) on every path.  Returns 0 with |*out| filled
 * once the workload ran, whatever its exit status; -EINVAL for a bad spec,
 * -ENOENT if the command or user is not in the image, -EPERM without the
 * privileges the backend needs, or another -errno if the sandbox could not be
 * set up (logged with the reason). */
int sandbox_run(const struct sandbox_ops *ops, const struct sandbox_spec *spec, struct sandbox_result *out);

#endif
