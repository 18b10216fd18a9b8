/* The VM: /dev/kvm, guest RAM, the devices and their KVM plumbing, the boot
 * image, and the threads that run it all.
 *
 * Threads: one per vCPU (vcpu.c) and one device loop (kvmm_loop) for
 * everything that is not a vCPU exit: queue notifications arriving through
 * ioeventfds, vsock's sockets, console input.  Interrupts leave through
 * irqfds: virtio on GSI 5 + i, edge-triggered as the DSDT declares them, the
 * UART on IRQ 4 and the i8042 on IRQ 1, ISA edge.
 *
 * Locks: each virtio device has a mutex that vCPU threads hold around its
 * MMIO exits and the loop around its notifications; the UART and the i8042
 * share one (pio_lock); state_lock guards how the VM ends.  No thread holds
 * two of them except pio_lock -> state_lock (a reset from the i8042). */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define LOG_COMPONENT "kvmm"
#include "common/common.h"
#include "vmm/kvmm/acpi.h"
#include "vmm/kvmm/boot.h"
#include "vmm/kvmm/config.h"
#include "vmm/kvmm/guest_mem.h"
#include "vmm/kvmm/i8042.h"
#include "vmm/kvmm/jail.h"
#include "vmm/kvmm/layout.h"
#include "vmm/kvmm/loop.h"
#include "vmm/kvmm/serial.h"
#include "vmm/kvmm/virtio_blk.h"
#include "vmm/kvmm/virtio_mmio.h"
#include "vmm/kvmm/virtio_vsock.h"
#include "vmm/kvmm/vm.h"
#include "vmm/kvmm/vm_internal.h"

#define KVM_API_EXPECTED 12
#define CPUID_MAX_ENTRIES 1024

/* ---- how the VM ends ------------------------------------------------------------------------------------------------ */

void vm_end(struct kvmm_vm *vm, int result, const char *why)
{
	pthread_mutex_lock(&vm->state_lock);
	if (vm->ended) {
		pthread_mutex_unlock(&vm->state_lock);
		return;
	}
	vm->ended = true;
	vm->result = result;
	atomic_store(&vm->stopping, true);
	if (result == 0)
		log_info("%s", why);
	else
		log_err("the VM stops: %s", why);
	/* Under state_lock, so kvmm_vm_start() cannot be creating a thread we
	 * would miss. */
	for (unsigned i = 0; i < vm->n_vcpus; i++)
		vcpu_kick(&vm->vcpus[i]);
	pthread_cond_broadcast(&vm->state_cond);
	pthread_mutex_unlock(&vm->state_lock);
}

static void kick_handler(int sig)
{
	(void)sig; /* only here to make KVM_RUN return EINTR */
}

/* ---- interrupt lines ----------------------------------------------------------------------------------------------- */

/* The UART and the i8042 sit on ISA interrupts, edge-triggered as the
 * IOAPIC and PIC see them (the MADT overrides nothing), so a rising edge of
 * the model's line is all the guest can observe: an irqfd write, which KVM
 * delivers as one pulse.  That keeps KVM_IRQ_LINE off the device loop and
 * vCPU threads (console input raises IRQ 4 from the loop). */
static void pulse_irqfd(int fd, const char *what)
{
	uint64_t one = 1;
	if (write(fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_warn("raising the %s interrupt: %s", what, strerror(errno));
}

static void serial_irq(void *ctx, bool level)
{
	struct kvmm_vm *vm = ctx;
	if (level)
		pulse_irqfd(vm->serial_irqfd, "console");
}

static void i8042_irq(void *ctx, bool level)
{
	struct kvmm_vm *vm = ctx;
	if (level)
		pulse_irqfd(vm->i8042_irqfd, "keyboard");
}

static void i8042_reset(void *ctx)
{
	vm_end(ctx, 0, "the guest reset the machine through the keyboard controller");
}

static void virtio_irq(void *ctx)
{
	struct kvmm_vm_dev *d = ctx;
	uint64_t one = 1;
	/* An eventfd write only fails when the counter would overflow, and
	 * then an interrupt is pending anyway. */
	if (write(d->irqfd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_warn("%s: raising its interrupt: %s", d->label, strerror(errno));
}

/* ---- the device loop's callbacks ---------------------------------------------------------------------------------- */

/* Reset the eventfd |fd| the loop woke for: 0, or -errno (EAGAIN is none:
 * another wakeup took it already). */
static int eventfd_drain(int fd)
{
	uint64_t v;
	return read(fd, &v, sizeof(v)) < 0 && errno != EAGAIN ? -errno : 0;
}

static void queue_notified(void *ctx, int fd, uint32_t events)
{
	struct kvmm_vm_notify *n = ctx;
	(void)events;
	int r = eventfd_drain(fd);
	if (r < 0)
		log_warn("%s: reading queue %u's notifier: %s", n->dev->label, n->queue, strerror(-r));
	/* The loop holds the device's lock.  The transport ignores a notify
	 * for a queue that is not live, and so do we. */
	if (virtio_mmio_queue(n->dev->mmio, n->queue))
		n->dev->mmio->ops->notify(n->dev->mmio, n->queue);
}

/* Watch stdin for one more batch of console input (it is registered
 * one-shot, so nothing is read while the guest has no room). */
static void stdin_rearm(struct kvmm_vm *vm)
{
	int r = kvmm_loop_mod(&vm->loop, STDIN_FILENO, EPOLLIN | EPOLLONESHOT);
	if (r < 0)
		log_warn("console input: watching stdin again: %s; the console is output-only from now on",
			 strerror(-r));
}

static void stdin_ready(void *ctx, int fd, uint32_t events)
{
	struct kvmm_vm *vm = ctx;
	uint8_t buf[KVMM_SERIAL_FIFO];
	(void)events;
	size_t room = kvmm_serial_room(&vm->serial);
	if (room == 0) {
		/* The rest waits in the pipe or terminal until the guest reads:
		 * a console that drops input loses pastes and scripted input
		 * whenever the guest is slow. */
		vm->stdin_throttled = true;
		return;
	}
	ssize_t n = read(fd, buf, room < sizeof(buf) ? room : sizeof(buf));
	if (n > 0) {
		kvmm_serial_input(&vm->serial, buf, (size_t)n); /* fits: no more than room */
		stdin_rearm(vm);
		return;
	}
	if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
		stdin_rearm(vm);
		return;
	}
	/* End of input (or an error): the console stays, output only. */
	kvmm_loop_del(&vm->loop, fd);
	vm->stdin_watched = false;
}

void vm_console_read(struct kvmm_vm *vm)
{
	if (!vm->stdin_throttled || kvmm_serial_room(&vm->serial) == 0)
		return;
	vm->stdin_throttled = false;
	uint64_t one = 1;
	if (write(vm->stdin_room_fd, &one, sizeof(one)) < 0)
		log_warn("console input: waking the device loop: %s", strerror(errno));
}

/* On the device loop, under pio_lock: a vCPU made room for held-back input. */
static void stdin_room_ready(void *ctx, int fd, uint32_t events)
{
	struct kvmm_vm *vm = ctx;
	(void)events;
	int r = eventfd_drain(fd);
	if (r < 0)
		log_debug("console input: reading the room eventfd: %s", strerror(-r));
	if (vm->stdin_watched && !vm->stdin_throttled)
		stdin_rearm(vm);
}

/* The device loop parks here while the VM is paused, so no device touches
 * guest memory or its own state until it resumes. */
static void pause_requested(void *ctx, int fd, uint32_t events)
{
	struct kvmm_vm *vm = ctx;
	(void)events;
	int r = eventfd_drain(fd);
	if (r < 0)
		log_warn("reading the pause eventfd: %s", strerror(-r));
	pthread_mutex_lock(&vm->state_lock);
	vm->loop_parked = true;
	pthread_cond_broadcast(&vm->state_cond);
	while (atomic_load(&vm->paused) && !vm->ended)
		pthread_cond_wait(&vm->state_cond, &vm->state_lock);
	vm->loop_parked = false;
	pthread_mutex_unlock(&vm->state_lock);
}

static void *loop_thread(void *arg)
{
	struct kvmm_vm *vm = arg;
	if (vm->seccomp) {
		int e = kvmm_seccomp_apply(KVMM_THREAD_DEVICES);
		if (e < 0) {
			vm_end(vm, e, "the device thread could not be confined");
			return NULL;
		}
	}
	int r = kvmm_loop_run(&vm->loop);
	if (r < 0)
		vm_end(vm, r, "the device loop failed");
	return NULL;
}

/* ---- setup pieces -------------------------------------------------------------------------------------------------- */

static int kvm_check_caps(struct kvmm_vm *vm, unsigned n_vcpus)
{
	static const struct {
		int cap;
		const char *name;
	} need[] = {
		{ KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP" },
		{ KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY" },
		{ KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR" },
		{ KVM_CAP_SET_IDENTITY_MAP_ADDR, "KVM_CAP_SET_IDENTITY_MAP_ADDR" },
		{ KVM_CAP_PIT2, "KVM_CAP_PIT2" },
		{ KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD" },
		{ KVM_CAP_IRQFD, "KVM_CAP_IRQFD" },
		{ KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID" },
		{ KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT" },
	};
	int v = ioctl(vm->kvm_fd, KVM_GET_API_VERSION, 0);
	if (v != KVM_API_EXPECTED) {
		log_err("/dev/kvm speaks API version %d; kvmm needs %d", v, KVM_API_EXPECTED);
		return -ENOTSUP;
	}
	for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
		if (ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, need[i].cap) <= 0) {
			log_err("this host's KVM lacks %s, which kvmm needs", need[i].name);
			return -ENOTSUP;
		}
	}
	int max = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPUS);
	if (max <= 0)
		max = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_NR_VCPUS);
	if (max > 0 && n_vcpus > (unsigned)max) {
		log_err("%u vCPUs asked for; this host's KVM allows %d", n_vcpus, max);
		return -EINVAL;
	}
	int sz = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (sz < (int)sizeof(struct kvm_run)) {
		log_err("KVM_GET_VCPU_MMAP_SIZE: %s", sz < 0 ? strerror(errno) : "too small");
		return sz < 0 ? -errno : -EINVAL;
	}
	vm->run_size = (size_t)sz;
	/* What a snapshot can save: XSAVE (else the legacy FPU area), XCRs,
	 * the TSC frequency, and whether a restore may set it. */
	vm->cap_xsave = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE) > 0;
	vm->cap_xcrs = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XCRS) > 0;
	vm->cap_tsc_khz = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_GET_TSC_KHZ) > 0;
	vm->cap_tsc_control = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_TSC_CONTROL) > 0;
	return 0;
}

/* The MSRs KVM can save and restore, read now while every call is allowed. */
static int get_msr_list(struct kvmm_vm *vm)
{
	struct kvm_msr_list probe = { .nmsrs = 0 };
	if (ioctl(vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, &probe) < 0 && errno != E2BIG) {
		int e = errno;
		log_err("KVM_GET_MSR_INDEX_LIST: %s", strerror(e));
		return -e;
	}
	struct kvm_msr_list *l = calloc(1, sizeof(*l) + (size_t)probe.nmsrs * sizeof(uint32_t));
	if (!l) {
		log_err("out of memory for the MSR list");
		return -ENOMEM;
	}
	l->nmsrs = probe.nmsrs;
	if (ioctl(vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, l) < 0) {
		int e = errno;
		log_err("KVM_GET_MSR_INDEX_LIST: %s", strerror(e));
		free(l);
		return -e;
	}
	vm->msr_list = l;
	return 0;
}

static int vm_ioctl(struct kvmm_vm *vm, unsigned long req, unsigned long arg, const char *what)
{
	if (ioctl(vm->vm_fd, req, arg) < 0) {
		int e = errno;
		log_err("%s: %s", what, strerror(e));
		return -e;
	}
	return 0;
}

static int create_vm(struct kvmm_vm *vm)
{
	vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
	if (vm->vm_fd < 0) {
		int e = errno;
		vm->vm_fd = -1;
		log_err("KVM_CREATE_VM: %s", strerror(e));
		return -e;
	}
	/* KVM's private pages for real-mode emulation on Intel, in the MMIO
	 * hole where they overlap neither RAM nor a device.  The identity map
	 * must be placed before any vCPU exists. */
	uint64_t idmap = KVMM_IDENTITY_MAP_GPA;
	int r = vm_ioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, (unsigned long)&idmap, "KVM_SET_IDENTITY_MAP_ADDR");
	if (r == 0)
		r = vm_ioctl(vm, KVM_SET_TSS_ADDR, (unsigned long)KVMM_TSS_GPA, "KVM_SET_TSS_ADDR");
	if (r == 0)
		r = vm_ioctl(vm, KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP");
	if (r == 0) {
		/* The speaker port (0x61) answers from KVM too; nothing of it
		 * reaches us. */
		struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };
		r = vm_ioctl(vm, KVM_CREATE_PIT2, (unsigned long)&pit, "KVM_CREATE_PIT2");
	}
	return r;
}

static int set_region(struct kvmm_vm *vm, uint32_t slot, uint64_t gpa, uint8_t *host, uint64_t size)
{
	struct kvm_userspace_memory_region region = {
		.slot = slot,
		.guest_phys_addr = gpa,
		.memory_size = size,
		.userspace_addr = (uint64_t)(uintptr_t)host,
	};
	int r = vm_ioctl(vm, KVM_SET_USER_MEMORY_REGION, (unsigned long)&region, "KVM_SET_USER_MEMORY_REGION");
	if (r == 0)
		r = guest_mem_add(&vm->mem, gpa, host, size);
	return r;
}

int vm_set_ram(struct kvmm_vm *vm, uint8_t *ram)
{
	uint64_t size = vm->ram_size;
	vm->ram = ram;
	/* Below the MMIO hole, then the rest above 4 GiB (e820_build()'s map). */
	uint64_t low = size < KVMM_MMIO_HOLE_GPA ? size : KVMM_MMIO_HOLE_GPA;
	int r = set_region(vm, 0, 0, vm->ram, low);
	if (r == 0 && size > low)
		r = set_region(vm, 1, KVMM_MMIO_HOLE_END, vm->ram + low, size - low);
	return r;
}

static int map_ram(struct kvmm_vm *vm)
{
	/* NORESERVE: the guest's RAM costs only what it touches. */
	void *p = mmap(NULL, (size_t)vm->ram_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		       -1, 0);
	if (p == MAP_FAILED) {
		int e = errno;
		log_err("mapping %u MiB of guest RAM: %s", vm->cfg.mem_size_mib, strerror(e));
		return -e;
	}
	return vm_set_ram(vm, p);
}

static int get_supported_cpuid(struct kvmm_vm *vm)
{
	for (uint32_t n = 128; n <= CPUID_MAX_ENTRIES; n *= 2) {
		struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + n * sizeof(struct kvm_cpuid_entry2));
		if (!c) {
			log_err("out of memory for CPUID");
			return -ENOMEM;
		}
		c->nent = n;
		if (ioctl(vm->kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0) {
			vm->cpuid = c;
			return 0;
		}
		int e = errno;
		free(c);
		if (e != E2BIG) {
			log_err("KVM_GET_SUPPORTED_CPUID: %s", strerror(e));
			return -e;
		}
	}
	log_err("KVM_GET_SUPPORTED_CPUID: more than %d entries", CPUID_MAX_ENTRIES);
	return -E2BIG;
}

/* Fill all of |<buf, len>| from |fd| at |off|. */
static int pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	uint8_t *p = buf;
	while (len) {
		ssize_t n = pread(fd, p, len, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EIO; /* the file shrank under us */
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

/* A drive's bytes: pread() on its file. */
static int disk_read_at(void *ctx, uint64_t off, void *buf, size_t len)
{
	struct kvmm_vm_dev *d = ctx;
	return pread_full(d->disk_fd, buf, len, off);
}

static int open_disk(const struct kvmm_drive *drv, int *fd_out, uint64_t *size_out)
{
	int fd = open(drv->path_on_host, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		log_err("drive %s: opening %s: %s", drv->drive_id, drv->path_on_host, strerror(e));
		return -e;
	}
	struct stat st;
	uint64_t size = 0;
	if (fstat(fd, &st) < 0) {
		int e = errno;
		log_err("drive %s: %s: %s", drv->drive_id, drv->path_on_host, strerror(e));
		close(fd);
		return -e;
	}
	if (S_ISREG(st.st_mode)) {
		size = (uint64_t)st.st_size;
	} else if (S_ISBLK(st.st_mode)) {
		if (ioctl(fd, BLKGETSIZE64, &size) < 0) {
			int e = errno;
			log_err("drive %s: size of block device %s: %s", drv->drive_id, drv->path_on_host, strerror(e));
			close(fd);
			return -e;
		}
	} else {
		log_err("drive %s: %s is neither a regular file nor a block device", drv->drive_id, drv->path_on_host);
		close(fd);
		return -EINVAL;
	}
	*fd_out = fd;
	*size_out = size;
	return 0;
}

static struct kvmm_vm_dev *new_dev(struct kvmm_vm *vm, enum kvmm_dev_kind kind)
{
	struct kvmm_vm_dev *d = &vm->devs[vm->n_devs];
	size_t i = vm->n_devs++;
	d->kind = kind;
	d->base = KVMM_VIRTIO_MMIO_GPA + i * KVMM_VIRTIO_MMIO_STRIDE;
	d->gsi = KVMM_VIRTIO_MMIO_IRQ + (uint32_t)i;
	pthread_mutex_init(&d->lock, NULL);
	return d;
}

static int add_drive(struct kvmm_vm *vm, const struct kvmm_drive *drv)
{
	struct kvmm_vm_dev *d = new_dev(vm, KVMM_DEV_BLK);
	snprintf(d->label, sizeof(d->label), "virtio-blk %s", drv->drive_id);
	uint64_t size = 0;
	int r = open_disk(drv, &d->disk_fd, &size);
	if (r < 0)
		return r;
	if (!drv->is_read_only)
		log_warn("drive %s: kvmm's virtio-blk is read-only; the guest sees %s as a read-only disk",
			 drv->drive_id, drv->path_on_host);
	if (size % 512)
		log_warn("drive %s: %s is not a whole number of 512-byte sectors; the tail is not visible",
			 drv->drive_id, drv->path_on_host);
	struct virtio_blk_backend be = { .read_at = disk_read_at, .flush = NULL, .ctx = d, .size = size };
	r = virtio_blk_init(&d->u.blk, &be, drv->drive_id, &vm->mem, virtio_irq, d);
	if (r < 0) {
		log_err("drive %s: setting up virtio-blk: %s", drv->drive_id, strerror(-r));
		return r;
	}
	d->mmio = &d->u.blk.mmio;
	d->model_ready = true;
	return 0;
}

static int add_vsock(struct kvmm_vm *vm, const struct kvmm_config *cfg)
{
	struct kvmm_vm_dev *d = new_dev(vm, KVMM_DEV_VSOCK);
	snprintf(d->label, sizeof(d->label), "virtio-vsock");
	int r = virtio_vsock_init(&d->u.vsock, cfg->guest_cid, cfg->vsock_uds_path, &vm->mem, virtio_irq, d, &vm->loop,
				  &d->lock);
	if (r < 0)
		return r; /* logged by virtio_vsock_init() */
	d->mmio = &d->u.vsock.mmio;
	d->model_ready = true;
	return 0;
}

/* Make |fd| (an eventfd) raise |gsi|. */
static int attach_irqfd(struct kvmm_vm *vm, int fd, uint32_t gsi)
{
	struct kvm_irqfd irqfd = { .fd = (uint32_t)fd, .gsi = gsi };
	return vm_ioctl(vm, KVM_IRQFD, (unsigned long)&irqfd, "KVM_IRQFD");
}

/* The irqfd and one ioeventfd per queue of device |d|. */
static int wire_dev(struct kvmm_vm *vm, struct kvmm_vm_dev *d)
{
	d->irqfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (d->irqfd < 0) {
		int e = errno;
		log_err("%s: eventfd: %s", d->label, strerror(e));
		return -e;
	}
	int r = attach_irqfd(vm, d->irqfd, d->gsi);
	if (r < 0)
		return r;
	for (uint16_t q = 0; q < d->mmio->ops->num_queues; q++) {
		int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (fd < 0) {
			int e = errno;
			log_err("%s: eventfd: %s", d->label, strerror(e));
			return -e;
		}
		d->queue_fd[q] = fd;
		/* A 4-byte write of |q| to QueueNotify signals the eventfd
		 * inside KVM, with no exit to us; other values still exit and
		 * reach virtio_mmio_write(). */
		struct kvm_ioeventfd io = {
			.datamatch = q,
			.addr = d->base + VIRTIO_MMIO_QUEUE_NOTIFY,
			.len = 4,
			.fd = fd,
			.flags = KVM_IOEVENTFD_FLAG_DATAMATCH,
		};
		r = vm_ioctl(vm, KVM_IOEVENTFD, (unsigned long)&io, "KVM_IOEVENTFD");
		if (r < 0)
			return r;
		d->notify[q] = (struct kvmm_vm_notify){ .dev = d, .queue = q };
		r = kvmm_loop_add(&vm->loop, fd, EPOLLIN, queue_notified, &d->notify[q], &d->lock);
		if (r < 0)
			return r;
	}
	return 0;
}

static int add_devices(struct kvmm_vm *vm, const struct kvmm_config *cfg)
{
	int r;
	/* The root drive first: the guest numbers virtio-blk disks in ACPI
	 * order, and the root must be /dev/vda. */
	for (int pass = 0; pass < 2; pass++) {
		for (size_t i = 0; i < cfg->n_drives; i++) {
			if (cfg->drives[i].is_root_device != (pass == 0))
				continue;
			r = add_drive(vm, &cfg->drives[i]);
			if (r < 0)
				return r;
		}
	}
	if (cfg->has_vsock) {
		r = add_vsock(vm, cfg);
		if (r < 0)
			return r;
	}
	for (size_t i = 0; i < vm->n_devs; i++) {
		r = wire_dev(vm, &vm->devs[i]);
		if (r < 0)
			return r;
	}
	return 0;
}

/* The eventfd that parks the device loop while the VM is paused. */
static int setup_pause(struct kvmm_vm *vm)
{
	vm->pause_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (vm->pause_fd < 0) {
		int e = errno;
		log_err("eventfd: %s", strerror(e));
		return -e;
	}
	return kvmm_loop_add(&vm->loop, vm->pause_fd, EPOLLIN, pause_requested, vm, NULL);
}

static int setup_console(struct kvmm_vm *vm)
{
	vm->serial_irqfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	vm->i8042_irqfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (vm->serial_irqfd < 0 || vm->i8042_irqfd < 0) {
		int e = errno;
		log_err("eventfd: %s", strerror(e));
		return -e;
	}
	int r = attach_irqfd(vm, vm->serial_irqfd, KVMM_SERIAL_IRQ);
	if (r == 0)
		r = attach_irqfd(vm, vm->i8042_irqfd, KVMM_I8042_IRQ);
	if (r < 0)
		return r;
	kvmm_serial_init(&vm->serial, STDOUT_FILENO, serial_irq, vm);
	kvmm_i8042_init(&vm->i8042, i8042_irq, i8042_reset, vm);
	/* Console input when stdin is a terminal, a pipe or a socket; from
	 * anything else (a file, /dev/null, nothing) the console is
	 * output-only. */
	struct stat st;
	if (fstat(STDIN_FILENO, &st) < 0 || !(isatty(STDIN_FILENO) || S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode))) {
		log_debug("console input: stdin is not a terminal, pipe or socket; the console is output-only");
		return 0;
	}
	vm->stdin_room_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (vm->stdin_room_fd < 0) {
		int e = errno;
		log_err("eventfd: %s", strerror(e));
		return -e;
	}
	r = kvmm_loop_add(&vm->loop, vm->stdin_room_fd, EPOLLIN, stdin_room_ready, vm, &vm->pio_lock);
	if (r == 0)
		r = kvmm_loop_add(&vm->loop, STDIN_FILENO, EPOLLIN | EPOLLONESHOT, stdin_ready, vm, &vm->pio_lock);
	if (r < 0)
		return r;
	vm->stdin_watched = true;
	return 0;
}

static int write_acpi(struct kvmm_vm *vm, uint64_t *rsdp)
{
	struct acpi_virtio_mmio devs[KVMM_MAX_DEVS];
	for (size_t i = 0; i < vm->n_devs; i++)
		devs[i] = (struct acpi_virtio_mmio){ .base = vm->devs[i].base,
						     .size = KVMM_VIRTIO_MMIO_SIZE,
						     .gsi = vm->devs[i].gsi };
	struct acpi_config ac = {
		.n_cpus = vm->n_vcpus,
		.devs = devs,
		.n_devs = vm->n_devs,
		.sleep_port = KVMM_SLEEP_PORT,
		.gpa = KVMM_ACPI_GPA,
		.legacy_isa = true,
	};
	uint8_t *dst = guest_mem_ptr(&vm->mem, KVMM_ACPI_GPA, KVMM_ACPI_MAX);
	struct acpi_layout lay;
	int r = dst ? acpi_build(&ac, dst, KVMM_ACPI_MAX, &lay) : -EFAULT;
	if (r < 0) {
		log_err("building the ACPI tables: %s", strerror(-r));
		return r;
	}
	*rsdp = KVMM_ACPI_GPA + lay.off[ACPI_RSDP];
	return 0;
}

static int load_initrd(struct kvmm_vm *vm, const char *path, const struct bzimage_info *info, uint64_t *gpa,
		       uint64_t *size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		log_err("initrd %s: %s", path, strerror(e));
		return -e;
	}
	struct stat st;
	int r = 0;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		r = -EINVAL;
		log_err("initrd %s: not a readable regular file", path);
		goto out;
	}
	*size = (uint64_t)st.st_size;
	r = boot_initrd_gpa(info, vm->ram_size, *size, gpa);
	if (r < 0) {
		log_err("initrd %s (%llu bytes) does not fit between the kernel and the top of the guest's %llu MiB; "
			"give the VM more memory",
			path, (unsigned long long)*size, (unsigned long long)(vm->ram_size >> 20));
		goto out;
	}
	uint8_t *dst = guest_mem_ptr(&vm->mem, *gpa, *size);
	if (!dst) {
		r = -EFAULT;
		goto out;
	}
	r = pread_full(fd, dst, (size_t)*size, 0);
	if (r < 0)
		log_err("reading initrd %s: %s", path, strerror(-r));
out:
	close(fd);
	return r;
}

/* The kernel command line: the caller's or ours, and the root device as
 * Firecracker adds it. */
static char *make_cmdline(const struct kvmm_config *cfg)
{
	const char *base = cfg->boot_args ? cfg->boot_args : KVMM_DEFAULT_CMDLINE;
	bool root = false;
	for (size_t i = 0; i < cfg->n_drives; i++)
		root |= cfg->drives[i].is_root_device;
	if (root && !strstr(base, "root="))
		return xasprintf("%s root=/dev/vda ro", base);
	return xasprintf("%s", base);
}

static int load_kernel(struct kvmm_vm *vm, const struct kvmm_config *cfg, uint64_t rsdp)
{
	int fd = open(cfg->kernel_image_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		log_err("kernel %s: %s", cfg->kernel_image_path, strerror(e));
		return -e;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size == 0) {
		log_err("kernel %s: not a readable, non-empty regular file", cfg->kernel_image_path);
		close(fd);
		return -EINVAL;
	}
	/* Mapped, not read: the pages go away with the mapping, so the
	 * monitor does not keep the kernel's size in its own memory. */
	size_t len = (size_t)st.st_size;
	uint8_t *img = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (img == MAP_FAILED) {
		int e = errno;
		log_err("kernel %s: mmap: %s", cfg->kernel_image_path, strerror(e));
		return -e;
	}
	struct bzimage_info info;
	struct boot_config bc = { .mem_size = vm->ram_size, .acpi_rsdp_gpa = rsdp };
	struct boot_result br;
	char *cmdline = NULL;
	int r = bzimage_parse(img, len, &info);
	if (r < 0) {
		log_err("kernel %s is not a usable x86-64 bzImage (a vmlinux or a compressed vmlinuz from another "
			"architecture will not do)",
			cfg->kernel_image_path);
		goto out;
	}
	if (cfg->initrd_path) {
		r = load_initrd(vm, cfg->initrd_path, &info, &bc.initrd_gpa, &bc.initrd_size);
		if (r < 0)
			goto out;
	}
	cmdline = make_cmdline(cfg);
	if (!cmdline) {
		r = -ENOMEM;
		goto out;
	}
	bc.cmdline = cmdline;
	r = boot_setup(&vm->mem, img, len, &info, &bc, &br);
	if (r < 0) {
		log_err("loading kernel %s into the guest: %s", cfg->kernel_image_path, strerror(-r));
		goto out;
	}
	r = boot_long_mode(&vm->mem, &br, &vm->boot);
	if (r < 0)
		log_err("writing the boot page tables: %s", strerror(-r));
	else
		log_info("kernel %s (%s), command line \"%s\"", cfg->kernel_image_path,
			 info.kernel_version[0] ? info.kernel_version : "version unknown", cmdline);
out:
	free(cmdline);
	munmap(img, len);
	return r;
}

/* ---- public ----------------------------------------------------------------------------------------------------------- */

int vm_new(const struct kvmm_config *cfg, struct kvmm_vm **out)
{
	*out = NULL;
	if (cfg->vcpu_count == 0 || cfg->vcpu_count > KVMM_MAX_VCPUS || cfg->n_drives > KVMM_MAX_DRIVES ||
	    cfg->mem_size_mib < KVMM_MIN_MEM_MIB || cfg->mem_size_mib > KVMM_MAX_MEM_MIB) {
		log_err("the VM configuration is out of range (1..%d vCPUs, %u..%u MiB)", KVMM_MAX_VCPUS,
			KVMM_MIN_MEM_MIB, KVMM_MAX_MEM_MIB);
		return -EINVAL;
	}
	struct kvmm_vm *vm = calloc(1, sizeof(*vm));
	if (!vm) {
		log_err("out of memory for the VM");
		return -ENOMEM;
	}
	vm->kvm_fd = vm->vm_fd = vm->serial_irqfd = vm->i8042_irqfd = vm->pause_fd = vm->uffd_sock = vm->uffd = -1;
	vm->stdin_room_fd = -1;
	vm->ram_size = (uint64_t)cfg->mem_size_mib << 20;
	kvmm_config_init(&vm->cfg);
	vm->n_vcpus = cfg->vcpu_count;
	for (unsigned i = 0; i < KVMM_MAX_VCPUS; i++) {
		vm->vcpus[i].fd = -1;
		vm->vcpus[i].vm = vm;
	}
	for (size_t i = 0; i < KVMM_MAX_DEVS; i++) {
		vm->devs[i].irqfd = vm->devs[i].disk_fd = -1;
		for (size_t q = 0; q < VIRTIO_MMIO_MAX_QUEUES; q++)
			vm->devs[i].queue_fd[q] = -1;
	}
	pthread_mutex_init(&vm->pio_lock, NULL);
	pthread_mutex_init(&vm->state_lock, NULL);
	pthread_cond_init(&vm->state_cond, NULL);
	guest_mem_init(&vm->mem);
	vm->kick_signal = SIGRTMIN;
	vm->seccomp = true;

	int r;
	vm->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (vm->kvm_fd < 0) {
		r = -errno;
		log_err("opening /dev/kvm: %s (%s)", strerror(-r),
			r == -ENOENT  ? "no KVM on this host: load kvm-intel or kvm-amd, or use the process sandbox"
			: r == -EACCES ? "add this user to the kvm group"
				       : "is KVM usable here?");
		goto fail;
	}
	if ((r = kvmm_config_copy(&vm->cfg, cfg)) < 0) {
		log_err("out of memory for the VM's configuration");
		goto fail;
	}
	if ((r = kvm_check_caps(vm, cfg->vcpu_count)) < 0 || (r = create_vm(vm)) < 0 || (r = get_msr_list(vm)) < 0)
		goto fail;
	*out = vm;
	return 0;
fail:
	kvmm_vm_destroy(vm);
	return r;
}

int vm_add_devices(struct kvmm_vm *vm)
{
	int r = kvmm_loop_init(&vm->loop);
	if (r < 0)
		return r;
	vm->loop_ready = true;
	if ((r = setup_pause(vm)) < 0 || (r = setup_console(vm)) < 0)
		return r;
	return add_devices(vm, &vm->cfg);
}

int kvmm_vm_create(const struct kvmm_config *cfg, struct kvmm_vm **out)
{
	*out = NULL;
	if (!cfg->kernel_image_path) {
		log_err("the VM configuration has no kernel");
		return -EINVAL;
	}
	struct kvmm_vm *vm;
	int r = vm_new(cfg, &vm);
	if (r < 0)
		return r;
	if ((r = map_ram(vm)) < 0 || (r = get_supported_cpuid(vm)) < 0 || (r = vm_add_devices(vm)) < 0)
		goto fail;
	uint64_t rsdp;
	if ((r = write_acpi(vm, &rsdp)) < 0 || (r = load_kernel(vm, cfg, rsdp)) < 0)
		goto fail;
	for (unsigned i = 0; i < vm->n_vcpus; i++)
		if ((r = vcpu_create(vm, i)) < 0)
			goto fail;
	*out = vm;
	return 0;
fail:
	kvmm_vm_destroy(vm);
	return r;
}

static void join_all(struct kvmm_vm *vm)
{
	if (vm->joined)
		return;
	for (unsigned i = 0; i < vm->n_vcpus; i++)
		if (vm->vcpus[i].started)
			pthread_join(vm->vcpus[i].thread, NULL);
	if (vm->loop_started) {
		kvmm_loop_stop(&vm->loop);
		pthread_join(vm->loop_thread, NULL);
	}
	vm->joined = true;
}

void kvmm_vm_set_seccomp(struct kvmm_vm *vm, bool on)
{
	vm->seccomp = on;
}

int kvmm_vm_start(struct kvmm_vm *vm)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = kick_handler; /* no SA_RESTART: KVM_RUN must return */
	sigemptyset(&sa.sa_mask);
	if (sigaction(vm->kick_signal, &sa, NULL) < 0) {
		int e = errno;
		log_err("installing the vCPU kick signal: %s", strerror(e));
		return -e;
	}
	int r = kvmm_thread_create(&vm->loop_thread, loop_thread, vm);
	if (r) {
		log_err("starting the device loop thread: %s", strerror(r));
		return -r;
	}
	vm->loop_started = true;
	pthread_mutex_lock(&vm->state_lock);
	vm->started = true;
	for (unsigned i = 0; i < vm->n_vcpus && !vm->ended; i++) {
		r = kvmm_thread_create(&vm->vcpus[i].thread, vcpu_thread, &vm->vcpus[i]);
		if (r) {
			log_err("starting vCPU thread %u: %s", i, strerror(r));
			break;
		}
		vm->vcpus[i].started = true;
	}
	pthread_mutex_unlock(&vm->state_lock);
	if (r) {
		vm_end(vm, -r, "a vCPU thread could not start");
		join_all(vm);
		return -r;
	}
	return 0;
}

int kvmm_vm_send_ctrl_alt_del(struct kvmm_vm *vm)
{
	pthread_mutex_lock(&vm->state_lock);
	bool running = vm->started && !vm->ended;
	pthread_mutex_unlock(&vm->state_lock);
	if (!running)
		return -EAGAIN;
	pthread_mutex_lock(&vm->pio_lock);
	int r = kvmm_i8042_ctrl_alt_del(&vm->i8042);
	pthread_mutex_unlock(&vm->pio_lock);
	if (r < 0)
		log_warn("Ctrl+Alt+Del: %s", r == -EBUSY ? "the guest has not read the keys sent before"
							  : "the guest disabled its keyboard");
	return r;
}

int kvmm_vm_pause(struct kvmm_vm *vm)
{
	pthread_mutex_lock(&vm->state_lock);
	if (!vm->started || vm->ended) {
		pthread_mutex_unlock(&vm->state_lock);
		return -EAGAIN;
	}
	if (atomic_load(&vm->paused)) {
		pthread_mutex_unlock(&vm->state_lock);
		return 0;
	}
	atomic_store(&vm->paused, true);
	uint64_t one = 1;
	if (write(vm->pause_fd, &one, sizeof(one)) < 0)
		log_warn("waking the device loop to pause it: %s", strerror(errno));
	for (unsigned i = 0; i < vm->n_vcpus; i++)
		vcpu_kick(&vm->vcpus[i]);
	/* Every vCPU out of KVM_RUN (its last exit completed) and the loop
	 * between callbacks: the state is consistent from here. */
	while (!vm->ended && (vm->parked < vm->n_vcpus || !vm->loop_parked))
		pthread_cond_wait(&vm->state_cond, &vm->state_lock);
	int r = vm->ended ? -EAGAIN : 0;
	pthread_mutex_unlock(&vm->state_lock);
	if (r == 0)
		log_info("the VM is paused");
	return r;
}

int kvmm_vm_resume(struct kvmm_vm *vm)
{
	pthread_mutex_lock(&vm->state_lock);
	int r = !vm->started || vm->ended ? -EAGAIN : 0;
	bool was = atomic_load(&vm->paused);
	if (r == 0 && was) {
		atomic_store(&vm->paused, false);
		pthread_cond_broadcast(&vm->state_cond);
	}
	pthread_mutex_unlock(&vm->state_lock);
	if (r == 0 && was)
		log_info("the VM resumes");
	return r;
}

bool kvmm_vm_is_paused(struct kvmm_vm *vm)
{
	return atomic_load(&vm->paused);
}

int kvmm_vm_wait(struct kvmm_vm *vm)
{
	pthread_mutex_lock(&vm->state_lock);
	while (!vm->ended)
		pthread_cond_wait(&vm->state_cond, &vm->state_lock);
	int r = vm->result;
	pthread_mutex_unlock(&vm->state_lock);
	join_all(vm);
	return r;
}

void kvmm_vm_destroy(struct kvmm_vm *vm)
{
	if (!vm)
		return;
	if (vm->loop_started || vm->started) {
		vm_end(vm, 0, "the VM is being torn down");
		join_all(vm);
	}
	for (unsigned i = 0; i < KVMM_MAX_VCPUS; i++)
		vcpu_close(&vm->vcpus[i]);
	for (size_t i = 0; i < vm->n_devs; i++) {
		struct kvmm_vm_dev *d = &vm->devs[i];
		if (d->model_ready && d->kind == KVMM_DEV_VSOCK)
			virtio_vsock_destroy(&d->u.vsock); /* the loop no longer runs */
		for (size_t q = 0; q < VIRTIO_MMIO_MAX_QUEUES; q++)
			if (d->queue_fd[q] >= 0)
				close(d->queue_fd[q]);
		if (d->irqfd >= 0)
			close(d->irqfd);
		if (d->disk_fd >= 0)
			close(d->disk_fd);
		pthread_mutex_destroy(&d->lock);
	}
	if (vm->loop_ready)
		kvmm_loop_destroy(&vm->loop);
	if (vm->serial_irqfd >= 0)
		close(vm->serial_irqfd);
	if (vm->i8042_irqfd >= 0)
		close(vm->i8042_irqfd);
	if (vm->vm_fd >= 0)
		close(vm->vm_fd);
	if (vm->kvm_fd >= 0)
		close(vm->kvm_fd);
	if (vm->ram)
		munmap(vm->ram, (size_t)vm->ram_size);
	free(vm->cpuid);
	free(vm->msr_list);
	if (vm->pause_fd >= 0)
		close(vm->pause_fd);
	if (vm->stdin_room_fd >= 0)
		close(vm->stdin_room_fd);
	if (vm->uffd_sock >= 0)
		close(vm->uffd_sock);
	if (vm->uffd >= 0)
		close(vm->uffd);
	kvmm_config_free(&vm->cfg);
	pthread_cond_destroy(&vm->state_cond);
	pthread_mutex_destroy(&vm->state_lock);
	pthread_mutex_destroy(&vm->pio_lock);
	free(vm);
}
