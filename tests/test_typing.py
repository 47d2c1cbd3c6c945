"""The extension's stub matches the compiled module, and the package type-checks strictly."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_stub_matches_extension() -> None:
    out = subprocess.run([sys.executable, "-m", "mypy.stubtest", "wse._runtime"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_package_typechecks() -> None:
    out = subprocess.run([sys.executable, "-m", "mypy", "wse", "cli/purelib/wse_cli"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
