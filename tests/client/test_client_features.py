"""Encryption, msgpack, zlib and recovery, against the published reference server (wse-server
2.5.1, in its chroot) and against ours.

Each test runs on both servers (ours with recovery on). A run against ours skips unless
``server_ready`` advertises the feature (``features.encryption``, ``msgpack``, ``compression``,
``recovery``), and then runs unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.client.conftest import JWT, SECRET, OurServer, RefServer, require_feature, token
from tests.client.test_client_reconnect import FAST, collect_pubs, until
from wse_client import GAP, Event, connect

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["reference", "ours"])
def server(request: pytest.FixtureRequest, our_server: Any, ref_server: Any) -> Iterator[Any]:
    """One of the two servers (both answer ``echo``, ``publish``, ``stream``, ``kick``, ``rpc``)."""
    if request.param == "ours":
        srv: OurServer = our_server({**JWT, "recovery": True})
        srv.kind = "ours"  # type: ignore[attr-defined]
        yield srv
    else:
        ref: RefServer = ref_server(SECRET)
        ref.kind = "reference"  # type: ignore[attr-defined]
        yield ref


def need(srv: Any, feature: str) -> None:
    if srv.kind == "ours":
        require_feature(srv, feature)


def test_connect_subscribe_receive(server: Any) -> None:
    async def main() -> None:
        async with connect(server.url, token=token("interop")) as client:
            res = await client.subscribe(["notifications"])
            assert res.success_topics == ["notifications"]
            await client.send("publish", {"topic": "notifications", "count": 50, "payload": {"k": "v"}})
            got: list[Event] = []
            async with asyncio.timeout(10):
                async for ev in client:
                    if ev.type == "pub":
                        got.append(ev)
                        if len(got) == 50:
                            break
            assert [e.payload for e in got] == [{"i": i, "k": "v"} for i in range(50)]
            assert all(e.topic == "notifications" for e in got)
            assert (await client.request("rpc", {"x": 1})).payload["echo"] == {"x": 1}

    asyncio.run(main())


def test_encryption_round_trip(server: Any) -> None:
    need(server, "encryption")

    async def main() -> None:
        async with connect(server.url, token=token(), encryption=True) as client:
            assert client.encrypted
            before = client.stats["frames_encrypted"]
            # Our frames are encrypted (the server can only answer what it decrypted) and so are its.
            ev_payload = {"secret": "attack at dawn", "n": list(range(10))}
            await client.send("echo", ev_payload)
            ev = await client.recv(10)
            assert (ev.type, ev.payload) == ("echo", ev_payload)
            reply = await client.request("rpc", {"q": "encrypted"})
            assert reply.payload["echo"] == {"q": "encrypted"}
            await client.subscribe("secret")
            await client.send("publish", {"topic": "secret", "count": 100})
            assert await collect_pubs(client, 100) == list(range(100))
            assert client.stats["frames_encrypted"] - before >= 102
            assert client.stats["bad_frames"] == 0

    asyncio.run(main())


def test_encrypted_fan_out_to_several_subscribers(server: Any) -> None:
    """Several encrypted subscribers of one topic: ours seals a burst once (batch keys and G:
    frames), the reference seals each frame per connection; every client reads everything."""
    need(server, "encryption")

    async def main() -> None:
        async with connect(server.url, token=token("a"), encryption=True) as a, \
                connect(server.url, token=token("b"), encryption=True) as b:
            await a.subscribe("fan")
            await b.subscribe("fan")
            await a.send("publish", {"topic": "fan", "count": 300})
            assert await collect_pubs(a, 300) == list(range(300))
            assert await collect_pubs(b, 300) == list(range(300))
            for c in (a, b):
                assert c.stats["bad_frames"] == 0
                if server.kind == "ours":
                    assert c.stats["batch_keys"] >= 1
                else:
                    assert c.stats["batch_keys"] == 0

    asyncio.run(main())


def test_msgpack(server: Any) -> None:
    need(server, "msgpack")

    async def main() -> None:
        async with connect(server.url, token=token(), msgpack=True) as client:
            assert client.url.endswith("?format=msgpack")
            payload = {"bin": "é", "n": [1, 2.5, None, True], "nested": {"a": {"b": "c"}}}
            await client.send("echo", payload)
            ev = await client.recv(10)
            assert (ev.type, ev.payload) == ("echo", payload)
            assert client.stats["frames_msgpack"] >= 1
            await client.subscribe("m")
            await client.send("publish", {"topic": "m", "count": 20})
            assert await collect_pubs(client, 20) == list(range(20))

    asyncio.run(main())


def test_compact_envelope(server: Any) -> None:
    """``compact=True``: ours leaves ``id`` and ``ts`` out; the reference ignores the query
    parameter and the client works the same on what it sends."""

    async def main() -> None:
        async with connect(server.url, token=token(), compact=True) as client:
            assert "envelope=compact" in client.url
            await client.subscribe("c")
            await client.send("publish", {"topic": "c", "count": 20})
            got: list[Event] = []
            async with asyncio.timeout(10):
                async for ev in client:
                    if ev.type == "pub":
                        got.append(ev)
                        if len(got) == 20:
                            break
            assert [e.payload["i"] for e in got] == list(range(20))
            assert all(e.topic == "c" for e in got)
            if server.kind == "ours":
                assert client.server_info["features"]["compact_envelope"] is True
                assert all(e.id is None and e.ts is None for e in got)

    asyncio.run(main())


def test_compression(server: Any) -> None:
    need(server, "compression")

    async def main() -> None:
        async with connect(server.url, token=token()) as client:
            big = {"text": "compress me " * 2000, "n": 7}
            await client.send("echo", big)
            ev = await client.recv(10)
            assert (ev.type, ev.payload) == ("echo", big)
            assert client.stats["frames_zlib"] >= 1

    asyncio.run(main())


def test_recovery_after_the_connection_is_killed_mid_stream(server: Any) -> None:
    """The server drops the connection while publishing; the client reconnects, asks for the
    rest from its last (epoch, offset), and the application sees every message exactly once."""
    need(server, "recovery")

    async def main() -> None:
        async with connect(server.url, token=token(), **FAST) as client:
            await client.subscribe("live")
            await client.send("stream", {"topic": "live", "count": 300, "interval": 0.004})
            first = await collect_pubs(client, 40)
            await client.send("kick", {"code": 1011})
            gaps: list[Event] = []
            rest = await collect_pubs(client, 260, gaps)
            assert first + rest == list(range(300))
            assert gaps == []
            assert client.stats["reconnects"] == 1
            assert client.stats["gaps"] == 0

    asyncio.run(main())


def test_recovery_across_reconnects_with_encryption(server: Any) -> None:
    need(server, "recovery")
    need(server, "encryption")

    async def main() -> None:
        async with connect(server.url, token=token(), encryption=True, **FAST) as client:
            await client.subscribe("live")
            await client.send("stream", {"topic": "live", "count": 300, "interval": 0.004})
            got = await collect_pubs(client, 30)
            for _ in range(2):
                await client.send("kick", {"code": 1011})
                got += await collect_pubs(client, 60)
            got += await collect_pubs(client, 300 - len(got))
            assert got == list(range(300))
            assert client.stats["reconnects"] == 2 and client.stats["gaps"] == 0
            assert client.encrypted

    asyncio.run(main())


def test_gap_reported_when_the_server_restarts(server: Any) -> None:
    """A restarted server has a new epoch and no buffer: the client says what it lost."""
    need(server, "recovery")

    async def main() -> None:
        async with connect(server.url, token=token(), **FAST) as client:
            await client.subscribe("t")
            await client.send("publish", {"topic": "t", "count": 10})
            assert await collect_pubs(client, 10) == list(range(10))
            epoch, offset = client.positions["t"]
            assert epoch is not None and offset is not None
            await asyncio.to_thread(server.kill)
            await until(lambda: not client.connected, what="the crash to be noticed")
            await asyncio.to_thread(server.start)
            await until(lambda: client.connected, timeout=20, what="the reconnect")
            gap = await client.recv(10)
            while gap.type == "published":  # the reply to the publish above may still be queued
                gap = await client.recv(10)
            assert gap.type == GAP
            assert gap.payload["topic"] == "t" and gap.payload["reason"] == "not_recovered"
            assert (gap.payload["epoch"], gap.payload["offset"]) == (epoch, offset)
            assert gap.payload["server_epoch"] != epoch
            await client.send("publish", {"topic": "t", "count": 5})
            assert await collect_pubs(client, 5) == list(range(5))
            assert client.stats["gaps"] == 1

    asyncio.run(main())


def test_replayed_messages_already_seen_are_dropped(server: Any) -> None:
    """A replay that overlaps what the client has already delivered is deduplicated by offset."""
    need(server, "recovery")

    async def main() -> None:
        async with connect(server.url, token=token()) as client:
            await client.subscribe("t")
            await client.send("publish", {"topic": "t", "count": 10})
            assert await collect_pubs(client, 10) == list(range(10))
            epoch, offset = client.positions["t"]
            assert offset is not None
            # Ask the server, behind the client's back, to replay from 7 messages ago.
            p = {"action": "subscribe", "topics": ["t"], "recover": True, "recovery": {"t": {"epoch": epoch, "offset": offset - 7}}}
            await client.send("subscription_update", p, category="WSE")
            await until(lambda: client.stats["duplicates"] == 7, what="7 duplicates dropped")
            await client.send("publish", {"topic": "t", "count": 3})
            assert await collect_pubs(client, 3) == [0, 1, 2]
            assert client.stats["duplicates"] == 7

    asyncio.run(main())


def test_encryption_with_msgpack(server: Any) -> None:
    need(server, "encryption")
    need(server, "msgpack")

    async def main() -> None:
        async with connect(server.url, token=token(), encryption=True, msgpack=True) as client:
            assert client.encrypted
            payload = {"both": True, "n": [1, 2, 3]}
            await client.send("echo", payload)
            ev = await client.recv(10)
            assert (ev.type, ev.payload) == ("echo", payload)
            await client.subscribe("em")
            await client.send("publish", {"topic": "em", "count": 20})
            assert await collect_pubs(client, 20) == list(range(20))
            assert client.stats["bad_frames"] == 0

    asyncio.run(main())


def test_recovery_of_a_quiet_topic(server: Any) -> None:
    """A topic the client has not yet received anything on still recovers: its position comes
    from the subscribe ack. Messages published while the client is away arrive after it returns."""
    need(server, "recovery")

    async def main() -> None:
        async with connect(server.url, token=token("publisher")) as pub:
            await pub.send("publish", {"topic": "quiet", "count": 3})  # the topic exists, with offsets
            await pub.recv(10)
            async with connect(server.url, token=token(), backoff_initial=1.0, backoff_max=1.0) as client:
                res = await client.subscribe("quiet")
                assert res.recovery["quiet"].epoch is not None
                await client.send("kick", {})
                await until(lambda: not client.connected, what="the kick")
                await pub.send("publish", {"topic": "quiet", "count": 5, "payload": {"while": "away"}})
                await pub.recv(10)
                gaps: list[Event] = []
                assert await collect_pubs(client, 5, gaps) == [0, 1, 2, 3, 4]
                assert gaps == [] and client.stats["gaps"] == 0
                await until(lambda: client.connected, what="the reconnect to finish")  # replays come first
                assert client.stats["reconnects"] == 1

    asyncio.run(main())
