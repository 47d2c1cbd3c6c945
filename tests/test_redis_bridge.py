"""Several hosts as one engine over a real Redis: each "host" is its own ``wse run --workers 2
--redis URL`` cluster on its own port, with subscribers on every worker of every host.

- Publications from every host reach every subscriber once, in each publisher's order (two
  hosts without recovery, three hosts with it: one epoch and one offset run per topic).
- A client moves from one host to another and recovers what it missed there, exactly once.
- Redis killed and restarted mid-stream: each host goes on delivering its own publications,
  buffers the others' and sends them when Redis is back; past the buffer they are counted.
  With recovery too: a host's own subscribers get its publications at once while Redis is
  down, and once only when Redis, back, stamps them.
- A Redis Cluster (three masters, a replica each): the topic's master killed mid-stream.
- Interest: a host subscribes on Redis only to topics it has subscribers for, and drops them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection

from tests.cluster_util import Cluster, clients_on_every_worker, subscribe, until_all_hear
from tests.conftest import envelope
from tests.redis_util import RedisServer, cli
from tests.test_cluster_recovery import Seen as _Seen
from tests.test_cluster_recovery import sub_recover
from tests.wsutil import open_ready

TARGET = "tests.apps.redis_app:app"


class Seen(_Seen):
    """As in the cluster recovery tests; without recovery publications carry no stamp."""

    def add(self, m: dict[str, Any]) -> None:
        if m.get("t") == "pubbed" and "s" in m["p"] and "o" not in m:
            self.values.setdefault(m["tp"], []).append(m["p"]["s"])
            return
        super().add(m)


def host(url: str, recovery: bool = True, workers: int = 2, **env: str) -> Cluster:
    return Cluster(workers, "--redis", url, target=TARGET,
                   env_extra={"WSE_TEST_RECOVERY": "1" if recovery else "0", **env})


def stop_all(hosts: list[Cluster]) -> None:
    for h in hosts:
        h.stop()


async def every_worker(hosts: list[Cluster], per_worker: int = 2) -> list[list[ClientConnection]]:
    """Per host: ``per_worker`` clients on each of its workers, in one list."""
    out = []
    for h in hosts:
        by = await clients_on_every_worker(h.url, h.workers, per_worker=per_worker)
        out.append([ws for w in sorted(by) for ws in by[w]])
    return out


async def read_to_end(pubs: list[ClientConnection], subs: list[ClientConnection], seen: list[Seen], topic: str) -> None:
    """Each publisher sends an end mark; every subscriber reads until it has every mark. A
    publisher's order holds, so a repeat of anything it sent before would be in by then.
    The marks are taken out of ``seen`` again."""
    for k, p in enumerate(pubs):
        await p.send(envelope("pub", {"topic": topic, "data": {"s": -1 - k}}))
    for ws, s in zip(subs, seen):
        while not all(-1 - k in s.values.get(topic, []) for k in range(len(pubs))):
            s.add(orjson.loads(await asyncio.wait_for(ws.recv(), 30)))
        keep = [i for i, v in enumerate(s.values[topic]) if v >= 0]
        if topic in s.offsets and len(s.offsets[topic]) == len(s.values[topic]):
            s.offsets[topic] = [s.offsets[topic][i] for i in keep]
        s.values[topic] = [s.values[topic][i] for i in keep]


async def collect(ws: ClientConnection, seen: Seen, n: int, topic: str, timeout: float = 20.0) -> None:
    while len(seen.values.get(topic, [])) < n:
        seen.add(orjson.loads(await asyncio.wait_for(ws.recv(), timeout)))


def wait_subscribed(h: Cluster, n: int) -> None:
    """Until every worker of ``h`` holds ``n`` topic subscriptions on Redis."""
    h.wait_metric("wse_redis_subscriptions", lambda m: len(m) == h.workers and all(v == n for v in m.values()), 15.0)


async def probe_until_heard(pubs: list[ClientConnection], subs: list[ClientConnection], topic: str) -> None:
    """Without recovery interest crosses asynchronously: probe until every subscriber hears
    every publisher."""
    for p in pubs:
        await until_all_hear(p, subs, topic)


def per_publisher_in_order(values: list[int], publishers: int) -> None:
    for k in range(publishers):
        mine = [v for v in values if v % publishers == k]
        assert mine == sorted(mine), (k, mine[:20])


def test_two_hosts_without_recovery_every_subscriber_hears_every_host_once_in_order(redis: RedisServer) -> None:
    hosts = [host(redis.url, recovery=False) for _ in range(2)]

    async def main() -> None:
        clients = await every_worker(hosts, per_worker=2)
        # On each host: worker 0's first client publishes, everyone else (every worker) listens.
        pubs = [c[0] for c in clients]
        subs = [ws for c in clients for ws in c[1:]]
        for ws in subs:
            await subscribe(ws, "room")
        await asyncio.to_thread(wait_subscribed, hosts[0], 1)
        await probe_until_heard(pubs, subs, "room")
        n = 300
        for i in range(n):
            await pubs[i % 2].send(envelope("pub", {"topic": "room", "data": {"s": i}}))
        seen = [Seen() for _ in subs]
        await asyncio.gather(*(collect(ws, s, n, "room") for ws, s in zip(subs, seen)))
        await read_to_end(pubs, subs, seen, "room")
        for s in seen:
            assert sorted(s.values["room"]) == list(range(n)), "each publication exactly once"
            per_publisher_in_order(s.values["room"], 2)
        # Each host dropped its own publications coming back (its mesh had delivered them).
        own = await asyncio.to_thread(hosts[0].metric, "wse_redis_own_total")
        assert sum(own.values()) >= n // 2
        for ws in [*pubs, *subs]:
            await ws.close()

    try:
        asyncio.run(main())
    finally:
        stop_all(hosts)


def test_three_hosts_with_recovery_share_one_offset_run_per_topic(redis: RedisServer) -> None:
    hosts = [host(redis.url) for _ in range(3)]

    async def main() -> None:
        clients = await every_worker(hosts, per_worker=2)
        pubs = [c[0] for c in clients]
        subs = [ws for c in clients for ws in c[1:]]
        for ws in subs:
            await sub_recover(ws, ["feed"])
        n = 300
        for i in range(n):
            await pubs[i % 3].send(envelope("pub", {"topic": "feed", "data": {"s": i}}))
        seen = [Seen() for _ in subs]
        await asyncio.gather(*(collect(ws, s, n, "feed") for ws, s in zip(subs, seen)))
        await read_to_end(pubs, subs, seen, "feed")
        first = seen[0]
        for s in seen:
            # Subscribed before the first publication (the ack waited for Redis): 1..n, one epoch.
            assert s.offsets["feed"] == list(range(1, n + 1))
            assert s.epochs["feed"] == first.epochs["feed"] and len(s.epochs["feed"]) == 1
            assert s.values["feed"] == first.values["feed"], "the same order everywhere"
            per_publisher_in_order(s.values["feed"], 3)
        assert sorted(first.values["feed"]) == list(range(n))
        assert int(cli(redis.port, "XLEN", "wse:{feed}:s")) >= n
        for ws in [*pubs, *subs]:
            await ws.close()

    try:
        asyncio.run(main())
    finally:
        stop_all(hosts)


def test_a_client_moves_to_another_host_and_recovers_what_it_missed(redis: RedisServer) -> None:
    hosts = [host(redis.url) for _ in range(2)]

    async def main() -> None:
        a, _ = await open_ready(hosts[0].url)
        pub, _ = await open_ready(hosts[1].url)
        topics = ["m1", "m2"]
        await sub_recover(a, topics)
        for i in range(40):
            await pub.send(envelope("pub", {"topic": topics[i % 2], "data": {"s": i}}))
        before = Seen()
        while sum(len(v) for v in before.values.values()) < 40:
            before.add(orjson.loads(await asyncio.wait_for(a.recv(), 10)))
        await a.close()
        # Away: 60 more, made on the other host (whose workers never had a subscriber for them).
        for i in range(40, 100):
            await pub.send(envelope("pub", {"topic": topics[i % 2], "data": {"s": i}}))
        await asyncio.sleep(0)
        # Back on the other host, on any of its workers, from where it stopped.
        b, _ = await open_ready(hosts[1].url)
        after = Seen()
        # Wait until Redis holds all 100 so the test does not race the publisher's pipeline.
        for _ in range(200):
            if sum(int(cli(redis.port, "XLEN", f"wse:{{{t}}}:s") or 0) for t in topics) >= 100:
                break
            await asyncio.sleep(0.05)
        rec = await sub_recover(b, topics, before.points(), after)
        for t in topics:
            assert rec[t]["recovered"] is True, rec
            want = [i for i in range(40, 100) if topics[i % 2] == t]
            assert after.values[t] == want, (t, after.values[t][:10])
            assert after.offsets[t] == list(range(before.offsets[t][-1] + 1, before.offsets[t][-1] + 1 + len(want)))
            assert after.epochs[t] == before.epochs[t]
        await b.close()
        await pub.close()

    try:
        asyncio.run(main())
    finally:
        stop_all(hosts)


def test_interest_follows_subscribers_on_every_host(redis: RedisServer) -> None:
    h = host(redis.url, recovery=False, workers=1)

    async def main() -> None:
        ws, _ = await open_ready(h.url)
        await subscribe(ws, "only.this")
        await subscribe(ws, "news.*")
        await asyncio.to_thread(h.wait_metric, "wse_redis_subscriptions", lambda m: m.get("0") == 1)
        channels = cli(redis.port, "PUBSUB", "SHARDCHANNELS").split()
        assert channels == ["wse:{only.this}"], channels
        assert "wse:p:news.*" in cli(redis.port, "PUBSUB", "CHANNELS", "*") or int(
            cli(redis.port, "PUBSUB", "NUMPAT")) == 1
        # The last subscriber leaves: the host drops the topic on Redis.
        await ws.close()
        await asyncio.to_thread(h.wait_metric, "wse_redis_subscriptions", lambda m: m.get("0") == 0)
        assert cli(redis.port, "PUBSUB", "SHARDCHANNELS") == ""
        assert cli(redis.port, "PUBSUB", "NUMPAT") == "0"

    try:
        asyncio.run(main())
    finally:
        h.stop()


def test_patterns_cross_hosts(redis: RedisServer) -> None:
    hosts = [host(redis.url, recovery=False, workers=1) for _ in range(2)]

    async def main() -> None:
        sub, _ = await open_ready(hosts[0].url)
        pub, _ = await open_ready(hosts[1].url)
        await subscribe(sub, "news.*")
        # Publishers learn the deployment's patterns within a second or so: probe until heard.
        await probe_until_heard([pub], [sub], "news.probe")
        for i in range(20):
            await pub.send(envelope("pub", {"topic": f"news.{i % 3}", "data": {"s": i}}))
            await pub.send(envelope("pub", {"topic": f"sport.{i % 3}", "data": {"s": 1000 + i}}))
        seen = Seen()
        while sum(len(v) for v in seen.values.values()) < 20:
            seen.add(orjson.loads(await asyncio.wait_for(sub.recv(), 10)))
        await pub.send(envelope("pub", {"topic": "news.end", "data": {"s": -1}}))
        while -1 not in seen.values.get("news.end", []):
            seen.add(orjson.loads(await asyncio.wait_for(sub.recv(), 10)))
        seen.values.pop("news.end")
        got = sorted(v for vs in seen.values.values() for v in vs)
        assert got == list(range(20)), got
        await sub.close()
        await pub.close()

    try:
        asyncio.run(main())
    finally:
        stop_all(hosts)


def test_redis_killed_and_restarted_mid_stream(redis: RedisServer) -> None:
    hosts = [host(redis.url, recovery=False, workers=1) for _ in range(2)]

    async def main() -> None:
        pub, _ = await open_ready(hosts[0].url)
        local, _ = await open_ready(hosts[0].url)
        remote, _ = await open_ready(hosts[1].url)
        for ws in (local, remote):
            await subscribe(ws, "live")
        await probe_until_heard([pub], [local, remote], "live")
        n = 150
        seen_local, seen_remote = Seen(), Seen()
        for i in range(n):
            if i == 50:
                # The first 50 count as sent before the outage once they crossed: a publication
                # still on its way when Redis dies is at most once, like any without recovery.
                await collect(remote, seen_remote, 50, "live")
                redis.kill()
                await asyncio.to_thread(hosts[0].wait_metric, "wse_redis_up", lambda m: m.get("0") == 0)
            if i == 100:
                # Down: the host's own subscriber got everything so far; the rest waits in the buffer.
                await collect(local, seen_local, 100, "live")
                buffered = await asyncio.to_thread(hosts[0].metric, "wse_redis_buffered")
                assert buffered["0"] >= 1, buffered
                redis.start()
                # Back: the buffer empties into Redis, and host B subscribes again.
                await asyncio.to_thread(hosts[0].wait_metric, "wse_redis_buffered", lambda m: m.get("0") == 0, 30.0)
                await asyncio.to_thread(hosts[1].wait_metric, "wse_redis_subscriptions", lambda m: m.get("0") == 1, 30.0)
            await pub.send(envelope("pub", {"topic": "live", "data": {"s": i}}))
        await collect(local, seen_local, n, "live")
        await read_to_end([pub], [remote], [seen_remote], "live")
        assert seen_local.values["live"] == list(range(n))
        # Without recovery, at most once across hosts: what was buffered reaches host B if it had
        # subscribed again by the time host A sent it; the rest reaches it all, once, in order.
        got = seen_remote.values["live"]
        assert got == sorted(set(got)), "once each, in order"
        assert [v for v in got if v < 50 or v >= 100] == [*range(50), *range(100, n)]
        rc = await asyncio.to_thread(hosts[0].metric, "wse_redis_reconnects_total")
        assert rc["0"] >= 1
        for ws in (pub, local, remote):
            await ws.close()

    try:
        asyncio.run(main())
    finally:
        stop_all(hosts)


def test_with_recovery_local_delivery_goes_on_while_redis_is_down(redis: RedisServer) -> None:
    a, b = host(redis.url, workers=2), host(redis.url, workers=1)

    async def main() -> None:
        by = await clients_on_every_worker(a.url, 2, per_worker=2)
        pub = by[0][0]
        local = [by[0][1], *by[1]]
        remote, _ = await open_ready(b.url)
        for ws in [*local, remote]:
            await sub_recover(ws, ["r"])
        seen = [Seen() for _ in local]
        seen_remote = Seen()

        async def send(lo: int, hi: int) -> None:
            for i in range(lo, hi):
                await pub.send(envelope("pub", {"topic": "r", "data": {"s": i}}))

        await send(0, 30)
        await asyncio.gather(*(collect(ws, s, 30, "r") for ws, s in zip(local, seen)))
        await collect(remote, seen_remote, 30, "r")
        redis.kill()
        await asyncio.to_thread(a.wait_metric, "wse_redis_up", lambda m: m == {"0": 0, "1": 0})
        # Down: every subscriber on the publisher's host (both workers) gets them now.
        await send(30, 60)
        await asyncio.gather(*(collect(ws, s, 60, "r") for ws, s in zip(local, seen)))
        buffered = await asyncio.to_thread(a.metric, "wse_redis_buffered")
        assert buffered["0"] >= 1, buffered
        redis.start()
        await asyncio.to_thread(a.wait_metric, "wse_redis_buffered", lambda m: m.get("0") == 0, 30.0)
        await asyncio.to_thread(b.wait_metric, "wse_redis_subscriptions", lambda m: m.get("0") == 1, 30.0)
        await send(60, 90)
        await read_to_end([pub], [*local, remote], [*seen, seen_remote], "r")
        for s in seen:
            # Once each, in order: the copies Redis stamped later were kept, not delivered again.
            assert s.values["r"] == list(range(90)), s.values["r"]
        got = seen_remote.values["r"]
        assert got == sorted(set(got)) and got[:30] == list(range(30)) and got[-30:] == list(range(60, 90)), got
        for ws in [pub, *local, remote]:
            await ws.close()

    try:
        asyncio.run(main())
    finally:
        stop_all([a, b])


def test_past_the_buffer_publications_are_dropped_and_counted(redis: RedisServer) -> None:
    h = host(redis.url, recovery=False, workers=1, WSE_TEST_REDIS_BUFFER="10")

    async def main() -> None:
        pub, _ = await open_ready(h.url)
        local, _ = await open_ready(h.url)
        await subscribe(local, "x")
        redis.kill()
        await asyncio.to_thread(h.wait_metric, "wse_redis_up", lambda m: m.get("0") == 0)
        for i in range(30):
            await pub.send(envelope("pub", {"topic": "x", "data": {"s": i}}))
        seen = Seen()
        await collect(local, seen, 30, "x")
        assert seen.values["x"] == list(range(30)), "local delivery goes on without Redis"
        await asyncio.to_thread(h.wait_metric, "wse_redis_dropped_total", lambda m: m.get("0") == 20)
        got: dict[str, Any] = await asyncio.to_thread(h.metric, "wse_redis_buffered")
        assert got["0"] == 10
        await pub.close()
        await local.close()

    try:
        asyncio.run(main())
    finally:
        h.stop()


def test_redis_cluster_two_hosts_survive_a_master_failover_mid_stream() -> None:
    """Three masters with a replica each; the master serving the topic is killed mid-stream."""
    from tests.redis_util import RedisCluster

    rc = RedisCluster()
    hosts = [host(rc.url) for _ in range(2)]

    async def main() -> None:
        clients = await every_worker(hosts, per_worker=2)
        pubs = [c[0] for c in clients]
        subs = [ws for c in clients for ws in c[1:]]
        for ws in subs:
            await sub_recover(ws, ["fx"])
        victim = rc.master_of("wse:{fx}")
        n, kill_at = 300, 100
        sent = 0
        for i in range(n):
            if i == kill_at:
                # Let what was sent so far reach every subscriber, then take the topic's master down.
                subs_seen = [Seen() for _ in subs]
                try:
                    await asyncio.gather(*(collect(ws, s, kill_at, "fx") for ws, s in zip(subs, subs_seen)))
                except TimeoutError:
                    import sys
                    print([len(s.values.get("fx", [])) for s in subs_seen], file=sys.stderr)
                    for h in hosts:
                        print(h.scrape(), file=sys.stderr)
                    raise
                assert await asyncio.to_thread(rc.fail_over, "wse:{fx}") == victim
            await pubs[i % 2].send(envelope("pub", {"topic": "fx", "data": {"s": i}}))
            sent += 1
        # Every publication made after the failover reaches every subscriber, in one offset run
        # that only grows (Redis's replication is asynchronous: the dead master's last few may
        # be lost, never delivered twice).
        for k, (ws, s) in enumerate(zip(subs, subs_seen)):
            try:
                while len([v for v in s.values["fx"] if v >= kill_at]) < n - kill_at:
                    s.add(orjson.loads(await asyncio.wait_for(ws.recv(), 20)))
            except TimeoutError:
                import sys
                after = sorted(v for v in s.values["fx"] if v >= kill_at)
                print("sub", k, "missing", sorted(set(range(kill_at, n)) - set(after))[:50], s.offsets["fx"][kill_at - 5:kill_at + 20],
                      file=sys.stderr)
                for h in hosts:
                    print(h.scrape(), file=sys.stderr)
                raise
        await read_to_end(pubs, subs, subs_seen, "fx")
        for s in subs_seen:
            offs = s.offsets["fx"]
            assert offs == sorted(set(offs)), "offsets only grow: nothing twice, nothing out of order"
            assert sorted(v for v in s.values["fx"] if v >= kill_at) == list(range(kill_at, n))
            per_publisher_in_order(s.values["fx"], 2)
        assert subs_seen[0].values == subs_seen[-1].values
        for ws in [*pubs, *subs]:
            await ws.close()

    try:
        asyncio.run(main())
    finally:
        stop_all(hosts)
        rc.stop()
