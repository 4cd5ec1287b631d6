"""Kernel benchmark: each fastgen kernel next to the library formulation users trust for it.

    python bench/kernels.py [--audio talk.wav] [--repeats 15] [--only resize,composite] [--json]

Times are min / median over repeats of one call (ms).  ``ratio`` = reference min / fastgen min.
``scaling_2t`` = time for 2k calls on one thread / time for the same 2k calls split over two
threads; near 2.0 means the kernel really runs without the GIL.  OpenCV is pinned to one thread
(cv2.setNumThreads(1)) so that one call compares to one call.  Targets (issue 2): log_mel >= 5x
librosa; to_generator_input and from_generator_output <= 0.5 ms; scaling >= 1.7.  Issue 15: the
resize (fast path) and both composite modes at least as fast as OpenCV (ratio >= 1.0) with parity
``parity_max_diff`` <= 1 grey level against the OpenCV formulation.

Resize and composite rows, all from the same 328x328 crop into a 1280x720 frame:
  resize_bicubic[_300]      fast path 328 -> 182 (300) vs cv2.resize INTER_CUBIC;
  resize_bicubic_exact      the IPP emulation (template crops), for information: no target;
  composite_patch           hard paste into a 182 box vs cv2.resize + numpy slice assignment;
  composite_patch_300       the same into a 300 box;
  composite_patch_feather8  feathered (8 px) vs cv2.resize + the same numpy hard paste (OpenCV has
                            no fused feathered paste; the hard paste is the faster, stricter bar).
                            ``blend_reference_min_ms`` / ``ratio_vs_blend`` also time
                            cv2.resize + cv2.blendLinear with precomputed float weight maps.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import threading
import time
from typing import Callable

import cv2
import librosa
import numpy as np
import scipy.signal

from fastgen import audio, image
from fastgen._ext.image import resize_build

TARGETS = {"log_mel": ("ratio", ">=", 5.0), "to_generator_input": ("fastgen_min_ms", "<=", 0.5),
           "from_generator_output": ("fastgen_min_ms", "<=", 0.5),
           "resize_bicubic": ("ratio", ">=", 1.0), "resize_bicubic_300": ("ratio", ">=", 1.0),
           "composite_patch": ("ratio", ">=", 1.0), "composite_patch_300": ("ratio", ">=", 1.0),
           "composite_patch_feather8": ("ratio", ">=", 1.0)}
PARITY_LEVELS = 1   # max |fastgen - OpenCV formulation| in grey levels, resize and composite rows


def timeit(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    fn()  # warm-up: caches, plans, page faults
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3, statistics.median(times) * 1e3


def scaling(make: Callable[[], Callable[[], object]], calls: int) -> float:
    """Same total work on one thread and on two; best of 3 of each.

    ``make()`` returns a call with its *own* output buffers, as independent callers have: two
    threads writing one buffer would measure cache-line ping-pong, not the GIL.
    """
    def run(nthreads: int) -> float:
        per = calls // nthreads
        fns = [make() for _ in range(nthreads)]
        for fn in fns:
            fn()

        def body(fn):
            for _ in range(per):
                fn()
        threads = [threading.Thread(target=body, args=(fn,)) for fn in fns]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return time.perf_counter() - t
    one = min(run(1) for _ in range(3))
    two = min(run(2) for _ in range(3))
    return one / two


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--audio", help="speech file (default: 45 s of synthetic speech-like audio)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--only", default="", help="comma-separated name prefixes of the kernels to run")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)

    if args.audio:
        wav = audio.load_audio(args.audio)
        source = args.audio
    else:
        sys.path.insert(0, "tests")
        from references import speech_like   # tests/references.py (plain reference code)
        wav, source = speech_like(45.0), "synthetic speech-like, 45 s"
    basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)

    def librosa_log_mel():
        y = scipy.signal.lfilter([1, -0.97], [1], wav)
        d = librosa.stft(y=y, n_fft=800, hop_length=200, win_length=800)
        s = 20 * np.log10(np.maximum(1e-5, np.dot(basis, np.abs(d)))) - 20
        return np.clip(8 * (s + 100) / 100 - 4, -4, 4).T

    crop = rng.integers(0, 256, (328, 328, 3), dtype=np.uint8)
    roi = crop[4:324, 4:324]
    batch = np.empty((4, 6, 320, 320), np.float32)
    pred = rng.random((3, 320, 320), dtype=np.float32)
    frame = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    box = (549, 270, 731, 452)   # a 182-pixel box in a 1280x720 frame
    x0, y0, x1, y1 = box
    box300 = (490, 210, 790, 510)
    feather = 8

    def numpy_input():
        masked = roi.copy()
        masked[5:310, 5:315] = 0
        batch[1] = np.concatenate([roi, masked], axis=2).transpose(2, 0, 1).astype(np.float32) / 255.0

    def numpy_output():
        crop[4:324, 4:324] = (pred.transpose(1, 2, 0) * 255).astype(np.uint8)

    def opencv_composite(f=frame, b=box):
        f[b[1]:b[3], b[0]:b[2]] = cv2.resize(crop, (b[2] - b[0], b[3] - b[1]), interpolation=cv2.INTER_CUBIC)
        return f

    # the feathered blend's weights as OpenCV's blendLinear takes them (computed once, untimed)
    def ramp(n):
        d = np.minimum(np.arange(n), n - 1 - np.arange(n)) + 1
        return np.where(d > feather, 256, d * 256 // (feather + 1))
    alpha = ((ramp(y1 - y0)[:, None] * ramp(x1 - x0)[None, :] + 128) >> 8).astype(np.float32) / 256
    beta = 1 - alpha

    def opencv_blend(f=frame):
        patch = cv2.resize(crop, (x1 - x0, y1 - y0), interpolation=cv2.INTER_CUBIC)
        f[y0:y1, x0:x1] = cv2.blendLinear(patch, f[y0:y1, x0:x1], alpha, beta)
        return f

    def parity(ours: Callable[[np.ndarray], np.ndarray], ref: Callable[[np.ndarray], np.ndarray]) -> int:
        """Max grey-level difference of the two formulations on the same fresh frame."""
        a, b = ours(frame.copy()).astype(int), ref(frame.copy()).astype(int)
        return int(np.abs(a - b).max())

    def cv2_resize(n):
        return lambda _f=None: cv2.resize(crop, (n, n), interpolation=cv2.INTER_CUBIC)

    def own_buffers(kernel: str) -> Callable[[], object]:
        """A call of ``kernel`` on private copies of the inputs and outputs."""
        c, b, p, f = crop.copy(), np.empty_like(batch), pred.copy(), frame.copy()
        return {
            "log_mel": lambda: audio.log_mel(wav),
            "to_generator_input": lambda: image.to_generator_input(c[4:324, 4:324], b[1]),
            "from_generator_output": lambda: image.from_generator_output(p, c[4:324, 4:324]),
            "resize_bicubic": lambda: image.resize_bicubic(c, 182, 182),
            "resize_bicubic_300": lambda: image.resize_bicubic(c, 300, 300),
            "resize_bicubic_exact": lambda: image.resize_bicubic(c, 182, 182, exact=True),
            "composite_patch": lambda: image.composite_patch(f, c, box),
            "composite_patch_300": lambda: image.composite_patch(f, c, box300),
            "composite_patch_feather8": lambda: image.composite_patch(f, c, box, feather=feather),
        }[kernel]

    cases = {
        "log_mel": (lambda: audio.log_mel(wav), librosa_log_mel, "librosa+scipy (docs/semantics.md §1)", 60),
        "to_generator_input": (lambda: image.to_generator_input(roi, batch[1]), numpy_input,
                               "numpy", 2000),
        "from_generator_output": (lambda: image.from_generator_output(pred, crop[4:324, 4:324]),
                                  numpy_output, "numpy", 2000),
        "resize_bicubic": (lambda: image.resize_bicubic(crop, 182, 182), cv2_resize(182),
                           "cv2.resize INTER_CUBIC (1 thread)", 400),
        "resize_bicubic_300": (lambda: image.resize_bicubic(crop, 300, 300), cv2_resize(300),
                               "cv2.resize INTER_CUBIC (1 thread)", 400),
        "resize_bicubic_exact": (lambda: image.resize_bicubic(crop, 182, 182, exact=True), cv2_resize(182),
                                 "cv2.resize INTER_CUBIC (1 thread)", 200),
        "composite_patch": (lambda: image.composite_patch(frame, crop, box), opencv_composite,
                            "cv2.resize + numpy paste", 400),
        "composite_patch_300": (lambda: image.composite_patch(frame, crop, box300),
                                lambda: opencv_composite(b=box300), "cv2.resize + numpy paste", 400),
        "composite_patch_feather8": (lambda: image.composite_patch(frame, crop, box, feather=feather),
                                     opencv_composite, "cv2.resize + numpy paste (hard)", 400),
    }
    # the same output from fastgen and from the OpenCV formulation, for parity_max_diff
    same_output = {
        "resize_bicubic": (lambda _f: image.resize_bicubic(crop, 182, 182), cv2_resize(182)),
        "resize_bicubic_300": (lambda _f: image.resize_bicubic(crop, 300, 300), cv2_resize(300)),
        "resize_bicubic_exact": (lambda _f: image.resize_bicubic(crop, 182, 182, exact=True), cv2_resize(182)),
        "composite_patch": (lambda f: image.composite_patch(f, crop, box), lambda f: opencv_composite(f)),
        "composite_patch_300": (lambda f: image.composite_patch(f, crop, box300),
                                lambda f: opencv_composite(f, box300)),
        "composite_patch_feather8": (lambda f: image.composite_patch(f, crop, box, feather=feather),
                                     lambda f: opencv_blend(f)),
    }
    results = {}
    only = [p for p in args.only.split(",") if p]
    for name, (ours, ref, ref_name, calls) in cases.items():
        if only and not any(name.startswith(p) for p in only):
            continue
        f_min, f_med = timeit(ours, args.repeats)
        r_min, r_med = timeit(ref, args.repeats)
        entry = {"fastgen_min_ms": round(f_min, 4), "fastgen_median_ms": round(f_med, 4),
                 "reference": ref_name, "reference_min_ms": round(r_min, 4),
                 "reference_median_ms": round(r_med, 4), "ratio": round(r_min / f_min, 2),
                 "scaling_2t": round(scaling(lambda: own_buffers(name), calls), 2)}
        if name in same_output:
            entry["parity_max_diff"] = parity(*same_output[name])
            entry["parity_met"] = entry["parity_max_diff"] <= PARITY_LEVELS
        if name == "composite_patch_feather8":
            b_min, b_med = timeit(opencv_blend, args.repeats)
            entry["blend_reference"] = "cv2.resize + cv2.blendLinear (precomputed float weights)"
            entry["blend_reference_min_ms"] = round(b_min, 4)
            entry["ratio_vs_blend"] = round(b_min / f_min, 2)
        if name in TARGETS:
            key, op, bound = TARGETS[name]
            value = entry[key]
            entry["target"] = f"{key} {op} {bound}"
            entry["target_met"] = bool(value >= bound if op == ">=" else value <= bound)
        entry["scaling_target_met"] = entry["scaling_2t"] >= 1.7
        results[name] = entry

    report = {"machine": {"cpu_count": __import__("os").cpu_count(), "python": platform.python_version(),
                          "numpy": np.__version__, "opencv": cv2.__version__, "librosa": librosa.__version__,
                          "resize_build": resize_build()},
              "audio": {"source": source, "seconds": round(len(wav) / 16000, 2)},
              "repeats": args.repeats, "kernels": results}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for name, e in results.items():
            print(f"{name:26s} fastgen {e['fastgen_min_ms']:8.3f} ms  {e['reference']:32s} "
                  f"{e['reference_min_ms']:8.3f} ms  ratio {e['ratio']:6.2f}  2-thread x{e['scaling_2t']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
