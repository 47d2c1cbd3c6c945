"""Circuit breakers around Python handlers: a message type whose handler keeps failing or timing
out is answered at once with HANDLER_UNAVAILABLE (and retry_after) instead of reaching it; after
breaker_reset_ms a probe goes through, and a successful probe closes the breaker again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from websockets.asyncio.client import ClientConnection

from tests.conftest import envelope
from tests.wsutil import open_ready, recv_json, recv_type, stats
from wse.breaker import PASS, PROBE, REJECT, Breaker

CFG = {"breaker_failures": 3, "breaker_reset_ms": 600, "breaker_probes": 1, "handler_timeout_ms": 300}


async def call(ws: ClientConnection, t: str, p: Any, timeout: float = 5.0) -> dict[str, Any]:
    """Sends one message and returns the reply: `ok`, or an `error`."""
    await ws.send(envelope(t, p))
    while True:
        m = await recv_json(ws, timeout)
        if m["t"] in ("ok", "error"):
            return m


def code(m: dict[str, Any]) -> str:
    return m["p"]["code"] if m["t"] == "error" else "ok"


async def breakers(ws: ClientConnection) -> dict[str, Any]:
    await ws.send(envelope("breakers"))
    return (await recv_type(ws, "breakers"))["p"]


def test_failing_sync_handler_opens_then_a_probe_closes_it(make_server: Any) -> None:
    srv = make_server(CFG)

    async def main() -> None:
        ws, _ = await open_ready(srv.url)
        assert [code(await call(ws, "flaky", {"fail": True})) for _ in range(3)] == ["HANDLER_ERROR"] * 3
        refused = await call(ws, "flaky", {"fail": False})
        assert code(refused) == "HANDLER_UNAVAILABLE"
        assert refused["p"]["type"] == "flaky" and 0 < refused["p"]["retry_after"] <= 0.6
        b = (await breakers(ws))["flaky"]
        assert (b["state"], b["failures"], b["rejected"], b["times_opened"]) == ("open", 3, 1, 1)
        assert (await stats(ws))["engine"]["breakers_open"] == 1
        # Other message types, and other connections, are unaffected.
        other, _ = await open_ready(srv.url)
        await other.send(envelope("echo", "fine"))
        assert (await recv_type(other, "echo"))["p"] == "fine"
        assert code(await call(other, "flaky", {"fail": False})) == "HANDLER_UNAVAILABLE"

        await asyncio.sleep(refused["p"]["retry_after"] + 0.1)
        assert code(await call(ws, "flaky", {"fail": False, "n": 1})) == "ok", "the probe"
        b = (await breakers(ws))["flaky"]
        assert (b["state"], b["consecutive_failures"], b["retry_after"]) == ("closed", 0, 0)
        assert [code(await call(ws, "flaky", {"n": i})) for i in range(5)] == ["ok"] * 5
        assert (await stats(ws))["engine"]["breakers_open"] == 0
        await ws.close()
        await other.close()

    asyncio.run(main())


def test_failed_probe_opens_it_again(make_server: Any) -> None:
    srv = make_server(CFG)

    async def main() -> None:
        ws, _ = await open_ready(srv.url)
        for _ in range(3):
            await call(ws, "flaky", {"fail": True})
        await asyncio.sleep(0.7)  # the breaker's reset timeout passing is what is tested
        assert code(await call(ws, "flaky", {"fail": True})) == "HANDLER_ERROR", "the probe ran and failed"
        assert code(await call(ws, "flaky", {"fail": False})) == "HANDLER_UNAVAILABLE"
        b = (await breakers(ws))["flaky"]
        assert (b["state"], b["times_opened"], b["failures"]) == ("open", 2, 4)
        await ws.close()

    asyncio.run(main())


def test_hanging_async_handler_times_out_and_opens(make_server: Any) -> None:
    srv = make_server(CFG)

    async def main() -> None:
        ws, _ = await open_ready(srv.url)
        other, _ = await open_ready(srv.url)
        for _ in range(3):
            await ws.send(envelope("flaky_async", {"hang": 30}))
        # While they hang, the server keeps serving.
        await other.send(envelope("echo", 1))
        assert (await recv_type(other, "echo"))["p"] == 1
        # A clear error well before the 30 s the handlers would hang (a deadline, not a timing bound).
        replies = [await recv_type(ws, "error", timeout=20) for _ in range(3)]
        assert [r["p"]["code"] for r in replies] == ["HANDLER_TIMEOUT"] * 3
        assert code(await call(ws, "flaky_async", {"hang": 0})) == "HANDLER_UNAVAILABLE"
        # A failing async handler is reported too (it used to be only logged).
        await asyncio.sleep(0.7)  # the breaker's reset timeout passing is what is tested
        assert code(await call(ws, "flaky_async", {"hang": 0, "n": 2})) == "ok"
        assert code(await call(ws, "flaky_async", {"fail": True})) == "HANDLER_ERROR"
        b = (await breakers(ws))["flaky_async"]
        assert (b["state"], b["failures"], b["consecutive_failures"]) == ("closed", 4, 1)
        await ws.close()
        await other.close()

    asyncio.run(main())


def test_success_resets_the_count_and_breakers_are_per_type(make_server: Any) -> None:
    srv = make_server(CFG)

    async def main() -> None:
        ws, _ = await open_ready(srv.url)
        seq = [True, True, False, True, True, False]
        assert [code(await call(ws, "flaky", {"fail": f})) for f in seq] == [
            "HANDLER_ERROR", "HANDLER_ERROR", "ok", "HANDLER_ERROR", "HANDLER_ERROR", "ok"
        ]
        assert (await breakers(ws))["flaky"]["state"] == "closed"
        for _ in range(3):
            await call(ws, "flaky", {"fail": True})
        assert code(await call(ws, "flaky_async", {})) == "ok"
        assert list(await breakers(ws)) == ["flaky"]
        await ws.close()

    asyncio.run(main())


def test_breaker_off(make_server: Any) -> None:
    srv = make_server({**CFG, "breaker_failures": 0})

    async def main() -> None:
        ws, _ = await open_ready(srv.url)
        assert [code(await call(ws, "flaky", {"fail": True})) for _ in range(10)] == ["HANDLER_ERROR"] * 10
        assert await breakers(ws) == {}
        await ws.close()

    asyncio.run(main())


def test_breaker_states() -> None:
    b = Breaker(threshold=2, reset_s=10, probes=2)
    assert b.allow(0) == PASS
    b.failure(0, False)
    b.failure(1, False)
    assert (b.state, b.allow(5), b.retry_after(5)) == ("open", REJECT, 6)
    # Half-open at 11 s: two probes at most, the third waits.
    assert [b.allow(11), b.allow(11), b.allow(11)] == [PROBE, PROBE, REJECT]
    b.success(True)
    assert b.state == "half_open" and b.allow(11) == REJECT, "one success, one probe in flight: enough"
    b.success(True)
    assert b.state == "closed" and b.allow(12) == PASS
    # A late success of a message admitted before the breaker opened does not close it.
    b.failure(20, False)
    b.failure(20, False)
    b.success(False)
    assert b.state == "open"
    s = b.status(21)
    assert (s.state, s.times_opened, s.rejected, s.retry_after) == ("open", 2, 3, 9)
