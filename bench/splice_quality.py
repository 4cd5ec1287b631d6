"""What splicing does to JPEG frames: size and fidelity against a full re-encode, as JSON.

    python bench/splice_quality.py [--frames 100] [--quality 95]

Renders the demo avatar's frames once (lazy engine frames, as ``fastgen run`` makes them), then
encodes each one spliced (only the tiles under the face box fresh; the rest is the template's own
coded data) and whole (``--jpeg-mode full``).  Reports the mean file size of each, their PSNR
against the rendered pixels (whole frame, and outside the re-encoded tiles, where the spliced
frame is the template's stored JPEG), and how many tiles a frame re-encodes.  The README's line on
what splicing means for quality comes from here.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return round(10 * np.log10(255 ** 2 / mse), 2) if mse else 99.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--quality", type=int, default=95)
    args = p.parse_args(argv)

    import numpy as np
    import simplejpeg

    from fastgen import Generator, demo
    from fastgen.jpeg_layout import split
    from fastgen.splice import SplicingEncoder, TileGrid, encode

    gen = Generator(demo.avatar())
    av = gen.avatar
    splicer = SplicingEncoder(av.jpeg, av.frame, args.quality, template_region=av.region)
    sizes = {"splice": [], "full": []}
    whole = {"splice": [], "full": []}
    outside = {"splice": [], "full": []}
    tiles = []
    for frame in gen.frames(demo.audio(), count=args.frames):
        image = frame.image
        grid = TileGrid.of(split(av.jpeg(frame.template))[0])
        t0, r0, t1, r1 = grid.span(*frame.changed)
        tiles.append((t1 - t0) * (r1 - r0))
        x0, y0, x1, y1 = grid.pixels(t0, r0, t1, r1)
        keep = np.ones(image.shape[:2], bool)
        keep[y0:y1, x0:x1] = False
        for mode, data in (("splice", splicer.encode_frame(frame)), ("full", encode(image, args.quality))):
            got = simplejpeg.decode_jpeg(data, colorspace="BGR")
            sizes[mode].append(len(data))
            whole[mode].append(psnr(got, image))
            outside[mode].append(psnr(got[keep], image[keep]))
    report = {
        "frames": args.frames, "quality": args.quality, "frame_size": list(av.frame_size),
        "tiles_per_frame": {"mean": round(float(np.mean(tiles)), 1), "of": grid.count,
                            "tile_px": [grid.tile_px, 16]},
        "bytes_mean": {m: round(float(np.mean(v))) for m, v in sizes.items()},
        "splice_size_vs_full": round(float(np.mean(sizes["splice"]) / np.mean(sizes["full"])), 4),
        "psnr_db_vs_rendered": {m: round(float(np.mean(v)), 2) for m, v in whole.items()},
        "psnr_db_outside_fresh_tiles": {m: round(float(np.mean(v)), 2) for m, v in outside.items()},
        "note": "outside the fresh tiles a spliced frame is the template's own stored JPEG (no second "
                "compression); a full re-encode compresses the template's decoded pixels again",
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
