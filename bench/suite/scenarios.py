"""The scenarios: each runs ``wse-loadgen`` on core 1 against one started server and returns samples.

A sample is one measured value of a scenario (a fan-out round, an inbound or latency run, an
idle-memory reading) with the figures the report shows: ``rate`` (per wall second), ``per_cpu``
(per server CPU-second: every thread of every process of the server, from the scheduler's
nanosecond counters ``/proc/PID/task/*/schedstat``), ``gen_share`` (the generator's CPU share of
its core), ``ok`` with ``why`` (everything the sample claims happened: all connections opened,
every delivery checked, a window of enough server CPU; the CPU of server threads that exit inside
a window is taken from the process's tick counter, the only place it is left) and
``counted`` with ``note`` (a clean sample that may enter a median: for fan-out, only when the
generator stayed well under one core and the server was steady).

Every server is warmed before its measured samples: fan-out rounds (inbound runs) are repeated
until two in a row cost the same server CPU per delivery (message) within 5%, at most
``max_warmup`` of them; a server that never settles is said to be so, and its samples are not
counted. The first round (run) after the server's start is kept apart as the cold figure.
"""

from __future__ import annotations

import json
import select
import signal
import statistics
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
    fanout_rounds: int  # measured rounds per server start
    fanout_starts: int  # server starts per fan-out figure
    target_cpu_s: float  # server CPU each measured window is sized to
    min_cpu_s: float  # a window with less server CPU is not clean
    max_warmup: int  # warm-up rounds (runs) at most before the measured ones
    inbound_pipe_conns: int
    inbound_seg_conns: tuple[int, ...]
    inbound_paced_rate: float  # messages/s offered in all by the paced one-frame-per-write clients
    inbound_s: float
    latency_conns: int
    latency_rates: tuple[float, ...]
    latency_s: float
    handshake_count: int
    idle_conns: tuple[int, ...]
    runs: int
    topics_conns: int = 10_000
    fanout_max_messages: int = 1_000_000
    cluster_subs: int = 1000
    cluster_workers: tuple[int, ...] = (1, 2)
    gen_max_share: float = 0.75  # fan-out counts only while the generator used less of its core
    # Fan-out: every K-th subscriber (and the publisher) checks every delivery; the others count
    # bytes (recv with MSG_TRUNC: no copy), which keeps the generator well under its core.
    check_every: int = 10
    # The same for E2E with batch keys: a checked subscriber opens (AES-GCM) every delivery, which
    # costs the generator more than the server's one seal per publication; fewer are checked.
    e2e_check_every: int = 50
    # Messages per publish request at most (about 4 MB of frames per subscriber): a round is asked
    # for in bursts, each once the subscribers hold the earlier ones, within every server's
    # per-connection queue (wse's default budget is 16 MiB).
    burst_messages: int = 20_000
    stable_within: float = 0.05


QUICK = Shape(fanout_subs=(100, 1000, 10000), fanout_rounds=3, fanout_starts=1, target_cpu_s=1.2, min_cpu_s=1.0,
              max_warmup=10, inbound_pipe_conns=100, inbound_seg_conns=(100, 1000), inbound_paced_rate=100_000.0,
              inbound_s=1.0, latency_conns=50, latency_rates=(2000.0, 20000.0), latency_s=2.0,
              handshake_count=2000, idle_conns=(10000,), runs=3)
FULL = Shape(fanout_subs=(100, 1000, 10000), fanout_rounds=3, fanout_starts=3, target_cpu_s=2.0, min_cpu_s=1.0,
             max_warmup=10, inbound_pipe_conns=100, inbound_seg_conns=(100, 1000), inbound_paced_rate=100_000.0,
             inbound_s=3.0, latency_conns=50, latency_rates=(2000.0, 20000.0), latency_s=10.0,
             handshake_count=4000, idle_conns=(10000, 50000), runs=5)
SMOKE = Shape(fanout_subs=(20, 100), fanout_rounds=3, fanout_starts=1, target_cpu_s=0.02, min_cpu_s=0.002,
              max_warmup=3, inbound_pipe_conns=10, inbound_seg_conns=(10,), inbound_paced_rate=2000.0,
              inbound_s=0.2, latency_conns=5, latency_rates=(300.0,), latency_s=0.5, handshake_count=50,
              idle_conns=(200,), runs=3, topics_conns=100, fanout_max_messages=6000, cluster_subs=40)


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
    path = "/connection/websocket" if server.name == "centrifugo" else "/wse"
    args = ["--url", f"ws://127.0.0.1:{server.port}{path}", "--server-pid", ",".join(map(str, server.pids()))]
    if url_sources > 1:
        args += ["--sources", str(url_sources)]
    if server.jwt:
        args += ["--jwt-secret", JWT_SECRET]
    return args


def window_faults(rep: dict[str, Any], shape: Shape) -> list[str]:
    """What makes a measured window unclean on the CPU side."""
    why = []
    cpu = rep.get("server_cpu_s")
    if cpu is None:
        why.append("no server CPU reading")
    elif cpu < shape.min_cpu_s:
        why.append(f"window of {cpu:.3f} s of server CPU, under {shape.min_cpu_s} s")
    if rep.get("server_threads_gone") and "server_exited_threads_cpu_s" not in rep:
        why.append(f"{rep['server_threads_gone']} server thread(s) exited in the window (their CPU is lost)")
    return why


def _sample(rate: float, per_cpu: float | None, rep: dict[str, Any], why: list[str], **extra: Any) -> dict[str, Any]:
    return {"rate": rate, "per_cpu": per_cpu, "gen_share": rep.get("generator_cpu_share"),
            "lower_bound": bool(rep.get("lower_bound") or rep.get("generator_saturated")),
            "server_cpu_s": rep.get("server_cpu_s"), "ok": not why, "why": "; ".join(why),
            "counted": not why, "note": "", **extra}


def steady_state(run_one: Any, shape: Shape, cost_key: str = "cost") -> tuple[dict[str, Any], list[dict[str, Any]],
                                                                               bool, int]:
    """Cold run, then warm-up runs until two in a row agree within ``stable_within`` on server CPU per
    unit of work (at most ``max_warmup``). Returns (cold, warm-up runs, steady, warm-up count)."""
    cold = run_one()
    warm: list[dict[str, Any]] = []
    last = None
    for _ in range(shape.max_warmup):
        r = run_one()
        warm.append(r)
        c = r.get(cost_key)
        if not r.get("ok") or not c:
            last = None
            continue
        if last and abs(c - last) <= shape.stable_within * last:
            return cold, warm, True, len(warm)
        last = c
    return cold, warm, False, len(warm)


def fanout(lg: Loadgen, server: Server, shape: Shape, subs: int, per_user: bool = False,
           frame_bytes: int = 0, encrypt: str = "", deflate: bool = False) -> tuple[list[dict[str, Any]], list[Any]]:
    """One generator run on one server start: a cold round, warm-up rounds until steady, then
    ``fanout_rounds`` measured rounds, each sized to about ``target_cpu_s`` of server CPU.
    ``per_user``: the many-topics shape (each subscriber also on its own topic, per-user sends).
    ``frame_bytes``: the same-bytes variant (every peer pads its frames to this size).
    ``encrypt``: wse's E2E encryption (wse only): ``"batch"`` announces batch keys (each
    publication sealed once under the topic's key, the same bytes to every subscriber: every 10th subscriber opens every delivery,
    the others count bytes), ``"conn"`` does not (every frame sealed per connection: every
    subscriber opens every delivery).
    ``deflate``: the generator offers permessage-deflate as browsers do and inflates every
    compressed delivery (every subscriber checked); a connection without it is not clean."""
    sources = 8 if subs > 2000 else 1
    extra = ["--topic-per-subscriber", "u."] if per_user else []
    if frame_bytes:
        extra += ["--frame-bytes", str(frame_bytes)]
    if encrypt == "conn":  # WSE E2E sealed per connection: every subscriber opens every delivery
        extra += ["--encrypt", "--no-batch-keys"]
    elif encrypt:  # WSE E2E with batch keys: every subscriber does the key exchange
        extra += ["--encrypt", "--check-every", str(shape.e2e_check_every)]
    elif deflate:
        extra += ["--permessage-deflate"]
    elif shape.check_every > 1:
        extra += ["--check-every", str(shape.check_every)]
    if server.name == "centrifugo":  # its client protocol; publications as client publish commands
        extra += ["--centrifugo"]
    args = ["fanout", *common(server, sources), *extra, "--subscribers", str(subs),
            "--messages", str(max(5, 20_000 // subs)), "--rounds", str(shape.fanout_rounds),
            "--max-warmup", str(shape.max_warmup), "--stable-within", str(shape.stable_within),
            "--target-server-cpu-s", str(shape.target_cpu_s), "--min-messages", "5",
            "--max-messages", str(shape.fanout_max_messages), "--burst-messages", str(shape.burst_messages),
            "--connect-concurrency", "256",
            "--timeout-s", "120", "--idle-timeout-s", "10"]
    rep = lg.run(args, timeout=900)
    connected, want = rep.get("connected", 0), rep.get("subscribers", subs)
    setup_faults = [] if connected == want else [f"only {connected:,} of {want:,} connections opened"]
    agreed = (rep.get("permessage_deflate") or {}).get("agreed", 0)
    if deflate and agreed != connected:
        setup_faults.append(f"permessage-deflate agreed on {agreed:,} of {connected:,} connections")
    steady = rep.get("steady")
    samples = []
    for r in rep.get("rounds", []):
        if r.get("warmup") and not r.get("cold"):
            continue
        why = list(setup_faults)
        if not r.get("ok"):
            bad = [f"{k} {r[k]}" for k in ("missing", "duplicates", "gaps", "reordered", "out_of_range",
                                            "verify_failed", "closed_subscribers", "byte_counted_short",
                                            "byte_counted_extra", "byte_counted_closed",
                                            "checked_byte_counts_disagree") if r.get(k)]
            bad += [k for k in ("timed_out", "stalled") if r.get(k)]
            why.append("deliveries not all checked: " + (", ".join(bad) or "round not ok"))
        if not r.get("cold"):
            why += window_faults(r, shape)
        s = _sample(r.get("deliveries_per_s", 0.0), r.get("per_server_cpu_s"), r, why,
                    messages=r.get("messages"), deliveries=r.get("deliveries"), cold=bool(r.get("cold")),
                    p99_us=(r.get("latency_from_publish") or {}).get("p99_us"),
                    frame_bytes=r.get("avg_frame_payload_bytes"), wire_bytes=r.get("wire_bytes_per_delivery"),
                    compressed=(r.get("compressed_deliveries") or 0) / (r.get("deliveries") or 1))
        if s["cold"]:
            s["counted"] = False
            s["note"] = "cold"
        elif s["ok"]:
            notes = []
            if (s["gen_share"] or 0) >= shape.gen_max_share and server.name != "floor":
                notes.append(f"generator at {s['gen_share']:.0%} of its core: a lower bound, not counted")
            if steady is False:
                notes.append(f"never steady in {rep.get('steady_after_rounds')} warm-up rounds: not counted")
            s["counted"] = not notes
            s["note"] = "; ".join(notes)
        samples.append(s)
    brief = {k: rep.get(k) for k in ("ok", "connected", "connect_failures", "connect_errors", "setup_s",
                                     "server_ready", "messages_measured", "steady", "warmup_rounds",
                                     "permessage_deflate")}
    if not samples:
        raise RuntimeError(f"no measured round: {json.dumps(brief)[:300]}")
    return samples, [brief]


def _inbound_once(lg: Loadgen, server: Server, shape: Shape, conns: int, paced: bool) -> dict[str, Any]:
    args = ["inbound", *common(server), "--connections", str(conns), "--messages-per-conn", "100000000",
            "--duration-s", str(shape.inbound_s), "--min-server-cpu-s", str(shape.target_cpu_s),
            "--max-duration-s", "20", "--stats-msg", '{"t":"bench.stats"}', "--max-in-flight", "50000",
            "--connect-concurrency", "256"]
    if paced:
        args += ["--one-per-write", "--rate", str(shape.inbound_paced_rate)]
    rep = lg.run(args, timeout=180)
    processed = rep.get("processed") or 0
    rep["cost"] = (rep.get("server_cpu_s") or 0) / processed if processed else None
    return rep


def _mark_unsteady(s: dict[str, Any], cold: bool, steady: bool, n: int) -> None:
    """A run-based scenario's sample: the first (cold) run and a run of a server that never
    settled are shown but not counted."""
    if cold:
        s.update(counted=False, note="cold")
    elif s["ok"] and not steady:
        s.update(counted=False, note=f"never steady in {n} warm-up runs: not counted")


def inbound(lg: Loadgen, server: Server, shape: Shape, conns: int, paced: bool) -> tuple[list[dict[str, Any]], list[Any]]:
    """Messages the server's Python handler counted, per second and per server CPU-second.
    ``paced``: one frame per write (TCP_NODELAY: one message per segment) from ``conns`` clients
    each paced at its share of ``inbound_paced_rate``; else pipelined (64 frames per write, as
    fast as the server takes them, at most 50,000 in flight)."""
    cold, warm, steady, n = steady_state(lambda: _inbound_once(lg, server, shape, conns, paced), shape)
    samples, raw = [], []
    for i, rep in enumerate([cold] + [_inbound_once(lg, server, shape, conns, paced) for _ in range(shape.runs)]):
        why = []
        if rep.get("connected") != conns:
            why.append(f"only {rep.get('connected', 0):,} of {conns:,} connections opened")
        if not rep.get("ok"):
            why.append(f"not every message processed: sent {rep.get('sent')}, the handler counted "
                       f"{rep.get('processed')}{', stalled' if rep.get('stalled') else ''}")
        if i > 0:
            why += window_faults(rep, shape)
        s = _sample(rep.get("processed_per_s", 0.0), rep.get("per_server_cpu_s"), rep, why, cold=i == 0,
                    processed=rep.get("processed"), sent=rep.get("sent"), offered=rep.get("offered_rate"))
        _mark_unsteady(s, i == 0, steady, n)
        samples.append(s)
        raw.append({k: rep.get(k) for k in ("ok", "connected", "sent", "processed", "stalled", "window_s")})
    raw.append({"steady": steady, "warmup_runs": n})
    return samples, raw


def latency(lg: Loadgen, server: Server, shape: Shape, rate: float) -> tuple[list[dict[str, Any]], list[Any]]:
    samples, raw = [], []
    for i in range(shape.runs + 1):  # the first run warms the server: reported as cold
        rep = lg.run(["latency", *common(server), "--connections", str(shape.latency_conns),
                      "--rate", str(rate), "--duration-s", str(shape.latency_s), "--warmup-s", "0.5"], timeout=120)
        lat = rep.get("latency") or {}
        why = []
        if not rep.get("ok", True):
            why.append(f"round trips lost: sent {rep.get('sent')}, received {rep.get('received')}")
        if not lat.get("count"):
            why.append("no round trip measured")
        wall = rep.get("window_s") or 0.0
        s = _sample(rep.get("received", 0) / wall if wall else 0.0, rep.get("per_server_cpu_s"), rep, why,
                    cold=i == 0, p50_us=lat.get("p50_us"), p99_us=lat.get("p99_us"),
                    p99_9_us=lat.get("p99_9_us"), max_us=lat.get("max_us"))
        if i == 0:
            s.update(counted=False, note="cold")
        samples.append(s)
        raw.append({k: rep.get(k) for k in ("ok", "sent", "received", "unmatched")})
    return samples, raw


def _handshake_once(lg: Loadgen, server: Server, count: int, concurrency: int) -> dict[str, Any]:
    """One generator run: ``count`` connections, ``concurrency`` at a time, each closed after its
    first server frame. ``cost``: server CPU-seconds per connection (for ``steady_state``)."""
    sources = 4 if count > 5000 else 1  # each closed connection holds a port in TIME_WAIT a while
    rep = lg.run(["handshake", *common(server, sources), "--count", str(count), "--concurrency", str(concurrency)],
                 timeout=300)
    ok = rep.get("succeeded") or 0
    rep["cost"] = rep["server_cpu_s"] / ok if ok and rep.get("server_cpu_s") else None
    return rep


def _handshake_faults(rep: dict[str, Any]) -> list[str]:
    """A run is clean only if every connection was accepted and its first frame was ``server_ready``
    (an auth error or a close would time something else)."""
    why = []
    n = rep.get("count")
    if rep.get("failed", 1):
        why.append(f"{rep.get('failed')} of {n} handshakes failed")
    types = rep.get("first_frame_types") or {}
    if types.get("server_ready", 0) != n:
        why.append(f"server_ready first on {types.get('server_ready', 0)} of {n} connections ({types})")
    return why


def handshake(lg: Loadgen, server: Server, shape: Shape) -> tuple[list[dict[str, Any]], list[Any]]:
    """JWT handshakes: TCP connect, upgrade with the token, verification, first server frame
    (``server_ready``), close. Eight at a time for the rate and the CPU per connection: a cold run
    of ``handshake_count`` connections, then runs sized to about ``target_cpu_s`` of server CPU,
    repeated until two agree on CPU per connection (``steady_state``), then ``runs`` measured ones.
    Then one connection at a time (``serial``): p50 and p99 from the start of the TCP connect to
    ``server_ready``, the latency target's shape."""
    cold = _handshake_once(lg, server, shape.handshake_count, 8)
    per_conn = cold.get("cost") or 1e-4
    count = int(min(60_000, max(shape.handshake_count, shape.target_cpu_s / per_conn)))
    _, warm, steady, n = steady_state(lambda: _handshake_once(lg, server, count, 8), shape)
    # Re-sized from the warm cost (a warm server spends less per connection than a cold one).
    per_conn = next((w["cost"] for w in reversed(warm) if w.get("cost")), per_conn)
    count = int(min(60_000, max(shape.handshake_count, shape.target_cpu_s / per_conn)))
    samples, raw = [], []
    for i, rep in enumerate([cold] + [_handshake_once(lg, server, count, 8) for _ in range(shape.runs)]):
        first = rep.get("first_frame") or {}
        why = _handshake_faults(rep)
        if i > 0:
            why += window_faults(rep, shape)
        s = _sample(rep.get("connections_per_s", 0.0), rep.get("per_server_cpu_s"), rep, why, cold=i == 0,
                    p50_us=first.get("p50_us"), p99_us=first.get("p99_us"), connections=rep.get("count"))
        _mark_unsteady(s, i == 0, steady, n)
        samples.append(s)
        raw.append({k: rep.get(k) for k in ("ok", "count", "succeeded", "failed", "failures", "first_frame_types",
                                             "server_cpu_s")})
    raw.append({"steady": steady, "warmup_runs": n, "warmup_costs": [w.get("cost") for w in warm]})
    # One connection at a time: the latency target (p50, p99 from TCP connect to server_ready).
    for _ in range(shape.runs):
        rep = _handshake_once(lg, server, max(50, shape.handshake_count), 1)
        first = rep.get("first_frame") or {}
        why = _handshake_faults(rep)
        s = _sample(rep.get("connections_per_s", 0.0), rep.get("per_server_cpu_s"), rep, why, serial=True,
                    p50_us=first.get("p50_us"), p99_us=first.get("p99_us"), connections=rep.get("count"))
        samples.append(s)
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
        # Steady state: the server may still be handing the last connects to Python; read until
        # two readings half a second apart agree within 16 KiB (at most 10 s).
        time.sleep(1.0)
        rss = rss_kib(server.pids())
        for _ in range(20):
            time.sleep(0.5)
            again = rss_kib(server.pids())
            if abs(again - rss) <= 16:
                rss = again
                break
            rss = again
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
    opened = int(event.get("connections", 0))
    ready = int(event.get("ready", opened))
    why = []
    if opened != n or event.get("failed"):
        why.append(f"only {opened:,} of {n:,} connections opened ({event.get('failed', 0)} failed)")
    if ready != opened:
        why.append(f"first frame (server_ready) on only {ready:,} of {opened:,} connections")
    per_conn = (rss - base) * 1024 / opened if opened else None
    return {"rate": per_conn, "per_cpu": None, "gen_share": None, "lower_bound": False, "ok": not why,
            "why": "; ".join(why), "counted": not why, "note": "", "opened": opened, "rss_kib": rss,
            "base_kib": base, "open_s": event.get("open_s"), "ready": ready}


def median_frame_bytes(samples: list[dict[str, Any]]) -> int:
    v = [s["frame_bytes"] for s in samples if s.get("frame_bytes")]
    return int(round(statistics.median(v))) if v else 0


def fd_limit() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]
