"""A FastAPI application with a WSE endpoint on its own port (router mode).

    uvicorn examples.fastapi_app:api --port 8000     # HTTP and ws://127.0.0.1:8000/wse

HTTP routes and WebSocket handlers share one ``WSEApp``: ``POST /news`` publishes to the
``news`` topic that WebSocket clients subscribe to. The WSE part moves to the engine's own
listener without a change:

    wse run examples.fastapi_app:ws                  # ws://127.0.0.1:5006/wse

Set ``WSE_JWT_SECRET`` (32+ bytes) to require a JWT (HS256) in the upgrade, in either mode.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI

from wse import Connection, JWTConfig, Message, WSEApp, WSEConfig
from wse.fastapi import create_wse_router

secret = os.environ.get("WSE_JWT_SECRET")
ws = WSEApp(WSEConfig(port=5006, jwt=JWTConfig(secret=secret) if secret else None))


@ws.on_connect
def joined(conn: Connection) -> None:
    if conn.user_id is not None:
        ws.subscribe(conn, f"user.{conn.user_id}")


@ws.on("echo")
async def echo(conn: Connection, msg: Message) -> None:
    ws.send(conn, msg.payload, type="echo")


@ws.on("chat.send")
def chat_send(conn: Connection, msg: Message) -> None:
    sender = conn.user_id or f"guest-{conn.id}"
    ws.publish("chat", {"from": sender, "text": msg.payload.get("text", "")}, type="chat.message")


api = FastAPI(title="WSE router example")
api.include_router(create_wse_router(ws))


@api.post("/news")
def post_news(item: dict[str, Any]) -> dict[str, int]:
    """Publishes ``item`` to the ``news`` topic; answers how many subscribers it reached."""
    return {"subscribers": ws.publish("news", item, type="news")}


@api.get("/stats")
def stats() -> dict[str, int]:
    s = ws.stats()
    return {"connections": s["connections_active"], "messages_in": s["messages_in"]}
