"""The basics, through python `websockets`: ready, echo, subscribe + publish, unknown types."""

from __future__ import annotations

import asyncio

import orjson
from websockets.asyncio.client import connect

from tests.conftest import ServerProc, envelope, subscribe_msg


async def recv_json(ws: object) -> dict:
    return orjson.loads(await ws.recv())  # type: ignore[attr-defined]


def test_ready_echo_subscribe_publish(server: ServerProc) -> None:
    async def main() -> None:
        async with connect(server.url) as ws:
            ready = await recv_json(ws)
            assert ready["t"] == "server_ready" and ready["c"] == "WSE"
            assert ready["p"]["details"]["connection_id"]
            await ws.send(envelope("echo", {"x": [1, 2]}))
            echo = await recv_json(ws)
            assert (echo["t"], echo["p"]) == ("echo", {"x": [1, 2]})
            await ws.send(subscribe_msg(["news"]))
            ack = await recv_json(ws)
            assert ack["t"] == "subscription_update"
            assert ack["p"]["success_topics"] == ["news"] and ack["p"]["failed_topics"] == []
            await ws.send(envelope("publish", {"topic": "news", "count": 3}))
            got = [await recv_json(ws) for _ in range(4)]
            pubs = [g for g in got if g["t"] == "pub"]
            assert [g["p"]["i"] for g in pubs] == [0, 1, 2]
            assert [g["seq"] for g in pubs] == [1, 2, 3]
            assert all(g["tp"] == "news" for g in pubs)
            assert [g for g in got if g["t"] == "published"][0]["p"] == {"queued": 3}
            await ws.send(envelope("no.such.type"))
            err = await recv_json(ws)
            assert err["t"] == "error" and err["p"]["code"] == "UNKNOWN_MESSAGE_TYPE"

    asyncio.run(main())


def test_failing_handler_answers_an_error_and_the_connection_lives_on(server: ServerProc) -> None:
    async def main() -> None:
        async with connect(server.url) as ws:
            assert (await recv_json(ws))["t"] == "server_ready"
            await ws.send(envelope("boom"))
            err = await recv_json(ws)
            assert err["t"] == "error" and err["p"]["code"] == "HANDLER_ERROR"
            assert "boom" in err["p"]["message"]
            await ws.send(envelope("echo", 7))
            assert (await recv_json(ws))["p"] == 7

    asyncio.run(main())
