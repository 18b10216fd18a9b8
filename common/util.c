#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/sha.h>

/* The process-wide log settings: the threshold, read and written atomically
 * so threads may log while the main thread changes it, and the program's name,
 * set once by main() before any thread starts. */
static _Atomic int log_threshold = LOG_WARN;
static const char *log_program;
static pthread_once_t log_env_once = PTHREAD_ONCE_INIT;

static void log_read_env(void)
{
	const char *d = getenv("KINDLING_DEBUG");
	if (d && *d && strcmp(d, "0") != 0)
		log_threshold = LOG_DEBUG;
}

void log_set_program(const char *name)
{
	log_program = name;
}

void log_set_level(enum log_level level)
{
	pthread_once(&log_env_once, log_read_env);
	log_threshold = level;
}

void log_msg(enum log_level level, const char *component, const char *fmt, ...)
{
	static const char *const names[] = {"error", "warning", "info", "debug"};
	if (level < LOG_ERR)
		return;
	pthread_once(&log_env_once, log_read_env);
	if ((int)level > log_threshold)
		return;
	char line[2048];
	int n = !log_program ? snprintf(line, sizeof(line), "%s: %s: ", component, names[level])
		: log_threshold >= LOG_DEBUG ? snprintf(line, sizeof(line), "%s[%s]: %s: ", log_program, component, names[level])
					     : snprintf(line, sizeof(line), "%s: %s: ", log_program, names[level]);
	if (n < 0)
		return;
	va_list ap;
	va_start(ap, fmt);
	int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (m < 0)
		return;
	size_t len = (size_t)n + (size_t)m;
	if (len > sizeof(line) - 2)
		len = sizeof(line) - 2;
	line[len++] = '\n';
	/* One write per line keeps lines from threads whole. */
	ssize_t w = write(STDERR_FILENO, line, len);
	(void)w;
}

void hex_encode(const uint8_t *in, size_t len, char *out)
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < len; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * len] = 0;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int hex_decode(const char *in, uint8_t *out, size_t out_len)
{
	for (size_t i = 0; i < out_len; i++) {
		int hi = hexval(in[2 * i]);
		if (hi < 0)
			return -EINVAL;
		int lo = hexval(in[2 * i + 1]);
		if (lo < 0)
			return -EINVAL;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return in[2 * out_len] == 0 ? 0 : -EINVAL;
}

bool is_sha256_hex(const char *s)
{
	for (size_t i = 0; i < SHA256_HEX_LEN; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return s[SHA256_HEX_LEN] == 0;
}

void sha256_buf(const void *p, size_t n, uint8_t out[SHA256_LEN])
{
	SHA256(p, n, out);
}

bool is_all_zero(const void *p, size_t n)
{
	const uint8_t *b = p;
	/* Compare word-wise: this runs on every 512 KiB chunk. */
	while (n && ((uintptr_t)b & 7)) {
		if (*b)
			return false;
		b++;
		n--;
	}
	const uint64_t *w = (const uint64_t *)(const void *)b;
	for (; n >= 64; n -= 64, w += 8)
		if (w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7])
			return false;
	b = (const uint8_t *)w;
	while (n--)
		if (*b++)
			return false;
	return true;
}

int mkdir_p(const char *path, mode_t mode)
{
	char buf[PATH_MAX];
	size_t len = strlen(path);
	if (len == 0 || len >= sizeof(buf))
		return -ENAMETOOLONG;
	memcpy(buf, path, len + 1);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(buf, mode) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, mode) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

int write_file_atomic(const char *path, const void *buf, size_t len, mode_t mode)
{
	char tmp[PATH_MAX];
	uint32_t r;
	if (random_bytes(&r, sizeof(r)) < 0)
		r = (uint32_t)getpid();
	const char *slash = strrchr(path, '/');
	int dirlen = slash ? (int)(slash - path + 1) : 0;
	int n = snprintf(tmp, sizeof(tmp), "%.*s.tmp-%s.%d.%08x", dirlen, path, slash ? slash + 1 : path, (int)getpid(), r);
	if (n < 0 || (size_t)n >= sizeof(tmp))
		return -ENAMETOOLONG;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
	if (fd < 0)
		return -errno;
	int err = write_full(fd, buf, len);
	if (!err && fchmod(fd, mode) < 0)
		err = -errno;
	if (!err && fsync(fd) < 0)
		err = -errno;
	if (close(fd) < 0 && !err)
		err = -errno;
	if (!err && rename(tmp, path) < 0)
		err = -errno;
	if (err)
		unlink(tmp);
	return err;
}

int write_full(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	while (len) {
		ssize_t w = write(fd, p, len);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

void strv_free(char **v)
{
	for (size_t i = 0; v && v[i]; i++)
		free(v[i]);
	free(v);
}

int str_list_add(struct str_list *l, const char *s)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 64;
		char **a = realloc(l->items, cap * sizeof(*a));
		if (!a)
			return -ENOMEM;
		l->items = a;
		l->cap = cap;
	}
	if (!(l->items[l->n] = strdup(s)))
		return -ENOMEM;
	l->n++;
	return 0;
}

void str_list_clear(struct str_list *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->items[i]);
	free(l->items);
	l->items = NULL;
	l->n = l->cap = 0;
}

int read_file_all(const char *path, size_t max, uint8_t **out, size_t *out_len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	if ((uint64_t)st.st_size > max) {
		close(fd);
		return -EFBIG;
	}
	size_t size = (size_t)st.st_size;
	uint8_t *buf = malloc(size ? size : 1);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	size_t got = 0;
	while (got < size) {
		ssize_t r = read(fd, buf + got, size - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			int e = r < 0 ? -errno : -EIO;
			free(buf);
			close(fd);
			return e;
		}
		got += (size_t)r;
	}
	close(fd);
	*out = buf;
	*out_len = size;
	return 0;
}

int random_bytes(void *buf, size_t len)
{
	uint8_t *p = buf;
	while (len) {
		ssize_t r = getrandom(p, len, 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += r;
		len -= (size_t)r;
	}
	return 0;
}

int parse_size(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || s[0] == '-')
		return -EINVAL;
	uint64_t mul = 1;
	switch (*end) {
	case 'K': case 'k': mul = 1ull << 10; end++; break;
	case 'M': case 'm': mul = 1ull << 20; end++; break;
	case 'G': case 'g': mul = 1ull << 30; end++; break;
	case 'T': case 't': mul = 1ull << 40; end++; break;
	}
	if (*end || !ck_mul_u64(v, mul, out))
		return -EINVAL;
	return 0;
}

double now_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;
	va_start(ap, fmt);
	int n = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (n < 0) {
		errno = ENOMEM;
		return NULL;
	}
	return s;
}

int err_set(char *err, size_t errlen, int rc, const char *fmt, ...)
{
	if (errlen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return rc;
}
