/* The daemon's control socket: a unix stream socket, one JSON request per
 * line, one JSON reply per line.
 *
 *   {"op": "attach", "image": "NAME[:TAG]|DIGEST"}  -> {"ok": true, "image": ..., "digest": ..., "size": N}
 *   {"op": "detach", "image": "..."}                -> {"ok": true}
 *   {"op": "ls"}                                    -> {"ok": true, "images": [{"name", "digest", "size"}]}
 *   {"op": "stats"}                                 -> {"ok": true, "images": {NAME: stats}, "cache": {...}}
 *   {"op": "stats", "image": "..."}                 -> {"ok": true, "stats": {...}}
 *   any failure                                     -> {"ok": false, "error": "...", "errno": N}
 *
 * Requests are served one at a time on one thread: attach and detach change
 * the attached set, and serialising them keeps the persisted set (state dir,
 * attached.json) in step with it.  A client that sends nothing for a few
 * seconds is dropped so it cannot hold the socket.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define CTL_MAX_LINE 4096
#define CTL_MAX_REPLY (64u << 20)
#define STATE_FILE "attached.json"

struct blockd_ctl {
	struct blockd *b;
	char *path;
	char *state_dir;
	int listen_fd;
	int stop_pipe[2];
	pthread_t thread;
	bool has_thread;
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
		r = blockd_attach(c->b, name, NULL);
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

static json_t *handle(struct blockd_ctl *c, const struct ctl_request *q)
{
	struct blockd *b = c->b;
	if (strcmp(q->op, "attach") == 0) {
		struct blockd_image *img;
		int r = blockd_attach(b, q->image, &img);
		if (r < 0)
			return error_reply(-r, r == -ENOENT ? "no such image in the store" : NULL);
		save_state(c);
		return json_pack("{s:b, s:s, s:s, s:I}", "ok", 1, "image", blockd_image_name(img), "digest",
				 blockd_image_digest(img), "size", (json_int_t)blockd_image_size(img));
	}
	if (strcmp(q->op, "detach") == 0) {
		int r = blockd_detach(b, q->image);
		if (r < 0)
			return error_reply(-r, r == -ENOENT ? "not attached" : NULL);
		save_state(c);
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

static void serve_client(struct blockd_ctl *c, int fd)
{
	/* A silent client is dropped after 5 s so it cannot hold the socket. */
	struct timeval tv = { .tv_sec = 5 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	char buf[CTL_MAX_LINE + 1];
	size_t have = 0;
	for (;;) {
		char *nl = memchr(buf, '\n', have);
		if (!nl) {
			if (have == sizeof(buf)) {
				json_t *e = error_reply(EINVAL, "request line too long");
				char *s = json_dumps(e, JSON_COMPACT);
				json_decref(e);
				if (s) {
					send(fd, s, strlen(s), MSG_NOSIGNAL);
					send(fd, "\n", 1, MSG_NOSIGNAL);
				}
				free(s);
				return;
			}
			ssize_t n = recv(fd, buf + have, sizeof(buf) - have, 0);
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
		char *s = reply ? json_dumps(reply, JSON_COMPACT) : NULL;
		json_decref(reply);
		if (!s)
			return;
		int r = write_full(fd, s, strlen(s));
		if (r == 0)
			r = write_full(fd, "\n", 1);
		free(s);
		if (r < 0)
			return;
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
			log_err("control socket %s: poll: %s", c->path, strerror(errno));
			return NULL;
		}
		if (p[1].revents)
			return NULL;
		int fd = accept4(c->listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		serve_client(c, fd);
		close(fd);
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
	if (c->listen_fd >= 0) {
		close(c->listen_fd);
		unlink(c->path);
	}
	if (c->stop_pipe[0] >= 0)
		close(c->stop_pipe[0]);
	if (c->stop_pipe[1] >= 0)
		close(c->stop_pipe[1]);
	free(c->path);
	free(c->state_dir);
	free(c);
}

int blockd_ctl_start(struct blockd *b, const char *path, const char *state_dir, struct blockd_ctl **out)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (!path || !*path || strlen(path) >= sizeof(sa.sun_path)) {
		log_err("control socket path \"%s\" is empty or too long", path ? path : "");
		return -ENAMETOOLONG;
	}
	struct blockd_ctl *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->b = b;
	c->listen_fd = -1;
	c->stop_pipe[0] = c->stop_pipe[1] = -1;
	c->path = strdup(path);
	c->state_dir = state_dir ? strdup(state_dir) : NULL;
	int r = 0;
	if (!c->path || (state_dir && !c->state_dir))
		r = -ENOMEM;
	if (r == 0 && state_dir && (r = mkdir_p(state_dir, 0700)) < 0)
		log_err("cannot create the state directory %s: %s", state_dir, strerror(-r));
	if (r == 0 && pipe2(c->stop_pipe, O_CLOEXEC) < 0)
		r = -errno;
	if (r < 0) {
		blockd_ctl_stop(c);
		return r;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	c->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->listen_fd < 0)
		r = -errno;
	/* A socket file left by a killed blockd: nobody answers it, replace it.
	 * A live one belongs to another blockd: refuse. */
	if (r == 0 && bind(c->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		r = -errno;
		if (r == -EADDRINUSE) {
			int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
			bool live = probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0;
			if (probe >= 0)
				close(probe);
			if (live)
				log_err("control socket %s: another blockd is listening there", path);
			else if (unlink(path) == 0 && bind(c->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
				r = 0;
		}
	}
	if (r == 0 && listen(c->listen_fd, 16) < 0)
		r = -errno;
	if (r < 0) {
		log_err("control socket %s: cannot listen: %s", path, strerror(-r));
		if (c->listen_fd >= 0 && r != -EADDRINUSE) {
			close(c->listen_fd);
			c->listen_fd = -1;
		} else if (c->listen_fd >= 0) {
			close(c->listen_fd); /* not ours: do not unlink it */
			c->listen_fd = -1;
		}
		blockd_ctl_stop(c);
		return r;
	}
	int e = pthread_create(&c->thread, NULL, ctl_main, c);
	if (e) {
		blockd_ctl_stop(c);
		return -e;
	}
	c->has_thread = true;
	*out = c;
	return 0;
}

/* ---- the client ------------------------------------------------------------------------------------------------ */

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
		log_err("cannot reach blockd at %s: %s (is `blockd serve --control %s` running?)", path,
			strerror(-r), path);
		close(fd);
		return r;
	}
	int r = write_full(fd, request, strlen(request));
	if (r == 0)
		r = write_full(fd, "\n", 1);
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
		log_err("blockd at %s: no reply: %s", path, strerror(-r));
		free(buf);
		return r;
	}
	*out_reply = buf;
	return 0;
}
