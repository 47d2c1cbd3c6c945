"""Topic fan-out to many subscribers: every subscriber gets every publication exactly once, in
order, with the topic's ``seq`` rising by one; two interleaved topics keep their own order.

Subscribers are picows clients (one asyncio loop holds them all); the publisher is a
``websockets`` client that sends ``publish`` requests to the test app.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from tests.conftest import ServerProc, envelope, subscribe_msg
from tests.wsutil import open_ready, recv_json, stats


class Subscriber(WSListener):  # type: ignore[misc]
    """Subscribes to `topics` once ready; records ``(topic, seq, payload)`` of every publication."""

    def __init__(self, topics: list[str]) -> None:
        super().__init__()
        loop = asyncio.get_running_loop()
        self.topics = topics
        self.acked: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.got: list[tuple[str, int, dict[str, Any]]] = []
        self.want = 0
        self.reached: asyncio.Future[None] = loop.create_future()
        self.others: list[dict[str, Any]] = []
        self.close_code: int | None = None

    def expect(self, n: int) -> asyncio.Future[None]:
        """A future that resolves once `n` publications in all were received."""
        self.want = n
        self.reached = asyncio.get_running_loop().create_future()
        if len(self.got) >= n:
            self.reached.set_result(None)
        return self.reached

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            self.close_code = frame.get_close_code()
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if frame.msg_type == WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())
            return
        m = orjson.loads(frame.get_payload_as_bytes())
        t = m["t"]
        if t == "pub":
            self.got.append((m["tp"], m["seq"], m["p"]))
            if len(self.got) >= self.want and not self.reached.done():
                self.reached.set_result(None)
        elif t == "server_ready":
            transport.send(WSMsgType.TEXT, subscribe_msg(self.topics))
        elif t == "subscription_update" and not self.acked.done():
            self.acked.set_result(m["p"])
        else:
            self.others.append(m)


async def connect_subscribers(url: str, topic_sets: list[list[str]], batch: int = 100) -> list[tuple[WSTransport, Subscriber]]:
    """Connects one subscriber per topic list, `batch` handshakes at a time, and waits for every ack."""
    out: list[tuple[WSTransport, Subscriber]] = []
    for start in range(0, len(topic_sets), batch):
        chunk = topic_sets[start : start + batch]
        out += await asyncio.gather(*(ws_connect(lambda ts=ts: Subscriber(ts), url) for ts in chunk))
    acks = await asyncio.wait_for(asyncio.gather(*(s.acked for _, s in out)), 30)
    for (_, s), ack in zip(out, acks):
        assert sorted(ack["success_topics"]) == sorted(s.topics), ack
    return out


async def close_all(subs: list[tuple[WSTransport, Subscriber]]) -> None:
    for tr, _ in subs:
        if not tr.is_disconnected:
            tr.send_close(WSCloseCode.OK)
            tr.disconnect()
    await asyncio.wait_for(asyncio.gather(*(tr.wait_disconnected() for tr, _ in subs)), 15)


async def publish(ws: Any, topic: str, count: int, **payload: Any) -> int:
    await ws.send(envelope("publish", {"topic": topic, "count": count, "payload": payload}))
    m = await recv_json(ws, 20)
    assert m["t"] == "published", m
    return int(m["p"]["queued"])


def test_one_topic_1000_subscribers(server: ServerProc) -> None:
    n_subs, n_msgs = 1000, 200

    async def main() -> None:
        subs = await connect_subscribers(server.url, [["ticker"]] * n_subs)
        pub, _ = await open_ready(server.url)
        try:
            assert await publish(pub, "ticker", n_msgs) == n_subs * n_msgs
            await asyncio.wait_for(asyncio.gather(*(s.expect(n_msgs) for _, s in subs)), 30)
            # A marker after the batch: anything duplicated would have arrived before it.
            assert await publish(pub, "ticker", 1, marker=True) == n_subs
            await asyncio.wait_for(asyncio.gather(*(s.expect(n_msgs + 1) for _, s in subs)), 15)
            for _, s in subs:
                assert s.others == []
                assert len(s.got) == n_msgs + 1
                assert all(tp == "ticker" for tp, _, _ in s.got)
                assert [p["i"] for _, _, p in s.got[:n_msgs]] == list(range(n_msgs))
                assert [seq for _, seq, _ in s.got] == list(range(1, n_msgs + 2))
                assert s.got[-1][2] == {"i": 0, "marker": True}
            e = (await stats(pub))["engine"]
            assert e["publishes"] == n_msgs + 1
            assert e["deliveries"] == n_subs * (n_msgs + 1)
            assert e["slow_consumer_drops"] == 0 and e["slow_consumer_closes"] == 0
            assert e["subscriptions"] == n_subs
        finally:
            await pub.close()
            await close_all(subs)

    asyncio.run(main())


def test_two_interleaved_topics_keep_their_order(server: ServerProc) -> None:
    rounds, per = 10, 10
    groups = [["red"]] * 100 + [["blue"]] * 100 + [["red", "blue"]] * 100

    async def main() -> None:
        subs = await connect_subscribers(server.url, groups)
        pub, _ = await open_ready(server.url)
        try:
            # All requests at once: red and blue alternate in the app, round by round.
            for r in range(rounds):
                for topic in ("red", "blue"):
                    await pub.send(envelope("publish", {"topic": topic, "count": per, "payload": {"r": r}}))
            queued = [(await recv_json(pub, 20))["p"]["queued"] for _ in range(2 * rounds)]
            assert queued == [200 * per] * (2 * rounds)
            expected_all = [
                (topic, r, i) for r in range(rounds) for topic in ("red", "blue") for i in range(per)
            ]
            await asyncio.wait_for(
                asyncio.gather(*(s.expect(rounds * per * len(s.topics)) for _, s in subs)), 30
            )
            for _, s in subs:
                got = [(tp, p["r"], p["i"]) for tp, _, p in s.got]
                # The exact interleaving the app published, restricted to this client's topics.
                assert got == [x for x in expected_all if x[0] in s.topics]
                for topic in s.topics:
                    seqs = [seq for tp, seq, _ in s.got if tp == topic]
                    assert seqs == list(range(1, rounds * per + 1)), (topic, seqs[:20])
            e = (await stats(pub))["engine"]
            assert e["deliveries"] == 2 * rounds * per * 200
        finally:
            await pub.close()
            await close_all(subs)

    asyncio.run(main())


def test_subscribers_joining_later_see_the_topic_sequence_continue(server: ServerProc) -> None:
    """`seq` belongs to the topic: a late subscriber starts where the topic is, not at 1."""

    async def main() -> None:
        early = await connect_subscribers(server.url, [["news"]] * 20)
        pub, _ = await open_ready(server.url)
        try:
            await publish(pub, "news", 30)
            await asyncio.wait_for(asyncio.gather(*(s.expect(30) for _, s in early)), 15)
            late = await connect_subscribers(server.url, [["news"]] * 20)
            try:
                await publish(pub, "news", 5)
                await asyncio.wait_for(asyncio.gather(*(s.expect(35) for _, s in early)), 15)
                await asyncio.wait_for(asyncio.gather(*(s.expect(5) for _, s in late)), 15)
                for _, s in early:
                    assert [seq for _, seq, _ in s.got] == list(range(1, 36))
                for _, s in late:
                    assert [seq for _, seq, _ in s.got] == list(range(31, 36))
                    assert [p["i"] for _, _, p in s.got] == list(range(5))
            finally:
                await close_all(late)
        finally:
            await pub.close()
            await close_all(early)

    asyncio.run(main())
