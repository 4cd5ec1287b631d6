"""Train a real UNet328 generator for a few CPU minutes, for fidelity measurements of backends.

Random and analytic weights say nothing about reduced precision; a trained generator does.  This
trains the SyncTalk_2D architecture (PyTorch, the ``parity`` extra) on an avatar's own crops with
SyncTalk_2D's recipe: the input is a reference crop of another template beside the target crop
with its mouth masked (docs/semantics.md §5.3-§5.4), the audio is the avatar's encoder features of
real speech, and the loss is L1 against the target.  After ``--minutes`` it writes the weights as
ONNX through fastgen's own torch-free builder (labelled as a user model, not synthetic) and prints
one JSON line.  The result reproduces the face from the masked input; it need not lip-sync well.

    python bench/train_generator.py [--avatar PACK] [--audio speech.wav] [--minutes 15] [-o out.onnx]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))      # torch_reference: the PyTorch SyncTalk_2D models

import numpy as np  # noqa: E402


def training_data(avatar, gen, wav: np.ndarray):
    """Crops (K, 3, 320, 320) in [0, 1], their masked copies, and per-frame audio tensors."""
    from fastgen.frame import fill_input

    k = len(avatar)
    x = np.empty((k, 6, 320, 320), np.float32)
    for i in range(k):
        fill_input(avatar.crop(i), x[i])
    table = gen.feature_table(wav)
    audio = np.empty((len(table), *gen.audio_shape), np.float32)
    for j in table.frames:
        table.window(j, audio[j])
    return x[:, :3].copy(), x[:, 3:].copy(), audio


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--avatar", help="avatar pack or dataset (default: the demo avatar)")
    parser.add_argument("--audio", help="speech for the audio features (default: the demo clip)")
    parser.add_argument("--minutes", type=float, default=15.0, help="training time budget (default: 15)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("-o", "--output", help="ONNX file to write (default: the cache's "
                                               "models/trained_generator_demo.onnx)")
    args = parser.parse_args(argv)

    import onnx
    import torch

    import torch_reference as ref
    from fastgen import Avatar, Generator, demo
    from fastgen.audio import load_audio
    from fastgen.cachedir import default_cache_dir
    from fastgen.models import build_generator

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    avatar = Avatar.open(args.avatar) if args.avatar else demo.avatar()
    gen = Generator(avatar, threads=1)
    wav = load_audio(args.audio) if args.audio else demo.audio()
    faces, masked, audio = training_data(avatar, gen, wav)
    faces_t, masked_t, audio_t = (torch.from_numpy(a) for a in (faces, masked, audio))
    model = ref.Model(6, "ave")
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    rng = np.random.default_rng(0)
    order = avatar.order(len(audio))
    t0, steps, losses = time.perf_counter(), 0, []
    while time.perf_counter() - t0 < args.minutes * 60:
        j = rng.integers(0, len(audio), args.batch)
        k = np.array([order[i] for i in j])
        refs = rng.integers(0, len(avatar), args.batch)          # a reference of another template
        x = torch.cat([faces_t[refs], masked_t[k]], dim=1)
        target = faces_t[k]
        loss = torch.nn.functional.l1_loss(model(x, audio_t[j]), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        steps += 1
    model.eval()
    weights = {key: value.detach().numpy().copy() for key, value in model.state_dict().items()}
    out = Path(args.output) if args.output else default_cache_dir() / "models" / "trained_generator_demo.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_generator(weights, "ave", source=f"trained {args.minutes:g} CPU min"), str(out))
    print(json.dumps({"output": str(out), "steps": steps, "batch": args.batch,
                      "seconds": round(time.perf_counter() - t0, 1),
                      "l1_first_50": round(float(np.mean(losses[:50])), 4),
                      "l1_last_50": round(float(np.mean(losses[-50:])), 4),
                      "templates": len(avatar), "frames_of_audio": len(audio)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
