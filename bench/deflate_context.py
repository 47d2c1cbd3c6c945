"""permessage-deflate: what context takeover buys and what it costs, per message shape.

    python bench/deflate_context.py [--messages 5000]

For each shape it compresses a stream of messages (zlib level 6, raw DEFLATE, sync flush, as
RFC 7692 sends them) two ways:
- no context takeover (what the engine does): every message compressed on its own, so the
  result can be shared: one compression per publication, whatever the number of subscribers;
- context takeover (what websockets and browsers do by default): one compressor per connection
  that remembers earlier messages, so every subscriber needs its own compression.
It prints the bytes per message each way and the CPU per compression, and from them the server
CPU per publication for S subscribers (S compressions with context, one without).
"""

from __future__ import annotations

import argparse
import random
import time
import zlib

import orjson


def shapes(n: int) -> dict[str, list[bytes]]:
    rnd = random.Random(7)
    syms = ["AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "TSLA", "META", "BRK.B"]

    def env(t: str, seq: int, p: object) -> bytes:
        return orjson.dumps({"c": "U", "t": t, "seq": seq, "tp": "bench", "p": p})

    return {
        "bench tick, 60 B payload (x padding)": [env("tick", i + 1, {"s": i, "d": "x" * 42}) for i in range(n)],
        "bench tick, 1000 B payload (x padding)": [env("tick", i + 1, {"s": i, "d": "x" * 982}) for i in range(n)],
        "price tick (symbol, bid/ask, size, time)": [
            env("quote", i + 1, {"sym": rnd.choice(syms), "bid": round(rnd.uniform(100, 900), 2), "ask": round(rnd.uniform(100, 900), 2),
                                  "size": rnd.randint(1, 5000), "ts": 1_760_000_000_000 + i * 37})
            for i in range(n)
        ],
        "order book, 10 levels": [
            env("book", i + 1, {"sym": rnd.choice(syms), "bids": [[round(rnd.uniform(100, 900), 2), rnd.randint(1, 900)] for _ in range(10)],
                                 "asks": [[round(rnd.uniform(100, 900), 2), rnd.randint(1, 900)] for _ in range(10)]})
            for i in range(n)
        ],
    }


def no_context(msgs: list[bytes]) -> tuple[float, float]:
    out = 0
    t0 = time.process_time()
    for m in msgs:
        z = zlib.compressobj(6, zlib.DEFLATED, -15)
        out += len(z.compress(m) + z.flush(zlib.Z_SYNC_FLUSH)) - 4
    return out / len(msgs), (time.process_time() - t0) / len(msgs)


def with_context(msgs: list[bytes]) -> tuple[float, float]:
    out = 0
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    t0 = time.process_time()
    for m in msgs:
        out += len(z.compress(m) + z.flush(zlib.Z_SYNC_FLUSH)) - 4
    return out / len(msgs), (time.process_time() - t0) / len(msgs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--subscribers", type=int, default=1000)
    args = ap.parse_args()
    s = args.subscribers
    print(f"| message | plain B | no context: B, µs per compression | context takeover: B, µs per compression | "
          f"compression CPU per publication to {s:,} subscribers: no context / context |")
    print("|---|---|---|---|---|")
    for name, msgs in shapes(args.messages).items():
        plain = sum(map(len, msgs)) / len(msgs)
        nb, nt = no_context(msgs)
        cb, ct = with_context(msgs)
        print(f"| {name} | {plain:.0f} | {nb:.0f}, {nt * 1e6:.1f} | {cb:.0f}, {ct * 1e6:.1f} | "
              f"{nt * 1e6:.1f} µs / {ct * s * 1e3:.1f} ms |")


if __name__ == "__main__":
    main()
