/* Snapshots of a paused VM and restores from them (vm.h): the VM's KVM
 * state, the devices' state and guest RAM out to files, and back into a new
 * VM, with memory from the file (MAP_PRIVATE) or from a userfaultfd page
 * handler (Firecracker's Uffd backend).
 *
 * Order on restore, the one QEMU uses: per vCPU CPUID (at creation), the TSC
 * frequency, REGS, XSAVE/FPU, XCRS, SREGS, MSRs, MP_STATE, LAPIC (after the
 * APIC base in SREGS and MSRs), VCPU_EVENTS, DEBUGREGS; then the PIT, the
 * irqchips and last the kvm-clock.  Every one of these must succeed before
 * any vCPU runs. */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <limits.h>
#include <linux/userfaultfd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#define LOG_COMPONENT "kvmm"
#include "common/common.h"
#include "vmm/kvmm/cpuid.h"
#include "vmm/kvmm/layout.h"
#include "vmm/kvmm/virtq.h"
#include "vmm/kvmm/vm.h"
#include "vmm/kvmm/vm_internal.h"
#include "vmm/kvmm/vmstate.h"

#define PAGE 4096u
#define MEM_WRITE_RUN (1u << 20) /* the most one pwrite() carries */

/* The message for the API and the log at once. */
__attribute__((format(printf, 3, 4))) static void fault(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	log_err("%s", err);
}

/* ioctl on a vCPU or VM fd, the fault named in |<err, errlen>|. */
static int kv(int fd, unsigned long req, void *arg, const char *what, int vcpu, char *err, size_t errlen)
{
	if (ioctl(fd, req, arg) < 0) {
		int e = errno;
		if (vcpu >= 0)
			fault(err, errlen, "vCPU %d: %s: %s", vcpu, what, strerror(e));
		else
			fault(err, errlen, "%s: %s", what, strerror(e));
		return -e;
	}
	return 0;
}

/* ---- saving ------------------------------------------------------------------------------- */

/* The MSRs of the index list this vCPU lets us read: KVM_GET_MSRS stops at
 * the first it refuses, which is skipped. */
static int save_msrs(struct kvmm_vm *vm, struct kvmm_vcpu *c, struct kvmm_vmstate_vcpu *v, char *err, size_t errlen)
{
	const struct kvm_msr_list *l = vm->msr_list;
	struct kvm_msrs *m = calloc(1, sizeof(*m) + (size_t)l->nmsrs * sizeof(struct kvm_msr_entry));
	if (!m) {
		fault(err, errlen, "out of memory for MSRs");
		return -ENOMEM;
	}
	v->n_msrs = 0;
	int r = 0;
	for (uint32_t i = 0; i < l->nmsrs;) {
		uint32_t want = l->nmsrs - i;
		m->nmsrs = want;
		for (uint32_t k = 0; k < want; k++)
			m->entries[k] = (struct kvm_msr_entry){ .index = l->indices[i + k] };
		int got = ioctl(c->fd, KVM_GET_MSRS, m);
		if (got < 0) {
			r = -errno;
			fault(err, errlen, "vCPU %u: KVM_GET_MSRS: %s", c->index, strerror(-r));
			break;
		}
		for (int k = 0; k < got; k++) {
			if (v->n_msrs == KVMM_VMSTATE_MAX_MSRS) {
				fault(err, errlen, "vCPU %u: more than %u MSRs to save", c->index,
				      KVMM_VMSTATE_MAX_MSRS);
				free(m);
				return -E2BIG;
			}
			v->msrs[v->n_msrs++] = m->entries[k];
		}
		i += (uint32_t)got;
		if ((uint32_t)got < want)
			i++; /* this one is not readable here: not part of the state */
	}
	free(m);
	return r;
}

static int save_vcpu(struct kvmm_vm *vm, struct kvmm_vcpu *c, struct kvmm_vmstate_vcpu *v, char *err, size_t errlen)
{
	int i = (int)c->index, r;
	if ((r = kv(c->fd, KVM_GET_REGS, &v->regs, "KVM_GET_REGS", i, err, errlen)) < 0 ||
	    (r = kv(c->fd, KVM_GET_SREGS, &v->sregs, "KVM_GET_SREGS", i, err, errlen)) < 0)
		return r;
	v->has_xsave = vm->cap_xsave;
	if (v->has_xsave)
		r = kv(c->fd, KVM_GET_XSAVE, &v->xsave, "KVM_GET_XSAVE", i, err, errlen);
	else
		r = kv(c->fd, KVM_GET_FPU, &v->fpu, "KVM_GET_FPU", i, err, errlen);
	if (r < 0)
		return r;
	v->has_xcrs = vm->cap_xcrs;
	if (v->has_xcrs && (r = kv(c->fd, KVM_GET_XCRS, &v->xcrs, "KVM_GET_XCRS", i, err, errlen)) < 0)
		return r;
	if ((r = kv(c->fd, KVM_GET_LAPIC, &v->lapic, "KVM_GET_LAPIC", i, err, errlen)) < 0 ||
	    (r = save_msrs(vm, c, v, err, errlen)) < 0 ||
	    (r = kv(c->fd, KVM_GET_VCPU_EVENTS, &v->events, "KVM_GET_VCPU_EVENTS", i, err, errlen)) < 0 ||
	    (r = kv(c->fd, KVM_GET_DEBUGREGS, &v->debugregs, "KVM_GET_DEBUGREGS", i, err, errlen)) < 0 ||
	    (r = kv(c->fd, KVM_GET_MP_STATE, &v->mp_state, "KVM_GET_MP_STATE", i, err, errlen)) < 0)
		return r;
	v->tsc_khz = 0;
	if (vm->cap_tsc_khz) {
		int khz = ioctl(c->fd, KVM_GET_TSC_KHZ, 0);
		if (khz > 0)
			v->tsc_khz = (uint32_t)khz;
	}
	return 0;
}

static void save_dev(struct kvmm_vm_dev *d, struct kvmm_vmstate_dev *s)
{
	const struct virtio_mmio_dev *m = d->mmio;
	s->kind = d->kind == KVMM_DEV_BLK ? KVMM_VMSTATE_DEV_BLK : KVMM_VMSTATE_DEV_VSOCK;
	s->status = m->status;
	s->device_features_sel = m->device_features_sel;
	s->driver_features_sel = m->driver_features_sel;
	s->queue_sel = m->queue_sel;
	s->interrupt_status = m->interrupt_status;
	s->config_generation = m->config_generation;
	s->driver_features = m->driver_features;
	s->n_queues = m->ops->num_queues;
	for (uint16_t i = 0; i < s->n_queues; i++) {
		const struct virtq *q = &m->vq[i];
		s->q[i] = (struct kvmm_vmstate_queue){
			.qcfg = m->qcfg[i],
			.ready = q->ready,
			.event_idx = q->event_idx,
			.size = q->size,
			.last_avail = q->last_avail,
			.used_idx = q->used_idx,
			.signalled_used = q->signalled_used,
			.desc_gpa = q->desc_gpa,
			.avail_gpa = q->avail_gpa,
			.used_gpa = q->used_gpa,
		};
	}
	if (d->kind == KVMM_DEV_BLK) {
		s->blk_size = d->u.blk.be.size;
		s->blk_requests = d->u.blk.requests;
		s->blk_errors = d->u.blk.errors;
	} else {
		s->vsock_cid = d->u.vsock.guest_cid;
	}
}

static void save_legacy(struct kvmm_vm *vm, struct kvmm_vmstate *st)
{
	const struct kvmm_serial *s = &vm->serial;
	st->serial = (struct kvmm_vmstate_serial){
		.ier = s->ier, .lcr = s->lcr, .mcr = s->mcr, .scr = s->scr, .dll = s->dll, .dlm = s->dlm,
		.lsr_errors = s->lsr_errors, .fifo_enabled = s->fifo_enabled, .thr_pending = s->thr_pending,
		.irq_level = s->irq_level, .rx_len = (uint8_t)s->rx_len,
	};
	for (size_t i = 0; i < s->rx_len; i++)
		st->serial.rx[i] = s->rx[(s->rx_head + i) % KVMM_SERIAL_FIFO];
	const struct kvmm_i8042 *k = &vm->i8042;
	st->i8042 = (struct kvmm_vmstate_i8042){
		.ctr = k->ctr, .output_port = k->output_port, .pending_cmd = k->pending_cmd,
		.kbd_pending = k->kbd_pending, .scancode_set = k->scancode_set, .last_out = k->last_out,
		.last_was_cmd = k->last_was_cmd, .out_len = (uint8_t)k->out_len,
	};
	for (size_t i = 0; i < k->out_len; i++)
		st->i8042.out[i] = k->out[(k->out_head + i) % KVMM_I8042_QUEUE];
}

static int save_state(struct kvmm_vm *vm, struct kvmm_vmstate *st, char *err, size_t errlen)
{
	int r = kvmm_config_copy(&st->cfg, &vm->cfg);
	if (r < 0) {
		fault(err, errlen, "out of memory");
		return r;
	}
	if (vm->cpuid->nent > KVMM_VMSTATE_MAX_CPUID) {
		fault(err, errlen, "%u CPUID entries; the format holds %u", vm->cpuid->nent, KVMM_VMSTATE_MAX_CPUID);
		return -E2BIG;
	}
	st->n_cpuid = vm->cpuid->nent;
	memcpy(st->cpuid, vm->cpuid->entries, st->n_cpuid * sizeof(st->cpuid[0]));
	for (unsigned i = 0; i < vm->n_vcpus; i++)
		if ((r = save_vcpu(vm, &vm->vcpus[i], &st->vcpu[i], err, errlen)) < 0)
			return r;
	st->pic_master.chip_id = KVM_IRQCHIP_PIC_MASTER;
	st->pic_slave.chip_id = KVM_IRQCHIP_PIC_SLAVE;
	st->ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
	if ((r = kv(vm->vm_fd, KVM_GET_CLOCK, &st->clock, "KVM_GET_CLOCK", -1, err, errlen)) < 0 ||
	    (r = kv(vm->vm_fd, KVM_GET_IRQCHIP, &st->pic_master, "KVM_GET_IRQCHIP (PIC master)", -1, err, errlen)) < 0 ||
	    (r = kv(vm->vm_fd, KVM_GET_IRQCHIP, &st->pic_slave, "KVM_GET_IRQCHIP (PIC slave)", -1, err, errlen)) < 0 ||
	    (r = kv(vm->vm_fd, KVM_GET_IRQCHIP, &st->ioapic, "KVM_GET_IRQCHIP (IOAPIC)", -1, err, errlen)) < 0 ||
	    (r = kv(vm->vm_fd, KVM_GET_PIT2, &st->pit, "KVM_GET_PIT2", -1, err, errlen)) < 0)
		return r;
	pthread_mutex_lock(&vm->pio_lock);
	save_legacy(vm, st);
	pthread_mutex_unlock(&vm->pio_lock);
	st->n_devs = (uint32_t)vm->n_devs;
	for (size_t i = 0; i < vm->n_devs; i++) {
		pthread_mutex_lock(&vm->devs[i].lock);
		save_dev(&vm->devs[i], &st->devs[i]);
		pthread_mutex_unlock(&vm->devs[i].lock);
	}
	return 0;
}

/* |path| with a temporary suffix in the same directory, for a rename. */
static int tmp_name(const char *path, char *out, size_t outlen)
{
	uint32_t rnd;
	if (random_bytes(&rnd, sizeof(rnd)) < 0)
		rnd = (uint32_t)getpid();
	int n = snprintf(out, outlen, "%s.tmp-%d-%08x", path, (int)getpid(), rnd);
	return n < 0 || (size_t)n >= outlen ? -ENAMETOOLONG : 0;
}

/* Guest RAM into the new file |fd|: runs of pages that are not all zero are
 * written, the rest stays a hole (the size is set at the end). */
static int write_mem(struct kvmm_vm *vm, int fd, uint64_t *written)
{
	*written = 0;
	for (uint64_t off = 0; off < vm->ram_size;) {
		if (is_all_zero(vm->ram + off, PAGE)) {
			off += PAGE;
			continue;
		}
		uint64_t end = off + PAGE;
		while (end < vm->ram_size && end - off < MEM_WRITE_RUN && !is_all_zero(vm->ram + end, PAGE))
			end += PAGE;
		const uint8_t *p = vm->ram + off;
		size_t left = (size_t)(end - off);
		uint64_t at = off;
		while (left) {
			ssize_t n = pwrite(fd, p, left, (off_t)at);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				return n < 0 ? -errno : -EIO;
			p += n;
			at += (uint64_t)n;
			left -= (size_t)n;
		}
		*written += end - off;
		off = end;
	}
	if (ftruncate(fd, (off_t)vm->ram_size) < 0)
		return -errno;
	return fsync(fd) < 0 ? -errno : 0;
}

/* Write |<buf, len>| (or guest RAM when |buf| is NULL) to a new file |tmp|. */
static int write_tmp(struct kvmm_vm *vm, const char *tmp, const uint8_t *buf, size_t len, uint64_t *written)
{
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	int r;
	if (buf) {
		r = write_full(fd, buf, len);
		if (r == 0 && fsync(fd) < 0)
			r = -errno;
	} else {
		r = write_mem(vm, fd, written);
	}
	if (close(fd) < 0 && r == 0)
		r = -errno;
	return r;
}

int kvmm_vm_snapshot_create(struct kvmm_vm *vm, const char *vmstate_path, const char *mem_path, char *err,
			    size_t errlen)
{
	if (!atomic_load(&vm->paused)) {
		snprintf(err, errlen, "the microVM must be paused before a snapshot is created (PATCH /vm "
				      "{\"state\": \"Paused\"})");
		return -EAGAIN;
	}
	char mem_tmp[PATH_MAX], st_tmp[PATH_MAX];
	if (tmp_name(mem_path, mem_tmp, sizeof(mem_tmp)) < 0 || tmp_name(vmstate_path, st_tmp, sizeof(st_tmp)) < 0) {
		fault(err, errlen, "snapshot paths %s and %s: too long", vmstate_path, mem_path);
		return -ENAMETOOLONG;
	}
	struct kvmm_vmstate *st = kvmm_vmstate_new();
	if (!st) {
		fault(err, errlen, "out of memory for the VM state");
		return -ENOMEM;
	}
	double t0 = now_seconds();
	uint8_t *buf = NULL;
	size_t len = 0;
	uint64_t written = 0;
	bool mem_made = false, st_made = false;
	int r = save_state(vm, st, err, errlen);
	if (r == 0) {
		char why[256];
		r = kvmm_vmstate_encode(st, &buf, &len, why, sizeof(why));
		if (r < 0)
			fault(err, errlen, "encoding the VM state: %s", why);
	}
	if (r == 0) {
		r = write_tmp(vm, mem_tmp, NULL, 0, &written);
		mem_made = r != -EEXIST;
		if (r < 0)
			fault(err, errlen, "mem_file_path %s: writing %s: %s", mem_path, mem_tmp, strerror(-r));
	}
	if (r == 0) {
		r = write_tmp(vm, st_tmp, buf, len, NULL);
		st_made = r != -EEXIST;
		if (r < 0)
			fault(err, errlen, "snapshot_path %s: writing %s: %s", vmstate_path, st_tmp, strerror(-r));
	}
	/* Both complete: the memory first, so a vmstate under its name always
	 * has its memory beside it. */
	if (r == 0 && rename(mem_tmp, mem_path) < 0) {
		r = -errno;
		fault(err, errlen, "mem_file_path %s: renaming %s to it: %s", mem_path, mem_tmp, strerror(-r));
	} else if (r == 0) {
		mem_made = false;
		if (rename(st_tmp, vmstate_path) < 0) {
			r = -errno;
			fault(err, errlen, "snapshot_path %s: renaming %s to it: %s", vmstate_path, st_tmp, strerror(-r));
		} else {
			st_made = false;
		}
	}
	if (mem_made)
		unlink(mem_tmp);
	if (st_made)
		unlink(st_tmp);
	if (r == 0)
		log_info("snapshot: %s (%zu bytes) and %s (%llu MiB of RAM, %llu MiB written) in %.3f s", vmstate_path,
			 len, mem_path, (unsigned long long)(vm->ram_size >> 20), (unsigned long long)(written >> 20),
			 now_seconds() - t0);
	free(buf);
	kvmm_vmstate_free(st);
	return r;
}

/* ---- restoring ------------------------------------------------------------------------------ */

static int restore_vcpu(struct kvmm_vm *vm, struct kvmm_vcpu *c, struct kvmm_vmstate_vcpu *v, char *err,
			size_t errlen)
{
	int i = (int)c->index, r;
	if (v->tsc_khz && vm->cap_tsc_khz) {
		int now = ioctl(c->fd, KVM_GET_TSC_KHZ, 0);
		if (now > 0 && (uint32_t)now != v->tsc_khz) {
			if (!vm->cap_tsc_control) {
				fault(err, errlen,
				      "vCPU %d: the snapshot's TSC runs at %u kHz, this host's at %d kHz, and this "
				      "host's KVM cannot scale it",
				      i, v->tsc_khz, now);
				return -EINVAL;
			}
			if (ioctl(c->fd, KVM_SET_TSC_KHZ, (unsigned long)v->tsc_khz) < 0) {
				r = -errno;
				fault(err, errlen, "vCPU %d: KVM_SET_TSC_KHZ %u: %s", i, v->tsc_khz, strerror(-r));
				return r;
			}
		}
	}
	if ((r = kv(c->fd, KVM_SET_REGS, &v->regs, "KVM_SET_REGS", i, err, errlen)) < 0)
		return r;
	if (v->has_xsave && !vm->cap_xsave) {
		fault(err, errlen, "vCPU %d: the snapshot has XSAVE state and this host's KVM has no XSAVE", i);
		return -EINVAL;
	}
	if (v->has_xsave)
		r = kv(c->fd, KVM_SET_XSAVE, &v->xsave, "KVM_SET_XSAVE", i, err, errlen);
	else
		r = kv(c->fd, KVM_SET_FPU, &v->fpu, "KVM_SET_FPU", i, err, errlen);
	if (r < 0)
		return r;
	if (v->has_xcrs && (r = kv(c->fd, KVM_SET_XCRS, &v->xcrs, "KVM_SET_XCRS", i, err, errlen)) < 0)
		return r;
	if ((r = kv(c->fd, KVM_SET_SREGS, &v->sregs, "KVM_SET_SREGS", i, err, errlen)) < 0)
		return r;
	struct kvm_msrs *m = calloc(1, sizeof(*m) + (size_t)v->n_msrs * sizeof(struct kvm_msr_entry));
	if (!m) {
		fault(err, errlen, "out of memory for MSRs");
		return -ENOMEM;
	}
	m->nmsrs = v->n_msrs;
	memcpy(m->entries, v->msrs, v->n_msrs * sizeof(v->msrs[0]));
	int n = ioctl(c->fd, KVM_SET_MSRS, m);
	if (n < 0) {
		r = -errno;
		fault(err, errlen, "vCPU %d: KVM_SET_MSRS: %s", i, strerror(-r));
	} else if ((uint32_t)n != v->n_msrs) {
		fault(err, errlen, "vCPU %d: KVM refused MSR 0x%x (set %d of %u)", i, v->msrs[n].index, n, v->n_msrs);
		r = -EINVAL;
	}
	free(m);
	if (r < 0)
		return r;
	if ((r = kv(c->fd, KVM_SET_MP_STATE, &v->mp_state, "KVM_SET_MP_STATE", i, err, errlen)) < 0 ||
	    (r = kv(c->fd, KVM_SET_LAPIC, &v->lapic, "KVM_SET_LAPIC", i, err, errlen)) < 0 ||
	    (r = kv(c->fd, KVM_SET_VCPU_EVENTS, &v->events, "KVM_SET_VCPU_EVENTS", i, err, errlen)) < 0 ||
	    (r = kv(c->fd, KVM_SET_DEBUGREGS, &v->debugregs, "KVM_SET_DEBUGREGS", i, err, errlen)) < 0)
		return r;
	return 0;
}

/* The transport and model of device |d| as saved, every ring re-checked
 * against guest RAM. */
static int restore_dev(struct kvmm_vm_dev *d, const struct kvmm_vmstate_dev *s, char *err, size_t errlen)
{
	struct virtio_mmio_dev *m = d->mmio;
	if (s->n_queues != m->ops->num_queues) {
		fault(err, errlen, "%s: %u queues in the snapshot, %u in this kvmm", d->label, s->n_queues,
		      m->ops->num_queues);
		return -EINVAL;
	}
	if (s->driver_features & ~m->device_features) {
		fault(err, errlen, "%s: the snapshot's driver features 0x%llx are not all offered by this kvmm (0x%llx)",
		      d->label, (unsigned long long)s->driver_features, (unsigned long long)m->device_features);
		return -EINVAL;
	}
	if (d->kind == KVMM_DEV_BLK && s->blk_size != d->u.blk.be.size) {
		fault(err, errlen, "%s: its file is %llu bytes now, %llu bytes when the snapshot was taken", d->label,
		      (unsigned long long)d->u.blk.be.size, (unsigned long long)s->blk_size);
		return -EINVAL;
	}
	if (d->kind == KVMM_DEV_VSOCK && s->vsock_cid != d->u.vsock.guest_cid) {
		fault(err, errlen, "%s: guest CID %llu in the device state, %llu in the configuration", d->label,
		      (unsigned long long)s->vsock_cid, (unsigned long long)d->u.vsock.guest_cid);
		return -EINVAL;
	}
	m->status = s->status;
	m->device_features_sel = s->device_features_sel;
	m->driver_features_sel = s->driver_features_sel;
	m->queue_sel = s->queue_sel;
	m->interrupt_status = s->interrupt_status;
	m->config_generation = s->config_generation;
	m->driver_features = s->driver_features;
	for (uint16_t i = 0; i < s->n_queues; i++) {
		const struct kvmm_vmstate_queue *q = &s->q[i];
		m->qcfg[i] = q->qcfg;
		virtq_init(&m->vq[i]);
		if (!q->ready)
			continue;
		if (virtq_configure(&m->vq[i], m->mem, q->size, q->desc_gpa, q->avail_gpa, q->used_gpa, q->event_idx) <
		    0) {
			fault(err, errlen, "%s: queue %u's rings (size %u at 0x%llx, 0x%llx, 0x%llx) are not in guest RAM",
			      d->label, i, q->size, (unsigned long long)q->desc_gpa, (unsigned long long)q->avail_gpa,
			      (unsigned long long)q->used_gpa);
			return -EINVAL;
		}
		m->vq[i].last_avail = q->last_avail;
		m->vq[i].used_idx = q->used_idx;
		m->vq[i].signalled_used = q->signalled_used;
	}
	if (d->kind == KVMM_DEV_BLK) {
		d->u.blk.requests = s->blk_requests;
		d->u.blk.errors = s->blk_errors;
	}
	return 0;
}

static void restore_legacy(struct kvmm_vm *vm, const struct kvmm_vmstate *st)
{
	struct kvmm_serial *s = &vm->serial;
	const struct kvmm_vmstate_serial *ss = &st->serial;
	s->ier = ss->ier;
	s->lcr = ss->lcr;
	s->mcr = ss->mcr;
	s->scr = ss->scr;
	s->dll = ss->dll;
	s->dlm = ss->dlm;
	s->lsr_errors = ss->lsr_errors;
	s->fifo_enabled = ss->fifo_enabled;
	s->thr_pending = ss->thr_pending;
	s->irq_level = ss->irq_level; /* the edge it stands for is in the irqchip's state */
	s->rx_head = 0;
	s->rx_len = ss->rx_len;
	memcpy(s->rx, ss->rx, ss->rx_len);
	struct kvmm_i8042 *k = &vm->i8042;
	const struct kvmm_vmstate_i8042 *ks = &st->i8042;
	k->ctr = ks->ctr;
	k->output_port = ks->output_port;
	k->pending_cmd = ks->pending_cmd;
	k->kbd_pending = ks->kbd_pending;
	k->scancode_set = ks->scancode_set;
	k->last_out = ks->last_out;
	k->last_was_cmd = ks->last_was_cmd;
	k->out_head = 0;
	k->out_len = ks->out_len;
	memcpy(k->out, ks->out, ks->out_len);
}

/* Work the guest queued but the old VM had not taken yet: process every
 * live queue as if kicked, raise again what was pending, and tell the vsock
 * driver its connections are gone. */
static void restart_devices(struct kvmm_vm *vm)
{
	for (size_t i = 0; i < vm->n_devs; i++) {
		struct kvmm_vm_dev *d = &vm->devs[i];
		pthread_mutex_lock(&d->lock);
		for (uint16_t q = 0; q < d->mmio->ops->num_queues; q++)
			if (virtio_mmio_queue(d->mmio, q))
				d->mmio->ops->notify(d->mmio, q);
		if (d->mmio->interrupt_status)
			d->mmio->irq(d->mmio->irq_ctx);
		if (d->kind == KVMM_DEV_VSOCK && virtio_mmio_queue(d->mmio, 0)) {
			int r = virtio_vsock_transport_reset(&d->u.vsock);
			if (r == 0)
				log_info("%s: the guest was told its transport was reset (host connections are not "
					 "restored)",
					 d->label);
			else
				log_warn("%s: cannot post the transport-reset event (%s); the guest keeps its stale "
					 "connections until they time out",
					 d->label, strerror(-r));
		}
		pthread_mutex_unlock(&d->lock);
	}
}

/* The memory backend, opened and checked before any VM exists, so a wrong
 * file or a handler nobody runs costs the caller no VM: for File the memory
 * file (regular, exactly the snapshot's RAM size), for Uffd a socket
 * connected to the page-fault handler.  Returns the descriptor or -errno
 * (with |err| set). */
static int open_mem_backend(enum kvmm_mem_backend_type backend, const char *path, const struct kvmm_config *cfg,
			    char *err, size_t errlen)
{
	if (backend == KVMM_MEM_UFFD) {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		if (strlen(path) >= sizeof(sa.sun_path)) {
			fault(err, errlen, "mem_backend %s: longer than a unix socket path may be", path);
			return -ENAMETOOLONG;
		}
		strcpy(sa.sun_path, path);
		int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (s < 0 || connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
			int e = errno;
			fault(err, errlen, "mem_backend %s: connecting to the page-fault handler: %s (is it listening?)",
			      path, strerror(e));
			if (s >= 0)
				close(s);
			return -e;
		}
		return s;
	}
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		fault(err, errlen, "mem_backend %s: %s", path, strerror(e));
		return -e;
	}
	struct stat sb;
	if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		fault(err, errlen, "mem_backend %s: not a regular file", path);
		close(fd);
		return -EINVAL;
	}
	uint64_t ram_size = (uint64_t)cfg->mem_size_mib << 20;
	if ((uint64_t)sb.st_size != ram_size) {
		fault(err, errlen,
		      "mem_backend %s is %llu bytes; the snapshot's RAM is %llu bytes (mem_size_mib %u): the wrong "
		      "memory file for this snapshot",
		      path, (unsigned long long)sb.st_size, (unsigned long long)ram_size, cfg->mem_size_mib);
		close(fd);
		return -EINVAL;
	}
	return fd;
}

/* The memory file |fd| (from open_mem_backend; always closed here), mapped
 * private: pages come from the page cache as the guest touches them, and its
 * writes stay in this process. */
static int map_file(struct kvmm_vm *vm, const char *path, int fd, uint8_t **out, char *err, size_t errlen)
{
	void *p = mmap(NULL, (size_t)vm->ram_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
	int e = errno;
	close(fd);
	if (p == MAP_FAILED) {
		fault(err, errlen, "mem_backend %s: mmap: %s", path, strerror(e));
		return -e;
	}
	*out = p;
	return 0;
}

/* Firecracker's Uffd handshake: anonymous RAM registered with a userfaultfd
 * for missing pages, and ONE message to the handler on |path|: the regions
 * as JSON with the userfaultfd attached.  The connection stays open for the
 * VM's life, so the handler sees EOF when kvmm exits. */
static int map_uffd(struct kvmm_vm *vm, const char *path, int sock, uint8_t **out, char *err, size_t errlen)
{
	vm->uffd_sock = sock; /* the VM owns it from here, failure or not */
	void *p = mmap(NULL, (size_t)vm->ram_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		       -1, 0);
	if (p == MAP_FAILED) {
		int e = errno;
		fault(err, errlen, "mapping %u MiB of guest RAM: %s", vm->cfg.mem_size_mib, strerror(e));
		return -e;
	}
	*out = p; /* vm_set_ram() takes it, or the caller unmaps it */
	int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (uffd < 0) {
		int e = errno;
		fault(err, errlen, "mem_backend Uffd: userfaultfd: %s%s", strerror(e),
		      e == EPERM ? " (set vm.unprivileged_userfaultfd=1 or give kvmm CAP_SYS_PTRACE)" : "");
		return -e;
	}
	vm->uffd = uffd;
	struct uffdio_api api = { .api = UFFD_API };
	if (ioctl(uffd, UFFDIO_API, &api) < 0) {
		int e = errno;
		fault(err, errlen, "mem_backend Uffd: UFFDIO_API: %s", strerror(e));
		return -e;
	}
	/* The regions: below the MMIO hole, then above 4 GiB; each one's offset
	 * in the memory file is its offset in our mapping. */
	uint64_t low = vm->ram_size < KVMM_MMIO_HOLE_GPA ? vm->ram_size : KVMM_MMIO_HOLE_GPA;
	uint64_t base[2] = { 0, low }, size[2] = { low, vm->ram_size - low };
	char msg[512];
	size_t used = (size_t)snprintf(msg, sizeof(msg), "[");
	for (int i = 0; i < 2 && size[i]; i++) {
		struct uffdio_register reg = {
			.range = { .start = (uint64_t)(uintptr_t)p + base[i], .len = size[i] },
			.mode = UFFDIO_REGISTER_MODE_MISSING,
		};
		if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) {
			int e = errno;
			fault(err, errlen, "mem_backend Uffd: UFFDIO_REGISTER: %s", strerror(e));
			return -e;
		}
		used += (size_t)snprintf(msg + used, sizeof(msg) - used,
					 "%s{\"base_host_virt_addr\": %llu, \"size\": %llu, \"offset\": %llu, "
					 "\"page_size\": %u}",
					 i ? ", " : "", (unsigned long long)reg.range.start,
					 (unsigned long long)size[i], (unsigned long long)base[i], PAGE);
	}
	used += (size_t)snprintf(msg + used, sizeof(msg) - used, "]");

	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} ctl;
	memset(&ctl, 0, sizeof(ctl));
	struct iovec iov = { .iov_base = msg, .iov_len = used };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &uffd, sizeof(int));
	ssize_t n;
	do
		n = sendmsg(sock, &mh, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n != (ssize_t)used) {
		int e = n < 0 ? errno : EIO;
		fault(err, errlen, "mem_backend %s: sending the regions to the page-fault handler: %s", path,
		      strerror(e));
		return -e;
	}
	log_info("mem_backend Uffd: %s serves the guest's RAM: %s", path, msg);
	return 0;
}

/* |backend_fd| is open_mem_backend()'s descriptor, which this consumes. */
static int restore_into(struct kvmm_vm *vm, struct kvmm_vmstate *st, enum kvmm_mem_backend_type backend,
			const char *backend_path, int backend_fd, char *err, size_t errlen)
{
	uint8_t *ram = NULL;
	int r = backend == KVMM_MEM_FILE ? map_file(vm, backend_path, backend_fd, &ram, err, errlen)
					 : map_uffd(vm, backend_path, backend_fd, &ram, err, errlen);
	if (r < 0) {
		if (ram)
			munmap(ram, (size_t)vm->ram_size);
		return r;
	}
	if ((r = vm_set_ram(vm, ram)) < 0) {
		fault(err, errlen, "registering guest RAM with KVM: %s", strerror(-r));
		return r;
	}
	vm->cpuid = calloc(1, sizeof(*vm->cpuid) + st->n_cpuid * sizeof(struct kvm_cpuid_entry2));
	if (!vm->cpuid) {
		fault(err, errlen, "out of memory for CPUID");
		return -ENOMEM;
	}
	vm->cpuid->nent = st->n_cpuid;
	memcpy(vm->cpuid->entries, st->cpuid, st->n_cpuid * sizeof(st->cpuid[0]));
	if ((r = vm_add_devices(vm)) < 0) {
		fault(err, errlen, "setting up the snapshot's devices (drives %s, vsock %s): %s; kvmm's log has "
				   "the details",
		      vm->cfg.n_drives ? vm->cfg.drives[0].path_on_host : "none",
		      vm->cfg.has_vsock ? vm->cfg.vsock_uds_path : "none", strerror(-r));
		return r;
	}
	for (unsigned i = 0; i < vm->n_vcpus; i++) {
		if ((r = vcpu_create_bare(vm, i)) < 0) {
			fault(err, errlen, "creating vCPU %u: %s", i, strerror(-r));
			return r;
		}
		if ((r = restore_vcpu(vm, &vm->vcpus[i], &st->vcpu[i], err, errlen)) < 0)
			return r;
	}
	struct kvm_clock_data clock = { .clock = st->clock.clock }; /* no REALTIME: the guest's time does not jump */
	if ((r = kv(vm->vm_fd, KVM_SET_PIT2, &st->pit, "KVM_SET_PIT2", -1, err, errlen)) < 0 ||
	    (r = kv(vm->vm_fd, KVM_SET_IRQCHIP, &st->pic_master, "KVM_SET_IRQCHIP (PIC master)", -1, err, errlen)) < 0 ||
	    (r = kv(vm->vm_fd, KVM_SET_IRQCHIP, &st->pic_slave, "KVM_SET_IRQCHIP (PIC slave)", -1, err, errlen)) < 0 ||
	    (r = kv(vm->vm_fd, KVM_SET_IRQCHIP, &st->ioapic, "KVM_SET_IRQCHIP (IOAPIC)", -1, err, errlen)) < 0 ||
	    (r = kv(vm->vm_fd, KVM_SET_CLOCK, &clock, "KVM_SET_CLOCK", -1, err, errlen)) < 0)
		return r;
	restore_legacy(vm, st);
	for (size_t i = 0; i < vm->n_devs; i++)
		if ((r = restore_dev(&vm->devs[i], &st->devs[i], err, errlen)) < 0)
			return r;
	restart_devices(vm);
	return 0;
}

/* What the snapshot's configuration reopens, as Firecracker does: each
 * drive's file must be readable again, and the vsock socket path free. */
static int check_paths(const struct kvmm_config *c, char *err, size_t errlen)
{
	for (size_t i = 0; i < c->n_drives; i++) {
		if (access(c->drives[i].path_on_host, R_OK) < 0) {
			int e = errno;
			snprintf(err, errlen, "drive %s: path_on_host %s: %s", c->drives[i].drive_id,
				 c->drives[i].path_on_host, strerror(e));
			return -e;
		}
	}
	struct stat sb;
	if (c->has_vsock && lstat(c->vsock_uds_path, &sb) == 0) {
		snprintf(err, errlen, "vsock uds_path %s exists (left by the snapshotted kvmm?); remove it first",
			 c->vsock_uds_path);
		return -EADDRINUSE;
	}
	return 0;
}

/* |ov| onto the snapshot's configuration |c|: a new vsock socket path, a new
 * file for a drive the snapshot has. */
static int apply_overrides(struct kvmm_config *c, const struct kvmm_restore_overrides *ov, char *err, size_t errlen)
{
	if (!ov)
		return 0;
	if (ov->vsock_uds_path) {
		if (!c->has_vsock) {
			snprintf(err, errlen, "vsock_override: the snapshot has no vsock device");
			return -ENOENT;
		}
		if (strlen(ov->vsock_uds_path) > KVMM_UDS_PATH_MAX) {
			snprintf(err, errlen, "vsock_override.uds_path %s: longer than a unix socket path may be",
				 ov->vsock_uds_path);
			return -ENAMETOOLONG;
		}
		char *p = strdup(ov->vsock_uds_path);
		if (!p) {
			snprintf(err, errlen, "out of memory");
			return -ENOMEM;
		}
		free(c->vsock_uds_path);
		c->vsock_uds_path = p;
	}
	for (size_t i = 0; i < ov->n_drives; i++) {
		size_t d = 0;
		while (d < c->n_drives && strcmp(c->drives[d].drive_id, ov->drives[i].drive_id) != 0)
			d++;
		if (d == c->n_drives) {
			char ids[KVMM_MAX_DRIVES * (KVMM_DRIVE_ID_MAX + 2)] = "";
			for (size_t k = 0; k < c->n_drives; k++) {
				strcat(ids, k ? ", " : "");
				strcat(ids, c->drives[k].drive_id);
			}
			snprintf(err, errlen, "drive_overrides[%zu]: the snapshot has no drive \"%.64s\" (its drives: %s)",
				 i, ov->drives[i].drive_id, c->n_drives ? ids : "none");
			return -ENOENT;
		}
		char *p = strdup(ov->drives[i].path_on_host);
		if (!p) {
			snprintf(err, errlen, "out of memory");
			return -ENOMEM;
		}
		free(c->drives[d].path_on_host);
		c->drives[d].path_on_host = p;
	}
	return 0;
}

int kvmm_vm_restore(const char *vmstate_path, enum kvmm_mem_backend_type backend, const char *backend_path,
		    const struct kvmm_restore_overrides *ov, bool resume, struct kvmm_config *cfg_out, struct kvmm_vm **out, char *err, size_t errlen)
{
	*out = NULL;
	uint8_t *buf = NULL;
	size_t len = 0;
	int r = read_file_all(vmstate_path, KVMM_VMSTATE_HEADER_LEN + KVMM_VMSTATE_MAX_BODY, &buf, &len);
	if (r < 0) {
		fault(err, errlen, "snapshot_path %s: %s", vmstate_path,
		      r == -EFBIG ? "larger than any vmstate file" : strerror(-r));
		return r;
	}
	struct kvmm_vmstate *st = kvmm_vmstate_new();
	if (!st) {
		free(buf);
		fault(err, errlen, "out of memory for the VM state");
		return -ENOMEM;
	}
	char why[384];
	r = kvmm_vmstate_decode(buf, len, st, why, sizeof(why));
	free(buf);
	if (r < 0) {
		fault(err, errlen, "snapshot_path %s: %s", vmstate_path, why);
		kvmm_vmstate_free(st);
		return r;
	}
	struct kvmm_vm *vm = NULL;
	char cfg_err[512];
	int backend_fd = -1;
	if ((r = apply_overrides(&st->cfg, ov, cfg_err, sizeof(cfg_err))) < 0 ||
	    (r = check_paths(&st->cfg, cfg_err, sizeof(cfg_err))) < 0) {
		fault(err, errlen, "snapshot_path %s: %s", vmstate_path, cfg_err);
	} else if ((r = backend_fd = open_mem_backend(backend, backend_path, &st->cfg, err, errlen)) < 0) {
		/* err names the backend and the fault */
	} else if ((r = vm_new(&st->cfg, &vm)) < 0) {
		close(backend_fd);
		fault(err, errlen, "snapshot_path %s: cannot create the VM: %s (kvmm's log has the details)",
		      vmstate_path, strerror(-r));
	} else if ((r = restore_into(vm, st, backend, backend_path, backend_fd, err, errlen)) == 0) {
		struct kvmm_config cfg;
		if ((r = kvmm_config_copy(&cfg, &st->cfg)) < 0) {
			fault(err, errlen, "out of memory");
		} else {
			kvmm_config_free(cfg_out);
			*cfg_out = cfg;
		}
	}
	kvmm_vmstate_free(st);
	if (r < 0) {
		kvmm_vm_destroy(vm);
		return r;
	}
	if (!resume) {
		/* Parked from the start; PATCH /vm Resumed lets them run. */
		atomic_store(&vm->paused, true);
		uint64_t one = 1;
		if (write(vm->pause_fd, &one, sizeof(one)) < 0)
			log_warn("pausing the device loop: %s", strerror(errno));
	}
	log_info("restored the VM of %s (%u vCPUs, %u MiB, memory from %s %s)", vmstate_path, vm->n_vcpus,
		 vm->cfg.mem_size_mib, backend == KVMM_MEM_FILE ? "file" : "Uffd handler", backend_path);
	*out = vm;
	return 0;
}
