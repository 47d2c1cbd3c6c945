"""Router mode: the suites' test application, unchanged, mounted in FastAPI with
``create_wse_router`` and served by uvicorn on the app's own port; driven by real clients
(python ``websockets``, the test E2E client, and the published wse-client 2.5.1)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import ROOT, SECRET, envelope, make_token
from tests.e2eutil import E2EClient, decode_frame
from tests.test_reference_client import reference_script
from tests.uvicornutil import UvicornProc
from tests.wsutil import open_ready, recv_json, recv_type, stats, wait_stats

TARGET = "tests.apps.router_app:api"


@pytest.fixture
def make_router() -> Iterator[Any]:
    started: list[UvicornProc] = []

    def start(config: dict[str, Any] | None = None) -> UvicornProc:
        u = UvicornProc(TARGET, config)
        started.append(u)
        return u

    yield start
    for u in started:
        code = u.stop()
        out = u.output()
        u.log.close()
        # uvicorn re-raises SIGTERM after its graceful shutdown.
        assert code in (0, -15) and "Application shutdown complete" in out, out
        # uvicorn's websockets-sansio protocol logs this after a denial response (403/503) it
        # did send: it does not count the HTTP response as the end of the handshake.
        out = out.replace("ERROR:    ASGI callable returned without completing handshake.", "")
        assert "Traceback" not in out and "ERROR" not in out, out


def http_json(url: str, body: Any = None) -> Any:
    data = None if body is None else orjson.dumps(body)
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return orjson.loads(r.read())


def sub(topics: list[str]) -> bytes:
    return envelope("subscription_update", {"action": "subscribe", "topics": topics}, c="WSE")


def test_ready_echo_topics_and_http_publish_on_one_port(make_router: Any) -> None:
    srv = make_router()

    async def main() -> None:
        ws, ready = await open_ready(srv.url)
        details = ready["p"]["details"]
        assert details["protocol_version"] == 2 and details["user_id"] is None
        await ws.send(envelope("echo", {"a": [1, 2]}))
        assert (await recv_type(ws, "echo"))["p"] == {"a": [1, 2]}
        await ws.send(sub(["news", ""]))
        ack = await recv_type(ws, "subscription_update")
        assert ack["p"]["success_topics"] == ["news"] and ack["p"]["failed_topics"] == [""]
        # An HTTP route of the same FastAPI app publishes; the WebSocket subscriber gets it.
        assert await asyncio.to_thread(http_json, f"{srv.http}/publish/news", {"k": "v"}) == {"subscribers": 1}
        got = await recv_type(ws, "http")
        assert got["tp"] == "news" and got["p"] == {"k": "v"} and got["seq"] == 1
        # A handler's publications reach every subscriber, in order.
        async with connect(srv.url) as other:
            await recv_type(other, "server_ready")
            await other.send(sub(["news"]))
            await recv_type(other, "subscription_update")
            await ws.send(envelope("publish", {"topic": "news", "count": 20}))
            for w in (ws, other):
                assert [(await recv_type(w, "pub"))["p"]["i"] for _ in range(20)] == list(range(20))
            health = await asyncio.to_thread(http_json, f"{srv.http}/health")
            assert health == {"ok": True, "connections": 2}
        await ws.close()

    asyncio.run(main())


def test_jwt_in_the_upgrade_refusals_and_identity(make_router: Any) -> None:
    srv = make_router({"jwt": {"secret": SECRET, "query_param": True}})

    async def refused(**kw: Any) -> tuple[dict[str, Any], int | None, str | None]:
        async with connect(srv.url, **kw) as ws:
            err = await recv_json(ws)
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            return err, ws.close_code, ws.close_reason

    async def main() -> None:
        err, code, reason = await refused()
        assert (err["t"], err["p"]["code"], code, reason) == ("error", "AUTH_REQUIRED", 4401, "missing")
        expired = make_token(exp_in=-120)
        err, code, reason = await refused(additional_headers={"Authorization": f"Bearer {expired}"})
        assert (err["p"]["code"], code, reason) == ("AUTH_FAILED", 4401, "expired")
        forged = make_token(secret="another-secret-0123456789abcdef-xyz")
        err, code, reason = await refused(additional_headers={"Cookie": f"access_token={forged}"})
        assert (code, reason) == (4401, "signature")
        # Accepted from each place the handshake looks: header, cookie, query.
        for kw, url in (
            ({"additional_headers": {"Authorization": f"Bearer {make_token({'sub': 'alice'})}"}}, srv.url),
            ({"additional_headers": {"Cookie": f"a=b; access_token={make_token({'sub': 'bob'})}"}}, srv.url),
            ({}, f"{srv.url}?token={make_token({'sub': 'carol'})}"),
        ):
            ws, ready = await open_ready(url, **kw)
            assert ready["p"]["details"]["user_id"] in ("alice", "bob", "carol")
            st = await stats(ws)
            await ws.close()
        # Refused connections never reached the application; the engine counted them.
        assert st["record"]["connects"] == 3 and [u[0] for u in st["record"]["users"]] == ["alice", "bob", "carol"]
        assert (st["engine"]["auth_missing"], st["engine"]["auth_expired"], st["engine"]["auth_failed"]) == (1, 1, 1)

    asyncio.run(main())


def test_origin_and_connection_limit_refuse_the_upgrade(make_router: Any) -> None:
    srv = make_router({"allowed_origins": ["https://app.example"], "max_connections": 1})

    async def main() -> None:
        with pytest.raises(InvalidStatus) as e:
            await connect(srv.url, origin="https://evil.example")  # type: ignore[arg-type]
        assert e.value.response.status_code == 403
        ws, _ = await open_ready(srv.url, origin="https://app.example")
        with pytest.raises(InvalidStatus) as e:
            await connect(srv.url, origin="https://app.example")  # type: ignore[arg-type]
        assert e.value.response.status_code == 503
        st = await stats(ws)
        assert st["engine"]["handshake_bad_origin"] == 1 and st["engine"]["connections_rejected_limit"] == 1
        await ws.close()
        # The slot is free again once the connection ended.
        for _ in range(200):
            if (await asyncio.to_thread(http_json, f"{srv.http}/health"))["connections"] == 0:
                break
            await asyncio.sleep(0.02)
        ws, _ = await open_ready(srv.url, origin="https://app.example")
        await ws.close()

    asyncio.run(main())


def test_close_codes_reach_the_application_both_ways(make_router: Any) -> None:
    srv = make_router()

    async def main() -> None:
        ws, _ = await open_ready(srv.url)
        await ws.close(4000, "client says bye")
        ws, _ = await open_ready(srv.url)
        await ws.send(envelope("kick", {"topic": "t", "count": 0, "code": 4011}))
        with pytest.raises(ConnectionClosed):
            while True:
                await ws.recv()
        assert (ws.close_code, ws.close_reason) == (4011, "kicked by test")
        ws, _ = await open_ready(srv.url)
        await ws.send(b"x" * (2 << 20))  # over max_message_bytes (1 MiB)
        with pytest.raises(ConnectionClosed):
            while True:
                await ws.recv()
        assert ws.close_code == 1009
        ws, _ = await open_ready(srv.url)
        st = await wait_stats(ws, lambda s: s["record"]["disconnects"] == 3, what="three disconnects")
        assert st["record"]["codes"] == {"4000": 1, "4011": 1, "1009": 1}
        assert st["engine"]["oversized_messages"] == 1
        await ws.close()

    asyncio.run(main())


def test_backpressure_holds_messages_and_loses_none(make_router: Any) -> None:
    srv = make_router({"inbound_queue": 4})

    async def main() -> None:
        ws, _ = await open_ready(srv.url)
        await ws.send(envelope("slow", {"seconds": 0.5}))  # the drain loop blocks; the queue fills
        for i in range(300):
            await ws.send(envelope("echo", {"i": i}))
        assert [(await recv_type(ws, "echo"))["p"]["i"] for _ in range(300)] == list(range(300))
        st = await stats(ws)
        assert st["record"]["messages"] == 300
        assert st["engine"]["backpressure_waits"] >= 1 and st["engine"]["backpressure_ns"] > 0
        await ws.close()

    asyncio.run(main())


def test_keepalive_and_idle_timeout_run_on_the_engine(make_router: Any) -> None:
    srv = make_router({"ping_interval_ms": 300, "idle_timeout_ms": 2500})

    async def main() -> None:
        ws, _ = await open_ready(srv.url)
        ping = await asyncio.wait_for(ws.recv(), 5)
        assert isinstance(ping, str) and orjson.loads(ping)["t"] == "ping"  # keepalive is text
        # This client never answers the JSON ping: the engine closes it when idle.
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        assert (ws.close_code, ws.close_reason) == (1000, "idle timeout")

    asyncio.run(main())


def test_encrypted_compressed_and_msgpack_connections(make_router: Any) -> None:
    srv = make_router()

    async def main() -> None:
        c, hello = await E2EClient.open(srv.url)
        assert hello["t"] == "server_hello" and c.key is not None
        await c.send("subscription_update", {"action": "subscribe", "topics": ["secret"]}, c="WSE")
        await c.recv_type("subscription_update")
        await c.send("echo", {"hidden": "text"})
        assert (await c.recv_type("echo"))["p"] == {"hidden": "text"}
        await c.send("publish", {"topic": "secret", "count": 3})
        assert [(await c.recv_type("pub"))["p"]["i"] for _ in range(3)] == [0, 1, 2]
        # Everything after server_hello came sealed.
        assert c.frames and all(isinstance(f, bytes) and f[:2] == b"E:" for f in c.frames)
        await c.close()

        async with connect(f"{srv.url}?format=msgpack") as ws:
            first = await ws.recv()
            assert isinstance(first, bytes) and first[:2] == b"M:"
            await ws.send(envelope("echo", {"m": 1}))
            while (msg := decode_frame(await ws.recv()))["t"] != "echo":
                pass
            assert msg["p"] == {"m": 1}

        async with connect(f"{srv.url}?compression=true") as ws:
            await ws.recv()
            big = {"text": "lorem ipsum " * 400}
            await ws.send(envelope("echo", big))
            while True:
                raw = await ws.recv()
                if decode_frame(raw)["t"] == "echo":
                    break
            assert isinstance(raw, bytes) and raw[:2] == b"C:" and decode_frame(raw)["p"] == big

        async with connect(srv.url) as ws:
            await ws.recv()
            st = await stats(ws)
        e = st["engine"]
        assert e["key_exchanges"] == 1 and e["sealed_in"] >= 3 and e["sealed_out"] >= 5
        assert e["decrypt_failures"] == 0 and e["msgpack_out"] >= 1 and e["compressed_out"] >= 1

    asyncio.run(main())


def run_reference(script: str, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        ["bash", str(reference_script()), "python", f"tests/interop/{script}", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_published_client_through_the_router(make_router: Any) -> None:
    srv = make_router({"jwt": {"secret": SECRET}, "recovery": True})
    token = make_token({"sub": "ref-user"})
    r = run_reference("ref_client.py", srv.url, token, "50")
    assert [m["payload"]["i"] for m in r["received"]] == list(range(50))
    assert all(m["topic"] == "notifications" for m in r["received"])
    r = run_reference("ref_features.py", "encrypted", srv.url, token)
    assert [m["i"] for m in r["received"]] == list(range(5))
    r = run_reference("ref_features.py", "recovery", srv.url, token)
    assert [m["i"] for m in r["received"]] == list(range(12)), r
    # "feat" already had the encrypted run's 5 publications: offsets go on from there, no gap.
    assert [m["o"] for m in r["received"]] == list(range(6, 18))

    async def engine() -> dict[str, Any]:
        hdr = {"Authorization": f"Bearer {make_token({'sub': 'probe'})}"}
        ws, _ = await open_ready(srv.url, additional_headers=hdr)
        st = await stats(ws)
        await ws.close()
        return st["engine"]  # type: ignore[no-any-return]

    st = asyncio.run(engine())
    assert st["key_exchanges"] == 1 and st["sealed_in"] >= 1 and st["decrypt_failures"] == 0
    assert st["recovery_recovered"] == 1 and st["recovered_messages"] == 7


def test_router_from_a_config_in_process_and_detach_closes_with_1001() -> None:
    import uvicorn
    from fastapi import FastAPI

    from wse import Connection, Message, WSEApp, WSEConfig
    from wse.fastapi import create_wse_router

    router = create_wse_router(WSEConfig(path="/ws/live"))
    app = router.wse
    assert isinstance(app, WSEApp)
    seen: list[int] = []

    @app.on("echo")
    def echo(conn: Connection, msg: Message) -> None:
        app.send(conn, msg.payload, type="echo")

    @app.on_disconnect
    def gone(conn: Connection, code: int) -> None:
        seen.append(code)

    api = FastAPI()
    api.include_router(router)

    async def main() -> None:
        server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=0, log_level="warning"))
        serving = asyncio.ensure_future(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        with pytest.raises(InvalidStatus):
            await connect(f"ws://127.0.0.1:{port}/wse")  # only the configured path is served
        ws, _ = await open_ready(f"ws://127.0.0.1:{port}/ws/live")
        await ws.send(envelope("echo", "hi"))
        assert (await recv_type(ws, "echo"))["p"] == "hi"
        # Detaching (what the router's lifespan does at shutdown) closes what is still open.
        await app.detach()
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert (ws.close_code, ws.close_reason) == (1001, "server shutting down")
        assert seen == [1001]
        with pytest.raises(RuntimeError, match="not running"):
            app.publish("t", {})
        server.should_exit = True
        await serving

    asyncio.run(main())


def test_text_frames_setting_is_kept_through_the_router(make_router: Any) -> None:
    srv = make_router({"text_frames": True, "jwt": {"secret": SECRET, "required": False}})

    async def main() -> None:
        async with connect(srv.url, additional_headers={"Authorization": "Bearer not.a.token"}) as ws:
            err = await ws.recv()
            assert isinstance(err, str) and orjson.loads(err)["p"]["code"] == "AUTH_FAILED"
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 4401
        async with connect(srv.url) as ws:  # no token: anonymous, as configured
            ready = await ws.recv()
            assert isinstance(ready, str) and orjson.loads(ready)["p"]["details"]["user_id"] is None
            await ws.send(envelope("echo", {"t": 1}))
            echo = await ws.recv()
            assert isinstance(echo, str) and orjson.loads(echo)["p"] == {"t": 1}
            await ws.send("plain text, not JSON")
            assert await ws.recv() == "plain text, not JSON"  # raw messages reach on_raw
            await ws.send(b"\x00\x01raw")
            assert await ws.recv() == b"\x00\x01raw"

    asyncio.run(main())
