/* The micro-VM sandbox's host side without KVM: the config file it writes
 * for kvmm; how it fails on a host without /dev/kvm (--isolation microvm)
 * and what auto picks there; locating kvmm, kernel and initramfs; and the
 * whole run against a stand-in for kvmm (a script that reads the config
 * file, connects to "{uds_path}_1024" as the guest init does, checks the
 * invocation and answers with output and an exit status), including a
 * timeout, a kvmm that dies at once, and a guest that talks nonsense; and the
 * long-lived parts: the Runtime API endpoint (the 'P' frame, the variable,
 * the "{uds_path}_1025" socket handed to on_ready, which the stand-in
 * connects to as kvmm does for the guest init's streams, with a half-close),
 * on_ready refusing, and stop_fd before and after the guest connects; and a
 * snapshot taken from another thread while the guest runs (pause, create,
 * resume, in that order, on the API socket the stand-in serves); and a
 * restore against a stand-in that serves kvmm's /snapshot/load and the
 * restored init's reconnection.
 * Every run must leave its temporary directory behind it removed. */
/* (Threads: a snapshot is taken from another thread; TSan runs it.) */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "tests/check.h"
#include "sandbox/internal.h"

static char dir[64], tmpdir[128];

/* Python shared by the stand-ins: api_requests() listens on --api-sock
 * and yields (connection, "METHOD PATH", body) per HTTP request, skipping
 * the host's probes (a connect and close: is anybody listening?). */
#define PY_API_REQUESTS                                                                                  \
	"def api_requests():\n"                                                                          \
	"    l = socket.socket(socket.AF_UNIX)\n"                                                         \
	"    l.bind(sys.argv[sys.argv.index('--api-sock') + 1])\n"                                        \
	"    l.listen(8)\n"                                                                               \
	"    while True:\n"                                                                               \
	"        c, _ = l.accept()\n"                                                                     \
	"        req = b''\n"                                                                             \
	"        while b'\\r\\n\\r\\n' not in req:\n"                                                     \
	"            k = c.recv(4096)\n"                                                                  \
	"            if not k:\n"                                                                         \
	"                break\n"                                                                         \
	"            req += k\n"                                                                          \
	"        head, _, body = req.partition(b'\\r\\n\\r\\n')\n"                                        \
	"        if not head:\n"                                                                          \
	"            c.close()\n"                                                                         \
	"            continue\n"                                                                          \
	"        n = [int(h.split(b':')[1]) for h in head.split(b'\\r\\n') if h.lower().startswith(b'content-length')]\n" \
	"        while n and len(body) < n[0]:\n"                                                         \
	"            body += c.recv(4096)\n"                                                              \
	"        yield c, ' '.join(head.split(b'\\r\\n')[0].decode().split(' ')[:2]), body\n"

static const char fake_kvmm[] =
	"#!/usr/bin/env python3\n"
	"# Stands in for kvmm and the guest init: the host side cannot tell.\n"
	"import json, socket, struct, sys, time\n"
	"cfg = json.load(open(sys.argv[sys.argv.index('--config-file') + 1]))\n"
	"assert '--api-sock' in sys.argv\n"
	"import threading\n"
	"calls = []\n"
	PY_API_REQUESTS
	"def serve_api():\n"
	"    for c, line, body in api_requests():\n"
	"        calls.append('api:' + line + ' ' + body.decode())\n"
	"        c.sendall(b'HTTP/1.1 204 No Content\\r\\n\\r\\n')\n"
	"        c.close()\n"
	"threading.Thread(target=serve_api, daemon=True).start()\n"
	"assert cfg['drives'][0]['is_read_only'] and cfg['drives'][0]['is_root_device']\n"
	"s = socket.socket(socket.AF_UNIX)\n"
	"s.connect(cfg['vsock']['uds_path'] + '_1024')\n"
	"def frame(t, b):\n"
	"    s.sendall(t.encode() + struct.pack('<I', len(b)) + b)\n"
	"def rd(n):\n"
	"    b = b''\n"
	"    while len(b) < n:\n"
	"        c = s.recv(n - len(b))\n"
	"        if not c:\n"
	"            sys.exit(3)\n"
	"        b += c\n"
	"    return b\n"
	"inv = []\n"
	"while True:\n"
	"    t = rd(1).decode()\n"
	"    p = rd(struct.unpack('<I', rd(4))[0])\n"
	"    if t == 'G':\n"
	"        break\n"
	"    if t == 'P':\n"
	"        inv.append('P:%d:%d' % struct.unpack('<HI', p))\n"
	"    else:\n"
	"        inv.append(t + ':' + p.decode())\n"
	"argv = [x[2:] for x in inv if x[0] == 'A']\n"
	"if argv[0] == 'api':\n"
	"    # What kvmm does with a stream the guest init opens to the 'P' vsock port.\n"
	"    port = [x for x in inv if x[0] == 'P'][0].split(':')[2]\n"
	"    a = socket.socket(socket.AF_UNIX)\n"
	"    a.connect(cfg['vsock']['uds_path'] + '_' + port)\n"
	"    a.sendall(b'GET /next HTTP/1.1\\r\\n\\r\\n')\n"
	"    a.shutdown(socket.SHUT_WR)\n"
	"    reply = b''\n"
	"    while True:\n"
	"        c = a.recv(4096)\n"
	"        if not c:\n"
	"            break\n"
	"        reply += c\n"
	"    inv.append('reply:' + reply.decode())\n"
	"if argv[0] == 'snap':\n"
	"    # Waits for the host's pause, snapshot and resume through the API.\n"
	"    for i in range(200):\n"
	"        if len(calls) >= 3:\n"
	"            break\n"
	"        time.sleep(0.05)\n"
	"    inv.extend(calls)\n"
	"if argv[0] == 'sleep':\n"
	"    time.sleep(30)\n"
	"if argv[0] == 'garbage':\n"
	"    s.sendall(b'Z\\0\\0\\0\\0')\n"
	"    time.sleep(30)\n"
	"if argv[0] == 'fail':\n"
	"    frame('F', b'exec /nope: No such file or directory')\n"
	"    sys.exit(0)\n"
	"frame('O', ('\\n'.join(inv) + '\\n').encode())\n"
	"frame('R', b'oops\\n')\n"
	"frame('X', struct.pack('<ii', 7, 0))\n";

/* Stands in for kvmm restoring a snapshot and for the restored guest init:
 * serves PUT /snapshot/load on --api-sock (a vmstate named "bad.vmstate" is
 * a 400, as kvmm refuses another format version; "hang.vmstate" is never
 * answered, as when the load touches guest memory that nobody serves), then
 * reconnects to "{vsock_override}_1024", wants 'S' first and reports what
 * it got. */
static const char restore_kvmm[] =
	"#!/usr/bin/env python3\n"
	"import json, socket, struct, sys\n"
	"assert '--config-file' not in sys.argv and '--no-api' not in sys.argv\n"
	PY_API_REQUESTS
	"for c, line, body in api_requests():\n"
	"    assert line == 'PUT /snapshot/load'\n"
	"    j = json.loads(body)\n"
	"    if j['snapshot_path'].endswith('hang.vmstate'):\n"
	"        import time\n"
	"        time.sleep(3600)\n"
	"    if j['snapshot_path'].endswith('bad.vmstate'):\n"
	"        m = b'{\"fault_message\": \"Load snapshot error: snapshot_path bad.vmstate: format version 9\"}'\n"
	"        c.sendall(b'HTTP/1.1 400 Bad Request\\r\\nContent-Length: %d\\r\\n\\r\\n' % len(m) + m)\n"
	"        c.close()\n"
	"        continue\n"
	"    c.sendall(b'HTTP/1.1 204 No Content\\r\\n\\r\\n')\n"
	"    c.close()\n"
	"    break\n"
	"s = socket.socket(socket.AF_UNIX)\n"
	"s.connect(j['vsock_override']['uds_path'] + '_1024')\n"
	"def rd(n):\n"
	"    b = b''\n"
	"    while len(b) < n:\n"
	"        k = s.recv(n - len(b))\n"
	"        if not k:\n"
	"            sys.exit(3)\n"
	"        b += k\n"
	"    return b\n"
	"t = rd(1)\n"
	"p = rd(struct.unpack('<I', rd(4))[0])\n"
	"gen = struct.unpack('<Q', p[:8])[0]\n"
	"be = j['mem_backend']\n"
	"d = j['drive_overrides'][0]\n"
	"msg = 'type=%s gen=%d seed=%s mem=%s:%s drive=%s:%s resume=%s\\n' % (t.decode(), gen, p[8:].hex(), "
	"be['backend_type'], be['backend_path'], d['drive_id'], d['path_on_host'], j['resume_vm'])\n"
	"s.sendall(b'O' + struct.pack('<I', len(msg)) + msg.encode())\n"
	"s.sendall(b'R' + struct.pack('<I', 5) + b'oops\\n')\n"
	"s.sendall(b'X' + struct.pack('<Iii', 8, 0, 0))\n";

static const char dead_kvmm[] = "#!/bin/sh\necho 'kvmm: error: cannot open /dev/kvm' >&2\nexit 1\n";

static void write_exec(const char *path, const char *text)
{
	CHECK(write_file_atomic(path, text, strlen(text), 0755) == 0);
}

static bool dir_empty(const char *d)
{
	DIR *dh = opendir(d);
	if (!dh)
		return false;
	struct dirent *e;
	int n = 0;
	while ((e = readdir(dh)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			n++;
	closedir(dh);
	return n == 0;
}

static void test_config(const struct microvm_paths *p)
{
	char path[160];
	snprintf(path, sizeof(path), "%s/config.json", dir);
	struct sandbox_spec s = { .image_path = "/images/app.erofs" };
	CHECK(microvm_write_config(&s, p, "/run/vm/v.sock", path) == 0);
	json_error_t je;
	json_t *j = json_load_file(path, 0, &je);
	CHECK(j != NULL);
	const char *kernel = NULL, *initrd = NULL, *drive = NULL, *uds = NULL;
	int ro = 0, rootdev = 0, cid = 0, vcpus = 0;
	json_int_t mib = 0;
	CHECK(json_unpack(j, "{s:{s:s, s:s, !}, s:[{s:s, s:s, s:b, s:b, !}], s:{s:i, s:I, !}, s:{s:i, s:s, !}, !}",
			  "boot-source", "kernel_image_path", &kernel, "initrd_path", &initrd, "drives", "drive_id",
			  &drive, "path_on_host", &drive, "is_root_device", &rootdev, "is_read_only", &ro,
			  "machine-config", "vcpu_count", &vcpus, "mem_size_mib", &mib, "vsock", "guest_cid", &cid,
			  "uds_path", &uds) == 0);
	CHECK(kernel && strcmp(kernel, p->kernel) == 0 && initrd && strcmp(initrd, p->initrd) == 0);
	CHECK(drive && strcmp(drive, "/images/app.erofs") == 0 && ro && rootdev);
	CHECK(vcpus == 1 && mib == 256 && cid == 3 && uds && strcmp(uds, "/run/vm/v.sock") == 0);
	json_decref(j);

	/* The memory limit, rounded up to MiB, with a floor. */
	s.memory_limit = (100u << 20) + 1;
	CHECK(microvm_write_config(&s, p, "/run/vm/v.sock", path) == 0);
	j = json_load_file(path, 0, &je);
	CHECK(j && json_integer_value(json_object_get(json_object_get(j, "machine-config"), "mem_size_mib")) == 101);
	json_decref(j);
	s.memory_limit = 1u << 20;
	CHECK(microvm_write_config(&s, p, "/run/vm/v.sock", path) == 0);
	j = json_load_file(path, 0, &je);
	CHECK(j && json_integer_value(json_object_get(json_object_get(j, "machine-config"), "mem_size_mib")) == 64);
	json_decref(j);
	/* A directory is not something a VM can boot. */
	struct sandbox_spec d = { .rootfs_dir = "/srv/rootfs" };
	CHECK(microvm_write_config(&d, p, "/run/vm/v.sock", path) == -EINVAL);
	unlink(path);
}

static void test_paths(void)
{
	char k[160], i[160], kv[160], why[512];
	snprintf(k, sizeof(k), "%s/vmlinuz", dir);
	snprintf(i, sizeof(i), "%s/initrd", dir);
	snprintf(kv, sizeof(kv), "%s/kvmm", dir);
	write_exec(k, "kernel");
	write_exec(i, "initrd");
	write_exec(kv, dead_kvmm);
	setenv("KINDLING_KVMM", kv, 1);
	setenv("KINDLING_GUEST_KERNEL", k, 1);
	setenv("KINDLING_GUEST_INITRD", i, 1);
	struct microvm_paths p;
	CHECK(microvm_find_paths(&p, why, sizeof(why)) == 0);
	CHECK(strcmp(p.kvmm, kv) == 0 && strcmp(p.kernel, k) == 0 && strcmp(p.initrd, i) == 0);
	CHECK(p.boot_timeout_s == 60);
	setenv("KINDLING_GUEST_BOOT_TIMEOUT", "300", 1);
	CHECK(microvm_find_paths(&p, why, sizeof(why)) == 0 && p.boot_timeout_s == 300);
	static const char *const bad_bounds[] = { "0", "-5", "12s", "3601", "99999999999999999999" };
	for (size_t b = 0; b < sizeof(bad_bounds) / sizeof(bad_bounds[0]); b++) {
		setenv("KINDLING_GUEST_BOOT_TIMEOUT", bad_bounds[b], 1);
		CHECK(microvm_find_paths(&p, why, sizeof(why)) == -EINVAL);
		CHECK(strstr(why, "KINDLING_GUEST_BOOT_TIMEOUT") && strstr(why, bad_bounds[b]));
	}
	unsetenv("KINDLING_GUEST_BOOT_TIMEOUT");
	setenv("KINDLING_GUEST_KERNEL", "/nonexistent/vmlinuz", 1);
	CHECK(microvm_find_paths(&p, why, sizeof(why)) == -ENOENT);
	CHECK(strstr(why, "KINDLING_GUEST_KERNEL") && strstr(why, "/nonexistent/vmlinuz"));
	/* The default is next to the running executable (the build directory
	 * has a kvmm when vmm/kvmm/main.c exists; the kernel is not there). */
	unsetenv("KINDLING_KVMM");
	unsetenv("KINDLING_GUEST_KERNEL");
	CHECK(microvm_find_paths(&p, why, sizeof(why)) < 0);
	CHECK(strstr(why, "KINDLING_") != NULL);
	unlink(k);
	unlink(i);
	unlink(kv);
	unsetenv("KINDLING_GUEST_INITRD");
}

static void test_pick(void)
{
	char notice[512], why[512];
	struct stat kvm_st;
	if (stat("/dev/kvm", &kvm_st) == 0 && S_ISCHR(kvm_st.st_mode)) {
		/* Not this test's host: the checks below are for hosts without KVM
		 * (a regular file named /dev/kvm is not KVM, and they hold there). */
		fprintf(stderr, "this host has /dev/kvm; the no-KVM checks do not apply\n");
		return;
	}
	CHECK(!sandbox_microvm.available(why, sizeof(why)));
	CHECK(strstr(why, "/dev/kvm") != NULL);
	errno = 0;
	CHECK(sandbox_pick("microvm", notice, sizeof(notice)) == NULL && errno == ENOTSUP);
	CHECK(strstr(notice, "/dev/kvm") != NULL);
	const struct sandbox_ops *ops = sandbox_pick("auto", notice, sizeof(notice));
	CHECK(ops == &sandbox_process);
	CHECK(strstr(notice, "process sandbox") && strstr(notice, "/dev/kvm") && !strchr(notice, '\n'));
	CHECK(sandbox_pick(NULL, notice, sizeof(notice)) == &sandbox_process);
	CHECK(sandbox_pick("process", notice, sizeof(notice)) == &sandbox_process && notice[0] == '\0');
	errno = 0;
	CHECK(sandbox_pick("vm", notice, sizeof(notice)) == NULL && errno == ENOENT);
	/* run() itself refuses too, with the reason logged. */
	struct sandbox_spec s = { .image_path = "/x", .out_fd = 1, .err_fd = 2 };
	struct sandbox_result res;
	CHECK(sandbox_run(&sandbox_microvm, &s, &res) == -ENOTSUP);
}

/* A run against the stand-in; the workload's stdout lands in a file. */
/* A run against the stand-in; the workload's stdout lands in |outbuf|.  The
 * long-lived fields (runtime_api_port, on_ready, ready_arg, stop_fd) come
 * from |ll| when it is not NULL. */
static int run_ll(const struct microvm_paths *p, char *const *argv, double timeout, const struct sandbox_spec *ll,
		  struct sandbox_result *res, char *outbuf, size_t outlen)
{
	char outp[160], errp[160];
	snprintf(outp, sizeof(outp), "%s/out", dir);
	snprintf(errp, sizeof(errp), "%s/err", dir);
	int o = open(outp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	int e = open(errp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	static char *env[] = { "LANG=C", "TZ=UTC", NULL };
	static char *over[] = { "TZ=Europe/Paris", "EXTRA=1", NULL };
	static char *ep[] = { "/bin/entry", NULL };
	static char *cmd[] = { "default-arg", NULL };
	struct run_config cfg = { .entrypoint = ep, .cmd = cmd, .env = env, .working_dir = "/srv", .user = "app" };
	struct sandbox_spec s = { .image_path = "/images/app.erofs",
				  .config = &cfg,
				  .argv_override = argv,
				  .env_override = over,
				  .out_fd = o,
				  .err_fd = e,
				  .t0 = now_seconds(),
				  .timeout_s = timeout };
	if (ll) {
		s.runtime_api_port = ll->runtime_api_port;
		s.on_ready = ll->on_ready;
		s.ready_arg = ll->ready_arg;
		s.stop_fd = ll->stop_fd;
	}
	memset(res, 0, sizeof(*res));
	res->exit_code = -1;
	res->first_output_s = -1;
	int r = microvm_run_with(&s, p, res);
	ssize_t n = pread(o, outbuf, outlen - 1, 0);
	outbuf[n > 0 ? n : 0] = '\0';
	char eb[64] = "";
	n = pread(e, eb, sizeof(eb) - 1, 0);
	CHECK(r < 0 || res->timed_out || res->stopped || (n == 5 && memcmp(eb, "oops\n", 5) == 0));
	close(o);
	close(e);
	unlink(outp);
	unlink(errp);
	return r;
}

static int run(const struct microvm_paths *p, char *const *argv, double timeout, struct sandbox_result *res,
	       char *outbuf, size_t outlen)
{
	return run_ll(p, argv, timeout, NULL, res, outbuf, outlen);
}

/* What on_ready saw and did. */
struct ready_probe {
	int calls;
	struct sandbox_ready seen;
	pid_t server;	 /* the process serving the endpoint, or -1 */
	int refuse;	 /* returned from on_ready */
	int stop_w;	 /* written from on_ready when >= 0: a stop while the workload runs */
};

/* The endpoint's host side: one connection, read until the client's
 * half-close, answer "reply:" and what it sent, close. */
static void serve_one(int lfd)
{
	int c = accept(lfd, NULL, NULL);
	if (c < 0)
		_exit(1);
	char req[512];
	size_t have = 0;
	ssize_t n;
	while (have < sizeof(req) && (n = read(c, req + have, sizeof(req) - have)) > 0)
		have += (size_t)n;
	if (write_full(c, "reply:", 6) < 0 || write_full(c, req, have) < 0)
		_exit(1);
	_exit(0);
}

static int probe_ready(void *arg, const struct sandbox_ready *rd)
{
	struct ready_probe *pr = arg;
	pr->calls++;
	pr->seen = *rd;
	if (rd->runtime_api_fd >= 0 && !pr->refuse) {
		pr->server = fork();
		if (pr->server == 0)
			serve_one(rd->runtime_api_fd);
	}
	if (rd->runtime_api_fd >= 0)
		close(rd->runtime_api_fd); /* the callee owns it, whatever it returns */
	if (pr->stop_w >= 0)
		CHECK(write(pr->stop_w, "s", 1) == 1);
	return pr->refuse;
}

/* A snapshot taken from another thread while the sandbox serves the guest. */
struct snap_probe {
	pthread_t t;
	struct sandbox_vm *vm;
	int result, relative;
};

static void *snap_main(void *arg)
{
	struct snap_probe *sp = arg;
	sp->relative = sandbox_vm_snapshot(sp->vm, "vm.vmstate", "/snap/vm.mem");
	sp->result = sandbox_vm_snapshot(sp->vm, "/snap/vm.vmstate", "/snap/vm.mem");
	return NULL;
}

static int snap_ready(void *arg, const struct sandbox_ready *rd)
{
	struct snap_probe *sp = arg;
	sp->vm = rd->vm;
	CHECK(rd->vm != NULL);
	CHECK(pthread_create(&sp->t, NULL, snap_main, sp) == 0);
	return 0;
}

static void test_snapshot(const struct microvm_paths *p)
{
	struct sandbox_result res;
	char out[4096];
	struct snap_probe sp = { .result = 1 };
	struct sandbox_spec ll = { .on_ready = snap_ready, .ready_arg = &sp };
	char *snap[] = { "snap", NULL };
	CHECK(run_ll(p, snap, 20, &ll, &res, out, sizeof(out)) == 0);
	CHECK(pthread_join(sp.t, NULL) == 0);
	CHECK(sp.relative == -EINVAL && sp.result == 0);
	const char *pause = strstr(out, "api:PATCH /vm {\"state\": \"Paused\"}\n");
	const char *create = strstr(out, "api:PUT /snapshot/create {\"snapshot_type\":\"Full\",\"snapshot_path\":"
					 "\"/snap/vm.vmstate\",\"mem_file_path\":\"/snap/vm.mem\"}\n");
	const char *resume = strstr(out, "api:PATCH /vm {\"state\": \"Resumed\"}\n");
	CHECK(pause && create && resume && pause < create && create < resume);
	CHECK(dir_empty(tmpdir));
	/* The handle is gone with the sandbox; the process sandbox has none. */
	CHECK(sandbox_vm_snapshot(NULL, "/v", "/m") == -ENOTSUP);
}

static void test_long_lived(const struct microvm_paths *p)
{
	struct sandbox_result res;
	char out[4096];

	/* The endpoint: the variable and the 'P' frame go to the guest, the
	 * socket kvmm connects its streams to goes to on_ready, bytes pass both
	 * ways and the client's half-close reaches the server. */
	struct ready_probe pr = { .server = -1, .stop_w = -1 };
	struct sandbox_spec ll = { .runtime_api_port = 9001, .on_ready = probe_ready, .ready_arg = &pr };
	char *api[] = { "api", NULL };
	CHECK(run_ll(p, api, 20, &ll, &res, out, sizeof(out)) == 0);
	CHECK(pr.calls == 1 && pr.seen.runtime_api_fd >= 0 && pr.seen.pid > 0 && pr.seen.memory_peak_path[0] == '\0');
	CHECK(strstr(out, "E:AWS_LAMBDA_RUNTIME_API=127.0.0.1:9001\n") != NULL);
	CHECK(strstr(out, "P:9001:1025\n") != NULL);
	CHECK(strstr(out, "reply:GET /next HTTP/1.1\r\n\r\n") != NULL);
	CHECK(res.exit_code == 7 && !res.stopped && res.memory_peak == 0);
	int st = -1;
	CHECK(pr.server > 0 && waitpid(pr.server, &st, 0) == pr.server && WIFEXITED(st) && WEXITSTATUS(st) == 0);
	CHECK(dir_empty(tmpdir));

	/* Without a port, on_ready still comes, with no socket; the guest gets
	 * no 'P' and no variable. */
	pr = (struct ready_probe){ .server = -1, .stop_w = -1 };
	ll.runtime_api_port = 0;
	CHECK(run_ll(p, NULL, 20, &ll, &res, out, sizeof(out)) == 0);
	CHECK(pr.calls == 1 && pr.seen.runtime_api_fd == -1 && !strstr(out, "P:") && !strstr(out, "AWS_LAMBDA"));
	CHECK(dir_empty(tmpdir));

	/* A port without on_ready has nobody to hand the endpoint to. */
	struct sandbox_spec bad = { .image_path = "/x", .out_fd = 1, .err_fd = 2, .runtime_api_port = 9001 };
	CHECK(sandbox_run(&sandbox_microvm, &bad, &res) == -EINVAL);

	/* on_ready refuses: the workload never starts, its value comes back. */
	pr = (struct ready_probe){ .server = -1, .stop_w = -1, .refuse = -ECANCELED };
	ll.runtime_api_port = 9001;
	CHECK(run_ll(p, api, 20, &ll, &res, out, sizeof(out)) == -ECANCELED);
	CHECK(pr.calls == 1 && pr.seen.runtime_api_fd >= 0 && out[0] == '\0');
	CHECK(dir_empty(tmpdir));

	/* stop_fd while the workload runs: a result, like a timeout. */
	int sp[2];
	CHECK(pipe(sp) == 0);
	pr = (struct ready_probe){ .server = -1, .stop_w = sp[1] };
	ll = (struct sandbox_spec){ .on_ready = probe_ready, .ready_arg = &pr, .stop_fd = sp[0] };
	char *sleeper[] = { "sleep", NULL };
	CHECK(run_ll(p, sleeper, 0, &ll, &res, out, sizeof(out)) == 0);
	CHECK(res.stopped && !res.timed_out && res.term_signal == SIGKILL && res.exit_code == -1);
	CHECK(dir_empty(tmpdir));

	/* ... and before the guest even connected: on_ready never comes. */
	pr = (struct ready_probe){ .server = -1, .stop_w = -1 };
	CHECK(run_ll(p, sleeper, 0, &ll, &res, out, sizeof(out)) == 0);
	CHECK(res.stopped && pr.calls == 0);
	CHECK(dir_empty(tmpdir));
	close(sp[0]);
	close(sp[1]);
}

/* A restore: the load request names the snapshot, the memory backend and
 * this run's paths; the init's reconnection gets 'S' first, generation 1
 * and a seed that differs between two restores; a refused load is an
 * error that leaves nothing behind; the process sandbox refuses. */
static void test_restore(const struct microvm_paths *p)
{
	write_exec(p->kvmm, restore_kvmm);
	char outp[160], errp[160], out[1024], seeds[2][80];
	snprintf(outp, sizeof(outp), "%s/out", dir);
	snprintf(errp, sizeof(errp), "%s/err", dir);
	for (int i = 0; i < 3; i++) {
		int o = open(outp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		int e = open(errp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		struct sandbox_restore rs = { .vmstate_path = i == 2 ? "/snap/bad.vmstate" : "/snap/vm.vmstate",
					      .mem_uffd_socket = i == 0 ? "/run/uffd.sock" : NULL,
					      .mem_file = i == 0 ? NULL : "/snap/vm.mem" };
		struct sandbox_spec s = { .image_path = "/images/app.erofs", .out_fd = o, .err_fd = e,
					  .t0 = now_seconds(), .timeout_s = 20, .restore = &rs };
		struct sandbox_result res;
		memset(&res, 0, sizeof(res));
		res.restored_s = -1;
		int r = microvm_run_with(&s, p, &res);
		ssize_t n = pread(o, out, sizeof(out) - 1, 0);
		out[n > 0 ? n : 0] = '\0';
		close(o);
		close(e);
		if (i == 2) {
			CHECK(r == -EIO && out[0] == '\0');
		} else {
			CHECK(r == 0 && res.exit_code == 0 && res.restored_s >= 0);
			CHECK(strncmp(out, "type=S gen=1 seed=", 18) == 0);
			CHECK(strstr(out, i == 0 ? "mem=Uffd:/run/uffd.sock " : "mem=File:/snap/vm.mem ") != NULL);
			CHECK(strstr(out, " drive=rootfs:/images/app.erofs resume=True\n") != NULL);
			snprintf(seeds[i], sizeof(seeds[i]), "%.64s", out + 18);
		}
		CHECK(dir_empty(tmpdir));
	}
	CHECK(strlen(seeds[0]) == 64 && strcmp(seeds[0], seeds[1]) != 0);

	/* A load that never ends (its memory server gave up): a stop ends it,
	 * and so does the run's deadline, each a result like a stop or a
	 * timeout of a running VM, with kvmm killed and nothing left. */
	for (int i = 0; i < 2; i++) {
		int stop[2];
		CHECK(pipe2(stop, O_CLOEXEC) == 0);
		if (i == 0)
			CHECK(write(stop[1], "x", 1) == 1);
		int o = open(outp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		struct sandbox_restore rs = { .vmstate_path = "/snap/hang.vmstate", .mem_uffd_socket = "/run/uffd.sock" };
		struct sandbox_spec s = { .image_path = "/images/app.erofs", .out_fd = o, .err_fd = 2,
					  .t0 = now_seconds(), .timeout_s = i == 0 ? 600 : 1, .restore = &rs,
					  .stop_fd = stop[0] };
		struct sandbox_result res;
		memset(&res, 0, sizeof(res));
		res.restored_s = -1;
		CHECK(microvm_run_with(&s, p, &res) == 0);
		CHECK(i == 0 ? res.stopped && !res.timed_out : res.timed_out && !res.stopped);
		CHECK(res.term_signal == SIGKILL && res.restored_s < 0);
		CHECK(lseek(o, 0, SEEK_END) == 0);
		close(o);
		close(stop[0]);
		close(stop[1]);
		CHECK(dir_empty(tmpdir));
	}
	unlink(outp);
	unlink(errp);

	struct sandbox_restore rs = { .vmstate_path = "/v", .mem_file = "/m" };
	struct sandbox_spec s = { .image_path = "/x", .out_fd = 1, .err_fd = 2, .restore = &rs };
	struct sandbox_result res;
	CHECK(sandbox_run(&sandbox_process, &s, &res) == -ENOTSUP);
	rs.mem_uffd_socket = "/u"; /* two memory backends */
	CHECK(sandbox_run(&sandbox_microvm, &s, &res) == -EINVAL);
	CHECK(sandbox_vm_snapshot(NULL, "/v", "/m") == -ENOTSUP);
	write_exec(p->kvmm, fake_kvmm);
}

static void test_run(void)
{
	struct microvm_paths p = { .boot_timeout_s = 60 };
	snprintf(p.kvmm, sizeof(p.kvmm), "%s/fake-kvmm", dir);
	snprintf(p.kernel, sizeof(p.kernel), "%s/vmlinuz", dir);
	snprintf(p.initrd, sizeof(p.initrd), "%s/initrd", dir);
	write_exec(p.kvmm, fake_kvmm);
	setenv("TMPDIR", tmpdir, 1);
	test_config(&p);

	/* The image's entrypoint and cmd, its env under the overrides, its
	 * working dir and user; output and exit status back. */
	struct sandbox_result res;
	char out[4096];
	CHECK(run(&p, NULL, 0, &res, out, sizeof(out)) == 0);
	CHECK(strcmp(out, "A:/bin/entry\nA:default-arg\nE:LANG=C\nE:TZ=Europe/Paris\nE:EXTRA=1\nW:/srv\nU:app\n") ==
	      0);
	CHECK(res.exit_code == 7 && res.term_signal == 0 && !res.timed_out);
	CHECK(res.first_output_s >= 0 && res.exit_s >= res.first_output_s);
	CHECK(res.out_bytes == strlen(out) && res.err_bytes == 5);
	CHECK(dir_empty(tmpdir));

	/* An override replaces entrypoint and cmd. */
	char *argv[] = { "/bin/echo", "hi there", NULL };
	CHECK(run(&p, argv, 0, &res, out, sizeof(out)) == 0);
	CHECK(strncmp(out, "A:/bin/echo\nA:hi there\nE:", 25) == 0);
	CHECK(dir_empty(tmpdir));

	/* The timeout kills the VM; that is a result, not an error. */
	char *sleeper[] = { "sleep", NULL };
	double t = now_seconds();
	CHECK(run(&p, sleeper, 2.0, &res, out, sizeof(out)) == 0);
	CHECK(res.timed_out && res.term_signal == SIGKILL && now_seconds() - t < 10);
	CHECK(dir_empty(tmpdir));

	/* Nonsense from the guest, and the init's failure report. */
	char *garbage[] = { "garbage", NULL };
	CHECK(run(&p, garbage, 20, &res, out, sizeof(out)) == -EPROTO);
	CHECK(dir_empty(tmpdir));
	char *fail[] = { "fail", NULL };
	CHECK(run(&p, fail, 20, &res, out, sizeof(out)) == -EIO);
	CHECK(dir_empty(tmpdir));

	test_long_lived(&p);
	test_snapshot(&p);
	test_restore(&p);

	/* kvmm that dies before the guest connects. */
	write_exec(p.kvmm, dead_kvmm);
	t = now_seconds();
	CHECK(run(&p, NULL, 20, &res, out, sizeof(out)) == -EIO);
	CHECK(now_seconds() - t < 5);
	CHECK(dir_empty(tmpdir));

	/* A kvmm that cannot be started. */
	snprintf(p.kvmm, sizeof(p.kvmm), "%s/no-such-kvmm", dir);
	CHECK(run(&p, NULL, 20, &res, out, sizeof(out)) < 0);
	CHECK(dir_empty(tmpdir));
	snprintf(p.kvmm, sizeof(p.kvmm), "%s/fake-kvmm", dir);
	unlink(p.kvmm);
	unsetenv("TMPDIR");
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	snprintf(dir, sizeof(dir), "/tmp/kindling-test-microvm.XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	snprintf(tmpdir, sizeof(tmpdir), "%s/tmp", dir);
	if (mkdir(tmpdir, 0700) < 0)
		return 1;
	test_paths();
	test_pick();
	test_run();
	rmdir(tmpdir);
	CHECK(rmdir(dir) == 0);
	return check_report();
}
