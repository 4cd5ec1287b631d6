"""``fastgen serve`` under load: N live sessions on one model, one JSON object.

Each session is a real :class:`fastgen.serve.session.LiveSession` on the server's shared
scheduler, played by the server's own aiortc tracks (``recv()`` paced by the session clock, as
aiortc's sender pulls them) and encoded as the sender does (VP8 video and Opus audio through
aiortc's encoders, on the default executor).  Only the network and a client are left out: a
client decoding N 720p streams on the same cores would be charged to the server.  Every session
speaks without pause: a TTS-like stream of 16 kHz PCM chunks pushed in real time.

Per session: generated fps, late (a tick's frame not ready: previous image shown), held (not
generated: the previous image again), skipped ticks (the sender fell behind real time), latency
from a chunk arriving to its first mouth frame being sent, the A/V offset at the end (speech time
of the mouth sent minus that of the sound sent), RSS at the start and end.

    flock /tmp/fastgen-bench.lock python bench/serve.py --sessions 1 2 4 --seconds 30 --churn 10
    flock /tmp/fastgen-bench.lock python bench/serve.py --sessions 1 --seconds 600     # the soak
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402

CHUNK_S = 0.1          # TTS chunk length


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


async def play(track, encoder, stop: float, counts: dict) -> None:
    """Pull a track in real time and encode every frame, as aiortc's RTCRtpSender does."""
    loop = asyncio.get_running_loop()
    while time.monotonic() < stop:
        frame = await track.recv()
        await loop.run_in_executor(None, encoder.encode, frame)
        counts[track.kind] += 1


async def talk(session, wav: np.ndarray, stop: float) -> None:
    """A TTS stream: CHUNK_S of 16 kHz s16 PCM every CHUNK_S seconds, looping the clip."""
    step = int(16000 * CHUNK_S)
    t0, i = time.monotonic(), 0
    while time.monotonic() < stop:
        a = (i * step) % (len(wav) - step)
        session.speak_pcm(wav[a:a + step], 16000)
        i += 1
        await asyncio.sleep(max(0.0, t0 + i * CHUNK_S - time.monotonic()))


def quantiles(xs) -> dict:
    xs = list(xs)
    if len(xs) < 2:
        return {"median": round(xs[0], 3) if xs else None, "p95": round(xs[0], 3) if xs else None}
    q = statistics.quantiles(xs, n=100)
    return {"median": round(q[49], 3), "p95": round(q[94], 3)}


async def run_sessions(gen, n: int, seconds: float, rss_every: float) -> dict:
    from aiortc.codecs import get_encoder
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    from fastgen import demo
    from fastgen.benchmarks.live import rss_mb
    from fastgen.serve.scheduler import InferenceScheduler, Lane
    from fastgen.serve.session import LiveSession
    from fastgen.serve.tracks import AvatarAudioTrack, AvatarVideoTrack

    scheduler = InferenceScheduler()
    sessions = [LiveSession(f"bench{i}", "demo", gen, Lane(scheduler, gen.sessions[0])) for i in range(n)]
    vp8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    opus = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
    wav = np.clip(demo.audio(30.0, seed=7) * 32767, -32768, 32767).astype(np.int16)
    rss = [round(rss_mb(), 1)]
    load_start = os.getloadavg()[0]
    t_start = time.monotonic()
    stop = t_start + seconds
    counts = [{"video": 0, "audio": 0} for _ in sessions]
    tracks = [(AvatarVideoTrack(s), AvatarAudioTrack(s)) for s in sessions]
    tasks = []
    for s, (video, audio), c in zip(sessions, tracks, counts):
        tasks += [play(video, get_encoder(vp8), stop, c), play(audio, get_encoder(opus), stop, c), talk(s, wav, stop)]

    async def sample_rss():
        while time.monotonic() < stop:
            await asyncio.sleep(rss_every)
            rss.append(round(rss_mb(), 1))

    await asyncio.gather(*tasks, sample_rss())
    wall = time.monotonic() - t_start
    per_session = []
    for s, (video, audio), c in zip(sessions, tracks, counts):
        per_session.append({
            "generated_fps": round(s.lane.generated / wall, 2),
            "generated_frames": s.lane.generated, "held_frames": s.lane.held, "late_frames": s.late,
            "speech_ticks": s.speech_ticks, "video_ticks": s.ticks, "video_frames_sent": c["video"], "audio_frames_sent": c["audio"],
            "repeats_not_sent": s.repeats_not_sent, "skipped_ticks": s.skipped_ticks, "skipped_audio_chunks": s.skipped_audio, "audio_underruns": s.underruns,
            "latency_chunk_to_first_mouth_frame_s": quantiles(s.latencies),
            "av_offset_end_s": round(s.av_offset_s, 4),
            "errors": list(s.errors),
        })
    for s in sessions:
        s.close()
    scheduler.close()
    return {"sessions": n, "seconds": round(wall, 1), "load_average_1min": [round(load_start, 2), round(os.getloadavg()[0], 2)], "generated_fps_total": round(scheduler.runs / wall, 2),
            "generator_busy_ratio": round(scheduler.busy_s / wall, 3),
            "rss_mb_start": rss[0], "rss_mb_end": rss[-1], "rss_mb_samples": rss, "per_session": per_session,
            "full_rate": all(p["generated_fps"] >= 24 and p["late_frames"] <= 0.01 * p["speech_ticks"]
                             for p in per_session),
            # bounded: the sender kept real time (under 1 % of ticks skipped) and a chunk's mouth came
            # within 2 s (p95), i.e. the delay did not grow with the load
            "bounded": all(p["skipped_ticks"] <= 0.01 * p["video_ticks"]
                           and p["skipped_audio_chunks"] <= 0.01 * p["audio_frames_sent"]
                           and (p["latency_chunk_to_first_mouth_frame_s"]["p95"] or 9) <= 2.0 for p in per_session)}


async def churn(gen, count: int, seconds: float) -> dict:
    """Sessions opened, made to speak and closed one after another: RSS before and after."""
    import gc

    from fastgen.benchmarks.live import rss_mb

    before = None
    for i in range(count + 1):
        row = await run_sessions(gen, 1, seconds, seconds)
        gc.collect()
        if i == 0:                 # the first one warms caches (templates, arenas): measure after it
            before = round(rss_mb(), 1)
    return {"sessions_opened_and_closed": count, "seconds_each": seconds, "rss_mb_after_first": before,
            "rss_mb_after_last": round(rss_mb(), 1), "last": {"generated_frames": row["per_session"][0]["generated_frames"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=30.0, help="per session count (default: 30)")
    parser.add_argument("--backend", nargs="+", default=["ort", "auto"],
                        help="backends to measure (default: ort fp32, then auto: the fastest faithful)")
    parser.add_argument("--rss-every", type=float, default=30.0, help="RSS sample period, s")
    parser.add_argument("--churn", type=int, default=0, help="then open, speak and close this many sessions "
                        "one after another (first backend): RSS before and after")
    args = parser.parse_args()
    from fastgen import Generator, demo

    report = {"cpu": cpu_model(), "runs": []}
    for backend in args.backend:
        gen = Generator(demo.avatar(), sessions=1, backend=backend,
                        precision="fp32" if backend == "ort" else "auto")
        for n in args.sessions:
            row = asyncio.run(run_sessions(gen, n, args.seconds, args.rss_every))
            row.update(backend=gen.choice.backend, precision=gen.choice.precision, requested=backend,
                       choice=str(gen.choice))
            report["runs"].append(row)
            print(json.dumps({k: row[k] for k in ("requested", "sessions", "generated_fps_total", "full_rate",
                                                  "bounded")}), file=sys.stderr, flush=True)
        report.setdefault("most_sessions_full_rate", {})[backend] = max(
            [r["sessions"] for r in report["runs"] if r["requested"] == backend and r["full_rate"]], default=0)
        report.setdefault("most_sessions_bounded", {})[backend] = max(
            [r["sessions"] for r in report["runs"] if r["requested"] == backend and r["bounded"]], default=0)
    if args.churn:
        gen = Generator(demo.avatar(), sessions=1, backend=args.backend[0],
                        precision="fp32" if args.backend[0] == "ort" else "auto")
        report["churn"] = asyncio.run(churn(gen, args.churn, 4.0))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
