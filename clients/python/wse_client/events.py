"""What the client hands to the application."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GAP = "recovery_gap"
"""Type of the event the client emits when messages of a topic were lost for good."""

OVERFLOW = "queue_overflow"
"""Type of the event the client emits (to handlers) when its receive queue dropped events."""


class Event:
    """One received message (a v2 envelope).

    ``topic``, ``epoch`` and ``offset`` are set on topic publications from a server with
    recovery; ``raw`` is the whole envelope as received.
    """

    __slots__ = ("type", "payload", "category", "id", "seq", "topic", "epoch", "offset", "raw")

    def __init__(self, env: dict[str, Any]) -> None:
        self.raw = env
        self.type: str = env.get("t") or env.get("type") or ""
        p = env.get("p")
        self.payload: Any = p if p is not None else env.get("payload")
        self.category: str | None = env.get("c")
        self.id: str | None = env.get("id")
        self.seq: int | None = env.get("seq")
        self.topic: str | None = env.get("tp")
        self.epoch: str | None = env.get("e")
        self.offset: int | None = env.get("o")

    @property
    def ts(self) -> str | None:
        """The server's timestamp (RFC 3339), if the envelope has one."""
        ts = self.raw.get("ts")
        return ts if isinstance(ts, str) else None

    def __repr__(self) -> str:
        where = f" topic={self.topic!r}" if self.topic else ""
        return f"Event(type={self.type!r}{where} payload={self.payload!r})"


@dataclass(frozen=True)
class TopicRecovery:
    """The server's answer about one topic of a subscribe with recovery."""

    topic: str
    recovered: bool
    epoch: str | None
    offset: int | None
    count: int


@dataclass(frozen=True)
class SubscribeResult:
    """The server's ack of a ``subscribe`` or ``unsubscribe``."""

    success_topics: list[str]
    failed_topics: list[str]
    errors: dict[str, str] = field(default_factory=dict)
    recovery: dict[str, TopicRecovery] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        """True when no topic failed."""
        return not self.failed_topics


@dataclass(frozen=True)
class Gap:
    """Messages of ``topic`` after ``(epoch, offset)`` that could not be recovered.

    ``reason``: ``"not_recovered"`` (the server could not replay them: buffer expired, server
    restarted with a new epoch), ``"missed"`` (an offset jump on a live stream), or
    ``"no_recovery"`` (the server does not offer recovery, so what was sent while disconnected is
    unknown).
    """

    topic: str
    epoch: str | None
    offset: int | None
    reason: str
    server_epoch: str | None = None
    server_offset: int | None = None

    def as_payload(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "epoch": self.epoch,
            "offset": self.offset,
            "reason": self.reason,
            "server_epoch": self.server_epoch,
            "server_offset": self.server_offset,
        }
