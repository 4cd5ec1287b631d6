"""Where frames go: sinks that consume any iterable of :class:`~fastgen.frame.Frame`.

- :class:`JpegDirectory`: ``frame_00001.jpg`` ... in a directory;
- :class:`Mp4File`: H.264 video with the speech muxed in as AAC.

Both are written under a temporary name next to the output and renamed only when complete
(:mod:`fastgen.atomic`), so an interrupted or failed run never leaves a half file under the final
name.  :func:`open_sink` picks one for an output path and checks the path before any work starts.
Frames can come from :meth:`Generator.frames`, a :class:`~fastgen.stream.Stream`, or a caller's
own post-processing of either.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from .atomic import building_dir, building_file
from .errors import InputError
from .frame import Frame
from .timing import FPS, SAMPLE_RATE

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov")
Progress = Optional[Callable[[int, int], None]]


def _check_parent(output: Path) -> None:
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{output}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{output}: the folder {parent} is not writable")


class JpegDirectory:
    """Writes frames as ``frame_00001.jpg`` ... (quality ``quality``, 4:2:0) into ``path``.

    An existing directory is replaced only if it holds nothing but earlier frames.
    """

    def __init__(self, path, quality: int = 95):
        self.path = Path(path)
        if not 1 <= int(quality) <= 100:
            raise InputError(f"jpeg_quality must be 1..100, got {quality}")
        self.quality = int(quality)
        _check_parent(self.path)
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"{self.path}: exists and is a file; choose another output name")
        if self.path.is_dir() and any(not (p.name.startswith("frame_") and p.suffix == ".jpg")
                                      for p in self.path.iterdir()):
            # replacing a folder deletes it: only ever replace an earlier frames folder
            raise InputError(f"{self.path}: exists and holds files other than frame_*.jpg; "
                             "choose another output name")

    @staticmethod
    def encode_image(image: np.ndarray, quality: int = 95) -> bytes:
        """One frame as the JPEG this sink writes (4:2:0, libjpeg-turbo via simplejpeg)."""
        import simplejpeg

        return simplejpeg.encode_jpeg(image, quality=quality, colorspace="BGR", colorsubsampling="420")

    def write(self, frames: Iterable[Frame], *, total: Optional[int] = None, progress: Progress = None) -> int:
        """Consume ``frames``; returns how many were written."""
        n = 0
        with building_dir(self.path, None, "the frames") as tmp:
            for n, frame in enumerate(frames, 1):
                (tmp / f"frame_{n:05d}.jpg").write_bytes(self.encode_image(frame.image, self.quality))
                if progress:
                    progress(n, total if total is not None else n)
        return n


class Mp4File:
    """Writes frames as H.264 (CRF 18, yuv420p) at 25 fps with ``audio`` muxed in as AAC.

    ``audio`` is float32 16 kHz mono; the part that the written frames cover is muxed.
    """

    def __init__(self, path, audio: np.ndarray, frame_size: tuple[int, int]):
        self.path = Path(path)
        self.audio = audio
        self.frame_size = tuple(frame_size)
        _check_parent(self.path)
        if self.path.is_dir():
            raise InputError(f"{self.path}: exists and is a directory; choose another output name")

    def write(self, frames: Iterable[Frame], *, total: Optional[int] = None, progress: Progress = None) -> int:
        """Consume ``frames``; returns how many were written."""
        import av

        w, h = self.frame_size
        n = 0
        with building_file(self.path, None, "the video") as tmp:
            container = av.open(str(tmp), mode="w", format="mp4")
            try:
                video = container.add_stream("libx264", rate=FPS)
                video.width, video.height = w + (w & 1), h + (h & 1)   # yuv420p needs even sizes
                video.pix_fmt = "yuv420p"
                video.options = {"crf": "18", "preset": "veryfast"}
                sound = container.add_stream("aac", rate=SAMPLE_RATE)
                sound.layout = "mono"
                for n, frame in enumerate(frames, 1):
                    image = frame.image
                    if image.shape[1] != video.width or image.shape[0] != video.height:
                        image = np.pad(image, ((0, video.height - h), (0, video.width - w), (0, 0)),
                                       mode="edge")
                    vf = av.VideoFrame.from_ndarray(image, format="bgr24")
                    vf.pts = n - 1
                    for packet in video.encode(vf):
                        container.mux(packet)
                    if progress:
                        progress(n, total if total is not None else n)
                for packet in video.encode():
                    container.mux(packet)
                _mux_audio(container, sound, self.audio[: int(round(n * SAMPLE_RATE / FPS))])
            finally:
                container.close()
        return n


def _mux_audio(container, stream, wav: np.ndarray) -> None:
    import av

    chunk = 1024 * 16
    pts = 0
    for i in range(0, len(wav), chunk):
        block = np.ascontiguousarray(wav[i:i + chunk], np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = pts
        pts += block.shape[1]
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def open_sink(output: Path, *, jpeg_quality: int = 95, audio: Optional[np.ndarray] = None,
              frame_size: tuple[int, int] = (0, 0)):
    """The sink for ``output``: an :class:`Mp4File` for ``.mp4/.m4v/.mov``, else a
    :class:`JpegDirectory`.  Checks the path (and the quality) before anything is rendered."""
    output = Path(output)
    if not 1 <= int(jpeg_quality) <= 100:
        raise InputError(f"jpeg_quality must be 1..100, got {jpeg_quality}")
    if output.suffix.lower() in VIDEO_SUFFIXES:
        return Mp4File(output, audio if audio is not None else np.zeros(0, np.float32), frame_size)
    return JpegDirectory(output, jpeg_quality)
