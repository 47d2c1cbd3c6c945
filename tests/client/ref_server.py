"""The published reference server (wse-server 2.5.1) as the client suites need it.

Runs in the reference chroot (Python 3.13):
``reference-wse.sh python tests/client/ref_server.py --port PORT [--jwt-secret S]``.
Recovery is on; encryption, zlib (``send_event`` above 1 KiB) and msgpack (``?format=msgpack``)
are the reference engine's own. The reference leaves the subscription protocol to the
application, so this script answers ``subscription_update`` itself, with recovery per topic
(``subscribe_with_recovery``) and the ack format of docs/PROTOCOL.md. Messages:

- ``echo`` → ``echo`` through ``send_event`` (encrypted, msgpack or zlib as the connection has it)
- ``publish`` ``{topic, count, payload}`` → ``count`` broadcasts of ``pub`` ``{"i": n, ...}``,
  then ``published``
- ``stream`` ``{topic, count, interval, start}`` → broadcasts from a thread, one per interval
- ``kick`` → ``disconnect`` of the sender
- ``rpc`` → ``rpc.reply`` with the request's ``cid``

Prints ``ref: serving ws://HOST:PORT/wse`` when listening; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time

from wse_server import RustWSEServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--jwt-secret", default=None)
    args = ap.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    srv = RustWSEServer(
        args.host,
        args.port,
        jwt_secret=args.jwt_secret.encode() if args.jwt_secret else None,
        recovery_enabled=True,
        recovery_buffer_size=4096,
    )
    srv.enable_drain_mode()
    srv.start()
    print(f"ref: serving ws://{args.host}:{args.port}/wse", flush=True)

    def stream(topic: str, start: int, count: int, interval: float) -> None:
        for i in range(start, start + count):
            if stop.is_set():
                return
            srv.broadcast(topic, json.dumps({"c": "U", "t": "pub", "p": {"i": i}}))
            time.sleep(interval)

    def subscribe(cid: str, p: dict) -> None:
        topics = [str(t) for t in p.get("topics", [])]
        action = p.get("action", "subscribe")
        ack: dict = {"action": action, "success_topics": topics, "failed_topics": []}
        if action == "unsubscribe":
            srv.unsubscribe_connection(cid, topics)
        else:
            wanted = p.get("recovery") or {}
            recovery = {}
            for t in topics:
                pos = wanted.get(t) if p.get("recover") else None
                if pos:
                    res = srv.subscribe_with_recovery(cid, [t], True, pos.get("epoch"), pos.get("offset"))
                else:
                    res = srv.subscribe_with_recovery(cid, [t], False, None, None)
                r = res["topics"].get(t, {})
                recovery[t] = {k: r.get(k) for k in ("epoch", "offset", "recovered", "count")}
            ack["recovery"] = recovery
        srv.send_event(cid, {"c": "WSE", "t": "subscription_update", "p": ack})

    while not stop.is_set():
        for kind, cid, data in srv.drain_inbound(256, 50):
            if kind != "msg" or not isinstance(data, dict):
                continue
            t = data.get("t") or data.get("type")
            p = data.get("p") or data.get("payload") or {}
            if t == "subscription_update":
                subscribe(cid, p)
            elif t == "echo":
                srv.send_event(cid, {"c": "U", "t": "echo", "p": p})
            elif t == "publish":
                extra = p.get("payload", {})
                for i in range(int(p["count"])):
                    srv.broadcast(p["topic"], json.dumps({"c": "U", "t": "pub", "p": {"i": i, **extra}}))
                srv.send_event(cid, {"c": "U", "t": "published", "p": {"count": p["count"]}})
            elif t == "stream":
                args_ = (p["topic"], int(p.get("start", 0)), int(p["count"]), float(p.get("interval", 0.01)))
                threading.Thread(target=stream, args=args_, daemon=True).start()
            elif t == "kick":
                srv.disconnect(cid)
            elif t == "rpc":
                srv.send_event(cid, {"c": "U", "t": "rpc.reply", "cid": data.get("cid"), "p": {"echo": p}})
    srv.stop()


if __name__ == "__main__":
    main()
