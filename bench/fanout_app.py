"""The WSE side of the fan-out benchmark: a WSEApp that publishes on request.

Serve it with ``taskset -c 0 python -m wse_cli.main run bench.fanout_app:app --port PORT``
(``bench/fanout.py`` does this). JWT is off. Clients subscribe with the engine's own
``subscription_update`` handling (the engine acks); one client then sends

    {"t": "bench.publish", "p": {"topic": "bench", "count": 2000, "size": 60, "chunk": 0}}

and the handler publishes ``count`` payloads of about ``size`` bytes of JSON,
``{"s": seq, "d": "xxx..."}`` with ``seq`` = 0 .. count-1, to the topic with ``app.publish``
(serialised by orjson, framed once by the engine). With ``chunk`` > 0 it yields to the asyncio
loop (``await asyncio.sleep(0)``) after every ``chunk`` publications. When done it sends
``bench.done`` to the requester with the number published and the summed fan-out.

``WSE_BENCH_RECOVERY=1`` in the environment turns recovery on.

``echo`` sends the payload back (``wse-loadgen latency``, used by ``bench/steer.py``).
"""

from __future__ import annotations

import asyncio
import os
import time

from wse import Connection, Message, WSEApp, WSEConfig

# WSE_BENCH_RECOVERY=1: recovery on (in a cluster, each topic's owner stamps it and every worker
# keeps its ring: bench/cluster.py's ``w2r``).
app = WSEApp(WSEConfig(port=0, max_connections=19_000, backlog=4096, recovery=os.environ.get("WSE_BENCH_RECOVERY") == "1"))


def pad_for(size: int) -> str:
    """Padding so that ``{"s":N,"d":"<pad>"}`` is about ``size`` bytes (N up to 5 digits)."""
    overhead = len('{"s":12345,"d":""}')
    return "x" * max(0, size - overhead)


@app.on("bench.publish")
async def bench_publish(conn: Connection, msg: Message) -> None:
    p = msg.payload or {}
    topic = str(p.get("topic", "bench"))
    count = int(p.get("count", 1000))
    chunk = int(p.get("chunk", 0))
    d = pad_for(int(p.get("size", 60)))
    publish = app.publish
    queued = 0
    t0 = time.perf_counter()
    if chunk > 0:
        for start in range(0, count, chunk):
            for s in range(start, min(count, start + chunk)):
                queued += publish(topic, {"s": s, "d": d}, type="tick")
            await asyncio.sleep(0)
    else:
        for s in range(count):
            queued += publish(topic, {"s": s, "d": d}, type="tick")
    elapsed = time.perf_counter() - t0
    app.send(conn, {"published": count, "queued": queued, "publish_s": elapsed}, type="bench.done")


@app.on("bench.stats")
def bench_stats(conn: Connection, msg: Message) -> None:
    """The engine's counters (the client takes differences between rounds)."""
    app.send(conn, app.stats(), type="bench.stats")


@app.on("echo")
def echo(conn: Connection, msg: Message) -> None:
    app.send(conn, msg.payload, type="echo")
