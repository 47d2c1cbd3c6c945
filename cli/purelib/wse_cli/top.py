"""``wse top``: the supervisor's /metrics as a table per worker, refreshed in the terminal."""

from __future__ import annotations

import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable

from wse.metrics import parse

Sample = dict[str, dict[tuple[str, ...], float]]


def scrape(url: str) -> dict[str, dict[str, float]]:
    """Per worker: the figures the table shows (counters as totals)."""
    with urllib.request.urlopen(url, timeout=3) as r:
        text = r.read().decode()
    per: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for name, labels, value in parse(text):
        w = labels.get("worker")
        if w is None:
            continue
        d = per[w]
        if name in ("wse_messages_total", "wse_bytes_total"):
            d[f"{name}:{labels.get('direction')}"] += value
        elif name == "wse_mesh_messages_total":
            d[f"mesh:{labels.get('direction')}"] += value
        elif not name.endswith(("_bucket", "_sum", "_count")):
            d[name] += value
    return per


def table(prev: dict[str, dict[str, float]], cur: dict[str, dict[str, float]], dt: float) -> str:
    def rate(w: str, key: str) -> float:
        return max(0.0, cur[w].get(key, 0.0) - prev.get(w, {}).get(key, 0.0)) / dt

    head = f"{'worker':>6} {'up':>3} {'conns':>8} {'in/s':>10} {'out/s':>10} {'pub/s':>9} {'mesh in/s':>10} {'mesh out/s':>10} {'restarts':>8} {'cpu%':>6}"
    rows = [head]
    total: dict[str, float] = defaultdict(float)
    for w in sorted(cur, key=int):
        c = cur[w]
        vals = {
            "conns": c.get("wse_connections_active", 0.0),
            "in": rate(w, "wse_messages_total:in"),
            "out": rate(w, "wse_messages_total:out"),
            "pub": rate(w, "wse_publishes_total"),
            "min": rate(w, "mesh:in"),
            "mout": rate(w, "mesh:out"),
            "cpu": 100 * rate(w, "wse_worker_cpu_seconds_total"),
        }
        for k, v in vals.items():
            total[k] += v
        rows.append(
            f"{w:>6} {int(c.get('wse_worker_up', 0)):>3} {int(vals['conns']):>8} {vals['in']:>10.0f} {vals['out']:>10.0f} "
            f"{vals['pub']:>9.0f} {vals['min']:>10.0f} {vals['mout']:>10.0f} {int(c.get('wse_worker_restarts_total', 0)):>8} {vals['cpu']:>6.1f}"
        )
    rows.append(
        f"{'all':>6} {'':>3} {int(total['conns']):>8} {total['in']:>10.0f} {total['out']:>10.0f} {total['pub']:>9.0f} "
        f"{total['min']:>10.0f} {total['mout']:>10.0f} {'':>8} {total['cpu']:>6.1f}"
    )
    if any("wse_redis_up" in cur[w] for w in cur):
        rows += ["", bridge_table(cur, rate)]
    return "\n".join(rows)


def bridge_table(cur: dict[str, dict[str, float]], rate: Callable[[str, str], float]) -> str:
    """The Redis bridge of each worker (``--redis``): its link, traffic, buffer and losses."""
    rows = [f"{'redis':>6} {'link':>5} {'topics':>7} {'out/s':>9} {'in/s':>9} {'buffered':>9} {'dropped':>8} {'reconn':>7} {'lag ms':>7}"]
    for w in sorted(cur, key=int):
        c = cur[w]
        if "wse_redis_up" not in c:
            continue
        lag = c.get("wse_redis_lag_max_seconds", 0.0) * 1000
        rows.append(
            f"{w:>6} {'up' if c['wse_redis_up'] else 'DOWN':>5} {int(c.get('wse_redis_subscriptions', 0)):>7} "
            f"{rate(w, 'wse_redis_published_total'):>9.0f} {rate(w, 'wse_redis_received_total'):>9.0f} "
            f"{int(c.get('wse_redis_buffered', 0)):>9} {int(c.get('wse_redis_dropped_total', 0)):>8} "
            f"{int(c.get('wse_redis_reconnects_total', 0)):>7} {lag:>7.0f}"
        )
    return "\n".join(rows)


def run_top(url: str, interval: float, once: bool) -> int:
    try:
        prev, t0 = scrape(url), time.monotonic()
        while True:
            time.sleep(interval)
            cur, t1 = scrape(url), time.monotonic()
            out = table(prev, cur, t1 - t0)
            if once:
                print(out)
                return 0
            sys.stdout.write("\x1b[H\x1b[2J" + f"wse top  {url}  (every {interval:g}s, Ctrl-C quits)\n\n" + out + "\n")
            sys.stdout.flush()
            prev, t0 = cur, t1
    except KeyboardInterrupt:
        return 0
    except OSError as e:
        print(f"wse top: cannot read {url}: {e}", file=sys.stderr)
        return 1
