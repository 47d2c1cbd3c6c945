"""Recovery across the workers of ``wse run --workers 2``: one epoch and one run of offsets per
topic whichever worker publishes, and clients of a worker killed under load reconnect to either
worker (the survivor or the restarted one) and recover everything they missed."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.cluster_util import Cluster, clients_on_every_worker, pid_of, whoami
from tests.conftest import envelope
from tests.wsutil import eventually, open_ready, recv_type

TARGET = "tests.apps.cluster_recovery_app:app"


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster(2, target=TARGET)
    try:
        yield c
    finally:
        c.stop()


def rank(topic: str, slot: int) -> int:
    """The engine's election score (runtime/src/mesh/sequencer.rs), to know who owns a topic."""
    h = 0xCBF29CE484222325
    for b in topic.encode() + slot.to_bytes(4, "little"):
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    h ^= h >> 29
    h = (h * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    return h ^ (h >> 32)


def owner(topic: str, workers: int = 2) -> int:
    return max(range(workers), key=lambda s: rank(topic, s))


class Seen:
    """Per topic: the publications a client got (``s`` values) and where it stands (epoch, offset)."""

    def __init__(self) -> None:
        self.values: dict[str, list[int]] = {}
        self.offsets: dict[str, list[int]] = {}
        self.epochs: dict[str, set[str]] = {}

    def add(self, m: dict[str, Any]) -> None:
        if m.get("t") != "pubbed" or "s" not in m["p"]:
            return
        topic = m["tp"]
        self.values.setdefault(topic, []).append(m["p"]["s"])
        self.offsets.setdefault(topic, []).append(m["o"])
        self.epochs.setdefault(topic, set()).add(m["e"])

    def points(self) -> dict[str, dict[str, Any]]:
        return {t: {"epoch": next(iter(self.epochs[t])), "offset": o[-1]} for t, o in self.offsets.items()}


async def sub_recover(ws: ClientConnection, topics: list[str], points: dict[str, dict[str, Any]] | None = None,
                      seen: Seen | None = None) -> dict[str, Any]:
    """Subscribes (asking for what was missed after ``points``); replayed publications, which
    come before the ack, go to ``seen``."""
    p: dict[str, Any] = {"action": "subscribe", "topics": topics}
    if points is not None:
        p["recover"] = True
        p["recovery"] = points
    await ws.send(orjson.dumps({"t": "subscription_update", "p": p}))
    while True:
        m = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        if m.get("t") == "subscription_update":
            break
        assert seen is not None, m
        seen.add(m)
    ack = m["p"]
    assert ack["success_topics"] == topics, ack
    return dict(ack["recovery"])


async def read_until_closed(ws: ClientConnection, seen: Seen, timeout: float = 10.0) -> None:
    with pytest.raises(ConnectionClosed):
        while True:
            seen.add(orjson.loads(await asyncio.wait_for(ws.recv(), timeout)))


async def read_until(ws: ClientConnection, seen: Seen, done: Any, timeout: float = 30.0) -> None:
    """Reads into ``seen`` until ``done(seen)`` holds (what the test knows must arrive)."""
    deadline = time.monotonic() + timeout
    while not done(seen):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out: {({t: v[-3:] for t, v in seen.values.items()})}")
        seen.add(orjson.loads(await asyncio.wait_for(ws.recv(), left)))


def has_last(expected: dict[str, list[int]], *earlier: Seen) -> Any:
    """``done`` for ``read_until``: every topic's last expected value is in (or before) ``seen``."""
    def done(seen: Seen) -> bool:
        return all(not want or any(want[-1] in s.values.get(t, []) for s in (*earlier, seen)) for t, want in expected.items())
    return done


async def on_slot(url: str, slot: int, tries: int = 200) -> ClientConnection:
    """A new connection served by worker ``slot``."""
    for _ in range(tries):
        ws, _ = await open_ready(url)
        if await whoami(ws) == slot:
            return ws
        await ws.close()
    raise AssertionError(f"no connection landed on worker {slot}")


def test_publications_from_every_worker_share_one_epoch_and_offset_run(cluster: Cluster) -> None:
    async def main() -> None:
        by = await clients_on_every_worker(cluster.url, 2, per_worker=2)
        subs = [by[0][1], by[1][1]]
        for ws in subs:
            await sub_recover(ws, ["shared"])
        pubs = [by[0][0], by[1][0]]
        n = 200
        for i in range(n):
            await pubs[i % 2].send(envelope("pub", {"topic": "shared", "data": {"s": i}}))
        seen = [Seen() for _ in subs]
        for ws, s in zip(subs, seen):
            while len(s.values.get("shared", [])) < n:
                s.add(orjson.loads(await asyncio.wait_for(ws.recv(), 10)))
        # One owner stamped them all: offsets 1..n under one epoch, the same on both workers.
        for s in seen:
            assert s.offsets["shared"] == list(range(1, n + 1))
            assert len(s.epochs["shared"]) == 1
        assert seen[0].values == seen[1].values and seen[0].epochs == seen[1].epochs
        # Each publisher's own order holds.
        for k in (0, 1):
            mine = [v for v in seen[0].values["shared"] if v % 2 == k]
            assert mine == sorted(mine)
        # Half were made on the worker that does not own the topic and handed to the owner.
        handed = await asyncio.to_thread(cluster.metric, "wse_mesh_handed_to_owner_total")
        assert sum(handed.values()) == n // 2, handed
        for ws in [*by[0], *by[1]]:
            await ws.close()

    asyncio.run(main())


@pytest.mark.parametrize("workers", [2, 3])
def test_kill9_under_load_clients_recover_on_either_worker_with_no_loss(workers: int) -> None:
    # Topics owned by each worker, so the kill takes out the owner of some and a mirror of others
    # (with three workers, the dead owner's topics pass to either survivor).
    topics = [f"k{i}" for i in range(12)]
    owners = {t: owner(t, workers) for t in topics}
    assert set(owners.values()) == set(range(workers)), owners
    cluster = Cluster(workers, target=TARGET)

    async def main() -> None:
        by = await clients_on_every_worker(cluster.url, workers, per_worker=2)
        publisher, survivor = by[0]
        victims = by[1]
        # Survivors: the publisher's worker and, with three, both clients of worker 2.
        survivors = [survivor, *(ws for w in range(2, workers) for ws in by[w])]
        for ws in [*survivors, *victims]:
            await sub_recover(ws, topics)
        victim_pid = await pid_of(victims[0])
        stop = asyncio.Event()

        sent = 0

        async def publish_loop() -> int:
            nonlocal sent
            while not stop.is_set():
                await publisher.send(envelope("pub", {"topic": topics[sent % len(topics)], "data": {"s": sent}}))
                sent += 1
                await asyncio.sleep(0.002)  # pacing: a steady stream, not a burst
            return sent

        seen_before = [Seen() for _ in victims]
        readers = [asyncio.ensure_future(read_until_closed(ws, s)) for ws, s in zip(victims, seen_before)]
        pub_task = asyncio.ensure_future(publish_loop())
        # Kill once every victim has seen live traffic on every topic.
        await eventually(lambda: all(len(s.values) == len(topics) for s in seen_before), 30, "victims hearing every topic")
        killed_at = time.monotonic()
        os.kill(victim_pid, signal.SIGKILL)
        await asyncio.gather(*readers)
        await asyncio.to_thread(cluster.wait_metric, "wse_worker_up", lambda m: m.get("1") == 1, 10.0)
        back_after = time.monotonic() - killed_at
        # The restart time is reported, not asserted (a slow machine must not fail the test);
        # bench/ measures it.
        print(f"worker 1 back after {back_after:.3f}s")
        # One client comes back on the survivor, the other on the restarted worker; each asks
        # for what it missed after the last offset it saw of every topic.
        again = [await on_slot(cluster.url, 0), await on_slot(cluster.url, 1)]
        acks = []
        seen_after = [Seen() for _ in again]
        for ws, s, a in zip(again, seen_before, seen_after):
            acks.append(await sub_recover(ws, topics, s.points(), a))
        # Stop once the returning clients have seen live publications made after their recovery.
        resumed_at = sent
        await eventually(lambda: sent >= resumed_at + 2 * len(topics), 30, "publications after recovery")
        stop.set()
        sent = await pub_task
        expected = {t: [i for i in range(sent) if topics[i % len(topics)] == t] for t in topics}

        for ws in survivors:
            seen_survivor = Seen()
            while sum(len(v) for v in seen_survivor.values.values()) < sent:
                seen_survivor.add(orjson.loads(await asyncio.wait_for(ws.recv(), 10)))
            for t in topics:
                assert seen_survivor.values[t] == expected[t], t
                # The owner's death did not restart the topic: same epoch, offsets without a gap.
                assert len(seen_survivor.epochs[t]) == 1, (t, seen_survivor.epochs[t])
                offs = seen_survivor.offsets[t]
                assert offs == list(range(offs[0], offs[0] + len(offs))), t

        for ws, before, ack, after in zip(again, seen_before, acks, seen_after):
            await read_until(ws, after, has_last(expected, before))
            for t in topics:
                assert ack[t]["recovered"] is True, (t, ack[t])
                got = before.values.get(t, []) + after.values.get(t, [])
                assert got == expected[t], (t, owners[t], ack[t], len(got), len(expected[t]))
        for ws in [publisher, *survivors, *again]:
            await ws.close()

    try:
        asyncio.run(main())
    finally:
        cluster.stop()



def test_kill9_in_a_loop_under_load_every_recovering_client_gets_everything_once() -> None:
    """Worker 1 is killed three times while publications flow; each time its clients come back
    on its successor and recover. Across the three deaths each client's lineage holds every
    publication exactly once, in order. The restart times are reported, not asserted."""
    topics = [f"k{i}" for i in range(12)]
    cluster = Cluster(2, target=TARGET)

    async def main() -> list[float]:
        by = await clients_on_every_worker(cluster.url, 2, per_worker=2)
        publisher, survivor = by[0]
        victims = list(by[1])
        lineages = [Seen() for _ in victims]
        await sub_recover(survivor, topics)
        for ws in victims:
            await sub_recover(ws, topics)
        stop = asyncio.Event()
        sent = 0

        async def publish_loop() -> int:
            nonlocal sent
            while not stop.is_set():
                await publisher.send(envelope("pub", {"topic": topics[sent % len(topics)], "data": {"s": sent}}))
                sent += 1
                await asyncio.sleep(0.002)  # pacing: a steady stream
            return sent

        pub_task = asyncio.ensure_future(publish_loop())
        restart_times: list[float] = []
        for kill in range(1, 4):
            readers = [asyncio.ensure_future(read_until_closed(ws, s, 30)) for ws, s in zip(victims, lineages)]
            # Kill once every victim has heard every topic in this life.
            await eventually(lambda: all(len(s.values) == len(topics) for s in lineages), 30, "victims hearing every topic")
            os.kill(cluster_pid(cluster, 1), signal.SIGKILL)
            await asyncio.gather(*readers)
            await asyncio.to_thread(cluster.wait_metric, "wse_worker_restarts_total", lambda m: m.get("1") == kill, 30.0)
            await asyncio.to_thread(cluster.wait_metric, "wse_worker_up", lambda m: m.get("1") == 1, 30.0)
            # The supervisor reports how long the slot went without a worker.
            restart_times.append((await asyncio.to_thread(cluster.metric, "wse_worker_last_restart_seconds"))["1"])
            victims = [await on_slot(cluster.url, 1) for _ in lineages]
            for ws, s in zip(victims, lineages):
                ack = await sub_recover(ws, topics, s.points(), s)
                assert all(ack[t]["recovered"] is True for t in topics), (kill, ack)
            resumed_at = sent
            await eventually(lambda: sent >= resumed_at + 2 * len(topics), 30, "publications after recovery")
        stop.set()
        sent = await pub_task
        expected = {t: [i for i in range(sent) if topics[i % len(topics)] == t] for t in topics}
        for ws, s in zip([survivor, *victims], [Seen(), *lineages]):
            await read_until(ws, s, has_last(expected))
            for t in topics:
                assert s.values.get(t, []) == expected[t], (t, len(s.values.get(t, [])), len(expected[t]))
        for ws in [publisher, survivor, *victims]:
            await ws.close()
        return restart_times

    try:
        times = asyncio.run(main())
        print(f"worker 1 served again after {', '.join(f'{t:.3f}s' for t in times)} (three kill -9)")
    finally:
        cluster.stop()


def cluster_pid(cluster: Cluster, slot: int) -> int:
    """The pid of the worker serving ``slot`` now (from the supervisor's view of its children)."""
    for pid in cluster.worker_pids():
        with open(f"/proc/{pid}/environ", "rb") as f:
            if f"WSE_WORKER_SLOT={slot}".encode() in f.read().split(b"\0"):
                return pid
    raise AssertionError(f"no worker serves slot {slot}")
