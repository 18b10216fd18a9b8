/* The image's users, environment and PATH: pure helpers, no privileges.
 *
 * Everything here reads files that came from the image, never the host's
 * /etc: a container's "user": "app" means the image's app. */
#define LOG_COMPONENT "sandbox"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sandbox/internal.h"

/* Strict decimal id: digits only, no sign, at most 2^32-2 ((uid_t)-1 means
 * "unchanged" to setresuid, so it can never be a real id). */
static bool parse_id(const char *s, size_t n, uint32_t *out)
{
	if (n == 0 || n > 10)
		return false;
	uint64_t v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	if (v > UINT32_MAX - 1)
		return false;
	*out = (uint32_t)v;
	return true;
}

/* Split |line| at ':' into at most |max| fields (in place).  Returns the count. */
static size_t split_colon(char *line, char **f, size_t max)
{
	size_t n = 0;
	f[n++] = line;
	for (char *p = line; *p && n < max; p++)
		if (*p == ':') {
			*p = '\0';
			f[n++] = p + 1;
		}
	return n;
}

/* Buffers come from mmap, not malloc: the process sandbox resolves the user
 * in a child forked from a possibly multi-threaded caller, where malloc may
 * find a lock held by a thread that no longer exists.  (Only the pages
 * actually read are ever touched.) */
static char *etc_alloc(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

static void etc_free(char *p, size_t len)
{
	if (p)
		munmap(p, len);
}

#define ETC_BUF (SANDBOX_ETC_MAX + 1u)

/* Read an /etc file of the image into an ETC_BUF-byte mapping
 * (NUL-terminated; release with etc_free(.., ETC_BUF)); a missing file reads
 * as empty (*out NULL). */
static int read_etc(const char *path, char **out)
{
	*out = NULL;
	if (!path)
		return 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		if (e == ENOENT || e == ENOTDIR)
			return 0;
		log_err("read %s in the image: %s", path, strerror(e));
		return -e;
	}
	char *s = etc_alloc(ETC_BUF);
	if (!s) {
		close(fd);
		return -ENOMEM;
	}
	size_t len = 0;
	for (;;) {
		ssize_t n = read(fd, s + len, ETC_BUF - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int e = errno;
			log_err("read %s in the image: %s", path, strerror(e));
			close(fd);
			etc_free(s, ETC_BUF);
			return -e;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len == ETC_BUF - 1) {
			log_err("%s in the image is larger than %u bytes; refusing it", path, SANDBOX_ETC_MAX);
			close(fd);
			etc_free(s, ETC_BUF);
			return -EFBIG;
		}
	}
	close(fd);
	s[len] = '\0';
	*out = s;
	return 0;
}

/* Walk the lines of a NUL-terminated buffer, modifying it.  A NUL inside the
 * file ends it early, which is fine for untrusted text. */
static char *next_line(char **cursor)
{
	char *s = *cursor;
	if (!s || !*s)
		return NULL;
	char *nl = strchr(s, '\n');
	if (nl) {
		*nl = '\0';
		*cursor = nl + 1;
	} else {
		*cursor = s + strlen(s);
	}
	return s;
}

struct pw_match {
	bool found;
	uint32_t uid, gid;
	char name[256];
	char home[PATH_MAX];
};

/* Find a passwd entry by name (|by_name|) or by uid.  Malformed lines are
 * skipped: they cannot match anything. */
static void passwd_find(char *text, const char *name, size_t name_len, bool by_name, uint32_t uid,
			struct pw_match *m)
{
	char *cur = text, *line;
	memset(m, 0, sizeof(*m));
	while ((line = next_line(&cur))) {
		char *f[7];
		if (line[0] == '#' || split_colon(line, f, 7) != 7)
			continue;
		uint32_t u, g;
		if (!parse_id(f[2], strlen(f[2]), &u) || !parse_id(f[3], strlen(f[3]), &g))
			continue;
		if (by_name ? (strlen(f[0]) != name_len || memcmp(f[0], name, name_len) != 0) : u != uid)
			continue;
		m->found = true;
		m->uid = u;
		m->gid = g;
		if (strlen(f[0]) < sizeof(m->name))
			strcpy(m->name, f[0]);
		if (strlen(f[5]) < sizeof(m->home))
			strcpy(m->home, f[5]);
		return;
	}
}

/* Find a group's gid by name. */
static bool group_find(char *text, const char *name, size_t name_len, uint32_t *gid)
{
	char *cur = text, *line;
	while ((line = next_line(&cur))) {
		char *f[4];
		if (line[0] == '#' || split_colon(line, f, 4) != 4)
			continue;
		uint32_t g;
		if (strlen(f[0]) == name_len && memcmp(f[0], name, name_len) == 0 && parse_id(f[2], strlen(f[2]), &g)) {
			*gid = g;
			return true;
		}
	}
	return false;
}

/* Supplementary groups: every group whose member list names |user|. */
static void group_members(char *text, const char *user, struct sandbox_user *out)
{
	char *cur = text, *line;
	while ((line = next_line(&cur))) {
		char *f[4];
		uint32_t g;
		if (line[0] == '#' || split_colon(line, f, 4) != 4 || !parse_id(f[2], strlen(f[2]), &g))
			continue;
		for (char *tok = f[3]; *tok;) {
			size_t n = strcspn(tok, ",");
			if (n == strlen(user) && memcmp(tok, user, n) == 0) {
				bool dup = g == out->gid;
				for (size_t i = 0; i < out->n_groups && !dup; i++)
					dup = out->groups[i] == g;
				if (!dup && out->n_groups < SANDBOX_MAX_GROUPS)
					out->groups[out->n_groups++] = g;
				break;
			}
			tok += n;
			if (*tok == ',')
				tok++;
		}
	}
}

static bool all_digits(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] < '0' || s[i] > '9')
			return false;
	return n > 0;
}

int sandbox_user_resolve(const char *spec, const char *passwd_path, const char *group_path, struct sandbox_user *out)
{
	memset(out, 0, sizeof(*out));
	if (!spec || !*spec)
		spec = "0";
	const char *colon = strchr(spec, ':');
	size_t ulen = colon ? (size_t)(colon - spec) : strlen(spec);
	const char *gspec = colon ? colon + 1 : NULL;
	if (ulen == 0 || (gspec && (!*gspec || strchr(gspec, ':')))) {
		log_err("user \"%s\" is malformed; expected uid, name, uid:gid or name:group", spec);
		return -EINVAL;
	}

	char *pw = NULL, *gr = NULL;
	int r = read_etc(passwd_path, &pw);
	if (r == 0)
		r = read_etc(group_path, &gr);
	if (r < 0)
		goto out;

	/* Each lookup below consumes (splits) the buffer, so work on copies. */
	struct pw_match m;
	char *tmp = pw ? etc_alloc(ETC_BUF) : NULL;
	if (tmp)
		memcpy(tmp, pw, strlen(pw) + 1);
	if (pw && !tmp) {
		r = -ENOMEM;
		goto out;
	}
	if (all_digits(spec, ulen)) {
		if (!parse_id(spec, ulen, &out->uid)) {
			log_err("user \"%s\": uid out of range", spec);
			etc_free(tmp, ETC_BUF);
			r = -EINVAL;
			goto out;
		}
		if (tmp)
			passwd_find(tmp, NULL, 0, false, out->uid, &m);
		else
			m.found = false;
	} else {
		if (tmp)
			passwd_find(tmp, spec, ulen, true, 0, &m);
		else
			m.found = false;
		if (!m.found) {
			log_err("user \"%.*s\" is not in the image's /etc/passwd; use a numeric uid or add the user to the "
				"image",
				(int)ulen, spec);
			etc_free(tmp, ETC_BUF);
			r = -ENOENT;
			goto out;
		}
		out->uid = m.uid;
	}
	etc_free(tmp, ETC_BUF);
	if (m.found) {
		out->gid = m.gid;
		snprintf(out->home, sizeof(out->home), "%s", m.home);
	}

	if (gspec) {
		size_t glen = strlen(gspec);
		if (all_digits(gspec, glen)) {
			if (!parse_id(gspec, glen, &out->gid)) {
				log_err("user \"%s\": gid out of range", spec);
				r = -EINVAL;
				goto out;
			}
		} else if (!gr || !group_find(gr, gspec, glen, &out->gid)) {
			log_err("group \"%s\" is not in the image's /etc/group; use a numeric gid", gspec);
			r = -ENOENT;
			goto out;
		}
	} else if (m.found && gr) {
		group_members(gr, m.name, out);
	}
	r = 0;
out:
	etc_free(pw, ETC_BUF);
	etc_free(gr, ETC_BUF);
	return r;
}

const char *sandbox_env_get(char *const *env, const char *key)
{
	size_t klen = strlen(key);
	for (; env && *env; env++)
		if (strncmp(*env, key, klen) == 0 && (*env)[klen] == '=')
			return *env + klen + 1;
	return NULL;
}

/* Index of the entry in |l| with the same key as |kv| (up to '='), or -1. */
static ssize_t env_find(const struct str_list *l, const char *kv)
{
	size_t klen = strcspn(kv, "=");
	for (size_t i = 0; i < l->n; i++)
		if (strncmp(l->items[i], kv, klen) == 0 && l->items[i][klen] == '=')
			return (ssize_t)i;
	return -1;
}

/* Set |kv| in |l|, replacing an entry with the same key unless |keep|. */
static int env_set(struct str_list *l, const char *kv, bool keep)
{
	if (!strchr(kv, '=') || kv[0] == '=')
		return 0; /* not an assignment: execve would pass it, but nothing can read it */
	ssize_t i = env_find(l, kv);
	if (i >= 0) {
		if (keep)
			return 0;
		char *c = strdup(kv);
		if (!c)
			return -ENOMEM;
		free(l->items[i]);
		l->items[i] = c;
		return 0;
	}
	return str_list_add(l, kv);
}

int sandbox_env_build(char *const *base, char *const *over, const char *hostname, const char *home,
		      struct str_list *out)
{
	struct str_list l = {0};
	int r = 0;
	for (; base && *base && r == 0; base++)
		r = env_set(&l, *base, false);
	for (; over && *over && r == 0; over++)
		r = env_set(&l, *over, false);
	if (r == 0)
		r = env_set(&l, "PATH=" SANDBOX_DEFAULT_PATH, true);
	char *h = NULL, *hn = NULL;
	if (r == 0 && (!(hn = xasprintf("HOSTNAME=%s", hostname)) || !(h = xasprintf("HOME=%s", *home ? home : "/"))))
		r = -ENOMEM;
	if (r == 0)
		r = env_set(&l, hn, true);
	if (r == 0)
		r = env_set(&l, h, true);
	free(h);
	free(hn);
	for (size_t i = 0; i < l.n && r == 0; i++)
		r = str_list_add(out, l.items[i]);
	str_list_clear(&l);
	return r;
}

int sandbox_path_lookup(const char *cmd, const char *path_env, char *out, size_t len)
{
	if (!cmd || !*cmd)
		return -ENOENT;
	if (strchr(cmd, '/')) {
		if (strlen(cmd) >= len)
			return -ENAMETOOLONG;
		strcpy(out, cmd);
		return 0;
	}
	if (!path_env)
		path_env = SANDBOX_DEFAULT_PATH;
	int r = -ENOENT;
	for (const char *p = path_env;;) {
		size_t n = strcspn(p, ":");
		const char *dir = n ? p : ".";
		size_t dlen = n ? n : 1;
		int w = snprintf(out, len, "%.*s/%s", (int)dlen, dir, cmd);
		if (w < 0 || (size_t)w >= len)
			r = -ENAMETOOLONG;
		else {
			struct stat st;
			if (stat(out, &st) == 0 && S_ISREG(st.st_mode)) {
				if (access(out, X_OK) == 0)
					return 0;
				r = -EACCES;
			}
		}
		if (!p[n])
			break;
		p += n + 1;
	}
	return r;
}
