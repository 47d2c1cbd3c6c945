"""Prometheus ``/metrics`` of the engine's counters, built with ``prometheus-client``.

One custom collector turns what the supervisor (or a single process) knows of each worker into
metric families at scrape time: the engine's counters are plain atomics in Rust, read once per
scrape, so nothing is counted twice and nothing costs anything between scrapes. Every sample
carries a ``worker`` label (the slot; ``0`` for a single process); a restarted worker starts its
counters again from zero, which Prometheus reads as a counter reset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

# (metric, type, help, [(stats key, extra labels, scale)])
_Spec = tuple[str, str, str, list[tuple[str, dict[str, str], float]]]

_HANDSHAKE_FAILURES = {
    "handshake_timeouts": "timeout",
    "handshake_bad_request": "bad_request",
    "handshake_bad_path": "bad_path",
    "handshake_bad_origin": "bad_origin",
    "auth_missing": "auth_missing",
    "auth_failed": "auth_failed",
    "auth_expired": "auth_expired",
    "tls_failures": "tls",
}

ENGINE_METRICS: list[_Spec] = [
    ("wse_connections_active", "gauge", "Open WebSocket connections.", [("connections_active", {}, 1)]),
    ("wse_connections_accepted_total", "counter", "TCP connections accepted.", [("connections_accepted", {}, 1)]),
    ("wse_connections_rejected_total", "counter", "Connections refused at accept, by reason.",
     [("connections_rejected_limit", {"reason": "max_connections"}, 1),
      ("connections_rejected_pending", {"reason": "max_pending_handshakes"}, 1),
      ("connections_rejected_pending_ip", {"reason": "max_pending_handshakes_per_ip"}, 1),
      ("connections_rejected_ip", {"reason": "max_connections_per_ip"}, 1),
      ("connections_rejected_user", {"reason": "max_connections_per_user"}, 1)]),
    ("wse_handshakes_total", "counter", "Successful WebSocket upgrades.", [("handshakes_ok", {}, 1)]),
    ("wse_handshake_failures_total", "counter", "Failed upgrades, by reason.",
     [(k, {"reason": v}, 1) for k, v in _HANDSHAKE_FAILURES.items()]),
    ("wse_token_events_total", "counter", "Tokens after the handshake: refreshes accepted and refused, connections closed on expiry.",
     [("token_refreshes", {"event": "refreshed"}, 1), ("token_refresh_failures", {"event": "refresh_refused"}, 1),
      ("token_expired_closes", {"event": "expired_close"}, 1)]),
    ("wse_messages_total", "counter", "WebSocket messages, by direction.",
     [("messages_in", {"direction": "in"}, 1), ("messages_out", {"direction": "out"}, 1)]),
    ("wse_bytes_total", "counter", "WebSocket payload bytes, by direction.",
     [("bytes_in", {"direction": "in"}, 1), ("bytes_out", {"direction": "out"}, 1)]),
    ("wse_frames_out_total", "counter", "Buffers written to sockets: a frame, or a run of frames shared by several subscribers.", [("frames_out", {}, 1)]),
    ("wse_write_syscalls_total", "counter", "Vectored socket writes.", [("write_syscalls", {}, 1)]),
    ("wse_publishes_total", "counter", "Publications made in this worker (local or from the mesh).",
     [("publishes", {}, 1)]),
    ("wse_deliveries_total", "counter", "Publications queued to subscribers.", [("deliveries", {}, 1)]),
    ("wse_slow_consumer_drops_total", "counter", "Frames dropped for slow consumers.",
     [("slow_consumer_drops", {}, 1)]),
    ("wse_slow_consumer_closes_total", "counter", "Connections closed for falling behind.",
     [("slow_consumer_closes", {}, 1)]),
    ("wse_protocol_errors_total", "counter", "Inbound protocol violations, by kind.",
     [("protocol_errors", {"kind": "protocol"}, 1), ("oversized_messages", {"kind": "oversized"}, 1),
      ("invalid_utf8", {"kind": "invalid_utf8"}, 1)]),
    ("wse_disconnects_total", "counter", "Connections ended other than by a close handshake, by kind.",
     [("abrupt_disconnects", {"kind": "abrupt"}, 1), ("idle_closes", {"kind": "idle"}, 1)]),
    ("wse_drain_calls_total", "counter", "Batches Python took from the inbound queue.", [("drain_calls", {}, 1)]),
    ("wse_drain_events_total", "counter", "Events Python took from the inbound queue.", [("drain_events", {}, 1)]),
    ("wse_inbound_queue_depth", "gauge", "Events waiting for Python.", [("inbound_queue_len", {}, 1)]),
    ("wse_backpressure_seconds_total", "counter", "Time readers waited for room in the inbound queue.",
     [("backpressure_ns", {}, 1e-9)]),
    ("wse_backpressure_waits_total", "counter", "Times a reader waited for room in the inbound queue.",
     [("backpressure_waits", {}, 1)]),
    ("wse_subscriptions", "gauge", "Connection-topic subscriptions.", [("subscriptions", {}, 1)]),
    ("wse_subscriptions_denied_total", "counter", "Subscriptions refused.", [("subscriptions_denied", {}, 1)]),
    ("wse_subscription_updates_refused_total", "counter",
     "subscription_update messages refused whole for naming too many topics.", [("subscriptions_refused_whole", {}, 1)]),
    ("wse_deflate_compressions_total", "counter",
     "permessage-deflate compressions: one per publication per window size, shared by its subscribers.",
     [("deflate_compressions", {}, 1)]),
    ("wse_deflated_messages_total", "counter", "Messages sent permessage-deflate compressed.", [("deflated_out", {}, 1)]),
    ("wse_deflate_connections_total", "counter", "Connections that negotiated permessage-deflate.", [("deflate_connections", {}, 1)]),
    ("wse_pattern_checks_total", "counter",
     "Topics a pattern subscriber met for the first time and had decided (ACLs and the subscription hook).",
     [("pattern_checks", {}, 1)]),
    ("wse_pattern_denied_total", "counter",
     "Of those, topics refused to the pattern subscriber (nothing of them is delivered to it).",
     [("pattern_denied", {}, 1)]),
    ("wse_topics", "gauge", "Topics with subscribers.", [("topics", {}, 1)]),
    ("wse_encoded_messages_total", "counter",
     "Messages in an encoding other than plain JSON, by direction and format.",
     [("compressed_out", {"direction": "out", "format": "zlib"}, 1),
      ("msgpack_out", {"direction": "out", "format": "msgpack"}, 1),
      ("sealed_out", {"direction": "out", "format": "e2e"}, 1),
      ("sealed_in", {"direction": "in", "format": "e2e"}, 1)]),
    ("wse_e2e_key_exchanges_total", "counter", "E2E key exchanges completed.", [("key_exchanges", {}, 1)]),
    ("wse_e2e_key_rotations_total", "counter", "E2E session keys rotated.", [("key_rotations", {}, 1)]),
    ("wse_inbound_refused_total", "counter", "Client messages refused with an error, by reason.",
     [("decrypt_failures", {"reason": "decrypt"}, 1), ("replays_refused", {"reason": "replay"}, 1),
      ("plaintext_refused", {"reason": "plaintext"}, 1), ("decompress_refused", {"reason": "decompress"}, 1),
      ("msgpack_errors", {"reason": "msgpack"}, 1), ("signature_failures", {"reason": "signature"}, 1),
      ("key_exchange_failures", {"reason": "key_exchange"}, 1), ("rate_limited", {"reason": "rate_limit"}, 1),
      ("dedup_inbound_dropped", {"reason": "duplicate"}, 1)]),
    ("wse_rate_limit_warnings_total", "counter", "rate_limit_warning messages sent to clients nearing their limit.",
     [("rate_limit_warnings", {}, 1)]),
    ("wse_e2e_key_exchange_timeouts_total", "counter",
     "Connections closed (4403) for not completing the key exchange in time (encryption required).",
     [("key_exchange_timeouts", {}, 1)]),
    ("wse_presence_refused_total", "counter", "Presence updates refused for data over presence_max_data_bytes.",
     [("presence_refused", {}, 1)]),
    ("wse_rate_limit_closes_total", "counter", "Connections closed for exceeding the rate limit.",
     [("rate_limit_closes", {}, 1)]),
    ("wse_recovery_asked_total", "counter", "Subscriptions that asked for recovery.",
     [("recovery_requests", {}, 1)]),
    ("wse_recovery_requests_total", "counter", "Subscriptions that asked for recovery, by result.",
     [("recovery_recovered", {"result": "recovered"}, 1), ("recovery_missed", {"result": "missed"}, 1)]),
    ("wse_recovered_messages_total", "counter", "Publications replayed to recovering subscribers.",
     [("recovered_messages", {}, 1)]),
    ("wse_recovery_bytes", "gauge", "Bytes held in recovery buffers.", [("recovery_bytes", {}, 1)]),
    ("wse_presence_events_total", "counter", "Presence changes (joins, leaves, updates).", [("presence_events", {}, 1)]),
    ("wse_dedup_publish_dropped_total", "counter", "Publications dropped as repeats of an idempotency key.",
     [("dedup_publish_dropped", {}, 1)]),
    ("wse_dedup_keys", "gauge", "Keys remembered for dedup: publish idempotency keys and client message ids.",
     [("dedup_publish_keys", {"kind": "publish"}, 1), ("dedup_inbound_keys", {"kind": "inbound"}, 1)]),
    ("wse_presence_topics", "gauge", "Topics with anyone present.", [("presence_topics", {}, 1)]),
    ("wse_presence_users", "gauge", "Users with presence in any topic.", [("presence_users", {}, 1)]),
    ("wse_circuit_breakers_open", "gauge", "Message types whose handler circuit breaker is open now.",
     [("breakers_open", {}, 1)]),
]


@dataclass
class WorkerSample:
    """What the exporter knows of one worker slot at scrape time."""

    slot: int
    up: bool
    restarts: int
    hung: int = 0
    last_restart_s: float | None = None
    cpu_seconds: float | None = None
    stats: dict[str, int] = field(default_factory=dict)
    mesh: dict[str, Any] | None = None
    redis: dict[str, Any] | None = None


Samples = Callable[[], list[WorkerSample]]
_Sample = tuple[dict[str, str], float]


def _family(name: str, kind: str, help_text: str, labels: list[str]) -> Metric:
    if kind == "counter":
        return CounterMetricFamily(name, help_text, labels=labels)
    return GaugeMetricFamily(name, help_text, labels=labels)


def _simple(name: str, kind: str, help_text: str, samples: Iterable[_Sample]) -> Metric | None:
    """A family whose samples all carry the same label names (None when it has no sample)."""
    samples = list(samples)
    if not samples:
        return None
    keys = list(samples[0][0])
    fam = _family(name, kind, help_text, keys)
    for labels, value in samples:
        fam.add_metric([labels[k] for k in keys], value)  # type: ignore[attr-defined]
    return fam


_Buckets = list[tuple[str, float]]


def _histogram(name: str, help_text: str, per_worker: Iterable[tuple[str, _Buckets, float]]) -> Metric | None:
    """Per worker: cumulative (le, count) buckets ending with +Inf, and the sum."""
    fam = HistogramMetricFamily(name, help_text, labels=["worker"])
    any_sample = False
    for worker, buckets, total in per_worker:
        fam.add_metric([worker], buckets, total)
        any_sample = True
    return fam if any_sample else None


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


class EngineCollector(Collector):
    """Metric families over ``samples()``, called once per scrape."""

    def __init__(self, samples: Samples, *, cluster: bool) -> None:
        self.samples = samples
        self.cluster = cluster

    def collect(self) -> Iterator[Metric]:
        workers = self.samples()
        w = [fam for fam in self._families(workers) if fam is not None]
        return iter(w)

    def _families(self, workers: list[WorkerSample]) -> Iterator[Metric | None]:
        if self.cluster:
            yield _simple("wse_workers", "gauge", "Worker slots configured.", [({}, len(workers))])
            yield _simple("wse_worker_restarts_total", "counter", "Workers restarted after dying, by slot.",
                          [({"worker": str(x.slot)}, x.restarts) for x in workers])
            yield _simple("wse_worker_hung_total", "counter",
                          "Workers the watchdog killed for answering nothing (hung or stopped), by slot.",
                          [({"worker": str(x.slot)}, x.hung) for x in workers])
            yield _simple("wse_worker_last_restart_seconds", "gauge",
                          "Seconds from the slot's last worker death until its successor served.",
                          [({"worker": str(x.slot)}, x.last_restart_s) for x in workers if x.last_restart_s is not None])
        yield _simple("wse_worker_up", "gauge", "1 when the slot's worker answers.",
                      [({"worker": str(x.slot)}, int(x.up)) for x in workers])
        yield _simple("wse_worker_cpu_seconds_total", "counter", "CPU time (user + system) of the slot's current worker.",
                      [({"worker": str(x.slot)}, x.cpu_seconds) for x in workers if x.cpu_seconds is not None])
        live = [x for x in workers if x.stats]
        yield _drain_batches(live)
        yield _publish_queue(live)
        for name, kind, help_text, keys in ENGINE_METRICS:
            samples = [({"worker": str(x.slot), **extra}, x.stats[key] * scale)
                       for x in live for key, extra, scale in keys if key in x.stats]
            yield _simple(name, kind, help_text, samples)
        yield from _mesh([x for x in live if x.mesh])
        yield from _redis([x for x in live if x.redis])


def exported_stats_keys() -> set[str]:
    """Every engine ``stats()`` key some family reads (tests check none is left out)."""
    keys = {k for _, _, _, specs in ENGINE_METRICS for k, _, _ in specs}
    # The queue's length as last stored by the engine: wse_inbound_queue_depth reads the exact
    # length at scrape time (inbound_queue_len) instead.
    keys.add("inbound_queue_depth")
    keys |= {f"drain_batch_le_{b}" for b in DRAIN_BATCH_BUCKETS} | {"drain_batch_gt_1024"}
    keys |= {f"publish_queue_le_{n}" for n, _ in PUBLISH_QUEUE_BUCKETS} | {"publish_queue_gt_100ms", "publish_queue_ns"}
    return keys


def registry(samples: Samples, *, cluster: bool) -> CollectorRegistry:
    """A registry holding only the engine's collector (no process or platform collectors: the
    supervisor's own figures are not the workers')."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(EngineCollector(samples, cluster=cluster))
    return reg


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render(workers: list[WorkerSample], *, cluster: bool = True) -> str:
    """The whole scrape, in Prometheus text format 0.0.4."""
    return generate_latest(registry(lambda: workers, cluster=cluster)).decode()


DRAIN_BATCH_BUCKETS = (1, 4, 16, 64, 256, 1024)


def _drain_batches(workers: list[WorkerSample]) -> Metric | None:
    per: list[tuple[str, _Buckets, float]] = []
    for x in workers:
        running, buckets = 0, _Buckets()
        for b in DRAIN_BATCH_BUCKETS:
            running += x.stats.get(f"drain_batch_le_{b}", 0)
            buckets.append((str(b), running))
        running += x.stats.get("drain_batch_gt_1024", 0)
        buckets.append(("+Inf", running))
        per.append((str(x.slot), buckets, float(x.stats.get("drain_events", 0))))
    return _histogram("wse_drain_batch_size", "Events per batch Python took from the inbound queue.", per)


PUBLISH_QUEUE_BUCKETS = (("50us", 50e-6), ("100us", 100e-6), ("250us", 250e-6), ("500us", 500e-6), ("1ms", 1e-3),
                         ("2500us", 2.5e-3), ("10ms", 10e-3), ("100ms", 100e-3))


def _publish_queue(workers: list[WorkerSample]) -> Metric | None:
    per: list[tuple[str, _Buckets, float]] = []
    for x in workers:
        running, buckets = 0, _Buckets()
        for name, bound in PUBLISH_QUEUE_BUCKETS:
            running += x.stats.get(f"publish_queue_le_{name}", 0)
            buckets.append((_num(bound), running))
        running += x.stats.get("publish_queue_gt_100ms", 0)
        buckets.append(("+Inf", running))
        per.append((str(x.slot), buckets, x.stats.get("publish_queue_ns", 0) / 1e9))
    return _histogram("wse_publish_queue_seconds",
                      "Time from publish() to the subscribers' outbound queues (oldest publication of each fan-out batch).", per)


_MESH_RECOVERY = [
    ("stamped_for_peers", "wse_mesh_stamped_total",
     "Publications this worker stamped as their topic's owner and sent to every peer (recovery on)."),
    ("handed_to_owner", "wse_mesh_handed_to_owner_total",
     "Publications made here and handed to their topic's owner on another worker to be stamped."),
    ("rehanded", "wse_mesh_rehanded_total",
     "Hand-offs an owner died before stamping, handed again to the topic's next owner."),
    ("mirrored", "wse_mesh_mirrored_total", "Publications a peer stamped, taken into this worker's rings."),
    ("snapshot_bytes_in", "wse_mesh_snapshot_bytes_total",
     "Bytes of recovery rings received from peers as links opened."),
    ("conflicts", "wse_mesh_stamp_conflicts_total",
     "Publications a peer stamped under another epoch while this worker owned the topic (ignored)."),
]


def _mesh(workers: list[WorkerSample]) -> Iterator[Metric | None]:
    meshes = [(str(x.slot), x.mesh) for x in workers if x.mesh]
    yield _simple("wse_mesh_peers", "gauge", "Peers this worker is linked to on the mesh.",
                  [({"worker": w}, len(m["peers"])) for w, m in meshes])
    yield _simple("wse_mesh_links_opened_total", "counter",
                  "Mesh links this worker opened (a link that keeps reopening is flapping).",
                  [({"worker": w}, m["links_opened"]) for w, m in meshes if "links_opened" in m])
    msgs: list[_Sample] = []
    byts: list[_Sample] = []
    for w, m in meshes:
        for p in m["per_peer"]:
            for d in ("in", "out"):
                labels = {"worker": w, "peer": str(p["slot"]), "direction": d}
                msgs.append((labels, p[f"messages_{d}"]))
                byts.append((labels, p[f"bytes_{d}"]))
    yield _simple("wse_mesh_messages_total", "counter", "Publications crossing the mesh, by peer and direction.", msgs)
    yield _simple("wse_mesh_bytes_total", "counter", "Bytes of publications crossing the mesh, by peer and direction.", byts)
    yield _simple("wse_mesh_dropped_total", "counter", "Publications not sent to a peer that was too far behind.",
                  [({"worker": w}, m["dropped"]) for w, m in meshes])
    rec = [(w, m["recovery"]) for w, m in meshes if m.get("recovery")]
    for key, name, help_text in _MESH_RECOVERY:
        yield _simple(name, "counter", help_text, [({"worker": w}, r[key]) for w, r in rec])
    per: list[tuple[str, _Buckets, float]] = []
    for w, m in meshes:
        running, buckets = 0, _Buckets()
        for bound, n in zip(m["transit_buckets_ns"] + [None], m["transit_counts"]):
            running += n
            buckets.append(("+Inf" if bound is None else _num(bound / 1e9), running))
        per.append((w, buckets, m["transit_sum_ns"] / 1e9))
    yield _histogram("wse_mesh_transit_seconds",
                     "Time from publish() on one worker to its publish queue on another (then wse_publish_queue_seconds applies).",
                     per)


def parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Reads a text-format scrape back into (sample name, labels, value)."""
    return [(s.name, dict(s.labels), s.value)
            for fam in text_string_to_metric_families(text) for s in fam.samples]


def family_names() -> set[str]:
    """Every metric name this exporter can write: counters with ``_total``, histograms by their
    base name (``_bucket``, ``_sum`` and ``_count`` follow from it)."""
    names = {"wse_workers", "wse_worker_up", "wse_worker_restarts_total", "wse_worker_hung_total",
             "wse_worker_last_restart_seconds", "wse_worker_cpu_seconds_total",
             "wse_drain_batch_size", "wse_publish_queue_seconds", "wse_mesh_transit_seconds", "wse_mesh_peers",
             "wse_mesh_links_opened_total", "wse_mesh_messages_total", "wse_mesh_bytes_total", "wse_mesh_dropped_total"}
    names |= {name for name, _, _, _ in ENGINE_METRICS}
    names |= {name for _, name, _ in _MESH_RECOVERY}
    names |= {name for _, name, _, _ in REDIS_METRICS} | {"wse_redis_lag_seconds", "wse_redis_lag_max_seconds"}
    return names


# The Redis bridge's counters (key in the worker's bridge stats, family, kind, help).
REDIS_METRICS = (
    ("up", "wse_redis_up", "gauge", "1 while the worker's link to Redis is up (its breaker closed)."),
    ("subscriptions", "wse_redis_subscriptions", "gauge", "Topics the worker subscribes to on Redis (sharded)."),
    ("pattern_subscriptions", "wse_redis_pattern_subscriptions", "gauge", "Patterns the worker subscribes to on Redis."),
    ("buffered", "wse_redis_buffered", "gauge", "Publications waiting for Redis (bounded by redis_buffer)."),
    ("buffer_limit", "wse_redis_buffer_limit", "gauge", "The bound of that buffer."),
    ("published", "wse_redis_published_total", "counter", "Publications sent to Redis."),
    ("published_bytes", "wse_redis_published_bytes_total", "counter", "Bytes of publications sent to Redis."),
    ("received", "wse_redis_received_total", "counter", "Publications received from Redis."),
    ("received_bytes", "wse_redis_received_bytes_total", "counter", "Bytes of publications received from Redis."),
    ("own", "wse_redis_own_total", "counter", "Received publications this host had delivered already (dropped)."),
    ("dropped", "wse_redis_dropped_total", "counter", "Publications not sent to Redis (buffer full or refused)."),
    ("reconnects", "wse_redis_reconnects_total", "counter", "Times the link to Redis was dialled again after a failure."),
    ("errors", "wse_redis_errors_total", "counter", "Failed dials and commands."),
    ("positions", "wse_redis_positions_total", "counter", "Subscriptions that read a topic's position and history from Redis."),
    ("position_failures", "wse_redis_position_failures_total", "counter",
     "Of those, how many Redis could not answer in time (recovered from the worker's ring only)."),
    ("catch_ups", "wse_redis_catch_ups_total", "counter",
     "Topics read again from their Redis streams after a reconnect (recovery on)."),
    ("catch_up_gaps", "wse_redis_catch_up_gaps_total", "counter",
     "Of those, how many the stream no longer covered (subscribers see a gap or a new epoch)."),
    ("malformed", "wse_redis_malformed_total", "counter", "Messages from Redis that did not parse (dropped)."),
)


def _redis(workers: list[WorkerSample]) -> Iterator[Metric | None]:
    bridges = [(str(x.slot), x.redis) for x in workers if x.redis]
    for key, name, kind, help_text in REDIS_METRICS:
        yield _simple(name, kind, help_text, [({"worker": w}, int(r[key])) for w, r in bridges if r.get(key) is not None])
    if bridges:
        lag = SummaryMetricFamily("wse_redis_lag_seconds",
                                  "Time from Redis stamping a publication to this worker taking it (recovery on).",
                                  labels=["worker"])
        for w, r in bridges:
            lag.add_metric([w], count_value=r["lag_count"], sum_value=r["lag_ms_sum"] / 1000)
        yield lag
    yield _simple("wse_redis_lag_max_seconds", "gauge", "The longest such time seen.",
                  [({"worker": w}, r["lag_ms_max"] / 1000) for w, r in bridges])
