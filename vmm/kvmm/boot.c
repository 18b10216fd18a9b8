/* The x86-64 Linux boot protocol for a bzImage (the kernel's
 * Documentation/arch/x86/boot.rst), 64-bit entry.
 *
 * A bzImage is a real-mode setup part of (setup_sects + 1) sectors followed by
 * the protected-mode kernel.  A 64-bit loader skips the real-mode code: it
 * copies the protected-mode part to a suitably aligned address, fills a zero
 * page (struct boot_params) with a copy of the setup header plus what the
 * loader knows (command line, initrd, e820 map), and jumps to load address +
 * 0x200 in long mode with RSI pointing at the zero page.  Offsets below are the
 * document's; we keep them as byte offsets instead of mirroring the kernel's
 * structs. */
#include <errno.h>
#include <string.h>

#define LOG_COMPONENT "kvmm"
#include "common/common.h"
#include "vmm/kvmm/boot.h"
#include "vmm/kvmm/guest_mem.h"
#include "common/bytes.h"
#include "vmm/kvmm/layout.h"

/* Setup header fields (file offset == zero-page offset). */
#define HDR_SETUP_SECTS 0x1f1
#define HDR_VID_MODE 0x1fa
#define HDR_BOOT_FLAG 0x1fe
#define HDR_JUMP 0x200
#define HDR_MAGIC 0x202
#define HDR_VERSION 0x206
#define HDR_KERNEL_VERSION 0x20e
#define HDR_TYPE_OF_LOADER 0x210
#define HDR_LOADFLAGS 0x211
#define HDR_CODE32_START 0x214
#define HDR_RAMDISK_IMAGE 0x218
#define HDR_RAMDISK_SIZE 0x21c
#define HDR_CMD_LINE_PTR 0x228
#define HDR_INITRD_ADDR_MAX 0x22c
#define HDR_KERNEL_ALIGNMENT 0x230
#define HDR_RELOCATABLE 0x234
#define HDR_XLOADFLAGS 0x236
#define HDR_CMDLINE_SIZE 0x238
#define HDR_PREF_ADDRESS 0x258
#define HDR_INIT_SIZE 0x260
#define HDR_MIN_END 0x268 /* through handover_offset: everything 2.12 has */
#define HDR_MAX_END 0x290 /* where boot_params' setup_header room ends */
/* Zero-page fields outside the setup header. */
#define ZP_ACPI_RSDP_ADDR 0x070
#define ZP_EXT_RAMDISK_IMAGE 0x0c0
#define ZP_EXT_RAMDISK_SIZE 0x0c4
#define ZP_EXT_CMD_LINE_PTR 0x0c8
#define ZP_E820_ENTRIES 0x1e8
#define ZP_E820_TABLE 0x2d0
#define E820_ENTRY_SIZE 20

#define HDRS_MAGIC 0x53726448u /* "HdrS" */
#define BOOT_FLAG 0xaa55
#define LOADER_UNDEFINED 0xff

static void kernel_version_string(const uint8_t *img, size_t len, struct bzimage_info *out)
{
	/* kernel_version points (minus 0x200) at a NUL-terminated string in
	 * the setup part. */
	uint16_t p = get_le16(img + HDR_KERNEL_VERSION);
	size_t off = (size_t)p + 0x200;
	out->kernel_version[0] = 0;
	if (p == 0 || off >= out->setup_len || off >= len)
		return;
	size_t max = out->setup_len - off, n = 0;
	while (n < max && n + 1 < sizeof(out->kernel_version) && img[off + n] >= 0x20 && img[off + n] < 0x7f) {
		out->kernel_version[n] = (char)img[off + n];
		n++;
	}
	out->kernel_version[n] = 0;
}

int bzimage_parse(const uint8_t *img, size_t len, struct bzimage_info *out)
{
	memset(out, 0, sizeof(*out));
	if (len < HDR_MIN_END) {
		log_err("bzImage: %zu bytes is too short for a setup header", len);
		return -EINVAL;
	}
	if (get_le16(img + HDR_BOOT_FLAG) != BOOT_FLAG || get_le32(img + HDR_MAGIC) != HDRS_MAGIC) {
		log_err("bzImage: no boot flag 0xAA55 and \"HdrS\" magic: not a Linux bzImage");
		return -EINVAL;
	}
	out->version = get_le16(img + HDR_VERSION);
	if (out->version < BZ_MIN_VERSION) {
		log_err("bzImage: boot protocol %u.%02u is older than 2.12 (no 64-bit entry)", out->version >> 8,
			out->version & 0xff);
		return -EINVAL;
	}
	out->setup_sects = img[HDR_SETUP_SECTS];
	out->setup_len = ((size_t)(out->setup_sects ? out->setup_sects : 4) + 1) * 512; /* 0 means 4 */
	out->header_end = 0x202 + (size_t)img[HDR_JUMP + 1];
	if (out->header_end < HDR_MIN_END || out->header_end > HDR_MAX_END || out->setup_len >= len) {
		log_err("bzImage: setup header end 0x%zx or setup size %zu does not fit the %zu-byte file",
			out->header_end, out->setup_len, len);
		return -EINVAL;
	}
	out->kernel_len = len - out->setup_len;
	out->loadflags = img[HDR_LOADFLAGS];
	out->xloadflags = get_le16(img + HDR_XLOADFLAGS);
	out->relocatable = img[HDR_RELOCATABLE] != 0;
	out->kernel_alignment = get_le32(img + HDR_KERNEL_ALIGNMENT);
	out->init_size = get_le32(img + HDR_INIT_SIZE);
	out->pref_address = get_le64(img + HDR_PREF_ADDRESS);
	out->cmdline_size = get_le32(img + HDR_CMDLINE_SIZE);
	out->initrd_addr_max = get_le32(img + HDR_INITRD_ADDR_MAX);
	if (!(out->loadflags & BZ_LOADED_HIGH) || !(out->xloadflags & BZ_XLF_KERNEL_64)) {
		log_err("bzImage: not a 64-bit kernel loadable high (loadflags 0x%x, xloadflags 0x%x)",
			out->loadflags, out->xloadflags);
		return -EINVAL;
	}
	uint32_t align = out->kernel_alignment;
	if (align == 0 || (align & (align - 1)) || out->init_size == 0 || out->init_size < out->kernel_len) {
		log_err("bzImage: bad kernel_alignment 0x%x or init_size 0x%x", out->kernel_alignment, out->init_size);
		return -EINVAL;
	}
	kernel_version_string(img, len, out);
	return 0;
}

int e820_build(uint64_t mem_size, struct e820_entry *out, size_t cap, size_t *n)
{
	struct e820_entry e[4];
	size_t k = 0;
	if (mem_size < 2 * KVMM_HIMEM_GPA) /* 2 MiB: anything less has no RAM above 1 MiB to speak of */
		return -EINVAL;
	uint64_t low_end = mem_size < KVMM_MMIO_HOLE_GPA ? mem_size : KVMM_MMIO_HOLE_GPA;
	/* Conventional memory, then the EBDA and the BIOS area (where our ACPI
	 * tables sit) reserved so the kernel leaves them alone. */
	e[k++] = (struct e820_entry){ 0, KVMM_EBDA_GPA, E820_RAM };
	e[k++] = (struct e820_entry){ KVMM_EBDA_GPA, KVMM_HIMEM_GPA - KVMM_EBDA_GPA, E820_RESERVED };
	e[k++] = (struct e820_entry){ KVMM_HIMEM_GPA, low_end - KVMM_HIMEM_GPA, E820_RAM };
	if (mem_size > KVMM_MMIO_HOLE_GPA)
		e[k++] = (struct e820_entry){ KVMM_MMIO_HOLE_END, mem_size - KVMM_MMIO_HOLE_GPA, E820_RAM };
	if (k > cap)
		return -ENOSPC;
	memcpy(out, e, k * sizeof(e[0]));
	*n = k;
	return 0;
}

/* The top of RAM below 4 GiB, as e820_build() lays it out. */
static uint64_t low_ram_end(uint64_t mem_size)
{
	return mem_size < KVMM_MMIO_HOLE_GPA ? mem_size : KVMM_MMIO_HOLE_GPA;
}

int boot_initrd_gpa(const struct bzimage_info *info, uint64_t mem_size, uint64_t size, uint64_t *gpa)
{
	uint64_t top = low_ram_end(mem_size), kernel_end = KVMM_KERNEL_GPA + info->init_size;
	if ((uint64_t)info->initrd_addr_max + 1 < top)
		top = (uint64_t)info->initrd_addr_max + 1;
	if (size > top)
		return -ENOSPC;
	uint64_t g = (top - size) & ~0xfffull;
	if (g < kernel_end)
		return -ENOSPC;
	*gpa = g;
	return 0;
}

int boot_setup(const struct guest_mem *m, const uint8_t *img, size_t len, const struct bzimage_info *info,
	       const struct boot_config *cfg, struct boot_result *out)
{
	uint64_t kernel = KVMM_KERNEL_GPA, kernel_end, initrd_end;
	if (info->setup_len >= len || info->kernel_len != len - info->setup_len)
		return -EINVAL;
	/* A relocatable kernel runs at any multiple of kernel_alignment; any
	 * other only at pref_address. */
	if (info->relocatable ? kernel % info->kernel_alignment != 0 : info->pref_address != kernel) {
		log_err("bzImage: cannot load at 0x%llx (alignment 0x%x, relocatable %d, preferred 0x%llx)",
			(unsigned long long)kernel, info->kernel_alignment, info->relocatable,
			(unsigned long long)info->pref_address);
		return -EINVAL;
	}
	/* The kernel decompresses in place and needs init_size bytes there. */
	kernel_end = kernel + info->init_size;
	if (kernel_end > low_ram_end(cfg->mem_size) || !guest_mem_ptr(m, kernel, info->init_size)) {
		log_err("bzImage: needs 0x%x bytes at 0x%llx; the guest has too little RAM", info->init_size,
			(unsigned long long)kernel);
		return -EFAULT;
	}
	if (guest_mem_write(m, kernel, img + info->setup_len, info->kernel_len) < 0)
		return -EFAULT;

	const char *cmdline = cfg->cmdline ? cfg->cmdline : "";
	size_t cl = strlen(cmdline);
	if (cl > info->cmdline_size || cl >= KVMM_CMDLINE_MAX) {
		log_err("kernel command line of %zu bytes is longer than the kernel's %u", cl, info->cmdline_size);
		return -E2BIG;
	}
	if (guest_mem_write(m, KVMM_CMDLINE_GPA, cmdline, cl + 1) < 0)
		return -EFAULT;

	if (cfg->initrd_size) {
		if (!ck_add_u64(cfg->initrd_gpa, cfg->initrd_size, &initrd_end) ||
		    initrd_end - 1 > info->initrd_addr_max || cfg->initrd_gpa < kernel_end ||
		    !guest_mem_ptr(m, cfg->initrd_gpa, cfg->initrd_size)) {
			log_err("initrd at 0x%llx (%llu bytes) is not in RAM above the kernel and below 0x%x",
				(unsigned long long)cfg->initrd_gpa, (unsigned long long)cfg->initrd_size,
				info->initrd_addr_max);
			return -EINVAL;
		}
	}

	uint8_t zp[BZ_ZERO_PAGE_SIZE];
	memset(zp, 0, sizeof(zp));
	memcpy(zp + HDR_SETUP_SECTS, img + HDR_SETUP_SECTS, info->header_end - HDR_SETUP_SECTS);
	put_le16(zp + HDR_VID_MODE, 0xffff); /* "normal" */
	zp[HDR_TYPE_OF_LOADER] = LOADER_UNDEFINED;
	put_le32(zp + HDR_CODE32_START, (uint32_t)kernel);
	put_le32(zp + HDR_CMD_LINE_PTR, (uint32_t)KVMM_CMDLINE_GPA);
	put_le32(zp + ZP_EXT_CMD_LINE_PTR, (uint32_t)(KVMM_CMDLINE_GPA >> 32));
	put_le32(zp + HDR_RAMDISK_IMAGE, (uint32_t)cfg->initrd_gpa);
	put_le32(zp + ZP_EXT_RAMDISK_IMAGE, (uint32_t)(cfg->initrd_gpa >> 32));
	put_le32(zp + HDR_RAMDISK_SIZE, (uint32_t)cfg->initrd_size);
	put_le32(zp + ZP_EXT_RAMDISK_SIZE, (uint32_t)(cfg->initrd_size >> 32));
	put_le64(zp + ZP_ACPI_RSDP_ADDR, cfg->acpi_rsdp_gpa);

	struct e820_entry e[E820_MAX];
	size_t n;
	int r = e820_build(cfg->mem_size, e, E820_MAX, &n);
	if (r < 0)
		return r;
	zp[ZP_E820_ENTRIES] = (uint8_t)n;
	for (size_t i = 0; i < n; i++) {
		uint8_t *p = zp + ZP_E820_TABLE + E820_ENTRY_SIZE * i;
		put_le64(p, e[i].addr);
		put_le64(p + 8, e[i].size);
		put_le32(p + 16, e[i].type);
	}
	if (guest_mem_write(m, KVMM_ZERO_PAGE_GPA, zp, sizeof(zp)) < 0)
		return -EFAULT;

	out->kernel_gpa = kernel;
	out->entry64 = kernel + 0x200;
	out->zero_page = KVMM_ZERO_PAGE_GPA;
	out->cmdline_gpa = KVMM_CMDLINE_GPA;
	return 0;
}

/* Long mode needs paging: one PML4 entry -> one PDPT whose first four
 * entries -> four page directories of 512 2 MiB pages each = 4 GiB, which
 * covers the kernel, its init_size, the zero page, the command line and the
 * initrd wherever e820_build() and boot_initrd_gpa() put them. */
#define PTE_PRESENT 0x1ull
#define PTE_RW 0x2ull
#define PTE_PS 0x80ull /* 2 MiB page in a page directory */
#define PDPT_GPA (KVMM_PML4_GPA + 0x1000)
#define PD_GPA (KVMM_PML4_GPA + 0x2000)
#define N_PD 4

/* Flat 4 GiB descriptors: 64-bit code (L=1, execute/read) and data
 * (read/write), the values every x86 VMM uses for the Linux entry. */
#define GDT_CODE64 0x00af9b000000ffffull
#define GDT_DATA 0x00cf93000000ffffull
#define BOOT_CS 0x10
#define BOOT_DS 0x18

#define CR0_PE 0x1ull
#define CR0_PG 0x80000000ull
#define CR4_PAE 0x20ull
#define EFER_LME 0x100ull
#define EFER_LMA 0x400ull

int boot_long_mode(const struct guest_mem *m, const struct boot_result *br, struct boot_cpu *out)
{
	uint8_t page[4096];
	uint8_t gdt[4 * 8] = { 0 };
	put_le64(gdt + BOOT_CS, GDT_CODE64);
	put_le64(gdt + BOOT_DS, GDT_DATA);
	if (guest_mem_write(m, KVMM_GDT_GPA, gdt, sizeof(gdt)) < 0)
		return -EFAULT;

	memset(page, 0, sizeof(page));
	put_le64(page, PDPT_GPA | PTE_PRESENT | PTE_RW);
	if (guest_mem_write(m, KVMM_PML4_GPA, page, sizeof(page)) < 0)
		return -EFAULT;
	memset(page, 0, sizeof(page));
	for (uint64_t i = 0; i < N_PD; i++)
		put_le64(page + 8 * i, (PD_GPA + 0x1000 * i) | PTE_PRESENT | PTE_RW);
	if (guest_mem_write(m, PDPT_GPA, page, sizeof(page)) < 0)
		return -EFAULT;
	for (uint64_t d = 0; d < N_PD; d++) {
		for (uint64_t i = 0; i < 512; i++)
			put_le64(page + 8 * i, ((d * 512 + i) << 21) | PTE_PRESENT | PTE_RW | PTE_PS);
		if (guest_mem_write(m, PD_GPA + 0x1000 * d, page, sizeof(page)) < 0)
			return -EFAULT;
	}

	memset(out, 0, sizeof(*out));
	out->rip = br->entry64;
	out->rsi = br->zero_page;
	out->rsp = KVMM_BOOT_STACK_GPA;
	out->rflags = 0x2; /* bit 1 is always set; IF clear: interrupts off */
	out->cr0 = CR0_PE | CR0_PG;
	out->cr3 = KVMM_PML4_GPA;
	out->cr4 = CR4_PAE;
	out->efer = EFER_LME | EFER_LMA;
	out->gdt_base = KVMM_GDT_GPA;
	out->gdt_limit = sizeof(gdt) - 1;
	out->cs = BOOT_CS;
	out->ds = BOOT_DS;
	out->code_desc = GDT_CODE64;
	out->data_desc = GDT_DATA;
	return 0;
}
