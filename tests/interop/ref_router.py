"""Runs inside the reference chroot (Python 3.13, wse-client 2.5.1, unmodified).

Usage: ref_router.py WS_URL HTTP_URL TOKEN COUNT [encrypted]. Against examples/fastapi_app.py
under uvicorn: subscribes to "news", has the FastAPI route POST /news publish COUNT items, sends
an "echo", and prints one JSON line with what it received.
"""

import asyncio
import json
import sys
import urllib.request

from settle import settled
from wse_client import connect


def post(url: str, body: dict) -> None:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()


async def main(ws_url: str, http_url: str, token: str, count: int, encrypted: bool) -> None:
    news: list = []
    echo: list = []
    async with connect(ws_url, token=token, encryption=encrypted) as client:
        await settled(client)  # client_hello / server_hello: keying is asynchronous
        await client.subscribe(["news"])
        await settled(client)  # the subscribe is fire-and-forget in this client
        for i in range(count):
            await asyncio.to_thread(post, f"{http_url}/news", {"i": i})
        await client.send("echo", {"hello": "router"})

        async def collect() -> None:
            async for event in client:
                if event.type == "news":
                    news.append(event.payload["i"])
                elif event.type == "echo":
                    echo.append(event.payload)
                if len(news) == count and echo:
                    return

        await asyncio.wait_for(collect(), 20)
    print(json.dumps({"news": news, "echo": echo}))


asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:] == ["encrypted"]))
