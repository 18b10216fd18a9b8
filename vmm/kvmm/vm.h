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
