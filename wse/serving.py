"""Serving: the engine on its own listener (``WSEApp.serve``, ``run`` and ``stop``), with the
Prometheus endpoint beside it when asked, until a signal or ``stop()``."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson

from . import _logs, _runtime

if TYPE_CHECKING:
    from .app import WSEApp
    from .config import WSEConfig

log = logging.getLogger("wse")


def url(config: WSEConfig, addr: tuple[str, int]) -> str:
    """``ws://HOST:PORT/PATH`` (``wss://`` with TLS); ``ws+unix://SOCKET:/PATH`` on a Unix domain socket."""
    scheme = "wss" if config.tls_cert_file else "ws"
    if config.uds:
        return f"{scheme}+unix://{addr[0]}:{config.path}"
    return f"{scheme}://{addr[0]}:{addr[1]}{config.path}"


async def serve(
    app: WSEApp, ready: Callable[[tuple[str, int]], None] | None, metrics: str | tuple[str, int] | None
) -> None:
    """``WSEApp.serve``: start the engine listening, hand its events to the application until
    ``stop()``, then close every connection and hand over what remains."""
    loop = asyncio.get_running_loop()
    _logs.start()
    app._loop = loop
    app._stopped = asyncio.Event()
    engine_json = app.config.engine_json(subscribe_hook=app._dispatch.authorize is not None)
    if app._engine_extra:  # a cluster worker's socket and mesh (wse/cluster/worker.py)
        engine_json = orjson.dumps({**orjson.loads(engine_json), **app._engine_extra}).decode()
    server = _runtime.Server(engine_json)
    app._server = server
    app._lifecycle_hooks_changed()
    address = server.start()
    assert address is not None, "a listening engine reports its address"
    app.address = address
    loop.add_reader(server.fd, app._dispatch.drain)
    web = None
    try:
        if metrics is not None:
            from .exporter import serve_metrics

            web = await serve_metrics(metrics, app.stats)
            app.metrics_address = web.sockets[0].getsockname()[:2]
        if ready is not None:
            ready(address)
        else:
            log.info("serving on %s", url(app.config, address))
        await app._stopped.wait()
    finally:
        if web is not None:
            web.close()
        loop.remove_reader(server.fd)
        server.stop()
        # Every connection is closed now; hand Python all the remaining events.
        app._dispatch.drain_all()
        await app._dispatch.finish()


def run(app: WSEApp, announce: bool, metrics: str | tuple[str, int] | None) -> None:
    """``WSEApp.run``: ``serve`` in this thread until SIGINT or SIGTERM (uvloop if installed)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, app.stop)
        await serve(app, _announce if announce else None, metrics)

    def _announce(addr: tuple[str, int]) -> None:
        extra = ""
        if app.metrics_address is not None:
            extra = f" in one process, metrics on http://{app.metrics_address[0]}:{app.metrics_address[1]}/metrics"
        print(f"wse: serving {url(app.config, addr)}{extra}", flush=True)

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
