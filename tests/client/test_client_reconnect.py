"""Reconnecting, keepalive and the receive queue's overflow policies, against our server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.client.conftest import JWT, OurServer, free_port, token
from wse_client import GAP, ConnectionLost, Event, QueueOverflow, WSEClient, connect

FAST = {"backoff_initial": 0.05, "backoff_max": 0.5}


async def until(pred: Any, timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def collect_pubs(client: WSEClient, n: int, gaps: list[Event] | None = None, timeout: float = 20) -> list[int]:
    got: list[int] = []
    async with asyncio.timeout(timeout):
        async for ev in client:
            if ev.type == "pub":
                got.append(ev.payload["i"])
                if len(got) == n:
                    break
            elif ev.type == GAP and gaps is not None:
                gaps.append(ev)
    return got


def test_reconnects_after_the_server_closes_the_connection(our_server: Any) -> None:
    """The server drops the connection mid-stream: the client comes back, subscribed again, and
    says that what was published meanwhile is unknown (this server has no recovery yet). The token
    comes from an async provider, asked again for every connection."""
    srv: OurServer = our_server(JWT)
    issued: list[str] = []

    async def fresh_token() -> str:
        issued.append(token(f"user-{len(issued)}"))
        return issued[-1]

    async def main() -> None:
        async with connect(srv.url, token=fresh_token, **FAST) as client:
            await client.subscribe("live")
            await client.send("stream", {"topic": "live", "count": 400, "interval": 0.005})
            first = await collect_pubs(client, 30)
            await client.send("kick", {"code": 1011})
            gaps: list[Event] = []
            rest = await collect_pubs(client, 30, gaps)
            assert client.stats["reconnects"] == 1
            assert client.subscriptions == ["live"]
            seen = first + rest
            assert seen == sorted(seen) and len(set(seen)) == len(seen)  # in order, no duplicates
            assert [g.payload["topic"] for g in gaps] == ["live"]
            assert gaps[0].payload["reason"] == "no_recovery"
            reply = await client.request("rpc", {"after": "kick"})
            assert reply.payload == {"echo": {"after": "kick"}, "user": "user-1"}  # the second token
            assert len(issued) == 2

    asyncio.run(main())


def test_reconnects_to_a_restarted_server(our_server: Any) -> None:
    """The server process dies (SIGKILL, no close frame) and comes back on the same port."""
    srv: OurServer = our_server(JWT)

    async def main() -> None:
        async with connect(srv.url, token=token(), **FAST) as client:
            await client.subscribe("live")
            await client.send("stream", {"topic": "live", "count": 1000, "interval": 0.005})
            await collect_pubs(client, 20)
            srv.kill()
            await until(lambda: not client.connected, what="the client to notice the crash")
            with pytest.raises(TimeoutError):  # it keeps trying; sends wait for the connection
                await asyncio.wait_for(client.send("echo", {}), 0.5)
            await asyncio.to_thread(srv.start)
            await until(lambda: client.connected, what="the reconnect")
            assert client.stats["reconnects"] == 1
            # Events queued before the crash are still there; drain them up to the gap notice.
            async with asyncio.timeout(10):
                async for ev in client:
                    if ev.type == GAP:
                        assert ev.payload["topic"] == "live"
                        break
            await client.send("publish", {"topic": "live", "count": 5, "payload": {"new": 1}})
            assert await collect_pubs(client, 5) == [0, 1, 2, 3, 4]

    asyncio.run(main())


def test_gives_up_after_max_attempts(our_server: Any) -> None:
    srv: OurServer = our_server(JWT)

    async def main() -> None:
        client = await connect(srv.url, token=token(), max_reconnect_attempts=3, **FAST)
        await client.subscribe("x")
        await asyncio.to_thread(srv.stop)
        with pytest.raises(ConnectionLost, match="gave up after 3 reconnect attempts"):
            async with asyncio.timeout(20):
                async for _ in client:
                    pass
        assert client.closed
        with pytest.raises(ConnectionLost):
            await client.send("echo", {})
        await client.close()

    asyncio.run(main())


def test_backoff_grows_with_jitter_and_a_cap() -> None:
    c = WSEClient("ws://127.0.0.1:1/wse", backoff_initial=0.5, backoff_factor=2.0, backoff_max=8.0)
    for attempt, top in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0), (1000, 8.0)]:
        delays = [c.backoff_delay(attempt) for _ in range(200)]
        assert all(top / 2 <= d <= top for d in delays), (attempt, min(delays), max(delays))
        assert len(set(delays)) > 100  # jittered, not a constant


class FreezingProxy:
    """A TCP proxy whose existing connections can be frozen: bytes stop flowing both ways, as
    with a peer that vanished without closing. New connections flow normally."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.conns: list[asyncio.Event] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    def freeze(self) -> None:
        for flowing in self.conns:
            flowing.clear()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        flowing = asyncio.Event()
        flowing.set()
        self.conns.append(flowing)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    await flowing.wait()
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(r, uw), pump(ur, w))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


def test_dead_connection_is_detected_and_replaced(our_server: Any) -> None:
    srv: OurServer = our_server(JWT)

    async def main() -> None:
        proxy = FreezingProxy(srv.port)
        await proxy.start()
        url = f"ws://127.0.0.1:{proxy.port}/wse"
        async with connect(url, token=token(), ping_interval=0.2, dead_timeout=1.0, **FAST) as client:
            await client.subscribe("t")
            proxy.freeze()
            await until(lambda: not client.connected, timeout=5, what="the dead connection to be noticed")
            await until(lambda: client.connected, timeout=5, what="a new connection")
            assert client.stats["reconnects"] == 1
            await client.send("publish", {"topic": "t", "count": 3})
            assert await collect_pubs(client, 3) == [0, 1, 2]
        await proxy.close()

    asyncio.run(main())


def test_keepalive_keeps_an_idle_connection(our_server: Any) -> None:
    """The server closes connections silent for 2.5 s; the client answers its pings (and pings
    itself), so an idle client stays on the same connection. (The engine checks its timers about
    once a second, so the idle timeout is not set lower.)"""
    srv: OurServer = our_server({**JWT, "ping_interval_ms": 300, "idle_timeout_ms": 2500})

    async def main() -> None:
        for ping_interval in (0.3, 60.0):  # its own pings; only answers to the server's
            async with connect(srv.url, token=token(), ping_interval=ping_interval, **FAST) as client:
                await asyncio.sleep(4.0)  # longer than the idle timeout: staying connected is what is tested
                assert client.connected and client.stats["reconnects"] == 0
                assert (await client.request("rpc", {})).type == "rpc.reply"

    asyncio.run(main())


def test_overflow_block_loses_nothing(our_server: Any) -> None:
    """``block``: a full queue stops reading the socket; the stream resumes when the user reads."""
    srv: OurServer = our_server(JWT)

    async def main() -> None:
        async with connect(srv.url, token=token(), max_queue=10, overflow="block") as client:
            await client.subscribe("t")
            await client.send("publish", {"topic": "t", "count": 3000})
            await until(lambda: len(client._queue) == 10, what="the queue to fill")  # the user is busy
            await asyncio.sleep(0.3)  # a window in which the full queue must not grow (an absence)
            assert len(client._queue) == 10
            assert await collect_pubs(client, 3000) == list(range(3000))
            assert client.stats["dropped"] == 0

    asyncio.run(main())


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
def test_overflow_drop_policies(our_server: Any, policy: str) -> None:
    srv: OurServer = our_server(JWT)

    async def main() -> None:
        async with connect(srv.url, token=token(), max_queue=10, overflow=policy) as client:
            overflow: list[Event] = []
            done = asyncio.Event()
            client.on("queue_overflow", overflow.append)
            client.on("published", lambda ev: done.set())
            await client.subscribe("t")
            await client.send("publish", {"topic": "t", "count": 500})
            await asyncio.wait_for(done.wait(), 10)
            kept = [ev.payload["i"] if ev.type == "pub" else ev.type for ev in list(client._queue)]
            assert len(kept) == 10
            assert client.stats["dropped"] == 501 - 10
            if policy == "drop_oldest":
                assert kept == list(range(491, 500)) + ["published"]
            else:
                assert kept == list(range(10))
            assert len(overflow) == 1 and overflow[0].payload["policy"] == policy

    asyncio.run(main())


def test_overflow_error_policy_ends_the_client(our_server: Any) -> None:
    srv: OurServer = our_server(JWT)

    async def main() -> None:
        client = await connect(srv.url, token=token(), max_queue=5, overflow="error")
        await client.subscribe("t")
        await client.send("publish", {"topic": "t", "count": 50})
        await until(lambda: client.closed, what="the overflow")
        with pytest.raises(ConnectionLost) as err:
            async for _ in client:
                pass
        assert isinstance(err.value.__cause__, QueueOverflow)
        await client.close()

    asyncio.run(main())
