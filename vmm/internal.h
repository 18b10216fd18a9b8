/* vmm internals: pieces the sandbox backends share, and the pure helpers the
 * unit tests reach directly.  Nothing outside vmm/ (and its tests) includes
 * this. */
#ifndef KINDLING_VMM_INTERNAL_H
#define KINDLING_VMM_INTERNAL_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/common.h"
#include "vmm/vmm.h"

/* ---- users, environment, PATH (vmm/user.c; pure, no privileges) ------------- */

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
 * -EINVAL for a malformed value or an id outside 0..2^32-2, or -errno reading
 * the files. */
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

/* ---- cgroups (vmm/cgroup.c) ---------------------------------------------- */

enum sandbox_cgroup_kind { SANDBOX_CG_NONE = 0, SANDBOX_CG_V2, SANDBOX_CG_V1 };

struct sandbox_cgroup {
	enum sandbox_cgroup_kind kind;
	char v2_dir[PATH_MAX];	 /* the sandbox's cgroup (v2) */
	char mem_dir[PATH_MAX];	 /* v1 memory hierarchy cgroup, "" if none */
	char pids_dir[PATH_MAX]; /* v1 pids hierarchy cgroup, "" if none */
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

/* Kill whatever is left in |cg|, then remove it (retrying while the kernel
 * still counts dying tasks).  Safe on a SANDBOX_CG_NONE or zeroed struct. */
void sandbox_cgroup_destroy(struct sandbox_cgroup *cg);

/* ---- seccomp (vmm/seccomp.c) --------------------------------------------- */

/* Build the denylist filter (see seccomp.c for the list and the reasons);
 * denied calls fail with EPERM.  Returns a libseccomp context (caller
 * releases it with seccomp_release) or NULL with errno set. */
void *sandbox_seccomp_build(void);

/* Load |ctx| into the calling thread (sets no_new_privs).  0 or -errno. */
int sandbox_seccomp_load(void *ctx);

/* ---- the micro-VM sandbox (vmm/sandbox_microvm.c) ------------------------ */

/* Where kvmm, the guest kernel and the guest initramfs are. */
struct microvm_paths {
	char kvmm[PATH_MAX], kernel[PATH_MAX], initrd[PATH_MAX];
};

/* Locate the three from KINDLING_KVMM, KINDLING_GUEST_KERNEL and
 * KINDLING_GUEST_INITRD, each defaulting to a file next to the running
 * executable ("kvmm", "kindling-guest-kernel", "kindling-guest-initrd"), and
 * check that kvmm is executable and the others readable.  Returns 0, or
 * -errno with a one-line reason naming the variable to set in |<why, len>|. */
int microvm_find_paths(struct microvm_paths *p, char *why, size_t len);

/* Write the Firecracker-style config file for |s| to |out_path|: boot-source
 * (|p|'s kernel and initramfs, kvmm's default command line), the image as the
 * read-only root drive, one vCPU, memory from s->memory_limit rounded up to
 * MiB (at least 64; 256 without a limit), and vsock CID 3 on |uds_path|.
 * Returns 0, -EINVAL (no image file, an absurd limit) or -errno, logged. */
int microvm_write_config(const struct sandbox_spec *s, const struct microvm_paths *p, const char *uds_path,
			 const char *out_path);

/* sandbox_microvm's run() without the /dev/kvm check, over |p| (so a test
 * can put a stand-in for kvmm there): listen on "{uds}_1024" in a private
 * temporary directory, start "kvmm --no-api --config-file", accept the guest
 * init, send the invocation, copy 'O'/'R' to s->out_fd/err_fd, take 'X' as the
 * result, kill kvmm at s->timeout_s (then timed_out is set and 0 returned),
 * wait for kvmm to exit, remove the directory.  Returns 0 with |*out| filled,
 * or -errno (logged, with the end of kvmm's output). */
int microvm_run_with(const struct sandbox_spec *s, const struct microvm_paths *p, struct sandbox_result *out);

#endif
