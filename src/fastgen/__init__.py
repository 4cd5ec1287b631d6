"""fastgen: SyncTalk_2D-style lip-sync video generation, as fast as the hardware allows.

Public API (``fastgen.<name>``; classes and submodules load on first use, so ``import fastgen``
stays cheap)::

    Avatar          an avatar's templates, crop boxes, crops and models (Avatar.open)
    Generator       audio -> Frame objects; render() to JPEGs or an MP4; stream()
    Frame           one output frame: index, pts (s), image (uint8 BGR), stream facts
    FrameStep       the per-frame step: fill the generator input, paste its output
    FeatureTable    a clip's feature rows and audio windows (encoder run lazily)
    Stream          push audio, pull frames as soon as they exist
    EngineConfig    sessions, threads, batch and workers a Generator uses
    JpegDirectory   sink: frames -> frame_00001.jpg ...
    VideoFile       sink: frames + audio -> H.264 + AAC (.mp4, .mov, .mkv); alias Mp4File
    open_session    the inference seam (fastgen.runtime)
    FastgenError    base of every user-facing error: InputError, ModelError, AvatarError

    submodules: audio, image, features, frame, scheduler, sinks, stream, runtime, timing,
                avatar, models, demo, benchmarks, atomic, batch (render_many: job lists, Ray)

Example::

    import fastgen
    gen = fastgen.Generator(fastgen.demo.avatar())
    for frame in gen.frames(fastgen.demo.audio(), count=25):
        ...   # frame.index, frame.pts, frame.image
    gen.render("speech.wav", "out.mp4")

The rules fastgen follows (audio windows, frame count, template order, crops, mask, paste) are
written down in the repository's ``docs/semantics.md``.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__
from .errors import AvatarError, FastgenError, InputError, ModelError

# public name -> module that defines it (imported on first access)
_LAZY = {
    "Avatar": "avatar", "Generator": "engine", "EngineConfig": "engine", "Frame": "frame",
    "FrameStep": "frame", "FeatureTable": "features", "Stream": "stream",
    "JpegDirectory": "sinks", "Mp4File": "video", "VideoFile": "video", "open_session": "runtime",
}
_SUBMODULES = ("atomic", "audio", "avatar", "batch", "benchmarks", "cli", "console", "demo", "engine",
               "features", "frame", "image", "models", "runtime", "scheduler", "sinks", "stream", "timing",
               "video", "workers")

__all__ = sorted(["AvatarError", "FastgenError", "InputError", "ModelError", "__version__",
                  *_LAZY, *_SUBMODULES])

if TYPE_CHECKING:
    from .avatar import Avatar
    from .engine import EngineConfig, Generator
    from .features import FeatureTable
    from .frame import Frame, FrameStep
    from .runtime import open_session
    from .sinks import JpegDirectory
    from .video import Mp4File, VideoFile
    from .stream import Stream


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'fastgen' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
