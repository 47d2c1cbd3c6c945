"""``wse run --workers N`` with real processes: workers share the port, a publication on one
worker reaches subscribers on all, a killed worker comes back, SIGTERM drains, SIGHUP reloads
without refusing a connection, and the supervisor's death takes its workers with it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.cluster_util import TOKEN, Cluster, clients_on_every_worker, pid_of, promtool, subscribe, until_all_hear, whoami
from tests.conftest import envelope, subscribe_msg
from tests.wsutil import eventually, open_ready, recv_type


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster(2)
    try:
        yield c
    finally:
        c.stop()


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def collect(ws: ClientConnection, topic_key: str, n: int, timeout: float = 10.0) -> list[int]:
    """The sequence numbers of the next ``n`` real (non-probe) publications."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while len(seen) < n:
        m = orjson.loads(await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic())))
        if m.get("t") == "pubbed" and topic_key in m["p"]:
            seen.append(m["p"][topic_key])
    return seen


def test_two_workers_serve_clients_and_report_per_worker(cluster: Cluster) -> None:
    pids = cluster.worker_pids()
    assert len(pids) == 2
    # Each worker is pinned to its own CPU.
    cpus = [os.sched_getaffinity(p) for p in pids]
    assert all(len(c) == 1 for c in cpus) and cpus[0] != cpus[1], cpus

    async def main() -> None:
        by = await clients_on_every_worker(cluster.url, 2, per_worker=3)
        active = cluster.wait_metric("wse_connections_active", lambda m: m.get("0", 0) >= 3 and m.get("1", 0) >= 3)
        assert set(active) == {"0", "1"}
        handshakes = cluster.metric("wse_handshakes_total")
        assert handshakes["0"] >= 3 and handshakes["1"] >= 3
        for conns in by.values():
            for ws in conns:
                await ws.close()

    asyncio.run(main())
    cluster.wait_metric("wse_mesh_peers", lambda m: m == {"0": 1, "1": 1})
    text = cluster.scrape()
    r = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'wse_mesh_peers{worker="0"} 1' in text and 'wse_mesh_peers{worker="1"} 1' in text


def test_publication_on_one_worker_reaches_subscribers_on_all_in_order(cluster: Cluster) -> None:
    async def main() -> None:
        by = await clients_on_every_worker(cluster.url, 2, per_worker=2)
        publisher = by[0][0]
        listeners = by[0][1:] + by[1]
        for ws in listeners:
            await subscribe(ws, "room.all")
        await until_all_hear(publisher, listeners, "room.all")
        n = 500
        for i in range(n):
            await publisher.send(envelope("pub", {"topic": "room.all", "data": {"i": i}}))
        for ws in listeners:
            assert await collect(ws, "i", n) == list(range(n))
        # Interest routing: a topic nobody on worker 1 wants does not cross to it.
        before = cluster.metric("wse_mesh_messages_total", direction="out")["0"]
        await subscribe(by[0][1], "room.local")
        for i in range(50):
            await publisher.send(envelope("pub", {"topic": "room.local", "data": {"j": i}}))
        assert await collect(by[0][1], "j", 50) == list(range(50))
        assert cluster.metric("wse_mesh_messages_total", direction="out")["0"] == before
        got_in = cluster.metric("wse_mesh_messages_total", direction="in")
        assert got_in["1"] >= n
        # When worker 1's last subscriber leaves, room.all stops crossing to it.
        for ws in by[1]:
            await ws.send(subscribe_msg(["room.all"], action="unsubscribe"))
            await recv_type(ws, "subscription_update")
        # Worker 0 learns of the lost interest over the mesh, asynchronously: probe until two
        # probes in a row reach the local listener without crossing to worker 1.
        home = 0
        for k in range(400):
            before = cluster.metric("wse_mesh_messages_total", direction="out")["0"]
            await publisher.send(envelope("pub", {"topic": "room.all", "data": {"probe": k}}))
            await collect(by[0][1], "probe", 1)
            home = home + 1 if cluster.metric("wse_mesh_messages_total", direction="out")["0"] == before else 0
            if home == 2:
                break
        assert home == 2, "worker 0 kept sending room.all to worker 1 after its last subscriber left"
        for i in range(20):
            await publisher.send(envelope("pub", {"topic": "room.all", "data": {"m": i}}))
        assert await collect(by[0][1], "m", 20) == list(range(20))
        assert cluster.metric("wse_mesh_messages_total", direction="out")["0"] == before
        for conns in by.values():
            for ws in conns:
                await ws.close()

    asyncio.run(main())


def test_http_publish_reaches_every_worker_and_needs_the_token(cluster: Cluster) -> None:
    from wse.cluster import publish

    # HTTP publications go out with the type the caller names (the app's listeners count `pubbed`).
    async def main_typed() -> None:
        by = await clients_on_every_worker(cluster.url, 2, per_worker=1)
        listeners = by[0] + by[1]
        try:
            for ws in listeners:
                await subscribe(ws, "news")
            await until_all_hear(by[0][0], listeners, "news")
            # One caller's publications to one topic arrive in order on every worker.
            for i in range(20):
                await asyncio.to_thread(publish, cluster.base, "news", {"k": i}, token=TOKEN, type="pubbed")
            for ws in listeners:
                assert await collect(ws, "k", 20) == list(range(20))
        finally:
            for ws in listeners:
                await ws.close()

    asyncio.run(main_typed())
    with pytest.raises(RuntimeError, match="401"):
        publish(cluster.base, "news", {"k": -1}, token="wrong")
    req = urllib.request.Request(cluster.base + "/publish", data=b"not json", method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 400
    e.value.close()


def test_kill9_worker_comes_back_and_the_other_workers_clients_see_no_gap(cluster: Cluster) -> None:
    async def main() -> None:
        by = await clients_on_every_worker(cluster.url, 2, per_worker=2)
        publisher, survivor = by[0]
        victims = by[1]
        for ws in [survivor, *victims]:
            await subscribe(ws, "load")
        await until_all_hear(publisher, [survivor, *victims], "load")
        victim_pid = [p for p in cluster.worker_pids() if p != await pid_of(publisher)][0]

        stop = asyncio.Event()
        sent = 0

        async def publish_loop() -> int:
            nonlocal sent
            while not stop.is_set():
                await publisher.send(envelope("pub", {"topic": "load", "data": {"s": sent}}))
                sent += 1
                await asyncio.sleep(0.002)  # pacing: a steady stream, not a burst
            return sent

        pub_task = asyncio.ensure_future(publish_loop())
        await eventually(lambda: sent >= 100, 30, "100 publications before the kill")
        killed_at = time.monotonic()
        os.kill(victim_pid, signal.SIGKILL)
        # Back: the slot's new worker answers (restarts counted, up again).
        await asyncio.to_thread(cluster.wait_metric, "wse_worker_restarts_total", lambda m: m.get("1") == 1, 10.0)
        await asyncio.to_thread(cluster.wait_metric, "wse_worker_up", lambda m: m.get("1") == 1, 10.0)
        # Reported, not asserted: a slow machine must not fail the test.
        print(f"worker 1 back after {time.monotonic() - killed_at:.3f}s")
        # The dead worker's clients were disconnected; they reconnect (anywhere) and hear the topic again.
        for ws in victims:
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
        re = []
        for _ in victims:
            ws, _ = await open_ready(cluster.url)
            await subscribe(ws, "load")
            re.append(ws)
        # Their interest crosses the mesh asynchronously: wait until every one of them hears,
        # then let the stream run on a little before stopping it.
        await until_all_hear(publisher, re, "load")
        resumed_at = sent
        await eventually(lambda: sent >= resumed_at + 50, 30, "publications after the reconnect")
        stop.set()
        sent = await pub_task
        # The surviving worker's client saw every publication, in order, across the kill.
        seen: list[int] = []
        while len(seen) < sent:
            m = orjson.loads(await asyncio.wait_for(survivor.recv(), 5))
            if m.get("t") == "pubbed" and "s" in m["p"]:
                seen.append(m["p"]["s"])
        assert seen == list(range(sent))
        # A reconnected client hears, in order and once each, everything up to the last publication.
        for ws in re:
            got: list[int] = []
            while not got or got[-1] != sent - 1:
                m = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                if m.get("t") == "pubbed" and "s" in m["p"]:
                    got.append(m["p"]["s"])
            assert got == sorted(got) and len(set(got)) == len(got)
            assert len(got) >= 50, len(got)
            await ws.close()
        for ws in [publisher, survivor, *victims]:
            await ws.close()

    asyncio.run(main())


def test_sigterm_under_load_drains_with_close_frames_and_leaves_no_process() -> None:
    c = Cluster(2)
    pids = c.worker_pids()

    async def main() -> list[int | None]:
        by = await clients_on_every_worker(c.url, 2, per_worker=2)
        publisher, listeners = by[0][0], by[0][1:] + by[1]
        for ws in listeners:
            await subscribe(ws, "drain")
        await until_all_hear(publisher, listeners, "drain")

        sent = 0

        async def load() -> None:
            nonlocal sent
            with pytest.raises(ConnectionClosed):
                while True:
                    await publisher.send(envelope("pub", {"topic": "drain", "data": {"d": sent}}))
                    sent += 1
                    await asyncio.sleep(0.001)  # pacing

        task = asyncio.ensure_future(load())
        await eventually(lambda: sent >= 100, 30, "load under way")
        c.proc.send_signal(signal.SIGTERM)
        codes = []
        for ws in listeners:
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            codes.append(ws.close_code)
        await task
        codes.append(publisher.close_code)
        return codes

    codes = asyncio.run(main())
    assert c.stop() == 0
    assert codes == [1001, 1001, 1001, 1001]
    assert not any(pid_alive(p) for p in pids)


def test_supervisor_death_takes_the_workers_down() -> None:
    c = Cluster(2)
    pids = c.worker_pids()
    assert len(pids) == 2
    c.stop(signal.SIGKILL)
    deadline = time.monotonic() + 15
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_alive(p) for p in pids), "orphaned workers"


def test_sighup_reloads_every_worker_without_refusing_a_connection(cluster: Cluster) -> None:
    old = set(cluster.worker_pids())

    async def main() -> tuple[int, int, list[str]]:
        stop = asyncio.Event()
        ok = 0
        failures: list[str] = []

        async def connector() -> None:
            nonlocal ok
            while not stop.is_set():
                try:
                    async with connect(cluster.url, open_timeout=10) as ws:
                        ready = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                        assert ready["t"] == "server_ready"
                        ok += 1
                except ConnectionClosed:
                    ok += 1  # accepted and upgraded, then closed by a draining worker: not refused
                except OSError as e:
                    failures.append(repr(e))

        tasks = [asyncio.ensure_future(connector()) for _ in range(4)]
        await eventually(lambda: ok >= 8, 30, "connections served before the reload")
        before = ok
        cluster.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = set(cluster.worker_pids())
            if len(now) == 2 and not (now & old):
                break
            await asyncio.sleep(0.1)
        # The new workers serve too before the connectors stop.
        replaced_at = ok
        await eventually(lambda: ok >= replaced_at + 8, 30, "connections served after the reload")
        stop.set()
        await asyncio.gather(*tasks)
        return before, ok, failures

    before, ok, failures = asyncio.run(main())
    assert failures == []
    new = set(cluster.worker_pids())
    assert len(new) == 2 and not (new & old), (old, new)
    assert ok > before
    assert cluster.metric("wse_worker_restarts_total") == {"0": 0, "1": 0}


def test_wse_top_shows_every_worker(cluster: Cluster) -> None:
    cluster.wait_metric("wse_worker_up", lambda m: m == {"0": 1, "1": 1})
    r = subprocess.run(
        [sys.executable, "-m", "wse_cli.main", "top", "--url", cluster.metrics_url, "--once", "--interval", "0.2"],
        capture_output=True, text=True, timeout=30,
    )
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()]
    assert rows[0][:3] == ["worker", "up", "conns"]
    assert [row[:2] for row in rows[1:3]] == [["0", "1"], ["1", "1"]]
    assert rows[3][0] == "all"
    bad = subprocess.run([sys.executable, "-m", "wse_cli.main", "top", "--url", "http://127.0.0.1:9/metrics", "--once"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and "cannot read" in bad.stderr


def test_a_worker_that_keeps_dying_is_restarted_on_its_cpu_with_backoff(tmp_path: Path) -> None:
    log = os.path.join(str(tmp_path), "attempts")
    c = Cluster(2, target="tests.apps.cluster_flaky:app", env_extra={"FLAKY_LOG": log, "FAILS": "3"})
    try:
        c.wait_metric("wse_worker_up", lambda m: m == {"0": 1, "1": 1}, timeout=30)
        assert c.metric("wse_worker_restarts_total") == {"0": 0, "1": 3}
        with open(log) as f:
            lines = [line.split(" ", 1) for line in f.read().splitlines()]
        assert len(lines) == 4
        # Every attempt ran on the same single CPU.
        assert len({cpus for _, cpus in lines}) == 1 and len(json.loads(lines[0][1])) == 1
        # Quick deaths back off 0.1 s, 0.2 s, 0.4 s: the attempts cannot be closer than that.
        times = [float(t) for t, _ in lines]
        assert times[-1] - times[0] >= 0.7
        # Worker 0 was never disturbed.

        async def main() -> None:
            by = await clients_on_every_worker(c.url, 2, per_worker=1)
            for conns in by.values():
                for ws in conns:
                    await ws.close()
        asyncio.run(main())
    finally:
        c.stop()


def test_steer_cpu_hands_connections_to_the_worker_on_the_receiving_cpu() -> None:
    from tests.conftest import ROOT

    c = Cluster(2, "--steer-cpu")
    try:
        got = {}
        for cpu in (0, 1):
            # On loopback the sending CPU also processes the packets the listener receives.
            r = subprocess.run(["taskset", "-c", str(cpu), sys.executable, "-m", "tests.cluster_probe", c.url, "12"],
                               cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            got[cpu] = json.loads(r.stdout)
        assert got == {0: [0] * 12, 1: [1] * 12}
    finally:
        c.stop()


def test_two_publishers_on_different_workers_each_keep_their_order(cluster: Cluster) -> None:
    async def main() -> None:
        by = await clients_on_every_worker(cluster.url, 2, per_worker=2)
        pubs = [by[0][0], by[1][0]]
        listeners = [by[0][1], by[1][1]]
        try:
            for ws in listeners:
                await subscribe(ws, "both")
            await until_all_hear(pubs[0], listeners, "both")
            await until_all_hear(pubs[1], listeners, "both")
            n = 300
            for i in range(n):
                for w, p in enumerate(pubs):
                    await p.send(envelope("pub", {"topic": "both", "data": {"w": w, "q": i}}))
            for ws in listeners:
                seen: dict[int, list[int]] = {0: [], 1: []}
                while len(seen[0]) + len(seen[1]) < 2 * n:
                    m = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                    if m.get("t") == "pubbed" and "q" in m["p"]:
                        seen[m["p"]["w"]].append(m["p"]["q"])
                assert seen == {0: list(range(n)), 1: list(range(n))}
        finally:
            for conns in by.values():
                for ws in conns:
                    await ws.close()

    asyncio.run(main())
