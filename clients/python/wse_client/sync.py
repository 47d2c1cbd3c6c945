"""A blocking wrapper for scripts and threads: the asyncio client runs on its own thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Iterator
from typing import Any, TypeVar

from .client import H, TokenSource, WSEClient
from .errors import ConnectionLost
from .events import Event, SubscribeResult

T = TypeVar("T")


class SyncClient:
    """The same client with blocking calls; safe to use from any thread.

    ``on()`` handlers run on the client's own thread. Iterating yields events until
    :meth:`close`.
    """

    def __init__(self, url: str, *, token: TokenSource | None = None, connect_timeout: float = 30.0, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="wse-client", daemon=True)
        self._thread.start()
        self._closed = False
        try:
            self.client: WSEClient = self._run(_make(url, token, options), connect_timeout)
        except BaseException:
            self._stop()
            raise

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if self._closed:
            coro.close()
            raise ConnectionLost("client closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def send(self, type: str, payload: Any = None, **extra: Any) -> None:
        """See :meth:`WSEClient.send`."""
        self._run(self.client.send(type, payload, **extra))

    def request(self, type: str, payload: Any = None, *, timeout: float | None = None) -> Event:
        """See :meth:`WSEClient.request`."""
        return self._run(self.client.request(type, payload, timeout=timeout))

    def subscribe(self, topics: str | Iterable[str], *, recover: bool = True, timeout: float | None = None) -> SubscribeResult:
        """See :meth:`WSEClient.subscribe`."""
        return self._run(self.client.subscribe(list([topics] if isinstance(topics, str) else topics), recover=recover, timeout=timeout))

    def unsubscribe(self, topics: str | Iterable[str], *, timeout: float | None = None) -> SubscribeResult:
        """See :meth:`WSEClient.unsubscribe`."""
        return self._run(self.client.unsubscribe(list([topics] if isinstance(topics, str) else topics), timeout=timeout))

    def recv(self, timeout: float | None = None) -> Event:
        """The next event; ``TimeoutError`` after ``timeout`` seconds, ``StopIteration`` once closed."""
        try:
            return self._run(self.client.recv(timeout))
        except StopAsyncIteration:
            raise StopIteration from None

    def on(self, type: str, handler: H | None = None) -> Any:
        """See :meth:`WSEClient.on` (handlers run on the client's thread)."""
        return self.client.on(type, handler)

    def __iter__(self) -> Iterator[Event]:
        while True:
            try:
                yield self.recv()
            except StopIteration:
                return

    @property
    def connected(self) -> bool:
        return self.client.connected

    @property
    def stats(self) -> dict[str, int]:
        return dict(self.client.stats)

    def close(self) -> None:
        """Closes the connection and stops the client's thread."""
        if self._closed:
            return
        try:
            self._run(self.client.close(), 10)
        finally:
            self._closed = True
            self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _make(url: str, token: TokenSource | None, options: dict[str, Any]) -> WSEClient:
    return await WSEClient(url, token=token, **options).connect()


def connect_sync(url: str, *, token: TokenSource | None = None, **options: Any) -> SyncClient:
    """A connected :class:`SyncClient` (options as for :func:`~wse_client.connect`)."""
    return SyncClient(url, token=token, **options)
