"""The `wse` command's options as uvicorn/granian users expect them: each also from a WSE_*
environment variable, a bad value is one line on stderr and exit code 2, `--version`, shell
completion, `--pid-file`, `--backlog`, `--ssl-certfile`/`--ssl-keyfile`, `--factory`, `--reload`,
`--log-format json`."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import pytest
from websockets.asyncio.client import connect

from tests.conftest import ROOT, terminate
from tests.test_tls import cert  # noqa: F401  (the fixture)

WSE = [sys.executable, "-m", "wse_cli.main"]


def env_with(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSE_")}
    env["PYTHONPATH"] = str(ROOT)
    env["WSE_TEST_CONFIG"] = "{}"
    env.update(extra)
    return env


def run_wse(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*WSE, *args], cwd=ROOT, env=env_with(**env), capture_output=True, text=True, timeout=60)


class Serving:
    """A ``wse run`` in the background; ``url`` from its announce line."""

    def __init__(self, *args: str, cwd: Path = ROOT, **env: str) -> None:
        self.proc = subprocess.Popen([*WSE, "run", *args], cwd=cwd, env=env_with(**env), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.url = self.next_url()

    def next_url(self) -> str:
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        line = out.readline()
        assert line.startswith("wse: serving "), f"{line!r} {self.stop_and_stderr()}"
        return line.split()[2]

    def stop_and_stderr(self) -> str:
        terminate(self.proc)
        assert self.proc.stderr is not None and self.proc.stdout is not None
        err = self.proc.stderr.read()
        self.proc.stderr.close()
        self.proc.stdout.close()
        return err


async def greeted(url: str, **kw: Any) -> dict[str, Any]:
    async with connect(url, **kw) as ws:
        first = json.loads(await ws.recv())
        assert isinstance(first, dict)
        return first


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["run", "--port", "70000"], {}, "--port"),
        (["run"], {"WSE_PORT": "eighty"}, "--port"),
        (["run", "--log-level", "loud"], {}, "--log-level"),
        (["run"], {"WSE_LOG_LEVEL": "loud"}, "--log-level"),
        (["run", "--log-format", "xml"], {}, "--log-format"),
        (["run", "--workers", "0"], {}, "--workers"),
        (["run"], {"WSE_WORKERS": "many"}, "--workers"),
        (["run", "--backlog", "0"], {}, "--backlog"),
        (["run", "--ssl-certfile", "/nonexistent/cert.pem", "--ssl-keyfile", "/nonexistent/key.pem"], {}, "--ssl-certfile"),
        (["run", "--ssl-certfile", str(ROOT / "README.md")], {}, "--ssl-keyfile"),
        (["run", "--reload", "--workers", "2"], {}, "--reload"),
        (["run", "--uds", "/tmp/x.sock", "--workers", "2"], {}, "--uds"),
        (["run", "--bind", "nowhere"], {}, "--bind"),
        (["run", "--metrics-bind", "127.0.0.1:http"], {}, "--metrics-bind"),
        (["run", "no.such.module:app"], {}, "TARGET"),
        (["run", "json:dumps"], {}, "TARGET"),
        (["run", "--drain-timeout", "-1"], {}, "--drain-timeout"),
        (["run", "--no-such-option"], {}, "--no-such-option"),
        (["frobnicate"], {}, "frobnicate"),
    ],
)
def test_a_bad_value_is_one_line_and_exit_code_2(args: list[str], env: dict[str, str], needle: str) -> None:
    r = run_wse(*args, **env)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wse: error: ") and needle in lines[0], r.stderr
    assert r.stdout == ""


def test_version() -> None:
    import wse

    r = run_wse("--version")
    assert r.returncode == 0 and r.stdout.startswith(f"wse {wse.__version__} (engine "), r.stdout + r.stderr
    assert run_wse("version").stdout == r.stdout


def test_shell_completion_completes_commands_and_options() -> None:
    r = run_wse("--show-completion", "bash")
    assert r.returncode == 0 and "_WSE_COMPLETE" in r.stdout, r.stdout + r.stderr
    # What bash asks at `wse r<TAB>` and `wse run --ssl<TAB>`:
    for words, cword, want in (("wse r", "1", "run"), ("wse run --ssl", "2", "--ssl-certfile")):
        out = subprocess.run([*WSE], cwd=ROOT, capture_output=True, text=True, timeout=60,
                             env=env_with(_WSE_COMPLETE="complete_bash", COMP_WORDS=words, COMP_CWORD=cword,
                                          _TYPER_COMPLETE_ARGS=words))
        assert want in out.stdout.split(), (words, out.stdout, out.stderr)


def test_options_come_from_the_environment(tmp_path: Path) -> None:
    pid_file = tmp_path / "wse.pid"
    s = Serving("tests.apps.testapp:app", WSE_HOST="127.0.0.1", WSE_PORT="0", WSE_PID_FILE=str(pid_file),
                WSE_METRICS_BIND="127.0.0.1:0", WSE_BACKLOG="7", WSE_LOG_LEVEL="warning")
    try:
        assert s.url.startswith("ws://127.0.0.1:")
        assert pid_file.read_text().strip() == str(s.proc.pid)
        assert asyncio.run(greeted(s.url))["t"] == "server_ready"
        port = int(s.url.rsplit(":", 1)[1].split("/")[0])
        backlog = _listen_backlog(port)
        assert backlog in (7, None), backlog  # None: no `ss` on this machine to read it
    finally:
        err = s.stop_and_stderr()
    assert s.proc.returncode == 0, err
    assert not pid_file.exists(), "the pid file outlived the server"


def _listen_backlog(port: int) -> int | None:
    """The backlog of the listening socket on ``port`` (ss shows it as Send-Q), if ss is here."""
    import shutil

    if shutil.which("ss") is None:
        return None
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout.split()
    return int(out[2]) if len(out) >= 3 else None


def test_the_command_line_wins_over_the_environment() -> None:
    s = Serving("tests.apps.testapp:app", "--port", "0", WSE_PORT="1", WSE_LOG_LEVEL="warning")
    try:
        assert not s.url.endswith(":1/wse")
    finally:
        s.stop_and_stderr()


def test_ssl_certfile_and_keyfile_serve_wss(cert: tuple[str, str]) -> None:  # noqa: F811
    s = Serving("tests.apps.testapp:app", "--port", "0", "--ssl-certfile", cert[0], "--ssl-keyfile", cert[1],
                "--log-level", "warning")
    try:
        assert s.url.startswith("wss://")
        ctx = ssl.create_default_context(cafile=cert[0])
        assert asyncio.run(greeted(s.url, ssl=ctx))["t"] == "server_ready"
    finally:
        s.stop_and_stderr()


def test_uds_serves_on_a_unix_socket(tmp_path: Path) -> None:
    from websockets.asyncio.client import unix_connect

    sock = tmp_path / "wse.sock"
    sock.write_bytes(b"")  # a file that is not a socket is never replaced
    bad = run_wse("run", "tests.apps.testapp:app", "--uds", str(sock))
    assert bad.returncode != 0 and "not a socket" in bad.stderr
    sock.unlink()
    s = Serving("tests.apps.testapp:app", WSE_UDS=str(sock), WSE_LOG_LEVEL="warning")
    try:
        assert s.url == f"ws+unix://{sock}:/wse"

        async def main() -> dict[str, Any]:
            async with unix_connect(str(sock), "ws://localhost/wse") as ws:
                first = json.loads(await ws.recv())
                assert isinstance(first, dict)
                return first

        assert asyncio.run(main())["t"] == "server_ready"
    finally:
        err = s.stop_and_stderr()
    assert s.proc.returncode == 0, err


def test_factory(tmp_path: Path) -> None:
    (tmp_path / "factory_app.py").write_text(
        "from wse import WSEApp, WSEConfig\n"
        "calls = []\n"
        "def make() -> WSEApp:\n"
        "    calls.append(1)\n"
        "    return WSEApp(WSEConfig(port=0))\n"
    )
    bad = run_wse("run", "factory_app:make", PYTHONPATH=str(tmp_path))
    assert bad.returncode == 2 and "--factory" not in bad.stderr and "not a wse.WSEApp" in bad.stderr
    s = Serving("factory_app:make", "--factory", cwd=tmp_path, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    try:
        assert asyncio.run(greeted(s.url))["t"] == "server_ready"
    finally:
        s.stop_and_stderr()


def test_json_log_format_carries_the_engine_access_log() -> None:
    s = Serving("tests.apps.testapp:app", "--port", "0", "--log-format", "json", "--log-level", "debug")
    try:
        host_port = s.url.split("/")[2]
        host, port = host_port.rsplit(":", 1)

        async def bad_path() -> None:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.readline()).startswith(b"HTTP/1.1 404")
            writer.close()

        asyncio.run(bad_path())
        assert s.proc.stderr is not None
        deadline = time.monotonic() + 15
        for line in iter(s.proc.stderr.readline, ""):
            rec = json.loads(line)  # every line is one JSON object
            assert {"ts", "level", "logger", "message", "pid"} <= set(rec)
            if rec["logger"] == "wse.access" and "/elsewhere" in rec["message"]:
                assert rec["level"] == "debug" and "404" in rec["message"]
                break
            assert time.monotonic() < deadline, "no access line"
    finally:
        s.stop_and_stderr()


def test_reload_restarts_on_a_source_change(tmp_path: Path) -> None:
    app_file = tmp_path / "reload_app.py"
    source = (
        "from wse import Connection, WSEApp, WSEConfig\n"
        "app = WSEApp(WSEConfig(port={port}))\n"
        "@app.on_connect\n"
        "def hello(conn: Connection) -> None:\n"
        "    app.send(conn, {{'version': {version}}}, type='hello')\n"
    )
    import socket

    with socket.socket() as sock:  # a fixed port, so that the restarted server is where the first was
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app_file.write_text(source.format(port=port, version=1))
    s = Serving("reload_app:app", "--reload", "--host", "127.0.0.1", cwd=tmp_path,
                PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")

    async def version() -> int:
        async with connect(s.url) as ws:
            while True:
                m = json.loads(await ws.recv())
                if m.get("t") == "hello":
                    return int(m["p"]["version"])

    try:
        assert asyncio.run(version()) == 1
        app_file.write_text(source.format(port=port, version=2))
        os.utime(app_file, (time.time() + 2, time.time() + 2))  # a new mtime even on coarse clocks
        assert s.next_url() == s.url
        assert asyncio.run(version()) == 2
    finally:
        err = s.stop_and_stderr()
    assert s.proc.returncode == 0, err
    assert "reload_app.py changed; restarting" in err
