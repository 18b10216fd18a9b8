/* kvmm: the serial console's 16550A UART (serial.c).  Its ports and IRQ are
 * in layout.h. */
#ifndef KINDLING_KVMM_SERIAL_H
#define KINDLING_KVMM_SERIAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vmm/kvmm/irq.h"

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
 * most kvmm_serial_room() (the caller keeps the rest; kvmm's console leaves
 * it unread on stdin until the guest reads). */
size_t kvmm_serial_input(struct kvmm_serial *s, const uint8_t *buf, size_t len);

/* Free space in the receive FIFO. */
size_t kvmm_serial_room(const struct kvmm_serial *s);

#endif
