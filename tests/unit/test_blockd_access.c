/* Who may talk to blockd (blockd/sock.c), through the NBD server on real
 * unix sockets:
 *   - the credential rule: root, the daemon's uid, members of the group;
 *   - loopback detection for tcp addresses, and a non-loopback tcp address
 *     refused unless allowed;
 *   - under umask 000 a socket is 0600, or 0660 with the group, and no
 *     private directory is left beside it;
 *   - a stale socket is replaced, a live one and a regular file are not;
 *   - as root: a socket loosened to 0666 by hand still refuses uid 65534
 *     (no greeting, the connection closed), lets it in with the group as a
 *     supplementary group, and refuses it without. */
#include "blockd/internal.h"
#include "tests/check.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <grp.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define OUTSIDER 65534u
#define TEST_GID 65533u

static int zero_read(void *ctx, uint64_t off, void *buf, size_t len)
{
	(void)ctx;
	(void)off;
	memset(buf, 0, len);
	return 0;
}

static void test_rule(void)
{
	struct sock_access none = { 0 }, grp = { .has_group = true, .gid = 100 };
	gid_t sup[] = { 7, 100 }, other[] = { 7, 8 };
	CHECK(sock_creds_allowed(&none, 1000, 0, 0, NULL, 0));		/* root */
	CHECK(sock_creds_allowed(&none, 1000, 1000, 5, NULL, 0));	/* the daemon's own uid */
	CHECK(!sock_creds_allowed(&none, 1000, 1001, 100, sup, 2));	/* no group configured */
	CHECK(!sock_creds_allowed(NULL, 0, 1001, 100, sup, 2));
	CHECK(sock_creds_allowed(&grp, 1000, 1001, 100, NULL, 0));	/* primary group */
	CHECK(sock_creds_allowed(&grp, 1000, 1001, 5, sup, 2));		/* supplementary group */
	CHECK(!sock_creds_allowed(&grp, 1000, 1001, 5, other, 2));
	CHECK(!sock_creds_allowed(&grp, 0, 65534, 65534, NULL, 0));

	struct sock_access acc;
	CHECK(sock_access_init(&acc, NULL, false) == 0 && !acc.has_group && !acc.allow_remote);
	CHECK(sock_access_init(&acc, "root", true) == 0 && acc.has_group && acc.gid == 0 && acc.allow_remote &&
	      strcmp(acc.group, "root") == 0);
	CHECK(sock_access_init(&acc, "no-such-group-kindling", false) == -ENOENT);
}

static bool loopback(const char *ip)
{
	struct sockaddr_storage ss = { 0 };
	if (strchr(ip, ':')) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
		a->sin6_family = AF_INET6;
		if (inet_pton(AF_INET6, ip, &a->sin6_addr) != 1)
			return false;
		return sock_addr_is_loopback((struct sockaddr *)a, sizeof(*a));
	}
	struct sockaddr_in *a = (struct sockaddr_in *)&ss;
	a->sin_family = AF_INET;
	if (inet_pton(AF_INET, ip, &a->sin_addr) != 1)
		return false;
	return sock_addr_is_loopback((struct sockaddr *)a, sizeof(*a));
}

static void test_loopback(const struct nbd_export *exp)
{
	CHECK(loopback("127.0.0.1") && loopback("127.3.2.1") && loopback("::1") && loopback("::ffff:127.0.0.1"));
	CHECK(!loopback("0.0.0.0") && !loopback("10.0.0.1") && !loopback("::") && !loopback("::ffff:10.0.0.1") &&
	      !loopback("128.0.0.1"));
	struct nbd_server *s = NULL;
	CHECK(nbd_server_start("tcp:0.0.0.0:0", exp, 1, NULL, &s) == -EPERM && s == NULL);
	struct sock_access deny = { 0 };
	CHECK(nbd_server_start("tcp:[::]:0", exp, 1, &deny, &s) == -EPERM);
	bool remote = true;
	CHECK(nbd_server_start("tcp:127.0.0.1:0", exp, 1, NULL, &s) == 0);
	CHECK(s && nbd_server_is_tcp(s, &remote) && !remote);
	nbd_server_stop(s);
}

static unsigned mode_of(const char *path, gid_t *gid)
{
	struct stat st;
	if (lstat(path, &st) < 0 || !S_ISSOCK(st.st_mode))
		return 0;
	if (gid)
		*gid = st.st_gid;
	return st.st_mode & 07777;
}

/* Entries of |dir| other than . and .. */
static int entries(const char *dir)
{
	DIR *d = opendir(dir);
	int n = 0;
	struct dirent *de;
	while (d && (de = readdir(d)))
		n += strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0;
	if (d)
		closedir(d);
	return n;
}

static void test_modes(const char *dir, const struct nbd_export *exp)
{
	char path[256], addr[300];
	snprintf(path, sizeof(path), "%s/m.sock", dir);
	snprintf(addr, sizeof(addr), "unix:%s", path);
	mode_t old = umask(0);
	struct nbd_server *s = NULL;
	CHECK(nbd_server_start(addr, exp, 1, NULL, &s) == 0);
	CHECK(mode_of(path, NULL) == 0600);
	CHECK(entries(dir) == 1); /* the private directory is gone */
	nbd_server_stop(s);
	CHECK(entries(dir) == 0); /* and the socket on stop */

	struct sock_access grp = { .has_group = true, .gid = TEST_GID };
	snprintf(grp.group, sizeof(grp.group), "test");
	gid_t gid = 0;
	s = NULL;
	CHECK(nbd_server_start(addr, exp, 1, &grp, &s) == 0);
	CHECK(mode_of(path, &gid) == 0660 && gid == TEST_GID);
	nbd_server_stop(s);
	umask(old);

	/* A stale socket (nobody listens) is replaced ... */
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	memcpy(sa.sun_path, path, strlen(path) + 1);
	CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	close(fd);
	s = NULL;
	CHECK(nbd_server_start(addr, exp, 1, NULL, &s) == 0);
	CHECK(mode_of(path, NULL) == 0600);
	/* ... a live one is not, and stays the first server's ... */
	struct nbd_server *s2 = NULL;
	CHECK(nbd_server_start(addr, exp, 1, NULL, &s2) == -EADDRINUSE && s2 == NULL);
	CHECK(mode_of(path, NULL) == 0600 && entries(dir) == 1);
	nbd_server_stop(s);
	/* ... and a file that is not a socket is never touched. */
	FILE *f = fopen(path, "w");
	CHECK(f && fputs("keep", f) >= 0);
	if (f)
		fclose(f);
	CHECK(nbd_server_start(addr, exp, 1, NULL, &s2) == -EEXIST);
	char buf[8] = { 0 };
	f = fopen(path, "r");
	CHECK(f && fread(buf, 1, 4, f) == 4 && strcmp(buf, "keep") == 0);
	if (f)
		fclose(f);
	unlink(path);
	CHECK(entries(dir) == 0);
}

/* In a child: become uid OUTSIDER with |groups|, connect to |path| and say
 * whether the NBD greeting arrived (exit 0) or the connection closed
 * without one (exit 1); 2 for a setup failure. */
static int outsider_greeted(const char *path, const gid_t *groups, size_t n_groups)
{
	pid_t pid = fork();
	if (pid == 0) {
		if (setgroups(n_groups, groups) < 0 || setresgid(OUTSIDER, OUTSIDER, OUTSIDER) < 0 ||
		    setresuid(OUTSIDER, OUTSIDER, OUTSIDER) < 0)
			_exit(2);
		int fd = socket(AF_UNIX, SOCK_STREAM, 0);
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		memcpy(sa.sun_path, path, strlen(path) + 1);
		if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
			_exit(2);
		struct timeval tv = { .tv_sec = 30 }; /* a hang guard, not a measurement */
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		char greet[18];
		size_t have = 0;
		while (have < sizeof(greet)) {
			ssize_t n = recv(fd, greet + have, sizeof(greet) - have, 0);
			if (n <= 0)
				_exit(1);
			have += (size_t)n;
		}
		_exit(memcmp(greet, "NBDMAGIC", 8) == 0 ? 0 : 2);
	}
	int st = 0;
	if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st))
		return -1;
	return WEXITSTATUS(st);
}

static void test_peers(const char *dir, const struct nbd_export *exp)
{
	if (geteuid() != 0) {
		printf("peer checks not run: they need root to act as uid %u\n", OUTSIDER);
		return;
	}
	char path[256], addr[300];
	snprintf(path, sizeof(path), "%s/p.sock", dir);
	snprintf(addr, sizeof(addr), "unix:%s", path);
	CHECK(chmod(dir, 0755) == 0);
	/* No group: the socket loosened by hand still refuses the outsider. */
	struct nbd_server *s = NULL;
	CHECK(nbd_server_start(addr, exp, 1, NULL, &s) == 0);
	CHECK(chmod(path, 0666) == 0);
	CHECK(outsider_greeted(path, NULL, 0) == 1);
	nbd_server_stop(s);

	/* With a group: its members get in, others do not. */
	struct sock_access grp = { .has_group = true, .gid = TEST_GID };
	snprintf(grp.group, sizeof(grp.group), "test");
	s = NULL;
	CHECK(nbd_server_start(addr, exp, 1, &grp, &s) == 0);
	CHECK(chmod(path, 0666) == 0);
	gid_t member[] = { 7, TEST_GID }, other[] = { 7 };
	CHECK(outsider_greeted(path, member, 2) == 0);
	CHECK(outsider_greeted(path, other, 1) == 1);
	CHECK(chmod(path, 0660) == 0 && chown(path, 0, TEST_GID) == 0);
	CHECK(outsider_greeted(path, member, 2) == 0); /* and through the 0660 mode too */
	nbd_server_stop(s);
}

int main(void)
{
	char tmpl[] = "/tmp/test_blockd_access.XXXXXX";
	char *dir = mkdtemp(tmpl);
	if (!dir)
		return 1;
	struct blockdev dev = { .read_at = zero_read, .size = 1 << 20, .ctx = NULL };
	struct nbd_export exp = { .name = "disk", .dev = &dev };
	test_rule();
	test_loopback(&exp);
	test_modes(dir, &exp);
	test_peers(dir, &exp);
	CHECK(rmdir(dir) == 0);
	return check_report();
}
