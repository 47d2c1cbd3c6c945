"""The application bench/redis_hosts.py serves: ``bench.burst`` publishes ``count`` timestamped
publications to ``topics`` topics at up to ``rate`` per second (0: as fast as it can), then
answers ``bench.done``. ``WSE_BENCH_RECOVERY=1`` turns recovery on (Redis stamps them)."""

from __future__ import annotations

import asyncio
import os
import time

from wse import Connection, Message, WSEApp, WSEConfig

app = WSEApp(WSEConfig(port=0, idle_timeout_ms=0, ping_interval_ms=0, max_connections=20_000,
                       recovery=os.environ.get("WSE_BENCH_RECOVERY") == "1", recovery_buffer=1024,
                       redis_buffer=1_000_000))


@app.on("bench.burst")
async def burst(conn: Connection, msg: Message) -> None:
    p = msg.payload or {}
    count, rate, topics = int(p.get("count", 1000)), float(p.get("rate", 0)), int(p.get("topics", 1))
    pad = "x" * int(p.get("pad", 40))
    prefix = str(p.get("prefix", "b"))
    chunk = 100
    t0 = time.perf_counter()
    for start in range(0, count, chunk):
        for s in range(start, min(count, start + chunk)):
            app.publish(f"{prefix}{s % topics}", {"s": s, "t": time.time_ns(), "d": pad}, type="tick")
        if rate > 0:
            ahead = (start + chunk) / rate - (time.perf_counter() - t0)
            if ahead > 0:
                await asyncio.sleep(ahead)
        else:
            await asyncio.sleep(0)
    app.send(conn, {"published": count, "seconds": time.perf_counter() - t0}, type="bench.done")
