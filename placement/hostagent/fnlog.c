/* Function logs: one file per function under STATE/logs, rotated once to
 * NAME.log.1 when it would pass its bound, fed line by line by one pump per
 * sandbox, with Lambda's START / END / REPORT lines around each invocation.
 * Lines from concurrent sandboxes of one function interleave whole, never
 * mid-line: each pump writes only complete lines (or a long line in
 * pieces of HA_LOG_TAIL bytes), one write(2) each, under the file's lock. */
#include "placement/hostagent/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

/* ---- the file ----------------------------------------------------------------------------------------------- */

struct fnlog {
	pthread_mutex_t lock;
	char *path, *old_path;
	int fd;
	uint64_t size, max;
	bool warned;
};

static int open_log(const char *path)
{
	return open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
}

int fnlog_open(const char *dir, const char *name, uint64_t max_bytes, struct fnlog **out)
{
	struct fnlog *l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->fd = -1;
	pthread_mutex_init(&l->lock, NULL);
	l->path = xasprintf("%s/%s.log", dir, name);
	l->old_path = xasprintf("%s/%s.log.1", dir, name);
	l->max = max_bytes < (64u << 10) ? (64u << 10) : max_bytes;
	if (!l->path || !l->old_path) {
		fnlog_free(l);
		return -ENOMEM;
	}
	l->fd = open_log(l->path);
	struct stat st;
	if (l->fd < 0 || fstat(l->fd, &st) < 0) {
		int r = -errno;
		log_err("cannot open the function log %s: %s (is the agent's state directory writable?)", l->path,
			strerror(-r));
		fnlog_free(l);
		return r;
	}
	l->size = (uint64_t)st.st_size;
	*out = l;
	return 0;
}

void fnlog_free(struct fnlog *l)
{
	if (!l)
		return;
	if (l->fd >= 0)
		close(l->fd);
	pthread_mutex_destroy(&l->lock);
	free(l->path);
	free(l->old_path);
	free(l);
}

/* Rotate if |len| more bytes would pass the bound.  Called locked. */
static void rotate_locked(struct fnlog *l, size_t len)
{
	if (l->size == 0 || l->size + len <= l->max)
		return;
	if (rename(l->path, l->old_path) < 0) {
		if (!l->warned)
			log_warn("cannot rotate the function log %s: %s; it keeps growing", l->path, strerror(errno));
		l->warned = true;
		return;
	}
	int fd = open_log(l->path);
	if (fd < 0) {
		log_err("cannot reopen the function log %s after rotating it: %s", l->path, strerror(errno));
		return;
	}
	close(l->fd);
	l->fd = fd;
	l->size = 0;
}

/* Write |n| pieces as one write(2). */
static int fnlog_writev(struct fnlog *l, struct iovec *iov, int n)
{
	size_t len = 0;
	for (int i = 0; i < n; i++)
		len += iov[i].iov_len;
	if (len == 0)
		return 0;
	pthread_mutex_lock(&l->lock);
	rotate_locked(l, len);
	ssize_t w = writev(l->fd, iov, n);
	int r = 0;
	if (w < 0 || (size_t)w != len) {
		r = w < 0 ? -errno : -EIO;
		if (!l->warned)
			log_err("cannot write the function log %s: %s (is the disk full?)", l->path, strerror(-r));
		l->warned = true;
	}
	if (w > 0)
		l->size += (uint64_t)w;
	pthread_mutex_unlock(&l->lock);
	return r;
}

int fnlog_write(struct fnlog *l, const void *buf, size_t len)
{
	struct iovec iov = { (void *)buf, len };
	return fnlog_writev(l, &iov, 1);
}

/* Append the last |max| bytes of |path| to |<*buf, *len>|. */
static int read_end(const char *path, size_t max, char **buf, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int r = -errno;
		close(fd);
		return r;
	}
	size_t size = (size_t)st.st_size, take = size < max ? size : max;
	char *nb = realloc(*buf, *len + take + 1);
	if (!nb) {
		close(fd);
		return -ENOMEM;
	}
	*buf = nb;
	ssize_t n = take ? pread(fd, nb + *len, take, (off_t)(size - take)) : 0;
	close(fd);
	if (n < 0)
		return -errno;
	*len += (size_t)n;
	nb[*len] = '\0';
	return 0;
}

int fnlog_read(const char *dir, const char *name, size_t max, char **out, size_t *out_len)
{
	char *path = xasprintf("%s/%s.log", dir, name), *old = xasprintf("%s/%s.log.1", dir, name);
	char *buf = NULL;
	size_t len = 0;
	int r = -ENOMEM;
	struct stat st;
	if (!path || !old)
		goto out;
	uint64_t cur = stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
	bool have_cur = access(path, F_OK) == 0, have_old = access(old, F_OK) == 0;
	if (!have_cur && !have_old) {
		r = -ENOENT;
		goto out;
	}
	r = 0;
	if (have_old && cur < max)
		r = read_end(old, max - cur, &buf, &len);
	if (r == 0 && have_cur)
		r = read_end(path, max, &buf, &len);
	if (r == 0 && !buf && !(buf = calloc(1, 1)))
		r = -ENOMEM;
out:
	free(path);
	free(old);
	if (r < 0) {
		free(buf);
		return r;
	}
	*out = buf;
	*out_len = len;
	return 0;
}

/* ---- the tail ------------------------------------------------------------------------------------------------ */

void tail_reset(struct tail_ring *t) { t->total = 0; }

void tail_append(struct tail_ring *t, const void *p, size_t n)
{
	const char *s = p;
	if (n > HA_LOG_TAIL) {
		s += n - HA_LOG_TAIL;
		t->total += n - HA_LOG_TAIL;
		n = HA_LOG_TAIL;
	}
	size_t at = (size_t)(t->total % HA_LOG_TAIL), first = n < HA_LOG_TAIL - at ? n : HA_LOG_TAIL - at;
	memcpy(t->buf + at, s, first);
	memcpy(t->buf, s + first, n - first);
	t->total += n;
}

char *tail_dup(const struct tail_ring *t)
{
	size_t n = t->total < HA_LOG_TAIL ? (size_t)t->total : HA_LOG_TAIL;
	size_t start = t->total <= HA_LOG_TAIL ? 0 : (size_t)(t->total % HA_LOG_TAIL);
	size_t first = HA_LOG_TAIL - start < n ? HA_LOG_TAIL - start : n;
	char *o = malloc(n + 1);
	if (!o)
		return NULL;
	memcpy(o, t->buf + start, first);
	memcpy(o + first, t->buf, n - first);
	o[n] = '\0';
	return o;
}

void ha_format_report(char *buf, size_t len, const char *request_id, double duration_s, double init_s, bool restored,
		      uint32_t memory_mb, uint64_t max_memory)
{
	double ms = duration_s * 1000.0, init_ms = init_s >= 0 ? init_s * 1000.0 : 0.0;
	unsigned long long billed = (unsigned long long)ceil(restored ? ms : ms + init_ms);
	unsigned long long used = (unsigned long long)((max_memory + (1u << 20) - 1) >> 20);
	int n = snprintf(buf, len,
			 "REPORT RequestId: %s\tDuration: %.2f ms\tBilled Duration: %llu ms\tMemory Size: %u MB\tMax "
			 "Memory Used: %llu MB\t",
			 request_id, ms, billed, memory_mb, used);
	if (n > 0 && (size_t)n < len && init_s >= 0 && restored)
		n += snprintf(buf + n, len - (size_t)n, "Restore Duration: %.2f ms\tBilled Restore Duration: %llu ms\t",
			      init_ms, (unsigned long long)ceil(init_ms));
	else if (n > 0 && (size_t)n < len && init_s >= 0)
		n += snprintf(buf + n, len - (size_t)n, "Init Duration: %.2f ms\t", init_ms);
	if (n > 0 && (size_t)n + 1 < len) {
		buf[n] = '\n';
		buf[n + 1] = '\0';
	}
}

/* ---- the pump ------------------------------------------------------------------------------------------------ */

struct pump_stream {
	int fd;
	enum pump_kind kind;
	char line[HA_LOG_TAIL]; /* PUMP_LOG: the unterminated end of what came */
	size_t line_len;
	uint8_t *cap; /* PUMP_CAPTURE */
	size_t cap_len, cap_alloc, cap_max;
	uint64_t total;
};

struct pump {
	pthread_mutex_t lock;
	struct fnlog *log;
	struct pump_stream s[2]; /* stdout, stderr */
	struct tail_ring tail;	 /* the invocation's log, while capturing */
	bool capturing;
	struct tail_ring errtail; /* stderr as it came */
	int wake;		  /* eventfd: stop the thread */
	pthread_t thread;
	bool running;
};

/* To the log (and the tail while capturing).  Locked. */
static void emit_locked(struct pump *p, struct iovec *iov, int n)
{
	fnlog_writev(p->log, iov, n);
	if (p->capturing)
		for (int i = 0; i < n; i++)
			tail_append(&p->tail, iov[i].iov_base, iov[i].iov_len);
}

/* End the unterminated line of |st|, if any.  Locked. */
static void flush_line_locked(struct pump *p, struct pump_stream *st)
{
	if (st->line_len == 0)
		return;
	struct iovec iov[2] = { { st->line, st->line_len }, { "\n", 1 } };
	emit_locked(p, iov, 2);
	st->line_len = 0;
}

static void take_log_locked(struct pump *p, struct pump_stream *st, const char *buf, size_t n)
{
	const char *nl = memrchr(buf, '\n', n);
	if (nl) {
		/* Everything up to the last newline goes out in one write. */
		size_t head = (size_t)(nl - buf) + 1;
		struct iovec iov[2] = { { st->line, st->line_len }, { (void *)buf, head } };
		emit_locked(p, iov, 2);
		st->line_len = 0;
		buf += head;
		n -= head;
	}
	while (n > 0) {
		size_t room = sizeof(st->line) - st->line_len, k = n < room ? n : room;
		memcpy(st->line + st->line_len, buf, k);
		st->line_len += k;
		buf += k;
		n -= k;
		if (st->line_len == sizeof(st->line)) {
			/* A very long line goes out in pieces. */
			struct iovec iov = { st->line, st->line_len };
			emit_locked(p, &iov, 1);
			st->line_len = 0;
		}
	}
}

static void take_capture_locked(struct pump_stream *st, const char *buf, size_t n)
{
	st->total += n;
	size_t k = st->cap_len < st->cap_max ? st->cap_max - st->cap_len : 0;
	if (k > n)
		k = n;
	if (k == 0)
		return;
	if (st->cap_len + k > st->cap_alloc) {
		size_t want = st->cap_alloc ? st->cap_alloc * 2 : 65536;
		while (want < st->cap_len + k)
			want *= 2;
		if (want > st->cap_max)
			want = st->cap_max;
		uint8_t *nb = realloc(st->cap, want);
		if (!nb)
			return; /* counted in total; the caller sees a short capture as too large */
		st->cap = nb;
		st->cap_alloc = want;
	}
	memcpy(st->cap + st->cap_len, buf, k);
	st->cap_len += k;
}

/* Read what |st| has now.  Returns true if bytes came.  Locked. */
static bool read_stream_locked(struct pump *p, int i)
{
	struct pump_stream *st = &p->s[i];
	if (st->fd < 0)
		return false;
	char buf[65536];
	ssize_t n = read(st->fd, buf, sizeof(buf));
	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
		/* End of file: every writer is gone, for good. */
		close(st->fd);
		st->fd = -1;
		return false;
	}
	if (n < 0)
		return false;
	if (i == 1)
		tail_append(&p->errtail, buf, (size_t)n);
	if (st->kind == PUMP_CAPTURE)
		take_capture_locked(st, buf, (size_t)n);
	else
		take_log_locked(p, st, buf, (size_t)n);
	return true;
}

/* Copy everything the pipes hold now.  Locked. */
static void drain_locked(struct pump *p)
{
	for (int i = 0; i < 2; i++)
		while (read_stream_locked(p, i))
			;
}

static void *pump_main(void *arg)
{
	struct pump *p = arg;
	for (;;) {
		pthread_mutex_lock(&p->lock);
		struct pollfd pf[3] = { { p->s[0].fd, POLLIN, 0 }, { p->s[1].fd, POLLIN, 0 }, { p->wake, POLLIN, 0 } };
		pthread_mutex_unlock(&p->lock);
		if (poll(pf, 3, -1) < 0 && errno != EINTR)
			break;
		if (pf[2].revents)
			break;
		pthread_mutex_lock(&p->lock);
		for (int i = 0; i < 2; i++)
			if (pf[i].revents && p->s[i].fd == pf[i].fd)
				read_stream_locked(p, i);
		pthread_mutex_unlock(&p->lock);
	}
	return NULL;
}

int pump_start(const struct pump_config *cfg, struct pump **out)
{
	struct pump *p = calloc(1, sizeof(*p));
	int r = -ENOMEM;
	if (!p)
		goto fail;
	p->log = cfg->log;
	p->s[0] = (struct pump_stream){ .fd = cfg->out_fd, .kind = cfg->out_kind, .cap_max = cfg->capture_max };
	p->s[1] = (struct pump_stream){ .fd = cfg->err_fd, .kind = PUMP_LOG };
	pthread_mutex_init(&p->lock, NULL);
	p->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (p->wake < 0) {
		r = -errno;
		goto fail;
	}
	int e = pthread_create(&p->thread, NULL, pump_main, p);
	if (e) {
		r = -e;
		log_err("cannot start a log thread: %s (too many threads?)", strerror(e));
		goto fail;
	}
	p->running = true;
	*out = p;
	return 0;
fail:
	if (p) {
		if (p->wake >= 0)
			close(p->wake);
		pthread_mutex_destroy(&p->lock);
		free(p);
	}
	if (cfg->out_fd >= 0)
		close(cfg->out_fd);
	if (cfg->err_fd >= 0)
		close(cfg->err_fd);
	return r;
}

/* Copy what is in the pipes, then keep copying until they stay quiet for a
 * couple of milliseconds (at most about 20 ms): output the workload wrote
 * before it answered may still be on its way through the sandbox's copy
 * loop. */
static void settle(struct pump *p)
{
	for (int round = 0; round < 10; round++) {
		pthread_mutex_lock(&p->lock);
		drain_locked(p);
		struct pollfd pf[2] = { { p->s[0].fd, POLLIN, 0 }, { p->s[1].fd, POLLIN, 0 } };
		pthread_mutex_unlock(&p->lock);
		if (pf[0].fd < 0 && pf[1].fd < 0)
			return;
		if (poll(pf, 2, 2) <= 0)
			return;
	}
}

void pump_mark(struct pump *p, const char *line, bool wait_quiet)
{
	if (wait_quiet)
		settle(p);
	pthread_mutex_lock(&p->lock);
	drain_locked(p);
	for (int i = 0; i < 2; i++)
		if (p->s[i].kind == PUMP_LOG)
			flush_line_locked(p, &p->s[i]);
	struct iovec iov = { (void *)line, strlen(line) };
	emit_locked(p, &iov, 1);
	pthread_mutex_unlock(&p->lock);
}

void pump_capture_begin(struct pump *p)
{
	pthread_mutex_lock(&p->lock);
	tail_reset(&p->tail);
	p->capturing = true;
	pthread_mutex_unlock(&p->lock);
}

char *pump_capture_end(struct pump *p)
{
	pthread_mutex_lock(&p->lock);
	p->capturing = false;
	char *s = tail_dup(&p->tail);
	pthread_mutex_unlock(&p->lock);
	return s;
}

char *pump_stderr_tail(struct pump *p)
{
	pthread_mutex_lock(&p->lock);
	char *s = tail_dup(&p->errtail);
	pthread_mutex_unlock(&p->lock);
	return s;
}

void pump_finish(struct pump *p)
{
	if (!p->running)
		return;
	uint64_t one = 1;
	if (write(p->wake, &one, sizeof(one)) < 0)
		log_warn("cannot wake a log thread: %s", strerror(errno));
	pthread_join(p->thread, NULL);
	p->running = false;
	pthread_mutex_lock(&p->lock);
	drain_locked(p);
	for (int i = 0; i < 2; i++) {
		if (p->s[i].kind == PUMP_LOG)
			flush_line_locked(p, &p->s[i]);
		if (p->s[i].fd >= 0)
			close(p->s[i].fd);
		p->s[i].fd = -1;
	}
	pthread_mutex_unlock(&p->lock);
}

const uint8_t *pump_captured(struct pump *p, size_t *len, uint64_t *total)
{
	pthread_mutex_lock(&p->lock);
	const uint8_t *b = p->s[0].cap;
	*len = p->s[0].cap_len;
	*total = p->s[0].total;
	pthread_mutex_unlock(&p->lock);
	return b;
}

void pump_free(struct pump *p)
{
	if (!p)
		return;
	pump_finish(p);
	close(p->wake);
	free(p->s[0].cap);
	pthread_mutex_destroy(&p->lock);
	free(p);
}
