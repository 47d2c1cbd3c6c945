"""The published wse-client 2.5.1, unmodified, against our server (wire protocol v2)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import SECRET, ROOT, ServerProc, make_token



def reference_script() -> Path:
    candidate = ROOT.parent / "shared/tools/reference-wse.sh"
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


def run_feature(srv: ServerProc, mode: str) -> dict:  # type: ignore[type-arg]
    token = make_token({"sub": "ref-user"})
    out = subprocess.run(
        ["bash", str(reference_script()), "python", "tests/interop/ref_features.py", mode, srv.url, token],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run_reference(*args: str) -> dict:  # type: ignore[type-arg]
    out = subprocess.run(
        ["bash", str(reference_script()), "python", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def engine_stats(srv: ServerProc) -> dict:  # type: ignore[type-arg]
    import asyncio

    from tests.wsutil import fresh_stats

    hdr = {"Authorization": f"Bearer {make_token({'sub': 'probe'})}"}
    return asyncio.run(fresh_stats(srv.url, additional_headers=hdr))["engine"]  # type: ignore[no-any-return]


def test_published_client_encrypted(make_server) -> None:  # type: ignore[no-untyped-def]
    srv: ServerProc = make_server({"jwt": {"secret": SECRET}})
    r = run_feature(srv, "encrypted")
    assert [m["i"] for m in r["received"]] == list(range(5))
    st = engine_stats(srv)
    # It keyed, and what it sent after keying came sealed and opened without a single failure.
    assert st["key_exchanges"] == 1 and st["sealed_in"] >= 1, st
    assert st["decrypt_failures"] == 0 and st["replays_refused"] == 0


def test_published_client_compressed(make_server) -> None:  # type: ignore[no-untyped-def]
    srv: ServerProc = make_server({"jwt": {"secret": SECRET}})
    r = run_feature(srv, "compressed")
    assert [m["i"] for m in r["received"]] == list(range(5))
    assert all(m["text"] == len("lorem ipsum dolor sit amet ") * 100 for m in r["received"])
    assert engine_stats(srv)["compressed_out"] >= 5


def test_published_client_msgpack(make_server) -> None:  # type: ignore[no-untyped-def]
    srv: ServerProc = make_server({"jwt": {"secret": SECRET}})
    r = run_feature(srv, "msgpack")
    assert [m["i"] for m in r["received"]] == list(range(5))
    assert engine_stats(srv)["msgpack_out"] >= 5


def test_published_client_recovers_after_reconnect(make_server) -> None:  # type: ignore[no-untyped-def]
    srv: ServerProc = make_server({"jwt": {"secret": SECRET}, "recovery": True})
    r = run_feature(srv, "recovery")
    assert [m["i"] for m in r["received"]] == list(range(12)), r
    assert [m["o"] for m in r["received"]] == list(range(1, 13))
    assert r["state"]["feat"][1] == 12
    st = engine_stats(srv)
    assert st["recovery_recovered"] == 1 and st["recovered_messages"] == 7
def test_published_client_receives_presence_events(make_server) -> None:  # type: ignore[no-untyped-def]
    srv: ServerProc = make_server({"jwt": {"secret": SECRET}, "presence": True})
    res = run_reference(
        "tests/interop/ref_presence_rate.py", "presence", srv.url,
        make_token({"sub": "ref-a"}), make_token({"sub": "ref-b"}),
    )
    got = [(e["type"], e["payload"].get("user_id"), e["payload"].get("data")) for e in res["events"]]
    assert got == [
        ("presence_join", "ref-b", None),
        ("presence_update", "ref-b", {"status": "away"}),
        ("presence_leave", "ref-b", {"status": "away"}),
    ]
    assert all(e["payload"]["topic"] == "room" for e in res["events"])


def test_published_client_sees_rate_limit_warning_and_rate_limited(make_server) -> None:  # type: ignore[no-untyped-def]
    srv: ServerProc = make_server(
        {"jwt": {"secret": SECRET}, "rate_limit_capacity": 20, "rate_limit_refill": 2, "rate_limit_close_after": 0}
    )
    res = run_reference("tests/interop/ref_presence_rate.py", "rate", srv.url, make_token({"sub": "ref-r"}), "40")
    assert len(res["warnings"]) == 1
    assert res["warnings"][0]["limit"] == 20 and res["warnings"][0]["remaining"] < 4
    limited = [e for e in res["errors"] if e["code"] == "RATE_LIMITED"]
    assert len(limited) == 1 and 0 < limited[0]["retry_after"] <= 1.0
    assert res["echo"] == {"back": 1} and res["connected"] is True
