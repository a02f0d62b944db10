"""The `gpuboard` command: the dashboard, and the subcommands up, worker, submit, cancel,
retry, logs, limit and status (drain, undrain and why: cli_drain.py; metrics:
cli_metrics.py)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from uuid import UUID

from gpuboard.core.config import DEFAULT_POOL, DEPLOYMENT_FULL_NAME, EMBEDDED_API_URL

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
DEFAULT_REFRESH = 2.0
MAX_RUNS_PER_WORKER = 1000
MAX_WORKERS = 64
MAX_BATCH = 100_000
MAX_SUBMIT_CONCURRENCY = 16

_DESCRIPTION = """\
Terminal dashboard and operator console for Prefect 3 GPU workers.

Without a subcommand, opens the dashboard on the Prefect server at --api-url
(default: PREFECT_API_URL, else the embedded stack's URL).

Options given before a subcommand apply to the dashboard; --read-only (or
GPUBOARD_READ_ONLY=1) applies to every command: nothing is changed on the server.

Quick start on one machine:
  gpuboard up                     # local server, pool, GCLs, deployment, 2 workers, dashboard
  gpuboard submit --count 20      # from another terminal: 20 runs on sample images
"""

_SUBMIT_EPILOG = """\
Ids: --count N [--start K] for K..K+N-1, or --ids with ids and ranges such as 1-20,40,45-50.

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


def _add_read_only(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    # Accepted before the subcommand and after it; a subcommand's copy sets nothing unless
    # given (SUPPRESS), so `gpuboard --read-only submit ...` is not undone by the default.
    parser.add_argument(
        "--read-only",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="refuse every change to the server (also GPUBOARD_READ_ONLY=1)",
    )


def _size(text: str) -> int:
    from gpuboard.core.sizing import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _database_url(text: str) -> str:
    from gpuboard.core.database import DatabaseUrlError, normalize_database_url

    try:
        return normalize_database_url(text)
    except DatabaseUrlError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _tag(text: str) -> str:
    tag = text.strip()
    if not tag:
        raise argparse.ArgumentTypeError("a tag may not be empty")
    return tag


def _worker_id(text: str) -> str:
    from gpuboard.core.config import ConfigError, validate_worker_id

    try:
        return validate_worker_id(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run_id(text: str) -> UUID:
    try:
        return UUID(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a flow run id (a UUID such as 0b9c6f5e-...)"
        ) from None


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
    _add_read_only(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.set_defaults(parser=parser)

    up = commands.add_parser(
        "up",
        help="start the embedded stack (server, pool, GCLs, deployment, workers) and watch it",
        description=(
            "Start what is missing of the embedded stack: a local Prefect server on SQLite, "
            "or on --database (when none answers at --api-url), the work pool, the GCLs "
            "gpu:gpu-1..N (an existing limit is never changed), the process-image deployment "
            "and N local workers (a worker already online is not started again); then open "
            "the dashboard. "
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
        default=None,
        help="flow runs at once per worker (default: GPU slots + 1 per 2 cores of each worker)",
    )
    up.add_argument(
        "--executor",
        choices=("warm", "process"),
        default="warm",
        help="how the workers run flow runs: in warm runner processes (default) or a fresh "
        "process each, as Prefect's process worker",
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
    up.add_argument(
        "--database",
        type=_database_url,
        metavar="URL",
        help="run the server this command starts on that database, e.g. "
        "postgresql+asyncpg://USER:PASSWORD@HOST:5432/prefect (default: "
        "PREFECT_API_DATABASE_CONNECTION_URL, else SQLite in $GPUBOARD_HOME/server)",
    )
    _add_pool(up)
    _add_api_url(up)
    _add_read_only(up)
    up.set_defaults(parser=up)

    worker = commands.add_parser(
        "worker",
        help="run one GPU worker (creates its pool and GCL gpu:<id> when missing)",
        description=(
            "Make sure the work pool and the GCL gpu:<id> exist (a new GCL gets --gpu-slots; "
            "an existing limit is kept); start the worker's inference host, the one process "
            "of the worker that loads the model and runs each image under a slot of gpu:<id> "
            "(restarted if it dies); then run a Prefect process worker named <id> whose flow "
            "runs send their images to it."
        ),
    )
    worker.add_argument("--id", required=True, type=_worker_id, help="worker id, e.g. gpu-1")
    worker.add_argument(
        "--runs",
        type=_positive(MAX_RUNS_PER_WORKER),
        default=None,
        help="flow runs at once (default: GPU slots + 1 per 2 cores)",
    )
    worker.add_argument(
        "--gpu-slots",
        type=_positive(),
        default=2,
        help="limit of the GCL gpu:<id> if it must be created (default: 2)",
    )
    worker.add_argument(
        "--gpu-index",
        type=_non_negative,
        default=0,
        metavar="N",
        help="the GPU (NVML/PCI order) its inference host loads the model on (default: 0)",
    )
    worker.add_argument(
        "--inference-threads",
        type=_positive(1024),
        default=None,
        metavar="N",
        help="ONNX Runtime threads of its inference host (default: every core it may use)",
    )
    worker.add_argument(
        "--gpu-memory-limit",
        type=_size,
        default=None,
        metavar="SIZE",
        help="cap on the inference host's ONNX Runtime GPU memory arena, e.g. 8GiB (default: none)",
    )
    worker.add_argument(
        "--cpu",
        action="store_true",
        help="run the model on the CPU even where a GPU with CUDA is usable",
    )
    worker.add_argument(
        "--executor",
        choices=("warm", "process"),
        default="warm",
        help="warm: flow runs in warm runner processes that already imported Prefect and "
        "the flow (default); process: a fresh process per flow run, as Prefect's process "
        "worker",
    )
    worker.add_argument(
        "--runner-max-runs",
        type=_positive(1_000_000),
        default=200,
        metavar="N",
        help="with --executor warm: a runner is replaced by a fresh one after N runs "
        "(default: 200)",
    )
    worker.add_argument(
        "--runner-max-memory",
        type=_size,
        default=1 << 30,
        metavar="SIZE",
        help="with --executor warm: ...or once its resident memory passes SIZE (default: 1GiB)",
    )
    worker.add_argument(
        "--workspace-supervisor",
        action="store_true",
        help="start flow runs the stock Prefect way, through its workspace supervisor (two "
        "interpreters per run) instead of one interpreter per run",
    )
    _add_pool(worker)
    _add_api_url(worker)
    worker.set_defaults(parser=worker)

    submit = commands.add_parser(
        "submit",
        help="create a batch of process-image runs (idempotent: repeat it safely)",
        description=(
            "Create one process-image run per image id: --count runs from --start, "
            "or the ids of --ids."
        ),
        epilog=_SUBMIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    submit.add_argument(
        "--count", type=_positive(MAX_BATCH), help=f"runs to create (1-{MAX_BATCH})"
    )
    submit.add_argument(
        "--start", type=_non_negative, help="first image id with --count (default: 1)"
    )
    submit.add_argument(
        "--ids",
        metavar="IDS",
        help="image ids and ranges, e.g. 1-20,40,45-50 (instead of --count/--start)",
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
        "--tag",
        dest="tags",
        action="append",
        default=[],
        type=_tag,
        metavar="TAG",
        help="a tag for every new run (repeat for more)",
    )
    submit.add_argument(
        "--deployment",
        default=DEPLOYMENT_FULL_NAME,
        metavar="FLOW/NAME",
        help=f"deployment to run (default: {DEPLOYMENT_FULL_NAME})",
    )
    submit.add_argument(
        "--concurrency",
        type=_positive(MAX_SUBMIT_CONCURRENCY),
        default=None,
        help=(
            "requests of up to 100 runs sent at once (default: 1, the fastest on the "
            "embedded SQLite server; a PostgreSQL server may take more)"
        ),
    )
    _add_api_url(submit)
    _add_read_only(submit)
    submit.set_defaults(parser=submit)

    cancel = commands.add_parser(
        "cancel",
        help="cancel one queued run, or every queued run of a pool",
        description=(
            "Cancel runs that have not started: Scheduled, Late or Pending. A run that "
            "started meanwhile is left running and reported."
        ),
    )
    cancel.add_argument(
        "run_id", nargs="?", type=_run_id, metavar="RUN_ID", help="the flow run to cancel"
    )
    cancel.add_argument("--queued", action="store_true", help="cancel every queued run of --pool")
    cancel.add_argument(
        "--yes",
        action="store_true",
        help="do not ask for confirmation (needed with --queued when not on a terminal)",
    )
    _add_pool(cancel)
    _add_api_url(cancel)
    _add_read_only(cancel)
    cancel.set_defaults(parser=cancel)

    retry = commands.add_parser(
        "retry",
        help="run the failed and crashed runs of a batch again",
        description=(
            "Re-queue the Failed and Crashed runs of a batch (the same flow runs, moved to "
            "AwaitingRetry as Prefect's UI Retry does), so a worker runs them again. A run "
            "re-queued already, or no longer failed, is skipped and reported; retrying "
            "twice re-queues once. Exit status: 0 when nothing failed, 1 otherwise or "
            "when the batch has no runs."
        ),
    )
    retry.add_argument("--batch", required=True, metavar="NAME", help="the batch's name")
    retry.add_argument(
        "--state",
        default="failed,crashed",
        metavar="STATES",
        help="which runs: failed, crashed or failed,crashed (default)",
    )
    _add_api_url(retry)
    _add_read_only(retry)
    retry.set_defaults(parser=retry)

    logs = commands.add_parser(
        "logs",
        help="print a flow run's Prefect logs, and follow them while it runs",
        description=(
            "Print the logs of a flow run and of its task runs, oldest first. With "
            "--follow, new lines are printed as they come until the run is final."
        ),
    )
    logs.add_argument("run", metavar="RUN", help="flow run id, or its name if unique")
    logs.add_argument("-f", "--follow", action="store_true", help="follow while the run runs")
    logs.add_argument(
        "--level",
        default="debug",
        metavar="LEVEL",
        help="lowest level shown: debug (default), info, warning, error, critical",
    )
    logs.add_argument("--grep", metavar="TEXT", help="only lines containing TEXT (any case)")
    _add_api_url(logs)
    logs.set_defaults(parser=logs)

    limit = commands.add_parser(
        "limit",
        help="change a worker's GPU slot limit (GCL gpu:<worker>)",
        description=(
            "Set, raise, lower, pause or resume the GPU slot limit of a worker. 0 pauses: "
            "running inferences finish, waiting ones wait (they do not fail)."
        ),
    )
    limit.add_argument("worker", type=_worker_id, help="worker id, e.g. gpu-1")
    limit.add_argument(
        "change", help="a whole number 0-10000, +N, -N, `pause` or `resume` (back to the old limit)"
    )
    _add_api_url(limit)
    _add_read_only(limit)
    limit.set_defaults(parser=limit)

    status = commands.add_parser("status", help="print the board's state once and exit")
    status.add_argument("--json", action="store_true", help="as JSON")
    _add_pool(status)
    _add_api_url(status)
    status.set_defaults(parser=status)

    from gpuboard.cli_drain import add_drain_commands
    from gpuboard.cli_metrics import add_metrics_command

    parser.set_defaults(
        extra_handlers={
            **add_drain_commands(
                commands,
                worker_id=_worker_id,
                add_pool=_add_pool,
                add_api_url=_add_api_url,
                add_read_only=_add_read_only,
            ),
            **add_metrics_command(
                commands, add_pool=_add_pool, add_api_url=_add_api_url, seconds=_seconds
            ),
        }
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from gpuboard.core.config import ConfigError, read_only_from_env

    try:
        args.read_only = bool(getattr(args, "read_only", False)) or read_only_from_env()
    except ConfigError as exc:
        args.parser.error(str(exc))
    handlers: dict[str | None, Callable[[argparse.Namespace], int]] = {
        None: _dashboard,
        "up": _up,
        "worker": _worker,
        "submit": _submit,
        "cancel": _cancel,
        "retry": _retry,
        "logs": _logs,
        "status": _status,
        "limit": _limit,
        **getattr(args, "extra_handlers", {}),
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
        from gpuboard.core.limit_actions import ReadOnlyError
        from gpuboard.core.prefect.deploy import DeployError
        from gpuboard.core.prefect.runs import DeploymentMissing
        from gpuboard.core.stack import StackError

        if isinstance(exc, ReadOnlyError):
            # Nothing was sent: the core refuses before its first request.
            _err(f"gpuboard: read-only: refused: {exc}")
            return EXIT_FAILED
        known = (ConfigError, DeployError, DeploymentMissing, StackError, OSError)
        if _is_unreachable(exc):
            _err(f"gpuboard: error: cannot reach the Prefect API at {_api_url(args)}: {exc}")
            return EXIT_FAILED
        from gpuboard.core.prefect.auth_errors import unauthorized_message

        unauthorized = unauthorized_message(exc)
        if unauthorized is not None:
            _err(f"gpuboard: {unauthorized}")
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
    return run_dashboard(args.pool, args.refresh, _api_url(args), read_only=args.read_only)


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
    from gpuboard.core.database import database_url_from_env
    from gpuboard.core.sizing import default_runs_per_worker
    from gpuboard.core.stack import Stack, StackOptions, print_status_lines, run_stack

    options = StackOptions(
        database_url=args.database or database_url_from_env(),
        workers=args.workers,
        gpu_slots=args.gpu_slots,
        runs=args.runs or default_runs_per_worker(args.gpu_slots, args.workers),
        pool=args.pool,
        api_url=_api_url(args),
        executor=args.executor,
    )
    refresh: float = args.refresh
    read_only: bool = args.read_only

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
        return run_dashboard(options.pool, refresh, options.api_url, read_only=read_only)

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
    from gpuboard.core.inference import ModelSettings
    from gpuboard.core.sizing import default_runs_per_worker, inference_threads_per_worker

    options = WorkerOptions(
        worker_id=args.id,
        pool=args.pool,
        runs=args.runs or default_runs_per_worker(args.gpu_slots),
        gpu_slots=args.gpu_slots,
        api_url=_api_url(args),
        model=ModelSettings(
            use_cuda=False if args.cpu else None,
            gpu_index=args.gpu_index,
            threads=args.inference_threads or inference_threads_per_worker(),
            gpu_memory_limit=args.gpu_memory_limit,
        ),
        single_interpreter=not args.workspace_supervisor,
        executor="process" if args.workspace_supervisor else args.executor,
        runner_max_runs=args.runner_max_runs,
        runner_max_rss_mb=args.runner_max_memory / 2**20,
    )
    return run_worker(options, log=_say)


def _submit(args: argparse.Namespace) -> int:
    from gpuboard.cli_progress import ProgressLine
    from gpuboard.core.batch import (
        BatchInputError,
        BatchProgress,
        format_report,
        submit_batch,
        validate_source,
        validate_tags,
    )
    from gpuboard.core.id_ranges import IdRangeError, ids_from_start, parse_id_ranges

    try:
        image_ids = _submit_ids(args, parse_id_ranges, ids_from_start)
        source = validate_source(args.source)
        tags = validate_tags(args.tags)
    except (IdRangeError, BatchInputError) as exc:
        raise _UsageError(str(exc)) from None
    api_url = _api_url(args)
    line = ProgressLine()

    def progress(p: BatchProgress) -> None:
        detail = f"created {p.created}, existing {p.existing}, failed {p.failed}"
        line.update(p.done, p.total, detail)

    options = {} if args.concurrency is None else {"concurrency": args.concurrency}
    if not args.read_only:
        _err(f"submitting {len(image_ids)} runs to {api_url} ...")
    try:
        report = asyncio.run(
            submit_batch(
                image_ids,
                source=source,
                batch=args.batch,
                api_url=api_url,
                on_progress=progress,
                tags=tags,
                deployment=args.deployment,
                read_only=args.read_only,
                **options,
            )
        )
    finally:
        line.close()
    print(format_report(report))
    return EXIT_OK if report.ok else EXIT_FAILED


def _submit_ids(
    args: argparse.Namespace,
    parse_id_ranges: Callable[[str], list[int]],
    ids_from_start: Callable[[int, int], list[int]],
) -> list[int]:
    """The ids asked for: --ids, or --count from --start; exactly one of the two ways."""
    if args.ids is not None:
        if args.count is not None or args.start is not None:
            raise _UsageError("give either --ids or --count/--start, not both")
        return parse_id_ranges(args.ids)
    if args.count is None:
        raise _UsageError("say which ids: --count N [--start K], or --ids 1-20,40")
    return ids_from_start(1 if args.start is None else args.start, args.count)


def _cancel(args: argparse.Namespace) -> int:
    from gpuboard.cli_progress import ProgressLine
    from gpuboard.core.cancel import cancel_queued, cancel_run, cancel_runs, queued_run_ids

    if (args.run_id is None) == (not args.queued):
        raise _UsageError("give a RUN_ID, or --queued to cancel every queued run of --pool")
    api_url = _api_url(args)
    if args.run_id is not None:
        outcome = asyncio.run(cancel_run(args.run_id, api_url=api_url, read_only=args.read_only))
        name = f"{outcome.name} ({outcome.flow_run_id})" if outcome.name else str(args.run_id)
        if outcome.status == "cancelled":
            _say(f"cancelled {name}")
            return EXIT_OK
        _say(f"not cancelled: {name}: {outcome.reason}")
        return EXIT_FAILED
    if args.read_only:  # refused (and audited) before the queued runs are even read
        asyncio.run(cancel_queued(args.pool, api_url=api_url, read_only=True))
    run_ids = asyncio.run(queued_run_ids(args.pool, api_url=api_url))
    if not run_ids:
        _say(f"no queued runs in pool {args.pool}")
        return EXIT_OK
    question = f"cancel {len(run_ids)} queued run(s) of pool {args.pool}?"
    if not args.yes:
        if not (sys.stdin.isatty() and sys.stderr.isatty()):
            _err(f"gpuboard: not cancelled: {question} add --yes to confirm without a terminal")
            return EXIT_USAGE
        answer = input(f"{question} [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            _say("nothing cancelled")
            return EXIT_OK
    line = ProgressLine()
    try:
        outcomes = asyncio.run(
            cancel_runs(
                run_ids,
                api_url=api_url,
                target=f"pool {args.pool}",
                on_progress=lambda done, total: line.update(done, total, "cancelled"),
            )
        )
    finally:
        line.close()
    cancelled = [o for o in outcomes if o.status == "cancelled"]
    started = [o for o in outcomes if o.status == "not-queued"]
    failed = [o for o in outcomes if o.status == "failed"]
    _say(f"cancelled:      {len(cancelled)} of {len(run_ids)} queued runs of pool {args.pool}")
    _say(f"started meanwhile (left running): {len(started)}")
    _say(f"failed:         {len(failed)}")
    for outcome in failed:
        _say(f"  {outcome.name or outcome.flow_run_id}: {outcome.reason}")
    return EXIT_OK if not failed else EXIT_FAILED


def _retry(args: argparse.Namespace) -> int:
    from gpuboard.core.retry import (
        RetryInputError,
        format_retry_report,
        parse_retry_states,
        retry_batch,
    )

    try:
        states = parse_retry_states(args.state)
        if not args.batch.strip():
            raise RetryInputError("--batch may not be empty")
    except RetryInputError as exc:
        raise _UsageError(str(exc)) from None
    report = asyncio.run(
        retry_batch(args.batch, states=states, api_url=_api_url(args), read_only=args.read_only)
    )
    _say(format_retry_report(report))
    return EXIT_OK if report.ok and report.total_runs else EXIT_FAILED


def _logs(args: argparse.Namespace) -> int:
    from gpuboard.core.prefect.client import async_client
    from gpuboard.core.run_logs import LogInputError, RunNotFound, find_flow_run, follow_logs
    from gpuboard.core.run_logs import parse_level as parse_log_level

    try:
        min_level = parse_log_level(args.level)
    except LogInputError as exc:
        raise _UsageError(str(exc)) from None

    async def show() -> int:
        async with async_client(_api_url(args)) as client:
            try:
                run = await find_flow_run(client, args.run)
            except RunNotFound as exc:
                _err(f"gpuboard: error: {exc}")
                return EXIT_FAILED
            async for lines in follow_logs(client, run.id, min_level=min_level, follow=args.follow):
                for line in lines:
                    if not args.grep or line.matches(args.grep):
                        _say(line.format())
            return EXIT_OK

    return asyncio.run(show())


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
            outcome = await change_worker_limit(
                client, args.worker, change, read_only=args.read_only
            )
            return outcome.message

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
