"""``wse bench``: the load generator in the wheel, run against a real server (the benchmark app)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from wse import _runtime

from .conftest import ROOT, SECRET

pytestmark = pytest.mark.skipif(not hasattr(_runtime, "loadgen"), reason="engine built without the loadgen feature")

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
    for sub in ("fanout", "inbound", "latency", "handshake", "idle"):
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
    assert s["server_cpu_s"] >= 0 and "per_server_cpu_s" in s
    assert 0 <= s["generator_cpu_share"]


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
