"""Avatars: the template video that gets a new mouth (docs/semantics.md §4).

=====================  ====================================================================
:mod:`.avatar`          :class:`Avatar` (open any layout, templates, crops, order, models)
                        and :func:`prepare` (compile a layout into a pack)
:mod:`.layouts`         SyncTalk_2D datasets and exported ONNX packages: discovery, landmarks,
                        crop boxes
:mod:`.pack`            the fastgen avatar pack format: :func:`write_pack`, reading, checksums
:mod:`.templates`       template order, decoding, 328x328 crops, the shared LRU cache
=====================  ====================================================================

Where the models are found and how ``.pth`` files are converted: :mod:`fastgen.models.locate`.
"""
from __future__ import annotations

from ..cachedir import default_cache_dir
from .avatar import Avatar, prepare
from .layouts import LANDMARK_POINTS, box_from_landmarks, check_box, parse_landmarks
from .pack import (CROPS, FRAMES, INDEX, INDEX_DTYPE, MANIFEST, MODEL_FILES, PACK_FORMAT, PACK_VERSION,
                   PackTemplate, write_pack)
from .templates import DEFAULT_CACHE_MB, TemplateCache, compute_crop, decode_frame, template_order

__all__ = ["Avatar", "CROPS", "DEFAULT_CACHE_MB", "FRAMES", "INDEX", "INDEX_DTYPE", "LANDMARK_POINTS",
           "MANIFEST", "MODEL_FILES", "PACK_FORMAT", "PACK_VERSION", "PackTemplate", "TemplateCache",
           "box_from_landmarks", "check_box", "compute_crop", "decode_frame", "default_cache_dir",
           "parse_landmarks", "prepare", "template_order", "write_pack"]
