"""The supervisor of ``wse run --workers N``.

It never starts the engine itself: it binds one SO_REUSEPORT listening socket per worker slot,
starts a worker process per slot (a fresh interpreter, pinned to its own CPU, dying with the
supervisor), restarts a worker that dies on the same CPU with backoff, drains on SIGTERM,
restarts workers one at a time on SIGHUP, and serves ``/metrics`` and ``/publish`` over HTTP.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from .. import httpserver as http
from .control import control_path, request
from ..metrics import CONTENT_TYPE, WorkerSample, render
from .osutil import cpu_seconds, reuseport_listener, steer_by_cpu, usable_cpus

log = logging.getLogger("wse.cluster")

READY_TIMEOUT = 15.0
# A worker that ran this long before dying is restarted at once; quicker deaths back off.
STABLE_SECS = 5.0
MAX_BACKOFF = 5.0
MESH_LINK_WAIT = 2.0


@dataclass
class Slot:
    index: int
    cpu: int | None
    sock: socket.socket
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = 0.0
    restart_at: float | None = None
    ready: bool = False
    retired: list[subprocess.Popen[bytes]] = field(default_factory=list)
    died_at: float | None = None
    """When the slot's last worker died (cleared once its successor serves)."""
    last_restart_s: float | None = None
    """Seconds from that death until the successor served."""
    last_alive: float = 0.0
    hung: int = 0
    """Workers killed by the watchdog for not answering (hung, or stopped by SIGSTOP)."""


@dataclass
class ClusterConfig:
    target: str
    workers: int | None  # None: one per CPU in the affinity mask
    host: str
    port: int
    path: str = "/wse"
    backlog: int = 1024
    pin: bool = True
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 9108
    publish_token: str | None = None
    drain_timeout: float = 10.0
    log_level: str = "info"
    steer_cpu: bool = False
    """Steer each connection to the worker on the CPU that received it (classic BPF on the
    SO_REUSEPORT group) instead of the kernel's hash."""
    watchdog_timeout: float = 30.0
    """A worker that answers none of the supervisor's pings for this long (a handler that never
    returns to the event loop, a SIGSTOP) is killed and restarted; 0 turns the watchdog off."""
    env: dict[str, str] = field(default_factory=dict)
    redis_url: str | None = None
    """Overrides the app's ``redis_url``: this cluster is one host of several over Redis."""


class Supervisor:
    def __init__(self, cfg: ClusterConfig) -> None:
        self.cfg = cfg
        cpus = usable_cpus()
        n = cfg.workers or len(cpus)
        if n < 1:
            raise ValueError("workers must be at least 1")
        # systemd's RuntimeDirectory=, else the user's runtime dir, else the temp dir.
        base = os.environ.get("RUNTIME_DIRECTORY") or os.environ.get("XDG_RUNTIME_DIR") or None
        self.run_dir = tempfile.mkdtemp(prefix="wse-cluster-", dir=base)
        self.slots: list[Slot] = []
        port = cfg.port
        for i in range(n):
            s = reuseport_listener(cfg.host, port, cfg.backlog)
            port = s.getsockname()[1]  # port 0: the first slot picks, the others join it
            self.slots.append(Slot(i, cpus[i % len(cpus)] if cfg.pin else None, s))
        self.port = port
        if cfg.steer_cpu:
            # The CPU-to-slot mapping is index = cpu mod n: exact when the CPUs are 0..n-1.
            if [s.cpu for s in self.slots] != list(range(n)):
                log.warning("--steer-cpu: workers are not on CPUs 0..%d; steering maps CPU mod %d", n - 1, n)
            steer_by_cpu(self.slots[0].sock, n)
        self.metrics_address: tuple[str, int] | None = None
        # One id for this host's workers: each drops what its own host sent through Redis.
        self.host_id = f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(4)}"
        self._stopping = False
        self._reloading: asyncio.Task[None] | None = None
        self._done: asyncio.Event | None = None

    # ---- workers --------------------------------------------------------------------------------

    def _spawn(self, slot: Slot) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            **self.cfg.env,
            "WSE_TARGET": self.cfg.target,
            "WSE_WORKER_SLOT": str(slot.index),
            "WSE_WORKERS": str(len(self.slots)),
            "WSE_LISTEN_FD": str(slot.sock.fileno()),
            "WSE_RUN_DIR": self.run_dir,
            "WSE_SUPERVISOR_PID": str(os.getpid()),
            "WSE_LOG_LEVEL": self.cfg.log_level,
            "WSE_DRAIN_TIMEOUT": str(self.cfg.drain_timeout),
            "WSE_CPU": "" if slot.cpu is None else str(slot.cpu),
            "WSE_HOST_ID": self.host_id,
        }
        if self.cfg.redis_url:
            env["WSE_REDIS_URL"] = self.cfg.redis_url
        # NOTE: -P keeps the working directory off the front of sys.path while `wse` itself is
        # imported: run from a checkout, `-m` would otherwise import the checkout's wse/ (which
        # has no compiled extension after a plain `pip install .`) instead of the installed one.
        # load_app puts the directory back for the application's own modules.
        proc = subprocess.Popen([sys.executable, "-P", "-m", "wse.cluster.worker"], env=env,
                                pass_fds=(slot.sock.fileno(),), cwd=os.getcwd())
        log.debug("slot %d: worker pid %d on cpu %s", slot.index, proc.pid, slot.cpu)
        return proc

    async def _wait_ready(self, slot: Slot, proc: subprocess.Popen[bytes]) -> bool:
        """Waits until the worker serves and has linked to the peers that were ready before it
        (bounded: a peer that never links does not hold the worker back past MESH_LINK_WAIT)."""
        path = control_path(self.run_dir, slot.index, proc.pid)
        peers = {s.index for s in self.slots if s is not slot and s.ready}
        deadline = time.monotonic() + READY_TIMEOUT
        serving_since = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                a = await request(path, {"op": "ping"}, 0.5)
                if a.get("ready"):
                    serving_since = serving_since or time.monotonic()
                    if peers <= set(a.get("mesh_slots", [])) or time.monotonic() - serving_since > MESH_LINK_WAIT:
                        return True
            except (OSError, asyncio.TimeoutError, ConnectionError):
                pass
            await asyncio.sleep(0.02)
        return False

    async def _start(self, slot: Slot) -> bool:
        proc = self._spawn(slot)
        slot.proc, slot.started, slot.ready = proc, time.monotonic(), False
        ok = await self._wait_ready(slot, proc)
        if slot.proc is proc:  # not superseded by a reload meanwhile
            slot.ready = ok
            slot.last_alive = time.monotonic()
            if ok and slot.died_at is not None:
                slot.last_restart_s = time.monotonic() - slot.died_at
                slot.died_at = None
                log.info("slot %d: worker %d serves again, %.3fs after its predecessor died",
                         slot.index, proc.pid, slot.last_restart_s)
        return ok

    def _forget(self, slot: Slot, proc: subprocess.Popen[bytes]) -> None:
        """Removes a dead worker's sockets (a killed worker cannot)."""
        for name in (f"mesh-{slot.index}-{proc.pid}.sock", f"ctl-{slot.index}-{proc.pid}.sock"):
            try:
                os.unlink(os.path.join(self.run_dir, name))
            except FileNotFoundError:
                pass

    async def _watch(self) -> None:
        """Restarts workers that die, on their CPU, with backoff for ones that keep dying."""
        while not self._stopping:
            now = time.monotonic()
            for slot in self.slots:
                for old in list(slot.retired):
                    if old.poll() is not None:
                        slot.retired.remove(old)
                        self._forget(slot, old)
                proc = slot.proc
                if proc is not None and proc.poll() is not None:
                    self._forget(slot, proc)
                    slot.restarts += 1
                    quick = now - slot.started < STABLE_SECS
                    slot.backoff = min(MAX_BACKOFF, max(0.1, slot.backoff * 2)) if quick else 0.0
                    log.warning("slot %d: worker %d exited (%s); restarting in %.1fs",
                                slot.index, proc.pid, proc.returncode, slot.backoff)
                    slot.proc, slot.ready, slot.restart_at = None, False, now + slot.backoff
                    slot.died_at = slot.died_at or now
                if slot.proc is None and slot.restart_at is not None and now >= slot.restart_at:
                    slot.restart_at = None
                    asyncio.ensure_future(self._start(slot))
            await asyncio.sleep(0.05)

    async def _watchdog(self) -> None:
        """Kills a worker that stops answering its control socket for ``watchdog_timeout``.

        The control socket is served by the worker's asyncio loop, so a worker whose loop is
        blocked (a synchronous handler that never returns) or that is stopped (SIGSTOP, a frozen
        cgroup) goes silent. Its clients are stalled and its mesh peers hold what they sent it;
        killing it turns that into a death the rest of the cluster already handles: its clients
        reconnect elsewhere (and recover), peers drop its link, and ``_watch`` restarts it."""
        timeout = self.cfg.watchdog_timeout
        every = min(1.0, max(0.05, timeout / 10))

        async def check(slot: Slot) -> None:
            proc = slot.proc
            if proc is None or not slot.ready or proc.poll() is not None:
                return
            try:
                await request(control_path(self.run_dir, slot.index, proc.pid), {"op": "ping"}, every)
                slot.last_alive = time.monotonic()
            except (OSError, asyncio.TimeoutError, ConnectionError):
                silent = time.monotonic() - slot.last_alive
                if silent >= timeout and slot.proc is proc:
                    slot.hung += 1
                    log.error("slot %d: worker %d answered nothing for %.1fs (hung or stopped); killing it",
                              slot.index, proc.pid, silent)
                    proc.kill()

        while not self._stopping:
            await asyncio.gather(*(check(s) for s in self.slots))
            await asyncio.sleep(every)

    async def _stop_proc(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        # The worker itself stops waiting for its clients after drain_timeout; this is the backstop.
        deadline = time.monotonic() + self.cfg.drain_timeout + 2.0
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    async def reload(self) -> None:
        """Replaces workers one at a time: the new one serves before the old one drains."""
        for slot in self.slots:
            if self._stopping:
                return
            new = self._spawn(slot)
            if not await self._wait_ready(slot, new):
                log.error("slot %d: new worker did not start; keeping the old one", slot.index)
                await self._stop_proc(new)
                self._forget(slot, new)
                continue
            # Whatever serves the slot now (possibly a restart that ran meanwhile) is retired.
            old = slot.proc
            slot.proc, slot.started, slot.ready, slot.restart_at = new, time.monotonic(), True, None
            if old is not None:
                slot.retired.append(old)
                await self._stop_proc(old)
        log.info("reload done")

    def _on_hup(self) -> None:
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.ensure_future(self.reload())

    # ---- HTTP -----------------------------------------------------------------------------------

    async def samples(self) -> list[WorkerSample]:
        async def one(slot: Slot) -> WorkerSample:
            s = WorkerSample(slot.index, up=False, restarts=slot.restarts, hung=slot.hung,
                             last_restart_s=slot.last_restart_s)
            proc = slot.proc
            if proc is None or not slot.ready:
                return s
            try:
                a = await request(control_path(self.run_dir, slot.index, proc.pid), {"op": "stats"})
            except (OSError, asyncio.TimeoutError, ConnectionError):
                return s
            if "stats" in a:
                s.up, s.stats, s.mesh, s.redis = True, a["stats"], a.get("mesh"), a.get("redis")
                s.cpu_seconds = cpu_seconds(proc.pid)
            return s

        return list(await asyncio.gather(*(one(s) for s in self.slots)))

    async def _http(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        if path == "/metrics" and method == "GET":
            text = render(await self.samples())
            return 200, CONTENT_TYPE, text.encode()
        if path == "/publish":
            return await self._publish(method, headers, body)
        if path == "/healthz":
            up = sum(1 for s in self.slots if s.ready)
            return (200 if up else 503), "text/plain", f"{up}/{len(self.slots)} workers ready\n".encode()
        return 404, "text/plain", b"not found\n"

    async def _publish(self, method: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        if method != "POST":
            return 405, "text/plain", b"POST only\n"
        token = self.cfg.publish_token
        if not token:
            return 403, "text/plain", b"publishing over HTTP is off (no publish token configured)\n"
        given = headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            return 401, "text/plain", b"bad or missing bearer token\n"
        try:
            req: dict[str, Any] = orjson.loads(body)
            if not isinstance(req, dict) or not isinstance(req.get("topic"), str) or not req["topic"]:
                raise ValueError
        except (orjson.JSONDecodeError, ValueError):
            return 400, "text/plain", b'expected {"topic": "...", "payload": ..., "type": "..."}\n'
        fwd = {"op": "publish", "topic": req["topic"], "payload": req.get("payload"),
               "type": req.get("type", "message"), "category": req.get("category", "U")}
        # One topic's publications go through one worker (the first ready from the topic's
        # hash), so their order holds; different topics spread over the workers.
        first = zlib.crc32(req["topic"].encode()) % len(self.slots)
        order = self.slots[first:] + self.slots[:first]
        for slot in order:
            proc = slot.proc
            if proc is None or not slot.ready:
                continue
            try:
                a = await request(control_path(self.run_dir, slot.index, proc.pid), fwd)
            except (OSError, asyncio.TimeoutError, ConnectionError):
                continue
            if a.get("ok"):
                return 200, "application/json", orjson.dumps({"ok": True, "worker": slot.index})
            return 400, "application/json", orjson.dumps(a)
        return 503, "text/plain", b"no worker ready\n"

    # ---- running --------------------------------------------------------------------------------

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._done.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        ok = await asyncio.gather(*(self._start(s) for s in self.slots))
        if not all(ok):
            log.error("some workers did not start")
        watch = asyncio.ensure_future(self._watch())
        dog = asyncio.ensure_future(self._watchdog()) if self.cfg.watchdog_timeout > 0 else None
        web = None
        if self.cfg.metrics_port is not None:
            web = await http.serve(self.cfg.metrics_host, self.cfg.metrics_port, self._http)
            self.metrics_address = web.sockets[0].getsockname()[:2]
        host = self.cfg.host
        extra = f", metrics on http://{self.metrics_address[0]}:{self.metrics_address[1]}/metrics" if self.metrics_address else ""
        print(f"wse: serving ws://{host}:{self.port}{self.cfg.path} with {len(self.slots)} workers{extra}", flush=True)
        try:
            await self._done.wait()
        finally:
            self._stopping = True
            watch.cancel()
            if dog is not None:
                dog.cancel()
            if self._reloading is not None:
                self._reloading.cancel()
            procs = [p for s in self.slots for p in ([s.proc] if s.proc else []) + s.retired]
            await asyncio.gather(*(self._stop_proc(p) for p in procs))
            if web is not None:
                web.close()
            for s in self.slots:
                s.sock.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def run(self) -> None:
        """Serves until SIGTERM or SIGINT, then drains every worker and returns."""
        try:
            import uvloop

            uvloop.run(self.main())
        except ImportError:
            asyncio.run(self.main())
