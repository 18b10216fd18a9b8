/* kvmm's Firecracker-compatible API: HTTP/1.1 on a unix socket, one thread,
 * one connection at a time (as Firecracker serves it).
 *
 * The bytes come from whoever can open the socket, so they go through the
 * checked parser (http.c) and the config checker (config.c) and nothing else.
 * A client cannot hold the API hostage: a started request must finish within
 * KVMM_API_IO_TIMEOUT_MS, and an idle keep-alive connection gives way as soon
 * as another client is waiting. */
#define LOG_COMPONENT "kvmm"
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common/common.h"
#include "vmm/kvmm/api.h"
#include "vmm/kvmm/config.h"
#include "vmm/kvmm/http.h"
#include "vmm/kvmm/jail.h"

#define KVMM_INSTANCE_ID "anonymous-instance" /* Firecracker's default --id */
#define API_BUF (KVMM_HTTP_MAX_HEAD + KVMM_HTTP_MAX_BODY)

/* Firecracker's own words for these, so clients that match on them work. */
#define MSG_AFTER_START "The requested operation is not supported after starting the microVM."
#define MSG_BEFORE_START "The requested operation is not supported before starting the microVM."
#define MSG_LOAD_AFTER_CONFIG "Loading a microVM snapshot not allowed after configuring boot-specific resources."

struct kvmm_api {
	pthread_t thread;
	int listen_fd;
	int stop_fd; /* eventfd: kvmm_api_stop() wakes every poll */
	char sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct kvmm_config *cfg; /* the caller's; ours until kvmm_api_stop() */
	struct kvmm_api_hooks hooks;
	atomic_bool running;
	atomic_bool paused;
	bool configured; /* a pre-boot resource was PUT: too late for /snapshot/load */
	bool seccomp_on; /* the API thread's filter is installed */
	char *buf;	 /* one connection's bytes: a head and a body fit */
};

/* A response: status and, unless 204, a JSON body (malloc'd). */
struct resp {
	int status;
	char *body;
};

static const char *status_text(int s)
{
	switch (s) {
	case 100:
		return "Continue";
	case 200:
		return "OK";
	case 204:
		return "No Content";
	case 413:
		return "Payload Too Large";
	case 431:
		return "Request Header Fields Too Large";
	default:
		return "Bad Request";
	}
}

static void resp_json(struct resp *rs, int status, json_t *j)
{
	rs->status = status;
	rs->body = j ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	if (!rs->body) {
		/* Out of memory: still answer, with a body that needs no allocation. */
		rs->status = 400;
		rs->body = strdup("{\"fault_message\":\"kvmm is out of memory\"}");
	}
}

__attribute__((format(printf, 2, 3))) static void resp_fault(struct resp *rs, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_warn("API request refused: %s", msg);
	resp_json(rs, 400, json_pack("{s:s}", "fault_message", msg));
}

/* ---- the socket side ------------------------------------------------------------ */

static int ms_left(double deadline)
{
	double left = deadline - now_seconds();
	return left <= 0 ? 0 : (int)(left * 1000) + 1;
}

/* Read what is there into a->buf past |*len|, waiting until |deadline|.
 * Returns >0 bytes read, 0 on EOF, timeout or stop, -errno on error. */
static ssize_t read_some(struct kvmm_api *a, int fd, size_t *len, double deadline)
{
	for (;;) {
		struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = a->stop_fd, .events = POLLIN}};
		int n = poll(p, 2, ms_left(deadline));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0) {
			log_warn("API client sent an incomplete request for %d ms; dropping the connection",
				 KVMM_API_IO_TIMEOUT_MS);
			return 0;
		}
		if (p[1].revents)
			return 0;
		ssize_t r = recv(fd, a->buf + *len, API_BUF - *len, 0);
		if (r < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (r < 0)
			return -errno;
		*len += (size_t)r;
		return r;
	}
}

/* Write all of |<p, n>| before |deadline|.  0 or -errno. */
static int write_all(struct kvmm_api *a, int fd, const char *p, size_t n, double deadline)
{
	while (n) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w > 0) {
			p += w;
			n -= (size_t)w;
			continue;
		}
		if (w < 0 && errno != EAGAIN && errno != EINTR)
			return -errno;
		struct pollfd pf[2] = {{.fd = fd, .events = POLLOUT}, {.fd = a->stop_fd, .events = POLLIN}};
		int r = poll(pf, 2, ms_left(deadline));
		if (r == 0 || (r > 0 && pf[1].revents))
			return -ETIMEDOUT;
		if (r < 0 && errno != EINTR)
			return -errno;
	}
	return 0;
}

static int send_resp(struct kvmm_api *a, int fd, const struct resp *rs, bool keep_alive)
{
	char head[256];
	size_t blen = rs->body ? strlen(rs->body) : 0;
	int n;
	if (rs->status == 204)
		n = snprintf(head, sizeof(head), "HTTP/1.1 204 No Content\r\nServer: kvmm\r\nConnection: %s\r\n\r\n",
			     keep_alive ? "keep-alive" : "close");
	else
		n = snprintf(head, sizeof(head),
			     "HTTP/1.1 %d %s\r\nServer: kvmm\r\nConnection: %s\r\nContent-Type: application/json\r\n"
			     "Content-Length: %zu\r\n\r\n",
			     rs->status, status_text(rs->status), keep_alive ? "keep-alive" : "close", blen);
	double deadline = now_seconds() + KVMM_API_IO_TIMEOUT_MS / 1000.0;
	int r = write_all(a, fd, head, (size_t)n, deadline);
	if (r == 0 && blen)
		r = write_all(a, fd, rs->body, blen, deadline);
	if (r < 0)
		log_warn("API client did not take its response: %s; dropping the connection", strerror(-r));
	return r;
}

/* ---- requests --------------------------------------------------------------------- */

static void get_instance(struct kvmm_api *a, struct resp *rs)
{
	resp_json(rs, 200,
		  json_pack("{s:s, s:s, s:s, s:s}", "id", KVMM_INSTANCE_ID, "state",
			    !atomic_load(&a->running) ? "Not started"
			    : atomic_load(&a->paused) ? "Paused"
						      : "Running",
			    "vmm_version", KVMM_VMM_VERSION,
			    "app_name", "kvmm"));
}

static void get_machine(struct kvmm_api *a, struct resp *rs)
{
	resp_json(rs, 200,
		  json_pack("{s:I, s:I, s:b, s:b, s:s}", "vcpu_count", (json_int_t)a->cfg->vcpu_count, "mem_size_mib",
			    (json_int_t)a->cfg->mem_size_mib, "smt", 0, "track_dirty_pages", 0, "huge_pages", "None"));
}

static void get_vm_config(struct kvmm_api *a, struct resp *rs)
{
	char *s = kvmm_config_to_json(a->cfg);
	rs->status = 200;
	rs->body = s;
	if (!s)
		resp_fault(rs, "kvmm is out of memory");
}

static void put_resource(struct kvmm_api *a, enum kvmm_resource r, const char *id, const char *body, size_t len,
			 struct resp *rs)
{
	if (atomic_load(&a->running)) {
		resp_fault(rs, MSG_AFTER_START);
		return;
	}
	char err[512];
	if (kvmm_config_put(a->cfg, r, id, body, len, err, sizeof(err)) < 0) {
		resp_fault(rs, "%s", err);
		return;
	}
	a->configured = true;
	rs->status = 204;
}

/* Parse |<body, len>| as a JSON object; NULL with the fault sent. */
static json_t *load_body(const char *what, const char *body, size_t len, struct resp *rs)
{
	json_error_t je;
	json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
	if (!j)
		resp_fault(rs, "%s: invalid JSON at line %d column %d: %s", what, je.line, je.column, je.text);
	return j;
}

static void patch_vm(struct kvmm_api *a, const char *body, size_t len, struct resp *rs)
{
	json_t *j = load_body("vm", body, len, rs);
	if (!j)
		return;
	const char *state = NULL;
	json_error_t je;
	char err[512] = "";
	if (json_unpack_ex(j, &je, JSON_STRICT, "{s:s}", "state", &state) < 0) {
		resp_fault(rs, "vm: %s (the body is {\"state\": \"Paused\"|\"Resumed\"})", je.text);
	} else if (strcmp(state, "Paused") != 0 && strcmp(state, "Resumed") != 0) {
		resp_fault(rs, "vm.state: unknown state \"%.64s\"; expected Paused or Resumed", state);
	} else if (!atomic_load(&a->running)) {
		resp_fault(rs, MSG_BEFORE_START);
	} else if (!a->hooks.set_paused) {
		resp_fault(rs, "vm: pausing is not available in this server");
	} else {
		bool pause = strcmp(state, "Paused") == 0;
		if (a->hooks.set_paused(a->hooks.ctx, pause, err, sizeof(err)) < 0) {
			resp_fault(rs, "%s the microVM: %s", pause ? "Pausing" : "Resuming",
				   err[0] ? err : "failed (see kvmm's log)");
		} else {
			atomic_store(&a->paused, pause);
			rs->status = 204;
		}
	}
	json_decref(j);
}

static void snapshot_create(struct kvmm_api *a, const char *body, size_t len, struct resp *rs)
{
	json_t *j = load_body("snapshot/create", body, len, rs);
	if (!j)
		return;
	const char *type = "Full", *path = NULL, *mem = NULL;
	json_error_t je;
	char err[1024] = "";
	if (json_unpack_ex(j, &je, JSON_STRICT, "{s?:s, s:s, s:s}", "snapshot_type", &type, "snapshot_path", &path,
			   "mem_file_path", &mem) < 0) {
		resp_fault(rs,
			   "snapshot/create: %s (the body is {\"snapshot_type\": \"Full\", \"snapshot_path\": "
			   "PATH, \"mem_file_path\": PATH})",
			   je.text);
	} else if (strcmp(type, "Diff") == 0) {
		resp_fault(rs, "Create snapshot error: Diff snapshots are not supported: kvmm does not track dirty "
			       "pages (track_dirty_pages is always false); use \"snapshot_type\": \"Full\"");
	} else if (strcmp(type, "Full") != 0) {
		resp_fault(rs, "snapshot/create.snapshot_type: unknown type \"%.64s\"; expected Full", type);
	} else if (!path[0] || !mem[0]) {
		resp_fault(rs, "snapshot/create: snapshot_path and mem_file_path must not be empty");
	} else if (!atomic_load(&a->running)) {
		resp_fault(rs, "Create snapshot error: " MSG_BEFORE_START);
	} else if (!atomic_load(&a->paused)) {
		resp_fault(rs, "Create snapshot error: the microVM must be paused first (PATCH /vm {\"state\": "
			       "\"Paused\"})");
	} else if (!a->hooks.snapshot_create) {
		resp_fault(rs, "Create snapshot error: snapshots are not available in this server");
	} else if (a->hooks.snapshot_create(a->hooks.ctx, path, mem, err, sizeof(err)) < 0) {
		resp_fault(rs, "Create snapshot error: %s", err[0] ? err : "failed (see kvmm's log)");
	} else {
		rs->status = 204;
	}
	json_decref(j);
}

/* Firecracker's "vsock_override": {"uds_path"} and kindling's
 * "drive_overrides": [{"drive_id", "path_on_host"}] into |ov|, strings
 * borrowed from |vsock|/|drives|.  0, or -EINVAL with a fault in |rs|. */
static int load_overrides(json_t *vsock, json_t *drives, struct kvmm_restore_overrides *ov, struct resp *rs)
{
	json_error_t je;
	if (vsock && json_unpack_ex(vsock, &je, JSON_STRICT, "{s:s}", "uds_path", &ov->vsock_uds_path) < 0) {
		resp_fault(rs, "snapshot/load.vsock_override: %s (it is {\"uds_path\": PATH})", je.text);
		return -EINVAL;
	}
	if (ov->vsock_uds_path && !ov->vsock_uds_path[0]) {
		resp_fault(rs, "snapshot/load.vsock_override.uds_path must not be empty");
		return -EINVAL;
	}
	if (!drives)
		return 0;
	if (!json_is_array(drives) || json_array_size(drives) > KVMM_MAX_DRIVES) {
		resp_fault(rs, "snapshot/load.drive_overrides: expected an array of at most %d {\"drive_id\", "
			       "\"path_on_host\"}",
			   KVMM_MAX_DRIVES);
		return -EINVAL;
	}
	size_t i;
	json_t *d;
	json_array_foreach (drives, i, d) {
		const char *id = NULL, *path = NULL;
		if (json_unpack_ex(d, &je, JSON_STRICT, "{s:s, s:s}", "drive_id", &id, "path_on_host", &path) < 0) {
			resp_fault(rs, "snapshot/load.drive_overrides[%zu]: %s (each is {\"drive_id\": ID, "
				       "\"path_on_host\": PATH})",
				   i, je.text);
			return -EINVAL;
		}
		if (!id[0] || !path[0]) {
			resp_fault(rs, "snapshot/load.drive_overrides[%zu]: drive_id and path_on_host must not be empty", i);
			return -EINVAL;
		}
		for (size_t k = 0; k < i; k++)
			if (strcmp(ov->drives[k].drive_id, id) == 0) {
				resp_fault(rs, "snapshot/load.drive_overrides[%zu]: drive \"%.64s\" is overridden twice", i,
					   id);
				return -EINVAL;
			}
		ov->drives[i].drive_id = id;
		ov->drives[i].path_on_host = path;
		ov->n_drives = i + 1;
	}
	return 0;
}

static void snapshot_load(struct kvmm_api *a, const char *body, size_t len, struct resp *rs)
{
	json_t *j = load_body("snapshot/load", body, len, rs);
	if (!j)
		return;
	const char *path = NULL, *mem_file = NULL, *btype = NULL, *bpath = NULL;
	json_t *backend = NULL, *vsock = NULL, *drives = NULL;
	struct kvmm_restore_overrides ov = { 0 };
	int resume = 0, diff = 0;
	json_error_t je;
	char err[1024] = "";
	if (json_unpack_ex(j, &je, JSON_STRICT, "{s:s, s?:s, s?:o, s?:b, s?:b, s?:o, s?:o}", "snapshot_path", &path,
			   "mem_file_path", &mem_file, "mem_backend", &backend, "resume_vm", &resume,
			   "enable_diff_snapshots", &diff, "vsock_override", &vsock, "drive_overrides", &drives) < 0 ||
	    (backend && json_unpack_ex(backend, &je, JSON_STRICT, "{s:s, s:s}", "backend_type", &btype,
				       "backend_path", &bpath) < 0)) {
		resp_fault(rs,
			   "snapshot/load: %s (the body is {\"snapshot_path\": PATH, \"mem_backend\": "
			   "{\"backend_type\": \"File\"|\"Uffd\", \"backend_path\": PATH}, \"resume_vm\": BOOL, "
			   "\"vsock_override\": {\"uds_path\": PATH}, \"drive_overrides\": [{\"drive_id\": ID, "
			   "\"path_on_host\": PATH}]})",
			   je.text);
		json_decref(j);
		return;
	}
	if (load_overrides(vsock, drives, &ov, rs) < 0)
		;
	else if (!!mem_file == !!backend)
		resp_fault(rs, "snapshot/load: give exactly one of mem_backend and the deprecated mem_file_path");
	else if (btype && strcmp(btype, "File") != 0 && strcmp(btype, "Uffd") != 0)
		resp_fault(rs, "snapshot/load.mem_backend.backend_type: unknown type \"%.64s\"; expected File or Uffd",
			   btype);
	else if (diff)
		resp_fault(rs, "snapshot/load: enable_diff_snapshots is not supported (kvmm takes Full snapshots only)");
	else if (!path[0] || (bpath && !bpath[0]) || (mem_file && !mem_file[0]))
		resp_fault(rs, "snapshot/load: snapshot_path and the memory backend's path must not be empty");
	else if (atomic_load(&a->running))
		resp_fault(rs, "Load snapshot error: " MSG_AFTER_START);
	else if (a->configured)
		resp_fault(rs, MSG_LOAD_AFTER_CONFIG);
	else if (!a->hooks.snapshot_load)
		resp_fault(rs, "Load snapshot error: snapshots are not available in this server");
	else if (a->hooks.snapshot_load(a->hooks.ctx, a->cfg, path, btype && strcmp(btype, "Uffd") == 0,
					 mem_file ? mem_file : bpath, &ov, resume, err, sizeof(err)) < 0)
		resp_fault(rs, "Load snapshot error: %s", err[0] ? err : "failed (see kvmm's log)");
	else {
		atomic_store(&a->paused, !resume);
		atomic_store(&a->running, true);
		log_info("API: snapshot %s loaded; the VM %s", path, resume ? "runs" : "is paused");
		rs->status = 204;
	}
	json_decref(j);
}

static void action(struct kvmm_api *a, const char *body, size_t len, struct resp *rs)
{
	json_t *j = load_body("actions", body, len, rs);
	if (!j)
		return;
	json_error_t je;
	const char *type = NULL;
	if (json_unpack_ex(j, &je, JSON_STRICT, "{s:s}", "action_type", &type) < 0) {
		resp_fault(rs, "actions: %s (the body is {\"action_type\": \"InstanceStart\"|\"SendCtrlAltDel\"})",
			   je.text);
		json_decref(j);
		return;
	}
	char err[512] = "";
	if (strcmp(type, "InstanceStart") == 0) {
		if (atomic_load(&a->running)) {
			resp_fault(rs, MSG_AFTER_START);
		} else if (kvmm_config_validate(a->cfg, err, sizeof(err)) < 0) {
			resp_fault(rs, "Start microVM error: %s", err);
		} else if (a->hooks.instance_start(a->hooks.ctx, a->cfg, err, sizeof(err)) < 0) {
			resp_fault(rs, "Start microVM error: %s", err[0] ? err : "the VM did not start (see kvmm's log)");
		} else {
			atomic_store(&a->running, true);
			log_info("API: InstanceStart: the VM runs");
			rs->status = 204;
		}
	} else if (strcmp(type, "SendCtrlAltDel") == 0) {
		if (!atomic_load(&a->running))
			resp_fault(rs, MSG_BEFORE_START);
		else if (a->hooks.send_ctrl_alt_del(a->hooks.ctx, err, sizeof(err)) < 0)
			resp_fault(rs, "SendCtrlAltDel: %s", err[0] ? err : "failed (see kvmm's log)");
		else
			rs->status = 204;
	} else if (strcmp(type, "FlushMetrics") == 0) {
		resp_fault(rs, "FlushMetrics: kvmm keeps no metrics file; nothing to flush");
	} else {
		resp_fault(rs, "actions.action_type: unknown action \"%.64s\"; expected InstanceStart, SendCtrlAltDel",
			   type);
	}
	json_decref(j);
}

static void route(struct kvmm_api *a, const struct kvmm_http_req *q, const char *body, struct resp *rs)
{
	const char *m = q->method, *p = q->path;
	size_t blen = q->content_length;
	bool get = strcmp(m, "GET") == 0, put = strcmp(m, "PUT") == 0, patch = strcmp(m, "PATCH") == 0;
	if ((put || patch) && blen == 0) {
		resp_fault(rs, "Empty %s request.", m);
		return;
	}
	if (get && strcmp(p, "/") == 0)
		get_instance(a, rs);
	else if (get && strcmp(p, "/machine-config") == 0)
		get_machine(a, rs);
	else if (get && strcmp(p, "/vm/config") == 0)
		get_vm_config(a, rs);
	else if (put && strcmp(p, "/machine-config") == 0)
		put_resource(a, KVMM_RES_MACHINE, NULL, body, blen, rs);
	else if (put && strcmp(p, "/boot-source") == 0)
		put_resource(a, KVMM_RES_BOOT, NULL, body, blen, rs);
	else if (put && strcmp(p, "/vsock") == 0)
		put_resource(a, KVMM_RES_VSOCK, NULL, body, blen, rs);
	else if (put && strncmp(p, "/drives/", 8) == 0 && p[8] && !strchr(p + 8, '/'))
		put_resource(a, KVMM_RES_DRIVE, p + 8, body, blen, rs);
	else if (put && strcmp(p, "/actions") == 0)
		action(a, body, blen, rs);
	else if (patch && strcmp(p, "/vm") == 0)
		patch_vm(a, body, blen, rs);
	else if (put && strcmp(p, "/snapshot/create") == 0)
		snapshot_create(a, body, blen, rs);
	else if (put && strcmp(p, "/snapshot/load") == 0)
		snapshot_load(a, body, blen, rs);
	else
		resp_fault(rs, "Invalid request method and/or path: %s %.200s.", m, p);
}

/* ---- the connection loop ------------------------------------------------------------------ */

static void maybe_seccomp(struct kvmm_api *a)
{
	if (!a->hooks.seccomp || a->seccomp_on || !atomic_load(&a->running))
		return;
	if (kvmm_seccomp_apply(KVMM_THREAD_API) == 0)
		a->seccomp_on = true;
	else
		a->hooks.seccomp = false; /* logged by kvmm_seccomp_apply; do not retry on every request */
}

/* Wait for the next request on an idle connection.  True if bytes arrived;
 * false to close: the client left, it idled too long, another client is
 * waiting, or the API stops. */
static bool wait_request(struct kvmm_api *a, int fd)
{
	struct pollfd p[3] = {{.fd = fd, .events = POLLIN},
			      {.fd = a->listen_fd, .events = POLLIN},
			      {.fd = a->stop_fd, .events = POLLIN}};
	for (;;) {
		int n = poll(p, 3, KVMM_API_IDLE_TIMEOUT_MS);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0 || p[2].revents)
			return false;
		if (p[0].revents)
			return true;
		return false; /* only the listener: someone else is waiting */
	}
}

static void serve(struct kvmm_api *a, int fd)
{
	size_t len = 0;
	for (;;) {
		maybe_seccomp(a);
		if (len == 0 && !wait_request(a, fd))
			return;
		double deadline = now_seconds() + KVMM_API_IO_TIMEOUT_MS / 1000.0;
		struct kvmm_http_req q;
		char err[256];
		int r;
		while ((r = kvmm_http_parse_head(a->buf, len, &q, err, sizeof(err))) == -EAGAIN)
			if (read_some(a, fd, &len, deadline) <= 0)
				return;
		struct resp rs = {0};
		if (r < 0) {
			resp_fault(&rs, "%s", err);
			rs.status = r == -E2BIG ? 413 : r == -EMSGSIZE ? 431 : 400;
			send_resp(a, fd, &rs, false);
			free(rs.body);
			return;
		}
		size_t total = q.head_len + q.content_length; /* both bounded: fits API_BUF */
		if (q.expect_continue && len < total) {
			static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
			if (write_all(a, fd, cont, sizeof(cont) - 1, deadline) < 0)
				return;
		}
		while (len < total)
			if (read_some(a, fd, &len, deadline) <= 0)
				return;
		log_debug("API: %s %s (%zu body bytes)", q.method, q.path, q.content_length);
		route(a, &q, a->buf + q.head_len, &rs);
		r = send_resp(a, fd, &rs, q.keep_alive);
		free(rs.body);
		if (r < 0 || !q.keep_alive)
			return;
		/* Pipelined bytes of the next request stay. */
		memmove(a->buf, a->buf + total, len - total);
		len -= total;
	}
}

static void *api_thread(void *arg)
{
	struct kvmm_api *a = arg;
	for (;;) {
		maybe_seccomp(a);
		struct pollfd p[2] = {{.fd = a->listen_fd, .events = POLLIN}, {.fd = a->stop_fd, .events = POLLIN}};
		/* Wake now and then so a set_running() from another thread
		 * installs the filter without waiting for a client. */
		int n = poll(p, 2, 1000);
		if (n < 0 && errno != EINTR) {
			log_err("API socket poll: %s; the API stops", strerror(errno));
			break;
		}
		if (n <= 0)
			continue;
		if (p[1].revents)
			break;
		int fd = accept4(a->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
				log_warn("API accept: %s", strerror(errno));
			continue;
		}
		serve(a, fd);
		close(fd);
	}
	return NULL;
}

/* ---- start and stop ------------------------------------------------------------------------- */

/* Bind a listening unix socket at |path|, replacing a stale socket file
 * (a kvmm that died) but nothing else. */
static int listen_unix(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(sa.sun_path)) {
		log_err("API socket path %s is longer than %zu bytes; choose a shorter one", path,
			sizeof(sa.sun_path) - 1);
		return -ENAMETOOLONG;
	}
	strcpy(sa.sun_path, path);
	struct stat st;
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			log_err("API socket path %s exists and is not a socket; remove it or choose another", path);
			return -EEXIST;
		}
		unlink(path);
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/* 0600: only kvmm's user may drive the VM. */
	mode_t old = umask(0177);
	int r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	int e = errno;
	umask(old);
	if (r < 0 || listen(fd, 16) < 0) {
		e = r < 0 ? e : errno;
		log_err("API socket %s: %s; does its directory exist and is it writable?", path, strerror(e));
		close(fd);
		return -e;
	}
	return fd;
}

int kvmm_api_start(struct kvmm_api **out, const char *sock_path, struct kvmm_config *cfg,
		   const struct kvmm_api_hooks *hooks)
{
	*out = NULL;
	if (!hooks || !hooks->instance_start || !hooks->send_ctrl_alt_del || !cfg || !sock_path) {
		log_err("kvmm_api_start: the config, the socket path and both hooks are required");
		return -EINVAL;
	}
	struct kvmm_api *a = calloc(1, sizeof(*a));
	if (!a || !(a->buf = malloc(API_BUF))) {
		free(a);
		log_err("API: out of memory");
		return -ENOMEM;
	}
	/* jansson seeds its hash function on first use, from /dev/urandom:
	 * do it here, before any thread runs under a filter that forbids open. */
	json_object_seed(0);
	a->cfg = cfg;
	a->hooks = *hooks;
	atomic_init(&a->running, false);
	atomic_init(&a->paused, false);
	a->stop_fd = -1;
	int r = listen_unix(sock_path);
	if (r < 0)
		goto fail;
	a->listen_fd = r;
	snprintf(a->sock_path, sizeof(a->sock_path), "%s", sock_path);
	if ((a->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
		r = -errno;
		log_err("API eventfd: %s", strerror(-r));
		goto fail_sock;
	}
	if ((r = -kvmm_thread_create(&a->thread, api_thread, a)) < 0) {
		log_err("API thread: %s", strerror(-r));
		goto fail_sock;
	}
	log_info("API listening on %s", sock_path);
	*out = a;
	return 0;
fail_sock:
	if (a->stop_fd >= 0)
		close(a->stop_fd);
	close(a->listen_fd);
	unlink(a->sock_path);
fail:
	free(a->buf);
	free(a);
	return r;
}

void kvmm_api_set_running(struct kvmm_api *a)
{
	atomic_store(&a->running, true);
}

void kvmm_api_stop(struct kvmm_api *a)
{
	if (!a)
		return;
	uint64_t one = 1;
	if (write(a->stop_fd, &one, sizeof(one)) != sizeof(one))
		log_warn("API stop: eventfd write: %s", strerror(errno));
	pthread_join(a->thread, NULL);
	close(a->listen_fd);
	close(a->stop_fd);
	unlink(a->sock_path);
	free(a->buf);
	free(a);
}
