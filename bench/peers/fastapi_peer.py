"""Peer: FastAPI's WebSocket endpoint served by uvicorn (uvloop, httptools, websockets-sansio).

    python bench/peers/fastapi_peer.py --port PORT [--jwt-secret S]

The application is ``asgi_apps.fastapi_app``; one worker, in this process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import announce_when_listening, peer_args  # noqa: E402


def main() -> None:
    args = peer_args(__doc__ or "")
    if args.jwt_secret:
        os.environ["BENCH_JWT_SECRET"] = args.jwt_secret
    import uvicorn

    from asgi_apps import fastapi_app

    config = uvicorn.Config(fastapi_app, host=args.host, port=args.port, loop="uvloop", http="httptools",
                            ws="websockets-sansio", log_level="warning", backlog=4096, ws_ping_interval=None,
                            lifespan="off", access_log=False)
    announce_when_listening("fastapi", args.host, args.port)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
