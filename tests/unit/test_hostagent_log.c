/* Function logs (placement/hostagent/fnlog.c): rotation and reading back,
 * the 4 KiB tail ring, Lambda's REPORT line, and the pump that copies a
 * sandbox's output into the log line by line (real pipes, a real thread),
 * with the START/END marks in order and the captured stdout of a plain-mode
 * run bounded. */
#include "placement/hostagent/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/check.h"

static char dir[] = "/tmp/kindling-fnlog-XXXXXX";

static void test_tail(void)
{
	struct tail_ring t;
	tail_reset(&t);
	char *s = tail_dup(&t);
	CHECK(s && strcmp(s, "") == 0);
	free(s);
	tail_append(&t, "hello ", 6);
	tail_append(&t, "world", 5);
	s = tail_dup(&t);
	CHECK(s && strcmp(s, "hello world") == 0);
	free(s);
	/* Past the size: only the last HA_LOG_TAIL bytes, in order. */
	char big[HA_LOG_TAIL + 100];
	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (char)('a' + i % 26);
	tail_reset(&t);
	for (size_t i = 0; i < sizeof(big); i += 7)
		tail_append(&t, big + i, sizeof(big) - i < 7 ? sizeof(big) - i : 7);
	s = tail_dup(&t);
	CHECK(s && strlen(s) == HA_LOG_TAIL && memcmp(s, big + 100, HA_LOG_TAIL) == 0);
	free(s);
	/* One append larger than the ring. */
	tail_reset(&t);
	tail_append(&t, "xyz", 3);
	tail_append(&t, big, sizeof(big));
	s = tail_dup(&t);
	CHECK(s && strlen(s) == HA_LOG_TAIL && memcmp(s, big + 100, HA_LOG_TAIL) == 0);
	free(s);
}

static void test_report(void)
{
	char line[512];
	ha_format_report(line, sizeof(line), "id-1", 0.0123456, -1, false, 128, 21u << 20);
	CHECK(strcmp(line, "REPORT RequestId: id-1\tDuration: 12.35 ms\tBilled Duration: 13 ms\tMemory Size: 128 MB\t"
			   "Max Memory Used: 21 MB\t\n") == 0);
	/* A cold start: images bill the init too (91.21 + 143.90 -> 236). */
	ha_format_report(line, sizeof(line), "id-2", 0.09121, 0.14390, false, 128, (13u << 20) - 5);
	CHECK(strcmp(line, "REPORT RequestId: id-2\tDuration: 91.21 ms\tBilled Duration: 236 ms\tMemory Size: 128 MB\t"
			   "Max Memory Used: 13 MB\tInit Duration: 143.90 ms\t\n") == 0);
	/* A SnapStart restore: the restore is reported and billed on its own. */
	ha_format_report(line, sizeof(line), "id-3", 0.09121, 0.4121, true, 128, 13u << 20);
	CHECK(strcmp(line, "REPORT RequestId: id-3\tDuration: 91.21 ms\tBilled Duration: 92 ms\tMemory Size: 128 MB\t"
			   "Max Memory Used: 13 MB\tRestore Duration: 412.10 ms\tBilled Restore Duration: 413 ms\t\n") == 0);
}

static char *read_all(void)
{
	char *s = NULL;
	size_t n = 0;
	if (fnlog_read(dir, "fn", 1 << 20, &s, &n) < 0)
		return NULL;
	return s;
}

static void test_file(void)
{
	char *s = NULL;
	size_t n = 0;
	CHECK(fnlog_read(dir, "nothing", 100, &s, &n) == -ENOENT);
	struct fnlog *l = NULL;
	CHECK(fnlog_open(dir, "rot", 1, &l) == 0); /* the bound is at least 64 KiB */
	char line[1000];
	memset(line, 'x', sizeof(line) - 1);
	line[sizeof(line) - 1] = '\n';
	for (int i = 0; i < 200; i++) /* 200 KB: rotates at least once */
		CHECK(fnlog_write(l, line, sizeof(line)) == 0);
	fnlog_free(l);
	char path[256];
	snprintf(path, sizeof(path), "%s/rot.log.1", dir);
	CHECK(access(path, F_OK) == 0);
	CHECK(fnlog_read(dir, "rot", 5000, &s, &n) == 0);
	CHECK(n == 5000 && s[n - 1] == '\n' && strlen(s) == n);
	free(s);
	/* Asking for more than both files hold gives what they hold, whole lines. */
	CHECK(fnlog_read(dir, "rot", 10 << 20, &s, &n) == 0);
	CHECK(n % 1000 == 0 && n <= 2 * (64u << 10) + 1000 && n >= (64u << 10));
	free(s);
}

/* A pump on two fresh pipes into the log |name|. */
static struct pump *pump_on_pipes(const char *name, enum pump_kind kind, size_t cap, struct fnlog **l, int out[2],
				  int err[2])
{
	CHECK(fnlog_open(dir, name, 1 << 20, l) == 0);
	CHECK(pipe2(out, O_CLOEXEC) == 0 && pipe2(err, O_CLOEXEC) == 0);
	fcntl(out[0], F_SETFL, O_NONBLOCK);
	fcntl(err[0], F_SETFL, O_NONBLOCK);
	struct pump_config pc = { .log = *l, .out_fd = out[0], .err_fd = err[0], .out_kind = kind, .capture_max = cap };
	struct pump *p = NULL;
	CHECK(pump_start(&pc, &p) == 0);
	return p;
}

static void test_pump(void)
{
	struct fnlog *l = NULL;
	int out[2], err[2];
	struct pump *p = pump_on_pipes("fn", PUMP_LOG, 0, &l, out, err);
	CHECK(write(out[1], "init line\n", 10) == 10);
	pump_mark(p, "ready\n", false); /* everything so far is in the log, before the capture */
	pump_capture_begin(p);
	pump_mark(p, "START RequestId: r1 Version: $LATEST\n", false);
	CHECK(write(out[1], "hello ", 6) == 6);
	CHECK(write(err[1], "oops\n", 5) == 5);
	CHECK(write(out[1], "world\nno newline", 16) == 16);
	pump_mark(p, "END RequestId: r1\n", true);
	char *tail = pump_capture_end(p);
	/* Everything written before a mark is in the log before it; the
	 * unterminated line is ended; the tail starts at the capture. */
	CHECK(tail && strncmp(tail, "START RequestId: r1", 19) == 0);
	CHECK(tail && strstr(tail, "hello world\n") && strstr(tail, "oops\n") && strstr(tail, "no newline\n"));
	CHECK(tail && strstr(tail, "END RequestId: r1\n") && strstr(tail, "END RequestId: r1\n")[18] == '\0');
	CHECK(tail && !strstr(tail, "init line"));
	free(tail);
	char *err_tail = pump_stderr_tail(p);
	CHECK(err_tail && strcmp(err_tail, "oops\n") == 0);
	free(err_tail);
	/* A very long line goes out in pieces, nothing lost. */
	char big[3 * HA_LOG_TAIL];
	memset(big, 'z', sizeof(big));
	CHECK(write(out[1], big, sizeof(big)) == (ssize_t)sizeof(big));
	pump_finish(p);
	pump_mark(p, "after finish\n", false);
	pump_free(p);
	close(out[1]);
	close(err[1]);
	fnlog_free(l);
	char *s = read_all();
	CHECK(s != NULL);
	if (s) {
		const char *init = strstr(s, "init line\n"), *start = strstr(s, "START"), *end = strstr(s, "END"),
			   *after = strstr(s, "after finish\n");
		CHECK(init && start && end && after && init < start && start < end && end < after);
		size_t z = 0;
		for (const char *q = s; *q; q++)
			z += *q == 'z';
		CHECK(z == sizeof(big));
		free(s);
	}
}

static void test_capture(void)
{
	struct fnlog *l = NULL;
	int out[2], err[2];
	struct pump *p = pump_on_pipes("cap", PUMP_CAPTURE, 100, &l, out, err);
	char buf[250];
	memset(buf, 'r', sizeof(buf));
	CHECK(write(out[1], buf, sizeof(buf)) == (ssize_t)sizeof(buf));
	pump_finish(p);
	size_t len;
	uint64_t total;
	const uint8_t *b = pump_captured(p, &len, &total);
	CHECK(b && len == 100 && total == 250 && b[99] == 'r');
	pump_free(p);
	close(out[1]);
	close(err[1]);
	fnlog_free(l);
}

int main(void)
{
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	test_tail();
	test_report();
	test_file();
	test_pump();
	test_capture();
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", dir);
	return check_report();
}
