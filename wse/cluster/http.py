"""The supervisor's small HTTP server: ``GET /metrics`` and ``POST /publish``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

Handler = Callable[[str, str, dict[str, str], bytes], Awaitable[tuple[int, str, bytes]]]

log = logging.getLogger("wse.cluster")

MAX_BODY = 1 << 20
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 413: "Payload Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


async def serve(host: str, port: int, handler: Handler) -> asyncio.Server:
    """Serves one request per connection (``Connection: close``) with ``handler``."""

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                k, sep, v = line.partition(":")
                if sep:
                    headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length", "0") or 0)
            if length > MAX_BODY:
                status, ctype, body = 413, "text/plain", b"body too large\n"
            else:
                data = await asyncio.wait_for(reader.readexactly(length), 5) if length else b""
                status, ctype, body = await handler(method, target.split("?", 1)[0], headers, data)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ValueError):
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
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_server(on_conn, host, port)
