"""Turn checkpoints into the ONNX files the runtime loads: ``fastgen export`` and on-the-fly caching."""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import onnx

from ..errors import InputError, ModelError
from ..atomic import building_dir, building_file
from .checkpoint import load_checkpoint
from .graphs import AUDIO_SHAPES, EMB_SIZE, IMAGE_SHAPE, MEL_SHAPE, MODES, OUTPUT_SHAPE
from .graphs import build_audio_encoder, build_generator
from .inspect import ModelInfo, inspect
from .weights import synthetic_weights

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "fastgen.models/1"
_FILES = {"generator": "generator.onnx", "audio_encoder": "audio_encoder.onnx"}
_CHECKPOINT_SUFFIXES = {".pth", ".pt", ".ckpt"}


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _parse_synthetic(source: str) -> int | None:
    """``synthetic`` or ``synthetic:SEED`` selects synthetic weights instead of a checkpoint."""
    if source == "synthetic":
        return 0
    if source.startswith("synthetic:") and source[len("synthetic:"):].isdigit():
        return int(source[len("synthetic:"):])
    return None


def build_model(source: str | Path, kind: str, mode: str = "ave") -> tuple[onnx.ModelProto, dict]:
    """The ONNX model for a checkpoint path (or ``synthetic[:SEED]``) and a description of its source."""
    seed = _parse_synthetic(str(source))
    if seed is not None:
        weights, described = synthetic_weights(kind, mode, seed), {"synthetic": True, "seed": seed}
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"{path}: {kind.replace('_', ' ')} checkpoint not found")
        weights = load_checkpoint(path)
        described = {"path": str(path), "sha256": sha256_file(path), "synthetic": False}
    if kind == "generator":
        return build_generator(weights, mode, source=str(source)), described
    return build_audio_encoder(weights, source=str(source)), described


def _io_shapes(kind: str, mode: str) -> dict:
    if kind == "generator":
        return {"inputs": {"input": ["batch", *IMAGE_SHAPE], "audio": ["batch", *AUDIO_SHAPES[mode]]},
                "outputs": {"output": ["batch", *OUTPUT_SHAPE]}}
    return {"inputs": {"mel": ["batch", *MEL_SHAPE]}, "outputs": {"emb": ["batch", EMB_SIZE]}}


def export_models(generator: str | Path, output: str | Path, audio_encoder: str | Path | None = None,
                  mode: str = "ave") -> dict:
    """Write ``output/{generator,audio_encoder}.onnx`` and ``output/manifest.json``; return the manifest.

    Sources are checkpoint paths or ``synthetic[:SEED]``. Atomic: everything is built in a
    temporary directory next to ``output`` and renamed into place; on failure ``output`` is left
    as it was (absent, or the previous export).
    """
    from .._version import __version__

    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r} (expected one of {', '.join(MODES)})")
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise InputError(f"{out}: directory is not empty and holds no fastgen export; choose another")
    with building_dir(out, ModelError, "the export") as tmp:
        sources = {"generator": generator, "audio_encoder": audio_encoder}
        manifest = {"format": MANIFEST_FORMAT, "fastgen_version": __version__, "mode": mode,
                    "synthetic": False, "sources": {}, "files": {}}
        for kind, source in sources.items():
            if source is None:
                continue
            model, described = build_model(source, kind, mode)
            target = tmp / _FILES[kind]
            onnx.save(model, str(target))
            manifest["sources"][kind] = described
            manifest["synthetic"] |= described["synthetic"]
            manifest["files"][_FILES[kind]] = {"kind": kind, "sha256": sha256_file(target),
                                               "bytes": target.stat().st_size, **_io_shapes(kind, mode)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def ensure_onnx(path: str | Path, kind: str, cache_dir: str | Path, mode: str = "ave") -> tuple[Path, ModelInfo]:
    """A ready ONNX file for ``path``: checked as is if it is ONNX, converted once if it is a checkpoint.

    Conversions are cached in ``cache_dir`` under the checkpoint's content hash, written atomically.
    ``mode`` matters only for generator checkpoints (an ONNX file's mode is read from its shapes).
    """
    path = Path(path)
    is_checkpoint = path.suffix.lower() in _CHECKPOINT_SUFFIXES or (path.is_file() and zipfile.is_zipfile(path))
    if not is_checkpoint:
        return path, inspect(path, expect=kind)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    suffix = f"-{mode}" if kind == "generator" else ""
    cached = Path(cache_dir) / f"{kind}{suffix}-{sha256_file(path)[:16]}.onnx"
    if not cached.is_file():
        model, _ = build_model(path, kind, mode)
        with building_file(cached, ModelError, "the converted model") as tmp:
            onnx.save(model, str(tmp))
    return cached, inspect(cached, expect=kind)
