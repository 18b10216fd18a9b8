/* kvmm: the VM's configuration (config.c). */
#ifndef KINDLING_KVMM_CONFIG_H
#define KINDLING_KVMM_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What Firecracker's API and --config-file set, in Firecracker's terms.
 * Strings are malloc'd and owned by the config. */
#define KVMM_MAX_DRIVES 8
#define KVMM_DRIVE_ID_MAX 64

struct kvmm_drive {
	char drive_id[KVMM_DRIVE_ID_MAX];
	char *path_on_host;
	bool is_root_device;
	bool is_read_only;
};

struct kvmm_config {
	unsigned vcpu_count;   /* 1..32, default 1 */
	unsigned mem_size_mib; /* default 128 */
	char *kernel_image_path;
	char *initrd_path; /* NULL = none */
	char *boot_args;   /* NULL = kvmm's default command line */
	struct kvmm_drive drives[KVMM_MAX_DRIVES];
	size_t n_drives;
	bool has_vsock;
	uint32_t guest_cid; /* >= 3 */
	char *vsock_uds_path;
};

/* What a snapshot load may change in the snapshot's configuration before
 * the VM is rebuilt, so that a restore can run somewhere the snapshotted
 * kvmm's paths no longer exist.  Strings are borrowed from the caller.
 * |vsock_uds_path| is Firecracker's "vsock_override" (NULL = the saved
 * path); |drives| is kindling's "drive_overrides" extension: each names a
 * drive_id the snapshot has and the file to open instead (which must have
 * the saved size). */
struct kvmm_restore_overrides {
	const char *vsock_uds_path;
	struct {
		const char *drive_id;
		const char *path_on_host;
	} drives[KVMM_MAX_DRIVES];
	size_t n_drives;
};

/* Limits the config enforces (Firecracker's where it has one). */
#define KVMM_MAX_VCPUS 32
#define KVMM_MIN_MEM_MIB 2u	     /* what e820_build() needs; a real kernel needs far more */
#define KVMM_MAX_MEM_MIB (1u << 20) /* 1 TiB: keeps mem_size_mib << 20 far from overflow */
#define KVMM_UDS_PATH_MAX 107	     /* sun_path less its NUL */
#define KVMM_CONFIG_FILE_MAX (1u << 20)

/* The resources Firecracker's API and config file set, one JSON object each. */
enum kvmm_resource {
	KVMM_RES_MACHINE, /* "machine-config": vcpu_count, mem_size_mib (required); smt, track_dirty_pages (false
			   * only), cpu_template, huge_pages ("None" only) */
	KVMM_RES_BOOT,	  /* "boot-source": kernel_image_path (required), initrd_path, boot_args */
	KVMM_RES_DRIVE,	  /* "drives" entry: drive_id, is_root_device (required), path_on_host (required),
			   * is_read_only (true or absent: kvmm's virtio-blk is read-only), cache_type "Unsafe",
			   * io_engine "Sync" */
	KVMM_RES_VSOCK,	  /* "vsock": guest_cid >= 3, uds_path (required), vsock_id (accepted, ignored) */
};

/* Reset |c| to Firecracker's defaults: 1 vCPU, 128 MiB, nothing else set.
 * Call once before any other kvmm_config_* function on |c|. */
void kvmm_config_init(struct kvmm_config *c);

/* Free the strings |c| owns and leave it as kvmm_config_init() does.
 * Accepts NULL. */
void kvmm_config_free(struct kvmm_config *c);

/* Make |dst| (not initialised, or freed) a deep copy of |src|.  Returns 0, or
 * -ENOMEM with |dst| left as kvmm_config_init() does. */
int kvmm_config_copy(struct kvmm_config *dst, const struct kvmm_config *src);

/* Apply the JSON object |<json, len>| (untrusted: an API body or a piece of a
 * config file) to resource |r| of |c|, with Firecracker's rules: unknown
 * fields, wrong types, duplicate keys and out-of-range values are refused;
 * a PUT of machine-config, boot-source or vsock replaces that resource whole
 * (absent optional fields take their defaults).  For KVMM_RES_DRIVE, |id| is
 * the drive_id from the request path, which the body's drive_id must equal
 * (NULL for config files: the body's id is taken); a drive with an existing
 * id is replaced in place; a new one is appended (-ENOSPC past
 * KVMM_MAX_DRIVES); at most one drive is the root device, and that drive is
 * always moved to drives[0] so the guest sees it as /dev/vda.  |id| is
 * ignored for the other resources.
 * Returns 0 with |c| updated, or -EINVAL/-ENOSPC/-ENOMEM with |c| unchanged
 * and a message naming the field in |<err, errlen>| (Firecracker's
 * fault_message); nothing is logged. */
int kvmm_config_put(struct kvmm_config *c, enum kvmm_resource r, const char *id, const char *json, size_t len,
		    char *err, size_t errlen);

/* Load Firecracker's --config-file format from |path| (at most
 * KVMM_CONFIG_FILE_MAX bytes) into |c| (initialised by the caller; what the
 * file sets replaces what |c| had): an object with "boot-source",
 * "machine-config", "drives" (an array), "vsock" (an object or null), and
 * Firecracker's other sections accepted only when empty ("network-interfaces"
 * [], "logger" null, ...).  It does not call kvmm_config_validate().
 * Returns 0; -ENOENT/-EACCES/-EFBIG/-errno reading the file; -EINVAL/-ENOSPC
 * for content, with |c| partly updated (free it) and |<err, errlen>| naming
 * the section and field ("drives[1].path_on_host: ...").  Nothing is logged. */
int kvmm_config_load_file(struct kvmm_config *c, const char *path, char *err, size_t errlen);

/* Check that |c| can boot: a kernel_image_path, vCPU and memory counts in
 * range, at most one root drive, distinct drive ids, a vsock with guest_cid
 * >= 3 and a uds_path that fits a unix socket address; and that the kernel,
 * the initrd and every drive's path_on_host are readable regular files (or
 * block devices, for drives) right now, relative to the current root.
 * Returns 0, or -EINVAL/-ENOENT/-EACCES with the field named in
 * |<err, errlen>|.  Nothing is logged. */
int kvmm_config_validate(const struct kvmm_config *c, char *err, size_t errlen);

/* The configuration as Firecracker's GET /vm/config returns it, a malloc'd
 * NUL-terminated JSON text the caller frees; kvmm_config_load_file() reads
 * it back.  Returns NULL with errno = ENOMEM on failure. */
char *kvmm_config_to_json(const struct kvmm_config *c);

#endif
