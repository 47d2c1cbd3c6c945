"""``wse run module:app``: serve a WSE application. ``wse bench ...``: load-test a WebSocket server."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="WSE: a Rust WebSocket engine for Python.")


def load_app(target: str) -> object:
    """Imports ``module:attribute`` (the current directory is importable, as with uvicorn)."""
    module_name, _, attr = target.partition(":")
    if not module_name:
        raise typer.BadParameter(f"expected module:app, got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise typer.BadParameter(f"cannot import {module_name!r}: {e}") from e
    try:
        return getattr(module, attr or "app")
    except AttributeError:
        raise typer.BadParameter(f"module {module_name!r} has no attribute {attr or 'app'!r}") from None


def parse_bind(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit():
        raise typer.BadParameter(f"--bind expects HOST:PORT, got {bind!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


@app.command()
def run(
    target: Annotated[str, typer.Argument(help="module:attribute of a wse.WSEApp")] = "wse.demo:app",
    host: Annotated[Optional[str], typer.Option(help="Address to listen on (default: the app's config).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default: the app's config; 0 picks a free one).")] = None,
    bind: Annotated[Optional[str], typer.Option(help="HOST:PORT, instead of --host and --port.")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    workers: Annotated[
        Optional[str],
        typer.Option(help="'auto' (one per CPU in the affinity mask) or N: a supervisor and N pinned worker processes."),
    ] = None,
    metrics_bind: Annotated[
        str, typer.Option(help="With --workers: HOST:PORT of the supervisor's /metrics and /publish (port 0 picks).")
    ] = "127.0.0.1:9108",
    publish_token: Annotated[
        Optional[str],
        typer.Option(envvar="WSE_PUBLISH_TOKEN", help="With --workers: bearer token that POST /publish requires (off without one)."),
    ] = None,
    drain_timeout: Annotated[float, typer.Option(help="With --workers: seconds a stopping worker gets to drain.")] = 10.0,
    pin: Annotated[bool, typer.Option(help="With --workers: pin each worker to its own CPU.")] = True,
    steer_cpu: Annotated[
        bool, typer.Option(help="With --workers: hand each connection to the worker on the CPU that received it (BPF).")
    ] = False,
    watchdog_timeout: Annotated[
        float,
        typer.Option(min=0, help="With --workers: kill and restart a worker that answers no ping for this many seconds (hung or stopped); 0 turns it off."),
    ] = 30.0,
    redis: Annotated[
        Optional[str],
        typer.Option(envvar="WSE_REDIS", help="Redis URL (or a Redis Cluster's seed URLs, comma-separated): this host is one of several."),
    ] = None,
) -> None:
    """Serve an application until SIGINT or SIGTERM: in this process, or with --workers in a cluster."""
    from wse import WSEApp

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if bind is not None:
        host, port = parse_bind(bind)
    wse_app = load_app(target)
    if not isinstance(wse_app, WSEApp):
        raise typer.BadParameter(f"{target!r} is a {type(wse_app).__name__}, not a wse.WSEApp")
    if redis:
        wse_app.config = wse_app.config.replace(redis_url=redis)
    if workers is None:
        wse_app.run(host=host, port=port, announce=True)
        return
    from wse.cluster import ClusterConfig, Supervisor

    if workers != "auto" and not (workers.isdigit() and int(workers) >= 1):
        raise typer.BadParameter(f"--workers expects 'auto' or a positive number, got {workers!r}")
    m_host, m_port = parse_bind(metrics_bind)
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
        log_level=log_level,
        steer_cpu=steer_cpu,
        watchdog_timeout=watchdog_timeout,
        redis_url=redis,
    )
    Supervisor(cfg).run()


@app.command()
def top(
    url: Annotated[str, typer.Option(help="The supervisor's metrics address.")] = "http://127.0.0.1:9108/metrics",
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 1.0,
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
    from wse import _runtime

    loadgen = getattr(_runtime, "loadgen", None)
    if loadgen is None:
        typer.echo(
            "wse bench: this build of the engine has no load generator (it was built without the "
            "`loadgen` feature). Reinstall wse with `pip install .` from the repository (the wheel "
            "turns it on), or build the standalone one: `cargo build --release -p wse-loadgen`, "
            "then run target/release/wse-loadgen with the same arguments.",
            err=True,
        )
        raise typer.Exit(2)
    sys.stdout.flush()
    sys.stderr.flush()
    raise typer.Exit(loadgen(["wse bench", *ctx.args]))


@app.command()
def version() -> None:
    """Print the versions of the package and of the Rust engine."""
    import wse
    from wse import _runtime

    typer.echo(f"wse {wse.__version__} (engine {_runtime.__version__})")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
