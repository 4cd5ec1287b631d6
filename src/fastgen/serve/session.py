"""One live session: its clock, its speech queue, the frames and sound its tracks play.

**One clock.**  The session counts samples at 48 kHz from the moment its tracks first pull.  Audio
chunk ``a`` is the 960 samples from sample ``a``; video tick ``n`` is the frame at sample
``1920 n`` (25 fps).  Both tracks' timestamps are these sample positions, so they cannot drift.
An utterance is pinned to the clock when its first frame exists: its sample ``s`` plays at session
sample ``start + s`` and its frame ``j`` at ``start + 1920 j``.

**Idle.**  Between utterances video ticks walk the templates in ping-pong order and audio is silence.

**Speech** is made on the session's own thread: audio is pushed into a
:class:`fastgen.stream.Stream` (see ``_push_frames``), no more than the lookahead ahead of what plays, and the generator runs through the session's :class:`~.scheduler.Lane` on the shared
scheduler.  A frame the generator cannot make by its tick is *held* (the previous image again, see
:class:`~.scheduler.HoldingStep`); one not ready when its tick plays is *late* (the previous image
is shown).  The audio plays on untouched either way.

**Interrupt** drops the current and queued utterances: the next tick is idle and the next audio
chunk silent, so only frames already handed to the tracks still show.
"""
from __future__ import annotations

import collections
import itertools
import threading
import time
from typing import Callable, Optional

import numpy as np

from ..errors import FastgenError, InputError
from ..stream import Stream
from .scheduler import HoldingStep, Lane
from .speech import PLAY_RATE, MicGate, Utterance

VIDEO_FPS = 25
TICK = PLAY_RATE // VIDEO_FPS          # 1920 samples per video frame
AUDIO_CHUNK = PLAY_RATE // 50          # 960 samples: 20 ms, one Opus frame
LOOKAHEAD = 8                          # frames made ahead of the playout (~0.3 s of images) ...
MAX_LOOKAHEAD = 30                     # ... more while the generator is slow, up to 1.2 s (~80 MB at 720p)
MAX_PUSH = 16                          # frames of audio pushed at once when behind (batched encoder)
FIRST_PUSH = 12                        # frame 0 needs ~0.45 s of audio (docs/semantics.md §3.3)
MAX_LATE_FRAMES = 2                    # a frame up to 80 ms late is shown on the next tick
MAX_QUEUE = 16                         # utterances waiting behind the current one
MIC_SILENCE_DB = -45.0                 # microphone speech: no generator work on silent frames


class SessionBusy(FastgenError):
    """Too much speech is already waiting."""


class SampleClock:
    """The session's one clock: 48 kHz samples since the tracks started pulling."""

    def __init__(self, now: Callable[[], float] = time.monotonic):
        self.now = now
        self.t0: Optional[float] = None

    def start(self) -> None:
        if self.t0 is None:
            self.t0 = self.now()

    @property
    def running(self) -> bool:
        return self.t0 is not None

    def sample(self) -> int:
        return int((self.now() - self.t0) * PLAY_RATE) if self.t0 is not None else 0

    def time_of(self, sample: int) -> float:
        """The monotonic time at which session ``sample`` plays."""
        return (self.t0 if self.t0 is not None else self.now()) + sample / PLAY_RATE


class LiveSession:
    """One viewer's avatar: speech in (``speak_*``, ``interrupt``), frames and sound out."""

    def __init__(self, sid: str, avatar_name: str, generator, lane: Lane, *,
                 clock: Optional[SampleClock] = None):
        self.id, self.avatar_name, self.generator, self.lane = sid, avatar_name, generator, lane
        self.clock = clock or SampleClock()
        self.created = time.monotonic()
        avatar = generator.avatar
        self.frame_size = avatar.frame_size
        self._cycle = avatar.order(max(1, 2 * (len(avatar) - 1)))   # one ping-pong period
        self._idle_tick = 0
        self._last_image: Optional[np.ndarray] = None
        self._cond = threading.Condition()
        self._queue: collections.deque = collections.deque()
        self._current: Optional[Utterance] = None
        self._uids = itertools.count(1)
        self._closed = False
        self._step = HoldingStep(generator.step, lane)
        self._mic = MicGate()
        self._mic_utterance: Optional[Utterance] = None
        # metrics
        self.ticks = 0              # video frames handed to the track
        self.speech_ticks = 0       # ... of them showing speech
        self.late = 0               # speech ticks whose frame was not ready (previous image held)
        self.skipped_ticks = 0      # ticks skipped because the sender fell behind real time
        self.skipped_audio = 0      # audio chunks skipped for the same reason
        self.repeats_not_sent = 0   # ticks whose image was the one just sent (held): not re-encoded
        self.underruns = 0          # audio chunks of a streaming utterance that had not arrived
        self.av_offset_s = 0.0      # video content time minus audio time at the last speech tick
        self.latencies: collections.deque = collections.deque(maxlen=500)  # chunk -> first mouth frame
        self.errors: collections.deque = collections.deque(maxlen=20)
        self._audio_next = 0
        self._audio_pulled_at = -1.0
        self._thread = threading.Thread(target=self._speech_loop, name=f"fastgen-serve-{sid[:6]}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ speech in (any thread)

    def speak(self, audio48: np.ndarray) -> Utterance:
        """Queue a whole clip (float32 mono 48 kHz)."""
        u = Utterance(next(self._uids), "file")
        u.append(audio48, last=True)
        self._enqueue(u)
        return u

    def speak_pcm(self, samples: np.ndarray, rate: int, *, last: bool = False,
                  max_seconds: float = float("inf")) -> Utterance:
        """Append a chunk of a streaming utterance (TTS, s16 at ``rate``); ``last`` ends it.  A new
        one opens when none is streaming; its rate is the first chunk's."""
        with self._cond:
            u = next((x for x in [self._current, *self._queue] if x is not None and x.kind == "pcm"
                      and not x.complete), None)
        if u is not None and u.seconds + len(samples) / rate > max_seconds:
            raise InputError(f"the streamed utterance would pass the {max_seconds:g} s limit; end it (end=1)")
        if u is None:
            u = Utterance(next(self._uids), "pcm", rate=rate)
            self._enqueue(u)
        with self._cond:
            u.append(samples, last=last)
            self._cond.notify_all()
        return u

    def speak_mic(self, samples48: np.ndarray) -> None:
        """The viewer's microphone (48 kHz mono): voice opens an utterance, silence ends it.  Its
        sound is not played back (it would echo)."""
        state, x = self._mic.feed(samples48)
        if state == "quiet":
            return
        if state == "start":
            self._mic_utterance = Utterance(next(self._uids), "mic", echo=False)
            try:
                self._enqueue(self._mic_utterance)
            except FastgenError:
                self._mic_utterance = None
                return
        u = self._mic_utterance
        if u is not None:
            with self._cond:
                u.append(x, last=state == "end")
                self._cond.notify_all()
        if state == "end":
            self._mic_utterance = None

    def _enqueue(self, u: Utterance) -> None:
        with self._cond:
            if self._closed:
                raise FastgenError("the session has ended")
            if len(self._queue) >= MAX_QUEUE:
                raise SessionBusy(f"{MAX_QUEUE} utterances are already waiting; interrupt or wait")
            self._queue.append(u)
            self._cond.notify_all()

    def interrupt(self) -> int:
        """Stop speaking now; returns how many utterances were dropped."""
        with self._cond:
            dropped = len(self._queue) + (self._current is not None)
            self._queue.clear()
            self._current = None
            self._mic_utterance = None
            self._cond.notify_all()
        return dropped

    @property
    def speaking(self) -> bool:
        return self._current is not None or bool(self._queue)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        """End the session: its thread stops and every buffer is released."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._current = None
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)
        self._last_image = None

    # ------------------------------------------------------------------ frames and sound out (tracks)

    def video_frame(self, n: int) -> np.ndarray:
        """The image of video tick ``n`` (session sample 1920 n): a speech frame, held, or idle."""
        now_sample = n * TICK
        with self._cond:
            u = self._current
            if u is not None and u.start is None and 0 in u.frames:
                # the next tick that the audio track has not reached yet (it may be ahead of a late video tick)
                heard = -(-(self.clock.sample() + AUDIO_CHUNK) // TICK) * TICK
                u.start = max(now_sample + TICK, heard)
                self._cond.notify_all()
            image = None
            if u is not None and u.start is not None and now_sample >= u.start:
                image = self._speech_image(u, (now_sample - u.start) // TICK, now_sample)
            if image is None:
                image = self._idle_image()
            self._last_image = image
            self.ticks += 1
        return image

    def _speech_image(self, u: Utterance, j: int, now_sample: int) -> Optional[np.ndarray]:
        if u.total_frames is not None and j >= u.total_frames:
            if u.played >= len(u.audio) or not u.echo:
                self._finish(u)
            return None
        self.speech_ticks += 1
        entry = u.frames.pop(j, None)
        if entry is None:
            self.late += 1
            # a frame that missed its tick by at most MAX_LATE_FRAMES is still the best picture there is
            recent = [i for i in u.frames if j - MAX_LATE_FRAMES <= i < j]
            entry = u.frames[max(recent)] if recent else None
        for stale in [i for i in u.frames if i < j]:
            del u.frames[stale]
        self._cond.notify_all()                      # the speech thread may make the next frame
        if entry is None:
            return self._last_image
        image, content = entry
        self.av_offset_s = (u.start + content * TICK - self._audio_next) / PLAY_RATE
        if image is not self._last_image and content <= j:   # a mouth not shown before: chunks up to it are seen
            now = time.monotonic()
            while u.arrivals and u.arrivals[0][0] <= content * TICK:
                self.latencies.append(now - u.arrivals.pop(0)[1])
        return image

    def _idle_image(self) -> np.ndarray:
        k = self._cycle[self._idle_tick % len(self._cycle)]
        self._idle_tick += 1
        return self.generator.avatar.frame(k)

    @property
    def audio_position(self) -> Optional[int]:
        """The session sample the audio track has sent up to; None while it is not being pulled."""
        return self._audio_next if time.monotonic() - self._audio_pulled_at < 0.5 else None

    def audio_chunk(self, a: int) -> np.ndarray:
        """The 960 samples (float32, 48 kHz) from session sample ``a``."""
        out = np.zeros(AUDIO_CHUNK, np.float32)
        with self._cond:
            self._audio_next = a + AUDIO_CHUNK
            self._audio_pulled_at = time.monotonic()
            u = self._current
            if u is None or u.start is None or a + AUDIO_CHUNK <= u.start:
                return out
            s = a - u.start
            lo = max(0, -s)
            got = u.audio.read(max(s, 0), AUDIO_CHUNK - lo)
            if u.echo:
                out[lo:lo + len(got)] = got
            u.played = max(u.played, s + AUDIO_CHUNK)
            if len(got) < AUDIO_CHUNK - lo and not u.complete:
                self.underruns += 1
            u.consumed()
            if u.complete and u.played >= len(u.audio) and u.total_frames is not None \
                    and u.start + u.total_frames * TICK <= a + AUDIO_CHUNK:
                self._finish(u)
        return out

    def _finish(self, u: Utterance) -> None:
        if self._current is u:
            self._current = None
            self._cond.notify_all()

    # ------------------------------------------------------------------ speech thread

    def _deadline(self, u: Utterance) -> Callable[[int], Optional[float]]:
        return lambda j: None if u.start is None else self.clock.time_of(u.start + j * TICK) - self.clock.now()

    def _next_utterance(self) -> Optional[Utterance]:
        with self._cond:
            while not self._closed and (self._current is not None or not self._queue):
                self._cond.wait(0.5)
            if self._closed:
                return None
            self._current = self._queue.popleft()
            return self._current

    def _speech_loop(self) -> None:
        while True:
            u = self._next_utterance()
            if u is None:
                return
            try:
                self._make_frames(u)
            except Exception as exc:  # a bad utterance (too short) or a failed run ends it, not the session
                u.error = (str(exc).splitlines() or [type(exc).__name__])[0]
                self.errors.append(f"utterance {u.uid}: {u.error}")
                with self._cond:
                    self._finish(u)

    def _live(self, u: Utterance) -> bool:
        return not self._closed and self._current is u

    def _make_frames(self, u: Utterance) -> None:
        gen = self.generator
        stream = Stream(self._step, self.lane, gen.encode_windows, gen.audio_shape, batch=1,
                        sample_rate=PLAY_RATE, silence_db=MIC_SILENCE_DB if u.kind == "mic" else None)
        self.lane.begin(self._deadline(u))
        while True:
            with self._cond:
                while self._live(u) and (
                        (u.fed >= len(u.audio) and not u.complete)          # waiting for audio
                        or (u.start is not None and u.made - self._played_frames(u) > self._lookahead())
                        or (u.start is None and u.made > self._lookahead())):
                    self._cond.wait(0.1)
                if not self._live(u):
                    return
                chunk = u.audio.read(u.fed, TICK * self._push_frames(u))
                ending = u.complete and u.fed + len(chunk) >= len(u.audio)
            frames = stream.push(chunk) if len(chunk) else []
            u.fed += len(chunk)
            if ending:
                frames += stream.flush()
            with self._cond:
                if not self._live(u):
                    return
                for f in frames:
                    u.frames[f.position] = (f.image, self.lane.content_of(f.position))
                    u.made = f.position + 1
                if ending:
                    u.total_frames = u.made
                self._cond.notify_all()
            if ending:
                return

    def _push_frames(self, u: Utterance) -> int:
        """Frames of audio to push next.  A push hands its frames over only when it returns, so one
        frame at a time while ahead of the playout (a generated frame then delays no other);
        several while behind (they are due, so held: cheap, and the encoder runs batched); the
        first push brings the ~0.45 s of audio frame 0 needs."""
        if u.start is None:
            return FIRST_PUSH if u.fed == 0 else 1
        ahead = u.made - self._played_frames(u)
        return 1 if ahead >= 1 else min(MAX_PUSH, 2 - ahead)

    def _lookahead(self) -> int:
        """Frames to make ahead of the playout: enough that a frame asked for now can still be
        generated before it is due (else the lane would hold every frame)."""
        need = int(1.5 * self.lane.turnaround_s * VIDEO_FPS) + 4
        return max(LOOKAHEAD, min(MAX_LOOKAHEAD, need))

    def _played_frames(self, u: Utterance) -> int:
        return max(0, (self.clock.sample() - u.start) // TICK) if u.start is not None else 0
