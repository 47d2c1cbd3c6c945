"""Prometheus /metrics of a single process (``wse run --metrics-bind``, ``app.serve(metrics=)``)
built with prometheus-client: valid exposition (``promtool check metrics``), every engine counter
exported, label values escaped. And the engine's log lines reaching Python's ``logging``."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
import urllib.request

from websockets.asyncio.client import connect

from tests.cluster_util import promtool
from tests.conftest import ROOT, make_token, subscribe_msg
from wse import JWTConfig, WSEApp, WSEConfig
from wse.metrics import WorkerSample, exported_stats_keys, family_names, parse, render

SECRET = "metrics-test-secret-0123456789abcdef"


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return r.read().decode()


def promtool_ok(text: str) -> None:
    r = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def value(text: str, name: str, **labels: str) -> float:
    got = [v for n, lab, v in parse(text) if n == name and all(lab.get(k) == x for k, x in labels.items())]
    assert got, f"{name}{labels} not in the scrape"
    return sum(got)


def test_wse_run_serves_metrics_in_one_process() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), WSE_TEST_CONFIG="{}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "wse_cli.main", "run", "tests.apps.testapp:app", "--port", "0",
         "--metrics-bind", "127.0.0.1:0", "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        words = proc.stdout.readline().split()
        url, metrics_url = words[2], words[-1]
        assert url.startswith("ws://") and metrics_url.endswith("/metrics"), words

        async def traffic() -> None:
            async with connect(url) as ws:
                await ws.recv()  # server_ready
                await ws.send(subscribe_msg(["room"]))
                await ws.recv()

        asyncio.run(traffic())
        text = scrape(metrics_url)
        promtool_ok(text)
        assert value(text, "wse_connections_accepted_total", worker="0") >= 1
        assert value(text, "wse_worker_up", worker="0") == 1
        # A single process has no supervisor: no slot count, no restarts.
        assert "wse_workers " not in text and "wse_worker_restarts_total" not in text
        with urllib.request.urlopen(metrics_url.replace("/metrics", "/healthz"), timeout=5) as r:
            assert r.status == 200
    finally:
        proc.terminate()
        code = proc.wait(15)
        assert proc.stdout is not None
        proc.stdout.close()
    assert code == 0


def test_app_serve_metrics_exports_every_engine_counter() -> None:
    app = WSEApp(WSEConfig(port=0, jwt=JWTConfig(secret=SECRET)))
    token = make_token(secret=SECRET)

    async def main() -> tuple[str, dict[str, int]]:
        task = asyncio.ensure_future(app.serve(metrics="127.0.0.1:0"))
        deadline = time.monotonic() + 10
        while app.metrics_address is None:
            assert time.monotonic() < deadline and not task.done(), "metrics never served"
            await asyncio.sleep(0.01)
        host, port = app.address or ("", 0)
        async with connect(f"ws://{host}:{port}/wse", additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            await ws.recv()  # server_ready
        url = "http://%s:%d/metrics" % app.metrics_address
        text = await asyncio.to_thread(scrape, url)
        stats = app.stats()
        app.stop()
        await task
        return text, stats

    text, stats = asyncio.run(main())
    promtool_ok(text)
    # Every counter and gauge the engine keeps is read by some family...
    missing = sorted(set(stats) - exported_stats_keys())
    assert missing == [], f"engine counters not exported: {missing}"
    # ...and the three that were once left out are there.
    for name in ("wse_rate_limit_warnings_total", "wse_e2e_key_exchange_timeouts_total", "wse_presence_refused_total"):
        assert value(text, name, worker="0") == 0
    assert value(text, "wse_handshakes_total", worker="0") == 1
    # Every family written is one the dashboard test knows.
    written = {n.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for n, _, _ in parse(text)}
    assert written <= family_names()


def test_label_values_are_escaped() -> None:
    odd = 'peer "a"\\b\nc'
    mesh = {"peers": [{"slot": odd}], "per_peer": [{"slot": odd, "messages_in": 1, "messages_out": 2, "bytes_in": 3,
                                                    "bytes_out": 4}],
            "dropped": 0, "transit_buckets_ns": [1000], "transit_counts": [1, 0], "transit_sum_ns": 10}
    text = render([WorkerSample(0, up=True, restarts=0, stats={"connections_active": 1}, mesh=mesh)])
    assert 'peer="peer \\"a\\"\\\\b\\nc"' in text
    assert ("wse_mesh_messages_total", {"worker": "0", "peer": odd, "direction": "out"}, 2.0) in parse(text)
    promtool_ok(text)


def test_engine_log_lines_reach_python_logging() -> None:
    """A refused handshake is one debug line on ``wse.access``, from the engine's thread through
    the log queue to ``logging``; the query string (which may hold a token) is left out."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    access = logging.getLogger("wse.access")
    handler = Keep()
    access.addHandler(handler)
    access.setLevel(logging.DEBUG)
    app = WSEApp(WSEConfig(port=0))
    try:
        async def main() -> None:
            task = asyncio.ensure_future(app.serve())
            while app.address is None:
                await asyncio.sleep(0.01)
            host, port = app.address
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET /nowhere?token=s3cret HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.readline()).startswith(b"HTTP/1.1 404")
            writer.close()
            deadline = time.monotonic() + 10
            while not any("404" in r.getMessage() for r in records):
                assert time.monotonic() < deadline, f"no access line: {[r.getMessage() for r in records]}"
                await asyncio.sleep(0.02)
            app.stop()
            await task

        asyncio.run(main())
    finally:
        access.removeHandler(handler)
        access.setLevel(logging.NOTSET)
    line = next(r for r in records if "404" in r.getMessage())
    assert line.levelno == logging.DEBUG and line.name == "wse.access"
    assert '"/nowhere" 404 bad path' in line.getMessage()
    assert "s3cret" not in line.getMessage()
