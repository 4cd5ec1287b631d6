"""Is a reduced precision faithful to fp32?  Measured on the user's own model and avatar.

**Faithful** means, against ONNX Runtime fp32 on the same inputs, over the 320x320 output in grey
levels (``output * 255``): PSNR >= 40 dB, the worst frame >= 36 dB, and the 99th percentile of
|difference| <= 3 levels inside the face (the masked region the generator paints, docs/semantics.md
§5.4).  That is no more error than the default JPEG encode adds.  Verdicts are cached under the
fastgen cache, keyed by the model file's hash, the inputs' hash and the setting.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Optional, Sequence

import numpy as np

from ..cachedir import default_cache_dir, read_record, write_record
from ..image import MASK_COLS, MASK_ROWS
from ..models import sha256_file

BAR = {"psnr_db": 40.0, "min_frame_psnr_db": 36.0, "p99_face_levels": 3.0}
FACE = (slice(MASK_ROWS[0], MASK_ROWS[1]), slice(MASK_COLS[0], MASK_COLS[1]))


def _psnr(mse: np.ndarray) -> np.ndarray:
    """PSNR in dB for grey levels 0..255, capped at 99 (identical outputs)."""
    return np.minimum(99.0, 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-20)))


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Error figures of ``candidate`` against ``reference``, both (n, 3, H, W) in [0, 1]."""
    d = (candidate.astype(np.float64) - reference.astype(np.float64)) * 255.0
    per_frame = np.mean(d.reshape(len(d), -1) ** 2, axis=1)
    face = np.abs(d[:, :, FACE[0], FACE[1]])
    return {"psnr_db": round(float(_psnr(np.mean(per_frame))), 2),
            "min_frame_psnr_db": round(float(_psnr(per_frame).min()), 2),
            "p99_face_levels": round(float(np.percentile(face, 99)), 3),
            "max_levels": round(float(np.abs(d).max()), 3), "frames": int(len(d))}


def faithful(figures: dict) -> bool:
    return (figures["psnr_db"] >= BAR["psnr_db"] and figures["min_frame_psnr_db"] >= BAR["min_frame_psnr_db"]
            and figures["p99_face_levels"] <= BAR["p99_face_levels"])


def run_all(run: Callable, inputs: np.ndarray, audio: np.ndarray) -> np.ndarray:
    return np.concatenate([run({"input": inputs[i:i + 1], "audio": audio[i:i + 1]}) for i in range(len(inputs))])


def avatar_inputs(step, features, order: Sequence[int], audio_shape: tuple, count: int = 8
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``count`` generator inputs spread over a clip: the avatar's own crops with real audio windows."""
    frames = features.frames
    picks = np.linspace(frames.start, frames.stop - 1, min(count, len(frames))).astype(int)
    inputs = np.empty((len(picks), 6, 320, 320), np.float32)
    audio = np.empty((len(picks), *audio_shape), np.float32)
    for i, j in enumerate(picks):
        step.fill(order[j], inputs[i])
        features.window(int(j), audio[i])
    return inputs, audio


def _cache_path(model_path, inputs: np.ndarray, audio: np.ndarray, setting: str):
    digest = hashlib.sha256(inputs.tobytes() + audio.tobytes()).hexdigest()[:16]
    return default_cache_dir() / "fidelity" / f"{sha256_file(model_path)[:16]}-{digest}-{setting}.json"


def cached_verdict(model_path, inputs: np.ndarray, audio: np.ndarray, setting: str) -> Optional[dict]:
    """The verdict an earlier run stored for ``setting`` ("backend-precision"), or None."""
    return read_record(_cache_path(model_path, inputs, audio, setting))


def verdict(reference, candidate, inputs: np.ndarray, audio: np.ndarray, *,
            cache: Optional[bool] = True, model_path=None) -> dict:
    """Figures and ``faithful`` of session ``candidate`` against session ``reference`` (cached).

    The cache key is the fp32 model's hash (``model_path``, default the reference's file: a
    quantized candidate is a copy of it), the inputs' hash and the setting.
    """
    setting = f"{candidate.backend}-{candidate.precision}"
    model_path = model_path or reference.info.path
    if cache:
        known = cached_verdict(model_path, inputs, audio, setting)
        if known is not None:
            return known
    figures = compare(run_all(reference.run, inputs, audio), run_all(candidate.run, inputs, audio))
    result = {"setting": setting, **figures, "faithful": faithful(figures), "bar": BAR}
    if cache:
        write_record(_cache_path(model_path, inputs, audio, setting), result, "the fidelity verdict")
    return {**result, "cached": False}


class Check:
    """The fidelity check :func:`~fastgen.runtime.choice.open_chosen` runs, on inputs made once.

    ``make_inputs()`` returns (inputs, audio); it runs on first need, so a choice that needs no
    check costs nothing.  ``cached`` answers from an earlier run's verdict without opening the
    candidate.
    """

    def __init__(self, make_inputs: Callable[[], tuple[np.ndarray, np.ndarray]]):
        self.make_inputs = make_inputs
        self._inputs: Optional[tuple[np.ndarray, np.ndarray]] = None

    @property
    def inputs(self) -> tuple[np.ndarray, np.ndarray]:
        if self._inputs is None:
            self._inputs = self.make_inputs()
        return self._inputs

    def cached(self, info, setting: str) -> Optional[dict]:
        return cached_verdict(info.path, *self.inputs, setting)

    def __call__(self, reference, candidate) -> dict:
        return verdict(reference, candidate, *self.inputs)
