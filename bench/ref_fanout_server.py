"""The reference side of the fan-out benchmark: wse-server 2.5.1 doing the same job as
``bench/fanout_app.py``.

It needs Python >= 3.12, so it runs in the reference chroot:

    taskset -c 0 bash ../shared/tools/reference-wse.sh python bench/ref_fanout_server.py --port PORT

JWT is off (no ``jwt_secret``). The reference engine does not handle ``subscription_update``
itself, so this script does what every application of it must do: it drains inbound events
(drain mode, one thread: this one), subscribes the connection with ``subscribe_connection`` and
sends the ack (``subscription_update`` with ``success_topics``). On
``{"t": "bench.publish", "p": {"topic", "count", "size"}}`` it publishes ``count`` messages with
``broadcast(topic, text)`` in a tight loop. ``broadcast`` sends its text as-is (one pre-framed text
frame shared by all subscribers), so the application builds the envelope itself; it builds the
cheapest one that still carries what the client checks:
``{"c":"U","t":"tick","seq":N,"tp":"bench","p":{"s":N,"d":"xxx..."}}`` (no ``id``/``ts``,
which the WSE engine adds in Rust; ``--envelope full`` adds them, made in Python). Then it sends ``bench.done`` to the requester; ``bench.stats`` is answered with the numeric
fields of ``health_snapshot()``.

Prints ``ref: serving ws://HOST:PORT/wse pid PID`` once listening (the PID is the host's too:
the chroot shares the PID namespace). Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
import uuid
from datetime import datetime, timezone

import orjson
from wse_server import RustWSEServer

try:
    from importlib.metadata import version as _version

    REF_VERSION = _version("wse-server")
except Exception:  # pragma: no cover
    REF_VERSION = "?"


def pad_for(size: int) -> str:
    overhead = len('{"s":12345,"d":""}')
    return "x" * max(0, size - overhead)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--max-connections", type=int, default=19_000)
    ap.add_argument(
        "--envelope",
        choices=("minimal", "full"),
        default="minimal",
        help="minimal: {c,t,seq,tp,p}; full: also id (uuid4), ts (RFC 3339, ms) and v, as the WSE engine sends",
    )
    args = ap.parse_args()

    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    server = RustWSEServer(args.host, args.port, max_connections=args.max_connections)
    server.enable_drain_mode()
    server.start()
    print(f"ref: serving ws://{args.host}:{args.port}/wse pid {os.getpid()} wse-server {REF_VERSION}", flush=True)

    dumps = orjson.dumps
    broadcast = server.broadcast
    while not stop:
        events = server.drain_inbound(1024, 50)
        for kind, cid, data in events:
            if kind != "msg" or not isinstance(data, dict):
                continue
            t = data.get("t") or data.get("type")
            p = data.get("p") or data.get("payload") or {}
            if t == "subscription_update":
                topics = [str(x) for x in p.get("topics", [])]
                action = p.get("action", "subscribe")
                if action == "unsubscribe":
                    server.unsubscribe_connection(cid, topics)
                else:
                    server.subscribe_connection(cid, topics)
                ack = {
                    "c": "WSE",
                    "t": "subscription_update",
                    "p": {"action": action, "success": True, "success_topics": topics, "failed_topics": []},
                }
                server.send(cid, dumps(ack).decode())
            elif t == "bench.publish":
                topic = str(p.get("topic", "bench"))
                count = int(p.get("count", 1000))
                d = pad_for(int(p.get("size", 60)))
                t0 = time.perf_counter()
                if args.envelope == "minimal":
                    for s in range(count):
                        broadcast(
                            topic,
                            dumps({"c": "U", "t": "tick", "seq": s + 1, "tp": topic, "p": {"s": s, "d": d}}).decode(),
                        )
                else:
                    for s in range(count):
                        env = {
                            "c": "U",
                            "t": "tick",
                            "id": str(uuid.uuid4()),
                            "ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                            "seq": s + 1,
                            "tp": topic,
                            "p": {"s": s, "d": d},
                            "v": 1,
                        }
                        broadcast(topic, dumps(env).decode())
                elapsed = time.perf_counter() - t0
                done = {"c": "U", "t": "bench.done", "p": {"published": count, "publish_s": elapsed}}
                server.send(cid, dumps(done).decode())
            elif t == "bench.stats":
                snap = server.health_snapshot()
                stats = {k: v for k, v in snap.items() if isinstance(v, (int, float))}
                server.send(cid, dumps({"c": "U", "t": "bench.stats", "p": stats}).decode())
    server.stop()


if __name__ == "__main__":
    main()
