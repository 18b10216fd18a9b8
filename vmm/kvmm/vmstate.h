/* kvmm: the snapshot's VM-state file (vmstate.c), kvmm's own versioned binary
 * format, and its ONE checked parser.
 *
 * A file is a fixed header then a body of sections:
 *
 *   header (KVMM_VMSTATE_HEADER_LEN bytes, integers little-endian)
 *     magic "KVMMSNAP", u32 format version, u32 header length,
 *     char[64] the writer's kvmm version and build (NUL-padded),
 *     u64 body length, SHA-256 of the body, 8 reserved zero bytes
 *   body: sections, each u32 tag, u32 payload length, payload, in this order:
 *     CONFIG   vcpus, mem MiB, drives (id, path_on_host, root, read-only),
 *              vsock (cid, uds_path)
 *     CPUID    the KVM_GET_SUPPORTED_CPUID list the VM used (each vCPU's
 *              fixups are derived from it again, as at boot)
 *     VCPU     one per vCPU: REGS, SREGS, XSAVE or FPU, XCRS (if any), LAPIC,
 *              MSRs, VCPU_EVENTS, DEBUGREGS, MP_STATE, TSC kHz
 *     VM       KVM_GET_CLOCK, the PIC master and slave and IOAPIC, KVM_GET_PIT2
 *     SERIAL   the 16550A's registers and receive FIFO
 *     I8042    the keyboard controller's registers and output queue
 *     VIRTIO   one per virtio-mmio device, in ACPI order: its kind, the
 *              transport's registers and every queue, the model's state
 *   KVM structures travel as their ABI bytes, each with its length, which
 *   must equal the structure's size.
 *
 * Nothing here touches KVM: the VM side (snapshot.c) fills and applies a
 * struct kvmm_vmstate, and the unit test and fuzz target run without it. */
#ifndef KINDLING_KVMM_VMSTATE_H
#define KINDLING_KVMM_VMSTATE_H

#include <linux/kvm.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vmm/kvmm/config.h"
#include "vmm/kvmm/serial.h"
#include "vmm/kvmm/i8042.h"
#include "vmm/kvmm/virtio_mmio.h"

#define KVMM_VMSTATE_MAGIC "KVMMSNAP"
#define KVMM_VMSTATE_VERSION 1u
#define KVMM_VMSTATE_HEADER_LEN 128u
#define KVMM_VMSTATE_BUILD_LEN 64u
#define KVMM_VMSTATE_MAX_MSRS 512u
#define KVMM_VMSTATE_MAX_CPUID 1024u
#define KVMM_VMSTATE_MAX_DEVS (KVMM_MAX_DRIVES + 1)
#define KVMM_VMSTATE_MAX_BODY (64u << 20) /* far above 32 vCPUs' worth */

enum kvmm_vmstate_dev_kind { KVMM_VMSTATE_DEV_BLK = 1, KVMM_VMSTATE_DEV_VSOCK = 2 };

struct kvmm_vmstate_vcpu {
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	bool has_xsave; /* else |fpu| */
	struct kvm_xsave xsave;
	struct kvm_fpu fpu;
	bool has_xcrs;
	struct kvm_xcrs xcrs;
	struct kvm_lapic_state lapic;
	struct kvm_vcpu_events events;
	struct kvm_debugregs debugregs;
	struct kvm_mp_state mp_state;
	uint32_t tsc_khz; /* 0: the host did not say; not set on restore */
	uint32_t n_msrs;
	struct kvm_msr_entry msrs[KVMM_VMSTATE_MAX_MSRS];
};

/* One virtqueue as the transport and the ring code hold it. */
struct kvmm_vmstate_queue {
	struct virtio_mmio_qcfg qcfg;
	bool ready, event_idx;
	uint16_t size, last_avail, used_idx, signalled_used;
	uint64_t desc_gpa, avail_gpa, used_gpa;
};

struct kvmm_vmstate_dev {
	uint32_t kind; /* enum kvmm_vmstate_dev_kind */
	uint32_t status, device_features_sel, driver_features_sel, queue_sel, interrupt_status, config_generation;
	uint64_t driver_features;
	uint16_t n_queues; /* 1..VIRTIO_MMIO_MAX_QUEUES */
	struct kvmm_vmstate_queue q[VIRTIO_MMIO_MAX_QUEUES];
	/* The models: virtio-blk's disk size and counters; vsock's cid. */
	uint64_t blk_size, blk_requests, blk_errors;
	uint64_t vsock_cid;
};

struct kvmm_vmstate_serial {
	uint8_t ier, lcr, mcr, scr, dll, dlm, lsr_errors;
	bool fifo_enabled, thr_pending, irq_level;
	uint8_t rx_len; /* <= KVMM_SERIAL_FIFO, the bytes in order */
	uint8_t rx[KVMM_SERIAL_FIFO];
};

struct kvmm_vmstate_i8042 {
	uint8_t ctr, output_port, pending_cmd, kbd_pending, scancode_set, last_out;
	bool last_was_cmd;
	uint8_t out_len; /* <= KVMM_I8042_QUEUE, the bytes in order */
	uint8_t out[KVMM_I8042_QUEUE];
};

/* A whole VM's state.  Large (tens of KiB per vCPU): allocate it with
 * kvmm_vmstate_new(). */
struct kvmm_vmstate {
	char build[KVMM_VMSTATE_BUILD_LEN]; /* the writer's; NUL-terminated */
	struct kvmm_config cfg;		    /* vcpus, memory, drives, vsock (no kernel) */
	uint32_t n_cpuid;
	struct kvm_cpuid_entry2 cpuid[KVMM_VMSTATE_MAX_CPUID];
	struct kvmm_vmstate_vcpu vcpu[KVMM_MAX_VCPUS]; /* cfg.vcpu_count of them */
	struct kvm_clock_data clock;
	struct kvm_irqchip pic_master, pic_slave, ioapic;
	struct kvm_pit_state2 pit;
	struct kvmm_vmstate_serial serial;
	struct kvmm_vmstate_i8042 i8042;
	uint32_t n_devs;
	struct kvmm_vmstate_dev devs[KVMM_VMSTATE_MAX_DEVS];
};

/* A zeroed state with an initialised (empty) config, or NULL with errno =
 * ENOMEM.  Free it with kvmm_vmstate_free(). */
struct kvmm_vmstate *kvmm_vmstate_new(void);

/* Free |s| and the config strings it owns.  Accepts NULL. */
void kvmm_vmstate_free(struct kvmm_vmstate *s);

/* The writer's identity stored in every header, e.g. "kvmm 0.1.0 vmstate 1". */
const char *kvmm_vmstate_build(void);

/* Serialise |s| (its build field is ignored: kvmm_vmstate_build() is
 * written) into a malloc'd buffer |*out| of |*out_len| bytes, header and
 * checksum included.  Returns 0, -EINVAL for a state out of the format's
 * limits (counts, strings; |<err, errlen>| says which), or -ENOMEM. */
int kvmm_vmstate_encode(const struct kvmm_vmstate *s, uint8_t **out, size_t *out_len, char *err, size_t errlen);

/* THE parser of vmstate files: check and decode |<buf, len>| (untrusted) into
 * |s| (from kvmm_vmstate_new(); its previous config is freed).  Checked in
 * order: the header's length and magic, the format version, the body length
 * against the file, the SHA-256, then every section's tag, length and counts
 * (vCPUs, MiB, drives, MSRs, CPUID entries, devices and queues within the
 * limits above, strings NUL-free and bounded, booleans 0 or 1, nothing left
 * over).  Returns 0; -EINVAL (not a vmstate file, truncated, malformed),
 * -EPROTONOSUPPORT (another format version: the message names both),
 * -EBADMSG (checksum mismatch), -ENOMEM; on error |<err, errlen>| says what
 * is wrong and |s| holds nothing that needs freeing beyond
 * kvmm_vmstate_free(). */
int kvmm_vmstate_decode(const uint8_t *buf, size_t len, struct kvmm_vmstate *s, char *err, size_t errlen);

#endif
