/* Fuzz kvmm's config checker (vmm/kvmm/config.c) with hostile JSON, as API
 * bodies and as a --config-file.  Input: one selector byte, then the JSON.
 *   [0] % 5: 0..3 = a PUT of machine-config, boot-source, drives/{id} (id
 *            "rootfs"), vsock onto a config already holding two drives;
 *            4 = the bytes as a whole config file.
 * Whatever is accepted must keep the config's invariants (ranges, at most one
 * root drive and it first, distinct ids), and must survive the round trip
 * through kvmm_config_to_json(). */
/* ctest-labels: no-tsan (a single-threaded parser: nothing for ThreadSanitizer to check) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vmm/kvmm/config.h"

#include "tests/fuzz_target.h"

static void invariants(const struct kvmm_config *c)
{
	MUST(c->vcpu_count >= 1 && c->vcpu_count <= KVMM_MAX_VCPUS);
	MUST(c->mem_size_mib >= KVMM_MIN_MEM_MIB && c->mem_size_mib <= KVMM_MAX_MEM_MIB);
	MUST(c->n_drives <= KVMM_MAX_DRIVES);
	for (size_t i = 0; i < c->n_drives; i++) {
		MUST(c->drives[i].path_on_host && c->drives[i].drive_id[0]);
		MUST(i == 0 || !c->drives[i].is_root_device);
		for (size_t k = 0; k < i; k++)
			MUST(strcmp(c->drives[k].drive_id, c->drives[i].drive_id) != 0);
	}
	MUST(!c->has_vsock || (c->guest_cid >= 3 && c->vsock_uds_path));
}

/* Load |<p, n>| as a config file (through a temporary file: the loader's
 * interface is a path, as kvmm's --config-file is). */
static int load_text(struct kvmm_config *c, const char *p, size_t n, char *err, size_t errlen)
{
	char path[] = "/tmp/fuzz-kvmm-config.XXXXXX";
	int fd = mkstemp(path);
	if (fd < 0)
		return -1;
	int r = -1;
	if (write(fd, p, n) == (ssize_t)n)
		r = kvmm_config_load_file(c, path, err, errlen);
	close(fd);
	unlink(path);
	return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || size > 64 * 1024)
		return 0;
	int sel = data[0] % 5;
	const char *json = (const char *)data + 1;
	size_t len = size - 1;
	char err[512];
	struct kvmm_config c;
	kvmm_config_init(&c);
	static const char d1[] = "{\"drive_id\": \"rootfs\", \"path_on_host\": \"/r\", \"is_root_device\": true}";
	static const char d2[] = "{\"drive_id\": \"data\", \"path_on_host\": \"/d\", \"is_root_device\": false}";
	MUST(kvmm_config_put(&c, KVMM_RES_DRIVE, "rootfs", d1, strlen(d1), err, sizeof(err)) == 0);
	MUST(kvmm_config_put(&c, KVMM_RES_DRIVE, "data", d2, strlen(d2), err, sizeof(err)) == 0);
	int r;
	if (sel < 4)
		r = kvmm_config_put(&c, (enum kvmm_resource)sel, "rootfs", json, len, err, sizeof(err));
	else
		r = load_text(&c, json, len, err, sizeof(err));
	invariants(&c);
	if (r == 0) {
		char *s = kvmm_config_to_json(&c);
		MUST(s);
		struct kvmm_config d;
		kvmm_config_init(&d);
		MUST(load_text(&d, s, strlen(s), err, sizeof(err)) == 0);
		MUST(d.vcpu_count == c.vcpu_count && d.mem_size_mib == c.mem_size_mib && d.n_drives == c.n_drives &&
		       d.has_vsock == c.has_vsock);
		invariants(&d);
		kvmm_config_free(&d);
		free(s);
	}
	kvmm_config_free(&c);
	return 0;
}
