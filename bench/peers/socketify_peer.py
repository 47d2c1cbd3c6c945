"""Peer: ``socketify`` (Python bindings of uWebSockets), with uWS's own topic pub/sub.

    python bench/peers/socketify_peer.py --port PORT [--jwt-secret S] [--deflate]

The benchmark protocol is in ``common.py``. JWT is checked in the upgrade handler (a bad token
gets HTTP 401). Subscriptions use ``ws.subscribe`` and publications ``app.publish`` (uWS frames a
message once per topic). Back-pressure limit raised so that no message is dropped.
``--deflate``: permessage-deflate with uWS's ``SHARED_COMPRESSOR`` (no context takeover, one
compression per publication) and ``publish(..., compress=True)``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from socketify import App, AppListenOptions, CompressOptions, OpCode  # noqa: E402

from common import Auth, Hub, announce, peer_args, server_ready  # noqa: E402


def main() -> None:
    args = peer_args(__doc__ or "")
    auth = Auth(args.jwt_secret)
    hub = Hub(track=False)
    app = App()
    z = bool(args.deflate)

    def upgrade(res: Any, req: Any, ctx: Any) -> None:
        headers: list[tuple[str, str]] = []
        req.for_each_header(lambda k, v: headers.append((k, v)))
        user = auth.check(headers)
        if user is None:
            res.write_status(401).end("invalid token\n")
            return
        res.upgrade(req.get_header("sec-websocket-key"), req.get_header("sec-websocket-protocol"),
                    req.get_header("sec-websocket-extensions"), ctx, user)

    def on_open(ws: Any) -> None:
        ws.send(server_ready(ws.get_user_data() or ""), OpCode.TEXT)

    def on_message(ws: Any, data: Any, opcode: Any) -> None:
        t, p, reply = hub.handle(ws, data)
        if t == "subscription_update":  # uWS's own pub/sub
            for topic in (str(x) for x in p.get("topics", [])):
                (ws.unsubscribe if p.get("action") == "unsubscribe" else ws.subscribe)(topic)
        if reply:
            ws.send(reply, OpCode.TEXT)
        elif t == "bench.publish":
            topic, frames = hub.frames(p)
            for f in frames:
                app.publish(topic, f, OpCode.TEXT, z)
            ws.send(hub.done(len(frames)), OpCode.TEXT)
        elif t == "bench.users":
            n = 0
            for n, (topic, f) in enumerate(hub.user_sends(p), 1):
                app.publish(topic, f, OpCode.TEXT, z)
            ws.send(hub.done(n), OpCode.TEXT)

    app.ws("/*", {
        "compression": CompressOptions.SHARED_COMPRESSOR if z else CompressOptions.DISABLED,
        "max_payload_length": 1 << 20,
        "idle_timeout": 0,
        "max_backpressure": 1 << 30,
        "upgrade": upgrade,
        "open": on_open,
        "message": on_message,
    })
    app.listen(AppListenOptions(port=args.port, host=args.host), lambda cfg: announce("socketify", args.host, args.port))
    app.run()


if __name__ == "__main__":
    main()
