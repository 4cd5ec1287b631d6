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
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np

from . import audio as _audio
from . import image as _image
from .errors import InputError, ModelError
from .models import inspect as inspect_model
from .runtime import OrtModel, default_threads, load_model

AudioLike = Union[str, "os.PathLike[str]", np.ndarray]
FEATURE_CONTEXT = 8           # feature rows on each side of a frame's window (SPEC 3.3)
ENCODER_BATCH = 64
BLENDS = {"hard": 0, "feather": 6}   # feather width in pixels of a 328-pixel crop


@dataclass
class EngineConfig:
    """Threads, batch and workers actually used, and why."""

    threads: int          # intra-op threads per generator session
    batch: int
    workers: int
    blend: str
    sessions: int = 1     # generator sessions running side by side
    providers: list = field(default_factory=list)
    reason: str = ""

    def as_dict(self) -> dict:
        return {"sessions": self.sessions, "threads": self.threads, "batch": self.batch,
                "workers": self.workers, "blend": self.blend, "providers": self.providers,
                "reason": self.reason}


def choose_config(cores: int, dynamic_batch: bool, *, sessions=None, threads=None, batch=None,
                  workers=None) -> tuple:
    """(sessions, threads per session, batch, workers) for this machine, unless given.

    Heuristic from ``fastgen bench`` on a 2-core AVX-512 EPYC (1280x720 demo, JPEG output,
    medians of 3 interleaved rounds, 2026-12-01):

    ====================================  =========  ===============  ============
    generator configuration               model fps  pipeline fps     peak RSS
    ====================================  =========  ===============  ============
    1 session x 2 threads, batch 1        25.4       23.1             510 MB
    2 sessions x 1 thread, batch 1        24.2-25.4  22.4             790-810 MB
    1 session x 2 threads, batch 4        22.8       -                > 1 GB
    ====================================  =========  ===============  ============

    Batches bring nothing on CPU and cost latency and memory, so batch 1.  Two single-thread
    sessions are no faster within this machine's noise and each holds its own ~200 MB of
    activations (the 128-channel 320x320 decoder stage), so one session with every core is the
    default; ``sessions=`` is there for machines with memory to spare.  One post-processing
    worker per session: its ~3 ms per frame fits beside ~40 ms of inference.
    """
    n = int(sessions) if sessions is not None else 1
    t = int(threads) if threads is not None else max(1, cores // max(n, 1))
    b = int(batch) if batch is not None else 1
    w = int(workers) if workers is not None else n
    if n < 1 or t < 1 or b < 1 or w < 1:
        raise InputError(f"sessions, threads, batch and workers must be >= 1 (got {n}, {t}, {b}, {w})")
    if b > 1 and not dynamic_batch:
        raise InputError(f"this generator has a fixed batch of 1; batch={b} is not possible")
    return n, t, b, w


class Generator:
    """Renders an avatar speaking an audio clip.

    ``avatar`` is a :class:`fastgen.Avatar` or a path any :meth:`Avatar.open` accepts.
    ``blend="hard"`` pastes like the SyncTalk_2D reference; ``"feather"`` (default) ramps the
    patch edge so no box is visible.
    """

    def __init__(self, avatar, *, providers: Optional[Sequence[str]] = None,
                 threads: Optional[int] = None, batch: Optional[int] = None,
                 workers: Optional[int] = None, blend: str = "feather", sessions: Optional[int] = None):
        from .avatar import Avatar

        self.avatar = avatar if isinstance(avatar, Avatar) else Avatar.open(avatar)
        if blend not in BLENDS:
            raise InputError(f"blend must be one of {sorted(BLENDS)}, got {blend!r}")
        if self.avatar.generator_path is None or self.avatar.audio_encoder_path is None:
            raise ModelError(f"{getattr(self.avatar, 'path', 'avatar')}: no generator / audio "
                             "encoder model (pass generator= and audio_encoder= to Avatar.open)")
        cores = default_threads()
        info = inspect_model(self.avatar.generator_path, expect="generator")
        n, t, b, w = choose_config(cores, info.dynamic_batch, sessions=sessions, threads=threads,
                                   batch=batch, workers=workers)
        self.models = [load_model(self.avatar.generator_path, "generator", threads=t, providers=providers)
                       for _ in range(n)]
        self.model = self.models[0]
        # the encoder runs in big batches while generator sessions may be busy: all cores
        self.encoder = load_model(self.avatar.audio_encoder_path, "audio_encoder", threads=cores,
                                  providers=providers)
        self.mode = self.model.info.mode
        self.audio_shape = tuple(self.model.info.inputs["audio"])
        explicit = any(v is not None for v in (sessions, threads, batch, workers))
        self.config = EngineConfig(threads=t, batch=b, workers=w, blend=blend, sessions=n,
                                   providers=self.model.providers,
                                   reason="explicit" if explicit else "heuristic")
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
        rows = self._feature_rows(audio, start, count)
        rows.ensure_all()
        return rows.table()

    def _feature_rows(self, audio: AudioLike, start: int, count: Optional[int]) -> "_FeatureRows":
        if self.mode != "ave":
            f = self._external_features(audio)
            return _FeatureRows(self, None, f, *self._frame_range(len(f), start, count))
        windows = _audio.mel_windows(_audio.log_mel(self._wav(audio)))
        return _FeatureRows(self, windows, None, *self._frame_range(len(windows) + 2, start, count))

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
        rows = self._feature_rows(audio, start, count)
        return self._pipeline(rows, range(rows.lo, rows.hi), post)

    def _render_frame(self, j: int, k: int, pred: np.ndarray) -> np.ndarray:
        crop = self.avatar.crop(k).copy()
        _image.from_generator_output(pred, crop[_image.ROI_OFFSET:_image.ROI_OFFSET + _image.ROI_SIZE,
                                                _image.ROI_OFFSET:_image.ROI_OFFSET + _image.ROI_SIZE])
        frame = self.avatar.frame(k).copy()
        _image.composite_patch(frame, crop, self.avatar.box(k), feather=self.feather)
        return frame

    def _pipeline(self, rows: "_FeatureRows", jobs: range, post) -> Iterator:
        """Frames of ``jobs`` in order: one infer thread per generator session, a post pool.

        In-flight frames are bounded by permits taken in frame order (so the oldest frame always
        holds one and the ring cannot deadlock); the caller collects futures in frame order.
        """
        cfg = self.config
        order = self.avatar.order(jobs.stop) if len(jobs) else []
        depth = max(2 * cfg.batch * cfg.sessions, cfg.batch * cfg.sessions + 2 * cfg.workers)
        permits = threading.Semaphore(depth)
        take = threading.Lock()
        ready = threading.Condition()
        futures: dict = {}
        state = {"next": jobs.start, "error": None, "finished": 0}
        stop = threading.Event()
        pool = ThreadPoolExecutor(cfg.workers, thread_name_prefix="fastgen-post")
        off, size = _image.ROI_OFFSET, _image.ROI_SIZE

        def finish(j: int, k: int, pred: np.ndarray):
            frame = self._render_frame(j, k, pred)
            return frame if post is None else post(j, frame)

        def acquire() -> bool:
            while not stop.is_set():
                if permits.acquire(timeout=0.1):
                    return True
            return False

        def claim() -> list:
            with take:   # permits in frame order: see the docstring
                idx = []
                while len(idx) < cfg.batch and state["next"] < jobs.stop:
                    if not acquire():
                        break
                    idx.append(state["next"])
                    state["next"] += 1
                return idx

        def infer(model: OrtModel):
            try:
                inp = np.empty((cfg.batch, 6, size, size), np.float32)
                aud = np.empty((cfg.batch, *self.audio_shape), np.float32)
                while not stop.is_set():
                    idx = claim()
                    if not idx:
                        break
                    for i, j in enumerate(idx):
                        crop = self.avatar.crop(order[j])
                        _image.to_generator_input(crop[off:off + size, off:off + size], inp[i])
                        rows.window(j, aud[i])
                    n = len(idx)
                    pred = model.run({"input": inp[:n], "audio": aud[:n]})
                    with ready:
                        for i, j in enumerate(idx):
                            futures[j] = pool.submit(finish, j, order[j], pred[i])
                        ready.notify_all()
            except BaseException as exc:  # surfaces in the caller, which re-raises it
                with ready:
                    state["error"] = state["error"] or exc
                    ready.notify_all()
            finally:
                with ready:
                    state["finished"] += 1
                    ready.notify_all()

        threads = [threading.Thread(target=infer, args=(m,), name=f"fastgen-infer-{i}", daemon=True)
                   for i, m in enumerate(self.models)]

        def iterate():
            for t in threads:
                t.start()
            try:
                for j in jobs:
                    with ready:
                        while j not in futures and state["error"] is None:
                            if state["finished"] == len(threads):
                                raise RuntimeError(f"fastgen: frame {j} was never produced")
                            ready.wait(0.1)
                        if state["error"] is not None:
                            raise state["error"]
                        fut = futures.pop(j)
                    result = fut.result()
                    permits.release()
                    yield result
            finally:
                stop.set()
                for t in threads:
                    t.join()
                for fut in futures.values():
                    fut.cancel()
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


class _FeatureRows:
    """Feature rows F (SPEC 3.2) for frames [lo, hi), encoded lazily in chunks of windows.

    The first frames only wait for the first chunk, not for the whole clip's encoder pass, and a
    frame range encodes only the windows it reads.  Thread-safe: sessions ask concurrently.
    """

    def __init__(self, gen: Generator, windows: Optional[np.ndarray], table: Optional[np.ndarray],
                 lo: int, hi: int):
        self.gen, self.windows, self.lo, self.hi = gen, windows, lo, hi
        self.n = len(windows) if windows is not None else len(table) - 2
        self.total = self.n + 2
        self._lock = threading.Lock()
        if table is not None:
            self._emb = table[1:-1]
            self._w_lo, self._w_hi, self._done = 0, self.n, self.n
        else:
            self._emb = None
            # frame j reads rows j-8 .. j+7; row r holds window clamp(r - 1, 0, n - 1)
            self._w_lo = min(max(0, lo - FEATURE_CONTEXT - 1), max(self.n - 1, 0))
            self._w_hi = min(self.n, hi + FEATURE_CONTEXT - 1) if hi > lo else self._w_lo
            self._done = self._w_lo

    def _ensure(self, w_hi: int) -> None:
        """Encode windows [w_lo, w_hi)."""
        w_hi = min(w_hi, self._w_hi)
        if self._done >= w_hi:
            return
        with self._lock:
            while self._done < w_hi:
                hi = min(self._w_hi, max(w_hi, self._done + ENCODER_BATCH))
                emb = self.gen.encode_windows(self.windows[self._done:hi])
                if self._emb is None:
                    self._emb = np.zeros((self.n, emb.shape[1]), np.float32)
                self._emb[self._done:hi] = emb
                self._done = hi

    def ensure_all(self) -> None:
        if self.windows is not None:
            self._ensure(self._w_hi)

    def _window_index(self, r: np.ndarray) -> np.ndarray:
        return np.clip(r - 1, 0, self.n - 1)

    def window(self, j: int, out: np.ndarray) -> None:
        """Frame j's audio tensor: rows F[j-8 : j+8], zero outside [0, N + 2) (SPEC 3.3)."""
        r = np.arange(j - FEATURE_CONTEXT, j + FEATURE_CONTEXT)
        valid = (r >= 0) & (r < self.total)
        need = self._window_index(r[valid])
        if self.windows is not None and need.size:
            self._ensure(int(need.max()) + 1)
        flat = out.reshape(2 * FEATURE_CONTEXT, -1)
        flat[~valid] = 0
        flat[valid] = self._emb[need]

    def table(self) -> np.ndarray:
        """The (N + 2, D) table; rows whose window was not encoded are zero."""
        d = self._emb.shape[1] if self._emb is not None else 512
        out = np.zeros((self.total, d), np.float32)
        if self._emb is None:
            return out
        r = np.arange(self.total)
        w = self._window_index(r)
        ok = (w >= self._w_lo) & (w < self._done)
        out[ok] = self._emb[w[ok]]
        return out
