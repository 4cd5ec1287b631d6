"""Where an avatar's models are, and turning what the user gave into ONNX files.

:func:`find_models` looks inside a layout's directory; :func:`resolve_models` checks the files
(``.onnx`` as is, ``.pth`` converted once into the cache); :func:`write_model` stores a model
(file, checkpoint, ``onnx.ModelProto`` or a callable making one) into a pack.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..cachedir import default_cache_dir
from ..errors import AvatarError
from .export import build_model, ensure_onnx
from .inspect import inspect, weights_kind


@dataclass(frozen=True)
class ModelFiles:
    """An avatar's generator and audio-encoder files, the generator's mode and the kind of their
    weights (:func:`fastgen.models.weights_kind`; None when the files were not inspected)."""

    generator: Optional[Path] = None
    audio_encoder: Optional[Path] = None
    mode: Optional[str] = None
    weights: Optional[str] = None


def resolve_models(generator, audio_encoder, mode: Optional[str]) -> ModelFiles:
    """Check user/layout model files; ``.pth`` checkpoints are converted once into the cache."""
    paths, infos = {}, {}
    for kind, source in (("generator", generator), ("audio_encoder", audio_encoder)):
        if source is None:
            paths[kind] = None
            continue
        path, info = ensure_onnx(Path(source), kind, default_cache_dir() / "models", mode=mode or "ave")
        paths[kind], infos[kind] = path, info
    gen_mode = infos["generator"].mode if "generator" in infos else mode
    return ModelFiles(paths["generator"], paths["audio_encoder"], gen_mode, weights_kind(*infos.values()))


def find_models(root: Path) -> tuple[Optional[Path], Optional[Path]]:
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


def write_model(model, kind: str, target: Path, mode: Optional[str]) -> None:
    import onnx

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
