"""Recovery: a subscriber that comes back with the epoch and offset it saw gets exactly what it
missed, in order, then live traffic with no gap and no duplicate; the ack says whether the
topic could be recovered. Limits: count, TTL, epoch change; ACL applies; sealed replay."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import envelope, make_token, SECRET
from tests.e2eutil import E2EClient
from tests.wsutil import open_ready, recv_type, stats

REC = {"recovery": True}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def sub(topics: list[str], recovery: dict[str, Any] | None = None) -> bytes:
    p: dict[str, Any] = {"action": "subscribe", "topics": topics}
    if recovery is not None:
        p["recover"] = True
        p["recovery"] = recovery
    return envelope("subscription_update", p, c="WSE")


async def publish(url: str, topic: str, count: int, start: int = 0) -> None:
    ws, _ = await open_ready(url)
    await ws.send(envelope("publish", {"topic": topic, "count": count, "payload": {"start": start}}))
    await recv_type(ws, "published")
    await ws.close()


async def take(ws: Any, n: int) -> list[dict[str, Any]]:
    return [await recv_type(ws, "pub") for _ in range(n)]


def test_reconnect_recovers_exactly_what_was_missed(make_server: Any) -> None:
    srv = make_server(REC)

    async def main() -> None:
        ws, ready = await open_ready(srv.url)
        assert ready["p"]["details"]["features"]["recovery"] is True
        await ws.send(sub(["news"]))
        ack = (await recv_type(ws, "subscription_update"))["p"]
        epoch = ack["recovery"]["news"]["epoch"]
        assert len(epoch) == 8 and ack["recovery"]["news"]["offset"] == 0
        await publish(srv.url, "news", 10)
        got = await take(ws, 10)
        assert [m["o"] for m in got] == list(range(1, 11)) and {m["e"] for m in got} == {epoch}
        assert [m["tp"] for m in got] == ["news"] * 10
        await ws.close()

        await publish(srv.url, "news", 5)  # missed while away

        ws, _ = await open_ready(srv.url)
        await ws.send(sub(["news"], {"news": {"epoch": epoch, "offset": 10}}))
        replay = await take(ws, 5)
        ack = (await recv_type(ws, "subscription_update"))["p"]
        assert ack["recovery"]["news"] == {"epoch": epoch, "offset": 15, "recovered": True, "count": 5}
        assert [m["o"] for m in replay] == [11, 12, 13, 14, 15]
        assert [m["p"]["i"] for m in replay] == [0, 1, 2, 3, 4]
        # Live traffic continues right after, no gap, no duplicate.
        await publish(srv.url, "news", 3)
        assert [m["o"] for m in await take(ws, 3)] == [16, 17, 18]
        st = (await stats(ws))["engine"]
        assert st["recovery_recovered"] == 1 and st["recovered_messages"] == 5
        await ws.close()

    run(main())


def test_recovery_under_live_publishing_has_no_gap_or_duplicate(make_server: Any) -> None:
    srv = make_server({**REC, "recovery_buffer": 100_000})

    async def main() -> None:
        ws, _ = await open_ready(srv.url)
        await ws.send(sub(["live"]))
        ack = (await recv_type(ws, "subscription_update"))["p"]
        epoch = ack["recovery"]["live"]["epoch"]
        pub, _ = await open_ready(srv.url)
        await pub.send(envelope("publish", {"topic": "live", "count": 200}))
        first = await take(ws, 50)
        last = first[-1]["o"]
        await ws.close()
        # Resubscribe while publications keep coming.
        await pub.send(envelope("publish", {"topic": "live", "count": 3000}))
        ws, _ = await open_ready(srv.url)
        await ws.send(sub(["live"], {"live": {"epoch": epoch, "offset": last}}))
        seen: list[int] = []
        while len(seen) < 3200 - 50:
            m = await asyncio.wait_for(ws.recv(), 10)
            import orjson

            e = orjson.loads(m)
            if e["t"] == "pub":
                seen.append(e["o"])
        assert seen == list(range(last + 1, 3201))
        await ws.close()
        await pub.close()

    run(main())


def test_not_recovered_when_too_old_wrong_epoch_or_expired(make_server: Any) -> None:
    srv = make_server({**REC, "recovery_buffer": 4, "recovery_ttl_ms": 1500})

    async def main() -> None:
        ws, _ = await open_ready(srv.url)
        await ws.send(sub(["t"]))
        epoch = (await recv_type(ws, "subscription_update"))["p"]["recovery"]["t"]["epoch"]
        await ws.close()
        await publish(srv.url, "t", 10)  # the ring keeps 7..10 only

        ws, _ = await open_ready(srv.url)
        await ws.send(sub(["t"], {"t": {"epoch": epoch, "offset": 2}}))
        r = (await recv_type(ws, "subscription_update"))["p"]["recovery"]["t"]
        assert r["recovered"] is False and r["count"] == 0 and r["offset"] == 10
        await ws.close()

        ws, _ = await open_ready(srv.url)
        await ws.send(sub(["t"], {"t": {"epoch": "deadbeef", "offset": 9}}))
        r = (await recv_type(ws, "subscription_update"))["p"]["recovery"]["t"]
        assert r["recovered"] is False and r["epoch"] == epoch
        await ws.close()

        # Within the ring: recovered.
        ws, _ = await open_ready(srv.url)
        await ws.send(sub(["t"], {"t": {"epoch": epoch, "offset": 8}}))
        assert [m["o"] for m in await take(ws, 2)] == [9, 10]
        assert (await recv_type(ws, "subscription_update"))["p"]["recovery"]["t"]["recovered"] is True
        await ws.close()

        # After the TTL the ring is empty and the topic forgotten: a new epoch.
        await asyncio.sleep(3.0)  # the passing of the TTL is what is tested: no event to wait for
        ws, _ = await open_ready(srv.url)
        await ws.send(sub(["t"], {"t": {"epoch": epoch, "offset": 10}}))
        r = (await recv_type(ws, "subscription_update"))["p"]["recovery"]["t"]
        assert r["recovered"] is False and r["epoch"] != epoch
        st = (await stats(ws))["engine"]
        assert st["recovery_missed"] == 3
        await ws.close()

    run(main())


def test_acl_applies_to_replay(make_server: Any) -> None:
    srv = make_server({**REC, "jwt": {"secret": SECRET}})
    admin = make_token({"sub": "admin"})
    guest = make_token({"sub": "guest", "wse_topics": {"allow": ["public.*"]}})

    async def main() -> None:
        hdr = {"Authorization": f"Bearer {admin}"}
        ws, _ = await open_ready(srv.url, additional_headers=hdr)
        await ws.send(sub(["secret.plans"]))
        epoch = (await recv_type(ws, "subscription_update"))["p"]["recovery"]["secret.plans"]["epoch"]
        await ws.send(envelope("publish", {"topic": "secret.plans", "count": 3}))
        await take(ws, 3)
        await ws.close()

        g, _ = await open_ready(srv.url, additional_headers={"Authorization": f"Bearer {guest}"})
        await g.send(sub(["secret.plans"], {"secret.plans": {"epoch": epoch, "offset": 0}}))
        ack = (await recv_type(g, "subscription_update"))["p"]
        assert ack["failed_topics"] == ["secret.plans"] and ack["recovery"] == {}
        await g.send(envelope("echo", "x"))
        # Nothing from the topic arrived before the echo.
        while True:
            m = await recv_type(g, "echo")
            break
        assert m["p"] == "x"
        await g.close()

    run(main())


def test_replay_to_encrypted_subscriber_is_sealed(make_server: Any) -> None:
    srv = make_server(REC)

    async def main() -> None:
        c, _ = await E2EClient.open(srv.url)
        await c.send("subscription_update", {"action": "subscribe", "topics": ["sealed"]}, c="WSE")
        epoch = (await c.recv_type("subscription_update"))["p"]["recovery"]["sealed"]["epoch"]
        await c.close()
        await publish(srv.url, "sealed", 4)

        c, _ = await E2EClient.open(srv.url)
        c.frames.clear()
        await c.send(
            "subscription_update",
            {"action": "subscribe", "topics": ["sealed"], "recover": True, "recovery": {"sealed": {"epoch": epoch, "offset": 0}}},
            c="WSE",
        )
        got = [(await c.recv_type("pub"))["o"] for _ in range(4)]
        assert got == [1, 2, 3, 4]
        assert all(isinstance(f, bytes) and f[:2] == b"E:" for f in c.frames)
        await c.close()

    run(main())


def test_recovery_through_the_subscription_hook(make_server: Any) -> None:
    srv = make_server(REC, env={"WSE_TEST_DENY_PREFIX": "no."})

    async def main() -> None:
        ws, _ = await open_ready(srv.url)
        await ws.send(sub(["yes.a"]))
        epoch = (await recv_type(ws, "subscription_update"))["p"]["recovery"]["yes.a"]["epoch"]
        await ws.close()
        await publish(srv.url, "yes.a", 3)
        ws, _ = await open_ready(srv.url)
        await ws.send(sub(["yes.a", "no.b"], {"yes.a": {"epoch": epoch, "offset": 1}}))
        assert [m["o"] for m in await take(ws, 2)] == [2, 3]
        ack = (await recv_type(ws, "subscription_update"))["p"]
        assert ack["recovery"]["yes.a"]["recovered"] is True and ack["failed_topics"] == ["no.b"]
        await ws.close()

    run(main())


def test_recovery_memory_budget_is_kept(make_server: Any) -> None:
    # Each publication here is about 200 bytes: a 2,000-byte budget keeps the last few only.
    srv = make_server({**REC, "recovery_max_bytes": 2000, "recovery_buffer": 1000})

    async def main() -> None:
        ws, _ = await open_ready(srv.url)
        await ws.send(sub(["b"]))
        epoch = (await recv_type(ws, "subscription_update"))["p"]["recovery"]["b"]["epoch"]
        await ws.close()
        await publish(srv.url, "b", 200)
        ws, _ = await open_ready(srv.url)
        st = (await stats(ws))["engine"]
        assert 0 < st["recovery_bytes"] <= 2000
        await ws.send(sub(["b"], {"b": {"epoch": epoch, "offset": 0}}))
        r = (await recv_type(ws, "subscription_update"))["p"]["recovery"]["b"]
        assert r["recovered"] is False
        await ws.close()
        ws, _ = await open_ready(srv.url)
        await ws.send(sub(["b"], {"b": {"epoch": epoch, "offset": 198}}))
        assert [m["o"] for m in await take(ws, 2)] == [199, 200]
        await ws.close()

    run(main())
