"""Server RSS per idle connection: open N WebSocket connections, wait, read the server's RSS.

    python bench/idle_memory.py --connections 1000 15000

Starts `wse run` (JWT off) pinned to core 0 and opens connections from core 1 with a minimal
asyncio client (the upgrade by hand; the client then just waits for server_ready).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def open_conns(port: int, n: int, sources: int = 8) -> list[asyncio.StreamWriter]:
    writers: list[asyncio.StreamWriter] = []
    sem = asyncio.Semaphore(200)

    async def one(i: int) -> None:
        async with sem:
            src = f"127.0.0.{2 + i % sources}"
            r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0))
            key = base64.b64encode(os.urandom(16)).decode()
            w.write(
                f"GET /wse HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            await r.readuntil(b"\r\n\r\n")
            hdr = await r.readexactly(2)  # server_ready frame header
            ln = hdr[1] & 0x7F
            if ln == 126:
                ln = int.from_bytes(await r.readexactly(2), "big")
            await r.readexactly(ln)
            writers.append(w)

    await asyncio.gather(*(one(i) for i in range(n)))
    return writers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, nargs="+", default=[1000, 15000])
    ap.add_argument("--port", type=int, default=5801)
    args = ap.parse_args()
    os.sched_setaffinity(0, {1})
    env = dict(os.environ, PYTHONPATH=ROOT)
    srv = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, "-m", "wse_cli.main", "run", "bench.idle_app:app",
         "--port", str(args.port), "--log-level", "warning"],
        stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )
    assert srv.stdout is not None
    srv.stdout.readline()
    time.sleep(0.5)
    base = rss_kib(srv.pid)
    print(f"baseline RSS {base} KiB")
    try:
        for n in args.connections:
            async def run() -> None:
                ws = await open_conns(args.port, n)
                await asyncio.sleep(2)
                rss = rss_kib(srv.pid)
                print(f"{n:>6} idle connections: RSS {rss} KiB, {(rss - base) * 1024 / n:,.0f} bytes each over baseline")
                for w in ws:
                    w.close()
                await asyncio.sleep(2)

            asyncio.run(run())
    finally:
        srv.terminate()
        srv.wait()


if __name__ == "__main__":
    main()
