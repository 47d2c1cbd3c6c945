"""Peer: python ``websockets`` (asyncio implementation) on uvloop, ``broadcast()`` for fan-out.

    python bench/peers/websockets_peer.py --port PORT [--jwt-secret S] [--deflate]

The benchmark protocol is in ``common.py``. JWT is checked in ``process_request`` (a bad token gets
HTTP 401 before the upgrade). Publications go out with ``websockets.broadcast`` (one frame built
per message, written to every subscriber without waiting), yielding to the loop every 64.
``--deflate``: permessage-deflate as websockets does it by default (context takeover: one
compressor per connection, so ``broadcast`` compresses each message once per subscriber).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import uvloop  # noqa: E402
from websockets.asyncio.server import ServerConnection, broadcast, serve  # noqa: E402

from common import Auth, Hub, announce, peer_args, server_ready, stop_on_signals  # noqa: E402


async def main() -> None:
    args = peer_args(__doc__ or "")
    auth = Auth(args.jwt_secret)
    hub = Hub()
    users: dict[ServerConnection, str] = {}

    def process_request(conn: ServerConnection, request: Any) -> Any:
        user = auth.check(request.headers.raw_items())
        if user is None:
            return conn.respond(401, "invalid token\n")
        users[conn] = user
        return None

    async def handler(ws: ServerConnection) -> None:
        await ws.send(server_ready(users.pop(ws, "")), text=True)
        try:
            async for data in ws:
                t, p, reply = hub.handle(ws, data)
                if reply:
                    await ws.send(reply, text=True)
                elif t == "bench.publish":
                    topic, frames = hub.frames(p)
                    for i, f in enumerate(frames):
                        broadcast(list(hub.topics.get(topic, ())), f, text=True)
                        if i % 64 == 63:
                            await asyncio.sleep(0)
                    await ws.send(hub.done(len(frames)), text=True)
                elif t == "bench.users":
                    n = 0
                    for n, (topic, f) in enumerate(hub.user_sends(p), 1):
                        broadcast(list(hub.topics.get(topic, ())), f, text=True)
                        if n % 64 == 0:
                            await asyncio.sleep(0)
                    await ws.send(hub.done(n), text=True)
        except Exception:
            pass
        finally:
            hub.drop(ws)

    stop = asyncio.get_running_loop().create_future()
    stop_on_signals(lambda: stop.done() or stop.get_loop().call_soon_threadsafe(stop.set_result, None))
    async with serve(handler, args.host, args.port, process_request=process_request, backlog=4096,
                     max_queue=None, ping_interval=None, compression="deflate" if args.deflate else None):
        announce("websockets", args.host, args.port)
        await stop


if __name__ == "__main__":
    uvloop.run(main())
