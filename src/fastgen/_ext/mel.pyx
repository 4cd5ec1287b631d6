"""Private STFT / log-mel kernels (public layer: fastgen.audio).

Each kernel is a C routine from stft_core.h called with the GIL released; the ``def`` wrappers
check every size and bound first, so a bad call raises instead of reading out of range.
"""
from libc.stddef cimport ptrdiff_t

cdef extern from "stft_core.h" nogil:
    ctypedef struct fg_plan:
        int n
        int h
    ctypedef struct fg_work:
        pass
    int fg_plan_init(fg_plan *p, int n)
    void fg_plan_free(fg_plan *p)
    int fg_work_alloc(fg_work *w, const fg_plan *p)
    void fg_work_free(fg_work *w)
    void fg_stft_mag(const fg_plan *p, fg_work *w, const float *x, ptrdiff_t L, int hop,
                     ptrdiff_t T, int reflect, double preemph, int kmax, float *out,
                     ptrdiff_t out_stride)
    void fg_log_mel(const fg_plan *p, fg_work *w, const float *x, ptrdiff_t L, int hop,
                    ptrdiff_t T, int reflect, double preemph, int nmels, const int *fstart,
                    const int *flen, const int *foff, const double *fw, int kmax, float *out)


cdef class _Plan:
    """Twiddles and window of one real FFT size; immutable once built, shared by threads."""
    cdef fg_plan plan

    def __cinit__(self, int n_fft):
        cdef int rc = fg_plan_init(&self.plan, n_fft)
        if rc == -1:
            raise ValueError(f"n_fft must be an even number >= 2, got {n_fft}")
        if rc != 0:
            raise MemoryError("cannot allocate the FFT plan")

    def __dealloc__(self):
        fg_plan_free(&self.plan)


_plans = {}


cdef _Plan _plan_for(int n_fft):
    plan = _plans.get(n_fft)
    if plan is None:
        plan = _plans.setdefault(n_fft, _Plan(n_fft))
    return plan


cdef inline Py_ssize_t _frame_count(Py_ssize_t n, int hop):
    return 1 + n // hop


def frame_count(Py_ssize_t n_samples, int hop):
    """Number of centred STFT frames: 1 + n_samples // hop."""
    return _frame_count(n_samples, hop)


def stft_magnitude(const float[::1] wav, int n_fft, int hop, bint reflect, double preemph,
                   float[:, ::1] out):
    """|STFT| of the pre-emphasised, centre-padded signal into out (T, n_fft // 2 + 1)."""
    cdef _Plan plan = _plan_for(n_fft)
    cdef Py_ssize_t L = wav.shape[0], T = _frame_count(L, hop) if hop > 0 else -1
    if hop <= 0:
        raise ValueError(f"hop must be positive, got {hop}")
    if out.shape[0] != T or out.shape[1] != n_fft // 2 + 1:
        raise ValueError(f"out has shape ({out.shape[0]}, {out.shape[1]}), expected ({T}, {n_fft // 2 + 1})")
    cdef const float *src = &wav[0] if L > 0 else NULL
    cdef fg_work work
    if fg_work_alloc(&work, &plan.plan) != 0:
        raise MemoryError("cannot allocate STFT scratch")
    with nogil:
        fg_stft_mag(&plan.plan, &work, src, L, hop, T, reflect, preemph, n_fft // 2 + 1,
                    &out[0, 0], out.shape[1])
    fg_work_free(&work)


def log_mel(const float[::1] wav, int n_fft, int hop, bint reflect, double preemph,
            const int[::1] fstart, const int[::1] flen, const int[::1] foff,
            const double[::1] weights, float[:, ::1] out):
    """Normalised log-mel (docs/semantics.md §1) of wav into out (T, n_mels); filters given sparse."""
    cdef _Plan plan = _plan_for(n_fft)
    if hop <= 0:
        raise ValueError(f"hop must be positive, got {hop}")
    cdef Py_ssize_t L = wav.shape[0], T = _frame_count(L, hop)
    cdef int nmels = <int>fstart.shape[0], kmax = 0, f
    if flen.shape[0] != nmels or foff.shape[0] != nmels:
        raise ValueError("fstart, flen and foff must have one entry per mel filter")
    if out.shape[0] != T or out.shape[1] != nmels:
        raise ValueError(f"out has shape ({out.shape[0]}, {out.shape[1]}), expected ({T}, {nmels})")
    for f in range(nmels):
        if (fstart[f] < 0 or flen[f] < 0 or fstart[f] + flen[f] > n_fft // 2 + 1
                or foff[f] < 0 or foff[f] + flen[f] > weights.shape[0]):
            raise ValueError(f"mel filter {f} is out of range")
        kmax = max(kmax, fstart[f] + flen[f])
    cdef const float *src = &wav[0] if L > 0 else NULL
    cdef float *dst = &out[0, 0] if T > 0 and nmels > 0 else NULL
    if dst == NULL:
        return
    cdef fg_work work
    if fg_work_alloc(&work, &plan.plan) != 0:
        raise MemoryError("cannot allocate STFT scratch")
    with nogil:
        fg_log_mel(&plan.plan, &work, src, L, hop, T, reflect, preemph, nmels, &fstart[0],
                   &flen[0], &foff[0], &weights[0], kmax, dst)
    fg_work_free(&work)
