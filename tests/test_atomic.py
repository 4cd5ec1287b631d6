"""fastgen.atomic: outputs appear complete or not at all, with the user's path in every error."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from fastgen import atomic
from fastgen.atomic import building_dir, building_file, write_file
from fastgen.errors import AvatarError, InputError, ModelError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_building_dir_replaces_only_when_complete(tmp_path):
    dest = tmp_path / "out"
    with building_dir(dest, AvatarError, "the pack") as tmp:
        (tmp / "a").write_text("1")
        assert not dest.exists()                    # nothing under the final name meanwhile
    assert (dest / "a").read_text() == "1" and dest.stat().st_mode & 0o777 == 0o777 & ~_umask()
    with pytest.raises(RuntimeError):
        with building_dir(dest, AvatarError, "the pack") as tmp:
            (tmp / "a").write_text("2")
            raise RuntimeError("stop")
    assert (dest / "a").read_text() == "1"          # the previous output survives a failure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]   # and no temporary is left


def test_keep_existing_lets_the_first_builder_win(tmp_path):
    """Two processes building the same cache entry: the first finished one stays, untouched."""
    dest = tmp_path / "entry"
    with building_dir(dest, AvatarError, "the pack", keep_existing=True) as slow:
        (slow / "who").write_text("slow")
        with building_dir(dest, AvatarError, "the pack", keep_existing=True) as fast:
            (fast / "who").write_text("fast")
        first = dest.stat().st_ino
    assert (dest / "who").read_text() == "fast" and dest.stat().st_ino == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]


def test_building_file_is_atomic_with_a_umask_mode(tmp_path):
    dest = tmp_path / "model.onnx"
    with building_file(dest, ModelError, "the model") as tmp:
        assert tmp.suffix == ".onnx" and tmp.parent == tmp_path and tmp != dest
        tmp.write_bytes(b"x")
    assert dest.read_bytes() == b"x" and dest.stat().st_mode & 0o777 == 0o666 & ~_umask()
    with pytest.raises(KeyboardInterrupt):
        with building_file(dest, ModelError, "the model") as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert dest.read_bytes() == b"x" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_errors_name_the_users_path_not_the_temporary(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError) as err:
        with building_file(blocker / "x.mp4", ModelError, "the video"):
            pass
    assert str(err.value).startswith(f"{blocker / 'x.mp4'}: cannot create the video") and ".tmp-" not in str(err.value)
    with pytest.raises(ModelError) as err:
        with building_file(tmp_path / "y.onnx", ModelError, "the model") as tmp:
            raise OSError(28, "No space left on device", str(tmp))
    assert str(err.value) == f"{tmp_path / 'y.onnx'}: cannot write the model (No space left on device)"
    with pytest.raises(OSError, match="not ours"):      # error=None: failures pass through as they are
        with building_file(tmp_path / "z.mp4", None, "the video"):
            raise OSError("not ours")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# ------------------------------------------------------------------ write_file (the frame writer)

@pytest.fixture(params=["compiled", "os calls"])
def writer(request, monkeypatch):
    """write_file through the compiled GIL-free writer, and through the os.open fallback."""
    if request.param == "compiled":
        if atomic._write_new is None:
            pytest.fail("the compiled writer is missing on a POSIX build")
    else:
        monkeypatch.setattr(atomic, "_write_new", None)
    return write_file


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 3 << 20])
def test_write_file_writes_every_byte(writer, tmp_path, size):
    data = os.urandom(size)
    for kind in (bytes, bytearray, memoryview):
        path = tmp_path / f"{kind.__name__}.jpg"
        writer(os.fspath(path), kind(data))
        assert path.read_bytes() == data
        assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_write_file_truncates_and_takes_a_sliced_view(writer, tmp_path):
    path = os.fspath(tmp_path / "f.jpg")
    writer(path, b"x" * 1000)
    writer(path, memoryview(b"0123456789")[2:7])
    with open(path, "rb") as f:
        assert f.read() == b"23456"


def test_write_file_errors_name_the_path(writer, tmp_path):
    missing = os.fspath(tmp_path / "no" / "f.jpg")
    with pytest.raises(FileNotFoundError) as err:
        writer(missing, b"1")
    assert err.value.filename == missing
    with pytest.raises(IsADirectoryError):
        writer(os.fspath(tmp_path), b"1")
    with pytest.raises(ValueError):
        writer(os.fspath(tmp_path / "a\0b"), b"1")
    with pytest.raises(TypeError):
        writer(os.fspath(tmp_path / "g.jpg"), 5)


def test_write_file_from_a_thread_pool(writer, tmp_path):
    blobs = [os.urandom(1000 + 97 * i) for i in range(64)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: writer(os.fspath(tmp_path / f"{i}.jpg"), blobs[i]), range(64)))
    assert all((tmp_path / f"{i}.jpg").read_bytes() == blobs[i] for i in range(64))


def test_building_dir_names_the_users_path_in_passed_through_errors(tmp_path):
    """With ``error=None`` an OSError about a file in the temporary folder (a frame the disk had
    no room for) is re-raised, same class, naming that file under the destination; an OSError
    about anything else (a renderer's input) passes through untouched."""
    dest = tmp_path / "frames"
    with pytest.raises(OSError) as err:
        with building_dir(dest, None, "the frames") as tmp:
            raise OSError(28, "No space left on device", os.path.join(tmp, "frame_00005.jpg"))
    assert err.value.errno == 28 and err.value.filename == os.path.join(str(dest), "frame_00005.jpg")
    with pytest.raises(FileNotFoundError) as err:
        with building_dir(dest, None, "the frames") as tmp:
            write_file(os.path.join(tmp, "gone", "f.jpg"), b"1")
    assert err.value.filename == os.path.join(str(dest), "gone", "f.jpg")
    elsewhere = os.fspath(tmp_path / "input.wav")
    with pytest.raises(PermissionError) as err:
        with building_dir(dest, None, "the frames"):
            raise PermissionError(13, "Permission denied", elsewhere)
    assert err.value.filename == elsewhere
    assert sorted(p.name for p in tmp_path.iterdir()) == []          # no temporary left
