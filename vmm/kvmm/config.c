/* kvmm's VM configuration in Firecracker's terms: the JSON objects of its API
 * (PUT /machine-config, /boot-source, /drives/{id}, /vsock) and of its
 * --config-file, which holds the same objects under one roof.
 *
 * Every byte here is untrusted (an API client or a file someone wrote), so
 * each object goes through one checker with a table of the fields it may
 * carry: Firecracker's structs are deny_unknown_fields, and a typo such as
 * "mem_size_mb" must fail loudly rather than boot a VM with defaults.  Each
 * put is all-or-nothing: the new value is built aside and swapped in only
 * once every field passed. */
#define LOG_COMPONENT "kvmm"
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/common.h"
#include "vmm/kvmm/config.h"
#include "vmm/kvmm/layout.h"

void kvmm_config_init(struct kvmm_config *c)
{
	memset(c, 0, sizeof(*c));
	c->vcpu_count = 1;
	c->mem_size_mib = 128;
}

static void drive_clear(struct kvmm_drive *d)
{
	free(d->path_on_host);
	memset(d, 0, sizeof(*d));
}

void kvmm_config_free(struct kvmm_config *c)
{
	if (!c)
		return;
	free(c->kernel_image_path);
	free(c->initrd_path);
	free(c->boot_args);
	free(c->vsock_uds_path);
	for (size_t i = 0; i < c->n_drives; i++)
		drive_clear(&c->drives[i]);
	kvmm_config_init(c);
}

static int dup_opt(const char *src, char **dst)
{
	*dst = NULL;
	if (!src)
		return 0;
	*dst = strdup(src);
	return *dst ? 0 : -ENOMEM;
}

int kvmm_config_copy(struct kvmm_config *dst, const struct kvmm_config *src)
{
	kvmm_config_init(dst);
	*dst = *src;
	dst->kernel_image_path = dst->initrd_path = dst->boot_args = dst->vsock_uds_path = NULL;
	for (size_t i = 0; i < src->n_drives; i++)
		dst->drives[i].path_on_host = NULL;
	int r = dup_opt(src->kernel_image_path, &dst->kernel_image_path);
	if (r == 0)
		r = dup_opt(src->initrd_path, &dst->initrd_path);
	if (r == 0)
		r = dup_opt(src->boot_args, &dst->boot_args);
	if (r == 0)
		r = dup_opt(src->vsock_uds_path, &dst->vsock_uds_path);
	for (size_t i = 0; r == 0 && i < src->n_drives; i++)
		r = dup_opt(src->drives[i].path_on_host, &dst->drives[i].path_on_host);
	if (r < 0)
		kvmm_config_free(dst);
	return r;
}

/* ---- one object against its field table ------------------------------------- */

/* The fields an object may carry; |where| prefixes every message. */
static int check_fields(json_t *o, const char *where, const char *const *allowed, char *err, size_t errlen)
{
	if (!json_is_object(o))
		return err_set(err, errlen, -EINVAL, "%s: expected a JSON object", where);
	const char *key;
	json_t *v;
	json_object_foreach(o, key, v)
	{
		bool ok = false;
		for (const char *const *a = allowed; *a && !ok; a++)
			ok = strcmp(key, *a) == 0;
		if (!ok) {
			char list[512] = "";
			size_t n = 0;
			for (const char *const *a = allowed; *a; a++) {
				int w = snprintf(list + n, sizeof(list) - n, "%s%s", a == allowed ? "" : ", ", *a);
				if (w < 0 || (size_t)w >= sizeof(list) - n)
					break;
				n += (size_t)w;
			}
			return err_set(err, errlen, -EINVAL, "%s: unknown field \"%.64s\"; expected one of: %s", where, key,
				    list);
		}
	}
	return 0;
}

/* Field |name| of |o|: NULL if absent or null (Firecracker's Option). */
static json_t *field(json_t *o, const char *name)
{
	json_t *v = json_object_get(o, name);
	return json_is_null(v) ? NULL : v;
}

static int get_uint(json_t *o, const char *where, const char *name, bool required, uint64_t min, uint64_t max,
		    uint64_t *out, char *err, size_t errlen)
{
	json_t *v = field(o, name);
	if (!v) {
		if (required)
			return err_set(err, errlen, -EINVAL, "%s.%s: missing (required)", where, name);
		return 1;
	}
	/* json_integer_value() is signed: a negative value is out of range,
	 * and 1.0 is a real, refused as serde refuses it for an integer. */
	if (!json_is_integer(v))
		return err_set(err, errlen, -EINVAL, "%s.%s: expected an integer", where, name);
	json_int_t i = json_integer_value(v);
	if (i < 0 || (uint64_t)i < min || (uint64_t)i > max)
		return err_set(err, errlen, -EINVAL, "%s.%s: %lld is out of range %llu..%llu", where, name, (long long)i,
			    (unsigned long long)min, (unsigned long long)max);
	*out = (uint64_t)i;
	return 0;
}

/* 0 with |*out| set, 1 if absent, -EINVAL if not a boolean. */
static int get_bool(json_t *o, const char *where, const char *name, bool *out, char *err, size_t errlen)
{
	json_t *v = field(o, name);
	if (!v)
		return 1;
	if (!json_is_boolean(v))
		return err_set(err, errlen, -EINVAL, "%s.%s: expected true or false", where, name);
	*out = json_is_true(v);
	return 0;
}

/* A string field as a malloc'd copy in |*out| (NULL if absent and optional).
 * |nonempty| refuses "", |max| bounds the length. */
static int get_str(json_t *o, const char *where, const char *name, bool required, bool nonempty, size_t max,
		   char **out, char *err, size_t errlen)
{
	*out = NULL;
	json_t *v = field(o, name);
	if (!v) {
		if (required)
			return err_set(err, errlen, -EINVAL, "%s.%s: missing (required)", where, name);
		return 0;
	}
	if (!json_is_string(v))
		return err_set(err, errlen, -EINVAL, "%s.%s: expected a string", where, name);
	size_t len = json_string_length(v);
	if (nonempty && len == 0)
		return err_set(err, errlen, -EINVAL, "%s.%s: must not be empty", where, name);
	if (len > max)
		return err_set(err, errlen, -EINVAL, "%s.%s: longer than %zu bytes", where, name, max);
	if (!(*out = strdup(json_string_value(v))))
		return err_set(err, errlen, -ENOMEM, "%s.%s: out of memory", where, name);
	return 0;
}

/* A string field that kvmm accepts only with the one value it implements
 * (Firecracker's default), so a config written for Firecracker with the
 * defaults spelled out still loads. */
static int want_str(json_t *o, const char *where, const char *name, const char *only, char *err, size_t errlen)
{
	json_t *v = field(o, name);
	if (!v)
		return 0;
	if (!json_is_string(v))
		return err_set(err, errlen, -EINVAL, "%s.%s: expected a string", where, name);
	if (strcmp(json_string_value(v), only) != 0)
		return err_set(err, errlen, -EINVAL, "%s.%s: \"%.64s\" is not supported by kvmm (only \"%s\")", where, name,
			    json_string_value(v), only);
	return 0;
}

static int want_false(json_t *o, const char *where, const char *name, char *err, size_t errlen)
{
	bool b = false;
	int r = get_bool(o, where, name, &b, err, errlen);
	if (r < 0)
		return r;
	if (b)
		return err_set(err, errlen, -EINVAL, "%s.%s: true is not supported by kvmm", where, name);
	return 0;
}

/* ---- the four resources -------------------------------------------------------- */

static int put_machine(struct kvmm_config *c, json_t *o, const char *where, char *err, size_t errlen)
{
	static const char *const allowed[] = {"vcpu_count", "mem_size_mib",	     "smt", "track_dirty_pages",
					      "cpu_template", "huge_pages", NULL};
	int r;
	uint64_t vcpus, mib;
	if ((r = check_fields(o, where, allowed, err, errlen)) < 0 ||
	    (r = get_uint(o, where, "vcpu_count", true, 1, KVMM_MAX_VCPUS, &vcpus, err, errlen)) < 0 ||
	    (r = get_uint(o, where, "mem_size_mib", true, KVMM_MIN_MEM_MIB, KVMM_MAX_MEM_MIB, &mib, err, errlen)) <
		0 ||
	    (r = want_false(o, where, "smt", err, errlen)) < 0 ||
	    (r = want_false(o, where, "track_dirty_pages", err, errlen)) < 0 ||
	    (r = want_str(o, where, "cpu_template", "None", err, errlen)) < 0 ||
	    (r = want_str(o, where, "huge_pages", "None", err, errlen)) < 0)
		return r;
	c->vcpu_count = (unsigned)vcpus;
	c->mem_size_mib = (unsigned)mib;
	return 0;
}

static void boot_clear(struct kvmm_config *c)
{
	free(c->kernel_image_path);
	free(c->initrd_path);
	free(c->boot_args);
	c->kernel_image_path = c->initrd_path = c->boot_args = NULL;
}

static int put_boot(struct kvmm_config *c, json_t *o, const char *where, char *err, size_t errlen)
{
	static const char *const allowed[] = {"kernel_image_path", "initrd_path", "boot_args", NULL};
	char *kernel = NULL, *initrd = NULL, *args = NULL;
	int r;
	if ((r = check_fields(o, where, allowed, err, errlen)) < 0 ||
	    (r = get_str(o, where, "kernel_image_path", true, true, PATH_MAX - 1, &kernel, err, errlen)) < 0 ||
	    (r = get_str(o, where, "initrd_path", false, true, PATH_MAX - 1, &initrd, err, errlen)) < 0 ||
	    (r = get_str(o, where, "boot_args", false, false, KVMM_CMDLINE_MAX - 1, &args, err, errlen)) < 0) {
		free(kernel);
		free(initrd);
		return r;
	}
	boot_clear(c);
	c->kernel_image_path = kernel;
	c->initrd_path = initrd;
	c->boot_args = args;
	return 0;
}

static bool drive_id_ok(const char *id)
{
	size_t n = strlen(id);
	if (n == 0 || n >= KVMM_DRIVE_ID_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char ch = id[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_'))
			return false;
	}
	return true;
}

/* Put |d| (taken over) at index |i| of |c|, or append it when |i| is
 * n_drives; then move the root drive, if any, to the front. */
static void drive_commit(struct kvmm_config *c, size_t i, struct kvmm_drive *d)
{
	if (i < c->n_drives)
		drive_clear(&c->drives[i]);
	else
		c->n_drives++;
	c->drives[i] = *d;
	memset(d, 0, sizeof(*d));
	for (size_t k = 1; k < c->n_drives; k++) {
		if (!c->drives[k].is_root_device)
			continue;
		struct kvmm_drive root = c->drives[k];
		memmove(&c->drives[1], &c->drives[0], k * sizeof(c->drives[0]));
		c->drives[0] = root;
		break;
	}
}

static int put_drive(struct kvmm_config *c, json_t *o, const char *where, const char *path_id, char *err,
		     size_t errlen)
{
	static const char *const allowed[] = {"drive_id",   "path_on_host", "is_root_device", "is_read_only",
					      "cache_type", "io_engine",    NULL};
	struct kvmm_drive d = {.is_read_only = true};
	char *id = NULL;
	int r;
	if ((r = check_fields(o, where, allowed, err, errlen)) < 0 ||
	    (r = get_str(o, where, "drive_id", true, true, KVMM_DRIVE_ID_MAX - 1, &id, err, errlen)) < 0)
		return r;
	if (!drive_id_ok(id)) {
		r = err_set(err, errlen, -EINVAL, "%s.drive_id: \"%.64s\" must be 1..%d letters, digits or '_'", where,
			 id, KVMM_DRIVE_ID_MAX - 1);
		goto out;
	}
	if (path_id && strcmp(path_id, id) != 0) {
		r = err_set(err, errlen, -EINVAL, "%s.drive_id: \"%s\" does not match the drive id in the path (\"%.64s\")",
			 where, id, path_id);
		goto out;
	}
	strcpy(d.drive_id, id);
	if (!field(o, "is_root_device")) {
		r = err_set(err, errlen, -EINVAL, "%s.is_root_device: missing (required)", where);
		goto out;
	}
	bool ro = true;
	if ((r = get_bool(o, where, "is_root_device", &d.is_root_device, err, errlen)) < 0 ||
	    (r = get_bool(o, where, "is_read_only", &ro, err, errlen)) < 0 ||
	    (r = want_str(o, where, "cache_type", "Unsafe", err, errlen)) < 0 ||
	    (r = want_str(o, where, "io_engine", "Sync", err, errlen)) < 0 ||
	    (r = get_str(o, where, "path_on_host", true, true, PATH_MAX - 1, &d.path_on_host, err, errlen)) < 0)
		goto out;
	if (!ro) {
		r = err_set(err, errlen, -EINVAL,
			 "%s.is_read_only: kvmm's virtio-blk is read-only; set it to true (or leave it out)", where);
		goto out;
	}
	size_t i;
	for (i = 0; i < c->n_drives && strcmp(c->drives[i].drive_id, d.drive_id) != 0; i++)
		;
	if (d.is_root_device)
		for (size_t k = 0; k < c->n_drives; k++)
			if (k != i && c->drives[k].is_root_device) {
				r = err_set(err, errlen, -EINVAL,
					 "%s.is_root_device: drive \"%s\" is already the root device; only one may be",
					 where, c->drives[k].drive_id);
				goto out;
			}
	if (i == c->n_drives && c->n_drives == KVMM_MAX_DRIVES) {
		r = err_set(err, errlen, -ENOSPC, "%s: kvmm supports at most %d drives", where, KVMM_MAX_DRIVES);
		goto out;
	}
	drive_commit(c, i, &d);
	r = 0;
out:
	free(id);
	drive_clear(&d);
	return r;
}

static int put_vsock(struct kvmm_config *c, json_t *o, const char *where, char *err, size_t errlen)
{
	static const char *const allowed[] = {"guest_cid", "uds_path", "vsock_id", NULL};
	uint64_t cid;
	char *uds = NULL, *vid = NULL;
	int r;
	/* CIDs 0..2 are the hypervisor, local and host; 0xffffffff is VMADDR_CID_ANY. */
	if ((r = check_fields(o, where, allowed, err, errlen)) < 0 ||
	    (r = get_uint(o, where, "guest_cid", true, 3, UINT32_MAX - 1, &cid, err, errlen)) < 0 ||
	    (r = get_str(o, where, "vsock_id", false, false, 256, &vid, err, errlen)) < 0 ||
	    (r = get_str(o, where, "uds_path", true, true, KVMM_UDS_PATH_MAX, &uds, err, errlen)) < 0) {
		free(vid);
		return r;
	}
	free(vid);
	free(c->vsock_uds_path);
	c->vsock_uds_path = uds;
	c->guest_cid = (uint32_t)cid;
	c->has_vsock = true;
	return 0;
}

static int put_obj(struct kvmm_config *c, enum kvmm_resource r, const char *id, json_t *o, const char *where,
		   char *err, size_t errlen)
{
	switch (r) {
	case KVMM_RES_MACHINE:
		return put_machine(c, o, where, err, errlen);
	case KVMM_RES_BOOT:
		return put_boot(c, o, where, err, errlen);
	case KVMM_RES_DRIVE:
		return put_drive(c, o, where, id, err, errlen);
	case KVMM_RES_VSOCK:
		return put_vsock(c, o, where, err, errlen);
	}
	return err_set(err, errlen, -EINVAL, "unknown resource %d", (int)r);
}

static const char *res_name(enum kvmm_resource r)
{
	switch (r) {
	case KVMM_RES_MACHINE:
		return "machine-config";
	case KVMM_RES_BOOT:
		return "boot-source";
	case KVMM_RES_DRIVE:
		return "drive";
	case KVMM_RES_VSOCK:
		return "vsock";
	}
	return "?";
}

/* Parse untrusted JSON text: duplicate keys refused (which one would win is
 * exactly the ambiguity an attacker likes), trailing bytes refused. */
static json_t *parse(const char *text, size_t len, const char *what, char *err, size_t errlen)
{
	json_error_t je;
	json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
	if (!j)
		err_set(err, errlen, -EINVAL, "%s: invalid JSON at line %d column %d: %s", what, je.line, je.column,
		     je.text);
	return j;
}

int kvmm_config_put(struct kvmm_config *c, enum kvmm_resource r, const char *id, const char *json, size_t len,
		    char *err, size_t errlen)
{
	const char *where = res_name(r);
	json_t *o = parse(json, len, where, err, errlen);
	if (!o)
		return -EINVAL;
	int rc = put_obj(c, r, id, o, where, err, errlen);
	json_decref(o);
	return rc;
}

/* ---- the config file ------------------------------------------------------------------ */

/* Firecracker sections kvmm has no device for: accepted when they say
 * nothing (null, [] or {}), so its own example files load. */
static const char *const empty_ok[] = {"network-interfaces", "logger", "metrics", "balloon", "mmds-config",
				       "entropy", "cpu-config", "pmem", "memory-hotplug", NULL};

static bool is_empty(json_t *v)
{
	return json_is_null(v) || (json_is_array(v) && json_array_size(v) == 0) ||
	       (json_is_object(v) && json_object_size(v) == 0);
}

static int load_drives(struct kvmm_config *c, json_t *arr, char *err, size_t errlen)
{
	if (!json_is_array(arr))
		return err_set(err, errlen, -EINVAL, "drives: expected an array");
	for (size_t i = 0; i < c->n_drives; i++)
		drive_clear(&c->drives[i]);
	c->n_drives = 0;
	size_t i;
	json_t *d;
	json_array_foreach(arr, i, d)
	{
		char where[32];
		snprintf(where, sizeof(where), "drives[%zu]", i);
		/* A config file naming one id twice is a mistake, not an update. */
		const char *id = json_string_value(json_object_get(d, "drive_id"));
		for (size_t k = 0; id && k < c->n_drives; k++)
			if (strcmp(c->drives[k].drive_id, id) == 0)
				return err_set(err, errlen, -EINVAL, "%s.drive_id: \"%s\" is used by an earlier drive", where,
					    c->drives[k].drive_id);
		int r = put_drive(c, d, where, NULL, err, errlen);
		if (r < 0)
			return r;
	}
	return 0;
}

int kvmm_config_load_file(struct kvmm_config *c, const char *path, char *err, size_t errlen)
{
	uint8_t *buf;
	size_t len;
	int r = read_file_all(path, KVMM_CONFIG_FILE_MAX, &buf, &len);
	if (r == -EFBIG)
		return err_set(err, errlen, r, "%s: larger than %u bytes; is this a Firecracker config file?", path,
			    KVMM_CONFIG_FILE_MAX);
	if (r < 0)
		return err_set(err, errlen, r, "%s: %s", path, strerror(-r));
	json_t *top = parse((const char *)buf, len, path, err, errlen);
	free(buf);
	if (!top)
		return -EINVAL;
	r = 0;
	if (!json_is_object(top))
		r = err_set(err, errlen, -EINVAL, "%s: expected a JSON object at the top", path);
	const char *key;
	json_t *v;
	json_object_foreach(top, key, v)
	{
		if (r < 0)
			break;
		/* null is how GET /vm/config writes "not set". */
		if (strcmp(key, "boot-source") == 0 && json_is_null(v))
			boot_clear(c);
		else if (strcmp(key, "boot-source") == 0)
			r = put_boot(c, v, key, err, errlen);
		else if (strcmp(key, "machine-config") == 0 && json_is_null(v))
			continue;
		else if (strcmp(key, "machine-config") == 0)
			r = put_machine(c, v, key, err, errlen);
		else if (strcmp(key, "drives") == 0)
			r = load_drives(c, v, err, errlen);
		else if (strcmp(key, "vsock") == 0 && json_is_null(v))
			c->has_vsock = false;
		else if (strcmp(key, "vsock") == 0)
			r = put_vsock(c, v, key, err, errlen);
		else {
			bool known = false;
			for (const char *const *e = empty_ok; *e && !known; e++)
				known = strcmp(key, *e) == 0;
			if (!known)
				r = err_set(err, errlen, -EINVAL,
					 "%.64s: unknown section; kvmm reads boot-source, machine-config, drives and vsock",
					 key);
			else if (!is_empty(v))
				r = err_set(err, errlen, -EINVAL, "%s: not supported by kvmm; leave it out or empty", key);
		}
	}
	json_decref(top);
	return r;
}

/* ---- validation -------------------------------------------------------------------------- */

/* |path| must be readable, and a regular file (or a block device when
 * |blk_ok|). */
static int check_file(const char *field_name, const char *path, bool blk_ok, char *err, size_t errlen)
{
	struct stat st;
	if (stat(path, &st) < 0 || access(path, R_OK) < 0) {
		int e = errno;
		return err_set(err, errlen, -e, "%s: %s: %s", field_name, path, strerror(e));
	}
	if (!S_ISREG(st.st_mode) && !(blk_ok && S_ISBLK(st.st_mode)))
		return err_set(err, errlen, -EINVAL, "%s: %s is not a regular file%s", field_name, path,
			    blk_ok ? " or block device" : "");
	return 0;
}

int kvmm_config_validate(const struct kvmm_config *c, char *err, size_t errlen)
{
	if (c->vcpu_count < 1 || c->vcpu_count > KVMM_MAX_VCPUS)
		return err_set(err, errlen, -EINVAL, "machine-config.vcpu_count: %u is out of range 1..%d", c->vcpu_count,
			    KVMM_MAX_VCPUS);
	if (c->mem_size_mib < KVMM_MIN_MEM_MIB || c->mem_size_mib > KVMM_MAX_MEM_MIB)
		return err_set(err, errlen, -EINVAL, "machine-config.mem_size_mib: %u is out of range %u..%u",
			    c->mem_size_mib, KVMM_MIN_MEM_MIB, KVMM_MAX_MEM_MIB);
	if (!c->kernel_image_path || !*c->kernel_image_path)
		return err_set(err, errlen, -EINVAL, "boot-source.kernel_image_path: not set; PUT /boot-source first");
	if (c->boot_args && strlen(c->boot_args) >= KVMM_CMDLINE_MAX)
		return err_set(err, errlen, -EINVAL, "boot-source.boot_args: longer than %llu bytes",
			    (unsigned long long)KVMM_CMDLINE_MAX - 1);
	int r = check_file("boot-source.kernel_image_path", c->kernel_image_path, false, err, errlen);
	if (r < 0)
		return r;
	if (c->initrd_path && (r = check_file("boot-source.initrd_path", c->initrd_path, false, err, errlen)) < 0)
		return r;
	if (c->n_drives > KVMM_MAX_DRIVES)
		return err_set(err, errlen, -EINVAL, "drives: %zu drives, at most %d", c->n_drives, KVMM_MAX_DRIVES);
	size_t roots = 0;
	for (size_t i = 0; i < c->n_drives; i++) {
		const struct kvmm_drive *d = &c->drives[i];
		char name[KVMM_DRIVE_ID_MAX + 32];
		if (!memchr(d->drive_id, '\0', sizeof(d->drive_id)) || !drive_id_ok(d->drive_id))
			return err_set(err, errlen, -EINVAL, "drives[%zu].drive_id: not 1..%d letters, digits or '_'", i,
				    KVMM_DRIVE_ID_MAX - 1);
		for (size_t k = 0; k < i; k++)
			if (strcmp(c->drives[k].drive_id, d->drive_id) == 0)
				return err_set(err, errlen, -EINVAL, "drives[%zu].drive_id: \"%s\" is used twice", i,
					    d->drive_id);
		roots += d->is_root_device;
		if (!d->path_on_host || !*d->path_on_host)
			return err_set(err, errlen, -EINVAL, "drives[%zu].path_on_host: not set", i);
		snprintf(name, sizeof(name), "drives[%s].path_on_host", d->drive_id);
		if ((r = check_file(name, d->path_on_host, true, err, errlen)) < 0)
			return r;
	}
	if (roots > 1)
		return err_set(err, errlen, -EINVAL, "drives: %zu root devices; at most one may have is_root_device", roots);
	if (c->has_vsock) {
		if (c->guest_cid < 3 || c->guest_cid == UINT32_MAX)
			return err_set(err, errlen, -EINVAL, "vsock.guest_cid: %u is reserved; use 3 or more", c->guest_cid);
		if (!c->vsock_uds_path || !*c->vsock_uds_path)
			return err_set(err, errlen, -EINVAL, "vsock.uds_path: not set");
		/* kvmm connects to "{uds_path}_{port}" for guest-initiated
		 * connections: leave room for "_4294967295". */
		if (strlen(c->vsock_uds_path) + 11 > KVMM_UDS_PATH_MAX)
			return err_set(err, errlen, -EINVAL,
				    "vsock.uds_path: %zu bytes is too long for a unix socket with a \"_<port>\" suffix "
				    "(at most %d)",
				    strlen(c->vsock_uds_path), KVMM_UDS_PATH_MAX - 11);
	}
	return 0;
}

/* ---- back to JSON ---------------------------------------------------------------------------- */

static json_t *str_or_null(const char *s)
{
	return s ? json_string(s) : json_null();
}

char *kvmm_config_to_json(const struct kvmm_config *c)
{
	json_t *drives = json_array();
	json_t *top = NULL;
	if (!drives)
		goto oom;
	for (size_t i = 0; i < c->n_drives; i++) {
		const struct kvmm_drive *d = &c->drives[i];
		if (json_array_append_new(drives, json_pack("{s:s, s:o, s:b, s:b}", "drive_id", d->drive_id,
							    "path_on_host", str_or_null(d->path_on_host),
							    "is_root_device", d->is_root_device, "is_read_only",
							    d->is_read_only)) < 0)
			goto oom;
	}
	json_t *boot = c->kernel_image_path ? json_pack("{s:s, s:o, s:o}", "kernel_image_path", c->kernel_image_path,
							"initrd_path", str_or_null(c->initrd_path), "boot_args",
							str_or_null(c->boot_args))
					    : json_null();
	json_t *vsock = c->has_vsock ? json_pack("{s:I, s:o}", "guest_cid", (json_int_t)c->guest_cid, "uds_path",
						 str_or_null(c->vsock_uds_path))
				     : json_null();
	/* "o" steals its references, even when json_pack fails. */
	top = json_pack("{s:o, s:o, s:{s:I, s:I, s:b, s:b, s:s}, s:o}", "boot-source", boot, "drives", drives,
			"machine-config", "vcpu_count", (json_int_t)c->vcpu_count, "mem_size_mib",
			(json_int_t)c->mem_size_mib, "smt", 0, "track_dirty_pages", 0, "huge_pages", "None", "vsock",
			vsock);
	drives = NULL;
	if (!top)
		goto oom;
	char *s = json_dumps(top, JSON_COMPACT);
	json_decref(top);
	if (!s)
		errno = ENOMEM;
	return s;
oom:
	json_decref(drives);
	errno = ENOMEM;
	return NULL;
}
