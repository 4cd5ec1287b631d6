"""The aiohttp application: the page, the session API, auth, limits and metrics.

=====================================  ==========================================================
``GET /``                              the page (static HTML + JS; takes ``?token=T`` once)
``GET /avatars``                       the avatars this server has
``POST /sessions``                     WebRTC offer ``{"sdp", "type", "avatar"}`` -> answer + ``session``
``POST /sessions/{id}/speak``          an audio file (body or multipart ``audio``), or raw PCM:
                                       ``?format=pcm&rate=16000[&end=1]``, s16le mono chunks
``POST /sessions/{id}/interrupt``      stop speaking now
``DELETE /sessions/{id}``              end the session and free it
``GET /health``, ``GET /metrics``      status as JSON; Prometheus text
=====================================  ==========================================================

With a token every call but the page needs ``Authorization: Bearer T`` (401 otherwise).
"""
from __future__ import annotations

import asyncio
import hmac
import importlib.resources
import json
import secrets
from dataclasses import dataclass
from typing import Optional

from aiohttp import web

from ..errors import FastgenError, InputError
from .metrics import render_metrics
from .scheduler import InferenceScheduler, Lane
from .session import LiveSession, SessionBusy
from .speech import decode_audio_file, decode_pcm

PUBLIC_PATHS = ("/", "/app.js", "/favicon.ico")


@dataclass(frozen=True)
class ServeOptions:
    max_sessions: int = 4
    token: Optional[str] = None
    max_upload_bytes: int = 20 * 2**20
    max_seconds: float = 300.0              # the longest utterance, uploaded or streamed
    connect_timeout_s: float = 30.0         # a session whose peer never connects is ended
    inference_threads: int = 1


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Server:
    """The server's state: avatars (one Generator each), the shared scheduler, live sessions."""

    def __init__(self, generators: dict, options: ServeOptions):
        if not generators:
            raise InputError("fastgen serve needs at least one avatar")
        self.generators, self.options = dict(generators), options
        self.scheduler = InferenceScheduler(options.inference_threads)
        self.sessions: dict = {}
        self.peers: dict = {}

    def session(self, request: web.Request) -> LiveSession:
        session = self.sessions.get(request.match_info["sid"])
        if session is None:
            raise web.HTTPNotFound(text=json.dumps({"error": "no such session (it ended, or never existed)"}),
                                   content_type="application/json")
        return session

    async def end(self, sid: str) -> bool:
        session, pc = self.sessions.pop(sid, None), self.peers.pop(sid, None)
        if pc is not None:
            await pc.close()
        if session is not None:
            await asyncio.get_running_loop().run_in_executor(None, session.close)
        return session is not None

    async def close(self) -> None:
        for sid in list(self.sessions):
            await self.end(sid)
        self.scheduler.close()


KEY = web.AppKey("fastgen", Server)


@web.middleware
async def guard(request: web.Request, handler):
    """Token check, and fastgen's own errors as one-line 400s."""
    token = request.app[KEY].options.token
    if token and request.path not in PUBLIC_PATHS:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return error(401, "missing or wrong token: send 'Authorization: Bearer <token>'")
    try:
        return await handler(request)
    except SessionBusy as exc:
        return error(429, str(exc))
    except FastgenError as exc:
        return error(400, str(exc))


def page_file(name: str) -> bytes:
    return importlib.resources.files("fastgen.serve").joinpath("page", name).read_bytes()


async def index(request: web.Request) -> web.Response:
    return web.Response(body=page_file("index.html"), content_type="text/html")


async def script(request: web.Request) -> web.Response:
    return web.Response(body=page_file("app.js"), content_type="application/javascript")


async def avatars(request: web.Request) -> web.Response:
    server = request.app[KEY]
    return web.json_response([{"name": name, "width": g.avatar.frame_size[0], "height": g.avatar.frame_size[1],
                               "templates": len(g.avatar), "weights": g.weights}
                              for name, g in server.generators.items()])


async def create_session(request: web.Request) -> web.Response:
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from .tracks import AvatarAudioTrack, AvatarVideoTrack, consume_microphone

    server = request.app[KEY]
    try:
        params = json.loads(await request.text())
    except (ValueError, UnicodeDecodeError):
        return error(400, "the body must be JSON: {\"sdp\": ..., \"type\": \"offer\", \"avatar\": ...}")
    if not isinstance(params, dict) or not isinstance(params.get("sdp"), str) or params.get("type") != "offer":
        return error(400, "malformed offer: expected {\"sdp\": <string>, \"type\": \"offer\"}")
    name = params.get("avatar") or next(iter(server.generators))
    if not isinstance(name, str) or name not in server.generators:
        return error(400, f"no avatar {name!r}; this server has {', '.join(server.generators)}")
    if len(server.sessions) >= server.options.max_sessions:
        return error(503, f"the server is full ({server.options.max_sessions} sessions); try again later")
    gen = server.generators[name]
    sid = secrets.token_urlsafe(18)
    session = LiveSession(sid, name, gen, Lane(server.scheduler, gen.sessions[0]))
    pc = RTCPeerConnection()
    server.sessions[sid], server.peers[sid] = session, pc

    @pc.on("track")
    def on_track(track):
        if track.kind == "audio":
            asyncio.ensure_future(consume_microphone(track, session))

    @pc.on("connectionstatechange")
    async def on_state():
        if pc.connectionState in ("failed", "closed"):     # the client vanished or hung up
            await server.end(sid)

    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=params["sdp"], type="offer"))
        kinds = {t.kind for t in pc.getTransceivers()}
        if not {"audio", "video"} <= kinds:
            raise ValueError("the offer needs an audio and a video transceiver")
        pc.addTrack(AvatarVideoTrack(session))
        pc.addTrack(AvatarAudioTrack(session))
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:  # aiortc raises ValueError, KeyError, IndexError ... on a bad SDP
        await server.end(sid)
        reason = (str(exc).splitlines() or [""])[0] or type(exc).__name__
        return error(400, f"malformed offer: {reason}")
    asyncio.get_running_loop().call_later(server.options.connect_timeout_s, _end_if_unconnected, server, sid)
    return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type,
                              "session": sid, "avatar": name,
                              "width": gen.avatar.frame_size[0], "height": gen.avatar.frame_size[1]})


def _end_if_unconnected(server: Server, sid: str) -> None:
    pc = server.peers.get(sid)
    if pc is not None and pc.connectionState != "connected":
        asyncio.ensure_future(server.end(sid))


async def speak(request: web.Request) -> web.Response:
    server = request.app[KEY]
    session = server.session(request)
    limit = server.options.max_seconds
    if request.query.get("format", "").lower() == "pcm":
        try:
            rate = int(request.query.get("rate", "16000"))
        except ValueError:
            raise InputError(f"rate must be an integer in Hz (got {request.query.get('rate')!r})") from None
        samples = decode_pcm(await request.read(), rate)
        last = request.query.get("end", "").lower() in ("1", "true", "yes")
        u = session.speak_pcm(samples, rate, last=last, max_seconds=limit)
    else:
        data = await _upload(request)
        wav = await asyncio.get_running_loop().run_in_executor(None, decode_audio_file, data, limit)
        u = session.speak(wav)
    return web.json_response({"session": session.id, "utterance": u.uid, "seconds": round(u.seconds, 3),
                              "queued": session.queued})


async def _upload(request: web.Request) -> bytes:
    """The audio file of a speak call: the body, or the multipart part named ``audio``."""
    if request.content_type.startswith("multipart/"):
        limit = request.app[KEY].options.max_upload_bytes
        reader = await request.multipart()      # streamed: aiohttp's body limit does not apply, so count
        async for part in reader:
            if part.name == "audio" or part.filename:
                data = bytearray()
                while chunk := await part.read_chunk(1 << 16):
                    data += chunk
                    if len(data) > limit:
                        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(data))
                return bytes(data)
        raise InputError("the form has no 'audio' file part")
    return await request.read()


async def interrupt(request: web.Request) -> web.Response:
    session = request.app[KEY].session(request)
    return web.json_response({"session": session.id, "dropped": session.interrupt()})


async def delete_session(request: web.Request) -> web.Response:
    server = request.app[KEY]
    session = server.session(request)
    await server.end(session.id)
    return web.json_response({"session": session.id, "ended": True})


async def health(request: web.Request) -> web.Response:
    server = request.app[KEY]
    return web.json_response({"status": "ok", "sessions": len(server.sessions),
                              "max_sessions": server.options.max_sessions, "avatars": list(server.generators)})


async def metrics(request: web.Request) -> web.Response:
    server = request.app[KEY]
    return web.Response(text=render_metrics(server), content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


def create_app(generators: dict, options: Optional[ServeOptions] = None) -> web.Application:
    """The application serving ``generators`` (avatar name -> :class:`fastgen.Generator`)."""
    options = options or ServeOptions()
    app = web.Application(middlewares=[guard], client_max_size=options.max_upload_bytes)
    server = Server(generators, options)
    app[KEY] = server
    app.router.add_get("/", index)
    app.router.add_get("/app.js", script)
    app.router.add_get("/avatars", avatars)
    app.router.add_post("/sessions", create_session)
    app.router.add_post("/sessions/{sid}/speak", speak)
    app.router.add_post("/sessions/{sid}/interrupt", interrupt)
    app.router.add_delete("/sessions/{sid}", delete_session)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)

    async def shutdown(app: web.Application) -> None:
        await app[KEY].close()

    app.on_shutdown.append(shutdown)
    return app
