/* The kinship kernel in C: Σδ_i and Σδ_iδ_j (float64) for one chunk of a base and N models.
 *
 * Called from Python through ctypes (kinmerge._kernels), which releases the GIL for the call, so
 * the scan's worker threads reduce chunks in parallel. Built by setup.py as an *optional*
 * extension: without a compiler kinmerge falls back to numpy (same numbers, slower).
 *
 * Layout, for speed (measured: docs/benchmarks.md, docs/decisions.md):
 *   * fused: each raw value is widened straight into a register, δ = model - base is formed
 *     there, and every Σδ_i and Σδ_i·δ_j (i <= j) is accumulated in registers; nothing is
 *     stored in between. Up to KM_FUSED models take one such pass (with spills on 16-register
 *     machines, still faster than widening into arrays first: measured);
 *   * more models: per block of KM_BLOCK positions, the triangle is tiled, numba-style, into
 *     diagonal tiles (a group of models with itself) and cross tiles (group x group), each a
 *     fused pass over the block's raw inputs (L1 resident by then);
 *   * positions go in blocks of KM_BLOCK: each block's accumulators are reduced (in a fixed
 *     lane order) and added to the chunk's totals, in block order;
 *   * inputs of mixed dtypes are first widened per block into float64 scratch arrays, and the
 *     same passes run on those;
 *   * BF16 on AVX2/AVX-512: a raw window is interleaved with zeros (bits << 16 in one shuffle),
 *     so the lanes take positions in a fixed permuted order, the same for every input.
 *
 * The body is compiled up to three times from this one file (it includes itself): portable,
 * AVX2+FMA+F16C (4 doubles a vector) and AVX-512 (8 doubles a vector, 32 registers), chosen at
 * run time with __builtin_cpu_supports. Every reduction is written with explicit lanes (GCC/Clang
 * vector extensions), so the order of additions is fixed by this source and the machine's
 * instruction set, never by a vectoriser: results are bit-identical from run to run. Paths differ
 * in the last bits (lane count, FMA); tests compare them. NaN and Inf propagate (no -ffast-math,
 * no -ffinite-math-only): the scan relies on a non-finite sum to find a damaged tensor.
 *
 * Widening is exact: BF16 by its bits (bits << 16 is the float32 of the same value), F16 by a
 * bit-level conversion (normals, subnormals, ±0, ±Inf, NaN) or F16C where the CPU has it.
 */
#ifndef KM_PASS

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define KM_X86 1
#include <immintrin.h>
#endif

enum { KM_F64 = 0, KM_F32 = 1, KM_F16 = 2, KM_BF16 = 3 };
enum { KM_ISA_BEST = 0, KM_ISA_GENERIC = 1, KM_ISA_AVX2 = 2, KM_ISA_AVX512 = 3 };

#define KM_BLOCK 512 /* positions per block; a multiple of every step (unroll x lanes) */
#define KM_FUSED 6   /* at most this many models take one fused pass */
#define KM_MAXW 8    /* the widest vector, in doubles */
#define KM_MAXG 4    /* the largest group of a cross tile */
#define KM_PAIRS(n) ((n) * ((n) + 1) / 2)

#define KM_INLINE static inline __attribute__((always_inline))

static const size_t km_size[4] = {8, 4, 2, 2};

/* Elements [lo, hi) of a raw array, zero-padded to width elements (zeros add nothing). */
static void copy_tail(const void *src, int dt, int64_t lo, int64_t hi, unsigned char *out, int width) {
    memset(out, 0, (size_t)width * 8);
    memcpy(out, (const unsigned char *)src + lo * km_size[dt], (size_t)(hi - lo) * km_size[dt]);
}

static int all_same(int base_dtype, const int *model_dtypes, int n) {
    for (int i = 0; i < n; i++)
        if (model_dtypes[i] != base_dtype) return 0;
    return 1;
}

typedef void (*km_body)(const void *, int, const void *const *, const int *, int, int64_t, double *, double *,
                        double *);

/* Pass 1: portable (vectors of 4 doubles, lowered to whatever the target has). */
#define KM_PASS 1
#define KM_FN(name) name##_generic
#define KM_VW 4
#define KM_GROUP 3
#include "_kinship.c"
#undef KM_FN
#undef KM_VW
#undef KM_GROUP
#undef KM_PASS

#ifdef KM_X86
/* Pass 2: AVX2 + FMA + F16C. */
#define KM_PASS 2
#define KM_FN(name) name##_avx2
#define KM_VW 4
#define KM_GROUP 3
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif
#include "_kinship.c"
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#undef KM_FN
#undef KM_VW
#undef KM_GROUP
#undef KM_PASS

/* Pass 3: AVX-512F (+ the above). */
#define KM_PASS 3
#define KM_FN(name) name##_avx512
#define KM_VW 8
#define KM_GROUP 4
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma,f16c")
#endif
#include "_kinship.c"
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#undef KM_FN
#undef KM_VW
#undef KM_GROUP
#undef KM_PASS
#endif

/* -- exported ---------------------------------------------------------------------------------- */

static int km_has(int isa) {
#ifdef KM_X86
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (isa == KM_ISA_AVX2) return avx2;
    if (isa == KM_ISA_AVX512) return avx2 && __builtin_cpu_supports("avx512f");
#endif
    return isa == KM_ISA_GENERIC;
}

static int km_best(void) {
    if (km_has(KM_ISA_AVX512)) return KM_ISA_AVX512;
    if (km_has(KM_ISA_AVX2)) return KM_ISA_AVX2;
    return KM_ISA_GENERIC;
}

/* The code paths this CPU can run, as a bit mask of 1 << KM_ISA_*; and the one used by default. */
int km_isa_mask(void) {
    int mask = 0;
    for (int isa = KM_ISA_GENERIC; isa <= KM_ISA_AVX512; isa++)
        if (km_has(isa)) mask |= 1 << isa;
    return mask;
}

int km_isa_best(void) { return km_best(); }

/* Σδ_i into sums (n) and Σδ_iδ_j into gram (n x n, row-major, symmetric) for m positions of a base
 * and n models, raw arrays of the KM_* dtypes; both outputs are overwritten. isa: KM_ISA_BEST or
 * a path from km_isa_mask (tests compare them). Returns 0, or -1 for bad arguments, a path this
 * CPU lacks, or no memory. */
int km_accumulate_isa(const void *base, int base_dtype, const void *const *models, const int *model_dtypes,
                      int n_models, int64_t m, double *sums, double *gram, int isa) {
    int n = n_models;
    if (n < 1 || m < 0 || base_dtype < KM_F64 || base_dtype > KM_BF16) return -1;
    for (int i = 0; i < n; i++)
        if (model_dtypes[i] < KM_F64 || model_dtypes[i] > KM_BF16) return -1;
    if (isa == KM_ISA_BEST) isa = km_best();
    if (!km_has(isa)) return -1;
    double *scratch = NULL;
    if (!all_same(base_dtype, model_dtypes, n)) {
        scratch = (double *)malloc(sizeof(double) * KM_BLOCK * ((size_t)n + 1));
        if (!scratch) return -1;
    }
    for (int i = 0; i < n; i++) sums[i] = 0.0;
    for (int64_t i = 0; i < (int64_t)n * n; i++) gram[i] = 0.0;
    km_body body = accumulate_generic;
#ifdef KM_X86
    if (isa == KM_ISA_AVX2) body = accumulate_avx2;
    if (isa == KM_ISA_AVX512) body = accumulate_avx512;
#endif
    body(base, base_dtype, models, model_dtypes, n, m, sums, gram, scratch);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++) gram[(int64_t)i * n + j] = gram[(int64_t)j * n + i];
    free(scratch);
    return 0;
}

/* An importable (empty) module, so the packaging machinery builds and finds the library. */
static struct PyModuleDef km_module = {
    PyModuleDef_HEAD_INIT, "_kinship_c", "kinmerge's C kinship kernel; called through ctypes (kinmerge._kernels).",
    -1, NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kinship_c(void) { return PyModule_Create(&km_module); }

#else /* KM_PASS: the body, once per instruction set; its names carry the pass's suffix --------- */

typedef double KM_FN(vd) __attribute__((vector_size(8 * KM_VW)));
typedef float KM_FN(vf) __attribute__((vector_size(4 * KM_VW)));
typedef uint32_t KM_FN(vu) __attribute__((vector_size(4 * KM_VW)));
typedef int32_t KM_FN(vi) __attribute__((vector_size(4 * KM_VW)));
#define vd KM_FN(vd)
#define vf KM_FN(vf)
#define vu KM_FN(vu)
#define vi KM_FN(vi)

/* Independent accumulator sets (more chains in flight) for a diagonal tile of r models. */
#if KM_PASS == 3
#define KM_UNROLL(r) ((r) <= 2 ? 4 : (r) <= 3 ? 2 : 1)
#else
#define KM_UNROLL(r) ((r) <= 2 ? 2 : 1)
#endif
#define KM_MAXU 4

KM_INLINE vd KM_FN(vload)(const double *p) {
    vd v;
    memcpy(&v, p, sizeof v);
    return v;
}

KM_INLINE double KM_FN(hsum)(vd a) {
#if KM_VW == 8
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
#else
    return (a[0] + a[1]) + (a[2] + a[3]);
#endif
}

/* acc + x * y: one fused multiply-add where the CPU has FMA (rounded once), else two steps. */
KM_INLINE vd KM_FN(madd)(vd acc, vd x, vd y) {
#if KM_PASS == 3
    return (vd)_mm512_fmadd_pd((__m512d)x, (__m512d)y, (__m512d)acc);
#elif KM_PASS == 2
    return (vd)_mm256_fmadd_pd((__m256d)x, (__m256d)y, (__m256d)acc);
#else
    return acc + x * y;
#endif
}

/* float -> double, lane by lane (GCC splits __builtin_convertvector into halves: slower). */
KM_INLINE vd KM_FN(f32_to_vd)(vf f) {
#if KM_PASS == 3
    return (vd)_mm512_cvtps_pd((__m256)f);
#elif KM_PASS == 2
    return (vd)_mm256_cvtps_pd((__m128)f);
#else
    return __builtin_convertvector(f, vd);
#endif
}

KM_INLINE vu KM_FN(u16_load)(const uint16_t *p) {
#if KM_VW == 8
    vu u = {p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]}; /* one zero-extending load */
#else
    vu u = {p[0], p[1], p[2], p[3]};
#endif
    return u;
}

KM_INLINE vd KM_FN(bf16_to_vd)(const uint16_t *p) { return KM_FN(f32_to_vd)((vf)(KM_FN(u16_load)(p) << 16)); }

KM_INLINE vd KM_FN(f16_to_vd)(const uint16_t *p) {
#if KM_PASS == 3
    return (vd)_mm512_cvtps_pd(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)));
#elif KM_PASS == 2
    return (vd)_mm256_cvtps_pd(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)p)));
#else
    vu u = KM_FN(u16_load)(p);
    vu sign = (u & 0x8000u) << 16;
    vu em = u & 0x7fffu;                   /* exponent and mantissa */
    vu normal = (em << 13) + 0x38000000u;  /* rebias the exponent: (127 - 15) << 23 */
    vu special = (em << 13) | 0x7f800000u; /* Inf, NaN (payload kept) */
    vf sub_f = __builtin_convertvector((vi)em, vf) * 5.9604644775390625e-8f; /* em * 2^-24, exact */
    vu is_special = (vu)(em >= 0x7c00u);
    vu is_sub = (vu)(em < 0x0400u);
    vu bits = (special & is_special) | ((vu)sub_f & is_sub) | (normal & ~(is_special | is_sub));
    return KM_FN(f32_to_vd)((vf)(bits | sign));
#endif
}

/* KM_VW values of a raw array of dtype dt from element k; dt is a constant after inlining. */
KM_INLINE vd KM_FN(load_raw)(const void *p, int64_t k, const int dt) {
    switch (dt) {
    case KM_F64:
        return KM_FN(vload)((const double *)p + k);
    case KM_F32: {
        vf f;
        memcpy(&f, (const float *)p + k, sizeof f);
        return KM_FN(f32_to_vd)(f);
    }
    case KM_F16:
        return KM_FN(f16_to_vd)((const uint16_t *)p + k);
    default:
        return KM_FN(bf16_to_vd)((const uint16_t *)p + k);
    }
}

/* Half h (0 or 1) of the 2 * KM_VW positions from element k. BF16 on AVX2/AVX-512: interleaving
 * the raw bits with zeros (one load+shuffle) is the float32 directly, no shift needed (-1 vector
 * op per input and step; within a 128-bit lane the halves take positions 0-3 and 4-7). The base
 * and every model are loaded alike, so each position still meets its own base value. */
KM_INLINE vd KM_FN(load_half)(const void *p, int64_t k, int h, const int dt) {
#if KM_PASS >= 2
    if (dt == KM_BF16) {
#if KM_PASS == 3
        __m256i raw = _mm256_loadu_si256((const __m256i *)((const uint16_t *)p + k));
        __m256i z = _mm256_setzero_si256();
        __m256i bits = h ? _mm256_unpackhi_epi16(z, raw) : _mm256_unpacklo_epi16(z, raw);
        return (vd)_mm512_cvtps_pd(_mm256_castsi256_ps(bits));
#else
        __m128i raw = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + k));
        __m128i z = _mm_setzero_si128();
        __m128i bits = h ? _mm_unpackhi_epi16(z, raw) : _mm_unpacklo_epi16(z, raw);
        return (vd)_mm256_cvtps_pd(_mm_castsi128_ps(bits));
#endif
    }
#endif
    return KM_FN(load_raw)(p, k + h * KM_VW, dt);
}

/* -- diagonal tile: Σδ_i and Σδ_i·δ_j (i <= j) of r models, fused ------------------------------ */

/* Positions [lo, hi) of base and x[0..r); results go to sums[i0 + i], gram[(i0 + i) * n + i0 + j]. */
KM_INLINE void KM_FN(diag_run)(const void *base, const void *const *x, int64_t lo, int64_t hi, const int dt,
                               const int r, int i0, int n, double *sums, double *gram) {
    const int u = KM_UNROLL(r);
    const vd z = {0};
    vd s[KM_MAXU][KM_FUSED], g[KM_MAXU][KM_PAIRS(KM_FUSED)];
    for (int q = 0; q < u; q++) {
        for (int i = 0; i < r; i++) s[q][i] = z;
        for (int p = 0; p < KM_PAIRS(r); p++) g[q][p] = z;
    }
    /* A step: 2 * KM_VW positions per window, at least one window; sub-step q takes half q % 2
     * of window q / 2 into accumulator set q % u. */
    const int v = u < 2 ? 2 : u;
    const int64_t step = (int64_t)v * KM_VW;
    const int64_t full = lo + (hi - lo) / step * step;
    unsigned char tails[KM_FUSED + 1][8 * KM_MAXW];
    const void *tp[KM_FUSED];
    for (int64_t blo = lo; blo < hi; blo += KM_BLOCK) {
        int64_t bhi = blo + KM_BLOCK < full ? blo + KM_BLOCK : full;
        for (int64_t k = blo; k < bhi; k += step) {
            for (int q = 0; q < v; q++) {
                int64_t w = k + (q / 2) * 2 * KM_VW;
                vd b = KM_FN(load_half)(base, w, q % 2, dt);
                vd d[KM_FUSED];
                for (int i = 0; i < r; i++) d[i] = KM_FN(load_half)(x[i], w, q % 2, dt) - b;
                int p = 0;
                for (int i = 0; i < r; i++) {
                    s[q % u][i] += d[i];
                    for (int j = i; j < r; j++, p++) g[q % u][p] = KM_FN(madd)(g[q % u][p], d[i], d[j]);
                }
            }
        }
        if (bhi == full) { /* the last < step positions, KM_VW at a time, zero-padded */
            for (int64_t k = full; k < hi; k += KM_VW) {
                int64_t end = k + KM_VW < hi ? k + KM_VW : hi;
                copy_tail(base, dt, k, end, tails[KM_FUSED], KM_VW);
                for (int i = 0; i < r; i++) {
                    copy_tail(x[i], dt, k, end, tails[i], KM_VW);
                    tp[i] = tails[i];
                }
                vd b = KM_FN(load_raw)(tails[KM_FUSED], 0, dt);
                vd d[KM_FUSED];
                for (int i = 0; i < r; i++) d[i] = KM_FN(load_raw)(tp[i], 0, dt) - b;
                int p = 0;
                for (int i = 0; i < r; i++) {
                    s[0][i] += d[i];
                    for (int j = i; j < r; j++, p++) g[0][p] = KM_FN(madd)(g[0][p], d[i], d[j]);
                }
            }
            blo = hi; /* done */
        }
        int p = 0;
        for (int i = 0; i < r; i++) {
            vd t = s[0][i];
            for (int q = 1; q < u; q++) t += s[q][i];
            sums[i0 + i] += KM_FN(hsum)(t);
            for (int q = 0; q < u; q++) s[q][i] = z;
            for (int j = i; j < r; j++, p++) {
                vd h = g[0][p];
                for (int q = 1; q < u; q++) h += g[q][p];
                gram[(int64_t)(i0 + i) * n + i0 + j] += KM_FN(hsum)(h);
                for (int q = 0; q < u; q++) g[q][p] = z;
            }
        }
    }
}

/* -- cross tile: Σδ_i·δ_j for a group x[0..a) and a group y[0..c), fused ----------------------- */

/* Positions [lo, hi); results go to gram[(i0 + i) * n + j0 + j]. */
KM_INLINE void KM_FN(cross_run)(const void *base, const void *const *x, const void *const *y, int64_t lo, int64_t hi,
                                const int dt, const int a, const int c, int i0, int j0, int n, double *gram) {
    const vd z = {0};
    vd g[KM_MAXG][KM_MAXG];
    for (int i = 0; i < a; i++)
        for (int j = 0; j < c; j++) g[i][j] = z;
    const int64_t step = 2 * KM_VW;
    const int64_t full = lo + (hi - lo) / step * step;
    for (int64_t k = lo; k < full; k += step) {
        for (int h = 0; h < 2; h++) {
            vd b = KM_FN(load_half)(base, k, h, dt);
            vd d[KM_MAXG];
            for (int i = 0; i < a; i++) d[i] = KM_FN(load_half)(x[i], k, h, dt) - b;
            for (int j = 0; j < c; j++) {
                vd e = KM_FN(load_half)(y[j], k, h, dt) - b;
                for (int i = 0; i < a; i++) g[i][j] = KM_FN(madd)(g[i][j], d[i], e);
            }
        }
    }
    for (int64_t k = full; k < hi; k += KM_VW) { /* the last < step positions, zero-padded */
        int64_t end = k + KM_VW < hi ? k + KM_VW : hi;
        unsigned char tb[8 * KM_MAXW], tx[KM_MAXG][8 * KM_MAXW], ty[KM_MAXG][8 * KM_MAXW];
        copy_tail(base, dt, k, end, tb, KM_VW);
        vd b = KM_FN(load_raw)(tb, 0, dt);
        vd d[KM_MAXG];
        for (int i = 0; i < a; i++) {
            copy_tail(x[i], dt, k, end, tx[i], KM_VW);
            d[i] = KM_FN(load_raw)(tx[i], 0, dt) - b;
        }
        for (int j = 0; j < c; j++) {
            copy_tail(y[j], dt, k, end, ty[j], KM_VW);
            vd e = KM_FN(load_raw)(ty[j], 0, dt) - b;
            for (int i = 0; i < a; i++) g[i][j] = KM_FN(madd)(g[i][j], d[i], e);
        }
    }
    for (int i = 0; i < a; i++)
        for (int j = 0; j < c; j++) gram[(int64_t)(i0 + i) * n + j0 + j] += KM_FN(hsum)(g[i][j]);
}

/* -- dispatch: constant tile sizes and dtypes --------------------------------------------------- */

static void KM_FN(diag)(const void *base, const void *const *x, int64_t lo, int64_t hi, int dt, int r, int i0, int n,
                        double *sums, double *gram) {
#define KM_DIAG(DT, R)                                                                                           \
    if (dt == DT && r == R) return KM_FN(diag_run)(base, x, lo, hi, DT, R, i0, n, sums, gram)
#define KM_DIAGS(DT) KM_DIAG(DT, 1); KM_DIAG(DT, 2); KM_DIAG(DT, 3); KM_DIAG(DT, 4); KM_DIAG(DT, 5); KM_DIAG(DT, 6)
    KM_DIAGS(KM_BF16);
    KM_DIAGS(KM_F16);
    KM_DIAGS(KM_F32);
    KM_DIAGS(KM_F64);
#undef KM_DIAGS
#undef KM_DIAG
}

static void KM_FN(cross)(const void *base, const void *const *x, const void *const *y, int64_t lo, int64_t hi, int dt,
                         int a, int c, int i0, int j0, int n, double *gram) {
#define KM_CROSS(DT, A, C)                                                                                       \
    if (dt == DT && a == A && c == C) return KM_FN(cross_run)(base, x, y, lo, hi, DT, A, C, i0, j0, n, gram)
#if KM_GROUP >= 4
#define KM_CROSS4(DT) KM_CROSS(DT, 1, 4); KM_CROSS(DT, 2, 4); KM_CROSS(DT, 3, 4); KM_CROSS(DT, 4, 1);              \
    KM_CROSS(DT, 4, 2); KM_CROSS(DT, 4, 3); KM_CROSS(DT, 4, 4)
#else
#define KM_CROSS4(DT) (void)0
#endif
#define KM_CROSSES(DT) KM_CROSS(DT, 1, 1); KM_CROSS(DT, 1, 2); KM_CROSS(DT, 1, 3); KM_CROSS(DT, 2, 1);             \
    KM_CROSS(DT, 2, 2); KM_CROSS(DT, 2, 3); KM_CROSS(DT, 3, 1); KM_CROSS(DT, 3, 2); KM_CROSS(DT, 3, 3); KM_CROSS4(DT)
    KM_CROSSES(KM_BF16);
    KM_CROSSES(KM_F16);
    KM_CROSSES(KM_F32);
    KM_CROSSES(KM_F64);
#undef KM_CROSSES
#undef KM_CROSS4
#undef KM_CROSS
}

/* out[0 .. len) = float64 of src[lo .. lo + len). */
static void KM_FN(widen)(const void *src, int dt, int64_t lo, int len, double *out) {
    int full = len / KM_VW * KM_VW;
#define KM_WIDEN(DT)                                                                                             \
    case DT:                                                                                                     \
        for (int k = 0; k < full; k += KM_VW) {                                                                  \
            vd v = KM_FN(load_raw)(src, lo + k, DT);                                                             \
            memcpy(out + k, &v, sizeof v);                                                                       \
        }                                                                                                        \
        if (full < len) {                                                                                        \
            unsigned char t[8 * KM_MAXW];                                                                        \
            copy_tail(src, DT, lo + full, lo + len, t, KM_VW);                                                   \
            vd v = KM_FN(load_raw)(t, 0, DT);                                                                    \
            memcpy(out + full, &v, sizeof(double) * (size_t)(len - full));                                       \
        }                                                                                                        \
        break;
    switch (dt) {
        KM_WIDEN(KM_F64)
        KM_WIDEN(KM_F32)
        KM_WIDEN(KM_F16)
        KM_WIDEN(KM_BF16)
    }
#undef KM_WIDEN
}

static void KM_FN(accumulate)(const void *base, int base_dtype, const void *const *models, const int *model_dtypes,
                              int n, int64_t m, double *sums, double *gram, double *scratch) {
    const int same = all_same(base_dtype, model_dtypes, n);
    if (n <= KM_FUSED && same) { /* the common case: one fused pass over the chunk */
        KM_FN(diag)(base, models, 0, m, base_dtype, n, 0, n, sums, gram);
        return;
    }
    /* Many models: per block, a diagonal tile per group and a cross tile per pair of groups, each
     * fused over the raw inputs (L1 resident within the block). Mixed dtypes: each block is first
     * widened to float64 scratch arrays, and the tiles read those. */
    const int group = n <= KM_FUSED ? n : KM_GROUP;
    const void *xa[KM_FUSED], *ya[KM_MAXG];
    for (int64_t lo = 0; lo < m; lo += KM_BLOCK) {
        int64_t hi = lo + KM_BLOCK < m ? lo + KM_BLOCK : m;
        const void *b = base;
        int dt = base_dtype;
        int64_t blo = lo, bhi = hi;
        if (!same) {
            int len = (int)(hi - lo);
            KM_FN(widen)(base, base_dtype, lo, len, scratch);
            for (int i = 0; i < n; i++)
                KM_FN(widen)(models[i], model_dtypes[i], lo, len, scratch + (int64_t)(i + 1) * KM_BLOCK);
            b = scratch;
            dt = KM_F64;
            blo = 0;
            bhi = len;
        }
#define KM_INPUT(i) (same ? models[(i)] : (const void *)(scratch + (int64_t)((i) + 1) * KM_BLOCK))
        for (int i0 = 0; i0 < n; i0 += group) {
            int a = n - i0 < group ? n - i0 : group;
            for (int i = 0; i < a; i++) xa[i] = KM_INPUT(i0 + i);
            KM_FN(diag)(b, xa, blo, bhi, dt, a, i0, n, sums, gram);
            for (int j0 = i0 + group; j0 < n; j0 += group) { /* only with n > KM_FUSED: group <= KM_MAXG */
                int c = n - j0 < group ? n - j0 : group;
                for (int j = 0; j < c; j++) ya[j] = KM_INPUT(j0 + j);
                KM_FN(cross)(b, xa, ya, blo, bhi, dt, a, c, i0, j0, n, gram);
            }
        }
#undef KM_INPUT
    }
}

#undef vd
#undef vf
#undef vu
#undef vi
#undef KM_UNROLL
#undef KM_MAXU

#endif /* KM_PASS */
