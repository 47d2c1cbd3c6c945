"""The servers under test: how each starts (pinned to core 0), its processes, its version.

Each server prints ``NAME: serving ws://HOST:PORT/wse pid PID`` once it accepts connections;
the harness waits for that line. A server that cannot start is "skipped" with the reason (the
last lines it printed, or what is missing).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / "bench" / "peers"
SERVER_CORE = "0"
JWT_SECRET = "bench-secret-0123456789-abcdefghijklmnopqrstuv"

# name -> (label, packages whose versions are reported, modules that must import)
SERVERS: dict[str, tuple[str, list[str], list[str]]] = {
    "wse": ("wse (this engine)", ["wse-engine"], ["wse"]),
    "reference": ("wse-server 2.5.1", [], []),
    "websockets": ("websockets + uvloop", ["websockets", "uvloop"], ["websockets", "uvloop"]),
    "picows": ("picows + uvloop", ["picows", "uvloop"], ["picows", "uvloop"]),
    "fastapi": ("uvicorn + FastAPI", ["uvicorn", "fastapi", "websockets"], ["uvicorn", "fastapi", "httptools"]),
    "granian": ("granian (ASGI)", ["granian"], ["granian"]),
    "socketify": ("socketify (uWS)", ["socketify"], ["socketify"]),
    "bun": ("Bun (uWS pub/sub)", [], []),
    "centrifugo": ("Centrifugo", [], []),
    # Not a server one would run: the fan-out floor (``wse-loadgen floor``), pre-built frames
    # written to the subscribers' sockets and nothing else. Fan-out scenarios only.
    "floor": ("floor (minimal Rust writer)", [], []),
}
ALL = list(SERVERS)
BUN_VERSION = "1.4.4"
CENTRIFUGO_VERSION = "v6.9.1"


def bun_binary() -> str | None:
    """Bun from ``WSE_BENCH_BUN``, the npm package under bench/peers (``npm install --prefix
    bench/peers``, see bench/peers/package.json), or the PATH."""
    env = os.environ.get("WSE_BENCH_BUN")
    if env:
        return env
    for cand in (PEERS / "node_modules" / "@oven" / "bun-linux-x64" / "bin" / "bun",):
        if cand.is_file():
            return str(cand)
    return shutil.which("bun")


def versions(pkgs: list[str]) -> str:
    out = []
    for p in pkgs:
        try:
            out.append(f"{p} {version(p)}")
        except PackageNotFoundError:
            out.append(f"{p} (not installed)")
    return ", ".join(out)


def reference_python(flag: str | None) -> list[str] | None:
    """The command that runs a Python >= 3.12 with wse-server 2.5.1, or None."""
    if flag:
        return shlex.split(flag)
    env = os.environ.get("WSE_REFERENCE_PYTHON")
    if env:
        return shlex.split(env)
    tool = os.environ.get("WSE_REFERENCE_TOOL")
    for cand in ([Path(tool)] if tool else []) + [ROOT.parent / "shared/tools/reference-wse.sh"]:
        if cand.is_file():
            return ["bash", str(cand), "python"]
    if sys.version_info >= (3, 12) and importlib.util.find_spec("wse_server"):
        return [sys.executable]
    return None


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (a server's worker processes)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        ppid = int(s[s.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_kib(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


_CLAIMS: dict[int, int] = {}  # port -> the descriptor of its claim file, held until exit


def free_port(start: int) -> int:
    """The first port from ``start`` on that 127.0.0.1 can bind and that no other run of the
    suite on this machine has claimed. wse listens with SO_REUSEPORT, so a second wse started on
    the same port would share it without an error and take half of the first one's clients: a
    claim (an exclusive lock on a file named after the port, held while this process lives)
    keeps two suites running at once apart."""
    import fcntl
    import socket
    import tempfile

    p = start
    while True:
        if p not in _CLAIMS:
            fd = os.open(os.path.join(tempfile.gettempdir(), f"wse-bench-port-{p}.lock"), os.O_CREAT | os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                p += 1
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    os.close(fd)
                    p += 1
                    continue
            _CLAIMS[p] = fd
            return p
        p += 1


class Skip(Exception):
    """The server cannot run here; the message says why. ``permanent``: no use trying again."""

    def __init__(self, why: str, permanent: bool = False) -> None:
        super().__init__(why)
        self.permanent = permanent


@dataclass
class Server:
    name: str
    port: int
    jwt: bool = False
    ref_python: list[str] | None = None
    loadgen: list[str] | None = None  # the floor's command
    workers: int = 0  # wse only: ``wse run --workers N`` (0: a single process, no supervisor)
    soak: bool = False  # wse only: the soak's production-like settings (bench/peers/wse_app.py)
    deflate: bool = False  # permessage-deflate on (wse, websockets, socketify: the fanout_deflate scenario)
    proc: subprocess.Popen[str] | None = None
    pid: int = 0
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=20))

    @property
    def cores(self) -> str:
        """The server's CPUs: core 0, or every core for a cluster of several workers."""
        return SERVER_CORE if self.workers <= 1 else ",".join(str(i) for i in range(min(self.workers, os.cpu_count() or 1)))

    def command(self) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        port = str(self.port)
        jwt = ["--jwt-secret", JWT_SECRET] if self.jwt else []
        if self.name == "wse":
            env["PYTHONPATH"] = str(PEERS) + os.pathsep + env.get("PYTHONPATH", "")
            if self.jwt:
                env["WSE_BENCH_JWT_SECRET"] = JWT_SECRET
            else:
                env.pop("WSE_BENCH_JWT_SECRET", None)
            env["WSE_BENCH_SOAK"] = "1" if self.soak else ""
            env["WSE_BENCH_DEFLATE"] = "1" if self.deflate else ""
            workers = ["--workers", str(self.workers)] if self.workers else []
            return [sys.executable, "-m", "wse_cli.main", "run", "wse_app:app", "--port", port, *workers,
                    "--log-level", "warning"], env
        if self.name == "reference":
            if not self.ref_python:
                raise Skip("no Python >= 3.12 with wse-server 2.5.1 (give --ref-python)", permanent=True)
            return [*self.ref_python, "bench/peers/ref_server.py", "--port", port, *jwt], env
        if self.name == "bun":
            bun = bun_binary()
            if not bun:
                raise Skip(f"Bun {BUN_VERSION} not installed (npm install --prefix bench/peers, "
                           f"from bench/peers/package.json)", permanent=True)
            return [bun, str(PEERS / "bun_peer.js"), "--port", port, *jwt], env
        if self.name == "centrifugo":
            found = os.environ.get("WSE_BENCH_CENTRIFUGO") or shutil.which("centrifugo") or next(
                (str(c) for c in [Path.home() / "go" / "bin" / "centrifugo"] if c.is_file()), None)
            if not found:
                raise Skip(f"Centrifugo {CENTRIFUGO_VERSION} not installed (go install "
                           f"github.com/centrifugal/centrifugo/v6@{CENTRIFUGO_VERSION})", permanent=True)
            z = ["--deflate"] if self.deflate else []
            return [sys.executable, str(PEERS / "centrifugo_peer.py"), "--binary", found, "--port", port, *z], env
        if self.name == "floor":
            if not self.loadgen:
                raise Skip("no load generator for the floor", permanent=True)
            return [*self.loadgen, "floor", "--port", port], env
        if self.name in ("fastapi", "granian"):
            return [sys.executable, str(PEERS / "asgi_peer.py"), self.name, "--port", port, *jwt], env
        z = ["--deflate"] if self.deflate else []
        return [sys.executable, str(PEERS / f"{self.name}_peer.py"), "--port", port, *jwt, *z], env

    def start(self, timeout: float = 30.0) -> None:
        """Start and wait until it serves. The reference's chroot wrapper re-mounts the working
        directory on each start and finds it busy while another reference process (the previous
        one exiting, or someone else's on a shared machine) still runs: retried for about 30 s."""
        for attempt in range(8):
            try:
                return self._start(timeout)
            except Skip as e:
                if ("target is busy" not in str(e) and "exit code 32" not in str(e)) or attempt == 7:
                    raise
                self.lines.clear()
                time.sleep(min(2.0 + attempt, 6.0))

    def _start(self, timeout: float) -> None:
        missing = [m for m in SERVERS[self.name][2] if importlib.util.find_spec(m) is None]
        if missing:
            raise Skip(f"not installed: {', '.join(missing)}", permanent=True)
        cmd, env = self.command()
        self.proc = subprocess.Popen(["taskset", "-c", self.cores, *cmd], cwd=ROOT, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        ready = threading.Event()
        pat = re.compile(r": serving ws://\S+(?: pid (\d+))?")

        def pump() -> None:
            assert self.proc and self.proc.stdout
            for line in self.proc.stdout:
                self.lines.append(line.rstrip())
                m = pat.search(line)
                if m and not ready.is_set():
                    self.pid = int(m.group(1)) if m.group(1) else self.proc.pid
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        t0 = time.monotonic()
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() - t0 > timeout:
                why = " | ".join(list(self.lines)[-3:]) or f"exit code {self.proc.poll()}"
                self.stop()
                raise Skip(f"did not start: {why}"[:300])
        time.sleep(0.3)

    def pids(self) -> list[int]:
        return tree(self.pid) if self.pid else []

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if not self.proc:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def describe(self) -> str:
        label, pkgs, _ = SERVERS[self.name]
        if self.name == "bun":
            m = next((re.search(r" bun (\S+)", x) for x in self.lines if " bun " in x), None)
            return f"{label}: Bun {m.group(1) if m else '?'}"
        if self.name == "floor":
            return f"{label}: wse-loadgen floor, one thread"
        if self.name == "reference":
            m = next((re.search(r"wse-server (\S+) python (\S+)", x) for x in self.lines if "wse-server" in x), None)
            return f"wse-server {m.group(1)} (Python {m.group(2)})" if m else "wse-server (version unknown)"
        return f"{label}: {versions(pkgs)}"
