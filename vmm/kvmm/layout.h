/* kvmm: the guest's platform layout (x86-64): where the boot structures, RAM,
 * the ACPI tables and the devices sit in guest-physical memory, and the I/O
 * ports and interrupt lines of the devices the VM emulates. */
#ifndef KINDLING_KVMM_LAYOUT_H
#define KINDLING_KVMM_LAYOUT_H

/* Below 1 MiB: the zero page, the command line and the ACPI tables (in the
 * BIOS area the kernel scans for the RSDP).  RAM runs from 1 MiB up to the
 * MMIO hole, and continues above 4 GiB. */
#define KVMM_GDT_GPA 0x500ull	   /* boot GDT: null, null, __BOOT_CS (0x10), __BOOT_DS (0x18) */
#define KVMM_BOOT_STACK_GPA 0x8ff0ull /* initial RSP; the kernel switches to its own at once */
#define KVMM_ZERO_PAGE_GPA 0x7000ull
#define KVMM_PML4_GPA 0x9000ull /* then the PDPT at 0xa000 and four page directories at 0xb000..0xefff */
#define KVMM_CMDLINE_GPA 0x20000ull
#define KVMM_CMDLINE_MAX 0x10000ull /* the most we place; the kernel's own limit is cmdline_size */
#define KVMM_EBDA_GPA 0x9fc00ull
#define KVMM_ACPI_GPA 0xe0000ull /* up to 0x100000: 128 KiB for all tables */
#define KVMM_ACPI_MAX 0x20000ull
#define KVMM_HIMEM_GPA 0x100000ull
#define KVMM_KERNEL_GPA 0x1000000ull /* 16 MiB: the usual CONFIG_PHYSICAL_START */
#define KVMM_MMIO_HOLE_GPA 0xc0000000ull
#define KVMM_MMIO_HOLE_END 0x100000000ull
#define KVMM_VIRTIO_MMIO_GPA 0xd0000000ull /* device i at + i * KVMM_VIRTIO_MMIO_STRIDE */
#define KVMM_VIRTIO_MMIO_STRIDE 0x1000ull
#define KVMM_VIRTIO_MMIO_SIZE 0x200ull
#define KVMM_VIRTIO_MMIO_IRQ 5 /* device i uses GSI 5 + i */
#define KVMM_IOAPIC_GPA 0xfec00000ull
#define KVMM_LAPIC_GPA 0xfee00000ull

/* KVM's own pages for VMX real-mode emulation: three for the TSS and one
 * for the identity map, in the MMIO hole below the IOAPIC. */
#define KVMM_IDENTITY_MAP_GPA 0xfffbc000ull
#define KVMM_TSS_GPA 0xfffbd000ull

/* Port I/O the VM emulates in user space (the PIC and PIT are in KVM). */
#define KVMM_SERIAL_PORT 0x3f8 /* COM1, 8 ports */
#define KVMM_SERIAL_IRQ 4
#define KVMM_I8042_DATA_PORT 0x60
#define KVMM_I8042_CMD_PORT 0x64
#define KVMM_I8042_IRQ 1
#define KVMM_SLEEP_PORT 0x600 /* the FADT's sleep control/status register */

#endif
