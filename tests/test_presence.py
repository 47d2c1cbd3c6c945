"""Presence: per topic and per user, join on the first connection and leave on the last, custom
data with a size cap, counts, events to Python (lifecycle, in order) and to subscribers that ask."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection

from tests.conftest import SECRET, envelope, make_token
from tests.wsutil import RawWS, fresh_stats, open_ready, recv_json, recv_type, wait_stats

PRESENCE_TYPES = ("presence_join", "presence_leave", "presence_update", "presence_state")


def cfg(**extra: Any) -> dict[str, Any]:
    return {"jwt": {"secret": SECRET}, "presence": True, **extra}


def auth(user: str) -> dict[str, Any]:
    return {"additional_headers": {"Authorization": f"Bearer {make_token({'sub': user})}"}}


async def connect(url: str, user: str) -> ClientConnection:
    # A deep client queue: watchers here read late, and a full queue would stall their close.
    ws, ready = await open_ready(url, max_queue=4096, **auth(user))
    assert ready["p"]["details"]["features"]["presence"] is True
    return ws


async def subscribe(ws: ClientConnection, topics: list[str], presence: bool = False) -> dict[str, Any]:
    p: dict[str, Any] = {"action": "subscribe", "topics": topics}
    if presence:
        p["presence"] = True
    await ws.send(envelope("subscription_update", p, c="WSE"))
    return await recv_type(ws, "subscription_update")


async def next_presence(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    """The next presence message (other messages are skipped)."""
    while True:
        msg = await recv_json(ws, timeout)
        if msg["t"] in PRESENCE_TYPES:
            return msg


async def ask(ws: ClientConnection, t: str, p: Any) -> dict[str, Any]:
    await ws.send(envelope(t, p))
    return (await recv_type(ws, t))["p"]


def test_join_on_first_connection_leave_on_last(make_server: Any) -> None:
    srv = make_server(cfg())

    async def main() -> None:
        watcher = await connect(srv.url, "watcher")
        ack = await subscribe(watcher, ["room"], presence=True)
        assert ack["p"]["success_topics"] == ["room"]
        state = await next_presence(watcher)
        assert state["t"] == "presence_state" and state["c"] == "WSE"
        assert state["p"]["topic"] == "room"
        assert state["p"]["users"] == {"watcher": {"data": None, "connections": 1}}

        ann1 = await connect(srv.url, "ann")
        await subscribe(ann1, ["room"])
        join = await next_presence(watcher)
        assert join["t"] == "presence_join"
        assert join["p"] == {"topic": "room", "user_id": "ann", "data": None}

        # A second connection of the same user is no new join: the next event is bob's.
        ann2 = await connect(srv.url, "ann")
        await subscribe(ann2, ["room"])
        bob = await connect(srv.url, "bob")
        await subscribe(bob, ["room", "elsewhere"])
        assert (await next_presence(watcher))["p"]["user_id"] == "bob"

        assert await ask(watcher, "presence", {"topic": "room"}) == {
            "members": {
                "watcher": {"data": None, "connections": 1},
                "ann": {"data": None, "connections": 2},
                "bob": {"data": None, "connections": 1},
            },
            "count": [3, 4],
        }

        # ann's first connection goes: ann is still present. Then bob unsubscribes: bob leaves.
        await ann1.close()
        await bob.send(envelope("subscription_update", {"action": "unsubscribe", "topics": ["room"]}, c="WSE"))
        leave = await next_presence(watcher)
        assert (leave["t"], leave["p"]["user_id"]) == ("presence_leave", "bob")
        # ann's last connection ends abruptly: ann leaves.
        ann2.transport.abort()
        leave = await next_presence(watcher)
        assert (leave["t"], leave["p"]["user_id"]) == ("presence_leave", "ann")
        assert (await ask(watcher, "presence", {"topic": "room"}))["count"] == [1, 1]
        assert (await ask(watcher, "presence", {"topic": "elsewhere"}))["count"] == [1, 1]

        st = await wait_stats(watcher, lambda s: s["record"]["disconnects"] == 2, what="two disconnects")
        got = [e[:3] for e in st["record"]["presence"]]
        assert got == [
            ["join", "room", "watcher"],
            ["join", "room", "ann"],
            ["join", "room", "bob"],
            ["join", "elsewhere", "bob"],
            ["leave", "room", "bob"],
            ["leave", "room", "ann"],
        ]
        await bob.close()
        await watcher.close()

    asyncio.run(main())


def test_presence_events_come_before_the_disconnect(make_server: Any) -> None:
    """Python hears a user leave every topic before that connection's disconnect event."""
    srv = make_server(cfg())

    async def main() -> None:
        clients = [await connect(srv.url, f"u{i}") for i in range(5)]
        for c in clients:
            await subscribe(c, ["a", "b"])
        for i, c in enumerate(clients):
            if i % 2:
                c.transport.abort()
            else:
                await c.close()
        ws = await connect(srv.url, "observer")
        st = await wait_stats(ws, lambda s: s["record"]["disconnects"] == 5, what="five disconnects")
        order = st["record"]["order"]
        for cid in {e[1] for e in order if e[0] == "connect"} - {order[-1][1]}:
            mine = [e[0] for e in order if e[1] == cid]
            if "disconnect" not in mine:
                continue
            assert mine == ["connect", "join", "join", "leave", "leave", "disconnect"], (cid, mine)
        assert st["engine"]["presence_topics"] == 0
        await ws.close()

    asyncio.run(main())


def test_custom_data_and_updates(make_server: Any) -> None:
    srv = make_server(cfg())

    async def main() -> None:
        watcher = await connect(srv.url, "watcher")
        await subscribe(watcher, ["room", "other"], presence=True)
        await next_presence(watcher)
        await next_presence(watcher)
        ann = await connect(srv.url, "ann")
        await subscribe(ann, ["room", "other"])
        assert {(await next_presence(watcher))["p"]["topic"] for _ in range(2)} == {"room", "other"}

        # From the client: one presence_update per topic ann is in.
        await ann.send(envelope("presence_update", {"data": {"status": "away"}}, c="WSE"))
        ups = [await next_presence(watcher) for _ in range(2)]
        assert {u["p"]["topic"] for u in ups} == {"room", "other"}
        assert all(u["t"] == "presence_update" and u["p"]["user_id"] == "ann" and u["p"]["data"] == {"status": "away"} for u in ups)

        # From Python: app.update_presence(user, data).
        assert await ask(ann, "presence_set", {"user": "ann", "data": {"status": "busy"}}) == {"topics": 2}
        ups = [await next_presence(watcher) for _ in range(2)]
        assert all(u["p"]["data"] == {"status": "busy"} for u in ups)
        members = (await ask(watcher, "presence", {"topic": "room"}))["members"]
        assert members["ann"] == {"data": {"status": "busy"}, "connections": 1}

        # A new subscriber of a topic gets ann's data in its presence_state.
        late = await connect(srv.url, "late")
        await subscribe(late, ["other"], presence=True)
        state = await next_presence(late)
        assert state["p"]["users"]["ann"]["data"] == {"status": "busy"}
        assert state["p"]["count"] == {"users": 3, "connections": 3}

        st = await wait_stats(watcher, lambda s: len(s["record"]["presence"]) >= 9)
        updates = [e for e in st["record"]["presence"] if e[0] == "update"]
        assert [u[3] for u in updates] == [{"status": "away"}] * 2 + [{"status": "busy"}] * 2
        assert all(u[4] > 0 for u in updates[:2]) and all(u[4] == 0 for u in updates[2:]), "conn id of the cause"
        for ws in (watcher, ann, late):
            await ws.close()

    asyncio.run(main())


def test_oversized_presence_data_is_refused_and_nothing_else_changes(make_server: Any) -> None:
    srv = make_server(cfg(presence_max_data_bytes=64))

    async def main() -> None:
        watcher = await connect(srv.url, "watcher")
        await subscribe(watcher, ["room"], presence=True)
        await next_presence(watcher)
        ann = await connect(srv.url, "ann")
        await subscribe(ann, ["room"])
        await next_presence(watcher)
        await ann.send(envelope("presence_update", {"data": {"s": "ok"}}, c="WSE"))
        assert (await next_presence(watcher))["p"]["data"] == {"s": "ok"}

        # Too large from the client: a clear error to ann, no event, the old data stays.
        await ann.send(envelope("presence_update", {"data": {"s": "x" * 100}}, c="WSE"))
        err = await recv_type(ann, "error")
        assert err["p"]["code"] == "PRESENCE_DATA_TOO_LARGE"
        assert "at most 64" in err["p"]["message"]
        # Too large from Python: ValueError with the same reason.
        res = await ask(watcher, "presence_set", {"user": "ann", "data": ["y" * 100]})
        assert "at most 64" in res["error"]
        assert (await ask(watcher, "presence", {"topic": "room"}))["members"]["ann"]["data"] == {"s": "ok"}

        # ann's connection keeps working, and the next valid update is the next event.
        assert (await ask(ann, "echo", {"still": "here"})) == {"still": "here"}
        await ann.send(envelope("presence_update", {"data": {"s": "back"}}, c="WSE"))
        ev = await next_presence(watcher)
        assert (ev["t"], ev["p"]["data"]) == ("presence_update", {"s": "back"})
        st = await fresh_stats(srv.url, **auth("x"))
        assert st["engine"]["presence_refused"] == 2
        assert st["record"]["disconnects"] == 0
        await ann.close()
        await watcher.close()

    asyncio.run(main())


def test_anonymous_connections_are_not_present(make_server: Any) -> None:
    srv = make_server({"presence": True})

    async def main() -> None:
        ws, _ = await open_ready(srv.url)
        await subscribe(ws, ["room"], presence=True)
        state = await next_presence(ws)
        assert state["p"]["users"] == {}
        await ws.send(envelope("presence_update", {"data": 1}, c="WSE"))
        err = await recv_type(ws, "error")
        assert err["p"]["code"] == "INVALID_MESSAGE"
        assert (await ask(ws, "presence", {"topic": "room"}))["count"] == [0, 0]
        await ws.close()

    asyncio.run(main())


def test_presence_off_by_default(make_server: Any) -> None:
    srv = make_server({"jwt": {"secret": SECRET}})

    async def main() -> None:
        ws, ready = await open_ready(srv.url, **auth("ann"))
        assert ready["p"]["details"]["features"]["presence"] is False
        ack = await subscribe(ws, ["room"], presence=True)
        assert ack["p"]["success_topics"] == ["room"]
        await ws.send(envelope("presence_update", {"data": 1}, c="WSE"))
        err = await recv_type(ws, "error")
        assert err["p"]["code"] == "PRESENCE_DISABLED"
        res = await ask(ws, "presence_set", {"user": "ann", "data": 1})
        assert "not enabled" in res["error"]
        st = await stats_of(ws)
        assert st["record"]["presence"] == [] and st["engine"]["presence_events"] == 0
        await ws.close()

    asyncio.run(main())


async def stats_of(ws: ClientConnection) -> dict[str, Any]:
    return await ask(ws, "stats", {})


def test_many_watchers_see_every_join_and_leave_in_order(make_server: Any) -> None:
    """20 watchers, 30 users joining then leaving: each watcher gets every join and leave, in order."""
    srv = make_server(cfg())

    async def main() -> None:
        watchers = [await connect(srv.url, f"w{i}") for i in range(20)]
        for w in watchers:
            await subscribe(w, ["lobby"], presence=True)
            await next_presence(w)
        users = []
        for i in range(30):
            u = await connect(srv.url, f"user{i}")
            await subscribe(u, ["lobby"])
            users.append(u)
        seen = []
        for w in watchers:
            joins = []
            while len(joins) < 30:
                ev = await next_presence(w)
                if ev["t"] == "presence_join" and ev["p"]["user_id"].startswith("user"):
                    joins.append(ev["p"]["user_id"])
            seen.append(joins)
        assert all(s == [f"user{i}" for i in range(30)] for s in seen)
        assert (await ask(users[0], "presence", {"topic": "lobby"}))["count"] == [50, 50]
        for u in users:
            await u.close()
        for w in watchers:
            leaves = []
            while len(leaves) < 30:
                ev = await next_presence(w)
                if ev["t"] == "presence_leave" and ev["p"]["user_id"].startswith("user"):
                    leaves.append(ev["p"]["user_id"])
            assert leaves == [f"user{i}" for i in range(30)]
        for w in watchers:
            await w.close()

    asyncio.run(main())


def test_raw_client_presence_join_over_binary_frames(make_server: Any) -> None:
    """Presence envelopes go out like every other system message (binary frames by default)."""
    srv = make_server(cfg())
    w = RawWS(srv.port, headers={"Authorization": f"Bearer {make_token({'sub': 'w'})}"})
    try:
        assert w.recv_json()["t"] == "server_ready"
        w.send_json(envelope("subscription_update", {"action": "subscribe", "topics": ["r"], "presence": True}, c="WSE"))
        assert w.recv_json()["t"] == "subscription_update"
        op, payload = w.recv_frame()
        assert op == 0x2 and orjson.loads(payload)["t"] == "presence_state"
    finally:
        w.close()


def test_presence_with_the_authorization_hook_and_server_side_subscribe(make_server: Any) -> None:
    """Watching follows the hook's decision; `app.subscribe` makes a user present too."""
    srv = make_server(cfg(), env={"WSE_TEST_DENY_PREFIX": "secret."})

    async def main() -> None:
        w = await connect(srv.url, "w")
        ack = await subscribe(w, ["room", "secret.x"], presence=True)
        assert ack["p"]["success_topics"] == ["room"] and ack["p"]["failed_topics"] == ["secret.x"]
        state = await next_presence(w)
        assert state["p"]["topic"] == "room"
        # The application subscribes ann to the refused topic on its own authority: ann is present
        # there, but w hears nothing of it; then ann's own subscribe to room is a join w sees.
        ann = await connect(srv.url, "ann")
        assert await ask(ann, "join_topic", {"topic": "secret.x"}) == {"joined": ["secret.x"]}
        await subscribe(ann, ["room"])
        ev = await next_presence(w)
        assert (ev["t"], ev["p"]["topic"], ev["p"]["user_id"]) == ("presence_join", "room", "ann")
        assert (await ask(w, "presence", {"topic": "secret.x"}))["count"] == [1, 1]
        st = await stats_of(w)
        assert [e[:3] for e in st["record"]["presence"] if e[2] == "ann"] == [["join", "secret.x", "ann"], ["join", "room", "ann"]]
        await ann.close()
        await w.close()

    asyncio.run(main())
