/* The host agent: one in-process blockd with its FUSE mount, and sandboxes
 * that run function images from it.
 *
 * A sandbox in Runtime API mode is a thread of its own blocked in
 * sandbox_run(); its runtime reaches the agent through the endpoint the
 * sandbox hands over (on_ready), which rapi.c serves; stop_fd ends it.  An
 * invocation takes an idle sandbox of its function version, revision and
 * image, or starts one, hands the event over and waits on the endpoint for
 * the answer.  In plain mode each invocation runs the entrypoint once, on
 * the invoking thread.
 *
 * One mutex (a->lock) guards the pool, the image table, the provisioning
 * targets and the counters; it is never held across a sandbox start, an
 * image attach or an invocation.  Lock order: a->lock, then an endpoint's
 * lock, then a pump's, then a log file's.  A reaper thread ends idle
 * sandboxes, frees dead ones, keeps provisioned concurrency filled and
 * detaches images nobody uses. */
#include "placement/hostagent/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "blockd/blockd.h"
#include "sandbox/sandbox.h"
#include "snapshot/snapshot.h"

#define MIB (1024ull * 1024ull)

/* ---- a function, copied ------------------------------------------------------------------------------------------ */

struct fn_copy {
	struct hostagent_function f; /* points into what follows */
	char *name, *version, *arn, *digest, *revision, *working_dir, *snapshot;
	char **env, **entrypoint, **command;
};

static char **strv_dup(char *const *v)
{
	if (!v)
		return NULL;
	size_t n = 0;
	while (v[n])
		n++;
	char **o = calloc(n + 1, sizeof(*o));
	for (size_t i = 0; o && i < n; i++)
		if (!(o[i] = strdup(v[i]))) {
			strv_free(o);
			return NULL;
		}
	return o;
}

static void fn_copy_cleanup(struct fn_copy *c)
{
	free(c->name);
	free(c->version);
	free(c->arn);
	free(c->digest);
	free(c->revision);
	free(c->working_dir);
	free(c->snapshot);
	strv_free(c->env);
	strv_free(c->entrypoint);
	strv_free(c->command);
	memset(c, 0, sizeof(*c));
}

static int fn_copy_init(struct fn_copy *c, const struct hostagent_function *f)
{
	memset(c, 0, sizeof(*c));
	c->f = *f;
	bool ok = (c->name = strdup(f->name)) && (c->version = strdup(f->version)) &&
		  (c->digest = strdup(f->image_digest)) && (c->revision = strdup(f->revision_id ? f->revision_id : "")) &&
		  (!f->arn || (c->arn = strdup(f->arn))) && (!f->working_dir || (c->working_dir = strdup(f->working_dir))) &&
		  (!f->env || (c->env = strv_dup(f->env))) && (!f->entrypoint || (c->entrypoint = strv_dup(f->entrypoint))) &&
		  (!f->command || (c->command = strv_dup(f->command))) && (!f->snapshot || (c->snapshot = strdup(f->snapshot)));
	if (!ok) {
		fn_copy_cleanup(c);
		return -ENOMEM;
	}
	c->f.name = c->name;
	c->f.version = c->version;
	c->f.arn = c->arn;
	c->f.image_digest = c->digest;
	c->f.revision_id = c->revision;
	c->f.working_dir = c->working_dir;
	c->f.env = c->env;
	c->f.entrypoint = c->entrypoint;
	c->f.command = c->command;
	c->f.snapshot = c->snapshot;
	return 0;
}

static struct pool_key key_of(const struct hostagent_function *f)
{
	return (struct pool_key){ f->name, f->version, f->revision_id ? f->revision_id : "", f->image_digest };
}

/* A key's strings copied, for when their owner may go away. */
struct key_buf {
	char name[HA_NAME_MAX + 1], version[65], revision[129], digest[SHA256_HEX_LEN + 1];
};

static struct pool_key key_copy(const struct pool_key *k, struct key_buf *b)
{
	snprintf(b->name, sizeof(b->name), "%s", k->name);
	snprintf(b->version, sizeof(b->version), "%s", k->version);
	snprintf(b->revision, sizeof(b->revision), "%s", k->revision);
	snprintf(b->digest, sizeof(b->digest), "%s", k->digest);
	return (struct pool_key){ b->name, b->version, b->revision, b->digest };
}

/* ---- the agent's objects ------------------------------------------------------------------------------------------ */

enum image_state { IMG_ATTACHING, IMG_READY, IMG_DETACHING };

struct image_ref {
	char digest[SHA256_HEX_LEN + 1];
	enum image_state state;
	struct blockd_image *img;
	char *raw_path;	/* MOUNT/<image>/image.raw */
	unsigned users; /* sandboxes that hold it */
	double last_used;
	struct image_ref *next;
};

struct fn_log {
	char *name;
	struct fnlog *log;
	struct fn_log *next;
};

/* Provisioned concurrency: keep |n| initialised sandboxes of |fn|. */
struct provision {
	struct fn_copy fn;
	unsigned n;
	unsigned failures; /* starts in a row that never initialised */
	double retry_at;
	bool warned_budget;
	struct provision *next;
};

struct sandbox {
	struct pool_entry pe; /* first: the pool holds &pe; guarded by a->lock */
	struct hostagent *a;
	unsigned id;
	bool api; /* Runtime API mode, else plain */
	struct fn_copy fn;
	struct image_ref *image;
	struct fnlog *log; /* borrowed from a->logs */
	struct pump *pump;
	struct rapi *rapi;
	int stop_efd;
	int in_fd, out_w, err_w; /* sandbox_run's descriptors until it returns */
	pthread_t thread;
	bool has_thread;
	double started_at;
	char log_stream[192];
	/* guarded by a->lock */
	unsigned users; /* invocations holding it */
	bool initialised, dead;
	int run_rc;
	struct sandbox_result res;
	char memory_peak_path[PATH_MAX];
	/* SnapStart: the VM (on_ready to the end of sandbox_run), guarded by
	 * vm_lock, for hostagent_snapshot; whether it was restored. */
	pthread_mutex_t vm_lock;
	struct sandbox_vm *vm;
	bool restored, for_snapshot;
};

struct hostagent {
	pthread_mutex_t lock;
	pthread_cond_t cond;	    /* image states, the count of calls (CLOCK_MONOTONIC) */
	pthread_cond_t reaper_cond; /* wakes the reaper early */
	const struct sandbox_ops *ops;
	struct blockd *b;
	char *state_dir, *mnt, *logdir, *region, *account;
	uint64_t budget, log_max;
	double idle_timeout;
	uint16_t port;
	uint32_t pids_limit;
	struct pool pool; /* every sandbox not yet freed */
	struct image_ref *images;
	struct fn_log *logs;
	struct provision *prov;
	unsigned calls, next_id;
	bool closing;
	pthread_t reaper;
	bool has_reaper;
	uint64_t cold, warm, evictions, expirations;
	/* SnapStart (micro-VM backend only): the store snapshots go to and the
	 * cache restores read their memory through. */
	struct chunkify_ctx snap_ctx;
	bool snap_ctx_open;
	struct cache *snap_cache;
};

static struct sandbox *sb_of(struct pool_entry *e) { return (struct sandbox *)e; }

static void cond_init_mono(pthread_cond_t *c)
{
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(c, &ca);
	pthread_condattr_destroy(&ca);
}

static void timedwait(pthread_cond_t *c, pthread_mutex_t *m, double seconds)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	double t = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9 + seconds;
	ts.tv_sec = (time_t)t;
	ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
	if (ts.tv_nsec >= 1000000000L)
		ts.tv_sec++, ts.tv_nsec -= 1000000000L;
	pthread_cond_timedwait(c, m, &ts);
}

static int64_t epoch_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- validation -------------------------------------------------------------------------------------------------- */

static int check_function(const struct hostagent_function *f)
{
	const char *what = NULL;
	if (!f)
		what = "no function";
	else if (!ha_wire_name_ok(f->name))
		what = "the name must be 1 to 64 letters, digits, '-' or '_'";
	else if (!ha_token_ok(f->version, 64, false))
		what = "bad version";
	else if (!f->image_digest || !is_sha256_hex(f->image_digest))
		what = "the image must be a manifest digest of 64 lower-case hex digits";
	else if (!ha_token_ok(f->revision_id, 128, true))
		what = "bad revision id";
	else if (f->memory_mb == 0 || f->timeout_s == 0)
		what = "memory and timeout must be positive";
	else if (f->mode != HOSTAGENT_MODE_RUNTIME_API && f->mode != HOSTAGENT_MODE_STDIO)
		what = "unknown mode";
	if (what) {
		log_err("function %s: %s", f && f->name ? f->name : "?", what);
		return -EINVAL;
	}
	return 0;
}

/* ---- images and logs --------------------------------------------------------------------------------------------- */

/* Take a reference on the image |digest|, attaching it if needed (outside
 * the lock).  Returns 0 or -errno. */
static int image_get(struct hostagent *a, const char *digest, struct image_ref **out)
{
	pthread_mutex_lock(&a->lock);
	for (;;) {
		struct image_ref *ref = a->images;
		while (ref && strcmp(ref->digest, digest) != 0)
			ref = ref->next;
		if (ref && ref->state == IMG_READY) {
			ref->users++;
			pthread_mutex_unlock(&a->lock);
			*out = ref;
			return 0;
		}
		if (ref) { /* being attached or detached by another thread */
			pthread_cond_wait(&a->cond, &a->lock);
			continue;
		}
		if (!(ref = calloc(1, sizeof(*ref)))) {
			pthread_mutex_unlock(&a->lock);
			return -ENOMEM;
		}
		memcpy(ref->digest, digest, sizeof(ref->digest));
		ref->state = IMG_ATTACHING;
		ref->users = 1;
		ref->next = a->images;
		a->images = ref;
		pthread_mutex_unlock(&a->lock);

		struct blockd_image *img = NULL;
		int r = blockd_attach(a->b, digest, &img);
		char *raw = r == 0 ? xasprintf("%s/%s/image.raw", a->mnt, blockd_image_name(img)) : NULL;
		if (r == 0 && !raw)
			r = -ENOMEM;

		pthread_mutex_lock(&a->lock);
		if (r < 0) {
			for (struct image_ref **pp = &a->images; *pp; pp = &(*pp)->next)
				if (*pp == ref) {
					*pp = ref->next;
					break;
				}
			free(ref);
		} else {
			ref->img = img;
			ref->raw_path = raw;
			ref->state = IMG_READY;
		}
		pthread_cond_broadcast(&a->cond);
		pthread_mutex_unlock(&a->lock);
		if (r < 0) {
			log_err("cannot attach the image sha256:%s%s", digest,
				r == -ENOENT ? ": it is not in the store (was it imported with chunkify into this store?)"
					     : "");
			return r;
		}
		*out = ref;
		return 0;
	}
}

/* True if the image |digest| is attached and ready.  Locked. */
static bool image_ready_locked(struct hostagent *a, const char *digest)
{
	for (struct image_ref *ref = a->images; ref; ref = ref->next)
		if (strcmp(ref->digest, digest) == 0)
			return ref->state == IMG_READY;
	return false;
}

static void image_put_locked(struct hostagent *a, struct image_ref *ref)
{
	if (!ref)
		return;
	ref->users--;
	ref->last_used = now_seconds();
	(void)a;
}

static struct fn_log *log_find_locked(struct hostagent *a, const char *name)
{
	struct fn_log *l = a->logs;
	while (l && strcmp(l->name, name) != 0)
		l = l->next;
	return l;
}

/* The log of function |name|, opened on first use (outside the lock; a
 * racing opener's copy is dropped).  Called unlocked. */
static int log_get(struct hostagent *a, const char *name, struct fnlog **out)
{
	pthread_mutex_lock(&a->lock);
	struct fn_log *l = log_find_locked(a, name);
	pthread_mutex_unlock(&a->lock);
	if (l) {
		*out = l->log;
		return 0;
	}
	struct fn_log *mine = calloc(1, sizeof(*mine));
	int r = !mine || !(mine->name = strdup(name)) ? -ENOMEM : fnlog_open(a->logdir, name, a->log_max, &mine->log);
	if (r < 0) {
		if (mine)
			free(mine->name);
		free(mine);
		return r;
	}
	pthread_mutex_lock(&a->lock);
	if (!(l = log_find_locked(a, name))) {
		mine->next = a->logs;
		a->logs = l = mine;
		mine = NULL;
	}
	*out = l->log;
	pthread_mutex_unlock(&a->lock);
	if (mine) {
		fnlog_free(mine->log);
		free(mine->name);
		free(mine);
	}
	return 0;
}

/* ---- sandboxes ---------------------------------------------------------------------------------------------------- */

/* Tell |sb| to end.  Locked. */
static void end_locked(struct sandbox *sb)
{
	if (sb->pe.state == POOL_ENDING)
		return;
	sb->pe.state = POOL_ENDING;
	if (!sb->dead && eventfd_write(sb->stop_efd, 1) < 0)
		log_warn("sandbox %u: cannot signal it to stop: %s", sb->id, strerror(errno));
}

enum sb_kind { SB_INVOKE, SB_PROVISIONED, SB_ONESHOT };

/* A new sandbox of |f| in the pool, not started.  Locked. */
static int sandbox_new_locked(struct hostagent *a, const struct hostagent_function *f, enum sb_kind kind,
			      struct sandbox **out)
{
	struct sandbox *sb = calloc(1, sizeof(*sb));
	if (!sb)
		return -ENOMEM;
	sb->a = a;
	sb->in_fd = sb->out_w = sb->err_w = -1;
	pthread_mutex_init(&sb->vm_lock, NULL);
	sb->api = f->mode == HOSTAGENT_MODE_RUNTIME_API;
	if ((sb->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
		int r = -errno;
		pthread_mutex_destroy(&sb->vm_lock);
		free(sb);
		return r;
	}
	if (fn_copy_init(&sb->fn, f) < 0 || pool_add(&a->pool, &sb->pe) < 0) {
		fn_copy_cleanup(&sb->fn);
		close(sb->stop_efd);
		pthread_mutex_destroy(&sb->vm_lock);
		free(sb);
		return -ENOMEM;
	}
	sb->id = ++a->next_id;
	sb->pe.key = key_of(&sb->fn.f);
	sb->pe.memory = (uint64_t)f->memory_mb * MIB;
	sb->pe.last_used = now_seconds();
	sb->pe.state = kind == SB_PROVISIONED ? POOL_STARTING : POOL_BUSY;
	sb->pe.provisioned = kind == SB_PROVISIONED;
	sb->pe.oneshot = kind == SB_ONESHOT;
	sb->users = kind == SB_PROVISIONED ? 0 : 1;
	*out = sb;
	return 0;
}

/* Free what |sb| holds; its thread (if any) has been joined and it is out
 * of the pool.  Unlocked. */
static void sandbox_free(struct sandbox *sb)
{
	rapi_free(sb->rapi);
	pump_free(sb->pump);
	for (int *fd = &sb->in_fd; fd <= &sb->err_w; fd++)
		if (*fd >= 0)
			close(*fd);
	close(sb->stop_efd);
	fn_copy_cleanup(&sb->fn);
	pthread_mutex_destroy(&sb->vm_lock);
	free(sb);
}

/* Take |sb| out of the pool and free it (its thread never ran or has been
 * joined).  Unlocked. */
static void sandbox_discard(struct hostagent *a, struct sandbox *sb)
{
	pthread_mutex_lock(&a->lock);
	pool_remove(&a->pool, &sb->pe);
	image_put_locked(a, sb->image);
	pthread_cond_broadcast(&a->reaper_cond);
	pthread_mutex_unlock(&a->lock);
	sandbox_free(sb);
}

/* ---- the endpoint's hooks ---- */

static void hook_first_next(void *arg)
{
	struct sandbox *sb = arg;
	struct hostagent *a = sb->a;
	pthread_mutex_lock(&a->lock);
	sb->initialised = true;
	if (sb->pe.state == POOL_STARTING) {
		sb->pe.state = POOL_IDLE;
		sb->pe.last_used = now_seconds();
	}
	bool restored = sb->restored;
	pthread_cond_broadcast(&a->cond);
	pthread_mutex_unlock(&a->lock);
	if (restored) {
		/* Lambda's line for a SnapStart restore, in its log. */
		char line[96];
		snprintf(line, sizeof(line), "RESTORE_REPORT Restore Duration: %.2f ms\n",
			 (now_seconds() - sb->started_at) * 1000);
		pump_mark(sb->pump, line, false);
	}
}

static void hook_init_error(void *arg)
{
	struct sandbox *sb = arg;
	pthread_mutex_lock(&sb->a->lock);
	end_locked(sb);
	pthread_mutex_unlock(&sb->a->lock);
}

static void hook_handed(void *arg, const char *request_id)
{
	struct sandbox *sb = arg;
	char line[HA_REQUEST_ID_MAX + 96];
	snprintf(line, sizeof(line), "START RequestId: %s Version: %s\n", request_id, sb->fn.f.version);
	pump_mark(sb->pump, line, false);
}

static int on_ready(void *arg, const struct sandbox_ready *rd)
{
	struct sandbox *sb = arg;
	pthread_mutex_lock(&sb->a->lock);
	snprintf(sb->memory_peak_path, sizeof(sb->memory_peak_path), "%s", rd->memory_peak_path);
	pthread_mutex_unlock(&sb->a->lock);
	pthread_mutex_lock(&sb->vm_lock);
	sb->vm = rd->vm;
	pthread_mutex_unlock(&sb->vm_lock);
	if (!sb->api) {
		if (rd->runtime_api_fd >= 0)
			close(rd->runtime_api_fd);
		return 0;
	}
	if (rd->runtime_api_fd < 0) {
		log_err("sandbox %u (%s): the %s sandbox gave no Runtime API endpoint; this backend cannot run "
			"Runtime API functions yet (use --isolation process, or the function's plain mode)",
			sb->id, sb->fn.f.name, sb->a->ops->name);
		return -ENOTSUP;
	}
	return rapi_serve(sb->rapi, rd->runtime_api_fd);
}

/* NULL-terminate |l| in place (its items stay owned by it).  Returns 0 or
 * -ENOMEM. */
static int strv_terminate(struct str_list *l)
{
	if (str_list_add(l, "") < 0)
		return -ENOMEM;
	free(l->items[--l->n]);
	l->items[l->n] = NULL;
	return 0;
}

/* ---- SnapStart ---- */

/* A sandbox's restore: its snapshot, the memory server, its files. */
struct sb_restore {
	struct manifest m;
	bool have_m;
	char digest[65];
	char dir[PATH_MAX];
	struct snapstart_restore *restore;
};

/* Set up |sb|'s restore from sb->fn.f.snapshot: load it, check it was taken
 * of the function's image, start its memory server; the RESTORE_START line.
 * On failure what was set up stays in |rs| for restore_finish.  Returns 0
 * or -errno (logged). */
static int restore_prepare(struct sandbox *sb, struct sb_restore *rs)
{
	struct hostagent *a = sb->a;
	const char *snap = sb->fn.f.snapshot;
	if (!a->snap_cache) {
		log_err("sandbox %u (%s): version %s restores from snapshot %s, and the %s sandbox cannot restore "
			"snapshots: run the agent with --isolation microvm", sb->id, sb->fn.f.name, sb->fn.f.version,
			snap, a->ops->name);
		return -ENOTSUP;
	}
	int r = snapshot_load(a->snap_ctx.store, snap, a->snap_ctx.env.tenant_key, rs->digest, &rs->m);
	if (r < 0) {
		log_err("sandbox %u (%s): the SnapStart snapshot %s of version %s cannot be loaded (%s); publish a "
			"new version to take a new one", sb->id, sb->fn.f.name, snap, sb->fn.f.version, strerror(-r));
		return r;
	}
	rs->have_m = true;
	if (strcmp(rs->m.snapshot.image_digest, sb->fn.f.image_digest) != 0) {
		log_err("sandbox %u (%s): snapshot %s was taken from image %.12s, and version %s runs %.12s; publish a "
			"new version to take a new snapshot", sb->id, sb->fn.f.name, snap, rs->m.snapshot.image_digest,
			sb->fn.f.version, sb->fn.f.image_digest);
		return -EINVAL;
	}
	if ((r = snapstart_workdir("kindling-snapstart", rs->dir, sizeof(rs->dir))) < 0)
		return r;
	struct snapstart_restore_options ro = { .cache = a->snap_cache, .store = a->snap_ctx.store, .m = &rs->m,
						.digest = rs->digest, .name = snap, .dir = rs->dir, .prefetch = true,
						.stop_fd = sb->stop_efd };
	if ((r = snapstart_restore_start(&ro, &rs->restore)) < 0)
		return r;
	pthread_mutex_lock(&a->lock);
	sb->restored = true;
	pthread_mutex_unlock(&a->lock);
	char line[192];
	snprintf(line, sizeof(line), "RESTORE_START Runtime Version: kindling:image\tSnapshot: %.12s\n", rs->digest);
	pump_mark(sb->pump, line, false);
	log_info("sandbox %u (%s): restoring version %s from snapshot %.12s", sb->id, sb->fn.f.name,
		 sb->fn.f.version, rs->digest);
	return 0;
}

/* After sandbox_run() returned |run_result|: end the memory server, free
 * the restore, remove its files. */
static void restore_finish(struct sandbox *sb, struct sb_restore *rs, int run_result)
{
	if (rs->restore && snapstart_restore_finish(rs->restore, run_result, NULL) < 0)
		log_err("sandbox %u (%s): the memory of snapshot %.12s could not be served (see above); the VM was "
			"stopped", sb->id, sb->fn.f.name, rs->digest);
	snapstart_restore_free(rs->restore);
	snapstart_workdir_remove(rs->dir);
	if (rs->have_m)
		manifest_cleanup(&rs->m);
}

/* Run |sb|'s workload to its end, on this thread, and record how it went. */
static void sandbox_body(struct sandbox *sb)
{
	struct hostagent *a = sb->a;
	const struct manifest *m = blockd_image_manifest(sb->image->img);
	struct run_config rc = m->config;
	if (sb->fn.entrypoint)
		rc.entrypoint = sb->fn.entrypoint;
	if (sb->fn.command)
		rc.cmd = sb->fn.command;
	if (sb->fn.working_dir)
		rc.working_dir = sb->fn.working_dir;

	struct str_list env = { 0 };
	pthread_mutex_lock(&a->lock);
	bool provisioned = sb->pe.provisioned, snap_start = sb->for_snapshot;
	pthread_mutex_unlock(&a->lock);
	struct ha_env_params ep = {
		.fn = &sb->fn.f,
		.region = a->region,
		.image_env = m->config.env,
		.image_cmd = m->config.cmd,
		.provisioned = provisioned,
		.snap_start = snap_start,
		.log_stream = sb->log_stream,
	};
	int r = ha_env_build(&ep, &env);
	if (r == 0)
		r = strv_terminate(&env);
	struct sandbox_result res;
	memset(&res, 0, sizeof(res));
	struct sb_restore rs = { .dir = "" };
	if (r == 0 && sb->fn.f.snapshot)
		r = restore_prepare(sb, &rs);
	if (r == 0) {
		struct sandbox_spec spec = {
			.image_path = sb->image->raw_path,
			.config = &rc,
			.env_override = env.items,
			.memory_limit = (uint64_t)sb->fn.f.memory_mb * MIB,
			.pids_limit = a->pids_limit,
			.in_fd = sb->in_fd,
			.out_fd = sb->out_w,
			.err_fd = sb->err_w,
			.t0 = now_seconds(),
			.timeout_s = sb->api ? 0 : sb->fn.f.timeout_s,
			.runtime_api_port = sb->api ? a->port : 0,
			.on_ready = on_ready,
			.ready_arg = sb,
			.stop_fd = sb->stop_efd,
		};
		if (rs.restore)
			snapstart_restore_arm(rs.restore, &spec);
		r = sandbox_run(a->ops, &spec, &res);
	}
	pthread_mutex_lock(&sb->vm_lock);
	sb->vm = NULL; /* sandbox_run() has returned: the handle is gone */
	pthread_mutex_unlock(&sb->vm_lock);
	restore_finish(sb, &rs, r);
	str_list_clear(&env);
	for (int *fd = &sb->in_fd; fd <= &sb->err_w; fd++)
		if (*fd >= 0) {
			close(*fd);
			*fd = -1;
		}
	pump_finish(sb->pump);
	pthread_mutex_lock(&a->lock);
	sb->run_rc = r;
	sb->res = res;
	sb->dead = true;
	sb->pe.state = POOL_ENDING;
	pthread_cond_broadcast(&a->reaper_cond);
	pthread_cond_broadcast(&a->cond);
	pthread_mutex_unlock(&a->lock);
	if (r < 0)
		log_warn("sandbox %u (%s): could not run: %s", sb->id, sb->fn.f.name, strerror(-r));
	else
		log_info("sandbox %u (%s): ended (exit %d, signal %d%s%s)", sb->id, sb->fn.f.name, res.exit_code,
			 res.term_signal, res.stopped ? ", stopped" : "", res.oom_killed ? ", out of memory" : "");
	if (sb->rapi)
		rapi_end(sb->rapi);
}

static void *sandbox_main(void *arg)
{
	sandbox_body(arg);
	return NULL;
}

/* Set |sb| up outside the lock: its image, its log and output pipes, its
 * endpoint, and (Runtime API mode) its thread.  |capture| starts keeping the
 * log tail from the very start (a cold start's tail shows its init).  On
 * failure |sb| is discarded.  Returns 0 or -errno. */
static int sandbox_launch(struct hostagent *a, struct sandbox *sb, bool capture)
{
	int out[2] = { -1, -1 }, err[2] = { -1, -1 };
	int r = image_get(a, sb->fn.f.image_digest, &sb->image);
	if (r < 0) {
		sb->image = NULL;
		goto fail;
	}
	if ((r = log_get(a, sb->fn.f.name, &sb->log)) < 0)
		goto fail;
	if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0 || fcntl(out[0], F_SETFL, O_NONBLOCK) < 0 ||
	    fcntl(err[0], F_SETFL, O_NONBLOCK) < 0) {
		r = -errno;
		log_err("sandbox %u: cannot make its output pipes: %s", sb->id, strerror(-r));
		for (int i = 0; i < 2; i++) {
			if (out[i] >= 0)
				close(out[i]);
			if (err[i] >= 0)
				close(err[i]);
		}
		goto fail;
	}
	sb->out_w = out[1];
	sb->err_w = err[1];
	struct pump_config pc = {
		.log = sb->log,
		.out_fd = out[0],
		.err_fd = err[0],
		.out_kind = sb->api ? PUMP_LOG : PUMP_CAPTURE,
		.capture_max = HA_MAX_PAYLOAD,
	};
	if ((r = pump_start(&pc, &sb->pump)) < 0)
		goto fail;
	if (capture)
		pump_capture_begin(sb->pump);
	uint8_t rnd[16];
	if (random_bytes(rnd, sizeof(rnd)) < 0)
		memset(rnd, 0, sizeof(rnd));
	ha_log_stream_name(sb->log_stream, sizeof(sb->log_stream), sb->fn.f.version, epoch_ms() / 1000, rnd);
	sb->started_at = now_seconds();
	if (!sb->api)
		return 0; /* plain mode runs on the invoking thread */
	char name[96];
	snprintf(name, sizeof(name), "sandbox %u (%s)", sb->id, sb->fn.f.name);
	struct rapi_hooks hooks = {
		.first_next = hook_first_next,
		.init_error = hook_init_error,
		.handed = hook_handed,
		.arg = sb,
	};
	if ((r = rapi_new(name, &hooks, &sb->rapi)) < 0)
		goto fail;
	int e = pthread_create(&sb->thread, NULL, sandbox_main, sb);
	if (e) {
		r = -e;
		log_err("sandbox %u: cannot start its thread: %s (too many threads?)", sb->id, strerror(e));
		goto fail;
	}
	pthread_mutex_lock(&a->lock);
	sb->has_thread = true;
	pthread_mutex_unlock(&a->lock);
	return 0;
fail:
	sandbox_discard(a, sb);
	return r;
}

/* Make room for |need| bytes: end the idle sandboxes the pool chooses.
 * Locked.  Returns 0 or -EBUSY. */
static int admit_locked(struct hostagent *a, uint64_t need)
{
	struct pool_entry **victims = calloc(a->pool.n + 1, sizeof(*victims));
	size_t n = 0;
	if (!victims)
		return -ENOMEM;
	int r = pool_plan_admit(&a->pool, need, a->budget, victims, &n);
	for (size_t i = 0; i < n; i++) {
		log_info("sandbox %u (%s): evicted to make room (memory budget %llu MiB)", sb_of(victims[i])->id,
			 sb_of(victims[i])->fn.f.name, (unsigned long long)(a->budget / MIB));
		end_locked(sb_of(victims[i]));
		a->evictions++;
	}
	free(victims);
	return r;
}

/* Read a memory.peak style file: decimal bytes.  (cgroup files report no
 * size, so read_file_all cannot read them.) */
static uint64_t read_peak(const char *path)
{
	if (!path[0])
		return 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	char buf[32];
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	return strtoull(buf, NULL, 10);
}

static uint64_t sandbox_peak(struct sandbox *sb)
{
	char path[PATH_MAX];
	pthread_mutex_lock(&sb->a->lock);
	snprintf(path, sizeof(path), "%s", sb->memory_peak_path);
	uint64_t recorded = sb->dead ? sb->res.memory_peak : 0;
	pthread_mutex_unlock(&sb->a->lock);
	uint64_t v = read_peak(path);
	return v ? v : recorded;
}

/* ---- invocations ----------------------------------------------------------------------------------------------- */

/* The command a sandbox of |sb| runs first: for Runtime.InvalidEntrypoint. */
static const char *argv0(struct sandbox *sb)
{
	const struct run_config *c = &blockd_image_manifest(sb->image->img)->config;
	char *const *ep = sb->fn.entrypoint ? sb->fn.entrypoint : c->entrypoint;
	char *const *cmd = sb->fn.command ? sb->fn.command : c->cmd;
	return ep && ep[0] ? ep[0] : cmd && cmd[0] ? cmd[0] : "";
}

/* Write "RequestId: ID Error: MESSAGE\nTYPE\n", as Lambda logs a failure
 * of the runtime, from an error payload. */
static void log_fault(struct sandbox *sb, const char *payload)
{
	json_error_t je;
	json_t *j = json_loads(payload, 0, &je);
	const char *msg = json_string_value(json_object_get(j, "errorMessage"));
	const char *type = json_string_value(json_object_get(j, "errorType"));
	if (msg && type) {
		char *line = xasprintf("%s\n%s\n", msg, type);
		if (line)
			pump_mark(sb->pump, line, false);
		free(line);
	}
	json_decref(j);
}

/* Take ownership of |json| as the result's error payload. */
static void set_error(struct hostagent_invoke_result *out, char *json)
{
	out->outcome = HOSTAGENT_FUNCTION_ERROR;
	out->payload = (uint8_t *)json;
	out->payload_len = json ? strlen(json) : 0;
}

/* END and REPORT, the tail, the timings.  |duration_s| counts from the
 * hand-over; |init_s| < 0 when this was no cold start. */
static void finish_log(struct sandbox *sb, const struct hostagent_invoke_request *req, bool handed,
		       double duration_s, double init_s, struct hostagent_invoke_result *out)
{
	char line[HA_REQUEST_ID_MAX + 256];
	if (!handed) {
		snprintf(line, sizeof(line), "START RequestId: %s Version: %s\n", req->request_id, sb->fn.f.version);
		pump_mark(sb->pump, line, false);
	}
	snprintf(line, sizeof(line), "END RequestId: %s\n", req->request_id);
	pump_mark(sb->pump, line, req->want_log_tail);
	out->max_memory = sandbox_peak(sb);
	pthread_mutex_lock(&sb->a->lock);
	bool restored = sb->restored;
	pthread_mutex_unlock(&sb->a->lock);
	ha_format_report(line, sizeof(line), req->request_id, duration_s, init_s, restored, sb->fn.f.memory_mb,
			 out->max_memory);
	pump_mark(sb->pump, line, false);
	char *tail = pump_capture_end(sb->pump);
	if (req->want_log_tail)
		out->log_tail = tail;
	else
		free(tail);
	out->duration_s = duration_s;
}

/* Take an idle sandbox of |f| or start one.  Returns 0 with |*out| held
 * (users), or -errno. */
static int acquire(struct hostagent *a, const struct hostagent_function *f, bool allow_warm, bool warm_only,
		   struct sandbox **out, bool *cold)
{
	struct pool_key key = key_of(f);
	pthread_mutex_lock(&a->lock);
	if (a->closing) {
		pthread_mutex_unlock(&a->lock);
		return -ESHUTDOWN;
	}
	struct pool_entry *e = allow_warm ? pool_pick_idle(&a->pool, &key) : NULL;
	if (!e && warm_only && (f->mode != HOSTAGENT_MODE_STDIO || !image_ready_locked(a, f->image_digest))) {
		pthread_mutex_unlock(&a->lock);
		return -EAGAIN; /* no warm sandbox (plain mode: the image is not attached) */
	}
	if (e) {
		struct sandbox *sb = sb_of(e);
		e->state = POOL_BUSY;
		e->last_used = now_seconds();
		sb->users++;
		a->warm++;
		pthread_mutex_unlock(&a->lock);
		pump_capture_begin(sb->pump);
		*out = sb;
		*cold = false;
		return 0;
	}
	struct sandbox *sb = NULL;
	int r = admit_locked(a, (uint64_t)f->memory_mb * MIB);
	if (r == -EBUSY)
		log_warn("function %s: no room for a %u MB sandbox: the memory budget (%llu MiB) is taken by busy "
			 "or provisioned sandboxes (raise the budget or lower the concurrency)",
			 f->name, f->memory_mb, (unsigned long long)(a->budget / MIB));
	if (r == 0)
		r = sandbox_new_locked(a, f, f->mode == HOSTAGENT_MODE_STDIO ? SB_ONESHOT : SB_INVOKE, &sb);
	pthread_mutex_unlock(&a->lock);
	if (r < 0)
		return r;
	if ((r = sandbox_launch(a, sb, true)) < 0)
		return r;
	pthread_mutex_lock(&a->lock);
	a->cold++;
	pthread_mutex_unlock(&a->lock);
	*out = sb;
	*cold = true;
	return 0;
}

/* The invocation is over: |sb| goes back to the pool, or ends.  Unlocked. */
static void release(struct hostagent *a, struct sandbox *sb, bool keep)
{
	pthread_mutex_lock(&a->lock);
	sb->users--;
	if (!keep || sb->pe.draining || a->closing || sb->dead)
		end_locked(sb);
	else if (sb->pe.state == POOL_BUSY) {
		sb->pe.state = POOL_IDLE;
		sb->pe.last_used = now_seconds();
	}
	pthread_cond_broadcast(&a->reaper_cond);
	pthread_mutex_unlock(&a->lock);
}

static int invoke_api(struct hostagent *a, const struct hostagent_invoke_request *req, const char *trace,
		      struct hostagent_invoke_result *out)
{
	const struct hostagent_function *f = req->fn;
	char arn[512];
	if (f->arn)
		snprintf(arn, sizeof(arn), "%s", f->arn);
	else
		snprintf(arn, sizeof(arn), "arn:aws:lambda:%s:%s:function:%s%s%s", a->region, a->account, f->name,
			 strcmp(f->version, "$LATEST") ? ":" : "", strcmp(f->version, "$LATEST") ? f->version : "");
	for (int attempt = 0;; attempt++) {
		struct sandbox *sb = NULL;
		bool cold = false;
		int r = acquire(a, f, attempt == 0, req->warm_only, &sb, &cold);
		if (r < 0)
			return r;
		struct rapi_invocation inv = {
			.request_id = req->request_id,
			.arn = arn,
			.trace_id = trace,
			.client_context = req->client_context,
			.payload = req->payload,
			.payload_len = req->payload_len,
			.timeout_s = f->timeout_s,
		};
		double assigned = now_seconds();
		enum rapi_outcome o = rapi_assign(sb->rapi, &inv) < 0 ? RAPI_ENDED : rapi_wait(sb->rapi, &inv, assigned + f->timeout_s);
		if (o == RAPI_ENDED && !cold && !inv.handed && attempt == 0) {
			/* The warm sandbox ended between two invocations (its
			 * runtime exited after answering): this one goes to a new
			 * sandbox, as on Lambda. */
			free(pump_capture_end(sb->pump));
			release(a, sb, false);
			continue;
		}
		double first = rapi_first_next_at(sb->rapi);
		double init_s = cold && first >= 0 ? first - sb->started_at : -1;
		double end = inv.done ? inv.done_at : now_seconds();
		double duration = inv.handed ? end - inv.handed_at : 0;
		bool keep = false;
		switch (o) {
		case RAPI_DONE:
			out->outcome = inv.is_error ? HOSTAGENT_FUNCTION_ERROR : HOSTAGENT_OK;
			out->payload = inv.body;
			out->payload_len = inv.body_len;
			inv.body = NULL;
			keep = true;
			if (inv.is_error && strcmp(inv.error_type, "Function.ResponseSizeTooLarge") == 0)
				log_fault(sb, (const char *)out->payload);
			break;
		case RAPI_INIT_ERROR:
			set_error(out, (char *)inv.body);
			inv.body = NULL;
			break;
		case RAPI_TIMEOUT: {
			int64_t now_ms = epoch_ms();
			char *j = ha_err_timeout(req->request_id, f->timeout_s, now_ms);
			char ts[32], line[HA_REQUEST_ID_MAX + 96];
			ha_format_timestamp(now_ms, ts, sizeof(ts));
			snprintf(line, sizeof(line), "%s %s Task timed out after %u.00 seconds\n", ts, req->request_id,
				 f->timeout_s);
			if (!inv.handed)
				hook_handed(sb, req->request_id);
			pump_mark(sb->pump, line, false);
			inv.handed = true;
			set_error(out, j);
			break;
		}
		case RAPI_ENDED: {
			pthread_mutex_lock(&a->lock);
			int rc = sb->run_rc;
			struct sandbox_result res = sb->res;
			bool closing = a->closing;
			pthread_mutex_unlock(&a->lock);
			char *j;
			if (rc == -ENOENT || rc == -EACCES)
				j = ha_err_entrypoint(req->request_id, argv0(sb), -rc);
			else if (rc < 0 && !closing) {
				finish_log(sb, req, inv.handed, duration, init_s, out);
				release(a, sb, false);
				hostagent_invoke_result_cleanup(out);
				return rc;
			} else if (closing)
				j = ha_err_shutdown(req->request_id);
			else if (res.oom_killed)
				j = ha_err_exit("Runtime.OutOfMemory", req->request_id, res.exit_code,
						res.term_signal ? res.term_signal : SIGKILL);
			else
				j = ha_err_exit("Runtime.ExitError", req->request_id, res.exit_code, res.term_signal);
			if (j && !closing)
				log_fault(sb, j);
			set_error(out, j);
			break;
		}
		}
		free(inv.body);
		if (out->outcome == HOSTAGENT_FUNCTION_ERROR && !out->payload) {
			release(a, sb, keep);
			return -ENOMEM;
		}
		finish_log(sb, req, inv.handed, duration, init_s, out);
		out->cold = cold;
		out->init_s = init_s > 0 ? init_s : 0;
		release(a, sb, keep);
		return 0;
	}
}

static int invoke_stdio(struct hostagent *a, const struct hostagent_invoke_request *req,
			struct hostagent_invoke_result *out)
{
	const struct hostagent_function *f = req->fn;
	struct sandbox *sb = NULL;
	bool cold;
	int r = acquire(a, f, false, req->warm_only, &sb, &cold);
	if (r < 0)
		return r;
	/* The event, on stdin. */
	int fd = memfd_create("kindling-event", MFD_CLOEXEC);
	if (fd < 0 || write_full(fd, req->payload ? req->payload : (const uint8_t *)"", req->payload_len) < 0 ||
	    lseek(fd, 0, SEEK_SET) < 0) {
		r = fd < 0 ? -errno : -EIO;
		log_err("function %s: cannot hold the event for stdin: %s", f->name, strerror(-r));
		if (fd >= 0)
			close(fd);
		pthread_mutex_lock(&a->lock);
		sb->users--;
		pthread_mutex_unlock(&a->lock);
		sandbox_discard(a, sb);
		return r;
	}
	sb->in_fd = fd;
	char line[HA_REQUEST_ID_MAX + 96];
	snprintf(line, sizeof(line), "START RequestId: %s Version: %s\n", req->request_id, f->version);
	pump_mark(sb->pump, line, false);
	sandbox_body(sb);

	pthread_mutex_lock(&a->lock);
	int rc = sb->run_rc;
	struct sandbox_result res = sb->res;
	bool closing = a->closing;
	pthread_mutex_unlock(&a->lock);
	char *j = NULL;
	if (rc == -ENOENT || rc == -EACCES)
		j = ha_err_entrypoint(req->request_id, argv0(sb), -rc);
	else if (rc < 0)
		r = rc;
	else if (closing && res.stopped)
		j = ha_err_shutdown(req->request_id);
	else if (res.timed_out) {
		int64_t now_ms = epoch_ms();
		char ts[32];
		ha_format_timestamp(now_ms, ts, sizeof(ts));
		snprintf(line, sizeof(line), "%s %s Task timed out after %u.00 seconds\n", ts, req->request_id,
			 f->timeout_s);
		pump_mark(sb->pump, line, false);
		j = ha_err_timeout(req->request_id, f->timeout_s, now_ms);
	} else if (res.oom_killed)
		j = ha_err_exit("Runtime.OutOfMemory", req->request_id, res.exit_code,
				res.term_signal ? res.term_signal : SIGKILL);
	else if (res.exit_code != 0 || res.term_signal) {
		/* The end of stderr is the message, as a plain program reports
		 * its failure there. */
		char *tail = pump_stderr_tail(sb->pump);
		size_t n = tail ? strlen(tail) : 0;
		while (n && (tail[n - 1] == '\n' || tail[n - 1] == '\r' || tail[n - 1] == ' '))
			tail[--n] = '\0';
		if (n)
			j = ha_error_json("Runtime.ExitError", tail);
		else
			j = ha_err_exit("Runtime.ExitError", req->request_id, res.exit_code, res.term_signal);
		free(tail);
	} else {
		size_t len;
		uint64_t total;
		const uint8_t *b = pump_captured(sb->pump, &len, &total);
		if (total > HA_MAX_PAYLOAD || total > len)
			j = ha_err_oversize(total);
		else if ((out->payload = malloc(len + 1))) {
			memcpy(out->payload, b, len);
			out->payload[len] = '\0';
			out->payload_len = len;
			out->outcome = HOSTAGENT_OK;
		} else
			r = -ENOMEM;
	}
	if (j)
		set_error(out, j);
	else if (r == 0 && !out->payload)
		r = -ENOMEM;
	if (j && rc >= 0 && !res.timed_out && !(closing && res.stopped) &&
	    strstr((const char *)out->payload, "Runtime exited"))
		log_fault(sb, j);
	finish_log(sb, req, true, rc < 0 ? 0 : res.exit_s, -1, out);
	out->cold = true;
	pthread_mutex_lock(&a->lock);
	sb->users--;
	pthread_mutex_unlock(&a->lock);
	sandbox_discard(a, sb);
	if (r < 0)
		hostagent_invoke_result_cleanup(out);
	return r;
}

void hostagent_invoke_result_cleanup(struct hostagent_invoke_result *r)
{
	if (!r)
		return;
	free(r->payload);
	free(r->log_tail);
	memset(r, 0, sizeof(*r));
}

int hostagent_invoke(struct hostagent *a, const struct hostagent_invoke_request *req,
		     struct hostagent_invoke_result *out)
{
	memset(out, 0, sizeof(*out));
	if (!req || check_function(req->fn) < 0 || (req->payload_len && !req->payload) ||
	    !ha_token_ok(req->request_id, HA_REQUEST_ID_MAX, false) || (req->trace_id && !ha_token_ok(req->trace_id, 256, true)))
		return -EINVAL;
	char trace[128];
	const char *t = req->trace_id;
	if (!t || !*t) {
		/* Lambda hands every invocation an X-Ray trace header. */
		uint8_t rnd[20];
		char hex[41];
		if (random_bytes(rnd, sizeof(rnd)) < 0)
			memset(rnd, 0, sizeof(rnd));
		hex_encode(rnd, sizeof(rnd), hex);
		snprintf(trace, sizeof(trace), "Root=1-%08llx-%.24s;Parent=%.16s;Sampled=0",
			 (unsigned long long)(epoch_ms() / 1000), hex, hex + 24);
		t = trace;
	}
	pthread_mutex_lock(&a->lock);
	if (a->closing) {
		pthread_mutex_unlock(&a->lock);
		return -ESHUTDOWN;
	}
	a->calls++;
	pthread_mutex_unlock(&a->lock);
	int r = req->fn->mode == HOSTAGENT_MODE_STDIO ? invoke_stdio(a, req, out) : invoke_api(a, req, t, out);
	pthread_mutex_lock(&a->lock);
	if (--a->calls == 0)
		pthread_cond_broadcast(&a->cond);
	pthread_mutex_unlock(&a->lock);
	return r;
}

/* ---- provisioned concurrency, drain ------------------------------------------------------------------------------ */

static struct provision *provision_find_locked(struct hostagent *a, const struct pool_key *k)
{
	for (struct provision *p = a->prov; p; p = p->next) {
		struct pool_key pk = key_of(&p->fn.f);
		if (pool_key_equal(&pk, k))
			return p;
	}
	return NULL;
}

static void provision_remove_locked(struct hostagent *a, struct provision *p)
{
	struct pool_key k = key_of(&p->fn.f);
	for (size_t i = 0; i < a->pool.n; i++)
		if (pool_key_equal(&a->pool.v[i]->key, &k))
			a->pool.v[i]->provisioned = false;
	for (struct provision **pp = &a->prov; *pp; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			break;
		}
	fn_copy_cleanup(&p->fn);
	free(p);
}

int hostagent_provision(struct hostagent *a, const struct hostagent_function *fn, unsigned n)
{
	if (check_function(fn) < 0)
		return -EINVAL;
	if (fn->mode != HOSTAGENT_MODE_RUNTIME_API) {
		log_err("function %s: provisioned concurrency needs a Runtime API function (a plain-mode run ends "
			"with its invocation)", fn->name);
		return -EINVAL;
	}
	struct pool_key k = key_of(fn);
	pthread_mutex_lock(&a->lock);
	int r = a->closing ? -ESHUTDOWN : 0;
	struct provision *p = r ? NULL : provision_find_locked(a, &k);
	if (r == 0 && n == 0) {
		if (p)
			provision_remove_locked(a, p);
		goto out;
	}
	/* Refuse what can never fit, whatever is evicted. */
	uint64_t want = (uint64_t)n * fn->memory_mb * MIB;
	for (struct provision *q = a->prov; r == 0 && q; q = q->next)
		if (q != p)
			want += (uint64_t)q->n * q->fn.f.memory_mb * MIB;
	if (r == 0 && want > a->budget) {
		log_err("function %s: %u provisioned sandboxes of %u MB do not fit the memory budget of %llu MiB "
			"with the others already provisioned", fn->name, n, fn->memory_mb,
			(unsigned long long)(a->budget / MIB));
		r = -EBUSY;
	}
	if (r == 0 && !p) {
		if (!(p = calloc(1, sizeof(*p))) || fn_copy_init(&p->fn, fn) < 0) {
			free(p);
			r = -ENOMEM;
		} else {
			p->next = a->prov;
			a->prov = p;
		}
	}
	if (r == 0) {
		p->n = n;
		p->failures = 0;
		p->retry_at = 0;
	}
out:
	pthread_cond_broadcast(&a->reaper_cond);
	pthread_mutex_unlock(&a->lock);
	return r;
}

void hostagent_drain(struct hostagent *a, const char *name, const char *version, const char *keep_revision)
{
	if (!name)
		return;
	pthread_mutex_lock(&a->lock);
	for (size_t i = 0; i < a->pool.n; i++) {
		struct pool_entry *e = a->pool.v[i];
		if (!pool_drain_matches(e, name, version, keep_revision) || e->state == POOL_ENDING)
			continue;
		if (e->state == POOL_BUSY)
			e->draining = true;
		else
			end_locked(sb_of(e));
	}
	for (struct provision *p = a->prov, *next; p; p = next) {
		next = p->next;
		struct pool_entry probe = { .key = key_of(&p->fn.f) };
		if (pool_drain_matches(&probe, name, version, keep_revision))
			provision_remove_locked(a, p);
	}
	pthread_cond_broadcast(&a->reaper_cond);
	pthread_mutex_unlock(&a->lock);
}

/* ---- the reaper -------------------------------------------------------------------------------------------------- */

/* Start one provisioned sandbox that is missing, if any and if allowed now.
 * Locked; unlocks while the sandbox starts.  Returns true if it did
 * something (the caller loops). */
static bool provision_one_locked(struct hostagent *a, double now)
{
	for (struct provision *p = a->prov; p; p = p->next) {
		struct pool_key k = key_of(&p->fn.f);
		unsigned have = pool_count_provisioned(&a->pool, &k);
		/* Too many (the target went down): the idle ones stop counting
		 * first, and become ordinary warm sandboxes. */
		for (size_t i = 0; have > p->n && i < a->pool.n; i++) {
			struct pool_entry *e = a->pool.v[i];
			if (e->provisioned && e->state != POOL_ENDING && pool_key_equal(&e->key, &k)) {
				e->provisioned = false;
				have--;
			}
		}
		if (have >= p->n || now < p->retry_at)
			continue;
		if (admit_locked(a, (uint64_t)p->fn.f.memory_mb * MIB) < 0) {
			if (!p->warned_budget)
				log_warn("function %s: a provisioned sandbox does not fit the memory budget now (busy "
					 "sandboxes take it); retrying", p->fn.f.name);
			p->warned_budget = true;
			p->retry_at = now + 1;
			continue;
		}
		p->warned_budget = false;
		struct sandbox *sb = NULL;
		if (sandbox_new_locked(a, &p->fn.f, SB_PROVISIONED, &sb) < 0) {
			p->retry_at = now + 1;
			continue;
		}
		struct key_buf kb;
		k = key_copy(&k, &kb); /* |p| may go while the lock is dropped */
		pthread_mutex_unlock(&a->lock);
		int r = sandbox_launch(a, sb, false);
		pthread_mutex_lock(&a->lock);
		if (r == 0)
			a->cold++;
		else if ((p = provision_find_locked(a, &k))) {
			p->failures++;
			p->retry_at = now_seconds() + (p->failures < 6 ? (double)(1u << p->failures) : 60.0);
		}
		return true;
	}
	return false;
}

/* Free one dead sandbox nobody holds, if any.  Locked; unlocks while
 * joining.  Returns true if it did. */
static bool reap_one_locked(struct hostagent *a)
{
	for (size_t i = 0; i < a->pool.n; i++) {
		struct sandbox *sb = sb_of(a->pool.v[i]);
		if (!sb->dead || sb->users || sb->pe.oneshot || !sb->has_thread)
			continue;
		pool_remove(&a->pool, &sb->pe);
		image_put_locked(a, sb->image);
		if (sb->pe.provisioned) {
			/* A provisioned sandbox that died before it initialised
			 * backs its next start off. */
			struct provision *p = provision_find_locked(a, &sb->pe.key);
			if (p && !sb->initialised) {
				p->failures++;
				p->retry_at = now_seconds() + (p->failures < 6 ? (double)(1u << p->failures) : 60.0);
				log_warn("function %s: a provisioned sandbox ended before its runtime asked for work; "
					 "retrying in %.0f s (see the function's log)", sb->fn.f.name,
					 p->retry_at - now_seconds());
			} else if (p) {
				p->failures = 0;
			}
		}
		pthread_mutex_unlock(&a->lock);
		pthread_join(sb->thread, NULL);
		sandbox_free(sb);
		pthread_mutex_lock(&a->lock);
		return true;
	}
	return false;
}

/* Detach one image nobody has used for the idle time.  Locked; unlocks
 * while detaching. */
static bool detach_one_locked(struct hostagent *a, double now)
{
	for (struct image_ref **pp = &a->images; *pp; pp = &(*pp)->next) {
		struct image_ref *ref = *pp;
		if (ref->state != IMG_READY || ref->users || now - ref->last_used < a->idle_timeout)
			continue;
		ref->state = IMG_DETACHING;
		char *name = strdup(blockd_image_name(ref->img));
		pthread_mutex_unlock(&a->lock);
		if (name && blockd_detach(a->b, name) < 0)
			log_warn("cannot detach the unused image %s", name);
		free(name);
		pthread_mutex_lock(&a->lock);
		for (pp = &a->images; *pp; pp = &(*pp)->next)
			if (*pp == ref) {
				*pp = ref->next;
				break;
			}
		free(ref->raw_path);
		free(ref);
		pthread_cond_broadcast(&a->cond);
		return true;
	}
	return false;
}

static void *reaper_main(void *arg)
{
	struct hostagent *a = arg;
	double tick = a->idle_timeout / 4;
	if (tick > 1)
		tick = 1;
	if (tick < 0.05)
		tick = 0.05;
	pthread_mutex_lock(&a->lock);
	while (!a->closing) {
		double now = now_seconds();
		struct pool_entry **old = calloc(a->pool.n + 1, sizeof(*old));
		size_t n = old ? pool_expired(&a->pool, now, a->idle_timeout, old) : 0;
		for (size_t i = 0; i < n; i++) {
			log_info("sandbox %u (%s): idle for %.0f s; ending it", sb_of(old[i])->id, sb_of(old[i])->fn.f.name,
				 now - old[i]->last_used);
			end_locked(sb_of(old[i]));
			a->expirations++;
		}
		free(old);
		while (!a->closing && reap_one_locked(a))
			;
		while (!a->closing && provision_one_locked(a, now_seconds()))
			;
		while (!a->closing && detach_one_locked(a, now_seconds()))
			;
		if (!a->closing)
			timedwait(&a->reaper_cond, &a->lock, tick);
	}
	pthread_mutex_unlock(&a->lock);
	return NULL;
}

/* ---- life ---------------------------------------------------------------------------------------------------------- */

int hostagent_new(const struct hostagent_config *cfg, struct hostagent **out)
{
	if (!cfg || !cfg->state_dir || !*cfg->state_dir || !cfg->cache.origin_uri) {
		log_err("hostagent: a state directory and an origin store are required");
		return -EINVAL;
	}
	char notice[512];
	const struct sandbox_ops *ops = sandbox_pick(cfg->isolation, notice, sizeof(notice));
	if (!ops) {
		int e = errno ? errno : ENOTSUP;
		log_err("hostagent: %s", notice);
		return -e;
	}
	if (notice[0])
		log_info("hostagent: %s", notice);
	struct hostagent *a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	pthread_mutex_init(&a->lock, NULL);
	cond_init_mono(&a->cond);
	cond_init_mono(&a->reaper_cond);
	a->ops = ops;
	a->idle_timeout = cfg->idle_timeout_s > 0 ? cfg->idle_timeout_s : 600;
	a->port = cfg->runtime_api_port ? cfg->runtime_api_port : 9001;
	a->pids_limit = cfg->pids_limit ? cfg->pids_limit : 1024;
	a->log_max = cfg->log_max_bytes ? cfg->log_max_bytes : 8 * MIB;
	a->budget = cfg->memory_budget;
	if (!a->budget) {
		long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
		a->budget = pages > 0 && size > 0 ? (uint64_t)pages * (uint64_t)size / 2 : 1024 * MIB;
	}
	a->state_dir = strdup(cfg->state_dir);
	a->mnt = xasprintf("%s/mnt", cfg->state_dir);
	a->logdir = xasprintf("%s/logs", cfg->state_dir);
	a->region = strdup(cfg->region ? cfg->region : "us-east-1");
	a->account = strdup(cfg->account_id ? cfg->account_id : "000000000000");
	int r = -ENOMEM;
	if (!a->state_dir || !a->mnt || !a->logdir || !a->region || !a->account)
		goto fail;
	if ((r = mkdir_p(a->mnt, 0700)) < 0 || (r = mkdir_p(a->logdir, 0700)) < 0) {
		log_err("hostagent: cannot create %s/{mnt,logs}: %s (is the state directory writable?)", a->state_dir,
			strerror(-r));
		goto fail;
	}
	struct blockd_config bc = { .cache = cfg->cache, .prefetch = true };
	if ((r = blockd_new(&bc, &a->b)) < 0)
		goto fail;
	struct blockd_mount_options mo = { .done_fd = -1 };
	if ((r = blockd_mount(a->b, a->mnt, &mo)) < 0)
		goto fail;
	int e = pthread_create(&a->reaper, NULL, reaper_main, a);
	if (e) {
		r = -e;
		log_err("hostagent: cannot start the reaper thread: %s", strerror(e));
		goto fail;
	}
	a->has_reaper = true;
	if (ops == &sandbox_microvm) {
		struct store_options so = { .must_exist = true };
		if ((r = chunkify_ctx_init(&a->snap_ctx, cfg->cache.origin_uri, &so)) < 0)
			goto fail;
		a->snap_ctx_open = true;
		if ((r = cache_new(&cfg->cache, &a->snap_cache)) < 0)
			goto fail;
	}
	*out = a;
	return 0;
fail:
	hostagent_free(a);
	return r;
}

void hostagent_free(struct hostagent *a)
{
	if (!a)
		return;
	pthread_mutex_lock(&a->lock);
	a->closing = true;
	for (size_t i = 0; i < a->pool.n; i++)
		end_locked(sb_of(a->pool.v[i]));
	pthread_cond_broadcast(&a->reaper_cond);
	/* Invocations see their sandboxes end and return. */
	while (a->calls > 0)
		pthread_cond_wait(&a->cond, &a->lock);
	pthread_mutex_unlock(&a->lock);
	if (a->has_reaper)
		pthread_join(a->reaper, NULL);
	/* Nobody else runs now but the sandboxes' own threads, all ending. */
	while (a->pool.n > 0) {
		struct sandbox *sb = sb_of(a->pool.v[a->pool.n - 1]);
		if (sb->has_thread)
			pthread_join(sb->thread, NULL);
		pool_remove(&a->pool, &sb->pe);
		sandbox_free(sb);
	}
	blockd_free(a->b); /* unmounts, detaches */
	cache_free(a->snap_cache);
	if (a->snap_ctx_open)
		chunkify_ctx_cleanup(&a->snap_ctx);
	while (a->images) {
		struct image_ref *ref = a->images;
		a->images = ref->next;
		free(ref->raw_path);
		free(ref);
	}
	while (a->logs) {
		struct fn_log *l = a->logs;
		a->logs = l->next;
		fnlog_free(l->log);
		free(l->name);
		free(l);
	}
	while (a->prov) {
		struct provision *p = a->prov;
		a->prov = p->next;
		fn_copy_cleanup(&p->fn);
		free(p);
	}
	pool_cleanup(&a->pool);
	pthread_cond_destroy(&a->cond);
	pthread_cond_destroy(&a->reaper_cond);
	pthread_mutex_destroy(&a->lock);
	free(a->state_dir);
	free(a->mnt);
	free(a->logdir);
	free(a->region);
	free(a->account);
	free(a);
}

/* ---- SnapStart: taking a version's snapshot ----------------------------------------------------------------------- */

bool hostagent_snapshot_supported(struct hostagent *a, char *why, size_t len)
{
	if (a->snap_cache)
		return true;
	snprintf(why, len, "the host agent runs %s sandboxes, which cannot be snapshotted: start the agent (kindling "
		 "serve, or kindling agent in a fleet) with --isolation microvm on a host with /dev/kvm for SnapStart",
		 a->ops->name);
	return false;
}

const char *hostagent_isolation(const struct hostagent *a)
{
	return a->ops->name;
}

int hostagent_snapshot(struct hostagent *a, const struct hostagent_function *fn, const char *name, char digest[65],
		       char *why, size_t why_len)
{
	int r = check_function(fn);
	if (r < 0) {
		snprintf(why, why_len, "the function is not valid for a sandbox");
		return r;
	}
	if (!hostagent_snapshot_supported(a, why, why_len)) {
		log_err("function %s: cannot take a SnapStart snapshot: %s", fn->name, why);
		return -ENOTSUP;
	}
	if (fn->mode != HOSTAGENT_MODE_RUNTIME_API || fn->snapshot) {
		snprintf(why, why_len, "SnapStart needs a Runtime API function that boots (not plain mode)");
		log_err("function %s: %s", fn->name, why);
		return -EINVAL;
	}
	/* A sandbox of its own: busy from the start (never idle, so never
	 * expired nor evicted), never offered to invocations (draining). */
	struct sandbox *sb = NULL;
	pthread_mutex_lock(&a->lock);
	if (a->closing) {
		pthread_mutex_unlock(&a->lock);
		snprintf(why, why_len, "the host agent is shutting down");
		return -ESHUTDOWN;
	}
	r = admit_locked(a, (uint64_t)fn->memory_mb * MIB);
	if (r == 0 && (r = sandbox_new_locked(a, fn, SB_INVOKE, &sb)) == 0) {
		sb->pe.draining = true;
		sb->for_snapshot = true;
		a->calls++;
	}
	pthread_mutex_unlock(&a->lock);
	if (r < 0) {
		snprintf(why, why_len, "no sandbox could be started for the snapshot (%s)%s", strerror(-r),
			 r == -EBUSY ? ": the memory budget is taken by busy or provisioned sandboxes" : "");
		log_err("function %s: %s", fn->name, why);
		return r;
	}
	char dir[PATH_MAX] = "";
	if ((r = sandbox_launch(a, sb, false)) < 0) {
		snprintf(why, why_len, "booting the sandbox failed (%s; see the host agent's log)", strerror(-r));
		sb = NULL;
		goto out;
	}
	log_info("function %s: booting version %s for its SnapStart snapshot %s", fn->name, fn->version, name);
	double deadline = now_seconds() + 300 + fn->timeout_s;
	pthread_mutex_lock(&a->lock);
	while (!sb->initialised && !sb->dead && !a->closing && now_seconds() < deadline)
		timedwait(&a->cond, &a->lock, 1);
	bool ready = sb->initialised && !sb->dead && sb->pe.state != POOL_ENDING;
	bool dead = sb->dead || sb->pe.state == POOL_ENDING, closing = a->closing;
	int run_rc = sb->dead ? sb->run_rc : 0;
	pthread_mutex_unlock(&a->lock);
	if (!ready && run_rc < 0 && !closing) {
		r = -EIO;
		snprintf(why, why_len, "the sandbox could not be started (%s; see the host agent's log)",
			 strerror(-run_rc));
		log_err("function %s: SnapStart snapshot of version %s: %s", fn->name, fn->version, why);
		goto out;
	}
	if (!ready) {
		r = closing ? -ESHUTDOWN : dead ? -ECHILD : -ETIMEDOUT;
		snprintf(why, why_len, "%s", closing ? "the host agent is shutting down"
				     : dead ? "the runtime exited or reported an init error before it asked for work "
					      "(see the function's log)"
					    : "the runtime did not ask for work (GET /runtime/invocation/next) in time");
		log_err("function %s: SnapStart snapshot of version %s: %s", fn->name, fn->version, why);
		goto out;
	}
	if ((r = snapstart_workdir("kindling-snapstart", dir, sizeof(dir))) < 0) {
		snprintf(why, why_len, "no directory for the snapshot's files (%s)", strerror(-r));
		goto out;
	}
	struct snapshot_import_options io = { .name_tag = name, .from_image = fn->image_digest, .workers = 1 };
	struct import_report rep;
	memset(&rep, 0, sizeof(rep));
	if ((r = snapstart_take(&a->snap_ctx, &sb->vm_lock, &sb->vm, dir, &io, &rep, NULL)) < 0) {
		snprintf(why, why_len, "taking the snapshot or importing it into the store failed (%s; see the "
			 "host agent's log)", strerror(-r));
		goto out;
	}
	snprintf(digest, 65, "%s", rep.manifest_digest);
	log_info("function %s: SnapStart snapshot %s of version %s taken (%s, %llu new chunks)", fn->name, name,
		 fn->version, digest, (unsigned long long)rep.chunks_new);
out:
	snapstart_workdir_remove(dir);
	pthread_mutex_lock(&a->lock);
	if (sb) {
		sb->users--;
		end_locked(sb); /* its pending /next goes with it */
		pthread_cond_broadcast(&a->reaper_cond);
	}
	a->calls--;
	pthread_cond_broadcast(&a->cond);
	pthread_mutex_unlock(&a->lock);
	return r;
}

/* ---- observing ------------------------------------------------------------------------------------------------------ */

void hostagent_get_stats(struct hostagent *a, struct hostagent_stats *out)
{
	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&a->lock);
	out->memory_budget = a->budget;
	out->memory_in_use = pool_memory_in_use(&a->pool);
	for (size_t i = 0; i < a->pool.n; i++) {
		struct pool_entry *e = a->pool.v[i];
		if (e->state == POOL_ENDING)
			continue;
		out->sandboxes++;
		out->starting += e->state == POOL_STARTING;
		out->idle += e->state == POOL_IDLE;
		out->busy += e->state == POOL_BUSY;
		out->provisioned += e->provisioned && sb_of(e)->initialised;
	}
	out->cold_starts = a->cold;
	out->warm_starts = a->warm;
	out->evictions = a->evictions;
	out->expirations = a->expirations;
	pthread_mutex_unlock(&a->lock);
}

int hostagent_list_warm(struct hostagent *a, struct hostagent_warm **out, size_t *n_out)
{
	*out = NULL;
	*n_out = 0;
	struct hostagent_warm *v = NULL;
	size_t n = 0;
	int r = 0;
	pthread_mutex_lock(&a->lock);
	for (size_t i = 0; i < a->pool.n && r == 0; i++) {
		struct pool_entry *e = a->pool.v[i];
		if (e->state == POOL_ENDING || e->oneshot)
			continue;
		size_t j = 0;
		while (j < n && !(strcmp(v[j].name, e->key.name) == 0 && strcmp(v[j].version, e->key.version) == 0 &&
				  strcmp(v[j].revision, e->key.revision) == 0 && strcmp(v[j].image, e->key.digest) == 0))
			j++;
		if (j == n) {
			struct hostagent_warm *nv = realloc(v, (n + 1) * sizeof(*v));
			if (!nv) {
				r = -ENOMEM;
				break;
			}
			v = nv;
			memset(&v[n], 0, sizeof(v[n]));
			v[n].name = strdup(e->key.name);
			v[n].version = strdup(e->key.version);
			v[n].revision = strdup(e->key.revision);
			v[n].image = strdup(e->key.digest);
			n++;
			if (!v[j].name || !v[j].version || !v[j].revision || !v[j].image)
				r = -ENOMEM;
		}
		v[j].idle += e->state == POOL_IDLE;
		v[j].busy += e->state == POOL_BUSY;
		v[j].provisioned += e->provisioned && sb_of(e)->initialised;
	}
	pthread_mutex_unlock(&a->lock);
	if (r < 0) {
		hostagent_warm_free(v, n);
		return r;
	}
	*out = v;
	*n_out = n;
	return 0;
}

void hostagent_warm_free(struct hostagent_warm *v, size_t n)
{
	for (size_t i = 0; v && i < n; i++) {
		free(v[i].name);
		free(v[i].version);
		free(v[i].revision);
		free(v[i].image);
	}
	free(v);
}

int hostagent_read_log(struct hostagent *a, const char *name, size_t max, char **out, size_t *out_len)
{
	if (!ha_wire_name_ok(name))
		return -EINVAL;
	return fnlog_read(a->logdir, name, max, out, out_len);
}

/* ---- the in-process agent as a struct hostagent_ops ------------------------------------------------------------- */

static int local_invoke(void *arg, const struct hostagent_invoke_request *req, struct hostagent_invoke_result *out)
{
	return hostagent_invoke(arg, req, out);
}

static int local_provision(void *arg, const struct hostagent_function *fn, unsigned n)
{
	return hostagent_provision(arg, fn, n);
}

static void local_drain(void *arg, const char *name, const char *version, const char *keep_revision)
{
	hostagent_drain(arg, name, version, keep_revision);
}

static void local_get_stats(void *arg, struct hostagent_stats *out)
{
	hostagent_get_stats(arg, out);
}

static int local_read_log(void *arg, const char *name, size_t max, char **out, size_t *out_len)
{
	return hostagent_read_log(arg, name, max, out, out_len);
}

static bool local_snapshot_supported(void *arg, char *why, size_t len)
{
	return hostagent_snapshot_supported(arg, why, len);
}

static int local_snapshot(void *arg, const struct hostagent_function *fn, const char *name, char digest[65],
			  char *why, size_t why_len)
{
	return hostagent_snapshot(arg, fn, name, digest, why, why_len);
}

const struct hostagent_ops hostagent_local_ops = {
	.invoke = local_invoke,
	.provision = local_provision,
	.drain = local_drain,
	.get_stats = local_get_stats,
	.read_log = local_read_log,
	.snapshot_supported = local_snapshot_supported,
	.snapshot = local_snapshot,
};
