"""The report: tables into docs/BENCHMARKS.md (between markers) and plots into docs/img/, made
only from a results file (``bench/results/*.json``), so that it can be regenerated at any time.

Medians are of the *counted* samples only: clean (everything the sample claims happened) and,
for fan-out, taken while the generator stayed well under one core and after the server was
steady. Samples that are not clean are listed with the reason; cold figures (the first round or
run after a server's start) are shown apart.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .servers import ROOT, SERVERS

BEGIN, END = "<!-- bench:suite:begin -->", "<!-- bench:suite:end -->"
DOC = ROOT / "docs" / "BENCHMARKS.md"
PEERS_NOT_PEERS = {"wse", "floor"}  # not "a peer" when the best peer is looked for


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


def mmm(vals: list[float], fmt: Callable[[float], str] = si, bold: bool = False) -> str:
    if not vals:
        return "-"
    v = sorted(vals)
    med = fmt(statistics.median(v))
    return f"{fmt(v[0])} / {'**' + med + '**' if bold else med} / {fmt(v[-1])}"


def label(name: str) -> str:
    return SERVERS[name][0] if name in SERVERS else name


def counted(rec: dict[str, Any] | None, serial: bool | None = False) -> list[dict[str, Any]]:
    """The samples that enter medians (``serial``: the one-at-a-time handshakes; None: any)."""
    if not rec:
        return []
    return [s for s in rec.get("samples", []) if s.get("counted")
            and (serial is None or bool(s.get("serial")) == serial)]


def median_of(rec: dict[str, Any] | None, key: str, serial: bool | None = False) -> float | None:
    vals = [s[key] for s in counted(rec, serial) if s.get(key) is not None]
    return statistics.median(vals) if vals else None


def by(results: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["scenario"], r["server"]): r for r in results["records"]}


def status_cell(rec: dict[str, Any] | None) -> str | None:
    """The row's text when it has no counted figure, else None."""
    if rec is None:
        return "not run"
    if rec["status"] == "skipped":
        return f"skipped: {rec['reason']}"
    if rec["status"] == "failed" and not counted(rec):
        return f"failed: {rec['reason']}"
    if not counted(rec, None):
        whys = sorted({s.get("why") or s.get("note") or "" for s in rec.get("samples", []) if not s.get("cold")})
        return "no counted sample: " + ("; ".join(w for w in whys if w) or "none measured")[:240]
    return None


def gen_cell(rec: dict[str, Any]) -> str:
    shares = [s["gen_share"] for s in rec.get("samples", []) if s.get("ok") and s.get("gen_share") is not None
              and not s.get("cold")]
    return f"{max(shares):.0%}" if shares else "-"


def samples_cell(rec: dict[str, Any]) -> str:
    allm = [s for s in rec.get("samples", []) if not s.get("cold") and not s.get("serial")]
    c = [s for s in allm if s.get("counted")]
    notes = sorted({s.get("note") or s.get("why") for s in allm if not s.get("counted")} - {None, ""})
    return f"{len(c)} of {len(allm)}" + (f" ({'; '.join(notes)})" if notes else "") + \
        ("" if c else ": shown in italics, not counted")


def cold_cell(rec: dict[str, Any]) -> str:
    v = [s["per_cpu"] for s in rec.get("samples", []) if s.get("cold") and s.get("per_cpu")]
    return si(v[0]) if v else "-"


def rate_table(results: dict[str, Any], scenario: str, unit: str, servers: Sequence[str] | None = None,
               extra: Sequence[tuple[str, str, Any]] = (), floor: str | None = None) -> list[str]:
    """One row per server: rate, per server CPU-s, wse's ratio, (fraction of the floor), cold, extras,
    the generator's share, the samples counted."""
    idx = by(results)
    servers = list(servers or results["meta"]["servers"])
    wse = median_of(idx.get((scenario, "wse")), "per_cpu")
    fl = median_of(idx.get((floor, "floor")), "per_cpu") if floor else None
    head = (f"| server | {unit}/s: min / median / max | {unit} per server CPU-s: min / median / max "
            f"| wse / this, per CPU-s |")
    sep = "|---|---|---|---|"
    if floor:
        head += " share of the floor |"
        sep += "---|"
    head += " cold, per CPU-s |"
    sep += "---|"
    for title, _, _ in extra:
        head += f" {title} |"
        sep += "---|"
    head += " generator CPU (max) | samples counted |"
    sep += "---|---|"
    out = [head, sep]
    ncols = head.count("|") - 1
    for name in servers:
        rec = idx.get((scenario, name))
        why = status_cell(rec)
        # Clean figures that do not count (generator too busy, server never steady) are still shown,
        # in italics and without a ratio: they never enter a median or a target.
        shown = [s for s in (rec or {}).get("samples", []) if s.get("ok") and not s.get("cold")
                 and not s.get("serial")]
        if rec is None or (why and not (rec["status"] == "ok" and shown)):
            out.append(f"| {label(name)} | {why} |" + " |" * (ncols - 2))
            continue
        g = counted(rec) or shown
        pc = median_of(rec, "per_cpu")
        ratio = f"{wse / pc:.2f}x" if wse and pc and name != "wse" else "-"
        it = "" if counted(rec) else "_"
        row = (f"| {label(name)} | {it}{mmm([s['rate'] for s in g])}{it} | "
               f"{it}{mmm([s['per_cpu'] for s in g if s.get('per_cpu')], bold=not it)}{it} | {ratio} |")
        if floor:
            row += f" {pc / fl:.0%} |" if pc and fl and not it else " - |"
        row += f" {cold_cell(rec)} |"
        for _, key, fmt in extra:
            row += f" {mmm([s[key] for s in g if s.get(key) is not None], fmt)} |"
        row += f" {gen_cell(rec)} | {samples_cell(rec)} |"
        out.append(row)
    return out


def ratio_target(idx: dict[tuple[str, str], dict[str, Any]], scenario: str, other: str, want: float,
                 text: str) -> str:
    a = median_of(idx.get((scenario, "wse")), "per_cpu")
    b = median_of(idx.get((scenario, other)), "per_cpu")
    if a and b:
        r = a / b
        return f"| {text} | {si(a)} / {si(b)} = {r:.2f}x | {'**met**' if r >= want else '**missed**'} |"
    why = status_cell(idx.get((scenario, "wse"))) or status_cell(idx.get((scenario, other))) or "no figure"
    return f"| {text} | - | not measured ({why[:160]}) |"


def targets(results: dict[str, Any]) -> list[str]:
    """Issue 20's targets, met or missed, from the counted medians of this run."""
    idx = by(results)
    sh = results["meta"]["shape"]
    out = ["| target | measured (medians, per server CPU-s unless said) | status |", "|---|---|---|"]
    for n in (100, 1000, 10000):
        if n not in sh["fanout_subs"]:
            continue
        sc = f"fanout_{n}"
        out.append(ratio_target(idx, sc, "reference", 2.0, f"fan-out {n:,}: >= 2x wse-server 2.5.1"))
        a, f = median_of(idx.get((sc, "wse")), "per_cpu"), median_of(idx.get((sc, "floor")), "per_cpu")
        if a and f:
            out.append(f"| fan-out {n:,}: >= 60% of the floor | {si(a)} / {si(f)} = {a / f:.0%} | "
                       f"{'**met**' if a / f >= 0.6 else '**missed**'} |")
        else:
            out.append(f"| fan-out {n:,}: >= 60% of the floor | - | not measured |")
    for c in sh["inbound_seg_conns"]:
        out.append(ratio_target(idx, f"inbound_seg_{c}", "reference", 2.0,
                                f"inbound, one message per segment, {c:,} clients: >= 2x the reference"))
    a = median_of(idx.get(("inbound_pipelined", "wse")), "per_cpu")
    out.append(f"| inbound pipelined: >= 1M messages per server CPU-s | {si(a)} | "
               f"{('**met**' if a >= 1e6 else '**missed**') if a else 'not measured'} |")
    out.append(ratio_target(idx, "handshake", "reference", 2.0, "JWT handshake: >= 2x the reference"))
    rec = idx.get(("handshake", "wse"))
    p50, p99 = median_of(rec, "p50_us", serial=True), median_of(rec, "p99_us", serial=True)
    if p50 is not None and p99 is not None:
        ok = p50 <= 100 and p99 <= 1000
        out.append(f"| JWT handshake one at a time: p50 <= 100 us, p99 <= 1 ms | p50 {us(p50)}, p99 {us(p99)} | "
                   f"{'**met**' if ok else '**missed**'} |")
    else:
        out.append("| JWT handshake one at a time: p50 <= 100 us, p99 <= 1 ms | - | not measured |")
    for rate in sh["latency_rates"]:
        sc = f"latency_{int(rate)}"
        w = idx.get((sc, "wse"))
        peers = [r for (s, n), r in idx.items() if s == sc and n not in PEERS_NOT_PEERS and counted(r)]
        for key, name in (("p99_us", "p99"), ("p99_9_us", "p99.9")):
            mine = median_of(w, key)
            best = min(((median_of(r, key), r["server"]) for r in peers if median_of(r, key) is not None),
                       default=None)
            text = f"round trip at {rate:,.0f} msg/s: {name} no worse than the best peer"
            if mine is None or best is None:
                out.append(f"| {text} | - | not measured |")
            else:
                out.append(f"| {text} | wse {us(mine)}, best peer {label(best[1])} {us(best[0])} | "
                           f"{'**met**' if mine <= best[0] else '**missed**'} |")
    for n in sh["idle_conns"]:
        v = median_of(idx.get((f"idle_{n}", "wse")), "rate")
        out.append(f"| idle connection at {n:,}: <= 1 KB of server RSS | "
                   f"{f'{v:,.0f} B' if v is not None else '-'} | "
                   f"{('**met**' if v <= 1024 else '**missed**') if v is not None else 'not measured'} |")
    e2e = next((s for (s, n) in idx if s.startswith("e2e_") and n == "wse"), None)
    if e2e:
        a = median_of(idx.get((e2e, "wse")), "per_cpu")
        b = median_of(idx.get((e2e.replace("e2e_", "fanout_"), "wse")), "per_cpu")
        out.append(f"| E2E fan-out ({e2e[4:]} subscribers) >= half of plaintext | "
                   f"{f'{si(a)} / {si(b)} = {a / b:.2f}x' if a and b else '-'} | "
                   f"{('**met**' if a / b >= 0.5 else '**missed**') if a and b else 'not measured'} |")
    return out


def unclean(results: dict[str, Any]) -> list[str]:
    rows = []
    for r in results["records"]:
        for i, s in enumerate(r.get("samples", [])):
            if not s.get("ok"):
                rows.append(f"| {r['scenario']} | {label(r['server'])} | {i + 1} | {s.get('why') or '?'} |")
    if not rows:
        return ["Every sample of this run was clean."]
    return ["| scenario | server | sample | why it is not clean |", "|---|---|---|---|", *rows]


def markdown(results: dict[str, Any]) -> str:
    m = results["meta"]
    sh = m["shape"]
    idx = by(results)
    smoke = m.get("smoke")
    srv = m["servers"]
    peers_only = [s for s in srv if s != "floor"]
    talk = [s for s in peers_only if s != "centrifugo"]
    p: list[str] = [BEGIN, "## Comparison with the peers (`bench/run.py`)", ""]
    if smoke:
        p += ["**SMOKE RUN: tiny counts on a busy shared machine, to check the harness. These are not "
              "measurements; run `python bench/run.py quick` on a quiet machine for figures.**", ""]
    if m.get("note"):
        p += [f"**Note on this run: {m['note']}**", ""]
    p += [f"Run {m['date']} in mode `{m['mode']}` ({m['elapsed_s']:.0f} s), wse at commit {m['commit']}.",
          f"Machine: {m['machine']}.",
          f"Generator: {m['loadgen']}, `taskset -c 1`; every server `taskset -c 0` (a cluster of N workers: "
          "cores 0..N-1), loopback only.",
          "Servers: " + "; ".join(m["server_versions"].values()) + ".", "",
          f"The run: `{m['command']}`. Regenerate this section from its results with "
          f"`python bench/run.py report {m['results_file']}`.", "",
          "How to read it. Rates are per wall second and per server CPU-second: the CPU of every thread of "
          "every process of the server, from the scheduler's nanosecond counters "
          "(`/proc/PID/task/*/schedstat`), over the measured window, sized to hold at least "
          f"{sh['min_cpu_s']} s of server CPU. Before its measured rounds every server is warmed until two "
          f"rounds in a row cost the same server CPU per delivery within {sh['stable_within']:.0%} (at most "
          f"{sh['max_warmup']} warm-up rounds; a server that never settles is said to be so and not counted); "
          "the first round after its start is shown apart as *cold*. A sample is clean only if everything it "
          "claims happened (every connection opened, every delivery sequence-checked per subscriber, every "
          "inbound message counted by the server's handler); unclean samples are listed at the end and never "
          "enter a median. Fan-out samples count only while the load generator used less than "
          f"{sh['gen_max_share']:.0%} of its core (else the generator, not the server, may have set the pace). "
          "Figures are min / **median** / max of the counted samples; the ratio column is wse's median per "
          "CPU-second over that server's.", ""]
    p += ["### Targets (issue 20)", "", *targets(results), ""]
    p += ["![fan-out](img/bench-fanout.png)", "", "![latency](img/bench-latency.png)", ""]
    bytes_col = [("frame payload bytes", "frame_bytes", si), ("publish-to-delivery p99", "p99_us", us)]
    for subs in sh["fanout_subs"]:
        p += [f"### Fan-out: {subs:,} subscribers on one topic, frames as each server sends them", "",
              f"`{m['command']}`, scenario `fanout`. One publish request per round (in requests of at most "
              f"{sh.get('burst_messages', 20000):,} messages, each once the subscribers hold the earlier ones); "
              "the server's application publishes about 60-byte JSON payloads to the topic. "
              f"Every {sh.get('check_every', 1)}th subscriber (and the publisher) reads and sequence-checks every "
              "delivery; the others read with `recv(MSG_TRUNC)` (the kernel discards the bytes, nothing is copied "
              "or parsed) and count as complete only with exactly the bytes a checked subscriber read in that "
              "round (every server sends a publication's frame unchanged to each subscriber of the topic), which "
              "keeps the generator well under its core. "
              f"{sh['fanout_rounds']} measured rounds per "
              f"server start, {sh['fanout_starts']} start(s). wse's frames carry its whole v2 envelope; the "
              "peers send the smallest envelope the check needs (`c`, `t`, `seq`, `tp`, `p`). The floor writes "
              "wse's frame size, pre-built, to the same sockets and does nothing else; it outruns any reader, so "
              "its samples count whatever the generator's share (its cost per delivery is what is compared).", "",
              *rate_table(results, f"fanout_{subs}", "deliveries", srv, bytes_col, floor=f"fanout_{subs}"), ""]
    for subs in sh["fanout_subs"]:
        if not any(s.startswith(f"fanout_same_{subs}") for s, _ in idx):
            continue
        p += [f"### Fan-out: {subs:,} subscribers, the same bytes from every server", "",
              "Scenario `fanout_same`: every server pads its frames to wse's frame size (the `frame_bytes` of the "
              "publish request), so that each puts the same number of bytes on the wire.", "",
              *rate_table(results, f"fanout_same_{subs}", "deliveries", srv, bytes_col,
                          floor=f"fanout_same_{subs}"), ""]
    if any(s == "topics" for s, _ in idx):
        p += [f"### Many topics: {sh['topics_conns']:,} connections, each on its own topic and one shared topic",
              "", "Scenario `topics`: per-user sends (one publication per user per message).", "",
              *rate_table(results, "topics", "deliveries", peers_only, bytes_col), ""]
    e2e = [s for s, n in idx if s.startswith("e2e_")]
    for sc in e2e:
        # Sealed per connection (clients without batch keys) as one more row, when measured.
        recs = [r for r in results["records"] if r["scenario"] == sc]
        conn = idx.get((sc.replace("e2e_", "e2econn_"), "wse"))
        names = [r["server"] for r in recs]
        if conn:
            recs.append({**conn, "scenario": sc, "server": "wse, sealed per connection"})
            names.append("wse, sealed per connection")
        p += [f"### E2E fan-out: {sc[4:]} subscribers, wse only", "",
              "Scenario `e2e`: every subscriber does WSE's key exchange (ECDH P-256). `wse`: the subscribers "
              "announce batch keys, so each publication is sealed once under the topic's key (AES-GCM-256, "
              "`G:` frames) and each subscriber gets that key, once, sealed under its own; every 50th subscriber opens and "
              "checks every delivery, the others count the bytes (the same for all). `wse, sealed per "
              "connection`: they do not announce them (as clients that predate batch keys), every frame "
              "is sealed for its connection and every subscriber opens every delivery. Plaintext fan-out "
              "of the same size is in its own table above.", "",
              *rate_table({**results, "records": recs}, sc, "deliveries", names), ""]
    for sc in sorted({s for s, _ in idx if s.startswith("fanout_deflate_")}):
        # wse's plaintext fan-out of the same size from this run, as one more row of the table.
        recs = [r for r in results["records"] if r["scenario"] == sc]
        plain = idx.get((sc.replace("fanout_deflate_", "fanout_"), "wse"))
        names = [r["server"] for r in recs]
        if plain:
            recs.append({**plain, "scenario": sc, "server": "wse, permessage-deflate off"})
            names.insert(1 if "wse" in names else 0, "wse, permessage-deflate off")
        deflate_cols = [("wire bytes per delivery", "wire_bytes", si),
                        ("deliveries compressed", "compressed", lambda v: f"{v:.0%}")]
        p += [f"### Fan-out with permessage-deflate: {sc[15:]} subscribers", "",
              "Scenario `fanout_deflate`: the generator offers `permessage-deflate; client_max_window_bits` as "
              "browsers do and inflates every compressed delivery before its sequence check (every subscriber "
              "checked; a connection without the extension makes the sample unclean). Each server compresses "
              "its own way: wse once per publication, shared by the subscribers (`server_no_context_takeover`, "
              "its defaults: `WSEConfig(permessage_deflate=True)`); websockets with context takeover (one "
              "compressor per connection, so once per delivery); socketify with uWS's `SHARED_COMPRESSOR`; "
              "Centrifugo v6 with `websocket.compression` (no context takeover; its subscribers speak its client "
              "protocol: `connect` and `subscribe` commands, publications as client `publish` commands, at most "
              "400 to a frame, and its frames carry several pushes, one per line). "
              "Wire bytes are whole frames as they came, per delivery. Beside them wse's plaintext fan-out of "
              "the same size from this run.", "",
              *rate_table({"meta": m, "records": recs}, sc, "deliveries", names, deflate_cols), ""]
    shapes = [("inbound_pipelined", f"pipelined: {sh['inbound_pipe_conns']} clients, 64 frames per write, as fast "
               "as the server takes them (at most 50,000 sent and not yet counted)")]
    shapes += [(f"inbound_seg_{c}", f"one message per segment: {c:,} clients, one frame per write (TCP_NODELAY), "
                f"each paced at its share of {sh['inbound_paced_rate']:,.0f} messages/s offered in all")
               for c in sh["inbound_seg_conns"]]
    for sc, text in shapes:
        if any(s == sc for s, _ in idx):
            p += [f"### Inbound through a Python handler, {text}", "",
                  "Scenario `inbound`: `{\"t\":\"count\",...}` messages of about 50 bytes; the handler counts them "
                  "and the figure is the server's own count (`bench.stats`); each run keeps sending until the "
                  "server has used enough CPU for the window. wse and the reference in drain mode.", "",
                  *rate_table(results, sc, "messages", talk), ""]
    for rate in sh["latency_rates"]:
        sc = f"latency_{int(rate)}"
        if any(s == sc for s, _ in idx):
            p += [f"### Round trip through the Python handler at {rate:,.0f} messages/s offered", "",
                  f"Scenario `latency`: {sh['latency_conns']} connections, open loop, each message timed from its "
                  f"scheduled send; {sh['latency_s']} s per run after 0.5 s of warm-up; the handler echoes.", "",
                  *rate_table(results, sc, "round trips", talk, [("p50", "p50_us", us), ("p99", "p99_us", us),
                                                                 ("p99.9", "p99_9_us", us)]), ""]
    if any(s == "handshake" for s, _ in idx):
        p += ["### Handshake with JWT (HS256)", "",
              "Scenario `handshake`: connections 8 at a time, each run sized to about "
              f"{sh['target_cpu_s']} s of server CPU (a cold run of {sh['handshake_count']:,} first, then warm-up "
              "runs until two agree on CPU per connection within 5%): TCP connect, upgrade with the token as "
              "header and cookie, verification, first server frame (`server_ready`, on every connection, or "
              "the run is not clean), close; then one at a time, "
              f"{max(50, sh['handshake_count']):,} per run (the latency columns: TCP connect to that frame).", ""]
        hs = rate_table(results, "handshake", "connections", peers_only)
        p += [hs[0] + " one at a time: p50 | one at a time: p99 |", hs[1] + "---|---|"]
        for row, name in zip(hs[2:], peers_only):
            rec = idx.get(("handshake", name))
            p.append(row + f" {us(median_of(rec, 'p50_us', serial=True))} | "
                           f"{us(median_of(rec, 'p99_us', serial=True))} |")
        p.append("")
    cols = [f"idle_{n}" for n in sh["idle_conns"] if any(s == f"idle_{n}" for s, _ in idx)]
    if cols:
        p += ["### Idle memory per connection", "", "Scenario `idle`: server RSS (all its processes) over its "
              "baseline, per open idle connection (upgraded, `server_ready` sent), one fresh server per reading.", "",
              "| server | " + " | ".join(f"bytes per connection at {int(c[5:]):,}: min / median / max" for c in cols)
              + " |", "|---|" + "---|" * len(cols)]
        for name in peers_only:
            cells = []
            for c in cols:
                rec = idx.get((c, name))
                why = status_cell(rec)
                cells.append(why if why or rec is None else
                             mmm([s["rate"] for s in counted(rec)], lambda v: f"{v:,.0f}", True))
            p.append(f"| {label(name)} | " + " | ".join(cells) + " |")
        p.append("")
    cl = [n for s, n in idx if s == "cluster"]
    if cl:
        p += [f"### Cluster: `wse run --workers N`, {sh['cluster_subs']:,} subscribers", "",
              "Scenario `cluster`: the subscribers spread over the workers by the kernel (SO_REUSEPORT); the "
              "publisher's worker publishes, the others receive over the mesh. Server CPU is every process "
              "(supervisor and workers); with 2 workers on this 2-core machine a worker shares core 1 with the "
              "generator, so the wall rate is not comparable, the per-CPU-second figure is.", "",
              *rate_table(results, "cluster", "deliveries", cl)]
        ns = {n: 1e9 / v for n in cl if (v := median_of(idx.get(("cluster", n)), "per_cpu"))}
        base = ns.get("wse --workers 1")
        for n, v in ns.items():
            if base and n != "wse --workers 1":
                p.append(f"\nServer CPU per delivery: {v:.0f} ns with `{n[4:]}` against {base:.0f} ns with one "
                         f"worker: the mesh and the extra processes add {v - base:+.0f} ns "
                         f"({(v - base) / v:.0%} of the time).")
        p.append("")
    if m.get("flames"):
        p += ["### Flame graphs", "", "One extra run of each scenario on a fresh wse under `perf record -g` (not a "
              "measurement: sampling costs the server time); width is the share of the server's CPU samples.", ""]
        p += [f"- {sc}: [{path}]({path})" for sc, path in sorted(m["flames"].items())]
        p.append("")
    if m.get("skipped"):
        p += ["### Skipped servers", ""] + [f"- {label(k)}: {v}" for k, v in m["skipped"].items()] + [""]
    p += ["### Samples that are not clean", "", *unclean(results), "", END]
    return "\n".join(p)


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
                vals = sorted(s[key] for s in counted(idx.get((f"fanout_{subs}", name))) if s.get(key))
                if vals:
                    med = statistics.median(vals)
                    xs.append(subs)
                    ys.append(med)
                    lo.append(med - vals[0])
                    hi.append(vals[-1] - med)
            if xs:
                ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=label(name),
                            linestyle="--" if name == "floor" else "-")
        ax.set_xscale("log")
        ax.set_yscale("log")
        subs = m["shape"]["fanout_subs"]
        ax.set_xticks(subs, [f"{n:,}" for n in subs])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("subscribers")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Fan-out, one topic, ~60-byte messages, warm, counted samples" + tag)
    fig.tight_layout()
    p = img / "bench-fanout.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    out.append(p)

    rates = m["shape"]["latency_rates"]
    fig, axes = plt.subplots(1, len(rates), figsize=(6 * len(rates), 4.2), squeeze=False)
    for ax, rate in zip(axes[0], rates):
        sc = f"latency_{int(rate)}"
        names = [n for n in m["servers"] if counted(idx.get((sc, n)))]
        width = 0.25
        for i, (key, lab) in enumerate((("p50_us", "p50"), ("p99_us", "p99"), ("p99_9_us", "p99.9"))):
            vals = [(median_of(idx[(sc, n)], key) or 0) / 1000 for n in names]
            ax.bar([j + (i - 1) * width for j in range(len(names))], vals, width, label=lab)
        ax.set_xticks(range(len(names)), [label(n) for n in names], rotation=20, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("ms (median of runs)")
        ax.set_title(f"round trip at {rate:,.0f} msg/s offered" + tag, fontsize=10)
        ax.legend(fontsize=8)
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
