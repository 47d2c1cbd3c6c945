"""The published wse-client 2.5.1, unmodified, against our server (wire protocol v2)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import SECRET, ROOT, ServerProc, make_token

REF = Path("/work/shared/tools/reference-wse.sh")


def reference_script() -> Path:
    for candidate in (ROOT.parent / "shared/tools/reference-wse.sh", REF):
        if candidate.exists():
            return candidate
    raise AssertionError("shared/tools/reference-wse.sh not found beside the repository")


def test_published_client_connects_subscribes_and_receives(make_server) -> None:  # type: ignore[no-untyped-def]
    srv: ServerProc = make_server({"jwt": {"secret": SECRET}})
    token = make_token({"sub": "ref-user"})
    out = subprocess.run(
        ["bash", str(reference_script()), "python", "tests/interop/ref_client.py", srv.url, token, "50"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    received = result["received"]
    assert [r["payload"]["i"] for r in received] == list(range(50))
    assert all(r["payload"]["k"] == "v" and r["topic"] == "notifications" for r in received)
