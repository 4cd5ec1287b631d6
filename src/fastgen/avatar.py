"""Avatars: the template video that gets a new mouth (SPEC sections 4 and 7).

:meth:`Avatar.open` reads three layouts and answers the same questions for each — how many
templates, their size, each template's crop box, its full frame and its 328x328 crop, the
ping-pong template order, and where the models are:

* a **SyncTalk_2D dataset**: ``full_body_img/{0..K-1}.jpg`` + ``landmarks/{0..K-1}.lms``;
* the **exported ONNX package** of the seed ports: ``full_body_img/{1..K}.jpg`` (1-based),
  ``landmarks/{0..K-1}.lms`` and ``cache/crop_rectangles.json`` keyed 0-based, ``models/*.onnx``.
  File numbers are not trusted: templates are paired by order and the landmark files are matched
  to the crop-rectangle keys by comparing the boxes they give.  The lossy pre-cut JPEGs
  (``rois_320/``, ``model_inputs/``, ``crops_328/``) are never read;
* a **fastgen avatar pack** (built by :func:`prepare`, ``fastgen prepare``): a directory holding

  =====================  =====================================================================
  ``manifest.json``      format name + version, frame count/size, mode, models, and the byte
                         size + sha256 of every other file
  ``index.npy``          one record per template: crop box, offset/length of its JPEG in
                         ``frames.bin``, crc32 of the JPEG and of its crop
  ``frames.bin``         the source JPEG files, byte for byte, one after another
  ``crops.npy``          (K, 328, 328, 3) uint8 BGR: every 328x328 crop, precomputed
  ``models/*.onnx``      generator and audio encoder (converted from ``.pth`` when needed)
  =====================  =====================================================================

  Opening checks the version, every file's size and the index's sha256 (milliseconds); each
  JPEG and crop is checked against its crc32 when read; :meth:`Avatar.verify` hashes everything.

Templates are decoded on demand into a byte-bounded LRU cache shared by the engine's threads;
returned arrays are read-only views of cached data (copy before writing).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import threading
import weakref
import zlib
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np
import simplejpeg

from .errors import AvatarError, InputError
from .atomic import building_dir
from .image import CROP_SIZE, resize_bicubic

PathLike = Union[str, "os.PathLike[str]"]
Box = tuple[int, int, int, int]

LANDMARK_POINTS = 110
# SPEC section 4: xmin = L[1].x, ymin = L[52].y, xmax = L[31].x, square box of side xmax - xmin
_XMIN_POINT, _YMIN_POINT, _XMAX_POINT = 1, 52, 31

PACK_FORMAT = "fastgen.avatar-pack"
PACK_VERSION = 1
MANIFEST = "manifest.json"
INDEX = "index.npy"
FRAMES = "frames.bin"
CROPS = "crops.npy"
MODEL_FILES = {"generator": "models/generator.onnx", "audio_encoder": "models/audio_encoder.onnx"}
INDEX_DTYPE = np.dtype([("box", "<i4", (4,)), ("frame_offset", "<i8"), ("frame_bytes", "<i8"),
                        ("frame_crc32", "<u4"), ("crop_crc32", "<u4")])
_CROP_BYTES = CROP_SIZE * CROP_SIZE * 3

# 128 MB holds ~40 decoded 1280x720 templates with their crops: enough for the engine's
# in-flight frames, and it keeps a full walk of a long avatar far below the 400 MB budget.
# The ping-pong walk revisits a template only after up to 2 x (templates - 1) frames, so a big
# LRU barely raises the hit rate: 32 MB and 128 MB gave the same pipeline fps, 100 MB apart in RSS.
DEFAULT_CACHE_MB = 32


# --------------------------------------------------------------------------- small pure rules

def template_order(templates: int, n: int) -> list[int]:
    """Template index of each of ``n`` output frames (SPEC section 4, ping-pong).

    The first output frame uses template 1; for 6 templates: 1 2 3 4 5 4 3 2 1 0 1 2 ...  A single
    template (where the reference loop would index past the end) is used for every frame.
    """
    if templates < 1:
        raise ValueError(f"an avatar needs at least one template, got {templates}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if templates == 1:
        return [0] * n
    period = 2 * (templates - 1)
    pos = (np.arange(1, n + 1) % period)
    return np.where(pos < templates, pos, period - pos).tolist()


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
    """SPEC section 4: ``(xmin, ymin, xmax, ymin + (xmax - xmin))``."""
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


def compute_crop(frame: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """The 328x328 bicubic (OpenCV INTER_CUBIC) resize of ``frame[y0:y1, x0:x1]``."""
    x0, y0, x1, y1 = box
    return resize_bicubic(frame[y0:y1, x0:x1], CROP_SIZE, CROP_SIZE)


def decode_frame(data: bytes, where: str) -> np.ndarray:
    try:
        return simplejpeg.decode_jpeg(data, colorspace="BGR")
    except ValueError as exc:
        raise AvatarError(f"{where}: not a readable JPEG ({str(exc).strip() or 'decode failed'})") from None


def _jpeg_size(data: bytes, where: str) -> tuple[int, int]:
    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as exc:
        raise AvatarError(f"{where}: not a readable JPEG ({str(exc).strip() or 'bad header'})") from None
    return int(w), int(h)


def default_cache_dir() -> Path:
    """``$FASTGEN_CACHE`` or ``~/.cache/fastgen``: converted models and the demo avatar live here."""
    env = os.environ.get("FASTGEN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fastgen"


# --------------------------------------------------------------------------- template cache

class TemplateCache:
    """Byte-bounded LRU of decoded frames and crops; safe to share between threads.

    Loads run outside the lock, so two threads missing the same key may both decode it; the first
    stored copy wins.  Stored arrays are made read-only because every caller shares them.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple, load: Callable[[], np.ndarray]) -> np.ndarray:
        with self._lock:
            arr = self._items.get(key)
            if arr is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return arr
            self.misses += 1
        arr = load()
        arr.flags.writeable = False
        if arr.nbytes > self.max_bytes:
            return arr
        with self._lock:
            existing = self._items.get(key)
            if existing is not None:
                return existing
            self._items[key] = arr
            self._bytes += arr.nbytes
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes
        return arr

    @property
    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


# --------------------------------------------------------------------------- template sources

class _FileTemplates:
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


class _PackTemplates:
    """Templates read from a pack's ``frames.bin`` / ``crops.npy`` with positioned reads.

    ``pread`` instead of a memory map: mapped pages would count towards the process's resident
    memory for as long as the mapping lives, defeating the bounded cache.
    """

    def __init__(self, root: Path, index: np.ndarray, crops_offset: int):
        self.root, self.index, self.crops_offset = root, index, crops_offset
        self._fds = {}
        self._seek_lock = threading.Lock()
        try:
            for name in (FRAMES, CROPS):
                self._fds[name] = os.open(root / name, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError as exc:
            self.close()
            raise AvatarError(f"{root / name}: cannot open ({exc.strerror or exc})") from None
        self._finalizer = weakref.finalize(self, _close_fds, list(self._fds.values()))

    def name(self, k: int) -> str:
        return f"{self.root / FRAMES} (template {k})"

    def _read_at(self, name: str, size: int, offset: int) -> bytes:
        if hasattr(os, "pread"):
            return os.pread(self._fds[name], size, offset)
        with self._seek_lock:  # no positioned reads (Windows): one reader at a time
            os.lseek(self._fds[name], offset, os.SEEK_SET)
            return os.read(self._fds[name], size)

    def jpeg(self, k: int) -> bytes:
        rec = self.index[k]
        size = int(rec["frame_bytes"])
        data = self._read_at(FRAMES, size, int(rec["frame_offset"]))
        if len(data) != size or zlib.crc32(data) != int(rec["frame_crc32"]):
            raise AvatarError(f"{self.root / FRAMES}: template {k} fails its checksum: the pack is "
                              "corrupted (run fastgen prepare again)")
        return data

    def crop(self, k: int) -> np.ndarray:
        data = self._read_at(CROPS, _CROP_BYTES, self.crops_offset + k * _CROP_BYTES)
        if len(data) != _CROP_BYTES or zlib.crc32(data) != int(self.index[k]["crop_crc32"]):
            raise AvatarError(f"{self.root / CROPS}: crop of template {k} fails its checksum: the pack "
                              "is corrupted (run fastgen prepare again)")
        return np.frombuffer(data, np.uint8).reshape(CROP_SIZE, CROP_SIZE, 3)

    def close(self) -> None:
        if hasattr(self, "_finalizer"):
            self._finalizer()
        else:
            _close_fds(list(self._fds.values()))


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


# --------------------------------------------------------------------------- models

@dataclass(frozen=True)
class _Models:
    generator: Optional[Path] = None
    audio_encoder: Optional[Path] = None
    mode: Optional[str] = None
    synthetic: bool = False


def _resolve_models(generator, audio_encoder, mode: Optional[str]) -> _Models:
    """Check user/layout model files; ``.pth`` checkpoints are converted once into the cache."""
    from .models import ensure_onnx

    paths, infos = {}, {}
    for kind, source in (("generator", generator), ("audio_encoder", audio_encoder)):
        if source is None:
            paths[kind] = None
            continue
        path, info = ensure_onnx(Path(source), kind, default_cache_dir() / "models", mode=mode or "ave")
        paths[kind], infos[kind] = path, info
    gen_mode = infos["generator"].mode if "generator" in infos else mode
    return _Models(paths["generator"], paths["audio_encoder"], gen_mode,
                   any(i.synthetic for i in infos.values()))


def _find_models(root: Path) -> tuple[Optional[Path], Optional[Path]]:
    """Models shipped inside a dataset/package directory (the exported layout's ``models/``)."""
    def first(*names):
        return next((root / n for n in names if (root / n).is_file()), None)

    encoder = first("models/audio_encoder.onnx", "audio_encoder.onnx",
                    "audio_visual_encoder.pth", "models/audio_visual_encoder.pth")
    generator = first("models/generator.onnx", "generator.onnx")
    if generator is None:
        # SyncTalk_2D saves checkpoints as {epoch}.pth: take the latest epoch
        pths = [p for d in (root, root / "models", root / "checkpoint") if d.is_dir()
                for p in d.glob("*.pth") if p.name != "audio_visual_encoder.pth"]
        if len(pths) == 1:
            generator = pths[0]
        elif pths:
            numbered = [p for p in pths if p.stem.isdigit()]
            if len(numbered) != len(pths):
                raise AvatarError(f"{root}: several generator checkpoints ("
                                  + ", ".join(sorted(p.name for p in pths)) + "); pass generator=")
            generator = max(numbered, key=lambda p: int(p.stem))
    return generator, encoder


# --------------------------------------------------------------------------- layouts

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


def _frame_layout(root: Path, package: bool) -> tuple[list[Path], np.ndarray, dict]:
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
        size = _jpeg_size(head, str(path))
        if size0 is None:
            size0 = size
        elif size != size0:
            raise AvatarError(f"{path}: frame is {size[0]}x{size[1]} but {frame_files[0].name} is "
                              f"{size0[0]}x{size0[1]} (all frames must have one size)")
        check_box(boxes[k], size0, str(lms[lms_index[k]]))
    facts["frame_size"] = list(size0)
    return frame_files, boxes, facts


def _read_pack(root: Path) -> tuple[dict, np.ndarray, int]:
    """Manifest, index and crops data offset of a pack, with the cheap integrity checks."""
    mpath = root / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as exc:
        raise AvatarError(f"{mpath}: not readable JSON ({exc}): the pack is corrupted") from None
    if not isinstance(manifest, dict) or manifest.get("format") != PACK_FORMAT:
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        raise AvatarError(f"{root}: not a fastgen avatar pack ({MANIFEST} has format {fmt!r}, "
                          f"expected {PACK_FORMAT!r})")
    version = manifest.get("version")
    if not isinstance(version, int) or version < 1:
        raise AvatarError(f"{mpath}: bad pack version {version!r}: the pack is corrupted")
    if version > PACK_VERSION:
        raise AvatarError(f"{mpath}: pack format version {version} is newer than this fastgen reads "
                          f"(up to {PACK_VERSION}); upgrade fastgen or run fastgen prepare again")
    try:
        count = int(manifest["frame_count"])
        width, height = (int(v) for v in manifest["frame_size"])
        files = {str(n): (int(e["bytes"]), str(e["sha256"])) for n, e in manifest["files"].items()}
        models = manifest["models"]
        if int(manifest["crop_size"]) != CROP_SIZE or count < 1 or width < 1 or height < 1:
            raise ValueError
        for kind in MODEL_FILES:
            if models.get(kind) is not None and models[kind] not in files:
                raise ValueError
    except (KeyError, TypeError, ValueError, AttributeError):
        raise AvatarError(f"{mpath}: missing or malformed fields: the pack is corrupted") from None
    for name in (INDEX, FRAMES, CROPS):
        if name not in files:
            raise AvatarError(f"{mpath}: lists no {name}: the pack is corrupted")
    stray = set(files) - {INDEX, FRAMES, CROPS, *MODEL_FILES.values()}
    if stray:  # also keeps a tampered manifest from pointing outside the pack
        raise AvatarError(f"{mpath}: lists unknown file {sorted(stray)[0]!r}: the pack is corrupted")
    for name, (size, _) in files.items():
        path = root / name
        try:
            actual = path.stat().st_size
        except OSError:
            raise AvatarError(f"{path}: missing from the pack: the pack is corrupted") from None
        if actual != size:
            raise AvatarError(f"{path}: {actual} bytes, the manifest says {size}: the pack is corrupted")

    ipath = root / INDEX
    raw = ipath.read_bytes()
    if hashlib.sha256(raw).hexdigest() != files[INDEX][1]:
        raise AvatarError(f"{ipath}: checksum mismatch: the pack is corrupted")
    try:
        index = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise AvatarError(f"{ipath}: unreadable ({exc}): the pack is corrupted") from None
    if index.dtype != INDEX_DTYPE or index.shape != (count,):
        raise AvatarError(f"{ipath}: holds {index.dtype} {index.shape}, expected {count} records: "
                          "the pack is corrupted")
    ends = index["frame_offset"] + index["frame_bytes"]
    if index["frame_offset"][0] != 0 or (index["frame_bytes"] <= 0).any() \
            or (index["frame_offset"][1:] != ends[:-1]).any() or ends[-1] != files[FRAMES][0]:
        raise AvatarError(f"{ipath}: frame offsets do not tile {FRAMES}: the pack is corrupted")
    for k, box in enumerate(index["box"]):
        check_box(box.tolist(), (width, height), f"{ipath} (template {k})")

    cpath = root / CROPS
    with open(cpath, "rb") as f:
        try:
            np.lib.format.read_magic(f)
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        except ValueError as exc:
            raise AvatarError(f"{cpath}: bad header ({exc}): the pack is corrupted") from None
        data_offset = f.tell()
    if shape != (count, CROP_SIZE, CROP_SIZE, 3) or fortran or dtype != np.uint8 \
            or data_offset + count * _CROP_BYTES != files[CROPS][0]:
        raise AvatarError(f"{cpath}: holds {dtype} {shape}, expected ({count}, {CROP_SIZE}, {CROP_SIZE}, 3) "
                          "uint8: the pack is corrupted")
    return manifest, index, data_offset


# --------------------------------------------------------------------------- Avatar

class Avatar:
    """The templates of one avatar: frames, crop boxes, 328x328 crops, order and models.

    Use :meth:`open`.  ``frame(k)`` / ``crop(k)`` return read-only uint8 BGR arrays from a shared,
    thread-safe LRU cache (``cache_mb`` at open); copy them before writing.
    """

    def __init__(self, path: Path, layout: str, boxes: np.ndarray, frame_size: tuple[int, int],
                 templates, models: _Models, cache_bytes: int, manifest: Optional[dict] = None,
                 source: Optional[dict] = None):
        self.path = path
        self.layout = layout                  # "dataset", "package" or "pack"
        self._boxes = boxes
        self._boxes.flags.writeable = False
        self.frame_size = frame_size          # (width, height)
        self._templates = templates
        self._cache = TemplateCache(cache_bytes)
        self.generator_path = models.generator
        self.audio_encoder_path = models.audio_encoder
        self.mode = models.mode
        self.synthetic = models.synthetic
        self.manifest = manifest
        self.source = source or {}
        # what the CLI shows about the weights (e.g. "known-answer demo weights" of a demo pack)
        self.weights_label = self.source.get("weights_label")

    # ---- opening

    @classmethod
    def open(cls, path: PathLike, *, generator: Optional[PathLike] = None,
             audio_encoder: Optional[PathLike] = None, mode: Optional[str] = None,
             cache_mb: float = DEFAULT_CACHE_MB) -> "Avatar":
        """Open a SyncTalk_2D dataset directory, an exported ONNX package or a fastgen pack.

        ``generator`` / ``audio_encoder`` (``.onnx`` or ``.pth``) override the models found in the
        layout; ``mode`` is the generator's audio mode for ``.pth`` checkpoints (default ``ave``).
        """
        root = Path(path)
        if not root.exists():
            raise AvatarError(f"{root}: no such avatar directory")
        if not root.is_dir():
            raise AvatarError(f"{root}: not a directory (an avatar is a SyncTalk_2D dataset, an "
                              "exported package or a fastgen pack directory)")
        cache_bytes = int(cache_mb * (1 << 20))
        if (root / MANIFEST).is_file():
            return cls._open_pack(root, generator, audio_encoder, mode, cache_bytes)
        if (root / "full_body_img").exists() or (root / "landmarks").exists():
            package = any((root / p).exists() for p in
                          ("cache/crop_rectangles.json", "models/generator.onnx", "package_info.json"))
            files, boxes, facts = _frame_layout(root, package)
            found_gen, found_enc = _find_models(root)
            models = _resolve_models(generator or found_gen, audio_encoder or found_enc, mode)
            return cls(root, facts["layout"], boxes, tuple(facts["frame_size"]), _FileTemplates(files),
                       models, cache_bytes, source=facts)
        if not any(root.iterdir()):
            raise AvatarError(f"{root}: empty directory, not an avatar")
        raise AvatarError(f"{root}: not an avatar: no full_body_img/ + landmarks/ (SyncTalk_2D dataset "
                          f"or exported package) and no {MANIFEST} (fastgen pack)")

    @classmethod
    def _open_pack(cls, root: Path, generator, audio_encoder, mode, cache_bytes: int) -> "Avatar":
        manifest, index, crops_offset = _read_pack(root)
        listed = {kind: (root / name if name else None) for kind, name in manifest["models"].items()}
        if generator is None and audio_encoder is None:
            # trust the manifest (checked at prepare); inspecting a 48 MB ONNX costs ~80 ms
            models = _Models(listed.get("generator"), listed.get("audio_encoder"),
                             manifest.get("mode"), bool(manifest.get("synthetic")))
        else:
            models = _resolve_models(generator or listed.get("generator"),
                                     audio_encoder or listed.get("audio_encoder"), mode or manifest.get("mode"))
        width, height = manifest["frame_size"]
        return cls(root, "pack", np.ascontiguousarray(index["box"]), (int(width), int(height)),
                   _PackTemplates(root, index, crops_offset), models, cache_bytes,
                   manifest=manifest, source=manifest.get("source"))

    # ---- templates

    def __len__(self) -> int:
        return len(self._boxes)

    def __repr__(self) -> str:
        w, h = self.frame_size
        return f"<Avatar {self.layout} {self.path} templates={len(self)} {w}x{h} mode={self.mode}>"

    def _check_index(self, k) -> int:
        k = int(k)
        if not 0 <= k < len(self._boxes):
            raise IndexError(f"template {k} out of range 0..{len(self._boxes) - 1}")
        return k

    @property
    def boxes(self) -> np.ndarray:
        """All crop boxes, (K, 4) int32 ``(x0, y0, x1, y1)``, read-only."""
        return self._boxes

    def box(self, k: int) -> Box:
        """Crop box of template ``k``: ``(x0, y0, x1, y1)``; the crop is ``frame[y0:y1, x0:x1]``."""
        x0, y0, x1, y1 = self._boxes[self._check_index(k)].tolist()
        return x0, y0, x1, y1

    def frame(self, k: int) -> np.ndarray:
        """Template ``k``'s full frame, uint8 BGR (H, W, 3), read-only."""
        k = self._check_index(k)
        return self._cache.get(("frame", k), lambda: self._decode(k))

    def crop(self, k: int) -> np.ndarray:
        """Template ``k``'s 328x328 crop, uint8 BGR, read-only: bicubic resize of the box region."""
        k = self._check_index(k)
        if self._templates.crop is not None:
            return self._cache.get(("crop", k), lambda: self._templates.crop(k))
        return self._cache.get(("crop", k), lambda: compute_crop(self.frame(k), self._boxes[k]))

    def _decode(self, k: int) -> np.ndarray:
        where = self._templates.name(k)
        frame = decode_frame(self._templates.jpeg(k), where)
        if (frame.shape[1], frame.shape[0]) != self.frame_size:
            raise AvatarError(f"{where}: frame is {frame.shape[1]}x{frame.shape[0]}, expected "
                              f"{self.frame_size[0]}x{self.frame_size[1]}")
        return frame

    def jpeg(self, k: int) -> bytes:
        """Template ``k``'s frame as the source JPEG bytes (what a pack stores)."""
        return self._templates.jpeg(self._check_index(k))

    def order(self, n: int) -> list[int]:
        """Template index of each of ``n`` output frames (SPEC section 4 ping-pong)."""
        return template_order(len(self), n)

    # ---- maintenance

    def verify(self) -> None:
        """Full integrity check: a pack's sha256 checksums, then every template decodes."""
        if self.layout == "pack":
            from .models import sha256_file

            for name, entry in self.manifest["files"].items():
                if sha256_file(self.path / name) != entry["sha256"]:
                    raise AvatarError(f"{self.path / name}: checksum mismatch: the pack is corrupted "
                                      "(run fastgen prepare again)")
        for k in range(len(self)):
            self._decode(k)
            if self.layout == "pack":
                self._templates.crop(k)

    def close(self) -> None:
        self._cache.clear()
        self._templates.close()

    def __enter__(self) -> "Avatar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- writing packs

@dataclass
class PackTemplate:
    """One template to store: its JPEG bytes, crop box and a name for error messages."""

    jpeg: bytes
    box: Sequence[int]
    name: str


def write_pack(dest: PathLike, templates: Iterable[PackTemplate], *, count: int,
               frame_size: tuple[int, int], generator=None, audio_encoder=None,
               mode: Optional[str] = None, source: Optional[dict] = None,
               workers: Optional[int] = None) -> Path:
    """Build a pack at ``dest`` atomically: in a temporary directory next to it, renamed at the end.

    ``generator`` / ``audio_encoder`` are model files (``.onnx`` copied, ``.pth`` converted),
    ``onnx.ModelProto`` objects, or zero-argument callables returning one (resolved after the
    templates are written, so a caller can build the model meanwhile).  An existing pack at
    ``dest`` is replaced only once the new one is complete; any other existing file or non-empty
    directory is refused.
    """
    from . import __version__

    dest = Path(dest)
    if dest.exists():
        is_pack = dest.is_dir() and (dest / MANIFEST).is_file() and _manifest_format(dest) == PACK_FORMAT
        if not is_pack and not (dest.is_dir() and not any(dest.iterdir())):
            raise InputError(f"{dest}: exists and is not a fastgen avatar pack; choose another output")
    with building_dir(dest, AvatarError, "the pack") as tmp:
        files, index = _write_templates(tmp, templates, count, frame_size, workers)
        model_paths, model_facts = {}, {"mode": mode, "synthetic": False}
        for kind, model in (("generator", generator), ("audio_encoder", audio_encoder)):
            if model is None:
                model_paths[kind] = None
                continue
            rel = MODEL_FILES[kind]
            _write_model(model, kind, tmp / rel, mode)
            files[rel] = _file_entry(tmp / rel)
            model_paths[kind] = rel
            from .models import inspect

            info = inspect(tmp / rel, expect=kind)
            model_facts["synthetic"] |= info.synthetic
            if kind == "generator":
                model_facts["mode"] = info.mode
        manifest = {
            "format": PACK_FORMAT, "version": PACK_VERSION, "fastgen_version": __version__,
            "frame_count": count, "frame_size": list(frame_size), "crop_size": CROP_SIZE,
            "mode": model_facts["mode"], "synthetic": model_facts["synthetic"],
            "models": model_paths, "source": source or {},
            "layout": {INDEX: f"{count} records {INDEX_DTYPE.descr}",
                       FRAMES: "source JPEG files concatenated; offsets in index.npy",
                       CROPS: "(K, 328, 328, 3) uint8 BGR crops"},
            "files": files,
        }
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1)
            f.write("\n")
    return dest


def _manifest_format(root: Path) -> Optional[str]:
    try:
        data = json.loads((root / MANIFEST).read_text())
        return data.get("format") if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _file_entry(path: Path) -> dict:
    from .models import sha256_file

    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _write_model(model, kind: str, target: Path, mode: Optional[str]) -> None:
    import onnx

    from .models import build_model, inspect

    target.parent.mkdir(parents=True, exist_ok=True)
    if callable(model):
        model = model()
    if isinstance(model, onnx.ModelProto):
        onnx.save(model, str(target))
        return
    path = Path(model)
    if path.suffix.lower() == ".pth":
        built, _ = build_model(path, kind, mode or "ave")
        onnx.save(built, str(target))
    else:
        inspect(path, expect=kind)
        shutil.copyfile(path, target)


def _crop_job(t: PackTemplate, frame_size: tuple[int, int]) -> tuple[PackTemplate, np.ndarray]:
    frame = decode_frame(t.jpeg, t.name)
    if (frame.shape[1], frame.shape[0]) != tuple(frame_size):
        raise AvatarError(f"{t.name}: frame is {frame.shape[1]}x{frame.shape[0]}, expected "
                          f"{frame_size[0]}x{frame_size[1]} (all frames must have one size)")
    check_box(t.box, frame_size, t.name)
    return t, compute_crop(frame, t.box)


def _write_templates(tmp: Path, templates: Iterable[PackTemplate], count: int,
                     frame_size: tuple[int, int], workers: Optional[int]) -> tuple[dict, np.ndarray]:
    """frames.bin + crops.npy + index.npy; decode/resize on a thread pool, written in order."""
    index = np.zeros(count, INDEX_DTYPE)
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    frames_hash, crops_hash = hashlib.sha256(), hashlib.sha256()
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (count, CROP_SIZE, CROP_SIZE, 3)})
    written = offset = 0
    with open(tmp / FRAMES, "wb") as frames_f, open(tmp / CROPS, "wb") as crops_f, \
            ThreadPoolExecutor(workers, thread_name_prefix="fastgen-pack") as pool:
        crops_f.write(header.getvalue())
        crops_hash.update(header.getvalue())

        def store(result: tuple[PackTemplate, np.ndarray]) -> None:
            nonlocal written, offset
            t, crop = result
            if written >= count:
                raise AvatarError(f"{t.name}: more templates than the {count} announced")
            frames_f.write(t.jpeg)
            frames_hash.update(t.jpeg)
            crops_f.write(crop.data)
            crops_hash.update(crop.data)
            index[written] = (tuple(int(v) for v in t.box), offset, len(t.jpeg),
                              zlib.crc32(t.jpeg), zlib.crc32(crop))
            offset += len(t.jpeg)
            written += 1

        pending: deque = deque()
        for t in templates:
            pending.append(pool.submit(_crop_job, t, frame_size))
            if len(pending) >= 2 * workers:  # bounded look-ahead: memory stays flat
                store(pending.popleft().result())
        while pending:
            store(pending.popleft().result())
    if written != count:
        raise AvatarError(f"{tmp}: got {written} templates, expected {count}")
    np.save(tmp / INDEX, index, allow_pickle=False)
    files = {INDEX: _file_entry(tmp / INDEX),
             FRAMES: {"bytes": offset, "sha256": frames_hash.hexdigest()},
             CROPS: {"bytes": (tmp / CROPS).stat().st_size, "sha256": crops_hash.hexdigest()}}
    return files, index


def prepare(source: PathLike, dest: PathLike, *, generator: Optional[PathLike] = None,
            audio_encoder: Optional[PathLike] = None, mode: Optional[str] = None) -> Avatar:
    """Compile any avatar layout into a fastgen pack at ``dest`` and open it.

    Frames are copied as their source JPEG bytes (never re-encoded, never the exported package's
    lossy pre-cut JPEGs); crops are recomputed from them.  The models must be present (in the
    layout or given here): a pack is meant to be runnable as is.
    """
    src = Avatar.open(source, generator=generator, audio_encoder=audio_encoder, mode=mode, cache_mb=0)
    try:
        if src.generator_path is None:
            raise AvatarError(f"{src.path}: no generator model found in the avatar; pass --generator "
                              "(.onnx or .pth)")
        if src.audio_encoder_path is None and (src.mode or "ave") == "ave":
            raise AvatarError(f"{src.path}: no audio encoder found in the avatar; pass --audio-encoder "
                              "(.onnx or audio_visual_encoder.pth)")
        templates = (PackTemplate(src.jpeg(k), src.box(k), src._templates.name(k)) for k in range(len(src)))
        info = dict(src.source)
        info.pop("frame_size", None)
        write_pack(dest, templates, count=len(src), frame_size=src.frame_size,
                   generator=src.generator_path, audio_encoder=src.audio_encoder_path,
                   mode=src.mode, source=info)
    finally:
        src.close()
    return Avatar.open(dest)

