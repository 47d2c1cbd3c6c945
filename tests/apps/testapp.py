"""The application the test suites run in a subprocess.

Settings come from the ``WSE_TEST_CONFIG`` environment variable (JSON: WSEConfig fields, with
``jwt`` as a dict of JWTConfig fields). It records lifecycle events so that tests can ask for
them over the wire:

- ``{"t": "echo", "p": x}`` → ``echo`` with the same payload
- ``{"t": "publish", "p": {"topic", "count", "payload"}}`` → publishes ``count`` messages of type
  ``pub`` with ``{"i": n, ...payload}`` to ``topic``, then answers ``published``
- ``{"t": "stats"}`` → ``stats`` with the engine's counters and the recorded events
- ``{"t": "boom"}`` → the handler raises (the client should get ``HANDLER_ERROR``)
- ``{"t": "slow", "p": {"seconds"}}`` → the handler blocks the drain loop that long (backpressure)
- ``{"t": "kick", "p": {"topic", "count", "code"}}`` → closes this connection with ``code``,
  then publishes ``count`` messages to ``topic`` (what a reconnecting subscriber must recover)
- raw text/binary messages are echoed back unchanged (used by Autobahn)

With ``WSE_TEST_WELCOME=1`` every connection gets a ``welcome`` message as soon as it connects.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson

from wse import Connection, JWTConfig, Message, WSEApp, WSEConfig


def _config() -> WSEConfig:
    raw: dict[str, Any] = orjson.loads(os.environ.get("WSE_TEST_CONFIG", "{}"))
    jwt = raw.pop("jwt", None)
    for k, v in list(raw.items()):
        if isinstance(v, list):
            raw[k] = tuple(v)
    if jwt is not None:
        jwt = JWTConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in jwt.items()})
    return WSEConfig(port=0, jwt=jwt, **raw)


app = WSEApp(_config())
record: dict[str, Any] = {"connects": 0, "disconnects": 0, "messages": 0, "codes": {}, "users": []}
DENY_PREFIX = os.environ.get("WSE_TEST_DENY_PREFIX")
WELCOME = os.environ.get("WSE_TEST_WELCOME") == "1"


@app.on_connect
def _connect(conn: Connection) -> None:
    record["connects"] += 1
    if len(record["users"]) < 100:
        record["users"].append([conn.user_id, conn.claims])
    if WELCOME:
        app.send(conn, {"id": conn.id}, type="welcome")


@app.on_disconnect
def _disconnect(conn: Connection, code: int) -> None:
    record["disconnects"] += 1
    record["codes"][str(code)] = record["codes"].get(str(code), 0) + 1


@app.on("echo")
def _echo(conn: Connection, msg: Message) -> None:
    record["messages"] += 1
    app.send(conn, msg.payload, type="echo")


@app.on("count")
def _count(conn: Connection, msg: Message) -> None:
    record["messages"] += 1


@app.on("publish")
def _publish(conn: Connection, msg: Message) -> None:
    p = msg.payload
    extra = p.get("payload", {})
    n = 0
    for i in range(p["count"]):
        n += app.publish(p["topic"], {"i": i, **extra}, type="pub")
    app.send(conn, {"queued": n}, type="published")


@app.on("kick")
def _kick(conn: Connection, msg: Message) -> None:
    p = msg.payload
    app.disconnect(conn, code=p.get("code", 1011), reason="kicked by test")
    for i in range(p["count"]):
        app.publish(p["topic"], {"i": p.get("start", 0) + i}, type="pub")


@app.on("stats")
def _stats(conn: Connection, msg: Message) -> None:
    app.send(conn, {"engine": app.stats(), "record": record}, type="stats")


@app.on("boom")
def _boom(conn: Connection, msg: Message) -> None:
    raise RuntimeError("handler failure on purpose")


@app.on("slow")
def _slow(conn: Connection, msg: Message) -> None:
    time.sleep(msg.payload["seconds"])


@app.on_raw
def _raw(conn: Connection, data: bytes, is_text: bool) -> None:
    app.send_raw(conn, data, text=is_text)


if DENY_PREFIX:

    @app.authorize_subscription
    async def _authorize(conn: Connection, topic: str) -> bool:
        return not topic.startswith(DENY_PREFIX)
