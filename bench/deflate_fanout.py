"""Fan-out with permessage-deflate (RFC 7692): WSE plain and compressed, beside the peers that
have it (websockets, socketify; Centrifugo when its binary is on PATH).

    python bench/deflate_fanout.py --subscribers 200 --messages 1000 --sizes 60,1000 --rounds 3

For every server it:
1. starts it pinned to core 0 on a free loopback port: ``wse`` (``wse run bench.fanout_app:app``,
   ``--permessage-deflate`` or not), ``websockets`` (``bench/peers/websockets_peer.py``, its
   default per-connection context takeover), ``socketify`` (uWS with ``SHARED_COMPRESSOR``);
   the peers get ``BENCH_DEFLATE=1`` to turn compression on;
2. opens S subscribers in this process, pinned to core 1: raw asyncio connections that offer
   ``permessage-deflate; client_max_window_bits`` (what browsers send), subscribe to ``bench``
   and inflate and parse every message, checking its sequence number (no gap, no duplicate);
3. per message size: one unmeasured warm-up round, then R measured rounds of ``bench.publish``
   (M messages of about SIZE bytes of JSON from the peers' common protocol, ``bench/peers/common.py``),
   each timed from the request to the last delivery.

It reports, per round: deliveries per wall second, deliveries per server CPU-second (all
threads, from ``/proc/PID/task/*/schedstat``), wire bytes per delivery (frame headers included)
and the client's CPU share (near 100%: the client, which inflates in Python, was the bottleneck,
and the wall rate is a lower bound; the per-CPU figure still holds). Median, min and max over
the rounds. ``--json FILE`` writes the raw figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
TAIL = b"\x00\x00\xff\xff"
OFFER = "permessage-deflate; client_max_window_bits"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_ns(pid: int) -> int:
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


# ---- servers -------------------------------------------------------------------------------------


def start_server(name: str, deflate: bool) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), BENCH_DEFLATE="1" if deflate else "0")
    if name == "wse":
        cmd = [sys.executable, "-m", "wse_cli.main", "run", "bench.fanout_app:app", "--port", str(port), "--log-level", "warning"]
        cmd.append("--permessage-deflate" if deflate else "--no-permessage-deflate")
    elif name in ("websockets", "socketify"):
        cmd = [sys.executable, str(REPO / "bench/peers" / f"{name}_peer.py"), "--port", str(port)]
    else:
        raise ValueError(name)
    proc = subprocess.Popen(["taskset", "-c", "0", *cmd], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        raise RuntimeError(f"{name} did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc, port


# ---- the client ----------------------------------------------------------------------------------


def frame(payload: bytes, opcode: int = 1) -> bytes:
    n = len(payload)
    head = bytearray([0x80 | opcode])
    if n < 126:
        head.append(0x80 | n)
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    key = os.urandom(4)
    masked = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
    return bytes(head) + key + masked


class Client(asyncio.Protocol):
    """One connection: the upgrade, then frames; ticks are inflated, parsed and sequence-checked."""

    def __init__(self, port: int, offer: str | None) -> None:
        self.port, self.offer = port, offer
        self.buf = bytearray()
        self.upgraded = asyncio.get_running_loop().create_future()
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.deflate = False
        self.no_context = True
        self.z: Any = None
        self.ticks = 0
        self.next_s = 0
        self.target = 0
        self.done: asyncio.Future[None] | None = None
        self.bytes = 0
        self.compressed = 0
        self.errors = 0

    def connection_made(self, transport: Any) -> None:
        self.tr = transport
        key = base64.b64encode(os.urandom(16)).decode()
        ext = f"Sec-WebSocket-Extensions: {self.offer}\r\n" if self.offer else ""
        transport.write(
            f"GET /wse HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n".encode()
        )

    def send(self, msg: dict[str, Any]) -> None:
        self.tr.write(frame(orjson.dumps(msg)))

    def data_received(self, data: bytes) -> None:
        self.bytes += len(data)
        self.buf += data
        if not self.upgraded.done():
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1").lower()
            del self.buf[: end + 4]
            for line in head.split("\r\n"):
                if line.startswith("sec-websocket-extensions:") and "permessage-deflate" in line:
                    self.deflate = True
                    self.no_context = "server_no_context_takeover" in line
                    self.z = None if self.no_context else zlib.decompressobj(-15)
            self.upgraded.set_result(None)
        buf, pos, n_all = self.buf, 0, len(self.buf)
        while n_all - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n, h = b1 & 0x7F, 2
            if n == 126:
                if n_all - pos < 4:
                    break
                n, h = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif n == 127:
                if n_all - pos < 10:
                    break
                n, h = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if n_all - pos < h + n:
                break
            payload = bytes(buf[pos + h : pos + h + n])
            pos += h + n
            if b0 & 0x0F >= 8:
                continue
            if b0 & 0x40:
                self.compressed += 1
                payload = (self.z or zlib.decompressobj(-15)).decompress(payload + TAIL)
            self.on_message(payload)
        del buf[:pos]

    def on_message(self, payload: bytes) -> None:
        m = orjson.loads(payload)
        if m.get("t") == "tick":
            s = m["p"]["s"]
            if s != self.next_s:
                self.errors += 1
            self.next_s = s + 1
            self.ticks += 1
            if self.ticks == self.target and self.done is not None and not self.done.done():
                self.done.set_result(None)
        else:
            self.inbox.put_nowait(m)


async def open_client(port: int, offer: str | None) -> Client:
    loop = asyncio.get_running_loop()
    _, c = await loop.create_connection(lambda: Client(port, offer), "127.0.0.1", port)
    await asyncio.wait_for(c.upgraded, 10)
    m = await asyncio.wait_for(c.inbox.get(), 10)
    assert m.get("t") == "server_ready", m
    return c


async def run_server(name: str, deflate: bool, args: argparse.Namespace) -> list[dict[str, Any]]:
    proc, port = start_server(name, deflate)
    rows: list[dict[str, Any]] = []
    try:
        subs = []
        for _ in range(args.subscribers):
            subs.append(await open_client(port, OFFER))
        for c in subs:
            c.send({"c": "WSE", "t": "subscription_update", "p": {"action": "subscribe", "topics": ["bench"]}})
        for c in subs:
            await asyncio.wait_for(c.inbox.get(), 10)
        negotiated = all(c.deflate for c in subs)
        pub = await open_client(port, None)
        for size in args.sizes:
            for r in range(args.rounds + 1):
                loop = asyncio.get_running_loop()
                for c in subs:
                    c.ticks, c.next_s, c.target, c.bytes, c.compressed = 0, 0, args.messages, 0, 0
                    c.done = loop.create_future()
                cpu0, me0, t0 = cpu_ns(proc.pid), self_cpu_s(), time.perf_counter()
                pub.send({"t": "bench.publish", "p": {"topic": "bench", "count": args.messages, "size": size}})
                await asyncio.wait_for(asyncio.gather(*(c.done for c in subs)), 300)
                wall, cpu, me = time.perf_counter() - t0, (cpu_ns(proc.pid) - cpu0) / 1e9, self_cpu_s() - me0
                while not pub.inbox.empty():
                    pub.inbox.get_nowait()
                deliveries = sum(c.ticks for c in subs)
                errors = sum(c.errors for c in subs)
                if r == 0:
                    continue  # warm-up
                rows.append({
                    "server": name, "deflate": deflate, "negotiated": negotiated, "size": size, "round": r,
                    "deliveries": deliveries, "errors": errors, "wall_s": wall, "server_cpu_s": cpu,
                    "client_cpu_share": me / wall, "per_s": deliveries / wall, "per_cpu_s": deliveries / cpu if cpu else 0.0,
                    "wire_bytes": sum(c.bytes for c in subs) / deliveries,
                    "compressed_share": sum(c.compressed for c in subs) / deliveries,
                })
                print(f"  {name:10} deflate={deflate!s:5} size={size:5} round {r}: {deliveries / wall / 1e3:8.1f}k/s "
                      f"{rows[-1]['per_cpu_s'] / 1e3:9.1f}k/cpu-s {rows[-1]['wire_bytes']:7.1f} B/msg "
                      f"client {rows[-1]['client_cpu_share']:.0%} errors {errors}", flush=True)
        for c in subs + [pub]:
            c.tr.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return rows


def summary(rows: list[dict[str, Any]]) -> str:
    out = ["| server | permessage-deflate | size (B) | deliveries/s | deliveries per server CPU-s | wire bytes per delivery | compressed | client CPU |",
           "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["server"], r["deflate"], r["size"]) for r in rows}, key=lambda k: (k[2], k[0] != "wse", k[0], k[1]))
    for name, deflate, size in keys:
        rs = [r for r in rows if (r["server"], r["deflate"], r["size"]) == (name, deflate, size)]

        def mmm(key: str, scale: float = 1e3, unit: str = "k") -> str:
            v = [r[key] / scale for r in rs]
            return f"{statistics.median(v):.0f}{unit} ({min(v):.0f}-{max(v):.0f})"

        out.append(f"| {name} | {'on' if deflate else 'off'} | {size} | {mmm('per_s')} | {mmm('per_cpu_s')} | "
                   f"{statistics.median(r['wire_bytes'] for r in rs):.0f} | {statistics.median(r['compressed_share'] for r in rs):.0%} | "
                   f"{statistics.median(r['client_cpu_share'] for r in rs):.0%} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subscribers", type=int, default=200)
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--sizes", default="60,1000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--servers", default="wse:off,wse:on,websockets:on,socketify:on,centrifugo:on")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    os.sched_setaffinity(0, {1})
    rows: list[dict[str, Any]] = []
    for spec in args.servers.split(","):
        name, _, mode = spec.partition(":")
        if name == "socketify":
            try:
                import socketify  # noqa: F401
            except ImportError:
                print("socketify: skipped (not installed: pip install socketify)", flush=True)
                continue
        if name == "centrifugo":
            why = "no centrifugo binary on PATH" if not shutil.which("centrifugo") else "not driven by this script yet"
            print(f"centrifugo: skipped ({why})", flush=True)
            continue
        try:
            import uvloop

            rows += uvloop.run(run_server(name, mode == "on", args))
        except (RuntimeError, OSError, asyncio.TimeoutError) as e:
            print(f"{name}: skipped ({e!r})", flush=True)
    print()
    print(summary(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
