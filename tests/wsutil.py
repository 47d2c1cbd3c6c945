"""Client-side helpers shared by the auth, limits, drain and fan-out suites.

Two kinds of client:

- ``websockets`` (async) for ordinary traffic, with small helpers to read envelopes and ask the
  test app for its ``stats``;
- ``RawWS``, a hand-written client over a plain socket, for what a well-behaved library will not
  send: invalid UTF-8, unmasked frames, half a frame, a client that never reads.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import envelope

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

AUTH_COUNTERS = ("auth_missing", "auth_failed", "auth_expired")


# ---- websockets helpers ---------------------------------------------------------------------------


async def recv_json(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    return orjson.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_type(ws: ClientConnection, t: str, timeout: float = 5.0) -> dict[str, Any]:
    """The next envelope of type ``t`` (others are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {t!r} message within {timeout}s")
        msg = await recv_json(ws, left)
        if msg.get("t") == t:
            return msg


async def open_ready(url: str, **kw: Any) -> tuple[ClientConnection, dict[str, Any]]:
    """Connects and reads ``server_ready``."""
    ws = await connect(url, max_size=None, **kw)
    ready = await recv_json(ws)
    assert ready["t"] == "server_ready", ready
    return ws, ready


async def stats(ws: ClientConnection) -> dict[str, Any]:
    """``{"engine": {...}, "record": {...}}`` from the test app."""
    await ws.send(envelope("stats"))
    return (await recv_type(ws, "stats"))["p"]


async def wait_stats(
    ws: ClientConnection, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0, what: str = ""
) -> dict[str, Any]:
    """Polls ``stats`` until ``pred`` holds; fails with the last stats seen."""
    deadline = time.monotonic() + timeout
    while True:
        st = await stats(ws)
        if pred(st):
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or 'stats condition'}: {st}")
        await asyncio.sleep(0.02)


async def eventually(pred: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Waits until ``pred()`` holds (checked every few milliseconds); fails after ``timeout``.

    For conditions that the test itself observes (a counter its readers update, a task's
    progress): the deadline is generous, so a slow machine waits longer instead of failing."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or 'a condition'}")
        await asyncio.sleep(0.005)


def stats_when(srv: Any, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
    """From sync test code: opens a connection to ``srv`` and waits until ``pred`` holds on its stats."""

    async def main() -> dict[str, Any]:
        ws, _ = await open_ready(srv.url)
        try:
            return await wait_stats(ws, pred, timeout)
        finally:
            await ws.close()

    return asyncio.run(main())


async def fresh_stats(url: str, **kw: Any) -> dict[str, Any]:
    """Stats through a new connection (which counts as one more connect)."""
    ws, _ = await open_ready(url, **kw)
    try:
        return await stats(ws)
    finally:
        await ws.close()


# ---- a raw client over a plain socket --------------------------------------------------------------


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0) -> bytes:
    """One client frame, masked unless told otherwise."""
    head = bytearray([(0x80 if fin else 0) | rsv << 4 | opcode])
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head.append(m | n)
    elif n < 65536:
        head.append(m | 126)
        head += struct.pack("!H", n)
    else:
        head.append(m | 127)
        head += struct.pack("!Q", n)
    if not mask:
        return bytes(head) + payload
    key = os.urandom(4)
    head += key
    k = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big") if n else b""
    return bytes(head) + masked


def upgrade_request(port: int, path: str = "/wse", headers: dict[str, str] | None = None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class RawWS:
    """A blocking WebSocket client that does exactly what it is told."""

    def __init__(
        self,
        port: int,
        path: str = "/wse",
        headers: dict[str, str] | None = None,
        *,
        rcvbuf: int | None = None,
        timeout: float = 5.0,
        pipelined: bytes = b"",
    ) -> None:
        """Connects and upgrades; ``pipelined`` bytes (frames) go out in the request's own write."""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect, so that the window the client advertises starts small.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(upgrade_request(port, path, headers) + pipelined)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError(f"connection closed during the handshake: {buf!r}")
            buf += chunk
        head, _, self.buf = buf.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])
        self.head = head.decode("latin-1")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, opcode: int, payload: bytes, **kw: Any) -> None:
        self.sock.sendall(client_frame(opcode, payload, **kw))

    def send_json(self, data: bytes) -> None:
        self.send_frame(OP_TEXT, data)

    def _need(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError("connection closed by the server")
            self.buf += chunk

    def recv_frame(self) -> tuple[int, bytes]:
        """``(opcode, payload)`` of the next frame the server sent (server frames are unmasked)."""
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        assert b1 & 0x80 == 0, "server frames must not be masked"
        n, h = b1 & 0x7F, 2
        if n == 126:
            self._need(4)
            n, h = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            self._need(10)
            n, h = struct.unpack("!Q", self.buf[2:10])[0], 10
        self._need(h + n)
        payload = self.buf[h : h + n]
        self.buf = self.buf[h + n :]
        assert b0 & 0x80, "the server does not fragment"
        return b0 & 0x0F, payload

    def recv_json(self) -> dict[str, Any]:
        """The next data message as JSON (pings are answered)."""
        while True:
            op, payload = self.recv_frame()
            if op in (OP_TEXT, OP_BINARY):
                return orjson.loads(payload)
            if op == OP_PING:
                self.send_frame(OP_PONG, payload)
                continue
            if op == OP_CLOSE:
                raise EOFError(f"close frame {close_code(payload)}")

    def read_until_close(self) -> tuple[list[dict[str, Any]], int | None, str]:
        """Reads to the end: the data messages, the close code (None if no close frame) and reason."""
        msgs: list[dict[str, Any]] = []
        while True:
            try:
                op, payload = self.recv_frame()
            except (EOFError, ConnectionResetError):
                return msgs, None, ""
            if op in (OP_TEXT, OP_BINARY):
                msgs.append(orjson.loads(payload))
            elif op == OP_CLOSE:
                code = close_code(payload)
                try:
                    self.send_frame(OP_CLOSE, payload[:2])
                except OSError:
                    pass
                return msgs, code, payload[2:].decode("utf-8", "replace")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def close_code(payload: bytes) -> int | None:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


def http_status(port: int, path: str = "/wse", headers: dict[str, str] | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """Sends an upgrade request and returns the HTTP status and everything the server sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(upgrade_request(port, path, headers))
        data = b""
        while True:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
            if data.startswith(b"HTTP/1.1 101"):
                break
    return int(data.split(b" ", 2)[1]) if data else 0, data
