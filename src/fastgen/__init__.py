"""fastgen: SyncTalk_2D-style lip-sync video generation, as fast as the hardware allows.

Public API: :class:`Avatar` (templates, crop boxes, models), :class:`Generator` (audio -> frames,
JPEG directories and MP4s) and the :class:`FastgenError` family.  ``Avatar`` and ``Generator``
are imported on first use, so ``import fastgen`` stays cheap for the kernels alone.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import AvatarError, FastgenError, InputError, ModelError

__version__ = "0.1.0"

__all__ = ["Avatar", "AvatarError", "FastgenError", "Generator", "InputError", "ModelError",
           "__version__"]

if TYPE_CHECKING:
    from .avatar import Avatar
    from .engine import Generator


def __getattr__(name: str):
    if name == "Avatar":
        from .avatar import Avatar
        return Avatar
    if name == "Generator":
        from .engine import Generator
        return Generator
    raise AttributeError(f"module 'fastgen' has no attribute {name!r}")
