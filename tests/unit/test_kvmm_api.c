/* kvmm's API side: the HTTP parser on good and hostile heads; the API server
 * over a real unix socket (Firecracker's routes, status codes and error
 * bodies, keep-alive and pipelining, Expect: 100-continue, pre-boot-only
 * resources, the hooks, a stuck client and an idle one); the seccomp
 * allowlists, each applied in a forked child that must survive an allowed
 * call and die of SIGSYS on a forbidden one; and the jail (cgroup, chroot,
 * uid drop) in a forked child. */
/* ctest-labels: no-tsan (single-threaded: nothing for ThreadSanitizer to check) */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "common/common.h"
#include "tests/check.h"
#include "vmm/kvmm/api.h"
#include "vmm/kvmm/config.h"
#include "vmm/kvmm/http.h"
#include "vmm/kvmm/jail.h"

/* ---- the parser ---------------------------------------------------------------------- */

static int parse(const char *s, struct kvmm_http_req *q)
{
	char err[256];
	return kvmm_http_parse_head(s, strlen(s), q, err, sizeof(err));
}

static void test_http_parser(void)
{
	struct kvmm_http_req q;
	CHECK(parse("PUT /machine-config HTTP/1.1\r\nHost: localhost\r\nContent-Length: 12\r\n"
		    "Content-Type: application/json\r\n\r\n{\"x\":1}",
		    &q) == 0);
	CHECK(strcmp(q.method, "PUT") == 0 && strcmp(q.path, "/machine-config") == 0 && q.minor == 1);
	CHECK(q.content_length == 12 && q.keep_alive && !q.expect_continue);
	CHECK(q.head_len == strlen("PUT /machine-config HTTP/1.1\r\nHost: localhost\r\nContent-Length: 12\r\n"
				   "Content-Type: application/json\r\n\r\n"));
	CHECK(parse("GET / HTTP/1.0\r\n\r\n", &q) == 0 && !q.keep_alive && q.minor == 0);
	CHECK(parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", &q) == 0 && q.keep_alive);
	CHECK(parse("GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n", &q) == 0 && !q.keep_alive);
	CHECK(parse("PUT /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2000\r\n\r\n", &q) == 0 &&
	      q.expect_continue && q.content_length == 2000);
	CHECK(parse("GET / HTTP/1.1\r\ncontent-length:   7  \r\n\r\n", &q) == 0 && q.content_length == 7);

	/* Incomplete: ask for more. */
	CHECK(parse("GET / HTTP/1.1\r\nHost: x\r\n", &q) == -EAGAIN);
	CHECK(parse("", &q) == -EAGAIN);

	/* Refused. */
	static const char *const bad[] = {
		"GET / HTTP/1.1\nHost: x\r\n\r\n",			       /* bare LF */
		"GET / HTTP/1.1\r\nHost: x\ry\r\n\r\n",		       /* bare CR */
		"GET / HTTP/2.0\r\n\r\n",				       /* version */
		"GET /  HTTP/1.1\r\n\r\n",				       /* two spaces */
		"get / HTTP/1.1\r\n\r\n",				       /* method case */
		"GET http://x/ HTTP/1.1\r\n\r\n",			       /* absolute form */
		"GET / HTTP/1.1\r\nHost : x\r\n\r\n",			       /* space before colon */
		"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",		       /* folding */
		"GET / HTTP/1.1\r\nX: a\x01\r\n\r\n",			       /* control byte */
		"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",       /* chunked */
		"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", /* duplicate */
		"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",		       /* sign */
		"PUT / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n",	       /* junk */
		"PUT / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n",	       /* hex */
		"PUT / HTTP/1.1\r\nExpect: 200-ok\r\n\r\n",		       /* expectation */
		"\r\n\r\n",						       /* empty request line */
		"VERYLONGMETHOD / HTTP/1.1\r\n\r\n",			       /* method length */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int r = parse(bad[i], &q);
		if (r != -EINVAL)
			fprintf(stderr, "  bad head %zu: %d\n", i, r);
		CHECK(r == -EINVAL);
	}
	CHECK(parse("PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n", &q) == -E2BIG);
	CHECK(parse("PUT / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n", &q) == -E2BIG);

	/* Too many headers, too long a head. */
	char *big = malloc(KVMM_HTTP_MAX_HEAD + 64);
	size_t n = (size_t)sprintf(big, "GET / HTTP/1.1\r\n");
	for (int i = 0; i <= KVMM_HTTP_MAX_HEADERS; i++)
		n += (size_t)sprintf(big + n, "X%d: y\r\n", i);
	strcpy(big + n, "\r\n");
	CHECK(parse(big, &q) == -EMSGSIZE);
	memset(big, 'a', KVMM_HTTP_MAX_HEAD + 10);
	memcpy(big, "GET /", 5);
	char err[128];
	CHECK(kvmm_http_parse_head(big, KVMM_HTTP_MAX_HEAD + 10, &q, err, sizeof(err)) == -EMSGSIZE);
	free(big);
}

/* ---- the server ----------------------------------------------------------------------- */

struct calls {
	int starts, ctrl_alt_dels;
	int fail_start; /* the next start fails */
	unsigned seen_vcpus;
};

static int hook_start(void *ctx, const struct kvmm_config *cfg, char *err, size_t errlen)
{
	struct calls *c = ctx;
	c->starts++;
	c->seen_vcpus = cfg->vcpu_count;
	if (c->fail_start) {
		c->fail_start = 0;
		snprintf(err, errlen, "cannot open /dev/kvm: No such file or directory");
		return -ENOENT;
	}
	return 0;
}

static int hook_cad(void *ctx, char *err, size_t errlen)
{
	(void)err;
	(void)errlen;
	((struct calls *)ctx)->ctrl_alt_dels++;
	return 0;
}

static int connect_to(const char *path)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		perror("connect");
		if (fd >= 0)
			close(fd);
		return -1;
	}
	struct timeval tv = {15, 0}; /* bounded: a hung server fails the test */
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

/* One response from |fd| into |<out, cap>|: status returned, body copied
 * (NUL-terminated).  -1 on EOF, timeout or a malformed response. */
static int read_resp(int fd, char *out, size_t cap)
{
	char buf[8192] = "";
	size_t len = 0;
	char *end = NULL;
	while (!(end = strstr(buf, "\r\n\r\n"))) {
		if (len + 1 >= sizeof(buf))
			return -1;
		ssize_t r = recv(fd, buf + len, 1, 0); /* byte by byte: never read into the next response */
		if (r <= 0)
			return -1;
		len += (size_t)r;
		buf[len] = '\0';
	}
	int status = atoi(buf + 9);
	const char *cl = strcasestr(buf, "Content-Length:");
	size_t blen = cl ? strtoul(cl + 15, NULL, 10) : 0;
	if (blen >= cap)
		return -1;
	size_t got = 0;
	while (got < blen) {
		ssize_t r = recv(fd, out + got, blen - got, 0);
		if (r <= 0)
			return -1;
		got += (size_t)r;
	}
	out[blen] = '\0';
	return status;
}

static int send_str(int fd, const char *s)
{
	return write_full(fd, s, strlen(s));
}

/* A whole request on a fresh connection. */
static int req(const char *sock, const char *method, const char *path, const char *body, char *out, size_t cap)
{
	int fd = connect_to(sock);
	if (fd < 0)
		return -1;
	char head[512];
	snprintf(head, sizeof(head), "%s %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: %zu\r\n\r\n", method, path,
		 body ? strlen(body) : 0);
	int st = -1;
	if (send_str(fd, head) == 0 && (!body || send_str(fd, body) == 0))
		st = read_resp(fd, out, cap);
	close(fd);
	return st;
}

static void test_server(const char *dir)
{
	char sock[256], kernel[256], out[8192];
	snprintf(sock, sizeof(sock), "%s/api.sock", dir);
	snprintf(kernel, sizeof(kernel), "%s/vmlinuz", dir);
	int kfd = open(kernel, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	CHECK(kfd >= 0 && write(kfd, "k", 1) == 1);
	close(kfd);

	struct kvmm_config cfg;
	kvmm_config_init(&cfg);
	struct calls calls = {0};
	struct kvmm_api_hooks hooks = {.ctx = &calls, .instance_start = hook_start, .send_ctrl_alt_del = hook_cad};
	struct kvmm_api *api;
	CHECK(kvmm_api_start(&api, sock, &cfg, &hooks) == 0);
	struct stat st;
	CHECK(stat(sock, &st) == 0 && S_ISSOCK(st.st_mode) && (st.st_mode & 0777) == 0600);

	CHECK(req(sock, "GET", "/", NULL, out, sizeof(out)) == 200);
	CHECK(strstr(out, "\"state\":\"Not started\"") && strstr(out, "\"id\":") && strstr(out, "\"vmm_version\":") &&
	      strstr(out, "\"app_name\":"));
	CHECK(req(sock, "GET", "/machine-config", NULL, out, sizeof(out)) == 200);
	CHECK(strstr(out, "\"vcpu_count\":1") && strstr(out, "\"mem_size_mib\":128"));
	CHECK(req(sock, "PUT", "/machine-config", "{\"vcpu_count\": 2, \"mem_size_mib\": 256}", out, sizeof(out)) ==
	      204);
	CHECK(req(sock, "GET", "/machine-config", NULL, out, sizeof(out)) == 200 && strstr(out, "\"vcpu_count\":2"));
	CHECK(req(sock, "PUT", "/machine-config", "{\"vcpu_count\": 2, \"mem\": 256}", out, sizeof(out)) == 400);
	CHECK(strstr(out, "\"fault_message\"") && strstr(out, "mem"));
	CHECK(req(sock, "GET", "/nope", NULL, out, sizeof(out)) == 400);
	CHECK(strstr(out, "Invalid request method and/or path: GET /nope"));
	CHECK(req(sock, "DELETE", "/machine-config", NULL, out, sizeof(out)) == 400);
	CHECK(req(sock, "PUT", "/machine-config", NULL, out, sizeof(out)) == 400 && strstr(out, "Empty PUT"));
	CHECK(req(sock, "PUT", "/drives/rootfs",
		  "{\"drive_id\": \"other\", \"path_on_host\": \"/r\", \"is_root_device\": true}", out,
		  sizeof(out)) == 400);
	CHECK(strstr(out, "does not match"));

	/* InstanceStart refuses an incomplete config without calling the hook. */
	CHECK(req(sock, "PUT", "/actions", "{\"action_type\": \"InstanceStart\"}", out, sizeof(out)) == 400);
	CHECK(strstr(out, "kernel_image_path") && calls.starts == 0);
	char body[512];
	snprintf(body, sizeof(body), "{\"kernel_image_path\": \"%s\", \"boot_args\": \"console=ttyS0\"}", kernel);
	CHECK(req(sock, "PUT", "/boot-source", body, out, sizeof(out)) == 204);
	CHECK(req(sock, "PUT", "/actions", "{\"action_type\": \"SendCtrlAltDel\"}", out, sizeof(out)) == 400);
	CHECK(strstr(out, "before starting the microVM") && calls.ctrl_alt_dels == 0);
	CHECK(req(sock, "PUT", "/actions", "{\"action_type\": \"Reboot\"}", out, sizeof(out)) == 400);
	CHECK(req(sock, "PUT", "/actions", "{\"action_type\": \"FlushMetrics\"}", out, sizeof(out)) == 400);
	CHECK(req(sock, "PUT", "/actions", "{\"action_type\": \"InstanceStart\", \"x\": 1}", out, sizeof(out)) == 400);

	/* A failing start reports the hook's reason, Firecracker-style, and
	 * leaves the VM startable. */
	calls.fail_start = 1;
	CHECK(req(sock, "PUT", "/actions", "{\"action_type\": \"InstanceStart\"}", out, sizeof(out)) == 400);
	CHECK(strstr(out, "\"fault_message\"") && strstr(out, "/dev/kvm") && calls.starts == 1);
	CHECK(req(sock, "GET", "/", NULL, out, sizeof(out)) == 200 && strstr(out, "Not started"));

	/* Keep-alive: several requests on one connection, two of them
	 * pipelined in one write, one with Expect: 100-continue and a body
	 * over 1 KiB as curl sends it. */
	int fd = connect_to(sock);
	CHECK(fd >= 0);
	CHECK(send_str(fd, "GET / HTTP/1.1\r\n\r\n") == 0 && read_resp(fd, out, sizeof(out)) == 200);
	CHECK(send_str(fd, "GET /machine-config HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n") == 0);
	CHECK(read_resp(fd, out, sizeof(out)) == 200 && strstr(out, "vcpu_count"));
	CHECK(read_resp(fd, out, sizeof(out)) == 200 && strstr(out, "state"));
	char big[2048];
	int n = snprintf(big, sizeof(big), "{\"kernel_image_path\": \"%s\", \"boot_args\": \"", kernel);
	memset(big + n, 'a', 1500);
	strcpy(big + n + 1500, "\"}");
	char head[256];
	snprintf(head, sizeof(head), "PUT /boot-source HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: %zu\r\n\r\n",
		 strlen(big));
	CHECK(send_str(fd, head) == 0);
	CHECK(read_resp(fd, out, sizeof(out)) == 100);
	CHECK(send_str(fd, big) == 0 && read_resp(fd, out, sizeof(out)) == 204);
	CHECK(send_str(fd, "GET /vm/config HTTP/1.1\r\nConnection: close\r\n\r\n") == 0);
	CHECK(read_resp(fd, out, sizeof(out)) == 200 && strstr(out, "aaaaaaaaaa") && strstr(out, "\"boot-source\""));
	CHECK(recv(fd, out, 1, 0) == 0); /* closed as asked */
	close(fd);

	/* Hostile requests get an error and a closed connection. */
	fd = connect_to(sock);
	CHECK(send_str(fd, "PUT /boot-source HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n") == 0);
	CHECK(read_resp(fd, out, sizeof(out)) == 400 && strstr(out, "Transfer-Encoding"));
	CHECK(recv(fd, out, 1, 0) == 0);
	close(fd);
	fd = connect_to(sock);
	CHECK(send_str(fd, "PUT /boot-source HTTP/1.1\r\nContent-Length: 100000\r\n\r\n") == 0);
	CHECK(read_resp(fd, out, sizeof(out)) == 413);
	close(fd);

	/* A stuck client (half a request, then silence) holds the API for at
	 * most KVMM_API_IO_TIMEOUT_MS; the next client is then served. */
	int stuck = connect_to(sock);
	CHECK(send_str(stuck, "PUT /machine-config HTTP/1.1\r\nContent-Le") == 0);
	double t0 = now_seconds();
	CHECK(req(sock, "GET", "/", NULL, out, sizeof(out)) == 200);
	double waited = now_seconds() - t0;
	CHECK(waited < KVMM_API_IO_TIMEOUT_MS / 1000.0 + 3);
	CHECK(recv(stuck, out, 1, 0) == 0); /* dropped */
	close(stuck);
	/* An idle keep-alive client gives way at once to a waiting one. */
	int idle = connect_to(sock);
	CHECK(send_str(idle, "GET / HTTP/1.1\r\n\r\n") == 0 && read_resp(idle, out, sizeof(out)) == 200);
	t0 = now_seconds();
	CHECK(req(sock, "GET", "/", NULL, out, sizeof(out)) == 200);
	CHECK(now_seconds() - t0 < 2);
	close(idle);

	/* Start; then pre-boot resources are refused, actions work. */
	CHECK(req(sock, "PUT", "/actions", "{\"action_type\": \"InstanceStart\"}", out, sizeof(out)) == 204);
	CHECK(calls.starts == 2 && calls.seen_vcpus == 2);
	CHECK(req(sock, "GET", "/", NULL, out, sizeof(out)) == 200 && strstr(out, "\"state\":\"Running\""));
	CHECK(req(sock, "PUT", "/machine-config", "{\"vcpu_count\": 1, \"mem_size_mib\": 128}", out, sizeof(out)) ==
	      400);
	CHECK(strstr(out, "not supported after starting the microVM"));
	CHECK(req(sock, "PUT", "/drives/rootfs",
		  "{\"drive_id\": \"rootfs\", \"path_on_host\": \"/r\", \"is_root_device\": true}", out,
		  sizeof(out)) == 400);
	CHECK(req(sock, "PUT", "/actions", "{\"action_type\": \"InstanceStart\"}", out, sizeof(out)) == 400);
	CHECK(calls.starts == 2);
	CHECK(req(sock, "PUT", "/actions", "{\"action_type\": \"SendCtrlAltDel\"}", out, sizeof(out)) == 204);
	CHECK(calls.ctrl_alt_dels == 1);

	kvmm_api_stop(api);
	CHECK(access(sock, F_OK) < 0);
	kvmm_config_free(&cfg);

	/* A path that is a regular file is not replaced. */
	int ffd = open(sock, O_WRONLY | O_CREAT, 0600);
	close(ffd);
	kvmm_config_init(&cfg);
	CHECK(kvmm_api_start(&api, sock, &cfg, &hooks) == -EEXIST);
	unlink(sock);
	unlink(kernel);
	kvmm_config_free(&cfg);
}

/* The API thread under its own filter after start, in a child so a kill is
 * reported rather than taking the test down. */
static void test_server_seccomp(const char *dir)
{
	pid_t pid = fork();
	if (pid == 0) {
		char sock[256], out[4096];
		snprintf(sock, sizeof(sock), "%s/api-sc.sock", dir);
		struct kvmm_config cfg;
		kvmm_config_init(&cfg);
		struct calls calls = {0};
		struct kvmm_api_hooks hooks = {
			.ctx = &calls, .instance_start = hook_start, .send_ctrl_alt_del = hook_cad, .seccomp = true};
		struct kvmm_api *api;
		if (kvmm_api_start(&api, sock, &cfg, &hooks) < 0)
			_exit(2);
		kvmm_api_set_running(api);
		struct timespec ts = {1, 200 * 1000 * 1000}; /* the thread installs its filter within a second */
		nanosleep(&ts, NULL);
		int ok = req(sock, "GET", "/", NULL, out, sizeof(out)) == 200 && strstr(out, "Running") &&
			 req(sock, "PUT", "/actions", "{\"action_type\": \"SendCtrlAltDel\"}", out, sizeof(out)) == 204 &&
			 req(sock, "PUT", "/vsock", "{\"guest_cid\": 3, \"uds_path\": \"/x\"}", out, sizeof(out)) == 400 &&
			 req(sock, "GET", "/vm/config", NULL, out, sizeof(out)) == 200 && calls.ctrl_alt_dels == 1;
		kvmm_api_stop(api);
		kvmm_config_free(&cfg);
		_exit(ok ? 0 : 3);
	}
	int status = 0;
	CHECK(waitpid(pid, &status, 0) == pid);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fprintf(stderr, "  API child under seccomp: status %#x\n", status);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* ---- seccomp -------------------------------------------------------------------------------- */

enum probe {
	P_WRITE,
	P_EXECVE,
	P_SOCKET_INET,
	P_SOCKET_UNIX,
	P_KVM_RUN,
	P_IOCTL_TCGETS,
	P_MMAP_EXEC,
	P_MMAP_RW,
	P_OPENAT,
	P_EPOLL,
	P_ACCEPT,
	P_OPENAT_NEW, /* create a new file write-only: what a snapshot does */
	P_OPENAT_TRUNC,
};

/* Apply |kind|'s filter in a child, make one call, exit 0.  The status. */
static int probe(enum kvmm_thread_kind kind, enum probe p)
{
	pid_t pid = fork();
	if (pid == 0) {
		if (kvmm_seccomp_apply(kind) < 0)
			syscall(SYS_exit_group, 2);
		char *argv[] = {"/bin/true", NULL};
		switch (p) {
		case P_WRITE:
			if (syscall(SYS_write, 2, "", 0) < 0)
				syscall(SYS_exit_group, 3);
			break;
		case P_EXECVE:
			syscall(SYS_execve, "/bin/true", argv, NULL);
			break;
		case P_SOCKET_INET:
			syscall(SYS_socket, AF_INET, SOCK_STREAM, 0);
			break;
		case P_SOCKET_UNIX:
			if (syscall(SYS_socket, AF_UNIX, SOCK_STREAM, 0) < 0)
				syscall(SYS_exit_group, 3);
			break;
		case P_KVM_RUN:
			/* Allowed, so it fails only for the bad fd. */
			if (syscall(SYS_ioctl, -1, KVM_RUN, 0) != -1 || errno != EBADF)
				syscall(SYS_exit_group, 3);
			break;
		case P_IOCTL_TCGETS:
			syscall(SYS_ioctl, -1, TCGETS, 0);
			break;
		case P_MMAP_EXEC:
			syscall(SYS_mmap, NULL, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			break;
		case P_MMAP_RW:
			if ((long)syscall(SYS_mmap, NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
					  0) == -1)
				syscall(SYS_exit_group, 3);
			break;
		case P_OPENAT:
			syscall(SYS_openat, AT_FDCWD, "/etc/passwd", O_RDONLY);
			break;
		case P_EPOLL:
			if (syscall(SYS_epoll_wait, -1, NULL, 1, 0) != -1 || errno != EBADF)
				syscall(SYS_exit_group, 3);
			break;
		case P_OPENAT_NEW:
			/* Allowed on the API thread, so it fails only for the missing directory. */
			if (syscall(SYS_openat, AT_FDCWD, "/nonexistent-kvmm-dir/x", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
				    0600) != -1 ||
			    errno != ENOENT)
				syscall(SYS_exit_group, 3);
			break;
		case P_OPENAT_TRUNC:
			syscall(SYS_openat, AT_FDCWD, "/nonexistent-kvmm-dir/x", O_WRONLY | O_CREAT | O_TRUNC, 0600);
			break;
		case P_ACCEPT:
			if (syscall(SYS_accept4, -1, NULL, NULL, 0) != -1 || errno != EBADF)
				syscall(SYS_exit_group, 3);
			break;
		}
		syscall(SYS_exit_group, 0);
	}
	int status = 0;
	if (waitpid(pid, &status, 0) != pid)
		return -1;
	return status;
}

static bool lives(enum kvmm_thread_kind k, enum probe p)
{
	int st = probe(k, p);
	if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
		fprintf(stderr, "  kind %d probe %d: expected to live, status %#x\n", (int)k, (int)p, st);
		return false;
	}
	return true;
}

static bool killed(enum kvmm_thread_kind k, enum probe p)
{
	int st = probe(k, p);
	if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGSYS)) {
		fprintf(stderr, "  kind %d probe %d: expected SIGSYS, status %#x\n", (int)k, (int)p, st);
		return false;
	}
	return true;
}

static void test_seccomp(void)
{
	const enum kvmm_thread_kind all[] = {KVMM_THREAD_VMM, KVMM_THREAD_VCPU, KVMM_THREAD_DEVICES, KVMM_THREAD_API};
	for (size_t i = 0; i < 4; i++) {
		CHECK(lives(all[i], P_WRITE));
		CHECK(lives(all[i], P_MMAP_RW));
		CHECK(killed(all[i], P_EXECVE));
		CHECK(killed(all[i], P_SOCKET_INET));
		CHECK(killed(all[i], P_MMAP_EXEC));
		CHECK(killed(all[i], P_OPENAT));
		CHECK(killed(all[i], P_IOCTL_TCGETS));
	}
	CHECK(lives(KVMM_THREAD_VCPU, P_KVM_RUN));
	CHECK(killed(KVMM_THREAD_DEVICES, P_KVM_RUN));
	CHECK(killed(KVMM_THREAD_API, P_KVM_RUN));
	CHECK(lives(KVMM_THREAD_DEVICES, P_SOCKET_UNIX));
	CHECK(lives(KVMM_THREAD_VCPU, P_SOCKET_UNIX));
	CHECK(killed(KVMM_THREAD_API, P_SOCKET_UNIX));
	CHECK(lives(KVMM_THREAD_DEVICES, P_EPOLL));
	CHECK(killed(KVMM_THREAD_API, P_EPOLL));
	CHECK(lives(KVMM_THREAD_API, P_ACCEPT));
	CHECK(lives(KVMM_THREAD_DEVICES, P_ACCEPT));
	CHECK(killed(KVMM_THREAD_VCPU, P_ACCEPT));
	/* Snapshots: the API thread may create new files, and open nothing else. */
	CHECK(lives(KVMM_THREAD_API, P_OPENAT_NEW));
	CHECK(killed(KVMM_THREAD_API, P_OPENAT_TRUNC));
	CHECK(killed(KVMM_THREAD_VCPU, P_OPENAT_NEW));
	CHECK(killed(KVMM_THREAD_DEVICES, P_OPENAT_NEW));
	CHECK(killed(KVMM_THREAD_VMM, P_OPENAT_NEW));
}

/* ---- the jail ---------------------------------------------------------------------------------- */

static void test_jail(const char *dir)
{
	char root[256], inside[300];
	snprintf(root, sizeof(root), "%s/jail", dir);
	snprintf(inside, sizeof(inside), "%s/inside", root);
	CHECK(mkdir(root, 0755) == 0);
	int f = open(inside, O_WRONLY | O_CREAT, 0644);
	close(f);
	char id[32];
	snprintf(id, sizeof(id), "test%d", (int)getpid());
	int sync_pipe[2], done_pipe[2];
	CHECK(pipe(sync_pipe) == 0 && pipe(done_pipe) == 0);

	pid_t pid = fork();
	if (pid == 0) {
		close(sync_pipe[0]);
		close(done_pipe[1]);
		struct kvmm_jail j = {.memory_limit = 256ull << 20,
				      .pids_limit = 64,
				      .id = id,
				      .chroot_dir = root,
				      .user = "65534:65534"};
		bool was_root = getuid() == 0;
		int r = kvmm_jail_enter(&j);
		char verdict = 'f';
		if (!was_root) {
			/* Without root nothing may half-work: the jail must refuse. */
			verdict = r < 0 ? 'u' : 'f';
		} else {
			bool ids = getuid() == 65534 && geteuid() == 65534 && getgid() == 65534;
			bool rooted = access("/inside", F_OK) == 0 && access(dir, F_OK) < 0;
			bool no_root = setuid(0) < 0;
			bool nnp = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1;
			if (r == 0 && ids && rooted && no_root && nnp)
				verdict = 'y';
			else
				fprintf(stderr, "  jail: r %d ids %d rooted %d no_root %d nnp %d\n", r, ids, rooted, no_root,
					nnp);
		}
		if (write(sync_pipe[1], &verdict, 1) != 1)
			_exit(2);
		char c;
		if (read(done_pipe[0], &c, 1) < 0)
			_exit(2);
		_exit(0);
	}
	close(sync_pipe[1]);
	close(done_pipe[0]);
	char verdict = 0;
	CHECK(read(sync_pipe[0], &verdict, 1) == 1);
	if (getuid() != 0) {
		CHECK(verdict == 'u');
	} else {
		CHECK(verdict == 'y');
		/* The child sits in a memory and pids cgroup named after the id
		 * with the limits set (v1 or v2, whichever this host has). */
		char path[64], line[4096], want[64];
		snprintf(path, sizeof(path), "/proc/%d/cgroup", (int)pid);
		snprintf(want, sizeof(want), "/kvmm-%s", id);
		FILE *cg = fopen(path, "r");
		bool in_cg = false;
		char dirs[4][512];
		int ndirs = 0;
		while (cg && fgets(line, sizeof(line), cg)) {
			line[strcspn(line, "\n")] = '\0';
			char *p = strstr(line, want);
			if (!p || p[strlen(want)] != '\0')
				continue;
			in_cg = true;
			char *c2 = strchr(strchr(line, ':') + 1, ':');
			*c2 = '\0';
			const char *ctrl = strchr(line, ':') + 1;
			if (ndirs < 4)
				snprintf(dirs[ndirs++], sizeof(dirs[0]), "/sys/fs/cgroup/%s%s", *ctrl ? ctrl : "unified",
					 c2 + 1);
		}
		if (cg)
			fclose(cg);
		CHECK(in_cg);
		bool limit_seen = false;
		for (int i = 0; i < ndirs; i++) {
			char lp[sizeof(dirs[0]) + 32], v[64] = "";
			if ((size_t)snprintf(lp, sizeof(lp), "%s/memory.limit_in_bytes", dirs[i]) >= sizeof(lp))
				continue;
			FILE *lf = fopen(lp, "r");
			if (!lf && (size_t)snprintf(lp, sizeof(lp), "%s/memory.max", dirs[i]) < sizeof(lp))
				lf = fopen(lp, "r");
			if (lf) {
				limit_seen |= fgets(v, sizeof(v), lf) && strtoull(v, NULL, 10) == (256ull << 20);
				fclose(lf);
			}
		}
		CHECK(limit_seen);
		char c = 'x';
		CHECK(write(done_pipe[1], &c, 1) == 1);
		int st;
		waitpid(pid, &st, 0);
		/* The cgroup outlives kvmm by design; the starter removes it. */
		for (int i = 0; i < ndirs; i++)
			for (int k = 0; k < 100 && rmdir(dirs[i]) < 0 && errno == EBUSY; k++)
				usleep(10000);
	}
	close(sync_pipe[0]);
	close(done_pipe[1]);
	if (getuid() != 0) {
		int st;
		waitpid(pid, &st, 0);
	}
	unlink(inside);
	rmdir(root);

	/* Refusals that need no privileges. */
	struct kvmm_jail bad_id = {.memory_limit = 1 << 20, .id = "a/b"};
	CHECK(kvmm_jail_enter(&bad_id) == -EINVAL);
	struct kvmm_jail bad_user = {.user = "no-such-user-here"};
	CHECK(kvmm_jail_enter(&bad_user) == -ENOENT);
}

int main(void)
{
	char dir[] = "/tmp/kvmm-api-test.XXXXXX";
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	test_http_parser();
	test_server(dir);
	test_server_seccomp(dir);
	test_seccomp();
	test_jail(dir);
	rmdir(dir);
	return check_report();
}
