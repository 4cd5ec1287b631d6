"""Synthetic weights (deterministic, labelled, input-sensitive) and ONNX inspection."""
from __future__ import annotations

import json
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from fastgen.errors import ModelError
from fastgen.models import (AUDIO_SHAPES, MODES, build_audio_encoder, build_generator, expected_keys,
                            export_models, generator_inputs, inspect, synthetic_weights)


def _session(model, threads=2):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def generators():
    """mode → (weights, ONNX model); the build time is printed (the target lives in bench/models.py)."""
    out = {}
    for mode in MODES:
        start = time.perf_counter()
        weights = synthetic_weights("generator", mode)
        out[mode] = weights, build_generator(weights, mode)
        print(f"synthetic {mode} generator built in {time.perf_counter() - start:.2f} s")
    return out


@pytest.fixture(scope="module")
def encoder():
    weights = synthetic_weights("audio_encoder")
    return weights, build_audio_encoder(weights)


def test_keys_dtypes_and_size(generators, encoder):
    for mode, (weights, model) in generators.items():
        assert [(k, v.shape) for k, v in weights.items()] == list(expected_keys("generator", mode).items())
        assert all(v.dtype == (np.int64 if k.endswith("num_batches_tracked") else np.float32)
                   for k, v in weights.items())
        assert all(t.data_type == TensorProto.FLOAT for t in model.graph.initializer if "pads" not in t.name)
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    params = sum(v.size for k, v in generators["ave"][0].items() if not k.endswith(buffers))
    assert 12.1e6 < params < 12.3e6  # docs/semantics.md §7.1: about 12.25 M
    assert 44e6 < generators["ave"][1].ByteSize() < 50e6  # ~46 MB
    enc_params = sum(v.size for k, v in encoder[0].items() if k.endswith(("weight", "bias")))
    assert 2.7e6 < enc_params < 2.9e6  # docs/semantics.md §7.2: about 2.82 M


def test_deterministic_and_seeded():
    a, b = synthetic_weights("audio_encoder", seed=7), synthetic_weights("audio_encoder", seed=7)
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    c = synthetic_weights("audio_encoder", seed=8)
    assert not np.array_equal(a["0.conv_block.0.weight"], c["0.conv_block.0.weight"])


def test_generator_deterministic(generators):
    again = synthetic_weights("generator", "ave")
    first = generators["ave"][0]
    assert all(np.array_equal(first[k], again[k]) for k in first)


def test_labelled_synthetic(tmp_path, generators):
    weights, model = generators["ave"]
    assert weights.synthetic and weights.kind == "generator" and weights.mode == "ave"
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["fastgen.synthetic"] == "true" and meta["fastgen.mode"] == "ave"
    onnx.save(model, tmp_path / "g.onnx")
    assert inspect(tmp_path / "g.onnx").synthetic
    manifest = export_models("synthetic:3", tmp_path / "out", audio_encoder="synthetic", mode="wenet")
    assert manifest["synthetic"] is True
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["sources"]["generator"] == {
        "synthetic": True, "seed": 3}
    assert inspect(tmp_path / "out" / "generator.onnx").mode == "wenet"
    # A plain dict (e.g. from a checkpoint) is not labelled synthetic.
    plain = build_audio_encoder(dict(synthetic_weights("audio_encoder")))
    assert {p.key: p.value for p in plain.metadata_props}["fastgen.synthetic"] == "false"


@pytest.mark.parametrize("mode", MODES)
def test_generator_is_input_sensitive(generators, mode):
    """Blind-test guard: outputs must move clearly when the image or the audio changes."""
    sess = _session(generators[mode][1])
    image, audio = generator_inputs(np.random.default_rng(100), 2, mode)
    run = lambda img, aud: 255 * sess.run(["output"], {"input": img, "audio": aud})[0]
    base = run(image, audio)
    assert 30 < base.mean() < 225 and base.std() > 20  # not a flat grey, not saturated
    swapped = image[:, [2, 1, 0, 5, 4, 3]]  # BGR → RGB in both halves
    assert np.abs(run(swapped, audio) - base).mean() > 10
    assert np.abs(run(image, np.zeros_like(audio)) - base).mean() > 5
    assert np.abs(run(image, audio[::-1].copy()) - base).mean() > 5  # another clip's audio
    assert np.abs(run(np.roll(image, 1, axis=3), audio) - base).mean() > 5  # 1-pixel shift


def test_encoder_is_input_sensitive(encoder):
    sess = _session(encoder[1])
    mel = np.random.default_rng(5).uniform(-4, 4, (3, 1, 80, 16)).astype(np.float32)
    emb = sess.run(["emb"], {"mel": mel})[0]
    assert emb.shape == (3, 512) and (emb >= 0).all()  # ReLU output
    assert np.abs(emb[0] - emb[1]).mean() > 0.2 * np.abs(emb).mean()
    assert (emb > 0).mean() > 0.2  # not mostly dead


# ---- inspect ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_inspect_infers_mode_and_dynamic_batch(tmp_path, generators, mode):
    onnx.save(generators[mode][1], tmp_path / "g.onnx")
    info = inspect(tmp_path / "g.onnx", expect="generator")
    assert (info.kind, info.mode, info.dynamic_batch, info.max_batch) == ("generator", mode, True, None)
    assert info.inputs == {"input": (6, 320, 320), "audio": AUDIO_SHAPES[mode]}
    assert info.outputs == {"output": (3, 320, 320)}


def _with_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in [*fixed.graph.input, *fixed.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = batch
    return fixed


def test_inspect_fixed_batch_one_works_unbatched(tmp_path, encoder):
    onnx.save(_with_batch(encoder[1], 1), tmp_path / "e1.onnx")
    info = inspect(tmp_path / "e1.onnx", expect="audio_encoder")
    assert (info.kind, info.dynamic_batch, info.max_batch, info.mode) == ("audio_encoder", False, 1, None)
    onnx.save(_with_batch(encoder[1], 8), tmp_path / "e8.onnx")
    with pytest.raises(ModelError, match=r"e8\.onnx: fixed batch size \[8\] is not supported"):
        inspect(tmp_path / "e8.onnx")


def test_inspect_rejects_wrong_models(tmp_path, encoder):
    onnx.save(encoder[1], tmp_path / "enc.onnx")
    with pytest.raises(ModelError) as err:
        inspect(tmp_path / "enc.onnx", expect="generator")
    assert str(err.value) == (f"{tmp_path / 'enc.onnx'}: expected a generator (input, audio → output), "
                              "but this is an audio encoder (mel → emb)")

    def one_node(name, inputs, outputs):
        graph = helper.make_graph([helper.make_node("Identity", [inputs[0].name], [outputs[0].name])],
                                  "g", inputs, outputs)
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / name)
        return tmp_path / name

    f = lambda n, *shape, t=TensorProto.FLOAT: helper.make_tensor_value_info(n, t, list(shape))
    cls = one_node("cls.onnx", [f("x", 1, 3, 224, 224)], [f("y", 1, 3, 224, 224)])
    with pytest.raises(ModelError, match=r"cls\.onnx: not a SyncTalk_2D generator .*inputs x\[1,3,224,224\] float"):
        inspect(cls)
    half = TensorProto.FLOAT16
    bad_dtype = one_node("f16.onnx", [f("mel", "B", 1, 80, 16, t=half)], [f("emb", "B", 512, t=half)])
    with pytest.raises(ModelError, match=r"f16\.onnx: input mel\[B,1,80,16\] float16 must be float32"):
        inspect(bad_dtype)
    bad_shape = one_node("s.onnx", [f("mel", "B", 1, 80, 20)], [f("emb", "B", 512)])
    with pytest.raises(ModelError, match=r"s\.onnx: input mel\[B,1,80,20\] float must have shape \[B,1,80,16\]"):
        inspect(bad_shape)
    gen_bad_audio = tmp_path / "ga.onnx"
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "g",
                              [f("input", "B", 6, 320, 320), f("audio", "B", 16, 32, 32)],
                              [f("output", "B", 3, 320, 320)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), gen_bad_audio)
    with pytest.raises(ModelError, match=r"ga\.onnx: generator audio input has shape audio\[B,16,32,32\]"):
        inspect(gen_bad_audio)
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ModelError, match=r"junk\.onnx: not a readable ONNX model"):
        inspect(tmp_path / "junk.onnx")
    with pytest.raises(ModelError, match=r"missing\.onnx: model file not found"):
        inspect(tmp_path / "missing.onnx")
