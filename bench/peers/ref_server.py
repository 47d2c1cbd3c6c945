"""The published reference engine, wse-server 2.5.1, doing every benchmark scenario.

It needs Python >= 3.12: on these machines it runs in the reference chroot,

    bash reference-wse.sh python bench/peers/ref_server.py --port PORT [--jwt-secret S]

and elsewhere with any Python >= 3.12 that has ``pip install wse-server==2.5.1 orjson``. Drain
mode, one Python thread (this one) handling the messages of ``common.py``: the reference does not
handle ``subscription_update`` itself, so this script subscribes and acks as every application of
it must; publications use ``broadcast(topic, text)`` (one frame shared by all subscribers) with
the same minimal envelope as the other peers ``{c,t,seq,tp,p}``. JWT (``jwt_secret``) is verified
by the engine in Rust. Its per-connection rate limit is raised out of the way (the inbound
scenario would otherwise measure the limit).
"""

from __future__ import annotations

import argparse
import os
import platform
import signal

import orjson
from common import tick  # bench/peers/ (this script's directory)
from wse_server import RustWSEServer

try:
    from importlib.metadata import version as _version

    REF_VERSION = _version("wse-server")
except Exception:  # pragma: no cover
    REF_VERSION = "?"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--jwt-secret", default=None)
    args = ap.parse_args()
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    kw: dict[str, object] = {}
    if args.jwt_secret:
        kw["jwt_secret"] = args.jwt_secret.encode()
    server = RustWSEServer(args.host, args.port, max_connections=19_000, rate_limit_capacity=1e12,
                           rate_limit_refill=1e12, ping_interval=600, idle_timeout=1200, **kw)
    server.enable_drain_mode()
    server.start()
    print(f"reference: serving ws://{args.host}:{args.port}/wse pid {os.getpid()} wse-server {REF_VERSION} "
          f"python {platform.python_version()}", flush=True)
    dumps = orjson.dumps
    broadcast = server.broadcast
    send = server.send
    received = 0
    while not stop:
        for kind, cid, data in server.drain_inbound(1024, 50):
            if kind != "msg" or not isinstance(data, dict):
                continue
            t = data.get("t") or data.get("type")
            p = data.get("p") or data.get("payload") or {}
            if t == "count":
                received += 1
            elif t == "echo":
                send(cid, dumps({"c": "U", "t": "echo", "p": p}).decode())
            elif t == "subscription_update":
                topics = [str(x) for x in p.get("topics", [])]
                action = p.get("action", "subscribe")
                if action == "unsubscribe":
                    server.unsubscribe_connection(cid, topics)
                else:
                    server.subscribe_connection(cid, topics)
                send(cid, dumps({"c": "WSE", "t": "subscription_update", "p": {
                    "action": action, "success": True, "success_topics": topics, "failed_topics": []}}).decode())
            elif t == "bench.publish":
                topic = str(p.get("topic", "bench"))
                count, start = int(p.get("count", 1000)), int(p.get("start", 0))
                size, fb = int(p.get("size", 60)), int(p.get("frame_bytes", 0))
                for s in range(start, start + count):
                    broadcast(topic, tick(topic, s, size, fb).decode())
                send(cid, dumps({"c": "U", "t": "bench.done", "p": {"published": count}}).decode())
            elif t == "bench.users":
                prefix = str(p.get("prefix", "u."))
                topics = [f"{prefix}{u}" for u in range(int(p.get("users", 0)))]
                count = int(p.get("count", 1))
                size, fb = int(p.get("size", 60)), int(p.get("frame_bytes", 0))
                for s in range(count):
                    for tp in topics:
                        broadcast(tp, tick(tp, s, size, fb).decode())
                send(cid, dumps({"c": "U", "t": "bench.done", "p": {"published": count * len(topics)}}).decode())
            elif t == "bench.stats":
                send(cid, dumps({"c": "U", "t": "bench.stats", "p": {"received": received}}).decode())
    server.stop()


if __name__ == "__main__":
    main()
