"""Avatars: the three layouts, crop boxes and crops, template order, packs, bad input, the demo.

Crops are compared with OpenCV (``cv2.resize(..., INTER_CUBIC)``) to within 1 grey level, the
tolerance of the resize kernel itself; everything else is exact.
"""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import simplejpeg

from avatar_builders import (H, W, box_for, draw_frame, encode, landmarks_text, make_dataset,
                             make_package, read_barcode, write_models)
from references import reference_order
from fastgen import Avatar, AvatarError, FastgenError, InputError, cli, demo
from fastgen.avatar import (CROPS, FRAMES, INDEX, MANIFEST, PACK_VERSION, box_from_landmarks,
                            parse_landmarks, prepare, template_order)


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> tuple[Path, Path]:
    return write_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "ds", 5)


def cv2_crop(frame: np.ndarray, box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return cv2.resize(frame[y0:y1, x0:x1], (328, 328), interpolation=cv2.INTER_CUBIC)


def assert_crops_match_cv2(avatar: Avatar) -> None:
    for k in range(len(avatar)):
        crop = avatar.crop(k)
        assert crop.shape == (328, 328, 3) and crop.dtype == np.uint8
        diff = np.abs(crop.astype(int) - cv2_crop(avatar.frame(k), avatar.box(k)).astype(int))
        assert diff.max() <= 1, f"template {k}: crop differs from cv2 by {diff.max()}"


def one_line_error(excinfo, *needles: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


# --------------------------------------------------------------------------- template order

@pytest.mark.parametrize("templates", [2, 3, 6, 7, 40])
def test_order_matches_reference_loop(templates):
    assert template_order(templates, 500) == reference_order(templates, 500)


def test_order_for_six_templates_is_the_documented_ping_pong():
    assert template_order(6, 13) == [1, 2, 3, 4, 5, 4, 3, 2, 1, 0, 1, 2, 3]
    assert template_order(2, 5) == [1, 0, 1, 0, 1]
    assert template_order(3, 6) == [1, 2, 1, 0, 1, 2]


def test_single_template_uses_template_zero_every_frame(tmp_path):
    # the reference loop would index template 1 of a one-template avatar (past the end)
    assert reference_order(1, 3) == [1, 0, 1]
    av = Avatar.open(make_dataset(tmp_path / "one", 1))
    assert len(av) == 1 and av.order(5) == [0, 0, 0, 0, 0]
    assert av.order(0) == []


@pytest.mark.parametrize("templates", [2, 3, 6])
def test_avatar_order_uses_its_template_count(tmp_path, templates):
    av = Avatar.open(make_dataset(tmp_path / "ds", templates))
    assert av.order(30) == reference_order(templates, 30)


# --------------------------------------------------------------------------- landmarks and boxes

def test_box_rule_truncates_float32_landmarks(tmp_path):
    path = tmp_path / "0.lms"
    pts = np.full((110, 2), 50.0)
    pts[1, 0], pts[52, 1], pts[31, 0] = 20.999, 30.5, 99.999999   # float32(99.999999) == 100.0
    path.write_text("".join(f"{x!r} {y!r}\n" for x, y in pts.tolist()))
    lms = parse_landmarks(path)
    assert lms.dtype == np.int32 and lms.shape == (110, 2)
    assert box_from_landmarks(lms) == (20, 30, 100, 110)


def test_dataset_layout(dataset):
    av = Avatar.open(dataset)
    assert av.layout == "dataset" and len(av) == 5 and av.frame_size == (W, H)
    for k in range(5):
        assert av.box(k) == box_for(k)
        frame = av.frame(k)
        assert frame.shape == (H, W, 3) and frame.dtype == np.uint8
        expected = simplejpeg.decode_jpeg((dataset / "full_body_img" / f"{k}.jpg").read_bytes(), colorspace="BGR")
        assert np.array_equal(frame, expected)
        assert np.array_equal(frame, cv2.imread(str(dataset / "full_body_img" / f"{k}.jpg")))  # BGR like OpenCV
        assert read_barcode(frame) == k
    assert_crops_match_cv2(av)
    assert av.generator_path is None and av.audio_encoder_path is None


def test_returned_arrays_are_read_only(dataset):
    av = Avatar.open(dataset)
    with pytest.raises(ValueError):
        av.frame(0)[0, 0, 0] = 1
    with pytest.raises(ValueError):
        av.crop(0)[0, 0, 0] = 1
    with pytest.raises(IndexError):
        av.frame(5)


def test_dataset_models_found_in_directory(dataset, models):
    shutil.copyfile(models[0], dataset / "generator.onnx")
    shutil.copyfile(models[1], dataset / "audio_encoder.onnx")
    av = Avatar.open(dataset)
    assert av.generator_path == dataset / "generator.onnx"
    assert av.audio_encoder_path == dataset / "audio_encoder.onnx"
    assert av.mode == "ave" and av.weights == "synthetic"


def test_model_keywords_override_and_are_checked(dataset, models):
    av = Avatar.open(dataset, generator=models[0], audio_encoder=models[1])
    assert av.generator_path == models[0] and av.audio_encoder_path == models[1]
    with pytest.raises(FastgenError):   # an encoder where a generator belongs
        Avatar.open(dataset, generator=models[1])


# --------------------------------------------------------------------------- exported package

def test_package_layout_pairs_one_based_frames_with_zero_based_keys(tmp_path, models):
    root = make_package(tmp_path / "pkg", 5, models=models)
    rects = json.loads((root / "cache" / "crop_rectangles.json").read_text())
    av = Avatar.open(root)
    assert av.layout == "package" and len(av) == 5
    assert av.generator_path == root / "models" / "generator.onnx"
    assert av.audio_encoder_path == root / "models" / "audio_encoder.onnx"
    for k in range(5):
        assert list(av.box(k)) == rects[str(k)]["rect"]
        expected = simplejpeg.decode_jpeg((root / "full_body_img" / f"{k + 1}.jpg").read_bytes(), colorspace="BGR")
        assert np.array_equal(av.frame(k), expected)
        assert read_barcode(av.frame(k)) == k
        # the bright "mouth" square is at the centre of the crop, never magenta pre-cut data
        centre = av.crop(k)[154:174, 154:174].astype(int)
        assert centre.min() > 200
    assert_crops_match_cv2(av)


def test_package_landmark_offset_is_found_by_boxes_not_names(tmp_path):
    # landmark files 1..K plus a stray 0.lms with a plausible but wrong box: trusting the
    # file names (template k <-> k.lms) would give template 0 the stray box
    stray = (5, 5, 65, 65)
    root = make_package(tmp_path / "pkg", 4, lms_names=[1, 2, 3, 4], extra_landmarks={0: stray})
    av = Avatar.open(root)
    assert [av.box(k) for k in range(4)] == [box_for(k) for k in range(4)]
    assert av.source["landmark_base"] == 1
    assert [read_barcode(av.frame(k)) for k in range(4)] == [0, 1, 2, 3]


def test_package_rects_keyed_differently_still_pair_by_box(tmp_path):
    root = make_package(tmp_path / "pkg", 4, rect_key_base=1)
    av = Avatar.open(root)
    assert [av.box(k) for k in range(4)] == [box_for(k) for k in range(4)]


def test_package_frame_without_a_crop_rectangle_is_refused(tmp_path):
    root = make_package(tmp_path / "pkg", 4)
    (root / "full_body_img" / "5.jpg").write_bytes(encode(draw_frame(4, box_for(4))))
    with pytest.raises(AvatarError) as e:
        Avatar.open(root)
    one_line_error(e, "full_body_img/5.jpg", "no crop rectangle")


def test_dataset_numbered_from_one_pairs_by_order(tmp_path):
    root = make_dataset(tmp_path / "ds", 4, frame_base=1)
    av = Avatar.open(root)
    assert [av.box(k) for k in range(4)] == [box_for(k) for k in range(4)]
    assert [read_barcode(av.frame(k)) for k in range(4)] == [0, 1, 2, 3]


def test_package_with_rects_contradicting_landmarks_is_refused(tmp_path):
    root = make_package(tmp_path / "pkg", 4)
    rects_file = root / "cache" / "crop_rectangles.json"
    rects = json.loads(rects_file.read_text())
    rects["2"]["rect"] = [1, 2, 3, 4]
    rects_file.write_text(json.dumps(rects))
    with pytest.raises(AvatarError) as e:
        Avatar.open(root)
    one_line_error(e, "crop_rectangles.json", "'2'")


# --------------------------------------------------------------------------- bad input

def test_missing_directory(tmp_path):
    with pytest.raises(AvatarError) as e:
        Avatar.open(tmp_path / "nope")
    one_line_error(e, str(tmp_path / "nope"), "no such")


def test_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AvatarError) as e:
        Avatar.open(tmp_path / "empty")
    one_line_error(e, "empty")


def test_unrelated_directory(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "readme.txt").write_text("hi")
    with pytest.raises(AvatarError) as e:
        Avatar.open(tmp_path / "x")
    one_line_error(e, "not an avatar")


def test_a_file_is_not_an_avatar(tmp_path):
    (tmp_path / "f.jpg").write_bytes(b"x")
    with pytest.raises(AvatarError) as e:
        Avatar.open(tmp_path / "f.jpg")
    one_line_error(e, "f.jpg", "not a directory")


def test_empty_frame_directory(dataset):
    for p in (dataset / "full_body_img").iterdir():
        p.unlink()
    with pytest.raises(AvatarError) as e:
        Avatar.open(dataset)
    one_line_error(e, "full_body_img", "no frames")


def test_missing_landmark_directory(dataset):
    shutil.rmtree(dataset / "landmarks")
    with pytest.raises(AvatarError) as e:
        Avatar.open(dataset)
    one_line_error(e, "landmarks", "missing")


@pytest.mark.parametrize("victim", ["0.jpg", "2.jpg", "4.jpg"])
def test_missing_frame_file(dataset, victim):
    (dataset / "full_body_img" / victim).unlink()
    with pytest.raises(AvatarError) as e:
        Avatar.open(dataset)
    one_line_error(e, f"full_body_img/{victim}", "missing frame")


@pytest.mark.parametrize("victim", ["0.lms", "3.lms", "4.lms"])
def test_missing_landmark_file(dataset, victim):
    (dataset / "landmarks" / victim).unlink()
    with pytest.raises(AvatarError) as e:
        Avatar.open(dataset)
    one_line_error(e, f"landmarks/{victim}", "missing landmark file")


def test_missing_landmark_file_in_package(tmp_path):
    root = make_package(tmp_path / "pkg", 4)
    (root / "landmarks" / "3.lms").unlink()
    with pytest.raises(AvatarError) as e:
        Avatar.open(root)
    one_line_error(e, "landmarks/3.lms", "missing")


def test_missing_frame_in_package(tmp_path):
    root = make_package(tmp_path / "pkg", 4)
    (root / "full_body_img" / "1.jpg").unlink()
    with pytest.raises(AvatarError) as e:
        Avatar.open(root)
    one_line_error(e, "full_body_img/1.jpg", "missing frame")


@pytest.mark.parametrize("lines", [109, 111, 68])
def test_wrong_number_of_points(dataset, lines):
    text = landmarks_text(box_for(2)).splitlines()
    text = (text * 2)[:lines]
    (dataset / "landmarks" / "2.lms").write_text("\n".join(text) + "\n")
    with pytest.raises(AvatarError) as e:
        Avatar.open(dataset)
    one_line_error(e, "landmarks/2.lms", f"{lines} landmark points", "110")


@pytest.mark.parametrize("bad_line", ["12.5 abc", "nan 3", "1 2 3", "1,5 2"])
def test_non_numeric_landmarks(dataset, bad_line):
    lines = landmarks_text(box_for(1)).splitlines()
    lines[7] = bad_line
    (dataset / "landmarks" / "1.lms").write_text("\n".join(lines) + "\n")
    with pytest.raises(AvatarError) as e:
        Avatar.open(dataset)
    one_line_error(e, "landmarks/1.lms", "line 8")


def test_binary_landmark_file(dataset):
    (dataset / "landmarks" / "1.lms").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(AvatarError) as e:
        Avatar.open(dataset)
    one_line_error(e, "landmarks/1.lms")


@pytest.mark.parametrize("box", [(100, 20, 170, 90),    # right edge past 160
                                 (-3, 10, 60, 73),      # left of the frame
                                 (40, 70, 100, 130)])   # below the frame
def test_crop_box_outside_frame(dataset, box):
    (dataset / "landmarks" / "3.lms").write_text(landmarks_text(box))
    with pytest.raises(AvatarError) as e:
        Avatar.open(dataset)
    one_line_error(e, "landmarks/3.lms", "outside the 160x120 frame")


@pytest.mark.parametrize("box", [(50, 20, 50, 20), (60, 20, 40, 0)])
def test_zero_size_crop_box(dataset, box):
    (dataset / "landmarks" / "3.lms").write_text(landmarks_text(box))
    with pytest.raises(AvatarError) as e:
        Avatar.open(dataset)
    one_line_error(e, "landmarks/3.lms", "zero size")


def test_mixed_frame_sizes(dataset):
    (dataset / "full_body_img" / "3.jpg").write_bytes(encode(draw_frame(3, box_for(3), (176, 120))))
    with pytest.raises(AvatarError) as e:
        Avatar.open(dataset)
    one_line_error(e, "full_body_img/3.jpg", "176x120", "160x120")


def test_frame_that_is_not_a_jpeg(dataset):
    (dataset / "full_body_img" / "2.jpg").write_bytes(b"PNG? no, just text")
    with pytest.raises(AvatarError) as e:
        Avatar.open(dataset)
    one_line_error(e, "full_body_img/2.jpg", "JPEG")


# --------------------------------------------------------------------------- packs

@pytest.fixture
def pack(tmp_path, models) -> Path:
    src = make_dataset(tmp_path / "ds", 6)
    prepare(src, tmp_path / "avatar.fgpack", generator=models[0], audio_encoder=models[1]).close()
    return tmp_path / "avatar.fgpack"


def test_pack_round_trip(pack, tmp_path):
    src = Avatar.open(tmp_path / "ds")
    av = Avatar.open(pack)
    assert av.layout == "pack" and len(av) == 6 and av.frame_size == (W, H)
    assert av.mode == "ave" and av.weights == "synthetic"
    assert av.generator_path == pack / "models" / "generator.onnx" and av.generator_path.is_file()
    assert av.audio_encoder_path == pack / "models" / "audio_encoder.onnx"
    for k in range(6):
        assert av.box(k) == src.box(k)
        # the source JPEG bytes are stored as they were: no re-encoding loss
        assert av.jpeg(k) == (tmp_path / "ds" / "full_body_img" / f"{k}.jpg").read_bytes()
        assert np.array_equal(av.frame(k), src.frame(k))
        assert np.array_equal(av.crop(k), src.crop(k))
    assert_crops_match_cv2(av)
    assert av.order(20) == reference_order(6, 20)
    av.verify()
    manifest = json.loads((pack / MANIFEST).read_text())
    assert manifest["version"] == PACK_VERSION and manifest["frame_count"] == 6
    assert set(manifest["files"]) == {INDEX, FRAMES, CROPS, "models/generator.onnx", "models/audio_encoder.onnx"}


def test_pack_from_package_never_reads_precut_jpegs(tmp_path, models):
    root = make_package(tmp_path / "pkg", 4, models=models)
    av = prepare(root, tmp_path / "p")
    for k in range(4):
        assert av.jpeg(k) == (root / "full_body_img" / f"{k + 1}.jpg").read_bytes()
        assert av.box(k) == box_for(k)
        magenta = np.abs(av.crop(k).astype(int) - (255, 0, 255)).sum(-1) < 60
        assert not magenta.any()
    assert_crops_match_cv2(av)


def test_pack_from_newer_version_is_refused(pack):
    manifest = json.loads((pack / MANIFEST).read_text())
    manifest["version"] = PACK_VERSION + 1
    (pack / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(AvatarError) as e:
        Avatar.open(pack)
    one_line_error(e, "manifest.json", "newer", "upgrade")


@pytest.mark.parametrize("damage", ["truncate_crops", "truncate_frames", "index_bytes", "manifest_garbage",
                                    "missing_model", "manifest_field"])
def test_corrupted_pack_is_refused_at_open(pack, damage):
    if damage == "truncate_crops":
        victim = pack / CROPS
        with open(victim, "r+b") as f:
            f.truncate(victim.stat().st_size - 100)
    elif damage == "truncate_frames":
        victim = pack / FRAMES
        with open(victim, "r+b") as f:
            f.truncate(victim.stat().st_size - 1)
    elif damage == "index_bytes":
        victim = pack / INDEX
        data = bytearray(victim.read_bytes())
        data[-5] ^= 0x40
        victim.write_bytes(bytes(data))
    elif damage == "manifest_garbage":
        victim = pack / MANIFEST
        victim.write_text('{"format": "fastgen.avatar-pack", "version": 1, "frame_')
    elif damage == "missing_model":
        victim = pack / "models" / "generator.onnx"
        victim.unlink()
    else:
        victim = pack / MANIFEST
        manifest = json.loads(victim.read_text())
        del manifest["frame_size"]
        victim.write_text(json.dumps(manifest))
    with pytest.raises(AvatarError) as e:
        Avatar.open(pack)
    one_line_error(e, str(victim), "corrupted")


def test_corrupted_frame_bytes_are_caught_on_read_and_by_verify(pack):
    av = Avatar.open(pack)
    rec = np.load(pack / INDEX)[3]
    with open(pack / FRAMES, "r+b") as f:   # flip one byte in the middle of template 3's JPEG
        pos = int(rec["frame_offset"] + rec["frame_bytes"] // 2)
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0x10]))
    av.frame(2)  # other templates still read
    with pytest.raises(AvatarError) as e:
        av.frame(3)
    one_line_error(e, "frames.bin", "template 3", "corrupted")
    with pytest.raises(AvatarError) as e:
        Avatar.open(pack).verify()
    one_line_error(e, "frames.bin", "checksum")


def test_corrupted_crop_bytes_are_caught_on_read(pack):
    size = (pack / CROPS).stat().st_size
    with open(pack / CROPS, "r+b") as f:    # last crop, i.e. template 5
        f.seek(size - 1000)
        f.write(b"\x00\x01\x02")
    av = Avatar.open(pack)
    av.crop(4)
    with pytest.raises(AvatarError) as e:
        av.crop(5)
    one_line_error(e, "crops.npy", "template 5")


def test_pack_with_foreign_manifest_is_not_an_avatar(tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / MANIFEST).write_text(json.dumps({"format": "fastgen.models/1"}))
    with pytest.raises(AvatarError) as e:
        Avatar.open(tmp_path / "export")
    one_line_error(e, "not a fastgen avatar pack")


def test_reprepare_replaces_a_pack_and_refuses_other_outputs(pack, tmp_path, models):
    before = json.loads((pack / MANIFEST).read_text())
    make_dataset(tmp_path / "ds3", 3)
    prepare(tmp_path / "ds3", pack, generator=models[0], audio_encoder=models[1])
    assert len(Avatar.open(pack)) == 3 and before["frame_count"] == 6
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(FastgenError) as e:
        prepare(tmp_path / "ds3", tmp_path / "notes", generator=models[0], audio_encoder=models[1])
    one_line_error(e, "notes", "not a fastgen avatar pack")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_pack_overrides_models_by_keyword(pack, models):
    av = Avatar.open(pack, generator=models[0])
    assert av.generator_path == models[0]
    assert av.audio_encoder_path == pack / "models" / "audio_encoder.onnx"


# --------------------------------------------------------------------------- cache and threads

def test_frame_into_decodes_into_the_buffer_or_copies_the_cached_frame(tmp_path):
    """Straight into a C-contiguous buffer of the frame's size (and the cache stays empty); from
    the cache when it holds the frame; any other layout gets a copy; all equal ``frame(k)``."""
    root = make_dataset(tmp_path / "ds", 3)
    want = [Avatar.open(root, cache_mb=0).frame(k).copy() for k in range(3)]
    av = Avatar.open(root)
    out = np.zeros((H, W, 3), np.uint8)
    assert av.frame_into(1, out) is out and np.array_equal(out, want[1])
    assert av._cache.nbytes == 0                          # decoded into the buffer, not cached
    av.frame(2)
    out[...] = 0
    av.frame_into(2, out)
    assert np.array_equal(out, want[2])
    wide = np.zeros((H, W + 5, 3), np.uint8)
    av.frame_into(0, wide[:, 2:W + 2])                    # a view with a row pitch: copied
    assert np.array_equal(wide[:, 2:W + 2], want[0]) and not wide[:, :2].any()
    with pytest.raises(ValueError):
        av.frame_into(0, np.zeros((H, W + 1, 3), np.uint8))
    with pytest.raises(IndexError):
        av.frame_into(3, out)


def test_cache_is_bounded_and_threads_agree(tmp_path):
    root = make_dataset(tmp_path / "ds", 10)
    serial = Avatar.open(root, cache_mb=0)
    expected = [(serial.frame(k).copy(), serial.crop(k).copy()) for k in range(10)]
    budget = 3 * (W * H * 3 + 328 * 328 * 3)
    av = Avatar.open(root, cache_mb=budget / (1 << 20))
    errors = []

    def walk(seed):
        rng = np.random.default_rng(seed)
        for k in rng.integers(0, 10, 200):
            f, c = av.frame(int(k)), av.crop(int(k))
            if not (np.array_equal(f, expected[k][0]) and np.array_equal(c, expected[k][1])):
                errors.append(int(k))

    threads = [threading.Thread(target=walk, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert av._cache.nbytes <= budget
    assert av._cache.hits > 0 and av._cache.misses > 0


# --------------------------------------------------------------------------- CLI

def test_cli_prepare(tmp_path, models, capsys):
    src = make_dataset(tmp_path / "ds", 4)
    out = tmp_path / "out.fgpack"
    rc = cli.main(["prepare", str(src), "-o", str(out), "--generator", str(models[0]),
                   "--audio-encoder", str(models[1])])
    assert rc == 0
    av = Avatar.open(out)
    assert len(av) == 4 and av.mode == "ave"
    printed = capsys.readouterr().out
    assert str(out) in printed
    # the dataset's plain JPEGs are kept: prepare says spliced output must re-encode them once
    assert "no restart markers to cut them at" in printed
    assert np.array_equal(av.rows(1, 3, 40), av.frame(1)[3:40])        # cut from the whole decode
    assert np.array_equal(av.region(1, 5, 3, 17, 40), av.frame(1)[3:40, 5:17])
    with pytest.raises(InputError, match="outside the 160x120 frame"):
        av.region(1, 0, 0, 161, 10)


def test_cli_prepare_models_from_the_package(tmp_path, models):
    root = make_package(tmp_path / "pkg", 3, models=models)
    assert cli.main(["prepare", str(root), "-o", str(tmp_path / "p"), "--quiet"]) == 0
    assert Avatar.open(tmp_path / "p").generator_path.is_file()


@pytest.mark.parametrize("problem", ["missing_source", "missing_landmark", "no_models", "corrupt_jpeg_data"])
def test_cli_prepare_bad_input_leaves_nothing(tmp_path, models, capsys, problem):
    src = make_dataset(tmp_path / "ds", 4)
    extra = ["--generator", str(models[0]), "--audio-encoder", str(models[1])]
    if problem == "missing_source":
        src = tmp_path / "absent"
    elif problem == "missing_landmark":
        (src / "landmarks" / "2.lms").unlink()
    elif problem == "no_models":
        extra = []
    else:  # header intact, entropy-coded data cut: only a full decode (during the build) notices
        data = (src / "full_body_img" / "3.jpg").read_bytes()
        (src / "full_body_img" / "3.jpg").write_bytes(data[:len(data) // 2])
    out = tmp_path / "out" / "avatar.fgpack"
    capsys.readouterr()
    rc = cli.main(["prepare", str(src), "-o", str(out), *extra])
    assert rc != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastgen: error:") and "\n" not in err, err
    assert not out.exists()
    if out.parent.exists():
        assert list(out.parent.iterdir()) == []  # no temporary directory left behind


# --------------------------------------------------------------------------- the demo

def test_demo_audio_is_deterministic_speech_like():
    a, b = demo.audio(), demo.audio()
    assert a.dtype == np.float32 and a.ndim == 1
    assert np.array_equal(a, b)
    assert 10 <= a.size / 16000 <= 20
    assert 0.1 < np.abs(a).max() <= 1.0
    # syllable rhythm and pauses: 50 ms frame energies have both loud and near-silent stretches
    frames = a[: a.size // 800 * 800].reshape(-1, 800)
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(1))
    assert (rms < 0.01 * rms.max()).mean() > 0.1       # pauses
    assert (rms > 0.3 * rms.max()).mean() > 0.2        # voiced
    # voiced formant structure: most energy below 4 kHz, yet some fricative energy above
    spec = np.abs(np.fft.rfft(a)) ** 2
    freqs = np.fft.rfftfreq(a.size, 1 / 16000)
    low, high = spec[freqs < 4000].sum(), spec[freqs >= 4000].sum()
    assert low > 5 * high and high > 0.001 * low


def test_demo_rendering_is_deterministic_and_moves():
    f1, l1 = demo.render(10)
    f2, l2 = demo.render(10)
    assert np.array_equal(f1, f2) and np.array_equal(l1, l2)
    assert f1.shape == (720, 1280, 3) and f1.dtype == np.uint8


def test_demo_avatar(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTGEN_CACHE", str(tmp_path / "cache"))
    av = demo.avatar()
    assert av.path.parent == tmp_path / "cache"
    assert 100 <= len(av) <= 250 and av.frame_size == (1280, 720)
    assert av.weights == "known-answer" and av.mode == "ave"
    assert av.generator_path.is_file() and av.audio_encoder_path.is_file()
    assert demo.avatar() is av                       # built once, then reused
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [av.path.name]   # no staging left
    boxes = av.boxes
    assert len({tuple(b) for b in boxes.tolist()}) > len(av) // 4   # the head moves
    assert np.ptp(boxes[:, 0]) >= 10 and np.ptp(boxes[:, 1]) >= 5
    # deterministic: the pack holds exactly what rendering produces
    for k in (0, 57, len(av) - 1):
        frame, lms = demo.render(k, len(av))
        assert av.box(k) == box_from_landmarks(lms.astype(np.int32))
        assert np.abs(av.frame(k).astype(int) - frame.astype(int)).mean() < 1.5   # JPEG q92
        crop = av.crop(k)
        assert np.abs(crop.astype(int) - cv2_crop(av.frame(k), av.box(k)).astype(int)).max() <= 1
        # the mouth (red lips: R high, B low) sits in the lower half of the crop, centred
        lips = (crop[..., 2].astype(int) > 170) & (crop[..., 0].astype(int) < 120)
        rows, cols = np.nonzero(lips)
        assert rows.size > 500
        assert 164 < rows.mean() < 260 and abs(cols.mean() - 164) < 20
    # a second build elsewhere is byte-identical
    other = demo.build_pack(tmp_path / "again")
    for name in (FRAMES, CROPS, INDEX):
        assert (other / name).read_bytes() == (av.path / name).read_bytes()
    files = [json.loads((p / MANIFEST).read_text())["files"] for p in (other, av.path)]
    assert files[0] == files[1]                      # the models too
    av.verify()


def test_demo_cache_falls_back_to_a_temporary_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    chosen = demo._writable_cache_dir(blocker / "cache")
    assert chosen.is_dir() and blocker not in chosen.parents
    assert demo._writable_cache_dir(tmp_path / "ok") == tmp_path / "ok"


# --------------------------------------------------------------------------- checkpoints

def test_audio_encoder_checkpoint_is_converted_once_into_the_cache(tmp_path, monkeypatch, models):
    import torch

    from fastgen.models import synthetic_weights

    monkeypatch.setenv("FASTGEN_CACHE", str(tmp_path / "cache"))
    root = make_dataset(tmp_path / "ds", 3)
    shutil.copyfile(models[0], root / "generator.onnx")
    weights = synthetic_weights("audio_encoder", seed=3)
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in weights.items()}, root / "audio_visual_encoder.pth")
    av = Avatar.open(root)
    assert av.audio_encoder_path.suffix == ".onnx"
    assert (tmp_path / "cache" / "models") in av.audio_encoder_path.parents
    assert Avatar.open(root).audio_encoder_path == av.audio_encoder_path      # cached, not redone
    packed = prepare(root, tmp_path / "p")
    assert packed.audio_encoder_path == tmp_path / "p" / "models" / "audio_encoder.onnx"
    assert packed.audio_encoder_path.read_bytes() == av.audio_encoder_path.read_bytes()


def test_latest_epoch_checkpoint_is_the_generator(tmp_path):
    from fastgen.models.locate import find_models as _find_models

    for name in ("5.pth", "100.pth", "20.pth", "audio_visual_encoder.pth"):
        (tmp_path / name).write_bytes(b"")
    assert _find_models(tmp_path) == (tmp_path / "100.pth", tmp_path / "audio_visual_encoder.pth")
    (tmp_path / "best.pth").write_bytes(b"")
    with pytest.raises(AvatarError) as e:
        _find_models(tmp_path)
    one_line_error(e, "several generator checkpoints", "best.pth")
