"""Dedup: an idempotency key (publish) or a client message id (per user) seen within the window
takes effect once. The window is bounded by count and by age."""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.asyncio.client import ClientConnection

from tests.conftest import SECRET, envelope, make_token, subscribe_msg
from tests.wsutil import fresh_stats, open_ready, recv_json, recv_type, stats


def auth(user: str) -> dict[str, Any]:
    return {"additional_headers": {"Authorization": f"Bearer {make_token({'sub': user})}"}}


async def publish_once(ws: ClientConnection, key: str, i: int, topic: str = "news") -> int:
    await ws.send(envelope("publish_once", {"topic": topic, "key": key, "payload": {"n": i}}))
    return (await recv_type(ws, "published"))["p"]["queued"]


async def drain_pubs(ws: ClientConnection, quiet: float = 0.3) -> list[int]:
    """Every `pub` that arrives until the connection is quiet for `quiet` seconds."""
    got = []
    while True:
        try:
            msg = await recv_json(ws, quiet)
        except TimeoutError:
            return got
        if msg["t"] == "pub":
            got.append(msg["p"]["n"])


def test_publish_with_an_idempotency_key_goes_out_once(server: Any) -> None:
    async def main() -> None:
        sub, _ = await open_ready(server.url)
        await sub.send(subscribe_msg(["news"]))
        await recv_type(sub, "subscription_update")
        pub, _ = await open_ready(server.url)
        assert await publish_once(pub, "order-1", 1) == 1
        assert await publish_once(pub, "order-1", 2) == 0, "a repeat publishes nothing"
        assert await publish_once(pub, "order-2", 3) == 1
        assert await publish_once(pub, "order-1", 4) == 0
        assert await drain_pubs(sub) == [1, 3]
        st = (await stats(pub))["engine"]
        assert st["dedup_publish_dropped"] == 2 and st["dedup_publish_keys"] == 2
        await sub.close()
        await pub.close()

    asyncio.run(main())


def test_dedup_window_by_count_and_by_age(make_server: Any) -> None:
    srv = make_server({"dedup_window": 3, "dedup_window_ms": 1500})

    async def main() -> None:
        sub, _ = await open_ready(srv.url)
        await sub.send(subscribe_msg(["news"]))
        await recv_type(sub, "subscription_update")
        pub, _ = await open_ready(srv.url)
        for i, k in enumerate("abcd"):
            assert await publish_once(pub, k, i) == 1
        # Three keys remembered: "a" was pushed out by "d", "d" is still there.
        assert await publish_once(pub, "a", 10) == 1
        assert await publish_once(pub, "d", 11) == 0
        await asyncio.sleep(1.6)  # the dedup window passing is what is tested
        assert await publish_once(pub, "d", 12) == 1, "forgotten after dedup_window_ms"
        assert await drain_pubs(sub) == [0, 1, 2, 3, 10, 12]
        await sub.close()
        await pub.close()

    asyncio.run(main())


def test_client_message_ids_are_delivered_once_per_user(make_server: Any) -> None:
    srv = make_server({"jwt": {"secret": SECRET}})

    def msg(mid: str, n: int) -> bytes:
        return b'{"t":"echo","id":"%s","p":%d}' % (mid.encode(), n)

    async def echoes(ws: ClientConnection, quiet: float = 0.3) -> list[Any]:
        got = []
        while True:
            try:
                m = await recv_json(ws, quiet)
            except TimeoutError:
                return got
            if m["t"] == "echo":
                got.append(m["p"])

    async def main() -> None:
        a1, _ = await open_ready(srv.url, **auth("ann"))
        for mid, n in [("m1", 1), ("m1", 2), ("m2", 3), ("m1", 4)]:
            await a1.send(msg(mid, n))
        assert await echoes(a1) == [1, 3]
        # The same user on another connection (a retry after a reconnect): still a repeat.
        a2, _ = await open_ready(srv.url, **auth("ann"))
        await a2.send(msg("m2", 5))
        await a2.send(msg("m3", 6))
        assert await echoes(a2) == [6]
        # Another user's ids are their own.
        b, _ = await open_ready(srv.url, **auth("bob"))
        await b.send(msg("m1", 7))
        assert await echoes(b) == [7]
        # Messages without an id, and an id inside the payload, are never deduplicated.
        for _ in range(2):
            await b.send(b'{"t":"echo","p":{"id":"m1"}}')
            await b.send(b'{"t":"echo","p":8}')
        assert await echoes(b) == [{"id": "m1"}, 8, {"id": "m1"}, 8]
        st = await fresh_stats(srv.url, **auth("x"))
        assert st["engine"]["dedup_inbound_dropped"] == 3
        assert st["record"]["messages"] == 8, "the duplicates never reached Python"
        for ws in (a1, a2, b):
            await ws.close()

    asyncio.run(main())


def test_anonymous_ids_are_per_connection_and_dedup_can_be_off(make_server: Any) -> None:
    async def run(url: str) -> tuple[list[int], list[int]]:
        c1, _ = await open_ready(url)
        c2, _ = await open_ready(url)
        for ws in (c1, c1, c2):
            await ws.send(b'{"t":"echo","id":"same","p":1}')
        r1 = [m["p"] for m in [await recv_type(c1, "echo")]]
        r2 = [m["p"] for m in [await recv_type(c2, "echo")]]
        try:
            r1.append((await recv_type(c1, "echo", timeout=0.3))["p"])
        except TimeoutError:
            pass
        await c1.close()
        await c2.close()
        return r1, r2

    on = make_server({})
    assert asyncio.run(run(on.url)) == ([1], [1])
    off = make_server({"dedup_inbound": False})
    assert asyncio.run(run(off.url)) == ([1, 1], [1])
