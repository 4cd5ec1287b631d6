"""The fastgen avatar pack: a directory built by :func:`write_pack` (``fastgen prepare``).

=====================  =====================================================================
``manifest.json``      format name + version, frame count/size, mode, models, and the byte
                       size + sha256 of every other file
``index.npy``          one record per template: crop box, offset/length of its JPEG in
                       ``frames.bin``, crc32 of the JPEG and of its crop
``frames.bin``         the source JPEG files, byte for byte, one after another
``crops.npy``          (K, 328, 328, 3) uint8 BGR: every 328x328 crop, precomputed
``models/*.onnx``      generator and audio encoder (converted from ``.pth`` when needed)
=====================  =====================================================================

Opening checks the version, every file's size and the index's sha256 (milliseconds); each JPEG
and crop is checked against its crc32 when read (:class:`PackTemplates`).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import weakref
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from .._version import __version__
from ..atomic import building_dir
from ..errors import AvatarError, InputError
from ..image import CROP_SIZE
from ..models import inspect, sha256_file
from ..models.locate import write_model
from .layouts import check_box
from .templates import compute_crop, decode_frame

PathLike = Union[str, "os.PathLike[str]"]

PACK_FORMAT = "fastgen.avatar-pack"
PACK_VERSION = 1
MANIFEST = "manifest.json"
INDEX = "index.npy"
FRAMES = "frames.bin"
CROPS = "crops.npy"
MODEL_FILES = {"generator": "models/generator.onnx", "audio_encoder": "models/audio_encoder.onnx"}
INDEX_DTYPE = np.dtype([("box", "<i4", (4,)), ("frame_offset", "<i8"), ("frame_bytes", "<i8"),
                        ("frame_crc32", "<u4"), ("crop_crc32", "<u4")])
CROP_BYTES = CROP_SIZE * CROP_SIZE * 3


class PackTemplates:
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
        data = self._read_at(CROPS, CROP_BYTES, self.crops_offset + k * CROP_BYTES)
        if len(data) != CROP_BYTES or zlib.crc32(data) != int(self.index[k]["crop_crc32"]):
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


def read_pack(root: Path) -> tuple[dict, np.ndarray, int]:
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
            or data_offset + count * CROP_BYTES != files[CROPS][0]:
        raise AvatarError(f"{cpath}: holds {dtype} {shape}, expected ({count}, {CROP_SIZE}, {CROP_SIZE}, 3) "
                          "uint8: the pack is corrupted")
    return manifest, index, data_offset


@dataclass
class PackTemplate:
    """One template to store: its JPEG bytes, crop box and a name for error messages."""

    jpeg: bytes
    box: Sequence[int]
    name: str


def write_pack(dest: PathLike, templates: Iterable[PackTemplate], *, count: int,
               frame_size: tuple[int, int], generator=None, audio_encoder=None,
               mode: Optional[str] = None, source: Optional[dict] = None,
               workers: Optional[int] = None, keep_existing: bool = False) -> Path:
    """Build a pack at ``dest`` atomically: in a temporary directory next to it, renamed at the end.

    ``generator`` / ``audio_encoder`` are model files (``.onnx`` copied, ``.pth`` converted),
    ``onnx.ModelProto`` objects, or zero-argument callables returning one (resolved after the
    templates are written, so a caller can build the model meanwhile).  An existing pack at
    ``dest`` is replaced only once the new one is complete; any other existing file or non-empty
    directory is refused.  ``keep_existing=True``: a pack another process completed at ``dest``
    meanwhile is kept and this one discarded.
    """
    dest = Path(dest)
    if dest.exists():
        is_pack = dest.is_dir() and (dest / MANIFEST).is_file() and _manifest_format(dest) == PACK_FORMAT
        if not is_pack and not (dest.is_dir() and not any(dest.iterdir())):
            raise InputError(f"{dest}: exists and is not a fastgen avatar pack; choose another output")
    with building_dir(dest, AvatarError, "the pack", keep_existing=keep_existing) as tmp:
        files, index = _write_templates(tmp, templates, count, frame_size, workers)
        model_paths, model_facts = {}, {"mode": mode, "synthetic": False}
        for kind, model in (("generator", generator), ("audio_encoder", audio_encoder)):
            if model is None:
                model_paths[kind] = None
                continue
            rel = MODEL_FILES[kind]
            write_model(model, kind, tmp / rel, mode)
            files[rel] = _file_entry(tmp / rel)
            model_paths[kind] = rel
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
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


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
