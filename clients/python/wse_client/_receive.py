"""The receive path: frame decoding, dispatch, the event queue and handlers, and the per-topic
recovery bookkeeping (positions, duplicates, gaps)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from . import _codec
from ._crypto import Session
from ._reconnect import AUTH_CLOSE, abort
from .errors import AuthError, ConnectionLost, EncryptionError, QueueOverflow, WSEError
from .events import GAP, OVERFLOW, Event, Gap, SubscribeResult, TopicRecovery

log = logging.getLogger("wse_client")

Overflow = Literal["block", "drop_oldest", "drop_newest", "error"]
Handler = Callable[[Event], Any]

# System messages the client handles itself (category WSE); everything else reaches the user.
_SYSTEM = frozenset(
    {"server_ready", "server_hello", "ping", "PONG", "pong", "key_rotation", "subscription_update", "auth_refresh",
     "batch_key"}
)


class ReceiveMixin:
    """The part of :class:`~wse_client.WSEClient` that reads and delivers what the server sends."""

    # Set by WSEClient.__init__.
    stats: dict[str, int]
    server_info: dict[str, Any]
    server_hello: dict[str, Any]
    max_queue: int
    overflow: Overflow
    _ws: ClientConnection | None
    _session: Session | None
    _closing: bool
    _lost: BaseException | None
    _tasks: set[asyncio.Task[Any]]
    _hello: asyncio.Future[None] | None
    _queue: deque[Event]
    _waiter: asyncio.Future[None] | None
    _space: asyncio.Event
    _blocked: bool
    _overflowing: bool
    _handlers: dict[str, list[Handler]]
    _pending: dict[str, asyncio.Future[Event]]
    _sub_waiters: deque[tuple[str, frozenset[str], asyncio.Future[SubscribeResult]]]
    _positions: dict[str, list[Any]]
    _recovering: set[str]
    _soft: set[str]
    _last_rx: float
    _refresh_waiters: deque[asyncio.Future[dict[str, Any]]]

    if TYPE_CHECKING:

        async def _send(self, ws: ClientConnection, env: dict[str, Any]) -> None: ...

        def _give_up(self, exc: BaseException) -> None: ...

    def _position_from_ack(self, topic: str, rec: TopicRecovery | None) -> None:
        """A quiet topic's position, from the ack, so that recovery works before its first message."""
        pos = self._positions.get(topic)
        if rec is None or rec.epoch is None or type(rec.offset) is not int:
            return
        if pos is None or pos[1] is None or pos[0] != rec.epoch:
            self._positions[topic] = [rec.epoch, rec.offset]
            self._soft.add(topic)

    async def _read(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        decode = _codec.decode
        session = self._session
        decrypt = session.decrypt if session is not None else None
        stats = self.stats
        kinds = {b"E:": "frames_encrypted", b"C:": "frames_zlib", b"M:": "frames_msgpack"}
        loads = _codec.loads
        try:
            async for frame in ws:
                self._last_rx = loop.time()
                try:
                    if isinstance(frame, str):
                        stats["frames_text"] += 1
                        msg = decode(frame, decrypt)
                    else:
                        stats["frames_binary"] += 1
                        head = frame[:2]
                        if frame[:1] == b"{":  # plain JSON, the common case
                            msg = loads(frame)
                        elif head == b"G:":  # sealed once for several subscribers (batch key)
                            stats["frames_encrypted"] += 1
                            if session is None:
                                raise EncryptionError("shared encrypted frame but encryption is not set up")
                            msg = loads(session.open_shared(frame[2:]))
                        else:
                            kind = kinds.get(head) or ("frames_zlib" if frame[:1] == b"\x78" else None)
                            if kind is not None:
                                stats[kind] += 1
                            msg = decode(frame, decrypt)
                            if head == b"E:" and type(msg) is dict and msg.get("t") == "batch_key" and msg.get("c") == "WSE":
                                # Only from inside an authenticated E: frame (a plaintext one is ignored).
                                if session is not None:
                                    session.take_batch_key(msg.get("p"))
                                    stats["batch_keys"] += 1
                                continue
                except (WSEError, ValueError) as exc:  # ValueError: bad JSON, bad UTF-8
                    stats["bad_frames"] += 1
                    log.warning("dropped a frame that could not be decoded: %s", exc)
                    continue
                if type(msg) is not dict:
                    stats["bad_frames"] += 1
                    continue
                if not self._dispatch(msg, ws):
                    await self._wait_space()
                    self._enqueue_blocked(msg)
        except ConnectionClosed:
            pass
        finally:
            hello = self._hello
            if hello is not None and not hello.done():
                if ws.close_code == AUTH_CLOSE:
                    hello.set_exception(AuthError("authentication failed (close 4401)"))
                else:
                    hello.set_exception(ConnectionLost(f"connection closed during the handshake ({ws.close_code})"))
                hello.exception()

    def _dispatch(self, msg: dict[str, Any], ws: ClientConnection) -> bool:
        """Handles one envelope; False when the event waits for queue space (``block`` policy)."""
        cid = msg.get("cid")
        if cid is not None:
            fut = self._pending.get(cid)
            if fut is not None:
                if not fut.done():
                    fut.set_result(Event(msg))
                return True
        t = msg.get("t") or msg.get("type")
        if msg.get("c") == "WSE":
            if t in _SYSTEM:
                self._system(t, msg, ws)
                return True
            if t == "error":
                self._error(msg)
        tp = msg.get("tp")
        if tp is not None:
            o = msg.get("o")
            if type(o) is int and not self._fresh(tp, msg.get("e"), o):
                return True
        return self._deliver(Event(msg))

    def _fresh(self, topic: str, epoch: str | None, offset: int) -> bool:
        """Recovery bookkeeping per topic: False for a duplicate; reports an offset jump."""
        pos = self._positions.get(topic)
        if pos is None:
            self._positions[topic] = [epoch, offset]
            return True
        if topic in self._soft:
            self._soft.discard(topic)
        elif pos[0] == epoch and pos[1] is not None:
            last = pos[1]
            if offset <= last:
                self.stats["duplicates"] += 1
                return False
            if offset > last + 1 and topic not in self._recovering:
                self._gap(Gap(topic, epoch, last, "missed", epoch, offset - 1))
        pos[0] = epoch
        pos[1] = offset
        return True

    def _system(self, t: str, msg: dict[str, Any], ws: ClientConnection) -> None:
        p = msg.get("p")
        p = p if isinstance(p, dict) else {}
        if t == "server_ready":
            details = p.get("details")
            self.server_info = details if isinstance(details, dict) else {}
        elif t == "server_hello":
            self.server_hello = p
            hello = self._hello
            error: BaseException | None = None
            if self._session is not None and not self._session.ready:
                key = p.get("encryption_public_key")
                if key:
                    try:
                        self._session.complete(str(key))
                    except EncryptionError as exc:
                        error = exc
            if hello is not None and not hello.done():
                if error is not None:
                    hello.set_exception(error)
                else:
                    hello.set_result(None)
        elif t == "ping":
            reply = {"c": "WSE", "t": "PONG", "p": {"server_time": p.get("server_time"), "client_timestamp": int(time.time() * 1000)}}
            self._spawn(self._send_quiet(ws, reply))
        elif t == "batch_key":
            # Batch keys are taken only from E: frames (in _read); this one came in plaintext.
            self.stats["bad_frames"] += 1
            log.warning("ignored a batch_key that did not arrive encrypted")
        elif t == "key_rotation":
            if self._session is not None and self._session.ready:
                try:
                    gen = int(p.get("generation", self._session.generation + 1))
                    self._session.rotate(gen)
                except (EncryptionError, ValueError, TypeError) as exc:
                    log.error("key rotation failed: %s", exc)
        elif t == "subscription_update":
            self._sub_ack(p, msg)
        elif t == "auth_refresh":
            while self._refresh_waiters:
                fut = self._refresh_waiters.popleft()
                if not fut.done():
                    fut.set_result(p)
                    break

    def _sub_ack(self, p: dict[str, Any], msg: dict[str, Any]) -> None:
        rec_raw = p.get("recovery")
        recovery: dict[str, TopicRecovery] = {}
        if isinstance(rec_raw, dict):
            nested = rec_raw.get("topics")
            per_topic: dict[str, Any] = nested if isinstance(nested, dict) else rec_raw
            for topic, r in per_topic.items():
                if isinstance(r, dict):
                    recovery[topic] = TopicRecovery(
                        topic, bool(r.get("recovered")), r.get("epoch"), r.get("offset"), int(r.get("count") or 0)
                    )
        result = SubscribeResult(
            success_topics=list(p.get("success_topics") or []),
            failed_topics=list(p.get("failed_topics") or []),
            errors=dict(p.get("errors") or {}),
            recovery=recovery,
            raw=msg,
        )
        # Acks come in request order, except when an application hook decides some requests
        # asynchronously: prefer the oldest request for exactly these topics, then the oldest one.
        action = p.get("action")
        answered = frozenset(result.success_topics) | frozenset(result.failed_topics)
        candidates = [e for e in self._sub_waiters if action is None or e[0] == action]
        entry = next((e for e in candidates if e[1] == answered), candidates[0] if candidates else None)
        if entry is None:
            log.debug("unsolicited subscription_update: %s", p)
            return
        self._sub_waiters.remove(entry)
        if not entry[2].done():
            entry[2].set_result(result)

    def _error(self, msg: dict[str, Any]) -> None:
        p = msg.get("p")
        code = p.get("code") if isinstance(p, dict) else None
        hello = self._hello
        if isinstance(code, str) and code.startswith("AUTH") and hello is not None and not hello.done():
            hello.set_exception(AuthError(f"{code}: {p.get('message', '') if isinstance(p, dict) else ''}"))
            hello.exception()
        elif code == "KEY_EXCHANGE_FAILED" and hello is not None and not hello.done():
            hello.set_exception(EncryptionError(f"the server failed the key exchange: {p}"))
            hello.exception()

    def _gap(self, gap: Gap) -> None:
        self.stats["gaps"] += 1
        log.warning("messages of topic %r lost: %s", gap.topic, gap.reason)
        if not self._deliver(Event({"c": "WSE", "t": GAP, "p": gap.as_payload()})):
            # A full queue under "block": the gap notice still goes in (it must not be lost).
            self._queue.append(Event({"c": "WSE", "t": GAP, "p": gap.as_payload()}))
            self._wake()

    def _deliver(self, ev: Event) -> bool:
        self.stats["received"] += 1
        hs = self._handlers
        if hs:
            for h in hs.get(ev.type, ()):
                self._call(h, ev)
            for h in hs.get("*", ()):
                self._call(h, ev)
        if self.max_queue == 0:
            return True
        q = self._queue
        if len(q) >= self.max_queue:
            policy = self.overflow
            if policy == "block":
                self.stats["received"] -= 1  # counted again when it goes in
                return False
            self.stats["dropped"] += 1
            if policy == "drop_oldest":
                q.popleft()
                q.append(ev)
            elif policy == "error":
                self._give_up(QueueOverflow(f"receive queue full ({self.max_queue} events)"))
                if self._ws is not None:
                    self._spawn(abort(self._ws))
            self._overflowed()
            return True
        q.append(ev)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
        return True

    def _enqueue_blocked(self, msg: dict[str, Any]) -> None:
        if not self._closing:
            self.stats["received"] += 1
            self._queue.append(Event(msg))
            self._wake()

    async def _wait_space(self) -> None:
        self._blocked = True
        try:
            while len(self._queue) >= self.max_queue and not self._closing and self._lost is None:
                self._space.clear()
                await self._space.wait()
        finally:
            self._blocked = False

    def _overflowed(self) -> None:
        if self._overflowing:
            return
        self._overflowing = True
        log.warning("receive queue full (%d events): %s", self.max_queue, self.overflow)
        ev = Event({"c": "WSE", "t": OVERFLOW, "p": {"policy": self.overflow, "dropped": self.stats["dropped"]}})
        for h in self._handlers.get(OVERFLOW, ()):
            self._call(h, ev)

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _call(self, handler: Handler, ev: Event) -> None:
        try:
            r = handler(ev)
            if inspect.isawaitable(r):
                self._spawn(_guard(r, handler))
        except Exception:
            log.exception("handler %r failed on %r", handler, ev)

    def _spawn(self, aw: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_quiet(self, ws: ClientConnection, env: dict[str, Any]) -> None:
        try:
            await self._send(ws, env)
        except (ConnectionClosed, OSError):
            pass


async def _guard(aw: Awaitable[Any], handler: Handler) -> None:
    try:
        await aw
    except Exception:
        log.exception("handler %r failed", handler)

