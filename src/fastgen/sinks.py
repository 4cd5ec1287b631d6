"""Where frames go: sinks that consume any iterable of :class:`~fastgen.frame.Frame`.

- :class:`JpegDirectory`: ``frame_00001.jpg`` ... in a directory;
- :class:`VideoFile`: H.264 video with the source's sound muxed in as AAC, in an MP4, MOV or
  Matroska container (``Mp4File`` is the same class).

Both are written under a temporary name next to the output and renamed only when complete
(:mod:`fastgen.atomic`), so an interrupted or failed run never leaves a half file under the final
name.  :func:`output_kind` is the one rule for what a path means; :func:`open_sink` picks the sink
and checks the path before any work starts.  Frames can come from :meth:`Generator.frames`, a
:class:`~fastgen.stream.Stream`, or a caller's own post-processing of either.

This module imports numpy, PyAV and simplejpeg only when it writes, so the CLI can check an output
path in milliseconds.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Optional

from .atomic import building_dir, building_file, write_file
from .errors import InputError
from .timing import FPS

if TYPE_CHECKING:
    import numpy as np

    from .audio import SourceAudio
    from .frame import Frame

# what PyAV writes with H.264 + AAC, by extension
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
# sample rates the AAC encoder takes; other rates are resampled to the next one up (or 96 kHz)
AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
AAC_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
Progress = Optional[Callable[[int, int], None]]


def ahead(executor, fn: Callable, items: Iterable, window: int) -> Iterator:
    """``map(fn, items)`` in order, computed on ``executor`` up to ``window`` items ahead."""
    from collections import deque

    pending: deque = deque()
    try:
        for item in items:
            pending.append(executor.submit(fn, item))
            if len(pending) > window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for fut in pending:
            fut.cancel()


def output_kind(output) -> str:
    """"video" for ``.mp4 .m4v .mov .mkv``; "jpeg" for a directory: a path ending in ``/``, an
    existing directory, or a name with no extension.  Anything else is an :class:`InputError`."""
    text = os.fspath(output)
    path = Path(text)
    if text.endswith(("/", os.sep)) or path.is_dir() or not path.suffix:
        return "jpeg"
    if path.suffix.lower() in CONTAINERS:
        return "video"
    raise InputError(f"{path}: unknown output type {path.suffix!r}; use .mp4, .mov or .mkv for a "
                     "video, or a directory (a name ending in / or without an extension) for JPEG frames")


def _check_parent(output: Path) -> None:
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{output}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{output}: the folder {parent} is not writable")


def check_quality(quality: int, option: str = "jpeg_quality") -> int:
    if not 1 <= int(quality) <= 100:
        raise InputError(f"{option} must be 1..100 (got {quality})")
    return int(quality)


class JpegDirectory:
    """Writes frames as ``frame_00001.jpg`` ... (quality ``quality``, 4:2:0) into ``path``.

    An existing directory is replaced only if it holds nothing but earlier frames.
    """

    def __init__(self, path, quality: int = 95, splicer=None, workers: int = 1, executor=None):
        self.path = Path(path)
        self.quality = check_quality(quality)
        self.workers = max(1, int(workers))    # encoder threads (simplejpeg releases the GIL)
        # a concurrent.futures.Executor to encode on instead of the sink's own threads: the
        # engine passes the pool that makes the frames, so ``workers`` threads do all the work
        self.executor = executor
        # a fastgen.splice.SplicingEncoder: frames that say their template are re-encoded only in
        # the rows that changed (the rest is the template's own coded data); None: full encodes
        self.splicer = splicer
        if splicer is not None and splicer.quality != self.quality:
            raise InputError(f"the splicing encoder runs quality {splicer.quality}, the sink {self.quality}")
        _check_parent(self.path)
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"{self.path}: exists and is a file; choose another output name")
        if self.path.is_dir() and any(not (p.name.startswith("frame_") and p.suffix == ".jpg")
                                      for p in self.path.iterdir()):
            # replacing a folder deletes it: only ever replace an earlier frames folder
            raise InputError(f"{self.path}: exists and holds files other than frame_*.jpg; "
                             "choose another output name")

    @staticmethod
    def encode_image(image: "np.ndarray", quality: int = 95) -> bytes:
        """One frame as the JPEG this sink writes (4:2:0, libjpeg-turbo via simplejpeg)."""
        import simplejpeg

        return simplejpeg.encode_jpeg(image, quality=quality, colorspace="BGR", colorsubsampling="420")

    def encode(self, frame: "Frame") -> bytes:
        """``frame`` as the JPEG this sink writes (spliced where it can be)."""
        if self.splicer is not None:
            return self.splicer.encode_frame(frame)
        return self.encode_image(frame.image, self.quality)

    def encoded(self, frames: Iterable["Frame"]) -> Iterator[bytes]:
        """Each frame's JPEG, in order, encoded on ``workers`` threads (at most 2 per worker ahead)."""
        if self.executor is not None:
            yield from ahead(self.executor, self.encode, frames, 2 * self.workers)
            return
        if self.workers == 1:
            yield from map(self.encode, frames)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.workers, thread_name_prefix="fastgen-jpeg") as pool:
            yield from ahead(pool, self.encode, frames, 2 * self.workers)

    def write(self, frames: Iterable["Frame"], *, total: Optional[int] = None, progress: Progress = None) -> int:
        """Consume ``frames``; returns how many were written."""
        n = 0
        with building_dir(self.path, None, "the frames") as tmp:
            if self.executor is not None:
                return self._write_on(self.executor, frames, tmp, total, progress)
            for n, data in enumerate(self.encoded(frames), 1):
                (tmp / f"frame_{n:05d}.jpg").write_bytes(data)
                if progress:
                    progress(n, total if total is not None else n)
        return n

    def _write_on(self, executor, frames: Iterable["Frame"], tmp: Path, total: Optional[int],
                  progress: Progress) -> int:
        """Each frame encoded *and written* by a task on ``executor`` (file writes then scale with
        the workers instead of queueing in the caller's thread), at most 2 per worker ahead;
        progress is reported in frame order.  Every started task has finished before this
        returns or raises, so nothing writes into ``tmp`` once it is renamed or removed."""
        from collections import deque
        from concurrent.futures import wait

        folder = os.fspath(tmp)

        def encode_to(frame: "Frame", name: str) -> None:
            write_file(os.path.join(folder, name), self.encode(frame))

        finish_with = getattr(frames, "finish_with", None)
        if finish_with is not None:
            # frames from a scheduler on this same pool: each is encoded and written by the task
            # that finishes it, so no task or hand-off of the sink's own per frame
            done = 0
            for done, _ in enumerate(finish_with(lambda i, frame: encode_to(frame, f"frame_{i + 1:05d}.jpg")), 1):
                if progress:
                    progress(done, total if total is not None else done)
            return done

        pending: deque = deque()
        done = 0
        try:
            for n, frame in enumerate(frames, 1):
                pending.append(executor.submit(encode_to, frame, f"frame_{n:05d}.jpg"))
                while len(pending) > 2 * self.workers or (pending and pending[0].done()):
                    pending.popleft().result()
                    done += 1
                    if progress:
                        progress(done, total if total is not None else done)
            while pending:
                pending.popleft().result()
                done += 1
                if progress:
                    progress(done, total if total is not None else done)
        finally:
            for fut in pending:
                fut.cancel()
            wait(pending)
        return done


# libx264 presets, fastest first.  Measured on the demo (1280x720, 100 frames, CRF 18, 2-core Xeon,
# 2026-12-02): ultrafast 9.3 CPU ms a frame at 2460 kbit/s, superfast 12.2 ms at 1290, veryfast
# 14.0 ms at 300, faster 24.3 ms at 320; PSNR 40.4-40.6 dB for all (yuv420p limits it).  veryfast
# is the default: 8x smaller than ultrafast for 1.5x the CPU.
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow")
DEFAULT_PRESET, DEFAULT_CRF = "veryfast", 18


# H.264 encoders PyAV's FFmpeg may have; the hardware ones open only with their GPU and driver
# (NVIDIA NVENC, Intel Quick Sync, AMD AMF).  VAAPI is left out: it needs a hardware frames
# context that PyAV's plain encode API does not set up.  H100/H200-class GPUs have no NVENC.
HARDWARE_H264 = ("h264_nvenc", "h264_qsv", "h264_amf")
VIDEO_CODECS = ("libx264", *HARDWARE_H264)
_hardware_found: Optional[list] = None


def check_video_options(preset: str, crf: int, codec: str = "libx264") -> None:
    if preset not in PRESETS:
        raise InputError(f"--preset must be one of {', '.join(PRESETS)} (got {preset!r})")
    if not 0 <= int(crf) <= 51:
        raise InputError(f"--crf must be 0..51 (got {crf})")
    if codec not in VIDEO_CODECS:
        raise InputError(f"--video-codec must be one of {', '.join(VIDEO_CODECS)} (got {codec!r})")
    if codec != "libx264" and codec not in hardware_encoders():
        raise InputError(f"--video-codec {codec}: this machine cannot open it (no such GPU or driver); "
                         f"available: {', '.join(['libx264', *hardware_encoders()])}")


def codec_options(codec: str, preset: str, crf: int) -> dict:
    """Encoder options for one quality setting: libx264's preset and CRF, mapped onto the
    hardware encoders' own speed presets and constant-quality modes."""
    speed = PRESETS.index(preset)                       # 0 = fastest
    if codec == "h264_nvenc":
        return {"preset": f"p{speed + 1}", "rc": "vbr", "cq": str(crf), "b": "0"}
    if codec == "h264_qsv":
        return {"preset": preset if preset in PRESETS[2:] else "veryfast", "global_quality": str(crf)}
    if codec == "h264_amf":
        return {"quality": "speed" if speed < 3 else "balanced", "rc": "cqp", "qp_i": str(crf),
                "qp_p": str(crf)}
    return {"crf": str(crf), "preset": preset}


def hardware_encoders() -> list:
    """The hardware H.264 encoders that open and encode a test frame here (checked once)."""
    global _hardware_found
    if _hardware_found is None:
        import av
        import numpy as np

        found = []
        for name in HARDWARE_H264:
            try:
                ctx = av.CodecContext.create(name, "w")
                ctx.width, ctx.height, ctx.pix_fmt = 256, 256, "yuv420p"
                ctx.time_base = f"1/{FPS}"
                ctx.open()
                frame = av.VideoFrame.from_ndarray(np.zeros((256, 256, 3), np.uint8), format="bgr24")
                ctx.encode(frame.reformat(format="yuv420p"))
                ctx.encode(None)
                found.append(name)
            except Exception:      # any FFmpeg failure means: not usable on this machine
                continue
        _hardware_found = found
    return list(_hardware_found)


class VideoFile:
    """Writes frames as H.264 (libx264, CRF 18, preset veryfast, yuv420p) at 25 fps with ``audio``
    muxed in as AAC.  ``preset`` and ``crf`` trade CPU for size (:data:`PRESETS`).  ``codec`` may
    name a hardware encoder :func:`hardware_encoders` found (its own presets and constant-quality
    mode are set from ``preset`` and ``crf`` by :func:`codec_options`).

    ``audio`` (:class:`fastgen.audio.SourceAudio`) keeps its sample rate and channels (resampled
    only where AAC has no such rate); the part the written frames cover is muxed, from the same
    instant as the first frame.  The container follows the extension (:data:`CONTAINERS`).
    """

    def __init__(self, path, audio: Optional["SourceAudio"], frame_size: tuple[int, int], *,
                 preset: str = DEFAULT_PRESET, crf: int = DEFAULT_CRF, executor=None, workers: int = 1,
                 codec: str = "libx264"):
        self.path = Path(path)
        self.codec = codec
        # frames' images (lazy: template decode + patch) are made on ``executor`` when given
        self.executor, self.workers = executor, max(1, int(workers))
        check_video_options(preset, crf, codec)
        self.preset, self.crf = preset, int(crf)
        if self.path.suffix.lower() not in CONTAINERS:
            raise InputError(f"{self.path}: a video needs one of {', '.join(CONTAINERS)}")
        self.audio = audio
        self.frame_size = tuple(frame_size)
        _check_parent(self.path)
        if self.path.is_dir():
            raise InputError(f"{self.path}: exists and is a directory; choose another output name")

    def write(self, frames: Iterable["Frame"], *, total: Optional[int] = None, progress: Progress = None) -> int:
        """Consume ``frames``; returns how many were written."""
        import av

        w, h = self.frame_size
        n = 0
        with building_file(self.path, None, "the video") as tmp:
            try:
                container = av.open(str(tmp), mode="w", format=CONTAINERS[self.path.suffix.lower()])
            except (OSError, av.error.FFmpegError) as exc:
                raise InputError(f"{self.path}: cannot write the video ({exc})") from None
            try:
                video = container.add_stream(self.codec, rate=FPS)
                video.width, video.height = w + (w & 1), h + (h & 1)   # yuv420p needs even sizes
                video.pix_fmt = "yuv420p"
                video.options = codec_options(self.codec, self.preset, self.crf)
                sound = _add_audio_stream(container, self.audio) if self.audio is not None else None
                paint = functools.partial(_painted, size=(w, h), even=(video.width, video.height))
                pictures = (ahead(self.executor, paint, frames, 2 * self.workers) if self.executor
                            else map(paint, frames))
                for n, vf in enumerate(pictures, 1):
                    vf.pts = n - 1
                    for packet in video.encode(vf):
                        container.mux(packet)
                    if progress:
                        progress(n, total if total is not None else n)
                for packet in video.encode():
                    container.mux(packet)
                if sound is not None:
                    _mux_audio(container, sound, self.audio, n / FPS)
            finally:
                container.close()
        return n


Mp4File = VideoFile


def _painted(frame: "Frame", size: tuple[int, int], even: tuple[int, int]):
    """``frame`` (``size`` w x h) as a bgr24 ``av.VideoFrame`` of ``even`` size, painted straight
    into its buffer (:meth:`Frame.paint`: one copy of the template); the odd row and column
    yuv420p cannot take are filled by repeating the edge."""
    import av
    import numpy as np

    (w, h), (width, height) = size, even
    picture = av.VideoFrame(width, height, "bgr24")
    plane = picture.planes[0]
    rows = np.frombuffer(plane, np.uint8).reshape(height, plane.line_size)[:, :3 * width].reshape(height, width, 3)
    frame.paint(rows[:h, :w])
    rows[h:, :w] = rows[h - 1:h, :w]
    rows[:, w:] = rows[:, w - 1:w]
    return picture


def aac_rate(rate: int) -> int:
    """The AAC encoder's rate for a source rate: the same if AAC has it, else the next one up."""
    return rate if rate in AAC_RATES else next((r for r in AAC_RATES if r > rate), AAC_RATES[-1])


def _add_audio_stream(container, audio: "SourceAudio"):
    layout = AAC_LAYOUTS.get(audio.channels)
    if layout is None:
        raise InputError(f"{audio.path or 'audio'}: {audio.channels} channels; an AAC track takes 1 to 8")
    stream = container.add_stream("aac", rate=aac_rate(audio.rate))
    stream.layout = layout
    return stream


def _mux_audio(container, stream, audio: "SourceAudio", seconds: float) -> None:
    """The first ``seconds`` of ``audio`` (all of it, if shorter) into ``stream``."""
    import av
    import numpy as np

    rate = stream.rate
    samples = audio.samples
    if audio.rate != rate:
        import soxr

        samples = soxr.resample(samples, audio.rate, rate, quality="HQ").astype(np.float32)
    want = int(round(seconds * rate))
    samples = samples[:want]
    chunk = 1024 * 16
    pts = 0
    for i in range(0, len(samples), chunk):
        block = np.ascontiguousarray(samples[i:i + chunk].T, np.float32)    # planar: (channels, n)
        frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=stream.layout.name)
        frame.sample_rate = rate
        frame.pts = pts
        pts += block.shape[1]
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def open_sink(output, *, jpeg_quality: int = 95, audio: Optional["SourceAudio"] = None,
              frame_size: tuple[int, int] = (0, 0), splicer=None, workers: int = 1,
              preset: str = DEFAULT_PRESET, crf: int = DEFAULT_CRF, executor=None,
              video_codec: str = "libx264"):
    """The sink for ``output`` (:func:`output_kind`): a :class:`VideoFile` or a
    :class:`JpegDirectory` (with ``splicer``, a :class:`fastgen.splice.SplicingEncoder`, if given).
    Checks the path (and the quality) before anything is rendered."""
    check_quality(jpeg_quality)
    if output_kind(output) == "video":
        return VideoFile(Path(output), audio, frame_size, preset=preset, crf=crf, executor=executor,
                         workers=workers, codec=video_codec)
    check_video_options(preset, crf, video_codec)
    return JpegDirectory(Path(output), jpeg_quality, splicer=splicer, workers=workers, executor=executor)
