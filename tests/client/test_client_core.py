"""The client against our server: the seed's snippet, send/request/on, subscriptions, auth, the
sync wrapper, and importing without the optional extras."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest

from tests.client.conftest import JWT, OurServer, token
from tests.conftest import ROOT
from wse_client import AuthError, Event, RequestError, connect, connect_sync

SNIPPET = """\
async with connect("ws://localhost:5006/wse", token="jwt...") as client:
    await client.subscribe(["notifications"])
    async for event in client:
        print(event.type, event.payload)
"""
"""The seed post's snippet, verbatim."""


def test_seed_snippet_verbatim(our_server: Any) -> None:
    """The snippet runs unchanged in a script; only the URL and token literals are the test's."""
    srv: OurServer = our_server(JWT)
    body = SNIPPET.replace("ws://localhost:5006/wse", srv.url).replace('"jwt..."', repr(token("seed")))
    script = "import asyncio\nfrom wse_client import connect\n\nasync def main():\n"
    script += textwrap.indent(body, "    ") + "\nasyncio.run(main())\n"
    proc = subprocess.Popen([sys.executable, "-u", "-c", script], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    async def publish() -> None:
        async with connect(srv.url, token=token("publisher")) as pub:
            deadline = time.monotonic() + 20
            while not lines:  # until the snippet's client is subscribed and printing
                assert time.monotonic() < deadline, "the snippet printed nothing"
                await pub.send("publish", {"topic": "notifications", "count": 1, "payload": {"probe": True}})
                await asyncio.sleep(0.2)
            # Late probe lines may still arrive: the real publications are told apart by content.
            await pub.send("publish", {"topic": "notifications", "count": 20, "payload": {"k": "v"}})

            def real() -> list[str]:
                return [x for x in lines if "probe" not in x]

            while len(real()) < 20:
                assert time.monotonic() < deadline, f"the snippet printed {lines}"
                await asyncio.sleep(0.05)
            assert real() == [f"pub {{'i': {i}, 'k': 'v'}}" for i in range(20)]

    try:
        asyncio.run(publish())
    finally:
        proc.kill()
        proc.wait()
        reader.join(5)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def test_send_request_and_handlers(our_server: Any) -> None:
    srv: OurServer = our_server(JWT)

    async def main() -> None:
        async with connect(srv.url, token=token("alice")) as client:
            got: list[Event] = []
            seen_async: list[Any] = []
            client.on("echo", got.append)

            @client.on("echo")
            async def later(ev: Event) -> None:
                seen_async.append(ev.payload)

            await client.send("echo", {"n": 1})
            ev = await client.recv(5)
            assert (ev.type, ev.payload, ev.category) == ("echo", {"n": 1}, "U")
            assert [e.payload for e in got] == [{"n": 1}]
            await asyncio.sleep(0.05)
            assert seen_async == [{"n": 1}]

            reply = await client.request("rpc", {"q": 42})
            assert reply.type == "rpc.reply" and reply.payload == {"echo": {"q": 42}, "user": "alice"}
            # Concurrent requests each get their own reply.
            replies = await asyncio.gather(*(client.request("rpc", {"q": i}) for i in range(20)))
            assert [r.payload["echo"]["q"] for r in replies] == list(range(20))
            # Replies to requests are not events: the queue holds nothing.
            with pytest.raises(TimeoutError):
                await client.recv(0.2)

            with pytest.raises(RequestError) as err:
                await client.request("rpc.fail", {})
            assert err.value.code == "NOPE"
            with pytest.raises(TimeoutError):
                await client.request("rpc.silent", {}, timeout=0.3)
            # An unknown type: the server's error reaches the stream.
            await client.send("no.such.type", {})
            ev = await client.recv(5)
            assert ev.type == "error" and ev.payload["code"] == "UNKNOWN_MESSAGE_TYPE"

    asyncio.run(main())


def test_undecodable_frames_are_counted_and_skipped(our_server: Any) -> None:
    srv: OurServer = our_server(JWT)

    async def main() -> None:
        async with connect(srv.url, token=token()) as client:
            await client.send("garbage", {})
            ev = await client.recv(5)
            assert (ev.type, ev.payload) == ("echo", {"after": "garbage"})
            assert client.stats["bad_frames"] == 5
            assert client.connected and client.stats["reconnects"] == 0

    asyncio.run(main())


def test_subscribe_acks_and_unsubscribe(our_server: Any) -> None:
    srv: OurServer = our_server({**JWT, "topics_deny": ["admin.*"]})

    async def main() -> None:
        async with connect(srv.url, token=token()) as client:
            res = await client.subscribe(["news", "admin.x"])
            assert res.success_topics == ["news"] and res.failed_topics == ["admin.x"] and not res.ok
            assert client.subscriptions == ["news"]
            await client.send("publish", {"topic": "news", "count": 3})
            assert [(await client.recv(5)).payload for _ in range(4)][:3] == [{"i": 0}, {"i": 1}, {"i": 2}]

            res = await client.unsubscribe("news")
            assert res.success_topics == ["news"]
            assert client.subscriptions == []
            await client.send("publish", {"topic": "news", "count": 3})
            ev = await client.recv(5)
            assert ev.type == "published" and ev.payload == {"queued": 0}

    asyncio.run(main())


def test_concurrent_subscribes_get_their_own_acks(our_server: Any) -> None:
    """With an async authorization hook the server's acks come out of order; each subscribe
    still gets the ack for its own topics."""
    srv: OurServer = our_server(JWT, env={"WSE_CLIENT_TEST_HOOK": "1"})

    async def main() -> None:
        async with connect(srv.url, token=token()) as client:
            topics = [f"deny.{i}" if i % 3 == 0 else f"room.{i}" for i in range(30)]
            results = await asyncio.gather(*(client.subscribe(t) for t in topics))
            for t, res in zip(topics, results):
                if t.startswith("deny."):
                    assert (res.success_topics, res.failed_topics) == ([], [t])
                else:
                    assert (res.success_topics, res.failed_topics) == ([t], [])
            assert sorted(client.subscriptions) == sorted(t for t in topics if t.startswith("room."))

    asyncio.run(main())


def test_bad_token_is_refused_without_retry(our_server: Any) -> None:
    srv: OurServer = our_server(JWT)

    async def main() -> None:
        with pytest.raises(AuthError):
            await connect(srv.url, token="not-a-jwt").connect()
        with pytest.raises(AuthError):
            await connect(srv.url).connect()

    asyncio.run(main())
    threads = threading.active_count()
    with pytest.raises(AuthError):
        connect_sync(srv.url, token="not-a-jwt")
    assert threading.active_count() == threads  # the sync client's thread is gone


def test_sync_wrapper_from_threads(our_server: Any) -> None:
    srv: OurServer = our_server(JWT)
    with connect_sync(srv.url, token=token("sync")) as client:
        assert client.connected
        assert client.subscribe("notifications").ok
        handled: list[int] = []
        client.on("pub", lambda ev: handled.append(ev.payload["i"]))
        assert client.request("rpc", {"x": 1}).payload["echo"] == {"x": 1}

        errors: list[BaseException] = []

        def worker(n: int) -> None:  # calls from several threads at once
            try:
                assert client.request("rpc", {"n": n}).payload["echo"] == {"n": n}
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert errors == []

        client.send("publish", {"topic": "notifications", "count": 5})
        got = []
        for ev in client:
            if ev.type == "pub":
                got.append(ev.payload["i"])
            if len(got) == 5:
                break
        assert got == [0, 1, 2, 3, 4]
        assert handled == [0, 1, 2, 3, 4]
        with pytest.raises(TimeoutError):
            client.recv(0.2)  # the "published" reply is next; nothing after it
            client.recv(0.2)
    assert not client.connected


NO_EXTRAS = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("cryptography", "msgpack", "orjson"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import wse_client
from wse_client import MissingDependency, connect
from wse_client._codec import dumps, loads, decode
assert loads(dumps({"a": [1, "é"]})) == {"a": [1, "é"]}
assert decode(b'{"t":"x"}', None) == {"t": "x"}
for opt in ("encryption", "msgpack"):
    try:
        connect("ws://127.0.0.1:1/wse", **{opt: True})
    except MissingDependency as exc:
        print(opt, "->", exc)
    else:
        raise SystemExit(opt + " did not complain")
"""


def test_import_without_extras() -> None:
    out = subprocess.run([sys.executable, "-c", NO_EXTRAS], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "encryption -> encryption needs the 'cryptography' package" in out.stdout
    assert "msgpack -> msgpack needs the 'msgpack' package" in out.stdout


def test_batch_keys_open_shared_frames_once_and_refuse_forgeries() -> None:
    """A ``G:`` frame opens under the batch key with its id, once; a tampered frame, an unknown
    id, a replay or a malformed key is refused (``EncryptionError``)."""
    import base64
    import os

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from wse_client._crypto import Session
    from wse_client.errors import EncryptionError

    s = Session()
    key, kid = os.urandom(32), os.urandom(8)
    s.take_batch_key({"id": kid.hex(), "key": base64.b64encode(key).decode()})

    def frame(n: int, plain: bytes, k: bytes = key, i: bytes = kid) -> bytes:
        nonce = bytes(4) + n.to_bytes(8, "big")
        return i + nonce + AESGCM(k).encrypt(nonce, plain, i)

    assert s.open_shared(frame(1, b'{"a":1}')) == b'{"a":1}'
    assert s.open_shared(frame(2, b'{"a":2}')) == b'{"a":2}'
    with pytest.raises(EncryptionError, match="replayed"):
        s.open_shared(frame(2, b'{"a":2}'))
    tampered = bytearray(frame(3, b'{"a":3}'))
    tampered[-1] ^= 1
    with pytest.raises(EncryptionError, match="authentication"):
        s.open_shared(bytes(tampered))
    # The id is authenticated: the same ciphertext announced under another id fails.
    other = os.urandom(8)
    s.take_batch_key({"id": other.hex(), "key": base64.b64encode(key).decode()})
    with pytest.raises(EncryptionError, match="authentication"):
        s.open_shared(other + frame(4, b"x")[8:])
    with pytest.raises(EncryptionError, match="never received"):
        s.open_shared(frame(1, b"x", i=os.urandom(8)))
    with pytest.raises(EncryptionError, match="too short"):
        s.open_shared(b"short")
    for bad in ({"id": "zz", "key": "AA=="}, {"id": kid.hex()}, {"id": kid.hex(), "key": base64.b64encode(b"short").decode()}):
        with pytest.raises(EncryptionError, match="malformed"):
            s.take_batch_key(bad)
    # Only the latest keys are kept.
    for _ in range(20):
        s.take_batch_key({"id": os.urandom(8).hex(), "key": base64.b64encode(os.urandom(32)).decode()})
    with pytest.raises(EncryptionError, match="never received"):
        s.open_shared(frame(9, b"x"))
