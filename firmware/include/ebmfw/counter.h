/* Saturating event counters (PROTOCOL.md COUNTERS): a counter that reaches its maximum stays there
 * instead of wrapping round to a small, misleading number. */
#ifndef EBMFW_COUNTER_H
#define EBMFW_COUNTER_H

#include <stdint.h>

#define EBM_COUNTER_MAX UINT16_MAX

/* (always inlined: a call costs more than the addition on an 8-bit MCU) */
static inline __attribute__((always_inline)) void ebm_count_add(uint16_t *counter, uint16_t n)
{
    *counter = (uint16_t)(*counter > EBM_COUNTER_MAX - n ? EBM_COUNTER_MAX : *counter + n);
}

static inline __attribute__((always_inline)) void ebm_count(uint16_t *counter)
{
    ebm_count_add(counter, 1);
}

#endif
