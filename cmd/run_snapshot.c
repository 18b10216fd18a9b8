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
 * Taking and restoring are the snapshot component's SnapStart helpers
 * (snapshot/snapshot.h, snapstart_*), shared with the host agent; this file
 * keeps the command line's part: the snapshot's identity, the ready line,
 * --snapshot-info.
 */
#define LOG_COMPONENT "kindling"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
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
	char dir[PATH_MAX];
	bool restoring;

	/* restore */
	struct manifest m;
	char digest[65];
	struct cache *cache;
	struct snapstart_restore *restore;

	/* create */
	int out_pipe[2];
	int out_fd; /* where the workload's stdout finally goes */
	pthread_t out_thread;
	bool out_started;
	pthread_mutex_t lock;
	struct sandbox_vm *vm; /* from on_ready; NULL once sandbox_run() returned */
	bool imported;
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
	struct snapstart_restore_options ro = { .cache = s->cache, .store = s->ctx.store, .m = &s->m,
						.digest = s->digest, .name = s->opt.ref, .dir = s->dir,
						.prefetch = s->opt.prefetch, .stop_fd = -1,
						.host_mem = { .dir = s->opt.host_mem_dir,
							      .max_bytes = s->opt.host_mem_size },
						.host_mem_off = s->opt.host_mem_off };
	return snapstart_restore_start(&ro, &s->restore);
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
 * runs), then import; the run goes on whatever happens. */
static void take_snapshot(struct run_snapshot *s)
{
	struct snapshot_import_options io = { .name_tag = s->opt.ref, .from_image = s->opt.image,
					      .config = s->opt.identity };
	if (snapstart_take(&s->ctx, &s->lock, &s->vm, s->dir, &io, &s->rep, &s->snapshot_at) < 0) {
		fprintf(stderr, "kindling run: snapshot %s: none was stored (see above); the run goes on without "
			"it\n", s->opt.ref);
		return;
	}
	s->imported = true;
	fprintf(stderr, "kindling run: snapshot %s taken at the workload's first line and stored (%llu new "
		"chunks)\n", s->opt.ref, (unsigned long long)s->rep.chunks_new);
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
	s->out_pipe[0] = s->out_pipe[1] = -1;
	pthread_mutex_init(&s->lock, NULL);
	*out = s;
	int r = snapstart_workdir("kindling-snap", s->dir, sizeof(s->dir));
	if (r < 0)
		return r;
	struct store_options sopt = { .must_exist = true };
	r = chunkify_ctx_init(&s->ctx, opt->store_uri, &sopt);
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
		snapstart_restore_arm(s->restore, spec);
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

/* Tell the user which tier served the restored memory (the memory server's
 * report |mem|): a restore from the host memory tier is the fast one, and a
 * slow restore that fetched everything says so here. */
static void say_served(const struct run_snapshot *s, json_t *mem)
{
	json_t *chunks = json_object_get(mem, "chunks");
	json_int_t host = json_integer_value(json_object_get(chunks, "host")), fetched = 0;
	const char *tiers[] = { "mem", "l1", "l2", "l3" };
	for (size_t i = 0; i < sizeof(tiers) / sizeof(tiers[0]); i++)
		fetched += json_integer_value(json_object_get(chunks, tiers[i]));
	const char *by = json_string_value(json_object_get(mem, "served_by"));
	const char *tier = json_string_value(json_object_get(mem, "host_mem"));
	fprintf(stderr, "kindling run: snapshot %s restored; memory served by %s: %lld chunks from the host memory "
		"tier (%s), %lld fetched through the cache\n", s->opt.ref, by ? by : "?", (long long)host,
		tier ? tier : "off", (long long)fetched);
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
	if (s->restore && snapstart_restore_finish(s->restore, run_result, &srv_report) < 0) {
		fprintf(stderr, "kindling run: the restore of snapshot %s failed: its memory could not be served "
			"(see above); the VM was stopped\n", s->opt.ref);
		r = -EIO;
	}
	json_t *mem = srv_report ? json_loads(srv_report, 0, NULL) : NULL;
	if (mem && r == 0)
		say_served(s, mem);
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
	if (mem)
		json_object_set_new(j, "memory", json_incref(mem));
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
	json_decref(mem);
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
	for (int i = 0; i < 2; i++)
		if (s->out_pipe[i] >= 0)
			close(s->out_pipe[i]);
	snapstart_restore_free(s->restore);
	cache_free(s->cache);
	manifest_cleanup(&s->m);
	if (s->ctx_open)
		chunkify_ctx_cleanup(&s->ctx);
	snapstart_workdir_remove(s->dir);
	pthread_mutex_destroy(&s->lock);
	free(s);
}
