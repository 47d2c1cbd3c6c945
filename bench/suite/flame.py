"""Flame graphs: ``perf record -g`` of a server's processes during one scenario, rendered to SVG.

    with Recorder(pids) as rec:
        run_the_scenario()
    rec.render(Path("docs/img/flame-fanout_1000.svg"), "title")

The stacks come from ``perf script``; they are folded (one line per distinct stack, root first)
and drawn as nested boxes whose width is the share of samples, root at the bottom. Each box's
tooltip gives its function and share. No dependency beyond perf.
"""

from __future__ import annotations

import html
import os
import signal
import subprocess
import tempfile
import zlib
from collections import Counter
from pathlib import Path
from types import TracebackType

FREQ = "499"  # samples per second per CPU: low enough to leave the server its time


def available() -> bool:
    """Whether ``perf record`` works here (installed, and allowed to sample)."""
    try:
        p = subprocess.run(["perf", "record", "-q", "-o", "/dev/null", "--", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return p.returncode == 0


class Recorder:
    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.dir = tempfile.TemporaryDirectory(prefix="wse-flame-")
        self.data = Path(self.dir.name) / "perf.data"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Recorder:
        self.proc = subprocess.Popen(
            ["perf", "record", "-q", "-F", FREQ, "-g", "-o", str(self.data), "-p", ",".join(map(str, self.pids))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def folded(self) -> Counter[str]:
        out = subprocess.run(["perf", "script", "-i", str(self.data), "-F", "comm,ip,sym"], capture_output=True,
                             text=True, errors="replace", timeout=600).stdout
        return fold(out)

    def render(self, svg: Path, title: str) -> int:
        """Write the SVG; returns the number of samples (0: nothing written)."""
        try:
            stacks = self.folded()
        finally:
            self.dir.cleanup()
        n = sum(stacks.values())
        if n:
            svg.parent.mkdir(parents=True, exist_ok=True)
            svg.write_text(draw(stacks, title))
        return n


def fold(script: str) -> Counter[str]:
    """``perf script`` output to folded stacks: ``comm;root;...;leaf`` -> samples."""
    stacks: Counter[str] = Counter()
    comm, frames = None, []

    def flush() -> None:
        if comm is not None:
            stacks[";".join([comm, *reversed(frames)])] += 1

    for line in script.splitlines():
        if not line.strip():
            flush()
            comm, frames = None, []
        elif not line[0].isspace():
            flush()
            comm, frames = line.split()[0], []
        else:
            parts = line.split(None, 1)
            sym = parts[1].strip() if len(parts) > 1 else "[unknown]"
            sym = sym.split("+0x")[0]
            frames.append(sym if sym and sym != "[unknown]" else "[unknown]")
    flush()
    return stacks


def draw(stacks: Counter[str], title: str, width: int = 1200, row: int = 16) -> str:
    """The SVG of folded stacks."""
    counts: dict[tuple[str, ...], int] = Counter()
    for stack, n in stacks.items():
        path: tuple[str, ...] = ()
        for f in stack.split(";"):
            path = (*path, f)
            counts[path] += n
    total = sum(stacks.values())
    depth = max(len(p) for p in counts)
    height = (depth + 3) * row
    boxes: list[str] = []
    children: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    for p in counts:
        children.setdefault(p[:-1], []).append(p)
    min_w = 0.5

    def place(path: tuple[str, ...], x: float) -> None:
        for child in sorted(children.get(path, [])):
            w = counts[child] / total * (width - 20)
            if w >= min_w:
                level = len(child)
                y = height - (level + 1) * row
                name = child[-1]
                share = counts[child] / total
                h = zlib.crc32(name.encode())
                hue = 10 + h % 40
                label = html.escape(name[: int(w / 7)]) if w > 21 else ""
                boxes.append(
                    f'<g><title>{html.escape(name)} ({counts[child]:,} samples, {share:.1%})</title>'
                    f'<rect x="{x + 10:.1f}" y="{y}" width="{w:.1f}" height="{row - 1}" '
                    f'fill="hsl({hue},85%,{55 + (h >> 8) % 15}%)" rx="2"/>'
                    f'<text x="{x + 13:.1f}" y="{y + row - 4}">{label}</text></g>')
                place(child, x)
            x += w

    place((), 0.0)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'font-family="monospace" font-size="11">'
            f'<rect width="100%" height="100%" fill="#fdfdf6"/>'
            f'<text x="10" y="{row}" font-size="13">{html.escape(title)}: {total:,} samples '
            f'(perf record -F {FREQ} -g), width = share of server CPU samples</text>'
            + "".join(boxes) + "</svg>\n")


if __name__ == "__main__":  # render an existing perf.data: python -m suite.flame perf.data out.svg
    import sys

    rec = Recorder([os.getpid()])
    rec.data = Path(sys.argv[1])
    print(rec.render(Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else sys.argv[1]))
