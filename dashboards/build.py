"""Writes wse.json, the Grafana dashboard for a `wse run --workers N` cluster.

Run `python dashboards/build.py` after changing the panels; tests/test_dashboards.py checks that
every expression parses and names only metrics the supervisor's /metrics exports."""

from __future__ import annotations

import json
from pathlib import Path

W = "{{worker}}"
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    # (title, unit, [(expr, legend)])
    ("Workers up", "none", [("wse_worker_up", f"worker {W}")]),
    ("Worker restarts (per hour)", "none", [("increase(wse_worker_restarts_total[1h])", f"worker {W}")]),
    ("CPU per worker", "percentunit", [("rate(wse_worker_cpu_seconds_total[1m])", f"worker {W}")]),
    ("Open connections", "none", [("wse_connections_active", f"worker {W}")]),
    ("Handshakes /s", "ops", [("rate(wse_handshakes_total[1m])", f"worker {W}")]),
    ("Handshake failures /s by reason", "ops",
     [("sum by (worker, reason) (rate(wse_handshake_failures_total[5m]))", f"worker {W} {{{{reason}}}}")]),
    ("Messages /s", "ops", [("sum by (worker, direction) (rate(wse_messages_total[1m]))", f"worker {W} {{{{direction}}}}")]),
    ("Bytes /s", "Bps", [("sum by (worker, direction) (rate(wse_bytes_total[1m]))", f"worker {W} {{{{direction}}}}")]),
    ("Publications and deliveries /s", "ops",
     [("rate(wse_publishes_total[1m])", f"publishes {W}"), ("rate(wse_deliveries_total[1m])", f"deliveries {W}")]),
    ("Mean drain batch (events per Python call)", "none",
     [("rate(wse_drain_events_total[1m]) / rate(wse_drain_calls_total[1m])", f"worker {W}")]),
    ("Drain batch size p50 / p99", "none",
     [("histogram_quantile(0.5, sum by (worker, le) (rate(wse_drain_batch_size_bucket[5m])))", f"p50 {W}"),
      ("histogram_quantile(0.99, sum by (worker, le) (rate(wse_drain_batch_size_bucket[5m])))", f"p99 {W}")]),
    ("Inbound queue depth", "none", [("wse_inbound_queue_depth", f"worker {W}")]),
    ("Backpressure (share of time readers waited)", "percentunit",
     [("rate(wse_backpressure_seconds_total[1m])", f"worker {W}")]),
    ("Slow consumers /s", "ops",
     [("rate(wse_slow_consumer_drops_total[5m])", f"drops {W}"), ("rate(wse_slow_consumer_closes_total[5m])", f"closes {W}")]),
    ("Mesh messages /s by peer", "ops",
     [("sum by (worker, peer, direction) (rate(wse_mesh_messages_total[1m]))", f"{W} {{{{direction}}}} peer {{{{peer}}}}")]),
    ("Mesh bytes /s by peer", "Bps",
     [("sum by (worker, peer, direction) (rate(wse_mesh_bytes_total[1m]))", f"{W} {{{{direction}}}} peer {{{{peer}}}}")]),
    ("Mesh transit p50 / p99", "s",
     [("histogram_quantile(0.5, sum by (worker, le) (rate(wse_mesh_transit_seconds_bucket[5m])))", f"p50 into {W}"),
      ("histogram_quantile(0.99, sum by (worker, le) (rate(wse_mesh_transit_seconds_bucket[5m])))", f"p99 into {W}")]),
    ("Publish to subscriber queues p50 / p99", "s",
     [("histogram_quantile(0.5, sum by (worker, le) (rate(wse_publish_queue_seconds_bucket[5m])))", f"p50 {W}"),
      ("histogram_quantile(0.99, sum by (worker, le) (rate(wse_publish_queue_seconds_bucket[5m])))", f"p99 {W}")]),
    ("Mesh drops /s", "ops", [("rate(wse_mesh_dropped_total[5m])", f"worker {W}")]),
    ("Cluster recovery: publications stamped, handed to owners, mirrored /s", "ops",
     [("rate(wse_mesh_stamped_total[1m])", f"stamped {W}"), ("rate(wse_mesh_handed_to_owner_total[1m])", f"handed {W}"),
      ("rate(wse_mesh_mirrored_total[1m])", f"mirrored {W}"), ("rate(wse_mesh_rehanded_total[5m])", f"re-handed {W}"),
      ("rate(wse_mesh_stamp_conflicts_total[5m])", f"conflicts {W}")]),
    ("Subscriptions and topics", "none",
     [("wse_subscriptions", f"subscriptions {W}"), ("wse_topics", f"topics {W}")]),
    # Several hosts over Redis (--redis): one row.
    ("Redis: link up, reconnects (per hour), topics subscribed", "none",
     [("wse_redis_up", f"up {W}"), ("increase(wse_redis_reconnects_total[1h])", f"reconnects {W}"),
      ("wse_redis_subscriptions", f"topics {W}")]),
    ("Redis: publications /s out and in", "ops",
     [("rate(wse_redis_published_total[1m])", f"out {W}"), ("rate(wse_redis_received_total[1m])", f"in {W}")]),
    ("Redis: bytes /s out and in", "Bps",
     [("rate(wse_redis_published_bytes_total[1m])", f"out {W}"), ("rate(wse_redis_received_bytes_total[1m])", f"in {W}")]),
    ("Redis: buffered while down, drops /s", "none",
     [("wse_redis_buffered", f"buffered {W}"), ("rate(wse_redis_dropped_total[5m])", f"drops/s {W}")]),
    ("Redis: lag from stamp to worker (mean, max)", "s",
     [("rate(wse_redis_lag_seconds_sum[5m]) / rate(wse_redis_lag_seconds_count[5m])", f"mean {W}"),
      ("wse_redis_lag_max_seconds", f"max {W}")]),
]


def dashboard() -> dict[str, object]:
    panels = []
    for i, (title, unit, targets) in enumerate(PANELS):
        panels.append({
            "id": i + 1,
            "type": "timeseries",
            "title": title,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [
                {"refId": chr(ord("A") + k), "expr": expr, "legendFormat": legend}
                for k, (expr, legend) in enumerate(targets)
            ],
        })
    return {
        "title": "WSE cluster",
        "uid": "wse-cluster",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "10s",
        "tags": ["wse", "websocket"],
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
        ]},
        "panels": panels,
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("wse.json")
    out.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {out}")
