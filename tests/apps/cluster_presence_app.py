"""The cluster presence tests' application: JWT users, presence on; `whoami` tells the worker,
`presence` answers with `app.presence()` and `app.presence_count()`, `presence_set` calls
`app.update_presence`, and `presence_events` lists the `on_presence` events this worker's
Python saw. The token secret comes from ``WSE_TEST_JWT_SECRET``; with Redis, the presence TTL
from ``WSE_TEST_REDIS_PRESENCE_TTL_MS``."""

import os
from typing import Any

from tests.apps.cluster_app import build
from wse import Connection, JWTConfig, Message, PresenceEvent

SECRET = os.environ["WSE_TEST_JWT_SECRET"]
# As one host of several over Redis (``--redis URL``), a short presence TTL for the tests.
_ttl = os.environ.get("WSE_TEST_REDIS_PRESENCE_TTL_MS")
app = build(jwt=JWTConfig(secret=SECRET), presence=True, **({"redis_presence_ttl_ms": int(_ttl)} if _ttl else {}))
events: list[list[Any]] = []


@app.on("presence")
def _presence(conn: Connection, msg: Message) -> None:
    topic = msg.payload["topic"]
    members = {u: {"data": m.data, "connections": m.connections} for u, m in app.presence(topic).items()}
    app.send(conn, {"members": members, "count": list(app.presence_count(topic))}, type="presence")


@app.on("presence_set")
def _presence_set(conn: Connection, msg: Message) -> None:
    app.send(conn, {"topics": app.update_presence(msg.payload["user"], msg.payload["data"])}, type="presence_set")


@app.on("presence_events")
def _presence_events(conn: Connection, msg: Message) -> None:
    app.send(conn, {"events": events}, type="presence_events")


@app.on_presence
def _on_presence(ev: PresenceEvent) -> None:
    if len(events) < 1000:
        events.append([ev.change, ev.topic, ev.user_id, ev.data, ev.conn_id])
