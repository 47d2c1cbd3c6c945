"""The Grafana dashboard and the alert rules: every expression parses (`promtool check rules`),
names only metrics that a running cluster's /metrics really exports, and every metric the
exporter can write has a panel; the dashboard filters by job and instance; an alert fires for a
supervisor (or single process) that stopped answering."""

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
    # Written only once its event happened (a worker restarted), which this cluster has not had.
    after_an_event = {"wse_worker_last_restart_seconds"}
    missing = sorted(named - exported - after_an_event)
    assert missing == [], f"expressions name metrics the engine does not export: {missing}"


def test_every_exported_metric_has_a_panel_filtered_by_job_and_instance() -> None:
    from wse.metrics import family_names

    exprs = dashboard_exprs()
    in_dashboard = {m for e in exprs for m in METRIC.findall(e)}
    # A histogram's panels name its _bucket, _sum or _count series.
    covered = {m.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for m in in_dashboard} | in_dashboard
    missing = sorted(family_names() - covered)
    assert missing == [], f"exported metrics without a panel: {missing}"
    for e in exprs:
        for m in re.finditer(r"\bwse_[a-z0-9_]+\b(\{[^}]*\})?", e):
            assert m.group(1) and 'job=~"$job"' in m.group(1) and 'instance=~"$instance"' in m.group(1), e
    d = json.loads((DASH / "wse.json").read_text())
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert {"job", "instance"} <= set(variables)
    assert "$job" in variables["instance"]["definition"]


def test_an_alert_fires_when_the_supervisor_is_down(tmp_path: Path) -> None:
    """``promtool test rules``: a target that stops answering fires WSESupervisorDown after a
    minute; no target at all fires WSEMetricsAbsent; a healthy target fires neither."""
    down = "WSE /metrics at h:9108 has not answered for a minute (supervisor or process down)"
    absent = "Prometheus has no WSE target at all (job wse): nothing is scraped"
    spec = {
        "rule_files": [str(DASH / "alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {"interval": "1m",
             "input_series": [{"series": 'up{job="wse",instance="h:9108"}', "values": "1 1 0 0 0"}],
             "alert_rule_test": [
                 {"eval_time": "1m", "alertname": "WSESupervisorDown", "exp_alerts": []},
                 {"eval_time": "4m", "alertname": "WSESupervisorDown", "exp_alerts": [
                     {"exp_labels": {"severity": "critical", "job": "wse", "instance": "h:9108"},
                      "exp_annotations": {"summary": down}}]},
                 {"eval_time": "4m", "alertname": "WSEMetricsAbsent", "exp_alerts": []}]},
            {"interval": "1m",
             "input_series": [{"series": 'up{job="other",instance="x"}', "values": "1 1 1 1 1 1 1"}],
             "alert_rule_test": [
                 {"eval_time": "6m", "alertname": "WSEMetricsAbsent", "exp_alerts": [
                     {"exp_labels": {"severity": "critical", "job": "wse"}, "exp_annotations": {"summary": absent}}]}]},
        ],
    }
    f = tmp_path / "alerts_test.yml"
    f.write_text(json.dumps(spec))  # JSON is YAML
    r = subprocess.run([promtool(), "test", "rules", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("path", ["wse.json"])
def test_dashboard_is_what_build_py_writes(path: str) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("dash_build", DASH / "build.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert json.loads((DASH / path).read_text()) == mod.dashboard()
