"""Centrifugo (v6) as a suite peer: writes its configuration, starts it, and prints the suite's
``centrifugo: serving ws://HOST:PORT/connection/websocket pid PID`` once it accepts connections.

    python bench/peers/centrifugo_peer.py --binary PATH --port PORT [--deflate]

Anonymous clients (``client.insecure``) may subscribe and publish to channels without a
namespace (the generator publishes with client ``publish`` commands); no history, presence or
recovery; pings every 10 minutes (a run never sees one); ``--deflate``: permessage-deflate on for
every message (``websocket.compression``, ``compression_min_size`` 0).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--deflate", action="store_true")
    args = ap.parse_args()
    cfg = {
        "http_server": {"address": "127.0.0.1", "port": args.port},
        "log": {"level": "error"},
        "client": {"insecure": True, "allowed_origins": ["*"], "ping_interval": "600s", "pong_timeout": "60s"},
        "channel": {"without_namespace": {"allow_subscribe_for_client": True, "allow_publish_for_client": True}},
        "websocket": {"compression": args.deflate, "compression_min_size": 0},
        "usage_stats": {"disabled": True},
    }
    fd, path = tempfile.mkstemp(prefix="centrifugo-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(cfg, f)
    proc = subprocess.Popen([args.binary, "-c", path])
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", args.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        if proc.poll() is None:
            print(f"centrifugo: serving ws://127.0.0.1:{args.port}/connection/websocket pid {proc.pid}", flush=True)
        sys.exit(proc.wait())
    finally:
        if proc.poll() is None:
            proc.terminate()
        os.unlink(path)


if __name__ == "__main__":
    main()
