/* The console: an 8250-family UART (a 16550A with its FIFOs) at the PC's COM1
 * ports, modelled register by register the way Linux's 8250 driver probes and
 * drives it.
 *
 * Transmission is instantaneous: a byte written to THR goes straight to the
 * output descriptor, so THR and the shift register always read empty and the
 * "THR empty" interrupt becomes pending again after every write.  That is what
 * the driver's THRE test in serial8250_do_startup() looks for: enabling THRI
 * while THR is empty must raise an interrupt at once.
 *
 * The interrupt line follows PC wiring: the UART's INTR output reaches the
 * interrupt controller only while MCR.OUT2 is set.  The line is a level; the
 * VM turns each change into KVM_IRQ_LINE, and an edge-triggered IOAPIC pin
 * sees the rising edges (the driver's handler loops until IIR says "no
 * interrupt", as it must on real ISA hardware). */
#include <errno.h>
#include <string.h>

#define LOG_COMPONENT "kvmm"
#include "common/common.h"
#include "vmm/kvmm/irq.h"
#include "vmm/kvmm/serial.h"

/* Register offsets from the base port. */
#define UART_RX 0  /* in: receive buffer; out: THR; DLAB: divisor latch low */
#define UART_IER 1 /* DLAB: divisor latch high */
#define UART_IIR 2 /* in: interrupt identification; out: FCR */
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define UART_MSR 6
#define UART_SCR 7

#define IER_RDI 0x01  /* received data available */
#define IER_THRI 0x02 /* THR empty */
#define IER_MASK 0x0f /* the four bits a 16550A implements (autoconfig checks) */

#define IIR_NO_INT 0x01
#define IIR_THRI 0x02
#define IIR_RDI 0x04
#define IIR_FIFO_BITS 0xc0 /* FIFOs enabled: what makes the driver say 16550A */

#define FCR_ENABLE 0x01
#define FCR_CLEAR_RCVR 0x02

#define LCR_DLAB 0x80

#define MCR_DTR 0x01
#define MCR_RTS 0x02
#define MCR_OUT1 0x04
#define MCR_OUT2 0x08
#define MCR_LOOP 0x10
#define MCR_MASK 0x1f

#define LSR_DR 0x01   /* data ready */
#define LSR_OE 0x02   /* overrun */
#define LSR_THRE 0x20 /* THR empty */
#define LSR_TEMT 0x40 /* transmitter empty */

#define MSR_CTS 0x10
#define MSR_DSR 0x20
#define MSR_RI 0x40
#define MSR_DCD 0x80

void kvmm_serial_init(struct kvmm_serial *s, int out_fd, kvmm_irq_line_fn irq, void *irq_ctx)
{
	memset(s, 0, sizeof(*s));
	s->out_fd = out_fd;
	s->irq = irq;
	s->irq_ctx = irq_ctx;
	/* Power-on values: 9600 baud (divisor 12), 8N1, THR empty. */
	s->dll = 12;
	s->lcr = 0x03;
	s->thr_pending = false;
}

static uint8_t iir_value(const struct kvmm_serial *s)
{
	uint8_t fifo = s->fifo_enabled ? IIR_FIFO_BITS : 0;
	if ((s->ier & IER_RDI) && s->rx_len)
		return fifo | IIR_RDI;
	if ((s->ier & IER_THRI) && s->thr_pending)
		return fifo | IIR_THRI;
	return fifo | IIR_NO_INT;
}

/* Recompute INTR (gated by OUT2) and report a change of level. */
static void update_irq(struct kvmm_serial *s)
{
	bool level = (s->mcr & MCR_OUT2) && !(iir_value(s) & IIR_NO_INT);
	if (level == s->irq_level)
		return;
	s->irq_level = level;
	if (s->irq)
		s->irq(s->irq_ctx, level);
}

static void rx_push(struct kvmm_serial *s, uint8_t b)
{
	if (s->rx_len == KVMM_SERIAL_FIFO) {
		s->lsr_errors |= LSR_OE; /* the byte is lost, as on hardware */
		return;
	}
	s->rx[(s->rx_head + s->rx_len) % KVMM_SERIAL_FIFO] = b;
	s->rx_len++;
}

static void transmit(struct kvmm_serial *s, uint8_t b)
{
	if (s->mcr & MCR_LOOP) {
		rx_push(s, b); /* loopback: the transmitter feeds the receiver */
	} else if (s->out_fd >= 0) {
		int r = write_full(s->out_fd, &b, 1);
		if (r < 0 && !s->out_failed) {
			/* Keep the guest running without its console rather
			 * than stop it; say so once. */
			log_warn("serial console: writing to descriptor %d: %s; console output is lost from here on",
				 s->out_fd, strerror(-r));
			s->out_failed = true;
		}
		if (r < 0)
			s->out_fd = -1;
	}
	s->thr_pending = true;
}

static uint8_t msr_value(const struct kvmm_serial *s)
{
	if (s->mcr & MCR_LOOP) {
		/* Loopback wires the modem outputs back to the inputs. */
		uint8_t m = 0;
		if (s->mcr & MCR_RTS)
			m |= MSR_CTS;
		if (s->mcr & MCR_DTR)
			m |= MSR_DSR;
		if (s->mcr & MCR_OUT1)
			m |= MSR_RI;
		if (s->mcr & MCR_OUT2)
			m |= MSR_DCD;
		return m;
	}
	/* A connected terminal: carrier, data set ready, clear to send. */
	return MSR_DCD | MSR_DSR | MSR_CTS;
}

uint8_t kvmm_serial_read(struct kvmm_serial *s, uint16_t off)
{
	uint8_t v = 0;
	bool dlab = s->lcr & LCR_DLAB;
	switch (off) {
	case UART_RX:
		if (dlab) {
			v = s->dll;
		} else if (s->rx_len) {
			v = s->rx[s->rx_head];
			s->rx_head = (s->rx_head + 1) % KVMM_SERIAL_FIFO;
			s->rx_len--;
		}
		break;
	case UART_IER:
		v = dlab ? s->dlm : s->ier;
		break;
	case UART_IIR:
		v = iir_value(s);
		/* Reading IIR while it reports THRE acknowledges it. */
		if ((v & 0x0f) == IIR_THRI)
			s->thr_pending = false;
		break;
	case UART_LCR:
		v = s->lcr;
		break;
	case UART_MCR:
		v = s->mcr;
		break;
	case UART_LSR:
		v = LSR_THRE | LSR_TEMT | s->lsr_errors | (s->rx_len ? LSR_DR : 0);
		s->lsr_errors = 0; /* error bits clear on read */
		break;
	case UART_MSR:
		v = msr_value(s);
		break;
	case UART_SCR:
		v = s->scr;
		break;
	default:
		v = 0xff;
		break;
	}
	update_irq(s);
	return v;
}

void kvmm_serial_write(struct kvmm_serial *s, uint16_t off, uint8_t v)
{
	bool dlab = s->lcr & LCR_DLAB;
	switch (off) {
	case UART_RX:
		if (dlab)
			s->dll = v;
		else
			transmit(s, v);
		break;
	case UART_IER:
		if (dlab) {
			s->dlm = v;
		} else {
			/* Turning THRI on while THR is empty interrupts at
			 * once; THR is always empty here. */
			if ((v & IER_THRI) && !(s->ier & IER_THRI))
				s->thr_pending = true;
			s->ier = v & IER_MASK;
		}
		break;
	case UART_IIR: /* FCR */
		s->fifo_enabled = v & FCR_ENABLE;
		if ((v & FCR_CLEAR_RCVR) || !s->fifo_enabled)
			s->rx_head = s->rx_len = 0;
		break;
	case UART_LCR:
		s->lcr = v;
		break;
	case UART_MCR:
		s->mcr = v & MCR_MASK;
		break;
	case UART_SCR:
		s->scr = v;
		break;
	default:
		break; /* LSR and MSR are read-only */
	}
	update_irq(s);
}

size_t kvmm_serial_input(struct kvmm_serial *s, const uint8_t *buf, size_t len)
{
	size_t n = 0;
	for (; n < len && s->rx_len < KVMM_SERIAL_FIFO; n++)
		rx_push(s, buf[n]);
	update_irq(s);
	return n;
}

size_t kvmm_serial_room(const struct kvmm_serial *s)
{
	return KVMM_SERIAL_FIFO - s->rx_len;
}
