"""Image kernels of the per-frame hot loop (docs/semantics.md §5-§6).

Public wrappers around ``fastgen._ext.image``: they check dtype, shape and strides (naming what
they got), then call a GIL-free kernel.  Images are uint8 BGR ``(H, W, 3)`` with contiguous pixels;
any row pitch is accepted, so a crop or a slice of a larger frame is used in place.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ._ext import image as _image
from .errors import InputError

ROI_SIZE = 320
CROP_SIZE = 328
ROI_OFFSET = 4                 # roi = crop328[4:324, 4:324]
# Mouth mask of the generator's second input: rows 5..309, columns 5..314 inclusive
# (cv2.rectangle(img, (5, 5, 310, 305), 0, -1) in SyncTalk_2D).
MASK_ROWS = (5, 310)
MASK_COLS = (5, 315)
_ALIGN = 64                    # bytes: a cache line, and whole 32-byte streaming stores


def input_batch(n: int) -> np.ndarray:
    """An uninitialised ``(n, 6, 320, 320)`` float32 generator input, 64-byte aligned (numpy's
    own large arrays are only 16-byte aligned): :func:`to_generator_input` then writes every
    slot with full-width streaming stores (measured: 3 % less CPU a frame on the null-model frame
    path, 2-core Xeon with AMX)."""
    count = int(n) * 6 * ROI_SIZE * ROI_SIZE
    raw = np.empty(count + _ALIGN // 4, np.float32)
    skip = (-raw.ctypes.data % _ALIGN) // 4
    return raw[skip:skip + count].reshape(int(n), 6, ROI_SIZE, ROI_SIZE)


def _describe(arr: np.ndarray) -> str:
    return f"shape {arr.shape}, strides {arr.strides}, dtype {arr.dtype}"


def _check_image(name: str, arr: object, *, writable: bool = False,
                 shape: Optional[Sequence[int]] = None) -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(arr).__name__}")
    if arr.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8, got {_describe(arr)}")
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(f"{name} must be (H, W, 3) BGR, got {_describe(arr)}")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise InputError(f"{name} must have shape {tuple(shape)}, got {_describe(arr)}")
    pixel_stride_bad = arr.shape[1] > 1 and arr.strides[1] != 3
    row_stride_bad = arr.shape[0] > 1 and arr.strides[0] < 3 * arr.shape[1]
    if arr.size and (pixel_stride_bad or row_stride_bad or arr.strides[2] != 1):
        raise InputError(f"{name} needs contiguous pixels (strides (pitch, 3, 1)), got {_describe(arr)}")
    if writable and not arr.flags.writeable:
        raise InputError(f"{name} is read-only")
    return arr


def _check_float(name: str, arr: object, shape: Sequence[int], *, writable: bool = False) -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(arr).__name__}")
    if arr.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {_describe(arr)}")
    if tuple(arr.shape) != tuple(shape):
        raise InputError(f"{name} must have shape {tuple(shape)}, got {_describe(arr)}")
    if not arr.flags.c_contiguous:
        raise InputError(f"{name} must be C-contiguous, got {_describe(arr)}")
    if writable and not arr.flags.writeable:
        raise InputError(f"{name} is read-only")
    return arr


def _check_box(box: object, frame: np.ndarray) -> tuple[int, int, int, int]:
    """``box`` as four ints (x0, y0, x1, y1), non-empty and inside ``frame``."""
    try:
        x0, y0, x1, y1 = (int(v) for v in box)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise InputError(f"box must be four integers (x0, y0, x1, y1), got {box!r}") from None
    h, w = frame.shape[:2]
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise InputError(f"box {(x0, y0, x1, y1)} is empty or outside the {w}x{h} frame")
    return x0, y0, x1, y1


def to_generator_input(roi: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Write one BGR ROI as the generator's 6-channel input (docs/semantics.md §5).

    ``out`` is a C-contiguous float32 ``(6, H, W)`` array — typically ``batch[i]`` of a reusable
    ``(B, 6, 320, 320)`` buffer — or ``(1, 6, H, W)``; channels ``[B, G, R, masked B, G, R]``
    as ``uint8 / 255``.  Returns ``out`` (allocated when not given).
    """
    roi = _check_image("roi", roi)
    h, w = roi.shape[:2]
    if out is None:
        out = np.empty((6, h, w), dtype=np.float32)
    target = out[0] if isinstance(out, np.ndarray) and out.ndim == 4 and out.shape[0] == 1 else out
    _check_float("out", target, (6, h, w), writable=True)
    _image.to_generator_input(roi, target, MASK_ROWS[0], MASK_ROWS[1], MASK_COLS[0], MASK_COLS[1])
    return out


def from_generator_output(pred: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Generator output ``(3, H, W)`` float32 in [0, 1] -> uint8 ``(H, W, 3)`` BGR.

    Truncates like the reference (``uint8(pred * 255)``); out-of-range values saturate.  ``out``
    may be a view such as ``crop328[4:324, 4:324]``, written in place.  ``(1, 3, H, W)`` is
    accepted too.
    """
    if isinstance(pred, np.ndarray) and pred.ndim == 4 and pred.shape[0] == 1:
        pred = pred[0]
    if not isinstance(pred, np.ndarray) or pred.ndim != 3 or pred.shape[0] != 3:
        got = _describe(pred) if isinstance(pred, np.ndarray) else type(pred).__name__
        raise InputError(f"pred must be (3, H, W) float32, got {got}")
    h, w = pred.shape[1:]
    _check_float("pred", pred, (3, h, w))
    if out is None:
        out = np.empty((h, w, 3), dtype=np.uint8)
    _check_image("out", out, writable=True, shape=(h, w, 3))
    _image.from_generator_output(pred, out)
    return out


def resize_bicubic(src: np.ndarray, width: int, height: int, out: Optional[np.ndarray] = None,
                   exact: bool = False) -> np.ndarray:
    """Bicubic resize of a uint8 BGR image to ``width`` x ``height`` (OpenCV ``INTER_CUBIC``).

    Matches ``cv2.resize(src, (width, height), interpolation=cv2.INTER_CUBIC)`` to within one
    grey level.  ``exact=False`` (default) is the fast float32 SIMD path.  ``exact=True`` is the
    slower scalar emulation of IPP's double-precision resize (what OpenCV 5.x on x86-64 runs),
    bit-identical to fastgen's earlier releases: template crops use it, because their tiny
    differences pass through the model.  ``out`` may be any ``(height, width, 3)`` uint8 view
    with contiguous pixels.
    """
    src = _check_image("src", src)
    width, height = int(width), int(height)
    if width < 0 or height < 0:
        raise InputError(f"width and height must be >= 0, got {width}x{height}")
    if out is None:
        out = np.empty((height, width, 3), dtype=np.uint8)
    _check_image("out", out, writable=True, shape=(height, width, 3))
    if (src.shape[0] == 0 or src.shape[1] == 0) and out.size:
        raise InputError(f"src is empty ({_describe(src)}) but the target is {width}x{height}")
    _image.resize_bicubic(src, out, bool(exact))
    return out


def composite_patch(frame: np.ndarray, crop328: np.ndarray, box: Sequence[int], feather: int = 0) -> np.ndarray:
    """Resize ``crop328`` to ``box = (x0, y0, x1, y1)`` and write it into ``frame`` in place.

    ``feather=0`` is the reference's hard paste (docs/semantics.md §6); ``feather > 0`` ramps the patch's
    alpha from the box edge inwards over that many pixels so no box edge is visible.  Only
    pixels inside the box are touched.  The resize is the fast path of :func:`resize_bicubic`
    (within one grey level of OpenCV), fused with the paste or blend.  Returns ``frame``.
    """
    frame = _check_image("frame", frame, writable=True)
    crop328 = _check_image("crop328", crop328)
    x0, y0, x1, y1 = _check_box(box, frame)
    feather = int(feather)
    if feather < 0:
        raise InputError(f"feather must be >= 0, got {feather}")
    _image.composite_patch(frame, crop328, x0, y0, x1, y1, feather)
    return frame


def paste_generated(pred: np.ndarray, crop328: np.ndarray, frame: np.ndarray, box: Sequence[int],
                    feather: int = 0, base: Optional[np.ndarray] = None) -> np.ndarray:
    """:func:`from_generator_output` of ``pred`` into the ROI of a copy of ``crop328``, then
    :func:`composite_patch` of that copy into ``frame`` at ``box``, in one GIL-free call that
    leaves ``crop328`` as it is (no copy of it is made in Python).  ``base``, an image of
    ``frame``'s shape that does not overlap it, is copied into ``frame`` first, in the same call
    (a frame made from a template's pixels).  Returns ``frame``."""
    if isinstance(pred, np.ndarray) and pred.ndim == 4 and pred.shape[0] == 1:
        pred = pred[0]
    pred = _check_float("pred", pred, (3, ROI_SIZE, ROI_SIZE))
    crop328 = _check_image("crop328", crop328, shape=(CROP_SIZE, CROP_SIZE, 3))
    frame = _check_image("frame", frame, writable=True)
    x0, y0, x1, y1 = _check_box(box, frame)
    if int(feather) < 0:
        raise InputError(f"feather must be >= 0, got {feather}")
    if base is not None:
        base = _check_image("base", base, shape=frame.shape)
    try:
        _image.paste_generated(pred, crop328, frame, x0, y0, x1, y1, int(feather), ROI_OFFSET, base)
    except ValueError as e:
        # a base overlapping the frame: the kernel checks the bounds itself, because
        # np.may_share_memory would drop and retake the GIL on every frame
        raise InputError(f"paste_generated: {e}") from None
    return frame
