"""The benchmark suite: wse against its peers, every scenario, one command.

    python bench/run.py quick          # every scenario and peer, tables, targets, plots, flame graphs
    python bench/run.py full           # longer windows, 3 server starts per fan-out shape, 5 runs
    python bench/run.py quick --smoke  # tiny counts: checks the harness, figures mean nothing
    python bench/run.py report bench/results/quick.json   # rewrite the report from a results file
    python bench/run.py soak [--duration S] # mixed load for 20 minutes, nothing lost, nothing leaked

Every server (wse, the published wse-server 2.5.1, python websockets + uvloop, picows, uvicorn +
FastAPI, granian, socketify, Bun, Centrifugo, and the floor: a minimal Rust writer) is started
pinned to core 0 and measured by the same Rust load generator (``wse-loadgen``) pinned to core 1,
on the same message shapes. Server CPU is that of every thread of all its processes, from the
scheduler's nanosecond counters (/proc/PID/task/*/schedstat), over windows of at least a second of
it. Every server is warmed until steady before its measured samples; the cold figure is kept
apart; unclean samples say why and never enter a median (see bench/suite/scenarios.py). A server
that cannot be installed or started is reported as skipped, with the reason. Results go to
``bench/results/MODE.json``; the report to docs/BENCHMARKS.md (between the ``bench:suite``
markers), docs/img/bench-*.png and docs/img/flame-*.svg (``perf record -g`` of wse per scenario).

Needs: ``pip install -e ".[bench]"``; Bun: ``npm install --prefix bench/peers``; the generator
(built here with ``cargo build --release -p wse-loadgen``; else the one ``pip install ./bench/loadgen``
installed); for the reference a Python >= 3.12 with wse-server 2.5.1: ``--ref-python
"python3.13"``, or ``WSE_REFERENCE_PYTHON``, or the machine's reference-wse.sh wrapper (found by
itself).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite import flame, report, scenarios  # noqa: E402
from suite.servers import ALL, ROOT, Server, Skip, free_port, reference_python  # noqa: E402

SCENARIOS = ["fanout", "fanout_same", "topics", "e2e", "fanout_deflate", "inbound", "latency", "handshake", "idle",
             "cluster"]


def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal"))
    except (OSError, StopIteration):
        mem = 0
    import os

    return (f"{model}, {os.cpu_count()} CPUs, {mem / 1048576:.1f} GiB RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def commit() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    c = git("rev-parse", "--short", "HEAD") or "?"
    return c + (" (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else "")


def find_loadgen(flag: str | None) -> list[str]:
    if flag:
        return shlex.split(flag)
    binary = ROOT / "target" / "release" / "wse-loadgen"
    if shutil.which("cargo"):
        # Also when it exists: an older build lacks options the suite uses (a no-op when fresh).
        print("building the load generator: cargo build --release -p wse-loadgen", flush=True)
        subprocess.run(["cargo", "build", "--release", "-p", "wse-loadgen"], cwd=ROOT, check=False)
    installed = shutil.which("wse-loadgen") or str(Path(sys.executable).parent / "wse-loadgen")
    for candidate in (binary, Path(installed)):
        if not candidate.exists():
            continue
        help_text = subprocess.run([str(candidate), "fanout", "--help"], capture_output=True, text=True).stdout
        if "--check-every" in help_text:
            return [str(candidate)]
        print(f"{candidate} is older than this suite", flush=True)
    sys.exit("no load generator: build it with `cargo build --release -p wse-loadgen` "
             "or install it with `pip install ./bench/loadgen`")


def scrub(text: str) -> str:
    """No machine paths in the committed results: the repository and the home directory shortened."""
    return text.replace(sys.executable, "python").replace(str(ROOT), ".").replace(str(Path.home()), "~")


FANOUT_ONLY = {"floor"}  # the floor does fan-out and nothing else
NO_INBOUND_COUNT = {"centrifugo"}
DEFLATE = ["wse", "websockets", "socketify", "centrifugo"]  # the servers with permessage-deflate


class Driver:
    def __init__(self, args: argparse.Namespace, shape: scenarios.Shape) -> None:
        self.args = args
        self.shape = shape
        self.lg = scenarios.Loadgen(find_loadgen(args.loadgen))
        self.ref = reference_python(args.ref_python)
        self.port = 7100
        self.skipped: dict[str, str] = {}
        self.descs: dict[str, str] = {}
        self.records: list[dict[str, Any]] = []
        self.flames: dict[str, str] = {}

    def server(self, name: str, jwt: bool = False, workers: int = 0, deflate: bool = False) -> Server:
        self.port = free_port(self.port + 1)
        s = Server(name, self.port, jwt=jwt, ref_python=self.ref, loadgen=self.lg.argv0, workers=workers,
                   deflate=deflate)
        s.start()
        self.descs.setdefault(name, s.describe())
        return s

    def skip(self, name: str, scenario: str, reason: str) -> None:
        self.records.append({"server": name, "scenario": scenario, "status": "skipped", "reason": reason,
                             "samples": [], "raw": []})

    def record(self, name: str, scenario: str, fn: Any, jwt: bool = False, starts: int = 1, workers: int = 0,
               label: str | None = None, deflate: bool = False) -> dict[str, Any]:
        """``starts`` fresh servers, each given to ``fn`` (returns samples, raw)."""
        rec: dict[str, Any] = {"server": label or name, "scenario": scenario, "status": "ok", "reason": "",
                               "samples": [], "raw": []}
        t0 = time.monotonic()
        if name in self.skipped:
            rec.update(status="skipped", reason=self.skipped[name])
        else:
            for _ in range(starts):
                try:
                    s = self.server(name, jwt, workers, deflate)
                except Skip as e:
                    if e.permanent:  # not installed: the later scenarios need not try
                        self.skipped[name] = str(e)
                    rec.update(status="skipped", reason=str(e))
                    break
                try:
                    samples, raw = fn(s)
                    rec["samples"] += samples
                    rec["raw"] += raw
                    if not s.alive():
                        rec.update(status="failed", reason="the server exited: " + " | ".join(list(s.lines)[-2:]))
                except Exception as e:  # noqa: BLE001 - a failed run is reported, the suite goes on
                    rec.update(status="failed", reason=f"{type(e).__name__}: {e}"[:300])
                finally:
                    s.stop()
        rec["reason"] = scrub(rec["reason"])
        rec["elapsed_s"] = round(time.monotonic() - t0, 2)
        counted = [x for x in rec["samples"] if x.get("counted")]
        # The one-at-a-time handshakes are latency samples: their CPU figure is not the rate's.
        med = sorted(x["per_cpu"] for x in counted if x.get("per_cpu") and not x.get("serial"))
        unclean = sorted({x["why"] for x in rec["samples"] if not x.get("ok") and x.get("why")})
        print(f"  {scenario:18} {rec['server']:14} {rec['status']:7} {len(counted)}/{len(rec['samples'])} counted"
              f"{'  median per server CPU-s ' + report.si(med[len(med) // 2]) if med else ''}"
              f"{'  ' + rec['reason'][:120] if rec['reason'] else ''}"
              f"{'  unclean: ' + ' | '.join(unclean)[:160] if unclean else ''}  ({rec['elapsed_s']:.1f} s)", flush=True)
        self.records.append(rec)
        return rec

    def flame(self, scenario: str, fn: Any, jwt: bool = False, workers: int = 0) -> None:
        """One extra run of ``scenario`` on a fresh wse under ``perf record -g``: its flame graph
        (docs/img/flame-SCENARIO.svg). Not a measurement: perf's sampling costs the server time."""
        if not self.args.flame or "wse" in self.skipped:
            return
        try:
            s = self.server("wse", jwt, workers)
        except Skip:
            return
        try:
            svg = self.args.doc.parent / "img" / f"flame-{scenario}.svg"
            with flame.Recorder(s.pids()) as rec:
                fn(s)
            n = rec.render(svg, f"wse, {scenario} ({self.args.mode}{', smoke' if self.args.smoke else ''})")
            if n:
                self.flames[scenario] = str(svg.relative_to(self.args.doc.parent))
        except Exception as e:  # noqa: BLE001 - a flame graph is optional
            print(f"  flame graph of {scenario}: {type(e).__name__}: {e}"[:200], flush=True)
        finally:
            s.stop()

    def run(self, servers: list[str], which: list[str]) -> None:
        sh, lg = self.shape, self.lg
        k = 0

        def order(names: list[str]) -> list[str]:
            """The servers' order alternates from one scenario to the next (the floor goes last, after
            wse, whose frame size it writes)."""
            nonlocal k
            k += 1
            base = [n for n in names if n != "floor"]
            return (base if k % 2 else base[::-1]) + (["floor"] if "floor" in names else [])

        def frame_bytes(subs: int) -> int:
            rec = next((r for r in self.records if r["scenario"] == f"fanout_{subs}" and r["server"] == "wse"), None)
            return scenarios.median_frame_bytes(rec["samples"]) if rec else 0

        def fan(subs: int, fb: int, per_user: bool = False) -> Any:
            return lambda s: scenarios.fanout(lg, s, sh, subs, per_user=per_user, frame_bytes=fb)

        if "fanout" in which:
            for subs in sh.fanout_subs:
                for name in order(servers):
                    fb = frame_bytes(subs) if name == "floor" else 0
                    self.record(name, f"fanout_{subs}", fan(subs, fb), starts=sh.fanout_starts)
                self.flame(f"fanout_{subs}", fan(subs, 0))
        if "fanout_same" in which:
            for subs in sh.fanout_subs:
                fb = frame_bytes(subs)
                for name in order(servers):
                    if fb:
                        self.record(name, f"fanout_same_{subs}", fan(subs, fb), starts=sh.fanout_starts)
                    else:
                        self.skip(name, f"fanout_same_{subs}", "no wse frame size (run the fanout scenario with wse)")
        if "topics" in which:
            n = sh.topics_conns
            for name in order([x for x in servers if x not in FANOUT_ONLY]):
                self.record(name, "topics", fan(n, 0, per_user=True), starts=sh.fanout_starts)
            self.flame("topics", fan(n, 0, per_user=True))
        if "e2e" in which and "wse" in servers:
            subs = 1000 if 1000 in sh.fanout_subs else sh.fanout_subs[-1]
            self.record("wse", f"e2e_{subs}", lambda s: scenarios.fanout(lg, s, sh, subs, encrypt="batch"),
                        starts=sh.fanout_starts)
            self.record("wse", f"e2econn_{subs}", lambda s: scenarios.fanout(lg, s, sh, subs, encrypt="conn"),
                        starts=sh.fanout_starts)
        if "fanout_deflate" in which:
            # permessage-deflate on (each server's own way), at one size, beside wse's plaintext
            # of the same size (this run's, else one more run).
            subs = 1000 if 1000 in sh.fanout_subs else sh.fanout_subs[-1]
            for name in order([x for x in servers if x in DEFLATE]):
                self.record(name, f"fanout_deflate_{subs}", lambda s: scenarios.fanout(lg, s, sh, subs, deflate=True),
                            starts=sh.fanout_starts, deflate=True)
            if "wse" in servers and not any(r["scenario"] == f"fanout_{subs}" and r["server"] == "wse"
                                            for r in self.records):
                self.record("wse", f"fanout_{subs}", fan(subs, 0), starts=sh.fanout_starts)
        if "inbound" in which:
            shapes = [("inbound_pipelined", sh.inbound_pipe_conns, False)]
            shapes += [(f"inbound_seg_{c}", c, True) for c in sh.inbound_seg_conns]
            for scenario, c, paced in shapes:
                fn = (lambda s, c=c, paced=paced: scenarios.inbound(lg, s, sh, c, paced))
                for name in order([x for x in servers if x not in FANOUT_ONLY | NO_INBOUND_COUNT]):
                    self.record(name, scenario, fn)
                self.flame(scenario, fn)
        if "latency" in which:
            for rate in sh.latency_rates:
                scenario = f"latency_{int(rate)}"
                fn = (lambda s, r=rate: scenarios.latency(lg, s, sh, r))
                for name in order([x for x in servers if x not in FANOUT_ONLY | NO_INBOUND_COUNT]):
                    self.record(name, scenario, fn)
                self.flame(scenario, fn)
        if "handshake" in which:
            fn = (lambda s: scenarios.handshake(lg, s, sh))
            for name in order([x for x in servers if x not in FANOUT_ONLY]):
                self.record(name, "handshake", fn, jwt=True)
            self.flame("handshake", fn, jwt=True)
        if "idle" in which:
            limit = scenarios.fd_limit()
            for n in sh.idle_conns:
                for name in order([x for x in servers if x not in FANOUT_ONLY]):
                    if n + 1000 <= limit:
                        self.record(name, f"idle_{n}", lambda s, n=n: ([scenarios.idle(lg, s, n)], []), starts=sh.runs)
                    else:
                        self.skip(name, f"idle_{n}", f"{n:,} connections exceed the open-files limit ({limit:,} per "
                                  "process) of one server process and of one generator")
        if "cluster" in which and "wse" in servers:
            subs = sh.cluster_subs
            for w in sh.cluster_workers:
                self.record("wse", "cluster", fan(subs, 0), workers=w, starts=sh.fanout_starts,
                            label=f"wse --workers {w}")
            self.flame("cluster", fan(subs, 0), workers=max(sh.cluster_workers))


def main() -> None:
    if sys.argv[1:2] == ["soak"]:  # its own options (bench/suite/soak.py)
        from suite import soak

        sys.exit(soak.main(sys.argv[2:]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["quick", "full", "report", "soak"])
    ap.add_argument("results_file", nargs="?", help="report: the results file to render")
    ap.add_argument("--smoke", action="store_true", help="tiny counts (checks the harness; not a measurement)")
    ap.add_argument("--servers", default=",".join(ALL), help=f"comma-separated, from {','.join(ALL)}")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, from {','.join(SCENARIOS)}")
    ap.add_argument("--ref-python", help='command of a Python >= 3.12 with wse-server 2.5.1, e.g. "python3.13"')
    ap.add_argument("--loadgen", help="the generator's command (default: target/release/wse-loadgen)")
    ap.add_argument("--no-report", action="store_true", help="write the results file only")
    ap.add_argument("--fanout-subs", help="comma-separated subscriber counts instead of the mode's (e.g. 1000)")
    ap.add_argument("--note", default="", help="a sentence for the report about this run (e.g. the machine was shared)")
    ap.add_argument("--flame", action=argparse.BooleanOptionalAction, default=None,
                    help="flame graphs of wse per scenario (perf record -g), into the doc's img/ "
                         "(default: on when perf works, off with --smoke)")
    ap.add_argument("--out", type=Path, help="the results file (default: bench/results/MODE.json)")
    ap.add_argument("--doc", type=Path, default=report.DOC,
                    help="the markdown file the report goes into (plots: img/ beside it)")
    args = ap.parse_args()

    if args.mode == "report":
        path = Path(args.results_file or ROOT / "bench/results/quick.json")
        report.write(json.loads(path.read_text()), args.doc)
        print(f"wrote {args.doc} and its img/ from {path}")
        return
    shape = scenarios.SMOKE if args.smoke else (scenarios.QUICK if args.mode == "quick" else scenarios.FULL)
    if args.fanout_subs:
        shape = dataclasses.replace(shape, fanout_subs=tuple(int(x) for x in args.fanout_subs.split(",")))
    servers = [s for s in args.servers.split(",") if s]
    unknown = [s for s in servers if s not in ALL]
    if unknown:
        sys.exit(f"unknown servers: {unknown}; known: {ALL}")
    which = [s for s in args.scenarios.split(",") if s]

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt  # the running server is stopped on the way out

    signal.signal(signal.SIGTERM, interrupted)
    if args.flame is None:
        args.flame = not args.smoke and flame.available()
    elif args.flame and not flame.available():
        print("perf record does not work here: no flame graphs", flush=True)
        args.flame = False
    d = Driver(args, shape)
    t0 = time.monotonic()
    print(f"bench/run.py {args.mode}{' --smoke' if args.smoke else ''}: servers {', '.join(servers)}; "
          f"generator {' '.join(d.lg.argv0)}", flush=True)
    d.run(servers, which)
    name = "smoke" if args.smoke else args.mode
    out = (args.out or ROOT / "bench" / "results" / f"{name}.json").resolve()
    results: dict[str, Any] = {
        "meta": {
            "mode": args.mode, "smoke": args.smoke, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "elapsed_s": time.monotonic() - t0, "machine": machine(), "commit": commit(),
            "loadgen": "wse-loadgen " + ("(binary)" if "wse-loadgen" in d.lg.argv0[0] else "(wse bench)"),
            "command": scrub("python bench/run.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])),
            "results_file": str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else out.name, "servers": servers, "scenarios": which,
            "shape": dataclasses.asdict(shape), "server_versions": d.descs, "skipped": d.skipped,
            "flames": d.flames, "note": args.note,
        },
        "records": d.records,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"results: {results['meta']['results_file']} ({results['meta']['elapsed_s']:.0f} s)")
    if not args.no_report:
        report.write(results, args.doc)
        print(f"report: {args.doc}, plots in {args.doc.parent / 'img'}")
        print("\n".join(report.targets(results)))


if __name__ == "__main__":
    main()
