"""One warm runner: a process that has imported Prefect (and, where told, the flow's
module) and runs flow runs one after another with Prefect's own flow engine, as
`python -m prefect.engine` would run one: load the run, load its flow (deployment pull
steps included), `run_flow`. It is told what to run, and answers, over a pipe.

Commands arrive on stdin, one JSON object per line: `{"op": "run", "flow_run_id": ...,
"env": {...}, "cwd": ...}`. A run without a `cwd` (the pool's job template sets no
working directory) runs in the runner's scratch directory, as Prefect's process worker
runs it in a temporary one: a deployment without pull steps copies its files into the
working directory, which must not be the worker's (a checkout).
Answers go to the control file descriptor, one JSON line each:
`{"ready": pid}` once warm, and `{"done": id, "exit": code, "retiring": reason | null}`
after each run: a runner past `max_runs` or `max_rss_mb` says so and exits.
A run that is cancelled or a runner that dies is the worker's to handle: it kills the
process and starts another.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID


@dataclass
class RunnerLimits:
    """When a runner retires itself and is replaced by a fresh one."""

    max_runs: int = 200  # runs per runner
    max_rss_mb: float = 1024.0  # resident memory after a run


@dataclass
class WarmRunner:
    """The loop of one runner process."""

    send: Callable[[dict[str, Any]], None]
    limits: RunnerLimits = field(default_factory=RunnerLimits)
    scratch: str = "."  # where runs without a working directory of their own run
    runs: int = 0
    _flows: dict[str, Any] = field(default_factory=dict)  # deployment id -> loaded flow

    def warm_up(self, preload: list[str]) -> None:
        """Import Prefect's engine and the modules a run would import first."""
        import prefect.flow_engine  # noqa: F401  (the import is the point)

        for module in preload:
            importlib.import_module(module)
        self.send({"ready": os.getpid(), "at": time.time()})

    def serve(self, commands: Any) -> int:
        """Run what arrives on `commands` (lines) until it closes or a limit is reached."""
        for line in commands:
            try:
                command = json.loads(line)
            except ValueError:
                continue
            if command.get("op") != "run":
                continue
            flow_run_id = str(command["flow_run_id"])
            started = time.time()
            os.chdir(command.get("cwd") or self.scratch)
            code = self.run_one(UUID(flow_run_id), command.get("env") or {})
            self.runs += 1
            # Retiring is said with the answer, so the worker never gives this runner
            # another run.
            reason = self._retire_reason()
            self.send(
                {
                    "done": flow_run_id,
                    "exit": code,
                    "started": started,
                    "ended": time.time(),
                    "retiring": reason,
                    "rss_mb": round(rss_mb(), 1),
                }
            )
            if reason is not None:
                return 0
        return 0

    def run_one(self, flow_run_id: UUID, env: dict[str, str]) -> int:
        """Run one flow run to its end; the exit status `python -m prefect.engine` would
        have had (0 also where the engine already reported the run's outcome)."""
        from prefect.engine import handle_engine_signals
        from prefect.flow_engine import flow_run_logger, load_flow_run, run_flow
        from prefect.logging.handlers import APILogWorker

        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        # What Prefect tells a flow-run process about its run (nvml_source maps GPU
        # processes to runs by it; the flow's own code may read it).
        os.environ["PREFECT__FLOW_RUN_ID"] = str(flow_run_id)
        try:
            with handle_engine_signals(flow_run_id):
                flow_run = load_flow_run(flow_run_id)
                logger = flow_run_logger(flow_run=flow_run)
                try:
                    flow = self._flow_of(flow_run)
                except Exception:
                    logger.error(
                        "Unexpected exception encountered when trying to load flow", exc_info=True
                    )
                    raise
                result = run_flow(flow, flow_run=flow_run, error_logger=logger)  # type: ignore[arg-type]
                _drive(flow, result)
            return 0
        except SystemExit as exit_:  # handle_engine_signals ends a run with exit(...)
            return exit_.code if isinstance(exit_.code, int) else 1
        except Exception:
            return 1
        finally:
            # This run's logs reach the server now, not when the process exits.
            APILogWorker.drain_all(timeout=5, at_exit=False)
            forget_stopped_services()
            os.environ.pop("PREFECT__FLOW_RUN_ID", None)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def _flow_of(self, flow_run: Any) -> Any:
        """The run's flow, loaded once per deployment per runner: the first run pays for
        the pull steps and the flow's import, the next ones reuse them."""
        from prefect.flow_engine import load_flow

        key = str(flow_run.deployment_id or flow_run.flow_id)
        if key not in self._flows:
            self._flows[key] = load_flow(flow_run)
        return self._flows[key]

    def _retire_reason(self) -> str | None:
        if self.runs >= self.limits.max_runs:
            return f"{self.runs} runs"
        memory = rss_mb()
        if memory > self.limits.max_rss_mb:
            return f"{memory:.0f} MB resident"
        return None


def forget_stopped_services() -> int:
    """Drop the exit hooks of Prefect's stopped queue services (the log and events
    workers of runs that ended); return how many were dropped.

    Each run starts its own log and events workers, and each registers its drain in
    `threading`'s exit hooks (and the global loop's shutdown calls). Stopped, they stay
    referenced there with their websocket and HTTP clients: 2.7 MB per run, measured
    over 100 runs of one runner. A process that runs one flow run never noticed.
    """
    import threading

    from prefect._internal.concurrency.services import _QueueServiceBase
    from prefect._internal.concurrency.threads import get_global_loop

    def is_stopped_service(call: Any) -> bool:
        # threading wraps each hook in functools.partial; Prefect's Call keeps it in .fn
        function = getattr(call, "func", None) or getattr(call, "fn", None) or call
        owner = getattr(function, "__self__", None)
        return isinstance(owner, _QueueServiceBase) and bool(owner._stopped)

    hooks: list[Any] = getattr(threading, "_threading_atexits", [])
    kept = [hook for hook in hooks if not is_stopped_service(hook)]
    dropped = len(hooks) - len(kept)
    hooks[:] = kept
    loop = get_global_loop()
    shutdown_calls: list[Any] = getattr(loop, "_on_shutdown", [])
    kept = [call for call in shutdown_calls if not is_stopped_service(call)]
    dropped += len(shutdown_calls) - len(kept)
    shutdown_calls[:] = kept
    return dropped


def _drive(flow: Any, result: object) -> None:
    """Async and generator flows: what `python -m prefect.engine` does with the result."""
    from prefect.engine import _drive_run_flow_result

    _drive_run_flow_result(flow, result)


def rss_mb() -> float:
    """This process's resident memory in MB (Linux /proc; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def pipe_sender(fd: int) -> Callable[[dict[str, Any]], None]:
    """JSON lines to the worker on `fd`."""

    def send(message: dict[str, Any]) -> None:
        os.write(fd, (json.dumps(message) + "\n").encode())

    return send


def main(fd: int, preload: list[str], limits: RunnerLimits) -> int:
    from gpuboard.core.run_timings import EXECUTOR_ENV

    os.environ[EXECUTOR_ENV] = "warm"  # what the runs' timing reports say they ran on
    scratch = tempfile.mkdtemp(prefix="gpuboard-runner-")
    try:
        runner = WarmRunner(pipe_sender(fd), limits, scratch=scratch)
        runner.warm_up(preload)
        return runner.serve(sys.stdin)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
