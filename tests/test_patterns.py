"""Pattern subscriptions (``*``, ``?``): publications to every topic a pattern matches, once per
connection, within the topic ACL; queue groups refuse patterns; across the workers of a
cluster a pattern draws every matching topic over the mesh, and only those."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection

from tests.cluster_util import Cluster, clients_on_every_worker
from tests.conftest import envelope, subscribe_msg
from tests.wsutil import open_ready, recv_type


async def sub(ws: ClientConnection, topics: list[str], **extra: Any) -> dict[str, Any]:
    await ws.send(orjson.dumps({"t": "subscription_update", "p": {"action": "subscribe", "topics": topics, **extra}}))
    return dict((await recv_type(ws, "subscription_update"))["p"])


async def publish(pub: ClientConnection, topic: str, n: int = 1) -> None:
    await pub.send(envelope("publish", {"topic": topic, "count": n, "payload": {"topic": topic}}))
    await recv_type(pub, "published")


async def heard(ws: ClientConnection, quiet: float = 0.3) -> list[str]:
    """The topics of the publications that arrive until ``quiet`` seconds pass without one."""
    out = []
    try:
        while True:
            m = orjson.loads(await asyncio.wait_for(ws.recv(), quiet))
            if m.get("t") == "pub":
                out.append(m["tp"])
    except TimeoutError:
        return out


def test_a_pattern_hears_every_matching_topic_once(make_server: Any) -> None:
    srv = make_server({"topics_allow": ["prices.*", "news.*"], "topics_deny": ["prices.secret*"]})

    async def main() -> None:
        ws, _ = await open_ready(srv.url)
        pub, _ = await open_ready(srv.url)
        ack = await sub(ws, ["prices.*", "prices.eu", "news.??"])
        assert ack["success_topics"] == ["prices.*", "prices.eu", "news.??"], ack
        for t in ["prices.eu", "prices.us", "prices.secret.x", "news.uk", "news.usa", "sport.eu"]:
            await publish(pub, t)
        # prices.eu once (exact and pattern), the denied topic not at all, ? is one character.
        assert await heard(ws) == ["prices.eu", "prices.us", "news.uk"]
        # A pattern the ACL does not allow as a whole is refused.
        ack = await sub(ws, ["*"])
        assert ack["failed_topics"] == ["*"]
        # Unsubscribed, the pattern stops; the exact topic goes on.
        await ws.send(subscribe_msg(["prices.*"], action="unsubscribe"))
        await recv_type(ws, "subscription_update")
        for t in ["prices.eu", "prices.us"]:
            await publish(pub, t)
        assert await heard(ws) == ["prices.eu"]
        await ws.close()
        await pub.close()

    asyncio.run(main())


def test_queue_groups_and_recovery_take_exact_topics(make_server: Any) -> None:
    srv = make_server({"recovery": True})

    async def main() -> None:
        ws, _ = await open_ready(srv.url)
        ack = await sub(ws, ["jobs.*"], group="workers")
        assert ack["failed_topics"] == ["jobs.*"] and "patterns" in ack["errors"]["jobs.*"], ack
        ack = await sub(ws, ["feed.*", "feed.a"], recover=True, recovery={"feed.*": {"epoch": "00000001", "offset": 3}})
        assert ack["success_topics"] == ["feed.*", "feed.a"]
        # Recovery points are per exact topic: the pattern has none.
        assert set(ack["recovery"]) == {"feed.a"}, ack
        await ws.close()

    asyncio.run(main())


def test_a_pattern_on_one_worker_draws_matching_topics_over_the_mesh() -> None:
    c = Cluster(2)

    async def main() -> None:
        by = await clients_on_every_worker(c.url, 2, per_worker=1)
        publisher, listener = by[0][0], by[1][0]
        ack = await sub(listener, ["room.*"])
        assert ack["success_topics"] == ["room.*"]
        before = sum(c.metric("wse_mesh_messages_total", worker="0", direction="out").values())
        # The interest crosses asynchronously: publish until it arrives.
        for i in range(100):
            await publisher.send(envelope("pub", {"topic": f"room.{i}", "data": {"k": i}}))
            try:
                m = orjson.loads(await asyncio.wait_for(listener.recv(), 0.05))
                if m.get("t") == "pubbed":
                    break
            except TimeoutError:
                pass
        else:
            raise AssertionError("the pattern's interest never reached worker 0")
        # Publications keep their order, so once the last probe is in, every probe has crossed.
        while m.get("t") != "pubbed" or m["p"].get("k") != i:
            m = orjson.loads(await asyncio.wait_for(listener.recv(), 5))
        crossed = sum(c.metric("wse_mesh_messages_total", worker="0", direction="out").values())
        for i in range(20):
            await publisher.send(envelope("pub", {"topic": f"lobby.{i}", "data": {"k": i}}))
            await publisher.send(envelope("pub", {"topic": f"room.x{i}", "data": {"k": i}}))
        got: list[str] = []
        while len(got) < 20:
            m = orjson.loads(await asyncio.wait_for(listener.recv(), 5))
            if m.get("t") == "pubbed":
                got.append(m["tp"])
        assert got == [f"room.x{i}" for i in range(20)]
        # The counter may trail the delivery it counts: wait for the 20 crossings, then check that
        # nothing else crossed.
        c.wait_metric("wse_mesh_messages_total", lambda v: sum(v.values()) >= crossed + 20, worker="0", direction="out")
        after = sum(c.metric("wse_mesh_messages_total", worker="0", direction="out").values())
        # Only the 20 matching publications crossed; the 20 lobby ones stayed home.
        assert after - crossed == 20, (before, crossed, after)
        for ws in (publisher, listener):
            await ws.close()

    try:
        asyncio.run(main())
    finally:
        c.stop()
