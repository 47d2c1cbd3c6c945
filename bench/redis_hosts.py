"""Several hosts over Redis against one host: deliveries/s, the latency Redis adds (p50/p99),
Redis CPU per publication, and publications/s through one Redis.

    python bench/redis_hosts.py [--subscribers 40] [--count 20000] [--rate 10000] [--json out.json]

It starts its own ``redis-server`` on a free loopback port and, per scenario, ``wse run
bench.redis_app:app --workers 1`` "hosts" on their own ports:

- ``one-host``: publisher and subscribers on one host, no Redis;
- ``two-hosts``: the publisher on host A, the subscribers on host B, through Redis
  (``--recovery`` adds a run with recovery on: Redis stamps every publication);
- ``throughput``: host A publishes as fast as its worker can to 64 topics that host B
  subscribes to (one subscriber each); publications/s through Redis is Redis's
  ``published`` counter over the run, and Redis's CPU per publication is from /proc.

Latency is from the publisher's ``app.publish()`` (a timestamp in the payload) to the
subscriber's receipt (websockets client in this process), so it includes the client's own
overhead; the difference between the scenarios is what Redis adds. Standalone: it does not
touch bench/run.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.redis_util import RedisServer, redis_cpu_seconds  # noqa: E402


class Host:
    def __init__(self, redis: str | None, recovery: bool) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT), WSE_BENCH_RECOVERY="1" if recovery else "0")
        args = [sys.executable, "-m", "wse_cli.main", "run", "bench.redis_app:app", "--workers", "1",
                "--metrics-bind", "127.0.0.1:0", "--log-level", "warning"]
        if redis:
            args += ["--redis", redis]
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self.err, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("wse: serving "):
            self.proc.kill()
            self.err.seek(0)
            raise RuntimeError(f"host did not start: {line!r} {self.err.read()}")
        self.url = line.split()[2]
        self.metrics = line.split()[-1]

    def metric(self, name: str) -> float:
        from wse.metrics import parse

        with urllib.request.urlopen(self.metrics, timeout=5) as r:
            return sum(v for n, _, v in parse(r.read().decode()) if n == name)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def subscribe(ws: Any, topic: str) -> None:
    await ws.send(orjson.dumps({"t": "subscription_update", "p": {"action": "subscribe", "topics": [topic]}}))
    while True:
        m = orjson.loads(await ws.recv())
        if m.get("t") == "subscription_update":
            return


async def ready(url: str) -> Any:
    ws = await connect(url, max_size=None)
    while orjson.loads(await ws.recv()).get("t") != "server_ready":
        pass
    return ws


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def fanout(pub_url: str, sub_url: str, subscribers: int, count: int, rate: float, host_b: Host | None) -> dict[str, Any]:
    subs = [await ready(sub_url) for _ in range(subscribers)]
    for ws in subs:
        await subscribe(ws, "b0")
    pub = await ready(pub_url)
    if host_b is not None:
        # Interest crosses to Redis asynchronously: wait until host B subscribed.
        for _ in range(200):
            if host_b.metric("wse_redis_subscriptions") >= 1:
                break
            await asyncio.sleep(0.05)
    lat: list[float] = []
    got = [0] * subscribers

    async def read(i: int, ws: Any) -> None:
        while got[i] < count:
            m = orjson.loads(await ws.recv())
            if m.get("t") == "tick":
                got[i] += 1
                if i % 4 == 0:
                    lat.append((time.time_ns() - m["p"]["t"]) / 1e6)

    t0 = time.perf_counter()
    readers = [asyncio.ensure_future(read(i, ws)) for i, ws in enumerate(subs)]
    await pub.send(orjson.dumps({"t": "bench.burst", "p": {"count": count, "rate": rate, "topics": 1}}))
    await asyncio.wait_for(asyncio.gather(*readers), 300)
    dt = time.perf_counter() - t0
    for ws in [pub, *subs]:
        await ws.close()
    return {"deliveries_per_s": round(sum(got) / dt), "latency_ms_p50": round(pct(lat, 0.5), 2),
            "latency_ms_p99": round(pct(lat, 0.99), 2), "seconds": round(dt, 2)}


async def throughput(a: Host, b: Host, redis_pid: int, count: int, topics: int) -> dict[str, Any]:
    subs = [await ready(b.url) for _ in range(topics)]
    for i, ws in enumerate(subs):
        await subscribe(ws, f"b{i}")
    for _ in range(200):
        if b.metric("wse_redis_subscriptions") >= topics:
            break
        await asyncio.sleep(0.05)
    pub = await ready(a.url)
    cpu0, t0 = redis_cpu_seconds(redis_pid), time.perf_counter()
    out0 = a.metric("wse_redis_published_total")
    await pub.send(orjson.dumps({"t": "bench.burst", "p": {"count": count, "rate": 0, "topics": topics, "pad": 20}}))
    # Done when every publication has left host A for Redis.
    while a.metric("wse_redis_published_total") - out0 < count:
        await asyncio.sleep(0.05)
    dt = time.perf_counter() - t0
    cpu = redis_cpu_seconds(redis_pid) - cpu0
    for ws in [pub, *subs]:
        await ws.close()
    return {"publications_per_s": round(count / dt), "redis_cpu_us_per_publication": round(cpu / count * 1e6, 2),
            "redis_cpu_share": round(cpu / dt, 2), "seconds": round(dt, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subscribers", type=int, default=40)
    ap.add_argument("--count", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=10_000)
    ap.add_argument("--throughput-count", type=int, default=200_000)
    ap.add_argument("--recovery", action="store_true", help="also run with recovery on (Redis stamps every publication)")
    ap.add_argument("--only-throughput", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    redis = RedisServer()
    results: dict[str, Any] = {"redis": subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2]}
    modes = [False, True] if args.recovery else [False]
    try:
        if not args.only_throughput:
            one = Host(None, False)
            try:
                results["one-host"] = asyncio.run(fanout(one.url, one.url, args.subscribers, args.count, args.rate, None))
            finally:
                one.stop()
            print("one-host", results["one-host"], flush=True)
            for recovery in modes:
                a, b = Host(redis.url, recovery), Host(redis.url, recovery)
                name = "two-hosts" + ("-recovery" if recovery else "")
                try:
                    cpu0 = redis_cpu_seconds(redis.pid())
                    r = asyncio.run(fanout(a.url, b.url, args.subscribers, args.count, args.rate, b))
                    r["redis_cpu_us_per_publication"] = round((redis_cpu_seconds(redis.pid()) - cpu0) / args.count * 1e6, 2)
                    results[name] = r
                finally:
                    a.stop()
                    b.stop()
                print(name, results[name], flush=True)
        for recovery in modes:
            a, b = Host(redis.url, recovery), Host(redis.url, recovery)
            name = "throughput" + ("-recovery" if recovery else "")
            try:
                results[name] = asyncio.run(throughput(a, b, redis.pid(), args.throughput_count, 64))
            finally:
                a.stop()
                b.stop()
            print(name, results[name], flush=True)
    finally:
        redis.stop()
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    main()
