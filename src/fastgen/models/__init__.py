"""The model layer: SyncTalk_2D checkpoints → ONNX, synthetic weights, and ONNX validation.

No torch anywhere: checkpoints are read by a restricted unpickler (``checkpoint``), graphs are
built with onnx.helper (``graphs``), synthetic weights come from a numpy forward pass
(``weights``), and user ONNX files are validated before use (``inspect``).
"""
from __future__ import annotations

from .checkpoint import load_checkpoint, read_torch_pickle
from .export import MANIFEST, build_model, ensure_onnx, export_models, sha256_file
from .graphs import (AUDIO_SHAPES, MODES, build_audio_encoder, build_generator, expected_keys,
                     strip_module_prefix)
from .inspect import WEIGHTS_LABELS, ModelInfo, inspect, weights_kind
from .known_answer import KnownAnswerWeights, known_answer_weights
from .weights import SyntheticWeights, generator_inputs, synthetic_weights

__all__ = [
    "AUDIO_SHAPES", "KnownAnswerWeights", "MANIFEST", "MODES", "ModelInfo", "SyntheticWeights",
    "build_audio_encoder", "build_generator", "build_model", "ensure_onnx", "expected_keys",
    "export_models", "generator_inputs", "inspect", "known_answer_weights", "load_checkpoint",
    "read_torch_pickle", "sha256_file",
    "strip_module_prefix", "synthetic_weights", "WEIGHTS_LABELS", "weights_kind",
]
