"""Client for WSE servers (wire protocol v2): asyncio and sync, with subscriptions and recovery,
reconnect with backoff, E2E encryption, zlib and msgpack.

```python
async with connect("ws://localhost:5006/wse", token="jwt...") as client:
    await client.subscribe(["notifications"])
    async for event in client:
        print(event.type, event.payload)
```

Only ``websockets`` is required; ``cryptography`` (extra ``crypto``) enables encryption,
``msgpack`` (extra ``msgpack``) the msgpack format, ``orjson`` (extra ``fast``) faster JSON.
"""

from .client import WSEClient, __version__, connect
from .errors import (
    AuthError,
    ConnectionLost,
    EncryptionError,
    MissingDependency,
    QueueOverflow,
    RequestError,
    WSEError,
)
from .events import GAP, OVERFLOW, Event, Gap, SubscribeResult, TopicRecovery
from .sync import SyncClient, connect_sync

__all__ = [
    "GAP",
    "OVERFLOW",
    "AuthError",
    "ConnectionLost",
    "EncryptionError",
    "Event",
    "Gap",
    "MissingDependency",
    "QueueOverflow",
    "RequestError",
    "SubscribeResult",
    "SyncClient",
    "TopicRecovery",
    "WSEClient",
    "WSEError",
    "__version__",
    "connect",
    "connect_sync",
]
