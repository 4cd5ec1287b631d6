"""Atomic outputs: everything is built under a temporary name beside its target and swapped into
place only when complete, so an interrupted run never leaves a half file or folder that looks
whole, and a previous output is replaced only by a finished one."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_dir_for(dest: Path) -> Path:
    """A fresh hidden directory next to ``dest`` (same filesystem, so the final rename is atomic).

    mkdtemp makes it private (0700); the finished output gets the usual umask-based mode.
    """
    path = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    os.chmod(path, 0o777 & ~_umask())
    return path


def temp_file_for(dest: Path) -> Path:
    """A fresh hidden file name next to ``dest`` (mode from the umask, not mkstemp's 0600)."""
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.tmp-", suffix=dest.suffix, dir=dest.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~_umask())
    return Path(name)


def swap_into_place(tmp: Path, dest: Path) -> None:
    """Rename ``tmp`` to ``dest``; an existing ``dest`` is removed only once ``tmp`` is in place."""
    if not dest.exists() and not dest.is_symlink():
        os.rename(tmp, dest)
        return
    if not dest.is_dir() or dest.is_symlink():
        os.replace(tmp, dest)       # files: one atomic step
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    os.rename(dest, old / "prev")
    try:
        os.rename(tmp, dest)
    except OSError:
        os.rename(old / "prev", dest)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
