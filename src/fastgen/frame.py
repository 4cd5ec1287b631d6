"""One output frame: the public :class:`Frame`, and the per-frame step that makes it.

The step has two halves around the model (docs/semantics.md §5-§6):

- :func:`fill_input`: the 320x320 ROI of a template's 328x328 crop -> the generator's 6-channel
  input (face + face with the mouth masked);
- :func:`paste_output`: the generator's 320x320 output -> written back into the crop, resized to
  the crop box and pasted (hard, or with a feathered edge) into the full frame.

:class:`FrameStep` applies them to an avatar's cached templates; the engine, the stream and the
benchmark's baselines all go through these functions.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from . import image
from .errors import InputError

_ROI = slice(image.ROI_OFFSET, image.ROI_OFFSET + image.ROI_SIZE)
BLENDS = {"hard": 0, "feather": 6}   # edge ramp in pixels of the box as pasted (docs/semantics.md §6.4)


class Frame:
    """One finished output frame.

    ``index`` counts frames from the start of the clip (or of the stream), ``pts`` is its
    presentation time in seconds and ``image`` the uint8 BGR (H, W, 3) frame.  Streams also say
    which ``utterance`` a frame belongs to, its ``position`` within it (-1 for idle frames) and
    whether the generator made it (``generated``; False for template frames).

    ``template`` and ``changed`` say what the image is made of: template ``template``'s frame,
    identical to it outside the box ``changed`` (x0, y0, x1, y1; an empty box for a plain
    template frame).  The JPEG sink uses them to re-encode only the rows that changed
    (:mod:`fastgen.splice`).  A step that changes other pixels must make a new Frame without them
    (the defaults: unknown, full encode).

    The engine's frames are made lazily: they hold ``patch``, the pixels inside ``changed``, and
    ``base``, a callable that returns the template's frame; ``image`` composes the two on first
    use (and keeps the result).  A sink that needs only the changed rows never decodes the rest.
    ``region``, when the step made it, is ``(pixels, (x0, y0, x1, y1))``: the frame's pixels in a
    box that holds ``changed`` (the JPEG tiles around it; ``patch`` is a view of them), so a
    splicing sink encodes them as they are.  ``base_into``, when given, writes the base into a
    buffer (a template decoded straight into it) for :meth:`paint`.
    """

    __slots__ = ("index", "pts", "_image", "utterance", "position", "generated", "template", "changed",
                 "patch", "base", "region", "base_into")

    def __init__(self, index: int, pts: float, image: Optional[np.ndarray] = None, utterance: int = 0,
                 position: int = 0, generated: bool = True, template: int = -1,
                 changed: Optional[tuple] = None, *, patch: Optional[np.ndarray] = None,
                 base: Optional[Callable[[], np.ndarray]] = None,
                 region: Optional[tuple[np.ndarray, tuple]] = None,
                 base_into: Optional[Callable[[np.ndarray], object]] = None):
        if image is None and (patch is None or base is None or changed is None):
            raise ValueError("a Frame needs its image, or a patch, the box it changes and its base")
        self.index, self.pts, self._image = index, pts, image
        self.utterance, self.position, self.generated = utterance, position, generated
        self.template, self.changed, self.patch, self.base = template, changed, patch, base
        self.region, self.base_into = region, base_into

    @property
    def image(self) -> np.ndarray:
        if self._image is None:
            x0, y0, x1, y1 = self.changed
            image = self.base().copy()
            image[y0:y1, x0:x1] = self.patch
            self._image = image
        return self._image

    @image.setter
    def image(self, value: np.ndarray) -> None:
        self._image = value

    def paint(self, out: np.ndarray) -> np.ndarray:
        """Write the frame's image into ``out`` (H, W, 3) uint8, any row pitch, without keeping
        it: a lazy frame copies its template once, straight into ``out``, and pastes its patch
        (a video sink paints into the encoder's own frame buffer).  Returns ``out``."""
        if self._image is not None:
            out[...] = self._image
            return out
        x0, y0, x1, y1 = self.changed
        if self.base_into is not None:
            self.base_into(out)
        else:
            out[...] = self.base()
        out[y0:y1, x0:x1] = self.patch
        return out

    def __repr__(self) -> str:
        return (f"Frame(index={self.index}, pts={self.pts:.3f}, template={self.template}, "
                f"changed={self.changed}, generated={self.generated})")


def feather_width(blend: str) -> int:
    """Edge ramp in pixels for a blend name ("hard" = the reference's paste)."""
    if blend not in BLENDS:
        raise InputError(f"blend must be one of {sorted(BLENDS)}, got {blend!r}")
    return BLENDS[blend]


def fill_input(crop328: np.ndarray, out: np.ndarray) -> None:
    """Write the generator input (6, 320, 320) float32 of one 328x328 crop into ``out``."""
    image.to_generator_input(crop328[_ROI, _ROI], out)


def paste_output(pred: np.ndarray, crop328: np.ndarray, frame: np.ndarray, box: Sequence[int],
                 feather: int) -> np.ndarray:
    """Write ``pred`` (3, 320, 320) into the writable ``crop328`` and paste it into ``frame``."""
    image.from_generator_output(pred, crop328[_ROI, _ROI])
    return image.composite_patch(frame, crop328, box, feather=feather)


class FrameStep:
    """The per-frame step on an avatar's templates: ``fill(k, out)``, then ``finish(k, pred)``.

    Safe to call from many threads: templates come read-only from the avatar's shared cache and
    every finished frame is a fresh array.
    """

    def __init__(self, avatar, blend: str = "feather"):
        self.avatar = avatar
        self.blend = blend
        self.feather = feather_width(blend)
        # template k -> (changed, the region box around it, changed within that box): fixed per
        # template, so a frame computes none of it (workers share the GIL for such Python)
        self._geometries: dict[int, tuple[tuple, tuple, tuple]] = {}

    def _geometry(self, k: int) -> tuple[tuple, tuple, tuple]:
        boxes = self._geometries.get(k)
        if boxes is None:
            changed = self.changed(k)
            around = self.avatar.region_box(k, *changed)
            local = (changed[0] - around[0], changed[1] - around[1], changed[2] - around[0], changed[3] - around[1])
            boxes = self._geometries[k] = (changed, around, local)
        return boxes

    def fill(self, k: int, out: np.ndarray) -> None:
        """Generator input of template ``k`` into ``out`` (6, 320, 320) float32."""
        fill_input(self.avatar.crop(k), out)

    def finish(self, k: int, pred: np.ndarray, alpha: float = 1.0) -> np.ndarray:
        """The full frame of template ``k`` with the generated patch ``pred`` pasted in.

        ``alpha < 1`` blends the result with the plain template (a stream's silence crossfade).
        """
        x0, y0, x1, y1 = self.changed(k)
        frame = self.avatar.frame(k).copy()       # decoded first: patch() then cuts its rows from it
        frame[y0:y1, x0:x1] = self.patch(k, pred)
        if alpha < 1.0:
            frame = (frame * alpha + self.avatar.frame(k) * (1.0 - alpha) + 0.5).astype(np.uint8)
        return frame

    def patch(self, k: int, pred: np.ndarray) -> np.ndarray:
        """The pixels of :meth:`finish`'s frame inside :meth:`changed`'s box, without the frame
        (a view of :meth:`patch_region`'s pixels)."""
        pixels, _ = self.patch_region(k, pred)
        lx0, ly0, lx1, ly1 = self._geometry(k)[2]
        return pixels[ly0:ly1, lx0:lx1]

    def patch_region(self, k: int, pred: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """The finished frame's pixels in :meth:`Avatar.region_box` of the crop box, and that box.

        The template's pixels come from :meth:`Avatar.region`: a decode of only the JPEG tiles
        around the box (the tiles a spliced JPEG re-encodes, which it then takes from here as they
        are), never of the whole frame.  Those pixels are copied, ``pred`` converted and pasted in
        one GIL-free call (:func:`fastgen.image.paste_generated`): with several workers, every
        extra release of the GIL is one more chance to wait for it.
        """
        _, around, local = self._geometry(k)
        template = self.avatar.region(k, *around)
        pixels = np.empty(template.shape, np.uint8)      # the kernel copies the template in
        image.paste_generated(pred, self.avatar.crop(k), pixels, local, self.feather, base=template)
        return pixels, around

    def frame(self, j: int, pts: float, k: int, pred: np.ndarray) -> Frame:
        """Output frame ``j`` (at ``pts``) of template ``k`` with ``pred`` pasted, made lazily."""
        pixels, around = self.patch_region(k, pred)
        changed, _, (lx0, ly0, lx1, ly1) = self._geometry(k)
        return Frame(j, pts, template=k, changed=changed, patch=pixels[ly0:ly1, lx0:lx1],
                     base=lambda: self.avatar.frame(k), position=j, region=(pixels, around),
                     base_into=lambda out: self.avatar.frame_into(k, out))

    def template(self, k: int) -> np.ndarray:
        """A writable copy of template ``k``'s frame (idle or silent frames)."""
        return self.avatar.frame(k).copy()

    def changed(self, k: int) -> tuple:
        """The box outside which :meth:`finish` leaves template ``k``'s frame untouched."""
        return tuple(int(v) for v in self.avatar.box(k))
