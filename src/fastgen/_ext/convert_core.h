/* The generator's tensors <-> uint8 BGR pixels, for fastgen._ext.image:
 *
 * fc_to_input: a BGR ROI -> the 6-plane input [B G R, masked B G R] = value / 255.0f
 * (docs/semantics.md §5), the mouth rectangle of the masked planes zero.  Each row is converted
 * once and copied into the masked planes around the rectangle (no whole-plane memcpy and memset
 * over it).  The x86-64-v3 build deinterleaves 16 pixels with 3 PSHUFB a channel, divides in
 * float32 (_mm256_div_ps rounds like the scalar division: bit-identical) and writes both planes
 * from the registers with non-temporal stores (measured on a 2-core Xeon: +3-4 % frame-path fps
 * at 2 workers, the 2.4 MB a frame no longer read for ownership first).
 *
 * fc_from_output: generator output (3 planes of float32 in [0, 1]) -> interleaved uint8 BGR
 * rows (docs/semantics.md §6.1).
 *
 * Each value is trunc(clamp(v * 255, 0, 255)), which is numpy's astype(uint8) after "* 255" for
 * values in range, with out-of-range values saturated and NaN written as 0 (max(NaN, 0) = 0 in
 * both builds: fmaxf returns the number, _mm256_max_ps its second operand).
 *
 * Why a header: the plane-to-interleaved store is a 3-way byte shuffle that compilers do not
 * vectorize from the scalar loop (measured: the plain loop ran at the same speed in both
 * builds).  The x86-64-v3 build converts 16 pixels of each plane to bytes (AVX2) and interleaves
 * them with 9 PSHUFB into 48 output bytes; ~8x faster than the scalar loop, bit-identical.
 * The build is picked with resize_core.h's detection (FASTGEN_RESIZE_BASELINE=1 forces the
 * baseline, which the tests use to cover both).
 */
#ifndef FASTGEN_CONVERT_CORE_H
#define FASTGEN_CONVERT_CORE_H

#include "resize_core.h"

static inline uint8_t fc_byte(float v) {
    v = fmaxf(v * 255.0f, 0.0f);
    return (uint8_t)(int)fminf(v, 255.0f);
}

static void fc_from_output_base(const float *pred, ptrdiff_t h, ptrdiff_t w, uint8_t *dst,
                                ptrdiff_t pitch) {
    const ptrdiff_t plane = h * w;
    for (ptrdiff_t y = 0; y < h; y++) {
        const float *b = pred + y * w, *g = b + plane, *r = g + plane;
        uint8_t *row = dst + y * pitch;
        for (ptrdiff_t x = 0; x < w; x++) {
            row[3 * x] = fc_byte(b[x]);
            row[3 * x + 1] = fc_byte(g[x]);
            row[3 * x + 2] = fc_byte(r[x]);
        }
    }
}

/* Row y of the masked planes: the unmasked row, with [mx0, mx1) zero on the mask's rows. */
static inline void fc_masked_row(const float *src, float *dst, ptrdiff_t w, ptrdiff_t y, ptrdiff_t my0,
                                 ptrdiff_t my1, ptrdiff_t mx0, ptrdiff_t mx1) {
    if (y < my0 || y >= my1 || mx0 >= mx1) {
        memcpy(dst, src, (size_t)w * sizeof(float));
        return;
    }
    memcpy(dst, src, (size_t)mx0 * sizeof(float));
    memset(dst + mx0, 0, (size_t)(mx1 - mx0) * sizeof(float));
    memcpy(dst + mx1, src + mx1, (size_t)(w - mx1) * sizeof(float));
}

static void fc_to_input_base(const uint8_t *src, ptrdiff_t pitch, ptrdiff_t h, ptrdiff_t w, float *out,
                             ptrdiff_t my0, ptrdiff_t my1, ptrdiff_t mx0, ptrdiff_t mx1) {
    const ptrdiff_t plane = h * w;
    for (ptrdiff_t y = 0; y < h; y++) {
        const uint8_t *row = src + y * pitch;
        float *p = out + y * w;
        for (int c = 0; c < 3; c++) {
            float *d = p + c * plane;
            for (ptrdiff_t x = 0; x < w; x++) d[x] = (float)row[3 * x + c] / 255.0f;
            fc_masked_row(d, d + 3 * plane, w, y, my0, my1, mx0, mx1);
        }
    }
}

#ifdef FR_X86_V3
/* Stores of the input planes: non-temporal when the buffer is 16-byte aligned (numpy's large
 * arrays always are), so the 2.4 MB a frame writes is not first read into the cache; the model
 * (or the copy to a GPU) reads it much later, from memory either way. */
enum { FC_STORE_CACHED, FC_STORE_NT128, FC_STORE_NT256 };

__attribute__((target("arch=x86-64-v3")))
static inline void fc_store_ps(float *d, __m256 v, int how) {
    if (how == FC_STORE_NT256) {
        _mm256_stream_ps(d, v);
    } else if (how == FC_STORE_NT128) {
        _mm_stream_ps(d, _mm256_castps256_ps128(v));
        _mm_stream_ps(d + 4, _mm256_extractf128_ps(v, 1));
    } else {
        _mm256_storeu_ps(d, v);
    }
}

/* 8 values of a channel -> the plain plane at d and the masked one at dm, whose lanes with x in
 * [mx0, mx1) are zero on a mask row (``lo`` = mx0 - 1, ``hi`` = mx1, ``xs`` the lanes' x). */
__attribute__((target("arch=x86-64-v3")))
static inline void fc_store8(float *d, float *dm, __m256 v, __m256i xs, __m256i lo, __m256i hi, int masked, int how) {
    __m256 vm = v;
    if (masked) {
        __m256i in = _mm256_and_si256(_mm256_cmpgt_epi32(xs, lo), _mm256_cmpgt_epi32(hi, xs));
        vm = _mm256_andnot_ps(_mm256_castsi256_ps(in), v);
    }
    fc_store_ps(d, v, how);
    fc_store_ps(dm, vm, how);
}

__attribute__((target("arch=x86-64-v3")))
static void fc_to_input_v3(const uint8_t *src, ptrdiff_t pitch, ptrdiff_t h, ptrdiff_t w, float *out,
                           ptrdiff_t my0, ptrdiff_t my1, ptrdiff_t mx0, ptrdiff_t mx1) {
    /* channel c's byte i of 16 pixels sits in input chunk q = (3 i + c) / 16 at (3 i + c) % 16:
     * mask m[c][q] moves it there from chunk q, -128 writes zero */
    signed char m[3][3][16];
    for (int c = 0; c < 3; c++)
        for (int q = 0; q < 3; q++)
            for (int i = 0; i < 16; i++)
                m[c][q][i] = (signed char)((3 * i + c) / 16 == q ? (3 * i + c) % 16 : -128);
    __m128i mask[3][3];
    for (int c = 0; c < 3; c++)
        for (int q = 0; q < 3; q++) mask[c][q] = _mm_loadu_si128((const __m128i *)m[c][q]);
    const ptrdiff_t plane = h * w;
    /* every row starts as aligned as ``out`` when w is a multiple of 8 */
    const uintptr_t at = (uintptr_t)out;
    const int how = w % 8 ? FC_STORE_CACHED : (at % 32 == 0 ? FC_STORE_NT256 : (at % 16 == 0 ? FC_STORE_NT128 : FC_STORE_CACHED));
    const __m256 k = _mm256_set1_ps(255.0f);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i lo = _mm256_set1_epi32((int)mx0 - 1), hi = _mm256_set1_epi32((int)mx1);
    for (ptrdiff_t y = 0; y < h; y++) {
        const uint8_t *row = src + y * pitch;
        float *p = out + y * w;
        const int masked = y >= my0 && y < my1 && mx0 < mx1;
        ptrdiff_t x = 0;
        for (; x + 16 <= w; x += 16) {
            const __m128i a = _mm_loadu_si128((const __m128i *)(row + 3 * x));
            const __m128i b = _mm_loadu_si128((const __m128i *)(row + 3 * x + 16));
            const __m128i c2 = _mm_loadu_si128((const __m128i *)(row + 3 * x + 32));
            const __m256i xs = _mm256_add_epi32(_mm256_set1_epi32((int)x), lane);
            const __m256i xs8 = _mm256_add_epi32(xs, _mm256_set1_epi32(8));
            for (int c = 0; c < 3; c++) {
                __m128i v = _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(a, mask[c][0]), _mm_shuffle_epi8(b, mask[c][1])),
                                         _mm_shuffle_epi8(c2, mask[c][2]));
                __m256 f0 = _mm256_div_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)), k);
                __m256 f1 = _mm256_div_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(v, 8))), k);
                float *d = p + c * plane + x;
                fc_store8(d, d + 3 * plane, f0, xs, lo, hi, masked, how);
                fc_store8(d + 8, d + 3 * plane + 8, f1, xs8, lo, hi, masked, how);
            }
        }
        for (; x < w; x++)
            for (int c = 0; c < 3; c++) {
                float v = (float)row[3 * x + c] / 255.0f;
                p[c * plane + x] = v;
                p[(c + 3) * plane + x] = masked && x >= mx0 && x < mx1 ? 0.0f : v;
            }
    }
    if (how != FC_STORE_CACHED) _mm_sfence();     /* order them before the caller's hand-off */
}
#endif

static void fc_to_input(const uint8_t *src, ptrdiff_t pitch, ptrdiff_t h, ptrdiff_t w, float *out,
                        ptrdiff_t my0, ptrdiff_t my1, ptrdiff_t mx0, ptrdiff_t mx1) {
#ifdef FR_X86_V3
    if (fr_detect_wide()) {
        fc_to_input_v3(src, pitch, h, w, out, my0, my1, mx0, mx1);
        return;
    }
#endif
    fc_to_input_base(src, pitch, h, w, out, my0, my1, mx0, mx1);
}

#ifdef FR_X86_V3
/* 16 floats -> 16 saturated bytes, in order. */
__attribute__((target("arch=x86-64-v3")))
static inline __m128i fc_bytes16(const float *p) {
    const __m256 k = _mm256_set1_ps(255.0f), z = _mm256_setzero_ps();
    __m256 a = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(_mm256_loadu_ps(p), k), z), k);
    __m256 b = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(_mm256_loadu_ps(p + 8), k), z), k);
    /* packs works per 128-bit lane: a0-3 b0-3 | a4-7 b4-7, put back in order by the permute */
    __m256i s = _mm256_packs_epi32(_mm256_cvttps_epi32(a), _mm256_cvttps_epi32(b));
    s = _mm256_permute4x64_epi64(s, 0xD8);
    return _mm_packus_epi16(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}

__attribute__((target("arch=x86-64-v3")))
static void fc_from_output_v3(const float *pred, ptrdiff_t h, ptrdiff_t w, uint8_t *dst,
                              ptrdiff_t pitch) {
    /* output byte i of chunk q (of 3 x 16) is channel (16q + i) % 3 of pixel (16q + i) / 3:
     * shuffle mask m[q][c] picks it from channel c's 16 bytes, -128 writes zero elsewhere */
    signed char m[3][3][16];
    for (int q = 0; q < 3; q++)
        for (int i = 0; i < 16; i++)
            for (int c = 0; c < 3; c++)
                m[q][c][i] = (signed char)((16 * q + i) % 3 == c ? (16 * q + i) / 3 : -128);
    __m128i mask[3][3];
    for (int q = 0; q < 3; q++)
        for (int c = 0; c < 3; c++) mask[q][c] = _mm_loadu_si128((const __m128i *)m[q][c]);
    const ptrdiff_t plane = h * w;
    for (ptrdiff_t y = 0; y < h; y++) {
        const float *b = pred + y * w, *g = b + plane, *r = g + plane;
        uint8_t *row = dst + y * pitch;
        ptrdiff_t x = 0;
        for (; x + 16 <= w; x += 16) {
            __m128i B = fc_bytes16(b + x), G = fc_bytes16(g + x), R = fc_bytes16(r + x);
            for (int q = 0; q < 3; q++) {
                __m128i o = _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(B, mask[q][0]),
                                                      _mm_shuffle_epi8(G, mask[q][1])),
                                         _mm_shuffle_epi8(R, mask[q][2]));
                _mm_storeu_si128((__m128i *)(row + 3 * x + 16 * q), o);
            }
        }
        for (; x < w; x++) {
            row[3 * x] = fc_byte(b[x]);
            row[3 * x + 1] = fc_byte(g[x]);
            row[3 * x + 2] = fc_byte(r[x]);
        }
    }
}
#endif

static void fc_from_output(const float *pred, ptrdiff_t h, ptrdiff_t w, uint8_t *dst, ptrdiff_t pitch) {
#ifdef FR_X86_V3
    if (fr_detect_wide()) {
        fc_from_output_v3(pred, h, w, dst, pitch);
        return;
    }
#endif
    fc_from_output_base(pred, h, w, dst, pitch);
}

#endif
