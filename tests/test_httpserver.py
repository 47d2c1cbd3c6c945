"""The small HTTP server behind /metrics, /healthz and /publish keeps its bounds: head size, body
size, chunked bodies refused, a handler's exception answered with 500, a silent client dropped."""

from __future__ import annotations

import asyncio

import pytest

from wse import httpserver


async def handler(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
    if path == "/boom":
        raise RuntimeError("handler bug")
    return 200, "text/plain", f"{method} {path} {len(body)}".encode()


async def exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


def run(request: bytes) -> bytes:
    async def main() -> bytes:
        server = await httpserver.serve("127.0.0.1", 0, handler)
        try:
            return await exchange(server.sockets[0].getsockname()[1], request)
        finally:
            server.close()

    return asyncio.run(main())


def test_a_request_is_served() -> None:
    out = run(b"POST /publish?x=1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"POST /publish 3")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nX: " + b"a" * (httpserver.MAX_HEAD + 10) + b"\r\n\r\n", b"431"),
        (b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (httpserver.MAX_BODY + 1), b"413"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", b"400"),
        (b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n", b"400"),
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET /boom HTTP/1.1\r\n\r\n", b"500"),
    ],
)
def test_bad_requests_get_their_status(request_bytes: bytes, status: bytes) -> None:
    assert run(request_bytes).startswith(b"HTTP/1.1 " + status)


def test_a_silent_client_is_answered_400_after_the_head_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpserver, "HEAD_TIMEOUT", 0.2)
    assert run(b"GET /metrics HTTP/1.1\r\n").startswith(b"HTTP/1.1 400")


def test_a_body_that_never_comes_is_answered_400(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpserver, "BODY_TIMEOUT", 0.2)
    assert run(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc").startswith(b"HTTP/1.1 400")
