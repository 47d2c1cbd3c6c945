"""zlib (`C:`) and msgpack (`M:`) both ways, per connection, and the bad inputs around them:
a compression bomb, corrupt zlib, malformed and deeply nested msgpack and JSON."""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

import msgpack
import orjson

from tests.conftest import envelope, subscribe_msg
from tests.e2eutil import decode_frame
from tests.wsutil import open_ready, recv_type, stats, wait_stats

BIG = {"text": "lorem ipsum dolor sit amet " * 100}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def next_of(ws: Any, t: str, frames: list[Any] | None = None) -> dict[str, Any]:
    while True:
        data = await asyncio.wait_for(ws.recv(), 5)
        if frames is not None:
            frames.append(data)
        m = decode_frame(data)
        if m["t"] == t:
            return m


def test_large_publication_compressed_only_for_clients_that_accept_it(make_server: Any) -> None:
    srv = make_server({})

    async def main() -> None:
        zipped, _ = await open_ready(srv.url + "?compression=true")
        plain, _ = await open_ready(srv.url)
        for ws in (zipped, plain):
            await ws.send(subscribe_msg(["big"]))
            await recv_type(ws, "subscription_update")
        await plain.send(envelope("publish", {"topic": "big", "count": 3, "payload": BIG}))
        zf: list[Any] = []
        pf: list[Any] = []
        for _ in range(3):
            z = await next_of(zipped, "pub", zf)
            p = await next_of(plain, "pub", pf)
            assert z["p"] == p["p"] and z["p"]["text"] == BIG["text"]
        assert all(f[:2] == b"C:" for f in zf[-3:]), [f[:4] for f in zf]
        assert all(f[:1] == b"{" for f in pf[-3:])
        # Compressed frames really are smaller.
        assert len(zf[-1]) * 5 < len(pf[-1])
        # A small message is not compressed even for the zlib client.
        await zipped.send(envelope("echo", "small"))
        zf.clear()
        await next_of(zipped, "echo", zf)
        assert zf[-1][:1] == b"{"
        await zipped.close()
        await plain.close()

    run(main())


def test_client_hello_feature_turns_compression_on(make_server: Any) -> None:
    srv = make_server({})

    async def main() -> None:
        ws, _ = await open_ready(srv.url)
        await ws.send(envelope("client_hello", {"features": {"compression": True}}, c="WSE"))
        await next_of(ws, "server_hello")
        await ws.send(envelope("echo", BIG))
        frames: list[Any] = []
        assert (await next_of(ws, "echo", frames))["p"] == BIG
        assert frames[-1][:2] == b"C:"
        await ws.close()

    run(main())


def test_compression_off_never_compresses(make_server: Any) -> None:
    srv = make_server({"compression": False})

    async def main() -> None:
        ws, ready = await open_ready(srv.url + "?compression=true")
        assert ready["p"]["details"]["features"]["compression"] is False
        await ws.send(envelope("echo", BIG))
        frames: list[Any] = []
        await next_of(ws, "echo", frames)
        assert frames[-1][:1] == b"{"
        await ws.close()

    run(main())


def test_inbound_compressed_message_is_inflated(make_server: Any) -> None:
    srv = make_server({})

    async def main() -> None:
        ws, _ = await open_ready(srv.url)
        await ws.send(b"C:" + zlib.compress(envelope("echo", BIG)))
        assert (await next_of(ws, "echo"))["p"] == BIG
        await ws.close()

    run(main())


def test_compression_bomb_and_corrupt_zlib_are_refused_without_harm(make_server: Any) -> None:
    srv = make_server({"max_message_bytes": 1 << 20})

    async def main() -> None:
        other, _ = await open_ready(srv.url)
        await other.send(subscribe_msg(["bystander"]))
        await recv_type(other, "subscription_update")
        ws, _ = await open_ready(srv.url)
        # 256 MiB of one JSON string, about 250 KiB compressed: a frame under the limit.
        bomb = zlib.compressobj(9)
        data = bomb.compress(b'{"t":"echo","p":"') + bomb.compress(b"a" * (256 << 20)) + bomb.compress(b'"}') + bomb.flush()
        assert len(data) < (1 << 20)
        await ws.send(b"C:" + data)
        err = await next_of(ws, "error")
        assert err["p"]["code"] == "DECOMPRESSION_FAILED" and "max_message_bytes" in err["p"]["message"]
        await ws.send(b"C:" + b"\x78\x9cgarbage that is not deflate")
        err = await next_of(ws, "error")
        assert err["p"]["code"] == "DECOMPRESSION_FAILED"
        # The connection and its neighbour go on.
        await ws.send(envelope("publish", {"topic": "bystander", "count": 5}))
        assert [(await recv_type(other, "pub"))["p"]["i"] for _ in range(5)] == list(range(5))
        st = await stats(ws)
        assert st["engine"]["decompress_refused"] == 2
        assert st["record"]["messages"] == 0
        await ws.close()
        await other.close()

    run(main())


def test_msgpack_connection_both_ways_beside_json_subscriber(make_server: Any) -> None:
    srv = make_server({})

    async def main() -> None:
        mp, ready = await open_ready_msgpack(srv.url + "?format=msgpack")
        assert ready["p"]["details"]["features"]["msgpack"] is True
        js, _ = await open_ready(srv.url)
        for ws in (mp, js):
            await ws.send(subscribe_msg(["fmt"]))
        await next_of(mp, "subscription_update")
        await recv_type(js, "subscription_update")
        # A msgpack message from the client reaches the app like JSON would.
        await mp.send(b"M:" + msgpack.packb({"t": "publish", "p": {"topic": "fmt", "count": 4, "payload": {"b": [1, 2.5, None]}}}))
        mframes: list[Any] = []
        for i in range(4):
            m = await next_of(mp, "pub", mframes)
            j = await recv_type(js, "pub")
            assert m["p"] == j["p"] == {"i": i, "b": [1, 2.5, None]}
            assert m["tp"] == "fmt" and m["seq"] == j["seq"]
        assert all(f[:2] == b"M:" for f in mframes)
        await mp.close()
        await js.close()

    run(main())


async def open_ready_msgpack(url: str) -> tuple[Any, dict[str, Any]]:
    from websockets.asyncio.client import connect

    ws = await connect(url, max_size=None)
    data = await asyncio.wait_for(ws.recv(), 5)
    assert data[:2] == b"M:"
    ready = decode_frame(data)
    assert ready["t"] == "server_ready"
    return ws, ready


def test_malformed_and_deep_msgpack_and_json_get_clear_errors(make_server: Any) -> None:
    srv = make_server({})

    async def main() -> None:
        ws, _ = await open_ready(srv.url)
        await ws.send(b"M:\xc1")
        assert (await next_of(ws, "error"))["p"]["code"] == "INVALID_MSGPACK"
        await ws.send(b"M:" + b"\x91" * 200 + b"\xc0")
        err = await next_of(ws, "error")
        assert err["p"]["code"] == "INVALID_MSGPACK" and "depth" in err["p"]["message"]
        await ws.send(b"M:\x82\xa1t")  # truncated map
        assert (await next_of(ws, "error"))["p"]["code"] == "INVALID_MSGPACK"
        await ws.send(b'{"t":"echo","p":' + b"[" * 5000 + b"]" * 5000 + b"}")
        assert (await next_of(ws, "error"))["p"]["code"] == "INVALID_JSON"
        await ws.send(b'{"t":"echo","p":{"unterminated":')
        assert (await next_of(ws, "error"))["p"]["code"] == "INVALID_JSON"
        # Deep nesting in a message the engine itself parses (a system type).
        await ws.send(b'{"c":"WSE","t":"subscription_update","p":' + b"[" * 5000 + b"]" * 5000 + b"}")
        await ws.send(envelope("echo", "alive"))
        assert (await next_of(ws, "echo"))["p"] == "alive"
        await wait_stats(ws, lambda s: s["engine"]["msgpack_errors"] == 3)
        await ws.close()

    run(main())


def test_msgpack_is_refused_when_disabled(make_server: Any) -> None:
    srv = make_server({"msgpack": False})

    async def main() -> None:
        ws, ready = await open_ready(srv.url + "?format=msgpack")  # JSON: the request is ignored
        assert ready["p"]["details"]["features"]["msgpack"] is False
        await ws.send(envelope("echo", 1))
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["t"] == "echo"
        await ws.close()

    run(main())


def _without_id_ts(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if k not in ("id", "ts")}


def test_compact_envelope_asked_in_url_beside_full_subscriber(make_server: Any) -> None:
    srv = make_server({})

    async def main() -> None:
        compact, ready = await open_ready(srv.url + "?envelope=compact")
        full, _ = await open_ready(srv.url)
        features = ready["p"]["details"]["features"]
        assert features["compact_envelope"] is True and features["envelope"] == "full"
        for ws in (compact, full):
            await ws.send(subscribe_msg(["cmp"]))
            await recv_type(ws, "subscription_update")
        await full.send(envelope("publish", {"topic": "cmp", "count": 5, "payload": {"x": "y"}}))
        cf: list[Any] = []
        ff: list[Any] = []
        for i in range(5):
            c = await next_of(compact, "pub", cf)
            f = await next_of(full, "pub", ff)
            assert "id" not in c and "ts" not in c, c
            assert f["id"] and f["ts"]
            assert c == _without_id_ts(f) and c["p"] == {"i": i, "x": "y"} and c["tp"] == "cmp"
            # Exactly the two members are gone: 76 bytes.
            assert len(ff[-1]) - len(cf[-1]) == 76
        # Direct sends to the connection are compact too.
        await compact.send(envelope("echo", "hi"))
        e = await next_of(compact, "echo")
        assert e["p"] == "hi" and "id" not in e and "ts" not in e
        await compact.close()
        await full.close()

    run(main())


def test_client_hello_switches_the_envelope_both_ways(make_server: Any) -> None:
    srv = make_server({})

    async def main() -> None:
        ws, _ = await open_ready(srv.url)
        await ws.send(envelope("client_hello", {"features": {"envelope": "compact"}}, c="WSE"))
        await next_of(ws, "server_hello")
        await ws.send(envelope("echo", 1))
        e = await next_of(ws, "echo")
        assert "id" not in e and "ts" not in e and e["p"] == 1
        await ws.send(envelope("client_hello", {"features": {"envelope": "full"}}, c="WSE"))
        await next_of(ws, "server_hello")
        await ws.send(envelope("echo", 2))
        e = await next_of(ws, "echo")
        assert e["id"] and e["ts"] and e["p"] == 2
        await ws.close()

    run(main())


def test_compact_by_config_and_full_on_request(make_server: Any) -> None:
    srv = make_server({"compact_envelope": True})

    async def main() -> None:
        dflt, ready = await open_ready(srv.url)
        assert "id" not in ready and ready["p"]["details"]["features"]["envelope"] == "compact"
        full, ready_full = await open_ready(srv.url + "?envelope=full")
        assert ready_full["id"] and ready_full["ts"]
        for ws in (dflt, full):
            await ws.send(subscribe_msg(["cfg"]))
            await recv_type(ws, "subscription_update")
        await full.send(envelope("publish", {"topic": "cfg", "count": 2}))
        for i in range(2):
            c = await next_of(dflt, "pub")
            f = await next_of(full, "pub")
            assert "id" not in c and c == _without_id_ts(f) and c["p"] == {"i": i}
        await dflt.close()
        await full.close()

    run(main())


def test_compact_envelope_under_encryption_and_msgpack(make_server: Any) -> None:
    from tests.e2eutil import E2EClient

    srv = make_server({})

    async def main() -> None:
        enc, hello = await E2EClient.open(srv.url + "?envelope=compact")
        assert hello["t"] == "server_hello"
        mp, _ = await open_ready_msgpack(srv.url + "?envelope=compact&format=msgpack")
        await enc.send("subscription_update", {"action": "subscribe", "topics": ["sealed"]}, c="WSE")
        await enc.recv_type("subscription_update")
        await mp.send(subscribe_msg(["sealed"]))
        await next_of(mp, "subscription_update")
        await mp.send(envelope("publish", {"topic": "sealed", "count": 2}))
        for i in range(2):
            m = await enc.recv_type("pub")
            assert "id" not in m and "ts" not in m and m["p"] == {"i": i}
            # msgpack frames keep the full envelope.
            f = await next_of(mp, "pub")
            assert f["id"] and f["ts"] and f["p"] == {"i": i}
        assert all(isinstance(f, bytes) and f[:2] == b"E:" for f in enc.frames)
        await enc.close()
        await mp.close()

    run(main())
