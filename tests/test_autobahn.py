"""Autobahn|Testsuite cases 1-13 (via kosoku) against a plain echo app on our engine, with
permessage-deflate on (sections 12 and 13)."""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, ServerProc


# Sections 12-13 are 216 cases, most of them 1000 compressed messages of up to 128 KiB echoed:
# about 7 minutes with -p 2 on a loaded 2-core machine (the server used a fifth of that in CPU;
# kosoku's side is the bottleneck), so more than the suite's default 300 s timeout.
@pytest.mark.timeout(1500)
def test_autobahn_cases_1_to_13(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    srv: ServerProc = make_server(target="tests.apps.echo:app")
    kosoku = shutil.which("kosoku")
    assert kosoku, "kosoku is not installed (pip install kosoku)"
    t0 = time.monotonic()
    out = subprocess.run(
        [kosoku, "-m", "fuzzingclient", "-p", "2", "-o", str(tmp_path), f"127.0.0.1:{srv.port}"],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
    )
    took = time.monotonic() - t0
    index = json.loads((tmp_path / "index.json").read_text())
    results = {case: r for agent in index.values() for case, r in agent.items()}
    behaviours = collections.Counter(r["behavior"] for r in results.values())
    bad = sorted(c for c, r in results.items() if r["behavior"] in ("FAILED", "UNIMPLEMENTED"))
    print(f"autobahn: {len(results)} cases {dict(behaviours)} in {took:.0f} s")
    assert out.returncode == 0 and not bad, f"failed cases: {bad}\n{out.stdout[-2000:]}"
    # Every case family of 1-13 ran (the suite has no sections 8 and 11).
    families = {c.split(".")[0] for c in results}
    assert families == {"1", "2", "3", "4", "5", "6", "7", "9", "10", "12", "13"}, families
    assert len(results) > 500
