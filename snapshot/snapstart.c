/* SnapStart: a running micro-VM's snapshot into the store, and a restore
 * through a memory server on a thread.  Shared by `kindling run --snapshot`
 * (cmd/run_snapshot.c) and the host agent's SnapStart functions
 * (placement/hostagent/).  The sandbox knows kvmm and files; this file knows
 * stores and chunks. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sandbox/sandbox.h"

#define VMSTATE_FILE "vm.vmstate"
#define MEM_FILE "vm.mem"
#define UFFD_FILE "uffd.sock"

int snapstart_workdir(const char *what, char *dir, size_t len)
{
	const char *tmp = getenv("TMPDIR");
	snprintf(dir, len, "%s/%s.XXXXXX", tmp && *tmp ? tmp : "/tmp", what);
	if (!mkdtemp(dir)) {
		int e = errno;
		log_err("cannot create a directory %s for a snapshot's files: %s (set TMPDIR to a writable directory)",
			dir, strerror(e));
		dir[0] = '\0';
		return -e;
	}
	return 0;
}

void snapstart_workdir_remove(const char *dir)
{
	if (!dir || !dir[0])
		return;
	static const char *const files[] = { VMSTATE_FILE, MEM_FILE, UFFD_FILE };
	char p[PATH_MAX];
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		snprintf(p, sizeof(p), "%s/%s", dir, files[i]);
		unlink(p);
	}
	if (rmdir(dir) < 0)
		log_warn("cannot remove %s: %s", dir, strerror(errno));
}

int snapstart_take(struct chunkify_ctx *c, pthread_mutex_t *lock, struct sandbox_vm *const *vm, const char *dir,
		   const struct snapshot_import_options *opt, struct import_report *rep, double *out_snapshot_at)
{
	char vmstate[PATH_MAX], mem[PATH_MAX];
	snprintf(vmstate, sizeof(vmstate), "%s/%s", dir, VMSTATE_FILE);
	snprintf(mem, sizeof(mem), "%s/%s", dir, MEM_FILE);
	pthread_mutex_lock(lock);
	int r = *vm ? sandbox_vm_snapshot(*vm, vmstate, mem) : -ESRCH;
	pthread_mutex_unlock(lock);
	if (out_snapshot_at)
		*out_snapshot_at = now_seconds();
	if (r < 0) {
		log_err("snapshot %s: taking the snapshot of the VM failed (%s)%s", opt->name_tag, strerror(-r),
			r == -ESRCH ? ": the VM had already ended" : "");
		goto out;
	}
	struct snapshot_import_options io = *opt;
	io.mem_path = mem;
	io.vmstate_path = vmstate;
	if ((r = snapshot_import(c, &io, rep)) < 0)
		log_err("snapshot %s: importing it into the store %s failed (%s)", opt->name_tag,
			store_describe(c->store), strerror(-r));
out:
	unlink(mem);
	unlink(vmstate);
	return r;
}

/* ---- restore ---------------------------------------------------------------------------------------------- */

struct snapstart_restore {
	struct snapshot_server *srv;
	struct sandbox_restore rs;
	char name[512], vmstate[PATH_MAX], uffd[PATH_MAX];
	pthread_t thread;
	bool started;
	volatile int cancel;
	int result;
	int stop_fd;	     /* where a failure is signalled */
	int own_stop[2];     /* the pipe when the caller gave none */
};

static void *serve_main(void *arg)
{
	struct snapstart_restore *r = arg;
	r->result = snapshot_server_run(r->srv, &r->cancel);
	if (r->result < 0 && r->result != -EINTR) {
		log_err("snapshot %s: serving the guest's memory failed (%s); stopping the VM", r->name,
			strerror(-r->result));
		uint64_t one = 1;
		if (write(r->stop_fd, &one, sizeof(one)) < 0)
			log_warn("snapshot %s: cannot stop the sandbox: %s", r->name, strerror(errno));
	}
	return NULL;
}

int snapstart_restore_start(const struct snapstart_restore_options *o, struct snapstart_restore **out)
{
	*out = NULL;
	struct snapstart_restore *r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->own_stop[0] = r->own_stop[1] = -1;
	snprintf(r->name, sizeof(r->name), "%s", o->name);
	snprintf(r->vmstate, sizeof(r->vmstate), "%s/%s", o->dir, VMSTATE_FILE);
	snprintf(r->uffd, sizeof(r->uffd), "%s/%s", o->dir, UFFD_FILE);
	int e;
	if (o->stop_fd < 0) {
		if (pipe2(r->own_stop, O_CLOEXEC) < 0) {
			e = -errno;
			log_err("snapshot %s: pipe: %s", o->name, strerror(-e));
			goto fail;
		}
		r->stop_fd = r->own_stop[1];
	} else
		r->stop_fd = o->stop_fd;
	struct snapshot_serve_options so = { .socket_path = r->uffd, .vmstate_out = r->vmstate,
					     .prefetch = o->prefetch,
					     .host_mem = o->host_mem };
	char *default_dir = NULL;
	if (o->host_mem_off)
		so.host_mem.dir = NULL;
	else if (!so.host_mem.dir && !(so.host_mem.dir = default_dir = snapshot_hostmem_default_dir()))
		log_warn("snapshot %s: no memory for the host memory tier's directory name; restoring without it",
			 o->name);
	/* The server opens the tier's file in snapshot_server_new and keeps no
	 * pointer to the directory's name. */
	e = snapshot_server_new(o->cache, o->store, o->m, o->digest, o->name, &so, &r->srv);
	free(default_dir);
	if (e < 0)
		goto fail;
	if ((e = pthread_create(&r->thread, NULL, serve_main, r)) != 0) {
		log_err("snapshot %s: cannot start the memory server's thread: %s", o->name, strerror(e));
		e = -e;
		goto fail;
	}
	r->started = true;
	r->rs = (struct sandbox_restore){ .vmstate_path = r->vmstate, .mem_uffd_socket = r->uffd };
	*out = r;
	return 0;
fail:
	snapstart_restore_free(r);
	return e;
}

void snapstart_restore_arm(struct snapstart_restore *r, struct sandbox_spec *spec)
{
	spec->restore = &r->rs;
	if (r->own_stop[0] >= 0)
		spec->stop_fd = r->own_stop[0];
}

int snapstart_restore_finish(struct snapstart_restore *r, int run_result, char **report)
{
	if (report)
		*report = NULL;
	if (r->started) {
		if (run_result < 0)
			r->cancel = 1; /* the VM never connected, or is gone */
		pthread_join(r->thread, NULL);
		r->started = false;
	}
	if (report)
		*report = snapshot_server_report(r->srv);
	return r->result < 0 && r->result != -EINTR ? -EIO : 0;
}

void snapstart_restore_free(struct snapstart_restore *r)
{
	if (!r)
		return;
	if (r->started) {
		r->cancel = 1;
		pthread_join(r->thread, NULL);
	}
	for (int i = 0; i < 2; i++)
		if (r->own_stop[i] >= 0)
			close(r->own_stop[i]);
	snapshot_server_free(r->srv);
	free(r);
}
