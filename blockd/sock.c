/* Who may talk to blockd: its unix sockets (the control socket and the NBD
 * export) and the NBD TCP address.
 *
 * Modes.  A socket gets an explicit mode, never the umask's: 0600, or 0660
 * with the group the operator names (`--socket-group`).  It is bound inside
 * a fresh private directory (mkdtemp, 0700) beside its final path, given its
 * group and mode there, made to listen, and only then renamed into place.
 * So at no moment does the final path name a socket with a looser mode, and
 * no process-wide umask is touched (other threads keep creating files).
 *
 * Replacing.  A socket already at the path is replaced only when nobody
 * listens on it (a killed blockd's leftover).  A live one belongs to another
 * server and is kept (-EADDRINUSE); a path that is not a socket is never
 * touched (-EEXIST).  renameat2(RENAME_NOREPLACE) makes the final step
 * atomic, so a socket another server binds meanwhile is never clobbered.
 *
 * Credentials.  Every accepted connection is checked too (SO_PEERCRED,
 * SO_PEERGROUPS): root, the daemon's own uid, or a member of the configured
 * group.  The mode keeps others out already; the check still holds when an
 * operator loosens a mode by hand or a process with CAP_DAC_OVERRIDE
 * connects without being root.
 */
#include "internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <libgen.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define PEER_GROUPS_MAX 65536u /* NGROUPS_MAX on Linux */

int sock_access_init(struct sock_access *acc, const char *group, bool allow_remote)
{
	memset(acc, 0, sizeof(*acc));
	acc->allow_remote = allow_remote;
	if (!group || !*group)
		return 0;
	if (strlen(group) >= sizeof(acc->group)) {
		log_err("socket group \"%s\" is too long", group);
		return -EINVAL;
	}
	struct group gr, *res = NULL;
	size_t cap = 16384;
	char *buf = malloc(cap);
	int e = buf ? getgrnam_r(group, &gr, buf, cap, &res) : ENOMEM;
	if (e == ERANGE) { /* a group with very many members: one retry with room for them */
		char *p = realloc(buf, cap * 16);
		if (p) {
			buf = p;
			e = getgrnam_r(group, &gr, buf, cap * 16, &res);
		} else
			e = ENOMEM;
	}
	if (e == 0 && res) {
		acc->has_group = true;
		acc->gid = gr.gr_gid;
		memcpy(acc->group, group, strlen(group) + 1);
	}
	free(buf);
	if (e != 0) {
		log_err("socket group %s: cannot look it up: %s", group, strerror(e));
		return -e;
	}
	if (!res) {
		log_err("socket group %s does not exist (create it with groupadd, or check `getent group %s`)", group,
			group);
		return -ENOENT;
	}
	return 0;
}

bool sock_creds_allowed(const struct sock_access *acc, uid_t self, uid_t uid, gid_t gid, const gid_t *groups,
			size_t n_groups)
{
	if (uid == 0 || uid == self)
		return true;
	if (!acc || !acc->has_group)
		return false;
	if (gid == acc->gid)
		return true;
	for (size_t i = 0; i < n_groups; i++)
		if (groups[i] == acc->gid)
			return true;
	return false;
}

int sock_peer_check(int fd, const struct sock_access *acc, struct ucred *out)
{
	struct ucred cr;
	socklen_t len = sizeof(cr);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0)
		return -errno;
	*out = cr;
	if (sock_creds_allowed(acc, geteuid(), cr.uid, cr.gid, NULL, 0))
		return 0;
	if (!acc || !acc->has_group)
		return -EACCES;
	/* The peer's supplementary groups, as they were when it connected. */
	gid_t small[64];
	gid_t *groups = small;
	socklen_t glen = sizeof(small);
	int r = 0;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &glen) < 0) {
		if (errno != ERANGE || glen > PEER_GROUPS_MAX * sizeof(gid_t))
			return -errno;
		groups = malloc(glen);
		if (!groups)
			return -ENOMEM;
		if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &glen) < 0)
			r = -errno;
	}
	if (r == 0)
		r = sock_creds_allowed(acc, geteuid(), cr.uid, cr.gid, groups, glen / sizeof(gid_t)) ? 0 : -EACCES;
	if (groups != small)
		free(groups);
	return r;
}

void sock_log_refusal(struct sock_refusals *rl, const char *what, const struct ucred *cr, const struct sock_access *acc,
		      int err)
{
	double now = now_seconds();
	if (rl->logged && now - rl->last < 1.0) {
		rl->suppressed++;
		return;
	}
	char more[64] = "";
	if (rl->suppressed)
		snprintf(more, sizeof(more), " (and %lu more refusals in the last seconds)", rl->suppressed);
	rl->logged = true;
	rl->last = now;
	rl->suppressed = 0;
	if (err != -EACCES) {
		log_warn("%s: refused a connection whose credentials cannot be read: %s%s", what, strerror(-err), more);
		return;
	}
	if (acc && acc->has_group)
		log_warn("%s: refused a connection from uid %u (gid %u, pid %d): only root, uid %u and members of "
			 "group %s may use it; add the user to group %s%s",
			 what, (unsigned)cr->uid, (unsigned)cr->gid, (int)cr->pid, (unsigned)geteuid(), acc->group,
			 acc->group, more);
	else
		log_warn("%s: refused a connection from uid %u (gid %u, pid %d): only root and uid %u may use it; "
			 "start blockd with --socket-group GROUP to let a group in%s",
			 what, (unsigned)cr->uid, (unsigned)cr->gid, (int)cr->pid, (unsigned)geteuid(), more);
}

bool sock_addr_is_loopback(const struct sockaddr *sa, socklen_t len)
{
	if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
	}
	if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
		if (IN6_IS_ADDR_LOOPBACK(a))
			return true;
		return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
	}
	return false;
}

/* Is a socket at |sa| answered?  1 live, 0 stale (nobody listens), or
 * -errno when that cannot be told. */
static int probe_live(const struct sockaddr_un *sa)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int r = connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0 ? 1 : -errno;
	close(fd);
	if (r == -ECONNREFUSED || r == -ENOENT)
		return 0;
	return r == 1 ? 1 : r;
}

/* Move the listening socket at |tmp| to |path|, replacing only a stale
 * socket.  Returns 0, -EADDRINUSE, -EEXIST or -errno (logged). */
static int move_into_place(const char *tmp, const char *path, const char *what)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	memcpy(sa.sun_path, path, strlen(path) + 1);
	/* Two rounds: a stale socket is removed once; if another one appears
	 * in its place meanwhile, that one belongs to a server that just
	 * started, and is left alone. */
	for (int round = 0; round < 2; round++) {
		if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE) == 0)
			return 0;
		int err = errno;
		if (err == EINVAL || err == ENOSYS) {
			log_err("%s %s: the filesystem cannot rename without replacing (%s); put the socket on a "
				"local filesystem such as /run or tmpfs",
				what, path, strerror(err));
			return -err;
		}
		if (err != EEXIST) {
			log_err("%s %s: cannot move the socket into place: %s", what, path, strerror(err));
			return -err;
		}
		struct stat st;
		if (lstat(path, &st) < 0)
			continue; /* gone meanwhile: try again */
		if (!S_ISSOCK(st.st_mode)) {
			log_err("%s %s: the path exists and is not a socket; remove it or choose another path", what,
				path);
			return -EEXIST;
		}
		int live = probe_live(&sa);
		if (live < 0) {
			log_err("%s %s: a socket is there and connecting to it fails with %s, so whether a server "
				"still owns it is unknown; remove it if it is stale",
				what, path, strerror(-live));
			return -EADDRINUSE;
		}
		if (live > 0 || round == 1) {
			log_err("%s %s: another server is listening there (is another blockd running?)", what, path);
			return -EADDRINUSE;
		}
		log_info("%s %s: replacing a stale socket (nobody listens on it)", what, path);
		if (unlink(path) < 0 && errno != ENOENT) {
			err = errno;
			log_err("%s %s: cannot remove the stale socket: %s", what, path, strerror(err));
			return -err;
		}
	}
	return -EADDRINUSE;
}

int sock_listen_unix(const char *path, const struct sock_access *acc, int backlog, const char *what, int *out_fd,
		     dev_t *out_dev, ino_t *out_ino)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (!path || !*path || strlen(path) >= sizeof(sa.sun_path)) {
		log_err("%s \"%s\": the path is empty or longer than %zu bytes", what, path ? path : "",
			sizeof(sa.sun_path) - 1);
		return -ENAMETOOLONG;
	}
	char *copy = strdup(path);
	if (!copy)
		return -ENOMEM;
	char *dir = xasprintf("%s/.bdXXXXXX", dirname(copy));
	free(copy);
	if (!dir)
		return -ENOMEM;
	if (strlen(dir) + 2 >= sizeof(sa.sun_path)) {
		log_err("%s %s: the path is too long: blockd first binds the socket in a private directory beside it "
			"(%s/s), which must fit in %zu bytes; choose a shorter path",
			what, path, dir, sizeof(sa.sun_path) - 1);
		free(dir);
		return -ENAMETOOLONG;
	}
	if (!mkdtemp(dir)) {
		int err = errno;
		log_err("%s %s: cannot create a private directory beside it: %s (does the directory exist, and is it "
			"writable?)",
			what, path, strerror(err));
		free(dir);
		return -err;
	}
	char *tmp = xasprintf("%s/s", dir);
	int fd = tmp ? socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0) : -1;
	int r = !tmp ? -ENOMEM : fd < 0 ? -errno : 0;
	mode_t mode = acc && acc->has_group ? 0660 : 0600;
	const char *step = "socket";
	if (r == 0) {
		memcpy(sa.sun_path, tmp, strlen(tmp) + 1);
		if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
			r = -errno;
			step = "bind";
		} else if (acc && acc->has_group && chown(tmp, (uid_t)-1, acc->gid) < 0) {
			r = -errno;
			step = "give it the socket group (blockd must run as root or as a member of the group)";
		} else if (chmod(tmp, mode) < 0) {
			r = -errno;
			step = "chmod";
		} else if (listen(fd, backlog) < 0) {
			r = -errno;
			step = "listen";
		}
		if (r < 0)
			log_err("%s %s: %s: %s", what, path, step, strerror(-r));
	}
	if (r == 0)
		r = move_into_place(tmp, path, what);
	if (r < 0 && tmp)
		unlink(tmp);
	rmdir(dir);
	free(tmp);
	free(dir);
	struct stat st;
	if (r == 0 && stat(path, &st) < 0)
		r = -errno;
	if (r < 0) {
		if (fd >= 0)
			close(fd);
		return r;
	}
	if (acc && acc->has_group) {
		/* Group members also need to reach the socket through its directory. */
		char *c2 = strdup(path);
		struct stat dst;
		if (c2 && stat(dirname(c2), &dst) == 0 && !(dst.st_mode & S_IXOTH) &&
		    !((dst.st_mode & S_IXGRP) && dst.st_gid == acc->gid))
			log_warn("%s %s: members of group %s cannot reach it: its directory is mode %03o, owner %u:%u; "
				 "let the group in (chgrp %s DIR; chmod g+x DIR)",
				 what, path, acc->group, (unsigned)(dst.st_mode & 07777), (unsigned)dst.st_uid,
				 (unsigned)dst.st_gid, acc->group);
		free(c2);
	}
	*out_fd = fd;
	*out_dev = st.st_dev;
	*out_ino = st.st_ino;
	return 0;
}

void sock_unlink_if_ours(const char *path, dev_t dev, ino_t ino)
{
	struct stat st;
	if (path && lstat(path, &st) == 0 && st.st_dev == dev && st.st_ino == ino)
		unlink(path);
}
