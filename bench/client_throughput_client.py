"""One client receiving a stream: the measured side of ``bench/client_throughput.py``.

Runs with either client library under the import name ``wse_client``: this repository's
``wse-engine-client`` (host Python) or the published ``wse-client`` 2.5.1 (in the reference chroot,
where ``wse_client`` is that package). Usage:

    python bench/client_throughput_client.py URL --count 50000 --size 60 [--warmup 2000]

It connects with the seed's snippet, subscribes to ``bench``, asks the server
(``bench/peers/wse_app.py``) for ``count`` publications of about ``size`` bytes and times from the
request to the last one received by the application through ``async for event in client``,
checking that ``p.s`` runs 0..count-1 in order. Prints one JSON line: the library and version,
messages received, seconds, messages/s, and the client process's CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import wse_client
from wse_client import connect

OURS = hasattr(wse_client, "WSEClient")


def library() -> str:
    for dist in ("wse-engine-client", "wse-client"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return "wse_client (unknown version)"


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def receive(client: Any, count: int, timeout: float) -> tuple[int, int]:
    """Ticks until ``count`` arrived; returns (received, out_of_order)."""
    got = 0
    bad = 0
    expect = 0

    async def loop() -> None:
        nonlocal got, bad, expect
        async for event in client:
            if event.type != "tick":
                continue
            s = event.payload["s"]
            if s != expect:
                bad += 1
            expect = s + 1
            got += 1
            if got == count:
                return

    try:
        await asyncio.wait_for(loop(), timeout)
    except asyncio.TimeoutError:
        pass
    return got, bad


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--count", type=int, default=50_000)
    ap.add_argument("--size", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=2_000)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--format", choices=("json", "msgpack", "zlib", "e2e"), default="json",
                    help="msgpack: ?format=msgpack; zlib: ?compression=true (use --size over 1 KiB); e2e: encryption")
    args = ap.parse_args()

    # The published client drops its oldest events when its queue (default 1000) is full, so it
    # gets a queue big enough to hold the whole stream; ours blocks the socket instead (default).
    options: dict[str, Any] = {} if OURS else {"queue_size": args.count + args.warmup + 100}
    url = args.url
    if args.format == "e2e":
        options["encryption"] = True
    elif args.format == "msgpack":
        if OURS:
            options["msgpack"] = True
        else:
            url += ("&" if "?" in url else "?") + "format=msgpack"
    elif args.format == "zlib":
        url += ("&" if "?" in url else "?") + "compression=true"
    async with connect(url, **options) as client:
        await client.subscribe(["bench"])
        if not OURS:
            await asyncio.sleep(0.5)  # its subscribe does not wait for the ack
        await client.send("bench.publish", {"topic": "bench", "count": args.warmup, "size": args.size})
        warm, _ = await receive(client, args.warmup, 30)
        if warm != args.warmup:
            raise SystemExit(f"warm-up: received {warm} of {args.warmup}")
        c0 = cpu()
        t0 = time.perf_counter()
        await client.send("bench.publish", {"topic": "bench", "count": args.count, "size": args.size})
        got, bad = await receive(client, args.count, args.timeout)
        elapsed = time.perf_counter() - t0
        c1 = cpu()
    print(
        json.dumps(
            {
                "library": library(),
                "format": args.format,
                "received": got,
                "expected": args.count,
                "out_of_order": bad,
                "seconds": elapsed,
                "msgs_per_s": got / elapsed if elapsed > 0 else 0.0,
                "client_cpu_s": c1 - c0,
            }
        )
    )


asyncio.run(main())
