"""Seeds the fuzz corpora from real traffic: runs some of the test suites (real clients: the
websockets library, the wse Python client with msgpack, zlib and encryption, PyJWT tokens, a
cluster whose workers talk over the mesh) and Autobahn|Testsuite cases 1-7 and 10 (kosoku, its
fragments, control frames and bad UTF-8), all under `strace`, and keeps what the engine read:

- every request head a server read          -> corpus/handshake
- the frame stream that followed it         -> corpus/frame
- each message in it, by encoding           -> corpus/envelope_json, msgpack (`M:`), zlib
                                               (`C:`), encrypted (`E:`)
- the token places of each request          -> corpus/token, and the tokens -> corpus/jwt
- what a worker read from a mesh peer       -> corpus/mesh_wire
- each permessage-deflate message (RSV1)    -> corpus/permessage_deflate (compressed payload),
                                               and its `Sec-WebSocket-Extensions` offers

Run from the repository root in the venv the test command installs (strace and kosoku needed):
    python fuzz/capture_seeds.py [--keep-trace DIR] [--no-autobahn] [--suite tests/test_x.py ...]
then `bash fuzz/run.sh cmin` to reduce each corpus to the inputs that add coverage.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
SUITES = [
    "tests/test_encodings.py",
    "tests/test_encryption.py",
    "tests/test_auth.py",
    "tests/test_smoke.py",
    "tests/test_cluster_presence.py",
    "tests/test_cluster_recovery.py",
    "tests/test_deflate.py",
]
STRACE = ["strace", "-f", "-qq", "-yy", "-xx", "-s", "262144", "-e", "trace=read,recvfrom", "-e", "signal=none"]
MAX_SEED = 64 << 10
MESH_KINDS = {1, 2, 3, 4, 5, 6, 7, 8, 16, 17}

# `PID read(FD<DESC>, "\x..", N) = R`, possibly split into `<unfinished ...>` / `<... resumed>`.
CALL = re.compile(rb'^(\d+)\s+(read|recvfrom)\((\d+)<(.+?)>, (.*)$')
RESUMED = re.compile(rb'^(\d+)\s+<\.\.\. (?:read|recvfrom) resumed>(.*)$')
DATA = re.compile(rb'^"((?:\\x[0-9a-f]{2})*)"(\.\.\.)?,.*\) = (\d+)')


def parse_trace(path: Path) -> dict[tuple[bytes, bytes], bytearray]:
    """The bytes read from each socket, per (pid, socket description), in order."""
    streams: dict[tuple[bytes, bytes], bytearray] = defaultdict(bytearray)
    broken: set[tuple[bytes, bytes]] = set()
    pending: dict[bytes, bytes] = {}
    with open(path, "rb") as f:
        for line in f:
            line = line.rstrip(b"\n")
            m = CALL.match(line)
            if m:
                pid, _, _, desc, rest = m.groups()
                if rest.endswith(b"<unfinished ...>"):
                    pending[pid] = desc
                    continue
            else:
                r = RESUMED.match(line)
                if not r or r.group(1) not in pending:
                    continue
                pid, rest = r.group(1), r.group(2)
                desc = pending.pop(pid)
            if not (desc.startswith(b"TCP") or desc.startswith(b"UNIX")):
                continue
            key = (pid, desc)
            if key in broken:
                continue
            d = DATA.match(rest)
            if not d:
                continue
            hexes, cut, n = d.groups()
            chunk = bytes.fromhex(hexes.replace(b"\\x", b"").decode())
            streams[key] += chunk[: int(n)]
            if cut or len(chunk) < int(n):
                broken.add(key)  # strace cut the string: the stream ends here
    return streams


def ws_messages(stream: bytes) -> tuple[int, list[tuple[int, bytes, bool]]]:
    """Client frames: (bytes of whole frames, reassembled messages as (opcode, payload,
    compressed: RSV1 on its first frame))."""
    pos, out, partial = 0, [], None
    while True:
        if len(stream) - pos < 2:
            break
        b0, b1 = stream[pos], stream[pos + 1]
        n, h = b1 & 0x7F, 2
        if n == 126:
            if len(stream) - pos < 4:
                break
            n, h = int.from_bytes(stream[pos + 2 : pos + 4], "big"), 4
        elif n == 127:
            if len(stream) - pos < 10:
                break
            n, h = int.from_bytes(stream[pos + 2 : pos + 10], "big"), 10
        masked = b1 & 0x80
        end = pos + h + (4 if masked else 0) + n
        if end > len(stream):
            break
        key = stream[pos + h : pos + h + 4] if masked else b"\0\0\0\0"
        body = stream[end - n : end]
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(body))
        op, fin = b0 & 0x0F, b0 & 0x80
        if op in (1, 2):
            partial = (op, bytearray(payload), bool(b0 & 0x40))
        elif op == 0 and partial is not None:
            partial[1].extend(payload)
        if op in (0, 1, 2) and fin and partial is not None:
            out.append((partial[0], bytes(partial[1]), partial[2]))
            partial = None
        pos = end
        if op == 8:
            break
    return pos, out


def mesh_prefix(stream: bytes) -> int:
    """How many leading bytes are whole mesh frames of known kinds (0: not a mesh stream)."""
    pos = 0
    while len(stream) - pos >= 5:
        n = int.from_bytes(stream[pos : pos + 4], "little")
        if n == 0 or stream[pos + 4] not in MESH_KINDS or pos + 4 + n > len(stream):
            break
        pos += 4 + n
    return pos


def cut_frames(stream: bytes, limit: int, frame_len) -> bytes:  # type: ignore[no-untyped-def]
    """The longest run of whole frames from the start that fits in `limit` bytes."""
    end = 0
    while end < len(stream):
        n = frame_len(stream[end:])
        if n == 0 or end + n > limit:
            break
        end += n
    return stream[:end]


def first_ws_frame(b: bytes) -> int:
    if len(b) < 2:
        return 0
    n, h = b[1] & 0x7F, 2
    if n == 126:
        n, h = int.from_bytes(b[2:4], "big"), 4
    elif n == 127:
        n, h = int.from_bytes(b[2:10], "big"), 10
    t = h + (4 if b[1] & 0x80 else 0) + n
    return t if t <= len(b) else 0


def first_mesh_frame(b: bytes) -> int:
    if len(b) < 4:
        return 0
    t = 4 + int.from_bytes(b[:4], "little")
    return t if t <= len(b) else 0


class Seeds:
    def __init__(self) -> None:
        self.seen: dict[str, set[str]] = defaultdict(set)

    def add(self, target: str, data: bytes, cap: int = 400) -> None:
        h = hashlib.sha1(data).hexdigest()
        if h in self.seen[target] or len(self.seen[target]) >= cap:
            return
        self.seen[target].add(h)
        d = CORPUS / target
        d.mkdir(parents=True, exist_ok=True)
        (d / f"traffic-{h[:16]}").write_bytes(data)


def headers(head: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in head.split(b"\r\n")[1:]:
        if b":" in line:
            k, v = line.split(b":", 1)
            out[k.strip().lower().decode("latin-1")] = v.strip().decode("utf-8", "replace")
    return out


def harvest(streams: dict[tuple[bytes, bytes], bytearray], seeds: Seeds) -> None:
    for (_, desc), data in streams.items():
        data = bytes(data)
        if data.startswith(b"GET ") and b"\r\n\r\n" in data:
            end = data.index(b"\r\n\r\n") + 4
            head, rest = data[:end], data[end:]
            seeds.add("handshake", head)
            h = headers(head)
            target = head.split(b" ", 2)[1].decode("latin-1")
            query = target.split("?", 1)[1] if "?" in target else ""
            if h.get("authorization") or h.get("cookie") or "token=" in query:
                seeds.add("token", f"{h.get('authorization', '')}\n{h.get('cookie', '')}\n{query}\n".encode())
            for src in (h.get("authorization", "").removeprefix("Bearer ").strip(),
                        *(p.split("=", 1)[1] for p in h.get("cookie", "").split("; ") if "=" in p),
                        *(p.split("=", 1)[1] for p in query.split("&") if p.startswith("token="))):
                if src.count(".") == 2:
                    seeds.add("jwt", src.encode())
            frames = cut_frames(rest, MAX_SEED, first_ws_frame)
            if frames:
                seeds.add("frame", frames, cap=600)
            if h.get("sec-websocket-extensions"):
                seeds.add("permessage_deflate", h["sec-websocket-extensions"].encode(), cap=100)
            _, msgs = ws_messages(rest)
            for op, m, compressed in msgs:
                if len(m) > MAX_SEED:
                    continue
                if compressed:
                    seeds.add("permessage_deflate", m)
                    continue
                prefix = m[:2]
                if op == 2 and prefix in (b"M:", b"C:", b"E:"):
                    seeds.add({b"M:": "msgpack", b"C:": "zlib", b"E:": "encrypted"}[prefix], m)
                elif m[:1] in (b"{", b"W", b"S", b"U") or op == 1:
                    seeds.add("envelope_json", m)
        elif desc.startswith(b"UNIX") and mesh_prefix(data) > 0:
            seeds.add("mesh_wire", cut_frames(data, MAX_SEED, first_mesh_frame), cap=300)


def run_suites(trace: Path, suites: list[str]) -> None:
    cmd = [*STRACE, "-o", str(trace), sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *suites]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=False)


def run_autobahn(trace: Path, out: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.conftest import ServerProc

    srv = ServerProc("tests.apps.echo:app", {})
    st = subprocess.Popen([*STRACE, "-o", str(trace), "-p", str(srv.pid)])
    try:
        # Let strace attach before the first connection (it prints nothing with -qq: poll /proc).
        for _ in range(200):
            status = Path(f"/proc/{srv.pid}/status").read_text()
            if re.search(r"TracerPid:\s+[1-9]", status):
                break
            subprocess.run(["sleep", "0.05"], check=True)
        cmd = ["kosoku", "-m", "fuzzingclient", "-p", "1", "-x", "9.*", "-x", "11.*", "-x", "12.*", "-x", "13.*",
               "-o", str(out), f"127.0.0.1:{srv.port}"]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=False, capture_output=True, timeout=900)
    finally:
        srv.stop()
        st.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep-trace", type=Path, help="keep the strace output here")
    ap.add_argument("--no-autobahn", action="store_true")
    ap.add_argument("--suite", action="append", help="run this test file only (repeatable; default: every suite above)")
    a = ap.parse_args()
    for tool in ("strace", "kosoku"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed (apt-get install strace; pip install kosoku)")
    work = a.keep_trace or Path(tempfile.mkdtemp(prefix="wse-capture-"))
    work.mkdir(parents=True, exist_ok=True)
    seeds = Seeds()
    run_suites(work / "suites.trace", a.suite or SUITES)
    harvest(parse_trace(work / "suites.trace"), seeds)
    if not a.no_autobahn:
        run_autobahn(work / "autobahn.trace", work / "autobahn")
        harvest(parse_trace(work / "autobahn.trace"), seeds)
    for t, s in sorted(seeds.seen.items()):
        print(f"{t}: {len(s)} seeds")
    if not a.keep_trace:
        shutil.rmtree(work)
    os.sync()


if __name__ == "__main__":
    main()
