/* guest_peer: the host end of a micro-VM's invocation channel, for tests and
 * benchmarks (vmm/guest/protocol.h).  It listens, takes one connection from
 * the guest init, sends one invocation, relays the guest's stdout and stderr
 * to its own, and exits with the command's status.
 *
 *   guest_peer --now
 *   guest_peer (--unix PATH | --vsock PORT) [--timeout S] [--user U]
 *              [--workdir DIR] [--env K=V]... [--restore GEN]... [--times]
 *              [--spawn SHELL-COMMAND] (--resume GEN | -- ARGV...)
 *
 *   --unix PATH   listen on a unix socket: kvmm's "{uds_path}_1024"
 *   --vsock PORT  listen on AF_VSOCK (any CID), for a VMM with vhost-vsock
 *   --timeout S   give up after S seconds in all (default 120)
 *   --times       print "guest_peer: connected T1 first-output T2 exit T3"
 *                 (seconds since it listened; first output is the first
 *                 stdout frame) to stderr at the end; with --spawn the line
 *                 is "guest_peer: spawn T0 connected T1 first-output T2 exit
 *                 T3", T0 the monotonic clock at the spawn and the others
 *                 counted from it
 *   --spawn CMD   once listening, run /bin/sh -c CMD (stdin /dev/null), e.g.
 *                 the VMM, so the times cover its start; it is waited for
 *                 before guest_peer exits (a VMM it put in the background
 *                 is not)
 *   --resume GEN  the guest on the first connection is a restored one,
 *                 waiting for 'S': send 'S' with generation GEN and 32
 *                 random bytes instead of an invocation
 *   --now         print the monotonic clock (seconds) and exit, so shell
 *                 scripts can timestamp other steps on the same clock
 *   --restore GEN act out a restore from a snapshot, once per --restore, in
 *                 order: on the next stdout frame, drop the connection (as
 *                 a VMM's vsock transport reset does), take the init's new
 *                 one and send 'S' with generation GEN and 32 random bytes;
 *                 "guest_peer: restore GEN" goes to stderr
 *
 * The socket is ready when PATH exists (it is bound under a temporary name
 * and renamed once listening).  Exit status: the command's code, 128+N after
 * signal N; 124 on timeout; 125 if the channel broke or closed without an
 * exit status ('F' messages are printed as "guest_peer: guest: ...").
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
#include <time.h>
#include <unistd.h>

#include <linux/vm_sockets.h>

#include "common/common.h"
#include "vmm/guest/protocol.h"

#define MAX_ENV 256
#define MAX_RESTORES 8

static int listen_unix(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char tmp[sizeof(sa.sun_path)];
	if (snprintf(tmp, sizeof(tmp), "%s.tmp-%d", path, (int)getpid()) >= (int)sizeof(tmp)) {
		fprintf(stderr, "guest_peer: socket path %s is too long\n", path);
		return -1;
	}
	memcpy(sa.sun_path, tmp, strlen(tmp) + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 1) < 0 || rename(tmp, path) < 0) {
		fprintf(stderr, "guest_peer: listen on %s: %s\n", path, strerror(errno));
		unlink(tmp);
		return -1;
	}
	return fd;
}

static int listen_vsock(unsigned port)
{
	struct sockaddr_vm sa = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port };
	int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 1) < 0) {
		fprintf(stderr, "guest_peer: listen on vsock port %u: %s (is vhost_vsock loaded?)\n", port,
			strerror(errno));
		return -1;
	}
	return fd;
}

/* Milliseconds left until |deadline|, at least 0. */
static int ms_left(double deadline)
{
	double left = deadline - now_seconds();
	return left > 0 ? (int)(left * 1000) + 1 : 0;
}

/* Drop |fd| as a restored VM's transport reset would, take the guest
 * init's next connection on |lfd| and send it 'S' for |generation|; |d|
 * starts over.  Returns the new connection, or -1. */
static int act_restore(int fd, int lfd, uint64_t generation, double deadline, struct guest_decoder *d)
{
	close(fd);
	guest_decoder_cleanup(d);
	guest_decoder_init(d, GUEST_DIR_GUEST_TO_HOST);
	fprintf(stderr, "guest_peer: restore %llu\n", (unsigned long long)generation);
	struct pollfd p = { .fd = lfd, .events = POLLIN };
	int pr;
	while ((pr = poll(&p, 1, ms_left(deadline))) < 0 && errno == EINTR)
		;
	int nfd = pr > 0 ? accept4(lfd, NULL, NULL, SOCK_CLOEXEC) : -1;
	if (nfd < 0) {
		fprintf(stderr, "guest_peer: the guest did not connect again after restore %llu\n",
			(unsigned long long)generation);
		return -1;
	}
	struct guest_restore rs = { .generation = generation };
	int r = random_bytes(rs.seed, sizeof(rs.seed));
	if (r == 0)
		r = guest_restore_send(nfd, &rs);
	if (r < 0) {
		fprintf(stderr, "guest_peer: send 'S': %s\n", strerror(-r));
		close(nfd);
		return -1;
	}
	return nfd;
}

/* Run /bin/sh -c |cmd| with stdin on /dev/null.  Returns its pid, or -1. */
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
		fprintf(stderr, "guest_peer: fork: %s\n", strerror(errno));
	return pid;
}

int main(int argc, char **argv)
{
	const char *unix_path = NULL, *user = NULL, *workdir = NULL, *spawn_cmd = NULL;
	uint64_t resume = 0;
	const char *env[MAX_ENV + 1];
	size_t n_env = 0;
	long vsock_port = -1;
	double timeout = 120;
	bool times = false;
	uint64_t restores[MAX_RESTORES];
	size_t n_restores = 0, restored = 0;
	static const struct option lo[] = {
		{ "unix", required_argument, NULL, 'u' },   { "vsock", required_argument, NULL, 'v' },
		{ "timeout", required_argument, NULL, 't' }, { "user", required_argument, NULL, 'U' },
		{ "workdir", required_argument, NULL, 'W' }, { "env", required_argument, NULL, 'E' },
		{ "times", no_argument, NULL, 'T' },	     { "restore", required_argument, NULL, 'S' },
		{ "spawn", required_argument, NULL, 'P' },   { "resume", required_argument, NULL, 'R' },
		{ "now", no_argument, NULL, 'N' },	     { NULL, 0, NULL, 0 },
	};
	int c;
	while ((c = getopt_long(argc, argv, "+", lo, NULL)) != -1) {
		switch (c) {
		case 'u': unix_path = optarg; break;
		case 'v': vsock_port = strtol(optarg, NULL, 10); break;
		case 't': timeout = strtod(optarg, NULL); break;
		case 'U': user = optarg; break;
		case 'W': workdir = optarg; break;
		case 'E':
			if (n_env == MAX_ENV) {
				fprintf(stderr, "guest_peer: more than %d --env\n", MAX_ENV);
				return 2;
			}
			env[n_env++] = optarg;
			break;
		case 'T': times = true; break;
		case 'P': spawn_cmd = optarg; break;
		case 'R':
			resume = strtoull(optarg, NULL, 10);
			if (resume == 0) {
				fprintf(stderr, "guest_peer: --resume wants a generation of 1 or more\n");
				return 2;
			}
			break;
		case 'N': printf("%.6f\n", now_seconds()); return 0;
		case 'S':
			if (n_restores == MAX_RESTORES) {
				fprintf(stderr, "guest_peer: more than %d --restore\n", MAX_RESTORES);
				return 2;
			}
			restores[n_restores++] = strtoull(optarg, NULL, 10);
			break;
		default: return 2;
		}
	}
	env[n_env] = NULL;
	if ((!unix_path) == (vsock_port < 0) || (resume != 0) == (optind < argc) || timeout <= 0) {
		fprintf(stderr, "usage: guest_peer --now | guest_peer (--unix PATH | --vsock PORT) [--timeout S] [--user U] "
				"[--workdir DIR] [--env K=V]... [--restore GEN]... [--times] [--spawn CMD] "
				"(--resume GEN | -- ARGV...)\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	int lfd = unix_path ? listen_unix(unix_path) : listen_vsock((unsigned)vsock_port);
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
		fprintf(stderr, "guest_peer: no connection from the guest within %.0f s\n", timeout);
		return 124;
	}
	int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "guest_peer: accept: %s\n", strerror(errno));
		return 125;
	}
	if (n_restores == 0)
		close(lfd); /* else the init connects again after each restore */
	t_conn = now_seconds() - t0;
	int r;
	if (resume) {
		struct guest_restore rs = { .generation = resume };
		r = random_bytes(rs.seed, sizeof(rs.seed));
		if (r == 0)
			r = guest_restore_send(fd, &rs);
	} else {
		r = guest_invocation_send(fd, (const char *const *)(argv + optind), env, workdir, user, NULL);
	}
	if (r < 0) {
		fprintf(stderr, "guest_peer: send the %s: %s\n", resume ? "'S'" : "invocation", strerror(-r));
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
			fprintf(stderr, "guest_peer: no exit status within %.0f s\n", timeout);
			return 124;
		}
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			fprintf(stderr, "guest_peer: the guest closed the channel without an exit status%s%s\n",
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
				fprintf(stderr, "guest_peer: bad frame from the guest: %s\n", guest_decoder_error(&d));
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
				if (f.type == GUEST_FRAME_STDOUT && restored < n_restores) {
					if ((fd = act_restore(fd, lfd, restores[restored++], deadline, &d)) < 0)
						return 125;
					pos = (size_t)n; /* the rest was on the dropped connection */
				}
				break;
			case GUEST_FRAME_FAIL:
				fprintf(stderr, "guest_peer: guest: %.*s\n", (int)f.len, (const char *)f.payload);
				break;
			default: { /* GUEST_FRAME_EXIT: the decoder lets nothing else through */
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
	if (unix_path)
		unlink(unix_path);
	if (times && spawn_cmd)
		fprintf(stderr, "guest_peer: spawn %.6f connected %.6f first-output %.6f exit %.6f\n", t0, t_conn,
			t_out, t_exit);
	else if (times)
		fprintf(stderr, "guest_peer: connected %.3f first-output %.3f exit %.3f\n", t_conn, t_out, t_exit);
	if (child > 0)
		while (waitpid(child, NULL, 0) < 0 && errno == EINTR)
			;
	return status;
}
