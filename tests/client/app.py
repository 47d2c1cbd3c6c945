"""The server application the client suites run (``wse run tests.client.app:app``).

Settings come from ``WSE_TEST_CONFIG`` as in ``tests/apps/testapp.py``, plus ``port`` (a fixed
port, so that a test can restart the server on the same address). Messages it understands:

- ``echo`` → ``echo`` with the same payload
- ``publish`` ``{topic, count, payload}`` → ``count`` publications of type ``pub`` with
  ``{"i": n, ...payload}``, then ``published`` to the sender
- ``stream`` ``{topic, count, interval, start}`` → publications ``{"i": start..start+count-1}``
  one every ``interval`` seconds, from a task (the sender does not wait)
- ``kick`` ``{code}`` → the server closes the sender's connection
- ``garbage`` → frames no client can decode (not JSON, bad zlib, bad encryption), then
  ``echo`` ``{"after": "garbage"}``
- with ``WSE_CLIENT_TEST_HOOK=1``: client subscriptions go through an async
  ``authorize_subscription`` that answers after a random delay (acks come out of order) and
  refuses topics starting with ``deny.``
- ``rpc`` → ``app.reply``: type ``rpc.reply``, the request's ``cid``, ``{"echo": payload}``;
  ``rpc.fail`` → an ``error`` with the ``cid``; ``rpc.silent`` → no reply
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import orjson

from wse import Connection, JWTConfig, Message, WSEApp, WSEConfig


def _config() -> WSEConfig:
    raw: dict[str, Any] = orjson.loads(os.environ.get("WSE_TEST_CONFIG", "{}"))
    jwt = raw.pop("jwt", None)
    port = int(raw.pop("port", 0))
    for k, v in list(raw.items()):
        if isinstance(v, list):
            raw[k] = tuple(v)
    if jwt is not None:
        jwt = JWTConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in jwt.items()})
    return WSEConfig(port=port, jwt=jwt, **raw)


app = WSEApp(_config())
_streams: set[asyncio.Task[None]] = set()


@app.on("echo")
def _echo(conn: Connection, msg: Message) -> None:
    app.send(conn, msg.payload, type="echo")


@app.on("publish")
def _publish(conn: Connection, msg: Message) -> None:
    p = msg.payload
    extra = p.get("payload", {})
    n = 0
    for i in range(p["count"]):
        n += app.publish(p["topic"], {"i": i, **extra}, type="pub")
    app.send(conn, {"queued": n}, type="published")


async def _stream(topic: str, start: int, count: int, interval: float) -> None:
    for i in range(start, start + count):
        app.publish(topic, {"i": i}, type="pub")
        await asyncio.sleep(interval)


@app.on("stream")
def _start_stream(conn: Connection, msg: Message) -> None:
    p = msg.payload
    task = asyncio.get_running_loop().create_task(
        _stream(p["topic"], int(p.get("start", 0)), int(p["count"]), float(p.get("interval", 0.01)))
    )
    _streams.add(task)
    task.add_done_callback(_streams.discard)


@app.on("kick")
def _kick(conn: Connection, msg: Message) -> None:
    app.disconnect(conn, int(msg.payload.get("code", 1011)), "kicked by the test")


@app.on("rpc")
def _rpc(conn: Connection, msg: Message) -> None:
    app.reply(conn, msg, {"echo": msg.payload, "user": conn.user_id}, type="rpc.reply")


@app.on("rpc.fail")
def _rpc_fail(conn: Connection, msg: Message) -> None:
    app.send(conn, {"code": "NOPE", "message": "refused on purpose"}, type="error", category="WSE",
             cid=msg.envelope.get("cid"))


@app.on("rpc.silent")
def _rpc_silent(conn: Connection, msg: Message) -> None:
    pass


@app.on("garbage")
def _garbage(conn: Connection, msg: Message) -> None:
    for data in (b"not json", b"C:not zlib", b"E:" + bytes(40), b"\x78\x9cbroken"):
        app.send_raw(conn, data)
    app.send_raw(conn, b"{unterminated", text=True)
    app.send(conn, {"after": "garbage"}, type="echo")


if os.environ.get("WSE_CLIENT_TEST_HOOK"):

    @app.authorize_subscription
    async def _authorize(conn: Connection, topic: str) -> bool:
        await asyncio.sleep(random.uniform(0, 0.05))
        return not topic.startswith("deny.")
