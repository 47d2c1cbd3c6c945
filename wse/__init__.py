"""WSE: a WebSocket engine for Python whose transport runs in Rust."""

from .app import Connection, Message, PresenceCount, PresenceEvent, PresenceMember, WSEApp
from .breaker import BreakerStatus
from .config import JWTConfig, WSEConfig

__all__ = [
    "BreakerStatus",
    "Connection",
    "JWTConfig",
    "Message",
    "PresenceCount",
    "PresenceEvent",
    "PresenceMember",
    "WSEApp",
    "WSEConfig",
]
__version__ = "0.1.0"
