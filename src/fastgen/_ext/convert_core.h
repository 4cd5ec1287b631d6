/* Generator output (3 planes of float32 in [0, 1]) -> interleaved uint8 BGR rows, for
 * fastgen._ext.image.from_generator_output (docs/semantics.md §6.1).
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
