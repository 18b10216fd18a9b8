/* The i8042 keyboard controller model against what Linux's i8042 and atkbd
 * drivers send, the two ways a guest resets the machine through it, and the
 * Ctrl+Alt+Del key sequence in both scancode translations. */
/* ctest-labels: no-tsan (single-threaded: nothing for ThreadSanitizer to check) */
#include <errno.h>
#include <string.h>

#include "tests/check.h"
#include "vmm/kvmm/i8042.h"
#include "vmm/kvmm/layout.h"

#define DATA KVMM_I8042_DATA_PORT
#define CMD KVMM_I8042_CMD_PORT

struct probe {
	bool level;
	int pulses, resets;
};

static void irq_fn(void *ctx, bool level)
{
	struct probe *p = ctx;
	if (level && !p->level)
		p->pulses++;
	p->level = level;
}

static void reset_fn(void *ctx)
{
	((struct probe *)ctx)->resets++;
}

/* Read every queued byte into |out|; returns how many. */
static size_t read_all(struct kvmm_i8042 *k, uint8_t *out, size_t cap)
{
	size_t n = 0;
	while (n < cap && (kvmm_i8042_read(k, CMD) & 0x01))
		out[n++] = kvmm_i8042_read(k, DATA);
	return n;
}

int main(void)
{
	struct probe p = { 0 };
	struct kvmm_i8042 k;
	uint8_t b[32];

	kvmm_i8042_init(&k, irq_fn, reset_fn, &p);
	/* A controller is there (not 0xff), nothing to flush, POST passed. */
	uint8_t st = kvmm_i8042_read(&k, CMD);
	CHECK(st != 0xff && !(st & 0x01) && (st & 0x04));

	/* Controller self test and keyboard interface test. */
	kvmm_i8042_write(&k, CMD, 0xaa);
	CHECK(kvmm_i8042_read(&k, CMD) & 0x08); /* last write was a command */
	CHECK(read_all(&k, b, sizeof(b)) == 1 && b[0] == 0x55);
	CHECK(p.pulses == 1 && !p.level);
	kvmm_i8042_write(&k, CMD, 0xab);
	CHECK(read_all(&k, b, sizeof(b)) == 1 && b[0] == 0x00);

	/* The command byte: read, written, read back. */
	kvmm_i8042_write(&k, CMD, 0x20);
	CHECK(read_all(&k, b, sizeof(b)) == 1 && b[0] == 0x65);
	kvmm_i8042_write(&k, CMD, 0x60);
	kvmm_i8042_write(&k, DATA, 0x47);
	kvmm_i8042_write(&k, CMD, 0x20);
	CHECK(read_all(&k, b, sizeof(b)) == 1 && b[0] == 0x47);
	/* Disabling the keyboard interface sets CTR bit 4. */
	kvmm_i8042_write(&k, CMD, 0xad);
	kvmm_i8042_write(&k, CMD, 0x20);
	CHECK(read_all(&k, b, sizeof(b)) == 1 && b[0] == 0x57);
	kvmm_i8042_write(&k, CMD, 0xae);
	/* No AUX port. */
	kvmm_i8042_write(&k, CMD, 0xa9);
	CHECK(read_all(&k, b, sizeof(b)) == 1 && b[0] == 0xff);

	/* The keyboard: reset, identify (translated), LEDs with argument,
	 * scancode set query, echo. */
	kvmm_i8042_write(&k, DATA, 0xff);
	CHECK(read_all(&k, b, sizeof(b)) == 2 && b[0] == 0xfa && b[1] == 0xaa);
	kvmm_i8042_write(&k, DATA, 0xf2);
	CHECK(read_all(&k, b, sizeof(b)) == 3 && b[0] == 0xfa && b[1] == 0xab && b[2] == 0x41);
	kvmm_i8042_write(&k, DATA, 0xed);
	CHECK(read_all(&k, b, sizeof(b)) == 1 && b[0] == 0xfa);
	kvmm_i8042_write(&k, DATA, 0x07);
	CHECK(read_all(&k, b, sizeof(b)) == 1 && b[0] == 0xfa);
	kvmm_i8042_write(&k, DATA, 0xf0);
	kvmm_i8042_write(&k, DATA, 0x00);
	CHECK(read_all(&k, b, sizeof(b)) == 3 && b[0] == 0xfa && b[1] == 0xfa && b[2] == 2);
	kvmm_i8042_write(&k, DATA, 0xee);
	CHECK(read_all(&k, b, sizeof(b)) == 1 && b[0] == 0xee);
	CHECK(!p.level);

	/* Every byte that reaches the head of the buffer raises IRQ 1 once. */
	int before = p.pulses;
	kvmm_i8042_write(&k, DATA, 0xf2);
	CHECK(p.pulses == before + 1);
	read_all(&k, b, sizeof(b));
	CHECK(p.pulses == before + 3);
	/* ...unless the command byte masks the keyboard interrupt. */
	kvmm_i8042_write(&k, CMD, 0x60);
	kvmm_i8042_write(&k, DATA, 0x46);
	before = p.pulses;
	kvmm_i8042_write(&k, DATA, 0xf2);
	read_all(&k, b, sizeof(b));
	CHECK(p.pulses == before);
	/* An empty buffer re-reads its last byte, as the hardware does. */
	CHECK(kvmm_i8042_read(&k, DATA) == b[2]);

	/* Ctrl+Alt+Del translated to set 1 (CTR.XLATE on). */
	kvmm_i8042_write(&k, CMD, 0x60);
	kvmm_i8042_write(&k, DATA, 0x65);
	before = p.pulses;
	CHECK(kvmm_i8042_ctrl_alt_del(&k) == 0);
	static const uint8_t set1[] = { 0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d };
	CHECK(read_all(&k, b, sizeof(b)) == sizeof(set1) && memcmp(b, set1, sizeof(set1)) == 0);
	CHECK(p.pulses == before + (int)sizeof(set1));
	/* The guest not reading: two presses fit the queue, a third waits
	 * for room and queues nothing. */
	CHECK(kvmm_i8042_ctrl_alt_del(&k) == 0);
	CHECK(kvmm_i8042_ctrl_alt_del(&k) == 0);
	CHECK(kvmm_i8042_ctrl_alt_del(&k) == -EBUSY);
	CHECK(read_all(&k, b, sizeof(b)) == 2 * sizeof(set1));
	read_all(&k, b, sizeof(b));
	/* Untranslated: the keyboard's set 2 with F0 break prefixes. */
	kvmm_i8042_write(&k, CMD, 0x60);
	kvmm_i8042_write(&k, DATA, 0x25);
	CHECK(kvmm_i8042_ctrl_alt_del(&k) == 0);
	static const uint8_t set2[] = { 0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14 };
	CHECK(read_all(&k, b, sizeof(b)) == sizeof(set2) && memcmp(b, set2, sizeof(set2)) == 0);
	/* A disabled keyboard sends nothing. */
	kvmm_i8042_write(&k, CMD, 0xad);
	CHECK(kvmm_i8042_ctrl_alt_del(&k) == -EAGAIN);
	kvmm_i8042_write(&k, CMD, 0xae);

	/* Reset: the 0xFE pulse (reboot=k), and clearing the output port's
	 * reset bit; writing the output port with the bit set does not. */
	CHECK(p.resets == 0);
	kvmm_i8042_write(&k, CMD, 0xfe);
	CHECK(p.resets == 1);
	kvmm_i8042_write(&k, CMD, 0xd1);
	kvmm_i8042_write(&k, DATA, 0x03);
	CHECK(p.resets == 1);
	kvmm_i8042_write(&k, CMD, 0xd0);
	CHECK(read_all(&k, b, sizeof(b)) == 1 && b[0] == 0x03);
	kvmm_i8042_write(&k, CMD, 0xd1);
	kvmm_i8042_write(&k, DATA, 0x02);
	CHECK(p.resets == 2);
	/* Other pulse commands and unknown ones are harmless. */
	kvmm_i8042_write(&k, CMD, 0xf0);
	kvmm_i8042_write(&k, CMD, 0x12);
	CHECK(p.resets == 2);
	/* Ports that are not the controller's. */
	CHECK(kvmm_i8042_read(&k, 0x61) == 0xff);
	return check_report();
}
