"""The application object: what an application registers (handlers for message types, for
connects and disconnects, presence and the subscription hook) and the calls it makes (publish,
send, subscribe, presence, stats). Running it is elsewhere, one concern a module:

- ``dispatch.py``: the engine's events to the handlers (the drain loop, breakers, timeouts);
- ``serving.py``: the engine on its own listener (``serve``, ``run``, ``stop``);
- ``asgi.py``: router mode, inside another server's ASGI app (``attach``, ``detach``);
- ``cluster/``: ``wse run --workers N`` (its worker sets ``_engine_extra``: socket and mesh).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import orjson

from . import _runtime, asgi, serving
from .breaker import BreakerStatus
from .config import WSEConfig
from .dispatch import Dispatch
from .model import Connection, F, Message, PresenceCount, PresenceEvent, PresenceMember

__all__ = ["Connection", "Message", "PresenceCount", "PresenceEvent", "PresenceMember", "WSEApp"]


class WSEApp:
    """A WSE application: register handlers with decorators, then ``run()`` it (or ``wse run``).

    Inbound events arrive in batches from the engine's drain queue; plain functions run inline,
    coroutine functions are scheduled as tasks.
    """

    def __init__(self, config: WSEConfig | None = None) -> None:
        self.config = config or WSEConfig()
        self.connections: dict[int, Connection] = {}
        self.address: tuple[str, int] | None = None
        self.metrics_address: tuple[str, int] | None = None
        self._dispatch = Dispatch(self)
        self._server: _runtime.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None  # set by stop(): serve() returns
        self._router: asgi.Router | None = None  # router mode (attach)
        # Engine settings that are not the application's (a cluster worker's socket and mesh).
        self._engine_extra: dict[str, Any] = {}

    # ---- registration ---------------------------------------------------------------------------

    def on(self, msg_type: str) -> Callable[[F], F]:
        """Handle messages whose ``t`` (or ``type``) is ``msg_type``: ``fn(conn, message)``."""

        def deco(fn: F) -> F:
            self._dispatch.handlers[msg_type] = (fn, _is_async(fn))
            return fn

        return deco

    def on_message(self, fn: F) -> F:
        """Handle messages of every type without a handler of its own."""
        self._dispatch.default = (fn, _is_async(fn))
        return fn

    def on_connect(self, fn: F) -> F:
        """``fn(conn)`` after the engine accepted a connection (its token already checked)."""
        self._dispatch.on_connect.append((fn, _is_async(fn)))
        self._lifecycle_hooks_changed()
        return fn

    def on_disconnect(self, fn: F) -> F:
        """``fn(conn, code)`` once a connection is gone; always after its last message."""
        self._dispatch.on_disconnect.append((fn, _is_async(fn)))
        self._lifecycle_hooks_changed()
        return fn

    def on_raw(self, fn: F) -> F:
        """``fn(conn, data, is_text)`` for messages that are not JSON envelopes."""
        self._dispatch.on_raw = (fn, _is_async(fn))
        return fn

    def on_presence(self, fn: F) -> F:
        """``fn(event: PresenceEvent)`` when a user joins or leaves a topic or changes their data
        (needs ``WSEConfig.presence``). Never dropped, in order with connects and disconnects.
        Under ``wse run --workers N`` every worker hears every change in the cluster (``conn_id``
        0 when it happened through another worker)."""
        self._dispatch.on_presence.append((fn, _is_async(fn)))
        return fn

    def authorize_subscription(self, fn: F) -> F:
        """``fn(conn, topic) -> bool`` (or awaitable) decides each client subscription."""
        self._dispatch.authorize = fn
        return fn

    # ---- sending --------------------------------------------------------------------------------

    @property
    def server(self) -> _runtime.Server:
        if self._server is None:
            raise RuntimeError("the application is not running")
        return self._server

    def publish(
        self, topic: str, payload: Any, *, type: str = "message", category: str = "U", idempotency_key: str | None = None
    ) -> int:
        """Send ``payload`` to every subscriber of ``topic``; returns how many it was queued for.

        With ``idempotency_key``, a key already published within the dedup window
        (``WSEConfig.dedup_window``, ``dedup_window_ms``) publishes nothing and returns 0.
        """
        if idempotency_key is None:
            return self.server.publish(topic, _dumps(payload), type, category)
        return self.server.publish(topic, _dumps(payload), type, category, idempotency_key)

    def send(
        self, conn: Connection | int, payload: Any, *, type: str = "message", category: str = "U", cid: str | None = None
    ) -> bool:
        """Send one envelope to one connection; False if it is gone or over its outbound budget.
        ``cid`` makes it a reply to the request that carried that correlation id."""
        return self.server.send(_cid(conn), _dumps(payload), type, category, cid)

    def reply(self, conn: Connection | int, msg: Message, payload: Any, *, type: str | None = None) -> bool:
        """Answer ``msg``: an envelope carrying its ``cid`` (what a client's ``request()`` waits
        for), of type ``type`` or the request's own."""
        cid = msg.envelope.get("cid")
        return self.send(conn, payload, type=type or msg.type, cid=cid if isinstance(cid, str) else None)

    def send_raw(self, conn: Connection | int, data: bytes, *, text: bool = False) -> bool:
        """Send bytes unchanged as one WebSocket message."""
        return self.server.send_raw(_cid(conn), data, text)

    def subscribe(self, conn: Connection | int, topics: list[str] | str, *, group: str | None = None) -> list[str]:
        """Subscribe a connection on the server's authority (no ACL check). A topic with ``*`` or
        ``?`` is a pattern (every matching topic, live only). With ``group``, it joins that queue
        group of each topic: each publication goes to one member, in turn."""
        return self.server.subscribe(_cid(conn), [topics] if isinstance(topics, str) else list(topics), group)

    def queue_groups(self, topic: str) -> dict[str, int]:
        """The queue groups of ``topic`` and their member counts."""
        return dict(self.server.queue_groups(topic))

    def unsubscribe(self, conn: Connection | int, topics: list[str] | str) -> list[str]:
        return self.server.unsubscribe(_cid(conn), [topics] if isinstance(topics, str) else list(topics))

    def disconnect(self, conn: Connection | int, code: int = 1000, reason: str = "") -> bool:
        """Close a connection with a close code; its disconnect handler still runs."""
        return self.server.disconnect(_cid(conn), code, reason)

    def stats(self) -> dict[str, int]:
        """The engine's counters and gauges, and ``breakers_open`` (message types refused now)."""
        st = self.server.stats()
        st["breakers_open"] = self._dispatch.breakers_open()
        return st

    # ---- presence -------------------------------------------------------------------------------

    def presence(self, topic: str) -> dict[str, PresenceMember]:
        """Users present in ``topic``, with their data and how many connections each has there
        (in a cluster: through any worker)."""
        return {u: PresenceMember(orjson.loads(d), n) for u, d, n in self.server.presence(topic)}

    def presence_count(self, topic: str) -> PresenceCount:
        """How many users and connections are present in ``topic`` (no listing: cheap)."""
        return PresenceCount(*self.server.presence_count(topic))

    def update_presence(self, user: Connection | str, data: Any) -> int:
        """Set a user's presence data; every topic they are in hears ``presence_update``.

        Returns how many topics. Raises ``ValueError`` if presence is off or ``data`` serializes
        to more than ``presence_max_data_bytes``.
        """
        user_id = user.user_id if isinstance(user, Connection) else user
        if user_id is None:
            raise ValueError("presence needs an authenticated user (the connection has no user_id)")
        return self.server.update_presence(user_id, orjson.dumps(data))

    # ---- circuit breakers -----------------------------------------------------------------------

    def breakers(self) -> dict[str, BreakerStatus]:
        """The circuit breaker of every message type whose handler has failed at least once."""
        return self._dispatch.breaker_status()

    def _lifecycle_hooks_changed(self) -> None:
        """Without a connect or disconnect hook, the engine may hand those events over batched,
        up to 2 ms late (``app.connections`` follows them): no thread hop per connection. With
        one, each is handed over at once. (Serving only: router mode always hands them at once.)"""
        server = self._server
        if server is not None and self._stopped is not None:
            d = self._dispatch
            server.set_lazy_lifecycle(not (d.on_connect or d.on_disconnect))

    # ---- running: serving.py (own listener), asgi.py (router mode) ------------------------------

    async def serve(
        self, *, ready: Callable[[tuple[str, int]], None] | None = None, metrics: str | tuple[str, int] | None = None
    ) -> None:
        """Serve until ``stop()`` is called. With ``metrics`` (``"HOST:PORT"``, port 0 picks one),
        also serve Prometheus ``/metrics`` and ``/healthz`` there (its address in
        ``metrics_address`` once serving)."""
        await serving.serve(self, ready, metrics)

    def attach(self) -> None:
        """Start the engine in the running event loop without a listener (router mode).

        Connections then come from another server's WebSocket endpoint, e.g. the router of
        ``wse.fastapi.create_wse_router``; handlers, ``publish`` and ``send`` work as under
        ``serve()``. Undo with ``await detach()``.
        """
        asgi.attach(self)

    async def detach(self, timeout: float = 3.0) -> None:
        """Close the external connections (1001), wait for them (at most ``timeout`` seconds),
        and stop the engine started by ``attach()``."""
        await asgi.detach(self, timeout)

    def stop(self) -> None:
        """Ask ``serve()`` to close every connection and return."""
        if self._stopped is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)

    def run(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        announce: bool = False,
        metrics: str | tuple[str, int] | None = None,
    ) -> None:
        """Serve in this thread until SIGINT or SIGTERM (uvloop if installed).

        With ``announce``, print ``wse: serving ws://HOST:PORT/PATH`` (``wss://`` with TLS) on stdout
        once listening. With ``metrics`` (``"HOST:PORT"``), serve Prometheus ``/metrics`` there too.
        """
        changes: dict[str, object] = {}
        if host is not None:
            changes["host"] = host
        if port is not None:
            changes["port"] = port
        if changes:
            self.config = self.config.replace(**changes)
        serving.run(self, announce, metrics)


def _dumps(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    return orjson.dumps(payload)


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn)


def _cid(conn: Connection | int) -> int:
    return conn if isinstance(conn, int) else conn.id
