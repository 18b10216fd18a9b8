/* kvmm: the KVM micro-VM monitor, its one public header.
 *
 * The pure parts run and are tested without /dev/kvm (unit tests, fuzz
 * targets, tools):
 *
 *   guest memory   host mappings of guest-physical ranges, behind ONE
 *                  overflow-checked accessor (guest_mem_ptr); every guest
 *                  address the device code touches goes through it;
 *   virtq          split virtqueues (virtio 1.x): descriptor chains, indirect
 *                  tables, the avail and used rings, EVENT_IDX;
 *   virtio-mmio    the version-2 register file and device-status machine;
 *   virtio-blk     a read-only block device over a read_at() backend;
 *   boot           the x86-64 Linux boot protocol for a bzImage: setup header,
 *                  zero page, e820;
 *   acpi           RSDP, XSDT, FADT, MADT and a DSDT describing the virtio-mmio
 *                  devices (and COM1 and the i8042), so a stock kernel finds
 *                  them;
 *   config, api    Firecracker's configuration and REST API (section "config"
 *                  and "api" below), with per-thread seccomp and the jail;
 *   vsock          virtio-vsock with Firecracker's unix-socket scheme.
 *
 * The VM itself (section "vm": KVM setup, vCPU threads, the device loop,
 * serial and i8042) needs /dev/kvm; tests/nested/ runs it under nested KVM.
 *
 * Threading: the device objects do not lock themselves.  The VM gives each
 * device a mutex that its vCPU threads take around MMIO exits and the device
 * loop (kvmm_loop) takes around the device's callbacks.
 */
#ifndef KINDLING_KVMM_H
#define KINDLING_KVMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <pthread.h>

/* ---- the device event loop (vmm/kvmm/loop.c) ------------------------------------------------------------------- */

/* One epoll loop that runs every device-side callback of a VM on one thread:
 * ioeventfd notifications, vsock's unix sockets, the serial console's input.
 * A registration may name a mutex that the loop holds around its callback,
 * so a device's state is shared safely with the vCPU threads that take the
 * same mutex around their MMIO exits. */
#define KVMM_LOOP_MAX_FDS 128

typedef void (*kvmm_fd_fn)(void *ctx, int fd, uint32_t events);

struct kvmm_loop_entry {
	int fd; /* -1 = free slot */
	kvmm_fd_fn fn;
	void *ctx;
	pthread_mutex_t *lock; /* may be NULL */
};

struct kvmm_loop {
	int epfd;
	int stop_fd; /* an eventfd: kvmm_loop_stop() makes kvmm_loop_run() return */
	struct kvmm_loop_entry entries[KVMM_LOOP_MAX_FDS];
};

/* Create the epoll set.  Returns 0 or -errno (logged). */
int kvmm_loop_init(struct kvmm_loop *l);

/* Close the loop's own descriptors (not the registered ones). */
void kvmm_loop_destroy(struct kvmm_loop *l);

/* Watch |fd| for |events| (EPOLLIN, EPOLLOUT, ...): fn(ctx, fd, events) runs on
 * the loop thread, under |lock| when it is not NULL.  Returns 0, -EEXIST if
 * |fd| is already watched, -ENOSPC past KVMM_LOOP_MAX_FDS, or -errno. */
int kvmm_loop_add(struct kvmm_loop *l, int fd, uint32_t events, kvmm_fd_fn fn, void *ctx, pthread_mutex_t *lock);

/* Change the events watched on |fd|.  Returns 0, -ENOENT or -errno. */
int kvmm_loop_mod(struct kvmm_loop *l, int fd, uint32_t events);

/* Stop watching |fd| (does not close it); safe from inside a callback,
 * including the callback of |fd| itself.  Returns 0 or -ENOENT. */
int kvmm_loop_del(struct kvmm_loop *l, int fd);

/* Dispatch events until kvmm_loop_stop().  Returns 0, or -errno if epoll
 * itself fails. */
int kvmm_loop_run(struct kvmm_loop *l);

/* Make kvmm_loop_run() return after its current callback; any thread. */
void kvmm_loop_stop(struct kvmm_loop *l);

/* ---- the VM's configuration (vmm/kvmm/config.c) ---------------------------------------------------------------- */

/* What Firecracker's API and --config-file set, in Firecracker's terms.
 * Strings are malloc'd and owned by the config. */
#define KVMM_MAX_DRIVES 8
#define KVMM_DRIVE_ID_MAX 64

struct kvmm_drive {
	char drive_id[KVMM_DRIVE_ID_MAX];
	char *path_on_host;
	bool is_root_device;
	bool is_read_only;
};

struct kvmm_config {
	unsigned vcpu_count;   /* 1..32, default 1 */
	unsigned mem_size_mib; /* default 128 */
	char *kernel_image_path;
	char *initrd_path; /* NULL = none */
	char *boot_args;   /* NULL = kvmm's default command line */
	struct kvmm_drive drives[KVMM_MAX_DRIVES];
	size_t n_drives;
	bool has_vsock;
	uint32_t guest_cid; /* >= 3 */
	char *vsock_uds_path;
};


/* ---- guest physical layout (x86-64) ---------------------------------------------------------------------------- */

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

/* ---- guest memory (vmm/kvmm/guest_mem.c) ----------------------------------------------------------------------- */

#define GUEST_MEM_MAX_REGIONS 8

/* One contiguous guest-physical range backed by host memory the caller owns. */
struct guest_region {
	uint64_t gpa;
	uint64_t size;
	uint8_t *host;
};

/* The guest's RAM as a small set of non-overlapping regions.  A value on the
 * stack or inside the VM object; no allocation, no hidden state. */
struct guest_mem {
	struct guest_region regions[GUEST_MEM_MAX_REGIONS];
	size_t n;
};

/* Empty |m|. */
void guest_mem_init(struct guest_mem *m);

/* Map guest-physical |<gpa, size>| onto host memory |host| (owned by the
 * caller, which keeps it alive and unmoved as long as |m| is used).  Returns 0,
 * -EINVAL for size 0, a NULL |host|, a range that wraps the 64-bit space or
 * overlaps an existing region, or -ENOSPC when GUEST_MEM_MAX_REGIONS are used. */
int guest_mem_add(struct guest_mem *m, uint64_t gpa, void *host, uint64_t size);

/* THE accessor: the host address of guest-physical |<gpa, len>|, or NULL if
 * any byte of it lies outside one single region (ranges spanning two regions
 * are refused, as Solo5's hvt does) or gpa + len overflows.  len 0 is valid at
 * any address inside a region or at its very end.  Guest memory changes under
 * our feet: copy what you validate before you use it. */
void *guest_mem_ptr(const struct guest_mem *m, uint64_t gpa, uint64_t len);

/* Copy guest |<gpa, len>| into |buf|, or |<buf, len>| into the guest.
 * Returns 0 or -EFAULT (nothing copied) when guest_mem_ptr() refuses it. */
int guest_mem_read(const struct guest_mem *m, uint64_t gpa, void *buf, size_t len);
int guest_mem_write(const struct guest_mem *m, uint64_t gpa, const void *buf, size_t len);

/* ---- split virtqueues (vmm/kvmm/virtq.c) ----------------------------------------------------------------------- */

#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2
#define VIRTQ_DESC_F_INDIRECT 4

/* The largest queue kvmm offers (QueueNumMax); also the longest chain it
 * accepts, direct or through an indirect table. */
#define VIRTQ_MAX_SIZE 256

/* One queue, as the driver configured it.  desc/avail/used are guest-physical
 * addresses checked by virtq_configure(). */
struct virtq {
	uint16_t size;		/* power of two, 1..VIRTQ_MAX_SIZE */
	uint64_t desc_gpa, avail_gpa, used_gpa;
	bool event_idx;		/* VIRTIO_RING_F_EVENT_IDX was negotiated */
	bool ready;		/* configured; the functions below need it */
	uint16_t last_avail;	/* the next avail ring index we consume */
	uint16_t used_idx;	/* our copy of used->idx (the guest may scribble on the ring) */
	uint16_t signalled_used; /* used_idx at the last interrupt decision (EVENT_IDX) */
};

/* One buffer of a chain: guest-physical, already checked to lie in guest RAM. */
struct virtq_buf {
	uint64_t gpa;
	uint32_t len;
	bool write; /* device-writable */
};

#define VIRTQ_NO_HEAD 0xffff

/* One descriptor chain, flattened (indirect tables expanded). */
struct virtq_chain {
	uint16_t head; /* the head index to hand back with virtq_push(), or VIRTQ_NO_HEAD */
	size_t n;
	struct virtq_buf bufs[VIRTQ_MAX_SIZE];
	uint64_t read_len, write_len; /* totals of device-readable and device-writable bytes */
};

/* Reset |q| to unconfigured. */
void virtq_init(struct virtq *q);

/* Check and take the driver's layout: |size| a power of two up to
 * VIRTQ_MAX_SIZE, the descriptor table 16-aligned, the avail ring 2-aligned and
 * the used ring 4-aligned, each wholly inside guest RAM (with the event fields
 * when |event_idx|).  Returns 0 (the queue is ready, both indices 0) or
 * -EINVAL (|q| left unconfigured). */
int virtq_configure(struct virtq *q, const struct guest_mem *m, uint16_t size, uint64_t desc_gpa, uint64_t avail_gpa,
		    uint64_t used_gpa, bool event_idx);

/* Take the next available chain and walk it into |out|.  Returns
 *   0        a chain, out->head set; hand it back with virtq_push();
 *   -EAGAIN  nothing available;
 *   -EPROTO  the avail index is more than a queue ahead: the ring is broken,
 *            nothing is consumed (the device should ask for a reset);
 *   -EINVAL, -EFAULT, -ELOOP, -E2BIG  this chain is bad (a head or next index
 *            out of range, a buffer outside guest RAM, a loop or a chain longer
 *            than the queue, a bad or nested indirect table, a readable buffer
 *            after a writable one).  The entry IS consumed; if out->head is not
 *            VIRTQ_NO_HEAD the caller pushes it back with length 0.
 * Nothing outside guest RAM is ever read or written.  With EVENT_IDX the
 * avail_event field is updated so the driver notifies for the next entry. */
int virtq_pop(struct virtq *q, const struct guest_mem *m, struct virtq_chain *out);

/* Return chain |head| to the driver with |len| bytes written into its
 * writable buffers: one used-ring element, then (release order) used->idx.
 * Returns 0 or -EINVAL (head out of range, queue not ready). */
int virtq_push(struct virtq *q, const struct guest_mem *m, uint16_t head, uint32_t len);

/* Whether the driver wants an interrupt for what was pushed since the last
 * call (VIRTQ_AVAIL_F_NO_INTERRUPT, or used_event with EVENT_IDX). */
bool virtq_should_interrupt(struct virtq *q, const struct guest_mem *m);

/* ---- virtio-mmio transport (vmm/kvmm/virtio_mmio.c) ------------------------------------------------------------ */

#define VIRTIO_F_RING_INDIRECT_DESC 28
#define VIRTIO_F_RING_EVENT_IDX 29
#define VIRTIO_F_VERSION_1 32

#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 64
#define VIRTIO_STATUS_FAILED 128

/* Register offsets (virtio 1.x, 4.2.2, "MMIO Device Register Layout"). */
enum {
	VIRTIO_MMIO_MAGIC = 0x000,
	VIRTIO_MMIO_VERSION = 0x004,
	VIRTIO_MMIO_DEVICE_ID = 0x008,
	VIRTIO_MMIO_VENDOR_ID = 0x00c,
	VIRTIO_MMIO_DEVICE_FEATURES = 0x010,
	VIRTIO_MMIO_DEVICE_FEATURES_SEL = 0x014,
	VIRTIO_MMIO_DRIVER_FEATURES = 0x020,
	VIRTIO_MMIO_DRIVER_FEATURES_SEL = 0x024,
	VIRTIO_MMIO_QUEUE_SEL = 0x030,
	VIRTIO_MMIO_QUEUE_NUM_MAX = 0x034,
	VIRTIO_MMIO_QUEUE_NUM = 0x038,
	VIRTIO_MMIO_QUEUE_READY = 0x044,
	VIRTIO_MMIO_QUEUE_NOTIFY = 0x050,
	VIRTIO_MMIO_INTERRUPT_STATUS = 0x060,
	VIRTIO_MMIO_INTERRUPT_ACK = 0x064,
	VIRTIO_MMIO_STATUS = 0x070,
	VIRTIO_MMIO_QUEUE_DESC_LOW = 0x080,
	VIRTIO_MMIO_QUEUE_DESC_HIGH = 0x084,
	VIRTIO_MMIO_QUEUE_DRIVER_LOW = 0x090,
	VIRTIO_MMIO_QUEUE_DRIVER_HIGH = 0x094,
	VIRTIO_MMIO_QUEUE_DEVICE_LOW = 0x0a0,
	VIRTIO_MMIO_QUEUE_DEVICE_HIGH = 0x0a4,
	VIRTIO_MMIO_CONFIG_GENERATION = 0x0fc,
	VIRTIO_MMIO_CONFIG = 0x100,
};
#define VIRTIO_MMIO_MAGIC_VALUE 0x74726976u /* "virt" */
#define VIRTIO_MMIO_VENDOR 0x4b494e44u	    /* "KIND" */
#define VIRTIO_MMIO_INT_VRING 1
#define VIRTIO_MMIO_INT_CONFIG 2
#define VIRTIO_MMIO_MAX_QUEUES 4

struct virtio_mmio_dev;

/* What a device model plugs into the transport.  Static const tables. */
struct virtio_dev_ops {
	uint32_t device_id;  /* 2 = block */
	uint16_t num_queues; /* 1..VIRTIO_MMIO_MAX_QUEUES */
	/* Required: queue |q| was notified (QueueNotify), or the driver set
	 * DRIVER_OK with queues ready.  Process it with virtio_mmio_queue(). */
	void (*notify)(struct virtio_mmio_dev *d, uint16_t q);
	/* Optional: the driver wrote 0 to Status; drop any in-flight state. */
	void (*reset)(struct virtio_mmio_dev *d);
};

/* Raise the device's interrupt line (later: an irqfd write).  Required. */
typedef void (*virtio_irq_fn)(void *ctx);

/* A queue's layout as the driver writes it, register by register, before
 * QueueReady hands it to virtq_configure(). */
struct virtio_mmio_qcfg {
	uint16_t num;
	uint64_t desc, driver, device;
};

/* One virtio-mmio device: the transport state.  The device model keeps its
 * own state next to it and finds it through |opaque|. */
struct virtio_mmio_dev {
	const struct virtio_dev_ops *ops;
	void *opaque;
	const struct guest_mem *mem;
	virtio_irq_fn irq;
	void *irq_ctx;
	uint64_t device_features; /* offered; VIRTIO_F_VERSION_1 always included */
	const uint8_t *config;	  /* the device config space, owned by the model */
	uint32_t config_len;
	/* Registers. */
	uint32_t status, device_features_sel, driver_features_sel, queue_sel, interrupt_status, config_generation;
	uint64_t driver_features;
	struct virtio_mmio_qcfg qcfg[VIRTIO_MMIO_MAX_QUEUES];
	struct virtq vq[VIRTIO_MMIO_MAX_QUEUES];
};

/* Set |d| up in the reset state for the model |ops| with private |opaque|,
 * offering |features| (VERSION_1 is added), over |<config, config_len>|
 * (read-only to the driver), on guest RAM |mem|, raising interrupts with
 * |irq|(|irq_ctx|).  Everything passed in must outlive |d|.  Returns 0 or
 * -EINVAL for a bad ops table. */
int virtio_mmio_init(struct virtio_mmio_dev *d, const struct virtio_dev_ops *ops, void *opaque, uint64_t features,
		     const uint8_t *config, uint32_t config_len, const struct guest_mem *mem, virtio_irq_fn irq,
		     void *irq_ctx);

/* The vCPU loop's MMIO entry points: |off| is relative to the device base,
 * |len| the access width.  Registers below 0x100 take aligned 4-byte
 * accesses; the config space takes 1, 2 or 4 bytes.  A bad access reads as
 * zeros, writes nothing, and returns -EINVAL (the guest is not stopped for
 * it); otherwise 0. */
int virtio_mmio_read(struct virtio_mmio_dev *d, uint64_t off, void *data, uint32_t len);
int virtio_mmio_write(struct virtio_mmio_dev *d, uint64_t off, const void *data, uint32_t len);

/* The ready virtqueue |q| of |d|, or NULL (out of range, not ready, or the
 * device is not DRIVER_OK). */
struct virtq *virtio_mmio_queue(struct virtio_mmio_dev *d, uint16_t q);

/* The driver broke the protocol (|why| is logged at debug level): set
 * DEVICE_NEEDS_RESET and raise a config interrupt if the device is live, and
 * serve no queue until the driver resets the device. */
void virtio_mmio_needs_reset(struct virtio_mmio_dev *d, const char *why);

/* Set |why| (VIRTIO_MMIO_INT_VRING or _CONFIG) in InterruptStatus and raise
 * the line. */
void virtio_mmio_interrupt(struct virtio_mmio_dev *d, uint32_t why);

/* ---- virtio-blk, read-only (vmm/kvmm/virtio_blk.c) ------------------------------------------------------------- */

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2
#define VIRTIO_BLK_ID_BYTES 20
#define VIRTIO_BLK_F_SEG_MAX 2
#define VIRTIO_BLK_F_RO 5
#define VIRTIO_BLK_F_BLK_SIZE 6
#define VIRTIO_BLK_F_FLUSH 9

/* Where the disk's bytes come from: blockd's in-process device or a file. */
struct virtio_blk_backend {
	/* Required: fill all of |<buf, len>| from byte |off|.  0 or -errno. */
	int (*read_at)(void *ctx, uint64_t off, void *buf, size_t len);
	/* Optional: make earlier reads durable (nothing to do read-only). */
	int (*flush)(void *ctx);
	void *ctx;
	uint64_t size; /* bytes; a multiple of 512 is exposed, a tail is cut */
};

struct virtio_blk {
	struct virtio_mmio_dev mmio;
	struct virtio_blk_backend be;
	char id[VIRTIO_BLK_ID_BYTES];
	uint8_t config[24]; /* capacity, size_max, seg_max, geometry, blk_size (little-endian) */
	uint64_t requests, errors; /* counters for logs and tests */
};

/* Set |b| up over |be| (copied) with serial |id| (up to 20 bytes, may be
 * NULL), on guest RAM |mem|, raising interrupts through |irq|(|irq_ctx|).
 * Offers VERSION_1, RO, FLUSH, SEG_MAX, BLK_SIZE, INDIRECT_DESC and EVENT_IDX.
 * Returns 0 or -EINVAL. */
int virtio_blk_init(struct virtio_blk *b, const struct virtio_blk_backend *be, const char *id,
		    const struct guest_mem *mem, virtio_irq_fn irq, void *irq_ctx);

/* ---- x86-64 Linux boot (vmm/kvmm/boot.c) ----------------------------------------------------------------------- */

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

/* ---- ACPI tables (vmm/kvmm/acpi.c) ----------------------------------------------------------------------------- */

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

/* ==== section: config (config.c) ==== */

/* Limits the config enforces (Firecracker's where it has one). */
#define KVMM_MAX_VCPUS 32
#define KVMM_MIN_MEM_MIB 2u	     /* what e820_build() needs; a real kernel needs far more */
#define KVMM_MAX_MEM_MIB (1u << 20) /* 1 TiB: keeps mem_size_mib << 20 far from overflow */
#define KVMM_UDS_PATH_MAX 107	     /* sun_path less its NUL */
#define KVMM_CONFIG_FILE_MAX (1u << 20)

/* The resources Firecracker's API and config file set, one JSON object each. */
enum kvmm_resource {
	KVMM_RES_MACHINE, /* "machine-config": vcpu_count, mem_size_mib (required); smt, track_dirty_pages (false
			   * only), cpu_template, huge_pages ("None" only) */
	KVMM_RES_BOOT,	  /* "boot-source": kernel_image_path (required), initrd_path, boot_args */
	KVMM_RES_DRIVE,	  /* "drives" entry: drive_id, is_root_device (required), path_on_host (required),
			   * is_read_only (true or absent: kvmm's virtio-blk is read-only), cache_type "Unsafe",
			   * io_engine "Sync" */
	KVMM_RES_VSOCK,	  /* "vsock": guest_cid >= 3, uds_path (required), vsock_id (accepted, ignored) */
};

/* Reset |c| to Firecracker's defaults: 1 vCPU, 128 MiB, nothing else set.
 * Call once before any other kvmm_config_* function on |c|. */
void kvmm_config_init(struct kvmm_config *c);

/* Free the strings |c| owns and leave it as kvmm_config_init() does.
 * Accepts NULL. */
void kvmm_config_free(struct kvmm_config *c);

/* Apply the JSON object |<json, len>| (untrusted: an API body or a piece of a
 * config file) to resource |r| of |c|, with Firecracker's rules: unknown
 * fields, wrong types, duplicate keys and out-of-range values are refused;
 * a PUT of machine-config, boot-source or vsock replaces that resource whole
 * (absent optional fields take their defaults).  For KVMM_RES_DRIVE, |id| is
 * the drive_id from the request path, which the body's drive_id must equal
 * (NULL for config files: the body's id is taken); a drive with an existing
 * id is replaced in place; a new one is appended (-ENOSPC past
 * KVMM_MAX_DRIVES); at most one drive is the root device, and that drive is
 * always moved to drives[0] so the guest sees it as /dev/vda.  |id| is
 * ignored for the other resources.
 * Returns 0 with |c| updated, or -EINVAL/-ENOSPC/-ENOMEM with |c| unchanged
 * and a message naming the field in |<err, errlen>| (Firecracker's
 * fault_message); nothing is logged. */
int kvmm_config_put(struct kvmm_config *c, enum kvmm_resource r, const char *id, const char *json, size_t len,
		    char *err, size_t errlen);

/* Load Firecracker's --config-file format from |path| (at most
 * KVMM_CONFIG_FILE_MAX bytes) into |c| (initialised by the caller; what the
 * file sets replaces what |c| had): an object with "boot-source",
 * "machine-config", "drives" (an array), "vsock" (an object or null), and
 * Firecracker's other sections accepted only when empty ("network-interfaces"
 * [], "logger" null, ...).  It does not call kvmm_config_validate().
 * Returns 0; -ENOENT/-EACCES/-EFBIG/-errno reading the file; -EINVAL/-ENOSPC
 * for content, with |c| partly updated (free it) and |<err, errlen>| naming
 * the section and field ("drives[1].path_on_host: ...").  Nothing is logged. */
int kvmm_config_load_file(struct kvmm_config *c, const char *path, char *err, size_t errlen);

/* Check that |c| can boot: a kernel_image_path, vCPU and memory counts in
 * range, at most one root drive, distinct drive ids, a vsock with guest_cid
 * >= 3 and a uds_path that fits a unix socket address; and that the kernel,
 * the initrd and every drive's path_on_host are readable regular files (or
 * block devices, for drives) right now, relative to the current root.
 * Returns 0, or -EINVAL/-ENOENT/-EACCES with the field named in
 * |<err, errlen>|.  Nothing is logged. */
int kvmm_config_validate(const struct kvmm_config *c, char *err, size_t errlen);

/* The configuration as Firecracker's GET /vm/config returns it, a malloc'd
 * NUL-terminated JSON text the caller frees; kvmm_config_load_file() reads
 * it back.  Returns NULL with errno = ENOMEM on failure. */
char *kvmm_config_to_json(const struct kvmm_config *c);

/* ==== end section: config ==== */

/* ==== section: api (api.c) ==== */

/* ---- HTTP/1.1 requests (vmm/kvmm/http.c): a checked parser for the API socket */

#define KVMM_HTTP_MAX_HEAD 8192	     /* request line and headers, with the blank line */
#define KVMM_HTTP_MAX_BODY (64 * 1024) /* Firecracker's bodies are small JSON objects */
#define KVMM_HTTP_MAX_HEADERS 64
#define KVMM_HTTP_MAX_PATH 256

/* One request head.  Strings are NUL-terminated copies. */
struct kvmm_http_req {
	char method[8];		     /* "GET", "PUT", "PATCH", ...: upper-case letters */
	char path[KVMM_HTTP_MAX_PATH]; /* origin-form, starts with '/', as sent (no decoding) */
	int minor;		     /* 1 for HTTP/1.1, 0 for HTTP/1.0 */
	size_t head_len;	     /* bytes of the head, blank line included: the body starts there */
	size_t content_length;	     /* 0 if there is no Content-Length */
	bool keep_alive;	     /* the connection stays open after the response */
	bool expect_continue;	     /* "Expect: 100-continue": answer 100 before reading the body */
};

/* Parse the request head at the start of |<buf, len>| (untrusted bytes).
 * Strict: CRLF line ends, a token method, an origin-form target of printable
 * ASCII, HTTP/1.0 or 1.1, token header names, no obsolete line folding, no
 * control bytes in values, at most KVMM_HTTP_MAX_HEADERS headers, one
 * Content-Length of digits only up to KVMM_HTTP_MAX_BODY, no
 * Transfer-Encoding (request smuggling and chunked bodies are refused), and
 * no Expect other than 100-continue.
 * Returns 0 with |*out| filled; -EAGAIN if the head is not complete yet and
 * may still fit in KVMM_HTTP_MAX_HEAD (read more and call again with the
 * whole buffer); -E2BIG for a body over KVMM_HTTP_MAX_BODY (HTTP 413);
 * -EMSGSIZE for a head over KVMM_HTTP_MAX_HEAD or too many headers (431);
 * -EINVAL for anything malformed or refused (400).  On error a message for
 * the client is in |<err, errlen>|; the connection cannot be resynchronised
 * and must be closed after the error response. */
int kvmm_http_parse_head(const char *buf, size_t len, struct kvmm_http_req *out, char *err, size_t errlen);

/* ---- the Firecracker-compatible API server (vmm/kvmm/api.c) ------------------ */

/* A client that has begun a request must finish it within this time, and
 * each response must be taken within it, or the connection is dropped. */
#define KVMM_API_IO_TIMEOUT_MS 5000
/* An idle keep-alive connection is closed after this, or at once when
 * another client is waiting (the server serves one connection at a time). */
#define KVMM_API_IDLE_TIMEOUT_MS 30000

struct kvmm_api;

/* What the API asks of the VM.  Both callbacks run on the API thread, one at a
 * time (the only thread touching |cfg| meanwhile); each writes a reason into
 * |<err, errlen>| when it fails, which the client receives as Firecracker's
 * {"fault_message": ...} with status 400. */
struct kvmm_api_hooks {
	void *ctx;
	/* Required: PUT /actions {"action_type": "InstanceStart"}.  |cfg| has
	 * passed kvmm_config_validate(); boot it (kvmm_vm_create, then
	 * kvmm_vm_start) and return 0, or -errno.  After 0 the API refuses
	 * pre-boot changes and reports "Running"; after an error it stays in
	 * "Not started" and the client may fix the config and try again. */
	int (*instance_start)(void *ctx, const struct kvmm_config *cfg, char *err, size_t errlen);
	/* Required: {"action_type": "SendCtrlAltDel"}, only once running.
	 * 0 or -errno. */
	int (*send_ctrl_alt_del)(void *ctx, char *err, size_t errlen);
	/* Optional (false = off): once the VM runs, the API thread installs
	 * kvmm_seccomp_apply(KVMM_THREAD_API) on itself, so the callbacks must
	 * from then on need nothing outside that allowlist (send_ctrl_alt_del:
	 * write(2) on an eventfd or KVM_IRQ_LINE on the VM fd). */
	bool seccomp;
};

/* Serve Firecracker's API on a unix socket at |sock_path| (created with mode
 * 0600; an existing socket file there is replaced, any other file is an error)
 * on a new thread, editing |cfg| (initialised by the caller, possibly loaded
 * from a config file already) as PUT requests arrive.  From this call until
 * kvmm_api_stop() returns, |cfg| belongs to the API: the caller reads it only
 * inside a hook.  |hooks| is copied.  Requests served:
 *   GET /                   {"id", "state" ("Not started"/"Running"), "vmm_version", "app_name"}
 *   GET /machine-config     {"vcpu_count", "mem_size_mib", "smt", "track_dirty_pages", "huge_pages"}
 *   GET /vm/config          the whole config, as kvmm_config_to_json()
 *   PUT /machine-config, /boot-source, /drives/{id}, /vsock   pre-boot only, 204
 *   PUT /actions            InstanceStart, SendCtrlAltDel (FlushMetrics: 400, no metrics)
 * Anything else is 400 with {"fault_message"}.  Returns 0 with |*out| set, or
 * -errno (logged: socket path too long, in use, not creatable) with nothing
 * left running. */
int kvmm_api_start(struct kvmm_api **out, const char *sock_path, struct kvmm_config *cfg,
		   const struct kvmm_api_hooks *hooks);

/* Tell the API the VM was started without it (a --config-file boot), so it
 * answers as Firecracker does after InstanceStart.  Any thread. */
void kvmm_api_set_running(struct kvmm_api *a);

/* Stop serving (the connection in progress is dropped), join the thread,
 * remove the socket file and free |a|.  Accepts NULL.  Must not be called from
 * a hook. */
void kvmm_api_stop(struct kvmm_api *a);

/* ---- isolation (vmm/kvmm/jail.c) --------------------------------------------- */

/* kvmm's threads, each with its own seccomp allowlist (jail.c lists each call
 * and why it is there). */
enum kvmm_thread_kind {
	KVMM_THREAD_VMM,     /* main, after setup: waits for the VM, tears it down, exits */
	KVMM_THREAD_VCPU,    /* KVM_RUN and its exits, which reach device code (DRIVER_OK notify) */
	KVMM_THREAD_DEVICES, /* the kvmm_loop: eventfds, disk reads, vsock's unix sockets */
	KVMM_THREAD_API,     /* the API socket, once the VM runs */
};

/* Install |kind|'s allowlist on the calling thread only (threads it creates
 * later inherit it), with no_new_privs.  Call it at the end of the thread's
 * setup: files, sockets, mappings and threads it still needs must exist by
 * then.  A call outside the list kills the whole process with SIGSYS
 * (SCMP_ACT_KILL_PROCESS): the parent sees WTERMSIG == SIGSYS and the kernel
 * log names the call (audit type=1326, "syscall=N").  Returns 0 or -errno
 * (logged). */
int kvmm_seccomp_apply(enum kvmm_thread_kind kind);

/* A jailer-like confinement of the kvmm process itself, as Firecracker's
 * jailer sets up before it executes Firecracker. */
struct kvmm_jail {
	/* cgroup "kvmm-<id>" (v2, else v1 as vmm/cgroup.c finds them) with these
	 * limits; 0 and 0 = no cgroup.  The cgroup outlives kvmm (it cannot be
	 * removed from inside the chroot): whoever started kvmm removes it;
	 * its path is logged at info level. */
	uint64_t memory_limit; /* bytes */
	uint32_t pids_limit;
	const char *id; /* names the cgroup; [A-Za-z0-9_-], 1..64 chars; required with limits */
	/* chroot into this directory (NULL = none).  The caller has placed in it,
	 * by hard link, bind mount or mknod as it prefers, everything kvmm opens
	 * later (dev/kvm, the kernel, drives, the socket directories); config
	 * paths are then relative to it. */
	const char *chroot_dir;
	/* Drop to this user (NULL = keep the current one): OCI style "uid",
	 * "uid:gid", "name" or "name:group", resolved against the HOST's
	 * /etc/passwd and /etc/group before the chroot.  Supplementary groups
	 * are cleared. */
	const char *user;
};

/* Confine the calling process as |j| says, in this order: cgroup (created and
 * joined), chroot and chdir("/"), drop groups, gid and uid (checked: regaining
 * root must fail), then no_new_privs.  Call it from the main thread before
 * other threads exist (ids and the root are per process, but glibc's setuid
 * broadcast and chroot semantics are simplest single-threaded).
 * Returns 0, or -errno (logged with what to fix: not root, missing jail
 * directory, unknown user) with the process possibly partly confined: exit. */
int kvmm_jail_enter(const struct kvmm_jail *j);

/* ==== end section: api ==== */

/* ==== section: vm (vm.c, vcpu.c, serial.c, ...) ==== */

/* ---- the VM (vmm/kvmm/vm.c, vcpu.c) ------------------------------------------ */

/* Used when kvmm_config.boot_args is NULL.  The i8042 options are
 * Firecracker's less nopnp: the DSDT declares the keyboard controller, so
 * the driver finds it and its IRQ there (Ctrl+Alt+Del needs it); there is no
 * mouse and no multiplexer.  reboot=k resets through the same controller. */
#define KVMM_DEFAULT_CMDLINE "console=ttyS0 reboot=k panic=1 pci=off quiet i8042.noaux i8042.nomux i8042.dumbkbd"

/* Port I/O the VM emulates in user space (the PIC and PIT are in KVM). */
#define KVMM_SERIAL_PORT 0x3f8 /* COM1, 8 ports */
#define KVMM_SERIAL_IRQ 4
#define KVMM_I8042_DATA_PORT 0x60
#define KVMM_I8042_CMD_PORT 0x64
#define KVMM_I8042_IRQ 1
#define KVMM_SLEEP_PORT 0x600 /* the FADT's sleep control/status register */
/* KVM's own pages for VMX real-mode emulation: three for the TSS and one
 * for the identity map, in the MMIO hole below the IOAPIC. */
#define KVMM_IDENTITY_MAP_GPA 0xfffbc000ull
#define KVMM_TSS_GPA 0xfffbd000ull

struct kvmm_vm;

/* Build a VM from |cfg| (validated by the caller; only read during this
 * call): open /dev/kvm, create the VM with its in-kernel irqchip and PIT,
 * map |cfg|->mem_size_mib of guest RAM (MAP_NORESERVE, split around the MMIO
 * hole), load the kernel and initrd, write the ACPI tables, set up the
 * console on stdout (input from stdin when it can be polled), the i8042, one
 * virtio-blk per drive (root first) and the vsock device, each with its
 * ioeventfds and irqfd, and create the vCPUs in their boot state.  Nothing
 * runs yet.  Returns 0 with |*out| set, or -errno with the reason logged
 * (no /dev/kvm or no permission, a capability missing, a file that cannot be
 * read, a kernel that is not a bzImage, RAM too small) and nothing left
 * behind. */
int kvmm_vm_create(const struct kvmm_config *cfg, struct kvmm_vm **out);

/* Whether the VM's threads confine themselves with kvmm_seccomp_apply()
 * (vCPU threads and the device loop, before they run anything); on by
 * default.  Off is for debugging a filter.  Call before kvmm_vm_start(). */
void kvmm_vm_set_seccomp(struct kvmm_vm *vm, bool on);

/* Start the device-loop thread and one thread per vCPU, each confined by
 * its seccomp allowlist (see kvmm_vm_set_seccomp()).  Call once, after
 * kvmm_vm_create().  Returns 0, or -errno (logged) with any thread already
 * started stopped again. */
int kvmm_vm_start(struct kvmm_vm *vm);

/* Press Ctrl+Alt+Del on the guest's keyboard (Firecracker's SendCtrlAltDel);
 * any thread.  Returns 0, -EAGAIN if the VM is not running or its keyboard is
 * disabled, or -EBUSY if the guest has not read earlier keys yet. */
int kvmm_vm_send_ctrl_alt_del(struct kvmm_vm *vm);

/* Block until the VM ends, then stop and join its threads.  Returns 0 when
 * the guest powered off or reset itself (ACPI sleep, i8042 reset, triple
 * fault), or -errno after a fatal error (logged where it happened: KVM_RUN
 * failed, an internal KVM error, an unexpected exit).  Call once, after
 * kvmm_vm_start() returned 0. */
int kvmm_vm_wait(struct kvmm_vm *vm);

/* Stop whatever still runs, close every descriptor, unmap guest RAM and free
 * |vm|.  Accepts NULL. */
void kvmm_vm_destroy(struct kvmm_vm *vm);

/* ---- CPUID for one vCPU (vmm/kvmm/cpuid.c) -------------------------------------- */

struct kvm_cpuid_entry2; /* <linux/kvm.h> */

/* Adjust the KVM_GET_SUPPORTED_CPUID list |<e, n>| for vCPU |cpu| of |n_cpus|
 * (1..KVMM_MAX_VCPUS) in place: the initial APIC id and logical processor
 * count in leaf 1, the hypervisor bit, one core per vCPU and one thread per
 * core in the topology leaves (4, 0xB, 0x1F, 0x80000008), x2APIC ids in 0xB
 * and 0x1F.  Leaves not listed are left as KVM reported them. */
void kvmm_cpuid_fixup(struct kvm_cpuid_entry2 *e, size_t n, uint32_t cpu, uint32_t n_cpus);

/* ---- legacy devices (vmm/kvmm/serial.c, i8042.c) ------------------------------ */

/* An interrupt line driven by a device model: |level| true = asserted. */
typedef void (*kvmm_irq_line_fn)(void *ctx, bool level);

#define KVMM_SERIAL_FIFO 64

/* A 16550A UART as Linux's 8250 driver sees it.  No locking: the caller
 * serialises every call on one instance. */
struct kvmm_serial {
	int out_fd; /* transmitted bytes go here; -1 = discarded */
	bool out_failed;
	kvmm_irq_line_fn irq;
	void *irq_ctx;
	bool irq_level;
	uint8_t ier, lcr, mcr, scr, dll, dlm, lsr_errors;
	bool fifo_enabled;
	bool thr_pending; /* a THR-empty interrupt is owed */
	uint8_t rx[KVMM_SERIAL_FIFO];
	size_t rx_head, rx_len;
};

/* Reset |s| to power-on state, writing to |out_fd| (not owned) and driving
 * |irq|(|irq_ctx|, level) (may be NULL) on every change of its line. */
void kvmm_serial_init(struct kvmm_serial *s, int out_fd, kvmm_irq_line_fn irq, void *irq_ctx);

/* An IN or OUT of one byte at register |off| (0..7) from the base port. */
uint8_t kvmm_serial_read(struct kvmm_serial *s, uint16_t off);
void kvmm_serial_write(struct kvmm_serial *s, uint16_t off, uint8_t v);

/* Offer |<buf, len>| to the receiver.  Returns how many bytes it took: at
 * most kvmm_serial_room() (the caller keeps the rest or drops it). */
size_t kvmm_serial_input(struct kvmm_serial *s, const uint8_t *buf, size_t len);

/* Free space in the receive FIFO. */
size_t kvmm_serial_room(const struct kvmm_serial *s);

#define KVMM_I8042_QUEUE 16

/* The i8042 keyboard controller and its keyboard.  No locking: the caller
 * serialises every call on one instance. */
struct kvmm_i8042 {
	kvmm_irq_line_fn irq; /* IRQ 1, pulsed (asserted then released) per byte */
	void (*reset)(void *ctx);
	void *ctx;
	uint8_t ctr;	     /* the controller's command byte */
	uint8_t output_port; /* bit 0: reset line (low = reset) */
	uint8_t pending_cmd; /* a controller command waiting for its data byte */
	uint8_t kbd_pending; /* a keyboard command waiting for its argument */
	uint8_t scancode_set;
	uint8_t last_out;
	bool last_was_cmd;
	uint8_t out[KVMM_I8042_QUEUE];
	size_t out_head, out_len;
};

/* Reset |k| to what firmware leaves: keyboard enabled with its interrupt,
 * translation on, no AUX port.  |irq|(|ctx|, level) drives IRQ 1 and
 * |reset|(|ctx|) runs when the guest pulses the reset line; either may be
 * NULL. */
void kvmm_i8042_init(struct kvmm_i8042 *k, kvmm_irq_line_fn irq, void (*reset)(void *ctx), void *ctx);

/* An IN or OUT of one byte at |port| (KVMM_I8042_DATA_PORT or _CMD_PORT). */
uint8_t kvmm_i8042_read(struct kvmm_i8042 *k, uint16_t port);
void kvmm_i8042_write(struct kvmm_i8042 *k, uint16_t port, uint8_t v);

/* Queue the key presses and releases of Ctrl+Alt+Delete as the keyboard
 * would send them.  Returns 0, -EAGAIN if the guest disabled the keyboard,
 * or -EBUSY if the queue lacks room (the guest is not reading it). */
int kvmm_i8042_ctrl_alt_del(struct kvmm_i8042 *k);

/* ==== end section: vm ==== */

/* ==== section: vsock (virtio_vsock.c) ==== */

/* virtio-vsock (virtio 1.2, 5.10), stream sockets only, with Firecracker's
 * host-side scheme over unix sockets:
 *   guest connects to host port P   kvmm connects to the unix socket
 *                                   "{uds_path}_{P}"; nobody there = RST;
 *   host connects to guest port P   a client connects to "{uds_path}" and
 *                                   writes "CONNECT P\n"; once the guest
 *                                   accepts it reads "OK <host port>\n", and
 *                                   the socket is closed if the guest refuses.
 * Every host socket is non-blocking and served on the device loop under the
 * device mutex.  Each connection buffers at most VSOCK_TX_BUF bytes from the
 * guest (the buf_alloc we advertise) and VSOCK_RX_STAGE bytes for the guest,
 * never more than the guest's credit allows.  A guest that breaks the
 * protocol gets its packet dropped or its connection reset, never more. */
#define VIRTIO_ID_VSOCK 19
#define VSOCK_HOST_CID 2
#define VSOCK_HDR_LEN 44
#define VSOCK_TYPE_STREAM 1
#define VSOCK_OP_REQUEST 1
#define VSOCK_OP_RESPONSE 2
#define VSOCK_OP_RST 3
#define VSOCK_OP_SHUTDOWN 4
#define VSOCK_OP_RW 5
#define VSOCK_OP_CREDIT_UPDATE 6
#define VSOCK_OP_CREDIT_REQUEST 7
#define VSOCK_SHUTDOWN_RCV 1
#define VSOCK_SHUTDOWN_SEND 2
#define VSOCK_MAX_CONNS 32		/* host sockets at once; more are refused (RST, or closed) */
#define VSOCK_MAX_PKT (64u * 1024)	/* the largest payload either side puts in one packet */
#define VSOCK_TX_BUF (256u * 1024)	/* guest->host buffering per connection = our buf_alloc */
#define VSOCK_RX_STAGE (64u * 1024)	/* host->guest bytes read ahead per connection */
#define VSOCK_RST_QUEUE 32		/* RSTs owed for packets without a connection */
#define VSOCK_FIRST_HOST_PORT (1u << 30) /* ports of host-initiated connections start here */

struct vsock_conn; /* private to virtio_vsock.c */

struct virtio_vsock {
	struct virtio_mmio_dev mmio;
	uint8_t config[8]; /* guest_cid, le64 */
	uint64_t guest_cid;
	char uds_path[108];
	int listen_fd;	/* on uds_path, for host-initiated connections */
	int kick_fd;	/* an eventfd: queue notifications and resets, handled on the loop thread */
	struct kvmm_loop *loop;
	pthread_mutex_t *lock;
	struct vsock_conn *conns; /* VSOCK_MAX_CONNS slots */
	unsigned rr;		  /* round-robin start for the next packet to the guest */
	uint32_t next_port;
	bool reset_pending;
	struct {
		uint32_t local_port, peer_port;
	} rst[VSOCK_RST_QUEUE];
	unsigned rst_head, rst_n;
	/* Counters for logs and tests. */
	uint64_t tx_packets, rx_packets, bad_packets, resets_sent;
};

/* Set |v| up as a vsock device for guest CID |guest_cid| (3..0xfffffffe)
 * on guest RAM |mem|, raising interrupts with |irq|(|irq_ctx|): bind and
 * listen on |uds_path| (which must not exist; it is removed again by
 * virtio_vsock_destroy()) and register the listener and the device's own
 * eventfd with |loop| under |lock| (NULL = no locking, single-threaded use).
 * The device's notify() and reset() only set work aside and wake the loop,
 * so they are safe from any thread holding |lock|.  |mem|, |loop| and |lock|
 * must outlive |v|.  Returns 0, or -EINVAL (bad CID or a path too long for
 * "{uds_path}_4294967295"), -EADDRINUSE, or another -errno, each logged with
 * the reason; on failure nothing is left open or registered. */
int virtio_vsock_init(struct virtio_vsock *v, uint64_t guest_cid, const char *uds_path, const struct guest_mem *mem,
		      virtio_irq_fn irq, void *irq_ctx, struct kvmm_loop *loop, pthread_mutex_t *lock);

/* Do the work set aside by notify() and reset() now: drop every connection
 * after a reset, take the guest's tx packets, fill its rx buffers.  The loop
 * calls it on its thread; tests and fuzzers call it directly.  The caller
 * holds |v|'s lock and is the loop's thread (or no loop runs). */
void virtio_vsock_process(struct virtio_vsock *v);

/* Close every connection and the listener, unregister them from the loop
 * (call it after the loop has stopped, or on its thread), remove uds_path,
 * and free what |v| holds.  Safe after a failed init, and twice. */
void virtio_vsock_destroy(struct virtio_vsock *v);

/* ==== end section: vsock ==== */

#endif
