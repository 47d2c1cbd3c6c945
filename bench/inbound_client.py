"""Inbound load client: C picows connections send K ``{"t":"count"}`` messages each, as fast as
TCP lets them; the server's own count (``bench.stats``) says when all were processed.

    taskset -c 1 python bench/inbound_client.py CONNECTIONS PER_CONN PORT SERVER_PID

Prints one JSON line: processed messages, wall seconds, server CPU-seconds (utime + stime of all
its threads over the window), client CPU-seconds.
"""
import asyncio, os, sys, time, orjson
from picows import ws_connect, WSListener, WSMsgType
N, K, PORT, PID = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")",1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
class L(WSListener):
    def __init__(self): self.q = asyncio.Queue()
    def on_ws_frame(self, t, f):
        if f.msg_type in (WSMsgType.BINARY, WSMsgType.TEXT): self.q.put_nowait(f.get_payload_as_bytes())
async def received(conn):
    tr, l = conn
    tr.send(WSMsgType.TEXT, orjson.dumps({"t": "bench.stats"}))
    while True:
        m = orjson.loads(await l.q.get())
        if m.get("t") == "bench.stats":
            return m["p"]["received"]


async def main():
    conns = []
    for i in range(N):
        tr, l = await ws_connect(L, f"ws://127.0.0.1:{PORT}/wse")
        conns.append((tr, l))
    msg = orjson.dumps({"t": "count", "p": {"x": "y" * 20}})  # about 50 bytes, as in REFERENCE.md
    base = await received(conns[0])
    c0, t0, p0 = cpu(PID), time.monotonic(), time.process_time()
    for r in range(K // 100):
        for tr, l in conns:
            for _ in range(100):
                tr.send(WSMsgType.TEXT, msg)
        await asyncio.sleep(0)
    deadline = time.monotonic() + 120
    while (done := await received(conns[0]) - base) < N * K and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    wall, scpu = time.monotonic() - t0, cpu(PID) - c0
    ccpu = time.process_time() - p0
    print(orjson.dumps({"processed": done, "expected": N * K, "wall_s": wall, "server_cpu_s": scpu, "client_cpu_s": ccpu}).decode())
asyncio.run(main())
