"""Origin check against cross-site WebSocket hijacking: with tokens in a cookie, a browser page on
another site would open a socket that carries the victim's cookie; ``allowed_origins`` refuses
its handshake with 403. Raw handshakes with a valid cookie, from the config and from the CLI."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import SECRET, ServerProc, make_token
from tests.wsutil import RawWS, http_status

APP = "https://app.example.com"
COOKIE_AUTH = {"jwt": {"secret": SECRET}, "allowed_origins": [APP, "https://admin.example.com"]}


def handshake(srv: ServerProc, origin: str | None) -> tuple[int, bytes]:
    headers = {"Cookie": f"access_token={make_token({'sub': 'victim'})}"}
    if origin is not None:
        headers["Origin"] = origin
    return http_status(srv.port, srv.path, headers)


def stats_of(srv: ServerProc) -> dict[str, Any]:
    c = RawWS(srv.port, srv.path, {"Cookie": f"access_token={make_token()}", "Origin": APP})
    assert c.recv_json()["t"] == "server_ready"
    c.send_json(b'{"t":"stats","p":{}}')
    while True:
        m = c.recv_json()
        if m["t"] == "stats":
            c.close()
            return dict(m["p"]["engine"])


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example", "https://app.example.com.evil.example", "http://app.example.com", "null", "https://example.com"],
)
def test_cross_site_handshake_with_a_valid_cookie_is_refused_403(make_server: Any, origin: str) -> None:
    srv = make_server(COOKIE_AUTH)
    status, body = handshake(srv, origin)
    assert status == 403, body
    assert b"origin not allowed" in body
    e = stats_of(srv)
    assert e["handshake_bad_origin"] == 1
    assert e["handshakes_ok"] == 1  # only stats_of's own connection


@pytest.mark.parametrize("origin", [APP, "https://ADMIN.example.com", APP + "/"])
def test_listed_origins_are_accepted(make_server: Any, origin: str) -> None:
    srv = make_server(COOKIE_AUTH)
    status, _ = handshake(srv, origin)
    assert status == 101


def test_clients_without_origin_are_accepted(make_server: Any) -> None:
    """Browsers always send Origin on a WebSocket handshake; a request without it comes from a
    program (a service, a CLI, a mobile app), which cannot ride on a victim's browser cookies."""
    srv = make_server(COOKIE_AUTH)
    status, _ = handshake(srv, None)
    assert status == 101
    assert stats_of(srv)["handshake_bad_origin"] == 0


def test_wildcard_and_empty_list_allow_any(make_server: Any) -> None:
    for cfg in ({"jwt": {"secret": SECRET}}, {"jwt": {"secret": SECRET}, "allowed_origins": ["*"]}):
        srv = make_server(cfg)
        assert handshake(srv, "https://anywhere.example")[0] == 101


def test_cli_allowed_origin_overrides_the_config(make_server: Any) -> None:
    srv = make_server({"jwt": {"secret": SECRET}}, args=["--allowed-origin", APP, "--allowed-origin", "https://b.example"])
    assert handshake(srv, APP)[0] == 101
    assert handshake(srv, "https://b.example")[0] == 101
    assert handshake(srv, "https://evil.example")[0] == 403


def test_cli_turns_permessage_deflate_on(make_server: Any) -> None:
    srv = make_server({}, args=["--permessage-deflate"])
    c = RawWS(srv.port, srv.path, {"Sec-WebSocket-Extensions": "permessage-deflate"})
    assert "Sec-WebSocket-Extensions: permessage-deflate" in c.head
    c.close()


def test_cluster_workers_take_the_cli_settings() -> None:
    """``wse run --workers`` passes the options to its workers in the environment."""
    from wse.cluster.worker import config_overrides

    env = {"WSE_ALLOWED_ORIGINS": f"{APP}\nhttps://b.example", "WSE_PERMESSAGE_DEFLATE": "1"}
    assert config_overrides(env) == {"allowed_origins": (APP, "https://b.example"), "permessage_deflate": True}
    assert config_overrides({"WSE_ALLOWED_ORIGINS": "", "WSE_PERMESSAGE_DEFLATE": "0"}) == {"allowed_origins": (), "permessage_deflate": False}
    assert config_overrides({"WSE_MAX_CONNECTIONS_PER_IP": "50"}) == {"max_connections_per_ip": 50}
    assert config_overrides({}) == {}
