"""Prometheus text exposition of every worker's counters, rendered by the supervisor.

Each worker's engine counters carry a ``worker`` label (the slot); a restarted worker starts
its counters again from zero, which Prometheus reads as a counter reset.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

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
    ("wse_inbound_queue_depth", "gauge", "Data events waiting for Python.", [("inbound_queue_depth", {}, 1)]),
    ("wse_backpressure_seconds_total", "counter", "Time readers waited for room in the inbound queue.",
     [("backpressure_ns", {}, 1e-9)]),
    ("wse_backpressure_waits_total", "counter", "Times a reader waited for room in the inbound queue.",
     [("backpressure_waits", {}, 1)]),
    ("wse_subscriptions", "gauge", "Connection-topic subscriptions.", [("subscriptions", {}, 1)]),
    ("wse_subscriptions_denied_total", "counter", "Subscriptions refused.", [("subscriptions_denied", {}, 1)]),
    ("wse_subscription_updates_refused_total", "counter",
     "subscription_update messages refused whole for naming too many topics.", [("subscriptions_refused_whole", {}, 1)]),
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
    ("wse_rate_limit_closes_total", "counter", "Connections closed for exceeding the rate limit.",
     [("rate_limit_closes", {}, 1)]),
    ("wse_recovery_requests_total", "counter", "Subscriptions that asked for recovery, by result.",
     [("recovery_recovered", {"result": "recovered"}, 1), ("recovery_missed", {"result": "missed"}, 1)]),
    ("wse_recovered_messages_total", "counter", "Publications replayed to recovering subscribers.",
     [("recovered_messages", {}, 1)]),
    ("wse_recovery_bytes", "gauge", "Bytes held in recovery buffers.", [("recovery_bytes", {}, 1)]),
    ("wse_presence_events_total", "counter", "Presence changes (joins, leaves, updates).", [("presence_events", {}, 1)]),
    ("wse_dedup_publish_dropped_total", "counter", "Publications dropped as repeats of an idempotency key.",
     [("dedup_publish_dropped", {}, 1)]),
    ("wse_circuit_breakers_open", "gauge", "Message types whose handler circuit breaker is open now.",
     [("breakers_open", {}, 1)]),
]


@dataclass
class WorkerSample:
    """What the supervisor knows of one slot at scrape time."""

    slot: int
    up: bool
    restarts: int
    hung: int = 0
    last_restart_s: float | None = None
    cpu_seconds: float | None = None
    stats: dict[str, int] = field(default_factory=dict)
    mesh: dict[str, Any] | None = None


def _labels(d: dict[str, str]) -> str:
    if not d:
        return ""
    inner = ",".join(f'{k}="{v}"' for k, v in d.items())
    return "{" + inner + "}"


def _num(v: float) -> str:
    if isinstance(v, int) or float(v).is_integer():
        return str(int(v))
    return repr(float(v))


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[tuple[str, dict[str, str], float]]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for suffix, labels, value in samples:
            self.lines.append(f"{name}{suffix}{_labels(labels)} {_num(value)}")


def render(workers: list[WorkerSample]) -> str:
    """The whole scrape, in Prometheus text format 0.0.4."""
    out = _Out()
    out.family("wse_workers", "gauge", "Worker slots configured.", [("", {}, len(workers))])
    out.family("wse_worker_up", "gauge", "1 when the slot's worker answers.",
               [("", {"worker": str(w.slot)}, int(w.up)) for w in workers])
    out.family("wse_worker_restarts_total", "counter", "Workers restarted after dying, by slot.",
               [("", {"worker": str(w.slot)}, w.restarts) for w in workers])
    out.family("wse_worker_hung_total", "counter",
               "Workers the watchdog killed for answering nothing (hung or stopped), by slot.",
               [("", {"worker": str(w.slot)}, w.hung) for w in workers])
    out.family("wse_worker_last_restart_seconds", "gauge",
               "Seconds from the slot's last worker death until its successor served.",
               [("", {"worker": str(w.slot)}, w.last_restart_s) for w in workers if w.last_restart_s is not None])
    out.family("wse_worker_cpu_seconds_total", "counter", "CPU time (user + system) of the slot's current worker.",
               [("", {"worker": str(w.slot)}, w.cpu_seconds) for w in workers if w.cpu_seconds is not None])
    live = [w for w in workers if w.stats]
    _drain_batches(out, live)
    _publish_queue(out, live)
    for name, kind, help_text, keys in ENGINE_METRICS:
        samples = []
        for w in live:
            for key, extra, scale in keys:
                if key in w.stats:
                    samples.append(("", {"worker": str(w.slot), **extra}, w.stats[key] * scale))
        out.family(name, kind, help_text, samples)
    _mesh(out, [w for w in live if w.mesh])
    return "\n".join(out.lines) + "\n"


DRAIN_BATCH_BUCKETS = (1, 4, 16, 64, 256, 1024)


def _drain_batches(out: _Out, workers: list[WorkerSample]) -> None:
    hist: list[tuple[str, dict[str, str], float]] = []
    for w in workers:
        lab = {"worker": str(w.slot)}
        running = 0
        for b in DRAIN_BATCH_BUCKETS:
            running += w.stats.get(f"drain_batch_le_{b}", 0)
            hist.append(("_bucket", {**lab, "le": str(b)}, running))
        running += w.stats.get("drain_batch_gt_1024", 0)
        hist.append(("_bucket", {**lab, "le": "+Inf"}, running))
        hist.append(("_sum", lab, w.stats.get("drain_events", 0)))
        hist.append(("_count", lab, running))
    out.family("wse_drain_batch_size", "histogram", "Events per batch Python took from the inbound queue.", hist)


PUBLISH_QUEUE_BUCKETS = (("50us", 50e-6), ("100us", 100e-6), ("250us", 250e-6), ("500us", 500e-6), ("1ms", 1e-3),
                         ("2500us", 2.5e-3), ("10ms", 10e-3), ("100ms", 100e-3))


def _publish_queue(out: _Out, workers: list[WorkerSample]) -> None:
    hist: list[tuple[str, dict[str, str], float]] = []
    for w in workers:
        lab = {"worker": str(w.slot)}
        running = 0
        for name, bound in PUBLISH_QUEUE_BUCKETS:
            running += w.stats.get(f"publish_queue_le_{name}", 0)
            hist.append(("_bucket", {**lab, "le": _num(bound)}, running))
        running += w.stats.get("publish_queue_gt_100ms", 0)
        hist.append(("_bucket", {**lab, "le": "+Inf"}, running))
        hist.append(("_sum", lab, w.stats.get("publish_queue_ns", 0) / 1e9))
        hist.append(("_count", lab, running))
    out.family("wse_publish_queue_seconds", "histogram",
               "Time from publish() to the subscribers' outbound queues (oldest publication of each fan-out batch).", hist)


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


def _mesh(out: _Out, workers: list[WorkerSample]) -> None:
    out.family("wse_mesh_peers", "gauge", "Peers this worker is linked to on the mesh.",
               [("", {"worker": str(w.slot)}, len(w.mesh["peers"])) for w in workers if w.mesh])
    out.family("wse_mesh_links_opened_total", "counter",
               "Mesh links this worker opened (a link that keeps reopening is flapping).",
               [("", {"worker": str(w.slot)}, w.mesh["links_opened"]) for w in workers if w.mesh])
    msgs, byts = [], []
    for w in workers:
        assert w.mesh is not None
        for p in w.mesh["per_peer"]:
            for d in ("in", "out"):
                labels = {"worker": str(w.slot), "peer": str(p["slot"]), "direction": d}
                msgs.append(("", labels, p[f"messages_{d}"]))
                byts.append(("", labels, p[f"bytes_{d}"]))
    out.family("wse_mesh_messages_total", "counter", "Publications crossing the mesh, by peer and direction.", msgs)
    out.family("wse_mesh_bytes_total", "counter", "Bytes of publications crossing the mesh, by peer and direction.", byts)
    out.family("wse_mesh_dropped_total", "counter", "Publications not sent to a peer that was too far behind.",
               [("", {"worker": str(w.slot)}, w.mesh["dropped"]) for w in workers if w.mesh])
    rec = [w for w in workers if w.mesh and w.mesh.get("recovery")]
    for key, name, help_text in _MESH_RECOVERY:
        out.family(name, "counter", help_text,
                   [("", {"worker": str(w.slot)}, w.mesh["recovery"][key]) for w in rec if w.mesh])
    hist: list[tuple[str, dict[str, str], float]] = []
    for w in workers:
        assert w.mesh is not None
        lab = {"worker": str(w.slot)}
        running = 0
        for bound, n in zip(w.mesh["transit_buckets_ns"] + [None], w.mesh["transit_counts"]):
            running += n
            le = "+Inf" if bound is None else _num(bound / 1e9)
            hist.append(("_bucket", {**lab, "le": le}, running))
        hist.append(("_sum", lab, w.mesh["transit_sum_ns"] / 1e9))
        hist.append(("_count", lab, running))
    out.family("wse_mesh_transit_seconds", "histogram",
               "Time from publish() on one worker to its publish queue on another (then wse_publish_queue_seconds applies).", hist)


def parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Reads a text-format scrape back into (name, labels, value) samples."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, brace, rest = head.partition("{")
        labels: dict[str, str] = {}
        if brace:
            for part in rest.rstrip("}").split(","):
                if part:
                    k, _, v = part.partition("=")
                    labels[k] = v.strip('"')
        samples.append((name, labels, float(value)))
    return samples
