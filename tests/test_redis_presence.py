"""Presence across hosts over a real Redis: three hosts (``wse run --redis URL`` clusters on
their own ports), watchers on every worker of two of them.

- A user connected on two hosts is one member with their connections summed, joins once
  (the first connection anywhere) and leaves once (the last); every worker's watchers and
  queries see every host's members.
- A host killed outright (SIGKILL, no goodbye): its users leave everywhere within the
  presence TTL, with leave events; users also connected elsewhere stay.
- Data set on one host reaches the others' members.
"""

from __future__ import annotations

import asyncio
import os
import signal

from websockets.asyncio.client import ClientConnection

from tests.cluster_util import Cluster
from tests.conftest import SECRET, envelope
from tests.redis_util import RedisServer, cli
from tests.test_cluster_presence import ask, on_worker, until_events, until_members
from tests.test_presence import next_presence, subscribe

TTL_MS = 3000


def host(url: str, workers: int, ttl_ms: int = TTL_MS) -> Cluster:
    return Cluster(workers, "--redis", url, target="tests.apps.cluster_presence_app:app",
                   env_extra={"WSE_TEST_JWT_SECRET": SECRET, "WSE_TEST_REDIS_PRESENCE_TTL_MS": str(ttl_ms)})


def kill_outright(h: Cluster) -> None:
    """The whole host dies at once: no worker says goodbye to Redis."""
    os.kill(h.proc.pid, signal.SIGSTOP)
    for pid in h.worker_pids():
        os.kill(pid, signal.SIGKILL)
    os.kill(h.proc.pid, signal.SIGKILL)
    h.proc.wait()


async def events_about(ws: ClientConnection, users: tuple[str, ...], got: list[tuple[str, str]], n: int,
                       timeout: float = 30.0) -> None:
    """Reads ``ws``'s presence events until ``got`` holds ``n`` about ``users``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while len(got) < n:
        left = deadline - asyncio.get_running_loop().time()
        assert left > 0, f"only {got} after {timeout} s"
        try:
            msg = await next_presence(ws, left)
        except TimeoutError:
            raise AssertionError(f"only {got} after {timeout} s") from None
        if msg["t"] != "presence_state" and msg["p"]["user_id"] in users:
            got.append((msg["t"], msg["p"]["user_id"]))


def test_presence_spans_hosts_one_member_per_user_and_a_killed_host_leaves(redis: RedisServer) -> None:
    a, b, c = host(redis.url, 2), host(redis.url, 2), host(redis.url, 1)
    hosts = [a, b, c]

    async def main() -> None:
        # A watcher on every worker of hosts A and B (user "w", four connections in all).
        watchers = [await on_worker(h.url, slot, "w") for h in (a, b) for slot in range(2)]
        for ws in watchers:
            assert (await subscribe(ws, ["room"], presence=True))["p"]["success_topics"] == ["room"]
            assert (await next_presence(ws))["t"] == "presence_state"
        # ann on A and on B, bob on C only.
        ann_a = await on_worker(a.url, 1, "ann")
        ann_b = await on_worker(b.url, 0, "ann")
        bob = await on_worker(c.url, 0, "bob")
        for ws in (ann_a, ann_b, bob):
            await subscribe(ws, ["room"])
        seen: list[list[tuple[str, str]]] = [[] for _ in watchers]
        await asyncio.gather(*(events_about(ws, ("ann", "bob"), s, 2) for ws, s in zip(watchers, seen)))
        # (Queries skip events: each watcher's events are read before it is asked.)
        want = {"w": 4, "ann": 2, "bob": 1}
        for ws in watchers:
            got = await until_members(ws, "room", want, timeout=30.0)
            assert got["count"] == [3, 7], got
        await bob.send(envelope("presence_update", {"data": {"mood": "fine"}}, c="WSE"))
        await asyncio.gather(*(events_about(ws, ("ann", "bob"), s, 3) for ws, s in zip(watchers, seen)))
        # One join per user on every watcher, whichever host its connections are on.
        for s in seen:
            assert sorted(s) == [("presence_join", "ann"), ("presence_join", "bob"), ("presence_update", "bob")], s
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            m = (await ask(watchers[2], "presence", {"topic": "room"}))["members"]
            if m["bob"]["data"] == {"mood": "fine"}:
                break
            assert asyncio.get_running_loop().time() < deadline, m
            await asyncio.sleep(0.05)
        live = cli(redis.port, "HLEN", "wse:presence:{p}:live")
        assert live == "5", live

        # Host C dies outright: bob leaves everywhere once its presence expires.
        kill_outright(c)
        await asyncio.gather(*(events_about(ws, ("ann", "bob"), s, 4) for ws, s in zip(watchers, seen)))
        for s in seen:
            assert s[3] == ("presence_leave", "bob"), s
        for ws in watchers:
            await until_members(ws, "room", {"w": 4, "ann": 2}, timeout=5.0)

        # ann's connection on B goes: still present through A, no event; then A's: one leave.
        await ann_b.close()
        for ws in watchers:
            await until_members(ws, "room", {"w": 4, "ann": 1}, timeout=30.0)
        await ann_a.close()
        await asyncio.gather(*(events_about(ws, ("ann", "bob"), s, 5) for ws, s in zip(watchers, seen)))
        for s in seen:
            assert s[4] == ("presence_leave", "ann"), s
        # Python heard the same on a worker of host B: one join and one leave each.
        evs = [e[:3] for e in await until_events(watchers[3], ("ann", "bob"), 5, timeout=30.0)]
        assert sorted(evs) == sorted([["join", "room", "ann"], ["join", "room", "bob"], ["update", "room", "bob"],
                                      ["leave", "room", "bob"], ["leave", "room", "ann"]]), evs
        for ws in watchers:
            await ws.close()

    try:
        asyncio.run(main())
    finally:
        for h in hosts:
            h.stop()


def test_a_host_that_stops_leaves_at_once_and_one_that_joins_learns_everyone(redis: RedisServer) -> None:
    """A graceful stop takes the host out of the registry at once; a host started later reads
    every other worker's presence from Redis. The TTL is ten minutes: only the goodbye can make
    the stopped host's user leave within the test's deadline."""
    ttl = 600_000
    a = host(redis.url, 1, ttl)
    late: Cluster | None = None
    b = host(redis.url, 1, ttl)

    async def main() -> None:
        nonlocal late
        w = await on_worker(a.url, 0, "w")
        await subscribe(w, ["room"], presence=True)
        await next_presence(w)
        cyd = await on_worker(b.url, 0, "cyd")
        await subscribe(cyd, ["room"])
        got: list[tuple[str, str]] = []
        await events_about(w, ("cyd",), got, 1)
        await until_members(w, "room", {"w": 1, "cyd": 1}, timeout=30.0)
        late = host(redis.url, 1, ttl)
        w2 = await on_worker(late.url, 0, "w2")
        await subscribe(w2, ["room"], presence=True)
        await until_members(w2, "room", {"w": 1, "cyd": 1, "w2": 1}, timeout=30.0)
        b.stop()
        await events_about(w, ("cyd",), got, 2)
        assert got == [("presence_join", "cyd"), ("presence_leave", "cyd")], got
        await until_members(w2, "room", {"w": 1, "w2": 1}, timeout=30.0)
        for ws in (w, w2):
            await ws.close()

    try:
        asyncio.run(main())
    finally:
        for h in (a, b, late):
            if h is not None:
                h.stop()
