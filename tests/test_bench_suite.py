"""``bench/run.py``: the comparison driver, run for real on tiny counts (``--smoke``).

Checks that servers start pinned, the generator measures them, a server that cannot start is
reported as skipped with its reason, and the report (tables, plots) is made from the results.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from wse import _runtime

from .conftest import ROOT

pytestmark = pytest.mark.skipif(not hasattr(_runtime, "loadgen"), reason="engine built without the loadgen feature")


def test_smoke_run_writes_results_and_report(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("websockets")
    doc = tmp_path / "BENCH.md"
    doc.write_text("# Bench\n\nIntro.\n\n## Older results\n\nkept\n")
    out = tmp_path / "results.json"
    loadgen = shlex.join([sys.executable, "-m", "wse_cli.main", "bench"])
    p = subprocess.run(
        [sys.executable, "bench/run.py", "quick", "--smoke", "--servers", "wse,websockets,reference",
         "--scenarios", "fanout,inbound,handshake", "--ref-python", "false", "--loadgen", loadgen,
         "--out", str(out), "--doc", str(doc)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(out.read_text())
    assert res["meta"]["smoke"] is True
    recs = {(r["scenario"], r["server"]): r for r in res["records"]}
    for scenario in ("fanout_20", "fanout_100", "inbound", "handshake"):
        for server in ("wse", "websockets"):
            r = recs[(scenario, server)]
            assert r["status"] == "ok", r
            clean = [s for s in r["samples"] if s["ok"]]
            assert len(clean) >= 3, r
            assert all(s["rate"] > 0 for s in clean)
        ref = recs[(scenario, "reference")]
        assert ref["status"] == "skipped" and ref["reason"].startswith("did not start"), ref
    fan = recs[("fanout_100", "wse")]["samples"]
    assert all(s["missing"] == 0 and s["duplicates"] == 0 for s in fan)

    text = doc.read_text()
    assert "<!-- bench:suite:begin -->" in text and "<!-- bench:suite:end -->" in text
    assert "## Older results\n\nkept" in text
    assert "SMOKE RUN" in text
    assert "| wse (this engine) |" in text and "| websockets + uvloop |" in text
    assert "| wse-server 2.5.1 | skipped: did not start" in text
    for img in ("bench-fanout.png", "bench-latency.png"):
        assert (tmp_path / "img" / img).stat().st_size > 1000

    # The report is made from the results file alone.
    doc.write_text("# Bench\n")
    p = subprocess.run([sys.executable, "bench/run.py", "report", str(out), "--doc", str(doc)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "| wse (this engine) |" in doc.read_text()
