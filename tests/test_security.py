"""Security limits on real sockets (issue: pattern subscriptions and the hook, tokens without
`sub`, ping floods, handshake slots per address, oversized subscription updates, memory after
churn). Each test keeps a bystander connection receiving every publication, in order, while the
attack runs: the attack must cost it nothing."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import jwt as pyjwt
import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from tests.conftest import SECRET, envelope, make_token
from tests.wsutil import OP_PING, RawWS, open_ready, recv_json, recv_type, stats, wait_stats

BYSTANDER_TOPIC = "bystander"


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


async def subscribe(ws: ClientConnection, topics: list[str]) -> dict[str, Any]:
    await ws.send(envelope("subscription_update", {"action": "subscribe", "topics": topics}, c="WSE"))
    return (await recv_type(ws, "subscription_update", 10.0))["p"]


class Bystander:
    """A subscriber that asks for rounds of publications to its topic and checks that each round
    arrives whole and in order, for as long as the test runs."""

    def __init__(self, url: str, **kw: Any) -> None:
        self.url, self.kw = url, kw
        self.rounds = 0
        self.task: asyncio.Task[None] | None = None
        self.stop = False

    async def start(self) -> None:
        self.ws, _ = await open_ready(self.url, **self.kw)
        ack = await subscribe(self.ws, [BYSTANDER_TOPIC])
        assert ack["success_topics"] == [BYSTANDER_TOPIC], ack
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        r = 0
        while not self.stop:
            await self.ws.send(envelope("publish", {"topic": BYSTANDER_TOPIC, "count": 20, "payload": {"r": r}}))
            got: list[int] = []
            while True:
                m = await recv_json(self.ws, 30.0)
                if m.get("t") == "pub":
                    assert m["p"]["r"] == r, m
                    got.append(m["p"]["i"])
                elif m.get("t") == "published":
                    break
            # Publications are queued before the reply, so a whole round is here, in order.
            assert got == list(range(20)), got
            r += 1
            self.rounds = r

    async def more_rounds(self, n: int = 3, timeout: float = 30.0) -> None:
        """Waits until `n` more rounds arrive (no stall), and re-raises what failed."""
        target = self.rounds + n
        deadline = time.monotonic() + timeout
        while self.rounds < target:
            assert self.task is not None
            if self.task.done():
                self.task.result()
                raise AssertionError("bystander stopped")
            assert time.monotonic() < deadline, f"bystander stalled at round {self.rounds}"
            await asyncio.sleep(0.01)

    async def finish(self) -> None:
        await self.more_rounds()
        self.stop = True
        assert self.task is not None
        await asyncio.wait_for(self.task, 30.0)
        await self.ws.close()


# ---- 1. pattern subscriptions: every topic decided as an exact subscription would be ------------


def test_pattern_subscriber_receives_only_topics_the_hook_and_acls_allow(make_server: Any) -> None:
    srv = make_server({"topics_deny": ["admin.*"]}, env={"WSE_TEST_DENY_PREFIX": "secret."})
    topics = ["secret.x", "news.a", "secret.y", "admin.z", "news.b", "public.c"]
    allowed = {"news.a", "news.b", "public.c"}

    async def main() -> None:
        by = Bystander(srv.url)
        await by.start()
        spy, _ = await open_ready(srv.url)
        # The hook passes the pattern strings themselves: only concrete topics are refused.
        ack = await subscribe(spy, ["*", "sec*", "secret.x"])
        assert ack["success_topics"] == ["*", "sec*"] and ack["failed_topics"] == ["secret.x"], ack
        pub, _ = await open_ready(srv.url)
        for rnd in range(3):
            for t in topics:
                await pub.send(envelope("publish", {"topic": t, "count": 5, "payload": {"t": t, "r": rnd}}))
                await recv_type(pub, "published")
        await pub.send(envelope("publish", {"topic": "public.end", "count": 1, "payload": {"end": True}}))
        await recv_type(pub, "published")
        got: list[tuple[str, int, int]] = []
        while True:
            m = await recv_json(spy, 30.0)
            if m.get("t") != "pub" or m["p"].get("r") is not None and "t" not in m["p"] and "end" not in m["p"]:
                continue  # the bystander's rounds (its topic matches `*` too)
            if m["p"].get("end"):
                break
            got.append((m["p"]["t"], m["p"]["r"], m["p"]["i"]))
        # Nothing refused, everything allowed, in the order published (held ones included).
        want = [(t, r, i) for r in range(3) for t in topics if t in allowed for i in range(5)]
        assert got == want
        st = await stats(pub)
        # Asked once per topic: the five not refused by the ACL, the end marker, the bystander's.
        assert st["engine"]["pattern_checks"] == 7, st["engine"]
        assert st["engine"]["pattern_denied"] == 2, st["engine"]
        await by.finish()
        await pub.close()
        # The spy has not read the bystander's traffic its `*` brought: no close handshake wait.
        spy.transport.abort()

    asyncio.run(main())


def test_server_made_pattern_is_not_checked_and_leaving_the_last_pattern_forgets(make_server: Any) -> None:
    """`app.subscribe` is the server's authority: its pattern's topics are not put to the hook."""
    srv = make_server(env={"WSE_TEST_DENY_PREFIX": "secret."})

    async def main() -> None:
        ws, _ = await open_ready(srv.url)
        await ws.send(envelope("join_topic", {"topic": "secret.*"}))
        assert (await recv_type(ws, "join_topic"))["p"]["joined"] == ["secret.*"]
        await ws.send(envelope("publish", {"topic": "secret.a", "count": 3}))
        got = []
        while len(got) < 3:
            m = await recv_json(ws, 10.0)
            if m.get("t") == "pub":
                got.append(m["p"]["i"])
        assert got == [0, 1, 2]
        st = await stats(ws)
        assert st["engine"]["pattern_checks"] == 0
        await ws.close()

    asyncio.run(main())


# ---- 2. a token without `sub` ---------------------------------------------------------------------


def test_token_without_sub_is_refused_with_missing_claim(make_server: Any) -> None:
    srv = make_server({"jwt": {"secret": SECRET}})
    good = {"Cookie": f"access_token={make_token({'sub': 'bystander'})}"}

    async def main() -> None:
        by = Bystander(srv.url, additional_headers=good)
        await by.start()
        for claims in ({"exp": int(time.time()) + 300}, {"sub": "", "exp": int(time.time()) + 300}):
            tok = pyjwt.encode(claims, SECRET, algorithm="HS256")
            ws, err = None, None
            ws, err = await open_ready_or_error(srv.url, {"Cookie": f"access_token={tok}"})
            assert err["t"] == "error" and err["p"]["code"] == "AUTH_FAILED", err
            assert "'sub'" in err["p"]["message"], err
            await asyncio.wait_for(ws.wait_closed(), 10.0)
            assert ws.close_code == 4401 and ws.close_reason == "missing_claim", (ws.close_code, ws.close_reason)
        await by.more_rounds()
        await by.finish()
        ws, _ = await open_ready(srv.url, additional_headers=good)
        st = await stats(ws)
        await ws.close()
        assert st["record"]["connects"] == 2 and st["record"]["users"][0][0] == "bystander", st["record"]
        assert st["engine"]["auth_failed"] == 2

    asyncio.run(main())


async def open_ready_or_error(url: str, headers: dict[str, str]) -> tuple[ClientConnection, dict[str, Any]]:
    from websockets.asyncio.client import connect

    ws = await connect(url, max_size=None, additional_headers=headers)
    return ws, await recv_json(ws)


# ---- 3. a ping flood from a client that never reads --------------------------------------------------


def test_never_reading_ping_flooders_are_closed_and_memory_returns(make_server: Any) -> None:
    srv = make_server({"rate_limit_capacity": 2_000, "rate_limit_refill": 100, "rate_limit_close_after": 200})
    flooders = 6

    async def main() -> None:
        by = Bystander(srv.url)
        await by.start()
        await by.more_rounds(2)
        base = rss_kib(srv.pid)
        hwm_before = rss_kib(srv.pid, "VmHWM")

        def flood() -> None:
            # 125-byte pings, as fast as the socket takes them; the socket is never read.
            raw = RawWS(srv.port, rcvbuf=4096, timeout=30.0)
            ping = bytes(125)
            try:
                for _ in range(40_000):
                    raw.send_frame(OP_PING, ping)
            except OSError:
                pass  # closed by the server meanwhile
            finally:
                floods.append(raw)

        floods: list[RawWS] = []
        await asyncio.gather(*(asyncio.to_thread(flood) for _ in range(flooders)), by.more_rounds(3))
        obs, _ = await open_ready(srv.url)
        st = await wait_stats(
            obs, lambda s: s["record"]["codes"].get("4429", 0) == flooders, 30.0, "every flooder closed with 4429"
        )
        assert st["engine"]["rate_limit_closes"] == flooders
        for raw in floods:
            raw.close()
        await by.more_rounds(3)
        # Pongs coalesce: a flooder cost a few KiB, not the 19 MiB the pongs once held.
        peak = rss_kib(srv.pid, "VmHWM") - hwm_before
        assert peak < 8 * 1024, f"peak RSS grew by {peak} KiB"
        after = rss_kib(srv.pid)
        assert after - base < 4 * 1024, f"RSS {base} KiB before, {after} KiB after"
        await obs.close()
        await by.finish()

    asyncio.run(main())


def test_pongs_coalesce_and_count_within_the_outbound_budget(make_server: Any) -> None:
    """Without a rate limit, a flooder that never reads holds one pong at most; once it reads,
    it gets an answer to its latest ping."""
    srv = make_server({"rate_limit_capacity": 0})

    async def main() -> None:
        by = Bystander(srv.url)
        await by.start()
        hwm_before = rss_kib(srv.pid, "VmHWM")
        raw = RawWS(srv.port, rcvbuf=4096, timeout=30.0)

        def flood() -> None:
            for i in range(100_000):
                raw.send_frame(OP_PING, b"%0125d" % i)

        await asyncio.gather(asyncio.to_thread(flood), by.more_rounds(3))
        peak = rss_kib(srv.pid, "VmHWM") - hwm_before
        assert peak < 8 * 1024, f"peak RSS grew by {peak} KiB for 100,000 unread pongs"
        raw.send_frame(OP_PING, b"last")

        def last_pong() -> bytes:
            while True:
                op, payload = raw.recv_frame()
                if op == 0xA and payload == b"last":
                    return payload
                assert op in (0x1, 0x2, 0xA), op

        assert await asyncio.to_thread(last_pong) == b"last"
        raw.close()
        await by.finish()

    asyncio.run(main())


# ---- 4. pending handshakes: per source address and in total --------------------------------------


def silent_sockets(port: int, source: str, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((source, 0))
        s.settimeout(30.0)
        s.connect(("127.0.0.1", port))
        out.append(s)
    return out


def read_all(s: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = s.recv(4096)
        except (ConnectionResetError, TimeoutError):
            return data
        if not chunk:
            return data
        data += chunk


def test_silent_sockets_from_one_address_leave_others_served(make_server: Any) -> None:
    # A long handshake timeout: a client locked out would wait for it, far past the deadline.
    srv = make_server({"handshake_timeout_ms": 60_000})

    async def main() -> None:
        by = Bystander(srv.url)
        await by.start()
        held = await asyncio.to_thread(silent_sockets, srv.port, "127.0.0.2", 600)
        await by.more_rounds(3)
        # Another address is served at once (well within the 60 s the silent ones may hold).
        ws, _ = await asyncio.wait_for(open_ready(srv.url, local_addr=("127.0.0.3", 0)), 20.0)
        st = await stats(ws)
        # 256 wait for their handshake (the default per address); the others were answered 503.
        assert st["engine"]["connections_rejected_pending_ip"] == 600 - 256, st["engine"]
        answers = await asyncio.to_thread(lambda: [read_all(s) for s in held[256:]])
        assert all(a.startswith(b"HTTP/1.1 503 ") for a in answers), {a[:30] for a in answers}
        for s in held:
            s.close()
        await ws.close()
        await by.finish()

    asyncio.run(main())


def test_open_connections_per_address_are_bounded_with_429(make_server: Any) -> None:
    """``max_connections_per_ip``: upgraded connections and handshakes in progress from one
    address count together; one more is answered 429 before any upgrade and counted; other
    addresses (the bystander's) are served; a closed connection gives its place back."""
    srv = make_server({"max_connections_per_ip": 4, "handshake_timeout_ms": 60_000})

    async def main() -> None:
        by = Bystander(srv.url)
        await by.start()
        source = "127.0.0.2"
        conns = [(await open_ready(srv.url, local_addr=(source, 0)))[0] for _ in range(3)]
        silent = await asyncio.to_thread(silent_sockets, srv.port, source, 1)  # a handshake pending
        extra = await asyncio.to_thread(silent_sockets, srv.port, source, 2)
        for s in extra:
            s.sendall(b"GET /wse HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        answers = await asyncio.to_thread(lambda: [read_all(s) for s in extra])
        assert all(a.startswith(b"HTTP/1.1 429 Too Many Requests\r\n") for a in answers), answers
        for s in extra:
            s.close()
        await by.more_rounds(3)
        # Another address is served; the count is per address.
        other, _ = await asyncio.wait_for(open_ready(srv.url, local_addr=("127.0.0.3", 0)), 20.0)
        st = await stats(other)
        assert st["engine"]["connections_rejected_ip"] == 2, st["engine"]
        assert st["engine"]["connections_rejected_pending_ip"] == 0
        # The upgraded ones work, and a place given back is taken again.
        await conns[0].ping()
        await conns[0].close()
        silent[0].close()
        again = []
        deadline = time.monotonic() + 30
        while len(again) < 2:
            try:
                ws, _ = await open_ready(srv.url, local_addr=(source, 0))
                again.append(ws)
            except InvalidStatus as e:  # refused while the server has not yet seen the close
                assert e.response.status_code == 429, e.response
                assert time.monotonic() < deadline, "a closed connection's place was not given back"
                await asyncio.sleep(0.05)
        for ws in [*conns[1:], *again, other]:
            await ws.close()
        await by.finish()

    asyncio.run(main())


def test_cli_sets_the_open_connections_bound_per_address(make_server: Any) -> None:
    srv = make_server({}, args=["--max-connections-per-ip", "1"])

    async def main() -> None:
        ws, _ = await open_ready(srv.url, local_addr=("127.0.0.4", 0))
        try:
            await open_ready(srv.url, local_addr=("127.0.0.4", 0))
            raise AssertionError("a second connection from the address was upgraded")
        except InvalidStatus as e:
            assert e.response.status_code == 429, e.response
        await ws.close()

    asyncio.run(main())


def test_total_pending_limit_answers_503_and_counts(make_server: Any) -> None:
    srv = make_server({"max_pending_handshakes": 8, "handshake_timeout_ms": 60_000})

    async def main() -> None:
        by = Bystander(srv.url)
        await by.start()
        held = []
        for i in range(8):  # eight addresses, one silent socket each: every slot taken
            held += await asyncio.to_thread(silent_sockets, srv.port, f"127.0.1.{i + 1}", 1)
        extra = await asyncio.to_thread(silent_sockets, srv.port, "127.0.2.1", 1)
        extra[0].sendall(b"GET /wse HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await asyncio.to_thread(read_all, extra[0])
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answer
        await by.more_rounds(3)
        for s in held + extra:
            s.close()
        # A slot is free once the server has read that socket's end: a handshake before that is
        # refused (and counted) too. Retry until one is free, with a generous deadline.
        loop, refused = asyncio.get_running_loop(), 0
        deadline = loop.time() + 20
        while True:
            try:
                ws, _ = await asyncio.wait_for(open_ready(srv.url), 20.0)
                break
            except InvalidStatus as e:
                assert e.response.status_code == 503 and loop.time() < deadline, e
                refused += 1
                await asyncio.sleep(0.05)
        st = await wait_stats(ws, lambda s: s["engine"]["connections_rejected_pending"] == 1 + refused, 10.0)
        assert st["engine"]["connections_rejected_pending_ip"] == 0
        await ws.close()
        await by.finish()

    asyncio.run(main())


# ---- 5. one subscription_update naming 100,000 topics -------------------------------------------


def test_huge_subscription_update_is_refused_whole_with_rss_bounded(make_server: Any) -> None:
    srv = make_server()

    async def main() -> None:
        by = Bystander(srv.url)
        await by.start()
        hwm_before = rss_kib(srv.pid, "VmHWM")
        topics = [f"t{i:05d}" for i in range(100_000)]
        msg = envelope("subscription_update", {"action": "subscribe", "topics": topics}, c="WSE")
        assert len(msg) < 1 << 20
        clients = [(await open_ready(srv.url))[0] for _ in range(6)]
        await asyncio.gather(*(c.send(msg) for c in clients))
        for c in clients:
            err = await recv_type(c, "error", 20.0)
            assert err["p"]["code"] == "TOO_MANY_TOPICS", err
            assert err["p"]["limit"] == "max_topics_per_message" and err["p"]["max"] == 1000, err
            assert err["p"]["count"] == 100_000
        await by.more_rounds(3)
        grew = rss_kib(srv.pid, "VmHWM") - hwm_before
        assert grew < 16 * 1024, f"peak RSS grew by {grew} KiB"
        # Refused whole: no topic joined, and the connection goes on.
        c = clients[0]
        ack = await subscribe(c, ["ok.1"])
        assert ack["success_topics"] == ["ok.1"] and ack["topics"] == ["ok.1"], ack
        # Per connection: a request that would pass max_topics_per_connection is refused whole.
        ack = await subscribe(c, [f"a{i}" for i in range(600)])
        assert ack["success"] and len(ack["topics"]) == 601
        await c.send(envelope("subscription_update", {"action": "subscribe", "topics": [f"b{i}" for i in range(600)]}, c="WSE"))
        err = await recv_type(c, "error", 10.0)
        assert err["p"]["limit"] == "max_topics_per_connection" and err["p"]["count"] == 1201, err
        st = await stats(c)
        assert st["engine"]["subscriptions"] == 601 + 1  # and the bystander's
        assert st["engine"]["subscriptions_refused_whole"] == 7
        for c in clients:
            await c.close()
        await by.finish()

    asyncio.run(main())


# ---- 6. memory after churn, and publish() counting live subscribers only ------------------------


def test_rss_returns_after_connection_churn(make_server: Any) -> None:
    srv = make_server({"rate_limit_capacity": 0})

    async def churn(n: int) -> None:
        """`n` connections open at once (each subscribed), then all closed."""
        async def one(i: int) -> ClientConnection:
            ws, _ = await open_ready(srv.url)
            await subscribe(ws, [f"churn.{i % 97}"])
            return ws

        conns: list[ClientConnection] = []
        for k in range(0, n, 50):
            conns += await asyncio.gather(*(one(i) for i in range(k, min(n, k + 50))))
        await asyncio.gather(*(c.close() for c in conns))

    async def main() -> None:
        by = Bystander(srv.url)
        await by.start()
        obs, _ = await open_ready(srv.url)
        await churn(200)  # warm up: the allocator's and the runtime's steady state
        await by.more_rounds(2)
        base = rss_kib(srv.pid)
        await asyncio.gather(churn(2_000), by.more_rounds(3))
        await wait_stats(obs, lambda s: s["engine"]["connections_active"] == 2, 30.0, "churned connections gone")
        # The engine gives freed memory back on its once-a-second sweep: wait for it (a
        # generous deadline), with the bystander's feed going on meanwhile.
        deadline = asyncio.get_running_loop().time() + 30
        after = rss_kib(srv.pid)
        while after - base >= 4 * 1024 and asyncio.get_running_loop().time() < deadline:
            await by.more_rounds(1)
            after = rss_kib(srv.pid)
        print(f"churn: RSS {base} KiB before 2,000 connections, {after} KiB after")
        assert after - base < 4 * 1024, f"RSS {base} KiB before 2,000 connections, {after} KiB after"
        await obs.close()
        await by.finish()

    asyncio.run(main())


def test_publish_counts_only_live_subscribers(make_server: Any) -> None:
    srv = make_server({"max_outbound_bytes": 256 * 1024})

    async def main() -> None:
        by = Bystander(srv.url)
        await by.start()
        slow = RawWS(srv.port, rcvbuf=4096, timeout=30.0)
        slow.send_json(envelope("subscription_update", {"action": "subscribe", "topics": ["live"]}, c="WSE"))
        pub, _ = await open_ready(srv.url)
        await subscribe(pub, ["live"])
        # Wait until the slow one is counted, then bury it until it is closed as a slow consumer.
        while True:
            await pub.send(envelope("publish", {"topic": "live", "count": 1}))
            if (await recv_type(pub, "published"))["p"]["queued"] == 2:
                break
        big = {"pad": "x" * 4000}
        await wait_stats_after(pub, {"topic": "live", "count": 40, "payload": big},
                               lambda s: s["engine"]["slow_consumer_closes"] == 1)
        # Closed but not gone (it does not read its close frame: the server waits for it): it is
        # not counted any more.
        await pub.send(envelope("publish", {"topic": "live", "count": 1}))
        assert (await recv_type(pub, "published"))["p"]["queued"] == 1
        st = await stats(pub)
        assert st["record"]["codes"].get("4008") is None, st["record"]
        await by.more_rounds(3)
        slow.close()
        await pub.close()
        await by.finish()

    asyncio.run(main())


async def wait_stats_after(ws: ClientConnection, publish: dict[str, Any], pred: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        await ws.send(envelope("publish", publish))
        await recv_type(ws, "published", 20.0)
        if pred(await stats(ws)):
            return
        assert time.monotonic() < deadline, "condition not reached"
