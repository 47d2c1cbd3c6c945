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
- ``publish_once`` ``{"topic", "key", "payload"}`` → publishes with an idempotency key, answers
  ``published`` with ``{"queued"}``
- ``join_topic`` ``{"topic"}`` → ``app.subscribe`` on the server's authority (no ACL, no hook)
- ``presence`` ``{"topic"}`` → ``presence`` with ``app.presence()`` and ``app.presence_count()``;
  ``presence_set`` ``{"user", "data"}`` → ``app.update_presence``, answers ``presence_set`` with
  ``{"topics"}`` or ``{"error"}``; presence events are recorded under ``record["presence"]``
- ``flaky`` ``{"fail"}`` (sync) and ``flaky_async`` ``{"fail", "hang"}`` fail, hang or answer
  ``ok``; ``breakers`` → ``breakers`` with ``app.breakers()``
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import orjson

from wse import Connection, JWTConfig, Message, PresenceEvent, WSEApp, WSEConfig


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
record: dict[str, Any] = {"connects": 0, "disconnects": 0, "messages": 0, "codes": {}, "users": [], "presence": [], "order": []}
DENY_PREFIX = os.environ.get("WSE_TEST_DENY_PREFIX")
WELCOME = os.environ.get("WSE_TEST_WELCOME") == "1"


@app.on_connect
def _connect(conn: Connection) -> None:
    record["connects"] += 1
    if len(record["order"]) < 10_000:
        record["order"].append(["connect", conn.id])
    if len(record["users"]) < 100:
        record["users"].append([conn.user_id, conn.claims])
    if WELCOME:
        app.send(conn, {"id": conn.id}, type="welcome")


@app.on_disconnect
def _disconnect(conn: Connection, code: int) -> None:
    record["disconnects"] += 1
    if len(record["order"]) < 10_000:
        record["order"].append(["disconnect", conn.id])
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


@app.on("publish_once")
def _publish_once(conn: Connection, msg: Message) -> None:
    p = msg.payload
    n = app.publish(p["topic"], p.get("payload", {}), type="pub", idempotency_key=p["key"])
    app.send(conn, {"queued": n}, type="published")


@app.on("presence")
def _presence(conn: Connection, msg: Message) -> None:
    topic = msg.payload["topic"]
    members = {u: {"data": m.data, "connections": m.connections} for u, m in app.presence(topic).items()}
    app.send(conn, {"members": members, "count": list(app.presence_count(topic))}, type="presence")


@app.on("join_topic")
def _join_topic(conn: Connection, msg: Message) -> None:
    app.send(conn, {"joined": app.subscribe(conn, msg.payload["topic"])}, type="join_topic")


@app.on("presence_set")
def _presence_set(conn: Connection, msg: Message) -> None:
    try:
        n = app.update_presence(msg.payload["user"], msg.payload["data"])
    except ValueError as e:
        app.send(conn, {"error": str(e)}, type="presence_set")
        return
    app.send(conn, {"topics": n}, type="presence_set")


@app.on_presence
def _on_presence(ev: PresenceEvent) -> None:
    if len(record["presence"]) < 10_000:
        record["presence"].append([ev.change, ev.topic, ev.user_id, ev.data, ev.conn_id])
    if len(record["order"]) < 10_000:
        record["order"].append([ev.change, ev.conn_id])


@app.on("flaky")
def _flaky(conn: Connection, msg: Message) -> None:
    if msg.payload.get("fail"):
        raise RuntimeError("flaky handler failing on purpose")
    app.send(conn, {"n": msg.payload.get("n")}, type="ok")


@app.on("flaky_async")
async def _flaky_async(conn: Connection, msg: Message) -> None:
    await asyncio.sleep(msg.payload.get("hang", 0))
    if msg.payload.get("fail"):
        raise RuntimeError("flaky async handler failing on purpose")
    app.send(conn, {"n": msg.payload.get("n")}, type="ok")


@app.on("breakers")
def _breakers(conn: Connection, msg: Message) -> None:
    app.send(conn, {t: b._asdict() for t, b in app.breakers().items()}, type="breakers")


@app.on_raw
def _raw(conn: Connection, data: bytes, is_text: bool) -> None:
    app.send_raw(conn, data, text=is_text)


if DENY_PREFIX:

    @app.authorize_subscription
    async def _authorize(conn: Connection, topic: str) -> bool:
        return not topic.startswith(DENY_PREFIX)
