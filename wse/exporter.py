"""``/metrics`` and ``/healthz`` of a single process (``app.run(metrics=...)``, ``wse run
--metrics-bind`` without ``--workers``): the same families the cluster's supervisor exports,
for worker ``0``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from . import httpserver
from .cluster.osutil import cpu_seconds
from .metrics import CONTENT_TYPE, WorkerSample, render


def parse_address(address: str | tuple[str, int]) -> tuple[str, int]:
    """``"HOST:PORT"`` (``[::1]:9108`` for IPv6; an empty host is 127.0.0.1) or ``(host, port)``."""
    if isinstance(address, tuple):
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"metrics address must be HOST:PORT, got {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def serve_metrics(address: str | tuple[str, int], stats: Callable[[], dict[str, int]]) -> asyncio.Server:
    """Serves this process's engine counters; the caller closes the returned server."""
    host, port = parse_address(address)
    pid = os.getpid()

    async def handle(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        if path == "/metrics":
            if method != "GET":
                return 405, "text/plain", b"GET only\n"
            sample = WorkerSample(0, up=True, restarts=0, cpu_seconds=cpu_seconds(pid), stats=stats())
            return 200, CONTENT_TYPE, render([sample], cluster=False).encode()
        if path == "/healthz":
            return 200, "text/plain", b"serving\n"
        return 404, "text/plain", b"not found\n"

    return await httpserver.serve(host, port, handle)
