"""The scenarios: each runs ``wse-loadgen`` on core 1 against one started server and returns samples.

A sample is one measured value of the scenario (a fan-out round, an inbound or latency run, an
idle-memory reading) with the figures the report shows: ``rate`` (per wall second),
``per_cpu`` (per server CPU-second, all the server's processes and threads), ``gen_share`` (the
generator's CPU share of its core) and ``lower_bound`` (the generator was at 90% or more).
"""

from __future__ import annotations

import json
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from .servers import JWT_SECRET, Server, rss_kib

GEN_CORE = "1"


@dataclass(frozen=True)
class Shape:
    """One mode's sizes (quick, full, smoke)."""

    fanout_subs: tuple[int, ...]
    fanout_round_s: float
    fanout_rounds: int
    inbound_conns: int
    inbound_s: float
    latency_conns: int
    latency_rate: float
    latency_s: float
    handshake_count: int
    idle_conns: tuple[int, ...]
    runs: int
    topics_conns: int = 10_000
    fanout_max_messages: int = 100_000


QUICK = Shape(fanout_subs=(100, 1000, 10000), fanout_round_s=0.4, fanout_rounds=3, inbound_conns=100,
              inbound_s=1.0, latency_conns=50, latency_rate=2000.0, latency_s=1.5, handshake_count=2000,
              idle_conns=(10000,), runs=3)
FULL = Shape(fanout_subs=(100, 1000, 10000), fanout_round_s=2.0, fanout_rounds=3, inbound_conns=100,
             inbound_s=4.0, latency_conns=50, latency_rate=5000.0, latency_s=10.0, handshake_count=4000,
             idle_conns=(10000, 50000), runs=3)
SMOKE = Shape(fanout_subs=(20, 100), fanout_round_s=0.05, fanout_rounds=3, inbound_conns=10, inbound_s=0.2,
              latency_conns=5, latency_rate=300.0, latency_s=0.5, handshake_count=50, idle_conns=(200,), runs=3, topics_conns=100,
              fanout_max_messages=2000)


class Loadgen:
    """How to run the generator: the built binary, or ``wse bench`` (the same code in the wheel)."""

    def __init__(self, argv0: list[str]) -> None:
        self.argv0 = argv0

    def cmd(self, args: list[str]) -> list[str]:
        return ["taskset", "-c", GEN_CORE, *self.argv0, *args]

    def run(self, args: list[str], timeout: float) -> dict[str, Any]:
        """One run; its JSON report (the last stdout line). Raises on no report."""
        p = subprocess.run(self.cmd(args), capture_output=True, text=True, timeout=timeout)
        lines = [x for x in p.stdout.splitlines() if x.startswith("{")]
        if not lines:
            raise RuntimeError(f"loadgen exit {p.returncode}: {p.stderr.strip()[-300:]}")
        out: dict[str, Any] = json.loads(lines[-1])
        return out


def common(server: Server, url_sources: int = 1) -> list[str]:
    args = ["--url", f"ws://127.0.0.1:{server.port}/wse", "--server-pid", ",".join(map(str, server.pids()))]
    if url_sources > 1:
        args += ["--sources", str(url_sources)]
    if server.jwt:
        args += ["--jwt-secret", JWT_SECRET]
    return args


def _sample(rate: float, per_cpu: float | None, rep: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"rate": rate, "per_cpu": per_cpu, "gen_share": rep.get("generator_cpu_share"),
            "lower_bound": bool(rep.get("lower_bound") or rep.get("generator_saturated")),
            "server_cpu_s": rep.get("server_cpu_s"), **extra}


def fanout(lg: Loadgen, server: Server, shape: Shape, subs: int,
           per_user: bool = False) -> tuple[list[dict[str, Any]], list[Any]]:
    """One invocation: 2 warm-up rounds (they size the measured ones) then ``fanout_rounds``.
    ``per_user``: the many-topics shape (each subscriber also on its own topic, per-user sends)."""
    sources = 8 if subs > 2000 else 1
    extra = ["--topic-per-subscriber", "u."] if per_user else []
    args = ["fanout", *common(server, sources), *extra, "--subscribers", str(subs), "--messages", str(max(5, 20_000 // subs)),
            "--rounds", str(2 + shape.fanout_rounds), "--warmup", "2", "--target-round-s", str(shape.fanout_round_s),
            "--min-messages", "5", "--max-messages", str(shape.fanout_max_messages), "--connect-concurrency", "256",
            "--timeout-s", "60", "--idle-timeout-s", "5"]
    rep = lg.run(args, timeout=240)
    samples = []
    for r in rep.get("rounds", []):
        if r.get("warmup"):
            continue
        samples.append(_sample(r.get("deliveries_per_s", 0.0), r.get("per_server_cpu_s"), r, ok=bool(r.get("ok")),
                               messages=r.get("messages"), deliveries=r.get("deliveries"),
                               missing=r.get("missing"), duplicates=r.get("duplicates"), gaps=r.get("gaps"),
                               p99_us=(r.get("latency_from_publish") or {}).get("p99_us"),
                               frame_bytes=r.get("avg_frame_payload_bytes")))
    brief = {k: rep.get(k) for k in ("ok", "connected", "connect_failures", "connect_errors", "setup_s",
                                     "server_ready", "messages_measured")}
    if not samples:
        raise RuntimeError(f"no measured round: {json.dumps(brief)[:300]}")
    return samples, [brief]


def inbound(lg: Loadgen, server: Server, shape: Shape) -> tuple[list[dict[str, Any]], list[Any]]:
    samples, raw = [], []
    for _ in range(shape.runs):
        rep = lg.run(["inbound", *common(server), "--connections", str(shape.inbound_conns),
                      "--messages-per-conn", "100000000", "--duration-s", str(shape.inbound_s),
                      "--stats-msg", '{"t":"bench.stats"}', "--max-in-flight", "50000"], timeout=120)
        samples.append(_sample(rep.get("processed_per_s", 0.0), rep.get("per_server_cpu_s"), rep,
                               ok=bool(rep.get("ok")), processed=rep.get("processed"), sent=rep.get("sent")))
        raw.append({k: rep.get(k) for k in ("ok", "connected", "sent", "processed", "stalled", "window_s")})
    return samples, raw


def latency(lg: Loadgen, server: Server, shape: Shape) -> tuple[list[dict[str, Any]], list[Any]]:
    samples, raw = [], []
    for _ in range(shape.runs):
        rep = lg.run(["latency", *common(server), "--connections", str(shape.latency_conns),
                      "--rate", str(shape.latency_rate), "--duration-s", str(shape.latency_s),
                      "--warmup-s", "0.5"], timeout=120)
        lat = rep.get("latency") or {}
        ok = bool(rep.get("ok", True)) and lat.get("count", 0) > 0
        wall = rep.get("window_s") or 0.0
        samples.append(_sample(rep.get("received", 0) / wall if wall else 0.0, rep.get("per_server_cpu_s"),
                               rep, ok=ok, p50_us=lat.get("p50_us"), p99_us=lat.get("p99_us"),
                               p99_9_us=lat.get("p99_9_us"), max_us=lat.get("max_us")))
        raw.append({k: rep.get(k) for k in ("ok", "sent", "received", "unmatched")})
    return samples, raw


def handshake(lg: Loadgen, server: Server, shape: Shape) -> tuple[list[dict[str, Any]], list[Any]]:
    samples, raw = [], []
    for _ in range(shape.runs):
        rep = lg.run(["handshake", *common(server), "--count", str(shape.handshake_count), "--concurrency", "8"],
                     timeout=120)
        first = rep.get("first_frame") or {}
        ok = bool(rep.get("ok")) and rep.get("failed", 1) == 0 and first.get("count", 0) == rep.get("count")
        samples.append(_sample(rep.get("connections_per_s", 0.0), rep.get("per_server_cpu_s"), rep, ok=ok,
                               p50_us=first.get("p50_us"), p99_us=first.get("p99_us")))
        raw.append({k: rep.get(k) for k in ("ok", "succeeded", "failed", "failures", "first_frame_types")})
    return samples, raw


def idle(lg: Loadgen, server: Server, n: int) -> dict[str, Any]:
    """One reading: the server's RSS (all its processes) over its baseline with ``n`` idle connections."""
    base = rss_kib(server.pids())
    sources = max(1, (n + 19_999) // 20_000) * 4
    p = subprocess.Popen(lg.cmd(["idle", *common(server, sources), "--connections", str(n), "--hold-s", "120",
                                 "--connect-concurrency", "256"]),
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert p.stdout is not None
    deadline = time.monotonic() + 120
    event: dict[str, Any] = {}
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([p.stdout], [], [], 1.0)
            if not r:
                if p.poll() is not None:
                    break
                continue
            line = p.stdout.readline()
            if not line:
                break
            if '"all_open"' in line:
                event = json.loads(line)
                break
        if not event:
            raise RuntimeError("the generator did not open its connections")
        time.sleep(1.0)
        rss = rss_kib(server.pids())
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
    opened = int(event.get("connections", 0))
    per_conn = (rss - base) * 1024 / opened if opened else None
    return {"rate": per_conn, "per_cpu": None, "gen_share": None, "lower_bound": False,
            "ok": opened == n and not event.get("failed"), "opened": opened, "rss_kib": rss, "base_kib": base,
            "open_s": event.get("open_s")}


def fd_limit() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]

