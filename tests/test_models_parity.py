"""torch forward pass vs fastgen's ONNX graphs, via a real torch.save checkpoint (docs/semantics.md §7).

Path under test: torch model with input-sensitive weights → ``torch.save(state_dict)`` →
``load_checkpoint`` (no torch) → ``build_*`` → ONNX Runtime. Tolerances: generator output max
abs difference ≤ 1e-4 (output in [0, 1]); encoder embedding max abs difference ≤ 1e-4 × max |emb|.
"""
from __future__ import annotations

import hashlib

import numpy as np
import onnxruntime as ort
import pytest
import torch

import torch_reference as ref
from fastgen.models import graphs
from fastgen.models import (build_audio_encoder, build_generator, expected_keys, generator_inputs,
                            load_checkpoint, synthetic_weights)

pytestmark = pytest.mark.parity

# sha256 of ../shared/spec/unet328_ave_state_dict_keys.txt and audio_encoder_state_dict_keys.txt:
# lines "key (shape)" in state-dict order, as written by the original SyncTalk_2D modules.
GENERATOR_AVE_KEYS_SHA256 = "d6ef5cf51e55d66c7c2fc72172b99c7db8fefe1afc9fa4277b3ea7874561967f"
ENCODER_KEYS_SHA256 = "0bcfb5a6ea5ed3e87597a1f2d6ed23470cca867936d3ffd079da2c7c3816cb4a"


def _keys_sha256(items) -> str:
    return hashlib.sha256("".join(f"{k} {tuple(shape)}\n" for k, shape in items).encode()).hexdigest()


def _session(model, threads=2):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _torch_model(module: torch.nn.Module, weights) -> torch.nn.Module:
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()}, strict=True)
    return module.eval()


def test_reference_keys_match_spec_lists():
    ave = ref.Model(mode="ave").state_dict()
    assert len(ave) == 556
    assert _keys_sha256((k, v.shape) for k, v in ave.items()) == GENERATOR_AVE_KEYS_SHA256
    enc = ref.AudioEncoder().audio_encoder.state_dict()
    assert _keys_sha256((k, v.shape) for k, v in enc.items()) == ENCODER_KEYS_SHA256
    # fastgen's own key lists (used for validation and synthetic weights) are the same, all modes.
    assert _keys_sha256(expected_keys("generator", "ave").items()) == GENERATOR_AVE_KEYS_SHA256
    assert _keys_sha256(expected_keys("audio_encoder").items()) == ENCODER_KEYS_SHA256
    for mode in ("hubert", "wenet"):
        torch_keys = [(k, tuple(v.shape)) for k, v in ref.Model(mode=mode).state_dict().items()]
        assert torch_keys == list(expected_keys("generator", mode).items())


@pytest.mark.parametrize("mode", ["ave", "hubert", "wenet"])
def test_generator_matches_torch(tmp_path, mode):
    weights = synthetic_weights("generator", mode, seed=3)
    # Non-trivial BN: scale and shift far from identity, running stats from data.
    bns = [k[: -len(".running_mean")] for k in weights if k.endswith(".running_mean")]
    gammas = np.concatenate([weights[f"{p}.weight"] for p in bns])
    betas = np.concatenate([weights[f"{p}.bias"] for p in bns])
    assert gammas.std() > 0.2 and np.abs(betas).mean() > 0.1
    model = _torch_model(ref.Model(6, mode), weights)
    ckpt = tmp_path / "gen.pth"
    torch.save(model.state_dict(), ckpt)
    sess = _session(build_generator(load_checkpoint(ckpt), mode, source=str(ckpt)))

    image, audio = generator_inputs(np.random.default_rng(11), 4, mode)
    for batch in (1, 4):
        with torch.no_grad():
            expected = model(torch.from_numpy(image[:batch]), torch.from_numpy(audio[:batch])).numpy()
        got = sess.run(["output"], {"input": image[:batch], "audio": audio[:batch]})[0]
        assert got.shape == (batch, 3, 320, 320)
        assert np.abs(got - expected).max() <= 1e-4
    # The comparison is not blind: the reference output really depends on the image and the audio.
    swapped = image[:1, [2, 1, 0, 5, 4, 3]]
    with torch.no_grad():
        base = model(torch.from_numpy(image[:1]), torch.from_numpy(audio[:1])).numpy()
        moved = model(torch.from_numpy(swapped), torch.from_numpy(audio[:1])).numpy()
        silent = model(torch.from_numpy(image[:1]), torch.zeros(1, *audio.shape[1:])).numpy()
    assert 255 * np.abs(base - moved).mean() > 10
    assert 255 * np.abs(base - silent).mean() > 5


def test_audio_encoder_matches_torch(tmp_path):
    weights = synthetic_weights("audio_encoder", seed=5)
    model = _torch_model(ref.AudioEncoder().audio_encoder, weights)
    ckpt = tmp_path / "audio_visual_encoder.pth"
    torch.save(model.state_dict(), ckpt)
    sess = _session(build_audio_encoder(load_checkpoint(ckpt), source=str(ckpt)))
    wrapper = ref.AudioEncoder().eval()
    wrapper.audio_encoder = model

    mel = np.random.default_rng(2).uniform(-4, 4, (4, 1, 80, 16)).astype(np.float32)
    for batch in (1, 4):
        with torch.no_grad():
            expected = wrapper(torch.from_numpy(mel[:batch])).numpy()
        got = sess.run(["emb"], {"mel": mel[:batch]})[0]
        assert got.shape == expected.shape == (batch, 512)
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    assert np.abs(expected[0] - expected[1]).mean() > 0.05 * np.abs(expected).mean()  # input-sensitive


def test_up_block_pads_odd_sizes_like_torch():
    """The Pad branch of Up (never hit at 320x320): upsample 5x6 → 10x12, pad to the 11x13 skip."""
    torch.manual_seed(0)
    block = ref.Up(8, 4)
    for module in block.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    block.eval()
    weights = {f"up1.{k}": v.numpy() for k, v in block.state_dict().items()}
    ops = graphs.OnnxOps(weights)
    out = graphs.up(ops, ops.input("x1", (4, 5, 6)), ops.input("x2", (4, 11, 13)), "up1", 4)
    ops.finish("up", "up block", {"y": out})
    assert [n.op_type for n in ops.nodes].count("Pad") == 1
    sess = _session(graphs._model(ops, [("x1", (4, 5, 6)), ("x2", (4, 11, 13))], [("y", (4, 11, 13))], "up", {}))
    rng = np.random.default_rng(0)
    x1, x2 = rng.standard_normal((2, 4, 5, 6), np.float32), rng.standard_normal((2, 4, 11, 13), np.float32)
    with torch.no_grad():
        expected = block(torch.from_numpy(x1), torch.from_numpy(x2)).numpy()
    got = sess.run(["y"], {"x1": x1, "x2": x2})[0]
    assert got.shape == (2, 4, 11, 13)
    assert np.abs(got - expected).max() <= 1e-5
