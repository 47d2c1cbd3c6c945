"""Writes wse.json, the Grafana dashboard for WSE (a `wse run --workers N` cluster's supervisor,
or a single process's `/metrics`).

Run `python dashboards/build.py` after changing the panels; tests/test_dashboards.py checks that
every expression parses, names only metrics that are exported, and that every exported metric
has a panel. Every metric in an expression is filtered by the dashboard's `job` and `instance`
variables (one instance is one supervisor or one process)."""

from __future__ import annotations

import json
import re
from pathlib import Path

SELECTOR = 'job=~"$job",instance=~"$instance"'
_METRIC = re.compile(r"\b(wse_[a-z0-9_]+)\b(\{)?")


def scoped(expr: str) -> str:
    """``expr`` with the job/instance selector on each metric."""
    return _METRIC.sub(lambda m: m.group(1) + "{" + SELECTOR + ("," if m.group(2) else "}"), expr)


W = "{{worker}}"
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    # (title, unit, [(expr, legend)])
    ("Workers up", "none", [("wse_worker_up", f"worker {W}")]),
    ("Worker restarts (per hour)", "none", [("increase(wse_worker_restarts_total[1h])", f"worker {W}")]),
    ("CPU per worker", "percentunit", [("rate(wse_worker_cpu_seconds_total[1m])", f"worker {W}")]),
    ("Open connections", "none", [("wse_connections_active", f"worker {W}")]),
    ("Handshakes /s", "ops", [("rate(wse_handshakes_total[1m])", f"worker {W}")]),
    ("Token refreshes and expiry closes /s", "ops",
     [("sum by (worker, event) (rate(wse_token_events_total[5m]))", f"worker {W} {{{{event}}}}")]),
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
    ("Workers killed by the watchdog (per hour) and last restart time", "none",
     [("increase(wse_worker_hung_total[1h])", f"hung {W}"), ("wse_worker_last_restart_seconds", f"restart s {W}")]),
    ("Worker slots and mesh peers", "none",
     [("wse_workers", "slots"), ("wse_mesh_peers", f"peers of {W}")]),
    ("Mesh links opened (per hour: more than the restarts means a flapping link)", "none",
     [("increase(wse_mesh_links_opened_total[1h])", f"links of {W}")]),
    ("Connections accepted and refused /s", "ops",
     [("rate(wse_connections_accepted_total[1m])", f"accepted {W}"),
      ("sum by (worker, reason) (rate(wse_connections_rejected_total[5m]))", f"refused {W} {{{{reason}}}}")]),
    ("Frames and write syscalls /s", "ops",
     [("rate(wse_frames_out_total[1m])", f"frames {W}"), ("rate(wse_write_syscalls_total[1m])", f"writes {W}")]),
    ("Protocol errors and abnormal disconnects /s", "ops",
     [("sum by (worker, kind) (rate(wse_protocol_errors_total[5m]))", f"error {W} {{{{kind}}}}"),
      ("sum by (worker, kind) (rate(wse_disconnects_total[5m]))", f"disconnect {W} {{{{kind}}}}")]),
    ("Drain calls /s and backpressure waits /s", "ops",
     [("rate(wse_drain_calls_total[1m])", f"drains {W}"), ("rate(wse_backpressure_waits_total[1m])", f"waits {W}")]),
    ("Client messages refused /s by reason", "ops",
     [("sum by (worker, reason) (rate(wse_inbound_refused_total[5m]))", f"{W} {{{{reason}}}}"),
      ("rate(wse_subscriptions_denied_total[5m])", f"subscriptions denied {W}")]),
    ("permessage-deflate: compressions, compressed messages and new connections /s", "none",
     [("rate(wse_deflate_compressions_total[1m])", f"compressions {W}"),
      ("rate(wse_deflated_messages_total[1m])", f"messages {W}"), ("rate(wse_deflate_connections_total[5m])", f"connections/s {W}")]),
    ("Subscription updates refused whole; pattern topics checked and denied /s", "ops",
     [("rate(wse_subscription_updates_refused_total[5m])", f"updates refused {W}"),
      ("rate(wse_pattern_checks_total[5m])", f"pattern checks {W}"),
      ("rate(wse_pattern_denied_total[5m])", f"pattern denied {W}")]),
    ("Rate limits /s", "ops",
     [("rate(wse_rate_limit_warnings_total[5m])", f"warnings {W}"), ("rate(wse_rate_limit_closes_total[5m])", f"closes {W}")]),
    ("Encoded messages /s (zlib, msgpack, e2e)", "ops",
     [("sum by (worker, direction, format) (rate(wse_encoded_messages_total[1m]))", f"{W} {{{{direction}}}} {{{{format}}}}")]),
    ("E2E key exchanges, rotations, timeouts /s", "ops",
     [("rate(wse_e2e_key_exchanges_total[5m])", f"exchanges {W}"), ("rate(wse_e2e_key_rotations_total[5m])", f"rotations {W}"),
      ("rate(wse_e2e_key_exchange_timeouts_total[5m])", f"timeouts {W}")]),
    ("Recovery requests /s and replayed publications /s", "ops",
     [("rate(wse_recovery_asked_total[5m])", f"asked {W}"),
      ("sum by (worker, result) (rate(wse_recovery_requests_total[5m]))", f"{W} {{{{result}}}}"),
      ("rate(wse_recovered_messages_total[5m])", f"replayed {W}")]),
    ("Recovery buffers and ring snapshots received", "bytes",
     [("wse_recovery_bytes", f"buffers {W}"), ("increase(wse_mesh_snapshot_bytes_total[1h])", f"snapshots (1h) {W}")]),
    ("Presence changes and refusals /s", "ops",
     [("rate(wse_presence_events_total[1m])", f"changes {W}"), ("rate(wse_presence_refused_total[5m])", f"refused {W}")]),
    ("Presence: topics and users; dedup keys held", "none",
     [("wse_presence_topics", f"topics {W}"), ("wse_presence_users", f"users {W}"),
      ("sum by (worker, kind) (wse_dedup_keys)", f"dedup keys {W} {{{{kind}}}}")]),
    ("Idempotent publishes dropped /s and open circuit breakers", "none",
     [("rate(wse_dedup_publish_dropped_total[5m])", f"dropped/s {W}"), ("wse_circuit_breakers_open", f"breakers open {W}")]),
    ("Publish queue mean (s)", "s",
     [("rate(wse_publish_queue_seconds_sum[5m]) / rate(wse_publish_queue_seconds_count[5m])", f"mean {W}"),
      ("rate(wse_drain_batch_size_sum[5m]) / rate(wse_drain_batch_size_count[5m])", f"drain batch mean {W}"),
      ("rate(wse_mesh_transit_seconds_sum[5m]) / rate(wse_mesh_transit_seconds_count[5m])", f"mesh transit mean {W}")]),
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
    ("Redis: patterns subscribed, buffer bound, own echoes dropped /s", "none",
     [("wse_redis_pattern_subscriptions", f"patterns {W}"), ("wse_redis_buffer_limit", f"buffer bound {W}"),
      ("rate(wse_redis_own_total[5m])", f"own/s {W}")]),
    ("Redis: errors, malformed messages, positions read and failed /s", "ops",
     [("rate(wse_redis_errors_total[5m])", f"errors {W}"), ("rate(wse_redis_malformed_total[5m])", f"malformed {W}"),
      ("rate(wse_redis_positions_total[5m])", f"positions {W}"),
      ("rate(wse_redis_position_failures_total[5m])", f"position failures {W}")]),
    ("Redis: catch-ups after a reconnect and gaps they could not fill (per hour)", "none",
     [("increase(wse_redis_catch_ups_total[1h])", f"catch-ups {W}"),
      ("increase(wse_redis_catch_up_gaps_total[1h])", f"gaps {W}")]),
]


def _label_variable(name: str, label: str, query: str) -> dict[str, object]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "definition": query,
        "query": {"query": query, "refId": f"{name}-values"},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


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
                {"refId": chr(ord("A") + k), "expr": scoped(expr), "legendFormat": legend}
                for k, (expr, legend) in enumerate(targets)
            ],
        })
    return {
        "title": "WSE",
        "uid": "wse-cluster",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "10s",
        "tags": ["wse", "websocket"],
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            _label_variable("job", "Job", "label_values(wse_worker_up, job)"),
            _label_variable("instance", "Instance", 'label_values(wse_worker_up{job=~"$job"}, instance)'),
        ]},
        "panels": panels,
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("wse.json")
    out.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {out}")
