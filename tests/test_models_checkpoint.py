"""load_checkpoint (torch-free, code-free unpickling), weight validation, and `fastgen export`."""
from __future__ import annotations

import argparse
import collections
import json
import os
import pickle
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import torch_reference as ref
from fastgen.cli import main
from fastgen.errors import InputError, ModelError
from fastgen.models import (build_audio_encoder, build_generator, ensure_onnx, export_models,
                            generator_inputs, inspect, load_checkpoint, sha256_file, synthetic_weights)


def _numpy(sd):
    return {k: v.detach().numpy() for k, v in sd.items()}


@pytest.fixture(scope="module")
def encoder_weights():
    return synthetic_weights("audio_encoder", seed=1)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, encoder_weights):
    """A generator and an audio-encoder checkpoint written by torch.save from the torch modules."""
    root = tmp_path_factory.mktemp("ckpt")
    gen = ref.Model(6, "ave")
    gen.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in synthetic_weights("generator").items()})
    enc = ref.AudioEncoder().audio_encoder
    enc.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in encoder_weights.items()})
    torch.save(gen.state_dict(), root / "50.pth")
    torch.save(enc.state_dict(), root / "audio_visual_encoder.pth")
    return root / "50.pth", root / "audio_visual_encoder.pth"


# ---- round trips -----------------------------------------------------------------------------

def _tricky_state_dict():
    base = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
    return collections.OrderedDict(
        plain=torch.randn(4, 3),
        transposed=base.permute(2, 0, 1),           # non-contiguous strides
        sliced=base[1:, ::2, 3],                    # storage offset + step
        expanded=torch.randn(3, 1).expand(3, 4),    # zero stride
        half=torch.randn(5, 2).half(),
        double=torch.randn(2, 2, dtype=torch.float64),
        count=torch.tensor(7),                      # 0-d int64 like num_batches_tracked
        empty=torch.zeros(0, 3),
        param=torch.nn.Parameter(torch.randn(2, 2)),  # pickled via torch._utils._rebuild_parameter
    )


def test_round_trip_plain_state_dict(tmp_path):
    sd = _tricky_state_dict()
    torch.save(sd, tmp_path / "x.pth")
    got = load_checkpoint(tmp_path / "x.pth")
    assert list(got) == list(sd)
    for key, tensor in sd.items():
        expected = tensor.detach().numpy()
        assert got[key].dtype == expected.dtype and got[key].shape == expected.shape, key
        np.testing.assert_array_equal(got[key], expected)
        assert got[key].flags.c_contiguous and got[key].flags.writeable


def test_round_trip_wrapped_and_half_module(tmp_path, encoder_weights):
    enc = ref.AudioEncoder().audio_encoder
    enc.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in encoder_weights.items()})
    enc = enc.half()
    torch.save({"epoch": 12, "lr": 1e-4, "tags": ["a", ("b", None)], "state_dict": enc.state_dict()},
               tmp_path / "wrapped.pth")
    got = load_checkpoint(tmp_path / "wrapped.pth")
    sd = enc.state_dict()
    assert list(got) == list(sd)
    assert got["0.conv_block.0.weight"].dtype == np.float16
    for key in sd:
        np.testing.assert_array_equal(got[key], sd[key].numpy())
    build_audio_encoder(got)  # float16 weights are accepted (cast to float32)


def test_module_prefix_is_accepted(tmp_path, encoder_weights):
    torch.save({f"module.{k}": torch.from_numpy(np.array(v)) for k, v in encoder_weights.items()},
               tmp_path / "dp.pth")
    model = build_audio_encoder(load_checkpoint(tmp_path / "dp.pth"))
    assert [o.name for o in model.graph.output] == ["emb"]


def test_audio_encoder_keys_load_with_or_without_their_prefix(tmp_path, encoder_weights):
    """AudioEncoder().state_dict() keys carry "audio_encoder."; audio_visual_encoder.pth's do not."""
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in encoder_weights.items()}, tmp_path / "bare.pth")
    torch.save({f"audio_encoder.{k}": torch.from_numpy(np.array(v)) for k, v in encoder_weights.items()},
               tmp_path / "prefixed.pth")
    torch.save({f"module.audio_encoder.{k}": torch.from_numpy(np.array(v))
                for k, v in encoder_weights.items()}, tmp_path / "both.pth")
    mel = np.random.default_rng(0).standard_normal((2, 1, 80, 16)).astype(np.float32)
    outs = []
    for name in ("bare", "prefixed", "both"):
        model = build_audio_encoder(load_checkpoint(tmp_path / f"{name}.pth"))
        onnx_path = tmp_path / f"{name}.onnx"
        onnx.save(model, str(onnx_path))
        outs.append(_session(onnx_path).run(None, {"mel": mel})[0])
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


# ---- refusing code ---------------------------------------------------------------------------

class _Exploit:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("protocol", [2, 4])
def test_pickle_that_runs_os_system_is_refused(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(collections.OrderedDict(w=_Exploit(f"touch {marker}")), protocol=protocol)
    evil = tmp_path / "evil.pth"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("evil/data.pkl", payload)
        zf.writestr("evil/version", "3\n")
    with pytest.raises(ModelError) as err:
        load_checkpoint(evil)
    msg = str(err.value)
    assert str(evil) in msg and "system" in msg and "refusing" in msg and "\n" not in msg
    assert not marker.exists()
    # The payload is live: an ordinary unpickler does run the command.
    pickle.loads(payload)
    assert marker.exists()


def test_other_globals_are_refused(tmp_path):
    sd = collections.OrderedDict(w=torch.zeros(2))
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=0.1)}, tmp_path / "args.pth")
    with pytest.raises(ModelError, match=r"args\.pth: refusing to load global 'argparse\.Namespace'"):
        load_checkpoint(tmp_path / "args.pth")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole.pth")
    with pytest.raises(ModelError, match=r"'torch\.nn\.modules\.linear\.Linear' .*save model\.state_dict\(\)"):
        load_checkpoint(tmp_path / "whole.pth")


def test_unsupported_tensor_dtype(tmp_path):
    torch.save(collections.OrderedDict(w=torch.zeros(3, dtype=torch.bfloat16)), tmp_path / "bf.pth")
    with pytest.raises(ModelError, match=r"bf\.pth: unsupported checkpoint: tensor type torch\.BFloat16Storage"):
        load_checkpoint(tmp_path / "bf.pth")


# ---- broken files ----------------------------------------------------------------------------

@pytest.mark.parametrize("keep", [0.5, 0.98, 100])
def test_truncated_checkpoint(tmp_path, keep):
    torch.save(_tricky_state_dict(), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    with pytest.raises(ModelError, match=r"cut\.pth: (truncated or corrupt|not a PyTorch)"):
        load_checkpoint(cut)


def test_truncated_storage_inside_valid_zip(tmp_path):
    torch.save(collections.OrderedDict(w=torch.zeros(100)), tmp_path / "a.pth")
    fixed = tmp_path / "b.pth"
    with zipfile.ZipFile(tmp_path / "a.pth") as src, zipfile.ZipFile(fixed, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item.filename.replace("a/", "b/", 1), data[:40] if item.filename.endswith("/data/0") else data)
    with pytest.raises(ModelError, match=r"b\.pth: corrupt checkpoint: storage 0 is truncated"):
        load_checkpoint(fixed)


@pytest.mark.parametrize("content, reason", [
    (np.random.default_rng(0).bytes(4096), "not a PyTorch checkpoint"),
    (b"", "not a PyTorch checkpoint"),
    (pickle.dumps({"w": 1}), "not a PyTorch checkpoint"),
])
def test_non_checkpoint_files(tmp_path, content, reason):
    path = tmp_path / "junk.pth"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=rf"junk\.pth: {reason}"):
        load_checkpoint(path)


def test_zip_without_pickle_and_missing_file(tmp_path):
    with zipfile.ZipFile(tmp_path / "z.pth", "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(ModelError, match=r"z\.pth: corrupt checkpoint: no <name>/data\.pkl"):
        load_checkpoint(tmp_path / "z.pth")
    with pytest.raises(ModelError, match=r"nope\.pth: cannot read checkpoint"):
        load_checkpoint(tmp_path / "nope.pth")


def test_legacy_format_asks_for_resave(tmp_path):
    torch.save(_tricky_state_dict(), tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(ModelError, match=r"old\.pth: legacy .*re-save it with a newer torch"):
        load_checkpoint(tmp_path / "old.pth")


def test_no_state_dict_inside(tmp_path):
    torch.save({"epoch": 3, "note": "nothing here"}, tmp_path / "meta.pth")
    with pytest.raises(ModelError, match=r"meta\.pth: no state_dict found .*'epoch'"):
        load_checkpoint(tmp_path / "meta.pth")


# ---- key validation --------------------------------------------------------------------------

def test_wrong_missing_extra_keys_are_all_listed(encoder_weights):
    weights = dict(encoder_weights)
    del weights["3.conv_block.0.weight"]
    weights["3.conv_block.9.weight"] = np.zeros(3, np.float32)
    weights["5.conv_block.1.running_var"] = np.ones(7, np.float32)
    with pytest.raises(ModelError) as err:
        build_audio_encoder(weights, source="enc.pth")
    msg = str(err.value)
    assert msg.startswith("enc.pth: weights do not fit the audio encoder: ") and "\n" not in msg
    assert "1 missing (3.conv_block.0.weight)" in msg
    assert "1 unexpected (3.conv_block.9.weight)" in msg
    assert "1 mis-shaped (5.conv_block.1.running_var (7,) != (64,))" in msg


def test_wrong_model_or_mode_gets_a_hint(encoder_weights):
    with pytest.raises(ModelError, match="looks like an audio encoder checkpoint"):
        build_generator(encoder_weights, "ave", source="enc.pth")
    wenet = synthetic_weights("generator", "wenet")
    with pytest.raises(ModelError, match=r"looks like a wenet checkpoint: check --mode"):
        build_generator(wenet, "ave", source="g.pth")
    with pytest.raises(InputError, match=r"unknown generator mode 'bogus'"):
        build_generator(wenet, "bogus")


def test_an_unknown_mode_is_the_same_error_everywhere(tmp_path):
    """One misuse, one exception type, whichever entry point sees it."""
    from fastgen.models import known_answer_weights

    calls = [lambda: build_generator(synthetic_weights("generator"), "bogus"),
             lambda: synthetic_weights("generator", "bogus"),
             lambda: known_answer_weights("bogus"),
             lambda: export_models("synthetic", tmp_path / "x", mode="bogus")]
    for call in calls:
        with pytest.raises(InputError, match="bogus"):
            call()


def test_missing_num_batches_tracked_is_tolerated(encoder_weights):
    weights = {k: v for k, v in encoder_weights.items() if not k.endswith("num_batches_tracked")}
    build_audio_encoder(weights)


# ---- fastgen export --------------------------------------------------------------------------

def _session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_cli_export_from_torch_checkpoints(tmp_path, checkpoints, capsys):
    gen_ckpt, enc_ckpt = checkpoints
    out = tmp_path / "models"
    assert main(["export", "--generator", str(gen_ckpt), "--audio-encoder", str(enc_ckpt), "-o", str(out)]) == 0
    assert "generator.onnx" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["audio_encoder.onnx", "generator.onnx", "manifest.json"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["mode"] == "ave" and manifest["synthetic"] is False
    assert manifest["sources"]["generator"]["sha256"] == sha256_file(gen_ckpt)
    assert manifest["sources"]["audio_encoder"]["sha256"] == sha256_file(enc_ckpt)
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(out / name)
    assert manifest["files"]["generator.onnx"]["inputs"]["audio"] == ["batch", 32, 16, 16]
    assert 40e6 < manifest["files"]["generator.onnx"]["bytes"] < 52e6  # ~46 MB of float32 weights
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left

    gen_info = inspect(out / "generator.onnx", expect="generator")
    assert (gen_info.mode, gen_info.dynamic_batch, gen_info.synthetic) == ("ave", True, False)
    assert inspect(out / "audio_encoder.onnx").kind == "audio_encoder"
    # The exported generator computes the same as one built in memory from the same weights.
    image, audio = generator_inputs(np.random.default_rng(4), 2)
    direct = build_generator(load_checkpoint(gen_ckpt)).SerializeToString()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    expected = ort.InferenceSession(direct, opts, providers=["CPUExecutionProvider"]).run(
        None, {"input": image, "audio": audio})[0]
    got = _session(out / "generator.onnx").run(None, {"input": image, "audio": audio})[0]
    np.testing.assert_array_equal(got, expected)


def test_cli_export_is_atomic_on_failure(tmp_path, checkpoints, capsys):
    gen_ckpt, _ = checkpoints
    bad = tmp_path / "bad_encoder.pth"
    bad.write_bytes(gen_ckpt.read_bytes()[:5000])
    out = tmp_path / "models"
    assert main(["export", "--generator", str(gen_ckpt), "--audio-encoder", str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastgen: error: ") and "bad_encoder.pth" in err and err.count("\n") == 1
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad_encoder.pth"]

    # A previous export survives a failed re-export untouched, and a good one replaces it.
    assert main(["export", "--generator", "synthetic", "-o", str(out), "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["export", "--generator", str(bad), "-o", str(out)]) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main(["export", "--generator", str(gen_ckpt), "-o", str(out), "--quiet"]) == 0
    assert json.loads((out / "manifest.json").read_text())["synthetic"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad_encoder.pth", "models"]


def test_export_refuses_a_foreign_directory(tmp_path, checkpoints):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        export_models(checkpoints[0], tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_ensure_onnx_converts_and_caches(tmp_path, checkpoints):
    _, enc_ckpt = checkpoints
    path, info = ensure_onnx(enc_ckpt, "audio_encoder", tmp_path / "cache")
    assert path.parent == tmp_path / "cache" and info.kind == "audio_encoder"
    stamp = path.stat().st_mtime_ns
    again, _ = ensure_onnx(enc_ckpt, "audio_encoder", tmp_path / "cache")
    assert again == path and again.stat().st_mtime_ns == stamp
    assert ensure_onnx(path, "audio_encoder", tmp_path / "unused")[0] == path
    with pytest.raises(ModelError, match="expected a generator"):
        ensure_onnx(path, "generator", tmp_path / "cache")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask      # not mkstemp's private 0600
    assert [p.name for p in path.parent.iterdir()] == [path.name]   # no temporary left
