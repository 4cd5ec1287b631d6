"""The Generator: audio features -> talking-avatar frames, with inference overlapped by the rest.

Data flow (one direction)::

    audio -> log_mel -> mel_windows -> encoder (batched, only the windows needed) -> rows F
    frame j -> (template k = order[j], audio window F[j-8:j+8]) -> batch slot
    [infer thread]  to_generator_input into a reused (B,6,320,320) buffer, generator.run (no GIL)
    [workers]       from_generator_output -> composite_patch into a copy of frame k (-> encode)
    [caller]        results in order, from a bounded queue of futures

The infer thread never waits for post-processing unless the bounded queue is full, so memory is
flat however long the audio is.  Any stage's exception stops the run and is re-raised in the
caller; closing the iterator (or Ctrl-C) stops the threads promptly.
"""
from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np

from . import audio as _audio
from . import image as _image
from .errors import FastgenError, InputError, ModelError
from .runtime import OrtModel, default_threads, load_model

AudioLike = Union[str, "os.PathLike[str]", np.ndarray]
FEATURE_CONTEXT = 8           # feature rows on each side of a frame's window (SPEC 3.3)
ENCODER_BATCH = 64
BLENDS = {"hard": 0, "feather": 6}   # feather width in pixels of a 328-pixel crop


@dataclass
class EngineConfig:
    """Threads, batch and workers actually used, and why."""

    threads: int
    batch: int
    workers: int
    blend: str
    providers: list = field(default_factory=list)
    reason: str = ""

    def as_dict(self) -> dict:
        return {"threads": self.threads, "batch": self.batch, "workers": self.workers,
                "blend": self.blend, "providers": self.providers, "reason": self.reason}


def choose_config(cores: int, dynamic_batch: bool, *, threads=None, batch=None, workers=None) -> tuple:
    """The machine heuristic (measured on a 2-core EPYC, see the engine issue's note).

    One generator session gets every core as intra-op threads (ORT fills them far better than
    several single-thread sessions on few cores); batches of 4 gave ~15-25 % more frames/s than
    batch 1 when the model allows a batch axis; one post-processing worker per two cores is
    enough, because compositing + JPEG encoding are ~5 % of a frame's model time.
    """
    t = int(threads) if threads else cores
    b = int(batch) if batch else (4 if dynamic_batch else 1)
    w = int(workers) if workers else max(1, cores // 2)
    if t < 1 or b < 1 or w < 1:
        raise InputError(f"threads, batch and workers must be >= 1 (got {t}, {b}, {w})")
    if b > 1 and not dynamic_batch:
        raise InputError(f"this generator has a fixed batch of 1; batch={b} is not possible")
    return t, b, w


class Generator:
    """Renders an avatar speaking an audio clip.

    ``avatar`` is a :class:`fastgen.Avatar` or a path any :meth:`Avatar.open` accepts.
    ``blend="hard"`` pastes like the SyncTalk_2D reference; ``"feather"`` (default) ramps the
    patch edge so no box is visible.
    """

    def __init__(self, avatar, *, providers: Optional[Sequence[str]] = None,
                 threads: Optional[int] = None, batch: Optional[int] = None,
                 workers: Optional[int] = None, blend: str = "feather"):
        from .avatar import Avatar

        self.avatar = avatar if isinstance(avatar, Avatar) else Avatar.open(avatar)
        if blend not in BLENDS:
            raise InputError(f"blend must be one of {sorted(BLENDS)}, got {blend!r}")
        if self.avatar.generator_path is None or self.avatar.audio_encoder_path is None:
            raise ModelError(f"{getattr(self.avatar, 'path', 'avatar')}: no generator / audio "
                             "encoder model (pass generator= and audio_encoder= to Avatar.open)")
        cores = default_threads()
        # threads first: the session is built with them
        t = int(threads) if threads else cores
        self.model = load_model(self.avatar.generator_path, "generator", threads=t, providers=providers)
        t, b, w = choose_config(cores, self.model.info.dynamic_batch, threads=t, batch=batch, workers=workers)
        self.encoder = load_model(self.avatar.audio_encoder_path, "audio_encoder", threads=t,
                                  providers=providers)
        self.mode = self.model.info.mode
        self.audio_shape = tuple(self.model.info.inputs["audio"])
        self.config = EngineConfig(threads=t, batch=b, workers=w, blend=blend,
                                   providers=self.model.providers,
                                   reason="explicit" if (threads or batch or workers) else "heuristic")
        self.feather = BLENDS[blend]

    # ------------------------------------------------------------------ audio side

    @property
    def synthetic(self) -> bool:
        return bool(self.model.info.synthetic)

    def _wav(self, audio: AudioLike) -> np.ndarray:
        if isinstance(audio, np.ndarray):
            return audio
        return _audio.load_audio(audio)

    def encode_windows(self, windows: np.ndarray) -> np.ndarray:
        """Audio-encoder embeddings (n, 512) of mel windows (n, 1, 80, 16), a few batched calls."""
        step = ENCODER_BATCH if self.encoder.info.dynamic_batch else 1
        out = [self.encoder.run({"mel": windows[i:i + step]}) for i in range(0, len(windows), step)]
        return np.concatenate(out).reshape(len(windows), -1) if out else np.zeros((0, 512), np.float32)

    def features(self, audio: AudioLike, *, start: int = 0, count: Optional[int] = None) -> np.ndarray:
        """Feature rows F (N + 2, D) of SPEC 3.2: first and last encoder rows duplicated.

        ``audio`` is a path or a float32 16 kHz mono array; for hubert / wenet models a ``.npy`` of
        precomputed (N, D) features.  With ``start``/``count`` only the encoder windows that frames
        ``start .. start + count - 1`` need are computed; other rows are left zero.
        """
        if self.mode != "ave":
            return self._external_features(audio)
        mel = _audio.log_mel(self._wav(audio))
        windows = _audio.mel_windows(mel)
        n = len(windows)
        total = n + 2
        lo, hi = self._frame_range(total, start, count)
        # frame j reads rows j-8 .. j+7; row r holds window clamp(r - 1, 0, n - 1)
        rows_lo, rows_hi = max(0, lo - FEATURE_CONTEXT), min(total, hi + FEATURE_CONTEXT)
        w_lo, w_hi = max(0, rows_lo - 1), min(n, rows_hi)   # windows [w_lo, w_hi)
        emb = self.encode_windows(windows[w_lo:w_hi])
        feats = np.zeros((total, emb.shape[1]), np.float32)
        for r in range(rows_lo, rows_hi):
            feats[r] = emb[min(max(r - 1, 0), n - 1) - w_lo]
        return feats

    def _external_features(self, audio: AudioLike) -> np.ndarray:
        if isinstance(audio, np.ndarray):
            rows = audio
        else:
            p = Path(audio)
            if p.suffix.lower() != ".npy":
                raise InputError(f"{p}: a {self.mode} generator needs precomputed {self.mode} "
                                 "features as a .npy file")
            try:
                rows = np.load(p, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise InputError(f"{p}: cannot read features ({exc})") from None
        rows = np.asarray(rows, np.float32).reshape(len(rows), -1) if np.ndim(rows) else None
        per_row = int(np.prod(self.audio_shape)) // (2 * FEATURE_CONTEXT)
        if rows is None or rows.ndim != 2 or rows.shape[1] != per_row or len(rows) < 1:
            raise InputError(f"{self.mode} features must be (N, {per_row}), got "
                             f"{None if rows is None else rows.shape}")
        return np.concatenate([rows[:1], rows, rows[-1:]])

    @staticmethod
    def _frame_range(total: int, start: int, count: Optional[int]) -> tuple[int, int]:
        if start < 0:
            raise InputError(f"start must be >= 0, got {start}")
        hi = total if count is None else min(total, start + int(count))
        if count is not None and count < 0:
            raise InputError(f"count must be >= 0, got {count}")
        return min(start, total), max(hi, min(start, total))

    def audio_window(self, feats: np.ndarray, j: int, out: np.ndarray) -> None:
        """Frame j's audio tensor: rows F[j-8 : j+8], zero outside [0, len(F)) (SPEC 3.3)."""
        flat = out.reshape(2 * FEATURE_CONTEXT, -1)
        lo, hi = j - FEATURE_CONTEXT, j + FEATURE_CONTEXT
        a, b = max(lo, 0), min(hi, len(feats))
        flat[: a - lo] = 0
        flat[a - lo: b - lo] = feats[a:b]
        flat[b - lo:] = 0

    # ------------------------------------------------------------------ frames

    def frame_count(self, audio: AudioLike) -> int:
        """N + 2 for this audio (SPEC 3.2)."""
        if self.mode != "ave":
            return len(self._external_features(audio))
        mel = _audio.log_mel(self._wav(audio))
        return len(_audio.mel_windows(mel)) + 2

    def frames(self, audio: AudioLike, *, start: int = 0, count: Optional[int] = None) -> Iterator[np.ndarray]:
        """uint8 BGR full frames, in order, for output frames ``start .. start + count - 1``."""
        return self._run(audio, start=start, count=count, post=None)

    def _run(self, audio: AudioLike, *, start: int, count: Optional[int],
             post: Optional[Callable[[int, np.ndarray], object]]) -> Iterator:
        feats = self.features(audio, start=start, count=count)
        lo, hi = self._frame_range(len(feats), start, count)
        return self._pipeline(feats, range(lo, hi), post)

    def _render_frame(self, j: int, k: int, pred: np.ndarray) -> np.ndarray:
        crop = self.avatar.crop(k).copy()
        _image.from_generator_output(pred, crop[_image.ROI_OFFSET:_image.ROI_OFFSET + _image.ROI_SIZE,
                                                _image.ROI_OFFSET:_image.ROI_OFFSET + _image.ROI_SIZE])
        frame = self.avatar.frame(k).copy()
        _image.composite_patch(frame, crop, self.avatar.box(k), feather=self.feather)
        return frame

    def _pipeline(self, feats: np.ndarray, jobs: range, post) -> Iterator:
        cfg = self.config
        order = self.avatar.order(jobs.stop) if len(jobs) else []
        depth = max(2 * cfg.batch, cfg.batch + 2 * cfg.workers)
        results: "queue.Queue" = queue.Queue(maxsize=depth)
        stop = threading.Event()
        pool = ThreadPoolExecutor(cfg.workers, thread_name_prefix="fastgen-post")
        done = object()

        def finish(j: int, k: int, pred: np.ndarray):
            frame = self._render_frame(j, k, pred)
            return frame if post is None else post(j, frame)

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    results.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def infer():
            try:
                inp = np.empty((cfg.batch, 6, _image.ROI_SIZE, _image.ROI_SIZE), np.float32)
                aud = np.empty((cfg.batch, *self.audio_shape), np.float32)
                for b0 in range(jobs.start, jobs.stop, cfg.batch):
                    if stop.is_set():
                        return
                    idx = list(range(b0, min(b0 + cfg.batch, jobs.stop)))
                    for i, j in enumerate(idx):
                        k = order[j]
                        crop = self.avatar.crop(k)
                        off = _image.ROI_OFFSET
                        _image.to_generator_input(crop[off:off + _image.ROI_SIZE, off:off + _image.ROI_SIZE], inp[i])
                        self.audio_window(feats, j, aud[i])
                    n = len(idx)
                    pred = self.model.run({"input": inp[:n], "audio": aud[:n]})
                    for i, j in enumerate(idx):
                        # each future owns its slice of this batch's output array
                        if not put(pool.submit(finish, j, order[j], pred[i])):
                            return
                put(done)
            except BaseException as exc:  # surfaces in the caller, which re-raises it
                put(exc)

        thread = threading.Thread(target=infer, name="fastgen-infer", daemon=True)

        def iterate():
            thread.start()
            try:
                while True:
                    item = results.get()
                    if item is done:
                        return
                    if isinstance(item, BaseException):
                        raise item
                    yield item.result()
            finally:
                stop.set()
                while thread.is_alive():
                    try:  # unblock a producer waiting on a full queue
                        item = results.get(timeout=0.05)
                        if isinstance(item, Future):
                            item.cancel()
                    except queue.Empty:
                        pass
                thread.join()
                pool.shutdown(wait=True, cancel_futures=True)

        return iterate()

    def stream(self, sample_rate: int = _audio.SAMPLE_RATE, *, silence_db: Optional[float] = None,
               crossfade: int = 3):
        """An incremental session: ``push(pcm)`` chunks, get frames as soon as they exist."""
        from .stream import Stream

        return Stream(self, sample_rate, silence_db=silence_db, crossfade=crossfade)

    # ------------------------------------------------------------------ output

    def render(self, audio: AudioLike, output, *, count: Optional[int] = None, jpeg_quality: int = 95,
               progress: Optional[Callable[[int, int], None]] = None) -> dict:
        """Render to a JPEG directory (``frame_00001.jpg`` ...) or an ``.mp4`` (H.264 + AAC).

        Written under a temporary name next to ``output`` and renamed when complete.  Returns a
        summary dict (frames, seconds, fps, output).
        """
        from . import sinks

        wav = self._wav(audio)
        return sinks.render(self, wav, Path(output), count=count, jpeg_quality=jpeg_quality,
                            progress=progress)
