"""The server side of the soak (``bench/soak.py``), served with ``wse run bench.soak_app:app``.

Messages (clients authenticate with an HS256 JWT signed with ``WSE_SOAK_JWT_SECRET``):
- ``feed`` ``{"n"}``: publishes a ``tick`` ``{"n", "pad"}`` to ``soak.feed`` (the pad is long
  and compressible, so zlib clients get ``C:`` frames)
- ``count``: counted by the handler (inbound load), nothing answered
- ``echo``: answered with the same payload (a round trip: everything sent before it is handled)
- ``stats``: answers ``stats`` with the handler's count and the engine's counters
"""

from __future__ import annotations

import os

from wse import Connection, JWTConfig, Message, WSEApp, WSEConfig

PAD = "soak " * 80  # 400 bytes, over the compression threshold below

app = WSEApp(WSEConfig(
    port=0,
    jwt=JWTConfig(secret=os.environ["WSE_SOAK_JWT_SECRET"]),
    compression_threshold=256,
    key_rotation_ms=30_000,  # encrypted clients re-key during the run
    presence=True,
    # The inbound senders are paced; the default per-connection limit stays on, as in production.
))
inbound = 0


@app.on("feed")
def feed(conn: Connection, msg: Message) -> None:
    app.publish("soak.feed", {"n": msg.payload["n"], "pad": PAD}, type="tick")


@app.on("count")
def count(conn: Connection, msg: Message) -> None:
    global inbound
    inbound += 1


@app.on("echo")
def echo(conn: Connection, msg: Message) -> None:
    app.send(conn, msg.payload, type="echo")


@app.on("stats")
def stats(conn: Connection, msg: Message) -> None:
    app.send(conn, {"inbound": inbound, "engine": app.stats()}, type="stats")
