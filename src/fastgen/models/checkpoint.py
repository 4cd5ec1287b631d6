"""Read ``torch.save`` checkpoints without torch and without running pickle code.

A torch zip checkpoint is ``<prefix>/data.pkl`` (a pickle of the saved object) plus one raw
little-endian byte file per storage, ``<prefix>/data/<key>``. The pickle names a handful of torch
globals to rebuild tensors; :class:`_RestrictedUnpickler` maps exactly those to numpy-based
stand-ins and refuses every other global, so a malicious file can never reach ``os.system`` & co.
"""
from __future__ import annotations

import collections
import functools
import io
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError

# torch storage class name -> numpy dtype (little-endian; flipped when byteorder says big).
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "DoubleStorage": np.dtype("<f8"),
    "LongStorage": np.dtype("<i8"),
}
# Keys under which training scripts commonly wrap the state dict, tried in this order.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "generator", "params")
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # pickled torch magic number


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` & co: only carries the dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    """numpy twin of ``torch._utils._rebuild_tensor_v2``: a strided view, copied to own memory."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or any(s < 0 for s in size + stride) or storage_offset < 0:
        raise _BadCheckpoint(f"invalid tensor layout size={size} stride={stride}")
    if 0 in size:
        return np.zeros(size, dtype=storage.dtype.newbyteorder("="))
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise _BadCheckpoint(f"tensor of size {size} runs past its storage ({storage.size} items)")
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:], shape=size, strides=tuple(s * item for s in stride), writeable=False
    )
    return np.array(view, dtype=storage.dtype.newbyteorder("="), order="C")  # copy; keeps 0-d as 0-d


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _BadCheckpoint(Exception):
    """Internal: the checkpoint's content is inconsistent (turned into ModelError with the path)."""

    label = "corrupt checkpoint"


class _Unsupported(_BadCheckpoint):
    label = "unsupported checkpoint"


class _RefusedGlobal(Exception):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


# Factories, so each lookup hands out a fresh object: a crafted BUILD opcode can then not alter
# module-level state seen by later loads.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): lambda: functools.partial(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): lambda: functools.partial(_rebuild_parameter),
    **{("torch", name): functools.partial(_StorageType, name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, big_endian: bool):
        super().__init__(io.BytesIO(data))
        self._archive, self._prefix, self._big_endian = archive, prefix, big_endian
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str):
        # Called for every GLOBAL/STACK_GLOBAL/INST/OBJ opcode, before anything is called.
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None and module == "torch" and name.endswith("Storage"):
            raise _Unsupported(f"tensor type {module}.{name} is not supported "
                                 "(supported: float32, float16, float64, int64)")
        if factory is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return factory()

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _BadCheckpoint(f"unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise _BadCheckpoint(f"unsupported storage type {storage_type!r:.80}")
        key = str(key)
        if key not in self._storages:
            dtype = storage_type.dtype.newbyteorder(">") if self._big_endian else storage_type.dtype
            try:
                raw = self._archive.read(f"{self._prefix}data/{key}")
            except KeyError:
                raise _BadCheckpoint(f"storage {key} is missing from the archive") from None
            if len(raw) < int(numel) * dtype.itemsize:
                raise _BadCheckpoint(f"storage {key} is truncated")
            self._storages[key] = np.frombuffer(raw, dtype=dtype, count=int(numel))
        return self._storages[key]


def read_torch_pickle(path: str | Path) -> Any:
    """The object saved by ``torch.save`` with tensors as numpy arrays (safe: no code runs)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read checkpoint ({exc.strerror or exc})") from None
    if not zipfile.is_zipfile(path):
        if head.startswith(_LEGACY_MAGIC):
            raise ModelError(
                f"{path}: legacy (pre-1.6, non-zip) torch checkpoint; re-save it with a newer torch: "
                "torch.save(torch.load(old), new)"
            )
        if head[:2] == b"PK":
            raise ModelError(f"{path}: truncated or corrupt checkpoint (broken zip archive)")
        what = "a bare pickle" if head[:1] == b"\x80" else "unrecognised content"
        raise ModelError(f"{path}: not a PyTorch checkpoint ({what}; expected a torch.save zip archive)")
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
            if len(pickles) != 1:
                raise _BadCheckpoint("no <name>/data.pkl record in the zip archive")
            prefix = pickles[0][: -len("data.pkl")]
            names = set(archive.namelist())
            byteorder = archive.read(prefix + "byteorder") if prefix + "byteorder" in names else b"little"
            unpickler = _RestrictedUnpickler(
                archive.read(pickles[0]), archive, prefix, byteorder.strip() == b"big"
            )
            return unpickler.load()
    except _RefusedGlobal as exc:
        hint = "; save model.state_dict(), not the model" if exc.name.startswith("torch.") else ""
        raise ModelError(
            f"{path}: refusing to load global '{exc.name}' (only tensors and plain containers "
            f"are allowed in a checkpoint{hint})"
        ) from None
    except _BadCheckpoint as exc:
        raise ModelError(f"{path}: {exc.label}: {exc}") from None
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, zlib.error) as exc:
        raise ModelError(f"{path}: truncated or corrupt checkpoint ({exc})") from None
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, OSError) as exc:
        raise ModelError(f"{path}: corrupt checkpoint ({type(exc).__name__}: {exc})") from None


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, dict) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()))


def load_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """The state dict in a ``torch.save`` checkpoint: a bare one or one wrapped in a dict."""
    obj = read_torch_pickle(path)
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if _is_state_dict(obj.get(key)):
                return dict(obj[key])
        nested = [k for k, v in obj.items() if _is_state_dict(v)]
        if len(nested) == 1:
            return dict(obj[nested[0]])
        keys = ", ".join(map(repr, list(obj)[:8]))
        raise ModelError(f"{path}: no state_dict found in the checkpoint (top-level keys: {keys})")
    raise ModelError(f"{path}: the checkpoint holds a {type(obj).__name__}, not a state_dict")
