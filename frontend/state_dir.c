/* frontend: the local-directory backend for function records
 * (DIR/NAME.json, written crash-safely). */
#include "frontend/internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct state_dir {
	char *dir;
};

int frontend_state_dir_open(const char *dir, void **out)
{
	int r = mkdir_p(dir, 0700);
	if (r < 0) {
		log_err("function state directory %s: %s (is the parent writable?)", dir, strerror(-r));
		return r;
	}
	struct state_dir *s = calloc(1, sizeof(*s));
	if (!s || !(s->dir = strdup(dir))) {
		free(s);
		return -ENOMEM;
	}
	*out = s;
	return 0;
}

void frontend_state_dir_close(void *state)
{
	struct state_dir *s = state;
	if (!s)
		return;
	free(s->dir);
	free(s);
}

static char *record_path(const struct state_dir *s, const char *name)
{
	if (!frontend_valid_function_name(name)) {
		errno = EINVAL;
		return NULL;
	}
	return xasprintf("%s/%s.json", s->dir, name);
}

static int sd_get(void *arg, const char *name, char **out, size_t *out_len)
{
	char *path = record_path(arg, name);
	if (!path)
		return -errno;
	uint8_t *buf = NULL;
	size_t len = 0;
	int r = read_file_all(path, 16u << 20, &buf, &len);
	free(path);
	if (r < 0)
		return r;
	char *s = realloc(buf, len + 1);
	if (!s) {
		free(buf);
		return -ENOMEM;
	}
	s[len] = '\0';
	*out = s;
	*out_len = len;
	return 0;
}

static int sd_put(void *arg, const char *name, const char *data, size_t len)
{
	const struct state_dir *s = arg;
	char *path = record_path(s, name);
	if (!path)
		return -errno;
	int r = write_file_atomic(path, data, len, 0600);
	free(path);
	if (r == 0)
		r = fe_fsync_dir(s->dir);
	if (r < 0)
		log_err("write the record of function %s in %s: %s", name, s->dir, strerror(-r));
	return r;
}

static int sd_del(void *arg, const char *name)
{
	const struct state_dir *s = arg;
	char *path = record_path(s, name);
	if (!path)
		return -errno;
	int r = unlink(path) < 0 ? -errno : 0;
	free(path);
	if (r == 0)
		r = fe_fsync_dir(s->dir);
	return r;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int sd_list(void *arg, const char *after, size_t max, struct str_list *out)
{
	const struct state_dir *s = arg;
	DIR *d = opendir(s->dir);
	if (!d)
		return -errno;
	struct str_list all = { 0 };
	struct dirent *e;
	int r = 0;
	while (r == 0 && (e = readdir(d))) {
		size_t n = strlen(e->d_name);
		if (n <= 5 || strcmp(e->d_name + n - 5, ".json") != 0 || e->d_name[0] == '.')
			continue;
		e->d_name[n - 5] = '\0';
		if (!frontend_valid_function_name(e->d_name))
			continue;
		if (after && strcmp(e->d_name, after) <= 0)
			continue;
		r = str_list_add(&all, e->d_name);
	}
	closedir(d);
	if (r == 0 && all.n)
		qsort(all.items, all.n, sizeof(char *), cmp_str);
	for (size_t i = 0; r == 0 && i < all.n && i < max; i++)
		r = str_list_add(out, all.items[i]);
	str_list_clear(&all);
	return r;
}

const struct frontend_state_ops frontend_state_dir_ops = {
	.get = sd_get,
	.put = sd_put,
	.del = sd_del,
	.list = sd_list,
};
