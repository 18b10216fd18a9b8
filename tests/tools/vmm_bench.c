/* vmm_bench: time a virtual machine monitor from process start to a line on
 * its console, and measure its own memory apart from the guest's, for
 * bench/kvmm.sh (kvmm against QEMU, in the same run).
 *
 *   vmm_bench --marker TEXT --guest-mib N [--timeout S] [--label L] -- CMD ARGS...
 *
 * CMD runs with stdout and stderr on a pipe that vmm_bench reads (and copies
 * to its stderr with --echo).  It prints one line to stdout:
 *
 *   vmm_bench: L marker_s 0.812 exit_s 1.530 status 0 rss_kib 41236 guest_kib 30188
 *              overhead_kib 11048 max_overhead_kib 11600
 *
 *   marker_s      seconds from fork to the first console line containing TEXT
 *   exit_s        seconds from fork to the monitor's exit
 *   rss_kib       the monitor's VmRSS when the marker appeared
 *   guest_kib     of that, the resident part of guest RAM: the anonymous
 *                 mappings of at least N MiB (and at most N + 64 MiB, for a
 *                 monitor that pads or aligns the block), from /proc/PID/smaps
 *   overhead_kib  rss_kib - guest_kib: what the monitor itself costs
 *   max_overhead_kib  the largest overhead seen, sampled every 100 ms
 *
 * Exit status 0 if the marker appeared and CMD exited 0, 1 otherwise; CMD is
 * killed (SIGKILL, it is ours) at the timeout.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_BYTES 4096

struct mem_sample {
	uint64_t rss_kib, guest_kib;
};

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* VmRSS from /proc/PID/status and the guest-RAM Rss from /proc/PID/smaps.
 * Returns 0, or -1 if the process is gone. */
static int sample(pid_t pid, uint64_t guest_mib, struct mem_sample *out)
{
	char path[64], line[512];
	memset(out, 0, sizeof(*out));
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %" SCNu64, &out->rss_kib) == 1)
			break;
	fclose(f);
	snprintf(path, sizeof(path), "/proc/%d/smaps", (int)pid);
	if (!(f = fopen(path, "r")))
		return -1;
	uint64_t lo_kib = guest_mib * 1024, hi_kib = (guest_mib + 64) * 1024;
	bool in_guest = false;
	while (fgets(line, sizeof(line), f)) {
		uint64_t start, end, kib;
		char perms[8];
		unsigned long inode = 1;
		int n = 0;
		/* A mapping header: "start-end perms offset dev inode [path]". */
		if (sscanf(line, "%" SCNx64 "-%" SCNx64 " %7s %*s %*s %lu %n", &start, &end, perms, &inode, &n) >= 4 &&
		    strchr(line, '-') < strchr(line, ' ')) {
			uint64_t size_kib = (end - start) / 1024;
			const char *name = line + n;
			bool anon = inode == 0 && (name[0] == '\n' || name[0] == '\0');
			in_guest = anon && size_kib >= lo_kib && size_kib <= hi_kib;
			continue;
		}
		if (in_guest && sscanf(line, "Rss: %" SCNu64, &kib) == 1)
			out->guest_kib += kib;
	}
	fclose(f);
	return 0;
}

int main(int argc, char **argv)
{
	const char *marker = NULL, *label = "vmm";
	uint64_t guest_mib = 0;
	double timeout = 120;
	bool echo = false;
	static const struct option lo[] = {
		{ "marker", required_argument, NULL, 'm' }, { "guest-mib", required_argument, NULL, 'g' },
		{ "timeout", required_argument, NULL, 't' }, { "label", required_argument, NULL, 'l' },
		{ "echo", no_argument, NULL, 'e' },	     { NULL, 0, NULL, 0 },
	};
	int c;
	while ((c = getopt_long(argc, argv, "+", lo, NULL)) != -1) {
		switch (c) {
		case 'm': marker = optarg; break;
		case 'g': guest_mib = strtoull(optarg, NULL, 10); break;
		case 't': timeout = strtod(optarg, NULL); break;
		case 'l': label = optarg; break;
		case 'e': echo = true; break;
		default: return 2;
		}
	}
	if (!marker || !guest_mib || optind >= argc) {
		fprintf(stderr, "usage: vmm_bench --marker TEXT --guest-mib N [--timeout S] [--label L] [--echo] -- CMD...\n");
		return 2;
	}
	int p[2];
	if (pipe(p) < 0) {
		perror("vmm_bench: pipe");
		return 1;
	}
	double t0 = now();
	pid_t pid = fork();
	if (pid < 0) {
		perror("vmm_bench: fork");
		return 1;
	}
	if (pid == 0) {
		dup2(p[1], 1);
		dup2(p[1], 2);
		close(p[0]);
		close(p[1]);
		execvp(argv[optind], argv + optind);
		fprintf(stderr, "vmm_bench: exec %s: %s\n", argv[optind], strerror(errno));
		_exit(127);
	}
	close(p[1]);

	static char line[LINE_MAX_BYTES];
	size_t have = 0;
	double t_marker = -1, t_exit = -1, next_sample = 0;
	struct mem_sample at_marker = { 0 }, s;
	uint64_t max_over = 0;
	bool eof = false;
	int status = -1;
	while (!eof) {
		double left = t0 + timeout - now();
		if (left <= 0) {
			fprintf(stderr, "vmm_bench: %s: no exit within %.0f s; killing it\n", label, timeout);
			kill(pid, SIGKILL);
			break;
		}
		struct pollfd pf = { .fd = p[0], .events = POLLIN };
		int r = poll(&pf, 1, left < 0.1 ? (int)(left * 1000) + 1 : 100);
		if (r < 0 && errno != EINTR)
			break;
		if (now() >= next_sample && sample(pid, guest_mib, &s) == 0) {
			if (s.rss_kib > s.guest_kib && s.rss_kib - s.guest_kib > max_over)
				max_over = s.rss_kib - s.guest_kib;
			next_sample = now() + 0.1;
		}
		if (r <= 0)
			continue;
		ssize_t n = read(p[0], line + have, sizeof(line) - 1 - have);
		if (n <= 0) {
			eof = true;
			break;
		}
		if (echo)
			(void)!write(2, line + have, (size_t)n);
		have += (size_t)n;
		line[have] = '\0';
		if (t_marker < 0 && strstr(line, marker)) {
			t_marker = now() - t0;
			sample(pid, guest_mib, &at_marker);
		}
		/* Keep only the unfinished last line, so a marker split across reads is still found. */
		char *nl = strrchr(line, '\n');
		if (nl) {
			size_t rest = have - (size_t)(nl + 1 - line);
			memmove(line, nl + 1, rest);
			have = rest;
		} else if (have == sizeof(line) - 1) {
			have = 0;
		}
	}
	close(p[0]);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	t_exit = now() - t0;
	int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
	uint64_t over = at_marker.rss_kib > at_marker.guest_kib ? at_marker.rss_kib - at_marker.guest_kib : 0;
	printf("vmm_bench: %s marker_s %.3f exit_s %.3f status %d rss_kib %" PRIu64 " guest_kib %" PRIu64
	       " overhead_kib %" PRIu64 " max_overhead_kib %" PRIu64 "\n",
	       label, t_marker, t_exit, code, at_marker.rss_kib, at_marker.guest_kib, over, max_over);
	if (t_marker < 0)
		fprintf(stderr, "vmm_bench: %s: the marker \"%s\" never appeared\n", label, marker);
	return t_marker >= 0 && code == 0 ? 0 : 1;
}
