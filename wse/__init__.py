"""WSE: a WebSocket engine for Python whose transport runs in Rust."""

from .app import Connection, Message, WSEApp
from .config import JWTConfig, WSEConfig

__all__ = ["Connection", "JWTConfig", "Message", "WSEApp", "WSEConfig"]
__version__ = "0.1.0"
