"""Two minutes of the soak (`bench/run.py soak`, bench/suite/soak.py): mixed load with nothing lost, flat RSS, no descriptor leak.

The 20-minute run is a benchmark (`python bench/run.py soak`, figures in docs/SECURITY.md); this
is the same program, shorter, so a leak or a loss that shows in two minutes fails the tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(600)
def test_two_minutes_of_mixed_load_lose_nothing_and_leak_nothing(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    r = subprocess.run(
        [sys.executable, "bench/run.py", "soak", "--duration", "120", "--sample-s", "3", "--out", str(out), "--plot", str(tmp_path / "soak.png")],
        cwd=ROOT, capture_output=True, text=True, timeout=540,
    )
    assert out.exists(), r.stdout + r.stderr
    res = json.loads(out.read_text())
    failed = [name for name, ok in res["checks"].items() if not ok]
    assert failed == [], {k: v for k, v in res.items() if k != "samples"}
    assert r.returncode == 0, r.stderr
    # The load really ran: every kind of client did its part.
    assert res["steady_subscribers"] == 12 and res["deliveries_checked"] >= 12 * res["publications"] * 0.9
    assert res["publications"] > 1000 and res["churn_cycles"] > 100 and res["topic_subscriptions_churned"] > 1000
    assert res["inbound_counted"] == res["inbound_sent"] > 10_000
    assert len(res["samples"]) >= 20
    assert (tmp_path / "soak.png").stat().st_size > 0
