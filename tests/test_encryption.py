"""E2E encryption: key exchange, sealed traffic both ways, refusals that leave the connection
working, per-connection sealing of topic publications, rotation, and `encryption="required"`."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import envelope, subscribe_msg
from tests.e2eutil import E2EClient, decode_frame
from tests.wsutil import open_ready, recv_type, stats, wait_stats


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_exchange_and_sealed_round_trip(make_server: Any) -> None:
    srv = make_server({})

    async def main() -> None:
        c, hello = await E2EClient.open(srv.url)
        assert hello["t"] == "server_hello" and c.key is not None
        assert len(base64.b64decode(hello["p"]["encryption_public_key"])) == 65
        await c.send("echo", {"secret": "s3cr3t"})
        echo = await c.recv_type("echo")
        assert echo["p"] == {"secret": "s3cr3t"}
        # Everything after server_hello was sealed: no frame carries the plaintext.
        assert c.frames and all(isinstance(f, bytes) and f[:2] == b"E:" for f in c.frames)
        assert all(b"s3cr3t" not in f for f in c.frames if isinstance(f, bytes))
        # System messages are sealed too (the subscription ack).
        await c.send("subscription_update", {"action": "subscribe", "topics": ["t"]}, c="WSE")
        ack = await c.recv_type("subscription_update")
        assert ack["p"]["success_topics"] == ["t"]
        assert all(isinstance(f, bytes) and f[:2] == b"E:" for f in c.frames)
        await c.close()

    run(main())


def test_topic_publication_sealed_per_connection_plain_for_others(make_server: Any) -> None:
    srv = make_server({})

    async def main() -> None:
        enc, _ = await E2EClient.open(srv.url)
        plain, _ = await open_ready(srv.url)
        await enc.send("subscription_update", {"action": "subscribe", "topics": ["mixed"]}, c="WSE")
        await enc.recv_type("subscription_update")
        await plain.send(subscribe_msg(["mixed"]))
        await recv_type(plain, "subscription_update")
        await plain.send(envelope("publish", {"topic": "mixed", "count": 20, "payload": {"k": "v"}}))
        got_plain = [(await recv_type(plain, "pub"))["p"]["i"] for _ in range(20)]
        got_enc = [(await enc.recv_type("pub"))["p"]["i"] for _ in range(20)]
        assert got_plain == got_enc == list(range(20))
        assert all(f[:2] == b"E:" for f in enc.frames if isinstance(f, bytes))
        assert not any(isinstance(f, str) for f in enc.frames)
        await enc.close()
        await plain.close()

    run(main())


def test_batch_keys_seal_each_publication_once_for_its_subscribers(make_server: Any) -> None:
    """Subscribers that announce batch keys get the topic's key once, sealed for each of them,
    then the same G: frames; when one leaves, the topic takes a new key that only those still
    there receive. One that does not announce them gets every frame sealed for itself."""
    srv = make_server({})

    async def main() -> None:
        shared = [(await E2EClient.open(srv.url, batch_keys=True))[0] for _ in range(3)]
        own, _ = await E2EClient.open(srv.url)
        plain, _ = await open_ready(srv.url)
        for c in [*shared, own]:
            await c.send("subscription_update", {"action": "subscribe", "topics": ["burst"]}, c="WSE")
            await c.recv_type("subscription_update")
        await plain.send(subscribe_msg(["burst"]))
        await recv_type(plain, "subscription_update")

        async def burst(n: int, readers: list[E2EClient]) -> None:
            await plain.send(envelope("publish", {"topic": "burst", "count": n, "payload": {"secret": "s3cr3t"}}))
            for c in readers:
                assert [(await c.recv_type("pub"))["p"]["i"] for _ in range(n)] == list(range(n))
            assert [(await recv_type(plain, "pub"))["p"]["i"] for _ in range(n)] == list(range(n))

        await burst(300, [*shared, own])
        for c in [*shared, own]:
            assert not any(isinstance(f, str) for f in c.frames)
            assert all(b"s3cr3t" not in f for f in c.frames if isinstance(f, bytes))
        # One key for the topic, sent once to each, sealed for each (different bytes).
        assert [len(c.batch) for c in shared] == [1, 1, 1]
        assert len({c.key_frames[0] for c in shared}) == 3
        first = next(iter(shared[0].batch))
        # The publications are the same G: frames for every subscriber: sealed once.
        g = [[f for f in c.frames if isinstance(f, bytes) and f[:2] == b"G:"] for c in shared]
        assert g[0] and g[0] == g[1] == g[2]
        assert all(f[2:10] == first for f in g[0])
        assert not any(f[:2] == b"G:" for f in own.frames if isinstance(f, bytes))

        # One leaves: what follows is sealed under a new key, sent to those still there only.
        gone = shared.pop()
        await gone.send("subscription_update", {"action": "unsubscribe", "topics": ["burst"]}, c="WSE")
        await gone.recv_type("subscription_update")
        before = [len(c.frames) for c in shared]
        await burst(50, [*shared, own])
        assert [len(c.batch) for c in shared] == [2, 2]
        later = [[f for f in c.frames[n:] if isinstance(f, bytes) and f[:2] == b"G:"] for c, n in zip(shared, before)]
        assert later[0] and later[0] == later[1]
        assert all(f[2:10] != first and f[2:10] in shared[0].batch for f in later[0])
        assert len(gone.batch) == 1
        for c in [*shared, gone, own]:
            await c.close()
        await plain.close()

    run(main())


def test_batch_keys_off_seals_per_connection(make_server: Any) -> None:
    srv = make_server({"batch_keys": False})

    async def main() -> None:
        clients = [(await E2EClient.open(srv.url, batch_keys=True)) for _ in range(2)]
        assert clients[0][1]["p"]["features"]["batch_keys"] is False
        for c, _ in clients:
            await c.send("subscription_update", {"action": "subscribe", "topics": ["b"]}, c="WSE")
            await c.recv_type("subscription_update")
        await clients[0][0].send("publish", {"topic": "b", "count": 200})
        for c, _ in clients:
            assert [(await c.recv_type("pub"))["p"]["i"] for _ in range(200)] == list(range(200))
            assert not c.batch and all(f[:2] == b"E:" for f in c.frames if isinstance(f, bytes))
            await c.close()

    run(main())


def test_tampered_truncated_replayed_frames_are_refused_and_counted(make_server: Any) -> None:
    srv = make_server({})

    async def main() -> None:
        c, _ = await E2EClient.open(srv.url)
        good = await c.send("count")
        await c.send("echo", 1)
        assert (await c.recv_type("echo"))["p"] == 1
        # Replay of a frame the server already accepted.
        await c.ws.send(good)
        err = await c.recv_type("error")
        assert err["p"]["code"] == "DECRYPTION_FAILED" and "replayed" in err["p"]["message"]
        # Tampered ciphertext.
        bad = bytearray(c.seal(envelope("count")))
        bad[-20] ^= 0x01
        await c.ws.send(bytes(bad))
        err = await c.recv_type("error")
        assert err["p"]["code"] == "DECRYPTION_FAILED" and "authentication" in err["p"]["message"]
        # Truncated below IV + tag.
        await c.ws.send(b"E:" + bytes(10))
        err = await c.recv_type("error")
        assert err["p"]["code"] == "DECRYPTION_FAILED" and "short" in err["p"]["message"]
        # A frame sealed under some other key.
        await c.ws.send(c.seal(envelope("count"), key=bytes(32)))
        assert (await c.recv_type("error"))["p"]["code"] == "DECRYPTION_FAILED"
        # The connection still works, and the replayed message reached Python once.
        await c.send("stats")
        st = (await c.recv_type("stats"))["p"]
        assert st["record"]["messages"] == 2, st["record"]  # one count + one echo
        eng = st["engine"]
        assert eng["replays_refused"] == 1 and eng["decrypt_failures"] == 3, eng
        await c.close()

    run(main())


def test_bad_public_key_gets_key_exchange_failed_and_stays_usable(make_server: Any) -> None:
    srv = make_server({})

    async def main() -> None:
        for key in ["not-base64!", base64.b64encode(b"\x04" + bytes(64)).decode(), base64.b64encode(bytes(33)).decode()]:
            c, msg = await E2EClient.open(srv.url, public_key=key)
            assert msg["t"] == "error" and msg["p"]["code"] == "KEY_EXCHANGE_FAILED", msg
            assert c.key is None
            # Plaintext traffic still flows.
            await c.ws.send(envelope("echo", "still here"))
            while True:
                m = decode_frame(await asyncio.wait_for(c.ws.recv(), 5))
                if m["t"] == "echo":
                    break
            assert m["p"] == "still here"
            await c.close()
        ws, _ = await open_ready(srv.url)
        st = await stats(ws)
        assert st["engine"]["key_exchange_failures"] == 3
        await ws.close()

    run(main())


def test_rotation_rekeys_and_old_key_is_accepted_for_grace(make_server: Any) -> None:
    srv = make_server({"key_rotation_ms": 1000, "key_rotation_grace_ms": 60000})

    async def main() -> None:
        c, hello = await E2EClient.open(srv.url, rotation=True)
        assert hello["p"]["key_rotation_ms"] == 1000
        first_key = c.key
        rot = await c.recv_type("key_rotation", timeout=5)
        assert rot["p"]["generation"] == 1 and c.key != first_key
        # The server now seals under the new key (decode_frame would fail otherwise).
        await c.send("echo", "after rotation")
        assert (await c.recv_type("echo"))["p"] == "after rotation"
        # A frame still under the old key is accepted during the grace time.
        await c.ws.send(c.seal(envelope("echo", "old key"), key=first_key))
        assert (await c.recv_type("echo"))["p"] == "old key"
        rot2 = await c.recv_type("key_rotation", timeout=5)
        assert rot2["p"]["generation"] == 2
        await c.send("stats")
        st = (await c.recv_type("stats"))["p"]["engine"]
        assert st["key_rotations"] >= 2
        await c.close()

    run(main())


def test_no_rotation_for_clients_that_do_not_announce_it(make_server: Any) -> None:
    srv = make_server({"key_rotation_ms": 500})

    async def main() -> None:
        c, hello = await E2EClient.open(srv.url, rotation=False)
        assert hello["p"]["key_rotation_ms"] == 0
        await asyncio.sleep(2.2)  # several rotation periods pass with no rotation: an absence, so a window
        await c.send("echo", "same key")
        assert (await c.recv_type("echo"))["p"] == "same key"
        assert not [f for f in c.frames if decode_frame(f, c.key)["t"] == "key_rotation"]
        await c.close()

    run(main())


def test_required_holds_traffic_until_exchange_and_refuses_plaintext(make_server: Any) -> None:
    srv = make_server({"encryption": "required", "key_exchange_timeout_ms": 1500}, env={"WSE_TEST_WELCOME": "1"})

    async def main() -> None:
        # The welcome the app sends at connect waits for the key, then arrives sealed.
        c, hello = await E2EClient.open(srv.url)
        assert hello["p"]["features"]["encryption_required"] is True
        welcome = await c.recv_type("welcome")
        assert "id" in welcome["p"]
        assert all(isinstance(f, bytes) and f[:2] == b"E:" for f in c.frames)
        await c.close()

        # Plaintext application messages are refused; the connection is closed 4403 for never keying.
        ws, _ = await open_ready(srv.url)
        await ws.send(envelope("echo", "plain"))
        while True:
            m = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
            if m["t"] == "error":
                break
        assert m["p"]["code"] == "ENCRYPTION_REQUIRED"
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 4403

        c2, _ = await E2EClient.open(srv.url)
        await c2.recv_type("welcome")
        await c2.send("stats")
        st = (await c2.recv_type("stats"))["p"]
        assert st["engine"]["plaintext_refused"] == 1 and st["engine"]["key_exchange_timeouts"] == 1
        assert st["record"]["messages"] == 0  # the plaintext echo never reached Python
        await c2.close()

    run(main())


def test_encryption_off_answers_without_key(make_server: Any) -> None:
    srv = make_server({"encryption": "off"})

    async def main() -> None:
        c, hello = await E2EClient.open(srv.url)
        assert hello["t"] == "server_hello" and "encryption_public_key" not in hello["p"]
        assert hello["p"]["features"]["encryption"] is False and c.key is None
        await c.close()

    run(main())


def test_sealed_frames_do_not_disturb_other_connections(make_server: Any) -> None:
    srv = make_server({})

    async def main() -> None:
        c, _ = await E2EClient.open(srv.url)
        plain, _ = await open_ready(srv.url)
        await plain.send(subscribe_msg(["calm"]))
        await recv_type(plain, "subscription_update")
        for _ in range(50):
            await c.ws.send(b"E:" + bytes(40))  # garbage sealed frames
        await plain.send(envelope("publish", {"topic": "calm", "count": 10}))
        assert [(await recv_type(plain, "pub"))["p"]["i"] for _ in range(10)] == list(range(10))
        await wait_stats(plain, lambda s: s["engine"]["decrypt_failures"] == 50)
        await c.close()
        await plain.close()

    run(main())
