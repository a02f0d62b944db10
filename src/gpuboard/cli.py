"""The `gpuboard` command: the dashboard, and the subcommands up, worker, submit and status."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence

from gpuboard.core.config import DEFAULT_POOL, EMBEDDED_API_URL

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
DEFAULT_REFRESH = 2.0
MAX_RUNS_PER_WORKER = 1000
MAX_WORKERS = 64

_DESCRIPTION = """\
Terminal dashboard and operator console for Prefect 3 GPU workers.

Without a subcommand, opens the dashboard on the Prefect server at --api-url
(default: PREFECT_API_URL, else the embedded stack's URL).

Options given before a subcommand apply to the dashboard.

Quick start on one machine:
  gpuboard up                     # local server, pool, GCLs, deployment, 2 workers, dashboard
  gpuboard submit --count 20      # from another terminal: 20 runs on sample images
"""

_SUBMIT_EPILOG = """\
Each run is created with an idempotency key made of the deployment, the batch name and
the image id. Submitting the same ids in the same batch again creates only the runs
that are missing and reports the others as already existing: a failed or interrupted
submit can simply be repeated. The batch name defaults to the source template, so to
process the same ids from the same source once more, give a new --batch name.
Exit status: 0 when every id has its run (created now or before), 1 when any failed.
"""


def _positive(upper: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < 1 or (upper is not None and value > upper):
            bound = f"between 1 and {upper}" if upper is not None else "at least 1"
            raise argparse.ArgumentTypeError(f"must be {bound}, not {value}")
        return value

    return parse


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.2 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0.2 and 3600 seconds, not {value}")
    return value


def _add_api_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-url",
        metavar="URL",
        help=f"Prefect API to use (default: PREFECT_API_URL, else {EMBEDDED_API_URL})",
    )


def _add_pool(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pool", default=DEFAULT_POOL, help=f"work pool (default: {DEFAULT_POOL})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpuboard",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_pool(parser)
    parser.add_argument(
        "--refresh",
        type=_seconds,
        default=DEFAULT_REFRESH,
        metavar="SECONDS",
        help=f"dashboard refresh interval (default: {DEFAULT_REFRESH:g})",
    )
    _add_api_url(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.set_defaults(parser=parser)

    up = commands.add_parser(
        "up",
        help="start the embedded stack (server, pool, GCLs, deployment, workers) and watch it",
        description=(
            "Start what is missing of the embedded stack: a local Prefect server on SQLite "
            "(when none answers at --api-url), the work pool, the GCLs gpu:gpu-1..N (an "
            "existing limit is never changed), the process-image deployment and N local "
            "workers (a worker already online is not started again); then open the dashboard. "
            "Ctrl-C or SIGTERM stops exactly what this command started."
        ),
    )
    up.add_argument(
        "--workers",
        type=_positive(MAX_WORKERS),
        default=2,
        help="local workers gpu-1..N (default: 2)",
    )
    up.add_argument(
        "--gpu-slots",
        type=_positive(),
        default=2,
        help="limit of each new GCL gpu:<id>: inferences at once per worker (default: 2)",
    )
    up.add_argument(
        "--runs",
        type=_positive(MAX_RUNS_PER_WORKER),
        default=10,
        help="flow runs at once per worker (default: 10)",
    )
    up.add_argument(
        "--headless",
        action="store_true",
        help="print a status line every --refresh seconds instead of the dashboard",
    )
    up.add_argument(
        "--refresh",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="dashboard or status line refresh interval (default: 5)",
    )
    _add_pool(up)
    _add_api_url(up)
    up.set_defaults(parser=up)

    worker = commands.add_parser(
        "worker",
        help="run one GPU worker (creates its pool and GCL gpu:<id> when missing)",
        description=(
            "Make sure the work pool and the GCL gpu:<id> exist (a new GCL gets --gpu-slots; "
            "an existing limit is kept), then run a Prefect process worker named <id> whose "
            "flow runs take the GPU slot gpu:<id>."
        ),
    )
    worker.add_argument("--id", required=True, help="worker id, e.g. gpu-1")
    worker.add_argument(
        "--runs",
        type=_positive(MAX_RUNS_PER_WORKER),
        default=10,
        help="flow runs at once (default: 10)",
    )
    worker.add_argument(
        "--gpu-slots",
        type=_positive(),
        default=2,
        help="limit of the GCL gpu:<id> if it must be created (default: 2)",
    )
    _add_pool(worker)
    _add_api_url(worker)
    worker.set_defaults(parser=worker)

    submit = commands.add_parser(
        "submit",
        help="create a batch of process-image runs (idempotent: repeat it safely)",
        description="Create --count runs of process-image for ids --start .. --start+count-1.",
        epilog=_SUBMIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    submit.add_argument("--count", required=True, type=_positive(100_000), help="runs to create")
    submit.add_argument(
        "--start", type=_non_negative, default=1, help="first image id (default: 1)"
    )
    submit.add_argument(
        "--source",
        default="sample",
        metavar="TEMPLATE",
        help=(
            "image source: `sample` (synthetic images, offline; the default) or a template "
            "with {image_id}, e.g. file:///data/{image_id}.png or https://host/{image_id}.jpg"
        ),
    )
    submit.add_argument(
        "--batch",
        metavar="NAME",
        help="batch name, part of each run's idempotency key (default: the source template)",
    )
    submit.add_argument(
        "--concurrency",
        type=_positive(16),
        default=1,
        help=(
            "runs created at once (default: 1, fastest on the embedded SQLite server; "
            "raise it for a PostgreSQL server)"
        ),
    )
    _add_api_url(submit)
    submit.set_defaults(parser=submit)

    limit = commands.add_parser(
        "limit",
        help="change a worker's GPU slot limit (GCL gpu:<worker>)",
        description=(
            "Set, raise, lower, pause or resume the GPU slot limit of a worker. 0 pauses: "
            "running inferences finish, waiting ones wait (they do not fail)."
        ),
    )
    limit.add_argument("worker", help="worker id, e.g. gpu-1")
    limit.add_argument(
        "change", help="a whole number 0-10000, +N, -N, `pause` or `resume` (back to the old limit)"
    )
    _add_api_url(limit)
    limit.set_defaults(parser=limit)

    status = commands.add_parser("status", help="print the board's state once and exit")
    status.add_argument("--json", action="store_true", help="as JSON")
    _add_pool(status)
    _add_api_url(status)
    status.set_defaults(parser=status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers: dict[str | None, Callable[[argparse.Namespace], int]] = {
        None: _dashboard,
        "up": _up,
        "worker": _worker,
        "submit": _submit,
        "status": _status,
        "limit": _limit,
    }
    try:
        return handlers[args.command](args)
    except _UsageError as exc:
        args.parser.error(str(exc))  # the subcommand's usage, then exit 2
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (`gpuboard status | head`): not an error worth a message.
        # Point stdout at devnull so the interpreter's final flush does not fail again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as exc:
        # Expected failures (server down, no project, deploy error) end with one clear
        # line; a traceback would bury it.
        from gpuboard.core.config import ConfigError
        from gpuboard.core.prefect.deploy import DeployError
        from gpuboard.core.prefect.runs import DeploymentMissing
        from gpuboard.core.stack import StackError

        known = (ConfigError, DeployError, DeploymentMissing, StackError, OSError)
        if _is_unreachable(exc):
            _err(f"gpuboard: error: cannot reach the Prefect API at {_api_url(args)}: {exc}")
            return EXIT_FAILED
        if isinstance(exc, known) or _is_http_error(exc):
            _err(f"gpuboard: error: {exc}")
            return EXIT_FAILED
        raise
    return EXIT_OK  # pragma: no cover - parser.error does not return


class _UsageError(ValueError):
    pass


def _api_url(args: argparse.Namespace) -> str:
    if args.api_url:
        return str(args.api_url).rstrip("/")
    from gpuboard.core.config import configured_api_url

    return configured_api_url()


def _dashboard(args: argparse.Namespace) -> int:
    try:
        from gpuboard.tui.app import run_dashboard
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("gpuboard"):
            raise
        _err("the dashboard is not available yet: showing `gpuboard status` instead")
        return _status(argparse.Namespace(json=False, pool=args.pool, api_url=args.api_url))
    return run_dashboard(args.pool, args.refresh, _api_url(args))


def _status(args: argparse.Namespace) -> int:
    try:
        from gpuboard.core.status import status_main
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("gpuboard"):
            raise
        _err("`gpuboard status` is not available yet")
        return EXIT_FAILED
    return status_main(args.pool, args.json, _api_url(args))


def _up(args: argparse.Namespace) -> int:
    from gpuboard.core.stack import Stack, StackOptions, print_status_lines, run_stack

    options = StackOptions(
        workers=args.workers,
        gpu_slots=args.gpu_slots,
        runs=args.runs,
        pool=args.pool,
        api_url=_api_url(args),
    )
    refresh: float = args.refresh

    def headless(stack: Stack) -> int:
        return print_status_lines(stack, refresh, log=_say)

    def dashboard(stack: Stack) -> int:
        try:
            from gpuboard.tui.app import run_dashboard
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("gpuboard"):
                raise
            _say("the dashboard is not available yet: printing status lines instead")
            return headless(stack)
        return run_dashboard(options.pool, refresh, options.api_url)

    return run_stack(options, headless if args.headless else dashboard, log=_say)


def _worker(args: argparse.Namespace) -> int:
    from gpuboard.core.worker import (
        WorkerInputError,
        WorkerOptions,
        run_worker,
        validate_worker_id,
    )

    try:
        validate_worker_id(args.id)
    except WorkerInputError as exc:
        raise _UsageError(str(exc)) from None
    options = WorkerOptions(
        worker_id=args.id,
        pool=args.pool,
        runs=args.runs,
        gpu_slots=args.gpu_slots,
        api_url=_api_url(args),
    )
    return run_worker(options, log=_say)


def _submit(args: argparse.Namespace) -> int:
    from gpuboard.core.batch import (
        BatchInputError,
        BatchProgress,
        format_report,
        submit_batch,
        validate_source,
    )
    from gpuboard.core.id_ranges import IdRangeError, ids_from_start

    try:
        image_ids = ids_from_start(args.start, args.count)
        source = validate_source(args.source)
    except (IdRangeError, BatchInputError) as exc:
        raise _UsageError(str(exc)) from None
    api_url = _api_url(args)
    step = max(1, len(image_ids) // 10)

    def progress(p: BatchProgress) -> None:
        if p.done % step == 0 or p.done == p.total or p.last.status == "failed":
            _err(
                f"  {p.done}/{p.total}: {p.created} created, {p.existing} existing, "
                f"{p.failed} failed"
            )

    _err(f"submitting {len(image_ids)} runs to {api_url} ...")
    report = asyncio.run(
        submit_batch(
            image_ids,
            source=source,
            batch=args.batch,
            api_url=api_url,
            concurrency=args.concurrency,
            on_progress=progress,
        )
    )
    print(format_report(report))
    return EXIT_OK if report.ok else EXIT_FAILED


def _limit(args: argparse.Namespace) -> int:
    from gpuboard.core.limit_actions import change_worker_limit
    from gpuboard.core.limits import LimitInputError, parse_limit_change
    from gpuboard.core.prefect.client import async_client

    try:
        change = parse_limit_change(args.change)
    except LimitInputError as exc:
        raise _UsageError(str(exc)) from None

    async def apply() -> str:
        async with async_client(_api_url(args)) as client:
            return (await change_worker_limit(client, args.worker, change)).message

    try:
        _say(asyncio.run(apply()))
    except LimitInputError as exc:
        _err(f"gpuboard: error: {exc}")
        return EXIT_FAILED
    return EXIT_OK


def _is_http_error(exc: Exception) -> bool:
    import httpx

    return isinstance(exc, httpx.HTTPError)


def _is_unreachable(exc: Exception) -> bool:
    import httpx

    return isinstance(exc, httpx.TransportError)


def _say(message: str) -> None:
    print(message, flush=True)


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
