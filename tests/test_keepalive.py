"""Server keepalive: pings to quiet clients (a WebSocket Ping and a text JSON ping), idle close."""

from __future__ import annotations

import time
from typing import Any

import orjson

from tests.wsutil import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, RawWS, client_frame, close_code, stats_when


def test_quiet_client_gets_both_pings_and_stays_while_it_answers(make_server: Any) -> None:
    srv = make_server({"ping_interval_ms": 1000, "idle_timeout_ms": 2500})
    r = RawWS(srv.port, timeout=6)
    assert r.recv_frame()[0] in (OP_BINARY, OP_TEXT)  # server_ready
    seen_ping_frame = seen_json_ping = False
    started = time.monotonic()
    # Answer every WebSocket ping for 4 s, longer than the idle timeout: the answers keep it open.
    while time.monotonic() - started < 4.0:
        op, payload = r.recv_frame()
        if op == OP_PING:
            seen_ping_frame = True
            r.send(client_frame(OP_PONG, payload))
        elif op == OP_TEXT:
            msg = orjson.loads(payload)
            if msg["t"] == "ping":
                # The JSON ping goes in a text frame: v2 clients count only text frames as liveness.
                assert msg["c"] == "WSE" and "server_time" in msg["p"]
                seen_json_ping = True
        else:
            raise AssertionError(f"unexpected frame {op}: {payload!r}")
    assert seen_ping_frame and seen_json_ping
    r.send(client_frame(OP_CLOSE, (1000).to_bytes(2, "big")))
    r.close()


def test_silent_client_is_closed_after_the_idle_timeout(make_server: Any) -> None:
    srv = make_server({"ping_interval_ms": 0, "idle_timeout_ms": 1500})
    r = RawWS(srv.port, timeout=8)
    r.recv_frame()  # server_ready
    started = time.monotonic()
    op, payload = r.recv_frame()
    waited = time.monotonic() - started
    r.close()
    assert op == OP_CLOSE and close_code(payload) == 1000
    assert payload[2:] == b"idle timeout"
    assert 1.0 <= waited <= 4.0, waited
    st = stats_when(srv, lambda s: s["record"]["disconnects"] == 1)
    assert st["engine"]["idle_closes"] == 1
    assert st["record"]["codes"] == {"1000": 1}
