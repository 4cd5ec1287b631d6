"""Atomic outputs: everything is built under a temporary name beside its target and swapped into
place only when complete, so an interrupted run never leaves a half file or folder that looks
whole, and a previous output is replaced only by a finished one."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Type

from .errors import FastgenError, InputError

from ._ext import fileio as _fileio

_write_new = _fileio.write_new if _fileio.AVAILABLE else None     # else (Windows) the os calls


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_dir_for(dest: Path) -> Path:
    """A fresh hidden directory next to ``dest`` (same filesystem, so the final rename is atomic).

    mkdtemp makes it private (0700); the finished output gets the usual umask-based mode.
    """
    path = Path(tempfile.mkdtemp(prefix=temp_prefix(dest), dir=dest.parent))
    os.chmod(path, 0o777 & ~_umask())
    return path


def temp_file_for(dest: Path) -> Path:
    """A fresh hidden file name next to ``dest`` (mode from the umask, not mkstemp's 0600)."""
    fd, name = tempfile.mkstemp(prefix=temp_prefix(dest), suffix=dest.suffix, dir=dest.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~_umask())
    return Path(name)


def temp_prefix(dest: Path) -> str:
    """The name every temporary of ``dest`` starts with (files and folders alike)."""
    return f".{Path(dest).name}.tmp-"


def leftover_temporaries(dest: Path) -> list:
    """Temporaries of ``dest`` still beside it: what a process killed mid-write left behind."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return []
    return sorted(p for p in dest.parent.iterdir() if p.name.startswith(temp_prefix(dest)))


def discard_leftovers(dest: Path) -> int:
    """Remove :func:`leftover_temporaries` of ``dest`` (only safe when no other process is
    writing ``dest``, e.g. before a batch retries a job its dead worker had started)."""
    found = leftover_temporaries(dest)
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return len(found)


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


def _cannot(dest: Path, what: str, exc: OSError, verb: str = "write") -> str:
    return f"{dest}: cannot {verb} {what} ({exc.strerror or exc})"


@contextmanager
def _building(dest: Path, error: Optional[Type[FastgenError]], what: str, make_temp, finish,
              discard) -> Iterator[Path]:
    """The shared frame of :func:`building_dir` and :func:`building_file`: make the temporary
    beside ``dest``, yield it, ``finish(tmp, dest)`` on success, ``discard(tmp)`` whatever happens."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp(dest)
    except OSError as exc:
        raise InputError(_cannot(dest, what, exc, "create")) from None
    try:
        yield tmp
        finish(tmp, dest)
    except OSError as exc:
        if error is None:
            raise _named_for_dest(exc, tmp, dest) from None
        raise error(_cannot(dest, what, exc)) from None
    finally:
        if tmp.exists():
            discard(tmp)


def _named_for_dest(exc: OSError, tmp: Path, dest: Path) -> OSError:
    """``exc`` as it would read for ``dest``: a file inside ``tmp`` (a frame the disk had no room
    for) is named under ``dest``; other errors (a renderer's input) are left as they are."""
    name = exc.filename
    if not isinstance(name, str) or not (name == str(tmp) or name.startswith(str(tmp) + os.sep)):
        return exc
    return type(exc)(exc.errno, exc.strerror, str(dest) + name[len(str(tmp)):])


def _keep_first(tmp: Path, dest: Path) -> None:
    try:
        os.rename(tmp, dest)     # fails if dest appeared meanwhile: theirs is kept
    except OSError:
        if not dest.is_dir():
            raise


def building_dir(dest: Path, error: Optional[Type[FastgenError]], what: str, *,
                 keep_existing: bool = False):
    """``with building_dir(dest, AvatarError, "the pack") as tmp:`` fill ``tmp``; on success it
    replaces ``dest``; on any failure ``tmp`` is removed and ``dest`` is left as it was (an
    ``OSError`` becomes ``error`` with a one-line message naming ``dest``, never the temporary name;
    with ``error=None`` exceptions pass through unchanged, for callers whose failures may come
    from elsewhere, like a renderer's reading of its inputs).

    ``keep_existing=True``: if ``dest`` exists when ``tmp`` is complete (another process built it
    meanwhile), the first one wins: ``tmp`` is discarded and ``dest`` never vanishes, not even
    for an instant.
    """
    return _building(dest, error, what, temp_dir_for, _keep_first if keep_existing else swap_into_place,
                     lambda tmp: shutil.rmtree(tmp, ignore_errors=True))


def building_file(dest: Path, error: Optional[Type[FastgenError]], what: str):
    """``with building_file(dest, ModelError, "the model") as tmp:`` write ``tmp`` (a fresh
    name beside ``dest`` with ``dest``'s suffix and a umask mode); on success it atomically
    replaces ``dest``; on any failure it is removed.  ``OSError`` becomes ``error`` naming ``dest``
    (unless ``error`` is None, as for :func:`building_dir`)."""
    return _building(dest, error, what, temp_file_for, os.replace, Path.unlink)


def write_file(path: str, data: bytes) -> None:
    """``data`` as a new file ``path`` (truncated if it exists), in one GIL-free call where the
    compiled writer exists (POSIX): the JPEG sink writes every frame so, from several workers."""
    if _write_new is not None:
        _write_new(os.fsencode(path), data)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def check_parent(output: Path) -> None:
    """The folder an output goes into exists and is writable (checked before any work starts)."""
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{output}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{output}: the folder {parent} is not writable")
