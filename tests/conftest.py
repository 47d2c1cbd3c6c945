"""Fixtures: a WSE server in a subprocess on a free port, and helpers to talk to it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt as pyjwt
import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret-0123456789abcdef-0123456789"


def terminate(proc: subprocess.Popen[Any], timeout: float = 20) -> int:
    """SIGTERM (a graceful stop), then SIGKILL if it has not exited within ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class ServerProc:
    """A running ``wse run`` subprocess."""

    def __init__(self, target: str, config: dict[str, Any], env: dict[str, str] | None = None, args: list[str] | None = None) -> None:
        full_env = dict(os.environ)
        full_env["WSE_TEST_CONFIG"] = orjson.dumps(config).decode()
        full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env.update(env or {})
        import tempfile

        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wse_cli.main", "run", target, "--log-level", "warning", *(args or [])],
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("wse: serving "):
            self.proc.kill()
            self.proc.wait()
            errors = self.errors()
            self.proc.stdout.close()
            self.stderr.close()
            raise RuntimeError(f"server did not start: {line!r} {errors}")
        self.url = line.split()[-1]
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])
        self.path = "/" + self.url.split("/", 3)[3]

    def errors(self) -> str:
        """What the server wrote on stderr so far."""
        self.stderr.seek(0)
        return self.stderr.read()

    def stop(self) -> int:
        terminate(self.proc, 15)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    @property
    def pid(self) -> int:
        return self.proc.pid


@pytest.fixture
def make_server() -> Iterator[Any]:
    """``make_server(config={...}, target=..., env={...}, args=[...])`` starts a server (``args``: more
    ``wse run`` options), stopped after the test."""
    started: list[ServerProc] = []

    def start(
        config: dict[str, Any] | None = None, target: str = "tests.apps.testapp:app", env: dict[str, str] | None = None, args: list[str] | None = None
    ) -> ServerProc:
        s = ServerProc(target, config or {}, env, args)
        started.append(s)
        return s

    yield start
    for s in started:
        code = s.stop()
        errors = s.errors()
        s.stderr.close()
        assert code == 0, f"server exited with {code}: {errors}"


@pytest.fixture
def server(make_server: Any) -> ServerProc:
    """A server on default settings (no JWT)."""
    return make_server()


@pytest.fixture
def redis() -> Iterator[Any]:
    """A real ``redis-server`` on a free loopback port (tests/redis_util.py), stopped after."""
    from tests.redis_util import RedisServer

    r = RedisServer()
    try:
        yield r
    finally:
        r.stop()


def make_token(claims: dict[str, Any] | None = None, *, secret: str = SECRET, exp_in: int = 300, **header: Any) -> str:
    """An HS256 token made by PyJWT (an independent implementation)."""
    body: dict[str, Any] = {"sub": "user-1", "exp": int(time.time()) + exp_in}
    body.update(claims or {})
    return pyjwt.encode(body, secret, algorithm="HS256", headers=header or None)


def envelope(t: str, p: Any = None, c: str | None = None) -> bytes:
    e: dict[str, Any] = {"t": t, "p": p if p is not None else {}}
    if c:
        e["c"] = c
    return orjson.dumps(e)


def subscribe_msg(topics: list[str], action: str = "subscribe") -> bytes:
    return envelope("subscription_update", {"action": action, "topics": topics}, c="WSE")
