"""Synthesise avatar layouts (docs/semantics.md §4.1) in a temporary directory, with small frames.

Every template has its own crop box (the boxes move), and each frame carries a bright square
inside its own box plus its template number written as a bar code in the top-left corner, so a
frame paired with the wrong box or the wrong landmark file shows up in the pixels.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import cv2
import simplejpeg

W, H = 160, 120
QUALITY = 95


def box_for(k: int) -> tuple[int, int, int, int]:
    """A different square box per template, inside the 160x120 frame for k < 12."""
    x0, y0, side = 30 + 3 * k, 18 + 2 * k, 60 + 4 * (k % 3)
    return x0, y0, x0 + side, y0 + side


def draw_frame(k: int, box: Sequence[int], size: tuple[int, int] = (W, H)) -> np.ndarray:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([100 + 50 * np.sin(xx / 9 + c + k / 5) + 30 * np.cos(yy / 7 - c) for c in range(3)], -1)
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    img[cy - 6:cy + 6, cx - 6:cx + 6] = (250, 250, 250)     # the "mouth": centre of its own box
    for bit in range(6):                                      # template number as a bar code
        img[2:8, 2 + 4 * bit:5 + 4 * bit] = 255 if (k >> bit) & 1 else 0
    img += np.random.default_rng(k).normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def read_barcode(frame: np.ndarray) -> int:
    bits = [frame[3:7, 3 + 4 * b].mean() > 128 for b in range(6)]
    return sum(1 << b for b, on in enumerate(bits) if on)


def encode(img: np.ndarray) -> bytes:
    return simplejpeg.encode_jpeg(np.ascontiguousarray(img), QUALITY, colorspace="BGR", colorsubsampling="420")


def landmarks_text(box: Sequence[int]) -> str:
    """110 'x y' lines whose box rule (docs/semantics.md §4.3) gives ``box`` (fractions exercise the truncation)."""
    x0, y0, x1, _ = box
    pts = np.zeros((110, 2), np.float64)
    pts[:, 0], pts[:, 1] = (x0 + x1) / 2 + 0.25, y0 + (x1 - x0) / 2 + 0.5
    pts[1, 0] = x0 + 0.7
    pts[52, 1] = y0 + 0.9
    pts[31, 0] = x1 + 0.4
    return "".join(f"{x:.6f} {y:.6f}\n" for x, y in pts)


def make_dataset(root: Path, count: int = 4, *, frame_base: int = 0, lms_base: int = 0,
                 boxes: Optional[list] = None, size: tuple[int, int] = (W, H)) -> Path:
    """A SyncTalk_2D dataset: ``full_body_img/{0..K-1}.jpg`` and ``landmarks/{0..K-1}.lms``."""
    boxes = boxes or [box_for(k) for k in range(count)]
    (root / "full_body_img").mkdir(parents=True)
    (root / "landmarks").mkdir()
    for k, box in enumerate(boxes):
        (root / "full_body_img" / f"{frame_base + k}.jpg").write_bytes(encode(draw_frame(k, box, size)))
        (root / "landmarks" / f"{lms_base + k}.lms").write_text(landmarks_text(box))
    return root


def make_package(root: Path, count: int = 4, *, models: Optional[tuple[Path, Path]] = None,
                 rect_key_base: int = 0, lms_names: Optional[list[int]] = None,
                 extra_landmarks: Optional[dict[int, tuple]] = None) -> Path:
    """The seeds' exported package: frames 1..K, landmarks 0..K-1, crop rectangles keyed 0..K-1.

    ``lms_names`` renames the landmark files (template k -> ``lms_names[k]``); ``extra_landmarks``
    adds landmark files belonging to no template (number -> box).  The pre-cut JPEGs are
    deliberately wrong (solid magenta) so that using them is detectable.
    """
    (root / "full_body_img").mkdir(parents=True)
    (root / "landmarks").mkdir()
    (root / "cache").mkdir()
    rects = {}
    for k in range(count):
        box = box_for(k)
        (root / "full_body_img" / f"{k + 1}.jpg").write_bytes(encode(draw_frame(k, box)))
        name = lms_names[k] if lms_names else k
        (root / "landmarks" / f"{name}.lms").write_text(landmarks_text(box))
        rects[str(rect_key_base + k)] = {"rect": list(box), "frame": k + 1}
    for name, box in (extra_landmarks or {}).items():
        (root / "landmarks" / f"{name}.lms").write_text(landmarks_text(box))
    (root / "cache" / "crop_rectangles.json").write_text(json.dumps(rects))
    magenta = encode(np.full((328, 328, 3), (255, 0, 255), np.uint8))
    for sub in ("rois_320", "model_inputs", "crops_328"):
        (root / sub).mkdir()
        for k in range(count):
            (root / sub / f"{k + 1}.jpg").write_bytes(magenta)
    (root / "package_info.json").write_text(json.dumps({"frames": count, "name": "test"}))
    if models:
        (root / "models").mkdir()
        shutil.copyfile(models[0], root / "models" / "generator.onnx")
        shutil.copyfile(models[1], root / "models" / "audio_encoder.onnx")
    return root


def write_models(directory: Path) -> tuple[Path, Path]:
    """Synthetic generator and audio-encoder ONNX files (a few seconds)."""
    import onnx

    from fastgen.models import build_audio_encoder, build_generator, synthetic_weights

    directory.mkdir(parents=True, exist_ok=True)
    gen, enc = directory / "generator.onnx", directory / "audio_encoder.onnx"
    onnx.save(build_generator(synthetic_weights("generator"), "ave"), str(gen))
    onnx.save(build_audio_encoder(synthetic_weights("audio_encoder")), str(enc))
    return gen, enc


# ---- the engine tests' dataset: textured faces whose box moves with k

ENGINE_FRAME_W, ENGINE_FRAME_H = 224, 176
ENGINE_TEMPLATES = 6


def draw_template(k: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A small textured 'face' frame; the box moves with k."""
    yy, xx = np.mgrid[0:ENGINE_FRAME_H, 0:ENGINE_FRAME_W].astype(np.float32)
    img = np.stack([90 + 60 * np.sin(xx / 17 + k / 3 + c) + 40 * np.cos(yy / 11 - c) for c in range(3)], -1)
    x0, y0, w = 50 + 2 * k, 30 + k, 110
    cv2.ellipse(img, (x0 + w // 2, y0 + w // 2), (w // 2 - 4, w // 2), 0, 0, 360, (60, 120, 210), -1)
    cv2.ellipse(img, (x0 + w // 2, y0 + 3 * w // 4), (w // 5, w // 12), 0, 0, 360, (40, 30, 150), -1)
    cv2.circle(img, (x0 + w // 3, y0 + w // 3), 7, (250, 250, 250), -1)
    img += np.random.default_rng(k).normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), (x0, y0, w)


def write_landmarks(path: Path, x0: int, y0: int, w: int) -> None:
    pts = np.zeros((110, 2), np.float32)
    pts[:, 0], pts[:, 1] = x0 + w / 2, y0 + w / 2
    pts[1, 0] = x0 + 0.7      # xmin (truncated)
    pts[52, 1] = y0 + 0.3     # ymin
    pts[31, 0] = x0 + w + 0.9  # xmax
    path.write_text("\n".join(f"{x:.3f} {y:.3f}" for x, y in pts) + "\n")
