/* kvmm: how a legacy device model (serial.h, i8042.h) drives its interrupt
 * line. */
#ifndef KINDLING_KVMM_IRQ_H
#define KINDLING_KVMM_IRQ_H

#include <stdbool.h>

/* An interrupt line driven by a device model: |level| true = asserted. */
typedef void (*kvmm_irq_line_fn)(void *ctx, bool level);

#endif
