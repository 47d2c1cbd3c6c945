"""Peers: FastAPI's WebSocket endpoint served by uvicorn, and a plain ASGI app served by granian.

    python bench/peers/asgi_peer.py fastapi --port PORT [--jwt-secret S]
    python bench/peers/asgi_peer.py granian --port PORT [--jwt-secret S]

Both apps speak the benchmark protocol of ``common.py``. Every connection has its own task (the
ASGI model), so a publication is sent by awaiting ``send`` for each subscriber in turn; JWT is
checked from the connection's headers before ``accept`` (a bad token: close 1008).
Configuration comes from the environment (``BENCH_JWT_SECRET``), as ASGI servers import apps
by name. uvicorn (uvloop, httptools, websockets-sansio) runs ``fastapi_app`` in this process;
granian runs ``raw_app`` in one worker process (its supervisor forks it: the harness counts the
CPU of the whole process tree) with one runtime thread and uvloop.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import Auth, Hub, announce_when_listening, peer_args, server_ready  # noqa: E402

auth = Auth(os.environ.get("BENCH_JWT_SECRET") or None)


async def publish(hub: Hub, p: Any) -> int:
    """Every publication to every subscriber, awaiting each send; yields every 64 messages."""
    topic, frames = hub.frames(p)
    for i, f in enumerate(frames):
        for send in list(hub.topics.get(topic, ())):
            await send(f)
        if i % 64 == 63:
            await asyncio.sleep(0)
    return len(frames)


async def user_sends(hub: Hub, p: Any) -> int:
    """Per-user sends (``bench.users``), awaiting each; yields every 64 messages."""
    n = 0
    for n, (topic, f) in enumerate(hub.user_sends(p), 1):
        for send in list(hub.topics.get(topic, ())):
            await send(f)
        if n % 64 == 0:
            await asyncio.sleep(0)
    return n


async def dispatch(hub: Hub, key: Any, send: Any, data: bytes | str) -> None:
    """One inbound message; ``key`` is the connection's send function (its identity in the hub)."""
    t, p, reply = hub.handle(key, data)
    if reply:
        await send(reply)
    elif t == "bench.publish":
        await send(hub.done(await publish(hub, p)))
    elif t == "bench.users":
        await send(hub.done(await user_sends(hub, p)))


# --- FastAPI --------------------------------------------------------------------------------
from fastapi import FastAPI, WebSocket, WebSocketDisconnect  # noqa: E402

fastapi_app = FastAPI()
fastapi_hub = Hub()


@fastapi_app.websocket("/wse")
async def wse_endpoint(ws: WebSocket) -> None:
    user = auth.check(list(ws.headers.items()))
    if user is None:
        await ws.close(code=1008)
        return
    await ws.accept()

    async def send(data: bytes) -> None:
        await ws.send_text(data.decode())

    await send(server_ready(user))
    try:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                break
            data = msg.get("text") or msg.get("bytes")
            if data:
                await dispatch(fastapi_hub, send, send, data)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        fastapi_hub.drop(send)


# --- plain ASGI (granian) -------------------------------------------------------------------
raw_hub = Hub()


async def raw_app(scope: dict[str, Any], receive: Any, send_event: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            ev = await receive()
            if ev["type"] == "lifespan.startup":
                await send_event({"type": "lifespan.startup.complete"})
            elif ev["type"] == "lifespan.shutdown":
                await send_event({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "websocket":
        await send_event({"type": "http.response.start", "status": 404, "headers": []})
        await send_event({"type": "http.response.body", "body": b""})
        return
    ev = await receive()
    if ev["type"] != "websocket.connect":
        return
    user = auth.check([(k.decode(), v.decode()) for k, v in scope["headers"]])
    if user is None:
        await send_event({"type": "websocket.close", "code": 1008})
        return
    await send_event({"type": "websocket.accept"})

    async def send(data: bytes) -> None:
        await send_event({"type": "websocket.send", "text": data.decode()})

    await send(server_ready(user))
    try:
        while True:
            ev = await receive()
            if ev["type"] != "websocket.receive":
                break
            data = ev.get("text") or ev.get("bytes")
            if data:
                await dispatch(raw_hub, send, send, data)
    except Exception:
        pass
    finally:
        raw_hub.drop(send)


def main() -> None:
    global auth
    args = peer_args(__doc__ or "", servers=("fastapi", "granian"))
    if args.jwt_secret:
        os.environ["BENCH_JWT_SECRET"] = args.jwt_secret
        auth = Auth(args.jwt_secret)
    announce_when_listening(args.server, args.host, args.port)
    if args.server == "fastapi":
        import uvicorn

        uvicorn.Server(uvicorn.Config(fastapi_app, host=args.host, port=args.port, loop="uvloop", http="httptools",
                                      ws="websockets-sansio", log_level="warning", backlog=4096,
                                      ws_ping_interval=None, lifespan="off", access_log=False)).run()
    else:
        from granian import Granian

        os.environ["PYTHONPATH"] = str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")
        Granian("asgi_peer:raw_app", address=args.host, port=args.port, interface="asgi", workers=1,
                runtime_threads=1, loop="uvloop", websockets=True, log_enabled=False, backlog=4096).serve()


if __name__ == "__main__":
    main()
