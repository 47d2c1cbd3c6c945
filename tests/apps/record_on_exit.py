"""The test app, plus: when the process exits, what it recorded is written as JSON to the file
named by ``WSE_TEST_RECORD_FILE`` (so that tests can check what happened during shutdown)."""

from __future__ import annotations

import atexit
import os

import orjson

from tests.apps.testapp import app, record

__all__ = ["app"]


def _dump() -> None:
    path = os.environ.get("WSE_TEST_RECORD_FILE")
    if path:
        with open(path, "wb") as f:
            f.write(orjson.dumps(record))


atexit.register(_dump)
