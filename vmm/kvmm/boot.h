/* kvmm: x86-64 Linux boot (boot.c): the boot protocol for a bzImage (setup
 * header, zero page, e820) and the long-mode state the boot vCPU starts in.
 * The guest addresses it uses are in layout.h. */
#ifndef KINDLING_KVMM_BOOT_H
#define KINDLING_KVMM_BOOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vmm/kvmm/guest_mem.h"

#define BZ_LOADED_HIGH 0x01
#define BZ_CAN_USE_HEAP 0x80
#define BZ_XLF_KERNEL_64 0x0001
#define BZ_XLF_CAN_BE_LOADED_ABOVE_4G 0x0002
#define BZ_MIN_VERSION 0x020c /* 2.12: xloadflags, and with it the 64-bit entry */
#define BZ_ZERO_PAGE_SIZE 4096
#define E820_RAM 1
#define E820_RESERVED 2
#define E820_MAX 128

/* What we need from a bzImage's setup header (Documentation/arch/x86/boot.rst). */
struct bzimage_info {
	uint16_t version; /* protocol, e.g. 0x020f */
	uint8_t setup_sects;
	uint8_t loadflags;
	uint16_t xloadflags;
	bool relocatable;
	uint32_t kernel_alignment;
	uint32_t init_size;	  /* bytes the kernel needs from its load address */
	uint64_t pref_address;	  /* where it would like to be loaded */
	uint32_t cmdline_size;	  /* longest command line, without the NUL */
	uint32_t initrd_addr_max; /* highest address the initrd's last byte may use */
	size_t setup_len;	  /* (setup_sects + 1) * 512: the real-mode part in the file */
	size_t header_end;	  /* file offset where the setup header ends (0x202 + jump byte) */
	size_t kernel_len;	  /* the protected-mode part: the file after setup_len */
	char kernel_version[64];  /* the version string, "" if it could not be found */
};

/* Parse and validate the setup header of the bzImage |<img, len>|: the 0xAA55
 * boot flag, "HdrS", protocol >= 2.12, LOADED_HIGH, XLF_KERNEL_64, a
 * power-of-two kernel_alignment and a nonzero init_size, all offsets inside
 * the file.  Returns 0 with |*out| filled, or -EINVAL (logged with what is
 * wrong) for anything else. */
int bzimage_parse(const uint8_t *img, size_t len, struct bzimage_info *out);

struct e820_entry {
	uint64_t addr, size;
	uint32_t type;
};

/* The e820 map of a guest with |mem_size| bytes of RAM laid out as above
 * (low RAM, the EBDA and BIOS area reserved, RAM from 1 MiB to the MMIO hole,
 * the rest above 4 GiB) into |<out, cap>|.  Returns 0 with |*n| set, -EINVAL
 * for less than 2 MiB of RAM, -ENOSPC if |cap| is too small. */
int e820_build(uint64_t mem_size, struct e820_entry *out, size_t cap, size_t *n);

/* What boot_setup() needs besides the kernel. */
struct boot_config {
	uint64_t mem_size;	 /* guest RAM in bytes, as e820_build() lays it out */
	const char *cmdline;	 /* may be NULL */
	uint64_t initrd_gpa;	 /* 0 = none; already in guest RAM (see boot_initrd_gpa()) */
	uint64_t initrd_size;
	uint64_t acpi_rsdp_gpa;	 /* 0 = let the kernel scan for it */
};

/* Where boot_setup() left things; the vCPU loop starts there. */
struct boot_result {
	uint64_t kernel_gpa; /* the protected-mode part */
	uint64_t entry64;    /* kernel_gpa + 0x200: the 64-bit entry point, RSI = zero_page */
	uint64_t zero_page;  /* boot_params */
	uint64_t cmdline_gpa;
};

/* Where to place an initrd of |size| bytes: as high as possible below both
 * the MMIO hole and |info|->initrd_addr_max, page aligned, above the kernel's
 * init_size.  Returns 0 with |*gpa| set, or -ENOSPC. */
int boot_initrd_gpa(const struct bzimage_info *info, uint64_t mem_size, uint64_t size, uint64_t *gpa);

/* Load the bzImage |<img, len>| (parsed into |info|) into |m| for the 64-bit
 * boot protocol: the protected-mode part at KVMM_KERNEL_GPA (which must
 * respect kernel_alignment), the command line at KVMM_CMDLINE_GPA, and the
 * zero page at KVMM_ZERO_PAGE_GPA with the setup header, loader type, the
 * command line, the initrd, the RSDP and the e820 map.  Returns 0 with |*out|
 * filled; -E2BIG for a command line over the kernel's cmdline_size, -EFAULT
 * when something does not fit in guest RAM, -EINVAL otherwise. */
int boot_setup(const struct guest_mem *m, const uint8_t *img, size_t len, const struct bzimage_info *info,
	       const struct boot_config *cfg, struct boot_result *out);

/* The register state the boot vCPU starts in: long mode, paging on with the
 * low 4 GiB identity-mapped, a flat GDT, interrupts off, RSI = zero page
 * (boot.rst, "64-bit Boot Protocol").  The vCPU loop copies it into KVM's
 * sregs/regs. */
struct boot_cpu {
	uint64_t rip, rsi, rsp, rflags;
	uint64_t cr0, cr3, cr4, efer;
	uint64_t gdt_base;
	uint16_t gdt_limit;
	uint16_t cs, ds; /* selectors: CS = __BOOT_CS; DS, ES, SS = __BOOT_DS */
	uint64_t code_desc, data_desc; /* the GDT entries behind them, for KVM's segment structs */
};

/* Write the boot GDT at KVMM_GDT_GPA and identity page tables for the low
 * 4 GiB (2 MiB pages) at KVMM_PML4_GPA into |m|, and fill |*out| to enter
 * |br|'s 64-bit entry point.  Call after boot_setup().  Returns 0 or -EFAULT
 * if guest RAM does not cover those pages. */
int boot_long_mode(const struct guest_mem *m, const struct boot_result *br, struct boot_cpu *out);

#endif
