"""The TypeScript client (clients/ts) end to end: in headless Chromium and in Node, against our
engine started here, and in Node against the published wse-server 2.5.1.

The scenarios themselves are in clients/ts/e2e/scenarios.ts (the same code runs in both
places); each prints a JSON result that the tests below check. Chromium is Debian's, driven by
playwright-core; the page is served from http://127.0.0.1 (a secure context, for WebCrypto).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.client.conftest import OurServer
from tests.conftest import SECRET
from tests.ts.conftest import CHROMIUM, run_node

# Our engine as the scenarios need it: tokens in ?token= too, no leeway (expiry tests), recovery
# with room for a whole reconnect's worth of a fast stream, presence, keys rotated every second.
CONFIG: dict[str, Any] = {
    "jwt": {"secret": SECRET, "query_param": True, "leeway_secs": 0},
    "recovery": True,
    "recovery_buffer": 20_000,
    "presence": True,
    "key_rotation_ms": 1000,
}
SCENARIOS = [
    "cookie_token", "query_token", "ordered_10k", "encrypted", "compressed", "msgpack",
    "drop_recover", "token_refresh", "token_expired",
]


def check(results: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    by = {r["name"]: r for r in results}
    assert sorted(by) == sorted(names), results
    failed = {n: r["error"] for n, r in by.items() if not r["ok"]}
    assert not failed, "\n\n".join(f"{n}: {e}" for n, e in failed.items())
    return {n: r["result"] for n, r in by.items()}


@pytest.fixture(scope="module")
def engine(ts_bundles: Any) -> Any:
    srv = OurServer(CONFIG)
    yield srv
    srv.stop()


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed (apt-get install chromium)")
def test_chromium_against_our_engine(engine: OurServer, web: Any) -> None:
    w = web(engine.url)
    names = [*SCENARIOS, "offline_queue_indexeddb"]
    out = run_node(["e2e/run-browser.mjs", "--page", f"{w.url}/e2e/index.html", "--engine", engine.url,
                    "--tokens", f"{w.url}/token", *names])
    r = check(out, names)
    assert r["cookie_token"]["user"] == "cookie-user"
    assert r["ordered_10k"]["received"] == 10_000
    assert r["encrypted"]["generation"] >= 2
    assert r["encrypted"]["batchKeys"] >= 1
    assert r["drop_recover"]["received"] == 3000 and r["drop_recover"]["reconnects"] >= 1
    assert r["token_refresh"]["refreshes"] >= 2 and r["token_refresh"]["reconnects"] == 0
    assert r["offline_queue_indexeddb"]["replies"] == ["persisted-1", "persisted-2"]


def test_node_against_our_engine(engine: OurServer, web: Any) -> None:
    w = web(engine.url)
    out = run_node(["e2e/run-node.mjs", "--engine", engine.url, "--tokens", f"{w.url}/token", *SCENARIOS])
    r = check(out, SCENARIOS)
    assert r["query_token"]["user"] == "query-user"
    assert r["ordered_10k"]["received"] == 10_000
    assert r["encrypted"]["batchKeys"] >= 1


def test_node_against_the_reference_server(ts_bundles: Any, ref_server: Any, web: Any) -> None:
    """The published wse-server 2.5.1: connect with a token, subscribe, receive, encrypted."""
    srv = ref_server(jwt_secret=SECRET)
    w = web(srv.url)
    names = ["cookie_token", "ordered_10k", "encrypted"]
    out = run_node(["e2e/run-node.mjs", "--reference", "--engine", srv.url, "--tokens", f"{w.url}/token", *names])
    assert check(out, names)["encrypted"]["batchKeys"] == 0
