"""The built-in demo: a procedurally drawn cartoon avatar and a speech-like clip.

Nothing is downloaded and no real person is depicted: the face is drawn with numpy (anti-aliased
ellipses on a gradient), the voice is formant synthesis.  Both are deterministic.  The avatar is
built on first use into ``$FASTGEN_CACHE`` (or ``~/.cache/fastgen``) as a fastgen pack, so
``fastgen run`` works on a fresh machine.  Its models carry the known-answer weights
(:mod:`fastgen.models.known_answer`): they give back the face they are shown and darken the mouth
with the loudness of the voice, so the demo shows a working pipeline without any trained model.

Public: :func:`avatar` -> :class:`fastgen.Avatar`, :func:`audio` -> float32 16 kHz samples.
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from .avatar import (LANDMARK_POINTS, Avatar, PackTemplate, box_from_landmarks, default_cache_dir,
                     write_pack)
from .errors import FastgenError
from .models.known_answer import LABEL as KNOWN_ANSWER_LABEL
from .splice import encode_with_restarts
from .timing import SAMPLE_RATE

FRAME_W, FRAME_H = 1280, 720
TEMPLATES = 125                 # 5 s of template video; ping-pong makes a 10 s cycle
JPEG_QUALITY = 95
DEMO_VERSION = 3                # bump when the drawing or its encoding changes: names the cache entry
DEMO_WEIGHTS = "known-answer-1"  # bump together with demo_weights(): names the cache entry
WEIGHTS_LABEL = KNOWN_ANSWER_LABEL


def demo_weights():
    """The demo's model weights, the one place that chooses them: (generator, audio encoder).

    Known-answer weights (not trained; see :mod:`fastgen.models.known_answer`).  Random
    :func:`fastgen.models.synthetic_weights` stay the ones for benchmarks and parity tests.
    """
    from .models import known_answer_weights

    return known_answer_weights("ave")


# --------------------------------------------------------------------------- drawing

_SKIN = np.array([150, 190, 240], np.float32)       # BGR
_HAIR = np.array([40, 60, 110], np.float32)
_SHIRT = np.array([150, 95, 45], np.float32)
_LIPS = np.array([95, 85, 200], np.float32)
_MOUTH = np.array([50, 40, 110], np.float32)
_WHITE = np.array([245, 245, 245], np.float32)
_PUPIL = np.array([70, 50, 30], np.float32)
_BROW = np.array([35, 45, 80], np.float32)
_BLUSH = np.array([140, 150, 245], np.float32)


def _scene() -> np.ndarray:
    """The static part of every frame: background and shoulders (the head sways above them)."""
    canvas = _background()
    _ellipse(canvas, FRAME_W / 2, 300 + 420, 300, 170, _SHIRT, shade=0.25, soft=2.0)
    return canvas


def _background() -> np.ndarray:
    y = np.linspace(0.0, 1.0, FRAME_H, dtype=np.float32)[:, None, None]
    x = np.linspace(0.0, 1.0, FRAME_W, dtype=np.float32)[None, :, None]
    top, bottom = np.array([200, 170, 140], np.float32), np.array([120, 140, 150], np.float32)
    bg = top + (bottom - top) * y + 12 * np.sin(6.0 * x + 2.0 * y)
    canvas = np.broadcast_to(bg, (FRAME_H, FRAME_W, 3)).copy()
    rng = np.random.default_rng(11)
    for _ in range(9):  # soft "bokeh" discs
        _ellipse(canvas, rng.uniform(0, FRAME_W), rng.uniform(0, FRAME_H * 0.7), *(rng.uniform(40, 110),) * 2,
                 rng.uniform(150, 235, 3).astype(np.float32), opacity=0.25, soft=30.0)
    return canvas


def _ellipse(img: np.ndarray, cx: float, cy: float, rx: float, ry: float, color, *,
             angle: float = 0.0, opacity: float = 1.0, soft: float = 1.0,
             clip_below: Optional[float] = None, clip_above: Optional[float] = None,
             shade: float = 0.0) -> None:
    """Blend an anti-aliased filled ellipse into float32 ``img`` in place, touching only its bbox.

    ``soft`` is the edge ramp width in pixels; ``clip_below``/``clip_above`` keep only the part
    above/below a horizontal line (hair caps, eyelids); ``shade`` darkens towards the lower right.
    """
    hx = hy = max(rx, ry) + soft + 1
    if not angle:
        hx, hy = rx + soft + 1, ry + soft + 1
    x0, x1 = max(int(cx - hx), 0), min(int(cx + hx) + 1, img.shape[1])
    y0, y1 = max(int(cy - hy), 0), min(int(cy + hy) + 1, img.shape[0])
    if x0 >= x1 or y0 >= y1:
        return
    yy = np.arange(y0, y1, dtype=np.float32)[:, None]
    dx, dy = np.arange(x0, x1, dtype=np.float32)[None, :] - cx, yy - cy
    if angle:
        c, s = np.cos(angle), np.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    d = np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2)
    alpha = np.clip((1.0 - d) * min(rx, ry) / soft + 0.5, 0.0, 1.0)
    if clip_below is not None:
        alpha *= np.clip(clip_below - yy + 0.5, 0.0, 1.0)
    if clip_above is not None:
        alpha *= np.clip(yy - clip_above + 0.5, 0.0, 1.0)
    alpha = (alpha * opacity)[..., None]
    col = np.asarray(color, np.float32)
    if shade:
        col = col * (1.0 - shade * np.clip((dx / rx + dy / ry) * 0.5, -1, 1))[..., None].astype(np.float32)
    region = img[y0:y1, x0:x1]
    region += alpha * (col - region)


def _pose(k: int, count: int) -> tuple[float, float, float, float]:
    """Head centre, mouth opening and eye openness of template k: slow, smooth, looping motion."""
    t = k / max(count, 1)
    cx = FRAME_W / 2 + 16 * np.sin(2 * np.pi * t) + 5 * np.sin(2 * np.pi * 3 * t + 0.5)
    cy = 300 + 7 * np.sin(2 * np.pi * 2 * t + 1.0)
    mouth = 0.5 + 0.5 * np.sin(2 * np.pi * 7 * t) ** 2
    blink = 1.0 - 0.9 * np.exp(-(((k % 47) - 23) / 1.5) ** 2)
    return float(cx), float(cy), float(mouth), float(blink)


# Face geometry relative to the head centre (head radii 150 x 190).  The SyncTalk crop box spans
# cheek to cheek and starts under the eyes, so the mouth sits in its lower half.
_HEAD_RX, _HEAD_RY = 150.0, 190.0
_BOX_HALF_W, _BOX_TOP = 112.4, -19.6
_EYE_Y, _EYE_DX, _NOSE_Y, _MOUTH_Y = -40.0, 55.0, 30.0, 112.0


def landmarks(cx: float, cy: float) -> np.ndarray:
    """110 plausible landmark points whose box rule (docs/semantics.md §4.3) gives the drawn face's crop box."""
    pts = np.zeros((LANDMARK_POINTS, 2), np.float32)
    a = np.linspace(np.pi * 0.95, np.pi * 0.05, 33)           # 0..32: cheek-chin-cheek contour
    pts[0:33, 0] = cx + _HEAD_RX * 0.95 * np.cos(a)
    pts[0:33, 1] = cy + 20 + _HEAD_RY * 0.85 * np.sin(a)
    pts[33:52, 0] = cx + np.linspace(-90, 90, 19)                # brows and eyes
    pts[33:52, 1] = cy + _EYE_Y - 15
    pts[52:64, 0] = cx + np.linspace(-12, 12, 12)                 # nose
    pts[52:64, 1] = cy + np.linspace(_BOX_TOP, _NOSE_Y + 12, 12)
    b = np.linspace(0, 2 * np.pi, LANDMARK_POINTS - 64, endpoint=False)   # mouth outline
    pts[64:, 0] = cx + 48 * np.cos(b)
    pts[64:, 1] = cy + _MOUTH_Y + 20 * np.sin(b)
    # the three points the crop box uses (docs/semantics.md §4.3); + 0.3 exercises the truncation
    pts[1, 0] = cx - _BOX_HALF_W + 0.3
    pts[31, 0] = cx + _BOX_HALF_W + 0.3
    pts[52, 1] = cy + _BOX_TOP + 0.3
    return pts


def render(k: int, count: int = TEMPLATES, scene: Optional[tuple[np.ndarray, np.ndarray]] = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Template ``k`` of ``count``: (uint8 BGR 1280x720 frame, (110, 2) float32 landmarks).

    ``scene`` is ``(float32, uint8)`` copies of :func:`_scene`, passed in to draw many frames.
    """
    if scene is None:
        base = _scene()
        scene = base, np.clip(base + 0.5, 0, 255).astype(np.uint8)
    cx, cy, mouth, blink = _pose(k, count)
    # only the head's neighbourhood changes: draw there, paste into the static scene
    x0, x1 = int(cx) - 230, int(cx) + 230
    y0, y1 = max(int(cy) - 240, 0), min(int(cy) + 310, FRAME_H)
    region = scene[0][y0:y1, x0:x1].copy()

    def draw(ex, ey, rx, ry, color, *, clip_below=None, clip_above=None, **kw):
        _ellipse(region, ex - x0, ey - y0, rx, ry, color, **kw,
                 clip_below=None if clip_below is None else clip_below - y0,
                 clip_above=None if clip_above is None else clip_above - y0)

    draw((cx + FRAME_W / 2) / 2, cy + 215, 62, 90, _SKIN * 0.85)                      # neck
    draw(FRAME_W / 2, 300 + 262, 70, 28, _SHIRT * 0.8, clip_above=300 + 262)          # collar
    for side in (-1, 1):
        draw(cx + side * 148, cy + 5, 24, 40, _SKIN * 0.92)                           # ears
    draw(cx, cy, _HEAD_RX, _HEAD_RY, _SKIN, shade=0.18, soft=1.5)                     # head
    draw(cx, cy - 40, 162, 175, _HAIR, clip_below=cy - 95, soft=1.5)                  # hair
    draw(cx - 60, cy - 120, 70, 30, _HAIR, angle=-0.5)                                # fringe
    for side in (-1, 1):
        ex, ey = cx + side * _EYE_DX, cy + _EYE_Y
        draw(ex, ey - 30, 30, 7, _BROW, angle=side * 0.12)                            # brow
        draw(ex, ey, 24, 15 * blink + 0.5, _WHITE)                                    # eye white
        if blink > 0.5:
            draw(ex + 3, ey + 1, 9, 9 * blink, _PUPIL, clip_below=ey + 15 * blink)    # pupil
            draw(ex + 6, ey - 3, 3, 3, _WHITE)                                        # highlight
        draw(cx + side * 95, cy + 65, 26, 15, _BLUSH, opacity=0.45, soft=10.0)        # blush
    draw(cx, cy + _NOSE_Y, 15, 22, _SKIN * 0.82, soft=4.0)                            # nose
    draw(cx, cy + _MOUTH_Y, 46, 9 + 14 * mouth, _LIPS)                                # lips
    draw(cx, cy + _MOUTH_Y + 1, 36, 2 + 10 * mouth, _MOUTH)                           # mouth
    draw(cx, cy + _MOUTH_Y - 2 - 4 * mouth, 24, 3, _WHITE, opacity=0.8 * mouth,
         clip_above=cy + _MOUTH_Y - 4 - 6 * mouth)                                    # teeth
    frame = scene[1].copy()
    frame[y0:y1, x0:x1] = np.clip(region + 0.5, 0, 255).astype(np.uint8)
    return frame, landmarks(cx, cy)


def render_templates(count: int = TEMPLATES, quality: int = JPEG_QUALITY) -> Iterator[PackTemplate]:
    """The demo's templates as JPEG + box, rendered one at a time."""
    base = _scene()
    scene = base, np.clip(base + 0.5, 0, 255).astype(np.uint8)
    for k in range(count):
        frame, lms = render(k, count, scene)
        # restarts every 128-pixel tile: the JPEG sink copies the tiles outside the face from here
        jpeg = encode_with_restarts(frame, quality)
        yield PackTemplate(jpeg, box_from_landmarks(lms.astype(np.int32)), f"demo template {k}")


def build_pack(dest: Path, count: int = TEMPLATES, *, keep_existing: bool = False) -> Path:
    """Write the demo avatar pack (frames + known-answer models) to ``dest``.

    ``keep_existing``: if another process finishes ``dest`` first, its pack is kept."""
    from .models import build_audio_encoder, build_generator

    def models():
        gen_w, enc_w = demo_weights()
        # known-answer weights label themselves in the model files (metadata "fastgen.weights")
        return build_generator(gen_w, "ave", source="demo"), build_audio_encoder(enc_w, source="demo")

    # the weights take as long as the frames: compute them on the other core meanwhile
    with ThreadPoolExecutor(1, thread_name_prefix="fastgen-demo") as pool:
        built = pool.submit(models)
        return write_pack(dest, render_templates(count), count=count, frame_size=(FRAME_W, FRAME_H),
                          generator=lambda: built.result()[0], audio_encoder=lambda: built.result()[1],
                          mode="ave", workers=1, keep_existing=keep_existing,
                          source={"layout": "demo", "demo_version": DEMO_VERSION, "weights": DEMO_WEIGHTS})


_lock = threading.Lock()
_opened: dict[Path, Avatar] = {}


def _writable_cache_dir(cache_dir: Optional[Path]) -> Path:
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
        return root
    except OSError:
        # read-only home (containers, CI): keep the demo for this process only
        tmp = Path(tempfile.mkdtemp(prefix="fastgen-demo-"))
        atexit.register(shutil.rmtree, tmp, True)
        return tmp


def avatar(cache_dir: Optional[Path] = None) -> Avatar:
    """The demo avatar, built on first use (a few seconds) and reused from the cache afterwards."""
    with _lock:
        dest = _writable_cache_dir(cache_dir) / f"demo-avatar-v{DEMO_VERSION}-{DEMO_WEIGHTS}"
        if dest in _opened:
            return _opened[dest]
        damaged = False
        try:
            opened = Avatar.open(dest) if dest.exists() else None
        except FastgenError:
            opened, damaged = None, True
        if opened is None:
            if damaged:
                shutil.rmtree(dest, ignore_errors=True)
            # built beside dest and renamed (fastgen.atomic): when processes race, the first one
            # wins and nobody ever sees a half-written or vanishing entry
            build_pack(dest, keep_existing=True)
            opened = Avatar.open(dest)
        _opened[dest] = opened
        return opened


# --------------------------------------------------------------------------- audio

# (F1, F2, F3) in Hz of a few vowels (adult average)
_VOWELS = np.array([[730, 1090, 2440], [530, 1840, 2480], [270, 2290, 3010],
                    [570, 840, 2410], [300, 870, 2240], [660, 1720, 2410]], np.float32)
_BANDWIDTHS = np.array([90, 110, 170], np.float32)


def audio(seconds: float = 14.0, seed: int = 7) -> np.ndarray:
    """A deterministic speech-like clip: float32 mono at 16 kHz, ``seconds`` long (10-20 s).

    Voiced formant synthesis: a harmonic source (declining, accented pitch) shaped by vowel
    formants that glide between syllables of 0.14-0.3 s, with fricative noise onsets, grouped in
    phrases of 3-8 syllables separated by 0.25-0.6 s pauses.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SAMPLE_RATE))
    f0 = np.full(n, 120.0, np.float32)
    formants = np.tile(_VOWELS[0], (n, 1))
    voice_env = np.zeros(n, np.float32)
    noise_env = np.zeros(n, np.float32)

    t = int(0.3 * SAMPLE_RATE)
    while t < n - SAMPLE_RATE // 4:
        syllables = int(rng.integers(3, 9))
        phrase_start = t
        for s in range(syllables):
            dur = int(rng.uniform(0.14, 0.30) * SAMPLE_RATE)
            onset = int(rng.uniform(0.04, 0.09) * SAMPLE_RATE) if rng.random() < 0.6 else 0
            onset = min(onset, n - t)      # a clip shorter than the phrase ends inside it
            end = min(t + onset + dur, n)
            if onset:  # a fricative ("s", "f", "sh") before the vowel
                noise_env[t:t + onset] = np.hanning(onset)[:onset] * rng.uniform(0.3, 0.6)
            seg = end - (t + onset)
            if seg <= 0:
                break
            voice_env[t + onset:end] = np.sin(np.linspace(0, np.pi, seg)) ** 0.6 * rng.uniform(0.6, 1.0)
            formants[t:end] = _VOWELS[rng.integers(len(_VOWELS))] * rng.uniform(0.95, 1.05)
            # declination over the phrase plus an accent on some syllables
            prog = (t - phrase_start) / max(1, syllables * 0.22 * SAMPLE_RATE)
            f0[t:end] = 135 - 25 * prog + (15 if rng.random() < 0.3 else 0)
            t = end
        t += int(rng.uniform(0.25, 0.6) * SAMPLE_RATE)  # pause between phrases

    # coarticulation: formant and pitch tracks glide over ~30 ms
    kernel = np.hanning(481).astype(np.float32)
    kernel /= kernel.sum()
    smooth = lambda x: np.convolve(np.pad(x, 240, mode="edge"), kernel, mode="valid")  # noqa: E731
    f0 = smooth(f0) * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * np.arange(n) / SAMPLE_RATE))  # vibrato
    formants = np.stack([smooth(formants[:, i]) for i in range(3)], axis=1)

    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = np.zeros(n, np.float64)
    for h in range(1, int(4000 / f0.min()) + 1):
        fh = h * f0
        gain = sum(np.exp(-0.5 * ((fh - formants[:, i]) / _BANDWIDTHS[i]) ** 2) * (1.0, 0.6, 0.3)[i]
                   for i in range(3))
        voiced += np.sin(h * phase) * gain / np.sqrt(h) * (fh < 7600)
    # fricative noise: white noise high-passed in the frequency domain (2-7 kHz)
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spec[(freqs < 2000) | (freqs > 7000)] = 0
    noise = np.fft.irfft(spec, n)
    voiced_rms = np.sqrt(np.mean(voiced[voice_env > 0.5] ** 2)) if (voice_env > 0.5).any() else 1.0
    noise *= voiced_rms / (np.sqrt(np.mean(noise ** 2)) + 1e-12)
    sig = voiced * voice_env + noise * noise_env + 0.002 * rng.standard_normal(n)
    sig *= 0.6 / (np.abs(sig).max() + 1e-9)
    return sig.astype(np.float32)
