"""The Grafana dashboard and the alert rules: every expression parses (`promtool check rules`)
and names only metrics that a running cluster's /metrics really exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.cluster_util import Cluster, clients_on_every_worker, promtool, subscribe, until_all_hear
from tests.conftest import ROOT
from tests.redis_util import RedisServer

DASH = ROOT / "dashboards"
METRIC = re.compile(r"\bwse_[a-z0-9_]+\b")


def dashboard_exprs() -> list[str]:
    d = json.loads((DASH / "wse.json").read_text())
    return [t["expr"] for p in d["panels"] for t in p["targets"]]


def alert_exprs() -> list[str]:
    import yaml

    rules = yaml.safe_load((DASH / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_alert_rules_and_scrape_config_pass_promtool() -> None:
    r = subprocess.run([promtool(), "check", "rules", str(DASH / "alerts.yml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([promtool(), "check", "config", str(DASH / "prometheus.yml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    # Each panel query becomes a recording rule, so promtool parses it as PromQL.
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, e in enumerate(exprs):
        lines += [f"      - record: wse:panel_{i}", f"        expr: {json.dumps(e)}"]
    f = tmp_path / "panels.yml"
    f.write_text("\n".join(lines) + "\n")
    r = subprocess.run([promtool(), "check", "rules", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # And a broken expression is caught the same way (the check can fail).
    f.write_text("groups:\n  - name: x\n    rules:\n      - record: wse:bad\n        expr: rate(wse_messages_total[1m]\n")
    assert subprocess.run([promtool(), "check", "rules", str(f)], capture_output=True).returncode != 0


def test_every_metric_named_is_exported() -> None:
    # With Redis, so the bridge's families are there too.
    redis = RedisServer()
    c = Cluster(2, "--redis", redis.url)
    try:
        import asyncio

        async def traffic() -> None:
            by = await clients_on_every_worker(c.url, 2, per_worker=1)
            for ws in by[1]:
                await subscribe(ws, "t")
            await until_all_hear(by[0][0], by[1], "t")
            for conns in by.values():
                for ws in conns:
                    await ws.close()

        asyncio.run(traffic())
        exported = {line.split("{")[0].split(" ")[0] for line in c.scrape().splitlines() if line and not line.startswith("#")}
    finally:
        c.stop()
        redis.stop()
    named = {m for e in dashboard_exprs() + alert_exprs() for m in METRIC.findall(e)}
    assert named, "no metric names found"
    missing = sorted(named - exported)
    assert missing == [], f"expressions name metrics the engine does not export: {missing}"


@pytest.mark.parametrize("path", ["wse.json"])
def test_dashboard_is_what_build_py_writes(path: str) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("dash_build", DASH / "build.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert json.loads((DASH / path).read_text()) == mod.dashboard()
