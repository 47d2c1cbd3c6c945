"""The README's promises: `wse run` with no app serves the demo, and examples/chat.py works."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import orjson
from websockets.asyncio.client import connect

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
