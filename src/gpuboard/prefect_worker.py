"""`python -m gpuboard.prefect_worker`: the Prefect worker that `gpuboard worker` runs,
started the way `prefect worker start` starts one: the warm executor (core/warm/, flow
runs in warm runner processes) or Prefect's process worker with one interpreter per flow
run (core/prefect/single_interpreter.py). Not a command for people.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import Sequence
from typing import Any


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpuboard.prefect_worker")
    parser.add_argument("--pool", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--limit", type=int, required=True)
    parser.add_argument("--executor", choices=("warm", "process"), default="warm")
    parser.add_argument("--runner-max-runs", type=int, default=200)
    parser.add_argument("--runner-max-rss-mb", type=float, default=1024.0)
    args = parser.parse_args(argv)

    from prefect.settings import PREFECT_WORKER_HEARTBEAT_SECONDS, PREFECT_WORKER_PREFETCH_SECONDS
    from prefect.utilities.processutils import setup_signal_handlers_worker
    from prefect.workers.base import BaseWorker

    from gpuboard.core.prefect.single_interpreter import SingleInterpreterProcessWorker
    from gpuboard.core.warm.runner import RunnerLimits
    from gpuboard.core.warm.worker import WarmWorker

    # As `prefect worker start`: the first SIGINT/SIGTERM stops taking runs and lets the
    # running ones finish; a second one kills.
    setup_signal_handlers_worker(os.getpid(), f"the {args.executor} worker", print)
    options: dict[str, Any] = {}
    worker_class: type[BaseWorker[Any, Any, Any]] = SingleInterpreterProcessWorker
    if args.executor == "warm":
        worker_class = WarmWorker
        options["limits"] = RunnerLimits(args.runner_max_runs, args.runner_max_rss_mb)
    worker = worker_class(
        **options,
        work_pool_name=args.pool,
        name=args.name,
        limit=args.limit,
        prefetch_seconds=PREFECT_WORKER_PREFETCH_SECONDS.value(),
        heartbeat_interval_seconds=int(PREFECT_WORKER_HEARTBEAT_SECONDS.value()),
    )
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(worker.start(printer=print))
    print(f"Worker {args.name!r} stopped!", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
