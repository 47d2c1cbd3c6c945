"""The client distribution: pure Python, typed, one required dependency."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import ROOT


def test_client_typechecks_strictly() -> None:
    out = subprocess.run([sys.executable, "-m", "mypy", "clients/python/wse_client"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_wheel_is_pure_python_and_typed(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), "clients/python"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("wse_engine_client-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")  # no compiled code
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "wse_client/py.typed" in names
    assert not [n for n in names if n.endswith((".so", ".pyd"))]
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert [r.split()[1] for r in requires] == ["websockets>=13"]
