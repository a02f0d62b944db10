"""The `drain`, `undrain` and `why` subcommands of `gpuboard`: their parsers and handlers
(kept out of cli.py, which wires them in with `add_drain_commands`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable

EXIT_OK = 0
EXIT_FAILED = 1

Handler = Callable[[argparse.Namespace], int]
Adder = Callable[[argparse.ArgumentParser], None]


def add_drain_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    worker_id: Callable[[str], str],
    add_pool: Adder,
    add_api_url: Adder,
    add_read_only: Adder,
) -> dict[str, Handler]:
    """Add `drain`, `undrain` and `why` to `commands`; returns their handlers by name."""
    for name, verb, what in (
        (
            "drain",
            "drain a worker: it takes no new flow runs, those it has finish",
            "The worker takes no new flow runs and lets those it has (Pending or Running "
            "on it) finish; the pool's other workers take the queued runs. The board and "
            "`gpuboard status` show it DRAINING while it has runs, then DRAINED. Kept on "
            "the Prefect server: it holds across restarts of the worker.",
        ),
        (
            "undrain",
            "take the drain off a worker: it takes flow runs again",
            "The worker takes flow runs again at its next poll.",
        ),
    ):
        sub = commands.add_parser(name, help=verb, description=what)
        sub.add_argument("worker", type=worker_id, help="worker id, e.g. gpu-1")
        add_pool(sub)
        add_api_url(sub)
        add_read_only(sub)
        sub.set_defaults(parser=sub)
    why = commands.add_parser(
        "why",
        help="say why a flow run waits",
        description=(
            "Why a queued (Scheduled, Late, Pending) run has not started, or why a running "
            "one waits for its GPU slot, from what the Prefect server holds."
        ),
    )
    why.add_argument("run", metavar="RUN", help="the flow run's id or name")
    why.add_argument("--json", action="store_true", help="as JSON")
    add_api_url(why)
    why.set_defaults(parser=why)
    return {"drain": _drain, "undrain": _drain, "why": _why}


def _api_url(args: argparse.Namespace) -> str | None:
    return str(args.api_url).rstrip("/") if args.api_url else None


def _drain(args: argparse.Namespace) -> int:
    from gpuboard.core.drain import UnknownWorkerError, drain_worker, undrain_worker

    action = drain_worker if args.command == "drain" else undrain_worker
    try:
        outcome = asyncio.run(
            action(args.worker, pool=args.pool, api_url=_api_url(args), read_only=args.read_only)
        )
    except UnknownWorkerError as exc:
        print(f"gpuboard: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    print(outcome.message, flush=True)
    return EXIT_OK


def _why(args: argparse.Namespace) -> int:
    from gpuboard.core.why_run import RunNotFound, why_run

    try:
        answer = asyncio.run(why_run(args.run, api_url=_api_url(args)))
    except RunNotFound as exc:
        print(f"gpuboard: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    if args.json:
        json.dump(answer.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(answer.sentence(), flush=True)
    return EXIT_OK
