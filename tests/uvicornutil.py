"""A FastAPI application served by uvicorn in a subprocess on a free port, for router-mode tests."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import orjson

from tests.conftest import ROOT, terminate


class UvicornProc:
    """``uvicorn TARGET --port 0``; ``url`` is its WebSocket endpoint, ``http`` its HTTP root."""

    def __init__(self, target: str, config: dict[str, Any] | None = None, env: dict[str, str] | None = None, path: str = "/wse") -> None:
        full_env = dict(os.environ)
        full_env["WSE_TEST_CONFIG"] = orjson.dumps(config or {}).decode()
        full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env.update(env or {})
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", "0", "--log-level", "info"],
            cwd=ROOT, env=full_env, stdout=self.log, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + 20
        while True:
            text = self.output()
            marker = "Uvicorn running on http://127.0.0.1:"
            if marker in text:
                self.port = int(text.split(marker, 1)[1].split()[0])
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"uvicorn did not start: {text}")
            time.sleep(0.05)
        self.http = f"http://127.0.0.1:{self.port}"
        self.url = f"ws://127.0.0.1:{self.port}{path}"

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> int:
        """SIGTERM (uvicorn's graceful shutdown); returns the exit code."""
        return terminate(self.proc)

    def close(self) -> None:
        self.stop()
        self.log.close()
