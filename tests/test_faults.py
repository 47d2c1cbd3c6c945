"""Faults with real processes: a frozen worker (SIGSTOP), the wall clock jumping under a server.

(kill -9 in a loop under load is in test_cluster_recovery.py; handlers that raise or hang and
the circuit breaker are in test_breaker.py.)

The server runs under libfaketime (Debian's ``libfaketime``), its realtime clock moved by writing
to a file while it runs; its monotonic clock is left alone, as a real NTP step would leave it.
Token expiry reads the wall clock; keepalive, idle and handshake timers read the monotonic one.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from tests.cluster_util import Cluster, clients_on_every_worker, pid_of, subscribe, until_all_hear
from tests.conftest import SECRET, envelope, make_token
from tests.wsutil import RawWS, eventually, open_ready, recv_type


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False

FAKETIME_LIBS = [Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"), Path("/usr/lib/faketime/libfaketimeMT.so.1")]


def faketime_lib() -> Path:
    for p in FAKETIME_LIBS:
        if p.exists():
            return p
    raise AssertionError("libfaketime is missing: the test command installs Debian's libfaketime")


def test_clock_jump_expires_tokens_by_the_new_time_and_spares_the_timers(make_server: Any, tmp_path: Path) -> None:
    clock = tmp_path / "clock"
    clock.write_text("+0\n")
    env = {
        "LD_PRELOAD": str(faketime_lib()),
        "FAKETIME_TIMESTAMP_FILE": str(clock),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    srv = make_server({"jwt": {"secret": SECRET}, "ping_interval_ms": 1000, "idle_timeout_ms": 5000}, env=env)

    def bearer(tok: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tok}"}

    async def main() -> None:
        # A connection whose token is good for a day lives through the jump.
        day = make_token({"sub": "steady"}, exp_in=24 * 3600)
        ws, _ = await open_ready(srv.url, additional_headers=bearer(day), ping_interval=None)
        hour = make_token({"sub": "late"}, exp_in=3600)
        first, ready = await open_ready(srv.url, additional_headers=bearer(hour))
        assert ready["p"]["details"]["user_id"] == "late"
        await first.close()

        clock.write_text("+2h\n")  # the server's wall clock steps two hours ahead
        # The same one-hour token is now expired for the server: refused at the handshake.
        r = await asyncio.to_thread(RawWS, srv.port, srv.path, bearer(hour), timeout=30)
        try:
            assert r.status == 101, r.head
            msgs, code, reason = await asyncio.to_thread(r.read_until_close)
        finally:
            r.close()
        assert code == 4401 and reason == "expired", (code, reason, msgs)

        # The monotonic timers did not jump: the steady connection is neither idle-closed nor
        # stalled. It answers pings for a few ping intervals and still gets its echo.
        for i in range(3):
            await ws.send(envelope("echo", i))
            assert (await recv_type(ws, "echo", timeout=30))["p"] == i
            await asyncio.sleep(1.0)  # a ping interval passes: a window in which nothing may break
        assert ws.close_code is None

        clock.write_text("-2h\n")  # and two hours back: a fresh token is good again
        again = make_token({"sub": "back"}, exp_in=3600)
        back, ready = await open_ready(srv.url, additional_headers=bearer(again))
        assert ready["p"]["details"]["user_id"] == "back"
        await back.close()
        await ws.close()

    asyncio.run(main())


def test_a_stopped_worker_is_detected_killed_and_replaced_while_the_other_serves_on() -> None:
    """SIGSTOP freezes worker 1. The supervisor's watchdog finds it silent, kills it and starts a
    successor; meanwhile worker 0's subscriber keeps getting every publication in order (the mesh
    link to the frozen peer does not hold worker 0 back), and worker 1's clients are let go and
    can come back."""
    cluster = Cluster(2, "--watchdog-timeout", "2")

    async def main() -> None:
        by = await clients_on_every_worker(cluster.url, 2, per_worker=2)
        publisher, survivor = by[0]
        victims = by[1]
        for ws in [survivor, *victims]:
            await subscribe(ws, "feed")
        await until_all_hear(publisher, [survivor, *victims], "feed")
        frozen = await pid_of(victims[0])
        os.kill(frozen, signal.SIGSTOP)
        try:
            n = 0
            # Publishing goes on while worker 1 is frozen, then while it is replaced.
            while True:
                await publisher.send(envelope("pub", {"topic": "feed", "data": {"s": n}}))
                n += 1
                await asyncio.sleep(0.005)  # pacing
                hung = await asyncio.to_thread(cluster.metric, "wse_worker_hung_total") if n % 20 == 0 else {}
                if hung.get("1") == 1:
                    break
                assert n < 12_000, "the watchdog never fired"
            await asyncio.to_thread(cluster.wait_metric, "wse_worker_up", lambda m: m.get("1") == 1, 30.0)
        finally:
            if pid_alive(frozen):
                os.kill(frozen, signal.SIGCONT)
        seen: list[int] = []
        while len(seen) < n:
            m = orjson.loads(await asyncio.wait_for(survivor.recv(), 30))
            if m.get("t") == "pubbed" and "s" in m["p"]:
                seen.append(m["p"]["s"])
        assert seen == list(range(n))
        for ws in victims:
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 30)
        # A client that comes back hears the feed again, wherever it lands.
        back, _ = await open_ready(cluster.url)
        await subscribe(back, "feed")
        await until_all_hear(publisher, [back], "feed")
        for ws in (publisher, survivor, back):
            await ws.close()

    try:
        asyncio.run(main())
        assert cluster.metric("wse_worker_restarts_total")["1"] == 1
    finally:
        cluster.stop()


async def control(cluster: Cluster, slot: int, req: dict[str, Any]) -> dict[str, Any]:
    """Asks worker ``slot`` on its control socket (where the supervisor asks it)."""
    from wse.cluster.control import control_path, request

    for pid in cluster.worker_pids():
        env = dict(e.split(b"=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in e)
        if env.get(b"WSE_WORKER_SLOT") == str(slot).encode():
            return await request(control_path(env[b"WSE_RUN_DIR"].decode(), slot, pid), req)
    raise AssertionError(f"no worker serves slot {slot}")


# With recovery on, "feed" is stamped by worker 0 (the publisher's: its publications made during
# the cut reach worker 1 from its ring on the re-link) and "feed.b" by worker 1 (worker 0's
# hand-offs wait for the re-link and are sent again; worker 1 stamps each once). The owners are
# the FNV-1a election's (mesh/sequencer.rs `rank`), the same in every run.
CUT_TOPICS = ["feed", "feed.b"]


@pytest.mark.parametrize("recovery", [False, True], ids=["at-most-once", "recovery"])
def test_a_cut_mesh_link_relinks_and_the_stream_goes_on_in_order(recovery: bool) -> None:
    """Both workers live, their link is cut: the dialing side re-links and publications flow
    again. Without recovery a publication made during the cut may miss the other worker (at most
    once), but nothing arrives twice or out of order, and the local subscribers lose nothing.
    With recovery every subscriber gets every publication of each topic exactly once, in order,
    under one epoch with contiguous offsets (a gap the rings could not fill would show as a jump
    in offsets, which clients report: here the rings hold the whole run, so there is none)."""
    cluster = Cluster(2, target="tests.apps.cluster_recovery_app:app" if recovery else "tests.apps.cluster_app:app")

    async def main() -> tuple[int, list[dict[str, list[tuple[int, int | None, str | None]]]]]:
        by = await clients_on_every_worker(cluster.url, 2, per_worker=2)
        publisher, local = by[0]
        remote = by[1]
        for ws in [local, *remote]:
            for topic in CUT_TOPICS:
                await subscribe(ws, topic)
        for topic in CUT_TOPICS:
            await until_all_hear(publisher, [local, *remote], topic)
        opened = await asyncio.to_thread(cluster.metric, "wse_mesh_links_opened_total")
        stop = asyncio.Event()
        sent = 0

        async def publish_loop() -> int:
            nonlocal sent
            while not stop.is_set():
                for topic in CUT_TOPICS:
                    await publisher.send(envelope("pub", {"topic": topic, "data": {"s": sent}}))
                sent += 1
                await asyncio.sleep(0.002)  # pacing
            return sent

        task = asyncio.ensure_future(publish_loop())
        await eventually(lambda: sent >= 50, 30, "publications before the cut")
        assert await control(cluster, 0, {"op": "mesh_cut"}) == {"cut": 1}
        # Re-linked: each worker opened one more link and has its peer again.
        await asyncio.to_thread(cluster.wait_metric, "wse_mesh_links_opened_total",
                                lambda m: all(m.get(w, 0) > opened[w] for w in ("0", "1")), 30.0)
        await asyncio.to_thread(cluster.wait_metric, "wse_mesh_peers", lambda m: m == {"0": 1, "1": 1}, 30.0)
        resumed = sent
        await eventually(lambda: sent >= resumed + 50, 30, "publications after the re-link")
        stop.set()
        n = await task
        got = []
        for ws in [local, *remote]:
            # Per topic: (s, offset, epoch) of each publication, until the last one of each.
            seen: dict[str, list[tuple[int, int | None, str | None]]] = {t: [] for t in CUT_TOPICS}
            while any(not v or v[-1][0] != n - 1 for v in seen.values()):
                m = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
                if m.get("t") == "pubbed" and "s" in m["p"]:
                    seen[m["tp"]].append((m["p"]["s"], m.get("o"), m.get("e")))
            got.append(seen)
        for ws in [publisher, local, *remote]:
            await ws.close()
        return n, got

    try:
        n, (local_seen, *remote_seen) = asyncio.run(main())
    finally:
        cluster.stop()
    for topic in CUT_TOPICS:
        if not recovery:
            assert [s for s, _, _ in local_seen[topic]] == list(range(n)), topic
        for k, seen in enumerate([local_seen, *remote_seen]):
            ss = [s for s, _, _ in seen[topic]]
            if recovery:
                offsets = [o for _, o, _ in seen[topic]]
                assert None not in offsets and len({e for _, _, e in seen[topic]}) == 1, (topic, seen[topic][:3])
                jumps = [(a, b) for a, b in zip(offsets, offsets[1:]) if b != a + 1]
                assert not jumps, f"{topic}: subscriber {k} saw offsets jump (a gap): {jumps}"
                missing = sorted(set(range(n)) - set(ss))
                assert ss == list(range(n)), f"{topic}: subscriber {k} missed {len(missing)} of {n}: {missing[:20]}"
            else:
                assert ss == sorted(set(ss)), f"{topic}: a subscriber got a publication twice or out of order"
                print(f"{topic}: subscriber {k}: {n - len(ss)} of {n} publications missed during the cut")
