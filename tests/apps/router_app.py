"""The suites' test application (``tests.apps.testapp``), unchanged, served by uvicorn through
the FastAPI router instead of the engine's own listener. ``GET /health`` is a plain HTTP route
beside it, and ``POST /publish/{topic}`` publishes from HTTP."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from tests.apps.testapp import app as wse_app
from wse.fastapi import create_wse_router

api = FastAPI()
api.include_router(create_wse_router(wse_app))


@api.get("/health")
def health() -> dict[str, Any]:
    return {"ok": True, "connections": wse_app.stats()["connections_active"]}


@api.post("/publish/{topic}")
def publish(topic: str, payload: dict[str, Any]) -> dict[str, int]:
    return {"subscribers": wse_app.publish(topic, payload, type="http")}
