/* kvmm's vmstate file (vmm/kvmm/vmstate.c): the encode/decode round trip of
 * a whole VM's state, and every refusal of the one parser with the fault
 * named: truncation at every length, bad magic, another format version
 * (both versions named), a flipped byte (checksum), a wrong body length,
 * absurd counts, bad booleans, sections out of order, trailing bytes.  No
 * KVM needed.
 *
 * With KVMM_VMSTATE_WRITE_CORPUS=DIR it also writes the fuzz target's seed
 * corpus (vmm/fuzz/corpus/fuzz_kvmm_vmstate/) there. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/bytes.h"
#include "common/common.h"
#include "tests/check.h"
#include "vmm/kvmm/vmstate.h"

static char err[512];

static bool has(const char *needle)
{
	if (!strstr(err, needle)) {
		fprintf(stderr, "  message \"%s\" lacks \"%s\"\n", err, needle);
		return false;
	}
	return true;
}

static void fill(struct kvmm_vmstate *s)
{
	struct kvmm_config *c = &s->cfg;
	c->vcpu_count = 2;
	c->mem_size_mib = 256;
	c->n_drives = 2;
	snprintf(c->drives[0].drive_id, sizeof(c->drives[0].drive_id), "rootfs");
	c->drives[0].path_on_host = strdup("/srv/images/root.erofs");
	c->drives[0].is_root_device = true;
	c->drives[0].is_read_only = true;
	snprintf(c->drives[1].drive_id, sizeof(c->drives[1].drive_id), "data");
	c->drives[1].path_on_host = strdup("/srv/images/data.img");
	c->has_vsock = true;
	c->guest_cid = 42;
	c->vsock_uds_path = strdup("/tmp/vm.vsock");
	s->n_cpuid = 3;
	for (uint32_t i = 0; i < s->n_cpuid; i++)
		s->cpuid[i] = (struct kvm_cpuid_entry2){ .function = i, .eax = 0x1000 + i, .ebx = 7 };
	for (unsigned v = 0; v < c->vcpu_count; v++) {
		struct kvmm_vmstate_vcpu *x = &s->vcpu[v];
		x->regs.rip = 0xffffffff81000000ull + v;
		x->regs.rsp = 0x1234;
		x->sregs.cr3 = 0x9000;
		x->sregs.efer = 0xd01;
		x->has_xsave = v == 0;
		x->xsave.region[0] = 0x37f;
		x->fpu.fcw = 0x37f;
		x->has_xcrs = true;
		x->xcrs.nr_xcrs = 1;
		x->xcrs.xcrs[0].value = 7;
		x->lapic.regs[0x20] = (char)v;
		x->n_msrs = 5;
		for (uint32_t m = 0; m < x->n_msrs; m++)
			x->msrs[m] = (struct kvm_msr_entry){ .index = 0xc0000080 + m, .data = 0x100ull * m + v };
		x->events.exception.injected = 1;
		x->debugregs.dr7 = 0x400;
		x->mp_state.mp_state = v ? KVM_MP_STATE_HALTED : KVM_MP_STATE_RUNNABLE;
		x->tsc_khz = 2500000;
	}
	s->clock.clock = 123456789;
	s->pic_master.chip_id = KVM_IRQCHIP_PIC_MASTER;
	s->pic_master.chip.pic.imr = 0xfb;
	s->pic_slave.chip_id = KVM_IRQCHIP_PIC_SLAVE;
	s->ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
	s->ioapic.chip.ioapic.base_address = 0xfec00000;
	s->pit.channels[0].count = 0x4a9;
	s->serial = (struct kvmm_vmstate_serial){ .ier = 3, .lcr = 3, .mcr = 0xb, .dll = 1, .fifo_enabled = true,
						  .thr_pending = true, .rx_len = 3, .rx = "ls\n" };
	s->i8042 = (struct kvmm_vmstate_i8042){ .ctr = 0x47, .output_port = 1, .scancode_set = 2, .out_len = 2,
						.out = { 0xfa, 0xaa } };
	s->n_devs = 3;
	for (uint32_t i = 0; i < s->n_devs; i++) {
		struct kvmm_vmstate_dev *d = &s->devs[i];
		d->kind = i < 2 ? KVMM_VMSTATE_DEV_BLK : KVMM_VMSTATE_DEV_VSOCK;
		d->status = 0xf;
		d->driver_features = 1ull << 32 | 1ull << 29;
		d->n_queues = i < 2 ? 1 : 3;
		for (uint16_t q = 0; q < d->n_queues; q++)
			d->q[q] = (struct kvmm_vmstate_queue){ .qcfg = { .num = 256, .desc = 0x100000 + q * 0x10000 },
							       .ready = true,
							       .event_idx = true,
							       .size = 256,
							       .desc_gpa = 0x100000 + q * 0x10000,
							       .avail_gpa = 0x101000 + q * 0x10000,
							       .used_gpa = 0x102000 + q * 0x10000,
							       .last_avail = (uint16_t)(65530 + q),
							       .used_idx = (uint16_t)(65530 + q),
							       .signalled_used = 65529 };
		if (d->kind == KVMM_VMSTATE_DEV_BLK) {
			d->blk_size = 1 << 20;
			d->blk_requests = 99;
		} else {
			d->vsock_cid = 42;
		}
	}
}

static bool same(const struct kvmm_vmstate *a, const struct kvmm_vmstate *b)
{
	const struct kvmm_config *x = &a->cfg, *y = &b->cfg;
	if (x->vcpu_count != y->vcpu_count || x->mem_size_mib != y->mem_size_mib || x->n_drives != y->n_drives ||
	    x->has_vsock != y->has_vsock || x->guest_cid != y->guest_cid || strcmp(x->vsock_uds_path, y->vsock_uds_path))
		return false;
	for (size_t i = 0; i < x->n_drives; i++)
		if (strcmp(x->drives[i].drive_id, y->drives[i].drive_id) ||
		    strcmp(x->drives[i].path_on_host, y->drives[i].path_on_host) ||
		    x->drives[i].is_root_device != y->drives[i].is_root_device ||
		    x->drives[i].is_read_only != y->drives[i].is_read_only)
			return false;
	if (a->n_cpuid != b->n_cpuid || memcmp(a->cpuid, b->cpuid, a->n_cpuid * sizeof(a->cpuid[0])))
		return false;
	for (unsigned v = 0; v < x->vcpu_count; v++) {
		const struct kvmm_vmstate_vcpu *p = &a->vcpu[v], *q = &b->vcpu[v];
		if (memcmp(&p->regs, &q->regs, sizeof(p->regs)) || memcmp(&p->sregs, &q->sregs, sizeof(p->sregs)) ||
		    p->has_xsave != q->has_xsave ||
		    (p->has_xsave ? memcmp(&p->xsave, &q->xsave, sizeof(p->xsave)) : memcmp(&p->fpu, &q->fpu, sizeof(p->fpu))) ||
		    p->has_xcrs != q->has_xcrs || memcmp(&p->xcrs, &q->xcrs, sizeof(p->xcrs)) ||
		    memcmp(&p->lapic, &q->lapic, sizeof(p->lapic)) || p->n_msrs != q->n_msrs ||
		    memcmp(p->msrs, q->msrs, p->n_msrs * sizeof(p->msrs[0])) ||
		    memcmp(&p->events, &q->events, sizeof(p->events)) ||
		    memcmp(&p->debugregs, &q->debugregs, sizeof(p->debugregs)) ||
		    memcmp(&p->mp_state, &q->mp_state, sizeof(p->mp_state)) || p->tsc_khz != q->tsc_khz)
			return false;
	}
	if (memcmp(&a->clock, &b->clock, sizeof(a->clock)) || memcmp(&a->pic_master, &b->pic_master, sizeof(a->pic_master)) ||
	    memcmp(&a->pic_slave, &b->pic_slave, sizeof(a->pic_slave)) || memcmp(&a->ioapic, &b->ioapic, sizeof(a->ioapic)) ||
	    memcmp(&a->pit, &b->pit, sizeof(a->pit)) || memcmp(&a->serial, &b->serial, sizeof(a->serial)) ||
	    memcmp(&a->i8042, &b->i8042, sizeof(a->i8042)) || a->n_devs != b->n_devs)
		return false;
	for (uint32_t i = 0; i < a->n_devs; i++)
		if (memcmp(&a->devs[i], &b->devs[i], sizeof(a->devs[i])))
			return false;
	return true;
}

static int decode(const uint8_t *p, size_t n, struct kvmm_vmstate *out)
{
	err[0] = 0;
	return kvmm_vmstate_decode(p, n, out, err, sizeof(err));
}

/* Re-seal a patched body so only the patch is wrong, not the checksum. */
static void reseal(uint8_t *buf, size_t len)
{
	sha256_buf(buf + KVMM_VMSTATE_HEADER_LEN, len - KVMM_VMSTATE_HEADER_LEN, buf + 88);
}

/* The offset of the first section with |tag| in an encoded file. */
static size_t section_at(const uint8_t *buf, size_t len, uint32_t tag)
{
	size_t off = KVMM_VMSTATE_HEADER_LEN;
	while (off + 8 <= len) {
		if (get_le32(buf + off) == tag)
			return off;
		off += 8 + get_le32(buf + off + 4);
	}
	return 0;
}

static void write_seed(const char *dir, const char *name, const uint8_t *p, size_t n)
{
	char path[1024];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
		perror(path);
		exit(1);
	}
}

int main(void)
{
	struct kvmm_vmstate *s = kvmm_vmstate_new(), *d = kvmm_vmstate_new();
	CHECK(s && d);
	fill(s);
	uint8_t *buf = NULL;
	size_t len = 0;
	CHECK(kvmm_vmstate_encode(s, &buf, &len, err, sizeof(err)) == 0);
	CHECK(len > KVMM_VMSTATE_HEADER_LEN && memcmp(buf, KVMM_VMSTATE_MAGIC, 8) == 0);

	/* Round trip, and the writer's identity. */
	CHECK(decode(buf, len, d) == 0);
	CHECK(same(s, d));
	CHECK(strcmp(d->build, kvmm_vmstate_build()) == 0);
	/* Decoding again into a used state frees the old config first (ASan). */
	CHECK(decode(buf, len, d) == 0 && same(s, d));

	/* Encoding is deterministic. */
	uint8_t *buf2 = NULL;
	size_t len2 = 0;
	CHECK(kvmm_vmstate_encode(d, &buf2, &len2, err, sizeof(err)) == 0);
	CHECK(len2 == len && memcmp(buf, buf2, len) == 0);
	free(buf2);

	uint8_t *t = malloc(len + 16);
	CHECK(t != NULL);

	/* Truncated at every length: never accepted, always said why. */
	int trunc_ok = 0;
	for (size_t n = 0; n < len; n++) {
		memcpy(t, buf, n);
		int r = decode(t, n, d);
		if (r < 0 && err[0])
			trunc_ok++;
	}
	CHECK(trunc_ok == (int)len);
	CHECK(decode(buf, 40, d) == -EINVAL && has("truncated"));
	CHECK(decode(buf, len - 1, d) == -EINVAL && has("truncated"));

	/* Bad magic. */
	memcpy(t, buf, len);
	t[0] = 'X';
	CHECK(decode(t, len, d) == -EINVAL && has("not a kvmm vmstate file"));

	/* Another format version: both named, and the writer. */
	memcpy(t, buf, len);
	put_le32(t + 8, 7);
	CHECK(decode(t, len, d) == -EPROTONOSUPPORT && has("version 7") && has("version 1") &&
	      has(kvmm_vmstate_build()));

	/* A flipped byte anywhere in the body: the checksum. */
	int flips_ok = 0, flips = 0;
	for (size_t off = KVMM_VMSTATE_HEADER_LEN; off < len; off += 97, flips++) {
		memcpy(t, buf, len);
		t[off] ^= 0x10;
		if (decode(t, len, d) == -EBADMSG && strstr(err, "checksum"))
			flips_ok++;
	}
	CHECK(flips > 10 && flips_ok == flips);

	/* Body length that disagrees with the file; trailing bytes. */
	memcpy(t, buf, len);
	put_le64(t + 80, get_le64(t + 80) + 1);
	CHECK(decode(t, len, d) == -EINVAL && has("truncated"));
	memcpy(t, buf, len);
	t[len] = 0;
	CHECK(decode(t, len + 1, d) == -EINVAL && has("trailing"));
	memcpy(t, buf, len);
	put_le64(t + 80, UINT64_MAX);
	CHECK(decode(t, len, d) == -EINVAL);

	/* Absurd counts, each sealed with a good checksum. */
	size_t cfg = section_at(buf, len, 1);
	CHECK(cfg == KVMM_VMSTATE_HEADER_LEN);
	memcpy(t, buf, len);
	put_le32(t + cfg + 8, 1000); /* vcpus */
	reseal(t, len);
	CHECK(decode(t, len, d) == -EINVAL && has("CONFIG") && has("1000 vCPUs"));
	memcpy(t, buf, len);
	put_le32(t + cfg + 12, 0); /* MiB */
	reseal(t, len);
	CHECK(decode(t, len, d) == -EINVAL && has("0 MiB"));
	memcpy(t, buf, len);
	put_le32(t + cfg + 16, 0xffffffffu); /* drives */
	reseal(t, len);
	CHECK(decode(t, len, d) == -EINVAL && has("4294967295 drives"));
	memcpy(t, buf, len);
	put_le32(t + cfg + 20, 0x7fffffffu); /* the first drive_id's length */
	reseal(t, len);
	CHECK(decode(t, len, d) == -EINVAL && has("drive_id"));
	size_t cpuid = section_at(buf, len, 2);
	memcpy(t, buf, len);
	put_le32(t + cpuid + 8, 0x10000000u);
	reseal(t, len);
	CHECK(decode(t, len, d) == -EINVAL && has("CPUID") && has("268435456"));
	memcpy(t, buf, len);
	put_le32(t + cpuid + 12, 41); /* an entry's length */
	reseal(t, len);
	CHECK(decode(t, len, d) == -EINVAL && has("CPUID entry is 41 bytes"));
	size_t vcpu = section_at(buf, len, 3);
	memcpy(t, buf, len);
	put_le32(t + vcpu + 4, 0x7ffffff0u); /* a section length past the end */
	reseal(t, len);
	CHECK(decode(t, len, d) == -EINVAL && has("VCPU") && has("past the end"));
	memcpy(t, buf, len);
	put_le32(t + vcpu + 8, 1); /* REGS of 1 byte */
	reseal(t, len);
	CHECK(decode(t, len, d) == -EINVAL && has("REGS is 1 bytes"));
	size_t regs = 4 + sizeof(struct kvm_regs) + 4 + sizeof(struct kvm_sregs);
	memcpy(t, buf, len);
	t[vcpu + 8 + regs] = 2; /* has_xsave */
	reseal(t, len);
	CHECK(decode(t, len, d) == -EINVAL && has("has_xsave is 2"));

	/* A section where another belongs. */
	memcpy(t, buf, len);
	put_le32(t + cpuid, 4);
	reseal(t, len);
	CHECK(decode(t, len, d) == -EINVAL && has("section CPUID") && has("tag 4"));

	/* The virtio device count must match the configuration. */
	size_t i8042 = section_at(buf, len, 6);
	size_t ndevs = i8042 + 8 + get_le32(buf + i8042 + 4);
	memcpy(t, buf, len);
	put_le32(t + ndevs, 9);
	reseal(t, len);
	CHECK(decode(t, len, d) == -EINVAL && has("9 virtio devices"));
	size_t dev0 = ndevs + 4;
	memcpy(t, buf, len);
	put_le16(t + dev0 + 8 + 36, 99); /* n_queues: after kind, 6 registers and the features */
	reseal(t, len);
	CHECK(decode(t, len, d) == -EINVAL && has("99 queues"));
	memcpy(t, buf, len);
	put_le32(t + dev0 + 8, 2); /* a drive's device says vsock (its model state is then too long) */
	reseal(t, len);
	CHECK(decode(t, len, d) == -EINVAL && has("VIRTIO"));

	/* The encoder refuses what the parser would. */
	s->vcpu[1].n_msrs = KVMM_VMSTATE_MAX_MSRS + 1;
	uint8_t *bad = NULL;
	size_t bad_len = 0;
	CHECK(kvmm_vmstate_encode(s, &bad, &bad_len, err, sizeof(err)) == -EINVAL && has("MSRs") && !bad);
	s->vcpu[1].n_msrs = 5;

	/* Empty input and a decode after failures still leave a freeable state. */
	CHECK(decode(NULL, 0, d) == -EINVAL);

	const char *corpus = getenv("KVMM_VMSTATE_WRITE_CORPUS");
	if (corpus) {
		write_seed(corpus, "valid", buf, len);
		write_seed(corpus, "truncated", buf, len / 2);
		memcpy(t, buf, len);
		t[0] = 'X';
		write_seed(corpus, "bad-magic", t, len);
		memcpy(t, buf, len);
		put_le32(t + 8, 2);
		write_seed(corpus, "other-version", t, len);
		memcpy(t, buf, len);
		t[len - 3] ^= 1;
		write_seed(corpus, "bad-checksum", t, len);
		memcpy(t, buf, len);
		put_le32(t + cpuid + 8, 0x10000000u);
		reseal(t, len);
		write_seed(corpus, "absurd-cpuid-count", t, len);
		memcpy(t, buf, len);
		put_le32(t + cfg + 16, 0xffffffffu);
		reseal(t, len);
		write_seed(corpus, "absurd-drive-count", t, len);
		memcpy(t, buf, len);
		put_le32(t + vcpu + 4, 0x7ffffff0u);
		reseal(t, len);
		write_seed(corpus, "absurd-section-length", t, len);
	}
	free(t);
	free(buf);
	kvmm_vmstate_free(s);
	kvmm_vmstate_free(d);
	kvmm_vmstate_free(NULL);
	return check_report();
}
