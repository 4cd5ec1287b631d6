"""Where fastgen keeps what it builds: converted models and the demo avatar."""
from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$FASTGEN_CACHE`` or ``~/.cache/fastgen``."""
    env = os.environ.get("FASTGEN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fastgen"
