/* Whether a client may trust the blockd at a control socket
 * (blockd_ctl_find, which `kindling run` asks before it uses the host's
 * blockd), on real unix sockets:
 *   - nothing there, a regular file, and a socket nobody listens on (stale)
 *     each give their own error and a sentence naming the path;
 *   - a live listener of this user is trusted;
 *   - a socket writable by everyone, or in a directory others may write,
 *     is refused; a sticky directory (like /tmp) is not;
 *   - as root: a socket file of uid 65534, and a listener running as uid
 *     65534 whose socket file was handed to root, are refused. */
#include "blockd/blockd.h"
#include "tests/check.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define OUTSIDER 65534u

/* A unix socket bound at |path|, listening when |listen_too|; returns the
 * fd (close it to stop listening; the file stays). */
static int bound_socket(const char *path, bool listen_too)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	memcpy(sa.sun_path, path, strlen(path) + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || (listen_too && listen(fd, 4) < 0)) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

static void test_as_user(const char *dir)
{
	char path[256], why[512];
	snprintf(path, sizeof(path), "%s/blockd.sock", dir);

	CHECK(blockd_ctl_find(path, why, sizeof(why)) == -ENOENT && strstr(why, path));

	FILE *f = fopen(path, "w");
	CHECK(f != NULL);
	if (f)
		fclose(f);
	CHECK(blockd_ctl_find(path, why, sizeof(why)) == -ENOTSOCK && strstr(why, "is not a socket"));
	unlink(path);

	/* A socket whose listener went away without removing it. */
	int fd = bound_socket(path, false);
	CHECK(fd >= 0);
	close(fd);
	CHECKF(blockd_ctl_find(path, why, sizeof(why)) == -ECONNREFUSED && strstr(why, "nothing listens on"), "%s",
	       why);
	unlink(path);

	fd = bound_socket(path, true);
	CHECK(fd >= 0);
	CHECKF(blockd_ctl_find(path, why, sizeof(why)) == 0, "%s", why);
	CHECK(chmod(path, 0666) == 0);
	CHECKF(blockd_ctl_find(path, why, sizeof(why)) == -EPERM && strstr(why, "mode 0666"), "%s", why);
	CHECK(chmod(path, 0600) == 0);
	CHECK(chmod(dir, 0777) == 0);
	CHECKF(blockd_ctl_find(path, why, sizeof(why)) == -EPERM && strstr(why, "its directory"), "%s", why);
	CHECK(chmod(dir, 01777) == 0);
	CHECKF(blockd_ctl_find(path, why, sizeof(why)) == 0, "%s", why);
	CHECK(chmod(dir, 0700) == 0);
	if (geteuid() == 0) {
		CHECK(chown(path, OUTSIDER, (gid_t)-1) == 0);
		CHECKF(blockd_ctl_find(path, why, sizeof(why)) == -EPERM && strstr(why, "owned by uid 65534"), "%s",
		       why);
	}
	close(fd);
	unlink(path);
}

/* As root: a child becomes uid OUTSIDER, listens in |dir|/outsider (its
 * own), and the parent moves that socket into |dir| as root's.  Only the
 * peer check can tell. */
static void test_outsider_listener(const char *dir)
{
	char sub[256], theirs[300], path[256], why[512];
	snprintf(sub, sizeof(sub), "%s/outsider", dir);
	snprintf(theirs, sizeof(theirs), "%s/s.sock", sub);
	snprintf(path, sizeof(path), "%s/blockd.sock", dir);
	int ready[2], done[2];
	CHECK(mkdir(sub, 0700) == 0 && chown(sub, OUTSIDER, OUTSIDER) == 0 && chmod(dir, 0711) == 0);
	CHECK(pipe(ready) == 0 && pipe(done) == 0);
	pid_t pid = fork();
	if (pid == 0) {
		close(ready[0]);
		close(done[1]);
		if (setresgid(OUTSIDER, OUTSIDER, OUTSIDER) < 0 || setresuid(OUTSIDER, OUTSIDER, OUTSIDER) < 0 ||
		    bound_socket(theirs, true) < 0)
			_exit(2);
		char c = 'r';
		if (write(ready[1], &c, 1) != 1)
			_exit(2);
		/* Listen until the parent is done (EOF on the pipe). */
		while (read(done[0], &c, 1) > 0)
			;
		_exit(0);
	}
	close(ready[1]);
	close(done[0]);
	char c = 0;
	CHECK(pid > 0 && read(ready[0], &c, 1) == 1 && c == 'r');
	CHECK(rename(theirs, path) == 0 && chown(path, 0, 0) == 0 && chmod(dir, 0700) == 0);
	CHECKF(blockd_ctl_find(path, why, sizeof(why)) == -EPERM && strstr(why, "runs as uid 65534"), "%s", why);
	close(done[1]);
	close(ready[0]);
	int st = 0;
	CHECK(pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
	unlink(path);
	CHECK(rmdir(sub) == 0);
}

int main(void)
{
	char tmpl[] = "/tmp/test_blockd_ctl_find.XXXXXX";
	char *dir = mkdtemp(tmpl);
	if (!dir)
		return 1;
	test_as_user(dir);
	if (geteuid() == 0)
		test_outsider_listener(dir);
	CHECK(rmdir(dir) == 0);
	return check_report();
}
