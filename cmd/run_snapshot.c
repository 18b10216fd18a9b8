/* kindling run --snapshot NAME[:TAG]: restore a micro-VM from a snapshot in
 * the store, or boot one and take that snapshot when the workload is ready.
 *
 *   NAME in the store, taken from IMAGE for the same invocation (the command,
 *   its environment, working directory and user, recorded as the snapshot
 *   manifest's run configuration):
 *       a snapshot server (snapshot/snapshot.h) writes the vmstate out and
 *       serves the guest's memory from the chunks, through the run's cache,
 *       on a thread; the micro-VM sandbox restores from its socket.  A server
 *       that fails (a chunk no tier can produce verified) stops the sandbox
 *       through its stop_fd: no VM runs on without its memory.
 *   NAME not in the store:
 *       the sandbox boots; the workload's stdout passes through a pipe, and
 *       at its first complete line ("ready") the VM is paused, snapshotted
 *       (sandbox_vm_snapshot) and resumed, the snapshot imported as NAME
 *       (snapshot_import, from IMAGE, with the invocation as its run
 *       configuration), and the run carries on.
 *
 * The sandbox knows kvmm and files; this file knows stores and chunks.
 */
#define LOG_COMPONENT "kindling"
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/cache.h"
#include "chunker/chunker.h"
#include "cmd/commands.h"
#include "common/common.h"
#include "snapshot/snapshot.h"

struct run_snapshot {
	struct run_snapshot_options opt;
	struct chunkify_ctx ctx;
	bool ctx_open;
	char dir[256], vmstate[300], mem[300], uffd[300];
	bool restoring;

	/* restore */
	struct manifest m;
	char digest[65];
	struct cache *cache;
	struct snapshot_server *srv;
	struct sandbox_restore rs;
	pthread_t srv_thread;
	bool srv_started;
	volatile int cancel;
	int srv_result;
	int stop[2]; /* the server's failure -> the sandbox's stop_fd */

	/* create */
	int out_pipe[2];
	int out_fd; /* where the workload's stdout finally goes */
	pthread_t out_thread;
	bool out_started;
	pthread_mutex_t lock;
	struct sandbox_vm *vm; /* from on_ready; NULL once sandbox_run() returned */
	bool snapshot_taken, imported;
	int snapshot_result; /* 0, -errno, or 1 when never tried */
	struct import_report rep;
	double snapshot_at;
};

/* ---- the invocation's identity --------------------------------------------------------------------------- */

static size_t list_len(char *const *l)
{
	size_t n = 0;
	while (l && l[n])
		n++;
	return n;
}

/* |a| (then |a2|) against |b| (then |b2|), as one list. */
static bool lists_equal(char *const *a, char *const *a2, char *const *b, char *const *b2)
{
	size_t na = list_len(a), nb = list_len(b);
	if (na + list_len(a2) != nb + list_len(b2))
		return false;
	for (size_t i = 0; i < na + list_len(a2); i++) {
		const char *x = i < na ? a[i] : a2[i - na], *y = i < nb ? b[i] : b2[i - nb];
		if (strcmp(x, y) != 0)
			return false;
	}
	return true;
}

static const char *or_empty(const char *s) { return s ? s : ""; }

/* |l| then |l2| joined by spaces into |<out, len>| (cut to fit), for a message. */
static void join(char *out, size_t len, char *const *l, char *const *l2)
{
	size_t n = list_len(l), n2 = list_len(l2);
	out[0] = '\0';
	for (size_t i = 0; i < n + n2; i++) {
		size_t have = strlen(out);
		snprintf(out + have, len - have, "%s%s", i ? " " : "", i < n ? l[i] : l2[i - n]);
	}
}

/* Whether snapshot |m| was taken of this invocation of |image_digest|; if
 * not, a log line naming what differs.  The command compares as the
 * entrypoint followed by the cmd, so a snapshot `chunkify snapshot-import`
 * recorded with the image's own configuration matches a run of the image's
 * own command. */
static int check_identity(const struct run_snapshot *s, const char *image_digest)
{
	const struct run_config *want = s->opt.identity, *got = &s->m.config;
	const char *what = NULL;
	if (strcmp(s->m.snapshot.image_digest, image_digest) != 0) {
		log_err("snapshot %s was taken from image %.12s, and this run's image %s is %.12s: restore it with "
			"that image, or take a new snapshot under another name",
			s->opt.ref, s->m.snapshot.image_digest, s->opt.image, image_digest);
		return -EINVAL;
	}
	if (!lists_equal(got->entrypoint, got->cmd, want->entrypoint, want->cmd))
		what = "the command";
	else if (!lists_equal(got->env, NULL, want->env, NULL))
		what = "the environment";
	else if (strcmp(or_empty(got->working_dir), or_empty(want->working_dir)) != 0)
		what = "the working directory";
	else if (strcmp(or_empty(got->user), or_empty(want->user)) != 0)
		what = "the user";
	if (what) {
		char a[256] = "", b[256] = "";
		if (strcmp(what, "the command") == 0) {
			join(a, sizeof(a), got->entrypoint, got->cmd);
			join(b, sizeof(b), want->entrypoint, want->cmd);
		} else if (strcmp(what, "the environment") == 0) {
			join(a, sizeof(a), got->env, NULL);
			join(b, sizeof(b), want->env, NULL);
		} else if (strcmp(what, "the working directory") == 0) {
			snprintf(a, sizeof(a), "%s", or_empty(got->working_dir));
			snprintf(b, sizeof(b), "%s", or_empty(want->working_dir));
		} else {
			snprintf(a, sizeof(a), "%s", or_empty(got->user));
			snprintf(b, sizeof(b), "%s", or_empty(want->user));
		}
		log_err("snapshot %s was taken of another invocation of %s: %s differs (snapshot: [%s], this run: "
			"[%s]); run the snapshot's invocation, or take a new snapshot under another name",
			s->opt.ref, s->opt.image, what, a, b);
		return -EINVAL;
	}
	return 0;
}

/* ---- restore --------------------------------------------------------------------------------------------- */

static void *serve_main(void *arg)
{
	struct run_snapshot *s = arg;
	s->srv_result = snapshot_server_run(s->srv, &s->cancel);
	if (s->srv_result < 0 && s->srv_result != -EINTR) {
		log_err("snapshot %s: serving the guest's memory failed (%s); stopping the VM", s->opt.ref,
			strerror(-s->srv_result));
		if (write(s->stop[1], "x", 1) < 0)
			log_warn("snapshot %s: cannot stop the sandbox: %s", s->opt.ref, strerror(errno));
	}
	return NULL;
}

static int prepare_restore(struct run_snapshot *s)
{
	char image_digest[65];
	int r = snapshot_load(s->ctx.store, s->opt.ref, s->ctx.env.tenant_key, s->digest, &s->m);
	if (r < 0)
		return r;
	if ((r = image_resolve(s->ctx.store, s->opt.image, s->ctx.env.tenant_key, image_digest)) < 0 ||
	    (r = check_identity(s, image_digest)) < 0)
		return r;
	struct store_options sopt = { .must_exist = true };
	struct cache_config cc = {
		.origin_uri = s->opt.store_uri,
		.origin_options = &sopt,
		.l1_dir = s->opt.l1_dir,
		.l1_max_bytes = s->opt.l1_size,
		.l2_nodes = s->opt.l2,
		.n_l2_nodes = s->opt.n_l2,
		.salt = s->ctx.env.salt,
		.salt_len = s->ctx.env.salt_len,
	};
	if ((r = cache_new(&cc, &s->cache)) < 0)
		return r;
	struct snapshot_serve_options so = { .socket_path = s->uffd, .vmstate_out = s->vmstate,
					     .prefetch = s->opt.prefetch };
	if ((r = snapshot_server_new(s->cache, s->ctx.store, &s->m, s->digest, s->opt.ref, &so, &s->srv)) < 0)
		return r;
	if (pipe2(s->stop, O_CLOEXEC) < 0) {
		r = -errno;
		log_err("snapshot %s: pipe: %s", s->opt.ref, strerror(-r));
		return r;
	}
	if ((r = pthread_create(&s->srv_thread, NULL, serve_main, s)) != 0) {
		log_err("snapshot %s: cannot start the memory server's thread: %s", s->opt.ref, strerror(r));
		return -r;
	}
	s->srv_started = true;
	s->rs = (struct sandbox_restore){ .vmstate_path = s->vmstate, .mem_uffd_socket = s->uffd };
	return 0;
}

/* ---- create ---------------------------------------------------------------------------------------------- */

static int on_ready(void *arg, const struct sandbox_ready *rd)
{
	struct run_snapshot *s = arg;
	pthread_mutex_lock(&s->lock);
	s->vm = rd->vm;
	pthread_mutex_unlock(&s->lock);
	return 0;
}

/* At the first complete stdout line: snapshot (while the sandbox still
 * runs), then import. */
static void take_snapshot(struct run_snapshot *s)
{
	pthread_mutex_lock(&s->lock);
	s->snapshot_result = s->vm ? sandbox_vm_snapshot(s->vm, s->vmstate, s->mem) : -ESRCH;
	pthread_mutex_unlock(&s->lock);
	s->snapshot_at = now_seconds();
	if (s->snapshot_result < 0) {
		log_err("snapshot %s: the workload became ready but no snapshot could be taken (%s); the run goes on "
			"without one", s->opt.ref, strerror(-s->snapshot_result));
		return;
	}
	s->snapshot_taken = true;
	struct snapshot_import_options io = { .name_tag = s->opt.ref, .mem_path = s->mem, .vmstate_path = s->vmstate,
					      .from_image = s->opt.image, .config = s->opt.identity };
	int r = snapshot_import(&s->ctx, &io, &s->rep);
	if (r < 0) {
		log_err("snapshot %s: importing it into the store failed (%s); the run goes on without it",
			s->opt.ref, strerror(-r));
		s->snapshot_result = r;
	} else {
		s->imported = true;
		fprintf(stderr, "kindling run: snapshot %s taken at the workload's first line and stored (%llu new "
			"chunks)\n", s->opt.ref, (unsigned long long)s->rep.chunks_new);
	}
	unlink(s->mem);
	unlink(s->vmstate);
}

static void *out_main(void *arg)
{
	struct run_snapshot *s = arg;
	char buf[65536];
	bool ready = false, out_failed = false;
	for (;;) {
		ssize_t n = read(s->out_pipe[0], buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		size_t upto = (size_t)n;
		const char *nl = ready ? NULL : memchr(buf, '\n', (size_t)n);
		if (nl)
			upto = (size_t)(nl - buf) + 1;
		if (!out_failed && write_full(s->out_fd, buf, upto) < 0)
			out_failed = true;
		if (nl) {
			ready = true;
			take_snapshot(s);
			if (!out_failed && upto < (size_t)n && write_full(s->out_fd, buf + upto, (size_t)n - upto) < 0)
				out_failed = true;
		}
	}
	if (!ready)
		log_warn("snapshot %s: the workload ended before its first line, so no snapshot was taken",
			 s->opt.ref);
	return NULL;
}

/* ---- the run --------------------------------------------------------------------------------------------- */

int run_snapshot_new(const struct run_snapshot_options *opt, struct run_snapshot **out)
{
	struct run_snapshot *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->opt = *opt;
	s->stop[0] = s->stop[1] = s->out_pipe[0] = s->out_pipe[1] = -1;
	s->snapshot_result = 1;
	pthread_mutex_init(&s->lock, NULL);
	*out = s;
	const char *tmp = getenv("TMPDIR");
	snprintf(s->dir, sizeof(s->dir), "%s/kindling-snap.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(s->dir)) {
		int e = errno;
		log_err("--snapshot: cannot create a directory %s: %s (set TMPDIR to a writable directory)", s->dir,
			strerror(e));
		s->dir[0] = '\0';
		return -e;
	}
	snprintf(s->vmstate, sizeof(s->vmstate), "%s/vm.vmstate", s->dir);
	snprintf(s->mem, sizeof(s->mem), "%s/vm.mem", s->dir);
	snprintf(s->uffd, sizeof(s->uffd), "%s/uffd.sock", s->dir);
	struct store_options sopt = { .must_exist = true };
	int r = chunkify_ctx_init(&s->ctx, opt->store_uri, &sopt);
	if (r < 0)
		return r;
	s->ctx_open = true;

	/* Whether NAME is there, without an error for "no". */
	char nt[512], key[600];
	if ((r = image_parse_name_tag(opt->ref, nt, sizeof(nt))) < 0) {
		log_err("--snapshot %s: not a NAME[:TAG]", opt->ref);
		return r;
	}
	snprintf(key, sizeof(key), "refs/%s", nt);
	const char *keys[] = { key };
	bool exists = false;
	if ((r = store_exists_batch(s->ctx.store, keys, 1, &exists)) < 0) {
		log_err("--snapshot %s: cannot look it up in %s: %s", opt->ref, store_describe(s->ctx.store),
			strerror(-r));
		return r;
	}
	s->restoring = exists;
	return exists ? prepare_restore(s) : 0;
}

bool run_snapshot_restoring(const struct run_snapshot *s) { return s->restoring; }

int run_snapshot_arm(struct run_snapshot *s, struct sandbox_spec *spec)
{
	if (s->restoring) {
		spec->restore = &s->rs;
		spec->stop_fd = s->stop[0];
		return 0;
	}
	if (pipe2(s->out_pipe, O_CLOEXEC) < 0) {
		int e = errno;
		log_err("--snapshot: pipe: %s", strerror(e));
		return -e;
	}
	s->out_fd = spec->out_fd;
	spec->out_fd = s->out_pipe[1];
	spec->on_ready = on_ready;
	spec->ready_arg = s;
	int r = pthread_create(&s->out_thread, NULL, out_main, s);
	if (r != 0) {
		log_err("--snapshot: cannot start the output thread: %s", strerror(r));
		return -r;
	}
	s->out_started = true;
	return 0;
}

int run_snapshot_finish(struct run_snapshot *s, int run_result, const struct sandbox_result *res, double t0,
			const char *info_path)
{
	int r = 0;
	pthread_mutex_lock(&s->lock);
	s->vm = NULL; /* sandbox_run() has returned: the handle is gone */
	pthread_mutex_unlock(&s->lock);
	if (s->out_started) {
		close(s->out_pipe[1]);
		s->out_pipe[1] = -1;
		pthread_join(s->out_thread, NULL);
		s->out_started = false;
	}
	char *srv_report = NULL;
	if (s->srv_started) {
		if (run_result < 0)
			s->cancel = 1; /* the VM never connected, or is gone */
		pthread_join(s->srv_thread, NULL);
		s->srv_started = false;
		srv_report = snapshot_server_report(s->srv);
		if (s->srv_result < 0 && s->srv_result != -EINTR) {
			fprintf(stderr, "kindling run: the restore of snapshot %s failed: its memory could not be served "
				"(%s; see above); the VM was stopped\n", s->opt.ref, strerror(-s->srv_result));
			r = -EIO;
		}
	}
	if (!info_path)
		goto out;
	json_t *j = json_pack("{s:s, s:s}", "snapshot", s->opt.ref, "action",
			      s->restoring ? "restored" : s->imported ? "created" : "none");
	if (!j)
		goto out;
	if (run_result == 0) {
		json_object_set_new(j, "first_output_ms",
				    json_real(res->first_output_s >= 0 ? res->first_output_s * 1000 : -1));
		json_object_set_new(j, "exit_ms", json_real(res->exit_s * 1000));
		if (s->restoring)
			json_object_set_new(j, "restored_ms",
					    json_real(res->restored_s >= 0 ? res->restored_s * 1000 : -1));
	}
	if (srv_report)
		json_object_set_new(j, "memory", json_loads(srv_report, 0, NULL));
	if (s->imported) {
		json_object_set_new(j, "snapshot_ms", json_real((s->snapshot_at - t0) * 1000));
		json_object_set_new(j, "import", json_pack("{s:s, s:I, s:I, s:I, s:I}", "manifest",
							   s->rep.manifest_digest, "chunks_total",
							   (json_int_t)s->rep.chunks_total, "chunks_new",
							   (json_int_t)s->rep.chunks_new, "chunks_zero",
							   (json_int_t)s->rep.chunks_zero, "bytes_uploaded",
							   (json_int_t)s->rep.bytes_uploaded));
	}
	if (json_dump_file(j, info_path, JSON_INDENT(1) | JSON_PRESERVE_ORDER) < 0)
		log_warn("--snapshot-info %s: cannot write it", info_path);
	json_decref(j);
out:
	free(srv_report);
	return r;
}

void run_snapshot_free(struct run_snapshot *s)
{
	if (!s)
		return;
	if (s->out_started) {
		close(s->out_pipe[1]);
		s->out_pipe[1] = -1;
		pthread_join(s->out_thread, NULL);
	}
	if (s->srv_started) {
		s->cancel = 1;
		pthread_join(s->srv_thread, NULL);
	}
	for (int i = 0; i < 2; i++) {
		if (s->stop[i] >= 0)
			close(s->stop[i]);
		if (s->out_pipe[i] >= 0)
			close(s->out_pipe[i]);
	}
	snapshot_server_free(s->srv);
	cache_free(s->cache);
	manifest_cleanup(&s->m);
	if (s->ctx_open)
		chunkify_ctx_cleanup(&s->ctx);
	if (s->dir[0]) {
		unlink(s->vmstate);
		unlink(s->mem);
		unlink(s->uffd);
		if (rmdir(s->dir) < 0)
			log_warn("--snapshot: cannot remove %s: %s", s->dir, strerror(errno));
	}
	pthread_mutex_destroy(&s->lock);
	free(s);
}
