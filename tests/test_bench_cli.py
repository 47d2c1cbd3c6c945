"""``wse bench``: the load generator (its own package, `pip install ./bench/loadgen`), run against a real server (the benchmark app)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from .conftest import ROOT, SECRET


BENCH_APP = "wse_app:app"


def bench_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {"PYTHONPATH": f"{ROOT / 'bench' / 'peers'}{os.pathsep}{ROOT}"}
    env.update(extra or {})
    return env


def wse_bench(*args: str) -> tuple[int, dict[str, Any] | None, str]:
    p = subprocess.run([sys.executable, "-m", "wse_cli.main", "bench", *args], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    lines = [x for x in p.stdout.splitlines() if x.startswith("{")]
    return p.returncode, (json.loads(lines[-1]) if lines else None), p.stdout + p.stderr


def test_help_and_usage_errors() -> None:
    code, _, out = wse_bench("--help")
    assert code == 0
    for sub in ("fanout", "inbound", "latency", "handshake", "idle", "floor"):
        assert sub in out
    code, report, out = wse_bench("fanout")
    assert code == 2 and report is None
    assert "--url" in out


def test_fanout_checks_every_delivery(make_server: Any) -> None:
    srv = make_server(target=BENCH_APP, env=bench_env())
    code, rep, out = wse_bench("fanout", "--url", srv.url, "--subscribers", "20", "--messages", "50",
                               "--rounds", "2", "--warmup", "1", "--server-pid", str(srv.pid))
    assert code == 0, out
    assert rep is not None and rep["ok"] is True
    assert rep["connected"] == 20 and rep["server_ready"] is True
    s = rep["summary"]
    assert s["deliveries"] == 20 * 50
    assert s["missing"] == 0 and s["duplicates"] == 0 and s["gaps"] == 0
    # Server CPU from the scheduler's nanosecond counters: delivering 1,000 frames costs the server
    # some (a 10 ms tick counter could read 0 here), and the per-CPU-second figure is made of it.
    assert s["server_cpu_s"] > 0
    assert s["per_server_cpu_s"] == pytest.approx(s["deliveries"] / s["server_cpu_s"], rel=1e-3)
    measured = [r for r in rep["rounds"] if not r["warmup"]]
    assert len(measured) == 1 and measured[0]["server_cpu_source"] == "schedstat"
    assert measured[0]["server_threads_gone"] == 0
    assert 0 < s["generator_cpu_share"]


def test_fanout_counts_unchecked_subscribers_by_bytes(make_server: Any) -> None:
    """--check-every 3: subscribers 0, 3, 6, 9 check every delivery, the other 8 count bytes
    (MSG_TRUNC) and are complete only with exactly a checked one's bytes; a round that delivers
    nothing leaves them short, and their deliveries count as missing."""
    srv = make_server(target=BENCH_APP, env=bench_env())
    code, rep, out = wse_bench("fanout", "--url", srv.url, "--subscribers", "12", "--messages", "60",
                               "--rounds", "2", "--check-every", "3", "--server-pid", str(srv.pid))
    assert code == 0, out
    assert rep is not None and rep["ok"] is True
    for r in rep["rounds"]:
        assert r["checked_subscribers"] == 4 and r["byte_counted_subscribers"] == 8
        assert r["byte_counted_complete"] == 8 and r["byte_counted_short"] == 0 and r["byte_counted_extra"] == 0
        assert r["round_bytes_per_subscriber"] > 60 * 20  # 60 frames of well over 20 bytes each
        assert r["deliveries"] == 12 * 60 and r["distinct"] == 4 * 60 and r["missing"] == 0
    code, rep, out = wse_bench("fanout", "--url", srv.url, "--subscribers", "12", "--messages", "10",
                               "--check-every", "3", "--publish-msg", '{"t":"no.such.type","p":{}}',
                               "--timeout-s", "1")
    assert code == 1, out
    assert rep is not None and rep["ok"] is False
    r = rep["rounds"][0]
    assert r["missing"] == 120 and r["byte_counted_short"] == 8 and r["byte_counted_complete"] == 0


def test_fanout_with_permessage_deflate(make_server: Any) -> None:
    """--permessage-deflate: the generator offers the extension as browsers do, the server (with
    it on) agrees without context takeover, every delivery comes compressed and is inflated and
    sequence-checked on every subscriber (--check-every is overridden), and the wire bytes per
    delivery are a fraction of the plaintext frame's for a compressible 1,000-byte payload. The
    same server sends plaintext to a generator that does not offer it."""
    srv = make_server(target=BENCH_APP, env=bench_env({"WSE_BENCH_DEFLATE": "1"}))
    run = ["fanout", "--url", srv.url, "--subscribers", "12", "--messages", "40", "--size", "1000",
           "--rounds", "2", "--check-every", "3", "--server-pid", str(srv.pid)]
    code, rep, out = wse_bench(*run, "--permessage-deflate")
    assert code == 0, out
    assert rep is not None and rep["ok"] is True
    z = rep["permessage_deflate"]
    assert z["offered"] is True and z["agreed"] == 12
    assert z["server_no_context_takeover"] is True and "permessage-deflate" in z["answer"]
    for r in rep["rounds"]:
        assert r["checked_subscribers"] == 12 and r["byte_counted_subscribers"] == 0
        assert r["deliveries"] == r["distinct"] == 12 * 40 and r["missing"] == 0
        assert r["compressed_deliveries"] == 12 * 40
        assert r["avg_frame_payload_bytes"] > 1000  # inflated: the whole envelope and its padding
        assert 0 < r["wire_bytes_per_delivery"] < r["avg_frame_payload_bytes"] // 4
    code, plain, out = wse_bench(*run)
    assert code == 0, out
    assert plain is not None and plain["ok"] is True and plain["permessage_deflate"]["agreed"] == 0
    r = plain["rounds"][-1]
    assert r["compressed_deliveries"] == 0
    assert r["wire_bytes_per_delivery"] > r["avg_frame_payload_bytes"] > 1000


def test_fanout_warms_until_steady_and_reports_cold_apart(make_server: Any) -> None:
    srv = make_server(target=BENCH_APP, env=bench_env())
    code, rep, out = wse_bench("fanout", "--url", srv.url, "--subscribers", "10", "--messages", "20",
                               "--max-warmup", "4", "--rounds", "2", "--target-server-cpu-s", "0.01",
                               "--server-pid", str(srv.pid))
    assert code == 0, out
    assert rep is not None and rep["ok"] is True
    rounds = rep["rounds"]
    assert rounds[0]["cold"] is True and rounds[0]["warmup"] is True and rounds[0]["messages"] == 20
    warm = [r for r in rounds[1:] if r["warmup"]]
    measured = [r for r in rounds if not r["warmup"]]
    assert len(measured) == 2 and rounds[-2:] == measured
    assert 1 <= len(warm) <= 4 and rep["warmup_rounds"] == len(warm) + 1
    assert rep["steady"] in (True, False)
    if rep["steady"]:
        # Steady means two warm-up rounds agreed: there were at least two.
        assert rep["steady_after_rounds"] == len(warm) >= 2
        a, b = (r["server_cpu_s"] / r["deliveries"] for r in warm[-2:])
        assert abs(a - b) <= 0.05 * a + 1e-12
    else:
        assert len(warm) == 4
    # The later rounds were sized from the server CPU the earlier ones cost.
    assert all(r["messages"] >= 5 for r in rounds)
    assert rep["summary"]["deliveries"] == sum(10 * r["messages"] for r in measured)


def test_fanout_round_in_bursts_continues_the_sequences(make_server: Any) -> None:
    """A round asked for in bursts (``start`` in each request after the first): every subscriber still
    gets sequences 0 .. M-1 exactly once, over several publish requests."""
    srv = make_server(target=BENCH_APP, env=bench_env())
    code, rep, out = wse_bench("fanout", "--url", srv.url, "--subscribers", "8", "--messages", "100",
                               "--burst-messages", "30", "--rounds", "2")
    assert code == 0, out
    assert rep is not None and rep["ok"] is True
    for r in rep["rounds"]:
        assert r["publish_requests"] == 4
        assert r["deliveries"] == r["distinct"] == 8 * 100 and r["gaps"] == 0 and r["duplicates"] == 0
        assert [m["p"]["published"] for m in r["server_messages"]] == [30, 30, 30, 10]


def test_floor_serves_the_same_bytes_to_every_subscriber() -> None:
    """``wse bench floor``: the minimal writer the fan-out figures are measured against."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    floor = subprocess.Popen([sys.executable, "-m", "wse_cli.main", "bench", "floor", "--port", str(port)],
                             stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert floor.stdout is not None
        line = floor.stdout.readline()
        assert f"floor: serving ws://127.0.0.1:{port}/wse pid {floor.pid}" in line, line
        code, rep, out = wse_bench("fanout", "--url", f"ws://127.0.0.1:{port}/wse", "--subscribers", "30",
                                   "--messages", "200", "--frame-bytes", "173", "--rounds", "2",
                                   "--server-pid", str(floor.pid))
        assert code == 0, out
        assert rep is not None and rep["ok"] is True and rep["connected"] == 30
        for r in rep["rounds"]:
            assert r["deliveries"] == 30 * 200 and r["missing"] == 0 and r["duplicates"] == 0
            assert r["avg_frame_payload_bytes"] == 173
            assert r["server_messages"][0]["p"]["published"] == 200
    finally:
        floor.terminate()
        floor.communicate(timeout=10)


def test_fanout_reports_a_server_that_publishes_nothing(make_server: Any) -> None:
    """A publish request the server does not know: the round stalls and the run is not ok (exit 1)."""
    srv = make_server(target=BENCH_APP, env=bench_env())
    code, rep, out = wse_bench("fanout", "--url", srv.url, "--subscribers", "3", "--messages", "10",
                               "--publish-msg", '{"t":"no.such.type","p":{}}', "--timeout-s", "1")
    assert code == 1, out
    assert rep is not None and rep["ok"] is False
    assert rep["rounds"][0]["missing"] == 30 and rep["rounds"][0]["timed_out"] is True


def test_inbound_counts_what_the_handler_processed(make_server: Any) -> None:
    srv = make_server(target=BENCH_APP, env=bench_env())
    code, rep, out = wse_bench("inbound", "--url", srv.url, "--connections", "5", "--messages-per-conn", "2000",
                               "--stats-msg", '{"t":"bench.stats"}', "--server-pid", str(srv.pid))
    assert code == 0, out
    assert rep is not None and rep["ok"] is True
    assert rep["sent"] == 10_000 and rep["processed"] == 10_000
    # A second run on the same server counts only its own messages.
    code, rep, out = wse_bench("inbound", "--url", srv.url, "--connections", "2", "--messages-per-conn", "500",
                               "--stats-msg", '{"t":"bench.stats"}')
    assert code == 0, out
    assert rep is not None and rep["processed"] == 1000


def test_inbound_one_message_per_write_paced(make_server: Any) -> None:
    """The per-segment shape: one frame per write, paced; still every message counted by the handler,
    and the run extended until the server used the asked CPU (or the cap)."""
    srv = make_server(target=BENCH_APP, env=bench_env())
    code, rep, out = wse_bench("inbound", "--url", srv.url, "--connections", "20", "--messages-per-conn", "1000000",
                               "--one-per-write", "--rate", "4000", "--duration-s", "0.3",
                               "--min-server-cpu-s", "0.02", "--max-duration-s", "5",
                               "--stats-msg", '{"t":"bench.stats"}', "--server-pid", str(srv.pid))
    assert code == 0, out
    assert rep is not None and rep["ok"] is True and rep["one_per_write"] is True
    assert rep["processed"] == rep["sent"] > 0
    assert rep["server_cpu_s"] >= 0.02 or rep["window_s"] >= 5
    # Paced: about the offered rate, not as fast as possible (generous bounds).
    assert rep["sent"] <= 4000 * rep["window_s"] * 1.5 + 20


def test_latency_round_trips(make_server: Any) -> None:
    srv = make_server(target=BENCH_APP, env=bench_env())
    code, rep, out = wse_bench("latency", "--url", srv.url, "--connections", "4", "--rate", "400",
                               "--duration-s", "0.5", "--warmup-s", "0.1")
    assert code == 0, out
    assert rep is not None and rep["ok"] is True and rep["received"] == rep["sent"] > 0
    lat = rep["latency"]
    assert lat["count"] > 0 and lat["p50_us"] <= lat["p99_us"] <= lat["max_us"]


def test_handshake_with_jwt(make_server: Any) -> None:
    srv = make_server(target=BENCH_APP, env=bench_env({"WSE_BENCH_JWT_SECRET": SECRET}))
    code, rep, out = wse_bench("handshake", "--url", srv.url, "--count", "30", "--concurrency", "3",
                               "--jwt-secret", SECRET, "--jwt-sub", "alice")
    assert code == 0, out
    assert rep is not None and rep["succeeded"] == 30 and rep["failed"] == 0
    assert rep["first_frame_types"] == {"server_ready": 30}
    # A token signed with another key: refused by the server, reported as failures (exit 1).
    code, rep, out = wse_bench("handshake", "--url", srv.url, "--count", "5",
                               "--jwt-secret", "another-secret-0123456789abcdef-012345")
    assert code == 1, out
    assert rep is not None and rep["succeeded"] == 0 and rep["failed"] == 5


def test_fanout_many_topics_per_user_sends(make_server: Any) -> None:
    """Each subscriber on its own topic (and the shared one): it gets its own messages only."""
    srv = make_server(target=BENCH_APP, env=bench_env())
    code, rep, out = wse_bench("fanout", "--url", srv.url, "--subscribers", "15", "--messages", "40",
                               "--topic-per-subscriber", "u.")
    assert code == 0, out
    assert rep is not None and rep["ok"] is True and rep["topic_per_subscriber"] == "u."
    r = rep["rounds"][0]
    assert r["deliveries"] == 15 * 40 and r["duplicates"] == 0 and r["missing"] == 0
    assert r["server_messages"][0]["p"]["published"] == 15 * 40
