"""The report: tables into docs/BENCHMARKS.md (between markers) and plots into docs/img/, made
only from a results file (``bench/results/*.json``), so that it can be regenerated at any time.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from .servers import ROOT, SERVERS

BEGIN, END = "<!-- bench:suite:begin -->", "<!-- bench:suite:end -->"
DOC = ROOT / "docs" / "BENCHMARKS.md"

# (scenario prefix, title, unit of rate, unit of per-CPU-second)
TARGETS = [
    ("fanout_1000", "reference", 1.5, "fan-out, 1,000 subscribers: deliveries per server CPU-s >= 1.5x wse-server 2.5.1"),
    ("fanout_1000", "websockets", 20.0, "fan-out, 1,000 subscribers: deliveries per server CPU-s >= 20x python websockets"),
    ("inbound", "reference", 2.0, "inbound through a trivial Python handler (drain mode): processed per server CPU-s >= 2x wse-server 2.5.1"),
]


def si(v: float | None) -> str:
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.2f}M"
    if a >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}" if a >= 10 else f"{v:.2f}"


def us(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.0f} us"


def mmm(vals: list[float], fmt: Any = si, bold: bool = False) -> str:
    if not vals:
        return "-"
    v = sorted(vals)
    med = fmt(statistics.median(v))
    return f"{fmt(v[0])} / {'**' + med + '**' if bold else med} / {fmt(v[-1])}"


def good(rec: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in rec.get("samples", []) if s.get("ok")]


def median_of(rec: dict[str, Any] | None, key: str) -> float | None:
    if not rec:
        return None
    vals = [s[key] for s in good(rec) if s.get(key) is not None]
    return statistics.median(vals) if vals else None


def by(results: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["scenario"], r["server"]): r for r in results["records"]}


def status_cell(rec: dict[str, Any] | None) -> str | None:
    """The row's text when it has no figures (skipped, failed), else None."""
    if rec is None:
        return "not run"
    if rec["status"] == "skipped":
        return f"skipped: {rec['reason']}"
    if rec["status"] == "failed" and not good(rec):
        return f"failed: {rec['reason']}"
    if not good(rec):
        return "no clean sample: " + "; ".join(str(x) for x in rec.get("raw", []))[:200]
    return None


def gen_cell(rec: dict[str, Any]) -> str:
    shares = [s["gen_share"] for s in good(rec) if s.get("gen_share") is not None]
    if not shares:
        return "-"
    lb = any(s.get("lower_bound") for s in good(rec))
    return f"{max(shares):.0%}" + (" (lower bound)" if lb else "")


def rate_table(results: dict[str, Any], scenario: str, unit: str,
               extra: Sequence[tuple[str, str, Any]] = ()) -> list[str]:
    idx = by(results)
    servers = results["meta"]["servers"]
    wse = median_of(idx.get((scenario, "wse")), "per_cpu")
    head = f"| server | {unit}/s: min / median / max | {unit} per server CPU-s: min / median / max | wse / this server, per CPU-s |"
    sep = "|---|---|---|---|"
    for title, _, _ in extra:
        head += f" {title} |"
        sep += "---|"
    head += " generator CPU (max) | clean samples |"
    sep += "---|---|"
    out = [head, sep]
    for name in servers:
        rec = idx.get((scenario, name))
        label = SERVERS[name][0]
        why = status_cell(rec)
        if why or rec is None:
            out.append(f"| {label} | {why} |" + " |" * (4 + len(extra)))
            continue
        g = good(rec)
        pc = median_of(rec, "per_cpu")
        ratio = f"{wse / pc:.2f}x" if wse and pc and name != "wse" else ("1x" if name == "wse" and wse else "-")
        row = (f"| {label} | {mmm([s['rate'] for s in g])} | "
               f"{mmm([s['per_cpu'] for s in g if s.get('per_cpu')], bold=True)} | {ratio} |")
        for _, key, fmt in extra:
            row += f" {mmm([s[key] for s in g if s.get(key) is not None], fmt)} |"
        row += f" {gen_cell(rec)} | {len(g)} of {len(rec['samples'])} |"
        out.append(row)
    return out


def targets(results: dict[str, Any]) -> list[str]:
    idx = by(results)
    out = ["| target | measured (ratio of medians, per server CPU-s) | status |", "|---|---|---|"]
    for scenario, peer, want, text in TARGETS:
        a = median_of(idx.get((scenario, "wse")), "per_cpu")
        b = median_of(idx.get((scenario, peer)), "per_cpu")
        if a and b:
            r = a / b
            out.append(f"| {text} | {r:.2f}x | {'**met**' if r >= want else '**missed**'} |")
        else:
            why = status_cell(idx.get((scenario, peer))) or status_cell(idx.get((scenario, "wse"))) or "no figure"
            out.append(f"| {text} | - | not measured ({why}) |")
    return out


def describe(results: dict[str, Any]) -> list[str]:
    m = results["meta"]
    lines = [
        f"Run {m['date']} in mode `{m['mode']}` ({m['elapsed_s']:.0f} s), wse at commit {m['commit']}.",
        f"Machine: {m['machine']}.",
        f"Generator: {m['loadgen']}, `taskset -c 1`; every server `taskset -c 0`, loopback only.",
        "Servers: " + "; ".join(m["server_versions"].values()) + ".",
    ]
    return lines


def markdown(results: dict[str, Any]) -> str:
    m = results["meta"]
    sh = m["shape"]
    smoke = m.get("smoke")
    parts: list[str] = [BEGIN, "## Comparison with the peers (`bench/run.py`)", ""]
    if smoke:
        parts += ["**SMOKE RUN: tiny counts on a busy shared machine, to check the harness. These are not "
                  "measurements; run `python bench/run.py quick` on a quiet machine for figures.**", ""]
    parts += describe(results) + [""]
    parts += [f"Regenerate this section from the results file with `python bench/run.py report {m['results_file']}`; "
              f"the run itself was `{m['command']}`.", ""]
    parts += ["Rates are per wall second and per server CPU-second (utime + stime of every process and thread of "
              "the server, from `/proc/PID/stat`, over the measured window). The ratio column is wse's median per "
              "CPU-second over that server's. \"Generator CPU\" is the load generator's share of its own core; at "
              "90% or more the wall-clock figure is a lower bound (the per-CPU-second one still holds). Figures are "
              "min / median / max of the clean samples (every delivery checked: no gap, duplicate or loss).", ""]
    parts += ["### Targets (issue 3)", "", *targets(results), ""]
    parts += ["![fan-out](img/bench-fanout.png)", "", "![latency](img/bench-latency.png)", ""]
    for subs in sh["fanout_subs"]:
        sc = f"fanout_{subs}"
        parts += [f"### Fan-out: {subs:,} subscribers on one topic", "",
                  f"One publish request; the server's Python publishes about 60-byte JSON messages to the topic. "
                  f"Samples: {sh['fanout_rounds']} measured rounds per server start (after 2 warm-up rounds that size "
                  f"them to about {sh['fanout_round_s']} s), {sh['fanout_starts']} start(s). Latency: publish request to "
                  "delivery, p99. wse's frames carry the whole v2 envelope (`id`, `ts` added by the engine); the "
                  "peers send the smallest envelope the check needs (`c`, `t`, `seq`, `tp`, `p`).", "",
                  *rate_table(results, sc, "deliveries", [("publish-to-delivery p99", "p99_us", us),
                                                          ("frame payload bytes", "frame_bytes", si)]), ""]
    parts += [f"### Many topics: {sh['topics_conns']:,} connections, each on its own topic and one shared topic", "",
              "Per-user sends: the server's Python sends each round's messages to every connection's own topic "
              "(one publication per user per message; every connection also holds the shared topic). Samples "
              "as for fan-out.", "",
              *rate_table(results, "topics", "deliveries", [("publish-to-delivery p99", "p99_us", us),
                                                            ("frame payload bytes", "frame_bytes", si)]), ""]
    parts += ["### Inbound through a trivial Python handler", "",
              f"{sh['inbound_conns']} connections send `{{\"t\":\"count\",...}}` (about 50 bytes) for {sh['inbound_s']} s "
              "each run, with at most 50,000 sent and not yet processed; the server's handler counts them and the "
              "count is the server's own (`bench.stats`). wse and the reference in drain mode.", "",
              *rate_table(results, "inbound", "processed"), ""]
    parts += ["### Round-trip latency through the Python handler", "",
              f"{sh['latency_conns']} connections, {sh['latency_rate']:,.0f} messages/s offered in all (open loop, "
              f"measured from each message's scheduled time), {sh['latency_s']} s per run after 0.5 s of warm-up; "
              "the handler echoes the payload.", "",
              *rate_table(results, "latency", "round trips", [("p50", "p50_us", us), ("p99", "p99_us", us),
                                                               ("p99.9", "p99_9_us", us)]), ""]
    parts += ["### Handshake with JWT (HS256)", "",
              f"{sh['handshake_count']:,} connections per run, 8 at a time: TCP connect, upgrade with the token as "
              "header and cookie, verification, first server frame (`server_ready`). Latency from the connect to "
              "that frame.", "",
              *rate_table(results, "handshake", "connections", [("p50", "p50_us", us), ("p99", "p99_us", us)]), ""]
    parts += ["### Idle memory per connection", "", "Server RSS (all its processes) over its baseline, per open idle "
              "connection (upgraded, `server_ready` sent), one fresh server per reading.", ""]
    idx = by(results)
    cols = [f"idle_{n}" for n in sh["idle_conns"]]
    parts += ["| server | " + " | ".join(f"bytes per connection at {int(c[5:]):,} connections: min / median / max" for c in cols)
              + " |", "|---|" + "---|" * len(cols)]
    for name in m["servers"]:
        cells: list[str] = []
        for c in cols:
            rec = idx.get((c, name))
            why = status_cell(rec)
            if why or rec is None:
                cells.append(why or "not run")
            else:
                cells.append(mmm([s["rate"] for s in good(rec)], lambda v: f"{v:,.0f}", True))
        parts.append(f"| {SERVERS[name][0]} | " + " | ".join(cells) + " |")
    parts += ["", "Not covered yet by this driver: the cluster scenario (`wse run --workers N`).", "", END]
    return "\n".join(parts)


def plots(results: dict[str, Any], img: Path) -> list[Path]:
    """bench-fanout.png and bench-latency.png in ``img``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    img.mkdir(parents=True, exist_ok=True)
    idx = by(results)
    m = results["meta"]
    tag = " (SMOKE RUN, not a measurement)" if m.get("smoke") else ""
    out = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in ((axes[0], "per_cpu", "deliveries per server CPU-second"),
                           (axes[1], "rate", "deliveries per second")):
        for name in m["servers"]:
            xs, ys, lo, hi = [], [], [], []
            for subs in m["shape"]["fanout_subs"]:
                rec = idx.get((f"fanout_{subs}", name))
                vals = sorted(s[key] for s in good(rec) if s.get(key)) if rec else []
                if vals:
                    med = statistics.median(vals)
                    xs.append(subs)
                    ys.append(med)
                    lo.append(med - vals[0])
                    hi.append(vals[-1] - med)
            if xs:
                ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=SERVERS[name][0])
        ax.set_xscale("log")
        ax.set_yscale("log")
        subs = m["shape"]["fanout_subs"]
        ax.set_xticks(subs, [f"{n:,}" for n in subs])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("subscribers")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Fan-out, one topic, ~60-byte messages" + tag)
    fig.tight_layout()
    p = img / "bench-fanout.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    out.append(p)

    fig, ax = plt.subplots(figsize=(9, 4.2))
    names = [n for n in m["servers"] if idx.get(("latency", n)) and good(idx[("latency", n)])]
    width = 0.25
    for i, (key, label) in enumerate((("p50_us", "p50"), ("p99_us", "p99"), ("p99_9_us", "p99.9"))):
        vals = [(median_of(idx[("latency", n)], key) or 0) / 1000 for n in names]
        ax.bar([j + (i - 1) * width for j in range(len(names))], vals, width, label=label)
    ax.set_xticks(range(len(names)), [SERVERS[n][0] for n in names], rotation=15, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms (median of runs)")
    ax.set_title(f"Round trip through the handler at {m['shape']['latency_rate']:,.0f} msg/s offered" + tag)
    ax.legend()
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    p = img / "bench-latency.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    out.append(p)
    return out


def write(results: dict[str, Any], doc: Path = DOC) -> None:
    """The section into ``doc`` (between the markers), the plots into ``img/`` beside it."""
    section = markdown(results)
    doc.parent.mkdir(parents=True, exist_ok=True)
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: section, text, flags=re.S)
    else:
        # Right after the introduction (before the first "## " section).
        i = text.find("\n## ")
        text = (text + "\n\n" + section + "\n") if i < 0 else (text[:i + 1] + "\n" + section + "\n\n" + text[i + 1:])
    doc.write_text(text)
    plots(results, doc.parent / "img")
