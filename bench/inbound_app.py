"""Inbound benchmark app: a trivial handler that counts `count` messages (drain mode)."""

from wse import Connection, Message, WSEApp, WSEConfig

# No inbound rate limit, as the reference server has none on what clients send.
app = WSEApp(WSEConfig(max_connections=20_000, idle_timeout_ms=0, rate_limit_capacity=0))
received = 0


@app.on("count")
def _count(conn: Connection, msg: Message) -> None:
    global received
    received += 1


@app.on("bench.stats")
def _stats(conn: Connection, msg: Message) -> None:
    st = app.stats()
    engine = {k: st[k] for k in ("drain_calls", "drain_events", "backpressure_waits", "backpressure_ns", "messages_in")}
    app.send(conn, {"received": received, "engine": engine}, type="bench.stats")
