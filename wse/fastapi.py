"""FastAPI router mode: the WSE endpoint on your FastAPI app's own port.

```python
from fastapi import FastAPI
from wse import WSEApp, WSEConfig
from wse.fastapi import create_wse_router

ws = WSEApp(WSEConfig())
api = FastAPI()
api.include_router(create_wse_router(ws))     # ws://HOST:PORT/wse, served by uvicorn
```

The same ``WSEApp`` (its handlers, ``publish``, ``send``, JWT, topics, encryption) also runs
unchanged under ``wse run module:ws`` on the engine's own listener. Needs ``pip install
wse-engine[fastapi]``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, WebSocket

from .app import WSEApp
from .asgi import serve_websocket
from .config import WSEConfig

__all__ = ["WSERouter", "create_wse_router"]


class WSERouter(APIRouter):
    """An ``APIRouter`` with the WSE endpoint; ``wse`` is the application it serves."""

    wse: WSEApp


def create_wse_router(app: WSEApp | WSEConfig, path: str | None = None) -> WSERouter:
    """A router whose WebSocket endpoint at ``path`` (default: the config's ``path``) serves ``app``.

    Pass a ``WSEConfig`` to get a new ``WSEApp`` (as ``router.wse``). The engine starts and stops
    with the FastAPI application (the router's lifespan, merged by ``include_router``).
    """
    wse_app = app if isinstance(app, WSEApp) else WSEApp(app)

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        wse_app.attach()
        try:
            yield
        finally:
            await wse_app.detach()

    router = WSERouter(lifespan=lifespan)
    router.wse = wse_app

    async def wse_endpoint(websocket: WebSocket) -> None:
        await serve_websocket(wse_app, websocket.scope, websocket.receive, websocket.send)

    router.add_api_websocket_route(path or wse_app.config.path, wse_endpoint, name="wse")
    return router
