"""Runs inside the reference chroot (Python 3.13, wse-client 2.5.1, unmodified).

Usage:
  ref_presence_rate.py presence URL TOKEN_A TOKEN_B
      A asks for presence events of "room" (a subscription_update with "presence": true, sent
      with the client's own send); B subscribes, has its data set by the app, and leaves.
      Prints the presence events A's client delivered.
  ref_presence_rate.py rate URL TOKEN COUNT
      Sends COUNT messages at once, collects rate_limit_warning and the RATE_LIMITED error,
      waits retry_after, and checks an echo comes back. Prints what it saw.
"""

import asyncio
import json
import sys

from wse_client import connect


async def until(client, pred, timeout: float = 10.0):
    async def run():
        async for event in client:
            if pred(event):
                return event

    return await asyncio.wait_for(run(), timeout)


async def presence(url: str, token_a: str, token_b: str) -> None:
    seen: list[dict] = []

    def keep(event) -> bool:
        if event.type.startswith("presence_"):
            seen.append({"type": event.type, "payload": event.payload})
        return event.type == "presence_leave" and event.payload.get("user_id") == "ref-b"

    async with connect(url, token=token_a) as a:
        await a.send("subscription_update", {"action": "subscribe", "topics": ["room"], "presence": True})
        await until(a, lambda e: e.type == "presence_state")
        async with connect(url, token=token_b) as b:
            await b.subscribe(["room"])
            await until(a, lambda e: keep(e) or e.type == "presence_join")
            await b.send("presence_set", {"user": "ref-b", "data": {"status": "away"}})
            await until(a, lambda e: keep(e) or e.type == "presence_update")
        await until(a, keep)
    print(json.dumps({"events": seen}))


async def rate(url: str, token: str, count: int) -> None:
    out: dict = {"warnings": [], "errors": [], "echo": None}
    async with connect(url, token=token) as client:
        for i in range(count):
            await client.send("count", {"i": i})

        def watch(event) -> bool:
            if event.type == "rate_limit_warning":
                out["warnings"].append(event.payload)
            elif event.type == "error":
                out["errors"].append(event.payload)
            return event.type == "error" and event.payload.get("code") == "RATE_LIMITED"

        limited = await until(client, watch)
        await asyncio.sleep(float(limited.payload["retry_after"]) + 0.2)
        await client.send("echo", {"back": 1})
        echo = await until(client, lambda e: e.type == "echo")
        out["echo"] = echo.payload
        out["connected"] = client.is_connected
    print(json.dumps(out))


if sys.argv[1] == "presence":
    asyncio.run(presence(sys.argv[2], sys.argv[3], sys.argv[4]))
else:
    asyncio.run(rate(sys.argv[2], sys.argv[3], int(sys.argv[4])))
