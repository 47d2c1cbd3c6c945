"""Fan-out with E2E encryption and with zlib compression, beside plaintext, same run.

    python bench/encodings.py --runs 3

wse (``bench/peers/wse_app.py``) pinned to core 0, ``wse-loadgen fanout`` on core 1. Shapes:
``plain`` and ``e2e`` (60-byte payloads; every subscriber does the ECDH exchange and the
generator opens every ``E:`` delivery), ``plain-3k`` and ``zlib-3k`` (3 KB payloads; the zlib
subscribers connect with ``?compression=true`` and the generator inflates every ``C:``
delivery). Every delivery is sequence-checked. Reported: deliveries per server CPU-second
(min / median / max over the runs) and the generator's CPU share: at 90% or more the wall rate is
a lower bound, the per-CPU-second figure still holds. The section goes between the
``bench:encodings`` markers of docs/BENCHMARKS.md (``--no-docs`` to skip).
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
LOADGEN = ROOT / "target/release/wse-loadgen"
SHAPES = {
    "plain": ("", ["--size", "60"]),
    "e2e": ("", ["--size", "60", "--encrypt"]),
    "plain-3k": ("", ["--size", "3000"]),
    "zlib-3k": ("?compression=true", ["--size", "3000"]),
}


def start(port: int) -> tuple[subprocess.Popen[str], int]:
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "wse_cli.main", "run", "wse_app:app",
           "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT / "bench" / "peers")))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, proc.pid


def one(shape: str, port: int, subscribers: int, messages: int) -> dict[str, float]:
    query, extra = SHAPES[shape]
    proc, pid = start(port)
    try:
        out = subprocess.run(
            ["taskset", "-c", "1", str(LOADGEN), "fanout", "--url", f"ws://127.0.0.1:{port}/wse{query}",
             "--subscribers", str(subscribers), "--messages", str(messages), "--rounds", "3", "--warmup", "1",
             "--server-pid", str(pid), *extra],
            capture_output=True, text=True, timeout=600,
        )
        res = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        proc.terminate()
        proc.wait(10)
    rounds = [r for r in res["rounds"] if not r["warmup"]]
    clean = all(r["ok"] and r["gaps"] == 0 and r["duplicates"] == 0 and r["missing"] == 0 for r in rounds)
    s = res["summary"]
    return {
        "per_cpu": s["per_server_cpu_s"],
        "rate": s["deliveries_per_s"],
        "gen": max(r["generator_cpu_share"] for r in rounds),
        "bytes": rounds[-1]["avg_frame_payload_bytes"],
        "clean": clean,
    }


def fmt(x: float) -> str:
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=300)
    ap.add_argument("--port", type=int, default=7830)
    ap.add_argument("--no-docs", action="store_true")
    a = ap.parse_args()
    if not LOADGEN.exists():
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "wse-loadgen"], cwd=ROOT, check=True)
    results: dict[str, list[dict[str, float]]] = {k: [] for k in SHAPES}
    for run in range(a.runs):
        for shape in SHAPES if run % 2 == 0 else reversed(list(SHAPES)):
            r = one(shape, a.port, a.subscribers, a.messages)
            results[shape].append(r)
            print(f"run {run + 1} {shape:9} {fmt(r['per_cpu'])} per server CPU-s, generator {r['gen']:.0%}, clean={r['clean']}",
                  flush=True)
            time.sleep(0.5)
    lines = [
        "## Fan-out with E2E encryption and with compression (`bench/encodings.py`)",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `python bench/encodings.py --runs {a.runs}`: "
        f"{a.subscribers} subscribers, {a.messages} messages per round, 3 rounds after 1 warm-up per run, server "
        "(`bench/peers/wse_app.py`) on core 0, `wse-loadgen` on core 1; every delivery sequence-checked after the "
        "generator decrypted or inflated it.",
        "",
        "| shape | frame payload bytes | deliveries per server CPU-s: min / median / max | vs its plaintext | generator CPU (max) | clean runs |",
        "|---|---|---|---|---|---|",
    ]
    med = {k: statistics.median(x["per_cpu"] for x in v) for k, v in results.items()}
    base = {"plain": "plain", "e2e": "plain", "plain-3k": "plain-3k", "zlib-3k": "plain-3k"}
    for shape, rs in results.items():
        pc = sorted(x["per_cpu"] for x in rs)
        gen = max(x["gen"] for x in rs)
        lb = " (lower bound)" if gen >= 0.9 else ""
        lines.append(
            f"| {shape} | {int(rs[-1]['bytes'])} | {fmt(pc[0])} / **{fmt(statistics.median(pc))}** / {fmt(pc[-1])} | "
            f"{med[shape] / med[base[shape]]:.2f}x | {gen:.0%}{lb} | {sum(x['clean'] for x in rs)} of {len(rs)} |"
        )
    lines += [
        "",
        "`e2e` seals every delivery per connection (AES-GCM-256 of the shared JSON frame); `zlib-3k` "
        "compresses each publication once and shares the compressed frame, so it costs the server less "
        "than plaintext (fewer bytes to copy into sockets) while the subscribers pay for inflating. "
        "`frame payload bytes` is what the generator decoded (plaintext size).",
    ]
    section = "\n".join(lines)
    print(section)
    if not a.no_docs:
        doc = ROOT / "docs/BENCHMARKS.md"
        text = doc.read_text()
        begin, end = "<!-- bench:encodings:begin -->", "<!-- bench:encodings:end -->"
        block = f"{begin}\n{section}\n{end}"
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), block, text, flags=re.S) if begin in text else text.rstrip() + "\n\n" + block + "\n"
        doc.write_text(text)


if __name__ == "__main__":
    main()
