"""Backends behind the inference seam: selection, fallbacks, OpenVINO against ONNX Runtime.

Selection is tested with the CPU flags and the installed backends faked; the OpenVINO sessions
are real (the ``openvino`` package is a test dependency).
"""
from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest

from fastgen import Generator, InputError, ModelError
from fastgen.runtime import BACKENDS, open_session
from fastgen.runtime import choice as choice_mod
from fastgen.runtime.choice import Choice, choose, cpu_flags, native_bf16, open_chosen
from fastgen.runtime.fidelity import compare, faithful

ZEN4 = {"avx2", "avx512f", "avx512_bf16"}
SAPPHIRE = {"avx2", "avx512f", "amx_bf16", "amx_int8"}
AVX2 = {"avx2", "fma"}


def test_auto_picks_bf16_only_where_it_is_native_and_installed():
    for flags, flag in ((ZEN4, "avx512_bf16"), (SAPPHIRE, "amx_bf16")):
        c = choose("auto", "auto", flags=flags, available={"ort", "openvino"})
        assert (c.backend, c.precision, c.candidate) == ("ort", "fp32", ("openvino", "bf16"))
        assert flag in c.reason and native_bf16(flags) == flag
    c = choose("auto", "auto", flags=AVX2, available={"ort", "openvino"})
    assert (c.backend, c.precision, c.candidate) == ("ort", "fp32", None) and "no native bf16" in c.reason
    c = choose("auto", "auto", flags=ZEN4, available={"ort"})
    assert c.candidate is None and "OpenVINO is not installed" in c.reason
    assert choose("auto", "fp32", flags=ZEN4, available={"ort", "openvino"}).candidate is None


def test_requested_settings_and_their_fallbacks():
    assert choose("openvino", "auto", flags=ZEN4, available={"ort", "openvino"}) == \
        Choice("openvino", "bf16", "requested")
    assert choose("openvino", "auto", flags=AVX2, available={"ort", "openvino"}).precision == "fp32"
    slow = choose("openvino", "bf16", flags=AVX2, available={"ort", "openvino"})
    assert slow.precision == "bf16" and "emulates" in slow.reason
    missing = choose("openvino", "bf16", flags=ZEN4, available={"ort"})
    assert (missing.backend, missing.precision) == ("ort", "fp32")
    assert "pip install 'fastgen[openvino]'" in missing.reason
    assert choose("onnxruntime", "fp32", available={"ort"}).backend == "ort"
    with pytest.raises(InputError, match="--precision bf16 is not available with --backend ort"):
        choose("ort", "bf16", flags=ZEN4, available={"ort"})
    with pytest.raises(InputError, match="--backend must be one of"):
        choose("tpu", "auto")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(str(fake)) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_a_failing_backend_falls_back_with_one_warning(generator_info, monkeypatch, caplog):
    def broken(info, **_):
        raise ModelError(f"{info.path}: OpenVINO cannot compile the model (simulated)")

    monkeypatch.setitem(BACKENDS, "openvino", broken)
    with caplog.at_level(logging.WARNING, logger="fastgen"):
        sessions, chosen, verdict = open_chosen(generator_info, Choice("openvino", "bf16", "requested"),
                                                sessions=2, threads=1, check=lambda a, b: {})
    assert [s.backend for s in sessions] == ["ort", "ort"] and chosen.backend == "ort"
    assert "simulated" in chosen.reason and verdict is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "falling back to ort fp32" in warnings[0] and "simulated" in warnings[0]


def test_a_missing_extra_is_a_clear_error(generator_info, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_openvino(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and (name == "openvino" or name.startswith("openvino.")):
            raise ImportError("No module named 'openvino'")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    with pytest.raises(InputError, match=r"pip install 'fastgen\[openvino\]'"):
        open_session(generator_info, backend="openvino", precision="bf16")


def test_openvino_fp32_equals_ort(generator_info, feeds):
    ort_out = open_session(generator_info, backend="ort", threads=2).run(feeds)
    session = open_session(generator_info, backend="openvino", precision="fp32", threads=2)
    ov_out = session.run(feeds)
    assert ov_out.shape == ort_out.shape == (2, 3, 320, 320) and ov_out.dtype == np.float32
    assert np.abs(ov_out - ort_out).max() <= 1e-4
    facts = session.describe()
    assert facts["backend"] == "openvino" and facts["precision"] == "fp32" and "bf16" not in facts["runtime_precision"]


def test_openvino_bf16_runs_in_bf16_with_output_in_range(generator_info, feeds):
    session = open_session(generator_info, backend="openvino", precision="bf16", threads=2)
    out = session.run(feeds)
    assert out.shape == (2, 3, 320, 320) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    assert session.describe()["runtime_precision"].get("bf16", 0) > 0   # OpenVINO's own report
    again = session.run(feeds)
    assert not np.shares_memory(out, again)          # each run returns its own array


def test_fidelity_figures_and_the_bar():
    rng = np.random.default_rng(0)
    ref = rng.random((4, 3, 320, 320), dtype=np.float32)
    same = compare(ref, ref)
    assert same["psnr_db"] == 99.0 and same["max_levels"] == 0 and faithful(same)
    noisy = np.clip(ref + rng.normal(0, 2 / 255, ref.shape), 0, 1).astype(np.float32)   # ~2 levels rms
    figures = compare(ref, noisy)
    assert 40 < figures["psnr_db"] < 43 and not faithful(figures)     # p99 of |N(0, 2)| is ~5 levels
    one_bad = ref.copy()
    one_bad[0] = 1 - one_bad[0]
    assert compare(ref, one_bad)["min_frame_psnr_db"] < 10


def test_auto_keeps_fp32_for_weights_bf16_does_not_suit(demo_cache):
    """The known-answer demo generator is hostile to bf16 by construction: auto must see that."""
    from fastgen import demo

    avatar = demo.avatar(cache_dir=demo_cache)
    gen = Generator(avatar, backend="auto", precision="auto", threads=2)
    assert (gen.choice.backend, gen.choice.precision) == ("ort", "fp32")
    if native_bf16(cpu_flags()):
        assert "not faithful" in gen.choice.reason and gen.fidelity["faithful"] is False
        assert gen.fidelity["psnr_db"] < 40
    else:
        assert "no native bf16" in gen.choice.reason


def test_cli_renders_the_demo_with_openvino_bf16(demo_cache, tmp_path):
    env = {"FASTGEN_CACHE": str(demo_cache), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "fastgen", "run", "--backend", "openvino", "--precision",
                           "bf16", "--frames", "3", "-o", str(tmp_path / "f")], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "fastgen: backend openvino bf16 (requested" in proc.stderr
    assert "not faithful" in proc.stderr                # the measured PSNR is stated
    assert len(list((tmp_path / "f").iterdir())) == 3


def test_auto_tries_openvino_fp16_where_the_cpu_has_it():
    xeon = {"avx2", "avx512f", "avx512_bf16", "avx512_fp16"}
    c = choose("auto", "auto", flags=xeon, available={"ort", "openvino"}, gpu=False)
    assert c.candidates == (("openvino", "bf16"), ("openvino", "fp16")) and "avx512_fp16" in c.reason
    c = choose("auto", "fp16", flags=xeon, available={"ort", "openvino"}, gpu=False)
    assert c.candidates == (("openvino", "fp16"),)
    c = choose("auto", "fp16", flags=ZEN4, available={"ort", "openvino"}, gpu=False)
    assert (c.backend, c.candidates) == ("ort", ()) and "no native fp16" in c.reason


def test_openvino_fp16_runs_in_fp16(generator_info, feeds):
    session = open_session(generator_info, backend="openvino", precision="fp16", threads=2)
    out = session.run(feeds)
    assert out.shape == (2, 3, 320, 320) and np.isfinite(out).all() and 0 <= out.min() <= out.max() <= 1
    if choice_mod.native_fp16(cpu_flags()):       # elsewhere OpenVINO may run it in f32
        assert session.describe()["runtime_precision"].get("f16", 0) > 0


CTRL_C_AFTER_OPENVINO = """
import os, signal, sys, time
import numpy as np
from fastgen.runtime import open_session
from fastgen.runtime.signal_stack import ROOMY_BYTES, SS_DISABLE, current
from fastgen.models import inspect
info = inspect(sys.argv[1], expect="generator")
x = np.random.default_rng(0).random((1, 6, 320, 320), dtype=np.float32)
a = np.zeros((1, *info.inputs["audio"]), np.float32)
sessions = [open_session(info, backend="openvino", precision=p, threads=2) for p in ("bf16", "fp16", "fp32")]
for s in sessions:                          # kept open, as a Generator keeps its sessions
    s.run({"input": x, "audio": a})
flags, size = current()
assert flags & SS_DISABLE or size >= ROOMY_BYTES, (flags, size)
signal.signal(signal.SIGINT, signal.default_int_handler)
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
except KeyboardInterrupt:
    print("interrupted cleanly")
"""


def test_ctrl_c_after_openvino_stops_the_process_cleanly(generator_info):
    """OpenVINO leaves the compiling thread a ~20 KB alternate signal stack; with AMX state in the
    signal frame a Ctrl-C then died with SIGSEGV (2-core Xeon with AMX).  The backend gives the
    thread a roomy one: checked directly (where OpenVINO installs a stack at all), and end to end
    in a fresh process (where the CPU has AMX this crashed before the fix)."""
    res = subprocess.run([sys.executable, "-c", CTRL_C_AFTER_OPENVINO, str(generator_info.path)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "interrupted cleanly" in res.stdout, (res.returncode, res.stderr[-2000:])
