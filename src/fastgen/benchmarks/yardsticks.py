"""What ``fastgen bench`` measures the pipeline against: the model alone, and plain loops.

- :class:`ModelOnly`: the generator on pre-built inputs, ``sessions`` side by side;
- :func:`straightforward_fps`: the SyncTalk_2D reference loop ported plainly to ONNX Runtime with
  OpenCV and NumPy (one session with ORT's defaults; per frame: decode the template, crop +
  resize, build the tensors, infer, paste back, encode the JPEG — sequentially);
- :func:`sequential_kernels_fps`: the same sequential loop on fastgen's kernels and feature table.

Everything here uses fastgen's public API only.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional

import numpy as np

from ..frame import fill_input, paste_output
from ..image import CROP_SIZE, ROI_OFFSET, ROI_SIZE, resize_bicubic
from ..runtime import default_threads, open_session
from ..timing import FEATURE_CONTEXT

Emit = Optional[Callable[[np.ndarray], None]]


class ModelOnly:
    """Generator-only throughput of the ``run`` callables side by side, each on its own thread."""

    def __init__(self, run_fns: list, batch: int, audio_shape: tuple):
        rng = np.random.default_rng(0)
        self.run_fns, self.batch = run_fns, batch
        self.feeds = {"input": rng.random((batch, 6, ROI_SIZE, ROI_SIZE), dtype=np.float32),
                      "audio": rng.standard_normal((batch, *audio_shape), dtype=np.float32)}
        for run in run_fns:
            run(self.feeds)                                    # warm-up

    def fps(self, frames: int) -> float:
        calls = max(1, frames // (self.batch * len(self.run_fns)))

        def loop(run):
            for _ in range(calls):
                run(self.feeds)

        workers = [threading.Thread(target=loop, args=(r,)) for r in self.run_fns]
        t = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return calls * self.batch * len(self.run_fns) / (time.perf_counter() - t)


def model_configs(gen) -> dict:
    """The model-only configurations to try: fastgen's sessions at batch 1 and 4, one
    single-thread session per core, and a session with ONNX Runtime's defaults."""
    info, cores, shape = gen.generator_info, default_threads(), gen.audio_shape

    def ours(threads: int, sessions: int = 1) -> list:
        return [open_session(info, threads=threads).run for _ in range(sessions)]

    configs = {f"sessions1_threads{cores}_batch1": ModelOnly(ours(cores), 1, shape)}
    if info.dynamic_batch:
        configs[f"sessions1_threads{cores}_batch4"] = ModelOnly(ours(cores), 4, shape)
    if cores > 1:
        configs[f"sessions{cores}_threads1_batch1"] = ModelOnly(ours(1, cores), 1, shape)
    configs["ort_defaults_batch1"] = ModelOnly([open_session(info, ort_defaults=True).run], 1, shape)
    return configs


def straightforward_fps(gen, wav: np.ndarray, frames: int, session, emit: Emit = None) -> float:
    """The reference loop ported plainly: OpenCV + NumPy + ``session`` (ORT's defaults).
    ``emit`` receives each frame instead of the JPEG encoder (for the tests)."""
    import cv2

    def encode(img):
        cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])

    emit = emit or encode
    av = gen.avatar
    lo, hi = ROI_OFFSET, ROI_OFFSET + ROI_SIZE
    t = time.perf_counter()
    table = gen.features(wav, count=frames)
    order = av.order(frames)
    for j in range(frames):
        k = order[j]
        img = cv2.imdecode(np.frombuffer(av.jpeg(k), np.uint8), cv2.IMREAD_COLOR)
        x0, y0, x1, y1 = av.box(k)
        crop = img[y0:y1, x0:x1]
        h, w = crop.shape[:2]
        crop328 = cv2.resize(crop, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_CUBIC)
        roi = crop328[lo:hi, lo:hi].copy()
        masked = cv2.rectangle(roi.copy(), (5, 5, 310, 305), (0, 0, 0), -1)
        x = np.concatenate([roi, masked], axis=2).transpose(2, 0, 1)[None].astype(np.float32) / 255.0
        window = np.zeros((2 * FEATURE_CONTEXT, table.shape[1]), np.float32)   # docs/semantics.md §3.3
        for r in range(2 * FEATURE_CONTEXT):
            if 0 <= j - FEATURE_CONTEXT + r < len(table):
                window[r] = table[j - FEATURE_CONTEXT + r]
        pred = session.run({"input": x, "audio": window.reshape(1, *gen.audio_shape)})[0]
        crop328[lo:hi, lo:hi] = (pred.transpose(1, 2, 0) * 255).astype(np.uint8)
        img[y0:y1, x0:x1] = cv2.resize(crop328, (w, h), interpolation=cv2.INTER_CUBIC)
        emit(img)
    return frames / (time.perf_counter() - t)


def sequential_kernels_fps(gen, wav: np.ndarray, frames: int, session, emit: Emit = None) -> float:
    """The same sequential loop on fastgen's kernels and feature table: per frame, decode the
    template JPEG, crop + resize to 328, infer (one session, all cores, batch 1), paste back,
    encode the JPEG — no caches, no overlap."""
    import simplejpeg

    def encode(frame):
        simplejpeg.encode_jpeg(frame, quality=95, colorspace="BGR", colorsubsampling="420")

    emit = emit or encode
    av = gen.avatar
    inp = np.empty((1, 6, ROI_SIZE, ROI_SIZE), np.float32)
    aud = np.empty((1, *gen.audio_shape), np.float32)
    t = time.perf_counter()
    table = gen.feature_table(wav, count=frames)
    order = av.order(frames)
    for j in range(frames):
        k = order[j]
        frame = simplejpeg.decode_jpeg(av.jpeg(k), colorspace="BGR")
        box = av.box(k)
        x0, y0, x1, y1 = box
        crop = resize_bicubic(frame[y0:y1, x0:x1], CROP_SIZE, CROP_SIZE, exact=True)  # as templates.py
        fill_input(crop, inp[0])
        table.window(j, aud[0])
        pred = session.run({"input": inp, "audio": aud})
        paste_output(pred[0], crop, frame, box, gen.step.feather)
        emit(frame)
    return frames / (time.perf_counter() - t)


def warm_up(session, audio_shape: tuple) -> None:
    """One untimed run: a session's first run sizes its memory arena."""
    session.run({"input": np.zeros((1, 6, ROI_SIZE, ROI_SIZE), np.float32),
                 "audio": np.zeros((1, *audio_shape), np.float32)})
