"""The drain queue between the engine and Python, and subscriptions.

- Under a flood of data, connect and disconnect events all arrive, and no data is lost: a full
  queue stops the engine reading sockets (backpressure), it never drops.
- Events reach Python in batches.
- A handler that blocks the loop makes the server stop reading, and nothing is lost.
- Subscriptions: unsubscribe, the configured topic ACL, the token's topic ACL, the Python
  authorization hook and the per-connection topic limit.
"""

from __future__ import annotations

import asyncio
import select
import socket
import time
from typing import Any

import orjson

from tests.conftest import SECRET, ServerProc, envelope, make_token, subscribe_msg
from tests.wsutil import OP_CLOSE, OP_TEXT, RawWS, client_frame, open_ready, recv_json, recv_type, stats, stats_when, wait_stats

# ---- lifecycle and data under load ------------------------------------------------------------------


def test_lifecycle_events_survive_a_data_flood(make_server: Any) -> None:
    senders, per_sender, churners = 50, 500, 50
    srv = make_server({"inbound_queue": 64})

    async def sender(k: int) -> None:
        ws, _ = await open_ready(srv.url)
        for i in range(per_sender):
            await ws.send(envelope("count", {"k": k, "i": i}))
        await ws.close()

    async def churn(n: int) -> None:
        for _ in range(n):
            ws, _ = await open_ready(srv.url)
            await ws.close()

    async def main() -> dict[str, Any]:
        watcher, _ = await open_ready(srv.url)
        await asyncio.gather(*(sender(k) for k in range(senders)), *(churn(churners // 10) for _ in range(10)))
        st = await wait_stats(
            watcher,
            lambda s: s["record"]["disconnects"] == senders + churners,
            timeout=30,
            what="every disconnect",
        )
        await watcher.close()
        return st

    st = asyncio.run(main())
    record, engine = st["record"], st["engine"]
    assert record["connects"] == senders + churners + 1  # + the watcher
    assert record["disconnects"] == senders + churners
    assert record["codes"] == {"1000": senders + churners}
    # Backpressure, not loss: every message sent reached its handler.
    assert record["messages"] == senders * per_sender
    assert engine["messages_in"] >= senders * per_sender
    assert engine["backpressure_waits"] > 0
    assert engine["drain_events"] / engine["drain_calls"] > 1, engine


def test_every_disconnect_reaches_python_at_shutdown(make_server: Any, tmp_path: Any) -> None:
    """Stopping the server closes every connection (1001) and Python hears of each one, however
    many there are: more than one drain batch of them here."""
    n, batch = 200, 50
    path = tmp_path / "record.json"
    srv = make_server(
        {"drain_batch": batch}, target="tests.apps.record_on_exit:app", env={"WSE_TEST_RECORD_FILE": str(path)}
    )

    async def main() -> tuple[int, list[int | None]]:
        conns = []
        for _ in range(n // 50):
            conns += [c for c, _ in await asyncio.gather(*(open_ready(srv.url) for _ in range(50)))]
        st = await stats(conns[0])
        assert st["record"]["connects"] == n
        code = await asyncio.to_thread(srv.stop)
        await asyncio.wait_for(asyncio.gather(*(c.wait_closed() for c in conns)), 10)
        return code, [c.close_code for c in conns]

    code, close_codes = asyncio.run(main())
    assert code == 0
    assert close_codes == [1001] * n
    record = orjson.loads(path.read_bytes())
    assert record["connects"] == n
    assert record["disconnects"] == n, f"on_disconnect ran for {record['disconnects']} of {n} connections at shutdown"
    assert record["codes"] == {"1001": n}


def test_drain_batches_under_load(server: ServerProc) -> None:
    """With the default queue, a burst from several clients is taken in batches, not one by one."""

    async def burst(k: int) -> None:
        ws, _ = await open_ready(server.url)
        for i in range(300):
            await ws.send(envelope("count", {"k": k, "i": i}))
        await ws.send(envelope("echo", "done"))
        await recv_type(ws, "echo")
        await ws.close()

    async def main() -> dict[str, Any]:
        watcher, _ = await open_ready(server.url)
        before = await stats(watcher)
        await asyncio.gather(*(burst(k) for k in range(10)))
        st = await wait_stats(watcher, lambda s: s["record"]["disconnects"] == 10)
        await watcher.close()
        st["before"] = before["engine"]
        return st

    st = asyncio.run(main())
    assert st["record"]["messages"] == 10 * 301
    e, b = st["engine"], st["before"]
    calls = e["drain_calls"] - b["drain_calls"]
    events = e["drain_events"] - b["drain_events"]
    assert events >= 10 * 301 + 20  # the messages, and a connect and a disconnect per client
    assert events / calls > 1, (events, calls)


def test_blocked_loop_stops_reading_without_loss(make_server: Any) -> None:
    """`slow` blocks the drain loop for 1 s: the queue fills, the engine stops reading the socket
    (the client's send buffer stays full), and after the block every message is handled."""
    srv = make_server({"inbound_queue": 16})
    r = RawWS(srv.port, srv.path)
    assert r.recv_json()["t"] == "server_ready"
    r.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
    frame = client_frame(OP_TEXT, envelope("count", {"pad": "z" * 1000}))
    r.send_json(envelope("slow", {"seconds": 1.0}))

    sent = 0
    pending = b""
    stalled = False
    r.sock.setblocking(False)
    t0 = time.monotonic()
    while sent < 64 * 1024 * 1024 // len(frame) and time.monotonic() - t0 < 0.7:
        data = pending or frame
        try:
            n = r.sock.send(data)
        except BlockingIOError:
            # The socket is full. While the loop is blocked nothing drains it: it stays full.
            _, writable, _ = select.select([], [r.sock], [], 0.25)
            if not writable:
                stalled = True
                break
            continue
        if n == len(data):
            sent += 1
            pending = b""
        else:
            pending = data[n:]
    assert stalled, f"the server kept reading while Python was blocked (sent {sent} messages)"
    r.sock.setblocking(True)
    r.sock.settimeout(10)
    if pending:
        r.send(pending)
        sent += 1
    r.send_frame(OP_CLOSE, (1000).to_bytes(2, "big"))
    msgs, code, _ = r.read_until_close()
    r.close()
    assert code == 1000

    st = stats_when(srv, lambda s: s["record"]["disconnects"] == 1, timeout=15)
    assert st["record"]["messages"] == sent
    assert st["engine"]["backpressure_waits"] > 0
    assert st["engine"]["backpressure_ns"] > 0


# ---- subscriptions ------------------------------------------------------------------------------------


async def subscribe(ws: Any, topics: list[Any], action: str = "subscribe") -> dict[str, Any]:
    await ws.send(subscribe_msg(topics, action))
    ack = await recv_type(ws, "subscription_update")
    assert ack["c"] == "WSE"
    return ack["p"]


async def probe(ws: Any, topics: list[str]) -> dict[str, tuple[int, list[int]]]:
    """Publishes two messages to each topic: ``topic -> (number of subscribers, what ws got)``."""
    out: dict[str, tuple[int, list[int]]] = {}
    for t in topics:
        await ws.send(envelope("publish", {"topic": t, "count": 2, "payload": {"probe": t}}))
        got: list[int] = []
        while True:
            m = await recv_json(ws)
            if m["t"] == "pub":
                assert m["tp"] == t and m["p"]["probe"] == t, m
                got.append(m["p"]["i"])
            elif m["t"] == "published":
                queued = m["p"]["queued"]
                assert queued % 2 == 0, m
                out[t] = (queued // 2, got)
                break
    return out


def test_unsubscribe(server: ServerProc) -> None:
    async def main() -> None:
        ws, _ = await open_ready(server.url)
        p = await subscribe(ws, ["alpha", "beta", "gamma"])
        assert p["action"] == "subscribe" and p["success"] is True
        assert sorted(p["topics"]) == ["alpha", "beta", "gamma"]
        assert await probe(ws, ["alpha", "beta"]) == {"alpha": (1, [0, 1]), "beta": (1, [0, 1])}
        p = await subscribe(ws, ["alpha", "gamma"], "unsubscribe")
        assert p["action"] == "unsubscribe"
        assert sorted(p["success_topics"]) == ["alpha", "gamma"]
        assert p["topics"] == ["beta"]
        assert await probe(ws, ["alpha", "beta", "gamma"]) == {"alpha": (0, []), "beta": (1, [0, 1]), "gamma": (0, [])}
        # Unsubscribing from a topic never joined is harmless; resubscribing works.
        p = await subscribe(ws, ["never-joined"], "unsubscribe")
        assert p["topics"] == ["beta"]
        p = await subscribe(ws, ["alpha"])
        assert sorted(p["topics"]) == ["alpha", "beta"]
        assert await probe(ws, ["alpha"]) == {"alpha": (1, [0, 1])}
        st = await stats(ws)
        assert st["engine"]["subscriptions"] == 2
        await ws.close()

    asyncio.run(main())


def test_unsubscribe_only_affects_that_connection(server: ServerProc) -> None:
    async def main() -> None:
        a, _ = await open_ready(server.url)
        b, _ = await open_ready(server.url)
        await subscribe(a, ["shared"])
        await subscribe(b, ["shared"])
        await subscribe(a, ["shared"], "unsubscribe")
        assert await probe(a, ["shared"]) == {"shared": (1, [])}
        got = [await recv_type(b, "pub") for _ in range(2)]
        assert [m["p"]["i"] for m in got] == [0, 1]
        await a.close()
        await b.close()

    asyncio.run(main())


def test_subscription_bad_requests(server: ServerProc) -> None:
    async def main() -> None:
        ws, _ = await open_ready(server.url)
        p = await subscribe(ws, ["ok", "", "t" * 257, 42])
        assert p["success_topics"] == ["ok"]
        assert len(p["failed_topics"]) == 3 and p["success"] is False
        assert set(p["errors"].values()) == {"invalid topic"}
        await ws.send(envelope("subscription_update", {"action": "subscribe"}, c="WSE"))
        err = await recv_type(ws, "error")
        assert err["p"]["code"] == "INVALID_MESSAGE"
        await ws.send(envelope("subscription_update", {"action": "explode", "topics": ["x"]}, c="WSE"))
        err = await recv_type(ws, "error")
        assert err["p"]["code"] == "INVALID_MESSAGE"
        await ws.close()

    asyncio.run(main())


def test_config_topic_acl(make_server: Any) -> None:
    srv = make_server({"topics_allow": ["news.*", "chat.*"], "topics_deny": ["chat.secret*"]})

    async def main() -> dict[str, Any]:
        ws, _ = await open_ready(srv.url)
        wanted = ["news.eu", "sport.nba", "chat.lobby", "chat.secret-room", "news"]
        p = await subscribe(ws, wanted)
        assert p["success"] is False
        assert sorted(p["success_topics"]) == ["chat.lobby", "news.eu"]
        assert sorted(p["failed_topics"]) == ["chat.secret-room", "news", "sport.nba"]
        assert p["errors"] == {t: "not allowed" for t in p["failed_topics"]}
        assert sorted(p["topics"]) == ["chat.lobby", "news.eu"]
        got = await probe(ws, wanted)
        assert got == {
            "news.eu": (1, [0, 1]),
            "chat.lobby": (1, [0, 1]),
            "sport.nba": (0, []),
            "chat.secret-room": (0, []),
            "news": (0, []),
        }
        st = await stats(ws)
        await ws.close()
        return st

    st = asyncio.run(main())
    assert st["engine"]["subscriptions_denied"] == 3
    assert st["engine"]["subscriptions"] == 2


def test_deny_all_acl(make_server: Any) -> None:
    srv = make_server({"topics_deny": ["*"]})

    async def main() -> None:
        ws, _ = await open_ready(srv.url)
        p = await subscribe(ws, ["a", "b"])
        assert p["success_topics"] == [] and sorted(p["failed_topics"]) == ["a", "b"] and p["topics"] == []
        assert await probe(ws, ["a"]) == {"a": (0, [])}
        await ws.close()

    asyncio.run(main())


def _claim_acl_server(make_server: Any, **jwt: Any) -> ServerProc:
    return make_server({"jwt": {"secret": SECRET, **jwt}})  # type: ignore[no-any-return]


def test_jwt_claim_topic_acl(make_server: Any) -> None:
    srv = _claim_acl_server(make_server, claims=["name"])
    acl = {"allow": ["user.42.*", "public"], "deny": ["user.42.private"]}
    tok = make_token({"sub": "42", "name": "x", "wse_topics": acl})
    other = make_token({"sub": "43"})  # no claim: only the configured ACL (none) applies

    async def main() -> None:
        ws, _ = await open_ready(srv.url, additional_headers={"Authorization": f"Bearer {tok}"})
        wanted = ["user.42.inbox", "user.43.inbox", "user.42.private", "public", "admin"]
        p = await subscribe(ws, wanted)
        assert sorted(p["success_topics"]) == ["public", "user.42.inbox"]
        assert sorted(p["failed_topics"]) == ["admin", "user.42.private", "user.43.inbox"]
        assert set(p["errors"].values()) == {"not allowed"}
        got = await probe(ws, wanted)
        assert {t: g for t, (_, g) in got.items()} == {
            "user.42.inbox": [0, 1],
            "public": [0, 1],
            "user.43.inbox": [],
            "user.42.private": [],
            "admin": [],
        }
        # Another user without the claim is not limited by user 42's ACL.
        ws2, _ = await open_ready(srv.url, additional_headers={"Authorization": f"Bearer {other}"})
        p = await subscribe(ws2, ["user.42.private", "admin"])
        assert sorted(p["success_topics"]) == ["admin", "user.42.private"]
        # The token's ACL still applies although `claims` does not pass it to Python.
        st = await stats(ws)
        first = [c for u, c in st["record"]["users"] if u == "42"][0]
        assert first == {"sub": "42", "name": "x"}
        await ws.close()
        await ws2.close()

    asyncio.run(main())


def test_jwt_claim_acl_custom_claim_and_config_acl_together(make_server: Any) -> None:
    srv = make_server({"topics_deny": ["*.internal"], "jwt": {"secret": SECRET, "topics_claim": "perm"}})
    tok = make_token({"perm": {"allow": ["team.*"]}, "wse_topics": {"deny": ["team.*"]}})

    async def main() -> None:
        ws, _ = await open_ready(srv.url, additional_headers={"Cookie": f"access_token={tok}"})
        p = await subscribe(ws, ["team.red", "team.internal", "other"])
        # `perm` allows team.*, the config denies *.internal; `wse_topics` is not the configured claim.
        assert p["success_topics"] == ["team.red"]
        assert sorted(p["failed_topics"]) == ["other", "team.internal"]
        got = await probe(ws, ["team.red", "team.internal", "other"])
        assert {t: g for t, (_, g) in got.items()} == {"team.red": [0, 1], "team.internal": [], "other": []}
        await ws.close()

    asyncio.run(main())


def test_authorize_subscription_hook(make_server: Any) -> None:
    srv = make_server({"topics_deny": ["blocked.*"]}, env={"WSE_TEST_DENY_PREFIX": "secret."})

    async def main() -> dict[str, Any]:
        ws, _ = await open_ready(srv.url)
        p = await subscribe(ws, ["secret.plans", "public.news", "blocked.x", "secretive"])
        assert sorted(p["success_topics"]) == ["public.news", "secretive"]
        assert sorted(p["failed_topics"]) == ["blocked.x", "secret.plans"]
        assert p["errors"] == {"secret.plans": "not authorized", "blocked.x": "not allowed"}
        assert sorted(p["topics"]) == ["public.news", "secretive"]
        got = await probe(ws, ["secret.plans", "public.news", "blocked.x", "secretive"])
        assert {t: g for t, (_, g) in got.items()} == {
            "secret.plans": [],
            "public.news": [0, 1],
            "blocked.x": [],
            "secretive": [0, 1],
        }
        # Only config-denied topics: answered without asking Python.
        p = await subscribe(ws, ["blocked.y"])
        assert p["success_topics"] == [] and p["failed_topics"] == ["blocked.y"]
        # Only hook-denied topics.
        p = await subscribe(ws, ["secret.a", "secret.b"])
        assert p["success_topics"] == [] and sorted(p["failed_topics"]) == ["secret.a", "secret.b"]
        assert sorted(p["topics"]) == ["public.news", "secretive"]
        st = await stats(ws)
        await ws.close()
        return st

    st = asyncio.run(main())
    assert st["engine"]["subscriptions_denied"] == 5
    assert st["engine"]["subscriptions"] == 2


def test_authorize_hook_answers_each_client_in_order(make_server: Any) -> None:
    srv = make_server(env={"WSE_TEST_DENY_PREFIX": "no."})

    async def client(k: int) -> None:
        ws, _ = await open_ready(srv.url)
        for j in range(5):
            p = await subscribe(ws, [f"yes.{k}.{j}", f"no.{k}.{j}"])
            assert p["success_topics"] == [f"yes.{k}.{j}"] and p["failed_topics"] == [f"no.{k}.{j}"]
        assert sorted(p["topics"]) == sorted(f"yes.{k}.{j}" for j in range(5))
        await ws.close()

    async def main() -> None:
        await asyncio.gather(*(client(k) for k in range(10)))

    asyncio.run(main())


def test_max_topics_per_connection(make_server: Any) -> None:
    srv = make_server({"max_topics_per_connection": 3})

    async def main() -> None:
        ws, _ = await open_ready(srv.url)
        # A request that would pass the limit is refused whole, with one error naming it.
        await ws.send(envelope("subscription_update", {"action": "subscribe", "topics": ["t1", "t2", "t3", "t4", "t5"]}, c="WSE"))
        err = await recv_type(ws, "error")
        assert err["p"]["code"] == "TOO_MANY_TOPICS" and err["p"]["limit"] == "max_topics_per_connection", err
        p = await subscribe(ws, ["t1", "t2", "t3"])
        assert p["success_topics"] == ["t1", "t2", "t3"]
        assert sorted(p["topics"]) == ["t1", "t2", "t3"]
        # Topics already held do not count twice.
        p = await subscribe(ws, ["t2", "t3"])
        assert p["success_topics"] == ["t2", "t3"]
        await ws.send(envelope("subscription_update", {"action": "subscribe", "topics": ["t2", "t6"]}, c="WSE"))
        assert (await recv_type(ws, "error"))["p"]["count"] == 4
        got = await probe(ws, ["t1", "t4", "t6"])
        assert {t: g for t, (_, g) in got.items()} == {"t1": [0, 1], "t4": [], "t6": []}
        # Leaving one makes room for another.
        await subscribe(ws, ["t1"], "unsubscribe")
        p = await subscribe(ws, ["t6"])
        assert p["success_topics"] == ["t6"] and sorted(p["topics"]) == ["t2", "t3", "t6"]
        # The limit is per connection.
        ws2, _ = await open_ready(srv.url)
        p = await subscribe(ws2, ["t1", "t4", "t5"])
        assert p["success_topics"] == ["t1", "t4", "t5"]
        await ws.close()
        await ws2.close()

    asyncio.run(main())


def test_max_topics_with_hook(make_server: Any) -> None:
    srv = make_server({"max_topics_per_connection": 2}, env={"WSE_TEST_DENY_PREFIX": "x."})

    async def main() -> None:
        ws, _ = await open_ready(srv.url)
        p = await subscribe(ws, ["a", "x.b"])
        assert p["success_topics"] == ["a"]
        assert p["errors"] == {"x.b": "not authorized"}
        p = await subscribe(ws, ["c"])
        assert p["success_topics"] == ["c"]
        await ws.send(envelope("subscription_update", {"action": "subscribe", "topics": ["d"]}, c="WSE"))
        err = await recv_type(ws, "error")
        assert err["p"]["limit"] == "max_topics_per_connection" and err["p"]["max"] == 2, err
        await ws.close()

    asyncio.run(main())


def test_disconnect_releases_subscriptions(server: ServerProc) -> None:
    async def main() -> None:
        watcher, _ = await open_ready(server.url)
        ws, _ = await open_ready(server.url)
        await subscribe(ws, ["room"])
        assert await probe(watcher, ["room"]) == {"room": (1, [])}
        await ws.close()
        await wait_stats(watcher, lambda s: s["record"]["disconnects"] == 1)
        assert await probe(watcher, ["room"]) == {"room": (0, [])}
        st = await stats(watcher)
        assert st["engine"]["subscriptions"] == 0 and st["engine"]["topics"] == 0
        await watcher.close()

    asyncio.run(main())

