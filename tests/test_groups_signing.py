"""Queue groups (each publication to one member of each group, in turn, beside ordinary
subscribers) and HMAC message signing (server envelopes signed; client signatures verified)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from typing import Any

import orjson

from tests.conftest import envelope
from tests.wsutil import open_ready, recv_type, stats, wait_stats

KEY = "k" * 40


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def group_sub(topics: list[str], group: Any) -> bytes:
    return envelope("subscription_update", {"action": "subscribe", "topics": topics, "group": group}, c="WSE")


def test_queue_group_round_robin_beside_fanout(make_server: Any) -> None:
    srv = make_server({})

    async def main() -> None:
        workers = [(await open_ready(srv.url))[0] for _ in range(3)]
        watcher, _ = await open_ready(srv.url)
        for w in workers:
            await w.send(group_sub(["jobs"], "workers"))
            assert (await recv_type(w, "subscription_update"))["p"]["success_topics"] == ["jobs"]
        await watcher.send(envelope("subscription_update", {"action": "subscribe", "topics": ["jobs"]}, c="WSE"))
        await recv_type(watcher, "subscription_update")
        await watcher.send(envelope("publish", {"topic": "jobs", "count": 30}))
        # The plain subscriber sees everything; the group shares it, each job exactly once.
        assert [(await recv_type(watcher, "pub"))["p"]["i"] for _ in range(30)] == list(range(30))
        # publish() counts a group as its members (who may each take the message).
        assert (await recv_type(watcher, "published"))["p"]["queued"] == 30 * 4
        shares = []
        for w in workers:
            shares.append([(await recv_type(w, "pub"))["p"]["i"] for _ in range(10)])
        assert sorted(i for s in shares for i in s) == list(range(30))
        assert all(len(s) == 10 for s in shares)
        # A member that leaves stops getting work; the rest take it all.
        await workers[0].close()
        await wait_stats(watcher, lambda st: st["record"]["disconnects"] >= 1, what="the member's disconnect")
        await watcher.send(envelope("publish", {"topic": "jobs", "count": 10}))
        rest = [(await recv_type(w, "pub"))["p"]["i"] for w in workers[1:] for _ in range(5)]
        assert sorted(rest) == list(range(10))
        await watcher.send(group_sub(["jobs"], 42))
        assert (await recv_type(watcher, "error"))["p"]["code"] == "INVALID_MESSAGE"
        for w in [*workers[1:], watcher]:
            await w.close()

    run(main())


def sign(obj: dict[str, Any]) -> bytes:
    body = orjson.dumps(obj)
    sig = base64.b64encode(hmac.new(KEY.encode(), body, hashlib.sha256).digest()).decode()
    return orjson.dumps({**obj, "sig": sig})


def verify(raw: bytes) -> bool:
    text = raw.rstrip()
    i = text.rfind(b',"sig":"')
    signed = text[:i] + b"}"
    sig = orjson.loads(text)["sig"]
    want = base64.b64encode(hmac.new(KEY.encode(), signed, hashlib.sha256).digest()).decode()
    return hmac.compare_digest(sig, want)


def test_server_signs_and_verifies(make_server: Any) -> None:
    srv = make_server({"signing_key": KEY, "require_signatures": True})

    async def main() -> None:
        ws, _ = await open_ready(srv.url)
        await ws.send(sign({"t": "echo", "p": {"x": 1}}))
        raw = await asyncio.wait_for(ws.recv(), 5)
        assert orjson.loads(raw)["t"] == "echo" and verify(raw)
        # Unsigned and forged application messages are refused; system messages need no sig.
        await ws.send(envelope("echo", 2))
        err = await recv_type(ws, "error")
        assert err["p"]["code"] == "INVALID_SIGNATURE" and "not signed" in err["p"]["message"]
        forged = orjson.loads(sign({"t": "echo", "p": 3}))
        forged["p"] = 4
        await ws.send(orjson.dumps(forged))
        assert (await recv_type(ws, "error"))["p"]["code"] == "INVALID_SIGNATURE"
        await ws.send(sign({"t": "stats", "p": {}}))
        st = (await recv_type(ws, "stats"))["p"]
        assert st["engine"]["signature_failures"] == 2 and st["record"]["messages"] == 1
        await ws.close()

    run(main())
