"""Running the application's handlers: the drain loop that hands the engine's events (connects,
messages, disconnects, subscription requests, presence) to the registered handlers, the circuit
breakers by message type and the handler timeout, and the tasks of async handlers."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

import orjson

from . import _runtime
from .breaker import PROBE, REJECT, Breaker, BreakerStatus
from .model import (
    Connection,
    DisconnectHandler,
    Handler,
    LifecycleHandler,
    Message,
    PresenceEvent,
    PresenceHandler,
    RawHandler,
    SubscribeHook,
)

if TYPE_CHECKING:
    from .app import WSEApp

log = logging.getLogger("wse")

_EV_CONNECT = _runtime.EV_CONNECT
_EV_DISCONNECT = _runtime.EV_DISCONNECT
_EV_MSG = _runtime.EV_MSG
_EV_RAW = _runtime.EV_RAW
_EV_BIN = _runtime.EV_BIN
_EV_SUB_REQUEST = _runtime.EV_SUB_REQUEST
_EV_PRESENCE = _runtime.EV_PRESENCE
_CHANGES: tuple[Literal["join", "leave", "update"], ...] = ("join", "leave", "update")

# NOTE: the drain loop builds a Message per inbound message; tuple.__new__ skips a Python-level
# __init__ call (a dataclass cost about 4x more here).
_new_message = tuple.__new__


class Dispatch:
    """The handlers of one application (each with whether it is a coroutine function, decided
    once at registration) and their running. Plain functions run inline, coroutine functions are
    scheduled as tasks."""

    def __init__(self, app: WSEApp) -> None:
        self.app = app
        self.handlers: dict[str, tuple[Handler, bool]] = {}
        self.default: tuple[Handler, bool] | None = None
        self.on_connect: list[tuple[LifecycleHandler, bool]] = []
        self.on_disconnect: list[tuple[DisconnectHandler, bool]] = []
        self.on_raw: tuple[RawHandler, bool] | None = None
        self.authorize: SubscribeHook | None = None
        self.on_presence: list[tuple[PresenceHandler, bool]] = []
        # Circuit breakers by message type, made at a type's first failure.
        self.breakers: dict[str, Breaker] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        # Readers waiting for room in the drain queue (router mode).
        self.space_waiters: list[asyncio.Future[None]] = []

    # ---- circuit breakers -----------------------------------------------------------------------

    def breaker_status(self) -> dict[str, BreakerStatus]:
        now = time.monotonic()
        return {t: b.status(now) for t, b in self.breakers.items()}

    def breakers_open(self) -> int:
        return sum(1 for b in self.breakers.values() if b.state != "closed")

    def handler_failed(self, msg_type: str, probe: bool) -> None:
        cfg = self.app.config
        if cfg.breaker_failures <= 0:
            return
        br = self.breakers.get(msg_type)
        if br is None:
            br = Breaker(cfg.breaker_failures, cfg.breaker_reset_ms / 1000, cfg.breaker_probes)
            self.breakers[msg_type] = br
        was = br.state
        br.failure(time.monotonic(), probe)
        if br.state == "open" and was != "open":
            log.warning("wse: circuit breaker for %r opened after %d failures", msg_type, br.consecutive)

    def handler_ok(self, msg_type: str, probe: bool) -> None:
        br = self.breakers.get(msg_type)
        if br is not None:
            was = br.state
            br.success(probe)
            if br.state == "closed" and was != "closed":
                log.warning("wse: circuit breaker for %r closed again", msg_type)

    async def guarded(self, aw: Awaitable[Any], cid: int, msg_type: str, probe: bool) -> None:
        """Runs an async handler with the handler timeout, and tells its breaker how it went."""
        timeout_ms = self.app.config.handler_timeout_ms
        try:
            async with asyncio.timeout(timeout_ms / 1000 if timeout_ms > 0 else None):
                await aw
        except TimeoutError:
            log.warning("wse: handler for %r timed out after %d ms", msg_type, timeout_ms)
            self.reply_error(cid, "HANDLER_TIMEOUT", f"the handler for {msg_type!r} timed out")
            self.handler_failed(msg_type, probe)
        except Exception:
            log.exception("wse: handler for %r failed", msg_type)
            self.reply_error(cid, "HANDLER_ERROR", f"the handler for {msg_type!r} failed")
            self.handler_failed(msg_type, probe)
        else:
            self.handler_ok(msg_type, probe)

    # ---- the drain loop -------------------------------------------------------------------------

    def drain(self) -> int:
        """Handles one batch of engine events; returns how many there were."""
        app = self.app
        server = app._server
        if server is None:
            return 0
        config = app.config
        events = server.drain(config.drain_batch)
        connections = app.connections
        handlers = self.handlers
        default = self.default
        breakers = self.breakers
        slow_s = config.handler_timeout_ms / 1000 if config.handler_timeout_ms > 0 else float("inf")
        clock = time.monotonic
        loads = orjson.loads
        # NOTE: the message branch is written out inline: it runs once per inbound message. One
        # clock reading per message: a handler's time is taken from the end of what ran before
        # it (which adds only this message's parsing), not from a reading of its own.
        last = clock()
        for kind, cid, a, b in events:
            if kind == _EV_MSG:
                conn = connections.get(cid)
                if conn is None:
                    continue
                try:
                    env = loads(a)
                except orjson.JSONDecodeError:
                    self.reply_error(cid, "INVALID_JSON", "message is not valid JSON")
                    continue
                msg_type = env.get("t") or env.get("type") or ""
                h = handlers.get(msg_type, default)
                if h is None:
                    self.reply_error(cid, "UNKNOWN_MESSAGE_TYPE", f"no handler for {msg_type!r}")
                    continue
                fn, is_async = h
                probe = False
                br = breakers.get(msg_type)
                if br is not None and br.state != "closed":
                    verdict = br.allow(clock())
                    if verdict == REJECT:
                        self.reply_unavailable(cid, msg_type, br)
                        continue
                    probe = verdict == PROBE
                msg = _new_message(Message, (msg_type, env["p"] if "p" in env else env.get("payload"), env.get("id"), env))
                try:
                    if is_async:
                        self.spawn(self.guarded(fn(conn, msg), cid, msg_type, probe))
                    else:
                        result = fn(conn, msg)
                        now = clock()
                        ran, last = now - last, now
                        if result is not None and inspect.isawaitable(result):
                            self.spawn(self.guarded(result, cid, msg_type, probe))
                        elif ran > slow_s:
                            log.warning("wse: handler for %r ran past the handler timeout", msg_type)
                            self.handler_failed(msg_type, probe)
                        elif br is not None:
                            self.handler_ok(msg_type, probe)
                except Exception:
                    log.exception("wse: handler for %r failed", msg_type)
                    self.reply_error(cid, "HANDLER_ERROR", f"the handler for {msg_type!r} failed")
                    self.handler_failed(msg_type, probe)
                    last = clock()
                continue
            try:
                if kind == _EV_CONNECT:
                    claims_raw, addr = b
                    conn = Connection(cid, a, addr, claims_raw)
                    connections[cid] = conn
                    for h_conn in self.on_connect:
                        self.call(h_conn, conn)
                elif kind == _EV_DISCONNECT:
                    gone = connections.pop(cid, None)
                    if gone is not None:
                        for h_disc in self.on_disconnect:
                            self.call(h_disc, gone, a)
                elif kind == _EV_RAW or kind == _EV_BIN:
                    peer = connections.get(cid)
                    if peer is not None and self.on_raw is not None:
                        self.call(self.on_raw, peer, a, kind == _EV_RAW)
                elif kind == _EV_SUB_REQUEST:
                    self.spawn(self.authorize_topics(cid, a, b))
                elif kind == _EV_PRESENCE:
                    if self.on_presence:
                        change, topic, user = a
                        pev = PresenceEvent(_CHANGES[change], topic, user, loads(b), cid)
                        for h_pres in self.on_presence:
                            self.call(h_pres, pev)
            except Exception:
                log.exception("wse: event handler failed")
            last = clock()
        if self.space_waiters:
            waiters, self.space_waiters = self.space_waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)
        return len(events)

    def drain_all(self) -> None:
        """Every remaining event (the engine has stopped)."""
        while self.drain():
            pass

    async def drained(self) -> None:
        """Resolves after the next drain batch (room was made in the engine's queue)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.space_waiters.append(fut)
        await fut

    async def finish(self) -> None:
        """Waits for the tasks of async handlers still running."""
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    def reply_error(self, cid: int, code: str, message: str) -> None:
        self.app.server.send(cid, orjson.dumps({"code": code, "message": message}), "error", "WSE")

    def reply_unavailable(self, cid: int, msg_type: str, br: Breaker) -> None:
        retry = round(br.retry_after(time.monotonic()), 3)
        self.app.server.send(
            cid,
            orjson.dumps({
                "code": "HANDLER_UNAVAILABLE",
                "message": f"the handler for {msg_type!r} is failing; its messages are refused for now",
                "type": msg_type,
                "retry_after": retry,
            }),
            "error",
            "WSE",
        )

    def call(self, handler: tuple[Callable[..., Any], bool], *args: Any) -> None:
        fn, is_async = handler
        if is_async:
            self.spawn(fn(*args))
            return
        result = fn(*args)
        if result is not None and inspect.isawaitable(result):
            self.spawn(result)

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("wse: handler failed", exc_info=task.exception())

    async def authorize_topics(self, cid: int, req: int, topics: list[str]) -> None:
        conn = self.app.connections.get(cid)
        allowed: list[str] = []
        denied: list[tuple[str, str]] = []
        hook = self.authorize
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
        server = self.app._server
        if server is not None:
            server.complete_subscription(req, allowed, denied)
