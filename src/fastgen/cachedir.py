"""Where fastgen keeps what it builds and measures: converted models, the demo avatar, and small
JSON records (fidelity verdicts, batch calibrations, speed checks) keyed by machine and model."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional


def default_cache_dir() -> Path:
    """``$FASTGEN_CACHE`` or ``~/.cache/fastgen``."""
    env = os.environ.get("FASTGEN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fastgen"


def read_record(path: Path) -> Optional[dict]:
    """A JSON record an earlier run stored, marked ``cached``; None if absent or unreadable."""
    if path.is_file():
        try:
            return {**json.loads(path.read_text()), "cached": True}
        except (OSError, ValueError, TypeError):
            pass
    return None


def write_record(path: Path, record: dict, what: str) -> None:
    """Store ``record`` atomically; a read-only cache only costs the measurement again next time."""
    from .atomic import building_file
    from .errors import FastgenError

    try:
        with building_file(path, None, what) as tmp:
            tmp.write_text(json.dumps(record))
    except (OSError, FastgenError):
        pass
