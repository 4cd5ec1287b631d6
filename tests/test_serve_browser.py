"""``fastgen serve`` in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``)
driven by Selenium opens the page, connects, speaks a clip through the page's file input, and
screenshots the playing avatar.

One command: ``pytest tests/test_serve_browser.py`` (``.ci/run`` installs Chromium first);
``FASTGEN_UPDATE_SCREENSHOT=1`` also writes the screenshot to ``docs/serve.png``.
"""
from __future__ import annotations

import asyncio
import io
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("aiortc")
webdriver = pytest.importorskip("selenium.webdriver")

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "browser-token"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver "
                       "(apt-get install chromium chromium-driver; .ci/run does this)"),
]


class ServerThread:
    """The app on 127.0.0.1 in its own event loop (Selenium blocks the test's thread)."""

    def __init__(self, generators, **options):
        from aiohttp import web

        from fastgen.serve.app import ServeOptions, create_app
        from fastgen.serve.tracks import keep_media_on_loopback

        keep_media_on_loopback()
        self.loop = asyncio.new_event_loop()
        self.app = create_app(generators, ServeOptions(**options))
        self.runner = web.AppRunner(self.app)
        ready = threading.Event()

        def serve():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.port = self.runner.addresses[0][1]
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        assert ready.wait(30)

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def chromium():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 "--autoplay-policy=no-user-gesture-required", "--allow-loopback-in-peer-connection",
                 "--window-size=1320,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=options)


def test_browser_connects_speaks_and_shows_the_avatar(demo_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTGEN_CACHE", str(demo_cache))
    from fastgen import Generator, demo
    from fastgen.serve.app import KEY

    gen = Generator(demo.avatar(), sessions=1, backend="ort", precision="fp32")
    clip = tmp_path / "clip.wav"
    sf.write(clip, demo.audio(6.0, seed=4), 16000)
    server = ServerThread({"demo": gen}, token=TOKEN)
    browser = chromium()
    try:
        browser.get(f"http://127.0.0.1:{server.port}/?token={TOKEN}")
        wait = lambda js, timeout=60: _until(lambda: browser.execute_script(js), timeout)  # noqa: E731
        wait("return document.querySelectorAll('#avatar option').length > 0")     # /avatars took the token
        assert "token" not in browser.current_url                                  # taken once, then hidden
        browser.find_element("id", "connect").click()
        wait("const v = document.getElementById('video'); return v.readyState >= 2 && v.currentTime > 0.5")
        assert browser.execute_script("return document.getElementById('video').videoWidth") == 1280
        sid = browser.execute_script("return window.fastgen.session()")
        session = server.app[KEY].sessions[sid]
        browser.find_element("id", "file").send_keys(str(clip))                   # the page's own upload
        _until(lambda: session.lane.generated >= 3 and session.speaking, 60)
        time.sleep(1.0)                                                            # let the browser play it
        shot = tmp_path / "serve.png"
        browser.save_screenshot(str(shot))
        audio_packets = browser.execute_script("""
            const stats = await window.fastgen.peer().getStats();
            let n = 0; stats.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'audio') n += s.packetsReceived; });
            return n;""")
        assert audio_packets > 50
        assert not browser.execute_script("return document.getElementById('error').textContent")
        browser.find_element("id", "stop").click()
        _until(lambda: not session.speaking, 10)
        # the microphone (Chromium's fake device beeps): the avatar lip-syncs the viewer's voice
        browser.find_element("id", "disconnect").click()
        _until(lambda: sid not in server.app[KEY].sessions, 10)
        browser.find_element("id", "mic").click()
        browser.find_element("id", "connect").click()
        _until(lambda: browser.execute_script("return window.fastgen.session()"), 30)
        mic_session = server.app[KEY].sessions[browser.execute_script("return window.fastgen.session()")]
        _until(lambda: mic_session.lane.generated >= 2, 60)
    finally:
        browser.quit()
        server.stop()
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"), np.float32)
    assert pixels.std() > 20                                  # a picture, not a black or empty page
    if os.environ.get("FASTGEN_UPDATE_SCREENSHOT"):
        shutil.copy(shot, ROOT / "docs" / "serve.png")


def _until(condition, timeout):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.1)
