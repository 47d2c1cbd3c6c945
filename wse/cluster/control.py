"""The control channel between the supervisor and a worker: one JSON request per line on the
worker's Unix socket, one JSON answer per line."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson


def control_path(run_dir: str, slot: int, pid: int) -> str:
    """Where worker ``pid`` of ``slot`` answers control requests."""
    return os.path.join(run_dir, f"ctl-{slot}-{pid}.sock")


async def request(path: str, req: dict[str, Any], timeout: float = 1.0) -> dict[str, Any]:
    """Sends one request to a worker's control socket and returns its answer."""

    async def go() -> dict[str, Any]:
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            writer.write(orjson.dumps(req) + b"\n")
            await writer.drain()
            line = await reader.readline()
            if not line:
                raise ConnectionError("worker closed the control connection")
            answer: dict[str, Any] = orjson.loads(line)
            return answer
        finally:
            writer.close()

    return await asyncio.wait_for(go(), timeout)
