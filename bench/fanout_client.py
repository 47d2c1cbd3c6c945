"""Fan-out load client: S picows connections in one uvloop loop, each subscribed to one topic.

Run by ``bench/fanout.py`` pinned to core 1 (``taskset -c 1``); usable alone:

    taskset -c 1 python bench/fanout_client.py --url ws://127.0.0.1:PORT/wse \
        --subscribers 1000 --messages 2000 --server-pid PID

Steps: open every connection (bounded concurrency), send ``subscription_update`` on each and wait
for every ack; read the server's CPU time (utime + stime of all its threads, /proc/PID/stat) and
its own; ask the server (through subscriber 0) to publish; count and check every delivery; when
each subscriber has all ``messages`` (or at the deadline) read both CPU times again. Prints one
JSON object on its last stdout line.

Checks per subscriber, on every delivery: ``p.s`` must be exactly the previous one + 1 (first 0);
a smaller value counts as a duplicate/reorder, a larger one as a gap. ``p.s`` is found with a byte
search (cheap); every ``--verify-every``-th delivery of each subscriber (and its first and last)
is also parsed in full with orjson and must be a ``tick`` envelope on the topic with the same
``p.s``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

import orjson
import picows

CLK_TCK = os.sysconf("SC_CLK_TCK")
SEQ_KEY = b'"p":{"s":'


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def all_server_cpu(args: argparse.Namespace) -> float:
    """CPU seconds of the server process and, for a cluster, of its other processes too."""
    pids = ([args.server_pid] if args.server_pid else []) + [int(p) for p in args.extra_server_pids.split(",") if p]
    return sum(proc_cpu(p) for p in pids)


def pad_for(size: int) -> str:
    """The same padding as the servers: ``{"s":N,"d":"<pad>"}`` is about ``size`` bytes."""
    overhead = len('{"s":12345,"d":""}')
    return "x" * max(0, size - overhead)


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of a process, summed by thread name (comm)."""
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        name = data[data.index(b"(") + 1 : data.rindex(b")")].decode(errors="replace")
        fields = data[data.rindex(b")") + 2 :].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def core_times(cores: tuple[int, ...]) -> dict[int, list[float]]:
    """Each core's /proc/stat times in seconds: user nice system idle iowait irq softirq steal."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                parts = line.split()
                n = int(parts[0][3:])
                if n in cores:
                    out[n] = [int(x) / CLK_TCK for x in parts[1:9]]
    return out


def core_delta(a: dict[int, list[float]], b: dict[int, list[float]], core: int, own: float) -> dict[str, float]:
    """Where a core's time went over a window, beside the process pinned to it (``own``)."""
    d = [y - x for x, y in zip(a[core], b[core])]
    busy = d[0] + d[1] + d[2] + d[5] + d[6]
    return {
        "irq_softirq_s": round(d[5] + d[6], 3),
        "steal_s": round(d[7], 3),
        "idle_s": round(d[3] + d[4], 3),
        "other_tasks_s": round(max(0.0, d[0] + d[1] + d[2] - own), 3),
        "busy_s": round(busy, 3),
    }


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


class Run:
    def __init__(self, subscribers: int, messages: int, size: int, topic: str, verify_every: int) -> None:
        self.subscribers = subscribers
        self.messages = messages
        self.topic = topic
        self.verify_every = verify_every
        self.acked = 0
        self.all_acked = asyncio.get_running_loop().create_future()
        self.complete = 0
        self.all_done = asyncio.get_running_loop().create_future()
        self.gaps = 0
        self.dups = 0
        self.bad = 0
        self.other = 0
        self.done_info: dict[str, Any] | None = None
        self.stats: dict[str, Any] | None = None
        self.stats_waiter: asyncio.Future[None] | None = None
        self.last_stats: dict[str, Any] | None = None
        self.disconnected = 0
        self.errors: list[str] = []
        self.t_end = 0.0
        # b'"p":{"s":N,"d":"<pad>"}' for every expected N, and one that never matches (surplus).
        pad = pad_for(size)
        self._tokens = [b'"p":{"s":%d,"d":"%s"}' % (i, pad.encode()) for i in range(messages)]
        self.full_tokens = self._tokens + [b"\0never"]
        self.verified = 0
        self.verified_bytes = 0

    def reset(self, messages: int) -> None:
        """Before each publication round (its count may differ from the last)."""
        self.messages = messages
        self.complete = 0
        self.all_done = asyncio.get_running_loop().create_future()
        self.gaps = self.dups = self.bad = self.other = 0
        self.verified = self.verified_bytes = 0
        self.done_info = None
        self.t_end = 0.0
        self.full_tokens = self._tokens[:messages] + [b"\0never"]


class Sub(picows.WSListener):
    """One subscriber. The per-frame path is kept lean (the client must outrun the servers):
    the expected delivery ``s == expect`` is recognised by ``endswith`` of the precomputed
    ``"p":{"s":<expect>,"d":"<pad>"}`` at the place learned from the first delivery; anything
    else takes the slow path, which parses ``p.s`` and classifies gaps and duplicates."""

    __slots__ = ("run", "idx", "ft", "k", "expect", "adj", "vat", "acked", "done", "transport")

    def __init__(self, run: Run, idx: int) -> None:
        self.run = run
        self.idx = idx
        self.ft = run.full_tokens
        self.k = 1 << 30  # bytes after the payload object; unknown until the first delivery
        self.expect = 0  # the next p.s expected
        self.adj = 0  # deliveries counted = expect + adj
        self.vat = 0  # the next p.s to verify in full (every verify_every-th, and the last)
        self.acked = False
        self.done = False
        self.transport: picows.WSTransport | None = None

    def reset(self) -> None:
        self.ft = self.run.full_tokens
        self.expect = self.adj = self.vat = 0
        self.done = False

    @property
    def count(self) -> int:
        return self.expect + self.adj

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self.transport = transport
        msg = {"c": "WSE", "t": "subscription_update", "p": {"action": "subscribe", "topics": [self.run.topic]}}
        transport.send(picows.WSMsgType.TEXT, orjson.dumps(msg))

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        run = self.run
        run.disconnected += 1
        if self.count < run.messages and len(run.errors) < 20:
            run.errors.append(f"subscriber {self.idx} disconnected after {self.count} deliveries")

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        d = frame.get_payload_as_bytes()
        e = self.expect
        if d.endswith(self.ft[e], 0, len(d) - self.k):
            self.expect = e + 1
            if e == self.vat:
                self.verify(d, e)
            return
        self.slow(transport, frame, d)

    def slow(self, transport: picows.WSTransport, frame: picows.WSFrame, d: bytes) -> None:
        mt = frame.msg_type
        if mt is not picows.WSMsgType.BINARY and mt is not picows.WSMsgType.TEXT:
            if mt is picows.WSMsgType.PING:
                transport.send_pong(d)
            elif mt is picows.WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
            return
        i = d.find(SEQ_KEY)
        if i < 0:
            self.control(d)
            return
        run = self.run
        j = i + len(SEQ_KEY)
        try:
            s = int(d[j : d.index(b",", j)])
        except ValueError:
            run.bad += 1
            return
        count = self.count + 1
        e = self.expect
        if s < e:
            run.dups += 1
        elif s > e:
            run.gaps += 1
        if s >= run.messages or s < 0:
            run.bad += 1
            s = run.messages - 1
        elif s == e:
            ft = self.ft[s]
            if d.startswith(ft, i):
                self.k = len(d) - i - len(ft)
        self.expect = s + 1
        self.adj = count - self.expect
        if s >= self.vat or count >= run.messages:
            self.vat = s
            self.verify(d, s)

    def verify(self, d: bytes, s: int) -> None:
        """Full parse of one delivery; also where completion is noticed (the last p.s)."""
        run = self.run
        run.verified += 1
        run.verified_bytes += len(d)
        try:
            env = orjson.loads(d)
            good = env.get("t") == "tick" and env.get("tp") == run.topic and env["p"]["s"] == s
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            good = False
        if not good:
            run.bad += 1
        last = run.messages - 1
        self.vat = min(last, s + run.verify_every) if s < last else 1 << 62
        if self.count >= run.messages and not self.done:
            self.done = True
            run.complete += 1
            if run.complete == run.subscribers:
                run.t_end = time.perf_counter()
                if not run.all_done.done():
                    run.all_done.set_result(None)

    def control(self, data: bytes) -> None:
        run = self.run
        try:
            env = orjson.loads(data)
        except orjson.JSONDecodeError:
            run.other += 1
            return
        t = env.get("t") if isinstance(env, dict) else None
        if t == "subscription_update" and not self.acked:
            self.acked = True
            p = env.get("p") or {}
            if run.topic not in (p.get("success_topics") or []):
                run.errors.append(f"subscriber {self.idx}: subscription refused: {p}")
            run.acked += 1
            if run.acked == run.subscribers and not run.all_acked.done():
                run.all_acked.set_result(None)
        elif t == "bench.done":
            run.done_info = env.get("p")
        elif t == "bench.stats":
            run.stats = env.get("p")
            if run.stats_waiter is not None and not run.stats_waiter.done():
                run.stats_waiter.set_result(None)
        else:
            run.other += 1


async def server_stats(run: Run, control: Sub) -> dict[str, Any] | None:
    """The server's counters, if it answers ``bench.stats`` within a second."""
    run.stats = None
    run.stats_waiter = asyncio.get_running_loop().create_future()
    assert control.transport is not None
    control.transport.send(picows.WSMsgType.TEXT, b'{"t":"bench.stats","p":{}}')
    try:
        await asyncio.wait_for(run.stats_waiter, 1.0)
    except asyncio.TimeoutError:
        pass
    return run.stats


async def publish_round(args: argparse.Namespace, run: Run, subs: list[Sub], control: Sub, messages: int) -> dict[str, Any]:
    """One publication of ``messages`` to every subscriber, measured from the request to the
    last delivery."""
    run.reset(messages)
    for sub in subs:
        sub.reset()
    await asyncio.sleep(args.settle)
    cmd = {"t": "bench.publish", "p": {"topic": args.topic, "count": messages, "size": args.size, "chunk": args.chunk}}
    srv0 = all_server_cpu(args)
    cli0 = self_cpu()
    busy0 = core_times((args.server_core, args.client_core))
    thr0 = thread_cpu(args.server_pid) if args.server_pid else {}
    t0 = time.perf_counter()
    assert control.transport is not None
    control.transport.send(picows.WSMsgType.TEXT, orjson.dumps(cmd))
    timed_out = False
    try:
        await asyncio.wait_for(asyncio.shield(run.all_done), args.timeout)
        t1 = run.t_end
    except asyncio.TimeoutError:
        timed_out = True
        t1 = time.perf_counter()
    srv1 = all_server_cpu(args)
    cli1 = self_cpu()
    busy1 = core_times((args.server_core, args.client_core))
    thr1 = thread_cpu(args.server_pid) if args.server_pid else {}
    # Let anything that follows the last expected delivery (a duplicate, bench.done) arrive.
    await asyncio.sleep(0.2)
    stats = await server_stats(run, control)
    prev, run.last_stats = run.last_stats, stats
    delta = None
    if stats and prev:
        delta = {k: v - prev[k] for k, v in stats.items() if isinstance(v, (int, float)) and isinstance(prev.get(k), (int, float)) and v != prev[k]}
    wall = t1 - t0
    expected = len(subs) * messages
    server_cpu = srv1 - srv0
    client_cpu = cli1 - cli0
    deliveries = sum(s.count for s in subs)
    ok = (not timed_out) and deliveries == expected and run.gaps == 0 and run.dups == 0 and run.bad == 0
    ok = ok and run.disconnected == 0
    return dict(
        ok=ok,
        messages=messages,
        timed_out=timed_out,
        expected=expected,
        deliveries=deliveries,
        verified_in_full=run.verified,
        gaps=run.gaps,
        dups=run.dups,
        bad=run.bad,
        other_frames=run.other,
        complete_subscribers=run.complete,
        disconnected=run.disconnected,
        errors=list(run.errors),
        wall_s=wall,
        server_cpu_s=server_cpu,
        client_cpu_s=client_cpu,
        server_threads={k: round(v - thr0.get(k, 0.0), 2) for k, v in thr1.items() if v - thr0.get(k, 0.0) > 0},
        # Other processes' (and the kernel's softirq) time on the two cores: a noise indicator.
        server_core=core_delta(busy0, busy1, args.server_core, server_cpu),
        client_core=core_delta(busy0, busy1, args.client_core, client_cpu),
        deliveries_per_s=deliveries / wall if wall > 0 else 0.0,
        deliveries_per_server_cpu_s=deliveries / server_cpu if server_cpu > 0 else None,
        client_cpu_share=client_cpu / wall if wall > 0 else 0.0,
        avg_payload_bytes=run.verified_bytes / run.verified if run.verified else 0,
        server_report=run.done_info,
        server_stats_delta=delta,
    )


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The measured rounds as one: sums of deliveries, wall and CPU times."""
    out = dict(rounds[-1])
    for k in ("expected", "deliveries", "verified_in_full", "gaps", "dups", "bad", "other_frames", "wall_s",
              "server_cpu_s", "client_cpu_s"):
        out[k] = sum(r[k] for r in rounds)
    for k in ("server_core", "client_core"):
        out[k] = {f: round(sum(r[k][f] for r in rounds), 3) for f in rounds[0][k]}
    out["ok"] = all(r["ok"] for r in rounds)
    out["errors"] = [e for r in rounds for e in r["errors"]][:20]
    wall, cpu, d = out["wall_s"], out["server_cpu_s"], out["deliveries"]
    out["deliveries_per_s"] = d / wall if wall > 0 else 0.0
    out["deliveries_per_server_cpu_s"] = d / cpu if cpu > 0 else None
    out["client_cpu_share"] = out["client_cpu_s"] / wall if wall > 0 else 0.0
    out["avg_payload_bytes"] = sum(r["avg_payload_bytes"] for r in rounds) / len(rounds)
    out["measured_rounds"] = len(rounds)
    threads: dict[str, float] = {}
    for r in rounds:
        for k, v in r["server_threads"].items():
            threads[k] = round(threads.get(k, 0.0) + v, 2)
    out["server_threads"] = threads
    deltas = [r["server_stats_delta"] for r in rounds if r.get("server_stats_delta")]
    if deltas:
        out["server_stats_delta"] = {k: sum(d.get(k, 0) for d in deltas) for k in deltas[0]}
    out.pop("server_report", None)
    out["server_reports"] = [r["server_report"] for r in rounds]
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    run = Run(args.subscribers, max(args.messages, args.warmup), args.size, args.topic, args.verify_every)
    subs: list[Sub] = []
    transports: list[picows.WSTransport] = []
    sem = asyncio.Semaphore(args.connect_concurrency)
    hosts = [h for h in args.source_addrs.split(",") if h] if args.source_addrs else []

    async def connect(i: int) -> None:
        async with sem:
            kw: dict[str, Any] = {}
            if hosts:
                kw["local_addr"] = (hosts[i % len(hosts)], 0)
            tr, lst = await picows.ws_connect(
                lambda: Sub(run, i), args.url, enable_auto_pong=True, max_frame_size=1 << 20, **kw
            )
            assert isinstance(lst, Sub)
            subs.append(lst)
            transports.append(tr)

    result: dict[str, Any] = {"subscribers": args.subscribers, "messages": args.messages}
    t_conn = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(connect(i) for i in range(args.subscribers))), args.setup_timeout)
        await asyncio.wait_for(run.all_acked, args.setup_timeout)
    except Exception as e:  # noqa: BLE001
        result.update(ok=False, error=f"setup failed: {type(e).__name__}: {e}", connected=len(subs), acked=run.acked)
        for tr in transports:
            tr.disconnect()
        return result
    setup_s = time.perf_counter() - t_conn
    result["setup_s"] = setup_s
    control = min(subs, key=lambda s: s.idx)
    run.last_stats = await server_stats(run, control)
    warm = []
    for _ in range(args.warmup_rounds if args.warmup > 0 else 0):
        warm.append(await publish_round(args, run, subs, control, args.warmup))
    result["warmup"] = warm
    rounds = []
    for _ in range(args.rounds):
        r = await publish_round(args, run, subs, control, args.messages)
        rounds.append(r)
        if not r["ok"]:
            break
    result["rounds"] = rounds
    result.update(combine(rounds))
    for tr in transports:
        tr.disconnect()
    await asyncio.sleep(0.05)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--size", type=int, default=60)
    ap.add_argument("--chunk", type=int, default=0, help="server yields to its loop every N publications (WSE app)")
    ap.add_argument("--topic", default="bench")
    ap.add_argument("--server-pid", type=int, default=0)
    ap.add_argument("--extra-server-pids", default="", help="comma-separated: a cluster's other processes, CPU summed")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds for all deliveries")
    ap.add_argument("--setup-timeout", type=float, default=60.0)
    ap.add_argument("--settle", type=float, default=0.3, help="pause between the last ack and the publish")
    ap.add_argument("--connect-concurrency", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=-1, help="messages per unmeasured warm-up round (default: --messages; 0: none)")
    ap.add_argument("--warmup-rounds", type=int, default=2, help="unmeasured publications before the measured ones")
    ap.add_argument("--rounds", type=int, default=3, help="measured publications (their sums are reported)")
    ap.add_argument("--verify-every", type=int, default=97)
    ap.add_argument("--server-core", type=int, default=0, help="for the per-core noise figure")
    ap.add_argument("--client-core", type=int, default=1, help="for the per-core noise figure")
    ap.add_argument("--source-addrs", default="", help="comma-separated 127.x addresses to bind")
    args = ap.parse_args()
    if args.warmup < 0:
        args.warmup = args.messages
    try:
        import uvloop

        result = uvloop.run(main_async(args))
        result["client_loop"] = "uvloop"
    except ImportError:
        result = asyncio.run(main_async(args))
        result["client_loop"] = "asyncio"
    result["client"] = f"picows {picows.__version__ if hasattr(picows, '__version__') else '?'}, python {sys.version.split()[0]}"
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
