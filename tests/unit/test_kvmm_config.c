/* kvmm's configuration: Firecracker's JSON objects (API bodies and
 * --config-file), their refusals with the field named, all-or-nothing puts,
 * the root drive's place, validation against real files, and the JSON
 * round trip. */
/* ctest-labels: no-tsan (single-threaded: nothing for ThreadSanitizer to check) */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/check.h"
#include "vmm/kvmm/config.h"

static char err[512];

static int put(struct kvmm_config *c, enum kvmm_resource r, const char *id, const char *json)
{
	err[0] = '\0';
	return kvmm_config_put(c, r, id, json, strlen(json), err, sizeof(err));
}

static bool has(const char *needle)
{
	if (!strstr(err, needle)) {
		fprintf(stderr, "  message \"%s\" lacks \"%s\"\n", err, needle);
		return false;
	}
	return true;
}

static void write_text(const char *path, const char *s)
{
	FILE *f = fopen(path, "w");
	if (!f) {
		perror(path);
		exit(1);
	}
	fputs(s, f);
	fclose(f);
}

static void test_machine(void)
{
	struct kvmm_config c;
	kvmm_config_init(&c);
	CHECK(c.vcpu_count == 1 && c.mem_size_mib == 128 && !c.kernel_image_path && !c.has_vsock);
	CHECK(put(&c, KVMM_RES_MACHINE, NULL, "{\"vcpu_count\": 2, \"mem_size_mib\": 256}") == 0);
	CHECK(c.vcpu_count == 2 && c.mem_size_mib == 256);
	/* Firecracker's defaults spelled out are fine. */
	CHECK(put(&c, KVMM_RES_MACHINE, NULL,
		  "{\"vcpu_count\": 4, \"mem_size_mib\": 512, \"smt\": false, \"track_dirty_pages\": false, "
		  "\"cpu_template\": \"None\", \"huge_pages\": \"None\"}") == 0);
	CHECK(c.vcpu_count == 4 && c.mem_size_mib == 512);

	/* Each refusal names the field and leaves the config as it was. */
	CHECK(put(&c, KVMM_RES_MACHINE, NULL, "{\"vcpu_count\": 2, \"mem_size_mb\": 256}") == -EINVAL);
	CHECK(has("unknown field \"mem_size_mb\"") && has("mem_size_mib"));
	CHECK(put(&c, KVMM_RES_MACHINE, NULL, "{\"vcpu_count\": 0, \"mem_size_mib\": 256}") == -EINVAL);
	CHECK(has("machine-config.vcpu_count"));
	CHECK(put(&c, KVMM_RES_MACHINE, NULL, "{\"vcpu_count\": 33, \"mem_size_mib\": 256}") == -EINVAL);
	CHECK(put(&c, KVMM_RES_MACHINE, NULL, "{\"vcpu_count\": -1, \"mem_size_mib\": 256}") == -EINVAL);
	CHECK(put(&c, KVMM_RES_MACHINE, NULL, "{\"vcpu_count\": 1.0, \"mem_size_mib\": 256}") == -EINVAL);
	CHECK(has("expected an integer"));
	CHECK(put(&c, KVMM_RES_MACHINE, NULL, "{\"vcpu_count\": \"2\", \"mem_size_mib\": 256}") == -EINVAL);
	CHECK(put(&c, KVMM_RES_MACHINE, NULL, "{\"vcpu_count\": 2, \"mem_size_mib\": 99999999999999999}") ==
	      -EINVAL);
	CHECK(put(&c, KVMM_RES_MACHINE, NULL, "{\"vcpu_count\": 2}") == -EINVAL);
	CHECK(has("mem_size_mib: missing"));
	CHECK(put(&c, KVMM_RES_MACHINE, NULL, "{\"vcpu_count\": 2, \"mem_size_mib\": 256, \"smt\": true}") ==
	      -EINVAL);
	CHECK(has("machine-config.smt"));
	CHECK(put(&c, KVMM_RES_MACHINE, NULL, "{\"vcpu_count\": 2, \"mem_size_mib\": 256, \"huge_pages\": \"2M\"}") ==
	      -EINVAL);
	CHECK(put(&c, KVMM_RES_MACHINE, NULL, "{\"vcpu_count\": 2, \"vcpu_count\": 3, \"mem_size_mib\": 256}") ==
	      -EINVAL);
	CHECK(put(&c, KVMM_RES_MACHINE, NULL, "{\"vcpu_count\": 2, \"mem_size_mib\": 256} x") == -EINVAL);
	CHECK(has("invalid JSON"));
	CHECK(put(&c, KVMM_RES_MACHINE, NULL, "[1, 2]") == -EINVAL);
	CHECK(put(&c, KVMM_RES_MACHINE, NULL, "") == -EINVAL);
	CHECK(c.vcpu_count == 4 && c.mem_size_mib == 512);
	kvmm_config_free(&c);
}

static void test_boot_and_vsock(void)
{
	struct kvmm_config c;
	kvmm_config_init(&c);
	CHECK(put(&c, KVMM_RES_BOOT, NULL,
		  "{\"kernel_image_path\": \"/k\", \"initrd_path\": \"/i\", \"boot_args\": \"console=ttyS0\"}") == 0);
	CHECK(c.kernel_image_path && strcmp(c.kernel_image_path, "/k") == 0 && c.initrd_path &&
	      strcmp(c.boot_args, "console=ttyS0") == 0);
	/* A PUT replaces the whole resource: the initrd is gone. */
	CHECK(put(&c, KVMM_RES_BOOT, NULL, "{\"kernel_image_path\": \"/k2\", \"initrd_path\": null}") == 0);
	CHECK(strcmp(c.kernel_image_path, "/k2") == 0 && !c.initrd_path && !c.boot_args);
	CHECK(put(&c, KVMM_RES_BOOT, NULL, "{\"initrd_path\": \"/i\"}") == -EINVAL);
	CHECK(has("boot-source.kernel_image_path: missing"));
	CHECK(put(&c, KVMM_RES_BOOT, NULL, "{\"kernel_image_path\": \"\"}") == -EINVAL);
	CHECK(put(&c, KVMM_RES_BOOT, NULL, "{\"kernel_image_path\": \"/k\", \"initrd\": \"/i\"}") == -EINVAL);
	CHECK(has("\"initrd\""));
	CHECK(strcmp(c.kernel_image_path, "/k2") == 0);

	CHECK(put(&c, KVMM_RES_VSOCK, NULL, "{\"guest_cid\": 3, \"uds_path\": \"/tmp/v.sock\", \"vsock_id\": \"v\"}") ==
	      0);
	CHECK(c.has_vsock && c.guest_cid == 3 && strcmp(c.vsock_uds_path, "/tmp/v.sock") == 0);
	CHECK(put(&c, KVMM_RES_VSOCK, NULL, "{\"guest_cid\": 2, \"uds_path\": \"/tmp/w.sock\"}") == -EINVAL);
	CHECK(has("vsock.guest_cid"));
	CHECK(put(&c, KVMM_RES_VSOCK, NULL, "{\"guest_cid\": 4294967296, \"uds_path\": \"/tmp/w.sock\"}") == -EINVAL);
	CHECK(put(&c, KVMM_RES_VSOCK, NULL, "{\"guest_cid\": 5}") == -EINVAL);
	CHECK(has("vsock.uds_path: missing"));
	CHECK(c.guest_cid == 3 && strcmp(c.vsock_uds_path, "/tmp/v.sock") == 0);
	kvmm_config_free(&c);
	CHECK(!c.kernel_image_path && !c.has_vsock && c.vcpu_count == 1);
	kvmm_config_free(NULL);
}

static void test_drives(void)
{
	struct kvmm_config c;
	kvmm_config_init(&c);
	CHECK(put(&c, KVMM_RES_DRIVE, "data",
		  "{\"drive_id\": \"data\", \"path_on_host\": \"/d\", \"is_root_device\": false}") == 0);
	CHECK(c.n_drives == 1 && c.drives[0].is_read_only);
	CHECK(put(&c, KVMM_RES_DRIVE, "rootfs",
		  "{\"drive_id\": \"rootfs\", \"path_on_host\": \"/r\", \"is_root_device\": true, "
		  "\"is_read_only\": true, \"cache_type\": \"Unsafe\", \"io_engine\": \"Sync\"}") == 0);
	/* The root drive comes first: it is the guest's /dev/vda. */
	CHECK(c.n_drives == 2 && strcmp(c.drives[0].drive_id, "rootfs") == 0 && c.drives[0].is_root_device &&
	      strcmp(c.drives[1].drive_id, "data") == 0);
	CHECK(put(&c, KVMM_RES_DRIVE, "other",
		  "{\"drive_id\": \"other\", \"path_on_host\": \"/o\", \"is_root_device\": true}") == -EINVAL);
	CHECK(has("already the root device"));
	/* Updating the root drive itself is not a second root. */
	CHECK(put(&c, KVMM_RES_DRIVE, "rootfs",
		  "{\"drive_id\": \"rootfs\", \"path_on_host\": \"/r2\", \"is_root_device\": true}") == 0);
	CHECK(c.n_drives == 2 && strcmp(c.drives[0].path_on_host, "/r2") == 0);
	CHECK(put(&c, KVMM_RES_DRIVE, "x", "{\"drive_id\": \"y\", \"path_on_host\": \"/o\", \"is_root_device\": false}") ==
	      -EINVAL);
	CHECK(has("does not match"));
	CHECK(put(&c, KVMM_RES_DRIVE, "a/b",
		  "{\"drive_id\": \"a/b\", \"path_on_host\": \"/o\", \"is_root_device\": false}") == -EINVAL);
	CHECK(put(&c, KVMM_RES_DRIVE, "w",
		  "{\"drive_id\": \"w\", \"path_on_host\": \"/o\", \"is_root_device\": false, \"is_read_only\": false}") ==
	      -EINVAL);
	CHECK(has("is_read_only"));
	CHECK(put(&c, KVMM_RES_DRIVE, "w", "{\"drive_id\": \"w\", \"path_on_host\": \"/o\"}") == -EINVAL);
	CHECK(has("is_root_device: missing"));
	CHECK(put(&c, KVMM_RES_DRIVE, "w",
		  "{\"drive_id\": \"w\", \"path_on_host\": \"/o\", \"is_root_device\": false, \"rate_limiter\": {}}") ==
	      -EINVAL);
	CHECK(has("rate_limiter"));
	CHECK(c.n_drives == 2);
	for (int i = 2; i < KVMM_MAX_DRIVES; i++) {
		char id[16], body[128];
		snprintf(id, sizeof(id), "d%d", i);
		snprintf(body, sizeof(body), "{\"drive_id\": \"%s\", \"path_on_host\": \"/x\", \"is_root_device\": false}",
			 id);
		CHECK(put(&c, KVMM_RES_DRIVE, id, body) == 0);
	}
	CHECK(put(&c, KVMM_RES_DRIVE, "one_more",
		  "{\"drive_id\": \"one_more\", \"path_on_host\": \"/x\", \"is_root_device\": false}") == -ENOSPC);
	CHECK(c.n_drives == KVMM_MAX_DRIVES);
	kvmm_config_free(&c);
}

static void test_file_and_validate(const char *dir)
{
	char kernel[256], initrd[256], disk[256], file[256], sock[256];
	snprintf(kernel, sizeof(kernel), "%s/vmlinuz", dir);
	snprintf(initrd, sizeof(initrd), "%s/initrd", dir);
	snprintf(disk, sizeof(disk), "%s/root.erofs", dir);
	snprintf(file, sizeof(file), "%s/vm.json", dir);
	snprintf(sock, sizeof(sock), "%s/v.sock", dir);
	write_text(kernel, "k");
	write_text(initrd, "i");
	write_text(disk, "d");

	char text[2048];
	snprintf(text, sizeof(text),
		 "{\"boot-source\": {\"kernel_image_path\": \"%s\", \"initrd_path\": \"%s\", \"boot_args\": \"quiet\"},\n"
		 " \"drives\": [{\"drive_id\": \"rootfs\", \"path_on_host\": \"%s\", \"is_root_device\": true,"
		 " \"is_read_only\": true}],\n"
		 " \"machine-config\": {\"vcpu_count\": 2, \"mem_size_mib\": 256, \"smt\": false},\n"
		 " \"vsock\": {\"guest_cid\": 3, \"uds_path\": \"%s\"},\n"
		 " \"network-interfaces\": [], \"logger\": null}\n",
		 kernel, initrd, disk, sock);
	write_text(file, text);
	struct kvmm_config c, d;
	kvmm_config_init(&c);
	CHECK(kvmm_config_load_file(&c, file, err, sizeof(err)) == 0);
	CHECK(c.vcpu_count == 2 && c.mem_size_mib == 256 && c.n_drives == 1 && c.has_vsock && c.guest_cid == 3);
	CHECK(c.kernel_image_path && strcmp(c.kernel_image_path, kernel) == 0);
	CHECK(kvmm_config_validate(&c, err, sizeof(err)) == 0);

	/* The JSON form reads back to the same config. */
	char *js = kvmm_config_to_json(&c);
	CHECK(js != NULL);
	if (js) {
		char file2[300];
		snprintf(file2, sizeof(file2), "%s/vm2.json", dir);
		write_text(file2, js);
		kvmm_config_init(&d);
		CHECK(kvmm_config_load_file(&d, file2, err, sizeof(err)) == 0);
		CHECK(d.vcpu_count == c.vcpu_count && d.mem_size_mib == c.mem_size_mib && d.n_drives == 1 &&
		      strcmp(d.drives[0].path_on_host, disk) == 0 && d.drives[0].is_root_device && d.has_vsock &&
		      d.guest_cid == 3 && strcmp(d.vsock_uds_path, sock) == 0 && strcmp(d.initrd_path, initrd) == 0 &&
		      strcmp(d.boot_args, "quiet") == 0);
		kvmm_config_free(&d);
		free(js);
	}

	/* Validation names the field and the file. */
	free(c.drives[0].path_on_host);
	c.drives[0].path_on_host = strdup("/nonexistent/root.erofs");
	CHECK(kvmm_config_validate(&c, err, sizeof(err)) == -ENOENT);
	CHECK(has("drives[rootfs].path_on_host") && has("/nonexistent/root.erofs"));
	free(c.kernel_image_path);
	c.kernel_image_path = strdup(dir); /* a directory */
	CHECK(kvmm_config_validate(&c, err, sizeof(err)) == -EINVAL);
	CHECK(has("boot-source.kernel_image_path") && has("not a regular file"));
	free(c.kernel_image_path);
	c.kernel_image_path = NULL;
	CHECK(kvmm_config_validate(&c, err, sizeof(err)) == -EINVAL);
	CHECK(has("kernel_image_path: not set"));
	kvmm_config_free(&c);

	kvmm_config_init(&c);
	c.kernel_image_path = strdup(kernel);
	c.has_vsock = true;
	c.guest_cid = 3;
	c.vsock_uds_path = strdup("/tmp/a-very-long-directory-name-for-sockets/and-another-level-below-it/and-one-more-level/vsock.sock");
	CHECK(kvmm_config_validate(&c, err, sizeof(err)) == -EINVAL);
	CHECK(has("vsock.uds_path"));
	kvmm_config_free(&c);

	/* File-level refusals. */
	static const struct {
		const char *text, *want;
	} bad[] = {
		{"{\"boot-source\": {\"kernel_image_path\": \"/k\"}, \"network-interfaces\": [{\"iface_id\": \"eth0\"}]}",
		 "network-interfaces: not supported"},
		{"{\"boot-source\": {\"kernel_image_path\": \"/k\"}, \"balloon_device\": {}}", "balloon_device: unknown section"},
		{"{\"drives\": [{\"drive_id\": \"a\", \"path_on_host\": \"/a\", \"is_root_device\": false},"
		 " {\"drive_id\": \"b\", \"is_root_device\": false}]}",
		 "drives[1].path_on_host: missing"},
		{"{\"drives\": [{\"drive_id\": \"a\", \"path_on_host\": \"/a\", \"is_root_device\": false},"
		 " {\"drive_id\": \"a\", \"path_on_host\": \"/b\", \"is_root_device\": false}]}",
		 "drives[1].drive_id"},
		{"{\"drives\": {}}", "drives: expected an array"},
		{"{\"machine-config\": {\"vcpu_count\": 1, \"mem_size_mib\": 1}}", "machine-config.mem_size_mib"},
		{"{\"boot-source\": ", "invalid JSON at line"},
		{"[]", "expected a JSON object"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		write_text(file, bad[i].text);
		kvmm_config_init(&c);
		CHECK(kvmm_config_load_file(&c, file, err, sizeof(err)) < 0);
		CHECK(has(bad[i].want));
		kvmm_config_free(&c);
	}
	kvmm_config_init(&c);
	CHECK(kvmm_config_load_file(&c, "/nonexistent/vm.json", err, sizeof(err)) == -ENOENT);
	CHECK(has("/nonexistent/vm.json"));
	kvmm_config_free(&c);

	unlink(kernel);
	unlink(initrd);
	unlink(disk);
	unlink(file);
	char file2[300];
	snprintf(file2, sizeof(file2), "%s/vm2.json", dir);
	unlink(file2);
}

int main(void)
{
	char dir[] = "/tmp/kvmm-config-test.XXXXXX";
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	test_machine();
	test_boot_and_vsock();
	test_drives();
	test_file_and_validate(dir);
	rmdir(dir);
	return check_report();
}
