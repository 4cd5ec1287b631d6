/* Fast separable bicubic resize, fused with the paste or feathered blend, for fastgen._ext.image.
 *
 * Geometry and weights are OpenCV's INTER_CUBIC: source x = (d + 0.5) * ssize / dsize - 0.5
 * (in double, as IPP does), Keys cubic A = -0.75, replicated border.  The sums are float32,
 * ~1e-4 of a grey level from exact, so the result is within one level of cv2.resize and
 * differs from it only near .5 ties (~1e-5 of the samples for sources of 4 px and more).  The
 * bit-exact IPP emulation stays in image.pyx (`exact=True`).
 *
 * Pass order: the horizontal pass (4 taps gathered per pixel) costs several times the vertical
 * one (contiguous rows), so it runs on whichever side has fewer rows:
 *   - dh <= sh: vertical first, straight from the uint8 source rows into one padded float row
 *     of source width, then horizontal into the output row;
 *   - dh > sh: horizontal first on each source row (a 4-row ring), then vertical.
 * Each output row is then rounded into the destination (the frame itself for a paste) or
 * blended into it (docs/semantics.md §6.4: interior rows only at their 2 x feather edge pixels).
 *
 * Why a C header: the per-pixel horizontal pass needs explicit SIMD (GCC vector types, and on
 * x86-64 AVX2 intrinsics), and one wheel carries two builds of the same code, baseline and
 * x86-64-v3 (AVX2 + FMA, `target` attributes), picked once from the CPU's features.  No
 * -march=native.  Elsewhere (aarch64, other compilers) the baseline build is the only one.
 *
 * Taps and weights depend only on the four sizes: fr_plan_init builds them (the Cython layer
 * caches plans); fr_run allocates its few rows of scratch with malloc.  Both return -1 if out
 * of memory.  Nothing here takes the GIL; the Cython wrappers check every shape, stride and
 * bound before calling in.
 */
#ifndef FASTGEN_RESIZE_CORE_H
#define FASTGEN_RESIZE_CORE_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#if defined(__GNUC__)
#define FR_INLINE static inline __attribute__((always_inline))
#define FR_RESTRICT __restrict__
#define FR_HAVE_VEC 1
typedef float fr_v4f __attribute__((vector_size(16)));
typedef float fr_v4fu __attribute__((vector_size(16), aligned(4)));   /* unaligned access */
#else
#define FR_INLINE static inline
#define FR_RESTRICT
#endif

/* Padded float rows (interleaved BGR, as the images): 2 replicated pixels on the left (first tap
 * >= -2), 3 on the right (last tap <= ssize + 1, plus the spare lane of the last 4-float load). */
#define FR_PADL 2
#define FR_PADR 3

/* First tap and four weights of every output position along one axis. */
static void fr_taps(ptrdiff_t ssize, ptrdiff_t dsize, int *first, float *w) {
    const double A = -0.75, scale = (double)ssize / (double)dsize;
    for (ptrdiff_t d = 0; d < dsize; d++) {
        double f = ((double)d + 0.5) * scale - 0.5;
        double s = floor(f);
        double x = f - s;
        double c0 = ((A * (x + 1) - 5 * A) * (x + 1) + 8 * A) * (x + 1) - 4 * A;
        double c1 = ((A + 2) * x - (A + 3)) * x * x + 1;
        double c2 = ((A + 2) * (1 - x) - (A + 3)) * (1 - x) * (1 - x) + 1;
        int t = (int)s - 1;
        /* cannot trigger (f lies in [-0.5, ssize - 0.5)); keeps every read inside the pads */
        if (t < -FR_PADL) t = -FR_PADL;
        if (t > (int)ssize - 2) t = (int)ssize - 2;
        first[d] = t;
        w[4 * d] = (float)c0;
        w[4 * d + 1] = (float)c1;
        w[4 * d + 2] = (float)c2;
        w[4 * d + 3] = (float)(1.0 - c0 - c1 - c2);
    }
}

FR_INLINE ptrdiff_t fr_clamp(ptrdiff_t v, ptrdiff_t hi) { return v < 0 ? 0 : (v > hi ? hi : v); }

/* Replicate pixel 0 into the left pad and pixel n-1 into the right pad of a padded row. */
FR_INLINE void fr_pad(float *row, ptrdiff_t n) {
    float *p0 = row + 3 * FR_PADL, *pn = p0 + 3 * (n - 1);
    for (int k = 1; k <= FR_PADL; k++)
        for (int c = 0; c < 3; c++) p0[-3 * k + c] = p0[c];
    for (int k = 1; k <= FR_PADR; k++)
        for (int c = 0; c < 3; c++) pn[3 * k + c] = pn[c];
}

FR_INLINE void fr_widen(const uint8_t *FR_RESTRICT s, ptrdiff_t n, float *FR_RESTRICT d) {
    for (ptrdiff_t i = 0; i < n; i++) d[i] = (float)s[i];
}

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define FR_X86_V3 1
#include <immintrin.h>
#endif

/* Horizontal pass over a padded row: out[3x + c] = sum_k w[x, k] * row[off[x] + 3k + c], `off`
 * in floats.  Writes 3 * dw + 1 floats (the spare lane of the last pixel is junk).
 *
 * wide (x86-64-v3): the 12 inputs of a pixel are two 8-float loads, at taps 0-1 and 2-3, times
 *   [w0 w0 w0 w1 w1 w1 . .] and [w2 w2 w2 w3 w3 w3 . .] (one multiply, one FMA), and one
 *   permute + add folds lane c + 3 onto lane c.  4 loads a pixel instead of 9; the weights are
 *   stored as 8 floats [w0 w0 w0 w1 w1 w1 w2 w3] and the second vector permuted from them
 *   (16 floats a column measured ~10% slower at a 300 px box: the rows then spill out of L1).
 *   Lanes 6-7 read up to 2 floats past the last tap, inside the right pad.
 * narrow (baseline): four 4-float loads times a broadcast weight (4 floats a column). */
#ifdef FR_X86_V3
__attribute__((target("arch=x86-64-v3")))
static void fr_hpass_v3(const float *row, ptrdiff_t dw, const int *off, const float *w, float *out) {
    const __m256i second = _mm256_setr_epi32(6, 6, 6, 7, 7, 7, 6, 7);
    const __m256i fold = _mm256_setr_epi32(3, 4, 5, 6, 7, 7, 7, 7);
#pragma GCC unroll 2   /* measured 10-15% faster than the plain loop (fewer induction updates) */
    for (ptrdiff_t x = 0; x < dw; x++) {
        const float *p = row + off[x];
        __m256 wa = _mm256_loadu_ps(w + 8 * x);
        __m256 wb = _mm256_permutevar8x32_ps(wa, second);
        __m256 s = _mm256_fmadd_ps(_mm256_loadu_ps(p + 6), wb, _mm256_mul_ps(_mm256_loadu_ps(p), wa));
        s = _mm256_add_ps(s, _mm256_permutevar8x32_ps(s, fold));
        _mm_storeu_ps(out + 3 * x, _mm256_castps256_ps128(s));
    }
}
#endif

FR_INLINE void fr_hpass(const float *FR_RESTRICT row, ptrdiff_t dw, const int *FR_RESTRICT off,
                        const float *FR_RESTRICT w, float *FR_RESTRICT out, const int wide) {
#ifdef FR_X86_V3
    if (wide) {
        fr_hpass_v3(row, dw, off, w, out);
        return;
    }
#endif
    (void)wide;
#ifdef FR_HAVE_VEC
    for (ptrdiff_t x = 0; x < dw; x++) {
        const float *p = row + off[x], *wx = w + 4 * x;
        fr_v4f acc = *(const fr_v4fu *)p * wx[0] + *(const fr_v4fu *)(p + 3) * wx[1]
                   + *(const fr_v4fu *)(p + 6) * wx[2] + *(const fr_v4fu *)(p + 9) * wx[3];
        *(fr_v4fu *)(out + 3 * x) = acc;
    }
#else
    for (ptrdiff_t x = 0; x < dw; x++) {
        const float *p = row + off[x], *wx = w + 4 * x;
        for (int c = 0; c < 3; c++)
            out[3 * x + c] = p[c] * wx[0] + p[3 + c] * wx[1] + p[6 + c] * wx[2] + p[9 + c] * wx[3];
    }
    out[3 * dw] = 0;
#endif
}

/* Horizontal weights of one output column in the layout fr_hpass reads. */
FR_INLINE void fr_hweights(const float *t, float *w, const int wide) {
    if (wide) {
        const float v[8] = {t[0], t[0], t[0], t[1], t[1], t[1], t[2], t[3]};
        memcpy(w, v, sizeof v);
    } else {
        memcpy(w, t, 4 * sizeof(float));
    }
}

/* float -> uint8, rounded to nearest even (IPP's rounding) and saturated.  SSE2 (every x86-64)
 * converts and packs 16 values at a time; GCC does not vectorise the scalar form (it branches). */
FR_INLINE uint8_t fr_u8(float v) {
    long r = lrintf(v);
    return (uint8_t)(r < 0 ? 0 : (r > 255 ? 255 : r));
}

FR_INLINE void fr_store(const float *FR_RESTRICT v, ptrdiff_t n, uint8_t *FR_RESTRICT d) {
    ptrdiff_t i = 0;
#ifdef __SSE2__
    for (; i + 16 <= n; i += 16) {
        __m128i a = _mm_cvtps_epi32(_mm_loadu_ps(v + i)), b = _mm_cvtps_epi32(_mm_loadu_ps(v + i + 4));
        __m128i c = _mm_cvtps_epi32(_mm_loadu_ps(v + i + 8)), e = _mm_cvtps_epi32(_mm_loadu_ps(v + i + 12));
        _mm_storeu_si128((__m128i *)(d + i), _mm_packus_epi16(_mm_packs_epi32(a, b), _mm_packs_epi32(c, e)));
    }
#endif
    for (; i < n; i++) d[i] = fr_u8(v[i]);
}

/* Feathered blend of a uint8 patch row into d (docs/semantics.md §6.4), per byte with the
 * per-byte alpha a3 (0..256): (p * a + d * (256 - a) + 128) >> 8 fits in 16 bits. */
FR_INLINE void fr_blend(uint8_t *FR_RESTRICT d, const uint8_t *FR_RESTRICT p,
                        const uint16_t *FR_RESTRICT a3, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        uint16_t a = a3[i];
        d[i] = (uint8_t)((uint16_t)(p[i] * a + d[i] * (uint16_t)(256 - a) + 128) >> 8);
    }
}

/* Per-axis ramp of docs/semantics.md §6.4: 1..f+1 / (f+1) from each edge inwards, 1/256 steps */
FR_INLINE int fr_ramp(ptrdiff_t i, ptrdiff_t n, int feather) {
    ptrdiff_t d = (i < n - 1 - i ? i : n - 1 - i) + 1;
    return d > feather ? 256 : (int)((d * 256) / (feather + 1));
}

typedef struct {
    ptrdiff_t dw, dh, feather;
    uint8_t *dst;
    ptrdiff_t dpitch;
    uint8_t *prow;       /* patch row (feathered only) */
    uint16_t *ax3;       /* horizontal ramp per byte (feathered only) */
    uint16_t *a3;        /* this row's alpha per byte (feathered only) */
} fr_out;

FR_INLINE void fr_store_any(const float *FR_RESTRICT v, ptrdiff_t n, uint8_t *FR_RESTRICT d, const int wide);

/* Write output row y from its float values: straight into dst (hard), or blended. */
FR_INLINE void fr_emit(const fr_out *o, ptrdiff_t y, const float *v, const int wide) {
    uint8_t *d = o->dst + y * o->dpitch;
    ptrdiff_t n = 3 * o->dw, f = o->feather;
    if (f == 0) {
        fr_store_any(v, n, d, wide);
        return;
    }
    fr_store_any(v, n, o->prow, wide);
    int ay = fr_ramp(y, o->dh, (int)f);
    if (ay == 256) {
        /* interior row: alpha is the horizontal ramp alone, 256 (a plain copy) past the edges */
        ptrdiff_t e = 3 * f < n ? 3 * f : n;
        fr_blend(d, o->prow, o->ax3, e);
        if (n - e > e) {
            memcpy(d + e, o->prow + e, (size_t)(n - 2 * e));
            fr_blend(d + n - e, o->prow + n - e, o->ax3 + n - e, e);
        } else if (n > e) {
            fr_blend(d + e, o->prow + e, o->ax3 + e, n - e);
        }
    } else {
        for (ptrdiff_t i = 0; i < n; i++) o->a3[i] = (uint16_t)(((int)o->ax3[i] * ay + 128) >> 8);
        fr_blend(d, o->prow, o->a3, n);
    }
}

#ifdef FR_X86_V3
/* The vertical pass from uint8 rows, AVX2 + FMA: GCC vectorises the plain loop with a two-step
 * widening (bytes -> words -> dwords, plus lane extracts); vpmovzxbd does it in one. */
__attribute__((target("arch=x86-64-v3")))
static void fr_vpass_u8_v3(const uint8_t *u0, const uint8_t *u1, const uint8_t *u2,
                           const uint8_t *u3, const float *b, ptrdiff_t n, float *v) {
    const __m256 b0 = _mm256_set1_ps(b[0]), b1 = _mm256_set1_ps(b[1]);
    const __m256 b2 = _mm256_set1_ps(b[2]), b3 = _mm256_set1_ps(b[3]);
    ptrdiff_t i = 0;
#define FR_LD8(u) _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)((u) + i))))
    for (; i + 8 <= n; i += 8) {
        __m256 a = _mm256_mul_ps(FR_LD8(u0), b0);
        a = _mm256_fmadd_ps(FR_LD8(u1), b1, a);
        a = _mm256_fmadd_ps(FR_LD8(u2), b2, a);
        a = _mm256_fmadd_ps(FR_LD8(u3), b3, a);
        _mm256_storeu_ps(v + i, a);
    }
#undef FR_LD8
    for (; i < n; i++) v[i] = (float)u0[i] * b[0] + (float)u1[i] * b[1] + (float)u2[i] * b[2] + (float)u3[i] * b[3];
}

/* uint8 -> float (the horizontal-first path's source rows), the same one-step widening */
__attribute__((target("arch=x86-64-v3")))
static void fr_widen_v3(const uint8_t *s, ptrdiff_t n, float *d) {
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(d + i, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(s + i)))));
    for (; i < n; i++) d[i] = (float)s[i];
}

/* float -> uint8 (round to nearest even, saturate), 32 at a time; the in-lane packs leave the
 * dwords in lane order 0 4 1 5 2 6 3 7, which one permute undoes */
__attribute__((target("arch=x86-64-v3")))
static void fr_store_v3(const float *v, ptrdiff_t n, uint8_t *d) {
    ptrdiff_t i = 0;
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (; i + 32 <= n; i += 32) {
        __m256i a = _mm256_cvtps_epi32(_mm256_loadu_ps(v + i));
        __m256i b = _mm256_cvtps_epi32(_mm256_loadu_ps(v + i + 8));
        __m256i c = _mm256_cvtps_epi32(_mm256_loadu_ps(v + i + 16));
        __m256i e = _mm256_cvtps_epi32(_mm256_loadu_ps(v + i + 24));
        __m256i p = _mm256_packus_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, e));
        _mm256_storeu_si256((__m256i *)(d + i), _mm256_permutevar8x32_epi32(p, order));
    }
    for (; i < n; i++) d[i] = fr_u8(v[i]);
}
#endif

FR_INLINE void fr_vpass_u8(const uint8_t *FR_RESTRICT u0, const uint8_t *FR_RESTRICT u1,
                           const uint8_t *FR_RESTRICT u2, const uint8_t *FR_RESTRICT u3,
                           const float *b, ptrdiff_t n, float *FR_RESTRICT v, const int wide) {
#ifdef FR_X86_V3
    if (wide) {
        fr_vpass_u8_v3(u0, u1, u2, u3, b, n, v);
        return;
    }
#endif
    const float b0 = b[0], b1 = b[1], b2 = b[2], b3 = b[3];
    for (ptrdiff_t i = 0; i < n; i++)
        v[i] = (float)u0[i] * b0 + (float)u1[i] * b1 + (float)u2[i] * b2 + (float)u3[i] * b3;
    (void)wide;
}

FR_INLINE void fr_store_any(const float *FR_RESTRICT v, ptrdiff_t n, uint8_t *FR_RESTRICT d, const int wide) {
#ifdef FR_X86_V3
    if (wide) {
        fr_store_v3(v, n, d);
        return;
    }
#endif
    fr_store(v, n, d);
    (void)wide;
}

FR_INLINE void fr_widen_any(const uint8_t *FR_RESTRICT s, ptrdiff_t n, float *FR_RESTRICT d, const int wide) {
#ifdef FR_X86_V3
    if (wide) {
        fr_widen_v3(s, n, d);
        return;
    }
#endif
    fr_widen(s, n, d);
    (void)wide;
}

/* ------------------------------------------------------------------ plan: taps and weights */

/* Which build runs: -1 not yet known; a benign race (every thread stores the same value).
 * FASTGEN_RESIZE_BASELINE=1 in the environment forces the baseline build (tests use it to
 * cover that code on AVX2 machines). */
static int fr_wide = -1;

static int fr_detect_wide(void) {
#ifdef FR_X86_V3
    if (fr_wide < 0) {
        const char *force = getenv("FASTGEN_RESIZE_BASELINE");
        __builtin_cpu_init();
        fr_wide = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
                  && !(force && *force && strcmp(force, "0") != 0);
    }
    return fr_wide;
#else
    return 0;
#endif
}

/* Everything that depends only on the four sizes (immutable once built, shared by threads). */
typedef struct {
    ptrdiff_t sh, sw, dh, dw;
    int wide;            /* the weight layout of fr_hpass; selects the build in fr_run */
    float *hw;           /* horizontal weights, fr_hweights layout: 8 (wide) or 4 floats a column */
    float *vw;           /* 4 * dh vertical weights */
    int *hoff;           /* dw: first tap of each output column, in floats of a padded row */
    int *vrow;           /* 4 * dh: the (clamped) source row of each vertical tap */
    void *mem;
} fr_plan;

static void fr_plan_free(fr_plan *p) {
    free(p->mem);
    p->mem = NULL;
}

/* Returns 0, or -1 if out of memory.  Sizes must be >= 1 (the caller checks). */
static int fr_plan_init(fr_plan *p, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t dh, ptrdiff_t dw) {
    const int wide = fr_detect_wide();
    const size_t nw = (size_t)(dw > dh ? dw : dh);
    const size_t nf = (wide ? 8 : 4) * (size_t)dw + 4 * (size_t)dh + 4 * nw;
    const size_t ni = (size_t)dw + 5 * (size_t)dh;
    char *mem = (char *)malloc(nf * sizeof(float) + ni * sizeof(int));
    if (!mem) return -1;
    p->sh = sh; p->sw = sw; p->dh = dh; p->dw = dw;
    p->wide = wide;
    p->mem = mem;
    p->hw = (float *)mem;
    p->vw = p->hw + (wide ? 8 : 4) * dw;
    float *tw = p->vw + 4 * dh;             /* 4 * nw: taps before rearranging */
    p->hoff = (int *)(tw + 4 * nw);
    p->vrow = p->hoff + dw;
    int *vtap = p->vrow + 4 * dh;           /* dh */
    fr_taps(sw, dw, p->hoff, tw);
    for (ptrdiff_t x = 0; x < dw; x++) {
        p->hoff[x] = 3 * (p->hoff[x] + FR_PADL);
        fr_hweights(tw + 4 * x, p->hw + (wide ? 8 : 4) * x, wide);
    }
    fr_taps(sh, dh, vtap, p->vw);
    for (ptrdiff_t y = 0; y < dh; y++)
        for (int k = 0; k < 4; k++) p->vrow[4 * y + k] = (int)fr_clamp(vtap[y] + k, sh - 1);
    return 0;
}

/* ------------------------------------------------------------------ the resize */

/* Resize src (p->sh x p->sw x 3, row pitch spitch) to p->dh x p->dw x 3 and write it into dst
 * (row pitch dpitch): a plain write for feather == 0, else the feathered blend over dst's
 * pixels.  Returns 0, or -1 if out of memory.  `wide` is a constant in each build. */
FR_INLINE int fr_run_impl(const fr_plan *p, const uint8_t *src, ptrdiff_t spitch, uint8_t *dst,
                          ptrdiff_t dpitch, int feather, const int wide) {
    const ptrdiff_t sh = p->sh, sw = p->sw, dh = p->dh, dw = p->dw;
    fr_out o = {dw, dh, feather, dst, dpitch, NULL, NULL, NULL};
    if (sw == dw && sh == dh && feather == 0) {
        /* identity: every weight is (0, 1, 0, 0) exactly, so this is what the passes give */
        for (ptrdiff_t y = 0; y < dh; y++) memcpy(dst + y * dpitch, src + y * spitch, (size_t)(3 * dw));
        return 0;
    }
    /* vertical first when the height does not grow: the horizontal pass (the costly one)
     * then runs on dh rows instead of every source row */
    const int vfirst = dh <= sh;
    const size_t lrow = (size_t)(3 * (sw + FR_PADL + FR_PADR));     /* padded source-width row */
    const size_t lout = 3 * (size_t)dw + 4;                         /* output-width row */
    const size_t lring = vfirst ? 0 : lout;                         /* hfirst: 4 filtered rows */
    const size_t nb = feather ? 3 * (size_t)dw * (1 + 2 * sizeof(uint16_t)) : 0;
    char *mem = (char *)malloc((lrow + lout + 4 * lring) * sizeof(float) + nb);
    if (!mem) return -1;
    float *row = (float *)mem;
    float *out = row + lrow;
    float *ring = out + lout;
    if (feather) {
        o.ax3 = (uint16_t *)(ring + 4 * lring);
        o.a3 = o.ax3 + 3 * dw;
        o.prow = (uint8_t *)(o.a3 + 3 * dw);
        for (ptrdiff_t x = 0; x < dw; x++)
            o.ax3[3 * x] = o.ax3[3 * x + 1] = o.ax3[3 * x + 2] = (uint16_t)fr_ramp(x, dw, feather);
    }
    const float *hw = p->hw, *vw = p->vw;
    const int *hoff = p->hoff, *vrow = p->vrow;
    float *rowp = row + 3 * FR_PADL;
    ptrdiff_t tags[4] = {-1, -1, -1, -1};
    for (ptrdiff_t y = 0; y < dh; y++) {
        const float b0 = vw[4 * y], b1 = vw[4 * y + 1], b2 = vw[4 * y + 2], b3 = vw[4 * y + 3];
        if (vfirst) {
            /* vertical pass straight from the uint8 rows (a float copy of the source rows
             * measured no faster and costs 4 rows of cache) */
            const uint8_t *FR_RESTRICT u0 = src + vrow[4 * y] * spitch;
            const uint8_t *FR_RESTRICT u1 = src + vrow[4 * y + 1] * spitch;
            const uint8_t *FR_RESTRICT u2 = src + vrow[4 * y + 2] * spitch;
            const uint8_t *FR_RESTRICT u3 = src + vrow[4 * y + 3] * spitch;
            fr_vpass_u8(u0, u1, u2, u3, vw + 4 * y, 3 * sw, rowp, wide);
            fr_pad(row, sw);
            fr_hpass(row, dw, hoff, hw, out, wide);
        } else {
            /* the 4 filtered source rows of this output row, in a ring: slot r & 3 is unique
             * among 4 consecutive rows, and each source row is filtered once */
            const float *rows[4];
            for (int k = 0; k < 4; k++) {
                ptrdiff_t r = vrow[4 * y + k], slot = r & 3;
                float *h = ring + slot * lring;
                if (tags[slot] != r) {
                    tags[slot] = r;
                    fr_widen_any(src + r * spitch, 3 * sw, rowp, wide);
                    fr_pad(row, sw);
                    fr_hpass(row, dw, hoff, hw, h, wide);
                }
                rows[k] = h;
            }
            const float *FR_RESTRICT r0 = rows[0], *FR_RESTRICT r1 = rows[1];
            const float *FR_RESTRICT r2 = rows[2], *FR_RESTRICT r3 = rows[3];
            float *FR_RESTRICT v = out;
            for (ptrdiff_t i = 0; i < 3 * dw; i++) v[i] = r0[i] * b0 + r1[i] * b1 + r2[i] * b2 + r3[i] * b3;
        }
        fr_emit(&o, y, out, wide);
    }
    free(mem);
    return 0;
}

/* Two builds of the same code on x86-64 with GCC or clang: baseline (SSE2) and x86-64-v3
 * (AVX2 + FMA: the helpers above, and the compiler's 8-float loops), picked by the plan. */
#ifdef FR_X86_V3
__attribute__((target("arch=x86-64-v3")))
static int fr_run_v3(const fr_plan *p, const uint8_t *src, ptrdiff_t spitch, uint8_t *dst,
                     ptrdiff_t dpitch, int feather) {
    return fr_run_impl(p, src, spitch, dst, dpitch, feather, 1);
}
#endif

static int fr_run_base(const fr_plan *p, const uint8_t *src, ptrdiff_t spitch, uint8_t *dst,
                       ptrdiff_t dpitch, int feather) {
    return fr_run_impl(p, src, spitch, dst, dpitch, feather, 0);
}

static int fr_run(const fr_plan *p, const uint8_t *src, ptrdiff_t spitch, uint8_t *dst,
                  ptrdiff_t dpitch, int feather) {
#ifdef FR_X86_V3
    if (p->wide) return fr_run_v3(p, src, spitch, dst, dpitch, feather);
#endif
    return fr_run_base(p, src, spitch, dst, dpitch, feather);
}

/* One-off resize (plan built and freed here); for C-level benchmarks and tests. */
static inline int fr_resize(const uint8_t *src, ptrdiff_t spitch, ptrdiff_t sh, ptrdiff_t sw,
                     uint8_t *dst, ptrdiff_t dpitch, ptrdiff_t dh, ptrdiff_t dw, int feather) {
    fr_plan p;
    if (fr_plan_init(&p, sh, sw, dh, dw)) return -1;
    int rc = fr_run(&p, src, spitch, dst, dpitch, feather);
    fr_plan_free(&p);
    return rc;
}

#endif
