/* kvmm: ACPI tables (acpi.c): RSDP, XSDT, FADT, MADT and a DSDT describing
 * the virtio-mmio devices (and COM1 and the i8042), so a stock kernel finds
 * them. */
#ifndef KINDLING_KVMM_ACPI_H
#define KINDLING_KVMM_ACPI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct acpi_virtio_mmio {
	uint64_t base;
	uint32_t size;
	uint32_t gsi;
};

struct acpi_config {
	uint32_t n_cpus; /* 1..255, APIC ids 0..n-1 */
	const struct acpi_virtio_mmio *devs;
	size_t n_devs; /* 0..256 */
	/* An I/O port for the hardware-reduced sleep control/status registers
	 * (the guest's poweroff writes SLP_TYP 5 | SLP_EN there); 0 = none. */
	uint16_t sleep_port;
	uint64_t gpa; /* where the blob will sit in the guest (e.g. KVMM_ACPI_GPA); 16-aligned */
	/* Declare the PC's COM1 (PNP0501: ports 0x3f8-0x3ff, IRQ 4) and PS/2
	 * keyboard controller (PNP0303: ports 0x60 and 0x64, IRQ 1) in the
	 * DSDT.  A hardware-reduced platform has no legacy PIC, so Linux maps
	 * ISA interrupts only for devices the DSDT lists; without this the
	 * console's tty cannot get IRQ 4 and the keyboard none. */
	bool legacy_isa;
};

/* The tables, each at an offset of the blob (all 8-aligned, RSDP first). */
enum acpi_table { ACPI_RSDP, ACPI_XSDT, ACPI_FADT, ACPI_MADT, ACPI_DSDT, ACPI_N_TABLES };

struct acpi_layout {
	size_t off[ACPI_N_TABLES];
	size_t len[ACPI_N_TABLES];
	size_t total;
};

/* Build all tables for |cfg| into |<buf, cap>| as one blob meant for guest
 * address cfg->gpa, checksums included.  Returns 0 with |*out| filled, -EINVAL
 * for a bad config, -ENOSPC if |cap| is too small. */
int acpi_build(const struct acpi_config *cfg, uint8_t *buf, size_t cap, struct acpi_layout *out);

/* The 8-bit sum of |<p, len>|: 0 for a table with a correct checksum. */
uint8_t acpi_sum(const uint8_t *p, size_t len);

#endif
