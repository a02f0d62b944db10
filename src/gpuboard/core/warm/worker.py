"""`WarmWorker`: a Prefect worker type (`gpuboard-warm`) whose flow runs run in warm
runner processes (core/warm/pool.py) instead of a fresh interpreter each.

Registered like Prefect's own worker plugins (prefect-docker, prefect-kubernetes): a
`BaseWorker` subclass in a module named by a `prefect.collections` entry point, so
`prefect worker start --type gpuboard-warm` finds it; `gpuboard worker --executor warm`
(the default) runs it. It uses the process worker's job configuration, so it serves the
same work pools and deployments; what Prefect users rely on holds: the run's states, logs
and heartbeats come from Prefect's own flow engine in the runner; the runner's pid is the
run's `infrastructure_pid`; cancelling a Running run kills its runner only (and a fresh
one takes its place); a runner that dies leaves its run Crashed at once.

Prefect 3.9.1 internals it relies on (re-check on an upgrade): `BaseWorker.run` /
`kill_infrastructure` / `setup` / `teardown` and the result's `status_code` (non-zero:
Crashed), the `_record_work_pool_snapshot` hook (to serve `process` pools without a type
warning), and BaseWorker cancelling only runs that have not started (so Running ones
are this worker's to cancel).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from uuid import UUID

from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelled
from prefect.workers.base import BaseWorker, BaseWorkerResult
from prefect.workers.process import ProcessJobConfiguration, ProcessVariables

from gpuboard.core.prefect.drain_gate import DrainGate
from gpuboard.core.prefect.events import emit_event
from gpuboard.core.prefect.run_health import reschedule_pending
from gpuboard.core.prefect.run_labels import PatientLabels
from gpuboard.core.warm.pool import PoolState, RunnerPool
from gpuboard.core.warm.runner import RunnerLimits
from gpuboard.core.warm.state import EVENT_NAME as EXECUTOR_EVENT
from gpuboard.core.warm.state import RESOURCE_PREFIX, ExecutorState

if TYPE_CHECKING:
    import anyio.abc
    from prefect.client.schemas.objects import FlowRun, WorkPool

WORKER_TYPE = "gpuboard-warm"
CANCEL_POLL_S = 1.0  # how often Running runs of this worker are checked for a cancel
STATE_EVERY_S = 10.0  # the runners' state is published this often when nothing changes
# Modules a runner imports before it is ready: what the first run of process-image would.
# The flow's module (its deployment's entrypoint) imports the pipeline's core modules, and
# Prefect's load of the entrypoint then finds it imported already.
DEFAULT_PRELOAD = ("gpuboard.flows.process_image",)


class WarmWorkerResult(BaseWorkerResult):
    """The end of one flow run on a warm runner (identifier: the runner's pid)."""


class WarmWorker(
    DrainGate,
    PatientLabels,
    BaseWorker[ProcessJobConfiguration, ProcessVariables, WarmWorkerResult],
):
    type = WORKER_TYPE
    job_configuration = ProcessJobConfiguration
    job_configuration_variables = ProcessVariables
    _description = (
        "Runs flow runs in warm runner processes that already imported Prefect and the "
        "flow: no interpreter start per run (gpuboard)."
    )
    _display_name = "gpuboard warm runners"

    def __init__(
        self,
        *args: Any,
        runners: int | None = None,
        preload: Sequence[str] = DEFAULT_PRELOAD,
        limits: RunnerLimits | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.runners = runners or self._limit or 4
        self.preload = tuple(preload)
        self.limits = limits or RunnerLimits()
        self.pool: RunnerPool | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._polling: asyncio.Future[None] | None = None
        self._changed = asyncio.Event()

    # -- life ---------------------------------------------------------------------------

    async def setup(self) -> None:
        await super().setup()
        self._changed = asyncio.Event()
        self.pool = RunnerPool(self.runners, self._runner_command, on_change=self._changed.set)
        await self.pool.start()
        self._watcher = asyncio.create_task(self._watch_cancels(), name="warm-cancels")
        self._publisher = asyncio.create_task(self._publish_state(), name="warm-state")

    async def teardown(self, *exc_info: Any) -> None:
        for task in (self._watcher, self._publisher):
            if task is not None:
                task.cancel()
        try:
            await super().teardown(*exc_info)  # the runs in flight end first
        finally:
            if self.pool is not None:
                await self.pool.stop()

    def _runner_command(self, fd: int) -> list[str]:
        command = [sys.executable, "-m", "gpuboard.warm_runner", "--control-fd", str(fd)]
        command += ["--max-runs", str(self.limits.max_runs)]
        command += ["--max-rss-mb", str(self.limits.max_rss_mb)]
        for module in self.preload:
            command += ["--preload", module]
        return command

    def _record_work_pool_snapshot(self, work_pool: WorkPool) -> None:
        # A `process` pool's job template is this worker's own: serve it as ours rather
        # than have Prefect warn of a type mismatch at every start.
        if work_pool.type == "process":
            work_pool = work_pool.model_copy(update={"type": self.type})
        super()._record_work_pool_snapshot(work_pool)

    # -- runs -----------------------------------------------------------------------------

    async def run(
        self,
        flow_run: FlowRun,
        configuration: ProcessJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> WarmWorkerResult:
        assert self.pool is not None
        assigned: list[int] = []

        def started(pid: int) -> None:
            assigned.append(pid)
            if task_status is not None:
                task_status.started(pid)

        try:
            working_dir = configuration.working_dir
            code, pid = await self.pool.execute(
                str(flow_run.id),
                _run_env(configuration),
                started,
                str(working_dir) if working_dir else None,
            )
        except asyncio.CancelledError:
            if not assigned:
                # Stopping before a runner took it: hand it back for any worker to take.
                with contextlib.suppress(Exception):
                    await asyncio.shield(
                        reschedule_pending(
                            self.client, flow_run.id, "Handed back by a stopping worker"
                        )
                    )
            raise
        self._poll_soon()
        return WarmWorkerResult(identifier=str(pid), status_code=code)

    def _poll_soon(self) -> None:
        """A runner is free: look for the next run now rather than at the next poll (every
        PREFECT_WORKER_QUERY_SECONDS): a warm run takes about a second, so waiting for the
        poll would leave runners idle half the time. One look at a time."""
        if self._polling is not None and not self._polling.done():
            return

        async def poll() -> None:
            with contextlib.suppress(Exception):
                await self.get_and_submit_flow_runs()

        self._polling = asyncio.ensure_future(poll())

    async def kill_infrastructure(
        self,
        infrastructure_pid: str,
        configuration: ProcessJobConfiguration,
        grace_seconds: int = 30,
    ) -> None:
        from prefect.exceptions import InfrastructureNotFound

        pid = int(str(infrastructure_pid).rpartition(":")[2])
        if self.pool is None or not self.pool.kill(pid, cancelled=True):
            raise InfrastructureNotFound(f"no warm runner with pid {pid}")

    def pool_state(self) -> PoolState | None:
        return self.pool.state() if self.pool is not None else None

    async def _publish_state(self) -> None:
        """The runners' state as `gpuboard.executor.state`: on change (at most once a
        second) and every STATE_EVERY_S, for the board."""
        while True:
            state = self.pool_state()
            if state is not None:
                executor = ExecutorState(
                    worker=self.name,
                    executor="warm",
                    updated_at=time.time(),
                    size=state.size,
                    busy=state.busy,
                    idle=state.idle,
                    starting=state.starting,
                    runs=state.runs,
                    recycled=state.recycled,
                    replaced=state.replaced,
                )
                try:
                    await emit_event(
                        self.client,
                        EXECUTOR_EVENT,
                        resource={
                            "prefect.resource.id": f"{RESOURCE_PREFIX}{self.name}",
                            "prefect.resource.name": self.name,
                        },
                        payload=executor.to_payload(),
                        occurred=datetime.now(timezone.utc),
                    )
                except Exception as exc:
                    self._logger.debug("could not publish the runners' state: %s", exc)
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), STATE_EVERY_S)
            await asyncio.sleep(1.0)

    async def _watch_cancels(self) -> None:
        """Cancel Running runs of this worker whose state turned Cancelling: kill their
        runner (only theirs) and mark them Cancelled. One request per poll while busy."""
        while True:
            await asyncio.sleep(CANCEL_POLL_S)
            if self.pool is None:
                continue
            busy = self.pool.busy_runs()
            if not busy:
                continue
            try:
                cancelling = await self.client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        id=FlowRunFilterId(any_=[UUID(run) for run in busy]),
                        state=FlowRunFilterState(
                            type=FlowRunFilterStateType(any_=[StateType.CANCELLING])
                        ),
                    )
                )
            except Exception as exc:
                self._logger.warning("could not look for cancelled runs: %s", exc)
                continue
            for flow_run in cancelling:
                pid = busy.get(str(flow_run.id))
                if pid is None or not self.pool.kill(pid, cancelled=True):
                    continue
                self.get_flow_run_logger(flow_run).info(
                    "Cancelling: its runner %s is stopped; a fresh one replaces it", pid
                )
                with contextlib.suppress(Exception):
                    await self.client.set_flow_run_state(
                        flow_run.id, Cancelled(message="Flow run was cancelled."), force=True
                    )


def _run_env(configuration: ProcessJobConfiguration) -> dict[str, str]:
    """What a run's job configuration adds to the worker's environment (the runner
    already has the worker's)."""
    return {
        key: value
        for key, value in (configuration.env or {}).items()
        if value is not None and os.environ.get(key) != value
    }
