/* snap_peer: the host end of a micro-VM's invocation channel for the
 * snapshot benchmark (bench/suite, scenario "snapshot"), timed from the
 * spawn of the VMM.  Where guest_peer times from its own start and acts a
 * restore out on a connection it invoked itself, snap_peer starts the VMM
 * itself once it listens, and can be the first peer a restored VM meets:
 *
 *   snap_peer --now
 *   snap_peer --unix PATH [--timeout S] [--spawn SHELL-COMMAND] [--env K=V]...
 *             (--restore GEN | -- ARGV...)
 *
 *   --now          print the monotonic clock (seconds) and exit: shell
 *                  scripts timestamp other steps on the same clock
 *   --unix PATH    listen on PATH, kvmm's "{uds_path}_1024"
 *   --spawn CMD    once listening, run /bin/sh -c CMD (stdin /dev/null);
 *                  the times are counted from just before that fork
 *   --restore GEN  the guest init on the first connection is a restored
 *                  one, waiting for 'S': send 'S' with generation GEN and 32
 *                  random bytes instead of an invocation
 *   -- ARGV...     a fresh guest: send ARGV as the invocation (with --env)
 *
 * The guest's stdout and stderr are relayed to snap_peer's.  At the end,
 * "snap_peer: spawn T0 connected T1 first-output T2 exit T3" (monotonic
 * seconds: T0 absolute, the others since T0) goes to stderr.  Exit status:
 * the command's, 128+N after signal N; 124 on timeout; 125 if the channel
 * broke.  The spawned command is waited for before snap_peer exits (a VMM it
 * started in the background is not).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/common.h"
#include "vmm/guest/protocol.h"

#define MAX_ENV 64

static int listen_unix(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char tmp[sizeof(sa.sun_path)];
	if (snprintf(tmp, sizeof(tmp), "%s.tmp-%d", path, (int)getpid()) >= (int)sizeof(tmp)) {
		fprintf(stderr, "snap_peer: socket path %s is too long\n", path);
		return -1;
	}
	memcpy(sa.sun_path, tmp, strlen(tmp) + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 1) < 0 || rename(tmp, path) < 0) {
		fprintf(stderr, "snap_peer: listen on %s: %s\n", path, strerror(errno));
		unlink(tmp);
		return -1;
	}
	return fd;
}

static int ms_left(double deadline)
{
	double left = deadline - now_seconds();
	return left > 0 ? (int)(left * 1000) + 1 : 0;
}

static pid_t spawn(const char *cmd)
{
	pid_t pid = fork();
	if (pid == 0) {
		int nul = open("/dev/null", O_RDONLY);
		if (nul >= 0) {
			dup2(nul, 0);
			close(nul);
		}
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	if (pid < 0)
		fprintf(stderr, "snap_peer: fork: %s\n", strerror(errno));
	return pid;
}

int main(int argc, char **argv)
{
	const char *unix_path = NULL, *spawn_cmd = NULL;
	const char *env[MAX_ENV + 1];
	size_t n_env = 0;
	double timeout = 120;
	uint64_t generation = 0;
	static const struct option lo[] = {
		{ "unix", required_argument, NULL, 'u' },  { "timeout", required_argument, NULL, 't' },
		{ "spawn", required_argument, NULL, 's' }, { "restore", required_argument, NULL, 'S' },
		{ "env", required_argument, NULL, 'E' },   { "now", no_argument, NULL, 'N' },
		{ NULL, 0, NULL, 0 },
	};
	int c;
	while ((c = getopt_long(argc, argv, "+", lo, NULL)) != -1) {
		switch (c) {
		case 'u': unix_path = optarg; break;
		case 't': timeout = strtod(optarg, NULL); break;
		case 's': spawn_cmd = optarg; break;
		case 'S': generation = strtoull(optarg, NULL, 10); break;
		case 'E':
			if (n_env == MAX_ENV) {
				fprintf(stderr, "snap_peer: more than %d --env\n", MAX_ENV);
				return 2;
			}
			env[n_env++] = optarg;
			break;
		case 'N': printf("%.6f\n", now_seconds()); return 0;
		default: return 2;
		}
	}
	env[n_env] = NULL;
	if (!unix_path || timeout <= 0 || (generation == 0) == (optind >= argc)) {
		fprintf(stderr, "usage: snap_peer --now | snap_peer --unix PATH [--timeout S] [--spawn CMD] [--env K=V]... "
				"(--restore GEN | -- ARGV...)\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	int lfd = listen_unix(unix_path);
	if (lfd < 0)
		return 125;
	double t0 = now_seconds(), deadline = t0 + timeout, t_conn = 0, t_out = 0, t_exit = 0;
	pid_t child = -1;
	if (spawn_cmd && (child = spawn(spawn_cmd)) < 0)
		return 125;

	struct pollfd p = { .fd = lfd, .events = POLLIN };
	int pr;
	while ((pr = poll(&p, 1, ms_left(deadline))) < 0 && errno == EINTR)
		;
	if (pr <= 0) {
		fprintf(stderr, "snap_peer: no connection from the guest within %.0f s\n", timeout);
		return 124;
	}
	int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "snap_peer: accept: %s\n", strerror(errno));
		return 125;
	}
	close(lfd);
	unlink(unix_path);
	t_conn = now_seconds() - t0;
	int r;
	if (generation) {
		struct guest_restore rs = { .generation = generation };
		r = random_bytes(rs.seed, sizeof(rs.seed));
		if (r == 0)
			r = guest_restore_send(fd, &rs);
	} else {
		r = guest_invocation_send(fd, (const char *const *)(argv + optind), env, NULL, NULL, NULL);
	}
	if (r < 0) {
		fprintf(stderr, "snap_peer: send the %s: %s\n", generation ? "'S'" : "invocation", strerror(-r));
		return 125;
	}

	struct guest_decoder d;
	guest_decoder_init(&d, GUEST_DIR_GUEST_TO_HOST);
	static uint8_t buf[1 << 16];
	int status = -1;
	while (status < 0) {
		p = (struct pollfd){ .fd = fd, .events = POLLIN };
		while ((pr = poll(&p, 1, ms_left(deadline))) < 0 && errno == EINTR)
			;
		if (pr == 0) {
			fprintf(stderr, "snap_peer: no exit status within %.0f s\n", timeout);
			return 124;
		}
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			fprintf(stderr, "snap_peer: the guest closed the channel without an exit status%s%s\n",
				n < 0 ? ": " : "", n < 0 ? strerror(errno) : "");
			return 125;
		}
		size_t pos = 0;
		while (pos < (size_t)n && status < 0) {
			size_t used;
			struct guest_frame f;
			r = guest_decoder_feed(&d, buf + pos, (size_t)n - pos, &used, &f);
			pos += used;
			if (r < 0) {
				fprintf(stderr, "snap_peer: bad frame from the guest: %s\n", guest_decoder_error(&d));
				return 125;
			}
			if (r == 0)
				break;
			switch (f.type) {
			case GUEST_FRAME_STDOUT:
			case GUEST_FRAME_STDERR:
				if (t_out == 0 && f.type == GUEST_FRAME_STDOUT)
					t_out = now_seconds() - t0;
				if (write_full(f.type == GUEST_FRAME_STDOUT ? 1 : 2, f.payload, f.len) < 0)
					return 125;
				break;
			case GUEST_FRAME_FAIL:
				fprintf(stderr, "snap_peer: guest: %.*s\n", (int)f.len, (const char *)f.payload);
				break;
			default: {
				int32_t code, sig;
				guest_exit_decode(f.payload, f.len, &code, &sig);
				t_exit = now_seconds() - t0;
				status = sig ? 128 + (sig & 0x7f) : (code & 0xff);
				break;
			}
			}
		}
	}
	guest_decoder_cleanup(&d);
	close(fd);
	fprintf(stderr, "snap_peer: spawn %.6f connected %.6f first-output %.6f exit %.6f\n", t0, t_conn, t_out,
		t_exit);
	if (child > 0)
		while (waitpid(child, NULL, 0) < 0 && errno == EINTR)
			;
	return status;
}
