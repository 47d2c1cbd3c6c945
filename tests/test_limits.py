"""Limits and misbehaving peers: frame size, UTF-8, masking, abrupt ends, slow consumers,
Origin, path, connection cap, slowloris and handshake timeouts.

Frames a library will not send are written by hand over a plain socket (``RawWS``).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import ServerProc, envelope, subscribe_msg
from tests.wsutil import (
    OP_BINARY,
    OP_CONT,
    OP_TEXT,
    RawWS,
    client_frame,
    http_status,
    open_ready,
    recv_json,
    recv_type,
    stats,
    stats_when,
    wait_stats,
)


def raw_ready(srv: ServerProc, **kw: Any) -> RawWS:
    r = RawWS(srv.port, srv.path, **kw)
    assert r.status == 101, r.head
    assert r.recv_json()["t"] == "server_ready"
    return r


async def echo_ok(ws: Any, payload: Any) -> None:
    await ws.send(envelope("echo", payload))
    got = await recv_type(ws, "echo")
    assert got["p"] == payload


# ---- frame-level violations ------------------------------------------------------------------------


def test_oversized_message_closes_1009_and_others_unaffected(make_server: Any) -> None:
    srv = make_server({"max_message_bytes": 4096})

    async def main() -> dict[str, Any]:
        other, _ = await open_ready(srv.url)
        big, _ = await open_ready(srv.url)
        await echo_ok(big, "x" * 3900)  # under the limit: fine
        await big.send(envelope("echo", "x" * 5000))
        with pytest.raises(ConnectionClosed) as ei:
            while True:
                await asyncio.wait_for(big.recv(), 5)
        assert ei.value.rcvd is not None and ei.value.rcvd.code == 1009, ei.value
        await echo_ok(other, {"still": "here"})
        st = await wait_stats(other, lambda s: s["record"]["disconnects"] == 1, what="the 1009 disconnect")
        await echo_ok(other, "after")
        await other.close()
        return st

    st = asyncio.run(main())
    assert st["record"]["codes"] == {"1009": 1}
    assert st["record"]["messages"] == 2  # `big`'s small echo and `other`'s first one; the oversized one never reached Python
    assert st["engine"]["oversized_messages"] == 1
    assert st["engine"]["protocol_errors"] == 1


def test_oversized_fragmented_message_closes_1009(make_server: Any) -> None:
    srv = make_server({"max_message_bytes": 4096})
    r = raw_ready(srv)
    r.send_frame(OP_TEXT, b"a" * 3000, fin=False)
    r.send_frame(OP_CONT, b"b" * 3000, fin=True)
    msgs, code, _ = r.read_until_close()
    r.close()
    assert msgs == [] and code == 1009

    st = stats_when(srv, lambda s: s["record"]["disconnects"] == 1)
    assert st["record"]["codes"] == {"1009": 1} and st["engine"]["oversized_messages"] == 1


INVALID_UTF8 = [
    pytest.param([client_frame(OP_TEXT, b'{"t":"echo","p":"\xff\xfe"}')], id="single-frame"),
    pytest.param([client_frame(OP_TEXT, b"\xce\xba\xc3", fin=False), client_frame(OP_CONT, b"\x28", fin=True)], id="across-fragments"),
    pytest.param([client_frame(OP_TEXT, b"ok \xed\xa0\x80")], id="surrogate"),
]


@pytest.mark.parametrize("frames", INVALID_UTF8)
def test_invalid_utf8_text_closes_1007(make_server: Any, frames: list[bytes]) -> None:
    srv = make_server()
    r = raw_ready(srv)
    for f in frames:
        r.send(f)
    msgs, code, _ = r.read_until_close()
    r.close()
    assert msgs == []
    assert code == 1007

    st = stats_when(srv, lambda s: s["record"]["disconnects"] == 1)
    assert st["record"]["codes"] == {"1007": 1}
    assert st["record"]["messages"] == 0
    assert st["engine"]["invalid_utf8"] == 1


def test_invalid_utf8_in_binary_frame_is_fine(make_server: Any) -> None:
    """Binary frames carry bytes: no UTF-8 check, echoed back unchanged."""
    srv = make_server()
    r = raw_ready(srv)
    r.send_frame(OP_BINARY, b"\xff\xfe\x00raw")
    op, payload = r.recv_frame()
    assert (op, payload) == (OP_BINARY, b"\xff\xfe\x00raw")
    r.close()


def test_message_size_boundary(make_server: Any) -> None:
    """Exactly max_message_bytes is accepted (also when fragmented); one byte more is 1009."""
    srv = make_server({"max_message_bytes": 4096})
    r = raw_ready(srv)
    r.send_frame(OP_BINARY, b"\x01" * 4096)
    assert r.recv_frame() == (OP_BINARY, b"\x01" * 4096)
    r.send_frame(OP_BINARY, b"\x02" * 2048, fin=False)
    r.send_frame(OP_CONT, b"\x03" * 2048)
    assert r.recv_frame() == (OP_BINARY, b"\x02" * 2048 + b"\x03" * 2048)
    r.send_frame(OP_BINARY, b"\x04" * 4097)
    msgs, code, _ = r.read_until_close()
    r.close()
    assert msgs == [] and code == 1009


def test_frames_sent_with_the_upgrade_request(server: ServerProc) -> None:
    """A client may send its first frames right behind its request, in the same write."""
    frames = b"".join(client_frame(OP_TEXT, envelope("echo", {"n": n})) for n in range(3))
    r = RawWS(server.port, server.path, pipelined=frames)
    assert r.status == 101
    got = [r.recv_json() for _ in range(4)]
    r.close()
    assert got[0]["t"] == "server_ready"
    assert [(m["t"], m["p"]) for m in got[1:]] == [("echo", {"n": n}) for n in range(3)]


def test_ping_answered_with_pong(server: ServerProc) -> None:
    r = raw_ready(server)
    r.send_frame(0x9, b"are you there")
    assert r.recv_frame() == (0xA, b"are you there")
    r.send_frame(0x8, (1000).to_bytes(2, "big") + b"bye")
    msgs, code, _ = r.read_until_close()
    r.close()
    assert msgs == [] and code == 1000


VIOLATIONS_1002 = [
    pytest.param(client_frame(OP_TEXT, b'{"t":"echo","p":1}', mask=False), id="unmasked"),
    pytest.param(client_frame(OP_TEXT, b'{"t":"echo","p":1}', rsv=4), id="reserved-bit"),
    pytest.param(client_frame(0x3, b"x"), id="unknown-opcode"),
    pytest.param(client_frame(OP_CONT, b"x"), id="continuation-without-start"),
    pytest.param(client_frame(0x9, b"p", fin=False), id="fragmented-ping"),
    pytest.param(client_frame(0x9, b"p" * 126), id="ping-over-125-bytes"),
    pytest.param(client_frame(OP_TEXT, b"a", fin=False) + client_frame(OP_TEXT, b"b"), id="new-message-inside-fragmented"),
    pytest.param(client_frame(0x8, b"\x03"), id="close-payload-of-one-byte"),
    pytest.param(client_frame(0x8, (1005).to_bytes(2, "big")), id="close-code-1005"),
    pytest.param(client_frame(0x8, (999).to_bytes(2, "big")), id="close-code-999"),
]


@pytest.mark.parametrize("frame", VIOLATIONS_1002)
def test_protocol_violation_closes_1002(make_server: Any, frame: bytes) -> None:
    srv = make_server()
    r = raw_ready(srv)
    r.send(frame)
    msgs, code, _ = r.read_until_close()
    r.close()
    assert msgs == [] and code == 1002

    st = stats_when(srv, lambda s: s["record"]["disconnects"] == 1)
    assert st["record"]["codes"] == {"1002": 1}
    assert st["record"]["messages"] == 0
    assert st["engine"]["protocol_errors"] == 1


# ---- abrupt ends ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_abrupt_disconnect_mid_message(make_server: Any, reset: bool) -> None:
    srv = make_server()

    async def main() -> dict[str, Any]:
        watcher, _ = await open_ready(srv.url)
        r = raw_ready(srv)
        await wait_stats(watcher, lambda s: s["record"]["connects"] == 2)
        frame = client_frame(OP_TEXT, orjson.dumps({"t": "count", "p": "y" * 300}))
        r.send(frame[: len(frame) // 2])
        if reset:
            r.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        r.close()
        st = await wait_stats(watcher, lambda s: s["record"]["disconnects"] == 1, what="the abrupt disconnect")
        await echo_ok(watcher, "alive")
        # And new clients still get in.
        fresh, _ = await open_ready(srv.url)
        await echo_ok(fresh, "new")
        await fresh.close()
        await watcher.close()
        return st

    st = asyncio.run(main())
    assert st["record"]["codes"] == {"1006": 1}
    assert st["record"]["messages"] == 0  # half a message is no message
    assert st["engine"]["abrupt_disconnects"] == 1


# ---- slow consumers --------------------------------------------------------------------------------------

TOPIC = "firehose"
PER_ROUND = 32
PAD = "x" * 4000


async def _publish_until(ws: Any, counter: str, max_rounds: int = 400) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    """Publishes rounds of PER_ROUND ~4 KB messages, reading them all on `ws`, until the engine's
    `counter` moves. Returns what `ws` received, the number of rounds and the last stats."""
    got: list[dict[str, Any]] = []
    for r in range(max_rounds):
        await ws.send(envelope("publish", {"topic": TOPIC, "count": PER_ROUND, "payload": {"r": r, "pad": PAD}}))
        while True:
            m = await recv_json(ws)
            if m["t"] == "pub":
                got.append(m)
            elif m["t"] == "published":
                break
        st = await stats(ws)
        if st["engine"][counter] > 0:
            return got, r + 1, st
    raise AssertionError(f"{counter} never moved after {max_rounds} rounds")


def _check_complete(got: list[dict[str, Any]], rounds: int) -> None:
    """The normal subscriber got every publication, once, in order."""
    assert [(m["p"]["r"], m["p"]["i"]) for m in got] == [(r, i) for r in range(rounds) for i in range(PER_ROUND)]
    assert [m["seq"] for m in got] == list(range(1, rounds * PER_ROUND + 1))
    assert all(m["tp"] == TOPIC for m in got)


def _slow_subscriber(srv: ServerProc) -> RawWS:
    slow = raw_ready(srv, rcvbuf=4096)
    slow.send_json(subscribe_msg([TOPIC]))
    ack = slow.recv_json()
    assert ack["t"] == "subscription_update" and ack["p"]["success_topics"] == [TOPIC]
    return slow


def test_slow_consumer_closed_with_4008(make_server: Any) -> None:
    srv = make_server({"max_outbound_bytes": 256 * 1024, "slow_consumer": "close"})
    slow = _slow_subscriber(srv)

    async def main() -> tuple[list[dict[str, Any]], int, list[dict[str, Any]], int | None, dict[str, Any]]:
        ws, _ = await open_ready(srv.url)
        await ws.send(subscribe_msg([TOPIC]))
        await recv_type(ws, "subscription_update")
        got, rounds, _ = await _publish_until(ws, "slow_consumer_closes")
        # Now the slow client reads what reached it, then the close frame.
        slow_msgs, code, _ = await asyncio.to_thread(slow.read_until_close)
        st = await wait_stats(ws, lambda s: s["record"]["disconnects"] == 1, what="the slow consumer's disconnect")
        # The normal subscriber keeps working.
        await ws.send(envelope("publish", {"topic": TOPIC, "count": 1}))
        after = await recv_type(ws, "pub")
        assert after["seq"] == rounds * PER_ROUND + 1
        await ws.close()
        return got, rounds, slow_msgs, code, st

    got, rounds, slow_msgs, code, st = asyncio.run(main())
    slow.close()
    _check_complete(got, rounds)
    assert code == 4008
    # What the slow client did get is an unbroken prefix of the stream.
    seqs = [m["seq"] for m in slow_msgs if m["t"] == "pub"]
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) < rounds * PER_ROUND
    assert st["record"]["codes"] == {"4008": 1}
    assert st["engine"]["slow_consumer_closes"] == 1
    assert st["engine"]["slow_consumer_drops"] == 0


def test_slow_consumer_custom_close_code(make_server: Any) -> None:
    srv = make_server({"max_outbound_bytes": 256 * 1024, "slow_consumer_close_code": 4100})
    slow = _slow_subscriber(srv)

    async def main() -> tuple[int | None, dict[str, Any]]:
        ws, _ = await open_ready(srv.url)
        await _publish_until(ws, "slow_consumer_closes")
        _, code, _ = await asyncio.to_thread(slow.read_until_close)
        st = await wait_stats(ws, lambda s: s["record"]["disconnects"] == 1)
        await ws.close()
        return code, st

    code, st = asyncio.run(main())
    slow.close()
    assert code == 4100
    assert st["record"]["codes"] == {"4100": 1}


def test_slow_consumer_drop_policy(make_server: Any) -> None:
    srv = make_server({"max_outbound_bytes": 256 * 1024, "slow_consumer": "drop"})
    slow = _slow_subscriber(srv)

    async def main() -> tuple[list[dict[str, Any]], int, dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
        ws, _ = await open_ready(srv.url)
        await ws.send(subscribe_msg([TOPIC]))
        await recv_type(ws, "subscription_update")
        got, rounds, st = await _publish_until(ws, "slow_consumer_drops")
        drops = st["engine"]["slow_consumer_drops"]
        total = rounds * PER_ROUND

        def drain_slow() -> list[dict[str, Any]]:
            # Every publication was either queued (so it arrives) or dropped (and counted).
            out = [slow.recv_json() for _ in range(total - drops)]
            slow.send_json(envelope("echo", "still connected"))
            out.append(slow.recv_json())
            return out

        slow_msgs = await asyncio.to_thread(drain_slow)
        st2 = await stats(ws)
        await ws.close()
        return got, rounds, st, slow_msgs, st2

    got, rounds, st, slow_msgs, st2 = asyncio.run(main())
    _check_complete(got, rounds)
    echo = slow_msgs.pop()
    assert (echo["t"], echo["p"]) == ("echo", "still connected")
    assert all(m["t"] == "pub" for m in slow_msgs)
    seqs = [m["seq"] for m in slow_msgs]
    assert seqs == sorted(set(seqs)), "the slow client's stream is out of order or has duplicates"
    assert seqs[0] == 1
    assert len(seqs) < rounds * PER_ROUND  # something was dropped...
    assert st2["engine"]["slow_consumer_drops"] == rounds * PER_ROUND - len(seqs)  # ...and counted, exactly
    assert st2["engine"]["slow_consumer_closes"] == 0
    assert st2["record"]["disconnects"] == 0
    slow.close()


def test_slow_consumer_that_never_reads_is_released(make_server: Any) -> None:
    """A slow consumer that never reads again is still let go (its slot freed, 4008 reported)."""
    srv = make_server({"max_outbound_bytes": 256 * 1024})
    slow = _slow_subscriber(srv)

    async def main() -> dict[str, Any]:
        ws, _ = await open_ready(srv.url)
        await _publish_until(ws, "slow_consumer_closes")
        st = await wait_stats(
            ws, lambda s: s["record"]["disconnects"] == 1, timeout=10, what="the unread slow consumer's release"
        )
        assert st["engine"]["connections_active"] == 1
        await ws.close()
        return st

    st = asyncio.run(main())
    slow.close()
    assert st["record"]["codes"] == {"4008": 1}


# ---- the handshake: Origin, path, request size ---------------------------------------------------------


ORIGINS = {"allowed_origins": ["https://app.example", "https://admin.example"]}


def test_allowed_origin(make_server: Any) -> None:
    srv = make_server(ORIGINS)

    async def main() -> None:
        for origin in ("https://app.example", "https://admin.example"):
            ws, _ = await open_ready(srv.url, origin=origin)  # type: ignore[arg-type]
            await echo_ok(ws, origin)
            await ws.close()

    asyncio.run(main())


@pytest.mark.parametrize("origin", ["https://evil.example", "https://app.example.evil.com", "http://app.example"])
def test_refused_origin_403(make_server: Any, origin: str | None) -> None:
    srv = make_server(ORIGINS)

    async def main() -> dict[str, Any]:
        with pytest.raises(InvalidStatus) as ei:
            async with connect(srv.url, origin=origin):  # type: ignore[arg-type]
                pass
        assert ei.value.response.status_code == 403
        ws, _ = await open_ready(srv.url, origin="https://app.example")  # type: ignore[arg-type]
        st = await stats(ws)
        await ws.close()
        return st

    st = asyncio.run(main())
    assert st["engine"]["handshake_bad_origin"] == 1
    assert st["record"]["connects"] == 1


def test_no_origin_allowed_when_list_empty(server: ServerProc) -> None:
    async def main() -> None:
        ws, _ = await open_ready(server.url)
        await echo_ok(ws, 1)
        await ws.close()
        ws, _ = await open_ready(server.url, origin="https://anything.example")  # type: ignore[arg-type]
        await echo_ok(ws, 2)
        await ws.close()

    asyncio.run(main())


@pytest.mark.parametrize("path", ["/", "/ws", "/wse/", "/wsex", "/WSE"])
def test_wrong_path_404(server: ServerProc, path: str) -> None:
    status, data = http_status(server.port, path)
    assert status == 404, data

    async def main() -> dict[str, Any]:
        with pytest.raises(InvalidStatus) as ei:
            async with connect(f"ws://127.0.0.1:{server.port}{path}"):
                pass
        assert ei.value.response.status_code == 404
        ws, _ = await open_ready(server.url)
        st = await stats(ws)
        await ws.close()
        return st

    st = asyncio.run(main())
    assert st["engine"]["handshake_bad_path"] == 2
    assert st["record"]["connects"] == 1


def test_path_with_query_string_is_the_path(server: ServerProc) -> None:
    async def main() -> None:
        ws, _ = await open_ready(server.url + "?format=json&x=1")
        await echo_ok(ws, "q")
        await ws.close()

    asyncio.run(main())


def test_request_too_large_431(make_server: Any) -> None:
    srv = make_server({"max_request_bytes": 2048})
    status, data = http_status(srv.port, srv.path, {"X-Padding": "p" * 4000})
    assert status == 431, data
    status, _ = http_status(srv.port, srv.path, {"X-Padding": "p" * 1000})
    assert status == 101


def test_not_an_upgrade_400(server: ServerProc) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(f"GET {server.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400"), data


# ---- connection cap -----------------------------------------------------------------------------------------


def test_max_connections_503(make_server: Any) -> None:
    srv = make_server({"max_connections": 3})

    async def main() -> dict[str, Any]:
        conns = [(await open_ready(srv.url))[0] for _ in range(3)]
        for _ in range(2):
            with pytest.raises(InvalidStatus) as ei:
                async with connect(srv.url):
                    pass
            assert ei.value.response.status_code == 503
        st = await stats(conns[0])
        # A place frees up when a connection leaves.
        await conns[2].close()
        await wait_stats(conns[0], lambda s: s["engine"]["connections_active"] == 2, what="the freed slot")
        again, _ = await open_ready(srv.url)
        await echo_ok(again, "in")
        for ws in (again, conns[0], conns[1]):
            await ws.close()
        return st

    st = asyncio.run(main())
    assert st["engine"]["connections_rejected_limit"] == 2
    assert st["record"]["connects"] == 3


def test_max_connections_holds_under_concurrent_connects(make_server: Any) -> None:
    """Ten clients connecting at once to a server capped at 3: no more than 3 get in."""
    srv = make_server({"max_connections": 3})

    async def one() -> Any:
        try:
            ws, _ = await open_ready(srv.url)
            return ws
        except InvalidStatus as e:
            return e.response.status_code

    async def main() -> tuple[list[Any], list[int], dict[str, Any]]:
        results = await asyncio.gather(*(one() for _ in range(10)))
        conns = [r for r in results if not isinstance(r, int)]
        refused = [r for r in results if isinstance(r, int)]
        st = await stats(conns[0])
        for ws in conns:
            await ws.close()
        return conns, refused, st

    conns, refused, st = asyncio.run(main())
    assert len(conns) <= 3, f"{len(conns)} connections accepted with max_connections=3"
    assert refused == [503] * (10 - len(conns))
    assert st["engine"]["connections_active"] <= 3
    assert st["record"]["connects"] <= 3


# ---- slowloris and handshake timeouts ------------------------------------------------------------------------


PARTIAL = b"GET /wse HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"


def _wait_closed(s: socket.socket, limit: float) -> tuple[float, bytes]:
    """Seconds until the server closed `s` (from now), and any bytes it sent first."""
    t0 = time.monotonic()
    s.settimeout(limit)
    data = b""
    try:
        while chunk := s.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the server kept the socket open for more than {limit}s") from None
    return time.monotonic() - t0, data


@pytest.mark.parametrize("sent", [b"", PARTIAL], ids=["silent", "partial-request"])
def test_handshake_timeout_closes_socket(make_server: Any, sent: bytes) -> None:
    timeout_ms = 300
    srv = make_server({"handshake_timeout_ms": timeout_ms})
    s = socket.create_connection(("127.0.0.1", srv.port))
    t0 = time.monotonic()
    if sent:
        s.sendall(sent)
    # Closed by the timeout: never before it, and within a generous deadline after it (a slow
    # machine waits longer instead of failing).
    _, data = _wait_closed(s, 30.0)
    elapsed = time.monotonic() - t0
    s.close()
    assert data == b"", data
    assert elapsed >= timeout_ms / 1000 - 0.05, f"closed after {elapsed:.3f}s, before the timeout"

    async def main() -> dict[str, Any]:
        ws, _ = await open_ready(srv.url)
        st = await stats(ws)
        await ws.close()
        return st

    st = asyncio.run(main())
    assert st["engine"]["handshake_timeouts"] == 1
    assert st["record"]["connects"] == 1


def test_slowloris_bounded_by_pending_handshakes(make_server: Any) -> None:
    n, timeout_ms = 4, 400
    srv = make_server({"max_pending_handshakes": n, "handshake_timeout_ms": timeout_ms})
    loris = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall(PARTIAL)
        loris.append(s)
    # While all the slots are held, one more is turned away with a 503.
    status, data = http_status(srv.port, srv.path)
    assert status == 503, data
    # The handshake timeout frees every slot (a deadline far past it, not a timing bound).
    for s in loris:
        _, data = _wait_closed(s, 30.0)
        assert data == b""
    for s in loris:
        s.close()

    async def main() -> dict[str, Any]:
        ws, _ = await open_ready(srv.url)
        await echo_ok(ws, "real client")
        st = await stats(ws)
        await ws.close()
        return st

    st = asyncio.run(main())
    assert st["engine"]["handshake_timeouts"] == n
    assert st["engine"]["connections_rejected_pending"] == 1
    assert st["record"]["connects"] == 1


def test_pending_slot_freed_by_completed_handshake(make_server: Any) -> None:
    """Handshakes that finish release their slot: many sequential clients with a tiny bound."""
    srv = make_server({"max_pending_handshakes": 1})

    async def main() -> dict[str, Any]:
        for i in range(20):
            ws, _ = await open_ready(srv.url)
            await echo_ok(ws, i)
            await ws.close()
        ws, _ = await open_ready(srv.url)
        st = await stats(ws)
        await ws.close()
        return st

    st = asyncio.run(main())
    assert st["record"]["connects"] == 21
    assert st["engine"]["connections_rejected_pending"] == 0


def test_pending_handshake_slots_are_freed_after_the_upgrade(make_server: Any) -> None:
    """The slowloris bound counts handshakes in progress only, not open connections."""
    srv = make_server({"max_pending_handshakes": 4})

    async def main() -> None:
        conns = [(await open_ready(srv.url))[0] for _ in range(20)]
        assert len(conns) == 20
        for ws in conns:
            await ws.close()

    asyncio.run(main())
