"""The React demo of the TypeScript client: a live ticker and a presence list.

    npm --prefix clients/ts ci && npm --prefix clients/ts run build:e2e
    python -m examples.ts_demo.app            # then open http://127.0.0.1:8080/

The engine (port 5006) publishes prices on ``prices`` five times a second and tracks who is in
``lobby``; a small web server (port 8080) serves the page (clients/ts/demo), the engine's URL and
tokens. Both stay on loopback. WebCrypto (the demo's E2E encryption) needs a secure context:
open the page as http://127.0.0.1 or http://localhost, or serve it over https.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import pathlib
import random
import secrets
import signal

from wse import JWTConfig, WSEApp, WSEConfig

from .web import WebServer

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAGE = ROOT / "clients" / "ts" / "demo"
SYMBOLS = {"EURUSD": 1.0842, "GBPUSD": 1.2710, "USDJPY": 151.32, "BTCUSD": 67150.0, "XAUUSD": 2331.4}


def build(port: int, secret: str) -> WSEApp:
    cfg = WSEConfig(
        port=port,
        jwt=JWTConfig(secret=secret, query_param=True),
        presence=True,
        recovery=True,
    )
    return WSEApp(cfg)


async def ticker(app: WSEApp, interval: float = 0.2) -> None:
    """Random-walk prices, one symbol per tick."""
    px = dict(SYMBOLS)
    n = 0
    while True:
        sym = random.choice(list(px))
        old = px[sym]
        px[sym] = old * math.exp(random.gauss(0, 0.0008))
        app.publish("prices", {"sym": sym, "px": px[sym], "chg": px[sym] - old, "n": n}, type="tick")
        n += 1
        await asyncio.sleep(interval)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=5006, help="the engine's port (0: any)")
    ap.add_argument("--http-port", type=int, default=8080, help="the page's port (0: any)")
    args = ap.parse_args()
    secret = os.environ.get("WSE_DEMO_SECRET") or secrets.token_hex(32)
    app = build(args.port, secret)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, app.stop)
        web: list[WebServer] = []

        def ready(addr: tuple[str, int]) -> None:
            w = WebServer({"/": PAGE}, secret, f"ws://{addr[0]}:{addr[1]}{app.config.path}", port=args.http_port)
            web.append(w)
            print(f"demo: serving {w.url}/ (engine ws://{addr[0]}:{addr[1]}{app.config.path})", flush=True)

        task = loop.create_task(ticker(app))
        try:
            await app.serve(ready=ready)
        finally:
            task.cancel()
            for w in web:
                w.close()

    asyncio.run(run())


if __name__ == "__main__":
    main()
