"""Limits on what clients send: a token bucket per connection (a warning before the limit,
``RATE_LIMITED`` with ``retry_after`` at it, close 4429 if the client keeps going), and at most
``max_connections_per_user`` connections per user. A flood is refused without harming anyone
else: other connections keep receiving, lifecycle events stay intact, and every message is
either processed or counted as refused."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from tests.conftest import SECRET, envelope, make_token
from tests.test_fanout import close_all, connect_subscribers, publish
from tests.wsutil import RawWS, fresh_stats, open_ready, recv_type, stats_when, wait_stats


class Flooder(WSListener):  # type: ignore[misc]
    """A picows client that records every message and the close code."""

    def __init__(self) -> None:
        super().__init__()
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.msgs: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.closed: asyncio.Future[None] = loop.create_future()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            self.close_code = frame.get_close_code()
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            if not self.closed.done():
                self.closed.set_result(None)
            return
        if frame.msg_type == WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())
            return
        m = orjson.loads(frame.get_payload_as_bytes())
        if m["t"] == "server_ready" and not self.ready.done():
            self.ready.set_result(None)
        self.msgs.append(m)

    def of(self, t: str, code: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.msgs if m["t"] == t and (code is None or m["p"].get("code") == code)]


async def flooder(url: str) -> tuple[WSTransport, Flooder]:
    tr, fl = await ws_connect(Flooder, url)
    await asyncio.wait_for(fl.ready, 5)
    return tr, fl


def test_flood_warns_then_refuses_and_nothing_else_is_affected(make_server: Any) -> None:
    srv = make_server({"rate_limit_capacity": 20, "rate_limit_refill": 0.5, "rate_limit_close_after": 0})

    async def main() -> None:
        subs = await connect_subscribers(srv.url, [["news"]] * 20)
        tr, fl = await flooder(srv.url)
        for i in range(200):
            tr.send(WSMsgType.TEXT, envelope("count", {"i": i}))
        # Meanwhile another client publishes: every subscriber receives all of it, in order.
        pub, _ = await open_ready(srv.url)
        assert await publish(pub, "news", 300) == 20 * 300
        await asyncio.wait_for(asyncio.gather(*(s.expect(300) for _, s in subs)), 20)
        for _, s in subs:
            assert [seq for _, seq, _ in s.got] == list(range(1, 301))
        st = await wait_stats(pub, lambda s: s["record"]["messages"] + s["engine"]["rate_limited"] == 200)
        processed, refused = st["record"]["messages"], st["engine"]["rate_limited"]
        assert 20 <= processed <= 25 and refused == 200 - processed

        # The flooder was told once, before and at the limit, and stays connected.
        warn = fl.of("rate_limit_warning")
        assert len(warn) == 1 and warn[0]["c"] == "WSE"
        assert warn[0]["p"]["limit"] == 20 and warn[0]["p"]["remaining"] < 4
        limited = fl.of("error", "RATE_LIMITED")
        assert len(limited) == 1
        assert 0 < limited[0]["p"]["retry_after"] <= 2.0
        assert fl.msgs.index(warn[0]) < fl.msgs.index(limited[0])
        assert fl.close_code is None and not tr.is_disconnected

        # After retry_after the flooder is served again.
        await asyncio.sleep(limited[0]["p"]["retry_after"] + 0.1)
        tr.send(WSMsgType.TEXT, envelope("echo", {"back": True}))
        for _ in range(100):
            if fl.of("echo"):
                break
            await asyncio.sleep(0.02)
        assert fl.of("echo")[0]["p"] == {"back": True}
        tr.disconnect()
        await close_all(subs)
        await pub.close()

    asyncio.run(main())
    # 20 subscribers, the flooder and the publisher came and went; the 23rd asks for the stats.
    st = stats_when(srv, lambda s: s["record"]["disconnects"] == 22)
    assert st["record"]["connects"] == 23
    assert st["engine"]["rate_limit_closes"] == 0 and st["engine"]["rate_limit_warnings"] == 1


def test_continued_flood_closes_with_4429(make_server: Any) -> None:
    srv = make_server({"rate_limit_capacity": 10, "rate_limit_refill": 1, "rate_limit_close_after": 20})

    async def main() -> None:
        bystander, _ = await open_ready(srv.url)
        tr, fl = await flooder(srv.url)
        for i in range(100):
            tr.send(WSMsgType.TEXT, envelope("count", {"i": i}))
        await asyncio.wait_for(fl.closed, 5)
        assert fl.close_code == 4429
        assert len(fl.of("error", "RATE_LIMITED")) == 1
        assert len(fl.of("rate_limit_warning")) == 1
        # The bystander is fine, and Python saw the flooder's disconnect with its code.
        await bystander.send(envelope("echo", "still here"))
        assert (await recv_type(bystander, "echo"))["p"] == "still here"
        st = await wait_stats(bystander, lambda s: s["record"]["disconnects"] == 1)
        assert st["record"]["codes"] == {"4429": 1}
        assert st["engine"]["rate_limit_closes"] == 1
        # The flooder's first 10 messages (and any token refilled meanwhile) were processed; the
        # rest it sent up to the close were refused: 21 refusals at least (the 21st closes).
        processed = st["record"]["messages"] - 1  # the bystander's echo counts too
        assert 10 <= processed <= 12
        assert st["engine"]["rate_limited"] >= 21
        await bystander.close()

    asyncio.run(main())


def test_custom_close_code_and_no_envelopes_in_raw_mode(make_server: Any) -> None:
    """With ``envelopes=False`` the engine sends nothing unasked: no warning, no error, only the close."""
    srv = make_server({"envelopes": False, "rate_limit_capacity": 5, "rate_limit_refill": 0.1,
                       "rate_limit_close_after": 3, "rate_limit_close_code": 4000})
    ws = RawWS(srv.port)
    try:
        for i in range(5):
            ws.send_frame(0x1, b"hello %d" % i)
        assert [ws.recv_frame()[1] for _ in range(5)] == [b"hello %d" % i for i in range(5)]
        for i in range(10):
            ws.send_frame(0x1, b"more %d" % i)
        op, payload = ws.recv_frame()
        assert op == 0x8, (op, payload)
        assert int.from_bytes(payload[:2], "big") == 4000
    finally:
        ws.close()


def test_server_hello_announces_the_limit(make_server: Any) -> None:
    srv = make_server({"rate_limit_capacity": 50, "rate_limit_refill": 5})

    async def main() -> None:
        ws, _ = await open_ready(srv.url)
        await ws.send(envelope("client_hello", {"client_version": "t", "protocol_version": 2}, c="WSE"))
        hello = await recv_type(ws, "server_hello")
        assert hello["p"]["limits"]["rate_limit_capacity"] == 50
        assert hello["p"]["limits"]["rate_limit_refill"] == 5
        await ws.close()

    asyncio.run(main())


def test_max_connections_per_user(make_server: Any) -> None:
    srv = make_server({"jwt": {"secret": SECRET}, "max_connections_per_user": 2})

    def hdr(user: str) -> dict[str, Any]:
        return {"additional_headers": {"Authorization": f"Bearer {make_token({'sub': user})}"}}

    async def main() -> None:
        a1, _ = await open_ready(srv.url, **hdr("ann"))
        a2, _ = await open_ready(srv.url, **hdr("ann"))
        # The third is refused with a clear error and 4429; Python never hears of it.
        raw = RawWS(srv.port, headers={"Authorization": f"Bearer {make_token({'sub': 'ann'})}"})
        msgs, code, reason = raw.read_until_close()
        raw.close()
        assert code == 4429 and reason == "too many connections"
        assert [m["p"]["code"] for m in msgs] == ["TOO_MANY_CONNECTIONS"]
        assert "at most 2" in msgs[0]["p"]["message"]
        # Another user is not affected; ann gets a slot back when one of hers closes.
        b, _ = await open_ready(srv.url, **hdr("bob"))
        await a1.close()
        await wait_stats(b, lambda s: s["record"]["disconnects"] == 1)
        a3, _ = await open_ready(srv.url, **hdr("ann"))
        await a3.send(envelope("echo", 1))
        assert (await recv_type(a3, "echo"))["p"] == 1
        st = await fresh_stats(srv.url, **hdr("carl"))
        assert st["engine"]["connections_rejected_user"] == 1
        assert st["record"]["connects"] == 5
        for ws in (a2, a3, b):
            await ws.close()

    asyncio.run(main())
