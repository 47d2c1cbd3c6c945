"""The objects the application is handed: a connection, a message, presence events and
figures, and the shapes of the handlers that receive them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeVar

import orjson


@dataclass(eq=False, slots=True)
class Connection:
    """A client connection, as Python sees it after the engine accepted it.

    Slotted (no per-instance ``__dict__``): an idle connection should cost little memory, so the
    application's own per-connection data goes in ``state``, not in new attributes."""

    id: int
    user_id: str | None
    remote_addr: str
    _claims_raw: bytes | None = field(default=None, repr=False)
    _claims: dict[str, Any] | None = field(default=None, repr=False)
    _state: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def state(self) -> dict[str, Any]:
        """Free for the application's own per-connection data (the dict is made on first use)."""
        if self._state is None:
            self._state = {}
        return self._state

    @state.setter
    def state(self, value: dict[str, Any]) -> None:
        self._state = value

    @property
    def claims(self) -> dict[str, Any]:
        """The token's claims (those configured in ``JWTConfig.claims``), parsed on first use."""
        if self._claims is None:
            self._claims = orjson.loads(self._claims_raw) if self._claims_raw else {}
        return self._claims


class Message(NamedTuple):
    """An inbound application message (a v2 envelope)."""

    type: str
    payload: Any
    id: str | None
    envelope: dict[str, Any]


class PresenceEvent(NamedTuple):
    """A user joined a topic (first connection), left it (last connection), or changed their data."""

    change: Literal["join", "leave", "update"]
    topic: str
    user_id: str
    data: Any
    conn_id: int
    """The connection that caused it; 0 when the application did (``update_presence``) or another
    worker of the cluster."""


class PresenceMember(NamedTuple):
    data: Any
    connections: int


class PresenceCount(NamedTuple):
    users: int
    connections: int


Handler = Callable[[Connection, Message], Any]
LifecycleHandler = Callable[[Connection], Any]
DisconnectHandler = Callable[[Connection, int], Any]
RawHandler = Callable[[Connection, bytes, bool], Any]
SubscribeHook = Callable[[Connection, str], Any]
PresenceHandler = Callable[[PresenceEvent], Any]
F = TypeVar("F", bound=Callable[..., Any])
