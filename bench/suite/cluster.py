"""A ``wse run --workers N`` cluster of the benchmark app with its metrics, for the experiments
that look inside one (``bench/steer.py``); ``bench/run.py``'s cluster scenario starts its
clusters through ``servers.Server(workers=N)`` like any other server.

The app is ``bench/peers/wse_app.py`` (the suite's); the supervisor's ``/metrics`` gives each
worker's handshakes, connections and mesh traffic.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from argparse import Namespace
from typing import Any

from wse.metrics import parse

from .servers import PEERS, ROOT, Skip

LOADGEN = ROOT / "target" / "release" / "wse-loadgen"


class ClusterServer:
    def __init__(self, workers: int, port: int, cores: str, steer: bool = False) -> None:
        self.workers, self.port, self.cores = workers, port, cores
        self.lines: list[str] = []
        cmd = ["taskset", "-c", cores, sys.executable, "-m", "wse_cli.main", "run", "wse_app:app",
               "--port", str(port), "--workers", str(workers), "--metrics-bind", "127.0.0.1:0", "--log-level", "warning"]
        if steer:
            cmd.append("--steer-cpu")
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   PYTHONPATH=str(PEERS) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
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
            if name in ("wse_mesh_messages_total", "wse_mesh_bytes_total"):
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


def client(a: Namespace, port: int, pids: list[int]) -> dict[str, Any]:
    """Fan-out through the cluster with ``wse-loadgen`` (``a``: subscribers, messages, rounds,
    warmup_rounds, timeout, client_core): deliveries, rates, server CPU (of ``pids``), gaps, dups."""
    cmd = ["taskset", "-c", a.client_core, str(LOADGEN), "fanout", "--url", f"ws://127.0.0.1:{port}/wse",
           "--subscribers", str(a.subscribers), "--messages", str(a.messages),
           "--rounds", str(a.rounds + a.warmup_rounds), "--warmup", str(a.warmup_rounds),
           "--server-pid", ",".join(map(str, pids)), "--timeout-s", str(a.timeout)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=a.timeout * (a.rounds + 2) + 120)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"ok": False, "error": f"loadgen exit {r.returncode}: {r.stderr.strip()[-600:]}"}
    rep = json.loads(lines[-1])
    s = rep.get("summary", {})
    return {"ok": rep.get("ok"), "deliveries": s.get("deliveries"), "deliveries_per_s": s.get("deliveries_per_s"),
            "deliveries_per_server_cpu_s": s.get("per_server_cpu_s"), "server_cpu_s": s.get("server_cpu_s"),
            "gaps": s.get("gaps"), "dups": s.get("duplicates"), "missing": s.get("missing"),
            "connected": rep.get("connected")}
