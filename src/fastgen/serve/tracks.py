"""aiortc tracks that play a :class:`~.session.LiveSession`: video at 25 fps, Opus audio at 48 kHz.

Each ``recv()`` waits for its own position on the session's sample clock (video also for the
audio track to have sent that position's sound), then hands over the frame or chunk of that position; both timestamps are that sample position (video converted to the
90 kHz RTP clock), so audio and video cannot drift apart.  A track that falls more than
``MAX_BEHIND_S`` behind real time (the CPU was starved) jumps to the present instead of bursting
to catch up; the jump is counted as skipped ticks.
"""
from __future__ import annotations

import asyncio
import fractions
import ipaddress

import numpy as np
from aiortc import MediaStreamTrack
from av import AudioFrame, VideoFrame

from .session import AUDIO_CHUNK, TICK, LiveSession
from .speech import PLAY_RATE

VIDEO_CLOCK = 90000
MAX_BEHIND_S = 0.25
REPEAT_EVERY = 12          # a held image is still re-sent this often (ticks), for a receiver that lost it


class AvatarVideoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, session: LiveSession):
        super().__init__()
        self.session = session
        self.next_tick = 0
        self._sent = None          # the image last handed to the encoder
        self._sent_tick = -REPEAT_EVERY

    async def recv(self) -> VideoFrame:
        clock = self.session.clock
        clock.start()
        while True:
            n = self.next_tick
            wait = clock.time_of(n * TICK) - clock.now()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -MAX_BEHIND_S:
                now_tick = clock.sample() // TICK
                self.session.skipped_ticks += now_tick - n
                n = now_tick
            await self._follow_audio(n)
            self.next_tick = n + 1
            image = self.session.video_frame(n)
            # a held image is not sent again (the receiver keeps showing it): under overload that is
            # the encoder time the generator lacks; the timestamps stay on the 1/25 s grid
            if image is not self._sent or n - self._sent_tick >= REPEAT_EVERY:
                break
            self.session.repeats_not_sent += 1
        self._sent, self._sent_tick = image, n
        frame = VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts = n * TICK * VIDEO_CLOCK // PLAY_RATE
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return frame

    async def _follow_audio(self, n: int) -> None:
        """Hold tick ``n`` until the audio track has sent its sound: a starved event loop delays the
        audio packets too, and the receiver syncs the tracks by when their packets were sent."""
        deadline = self.session.clock.now() + MAX_BEHIND_S
        while self.session.clock.now() < deadline:
            position = self.session.audio_position
            if position is None or position >= n * TICK:
                return
            await asyncio.sleep(0.005)


class AvatarAudioTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, session: LiveSession):
        super().__init__()
        self.session = session
        self.next_sample = 0

    async def recv(self) -> AudioFrame:
        clock = self.session.clock
        clock.start()
        a = self.next_sample
        wait = clock.time_of(a) - clock.now()
        if wait > 0:
            await asyncio.sleep(wait)
        elif wait < -MAX_BEHIND_S:
            now_chunk = clock.sample() // AUDIO_CHUNK * AUDIO_CHUNK
            self.session.skipped_audio += (now_chunk - a) // AUDIO_CHUNK
            a = now_chunk
        self.next_sample = a + AUDIO_CHUNK
        pcm = self.session.audio_chunk(a)
        frame = AudioFrame(format="s16", layout="mono", samples=AUDIO_CHUNK)
        frame.planes[0].update((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes())
        frame.sample_rate = PLAY_RATE
        frame.pts = a
        frame.time_base = fractions.Fraction(1, PLAY_RATE)
        return frame


async def consume_microphone(track, session: LiveSession) -> None:
    """Feed a viewer's microphone track into the session until the track ends."""
    from av import AudioResampler
    from aiortc.mediastreams import MediaStreamError

    resampler = AudioResampler(format="flt", layout="mono", rate=PLAY_RATE)
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        for out in resampler.resample(frame):
            session.speak_mic(out.to_ndarray().reshape(-1).astype(np.float32))


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def keep_media_on_loopback() -> None:
    """Offer only 127.0.0.1 as ICE host candidate, for a server bound to loopback.

    aioice offers every interface's address except loopback; a server that only listens on
    127.0.0.1 should not send media from the machine's other addresses either.
    """
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else ["::1"]
