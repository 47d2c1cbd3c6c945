"""The asyncio client: options, lifecycle and the public methods. The receive path is in
``_receive.py``, reconnecting and keep-alive in ``_reconnect.py``."""

from __future__ import annotations

import asyncio
import base64
import inspect
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, WebSocketException

from . import _codec
from ._crypto import Session, require_crypto
from ._receive import Handler as Handler
from ._receive import Overflow as Overflow
from ._receive import ReceiveMixin
from ._reconnect import AUTH_CLOSE as AUTH_CLOSE
from ._reconnect import ReconnectMixin, abort
from .errors import AuthError, ConnectionLost, EncryptionError, RequestError, WSEError
from .events import Event, SubscribeResult

log = logging.getLogger("wse_client")

__version__ = "0.1.0"
PROTOCOL_VERSION = 2

TokenSource = str | Callable[[], str | Awaitable[str]]
"""A token, or a function (plain or async) called for a fresh token before every connection."""
H = TypeVar("H", bound=Handler)


class WSEClient(ReconnectMixin, ReceiveMixin):
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
        compact: bool = False,
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
        refresh_ahead: float = 30.0,
    ) -> None:
        if encryption:
            require_crypto()
        if msgpack:
            _codec.require_msgpack()
        if overflow not in ("block", "drop_oldest", "drop_newest", "error"):
            raise ValueError(f"overflow must be block, drop_oldest, drop_newest or error, not {overflow!r}")
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0 (0: no queue, handlers only)")
        self.url = _with_query(url, "format", "msgpack") if msgpack else url
        if compact:
            self.url = _with_query(self.url, "envelope", "compact")
        self._headers = dict(headers or {})
        self._token = token
        self.encryption = encryption
        self.msgpack = msgpack
        self.compact = compact
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
        self.refresh_ahead = refresh_ahead

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
            "batch_keys": 0,
            "token_refreshes": 0,
        }
        """Counters: events received and delivered, duplicates dropped, events dropped by the queue
        policy, gaps reported, reconnects, frames that could not be decoded, frames received by
        kind (``frames_*``: text, binary, and among binary ones ``E:`` and ``G:``, ``C:``/raw zlib,
        ``M:``), and batch keys received (encrypted fan-out sealed once per batch)."""

        self._ws: ClientConnection | None = None
        self._session: Session | None = None
        self._ready = asyncio.Event()
        self._closing = False
        self._lost: BaseException | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._refresh_waiters: deque[asyncio.Future[dict[str, Any]]] = deque()
        self._current_token: str | None = None
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
        for task in (self._supervisor, self._reader, self._keepalive, self._refresher):
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

    async def refresh_token(self, *, timeout: float | None = None) -> int | None:
        """Gets a fresh token from the token function and sends it on the open connection
        (``auth_refresh``): the server verifies it and extends the connection. Returns the new
        deadline (ms since the epoch, or None); raises :class:`AuthError` if it is refused.
        The client does this by itself ``refresh_ahead`` seconds before the token expires."""
        source = self._token
        if not callable(source):
            raise WSEError("refresh_token needs a token function (connect(url, token=fn))")
        fresh = source()
        token = await fresh if inspect.isawaitable(fresh) else fresh
        if not token:
            raise AuthError("the token function returned no token")
        timeout = self.request_timeout if timeout is None else timeout
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        async with asyncio.timeout(timeout):
            ws = await self._live()
            self._refresh_waiters.append(fut)
            try:
                await self._send(ws, {"c": "WSE", "t": "auth_refresh", "p": {"token": token}})
                p = await fut
            finally:
                if fut in self._refresh_waiters:
                    self._refresh_waiters.remove(fut)
        if p.get("success") is not True:
            raise AuthError(f"token refresh refused: {p.get('code')} {p.get('reason')}: {p.get('message', '')}")
        self._current_token = token
        self.stats["token_refreshes"] += 1
        expires = p.get("expires_at")
        return expires if isinstance(expires, int) else _token_expiry_ms(token)

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
        self._current_token = token
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
            await abort(ws)
            raise
        if self._refresher is not None:
            self._refresher.cancel()
        if callable(self._token):
            self._refresher = loop.create_task(self._refresh_loop(ws))
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
                "batch_keys": self.encryption,
            },
        }
        if self._session is not None:
            p["encryption_public_key"] = self._session.public_key_b64
        return {"c": "WSE", "t": "client_hello", "p": p}

    def backoff_delay(self, attempt: int) -> float:
        """Seconds to wait before reconnect attempt ``attempt`` (0-based): exponential growth
        from ``backoff_initial`` by ``backoff_factor``, capped at ``backoff_max``, with jitter
        (uniform in the upper half, so that clients dropped together do not return together)."""
        delay = min(self.backoff_max, self.backoff_initial * self.backoff_factor ** min(attempt, 64))
        return random.uniform(delay / 2, delay)

    async def _refresh_loop(self, ws: ClientConnection) -> None:
        """Refreshes the token ``refresh_ahead`` seconds before it (or the server's deadline)
        expires, for as long as this connection lives. A failed refresh is retried while there
        is time; the server's close (4401) and a reconnect with a fresh token remain."""
        expires = _token_expiry_ms(self._current_token)
        if expires is None:
            server = self.server_info.get("token_expires_at")
            expires = server if isinstance(server, int) else None
        while expires is not None and self._ws is ws:
            deadline: int = expires
            left = deadline / 1000 - time.time()
            await asyncio.sleep(max(0.0, left - self.refresh_ahead if left > self.refresh_ahead else left / 2))
            try:
                expires = await self.refresh_token()
            except (WSEError, asyncio.TimeoutError, ConnectionClosed, OSError) as exc:
                log.warning("token refresh failed: %s", exc)
                left = deadline / 1000 - time.time()
                if left <= 0.2:
                    return
                await asyncio.sleep(min(5.0, left / 2))

    async def _send(self, ws: ClientConnection, env: dict[str, Any]) -> None:
        data = _codec.dumps(env)
        session = self._session
        if session is not None and session.ready:
            await ws.send(session.encrypt(data))
        else:
            await ws.send(data.decode("utf-8"))


def _token_expiry_ms(token: str | None) -> int | None:
    """A JWT's ``exp`` in ms (not verified: the server does that), or None."""
    if not token or token.count(".") != 2:
        return None
    body = token.split(".")[1]
    try:
        claims = _codec.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (ValueError, TypeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return int(exp * 1000) if isinstance(exp, (int, float)) else None


def _with_query(url: str, key: str, value: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != key]
    query.append((key, value))
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
