"""The reference side of the inbound benchmark: wse-server 2.5.1 in drain mode with a trivial
handler that counts ``{"t": "count"}`` messages, as ``bench/inbound_app.py`` does on WSE.

Runs in the reference chroot (Python >= 3.12):

    taskset -c 0 bash ../shared/tools/reference-wse.sh python bench/ref_inbound_server.py --port PORT

Answers ``{"t": "bench.stats"}`` with ``{"received": N}`` (a text frame). Prints
``ref: serving ws://HOST:PORT/wse pid PID`` once listening; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import os
import signal

import orjson
from wse_server import RustWSEServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = RustWSEServer(args.host, args.port, max_connections=19_000)
    server.enable_drain_mode()
    server.start()
    print(f"ref: serving ws://{args.host}:{args.port}/wse pid {os.getpid()}", flush=True)
    received = 0
    while not stop:
        for kind, cid, data in server.drain_inbound(1024, 50):
            if kind != "msg" or not isinstance(data, dict):
                continue
            t = data.get("t") or data.get("type")
            if t == "count":
                received += 1
            elif t == "bench.stats":
                server.send(cid, orjson.dumps({"c": "U", "t": "bench.stats", "p": {"received": received}}).decode())
    server.stop()


if __name__ == "__main__":
    main()
