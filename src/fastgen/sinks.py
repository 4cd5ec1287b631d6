"""Where frames go: sinks that consume any iterable of :class:`~fastgen.frame.Frame`.

- :class:`JpegDirectory`: ``frame_00001.jpg`` ... in a directory;
- :class:`VideoFile` (:mod:`fastgen.video`): H.264 video with the source's sound muxed in as
  AAC, in an MP4, MOV or Matroska container (``Mp4File`` is the same class).

Both are written under a temporary name next to the output and renamed only when complete
(:mod:`fastgen.atomic`), so an interrupted or failed run never leaves a half file under the final
name.  :func:`output_kind` is the one rule for what a path means; :func:`open_sink` picks the sink
and checks the path before any work starts.  Frames can come from :meth:`Generator.frames`, a
:class:`~fastgen.stream.Stream`, or a caller's own post-processing of either.

This module imports numpy, PyAV and simplejpeg only when it writes, so the CLI can check an output
path in milliseconds.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Optional

from .atomic import building_dir, check_parent, write_file
from .errors import InputError
from .video import (CONTAINERS, DEFAULT_CRF, DEFAULT_PRESET, HARDWARE_H264, PRESETS, VIDEO_CODECS, Mp4File,
                    Progress, VideoFile, check_video_options, codec_options, hardware_encoders)
from .workers import ahead

if TYPE_CHECKING:
    import numpy as np

    from .audio import SourceAudio
    from .frame import Frame

# the video sink lives in fastgen.video; these names stay importable from here
__all__ = ["CONTAINERS", "DEFAULT_CRF", "DEFAULT_PRESET", "HARDWARE_H264", "PRESETS", "VIDEO_CODECS", "JpegDirectory",
           "Mp4File", "VideoFile", "check_quality", "check_video_options", "codec_options", "hardware_encoders",
           "open_sink", "output_kind"]


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
        check_parent(self.path)
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
            if self.splicer is not None:          # spliced frames: assembled and written in one call
                self.splicer.write_frame(frame, os.path.join(folder, name))
            else:
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
