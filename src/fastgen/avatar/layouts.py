"""Avatar layouts read from disk: SyncTalk_2D datasets and the exported ONNX packages.

* a **SyncTalk_2D dataset**: ``full_body_img/{0..K-1}.jpg`` + ``landmarks/{0..K-1}.lms``;
* the **exported ONNX package** of the seed ports: ``full_body_img/{1..K}.jpg`` (1-based),
  ``landmarks/{0..K-1}.lms`` and ``cache/crop_rectangles.json`` keyed 0-based, ``models/*.onnx``.
  File numbers are not trusted: templates are paired by order and the landmark files are matched
  to the crop-rectangle keys by comparing the boxes they give.  The lossy pre-cut JPEGs
  (``rois_320/``, ``model_inputs/``, ``crops_328/``) are never read.

The crop-box rule and landmark parsing are in docs/semantics.md §4.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from ..errors import AvatarError
from .templates import jpeg_size

PathLike = Union[str, "os.PathLike[str]"]
Box = tuple[int, int, int, int]

LANDMARK_POINTS = 110
# docs/semantics.md §4.3: xmin = L[1].x, ymin = L[52].y, xmax = L[31].x, square box of side xmax - xmin
_XMIN_POINT, _YMIN_POINT, _XMAX_POINT = 1, 52, 31


def parse_landmarks(path: PathLike) -> np.ndarray:
    """A ``.lms`` file as (110, 2) int32: "x y" floats per line, parsed as float32, truncated."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            text = f.read().decode("ascii")
    except FileNotFoundError:
        raise AvatarError(f"{name}: missing landmark file") from None
    except UnicodeDecodeError:
        raise AvatarError(f"{name}: not a landmark file (binary data, expected lines of 'x y')") from None
    except OSError as exc:
        raise AvatarError(f"{name}: cannot read landmark file ({exc.strerror or exc})") from None
    lines = [(i, line.split()) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    if len(lines) != LANDMARK_POINTS:
        raise AvatarError(f"{name}: {len(lines)} landmark points, expected {LANDMARK_POINTS} lines of 'x y'")
    for lineno, tokens in lines:
        if len(tokens) != 2:
            raise AvatarError(f"{name}: line {lineno} has {len(tokens)} values, expected 'x y'")
    try:
        pts = np.array([t for _, t in lines], dtype=np.float32)
    except ValueError:
        bad = next(n for n, t in lines if not all(_is_number(v) for v in t))
        raise AvatarError(f"{name}: line {bad} is not numeric: {' '.join(dict(lines)[bad])!r}") from None
    if not np.isfinite(pts).all():
        bad = lines[int(np.argwhere(~np.isfinite(pts))[0][0])][0]
        raise AvatarError(f"{name}: line {bad} is not a finite number pair")
    return pts.astype(np.int32)  # the reference's float32 -> int32 cast truncates toward zero


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def box_from_landmarks(lms: np.ndarray) -> Box:
    """docs/semantics.md §4.3: ``(xmin, ymin, xmax, ymin + (xmax - xmin))``."""
    x0, y0, x1 = int(lms[_XMIN_POINT, 0]), int(lms[_YMIN_POINT, 1]), int(lms[_XMAX_POINT, 0])
    return x0, y0, x1, y0 + (x1 - x0)


def check_box(box: Sequence[int], frame_size: tuple[int, int], where: str) -> None:
    """A crop box must be non-empty and lie inside the frame (no silent numpy clipping)."""
    x0, y0, x1, y1 = box
    w, h = frame_size
    if x1 <= x0 or y1 <= y0:
        raise AvatarError(f"{where}: crop box {tuple(box)} has zero size")
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise AvatarError(f"{where}: crop box {tuple(box)} is outside the {w}x{h} frame")


class FileTemplates:
    """Templates read from one JPEG file each (dataset and exported-package layouts)."""

    def __init__(self, files: list[Path]):
        self.files = files

    def name(self, k: int) -> str:
        return str(self.files[k])

    def jpeg(self, k: int) -> bytes:
        try:
            return self.files[k].read_bytes()
        except OSError as exc:
            raise AvatarError(f"{self.files[k]}: cannot read frame ({exc.strerror or exc})") from None

    crop = None  # crops are computed from the frame

    def close(self) -> None:
        pass


_NUMBERED = re.compile(r"^(\d+)\.(jpg|lms)$")


def _numbered_files(directory: Path, suffix: str, what: str) -> dict[int, Path]:
    if not directory.is_dir():
        raise AvatarError(f"{directory}: missing {what} directory")
    found = {}
    for entry in os.scandir(directory):
        m = _NUMBERED.match(entry.name)
        if m and m.group(2) == suffix:
            found[int(m.group(1))] = Path(entry.path)
    if not found:
        raise AvatarError(f"{directory}: no {what} (expected 0.{suffix}, 1.{suffix}, ...)")
    return found


def _numbering_base(found: dict[int, Path], default: int, partner_count: int) -> int:
    """The first file number: the layout's convention, unless the files are exactly numbered from
    the other base and as many as their partners (then a gap at 0 or 1 is not a missing file)."""
    other = 1 - default
    if default not in found and min(found) == other and max(found) - other + 1 == len(found) == partner_count:
        return other
    return default


def _read_crop_rectangles(path: Path) -> dict[int, Box]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AvatarError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise AvatarError(f"{path}: expected an object {{\"0\": {{\"rect\": [x1, y1, x2, y2]}}, ...}}")
    rects = {}
    for key, value in data.items():
        rect = value.get("rect") if isinstance(value, dict) else value
        if not key.isdigit() or not isinstance(rect, list) or len(rect) != 4 \
                or not all(isinstance(v, (int, float)) for v in rect):
            raise AvatarError(f"{path}: entry {key!r} is not {{\"rect\": [x1, y1, x2, y2]}}")
        rects[int(key)] = tuple(int(v) for v in rect)
    return rects


def read_layout(root: Path, package: bool) -> tuple[list[Path], np.ndarray, dict]:
    """Pair frames with landmark files; return frame files, boxes (K, 4) and facts for the manifest."""
    frames_dir, lms_dir = root / "full_body_img", root / "landmarks"
    frames = _numbered_files(frames_dir, "jpg", "frames")
    lms = _numbered_files(lms_dir, "lms", "landmark files")
    rect_file = root / "cache" / "crop_rectangles.json"
    facts = {"layout": "package" if package else "dataset", "path": str(root)}

    if package and rect_file.is_file():
        # crop_rectangles.json anchors the numbering: key k <-> full_body_img/(k + 1).jpg.  Which
        # landmark file belongs to key k is found by comparing boxes, not by trusting names.
        rects = _read_crop_rectangles(rect_file)
        kb, count = min(rects), len(rects)
        fb = _numbering_base(frames, 1, count)
        for key in range(kb, kb + count):
            if key not in rects:
                raise AvatarError(f"{rect_file}: key {key!r} missing (keys must be consecutive)")
        boxes_by_lms: dict[int, Box] = {}

        def lms_box(i: int) -> Box:
            if i not in boxes_by_lms:
                boxes_by_lms[i] = box_from_landmarks(parse_landmarks(lms[i]))
            return boxes_by_lms[i]

        first_bad = None
        for delta in sorted({0, 1, -1, min(lms) - kb}, key=lambda d: (abs(d), -d)):
            if not all(kb + i + delta in lms for i in range(count)):
                continue
            bad = next((i for i in range(count) if lms_box(kb + i + delta) != rects[kb + i]), None)
            if bad is None:
                break
            if first_bad is None:
                first_bad = (kb + bad, rects[kb + bad], lms[kb + bad + delta].name, lms_box(kb + bad + delta))
        else:
            if first_bad is None:
                key = next(kb + i for i in range(count) if kb + i not in lms)
                raise AvatarError(f"{lms_dir / f'{key}.lms'}: missing landmark file (crop rectangle "
                                  f"key '{key}' has no landmarks)")
            key, rect, lname, lbox = first_bad
            raise AvatarError(f"{rect_file}: rect of key '{key}' is {list(rect)} but landmarks/{lname} "
                              f"gives {list(lbox)}; no frame offset makes the landmarks agree")
        lms_index = [kb + i + delta for i in range(count)]
        boxes = np.array([lms_box(i) for i in lms_index], np.int32).reshape(-1, 4)
        facts.update(landmark_base=kb + delta, rect_key_base=kb, rects_verified=True)
        for k in range(count):
            if fb + k not in frames:
                raise AvatarError(f"{frames_dir / f'{fb + k}.jpg'}: missing frame (crop rectangle key "
                                  f"'{kb + k}' has no frame)")
        unused = sorted(set(frames) - set(range(fb, fb + count)))
        if unused:
            raise AvatarError(f"{frames[unused[0]]}: frame has no crop rectangle in {rect_file.name} "
                              f"({count} keys for {len(frames)} frames)")
        frame_files = [frames[fb + k] for k in range(count)]
    else:
        fb = _numbering_base(frames, 1 if package else 0, len(lms))
        lb = _numbering_base(lms, 0, len(frames))
        count = max(max(frames) - fb, max(lms) - lb) + 1
        for k in range(count):
            if fb + k not in frames:
                raise AvatarError(f"{frames_dir / f'{fb + k}.jpg'}: missing frame "
                                  f"(landmarks/{lb + k}.lms has no frame)")
            if lb + k not in lms:
                raise AvatarError(f"{lms_dir / f'{lb + k}.lms'}: missing landmark file "
                                  f"(full_body_img/{fb + k}.jpg has no landmarks)")
        for found, base, partner in ((frames, fb, "landmark file"), (lms, lb, "frame")):
            unused = sorted(set(found) - set(range(base, base + count)))
            if unused:
                raise AvatarError(f"{found[unused[0]]}: has no matching {partner} (numbering starts at "
                                  f"{base})")
        frame_files = [frames[fb + k] for k in range(count)]
        boxes = np.array([box_from_landmarks(parse_landmarks(lms[lb + k])) for k in range(count)],
                         np.int32).reshape(-1, 4)
        lms_index = [lb + k for k in range(count)]
        facts.update(landmark_base=lb)

    facts["frame_base"] = fb
    # Frame size: every header must agree; boxes must fit
    size0 = None
    for k, path in enumerate(frame_files):
        try:
            with open(path, "rb") as f:
                head = f.read()
        except OSError as exc:
            raise AvatarError(f"{path}: cannot read frame ({exc.strerror or exc})") from None
        size = jpeg_size(head, str(path))
        if size0 is None:
            size0 = size
        elif size != size0:
            raise AvatarError(f"{path}: frame is {size[0]}x{size[1]} but {frame_files[0].name} is "
                              f"{size0[0]}x{size0[1]} (all frames must have one size)")
        check_box(boxes[k], size0, str(lms[lms_index[k]]))
    facts["frame_size"] = list(size0)
    return frame_files, boxes, facts
