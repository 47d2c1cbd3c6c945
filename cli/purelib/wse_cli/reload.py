"""``wse run --reload``: serve in a child process and restart it when a source file changes.

For development only: one process (no ``--workers``), and the watch is a scan of ``*.py`` file
modification times every half second under the watched directories (hidden directories,
``__pycache__``, virtual environments, ``node_modules`` and ``target`` skipped), which needs no
extra package and is cheap for a project's own tree.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

POLL = 0.5
SKIP = {"__pycache__", "node_modules", "target", "venv", ".venv", "site-packages"}


def snapshot(dirs: list[str]) -> dict[str, float]:
    seen: dict[str, float] = {}
    for root in dirs:
        for path, subdirs, files in os.walk(root):
            subdirs[:] = [d for d in subdirs if d not in SKIP and not d.startswith(".")]
            for f in files:
                if f.endswith(".py"):
                    full = os.path.join(path, f)
                    try:
                        seen[full] = os.stat(full).st_mtime
                    except OSError:
                        pass
    return seen


def _child_argv() -> list[str]:
    """This command line without ``--reload`` (the child serves; ``WSE_RELOAD`` is cleared too)."""
    return [sys.executable, "-m", "wse_cli.main", *[a for a in sys.argv[1:] if a != "--reload"]]


def run_reloading(dirs: list[str]) -> int:
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    env = {**os.environ, "WSE_RELOAD": "false"}
    print(f"wse: reloading on changes under {', '.join(dirs)}", file=sys.stderr, flush=True)
    while True:
        before = snapshot(dirs)
        child = subprocess.Popen(_child_argv(), env=env)
        changed = None
        while not stopping and changed is None:
            time.sleep(POLL)
            now = snapshot(dirs)
            if now != before:
                changed = sorted(p for p in now.keys() | before.keys() if now.get(p) != before.get(p))
            elif child.poll() is not None and child.returncode == 2:
                return 2  # a usage error will not fix itself
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if stopping:
            return 0
        assert changed is not None
        print(f"wse: {os.path.relpath(changed[0])} changed; restarting", file=sys.stderr, flush=True)
