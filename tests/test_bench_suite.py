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

from .conftest import ROOT



def test_smoke_run_writes_results_and_report(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("websockets")
    doc = tmp_path / "BENCH.md"
    doc.write_text("# Bench\n\nIntro.\n\n## Older results\n\nkept\n")
    out = tmp_path / "results.json"
    loadgen = shlex.join([sys.executable, "-m", "wse_cli.main", "bench"])
    p = subprocess.run(
        [sys.executable, "bench/run.py", "quick", "--smoke", "--servers", "wse,websockets,reference,floor",
         "--scenarios", "fanout,fanout_same,fanout_deflate,inbound,handshake", "--ref-python", "false", "--loadgen", loadgen,
         "--out", str(out), "--doc", str(doc)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(out.read_text())
    assert res["meta"]["smoke"] is True
    recs = {(r["scenario"], r["server"]): r for r in res["records"]}
    scenarios = ("fanout_20", "fanout_100", "fanout_same_100", "inbound_pipelined", "inbound_seg_10", "handshake")
    for scenario in scenarios:
        for server in ("wse", "websockets"):
            r = recs[(scenario, server)]
            assert r["status"] == "ok", r
            cold = [s for s in r["samples"] if s.get("cold")]
            clean = [s for s in r["samples"] if s["ok"] and not s.get("cold") and not s.get("serial")]
            # One cold figure, apart; at least 3 clean measured samples, each with its CPU window.
            assert len(cold) == 1 and not cold[0]["counted"], r
            assert len(clean) >= 3, r
            assert all(s["rate"] > 0 and s["server_cpu_s"] > 0 and s["gen_share"] is not None for s in clean)
            assert all(not s["why"] for s in clean)
        ref = recs[(scenario, "reference")]
        assert ref["status"] == "skipped" and ref["reason"].startswith("did not start"), ref
    for scenario in ("fanout_20", "fanout_100", "fanout_same_100"):
        fl = recs[(scenario, "floor")]
        assert fl["status"] == "ok" and any(s["ok"] for s in fl["samples"]), fl
    # The floor writes wse's frame size; in the same-bytes variant every server does.
    wse_bytes = {s["frame_bytes"] for s in recs[("fanout_100", "wse")]["samples"]}
    same = recs[("fanout_same_100", "websockets")]["samples"]
    assert {s["frame_bytes"] for s in same} <= {round(sum(wse_bytes) / len(wse_bytes))} | wse_bytes
    assert recs[("fanout_100", "websockets")]["samples"][0]["frame_bytes"] < min(wse_bytes)
    assert ("inbound_pipelined", "floor") not in recs  # the floor does fan-out only
    # permessage-deflate: each server started with it on, every delivery inflated and checked.
    for server in ("wse", "websockets"):
        r = recs[("fanout_deflate_100", server)]
        clean = [s for s in r["samples"] if s["ok"] and not s.get("cold")]
        assert r["status"] == "ok" and len(clean) >= 3, r
        assert all(s["compressed"] == 1.0 and 0 < s["wire_bytes"] for s in clean), r
        assert r["raw"][0]["permessage_deflate"]["agreed"] == 100
    assert ("fanout_deflate_100", "floor") not in recs

    text = doc.read_text()
    assert "<!-- bench:suite:begin -->" in text and "<!-- bench:suite:end -->" in text
    assert "## Older results\n\nkept" in text
    assert "SMOKE RUN" in text
    assert "| wse (this engine) |" in text and "| websockets + uvloop |" in text
    assert "| wse-server 2.5.1 | skipped: did not start" in text
    assert "### Targets (issue 20)" in text and "share of the floor" in text
    assert "one message per segment" in text
    assert "### Fan-out with permessage-deflate: 100 subscribers" in text
    assert "| wse, permessage-deflate off |" in text
    for img in ("bench-fanout.png", "bench-latency.png"):
        assert (tmp_path / "img" / img).stat().st_size > 1000

    # The report is made from the results file alone.
    doc.write_text("# Bench\n")
    p = subprocess.run([sys.executable, "bench/run.py", "report", str(out), "--doc", str(doc)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "| wse (this engine) |" in doc.read_text()


def _sample(per_cpu: float, ok: bool = True, why: str = "", counted: bool | None = None, **kw: object) -> dict:
    return {"rate": per_cpu, "per_cpu": per_cpu, "gen_share": 0.3, "ok": ok, "why": why,
            "counted": ok if counted is None else counted, "note": "", **kw}


def _results(records: list[dict]) -> dict:
    shape = {"fanout_subs": [1000], "inbound_seg_conns": [100], "latency_rates": [2000.0], "idle_conns": [10000],
             "fanout_rounds": 3, "fanout_starts": 1, "min_cpu_s": 1.0, "stable_within": 0.05, "max_warmup": 6,
             "gen_max_share": 0.75, "topics_conns": 10000, "inbound_pipe_conns": 100,
             "inbound_paced_rate": 1e5, "latency_conns": 50, "latency_s": 2.0, "handshake_count": 2000,
             "cluster_subs": 1000}
    meta = {"mode": "quick", "smoke": False, "date": "d", "elapsed_s": 1.0, "machine": "m", "commit": "c",
            "loadgen": "l", "command": "python bench/run.py quick", "results_file": "r.json",
            "servers": ["wse", "reference", "websockets", "floor"], "scenarios": [], "shape": shape,
            "server_versions": {}, "skipped": {}, "flames": {}}
    return {"meta": meta, "records": records}


def _rec(scenario: str, server: str, samples: list[dict]) -> dict:
    return {"scenario": scenario, "server": server, "status": "ok", "reason": "", "samples": samples, "raw": []}


def test_report_targets_from_counted_medians_only() -> None:
    """Met or missed is computed from the counted samples: an unclean sample (9,996 of 10,000
    connections) or one taken while the generator saturated never moves a median."""
    sys.path.insert(0, str(ROOT / "bench"))
    from suite import report

    res = _results([
        _rec("fanout_1000", "wse", [_sample(8e6), _sample(9e6), _sample(10e6),
                                    _sample(90e6, ok=False, why="only 9,996 of 10,000 connections opened"),
                                    _sample(80e6, counted=False, note="generator at 95% of its core")]),
        _rec("fanout_1000", "reference", [_sample(4e6), _sample(4.4e6), _sample(5e6)]),
        _rec("fanout_1000", "floor", [_sample(20e6), _sample(20e6), _sample(20e6)]),
        _rec("latency_2000", "wse", [_sample(1, p99_us=500, p99_9_us=900)] * 3),
        _rec("latency_2000", "websockets", [_sample(1, p99_us=400, p99_9_us=2000)] * 3),
        _rec("idle_10000", "wse", [_sample(0, rate=4900.0)] * 3),
    ])
    rows = "\n".join(report.targets(res))
    assert "| fan-out 1,000: >= 2x wse-server 2.5.1 | 9.00M / 4.40M = 2.05x | **met** |" in rows
    assert "| fan-out 1,000: >= 60% of the floor | 9.00M / 20.00M = 45% | **missed** |" in rows
    assert "p99 no worse than the best peer | wse 500 us, best peer websockets + uvloop 400 us | **missed**" in rows
    assert "p99.9 no worse than the best peer | wse 900 us, best peer websockets + uvloop 2.00 ms | **met**" in rows
    assert "| idle connection at 10,000: <= 1 KB of server RSS | 4,900 B | **missed** |" in rows
    assert "inbound, one message per segment, 100 clients: >= 2x the reference | - | not measured" in rows
    text = report.markdown(res)
    assert "| fanout_1000 | wse (this engine) | 4 | only 9,996 of 10,000 connections opened |" in text
    assert "3 of 5 (generator at 95% of its core; only 9,996 of 10,000 connections opened)" in text


def test_report_deflate_table_beside_plaintext() -> None:
    """The permessage-deflate table: wse with it, wse's plaintext of the same size from the run,
    the peers with it (wire bytes, share compressed, wse's ratio), and a skipped one with why."""
    sys.path.insert(0, str(ROOT / "bench"))
    from suite import report

    z = {"wire_bytes": 120, "compressed": 1.0}
    res = _results([
        _rec("fanout_1000", "wse", [_sample(12e6, wire_bytes=194, compressed=0.0)] * 3),
        _rec("fanout_deflate_1000", "wse", [_sample(8e6, **z)] * 3),
        _rec("fanout_deflate_1000", "websockets", [_sample(50e3, wire_bytes=9, compressed=1.0)] * 3),
        {**_rec("fanout_deflate_1000", "centrifugo", []), "status": "skipped", "reason": "not installed"},
    ])
    text = report.markdown(res)
    head = text.index("### Fan-out with permessage-deflate: 1000 subscribers")
    rows = [x for x in text[head:].split("\n\n")[2].splitlines()[2:]]
    assert rows[0].startswith("| wse (this engine) | 8.00M / 8.00M / 8.00M | 8.00M / **8.00M** / 8.00M | - |")
    assert "| 120 / 120 / 120 | 100% / 100% / 100% |" in rows[0]
    assert rows[1].startswith("| wse, permessage-deflate off |") and "| 0.67x |" in rows[1]
    assert "| 194 / 194 / 194 | 0% / 0% / 0% |" in rows[1]
    assert rows[2].startswith("| websockets + uvloop |") and "| 160.00x |" in rows[2]
    assert rows[3].startswith("| Centrifugo | skipped: not installed |")
