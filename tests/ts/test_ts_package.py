"""The npm package: strict TypeScript (sources, tests, e2e and bench all type-check), the build
(ESM and .d.ts for both entry points), and what Node imports from it."""

from __future__ import annotations

import subprocess
from typing import Any

from tests.ts.conftest import TS


def test_typechecks_builds_and_imports(ts_bundles: Any) -> None:
    check = subprocess.run(["npx", "tsc", "-p", "tsconfig.json", "--noEmit"], cwd=TS, capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    build = subprocess.run(["npm", "run", "--silent", "build"], cwd=TS, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    for f in ("index.js", "index.d.ts", "react.js", "react.d.ts"):
        assert (TS / "dist" / f).is_file(), f
    script = (
        "const m = await import('wse-client'); const r = await import('wse-client/react');"
        "console.log([typeof m.connect, typeof m.WSEClient, typeof r.useTopic, typeof r.WSEProvider].join(','))"
    )
    out = subprocess.run(["node", "--input-type=module", "-e", script], cwd=TS, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "function,function,function,function", out.stderr
