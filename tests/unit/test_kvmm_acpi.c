/* kvmm's ACPI tables (vmm/kvmm/acpi.c): structure, pointers between tables,
 * checksums, the MADT entries, and the DSDT's AML walked back with a small
 * decoder of its own (PkgLength in all its sizes, the virtio-mmio devices).
 * tests/integration/60-kvmm-acpi.sh has iasl disassemble the same tables. */
/* ctest-labels: no-tsan (single-threaded: nothing for ThreadSanitizer to check) */
#include <errno.h>
#include <string.h>

#include "tests/check.h"
#include "vmm/kvmm/acpi.h"
#include "common/bytes.h"
#include "vmm/kvmm/layout.h"

static uint8_t blob[KVMM_ACPI_MAX];

static const uint8_t *table_at(const struct acpi_layout *l, uint64_t gpa)
{
	if (gpa < KVMM_ACPI_GPA || gpa - KVMM_ACPI_GPA >= l->total)
		return NULL;
	return blob + (gpa - KVMM_ACPI_GPA);
}

/* Decode a PkgLength at |p|; returns its value and sets |*nb| to its size. */
static size_t pkglen(const uint8_t *p, size_t *nb)
{
	size_t n = (size_t)(p[0] >> 6) + 1, v;
	if (n == 1) {
		*nb = 1;
		return p[0] & 0x3f;
	}
	v = p[0] & 0x0f;
	for (size_t i = 1; i < n; i++)
		v |= (size_t)p[i] << (4 + 8 * (i - 1));
	*nb = n;
	return v;
}

static size_t count(const uint8_t *p, size_t len, const void *needle, size_t nlen)
{
	size_t k = 0;
	for (size_t i = 0; i + nlen <= len; i++)
		k += memcmp(p + i, needle, nlen) == 0;
	return k;
}

static void check_tables(uint32_t cpus, size_t ndev, uint16_t port)
{
	static struct acpi_virtio_mmio devs[256];
	for (size_t i = 0; i < ndev; i++)
		devs[i] = (struct acpi_virtio_mmio){ KVMM_VIRTIO_MMIO_GPA + i * KVMM_VIRTIO_MMIO_STRIDE,
						     KVMM_VIRTIO_MMIO_SIZE, KVMM_VIRTIO_MMIO_IRQ + (uint32_t)i };
	struct acpi_config cfg = { .n_cpus = cpus, .devs = devs, .n_devs = ndev, .sleep_port = port,
				   .gpa = KVMM_ACPI_GPA };
	struct acpi_layout l;
	memset(blob, 0xcc, sizeof(blob));
	CHECK(acpi_build(&cfg, blob, sizeof(blob), &l) == 0);

	/* RSDP: both checksums, revision 2, the XSDT. */
	const uint8_t *rsdp = blob + l.off[ACPI_RSDP];
	CHECK(l.off[ACPI_RSDP] == 0 && memcmp(rsdp, "RSD PTR ", 8) == 0);
	CHECK(acpi_sum(rsdp, 20) == 0 && acpi_sum(rsdp, 36) == 0);
	CHECK(rsdp[15] == 2 && get_le32(rsdp + 20) == 36);
	const uint8_t *xsdt = table_at(&l, get_le64(rsdp + 24));
	CHECK(xsdt && memcmp(xsdt, "XSDT", 4) == 0);
	if (!xsdt)
		return;

	/* Every table: 8-aligned, length as laid out, checksum zero. */
	static const char *const sig[ACPI_N_TABLES] = { NULL, "XSDT", "FACP", "APIC", "DSDT" };
	for (int t = ACPI_XSDT; t < ACPI_N_TABLES; t++) {
		const uint8_t *p = blob + l.off[t];
		CHECK(l.off[t] % 8 == 0);
		CHECK(memcmp(p, sig[t], 4) == 0);
		CHECK(get_le32(p + 4) == l.len[t]);
		CHECK(acpi_sum(p, l.len[t]) == 0);
		CHECK(memcmp(p + 10, "KINDLG", 6) == 0);
	}
	CHECK(l.off[ACPI_DSDT] + l.len[ACPI_DSDT] == l.total && l.total <= KVMM_ACPI_MAX);

	/* XSDT -> FADT, MADT; FADT -> DSDT. */
	CHECK(get_le32(xsdt + 4) == 36 + 16);
	CHECK(table_at(&l, get_le64(xsdt + 36)) == blob + l.off[ACPI_FADT]);
	CHECK(table_at(&l, get_le64(xsdt + 44)) == blob + l.off[ACPI_MADT]);
	const uint8_t *fadt = blob + l.off[ACPI_FADT];
	CHECK(fadt[8] == 6 && l.len[ACPI_FADT] == 276);
	CHECK(get_le64(fadt + 140) == KVMM_ACPI_GPA + l.off[ACPI_DSDT] && get_le32(fadt + 40) == get_le64(fadt + 140));
	CHECK(get_le32(fadt + 112) & (1u << 20)); /* HW_REDUCED_ACPI */
	if (port) {
		CHECK(fadt[244] == 1 && fadt[245] == 8 && get_le64(fadt + 248) == port);
		CHECK(fadt[256] == 1 && get_le64(fadt + 260) == port);
	} else {
		CHECK(get_le64(fadt + 248) == 0 && get_le64(fadt + 260) == 0);
	}

	/* MADT: the local APIC address, one enabled LAPIC per vCPU, an IOAPIC. */
	const uint8_t *madt = blob + l.off[ACPI_MADT];
	CHECK(get_le32(madt + 36) == KVMM_LAPIC_GPA);
	size_t lapics = 0, ioapics = 0;
	for (size_t o = 44; o + 2 <= l.len[ACPI_MADT];) {
		const uint8_t *e = madt + o;
		CHECK(e[1] >= 2 && o + e[1] <= l.len[ACPI_MADT]);
		if (e[1] < 2)
			break;
		if (e[0] == 0 && e[1] == 8) {
			CHECK(e[3] == lapics && (get_le32(e + 4) & 1));
			lapics++;
		} else if (e[0] == 1 && e[1] == 12) {
			CHECK(get_le32(e + 4) == KVMM_IOAPIC_GPA && get_le32(e + 8) == 0);
			ioapics++;
		}
		o += e[1];
	}
	CHECK(lapics == cpus && ioapics == 1);

	/* DSDT: Scope(\_SB) whose PkgLength covers every device, each Device
	 * with _HID "LNRO0005", _UID i and a _CRS of Memory32Fixed + Interrupt. */
	const uint8_t *d = blob + l.off[ACPI_DSDT], *aml = d + 36;
	size_t amllen = l.len[ACPI_DSDT] - 36, nb;
	CHECK(d[8] == 2);
	CHECK(aml[0] == 0x10); /* ScopeOp */
	size_t scope = pkglen(aml + 1, &nb);
	CHECK(memcmp(aml + 1 + nb, "\\_SB_", 5) == 0);
	size_t tail = port ? 1 + 1 + 4 + 1 + 1 + 1 + 2 + 1 : 0; /* Name(\_S5_, Package(2){5, 0}) */
	CHECK(1 + scope + tail == amllen);
	if (ndev > 2)
		CHECK(nb > 1); /* big enough to need a multi-byte PkgLength */
	size_t o = 1 + nb + 5, found = 0;
	while (o < 1 + scope) {
		CHECK(aml[o] == 0x5b && aml[o + 1] == 0x82); /* DeviceOp */
		if (aml[o] != 0x5b || aml[o + 1] != 0x82)
			break;
		size_t dl = pkglen(aml + o + 2, &nb);
		const uint8_t *dev = aml + o + 2 + nb;
		size_t devlen = dl - nb;
		char name[5] = { 0 };
		memcpy(name, dev, 4);
		CHECK(name[0] == 'V' && name[1] == 'R');
		CHECK(count(dev, devlen, "\x08_HID\x0dLNRO0005", 15) == 1);
		CHECK(count(dev, devlen, "_UID", 4) == 1);
		uint8_t mem32[12] = { 0x86, 9, 0, 1 }, irq[9] = { 0x89, 6, 0, 3, 1 };
		put_le32(mem32 + 4, (uint32_t)devs[found].base);
		put_le32(mem32 + 8, devs[found].size);
		put_le32(irq + 5, devs[found].gsi);
		CHECK(count(dev, devlen, mem32, 12) == 1);
		CHECK(count(dev, devlen, irq, 9) == 1);
		CHECK(dev[devlen - 2] == 0x79 && dev[devlen - 1] == 0); /* the _CRS buffer ends with EndTag */
		found++;
		o += 2 + dl;
	}
	CHECK(o == 1 + scope && found == ndev);
	if (port)
		CHECK(count(aml, amllen, "\x08\\_S5_\x12", 7) == 1);
}

static void test_errors(void)
{
	struct acpi_virtio_mmio dev = { 0xfffff000, 0x2000, 5 };
	struct acpi_config cfg = { .n_cpus = 1, .devs = &dev, .n_devs = 1, .gpa = KVMM_ACPI_GPA };
	struct acpi_layout l;
	CHECK(acpi_build(&cfg, blob, sizeof(blob), &l) == -EINVAL); /* window crosses 4 GiB */
	dev.base = KVMM_VIRTIO_MMIO_GPA;
	dev.size = 0x200;
	CHECK(acpi_build(&cfg, blob, sizeof(blob), &l) == 0);
	size_t total = l.total;
	CHECK(acpi_build(&cfg, blob, 100, &l) == -ENOSPC);
	CHECK(acpi_build(&cfg, blob, total - 1, &l) == -ENOSPC); /* one byte short, inside the DSDT */
	CHECK(acpi_build(&cfg, blob, total, &l) == 0 && l.total == total);
	cfg.n_cpus = 0;
	CHECK(acpi_build(&cfg, blob, sizeof(blob), &l) == -EINVAL);
	cfg.n_cpus = 256;
	CHECK(acpi_build(&cfg, blob, sizeof(blob), &l) == -EINVAL);
	cfg.n_cpus = 1;
	cfg.gpa = KVMM_ACPI_GPA + 4;
	CHECK(acpi_build(&cfg, blob, sizeof(blob), &l) == -EINVAL);
	cfg.gpa = KVMM_ACPI_GPA;
	cfg.n_devs = 257;
	CHECK(acpi_build(&cfg, blob, sizeof(blob), &l) == -EINVAL);
}

int main(void)
{
	check_tables(1, 0, 0);
	check_tables(1, 1, 0);
	check_tables(2, 3, 0x600);
	check_tables(16, 40, 0);    /* two-byte PkgLengths */
	check_tables(255, 256, 0x600); /* the most we allow */
	test_errors();
	return check_report();
}
