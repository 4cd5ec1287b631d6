"""Can an int8 generator be faithful to fp32?  Every int8 attempt in one process, one JSON object.

For each attempt: model-only ``fps`` (median of interleaved rounds, batch 1, ``--threads``),
``speedup_vs_ort_fp32`` and fidelity against ORT fp32 (``psnr_db``, ``min_frame_psnr_db``,
``p99_face_levels``, ``max_levels``, ``faithful``: fastgen.runtime.fidelity's bar).  ``ort-fp32``
and ``openvino-bf16`` are the yardsticks.  Calibration and evaluation use different frames: the
calibration picks come from the first half of the clip, the evaluation picks from the second.
Every attempt is calibrated on the same avatar's crops (per-avatar calibration, as the engine
does): there is no cross-avatar calibration here.

Attempts: ORT QDQ (MinMax, percentile, entropy; with and without the output head in float) on
ONNX Runtime and on OpenVINO (bf16 hint for the float rest); mixed precision from a measured
per-block sensitivity ranking (k blocks in float); NNCF post-training quantization on the
OpenVINO model (preset MIXED; with the ranking's blocks ignored; full bias correction);
``nncf.quantize_with_accuracy_control`` with the face PSNR against fp32 as the metric
(``--no-accuracy-control`` skips it).

    python bench/int8.py --generator /tmp/trained_generator.onnx [--calib 32 --eval 16 --rounds 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8",
         "amx_tile")


def cpu_facts() -> dict:
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"model": model, "flags": [f for f in FLAGS if f in flags]}


def split_inputs(gen, wav, calib: int, evaluate: int):
    """(calibration inputs, audio) from the clip's first half, (evaluation ...) from its second."""
    from fastgen.runtime.fidelity import avatar_inputs

    n = gen.frame_count(wav)
    half = n // 2
    order = gen.avatar.order(n)
    first = gen.feature_table(wav, start=0, count=half)
    second = gen.feature_table(wav, start=half, count=n - half)
    return (avatar_inputs(gen.step, first, order, gen.audio_shape, count=calib),
            avatar_inputs(gen.step, second, order, gen.audio_shape, count=evaluate))


class OvModel:
    """An OpenVINO model object (from NNCF) behind the session interface."""

    def __init__(self, model, threads: int, hint: str):
        import openvino as ov

        core = ov.Core()
        self.compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                          "INFERENCE_NUM_THREADS": threads,
                                                          "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(0)

    def run(self, feeds):
        return np.array(self.request.infer(dict(feeds))[self.output], dtype=np.float32, copy=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--generator", required=True, help="trained generator ONNX file")
    p.add_argument("--avatar", help="avatar pack or dataset (default: the demo avatar)")
    p.add_argument("--audio", default="/work/shared/data/talk_hb.wav", help="speech clip (wav)")
    p.add_argument("--calib", type=int, default=32, help="calibration frames (first half of the clip)")
    p.add_argument("--eval", type=int, default=16, help="evaluation frames (second half of the clip)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--frames", type=int, default=16, help="frames per timing round and setting")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ks", default="4,8,16", help="blocks kept in float for the mixed attempts")
    p.add_argument("--sensitivity-frames", type=int, default=8)
    p.add_argument("--no-accuracy-control", action="store_true")
    p.add_argument("--no-nncf", action="store_true")
    p.add_argument("--entropy", action="store_true", help="also ORT entropy ranges (identical to MinMax "
                   "with u8 activations in ORT 1.32)")
    p.add_argument("--max-drop", type=float, default=9.0, help="accuracy control: allowed drop of the "
                   "face PSNR from 60 dB (9: >= 51 dB on the calibration frames)")
    p.add_argument("-o", "--output", help="also write the JSON here")
    args = p.parse_args(argv)

    import logging

    from fastgen import Avatar, Generator, demo
    from fastgen.audio import load_audio
    from fastgen.runtime import open_session
    from fastgen.runtime import quantize as q
    from fastgen.benchmarks.backends import session_fps
    from fastgen.runtime.fidelity import FACE, compare, faithful, run_all

    logging.getLogger("nncf").setLevel(logging.ERROR)
    t_start = time.perf_counter()
    say = lambda msg: print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    avatar = Avatar.open(args.avatar) if args.avatar else demo.avatar()
    avatar = Avatar.open(avatar.path, generator=args.generator)
    gen = Generator(avatar, threads=args.threads)
    wav = load_audio(args.audio)
    (cx, ca), (ex, ea) = split_inputs(gen, wav, args.calib, args.eval)
    info = gen.generator_info
    threads = args.threads
    cache = Path(tempfile.mkdtemp(prefix="fastgen-int8-bench-"))

    sessions: dict = {}
    extra: dict = {}

    def add(key, session, **facts):
        sessions[key] = session
        extra[key] = facts

    def ov_int8(path):
        return open_session(path, backend="openvino", precision="int8", threads=threads)

    def ort_int8(path):
        return open_session(path, backend="ort", precision="int8", threads=threads)

    add("ort-fp32", gen.sessions[0])
    add("openvino-bf16", open_session(info, backend="openvino", precision="bf16", threads=threads))
    add("openvino-fp32", open_session(info, backend="openvino", precision="fp32", threads=threads))
    reference = run_all(sessions["ort-fp32"].run, ex, ea)

    def quantized(method, **kw):
        t = time.perf_counter()
        path = q.quantize_generator(info, cx, ca, method=method, cache=cache, **kw)
        return path, round(time.perf_counter() - t, 1)

    # a. ORT QDQ per-channel MinMax; the output head in float (fastgen's default) or not
    for head in (False, True):
        say(f"minmax, head {'float' if head else 'int8'}")
        path, secs = quantized("minmax", head=head)
        tag = "" if head else "-head-int8"
        add(f"qdq-minmax{tag}-ort", ort_int8(path), quantize_s=secs, method="minmax", head_float=head)
        add(f"qdq-minmax{tag}-openvino", ov_int8(path), quantize_s=secs, method="minmax", head_float=head)
    # b. percentile / entropy ranges
    for method in ("percentile", "entropy") if args.entropy else ("percentile",):
        say(method)
        try:      # histograms keep whole activations: calibrated on every 4th calibration frame
            t = time.perf_counter()
            path = q.quantize_generator(info, cx[::4], ca[::4], method=method, cache=cache)
            secs = round(time.perf_counter() - t, 1)
            add(f"qdq-{method}-openvino", ov_int8(path), quantize_s=secs, method=method,
                calibration_frames=len(cx[::4]))
            add(f"qdq-{method}-ort", ort_int8(path), quantize_s=secs, method=method, calibration_frames=len(cx[::4]))
        except Exception as exc:  # one failed attempt must not lose the others
            extra[f"qdq-{method}-openvino"] = {"error": str(exc).splitlines()[0]}
    # d. mixed precision from the measured per-block sensitivity
    say("sensitivity ranking (minmax, one block in float at a time)")
    t = time.perf_counter()
    ranking = q.sensitive_nodes(info, cx, ca, method="minmax", frames=args.sensitivity_frames, backend="openvino",
                                threads=threads, cache=cache)
    ranking_s = round(time.perf_counter() - t, 1)
    ks = [int(k) for k in args.ks.split(",") if k]
    for k in ks:
        say(f"mixed k={k}")
        path, secs = quantized("minmax", exclude=q.float_blocks(ranking, k))
        add(f"qdq-minmax-mixed{k}-openvino", ov_int8(path), quantize_s=secs, float_blocks=k,
            blocks=[s.group for s in ranking[:k]])
    # e. NNCF
    nncf_error = None
    if not args.no_nncf:
        try:
            import nncf
            import openvino as ov

            core = ov.Core()
            data = nncf.Dataset([{"input": cx[i:i + 1], "audio": ca[i:i + 1]} for i in range(len(cx))])

            def nncf_ov(key, **kw):
                say(key)
                t = time.perf_counter()
                model = nncf.quantize(core.read_model(str(info.path)), data, subset_size=len(cx),
                                      preset=nncf.QuantizationPreset.MIXED, **kw)
                add(key, OvModel(model, threads, "bf16"), quantize_s=round(time.perf_counter() - t, 1))
                return model

            nncf_ov("nncf-mixed-openvino")
            nncf_ov("nncf-mixed-biascorr-openvino", fast_bias_correction=False)
            for k in ks[-1:]:
                names = [n for n in q.float_blocks(ranking, k) if ".add" not in n]
                nncf_ov(f"nncf-mixed-ignore{k}-openvino",
                        ignored_scope=nncf.IgnoredScope(names=names, validate=False))
            if not args.no_accuracy_control:
                say("nncf accuracy control (metric: face PSNR vs fp32 on calibration frames)")
                vx, va = cx[1::4], ca[1::4]
                vref = run_all(sessions["ort-fp32"].run, vx, va)
                val = nncf.Dataset([{"input": vx[i:i + 1], "audio": va[i:i + 1]} for i in range(len(vx))])

                def metric(compiled, items):
                    req, out = compiled.create_infer_request(), compiled.output(0)
                    pred = np.concatenate([np.array(req.infer({"input": it["input"], "audio": it["audio"]})[out])
                                           for it in items])
                    d = (pred - vref[:len(pred)])[:, :, FACE[0], FACE[1]] * 255.0
                    return float(min(60.0, 10 * np.log10(255.0 ** 2 / max(float(np.mean(d ** 2)), 1e-12))))

                t = time.perf_counter()
                model = nncf.quantize_with_accuracy_control(
                    core.read_model(str(info.path)), data, val, validation_fn=metric, max_drop=args.max_drop,
                    drop_type=nncf.DropType.ABSOLUTE, preset=nncf.QuantizationPreset.MIXED, subset_size=len(cx))
                add("nncf-accuracy-control-openvino", OvModel(model, threads, "bf16"),
                    quantize_s=round(time.perf_counter() - t, 1), target=f"face PSNR >= {60 - args.max_drop:g} dB on {len(vx)} calibration frames")
        except ImportError as exc:
            nncf_error = f"nncf not installed ({exc})"
        except Exception as exc:
            nncf_error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"

    say(f"fidelity of {len(sessions)} settings on {len(ex)} held-out frames")
    figures = {key: compare(reference, run_all(s.run, ex, ea)) for key, s in sessions.items()}
    runs: dict = {key: [] for key in sessions}
    for key, s in sessions.items():
        session_fps(s, ex, ea, 2)                                   # warm-up
    for r in range(args.rounds):
        say(f"timing round {r + 1}/{args.rounds}")
        for key, s in sessions.items():
            runs[key].append(session_fps(s, ex, ea, args.frames))
    base = statistics.median(runs["ort-fp32"])
    attempts = {}
    for key in sessions:
        f = figures[key]
        fps = statistics.median(runs[key])
        attempts[key] = {"fps": round(fps, 2), "speedup_vs_ort_fp32": round(fps / base, 3),
                         "psnr_db": f["psnr_db"], "min_frame_psnr_db": f["min_frame_psnr_db"],
                         "p99_face_levels": f["p99_face_levels"], "max_levels": f["max_levels"],
                         "faithful": faithful(f), **extra.get(key, {})}
    for key, facts in extra.items():
        attempts.setdefault(key, facts)
    int8 = {k: v for k, v in attempts.items() if "fps" in v and k not in ("ort-fp32", "openvino-bf16", "openvino-fp32")}
    best = max(int8, key=lambda k: (int8[k]["faithful"], int8[k]["psnr_db"])) if int8 else None
    report = {
        "attempts": attempts,
        "best_int8": best, "any_int8_faithful": any(v["faithful"] for v in int8.values()),
        "sensitivity": [{"group": s.group, "gain_db": s.gain_db, "psnr_db": s.psnr_db} for s in ranking[:12]],
        "sensitivity_s": ranking_s, "sensitivity_blocks": len(ranking),
        "nncf_error": nncf_error,
        "cpu": cpu_facts(), "threads": threads, "rounds": args.rounds, "frames_per_round": args.frames,
        "calibration": f"{len(cx)} frames of the clip's first half, this avatar's own crops",
        "evaluation": f"{len(ex)} frames of the clip's second half",
        "generator": str(info.path), "generator_weights": info.weights,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
