/* The daemon's control socket: a unix stream socket, one JSON request per
 * line, one JSON reply per line.
 *
 *   {"op": "attach", "image": "NAME[:TAG]|DIGEST"}  -> {"ok": true, "image": ..., "digest": ..., "size": N,
 *                                                       "mount": DIR, "metadata_offset": N, "chunks_stored": N,
 *                                                       "config": {entrypoint, cmd, env, working_dir, user}}
 *   {"op": "detach", "image": "..."}                -> {"ok": true}
 *   {"op": "ls"}                                    -> {"ok": true, "images": [{"name", "digest", "size"}]}
 *   {"op": "stats"}                                 -> {"ok": true, "images": {NAME: stats}, "cache": {...}}
 *   {"op": "stats", "image": "..."}                 -> {"ok": true, "stats": {...}}
 *   any failure                                     -> {"ok": false, "error": "...", "errno": N}
 *
 * One thread accepts; each client gets a thread of its own (at most
 * CTL_MAX_CLIENTS at once; one more is told to retry and closed), so a slow
 * or hostile client never delays another.  A client has CTL_DEADLINE_S
 * seconds to send each complete request line, counted from the connection
 * or the previous reply, however it trickles the bytes, and as long to take
 * each reply; past either it is dropped with a log line.  ls and stats run
 * at once; attach and detach run one at a time (op_lock), so the persisted
 * set (state dir, attached.json) stays in step with the attached set and an
 * image being replied about is never detached under the reply.
 *
 * Who may connect: the socket is 0600 (0660 with the socket group) and each
 * client's credentials are checked on accept (sock.c).
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <libgen.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define CTL_MAX_LINE 4096
#define CTL_MAX_REPLY (64u << 20)
#define CTL_MAX_CLIENTS 32u
#define CTL_DEADLINE_S 5.0
#define CTL_CLIENT_SEND_S 30.0 /* blockd_ctl_call: to hand the daemon a request */
#define STATE_FILE "attached.json"

struct ctl_client {
	struct blockd_ctl *c;
	int fd;			/* closed under c->lock, by the client's thread */
	struct ucred cred;
	struct ctl_client *next;
};

struct blockd_ctl {
	struct blockd *b;
	char *path;
	char *state_dir;
	char *what;		/* "control socket PATH", for log lines */
	int listen_fd;
	dev_t sock_dev;
	ino_t sock_ino;
	int stop_pipe[2];
	pthread_t thread;
	bool has_thread;
	struct sock_refusals refusals;	/* the accept thread's */
	double busy_logged_at;		/* the accept thread's: last "too many clients" line */
	pthread_mutex_t op_lock;	/* attach and detach (and the state file): one at a time */
	pthread_mutex_t lock;		/* clients, n_clients */
	pthread_cond_t gone;		/* a client thread ended */
	struct ctl_client *clients;
	unsigned n_clients;
};

/* ---- the request parser (a client's bytes: checked) ---------------------------------------------------------- */

int ctl_parse_request(const char *line, size_t len, struct ctl_request *out, const char **err)
{
	memset(out, 0, sizeof(*out));
	*err = NULL;
	if (len > CTL_MAX_LINE) {
		*err = "request line too long";
		return -EINVAL;
	}
	json_error_t jerr;
	json_t *root = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		*err = "request is not valid JSON";
		return -EINVAL;
	}
	int r = -EINVAL;
	const char *key;
	json_t *v;
	if (!json_is_object(root)) {
		*err = "request must be a JSON object";
		goto out;
	}
	json_object_foreach(root, key, v)
	{
		if (strcmp(key, "op") != 0 && strcmp(key, "image") != 0) {
			*err = "unknown field in request (expected op and image)";
			goto out;
		}
	}
	json_t *op = json_object_get(root, "op");
	if (!json_is_string(op)) {
		*err = "op: expected a string";
		goto out;
	}
	const char *ops = json_string_value(op);
	bool needs_image = strcmp(ops, "attach") == 0 || strcmp(ops, "detach") == 0;
	if (!needs_image && strcmp(ops, "ls") != 0 && strcmp(ops, "stats") != 0) {
		*err = "op: expected attach, detach, ls or stats";
		goto out;
	}
	snprintf(out->op, sizeof(out->op), "%s", ops);
	json_t *img = json_object_get(root, "image");
	if (img) {
		if (!json_is_string(img)) {
			*err = "image: expected a string";
			goto out;
		}
		size_t n = json_string_length(img);
		const char *s = json_string_value(img);
		if (n == 0 || n >= sizeof(out->image) || strlen(s) != n) {
			*err = "image: expected a non-empty name of at most 400 bytes";
			goto out;
		}
		for (size_t i = 0; i < n; i++)
			if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) {
				*err = "image: control characters are not allowed";
				goto out;
			}
		memcpy(out->image, s, n + 1);
	} else if (needs_image) {
		*err = "image: required for attach and detach";
		goto out;
	}
	r = 0;
out:
	json_decref(root);
	return r;
}

/* ---- the attached set, persisted ------------------------------------------------------------------------------- */

/* The attached set as it is now, written over the state file.  Caller holds
 * c->op_lock. */
static int save_state(struct blockd_ctl *c)
{
	if (!c->state_dir)
		return 0;
	struct blockd_image **v;
	size_t n;
	int r = blockd_list_images(c->b, &v, &n);
	if (r < 0)
		return r;
	json_t *arr = json_array();
	for (size_t i = 0; i < n; i++) {
		if (arr)
			json_array_append_new(arr, json_pack("{s:s, s:s}", "image", v[i]->given, "digest", v[i]->digest));
		blockd_image_unref(v[i]);
	}
	free(v);
	json_t *o = arr ? json_pack("{s:o}", "attached", arr) : NULL;
	char *s = o ? json_dumps(o, JSON_INDENT(1)) : NULL;
	json_decref(o);
	if (!s)
		return -ENOMEM;
	char *path = xasprintf("%s/%s", c->state_dir, STATE_FILE);
	r = path ? write_file_atomic(path, s, strlen(s), 0600) : -ENOMEM;
	if (r < 0)
		log_err("cannot save the attached set to %s: %s (a restart will not re-attach; is the state "
			"directory writable?)",
			path ? path : c->state_dir, strerror(-r));
	free(path);
	free(s);
	return r;
}

int blockd_ctl_restore(struct blockd_ctl *c)
{
	if (!c->state_dir)
		return 0;
	char *path = xasprintf("%s/%s", c->state_dir, STATE_FILE);
	if (!path)
		return -ENOMEM;
	uint8_t *buf;
	size_t len;
	int r = read_file_all(path, 16u << 20, &buf, &len);
	if (r == -ENOENT) {
		free(path);
		return 0;
	}
	if (r < 0) {
		log_err("cannot read %s: %s", path, strerror(-r));
		free(path);
		return r;
	}
	json_error_t jerr;
	json_t *root = json_loadb((const char *)buf, len, 0, &jerr);
	free(buf);
	json_t *arr = json_object_get(root, "attached");
	if (!json_is_array(arr)) {
		log_err("%s is not a blockd state file; ignoring it (remove it to silence this)", path);
		json_decref(root);
		free(path);
		return -EBADMSG;
	}
	int first = 0;
	size_t i;
	json_t *e;
	json_array_foreach(arr, i, e)
	{
		const char *name = json_string_value(json_object_get(e, "image"));
		if (!name)
			continue;
		pthread_mutex_lock(&c->op_lock); /* clients may already be connected */
		r = blockd_attach(c->b, name, NULL);
		pthread_mutex_unlock(&c->op_lock);
		if (r < 0) {
			log_err("restart: cannot re-attach %s: %s (it stays in %s for the next restart)", name,
				strerror(-r), path);
			if (!first)
				first = r;
		} else
			log_info("restart: re-attached %s", name);
	}
	json_decref(root);
	free(path);
	return first;
}

/* ---- requests ------------------------------------------------------------------------------------------------ */

static json_t *error_reply(int err, const char *msg)
{
	return json_pack("{s:b, s:s, s:i}", "ok", 0, "error", msg ? msg : strerror(err), "errno", err);
}

static json_t *parsed_json(char *s)
{
	json_t *j = s ? json_loads(s, 0, NULL) : NULL;
	free(s);
	return j ? j : json_null();
}

/* What a runner needs to start the image without reading its manifest
 * itself: where image.raw is (the mount point made absolute, "" when not
 * mounted), the run configuration, and the sizes `kindling run` reports. */
static json_t *attach_reply(struct blockd *b, struct blockd_image *img)
{
	const struct manifest *m = blockd_image_manifest(img);
	const char *mnt = blockd_mountpoint(b);
	char *abs = mnt ? realpath(mnt, NULL) : NULL;
	json_t *reply = json_pack("{s:b, s:s, s:s, s:I, s:s, s:I, s:I, s:o}", "ok", 1, "image",
				  blockd_image_name(img), "digest", blockd_image_digest(img), "size",
				  (json_int_t)blockd_image_size(img), "mount", abs ? abs : mnt ? mnt : "",
				  "metadata_offset", (json_int_t)m->metadata_offset, "chunks_stored",
				  (json_int_t)m->n_chunks, "config", run_config_to_json(&m->config));
	free(abs);
	return reply;
}

static json_t *handle(struct blockd_ctl *c, const struct ctl_request *q)
{
	struct blockd *b = c->b;
	if (strcmp(q->op, "attach") == 0) {
		struct blockd_image *img;
		pthread_mutex_lock(&c->op_lock);
		int r = blockd_attach(b, q->image, &img);
		json_t *reply;
		if (r < 0)
			reply = error_reply(-r, r == -ENOENT ? "no such image in the store" : NULL);
		else {
			save_state(c);
			reply = attach_reply(b, img);
		}
		pthread_mutex_unlock(&c->op_lock);
		return reply;
	}
	if (strcmp(q->op, "detach") == 0) {
		pthread_mutex_lock(&c->op_lock);
		int r = blockd_detach(b, q->image);
		if (r == 0)
			save_state(c);
		pthread_mutex_unlock(&c->op_lock);
		if (r < 0)
			return error_reply(-r, r == -ENOENT ? "not attached" : NULL);
		return json_pack("{s:b}", "ok", 1);
	}
	struct blockd_image **v;
	size_t n;
	int r = blockd_list_images(b, &v, &n);
	if (r < 0)
		return error_reply(-r, NULL);
	json_t *reply = NULL;
	if (strcmp(q->op, "ls") == 0) {
		json_t *arr = json_array();
		for (size_t i = 0; arr && i < n; i++)
			json_array_append_new(arr, json_pack("{s:s, s:s, s:I}", "name", v[i]->name, "digest",
							     v[i]->digest, "size", (json_int_t)blockd_image_size(v[i])));
		reply = arr ? json_pack("{s:b, s:o}", "ok", 1, "images", arr) : NULL;
	} else if (q->image[0]) {
		const char *hex = strncmp(q->image, "sha256:", 7) == 0 ? q->image + 7 : q->image;
		for (size_t i = 0; i < n && !reply; i++)
			if (strcmp(v[i]->name, q->image) == 0 || strcmp(v[i]->given, q->image) == 0 ||
			    strcmp(v[i]->digest, hex) == 0)
				reply = json_pack("{s:b, s:o}", "ok", 1, "stats",
						  parsed_json(blockd_image_stats_json(v[i])));
		if (!reply)
			reply = error_reply(ENOENT, "not attached");
	} else {
		json_t *all = json_object();
		for (size_t i = 0; all && i < n; i++)
			json_object_set_new(all, v[i]->name, parsed_json(blockd_image_stats_json(v[i])));
		reply = all ? json_pack("{s:b, s:o, s:o}", "ok", 1, "images", all, "cache",
					parsed_json(cache_stats_json(b->cache)))
			    : NULL;
	}
	for (size_t i = 0; i < n; i++)
		blockd_image_unref(v[i]);
	free(v);
	return reply ? reply : error_reply(ENOMEM, NULL);
}

/* Wait until |fd| is ready for |events| or |deadline| (now_seconds())
 * passes.  Returns 0, -ETIMEDOUT or -errno. */
static int wait_ready(int fd, short events, double deadline)
{
	for (;;) {
		double left = deadline - now_seconds();
		if (left <= 0)
			return -ETIMEDOUT;
		struct pollfd p = { .fd = fd, .events = events };
		int n = poll(&p, 1, (int)(left * 1000) + 1);
		if (n > 0)
			return 0;
		if (n < 0 && errno != EINTR)
			return -errno;
	}
}

/* Receive into |<buf, cap>| by |deadline|.  Returns the byte count (0 at end
 * of stream), -ETIMEDOUT, or -errno. */
static ssize_t recv_by(int fd, void *buf, size_t cap, double deadline)
{
	for (;;) {
		int r = wait_ready(fd, POLLIN, deadline);
		if (r < 0)
			return r;
		ssize_t got = recv(fd, buf, cap, MSG_DONTWAIT);
		if (got < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		return got < 0 ? -errno : got;
	}
}

/* Send all of |<buf, len>| by |deadline|.  Returns 0, -ETIMEDOUT or -errno. */
static int send_by(int fd, const void *buf, size_t len, double deadline)
{
	const uint8_t *p = buf;
	while (len > 0) {
		int r = wait_ready(fd, POLLOUT, deadline);
		if (r < 0)
			return r;
		ssize_t w = send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (w < 0)
			return -errno;
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

/* Send |reply| (consumed) as one line by |deadline|.  Returns 0 or -errno. */
static int send_reply(int fd, json_t *reply, double deadline)
{
	char *s = reply ? json_dumps(reply, JSON_COMPACT) : NULL;
	json_decref(reply);
	if (!s)
		return -ENOMEM;
	size_t n = strlen(s);
	char *line = realloc(s, n + 2);
	if (!line) {
		free(s);
		return -ENOMEM;
	}
	line[n] = '\n';
	line[n + 1] = '\0';
	int r = send_by(fd, line, n + 1, deadline);
	free(line);
	return r;
}

static void serve_client(struct blockd_ctl *c, int fd, const struct ucred *cr)
{
	char buf[CTL_MAX_LINE + 1];
	size_t have = 0;
	double deadline = now_seconds() + CTL_DEADLINE_S;
	/* Each round either answers a request, takes at least one byte into a
	 * buffer of bounded size, or ends the connection. */
	for (;;) {
		char *nl = memchr(buf, '\n', have);
		if (!nl) {
			if (have == sizeof(buf)) {
				send_reply(fd, error_reply(EINVAL, "request line too long"),
					   now_seconds() + CTL_DEADLINE_S);
				return;
			}
			ssize_t n = recv_by(fd, buf + have, sizeof(buf) - have, deadline);
			if (n == -ETIMEDOUT)
				log_info("%s: client pid %d (uid %u) sent no complete request within %.0f s; dropping it",
					 c->what, (int)cr->pid, (unsigned)cr->uid, CTL_DEADLINE_S);
			if (n <= 0)
				return;
			have += (size_t)n;
			continue;
		}
		size_t line_len = (size_t)(nl - buf);
		struct ctl_request q;
		const char *err;
		json_t *reply = ctl_parse_request(buf, line_len, &q, &err) < 0 ? error_reply(EINVAL, err) : handle(c, &q);
		memmove(buf, nl + 1, have - line_len - 1);
		have -= line_len + 1;
		int r = send_reply(fd, reply ? reply : error_reply(ENOMEM, NULL), now_seconds() + CTL_DEADLINE_S);
		if (r == -ETIMEDOUT)
			log_info("%s: client pid %d (uid %u) did not take its reply within %.0f s; dropping it", c->what,
				 (int)cr->pid, (unsigned)cr->uid, CTL_DEADLINE_S);
		if (r < 0)
			return;
		deadline = now_seconds() + CTL_DEADLINE_S;
	}
}

/* Take |cl| off the client list, close its connection and free it. */
static void forget_client(struct blockd_ctl *c, struct ctl_client *cl)
{
	pthread_mutex_lock(&c->lock);
	for (struct ctl_client **p = &c->clients; *p; p = &(*p)->next)
		if (*p == cl) {
			*p = cl->next;
			break;
		}
	close(cl->fd); /* under the lock: stop() shuts fds down under it too */
	c->n_clients--;
	pthread_cond_broadcast(&c->gone);
	pthread_mutex_unlock(&c->lock);
	free(cl);
}

static void *client_main(void *arg)
{
	struct ctl_client *cl = arg;
	serve_client(cl->c, cl->fd, &cl->cred);
	forget_client(cl->c, cl);
	return NULL;
}

/* Hand the accepted, checked connection |fd| to a thread of its own. */
static void start_client(struct blockd_ctl *c, int fd, const struct ucred *cr)
{
	struct ctl_client *cl = calloc(1, sizeof(*cl));
	pthread_mutex_lock(&c->lock);
	bool full = c->n_clients >= CTL_MAX_CLIENTS;
	if (cl && !full) {
		cl->c = c;
		cl->fd = fd;
		cl->cred = *cr;
		cl->next = c->clients;
		c->clients = cl;
		c->n_clients++;
	}
	pthread_mutex_unlock(&c->lock);
	if (!cl || full) {
		double now = now_seconds();
		if (now - c->busy_logged_at >= 1.0) { /* at most a line a second under a flood */
			c->busy_logged_at = now;
			if (full)
				log_warn("%s: %u clients are connected already; refusing another (pid %d, uid %u)",
					 c->what, CTL_MAX_CLIENTS, (int)cr->pid, (unsigned)cr->uid);
			else
				log_warn("%s: out of memory; refusing a client (pid %d)", c->what, (int)cr->pid);
		}
		/* One try that never blocks: the accept thread must not wait. */
		static const char busy[] = "{\"ok\":false,\"error\":\"blockd is busy with other control clients; "
					   "try again\",\"errno\":11}\n";
		ssize_t w = send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
		(void)w;
		free(cl);
		close(fd);
		return;
	}
	pthread_attr_t attr;
	pthread_t th;
	int e = pthread_attr_init(&attr);
	if (e == 0) {
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		e = pthread_create(&th, &attr, client_main, cl);
		pthread_attr_destroy(&attr);
	}
	if (e != 0) {
		log_err("%s: cannot start a client thread: %s", c->what, strerror(e));
		forget_client(c, cl);
	}
}

static void *ctl_main(void *arg)
{
	struct blockd_ctl *c = arg;
	for (;;) {
		struct pollfd p[2] = { { .fd = c->listen_fd, .events = POLLIN }, { .fd = c->stop_pipe[0], .events = POLLIN } };
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			log_err("%s: poll: %s; no longer serving (restart blockd)", c->what, strerror(errno));
			return NULL;
		}
		if (p[1].revents)
			return NULL;
		int fd = accept4(c->listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
				log_err("%s: accept: %s; retrying", c->what, strerror(errno));
				poll(NULL, 0, 100); /* let clients finish and free descriptors */
			}
			continue;
		}
		struct ucred cr = { .pid = 0 };
		int r = sock_peer_check(fd, &c->b->access, &cr);
		if (r < 0) {
			sock_log_refusal(&c->refusals, c->what, &cr, &c->b->access, r);
			close(fd);
			continue;
		}
		start_client(c, fd, &cr);
	}
}

void blockd_ctl_stop(struct blockd_ctl *c)
{
	if (!c)
		return;
	if (c->has_thread) {
		ssize_t w = write(c->stop_pipe[1], "x", 1);
		(void)w;
		pthread_join(c->thread, NULL);
	}
	/* Wake every client thread (a request being handled finishes first)
	 * and wait until they are all gone. */
	pthread_mutex_lock(&c->lock);
	for (struct ctl_client *cl = c->clients; cl; cl = cl->next)
		shutdown(cl->fd, SHUT_RDWR);
	while (c->n_clients > 0)
		pthread_cond_wait(&c->gone, &c->lock);
	pthread_mutex_unlock(&c->lock);
	if (c->listen_fd >= 0) {
		close(c->listen_fd);
		sock_unlink_if_ours(c->path, c->sock_dev, c->sock_ino);
	}
	if (c->stop_pipe[0] >= 0)
		close(c->stop_pipe[0]);
	if (c->stop_pipe[1] >= 0)
		close(c->stop_pipe[1]);
	pthread_cond_destroy(&c->gone);
	pthread_mutex_destroy(&c->lock);
	pthread_mutex_destroy(&c->op_lock);
	free(c->path);
	free(c->state_dir);
	free(c->what);
	free(c);
}

int blockd_ctl_start(struct blockd *b, const char *path, const char *state_dir, struct blockd_ctl **out)
{
	if (!path || !*path) {
		log_err("control socket: no path given (--control SOCK)");
		return -EINVAL;
	}
	struct blockd_ctl *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->b = b;
	c->listen_fd = -1;
	c->stop_pipe[0] = c->stop_pipe[1] = -1;
	pthread_mutex_init(&c->op_lock, NULL);
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->gone, NULL);
	c->path = strdup(path);
	c->what = xasprintf("control socket %s", path);
	c->state_dir = state_dir ? strdup(state_dir) : NULL;
	int r = 0;
	if (!c->path || !c->what || (state_dir && !c->state_dir))
		r = -ENOMEM;
	if (r == 0 && state_dir && (r = mkdir_p(state_dir, 0700)) < 0)
		log_err("cannot create the state directory %s: %s", state_dir, strerror(-r));
	if (r == 0 && pipe2(c->stop_pipe, O_CLOEXEC) < 0)
		r = -errno;
	/* The socket appears at |path| only with its final mode; a socket file
	 * left by a killed blockd is replaced, a live one refused (sock.c). */
	if (r == 0)
		r = sock_listen_unix(path, &b->access, 16, "control socket", &c->listen_fd, &c->sock_dev, &c->sock_ino);
	if (r < 0) {
		blockd_ctl_stop(c);
		return r;
	}
	int e = pthread_create(&c->thread, NULL, ctl_main, c);
	if (e) {
		log_err("%s: cannot start its thread: %s", c->what, strerror(e));
		blockd_ctl_stop(c);
		return -e;
	}
	c->has_thread = true;
	*out = c;
	return 0;
}

/* ---- the client ------------------------------------------------------------------------------------------------ */

/* Only root and this effective user may own what a client trusts: anyone
 * else could serve it another image under the name it asked for. */
static bool owner_trusted(uid_t uid) { return uid == 0 || uid == geteuid(); }

int blockd_ctl_find(const char *path, char *why, size_t why_len)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat st, dst;
	why[0] = 0;
	if (strlen(path) >= sizeof(sa.sun_path)) {
		snprintf(why, why_len, "%s: the path is too long for a unix socket", path);
		return -ENAMETOOLONG;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	if (lstat(path, &st) < 0) {
		int r = -errno;
		snprintf(why, why_len, "%s: %s", path, strerror(-r));
		return r;
	}
	char *dir_copy = strdup(path);
	if (!dir_copy)
		return -ENOMEM;
	int r = stat(dirname(dir_copy), &dst) < 0 ? -errno : 0;
	if (r < 0)
		snprintf(why, why_len, "%s: cannot check its directory: %s", path, strerror(-r));
	free(dir_copy);
	if (r < 0)
		return r;
	if (!S_ISSOCK(st.st_mode)) {
		snprintf(why, why_len, "%s is not a socket", path);
		return -ENOTSOCK;
	}
	/* A directory others may write lets them swap the socket after these
	 * checks; a sticky one (like /tmp) keeps our entry ours. */
	if (!owner_trusted(dst.st_uid) || ((dst.st_mode & 0022) && !(dst.st_mode & S_ISVTX))) {
		snprintf(why, why_len, "%s: its directory is owned by uid %u with mode %04o (it must be root's or "
			 "uid %u's, and writable by no one else)", path, (unsigned)dst.st_uid,
			 (unsigned)(dst.st_mode & 07777), (unsigned)geteuid());
		return -EPERM;
	}
	if (!owner_trusted(st.st_uid) || (st.st_mode & 0002)) {
		snprintf(why, why_len, "%s is owned by uid %u with mode %04o (it must be root's or uid %u's, and "
			 "not writable by everyone)", path, (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777),
			 (unsigned)geteuid());
		return -EPERM;
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	r = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ? -errno : 0;
	struct ucred cr = { .uid = (uid_t)-1 };
	socklen_t len = sizeof(cr);
	if (r == 0 && getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0)
		r = -errno;
	close(fd);
	if (r == -ECONNREFUSED) {
		snprintf(why, why_len, "nothing listens on %s (a socket left by a blockd that stopped; `blockd serve` "
			 "replaces it when it starts)", path);
		return r;
	}
	if (r < 0) {
		snprintf(why, why_len, "cannot connect to %s: %s", path, strerror(-r));
		return r;
	}
	/* The file's owner is whoever bound it, but a socket can be renamed
	 * and chowned after binding: the listening process is the proof. */
	if (!owner_trusted(cr.uid)) {
		snprintf(why, why_len, "the blockd listening on %s runs as uid %u (it must be root or uid %u)", path,
			 (unsigned)cr.uid, (unsigned)geteuid());
		return -EPERM;
	}
	return 0;
}


int blockd_ctl_call(const char *path, const char *request, char **out_reply)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int r = -errno;
		if (r == -EACCES)
			log_err("cannot reach blockd at %s: %s (only root, blockd's own user and the members of its "
				"--socket-group may use it)",
				path, strerror(-r));
		else
			log_err("cannot reach blockd at %s: %s (is `blockd serve --control %s` running?)", path,
				strerror(-r), path);
		close(fd);
		return r;
	}
	/* send with MSG_NOSIGNAL: a daemon that refuses this user closes at
	 * once, and the caller must get -EPIPE and a message, not SIGPIPE. */
	char *line = xasprintf("%s\n", request);
	int r = line ? send_by(fd, line, strlen(line), now_seconds() + CTL_CLIENT_SEND_S) : -ENOMEM;
	free(line);
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap);
	if (!buf)
		r = -ENOMEM;
	while (r == 0) {
		if (len + 1 >= cap) {
			if (cap >= CTL_MAX_REPLY) {
				r = -EFBIG;
				break;
			}
			char *p = realloc(buf, cap * 2);
			if (!p) {
				r = -ENOMEM;
				break;
			}
			buf = p;
			cap *= 2;
		}
		ssize_t n = recv(fd, buf + len, cap - len - 1, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			r = n < 0 ? -errno : -EPIPE;
			break;
		}
		len += (size_t)n;
		buf[len] = 0;
		char *nl = memchr(buf, '\n', len);
		if (nl) {
			*nl = 0;
			break;
		}
	}
	close(fd);
	if (r < 0) {
		if (len == 0 && (r == -EPIPE || r == -ECONNRESET))
			log_err("blockd at %s closed the connection without a reply: it refuses uid %u (only root, "
				"its own user and the members of its --socket-group may use it; its log says why), or it "
				"is shutting down",
				path, (unsigned)geteuid());
		else
			log_err("blockd at %s: no reply: %s", path, strerror(-r));
		free(buf);
		return r;
	}
	*out_reply = buf;
	return 0;
}
