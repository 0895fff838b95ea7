/* MC-PILCO rollout cost and policy gradient in one call: the float32 CPU kernel.
 *
 * The same computation as rollout.py's `torch_cost_and_gradient` (its docstring and
 * docs/ALGORITHM.md §5-§6 give the equations), with the same operands, so that the two are
 * checked against each other and against autograd. What the kernel changes is only how the work
 * is scheduled: the per-particle arithmetic of a time step runs as one loop over particles
 * instead of ~80 tensor operations, and the passes over the (M, N) kernel values and the (M, B)
 * policy activations are fused (exponent, exp2 and the products that read them in one sweep).
 * The two large products per GP and time step, k (M,N) @ [V^T|alpha] (N,R+1) forward and
 * v (M,R) @ V (R,N) backward, go to the BLAS sgemm that torch itself uses (passed in).
 *
 * Notation (rollout.py): M particles, H steps, B policy centres, G GPs, N support points (padded),
 * R variance directions (padded), D = 6 GP inputs z = [p, pdot, thetadot, sin, cos, u],
 * 5 policy features f = z[:5]. Exponents are in log2 units. Arguments are row-major as torch
 * holds them; inside, everything per particle is stored particle-last ("structure of arrays",
 * e.g. k as (G, N, M)), so the per-particle arithmetic vectorises over particles and the two
 * sgemm products run in their faster layout (10-20% faster than particle-first at N = 120).
 * Only the policy activations stay (M, B): their dropout masks arrive that way.
 * Compiled at first use by native_rollout.py with -O3 -march=native; no libm calls in the
 * vectorised loops (exp2 below is a polynomial), so they vectorise without -ffast-math.
 */
#define _GNU_SOURCE   /* sincosf */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef void (*sgemm_fn)(const char *transa, const char *transb, const int *m, const int *n,
                         const int *k, const float *alpha, const float *a, const int *lda,
                         const float *b, const int *ldb, const float *beta, float *c,
                         const int *ldc);

/* Mirrors native_rollout.RolloutArgs field by field (its size is compared at load,
 * rollout_args_size). state_size, feature_size, input_size: the sizes of a state, of the policy
 * features and of a GP input as the caller's tensors have them; the kernel is written for 4, 5
 * and 6 (STATE, FEATURES, GP_INPUTS) and answers ROLLOUT_BAD_SHAPE to anything else, and to
 * sizes that cannot be, rather than read out of bounds. */
typedef struct {
    int M, H, B, G, N, R, state_size, feature_size, input_size;
    int forward_only;      /* 1: the forward pass alone (states, cost), no gradient */
    float umax, inv_lt, inv_lp, max_exponent2, min_variance, min_std;
    const float *x0;       /* (M, 4) */
    const float *il;       /* (5) policy inverse lengthscales */
    const float *AsT_aug;  /* (7, B) [As^T; 1; -|As|^2] log2 e */
    const float *w_eff;    /* (B) weights / (1 - p) */
    const float *wAsT;     /* (5, B) (w_eff As)^T */
    const uint8_t *keep;   /* (H, M, B) 0/1 dropout masks, or NULL */
    const float *inv_ls;   /* (G, 6) GP inverse lengthscales */
    const float *centre;   /* (G, 6) */
    const float *VA;       /* (G, N, R+1) [V^T | alpha] */
    const float *V;        /* (G, R, N) */
    const float *ZT;       /* (G, 6, N) */
    const float *alpha;    /* (G, N) */
    const float *sf2;      /* (G) */
    const float *F;        /* (4, 4) x_{t+1} = x_t F + Delta Gm */
    const float *Gm;       /* (G, 4) */
    const float *eps;      /* (H, M, G) standard normal */
    float *workspace;      /* rollout_workspace_floats(...) floats */
    float *cost_per_step;  /* (H) out */
    float *final_x;        /* (M, 4) out */
    float *V_sum;          /* (6, B) out: sum_t [g_s; g_s fs]^T phi */
    float *g_log_f;        /* (5) out: sum_t sum_m g_fs fs */
    float *states;         /* (H+1, M, 4) out, every particle's trajectory, or NULL */
    sgemm_fn sgemm;
} rollout_args;

enum { STATE = 4, FEATURES = 5, GP_INPUTS = 6 };
/* What rollout_cost_and_gradient returns (native_rollout.STATUS says it in words). */
enum { ROLLOUT_OK = 0, ROLLOUT_BAD_SHAPE = 1 };

size_t rollout_args_size(void) { return sizeof(rollout_args); }

/* Tape rows per step: particle values (P_*, each a row of M) and GP values (per GP). */
enum { P_FS = 0, P_S = 5, P_TAU = 6, P_SIN = 7, P_COS = 8, P_ROWS = 9 };
enum { Q_ZS = 0, Q_VV = 6, Q_MEAN = 7, Q_STD = 8, Q_ROWS = 9 };

/* 2^x to < 1e-7 relative error: x = n + f, |f| <= 1/2, 2^f by a degree-6 polynomial
 * (a relative least-squares fit on [-1/2, 1/2], docs/ALGORITHM.md §6), 2^n in the exponent
 * bits. x is clamped below at -lo (callers pass 78 log2 e, as the torch path clamps) and
 * above at 126, so 2^n stays a normal float. */
static inline float exp2_poly(float x, float lo) {
    x = x < -lo ? -lo : x;
    x = x > 126.0f ? 126.0f : x;
    const float n = floorf(x + 0.5f);
    const float f = x - n;
    float p = 1.533757750e-04f;
    p = p * f + 1.339985989e-03f;
    p = p * f + 9.618519805e-03f;
    p = p * f + 5.550329015e-02f;
    p = p * f + 2.402264625e-01f;
    p = p * f + 6.931471825e-01f;
    p = p * f + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

#define LOG2E 1.44269504088896341f

typedef struct {   /* workspace carved into named arrays (sizes in layout()) */
    float *phi, *k, *P, *tp, *tg, *gc;               /* tape, one slice per step */
    float *Q, *x, *za, *gx, *gz, *gmean, *cvar, *acc, *U, *mask;   /* scratch */
} buffers;

static size_t layout(const rollout_args *a, buffers *b) {
    const size_t M = a->M, H = a->H, B = a->B, G = a->G, N = a->N, R1 = a->R + 1;
    const size_t sizes[] = {H * M * B, H * G * N * M, H * G * R1 * M, H * P_ROWS * M,
                            H * G * Q_ROWS * M, H * 2 * M,
                            G * N * M, 4 * M, 6 * M, 4 * M, 6 * M, G * M, G * M, 6 * M,
                            5 * M, B};
    float **slots[] = {&b->phi, &b->k, &b->P, &b->tp, &b->tg, &b->gc, &b->Q, &b->x, &b->za,
                       &b->gx, &b->gz, &b->gmean, &b->cvar, &b->acc, &b->U, &b->mask};
    size_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; ++i) {
        if (b) *slots[i] = a->workspace + total;
        total += (sizes[i] + 15) & ~(size_t)15;   /* 64-byte aligned starts */
    }
    return total + 16;
}

size_t rollout_workspace_floats(const rollout_args *a) { return layout(a, NULL); }

/* The backward kernel sum, acc[d][m] = sum_n k_nm (gm_m alpha_n + c_m q_nm) Z_nd, is a long
 * reduction over n per particle: 32 particles at a time keep their 6 sums in 12 vector
 * registers (GCC vector types; as plain arrays the compiler kept them in memory, and every
 * step over n waited on a store). The last M % 32 particles take the plain loop. */
typedef float v16f __attribute__((vector_size(64)));
#define BLOCK 32

static inline v16f load16(const float *p) {
    v16f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store16(float *p, v16f v) { memcpy(p, &v, sizeof v); }

static void accumulate_dk_block(float *acc, const float *k, const float *q, const float *gm,
                                const float *c, const float *alpha, const float *Z, int N,
                                int M, int m0) {
    const v16f g0 = load16(gm + m0), g1 = load16(gm + m0 + 16);
    const v16f c0 = load16(c + m0), c1 = load16(c + m0 + 16);
    v16f a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0}, a20 = {0}, a21 = {0}, a30 = {0},
         a31 = {0}, a40 = {0}, a41 = {0}, a50 = {0}, a51 = {0};
    for (int n = 0; n < N; ++n) {
        const float *kr = k + (size_t)n * M + m0, *qr = q + (size_t)n * M + m0;
        const float an = alpha[n];
        const v16f w0 = load16(kr) * (g0 * an + c0 * load16(qr));
        const v16f w1 = load16(kr + 16) * (g1 * an + c1 * load16(qr + 16));
        const float z0 = Z[n], z1 = Z[N + n], z2 = Z[2 * N + n], z3 = Z[3 * N + n],
                    z4 = Z[4 * N + n], z5 = Z[5 * N + n];
        a00 += w0 * z0;
        a01 += w1 * z0;
        a10 += w0 * z1;
        a11 += w1 * z1;
        a20 += w0 * z2;
        a21 += w1 * z2;
        a30 += w0 * z3;
        a31 += w1 * z3;
        a40 += w0 * z4;
        a41 += w1 * z4;
        a50 += w0 * z5;
        a51 += w1 * z5;
    }
    const v16f sums[6][2] = {{a00, a01}, {a10, a11}, {a20, a21}, {a30, a31}, {a40, a41},
                             {a50, a51}};
    for (int d = 0; d < 6; ++d) {
        store16(acc + (size_t)d * M + m0, sums[d][0]);
        store16(acc + (size_t)d * M + m0 + 16, sums[d][1]);
    }
}

static void accumulate_dk_tail(float *acc, const float *k, const float *q, const float *gm,
                               const float *c, const float *alpha, const float *Z, int N,
                               int M, int m0) {
    for (int d = 0; d < 6; ++d) memset(acc + (size_t)d * M + m0, 0, sizeof(float) * (M - m0));
    for (int n = 0; n < N; ++n) {
        const float *kr = k + (size_t)n * M, *qr = q + (size_t)n * M;
#pragma omp simd
        for (int m = m0; m < M; ++m) {
            const float wk = kr[m] * (gm[m] * alpha[n] + c[m] * qr[m]);
            for (int d = 0; d < 6; ++d) acc[(size_t)d * M + m] += wk * Z[d * N + n];
        }
    }
}

/* states (4, M), particle-minor as the kernel keeps them, to (M, 4) as the caller's tensors */
static void store_states(float *out, const float *x, int M) {
    for (int m = 0; m < M; ++m)
        for (int j = 0; j < 4; ++j) out[4 * m + j] = x[j * M + m];
}

int rollout_cost_and_gradient(const rollout_args *a) {
    if (a->state_size != STATE || a->feature_size != FEATURES || a->input_size != GP_INPUTS
        || a->M < 1 || a->H < 1
        || a->B < 1 || a->G < 1 || a->N < 1 || a->R < 0 || a->R > a->N)
        return ROLLOUT_BAD_SHAPE;
    const int M = a->M, H = a->H, B = a->B, G = a->G, N = a->N, R = a->R, R1 = a->R + 1;
    const float lo = a->max_exponent2, one = 1.0f, zero = 0.0f;
    buffers w;
    layout(a, &w);
    float *mask = w.mask;   /* one particle's dropout mask as floats (all ones without) */
    for (int b = 0; b < B; ++b) mask[b] = 1.0f;
    float *x = w.x;  /* states (4, M) */
    for (int m = 0; m < M; ++m)
        for (int j = 0; j < 4; ++j) x[j * M + m] = a->x0[4 * m + j];
    if (a->states) store_states(a->states, x, M);

    /* ---- forward ---- */
    for (int t = 0; t < H; ++t) {
        float *phi_t = w.phi + (size_t)t * M * B;
        float *k_t = w.k + (size_t)t * G * N * M;
        float *P_t = w.P + (size_t)t * G * R1 * M;
        float *tp = w.tp + (size_t)t * P_ROWS * M;
        float *tg = w.tg + (size_t)t * G * Q_ROWS * M;
        const uint8_t *keep_t = a->keep ? a->keep + (size_t)t * M * B : NULL;
        const float *eps_t = a->eps + (size_t)t * M * G;
        float *fs[5] = {tp + P_FS * M, tp + (P_FS + 1) * M, tp + (P_FS + 2) * M,
                        tp + (P_FS + 3) * M, tp + (P_FS + 4) * M};
        float *sn = tp + P_SIN * M, *cs = tp + P_COS * M, *s = tp + P_S * M,
              *tau = tp + P_TAU * M;
        for (int m = 0; m < M; ++m) sincosf(x[2 * M + m], &sn[m], &cs[m]);
#pragma omp simd
        for (int m = 0; m < M; ++m) {
            fs[0][m] = x[m] * a->il[0];
            fs[1][m] = x[M + m] * a->il[1];
            fs[2][m] = x[3 * M + m] * a->il[2];
            fs[3][m] = sn[m] * a->il[3];
            fs[4][m] = cs[m] * a->il[4];
        }
        /* policy: phi_b = exp(-|fs - As_b|^2) (dropout-masked), s = phi . w_eff */
        const float *A = a->AsT_aug;
        for (int m = 0; m < M; ++m) {
            const float f0 = fs[0][m], f1 = fs[1][m], f2 = fs[2][m], f3 = fs[3][m],
                        f4 = fs[4][m];
            const float sq = -(f0 * f0 + f1 * f1 + f2 * f2 + f3 * f3 + f4 * f4);
            float *ph = phi_t + (size_t)m * B;
            if (keep_t) {   /* widened apart: read in the exp2 loop, bytes slowed it */
                const uint8_t *kp = keep_t + (size_t)m * B;
#pragma omp simd
                for (int b = 0; b < B; ++b) mask[b] = (float)kp[b];
            }
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int b = 0; b < B; ++b) {
                const float v = mask[b] * exp2_poly(2.0f * (f0 * A[b] + f1 * A[B + b]
                                                          + f2 * A[2 * B + b] + f3 * A[3 * B + b]
                                                          + f4 * A[4 * B + b])
                                                  + sq * A[5 * B + b] + A[6 * B + b], lo);
                ph[b] = v;
                acc += v * a->w_eff[b];
            }
            s[m] = acc;
            tau[m] = tanhf(acc / a->umax);
        }
        float *xn = w.gz;   /* next states (4, M); gz is free until the backward pass */
#pragma omp simd
        for (int m = 0; m < M; ++m) {
            const float x0 = x[m], x1 = x[M + m], x2 = x[2 * M + m], x3 = x[3 * M + m];
            xn[m] = x0 * a->F[0] + x1 * a->F[4] + x2 * a->F[8] + x3 * a->F[12];
            xn[M + m] = x0 * a->F[1] + x1 * a->F[5] + x2 * a->F[9] + x3 * a->F[13];
            xn[2 * M + m] = x0 * a->F[2] + x1 * a->F[6] + x2 * a->F[10] + x3 * a->F[14];
            xn[3 * M + m] = x0 * a->F[3] + x1 * a->F[7] + x2 * a->F[11] + x3 * a->F[15];
        }
        for (int g = 0; g < G; ++g) {
            float *tgg = tg + (size_t)g * Q_ROWS * M;
            const float *il = a->inv_ls + 6 * g, *ce = a->centre + 6 * g;
            float *za = w.za;   /* (6, M): zs = z / l - centre */
#pragma omp simd
            for (int m = 0; m < M; ++m) {
                const float z[6] = {x[m], x[M + m], x[3 * M + m], sn[m], cs[m],
                                    tau[m] * a->umax};
                for (int d = 0; d < 6; ++d) {
                    const float v = z[d] * il[d] - ce[d];
                    za[d * M + m] = v;
                    tgg[(Q_ZS + d) * M + m] = v;
                }
            }
            /* k (N, M) = sf2 exp(-|zs - Z_n|^2 / 2), from the differences: the augmented
             * product zs.Z - |zs|^2/2 - |Z|^2/2 of the torch path costs as much here and
             * loses float32 digits to cancellation (docs/ALGORITHM.md §7) */
            const float *Z = a->ZT + (size_t)g * 6 * N;
            const float log2_sf2 = log2f(a->sf2[g]), half_log2e = 0.5f * LOG2E;
            float *kg = k_t + (size_t)g * N * M;
            for (int n = 0; n < N; ++n) {
                const float c0 = Z[n], c1 = Z[N + n], c2 = Z[2 * N + n], c3 = Z[3 * N + n],
                            c4 = Z[4 * N + n], c5 = Z[5 * N + n];
                float *kr = kg + (size_t)n * M;
#pragma omp simd
                for (int m = 0; m < M; ++m) {
                    const float d0 = za[m] - c0, d1 = za[M + m] - c1, d2 = za[2 * M + m] - c2,
                                d3 = za[3 * M + m] - c3, d4 = za[4 * M + m] - c4,
                                d5 = za[5 * M + m] - c5;
                    kr[m] = exp2_poly(log2_sf2 - half_log2e * (d0 * d0 + d1 * d1 + d2 * d2
                                                               + d3 * d3 + d4 * d4 + d5 * d5),
                                      lo);
                }
            }
            /* P (R+1, M) = ([V^T | alpha])^T k: column-major M x (R+1) = k (M x N) VA */
            float *Pg = P_t + (size_t)g * R1 * M;
            a->sgemm("N", "T", &M, &R1, &N, &one, kg, &M, a->VA + (size_t)g * N * R1, &R1,
                     &zero, Pg, &M);
            float *vv = tgg + Q_VV * M, *mean = tgg + Q_MEAN * M, *sd = tgg + Q_STD * M;
            memset(vv, 0, sizeof(float) * (size_t)M);
            for (int q = 0; q < R; ++q) {
                const float *pq = Pg + (size_t)q * M;
#pragma omp simd
                for (int m = 0; m < M; ++m) vv[m] += pq[m] * pq[m];
            }
            const float *Gm = a->Gm + 4 * g;
#pragma omp simd
            for (int m = 0; m < M; ++m) {
                float var = a->sf2[g] - vv[m];
                var = var > a->min_variance ? var : a->min_variance;
                sd[m] = sqrtf(var);
                mean[m] = Pg[(size_t)R * M + m];
                const float delta = mean[m] + sd[m] * eps_t[(size_t)m * G + g];
                for (int j = 0; j < 4; ++j) xn[j * M + m] += delta * Gm[j];
            }
        }
        memcpy(x, xn, sizeof(float) * 4 * (size_t)M);
        if (a->states) store_states(a->states + (size_t)(t + 1) * M * 4, x, M);
        /* saturating cost c = 1 - exp(-e_th^2 - e_p^2), and dc/dx / M for the backward pass */
        float *gc_t = w.gc + (size_t)t * 2 * M;
        float cost = 0.0f;
#pragma omp simd reduction(+ : cost)
        for (int m = 0; m < M; ++m) {
            const float th = x[2 * M + m];
            const float e_th = (fabsf(th) - 3.14159265358979f) * a->inv_lt;
            const float e_p = x[m] * a->inv_lp;
            const float gs = exp2_poly(-(e_th * e_th + e_p * e_p) * LOG2E, lo);
            cost += gs;
            const float sgn = (th > 0.0f) - (th < 0.0f);
            gc_t[m] = gs * e_p * (2.0f * a->inv_lp / M);
            gc_t[M + m] = gs * e_th * sgn * (2.0f * a->inv_lt / M);
        }
        a->cost_per_step[t] = 1.0f - cost / M;
    }
    store_states(a->final_x, x, M);
    if (a->forward_only) return ROLLOUT_OK;

    /* ---- backward ---- */
    float *gx = w.gx;   /* dJ/dx (4, M) */
    memset(gx, 0, sizeof(float) * 4 * (size_t)M);
    memset(a->V_sum, 0, sizeof(float) * 6 * (size_t)B);
    memset(a->g_log_f, 0, sizeof(float) * 5);
    for (int t = H - 1; t >= 0; --t) {
        const float *phi_t = w.phi + (size_t)t * M * B;
        const float *k_t = w.k + (size_t)t * G * N * M;
        const float *P_t = w.P + (size_t)t * G * R1 * M;
        const float *tp = w.tp + (size_t)t * P_ROWS * M;
        const float *tg = w.tg + (size_t)t * G * Q_ROWS * M;
        const float *gc_t = w.gc + (size_t)t * 2 * M;
        const float *eps_t = a->eps + (size_t)t * M * G;
        float *gz = w.gz;   /* dJ/dz (6, M) */
        memset(gz, 0, sizeof(float) * 6 * (size_t)M);
#pragma omp simd
        for (int m = 0; m < M; ++m) {
            gx[m] += gc_t[m];
            gx[2 * M + m] += gc_t[M + m];
        }
        for (int g = 0; g < G; ++g) {
            const float *tgg = tg + (size_t)g * Q_ROWS * M;
            const float *Gm = a->Gm + 4 * g;
            const float *sd = tgg + Q_STD * M;
            float *gm = w.gmean + (size_t)g * M, *cv = w.cvar + (size_t)g * M;
#pragma omp simd
            for (int m = 0; m < M; ++m) {
                gm[m] = gx[m] * Gm[0] + gx[M + m] * Gm[1] + gx[2 * M + m] * Gm[2]
                        + gx[3 * M + m] * Gm[3];
                /* var = sf2 - |v|^2, std = sqrt(var): c = -2 dL/dvar = -dL/dstd / std */
                cv[m] = sd[m] > a->min_std ? -gm[m] * eps_t[(size_t)m * G + g] / sd[m] : 0.0f;
            }
            /* Q (N, M) = K^-1 k ~ V^T v: column-major M x N = v (M x R) V (R x N) */
            float *Qg = w.Q + (size_t)g * N * M;
            a->sgemm("N", "T", &M, &N, &R, &one, P_t + (size_t)g * R1 * M, &M,
                     a->V + (size_t)g * R * N, &N, &zero, Qg, &M);
            /* dL/dk_n = gm alpha_n + c q_n;  dL/dzs = sum_n dL/dk_n k_n (Z_n - zs) */
            const float *Z = a->ZT + (size_t)g * 6 * N, *al = a->alpha + (size_t)g * N;
            const float *kg = k_t + (size_t)g * N * M;
            float *acc = w.acc;   /* (6, M): sum_n dL/dk_n k_n Z_n */
            int m0 = 0;
            for (; m0 + BLOCK <= M; m0 += BLOCK)
                accumulate_dk_block(acc, kg, Qg, gm, cv, al, Z, N, M, m0);
            if (m0 < M) accumulate_dk_tail(acc, kg, Qg, gm, cv, al, Z, N, M, m0);
            const float *il = a->inv_ls + 6 * g;
            const float *mean = tgg + Q_MEAN * M, *vv = tgg + Q_VV * M;
#pragma omp simd
            for (int m = 0; m < M; ++m) {
                const float wsum = gm[m] * mean[m] + cv[m] * vv[m];
                for (int d = 0; d < 6; ++d)
                    gz[d * M + m] += (acc[d * M + m] - tgg[(Q_ZS + d) * M + m] * wsum) * il[d];
            }
        }
        /* policy: V_sum += [g_s; g_s fs]^T phi, U = phi (w_eff As) */
        const float *s = tp + P_S * M, *tau = tp + P_TAU * M;
        const float *W = a->wAsT;
        float *Sv = a->V_sum;
        for (int m = 0; m < M; ++m) {
            const float g_s = gz[5 * M + m] * (1.0f - tau[m] * tau[m]);
            const float gf0 = g_s * tp[P_FS * M + m], gf1 = g_s * tp[(P_FS + 1) * M + m],
                        gf2 = g_s * tp[(P_FS + 2) * M + m], gf3 = g_s * tp[(P_FS + 3) * M + m],
                        gf4 = g_s * tp[(P_FS + 4) * M + m];
            const float *ph = phi_t + (size_t)m * B;
            float u0 = 0.0f, u1 = 0.0f, u2 = 0.0f, u3 = 0.0f, u4 = 0.0f;
#pragma omp simd reduction(+ : u0, u1, u2, u3, u4)
            for (int b = 0; b < B; ++b) {
                const float v = ph[b];
                Sv[b] += g_s * v;
                Sv[B + b] += gf0 * v;
                Sv[2 * B + b] += gf1 * v;
                Sv[3 * B + b] += gf2 * v;
                Sv[4 * B + b] += gf3 * v;
                Sv[5 * B + b] += gf4 * v;
                u0 += v * W[b];
                u1 += v * W[B + b];
                u2 += v * W[2 * B + b];
                u3 += v * W[3 * B + b];
                u4 += v * W[4 * B + b];
            }
            w.U[m] = u0;
            w.U[M + m] = u1;
            w.U[2 * M + m] = u2;
            w.U[3 * M + m] = u3;
            w.U[4 * M + m] = u4;
        }
        float glog[5] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        for (int d = 0; d < 5; ++d) {
            const float *fs = tp + (P_FS + d) * M, *U = w.U + d * M;
            float *gz_d = gz + d * M;   /* becomes dJ/df_d */
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int m = 0; m < M; ++m) {
                const float g_s = gz[5 * M + m] * (1.0f - tau[m] * tau[m]);
                const float g_fs = 2.0f * g_s * (U[m] - fs[m] * s[m]);
                acc += g_fs * fs[m];
                gz_d[m] += g_fs * a->il[d];
            }
            glog[d] = acc;
        }
        for (int d = 0; d < 5; ++d) a->g_log_f[d] += glog[d];
        /* features -> state: f = [p, pdot, thetadot, sin theta, cos theta]; gx = gx F^T + . */
        const float *sn = tp + P_SIN * M, *cs = tp + P_COS * M;
        const float *F = a->F;
#pragma omp simd
        for (int m = 0; m < M; ++m) {
            const float g0 = gx[m], g1 = gx[M + m], g2 = gx[2 * M + m], g3 = gx[3 * M + m];
            const float gfx[4] = {gz[m], gz[M + m],
                                  gz[3 * M + m] * cs[m] - gz[4 * M + m] * sn[m], gz[2 * M + m]};
            for (int j = 0; j < 4; ++j)
                gx[j * M + m] = gfx[j] + g0 * F[4 * j] + g1 * F[4 * j + 1] + g2 * F[4 * j + 2]
                                + g3 * F[4 * j + 3];
        }
    }
    return ROLLOUT_OK;
}
