"""int8 copies of the generator (fastgen.runtime.quantize) on the synthetic test generator.

The synthetic weights say nothing about int8 fidelity on a trained model (bench/int8.py measures
that); these tests check the file: written once and cached, int8 metadata, opens in ONNX Runtime
and OpenVINO, right output, excluded nodes left in float, and one-line errors for bad input.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from fastgen import InputError, ModelError
from fastgen.models import generator_inputs, inspect
from fastgen.runtime import PRECISION_KEY, open_session
from fastgen.runtime import quantize as q

FRAMES = 2          # calibration frames: enough to exercise the path, quick on 2 cores


@pytest.fixture(scope="module")
def calibration():
    return generator_inputs(np.random.default_rng(5), FRAMES, "ave")


@pytest.fixture(scope="module")
def int8_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("int8-cache")


@pytest.fixture(scope="module")
def int8_model(dataset, calibration, int8_cache):
    return q.quantize_generator(dataset / "generator.onnx", *calibration, cache=int8_cache)


def _quantized_weights(path) -> set[str]:
    """Names of the Conv nodes whose weight comes through a DequantizeLinear."""
    graph = onnx.load(str(path)).graph
    dq_out = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return {n.name for n in graph.node if n.op_type == "Conv" and n.input[1] in dq_out}


def test_int8_file_is_written_under_the_cache_with_metadata(dataset, int8_model, int8_cache):
    from fastgen.models import sha256_file

    assert int8_model.is_file() and int8_model.parent == int8_cache / "models" / "int8"
    assert int8_model.name.startswith(sha256_file(dataset / "generator.onnx")[:16] + "-")
    assert int8_model.name.endswith("-minmax.onnx")
    info = inspect(int8_model, expect="generator")
    assert info.metadata[PRECISION_KEY] == "int8"
    assert info.metadata[q.METHOD_KEY] == "minmax"
    assert set(json.loads(info.metadata[q.FLOAT_KEY])) == set(q.head_nodes(dataset / "generator.onnx"))
    graph = onnx.load(str(int8_model), load_external_data=False).graph
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) > 50
    assert not [p for p in int8_model.parent.iterdir() if p.name.startswith(".")]   # no temporaries left


def test_second_call_returns_the_cached_file_without_recomputing(dataset, calibration, int8_model, int8_cache,
                                                               monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(q, "_ort_quantize", boom)
    mtime = int8_model.stat().st_mtime_ns
    again = q.quantize_generator(dataset / "generator.onnx", *calibration, cache=int8_cache)
    assert again == int8_model and again.stat().st_mtime_ns == mtime


def test_default_cache_is_under_fastgen_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTGEN_CACHE", str(tmp_path))
    assert q.int8_path("a" * 64, "b" * 64, "minmax") == tmp_path / "models" / "int8" / f"{'a' * 16}-{'b' * 16}-minmax.onnx"


@pytest.mark.parametrize("backend", ["ort", "openvino"])
def test_int8_copy_runs_on_both_backends(int8_model, backend):
    session = open_session(int8_model, backend=backend, precision="int8", threads=1)
    image, audio = generator_inputs(np.random.default_rng(9), 1, "ave")
    out = session.run({"input": image, "audio": audio})
    assert out.shape == (1, 3, 320, 320) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    assert session.precision == "int8"


def test_the_fp32_model_is_refused_as_int8(dataset):
    with pytest.raises(ModelError, match="not one"):
        open_session(dataset / "generator.onnx", precision="int8")


def test_excluded_nodes_stay_float(dataset, calibration, int8_cache, int8_model):
    groups = q.conv_groups(dataset / "generator.onnx")
    names = groups["up5.conv.double_conv.1"]
    assert len(names) == 4 and any(n.endswith(".add:185") or ".add:" in n for n in names)
    path = q.quantize_generator(dataset / "generator.onnx", *calibration, exclude=names, cache=int8_cache)
    assert path != int8_model and path.is_file()
    quantized = _quantized_weights(path)
    convs = [n for n in names if ".add" not in n]
    assert not quantized & set(convs)                          # their weights are float
    assert set(convs) <= _quantized_weights(int8_model)        # and quantized without the exclusion
    assert not quantized & set(q.head_nodes(dataset / "generator.onnx"))
    assert set(json.loads(inspect(path).metadata[q.FLOAT_KEY])) >= set(names)


def test_bad_calibration_arrays_are_input_errors(dataset, calibration, int8_cache):
    image, audio = calibration
    model = dataset / "generator.onnx"
    with pytest.raises(InputError, match="calibration inputs must be"):
        q.quantize_generator(model, image[:, :3], audio, cache=int8_cache)
    with pytest.raises(InputError, match="calibration audio must be"):
        q.quantize_generator(model, image, audio[:1], cache=int8_cache)
    with pytest.raises(InputError, match="calibration audio must be"):
        q.quantize_generator(model, image, audio[:, :, :8], cache=int8_cache)
    with pytest.raises(InputError, match="calibration inputs must be"):
        q.quantize_generator(model, image[:0], audio[:0], cache=int8_cache)
    bad = image.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        q.quantize_generator(model, bad, audio, cache=int8_cache)
    with pytest.raises(InputError, match="unknown int8 method"):
        q.quantize_generator(model, image, audio, method="magic", cache=int8_cache)
    assert not list(int8_cache.glob("**/.*"))


def test_missing_model_is_a_model_error(tmp_path, calibration):
    with pytest.raises(ModelError, match="model file not found") as err:
        q.quantize_generator(tmp_path / "nope.onnx", *calibration, cache=tmp_path)
    assert str(tmp_path / "nope.onnx") in str(err.value) and "\n" not in str(err.value)
