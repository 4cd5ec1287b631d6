"""Check a user-supplied ONNX file before the runtime trusts it with frames."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import TensorProto

from ..errors import ModelError
from .graphs import AUDIO_SHAPES, EMB_SIZE, IMAGE_SHAPE, MEL_SHAPE, OUTPUT_SHAPE

WEIGHTS_KEY = "fastgen.weights"        # metadata naming analytic weights, written by graphs.py
# the one mapping from a weights kind to the label its output carries
WEIGHTS_LABELS = {"known-answer": "known-answer demo weights", "synthetic": "synthetic weights",
                  "user": None}
_MODE_BY_AUDIO_SHAPE = {shape: mode for mode, shape in AUDIO_SHAPES.items()}
_DESCRIPTION = {"generator": "a generator (input, audio → output)",
                "audio_encoder": "an audio encoder (mel → emb)"}


@dataclass(frozen=True)
class ModelInfo:
    """What :func:`inspect` found: the model's role, its audio mode and its batch axis."""

    path: Path
    kind: str                       # "generator" or "audio_encoder"
    mode: str | None                # generator audio mode ("ave", "hubert", "wenet"); None for encoders
    dynamic_batch: bool             # False: a fixed batch of 1 (older exports) → run unbatched
    inputs: dict[str, tuple] = field(default_factory=dict)   # name → shape without the batch axis
    outputs: dict[str, tuple] = field(default_factory=dict)
    synthetic: bool = False         # built by fastgen from synthetic weights
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def weights(self) -> str:
        """What the weights are: "known-answer" (fastgen's analytic demo weights), "synthetic"
        (random, for benchmarks and tests) or "user" (anything else: a trained checkpoint)."""
        if self.metadata.get(WEIGHTS_KEY) == WEIGHTS_LABELS["known-answer"]:
            return "known-answer"
        return "synthetic" if self.synthetic else "user"

    @property
    def weights_label(self) -> str | None:
        """The label output of this model must carry (None for a user's own model)."""
        return WEIGHTS_LABELS[self.weights]

    @property
    def max_batch(self) -> int | None:
        """Largest batch the model accepts (None: any)."""
        return None if self.dynamic_batch else 1


def _signature(values, initializers: set[str]) -> dict[str, tuple]:
    """name → (elem_type, dims) with dims as ints, or None for a symbolic/unknown dimension."""
    out = {}
    for v in values:
        if v.name in initializers:  # IR < 4 exports list the weights as graph inputs too
            continue
        t = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                     for d in t.shape.dim)
        out[v.name] = (t.elem_type, dims)
    return out


def _fmt(sig: dict[str, tuple]) -> str:
    def one(name, elem, dims):
        dtype = TensorProto.DataType.Name(elem).lower() if elem else "?"
        return f"{name}[{','.join('B' if d is None else str(d) for d in dims)}] {dtype}"

    return ", ".join(one(n, e, d) for n, (e, d) in sig.items()) or "none"


def inspect(path: str | Path, expect: str | None = None) -> ModelInfo:
    """Validate a SyncTalk_2D generator or audio encoder ONNX file and describe it.

    ``expect`` ("generator" / "audio_encoder") makes a model of the other kind an error.
    Raises :class:`ModelError` with a one-line reason when the file is not usable.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError; any failure means "not ONNX"
        raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs, outputs = _signature(graph.input, initializers), _signature(graph.output, set())
    if not graph.node or not outputs:
        raise ModelError(f"{path}: not a readable ONNX model (empty graph)")

    if set(inputs) == {"input", "audio"}:
        kind = "generator"
    elif set(inputs) == {"mel"}:
        kind = "audio_encoder"
    else:
        raise ModelError(f"{path}: not a SyncTalk_2D generator (input, audio → output) or audio "
                         f"encoder (mel → emb): inputs {_fmt(inputs)}; outputs {_fmt(outputs)}")
    if expect is not None and kind != expect:
        raise ModelError(f"{path}: expected {_DESCRIPTION[expect]}, but this is {_DESCRIPTION[kind]}")

    mode = None
    if kind == "generator":
        audio_shape = inputs["audio"][1][1:]
        mode = _MODE_BY_AUDIO_SHAPE.get(audio_shape)
        if mode is None:
            raise ModelError(f"{path}: generator audio input has shape {_fmt({'audio': inputs['audio']})}; "
                             "expected (B,32,16,16) ave, (B,32,32,32) hubert or (B,256,16,32) wenet")
        want_in, want_out = {"input": IMAGE_SHAPE, "audio": AUDIO_SHAPES[mode]}, {"output": OUTPUT_SHAPE}
    else:
        want_in, want_out = {"mel": MEL_SHAPE}, {"emb": (EMB_SIZE,)}

    batch_dims = set()
    for role, sig, want in (("input", inputs, want_in), ("output", outputs, want_out)):
        if set(sig) != set(want):
            raise ModelError(f"{path}: {role}s are {_fmt(sig)}; expected "
                             + ", ".join(f"{n}[B,{','.join(map(str, s))}] float" for n, s in want.items()))
        for name, shape in want.items():
            elem, dims = sig[name]
            if elem != TensorProto.FLOAT:
                raise ModelError(f"{path}: {role} {_fmt({name: sig[name]})} must be float32")
            if len(dims) != len(shape) + 1 or dims[1:] != shape:
                raise ModelError(f"{path}: {role} {_fmt({name: sig[name]})} must have shape "
                                 f"[B,{','.join(map(str, shape))}]")
            batch_dims.add(dims[0])
    if batch_dims - {None, 1}:
        raise ModelError(f"{path}: fixed batch size {sorted(d for d in batch_dims if d)} is not supported "
                         "(the batch axis must be dynamic or 1)")
    metadata = {p.key: p.value for p in model.metadata_props}
    return ModelInfo(
        path=path, kind=kind, mode=mode, dynamic_batch=batch_dims == {None},
        inputs={n: d[1:] for n, (_, d) in inputs.items()},
        outputs={n: d[1:] for n, (_, d) in outputs.items()},
        synthetic=metadata.get("fastgen.synthetic") == "true", metadata=metadata,
    )


def weights_kind(*infos: ModelInfo | None) -> str:
    """The kind of output these models make together: "synthetic" if any is random, else
    "known-answer" if any is the analytic demo, else "user"."""
    kinds = {i.weights for i in infos if i is not None}
    return next((k for k in ("synthetic", "known-answer") if k in kinds), "user")
