"""The cost of deciding pattern-matched topics per connection (docs/PROTOCOL.md, "Patterns and
authorization"): server CPU per delivery for subscribers of exact topics, of a pattern without
a hook, and of a pattern with an `authorize_subscription` hook (asked once per topic and
connection, then cached). Standalone: `python bench/pattern_auth.py [--subs 50 --messages 4000]`.

Server CPU is the sum of every server thread's nanosecond counter (/proc/PID/task/*/schedstat)
around the publishing phase only, so the one-off hook questions (one per topic and subscriber,
made in a warm-up before it) are not in the figure. The three modes run interleaved, `--runs`
times each; the median (min-max) is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
TOPICS = [f"t.{i}" for i in range(16)]

APP = '''
import os
from wse import WSEApp, WSEConfig
app = WSEApp(WSEConfig(port=0, rate_limit_capacity=0))
if os.environ.get("BENCH_HOOK") == "1":
    @app.authorize_subscription
    def allow(conn, topic):
        return not topic.startswith("secret.")
@app.on("go")
def go(conn, msg):
    p = msg.payload
    for i in range(p["n"]):
        app.publish(p["topics"][i % len(p["topics"])], {"i": i}, type="pub")
    app.send(conn, {}, type="done")
'''


def cpu_ns(pid: int) -> int:
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            pass
    return total


async def run(mode: str, subs: int, messages: int) -> float:
    env = dict(os.environ, BENCH_HOOK="1" if mode == "pattern+hook" else "0")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    app_dir = Path("/tmp") / f"wse-bench-pattern-{os.getpid()}"
    app_dir.mkdir(exist_ok=True)
    (app_dir / "pattern_auth_app.py").write_text(APP)
    env["PYTHONPATH"] = str(app_dir) + os.pathsep + env["PYTHONPATH"]
    proc = subprocess.Popen([sys.executable, "-m", "wse_cli.main", "run", "pattern_auth_app:app", "--log-level", "warning"],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        want = ["t.*"] if mode.startswith("pattern") else TOPICS
        conns = []
        for _ in range(subs):
            ws = await connect(url, max_size=None)
            await ws.recv()
            await ws.send(orjson.dumps({"c": "WSE", "t": "subscription_update", "p": {"action": "subscribe", "topics": want}}))
            conns.append(ws)

        async def drain(ws, n: int) -> None:
            got = 0
            while got < n:
                m = orjson.loads(await ws.recv())
                got += m.get("t") == "pub"

        pub = await connect(url, max_size=None)
        await pub.recv()
        # Warm-up: every topic published once, so each subscriber's verdicts are decided.
        await pub.send(orjson.dumps({"t": "go", "p": {"n": len(TOPICS), "topics": TOPICS}}))
        await asyncio.gather(*(drain(ws, len(TOPICS)) for ws in conns))
        t0 = cpu_ns(proc.pid)
        await pub.send(orjson.dumps({"t": "go", "p": {"n": messages, "topics": TOPICS}}))
        await asyncio.gather(*(drain(ws, messages) for ws in conns))
        used = (cpu_ns(proc.pid) - t0) / 1e9
        for ws in conns + [pub]:
            await ws.close()
        return used / (subs * messages) * 1e9
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--subs", type=int, default=50)
    ap.add_argument("--messages", type=int, default=4000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    modes = ("exact", "pattern", "pattern+hook")
    got: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.runs):
        for mode in modes:
            got[mode].append(asyncio.run(run(mode, args.subs, args.messages)))
    for mode in modes:
        v = sorted(got[mode])
        print(f"{mode:13s} {args.subs} subscribers x {args.messages} publications: "
              f"{v[len(v) // 2]:6.0f} ns server CPU per delivery ({v[0]:.0f}-{v[-1]:.0f})")


if __name__ == "__main__":
    main()
