"""fastgen: SyncTalk_2D-style lip-sync video generation, as fast as the hardware allows."""
from __future__ import annotations

from .errors import AvatarError, FastgenError, InputError, ModelError

__version__ = "0.1.0"

__all__ = ["AvatarError", "FastgenError", "InputError", "ModelError", "__version__"]
