"""WSE's side of every benchmark scenario: one app, served with ``wse run``.

    WSE_BENCH_JWT_SECRET=... python -m wse_cli.main run wse_app:app --port PORT

(``bench/run.py`` does this, pinned to core 0, with this directory importable.) The messages are
those of ``common.py`` (the peers' protocol): the engine itself sends ``server_ready``, acks
``subscription_update`` and adds the v2 envelope (``c``, ``t``, ``id``, ``ts``, ``seq``, ``tp``,
``v``) to every publication, so its frames are larger than the peers' minimal ``{c,t,seq,tp,p}``.
JWT (HS256, verified in Rust during the upgrade) is on when ``WSE_BENCH_JWT_SECRET`` is set,
permessage-deflate (the engine's defaults) when ``WSE_BENCH_DEFLATE=1``.

``WSE_BENCH_SOAK=1`` (the soak, ``bench/run.py soak``) serves it with a production server's
defaults instead (rate limits, idle timeouts and keepalive on) and zlib from 256 bytes, keys
rotated every 30 s and presence on; ``bench.feed`` ``{topic, s, size}`` publishes one tick.
"""

from __future__ import annotations

import os
from typing import Any

from wse import Connection, JWTConfig, Message, WSEApp, WSEConfig

_secret = os.environ.get("WSE_BENCH_JWT_SECRET")
_jwt = JWTConfig(secret=_secret) if _secret else None
app = WSEApp(WSEConfig(port=0, jwt=_jwt, compression_threshold=256, key_rotation_ms=30_000, presence=True)
             if os.environ.get("WSE_BENCH_SOAK") == "1" else WSEConfig(
    port=0,
    max_connections=19_000,
    backlog=4096,
    idle_timeout_ms=0,
    ping_interval_ms=0,
    # No limit on what clients send, like every peer (the reference limits only what it sends):
    # the default token bucket (10,000/s per connection) would refuse part of the inbound load.
    rate_limit_capacity=0,
    jwt=_jwt,
    permessage_deflate=os.environ.get("WSE_BENCH_DEFLATE") == "1",
))
received = 0


def pad_for(size: int) -> str:
    return "x" * max(0, size - len('{"s":12345,"d":""}'))


@app.on("bench.publish")
def bench_publish(conn: Connection, msg: Message) -> None:
    p: dict[str, Any] = msg.payload or {}
    topic = str(p.get("topic", "bench"))
    count, start = int(p.get("count", 1000)), int(p.get("start", 0))
    d = pad_for(int(p.get("size", 60)))
    publish = app.publish
    for s in range(start, start + count):
        publish(topic, {"s": s, "d": d}, type="tick")
    app.send(conn, {"published": count}, type="bench.done")


@app.on("bench.feed")
def bench_feed(conn: Connection, msg: Message) -> None:
    p: dict[str, Any] = msg.payload
    app.publish(str(p["topic"]), {"s": int(p["s"]), "d": pad_for(int(p.get("size", 60)))}, type="tick")


@app.on("bench.users")
def bench_users(conn: Connection, msg: Message) -> None:
    """Per-user sends: ``count`` messages to each of ``users`` topics ``prefix + i``."""
    p: dict[str, Any] = msg.payload or {}
    topics = [f"{p.get('prefix', 'u.')}{u}" for u in range(int(p.get("users", 0)))]
    count = int(p.get("count", 1))
    d = pad_for(int(p.get("size", 60)))
    publish = app.publish
    for s in range(count):
        for t in topics:
            publish(t, {"s": s, "d": d}, type="tick")
    app.send(conn, {"published": count * len(topics)}, type="bench.done")


@app.on("count")
def count(conn: Connection, msg: Message) -> None:
    global received
    received += 1


@app.on("bench.stats")
def bench_stats(conn: Connection, msg: Message) -> None:
    app.send(conn, {"received": received}, type="bench.stats")


@app.on("echo")
def echo(conn: Connection, msg: Message) -> None:
    app.send(conn, msg.payload, type="echo")
