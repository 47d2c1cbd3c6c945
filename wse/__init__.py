"""WSE: a WebSocket engine for Python whose transport runs in Rust."""

from .app import WSEApp
from .model import Connection, Message, PresenceCount, PresenceEvent, PresenceMember
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
