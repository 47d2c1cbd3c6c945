"""A cluster worker: ``python -m wse.cluster.worker``, started by the supervisor.

Everything it needs comes in the environment (``WSE_*``, set by the supervisor): the
application, its slot and CPU, the listening socket's fd and the run directory for the mesh
and control sockets. It pins itself, arranges to die with the supervisor, then serves.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import sys
from typing import Any

import orjson

from ..app import WSEApp
from ..logformat import configure
from .control import control_path
from .osutil import cpu_seconds, die_with_parent, pin_to

log = logging.getLogger("wse.cluster")


def load_app(target: str, factory: bool = False) -> WSEApp:
    module_name, _, attr = target.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    obj = getattr(importlib.import_module(module_name), attr or "app")
    if factory:
        obj = obj()
    if not isinstance(obj, WSEApp):
        raise TypeError(f"{target!r} is a {type(obj).__name__}, not a wse.WSEApp")
    return obj


class Worker:
    def __init__(self, app: WSEApp, slot: int) -> None:
        self.app = app
        self.slot = slot
        self.ready = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    answer = self.answer(orjson.loads(line))
                except Exception as e:  # a bad request gets an error, the worker carries on
                    answer = {"error": str(e)}
                writer.write(orjson.dumps(answer) + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def answer(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "ping":
            mesh = self.app.server.mesh_stats() if self.ready else None
            slots = sorted({p["slot"] for p in orjson.loads(mesh)["peers"]}) if mesh else []
            return {"ready": self.ready, "slot": self.slot, "pid": os.getpid(), "mesh_slots": slots}
        if not self.ready:
            return {"error": "not ready"}
        server = self.app.server
        if op == "stats":
            mesh = server.mesh_stats()
            bridge = server.bridge_stats()
            return {
                "redis": orjson.loads(bridge) if bridge else None,
                "slot": self.slot,
                "pid": os.getpid(),
                "stats": self.app.stats(),
                "mesh": orjson.loads(mesh) if mesh else None,
                "cpu_seconds": cpu_seconds(os.getpid()),
            }
        if op == "publish":
            topic = req["topic"]
            if not isinstance(topic, str) or not topic:
                raise ValueError("topic must be a non-empty string")
            n = self.app.publish(topic, req.get("payload"), type=str(req.get("type", "message")),
                                 category=str(req.get("category", "U")))
            return {"ok": True, "local_subscribers": n}
        if op == "mesh_cut":
            # Fault injection for operators and tests: the links end and re-link by themselves.
            return {"cut": server.mesh_cut()}
        raise ValueError(f"unknown op {op!r}")


def config_overrides(env: Any) -> dict[str, Any]:
    """Settings the CLI changed (``WSE_ALLOWED_ORIGINS``, newline-separated,
    ``WSE_PERMESSAGE_DEFLATE``, 1 or 0, and ``WSE_MAX_CONNECTIONS_PER_IP``), to apply over the
    application's own config."""
    out: dict[str, Any] = {}
    if "WSE_ALLOWED_ORIGINS" in env:
        out["allowed_origins"] = tuple(o for o in env["WSE_ALLOWED_ORIGINS"].split("\n") if o)
    if env.get("WSE_PERMESSAGE_DEFLATE") in ("0", "1"):
        out["permessage_deflate"] = env["WSE_PERMESSAGE_DEFLATE"] == "1"
    if env.get("WSE_MAX_CONNECTIONS_PER_IP", "").isdigit():
        out["max_connections_per_ip"] = int(env["WSE_MAX_CONNECTIONS_PER_IP"])
    return out


def main() -> None:
    env = os.environ
    configure(env.get("WSE_LOG_LEVEL", "info"), env.get("WSE_LOG_FORMAT", "text"))
    die_with_parent(int(env["WSE_SUPERVISOR_PID"]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    slot = int(env["WSE_WORKER_SLOT"])
    if env.get("WSE_CPU"):
        pin_to(int(env["WSE_CPU"]))
    run_dir = env["WSE_RUN_DIR"]
    app = load_app(env["WSE_TARGET"], factory=bool(env.get("WSE_FACTORY")))
    if env.get("WSE_SSL_CERTFILE") and env.get("WSE_SSL_KEYFILE"):
        app.config = app.config.replace(tls_cert_file=env["WSE_SSL_CERTFILE"], tls_key_file=env["WSE_SSL_KEYFILE"])
    if overrides := config_overrides(env):
        app.config = app.config.replace(**overrides)
    app._engine_extra = {
        "listen_fd": int(env["WSE_LISTEN_FD"]),
        "drain_timeout_ms": int(float(env.get("WSE_DRAIN_TIMEOUT", "10")) * 1000),
        "mesh": {"dir": run_dir, "slot": slot, "workers": int(env["WSE_WORKERS"])},
        "redis_host": env.get("WSE_HOST_ID"),
    }
    if env.get("WSE_REDIS_URL"):
        app._engine_extra["redis_url"] = env["WSE_REDIS_URL"]
    worker = Worker(app, slot)

    async def amain() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, app.stop)
        path = control_path(run_dir, slot, os.getpid())
        ctl = await asyncio.start_unix_server(worker.handle, path=path)

        def ready(addr: tuple[str, int]) -> None:
            worker.ready = True
            log.debug("worker %d (pid %d) serving on %s:%d", slot, os.getpid(), *addr)

        try:
            await app.serve(ready=ready)
        finally:
            ctl.close()
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    try:
        import uvloop

        uvloop.run(amain())
    except ImportError:
        asyncio.run(amain())


if __name__ == "__main__":
    main()
