/* x4 quadrature decoding: every edge of either encoder channel moves the count by one.
 *
 * The channel state is ab = A << 1 | B. The count goes up when A leads B:
 *     ab 00 -> 10 -> 11 -> 01 -> 00 (+1 per step), the reverse order counts down.
 * A step that changes both channels at once cannot be decoded (an edge was missed: too fast, or
 * noise): it moves nothing and counts as an error.
 *
 * Call ebm_quadrature_update() on every edge of either channel with both channels read together;
 * reading the same state again is harmless (no step). */
#ifndef EBMFW_QUADRATURE_H
#define EBMFW_QUADRATURE_H

#include <stdint.h>

#include "ebmfw/counter.h"

#define EBM_QUADRATURE_BOTH_CHANGED 2   /* table entry of an impossible step */

/* The edge interrupt only adds to a 16-bit sum (a 32-bit add costs an 8-bit MCU twice the
 * registers and cycles); ebm_quadrature_count(), called at every tick, folds it into the total. */
struct ebm_quadrature {
    int32_t count;                      /* up to the last ebm_quadrature_count() */
    int16_t pending;                    /* steps since then */
    uint16_t errors;                    /* impossible steps, saturating */
    uint8_t ab;                         /* channel state last seen */
};

/* Step per (previous ab << 2 | new ab): -1, 0, +1 or EBM_QUADRATURE_BOTH_CHANGED. */
extern const int8_t ebm_quadrature_steps[16];

static inline void ebm_quadrature_init(struct ebm_quadrature *q, uint8_t ab)
{
    q->count = 0;
    q->pending = 0;
    q->errors = 0;
    q->ab = ab;
}

static inline void ebm_quadrature_update(struct ebm_quadrature *q, uint8_t ab)
{
    int8_t step = ebm_quadrature_steps[(uint8_t)(q->ab << 2 | ab)];
    if (step == EBM_QUADRATURE_BOTH_CHANGED)
        ebm_count(&q->errors);
    else
        q->pending = (int16_t)(q->pending + step);
    q->ab = ab;
}

/* The count now. Not concurrently with ebm_quadrature_update() (on the MCU: from the tick
 * interrupt), and at least every 32767 edges (at 500 Hz: 16 million edges a second). */
static inline int32_t ebm_quadrature_count(struct ebm_quadrature *q)
{
    q->count += q->pending;
    q->pending = 0;
    return q->count;
}

#endif
