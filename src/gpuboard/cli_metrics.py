"""The `metrics` subcommand of `gpuboard`: serves what the board knows to Prometheus (kept
out of cli.py, which wires it in with `add_metrics_command`)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

EXIT_OK = 0

Handler = Callable[[argparse.Namespace], int]
Adder = Callable[[argparse.ArgumentParser], None]

_DESCRIPTION = """\
Serve the board's view of a work pool on http://HOST:PORT/metrics in Prometheus's text
format: per worker GPU slots in use / limit / waiting, paused, online; per GPU memory
and utilisation; runs by state; inference and slot-wait histograms from the runs' timing
reports; leaked slots reclaimed. Read in the background every --interval seconds, so a
scrape answers at once; a source that fails shows as gpuboard_source_up{source=...} 0.
"""


def add_metrics_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    add_pool: Adder,
    add_api_url: Adder,
    seconds: Callable[[str], float],
) -> dict[str, Handler]:
    """Add `metrics` to `commands`; returns its handler by name."""
    from gpuboard.core.metrics.exporter import DEFAULT_HOST, DEFAULT_INTERVAL_S, DEFAULT_PORT

    metrics = commands.add_parser(
        "metrics",
        help="serve Prometheus metrics of the board",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    metrics.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"TCP port (default: {DEFAULT_PORT})"
    )
    metrics.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default: {DEFAULT_HOST}; 0.0.0.0 for other machines)",
    )
    metrics.add_argument(
        "--interval",
        type=seconds,
        default=DEFAULT_INTERVAL_S,
        metavar="SECONDS",
        help=f"how often to read the sources (default: {DEFAULT_INTERVAL_S:g})",
    )
    add_pool(metrics)
    add_api_url(metrics)
    metrics.set_defaults(parser=metrics)
    return {"metrics": _metrics}


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"a port is 1-65535, not {port}")
    return port


def _metrics(args: argparse.Namespace) -> int:
    from gpuboard.core.board_source import BoardSource
    from gpuboard.core.config import configured_api_url
    from gpuboard.core.metrics.exporter import MetricsExporter, serve_metrics
    from gpuboard.core.nvml_source import NvmlSource

    api_url = (args.api_url or configured_api_url()).rstrip("/")
    # Host states through the API at each refresh: no websocket to hold open.
    source = BoardSource(args.pool, api_url, nvml=NvmlSource(), follow_hosts=False)
    exporter = MetricsExporter(source, interval_s=args.interval)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    # Bound first: a port in use fails at once (OSError: one line from cli.main), before
    # any read. Until the first refresh, which start() waits for, it serves no metrics.
    server = serve_metrics(exporter, args.host, args.port)
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        exporter.start()
        print(
            f"serving metrics of pool {args.pool!r} ({api_url}) on {server.url}; Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        stop.wait()
    finally:
        server.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_OK
