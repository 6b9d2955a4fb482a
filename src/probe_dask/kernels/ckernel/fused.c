/* Fused per-block sums of probe-dask (see probe_dask/kernels/dispatch.py for the contract).
 *
 * For each latent l and each active pair p of l, over the non-zero events of l:
 *   eta = b[p] + w[p] * v                                   (float64)
 *   e   = exp(-|eta|) in (0, 1]                             (float32, never overflows)
 *   mu  = eta >= 0 ? 1/(1+e) : e/(1+e),  s = e/(1+e)^2      (float32)
 *   softplus(eta) = max(eta, 0) + log1p(e)                  (max in float64)
 * and every sum is accumulated in float64. The decisions eta > 0 use the float64 eta.
 *
 * Layout: events are grouped by latent (CSC of the block); pairs are grouped by latent.
 * Per latent, the events are copied in tiles of TILE (as float64, L1-resident); for each
 * pair the tile is swept in three short vector passes (see fit_latent_events), and the
 * per-pair sums are added into out once per tile. Latents with few events put 8 pairs,
 * not 8 events, in the lanes (fit_latent_pairs). Stopped pairs are simply absent, and
 * latents without pairs or events are skipped.
 *
 * exp and log1p are written here, branch-free and inlined, instead of calling libm:
 * the compiler vectorises them with the loop, without -ffast-math (which on gcc < 13
 * would also link crtfastmath.o into this shared object and switch the whole process to
 * flush-to-zero), and both run on restricted domains (x <= 0 for exp, [0, 1] for log1p).
 * Accuracy: a few float32 ulp (relative), plus the rounding of |eta| to float32.
 */
#include <stdint.h>
#include <string.h>

#define PD_ABI 1
#define TILE 512 /* events per tile: 4 KB of float64 values + 10 KB of stage buffers */

int pd_abi_version(void) { return PD_ABI; }

/* What this build is, set by setup.py; defaults for a build by hand. */
#ifndef PD_VARIANT
#define PD_VARIANT "unknown"
#endif
#ifndef PD_FLAGS
#define PD_FLAGS ""
#endif
const char *pd_variant(void) { return PD_VARIANT; }
const char *pd_flags(void) { return PD_FLAGS; }

/* Whether this CPU (and the OS, which must save the AVX registers) runs the AVX2/FMA
 * build: asked of the generic build before the other is loaded. */
int pd_cpu_avx2_fma(void) {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* exp(-a) for a >= 0 (float32): 2^n * p(f), f = -a - n ln2 in [-ln2/2, ln2/2].
 * Below 2^-126 the result is flushed to 0 (n clamped so the exponent field is 0). */
static inline float exp_neg(float a) {
    float x = -a;
    x = x < -104.0f ? -104.0f : x;
    /* round to nearest by adding 1.5 * 2^23 (vectorises on every target, unlike roundf;
     * exact without -ffast-math, which this file is never compiled with) */
    float fn = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float f = x - fn * 0.693359375f; /* Cody-Waite: ln2 = 0.693359375 - 2.12194440e-4 */
    f = f + fn * 2.12194440e-4f;
    float z = f * f;
    float p = 1.9875691500e-4f;
    p = p * f + 1.3981999507e-3f;
    p = p * f + 8.3334519073e-3f;
    p = p * f + 4.1665795894e-2f;
    p = p * f + 1.6666665459e-1f;
    p = p * f + 5.0000001201e-1f;
    p = p * z + f + 1.0f;
    int32_t n = (int32_t)fn + 127;
    n = n < 0 ? 0 : n;
    int32_t bits = n << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* 2 atanh(t) / (2 t) = 1 + t^2/3 + t^4/5 + ..., for t = e / (2 + e) in [0, 1/3];
 * with log1p(e) = 2 atanh(t). Truncation after z^6 (z = t^2 <= 1/9): < 2e-8 relative. */
static inline float atanh_series(float z) {
    float p = 1.0f / 13.0f;
    p = p * z + 1.0f / 11.0f;
    p = p * z + 1.0f / 9.0f;
    p = p * z + 1.0f / 7.0f;
    p = p * z + 1.0f / 5.0f;
    p = p * z + 1.0f / 3.0f;
    return p * z + 1.0f;
}


#if defined(__AVX2__) && defined(__FMA__)
/* ---------------------------------------------------------------- AVX2 + FMA kernel
 * Written with intrinsics because gcc's vectorisation of the generic loop below keeps
 * its six float64 reduction vectors in memory (omp simd lowering) and mixes float and
 * double lanes badly; here the 8 float32 lanes of the transcendental part map onto two
 * 4-lane float64 halves for eta and the accumulators. */
#include <immintrin.h>

#define SMALL_N 12 /* latents with fewer events put pairs, not events, in the lanes */
#define PCHUNK 256 /* pairs per chunk of the small-latent path (classes fit in uint8) */

/* exp(-a), a >= 0, 8 lanes; the same algorithm as exp_neg above. */
static inline __m256 exp_neg8(__m256 a) {
    const __m256 magic = _mm256_set1_ps(12582912.0f); /* 1.5 * 2^23: round to int */
    a = _mm256_min_ps(a, _mm256_set1_ps(104.0f));
    const __m256 x = _mm256_xor_ps(a, _mm256_set1_ps(-0.0f));
    const __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), magic);
    const __m256 fn = _mm256_sub_ps(t, magic);
    __m256 f = _mm256_fnmadd_ps(fn, _mm256_set1_ps(0.693359375f), x);
    f = _mm256_fmadd_ps(fn, _mm256_set1_ps(2.12194440e-4f), f);
    /* Cephes' polynomial, evaluated by Estrin's scheme (shorter dependency chain) */
    const __m256 f2 = _mm256_mul_ps(f, f), f4 = _mm256_mul_ps(f2, f2);
    const __m256 q01 = _mm256_fmadd_ps(_mm256_set1_ps(1.9875691500e-4f), f, _mm256_set1_ps(1.3981999507e-3f));
    const __m256 q23 = _mm256_fmadd_ps(_mm256_set1_ps(8.3334519073e-3f), f, _mm256_set1_ps(4.1665795894e-2f));
    const __m256 q45 = _mm256_fmadd_ps(_mm256_set1_ps(1.6666665459e-1f), f, _mm256_set1_ps(5.0000001201e-1f));
    const __m256 q = _mm256_fmadd_ps(f4, q01, _mm256_fmadd_ps(f2, q23, q45));
    const __m256 p = _mm256_add_ps(_mm256_fmadd_ps(q, f2, f), _mm256_set1_ps(1.0f));
    /* the low mantissa bits of t hold round(x * log2 e) + 0x400000 */
    __m256i n = _mm256_add_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(127 - 0x4B400000));
    n = _mm256_max_epi32(n, _mm256_setzero_si256());
    return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(n, 23)));
}

static inline __m256 atanh_series8(__m256 z) {
    const __m256 z2 = _mm256_mul_ps(z, z), z4 = _mm256_mul_ps(z2, z2);
    const __m256 a = _mm256_fmadd_ps(z, _mm256_set1_ps(1.0f / 3.0f), _mm256_set1_ps(1.0f));
    const __m256 b = _mm256_fmadd_ps(z, _mm256_set1_ps(1.0f / 7.0f), _mm256_set1_ps(1.0f / 5.0f));
    const __m256 c = _mm256_fmadd_ps(z, _mm256_set1_ps(1.0f / 11.0f), _mm256_set1_ps(1.0f / 9.0f));
    const __m256 cd = _mm256_fmadd_ps(z2, _mm256_set1_ps(1.0f / 13.0f), c);
    return _mm256_fmadd_ps(z4, cd, _mm256_fmadd_ps(z2, b, a));
}

static inline __m256 to_f32(__m256d lo, __m256d hi) {
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(lo)), _mm256_cvtpd_ps(hi), 1);
}
#define LO_F64(x) _mm256_cvtps_pd(_mm256_castps256_ps128(x))
#define HI_F64(x) _mm256_cvtps_pd(_mm256_extractf128_ps((x), 1))

/* mu, s, log1p(e) from e = exp(-|x|) and the sign of x (stage B of the events path) */
static inline void sig_from_e8(__m256 x, __m256 e, __m256 *mu, __m256 *s, __m256 *lp) {
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 ope = _mm256_add_ps(one, e), tpe = _mm256_add_ps(_mm256_set1_ps(2.0f), e);
    /* one division gives both 1/(1+e) and e/(2+e) */
    const __m256 q = _mm256_div_ps(one, _mm256_mul_ps(ope, tpe));
    const __m256 r = _mm256_mul_ps(tpe, q);
    const __m256 t = _mm256_mul_ps(_mm256_mul_ps(e, ope), q);
    *lp = _mm256_mul_ps(_mm256_add_ps(t, t), atanh_series8(_mm256_mul_ps(t, t)));
    const __m256 er = _mm256_mul_ps(e, r);
    *s = _mm256_mul_ps(er, r);
    *mu = _mm256_blendv_ps(r, er, x); /* sign bit of x set: eta < 0 */
}

/* mu, s, log1p(e) of 8 lanes of float64 eta (given as two halves). */
static inline void sig8(__m256d lo, __m256d hi, __m256 *mu, __m256 *s, __m256 *lp) {
    const __m256 x = to_f32(lo, hi);
    sig_from_e8(x, exp_neg8(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), x)), mu, s, lp);
}

static inline double hsum(__m256d a) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}
static inline int64_t hsum_i64(__m256i a) {
    __m128i s = _mm_add_epi64(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    return _mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1);
}

/* accumulate one half (4 lanes) of the fit contributions; m masks lanes past the end */
#define FIT_ACC(A, v, eta, mu, s, lp, m)                                             \
    do {                                                                            \
        const __m256d sv_ = _mm256_mul_pd((s), (v));                                \
        A[0] = _mm256_add_pd(A[0], _mm256_and_pd((mu), (m)));                       \
        A[1] = _mm256_add_pd(A[1], _mm256_and_pd(_mm256_mul_pd((mu), (v)), (m)));   \
        A[2] = _mm256_add_pd(A[2], _mm256_and_pd((s), (m)));                        \
        A[3] = _mm256_add_pd(A[3], _mm256_and_pd(sv_, (m)));                        \
        A[4] = _mm256_add_pd(A[4], _mm256_and_pd(_mm256_mul_pd(sv_, (v)), (m)));    \
        A[5] = _mm256_add_pd(A[5], _mm256_and_pd(                                   \
            _mm256_add_pd(_mm256_max_pd((eta), _mm256_setzero_pd()), (lp)), (m)));   \
    } while (0)
#define FIT_ACC_FULL(A, v, eta, mu, s, lp)                                           \
    do {                                                                            \
        const __m256d sv_ = _mm256_mul_pd((s), (v));                                \
        A[0] = _mm256_add_pd(A[0], (mu));                                           \
        A[1] = _mm256_fmadd_pd((mu), (v), A[1]);                                    \
        A[2] = _mm256_add_pd(A[2], (s));                                            \
        A[3] = _mm256_add_pd(A[3], sv_);                                            \
        A[4] = _mm256_fmadd_pd(sv_, (v), A[4]);                                     \
        A[5] = _mm256_add_pd(A[5], _mm256_add_pd(_mm256_max_pd((eta), _mm256_setzero_pd()), (lp))); \
    } while (0)

/* Events in lanes: for each pair, three passes over the tile's events, 8 at a time:
 * A: eta, x = (float)eta, e = exp(-|x|) -> buffers; B: mu, s, log1p(e) -> buffers;
 * C: float64 accumulation. One fused loop has a dependency chain of ~120 cycles per
 * vector, and the out-of-order window could not hold enough iterations to hide it
 * (measured 2.7 ns per element); split in stages, each chain is short. The buffers
 * stay in L1. */
static void fit_latent_events(int64_t n, const float *vals, int64_t k, const double *b,
                              const double *w, int64_t stride, double *out) {
    double tv[TILE + 8] __attribute__((aligned(64)));
    float tx[TILE + 8] __attribute__((aligned(64))), te[TILE + 8] __attribute__((aligned(64)));
    float tmu[TILE + 8] __attribute__((aligned(64))), ts[TILE + 8] __attribute__((aligned(64)));
    float tlp[TILE + 8] __attribute__((aligned(64)));
    for (int64_t t0 = 0; t0 < n; t0 += TILE) {
        const int64_t m = n - t0 < TILE ? n - t0 : TILE;
        const int64_t m8 = m & ~(int64_t)7, mp = (m + 7) & ~(int64_t)7;
        for (int64_t i = 0; i < m; ++i) tv[i] = (double)vals[t0 + i];
        for (int64_t i = m; i < mp; ++i) tv[i] = 0.0; /* padding: finite, masked in C */
        int64_t ml[8];
        for (int i = 0; i < 8; ++i) ml[i] = m8 + i < m ? -1 : 0;
        const __m256d mlo = _mm256_castsi256_pd(_mm256_loadu_si256((const __m256i *)ml));
        const __m256d mhi = _mm256_castsi256_pd(_mm256_loadu_si256((const __m256i *)(ml + 4)));
        for (int64_t p = 0; p < k; ++p) {
            const __m256d bb = _mm256_set1_pd(b[p]), ww = _mm256_set1_pd(w[p]);
            for (int64_t i = 0; i < mp; i += 8) { /* stage A */
                const __m256d elo = _mm256_fmadd_pd(ww, _mm256_load_pd(tv + i), bb);
                const __m256d ehi = _mm256_fmadd_pd(ww, _mm256_load_pd(tv + i + 4), bb);
                const __m256 x = to_f32(elo, ehi);
                _mm256_store_ps(tx + i, x);
                _mm256_store_ps(te + i, exp_neg8(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), x)));
            }
            for (int64_t i = 0; i < mp; i += 8) { /* stage B */
                __m256 mu, s, lp;
                sig_from_e8(_mm256_load_ps(tx + i), _mm256_load_ps(te + i), &mu, &s, &lp);
                _mm256_store_ps(tmu + i, mu);
                _mm256_store_ps(ts + i, s);
                _mm256_store_ps(tlp + i, lp);
            }
            __m256d A[6], B[6];
            for (int q = 0; q < 6; ++q) A[q] = B[q] = _mm256_setzero_pd();
            for (int64_t i = 0; i < m8; i += 8) { /* stage C */
                const __m256d vlo = _mm256_load_pd(tv + i), vhi = _mm256_load_pd(tv + i + 4);
                const __m256d elo = _mm256_fmadd_pd(ww, vlo, bb), ehi = _mm256_fmadd_pd(ww, vhi, bb);
                FIT_ACC_FULL(A, vlo, elo, _mm256_cvtps_pd(_mm_load_ps(tmu + i)),
                             _mm256_cvtps_pd(_mm_load_ps(ts + i)), _mm256_cvtps_pd(_mm_load_ps(tlp + i)));
                FIT_ACC_FULL(B, vhi, ehi, _mm256_cvtps_pd(_mm_load_ps(tmu + i + 4)),
                             _mm256_cvtps_pd(_mm_load_ps(ts + i + 4)), _mm256_cvtps_pd(_mm_load_ps(tlp + i + 4)));
            }
            if (m8 < m) {
                const int64_t i = m8;
                const __m256d vlo = _mm256_load_pd(tv + i), vhi = _mm256_load_pd(tv + i + 4);
                const __m256d elo = _mm256_fmadd_pd(ww, vlo, bb), ehi = _mm256_fmadd_pd(ww, vhi, bb);
                FIT_ACC(A, vlo, elo, _mm256_cvtps_pd(_mm_load_ps(tmu + i)),
                        _mm256_cvtps_pd(_mm_load_ps(ts + i)), _mm256_cvtps_pd(_mm_load_ps(tlp + i)), mlo);
                FIT_ACC(B, vhi, ehi, _mm256_cvtps_pd(_mm_load_ps(tmu + i + 4)),
                        _mm256_cvtps_pd(_mm_load_ps(ts + i + 4)), _mm256_cvtps_pd(_mm_load_ps(tlp + i + 4)), mhi);
            }
            for (int q = 0; q < 6; ++q) out[q * stride + p] += hsum(_mm256_add_pd(A[q], B[q]));
        }
    }
}

/* Pairs in lanes, for latents with few events: 8 pairs per vector, accumulators in an
 * L1-resident buffer, one pass over the (few) events per chunk of pairs. */
static void fit_latent_pairs(int64_t n, const float *vals, int64_t k, const double *b,
                             const double *w, int64_t stride, double *out) {
    double bt[PCHUNK] __attribute__((aligned(64))), wt[PCHUNK] __attribute__((aligned(64)));
    double acc[6][PCHUNK] __attribute__((aligned(64)));
    for (int64_t c0 = 0; c0 < k; c0 += PCHUNK) {
        const int64_t kk = k - c0 < PCHUNK ? k - c0 : PCHUNK, k8 = (kk + 7) & ~(int64_t)7;
        for (int64_t j = 0; j < k8; ++j) {
            bt[j] = j < kk ? b[c0 + j] : 0.0; /* padding lanes: finite, discarded */
            wt[j] = j < kk ? w[c0 + j] : 0.0;
            for (int q = 0; q < 6; ++q) acc[q][j] = 0.0;
        }
        for (int64_t i = 0; i < n; ++i) {
            const __m256d v = _mm256_set1_pd((double)vals[i]);
            for (int64_t j = 0; j < k8; j += 8) {
                const __m256d elo = _mm256_fmadd_pd(_mm256_load_pd(wt + j), v, _mm256_load_pd(bt + j));
                const __m256d ehi = _mm256_fmadd_pd(_mm256_load_pd(wt + j + 4), v, _mm256_load_pd(bt + j + 4));
                __m256 mu, s, lp;
                sig8(elo, ehi, &mu, &s, &lp);
                __m256d A[6], B[6];
                for (int q = 0; q < 6; ++q) {
                    A[q] = _mm256_load_pd(acc[q] + j);
                    B[q] = _mm256_load_pd(acc[q] + j + 4);
                }
                FIT_ACC_FULL(A, v, elo, LO_F64(mu), LO_F64(s), LO_F64(lp));
                FIT_ACC_FULL(B, v, ehi, HI_F64(mu), HI_F64(s), HI_F64(lp));
                for (int q = 0; q < 6; ++q) {
                    _mm256_store_pd(acc[q] + j, A[q]);
                    _mm256_store_pd(acc[q] + j + 4, B[q]);
                }
            }
        }
        for (int q = 0; q < 6; ++q)
            for (int64_t j = 0; j < kk; ++j) out[q * stride + c0 + j] += acc[q][j];
    }
}

static void fit_latent(int64_t n, const float *vals, int64_t k, const double *b,
                       const double *w, int64_t stride, double *out) {
    if (n < SMALL_N)
        fit_latent_pairs(n, vals, k, b, w, stride, out);
    else
        fit_latent_events(n, vals, k, b, w, stride, out);
}

#define EVAL_ACC(S, N, T, eta, lp, lab, c, m)                                           \
    do {                                                                              \
        const __m256d pos_ = _mm256_and_pd(_mm256_cmp_pd((eta), _mm256_setzero_pd(), _CMP_GT_OQ), (m)); \
        S = _mm256_add_pd(S, _mm256_and_pd(                                           \
            _mm256_add_pd(_mm256_max_pd((eta), _mm256_setzero_pd()), (lp)), (m)));     \
        N = _mm256_sub_epi64(N, _mm256_castpd_si256(pos_));                           \
        T = _mm256_sub_epi64(T, _mm256_and_si256(_mm256_castpd_si256(pos_),           \
                                                 _mm256_cmpeq_epi64((lab), (c))));    \
    } while (0)

static void eval_latent_events(int64_t n, const float *vals, const int32_t *rows,
                               const uint8_t *labels, int64_t k, const int32_t *classes,
                               const double *b, const double *w, int64_t stride, double *out) {
    double tv[TILE + 8] __attribute__((aligned(64)));
    int64_t tl[TILE + 8] __attribute__((aligned(64)));
    float te[TILE + 8] __attribute__((aligned(64))), tlp[TILE + 8] __attribute__((aligned(64)));
    for (int64_t t0 = 0; t0 < n; t0 += TILE) {
        const int64_t m = n - t0 < TILE ? n - t0 : TILE;
        const int64_t mp = (m + 7) & ~(int64_t)7;
        for (int64_t i = 0; i < m; ++i) {
            tv[i] = (double)vals[t0 + i];
            tl[i] = labels[rows[t0 + i]];
        }
        for (int64_t i = m; i < mp; ++i) tv[i] = 0.0, tl[i] = -1;
        int64_t ml[8]; /* lane masks of the last vector */
        for (int i = 0; i < 8; ++i) ml[i] = mp - 8 + i < m ? -1 : 0;
        for (int64_t p = 0; p < k; ++p) {
            const __m256d bb = _mm256_set1_pd(b[p]), ww = _mm256_set1_pd(w[p]);
            const __m256i c = _mm256_set1_epi64x(classes[p]);
            /* stages as in fit_latent_events: exp, then log1p, then accumulation */
            for (int64_t i = 0; i < mp; i += 8) {
                const __m256d elo = _mm256_fmadd_pd(ww, _mm256_load_pd(tv + i), bb);
                const __m256d ehi = _mm256_fmadd_pd(ww, _mm256_load_pd(tv + i + 4), bb);
                _mm256_store_ps(te + i, exp_neg8(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), to_f32(elo, ehi))));
            }
            for (int64_t i = 0; i < mp; i += 8) {
                const __m256 e = _mm256_load_ps(te + i);
                const __m256 t = _mm256_div_ps(e, _mm256_add_ps(_mm256_set1_ps(2.0f), e));
                _mm256_store_ps(tlp + i, _mm256_mul_ps(_mm256_add_ps(t, t), atanh_series8(_mm256_mul_ps(t, t))));
            }
            __m256d S0 = _mm256_setzero_pd(), S1 = _mm256_setzero_pd();
            __m256i N0 = _mm256_setzero_si256(), N1 = N0, T0 = N0, T1 = N0;
            const __m256d all = _mm256_castsi256_pd(_mm256_set1_epi64x(-1));
            for (int64_t i = 0; i < mp; i += 8) {
                const __m256d elo = _mm256_fmadd_pd(ww, _mm256_load_pd(tv + i), bb);
                const __m256d ehi = _mm256_fmadd_pd(ww, _mm256_load_pd(tv + i + 4), bb);
                /* only the last vector has lanes past the end */
                const int last = i + 8 == mp;
                const __m256d mlo = last ? _mm256_castsi256_pd(_mm256_loadu_si256((const __m256i *)ml)) : all;
                const __m256d mhi = last ? _mm256_castsi256_pd(_mm256_loadu_si256((const __m256i *)(ml + 4))) : all;
                EVAL_ACC(S0, N0, T0, elo, _mm256_cvtps_pd(_mm_load_ps(tlp + i)),
                         _mm256_load_si256((const __m256i *)(tl + i)), c, mlo);
                EVAL_ACC(S1, N1, T1, ehi, _mm256_cvtps_pd(_mm_load_ps(tlp + i + 4)),
                         _mm256_load_si256((const __m256i *)(tl + i + 4)), c, mhi);
            }
            out[p] += hsum(_mm256_add_pd(S0, S1));
            out[stride + p] += (double)hsum_i64(_mm256_add_epi64(N0, N1));
            out[2 * stride + p] += (double)hsum_i64(_mm256_add_epi64(T0, T1));
        }
    }
}

static void eval_latent(int64_t n, const float *vals, const int32_t *rows,
                        const uint8_t *labels, int64_t k, const int32_t *classes,
                        const double *b, const double *w, int64_t stride, double *out) {
    eval_latent_events(n, vals, rows, labels, k, classes, b, w, stride, out);
}

#else /* ------------------------------------------------- portable (generic C) kernel */
/* The same staged structure as the AVX2 kernel, as plain loops that the compiler
 * vectorises for the target (SSE2, NEON, ...). Counts are accumulated as doubles (exact
 * below 2^53) and labels compared as doubles, so every loop has one lane type family. */
static void fit_latent(int64_t n, const float *vals, int64_t k, const double *b,
                       const double *w, int64_t stride, double *out) {
    double tv[TILE] __attribute__((aligned(64)));
    float tx[TILE] __attribute__((aligned(64))), te[TILE] __attribute__((aligned(64)));
    float tmu[TILE] __attribute__((aligned(64))), ts[TILE] __attribute__((aligned(64)));
    float tlp[TILE] __attribute__((aligned(64)));
    for (int64_t t0 = 0; t0 < n; t0 += TILE) {
        const int64_t m = n - t0 < TILE ? n - t0 : TILE;
        for (int64_t i = 0; i < m; ++i) tv[i] = (double)vals[t0 + i];
        for (int64_t p = 0; p < k; ++p) {
            const double bb = b[p], ww = w[p];
#pragma omp simd
            for (int64_t i = 0; i < m; ++i) {
                const float x = (float)(bb + ww * tv[i]);
                tx[i] = x;
                te[i] = exp_neg(__builtin_fabsf(x));
            }
#pragma omp simd
            for (int64_t i = 0; i < m; ++i) {
                const float e = te[i];
                /* one division gives both 1/(1+e) and e/(2+e) */
                const float q = 1.0f / ((1.0f + e) * (2.0f + e));
                const float r = (2.0f + e) * q;
                const float t = e * (1.0f + e) * q;
                tlp[i] = 2.0f * t * atanh_series(t * t);
                tmu[i] = tx[i] >= 0.0f ? r : e * r;
                ts[i] = e * r * r;
            }
            double a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3, a4, a5)
            for (int64_t i = 0; i < m; ++i) {
                const double v = tv[i], eta = bb + ww * v;
                const double mud = (double)tmu[i], sd = (double)ts[i], sv = sd * v;
                a0 += mud;
                a1 += mud * v;
                a2 += sd;
                a3 += sv;
                a4 += sv * v;
                a5 += (eta > 0.0 ? eta : 0.0) + (double)tlp[i];
            }
            out[p] += a0;
            out[stride + p] += a1;
            out[2 * stride + p] += a2;
            out[3 * stride + p] += a3;
            out[4 * stride + p] += a4;
            out[5 * stride + p] += a5;
        }
    }
}

static void eval_latent(int64_t n, const float *vals, const int32_t *rows,
                        const uint8_t *labels, int64_t k, const int32_t *classes,
                        const double *b, const double *w, int64_t stride, double *out) {
    double tv[TILE] __attribute__((aligned(64))), tl[TILE] __attribute__((aligned(64)));
    float te[TILE] __attribute__((aligned(64))), tlp[TILE] __attribute__((aligned(64)));
    for (int64_t t0 = 0; t0 < n; t0 += TILE) {
        const int64_t m = n - t0 < TILE ? n - t0 : TILE;
        for (int64_t i = 0; i < m; ++i) {
            tv[i] = (double)vals[t0 + i];
            tl[i] = (double)labels[rows[t0 + i]];
        }
        for (int64_t p = 0; p < k; ++p) {
            const double bb = b[p], ww = w[p], c = (double)classes[p];
#pragma omp simd
            for (int64_t i = 0; i < m; ++i)
                te[i] = exp_neg(__builtin_fabsf((float)(bb + ww * tv[i])));
#pragma omp simd
            for (int64_t i = 0; i < m; ++i) {
                const float t = te[i] / (2.0f + te[i]);
                tlp[i] = 2.0f * t * atanh_series(t * t);
            }
            double a0 = 0, npos = 0, ntp = 0;
#pragma omp simd reduction(+ : a0, npos, ntp)
            for (int64_t i = 0; i < m; ++i) {
                const double eta = bb + ww * tv[i];
                a0 += (eta > 0.0 ? eta : 0.0) + (double)tlp[i];
                npos += eta > 0.0 ? 1.0 : 0.0;
                ntp += (eta > 0.0 && tl[i] == c) ? 1.0 : 0.0;
            }
            out[p] += a0;
            out[stride + p] += npos;
            out[2 * stride + p] += ntp;
        }
    }
}

#endif

/* Sums for latents [l0, l1); out is (6, n_pairs) row-major, accumulated into (+=). */
int pd_fit_sums(int64_t l0, int64_t l1, const int64_t *ev_ptr, const float *values,
                const int64_t *pair_ptr, const double *b, const double *w,
                int64_t n_pairs, double *out) {
    for (int64_t l = l0; l < l1; ++l) {
        const int64_t e0 = ev_ptr[l], n = ev_ptr[l + 1] - e0;
        const int64_t p0 = pair_ptr[l], k = pair_ptr[l + 1] - p0;
        if (n > 0 && k > 0) fit_latent(n, values + e0, k, b + p0, w + p0, n_pairs, out + p0);
    }
    return 0;
}

/* Evaluation sums for latents [l0, l1); out is (3, n_pairs), accumulated into. */
int pd_eval_sums(int64_t l0, int64_t l1, const int64_t *ev_ptr, const float *values,
                 const int32_t *rows, const uint8_t *labels, const int64_t *pair_ptr,
                 const int32_t *classes, const double *b, const double *w,
                 int64_t n_pairs, double *out) {
    for (int64_t l = l0; l < l1; ++l) {
        const int64_t e0 = ev_ptr[l], n = ev_ptr[l + 1] - e0;
        const int64_t p0 = pair_ptr[l], k = pair_ptr[l + 1] - p0;
        if (n > 0 && k > 0)
            eval_latent(n, values + e0, rows + e0, labels, k, classes + p0, b + p0, w + p0,
                        n_pairs, out + p0);
    }
    return 0;
}
