"""The application object: handlers for message types and lifecycle, and the calls that send."""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeVar

import orjson

from . import _logs, _runtime
from .breaker import PROBE, REJECT, Breaker, BreakerStatus
from .config import WSEConfig

log = logging.getLogger("wse")

_EV_CONNECT = _runtime.EV_CONNECT
_EV_DISCONNECT = _runtime.EV_DISCONNECT
_EV_MSG = _runtime.EV_MSG
_EV_RAW = _runtime.EV_RAW
_EV_BIN = _runtime.EV_BIN
_EV_SUB_REQUEST = _runtime.EV_SUB_REQUEST
_EV_PRESENCE = _runtime.EV_PRESENCE
_CHANGES: tuple[Literal["join", "leave", "update"], ...] = ("join", "leave", "update")


@dataclass(eq=False, slots=True)
class Connection:
    """A client connection, as Python sees it after the engine accepted it.

    Slotted (no per-instance ``__dict__``): an idle connection should cost little memory, so the
    application's own per-connection data goes in ``state``, not in new attributes."""

    id: int
    user_id: str | None
    remote_addr: str
    _claims_raw: bytes | None = field(default=None, repr=False)
    _claims: dict[str, Any] | None = field(default=None, repr=False)
    _state: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def state(self) -> dict[str, Any]:
        """Free for the application's own per-connection data (the dict is made on first use)."""
        if self._state is None:
            self._state = {}
        return self._state

    @state.setter
    def state(self, value: dict[str, Any]) -> None:
        self._state = value

    @property
    def claims(self) -> dict[str, Any]:
        """The token's claims (those configured in ``JWTConfig.claims``), parsed on first use."""
        if self._claims is None:
            self._claims = orjson.loads(self._claims_raw) if self._claims_raw else {}
        return self._claims


class Message(NamedTuple):
    """An inbound application message (a v2 envelope)."""

    type: str
    payload: Any
    id: str | None
    envelope: dict[str, Any]


class PresenceEvent(NamedTuple):
    """A user joined a topic (first connection), left it (last connection), or changed their data."""

    change: Literal["join", "leave", "update"]
    topic: str
    user_id: str
    data: Any
    conn_id: int
    """The connection that caused it; 0 when the application did (``update_presence``) or another
    worker of the cluster."""


class PresenceMember(NamedTuple):
    data: Any
    connections: int


class PresenceCount(NamedTuple):
    users: int
    connections: int


# NOTE: the drain loop builds a Message per inbound message; tuple.__new__ skips a Python-level
# __init__ call (a dataclass cost about 4x more here).
_new_message = tuple.__new__


Handler = Callable[[Connection, Message], Any]
LifecycleHandler = Callable[[Connection], Any]
DisconnectHandler = Callable[[Connection, int], Any]
RawHandler = Callable[[Connection, bytes, bool], Any]
SubscribeHook = Callable[[Connection, str], Any]
PresenceHandler = Callable[[PresenceEvent], Any]
F = TypeVar("F", bound=Callable[..., Any])


class WSEApp:
    """A WSE application: register handlers with decorators, then ``run()`` it (or ``wse run``).

    Inbound events arrive in batches from the engine's drain queue; plain functions run inline,
    coroutine functions are scheduled as tasks.
    """

    def __init__(self, config: WSEConfig | None = None) -> None:
        self.config = config or WSEConfig()
        self.connections: dict[int, Connection] = {}
        # Handlers with whether they are coroutine functions, decided once at registration.
        self._handlers: dict[str, tuple[Handler, bool]] = {}
        self._default: tuple[Handler, bool] | None = None
        self._on_connect: list[tuple[LifecycleHandler, bool]] = []
        self._on_disconnect: list[tuple[DisconnectHandler, bool]] = []
        self._on_raw: tuple[RawHandler, bool] | None = None
        self._authorize: SubscribeHook | None = None
        self._on_presence: list[tuple[PresenceHandler, bool]] = []
        # Circuit breakers by message type, made at a type's first failure.
        self._breakers: dict[str, Breaker] = {}
        self._server: _runtime.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.address: tuple[str, int] | None = None
        self.metrics_address: tuple[str, int] | None = None
        # Router mode: each external connection's writer wake-up, the tasks carrying them, and
        # readers waiting for room in the drain queue.
        self._ext_wake: dict[int, asyncio.Event] = {}
        self._ext_tasks: set[asyncio.Task[Any]] = set()
        self._space_waiters: list[asyncio.Future[None]] = []
        # Engine settings that are not the application's (a cluster worker's socket and mesh).
        self._engine_extra: dict[str, Any] = {}

    # ---- registration ---------------------------------------------------------------------------

    def on(self, msg_type: str) -> Callable[[F], F]:
        """Handle messages whose ``t`` (or ``type``) is ``msg_type``: ``fn(conn, message)``."""

        def deco(fn: F) -> F:
            self._handlers[msg_type] = (fn, _is_async(fn))
            return fn

        return deco

    def on_message(self, fn: F) -> F:
        """Handle messages of every type without a handler of its own."""
        self._default = (fn, _is_async(fn))
        return fn

    def on_connect(self, fn: F) -> F:
        """``fn(conn)`` after the engine accepted a connection (its token already checked)."""
        self._on_connect.append((fn, _is_async(fn)))
        self._lifecycle_hooks_changed()
        return fn

    def on_disconnect(self, fn: F) -> F:
        """``fn(conn, code)`` once a connection is gone; always after its last message."""
        self._on_disconnect.append((fn, _is_async(fn)))
        self._lifecycle_hooks_changed()
        return fn

    def on_raw(self, fn: F) -> F:
        """``fn(conn, data, is_text)`` for messages that are not JSON envelopes."""
        self._on_raw = (fn, _is_async(fn))
        return fn

    def on_presence(self, fn: F) -> F:
        """``fn(event: PresenceEvent)`` when a user joins or leaves a topic or changes their data
        (needs ``WSEConfig.presence``). Never dropped, in order with connects and disconnects.
        Under ``wse run --workers N`` every worker hears every change in the cluster (``conn_id``
        0 when it happened through another worker)."""
        self._on_presence.append((fn, _is_async(fn)))
        return fn

    def authorize_subscription(self, fn: F) -> F:
        """``fn(conn, topic) -> bool`` (or awaitable) decides each client subscription."""
        self._authorize = fn
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
        st["breakers_open"] = sum(1 for b in self._breakers.values() if b.state != "closed")
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
        now = time.monotonic()
        return {t: b.status(now) for t, b in self._breakers.items()}

    def _handler_failed(self, msg_type: str, probe: bool) -> None:
        cfg = self.config
        if cfg.breaker_failures <= 0:
            return
        br = self._breakers.get(msg_type)
        if br is None:
            br = Breaker(cfg.breaker_failures, cfg.breaker_reset_ms / 1000, cfg.breaker_probes)
            self._breakers[msg_type] = br
        was = br.state
        br.failure(time.monotonic(), probe)
        if br.state == "open" and was != "open":
            log.warning("wse: circuit breaker for %r opened after %d failures", msg_type, br.consecutive)

    def _handler_ok(self, msg_type: str, probe: bool) -> None:
        br = self._breakers.get(msg_type)
        if br is not None:
            was = br.state
            br.success(probe)
            if br.state == "closed" and was != "closed":
                log.warning("wse: circuit breaker for %r closed again", msg_type)

    async def _guarded(self, aw: Awaitable[Any], cid: int, msg_type: str, probe: bool) -> None:
        """Runs an async handler with the handler timeout, and tells its breaker how it went."""
        timeout_ms = self.config.handler_timeout_ms
        try:
            async with asyncio.timeout(timeout_ms / 1000 if timeout_ms > 0 else None):
                await aw
        except TimeoutError:
            log.warning("wse: handler for %r timed out after %d ms", msg_type, timeout_ms)
            self._reply_error(cid, "HANDLER_TIMEOUT", f"the handler for {msg_type!r} timed out")
            self._handler_failed(msg_type, probe)
        except Exception:
            log.exception("wse: handler for %r failed", msg_type)
            self._reply_error(cid, "HANDLER_ERROR", f"the handler for {msg_type!r} failed")
            self._handler_failed(msg_type, probe)
        else:
            self._handler_ok(msg_type, probe)

    def _lifecycle_hooks_changed(self) -> None:
        """Without a connect or disconnect hook, the engine may hand those events over batched,
        up to 2 ms late (``app.connections`` follows them): no thread hop per connection. With
        one, each is handed over at once. (Serving only: router mode always hands them at once.)"""
        server = self._server
        if server is not None and self._stopped is not None:
            server.set_lazy_lifecycle(not (self._on_connect or self._on_disconnect))

    # ---- serving --------------------------------------------------------------------------------

    async def serve(
        self, *, ready: Callable[[tuple[str, int]], None] | None = None, metrics: str | tuple[str, int] | None = None
    ) -> None:
        """Serve until ``stop()`` is called. With ``metrics`` (``"HOST:PORT"``, port 0 picks one),
        also serve Prometheus ``/metrics`` and ``/healthz`` there (its address in
        ``metrics_address`` once serving)."""
        loop = asyncio.get_running_loop()
        _logs.start()
        self._loop = loop
        self._stopped = asyncio.Event()
        engine_json = self.config.engine_json(subscribe_hook=self._authorize is not None)
        if self._engine_extra:
            engine_json = orjson.dumps({**orjson.loads(engine_json), **self._engine_extra}).decode()
        server = _runtime.Server(engine_json)
        self._server = server
        self._lifecycle_hooks_changed()
        address = server.start()
        assert address is not None, "a listening engine reports its address"
        self.address = address
        loop.add_reader(server.fd, self._drain)
        web = None
        try:
            if metrics is not None:
                from .exporter import serve_metrics

                web = await serve_metrics(metrics, self.stats)
                self.metrics_address = web.sockets[0].getsockname()[:2]
            if ready is not None:
                ready(address)
            else:
                log.info("serving on %s", self._url(address))
            await self._stopped.wait()
        finally:
            if web is not None:
                web.close()
            loop.remove_reader(server.fd)
            server.stop()
            # Every connection is closed now; hand Python all the remaining events.
            while self._drain():
                pass
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    def attach(self) -> None:
        """Start the engine in the running event loop without a listener (router mode).

        Connections then come from another server's WebSocket endpoint, e.g. the router of
        ``wse.fastapi.create_wse_router``; handlers, ``publish`` and ``send`` work as under
        ``serve()``. Undo with ``await detach()``.
        """
        if self._server is not None:
            raise RuntimeError("the application is already running")
        loop = asyncio.get_running_loop()
        _logs.start()
        server = _runtime.Server(self.config.engine_json(subscribe_hook=self._authorize is not None))
        server.start(listen=False)
        self._loop = loop
        self._server = server
        loop.add_reader(server.fd, self._drain)
        loop.add_reader(server.ext_fd, self._ext_ready)

    async def detach(self, timeout: float = 3.0) -> None:
        """Close the external connections (1001), wait for them (at most ``timeout`` seconds),
        and stop the engine started by ``attach()``."""
        server = self._server
        loop = self._loop
        if server is None or loop is None:
            return
        for cid in list(self._ext_wake):
            server.disconnect(cid, 1001, "server shutting down")
        if self._ext_tasks:
            await asyncio.wait(set(self._ext_tasks), timeout=timeout)
        loop.remove_reader(server.fd)
        loop.remove_reader(server.ext_fd)
        server.stop()
        while self._drain():
            pass
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._server = None

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

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.stop)
            await self.serve(ready=_announce if announce else None, metrics=metrics)

        def _announce(addr: tuple[str, int]) -> None:
            extra = ""
            if self.metrics_address is not None:
                extra = f" in one process, metrics on http://{self.metrics_address[0]}:{self.metrics_address[1]}/metrics"
            print(f"wse: serving {self._url(addr)}{extra}", flush=True)

        try:
            import uvloop

            uvloop.run(main())
        except ImportError:
            asyncio.run(main())

    # ---- the drain loop -------------------------------------------------------------------------

    @property
    def _scheme(self) -> str:
        return "wss" if self.config.tls_cert_file else "ws"

    def _url(self, addr: tuple[str, int]) -> str:
        """``ws://HOST:PORT/PATH``; ``ws+unix://SOCKET:/PATH`` on a Unix domain socket."""
        if self.config.uds:
            return f"{self._scheme}+unix://{addr[0]}:{self.config.path}"
        return f"{self._scheme}://{addr[0]}:{addr[1]}{self.config.path}"

    def _drain(self) -> int:
        """Handles one batch of engine events; returns how many there were."""
        server = self._server
        if server is None:
            return 0
        events = server.drain(self.config.drain_batch)
        connections = self.connections
        handlers = self._handlers
        default = self._default
        breakers = self._breakers
        slow_s = self.config.handler_timeout_ms / 1000 if self.config.handler_timeout_ms > 0 else float("inf")
        clock = time.monotonic
        loads = orjson.loads
        # NOTE: the message branch is written out inline: it runs once per inbound message.
        for kind, cid, a, b in events:
            if kind == _EV_MSG:
                conn = connections.get(cid)
                if conn is None:
                    continue
                try:
                    env = loads(a)
                except orjson.JSONDecodeError:
                    self._reply_error(cid, "INVALID_JSON", "message is not valid JSON")
                    continue
                msg_type = env.get("t") or env.get("type") or ""
                h = handlers.get(msg_type, default)
                if h is None:
                    self._reply_error(cid, "UNKNOWN_MESSAGE_TYPE", f"no handler for {msg_type!r}")
                    continue
                fn, is_async = h
                probe = False
                br = breakers.get(msg_type)
                if br is not None and br.state != "closed":
                    verdict = br.allow(clock())
                    if verdict == REJECT:
                        self._reply_unavailable(cid, msg_type, br)
                        continue
                    probe = verdict == PROBE
                msg = _new_message(Message, (msg_type, env["p"] if "p" in env else env.get("payload"), env.get("id"), env))
                try:
                    if is_async:
                        self._spawn(self._guarded(fn(conn, msg), cid, msg_type, probe))
                    else:
                        t0 = clock()
                        result = fn(conn, msg)
                        if result is not None and inspect.isawaitable(result):
                            self._spawn(self._guarded(result, cid, msg_type, probe))
                        elif clock() - t0 > slow_s:
                            log.warning("wse: handler for %r ran past the handler timeout", msg_type)
                            self._handler_failed(msg_type, probe)
                        elif br is not None:
                            self._handler_ok(msg_type, probe)
                except Exception:
                    log.exception("wse: handler for %r failed", msg_type)
                    self._reply_error(cid, "HANDLER_ERROR", f"the handler for {msg_type!r} failed")
                    self._handler_failed(msg_type, probe)
                continue
            try:
                if kind == _EV_CONNECT:
                    claims_raw, addr = b
                    conn = Connection(cid, a, addr, claims_raw)
                    connections[cid] = conn
                    for h_conn in self._on_connect:
                        self._call(h_conn, conn)
                elif kind == _EV_DISCONNECT:
                    gone = connections.pop(cid, None)
                    if gone is not None:
                        for h_disc in self._on_disconnect:
                            self._call(h_disc, gone, a)
                elif kind == _EV_RAW or kind == _EV_BIN:
                    peer = connections.get(cid)
                    if peer is not None and self._on_raw is not None:
                        self._call(self._on_raw, peer, a, kind == _EV_RAW)
                elif kind == _EV_SUB_REQUEST:
                    self._spawn(self._authorize_topics(cid, a, b))
                elif kind == _EV_PRESENCE:
                    if self._on_presence:
                        change, topic, user = a
                        pev = PresenceEvent(_CHANGES[change], topic, user, loads(b), cid)
                        for h_pres in self._on_presence:
                            self._call(h_pres, pev)
            except Exception:
                log.exception("wse: event handler failed")
        if self._space_waiters:
            waiters, self._space_waiters = self._space_waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)
        return len(events)

    async def _drained(self) -> None:
        """Resolves after the next drain batch (room was made in the engine's queue)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._space_waiters.append(fut)
        await fut

    def _ext_ready(self) -> None:
        """Wakes the writers of the external connections that have messages to send."""
        server = self._server
        if server is None:
            return
        wake = self._ext_wake
        for cid in server.ext_ready():
            ev = wake.get(cid)
            if ev is not None:
                ev.set()

    def _reply_error(self, cid: int, code: str, message: str) -> None:
        self.server.send(cid, _dumps({"code": code, "message": message}), "error", "WSE")

    def _reply_unavailable(self, cid: int, msg_type: str, br: Breaker) -> None:
        retry = round(br.retry_after(time.monotonic()), 3)
        self.server.send(
            cid,
            _dumps({
                "code": "HANDLER_UNAVAILABLE",
                "message": f"the handler for {msg_type!r} is failing; its messages are refused for now",
                "type": msg_type,
                "retry_after": retry,
            }),
            "error",
            "WSE",
        )

    def _call(self, handler: tuple[Callable[..., Any], bool], *args: Any) -> None:
        fn, is_async = handler
        if is_async:
            self._spawn(fn(*args))
            return
        result = fn(*args)
        if result is not None and inspect.isawaitable(result):
            self._spawn(result)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("wse: handler failed", exc_info=task.exception())

    async def _authorize_topics(self, cid: int, req: int, topics: list[str]) -> None:
        conn = self.connections.get(cid)
        allowed: list[str] = []
        denied: list[tuple[str, str]] = []
        hook = self._authorize
        for t in topics:
            ok: Any = False
            if conn is not None and hook is not None:
                try:
                    ok = hook(conn, t)
                    if inspect.isawaitable(ok):
                        ok = await ok
                except Exception:
                    log.exception("wse: subscription hook failed")
                    ok = False
            if ok:
                allowed.append(t)
            else:
                denied.append((t, "not authorized"))
        if self._server is not None:
            self._server.complete_subscription(req, allowed, denied)


def _dumps(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    return orjson.dumps(payload)


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn)


def _cid(conn: Connection | int) -> int:
    return conn if isinstance(conn, int) else conn.id
