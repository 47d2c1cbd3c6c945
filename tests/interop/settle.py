"""Waiting, in the published client, for what it does not acknowledge (runs in the reference chroot).

wse-client 2.5.1 sends ``subscription_update`` without waiting for the ack and keys itself
asynchronously after ``client_hello``. The engine handles one connection's frames in order, so
an ``echo`` round trip through the server's Python handler settles both: once the answer is back,
the server has applied everything sent before it, and the client has read everything the server
sent before the answer (``server_hello`` included)."""

import asyncio
import itertools

_marks = itertools.count()


async def settled(client, timeout: float = 20) -> None:
    mark = {"settle": next(_marks)}
    await client.send("echo", mark)

    async def wait() -> None:
        async for event in client:
            if event.type == "echo" and event.payload == mark:
                return

    await asyncio.wait_for(wait(), timeout)
