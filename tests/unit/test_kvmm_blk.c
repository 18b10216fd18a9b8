/* The read-only virtio-blk device end to end: a driver's side written by hand
 * (MMIO register writes, rings in a guest memory buffer) against the device
 * model, backed by a real file read with pread().  Covers feature
 * negotiation, queue setup, reads split every which way, GET_ID, FLUSH, OUT on
 * a read-only disk, out-of-range and malformed requests, backend errors,
 * interrupts, EVENT_IDX and reset. */
/* ctest-labels: no-tsan (single-threaded: nothing for ThreadSanitizer to check) */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/check.h"
#include "vmm/kvmm/guest_mem.h"
#include "common/bytes.h"
#include "vmm/kvmm/virtio_blk.h"
#include "vmm/kvmm/virtio_mmio.h"
#include "vmm/kvmm/virtq.h"

#define BASE 0x100000ull
#define MEMSZ 0x40000ull
#define DESC (BASE + 0x0000)
#define AVAIL (BASE + 0x1000)
#define USED (BASE + 0x2000)
#define HDR (BASE + 0x3000)
#define STATUS (BASE + 0x3800)
#define DATA (BASE + 0x4000)
#define QSZ 16
#define DISK_BYTES (64 * 1024 + 100) /* a tail that is not a whole sector */

static uint8_t *ram;
static struct guest_mem mem;
static uint8_t disk[DISK_BYTES];

struct file_backend {
	int fd;
	uint64_t fail_from; /* reads reaching this offset fail with -EIO (a fault layer) */
	int flushes;
};

static int file_read_at(void *ctx, uint64_t off, void *buf, size_t len)
{
	struct file_backend *f = ctx;
	if (off + len > f->fail_from)
		return -EIO;
	ssize_t n = pread(f->fd, buf, len, (off_t)off);
	if (n < 0)
		return -errno;
	return (size_t)n == len ? 0 : -EIO;
}

static int file_flush(void *ctx)
{
	((struct file_backend *)ctx)->flushes++;
	return 0;
}

static int irqs;
static void count_irq(void *ctx)
{
	(void)ctx;
	irqs++;
}

static uint8_t *g(uint64_t gpa)
{
	return ram + (gpa - BASE);
}

static uint32_t rd(struct virtio_blk *b, uint64_t off)
{
	uint8_t v[4];
	CHECK(virtio_mmio_read(&b->mmio, off, v, 4) == 0);
	return get_le32(v);
}

static void wr(struct virtio_blk *b, uint64_t off, uint32_t val)
{
	uint8_t v[4];
	put_le32(v, val);
	CHECK(virtio_mmio_write(&b->mmio, off, v, 4) == 0);
}

static void set_desc(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
	uint8_t *d = g(DESC + 16u * i);
	put_le64(d, addr);
	put_le32(d + 8, len);
	put_le16(d + 12, flags);
	put_le16(d + 14, next);
}

static uint16_t avail_idx, used_seen;

/* Offer chain |head| and kick the device; returns the used length of the
 * element it produced (or -1 if it produced none). */
static int64_t kick(struct virtio_blk *b, uint16_t head)
{
	put_le16(g(AVAIL) + 4 + 2 * (avail_idx % QSZ), head);
	avail_idx++;
	put_le16(g(AVAIL) + 2, avail_idx);
	wr(b, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
	if (get_le16(g(USED) + 2) != (uint16_t)(used_seen + 1))
		return -1;
	const uint8_t *e = g(USED) + 4 + 8 * (used_seen % QSZ);
	used_seen++;
	CHECK(get_le32(e) == head);
	return get_le32(e + 4);
}

static void header(uint32_t type, uint64_t sector)
{
	put_le32(g(HDR), type);
	put_le32(g(HDR) + 4, 0);
	put_le64(g(HDR) + 8, sector);
	*g(STATUS) = 0xee;
}

/* The driver's side of 3.1.1 "Driver Requirements: Device Initialization". */
static void bring_up(struct virtio_blk *b, uint64_t features)
{
	memset(ram, 0, MEMSZ);
	avail_idx = used_seen = 0;
	wr(b, VIRTIO_MMIO_STATUS, 0);
	wr(b, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
	wr(b, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	wr(b, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	wr(b, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)features);
	wr(b, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	wr(b, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(features >> 32));
	uint32_t s = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK;
	wr(b, VIRTIO_MMIO_STATUS, s);
	CHECK(rd(b, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK);
	wr(b, VIRTIO_MMIO_QUEUE_SEL, 0);
	CHECK(rd(b, VIRTIO_MMIO_QUEUE_READY) == 0);
	CHECK(rd(b, VIRTIO_MMIO_QUEUE_NUM_MAX) == VIRTQ_MAX_SIZE);
	wr(b, VIRTIO_MMIO_QUEUE_NUM, QSZ);
	wr(b, VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)DESC);
	wr(b, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
	wr(b, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint32_t)AVAIL);
	wr(b, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, 0);
	wr(b, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint32_t)USED);
	wr(b, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, 0);
	wr(b, VIRTIO_MMIO_QUEUE_READY, 1);
	CHECK(rd(b, VIRTIO_MMIO_QUEUE_READY) == 1);
	wr(b, VIRTIO_MMIO_STATUS, s | VIRTIO_STATUS_DRIVER_OK);
	CHECK(rd(b, VIRTIO_MMIO_STATUS) == (s | VIRTIO_STATUS_DRIVER_OK));
}

static void test_registers(struct virtio_blk *b)
{
	CHECK(rd(b, VIRTIO_MMIO_MAGIC) == VIRTIO_MMIO_MAGIC_VALUE);
	CHECK(rd(b, VIRTIO_MMIO_VERSION) == 2);
	CHECK(rd(b, VIRTIO_MMIO_DEVICE_ID) == 2);
	wr(b, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	uint32_t lo = rd(b, VIRTIO_MMIO_DEVICE_FEATURES);
	wr(b, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	uint32_t hi = rd(b, VIRTIO_MMIO_DEVICE_FEATURES);
	CHECK(lo & (1u << VIRTIO_BLK_F_RO));
	CHECK(lo & (1u << VIRTIO_BLK_F_FLUSH));
	CHECK(hi & 1u); /* VERSION_1 */
	wr(b, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 7);
	CHECK(rd(b, VIRTIO_MMIO_DEVICE_FEATURES) == 0);

	/* Config space: capacity in sectors (the tail is cut), blk_size. */
	uint8_t cfg[4];
	CHECK(virtio_mmio_read(&b->mmio, VIRTIO_MMIO_CONFIG, cfg, 4) == 0);
	CHECK(get_le32(cfg) == DISK_BYTES / 512);
	CHECK(virtio_mmio_read(&b->mmio, VIRTIO_MMIO_CONFIG + 20, cfg, 4) == 0 && get_le32(cfg) == 512);
	CHECK(virtio_mmio_read(&b->mmio, VIRTIO_MMIO_CONFIG + 1, cfg, 1) == 0 && cfg[0] == ((DISK_BYTES / 512) >> 8));
	CHECK(virtio_mmio_read(&b->mmio, VIRTIO_MMIO_CONFIG + 22, cfg, 4) == -EINVAL); /* past the end */
	CHECK(virtio_mmio_read(&b->mmio, VIRTIO_MMIO_CONFIG, cfg, 3) == -EINVAL);
	CHECK(virtio_mmio_write(&b->mmio, VIRTIO_MMIO_CONFIG, cfg, 4) == -EINVAL); /* read-only */
	CHECK(virtio_mmio_read(&b->mmio, VIRTIO_MMIO_STATUS + 1, cfg, 4) == -EINVAL);
	CHECK(virtio_mmio_read(&b->mmio, VIRTIO_MMIO_STATUS, cfg, 2) == -EINVAL);

	/* A feature we do not offer: FEATURES_OK does not stick. */
	wr(b, VIRTIO_MMIO_STATUS, 0);
	wr(b, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	wr(b, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	wr(b, VIRTIO_MMIO_DRIVER_FEATURES, 1u << 0 /* BARRIER, not offered */);
	wr(b, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	wr(b, VIRTIO_MMIO_DRIVER_FEATURES, 1);
	wr(b, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
	CHECK(!(rd(b, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK));
	/* Without VERSION_1 (a legacy driver): refused too. */
	wr(b, VIRTIO_MMIO_STATUS, 0);
	wr(b, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	wr(b, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	wr(b, VIRTIO_MMIO_DRIVER_FEATURES, 1u << VIRTIO_BLK_F_RO);
	wr(b, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
	CHECK(!(rd(b, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK));
	/* DRIVER_OK without FEATURES_OK: the device wants a reset, serves nothing. */
	wr(b, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_DRIVER_OK);
	CHECK(!(rd(b, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_DRIVER_OK));
	CHECK(virtio_mmio_queue(&b->mmio, 0) == NULL);
	/* A queue whose rings are outside guest RAM is not made ready. */
	wr(b, VIRTIO_MMIO_STATUS, 0);
	wr(b, VIRTIO_MMIO_QUEUE_SEL, 0);
	wr(b, VIRTIO_MMIO_QUEUE_NUM, QSZ);
	wr(b, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
	wr(b, VIRTIO_MMIO_QUEUE_READY, 1);
	CHECK(rd(b, VIRTIO_MMIO_QUEUE_READY) == 0);
	/* A queue that does not exist. */
	wr(b, VIRTIO_MMIO_QUEUE_SEL, 3);
	CHECK(rd(b, VIRTIO_MMIO_QUEUE_NUM_MAX) == 0);
}

static void test_requests(struct virtio_blk *b, struct file_backend *fb, bool event_idx)
{
	uint64_t feats = 1ull << VIRTIO_F_VERSION_1 | 1ull << VIRTIO_BLK_F_RO | 1ull << VIRTIO_BLK_F_FLUSH;
	if (event_idx)
		feats |= 1ull << VIRTIO_F_RING_EVENT_IDX;
	bring_up(b, feats);
	if (event_idx)
		put_le16(g(AVAIL) + 4 + 2 * QSZ, 0xffff); /* used_event: interrupt only when idx passes 0xffff */

	/* T_IN, 1024 bytes from sector 3, the data split 100/924, status alone. */
	irqs = 0;
	header(VIRTIO_BLK_T_IN, 3);
	set_desc(0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
	set_desc(1, DATA, 100, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2);
	set_desc(2, DATA + 0x1000, 924, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 3);
	set_desc(3, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
	CHECK(kick(b, 0) == 1025);
	CHECK(*g(STATUS) == VIRTIO_BLK_S_OK);
	CHECK(memcmp(g(DATA), disk + 3 * 512, 100) == 0);
	CHECK(memcmp(g(DATA + 0x1000), disk + 3 * 512 + 100, 924) == 0);
	if (event_idx) {
		CHECK(irqs == 0); /* suppressed by used_event */
	} else {
		CHECK(irqs == 1);
		CHECK(rd(b, VIRTIO_MMIO_INTERRUPT_STATUS) == VIRTIO_MMIO_INT_VRING);
		wr(b, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
		CHECK(rd(b, VIRTIO_MMIO_INTERRUPT_STATUS) == 0);
	}
	if (event_idx)
		put_le16(g(AVAIL) + 4 + 2 * QSZ, used_seen); /* next one interrupts */

	/* The header split 8/8, the status byte sharing the data's last
	 * descriptor: the whole last sector of the disk. */
	header(VIRTIO_BLK_T_IN, DISK_BYTES / 512 - 1);
	set_desc(4, HDR, 8, VIRTQ_DESC_F_NEXT, 5);
	set_desc(5, HDR + 8, 8, VIRTQ_DESC_F_NEXT, 6);
	set_desc(6, DATA, 513, VIRTQ_DESC_F_WRITE, 0);
	irqs = 0;
	CHECK(kick(b, 4) == 513);
	CHECK(g(DATA)[512] == VIRTIO_BLK_S_OK);
	CHECK(memcmp(g(DATA), disk + (DISK_BYTES / 512 - 1) * 512, 512) == 0);
	CHECK(irqs == 1);

	/* Reads past the end (into the cut tail), with a sector that overflows,
	 * and of a length that is not whole sectors: IOERR, nothing copied. */
	set_desc(1, DATA, 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 3);
	set_desc(0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
	header(VIRTIO_BLK_T_IN, DISK_BYTES / 512);
	CHECK(kick(b, 0) == 1 && *g(STATUS) == VIRTIO_BLK_S_IOERR);
	header(VIRTIO_BLK_T_IN, UINT64_MAX / 256);
	CHECK(kick(b, 0) == 1 && *g(STATUS) == VIRTIO_BLK_S_IOERR);
	set_desc(1, DATA, 100, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 3);
	header(VIRTIO_BLK_T_IN, 0);
	CHECK(kick(b, 0) == 1 && *g(STATUS) == VIRTIO_BLK_S_IOERR);

	/* The backend fails (a fault layer): IOERR. */
	fb->fail_from = 4096;
	set_desc(1, DATA, 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 3);
	header(VIRTIO_BLK_T_IN, 8);
	CHECK(kick(b, 0) == 1 && *g(STATUS) == VIRTIO_BLK_S_IOERR);
	fb->fail_from = UINT64_MAX;
	CHECK(kick(b, 0) == 513 && *g(STATUS) == VIRTIO_BLK_S_OK);

	/* T_OUT on a read-only disk. */
	set_desc(1, DATA, 512, VIRTQ_DESC_F_NEXT, 3); /* readable data */
	header(VIRTIO_BLK_T_OUT, 0);
	uint8_t before[512];
	memcpy(before, disk, 512);
	CHECK(kick(b, 0) == 1 && *g(STATUS) == VIRTIO_BLK_S_IOERR);

	/* GET_ID: 20 bytes, NUL-padded. */
	set_desc(1, DATA, VIRTIO_BLK_ID_BYTES, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 3);
	memset(g(DATA), 0x55, 64);
	header(VIRTIO_BLK_T_GET_ID, 0);
	CHECK(kick(b, 0) == VIRTIO_BLK_ID_BYTES + 1 && *g(STATUS) == VIRTIO_BLK_S_OK);
	CHECK(memcmp(g(DATA), "kindling-root\0\0\0\0\0\0\0", 20) == 0 && g(DATA)[20] == 0x55);

	/* FLUSH: header and status only. */
	set_desc(0, HDR, 16, VIRTQ_DESC_F_NEXT, 3);
	header(VIRTIO_BLK_T_FLUSH, 0);
	int flushes = fb->flushes;
	CHECK(kick(b, 0) == 1 && *g(STATUS) == VIRTIO_BLK_S_OK && fb->flushes == flushes + 1);
	/* An unknown type. */
	header(99, 0);
	CHECK(kick(b, 0) == 1 && *g(STATUS) == VIRTIO_BLK_S_UNSUPP);

	/* Malformed: a short header, no status byte, a buffer outside the
	 * guest.  Each comes back with length 0 and no status written. */
	uint64_t errors = b->errors;
	set_desc(0, HDR, 8, VIRTQ_DESC_F_NEXT, 3);
	header(VIRTIO_BLK_T_IN, 0);
	CHECK(kick(b, 0) == 1 && *g(STATUS) == VIRTIO_BLK_S_IOERR);
	set_desc(0, HDR, 16, 0, 0);
	CHECK(kick(b, 0) == 0);
	set_desc(0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
	set_desc(1, BASE + MEMSZ - 256, 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 3);
	header(VIRTIO_BLK_T_IN, 0);
	CHECK(kick(b, 0) == 0 && *g(STATUS) == 0xee);
	set_desc(1, 0x1000, 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 3); /* below guest RAM */
	CHECK(kick(b, 0) == 0 && *g(STATUS) == 0xee);
	CHECK(b->errors == errors + 4);

	/* Indirect: the whole request through one table. */
	const uint64_t T = BASE + 0x20000;
	set_desc(7, T, 48, VIRTQ_DESC_F_INDIRECT, 0);
	uint8_t *t = g(T);
	put_le64(t, HDR), put_le32(t + 8, 16), put_le16(t + 12, VIRTQ_DESC_F_NEXT), put_le16(t + 14, 1);
	put_le64(t + 16, DATA), put_le32(t + 24, 2048), put_le16(t + 28, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT), put_le16(t + 30, 2);
	put_le64(t + 32, STATUS), put_le32(t + 40, 1), put_le16(t + 44, VIRTQ_DESC_F_WRITE), put_le16(t + 46, 0);
	header(VIRTIO_BLK_T_IN, 10);
	CHECK(kick(b, 7) == 2049 && *g(STATUS) == VIRTIO_BLK_S_OK);
	CHECK(memcmp(g(DATA), disk + 10 * 512, 2048) == 0);

	/* A broken avail index: the device asks for a reset and stops. */
	put_le16(g(AVAIL) + 2, (uint16_t)(avail_idx + 100));
	wr(b, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
	CHECK(rd(b, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET);
	CHECK(rd(b, VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG);
	CHECK(virtio_mmio_queue(&b->mmio, 0) == NULL);
	/* Reset: everything back to square one. */
	wr(b, VIRTIO_MMIO_STATUS, 0);
	CHECK(rd(b, VIRTIO_MMIO_STATUS) == 0 && rd(b, VIRTIO_MMIO_INTERRUPT_STATUS) == 0);
	wr(b, VIRTIO_MMIO_QUEUE_SEL, 0);
	CHECK(rd(b, VIRTIO_MMIO_QUEUE_READY) == 0);
}

int main(void)
{
	char path[] = "/tmp/kindling-test-kvmm-blk.XXXXXX";
	int fd = mkstemp(path);
	if (fd < 0)
		return 1;
	unlink(path);
	for (size_t i = 0; i < sizeof(disk); i++)
		disk[i] = (uint8_t)(i * 7 + i / 511);
	if (write(fd, disk, sizeof(disk)) != (ssize_t)sizeof(disk))
		return 1;

	ram = aligned_alloc(4096, MEMSZ);
	if (!ram)
		return 1;
	guest_mem_init(&mem);
	CHECK(guest_mem_add(&mem, BASE, ram, MEMSZ) == 0);

	struct file_backend fb = { .fd = fd, .fail_from = UINT64_MAX };
	struct virtio_blk_backend be = {
		.read_at = file_read_at, .flush = file_flush, .ctx = &fb, .size = sizeof(disk)
	};
	static struct virtio_blk b;
	struct virtio_blk_backend bad = { 0 };
	CHECK(virtio_blk_init(&b, &bad, NULL, &mem, count_irq, NULL) == -EINVAL);
	CHECK(virtio_blk_init(&b, &be, "kindling-root", &mem, count_irq, NULL) == 0);
	test_registers(&b);
	test_requests(&b, &fb, false);
	test_requests(&b, &fb, true);
	close(fd);
	free(ram);
	return check_report();
}
