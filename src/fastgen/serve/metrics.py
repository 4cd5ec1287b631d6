"""``GET /metrics``: the server and every live session in Prometheus text format.

Sessions are labelled by the first 6 characters of their id: the whole id is a capability (it
controls the session), so it is never published.
"""
from __future__ import annotations

import statistics


SERVER = (
    ("fastgen_serve_sessions", "gauge", "Live sessions.", lambda s: len(s.sessions)),
    ("fastgen_serve_max_sessions", "gauge", "Sessions allowed (--max-sessions).", lambda s: s.options.max_sessions),
    ("fastgen_serve_generated_fps", "gauge", "Frames generated per second, all sessions, last 5 s.",
     lambda s: round(s.scheduler.generated_fps(), 3)),
    ("fastgen_serve_queue_depth", "gauge", "Generator requests waiting for their turn.",
     lambda s: s.scheduler.queue_depth),
    ("fastgen_serve_generator_runs_total", "counter", "Generator runs, all sessions.", lambda s: s.scheduler.runs),
    ("fastgen_serve_generator_busy_seconds_total", "counter", "Time the generator ran.",
     lambda s: round(s.scheduler.busy_s, 3)),
)

SESSION = (
    ("fastgen_serve_session_generated_fps", "gauge", "Frames generated for the session per second, last 5 s.",
     lambda x: round(x.lane.generated_fps(), 3)),
    ("fastgen_serve_session_generated_frames_total", "counter", "Speech frames the generator made.",
     lambda x: x.lane.generated),
    ("fastgen_serve_session_held_frames_total", "counter",
     "Speech frames not generated (overload): the previous mouth was repeated.", lambda x: x.lane.held),
    ("fastgen_serve_session_late_frames_total", "counter",
     "Speech ticks whose frame was not ready in time: the previous image was shown.", lambda x: x.late),
    ("fastgen_serve_session_skipped_ticks_total", "counter",
     "Video ticks skipped because the sender fell behind real time.", lambda x: x.skipped_ticks),
    ("fastgen_serve_session_skipped_audio_chunks_total", "counter",
     "20 ms audio chunks skipped because the sender fell behind real time.", lambda x: x.skipped_audio),
    ("fastgen_serve_session_repeats_not_sent_total", "counter",
     "Video ticks whose (held) image was just sent: not encoded again.", lambda x: x.repeats_not_sent),
    ("fastgen_serve_session_video_ticks_total", "counter", "Video ticks played (sent, or a held image kept).",
     lambda x: x.ticks),
    ("fastgen_serve_session_speech_frames_total", "counter", "Video frames sent while speaking.",
     lambda x: x.speech_ticks),
    ("fastgen_serve_session_audio_underruns_total", "counter",
     "Audio chunks of a streamed utterance that had not arrived in time (silence played).", lambda x: x.underruns),
    ("fastgen_serve_session_queue_depth", "gauge", "Utterances waiting.", lambda x: x.queued),
    ("fastgen_serve_session_av_offset_seconds", "gauge",
     "Speech time of the mouth shown minus speech time of the sound playing, at the last speech frame.",
     lambda x: round(x.av_offset_s, 4)),
)


def latency_quantiles(session) -> dict:
    """Seconds from a speech chunk arriving to its first mouth frame being sent (recent chunks)."""
    xs = sorted(session.latencies)
    if not xs:
        return {}
    if len(xs) == 1:
        return {"0.5": xs[0], "0.95": xs[0]}
    q = statistics.quantiles(xs, n=100)
    return {"0.5": q[49], "0.95": q[94]}


def render_metrics(server) -> str:
    lines = []
    for name, kind, text, value in SERVER:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value(server)}"]
    sessions = list(server.sessions.values())
    for name, kind, text, value in SESSION:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        lines += [f"{name}{{{labels(x)}}} {value(x)}" for x in sessions]
    name = "fastgen_serve_session_latency_seconds"
    lines += [f"# HELP {name} Speech chunk arrival to its first mouth frame sent.", f"# TYPE {name} summary"]
    for x in sessions:
        for q, v in latency_quantiles(x).items():
            lines.append(f'{name}{{{labels(x)},quantile="{q}"}} {v:.4f}')
        lines.append(f"{name}_count{{{labels(x)}}} {len(x.latencies)}")
    return "\n".join(lines) + "\n"


def labels(session) -> str:
    return f'session="{session.id[:6]}",avatar="{session.avatar_name}"'
