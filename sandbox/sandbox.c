/* The sandbox registry: which backends this build has, and how one is picked. */
#define LOG_COMPONENT "sandbox"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sandbox/internal.h"

/* Every backend this build has, in order of preference for "auto";
 * nothing registers itself. */
static const struct sandbox_ops *const backends[] = {
	&sandbox_microvm,
	&sandbox_process,
};

static const struct sandbox_ops *find(const char *name)
{
	for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
		if (strcmp(backends[i]->name, name) == 0)
			return backends[i];
	return NULL;
}

const struct sandbox_ops *sandbox_pick(const char *isolation, char *notice, size_t len)
{
	char why[256] = "";
	if (len)
		notice[0] = '\0';
	if (!isolation)
		isolation = "auto";
	if (strcmp(isolation, "auto") == 0) {
		const struct sandbox_ops *vm = find("microvm");
		struct stat kvm_st;
		bool kvm = stat("/dev/kvm", &kvm_st) == 0 && S_ISCHR(kvm_st.st_mode) &&
			   access("/dev/kvm", R_OK | W_OK) == 0;
		if (vm && kvm && vm->available(why, sizeof(why)))
			return vm;
		const struct sandbox_ops *p = find("process");
		if (!p->available(why, sizeof(why))) {
			snprintf(notice, len, "no sandbox can run here: process sandbox: %s", why);
			errno = ENOTSUP;
			return NULL;
		}
		snprintf(notice, len, "notice: isolation auto: using the process sandbox (%s)",
			 !vm ? "this build has no micro-VM backend"
			     : !kvm ? "no usable /dev/kvm on this host"
				    : why);
		return p;
	}
	if (strcmp(isolation, "process") != 0 && strcmp(isolation, "microvm") != 0) {
		snprintf(notice, len, "unknown isolation \"%s\"; use process, microvm or auto", isolation);
		errno = ENOENT;
		return NULL;
	}
	const struct sandbox_ops *ops = find(isolation);
	if (!ops) {
		snprintf(notice, len,
			 "the %s backend is not available in this build/on this host; use --isolation process or auto",
			 isolation);
		errno = ENOTSUP;
		return NULL;
	}
	if (!ops->available(why, sizeof(why))) {
		snprintf(notice, len, "the %s sandbox cannot run on this host: %s", isolation, why);
		errno = ENOTSUP;
		return NULL;
	}
	return ops;
}

int sandbox_run(const struct sandbox_ops *ops, const struct sandbox_spec *spec, struct sandbox_result *out)
{
	if (!ops || !spec || !out || !spec->image_path == !spec->rootfs_dir || spec->out_fd < 0 || spec->err_fd < 0 ||
	    spec->timeout_s < 0) {
		log_err("sandbox_run: incomplete spec (exactly one of image path and rootfs directory, output "
			"descriptors and backend are required)");
		return -EINVAL;
	}
	if (spec->runtime_api_port && !spec->on_ready) {
		log_err("sandbox_run: a Runtime API port needs an on_ready callback to hand the endpoint to");
		return -EINVAL;
	}
	if (spec->restore && strcmp(ops->name, "microvm") != 0) {
		log_err("sandbox_run: the %s sandbox cannot restore a snapshot; only the micro-VM can "
			"(--isolation microvm)", ops->name);
		return -ENOTSUP;
	}
	if (spec->restore && (!spec->restore->vmstate_path ||
			      !spec->restore->mem_uffd_socket == !spec->restore->mem_file)) {
		log_err("sandbox_run: a restore needs a vmstate file and exactly one of a memory file and a "
			"page-fault handler's socket");
		return -EINVAL;
	}
	memset(out, 0, sizeof(*out));
	out->exit_code = -1;
	out->restored_s = -1;
	out->first_output_s = -1;
	out->backend = ops->name;
	out->mount_kind = "";
	out->cgroup_kind = "none";
	return ops->run(spec, out);
}

int sandbox_env_overrides(const struct sandbox_spec *s, struct str_list *out)
{
	int r = 0;
	for (size_t i = 0; s->env_override && s->env_override[i] && r == 0; i++)
		r = str_list_add(out, s->env_override[i]);
	if (r == 0 && s->runtime_api_port) {
		char kv[64];
		snprintf(kv, sizeof(kv), SANDBOX_RUNTIME_API_ENV "=127.0.0.1:%u", s->runtime_api_port);
		r = str_list_add(out, kv);
	}
	/* The "" makes room for the NULL terminator. */
	if (r == 0 && (r = str_list_add(out, "")) == 0) {
		free(out->items[--out->n]);
		out->items[out->n] = NULL;
	}
	return r;
}
