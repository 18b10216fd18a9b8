/* The x86-64 Linux boot protocol (vmm/kvmm/boot.c): a synthetic bzImage
 * setup header, its failure modes, the zero page, the command line, the
 * initrd and the e820 map.  With KINDLING_TEST_BZIMAGE=path, also a real
 * kernel (tests/integration/60-kvmm-acpi.sh fetches Debian's), printing one
 * "bzimage: ..." line the script checks. */
/* ctest-labels: no-tsan (single-threaded: nothing for ThreadSanitizer to check) */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "tests/check.h"
#include "vmm/kvmm/boot.h"
#include "vmm/kvmm/guest_mem.h"
#include "common/bytes.h"
#include "vmm/kvmm/layout.h"

#define SETUP_SECTS 4
#define KERNEL_LEN 8192
#define IMG_LEN ((SETUP_SECTS + 1) * 512 + KERNEL_LEN)
#define INIT_SIZE 0x100000u
#define MEM (64ull << 20)

static void synthetic(uint8_t *img)
{
	memset(img, 0, IMG_LEN);
	img[0x1f1] = SETUP_SECTS;
	put_le16(img + 0x1fe, 0xaa55);
	img[0x200] = 0xeb; /* jmp short, and its offset: the header ends at 0x202 + 0x66 */
	img[0x201] = 0x66;
	memcpy(img + 0x202, "HdrS", 4);
	put_le16(img + 0x206, 0x020f);
	put_le16(img + 0x20e, 0x300); /* kernel_version string at 0x500 */
	memcpy(img + 0x500, "6.1.0-test (builder@kindling) #1 SMP", 37);
	img[0x211] = BZ_LOADED_HIGH;
	put_le32(img + 0x22c, 0x7fffffff); /* initrd_addr_max */
	put_le32(img + 0x230, 0x200000);   /* kernel_alignment */
	img[0x234] = 1;		       /* relocatable */
	put_le16(img + 0x236, BZ_XLF_KERNEL_64 | BZ_XLF_CAN_BE_LOADED_ABOVE_4G);
	put_le32(img + 0x238, 2047);		/* cmdline_size */
	put_le64(img + 0x258, 0x1000000);		/* pref_address */
	put_le32(img + 0x260, INIT_SIZE);		/* init_size */
	for (size_t i = (SETUP_SECTS + 1) * 512; i < IMG_LEN; i++)
		img[i] = (uint8_t)(i * 13);
}

static void test_parse(void)
{
	static uint8_t img[IMG_LEN], bad[IMG_LEN];
	struct bzimage_info bi;
	synthetic(img);
	CHECK(bzimage_parse(img, IMG_LEN, &bi) == 0);
	CHECK(bi.version == 0x020f && bi.setup_sects == SETUP_SECTS);
	CHECK(bi.setup_len == (SETUP_SECTS + 1) * 512 && bi.kernel_len == KERNEL_LEN);
	CHECK(bi.header_end == 0x268 && bi.relocatable && bi.kernel_alignment == 0x200000);
	CHECK(bi.init_size == INIT_SIZE && bi.pref_address == 0x1000000 && bi.cmdline_size == 2047);
	CHECK(strcmp(bi.kernel_version, "6.1.0-test (builder@kindling) #1 SMP") == 0);

	/* setup_sects 0 means 4. */
	memcpy(bad, img, IMG_LEN);
	bad[0x1f1] = 0;
	CHECK(bzimage_parse(bad, IMG_LEN, &bi) == 0 && bi.setup_len == 5 * 512);

	struct {
		size_t off;
		uint8_t val;
	} breaks[] = {
		{ 0x1fe, 0 },	     /* boot flag */
		{ 0x202, 'h' },	     /* magic */
		{ 0x206, 0x0b },     /* version 2.11 */
		{ 0x211, 0 },	     /* not LOADED_HIGH */
		{ 0x236, 0 },	     /* no XLF_KERNEL_64 */
		{ 0x232, 0x30 },     /* kernel_alignment 0x300000: not a power of two */
		{ 0x262, 0 },	     /* init_size 0 (0x100000 -> 0) */
		{ 0x1f1, 200 },	     /* setup part longer than the file */
		{ 0x201, 0x10 },     /* header ends before the 2.12 fields */
		{ 0x201, 0xa0 },     /* header runs past boot_params' room */
	};
	for (size_t i = 0; i < sizeof(breaks) / sizeof(breaks[0]); i++) {
		memcpy(bad, img, IMG_LEN);
		bad[breaks[i].off] = breaks[i].val;
		int r = bzimage_parse(bad, IMG_LEN, &bi);
		CHECK(r == -EINVAL);
		if (r != -EINVAL)
			fprintf(stderr, "  break %zu (offset 0x%zx) parsed\n", i, breaks[i].off);
	}
	CHECK(bzimage_parse(img, 0x267, &bi) == -EINVAL);
	CHECK(bzimage_parse(img, (SETUP_SECTS + 1) * 512, &bi) == -EINVAL); /* no kernel after the setup */
	/* init_size smaller than the kernel itself. */
	memcpy(bad, img, IMG_LEN);
	put_le32(bad + 0x260, 4096);
	CHECK(bzimage_parse(bad, IMG_LEN, &bi) == -EINVAL);
}

static void test_e820(void)
{
	struct e820_entry e[8];
	size_t n;
	CHECK(e820_build(1 << 20, e, 8, &n) == -EINVAL);
	CHECK(e820_build(MEM, e, 8, &n) == 0 && n == 3);
	CHECK(e[0].addr == 0 && e[0].size == KVMM_EBDA_GPA && e[0].type == E820_RAM);
	CHECK(e[1].addr == KVMM_EBDA_GPA && e[1].addr + e[1].size == KVMM_HIMEM_GPA && e[1].type == E820_RESERVED);
	CHECK(e[2].addr == KVMM_HIMEM_GPA && e[2].addr + e[2].size == MEM && e[2].type == E820_RAM);
	/* 5 GiB: 3 GiB below the hole, 2 GiB above 4 GiB. */
	CHECK(e820_build(5ull << 30, e, 8, &n) == 0 && n == 4);
	CHECK(e[2].addr + e[2].size == KVMM_MMIO_HOLE_GPA);
	CHECK(e[3].addr == 4ull << 30 && e[3].size == 2ull << 30);
	CHECK(e820_build(5ull << 30, e, 3, &n) == -ENOSPC);
	/* The ACPI area is reserved. */
	CHECK(KVMM_ACPI_GPA >= e[1].addr && KVMM_ACPI_GPA + KVMM_ACPI_MAX <= e[1].addr + e[1].size);
}

static int check_zero_page(const uint8_t *ram, const uint8_t *img, const struct bzimage_info *bi,
			   const struct boot_config *cfg, const struct boot_result *br)
{
	const uint8_t *zp = ram + br->zero_page;
	int before = check_failed;
	CHECK(br->kernel_gpa == KVMM_KERNEL_GPA && br->entry64 == KVMM_KERNEL_GPA + 0x200);
	CHECK(memcmp(ram + br->kernel_gpa, img + bi->setup_len, bi->kernel_len) == 0);
	CHECK(get_le16(zp + 0x1fe) == 0xaa55 && memcmp(zp + 0x202, "HdrS", 4) == 0);
	CHECK(get_le16(zp + 0x206) == bi->version);
	CHECK(memcmp(zp + 0x1f1, img + 0x1f1, 0x1fa - 0x1f1) == 0); /* the header, copied... */
	CHECK(memcmp(zp + 0x1fc, img + 0x1fc, 0x210 - 0x1fc) == 0);
	CHECK(memcmp(zp + 0x230, img + 0x230, bi->header_end - 0x230) == 0);
	CHECK(get_le16(zp + 0x1fa) == 0xffff);				      /* ...but vid_mode "normal" */
	CHECK(zp[0x210] == 0xff);				      /* type_of_loader: undefined */
	CHECK(get_le32(zp + 0x228) == KVMM_CMDLINE_GPA && get_le32(zp + 0x0c8) == 0);
	CHECK(strcmp((const char *)ram + KVMM_CMDLINE_GPA, cfg->cmdline ? cfg->cmdline : "") == 0);
	CHECK(get_le32(zp + 0x218) == (uint32_t)cfg->initrd_gpa && get_le32(zp + 0x21c) == (uint32_t)cfg->initrd_size);
	CHECK(get_le64(zp + 0x070) == cfg->acpi_rsdp_gpa);
	CHECK(zp[0x1e8] == 3);
	const uint8_t *e820_ram = zp + 0x2d0 + 2 * 20; /* the third entry: RAM from 1 MiB */
	CHECK(get_le64(e820_ram) == KVMM_HIMEM_GPA && get_le64(e820_ram + 8) == cfg->mem_size - KVMM_HIMEM_GPA);
	CHECK(get_le32(zp + 0x2d0 + 2 * 20 + 16) == E820_RAM);
	return check_failed == before;
}

static void test_setup(void)
{
	static uint8_t img[IMG_LEN];
	struct bzimage_info bi;
	synthetic(img);
	CHECK(bzimage_parse(img, IMG_LEN, &bi) == 0);
	uint8_t *ram = calloc(1, MEM);
	struct guest_mem m;
	guest_mem_init(&m);
	CHECK(ram && guest_mem_add(&m, 0, ram, MEM) == 0);
	if (!ram)
		return;
	uint64_t initrd;
	CHECK(boot_initrd_gpa(&bi, MEM, 3 << 20, &initrd) == 0);
	CHECK(initrd % 4096 == 0 && initrd + (3 << 20) <= MEM && initrd >= KVMM_KERNEL_GPA + INIT_SIZE);
	CHECK(boot_initrd_gpa(&bi, MEM, MEM, &initrd) == -ENOSPC);
	memset(ram + initrd, 0x5a, 3 << 20);

	struct boot_config cfg = { .mem_size = MEM, .cmdline = "console=ttyS0 root=/dev/vda ro",
				   .initrd_gpa = initrd, .initrd_size = 3 << 20, .acpi_rsdp_gpa = KVMM_ACPI_GPA };
	struct boot_result br;
	CHECK(boot_setup(&m, img, IMG_LEN, &bi, &cfg, &br) == 0);
	CHECK(check_zero_page(ram, img, &bi, &cfg, &br));

	/* Long mode: walk the page tables the way the CPU will. */
	struct boot_cpu cpu;
	CHECK(boot_long_mode(&m, &br, &cpu) == 0);
	CHECK(cpu.rip == br.entry64 && cpu.rsi == KVMM_ZERO_PAGE_GPA && !(cpu.rflags & 0x200));
	CHECK((cpu.cr0 & 0x80000001u) == 0x80000001u && (cpu.cr4 & 0x20) && (cpu.efer & 0x500) == 0x500);
	CHECK(cpu.cs == 0x10 && cpu.ds == 0x18 && cpu.gdt_limit == 31);
	CHECK(get_le64(ram + cpu.gdt_base + 0x10) == cpu.code_desc && get_le64(ram + cpu.gdt_base + 0x18) == cpu.data_desc);
	CHECK((cpu.code_desc >> 53 & 1) && (cpu.code_desc >> 47 & 1)); /* L and P bits */
	uint64_t probes[] = { cpu.rip, KVMM_KERNEL_GPA + INIT_SIZE - 1, initrd, KVMM_ZERO_PAGE_GPA, 0xfffff000ull };
	for (size_t i = 0; i < sizeof(probes) / sizeof(probes[0]); i++) {
		uint64_t va = probes[i];
		uint64_t pml4e = get_le64(ram + (cpu.cr3 & ~0xfffull) + 8 * (va >> 39 & 511));
		uint64_t pdpte = get_le64(ram + (pml4e & ~0xfffull) + 8 * (va >> 30 & 511));
		uint64_t pde = get_le64(ram + (pdpte & ~0xfffull) + 8 * (va >> 21 & 511));
		CHECK((pml4e & 1) && (pdpte & 1) && (pde & 0x81) == 0x81);
		CHECK((pde & ~0x1fffffull) + (va & 0x1fffff) == va); /* identity */
	}
	struct guest_mem tiny;
	guest_mem_init(&tiny);
	CHECK(guest_mem_add(&tiny, 0, ram, 0x9000) == 0);
	CHECK(boot_long_mode(&tiny, &br, &cpu) == -EFAULT);

	/* A command line longer than the kernel takes. */
	char *longcl = malloc(4096);
	memset(longcl, 'a', 4095);
	longcl[4095] = 0;
	cfg.cmdline = longcl;
	CHECK(boot_setup(&m, img, IMG_LEN, &bi, &cfg, &br) == -E2BIG);
	free(longcl);
	cfg.cmdline = NULL;
	/* An initrd overlapping the kernel, or above initrd_addr_max, or past RAM. */
	cfg.initrd_gpa = KVMM_KERNEL_GPA + 4096;
	CHECK(boot_setup(&m, img, IMG_LEN, &bi, &cfg, &br) == -EINVAL);
	cfg.initrd_gpa = MEM - 4096;
	CHECK(boot_setup(&m, img, IMG_LEN, &bi, &cfg, &br) == -EINVAL);
	cfg.initrd_gpa = UINT64_MAX - 4096;
	CHECK(boot_setup(&m, img, IMG_LEN, &bi, &cfg, &br) == -EINVAL);
	cfg.initrd_gpa = 0;
	cfg.initrd_size = 0;
	CHECK(boot_setup(&m, img, IMG_LEN, &bi, &cfg, &br) == 0 && ram[KVMM_CMDLINE_GPA] == 0);
	/* Too little RAM for init_size. */
	struct guest_mem small;
	guest_mem_init(&small);
	CHECK(guest_mem_add(&small, 0, ram, KVMM_KERNEL_GPA + INIT_SIZE / 2) == 0);
	cfg.mem_size = KVMM_KERNEL_GPA + INIT_SIZE / 2;
	CHECK(boot_setup(&small, img, IMG_LEN, &bi, &cfg, &br) == -EFAULT);
	/* A non-relocatable kernel that wants another address. */
	cfg.mem_size = MEM;
	bi.relocatable = false;
	bi.pref_address = 0x200000;
	CHECK(boot_setup(&m, img, IMG_LEN, &bi, &cfg, &br) == -EINVAL);
	free(ram);
}

/* The real kernel from $KINDLING_TEST_BZIMAGE. */
static void test_real(const char *path)
{
	uint8_t *img;
	size_t len;
	int r = read_file_all(path, 256u << 20, &img, &len);
	CHECK(r == 0);
	if (r < 0) {
		fprintf(stderr, "read %s: %s\n", path, strerror(-r));
		return;
	}
	struct bzimage_info bi;
	r = bzimage_parse(img, len, &bi);
	CHECK(r == 0);
	if (r == 0) {
		CHECK(bi.version >= BZ_MIN_VERSION);
		CHECK(bi.xloadflags & BZ_XLF_KERNEL_64);
		CHECK(bi.relocatable);
		CHECK(bi.init_size > bi.kernel_len);
		CHECK(bi.kernel_version[0] >= '0' && bi.kernel_version[0] <= '9');
		/* Boot it into a guest just large enough, plus an initrd. */
		uint64_t mem = KVMM_KERNEL_GPA + bi.init_size + (64ull << 20);
		uint8_t *ram = calloc(1, mem);
		struct guest_mem m;
		guest_mem_init(&m);
		CHECK(ram && guest_mem_add(&m, 0, ram, mem) == 0);
		uint64_t initrd = 0;
		CHECK(boot_initrd_gpa(&bi, mem, 16 << 20, &initrd) == 0);
		struct boot_config cfg = { .mem_size = mem, .cmdline = "console=ttyS0 reboot=k panic=1" };
		cfg.initrd_gpa = initrd;
		cfg.initrd_size = 16 << 20;
		cfg.acpi_rsdp_gpa = KVMM_ACPI_GPA;
		struct boot_result br = { 0 };
		r = ram ? boot_setup(&m, img, len, &bi, &cfg, &br) : -ENOMEM;
		CHECK(r == 0);
		struct boot_cpu cpu = { 0 };
		if (r == 0) {
			CHECK(check_zero_page(ram, img, &bi, &cfg, &br));
			CHECK(boot_long_mode(&m, &br, &cpu) == 0 && cpu.rip == br.entry64);
		}
		printf("bzimage: protocol %u.%02u kernel \"%s\" setup_sects %u loadflags 0x%02x xloadflags 0x%04x "
		       "kernel_64 %d relocatable %d alignment 0x%x init_size 0x%x pref_address 0x%" PRIx64
		       " cmdline_size %u entry64 0x%" PRIx64 "\n",
		       bi.version >> 8, bi.version & 0xff, bi.kernel_version, bi.setup_sects, bi.loadflags,
		       bi.xloadflags, !!(bi.xloadflags & BZ_XLF_KERNEL_64), bi.relocatable, bi.kernel_alignment,
		       bi.init_size, bi.pref_address, bi.cmdline_size, br.entry64);
		free(ram);
	}
	free(img);
}

int main(void)
{
	test_parse();
	test_e820();
	test_setup();
	const char *real = getenv("KINDLING_TEST_BZIMAGE");
	if (real && *real)
		test_real(real);
	return check_report();
}
