/* ACPI tables for a stock kernel without CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES:
 * RSDP -> XSDT -> FADT (hardware-reduced) -> DSDT, and MADT, laid out as one
 * blob at a known guest address.  The DSDT's AML declares each virtio-mmio
 * device as _HID "LNRO0005" (the id Linux's virtio_mmio driver matches in its
 * ACPI table) with its register window and interrupt in _CRS.
 *
 * The AML comes from a tiny encoder of our own: names, integers, strings,
 * buffers, packages, devices and scopes, and PkgLength, which is all a
 * device list needs (ACPI 6.x, 20.2 "AML Grammar Definition"). */
#include <errno.h>
#include <string.h>

#define LOG_COMPONENT "kvmm"
#include "common/common.h"
#include "vmm/kvmm/acpi.h"
#include "common/bytes.h"
#include "vmm/kvmm/layout.h"

#define SDT_HEADER 36
#define OEM_ID "KINDLG"	   /* 6 bytes */
#define OEM_TABLE "KVMM    " /* 8 bytes */
#define CREATOR_ID 0x4b444e4bu /* "KNDK" */

uint8_t acpi_sum(const uint8_t *p, size_t len)
{
	uint8_t s = 0;
	for (size_t i = 0; i < len; i++)
		s = (uint8_t)(s + p[i]);
	return s;
}

/* ---- the AML encoder -------------------------------------------------------------------------------------------- */

/* A byte sink with a sticky error: callers emit freely and check once. */
struct aml {
	uint8_t *buf;
	size_t len, cap;
	int err;
};

#define AML_NAME_OP 0x08
#define AML_SCOPE_OP 0x10
#define AML_BUFFER_OP 0x11
#define AML_PACKAGE_OP 0x12
#define AML_ZERO_OP 0x00
#define AML_ONE_OP 0x01
#define AML_BYTE_PREFIX 0x0a
#define AML_WORD_PREFIX 0x0b
#define AML_DWORD_PREFIX 0x0c
#define AML_STRING_PREFIX 0x0d
#define AML_QWORD_PREFIX 0x0e
#define AML_EXT_OP 0x5b
#define AML_DEVICE_OP 0x82 /* after AML_EXT_OP */
#define AML_ROOT_CHAR 0x5c

static void aml_bytes(struct aml *a, const void *p, size_t n)
{
	if (a->err)
		return;
	if (n > a->cap - a->len) {
		a->err = -ENOSPC;
		return;
	}
	memcpy(a->buf + a->len, p, n);
	a->len += n;
}

static void aml_byte(struct aml *a, uint8_t b)
{
	aml_bytes(a, &b, 1);
}

/* A NameSeg: exactly four characters, [A-Z_][A-Z0-9_]{3}. */
static void aml_nameseg(struct aml *a, const char *s)
{
	aml_bytes(a, s, 4);
}

static void aml_integer(struct aml *a, uint64_t v)
{
	uint8_t b[8];
	if (v == 0) {
		aml_byte(a, AML_ZERO_OP);
	} else if (v == 1) {
		aml_byte(a, AML_ONE_OP);
	} else if (v <= 0xff) {
		aml_byte(a, AML_BYTE_PREFIX);
		aml_byte(a, (uint8_t)v);
	} else if (v <= 0xffff) {
		aml_byte(a, AML_WORD_PREFIX);
		put_le16(b, (uint16_t)v);
		aml_bytes(a, b, 2);
	} else if (v <= 0xffffffff) {
		aml_byte(a, AML_DWORD_PREFIX);
		put_le32(b, (uint32_t)v);
		aml_bytes(a, b, 4);
	} else {
		aml_byte(a, AML_QWORD_PREFIX);
		put_le64(b, v);
		aml_bytes(a, b, 8);
	}
}

static void aml_string(struct aml *a, const char *s)
{
	aml_byte(a, AML_STRING_PREFIX);
	aml_bytes(a, s, strlen(s) + 1);
}

/* PkgLength counts itself, so its size depends on what follows: remember
 * where the package starts, emit the body, then encode the length and shift
 * the body up by the 1..4 bytes it takes. */
static size_t aml_pkg_begin(const struct aml *a)
{
	return a->len;
}

static void aml_pkg_end(struct aml *a, size_t start)
{
	if (a->err)
		return;
	size_t body = a->len - start, nb, total;
	/* One byte holds up to 63; otherwise the lead byte carries 4 bits and
	 * each following byte 8 more (20.2.4). */
	for (nb = 1; nb <= 4; nb++) {
		total = body + nb;
		if (nb == 1 ? total < 0x40 : total < (1ull << (4 + 8 * (nb - 1))))
			break;
	}
	if (nb > 4) {
		a->err = -E2BIG;
		return;
	}
	if (nb > a->cap - a->len) {
		a->err = -ENOSPC;
		return;
	}
	memmove(a->buf + start + nb, a->buf + start, body);
	a->len += nb;
	if (nb == 1) {
		a->buf[start] = (uint8_t)total;
		return;
	}
	a->buf[start] = (uint8_t)((nb - 1) << 6 | (total & 0x0f));
	for (size_t i = 1; i < nb; i++)
		a->buf[start + i] = (uint8_t)(total >> (4 + 8 * (i - 1)));
}

/* Resource template pieces (6.4, "Resource Data Types for ACPI"). */
static void res_memory32_fixed(struct aml *a, uint32_t base, uint32_t len)
{
	uint8_t d[12] = { 0x86, 9, 0, 1 /* read-write */ };
	put_le32(d + 4, base);
	put_le32(d + 8, len);
	aml_bytes(a, d, sizeof(d));
}

static void res_interrupt(struct aml *a, uint32_t gsi)
{
	/* Extended Interrupt: consumer, edge-triggered, active-high, exclusive,
	 * one interrupt. */
	uint8_t d[9] = { 0x89, 6, 0, 0x03, 1 };
	put_le32(d + 5, gsi);
	aml_bytes(a, d, sizeof(d));
}

static void res_end(struct aml *a)
{
	aml_byte(a, 0x79);
	aml_byte(a, 0); /* checksum 0: "treat as correct" */
}

/* A 16-bit decoded I/O port range of |len| ports at |port| (6.4.2.5). */
static void res_io(struct aml *a, uint16_t port, uint8_t len)
{
	uint8_t d[8] = { 0x47, 1 /* 16-bit decode */ };
	put_le16(d + 2, port);
	put_le16(d + 4, port);
	d[6] = 1; /* alignment */
	d[7] = len;
	aml_bytes(a, d, sizeof(d));
}

/* An ISA IRQ, edge-triggered and active-high (IRQNoFlags, 6.4.2.1). */
static void res_isa_irq(struct aml *a, uint8_t irq)
{
	uint8_t d[3] = { 0x22 };
	put_le16(d + 1, (uint16_t)(1u << irq));
	aml_bytes(a, d, sizeof(d));
}

/* Device(|name|) { _HID |hid|, _UID 0, _CRS { IO |port|+|len| [, IO |port2|+1], IRQ |irq| } }:
 * a legacy ISA device.  Hardware-reduced ACPI has no 8259 and so no
 * built-in ISA IRQ numbers: the kernel maps an ISA interrupt only for a
 * device the DSDT declares (8250_pnp and i8042's PNP probe bind these). */
static void aml_isa_device(struct aml *a, const char *name, const char *hid, uint16_t port, uint8_t len,
			   uint16_t port2, uint8_t irq)
{
	aml_byte(a, AML_EXT_OP);
	aml_byte(a, AML_DEVICE_OP);
	size_t pkg = aml_pkg_begin(a);
	aml_nameseg(a, name);
	aml_byte(a, AML_NAME_OP);
	aml_nameseg(a, "_HID");
	aml_string(a, hid);
	aml_byte(a, AML_NAME_OP);
	aml_nameseg(a, "_UID");
	aml_integer(a, 0);
	aml_byte(a, AML_NAME_OP);
	aml_nameseg(a, "_CRS");
	aml_byte(a, AML_BUFFER_OP);
	size_t buf = aml_pkg_begin(a);
	aml_integer(a, 8 + (port2 ? 8 : 0) + 3 + 2); /* BufferSize */
	res_io(a, port, len);
	if (port2)
		res_io(a, port2, 1);
	res_isa_irq(a, irq);
	res_end(a);
	aml_pkg_end(a, buf);
	aml_pkg_end(a, pkg);
}

/* Name(_CRS, Buffer() {<what fill() emits>, EndTag}). */
static void aml_crs(struct aml *a, const struct acpi_virtio_mmio *dev)
{
	aml_byte(a, AML_NAME_OP);
	aml_nameseg(a, "_CRS");
	aml_byte(a, AML_BUFFER_OP);
	size_t pkg = aml_pkg_begin(a);
	aml_integer(a, 12 + 9 + 2); /* BufferSize */
	res_memory32_fixed(a, (uint32_t)dev->base, dev->size);
	res_interrupt(a, dev->gsi);
	res_end(a);
	aml_pkg_end(a, pkg);
}

static void aml_virtio_device(struct aml *a, size_t i, const struct acpi_virtio_mmio *dev)
{
	static const char hex[] = "0123456789ABCDEF";
	char name[4] = { 'V', 'R', hex[(i >> 4) & 15], hex[i & 15] }; /* i < 256: acpi_build() checks */
	aml_byte(a, AML_EXT_OP);
	aml_byte(a, AML_DEVICE_OP);
	size_t pkg = aml_pkg_begin(a);
	aml_nameseg(a, name);
	aml_byte(a, AML_NAME_OP);
	aml_nameseg(a, "_HID");
	aml_string(a, "LNRO0005");
	aml_byte(a, AML_NAME_OP);
	aml_nameseg(a, "_UID");
	aml_integer(a, i);
	aml_crs(a, dev);
	aml_pkg_end(a, pkg);
}

/* ---- tables ----------------------------------------------------------------------------------------------------- */

static void sdt_header(uint8_t *t, const char *sig, uint32_t len, uint8_t rev)
{
	memcpy(t, sig, 4);
	put_le32(t + 4, len);
	t[8] = rev;
	t[9] = 0; /* checksum, set last */
	memcpy(t + 10, OEM_ID, 6);
	memcpy(t + 16, OEM_TABLE, 8);
	put_le32(t + 24, 1);	  /* OEM revision */
	put_le32(t + 28, CREATOR_ID); /* creator id */
	put_le32(t + 32, 1);	  /* creator revision */
}

static void sdt_checksum(uint8_t *t, size_t len)
{
	t[9] = 0;
	t[9] = (uint8_t)(0x100 - acpi_sum(t, len));
}

static int build_dsdt(const struct acpi_config *cfg, uint8_t *t, size_t cap, size_t *len)
{
	struct aml a = { .buf = t, .len = 0, .cap = cap };
	aml_bytes(&a, (uint8_t[SDT_HEADER]){ 0 }, SDT_HEADER);
	/* Scope(\_SB) { Device(VRnn) {...} ... } */
	aml_byte(&a, AML_SCOPE_OP);
	size_t pkg = aml_pkg_begin(&a);
	aml_byte(&a, AML_ROOT_CHAR);
	aml_nameseg(&a, "_SB_");
	for (size_t i = 0; i < cfg->n_devs; i++)
		aml_virtio_device(&a, i, &cfg->devs[i]);
	if (cfg->legacy_isa) {
		aml_isa_device(&a, "COM1", "PNP0501", 0x3f8, 8, 0, 4);
		aml_isa_device(&a, "PS2K", "PNP0303", 0x60, 1, 0x64, 1);
	}
	aml_pkg_end(&a, pkg);
	if (cfg->sleep_port) {
		/* Name(_S5, Package() {5, 0}): the SLP_TYP the kernel writes
		 * to the sleep control register to power off. */
		aml_byte(&a, AML_NAME_OP);
		aml_byte(&a, AML_ROOT_CHAR);
		aml_nameseg(&a, "_S5_");
		aml_byte(&a, AML_PACKAGE_OP);
		size_t p = aml_pkg_begin(&a);
		aml_byte(&a, 2); /* NumElements */
		aml_integer(&a, 5);
		aml_integer(&a, 0);
		aml_pkg_end(&a, p);
	}
	if (a.err)
		return a.err;
	if (a.len > UINT32_MAX)
		return -E2BIG;
	sdt_header(t, "DSDT", (uint32_t)a.len, 2); /* revision 2: 64-bit integers */
	sdt_checksum(t, a.len);
	*len = a.len;
	return 0;
}

/* A Generic Address Structure for a byte-wide I/O port. */
static void gas_io8(uint8_t *g, uint16_t port)
{
	g[0] = 1; /* system I/O */
	g[1] = 8; /* bit width */
	g[2] = 0; /* bit offset */
	g[3] = 1; /* byte access */
	put_le64(g + 4, port);
}

#define FADT_LEN 276
#define FADT_FLAG_PWR_BUTTON (1u << 4) /* no fixed power button */
#define FADT_FLAG_SLP_BUTTON (1u << 5) /* no fixed sleep button */
#define FADT_FLAG_HW_REDUCED (1u << 20)
#define IAPC_VGA_NOT_PRESENT (1u << 2)
#define IAPC_CMOS_RTC_NOT_PRESENT (1u << 5)

static void build_fadt(const struct acpi_config *cfg, uint8_t *t, uint64_t dsdt_gpa)
{
	memset(t, 0, FADT_LEN);
	sdt_header(t, "FACP", FADT_LEN, 6);
	/* DSDT (32-bit) and X_DSDT: the kernel prefers X_DSDT; our tables sit
	 * below 1 MiB so both hold the same address. */
	put_le32(t + 40, (uint32_t)dsdt_gpa);
	put_le16(t + 109, IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT);
	/* Hardware-reduced ACPI (5.0+): no PM1 blocks, no SCI, no FACS; the
	 * kernel then needs nothing from us but the DSDT, and powers off through
	 * the sleep registers below. */
	put_le32(t + 112, FADT_FLAG_HW_REDUCED | FADT_FLAG_PWR_BUTTON | FADT_FLAG_SLP_BUTTON);
	t[131] = 0; /* FADT minor version: 6.0 */
	put_le64(t + 140, dsdt_gpa);
	if (cfg->sleep_port) {
		gas_io8(t + 244, cfg->sleep_port); /* SLEEP_CONTROL_REG */
		gas_io8(t + 256, cfg->sleep_port); /* SLEEP_STATUS_REG */
	}
	memcpy(t + 268, "KINDLING", 8); /* hypervisor vendor identity */
	sdt_checksum(t, FADT_LEN);
}

static size_t madt_len(const struct acpi_config *cfg)
{
	return SDT_HEADER + 8 + 8 * (size_t)cfg->n_cpus + 12;
}

static void build_madt(const struct acpi_config *cfg, uint8_t *t)
{
	size_t len = madt_len(cfg);
	memset(t, 0, len);
	sdt_header(t, "APIC", (uint32_t)len, 5);
	put_le32(t + 36, (uint32_t)KVMM_LAPIC_GPA);
	put_le32(t + 40, 0); /* flags: no dual 8259 setup (PCAT_COMPAT clear) */
	uint8_t *e = t + 44;
	for (uint32_t i = 0; i < cfg->n_cpus; i++, e += 8) {
		e[0] = 0; /* Processor Local APIC */
		e[1] = 8;
		e[2] = (uint8_t)i; /* ACPI processor UID */
		e[3] = (uint8_t)i; /* APIC id */
		put_le32(e + 4, 1);	   /* enabled */
	}
	e[0] = 1; /* I/O APIC */
	e[1] = 12;
	e[2] = 0; /* IOAPIC id */
	put_le32(e + 4, (uint32_t)KVMM_IOAPIC_GPA);
	put_le32(e + 8, 0); /* GSI base */
	sdt_checksum(t, len);
}

static size_t align8(size_t v)
{
	return (v + 7) & ~(size_t)7;
}

int acpi_build(const struct acpi_config *cfg, uint8_t *buf, size_t cap, struct acpi_layout *out)
{
	if (cfg->n_cpus == 0 || cfg->n_cpus > 255 || cfg->n_devs > 256 || (cfg->n_devs && !cfg->devs) || cfg->gpa % 16)
		return -EINVAL;
	for (size_t i = 0; i < cfg->n_devs; i++) {
		uint64_t end;
		if (!ck_add_u64(cfg->devs[i].base, cfg->devs[i].size, &end) || end > 0x100000000ull ||
		    cfg->devs[i].size == 0)
			return -EINVAL; /* Memory32Fixed: the window must be below 4 GiB */
	}
	memset(out, 0, sizeof(*out));
	size_t off = 0;
	out->off[ACPI_RSDP] = off;
	out->len[ACPI_RSDP] = 36;
	off = align8(off + 36);
	out->off[ACPI_XSDT] = off;
	out->len[ACPI_XSDT] = SDT_HEADER + 8 * 2; /* FADT, MADT; the DSDT hangs off the FADT */
	off = align8(off + out->len[ACPI_XSDT]);
	out->off[ACPI_FADT] = off;
	out->len[ACPI_FADT] = FADT_LEN;
	off = align8(off + FADT_LEN);
	out->off[ACPI_MADT] = off;
	out->len[ACPI_MADT] = madt_len(cfg);
	off = align8(off + out->len[ACPI_MADT]);
	out->off[ACPI_DSDT] = off;
	if (off > cap)
		return -ENOSPC;
	memset(buf, 0, off);
	int r = build_dsdt(cfg, buf + off, cap - off, &out->len[ACPI_DSDT]);
	if (r < 0)
		return r;
	out->total = off + out->len[ACPI_DSDT];
	if (cfg->gpa + out->total > 0x100000000ull)
		return -EINVAL; /* the RSDP's 32-bit RSDT pointer and the FADT's DSDT must reach */

	uint64_t base = cfg->gpa;
	build_fadt(cfg, buf + out->off[ACPI_FADT], base + out->off[ACPI_DSDT]);
	build_madt(cfg, buf + out->off[ACPI_MADT]);

	uint8_t *x = buf + out->off[ACPI_XSDT];
	sdt_header(x, "XSDT", (uint32_t)out->len[ACPI_XSDT], 1);
	put_le64(x + SDT_HEADER, base + out->off[ACPI_FADT]);
	put_le64(x + SDT_HEADER + 8, base + out->off[ACPI_MADT]);
	sdt_checksum(x, out->len[ACPI_XSDT]);

	/* RSDP 2.0: the first 20 bytes have their own checksum, the whole 36
	 * the extended one.  No RSDT: ACPI 2.0+ kernels use the XSDT. */
	uint8_t *p = buf + out->off[ACPI_RSDP];
	memcpy(p, "RSD PTR ", 8);
	memcpy(p + 9, OEM_ID, 6);
	p[15] = 2; /* revision */
	put_le32(p + 16, 0);
	put_le32(p + 20, 36);
	put_le64(p + 24, base + out->off[ACPI_XSDT]);
	p[8] = (uint8_t)(0x100 - acpi_sum(p, 20));
	p[32] = (uint8_t)(0x100 - acpi_sum(p, 36));
	return 0;
}
