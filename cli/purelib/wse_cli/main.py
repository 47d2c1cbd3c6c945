"""``wse run module:app``: serve a WSE application. ``wse bench ...``: load-test a WebSocket server.

Options follow uvicorn and granian where the meaning is the same, and every option of ``wse
run`` can come from a ``WSE_<OPTION>`` environment variable (``--log-level`` from
``WSE_LOG_LEVEL``); the command line wins. A bad value is one line on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

# typer up to 0.2x raises click's exceptions; later versions vendor click. Either way these are
# the classes typer's own BadParameter derives from.
_UsageError: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_ClickException: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

app = typer.Typer(
    no_args_is_help=True,
    help="WSE: a Rust WebSocket engine for Python.",
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class LogLevel(str, Enum):
    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"


class LogFormat(str, Enum):
    text = "text"
    json = "json"


def load_app(target: str, factory: bool = False) -> object:
    """Imports ``module:attribute`` (the current directory is importable, as with uvicorn); with
    ``factory``, the attribute is called with no arguments and its result is the app."""
    module_name, _, attr = target.partition(":")
    if not module_name:
        raise typer.BadParameter(f"expected module:app, got {target!r}", param_hint="'TARGET'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise typer.BadParameter(f"cannot import {module_name!r}: {e}", param_hint="'TARGET'") from e
    try:
        obj = getattr(module, attr or "app")
    except AttributeError:
        raise typer.BadParameter(f"module {module_name!r} has no attribute {attr or 'app'!r}",
                                 param_hint="'TARGET'") from None
    if factory:
        if not callable(obj):
            raise typer.BadParameter(f"--factory: {target!r} is not callable", param_hint="'TARGET'")
        obj = obj()
    return obj


def parse_bind(bind: str, option: str = "--bind") -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise typer.BadParameter(f"expected HOST:PORT, got {bind!r}", param_hint=f"'{option}'")
    return host.strip("[]") or "0.0.0.0", int(port)


def _workers(value: Optional[str]) -> Optional[str]:
    if value is None or value == "auto" or (value.isdigit() and int(value) >= 1):
        return value
    raise typer.BadParameter(f"expected 'auto' or a positive number, got {value!r}")


def _version(value: bool) -> None:
    if value:
        import wse
        from wse import _runtime

        typer.echo(f"wse {wse.__version__} (engine {_runtime.__version__}, Python {sys.version.split()[0]})")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the versions and exit.")
    ] = False,
) -> None:
    """WSE: a Rust WebSocket engine for Python."""


_FILE = {"exists": True, "dir_okay": False, "readable": True}


@app.command()
def run(
    target: Annotated[str, typer.Argument(envvar="WSE_APP", help="module:attribute of a wse.WSEApp (env WSE_APP).")] = "wse.demo:app",
    host: Annotated[Optional[str], typer.Option(envvar="WSE_HOST", help="Address to listen on (default: the app's config).")] = None,
    port: Annotated[
        Optional[int], typer.Option(envvar="WSE_PORT", min=0, max=65535, help="Port (default: the app's config; 0 picks a free one).")
    ] = None,
    bind: Annotated[Optional[str], typer.Option(envvar="WSE_BIND", help="HOST:PORT, instead of --host and --port.")] = None,
    uds: Annotated[
        Optional[Path],
        typer.Option(envvar="WSE_UDS", dir_okay=False, help="Listen on this Unix domain socket instead (one process; behind a proxy)."),
    ] = None,
    backlog: Annotated[
        Optional[int], typer.Option(envvar="WSE_BACKLOG", min=1, max=65535, help="Listen backlog (default: the app's config, 1024).")
    ] = None,
    ssl_certfile: Annotated[
        Optional[Path], typer.Option(envvar="WSE_SSL_CERTFILE", **_FILE, help="PEM certificate chain: serve wss:// (with --ssl-keyfile).")
    ] = None,
    ssl_keyfile: Annotated[
        Optional[Path], typer.Option(envvar="WSE_SSL_KEYFILE", **_FILE, help="PEM private key of --ssl-certfile.")
    ] = None,
    factory: Annotated[
        bool, typer.Option(envvar="WSE_FACTORY", help="TARGET is a function that returns the app (called once per process).")
    ] = False,
    log_level: Annotated[LogLevel, typer.Option(envvar="WSE_LOG_LEVEL", case_sensitive=False, help="Logging level.")] = LogLevel.info,
    log_format: Annotated[
        LogFormat, typer.Option(envvar="WSE_LOG_FORMAT", case_sensitive=False, help="text, or json (one object per line).")
    ] = LogFormat.text,
    pid_file: Annotated[
        Optional[Path], typer.Option(envvar="WSE_PID_FILE", dir_okay=False, help="Write the serving process's pid here (removed on exit).")
    ] = None,
    reload: Annotated[
        bool, typer.Option(envvar="WSE_RELOAD", help="Development: restart when a .py file under --reload-dir changes (one process).")
    ] = False,
    reload_dir: Annotated[
        Optional[list[Path]],
        typer.Option(envvar="WSE_RELOAD_DIR", file_okay=False, exists=True, help="Directory to watch with --reload (repeatable; default: the current one)."),
    ] = None,
    workers: Annotated[
        Optional[str],
        typer.Option(envvar="WSE_WORKERS", callback=_workers,
                     help="'auto' (one per CPU in the affinity mask) or N: a supervisor and N pinned worker processes."),
    ] = None,
    metrics_bind: Annotated[
        Optional[str],
        typer.Option(envvar="WSE_METRICS_BIND", help="HOST:PORT of Prometheus /metrics (port 0 picks). With --workers: the "
                     "supervisor's /metrics and /publish, default 127.0.0.1:9108; without: off unless given."),
    ] = None,
    publish_token: Annotated[
        Optional[str],
        typer.Option(envvar="WSE_PUBLISH_TOKEN", help="With --workers: bearer token that POST /publish requires (off without one)."),
    ] = None,
    drain_timeout: Annotated[
        float, typer.Option(envvar="WSE_DRAIN_TIMEOUT", min=0.0, help="With --workers: seconds a stopping worker gets to drain.")
    ] = 10.0,
    pin: Annotated[bool, typer.Option(envvar="WSE_PIN", help="With --workers: pin each worker to its own CPU.")] = True,
    steer_cpu: Annotated[
        bool, typer.Option(envvar="WSE_STEER_CPU", help="With --workers: hand each connection to the worker on the CPU that received it (BPF).")
    ] = False,
    watchdog_timeout: Annotated[
        float,
        typer.Option(envvar="WSE_WATCHDOG_TIMEOUT", min=0,
                     help="With --workers: kill and restart a worker that answers no ping for this many seconds (hung or stopped); 0 turns it off."),
    ] = 30.0,
    allowed_origin: Annotated[
        Optional[list[str]],
        typer.Option(
            envvar="WSE_ALLOWED_ORIGINS",
            help="Allow browser handshakes from this Origin only (repeatable; e.g. https://app.example.com): "
            "others get 403. Replaces the app's allowed_origins. Clients without Origin stay allowed.",
        ),
    ] = None,
    max_connections_per_ip: Annotated[
        Optional[int],
        typer.Option(envvar="WSE_MAX_CONNECTIONS_PER_IP", min=0,
                     help="Open connections from one client address (IPv6: a /64) per worker; more get HTTP 429. "
                     "0: no bound (the default: behind a proxy every client has its address)."),
    ] = None,
    permessage_deflate: Annotated[
        Optional[bool],
        typer.Option(envvar="WSE_PERMESSAGE_DEFLATE", help="Turn permessage-deflate (RFC 7692) on or off (default: the app's config)."),
    ] = None,
    redis: Annotated[
        Optional[str],
        typer.Option(envvar="WSE_REDIS", help="Redis URL (or a Redis Cluster's seed URLs, comma-separated): this host is one of several."),
    ] = None,
) -> None:
    """Serve an application until SIGINT or SIGTERM: in this process, or with --workers in a cluster."""
    from wse.logformat import configure

    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise typer.BadParameter("--ssl-certfile and --ssl-keyfile go together", param_hint="'--ssl-keyfile'")
    if reload and workers is not None:
        raise typer.BadParameter("--reload runs one process: leave out --workers", param_hint="'--reload'")
    if uds is not None and workers is not None:
        raise typer.BadParameter("--uds serves one process: leave out --workers", param_hint="'--uds'")
    if bind is not None:
        host, port = parse_bind(bind)
    m_addr = parse_bind(metrics_bind, "--metrics-bind") if metrics_bind is not None else None
    configure(log_level.value, log_format.value)
    if reload:
        from wse_cli.reload import run_reloading

        raise typer.Exit(run_reloading([str(d) for d in reload_dir or [Path.cwd()]]))
    from wse import WSEApp

    wse_app = load_app(target, factory)
    if not isinstance(wse_app, WSEApp):
        raise typer.BadParameter(f"{target!r} is a {type(wse_app).__name__}, not a wse.WSEApp", param_hint="'TARGET'")
    changes: dict[str, Any] = {}
    if backlog is not None:
        changes["backlog"] = backlog
    if uds is not None:
        changes["uds"] = str(uds)
    if ssl_certfile is not None and ssl_keyfile is not None:
        changes["tls_cert_file"], changes["tls_key_file"] = str(ssl_certfile), str(ssl_keyfile)
    if allowed_origin is not None:
        changes["allowed_origins"] = tuple(allowed_origin)
    if permessage_deflate is not None:
        changes["permessage_deflate"] = permessage_deflate
    if max_connections_per_ip is not None:
        changes["max_connections_per_ip"] = max_connections_per_ip
    if redis:
        changes["redis_url"] = redis
    if changes:
        wse_app.config = wse_app.config.replace(**changes)
    with _pid_file(pid_file):
        if workers is None:
            try:
                wse_app.run(host=host, port=port, announce=True, metrics=m_addr)
            except OSError as e:  # binding the port, the socket or the metrics address
                typer.echo(f"wse: error: cannot serve: {e}", err=True)
                raise typer.Exit(1) from None
            return
        from wse.cluster import ClusterConfig, Supervisor

        m_host, m_port = m_addr or ("127.0.0.1", 9108)
        env = {"WSE_FACTORY": "1" if factory else "", "WSE_LOG_FORMAT": log_format.value}
        if ssl_certfile is not None and ssl_keyfile is not None:
            env |= {"WSE_SSL_CERTFILE": str(ssl_certfile), "WSE_SSL_KEYFILE": str(ssl_keyfile)}
        # Workers load the app themselves: the settings the command line changed go with them.
        if allowed_origin is not None:
            env["WSE_ALLOWED_ORIGINS"] = "\n".join(allowed_origin)
        if permessage_deflate is not None:
            env["WSE_PERMESSAGE_DEFLATE"] = "1" if permessage_deflate else "0"
        if max_connections_per_ip is not None:
            env["WSE_MAX_CONNECTIONS_PER_IP"] = str(max_connections_per_ip)
        cfg = ClusterConfig(
            target=target,
            workers=None if workers == "auto" else int(workers),
            host=host or wse_app.config.host,
            port=wse_app.config.port if port is None else port,
            path=wse_app.config.path,
            backlog=wse_app.config.backlog,
            pin=pin,
            metrics_host=m_host,
            metrics_port=m_port,
            publish_token=publish_token,
            drain_timeout=drain_timeout,
            log_level=log_level.value,
            steer_cpu=steer_cpu,
            watchdog_timeout=watchdog_timeout,
            env=env,
            redis_url=redis,
        )
        Supervisor(cfg).run()


class _pid_file:
    """Writes this process's pid to ``path`` for the duration of a ``with`` block."""

    def __init__(self, path: Optional[Path]) -> None:
        self.path = path

    def __enter__(self) -> None:
        if self.path is not None:
            try:
                self.path.write_text(f"{os.getpid()}\n")
            except OSError as e:
                raise typer.BadParameter(f"cannot write {str(self.path)!r}: {e.strerror}", param_hint="'--pid-file'") from e

    def __exit__(self, *exc: object) -> None:
        if self.path is not None:
            try:
                if self.path.read_text().strip() == str(os.getpid()):
                    self.path.unlink()
            except OSError:
                pass


@app.command()
def top(
    url: Annotated[str, typer.Option(envvar="WSE_TOP_URL", help="The supervisor's metrics address.")] = "http://127.0.0.1:9108/metrics",
    interval: Annotated[float, typer.Option(min=0.05, help="Seconds between refreshes.")] = 1.0,
    once: Annotated[bool, typer.Option(help="Print one table (rates over one interval) and exit.")] = False,
) -> None:
    """A live view of a cluster's workers: connections, message rates, restarts, CPU."""
    from wse_cli.top import run_top

    raise typer.Exit(run_top(url, interval, once))


BENCH_HELP = """Load-test a WebSocket server (yours, or any) with WSE's Rust load generator.

Subcommands: fanout, inbound, latency, handshake, idle. Each prints one JSON report on its last
line of stdout (with the generator's own CPU share; --server-pid PID adds the server's CPU and
the rate per server CPU-second) and exits 0 only when the run was clean. For example:

    wse bench fanout --url ws://127.0.0.1:5006/wse --subscribers 1000 --messages 2000

Options of each: `wse bench fanout --help`. Run it pinned to another core than the server
(`taskset -c 1 wse bench ...`).
"""


@app.command(
    help=BENCH_HELP,
    add_help_option=False,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def bench(ctx: typer.Context) -> None:
    exe = find_loadgen()
    if exe is None:
        typer.echo(
            "wse bench: the load generator is not installed. It is its own package, apart from the "
            "engine: from the repository, `pip install ./bench/loadgen` (it builds `wse-loadgen` with "
            "cargo), or `cargo build --release -p wse-loadgen` and put target/release on PATH.",
            err=True,
        )
        raise typer.Exit(2)
    sys.stdout.flush()
    sys.stderr.flush()
    # argv[0] names the program in the generator's help and usage lines.
    os.execv(exe, ["wse bench", *ctx.args])


def find_loadgen() -> str | None:
    """The `wse-loadgen` executable: beside this Python's (a venv's bin/, activated or not), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "wse-loadgen")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("wse-loadgen")


@app.command()
def version() -> None:
    """Print the versions of the package and of the Rust engine (as --version)."""
    _version(True)


def main(argv: Optional[list[str]] = None) -> None:
    """The ``wse`` command. A usage error is one line on stderr and exit code 2."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="wse", standalone_mode=False)
    except _UsageError as e:
        message = " ".join(e.format_message().split())  # type: ignore[attr-defined]
        ctx = getattr(e, "ctx", None)
        name = getattr(ctx, "info_name", None)
        hint = f" (see 'wse {name} --help')" if name and name != "wse" else ""
        print(f"wse: error: {message}{hint}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(getattr(e, "exit_code", 0))
    except typer.Abort:
        print("wse: aborted", file=sys.stderr)
        sys.exit(1)
    except _ClickException as e:
        print(f"wse: error: {' '.join(e.format_message().split())}", file=sys.stderr)  # type: ignore[attr-defined]
        sys.exit(getattr(e, "exit_code", 1))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
