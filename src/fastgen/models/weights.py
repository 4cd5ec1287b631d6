"""Synthetic, input-sensitive weights for tests, benchmarks and the demo.

Plain random weights make this U-Net's output collapse to a near-constant grey, so equality tests
run on them are blind. Instead the architecture is run forward in numpy on image-like random
inputs, and each BatchNorm's running statistics are set to the statistics its input actually has
(data-dependent initialisation), with random non-trivial scale/shift on top. Every layer then sees
normalised activations, and the output depends strongly on the image and on the audio.
"""
from __future__ import annotations

import zlib

import numpy as np

from ..errors import InputError

from .graphs import (AUDIO_SHAPES, BN_EPS, GENERATOR_MODULES, IMAGE_SHAPE, MEL_SHAPE, MODES,
                     encoder_net, generator_net, pair)

KINDS = ("generator", "audio_encoder")
# BN scale ~ U(0.5, 1.5) and shift ~ N(0, 0.25): far from identity, so BN folding is really tested.
_GAMMA_RANGE, _BETA_STD = (0.5, 1.5), 0.25
# Residual branches start damped (like the usual small-gamma init of a residual's last BN): with
# full-size branches the activations grow block after block and the net amplifies float32
# rounding noise to ~2e-4 at the output, more than any real model and than the parity tolerance.
_RESIDUAL_GAMMA = 0.3
_OUTPUT_LOGIT_STD = 1.2  # spread of the pre-sigmoid output: uses most of [0, 1] without saturating


class SyntheticWeights(dict):
    """A state dict (key → float32/int64 array) that remembers it is synthetic."""

    synthetic = True

    def __init__(self, data, kind: str, mode: str | None, seed: int):
        super().__init__(data)
        self.kind, self.mode, self.seed = kind, mode, seed


def _conv2d(x: np.ndarray, w: np.ndarray, stride, pad: int, groups: int) -> np.ndarray:
    """NCHW convolution for the three kinds this architecture uses: 1x1, depthwise, dense kxk."""
    b, c, h, wd = x.shape
    cout, _, k, _ = w.shape
    sy, sx = pair(stride)
    if k == 1 and (sy, sx) == (1, 1) and pad == 0 and groups == 1:
        return np.matmul(w[:, :, 0, 0], x.reshape(b, c, h * wd)).reshape(b, cout, h, wd)
    ho, wo = (h + 2 * pad - k) // sy + 1, (wd + 2 * pad - k) // sx + 1

    def padded(xs):
        xp = np.zeros((*xs.shape[:2], h + 2 * pad, wd + 2 * pad), np.float32)
        xp[:, :, pad:pad + h, pad:pad + wd] = xs
        return xp

    def taps(xp):
        for i in range(k):
            for j in range(k):
                yield i, j, xp[:, :, i:i + sy * (ho - 1) + 1:sy, j:j + sx * (wo - 1) + 1:sx]

    if groups == c == cout:
        # Depthwise: multiply-adds over a few channels at a time so the work stays in cache (2x).
        y = np.zeros((b, c, ho, wo), np.float32)
        step = max(1, (1 << 18) // (h * wd * b))
        for c0 in range(0, c, step):
            out, tmp = y[:, c0:c0 + step], np.empty_like(y[:, c0:c0 + step])
            for i, j, tap in taps(padded(x[:, c0:c0 + step])):
                np.multiply(tap, w[c0:c0 + step, 0, i, j][None, :, None, None], out=tmp)
                out += tmp
        return y
    assert groups == 1
    # Dense kxk: im2col into one (C·k·k, B·Ho·Wo) matrix, so the whole batch is a single GEMM.
    cols = np.stack([t for _, _, t in taps(padded(x))], axis=0)  # (k·k, B, C, Ho, Wo)
    cols = cols.transpose(2, 0, 1, 3, 4).reshape(c * k * k, b * ho * wo)
    y = (w.reshape(cout, c * k * k) @ cols).reshape(cout, b, ho, wo)
    return np.ascontiguousarray(y.transpose(1, 0, 2, 3))


def upsample2x_align_corners(x: np.ndarray) -> np.ndarray:
    def axis_weights(n):
        src = np.arange(2 * n) * ((n - 1) / (2 * n - 1)) if n > 1 else np.zeros(2 * n)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        return lo, hi, (src - lo).astype(np.float32)

    lo, hi, f = axis_weights(x.shape[2])
    x = x[:, :, lo] * (1 - f)[:, None] + x[:, :, hi] * f[:, None]
    lo, hi, f = axis_weights(x.shape[3])
    return x[:, :, :, lo] * (1 - f) + x[:, :, :, hi] * f


class _DataInitOps:
    """numpy backend for the architecture functions that creates weights as it goes."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.state: dict[str, np.ndarray] = {}

    def channels(self, x):
        return x.shape[1]

    def spatial(self, x):
        return x.shape[2], x.shape[3]

    def conv_bn(self, x, conv_key, bn_key, cout, k, stride=1, pad=0, groups=1, bias=False,
                relu=False, residual=None):
        rng, cin = self.rng, x.shape[1]
        fan_in = cin // groups * k * k
        w = (rng.standard_normal((cout, cin // groups, k, k), np.float32) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        y = _conv2d(x, w, stride, pad, groups)
        b = (rng.standard_normal(cout, np.float32) * 0.1).astype(np.float32) if bias else None
        if b is not None:
            y += b[None, :, None, None]
        if bn_key is None:
            # The one conv without BN (outc): scale it from data so its logits have a useful spread.
            scale = _OUTPUT_LOGIT_STD / (y.std(axis=(0, 2, 3)) + 1e-6)
            shift = rng.normal(0.0, 0.3, cout) - y.mean(axis=(0, 2, 3)) * scale
            w = (w * scale[:, None, None, None]).astype(np.float32)
            b = ((b if b is not None else 0.0) * scale + shift).astype(np.float32)
            y = (y * scale[None, :, None, None] + shift[None, :, None, None]).astype(np.float32)
        self.state[f"{conv_key}.weight"] = w
        if bias:
            self.state[f"{conv_key}.bias"] = b
        if bn_key is not None:
            # Data-dependent BN: running stats = the statistics this layer really sees.
            n = y.size // cout
            mean64 = y.sum(axis=(0, 2, 3), dtype=np.float64) / n
            var64 = np.einsum("bchw,bchw->c", y, y, dtype=np.float64) / n - mean64 ** 2
            mean, var = mean64.astype(np.float32), np.maximum(var64, 0).astype(np.float32)
            gamma = rng.uniform(*_GAMMA_RANGE, cout).astype(np.float32)
            beta = rng.normal(0.0, _BETA_STD, cout).astype(np.float32)
            if residual is not None:
                gamma *= _RESIDUAL_GAMMA
            self.state.update({f"{bn_key}.weight": gamma, f"{bn_key}.bias": beta,
                               f"{bn_key}.running_mean": mean, f"{bn_key}.running_var": var,
                               f"{bn_key}.num_batches_tracked": np.array(1000, np.int64)})
            scale = gamma / np.sqrt(var + BN_EPS)
            y *= scale[None, :, None, None]
            y += (beta - mean * scale)[None, :, None, None]
        if residual is not None:
            y += residual
        if relu:
            np.maximum(y, 0, out=y)
        return y

    def upsample2x(self, x):
        return upsample2x_align_corners(x)

    def pad(self, x, top, bottom, left, right):
        return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))

    def concat(self, xs):
        return np.concatenate(xs, axis=1)

    def sigmoid(self, x):
        return 1.0 / (1.0 + np.exp(-x))

    def flatten(self, x):
        return x.reshape(x.shape[0], -1)


def _smooth_noise(rng: np.random.Generator, shape, coarse: int) -> np.ndarray:
    """Random field in [0, 1] with structure at several scales (image-like, not white noise)."""
    b, c, h, w = shape
    out = np.zeros(shape, np.float32)
    for size, weight in ((coarse, 0.6), (coarse * 4, 0.3), (None, 0.1)):
        if size is None:
            out += weight * rng.random(shape, np.float32)
            continue
        grid = rng.random((b, c, size, size), np.float32)
        iy = np.minimum(np.arange(h) * size // h, size - 1)
        ix = np.minimum(np.arange(w) * size // w, size - 1)
        out += weight * grid[:, :, iy][:, :, :, ix]
    return out


def generator_inputs(rng: np.random.Generator, batch: int, mode: str = "ave"):
    """Image-like (B,6,320,320) generator inputs laid out like docs/semantics.md §5.3, plus random audio features."""
    roi = _smooth_noise(rng, (batch, 3, *IMAGE_SHAPE[1:]), coarse=8)
    masked = roi.copy()
    masked[:, :, 5:310, 5:315] = 0.0  # the mouth region the generator must fill in
    audio = rng.standard_normal((batch, *AUDIO_SHAPES[mode]), np.float32)
    if mode == "ave":  # AVE features are ReLU outputs of the audio encoder
        audio = np.abs(audio)
    return np.concatenate([roi, masked], axis=1), audio


def synthetic_weights(kind: str, mode: str = "ave", seed: int = 0) -> SyntheticWeights:
    """Deterministic input-sensitive weights with exactly the SyncTalk_2D state-dict keys."""
    if kind not in KINDS:
        raise InputError(f"unknown model kind {kind!r} (expected one of {', '.join(KINDS)})")
    if kind == "generator" and mode not in MODES:
        raise InputError(f"unknown generator mode {mode!r} (expected one of {', '.join(MODES)})")
    tag = zlib.crc32(f"{kind}/{mode if kind == 'generator' else ''}".encode())
    rng = np.random.default_rng([seed, tag])
    ops = _DataInitOps(rng)
    if kind == "generator":
        image, audio = generator_inputs(rng, 1, mode)
        generator_net(ops, image, audio, mode)
        rank = {m: i for i, m in enumerate(GENERATOR_MODULES)}
        state = dict(sorted(ops.state.items(), key=lambda kv: rank[kv[0].split(".")[0]]))
        return SyntheticWeights(state, kind, mode, seed)
    mel = _smooth_noise(rng, (16, *MEL_SHAPE), coarse=4) * 8.0 - 4.0  # normalised mel range [-4, 4]
    encoder_net(ops, mel)
    return SyntheticWeights(ops.state, kind, None, seed)
