"""Idle memory per connection beyond one process's open-files limit, through the cluster.

    python bench/idle_cluster.py --connections 50000 --workers 4

Where one process may not hold 50,000 sockets (here the hard limit is 20,000 per process, and
raising it needs CAP_SYS_RESOURCE), ``wse run bench.idle_app:app --workers W`` spreads the
connections over W worker processes (SO_REUSEPORT) and W ``wse-loadgen idle`` processes open
them (several 127.x source addresses). Reported: the workers' summed RSS before and while the
connections are held, the connections each worker holds (from the supervisor's /metrics), and
the extra RSS per connection. Workers are not pinned (more workers than cores).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOADGEN = ROOT / "target/release/wse-loadgen"


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(x) for x in out]


def scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    per: dict[str, float] = {}
    for m in re.finditer(r'^wse_connections_active\{worker="(\d+)"\} (\S+)$', text, re.M):
        per[m.group(1)] = float(m.group(2))
    return per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=50_000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--port", type=int, default=7870)
    ap.add_argument("--metrics-port", type=int, default=7871)
    ap.add_argument("--hold-s", type=float, default=40)
    a = ap.parse_args()
    sup = subprocess.Popen(
        [sys.executable, "-m", "wse_cli.main", "run", "bench.idle_app:app", "--workers", str(a.workers), "--no-pin",
         "--bind", f"127.0.0.1:{a.port}", "--metrics-bind", f"127.0.0.1:{a.metrics_port}", "--log-level", "warning"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    metrics = f"http://127.0.0.1:{a.metrics_port}/metrics"
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if len(scrape(metrics)) == a.workers:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        time.sleep(2)
        workers = children(sup.pid)
        before = sum(rss_kb(p) for p in workers)
        per_gen = a.connections // a.workers
        gens = [
            subprocess.Popen([str(LOADGEN), "idle", "--url", f"ws://127.0.0.1:{a.port}/wse", "--connections", str(per_gen),
                              "--sources", "8", "--hold-s", str(a.hold_s), "--connect-concurrency", "64"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            for _ in range(a.workers)
        ]
        total = per_gen * a.workers
        t0 = time.time()
        held: dict[str, float] = {}
        last, still = -1.0, 0
        # Until every connection is up, or the count stops rising for 5 s.
        while time.time() - t0 < a.hold_s and still < 5:
            held = scrape(metrics)
            n_now = sum(held.values())
            if n_now >= total:
                break
            still = still + 1 if n_now == last else 0
            last = n_now
            time.sleep(1)
        time.sleep(2)
        held = scrape(metrics)
        after = sum(rss_kb(p) for p in workers)
        for g in gens:
            out, _ = g.communicate(timeout=a.hold_s + 120)
            tail = out.strip().splitlines()[-1] if out.strip() else ""
            if '"errors":[]' not in tail.replace(" ", ""):
                print("generator:", tail[:400])
        n = int(sum(held.values()))
        print(f"workers: {a.workers}, connections held: {n} (per worker: {', '.join(str(int(v)) for _, v in sorted(held.items()))})")
        print(f"workers' RSS: {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB held; "
              f"{(after - before) * 1024 / max(n, 1) / 1000:.2f} KB per connection")
    finally:
        sup.terminate()
        sup.wait(30)


if __name__ == "__main__":
    main()
