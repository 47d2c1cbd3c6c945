"""The TypeScript client's throughput, in Node and in headless Chromium, beside our Python client
and the published Python client (``wse-client`` 2.5.1), in the same run, per frame format; and
the bundle size (esbuild, minified and gzipped) beside npm ``centrifuge``.

    python bench/ts_client.py --runs 3 --count 50000

Needs ``npm ci`` in clients/ts and Debian's chromium. Starts ``bench/peers/wse_app.py`` (our server,
JWT off) pinned to core 0; every client runs pinned to core 1 (Chromium excepted: its processes
need more than one core), one at a time, the order rotating
from run to run: it subscribes, takes an unmeasured warm-up, then times ``count`` publications
(``{"s": n, "d": "xxx..."}`` of about ``size`` bytes) from its request to the last one its
application loop received, checking order. Formats: ``json`` (binary JSON frames), ``msgpack``
(``M:``), ``zlib`` (``C:``: the server compresses frames over 1 KiB, so that format uses
``--zlib-size``, 2,000 bytes), ``e2e`` (``E:``, AES-GCM). A run that did not receive every message
in order is listed as unclean and left out. Raw results: ``bench/out/ts_client-*.json``.
Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.client_throughput import REF_TOOL, free_port, pin, start_server  # noqa: E402
from examples.ts_demo.web import WebServer  # noqa: E402

TS = REPO / "clients" / "ts"
CLIENTS = ("ts-node", "ts-chromium", "py-ours", "py-published")
FORMATS = ("json", "msgpack", "zlib", "e2e")


def run_one(client: str, fmt: str, url: str, page: str, args: argparse.Namespace) -> dict[str, Any]:
    size = args.zlib_size if fmt == "zlib" else args.size
    common = ["--format", fmt, "--count", str(args.count), "--size", str(size), "--warmup", str(args.warmup)]
    if client == "ts-node":
        cmd, cwd = pin("1") + ["node", "bench/run.mjs", url, *common], TS
    elif client == "ts-chromium":
        # Not pinned: Chromium's browser, renderer and network processes pass every message over
        # IPC, and one core serialises them (about 7x slower here); its figure uses more than a core.
        cmd, cwd = ["node", "bench/run.mjs", url, *common, "--page", page], TS
    elif client == "py-ours":
        cmd, cwd = pin("1") + [sys.executable, "bench/client_throughput_client.py", url, *common], REPO
    else:
        if not Path(REF_TOOL).exists():
            return {"unclean": f"{REF_TOOL} not found"}
        cmd, cwd = pin("1") + ["bash", REF_TOOL, "python", "bench/client_throughput_client.py", url, *common], REPO
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"unclean": f"no result within {args.timeout} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"unclean": f"exit {out.returncode}: {out.stderr.strip()[-300:]}"}
    r = json.loads(lines[-1])
    if r.get("received") != r.get("expected") or r.get("out_of_order"):
        r["unclean"] = f"received {r.get('received')} of {r.get('expected')}, {r.get('out_of_order')} out of order"
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--count", type=int, default=50_000)
    ap.add_argument("--size", type=int, default=60)
    ap.add_argument("--zlib-size", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=2000)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--clients", default=",".join(CLIENTS))
    ap.add_argument("--formats", default=",".join(FORMATS))
    args = ap.parse_args()
    clients = [c for c in args.clients.split(",") if c]
    formats = [f for f in args.formats.split(",") if f]

    subprocess.run(["node", "scripts/build-e2e.mjs"], cwd=TS, check=True)
    sizes = json.loads(subprocess.run(["node", "scripts/bundle-size.mjs"], cwd=TS, check=True, capture_output=True, text=True).stdout)

    port = free_port()
    server = start_server(port)
    url = f"ws://127.0.0.1:{port}/wse"
    web = WebServer({"/bench/": TS / "bench"}, "unused-secret-unused-secret-unused", url)
    page = f"{web.url}/bench/index.html"
    results: list[dict[str, Any]] = []
    try:
        for run in range(args.runs):
            order = clients[run % len(clients):] + clients[: run % len(clients)]
            for fmt in formats:
                for client in order:
                    r = run_one(client, fmt, url, page, args)
                    r.update(client=client, format=fmt, run=run)
                    results.append(r)
                    rate = f"{r['msgs_per_s']:,.0f} msg/s" if "msgs_per_s" in r else ""
                    print(f"run {run} {fmt:8} {client:13} {rate} {r.get('unclean', '')}", flush=True)
    finally:
        web.close()
        server.terminate()
        server.wait(15)

    print("\nmessages/s received by one client (median [min-max] of clean runs)")
    print(f"{'format':8} " + " ".join(f"{c:>26}" for c in clients))
    table: dict[str, dict[str, Any]] = {}
    for fmt in formats:
        cells = []
        for c in clients:
            rates = sorted(r["msgs_per_s"] for r in results if r["client"] == c and r["format"] == fmt and "unclean" not in r)
            table.setdefault(fmt, {})[c] = rates
            cells.append(f"{statistics.median(rates):>10,.0f} [{rates[0]:,.0f}-{rates[-1]:,.0f}]" if rates else f"{'n/a':>26}")
        print(f"{fmt:8} " + " ".join(f"{x:>26}" for x in cells))
    print("\nbundle sizes (esbuild --minify, gzip -9)")
    for s in sizes:
        print(f"  {s['name']}: {s['min_bytes']:,} B min, {s['min_gz_bytes']:,} B min+gz")
    out = REPO / "bench" / "out"
    out.mkdir(exist_ok=True)
    path = out / f"ts_client-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps({"args": vars(args), "results": results, "bundle_sizes": sizes,
                                "node": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip(),
                                "time": time.time()}, indent=1))
    print(f"\nraw results: {path.relative_to(REPO)}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(REPO))
    main()
