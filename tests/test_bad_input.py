"""The bad-input matrix: every hostile or broken input gets a clear answer and touches no one else.

One server (JWT required) serves the whole module. For each case a bystander subscribes to a
feed that a publisher keeps publishing to while the attack runs; afterwards the bystander must
have every publication, in order, with none missing, and the server must still serve a new
client. Each case checks the answer the attacker gets: an HTTP status, a close code, an error
envelope, or a socket closed by a timeout.

The attacks are written by hand over plain sockets (``RawWS``, ``client_frame``) where a library
would refuse to send them.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import socket
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import jwt as pyjwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import SECRET, ServerProc, envelope, make_token, subscribe_msg
from tests.wsutil import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_TEXT, RawWS, client_frame, http_status, open_ready, recv_type

FEED = "bystander.feed"
CONFIG = {
    "jwt": {"secret": SECRET},
    "handshake_timeout_ms": 1000,
    "max_message_bytes": 1 << 20,
    # The flood cases must meet the limits, not the defaults sized for production bursts.
    "rate_limit_capacity": 2000,
    "rate_limit_refill": 1000,
    "max_outbound_bytes": 1 << 20,
}

_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUBLIC_PEM = _rsa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
_users = itertools.count()


def auth(tok: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok or make_token({'sub': f'user-{next(_users)}'})}"}


def b64(d: Any) -> str:
    raw = d if isinstance(d, bytes) else orjson.dumps(d)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerProc]:
    s = ServerProc("tests.apps.testapp:app", CONFIG)
    yield s
    code = s.stop()
    errors = s.errors()
    s.stderr.close()
    assert code == 0, errors
    assert "panicked" not in errors, errors


class Bystander:
    """A subscriber and a publisher around an attack: the feed must arrive whole and in order."""

    def __init__(self, srv: ServerProc) -> None:
        self.srv = srv
        self.got: list[int] = []
        self.sent = 0

    async def __aenter__(self) -> Bystander:
        self.sub, _ = await open_ready(self.srv.url, additional_headers=auth())
        await self.sub.send(subscribe_msg([FEED]))
        ack = await recv_type(self.sub, "subscription_update")
        assert ack["p"]["success_topics"] == [FEED], ack
        self.pub, _ = await open_ready(self.srv.url, additional_headers=auth())
        self.stop = asyncio.Event()
        self.publisher = asyncio.ensure_future(self._publish())
        self.reader = asyncio.ensure_future(self._read())
        await self.until(lambda: len(self.got) >= 5, "the feed before the attack")
        return self

    async def _publish(self) -> None:
        while not self.stop.is_set():
            await self.pub.send(envelope("publish", {"topic": FEED, "count": 1, "payload": {"k": self.sent}}))
            self.sent += 1
            await asyncio.sleep(0.005)  # pacing: a steady stream

    async def _read(self) -> None:
        async for raw in self.sub:
            m = orjson.loads(raw)
            if m.get("t") == "pub" and m.get("tp") == FEED:
                self.got.append(m["p"]["k"])

    async def until(self, pred: Callable[[], bool], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if self.reader.done():
                raise AssertionError(f"the bystander's connection ended: {self.reader.exception()!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {len(self.got)} of {self.sent}")
            await asyncio.sleep(0.01)

    async def __aexit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.stop.set()
            self.publisher.cancel()
            self.reader.cancel()
            return
        # The feed goes on after the attack too, then stops; every publication must arrive.
        after = self.sent
        await self.until(lambda: len(self.got) > 0 and self.got[-1] >= after, "the feed after the attack")
        self.stop.set()
        await self.publisher
        await self.until(lambda: len(self.got) >= self.sent, "the rest of the feed")
        assert self.got == list(range(self.sent)), "the bystander lost or reordered publications"
        self.reader.cancel()
        await self.sub.close()
        await self.pub.close()
        # And a new client is served at once.
        ws, _ = await open_ready(self.srv.url, additional_headers=auth())
        await ws.send(envelope("echo", "after"))
        assert (await recv_type(ws, "echo", timeout=30))["p"] == "after"
        await ws.close()


def around(srv: ServerProc, attack: Callable[[], Any]) -> Any:
    """Runs the blocking ``attack`` in a thread while the bystander's feed flows; returns its result."""

    async def main() -> Any:
        async with Bystander(srv):
            return await asyncio.to_thread(attack)

    return asyncio.run(main())


# ---- what the attacker gets back ------------------------------------------------------------------


def refused_4401(srv: ServerProc, headers: dict[str, str], path: str | None = None) -> str:
    """Upgraded, then an error envelope and close 4401: returns the close reason (a short label)."""
    r = RawWS(srv.port, path or srv.path, headers, timeout=30)
    try:
        assert r.status == 101, r.head
        msgs, code, reason = r.read_until_close()
        assert code == 4401, (code, reason, msgs)
        assert [m["t"] for m in msgs] == ["error"], msgs
        assert msgs[0]["p"]["code"] in ("AUTH_FAILED", "AUTH_REQUIRED"), msgs
        return reason
    finally:
        r.close()


def ready(srv: ServerProc, headers: dict[str, str] | None = None, **kw: Any) -> RawWS:
    r = RawWS(srv.port, srv.path, headers or auth(), timeout=30, **kw)
    assert r.status == 101, r.head
    assert r.recv_json()["t"] == "server_ready"
    return r


def closed_with(r: RawWS) -> tuple[int | None, list[dict[str, Any]]]:
    try:
        msgs, code, _ = r.read_until_close()
        return code, msgs
    finally:
        r.close()


def frames_then_close(srv: ServerProc, data: bytes) -> int | None:
    r = ready(srv)
    try:
        r.send(data)
    except OSError:
        pass  # the server may close before the whole input is written
    code, _ = closed_with(r)
    return code


def wait_closed(s: socket.socket, limit: float = 30) -> bytes:
    s.settimeout(limit)
    data = b""
    try:
        while chunk := s.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    return data


# ---- JWT ------------------------------------------------------------------------------------------


def _alg_none() -> str:
    return b64({"alg": "none", "typ": "JWT"}) + "." + b64({"sub": "mallory", "exp": int(time.time()) + 300}) + "."


def _hs_rs_confusion() -> str:
    # Signed with HS256 using the RSA public key as the HMAC secret: refused since only HS256 with
    # the server's own secret is accepted (and a server with RS256 never takes HS256).
    body = b64({"alg": "HS256", "typ": "JWT"}) + "." + b64({"sub": "mallory", "exp": int(time.time()) + 300})
    import hashlib
    import hmac

    return body + "." + b64(hmac.new(RSA_PUBLIC_PEM, body.encode(), hashlib.sha256).digest())


JWT_CASES: dict[str, Callable[[], str]] = {
    "alg-none": _alg_none,
    "hs-rs-confusion": _hs_rs_confusion,
    "rs256-signed": lambda: pyjwt.encode({"sub": "m", "exp": int(time.time()) + 300}, _rsa, algorithm="RS256"),
    "wrong-key": lambda: make_token({"sub": "m"}, secret="wrong-secret-0123456789abcdef-0123456789"),
    "expired": lambda: make_token({"sub": "m"}, exp_in=-3600),
    "nbf-ahead": lambda: make_token({"sub": "m", "nbf": int(time.time()) + 3600}),
    "100kb-token": lambda: make_token({"sub": "m", "junk": "x" * 100_000}),
    "garbage": lambda: "not.a.token",
    "tampered-claims": lambda: (lambda t: t.split(".")[0] + "." + b64({"sub": "admin", "exp": int(time.time()) + 300}) + "." + t.split(".")[2])(make_token({"sub": "m"})),
}


@pytest.mark.parametrize("case", list(JWT_CASES))
def test_jwt_attacks_are_refused_4401(srv: ServerProc, case: str) -> None:
    tok = JWT_CASES[case]()
    if case == "100kb-token":
        # Too large for the request limit as a header: refused before any parsing.
        status, _ = around(srv, lambda: http_status(srv.port, srv.path, auth(tok), timeout=30))
        assert status == 431, status
        return
    reason = around(srv, lambda: refused_4401(srv, auth(tok)))
    assert reason, "a refusal names its reason"


def test_jwt_without_sub_is_not_an_anonymous_user(srv: ServerProc) -> None:
    tok = pyjwt.encode({"exp": int(time.time()) + 300}, SECRET, algorithm="HS256")
    reason = around(srv, lambda: refused_4401(srv, auth(tok)))
    assert reason == "missing_claim", reason


# ---- the handshake --------------------------------------------------------------------------------


def _raw_request(srv: ServerProc, data: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        try:
            s.sendall(data)
        except OSError:
            pass
        got = wait_closed(s)
    status = int(got.split(b" ", 2)[1]) if got.startswith(b"HTTP/1.1 ") else 0
    return status, got


def _upgrade(srv: ServerProc, extra: str) -> bytes:
    return (f"GET {srv.path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode()


@pytest.mark.parametrize("case", ["64kb-headers", "10000-header-lines", "garbage-request-line", "binary-junk", "http-1.0"])
def test_handshake_abuse_gets_an_http_error(srv: ServerProc, case: str) -> None:
    data = {
        "64kb-headers": _upgrade(srv, "X-Big: " + "a" * 65536 + "\r\n"),
        "10000-header-lines": _upgrade(srv, "".join(f"X-H{i}: v\r\n" for i in range(10_000))),
        "garbage-request-line": b"\x16\x03\x01 HELLO THERE\r\n\r\n",
        "binary-junk": bytes(range(256)) * 8 + b"\r\n\r\n",
        "http-1.0": f"GET {srv.path} HTTP/1.0\r\nHost: x\r\n\r\n".encode(),
    }[case]
    status, got = around(srv, lambda: _raw_request(srv, data))
    assert status == (431 if case in ("64kb-headers", "10000-header-lines") else 400), (status, got[:200])


def test_slowloris_from_200_sockets_is_closed_by_the_handshake_timeout(srv: ServerProc) -> None:
    def attack() -> list[bytes]:
        socks = []
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
            s.sendall(b"GET " + srv.path.encode() + b" HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            socks.append(s)
        # While they hang, a real client is served.
        r = ready(srv)
        r.close()
        got = [wait_closed(s) for s in socks]
        for s in socks:
            s.close()
        return got

    got = around(srv, attack)
    assert all(g in (b"", ) or g.startswith(b"HTTP/1.1 408") for g in got), {g[:40] for g in got}


# ---- frames ---------------------------------------------------------------------------------------


def _len63() -> bytes:
    key = b"\x01\x02\x03\x04"
    return bytes([0x81, 0x80 | 127]) + struct.pack("!Q", 1 << 63) + key


def _cont_10000() -> bytes:
    out = [client_frame(OP_TEXT, b"[", fin=False)]
    out += [client_frame(OP_CONT, b"1,", fin=False) for _ in range(9_999)]
    return b"".join(out)  # never finished: within the message cap, the connection lives on


FRAME_CASES: dict[str, tuple[Callable[[], bytes], set[int | None]]] = {
    "unmasked": (lambda: client_frame(OP_TEXT, b'{"t":"echo"}', mask=False), {1002}),
    "reserved-bits": (lambda: client_frame(OP_TEXT, b'{"t":"echo"}', rsv=0b010), {1002}),
    "unknown-opcode": (lambda: client_frame(0x3, b"x"), {1002}),
    "fragmented-ping": (lambda: client_frame(OP_PING, b"x", fin=False), {1002}),
    "long-ping": (lambda: client_frame(OP_PING, b"x" * 126), {1002}),
    "length-2^63": (_len63, {1002, 1009}),
    "invalid-utf8": (lambda: client_frame(OP_TEXT, b'{"t":"echo","p":"\xff\xfe"}'), {1007}),
    "close-code-999": (lambda: client_frame(OP_CLOSE, struct.pack("!H", 999)), {1002}),
    "close-code-1005": (lambda: client_frame(OP_CLOSE, struct.pack("!H", 1005)), {1002}),
    "close-code-5000": (lambda: client_frame(OP_CLOSE, struct.pack("!H", 5000)), {1002}),
    "close-1-byte": (lambda: client_frame(OP_CLOSE, b"\x03"), {1002}),
    "continuation-first": (lambda: client_frame(OP_CONT, b"x"), {1002}),
    "text-inside-fragments": (lambda: client_frame(OP_TEXT, b"a", fin=False) + client_frame(OP_TEXT, b"b"), {1002}),
    "over-the-message-cap": (lambda: client_frame(OP_BINARY, b"\0" * ((1 << 20) + 1)), {1009}),
    "fragments-over-the-cap": (lambda: b"".join(client_frame(OP_BINARY if i == 0 else OP_CONT, b"\0" * 65536, fin=False) for i in range(17)), {1009}),
}


@pytest.mark.parametrize("case", list(FRAME_CASES))
def test_frame_abuse_closes_with_the_rfc_code(srv: ServerProc, case: str) -> None:
    make, codes = FRAME_CASES[case]
    code = around(srv, lambda: frames_then_close(srv, make()))
    assert code in codes, (case, code)


def test_ten_thousand_continuation_frames_make_one_message(srv: ServerProc) -> None:
    def attack() -> int | None:
        r = ready(srv)
        r.send(_cont_10000() + client_frame(OP_CONT, b"1]"))
        # Reassembled: one JSON array of 10,000 numbers, no envelope, so the raw handler's echo.
        while True:
            op, got = r.recv_frame()
            if got.startswith(b"[1,1,"):
                assert got == b"[" + b"1," * 9_999 + b"1]"
                break
        _still_alive(r)
        r.send_frame(OP_CLOSE, struct.pack("!H", 1000))
        return closed_with(r)[0]

    assert around(srv, attack) == 1000


def test_a_hundred_thousand_one_byte_frames_meet_the_rate_limit(srv: ServerProc) -> None:
    def attack() -> tuple[int | None, list[dict[str, Any]]]:
        r = ready(srv)
        frame = client_frame(OP_TEXT, b"1")
        try:
            r.send(frame * 100_000)
        except OSError:
            pass
        return closed_with(r)

    code, msgs = around(srv, attack)
    assert code == 4429, (code, [m.get("t") for m in msgs[:5]])
    assert any(m["p"].get("code") == "RATE_LIMITED" for m in msgs if m.get("t") == "error"), msgs[:3]


# ---- payloads -------------------------------------------------------------------------------------


def _still_alive(r: RawWS) -> None:
    r.send_json(envelope("echo", "alive"))
    while True:
        op, payload = r.recv_frame()
        if op in (OP_TEXT, OP_BINARY) and payload.startswith(b"{"):
            e = orjson.loads(payload)
            if e.get("t") == "echo":
                assert e["p"] == "alive"
                return


def _error_then_alive(srv: ServerProc, frame: bytes) -> dict[str, Any]:
    """An envelope-shaped message the engine cannot take: an error envelope, and the connection lives."""
    r = ready(srv)
    try:
        r.send(frame)
        m = r.recv_json()
        while m.get("t") != "error":
            m = r.recv_json()
        _still_alive(r)
        return m
    finally:
        r.close()


def _raw_then_alive(srv: ServerProc, frame: bytes, payload: bytes) -> None:
    """A message that is no envelope at all goes to the application's raw handler untouched (the
    test app echoes it), not through the envelope parser; the connection lives."""
    r = ready(srv)
    try:
        r.send(frame)
        while True:
            op, got = r.recv_frame()
            if got == payload:
                break
        _still_alive(r)
    finally:
        r.close()


NESTED = b"[" * 100_000 + b"]" * 100_000
RAW_CASES: dict[str, bytes] = {
    "json-nested-100000": NESTED,
    "json-not-an-object": b'"just a string"',
}


@pytest.mark.parametrize("case", list(RAW_CASES))
def test_non_envelopes_reach_the_raw_handler_untouched(srv: ServerProc, case: str) -> None:
    data = RAW_CASES[case]
    around(srv, lambda: _raw_then_alive(srv, client_frame(OP_TEXT, data), data))


PAYLOAD_CASES: dict[str, Callable[[], bytes]] = {
    "json-truncated": lambda: client_frame(OP_TEXT, b'{"t":"echo","p":'),
    "envelope-nested-100000": lambda: client_frame(OP_TEXT, b'{"t":"echo","p":' + NESTED + b"}"),
    "object-nested-100000": lambda: client_frame(OP_TEXT, b'{"t":' * 50_000 + b"1" + b"}" * 50_000),
    "msgpack-malformed": lambda: client_frame(OP_BINARY, b"M:\xc1\xff\x00"),
    "msgpack-truncated": lambda: client_frame(OP_BINARY, b"M:\x82\xa1t"),
    "zlib-garbage": lambda: client_frame(OP_BINARY, b"C:not zlib at all"),
    "zlib-bomb": lambda: client_frame(OP_BINARY, b"C:" + zlib.compress(b"\0" * (256 << 20), 9)),
    "e-before-key-exchange": lambda: client_frame(OP_BINARY, b"E:" + bytes(40)),
}


@pytest.mark.parametrize("case", list(PAYLOAD_CASES))
def test_payload_abuse_gets_an_error_and_the_connection_lives(srv: ServerProc, case: str) -> None:
    err = around(srv, lambda: _error_then_alive(srv, PAYLOAD_CASES[case]()))
    assert err["p"]["code"] and err["p"]["message"], err


def test_zlib_bomb_costs_no_memory(srv: ServerProc) -> None:
    rss_before = _rss_kib(srv.pid)

    def attack() -> None:
        bomb = client_frame(OP_BINARY, b"C:" + zlib.compress(b"\0" * (256 << 20), 9))
        for _ in range(8):
            _error_then_alive(srv, bomb)

    around(srv, attack)
    grown_mib = (_rss_kib(srv.pid) - rss_before) / 1024
    assert grown_mib < 64, f"eight 256 MiB bombs grew the server by {grown_mib:.0f} MiB"


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


# ---- topics ---------------------------------------------------------------------------------------


def test_megabyte_topic_name_is_refused(srv: ServerProc) -> None:
    def attack() -> dict[str, Any]:
        r = ready(srv)
        try:
            r.send_json(subscribe_msg(["t" * ((1 << 20) - 200)]))
            m = r.recv_json()
            while m.get("t") not in ("subscription_update", "error"):
                m = r.recv_json()
            r.send_json(envelope("echo", "alive"))
            e = r.recv_json()
            while e.get("t") != "echo":
                e = r.recv_json()
            return m
        finally:
            r.close()

    m = around(srv, attack)
    assert len(orjson.dumps(m)) < 4096, "the refusal does not echo the megabyte back"
    if m["t"] == "subscription_update":
        assert m["p"]["success_topics"] == [] and len(m["p"]["failed_topics"]) == 1, str(m)[:300]
    else:
        assert m["p"]["code"] and m["p"]["message"], m


# ---- floods and slow consumers ---------------------------------------------------------------------


def test_message_flood_meets_the_rate_limit_others_unaffected(srv: ServerProc) -> None:
    def attack() -> tuple[int | None, list[dict[str, Any]]]:
        r = ready(srv)
        msg = client_frame(OP_TEXT, envelope("count"))
        try:
            for _ in range(20):
                r.send(msg * 1000)
        except OSError:
            pass
        return closed_with(r)

    code, msgs = around(srv, attack)
    assert code == 4429, code
    assert any(m.get("t") == "rate_limit_warning" or (m.get("t") == "error" and m["p"]["code"] == "RATE_LIMITED") for m in msgs)


def _closes_with(srv: ServerProc, code: int) -> int:
    async def main() -> int:
        ws, _ = await open_ready(srv.url, additional_headers=auth())
        await ws.send(envelope("stats"))
        st = await recv_type(ws, "stats")
        await ws.close()
        return int(st["p"]["record"]["codes"].get(str(code), 0))

    return asyncio.run(main())


def test_slow_consumers_that_never_read_are_closed(srv: ServerProc) -> None:
    before = _closes_with(srv, 4008)

    def attack() -> None:
        readers = []
        for _ in range(4):
            r = ready(srv, rcvbuf=4096)
            r.send_json(subscribe_msg([FEED]))
            readers.append(r)
        # They never read; the feed plus a burst of big publications fills their budget.
        pub = ready(srv)
        pub.send_json(envelope("publish", {"topic": FEED + ".big", "count": 1}))
        for r in readers:
            r.send_json(subscribe_msg([FEED + ".big"]))
        for _ in range(10):
            pub.send_json(envelope("publish", {"topic": FEED + ".big", "count": 20, "payload": {"pad": "x" * 60_000}}))
        pub.close()
        # The server lets each of them go (its end of the socket closes) though they never read.
        for r in readers:
            r.sock.settimeout(60)
            try:
                while r.sock.recv(1 << 16):
                    pass
            except ConnectionResetError:
                pass
            r.close()

    around(srv, attack)
    # The application heard of each one's end, with the slow-consumer code.
    deadline = time.monotonic() + 30
    while _closes_with(srv, 4008) < before + 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _closes_with(srv, 4008) == before + 4
