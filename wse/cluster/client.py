"""Publishing into a running cluster from another process."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import orjson


def publish(url: str, topic: str, payload: Any, *, token: str, type: str = "message",
            category: str = "U", timeout: float = 5.0) -> None:
    """POSTs a publication to the supervisor's ``/publish`` (``url`` is its base, e.g.
    ``http://127.0.0.1:9108``); it reaches the topic's subscribers on every worker.
    Raises ``RuntimeError`` with the supervisor's answer if it is refused."""
    body = orjson.dumps({"topic": topic, "payload": payload, "type": type, "category": category})
    req = urllib.request.Request(url.rstrip("/") + "/publish", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
    except urllib.error.HTTPError as e:
        with e:
            detail = e.read().decode(errors="replace").strip()
        raise RuntimeError(f"publish refused ({e.code}): {detail}") from None
