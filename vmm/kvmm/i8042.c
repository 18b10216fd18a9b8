/* The PC keyboard controller (i8042) at ports 0x60/0x64 with a keyboard
 * behind it, modelled as far as Linux's i8042 and atkbd drivers go, for two
 * reasons:
 *
 *   - reset: the kernel's "reboot=k" path pulses the CPU reset line with
 *     command 0xFE on port 0x64; that ends the VM;
 *   - Ctrl+Alt+Del: Firecracker's SendCtrlAltDel presses those keys on this
 *     keyboard, and the guest kernel turns them into a signal to its init.
 *
 * There is no mouse (the AUX port is absent: Linux runs with i8042.noaux).
 * The controller's one-byte output buffer is a short queue here; each byte
 * that reaches the head raises IRQ 1 (edge) when the command byte enables the
 * keyboard interrupt, as the real part does when it loads OBF. */
#include <errno.h>
#include <string.h>

#define LOG_COMPONENT "kvmm"
#include "common/common.h"
#include "vmm/kvmm/i8042.h"
#include "vmm/kvmm/irq.h"
#include "vmm/kvmm/layout.h"

#define STS_OBF 0x01
#define STS_SYS 0x04
#define STS_CMD 0x08 /* the last write went to the command port */
#define STS_UNLOCKED 0x10 /* keyboard not inhibited */

#define CTR_KBDINT 0x01
#define CTR_SYS 0x04
#define CTR_KBDDIS 0x10
#define CTR_AUXDIS 0x20
#define CTR_XLATE 0x40

/* Controller commands (port 0x64). */
#define CMD_READ_CTR 0x20
#define CMD_WRITE_CTR 0x60
#define CMD_AUX_DISABLE 0xa7
#define CMD_AUX_ENABLE 0xa8
#define CMD_AUX_TEST 0xa9
#define CMD_SELF_TEST 0xaa
#define CMD_KBD_TEST 0xab
#define CMD_KBD_DISABLE 0xad
#define CMD_KBD_ENABLE 0xae
#define CMD_READ_INPUT 0xc0
#define CMD_READ_OUTPUT 0xd0
#define CMD_WRITE_OUTPUT 0xd1
#define CMD_WRITE_KBD_OBUF 0xd2
#define CMD_WRITE_AUX_OBUF 0xd3
#define CMD_WRITE_AUX 0xd4
#define CMD_RESET 0xfe

/* Keyboard commands (port 0x60) and replies. */
#define KBD_SET_LEDS 0xed
#define KBD_ECHO 0xee
#define KBD_SCANCODE_SET 0xf0
#define KBD_GET_ID 0xf2
#define KBD_SET_RATE 0xf3
#define KBD_RESET 0xff
#define KBD_ACK 0xfa
#define KBD_BAT_OK 0xaa

#define OUTPUT_PORT_RESET 0x01 /* bit 0 low = CPU held in reset */
#define OUTPUT_PORT_A20 0x02

void kvmm_i8042_init(struct kvmm_i8042 *k, kvmm_irq_line_fn irq, void (*reset)(void *ctx), void *ctx)
{
	memset(k, 0, sizeof(*k));
	k->irq = irq;
	k->reset = reset;
	k->ctx = ctx;
	/* What firmware leaves behind: keyboard interrupt on, POST passed,
	 * scancode translation on, the (absent) AUX port disabled. */
	k->ctr = CTR_KBDINT | CTR_SYS | CTR_XLATE | CTR_AUXDIS;
	k->output_port = OUTPUT_PORT_RESET | OUTPUT_PORT_A20;
	k->scancode_set = 2;
}

static void pulse(struct kvmm_i8042 *k)
{
	if (k->irq && (k->ctr & CTR_KBDINT)) {
		k->irq(k->ctx, true);
		k->irq(k->ctx, false);
	}
}

static size_t room(const struct kvmm_i8042 *k)
{
	return KVMM_I8042_QUEUE - k->out_len;
}

/* Queue a byte for the guest; raises the interrupt if it is now at the head. */
static int push(struct kvmm_i8042 *k, uint8_t b)
{
	if (!room(k))
		return -ENOSPC;
	k->out[(k->out_head + k->out_len) % KVMM_I8042_QUEUE] = b;
	k->out_len++;
	if (k->out_len == 1)
		pulse(k);
	return 0;
}

static void do_reset(struct kvmm_i8042 *k)
{
	if (k->reset)
		k->reset(k->ctx);
}

uint8_t kvmm_i8042_read(struct kvmm_i8042 *k, uint16_t port)
{
	if (port == KVMM_I8042_CMD_PORT) {
		uint8_t s = STS_UNLOCKED | (k->ctr & CTR_SYS ? STS_SYS : 0) | (k->last_was_cmd ? STS_CMD : 0);
		return s | (k->out_len ? STS_OBF : 0);
	}
	if (port != KVMM_I8042_DATA_PORT)
		return 0xff;
	if (!k->out_len)
		return k->last_out; /* re-reading an empty buffer returns the last byte */
	uint8_t b = k->out[k->out_head];
	k->out_head = (k->out_head + 1) % KVMM_I8042_QUEUE;
	k->out_len--;
	k->last_out = b;
	if (k->out_len)
		pulse(k); /* the next byte loads the output buffer */
	return b;
}

static void controller_command(struct kvmm_i8042 *k, uint8_t cmd)
{
	k->pending_cmd = 0;
	switch (cmd) {
	case CMD_READ_CTR:
		push(k, k->ctr);
		break;
	case CMD_WRITE_CTR:
	case CMD_WRITE_OUTPUT:
	case CMD_WRITE_KBD_OBUF:
	case CMD_WRITE_AUX_OBUF:
	case CMD_WRITE_AUX:
		k->pending_cmd = cmd; /* the argument comes through port 0x60 */
		break;
	case CMD_AUX_DISABLE:
		k->ctr |= CTR_AUXDIS;
		break;
	case CMD_AUX_ENABLE:
		k->ctr &= (uint8_t)~CTR_AUXDIS;
		break;
	case CMD_AUX_TEST:
		push(k, 0xff); /* no AUX port: "clock line stuck" */
		break;
	case CMD_SELF_TEST:
		push(k, 0x55);
		break;
	case CMD_KBD_TEST:
		push(k, 0x00);
		break;
	case CMD_KBD_DISABLE:
		k->ctr |= CTR_KBDDIS;
		break;
	case CMD_KBD_ENABLE:
		k->ctr &= (uint8_t)~CTR_KBDDIS;
		break;
	case CMD_READ_INPUT:
		push(k, 0x80); /* keyboard not inhibited */
		break;
	case CMD_READ_OUTPUT:
		push(k, k->output_port);
		break;
	case CMD_RESET:
		do_reset(k);
		break;
	default:
		/* 0xf0..0xfd pulse other output lines; the rest we do not
		 * know.  Neither may stop the guest. */
		log_debug("i8042: command 0x%02x ignored", cmd);
		break;
	}
}

/* A byte for the keyboard itself. */
static void keyboard_command(struct kvmm_i8042 *k, uint8_t b)
{
	if (k->kbd_pending) {
		/* The argument of SET_LEDS, SET_RATE or SCANCODE_SET. */
		uint8_t cmd = k->kbd_pending;
		k->kbd_pending = 0;
		if (cmd == KBD_SCANCODE_SET && b == 0) {
			push(k, KBD_ACK);
			push(k, k->scancode_set);
			return;
		}
		if (cmd == KBD_SCANCODE_SET && b >= 1 && b <= 3)
			k->scancode_set = b;
		push(k, KBD_ACK);
		return;
	}
	switch (b) {
	case KBD_SET_LEDS:
	case KBD_SET_RATE:
	case KBD_SCANCODE_SET:
		k->kbd_pending = b;
		push(k, KBD_ACK);
		break;
	case KBD_ECHO:
		push(k, KBD_ECHO);
		break;
	case KBD_GET_ID:
		/* An MF2 keyboard: 0xab 0x83, which the controller hands on
		 * as 0xab 0x41 when it translates. */
		push(k, KBD_ACK);
		push(k, 0xab);
		push(k, k->ctr & CTR_XLATE ? 0x41 : 0x83);
		break;
	case KBD_RESET:
		k->scancode_set = 2;
		push(k, KBD_ACK);
		push(k, KBD_BAT_OK);
		break;
	default:
		push(k, KBD_ACK); /* enable, disable, defaults, typematic modes */
		break;
	}
}

void kvmm_i8042_write(struct kvmm_i8042 *k, uint16_t port, uint8_t v)
{
	if (port == KVMM_I8042_CMD_PORT) {
		k->last_was_cmd = true;
		controller_command(k, v);
		return;
	}
	if (port != KVMM_I8042_DATA_PORT)
		return;
	k->last_was_cmd = false;
	uint8_t cmd = k->pending_cmd;
	k->pending_cmd = 0;
	switch (cmd) {
	case CMD_WRITE_CTR:
		k->ctr = v;
		break;
	case CMD_WRITE_OUTPUT:
		k->output_port = v;
		if (!(v & OUTPUT_PORT_RESET))
			do_reset(k);
		break;
	case CMD_WRITE_KBD_OBUF:
		push(k, v);
		break;
	case CMD_WRITE_AUX_OBUF:
	case CMD_WRITE_AUX:
		break; /* no AUX device: the byte goes nowhere */
	default:
		keyboard_command(k, v);
		break;
	}
}

int kvmm_i8042_ctrl_alt_del(struct kvmm_i8042 *k)
{
	/* Press and release Ctrl, Alt, Delete.  The controller translates
	 * the keyboard's set 2 into set 1 while CTR.XLATE is on, which is how
	 * Linux runs it; without translation the guest reads set 2. */
	static const uint8_t set1[] = { 0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d };
	static const uint8_t set2[] = { 0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14 };
	const uint8_t *seq = k->ctr & CTR_XLATE ? set1 : set2;
	size_t n = k->ctr & CTR_XLATE ? sizeof(set1) : sizeof(set2);
	if (k->ctr & CTR_KBDDIS)
		return -EAGAIN;
	if (room(k) < n)
		return -EBUSY;
	for (size_t i = 0; i < n; i++)
		push(k, seq[i]);
	return 0;
}
