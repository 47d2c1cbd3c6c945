"""A real ``wse run --workers N`` cluster in a subprocess, and clients that know their worker."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection

from tests.conftest import ROOT, envelope, subscribe_msg
from tests.wsutil import open_ready, recv_type

TOKEN = "cluster-test-token"


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: tests/run_all.sh installs it (Debian package 'prometheus')"
    return path


class Cluster:
    """``wse run tests.apps.cluster_app:app --workers N`` with metrics on a free port."""

    def __init__(self, workers: int = 2, *extra: str, target: str = "tests.apps.cluster_app:app",
                 env_extra: dict[str, str] | None = None) -> None:
        env = dict(os.environ, **(env_extra or {}))
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wse_cli.main", "run", target, "--workers", str(workers),
             "--metrics-bind", "127.0.0.1:0", "--publish-token", TOKEN, "--log-level", "warning",
             "--drain-timeout", "5", *extra],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("wse: serving "):
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"cluster did not start: {line!r} {self.errors()}")
        words = line.split()
        self.url = words[2]
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])
        self.metrics_url = words[-1]
        self.base = self.metrics_url.rsplit("/", 1)[0]
        self.workers = workers

    def errors(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()

    def worker_pids(self) -> list[int]:
        """The supervisor's child processes now."""
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                return [int(p) for p in f.read().split()]
        except FileNotFoundError:
            return []

    def scrape(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            return r.read().decode()

    def metric(self, name: str, **labels: str) -> dict[str, float]:
        """Samples of ``name`` matching ``labels``, by worker."""
        from wse.metrics import parse

        out: dict[str, float] = {}
        for n, lab, v in parse(self.scrape()):
            if n == name and all(lab.get(k) == x for k, x in labels.items()):
                w = lab.get("worker", "")
                out[w] = out.get(w, 0.0) + v
        return out

    def wait_metric(self, name: str, pred: Any, timeout: float = 10.0, **labels: str) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.metric(name, **labels)
            if pred(got):
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} never satisfied the condition: {got}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            assert self.proc.stdout is not None
            self.proc.stdout.close()
            self.stderr.close()


async def whoami(ws: ClientConnection) -> int:
    await ws.send(envelope("whoami"))
    return int((await recv_type(ws, "whoami"))["p"]["slot"])


async def pid_of(ws: ClientConnection) -> int:
    """The pid of the worker process serving ``ws``."""
    await ws.send(envelope("whoami"))
    return int((await recv_type(ws, "whoami"))["p"]["pid"])


async def clients_on_every_worker(url: str, workers: int, per_worker: int = 2, limit: int = 200) -> dict[int, list[ClientConnection]]:
    """Opens connections until each worker has ``per_worker`` of them (SO_REUSEPORT spreads them)."""
    by: dict[int, list[ClientConnection]] = {w: [] for w in range(workers)}
    extra: list[ClientConnection] = []
    for _ in range(limit):
        if all(len(v) >= per_worker for v in by.values()):
            break
        ws, _ = await open_ready(url)
        slot = await whoami(ws)
        (by[slot] if len(by[slot]) < per_worker else extra).append(ws)
    for ws in extra:
        await ws.close()
    assert all(len(v) >= per_worker for v in by.values()), {k: len(v) for k, v in by.items()}
    return by


async def subscribe(ws: ClientConnection, topic: str) -> None:
    await ws.send(subscribe_msg([topic]))
    ack = await recv_type(ws, "subscription_update")
    assert ack["p"]["success_topics"] == [topic], ack


async def until_all_hear(publisher: ClientConnection, listeners: list[ClientConnection], topic: str) -> None:
    """Publishes probes until every listener got one: the mesh has carried every worker's interest."""
    got = [False] * len(listeners)
    for i in range(200):
        await publisher.send(envelope("pub", {"topic": topic, "data": {"probe": i}}))
        await asyncio.sleep(0.05)
        for k, ws in enumerate(listeners):
            while True:
                try:
                    m = orjson.loads(await asyncio.wait_for(ws.recv(), 0.001))
                except TimeoutError:
                    break
                if m.get("t") == "pubbed" and "probe" in m["p"]:
                    got[k] = True
        if all(got):
            return
    raise AssertionError(f"probes never reached every listener: {got}")
