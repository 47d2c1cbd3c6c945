"""Soak: mixed load on one server for a long time, with memory, descriptors and loss watched.

    python bench/run.py soak                      # 20 minutes, the committed run
    python bench/run.py soak --duration 120       # what the test command runs

One ``wse run`` server (the suite's, ``bench/peers/wse_app.py``, with ``WSE_BENCH_SOAK=1``: the
defaults of a production server, JWT on, zlib from 256 bytes, re-keying every 30 s, presence on,
recovery off; pinned to core 0) takes, at once:
- a feed: one client publishes through the server's handler, 200 publications/s;
- steady subscribers for the whole run, each checking that the feed arrives complete and in
  order: plain JSON (``websockets``), zlib (``?compression=true``), msgpack and E2E-encrypted
  (our Python client, which re-keys every 30 s here);
- churn: clients that connect, subscribe, take a few publications, unsubscribe and leave, over
  and over, and one connection that subscribes and unsubscribes random topics without end;
- inbound: paced senders whose every message the server's handler counts.

Every few seconds it samples the server's RSS and open descriptors. At the end it stops the
load, checks that nothing was lost (every steady subscriber has every publication after its
first, the handler counted every message sent), that the descriptors came back to where they
started once the clients left, and that RSS stayed flat once warm (the last quarter against the
second). The samples and verdict go to ``--out`` (JSON) and a plot to ``--plot``. Exit 0 only if
every check holds. Loopback only; the run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jwt as pyjwt
import orjson
from websockets.asyncio.client import connect as ws_connect

from .servers import JWT_SECRET, ROOT, Server, free_port, rss_kib

sys.path.insert(0, str(ROOT / "clients" / "python"))
from wse_client import connect  # noqa: E402

FEED = "soak.feed"
FEED_SIZE = 460  # over the server's compression threshold: zlib clients get ``C:`` frames


def token(user: str) -> str:
    return pyjwt.encode({"sub": user, "exp": int(time.time()) + 24 * 3600}, JWT_SECRET, algorithm="HS256")


def raw_client(url: str, user: str, **kw: Any) -> Any:
    """A plain ``websockets`` connection with a token (the first frame it gets is ``server_ready``)."""
    return ws_connect(url, additional_headers={"Authorization": f"Bearer {token(user)}"}, **kw)


async def ask(ws: Any, t: str, p: Any = None) -> Any:
    """Send ``t`` and wait for the answer of that type (for ``echo``: every earlier message handled)."""
    await ws.send(orjson.dumps({"t": t, "p": p}))
    while (m := orjson.loads(await asyncio.wait_for(ws.recv(), 30))).get("t") != t:
        pass
    return m.get("p")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Feed:
    """Per subscriber: the feed numbers it got, checked for gaps and order as they come."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.first: int | None = None
        self.last: int | None = None
        self.count = 0
        self.errors: list[str] = []

    def add(self, n: int) -> None:
        if self.first is None:
            self.first = n
        elif n != (self.last or 0) + 1 and len(self.errors) < 10:
            self.errors.append(f"{self.kind}: got {n} after {self.last}")
        self.last = n
        self.count += 1

    def complete(self, upto: int) -> bool:
        return self.first is not None and self.last == upto and self.count == upto - self.first + 1


class Soak:
    def __init__(self, url: str, pid: int, args: argparse.Namespace) -> None:
        self.url, self.pid, self.args = url, pid, args
        self.stop = asyncio.Event()
        self.feed_stop = asyncio.Event()  # set after the churners are out: they wait for ticks
        self.fed = 0
        self.sent_inbound = 0
        self.churn_cycles = 0
        self.topic_churn = 0
        self.feeds: list[Feed] = []
        self.samples: list[dict[str, Any]] = []
        self.errors: list[str] = []

    async def feeder(self) -> None:
        async with raw_client(self.url, "feeder") as ws:
            await ws.recv()  # server_ready
            while not self.feed_stop.is_set():
                await ws.send(orjson.dumps({"t": "bench.feed", "p": {"topic": FEED, "s": self.fed, "size": FEED_SIZE}}))
                self.fed += 1
                await asyncio.sleep(1 / self.args.feed_rate)
            await ask(ws, "echo", "end")

    async def plain_subscriber(self, i: int, ready: asyncio.Event) -> None:
        f = Feed("plain")
        self.feeds.append(f)
        async with raw_client(self.url, f"plain{i}", max_size=None) as ws:
            await ws.recv()  # server_ready
            await ws.send(orjson.dumps({"c": "WSE", "t": "subscription_update", "p": {"action": "subscribe", "topics": [FEED]}}))
            ready.set()
            async for raw in ws:
                m = orjson.loads(raw)
                if m.get("t") == "tick":
                    f.add(m["p"]["s"])

    async def client_subscriber(self, kind: str, i: int, ready: asyncio.Event) -> None:
        f = Feed(kind)
        self.feeds.append(f)
        url = self.url + ("?compression=true" if kind == "zlib" else "")
        opts: dict[str, Any] = {"msgpack": kind == "msgpack", "encryption": kind == "encrypted", "reconnect": False}
        async with connect(url, token=token(f"{kind}{i}"), **opts) as client:
            await client.subscribe(FEED)
            ready.set()
            async for event in client:
                if event.type == "tick":
                    f.add(event.payload["s"])

    async def churner(self, i: int) -> None:
        rnd = random.Random(i)
        while not self.stop.is_set():
            async with connect(self.url, token=token(f"churn{i}"), reconnect=False,
                               msgpack=rnd.random() < 0.3, encryption=rnd.random() < 0.3) as client:
                await client.subscribe([FEED, f"churn.{rnd.randrange(1000)}"])
                got = 0
                async for event in client:
                    if event.type == "tick":
                        got += 1
                        if got >= rnd.randrange(1, 20):
                            break
                await client.unsubscribe(FEED)
            self.churn_cycles += 1
            await asyncio.sleep(0.02)  # pacing: churn beside the rest, not a connection flood

    async def topic_churner(self) -> None:
        rnd = random.Random(7)
        async with connect(self.url, token=token("topics"), reconnect=False) as client:
            while not self.stop.is_set():
                topics = [f"room.{rnd.randrange(5000)}" for _ in range(rnd.randrange(1, 50))]
                await client.subscribe(topics)
                await client.unsubscribe(topics)
                self.topic_churn += len(topics)
                await asyncio.sleep(0.01)  # pacing

    async def sender(self, i: int) -> None:
        async with raw_client(self.url, f"sender{i}") as ws:
            await ws.recv()  # server_ready
            msg = orjson.dumps({"t": "count", "p": {"i": i}})
            while not self.stop.is_set():
                for _ in range(10):
                    await ws.send(msg)
                self.sent_inbound += 10
                await asyncio.sleep(10 / self.args.inbound_rate)
            # One round trip: the handler has seen everything this connection sent before it.
            await ask(ws, "echo", i)

    async def sampler(self, t0: float) -> None:
        while not self.stop.is_set():
            self.samples.append({"t": round(time.monotonic() - t0, 2), "rss_kib": rss_kib([self.pid]), "fds": fds(self.pid),
                                 "fed": self.fed, "churn_cycles": self.churn_cycles, "inbound_sent": self.sent_inbound})
            try:
                await asyncio.wait_for(self.stop.wait(), self.args.sample_s)
            except TimeoutError:
                pass

    async def server_stats(self) -> dict[str, Any]:
        async with raw_client(self.url, "stats") as ws:
            return dict(await ask(ws, "bench.stats"))

    async def run(self) -> dict[str, Any]:
        a = self.args
        fds_start = fds(self.pid)
        t0 = time.monotonic()
        sampler = asyncio.ensure_future(self.sampler(t0))
        steady: list[asyncio.Task[None]] = []
        for i in range(a.subscribers):
            for kind in ("plain", "zlib", "msgpack", "encrypted"):
                ready = asyncio.Event()
                coro = self.plain_subscriber(i, ready) if kind == "plain" else self.client_subscriber(kind, i, ready)
                steady.append(asyncio.ensure_future(coro))
                await asyncio.wait_for(ready.wait(), 30)
        feeder = asyncio.ensure_future(self.feeder())
        load = [asyncio.ensure_future(self.churner(i)) for i in range(a.churners)]
        load.append(asyncio.ensure_future(self.topic_churner()))
        load += [asyncio.ensure_future(self.sender(i)) for i in range(a.senders)]
        # The load runs for the duration unless a part of it fails first.
        await asyncio.wait([feeder, *load], timeout=a.duration, return_when=asyncio.FIRST_EXCEPTION)
        self.stop.set()
        done = await asyncio.wait_for(asyncio.gather(*load, return_exceptions=True), 60)
        self.feed_stop.set()
        done += await asyncio.wait_for(asyncio.gather(feeder, return_exceptions=True), 60)
        for r in done:
            if isinstance(r, BaseException):
                self.errors.append(f"load task failed: {r!r}")
        # The feeder's last round trip is back: every publication is out. Wait for the steady
        # subscribers to have all of them (or fail), then close them.
        last = self.fed - 1
        deadline = time.monotonic() + 60
        while not all(f.complete(last) or f.errors for f in self.feeds) and time.monotonic() < deadline:
            if any(t.done() for t in steady):
                break
            await asyncio.sleep(0.05)
        for t in steady:
            if t.done() and t.exception() is not None:
                self.errors.append(f"subscriber failed: {t.exception()!r}")
            t.cancel()
        await asyncio.gather(*steady, return_exceptions=True)
        await sampler
        stats = await self.server_stats()
        # Descriptors once every client has gone (the server closes its side on its own time).
        deadline = time.monotonic() + 30
        fds_end = fds(self.pid)
        while fds_end > fds_start and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            fds_end = fds(self.pid)
        return self.verdict(last, stats, fds_start, fds_end, time.monotonic() - t0)

    def verdict(self, last: int, stats: dict[str, Any], fds_start: int, fds_end: int, wall: float) -> dict[str, Any]:
        incomplete = [f"{f.kind}: {f.first}..{f.last} ({f.count})" for f in self.feeds if not f.complete(last)]
        gaps = [e for f in self.feeds for e in f.errors]
        rss = [s["rss_kib"] for s in self.samples]
        q = max(1, len(rss) // 4)
        warm, tail = statistics.median(rss[q:2 * q] or rss), statistics.median(rss[-q:])
        growth_mib = (tail - warm) / 1024
        limit_mib = max(self.args.rss_slack_mib, warm / 1024 * 0.10)
        checks = {
            "every publication reached every steady subscriber, in order": not incomplete and not gaps,
            "the handler counted every inbound message": stats["received"] == self.sent_inbound,
            "descriptors back to the start once the clients left": fds_end <= fds_start,
            f"RSS flat once warm (last quarter within {limit_mib:.0f} MiB of the second)": growth_mib <= limit_mib,
            "no client task failed": not self.errors,
        }
        return {
            "ok": all(checks.values()),
            "checks": checks,
            "wall_s": round(wall, 1),
            "publications": last + 1,
            "deliveries_checked": sum(f.count for f in self.feeds),
            "steady_subscribers": len(self.feeds),
            "churn_cycles": self.churn_cycles,
            "topic_subscriptions_churned": self.topic_churn,
            "inbound_sent": self.sent_inbound,
            "inbound_counted": stats["received"],
            "fds_start": fds_start,
            "fds_end": fds_end,
            "rss_warm_mib": round(warm / 1024, 1),
            "rss_tail_mib": round(tail / 1024, 1),
            "rss_growth_mib": round(growth_mib, 2),
            "incomplete": incomplete[:10],
            "gaps": gaps[:10],
            "errors": self.errors[:10],
            "samples": self.samples,
        }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["samples"]
    t = [x["t"] / 60 for x in s]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(t, [x["rss_kib"] / 1024 for x in s], label="server RSS (MiB)")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MiB)")
    ax2 = ax.twinx()
    ax2.plot(t, [x["fds"] for x in s], color="tab:orange", label="open descriptors")
    ax2.set_ylabel("descriptors")
    ax.set_ylim(0, max(x["rss_kib"] for x in s) / 1024 * 1.25)
    ax2.set_ylim(0, max(x["fds"] for x in s) * 1.25)
    ax.set_title(f"soak: {result['publications']} publications, {result['churn_cycles']} churn cycles, "
                 f"{result['inbound_counted']} inbound; {'ok' if result['ok'] else 'FAILED'}", fontsize=9)
    fig.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="bench/run.py soak", description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=1200, help="seconds of load (default 20 minutes)")
    ap.add_argument("--subscribers", type=int, default=3, help="steady subscribers of each kind")
    ap.add_argument("--churners", type=int, default=4)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--feed-rate", type=float, default=200, help="publications per second")
    ap.add_argument("--inbound-rate", type=float, default=500, help="messages per second per sender")
    ap.add_argument("--sample-s", type=float, default=5)
    ap.add_argument("--rss-slack-mib", type=float, default=8)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    ap.add_argument("--plot", type=Path, default=None, help="PNG of RSS and descriptors over time")
    args = ap.parse_args(argv)
    server = Server("wse", free_port(7100), jwt=True, soak=True)
    server.start()
    try:
        result = asyncio.run(Soak(f"ws://127.0.0.1:{server.port}/wse", server.pid, args).run())
    finally:
        server.stop()
    result["command"] = "python bench/run.py soak " + " ".join(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    if args.plot:
        plot(result, args.plot)
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=1))
    return 0 if result["ok"] else 1
