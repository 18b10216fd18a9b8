/* The snapshot's VM-state file: encoding, and the one checked parser every
 * vmstate byte goes through (a byte cursor, common/bytes.h; every length and
 * count is checked before it is used). */
/* The low-level SHA-256 calls, not deprecated at this API level. */
#define OPENSSL_API_COMPAT 0x10100000L
#include <errno.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOG_COMPONENT "kvmm"
#include "common/bytes.h"
#include "common/common.h"
#include "vmm/kvmm/api.h"
#include "vmm/kvmm/config.h"
#include "vmm/kvmm/vmstate.h"

enum {
	SEC_CONFIG = 1,
	SEC_CPUID = 2,
	SEC_VCPU = 3,
	SEC_VM = 4,
	SEC_SERIAL = 5,
	SEC_I8042 = 6,
	SEC_VIRTIO = 7,
};

#define PATH_FIELD_MAX 4096u

static const char *sec_name(uint32_t tag)
{
	switch (tag) {
	case SEC_CONFIG:
		return "CONFIG";
	case SEC_CPUID:
		return "CPUID";
	case SEC_VCPU:
		return "VCPU";
	case SEC_VM:
		return "VM";
	case SEC_SERIAL:
		return "SERIAL";
	case SEC_I8042:
		return "I8042";
	case SEC_VIRTIO:
		return "VIRTIO";
	}
	return "?";
}

struct kvmm_vmstate *kvmm_vmstate_new(void)
{
	struct kvmm_vmstate *s = calloc(1, sizeof(*s));
	if (!s) {
		errno = ENOMEM;
		return NULL;
	}
	kvmm_config_init(&s->cfg);
	return s;
}

void kvmm_vmstate_free(struct kvmm_vmstate *s)
{
	if (!s)
		return;
	kvmm_config_free(&s->cfg);
	free(s);
}

const char *kvmm_vmstate_build(void)
{
	return "kvmm " KVMM_VMM_VERSION " vmstate 1";
}

__attribute__((format(printf, 3, 4))) static void say(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* The body's SHA-256 with OpenSSL's low-level calls rather than
 * sha256_buf(): that one-shot fetches a digest provider on first use, which
 * reads openssl.cnf (the API thread's seccomp filter forbids opening it once
 * the VM runs; kvmm died of it) and grows the monitor by about 2 MiB of
 * resident memory (its budget is 5 MiB). */
static void body_sha256(const uint8_t *p, size_t n, uint8_t out[SHA256_LEN])
{
	SHA256_CTX c;
	SHA256_Init(&c);
	SHA256_Update(&c, p, n);
	SHA256_Final(out, &c);
}

/* ---- writing ------------------------------------------------------------------------ */

struct wbuf {
	uint8_t *p;
	size_t len, cap;
	bool failed;
};

static uint8_t *w_room(struct wbuf *w, size_t n)
{
	if (w->failed)
		return NULL;
	if (n > w->cap - w->len) {
		size_t cap = w->cap ? w->cap : 4096;
		while (n > cap - w->len) {
			if (!ck_mul_size(cap, 2, &cap)) {
				w->failed = true;
				return NULL;
			}
		}
		uint8_t *np = realloc(w->p, cap);
		if (!np) {
			w->failed = true;
			return NULL;
		}
		w->p = np;
		w->cap = cap;
	}
	uint8_t *at = w->p + w->len;
	w->len += n;
	return at;
}

static void w_bytes(struct wbuf *w, const void *p, size_t n)
{
	uint8_t *at = w_room(w, n);
	if (at && n)
		memcpy(at, p, n);
}

static void w_u8(struct wbuf *w, uint8_t v) { w_bytes(w, &v, 1); }
static void w_u16(struct wbuf *w, uint16_t v)
{
	uint8_t *at = w_room(w, 2);
	if (at)
		put_le16(at, v);
}
static void w_u32(struct wbuf *w, uint32_t v)
{
	uint8_t *at = w_room(w, 4);
	if (at)
		put_le32(at, v);
}
static void w_u64(struct wbuf *w, uint64_t v)
{
	uint8_t *at = w_room(w, 8);
	if (at)
		put_le64(at, v);
}

/* A KVM structure: its length, then its ABI bytes. */
static void w_blob(struct wbuf *w, const void *p, size_t n)
{
	w_u32(w, (uint32_t)n);
	w_bytes(w, p, n);
}

static void w_str(struct wbuf *w, const char *s)
{
	size_t n = s ? strlen(s) : 0;
	w_u32(w, (uint32_t)n);
	w_bytes(w, s, n);
}

/* Start a section: returns where its length goes, patched by sec_end(). */
static size_t sec_begin(struct wbuf *w, uint32_t tag)
{
	w_u32(w, tag);
	size_t at = w->len;
	w_u32(w, 0);
	return at;
}

static void sec_end(struct wbuf *w, size_t at)
{
	if (!w->failed)
		put_le32(w->p + at, (uint32_t)(w->len - at - 4));
}

static void enc_config(struct wbuf *w, const struct kvmm_config *c)
{
	size_t s = sec_begin(w, SEC_CONFIG);
	w_u32(w, c->vcpu_count);
	w_u32(w, c->mem_size_mib);
	w_u32(w, (uint32_t)c->n_drives);
	for (size_t i = 0; i < c->n_drives; i++) {
		w_str(w, c->drives[i].drive_id);
		w_str(w, c->drives[i].path_on_host);
		w_u8(w, c->drives[i].is_root_device);
		w_u8(w, c->drives[i].is_read_only);
	}
	w_u8(w, c->has_vsock);
	if (c->has_vsock) {
		w_u32(w, c->guest_cid);
		w_str(w, c->vsock_uds_path);
	}
	sec_end(w, s);
}

static void enc_vcpu(struct wbuf *w, const struct kvmm_vmstate_vcpu *v)
{
	size_t s = sec_begin(w, SEC_VCPU);
	w_blob(w, &v->regs, sizeof(v->regs));
	w_blob(w, &v->sregs, sizeof(v->sregs));
	w_u8(w, v->has_xsave);
	if (v->has_xsave)
		w_blob(w, &v->xsave, sizeof(v->xsave));
	else
		w_blob(w, &v->fpu, sizeof(v->fpu));
	w_u8(w, v->has_xcrs);
	if (v->has_xcrs)
		w_blob(w, &v->xcrs, sizeof(v->xcrs));
	w_blob(w, &v->lapic, sizeof(v->lapic));
	w_u32(w, v->n_msrs);
	for (uint32_t i = 0; i < v->n_msrs; i++) {
		w_u32(w, v->msrs[i].index);
		w_u64(w, v->msrs[i].data);
	}
	w_blob(w, &v->events, sizeof(v->events));
	w_blob(w, &v->debugregs, sizeof(v->debugregs));
	w_blob(w, &v->mp_state, sizeof(v->mp_state));
	w_u32(w, v->tsc_khz);
	sec_end(w, s);
}

static void enc_dev(struct wbuf *w, const struct kvmm_vmstate_dev *d)
{
	size_t s = sec_begin(w, SEC_VIRTIO);
	w_u32(w, d->kind);
	w_u32(w, d->status);
	w_u32(w, d->device_features_sel);
	w_u32(w, d->driver_features_sel);
	w_u32(w, d->queue_sel);
	w_u32(w, d->interrupt_status);
	w_u32(w, d->config_generation);
	w_u64(w, d->driver_features);
	w_u16(w, d->n_queues);
	for (uint16_t i = 0; i < d->n_queues; i++) {
		const struct kvmm_vmstate_queue *q = &d->q[i];
		w_u16(w, q->qcfg.num);
		w_u64(w, q->qcfg.desc);
		w_u64(w, q->qcfg.driver);
		w_u64(w, q->qcfg.device);
		w_u8(w, q->ready);
		w_u8(w, q->event_idx);
		w_u16(w, q->size);
		w_u64(w, q->desc_gpa);
		w_u64(w, q->avail_gpa);
		w_u64(w, q->used_gpa);
		w_u16(w, q->last_avail);
		w_u16(w, q->used_idx);
		w_u16(w, q->signalled_used);
	}
	if (d->kind == KVMM_VMSTATE_DEV_BLK) {
		w_u64(w, d->blk_size);
		w_u64(w, d->blk_requests);
		w_u64(w, d->blk_errors);
	} else {
		w_u64(w, d->vsock_cid);
	}
	sec_end(w, s);
}

/* The limits the parser enforces, checked on the way out too, so kvmm never
 * writes a file it would refuse. */
static int check_limits(const struct kvmm_vmstate *s, char *err, size_t errlen)
{
	const struct kvmm_config *c = &s->cfg;
	if (c->vcpu_count < 1 || c->vcpu_count > KVMM_MAX_VCPUS || c->n_drives > KVMM_MAX_DRIVES ||
	    c->mem_size_mib < KVMM_MIN_MEM_MIB || c->mem_size_mib > KVMM_MAX_MEM_MIB) {
		say(err, errlen, "the VM's configuration is out of the format's range");
		return -EINVAL;
	}
	if (s->n_cpuid > KVMM_VMSTATE_MAX_CPUID || s->n_devs > KVMM_VMSTATE_MAX_DEVS) {
		say(err, errlen, "too many CPUID entries or devices");
		return -EINVAL;
	}
	for (unsigned i = 0; i < c->vcpu_count; i++)
		if (s->vcpu[i].n_msrs > KVMM_VMSTATE_MAX_MSRS) {
			say(err, errlen, "vCPU %u has more than %u MSRs", i, KVMM_VMSTATE_MAX_MSRS);
			return -EINVAL;
		}
	for (uint32_t i = 0; i < s->n_devs; i++)
		if (s->devs[i].n_queues < 1 || s->devs[i].n_queues > VIRTIO_MMIO_MAX_QUEUES) {
			say(err, errlen, "device %u has %u queues", i, s->devs[i].n_queues);
			return -EINVAL;
		}
	for (size_t i = 0; i < c->n_drives; i++)
		if (!c->drives[i].path_on_host || strlen(c->drives[i].path_on_host) > PATH_FIELD_MAX) {
			say(err, errlen, "drive %s has no usable path", c->drives[i].drive_id);
			return -EINVAL;
		}
	if (c->has_vsock && (!c->vsock_uds_path || strlen(c->vsock_uds_path) > KVMM_UDS_PATH_MAX)) {
		say(err, errlen, "the vsock device has no usable uds_path");
		return -EINVAL;
	}
	if (s->serial.rx_len > KVMM_SERIAL_FIFO || s->i8042.out_len > KVMM_I8042_QUEUE) {
		say(err, errlen, "a legacy device's queue is over its size");
		return -EINVAL;
	}
	return 0;
}

int kvmm_vmstate_encode(const struct kvmm_vmstate *s, uint8_t **out, size_t *out_len, char *err, size_t errlen)
{
	*out = NULL;
	*out_len = 0;
	int r = check_limits(s, err, errlen);
	if (r < 0)
		return r;
	struct wbuf w = {0};
	w_room(&w, KVMM_VMSTATE_HEADER_LEN); /* filled last */
	enc_config(&w, &s->cfg);

	size_t sec = sec_begin(&w, SEC_CPUID);
	w_u32(&w, s->n_cpuid);
	for (uint32_t i = 0; i < s->n_cpuid; i++)
		w_blob(&w, &s->cpuid[i], sizeof(s->cpuid[i]));
	sec_end(&w, sec);

	for (unsigned i = 0; i < s->cfg.vcpu_count; i++)
		enc_vcpu(&w, &s->vcpu[i]);

	sec = sec_begin(&w, SEC_VM);
	w_blob(&w, &s->clock, sizeof(s->clock));
	w_blob(&w, &s->pic_master, sizeof(s->pic_master));
	w_blob(&w, &s->pic_slave, sizeof(s->pic_slave));
	w_blob(&w, &s->ioapic, sizeof(s->ioapic));
	w_blob(&w, &s->pit, sizeof(s->pit));
	sec_end(&w, sec);

	const struct kvmm_vmstate_serial *se = &s->serial;
	sec = sec_begin(&w, SEC_SERIAL);
	const uint8_t regs[] = { se->ier, se->lcr, se->mcr, se->scr, se->dll, se->dlm, se->lsr_errors,
				 se->fifo_enabled, se->thr_pending, se->irq_level };
	w_bytes(&w, regs, sizeof(regs));
	w_u8(&w, se->rx_len);
	w_bytes(&w, se->rx, se->rx_len);
	sec_end(&w, sec);

	const struct kvmm_vmstate_i8042 *k = &s->i8042;
	sec = sec_begin(&w, SEC_I8042);
	const uint8_t kregs[] = { k->ctr, k->output_port, k->pending_cmd, k->kbd_pending,
				  k->scancode_set, k->last_out, k->last_was_cmd };
	w_bytes(&w, kregs, sizeof(kregs));
	w_u8(&w, k->out_len);
	w_bytes(&w, k->out, k->out_len);
	sec_end(&w, sec);

	w_u32(&w, s->n_devs); /* not a section: how many VIRTIO sections follow */
	for (uint32_t i = 0; i < s->n_devs; i++)
		enc_dev(&w, &s->devs[i]);

	if (w.failed) {
		free(w.p);
		say(err, errlen, "out of memory");
		return -ENOMEM;
	}
	/* The header, now that the body is known. */
	uint8_t *h = w.p;
	memset(h, 0, KVMM_VMSTATE_HEADER_LEN);
	memcpy(h, KVMM_VMSTATE_MAGIC, 8);
	put_le32(h + 8, KVMM_VMSTATE_VERSION);
	put_le32(h + 12, KVMM_VMSTATE_HEADER_LEN);
	snprintf((char *)h + 16, KVMM_VMSTATE_BUILD_LEN, "%s", kvmm_vmstate_build());
	size_t body = w.len - KVMM_VMSTATE_HEADER_LEN;
	put_le64(h + 80, body);
	body_sha256(w.p + KVMM_VMSTATE_HEADER_LEN, body, h + 88);
	*out = w.p;
	*out_len = w.len;
	return 0;
}

/* ---- THE parser ----------------------------------------------------------------------- */

struct rd {
	struct byte_cursor c;
	char *err;
	size_t errlen;
	const char *where; /* the section being read, for messages */
	bool bad;	   /* a message was written */
};

__attribute__((format(printf, 2, 3))) static void bad(struct rd *r, const char *fmt, ...)
{
	if (r->bad)
		return; /* the first fault is the one reported */
	char msg[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	say(r->err, r->errlen, "section %s: %s", r->where, msg);
	r->bad = true;
}

static bool r_ok(struct rd *r)
{
	if (!cur_ok(&r->c))
		bad(r, "truncated");
	return !r->bad;
}

static bool r_bool(struct rd *r, const char *what)
{
	uint8_t v = cur_u8(&r->c);
	if (cur_ok(&r->c) && v > 1)
		bad(r, "%s is %u, not a boolean", what, v);
	return v == 1;
}

/* A KVM structure of exactly |n| bytes. */
static void r_blob(struct rd *r, void *out, size_t n, const char *what)
{
	uint32_t len = cur_le32(&r->c);
	if (!cur_ok(&r->c))
		return;
	if (len != n) {
		bad(r, "%s is %u bytes; this kvmm's is %zu", what, len, n);
		return;
	}
	cur_copy(&r->c, out, n);
}

/* A string of at most |max| bytes without NULs, malloc'd (NULL after a fault). */
static char *r_str(struct rd *r, size_t max, const char *what)
{
	uint32_t len = cur_le32(&r->c);
	if (!cur_ok(&r->c))
		return NULL;
	if (len == 0 || len > max) {
		bad(r, "%s is %u bytes long (1..%zu allowed)", what, len, max);
		return NULL;
	}
	const uint8_t *p = cur_take(&r->c, len);
	if (!p)
		return NULL;
	if (memchr(p, 0, len)) {
		bad(r, "%s contains a NUL byte", what);
		return NULL;
	}
	char *s = malloc((size_t)len + 1);
	if (!s) {
		bad(r, "out of memory");
		return NULL;
	}
	memcpy(s, p, len);
	s[len] = 0;
	return s;
}

/* Open the next section, which must be |tag|: |sub| reads its payload only. */
static bool r_section(struct rd *r, uint32_t tag, struct rd *sub)
{
	r->where = sec_name(tag);
	uint32_t t = cur_le32(&r->c), len = cur_le32(&r->c);
	if (!r_ok(r))
		return false;
	if (t != tag) {
		bad(r, "expected here, found section tag %u", t);
		return false;
	}
	const uint8_t *p = cur_take(&r->c, len);
	if (!p) {
		bad(r, "its length %u runs past the end of the file", len);
		return false;
	}
	*sub = (struct rd){ .c = cur_init(p, len), .err = r->err, .errlen = r->errlen, .where = r->where };
	return true;
}

/* Close a section: it must have been read exactly. */
static bool r_section_end(struct rd *r, struct rd *sub)
{
	if (!r_ok(sub)) {
		r->bad = true;
		return false;
	}
	if (cur_left(&sub->c)) {
		bad(sub, "%zu bytes left over", cur_left(&sub->c));
		r->bad = true;
		return false;
	}
	return true;
}

static void dec_config(struct rd *r, struct kvmm_config *c)
{
	c->vcpu_count = cur_le32(&r->c);
	c->mem_size_mib = cur_le32(&r->c);
	uint32_t n = cur_le32(&r->c);
	if (!r_ok(r))
		return;
	if (c->vcpu_count < 1 || c->vcpu_count > KVMM_MAX_VCPUS) {
		bad(r, "%u vCPUs (1..%d allowed)", c->vcpu_count, KVMM_MAX_VCPUS);
		return;
	}
	if (c->mem_size_mib < KVMM_MIN_MEM_MIB || c->mem_size_mib > KVMM_MAX_MEM_MIB) {
		bad(r, "%u MiB of memory (%u..%u allowed)", c->mem_size_mib, KVMM_MIN_MEM_MIB, KVMM_MAX_MEM_MIB);
		return;
	}
	if (n > KVMM_MAX_DRIVES) {
		bad(r, "%u drives (at most %d)", n, KVMM_MAX_DRIVES);
		return;
	}
	for (uint32_t i = 0; i < n && !r->bad; i++) {
		struct kvmm_drive *d = &c->drives[i];
		char *id = r_str(r, KVMM_DRIVE_ID_MAX - 1, "a drive_id");
		if (!id)
			return;
		snprintf(d->drive_id, sizeof(d->drive_id), "%s", id);
		free(id);
		c->n_drives = i + 1; /* from here kvmm_config_free() owns the path */
		d->path_on_host = r_str(r, PATH_FIELD_MAX, "a drive's path_on_host");
		d->is_root_device = r_bool(r, "is_root_device");
		d->is_read_only = r_bool(r, "is_read_only");
	}
	if (!r_ok(r))
		return;
	c->has_vsock = r_bool(r, "has_vsock");
	if (c->has_vsock) {
		c->guest_cid = cur_le32(&r->c);
		c->vsock_uds_path = r_str(r, KVMM_UDS_PATH_MAX, "the vsock uds_path");
		if (r_ok(r) && c->guest_cid < 3)
			bad(r, "vsock guest_cid %u (3 or more)", c->guest_cid);
	}
}

static void dec_vcpu(struct rd *r, struct kvmm_vmstate_vcpu *v)
{
	r_blob(r, &v->regs, sizeof(v->regs), "REGS");
	r_blob(r, &v->sregs, sizeof(v->sregs), "SREGS");
	v->has_xsave = r_bool(r, "has_xsave");
	if (v->has_xsave)
		r_blob(r, &v->xsave, sizeof(v->xsave), "XSAVE");
	else
		r_blob(r, &v->fpu, sizeof(v->fpu), "FPU");
	v->has_xcrs = r_bool(r, "has_xcrs");
	if (v->has_xcrs)
		r_blob(r, &v->xcrs, sizeof(v->xcrs), "XCRS");
	r_blob(r, &v->lapic, sizeof(v->lapic), "LAPIC");
	v->n_msrs = cur_le32(&r->c);
	if (!r_ok(r))
		return;
	if (v->n_msrs > KVMM_VMSTATE_MAX_MSRS) {
		bad(r, "%u MSRs (at most %u)", v->n_msrs, KVMM_VMSTATE_MAX_MSRS);
		return;
	}
	for (uint32_t i = 0; i < v->n_msrs; i++) {
		v->msrs[i].index = cur_le32(&r->c);
		v->msrs[i].data = cur_le64(&r->c);
	}
	r_blob(r, &v->events, sizeof(v->events), "VCPU_EVENTS");
	r_blob(r, &v->debugregs, sizeof(v->debugregs), "DEBUGREGS");
	r_blob(r, &v->mp_state, sizeof(v->mp_state), "MP_STATE");
	v->tsc_khz = cur_le32(&r->c);
}

static void dec_dev(struct rd *r, struct kvmm_vmstate_dev *d)
{
	d->kind = cur_le32(&r->c);
	d->status = cur_le32(&r->c);
	d->device_features_sel = cur_le32(&r->c);
	d->driver_features_sel = cur_le32(&r->c);
	d->queue_sel = cur_le32(&r->c);
	d->interrupt_status = cur_le32(&r->c);
	d->config_generation = cur_le32(&r->c);
	d->driver_features = cur_le64(&r->c);
	d->n_queues = cur_le16(&r->c);
	if (!r_ok(r))
		return;
	if (d->kind != KVMM_VMSTATE_DEV_BLK && d->kind != KVMM_VMSTATE_DEV_VSOCK) {
		bad(r, "device kind %u is neither virtio-blk (1) nor virtio-vsock (2)", d->kind);
		return;
	}
	if (d->n_queues < 1 || d->n_queues > VIRTIO_MMIO_MAX_QUEUES) {
		bad(r, "%u queues (1..%d allowed)", d->n_queues, VIRTIO_MMIO_MAX_QUEUES);
		return;
	}
	for (uint16_t i = 0; i < d->n_queues && !r->bad; i++) {
		struct kvmm_vmstate_queue *q = &d->q[i];
		q->qcfg.num = cur_le16(&r->c);
		q->qcfg.desc = cur_le64(&r->c);
		q->qcfg.driver = cur_le64(&r->c);
		q->qcfg.device = cur_le64(&r->c);
		q->ready = r_bool(r, "a queue's ready");
		q->event_idx = r_bool(r, "a queue's event_idx");
		q->size = cur_le16(&r->c);
		q->desc_gpa = cur_le64(&r->c);
		q->avail_gpa = cur_le64(&r->c);
		q->used_gpa = cur_le64(&r->c);
		q->last_avail = cur_le16(&r->c);
		q->used_idx = cur_le16(&r->c);
		q->signalled_used = cur_le16(&r->c);
		/* The ring addresses are checked against guest RAM when the
		 * queue is configured again (virtq_configure()). */
		if (r_ok(r) && q->ready && (q->size == 0 || q->size > VIRTQ_MAX_SIZE || (q->size & (q->size - 1))))
			bad(r, "queue %u has size %u", i, q->size);
	}
	if (d->kind == KVMM_VMSTATE_DEV_BLK) {
		d->blk_size = cur_le64(&r->c);
		d->blk_requests = cur_le64(&r->c);
		d->blk_errors = cur_le64(&r->c);
	} else {
		d->vsock_cid = cur_le64(&r->c);
	}
}

static int dec_body(struct rd *r, struct kvmm_vmstate *s)
{
	struct rd sub;
	if (r_section(r, SEC_CONFIG, &sub)) {
		dec_config(&sub, &s->cfg);
		r_section_end(r, &sub);
	}
	if (r->bad)
		return -EINVAL;
	if (r_section(r, SEC_CPUID, &sub)) {
		s->n_cpuid = cur_le32(&sub.c);
		if (r_ok(&sub) && (s->n_cpuid == 0 || s->n_cpuid > KVMM_VMSTATE_MAX_CPUID))
			bad(&sub, "%u CPUID entries (1..%u allowed)", s->n_cpuid, KVMM_VMSTATE_MAX_CPUID);
		for (uint32_t i = 0; i < s->n_cpuid && !sub.bad; i++)
			r_blob(&sub, &s->cpuid[i], sizeof(s->cpuid[i]), "a CPUID entry");
		r_section_end(r, &sub);
	}
	for (unsigned i = 0; i < s->cfg.vcpu_count && !r->bad; i++) {
		if (r_section(r, SEC_VCPU, &sub)) {
			dec_vcpu(&sub, &s->vcpu[i]);
			r_section_end(r, &sub);
		}
	}
	if (!r->bad && r_section(r, SEC_VM, &sub)) {
		r_blob(&sub, &s->clock, sizeof(s->clock), "CLOCK");
		r_blob(&sub, &s->pic_master, sizeof(s->pic_master), "PIC master");
		r_blob(&sub, &s->pic_slave, sizeof(s->pic_slave), "PIC slave");
		r_blob(&sub, &s->ioapic, sizeof(s->ioapic), "IOAPIC");
		r_blob(&sub, &s->pit, sizeof(s->pit), "PIT2");
		if (r_ok(&sub) && (s->pic_master.chip_id != KVM_IRQCHIP_PIC_MASTER ||
				   s->pic_slave.chip_id != KVM_IRQCHIP_PIC_SLAVE || s->ioapic.chip_id != KVM_IRQCHIP_IOAPIC))
			bad(&sub, "the irqchips are not PIC master, PIC slave and IOAPIC in that order");
		r_section_end(r, &sub);
	}
	if (!r->bad && r_section(r, SEC_SERIAL, &sub)) {
		struct kvmm_vmstate_serial *se = &s->serial;
		uint8_t *regs[] = { &se->ier, &se->lcr, &se->mcr, &se->scr, &se->dll, &se->dlm, &se->lsr_errors };
		for (size_t i = 0; i < sizeof(regs) / sizeof(regs[0]); i++)
			*regs[i] = cur_u8(&sub.c);
		se->fifo_enabled = r_bool(&sub, "fifo_enabled");
		se->thr_pending = r_bool(&sub, "thr_pending");
		se->irq_level = r_bool(&sub, "irq_level");
		se->rx_len = cur_u8(&sub.c);
		if (r_ok(&sub) && se->rx_len > KVMM_SERIAL_FIFO)
			bad(&sub, "%u bytes in a %d-byte receive FIFO", se->rx_len, KVMM_SERIAL_FIFO);
		else
			cur_copy(&sub.c, se->rx, se->rx_len);
		r_section_end(r, &sub);
	}
	if (!r->bad && r_section(r, SEC_I8042, &sub)) {
		struct kvmm_vmstate_i8042 *k = &s->i8042;
		uint8_t *regs[] = { &k->ctr, &k->output_port, &k->pending_cmd, &k->kbd_pending, &k->scancode_set,
				    &k->last_out };
		for (size_t i = 0; i < sizeof(regs) / sizeof(regs[0]); i++)
			*regs[i] = cur_u8(&sub.c);
		k->last_was_cmd = r_bool(&sub, "last_was_cmd");
		k->out_len = cur_u8(&sub.c);
		if (r_ok(&sub) && k->out_len > KVMM_I8042_QUEUE)
			bad(&sub, "%u bytes in a %d-byte output queue", k->out_len, KVMM_I8042_QUEUE);
		else
			cur_copy(&sub.c, k->out, k->out_len);
		r_section_end(r, &sub);
	}
	if (r->bad)
		return -EINVAL;
	r->where = "VIRTIO";
	s->n_devs = cur_le32(&r->c);
	if (!r_ok(r))
		return -EINVAL;
	size_t want = s->cfg.n_drives + (s->cfg.has_vsock ? 1 : 0);
	if (s->n_devs != want) {
		bad(r, "%u virtio devices for a configuration with %zu", s->n_devs, want);
		return -EINVAL;
	}
	for (uint32_t i = 0; i < s->n_devs && !r->bad; i++) {
		if (r_section(r, SEC_VIRTIO, &sub)) {
			dec_dev(&sub, &s->devs[i]);
			r_section_end(r, &sub);
		}
		/* ACPI order: the drives, then vsock. */
		uint32_t kind = i < s->cfg.n_drives ? KVMM_VMSTATE_DEV_BLK : KVMM_VMSTATE_DEV_VSOCK;
		if (!r->bad && s->devs[i].kind != kind) {
			r->where = "VIRTIO";
			bad(r, "device %u is of kind %u where the configuration has %s", i, s->devs[i].kind,
			    kind == KVMM_VMSTATE_DEV_BLK ? "a drive" : "the vsock device");
		}
	}
	if (r->bad)
		return -EINVAL;
	if (cur_left(&r->c)) {
		say(r->err, r->errlen, "%zu bytes after the last section", cur_left(&r->c));
		return -EINVAL;
	}
	return 0;
}

int kvmm_vmstate_decode(const uint8_t *buf, size_t len, struct kvmm_vmstate *s, char *err, size_t errlen)
{
	kvmm_config_free(&s->cfg);
	memset(s, 0, sizeof(*s));
	kvmm_config_init(&s->cfg);
	if (errlen)
		err[0] = 0;

	struct byte_cursor c = cur_init(buf, len);
	const uint8_t *magic = cur_take(&c, 8);
	if (!magic || memcmp(magic, KVMM_VMSTATE_MAGIC, 8) != 0) {
		say(err, errlen, "not a kvmm vmstate file (no \"%s\" magic at its start)", KVMM_VMSTATE_MAGIC);
		return -EINVAL;
	}
	uint32_t version = cur_le32(&c), hlen = cur_le32(&c);
	if (!cur_ok(&c)) {
		say(err, errlen, "truncated: %zu bytes, shorter than the %u-byte header", len, KVMM_VMSTATE_HEADER_LEN);
		return -EINVAL;
	}
	if (version != KVMM_VMSTATE_VERSION) {
		/* The writer's build string, if the header holds one, helps the operator. */
		char build[KVMM_VMSTATE_BUILD_LEN] = "";
		const uint8_t *b = cur_take(&c, KVMM_VMSTATE_BUILD_LEN);
		if (b)
			for (size_t i = 0; i + 1 < sizeof(build) && b[i] >= 0x20 && b[i] < 0x7f; i++)
				build[i] = (char)b[i];
		say(err, errlen,
		    "vmstate format version %u (written by %s); this kvmm (%s) reads version %u only: restore it with "
		    "the kvmm that wrote it",
		    version, build[0] ? build : "an unknown kvmm", kvmm_vmstate_build(), KVMM_VMSTATE_VERSION);
		return -EPROTONOSUPPORT;
	}
	if (hlen != KVMM_VMSTATE_HEADER_LEN) {
		say(err, errlen, "header length %u; version %u headers are %u bytes", hlen, KVMM_VMSTATE_VERSION,
		    KVMM_VMSTATE_HEADER_LEN);
		return -EINVAL;
	}
	const uint8_t *build = cur_take(&c, KVMM_VMSTATE_BUILD_LEN);
	uint64_t body_len = cur_le64(&c);
	const uint8_t *sum = cur_take(&c, SHA256_LEN);
	cur_skip(&c, 8);
	if (!cur_ok(&c)) {
		say(err, errlen, "truncated: %zu bytes, shorter than the %u-byte header", len, KVMM_VMSTATE_HEADER_LEN);
		return -EINVAL;
	}
	if (!memchr(build, 0, KVMM_VMSTATE_BUILD_LEN)) {
		say(err, errlen, "the header's build string is not terminated");
		return -EINVAL;
	}
	memcpy(s->build, build, KVMM_VMSTATE_BUILD_LEN);
	if (body_len > KVMM_VMSTATE_MAX_BODY || body_len != cur_left(&c)) {
		say(err, errlen, "the header announces a %llu-byte body but %zu bytes follow it (%s)",
		    (unsigned long long)body_len, cur_left(&c),
		    body_len > cur_left(&c) ? "truncated file" : "trailing bytes or a bad length");
		return -EINVAL;
	}
	const uint8_t *body = cur_take(&c, (size_t)body_len);
	uint8_t got[SHA256_LEN];
	body_sha256(body, (size_t)body_len, got);
	if (memcmp(got, sum, SHA256_LEN) != 0) {
		say(err, errlen, "checksum mismatch: the body's SHA-256 is not the header's (the file is corrupt)");
		return -EBADMSG;
	}
	struct rd r = { .c = cur_init(body, (size_t)body_len), .err = err, .errlen = errlen, .where = "header" };
	int e = dec_body(&r, s);
	if (e < 0 && errlen && !err[0])
		say(err, errlen, "malformed");
	return e;
}
