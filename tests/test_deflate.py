"""permessage-deflate (RFC 7692): negotiation with a real client (websockets) and raw handshakes,
the RSV1 rules, a deflate bomb refused with a bystander unaffected, and fan-out compressed once
per publication per parameter set."""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from tests.conftest import ServerProc, envelope, subscribe_msg
from tests.wsutil import OP_BINARY, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RawWS, close_code, recv_json, recv_type, stats

DEFLATE = {"permessage_deflate": True}


def pmd(**kw: Any) -> list[ClientPerMessageDeflateFactory]:
    return [ClientPerMessageDeflateFactory(**kw)]


async def open_ws(url: str, **kw: Any) -> ClientConnection:
    ws = await connect(url, max_size=None, **kw)
    assert (await recv_json(ws))["t"] == "server_ready"
    return ws


def ext_header(ws: ClientConnection) -> str | None:
    assert ws.response is not None
    return ws.response.headers.get("Sec-WebSocket-Extensions")


def deflate_raw(data: bytes, wbits: int = 15) -> bytes:
    """A message's payload as RFC 7692 wants it: raw DEFLATE, sync-flushed, without 00 00 ff ff."""
    z = zlib.compressobj(6, zlib.DEFLATED, -wbits)
    out = z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def inflate_raw(data: bytes) -> bytes:
    return zlib.decompressobj(-15).decompress(data + b"\x00\x00\xff\xff")


# ---- negotiation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offer", "answer"),
    [
        ({}, "permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
        (
            {"server_no_context_takeover": True, "client_no_context_takeover": True},
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ),
        (
            {"server_max_window_bits": 10, "client_max_window_bits": 12},
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10",
        ),
        # zlib cannot compress with a 256-byte window: the server agrees and sends uncompressed.
        (
            {"server_max_window_bits": 8},
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=8",
        ),
    ],
)
def test_websockets_client_negotiates_each_parameter(make_server: Any, offer: dict[str, Any], answer: str) -> None:
    srv: ServerProc = make_server(DEFLATE)
    big = {"text": "the quick brown fox jumps over the lazy dog " * 60}

    async def main() -> dict[str, Any]:
        ws = await open_ws(srv.url, extensions=pmd(**offer), compression=None)
        assert ext_header(ws) == answer
        for i in range(5):  # several messages: the client compresses each, the server inflates each
            await ws.send(envelope("echo", {**big, "i": i}))
            got = await recv_type(ws, "echo")
            assert got["p"] == {**big, "i": i}
        st = await stats(ws)
        await ws.close()
        return st["engine"]

    e = asyncio.run(main())
    assert e["deflate_connections"] == 1
    assert e["protocol_errors"] == 0
    if offer.get("server_max_window_bits") == 8:
        assert e["deflated_out"] == 0
    else:
        assert e["deflated_out"] >= 5


def test_client_context_takeover_when_allowed(make_server: Any) -> None:
    """With ``deflate_client_context_takeover`` the client keeps its window: later messages refer
    back to earlier ones, and the server's inflater follows."""
    srv = make_server({**DEFLATE, "deflate_client_context_takeover": True})

    async def main() -> None:
        ws = await open_ws(srv.url, extensions=pmd(), compression=None)
        assert ext_header(ws) == "permessage-deflate; server_no_context_takeover"
        for i in range(20):
            await ws.send(envelope("echo", {"same": "a repeated sentence that compresses against the last one", "i": i}))
            assert (await recv_type(ws, "echo"))["p"]["i"] == i
        await ws.close()

    asyncio.run(main())


def test_off_by_default_and_when_off(make_server: Any) -> None:
    srv = make_server()

    async def main() -> None:
        ws = await open_ws(srv.url)  # websockets offers permessage-deflate by default
        assert ext_header(ws) is None
        await ws.send(envelope("echo", {"x": "y" * 500}))
        assert (await recv_type(ws, "echo"))["p"] == {"x": "y" * 500}
        await ws.close()

    asyncio.run(main())


def test_invalid_offers_declined_and_the_next_valid_one_taken(make_server: Any) -> None:
    srv = make_server(DEFLATE)
    port, path = srv.port, srv.path
    # Only invalid offers: the upgrade succeeds without the extension.
    for bad in ("permessage-deflate; server_max_window_bits=16", "permessage-deflate; unknown_param",
                "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
                "permessage-deflate; server_max_window_bits"):
        c = RawWS(port, path, {"Sec-WebSocket-Extensions": bad})
        assert c.status == 101
        assert "sec-websocket-extensions" not in c.head.lower(), (bad, c.head)
        c.close()
    # Several offers, in one header and across two: the first valid one is answered.
    c = RawWS(port, path, {"Sec-WebSocket-Extensions": "permessage-deflate; server_max_window_bits=99, "
                                                     "permessage-deflate; server_max_window_bits=11, permessage-deflate"})
    assert "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=11\r\n" in c.head + "\r\n"
    c.close()


# ---- RSV1 and frames ----------------------------------------------------------------------------------


def raw_deflate_conn(srv: ServerProc) -> RawWS:
    c = RawWS(srv.port, srv.path, {"Sec-WebSocket-Extensions": "permessage-deflate"})
    assert "permessage-deflate" in c.head
    assert recv_message(c)[1]["t"] == "server_ready"  # over 64 bytes: it comes compressed
    return c


def recv_message(c: RawWS) -> tuple[int, dict[str, Any]]:
    """The next data message, inflated if it came compressed; with its first byte."""
    while True:
        c._need(1)
        b0 = c.buf[0]
        op, payload = c.recv_frame()
        if op in (OP_PING, OP_PONG):
            continue
        assert op in (OP_TEXT, OP_BINARY), (op, payload)
        return b0, orjson.loads(inflate_raw(payload) if b0 & 0x40 else payload)


def test_compressed_fragments_and_plain_messages_mix(make_server: Any) -> None:
    srv = make_server(DEFLATE)
    c = raw_deflate_conn(srv)
    msg = envelope("echo", {"text": "fragmented and compressed " * 40})
    comp = deflate_raw(msg)
    # First frame RSV1, continuations without it (RFC 7692 section 6.1).
    third = len(comp) // 3
    c.send_frame(OP_BINARY, comp[:third], fin=False, rsv=4)
    c.send_frame(OP_PING, b"between fragments")
    c.send_frame(OP_CONT, comp[third : 2 * third], fin=False)
    c.send_frame(OP_CONT, comp[2 * third :])
    b0, got = recv_message(c)
    assert got["t"] == "echo" and got["p"]["text"] == "fragmented and compressed " * 40
    assert b0 & 0x40, "the echo (1 KB, compressible) comes back compressed"
    # An uncompressed message on the same connection is fine too.
    c.send_frame(OP_TEXT, envelope("echo", {"n": 1}))
    _, got = recv_message(c)
    assert got["p"] == {"n": 1}
    # A compressed text message must inflate to valid UTF-8.
    c.send_frame(OP_TEXT, deflate_raw(b'{"t":"echo","p":"\xff\xfe"}'), rsv=4)
    _, code, _ = c.read_until_close()
    assert code == 1007
    c.close()


@pytest.mark.parametrize(
    ("what", "frames"),
    [
        ("RSV1 on a control frame", [(OP_PING, b"x", {"rsv": 4})]),
        ("RSV1 on a continuation", [(OP_BINARY, deflate_raw(b"abc"), {"fin": False, "rsv": 4}), (OP_CONT, b"", {"rsv": 4})]),
        ("RSV2", [(OP_BINARY, b"x", {"rsv": 2})]),
        ("RSV3", [(OP_BINARY, b"x", {"rsv": 1})]),
        ("corrupt DEFLATE data", [(OP_BINARY, b"\xff\xff\xff\xff not deflate", {"rsv": 4})]),
    ],
)
def test_rsv_violations_close_the_connection(make_server: Any, what: str, frames: list[Any]) -> None:
    srv = make_server(DEFLATE)
    c = raw_deflate_conn(srv)
    for op, payload, kw in frames:
        c.send_frame(op, payload, **kw)
    _, code, _ = c.read_until_close()
    assert code == (1007 if "corrupt" in what else 1002), what
    c.close()


def test_rsv1_refused_without_negotiation(make_server: Any) -> None:
    srv = make_server(DEFLATE)
    c = RawWS(srv.port, srv.path)  # no offer
    assert c.recv_json()["t"] == "server_ready"
    c.send_frame(OP_BINARY, deflate_raw(envelope("echo", 1)), rsv=4)
    _, code, _ = c.read_until_close()
    assert code == 1002
    c.close()


# ---- a deflate bomb -----------------------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def bomb(mib: int) -> bytes:
    """``mib`` MiB of zeros as one permessage-deflate payload (about 1 KiB per MiB)."""
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(1 << 20)
    out = b"".join(z.compress(block) for _ in range(mib)) + z.flush(zlib.Z_SYNC_FLUSH)
    return out[:-4]


def test_deflate_bomb_refused_1009_bystander_unaffected(make_server: Any) -> None:
    srv = make_server({**DEFLATE, "max_message_bytes": 1 << 20})
    payload = bomb(512)  # 512 MiB once inflated, about half a MiB on the wire
    assert len(payload) < 1 << 20

    async def main() -> tuple[dict[str, Any], list[int]]:
        watcher = await open_ws(srv.url, extensions=pmd(), compression=None)
        await watcher.send(subscribe_msg(["ticker"]))
        await recv_type(watcher, "subscription_update")
        pub = await open_ws(srv.url, compression=None)
        got: list[int] = []

        async def publish(start: int, n: int) -> None:
            await pub.send(envelope("publish", {"topic": "ticker", "count": n, "payload": {"start": start}}))
            await recv_type(pub, "published")

        async def collect(n: int) -> None:
            while len(got) < n:
                m = await recv_json(watcher, 10)
                if m.get("t") == "pub":
                    got.append(m["p"]["start"] + m["p"]["i"])

        await publish(0, 100)
        await collect(100)
        rss_before = rss_kb(srv.pid)
        codes = []
        for _ in range(4):
            c = raw_deflate_conn(srv)
            c.send_frame(OP_BINARY, payload, rsv=4)
            await publish(len(got), 50)  # the bystander keeps receiving while bombs land
            _, code, reason = await asyncio.to_thread(c.read_until_close)
            codes.append(code)
            c.close()
            await collect(len(got) + 50)
        grew_kb = rss_kb(srv.pid) - rss_before
        await publish(len(got), 100)
        await collect(400)
        st = (await stats(pub))["engine"]
        st["rss_grew_kb"] = grew_kb
        await watcher.close()
        await pub.close()
        return st, got

    st, got = asyncio.run(main())
    assert got == list(range(400)), "the bystander got every publication, in order"
    assert st["oversized_messages"] == 4
    # Inflation stops at the cap (1 MiB): four bombs of 512 MiB cost a few MiB at most.
    assert st["rss_grew_kb"] < 32 * 1024, st["rss_grew_kb"]


def test_bomb_close_code(make_server: Any) -> None:
    srv = make_server({**DEFLATE, "max_message_bytes": 1 << 20})
    c = raw_deflate_conn(srv)
    c.send_frame(OP_BINARY, bomb(64), rsv=4)
    _, code, reason = c.read_until_close()
    assert code == 1009, (code, reason)
    c.close()


# ---- fan-out: one compression per publication per parameter set ----------------------------------


def test_fanout_compresses_once_per_parameter_set(make_server: Any) -> None:
    srv = make_server(DEFLATE)
    n_msgs = 40
    text = "price update for a fairly long instrument name " * 8

    async def main() -> tuple[dict[str, Any], list[list[int]]]:
        subs = [await open_ws(srv.url, extensions=pmd(), compression=None) for _ in range(20)]
        subs += [await open_ws(srv.url, extensions=pmd(server_max_window_bits=10), compression=None) for _ in range(10)]
        plain = [await open_ws(srv.url, compression=None) for _ in range(5)]
        for ws in subs + plain:
            await ws.send(subscribe_msg(["ticker"]))
            await recv_type(ws, "subscription_update")
        pub = await open_ws(srv.url, compression=None)
        before = (await stats(pub))["engine"]  # server_ready and acks were compressed per connection
        await pub.send(envelope("publish", {"topic": "ticker", "count": n_msgs, "payload": {"text": text}}))
        assert (await recv_type(pub, "published"))["p"]["queued"] == n_msgs * 35
        seen = []
        for ws in subs + plain:
            got = []
            while len(got) < n_msgs:
                m = await recv_json(ws, 10)
                if m.get("t") == "pub":
                    assert m["p"]["text"] == text
                    got.append(m["p"]["i"])
            seen.append(got)
        st = (await stats(pub))["engine"]
        st["deflate_compressions"] -= before["deflate_compressions"]
        st["deflated_out"] -= before["deflated_out"]
        for ws in subs + plain + [pub]:
            await ws.close()
        return st, seen

    st, seen = asyncio.run(main())
    assert all(s == list(range(n_msgs)) for s in seen)
    # Two parameter sets (window 15, window 10): two compressions per publication, not thirty.
    assert st["deflate_compressions"] == 2 * n_msgs, st["deflate_compressions"]
    assert st["deflated_out"] == 30 * n_msgs
    assert st["deflate_connections"] == 30
