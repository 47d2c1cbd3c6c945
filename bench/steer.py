"""``wse run --workers 2 --steer-cpu`` against plain SO_REUSEPORT: connection setup, fan-out, echo latency.

    python bench/steer.py            # the full set: 3 runs of 4 configurations, about 2 minutes
    python bench/steer.py --quick    # the same, smaller: about 1 minute, for checking the harness

Configurations, interleaved run by run (the order reverses every other run), each a fresh
``wse run wse_app:app --workers 2`` (workers pinned to CPUs 0 and 1, through
``bench/suite/cluster.py``'s ``ClusterServer``):

- policy ``hash``: plain SO_REUSEPORT (the kernel picks the worker by a hash of the 4-tuple);
  policy ``steer``: ``--steer-cpu`` (a classic BPF program picks the worker on the CPU that
  processed the connection's packets);
- clients ``c1``: one ``wse-loadgen`` process pinned to CPU 1; ``c01``: two, pinned to CPU 0
  and CPU 1, each with half the work.

Per configuration and run:

a. connection setup: ``wse-loadgen handshake``: N connects (K in flight per generator), each
   upgraded, its ``server_ready`` read, then closed. Handshakes/s (wall), handshakes per worker
   CPU-second, first-frame p50/p99, and where they landed (per-worker ``wse_handshakes_total``).
b. echo latency: ``wse-loadgen latency`` (open loop, fixed offered rate) through the app's
   ``echo`` handler: p50/p99/p99.9 and messages per worker CPU-second.
c. fan-out (``c1`` only, one ``wse-loadgen fanout`` on CPU 1, through
   ``bench/suite/cluster.py``'s ``client``): S subscribers, M messages; deliveries per worker
   CPU-second, and how many subscribers each worker held (the supervisor's per-worker
   ``wse_connections_active`` gauge, polled while the client runs).

Server CPU is the two worker processes' utime + stime (/proc/PID/stat), not the supervisor's;
that clock ticks every 10 ms, so handshakes and echo also report the same CPU time from the
threads' /proc/PID/task/TID/schedstat (nanoseconds): the ``(ns clock)`` column and ``*_sched``.
Ratios steer/hash are taken within one run (same placement), then the median over runs.

What loopback can and cannot show: on ``lo`` a packet is processed on the CPU of the process
that sent it (there is no NIC, so no RSS queues and no IRQ affinity), so "the CPU that received
the connection" is the client's CPU. With ``--steer-cpu`` every connection from a client pinned
to CPU 1 goes to the worker on CPU 1 (which then shares that CPU with the client), and with
clients on both CPUs each goes to its own CPU's worker. The benefit steering is for (the
accepting worker runs where the NIC queue's softirq ran: warm caches, no cross-CPU wake-up)
needs a real NIC with RSS over several queues; here it can only show the cost of the BPF
program, the balance it gives, and the effect of co-locating a worker with its clients.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from suite.cluster import ClusterServer, client  # noqa: E402
from suite.servers import Skip, free_port  # noqa: E402
from wse.cluster.osutil import cpu_seconds  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LOADGEN = REPO / "target" / "release" / "wse-loadgen"
PLACEMENTS = {"c1": ["1"], "c01": ["0", "1"]}
LOOPBACK_NOTE = (
    "Loopback: packets are processed on the sending client's CPU (no NIC, no RSS), so --steer-cpu "
    "sends each connection to the worker on its client's CPU. This shows the BPF program's cost, "
    "the balance the policy gives and the effect of co-locating a worker with its clients; it "
    "cannot show the cache-locality gain steering is meant for (needs a multi-queue NIC with RSS)."
)


def workers_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(p) or 0.0 for p in pids)


def workers_sched(pids: list[int]) -> float:
    """The same CPU time at nanosecond resolution: the sum of every live thread's
    /proc/PID/task/TID/schedstat run time (threads that exit in between are missed)."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return total / 1e9


def per_worker(metrics: dict[str, dict[str, float]], name: str) -> dict[str, float]:
    return dict(sorted(metrics.get(name, {}).items()))


def diff(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: b[k] - a.get(k, 0.0) for k in b}


def loadgens(cores: list[str], argv_for: Any, timeout: float) -> list[dict[str, Any]]:
    """Runs one wse-loadgen per core at once (each under taskset); their JSON reports."""
    procs = [subprocess.Popen(["taskset", "-c", c, str(LOADGEN), *argv_for(i)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i, c in enumerate(cores)]
    out = []
    for p in procs:
        try:
            so, se = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            so, se = p.communicate()
        lines = [ln for ln in so.splitlines() if ln.startswith("{")]
        out.append(json.loads(lines[-1]) if lines else {"ok": False, "error": f"exit {p.returncode}: {se.strip()[-300:]}"})
    return out


def handshake(cl: ClusterServer, url: str, wpids: list[int], cores: list[str], a: argparse.Namespace) -> dict[str, Any]:
    n = a.handshakes // len(cores)
    m0, c0, s0 = cl.metrics(), workers_cpu(wpids), workers_sched(wpids)
    reps = loadgens(cores, lambda i: ["handshake", "--url", url, "--count", str(n), "--concurrency",
                                      str(a.handshake_concurrency)], a.timeout)
    c1, s1, m1 = workers_cpu(wpids), workers_sched(wpids), cl.metrics()
    ok = sum(int(r.get("succeeded", 0)) for r in reps)
    failed = sum(int(r.get("failed", 0)) for r in reps) + sum(1 for r in reps if "error" in r)
    wall = max((r.get("window_s") or 0.0) for r in reps)
    cpu = c1 - c0
    return {
        "ok": failed == 0 and ok == n * len(cores), "succeeded": ok, "failed": failed,
        "per_s": ok / wall if wall else 0.0, "worker_cpu_s": cpu, "per_worker_cpu_s": ok / cpu if cpu > 0 else None,
        "worker_cpu_s_sched": s1 - s0, "per_worker_cpu_s_sched": ok / (s1 - s0) if s1 > s0 else None,
        "first_frame_p50_us": [(r.get("first_frame") or {}).get("p50_us") for r in reps],
        "first_frame_p99_us": [(r.get("first_frame") or {}).get("p99_us") for r in reps],
        "per_worker": diff(per_worker(m0, "wse_handshakes_total"), per_worker(m1, "wse_handshakes_total")),
        "generator_cpu_share": [r.get("generator_cpu_share") for r in reps],
        "generator_saturated": any(r.get("generator_saturated") for r in reps),
    }


def latency(cl: ClusterServer, url: str, wpids: list[int], cores: list[str], a: argparse.Namespace) -> dict[str, Any]:
    conns, rate = max(1, a.latency_connections // len(cores)), a.latency_rate / len(cores)
    m0, c0, s0 = cl.metrics(), workers_cpu(wpids), workers_sched(wpids)
    reps = loadgens(cores, lambda i: ["latency", "--url", url, "--connections", str(conns), "--rate", str(rate),
                                      "--duration-s", str(a.latency_seconds), "--warmup-s", "0.5"], a.timeout)
    c1, s1, m1 = workers_cpu(wpids), workers_sched(wpids), cl.metrics()
    got = sum(int(r.get("received", 0)) for r in reps)
    lat = [r.get("latency") or {} for r in reps]
    cpu = c1 - c0
    return {
        "ok": all(r.get("ok") for r in reps), "received": got, "lost": sum(int(r.get("lost", 0)) for r in reps),
        "worker_cpu_s": cpu, "per_worker_cpu_s": got / cpu if cpu > 0 else None,
        "worker_cpu_s_sched": s1 - s0, "per_worker_cpu_s_sched": got / (s1 - s0) if s1 > s0 else None,
        # Across generators: the worst of each percentile (each is its own histogram).
        "p50_us": max((x.get("p50_us") or 0.0) for x in lat), "p99_us": max((x.get("p99_us") or 0.0) for x in lat),
        "p99_9_us": max((x.get("p99_9_us") or 0.0) for x in lat),
        "per_generator": [{k: x.get(k) for k in ("p50_us", "p99_us", "p99_9_us", "count")} for x in lat],
        "connections_per_worker": diff(per_worker(m0, "wse_handshakes_total"), per_worker(m1, "wse_handshakes_total")),
    }


def fanout(cl: ClusterServer, port: int, wpids: list[int], a: argparse.Namespace) -> dict[str, Any]:
    peak: dict[str, float] = {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.5):
            try:
                for w, v in cl.metrics().get("wse_connections_active", {}).items():
                    peak[w] = max(peak.get(w, 0.0), v)
            except OSError:
                pass

    t = threading.Thread(target=poll, daemon=True)
    m0 = cl.metrics()
    t.start()
    try:
        # The cluster benchmark's client: worker pids only, so "server CPU" is the workers'.
        res = client(a, port, wpids)
    finally:
        stop.set()
        t.join()
    m1 = cl.metrics()
    mesh = sum(m1.get("wse_mesh_messages_total:out", {}).values()) - sum(m0.get("wse_mesh_messages_total:out", {}).values())
    return {
        "ok": bool(res.get("deliveries")) and not res.get("gaps") and not res.get("dups"),
        "deliveries": res.get("deliveries"), "per_s": res.get("deliveries_per_s"),
        "per_worker_cpu_s": res.get("deliveries_per_server_cpu_s"), "worker_cpu_s": res.get("server_cpu_s"),
        "gaps": res.get("gaps"), "dups": res.get("dups"), "error": res.get("error"),
        "subscribers_per_worker": dict(sorted(peak.items())),
        "handshakes_per_worker": diff(per_worker(m0, "wse_handshakes_total"), per_worker(m1, "wse_handshakes_total")),
        "mesh_messages": mesh,
    }


def run_one(policy: str, placement: str, a: argparse.Namespace) -> dict[str, Any]:
    port = free_port(7300)
    cl = ClusterServer(2, port, "0,1", steer=policy == "steer")
    try:
        wpids = cl.pids()[1:]
        if len(wpids) != 2:
            raise Skip(f"expected 2 worker processes, found {wpids}")
        url = f"ws://127.0.0.1:{port}/wse"
        cores = PLACEMENTS[placement]
        out: dict[str, Any] = {"policy": policy, "clients": placement, "client_cores": cores, "worker_pids": wpids}
        out["handshake"] = handshake(cl, url, wpids, cores, a)
        out["latency"] = latency(cl, url, wpids, cores, a)
        if placement == "c1" and a.subscribers > 0:
            out["fanout"] = fanout(cl, port, wpids, a)
        return out
    finally:
        cl.stop()


def med(xs: list[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return statistics.median(v) if v else None


def fmt(x: float | None, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def table(results: dict[str, list[dict[str, Any]]], a: argparse.Namespace) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    print(f"\nMedians of {a.runs} runs; server CPU = the 2 workers' (pinned to CPUs 0 and 1; /proc stat, 10 ms ticks: "
          "see worker_cpu_s in the JSON for the resolution); c1 = clients on CPU 1, c01 = one client process on each CPU")
    print(f"{'config':>11} {'handshakes/s':>12} {'hs/worker-CPU-s':>15} {'(ns clock)':>10} {'hs p50/p99 us':>15} {'hs per worker':>15} "
          f"{'echo p50/p99/p99.9 us':>22} {'fan-out dlv/worker-CPU-s':>24} {'subs per worker':>16}")
    for cfg, rs in results.items():
        good = [r for r in rs if "handshake" in r]
        if not good:
            print(f"{cfg:>11} no result: {rs[-1].get('error') if rs else '?'}")
            continue
        hs = [r["handshake"] for r in good]
        lt = [r["latency"] for r in good]
        fo = [r["fanout"] for r in good if "fanout" in r]
        s = {
            "runs": len(good), "clean_runs": sum(1 for r in good if r["handshake"]["ok"] and r["latency"]["ok"]),
            "handshakes_per_s": med([h["per_s"] for h in hs]),
            "handshakes_per_s_min_max": [min(h["per_s"] for h in hs), max(h["per_s"] for h in hs)],
            "handshakes_per_worker_cpu_s": med([h["per_worker_cpu_s"] for h in hs]),
            "handshakes_per_worker_cpu_s_sched": med([h["per_worker_cpu_s_sched"] for h in hs]),
            "handshake_p50_us": med([max(x or 0 for x in h["first_frame_p50_us"]) for h in hs]),
            "handshake_p99_us": med([max(x or 0 for x in h["first_frame_p99_us"]) for h in hs]),
            "handshakes_per_worker_last_run": hs[-1]["per_worker"],
            "echo_p50_us": med([x["p50_us"] for x in lt]), "echo_p99_us": med([x["p99_us"] for x in lt]),
            "echo_p99_9_us": med([x["p99_9_us"] for x in lt]),
            "echo_per_worker_cpu_s": med([x["per_worker_cpu_s"] for x in lt]),
            "echo_per_worker_cpu_s_sched": med([x["per_worker_cpu_s_sched"] for x in lt]),
        }
        if fo:
            s["fanout_deliveries_per_s"] = med([f["per_s"] for f in fo])
            s["fanout_deliveries_per_worker_cpu_s"] = med([f["per_worker_cpu_s"] for f in fo])
            s["fanout_subscribers_per_worker_last_run"] = fo[-1]["subscribers_per_worker"]
            s["fanout_mesh_messages"] = med([f["mesh_messages"] for f in fo])
            s["fanout_clean"] = all(f["ok"] for f in fo)
        summary[cfg] = s
        hpw = "/".join(f"{v:.0f}" for v in s["handshakes_per_worker_last_run"].values())
        spw = "/".join(f"{v:.0f}" for v in s.get("fanout_subscribers_per_worker_last_run", {}).values()) or "-"
        print(f"{cfg:>11} {fmt(s['handshakes_per_s']):>12} {fmt(s['handshakes_per_worker_cpu_s']):>15} "
              f"{fmt(s['handshakes_per_worker_cpu_s_sched']):>10} "
              f"{fmt(s['handshake_p50_us'], '.0f') + '/' + fmt(s['handshake_p99_us'], '.0f'):>15} {hpw:>15} "
              f"{fmt(s['echo_p50_us'], '.0f') + '/' + fmt(s['echo_p99_us'], '.0f') + '/' + fmt(s['echo_p99_9_us'], '.0f'):>22} "
              f"{fmt(s.get('fanout_deliveries_per_worker_cpu_s')):>24} {spw:>16}")
    # Same-run ratios: steer over hash, same placement, same run index.
    ratios: dict[str, Any] = {}
    for pl in PLACEMENTS:
        h, st = results.get(f"hash/{pl}", []), results.get(f"steer/{pl}", [])
        pairs = [(x, y) for x, y in zip(h, st) if "handshake" in x and "handshake" in y]
        if not pairs:
            continue

        def ratio(get: Any) -> float | None:
            rs = [get(y) / get(x) for x, y in pairs if get(x) and get(y)]
            return statistics.median(rs) if rs else None

        r = {
            "handshakes_per_s": ratio(lambda z: z["handshake"]["per_s"]),
            "handshakes_per_worker_cpu_s": ratio(lambda z: z["handshake"]["per_worker_cpu_s"]),
            "handshakes_per_worker_cpu_s_sched": ratio(lambda z: z["handshake"]["per_worker_cpu_s_sched"]),
            "echo_p99_us": ratio(lambda z: z["latency"]["p99_us"]),
            "echo_per_worker_cpu_s": ratio(lambda z: z["latency"]["per_worker_cpu_s"]),
            "echo_per_worker_cpu_s_sched": ratio(lambda z: z["latency"]["per_worker_cpu_s_sched"]),
        }
        if pl == "c1":
            r["fanout_deliveries_per_worker_cpu_s"] = ratio(lambda z: (z.get("fanout") or {}).get("per_worker_cpu_s"))
        ratios[pl] = r
        print(f"steer/hash, clients {pl}, same-run ratios (median): " + ", ".join(
            f"{k} {fmt(v, '.2f')}x" for k, v in r.items()))
    print("\n" + LOOPBACK_NOTE)
    return {"configs": summary, "steer_over_hash": ratios}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts: checks the harness in under 3 minutes")
    ap.add_argument("--configs", default="hash/c1,steer/c1,hash/c01,steer/c01")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--handshakes", type=int, help="connects per configuration and run (default 5000; quick 2000)")
    ap.add_argument("--handshake-concurrency", type=int, default=8, help="in flight per generator")
    ap.add_argument("--latency-connections", type=int, default=20)
    ap.add_argument("--latency-rate", type=float, default=2000.0, help="echo messages/s over all generators")
    ap.add_argument("--latency-seconds", type=float, help="default 4; quick 1.5")
    ap.add_argument("--subscribers", type=int, help="fan-out subscribers (default 1000; quick 300; 0: no fan-out)")
    ap.add_argument("--messages", type=int, help="fan-out messages per round (default 2000; quick 1000)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup-rounds", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--client-core", default="1", help="the fan-out client's CPU")
    ap.add_argument("--out", help="JSON path (default bench/results/steer.json; quick: steer-quick.json)")
    a = ap.parse_args()
    q = a.quick
    a.handshakes = a.handshakes or (2000 if q else 5000)
    a.latency_seconds = a.latency_seconds or (1.5 if q else 4.0)
    a.subscribers = a.subscribers if a.subscribers is not None else (300 if q else 1000)
    a.messages = a.messages or (1000 if q else 2000)
    a.server_cores = "0,1"  # the cluster's CPUs
    if not LOADGEN.exists():
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "wse-loadgen"], cwd=REPO, check=True)
    configs = a.configs.split(",")
    for c in configs:
        pol, _, pl = c.partition("/")
        if pol not in ("hash", "steer") or pl not in PLACEMENTS:
            ap.error(f"unknown configuration {c!r} (policy hash|steer, clients c1|c01)")
    print(f"{os.cpu_count()} CPUs; workers on CPUs 0 and 1; generators: c1 = taskset -c 1, c01 = taskset -c 0 and "
          f"taskset -c 1; fan-out client taskset -c {a.client_core}", flush=True)
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    t0 = time.monotonic()
    for run in range(a.runs):
        for cfg in (configs if run % 2 == 0 else configs[::-1]):
            pol, _, pl = cfg.partition("/")
            try:
                res = run_one(pol, pl, a)
            except Skip as e:
                res = {"error": f"skipped: {e}"}
            results[cfg].append(res)
            if "handshake" in res:
                h, lt, fo = res["handshake"], res["latency"], res.get("fanout")
                print(f"run {run + 1} {cfg:>9}: {h['per_s']:,.0f} handshakes/s, {fmt(h['per_worker_cpu_s'])} per worker CPU-s "
                      f"({fmt(h['per_worker_cpu_s_sched'])} by schedstat), "
                      f"per worker {h['per_worker']}{'' if h['ok'] else ' FAILURES ' + str(h['failed'])}; echo p50/p99 "
                      f"{lt['p50_us']:.0f}/{lt['p99_us']:.0f} us" + (
                          f"; fan-out {fmt(fo['per_worker_cpu_s'])} deliveries per worker CPU-s, subscribers per worker "
                          f"{fo['subscribers_per_worker']}, gaps {fo['gaps']} dups {fo['dups']}" if fo else ""), flush=True)
            else:
                print(f"run {run + 1} {cfg:>9}: {res.get('error')}", flush=True)
    summary = table(results, a)
    out = Path(a.out) if a.out else REPO / "bench" / "results" / ("steer-quick.json" if q else "steer.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"args": vars(a), "cpus": os.cpu_count(), "elapsed_s": time.monotonic() - t0, "loopback_note": LOOPBACK_NOTE,
            "server": "wse run wse_app:app --workers 2 (pinned 0,1)", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out.write_text(json.dumps({"meta": meta, "summary": summary, "runs": results}, indent=1) + "\n")
    print(f"JSON: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")


if __name__ == "__main__":
    main()
