"""The asyncio client."""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, WebSocketException

from . import _codec
from ._crypto import Session, require_crypto
from .errors import AuthError, ConnectionLost, EncryptionError, QueueOverflow, RequestError, WSEError
from .events import GAP, OVERFLOW, Event, Gap, SubscribeResult, TopicRecovery

log = logging.getLogger("wse_client")

__version__ = "0.1.0"
PROTOCOL_VERSION = 2
AUTH_CLOSE = 4401

Overflow = Literal["block", "drop_oldest", "drop_newest", "error"]
TokenSource = str | Callable[[], str | Awaitable[str]]
"""A token, or a function (plain or async) called for a fresh token before every connection."""
Handler = Callable[[Event], Any]
H = TypeVar("H", bound=Handler)

# System messages the client handles itself (category WSE); everything else reaches the user.
_SYSTEM = frozenset({"server_ready", "server_hello", "ping", "PONG", "pong", "key_rotation", "subscription_update"})
_CONNECT_ERRORS = (OSError, asyncio.TimeoutError, WebSocketException, EncryptionError, ConnectionLost)


class WSEClient:
    """A connection to a WSE server that survives disconnects.

    Create it with :func:`connect`; use it as ``async with connect(...) as client`` (or
    ``client = await connect(...)`` and ``await client.close()``). Iterate it for events.
    See the package documentation (``docs/CLIENT.md``) for every option.
    """

    def __init__(
        self,
        url: str,
        *,
        token: TokenSource | None = None,
        headers: dict[str, str] | None = None,
        encryption: bool = False,
        msgpack: bool = False,
        key_rotation: bool = True,
        reconnect: bool = True,
        backoff_initial: float = 0.25,
        backoff_factor: float = 2.0,
        backoff_max: float = 30.0,
        max_reconnect_attempts: int | None = None,
        ping_interval: float = 20.0,
        dead_timeout: float = 45.0,
        open_timeout: float = 10.0,
        hello_timeout: float = 5.0,
        request_timeout: float = 10.0,
        max_queue: int = 10_000,
        overflow: Overflow = "block",
        max_message_bytes: int | None = 16 * 1024 * 1024,
    ) -> None:
        if encryption:
            require_crypto()
        if msgpack:
            _codec.require_msgpack()
        if overflow not in ("block", "drop_oldest", "drop_newest", "error"):
            raise ValueError(f"overflow must be block, drop_oldest, drop_newest or error, not {overflow!r}")
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0 (0: no queue, handlers only)")
        self.url = _with_format(url, "msgpack") if msgpack else url
        self._headers = dict(headers or {})
        self._token = token
        self.encryption = encryption
        self.msgpack = msgpack
        self.key_rotation = key_rotation
        self.reconnect = reconnect
        self.backoff_initial = backoff_initial
        self.backoff_factor = backoff_factor
        self.backoff_max = backoff_max
        self.max_reconnect_attempts = max_reconnect_attempts
        self.ping_interval = ping_interval
        self.dead_timeout = dead_timeout
        self.open_timeout = open_timeout
        self.hello_timeout = hello_timeout
        self.request_timeout = request_timeout
        self.max_queue = max_queue
        self.overflow: Overflow = overflow
        self._max_size = max_message_bytes

        self.server_info: dict[str, Any] = {}
        """``server_ready.p.details`` of the current connection (version, features, ids)."""
        self.server_hello: dict[str, Any] = {}
        """``server_hello.p`` of the current connection."""
        self.stats: dict[str, int] = {
            "received": 0,
            "duplicates": 0,
            "dropped": 0,
            "gaps": 0,
            "reconnects": 0,
            "bad_frames": 0,
            "frames_text": 0,
            "frames_binary": 0,
            "frames_encrypted": 0,
            "frames_zlib": 0,
            "frames_msgpack": 0,
        }
        """Counters: events received and delivered, duplicates dropped, events dropped by the queue
        policy, gaps reported, reconnects, frames that could not be decoded, and frames received by
        kind (``frames_*``: text, binary, and among binary ones ``E:``, ``C:``/raw zlib, ``M:``)."""

        self._ws: ClientConnection | None = None
        self._session: Session | None = None
        self._ready = asyncio.Event()
        self._closing = False
        self._lost: BaseException | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._hello: asyncio.Future[None] | None = None

        self._queue: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._space = asyncio.Event()
        self._blocked = False
        self._overflowing = False
        self._handlers: dict[str, list[Handler]] = {}

        self._pending: dict[str, asyncio.Future[Event]] = {}
        self._sub_waiters: deque[tuple[str, frozenset[str], asyncio.Future[SubscribeResult]]] = deque()
        self._topics: dict[str, None] = {}
        self._positions: dict[str, list[Any]] = {}  # topic -> [epoch, offset | None]
        self._recovering: set[str] = set()
        # Positions taken from a subscribe ack rather than from a message: the next message of the
        # topic is accepted whatever its offset (it may have been published while the ack was made).
        self._soft: set[str] = set()
        self._last_rx = 0.0

    # ---- lifecycle ------------------------------------------------------------------------------

    async def connect(self) -> WSEClient:
        """Opens the first connection (errors are raised here, not retried) and starts the
        background reconnect supervisor."""
        if self._supervisor is not None:
            return self
        await self._open(resubscribe=False)
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())
        return self

    def __await__(self) -> Generator[Any, None, WSEClient]:
        return self.connect().__await__()

    async def __aenter__(self) -> WSEClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the connection for good; iteration ends, waiting calls get :class:`ConnectionLost`."""
        if self._closing:
            return
        self._closing = True
        self._ready.clear()
        if self._ws is not None:
            try:
                await asyncio.wait_for(self._ws.close(), 5)
            except (asyncio.TimeoutError, OSError, WebSocketException):
                pass
        for task in (self._supervisor, self._reader, self._keepalive):
            if task is not None and not task.done():
                task.cancel()
        for task in list(self._tasks):
            task.cancel()
        self._fail_pending(ConnectionLost("client closed"))
        self._wake()
        self._space.set()

    @property
    def connected(self) -> bool:
        """True while a connection is up and its handshake is done."""
        return self._ready.is_set() and self._lost is None and not self._closing

    @property
    def closed(self) -> bool:
        """True after :meth:`close`, or when reconnecting gave up."""
        return self._closing or self._lost is not None

    @property
    def features(self) -> dict[str, Any]:
        """The server's advertised features (``server_ready`` and ``server_hello`` merged)."""
        merged: dict[str, Any] = dict(self.server_info.get("features") or {})
        merged.update(self.server_hello.get("features") or {})
        return merged

    @property
    def encrypted(self) -> bool:
        """True when the current connection's messages are encrypted."""
        return self._session is not None and self._session.ready

    @property
    def subscriptions(self) -> list[str]:
        """Topics this client subscribed to (restored after every reconnect)."""
        return list(self._topics)

    @property
    def positions(self) -> dict[str, tuple[str | None, int | None]]:
        """The last ``(epoch, offset)`` seen per topic (recovery resumes from there)."""
        return {t: (p[0], p[1]) for t, p in self._positions.items()}

    # ---- sending --------------------------------------------------------------------------------

    async def send(self, type: str, payload: Any = None, *, category: str | None = None, **extra: Any) -> None:
        """Sends ``{"t": type, "p": payload}`` (waits while reconnecting). ``extra`` keys are added
        to the envelope as they are."""
        env: dict[str, Any] = {"t": type, "p": {} if payload is None else payload}
        if category is not None:
            env["c"] = category
        env.update(extra)
        await self._send(await self._live(), env)

    async def request(self, type: str, payload: Any = None, *, timeout: float | None = None) -> Event:
        """Sends a message with a fresh correlation id (``cid``) and returns the server's reply
        carrying the same ``cid``. Raises :class:`RequestError` for an ``error`` reply,
        :class:`TimeoutError` after ``timeout`` (default ``request_timeout``)."""
        timeout = self.request_timeout if timeout is None else timeout
        cid = uuid.uuid4().hex
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        try:
            async with asyncio.timeout(timeout):
                ws = await self._live()
                await self._send(ws, {"t": type, "p": {} if payload is None else payload, "cid": cid})
                reply = await fut
        finally:
            self._pending.pop(cid, None)
        if reply.type == "error":
            p = reply.payload if isinstance(reply.payload, dict) else {}
            raise RequestError(str(p.get("code", "ERROR")), str(p.get("message", "")), reply.payload)
        return reply

    async def subscribe(
        self, topics: str | Iterable[str], *, recover: bool = True, timeout: float | None = None
    ) -> SubscribeResult:
        """Subscribes and waits for the server's ack. Accepted topics are restored (with recovery
        from the last position seen, when ``recover``) after every reconnect."""
        names = [topics] if isinstance(topics, str) else list(topics)
        result = await self._subscription("subscribe", names, recover, timeout)
        for t in result.success_topics:
            self._topics[t] = None
            self._position_from_ack(t, result.recovery.get(t))
        return result

    def _position_from_ack(self, topic: str, rec: TopicRecovery | None) -> None:
        """A quiet topic's position, from the ack, so that recovery works before its first message."""
        pos = self._positions.get(topic)
        if rec is None or rec.epoch is None or type(rec.offset) is not int:
            return
        if pos is None or pos[1] is None or pos[0] != rec.epoch:
            self._positions[topic] = [rec.epoch, rec.offset]
            self._soft.add(topic)

    async def unsubscribe(self, topics: str | Iterable[str], *, timeout: float | None = None) -> SubscribeResult:
        """Unsubscribes and waits for the server's ack."""
        names = [topics] if isinstance(topics, str) else list(topics)
        for t in names:
            self._topics.pop(t, None)
            self._positions.pop(t, None)
            self._soft.discard(t)
        return await self._subscription("unsubscribe", names, False, timeout)

    async def _subscription(self, action: str, topics: list[str], recover: bool, timeout: float | None) -> SubscribeResult:
        timeout = self.request_timeout if timeout is None else timeout
        async with asyncio.timeout(timeout):
            ws = await self._live()
            return await self._subscribe_on(ws, action, topics, recover)

    async def _subscribe_on(self, ws: ClientConnection, action: str, topics: list[str], recover: bool) -> SubscribeResult:
        p: dict[str, Any] = {"action": action, "topics": topics}
        if recover and action == "subscribe":
            positions = {
                t: {"epoch": pos[0], "offset": pos[1]}
                for t in topics
                if (pos := self._positions.get(t)) is not None and pos[0] is not None and pos[1] is not None
            }
            if positions:
                p["recover"] = True
                p["recovery"] = positions
                self._recovering.update(positions)
        fut: asyncio.Future[SubscribeResult] = asyncio.get_running_loop().create_future()
        entry = (action, frozenset(topics), fut)
        self._sub_waiters.append(entry)
        try:
            await self._send(ws, {"c": "WSE", "t": "subscription_update", "p": p})
            return await fut
        finally:
            if entry in self._sub_waiters:
                self._sub_waiters.remove(entry)
            self._recovering.difference_update(topics)

    # ---- receiving ------------------------------------------------------------------------------

    def on(self, type: str, handler: H | None = None) -> Any:
        """Registers ``handler(event)`` (plain or ``async``) for events of ``type`` (``"*"``: all).

        Usable as ``client.on("chat", fn)`` or as a decorator ``@client.on("chat")``. The client
        also emits ``"recovery_gap"`` (payload: :class:`Gap` fields) and, to handlers only,
        ``"queue_overflow"``. Handlers run in the receive loop: keep plain ones short.
        """

        def register(fn: H) -> H:
            self._handlers.setdefault(type, []).append(fn)
            return fn

        return register if handler is None else register(handler)

    def off(self, type: str, handler: Handler) -> None:
        """Removes a handler registered with :meth:`on`."""
        hs = self._handlers.get(type, [])
        if handler in hs:
            hs.remove(handler)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        if self.max_queue == 0:
            raise WSEError("this client has no receive queue (max_queue=0): use on() handlers")
        q = self._queue
        while not q:
            if self._closing:
                raise StopAsyncIteration
            if self._lost is not None:
                raise ConnectionLost(str(self._lost)) from self._lost
            fut = asyncio.get_running_loop().create_future()
            self._waiter = fut
            try:
                await fut
            finally:
                self._waiter = None
        ev = q.popleft()
        if self._blocked and len(q) < self.max_queue:
            self._space.set()
        if self._overflowing and len(q) <= self.max_queue // 2:
            self._overflowing = False
        return ev

    async def recv(self, timeout: float | None = None) -> Event:
        """The next event (``TimeoutError`` after ``timeout`` seconds)."""
        async with asyncio.timeout(timeout):
            return await self.__anext__()

    # ---- connection -----------------------------------------------------------------------------

    async def _live(self) -> ClientConnection:
        while True:
            if self._closing:
                raise ConnectionLost("client closed")
            if self._lost is not None:
                raise ConnectionLost(str(self._lost)) from self._lost
            ws = self._ws
            if self._ready.is_set() and ws is not None:
                return ws
            await self._ready.wait()

    async def _open(self, *, resubscribe: bool) -> None:
        loop = asyncio.get_running_loop()
        headers = dict(self._headers)
        source = self._token
        token: str | None
        if callable(source):
            fresh = source()
            token = await fresh if inspect.isawaitable(fresh) else fresh
        else:
            token = source
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            ws = await ws_connect(
                self.url,
                additional_headers=headers or None,
                open_timeout=self.open_timeout,
                ping_interval=None,
                max_size=self._max_size,
                compression=None,
                user_agent_header=f"wse-engine-client/{__version__}",
            )
        except InvalidStatus as exc:
            if exc.response.status_code in (401, 403):
                raise AuthError(f"the server refused the upgrade: HTTP {exc.response.status_code}") from None
            raise
        except InvalidHandshake:
            raise
        self._ws = ws
        self._session = Session() if self.encryption else None
        self.server_info = {}
        self.server_hello = {}
        self._hello = loop.create_future()
        self._last_rx = loop.time()
        self._reader = loop.create_task(self._read(ws))
        try:
            try:
                await self._send(ws, self._client_hello())
            except ConnectionClosed:
                pass  # the reader sets why on self._hello (4401: AuthError)
            try:
                await asyncio.wait_for(asyncio.shield(self._hello), self.hello_timeout)
            except asyncio.TimeoutError:
                if self.encryption:
                    raise EncryptionError("no server_hello: the server did not answer the key exchange") from None
                log.info("no server_hello within %.1fs; going on without it", self.hello_timeout)
            if self.encryption and not self.encrypted:
                raise EncryptionError("the server did not offer encryption (no encryption_public_key in server_hello)")
            self._keepalive = loop.create_task(self._keep_alive(ws))
            if resubscribe and self._topics:
                await asyncio.wait_for(self._restore(ws), self.request_timeout)
        except BaseException:
            self._reader.cancel()
            if self._keepalive is not None:
                self._keepalive.cancel()
            await _abort(ws)
            raise
        self._ready.set()

    def _client_hello(self) -> dict[str, Any]:
        p: dict[str, Any] = {
            "client_version": f"wse-engine-client/{__version__}",
            "protocol_version": PROTOCOL_VERSION,
            "features": {
                "compression": True,
                "encryption": self.encryption,
                "msgpack": self.msgpack,
                "recovery": True,
                "key_rotation": self.encryption and self.key_rotation,
            },
        }
        if self._session is not None:
            p["encryption_public_key"] = self._session.public_key_b64
        return {"c": "WSE", "t": "client_hello", "p": p}

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
            if code == AUTH_CLOSE:
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

    def backoff_delay(self, attempt: int) -> float:
        """Seconds to wait before reconnect attempt ``attempt`` (0-based): exponential growth
        from ``backoff_initial`` by ``backoff_factor``, capped at ``backoff_max``, with jitter
        (uniform in the upper half, so that clients dropped together do not return together)."""
        delay = min(self.backoff_max, self.backoff_initial * self.backoff_factor ** min(attempt, 64))
        return random.uniform(delay / 2, delay)

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
                await _abort(ws)
                return
            if now - last_ping >= self.ping_interval:
                last_ping = now
                try:
                    await self._send(ws, {"c": "WSE", "t": "ping", "p": {"timestamp": int(time.time() * 1000)}})
                except (ConnectionClosed, OSError):
                    return

    async def _send(self, ws: ClientConnection, env: dict[str, Any]) -> None:
        data = _codec.dumps(env)
        session = self._session
        if session is not None and session.ready:
            await ws.send(session.encrypt(data))
        else:
            await ws.send(data.decode("utf-8"))

    # ---- the receive loop -----------------------------------------------------------------------

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
                        if frame[:1] == b"{":  # plain JSON, the common case
                            msg = loads(frame)
                        else:
                            kind = kinds.get(frame[:2]) or ("frames_zlib" if frame[:1] == b"\x78" else None)
                            if kind is not None:
                                stats[kind] += 1
                            msg = decode(frame, decrypt)
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
        elif t == "key_rotation":
            if self._session is not None and self._session.ready:
                try:
                    gen = int(p.get("generation", self._session.generation + 1))
                    self._session.rotate(gen)
                except (EncryptionError, ValueError, TypeError) as exc:
                    log.error("key rotation failed: %s", exc)
        elif t == "subscription_update":
            self._sub_ack(p, msg)

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
                    self._spawn(_abort(self._ws))
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


async def _abort(ws: ClientConnection) -> None:
    """Drops a connection without the closing handshake (the peer may be dead)."""
    transport = ws.transport
    if transport is not None:
        transport.abort()
    try:
        await asyncio.wait_for(ws.wait_closed(), 2)
    except (asyncio.TimeoutError, OSError):
        pass


def _with_format(url: str, fmt: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "format"]
    query.append(("format", fmt))
    return urlunsplit(parts._replace(query=urlencode(query)))


def connect(url: str, *, token: TokenSource | None = None, **options: Any) -> WSEClient:
    """A client for ``url`` (``ws://`` or ``wss://``), authenticated with ``token`` (a JWT sent
    as ``Authorization: Bearer``; or a function, plain or async, that returns a fresh one before
    every connection and reconnection).

    Use it as ``async with connect(url, token=...) as client`` or ``client = await connect(...)``.
    ``options`` are those of :class:`WSEClient` (``encryption``, ``msgpack``, ``reconnect``,
    ``max_queue``, ``overflow``, ...).
    """
    return WSEClient(url, token=token, **options)
