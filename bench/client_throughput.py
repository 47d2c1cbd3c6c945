"""Client throughput: messages/s one client receives, ``wse-engine-client`` against the published
``wse-client`` 2.5.1, both against our server in the same run.

    python bench/client_throughput.py --count 50000 --size 60 --runs 3

Starts ``bench/peers/wse_app.py`` (our server, JWT off) pinned to core 0, then for every run and
both clients (the order alternates from run to run) runs ``bench/client_throughput_client.py``
pinned to core 1: ours with this Python, the published one in the reference chroot (Python 3.13)
through ``reference-wse.sh`` (found beside the repository; ``$WSE_REFERENCE_TOOL`` overrides). Each client subscribes,
takes an unmeasured warm-up stream, then times ``count`` publications from the request to the last
one its application loop received, checking order. Prints min / median / max messages/s per client
and the ratio of medians, and the same per client CPU-second (steadier on a shared machine); a
run that did not receive every message within the client's timeout (120 s) is listed but left
out of the table. (The published client's rate falls as a stream grows: in smoke runs a
100,000-message stream did not finish in 120 s, so the default stays at 50,000.) Raw results go to ``bench/out/client_throughput-*.json``. Run it on a
quiet machine: the server and the client each need a core of their own.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

def _ref_tool() -> str:
    """``$WSE_REFERENCE_TOOL``, else ``shared/tools/reference-wse.sh`` beside the repository (or
    beside the directory holding this worktree)."""
    if os.environ.get("WSE_REFERENCE_TOOL"):
        return os.environ["WSE_REFERENCE_TOOL"]
    for base in (REPO.parent, REPO.parent.parent):
        candidate = base / "shared/tools/reference-wse.sh"
        if candidate.exists():
            return str(candidate)
    return str(REPO.parent / "shared/tools/reference-wse.sh")


REF_TOOL = _ref_tool()
CLIENTS = ("wse-engine-client", "wse-client")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin(core: str) -> list[str]:
    return ["taskset", "-c", core] if shutil.which("taskset") else []


def start_server(port: int) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO / "bench" / "peers") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = pin("0") + [sys.executable, "-m", "wse_cli.main", "run", "wse_app:app", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("wse: serving"):
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc


def run_client(name: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    script = ["bench/client_throughput_client.py", url, "--count", str(args.count), "--size", str(args.size)]
    if name == "wse-engine-client":
        cmd = pin("1") + [sys.executable, *script]
    else:
        if not Path(REF_TOOL).exists():
            return {"skipped": f"{REF_TOOL} not found"}
        cmd = pin("1") + ["bash", REF_TOOL, "python", *script]
    for _ in range(20):  # the chroot's bind mount is shared: another user of it may hold it a moment
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=args.count / 1000 + 300)
        if out.returncode == 0 or "target is busy" not in out.stderr:
            break
        time.sleep(1)
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=50_000, help="messages per measured stream")
    ap.add_argument("--size", type=int, default=60, help="payload bytes (about)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clients", default=",".join(CLIENTS), help="comma-separated subset of " + ", ".join(CLIENTS))
    args = ap.parse_args()
    names = [c for c in args.clients.split(",") if c]

    port = free_port()
    server = start_server(port)
    url = f"ws://127.0.0.1:{port}/wse"
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    try:
        for run in range(args.runs):
            order = names if run % 2 == 0 else list(reversed(names))
            for name in order:
                r = run_client(name, url, args)
                results[name].append(r)
                shown = f"{r['msgs_per_s']:,.0f} msg/s ({r['received']}/{r['expected']}, {r['out_of_order']} out of order, client CPU {r['client_cpu_s']:.2f}s)" if "msgs_per_s" in r else r
                print(f"run {run + 1} {name}: {shown}", flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)

    print("\n| client | complete runs | msg/s min | median | max | msg per client CPU-s (median) |")
    print("|---|---|---|---|---|---|")
    medians: dict[str, float] = {}
    for name in names:
        done = [r for r in results[name] if "msgs_per_s" in r and r["received"] == r["expected"]]
        if not done:
            print(f"| {name} | 0 of {len(results[name])} | - | - | - | - |")
            continue
        rates = [r["msgs_per_s"] for r in done]
        per_cpu = statistics.median(r["received"] / r["client_cpu_s"] for r in done if r["client_cpu_s"] > 0)
        medians[name] = statistics.median(rates)
        print(f"| {name} | {len(done)} of {len(results[name])} | {min(rates):,.0f} | {medians[name]:,.0f} | {max(rates):,.0f} | {per_cpu:,.0f} |")
    if len(medians) == 2:
        a, b = (medians[n] for n in CLIENTS)
        print(f"\nwse-engine-client / wse-client (medians): {a / b:.1f}x")

    out_dir = REPO / "bench" / "out"
    out_dir.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"client_throughput-{stamp}.json"
    path.write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print(f"raw results: {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
