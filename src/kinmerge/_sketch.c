/* The sketch kernel in C: adds one chunk of N models' deltas (model - base) into their sketches.
 *
 * The projection is defined in kinmerge/sketch.py (its numpy reference computes the same numbers):
 * position p of a tensor with hash key K has the sign bit (p mod 64) of mix64(K + (2*(p/64)+1)*G)
 * (set = negative) and lands in bucket (r_k + p mod D) mod D, r_k = mix64(K + (2k+2)*G) >> (64 -
 * log2 D), k = p / D, where mix64 is SplitMix64's finaliser and G its golden-ratio increment.
 *
 * So a block of D consecutive positions fills one contiguous run of buckets (wrapping once): the
 * kernel cuts the chunk into such runs and streams through the raw inputs and the models' sketch
 * rows together: widen, subtract the base, flip the signs of 8 or 16 positions at once (bits of
 * one hash word), add into the rows. No scatter; up to KS_GMAX models share the base's loads.
 *
 * Two paths, for speed (measured: docs/index.md):
 *   * a chunk within one or two blocks (or any F64 input, or mixed dtypes): δ in float64 (widened
 *     exactly, like _kinship.c), added straight into the float64 rows;
 *   * a chunk spanning more blocks (a 1M-element chunk covers 8 blocks at the default size): the
 *     rows are visited one tile of KS_TILE buckets at a time (so the touched part stays in L1/L2
 *     instead of a whole 1 MB row being swept once per block), each tile accumulated in float32
 *     scratch (16 lanes a vector) and added into the float64 row once per tile. δ of two BF16 or
 *     F16 values is exact in float32 unless their exponents differ by more than 16 (or 13), and
 *     each bucket takes about m / D float32 additions before the flush: the rows differ from the
 *     float64 reference by ~1e-7 relative, far below any estimate's error.
 *
 * Called through ctypes (kinmerge._sketch_kernels), which releases the GIL: the scan's worker
 * threads each add into their own rows. Built by setup.py as an optional extension, like the
 * kinship kernel; without it kinmerge uses the numpy reference (same numbers, much slower).
 *
 * The body is compiled three times from this file (it includes itself): portable, AVX2+F16C and
 * AVX-512F, chosen at run time. NaN and Inf propagate (no -ffast-math). The order of additions
 * is fixed by the chunk's positions, so a chunk always adds the same bits; rows that several
 * chunks add into depend on the order of the chunks (last bits only). Σδ and Σδ² are not computed
 * here: a pass gets them, exactly, from the kinship kernel.
 */
#ifndef KS_PASS

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define KS_X86 1
#include <immintrin.h>
#endif

enum { KS_F64 = 0, KS_F32 = 1, KS_F16 = 2, KS_BF16 = 3 };
enum { KS_ISA_BEST = 0, KS_ISA_GENERIC = 1, KS_ISA_AVX2 = 2, KS_ISA_AVX512 = 3 };

#define KS_INLINE static inline __attribute__((always_inline))
#define KS_GOLDEN 0x9E3779B97F4A7C15ull

typedef double ks_v8d __attribute__((vector_size(64)));
typedef uint64_t ks_v8u __attribute__((vector_size(64)));
typedef float ks_v16f __attribute__((vector_size(64)));
typedef uint32_t ks_v16u __attribute__((vector_size(64)));

static inline uint64_t ks_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline uint64_t ks_sign_word(uint64_t key, int64_t w) { return ks_mix(key + (uint64_t)(2 * w + 1) * KS_GOLDEN); }

static inline int64_t ks_shift(uint64_t key, int64_t k, int logd) {
    return (int64_t)(ks_mix(key + (uint64_t)(2 * k + 2) * KS_GOLDEN) >> (64 - logd));
}

/* One raw value, exactly as float64 (F16 by its bits: normals, subnormals, ±0, ±Inf, NaN). */
static inline double ks_widen1(const void *p, int64_t i, int dt) {
    switch (dt) {
    case KS_F64:
        return ((const double *)p)[i];
    case KS_F32:
        return (double)((const float *)p)[i];
    case KS_BF16: {
        uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16;
        float f;
        memcpy(&f, &u, 4);
        return (double)f;
    }
    default: {
        uint32_t h = ((const uint16_t *)p)[i], sign = (h & 0x8000u) << 16, em = h & 0x7fffu, bits;
        if (em >= 0x7c00u)
            bits = (em << 13) | 0x7f800000u;
        else if (em < 0x0400u) {
            float f = (float)em * 5.9604644775390625e-8f; /* em * 2^-24, exact */
            memcpy(&bits, &f, 4);
        } else
            bits = (em << 13) + 0x38000000u;
        bits |= sign;
        float f;
        memcpy(&f, &bits, 4);
        return (double)f;
    }
    }
}

#define KS_GMAX 4    /* models per group: one pass over the base's values for up to this many models */
#define KS_TILE 8192 /* buckets visited at a time when a chunk spans several blocks (64 KB a row) */

typedef void (*ks_seg_fn)(const void *, int, const void *const *, int, int, int64_t, int64_t, int64_t, uint64_t,
                          double *const *);
typedef void (*ks_seg32_fn)(const void *, const void *const *, int, int, int64_t, int64_t, int64_t, uint64_t,
                            float *const *);
typedef void (*ks_ones_fn)(int64_t, int64_t, int64_t, uint64_t, int32_t *);
typedef void (*ks_flush_fn)(double *, float *, int64_t);

/* Pass 1: portable. */
#define KS_PASS 1
#define KS_FN(name) name##_generic
#include "_sketch.c"
#undef KS_FN
#undef KS_PASS

#ifdef KS_X86
/* Passes 2 and 3: AVX2 + FMA + F16C, then AVX-512F (+ the above), for the functions in between. */
#define KS_STR(x) #x
#define KS_PRAGMA(x) _Pragma(KS_STR(x))
#if defined(__clang__)
#define KS_TARGET(t) KS_PRAGMA(clang attribute push(__attribute__((target(t))), apply_to = function))
#define KS_TARGET_END KS_PRAGMA(clang attribute pop)
#else
#define KS_TARGET(t) KS_PRAGMA(GCC push_options) KS_PRAGMA(GCC target(t))
#define KS_TARGET_END KS_PRAGMA(GCC pop_options)
#endif
#define KS_PASS 2
#define KS_FN(name) name##_avx2
KS_TARGET("avx2,fma,f16c")
#include "_sketch.c"
KS_TARGET_END
#undef KS_FN
#undef KS_PASS
#define KS_PASS 3
#define KS_FN(name) name##_avx512
KS_TARGET("avx512f,avx2,fma,f16c")
#include "_sketch.c"
KS_TARGET_END
#undef KS_FN
#undef KS_PASS
#endif

/* -- exported ---------------------------------------------------------------------------------- */

static int ks_has(int isa) {
#ifdef KS_X86
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (isa == KS_ISA_AVX2) return avx2;
    if (isa == KS_ISA_AVX512) return avx2 && __builtin_cpu_supports("avx512f");
#endif
    return isa == KS_ISA_GENERIC;
}

int ks_isa_mask(void) {
    int mask = 0;
    for (int isa = KS_ISA_GENERIC; isa <= KS_ISA_AVX512; isa++)
        if (ks_has(isa)) mask |= 1 << isa;
    return mask;
}

int ks_isa_best(void) {
    if (ks_has(KS_ISA_AVX512)) return KS_ISA_AVX512;
    if (ks_has(KS_ISA_AVX2)) return KS_ISA_AVX2;
    return KS_ISA_GENERIC;
}

/* Adds the sketches of the deltas of positions [start, start + m) of one tensor (hash key `key`)
 * into out (n_models rows of 2^logd doubles, row-major) and the sketch of ones into `ones` (2^logd
 * int32, or NULL). Returns 0, or -1 for bad arguments, no memory, or a code path this CPU lacks. */
int ks_sketch_isa(const void *base, int base_dtype, const void *const *models, const int *model_dtypes, int n_models,
                  int64_t m, int64_t start, uint64_t key, int logd, double *out, int32_t *ones, int isa) {
    if (n_models < 0 || m < 0 || start < 0 || logd < 4 || logd > 30 || base_dtype < KS_F64 || base_dtype > KS_BF16)
        return -1;
    for (int i = 0; i < n_models; i++)
        if (model_dtypes[i] < KS_F64 || model_dtypes[i] > KS_BF16) return -1;
    if (isa == KS_ISA_BEST) isa = ks_isa_best();
    if (!ks_has(isa)) return -1;
    ks_seg_fn seg = segment_generic;
    ks_seg32_fn seg32 = segment32_generic;
    ks_ones_fn seg_ones = segment_ones_generic;
    ks_flush_fn flush = flush_generic;
#ifdef KS_X86
    if (isa == KS_ISA_AVX2)
        seg = segment_avx2, seg32 = segment32_avx2, seg_ones = segment_ones_avx2, flush = flush_avx2;
    if (isa == KS_ISA_AVX512)
        seg = segment_avx512, seg32 = segment32_avx512, seg_ones = segment_ones_avx512, flush = flush_avx512;
#endif
    const int64_t d = (int64_t)1 << logd, mask = d - 1;
    /* runs: chunk offset, length, first bucket; a block's buckets wrap at most once: <= 2 runs a block */
    int64_t cap = 2 * (m / d + 2), n_runs = 0, stack[3 * 16];
    int64_t *runs = cap <= 16 ? stack : (int64_t *)malloc(sizeof(int64_t) * 3 * (size_t)cap);
    if (!runs) return -1;
    for (int64_t lo = 0; lo < m;) {
        int64_t p = start + lo, off = p & mask;
        int64_t run = d - off < m - lo ? d - off : m - lo;
        int64_t b = (ks_shift(key, p >> logd, logd) + off) & mask;
        int64_t first = d - b < run ? d - b : run;
        runs[3 * n_runs] = lo, runs[3 * n_runs + 1] = first, runs[3 * n_runs + 2] = b, n_runs++;
        if (run > first) runs[3 * n_runs] = lo + first, runs[3 * n_runs + 1] = run - first, runs[3 * n_runs + 2] = 0, n_runs++;
        lo += run;
    }
    const int tiled = n_runs > 2;
    const int64_t tile = tiled && KS_TILE < d ? KS_TILE : d;
    float *scratch = NULL;
    if (tiled && n_models > 0) {
        scratch = (float *)calloc((size_t)KS_GMAX * (size_t)tile, sizeof(float));
        if (!scratch) {
            if (runs != stack) free(runs);
            return -1;
        }
    }
    for (int64_t t0 = 0; t0 < d; t0 += tile) {
        for (int i0 = 0; i0 < n_models; i0 += KS_GMAX) { /* groups of models share the base's loads */
            int g = n_models - i0 < KS_GMAX ? n_models - i0 : KS_GMAX, dt = model_dtypes[i0];
            for (int j = 1; j < g; j++)
                if (model_dtypes[i0 + j] != dt) dt = -1;
            const int f32 = tiled && dt == base_dtype && dt != KS_F64;
            for (int64_t r = 0; r < n_runs; r++) {
                int64_t b0 = runs[3 * r + 2] > t0 ? runs[3 * r + 2] : t0;
                int64_t b1 = runs[3 * r + 2] + runs[3 * r + 1] < t0 + tile ? runs[3 * r + 2] + runs[3 * r + 1] : t0 + tile;
                if (b0 >= b1) continue;
                int64_t from = runs[3 * r] + (b0 - runs[3 * r + 2]), len = b1 - b0;
                if (f32) {
                    float *rows32[KS_GMAX];
                    for (int j = 0; j < g; j++) rows32[j] = scratch + (int64_t)j * tile + (b0 - t0);
                    seg32(base, models + i0, dt, g, from, len, start, key, rows32);
                    continue;
                }
                double *rows[KS_GMAX];
                for (int j = 0; j < g; j++) rows[j] = out + (int64_t)(i0 + j) * d + b0;
                if (dt >= 0)
                    seg(base, base_dtype, models + i0, dt, g, from, len, start, key, rows);
                else /* mixed dtypes in the group: one model at a time */
                    for (int j = 0; j < g; j++)
                        seg(base, base_dtype, models + i0 + j, model_dtypes[i0 + j], 1, from, len, start, key, rows + j);
            }
            if (f32) /* the tile's float32 sums into the float64 rows; scratch back to zero */
                for (int j = 0; j < g; j++) flush(out + (int64_t)(i0 + j) * d + t0, scratch + (int64_t)j * tile, tile);
        }
        if (ones)
            for (int64_t r = 0; r < n_runs; r++) {
                int64_t b0 = runs[3 * r + 2] > t0 ? runs[3 * r + 2] : t0;
                int64_t b1 = runs[3 * r + 2] + runs[3 * r + 1] < t0 + tile ? runs[3 * r + 2] + runs[3 * r + 1] : t0 + tile;
                if (b0 < b1) seg_ones(runs[3 * r] + (b0 - runs[3 * r + 2]), b1 - b0, start, key, ones + b0);
            }
    }
    free(scratch);
    if (runs != stack) free(runs);
    return 0;
}

/* An importable (empty) module, so the packaging machinery builds and finds the library. */
static struct PyModuleDef ks_module = {
    PyModuleDef_HEAD_INIT, "_sketch_c", "kinmerge's C sketch kernel; called through ctypes (kinmerge._sketch_kernels).",
    -1, NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__sketch_c(void) { return PyModule_Create(&ks_module); }

#else /* KS_PASS: the body, once per instruction set ---------------------------------------------- */

/* -- float64 path ------------------------------------------------------------------------------- */

/* 8 raw values from element i as float64, exactly; dt is a constant after inlining. */
KS_INLINE ks_v8d KS_FN(load8)(const void *p, int64_t i, const int dt) {
    ks_v8d r;
#if KS_PASS >= 2
    __m256 f;
    if (dt == KS_F64) {
        memcpy(&r, (const double *)p + i, sizeof r);
        return r;
    }
    if (dt == KS_F32)
        f = _mm256_loadu_ps((const float *)p + i);
    else if (dt == KS_F16)
        f = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)));
    else
        f = _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i))), 16));
#if KS_PASS == 3
    __m512d w = _mm512_cvtps_pd(f);
    memcpy(&r, &w, sizeof r);
#else
    __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(f)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1));
    memcpy(&r, &lo, 32);
    memcpy((char *)&r + 32, &hi, 32);
#endif
#else
    for (int j = 0; j < 8; j++) r[j] = ks_widen1(p, i + j, dt);
#endif
    return r;
}

#if KS_PASS == 2
/* Sign masks from bits: LUT64[b] for 4 doubles (bit j set -> lane j gets bit 63), LUT32[b] for 8 floats. */
static const uint64_t KS_FN(lut64)[16][4] __attribute__((aligned(32))) = {
#define KS_L(b) {((b) & 1ull) << 63, ((b) >> 1 & 1ull) << 63, ((b) >> 2 & 1ull) << 63, ((b) >> 3 & 1ull) << 63}
    KS_L(0), KS_L(1), KS_L(2),  KS_L(3),  KS_L(4),  KS_L(5),  KS_L(6),  KS_L(7),
    KS_L(8), KS_L(9), KS_L(10), KS_L(11), KS_L(12), KS_L(13), KS_L(14), KS_L(15)};
#undef KS_L
static uint32_t KS_FN(lut32)[256][8] __attribute__((aligned(32)));
static int KS_FN(lut32_ready);
static void KS_FN(lut32_init)(void) { /* idempotent: racing threads write the same values */
    for (int b = 0; b < 256; b++)
        for (int j = 0; j < 8; j++) KS_FN(lut32)[b][j] = ((b >> j) & 1u) << 31;
    __atomic_store_n(&KS_FN(lut32_ready), 1, __ATOMIC_RELEASE);
}
#endif

/* row[0..8) += v with the sign bits of `byte` applied (bit j set: lane j negated). */
KS_INLINE void KS_FN(add_signed)(double *row, ks_v8d v, unsigned byte) {
#if KS_PASS == 3
    __m512d d;
    memcpy(&d, &v, sizeof d);
    __m512i x = _mm512_mask_xor_epi64(_mm512_castpd_si512(d), (__mmask8)byte, _mm512_castpd_si512(d),
                                      _mm512_set1_epi64((long long)0x8000000000000000ull));
    _mm512_storeu_pd(row, _mm512_add_pd(_mm512_loadu_pd(row), _mm512_castsi512_pd(x)));
#elif KS_PASS == 2
    __m256d lo, hi;
    memcpy(&lo, &v, 32);
    memcpy(&hi, (char *)&v + 32, 32);
    lo = _mm256_xor_pd(lo, _mm256_load_pd((const double *)KS_FN(lut64)[byte & 15]));
    hi = _mm256_xor_pd(hi, _mm256_load_pd((const double *)KS_FN(lut64)[byte >> 4]));
    _mm256_storeu_pd(row, _mm256_add_pd(_mm256_loadu_pd(row), lo));
    _mm256_storeu_pd(row + 4, _mm256_add_pd(_mm256_loadu_pd(row + 4), hi));
#else
    for (int j = 0; j < 8; j++) row[j] += ((byte >> j) & 1) ? -v[j] : v[j];
#endif
}

/* One position i (negated when neg) of base and the g models into rows[j][i - lo]. */
KS_INLINE void KS_FN(one)(const void *base, const void *const *x, int64_t i, int64_t lo, int neg, double *const *rows,
                          const int bdt, const int xdt, const int g) {
    double b = ks_widen1(base, i, bdt);
    for (int j = 0; j < g; j++) {
        double d = ks_widen1(x[j], i, xdt) - b;
        rows[j][i - lo] += neg ? -d : d;
    }
}

/* Chunk elements [lo, lo + len) (absolute positions start + lo ...) of base and the g models x[0..g)
 * into rows[j][0 .. len). One hash per 64 positions. */
KS_INLINE void KS_FN(run)(const void *base, const void *const *x, int64_t lo, int64_t len, int64_t start,
                          uint64_t key, double *const *rows, const int bdt, const int xdt, const int g) {
    int64_t i = lo, end = lo + len;
    while (i < end) {
        int64_t p = start + i;
        uint64_t word = ks_sign_word(key, p >> 6);
        int64_t wend = i + (64 - (p & 63)) < end ? i + (64 - (p & 63)) : end; /* this word's positions */
        for (; i < wend && ((start + i) & 7); i++)
            KS_FN(one)(base, x, i, lo, (int)((word >> ((start + i) & 63)) & 1), rows, bdt, xdt, g);
        for (; i + 8 <= wend; i += 8) {
            unsigned byte = (unsigned)(word >> ((start + i) & 63)) & 0xFF;
            ks_v8d b = KS_FN(load8)(base, i, bdt);
            for (int j = 0; j < g; j++) KS_FN(add_signed)(rows[j] + (i - lo), KS_FN(load8)(x[j], i, xdt) - b, byte);
        }
        for (; i < wend; i++)
            KS_FN(one)(base, x, i, lo, (int)((word >> ((start + i) & 63)) & 1), rows, bdt, xdt, g);
    }
}

static void KS_FN(segment)(const void *base, int bdt, const void *const *x, int xdt, int g, int64_t lo, int64_t len,
                           int64_t start, uint64_t key, double *const *rows) {
#define KS_RUN(DT, G) \
    if (bdt == DT && xdt == DT && g == G) return KS_FN(run)(base, x, lo, len, start, key, rows, DT, DT, G)
#define KS_RUNS(DT) KS_RUN(DT, 1); KS_RUN(DT, 2); KS_RUN(DT, 3); KS_RUN(DT, 4)
    KS_RUNS(KS_BF16);
    KS_RUNS(KS_F16);
    KS_RUNS(KS_F32);
    KS_RUNS(KS_F64);
#undef KS_RUNS
#undef KS_RUN
    for (int j = 0; j < g; j++) /* the base's dtype differs from the models': dtypes read at run time */
        KS_FN(run)(base, x + j, lo, len, start, key, rows + j, bdt, xdt, 1);
}

/* -- float32 tile path (BF16, F16, F32) -------------------------------------------------------- */

/* 16 raw values from element i as float32 (exact for BF16, F16 and F32). */
KS_INLINE ks_v16f KS_FN(load16)(const void *p, int64_t i, const int dt) {
    ks_v16f r;
#if KS_PASS == 3
    __m512 f;
    if (dt == KS_F32)
        f = _mm512_loadu_ps((const float *)p + i);
    else if (dt == KS_F16)
        f = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i)));
    else
        f = _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i))), 16));
    memcpy(&r, &f, sizeof r);
#else
    for (int j = 0; j < 16; j++) r[j] = (float)ks_widen1(p, i + j, dt);
#endif
    return r;
}

/* row[0..16) += v with the sign bits of `bits` applied. */
KS_INLINE void KS_FN(add_signed16)(float *row, ks_v16f v, unsigned bits) {
#if KS_PASS == 3
    __m512 d;
    memcpy(&d, &v, sizeof d);
    __m512i x = _mm512_mask_xor_epi32(_mm512_castps_si512(d), (__mmask16)bits, _mm512_castps_si512(d),
                                      _mm512_set1_epi32((int)0x80000000u));
    _mm512_storeu_ps(row, _mm512_add_ps(_mm512_loadu_ps(row), _mm512_castsi512_ps(x)));
#else
    for (int j = 0; j < 16; j++) row[j] += ((bits >> j) & 1) ? -v[j] : v[j];
#endif
}

#if KS_PASS == 2
/* AVX2: 8 floats a vector, kept in registers (a 16-float vector type would go through the stack). */
KS_INLINE __m256 KS_FN(load8f)(const void *p, int64_t k, const int dt) {
    if (dt == KS_F32) return _mm256_loadu_ps((const float *)p + k);
    if (dt == KS_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + k)));
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + k))), 16));
}
#endif

KS_INLINE void KS_FN(run32)(const void *base, const void *const *x, int64_t lo, int64_t len, int64_t start,
                            uint64_t key, float *const *rows, const int dt, const int g) {
    int64_t i = lo, end = lo + len;
    while (i < end) {
        int64_t p = start + i;
        uint64_t word = ks_sign_word(key, p >> 6);
        int64_t wend = i + (64 - (p & 63)) < end ? i + (64 - (p & 63)) : end;
        for (; i < wend && (((start + i) & 15) || i + 16 > wend); i++) { /* single positions */
            float b = (float)ks_widen1(base, i, dt);
            int neg = (int)((word >> ((start + i) & 63)) & 1);
            for (int j = 0; j < g; j++) {
                float d = (float)ks_widen1(x[j], i, dt) - b;
                rows[j][i - lo] += neg ? -d : d;
            }
        }
        for (; i + 16 <= wend; i += 16) {
            unsigned bits = (unsigned)(word >> ((start + i) & 63)) & 0xFFFF;
#if KS_PASS == 2
            for (int h = 0; h < 2; h++) {
                __m256 b = KS_FN(load8f)(base, i + 8 * h, dt);
                __m256 sign = _mm256_load_ps((const float *)KS_FN(lut32)[(bits >> (8 * h)) & 0xFF]);
                for (int j = 0; j < g; j++) {
                    float *r = rows[j] + (i - lo) + 8 * h;
                    __m256 d = _mm256_xor_ps(_mm256_sub_ps(KS_FN(load8f)(x[j], i + 8 * h, dt), b), sign);
                    _mm256_storeu_ps(r, _mm256_add_ps(_mm256_loadu_ps(r), d));
                }
            }
#else
            ks_v16f b = KS_FN(load16)(base, i, dt);
            for (int j = 0; j < g; j++) KS_FN(add_signed16)(rows[j] + (i - lo), KS_FN(load16)(x[j], i, dt) - b, bits);
#endif
        }
        for (; i < wend; i++) {
            float b = (float)ks_widen1(base, i, dt);
            int neg = (int)((word >> ((start + i) & 63)) & 1);
            for (int j = 0; j < g; j++) {
                float d = (float)ks_widen1(x[j], i, dt) - b;
                rows[j][i - lo] += neg ? -d : d;
            }
        }
    }
}

static void KS_FN(segment32)(const void *base, const void *const *x, int dt, int g, int64_t lo, int64_t len,
                             int64_t start, uint64_t key, float *const *rows) {
#if KS_PASS == 2
    if (!__atomic_load_n(&KS_FN(lut32_ready), __ATOMIC_ACQUIRE)) KS_FN(lut32_init)();
#endif
#define KS_RUN(DT, G) if (dt == DT && g == G) return KS_FN(run32)(base, x, lo, len, start, key, rows, DT, G)
#define KS_RUNS(DT) KS_RUN(DT, 1); KS_RUN(DT, 2); KS_RUN(DT, 3); KS_RUN(DT, 4)
    KS_RUNS(KS_BF16);
    KS_RUNS(KS_F16);
    KS_RUNS(KS_F32);
#undef KS_RUNS
#undef KS_RUN
}

/* row[0..len) += tile[0..len) (float32 -> float64), then tile[0..len) = 0; len a multiple of 16. */
static void KS_FN(flush)(double *row, float *tile, int64_t len) {
    int64_t k = 0;
#if KS_PASS == 3
    for (; k + 16 <= len; k += 16) {
        __m512 t = _mm512_loadu_ps(tile + k);
        __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(t));
        __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(t), 1)));
        _mm512_storeu_pd(row + k, _mm512_add_pd(_mm512_loadu_pd(row + k), lo));
        _mm512_storeu_pd(row + k + 8, _mm512_add_pd(_mm512_loadu_pd(row + k + 8), hi));
        _mm512_storeu_ps(tile + k, _mm512_setzero_ps());
    }
#elif KS_PASS == 2
    for (; k + 8 <= len; k += 8) {
        __m256 t = _mm256_loadu_ps(tile + k);
        _mm256_storeu_pd(row + k, _mm256_add_pd(_mm256_loadu_pd(row + k), _mm256_cvtps_pd(_mm256_castps256_ps128(t))));
        _mm256_storeu_pd(row + k + 4, _mm256_add_pd(_mm256_loadu_pd(row + k + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(t, 1))));
        _mm256_storeu_ps(tile + k, _mm256_setzero_ps());
    }
#endif
    for (; k < len; k++) {
        row[k] += (double)tile[k];
        tile[k] = 0.0f;
    }
}

/* -- the sketch of ones (int32: exact): ±1 per position ------------------------------------------ */

static void KS_FN(segment_ones)(int64_t lo, int64_t len, int64_t start, uint64_t key, int32_t *row) {
#if KS_PASS == 2
    if (!__atomic_load_n(&KS_FN(lut32_ready), __ATOMIC_ACQUIRE)) KS_FN(lut32_init)();
#endif
    int64_t i = lo, end = lo + len;
    while (i < end) {
        int64_t p = start + i;
        uint64_t word = ks_sign_word(key, p >> 6);
        int64_t wend = i + (64 - (p & 63)) < end ? i + (64 - (p & 63)) : end;
        for (; i < wend && ((start + i) & 15); i++) row[i - lo] += ((word >> ((start + i) & 63)) & 1) ? -1 : 1;
        for (; i + 16 <= wend; i += 16) {
            unsigned bits = (unsigned)(word >> ((start + i) & 63)) & 0xFFFF;
#if KS_PASS == 3
            __m512i v = _mm512_mask_blend_epi32((__mmask16)bits, _mm512_set1_epi32(1), _mm512_set1_epi32(-1));
            _mm512_storeu_si512(row + (i - lo), _mm512_add_epi32(_mm512_loadu_si512(row + (i - lo)), v));
#elif KS_PASS == 2
            for (int h = 0; h < 2; h++) { /* -1 where the sign bit is set, else 1 */
                __m256i sign = _mm256_load_si256((const __m256i *)KS_FN(lut32)[(bits >> (8 * h)) & 0xFF]);
                __m256i v = _mm256_or_si256(_mm256_srai_epi32(sign, 31), _mm256_set1_epi32(1));
                __m256i *r = (__m256i *)(row + (i - lo) + 8 * h);
                _mm256_storeu_si256(r, _mm256_add_epi32(_mm256_loadu_si256(r), v));
            }
#else
            for (int j = 0; j < 16; j++) row[i - lo + j] += ((bits >> j) & 1) ? -1 : 1;
#endif
        }
        for (; i < wend; i++) row[i - lo] += ((word >> ((start + i) & 63)) & 1) ? -1 : 1;
    }
}

#endif /* KS_PASS */
