/* sandbox: run an image's entrypoint in a sandbox.
 *
 * One interface, several backends.  A backend is a `struct sandbox_ops`; the
 * backends this build has are listed in one explicit array (sandbox/sandbox.c)
 * and chosen by name with sandbox_pick() (`--isolation process|microvm|auto`):
 * the process sandbox (namespaces, cgroups, seccomp around a kernel EROFS
 * mount of the image) and the KVM micro-VM (kvmm, vmm/kvmm/, with kindling's
 * guest init, vmm/guest/).  `kindling run` and the invoke service's host agent
 * both start sandboxes through this header and nothing else.
 *
 * A sandbox runs one image file (a flattened EROFS image: `chunkify export`'s
 * output, or blockd's lazily filled MOUNT/<image>/image.raw) read-only, with
 * writes going to a throw-away layer, and streams the workload's stdout and
 * stderr to the caller's descriptors as they arrive.
 */
#ifndef KINDLING_SANDBOX_H
#define KINDLING_SANDBOX_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/common.h" /* struct str_list */
#include "common/timeline.h"
#include "image/image.h"   /* struct run_config */

/* How the process sandbox attaches the image file to the kernel's EROFS
 * driver.  Backends that do not mount on the host ignore it. */
enum sandbox_mount {
	SANDBOX_MOUNT_AUTO = 0, /* file-backed mount, falling back to a loop device */
	SANDBOX_MOUNT_FILE,	/* file-backed mount only */
	SANDBOX_MOUNT_LOOP,	/* loop device only (LOOP_CONFIGURE) */
};

/* A running micro-VM, for sandbox_vm_snapshot(). */
struct sandbox_vm;

/* What sandbox_spec.on_ready learns about a sandbox that is about to start
 * its workload. */
struct sandbox_ready {
	/* The host end of the Runtime API endpoint, a listening stream socket
	 * (blocking, close-on-exec), or -1 without spec->runtime_api_port.  Each
	 * connection accepted on it is one connection the workload made to
	 * 127.0.0.1:PORT.  In the process sandbox it is the TCP socket itself,
	 * bound inside the sandbox's network namespace; in the micro-VM it is a
	 * unix socket that kvmm connects the guest init's vsock streams to, one
	 * per connection the workload made in the guest. */
	int runtime_api_fd;
	pid_t pid;		    /* a host pid that lives as long as the sandbox (for logs) */
	/* A file whose decimal contents are the most memory the sandbox has used
	 * so far, in bytes (cgroup v2 memory.peak, v1
	 * memory.max_usage_in_bytes), or "" where the sandbox has no memory
	 * cgroup (see sandbox_result.memory_peak). */
	char memory_peak_path[PATH_MAX];
	/* The micro-VM, for sandbox_vm_snapshot(): valid from on_ready until
	 * sandbox_run() returns.  NULL in the process sandbox. */
	struct sandbox_vm *vm;
};

/* Where a micro-VM is restored from instead of booted (sandbox_spec.restore):
 * a snapshot sandbox_vm_snapshot() took.  Exactly one memory backend. */
struct sandbox_restore {
	const char *vmstate_path;    /* the vmstate file; required */
	const char *mem_uffd_socket; /* a page-fault handler the caller serves on this unix socket (kvmm's
				      * Uffd backend: vmm/kvmm/README.md), or NULL */
	const char *mem_file;	     /* the memory file, or NULL */
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
	/* Optional: where the start's time goes.  The process sandbox marks
	 * its phases in it (from the caller, the monitor, the init and the
	 * workload, the last mark just before the workload's execve), so it
	 * must come from timeline_new() (shared across fork).  NULL = none. */
	struct timeline *timeline;

	/* The workload's user namespace (process sandbox; the micro-VM ignores
	 * it): ids 0..count-1 inside are host ids base..base+count-1, so root
	 * inside is an unprivileged id outside, and the image's files, mounted
	 * through an idmapped mount, still show their owners inside.
	 * userns_count 0 means SANDBOX_USERNS_DEFAULT_COUNT and userns_base 0
	 * SANDBOX_USERNS_DEFAULT_BASE (host id 0 cannot be a base: that would
	 * map root to root).  A host without user namespaces or idmapped mounts
	 * runs the workload without one, with a notice on stderr
	 * (sandbox_result.userns tells).  userns_off skips it. */
	uint32_t userns_base, userns_count;
	bool userns_off;

	/* ---- long-lived sandboxes (the invoke service's host agent) ---- */

	/* If non-zero, give the workload a Lambda Runtime API endpoint: the
	 * sandbox listens on 127.0.0.1:|runtime_api_port| inside its own network
	 * (the process sandbox's network namespace, after lo is up; in the
	 * micro-VM, the guest init listens there and carries each connection
	 * over its own vsock stream), sets AWS_LAMBDA_RUNTIME_API=127.0.0.1:PORT
	 * in the workload's environment (over any value the image or
	 * env_override gives), and hands the host end of that endpoint, a
	 * listening stream socket, to |on_ready|, which is then required.  The
	 * caller serves HTTP on it; nothing outside the sandbox can reach the
	 * endpoint, and the workload reaches nothing else.  Connections end when
	 * the workload does (its processes die, or the VM stops). */
	uint16_t runtime_api_port;
	/* Optional (required with runtime_api_port): called once, on the thread
	 * that called sandbox_run(), after the sandbox is set up and just before
	 * the workload starts (the workload is not forked, or the invocation not
	 * sent to the guest, until it returns).  Returning non-zero ends the
	 * sandbox before the workload runs, and sandbox_run() returns that value
	 * (so it should be a -errno).  The callee owns ready->runtime_api_fd
	 * from the call on, whatever it returns, and closes it at the latest
	 * when sandbox_run() has returned (in the process sandbox the socket
	 * keeps the sandbox's network namespace alive until it is closed).  A sandbox that
	 * fails or is stopped before it is set up never calls it. */
	int (*on_ready)(void *arg, const struct sandbox_ready *ready);
	void *ready_arg;
	/* If > 0, the sandbox ends (every process killed, as on a timeout) as
	 * soon as this descriptor is readable or hung up, at any point of the
	 * run, setup included: how another thread stops a long-lived sandbox.
	 * The result then has |stopped| set, exit_code -1 and term_signal
	 * SIGKILL, and sandbox_run() returns 0.  Nothing is read from it, so one
	 * descriptor can stop many sandboxes.  0 (as in a zeroed spec) or -1
	 * means none. */
	int stop_fd;

	/* ---- micro-VM snapshots ---- */

	/* If set (micro-VM only; the process sandbox refuses it with -ENOTSUP),
	 * restore this snapshot instead of booting: kvmm loads it with the
	 * drive "rootfs" reopened on image_path and the vsock on this run's own
	 * socket, the guest init reconnects and gets a restore frame (generation
	 * 1, 32 fresh bytes from getrandom for its RNG), and the workload goes
	 * on from where the snapshot was taken: no invocation is sent, so the
	 * command, environment, user and working directory are the snapshot's
	 * (argv_override and the like are ignored), as is the VM's memory size.
	 * With runtime_api_port (which must be the snapshotted run's), on_ready
	 * gets the socket the init's replayed and new Runtime API connections
	 * arrive on.  A restore that fails (a refused load, a guest that does
	 * not reconnect) is -errno, logged naming the step, with kvmm and the
	 * run's directory gone. */
	const struct sandbox_restore *restore;
};

/* How it went.  Filled by sandbox_run() on success. */
struct sandbox_result {
	int exit_code;		/* the workload's exit status, or -1 if a signal ended it */
	int term_signal;	/* the signal that ended it, or 0 */
	bool timed_out;		/* killed because timeout_s passed */
	bool oom_killed;	/* the memory limit's OOM killer fired in the sandbox */
	bool stopped;		/* ended because spec->stop_fd became readable */
	/* The most memory the sandbox used, in bytes, read from its memory
	 * cgroup as it ends; 0 if unknown.  The process sandbox has a memory
	 * cgroup when spec->memory_limit is set and the host offers cgroups.
	 * A micro-VM has none of its own (the VM's configured memory is what it
	 * uses), so 0. */
	uint64_t memory_peak;
	double first_output_s;	/* first byte on stdout or stderr, seconds after t0; -1 if none */
	double exit_s;		/* the workload's exit, seconds after t0 */
	uint64_t out_bytes, err_bytes;
	const char *backend;	/* the ops name, e.g. "process" */
	const char *mount_kind; /* "file", "loop" or "dir" (process sandbox); static string */
	const char *cgroup_kind; /* "v2", "v1" or "none"; static string */
	/* The pids limit refused at least one fork (a fork bomb, or a workload
	 * that needs a higher spec->pids_limit). */
	bool pids_limited;
	/* The workload ran in its own user namespace (see spec->userns_base). */
	bool userns;
	/* Set with spec->restore: when the guest init reconnected after the
	 * load, seconds after t0. */
	double restored_s;
};

/* The user namespace mapping a sandbox gets by default: 65536 ids from host
 * id 1000000000, well above the ranges /etc/subuid hands out to users
 * (100000 and up, 65536 each).  Every sandbox shares it; they cannot reach
 * each other's processes or files (separate pid and mount namespaces). */
#define SANDBOX_USERNS_DEFAULT_BASE 1000000000u
#define SANDBOX_USERNS_DEFAULT_COUNT 65536u

/* One sandbox backend.  Tables are static const; every callback is required. */
struct sandbox_ops {
	const char *name; /* "process", "microvm" */
	/* Whether this host can run this backend.  On false, a one-line reason
	 * for an operator goes to |<why, len>|. */
	bool (*available)(char *why, size_t len);
	/* Run |spec| to completion; see sandbox_run(). */
	int (*run)(const struct sandbox_spec *spec, struct sandbox_result *out);
};

/* The process sandbox: new user (see spec->userns_base), mount, pid, ipc,
 * uts and net namespaces; the image mounted read-only under a tmpfs overlay;
 * pivot_root; a /dev of null, zero, full, random, urandom, tty and ptmx
 * only, every writable mount nodev; a minimal capability set; cgroup memory
 * and pids limits, and a v1 device allowlist, where the host offers them; a
 * seccomp allowlist (sandbox/seccomp.c); needs root. */
extern const struct sandbox_ops sandbox_process;

/* The micro-VM: kvmm boots the guest kernel with the image as a read-only
 * virtio-blk root, and kindling's guest init runs the workload, talking to us
 * over vsock (sandbox/sandbox_microvm.c lists the environment variables that say
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
 * set up (logged with the reason); -EINVAL also for a runtime_api_port
 * without an on_ready; on_ready's own value if it refused the sandbox. */
int sandbox_run(const struct sandbox_ops *ops, const struct sandbox_spec *spec, struct sandbox_result *out);

/* Take a Full snapshot of the running micro-VM |vm| (sandbox_ready.vm):
 * pause it, write its vmstate to |vmstate_path| and its memory to
 * |mem_path| (new files; kvmm writes each under a temporary name and renames
 * it), and resume it, through kvmm's API socket.  The guest stands still
 * from the pause to the resume; the snapshot holds the workload as it was
 * at the pause, and the channel to the guest init as the sandbox had it.
 * May be called from any thread while sandbox_run() serves the guest, one
 * call at a time per VM; the sandbox waits for a call in progress before it
 * tears the VM down.  Returns 0; -ENOTSUP for NULL (the process sandbox);
 * -ESRCH once the VM has ended; -EIO when kvmm refused a step (logged with
 * kvmm's fault_message: the VM is resumed whenever it was paused); or
 * another -errno (logged). */
int sandbox_vm_snapshot(struct sandbox_vm *vm, const char *vmstate_path, const char *mem_path);

/* The pieces below are shared with the micro-VM's side of kindling: the guest
 * init resolves the image's user, environment and PATH the way the process
 * sandbox does, and kvmm's jailer puts the monitor in a cgroup the same way. */

/* ---- users, environment, PATH (sandbox/user.c; pure, no privileges) ------------- */

#define SANDBOX_MAX_GROUPS 64
/* /etc/passwd and /etc/group come from the image, so they are untrusted and
 * read with a size cap. */
#define SANDBOX_ETC_MAX (4u << 20)
#define SANDBOX_DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

struct sandbox_user {
	uint32_t uid, gid;
	uint32_t groups[SANDBOX_MAX_GROUPS]; /* supplementary groups */
	size_t n_groups;
	char home[PATH_MAX]; /* from the passwd entry; "" if there is none */
};

/* Resolve an OCI "User" value the way Docker and runc do, against the IMAGE's
 * passwd and group files at |passwd_path| and |group_path| (either may be
 * missing, which is the same as empty):
 *   NULL or ""          root (uid 0, gid 0);
 *   "uid" or "name"     that user; gid from its passwd entry (0 if a numeric
 *                       uid has none); supplementary groups are the groups
 *                       that list the user's name;
 *   "user:group"        either part numeric or a name; no supplementary groups.
 * Returns 0 with |*out| filled, -ENOENT if a name is not in the files (logged),
 * -EINVAL for a malformed value or an id outside 0..2^32-2, -EFBIG for a file
 * over SANDBOX_ETC_MAX, or -errno reading the files.  It allocates nothing
 * from the heap (the files are read into mmap'd buffers), so a child forked
 * from a multi-threaded process may call it. */
int sandbox_user_resolve(const char *spec, const char *passwd_path, const char *group_path, struct sandbox_user *out);

/* The value of |key| in the NULL-terminated "K=V" list |env|, or NULL. */
const char *sandbox_env_get(char *const *env, const char *key);

/* Build the workload's environment into |out| (appended): |base| (the image's
 * env), then |over| replacing same-named entries, then PATH (the Docker
 * default) if neither set it, HOSTNAME=|hostname| and HOME=|home| if unset
 * ("/" when |home| is empty).  Entries without '=' are dropped.  Returns 0 or
 * -ENOMEM. */
int sandbox_env_build(char *const *base, char *const *over, const char *hostname, const char *home,
		      struct str_list *out);

/* Find |cmd| the way execvp does, relative to the current root: a name with
 * a '/' is taken as is; otherwise each directory of |path_env| (colon
 * separated, an empty element meaning ".") is tried for an executable regular
 * file.  Writes the path to |<out, len>|.  Returns 0, -ENOENT, -EACCES if only
 * non-executable matches exist, or -ENAMETOOLONG. */
int sandbox_path_lookup(const char *cmd, const char *path_env, char *out, size_t len);

/* ---- the sandbox's network (sandbox/net.c; libc only) ------------------------ */

#define SANDBOX_RUNTIME_API_BACKLOG 128

/* Bring up the loopback interface of the calling process's network
 * namespace (a new namespace's lo, or a guest's).  Needs CAP_NET_ADMIN
 * there.  Returns 0 or -errno (logged: the workload then has no loopback). */
int sandbox_loopback_up(void);

/* Listen on 127.0.0.1:|port| in the calling process's network namespace
 * (lo must be up): a blocking, close-on-exec TCP socket with
 * SO_REUSEADDR, in |*out_fd|.  Returns 0, -EINVAL for port 0, or -errno
 * (logged, with a hint for the operator). */
int sandbox_runtime_api_listen(uint16_t port, int *out_fd);

/* ---- cgroups (sandbox/cgroup.c) ---------------------------------------------- */

enum sandbox_cgroup_kind { SANDBOX_CG_NONE = 0, SANDBOX_CG_V2, SANDBOX_CG_V1 };

struct sandbox_cgroup {
	enum sandbox_cgroup_kind kind;
	char v2_dir[PATH_MAX];	 /* the sandbox's cgroup (v2) */
	char mem_dir[PATH_MAX];	 /* v1 memory hierarchy cgroup, "" if none */
	char pids_dir[PATH_MAX]; /* v1 pids hierarchy cgroup, "" if none */
	char dev_dir[PATH_MAX];	 /* v1 devices hierarchy cgroup (sandbox_cgroup_devices), "" if none */
};

/* Create a cgroup named |name| with |memory_limit| bytes (0 = none, swap off
 * too) and |pids_limit| processes (0 = none).  Prefers cgroup v2: the
 * caller's own cgroup when a manager delegated memory and pids to it, else
 * <cgroup2 root>/kindling.  Falls back to the v1 memory and pids hierarchies
 * where the v2 controllers are missing.  If neither works, |cg->kind| is
 * SANDBOX_CG_NONE and the reason is in |<notice, len>|; with v1, the notice
 * says so.  Returns 0 in all those cases (limits are best effort, as the
 * issue asks); -errno only for a setup failure after creation began, with
 * nothing left behind. */
int sandbox_cgroup_create(struct sandbox_cgroup *cg, const char *name, uint64_t memory_limit, uint32_t pids_limit,
			  char *notice, size_t len);

/* Move process |pid| into |cg|.  Returns 0 or -errno. */
int sandbox_cgroup_attach(const struct sandbox_cgroup *cg, pid_t pid);

/* True if the memory controller OOM-killed something in |cg|. */
bool sandbox_cgroup_oom_killed(const struct sandbox_cgroup *cg);

/* The file whose decimal contents are the most memory |cg| has used so far
 * (v2 memory.peak, v1 memory.max_usage_in_bytes), into |<out, len>|; "" when
 * |cg| has no memory controller or the kernel no such file (v2 before Linux
 * 5.19).  Returns 0 or -ENAMETOOLONG. */
int sandbox_cgroup_peak_file(const struct sandbox_cgroup *cg, char *out, size_t len);

/* The most memory |cg| has used so far, in bytes; 0 if unknown. */
uint64_t sandbox_cgroup_memory_peak(const struct sandbox_cgroup *cg);

/* True if |cg|'s pids limit refused a fork at least once (pids.events "max"). */
bool sandbox_cgroup_pids_limited(const struct sandbox_cgroup *cg);

/* Where the host binds the cgroup v1 devices controller, create the cgroup
 * |name| next to the caller's in that hierarchy as |cg->dev_dir|, denying
 * every device but the process sandbox's /dev set (null, zero, full, random,
 * urandom, tty, ptmx and pseudo-terminals).  Call after
 * sandbox_cgroup_create (which clears |cg|).  On cgroup v2 it does nothing
 * (v2 needs a BPF device program; the sandbox relies on nodev mounts,
 * capabilities and its user namespace there).  If the hierarchy exists but
 * the cgroup cannot be made, the reason goes to |<notice, len>| and 0 is
 * returned; -errno only when the allowlist cannot be written (logged, nothing
 * left behind).  sandbox_cgroup_destroy removes it. */
int sandbox_cgroup_devices(struct sandbox_cgroup *cg, const char *name, char *notice, size_t len);

/* The tasks file of the cgroup v1 directory |dir| into |<out, len>|; "" when
 * |dir| is "".  A single-threaded process moves itself into that cgroup by
 * writing "0" there (sandbox_cgroup_join_self).  Returns 0 or -ENAMETOOLONG. */
int sandbox_cgroup_tasks_file(const char *dir, char *out, size_t len);

/* Move the calling thread into the cgroup v1 whose tasks file is |tasks_file|
 * by writing "0" to it.  For a process that has one thread and has not forked
 * yet this moves the whole process, and everything it forks later starts
 * inside.  It costs about 0.1 ms where moving a process through cgroup.procs
 * (sandbox_cgroup_attach) costs an RCU grace period (10-15 ms on an idle
 * host): a single thread moving itself takes no global lock.  Returns 0 or
 * -errno (logged, naming the file). */
int sandbox_cgroup_join_self(const char *tasks_file);

/* Kill whatever is left in |cg|, then remove it (retrying while the kernel
 * still counts dying tasks).  Safe on a SANDBOX_CG_NONE or zeroed struct. */
void sandbox_cgroup_destroy(struct sandbox_cgroup *cg);

/* A process sandbox's cgroups are named this followed by its monitor's pid. */
#define SANDBOX_CGROUP_PREFIX "kindling-sandbox-"

/* Remove, next to each of |cg|'s cgroups, at most |max| cgroups that
 * sandboxes of killed callers left behind: ones named SANDBOX_CGROUP_PREFIX
 * and a pid that no longer exists (its caller would have reaped the
 * monitor) and that hold no task (the kernel refuses to remove any other).
 * A caller reads its cgroup's counters before it reaps its monitor, so no
 * sweep takes a cgroup whose sandbox still needs it.  Call with |cg| still
 * set up, before sandbox_cgroup_destroy.  Returns how many were removed
 * (logged when any were). */
unsigned sandbox_cgroup_sweep(const struct sandbox_cgroup *cg, unsigned max);

#endif
