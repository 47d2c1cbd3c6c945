"""Cluster benchmark: fan-out through ``wse run --workers N`` against one process.

    python bench/cluster.py --subscribers 1000 --messages 2000 --runs 3 --configs reference,w1,w2

Configurations, interleaved run by run:
- ``reference``: the published ``wse-server`` 2.5.1, one process (as in ``bench/fanout.py``);
- ``w1``, ``w2``, ... ``wN``: ``wse run bench.fanout_app:app --workers N`` under
  ``taskset -c SERVER_CORES`` (workers pinned one per core of that set); ``w2s``: the same with
  ``--steer-cpu`` (connections handed to the worker on the receiving CPU instead of the kernel's
  hash; with one client process on one core, every subscriber then lands on that core's worker,
  so compare it with a client spread over cores); ``w2r``: recovery on (each topic's owner
  stamps its publications and sends them to every worker, whose rings mirror the owner's; a
  publication made on a worker that does not own the topic crosses twice).

The load is ``bench/fanout_client.py`` (picows, pinned to ``--client-core``): S subscribers on
topic ``bench``, spread over the workers by SO_REUSEPORT; subscriber 0's worker publishes M
messages of about 60 bytes, the others receive them over the mesh. Every delivery is counted
and sequence-checked. Server CPU is utime + stime of every server process (supervisor and
workers) over the measured window. Reported per configuration: deliveries/s, deliveries per
server CPU-second, server CPU nanoseconds per delivery, and for clusters the subscribers per
worker and the mesh messages/bytes from the supervisor's ``/metrics``; the mesh's cost per
delivery is the difference in CPU ns per delivery between ``wN`` and ``w1``.

On a 2-core machine ``w2`` shares a core with the client: its wall rate is then not comparable,
its per-CPU-second figure still is. Raw JSON goes to ``bench/out/``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fanout import Server as RefServer  # noqa: E402
from bench.fanout import Skip, check_peer, free_port  # noqa: E402
from wse.metrics import parse  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"


class ClusterServer:
    def __init__(self, workers: int, port: int, cores: str, steer: bool = False, recovery: bool = False) -> None:
        self.workers, self.port, self.cores = workers, port, cores
        self.lines: list[str] = []
        cmd = ["taskset", "-c", cores, sys.executable, "-m", "wse_cli.main", "run", "bench.fanout_app:app",
               "--port", str(port), "--workers", str(workers), "--metrics-bind", "127.0.0.1:0", "--log-level", "warning"]
        if steer:
            cmd.append("--steer-cpu")
        env = dict(os.environ, PYTHONUNBUFFERED="1", WSE_BENCH_RECOVERY="1" if recovery else "0")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for line in list(self.lines):
                m = re.search(r"metrics on (http://\S+/metrics)", line)
                if m:
                    self.metrics_url = m.group(1)
                    return
            if self.proc.poll() is not None:
                raise Skip(f"cluster exited: {' | '.join(self.lines)[-400:]}")
            time.sleep(0.05)
        self.stop()
        raise Skip("cluster not ready in 60s")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def pids(self) -> list[int]:
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            return [self.proc.pid] + [int(p) for p in f.read().split()]

    def metrics(self) -> dict[str, dict[str, float]]:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            samples = parse(r.read().decode())
        out: dict[str, dict[str, float]] = {}
        for name, labels, v in samples:
            key = labels.get("worker", "")
            if name == "wse_mesh_messages_total" or name == "wse_mesh_bytes_total":
                name = f"{name}:{labels['direction']}"
            out.setdefault(name, {})
            out[name][key] = out[name].get(key, 0.0) + v
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def client(args: argparse.Namespace, port: int, pids: list[int]) -> dict[str, Any]:
    cmd = ["taskset", "-c", args.client_core, sys.executable, str(BENCH / "fanout_client.py"),
           "--url", f"ws://127.0.0.1:{port}/wse", "--subscribers", str(args.subscribers),
           "--messages", str(args.messages), "--server-pid", str(pids[0]),
           "--extra-server-pids", ",".join(map(str, pids[1:])), "--timeout", str(args.timeout),
           "--warmup-rounds", str(args.warmup_rounds), "--rounds", str(args.rounds),
           "--client-core", args.client_core, "--server-core", args.server_cores.split(",")[0]]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=args.timeout * 3 + 120)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"ok": False, "error": f"client exit {r.returncode}: {r.stderr.strip()[-600:]}"}
    res: dict[str, Any] = json.loads(lines[-1])
    return res


def run_one(cfg: str, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    if cfg == "reference":
        check_peer("reference")
        srv = RefServer("reference", port)
        srv.start()
        try:
            return client(args, port, [srv.pid])
        finally:
            srv.stop()
    steer, recovery = cfg.endswith("s"), cfg.endswith("r")
    workers = int(cfg[1:].rstrip("sr"))
    cl = ClusterServer(workers, port, args.server_cores, steer, recovery)
    try:
        before = cl.metrics()
        res = client(args, port, cl.pids())
        after = cl.metrics()
        hs0, hs1 = before.get("wse_handshakes_total", {}), after.get("wse_handshakes_total", {})
        res["subscribers_per_worker"] = {w: hs1[w] - hs0.get(w, 0.0) for w in hs1}
        for k in ("wse_mesh_messages_total:out", "wse_mesh_bytes_total:out", "wse_deliveries_total"):
            res[k] = sum(after.get(k, {}).values()) - sum(before.get(k, {}).values())
        return res
    finally:
        cl.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="reference,w1,w2")
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup-rounds", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--server-cores", default="0,1")
    ap.add_argument("--client-core", default="1")
    args = ap.parse_args()
    configs = args.configs.split(",")
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    for run in range(args.runs):
        order = configs if run % 2 == 0 else configs[::-1]
        for cfg in order:
            try:
                res = run_one(cfg, args)
            except Skip as e:
                res = {"ok": False, "error": f"skipped: {e}"}
            results[cfg].append(res)
            print(f"run {run + 1} {cfg}: " + (
                f"{res.get('deliveries_per_s', 0) / 1e6:.2f}M/s, {(res.get('deliveries_per_server_cpu_s') or 0) / 1e6:.2f}M per "
                f"server CPU-s, gaps {res.get('gaps')}, dups {res.get('dups')}, per worker {res.get('subscribers_per_worker', '-')}"
                if "deliveries_per_s" in res else res.get("error", "?")), flush=True)
    print(f"\n{'config':>10} {'deliveries/s':>14} {'per server CPU-s':>17} {'CPU ns/delivery':>16} {'mesh msgs':>10}")
    ns: dict[str, float] = {}
    for cfg, rs in results.items():
        good = [r for r in rs if r.get("deliveries") and r.get("server_cpu_s")]
        if not good:
            why = rs[-1].get("error") if rs else None
            if why is None and rs and rs[-1].get("deliveries"):
                why = "server CPU below one clock tick: use more --messages or --subscribers"
            print(f"{cfg:>10} no result: {why}")
            continue
        rate = statistics.median(r["deliveries_per_s"] for r in good)
        per_cpu = statistics.median(r["deliveries_per_server_cpu_s"] for r in good)
        ns[cfg] = statistics.median(1e9 * r["server_cpu_s"] / r["deliveries"] for r in good)
        mesh = statistics.median(r.get("wse_mesh_messages_total:out", 0) for r in good)
        print(f"{cfg:>10} {rate:>14,.0f} {per_cpu:>17,.0f} {ns[cfg]:>16.1f} {mesh:>10,.0f}")
    for cfg in ns:
        if cfg.startswith("w") and cfg != "w1" and not cfg.endswith("s") and "w1" in ns:
            print(f"mesh and extra-process cost per delivery, {cfg} against w1: {ns[cfg] - ns['w1']:+.1f} CPU ns")
    out = BENCH / "out"
    out.mkdir(exist_ok=True)
    path = out / f"cluster-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print(f"raw results: {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
