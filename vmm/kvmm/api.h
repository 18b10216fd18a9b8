/* kvmm: the Firecracker-compatible API server (api.c), on a unix socket. */
#ifndef KINDLING_KVMM_API_H
#define KINDLING_KVMM_API_H

#include <stdbool.h>
#include <stddef.h>

#include "vmm/kvmm/config.h"

/* kvmm's version, as GET / reports it and vmstate files record it. */
#define KVMM_VMM_VERSION "0.1.0"

/* A client that has begun a request must finish it within this time, and
 * each response must be taken within it, or the connection is dropped. */
#define KVMM_API_IO_TIMEOUT_MS 5000
/* An idle keep-alive connection is closed after this, or at once when
 * another client is waiting (the server serves one connection at a time). */
#define KVMM_API_IDLE_TIMEOUT_MS 30000

struct kvmm_api;

/* What the API asks of the VM.  Both callbacks run on the API thread, one at a
 * time (the only thread touching |cfg| meanwhile); each writes a reason into
 * |<err, errlen>| when it fails, which the client receives as Firecracker's
 * {"fault_message": ...} with status 400. */
struct kvmm_api_hooks {
	void *ctx;
	/* Required: PUT /actions {"action_type": "InstanceStart"}.  |cfg| has
	 * passed kvmm_config_validate(); boot it (kvmm_vm_create, then
	 * kvmm_vm_start) and return 0, or -errno.  After 0 the API refuses
	 * pre-boot changes and reports "Running"; after an error it stays in
	 * "Not started" and the client may fix the config and try again. */
	int (*instance_start)(void *ctx, const struct kvmm_config *cfg, char *err, size_t errlen);
	/* Required: {"action_type": "SendCtrlAltDel"}, only once running.
	 * 0 or -errno. */
	int (*send_ctrl_alt_del)(void *ctx, char *err, size_t errlen);
	/* Optional (NULL = 400): PATCH /vm {"state": "Paused"|"Resumed"}, only
	 * once running: |pause| true parks the VM, false lets it run.  0 or
	 * -errno. */
	int (*set_paused)(void *ctx, bool pause, char *err, size_t errlen);
	/* Optional (NULL = 400): PUT /snapshot/create of a Full snapshot, only
	 * while paused: write the VM state to |snapshot_path| and guest RAM to
	 * |mem_file_path| (kvmm_vm_snapshot_create()).  0 or -errno. */
	int (*snapshot_create)(void *ctx, const char *snapshot_path, const char *mem_file_path, char *err,
			       size_t errlen);
	/* Optional (NULL = 400): PUT /snapshot/load, only on a fresh API (no VM,
	 * nothing configured): build the VM from |snapshot_path| with memory
	 * from |backend_path| ("File": the memory file; "Uffd": the handler's
	 * socket) and the paths of |ov| (checked by the API: no empty or
	 * repeated drive_id; each field still to be checked against the
	 * snapshot), replace |cfg| with the snapshot's configuration, and start
	 * it, running if |resume| or else paused (kvmm_vm_restore()).  0 or
	 * -errno with |cfg| unchanged and nothing running. */
	int (*snapshot_load)(void *ctx, struct kvmm_config *cfg, const char *snapshot_path, bool uffd,
			     const char *backend_path, const struct kvmm_restore_overrides *ov, bool resume, char *err,
			     size_t errlen);
	/* Optional (false = off): once the VM runs, the API thread installs
	 * kvmm_seccomp_apply(KVMM_THREAD_API) on itself, so the callbacks must
	 * from then on need nothing outside that allowlist (send_ctrl_alt_del:
	 * write(2) on an eventfd or KVM_IRQ_LINE on the VM fd). */
	bool seccomp;
};

/* Serve Firecracker's API on a unix socket at |sock_path| (created with mode
 * 0600; an existing socket file there is replaced, any other file is an error)
 * on a new thread, editing |cfg| (initialised by the caller, possibly loaded
 * from a config file already) as PUT requests arrive.  From this call until
 * kvmm_api_stop() returns, |cfg| belongs to the API: the caller reads it only
 * inside a hook.  |hooks| is copied.  Requests served:
 *   GET /                   {"id", "state" ("Not started"/"Running"/"Paused"), "vmm_version", "app_name"}
 *   GET /machine-config     {"vcpu_count", "mem_size_mib", "smt", "track_dirty_pages", "huge_pages"}
 *   GET /vm/config          the whole config, as kvmm_config_to_json()
 *   PUT /machine-config, /boot-source, /drives/{id}, /vsock   pre-boot only, 204
 *   PUT /actions            InstanceStart, SendCtrlAltDel (FlushMetrics: 400, no metrics)
 *   PATCH /vm               {"state": "Paused"|"Resumed"}, once running, 204
 *   PUT /snapshot/create    {"snapshot_type": "Full" (default; "Diff" refused), "snapshot_path",
 *                           "mem_file_path"}, only while paused, 204
 *   PUT /snapshot/load      {"snapshot_path", "mem_backend": {"backend_type": "File"|"Uffd",
 *                           "backend_path"} or the deprecated "mem_file_path", "resume_vm",
 *                           "enable_diff_snapshots" (false only), "vsock_override": {"uds_path"}
 *                           (Firecracker's), "drive_overrides": [{"drive_id", "path_on_host"}]
 *                           (kindling's extension)}, only before anything is
 *                           configured or started, 204
 * Anything else is 400 with {"fault_message"}.  Returns 0 with |*out| set, or
 * -errno (logged: socket path too long, in use, not creatable) with nothing
 * left running. */
int kvmm_api_start(struct kvmm_api **out, const char *sock_path, struct kvmm_config *cfg,
		   const struct kvmm_api_hooks *hooks);

/* Tell the API the VM was started without it (a --config-file boot), so it
 * answers as Firecracker does after InstanceStart.  Any thread. */
void kvmm_api_set_running(struct kvmm_api *a);

/* Stop serving (the connection in progress is dropped), join the thread,
 * remove the socket file and free |a|.  Accepts NULL.  Must not be called from
 * a hook. */
void kvmm_api_stop(struct kvmm_api *a);

#endif
