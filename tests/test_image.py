"""fastgen.image kernels against numpy and OpenCV formulations of docs/semantics.md §5-§6."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from fastgen import image


def natural_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients, hard-edged shapes and mild texture: resampling's hard and easy cases."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([128 + 100 * np.sin(xx / max(w, 1) * 3 + c) * np.cos(yy / max(h, 1) * 2 - c)
                    for c in range(3)], axis=-1)
    img += rng.normal(0, 6, img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    if h > 4 and w > 4:
        cv2.circle(img, (w // 2, h // 2), max(1, min(h, w) // 4), (20, 200, 90), -1)
        cv2.rectangle(img, (w // 5, h // 6), (w // 3, h // 2), (250, 10, 10), -1)
    return img


def padded_view(img: np.ndarray, pad: int = 13) -> np.ndarray:
    """The same pixels as a row-padded view of a larger array."""
    h, w = img.shape[:2]
    big = np.zeros((h + 2, w + pad, 3), np.uint8)
    big[1:h + 1, 2:w + 2] = img
    return big[1:h + 1, 2:w + 2]


# ------------------------------------------------------------------ resize

RESIZE_CASES = [((328, 328), (182, 182)), ((182, 182), (328, 328)), ((328, 328), (200, 171)),
                ((101, 77), (55, 203)), ((1, 1), (7, 5)), ((9, 1), (1, 9)), ((5, 5), (1, 1)),
                ((2, 3), (3, 2)), ((320, 320), (320, 320)), ((720, 1280), (361, 641)),
                ((327, 329), (183, 181))]


@pytest.mark.parametrize("kind", ["random", "natural"])
@pytest.mark.parametrize("src_hw,dst_hw", RESIZE_CASES)
def test_resize_bicubic_matches_opencv(src_hw, dst_hw, kind, rng):
    src = (rng.integers(0, 256, (*src_hw, 3), dtype=np.uint8) if kind == "random"
           else natural_image(*src_hw))
    ref = cv2.resize(src, (dst_hw[1], dst_hw[0]), interpolation=cv2.INTER_CUBIC)
    got = image.resize_bicubic(src, dst_hw[1], dst_hw[0])
    assert got.shape == ref.shape
    assert np.abs(got.astype(int) - ref).max() <= 1  # tolerance: one grey level
    # and into a padded view of a bigger destination, from a padded view of the source
    out = padded_view(np.zeros_like(ref), pad=7)
    image.resize_bicubic(padded_view(src), dst_hw[1], dst_hw[0], out=out)
    np.testing.assert_array_equal(out, got)


@pytest.mark.parametrize("w,h", [(0, 5), (5, 0), (0, 0)])
def test_resize_to_empty(w, h):
    assert image.resize_bicubic(natural_image(8, 8), w, h).shape == (h, w, 3)


# ------------------------------------------------------------------ generator input / output

def reference_input(roi: np.ndarray) -> np.ndarray:
    masked = roi.copy()
    cv2.rectangle(masked, (5, 5, 310, 305), (0, 0, 0), -1)   # as SyncTalk_2D masks the mouth
    both = np.concatenate([roi, masked], axis=2)
    return both.transpose(2, 0, 1).astype(np.float32) / 255.0


def test_to_generator_input_exact_into_batch_slot(rng):
    crop = rng.integers(0, 256, (328, 328, 3), dtype=np.uint8)
    roi = crop[4:324, 4:324]                       # row-padded view, used in place
    batch = np.full((3, 6, 320, 320), -1.0, np.float32)
    image.to_generator_input(roi, batch[1])
    np.testing.assert_array_equal(batch[1], reference_input(np.ascontiguousarray(roi)))
    assert np.all(batch[0] == -1) and np.all(batch[2] == -1)   # other slots untouched
    one = image.to_generator_input(roi, np.empty((1, 6, 320, 320), np.float32))
    np.testing.assert_array_equal(one[0], batch[1])


@pytest.mark.parametrize("n", [0, 1, 5, 6, 319, 320, 321])
def test_to_generator_input_sizes(n, rng):
    roi = rng.integers(0, 256, (n, n, 3), dtype=np.uint8)
    got = image.to_generator_input(roi)
    ref = np.concatenate([roi, roi], axis=2).transpose(2, 0, 1).astype(np.float32) / 255.0
    ref[3:, 5:310, 5:315] = 0   # numpy slicing clips the mask like the kernel does
    np.testing.assert_array_equal(got, ref)


def reference_output(pred: np.ndarray) -> np.ndarray:
    return (pred.transpose(1, 2, 0) * 255).astype(np.uint8)


@pytest.mark.parametrize("n", [0, 1, 319, 320, 321])
def test_from_generator_output_exact(n, rng):
    pred = rng.random((3, n, n), dtype=np.float32)
    if n:
        pred[0, 0, 0], pred[1, -1, -1] = 1.0, 0.0
    np.testing.assert_array_equal(image.from_generator_output(pred), reference_output(pred))


def test_from_generator_output_into_crop_view(rng):
    pred = rng.random((1, 3, 320, 320), dtype=np.float32)
    crop = rng.integers(0, 256, (328, 328, 3), dtype=np.uint8)
    before = crop.copy()
    image.from_generator_output(pred, crop[4:324, 4:324])
    np.testing.assert_array_equal(crop[4:324, 4:324], reference_output(pred[0]))
    ring = np.ones((328, 328), bool)
    ring[4:324, 4:324] = False
    np.testing.assert_array_equal(crop[ring], before[ring])


def test_from_generator_output_saturates():
    pred = np.array([-1.0, np.nan, 0.5, 1.0, 1.5, np.inf], np.float32).reshape(3, 1, 2)
    got = image.from_generator_output(pred)
    assert got.transpose(2, 0, 1).ravel().tolist() == [0, 0, 127, 255, 255, 255]


# ------------------------------------------------------------------ compositing

def reference_composite(frame: np.ndarray, crop: np.ndarray, box) -> np.ndarray:
    x0, y0, x1, y1 = box
    out = frame.copy()
    out[y0:y1, x0:x1] = cv2.resize(crop, (x1 - x0, y1 - y0), interpolation=cv2.INTER_CUBIC)
    return out


@pytest.mark.parametrize("box", [(500, 200, 682, 382), (0, 0, 328, 328), (1100, 540, 1280, 720),
                                 (10, 20, 11, 21), (3, 600, 200, 719)])
def test_composite_hard_matches_opencv(box, rng):
    frame = natural_image(720, 1280, seed=1)
    crop = natural_image(328, 328, seed=2)
    ref = reference_composite(frame, crop, box)
    got = frame.copy()
    image.composite_patch(got, crop, box)
    assert np.abs(got.astype(int) - ref).max() <= 1


@pytest.mark.parametrize("feather", [1, 4, 12])
def test_composite_feather(feather):
    frame = np.full((300, 400, 3), 10, np.uint8)
    crop = np.full((328, 328, 3), 250, np.uint8)
    box = (100, 50, 282, 232)
    out = frame.copy()
    image.composite_patch(out, crop, box, feather=feather)
    x0, y0, x1, y1 = box
    inside = np.zeros(out.shape[:2], bool)
    inside[y0:y1, x0:x1] = True
    np.testing.assert_array_equal(out[~inside], frame[~inside])           # only the box changes
    core = out[y0 + feather:y1 - feather, x0 + feather:x1 - feather]
    assert np.all(core == 250)                                            # interior is the patch
    row = out[(y0 + y1) // 2, x0:x0 + feather + 1, 0].astype(int)
    assert np.all(np.diff(row) > 0) and 10 < row[0] < 250                 # a ramp, no hard step


def test_composite_bad_boxes():
    frame = np.zeros((100, 100, 3), np.uint8)
    crop = np.zeros((328, 328, 3), np.uint8)
    for box in [(0, 0, 101, 50), (-1, 0, 10, 10), (10, 10, 10, 20), (20, 10, 10, 20), (0, 0, 5)]:
        with pytest.raises(ValueError, match="box"):
            image.composite_patch(frame, crop, box)
    with pytest.raises(ValueError, match="feather"):
        image.composite_patch(frame, crop, (0, 0, 10, 10), feather=-1)


# ------------------------------------------------------------------ validation and threads

BAD_IMAGES = [
    (np.zeros((10, 10, 3), np.float32), TypeError, "uint8"),
    (np.zeros((10, 10), np.uint8), ValueError, r"\(H, W, 3\)"),
    (np.zeros((10, 10, 4), np.uint8), ValueError, r"shape \(10, 10, 4\)"),
    (np.zeros((10, 30, 3), np.uint8)[:, ::3], ValueError, r"strides \(90, 9, 1\)"),
    (np.zeros((3, 10, 10), np.uint8).transpose(1, 2, 0), ValueError, "strides"),
    ([[1, 2, 3]], TypeError, "numpy.ndarray"),
]


@pytest.mark.parametrize("bad,exc,msg", BAD_IMAGES)
def test_bad_images_raise(bad, exc, msg):
    with pytest.raises(exc, match=msg):
        image.resize_bicubic(bad, 4, 4)
    with pytest.raises(exc, match=msg):
        image.to_generator_input(bad)
    with pytest.raises(exc, match=msg):
        image.composite_patch(bad, np.zeros((4, 4, 3), np.uint8), (0, 0, 2, 2))


def test_bad_buffers_raise():
    roi = np.zeros((320, 320, 3), np.uint8)
    with pytest.raises(ValueError, match=r"shape \(6, 320, 319\)"):
        image.to_generator_input(roi, np.empty((6, 320, 319), np.float32))
    with pytest.raises(TypeError, match="float32"):
        image.to_generator_input(roi, np.empty((6, 320, 320), np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        image.to_generator_input(roi, np.empty((6, 320, 640), np.float32)[:, :, ::2])
    with pytest.raises(ValueError, match="float32"):
        image.from_generator_output(np.zeros((320, 320, 3), np.float32))
    ro = np.zeros((320, 320, 3), np.uint8)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        image.from_generator_output(np.zeros((3, 320, 320), np.float32), ro)
    with pytest.raises(ValueError, match="read-only"):
        image.composite_patch(ro, roi, (0, 0, 10, 10))


def test_kernels_threads_equal_sequential():
    crops = [natural_image(328, 328, seed=s) for s in range(16)]
    preds = [np.random.default_rng(s).random((3, 320, 320), dtype=np.float32) for s in range(16)]

    def work(i):
        frame = natural_image(360, 640, seed=100 + i)
        image.composite_patch(frame, crops[i], (100 + i, 50, 282 + i, 232), feather=i % 3 * 4)
        return (image.to_generator_input(crops[i][4:324, 4:324]), image.from_generator_output(preds[i]),
                image.resize_bicubic(crops[i], 182 + i, 170), frame)

    sequential = [work(i) for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(work, range(16)))
    for a, b in zip(sequential, threaded):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
