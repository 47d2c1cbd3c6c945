"""Presence across ``wse run --workers 2``: a user present through one worker is present on the
other; watchers on every worker hear one join per user (the first connection anywhere) and one
leave (the last, including when its worker is killed); queries and the Python API answer for
the cluster; a restarted worker learns the others' presence when its links open."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.cluster_util import Cluster, whoami
from tests.conftest import SECRET, envelope, make_token
from tests.test_presence import next_presence, subscribe
from tests.wsutil import open_ready, recv_json, recv_type


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster(2, target="tests.apps.cluster_presence_app:app", env_extra={"WSE_TEST_JWT_SECRET": SECRET})
    try:
        yield c
    finally:
        c.stop()


async def on_worker(url: str, slot: int, user: str, limit: int = 200) -> ClientConnection:
    """A connection of ``user`` served by worker ``slot`` (SO_REUSEPORT spreads new ones)."""
    headers = {"Authorization": f"Bearer {make_token({'sub': user})}"}
    for _ in range(limit):
        ws, _ = await open_ready(url, max_queue=4096, additional_headers=headers)
        if await whoami(ws) == slot:
            return ws
        await ws.close()
    raise AssertionError(f"no connection landed on worker {slot}")


async def ask(ws: ClientConnection, t: str, p: Any) -> Any:
    await ws.send(envelope(t, p))
    return (await recv_type(ws, t))["p"]


async def members(ws: ClientConnection, topic: str) -> dict[str, Any]:
    return await ask(ws, "presence", {"topic": topic})


async def until_members(ws: ClientConnection, topic: str, want: dict[str, int], timeout: float = 5.0) -> dict[str, Any]:
    """Asks until the topic's members and their connections are ``want`` (changes cross asynchronously)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = await members(ws, topic)
        if {u: m["connections"] for u, m in got["members"].items()} == want:
            return got
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"members of {topic} never became {want}: {got}")
        await asyncio.sleep(0.05)


async def until_events(ws: ClientConnection, users: tuple[str, ...], n: int, timeout: float = 5.0) -> list[Any]:
    """The worker's ``on_presence`` events about ``users`` once there are at least ``n``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        evs = [e for e in (await ask(ws, "presence_events", {}))["events"] if e[2] in users]
        if len(evs) >= n or asyncio.get_running_loop().time() > deadline:
            return evs
        await asyncio.sleep(0.05)


def event(msg: dict[str, Any]) -> tuple[str, str]:
    return msg["t"], msg["p"]["user_id"]


def test_presence_is_cluster_wide_with_one_join_and_one_leave_per_user(cluster: Cluster) -> None:
    cluster.wait_metric("wse_mesh_peers", lambda m: m == {"0": 1, "1": 1})

    async def main() -> None:
        # Watchers on both workers, and a client per worker that asks (not present: no topic).
        watchers = [await on_worker(cluster.url, w, f"watcher{w}") for w in (0, 1)]
        probes = [await on_worker(cluster.url, w, f"probe{w}") for w in (0, 1)]
        for w, ws in enumerate(watchers):
            ack = await subscribe(ws, ["room"], presence=True)
            assert ack["p"]["success_topics"] == ["room"]
            state = await next_presence(ws)
            assert state["t"] == "presence_state"
            if w == 1:
                # Worker 0's watcher was present already: worker 1's state has both.
                assert set(state["p"]["users"]) == {"watcher0", "watcher1"}, state
        assert event(await next_presence(watchers[0])) == ("presence_join", "watcher1")

        # ann through worker 0: both workers' watchers hear one join, both workers see her.
        ann0 = await on_worker(cluster.url, 0, "ann")
        await subscribe(ann0, ["room"])
        for ws in watchers:
            msg = await next_presence(ws)
            assert msg["p"] == {"topic": "room", "user_id": "ann", "data": None}
            assert msg["t"] == "presence_join"
        for p in probes:
            got = await until_members(p, "room", {"watcher0": 1, "watcher1": 1, "ann": 1})
            assert got["count"] == [3, 3]

        # ann through worker 1 too: no second join anywhere (the next event is bob's), and her
        # connections add up on both workers.
        ann1 = await on_worker(cluster.url, 1, "ann")
        await subscribe(ann1, ["room"])
        for p in probes:
            await until_members(p, "room", {"watcher0": 1, "watcher1": 1, "ann": 2})
        bob = await on_worker(cluster.url, 0, "bob")
        await subscribe(bob, ["room"])
        for ws in watchers:
            assert event(await next_presence(ws)) == ("presence_join", "bob")
        for p in probes:
            assert (await members(p, "room"))["count"] == [4, 5]

        # One of ann's connections goes: no leave (the next event is bob's data, set on worker 0
        # after the close, so it crosses after it on the same stream).
        await ann0.close()
        await bob.send(envelope("presence_update", {"data": {"status": "away"}}, c="WSE"))
        for ws in watchers:
            msg = await next_presence(ws)
            assert msg["t"] == "presence_update", msg
            assert msg["p"] == {"topic": "room", "user_id": "bob", "data": {"status": "away"}}
        for p in probes:
            got = await until_members(p, "room", {"watcher0": 1, "watcher1": 1, "ann": 1, "bob": 1})
            assert got["members"]["bob"]["data"] == {"status": "away"}
        # Data set through the Python API on worker 1 for a user on worker 0 reaches both.
        assert await ask(probes[1], "presence_set", {"user": "bob", "data": {"status": "back"}}) == {"topics": 1}
        for ws in watchers:
            msg = await next_presence(ws)
            assert (msg["t"], msg["p"]["data"]) == ("presence_update", {"status": "back"})
        assert (await members(probes[0], "room"))["members"]["bob"]["data"] == {"status": "back"}

        # Her last connection goes: one leave, on both workers.
        await ann1.close()
        for ws in watchers:
            assert event(await next_presence(ws)) == ("presence_leave", "ann")
        for p in probes:
            await until_members(p, "room", {"watcher0": 1, "watcher1": 1, "bob": 1})

        # Each worker's Python heard the cluster's changes too, once each (remote ones: conn 0).
        want = [("join", "ann"), ("join", "bob"), ("update", "bob"), ("update", "bob"), ("leave", "ann")]
        for p in probes:
            evs = await until_events(p, ("ann", "bob"), len(want))
            assert [(e[0], e[2]) for e in evs] == want, evs
        ann_on_1 = [e for e in await until_events(probes[1], ("ann",), 2)]
        assert ann_on_1[0][4] == 0, "ann joined through worker 0: worker 1's event names no connection"

        # cyd through worker 0 too; then worker 0 is killed: its users leave on worker 1's watcher.
        cyd = await on_worker(cluster.url, 0, "cyd")
        await subscribe(cyd, ["room"])
        assert event(await next_presence(watchers[1])) == ("presence_join", "cyd")
        victim = int((await ask(probes[0], "whoami", {}))["pid"])
        os.kill(victim, signal.SIGKILL)
        leaves = {event(await next_presence(watchers[1])) for _ in range(3)}
        assert leaves == {("presence_leave", u) for u in ("watcher0", "bob", "cyd")}
        await until_members(probes[1], "room", {"watcher1": 1})
        for ws in (watchers[0], probes[0], bob, cyd):
            with pytest.raises(ConnectionClosed):
                while True:
                    await recv_json(ws, 10)

        # The restarted worker 0 learns worker 1's presence when the link opens, and its users
        # are announced on worker 1 again.
        await asyncio.to_thread(cluster.wait_metric, "wse_worker_restarts_total", lambda m: m.get("0") == 1, 10.0)
        await asyncio.to_thread(cluster.wait_metric, "wse_mesh_peers", lambda m: m == {"0": 1, "1": 1}, 10.0)
        probe0 = await on_worker(cluster.url, 0, "probe0")
        await until_members(probe0, "room", {"watcher1": 1})
        dan = await on_worker(cluster.url, 0, "dan")
        await subscribe(dan, ["room"])
        assert event(await next_presence(watchers[1])) == ("presence_join", "dan")
        await until_members(probes[1], "room", {"watcher1": 1, "dan": 1})
        for ws in (watchers[1], probes[1], probe0, dan):
            await ws.close()

    asyncio.run(main())
