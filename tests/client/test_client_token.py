"""Token lifetime with the Python client against our engine: the engine closes a connection
whose token expired (4401 ``expired``) and extends one whose client sent a fresh token
(``auth_refresh``, verified in Rust); the client refreshes by itself ahead of expiry."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from tests.client.conftest import OurServer
from tests.conftest import SECRET, make_token
from wse_client import AuthError, ConnectionLost, connect

SHORT = {"jwt": {"secret": SECRET, "leeway_secs": 0}}


async def wait_for(cond: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def test_client_refreshes_ahead_of_expiry_on_the_same_connection(our_server: Any) -> None:
    srv: OurServer = our_server(SHORT)
    issued: list[int] = []

    def fresh() -> str:
        issued.append(int(time.time()) + 3)
        return make_token({"sub": "ann"}, exp_in=3)

    async def main() -> None:
        async with connect(srv.url, token=fresh, refresh_ahead=2.0) as c:
            first = c.server_info["token_expires_at"]
            assert abs(first - issued[0] * 1000) <= 1000  # exp (whole seconds), no leeway
            await wait_for(lambda: time.time() * 1000 > first + 2500 and c.stats["token_refreshes"] >= 2, "refreshes")
            assert c.connected and c.stats["reconnects"] == 0
            assert (await c.request("rpc", {})).payload["user"] == "ann"

    asyncio.run(main())


def test_expired_token_closes_and_a_fixed_token_is_final(our_server: Any) -> None:
    srv: OurServer = our_server(SHORT)

    async def main() -> None:
        c = await connect(srv.url, token=make_token({"sub": "ann"}, exp_in=2))
        try:
            with pytest.raises(ConnectionLost) as lost:
                async for _ in c:
                    pass
            assert isinstance(lost.value.__cause__, AuthError)
            assert c.closed
        finally:
            await c.close()

    asyncio.run(main())


def test_refresh_protocol_on_the_wire(our_server: Any) -> None:
    """A refused refresh changes nothing; an accepted one moves the deadline past the old one."""
    srv: OurServer = our_server(SHORT)

    async def recv_type(ws: Any, t: str) -> dict[str, Any]:
        while True:
            m = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            if m["t"] == t:
                return m

    async def main() -> None:
        first = make_token({"sub": "ann"}, exp_in=2)
        async with ws_connect(srv.url, additional_headers={"Authorization": f"Bearer {first}"}) as ws:
            ready = await recv_type(ws, "server_ready")
            deadline = ready["p"]["details"]["token_expires_at"]
            for bad, reason in ((make_token({"sub": "bob"}, exp_in=60), "subject"),
                                (make_token({"sub": "ann"}, secret="x" * 40, exp_in=60), "signature")):
                await ws.send(orjson.dumps({"c": "WSE", "t": "auth_refresh", "p": {"token": bad}}).decode())
                r = (await recv_type(ws, "auth_refresh"))["p"]
                assert (r["success"], r["reason"]) == (False, reason)
            good = make_token({"sub": "ann"}, exp_in=60)
            await ws.send(orjson.dumps({"c": "WSE", "t": "auth_refresh", "p": {"token": good}}).decode())
            r = (await recv_type(ws, "auth_refresh"))["p"]
            assert r["success"] is True and r["expires_at"] > deadline + 50_000
            # Past the first token's deadline, the connection still answers.
            while time.time() * 1000 < deadline + 1500:
                await ws.send(orjson.dumps({"c": "WSE", "t": "ping", "p": {}}).decode())
                await recv_type(ws, "PONG")
                await asyncio.sleep(0.2)
        # Without a refresh the same start ends in 4401 expired.
        async with ws_connect(srv.url, additional_headers={"Authorization": f"Bearer {first}"}) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 15)
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4401, "expired")

    asyncio.run(main())
