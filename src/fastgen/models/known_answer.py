"""Known-answer weights: a SyncTalk_2D generator whose output can be predicted (no training).

``known_answer_weights()`` returns ``(generator, audio_encoder)`` state dicts with exactly the keys
and shapes of the real checkpoints (:func:`~fastgen.models.expected_keys`), so the graphs, the cost
per frame and the whole pipeline are the real ones.  Every weight not named below is zero and every
BatchNorm is the identity (gamma 1, beta 0, mean 0, var 1 − eps); all routed values are ≥ 0, so
the ReLUs on the way are no-ops.  Unlike random weights, these tell a correct pipeline from one
that swaps colour channels, shifts the crop or pastes in the wrong place.

Generator (any mode):

* **Face.** ``inc`` copies the ROI channels 0–2 (BGR) to ``x1[0:3]`` (1×1 weights 1, depthwise
  kernels with only the centre tap).  The whole encoder path ``down1..down5`` is zero.  ``up5``'s
  first inverted-residual block turns ``x1`` (reaching it through the skip concat) into the logit:
  its expansion makes ReLU hinges ``relu(v − t_i)`` of each colour (1×1 weight 1, folded-BN bias
  ``−t_i``) and its projection sums them, so the block outputs the piecewise-linear function
  through ``(u/255, logit((u + 0.5)/255))`` at a few dozen knots ``u`` (chosen so every grey level
  ``u`` = 0..254 lands in ``[u + 0.3, u + 0.7]`` after the sigmoid, and 255 at a logit of 20,
  where float32 sigmoid is exactly 1).  The second block is an identity (zero projection +
  residual), ``outc`` copies channels 0–2, and ``uint8(sigmoid(·)·255)`` gives ``v`` back.
* **Mouth** (``ave`` only).  The spatial selectivity comes from the audio features' layout: the
  encoder writes ``loudness × pattern`` into the first 256 features, which the (32, 16, 16) audio
  tensor lays out as a 16×16 image (channel 16 = the first half of the frame's central row
  ``F[j]``).  ``audio_model`` takes that channel through centre taps and identities to a 10×10
  map (``conv5``, stride 2, pad 3: cell ``(i, j)`` reads position ``(2i − 2, 2j − 2)``), so the
  pattern is :data:`MOUTH_GRID` on that grid (cell i ↔ ROI pixel 35.4·i).  ``fuse_conv`` and
  ``up1..up4`` carry the map as their channel 0 (bilinear ×2 each time) to 320×320
  (:func:`mouth_map`).  In ``up5`` one hidden channel is ``relu(m − MOUTH_GATE · green)`` and is
  subtracted from the three logits (less from red): dark lip and mouth pixels darken first, skin
  only when the voice is loud, so the mouth "opens" with the voice; where the map is 0 the
  output is exactly the input.  ``hubert`` / ``wenet`` features come from external encoders of
  unknown meaning, so those modes reproduce the face and ignore the audio.

Audio encoder (``emb[f] = loudness · pattern[f]`` for f < 256 (:func:`emb_pattern`),
``emb[f] = loudness`` for f ≥ 256):

* block 0 makes 32 hinges ``relu(M − t_k)`` of every normalised log-mel value ``M``; block 3 sums
  them into a piecewise-linear ``p(M) ≈ 10^(1.25 (M − 4))``, the band power the dB scale
  encodes, and splits mel rows by position mod 3 into 3 channels; blocks 6 and 9 do the same
  twice more while summing over time (columns), so block 11 (a 3×3 kernel on a 3×3 map) sees
  every mel band 0..67 in its own (channel, position) and weights it by ``1 / |1 − 0.97 e^{−iω}|²``
  (undoing the pre-emphasis) — a power estimate ``P`` of the raw samples.  Block 11's outputs are
  hinges of ``P`` and block 12 sums them into ``loudness ≈ min(sqrt(P / 16) / LOUDNESS_REF,
  LOUDNESS_CAP)``: the RMS of the window's samples in units of ``LOUDNESS_REF`` (0.1 = −20 dBFS),
  times the mouth pattern.  Silence (``M = −4`` everywhere) and zero rows give exactly 0.
  Residual blocks are identities (zero conv).  Mel bands 68..79 (> ~5.7 kHz) are not reachable
  through the strided layers and are ignored; they carry little of a voice's energy.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from .graphs import BN_EPS, MODES, expected_keys

LABEL = "known-answer demo weights"
LOGIT_TOP = 20.0            # logit for grey level 255: float32 sigmoid rounds it to exactly 1
LEVEL_MARGIN = 0.3          # every level u lands in [u + 0.3, u + 0.7] before truncation
POWER_KNOTS = np.linspace(-0.5, 4.0, 33)[:-1]   # log-mel hinges (M = 4 is the top of the scale)
LOUDNESS_REF = 0.1          # sample RMS that gives loudness 1
LOUDNESS_CAP = 3.0
PREEMPHASIS = 0.97
MEL_BANDS_USED = 68
# Mouth pattern on the generator's 10×10 audio grid (rows, cols; cell i ↔ ROI pixel 35.4·i).
# Centred on ROI (188, 160), where a SyncTalk crop box (cheek to cheek, from under the eyes)
# puts the mouth.
MOUTH_GRID = {(5, 4): 1.0, (5, 5): 1.0, (6, 4): 0.6, (6, 5): 0.6, (5, 3): 0.3, (5, 6): 0.3,
              (6, 3): 0.15, (6, 6): 0.15}
# darkening = MOUTH_DARKEN · relu(loudness · map − MOUTH_GATE · green): dark (lip, mouth) pixels
# darken first, skin only when the voice is loud, so the dark area grows with the voice
MOUTH_GATE = 0.8
MOUTH_DARKEN = np.array([5.0, 5.0, 4.0], np.float32)   # logit drop per unit (B, G, R)


class KnownAnswerWeights(dict):
    """A state dict labelled as analytic (not trained): ``synthetic`` is true, ``label`` says what."""

    synthetic = True
    label = LABEL

    def __init__(self, data, kind: str, mode: str | None):
        super().__init__(data)
        self.kind, self.mode = kind, mode


def level_knots(margin: float = LEVEL_MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """Grey levels (knots) and logits of the output curve: the fewest knots keeping every level in
    ``[u + margin, u + 1 − margin]`` after ``255 · sigmoid`` (greedy, exact for u = 0..255)."""
    u = np.arange(256)
    p = (u + 0.5) / 255
    target = np.where(u < 255, np.log(p / np.maximum(1 - p, 1e-12)), LOGIT_TOP)

    def fits(a: int, b: int) -> bool:
        uu = np.arange(a, b + 1)
        f = target[a] + (target[b] - target[a]) * (uu - a) / (b - a)
        out = 255.0 / (1.0 + np.exp(-f))
        return bool(np.all((out >= uu + margin) & (out <= uu + 1 - margin)))

    knots, a = [0], 0
    while a < 255:
        b = a + 1
        while b < 255 and fits(a, b + 1):
            b += 1
        knots.append(b)
        a = b
    k = np.array(knots)
    return k, target[k]


def _hinges(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """``f(v) = y0 + Σ c_i relu(v − x_i)`` through the points (x, y): (thresholds, c, y0)."""
    slopes = np.diff(y) / np.diff(x)
    return x[:-1], np.diff(slopes, prepend=0.0), float(y[0])


def mouth_pattern() -> np.ndarray:
    """The 10×10 grid of mouth weights the generator's audio path sees (rows 0 and 9 stay 0)."""
    grid = np.zeros((10, 10), np.float32)
    for (i, j), w in MOUTH_GRID.items():
        grid[i, j] = w
    return grid


def mouth_map() -> np.ndarray:
    """The (320, 320) mouth map ``m`` that reaches ``up5`` for loudness 1 (the 10×10 pattern after
    the decoder's five bilinear ×2 upsamplings).  Where it is 0 the output is the input, whatever
    the audio."""
    from .weights import upsample2x_align_corners

    m = mouth_pattern()[None, None]
    for _ in range(5):
        m = upsample2x_align_corners(m)
    return m[0, 0]


def emb_pattern() -> np.ndarray:
    """Per-feature multipliers of the loudness in the 512-d embedding (see the module docstring)."""
    g = np.ones(512, np.float32)
    img = np.zeros((16, 16), np.float32)
    img[0:16:2, 0:16:2] = mouth_pattern()[1:9, 1:9]   # cell (i, j) reads (2i − 2, 2j − 2)
    g[:256] = img.reshape(-1)
    return g


class _State:
    """A state dict of zeros with identity BatchNorms, plus helpers to route channels."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        self.d: dict[str, np.ndarray] = {}
        for key, shape in shapes.items():
            if key.endswith("num_batches_tracked"):
                self.d[key] = np.array(0, np.int64)
            elif key.endswith("running_var"):
                self.d[key] = np.full(shape, 1.0 - BN_EPS, np.float32)  # var + eps == 1
            elif key.endswith(".weight") and len(shape) == 1:
                self.d[key] = np.ones(shape, np.float32)                # BN gamma
            else:
                self.d[key] = np.zeros(shape, np.float32)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.d[key]

    def route_ir(self, prefix: str, pairs) -> None:
        """Copy input channel i to output channel o through hidden channel h of an IR block."""
        for i, h, o in pairs:
            self.d[f"{prefix}.conv.0.weight"][h, i] = 1.0
            self.d[f"{prefix}.conv.3.weight"][h, 0, 1, 1] = 1.0
            self.d[f"{prefix}.conv.6.weight"][o, h] = 1.0

    def route_conv(self, key: str, i: int, o: int) -> None:
        """Centre tap of a dense 3×3 conv: output channel o = input channel i."""
        self.d[key][o, i, 1, 1] = 1.0


def _generator(mode: str) -> dict[str, np.ndarray]:
    s = _State(expected_keys("generator", mode))
    # face: inc copies BGR to x1[0:3]
    s.route_ir("inc.inconv.0", [(c, c, c) for c in range(3)])
    # up5: the skip x1 arrives at input channels 32..34, the mouth map at channel 0
    p = "up5.conv.double_conv.0"
    knots, logits = level_knots()
    thresholds, coeffs, y0 = _hinges(knots / 255.0, logits)
    n = len(thresholds)
    hidden = s[f"{p}.conv.0.weight"].shape[0]
    if 3 * n + 1 > hidden:
        raise AssertionError(f"{3 * n} hinges do not fit in {hidden} hidden channels")
    for c in range(3):
        for k in range(n):
            h = c * n + k
            s[f"{p}.conv.0.weight"][h, 32 + c] = 1.0
            s[f"{p}.conv.1.bias"][h] = -thresholds[k]
            s[f"{p}.conv.3.weight"][h, 0, 1, 1] = 1.0
            s[f"{p}.conv.6.weight"][c, h] = coeffs[k]
        s[f"{p}.conv.7.bias"][c] = y0
    s["outc.conv.weight"][[0, 1, 2], [0, 1, 2]] = 1.0
    if mode == "ave":
        _mouth_path(s, hidden - 1)
    return s.d


def _mouth_path(s: _State, mouth_hidden: int) -> None:
    a = "audio_model"
    s.route_ir(f"{a}.conv1", [(16, 0, 0)])          # the central row's first 256 features
    s.route_ir(f"{a}.conv2", [(0, 0, 0)])
    s.route_conv(f"{a}.conv3.weight", 0, 0)
    s.route_conv(f"{a}.conv5.weight", 0, 0)          # 16×16 → 10×10, pad 3, stride 2
    # fuse_conv: cat[x6 (512, zeros), audio (512)] → 512 → 256; the map stays channel 0
    s.route_ir("fuse_conv.0.double_conv.0", [(512, 0, 0)])
    s.route_ir("fuse_conv.1.double_conv.0", [(0, 0, 0)])
    for name in ("up1", "up2", "up3", "up4"):
        s.route_ir(f"{name}.conv.double_conv.0", [(0, 0, 0)])
    p = "up5.conv.double_conv.0"
    s[f"{p}.conv.0.weight"][mouth_hidden, 0] = 1.0
    s[f"{p}.conv.0.weight"][mouth_hidden, 32 + 1] = -MOUTH_GATE   # the ROI's green channel
    s[f"{p}.conv.3.weight"][mouth_hidden, 0, 1, 1] = 1.0
    s[f"{p}.conv.6.weight"][0:3, mouth_hidden, 0, 0] = -MOUTH_DARKEN


def band_weights() -> np.ndarray:
    """Per-mel-band weights undoing the pre-emphasis (1 / |H(f)|² at the band centre)."""
    from ..audio import N_FFT, SAMPLE_RATE, mel_basis

    basis = np.asarray(mel_basis(), np.float64)
    centres = basis @ np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE) / basis.sum(axis=1)
    w = 1.0 / np.abs(1.0 - PREEMPHASIS * np.exp(-2j * np.pi * centres / SAMPLE_RATE)) ** 2
    w[MEL_BANDS_USED:] = 0.0
    return w


def _audio_encoder() -> dict[str, np.ndarray]:
    s = _State(expected_keys("audio_encoder"))
    blk = "{}.conv_block.0.{}".format
    # block 0: hinges of M; block 3: p(M) = Σ c_k relu(M − t_k), rows split by position mod 3
    t = POWER_KNOTS
    x = np.append(t, 4.0)
    y = 10.0 ** (1.25 * (x - 4.0))
    y[0] = 0.0
    thresholds, coeffs, _ = _hinges(x, y)
    for k in range(len(t)):
        s[blk(0, "weight")][k, 0, 1, 1] = 1.0
        s[blk(0, "bias")][k] = -thresholds[k]
    for r in range(3):
        s[blk(3, "weight")][r, :len(t), r, 1] = coeffs
    # block 6: (3 ch, 27×16) → (9 ch, 9×6): channel 3a + r2 = row tap r2 of channel a, 3 columns summed
    for a in range(3):
        for r2 in range(3):
            s[blk(6, "weight")][3 * a + r2, a, r2, :] = 1.0
    # block 9: (9, 9×6) → (27, 3×3): channel 9 r1 + ch = row tap r1, column taps 1, 2 (stride 2)
    for ch in range(9):
        for r1 in range(3):
            s[blk(9, "weight")][9 * r1 + ch, ch, r1, 1:3] = 1.0
    # block 11: P = Σ w(band) · value over the 27 channels × 3×3 positions, then hinges of P
    wb = band_weights()
    kernel = np.zeros((256, 3, 3), np.float32)
    for r1 in range(3):
        for a in range(3):
            for r2 in range(3):
                for i3 in range(3):
                    band = 27 * i3 + 9 * (r1 - 1) + 3 * (r2 - 1) + (a - 1)
                    if 0 <= band < 80:
                        kernel[9 * r1 + 3 * a + r2, i3, :] = wb[band]
    # loudness(P) = sqrt(P / 16) / REF, capped; hinges at geometric knots of P
    p_cap = 16.0 * (LOUDNESS_CAP * LOUDNESS_REF) ** 2
    px = np.concatenate([[0.0], p_cap * np.geomspace(1e-6, 1.0, 63)])
    py = np.sqrt(px / 16.0) / LOUDNESS_REF
    thresholds, coeffs, _ = _hinges(px, py)
    thresholds, coeffs = np.append(thresholds, p_cap), np.append(coeffs, -(py[-1] - py[-2]) / (px[-1] - px[-2]))
    for k in range(len(thresholds)):
        s[blk(11, "weight")][k] = kernel
        s[blk(11, "bias")][k] = -thresholds[k]
    # block 12: emb[f] = pattern[f] · Σ c_k hinge_k
    s[blk(12, "weight")][:, :len(thresholds), 0, 0] = np.outer(emb_pattern(), coeffs)
    return s.d


def known_answer_weights(mode: str = "ave") -> tuple[KnownAnswerWeights, KnownAnswerWeights]:
    """``(generator, audio_encoder)`` state dicts built analytically (see the module docstring)."""
    if mode not in MODES:
        raise InputError(f"unknown generator mode {mode!r} (expected one of {', '.join(MODES)})")
    return (KnownAnswerWeights(_generator(mode), "generator", mode),
            KnownAnswerWeights(_audio_encoder(), "audio_encoder", None))
