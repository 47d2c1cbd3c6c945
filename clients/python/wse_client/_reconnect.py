"""Surviving disconnects: the supervisor that notices a lost connection, reconnects with
backoff and resubscribes with recovery, and the keep-alive that detects a dead peer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, WebSocketException

from .errors import AuthError, ConnectionLost, EncryptionError
from .events import Event, Gap, SubscribeResult, TopicRecovery

log = logging.getLogger("wse_client")

AUTH_CLOSE = 4401
_CONNECT_ERRORS = (OSError, asyncio.TimeoutError, WebSocketException, EncryptionError, ConnectionLost)


class ReconnectMixin:
    """The part of :class:`~wse_client.WSEClient` that keeps a connection up."""

    # Set by WSEClient.__init__.
    stats: dict[str, int]
    reconnect: bool
    max_reconnect_attempts: int | None
    ping_interval: float
    dead_timeout: float
    _ws: ClientConnection | None
    _ready: asyncio.Event
    _closing: bool
    _lost: BaseException | None
    _reader: asyncio.Task[None] | None
    _keepalive: asyncio.Task[None] | None
    _hello: asyncio.Future[None] | None
    _space: asyncio.Event
    _blocked: bool
    _pending: dict[str, asyncio.Future[Event]]
    _sub_waiters: deque[tuple[str, frozenset[str], asyncio.Future[SubscribeResult]]]
    _topics: dict[str, None]
    _positions: dict[str, list[Any]]
    _last_rx: float
    _token: Any
    _refresh_waiters: deque[asyncio.Future[dict[str, Any]]]

    if TYPE_CHECKING:

        async def _open(self, *, resubscribe: bool) -> None: ...

        async def _subscribe_on(
            self, ws: ClientConnection, action: str, topics: list[str], recover: bool
        ) -> SubscribeResult: ...

        def backoff_delay(self, attempt: int) -> float: ...

        async def _send(self, ws: ClientConnection, env: dict[str, Any]) -> None: ...

        def _gap(self, gap: Gap) -> None: ...

        def _wake(self) -> None: ...

        def _position_from_ack(self, topic: str, rec: TopicRecovery | None) -> None: ...

    async def _restore(self, ws: ClientConnection) -> None:
        """After a reconnect: subscribe again, with recovery, and report what cannot be recovered."""
        topics = list(self._topics)
        before = {t: list(p) for t, p in self._positions.items()}  # live messages may follow the ack
        result = await self._subscribe_on(ws, "subscribe", topics, True)
        for t in topics:
            if t in result.failed_topics:
                self._topics.pop(t, None)
                log.warning("topic %r refused on resubscribe: %s", t, result.errors.get(t, ""))
                continue
            pos = before.get(t)
            rec = result.recovery.get(t)
            if pos is None or pos[1] is None or rec is None:
                self._gap(Gap(t, pos[0] if pos else None, pos[1] if pos else None, "no_recovery"))
            elif not rec.recovered:
                self._gap(Gap(t, pos[0], pos[1], "not_recovered", rec.epoch, rec.offset))
                # Start again from the server's new position: the next message is not a gap.
                if self._positions.get(t) == pos:
                    self._positions[t] = [rec.epoch, None]
            self._position_from_ack(t, rec)

    async def _supervise(self) -> None:
        while True:
            reader = self._reader
            assert reader is not None
            try:
                await reader
            except asyncio.CancelledError:
                if self._closing:
                    return
                raise
            except Exception:  # noqa: BLE001 - the reader's own failure: reconnect
                log.exception("receive loop failed")
            if self._closing or self._lost is not None:
                return
            ws = self._ws
            code = ws.close_code if ws is not None else None
            self._ready.clear()
            if self._keepalive is not None:
                self._keepalive.cancel()
            self._fail_pending(ConnectionLost(f"connection lost (close code {code})"))
            if code == AUTH_CLOSE and not callable(self._token):
                self._give_up(AuthError("the server closed the connection: authentication failed (4401)"))
                return
            if not self.reconnect:
                self._give_up(ConnectionLost(f"connection closed (code {code}) and reconnect is off"))
                return
            if not await self._reconnect():
                return

    async def _reconnect(self) -> bool:
        attempt = 0
        while not self._closing and self._lost is None:
            await asyncio.sleep(self.backoff_delay(attempt))
            if self._closing or self._lost is not None:
                return False
            try:
                await self._open(resubscribe=True)
            except AuthError as exc:
                self._give_up(exc)
                return False
            except _CONNECT_ERRORS as exc:
                attempt += 1
                log.info("reconnect attempt %d failed: %r", attempt, exc)
                if self.max_reconnect_attempts is not None and attempt >= self.max_reconnect_attempts:
                    self._give_up(ConnectionLost(f"gave up after {attempt} reconnect attempts: {exc!r}"))
                    return False
                continue
            self.stats["reconnects"] += 1
            return True
        return False

    def _give_up(self, exc: BaseException) -> None:
        self._lost = exc
        self._ready.set()  # waiting senders wake up and see _lost
        self._fail_pending(exc)
        self._wake()
        self._space.set()

    def _fail_pending(self, exc: BaseException) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        for rfut in self._refresh_waiters:
            if not rfut.done():
                rfut.set_exception(exc)
        self._refresh_waiters.clear()
        for _, _, sfut in self._sub_waiters:
            if not sfut.done():
                sfut.set_exception(exc)
        self._sub_waiters.clear()
        if self._hello is not None and not self._hello.done():
            self._hello.set_exception(exc)
            self._hello.exception()  # retrieved: nobody may be waiting any more

    async def _keep_alive(self, ws: ClientConnection) -> None:
        """JSON pings every ``ping_interval``; aborts the connection when nothing has arrived for
        ``dead_timeout`` (not counting time spent waiting for the application to read)."""
        loop = asyncio.get_running_loop()
        tick = max(0.05, min(self.ping_interval, self.dead_timeout) / 4)
        last_ping = loop.time()
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            if self._blocked:
                self._last_rx = now
            elif now - self._last_rx > self.dead_timeout:
                log.warning("nothing received for %.1fs: the connection is dead, reconnecting", now - self._last_rx)
                await abort(ws)
                return
            if now - last_ping >= self.ping_interval:
                last_ping = now
                try:
                    await self._send(ws, {"c": "WSE", "t": "ping", "p": {"timestamp": int(time.time() * 1000)}})
                except (ConnectionClosed, OSError):
                    return

async def abort(ws: ClientConnection) -> None:
    """Drops a connection without the closing handshake (the peer may be dead)."""
    transport = ws.transport
    if transport is not None:
        transport.abort()
    try:
        await asyncio.wait_for(ws.wait_closed(), 2)
    except (asyncio.TimeoutError, OSError):
        pass
