"""The GPU backends, on a machine without a GPU: everything their code does that a CPU can run.

* PyTorch (``--backend torch``): the module fastgen builds from the ONNX file's weights runs on
  the CPU build of torch and is checked against ONNX Runtime fp32 (the CUDA-only parts — CUDA
  graphs, pinned buffers, streams — cannot run here).
* ONNX Runtime CUDA / TensorRT: the IOBinding session and the fp16 conversion run with the CPU
  provider; the TensorRT options are checked as data.
* Selection on a GPU machine, batch calibration and the verdict cache, with everything faked.
"""
from __future__ import annotations

import builtins
import logging

import numpy as np
import onnx
import pytest

from fastgen import InputError, ModelError
from fastgen.models import generator_inputs, inspect
from fastgen.runtime import BACKENDS, open_session
from fastgen.runtime import calibration
from fastgen.runtime.choice import Choice, choose, gpu_present, open_chosen
from fastgen.runtime.ort_gpu import TRT_BATCHES, fp16_model, open_ort_gpu, provider_options

ZEN4 = {"avx2", "avx512f", "avx512_bf16"}


@pytest.fixture(scope="module")
def encoder_info(dataset):
    return inspect(dataset / "audio_encoder.onnx", expect="audio_encoder")


@pytest.fixture(scope="module")
def ort_out(generator_info, feeds):
    return open_session(generator_info, backend="ort", threads=2).run(feeds)


def hide_module(monkeypatch, module: str):
    real_import = builtins.__import__

    def fake(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and (name == module or name.startswith(module + ".")):
            raise ImportError(f"No module named {module!r}")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", fake)


# ---- PyTorch ------------------------------------------------------------------------------

def test_torch_fp32_equals_ort(generator_info, feeds, ort_out):
    pytest.importorskip("torch")
    session = open_session(generator_info, backend="torch", precision="fp32", threads=2)
    out = session.run(feeds)
    assert out.shape == (2, 3, 320, 320) and out.dtype == np.float32
    assert np.abs(out - ort_out).max() <= 1e-4          # same weights, same arithmetic, fp32
    facts = session.describe()
    assert facts["backend"] == "torch" and facts["device"] == "cpu" and facts["precision"] == "fp32"


def test_torch_runs_the_audio_encoder_too(encoder_info):
    pytest.importorskip("torch")
    mel = np.random.default_rng(1).standard_normal((3, 1, 80, 16)).astype(np.float32)
    ref = open_session(encoder_info, backend="ort", threads=2).run({"mel": mel})
    out = open_session(encoder_info, backend="torch", threads=2).run({"mel": mel})
    assert out.shape == (3, 512) and np.abs(out - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


def test_torch_bf16_output_shape_and_range(generator_info, feeds, ort_out):
    pytest.importorskip("torch")
    session = open_session(generator_info, backend="torch", precision="bf16", threads=2)
    out = session.run(feeds)
    assert out.shape == (2, 3, 320, 320) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert 0 < np.abs(out - ort_out).max() < 0.5        # reduced precision: close, not equal


def test_torch_sessions_share_one_weight_copy(generator_info):
    pytest.importorskip("torch")
    a = open_session(generator_info, backend="torch", threads=1)
    b = open_session(generator_info, backend="torch", threads=1)
    assert a.module is b.module and a is not b


def test_torch_checks_inputs_before_running(generator_info, feeds):
    pytest.importorskip("torch")
    session = open_session(generator_info, backend="torch", threads=1)
    with pytest.raises(InputError, match=r"input 'input' must be float32 \(batch, 6, 320, 320\), got float64"):
        session.run({**feeds, "input": feeds["input"].astype(np.float64)})
    with pytest.raises(InputError, match="input 'audio' must be float32.*missing"):
        session.run({"input": feeds["input"]})
    with pytest.raises(InputError, match="different batch sizes"):
        session.run({"input": feeds["input"], "audio": feeds["audio"][:1]})


def test_torch_fp16_needs_cuda_and_foreign_weights_are_named(generator_info, tmp_path):
    pytest.importorskip("torch")
    from fastgen.runtime.pytorch import open_torch

    with pytest.raises(ModelError, match="fp16 in the torch backend needs a CUDA device"):
        open_torch(generator_info, threads=1, precision="fp16", device="cpu")
    model = onnx.load(str(generator_info.path))
    for i, init in enumerate(model.graph.initializer):       # what another exporter's names look like
        old, new = init.name, f"onnx::Conv_{i}"
        init.name = new
        for node in model.graph.node:
            node.input[:] = [new if n == old else n for n in node.input]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(model, str(foreign))
    with pytest.raises(ModelError, match="no initializer 'inc.inconv.0.conv.0.weight'.*fastgen export"):
        open_session(foreign, "generator", backend="torch")


def test_torch_missing_is_a_clear_error(generator_info, monkeypatch):
    hide_module(monkeypatch, "torch")
    with pytest.raises(InputError, match=r"pip install 'fastgen\[torch\]'"):
        open_session(generator_info, backend="torch")


# ---- ONNX Runtime CUDA / TensorRT -----------------------------------------------------------

def test_io_binding_session_on_the_cpu_provider(generator_info, feeds, ort_out):
    session = open_ort_gpu(generator_info, backend="cuda", threads=2, precision="fp32",
                           providers=["CPUExecutionProvider"])
    assert session.device == "cpu"
    out = session.run(feeds)
    assert np.array_equal(out, ort_out) or np.abs(out - ort_out).max() <= 1e-5
    one = session.run({k: v[:1] for k, v in feeds.items()})            # another batch: new buffers
    assert one.shape == (1, 3, 320, 320) and sorted(session.buffers) == [1, 2]
    again = session.run(feeds)
    assert not np.shares_memory(out, again) and np.array_equal(out, again)
    with pytest.raises(InputError, match="must be float32"):
        session.run({**feeds, "audio": feeds["audio"].astype(np.float16)})
    assert session.describe()["io_binding"] == "cpu"


def test_fp16_model_keeps_fp32_io_and_runs(generator_info, feeds, ort_out, tmp_path):
    path = fp16_model(generator_info, cache=tmp_path)
    assert fp16_model(generator_info, cache=tmp_path) == path            # cached
    model = onnx.load(str(path))
    types = {i.name: i.data_type for i in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types.values()
    resize_scales = {n.input[2] for n in model.graph.node if n.op_type == "Resize"}
    assert all(types[s] == onnx.TensorProto.FLOAT for s in resize_scales)
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
               for v in [*model.graph.input, *model.graph.output])
    out = open_session(inspect(path, expect="generator"), backend="ort", threads=2).run(feeds)
    assert out.dtype == np.float32 and out.shape == ort_out.shape
    # fp16 rounding on the (deliberately sensitive) synthetic model: about one grey level on average
    assert np.abs(out - ort_out).max() < 0.08 and np.abs(out - ort_out).mean() < 5e-3


def test_tensorrt_options(generator_info, tmp_path):
    providers = provider_options("tensorrt", generator_info, "fp16", cache=tmp_path)
    (name, trt), (cuda, _), cpu = providers
    assert (name, cuda, cpu) == ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    assert trt["trt_fp16_enable"] is True and trt["trt_engine_cache_enable"] is True
    assert trt["trt_engine_cache_path"].startswith(str(tmp_path))
    lo, opt, hi = TRT_BATCHES
    assert trt["trt_profile_min_shapes"] == f"input:{lo}x6x320x320,audio:{lo}x32x16x16"
    assert trt["trt_profile_max_shapes"] == f"input:{hi}x6x320x320,audio:{hi}x32x16x16"
    assert provider_options("tensorrt", generator_info, "fp32", cache=tmp_path)[0][1]["trt_fp16_enable"] is False
    assert [p if isinstance(p, str) else p[0] for p in provider_options("cuda", generator_info, "fp16")] == \
        ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_ort_gpu_missing_is_a_clear_error(generator_info):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")        # only on a GPU machine
    for backend in ("cuda", "tensorrt"):
        with pytest.raises(InputError, match=r"needs onnxruntime-gpu.*pip install 'fastgen\[gpu\]'"):
            open_session(generator_info, backend=backend, precision="fp16")


def test_int8_needs_a_quantized_model(generator_info):
    for backend in ("ort", "openvino"):
        with pytest.raises(ModelError, match="int8 runs a copy of the model quantized on the avatar"):
            open_session(generator_info, backend=backend, precision="int8")


# ---- selection on a GPU machine --------------------------------------------------------------

def test_auto_on_a_gpu_prefers_fp16_then_bf16_with_an_fp32_fallback_on_the_gpu():
    c = choose("auto", "auto", flags=ZEN4, available={"ort", "openvino", "torch"}, gpu=True)
    assert (c.backend, c.precision) == ("torch", "fp32")
    assert c.candidates == (("torch", "fp16"), ("torch", "bf16"))
    c = choose("auto", "auto", flags=ZEN4, available={"ort", "cuda", "tensorrt"}, gpu=True)
    assert (c.backend, c.precision) == ("cuda", "fp32")                  # no TensorRT build for fp32
    assert c.candidates == (("tensorrt", "fp16"), ("cuda", "fp16"))
    c = choose("auto", "fp32", available={"ort", "torch"}, gpu=True)
    assert (c.backend, c.precision, c.candidates) == ("torch", "fp32", ())
    # a GPU without a GPU backend: the CPU path, and the reason says what to install
    c = choose("auto", "auto", flags=ZEN4, available={"ort", "openvino"}, gpu=True)
    assert c.candidate == ("openvino", "bf16")
    c = choose("auto", "auto", flags={"avx2"}, available={"ort"}, gpu=True)
    assert (c.backend, c.precision) == ("ort", "fp32") and "fastgen[torch]" in c.reason
    # no GPU: torch installed changes nothing
    c = choose("auto", "auto", flags={"avx2"}, available={"ort", "torch"}, gpu=False)
    assert (c.backend, c.precision, c.candidates) == ("ort", "fp32", ())


def test_requested_gpu_settings():
    assert choose("torch", "auto", available={"ort", "torch"}, gpu=True) == Choice("torch", "fp16", "requested")
    assert choose("pytorch", "auto", available={"ort", "torch"}, gpu=False).precision == "fp32"
    assert choose("tensorrt", "auto", available={"ort", "tensorrt"}, gpu=True).precision == "fp16"
    missing = choose("cuda", "fp16", available={"ort"}, gpu=False)
    assert (missing.backend, missing.precision) == ("ort", "fp32") and "fastgen[gpu]" in missing.reason
    with pytest.raises(InputError, match="--precision int8 is not available with --backend torch"):
        choose("torch", "int8", available={"ort", "torch"})
    assert choose("auto", "int8", available={"ort", "openvino"}) .backend == "openvino"
    with pytest.raises(InputError, match="--precision must be one of"):
        choose("auto", "fp8")


def test_gpu_present_reads_the_driver_paths(tmp_path):
    gpus = tmp_path / "gpus"
    gpus.mkdir()
    assert not gpu_present([str(tmp_path / "nvidiactl"), str(gpus)])
    (gpus / "0000:01:00.0").mkdir()
    assert gpu_present([str(tmp_path / "nvidiactl"), str(gpus)])
    (tmp_path / "nvidiactl").touch()
    assert gpu_present([str(tmp_path / "nvidiactl")])


class FakeSession:
    def __init__(self, info, backend, precision):
        self.info, self.backend, self.precision, self.threads = info, backend, precision, 1

    def run(self, feeds):
        return np.zeros((len(feeds["input"]), 3, 320, 320), np.float32)

    def describe(self):
        return {"device": "fake"}


def test_candidates_in_order_with_cached_failures_never_opened(generator_info, monkeypatch, caplog):
    opened = []
    for name in ("ort", "torch"):
        def opener(info, _name=name, precision="fp32", **_):
            opened.append(f"{_name}-{precision}")
            return FakeSession(info, _name, precision)

        monkeypatch.setitem(BACKENDS, name, opener)

    class Check:
        def cached(self, info, setting):
            return {"faithful": False, "psnr_db": 20.0, "min_frame_psnr_db": 18.0,
                    "p99_face_levels": 30.0} if setting == "torch-fp16" else None

        def __call__(self, reference, candidate):
            assert (reference.backend, reference.precision) == ("ort", "fp32")   # always vs ORT fp32
            return {"faithful": True, "psnr_db": 45.0, "min_frame_psnr_db": 41.0, "p99_face_levels": 1.0}

    choice = Choice("torch", "fp32", "auto", candidates=(("torch", "fp16"), ("torch", "bf16")))
    sessions, chosen, verdict = open_chosen(generator_info, choice, sessions=2, threads=1, check=Check())
    assert (chosen.backend, chosen.precision) == ("torch", "bf16") and "faithful" in chosen.reason
    assert "torch-fp16" not in opened                 # known to fail: not even built
    assert opened.count("ort-fp32") == 1              # the reference for the check
    assert [s.precision for s in sessions] == ["bf16", "bf16"]


def test_no_faithful_candidate_keeps_the_fallback_and_says_why(generator_info, monkeypatch):
    monkeypatch.setitem(BACKENDS, "torch", lambda info, precision="fp32", **_: FakeSession(info, "torch", precision))
    bad = {"faithful": False, "psnr_db": 30.0, "min_frame_psnr_db": 25.0, "p99_face_levels": 9.0}
    choice = Choice("torch", "fp32", "auto", candidates=(("torch", "fp16"),))
    sessions, chosen, verdict = open_chosen(generator_info, choice, sessions=1, threads=1,
                                            check=lambda ref, cand: bad)
    assert (chosen.backend, chosen.precision) == ("torch", "fp32") and "PSNR 30.0 dB" in chosen.reason
    assert verdict is bad and sessions[0].precision == "fp32"


def test_a_missing_gpu_backend_falls_back_with_one_warning(generator_info, monkeypatch, caplog):
    hide_module(monkeypatch, "torch")
    with caplog.at_level(logging.WARNING, logger="fastgen"):
        sessions, chosen, _ = open_chosen(generator_info, Choice("torch", "fp16", "requested"),
                                          sessions=1, threads=1, check=lambda a, b: {})
    assert (chosen.backend, sessions[0].backend) == ("ort", "ort")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "fastgen[torch]" in warnings[0]


# ---- batch calibration ----------------------------------------------------------------------

def test_batches_worth_measuring():
    assert calibration.batches_to_try("ort", ZEN4, True) == (1,)
    assert calibration.batches_to_try("openvino", {"amx_bf16"}, True) == calibration.AMX_BATCHES
    assert calibration.batches_to_try("torch", set(), True) == calibration.GPU_BATCHES
    assert calibration.batches_to_try("torch", set(), False) == (1,)
    assert calibration.pick({1: 100.0, 4: 150.0, 8: 156.0, 16: 157.0}) == 4      # within 5 % of the best
    assert calibration.pick({1: 10.0, 4: 9.0}) == 1


def test_calibration_is_measured_once_and_cached(generator_info, monkeypatch, tmp_path):
    monkeypatch.setenv("FASTGEN_CACHE", str(tmp_path))
    measured = []
    fake_fps = {1: 10.0, 4: 30.0, 8: 31.0}

    def fake_measure(session, inputs, audio, batches, seconds=1.0):
        measured.append(tuple(batches))
        return {b: fake_fps[b] for b in batches}

    monkeypatch.setattr(calibration, "measure", fake_measure)
    session = FakeSession(generator_info, "torch", "fp16")
    inputs, audio = generator_inputs(np.random.default_rng(0), 2, "ave")
    batch, facts = calibration.calibrated_batch(session, inputs, audio, (1, 4, 8))
    assert batch == 4 and facts["cached"] is False and facts["fps"] == {"1": 10.0, "4": 30.0, "8": 31.0}
    batch, facts = calibration.calibrated_batch(session, inputs, audio, (1, 4, 8))
    assert batch == 4 and facts["cached"] is True and measured == [(1, 4, 8)]     # measured once
    assert calibration.calibrated_batch(session, inputs, audio, (1,)) == (1, None)


def test_measure_runs_each_batch(generator_info):
    calls = []

    class Counting(FakeSession):
        def run(self, feeds):
            calls.append(feeds["input"].shape[0])
            return super().run(feeds)

    inputs, audio = generator_inputs(np.random.default_rng(0), 3, "ave")
    fps = calibration.measure(Counting(generator_info, "torch", "fp16"), inputs, audio, (1, 4), seconds=0.01)
    assert set(fps) == {1, 4} and all(v > 0 for v in fps.values()) and {1, 4} <= set(calls)


def test_a_faithful_candidate_that_is_not_faster_is_not_taken(generator_info, monkeypatch):
    monkeypatch.setitem(BACKENDS, "openvino", lambda info, precision="fp32", **_: FakeSession(info, "openvino", precision))
    monkeypatch.setitem(BACKENDS, "ort", lambda info, precision="fp32", **_: FakeSession(info, "ort", precision))
    good = {"faithful": True, "psnr_db": 53.8, "min_frame_psnr_db": 53.6, "p99_face_levels": 1.7}
    slower = {"faster": False, "speedup": 0.77, "fallback": "ort-fp32"}
    choice = Choice("ort", "fp32", "auto", candidates=(("openvino", "bf16"), ("openvino", "fp16")))
    races = []

    def race(fallback, candidate):
        races.append(candidate.precision)
        return slower if candidate.precision == "bf16" else {"faster": True, "speedup": 1.2, "fallback": "ort-fp32"}

    sessions, chosen, _ = open_chosen(generator_info, choice, sessions=1, threads=1,
                                      check=lambda ref, cand: good, race=race)
    assert (chosen.backend, chosen.precision) == ("openvino", "fp16") and races == ["bf16", "fp16"]
    assert "1.2x ort-fp32" in chosen.reason


def test_race_times_both_and_caches_the_answer(generator_info, monkeypatch, tmp_path):
    import time

    monkeypatch.setenv("FASTGEN_CACHE", str(tmp_path))

    class Slow(FakeSession):
        def __init__(self, info, backend, precision, delay):
            super().__init__(info, backend, precision)
            self.delay = delay

        def run(self, feeds):
            time.sleep(self.delay)
            return super().run(feeds)

    inputs, audio = generator_inputs(np.random.default_rng(0), 2, "ave")
    race = calibration.Race(lambda: (inputs, audio), seconds=0.05)
    fallback = Slow(generator_info, "ort", "fp32", 0.004)
    fast = Slow(generator_info, "openvino", "fp16", 0.001)
    assert race.cached(generator_info, "openvino-fp16", fallback) is None
    result = race(fallback, fast)
    assert result["faster"] and result["speedup"] > 1.5 and result["cached"] is False
    again = race.cached(generator_info, "openvino-fp16", fallback)
    assert again["cached"] and again["speedup"] == result["speedup"]
    slow = Slow(generator_info, "openvino", "bf16", 0.008)
    assert not race(fallback, slow)["faster"]


def test_a_requested_backend_that_is_not_installed_warns_once(generator_info, caplog):
    choice = choose("cuda", "fp16", available={"ort"}, gpu=False)
    with caplog.at_level(logging.WARNING, logger="fastgen"):
        sessions, chosen, _ = open_chosen(generator_info, choice, sessions=1, threads=1, check=lambda a, b: {})
    assert (chosen.backend, sessions[0].backend) == ("ort", "ort")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["the cuda backend is not installed (pip install 'fastgen[gpu]'); falling back to ort fp32"]
