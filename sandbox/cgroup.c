/* cgroup memory and pids limits for a sandbox, v2 first, v1 where the host
 * still binds those controllers to v1 hierarchies (hybrid hosts). */
#define LOG_COMPONENT "sandbox"
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "sandbox/internal.h"

/* The reason a step failed, for the operator's notice; truncation is fine. */
__attribute__((format(printf, 3, 4))) static void why_set(char *why, size_t len, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, len, fmt, ap);
	va_end(ap);
}

/* Write |s| to |dir|/|file|.  Returns 0 or -errno. */
static int cg_write(const char *dir, const char *file, const char *s)
{
	char p[PATH_MAX];
	if ((size_t)snprintf(p, sizeof(p), "%s/%s", dir, file) >= sizeof(p))
		return -ENAMETOOLONG;
	int fd = open(p, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int r = write_full(fd, s, strlen(s));
	close(fd);
	return r;
}

/* Read a small cgroup file into |<buf, len>| (NUL-terminated). */
static int cg_read(const char *dir, const char *file, char *buf, size_t len)
{
	char p[PATH_MAX];
	if ((size_t)snprintf(p, sizeof(p), "%s/%s", dir, file) >= sizeof(p))
		return -ENAMETOOLONG;
	int fd = open(p, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = read(fd, buf, len - 1);
	int e = errno;
	close(fd);
	if (n < 0)
		return -e;
	buf[n] = '\0';
	return 0;
}

/* True if the space-separated |list| contains |word|. */
static bool has_word(const char *list, const char *word)
{
	size_t wl = strlen(word);
	for (const char *p = list; (p = strstr(p, word)); p += wl)
		if ((p == list || p[-1] == ' ' || p[-1] == '\n') && (p[wl] == '\0' || p[wl] == ' ' || p[wl] == '\n'))
			return true;
	return false;
}

/* Where a cgroup hierarchy is mounted: the cgroup2 one if |v1_ctrl| is NULL,
 * else the v1 hierarchy carrying controller |v1_ctrl|. */
static int find_mount(const char *v1_ctrl, char *out, size_t len)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	if (!f)
		return -errno;
	char line[4096];
	int r = -ENOENT;
	while (r == -ENOENT && fgets(line, sizeof(line), f)) {
		/* id parent maj:min root mountpoint options [optional...] - fstype source superopts */
		char *sep = strstr(line, " - ");
		if (!sep)
			continue;
		char mnt[PATH_MAX], fstype[64], src[256], sopts[1024];
		if (sscanf(line, "%*s %*s %*s %*s %4095s", mnt) != 1 ||
		    sscanf(sep + 3, "%63s %255s %1023s", fstype, src, sopts) != 3)
			continue;
		bool ok;
		if (!v1_ctrl) {
			ok = strcmp(fstype, "cgroup2") == 0;
		} else {
			ok = strcmp(fstype, "cgroup") == 0;
			/* superopts are comma separated: rw,memory */
			char *save = NULL, *tok;
			bool found = false;
			for (tok = strtok_r(sopts, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
				found |= strcmp(tok, v1_ctrl) == 0;
			ok = ok && found;
		}
		if (ok && strlen(mnt) < len) {
			strcpy(out, mnt);
			r = 0;
		}
	}
	fclose(f);
	return r;
}

/* The caller's cgroup path in the v2 hierarchy ("0::/path") or in the v1
 * hierarchy carrying |v1_ctrl|. */
static int self_cgroup(const char *v1_ctrl, char *out, size_t len)
{
	FILE *f = fopen("/proc/self/cgroup", "re");
	if (!f)
		return -errno;
	char line[4096];
	int r = -ENOENT;
	while (r == -ENOENT && fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = '\0';
		char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
		if (!c2)
			continue;
		*c2 = '\0';
		const char *ctrls = c1 + 1, *path = c2 + 1;
		bool ok = !v1_ctrl ? strcmp(line, "0") == 0 && *ctrls == '\0' : false;
		if (v1_ctrl) {
			char buf[256];
			snprintf(buf, sizeof(buf), "%s", ctrls);
			char *save = NULL;
			for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
				ok |= strcmp(tok, v1_ctrl) == 0;
		}
		if (ok && strlen(path) < len) {
			strcpy(out, path);
			r = 0;
		}
	}
	fclose(f);
	return r;
}

/* mkdir a sandbox's own cgroup |dir|.  Sandbox cgroups are named after the
 * monitor's pid, and one left behind by a caller that was killed before it
 * could remove it (kill -9 of kindling serve, say) carries a pid the kernel
 * hands out again: then mkdir says EEXIST, and without this the sandbox
 * would fall back to running without limits.  A leftover is empty, and an
 * empty cgroup is removed by rmdir; one that still has tasks or children
 * refuses (EBUSY), so a live sandbox's cgroup is never taken over.  Returns 0
 * or -errno. */
static int cg_mkdir_fresh(const char *dir)
{
	if (mkdir(dir, 0755) == 0)
		return 0;
	if (errno != EEXIST)
		return -errno;
	if (rmdir(dir) < 0 && errno != ENOENT)
		return -EEXIST;
	log_info("removed the leftover empty cgroup %s of an earlier sandbox, whose pid this one reuses", dir);
	return mkdir(dir, 0755) < 0 ? -errno : 0;
}

static int join(char *out, size_t len, const char *a, const char *b, const char *c)
{
	/* a + b may be "/sys/fs/cgroup" + "/" : squeeze the double slash for readability. */
	if (strcmp(b, "/") == 0)
		b = "";
	if ((size_t)snprintf(out, len, "%s%s/%s", a, b, c) >= len)
		return -ENAMETOOLONG;
	return 0;
}

/* Try cgroup v2.  Returns 0 with |cg->v2_dir| created and limited, or -errno
 * with a reason in |why| and nothing left behind. */
static int try_v2(struct sandbox_cgroup *cg, const char *name, uint64_t mem, uint32_t pids, char *why, size_t wlen)
{
	char root[PATH_MAX], self[PATH_MAX], parent[PATH_MAX], ctl[512];
	int r = find_mount(NULL, root, sizeof(root));
	if (r < 0) {
		why_set(why, wlen, "no cgroup2 hierarchy is mounted");
		return r;
	}
	if (cg_read(root, "cgroup.controllers", ctl, sizeof(ctl)) < 0 || (mem && !has_word(ctl, "memory")) ||
	    (pids && !has_word(ctl, "pids"))) {
		why_set(why, wlen, "the cgroup2 hierarchy at %s lacks the memory/pids controllers (bound to cgroup v1?)",
			 root);
		return -ENOTSUP;
	}
	/* A manager (systemd Delegate=yes, a container runtime) may have handed
	 * us our own cgroup with the controllers enabled for children: use it.
	 * Otherwise make <root>/kindling, enabling them top-down; the root
	 * cgroup is exempt from the no-internal-processes rule, ours is not. */
	parent[0] = '\0';
	if (self_cgroup(NULL, self, sizeof(self)) == 0 && strcmp(self, "/") != 0) {
		char p[PATH_MAX];
		if ((size_t)snprintf(p, sizeof(p), "%s%s", root, self) < sizeof(p) &&
		    cg_read(p, "cgroup.subtree_control", ctl, sizeof(ctl)) == 0 && (!mem || has_word(ctl, "memory")) &&
		    (!pids || has_word(ctl, "pids")) && access(p, W_OK) == 0)
			strcpy(parent, p);
	}
	if (!parent[0]) {
		const char *enable = mem && pids ? "+memory +pids" : mem ? "+memory" : "+pids";
		if ((r = cg_write(root, "cgroup.subtree_control", enable)) < 0) {
			why_set(why, wlen, "cannot enable %s in %s/cgroup.subtree_control: %s", enable, root, strerror(-r));
			return r;
		}
		if ((r = join(parent, sizeof(parent), root, "", "kindling")) < 0)
			return r;
		if (mkdir(parent, 0755) < 0 && errno != EEXIST) {
			r = -errno;
			why_set(why, wlen, "mkdir %s: %s", parent, strerror(-r));
			return r;
		}
		if ((r = cg_write(parent, "cgroup.subtree_control", enable)) < 0) {
			why_set(why, wlen, "cannot enable %s in %s/cgroup.subtree_control: %s", enable, parent,
				 strerror(-r));
			return r;
		}
	}
	if ((r = join(cg->v2_dir, sizeof(cg->v2_dir), parent, "", name)) < 0)
		return r;
	if ((r = cg_mkdir_fresh(cg->v2_dir)) < 0) {
		why_set(why, wlen, "mkdir %s: %s", cg->v2_dir, strerror(-r));
		cg->v2_dir[0] = '\0';
		return r;
	}
	char v[32];
	if (mem) {
		snprintf(v, sizeof(v), "%llu", (unsigned long long)mem);
		r = cg_write(cg->v2_dir, "memory.max", v);
		/* No swap: a limit that spills to swap is not a limit.  The file
		 * is absent without swap accounting, which is fine. */
		if (r == 0 && cg_write(cg->v2_dir, "memory.swap.max", "0") < 0)
			log_debug("memory.swap.max not set in %s", cg->v2_dir);
	}
	if (r == 0 && pids) {
		snprintf(v, sizeof(v), "%u", pids);
		r = cg_write(cg->v2_dir, "pids.max", v);
	}
	if (r < 0) {
		why_set(why, wlen, "set limits in %s: %s", cg->v2_dir, strerror(-r));
		rmdir(cg->v2_dir);
		cg->v2_dir[0] = '\0';
		return r;
	}
	cg->kind = SANDBOX_CG_V2;
	return 0;
}

/* Make the v1 cgroup |name| under the caller's cgroup in |ctrl|'s hierarchy. */
static int v1_make(const char *ctrl, const char *name, char *out, size_t len, char *why, size_t wlen)
{
	char mnt[PATH_MAX], self[PATH_MAX];
	int r = find_mount(ctrl, mnt, sizeof(mnt));
	if (r < 0) {
		why_set(why, wlen, "no cgroup v1 %s hierarchy either", ctrl);
		return r;
	}
	if ((r = self_cgroup(ctrl, self, sizeof(self))) < 0) {
		why_set(why, wlen, "not in any %s cgroup", ctrl);
		return r;
	}
	if ((r = join(out, len, mnt, self, name)) < 0)
		return r;
	if ((r = cg_mkdir_fresh(out)) < 0) {
		why_set(why, wlen, "mkdir %s: %s", out, strerror(-r));
		out[0] = '\0';
		return r;
	}
	return 0;
}

static int try_v1(struct sandbox_cgroup *cg, const char *name, uint64_t mem, uint32_t pids, char *why, size_t wlen)
{
	char v[32];
	int r = 0;
	if (mem) {
		if ((r = v1_make("memory", name, cg->mem_dir, sizeof(cg->mem_dir), why, wlen)) < 0)
			goto fail;
		snprintf(v, sizeof(v), "%llu", (unsigned long long)mem);
		/* memsw (memory+swap) must be set after the memory limit and be >= it. */
		if ((r = cg_write(cg->mem_dir, "memory.limit_in_bytes", v)) < 0) {
			why_set(why, wlen, "set %s/memory.limit_in_bytes: %s", cg->mem_dir, strerror(-r));
			goto fail;
		}
		if (cg_write(cg->mem_dir, "memory.memsw.limit_in_bytes", v) < 0)
			log_debug("memory.memsw.limit_in_bytes not set in %s (no swap accounting)", cg->mem_dir);
	}
	if (pids) {
		if ((r = v1_make("pids", name, cg->pids_dir, sizeof(cg->pids_dir), why, wlen)) < 0)
			goto fail;
		snprintf(v, sizeof(v), "%u", pids);
		if ((r = cg_write(cg->pids_dir, "pids.max", v)) < 0) {
			why_set(why, wlen, "set %s/pids.max: %s", cg->pids_dir, strerror(-r));
			goto fail;
		}
	}
	cg->kind = SANDBOX_CG_V1;
	return 0;
fail:
	if (cg->mem_dir[0])
		rmdir(cg->mem_dir);
	if (cg->pids_dir[0])
		rmdir(cg->pids_dir);
	cg->mem_dir[0] = cg->pids_dir[0] = '\0';
	return r;
}

int sandbox_cgroup_create(struct sandbox_cgroup *cg, const char *name, uint64_t memory_limit, uint32_t pids_limit,
			  char *notice, size_t len)
{
	memset(cg, 0, sizeof(*cg));
	if (len)
		notice[0] = '\0';
	if (!memory_limit && !pids_limit)
		return 0;
	char why2[512], why1[512];
	if (try_v2(cg, name, memory_limit, pids_limit, why2, sizeof(why2)) == 0)
		return 0;
	if (try_v1(cg, name, memory_limit, pids_limit, why1, sizeof(why1)) == 0) {
		why_set(notice, len, "notice: cgroup v2 not usable (%s); memory/pids limits use cgroup v1", why2);
		return 0;
	}
	why_set(notice, len, "notice: no usable cgroup for memory/pids limits (v2: %s; v1: %s); running without limits",
		 why2, why1);
	return 0;
}

int sandbox_cgroup_attach(const struct sandbox_cgroup *cg, pid_t pid)
{
	char v[32];
	snprintf(v, sizeof(v), "%d", (int)pid);
	int r = 0;
	if (cg->kind == SANDBOX_CG_V2)
		r = cg_write(cg->v2_dir, "cgroup.procs", v);
	if (cg->kind == SANDBOX_CG_V1 && cg->mem_dir[0])
		r = cg_write(cg->mem_dir, "cgroup.procs", v);
	if (r == 0 && cg->kind == SANDBOX_CG_V1 && cg->pids_dir[0])
		r = cg_write(cg->pids_dir, "cgroup.procs", v);
	if (r < 0)
		log_err("move pid %d into the sandbox cgroup: %s", (int)pid, strerror(-r));
	return r;
}

/* The "oom_kill N" counter in a memory.events (v2) or memory.oom_control (v1) file. */
static bool oom_count(const char *dir, const char *file)
{
	char buf[1024];
	if (cg_read(dir, file, buf, sizeof(buf)) < 0)
		return false;
	const char *p = strstr(buf, "oom_kill ");
	return p && strtoull(p + 9, NULL, 10) > 0;
}

bool sandbox_cgroup_oom_killed(const struct sandbox_cgroup *cg)
{
	if (cg->kind == SANDBOX_CG_V2)
		return oom_count(cg->v2_dir, "memory.events");
	if (cg->kind == SANDBOX_CG_V1 && cg->mem_dir[0])
		return oom_count(cg->mem_dir, "memory.oom_control");
	return false;
}

bool sandbox_cgroup_pids_limited(const struct sandbox_cgroup *cg)
{
	const char *dir = cg->kind == SANDBOX_CG_V2 ? cg->v2_dir : cg->kind == SANDBOX_CG_V1 ? cg->pids_dir : "";
	char buf[256];
	if (!dir[0] || cg_read(dir, "pids.events", buf, sizeof(buf)) < 0)
		return false;
	const char *p = strstr(buf, "max ");
	return p && strtoull(p + 4, NULL, 10) > 0;
}

/* The character devices a sandbox's workload may use: the nodes its /dev
 * holds (null, zero, full, random, urandom, tty, ptmx) and its own
 * pseudo-terminals (major 136..143).  Block devices: none. */
static const char *const dev_allow[] = {
	"c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm", "c 5:2 rwm",
	"c 136:* rwm", "c 137:* rwm", "c 138:* rwm", "c 139:* rwm", "c 140:* rwm", "c 141:* rwm", "c 142:* rwm",
	"c 143:* rwm",
};

int sandbox_cgroup_devices(struct sandbox_cgroup *cg, const char *name, char *notice, size_t len)
{
	if (len)
		notice[0] = '\0';
	char mnt[PATH_MAX], self[PATH_MAX];
	if (find_mount("devices", mnt, sizeof(mnt)) < 0) {
		/* cgroup v2 has no devices files; it takes a BPF program, which
		 * kindling does not load: the sandbox's other layers (nodev
		 * mounts, no CAP_MKNOD, the user namespace) already keep devices
		 * out.  Nothing to say to the operator. */
		return 0;
	}
	int r = self_cgroup("devices", self, sizeof(self));
	if (r == 0)
		r = join(cg->dev_dir, sizeof(cg->dev_dir), mnt, self, name);
	if (r == 0)
		r = cg_mkdir_fresh(cg->dev_dir);
	if (r < 0) {
		why_set(notice, len, "notice: no device cgroup for the sandbox (%s in the devices hierarchy at %s: %s); "
			"devices stay limited by nodev mounts and capabilities", name, mnt, strerror(-r));
		cg->dev_dir[0] = '\0';
		return 0;
	}
	if ((r = cg_write(cg->dev_dir, "devices.deny", "a")) == 0)
		for (size_t i = 0; i < sizeof(dev_allow) / sizeof(dev_allow[0]) && r == 0; i++)
			r = cg_write(cg->dev_dir, "devices.allow", dev_allow[i]);
	if (r < 0) {
		log_err("set the device allowlist in %s: %s", cg->dev_dir, strerror(-r));
		rmdir(cg->dev_dir);
		cg->dev_dir[0] = '\0';
		return r;
	}
	return 0;
}

int sandbox_cgroup_tasks_file(const char *dir, char *out, size_t len)
{
	if (!dir[0]) {
		out[0] = '\0';
		return 0;
	}
	return (size_t)snprintf(out, len, "%s/tasks", dir) >= len ? -ENAMETOOLONG : 0;
}

int sandbox_cgroup_join_self(const char *tasks_file)
{
	int fd = open(tasks_file, O_WRONLY | O_CLOEXEC);
	int r = fd < 0 ? -errno : write_full(fd, "0", 1);
	if (fd >= 0)
		close(fd);
	if (r < 0)
		log_err("sandbox: join the cgroup through %s: %s", tasks_file, strerror(-r));
	return r;
}

/* Where |cg|'s peak memory use is kept: a directory and a file in it; false
 * if |cg| has no memory cgroup. */
static bool peak_where(const struct sandbox_cgroup *cg, const char **dir, const char **file)
{
	*dir = cg->kind == SANDBOX_CG_V2 ? cg->v2_dir : cg->kind == SANDBOX_CG_V1 ? cg->mem_dir : "";
	*file = cg->kind == SANDBOX_CG_V2 ? "memory.peak" : "memory.max_usage_in_bytes";
	return (*dir)[0] != '\0';
}

int sandbox_cgroup_peak_file(const struct sandbox_cgroup *cg, char *out, size_t len)
{
	const char *dir, *file;
	if (len)
		out[0] = '\0';
	if (!peak_where(cg, &dir, &file))
		return 0;
	if ((size_t)snprintf(out, len, "%s/%s", dir, file) >= len) {
		out[0] = '\0';
		return -ENAMETOOLONG;
	}
	if (access(out, R_OK) < 0)
		out[0] = '\0'; /* v2 without the memory controller, or a kernel before 5.19 */
	return 0;
}

uint64_t sandbox_cgroup_memory_peak(const struct sandbox_cgroup *cg)
{
	const char *dir, *file;
	char buf[64];
	if (!peak_where(cg, &dir, &file) || cg_read(dir, file, buf, sizeof(buf)) < 0)
		return 0;
	char *end;
	errno = 0;
	unsigned long long v = strtoull(buf, &end, 10);
	if (errno || end == buf || (*end != '\0' && *end != '\n'))
		return 0;
	return v;
}

/* Kill every task listed in |dir|/cgroup.procs (v1 has no cgroup.kill). */
static void kill_procs(const char *dir)
{
	char buf[4096];
	if (cg_read(dir, "cgroup.procs", buf, sizeof(buf)) < 0)
		return;
	for (char *p = buf; *p;) {
		char *end;
		long pid = strtol(p, &end, 10);
		if (end == p)
			break;
		if (pid > 1)
			kill((pid_t)pid, SIGKILL);
		p = end + (*end != '\0');
	}
}

/* rmdir a cgroup; EBUSY lasts while the kernel finishes tearing down exited
 * tasks, so retry for up to a second. */
static void cg_rmdir(const char *dir)
{
	for (int i = 0; i < 100; i++) {
		if (rmdir(dir) == 0 || errno == ENOENT)
			return;
		if (errno != EBUSY)
			break;
		if (i == 0 && cg_write(dir, "cgroup.kill", "1") < 0)
			kill_procs(dir);
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	log_warn("cgroup %s could not be removed: %s; remove it by hand once its tasks are gone", dir,
		 strerror(errno));
}

void sandbox_cgroup_destroy(struct sandbox_cgroup *cg)
{
	if (!cg)
		return;
	if (cg->v2_dir[0])
		cg_rmdir(cg->v2_dir);
	if (cg->mem_dir[0])
		cg_rmdir(cg->mem_dir);
	if (cg->pids_dir[0])
		cg_rmdir(cg->pids_dir);
	if (cg->dev_dir[0])
		cg_rmdir(cg->dev_dir);
	memset(cg, 0, sizeof(*cg));
}

/* Whether |name| is SANDBOX_CGROUP_PREFIX followed by a pid, into |*pid|. */
static bool sandbox_cgroup_name_pid(const char *name, pid_t *pid)
{
	size_t pl = strlen(SANDBOX_CGROUP_PREFIX);
	if (strncmp(name, SANDBOX_CGROUP_PREFIX, pl) != 0 || !name[pl])
		return false;
	unsigned long long v = 0;
	for (const char *c = name + pl; *c; c++) {
		if (*c < '0' || *c > '9' || v > 100000000ull)
			return false;
		v = v * 10 + (unsigned)(*c - '0');
	}
	*pid = (pid_t)v;
	return v > 0;
}

/* The sweep of the directory that holds cgroup |dir| (see the contract). */
static unsigned sweep_next_to(const char *dir, unsigned max)
{
	char parent[PATH_MAX];
	const char *slash = strrchr(dir, '/');
	if (!dir[0] || !slash || (size_t)(slash - dir) >= sizeof(parent))
		return 0;
	memcpy(parent, dir, (size_t)(slash - dir));
	parent[slash - dir] = '\0';
	DIR *d = opendir(parent);
	if (!d)
		return 0;
	unsigned removed = 0;
	struct dirent *de;
	while (removed < max && (de = readdir(d))) {
		pid_t pid;
		if (!sandbox_cgroup_name_pid(de->d_name, &pid))
			continue;
		/* A monitor that still exists, even as a zombie its caller has
		 * not reaped, owns its cgroup; EPERM also means it exists. */
		if (kill(pid, 0) == 0 || errno != ESRCH)
			continue;
		char p[PATH_MAX];
		if ((size_t)snprintf(p, sizeof(p), "%s/%s", parent, de->d_name) >= sizeof(p))
			continue;
		/* The kernel refuses a cgroup that still holds a task or a child:
		 * whatever runs in it is left alone. */
		if (rmdir(p) == 0)
			removed++;
	}
	closedir(d);
	return removed;
}

unsigned sandbox_cgroup_sweep(const struct sandbox_cgroup *cg, unsigned max)
{
	if (!cg)
		return 0;
	unsigned n = sweep_next_to(cg->v2_dir, max) + sweep_next_to(cg->mem_dir, max) +
		     sweep_next_to(cg->pids_dir, max) + sweep_next_to(cg->dev_dir, max);
	if (n)
		log_info("removed %u cgroup%s left behind by sandboxes whose callers were killed", n, n == 1 ? "" : "s");
	return n;
}
