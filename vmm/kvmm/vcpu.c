/* The vCPUs: their boot state (CPUID, MSRs, local APIC, registers) and the
 * KVM_RUN loop, one thread each, turning exits into device calls:
 *
 *   port I/O   the console UART, the i8042, the ACPI sleep register; port 0x80
 *              and everything else read as all-ones and ignore writes (no
 *              device there), as on a PC;
 *   MMIO       the virtio-mmio windows, under the device's lock (queue
 *              notifications mostly bypass us through ioeventfds);
 *   shutdown   a triple fault: the guest reset itself;
 *   the rest   fatal, logged with what KVM said. */
#include <errno.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define LOG_COMPONENT "kvmm"
#include "common/common.h"
#include "vmm/kvmm/boot.h"
#include "vmm/kvmm/cpuid.h"
#include "vmm/kvmm/i8042.h"
#include "vmm/kvmm/jail.h"
#include "vmm/kvmm/layout.h"
#include "vmm/kvmm/serial.h"
#include "vmm/kvmm/virtio_mmio.h"
#include "vmm/kvmm/vm_internal.h"

#define MSR_IA32_TSC 0x10
#define MSR_IA32_SYSENTER_CS 0x174
#define MSR_IA32_SYSENTER_ESP 0x175
#define MSR_IA32_SYSENTER_EIP 0x176
#define MSR_IA32_MISC_ENABLE 0x1a0
#define MSR_MTRR_DEF_TYPE 0x2ff
#define MSR_STAR 0xc0000081
#define MSR_LSTAR 0xc0000082
#define MSR_CSTAR 0xc0000083
#define MSR_SYSCALL_MASK 0xc0000084
#define MSR_KERNEL_GS_BASE 0xc0000102

#define MISC_ENABLE_FAST_STRING 1ull
#define MTRR_ENABLE (1ull << 11)
#define MTRR_TYPE_WB 6ull

#define APIC_LVT_LINT0 0x350
#define APIC_LVT_LINT1 0x360
#define APIC_MODE_MASK 0x700u
#define APIC_MODE_NMI 0x400u
#define APIC_MODE_EXTINT 0x700u

#define SLP_TYP_SHIFT 2
#define SLP_TYP_MASK 7u
#define SLP_EN 0x20u
#define SLP_TYP_S5 5u

static int vcpu_ioctl(struct kvmm_vcpu *c, unsigned long req, void *arg, const char *what)
{
	if (ioctl(c->fd, req, arg) < 0) {
		int e = errno;
		log_err("vCPU %u: %s: %s", c->index, what, strerror(e));
		return -e;
	}
	return 0;
}

static int setup_cpuid(struct kvmm_vcpu *c)
{
	struct kvmm_vm *vm = c->vm;
	size_t sz = sizeof(struct kvm_cpuid2) + vm->cpuid->nent * sizeof(struct kvm_cpuid_entry2);
	struct kvm_cpuid2 *mine = malloc(sz);
	if (!mine) {
		log_err("vCPU %u: out of memory for CPUID", c->index);
		return -ENOMEM;
	}
	memcpy(mine, vm->cpuid, sz);
	kvmm_cpuid_fixup(mine->entries, mine->nent, c->index, vm->n_vcpus);
	int r = vcpu_ioctl(c, KVM_SET_CPUID2, mine, "KVM_SET_CPUID2");
	free(mine);
	return r;
}

static int setup_msrs(struct kvmm_vcpu *c)
{
	/* What Linux expects a boot loader to leave: the syscall MSRs clear,
	 * fast strings on, and MTRRs enabled with write-back as the default
	 * type (without it the kernel treats RAM as uncached). */
	static const struct {
		uint32_t index;
		uint64_t data;
	} boot[] = {
		{ MSR_IA32_SYSENTER_CS, 0 },
		{ MSR_IA32_SYSENTER_ESP, 0 },
		{ MSR_IA32_SYSENTER_EIP, 0 },
		{ MSR_STAR, 0 },
		{ MSR_CSTAR, 0 },
		{ MSR_KERNEL_GS_BASE, 0 },
		{ MSR_SYSCALL_MASK, 0 },
		{ MSR_LSTAR, 0 },
		{ MSR_IA32_TSC, 0 },
		{ MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING },
		{ MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WB },
	};
	enum { N = sizeof(boot) / sizeof(boot[0]) };
	struct kvm_msrs *msrs = calloc(1, sizeof(*msrs) + N * sizeof(struct kvm_msr_entry));
	if (!msrs) {
		log_err("vCPU %u: out of memory for MSRs", c->index);
		return -ENOMEM;
	}
	msrs->nmsrs = N;
	for (size_t i = 0; i < N; i++) {
		msrs->entries[i].index = boot[i].index;
		msrs->entries[i].data = boot[i].data;
	}
	int r = 0, n = ioctl(c->fd, KVM_SET_MSRS, msrs);
	if (n < 0) {
		r = -errno;
		log_err("vCPU %u: KVM_SET_MSRS: %s", c->index, strerror(-r));
	} else if (n != N) {
		/* KVM stops at the first MSR it refuses and returns how many it set. */
		log_err("vCPU %u: KVM refused MSR 0x%x (set %d of %d); the host's KVM is too old or restricted",
			c->index, msrs->entries[n].index, n, (int)N);
		r = -EINVAL;
	}
	free(msrs);
	return r;
}

static uint32_t lapic_get(const struct kvm_lapic_state *s, size_t reg)
{
	uint32_t v;
	memcpy(&v, s->regs + reg, 4);
	return v;
}

static void lapic_set(struct kvm_lapic_state *s, size_t reg, uint32_t v)
{
	memcpy(s->regs + reg, &v, 4);
}

static int setup_lapic(struct kvmm_vcpu *c)
{
	/* LINT0 delivers the 8259's interrupts (ExtINT) and LINT1 NMIs, the
	 * wiring every PC firmware sets up and Linux relies on for the PIT
	 * check and the NMI watchdog. */
	struct kvm_lapic_state s;
	int r = vcpu_ioctl(c, KVM_GET_LAPIC, &s, "KVM_GET_LAPIC");
	if (r < 0)
		return r;
	lapic_set(&s, APIC_LVT_LINT0, (lapic_get(&s, APIC_LVT_LINT0) & ~APIC_MODE_MASK) | APIC_MODE_EXTINT);
	lapic_set(&s, APIC_LVT_LINT1, (lapic_get(&s, APIC_LVT_LINT1) & ~APIC_MODE_MASK) | APIC_MODE_NMI);
	return vcpu_ioctl(c, KVM_SET_LAPIC, &s, "KVM_SET_LAPIC");
}

/* A KVM segment from a GDT descriptor and its selector. */
static void seg_from_desc(struct kvm_segment *s, uint64_t d, uint16_t sel)
{
	uint32_t limit = (uint32_t)(d & 0xffff) | (uint32_t)((d >> 48) & 0xf) << 16;
	memset(s, 0, sizeof(*s));
	s->base = ((d >> 16) & 0xffffff) | ((d >> 56) & 0xff) << 24;
	s->g = (d >> 55) & 1;
	s->limit = s->g ? limit << 12 | 0xfff : limit;
	s->selector = sel;
	s->type = (d >> 40) & 0xf;
	s->s = (d >> 44) & 1;
	s->dpl = (d >> 45) & 3;
	s->present = (d >> 47) & 1;
	s->avl = (d >> 52) & 1;
	s->l = (d >> 53) & 1;
	s->db = (d >> 54) & 1;
	s->unusable = !s->present;
}

static int setup_boot_regs(struct kvmm_vcpu *c)
{
	const struct boot_cpu *b = &c->vm->boot;
	struct kvm_sregs sr;
	int r = vcpu_ioctl(c, KVM_GET_SREGS, &sr, "KVM_GET_SREGS");
	if (r < 0)
		return r;
	seg_from_desc(&sr.cs, b->code_desc, b->cs);
	seg_from_desc(&sr.ds, b->data_desc, b->ds);
	sr.es = sr.fs = sr.gs = sr.ss = sr.ds;
	/* VM entry on Intel wants a busy 64-bit TSS in TR even though Linux
	 * loads its own before it needs one. */
	memset(&sr.tr, 0, sizeof(sr.tr));
	sr.tr.limit = 0x67;
	sr.tr.type = 11;
	sr.tr.present = 1;
	sr.gdt.base = b->gdt_base;
	sr.gdt.limit = b->gdt_limit;
	sr.idt.base = 0;
	sr.idt.limit = 0;
	sr.cr0 = b->cr0;
	sr.cr3 = b->cr3;
	sr.cr4 = b->cr4;
	sr.efer = b->efer;
	r = vcpu_ioctl(c, KVM_SET_SREGS, &sr, "KVM_SET_SREGS");
	if (r < 0)
		return r;

	struct kvm_regs regs;
	memset(&regs, 0, sizeof(regs));
	regs.rip = b->rip;
	regs.rsi = b->rsi;
	regs.rsp = b->rsp;
	regs.rbp = b->rsp;
	regs.rflags = b->rflags;
	return vcpu_ioctl(c, KVM_SET_REGS, &regs, "KVM_SET_REGS");
}

static int setup_fpu(struct kvmm_vcpu *c)
{
	struct kvm_fpu fpu;
	memset(&fpu, 0, sizeof(fpu));
	fpu.fcw = 0x37f;     /* FNINIT's control word */
	fpu.mxcsr = 0x1f80; /* all SSE exceptions masked */
	return vcpu_ioctl(c, KVM_SET_FPU, &fpu, "KVM_SET_FPU");
}

int vcpu_create_bare(struct kvmm_vm *vm, unsigned i)
{
	struct kvmm_vcpu *c = &vm->vcpus[i];
	c->vm = vm;
	c->index = i;
	c->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, (unsigned long)i);
	if (c->fd < 0) {
		int e = errno;
		c->fd = -1;
		log_err("KVM_CREATE_VCPU %u: %s", i, strerror(e));
		return -e;
	}
	void *run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, c->fd, 0);
	if (run == MAP_FAILED) {
		int e = errno;
		log_err("vCPU %u: mapping its kvm_run area: %s", i, strerror(e));
		return -e;
	}
	c->run = run;
	return setup_cpuid(c);
}

int vcpu_create(struct kvmm_vm *vm, unsigned i)
{
	struct kvmm_vcpu *c = &vm->vcpus[i];
	int r = vcpu_create_bare(vm, i);
	if (r == 0)
		r = setup_msrs(c);
	if (r == 0)
		r = setup_lapic(c);
	if (r == 0)
		r = setup_fpu(c);
	/* Application processors wait in KVM for the BSP's INIT-SIPI-SIPI,
	 * which sets their registers; only the BSP starts at the kernel. */
	if (r == 0 && i == 0)
		r = setup_boot_regs(c);
	return r;
}

void vcpu_close(struct kvmm_vcpu *c)
{
	if (c->run)
		munmap(c->run, c->vm->run_size);
	if (c->fd >= 0)
		close(c->fd);
	c->run = NULL;
	c->fd = -1;
}

void vcpu_kick(struct kvmm_vcpu *c)
{
	/* immediate_exit makes the next KVM_RUN return at once; the signal
	 * interrupts one already in progress (or halted in the kernel).
	 * Together they leave no window in which the stop is missed. */
	if (c->run)
		__atomic_store_n(&c->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
	if (c->started)
		pthread_kill(c->thread, c->vm->kick_signal);
}

/* ---- exits -------------------------------------------------------------------------------------------------------- */

static void sleep_write(struct kvmm_vm *vm, uint8_t v)
{
	if ((v & SLP_EN) && ((v >> SLP_TYP_SHIFT) & SLP_TYP_MASK) == SLP_TYP_S5)
		vm_end(vm, 0, "the guest powered off (ACPI S5)");
	else if (v & SLP_EN)
		log_warn("guest asked for sleep state %u, which kvmm does not offer; ignored",
			 (v >> SLP_TYP_SHIFT) & SLP_TYP_MASK);
}

static uint8_t pio_in(struct kvmm_vm *vm, uint16_t port)
{
	if (port >= KVMM_SERIAL_PORT && port < KVMM_SERIAL_PORT + 8) {
		uint8_t v = kvmm_serial_read(&vm->serial, (uint16_t)(port - KVMM_SERIAL_PORT));
		vm_console_read(vm);
		return v;
	}
	if (port == KVMM_I8042_DATA_PORT || port == KVMM_I8042_CMD_PORT)
		return kvmm_i8042_read(&vm->i8042, port);
	if (port == KVMM_SLEEP_PORT)
		return 0; /* sleep status: never woken from a sleep state */
	return 0xff; /* nothing on this port */
}

static void pio_out(struct kvmm_vm *vm, uint16_t port, uint8_t v)
{
	if (port >= KVMM_SERIAL_PORT && port < KVMM_SERIAL_PORT + 8)
		kvmm_serial_write(&vm->serial, (uint16_t)(port - KVMM_SERIAL_PORT), v);
	else if (port == KVMM_I8042_DATA_PORT || port == KVMM_I8042_CMD_PORT)
		kvmm_i8042_write(&vm->i8042, port, v);
	else if (port == KVMM_SLEEP_PORT)
		sleep_write(vm, v);
	/* 0x80 (POST codes, the kernel's I/O delay) and unclaimed ports: dropped. */
}

static void handle_io(struct kvmm_vcpu *c)
{
	struct kvm_run *run = c->run;
	struct kvmm_vm *vm = c->vm;
	uint8_t *data = (uint8_t *)run + run->io.data_offset;
	uint32_t size = run->io.size, count = run->io.count;
	if (size != 1 && size != 2 && size != 4)
		return;
	if ((uint64_t)run->io.data_offset + (uint64_t)size * count > vm->run_size)
		return; /* KVM never does this; do not trust it blindly either */
	pthread_mutex_lock(&vm->pio_lock);
	for (uint32_t i = 0; i < count; i++, data += size) {
		/* Our devices are byte-wide: a wider access hits the first
		 * port and the other bytes read as nothing there. */
		if (run->io.direction == KVM_EXIT_IO_OUT) {
			pio_out(vm, run->io.port, data[0]);
		} else {
			memset(data, 0xff, size);
			data[0] = pio_in(vm, run->io.port);
		}
	}
	pthread_mutex_unlock(&vm->pio_lock);
}

static void handle_mmio(struct kvmm_vcpu *c)
{
	struct kvmm_vm *vm = c->vm;
	uint64_t addr = c->run->mmio.phys_addr;
	uint32_t len = c->run->mmio.len;
	uint8_t *data = c->run->mmio.data;
	if (len > sizeof(c->run->mmio.data))
		len = sizeof(c->run->mmio.data);
	if (addr >= KVMM_VIRTIO_MMIO_GPA) {
		uint64_t i = (addr - KVMM_VIRTIO_MMIO_GPA) / KVMM_VIRTIO_MMIO_STRIDE;
		uint64_t off = (addr - KVMM_VIRTIO_MMIO_GPA) % KVMM_VIRTIO_MMIO_STRIDE;
		if (i < vm->n_devs && off < KVMM_VIRTIO_MMIO_SIZE) {
			struct kvmm_vm_dev *d = &vm->devs[i];
			pthread_mutex_lock(&d->lock);
			int r = c->run->mmio.is_write ? virtio_mmio_write(d->mmio, off, data, len)
						      : virtio_mmio_read(d->mmio, off, data, len);
			pthread_mutex_unlock(&d->lock);
			if (r < 0)
				log_debug("%s: bad %u-byte %s at offset 0x%llx", d->label, len,
					  c->run->mmio.is_write ? "write" : "read", (unsigned long long)off);
			return;
		}
	}
	/* Unclaimed physical addresses read as all-ones, as on a PC bus. */
	if (!c->run->mmio.is_write)
		memset(data, 0xff, len);
	log_debug("vCPU %u: %s of %u bytes at 0x%llx: no device there", c->index,
		  c->run->mmio.is_write ? "write" : "read", len, (unsigned long long)addr);
}

static void log_internal_error(struct kvmm_vcpu *c)
{
	struct kvm_run *run = c->run;
	char extra[160] = "";
	size_t used = 0;
	for (uint32_t i = 0; i < run->internal.ndata && i < 4 && used < sizeof(extra); i++) {
		int n = snprintf(extra + used, sizeof(extra) - used, " 0x%llx",
				 (unsigned long long)run->internal.data[i]);
		if (n < 0)
			break;
		used += (size_t)n;
	}
	log_err("vCPU %u: KVM internal error, suberror %u (1 = emulation failure, 2 = simultaneous exceptions, "
		"3 = delivery event)%s%s; the guest cannot continue",
		c->index, run->internal.suberror, run->internal.ndata ? ", data" : "", extra);
}

/* Handle one exit.  Returns false when this vCPU must stop. */
static bool handle_exit(struct kvmm_vcpu *c)
{
	struct kvm_run *run = c->run;
	switch (run->exit_reason) {
	case KVM_EXIT_IO:
		handle_io(c);
		return true;
	case KVM_EXIT_MMIO:
		handle_mmio(c);
		return true;
	case KVM_EXIT_INTR:
		return true;
	case KVM_EXIT_SHUTDOWN:
		/* A triple fault: how a PC resets when every other way
		 * failed (reboot=t, or a kernel dying before its IDT). */
		vm_end(c->vm, 0, "the guest reset itself (triple fault)");
		return false;
	case KVM_EXIT_SYSTEM_EVENT:
		if (run->system_event.type == KVM_SYSTEM_EVENT_SHUTDOWN ||
		    run->system_event.type == KVM_SYSTEM_EVENT_RESET) {
			vm_end(c->vm, 0, "the guest shut down (system event)");
			return false;
		}
		log_err("vCPU %u: system event %u that kvmm does not handle", c->index, run->system_event.type);
		vm_end(c->vm, -EIO, "unhandled system event");
		return false;
	case KVM_EXIT_HLT:
		/* With the in-kernel irqchip KVM keeps halts to itself; this
		 * one cannot be woken. */
		log_err("vCPU %u: halted with no interrupt to wake it", c->index);
		vm_end(c->vm, -EIO, "vCPU halted for good");
		return false;
	case KVM_EXIT_FAIL_ENTRY:
		log_err("vCPU %u: VM entry failed, hardware reason 0x%llx: the vCPU state is invalid", c->index,
			(unsigned long long)run->fail_entry.hardware_entry_failure_reason);
		vm_end(c->vm, -EIO, "VM entry failed");
		return false;
	case KVM_EXIT_INTERNAL_ERROR:
		log_internal_error(c);
		vm_end(c->vm, -EIO, "KVM internal error");
		return false;
	default:
		log_err("vCPU %u: unexpected KVM exit reason %u", c->index, run->exit_reason);
		vm_end(c->vm, -EIO, "unexpected KVM exit");
		return false;
	}
}

/* Pause: leave KVM_RUN for good and wait for the resume.  One more KVM_RUN
 * with immediate_exit set first completes what the last exit left half
 * done (the data of a port or MMIO read goes into the guest's registers)
 * and enters no guest code, so the saved registers are whole. */
static void park(struct kvmm_vcpu *c)
{
	struct kvmm_vm *vm = c->vm;
	__atomic_store_n(&c->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
	for (;;) {
		if (ioctl(c->fd, KVM_RUN, 0) < 0) {
			int e = errno;
			if (e == EINTR || e == EAGAIN)
				break; /* completed, and nothing entered */
			log_err("vCPU %u: KVM_RUN (completing its last exit before a pause): %s", c->index, strerror(e));
			vm_end(vm, -e, "KVM_RUN failed");
			return;
		}
		if (!handle_exit(c))
			return; /* an exit still came through and ended the VM */
	}
	pthread_mutex_lock(&vm->state_lock);
	vm->parked++;
	pthread_cond_broadcast(&vm->state_cond);
	while (atomic_load(&vm->paused) && !atomic_load(&vm->stopping))
		pthread_cond_wait(&vm->state_cond, &vm->state_lock);
	vm->parked--;
	/* Clear the kick unless a stop set it meanwhile (vm_end() sets
	 * stopping before it kicks, under this lock). */
	if (!atomic_load(&vm->stopping))
		__atomic_store_n(&c->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
	pthread_mutex_unlock(&vm->state_lock);
}

void *vcpu_thread(void *arg)
{
	struct kvmm_vcpu *c = arg;
	struct kvmm_vm *vm = c->vm;
	/* Everything this thread needs exists by now: confine it before the
	 * guest runs a single instruction. */
	if (vm->seccomp) {
		int r = kvmm_seccomp_apply(KVMM_THREAD_VCPU);
		if (r < 0) {
			vm_end(vm, r, "a vCPU thread could not be confined");
			return NULL;
		}
	}
	for (;;) {
		if (atomic_load(&vm->stopping))
			break;
		if (atomic_load(&vm->paused)) {
			park(c);
			continue;
		}
		if (ioctl(c->fd, KVM_RUN, 0) < 0) {
			int e = errno;
			if (e == EINTR || e == EAGAIN)
				continue;
			log_err("vCPU %u: KVM_RUN: %s", c->index, strerror(e));
			vm_end(vm, -e, "KVM_RUN failed");
			break;
		}
		if (!handle_exit(c))
			break;
	}
	return NULL;
}
