"""Peer: ``picows`` (a Cython WebSocket library on asyncio) on uvloop.

    python bench/peers/picows_peer.py --port PORT [--jwt-secret S]

The benchmark protocol is in ``common.py``. JWT is checked in the listener factory (a bad token
gets no upgrade). Publications are written with ``transport.send`` to each subscriber in turn
(picows has no shared-frame broadcast), yielding to the loop every 64 messages.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import uvloop  # noqa: E402
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server  # noqa: E402

from common import Auth, Hub, announce, peer_args, server_ready, stop_on_signals  # noqa: E402

TEXT = WSMsgType.TEXT


async def main() -> None:
    args = peer_args(__doc__ or "")
    auth = Auth(args.jwt_secret)
    hub = Hub()
    loop = asyncio.get_running_loop()

    async def publish(requester: WSTransport, p: Any) -> None:
        topic, frames = hub.frames(p)
        for i, f in enumerate(frames):
            for t in list(hub.topics.get(topic, ())):
                t.send(TEXT, f)
            if i % 64 == 63:
                await asyncio.sleep(0)
        requester.send(TEXT, hub.done(len(frames)))

    async def user_sends(requester: WSTransport, p: Any) -> None:
        n = 0
        for n, (topic, f) in enumerate(hub.user_sends(p), 1):
            for t in list(hub.topics.get(topic, ())):
                t.send(TEXT, f)
            if n % 64 == 0:
                await asyncio.sleep(0)
        requester.send(TEXT, hub.done(n))

    class Listener(WSListener):  # type: ignore[misc]
        def __init__(self, user: str) -> None:
            self.user = user
            self.frag: bytearray | None = None

        def on_ws_connected(self, transport: WSTransport) -> None:
            transport.send(TEXT, server_ready(self.user))

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            hub.drop(transport)

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            op = frame.msg_type
            if op == WSMsgType.PING:
                transport.send_pong(frame.get_payload_as_bytes())
                return
            if op == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
                return
            if op not in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
                return
            data = frame.get_payload_as_bytes()
            if not frame.fin or self.frag is not None:
                self.frag = (self.frag or bytearray()) + data
                if not frame.fin:
                    return
                data, self.frag = bytes(self.frag), None
            t, p, reply = hub.handle(transport, data)
            if reply:
                transport.send(TEXT, reply)
            elif t == "bench.publish":
                loop.create_task(publish(transport, p))
            elif t == "bench.users":
                loop.create_task(user_sends(transport, p))

    def factory(request: WSUpgradeRequest) -> Any:
        headers = [(k, v) for k, v in request.headers.items()]
        user = auth.check(headers)
        if user is None:
            return None
        return Listener(user)

    server = await ws_create_server(factory, args.host, args.port, backlog=4096)
    stop = loop.create_future()
    stop_on_signals(lambda: stop.done() or loop.call_soon_threadsafe(stop.set_result, None))
    announce("picows", args.host, args.port)
    await stop
    server.close()


if __name__ == "__main__":
    uvloop.run(main())
