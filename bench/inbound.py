"""Inbound through a trivial Python handler: WSE (drain mode) against wse-server 2.5.1 (drain mode).

    python bench/inbound.py --connections 100 --per-conn 10000 --runs 3

For each run and peer (interleaved, order flipped every run): the server pinned to core 0 counts
``{"t":"count"}`` messages in its Python handler; ``bench/inbound_client.py`` on core 1 sends
them and asks the server for its count until all were processed. Reports processed messages per
wall second and per server CPU-second (utime + stime, all threads), and the client's CPU share.
The results go between this benchmark's markers in docs/BENCHMARKS.md (``--no-docs`` to skip).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REF_TOOL = Path(os.environ.get("WSE_REFERENCE_TOOL", ROOT.parent / "shared/tools/reference-wse.sh"))


def start(peer: str, port: int) -> tuple[subprocess.Popen[str], int]:
    if peer == "wse":
        cmd = ["taskset", "-c", "0", sys.executable, "-m", "wse_cli.main", "run", "bench.inbound_app:app",
               "--port", str(port), "--log-level", "warning"]
    else:
        cmd = ["taskset", "-c", "0", "bash", str(REF_TOOL), "python", "bench/ref_inbound_server.py", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        raise RuntimeError(f"{peer} did not start: {line!r}")
    m = re.search(r"pid (\d+)", line)
    return proc, int(m.group(1)) if m else proc.pid


def one_run(peer: str, port: int, conns: int, per_conn: int) -> dict[str, float]:
    proc, pid = start(peer, port)
    try:
        time.sleep(0.5)
        out = subprocess.run(["taskset", "-c", "1", sys.executable, "bench/inbound_client.py", str(conns), str(per_conn),
                              str(port), str(pid)], cwd=ROOT, capture_output=True, text=True, timeout=300)
        res = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        assert proc.stdout is not None
        proc.stdout.close()
    res["rate"] = res["processed"] / res["wall_s"]
    res["per_cpu"] = res["processed"] / res["server_cpu_s"]
    res["client_share"] = res["client_cpu_s"] / res["wall_s"]
    return res


def fmt(v: float) -> str:
    return f"{v / 1e6:.2f}M"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--per-conn", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--peers", default="wse,reference")
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    peers = args.peers.split(",")
    results: dict[str, list[dict[str, float]]] = {p: [] for p in peers}
    port = 6100
    for run in range(args.runs):
        order = peers if run % 2 == 0 else peers[::-1]
        for peer in order:
            port += 1
            r = one_run(peer, port, args.connections, args.per_conn)
            ok = r["processed"] == r["expected"]
            print(f"run {run + 1} {peer:9}: {fmt(r['rate'])} msg/s, {fmt(r['per_cpu'])} per server CPU-s, "
                  f"client {r['client_share']:.0%}, processed {r['processed']:,}/{r['expected']:,}{'' if ok else ' INCOMPLETE'}",
                  flush=True)
            results[peer].append(r)
    rows = []
    for peer, rs in results.items():
        pc = sorted(r["per_cpu"] for r in rs)
        rt = sorted(r["rate"] for r in rs)
        cs = statistics.median(r["client_share"] for r in rs)
        rows.append((peer, pc, rt, cs))
    table = ["| peer | processed per server CPU-s: min / median / max | processed/s: min / median / max | client CPU share (median) |",
             "|---|---|---|---|"]
    for peer, pc, rt, cs in rows:
        table.append(f"| {peer} | {fmt(pc[0])} / **{fmt(statistics.median(pc))}** / {fmt(pc[-1])} | "
                     f"{fmt(rt[0])} / {fmt(statistics.median(rt))} / {fmt(rt[-1])} | {cs:.0%} |")
    med = {peer: statistics.median(pc) for peer, pc, _, _ in rows}
    ratio = med.get("wse", 0) / med["reference"] if "reference" in med and "wse" in med else None
    summary = f"Ratio wse / reference of medians per server CPU-second: **{ratio:.2f}x**." if ratio else ""
    print("\n".join(table))
    print(summary)
    if args.no_docs:
        return
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    section = "\n".join([
        "<!-- bench:inbound:begin -->",
        f"## Inbound through a trivial Python handler: {args.connections} connections x {args.per_conn:,} messages",
        "",
        f"Measured {time.strftime('%Y-%m-%d')}, wse at commit {commit}; server `taskset -c 0`, picows client `taskset -c 1`; "
        "about 50-byte JSON messages `{\"t\":\"count\",...}` counted by each server's Python handler (drain mode on both: "
        "WSE's `@app.on(\"count\")`; the reference's `drain_inbound` loop). The count is the server's own; a run ends when "
        f"the server has processed every message. {args.runs} runs per peer, interleaved.",
        "",
        "```",
        f"python bench/inbound.py --connections {args.connections} --per-conn {args.per_conn} --runs {args.runs}",
        "```",
        "",
        *table,
        "",
        summary,
        "<!-- bench:inbound:end -->",
    ])
    doc = ROOT / "docs/BENCHMARKS.md"
    text = doc.read_text()
    if "<!-- bench:inbound:begin -->" in text:
        text = re.sub(r"<!-- bench:inbound:begin -->.*?<!-- bench:inbound:end -->", lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text)


if __name__ == "__main__":
    main()
