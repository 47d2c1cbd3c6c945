"""The small HTTP/1.1 server behind ``/metrics``, ``/healthz`` and the supervisor's ``/publish``.

One request per connection (``Connection: close``), every step bounded: the request head must
arrive within ``HEAD_TIMEOUT`` and fit in ``MAX_HEAD`` bytes, a body is at most ``MAX_BODY``
bytes and must arrive within ``BODY_TIMEOUT``, the answer must be taken within
``WRITE_TIMEOUT``, and at most ``MAX_CONNECTIONS`` requests are served at once (more wait in the
kernel's backlog). It serves operators and Prometheus, not the public: bind it to a private
address.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

Handler = Callable[[str, str, dict[str, str], bytes], Awaitable[tuple[int, str, bytes]]]

log = logging.getLogger("wse.http")

MAX_HEAD = 16 * 1024
MAX_BODY = 1 << 20
MAX_CONNECTIONS = 64
HEAD_TIMEOUT = 5.0
BODY_TIMEOUT = 10.0
WRITE_TIMEOUT = 10.0
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 413: "Payload Too Large", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}


async def serve(host: str, port: int, handler: Handler) -> asyncio.Server:
    """Serves ``handler`` on ``host:port``; the caller closes the returned server."""
    slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with slots:
            await _one(reader, writer, handler)

    return await asyncio.start_server(on_conn, host, port, limit=MAX_HEAD)


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            k, sep, v = line.partition(":")
            if sep:
                headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0") or 0)
        if length < 0:
            raise ValueError("negative content-length")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            status, ctype, body = 400, "text/plain", b"chunked bodies are not accepted; send Content-Length\n"
        elif length > MAX_BODY:
            status, ctype, body = 413, "text/plain", b"body too large\n"
        else:
            data = await asyncio.wait_for(reader.readexactly(length), BODY_TIMEOUT) if length else b""
            status, ctype, body = await handler(method, target.split("?", 1)[0], headers, data)
    except asyncio.LimitOverrunError:
        status, ctype, body = 431, "text/plain", b"request head too large\n"
    except (asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
        status, ctype, body = 400, "text/plain", b"bad request\n"
    except ConnectionError:
        writer.close()
        return
    except Exception:  # a handler's bug answers 500; the server keeps serving
        log.exception("wse: HTTP handler failed")
        status, ctype, body = 500, "text/plain", b"internal error\n"
    head_out = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    try:
        writer.write(head_out.encode() + body)
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
    except (ConnectionError, asyncio.TimeoutError):
        writer.transport.abort()
        return
    writer.close()
