"""Router mode: a WSE endpoint inside another server's ASGI application (``WSEApp.attach``,
``detach``; ``serve_websocket`` carries each connection).

The ASGI server (uvicorn, ...) owns the socket and the WebSocket framing; the engine does
everything else on its usual code paths: the Origin and token checks, the connect and
disconnect events, system messages, encryption, compression, msgpack, topics and keepalive.
Only messages cross: what the client sends is fed to the engine, and what the engine queued for
the connection is taken from it when its wake-up fd says so. No framework is imported here;
``wse.fastapi`` wraps this for FastAPI.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from . import _logs, _runtime

if TYPE_CHECKING:
    from .app import WSEApp

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

log = logging.getLogger("wse")

_FED_BUSY = 1
_FED_CLOSED = 2
_TAKE_BATCH = 64

_DENIALS = {403: b"origin not allowed\n", 503: b"too many connections\n"}


class Router:
    """An attached application's external connections: each one's writer wake-up, and the tasks
    carrying them."""

    def __init__(self) -> None:
        self.wake: dict[int, asyncio.Event] = {}
        self.tasks: set[asyncio.Task[Any]] = set()

    def ready(self, server: _runtime.Server) -> None:
        """Wakes the writers of the external connections that have messages to send."""
        wake = self.wake
        for cid in server.ext_ready():
            ev = wake.get(cid)
            if ev is not None:
                ev.set()


def attach(app: WSEApp) -> None:
    """``WSEApp.attach``: the engine started in the running event loop without a listener."""
    if app._server is not None:
        raise RuntimeError("the application is already running")
    loop = asyncio.get_running_loop()
    _logs.start()
    server = _runtime.Server(app.config.engine_json(subscribe_hook=app._dispatch.authorize is not None))
    server.start(listen=False)
    app._loop = loop
    app._server = server
    router = app._router = Router()
    loop.add_reader(server.fd, app._dispatch.drain)
    loop.add_reader(server.ext_fd, router.ready, server)


async def detach(app: WSEApp, timeout: float) -> None:
    """``WSEApp.detach``: close the external connections (1001), wait for them (at most
    ``timeout`` seconds), and stop the engine ``attach`` started."""
    server, loop, router = app._server, app._loop, app._router
    if server is None or loop is None or router is None:
        return
    for cid in list(router.wake):
        server.disconnect(cid, 1001, "server shutting down")
    if router.tasks:
        await asyncio.wait(set(router.tasks), timeout=timeout)
    loop.remove_reader(server.fd)
    loop.remove_reader(server.ext_fd)
    server.stop()
    app._dispatch.drain_all()
    await app._dispatch.finish()
    app._server = None
    app._router = None


async def serve_websocket(app: WSEApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Carries one WebSocket connection (an ASGI ``websocket`` scope) for ``app``.

    ``app`` must be attached (``WSEApp.attach()``, done by the FastAPI router's lifespan).
    """
    if scope.get("type") != "websocket":
        raise ValueError("serve_websocket handles ASGI websocket scopes only")
    server = app.server
    router = app._router
    if router is None:
        raise RuntimeError("serve_websocket needs an attached application (WSEApp.attach())")
    first = await receive()
    if first["type"] != "websocket.connect":
        return
    headers = _headers(scope)
    client = scope.get("client")
    addr = f"{client[0]}:{client[1]}" if client else ""
    query = bytes(scope.get("query_string") or b"").decode("latin-1") or None
    cid, status, message, reason = server.ext_open(
        addr,
        origin=headers.get("origin"),
        cookie=headers.get("cookie"),
        authorization=headers.get("authorization"),
        query=query,
    )
    if status in _DENIALS:
        await _deny(scope, send, status)
        return
    if status >= 4000:
        # As the engine's own handshake does: upgrade, say why, close (4401 token, 4429 per-user limit).
        assert message is not None
        await send({"type": "websocket.accept"})
        if app.config.text_frames:
            await send({"type": "websocket.send", "text": message.decode()})
        else:
            await send({"type": "websocket.send", "bytes": message})
        await send({"type": "websocket.close", "code": status, "reason": reason})
        return
    wake = asyncio.Event()
    router.wake[cid] = wake
    task = asyncio.current_task()
    if task is not None:
        router.tasks.add(task)
    code = 1006
    reader: asyncio.Task[int] | None = None
    writer: asyncio.Task[int] | None = None
    try:
        await send({"type": "websocket.accept"})
        reader = asyncio.ensure_future(_read(app, server, cid, receive))
        writer = asyncio.ensure_future(_write(server, cid, send, wake))
        done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        # The writer ends on a server close (its code), the reader on the client's (its code).
        first_done = writer if writer in done else reader
        if not first_done.cancelled():
            exc = first_done.exception()
            if exc is None:
                code = first_done.result()
            else:
                log.debug("wse: connection %d ended by %r", cid, exc)
    finally:
        for t in (reader, writer):
            if t is not None and not t.done():
                t.cancel()
        pending = [t for t in (reader, writer) if t is not None]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        router.wake.pop(cid, None)
        if task is not None:
            router.tasks.discard(task)
        server.ext_end(cid, code)


async def _read(app: WSEApp, server: _runtime.Server, cid: int, receive: Receive) -> int:
    """Feeds client messages to the engine until the client leaves; returns its close code."""
    closing = False
    while True:
        msg = await receive()
        kind = msg["type"]
        if kind == "websocket.disconnect":
            return int(msg.get("code") or 1005)
        if kind != "websocket.receive" or closing:
            # Once the server is closing, what the client still sends is read and dropped.
            continue
        data: bytes | None = msg.get("bytes")
        text = data is None
        if data is None:
            s = msg.get("text")
            if s is None:
                continue
            data = s.encode()
        r = server.ext_feed(cid, data, text)
        while r == _FED_BUSY:
            # The drain queue is full: stop reading this client until the application drains.
            await app._dispatch.drained()
            r = server.ext_retry(cid)
        if r == _FED_CLOSED:
            closing = True


async def _write(server: _runtime.Server, cid: int, send: Send, wake: asyncio.Event) -> int:
    """Sends what the engine queued for the connection; returns the server's close code."""
    try:
        while True:
            frames, state, close = server.ext_take(cid, _TAKE_BATCH)
            for f in frames:
                if isinstance(f, bytes):
                    await send({"type": "websocket.send", "bytes": f})
                else:
                    await send({"type": "websocket.send", "text": f})
            if state == _runtime.EXT_MORE:
                await asyncio.sleep(0)  # a busy connection lets the others have their turn
            elif state == _runtime.EXT_IDLE:
                await wake.wait()
                wake.clear()
            elif state == _runtime.EXT_CLOSE:
                assert close is not None
                code, reason = close
                await send({"type": "websocket.close", "code": code, "reason": reason})
                return code
            else:
                return 1006
    except OSError:
        log.debug("wse: connection %d: client gone while sending", cid)
        return 1006


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in scope.get("headers") or ():
        name = bytes(k).decode("latin-1").lower()
        value = bytes(v).decode("latin-1")
        # Repeated cookie headers join as one list; others keep the first value.
        if name == "cookie" and name in out:
            out[name] += "; " + value
        else:
            out.setdefault(name, value)
    return out


async def _deny(scope: Scope, send: Send, status: int) -> None:
    """Refuses the upgrade with an HTTP status where the server supports it, else closes (403)."""
    body = _DENIALS[status]
    if "websocket.http.response" in (scope.get("extensions") or {}):
        await send({
            "type": "websocket.http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})
