"""libx264 presets and CRFs on fastgen's own frames: CPU ms per frame, bitrate and PSNR, as JSON.

    python bench/x264_presets.py [--frames 100] [--presets ultrafast,superfast,veryfast,faster] [--crfs 18,20]

Renders the demo avatar's frames once, then encodes them with each setting through PyAV (what
``fastgen.sinks.VideoFile`` uses) and decodes them back.  The README's preset table comes from here.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--presets", default="ultrafast,superfast,veryfast,faster")
    p.add_argument("--crfs", default="18,20")
    args = p.parse_args(argv)

    import av
    import numpy as np

    from fastgen import Generator, demo

    gen = Generator(demo.avatar(), threads=2)
    frames = [f.image for f in gen.frames(demo.audio(), count=args.frames)]
    h, w = frames[0].shape[:2]
    report = {}
    for preset in args.presets.split(","):
        for crf in (int(c) for c in args.crfs.split(",")):
            buf = io.BytesIO()
            with av.open(buf, mode="w", format="mp4") as container:
                stream = container.add_stream("libx264", rate=25)
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                stream.options = {"crf": str(crf), "preset": preset}
                t, c = time.perf_counter(), time.process_time()
                for i, image in enumerate(frames):
                    vf = av.VideoFrame.from_ndarray(image, format="bgr24")
                    vf.pts = i
                    for packet in stream.encode(vf):
                        container.mux(packet)
                for packet in stream.encode():
                    container.mux(packet)
                wall, cpu = time.perf_counter() - t, time.process_time() - c
            data = buf.getvalue()
            with av.open(io.BytesIO(data)) as back:
                decoded = [f.to_ndarray(format="bgr24") for f in back.decode(video=0)]
            mse = float(np.mean([(a.astype(np.float64) - b) ** 2 for a, b in zip(decoded, frames)]))
            report[f"{preset}-crf{crf}"] = {
                "cpu_ms_per_frame": round(cpu / len(frames) * 1000, 2), "fps": round(len(frames) / wall, 1),
                "kbit_s": round(len(data) * 8 / (len(frames) / 25) / 1000), "psnr_db": round(10 * np.log10(255 ** 2 / mse), 2)}
    print(json.dumps({"frames": len(frames), "size": [w, h], "settings": report}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
