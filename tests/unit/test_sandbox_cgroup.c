/* The sandbox's cgroups against the host's real hierarchies: a cgroup left
 * behind under a sandbox's name (its caller was killed before removing it,
 * and the kernel hands the monitor's pid out again) must not make the next
 * sandbox of that name run without limits, and a cgroup that still has a
 * task must never be taken over.  The sweep removes leftovers named after a
 * monitor that no longer exists, in every hierarchy, and leaves alone those
 * whose monitor exists and those that still hold a task. */
/* ctest-labels: no-tsan (single-threaded: nothing for ThreadSanitizer to check) */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/check.h"
#include "sandbox/internal.h"

/* The memory limit |cg| holds, read back from the kernel; 0 if unreadable. */
static unsigned long long memory_limit(const struct sandbox_cgroup *cg)
{
	char p[PATH_MAX + 32], buf[64] = "";
	snprintf(p, sizeof(p), "%s/%s", cg->kind == SANDBOX_CG_V2 ? cg->v2_dir : cg->mem_dir,
		 cg->kind == SANDBOX_CG_V2 ? "memory.max" : "memory.limit_in_bytes");
	FILE *f = fopen(p, "re");
	if (!f)
		return 0;
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = '\0';
	fclose(f);
	return strtoull(buf, NULL, 10);
}

/* Whether every directory of |cg| exists (|want|) or none does. */
static bool dirs_exist(const struct sandbox_cgroup *cg, bool want)
{
	const char *dirs[] = {cg->v2_dir, cg->mem_dir, cg->pids_dir, cg->dev_dir};
	bool ok = true;
	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++)
		if (dirs[i][0])
			ok &= (access(dirs[i], F_OK) == 0) == want;
	return ok;
}

static void test_sweep(void)
{
	/* Pids above pid_max never exist: a monitor that is surely gone. */
	long pid_max = 0;
	FILE *f = fopen("/proc/sys/kernel/pid_max", "re");
	CHECK(f && fscanf(f, "%ld", &pid_max) == 1 && pid_max > 0);
	if (f)
		fclose(f);
	char dead[64], dead_busy[64], live[64], mine[64], notice[1536];
	snprintf(dead, sizeof(dead), SANDBOX_CGROUP_PREFIX "%ld", pid_max + 7);
	snprintf(dead_busy, sizeof(dead_busy), SANDBOX_CGROUP_PREFIX "%ld", pid_max + 8);
	snprintf(live, sizeof(live), SANDBOX_CGROUP_PREFIX "%d", (int)getpid());
	snprintf(mine, sizeof(mine), "kindling-test-sweep-%d", (int)getpid());
	struct sandbox_cgroup d, b, l, m;
	CHECK(sandbox_cgroup_create(&d, dead, 16u << 20, 4, notice, sizeof(notice)) == 0);
	CHECK(sandbox_cgroup_devices(&d, dead, notice, sizeof(notice)) == 0);
	CHECK(sandbox_cgroup_create(&b, dead_busy, 16u << 20, 4, notice, sizeof(notice)) == 0);
	CHECK(sandbox_cgroup_create(&l, live, 16u << 20, 4, notice, sizeof(notice)) == 0);
	CHECK(sandbox_cgroup_devices(&l, live, notice, sizeof(notice)) == 0);
	CHECK(sandbox_cgroup_create(&m, mine, 16u << 20, 4, notice, sizeof(notice)) == 0);
	CHECK(sandbox_cgroup_devices(&m, mine, notice, sizeof(notice)) == 0);
	CHECK(d.kind != SANDBOX_CG_NONE && b.kind != SANDBOX_CG_NONE && l.kind != SANDBOX_CG_NONE &&
	      m.kind != SANDBOX_CG_NONE);
	pid_t child = fork();
	if (child == 0) {
		pause();
		_exit(0);
	}
	CHECK(child > 0 && sandbox_cgroup_attach(&b, child) == 0);

	/* No bound that matters: the host may hold other leftovers too. */
	unsigned n = sandbox_cgroup_sweep(&m, 1u << 20);
	unsigned want = !!d.v2_dir[0] + !!d.mem_dir[0] + !!d.pids_dir[0] + !!d.dev_dir[0];
	CHECKF(n >= want, "the sweep removed %u cgroups, want at least the %u of the dead monitor's", n, want);
	CHECKF(dirs_exist(&d, false), "a leftover of a monitor that no longer exists was not removed");
	CHECKF(dirs_exist(&b, true), "a leftover that still holds a task was removed");
	CHECKF(dirs_exist(&l, true), "the cgroup of a monitor that exists was removed");
	CHECKF(dirs_exist(&m, true), "the sweeping sandbox's own cgroup was removed");

	kill(child, SIGKILL);
	while (waitpid(child, NULL, 0) < 0 && errno == EINTR)
		;
	sandbox_cgroup_destroy(&b);
	sandbox_cgroup_destroy(&l);
	sandbox_cgroup_destroy(&m);
	CHECK(dirs_exist(&d, false));
}

int main(void)
{
	if (geteuid() != 0) {
		fprintf(stderr, "test_sandbox_cgroup: needs root, as the process sandbox does\n");
		return 1;
	}
	char name[64], notice[1536];
	snprintf(name, sizeof(name), "kindling-test-leftover-%d", (int)getpid());

	struct sandbox_cgroup first, second, busy;
	CHECK(sandbox_cgroup_create(&first, name, 64u << 20, 16, notice, sizeof(notice)) == 0);
	CHECKF(first.kind != SANDBOX_CG_NONE, "this host gives the sandbox no cgroup: %s", notice);
	if (first.kind == SANDBOX_CG_NONE)
		return check_report();
	CHECK(sandbox_cgroup_devices(&first, name, notice, sizeof(notice)) == 0);
	bool devices = first.dev_dir[0] != '\0';

	/* |first| is not destroyed: it is the leftover the next one meets. */
	CHECK(sandbox_cgroup_create(&second, name, 32u << 20, 8, notice, sizeof(notice)) == 0);
	CHECKF(second.kind == first.kind, "a leftover cgroup of the same name: kind %d, notice: %s", second.kind,
	       notice);
	CHECKF(!strstr(notice, "without limits"), "a leftover cgroup of the same name: %s", notice);
	CHECK(memory_limit(&second) == 32u << 20);
	CHECK(sandbox_cgroup_devices(&second, name, notice, sizeof(notice)) == 0);
	CHECKF((second.dev_dir[0] != '\0') == devices, "the device cgroup over a leftover: %s", notice);

	/* A cgroup with a task in it belongs to a live sandbox: not taken over. */
	pid_t child = fork();
	if (child == 0) {
		pause();
		_exit(0);
	}
	CHECK(child > 0);
	CHECK(sandbox_cgroup_attach(&second, child) == 0);
	CHECK(sandbox_cgroup_create(&busy, name, 16u << 20, 4, notice, sizeof(notice)) == 0);
	CHECKF(busy.kind == SANDBOX_CG_NONE && strstr(notice, "without limits"),
	       "a cgroup with a live task was taken over: kind %d, notice: %s", busy.kind, notice);
	CHECK(memory_limit(&second) == 32u << 20);
	kill(child, SIGKILL);
	while (waitpid(child, NULL, 0) < 0 && errno == EINTR)
		;

	sandbox_cgroup_destroy(&second);
	sandbox_cgroup_destroy(&busy);
	/* |first| named the same directories, which are gone now. */
	CHECK(access(first.kind == SANDBOX_CG_V2 ? first.v2_dir : first.mem_dir, F_OK) < 0 && errno == ENOENT);
	if (devices)
		CHECK(access(first.dev_dir, F_OK) < 0 && errno == ENOENT);
	test_sweep();
	return check_report();
}
