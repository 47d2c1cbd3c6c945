"""Fan-out benchmark: WSE against the published reference engine (wse-server 2.5.1).

    python bench/fanout.py --subscribers 1000 --messages 2000 --runs 3 --peers wse,reference

For every run and every peer (interleaved; the peer order alternates from run to run) it:
1. starts the peer's server pinned to core 0 (``taskset -c 0``) on a free loopback port:
   ``wse``: ``python -m wse_cli.main run bench.fanout_app:app`` (this Python, JWT off);
   ``reference``: ``bench/ref_fanout_server.py`` in the reference chroot (Python 3.13,
   wse-server 2.5.1) through ``../shared/tools/reference-wse.sh`` beside the checkout (override with
   ``$WSE_REFERENCE_TOOL``);
2. runs ``bench/fanout_client.py`` pinned to core 1: S picows connections in one uvloop loop,
   each subscribed to topic ``bench``; an unmeasured warm-up publication, then the measured one;
   the server's Python publishes M JSON payloads of about 60 bytes; every delivery is counted
   and sequence-checked by the client;
3. stops the server.

Each run reports deliveries per wall second and per server CPU-second (utime + stime of the
server process, all threads, from /proc/PID/stat over the measured window), and the client's CPU
share of the window (near 100% means the client was the bottleneck: the wall rate is then a
lower bound). The table gives min / median / max per peer and the ratio of medians; the results
go to a section of docs/BENCHMARKS.md (``--no-docs`` to skip) and raw JSON to bench/out/.
A peer that cannot run is reported as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
DEFAULT_DOCS = REPO / "docs" / "BENCHMARKS.md"
REF_TOOL = os.environ.get("WSE_REFERENCE_TOOL", str(REPO.parent / "shared/tools/reference-wse.sh"))
SERVER_CORE = "0"
CLIENT_CORE = "1"
SATURATED = 0.90  # client CPU share above which the client is taken as the bottleneck


# ---- servers -----------------------------------------------------------------------------------


class Skip(Exception):
    """A peer cannot run here; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, peer: str, port: int, ref_envelope: str = "minimal") -> None:
        self.peer = peer
        self.ref_envelope = ref_envelope
        self.port = port
        self.proc: subprocess.Popen[str] | None = None
        self.pid = 0
        self.lines: list[str] = []
        self._reader = threading.Thread()

    def start(self, timeout: float = 30.0) -> None:
        if self.peer == "wse":
            cmd = ["taskset", "-c", SERVER_CORE, sys.executable, "-m", "wse_cli.main", "run",
                   "bench.fanout_app:app", "--port", str(self.port), "--log-level", "warning"]
            ready = re.compile(r"^wse: serving ws://")
        else:
            cmd = ["taskset", "-c", SERVER_CORE, "bash", REF_TOOL, "python", "bench/ref_fanout_server.py",
                   "--port", str(self.port), "--envelope", self.ref_envelope]
            ready = re.compile(r"^ref: serving ws://\S+ pid (\d+)")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            lines = list(self.lines)
            for line in lines[seen:]:
                m = ready.match(line)
                if m:
                    # taskset and the tool exec into the server, so Popen's pid is its pid; the
                    # reference also prints its own (the chroot shares the PID namespace).
                    self.pid = int(m.group(1)) if m.groups() else self.proc.pid
                    self._check_pid()
                    return
            seen = len(lines)
            if self.proc.poll() is not None:
                self._reader.join(2)
                raise Skip(f"server exited with {self.proc.returncode}: {' | '.join(self.lines)[-400:]}")
            time.sleep(0.05)
        self.stop()
        raise Skip(f"server not ready within {timeout:.0f}s: {' | '.join(self.lines)[-400:]}")

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def _check_pid(self) -> None:
        comm = Path(f"/proc/{self.pid}/comm").read_text().strip()
        aff = sorted(os.sched_getaffinity(self.pid))
        if not comm.startswith("python") or aff != [int(SERVER_CORE)]:
            raise RuntimeError(f"server pid {self.pid} is {comm!r} with affinity {aff}")

    def stop(self) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            try:
                os.kill(self.pid or p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        self._reader.join(2)
        self.proc = None


def check_peer(peer: str) -> None:
    """Raises Skip if the peer cannot run on this machine."""
    if peer == "wse":
        r = subprocess.run([sys.executable, "-c", "import wse, wse_cli"], capture_output=True, text=True)
        if r.returncode != 0:
            raise Skip(f"wse is not importable: {r.stderr.strip()[-300:]}")
    elif peer == "reference":
        if os.geteuid() != 0:
            raise Skip("the reference chroot needs root")
        if not Path(REF_TOOL).exists():
            raise Skip(f"{REF_TOOL} not found")
        root = subprocess.run(["bash", REF_TOOL, "root"], capture_output=True, text=True).stdout.strip()
        if not Path(root, "opt/ref/bin/python").exists():
            raise Skip(f"reference chroot not set up (run: bash {REF_TOOL} setup)")
    else:
        raise Skip(f"unknown peer {peer!r}")


def reference_version() -> str:
    try:
        root = subprocess.run(["bash", REF_TOOL, "root"], capture_output=True, text=True).stdout.strip()
        for d in Path(root, "opt/ref/lib").glob("python3*/site-packages/wse_server-*.dist-info"):
            return d.name.removeprefix("wse_server-").removesuffix(".dist-info")
    except OSError:
        pass
    return "?"


# ---- one run -----------------------------------------------------------------------------------


def run_once(peer: str, args: argparse.Namespace, subscribers: int, messages: int) -> dict[str, Any]:
    port = free_port()
    srv = Server(peer, port, args.ref_envelope)
    srv.start()
    try:
        cmd = ["taskset", "-c", CLIENT_CORE, sys.executable, str(BENCH / "fanout_client.py"),
               "--url", f"ws://127.0.0.1:{port}/wse", "--subscribers", str(subscribers),
               "--messages", str(messages), "--size", str(args.size), "--chunk", str(args.chunk),
               "--server-pid", str(srv.pid), "--timeout", str(args.timeout),
               "--warmup-rounds", str(args.warmup_rounds), "--rounds", str(args.rounds),
               "--server-core", SERVER_CORE, "--client-core", CLIENT_CORE]
        try:
            r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=args.timeout * 2 + 90)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": "client did not finish in time"}
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            return {"ok": False, "error": f"client exit {r.returncode}: {r.stderr.strip()[-600:]}"}
        res: dict[str, Any] = json.loads(lines[-1])
        if r.stderr.strip():
            res["client_stderr"] = r.stderr.strip()[-600:]
        alive = srv.proc is not None and srv.proc.poll() is None
        res["server_alive_after"] = alive
        res["server_pid"] = srv.pid
        return res
    finally:
        srv.stop()
        if any("Traceback" in ln or "panic" in ln for ln in srv.lines):
            print(f"  [{peer}] server output:\n    " + "\n    ".join(srv.lines[-20:]), file=sys.stderr)


# ---- reporting ---------------------------------------------------------------------------------


def fmt_m(x: float | None) -> str:
    return "-" if x is None else f"{x / 1e6:.2f}M"


def cold(r: dict[str, Any]) -> dict[str, Any] | None:
    """The first publication on the fresh server (the first warm-up round), if there was one."""
    w = r.get("warmup") or []
    return w[0] if w and w[0].get("ok") else None


def mmm(xs: list[float]) -> tuple[float, float, float] | None:
    return (min(xs), statistics.median(xs), max(xs)) if xs else None


def summarize(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for peer, runs in results.items():
        good = [r for r in runs if r.get("ok")]
        if not good:
            out[peer] = {"runs": len(runs), "good": 0}
            continue
        share = [r["client_cpu_share"] for r in good]
        colds = [c for c in (cold(r) for r in good) if c and c.get("deliveries_per_server_cpu_s")]
        threads: dict[str, list[float]] = {}
        for r in good:
            for k, v in (r.get("server_threads") or {}).items():
                threads.setdefault(k, []).append(v / r["measured_rounds"])
        out[peer] = {
            "runs": len(runs),
            "good": len(good),
            "rate": mmm([r["deliveries_per_s"] for r in good]),
            "per_cpu": mmm([r["deliveries_per_server_cpu_s"] for r in good if r.get("deliveries_per_server_cpu_s")]),
            "cold_per_cpu": mmm([c["deliveries_per_server_cpu_s"] for c in colds]),
            "cold_rate": mmm([c["deliveries_per_s"] for c in colds]),
            "server_cpu_s": statistics.median(r["server_cpu_s"] / r["measured_rounds"] for r in good),
            "client_share": mmm(share),
            "payload_bytes": statistics.median(r["avg_payload_bytes"] for r in good),
            "saturated": sum(1 for x in share if x >= SATURATED),
            "threads": {k: statistics.median(v) for k, v in sorted(threads.items())},
            "frames_per_write": mmm([d["frames_out"] / d["write_syscalls"] for d in
                                     (r.get("server_stats_delta") or {} for r in good)
                                     if d.get("write_syscalls")]),
        }
    return out


def three(t: tuple[float, float, float] | None) -> str:
    return " / ".join(fmt_m(x) for x in t) if t else "-"


def table_lines(summary: dict[str, dict[str, Any]], skipped: dict[str, str]) -> list[str]:
    lines = [
        "| peer | good runs | per server CPU-s, warm: min / median / max | deliveries/s, warm: min / median / max "
        "| per server CPU-s, cold: min / median / max | server CPU-s per publication (median), by thread "
        "| client CPU share min / median / max | payload bytes per frame |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for peer, s in summary.items():
        if not s.get("good"):
            lines.append(f"| {peer} | 0 of {s['runs']} | - | - | - | - | - | - |")
            continue
        sh = s["client_share"]
        bound = " (lower bound: client-bound)" if s["saturated"] else ""
        thr = ", ".join(f"{k} {v:.2f}" for k, v in s["threads"].items() if v >= 0.005)
        if s.get("frames_per_write"):
            thr += f"; {s['frames_per_write'][1]:.0f} frames per write syscall"
        lines.append(
            f"| {peer} | {s['good']} of {s['runs']} | **{three(s['per_cpu'])}** | {three(s['rate'])}{bound} "
            f"| {three(s['cold_per_cpu'])} | {s['server_cpu_s']:.3f} ({thr}) "
            f"| {sh[0]:.0%} / {sh[1]:.0%} / {sh[2]:.0%} | {s['payload_bytes']:.0f} |"
        )
    for peer, why in skipped.items():
        lines.append(f"| {peer} | skipped: {why} | | | | | | |")
    return lines


def ratio_lines(summary: dict[str, dict[str, Any]]) -> list[str]:
    w, ref = summary.get("wse"), summary.get("reference")
    if not (w and ref and w.get("good") and ref.get("good") and w.get("per_cpu") and ref.get("per_cpu")):
        return ["Ratio wse / reference: not available (a peer has no good run)."]
    rc = w["per_cpu"][1] / ref["per_cpu"][1]
    rw = w["rate"][1] / ref["rate"][1]
    verdict = "at least equal to" if rc >= 1.0 else "BELOW"
    out = [
        f"Ratio wse / reference of medians, warm: **{rc:.2f}x per server CPU-second** ({verdict} the reference), "
        f"{rw:.2f}x per wall second."
    ]
    if w.get("cold_per_cpu") and ref.get("cold_per_cpu"):
        cc = w["cold_per_cpu"][1] / ref["cold_per_cpu"][1]
        cw = w["cold_rate"][1] / ref["cold_rate"][1]
        out[0] += f" Cold (first publication on a fresh server): {cc:.2f}x per server CPU-second, {cw:.2f}x per wall second."
    return out


def runs_lines(results: dict[str, list[dict[str, Any]]], order: list[tuple[int, str]]) -> list[str]:
    lines = [
        "| run | peer | ok | deliveries (measured) | wall s | server CPU-s | client CPU-s | deliveries/s "
        "| per server CPU-s | cold: per server CPU-s | other tasks on core 0 / core 1, s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    idx = {p: 0 for p in results}
    for run_no, peer in order:
        r = results[peer][idx[peer]]
        idx[peer] += 1
        if "deliveries" not in r:
            lines.append(f"| {run_no} | {peer} | no: {r.get('error', '?')} | | | | | | | | |")
            continue
        c = cold(r) or {}
        ok = "yes" if r.get("ok") else f"no (gaps {r.get('gaps')}, dups {r.get('dups')}, bad {r.get('bad')})"
        noise = f"{r['server_core']['other_tasks_s']:.2f} / {r['client_core']['other_tasks_s']:.2f}"
        lines.append(
            f"| {run_no} | {peer} | {ok} | {r['deliveries']:,} | {r['wall_s']:.3f} | {r['server_cpu_s']:.2f} "
            f"| {r['client_cpu_s']:.2f} | {fmt_m(r['deliveries_per_s'])} | {fmt_m(r.get('deliveries_per_server_cpu_s'))} "
            f"| {fmt_m(c.get('deliveries_per_server_cpu_s'))} | {noise} |"
        )
    return lines


def engine_build() -> str:
    """Which build of the extension ``import wse`` loads: release, debug, or unknown (with its hash)."""
    r = subprocess.run([sys.executable, "-c", "import wse._runtime as r; print(r.__file__)"], capture_output=True,
                       text=True, cwd=REPO)
    path = Path(r.stdout.strip()) if r.returncode == 0 else None
    if path is None or not path.exists():
        return "?"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    for profile in ("release", "debug"):
        built = REPO / "target" / profile / "lib_runtime.so"
        if built.exists() and hashlib.sha256(built.read_bytes()).hexdigest() == digest:
            return f"{profile} build, sha256 {digest[:12]}"
    return f"build profile unknown, sha256 {digest[:12]}"


def machine() -> dict[str, str]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return {
        "engine_build": engine_build(),
        "nproc": subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "commit": commit.stdout.strip() or "?",
    }


# ---- docs --------------------------------------------------------------------------------------

DOC_HEAD = """# Benchmarks

How these are measured (see also `shared/BENCHMARKING.md` for the rules): the server under test
is pinned to core 0 and the load generator to core 1, on loopback only. Deliveries are counted by
the receiving clients, each checking its own sequence (no gap, no duplicate, no reordering).
Every run reports deliveries per wall second and per server CPU-second (utime + stime of the whole
server process, all threads, from `/proc/PID/stat` over the measured window), and the client's own
CPU share of that window: when it is near 100% the client was the bottleneck and the wall-second
figure is a lower bound for the server (the per-CPU-second figure still holds). Figures are the
median of several runs with min and max beside it; peers are run interleaved in the same session.

"""


def write_docs(path: Path, key: str, body: list[str]) -> None:
    begin, end = f"<!-- bench:fanout:{key}:begin -->", f"<!-- bench:fanout:{key}:end -->"
    text = path.read_text() if path.exists() else DOC_HEAD
    block = "\n".join([begin, *body, end])
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def doc_section(key: str, subscribers: int, messages: int, args: argparse.Namespace, command: str,
                summary: dict[str, dict[str, Any]], skipped: dict[str, str],
                results: dict[str, list[dict[str, Any]]], order: list[tuple[int, str]], mach: dict[str, str],
                ref_ver: str, client: str) -> list[str]:
    today = dt.date.today().isoformat()
    lines = [
        f"## Fan-out: {subscribers:,} subscribers x {messages:,} messages, one topic"
        + (", reference with the full envelope" if args.ref_envelope == "full" else ""),
        "",
        f"Measured {today} on `{mach['cpu']}`, nproc {mach['nproc']}, kernel {mach['kernel']}; "
        f"wse at commit {mach['commit']} (Python {mach['python']}, {mach['engine_build']}), reference wse-server {ref_ver} "
        f"(Python 3.13, in the reference chroot). Server `taskset -c {SERVER_CORE}`, client `taskset -c {CLIENT_CORE}`: "
        f"{client}, all {subscribers:,} connections in one uvloop loop, every delivery sequence-checked. "
        f"Payload about {args.size} bytes of JSON `{{\"s\":N,\"d\":\"xxx...\"}}` published from the server's "
        "Python in a tight loop. wse: `app.publish(topic, dict, type=\"tick\")`; the engine adds the v2 envelope "
        "(`c`, `t`, `id`, `ts`, `seq`, `tp`, `v`). Reference: `broadcast(topic, orjson.dumps(envelope).decode())` "
        + ("with the cheapest envelope `{c,t,seq,tp,p}` built in Python (its engine adds nothing), so its frames are "
           "smaller (see the last column)." if args.ref_envelope == "minimal" else
           "with the same envelope as wse's (`c`, `t`, `id` = uuid4, `ts` = RFC 3339 with ms, `seq`, `tp`, `v`) "
           "built in Python, so both send frames of the same size."),
        "",
        f"Each run starts a fresh server, connects and subscribes every client, then publishes {args.warmup_rounds} "
        f"unmeasured warm-up rounds and {args.rounds} measured rounds of {messages:,} messages each; a round is "
        "timed from the publish request to the last delivery, and a run's figures are the sums over its measured "
        "rounds (**warm**). **Cold** is the first warm-up round: the first publication on the fresh server. "
        f"Peers alternate (the order flips every run); {args.runs} runs per peer.",
        "",
        "Command:",
        "",
        "```",
        command,
        "```",
        "",
        *table_lines(summary, skipped),
        "",
        *ratio_lines(summary),
        "",
    ]
    sat = [p for p, s in summary.items() if s.get("saturated")]
    if sat:
        lines += [
            f"The client used {SATURATED:.0%} or more of its core in some runs of: {', '.join(sat)}; "
            "their deliveries/s are lower bounds (the client, not the server, set the pace).",
            "",
        ]
    lines += [
        "All runs, in the order they ran (the last column is CPU time that other processes took on the two cores "
        "during the measured rounds: the machine is shared):",
        "",
        *runs_lines(results, order),
        "",
    ]
    return lines


# ---- main --------------------------------------------------------------------------------------


def parse_scenarios(args: argparse.Namespace) -> list[tuple[int, int]]:
    if not args.scenarios:
        return [(args.subscribers, args.messages)]
    out = []
    for item in args.scenarios.split(","):
        s, _, m = item.strip().partition("x")
        out.append((int(s), int(m)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--scenarios", default="", help="e.g. 1000x2000,100x20000 (overrides the two above)")
    ap.add_argument("--size", type=int, default=60, help="payload bytes (about)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--peers", default="wse,reference")
    ap.add_argument("--warmup-rounds", type=int, default=2, help="unmeasured publications first, per run")
    ap.add_argument("--rounds", type=int, default=3, help="measured publications per run (summed)")
    ap.add_argument("--ref-envelope", choices=("minimal", "full"), default="minimal",
                    help="reference frames: minimal {c,t,seq,tp,p}, or full (adds id, ts, v made in Python)")
    ap.add_argument("--chunk", type=int, default=0, help="the WSE app yields to its loop every N publications")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds for all deliveries of one publication")
    ap.add_argument("--docs", default=str(DEFAULT_DOCS), help="Markdown file to update")
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--out", default=str(BENCH / "out"), help="directory for the raw JSON")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be >= 1")
    command = "python bench/fanout.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    skipped: dict[str, str] = {}
    for peer in peers:
        try:
            check_peer(peer)
        except Skip as e:
            skipped[peer] = str(e)
            print(f"{peer}: skipped: {e}", flush=True)
    active = [p for p in peers if p not in skipped]
    mach = machine()
    ref_ver = reference_version() if "reference" in active else "-"
    print(f"machine: {mach}", flush=True)
    if not mach["engine_build"].startswith("release"):
        print(f"WARNING: the wse extension is not the release build ({mach['engine_build']}): "
              "build it with `maturin develop --release` first", flush=True)
    all_ok = True
    t_start = time.monotonic()
    report: dict[str, Any] = {"machine": mach, "command": command, "scenarios": []}
    for subscribers, messages in parse_scenarios(args):
        results: dict[str, list[dict[str, Any]]] = {p: [] for p in active}
        order: list[tuple[int, str]] = []
        skipped_here = dict(skipped)
        print(f"\n== {subscribers} subscribers x {messages} messages, {args.runs} runs ==", flush=True)
        for run_no in range(1, args.runs + 1):
            seq = active if run_no % 2 == 1 else list(reversed(active))
            for peer in seq:
                if peer in skipped_here:
                    continue
                try:
                    res = run_once(peer, args, subscribers, messages)
                except Skip as e:
                    skipped_here[peer] = str(e)
                    print(f"  run {run_no} {peer}: skipped: {e}", flush=True)
                    results.pop(peer, None)
                    order = [o for o in order if o[1] != peer]
                    continue
                results[peer].append(res)
                order.append((run_no, peer))
                if res.get("ok"):
                    print(
                        f"  run {run_no} {peer:9s}: {fmt_m(res['deliveries_per_s'])} deliveries/s, "
                        f"{fmt_m(res.get('deliveries_per_server_cpu_s'))} per server CPU-s "
                        f"(server {res['server_cpu_s']:.2f} CPU-s, wall {res['wall_s']:.3f} s, "
                        f"client CPU {res['client_cpu_share']:.0%})",
                        flush=True,
                    )
                else:
                    all_ok = False
                    brief = {k: res.get(k) for k in ("error", "deliveries", "expected", "gaps", "dups", "bad",
                                                     "timed_out", "disconnected", "errors") if k in res}
                    print(f"  run {run_no} {peer:9s}: FAILED {brief}", flush=True)
        summary = summarize(results)
        client = str(next((r.get("client") for rs in results.values() for r in rs if r.get("client")), "picows"))
        print("", flush=True)
        for line in table_lines(summary, {p: w for p, w in skipped_here.items()}) + [""] + ratio_lines(summary):
            print(line, flush=True)
        key = f"{subscribers}x{messages}" + ("-ref-full-envelope" if args.ref_envelope == "full" else "")
        report["scenarios"].append({"key": key, "results": results, "order": order, "skipped": skipped_here})
        if not args.no_docs:
            body = doc_section(key, subscribers, messages, args, command, summary, skipped_here, results, order,
                               mach, ref_ver, client)
            write_docs(Path(args.docs), key, body)
            print(f"updated {args.docs} (section fanout:{key})", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    (out / f"fanout-{stamp}.json").write_text(json.dumps(report, indent=1))
    print(f"raw results: {out / f'fanout-{stamp}.json'}; total {time.monotonic() - t_start:.0f} s", flush=True)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
