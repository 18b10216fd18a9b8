/* The VM object shared by vm.c (creation, devices, lifetime) and vcpu.c (the
 * vCPUs' setup and their KVM_RUN loops).  Private to those two files. */
#ifndef KINDLING_KVMM_VM_INTERNAL_H
#define KINDLING_KVMM_VM_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "vmm/kvmm/boot.h"
#include "vmm/kvmm/config.h"
#include "vmm/kvmm/guest_mem.h"
#include "vmm/kvmm/i8042.h"
#include "vmm/kvmm/loop.h"
#include "vmm/kvmm/serial.h"
#include "vmm/kvmm/virtio_blk.h"
#include "vmm/kvmm/virtio_mmio.h"
#include "vmm/kvmm/virtio_vsock.h"

#define KVMM_MAX_DEVS (KVMM_MAX_DRIVES + 1) /* the drives and the vsock device */

struct kvm_run;
struct kvm_cpuid2;
struct kvm_msr_list;
struct kvmm_vm;

struct kvmm_vcpu {
	struct kvmm_vm *vm;
	unsigned index; /* also its APIC id */
	int fd;
	struct kvm_run *run; /* KVM's shared page(s), run_size bytes */
	pthread_t thread;
	bool started;
};

/* What a queue's ioeventfd callback needs to find its queue. */
struct kvmm_vm_notify {
	struct kvmm_vm_dev *dev;
	uint16_t queue;
};

enum kvmm_dev_kind { KVMM_DEV_BLK, KVMM_DEV_VSOCK };

/* One virtio-mmio device with its KVM plumbing.  |lock| guards the device
 * model: vCPU threads hold it around MMIO exits, the device loop around
 * queue notifications. */
struct kvmm_vm_dev {
	enum kvmm_dev_kind kind;
	union {
		struct virtio_blk blk;
		struct virtio_vsock vsock;
	} u;
	struct virtio_mmio_dev *mmio; /* inside |u| */
	bool model_ready;	      /* |u| was initialised (destroy it) */
	pthread_mutex_t lock;
	uint64_t base;
	uint32_t gsi;
	int irqfd;
	int queue_fd[VIRTIO_MMIO_MAX_QUEUES];
	struct kvmm_vm_notify notify[VIRTIO_MMIO_MAX_QUEUES];
	int disk_fd; /* the backing file of a drive, -1 otherwise */
	char label[KVMM_DRIVE_ID_MAX + 16];
};

struct kvmm_vm {
	int kvm_fd, vm_fd;
	size_t run_size;
	uint8_t *ram;
	uint64_t ram_size;
	struct guest_mem mem;
	struct boot_cpu boot;
	struct kvm_cpuid2 *cpuid; /* KVM_GET_SUPPORTED_CPUID (or a snapshot's), fixed up per vCPU */
	struct kvm_msr_list *msr_list; /* KVM_GET_MSR_INDEX_LIST, for snapshots */
	bool cap_xsave, cap_xcrs, cap_tsc_khz, cap_tsc_control;
	struct kvmm_config cfg; /* a copy, for snapshots (what a restore reopens) */
	int uffd_sock;		/* a Uffd restore's handler connection, open for the VM's life; -1 */
	int uffd;		/* and its userfaultfd, kept so the RAM never silently reads as zeros; -1 */

	unsigned n_vcpus;
	struct kvmm_vcpu vcpus[KVMM_MAX_VCPUS];

	/* The legacy devices on port I/O, under one lock: vCPU exits and the
	 * console input on the device loop. */
	pthread_mutex_t pio_lock;
	struct kvmm_serial serial;
	struct kvmm_i8042 i8042;
	int serial_irqfd, i8042_irqfd; /* irqfds on IRQ 4 and IRQ 1 */
	bool stdin_watched;
	/* Console input is never dropped: with the receive FIFO full, stdin is
	 * left unwatched (its writer waits) until the guest reads a byte; the
	 * vCPU that read it signals stdin_room_fd, and the device loop watches
	 * stdin again. */
	bool stdin_throttled;
	int stdin_room_fd; /* eventfd; -1 */

	size_t n_devs;
	struct kvmm_vm_dev devs[KVMM_MAX_DEVS];

	struct kvmm_loop loop;
	bool loop_ready;
	pthread_t loop_thread;
	bool loop_started;

	/* How the VM ends: the first vm_end() wins and wakes kvmm_vm_wait(). */
	pthread_mutex_t state_lock;
	pthread_cond_t state_cond;
	bool started, ended, joined;
	int result;
	atomic_bool stopping; /* vCPU loops check it before each KVM_RUN */
	/* Pause (under state_lock, signalled on state_cond): vCPU threads park
	 * outside KVM_RUN and the device loop parks in its pause_fd callback
	 * while |paused|; |parked| counts the vCPUs parked. */
	atomic_bool paused;
	unsigned parked;
	bool loop_parked;
	int pause_fd;
	int kick_signal;
	bool seccomp; /* each thread installs its allowlist (kvmm_seccomp_apply) */
};

/* End the VM with |result| (0 = the guest powered off or reset; -errno =
 * fatal), logging |why|; later calls are ignored.  Kicks every vCPU out of
 * KVM_RUN.  Any thread, with or without the pio or device locks held. */
void vm_end(struct kvmm_vm *vm, int result, const char *why);

/* After the guest read from the serial port: if console input was held back
 * for want of room and the receive FIFO has room now, have the device loop
 * watch stdin again (vm.c).  Call with pio_lock held. */
void vm_console_read(struct kvmm_vm *vm);

/* A VM object for |cfg| (copied) with /dev/kvm open, its capabilities
 * checked, the VM created with its irqchip and PIT, and the MSR index list
 * read; no RAM, devices or vCPUs yet (vm.c).  0 with |*out| set, or -errno
 * (logged) with nothing left. */
int vm_new(const struct kvmm_config *cfg, struct kvmm_vm **out);

/* Make the host mapping |ram| of |vm|->ram_size bytes (owned by |vm| from
 * now on) the guest's RAM: below the MMIO hole, then the rest above 4 GiB,
 * which is also the memory file's layout (vm.c).  0 or -errno (logged). */
int vm_set_ram(struct kvmm_vm *vm, uint8_t *ram);

/* The device loop, the console, the i8042 and the virtio devices of
 * |vm|->cfg with their ioeventfds and irqfds (vm.c).  0 or -errno (logged). */
int vm_add_devices(struct kvmm_vm *vm);

/* Create vCPU |i| of |vm| in its boot state (vcpu.c).  0 or -errno (logged). */
int vcpu_create(struct kvmm_vm *vm, unsigned i);

/* Create vCPU |i| of |vm| with its CPUID set and nothing else: a restore
 * sets the rest (vcpu.c).  0 or -errno (logged). */
int vcpu_create_bare(struct kvmm_vm *vm, unsigned i);

/* The vCPU thread's body (vcpu.c); |arg| is its struct kvmm_vcpu. */
void *vcpu_thread(void *arg);

/* Interrupt one vCPU's KVM_RUN so it sees |stopping| (vcpu.c). */
void vcpu_kick(struct kvmm_vcpu *c);

/* Release vCPU |c|'s descriptor and mapping (vcpu.c). */
void vcpu_close(struct kvmm_vcpu *c);

#endif
