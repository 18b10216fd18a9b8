/* kvmm's API server with hooks that record instead of booting, so an
 * integration test can drive the real API code with curl on a host without
 * /dev/kvm and see exactly what a VM would have been given.
 *
 *   kvmm_api_server SOCKET CALLS_LOG [--config-file FILE] [--fail-start MESSAGE]
 *
 * Each hook call appends one line to CALLS_LOG:
 *   instance_start vcpus=N mem_mib=N kernel=PATH initrd=PATH|- args=ARGS|-
 *       drives=ID:PATH:root|data,... vsock=CID:PATH|-
 *   send_ctrl_alt_del
 *   set_paused Paused|Resumed
 *   snapshot_create SNAPSHOT_PATH MEM_FILE_PATH
 *   snapshot_load SNAPSHOT_PATH File|Uffd BACKEND_PATH resume=0|1 [vsock=UDS] [drive=ID:PATH]...
 * A snapshot_load that names a SNAPSHOT_PATH that does not exist fails with
 * the path in its message, as kvmm's would.
 * --fail-start makes the first InstanceStart fail with MESSAGE.
 * --config-file loads and validates FILE first and reports the VM as running,
 * as kvmm does when booted from a file.  Runs until SIGTERM or SIGINT; exits 0
 * after a clean stop. */
#define LOG_COMPONENT "kvmm_api_server"
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/common.h"
#include "vmm/kvmm/api.h"
#include "vmm/kvmm/config.h"

struct recorder {
	const char *log_path;
	const char *fail_msg; /* NULL once used */
};

static int record(const struct recorder *rec, const char *line)
{
	FILE *f = fopen(rec->log_path, "a");
	if (!f)
		return -errno;
	fprintf(f, "%s\n", line);
	return fclose(f) == 0 ? 0 : -errno;
}

static int hook_start(void *ctx, const struct kvmm_config *cfg, char *err, size_t errlen)
{
	struct recorder *rec = ctx;
	if (rec->fail_msg) {
		snprintf(err, errlen, "%s", rec->fail_msg);
		rec->fail_msg = NULL;
		return -EIO;
	}
	char drives[4096] = "", line[8192];
	size_t n = 0;
	for (size_t i = 0; i < cfg->n_drives && n < sizeof(drives); i++)
		n += (size_t)snprintf(drives + n, sizeof(drives) - n, "%s%s:%s:%s", i ? "," : "", cfg->drives[i].drive_id,
				      cfg->drives[i].path_on_host, cfg->drives[i].is_root_device ? "root" : "data");
	char vsock[200] = "-";
	if (cfg->has_vsock)
		snprintf(vsock, sizeof(vsock), "%u:%s", cfg->guest_cid, cfg->vsock_uds_path);
	snprintf(line, sizeof(line), "instance_start vcpus=%u mem_mib=%u kernel=%s initrd=%s args=%s drives=%s vsock=%s",
		 cfg->vcpu_count, cfg->mem_size_mib, cfg->kernel_image_path, cfg->initrd_path ? cfg->initrd_path : "-",
		 cfg->boot_args ? cfg->boot_args : "-", n ? drives : "-", vsock);
	int r = record(rec, line);
	if (r < 0)
		snprintf(err, errlen, "cannot record the call in %s: %s", rec->log_path, strerror(-r));
	return r;
}

static int hook_cad(void *ctx, char *err, size_t errlen)
{
	int r = record(ctx, "send_ctrl_alt_del");
	if (r < 0)
		snprintf(err, errlen, "cannot record the call: %s", strerror(-r));
	return r;
}

static int hook_paused(void *ctx, bool pause, char *err, size_t errlen)
{
	int r = record(ctx, pause ? "set_paused Paused" : "set_paused Resumed");
	if (r < 0)
		snprintf(err, errlen, "cannot record the call: %s", strerror(-r));
	return r;
}

static int hook_snap_create(void *ctx, const char *path, const char *mem, char *err, size_t errlen)
{
	char line[8192];
	snprintf(line, sizeof(line), "snapshot_create %s %s", path, mem);
	int r = record(ctx, line);
	if (r < 0)
		snprintf(err, errlen, "cannot record the call: %s", strerror(-r));
	return r;
}

static int hook_snap_load(void *ctx, struct kvmm_config *cfg, const char *path, bool uffd, const char *backend,
			  const struct kvmm_restore_overrides *ov, bool resume, char *err, size_t errlen)
{
	(void)cfg;
	if (access(path, F_OK) < 0) {
		int e = errno;
		snprintf(err, errlen, "snapshot_path %s: %s", path, strerror(e));
		return -e;
	}
	char line[8192];
	int n = snprintf(line, sizeof(line), "snapshot_load %s %s %s resume=%d", path, uffd ? "Uffd" : "File",
			 backend, resume);
	if (ov->vsock_uds_path)
		n += snprintf(line + n, sizeof(line) - (size_t)n, " vsock=%s", ov->vsock_uds_path);
	for (size_t i = 0; i < ov->n_drives && (size_t)n < sizeof(line); i++)
		n += snprintf(line + n, sizeof(line) - (size_t)n, " drive=%s:%s", ov->drives[i].drive_id,
			      ov->drives[i].path_on_host);
	int r = record(ctx, line);
	if (r < 0)
		snprintf(err, errlen, "cannot record the call: %s", strerror(-r));
	return r;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: kvmm_api_server SOCKET CALLS_LOG [--config-file FILE] [--fail-start MESSAGE]\n");
		return 2;
	}
	struct recorder rec = {.log_path = argv[2]};
	const char *config_file = NULL;
	for (int i = 3; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--fail-start") == 0)
			rec.fail_msg = argv[i + 1];
		else if (strcmp(argv[i], "--config-file") == 0)
			config_file = argv[i + 1];
		else {
			fprintf(stderr, "kvmm_api_server: unknown option %s\n", argv[i]);
			return 2;
		}
	}
	/* Block the stop signals before any thread exists, then wait for them. */
	sigset_t stop;
	sigemptyset(&stop);
	sigaddset(&stop, SIGTERM);
	sigaddset(&stop, SIGINT);
	pthread_sigmask(SIG_BLOCK, &stop, NULL);

	struct kvmm_config cfg;
	kvmm_config_init(&cfg);
	char err[512];
	if (config_file && (kvmm_config_load_file(&cfg, config_file, err, sizeof(err)) < 0 ||
			    kvmm_config_validate(&cfg, err, sizeof(err)) < 0)) {
		fprintf(stderr, "kvmm_api_server: --config-file %s: %s\n", config_file, err);
		kvmm_config_free(&cfg);
		return 1;
	}
	struct kvmm_api_hooks hooks = {.ctx = &rec,
				       .instance_start = hook_start,
				       .send_ctrl_alt_del = hook_cad,
				       .set_paused = hook_paused,
				       .snapshot_create = hook_snap_create,
				       .snapshot_load = hook_snap_load};
	struct kvmm_api *api;
	if (kvmm_api_start(&api, argv[1], &cfg, &hooks) < 0) {
		kvmm_config_free(&cfg);
		return 1;
	}
	if (config_file) {
		char line[600];
		snprintf(line, sizeof(line), "booted_from_file %s", config_file);
		record(&rec, line);
		kvmm_api_set_running(api);
	}
	int sig;
	sigwait(&stop, &sig);
	kvmm_api_stop(api);
	kvmm_config_free(&cfg);
	return 0;
}
