"""Fixtures for the client suites: our server on a fixed port (so it can be restarted on the same
address), the published reference server in its chroot, and helpers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect as ws_connect

from tests.conftest import ROOT, SECRET, ServerProc, make_token
from tests.test_reference_client import reference_script

__all__ = ["SECRET", "make_token"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OurServer:
    """``tests.client.app`` on one port across restarts."""

    def __init__(self, config: dict[str, Any], env: dict[str, str] | None = None) -> None:
        self.env = env
        self.port = free_port()
        self.config = {**config, "port": self.port}
        self.url = f"ws://127.0.0.1:{self.port}/wse"
        self.proc: ServerProc | None = None
        self.start()

    def start(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                self.proc = ServerProc("tests.client.app:app", self.config, self.env)
                return
            except RuntimeError:
                if time.monotonic() > deadline:  # the port is still held by the previous process
                    raise
                time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: a crash, no close frames."""
        assert self.proc is not None
        self.proc.proc.send_signal(signal.SIGKILL)
        self.proc.proc.wait(10)
        self._release()

    def stop(self) -> int:
        assert self.proc is not None
        code = self.proc.stop()
        errors = self.proc.errors()
        self._release()
        assert code == 0, f"server exited with {code}: {errors}"
        return code

    def _release(self) -> None:
        assert self.proc is not None
        if self.proc.proc.stdout is not None:
            self.proc.proc.stdout.close()
        self.proc.stderr.close()
        self.proc = None


@pytest.fixture
def our_server() -> Iterator[Any]:
    """``our_server(config)`` starts ``tests.client.app``; stopped (and checked) after the test."""
    started: list[OurServer] = []

    def start(config: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> OurServer:
        s = OurServer(config or {}, env)
        started.append(s)
        return s

    yield start
    for s in started:
        if s.proc is not None:
            s.stop()


def server_features(url: str) -> dict[str, Any]:
    """``server_ready.p.details.features`` of a server, read with a plain websockets client."""

    async def main() -> dict[str, Any]:
        async with ws_connect(url, additional_headers={"Authorization": f"Bearer {make_token()}"}) as ws:
            ready = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
            return dict(ready["p"]["details"]["features"])

    return asyncio.run(main())


def require_feature(srv: OurServer, name: str) -> None:
    """Skips the calling test until our server advertises ``name`` in ``server_ready``."""
    if not server_features(srv.url).get(name):
        pytest.skip(f"our server does not advertise features.{name} yet")


def wait_listening(port: int, proc: subprocess.Popen[str], timeout: float = 10.0) -> bool:
    """True once ``port`` accepts connections (the reference binds in the background after
    ``start()`` returns), False if ``proc`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


class RefServer:
    """The reference server (``tests/client/ref_server.py``) in its chroot."""

    def __init__(self, jwt_secret: str | None = None) -> None:
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/wse"
        self.jwt_secret = jwt_secret
        self.proc: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        cmd = ["bash", str(reference_script()), "python", "tests/client/ref_server.py", "--port", str(self.port)]
        if self.jwt_secret:
            cmd += ["--jwt-secret", self.jwt_secret]
        deadline = time.monotonic() + 30
        while True:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.startswith("ref: serving") and wait_listening(self.port, proc):
                self.proc = proc
                return
            proc.kill()
            err = proc.communicate()[1]
            if time.monotonic() > deadline:
                raise RuntimeError(f"reference server did not start: {line!r} {err[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        self.proc = None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.communicate()
        self.proc = None


@pytest.fixture
def ref_server() -> Iterator[Any]:
    """``ref_server(jwt_secret=None)`` starts the reference server; stopped after the test."""
    started: list[RefServer] = []

    def start(jwt_secret: str | None = None) -> RefServer:
        s = RefServer(jwt_secret)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def token(sub: str = "user-1") -> str:
    return make_token({"sub": sub})


JWT = {"jwt": {"secret": SECRET}}
