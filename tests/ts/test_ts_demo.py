"""The React demo (clients/ts/demo, served by examples/ts_demo/app.py) in headless Chromium: it
renders live ticker updates and the presence list, with a Python client present beside it.
The screenshot is checked through the page's content (and is a real PNG); with
``WSE_UPDATE_SCREENSHOT=1`` it is written to docs/img/ts-react-demo.png."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from examples.ts_demo.web import sign_token
from tests.conftest import ROOT
from tests.ts.conftest import CHROMIUM, run_node
from wse_client import connect

SECRET = "demo-secret-for-the-test-0123456789abcdef"


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed (apt-get install chromium)")
def test_react_demo_renders_live_updates_and_presence(ts_bundles: Any, tmp_path: Path) -> None:
    env = dict(os.environ, WSE_DEMO_SECRET=SECRET, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "examples.ts_demo.app", "--port", "0", "--http-port", "0"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("demo: serving "), line
        page = line.split()[2]
        engine = line.split()[-1].rstrip(")")
        # Another user in the lobby: our Python client, present while the page renders.
        joined = threading.Event()
        leave = threading.Event()

        def bob() -> None:
            async def main() -> None:
                async with connect(engine, token=sign_token(SECRET, "bob")) as c:
                    await c.subscribe("lobby")
                    joined.set()
                    while not leave.is_set():
                        await asyncio.sleep(0.05)

            asyncio.run(main())

        t = threading.Thread(target=bob, daemon=True)
        t.start()
        assert joined.wait(30), "the Python client did not join the lobby"
        shot = tmp_path / "demo.png"
        out = run_node(["e2e/run-browser.mjs", "--demo", f"{page}?user=alice", "--screenshot", str(shot)], timeout=120)
        leave.set()
        t.join(10)
        assert len(out) == 1 and out[0]["ok"], out
        r = out[0]["result"]
        assert r["state"] == "open"
        assert sorted(r["members"]) == ["alice", "bob"]
        assert r["ticks"] >= 5 and r["ticker"] != r["before"]
        assert any(sym in r["ticker"] for sym in ("EURUSD", "GBPUSD", "USDJPY", "BTCUSD", "XAUUSD"))
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        if os.environ.get("WSE_UPDATE_SCREENSHOT") == "1":
            (ROOT / "docs" / "img" / "ts-react-demo.png").write_bytes(data)
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
