"""The README's promises: `wse run` with no app serves the demo, and examples/chat.py works."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import ROOT, envelope


def start(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "wse_cli.main", "run", *args, "--port", "0", "--log-level", "warning"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("wse: serving ws://"), line
    return proc, line.split()[-1]


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    assert proc.wait(10) == 0
    assert proc.stdout is not None
    proc.stdout.close()


async def recv_type(ws: object, t: str) -> dict:
    while True:
        m = orjson.loads(await ws.recv())  # type: ignore[attr-defined]
        if m["t"] == t:
            return m


def test_quick_start_demo_echo_and_chat() -> None:
    proc, url = start()
    try:
        async def main() -> None:
            async with connect(url) as a, connect(url) as b:
                await recv_type(a, "server_ready")
                await recv_type(b, "server_ready")
                await a.send(envelope("echo", {"hello": 1}))
                assert (await recv_type(a, "echo"))["p"] == {"hello": 1}
                await a.send(envelope("chat", {"text": "hi"}))
                got = await recv_type(b, "chat")
                assert got["tp"] == "lobby" and got["p"]["p"] == {"text": "hi"}

        asyncio.run(main())
    finally:
        stop(proc)


def test_chat_example_rooms_and_presence() -> None:
    proc, url = start("examples.chat:app")
    try:
        async def main() -> None:
            async with connect(url) as a:
                joined = await recv_type(a, "presence")
                assert joined["p"]["event"] == "joined"
                async with connect(url) as b:
                    assert (await recv_type(a, "presence"))["p"]["event"] == "joined"
                    await b.send(envelope("subscription_update", {"action": "subscribe", "topics": ["room1"]}, c="WSE"))
                    assert (await recv_type(b, "subscription_update"))["p"]["success_topics"] == ["room1"]
                    await a.send(envelope("chat.send", {"room": "room1", "text": "to room1"}))
                    msg = await recv_type(b, "chat.message")
                    assert msg["p"]["text"] == "to room1" and msg["tp"] == "room1"
                left = await recv_type(a, "presence")
                assert left["p"]["event"] == "left" and left["p"]["code"] == 1000

        asyncio.run(main())
    finally:
        stop(proc)


def test_run_rejects_a_target_that_is_not_an_app() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "wse_cli.main", "run", "json:dumps", "--port", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    assert out.returncode != 0
    assert "not a wse.WSEApp" in out.stderr


# ---- examples/fastapi_app.py: router mode, and the same module under `wse run` -------------------

EXAMPLE_SECRET = "example-secret-0123456789abcdef-0123456789"


async def drive_example(url: str) -> None:
    """What both modes must do alike: JWT refusal, identity, a handler's publication, echo."""
    from tests.conftest import make_token

    async with connect(url) as anon:
        err = orjson.loads(await anon.recv())
        assert err["t"] == "error" and err["p"]["code"] == "AUTH_REQUIRED"
        with pytest.raises(ConnectionClosed):
            await anon.recv()
        assert (anon.close_code, anon.close_reason) == (4401, "missing")
    auth = lambda sub: {"Authorization": f"Bearer {make_token({'sub': sub}, secret=EXAMPLE_SECRET)}"}  # noqa: E731
    async with connect(url, additional_headers=auth("ann")) as a, connect(url, additional_headers=auth("ben")) as b:
        assert (await recv_type(a, "server_ready"))["p"]["details"]["user_id"] == "ann"
        await recv_type(b, "server_ready")
        await b.send(envelope("subscription_update", {"action": "subscribe", "topics": ["chat"]}, c="WSE"))
        await recv_type(b, "subscription_update")
        await a.send(envelope("chat.send", {"text": "hello"}))
        got = await recv_type(b, "chat.message")
        assert got["tp"] == "chat" and got["p"] == {"from": "ann", "text": "hello"}
        await a.send(envelope("echo", {"x": 1}))
        assert (await recv_type(a, "echo"))["p"] == {"x": 1}


def test_fastapi_example_under_uvicorn() -> None:
    from tests.conftest import make_token
    from tests.e2eutil import E2EClient
    from tests.test_router import http_json, run_reference
    from tests.uvicornutil import UvicornProc

    srv = UvicornProc("examples.fastapi_app:api", env={"WSE_JWT_SECRET": EXAMPLE_SECRET})
    try:
        token = make_token({"sub": "eve"}, secret=EXAMPLE_SECRET)

        async def main() -> None:
            await drive_example(srv.url)
            # An HTTP route of the same app publishes to WebSocket subscribers, also encrypted ones.
            c, hello = await E2EClient.open(srv.url, additional_headers={"Authorization": f"Bearer {token}"})
            assert c.key is not None and hello["p"]["encryption_public_key"]
            await c.send("subscription_update", {"action": "subscribe", "topics": ["news"]}, c="WSE")
            await c.recv_type("subscription_update")
            assert await asyncio.to_thread(http_json, f"{srv.http}/news", {"title": "t1"}) == {"subscribers": 1}
            news = await c.recv_type("news")
            assert news["tp"] == "news" and news["p"] == {"title": "t1"}
            await c.send("echo", {"sealed": True})
            assert (await c.recv_type("echo"))["p"] == {"sealed": True}
            assert all(isinstance(f, bytes) and f[:2] == b"E:" for f in c.frames)
            await c.close()

        asyncio.run(main())
        # The published client, plain and encrypted, against the example.
        for extra in ((), ("encrypted",)):
            r = run_reference("ref_router.py", srv.url, srv.http, token, "10", *extra)
            assert r["news"] == list(range(10)) and r["echo"] == [{"hello": "router"}], r
        assert http_json(f"{srv.http}/stats")["connections"] == 0
    finally:
        code = srv.stop()
        out = srv.output()
        srv.log.close()
    assert code in (0, -15) and "Traceback" not in out, out


def test_fastapi_example_module_runs_under_wse_run_unchanged() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "wse_cli.main", "run", "examples.fastapi_app:ws", "--port", "0", "--log-level", "warning"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT), WSE_JWT_SECRET=EXAMPLE_SECRET),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("wse: serving ws://"), line
    try:
        asyncio.run(drive_example(line.split()[-1]))
    finally:
        stop(proc)
