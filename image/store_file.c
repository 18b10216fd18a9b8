/* chunker: the file store, "file:///abs/dir" or a plain path.
 *
 * Each object is a regular file named by its key under the store directory,
 * so "refs/app/latest" is DIR/refs/app/latest.  All access goes through a
 * descriptor of DIR (openat and friends), so the store keeps working if the
 * process changes directory and a key can never climb out of it (store.c
 * already rejects "..", "." and empty components).
 *
 * A put writes DIR/<parent>/.tmp-<random>, fsyncs it, renames it over the
 * key and fsyncs the parent, so readers see the old or the new bytes and a
 * crash leaves at most a temporary file that store_list never reports.
 *
 * Like any file-like origin (nginx too), a key cannot be both an object and
 * the directory of other keys: with "refs/app" stored, "refs/app/v1" fails
 * with -ENOTDIR.  kindling's layout (chunks/<name>, manifests/<digest>,
 * refs/<name>/<tag>) never needs both.
 */
#include "store_ops.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct file_store {
	int dir_fd;	/* O_DIRECTORY descriptor of the store root */
	char *root;	/* absolute path, for messages */
};

/* Deeper trees than this are not something a store writes (keys are at most
 * STORE_MAX_KEY bytes); refusing them bounds the descriptors a walk holds. */
#define FILE_MAX_DEPTH 64

static int file_open(const char *uri, const struct store_options *opt, void **out_state, char **out_description)
{
	(void)opt;
	const char *path = uri;
	if (strncmp(uri, "file://", 7) == 0) {
		path = uri + 7;
		/* file://localhost/dir is the same as file:///dir; any other
		 * authority (or a relative file://dir) is not a local path. */
		if (strncmp(path, "localhost/", 10) == 0)
			path += 9;
		if (path[0] != '/') {
			log_err("open store %s: a file URI needs an absolute path (file:///abs/dir)", uri);
			return -EINVAL;
		}
	}
	if (!*path || strlen(path) >= PATH_MAX) {
		log_err("open store %s: empty or overlong path", uri);
		return -EINVAL;
	}
	int r = mkdir_p(path, 0755);
	if (r < 0) {
		log_err("open store %s: create directory %s: %s (is the parent writable?)", uri, path, strerror(-r));
		return r;
	}
	struct file_store *fs = calloc(1, sizeof(*fs));
	if (!fs)
		return -ENOMEM;
	fs->dir_fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fs->dir_fd < 0) {
		r = -errno;
		log_err("open store %s: open directory %s: %s", uri, path, strerror(-r));
		free(fs);
		return r;
	}
	fs->root = realpath(path, NULL);
	if (!fs->root) {
		r = -errno;
		log_err("open store %s: resolve %s: %s", uri, path, strerror(-r));
		close(fs->dir_fd);
		free(fs);
		return r;
	}
	*out_description = xasprintf("file://%s", fs->root);
	if (!*out_description) {
		close(fs->dir_fd);
		free(fs->root);
		free(fs);
		return -ENOMEM;
	}
	*out_state = fs;
	return 0;
}

static void file_close(void *state)
{
	struct file_store *fs = state;
	close(fs->dir_fd);
	free(fs->root);
	free(fs);
}

static int file_get(void *state, const char *key, size_t max_len, uint8_t **out, size_t *out_len)
{
	struct file_store *fs = state;
	int fd = openat(fs->dir_fd, key, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int r = -errno;
		if (r == -ENOENT || r == -ENOTDIR)
			return -ENOENT;
		log_err("get %s from file://%s: %s", key, fs->root, strerror(-r));
		return r;
	}
	struct stat st;
	int r = 0;
	if (fstat(fd, &st) < 0) {
		r = -errno;
		log_err("get %s from file://%s: stat: %s", key, fs->root, strerror(-r));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		r = -ENOENT; /* "refs/app" is a directory of keys, not an object */
		goto out;
	}
	if ((uint64_t)st.st_size > max_len) {
		r = -EFBIG;
		log_err("get %s from file://%s: %lld bytes, more than the %zu allowed", key, fs->root,
			(long long)st.st_size, max_len);
		goto out;
	}
	size_t size = (size_t)st.st_size;
	uint8_t *buf = malloc(size ? size : 1);
	if (!buf) {
		r = -ENOMEM;
		goto out;
	}
	size_t got = 0;
	while (got < size) {
		ssize_t n = read(fd, buf + got, size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			/* Objects are replaced by rename, never truncated in
			 * place, so a short read means something else wrote
			 * into the store directory. */
			r = n < 0 ? -errno : -EIO;
			log_err("get %s from file://%s: read: %s", key, fs->root, n < 0 ? strerror(-r) : "file shrank");
			free(buf);
			goto out;
		}
		got += (size_t)n;
	}
	*out = buf;
	*out_len = size;
out:
	close(fd);
	return r;
}

/* Create every directory on the way to |key|'s parent (relative to the
 * store root).  Returns 0 or -errno. */
static int make_parents(int dir_fd, const char *key)
{
	char path[STORE_MAX_KEY + 1];
	size_t len = strlen(key);
	memcpy(path, key, len + 1);
	for (char *p = path; (p = strchr(p, '/')) != NULL; p++) {
		*p = 0;
		if (mkdirat(dir_fd, path, 0755) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	return 0;
}

/* Length of |key|'s parent directory part ("" for a top-level key). */
static size_t parent_len_of(const char *key)
{
	const char *slash = strrchr(key, '/');
	return slash ? (size_t)(slash - key) : 0;
}

/* Write |<buf, len>| to a fresh temporary file beside |key|, named into
 * |tmp|, fsync'd only when |sync_now|.  On failure nothing is left. */
static int write_temp(struct file_store *fs, const char *key, const void *buf, size_t len, bool sync_now,
		      char tmp[STORE_MAX_KEY + 64])
{
	size_t parent_len = parent_len_of(key);
	int r = make_parents(fs->dir_fd, key);
	if (r < 0) {
		log_err("put %s to file://%s: create parent directories: %s (is the store writable?)", key, fs->root,
			strerror(-r));
		return r;
	}
	/* The temporary name is short and fixed-length so it fits wherever
	 * the key's own name fits; O_EXCL makes a clash fail, not share. */
	int fd = -1;
	for (int attempt = 0; attempt < 8 && fd < 0; attempt++) {
		uint64_t nonce;
		r = random_bytes(&nonce, sizeof(nonce));
		if (r < 0)
			break;
		snprintf(tmp, STORE_MAX_KEY + 64, "%.*s%s" STORE_TMP_PREFIX "%016llx", (int)parent_len, key,
			 parent_len ? "/" : "", (unsigned long long)nonce);
		fd = openat(fs->dir_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
		r = fd < 0 ? -errno : 0;
		if (r < 0 && r != -EEXIST)
			break;
	}
	if (fd < 0) {
		log_err("put %s to file://%s: create temporary file: %s (is the store writable?)", key, fs->root,
			strerror(-r));
		return r;
	}
	r = write_full(fd, buf, len);
	if (!r && sync_now && fsync(fd) < 0)
		r = -errno;
	if (close(fd) < 0 && !r)
		r = -errno;
	if (r < 0) {
		log_err("put %s to file://%s: %s (disk full or read-only?)", key, fs->root, strerror(-r));
		unlinkat(fs->dir_fd, tmp, 0);
	}
	return r;
}

/* The rename of |key| is durable only once its directory is synced. */
static int sync_parent(struct file_store *fs, const char *key)
{
	char parent[STORE_MAX_KEY + 1];
	size_t parent_len = parent_len_of(key);
	memcpy(parent, key, parent_len);
	parent[parent_len] = 0;
	int r = 0;
	int pfd = openat(fs->dir_fd, parent_len ? parent : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (pfd < 0 || fsync(pfd) < 0)
		r = -errno;
	if (pfd >= 0)
		close(pfd);
	if (r < 0)
		log_err("put %s to file://%s: sync directory: %s", key, fs->root, strerror(-r));
	return r;
}

static int file_put(void *state, const char *key, const void *buf, size_t len)
{
	struct file_store *fs = state;
	char tmp[STORE_MAX_KEY + 64];
	int r = write_temp(fs, key, buf, len, true, tmp);
	if (r < 0)
		return r;
	if (renameat(fs->dir_fd, tmp, fs->dir_fd, key) < 0) {
		r = -errno;
		log_err("put %s to file://%s: %s (disk full or read-only?)", key, fs->root, strerror(-r));
		unlinkat(fs->dir_fd, tmp, 0);
		return r;
	}
	return sync_parent(fs, key);
}

/* A batch pays for durability once instead of per object: write every
 * temporary file, make them all durable with one syncfs, rename them into
 * place, then sync each parent directory once.  No object is renamed into
 * place before its bytes are on disk. */
static int file_put_batch(void *state, const char *const *keys, const void *const *bufs, const size_t *lens,
			  size_t n)
{
	struct file_store *fs = state;
	char (*tmps)[STORE_MAX_KEY + 64] = calloc(n ? n : 1, sizeof(*tmps));
	if (!tmps)
		return -ENOMEM;
	size_t written = 0, renamed = 0;
	int r = 0;
	for (; written < n && r == 0; written++)
		r = write_temp(fs, keys[written], bufs[written], lens[written], false, tmps[written]);
	if (r < 0)
		written--; /* the failed one cleaned up after itself */
	if (r == 0 && syncfs(fs->dir_fd) < 0) {
		r = -errno;
		log_err("put to file://%s: syncfs: %s (disk failing or read-only?)", fs->root, strerror(-r));
	}
	for (; r == 0 && renamed < n; renamed++)
		if (renameat(fs->dir_fd, tmps[renamed], fs->dir_fd, keys[renamed]) < 0) {
			r = -errno;
			log_err("put %s to file://%s: %s", keys[renamed], fs->root, strerror(-r));
			break;
		}
	for (size_t i = renamed; i < written; i++)
		unlinkat(fs->dir_fd, tmps[i], 0);
	for (size_t i = 0; r == 0 && i < n; i++) {
		size_t pl = parent_len_of(keys[i]);
		bool seen = i > 0 && pl == parent_len_of(keys[i - 1]) && memcmp(keys[i], keys[i - 1], pl) == 0;
		if (!seen)
			r = sync_parent(fs, keys[i]);
	}
	free(tmps);
	return r;
}

static int file_exists_batch(void *state, const char *const *keys, size_t n, bool *out_exists)
{
	struct file_store *fs = state;
	for (size_t i = 0; i < n; i++) {
		struct stat st;
		if (fstatat(fs->dir_fd, keys[i], &st, 0) == 0) {
			out_exists[i] = S_ISREG(st.st_mode);
		} else if (errno == ENOENT || errno == ENOTDIR) {
			out_exists[i] = false;
		} else {
			int r = -errno;
			log_err("check %s in file://%s: %s", keys[i], fs->root, strerror(-r));
			return r;
		}
	}
	return 0;
}

static int file_del(void *state, const char *key)
{
	struct file_store *fs = state;
	if (unlinkat(fs->dir_fd, key, 0) == 0 || errno == ENOENT || errno == ENOTDIR)
		return 0;
	int r = -errno;
	log_err("delete %s from file://%s: %s", key, fs->root, strerror(-r));
	return r;
}

struct file_walk {
	struct file_store *fs;
	const char *prefix;
	size_t prefix_len;
	store_list_cb cb;
	void *arg;
	char key[STORE_MAX_KEY + 2]; /* the path being walked, relative to the root */
};

/* Report every regular file under the directory |fd| (which |w->key|
 * names, "" or ending in '/', |key_len| bytes) whose key starts with the
 * prefix, recursing only into directories that can still match.  Takes
 * ownership of |fd|.  Returns 0, the callback's value or -errno (logged). */
static int walk_dir(struct file_walk *w, int fd, size_t key_len, int depth)
{
	DIR *d = fdopendir(fd);
	if (!d) {
		int r = -errno;
		close(fd);
		log_err("list file://%s/%s: %s", w->fs->root, w->key, strerror(-r));
		return r;
	}
	int r = 0;
	for (;;) {
		errno = 0;
		struct dirent *de = readdir(d);
		if (!de) {
			if (errno) {
				r = -errno;
				log_err("list file://%s/%s: %s", w->fs->root, w->key, strerror(-r));
			}
			break;
		}
		const char *name = de->d_name;
		if (!strcmp(name, ".") || !strcmp(name, "..") || !strncmp(name, STORE_TMP_PREFIX, strlen(STORE_TMP_PREFIX)))
			continue;
		size_t name_len = strlen(name);
		if (key_len + name_len + 1 > STORE_MAX_KEY)
			continue; /* not a key this store could have written */
		memcpy(w->key + key_len, name, name_len + 1);
		size_t full_len = key_len + name_len;
		unsigned type = de->d_type;
		if (type == DT_UNKNOWN || type == DT_LNK) {
			struct stat st;
			if (fstatat(dirfd(d), name, &st, 0) < 0)
				continue; /* vanished (a concurrent delete) or a dangling link */
			type = S_ISDIR(st.st_mode) ? DT_DIR : S_ISREG(st.st_mode) ? DT_REG : DT_UNKNOWN;
		}
		if (type == DT_REG) {
			if (full_len >= w->prefix_len && !memcmp(w->key, w->prefix, w->prefix_len)) {
				r = w->cb(w->arg, w->key);
				if (r)
					break;
			}
		} else if (type == DT_DIR) {
			w->key[full_len] = '/';
			w->key[full_len + 1] = 0;
			size_t cmp = full_len + 1 < w->prefix_len ? full_len + 1 : w->prefix_len;
			if (memcmp(w->key, w->prefix, cmp) != 0)
				continue;
			if (depth >= FILE_MAX_DEPTH) {
				log_warn("list file://%s: %s is nested too deeply, skipped", w->fs->root, w->key);
				continue;
			}
			int child = openat(dirfd(d), name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
			if (child < 0) {
				if (errno == ENOENT)
					continue;
				r = -errno;
				log_err("list file://%s/%s: %s", w->fs->root, w->key, strerror(-r));
				break;
			}
			r = walk_dir(w, child, full_len + 1, depth + 1);
			if (r)
				break;
		}
	}
	w->key[key_len] = 0;
	closedir(d);
	return r;
}

static int file_list(void *state, const char *prefix, store_list_cb cb, void *arg)
{
	struct file_store *fs = state;
	struct file_walk w = { .fs = fs, .prefix = prefix, .prefix_len = strlen(prefix), .cb = cb, .arg = arg };
	/* Start in the deepest directory the prefix names completely. */
	const char *slash = strrchr(prefix, '/');
	size_t start_len = slash ? (size_t)(slash - prefix) + 1 : 0;
	memcpy(w.key, prefix, start_len);
	w.key[start_len] = 0;
	int fd = openat(fs->dir_fd, start_len ? w.key : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT || errno == ENOTDIR)
			return 0;
		int r = -errno;
		log_err("list %s in file://%s: %s", prefix, fs->root, strerror(-r));
		return r;
	}
	return walk_dir(&w, fd, start_len, 0);
}

static int file_age(void *state, const char *key, double *out_seconds)
{
	struct file_store *fs = state;
	struct stat st;
	if (fstatat(fs->dir_fd, key, &st, 0) < 0) {
		if (errno == ENOENT || errno == ENOTDIR)
			return -ENOENT;
		int r = -errno;
		log_err("age of %s in file://%s: %s", key, fs->root, strerror(-r));
		return r;
	}
	if (!S_ISREG(st.st_mode))
		return -ENOENT;
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	double age = (double)(now.tv_sec - st.st_mtim.tv_sec) + (double)(now.tv_nsec - st.st_mtim.tv_nsec) / 1e9;
	/* File times come from a coarser clock than CLOCK_REALTIME, so a
	 * fresh file can look a few milliseconds into the future. */
	*out_seconds = age < 0 ? 0 : age;
	return 0;
}

static const char *const file_schemes[] = { "file", NULL };

const struct store_ops store_file_ops = {
	.name = "file",
	.schemes = file_schemes,
	.open = file_open,
	.close = file_close,
	.get = file_get,
	.put = file_put,
	.put_batch = file_put_batch,
	.exists_batch = file_exists_batch,
	.del = file_del,
	.list = file_list,
	.age = file_age,
};
