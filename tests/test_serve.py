"""``fastgen serve``: the session clock, the shared scheduler, and the server over loopback WebRTC.

The loopback tests run a real aiortc client against the aiohttp app on 127.0.0.1 (ICE candidates
on loopback only), on the small synthetic avatar: its generator output differs from the template
by ~95 grey levels inside the face box, so a *mouth frame* is any decoded frame whose face box is
far from every template's.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import threading
import time
import weakref

import numpy as np
import pytest
import soundfile as sf

from references import speech_like

aiohttp = pytest.importorskip("aiohttp")
aiortc = pytest.importorskip("aiortc")

from fastgen import Avatar, Generator  # noqa: E402
from fastgen.serve.app import KEY, ServeOptions, create_app  # noqa: E402
from fastgen.serve.scheduler import InferenceScheduler, Lane  # noqa: E402
from fastgen.serve.session import AUDIO_CHUNK, TICK, LiveSession, SampleClock  # noqa: E402
from fastgen.serve.speech import to_play_rate  # noqa: E402
from fastgen.serve.tracks import keep_media_on_loopback  # noqa: E402

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def gen(dataset):
    avatar = Avatar.open(dataset, generator=dataset / "generator.onnx", audio_encoder=dataset / "audio_encoder.onnx")
    return Generator(avatar, sessions=1, backend="ort", precision="fp32")


def wav_bytes(seconds: float, seed: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, speech_like(seconds, seed=seed), 16000, format="WAV")
    return buf.getvalue()


class FakeClock(SampleClock):
    """A session clock the test moves by hand."""

    def __init__(self):
        self.t = 1000.0
        super().__init__(now=lambda: self.t)


def wait_for(condition, timeout=60.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


# ---------------------------------------------------------------------------------------------- one clock


def test_one_clock_pins_frames_and_sound_to_the_same_samples(gen, monkeypatch):
    """Frame j plays at tick start/1920 + j and is the stream's frame j; sample s plays at start + s.

    The test's clock waits for every frame; holding (which compares the generator's real turnaround
    with time left on this clock) is switched off so every frame is generated."""
    monkeypatch.setattr("fastgen.serve.scheduler.MAX_HELD_RUN", 0)
    audio = to_play_rate(speech_like(0.8, seed=5), 16000)
    ref_stream = gen.stream(sample_rate=48000)
    ref = [f for i in range(0, len(audio), TICK) for f in ref_stream.push(audio[i:i + TICK])] + ref_stream.flush()
    scheduler = InferenceScheduler()
    clock = FakeClock()
    session = LiveSession("s1", "test", gen, Lane(scheduler, gen.sessions[0]), clock=clock)
    try:
        clock.start()
        idle = [session.video_frame(n) for n in range(3)]
        order = gen.avatar.order(3)
        for image, k in zip(idle, order):                       # idle: the ping-pong walk, silence
            np.testing.assert_array_equal(image, gen.avatar.frame(k))
        assert not session.audio_chunk(0).any()
        u = session.speak(audio)
        wait_for(lambda: 0 in u.frames)
        n, a = 3, 3 * TICK
        shown, heard = {}, []
        while session.speaking:
            image = session.video_frame(n)
            if u.start is not None and n * TICK >= u.start:
                shown[(n * TICK - u.start) // TICK] = image
            while a < (n + 1) * TICK:                           # the audio of this tick, 20 ms at a time
                heard.append((a, session.audio_chunk(a)))
                a += AUDIO_CHUNK
            n += 1
            clock.t += 1 / 25
            wait_for(lambda: not session.speaking or u.total_frames is not None
                     or u.made > (n * TICK - (u.start or n * TICK)) // TICK + 1)
        assert session.late == 0 and session.lane.held == 0
        assert u.start % TICK == 0 and u.start == 4 * TICK        # the tick after frame 0 existed
        assert sorted(shown)[:len(ref)] == list(range(len(ref)))
        for j, f in enumerate(ref):
            np.testing.assert_array_equal(shown[j], f.image)
        played = np.concatenate([x for s, x in heard if s >= u.start])
        np.testing.assert_allclose(played[:len(audio)], audio, atol=1 / 32768)
        assert not np.concatenate([x for s, x in heard if s < u.start]).any()
        assert session.av_offset_s == pytest.approx(0.0, abs=AUDIO_CHUNK / 48000)
    finally:
        session.close()
        scheduler.close()


def test_interrupt_stops_mouth_and_sound_at_the_next_tick(gen):
    scheduler = InferenceScheduler()
    clock = FakeClock()
    session = LiveSession("s2", "test", gen, Lane(scheduler, gen.sessions[0]), clock=clock)
    try:
        clock.start()
        u = session.speak(to_play_rate(speech_like(3.0, seed=6), 16000))
        wait_for(lambda: 0 in u.frames)
        session.video_frame(0)
        wait_for(lambda: 2 in u.frames)
        for n in range(1, 3):
            assert session.video_frame(n) is not None
        assert session.audio_chunk(u.start).any()
        assert session.interrupt() == 1
        assert not session.speaking
        idle = session.video_frame(3)
        assert any(np.array_equal(idle, gen.avatar.frame(k)) for k in range(len(gen.avatar)))
        assert not session.audio_chunk(u.start + AUDIO_CHUNK).any()
        u2 = session.speak(to_play_rate(speech_like(0.5, seed=7), 16000))    # and it speaks again
        wait_for(lambda: 0 in u2.frames)
    finally:
        session.close()
        scheduler.close()
    assert not session.speaking


# ---------------------------------------------------------------------------------------------- scheduler


class SlowModel:
    def __init__(self):
        self.order = []
        self.lock = threading.Lock()

    def run(self, feeds):
        time.sleep(0.01)
        with self.lock:
            self.order.append(feeds["who"])
        return np.zeros((len(feeds["input"]), 3, 4, 4), np.float32)


def test_scheduler_takes_speaking_sessions_in_turn():
    model, scheduler = SlowModel(), InferenceScheduler()
    lanes = [Lane(scheduler, model) for _ in range(3)]
    counts = [30, 30, 10]

    def speak(i):
        for _ in range(counts[i]):
            lanes[i].run({"input": np.zeros(1), "who": i})

    threads = [threading.Thread(target=speak, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    scheduler.close()
    assert [lane.generated for lane in lanes] == counts
    # while all three speak, nobody gets a second turn before the others had theirs
    first = model.order[:27]
    for i in range(0, 27, 3):
        assert sorted(first[i:i + 3]) == [0, 1, 2], first
    assert scheduler.runs == 70


def test_an_idle_scheduler_keeps_no_session_alive():
    model, scheduler = SlowModel(), InferenceScheduler()
    lane = Lane(scheduler, model)
    lane.run({"input": np.zeros(1), "who": 0})
    ref = weakref.ref(lane)
    del lane
    gc.collect()
    alive = ref() is not None
    scheduler.close()
    assert not alive


def test_lane_holds_frames_it_cannot_make_in_time():
    model, scheduler = SlowModel(), InferenceScheduler()
    lane = Lane(scheduler, model)
    lane.begin(lambda j: 10 if j < 2 else -1)                # frames 2.. are already due
    outs = [lane.run({"input": np.zeros(1), "who": 0}) for _ in range(5)]
    scheduler.close()
    assert lane.generated == 2 and lane.held == 3
    assert outs[2] is outs[3] is outs[4] and np.array_equal(outs[4], outs[1])   # the previous mouth
    assert [lane.content_of(j) for j in range(5)] == [0, 1, 1, 1, 1]


def test_holding_step_shows_the_previous_image_again(gen):
    from fastgen.serve.scheduler import HoldingStep

    class FaceModel:
        def run(self, feeds):
            return np.full((len(feeds["input"]), 3, 320, 320), 0.5, np.float32)

    scheduler = InferenceScheduler()
    lane = Lane(scheduler, FaceModel())
    lane.begin(lambda j: 10 if j < 1 else -1)
    step = HoldingStep(gen.step, lane)
    generated = step.finish(1, lane.run({"input": np.zeros(1)})[0])
    np.testing.assert_array_equal(generated, gen.step.finish(1, np.full((3, 320, 320), 0.5, np.float32)))
    held = step.finish(2, lane.run({"input": np.zeros(1)})[0])
    scheduler.close()
    assert lane.held == 1 and held is generated                # no paste: the same image again


def test_lane_generates_after_a_run_of_held_frames():
    """A stale turnaround (after a stall) must not hold every frame from then on."""
    from fastgen.serve.scheduler import MAX_HELD_RUN

    model, scheduler = SlowModel(), InferenceScheduler()
    lane = Lane(scheduler, model)
    lane.begin(lambda j: 10 if j < 2 else -1)
    for _ in range(2 + 2 * (MAX_HELD_RUN + 1)):
        lane.run({"input": np.zeros(1), "who": 0})
    scheduler.close()
    assert lane.generated == 4 and lane.held == 2 * MAX_HELD_RUN
    contents = [lane.content_of(j) for j in range(2 + 2 * (MAX_HELD_RUN + 1))]
    assert max(j - c for j, c in enumerate(contents)) == MAX_HELD_RUN


# ---------------------------------------------------------------------------------------------- loopback


@contextlib.asynccontextmanager
async def serving(generators, **options):
    from aiohttp import web

    keep_media_on_loopback()
    app = create_app(generators, ServeOptions(**options))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield app, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class Viewer:
    """An aiortc client: offers to receive video and audio, decodes and keeps what it needs."""

    def __init__(self, gen):
        self.gen = gen
        self.video, self.audio = [], []      # (pts, time_base, width, height, mouth) / (pts, rate, samples, peak)
        self.tasks = []

    async def connect(self, http, base, headers=AUTH):
        from aiortc import RTCPeerConnection, RTCSessionDescription

        self.pc = RTCPeerConnection()
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")
        tracks = {}
        self.pc.on("track", lambda t: tracks.__setitem__(t.kind, t))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        r = await http.post(f"{base}/sessions", json={"sdp": self.pc.localDescription.sdp, "type": "offer"},
                            headers=headers)
        answer = await r.json()
        assert r.status == 200, answer
        self.sid = answer["session"]
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        self.tasks = [asyncio.ensure_future(self.read_video(tracks)), asyncio.ensure_future(self.read_audio(tracks))]
        return self

    def mouth(self, image):
        """Distance of the face box from the nearest template's (grey levels)."""
        av = self.gen.avatar
        return min(np.abs(image[y0:y1, x0:x1].astype(np.int16) - av.frame(k)[y0:y1, x0:x1]).mean()
                   for k in range(len(av)) for x0, y0, x1, y1 in [av.box(k)])

    async def read_video(self, tracks):
        while "video" not in tracks:
            await asyncio.sleep(0.01)
        with contextlib.suppress(aiortc.mediastreams.MediaStreamError):
            while True:
                f = await tracks["video"].recv()
                self.video.append((f.pts, f.time_base, f.width, f.height, self.mouth(f.to_ndarray(format="bgr24"))))

    async def read_audio(self, tracks):
        while "audio" not in tracks:
            await asyncio.sleep(0.01)
        with contextlib.suppress(aiortc.mediastreams.MediaStreamError):
            while True:
                f = await tracks["audio"].recv()
                self.audio.append((f.pts, f.sample_rate, f.samples, int(np.abs(f.to_ndarray()).max())))

    def mouth_frames(self, since=0):
        return sum(1 for v in self.video[since:] if v[4] > 30)

    async def close(self):
        await self.pc.close()
        for t in self.tasks:
            t.cancel()


async def until(condition, timeout=60.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.05)


def test_loopback_two_sessions_speak_interrupt_and_errors(gen):
    async def scenario():
        async with serving({"test": gen}, max_sessions=2, token=TOKEN) as (app, base), \
                aiohttp.ClientSession() as http:
            server = app[KEY]
            # auth, malformed offers
            assert (await http.get(f"{base}/health")).status == 401
            assert (await http.get(f"{base}/", headers={})).status == 200          # the page is public
            r = await http.post(f"{base}/sessions", data="{not json", headers=AUTH)
            assert r.status == 400 and "JSON" in (await r.json())["error"]
            r = await http.post(f"{base}/sessions", json={"sdp": "v=0\r\nnonsense", "type": "offer"}, headers=AUTH)
            assert r.status == 400 and "malformed offer" in (await r.json())["error"]
            r = await http.post(f"{base}/sessions", json={"sdp": "x", "type": "offer", "avatar": "nope"}, headers=AUTH)
            assert r.status == 400 and "test" in (await r.json())["error"]
            assert not server.sessions

            a = await Viewer(gen).connect(http, base)
            b = await Viewer(gen).connect(http, base)
            third = Viewer(gen)
            with pytest.raises(AssertionError, match="full"):
                await third.connect(http, base)
            await third.close()
            await until(lambda: len(a.video) > 10 and len(a.audio) > 20 and len(b.video) > 10)

            # bad audio: a one-line 400, the session goes on
            r = await http.post(f"{base}/sessions/{a.sid}/speak", data=b"RIFF garbage", headers=AUTH)
            body = await r.json()
            assert r.status == 400 and "cannot read the upload as audio" in body["error"] and "\n" not in body["error"]
            r = await http.post(f"{base}/sessions/{a.sid}/speak?format=pcm&rate=16000", data=b"abc", headers=AUTH)
            assert r.status == 400 and "odd" in (await r.json())["error"]
            assert (await http.post(f"{base}/sessions/nope/speak", data=b"", headers=AUTH)).status == 404

            # both speak at once: both get mouth frames
            before_a, before_b = len(a.video), len(b.video)
            r = await http.post(f"{base}/sessions/{a.sid}/speak", data=wav_bytes(4.0, 1), headers=AUTH)
            assert r.status == 200 and (await r.json())["seconds"] == pytest.approx(4.0, abs=0.01)
            pcm = (speech_like(1.5, seed=2) * 32767).astype("<i2")
            for i in range(0, len(pcm), 3200):                  # a TTS stream: 0.2 s chunks, then end
                last = "&end=1" if i + 3200 >= len(pcm) else ""
                r = await http.post(f"{base}/sessions/{b.sid}/speak?format=pcm&rate=16000{last}",
                                    data=pcm[i:i + 3200].tobytes(), headers=AUTH)
                assert r.status == 200
            await until(lambda: a.mouth_frames(before_a) >= 2 and b.mouth_frames(before_b) >= 2)
            sa, sb = server.sessions[a.sid], server.sessions[b.sid]
            assert sa.lane.generated > 0 and sb.lane.generated > 0
            metrics = await (await http.get(f"{base}/metrics", headers=AUTH)).text()
            assert "fastgen_serve_sessions 2" in metrics
            for name in ("generated_fps", "late_frames_total", "queue_depth", "av_offset_seconds", "held_frames_total"):
                assert f"fastgen_serve_session_{name}{{session=\"{a.sid[:6]}\"" in metrics
            assert a.sid not in metrics                          # the id is a capability: never published

            # interrupt: the session is idle at once, and what arrives afterwards has no mouth
            r = await http.post(f"{base}/sessions/{a.sid}/interrupt", headers=AUTH)
            assert r.status == 200 and (await r.json())["dropped"] == 1
            assert not sa.speaking
            ticks = sa.ticks
            await until(lambda: sa.ticks >= ticks + 25)
            mark = len(a.video)
            await until(lambda: len(a.video) >= mark + 10)
            assert a.mouth_frames(mark) == 0

            # timestamps: video on the 90 kHz clock in 1/25 s steps, audio 48 kHz in 20 ms steps
            v_pts = np.diff([v[0] for v in a.video])
            assert {v[1] for v in a.video} == {aiortc.mediastreams.VIDEO_TIME_BASE}
            assert {(v[2], v[3]) for v in a.video} == {gen.avatar.frame_size}
            # (a held image is not re-sent, so a step may be several ticks; idle ticks are single steps)
            assert np.all(v_pts % 3600 == 0) and np.all(v_pts > 0) and np.median(v_pts) == 3600
            a_pts = np.diff([x[0] for x in a.audio])
            assert {(x[1], x[2]) for x in a.audio} == {(48000, 960)} and np.mean(a_pts == 960) > 0.9
            assert max(x[3] for x in a.audio) > 1000              # the speech was heard

            # ending a session frees it; a client that vanishes is cleaned up
            ref = weakref.ref(sa)
            del sa
            assert (await http.delete(f"{base}/sessions/{a.sid}", headers=AUTH)).status == 200
            await a.close()
            assert a.sid not in server.sessions
            await until(lambda: gc.collect() >= 0 and ref() is None, timeout=10)   # aiortc's tasks wind down
            await b.close()                                      # hangs up without DELETE
            await until(lambda: not server.sessions, timeout=30)
            health = await (await http.get(f"{base}/health", headers=AUTH)).json()
            assert health["sessions"] == 0

    asyncio.run(scenario())


def test_microphone_voice_opens_an_utterance_silence_ends_it_and_is_not_echoed(gen):
    scheduler = InferenceScheduler()
    clock = FakeClock()
    session = LiveSession("s3", "test", gen, Lane(scheduler, gen.sessions[0]), clock=clock)
    try:
        chunk = AUDIO_CHUNK
        for _ in range(10):                                     # room noise: nothing happens
            session.speak_mic(np.full(chunk, 1e-4, np.float32))
        assert not session.speaking
        voice = to_play_rate(speech_like(1.0, seed=8), 16000)
        for i in range(0, len(voice), chunk):
            session.speak_mic(voice[i:i + chunk])
        assert session.speaking
        for _ in range(int(0.7 * 48000 / chunk)):               # 0.7 s of silence ends it
            session.speak_mic(np.zeros(chunk, np.float32))
        clock.start()
        session.video_frame(0)
        wait_for(lambda: session.lane.generated > 0)
        for n in range(1, 60):
            session.video_frame(n)
            assert not session.audio_chunk(n * TICK).any()          # the viewer's own voice is not played back
            clock.t += 1 / 25
    finally:
        session.close()
        scheduler.close()


def test_limits_and_cli_checks(gen, monkeypatch, capsys):
    from fastgen.cli import main

    async def scenario():
        async with serving({"test": gen}, max_upload_bytes=50_000, max_seconds=2.0) as (app, base), \
                aiohttp.ClientSession() as http:
            server = app[KEY]
            session = LiveSession("limits", "test", gen, Lane(server.scheduler, gen.sessions[0]))
            server.sessions[session.id] = session
            url = f"{base}/sessions/{session.id}/speak"
            assert (await http.post(url, data=b"\0" * 60_000)).status == 413          # upload size
            form = aiohttp.FormData()
            form.add_field("audio", b"\0" * 60_000, filename="big.wav")
            assert (await http.post(url, data=form)).status == 413                    # ... as a form too
            form = aiohttp.FormData()
            form.add_field("audio", wav_bytes(1.0, 3), filename="ok.wav")
            assert (await http.post(url, data=form)).status == 200
            session.interrupt()
            long = io.BytesIO()
            sf.write(long, np.zeros(3 * 8000), 8000, subtype="PCM_U8", format="WAV")      # 3 s in 24 kB
            r = await http.post(url, data=long.getvalue())
            assert r.status == 400 and "limit is 2 s" in (await r.json())["error"]
            r = await http.post(url, data=wav_bytes(0.1, 1))
            assert r.status == 400 and "at least" in (await r.json())["error"]
            r = await http.post(url, data=wav_bytes(1.0, 1))
            assert r.status == 200
            session.interrupt()

    asyncio.run(scenario())
    assert main(["serve", "--max-sessions", "0"]) == 2
    assert "--max-sessions must be > 0" in capsys.readouterr().err
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "aiortc" else real(name, *a))
    assert main(["serve"]) == 2
    assert 'pip install "fastgen[serve]"' in capsys.readouterr().err
