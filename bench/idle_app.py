"""An app that accepts connections and does nothing else (idle-memory benchmark)."""

from wse import WSEApp, WSEConfig

app = WSEApp(WSEConfig(max_connections=60_000, idle_timeout_ms=0, ping_interval_ms=0, backlog=4096))
