"""The application object: handlers for message types and lifecycle, and the calls that send."""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import orjson

from . import _runtime
from .config import WSEConfig

log = logging.getLogger("wse")

_EV_CONNECT = _runtime.EV_CONNECT
_EV_DISCONNECT = _runtime.EV_DISCONNECT
_EV_MSG = _runtime.EV_MSG
_EV_RAW = _runtime.EV_RAW
_EV_BIN = _runtime.EV_BIN
_EV_SUB_REQUEST = _runtime.EV_SUB_REQUEST


@dataclass(eq=False)
class Connection:
    """A client connection, as Python sees it after the engine accepted it."""

    id: int
    user_id: str | None
    remote_addr: str
    _claims_raw: bytes | None = field(default=None, repr=False)
    _claims: dict[str, Any] | None = field(default=None, repr=False)
    state: dict[str, Any] = field(default_factory=dict, repr=False)
    """Free for the application's own per-connection data."""

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


# NOTE: the drain loop builds a Message per inbound message; tuple.__new__ skips a Python-level
# __init__ call (a dataclass cost about 4x more here).
_new_message = tuple.__new__


Handler = Callable[[Connection, Message], Any]
LifecycleHandler = Callable[[Connection], Any]
DisconnectHandler = Callable[[Connection, int], Any]
RawHandler = Callable[[Connection, bytes, bool], Any]
SubscribeHook = Callable[[Connection, str], Any]
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
        self._server: _runtime.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.address: tuple[str, int] | None = None
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
        return fn

    def on_disconnect(self, fn: F) -> F:
        """``fn(conn, code)`` once a connection is gone; always after its last message."""
        self._on_disconnect.append((fn, _is_async(fn)))
        return fn

    def on_raw(self, fn: F) -> F:
        """``fn(conn, data, is_text)`` for messages that are not JSON envelopes."""
        self._on_raw = (fn, _is_async(fn))
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

    def publish(self, topic: str, payload: Any, *, type: str = "message", category: str = "U") -> int:
        """Send ``payload`` to every subscriber of ``topic``; returns how many it was queued for."""
        return self.server.publish(topic, _dumps(payload), type, category)

    def send(self, conn: Connection | int, payload: Any, *, type: str = "message", category: str = "U") -> bool:
        """Send one envelope to one connection; False if it is gone or over its outbound budget."""
        return self.server.send(_cid(conn), _dumps(payload), type, category)

    def send_raw(self, conn: Connection | int, data: bytes, *, text: bool = False) -> bool:
        """Send bytes unchanged as one WebSocket message."""
        return self.server.send_raw(_cid(conn), data, text)

    def subscribe(self, conn: Connection | int, topics: list[str] | str) -> list[str]:
        """Subscribe a connection on the server's authority (no ACL check)."""
        return self.server.subscribe(_cid(conn), [topics] if isinstance(topics, str) else list(topics))

    def unsubscribe(self, conn: Connection | int, topics: list[str] | str) -> list[str]:
        return self.server.unsubscribe(_cid(conn), [topics] if isinstance(topics, str) else list(topics))

    def disconnect(self, conn: Connection | int, code: int = 1000, reason: str = "") -> bool:
        """Close a connection with a close code; its disconnect handler still runs."""
        return self.server.disconnect(_cid(conn), code, reason)

    def stats(self) -> dict[str, int]:
        """The engine's counters and gauges."""
        return self.server.stats()

    # ---- serving --------------------------------------------------------------------------------

    async def serve(self, *, ready: Callable[[tuple[str, int]], None] | None = None) -> None:
        """Serve until ``stop()`` is called."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopped = asyncio.Event()
        engine_json = self.config.engine_json(subscribe_hook=self._authorize is not None)
        if self._engine_extra:
            engine_json = orjson.dumps({**orjson.loads(engine_json), **self._engine_extra}).decode()
        server = _runtime.Server(engine_json)
        self._server = server
        self.address = server.start()
        loop.add_reader(server.fd, self._drain)
        if ready is not None:
            ready(self.address)
        else:
            log.info("serving on ws://%s:%d%s", self.address[0], self.address[1], self.config.path)
        try:
            await self._stopped.wait()
        finally:
            loop.remove_reader(server.fd)
            server.stop()
            # Every connection is closed now; hand Python all the remaining events.
            while self._drain():
                pass
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    def stop(self) -> None:
        """Ask ``serve()`` to close every connection and return."""
        if self._stopped is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)

    def run(self, host: str | None = None, port: int | None = None, *, announce: bool = False) -> None:
        """Serve in this thread until SIGINT or SIGTERM (uvloop if installed).

        With ``announce``, print ``wse: serving ws://HOST:PORT/PATH`` on stdout once listening.
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
            await self.serve(ready=_announce if announce else None)

        def _announce(addr: tuple[str, int]) -> None:
            print(f"wse: serving ws://{addr[0]}:{addr[1]}{self.config.path}", flush=True)

        try:
            import uvloop

            uvloop.run(main())
        except ImportError:
            asyncio.run(main())

    # ---- the drain loop -------------------------------------------------------------------------

    def _drain(self) -> int:
        """Handles one batch of engine events; returns how many there were."""
        server = self._server
        if server is None:
            return 0
        events = server.drain(self.config.drain_batch)
        connections = self.connections
        handlers = self._handlers
        default = self._default
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
                msg = _new_message(Message, (msg_type, env["p"] if "p" in env else env.get("payload"), env.get("id"), env))
                try:
                    if is_async:
                        self._spawn(fn(conn, msg))
                    else:
                        result = fn(conn, msg)
                        if result is not None and inspect.isawaitable(result):
                            self._spawn(result)
                except Exception:
                    log.exception("wse: handler for %r failed", msg_type)
                    self._reply_error(cid, "HANDLER_ERROR", f"the handler for {msg_type!r} failed")
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
            except Exception:
                log.exception("wse: event handler failed")
        return len(events)

    def _reply_error(self, cid: int, code: str, message: str) -> None:
        self.server.send(cid, _dumps({"code": code, "message": message}), "error", "WSE")

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
