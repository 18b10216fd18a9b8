/* kvmm: the VM (vm.c, vcpu.c): KVM setup, the guest's devices, the vCPU
 * threads and the device loop's thread.  Needs /dev/kvm; tests/nested/ runs it
 * under nested KVM. */
#ifndef KINDLING_KVMM_VM_H
#define KINDLING_KVMM_VM_H

#include <stdbool.h>

#include "vmm/kvmm/config.h"

/* Used when kvmm_config.boot_args is NULL.  The i8042 options are
 * Firecracker's less nopnp: the DSDT declares the keyboard controller, so
 * the driver finds it and its IRQ there (Ctrl+Alt+Del needs it); there is no
 * mouse and no multiplexer.  reboot=k resets through the same controller. */
#define KVMM_DEFAULT_CMDLINE "console=ttyS0 reboot=k panic=1 pci=off quiet i8042.noaux i8042.nomux i8042.dumbkbd"

struct kvmm_vm;

/* Build a VM from |cfg| (validated by the caller; only read during this
 * call): open /dev/kvm, create the VM with its in-kernel irqchip and PIT,
 * map |cfg|->mem_size_mib of guest RAM (MAP_NORESERVE, split around the MMIO
 * hole), load the kernel and initrd, write the ACPI tables, set up the
 * console on stdout (input from stdin when it can be polled), the i8042, one
 * virtio-blk per drive (root first) and the vsock device, each with its
 * ioeventfds and irqfd, and create the vCPUs in their boot state.  Nothing
 * runs yet.  Returns 0 with |*out| set, or -errno with the reason logged
 * (no /dev/kvm or no permission, a capability missing, a file that cannot be
 * read, a kernel that is not a bzImage, RAM too small) and nothing left
 * behind. */
int kvmm_vm_create(const struct kvmm_config *cfg, struct kvmm_vm **out);

/* Whether the VM's threads confine themselves with kvmm_seccomp_apply()
 * (vCPU threads and the device loop, before they run anything); on by
 * default.  Off is for debugging a filter.  Call before kvmm_vm_start(). */
void kvmm_vm_set_seccomp(struct kvmm_vm *vm, bool on);

/* Start the device-loop thread and one thread per vCPU, each confined by
 * its seccomp allowlist (see kvmm_vm_set_seccomp()).  Call once, after
 * kvmm_vm_create().  Returns 0, or -errno (logged) with any thread already
 * started stopped again. */
int kvmm_vm_start(struct kvmm_vm *vm);

/* Press Ctrl+Alt+Del on the guest's keyboard (Firecracker's SendCtrlAltDel);
 * any thread.  Returns 0, -EAGAIN if the VM is not running or its keyboard is
 * disabled, or -EBUSY if the guest has not read earlier keys yet. */
int kvmm_vm_send_ctrl_alt_del(struct kvmm_vm *vm);

/* Pause the VM (Firecracker's PATCH /vm "Paused"): every vCPU completes its
 * last exit and parks outside KVM_RUN, and the device loop parks between
 * callbacks, so guest memory and device state hold still.  Returns once all
 * have parked: 0 (also when already paused), or -EAGAIN if the VM is not
 * running.  Any thread but the VM's own. */
int kvmm_vm_pause(struct kvmm_vm *vm);

/* Let a paused VM run again (PATCH /vm "Resumed").  0 (also when it was not
 * paused), or -EAGAIN if the VM is not running. */
int kvmm_vm_resume(struct kvmm_vm *vm);

/* Whether the VM is paused (or was restored without resume_vm). */
bool kvmm_vm_is_paused(struct kvmm_vm *vm);

/* Write a Full snapshot of the paused |vm|: guest RAM to |mem_path| (the
 * regions in guest-physical order, [0, min(mem, 3 GiB)) then the part above
 * 4 GiB, sparse: all-zero pages are holes) and the VM state to
 * |vmstate_path| (vmstate.h), each under a temporary name then renamed, so
 * nothing half-written is ever left under either name.  Returns 0, -EAGAIN
 * if the VM is not paused, or -errno, with a message naming the file and the
 * fault in |<err, errlen>| (also logged).  Call from one thread at a time
 * (the API's). */
int kvmm_vm_snapshot_create(struct kvmm_vm *vm, const char *vmstate_path, const char *mem_path, char *err,
			    size_t errlen);

/* Where a restored VM's memory comes from. */
enum kvmm_mem_backend_type {
	KVMM_MEM_FILE, /* |path| is the memory file, mapped MAP_PRIVATE */
	KVMM_MEM_UFFD, /* |path| is a page-fault handler's unix socket (README: the Uffd handshake) */
};

/* Build a VM from the snapshot at |vmstate_path| with memory from
 * |backend|/|backend_path|: check the file whole (vmstate.h's parser), apply
 * |ov| (NULL = none; a drive_id the snapshot lacks is -ENOENT, a uds_path too
 * long for a unix socket -ENAMETOOLONG), reopen the drives and the vsock
 * socket the configuration then names, map the memory (a File
 * must be exactly the RAM size), and put every vCPU, the irqchip, PIT, clock
 * and device back as they were; every KVM set call must succeed.  Nothing
 * runs yet: start it with kvmm_vm_start(), paused unless |resume|.  After a
 * start, pending virtqueue work is picked up and interrupts that were
 * pending are raised again; the vsock device tells the guest its transport
 * was reset.  Returns 0 with |*out| set and |cfg_out| (initialised by the
 * caller) replaced by the snapshot's configuration, or -errno with a message
 * naming the file and the fault in |<err, errlen>| and nothing left behind. */
int kvmm_vm_restore(const char *vmstate_path, enum kvmm_mem_backend_type backend, const char *backend_path,
		    const struct kvmm_restore_overrides *ov, bool resume, struct kvmm_config *cfg_out, struct kvmm_vm **out, char *err, size_t errlen);

/* Block until the VM ends, then stop and join its threads.  Returns 0 when
 * the guest powered off or reset itself (ACPI sleep, i8042 reset, triple
 * fault), or -errno after a fatal error (logged where it happened: KVM_RUN
 * failed, an internal KVM error, an unexpected exit).  Call once, after
 * kvmm_vm_start() returned 0. */
int kvmm_vm_wait(struct kvmm_vm *vm);

/* Stop whatever still runs, close every descriptor, unmap guest RAM and free
 * |vm|.  Accepts NULL. */
void kvmm_vm_destroy(struct kvmm_vm *vm);

#endif
