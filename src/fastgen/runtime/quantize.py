"""int8 copies of the generator, quantized on the avatar's own crops (static, per-channel QDQ).

:func:`quantize_generator` writes an ONNX file with QuantizeLinear/DequantizeLinear pairs: u8
activations (asymmetric, per tensor), i8 symmetric per-channel weights, the layers named in
``exclude`` and the output head (the last Conv and the Sigmoid) left in float.  ONNX Runtime runs
it as QLinearConv; OpenVINO as u8/i8 convolutions with the float rest at its
INFERENCE_PRECISION_HINT (bf16 where native).  Calibration is on the inputs the caller gives:
the avatar's own crops with real audio windows, so every file is per model *and* per avatar.
The copy carries ``fastgen.precision = int8`` in its metadata, which
:func:`fastgen.runtime.open_session` requires for ``precision="int8"``.

Measured (bench/int8.py, trained UNet328 of bench/train_generator.py, demo avatar, real speech;
calibrated on 32 frames of the clip's first half, checked on 16 of its second half; 2-core Xeon
with AVX512-VNNI/BF16, no AMX; 2026-12-02): **no int8 setting is faithful**.  Full int8 (MinMax,
head in float) runs 1.55x ORT fp32 on ORT and 1.77x on OpenVINO at 37.0 dB, p99 11.4 grey levels
in the face (bar: 40 dB, 3 levels); percentile ranges 37.7 dB / 10.1 at 1.91x; entropy ranges are
MinMax's in ORT 1.32.  The error is spread over the network: keeping one block in float gains
< 0.2 dB except the 320x320 decoder (up5: +1.3 and +0.7) and the head (8-bit logits before the
Sigmoid: +1.4 dB, hence ``head=True``), and those are where the time goes: the 2 / 4 / 8 most
sensitive blocks in float give 41.8 / 42.8 / 43.6 dB at 1.09 / 1.04 / 0.91x.  NNCF accuracy
control (OpenVINO, metric: face PSNR against fp32 on 8 calibration frames) is the one that
passes: target 51 dB gave 49.4 dB, p99 2.88 levels, faithful, 1.21x ORT fp32 (target 48 dB: 47.5
dB, p99 3.55, 1.23x), but it takes 5 minutes and writes OpenVINO IR, not ONNX.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from ..atomic import building_file
from ..cachedir import default_cache_dir
from ..errors import InputError, ModelError
from . import PRECISION_KEY

# method -> what it is.  ORT's calibrators (onnxruntime.quantization) or NNCF's (optional).
METHODS = {
    "minmax": "ORT static QDQ, MinMax ranges over the calibration frames",
    "percentile": "ORT static QDQ, 99.999th percentile ranges (histograms, 4 frames at a time)",
    "entropy": "ORT static QDQ, KL-divergence (entropy) ranges",
}
DEFAULT_METHOD = "minmax"
PERCENTILE = 99.999
HISTOGRAM_STRIDE = 4          # frames per histogram update: all at once needs ~0.4 GB a frame
METHOD_KEY = "fastgen.int8.method"
FLOAT_KEY = "fastgen.int8.float_nodes"
CALIBRATION_FRAMES = 32       # what quantized_generator calibrates on


@dataclass(frozen=True)
class Sensitivity:
    """One block of the generator and what keeping it in float gives (``gain_db`` over full int8)."""

    group: str
    nodes: tuple[str, ...]
    psnr_db: float
    p99_face_levels: float
    gain_db: float


def _info(model):
    from ..models import ModelInfo, inspect

    if isinstance(model, ModelInfo):
        return model
    return inspect(Path(model), expect="generator")


def _check_inputs(info, inputs, audio) -> tuple[np.ndarray, np.ndarray]:
    """Calibration arrays as float32 C arrays of the generator's shapes, or an InputError."""
    x = np.ascontiguousarray(inputs, dtype=np.float32) if isinstance(inputs, np.ndarray) else None
    a = np.ascontiguousarray(audio, dtype=np.float32) if isinstance(audio, np.ndarray) else None
    want_x, want_a = tuple(info.inputs["input"]), tuple(info.inputs["audio"])
    if x is None or x.ndim != 1 + len(want_x) or tuple(x.shape[1:]) != want_x or len(x) < 1:
        raise InputError(f"{info.path}: calibration inputs must be (n, {', '.join(map(str, want_x))}) "
                         f"float32, got {None if x is None else x.shape}")
    if a is None or a.ndim != 1 + len(want_a) or tuple(a.shape[1:]) != want_a or len(a) != len(x):
        raise InputError(f"{info.path}: calibration audio must be ({len(x)}, {', '.join(map(str, want_a))}) "
                         f"float32, got {None if a is None else a.shape}")
    if not (np.isfinite(x).all() and np.isfinite(a).all()):
        raise InputError(f"{info.path}: calibration inputs contain NaN or infinity")
    return x, a


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for arr in arrays:
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _setting(method: str, exclude: Sequence[str], head: bool) -> str:
    tag = method
    if exclude:
        tag += "-x" + hashlib.sha256("\n".join(sorted(exclude)).encode()).hexdigest()[:10]
    return tag if head else tag + "-nohead"


def int8_path(model_sha: str, inputs_sha: str, setting: str, cache: Optional[Path] = None) -> Path:
    """Where the int8 copy of a model calibrated on given inputs with ``setting`` is cached."""
    return (cache or default_cache_dir()) / "models" / "int8" / f"{model_sha[:16]}-{inputs_sha[:16]}-{setting}.onnx"


def conv_groups(model) -> dict[str, list[str]]:
    """The generator's blocks: block name -> its Conv (and residual Add) node names, in graph order.

    fastgen's builder names nodes after the PyTorch modules (``up5.conv.double_conv.1.conv.3:182``);
    a block is one depthwise-separable triple (``...double_conv.1``) with its Add.  Other names
    make one block per node.
    """
    import onnx

    info = _info(model)
    graph = onnx.load(str(info.path), load_external_data=False).graph
    groups: dict[str, list[str]] = {}
    for node in graph.node:
        if node.op_type not in ("Conv", "Add") or not node.name:
            continue
        base = node.name.split(":")[0]
        base = base[:-len(".add")] if base.endswith(".add") else base
        groups.setdefault(base.rsplit(".conv.", 1)[0] if ".conv." in base else base, []).append(node.name)
    return groups


def head_nodes(model) -> list[str]:
    """The output head kept in float: the Sigmoid producing the output and the Conv feeding it.

    Its 8-bit logits cost more than any other block (measured: +1.4 dB when kept in float)."""
    import onnx

    info = _info(model)
    graph = onnx.load(str(info.path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    names, tensor = [], graph.output[0].name
    for _ in range(2):
        node = producer.get(tensor)
        if node is None or node.op_type not in ("Sigmoid", "Conv") or not node.name:
            break
        names.append(node.name)
        if node.op_type == "Conv":
            break
        tensor = node.input[0]
    return names


class _Reader:
    """A CalibrationDataReader over (n, ...) arrays, one frame per batch (``set_range`` for strides)."""

    def __init__(self, inputs: np.ndarray, audio: np.ndarray):
        self.inputs, self.audio = inputs, audio
        self.start, self.stop = 0, len(inputs)
        self.i = 0

    def get_next(self):
        if self.start + self.i >= self.stop:
            return None
        k = self.start + self.i
        self.i += 1
        return {"input": self.inputs[k:k + 1], "audio": self.audio[k:k + 1]}

    def rewind(self):
        self.i = 0

    def set_range(self, start_index: int, end_index: int):
        self.start, self.stop, self.i = start_index, min(end_index, len(self.inputs)), 0

    def __len__(self) -> int:
        return len(self.inputs)


def _ort_quantize(src: Path, dest: Path, inputs, audio, method: str, exclude: Sequence[str],
                  ranges: Path) -> None:
    """quantize_static into ``dest``; calibration ranges cached in ``ranges`` (reused by exclusions)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    reader = type("AvatarReader", (_Reader, CalibrationDataReader), {})(inputs, audio)
    calib = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
             "entropy": CalibrationMethod.Entropy}[method]
    # MinMax keeps only per-tensor ReduceMin/Max per frame (small); the histogram methods keep
    # whole activations, so they are fed HISTOGRAM_STRIDE frames at a time.  (ORT 1.32's
    # CalibMaxIntermediateOutputs drops the frames it clears: not used.)
    extra = {"WeightSymmetric": True, "ActivationSymmetric": False}
    if method == "percentile":
        extra["CalibPercentile"] = PERCENTILE
    if method != "minmax" and len(inputs) % HISTOGRAM_STRIDE == 0:
        extra["CalibStridedMinMax"] = HISTOGRAM_STRIDE   # the histograms grow stride by stride
    ranges_tmp = None
    if not ranges.is_file():
        ranges.parent.mkdir(parents=True, exist_ok=True)
        ranges_tmp = ranges.with_name(f".{ranges.name}.{dest.name}")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)            # ORT's advice to pre-process, printed on every call
    try:
        quantize_static(str(src), str(dest), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=calib, nodes_to_exclude=list(exclude) or None, extra_options=extra,
                        calibration_cache_path=str(ranges_tmp or ranges))
        if ranges_tmp is not None and ranges_tmp.is_file():
            ranges_tmp.replace(ranges)
    except MemoryError:
        raise InputError(f"{src}: not enough memory to calibrate on {len(inputs)} frames") from None
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{src}: ONNX Runtime cannot quantize the model ({first})") from None
    finally:
        root.setLevel(level)
        if ranges_tmp is not None and ranges_tmp.exists():
            ranges_tmp.unlink()


def quantize_generator(model: Union[str, Path, "object"], inputs: np.ndarray, audio: np.ndarray, *,
                       method: str = DEFAULT_METHOD, exclude: Iterable[str] = (), head: bool = True,
                       out: Optional[Union[str, Path]] = None, cache: Optional[Path] = None) -> Path:
    """Write (once) an int8 QDQ copy of generator ``model`` calibrated on ``inputs`` / ``audio``.

    ``model`` is a path or a :class:`~fastgen.models.ModelInfo`; ``inputs`` (n, 6, 320, 320) and
    ``audio`` (n, *audio shape) are the avatar's own crops and audio windows
    (:func:`fastgen.runtime.fidelity.avatar_inputs`).  ``method`` is one of :data:`METHODS`;
    ``exclude`` names nodes kept in float (e.g. from :func:`sensitive_nodes`); ``head=True`` also
    keeps the output head in float (:func:`head_nodes`).  The file goes to ``out`` if given (always
    written), else to the cache (:func:`int8_path`, keyed by the model's hash, the inputs' hash and
    the setting), where a second call returns it without recomputing.  Written atomically.
    """
    from ..models import sha256_file

    if method not in METHODS:
        raise InputError(f"unknown int8 method {method!r} (available: {', '.join(METHODS)})")
    info = _info(model)
    x, a = _check_inputs(info, inputs, audio)
    exclude = sorted(set(exclude))
    floats = sorted(set(exclude) | set(head_nodes(info) if head else ()))
    model_sha, inputs_sha = sha256_file(info.path), _digest(x, a)
    dest = Path(out) if out is not None else int8_path(model_sha, inputs_sha, _setting(method, exclude, head),
                                                        cache)
    if out is None and dest.is_file():
        return dest
    import onnx
    from onnx import helper

    ranges = int8_path(model_sha, inputs_sha, method, cache).with_suffix(".ranges.json")
    with building_file(dest, ModelError, "the int8 model") as tmp:
        _ort_quantize(info.path, tmp, x, a, method, floats, ranges)
        q = onnx.load(str(tmp))
        props = {p.key: p.value for p in q.metadata_props}
        props.update({PRECISION_KEY: "int8", METHOD_KEY: method, FLOAT_KEY: json.dumps(floats),
                      "fastgen.int8.source": model_sha, "fastgen.int8.calibration": inputs_sha})
        helper.set_model_props(q, props)
        onnx.save(q, str(tmp))
    return dest


def _score(path: Path, x: np.ndarray, a: np.ndarray, reference: np.ndarray, backend: str, threads: int) -> dict:
    from . import open_session
    from .fidelity import compare, run_all

    session = open_session(path, backend=backend, precision="int8", threads=threads)
    return compare(reference, run_all(session.run, x, a))


def sensitive_nodes(model, inputs: np.ndarray, audio: np.ndarray, *, method: str = DEFAULT_METHOD,
                    frames: int = 8, backend: str = "ort", threads: int = 2,
                    groups: Optional[dict[str, list[str]]] = None,
                    cache: Optional[Path] = None) -> list[Sensitivity]:
    """The generator's blocks ranked by how much keeping each one alone in float helps.

    Quantizes on all of ``inputs`` (ranges computed once), then for each block of
    :func:`conv_groups` writes the copy with that block excluded and measures PSNR against ORT
    fp32 on ``frames`` of the inputs (every len/frames-th); most helpful first.  Keep the top k in
    float with ``quantize_generator(..., exclude=[n for s in ranking[:k] for n in s.nodes])``.
    Costs about 4 s a block (33 blocks in UNet328) on 2 cores.
    """
    import tempfile

    from . import open_session
    from .fidelity import run_all

    info = _info(model)
    x, a = _check_inputs(info, inputs, audio)
    step = max(1, len(x) // max(1, frames))
    ex, ea = x[::step][:frames], a[::step][:frames]
    reference = run_all(open_session(info, threads=threads).run, ex, ea)
    base = _score(quantize_generator(info, x, a, method=method, cache=cache), ex, ea, reference, backend, threads)
    ranking = []
    head = set(head_nodes(info))
    with tempfile.TemporaryDirectory(prefix="fastgen-int8-") as tmp:
        for group, nodes in (groups or conv_groups(info)).items():
            if set(nodes) <= head:
                continue
            path = quantize_generator(info, x, a, method=method, exclude=nodes, cache=cache,
                                      out=Path(tmp) / "candidate.onnx")
            figures = _score(path, ex, ea, reference, backend, threads)
            ranking.append(Sensitivity(group, tuple(nodes), figures["psnr_db"], figures["p99_face_levels"],
                                       round(figures["psnr_db"] - base["psnr_db"], 3)))
    return sorted(ranking, key=lambda s: -s.gain_db)


def float_blocks(ranking: Sequence[Sensitivity], k: int) -> list[str]:
    """The node names of the ``k`` most sensitive blocks of a :func:`sensitive_nodes` ranking."""
    return [n for s in ranking[:max(0, int(k))] for n in s.nodes]


def quantized_generator(info, avatar, step, feature_table, *, method: str = DEFAULT_METHOD,
                        frames: int = CALIBRATION_FRAMES):
    """The engine's int8 model: ``info`` quantized on ``frames`` of this avatar's own crops with a
    deterministic speech-like clip's audio windows (cached; the same avatar and model reuse it).
    Returns the :class:`~fastgen.models.ModelInfo` of the copy."""
    from .. import demo
    from ..models import inspect
    from .fidelity import avatar_inputs

    table = feature_table(demo.audio(14.0, seed=5))
    x, a = avatar_inputs(step, table, avatar.order(len(table)), tuple(info.inputs["audio"]), count=frames)
    return inspect(quantize_generator(info, x, a, method=method), expect="generator")
