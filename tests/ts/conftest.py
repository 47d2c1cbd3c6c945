"""Fixtures for the TypeScript client's suites: the npm packages (`npm ci`), the bundles the
browser and Node run (esbuild), Debian's Chromium, our server and a web server for the pages."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from examples.ts_demo.web import WebServer
from tests.client.conftest import ref_server  # noqa: F401 - the fixture, for the reference tests
from tests.conftest import ROOT, SECRET

TS = ROOT / "clients" / "ts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def node_ready() -> str | None:
    """Why the TS suites cannot run here, or None."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node and npm are not installed"
    if not (TS / "node_modules" / ".package-lock.json").exists():
        return "clients/ts has no node_modules: run `npm ci` there (tests/run_all.sh does)"
    return None


@pytest.fixture(scope="session")
def ts_bundles() -> pathlib.Path:
    """Builds the e2e and demo bundles once per session."""
    why = node_ready()
    if why:
        pytest.skip(why)
    subprocess.run(["node", "scripts/build-e2e.mjs"], cwd=TS, check=True, timeout=120)
    return TS


def run_node(args: list[str], timeout: float = 300) -> list[dict[str, Any]]:
    """Runs a node script in clients/ts; returns the JSON lines it printed."""
    proc = subprocess.run(["node", *args], cwd=TS, capture_output=True, text=True, timeout=timeout)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, f"node {args[0]} exited {proc.returncode}: {proc.stderr[-4000:]}"
    return results


@pytest.fixture
def web() -> Iterator[Any]:
    """``web(engine_url, roots)`` starts a page server (tokens signed with the tests' SECRET)."""
    started: list[WebServer] = []

    def start(engine_url: str, roots: dict[str, pathlib.Path] | None = None) -> WebServer:
        w = WebServer(roots or {"/e2e/": TS / "e2e"}, SECRET, engine_url)
        started.append(w)
        return w

    yield start
    for w in started:
        w.close()
