"""The :class:`Avatar`: one avatar's templates, crop boxes, crops, order and models.

:meth:`Avatar.open` reads three layouts and answers the same questions for each — how many
templates, their size, each template's crop box, its full frame and its 328x328 crop, the
ping-pong template order, and where the models are: a SyncTalk_2D dataset or an exported ONNX
package (:mod:`.layouts`), or a fastgen pack (:mod:`.pack`).  :func:`prepare` compiles any of
them into a pack.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..errors import AvatarError, InputError
from ..models import sha256_file
from ..models.locate import ModelFiles, find_models, resolve_models
from ..splice import TileGrid, decode_region, split
from .layouts import Box, FileTemplates, read_layout
from .pack import MANIFEST, PackTemplate, PackTemplates, read_pack, write_pack
from .templates import DEFAULT_CACHE_MB, PATCH_CACHE_MB, TemplateCache, compute_crop, decode_frame, template_order

PathLike = Union[str, "os.PathLike[str]"]


class Avatar:
    """The templates of one avatar: frames, crop boxes, 328x328 crops, order and models.

    Use :meth:`open`.  ``frame(k)`` / ``crop(k)`` / ``region(...)`` return read-only uint8 BGR
    arrays from shared, thread-safe LRU caches (``cache_mb`` for whole frames, ``patch_cache_mb``
    for crops and face regions, at open); copy them before writing.
    """

    def __init__(self, path: Path, layout: str, boxes: np.ndarray, frame_size: tuple[int, int],
                 templates, models: ModelFiles, cache_bytes: int, manifest: Optional[dict] = None,
                 source: Optional[dict] = None, patch_bytes: int = PATCH_CACHE_MB << 20):
        self.path = path
        self.layout = layout                  # "dataset", "package" or "pack"
        self._boxes = boxes
        self._boxes.flags.writeable = False
        self.frame_size = frame_size          # (width, height)
        self._templates = templates
        self._cache = TemplateCache(cache_bytes)         # whole frames
        self._patches = TemplateCache(patch_bytes)       # crops and face regions
        self._grids: dict[int, Optional[TileGrid]] = {}
        self.generator_path = models.generator
        self.audio_encoder_path = models.audio_encoder
        self.mode = models.mode
        self.manifest = manifest
        self.source = source or {}
        self._weights: Optional[str] = models.weights

    # ---- opening

    @classmethod
    def open(cls, path: PathLike, *, generator: Optional[PathLike] = None,
             audio_encoder: Optional[PathLike] = None, mode: Optional[str] = None,
             cache_mb: float = DEFAULT_CACHE_MB, patch_cache_mb: float = PATCH_CACHE_MB) -> "Avatar":
        """Open a SyncTalk_2D dataset directory, an exported ONNX package or a fastgen pack.

        ``generator`` / ``audio_encoder`` (``.onnx`` or ``.pth``) override the models found in the
        layout; ``mode`` is the generator's audio mode for ``.pth`` checkpoints (default ``ave``).
        ``cache_mb`` bounds the decoded whole frames kept, ``patch_cache_mb`` the crops and face
        regions (:data:`fastgen.avatar.templates.PATCH_CACHE_MB`).
        """
        root = Path(path)
        if not root.exists():
            raise AvatarError(f"{root}: no such avatar directory")
        if not root.is_dir():
            raise AvatarError(f"{root}: not a directory (an avatar is a SyncTalk_2D dataset, an "
                              "exported package or a fastgen pack directory)")
        cache_bytes = int(cache_mb * (1 << 20))
        patch_bytes = int(patch_cache_mb * (1 << 20))
        if (root / MANIFEST).is_file():
            return cls._open_pack(root, generator, audio_encoder, mode, cache_bytes, patch_bytes)
        if (root / "full_body_img").exists() or (root / "landmarks").exists():
            package = any((root / p).exists() for p in
                          ("cache/crop_rectangles.json", "models/generator.onnx", "package_info.json"))
            files, boxes, facts = read_layout(root, package)
            found_gen, found_enc = find_models(root)
            models = resolve_models(generator or found_gen, audio_encoder or found_enc, mode)
            return cls(root, facts["layout"], boxes, tuple(facts["frame_size"]), FileTemplates(files),
                       models, cache_bytes, source=facts, patch_bytes=patch_bytes)
        if not any(root.iterdir()):
            raise AvatarError(f"{root}: empty directory, not an avatar")
        raise AvatarError(f"{root}: not an avatar: no full_body_img/ + landmarks/ (SyncTalk_2D dataset "
                          f"or exported package) and no {MANIFEST} (fastgen pack)")

    @classmethod
    def _open_pack(cls, root: Path, generator, audio_encoder, mode, cache_bytes: int,
                   patch_bytes: int) -> "Avatar":
        manifest, index, crops_offset = read_pack(root)
        listed = {kind: (root / name if name else None) for kind, name in manifest["models"].items()}
        if generator is None and audio_encoder is None:
            # trust the manifest (checked at prepare); inspecting a 48 MB ONNX costs ~80 ms
            models = ModelFiles(listed.get("generator"), listed.get("audio_encoder"), manifest.get("mode"))
        else:
            models = resolve_models(generator or listed.get("generator"),
                                     audio_encoder or listed.get("audio_encoder"), mode or manifest.get("mode"))
        width, height = manifest["frame_size"]
        return cls(root, "pack", np.ascontiguousarray(index["box"]), (int(width), int(height)),
                   PackTemplates(root, index, crops_offset), models, cache_bytes,
                   manifest=manifest, source=manifest.get("source"), patch_bytes=patch_bytes)

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

    def frame_into(self, k: int, out: np.ndarray) -> np.ndarray:
        """Template ``k``'s full frame written into ``out`` (H, W, 3) uint8: copied from the cache
        when it holds it, else decoded straight into ``out`` (C-contiguous; other layouts get a
        copy) without filling the cache.  A video sink paints every frame this way."""
        k = self._check_index(k)
        cached = self._cache.peek(("frame", k))
        if cached is None and out.flags.c_contiguous and out.shape == (self.frame_size[1], self.frame_size[0], 3):
            decode_frame(self._templates.jpeg(k), self._templates.name(k), out=out)
            return out
        out[...] = self.frame(k) if cached is None else cached
        return out

    def crop(self, k: int) -> np.ndarray:
        """Template ``k``'s 328x328 crop, uint8 BGR, read-only: bicubic resize of the box region."""
        k = self._check_index(k)
        if self._templates.crop is not None:
            return self._patches.get(("crop", k), lambda: self._templates.crop(k))
        return self._patches.get(("crop", k), lambda: compute_crop(self.frame(k), self._boxes[k]))

    def region(self, k: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` of template ``k``'s frame, read-only.

        Decoded from only the tiles around them where the template's JPEG restarts in tiles
        (packs and the demo store templates so: :mod:`fastgen.splice`), which costs a fraction of
        a whole decode, and cached as the box of whole tiles (what a spliced frame re-encodes, so
        the paste and the JPEG sink share one decode); otherwise cut from :meth:`frame`.  Equal to
        ``frame(k)[y0:y1, x0:x1]``.
        """
        k = self._check_index(k)
        w, h = self.frame_size
        x0, y0, x1, y1 = int(x0), int(y0), int(x1), int(y1)
        if not (0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h):
            raise InputError(f"region {(x0, y0, x1, y1)} is outside the {w}x{h} frame")
        whole = self._cache.peek(("frame", k))
        grid = self._grid(k) if whole is None and x1 > x0 and y1 > y0 else None
        if grid is None:
            return self.frame(k)[y0:y1, x0:x1] if whole is None else whole[y0:y1, x0:x1]
        ax0, ay0, ax1, ay1 = grid.aligned(x0, y0, x1, y1)
        tiles = self._patches.get(("region", k, ax0, ay0, ax1, ay1),
                                  lambda: self._decode_region(k, ax0, ay0, ax1, ay1))
        return tiles[y0 - ay0:y1 - ay0, x0 - ax0:x1 - ax0]

    def region_box(self, k: int, x0: int, y0: int, x1: int, y1: int) -> tuple[int, int, int, int]:
        """The box :meth:`region` decodes and caches for ``(x0, y0, x1, y1)``: whole JPEG tiles
        around it where template ``k`` is stored in tiles (what a spliced frame re-encodes), else
        the box itself.  A region of this box is served from the cache without slicing."""
        x0, y0, x1, y1 = int(x0), int(y0), int(x1), int(y1)
        grid = self._grid(self._check_index(k)) if x1 > x0 and y1 > y0 else None
        return (x0, y0, x1, y1) if grid is None else grid.aligned(x0, y0, x1, y1)

    def rows(self, k: int, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` of template ``k``'s frame (full width): :meth:`region` of those rows."""
        return self.region(k, 0, y0, self.frame_size[0], y1)

    def _grid(self, k: int) -> Optional[TileGrid]:
        """The tile grid of template k's JPEG, None where it cannot be cut (checked once)."""
        if k not in self._grids:
            try:
                grid = TileGrid.of(split(self._templates.jpeg(k))[0])
            except InputError:
                grid = None
            w, h = self.frame_size
            self._grids[k] = grid if grid is not None and (grid.width, grid.height) == (w, h) else None
        return self._grids[k]

    def _decode_region(self, k: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        try:
            pixels = decode_region(self._templates.jpeg(k), x0, y0, x1, y1)
        except (InputError, ValueError):
            pixels = None             # not a tiled JPEG we can cut: the whole decode says why
        if pixels is None or pixels.shape[:2] != (y1 - y0, x1 - x0):
            return self.frame(k)[y0:y1, x0:x1]
        return pixels

    def _decode(self, k: int) -> np.ndarray:
        where = self._templates.name(k)
        frame = decode_frame(self._templates.jpeg(k), where)
        if (frame.shape[1], frame.shape[0]) != self.frame_size:
            raise AvatarError(f"{where}: frame is {frame.shape[1]}x{frame.shape[0]}, expected "
                              f"{self.frame_size[0]}x{self.frame_size[1]}")
        return frame

    def template_name(self, k: int) -> str:
        """Where template ``k`` is read from, for messages."""
        return self._templates.name(self._check_index(k))

    @property
    def weights(self) -> str:
        """"known-answer" (demo), "synthetic" or "user", read from the model files themselves."""
        if self._weights is None:
            from ..models import inspect, weights_kind

            self._weights = weights_kind(*(inspect(p) for p in (self.generator_path, self.audio_encoder_path)
                                           if p is not None))
        return self._weights

    @property
    def weights_label(self) -> Optional[str]:
        """What output of these models must be labelled: "known-answer demo weights",
        "synthetic weights", or None for a user's own models."""
        from ..models import WEIGHTS_LABELS

        return WEIGHTS_LABELS[self.weights]

    def jpeg(self, k: int) -> bytes:
        """Template ``k``'s frame as the source JPEG bytes (what a pack stores)."""
        return self._templates.jpeg(self._check_index(k))

    def order(self, n: int) -> list[int]:
        """Template index of each of ``n`` output frames (docs/semantics.md §4.4 ping-pong)."""
        return template_order(len(self), n)

    # ---- maintenance

    def verify(self) -> None:
        """Full integrity check: a pack's sha256 checksums, then every template decodes."""
        if self.layout == "pack":
            for name, entry in self.manifest["files"].items():
                if sha256_file(self.path / name) != entry["sha256"]:
                    raise AvatarError(f"{self.path / name}: checksum mismatch: the pack is corrupted "
                                      "(run fastgen prepare again)")
        for k in range(len(self)):
            self._decode(k)
            if self.layout == "pack":
                self._templates.crop(k)

    @property
    def cached_bytes(self) -> int:
        """Bytes held by the frame and patch caches together."""
        return self._cache.nbytes + self._patches.nbytes

    def clear_cache(self) -> None:
        """Drop every decoded frame, crop and region (benchmarks measure misses this way)."""
        self._cache.clear()
        self._patches.clear()

    def close(self) -> None:
        self.clear_cache()
        self._templates.close()

    def __enter__(self) -> "Avatar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def prepare(source: PathLike, dest: PathLike, *, generator: Optional[PathLike] = None,
            audio_encoder: Optional[PathLike] = None, mode: Optional[str] = None) -> Avatar:
    """Compile any avatar layout into a fastgen pack at ``dest`` and open it.

    Frames are copied as their source JPEG bytes (never re-encoded, never the exported package's
    lossy pre-cut JPEGs); crops are recomputed from them.  The models must be present (in the
    layout or given here): a pack is meant to be runnable as is.
    """
    src = Avatar.open(source, generator=generator, audio_encoder=audio_encoder, mode=mode, cache_mb=0,
                      patch_cache_mb=0)
    try:
        if src.generator_path is None:
            raise AvatarError(f"{src.path}: no generator model found in the avatar; pass --generator "
                              "(.onnx or .pth)")
        if src.audio_encoder_path is None and (src.mode or "ave") == "ave":
            raise AvatarError(f"{src.path}: no audio encoder found in the avatar; pass --audio-encoder "
                              "(.onnx or audio_visual_encoder.pth)")
        templates = (PackTemplate(src.jpeg(k), src.box(k), src.template_name(k)) for k in range(len(src)))
        info = dict(src.source)
        info.pop("frame_size", None)
        write_pack(dest, templates, count=len(src), frame_size=src.frame_size,
                   generator=src.generator_path, audio_encoder=src.audio_encoder_path,
                   mode=src.mode, source=info)
    finally:
        src.close()
    return Avatar.open(dest)

