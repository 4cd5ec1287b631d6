"""The video sink: frames + the source's sound -> H.264 (libx264, or a hardware encoder PyAV's
FFmpeg can open here) + AAC, in an MP4, MOV or Matroska file written under a temporary name and
renamed when complete (:mod:`fastgen.atomic`).  :func:`fastgen.sinks.open_sink` picks it for a
video path.  PyAV, numpy and soxr are imported only when a video is written.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Optional

from .atomic import building_file, check_parent
from .errors import InputError
from .timing import FPS
from .workers import ahead

if TYPE_CHECKING:
    from .audio import SourceAudio
    from .frame import Frame

# what PyAV writes with H.264 + AAC, by extension
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
# sample rates the AAC encoder takes; other rates are resampled to the next one up (or 96 kHz)
AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
AAC_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
Progress = Optional[Callable[[int, int], None]]


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
        check_parent(self.path)
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
