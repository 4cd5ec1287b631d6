"""Private image kernels (public layer: fastgen.image).

Every kernel is a ``cdef ... noexcept nogil`` routine plus a ``def`` wrapper that checks shapes,
strides and bounds and then releases the GIL.  Images are uint8 BGR with contiguous pixels
(pixel stride 3) and any positive row pitch, so views such as ``frame[y0:y1, x0:x1]`` are used in
place, never copied.
"""
from collections import OrderedDict
from threading import Lock

from libc.math cimport floor, nearbyintf
from libc.stddef cimport ptrdiff_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

ctypedef unsigned char u8

cdef extern from "convert_core.h" nogil:
    # generator output -> uint8 BGR: trunc(clamp(v * 255, 0, 255)), NaN -> 0; AVX2 builds where
    # the CPU has it (resize_core.h's detection)
    void fc_from_output(const float *pred, ptrdiff_t h, ptrdiff_t w, u8 *dst, ptrdiff_t pitch)
    # ROI -> the 6-plane generator input, value / 255 (mouth rectangle of planes 3-5 zero)
    void fc_to_input(const u8 *src, ptrdiff_t pitch, ptrdiff_t h, ptrdiff_t w, float *out,
                     ptrdiff_t my0, ptrdiff_t my1, ptrdiff_t mx0, ptrdiff_t mx1)

cdef extern from "resize_core.h" nogil:
    # the fast path (float32, SIMD, one build per ISA): a plan of taps and weights per size
    # quadruple, then the resize with a plain write (feather 0) or the feathered blend
    ctypedef struct fr_plan:
        pass
    int fr_plan_init(fr_plan *p, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t dh, ptrdiff_t dw)
    void fr_plan_free(fr_plan *p)
    int fr_run(const fr_plan *p, const u8 *src, ptrdiff_t spitch, u8 *dst, ptrdiff_t dpitch,
               int feather)
    int fr_detect_wide()

# tap offsets are C ints (3 x side must fit); far above any frame a video codec makes
cdef Py_ssize_t _MAX_SIDE = 1 << 24


def resize_build():
    """Which build of the fast resize runs here: "x86-64-v3" (AVX2 + FMA) or "baseline"."""
    return "x86-64-v3" if fr_detect_wide() else "baseline"


cdef class _ResizePlan:
    """Taps and weights of one (src, dst) size pair; immutable once built, shared by threads."""
    cdef fr_plan plan

    def __cinit__(self, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dw):
        if fr_plan_init(&self.plan, sh, sw, dh, dw):
            raise MemoryError("resize plan: out of memory")

    def __dealloc__(self):
        fr_plan_free(&self.plan)


# Building a plan is ~4% of a 328 -> 300 resize, so plans are kept, least recently used out
# first.  An avatar has one box size per template (a few hundred at most); a plan for a 300 px
# box is ~20 KB.  The lock makes lookup + reordering one step for concurrent callers.
_PLANS_MAX = 256
_plans = OrderedDict()
_plans_lock = Lock()


cdef _ResizePlan _plan(Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dw):
    key = (sh, sw, dh, dw)
    with _plans_lock:
        plan = _plans.get(key)
        if plan is not None:
            _plans.move_to_end(key)
            return plan
    plan = _ResizePlan(sh, sw, dh, dw)      # outside the lock; a duplicate build is harmless
    with _plans_lock:
        _plans[key] = plan
        while len(_plans) > _PLANS_MAX:
            _plans.popitem(last=False)
    return plan


cdef inline Py_ssize_t _pitch(const u8[:, :, :] img, str name) except -1:
    if img.shape[2] != 3:
        raise ValueError(f"{name}: expected 3 channels, got shape "
                         f"({img.shape[0]}, {img.shape[1]}, {img.shape[2]})")
    if img.shape[0] == 0 or img.shape[1] == 0:
        return 0
    if img.strides[2] != 1 or (img.shape[1] > 1 and img.strides[1] != 3):
        raise ValueError(f"{name}: expected contiguous 3-channel pixels, got shape "
                         f"({img.shape[0]}, {img.shape[1]}, {img.shape[2]}) with strides "
                         f"({img.strides[0]}, {img.strides[1]}, {img.strides[2]})")
    if img.shape[0] > 1 and img.strides[0] < img.shape[1] * 3:
        raise ValueError(f"{name}: row stride {img.strides[0]} is smaller than a row "
                         f"({img.shape[1]} pixels x 3)")
    return img.strides[0]


# ---------------------------------------------------------------- generator input / output

def to_generator_input(const u8[:, :, :] roi, float[:, :, ::1] out, Py_ssize_t mask_y0,
                       Py_ssize_t mask_y1, Py_ssize_t mask_x0, Py_ssize_t mask_x1):
    """roi (H, W, 3) uint8 -> out (6, H, W) float32: [roi B,G,R, masked B,G,R] / 255."""
    cdef Py_ssize_t pitch = _pitch(roi, "roi"), h = roi.shape[0], w = roi.shape[1]
    if out.shape[0] != 6 or out.shape[1] != h or out.shape[2] != w:
        raise ValueError(f"out has shape ({out.shape[0]}, {out.shape[1]}, {out.shape[2]}), "
                         f"expected (6, {h}, {w})")
    if h == 0 or w == 0:
        return
    mask_y0, mask_y1 = max(0, mask_y0), min(h, mask_y1)
    mask_x0, mask_x1 = max(0, mask_x0), min(w, mask_x1)
    with nogil:
        fc_to_input(&roi[0, 0, 0], pitch, h, w, &out[0, 0, 0], mask_y0, mask_y1, mask_x0, mask_x1)


def from_generator_output(const float[:, :, ::1] pred, u8[:, :, :] out):
    """pred (3, H, W) float32 in [0, 1] -> out (H, W, 3) uint8 = trunc(pred * 255), HWC."""
    cdef Py_ssize_t pitch = _pitch(out, "out"), h = out.shape[0], w = out.shape[1]
    if pred.shape[0] != 3 or pred.shape[1] != h or pred.shape[2] != w:
        raise ValueError(f"pred has shape ({pred.shape[0]}, {pred.shape[1]}, {pred.shape[2]}), "
                         f"expected (3, {h}, {w})")
    if h == 0 or w == 0:
        return
    with nogil:
        fc_from_output(&pred[0, 0, 0], h, w, &out[0, 0, 0], pitch)


# ---------------------------------------------------------------- bicubic resize (INTER_CUBIC)

cdef inline void _cubic_coeffs(double x, double *c) noexcept nogil:
    # Keys cubic, A = -0.75 (OpenCV's interpolateCubic; IPP's B = 0, C = 0.75), in double
    cdef double A = -0.75
    c[0] = ((A * (x + 1) - 5 * A) * (x + 1) + 8 * A) * (x + 1) - 4 * A
    c[1] = ((A + 2) * x - (A + 3)) * x * x + 1
    c[2] = ((A + 2) * (1 - x) - (A + 3)) * (1 - x) * (1 - x) + 1
    c[3] = 1.0 - c[0] - c[1] - c[2]


cdef inline Py_ssize_t _clamp(Py_ssize_t v, Py_ssize_t hi) noexcept nogil:
    return 0 if v < 0 else (hi if v > hi else v)


cdef void _taps(Py_ssize_t ssize, Py_ssize_t dsize, int *first, double *coef) noexcept nogil:
    """Source index of the first tap and the four cubic weights of every output pixel.

    The source position is computed in double from the exact ratio ssize / dsize, as IPP does
    (OpenCV's own float ``(d + 0.5) * scale - 0.5`` loses ~1e-5 of the phase at x ~ 300).
    """
    cdef Py_ssize_t d
    cdef double f
    cdef double c[4]
    cdef int s, k
    for d in range(dsize):
        f = (d + 0.5) * <double>ssize / <double>dsize - 0.5
        s = <int>floor(f)
        f -= s
        _cubic_coeffs(f, c)
        first[d] = s - 1
        for k in range(4):
            coef[4 * d + k] = c[k]


cdef int _resize(const u8 *src, Py_ssize_t spitch, Py_ssize_t sh, Py_ssize_t sw,
                 u8 *dst, Py_ssize_t dpitch, Py_ssize_t dh, Py_ssize_t dw) noexcept nogil:
    """Separable cubic resize: horizontal pass into a 4-row ring, then the vertical pass.

    Models what OpenCV 5.x computes by default for INTER_CUBIC on uint8 on x86-64, which is
    IPP's ippiResizeCubic (hal/ipp, B = 0, C = 0.75, replicated border): double-precision
    source positions and weights, horizontal sums in double stored as float, vertical sums in
    float with float weights, rounded to nearest-even.  IPP's exact float op order is not public;
    this agrees with it on all but ~1e-5 of the samples (off by one, at .5 ties).  Sources under
    4 px in either axis go to OpenCV's own fixed-point path instead of IPP (not modelled here).
    Returns -1 if out of memory.
    """
    cdef int *xf = <int *>malloc(dw * sizeof(int))
    cdef double *xc = <double *>malloc(4 * dw * sizeof(double))
    cdef int *yf = <int *>malloc(dh * sizeof(int))
    cdef double *yc = <double *>malloc(4 * dh * sizeof(double))
    cdef Py_ssize_t *xo = <Py_ssize_t *>malloc(4 * dw * sizeof(Py_ssize_t))
    cdef float *ring = <float *>malloc(4 * dw * 3 * sizeof(float))
    cdef Py_ssize_t tags[4]
    cdef Py_ssize_t x, y, k, r, slot, j
    cdef const u8 *srow
    cdef float *hrow
    cdef const float *rows[4]
    cdef double a0, a1, a2, a3
    cdef const Py_ssize_t *o
    cdef float b0, b1, b2, b3, v
    cdef u8 *drow
    if not (xf and xc and yf and yc and xo and ring):
        free(xf); free(xc); free(yf); free(yc); free(xo); free(ring)
        return -1
    _taps(sw, dw, xf, xc)
    _taps(sh, dh, yf, yc)
    for x in range(dw):
        for k in range(4):
            xo[4 * x + k] = 3 * _clamp(xf[x] + k, sw - 1)   # replicate border
    for k in range(4):
        tags[k] = -1
    for y in range(dh):
        for k in range(4):
            r = _clamp(yf[y] + k, sh - 1)
            slot = r & 3
            hrow = ring + slot * dw * 3
            if tags[slot] != r:
                tags[slot] = r
                srow = src + r * spitch
                for x in range(dw):
                    o = xo + 4 * x
                    a0 = xc[4 * x]
                    a1 = xc[4 * x + 1]
                    a2 = xc[4 * x + 2]
                    a3 = xc[4 * x + 3]
                    for j in range(3):
                        hrow[3 * x + j] = <float>(srow[o[0] + j] * a0 + srow[o[1] + j] * a1
                                                  + srow[o[2] + j] * a2 + srow[o[3] + j] * a3)
            rows[k] = hrow
        b0 = <float>yc[4 * y]
        b1 = <float>yc[4 * y + 1]
        b2 = <float>yc[4 * y + 2]
        b3 = <float>yc[4 * y + 3]
        drow = dst + y * dpitch
        for x in range(dw * 3):
            v = nearbyintf(rows[0][x] * b0 + rows[1][x] * b1 + rows[2][x] * b2 + rows[3][x] * b3)
            drow[x] = 0 if v < 0 else (255 if v > 255 else <u8>v)
    free(xf); free(xc); free(yf); free(yc); free(xo); free(ring)
    return 0


cdef inline int _check_side(Py_ssize_t n, str what) except -1:
    if n > _MAX_SIDE:
        raise ValueError(f"{what} {n} is larger than {_MAX_SIDE} pixels")
    return 0


def resize_bicubic(const u8[:, :, :] src, u8[:, :, :] dst, bint exact=False):
    """Resize src (h, w, 3) into dst (H, W, 3), OpenCV INTER_CUBIC semantics.

    exact=False: the fast float32 path (fr_run, resize_core.h), within one grey level of cv2.resize.
    exact=True: the scalar emulation of IPP's double-precision resize (_resize above).
    """
    cdef Py_ssize_t sp = _pitch(src, "src"), dp = _pitch(dst, "dst")
    cdef Py_ssize_t sh = src.shape[0], sw = src.shape[1], dh = dst.shape[0], dw = dst.shape[1]
    cdef int rc = 0
    if dh == 0 or dw == 0:
        return
    if sh == 0 or sw == 0:
        raise ValueError(f"src is empty (shape ({sh}, {sw}, 3)) but dst is ({dh}, {dw}, 3)")
    cdef _ResizePlan plan
    for n, what in ((sh, "src height"), (sw, "src width"), (dh, "dst height"), (dw, "dst width")):
        _check_side(n, what)
    if exact:
        with nogil:
            rc = _resize(&src[0, 0, 0], sp, sh, sw, &dst[0, 0, 0], dp, dh, dw)
    else:
        plan = _plan(sh, sw, dh, dw)          # a local reference keeps it alive while in use
        with nogil:
            rc = fr_run(&plan.plan, &src[0, 0, 0], sp, &dst[0, 0, 0], dp, 0)
    if rc:
        raise MemoryError("resize_bicubic: out of memory")


# ---------------------------------------------------------------- compositing

def composite_patch(u8[:, :, :] frame, const u8[:, :, :] patch, Py_ssize_t x0,
                    Py_ssize_t y0, Py_ssize_t x1, Py_ssize_t y1, int feather):
    """Resize patch to the box (x0, y0)-(x1, y1) and write it into frame in place.

    One fused pass (fr_run): each output row goes straight into the frame (feather 0), or is
    blended into it (docs/semantics.md §6.4), interior rows only at their 2 x feather edge pixels.
    """
    cdef Py_ssize_t fp = _pitch(frame, "frame"), pp = _pitch(patch, "patch")
    cdef Py_ssize_t bw = x1 - x0, bh = y1 - y0
    cdef int rc = 0
    if not (0 <= x0 < x1 <= frame.shape[1] and 0 <= y0 < y1 <= frame.shape[0]):
        raise ValueError(f"box ({x0}, {y0}, {x1}, {y1}) is empty or outside the "
                         f"{frame.shape[1]}x{frame.shape[0]} frame")
    if patch.shape[0] == 0 or patch.shape[1] == 0:
        raise ValueError(f"patch is empty: shape ({patch.shape[0]}, {patch.shape[1]}, 3)")
    if feather < 0:
        raise ValueError(f"feather must be >= 0, got {feather}")
    for n, what in ((patch.shape[0], "patch height"), (patch.shape[1], "patch width"),
                    (bh, "box height"), (bw, "box width")):
        _check_side(n, what)
    cdef u8 *box = &frame[y0, x0, 0]
    cdef _ResizePlan plan = _plan(patch.shape[0], patch.shape[1], bh, bw)
    with nogil:
        rc = fr_run(&plan.plan, &patch[0, 0, 0], pp, box, fp, feather)
    if rc:
        raise MemoryError("composite_patch: out of memory")


def paste_generated(const float[:, :, ::1] pred, const u8[:, :, :] crop, u8[:, :, :] frame,
                    Py_ssize_t x0, Py_ssize_t y0, Py_ssize_t x1, Py_ssize_t y1, int feather,
                    Py_ssize_t roi_offset, const u8[:, :, :] base=None):
    """from_generator_output into a private copy of ``crop`` (at ``roi_offset``), then
    composite_patch of that copy into ``frame``: one GIL-free call, ``crop`` untouched.

    Only the copy's border (outside the ROI the output overwrites) is copied from ``crop``.
    ``base`` (the shape of ``frame``, not overlapping it), when given, is first copied into
    ``frame`` in the same call: a frame made from a template needs no copy of its own, which
    would drop and retake the GIL once more.
    """
    cdef Py_ssize_t cp = _pitch(crop, "crop"), fp = _pitch(frame, "frame"), bp = 0
    cdef Py_ssize_t ch = crop.shape[0], cw = crop.shape[1], ph = pred.shape[1], pw = pred.shape[2]
    cdef Py_ssize_t bw = x1 - x0, bh = y1 - y0, row, pitch = 3 * cw
    cdef int rc = 0
    cdef u8 *scratch
    cdef const u8 *src
    if pred.shape[0] != 3:
        raise ValueError(f"pred: expected 3 planes, got shape ({pred.shape[0]}, {ph}, {pw})")
    if not (0 <= roi_offset and roi_offset + ph <= ch and roi_offset + pw <= cw) or ph == 0 or pw == 0:
        raise ValueError(f"pred ({ph}x{pw}) at offset {roi_offset} does not fit the {ch}x{cw} crop")
    if not (0 <= x0 < x1 <= frame.shape[1] and 0 <= y0 < y1 <= frame.shape[0]):
        raise ValueError(f"box ({x0}, {y0}, {x1}, {y1}) is empty or outside the "
                         f"{frame.shape[1]}x{frame.shape[0]} frame")
    if feather < 0:
        raise ValueError(f"feather must be >= 0, got {feather}")
    for n, what in ((ch, "crop height"), (cw, "crop width"), (bh, "box height"), (bw, "box width")):
        _check_side(n, what)
    cdef u8 *frame_row = &frame[0, 0, 0]
    cdef const u8 *base_row = NULL
    cdef Py_ssize_t extent = (frame.shape[0] - 1) * fp + 3 * frame.shape[1]    # bytes from row 0
    if base is not None:
        bp = _pitch(base, "base")
        if base.shape[0] != frame.shape[0] or base.shape[1] != frame.shape[1]:
            raise ValueError(f"base has shape ({base.shape[0]}, {base.shape[1]}, 3), frame "
                             f"({frame.shape[0]}, {frame.shape[1]}, 3)")
        base_row = &base[0, 0, 0]
        if (base_row < frame_row + extent
                and frame_row < base_row + (base.shape[0] - 1) * bp + 3 * base.shape[1]):
            raise ValueError("base and frame overlap")
    cdef _ResizePlan plan = _plan(ch, cw, bh, bw)
    cdef u8 *box = &frame[y0, x0, 0]
    with nogil:
        if base_row != NULL:
            for row in range(frame.shape[0]):
                memcpy(frame_row + row * fp, base_row + row * bp, <size_t>(3 * frame.shape[1]))
        scratch = <u8 *>malloc(<size_t>(ch * pitch))
        if scratch == NULL:
            rc = -1
        else:
            for row in range(ch):
                src = &crop[row, 0, 0]
                if row < roi_offset or row >= roi_offset + ph:
                    memcpy(scratch + row * pitch, src, <size_t>pitch)
                else:
                    memcpy(scratch + row * pitch, src, <size_t>(3 * roi_offset))
                    memcpy(scratch + row * pitch + 3 * (roi_offset + pw), src + 3 * (roi_offset + pw),
                           <size_t>(3 * (cw - roi_offset - pw)))
            fc_from_output(&pred[0, 0, 0], ph, pw, scratch + roi_offset * pitch + 3 * roi_offset, pitch)
            rc = fr_run(&plan.plan, scratch, pitch, box, fp, feather)
            free(scratch)
    if rc:
        raise MemoryError("paste_generated: out of memory")
