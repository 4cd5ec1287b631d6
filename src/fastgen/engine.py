"""The Generator: audio in, talking-avatar :class:`~fastgen.frame.Frame` objects out.

It is built once per avatar: each model file is inspected once, the sessions are opened once, and
every call reuses them.  The pieces it composes are public modules:

- :mod:`fastgen.features`: the feature table and audio windows (encoder run lazily);
- :mod:`fastgen.frame`: the per-frame step (fill the input, paste the output);
- :mod:`fastgen.scheduler`: inference overlapped with post-processing, frames in order;
- :mod:`fastgen.sinks`: JPEG directories and MP4 files written from any iterable of frames;
- :mod:`fastgen.stream`: the incremental, push-audio engine on the same pieces.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np

from . import audio as audio_io
from .errors import InputError, ModelError
from .features import FeatureTable
from .frame import Frame, FrameStep, feather_width
from .models import WEIGHTS_LABELS, inspect, weights_kind
from .models.graphs import EMB_SIZE
from .runtime import GPU_BACKENDS, default_threads, open_session
from .runtime.calibration import Race, batches_to_try, calibrated_batch
from .runtime.choice import choose, cpu_flags, open_chosen
from .runtime.fidelity import Check, avatar_inputs
from .scheduler import FrameScheduler
from .sinks import check_quality, open_sink, output_kind
from .timing import FEATURE_CONTEXT, SAMPLE_RATE
from .workers import WorkerPool

AudioLike = Union[str, "os.PathLike[str]", np.ndarray]
ENCODER_BATCH = 64
JPEG_MODES = ("auto", "splice", "full")


@dataclass(frozen=True)
class EngineConfig:
    """Sessions, threads, batch and workers actually used, and why."""

    threads: int          # intra-op threads per generator session
    batch: int
    workers: int          # post-processing threads
    blend: str
    sessions: int = 1     # generator sessions running side by side
    providers: list = field(default_factory=list)
    reason: str = ""      # "heuristic" or "explicit"
    backend: str = "ort"
    precision: str = "fp32"

    def as_dict(self) -> dict:
        return {"sessions": self.sessions, "threads": self.threads, "batch": self.batch,
                "workers": self.workers, "blend": self.blend, "providers": self.providers,
                "reason": self.reason, "backend": self.backend, "precision": self.precision}


def choose_config(cores: int, dynamic_batch: bool, *, sessions=None, threads=None, batch=None,
                  workers=None, blend: str = "feather") -> EngineConfig:
    """The :class:`EngineConfig` for this machine: the heuristic below, unless values are given.

    Heuristic from ``fastgen bench`` on a 2-core AVX-512 EPYC (1280x720 demo, JPEG output,
    medians of 3 interleaved rounds, 2026-12-01):

    ====================================  =========  ===============  ============
    generator configuration               model fps  pipeline fps     peak RSS
    ====================================  =========  ===============  ============
    1 session x 2 threads, batch 1        25.4       23.1             510 MB
    2 sessions x 1 thread, batch 1        24.2-25.4  22.4             790-810 MB
    1 session x 2 threads, batch 4        22.8       -                > 1 GB
    ====================================  =========  ===============  ============

    Batches bring nothing on CPU and cost latency and memory, so batch 1.  Model alone, one and
    two sessions are equal within this machine's noise, but in the pipeline one session with
    two intra-op threads loses more: each time post-processing takes a core, the whole parallel
    op waits for its slower thread.  Measured on a 2-core Zen 4 (2026-12-02, ORT fp32, demo,
    ``fastgen bench --json``): 1 session x 2 threads, pipeline 13.2 fps = 0.94x its own model
    configuration; 2 sessions x 1 thread, pipeline 13.9 fps = 0.97x the best model configuration.
    So up to two single-thread sessions (cores // 2 threads each beyond 2 cores), at the cost of
    a second ~200 MB of activations; ``sessions=1`` saves it.  Workers = sessions: the one pool
    that fills inputs, pastes and encodes (~5 ms a frame beside ~70 ms of inference).
    """
    feather_width(blend)
    n = int(sessions) if sessions is not None else max(1, min(2, cores))
    t = int(threads) if threads is not None else max(1, cores // max(n, 1))
    b = int(batch) if batch is not None else 1
    w = int(workers) if workers is not None else n
    for name, value in (("sessions", n), ("threads", t), ("batch", b), ("workers", w)):
        if value < 1:
            raise InputError(f"{name} must be >= 1 (got {value})")
    if b > 1 and not dynamic_batch:
        raise InputError(f"this generator has a fixed batch of 1; batch={b} is not possible")
    explicit = any(v is not None for v in (sessions, threads, batch, workers))
    return EngineConfig(threads=t, batch=b, workers=w, blend=blend, sessions=n,
                        reason="explicit" if explicit else "heuristic")


class Generator:
    """Renders an avatar speaking an audio clip.

    ``avatar`` is a :class:`fastgen.Avatar` or a path any :meth:`Avatar.open` accepts.
    ``blend="hard"`` pastes like the SyncTalk_2D reference; ``"feather"`` (default) ramps the
    patch edge so no box is visible.  ``backend`` / ``precision`` choose how the generator runs
    (:mod:`fastgen.runtime`): ``"auto"`` picks OpenVINO bf16 where the CPU has native bf16 and the
    check against fp32 passes on this model and avatar, else ONNX Runtime fp32; ``self.choice``
    says what ran and why, ``self.fidelity`` holds the check's figures.  ``cores`` is how many
    CPU cores this generator may use (default: every core the process may run on); threads,
    sessions and the audio encoder's threads follow from it unless given.
    """

    def __init__(self, avatar, *, providers: Optional[Sequence[str]] = None,
                 threads: Optional[int] = None, batch: Optional[int] = None,
                 workers: Optional[int] = None, blend: str = "feather", sessions: Optional[int] = None,
                 backend: str = "ort", precision: str = "fp32", cores: Optional[int] = None):
        from .avatar import Avatar

        self.avatar = avatar if isinstance(avatar, Avatar) else Avatar.open(avatar)
        feather_width(blend)
        if self.avatar.generator_path is None or self.avatar.audio_encoder_path is None:
            raise ModelError(f"{self.avatar.path}: no generator / audio encoder model (pass "
                             "generator= and audio_encoder= to Avatar.open)")
        # a process given a share of a machine (a Ray actor) names its cores; else all it may use
        cores = max(1, int(cores)) if cores is not None else default_threads()
        self.generator_info = inspect(self.avatar.generator_path, expect="generator")
        self.encoder_info = inspect(self.avatar.audio_encoder_path, expect="audio_encoder")
        cfg = choose_config(cores, self.generator_info.dynamic_batch, sessions=sessions,
                            threads=threads, batch=batch, workers=workers, blend=blend)
        # the encoder runs in big batches while generator sessions may be busy: all cores, and no
        # spinning, so its idle threads give the cores back to the generator at once.  Measured
        # on the 2-core Xeon with AMX (2026-12-07, ORT fp32 demo, 250 frames, medians of 3
        # interleaved rounds): pipeline / best model-only 0.953 spinning, 0.981 not.
        self.encoder = open_session(self.encoder_info, threads=cores, providers=providers, spin=False)
        self.step = FrameStep(self.avatar, blend)
        chosen = choose(backend, precision)
        if chosen.backend in GPU_BACKENDS:
            # two sessions on one weight copy: one uploads while the other computes; every core
            # post-processes, since on a GPU the frame path is all the CPU does
            cfg = replace(cfg, sessions=2 if sessions is None else cfg.sessions,
                          workers=cores if workers is None else cfg.workers)
        check = Check(self._fidelity_inputs)
        # the choice is made on one session with every core (OpenVINO keeps that layout: its own
        # thread pool beats two single-thread compiled models, 20.2 vs 13.3 fps pipeline on the
        # Zen 4); ORT then gets the heuristic's single-thread sessions (choose_config)
        split = sessions is None and threads is None and chosen.backend not in GPU_BACKENDS
        self.sessions, self.choice, self.fidelity = open_chosen(
            self.generator_info, chosen, sessions=1 if split else cfg.sessions,
            threads=cores if split else cfg.threads, providers=providers, check=check,
            model_for=self._model_for, race=Race(lambda: check.inputs))
        if split and self.choice.backend == "ort" and cfg.sessions > 1:
            target = self._model_for(self.choice.precision)
            self.sessions = [open_session(target, backend="ort", precision=self.choice.precision,
                                          threads=cfg.threads, providers=providers)
                             for _ in range(cfg.sessions)]
        elif split:
            cfg = replace(cfg, sessions=1, threads=cores, workers=1 if workers is None else cfg.workers)
        self.calibration = None
        if batch is None:
            tries = batches_to_try(self.choice.backend, cpu_flags(), self.generator_info.dynamic_batch)
            b, self.calibration = calibrated_batch(self.sessions[0], *check.inputs, tries) \
                if tries != (1,) else (1, None)
            cfg = replace(cfg, batch=b)
        self.config = replace(cfg, providers=self.sessions[0].providers, backend=self.choice.backend,
                              precision=self.choice.precision)

    def _fidelity_inputs(self) -> tuple[np.ndarray, np.ndarray]:
        """A few of this avatar's crops with speech-like audio (for fidelity and calibration)."""
        from . import demo

        table = self.feature_table(demo.audio(4.0, seed=3))
        return avatar_inputs(self.step, table, self.avatar.order(len(table)), self.audio_shape)

    def _model_for(self, precision: str):
        """The generator to open at ``precision``: int8 runs a copy quantized on this avatar."""
        if precision != "int8":
            return self.generator_info
        from .runtime.quantize import quantized_generator

        return quantized_generator(self.generator_info, self.avatar, self.step, self.feature_table)

    # ------------------------------------------------------------------ facts

    @property
    def mode(self) -> str:
        """The generator's audio mode: "ave", "hubert" or "wenet"."""
        return self.generator_info.mode

    @property
    def audio_shape(self) -> tuple:
        """The generator's audio input per frame, without the batch axis."""
        return tuple(self.generator_info.inputs["audio"])

    @property
    def weights(self) -> str:
        """"known-answer" (demo), "synthetic" or "user": read from the model files."""
        return weights_kind(self.generator_info, self.encoder_info)

    @property
    def weights_label(self) -> Optional[str]:
        """"known-answer demo weights", "synthetic weights", or None for a user's own models."""
        return WEIGHTS_LABELS[self.weights]

    # ------------------------------------------------------------------ audio side

    def load_audio(self, audio: AudioLike) -> np.ndarray:
        """A path read as 16 kHz mono float32; arrays pass through (already 16 kHz mono)."""
        return audio if isinstance(audio, np.ndarray) else audio_io.load_audio(audio)

    def encode_windows(self, windows: np.ndarray) -> np.ndarray:
        """Audio-encoder embeddings (n, 512) of mel windows (n, 1, 80, 16), a few batched calls."""
        step = ENCODER_BATCH if self.encoder_info.dynamic_batch else 1
        out = [self.encoder.run({"mel": windows[i:i + step]}) for i in range(0, len(windows), step)]
        return np.concatenate(out).reshape(len(windows), -1) if out else np.zeros((0, EMB_SIZE), np.float32)

    def feature_table(self, audio: AudioLike, *, start: int = 0, count: Optional[int] = None,
                      where: Optional[str] = None) -> FeatureTable:
        """The lazily encoded :class:`FeatureTable` of frames ``start .. start + count - 1``.

        ``audio`` is a path or a float32 16 kHz mono array; for hubert / wenet models a ``.npy`` of
        precomputed (N, D) features.  Only the encoder windows those frames read are computed.
        ``where`` names the audio in errors (default: the path, or "audio").
        """
        if self.mode != "ave":
            return FeatureTable.from_rows(self._external_features(audio), start, count)
        wav = self.load_audio(audio)
        audio_io.check_length(len(wav), where or (str(audio) if not isinstance(audio, np.ndarray) else "audio"))
        windows = audio_io.mel_windows(audio_io.log_mel(wav))
        return FeatureTable.from_windows(windows, self.encode_windows, start, count)

    def features(self, audio: AudioLike, *, start: int = 0, count: Optional[int] = None) -> np.ndarray:
        """Feature rows F (N + 2, D) (docs/semantics.md §3): first and last encoder rows duplicated.

        With ``start``/``count`` only the windows that those frames need are computed; other
        rows are left zero.
        """
        table = self.feature_table(audio, start=start, count=count)
        table.ensure_all()
        return table.table()

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
        return rows

    # ------------------------------------------------------------------ frames

    def frame_count(self, audio: AudioLike) -> int:
        """N + 2 for this audio (docs/semantics.md §3)."""
        if self.mode != "ave":
            return len(self._external_features(audio)) + 2
        wav = self.load_audio(audio)
        audio_io.check_length(len(wav), str(audio) if not isinstance(audio, np.ndarray) else "audio")
        return len(audio_io.mel_windows(audio_io.log_mel(wav))) + 2

    def frames(self, audio: Union[AudioLike, FeatureTable], *, start: int = 0,
               count: Optional[int] = None, executor: Optional[Executor] = None) -> Iterator[Frame]:
        """:class:`Frame` objects, in order, for output frames ``start .. start + count - 1``.

        ``audio`` may also be a :class:`FeatureTable` from :meth:`feature_table` (then its frame
        range is used), so the mel and the encoder run once when the caller needs both.
        Per-frame work runs on ``executor`` when given (a sink can then encode on the same
        threads), else on ``workers`` threads of the scheduler's own.  Frames are lazy: their
        ``image`` is composed from the template and the face patch on first use.
        """
        if isinstance(audio, FeatureTable):
            table = audio
        else:
            table = self.feature_table(audio, start=start, count=count)
        jobs = table.frames
        order = self.avatar.order(jobs.stop) if len(jobs) else []
        cfg = self.config
        return iter(FrameScheduler(self.sessions, self.step, table, order, jobs, batch=cfg.batch,
                                   workers=cfg.workers, audio_shape=self.audio_shape, executor=executor))

    def stream(self, sample_rate: int = SAMPLE_RATE, *, silence_db: Optional[float] = None,
               crossfade: int = 3):
        """An incremental session: ``push(pcm)`` chunks, get frames as soon as they exist."""
        from .stream import Stream

        if self.mode != "ave":
            raise InputError(f"streaming needs an 'ave' generator (this one is {self.mode!r})")
        return Stream(self.step, self.sessions[0], self.encode_windows, self.audio_shape,
                      batch=self.config.batch, sample_rate=sample_rate, silence_db=silence_db,
                      crossfade=crossfade)

    # ------------------------------------------------------------------ output

    def render(self, audio: AudioLike, output, *, count: Optional[int] = None, jpeg_quality: int = 95,
               progress: Optional[Callable[[int, int], None]] = None, jpeg_mode: str = "auto",
               preset: str = "veryfast", crf: int = 18, video_codec: str = "libx264") -> dict:
        """Render to a JPEG directory (``frame_00001.jpg`` ...) or a video (``.mp4``, ``.mov``,
        ``.mkv``: H.264 + the audio file's own sound as AAC, at its rate and channels).

        JPEG frames re-encode only the rows around the face box and copy the rest from the
        template's coded data (``jpeg_mode="auto"`` or ``"splice"``; they decode exactly as a full
        encode would); ``"full"`` encodes every frame whole.  Videos: libx264 ``preset`` and ``crf``.

        Composes :meth:`frames` with the sink :func:`fastgen.sinks.open_sink` picks for
        ``output``; written under a temporary name and renamed when complete.  Returns a summary
        dict (frames, seconds, fps, output).
        """
        if count is not None and count < 1:
            raise InputError(f"count must be >= 1 (got {count}): there would be nothing to write")
        check_quality(jpeg_quality)
        if jpeg_mode not in JPEG_MODES:
            raise InputError(f"jpeg_mode must be one of {', '.join(JPEG_MODES)} (got {jpeg_mode!r})")
        output_kind(output)                                   # a bad name fails before any work
        if isinstance(audio, np.ndarray):
            source = audio_io.SourceAudio(np.asarray(audio, np.float32).reshape(-1, 1), SAMPLE_RATE)
            wav = audio
        else:
            source = audio_io.read_audio(audio)               # the video keeps this sound as it is
            wav = source.for_model()
        splicer = None
        if jpeg_mode != "full" and output_kind(output) == "jpeg":
            from .splice import SplicingEncoder

            splicer = SplicingEncoder(self.avatar.jpeg, self.avatar.frame, jpeg_quality,
                                      template_region=self.avatar.region)
        workers = self.config.workers
        with WorkerPool(workers) as pool:
            sink = open_sink(output, jpeg_quality=jpeg_quality, audio=source,
                             frame_size=self.avatar.frame_size, splicer=splicer, workers=workers,
                             preset=preset, crf=crf, executor=pool, video_codec=video_codec)
            table = self.feature_table(wav, count=count, where=source.path or "audio")
            t0 = time.perf_counter()
            n = sink.write(self.frames(table, executor=pool), total=len(table.frames), progress=progress)
            seconds = time.perf_counter() - t0
        return {"frames": n, "seconds": round(seconds, 3),
                "fps": round(n / seconds, 2) if seconds else 0.0, "output": str(output)}
