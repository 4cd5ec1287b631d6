"""Where frames go: a JPEG directory or an H.264 MP4 with the speech muxed in as AAC.

Both are written under a temporary name next to the output and renamed only when complete, so an
interrupted or failed run never leaves a half file under the final name.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .audio import SAMPLE_RATE
from .atomic import swap_into_place, temp_dir_for, temp_file_for
from .errors import InputError

FPS = 25


def _check_parent(output: Path) -> None:
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{output}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{output}: the folder {parent} is not writable")


def _encode_jpeg(quality: int) -> Callable[[int, np.ndarray], bytes]:
    import simplejpeg

    def encode(j: int, frame: np.ndarray) -> bytes:
        return simplejpeg.encode_jpeg(frame, quality=quality, colorspace="BGR", colorsubsampling="420")

    return encode


def render(gen, wav: np.ndarray, output: Path, *, count: Optional[int], jpeg_quality: int,
           progress: Optional[Callable[[int, int], None]]) -> dict:
    if not 1 <= int(jpeg_quality) <= 100:
        raise InputError(f"jpeg_quality must be 1..100, got {jpeg_quality}")
    _check_parent(output)
    is_mp4 = output.suffix.lower() in (".mp4", ".m4v", ".mov")
    if output.exists() and (is_mp4 == output.is_dir()):
        kind = "directory" if output.is_dir() else "file"
        raise InputError(f"{output}: exists and is a {kind}; choose another output name")
    if output.is_dir() and any(not (p.name.startswith("frame_") and p.suffix == ".jpg")
                               for p in output.iterdir()):
        # replacing a folder deletes it: only ever replace an earlier frames folder
        raise InputError(f"{output}: exists and holds files other than frame_*.jpg; "
                         "choose another output name")
    rows = gen._feature_rows(wav, 0, count)      # mel once; frames [rows.lo, rows.hi)
    tmp = temp_dir_for(output) if not is_mp4 else temp_file_for(output)
    t0 = time.perf_counter()
    try:
        if is_mp4:
            n = _write_mp4(gen, wav, rows, tmp, progress)
        else:
            n = _write_jpegs(gen, rows, tmp, jpeg_quality, progress)
        swap_into_place(tmp, output)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
    seconds = time.perf_counter() - t0
    return {"frames": n, "seconds": round(seconds, 3), "fps": round(n / seconds, 2) if seconds else 0.0,
            "output": str(output)}


def _write_jpegs(gen, rows, tmp: Path, quality: int, progress) -> int:
    n, total = 0, rows.hi - rows.lo
    # JPEG encoding runs in the engine's post-processing workers, off the caller's thread
    for n, data in enumerate(gen._pipeline(rows, range(rows.lo, rows.hi), _encode_jpeg(quality)), 1):
        (tmp / f"frame_{n:05d}.jpg").write_bytes(data)
        if progress:
            progress(n, total)
    return n


def _write_mp4(gen, wav, rows, tmp: Path, progress) -> int:
    import av

    w, h = gen.avatar.frame_size
    container = av.open(str(tmp), mode="w", format="mp4")
    n = 0
    try:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height = w + (w & 1), h + (h & 1)   # yuv420p needs even sizes
        video.pix_fmt = "yuv420p"
        video.options = {"crf": "18", "preset": "veryfast"}
        sound = container.add_stream("aac", rate=SAMPLE_RATE)
        sound.layout = "mono"
        total = rows.hi - rows.lo
        for n, frame in enumerate(gen._pipeline(rows, range(rows.lo, rows.hi), None), 1):
            if frame.shape[1] != video.width or frame.shape[0] != video.height:
                frame = np.pad(frame, ((0, video.height - h), (0, video.width - w), (0, 0)), mode="edge")
            vf = av.VideoFrame.from_ndarray(frame, format="bgr24")
            vf.pts = n - 1
            for packet in video.encode(vf):
                container.mux(packet)
            if progress:
                progress(n, total)
        for packet in video.encode():
            container.mux(packet)
        _mux_audio(container, sound, wav[: int(round(n * SAMPLE_RATE / FPS))])
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
