"""The cluster tests' application: clients subscribe themselves; `pub` publishes from the worker
the client is on; `whoami` tells which worker process serves the client."""

import os
from typing import Any

from wse import Connection, Message, WSEApp, WSEConfig


def build(**cfg: Any) -> WSEApp:
    """The test application with ``cfg`` on top of the cluster tests' defaults."""
    app = WSEApp(WSEConfig(**{"port": 0, "idle_timeout_ms": 0, "ping_interval_ms": 0, **cfg}))

    @app.on("pub")
    def _pub(conn: Connection, msg: Message) -> None:
        p = msg.payload
        app.publish(p["topic"], p["data"], type="pubbed")

    @app.on("whoami")
    def _whoami(conn: Connection, msg: Message) -> None:
        app.send(conn, {"pid": os.getpid(), "slot": os.environ.get("WSE_WORKER_SLOT")}, type="whoami")

    return app


app = build()
