/* The x4 transition table (see quadrature.h for the channel order). */
#include "ebmfw/quadrature.h"

#define X EBM_QUADRATURE_BOTH_CHANGED

const int8_t ebm_quadrature_steps[16] = {
    /* from 00 to: 00  01  10  11 */        0, -1, +1,  X,
    /* from 01 to: 00  01  10  11 */       +1,  0,  X, -1,
    /* from 10 to: 00  01  10  11 */       -1,  X,  0, +1,
    /* from 11 to: 00  01  10  11 */        X, +1, -1,  0,
};
