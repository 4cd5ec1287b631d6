/* Batched real STFT magnitude / log-mel core for fastgen._ext.mel.
 *
 * Why a C header: the kernel runs four frames at once in the lanes of a GCC vector type (one AVX2
 * register of doubles, or two SSE2 registers), and `target_clones` lets one wheel carry a
 * baseline and an AVX2+FMA build of the hot functions, picked at load time.  No -march=native.
 *
 * Algorithm: an n-point real FFT is computed as an n/2-point complex FFT of the even/odd sample
 * pairs (mixed radix 4/2/3/5/generic, Stockham auto-sort, so no bit reversal), followed by the
 * usual split step.  Double precision throughout the FFT: the log-mel floor (mel = 1e-4) sits
 * ~100 dB below loud frames and a float32 FFT would not keep 2e-4 accuracy there.  n_fft = 800
 * (the model's size, docs/semantics.md §1.3) has a fused fast path, see "fast path" below.  After the FFT, the magnitude
 * root, the dB conversion and the normalisation are single precision (each well under 1e-6 in
 * the normalised output).
 *
 * Everything here is called without the GIL; it never allocates except in fg_plan_init and
 * fg_work_alloc, which the Cython layer calls with the GIL held and checks.
 */
#ifndef FASTGEN_STFT_CORE_H
#define FASTGEN_STFT_CORE_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FG_LANES 4
#define FG_MAX_STAGES 40

typedef double fg_v4d __attribute__((vector_size(32)));
typedef int64_t fg_v4l __attribute__((vector_size(32)));

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__)) && defined(__linux__)
#define FG_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FG_CLONES
#endif
#define FG_INLINE static inline __attribute__((always_inline))

typedef struct {
    int n;                       /* real transform length (even) */
    int h;                       /* complex length n/2 */
    int nstages;
    int radix[FG_MAX_STAGES];
    int m[FG_MAX_STAGES];        /* butterflies per stride group: len/radix */
    int s[FG_MAX_STAGES];        /* stride */
    int tw_off[FG_MAX_STAGES];   /* offset (in complex numbers) into tw */
    double *tw;                  /* stage twiddles exp(-2 pi i p u / len), interleaved re,im */
    double *post;                /* exp(-2 pi i k / n), k = 0..h, interleaved */
    double *win;                 /* analysis window, n values */
    double *winh;                /* half the window (win + n), for the fast path */
    int max_radix;
    double *dft;                 /* generic radix: exp(-2 pi i j / r) for the largest generic r */
} fg_plan;

/* Scratch for one group of FG_LANES frames. */
typedef struct {
    fg_v4d *are, *aim, *bre, *bim; /* h each */
    fg_v4d *mag;                   /* h + 1 */
    fg_v4d *tmp;                   /* 2 * max_radix (generic butterflies) */
    double *e;                     /* pre-emphasised samples of one group: n + 3 * (n / 2) */
    ptrdiff_t e_p0, e_len;         /* E holds padded samples e_p0 .. e_p0 + e_len - 1 (this call) */
} fg_work;

static void fg_plan_free(fg_plan *p) {
    free(p->tw); free(p->post); free(p->win); free(p->dft);
    p->tw = p->post = p->win = p->dft = NULL;
    p->winh = NULL;
}

/* Returns 0 on success, -1 on bad size, -2 on allocation failure. */
static int fg_plan_init(fg_plan *p, int n) {
    memset(p, 0, sizeof(*p));
    if (n < 2 || (n & 1)) return -1;
    p->n = n;
    p->h = n / 2;
    int rest = p->h, ns = 0;
    /* radix 4 first (cheapest per point), then 2, 3, 5, then any prime */
    while (rest > 1) {
        int r;
        if (rest % 4 == 0) r = 4;
        else if (rest % 2 == 0) r = 2;
        else if (rest % 3 == 0) r = 3;
        else if (rest % 5 == 0) r = 5;
        else { r = 7; while (rest % r) r += 2; }
        if (ns >= FG_MAX_STAGES) return -1;
        p->radix[ns++] = r;
        rest /= r;
    }
    p->nstages = ns;
    int len = p->h, s = 1, total = 0;
    p->max_radix = 1;
    for (int i = 0; i < ns; i++) {
        p->m[i] = len / p->radix[i];
        p->s[i] = s;
        p->tw_off[i] = total;
        total += p->m[i] * (p->radix[i] - 1);
        if (p->radix[i] > p->max_radix) p->max_radix = p->radix[i];
        s *= p->radix[i];
        len /= p->radix[i];
    }
    p->tw = (double *)malloc(sizeof(double) * 2 * (size_t)(total > 0 ? total : 1));
    p->post = (double *)malloc(sizeof(double) * 2 * (size_t)(p->h + 1));
    p->win = (double *)malloc(sizeof(double) * 2 * (size_t)n);
    p->dft = (double *)malloc(sizeof(double) * 2 * (size_t)p->max_radix);
    if (!p->tw || !p->post || !p->win || !p->dft) { fg_plan_free(p); return -2; }
    len = p->h;
    for (int i = 0; i < ns; i++) {
        int r = p->radix[i], m = p->m[i];
        double *t = p->tw + 2 * (size_t)p->tw_off[i];
        for (int q = 0; q < m; q++)
            for (int u = 1; u < r; u++) {
                double a = -2.0 * M_PI * (double)((long long)q * u) / (double)len;
                t[2 * (q * (r - 1) + u - 1)] = cos(a);
                t[2 * (q * (r - 1) + u - 1) + 1] = sin(a);
            }
        len /= r;
    }
    for (int k = 0; k <= p->h; k++) {
        double a = -2.0 * M_PI * (double)k / (double)n;
        p->post[2 * k] = cos(a);
        p->post[2 * k + 1] = sin(a);
    }
    for (int j = 0; j < p->max_radix; j++) {
        double a = -2.0 * M_PI * (double)j / (double)p->max_radix;
        p->dft[2 * j] = cos(a);
        p->dft[2 * j + 1] = sin(a);
    }
    /* periodic Hann, as scipy.signal.get_window("hann", n, fftbins=True) */
    for (int j = 0; j < n; j++) p->win[j] = 0.5 - 0.5 * cos(2.0 * M_PI * (double)j / (double)n);
    p->winh = p->win + n;
    for (int j = 0; j < n; j++) p->winh[j] = 0.5 * p->win[j];
    return 0;
}

static void fg_work_free(fg_work *w) {
    free(w->are);
    w->are = NULL;
}

static int fg_work_alloc(fg_work *w, const fg_plan *p) {
    size_t h = (size_t)p->h;
    size_t total = 4 * h + (h + 1) + 2 * (size_t)p->max_radix + (5 * h + 3) / 4 + 1;
    fg_v4d *base = (fg_v4d *)aligned_alloc(32, sizeof(fg_v4d) * total);
    w->are = base;
    if (!base) return -2;
    w->aim = base + h;
    w->bre = base + 2 * h;
    w->bim = base + 3 * h;
    w->mag = base + 4 * h;
    w->tmp = base + 5 * h + 1;
    w->e = (double *)(w->tmp + 2 * (size_t)p->max_radix);
    w->e_p0 = w->e_len = 0;
    return 0;
}

FG_INLINE fg_v4d fg_splat(double x) { fg_v4d v = {x, x, x, x}; return v; }

/* ---- sample access: pre-emphasis and centre padding folded into the frame load ---- */

/* Pre-emphasised sample j of the unpadded signal (0 <= j < L). */
FG_INLINE double fg_emph(const float *x, ptrdiff_t j, double preemph) {
    return j == 0 ? (double)x[0] : (double)x[j] - preemph * (double)x[j - 1];
}

/* Sample i of the centre-padded pre-emphasised signal, any i (edge frames only). */
static double fg_padded(const float *x, ptrdiff_t L, ptrdiff_t pad, ptrdiff_t i, int reflect,
                        double preemph) {
    ptrdiff_t j = i - pad;
    if (j >= 0 && j < L) return fg_emph(x, j, preemph);
    if (!reflect || L < 2) return (reflect && L == 1) ? fg_emph(x, 0, preemph) : 0.0;
    /* numpy "reflect" (no edge repeat): periodic with period 2(L-1) */
    ptrdiff_t period = 2 * (L - 1);
    j %= period;
    if (j < 0) j += period;
    if (j >= L) j = period - j;
    return fg_emph(x, j, preemph);
}

/* Load FG_LANES frames starting at padded offsets t0*hop, (t0+1)*hop, ... into (are, aim) as
 * z[q] = w[2q] y[2q] + i w[2q+1] y[2q+1].  Lanes at or beyond `nvalid` are zero frames. */
FG_INLINE void fg_load(const fg_plan *p, const float *x, ptrdiff_t L, int hop, ptrdiff_t t0,
                       int nvalid, int reflect, double preemph, fg_work *w) {
    const int n = p->n, h = p->h;
    const ptrdiff_t pad = n / 2;
    const double *win = p->win;
    const ptrdiff_t first = t0 * (ptrdiff_t)hop - pad; /* index into the unpadded signal */
    if (nvalid == FG_LANES && first >= 1 && first + (FG_LANES - 1) * (ptrdiff_t)hop + n <= L) {
        /* interior frames, the common case: whole vectors, pre-emphasis on the fly */
        const float *s0 = x + first, *s1 = s0 + hop, *s2 = s1 + hop, *s3 = s2 + hop;
        for (int q = 0; q < h; q++) {
            const int i = 2 * q;
            fg_v4d prev = {s0[i - 1], s1[i - 1], s2[i - 1], s3[i - 1]};
            fg_v4d even = {s0[i], s1[i], s2[i], s3[i]};
            fg_v4d odd = {s0[i + 1], s1[i + 1], s2[i + 1], s3[i + 1]};
            w->are[q] = (even - preemph * prev) * win[i];
            w->aim[q] = (odd - preemph * even) * win[i + 1];
        }
        return;
    }
    for (int l = 0; l < FG_LANES; l++) {
        ptrdiff_t start = first + l * (ptrdiff_t)hop;
        if (l >= nvalid) {
            for (int q = 0; q < h; q++) { w->are[q][l] = 0.0; w->aim[q][l] = 0.0; }
        } else {
            for (int q = 0; q < h; q++) {
                ptrdiff_t i = start + pad + 2 * q;
                w->are[q][l] = fg_padded(x, L, pad, i, reflect, preemph) * win[2 * q];
                w->aim[q][l] = fg_padded(x, L, pad, i + 1, reflect, preemph) * win[2 * q + 1];
            }
        }
    }
}

/* ---- complex FFT stages (Stockham, decimation in frequency) ---- */

#define CMUL_TW(yr, yi, xr, xi, c, s) do { fg_v4d _r = (xr) * (c) - (xi) * (s); \
    (yi) = (xr) * (s) + (xi) * (c); (yr) = _r; } while (0)

/* One stage of radix r, m butterflies per stride group, stride s, twiddles tw.  Always inlined, so
 * a call with constant r, m, s (the n_fft = 800 fast path) compiles to a specialised loop. */
FG_INLINE void fg_stage_x(const fg_plan *p, int r, int m, int s, const double *tw,
                          const fg_v4d *restrict xr, const fg_v4d *restrict xi,
                          fg_v4d *restrict yr, fg_v4d *restrict yi, fg_v4d *restrict tmp) {
    const ptrdiff_t sm = s * m;
    for (ptrdiff_t q = 0; q < m; q++) {
        const double *t = tw + 2 * (size_t)q * (r - 1);
        for (ptrdiff_t k = 0; k < s; k++) {
            const ptrdiff_t i0 = k + s * q;       /* input  x[k + s*(q + j*m)] */
            const ptrdiff_t o0 = k + s * r * q;   /* output y[k + s*(r*q + u)] */
            if (r == 4) {
                fg_v4d a0r = xr[i0], a0i = xi[i0], a1r = xr[i0 + sm], a1i = xi[i0 + sm];
                fg_v4d a2r = xr[i0 + 2 * sm], a2i = xi[i0 + 2 * sm];
                fg_v4d a3r = xr[i0 + 3 * sm], a3i = xi[i0 + 3 * sm];
                fg_v4d t0r = a0r + a2r, t0i = a0i + a2i, t1r = a0r - a2r, t1i = a0i - a2i;
                fg_v4d t2r = a1r + a3r, t2i = a1i + a3i, t3r = a1r - a3r, t3i = a1i - a3i;
                fg_v4d b1r = t1r + t3i, b1i = t1i - t3r; /* t1 - i t3 */
                fg_v4d b2r = t0r - t2r, b2i = t0i - t2i;
                fg_v4d b3r = t1r - t3i, b3i = t1i + t3r; /* t1 + i t3 */
                yr[o0] = t0r + t2r; yi[o0] = t0i + t2i;
                if (q) {
                    CMUL_TW(b1r, b1i, b1r, b1i, t[0], t[1]);
                    CMUL_TW(b2r, b2i, b2r, b2i, t[2], t[3]);
                    CMUL_TW(b3r, b3i, b3r, b3i, t[4], t[5]);
                }
                yr[o0 + s] = b1r; yi[o0 + s] = b1i;
                yr[o0 + 2 * s] = b2r; yi[o0 + 2 * s] = b2i;
                yr[o0 + 3 * s] = b3r; yi[o0 + 3 * s] = b3i;
            } else if (r == 2) {
                fg_v4d a0r = xr[i0], a0i = xi[i0], a1r = xr[i0 + sm], a1i = xi[i0 + sm];
                fg_v4d b1r = a0r - a1r, b1i = a0i - a1i;
                yr[o0] = a0r + a1r; yi[o0] = a0i + a1i;
                if (q) CMUL_TW(b1r, b1i, b1r, b1i, t[0], t[1]);
                yr[o0 + s] = b1r; yi[o0 + s] = b1i;
            } else if (r == 3) {
                const double c1 = -0.5, s1 = 0.86602540378443864676;
                fg_v4d a0r = xr[i0], a0i = xi[i0], a1r = xr[i0 + sm], a1i = xi[i0 + sm];
                fg_v4d a2r = xr[i0 + 2 * sm], a2i = xi[i0 + 2 * sm];
                fg_v4d tr = a1r + a2r, ti = a1i + a2i, dr = a1r - a2r, di = a1i - a2i;
                fg_v4d mr = a0r + c1 * tr, mi = a0i + c1 * ti;
                fg_v4d b1r = mr + s1 * di, b1i = mi - s1 * dr; /* m - i s1 d */
                fg_v4d b2r = mr - s1 * di, b2i = mi + s1 * dr;
                yr[o0] = a0r + tr; yi[o0] = a0i + ti;
                if (q) {
                    CMUL_TW(b1r, b1i, b1r, b1i, t[0], t[1]);
                    CMUL_TW(b2r, b2i, b2r, b2i, t[2], t[3]);
                }
                yr[o0 + s] = b1r; yi[o0 + s] = b1i;
                yr[o0 + 2 * s] = b2r; yi[o0 + 2 * s] = b2i;
            } else if (r == 5) {
                const double c1 = 0.30901699437494742410, c2 = -0.80901699437494742410;
                const double s1 = 0.95105651629515357212, s2 = 0.58778525229247312917;
                fg_v4d a0r = xr[i0], a0i = xi[i0], a1r = xr[i0 + sm], a1i = xi[i0 + sm];
                fg_v4d a2r = xr[i0 + 2 * sm], a2i = xi[i0 + 2 * sm];
                fg_v4d a3r = xr[i0 + 3 * sm], a3i = xi[i0 + 3 * sm];
                fg_v4d a4r = xr[i0 + 4 * sm], a4i = xi[i0 + 4 * sm];
                fg_v4d t1r = a1r + a4r, t1i = a1i + a4i, d1r = a1r - a4r, d1i = a1i - a4i;
                fg_v4d t2r = a2r + a3r, t2i = a2i + a3i, d2r = a2r - a3r, d2i = a2i - a3i;
                fg_v4d m1r = a0r + c1 * t1r + c2 * t2r, m1i = a0i + c1 * t1i + c2 * t2i;
                fg_v4d m2r = a0r + c2 * t1r + c1 * t2r, m2i = a0i + c2 * t1i + c1 * t2i;
                fg_v4d n1r = s1 * d1r + s2 * d2r, n1i = s1 * d1i + s2 * d2i;
                fg_v4d n2r = s2 * d1r - s1 * d2r, n2i = s2 * d1i - s1 * d2i;
                fg_v4d b1r = m1r + n1i, b1i = m1i - n1r; /* m1 - i n1 */
                fg_v4d b4r = m1r - n1i, b4i = m1i + n1r;
                fg_v4d b2r = m2r + n2i, b2i = m2i - n2r;
                fg_v4d b3r = m2r - n2i, b3i = m2i + n2r;
                yr[o0] = a0r + t1r + t2r; yi[o0] = a0i + t1i + t2i;
                if (q) {
                    CMUL_TW(b1r, b1i, b1r, b1i, t[0], t[1]);
                    CMUL_TW(b2r, b2i, b2r, b2i, t[2], t[3]);
                    CMUL_TW(b3r, b3i, b3r, b3i, t[4], t[5]);
                    CMUL_TW(b4r, b4i, b4r, b4i, t[6], t[7]);
                }
                yr[o0 + s] = b1r; yi[o0 + s] = b1i;
                yr[o0 + 2 * s] = b2r; yi[o0 + 2 * s] = b2i;
                yr[o0 + 3 * s] = b3r; yi[o0 + 3 * s] = b3i;
                yr[o0 + 4 * s] = b4r; yi[o0 + 4 * s] = b4i;
            } else {
                /* generic odd prime radix: O(r^2) direct DFT */
                const ptrdiff_t R = p->max_radix;
                fg_v4d *ar = tmp, *ai = tmp + r;
                for (ptrdiff_t j = 0; j < r; j++) { ar[j] = xr[i0 + j * sm]; ai[j] = xi[i0 + j * sm]; }
                for (ptrdiff_t u = 0; u < r; u++) {
                    fg_v4d br = fg_splat(0.0), bi = fg_splat(0.0);
                    for (ptrdiff_t j = 0; j < r; j++) {
                        ptrdiff_t e = (ptrdiff_t)(((long long)j * u) % r) * (R / r);
                        double c = p->dft[2 * e], sn = p->dft[2 * e + 1];
                        br += ar[j] * c - ai[j] * sn;
                        bi += ar[j] * sn + ai[j] * c;
                    }
                    if (u && q) CMUL_TW(br, bi, br, bi, t[2 * (u - 1)], t[2 * (u - 1) + 1]);
                    yr[o0 + u * s] = br; yi[o0 + u * s] = bi;
                }
            }
        }
    }
}

FG_INLINE void fg_stage(const fg_plan *p, int st, const fg_v4d *restrict xr, const fg_v4d *restrict xi,
                        fg_v4d *restrict yr, fg_v4d *restrict yi, fg_v4d *restrict tmp) {
    fg_stage_x(p, p->radix[st], p->m[st], p->s[st], p->tw + 2 * (size_t)p->tw_off[st], xr, xi, yr, yi,
               tmp);
}

/* FFT of (are, aim) in place (result lands back in are/aim), then the real split step and the
 * magnitudes |X[k]|, k = 0..kmax-1 (kmax <= h + 1), into w->mag. */
FG_INLINE void fg_magnitude(const fg_plan *p, fg_work *w, int kmax) {
    fg_v4d *xr = w->are, *xi = w->aim, *yr = w->bre, *yi = w->bim;
    for (int st = 0; st < p->nstages; st++) {
        fg_stage(p, st, xr, xi, yr, yi, w->tmp);
        fg_v4d *t;
        t = xr; xr = yr; yr = t;
        t = xi; xi = yi; yi = t;
    }
    const int h = p->h;
    const double *post = p->post;
    for (int k = 0; k < kmax; k++) {
        int k1 = k % h, k2 = (h - k) % h;
        fg_v4d zr = xr[k1], zi = xi[k1], cr = xr[k2], ci = -xi[k2]; /* Z[k], conj Z[h-k] */
        fg_v4d er = 0.5 * (zr + cr), ei = 0.5 * (zi + ci);
        fg_v4d dr = zr - cr, di = zi - ci;       /* O = -i (Z - Zc) / 2 */
        fg_v4d orr = 0.5 * di, oi = -0.5 * dr;
        double c = post[2 * k], s = post[2 * k + 1];
        fg_v4d Xr = er + orr * c - oi * s, Xi = ei + orr * s + oi * c;
        w->mag[k] = Xr * Xr + Xi * Xi;
    }
    /* a flat loop the vectoriser turns into packed square roots */
    double *mg = (double *)w->mag;
    /* single-precision root: 6e-8 relative, far inside the 2e-4 budget, and ~3x cheaper */
    for (int i = 0; i < FG_LANES * kmax; i++) mg[i] = (double)sqrtf((float)mg[i]);
}

/* ---- fast path for n_fft = 800 (h = 400 = 4 * 4 * 5 * 5) and hop <= n / 2 ----
 *
 * 1. the group's samples are pre-emphasised once into a contiguous double buffer E (E[i] is padded
 *    sample t0 * hop + i, so frame l's sample j is E[l * hop + j]);
 * 2. the first two radix-4 stages run as radix-16 blocks that read E directly: two 128-bit loads
 *    and an unpack give a sample pair for all four frames (no scalar gathers), times the window;
 * 3. the first radix-5 stage is the generic stage code with constant sizes;
 * 4. the last radix-5 stage runs butterflies k and 80 - k together, which produce Z[i] and
 *    Z[h - i] for the same i, so the real split step X[i], X[h - i] = E +- w O happens in registers
 *    and only the squared magnitudes are stored. */

/* E[i] = padded pre-emphasised sample t0 * hop + i, i < 3 hop + n.  Consecutive groups overlap by
 * 3 hop + n - 4 hop samples; those are moved down instead of recomputed. */
FG_INLINE void fg_fill_e(const float *x, ptrdiff_t L, int hop, ptrdiff_t t0, int n, int reflect,
                         double preemph, fg_work *w) {
    double *restrict E = w->e;
    const ptrdiff_t pad = n / 2, p0 = t0 * (ptrdiff_t)hop, first = p0 - pad;
    const ptrdiff_t len = 3 * (ptrdiff_t)hop + n;
    ptrdiff_t start = 0;
    if (w->e_len > 0 && p0 > w->e_p0 && p0 < w->e_p0 + w->e_len) {
        start = w->e_p0 + w->e_len - p0;
        memmove(E, E + (p0 - w->e_p0), sizeof(double) * (size_t)start);
    }
    if (first + start >= 1 && first + len <= L) {
        const float *restrict sp = x + first;
        for (ptrdiff_t i = start; i < len; i++) E[i] = (double)sp[i] - preemph * (double)sp[i - 1];
    } else {
        for (ptrdiff_t i = start; i < len; i++) E[i] = fg_padded(x, L, pad, p0 + i, reflect, preemph);
    }
    w->e_p0 = p0;
    w->e_len = len;
}

typedef double fg_v2d __attribute__((vector_size(16)));
typedef double fg_v2du __attribute__((vector_size(16), aligned(8)));

#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define FG_HAVE_SHUFFLEVECTOR 1
#endif
#endif

/* {a[0], a[1], b[0], b[1]}: one 128-bit load and one 128-bit insert */
FG_INLINE fg_v4d fg_ld22(const double *a, const double *b) {
#ifdef FG_HAVE_SHUFFLEVECTOR
    fg_v2d lo = *(const fg_v2du *)a, hi = *(const fg_v2du *)b;
    return __builtin_shufflevector(lo, hi, 0, 1, 2, 3);
#else
    fg_v4d v = {a[0], a[1], b[0], b[1]};
    return v;
#endif
}
#ifdef FG_HAVE_SHUFFLEVECTOR
FG_INLINE fg_v4d fg_unpack_lo(fg_v4d a, fg_v4d b) { return __builtin_shufflevector(a, b, 0, 4, 2, 6); }
FG_INLINE fg_v4d fg_unpack_hi(fg_v4d a, fg_v4d b) { return __builtin_shufflevector(a, b, 1, 5, 3, 7); }
FG_INLINE fg_v4d fg_cat_lo(fg_v4d a, fg_v4d b) { return __builtin_shufflevector(a, b, 0, 1, 4, 5); }
FG_INLINE fg_v4d fg_cat_hi(fg_v4d a, fg_v4d b) { return __builtin_shufflevector(a, b, 2, 3, 6, 7); }
#else
FG_INLINE fg_v4d fg_unpack_lo(fg_v4d a, fg_v4d b) { fg_v4d v = {a[0], b[0], a[2], b[2]}; return v; }
FG_INLINE fg_v4d fg_unpack_hi(fg_v4d a, fg_v4d b) { fg_v4d v = {a[1], b[1], a[3], b[3]}; return v; }
FG_INLINE fg_v4d fg_cat_lo(fg_v4d a, fg_v4d b) { fg_v4d v = {a[0], a[1], b[0], b[1]}; return v; }
FG_INLINE fg_v4d fg_cat_hi(fg_v4d a, fg_v4d b) { fg_v4d v = {a[2], a[3], b[2], b[3]}; return v; }
#endif

/* radix-5 butterfly without twiddles: b[u] = sum_j a[j] exp(-2 pi i j u / 5) */
FG_INLINE void fg_bf5(const fg_v4d *ar, const fg_v4d *ai, fg_v4d *br, fg_v4d *bi) {
    const double c1 = 0.30901699437494742410, c2 = -0.80901699437494742410;
    const double s1 = 0.95105651629515357212, s2 = 0.58778525229247312917;
    fg_v4d t1r = ar[1] + ar[4], t1i = ai[1] + ai[4], d1r = ar[1] - ar[4], d1i = ai[1] - ai[4];
    fg_v4d t2r = ar[2] + ar[3], t2i = ai[2] + ai[3], d2r = ar[2] - ar[3], d2i = ai[2] - ai[3];
    fg_v4d m1r = ar[0] + c1 * t1r + c2 * t2r, m1i = ai[0] + c1 * t1i + c2 * t2i;
    fg_v4d m2r = ar[0] + c2 * t1r + c1 * t2r, m2i = ai[0] + c2 * t1i + c1 * t2i;
    fg_v4d n1r = s1 * d1r + s2 * d2r, n1i = s1 * d1i + s2 * d2i;
    fg_v4d n2r = s2 * d1r - s1 * d2r, n2i = s2 * d1i - s1 * d2i;
    br[0] = ar[0] + t1r + t2r; bi[0] = ai[0] + t1i + t2i;
    br[1] = m1r + n1i; bi[1] = m1i - n1r;
    br[4] = m1r - n1i; bi[4] = m1i + n1r;
    br[2] = m2r + n2i; bi[2] = m2i - n2r;
    br[3] = m2r - n2i; bi[3] = m2i + n2r;
}

/* X[i] = E + w O and X[h - i] = conj(E - w O), with E = (Z[i] + conj Z[h-i]) / 2,
 * O = -i (Z[i] - conj Z[h-i]) / 2, w = exp(-2 pi i i / n): squared magnitudes into mag. */
FG_INLINE void fg_split_pair(fg_v4d zr, fg_v4d zi, fg_v4d cr, fg_v4d ci, const double *post,
                             ptrdiff_t i, ptrdiff_t h, fg_v4d *restrict mag) {
    /* cr, ci: Z[h - i] (not conjugated) */
    /* the input was scaled by 1/2 (half window), which makes these the exact E and O */
    fg_v4d er = zr + cr, ei = zi - ci;
    fg_v4d orr = zi + ci, oi = cr - zr;
    const double c = post[2 * i], s = post[2 * i + 1];
    fg_v4d wr = orr * c - oi * s, wi = orr * s + oi * c;
    fg_v4d xr = er + wr, xi = ei + wi, yr = er - wr, yi = ei - wi;
    mag[i] = xr * xr + xi * xi;
    mag[h - i] = yr * yr + yi * yi;
}

/* last radix-5 stage (stride h / 5, no twiddles) fused with the split step */
FG_INLINE void fg_last_r5_split(const fg_plan *p, const fg_v4d *restrict xr, const fg_v4d *restrict xi,
                                fg_v4d *restrict mag) {
    const ptrdiff_t h = p->h, s = h / 5;
    const double *restrict post = p->post;
    for (ptrdiff_t k = 0; k <= s / 2; k++) {
        const ptrdiff_t k2 = k ? s - k : 0;
        fg_v4d ar[5], ai[5], Ar[5], Ai[5], Br[5], Bi[5];
        for (ptrdiff_t j = 0; j < 5; j++) { ar[j] = xr[k + s * j]; ai[j] = xi[k + s * j]; }
        fg_bf5(ar, ai, Ar, Ai); /* Z[k + s u] */
        if (k2 != k) {
            for (ptrdiff_t j = 0; j < 5; j++) { ar[j] = xr[k2 + s * j]; ai[j] = xi[k2 + s * j]; }
            fg_bf5(ar, ai, Br, Bi); /* Z[k2 + s u] */
            /* h - (k + s u) = k2 + s (4 - u) */
            for (ptrdiff_t u = 0; u < 5; u++)
                fg_split_pair(Ar[u], Ai[u], Br[4 - u], Bi[4 - u], post, k + s * u, h, mag);
        } else if (k == 0) {
            /* h - s u = s (5 - u): pairs (0, 0 = h), (1, 4), (2, 3) */
            fg_split_pair(Ar[0], Ai[0], Ar[0], Ai[0], post, 0, h, mag);
            fg_split_pair(Ar[1], Ai[1], Ar[4], Ai[4], post, s, h, mag);
            fg_split_pair(Ar[2], Ai[2], Ar[3], Ai[3], post, 2 * s, h, mag);
        } else {
            /* k = s / 2 (s even): h - (k + s u) = k + s (4 - u): pairs (0, 4), (1, 3), (2, 2) */
            fg_split_pair(Ar[0], Ai[0], Ar[4], Ai[4], post, k, h, mag);
            fg_split_pair(Ar[1], Ai[1], Ar[3], Ai[3], post, k + s, h, mag);
            fg_split_pair(Ar[2], Ai[2], Ar[2], Ai[2], post, k + 2 * s, h, mag);
        }
    }
}

/* radix-4 butterfly without twiddles: b[u] = sum_j a[j] (-i)^(j u) */
FG_INLINE void fg_bf4(const fg_v4d *ar, const fg_v4d *ai, fg_v4d *br, fg_v4d *bi) {
    fg_v4d t0r = ar[0] + ar[2], t0i = ai[0] + ai[2], t1r = ar[0] - ar[2], t1i = ai[0] - ai[2];
    fg_v4d t2r = ar[1] + ar[3], t2i = ai[1] + ai[3], t3r = ar[1] - ar[3], t3i = ai[1] - ai[3];
    br[0] = t0r + t2r; bi[0] = t0i + t2i;
    br[1] = t1r + t3i; bi[1] = t1i - t3r;
    br[2] = t0r - t2r; bi[2] = t0i - t2i;
    br[3] = t1r - t3i; bi[3] = t1i + t3r;
}

/* Stages 1 and 2 of the 400-point FFT (radix 4, 4) as 25 radix-16 blocks, reading the frames
 * straight from E: block q runs stage-1 butterflies q + 25 j (j < 4) into a local array, then
 * the four stage-2 butterflies (q, k < 4), so the stage-1 output never goes through the big
 * buffers. */
FG_INLINE void fg_first_r16(const fg_plan *p, const double *restrict E, int hop, fg_v4d *restrict yr,
                            fg_v4d *restrict yi) {
    const double *restrict win = p->winh; /* the split step's 1/2 folded in (exact) */
    const double *restrict tw1 = p->tw + 2 * (size_t)p->tw_off[0];
    const double *restrict tw2 = p->tw + 2 * (size_t)p->tw_off[1];
    for (ptrdiff_t q = 0; q < 25; q++) {
        fg_v4d Tr[4][4], Ti[4][4];
        for (ptrdiff_t j2 = 0; j2 < 4; j2++) {
            const ptrdiff_t q1 = q + 25 * j2;
            fg_v4d ar[4], ai[4];
            for (ptrdiff_t j = 0; j < 4; j++) {
                const ptrdiff_t o = 2 * (q1 + 100 * j);
                fg_v4d a = fg_ld22(E + o, E + o + 2 * hop), b = fg_ld22(E + o + hop, E + o + 3 * hop);
                ar[j] = fg_unpack_lo(a, b) * win[o];
                ai[j] = fg_unpack_hi(a, b) * win[o + 1];
            }
            fg_bf4(ar, ai, Tr[j2], Ti[j2]);
            const double *t = tw1 + 6 * (size_t)q1;
            CMUL_TW(Tr[j2][1], Ti[j2][1], Tr[j2][1], Ti[j2][1], t[0], t[1]);
            CMUL_TW(Tr[j2][2], Ti[j2][2], Tr[j2][2], Ti[j2][2], t[2], t[3]);
            CMUL_TW(Tr[j2][3], Ti[j2][3], Tr[j2][3], Ti[j2][3], t[4], t[5]);
        }
        const double *t = tw2 + 6 * (size_t)q;
        for (ptrdiff_t k2 = 0; k2 < 4; k2++) {
            fg_v4d ar[4], ai[4], br[4], bi[4];
            for (ptrdiff_t j = 0; j < 4; j++) { ar[j] = Tr[j][k2]; ai[j] = Ti[j][k2]; }
            fg_bf4(ar, ai, br, bi);
            if (q) {
                CMUL_TW(br[1], bi[1], br[1], bi[1], t[0], t[1]);
                CMUL_TW(br[2], bi[2], br[2], bi[2], t[2], t[3]);
                CMUL_TW(br[3], bi[3], br[3], bi[3], t[4], t[5]);
            }
            for (ptrdiff_t u = 0; u < 4; u++) { yr[k2 + 16 * q + 4 * u] = br[u]; yi[k2 + 16 * q + 4 * u] = bi[u]; }
        }
    }
}

FG_INLINE int fg_fast800(const fg_plan *p, int hop) {
    return p->n == 800 && p->nstages == 4 && p->radix[0] == 4 && p->radix[1] == 4 &&
           p->radix[2] == 5 && p->radix[3] == 5 && hop >= 1 && hop <= p->n / 2;
}

/* |X[k]| (k = 0..kmax-1) of the group's FG_LANES frames into w->mag */
FG_INLINE void fg_group_mag(const fg_plan *p, fg_work *w, const float *x, ptrdiff_t L, int hop,
                            ptrdiff_t t0, int nvalid, int reflect, double preemph, int kmax) {
    if (fg_fast800(p, hop)) {
        fg_fill_e(x, L, hop, t0, 800, reflect, preemph, w);
        if (hop == 200) /* the model's hop: constant offsets */
            fg_first_r16(p, w->e, 200, w->are, w->aim);
        else
            fg_first_r16(p, w->e, hop, w->are, w->aim);
        fg_stage_x(p, 5, 5, 16, p->tw + 2 * (size_t)p->tw_off[2], w->are, w->aim, w->bre, w->bim, w->tmp);
        fg_last_r5_split(p, w->bre, w->bim, w->mag);
        double *mg = (double *)w->mag;
        for (ptrdiff_t i = 0; i < FG_LANES * kmax; i++) mg[i] = (double)sqrtf((float)mg[i]);
        return;
    }
    fg_load(p, x, L, hop, t0, nvalid, reflect, preemph, w);
    fg_magnitude(p, w, kmax);
}

/* |STFT| -> out[t * out_stride + k], t < T, k < kmax (float32). */
FG_CLONES
static void fg_stft_mag(const fg_plan *p, fg_work *w, const float *x, ptrdiff_t L, int hop,
                        ptrdiff_t T, int reflect, double preemph, int kmax, float *out,
                        ptrdiff_t out_stride) {
    w->e_len = 0; /* E is only valid within one call */
    for (ptrdiff_t t0 = 0; t0 < T; t0 += FG_LANES) {
        int nvalid = (int)(T - t0 < FG_LANES ? T - t0 : FG_LANES);
        fg_group_mag(p, w, x, L, hop, t0, nvalid, reflect, preemph, kmax);
        for (int l = 0; l < nvalid && l < FG_LANES; l++) {
            float *o = out + (t0 + l) * out_stride;
            for (int k = 0; k < kmax; k++) o[k] = (float)w->mag[k][l];
        }
    }
}

typedef float fg_v8f __attribute__((vector_size(32)));
typedef int32_t fg_v8i __attribute__((vector_size(32)));
typedef float fg_v8fu __attribute__((vector_size(32), aligned(4))); /* unaligned access */
typedef float fg_v4fu __attribute__((vector_size(16), aligned(4)));

FG_INLINE fg_v8f fg_sel8(fg_v8i mask, fg_v8f a, fg_v8f b) {
    union { fg_v8f f; fg_v8i i; } ua = {a}, ub = {b}, r;
    r.i = (ua.i & mask) | (ub.i & ~mask);
    return r.f;
}
FG_INLINE fg_v8f fg_splat8(float x) { fg_v8f v = {x, x, x, x, x, x, x, x}; return v; }

/* M = clip(8 (S + 100) / 100 - 4, -4, 4) with S = 20 log10(max(1e-5, x)) - 20, i.e.
 * M = clip(1.6 log10(max(x, 1e-5)) + 2.4, -4, 4), for eight positive floats.  Natural log by
 * exponent split and the Cephes logf polynomial (~1 ulp); |error in M| < 1e-6. */
FG_INLINE fg_v8f fg_norm8(fg_v8f x) {
    x = fg_sel8(x > fg_splat8(1e-5f), x, fg_splat8(1e-5f));
    union { fg_v8f f; fg_v8i i; } u = {x}, mu, eu;
    mu.i = (u.i & 0x007fffff) | 0x3f800000; /* mantissa in [1, 2) */
    eu.i = (u.i >> 23) | 0x4b000000;        /* 2^23 + biased exponent, exactly */
    fg_v8f m = mu.f, e = eu.f - (8388608.0f + 127.0f);
    fg_v8i big = m > fg_splat8(1.41421356f);
    m = fg_sel8(big, m * 0.5f, m);
    e = fg_sel8(big, e + 1.0f, e);
    fg_v8f f = m - 1.0f, z = f * f;
    fg_v8f y = fg_splat8(7.0376836292e-2f);
    y = y * f - 1.1514610310e-1f;
    y = y * f + 1.1676998740e-1f;
    y = y * f - 1.2420140846e-1f;
    y = y * f + 1.4249322787e-1f;
    y = y * f - 1.6668057665e-1f;
    y = y * f + 2.0000714765e-1f;
    y = y * f - 2.4999993993e-1f;
    y = y * f + 3.3333331174e-1f;
    y = f + (y * f * z - 0.5f * z); /* ln(m) */
    /* 1.6 / ln(10), and 1.6 log10(2) */
    fg_v8f M = y * 0.69487117105f + (e * 0.48164799306f + 2.4f);
    M = fg_sel8(M > fg_splat8(4.0f), fg_splat8(4.0f), M);
    M = fg_sel8(M < fg_splat8(-4.0f), fg_splat8(-4.0f), M);
    return M;
}

FG_INLINE float fg_norm1(float x) {
    fg_v8f v = {x, x, x, x, x, x, x, x};
    return fg_norm8(v)[0];
}

/* sum_k wt[k] mg[k], k < len: four independent chains */
FG_INLINE fg_v4d fg_mel_sum(const fg_v4d *restrict mg, const double *restrict wt, int len) {
    fg_v4d a0 = fg_splat(0.0), a1 = a0, a2 = a0, a3 = a0;
    ptrdiff_t k = 0;
    for (; k + 4 <= len; k += 4) {
        a0 += wt[k] * mg[k];
        a1 += wt[k + 1] * mg[k + 1];
        a2 += wt[k + 2] * mg[k + 2];
        a3 += wt[k + 3] * mg[k + 3];
    }
    if (k + 2 <= len) { a0 += wt[k] * mg[k]; a1 += wt[k + 1] * mg[k + 1]; k += 2; }
    if (k < len) a2 += wt[k] * mg[k];
    return (a0 + a1) + (a2 + a3);
}

/* Log-mel (docs/semantics.md §1): out[t * nmels + f] for t < T.  Filter f covers bins
 * fstart[f] .. fstart[f] + flen[f] - 1 with weights fw[foff[f] ...]. */
FG_CLONES
static void fg_log_mel(const fg_plan *p, fg_work *w, const float *x, ptrdiff_t L, int hop,
                       ptrdiff_t T, int reflect, double preemph, int nmels, const int *fstart,
                       const int *flen, const int *foff, const double *fw, int kmax, float *out) {
    w->e_len = 0; /* E is only valid within one call */
    for (ptrdiff_t t0 = 0; t0 < T; t0 += FG_LANES) {
        ptrdiff_t nvalid = (T - t0 < FG_LANES ? T - t0 : FG_LANES);
        fg_group_mag(p, w, x, L, hop, t0, nvalid, reflect, preemph, kmax);
        /* mel sums, transposed four filters at a time into the frames' rows (float) */
        float *row = out + t0 * nmels;
        const ptrdiff_t nm4 = nmels - nmels % 4;
        for (ptrdiff_t f = 0; f < nm4; f += 4) {
            fg_v4d a[4];
            for (ptrdiff_t g = 0; g < 4; g++) {
                const fg_v4d *mg = w->mag + fstart[f + g];
                const double *wt = fw + foff[f + g];
                a[g] = fg_mel_sum(mg, wt, flen[f + g]);
            }
            fg_v4d t0v = fg_unpack_lo(a[0], a[1]), t1v = fg_unpack_hi(a[0], a[1]);
            fg_v4d t2v = fg_unpack_lo(a[2], a[3]), t3v = fg_unpack_hi(a[2], a[3]);
            fg_v4d r[4] = {fg_cat_lo(t0v, t2v), fg_cat_lo(t1v, t3v), fg_cat_hi(t0v, t2v), fg_cat_hi(t1v, t3v)};
            for (ptrdiff_t l = 0; l < nvalid && l < FG_LANES; l++) {
                fg_v4fu v = {(float)r[l][0], (float)r[l][1], (float)r[l][2], (float)r[l][3]};
                *(fg_v4fu *)(row + l * nmels + f) = v;
            }
        }
        for (ptrdiff_t f = nm4; f < nmels; f++) {
            const fg_v4d *mg = w->mag + fstart[f];
            const double *wt = fw + foff[f];
            fg_v4d acc = fg_mel_sum(mg, wt, flen[f]);
            for (ptrdiff_t l = 0; l < nvalid && l < FG_LANES; l++) row[l * nmels + f] = (float)acc[l];
        }
        /* dB and normalisation over the group's rows, eight values at a time */
        const ptrdiff_t cnt = nvalid * nmels;
        ptrdiff_t i = 0;
        for (; i + 8 <= cnt; i += 8) *(fg_v8fu *)(row + i) = fg_norm8(*(fg_v8fu *)(row + i));
        for (; i < cnt; i++) row[i] = fg_norm1(row[i]);
    }
}

#endif /* FASTGEN_STFT_CORE_H */
