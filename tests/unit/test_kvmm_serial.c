/* The console UART model against what Linux's 8250 driver does to it: the
 * autoconfig probes (IER bits, scratch register, FIFO identification), the
 * THRE test at startup, transmit to a real pipe, receive through the FIFO,
 * the OUT2 gate on the interrupt line, loopback and receiver overrun. */
/* ctest-labels: no-tsan (single-threaded: nothing for ThreadSanitizer to check) */
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "tests/check.h"
#include "vmm/kvmm/serial.h"

#define RBR 0
#define THR 0
#define IER 1
#define IIR 2
#define FCR 2
#define LCR 3
#define MCR 4
#define LSR 5
#define MSR 6
#define SCR 7

struct line {
	bool level;
	int rises, changes;
};

static void line_fn(void *ctx, bool level)
{
	struct line *l = ctx;
	if (level && !l->level)
		l->rises++;
	l->level = level;
	l->changes++;
}

static size_t drain(int fd, char *buf, size_t cap)
{
	ssize_t n = read(fd, buf, cap);
	return n > 0 ? (size_t)n : 0;
}

int main(void)
{
	int p[2];
	char out[256];
	struct line line = { 0 };
	struct kvmm_serial s;

	if (pipe2(p, O_NONBLOCK) < 0)
		return 1;
	kvmm_serial_init(&s, p[1], line_fn, &line);

	/* Transmitter: bytes go out at once; THR and TEMT always read empty. */
	kvmm_serial_write(&s, THR, 'h');
	kvmm_serial_write(&s, THR, 'i');
	CHECK(drain(p[0], out, sizeof(out)) == 2 && memcmp(out, "hi", 2) == 0);
	CHECK((kvmm_serial_read(&s, LSR) & 0x61) == 0x60);

	/* autoconfig(): IER keeps exactly its low four bits. */
	kvmm_serial_write(&s, IER, 0);
	CHECK((kvmm_serial_read(&s, IER) & 0x0f) == 0);
	kvmm_serial_write(&s, IER, 0xff);
	CHECK(kvmm_serial_read(&s, IER) == 0x0f);
	kvmm_serial_write(&s, IER, 0);
	/* The scratch register, and the divisor latch behind DLAB. */
	kvmm_serial_write(&s, SCR, 0xa5);
	CHECK(kvmm_serial_read(&s, SCR) == 0xa5);
	kvmm_serial_write(&s, LCR, 0x83);
	kvmm_serial_write(&s, 0, 0x01);
	kvmm_serial_write(&s, 1, 0x00);
	CHECK(kvmm_serial_read(&s, 0) == 0x01 && kvmm_serial_read(&s, 1) == 0x00);
	kvmm_serial_write(&s, LCR, 0x03);
	CHECK(kvmm_serial_read(&s, IER) == 0); /* DLM did not land in IER */
	CHECK(kvmm_serial_read(&s, LCR) == 0x03);
	CHECK(drain(p[0], out, sizeof(out)) == 0); /* divisor writes are not data */

	/* FIFO identification: IIR's top bits say 16550A once FCR enables it. */
	CHECK(kvmm_serial_read(&s, IIR) == 0x01);
	kvmm_serial_write(&s, FCR, 0x07);
	CHECK(kvmm_serial_read(&s, IIR) == 0xc1);

	/* No interrupt reaches the line without OUT2. */
	kvmm_serial_write(&s, IER, 0x02);
	CHECK(!line.level && line.changes == 0);
	CHECK((kvmm_serial_read(&s, IIR) & 0x0f) == 0x02); /* pending inside the UART; reading acks it */
	CHECK((kvmm_serial_read(&s, IIR) & 0x0f) == 0x01);
	kvmm_serial_write(&s, IER, 0);

	/* The driver's THRE test: enabling THRI with THR empty interrupts at
	 * once, reading IIR acknowledges it, and it works twice in a row. */
	kvmm_serial_write(&s, MCR, 0x0b); /* DTR, RTS, OUT2 */
	for (int round = 0; round < 2; round++) {
		kvmm_serial_write(&s, IER, 0x02);
		CHECK(line.level);
		CHECK(kvmm_serial_read(&s, IIR) == 0xc2);
		CHECK(!line.level);
		CHECK(kvmm_serial_read(&s, IIR) == 0xc1);
		kvmm_serial_write(&s, IER, 0);
	}
	CHECK(line.rises == 2);
	/* With THRI on, every transmitted byte owes one more interrupt. */
	kvmm_serial_write(&s, IER, 0x02);
	kvmm_serial_read(&s, IIR);
	CHECK(!line.level);
	kvmm_serial_write(&s, THR, 'x');
	CHECK(line.level);
	kvmm_serial_read(&s, IIR);
	kvmm_serial_write(&s, IER, 0);
	CHECK(drain(p[0], out, sizeof(out)) == 1 && out[0] == 'x');

	/* Receiver: data ready, an RDI interrupt above THRI, read in order. */
	kvmm_serial_write(&s, IER, 0x01);
	CHECK(!line.level);
	CHECK(kvmm_serial_input(&s, (const uint8_t *)"ab", 2) == 2);
	CHECK(line.level);
	CHECK(kvmm_serial_read(&s, IIR) == 0xc4);
	CHECK(kvmm_serial_read(&s, LSR) & 0x01);
	CHECK(kvmm_serial_read(&s, RBR) == 'a');
	CHECK(line.level);
	CHECK(kvmm_serial_read(&s, RBR) == 'b');
	CHECK(!line.level);
	CHECK(!(kvmm_serial_read(&s, LSR) & 0x01));
	CHECK(kvmm_serial_read(&s, IIR) == 0xc1);

	/* Overrun: the FIFO takes what fits; LSR reports OE once. */
	uint8_t many[KVMM_SERIAL_FIFO + 10];
	memset(many, 'z', sizeof(many));
	CHECK(kvmm_serial_input(&s, many, sizeof(many)) == KVMM_SERIAL_FIFO);
	CHECK(kvmm_serial_room(&s) == 0);
	kvmm_serial_write(&s, FCR, 0x03); /* clear the receive FIFO */
	CHECK(kvmm_serial_room(&s) == KVMM_SERIAL_FIFO);
	CHECK(!line.level);

	/* A connected terminal on the modem lines. */
	CHECK(kvmm_serial_read(&s, MSR) == 0xb0);

	/* Loopback: the modem outputs come back as inputs, THR feeds RBR and
	 * nothing leaves the UART. */
	kvmm_serial_write(&s, IER, 0);
	kvmm_serial_write(&s, MCR, 0x10 | 0x0a); /* LOOP, RTS, OUT2 */
	CHECK((kvmm_serial_read(&s, MSR) & 0xf0) == 0x90);
	kvmm_serial_write(&s, THR, 'L');
	CHECK(kvmm_serial_read(&s, LSR) & 0x01);
	CHECK(kvmm_serial_read(&s, RBR) == 'L');
	CHECK(drain(p[0], out, sizeof(out)) == 0);
	kvmm_serial_write(&s, MCR, 0x0b);

	/* Overrun in loopback sets OE, which clears on read. */
	for (int i = 0; i < KVMM_SERIAL_FIFO + 1; i++) {
		kvmm_serial_write(&s, MCR, 0x1b);
		kvmm_serial_write(&s, THR, 'o');
	}
	CHECK((kvmm_serial_read(&s, LSR) & 0x03) == 0x03);
	CHECK((kvmm_serial_read(&s, LSR) & 0x02) == 0);

	/* A console whose output is gone does not stop the guest (kvmm
	 * ignores SIGPIPE, as here). */
	signal(SIGPIPE, SIG_IGN);
	close(p[0]);
	kvmm_serial_write(&s, MCR, 0x0b);
	kvmm_serial_write(&s, THR, '!');
	CHECK(s.out_failed && s.out_fd == -1);
	kvmm_serial_write(&s, THR, '!');
	close(p[1]);
	return check_report();
}
