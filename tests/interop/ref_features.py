"""Runs inside the reference chroot (Python 3.13, wse-client 2.5.1, unmodified).

Usage: ref_features.py MODE URL TOKEN, MODE one of encrypted, compressed, msgpack, recovery.
Connects as that feature needs, subscribes to "feat", has our test app publish, and prints one
JSON line with the `i` of every publication received (and, for recovery, the client's state).
"""

import asyncio
import json
import sys

from settle import settled
from wse_client import connect

BIG = "lorem ipsum dolor sit amet " * 100


async def collect(client, n: int, out: list, timeout: float = 20) -> None:
    async def go() -> None:
        async for event in client:
            if event.type == "pub":
                out.append({"i": event.payload["i"], "text": len(event.payload.get("text", "")), "o": event.offset})
                if len(out) >= n:
                    return

    await asyncio.wait_for(go(), timeout)


async def main(mode: str, url: str, token: str) -> None:
    got: list = []
    kw = {"encryption": True} if mode == "encrypted" else {}
    if mode == "msgpack":
        url += "?format=msgpack"
    async with connect(url, token=token, **kw) as client:
        await settled(client)  # client_hello / server_hello: the client keys itself asynchronously
        await client.subscribe(["feat"])
        await settled(client)  # the subscribe is fire-and-forget in this client
        payload = {"text": BIG} if mode == "compressed" else {}
        await client.send("publish", {"topic": "feat", "count": 5, "payload": payload})
        await collect(client, 5, got)
        extra = {}
        if mode == "recovery":
            # The server drops us (1011) and publishes 7 more while we are away; the client
            # reconnects, re-subscribes with its epoch/offset, and must get exactly those 7.
            await client.send("kick", {"topic": "feat", "count": 7, "start": 5, "code": 1011})
            await collect(client, 12, got, timeout=30)
            extra["state"] = {t: list(v) for t, v in client.recovery_state.items()}
    print(json.dumps({"received": got, **extra}))


asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
