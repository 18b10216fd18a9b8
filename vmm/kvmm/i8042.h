/* kvmm: the i8042 keyboard controller (i8042.c), for Ctrl+Alt+Del and the
 * reset line.  Its ports and IRQ are in layout.h. */
#ifndef KINDLING_KVMM_I8042_H
#define KINDLING_KVMM_I8042_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vmm/kvmm/irq.h"

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

#endif
