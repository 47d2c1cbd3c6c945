"""Runs inside the reference chroot (Python 3.13, wse-client 2.5.1, unmodified).

Usage: ref_client.py URL TOKEN COUNT. Connects with the seed's snippet, subscribes, asks our test
app to publish COUNT messages, and prints one JSON line with what it received.
"""

import asyncio
import json
import sys

from settle import settled
from wse_client import connect


async def main(url: str, token: str, count: int) -> None:
    got: list[dict] = []
    types: list[str] = []
    async with connect(url, token=token) as client:
        await client.subscribe(["notifications"])
        await settled(client)  # the subscribe is fire-and-forget in this client
        await client.send("publish", {"topic": "notifications", "count": count, "payload": {"k": "v"}})

        async def collect() -> None:
            async for event in client:
                types.append(event.type)
                if event.type == "pub":
                    got.append({"payload": event.payload, "topic": event.topic})
                    if len(got) == count:
                        return

        await asyncio.wait_for(collect(), 20)
    print(json.dumps({"received": got, "types": sorted(set(types))}))


asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
