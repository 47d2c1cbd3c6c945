"""The React hooks (clients/ts/src/react.tsx) under React 19 and React 18, against our engine.

React 19 is clients/ts's own; React 18 is clients/ts/test-react18, a project of its own whose
react, react-dom and @testing-library/react are all 18 (see its vitest.config.ts). vitest renders
the components in jsdom; the client inside speaks to the engine started here over a real socket
(the `ws` package). The React 18 run is the whole hook suite: the state-machine tests with a
fake socket (test/react.test.tsx), the engine test, and a check that every React there is 18.
"""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any

import pytest

from examples.ts_demo.web import sign_token
from tests.client.conftest import OurServer
from tests.conftest import SECRET
from tests.ts.conftest import TS, node_ready

CONFIG: dict[str, Any] = {"jwt": {"secret": SECRET, "query_param": True}, "presence": True}


@pytest.fixture(scope="module")
def engine() -> Any:
    why = node_ready()
    if why:
        pytest.skip(why)
    srv = OurServer(CONFIG)
    yield srv
    srv.stop()


def vitest(engine: OurServer, react: str, *args: str) -> tuple[int, str]:
    """Runs vitest in clients/ts with the engine's URL and tokens; (tests passed, output)."""
    env = {
        **os.environ,
        "WSE_TEST_URL": engine.url,
        "WSE_TEST_TOKEN_A": sign_token(SECRET, "react-a"),
        "WSE_TEST_TOKEN_B": sign_token(SECRET, "react-b"),
        "WSE_EXPECT_REACT": react,
        # Plain text: with CI=true vitest colours its summary, which the counts below read.
        "NO_COLOR": "1",
    }
    env.pop("FORCE_COLOR", None)
    proc = subprocess.run(["npx", "vitest", "run", "--reporter=verbose", *args], cwd=TS, env=env,
                          capture_output=True, text=True, timeout=300)
    out = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
    assert proc.returncode == 0, out[-6000:]
    assert f"React {react}." in out and "skipped" not in out, out[-3000:]
    m = re.search(r"Tests\s+(\d+) passed", out)
    assert m, out[-3000:]
    return int(m.group(1)), out


def test_react19_hooks_against_our_engine(engine: OurServer) -> None:
    passed, _ = vitest(engine, "19", "test/react-engine.test.tsx")
    assert passed == 2


def test_react18_hooks(engine: OurServer) -> None:
    if not (TS / "test-react18" / "node_modules" / ".package-lock.json").exists():
        pytest.skip("clients/ts/test-react18 has no node_modules: run `npm ci` there (tests/run_all.sh does)")
    passed, out = vitest(engine, "18", "--config", "test-react18/vitest.config.ts")
    assert "test-react18/versions.test.ts" in out and "test/react.test.tsx" in out, out[-3000:]
    assert passed >= 6  # versions 1, react.test.tsx 3, react-engine.test.tsx 2
