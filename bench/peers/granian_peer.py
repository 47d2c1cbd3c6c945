"""Peer: ``granian`` (a Rust HTTP server for Python) serving a plain ASGI WebSocket app.

    python bench/peers/granian_peer.py --port PORT [--jwt-secret S]

One worker process (granian's supervisor forks it: the harness counts the CPU of the whole
process tree), one runtime thread, uvloop. The application is ``asgi_apps.raw_app``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import announce_when_listening, peer_args  # noqa: E402


def main() -> None:
    args = peer_args(__doc__ or "")
    if args.jwt_secret:
        os.environ["BENCH_JWT_SECRET"] = args.jwt_secret
    os.environ["PYTHONPATH"] = str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")
    from granian import Granian

    server = Granian("asgi_apps:raw_app", address=args.host, port=args.port, interface="asgi", workers=1,
                     runtime_threads=1, loop="uvloop", websockets=True, log_enabled=False, backlog=4096)

    announce_when_listening("granian", args.host, args.port)
    server.serve()


if __name__ == "__main__":
    main()
