"""Reads the Prefect side of one dashboard refresh with a fixed number of API calls.

Whatever the number of runs in the database, one read is 12 requests: the pool's workers;
then, concurrently, the `gpu:*` GCLs, four counts of queued and running runs, two capped
run lists (running, next queued), the pool and its queues (paused or not) and gpuboard's
worker records (drain flags, flow-run limits); then one capped task-run list for the
running runs' current steps (skipped when none runs). What finished in the last hour
(three counts and the latest failures: 4 more requests, the count of completed runs the
costliest one with many runs) changes slowly and is read by `read_finished`, which
callers run less often.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateName,
    FlowRunFilterStateType,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
    TaskRunFilterState,
    TaskRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType, TaskRun, Worker, WorkerStatus
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.types import DateTime

from gpuboard.core.batch import BATCH_TAG_PREFIX
from gpuboard.core.config import gcl_name, worker_of_gcl
from gpuboard.core.models import GclState, RunCounts, RunView, Step, WorkerView
from gpuboard.core.prefect.drain_flags import WorkerRecords, read_worker_records
from gpuboard.core.prefect.gcl import read_gpu_gcls
from gpuboard.core.prefect.pool_facts import PoolPause, read_pool_pause

WORKER_LABEL = "prefect.worker.name"  # set by a worker on each flow run it executes
RUNNING_CAP = 200  # running runs read per refresh (the API's page maximum)
LIST_CAP = 10  # rows of the next-queued and latest-failures lists
FINISHED_WINDOW = timedelta(hours=1)
# The server marks a worker offline after this many missed heartbeats; the board says
# so as soon as the heartbeat is that late instead of waiting for the server's sweep.
MISSED_HEARTBEATS_OFFLINE = 3

# The tasks of gpuboard/flows/process_image.py by step, matched as prefixes of task-run names
# (`run_ml_model-3fa`). "gpu": the GPU step, whether it holds its slot or waits for one.
_STEP_OF_TASK: tuple[tuple[str, Step], ...] = (
    ("download_image", "download"),
    ("load_model", "load"),
    ("run_ml_model", "gpu"),
    ("save_results", "save"),
)


@dataclass(frozen=True)
class FinishedRuns:
    """The pool's runs that finished within FINISHED_WINDOW: counts and the latest failures."""

    completed: int
    failed: int  # Failed or Crashed
    crashed: int
    failures: tuple[RunView, ...]


@dataclass(frozen=True)
class PrefectRead:
    """The Prefect half of a snapshot; GPU data and advice are joined in by the board source."""

    workers: tuple[WorkerView, ...]
    runs: RunCounts
    running: tuple[RunView, ...]
    next_queued: tuple[RunView, ...]
    finished: FinishedRuns
    # (worker, pid) -> (flow run id, flow run name), from the running runs' infrastructure
    # PIDs: maps GPU processes to runs where the worker machine could not tell.
    pid_runs: dict[tuple[str, int], tuple[str, str]] = field(default_factory=dict)
    pause: PoolPause = field(default_factory=PoolPause)


async def read_prefect(
    client: PrefectClient, pool: str, now: datetime, finished: FinishedRuns | None = None
) -> PrefectRead:
    """One refresh of everything the board shows from Prefect for work pool `pool`.

    `finished` is the last `read_finished` result to show again; None reads it afresh.
    Raises on any failed request: the caller turns it into an error value and keeps the
    last good read, because a half-read would show numbers that do not add up.
    """
    pool_filter = WorkPoolFilter(name=WorkPoolFilterName(any_=[pool]))
    # First alone: it says whether the pool exists, and on a fresh client it fetches the
    # CSRF token once instead of once per concurrent request.
    workers = await _read_workers(client, pool)
    gcls, counts, running, queued, finished, pause, records = await _gather(
        read_gpu_gcls(client),
        _read_queue_counts(client, pool_filter, now),
        client.read_flow_runs(
            flow_run_filter=_state_filter([StateType.RUNNING]),
            work_pool_filter=pool_filter,
            sort=FlowRunSort.START_TIME_ASC,
            limit=RUNNING_CAP,
        ),
        client.read_flow_runs(
            flow_run_filter=_state_filter([StateType.SCHEDULED, StateType.PENDING], due=now),
            work_pool_filter=pool_filter,
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            limit=LIST_CAP,
        ),
        _known(finished) if finished is not None else read_finished(client, pool, now),
        read_pool_pause(client, pool),
        read_worker_records(client),
    )
    tasks = await _read_running_tasks(client, [run.id for run in running])
    steps = _current_steps(tasks)
    views = _worker_views(
        workers, gcls, running, steps, capped=len(running) >= RUNNING_CAP, now=now
    )
    views = _with_records(views, records, queued)
    by_worker = {view.name: view for view in views}
    running_views = tuple(
        run_view(
            run,
            step=_display_step(_step(steps, run), by_worker.get(_worker(run) or "")),
            step_since=_step_since(steps, run),
        )
        for run in running
    )
    scheduled, late, pending, running_count = counts
    return PrefectRead(
        workers=tuple(views),
        runs=RunCounts(
            scheduled=scheduled,
            late=late,
            pending=pending,
            running=running_count,
            completed=finished.completed,
            failed=finished.failed,
            crashed=finished.crashed,
            window_seconds=int(FINISHED_WINDOW.total_seconds()),
        ),
        running=running_views,
        next_queued=tuple(run_view(run) for run in queued),
        finished=finished,
        pid_runs=_pid_runs(running),
        pause=pause,
    )


async def read_finished(client: PrefectClient, pool: str, now: datetime) -> FinishedRuns:
    """The pool's runs finished within FINISHED_WINDOW: three counts and the latest failures."""
    pool_filter = WorkPoolFilter(name=WorkPoolFilterName(any_=[pool]))
    ended = FlowRunFilterEndTime(after_=_at(now - FINISHED_WINDOW))

    def count(*types: StateType) -> Awaitable[int]:
        return client.count_flow_runs(
            flow_run_filter=FlowRunFilter(state=_typed(*types), end_time=ended),
            work_pool_filter=pool_filter,
        )

    completed, failed, crashed, failures = await _gather(
        count(StateType.COMPLETED),
        count(StateType.FAILED, StateType.CRASHED),
        count(StateType.CRASHED),
        client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=_typed(StateType.FAILED, StateType.CRASHED), end_time=ended
            ),
            work_pool_filter=pool_filter,
            sort=FlowRunSort.END_TIME_DESC,
            limit=LIST_CAP,
        ),
    )
    return FinishedRuns(completed, failed, crashed, tuple(run_view(run) for run in failures))


async def _known(finished: FinishedRuns) -> FinishedRuns:
    return finished


async def _gather(*calls: Awaitable[Any]) -> list[Any]:
    """Run `calls` concurrently; raise the first failure only after all have settled."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return list(results)


async def _read_workers(client: PrefectClient, pool: str) -> list[Worker]:
    try:
        return await client.read_workers_for_work_pool(pool, limit=RUNNING_CAP)
    except ObjectNotFound as exc:
        raise WorkPoolMissing(pool) from exc
    except PrefectHTTPStatusError as exc:
        if exc.response.status_code == 404:  # this endpoint answers a plain 404
            raise WorkPoolMissing(pool) from exc
        raise


class WorkPoolMissing(LookupError):
    """The work pool the board watches does not exist on this server."""

    def __init__(self, pool: str) -> None:
        super().__init__(
            f"work pool {pool!r} does not exist on this server: start the stack with "
            f"`gpuboard up` or create it with `prefect work-pool create {pool} --type process`"
        )


def _state_filter(types: list[StateType], due: datetime | None = None) -> FlowRunFilter:
    return FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=types)),
        # Runs scheduled for later (a deployment's schedule creates them ahead) are not
        # queued work yet.
        expected_start_time=FlowRunFilterExpectedStartTime(before_=_at(due)) if due else None,
    )


def _typed(
    *types: StateType, names: list[str] | None = None, exclude: list[str] | None = None
) -> FlowRunFilterState:
    return FlowRunFilterState(
        type=FlowRunFilterStateType(any_=list(types)),
        name=FlowRunFilterStateName(any_=names, not_any_=exclude) if names or exclude else None,
    )


async def _read_queue_counts(
    client: PrefectClient, pool_filter: WorkPoolFilter, now: datetime
) -> tuple[int, int, int, int]:
    """(scheduled and due, late, pending, running): four indexed `/flow_runs/count` calls."""

    def count(flow_run_filter: FlowRunFilter) -> Awaitable[int]:
        return client.count_flow_runs(flow_run_filter=flow_run_filter, work_pool_filter=pool_filter)

    scheduled, late, pending, running = await _gather(
        count(
            FlowRunFilter(
                state=_typed(StateType.SCHEDULED, exclude=["Late"]),
                expected_start_time=FlowRunFilterExpectedStartTime(before_=_at(now)),
            )
        ),
        count(FlowRunFilter(state=_typed(StateType.SCHEDULED, names=["Late"]))),
        count(FlowRunFilter(state=_typed(StateType.PENDING))),
        count(FlowRunFilter(state=_typed(StateType.RUNNING))),
    )
    return scheduled, late, pending, running


async def _read_running_tasks(client: PrefectClient, flow_run_ids: list[Any]) -> list[TaskRun]:
    if not flow_run_ids:
        return []
    return await client.read_task_runs(
        task_run_filter=TaskRunFilter(
            state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.RUNNING])),
            flow_run_id=TaskRunFilterFlowRunId(any_=flow_run_ids),
        ),
        limit=RUNNING_CAP,
    )


def step_of_task(task_name: str) -> Step | None:
    """The pipeline step a task run belongs to, from its name (`run_ml_model-3fa` → gpu)."""
    lowered = task_name.lower()
    return next((step for prefix, step in _STEP_OF_TASK if lowered.startswith(prefix)), None)


def _current_steps(tasks: Iterable[TaskRun]) -> dict[str, tuple[float, Step]]:
    """flow run id -> (start, step) of its most recently started running task."""
    latest: dict[str, tuple[float, Step]] = {}
    for task in tasks:
        step = step_of_task(task.name)
        if step is None or task.flow_run_id is None:
            continue
        started = task.start_time.timestamp() if task.start_time else 0.0
        key = str(task.flow_run_id)
        if key not in latest or started >= latest[key][0]:
            latest[key] = (started, step)
    return latest


def _step(steps: dict[str, tuple[float, Step]], run: FlowRun) -> Step | None:
    found = steps.get(str(run.id))
    return None if found is None else found[1]


def _step_since(steps: dict[str, tuple[float, Step]], run: FlowRun) -> float | None:
    found = steps.get(str(run.id))
    return None if found is None or not found[0] else found[0]


def _with_records(
    views: list[WorkerView], records: WorkerRecords, queued: list[FlowRun]
) -> list[WorkerView]:
    """Each worker's drain flag and published flow-run limit, and its Pending runs among
    the queued runs read."""
    pending = Counter(
        _worker(run) for run in queued if run.state_type == StateType.PENDING and _worker(run)
    )
    return [
        dataclasses.replace(
            view,
            drained=view.name in records.drained_since,
            run_limit=records.run_limits.get(view.name),
            pending=pending.get(view.name, 0),
        )
        for view in views
    ]


def _worker(run: FlowRun) -> str | None:
    value = (run.labels or {}).get(WORKER_LABEL)
    return str(value) if value else None


def _worker_views(
    workers: list[Worker],
    gcls: list[GclState],
    running: list[FlowRun],
    steps: dict[str, tuple[float, Step]],
    *,
    capped: bool,
    now: datetime,
) -> list[WorkerView]:
    gcl_by_name = {gcl.name: gcl for gcl in gcls}
    per_worker: dict[str, Counter[str]] = {}
    for run in running:
        name = _worker(run)
        if name is None:
            continue
        tally = per_worker.setdefault(name, Counter())
        tally["running"] += 1
        step = _step(steps, run)
        if step is not None:
            tally[step] += 1

    def view(name: str, *, in_pool: bool, online: bool, age: float | None) -> WorkerView:
        gcl = gcl_by_name.get(gcl_name(name))
        tally = per_worker.get(name, Counter())
        in_gpu_step = tally["gpu"]
        # A task waiting for its slot is Running like one holding it; the GCL's active
        # slots say how many hold one, the rest of the GPU-step tasks wait.
        holding = (
            min(in_gpu_step, gcl.active_slots) if gcl is not None and gcl.active else in_gpu_step
        )
        return WorkerView(
            name=name,
            in_pool=in_pool,
            online=online,
            heartbeat_age=age,
            gcl=gcl,
            running=tally["running"],
            waiting=in_gpu_step - holding,
            downloading=tally["download"],
            loading=tally["load"],
            inferring=holding,
            saving=tally["save"],
            counts_capped=capped,
        )

    views = []
    for worker in workers:
        age = (
            (now - worker.last_heartbeat_time).total_seconds()
            if worker.last_heartbeat_time
            else None
        )
        views.append(view(worker.name, in_pool=True, online=_online(worker, age), age=age))
    known = {worker.name for worker in workers}
    for gcl in gcls:
        orphan = worker_of_gcl(gcl.name)
        if orphan is not None and orphan not in known:
            views.append(view(orphan, in_pool=False, online=False, age=None))
    # Online workers first, then by name: the ones doing work stay at the top.
    return sorted(views, key=lambda v: (not v.in_pool, not v.online, v.name))


def _online(worker: Worker, age: float | None) -> bool:
    if worker.status != WorkerStatus.ONLINE or age is None:
        return False
    interval = worker.heartbeat_interval_seconds
    return not interval or age <= MISSED_HEARTBEATS_OFFLINE * interval


def _display_step(step: Step | None, worker: WorkerView | None) -> Step | None:
    """Say `infer` or `waiting` for a run in the GPU step where its worker's counts decide it."""
    if step != "gpu" or worker is None:
        return step
    if worker.waiting == 0:
        return "infer"
    if worker.inferring == 0:
        return "waiting"
    return "gpu"


def _timestamp(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def run_view(run: FlowRun, step: Step | None = None, step_since: float | None = None) -> RunView:
    """The board's view of one flow run (its step, and since when, where the caller knows it)."""
    state = run.state
    image_id = (run.parameters or {}).get("image_id")
    return RunView(
        id=str(run.id),
        name=run.name,
        state_type=state.type.value if state else (run.state_type.value if run.state_type else "?"),
        state_name=(state.name if state else run.state_name) or "?",
        worker=_worker(run),
        step=step,
        image_id=None if image_id is None else str(image_id),
        expected_start_time=_timestamp(run.expected_start_time),
        start_time=_timestamp(run.start_time),
        end_time=_timestamp(run.end_time),
        message=(state.message or None) if state else None,
        work_queue=run.work_queue_name,
        step_since=step_since,
        batch=batch_of(run.tags or ()),
    )


def batch_of(tags: Iterable[str]) -> str | None:
    """The batch token of a run's `batch:<token>` tag (core/batch.py), or None."""
    return next(
        (tag.removeprefix(BATCH_TAG_PREFIX) for tag in tags if tag.startswith(BATCH_TAG_PREFIX)),
        None,
    )


def _pid_runs(running: list[FlowRun]) -> dict[tuple[str, int], tuple[str, str]]:
    mapping: dict[tuple[str, int], tuple[str, str]] = {}
    for run in running:
        worker, pid = _worker(run), (run.infrastructure_pid or "").rpartition(":")[2]
        if worker and pid.isdigit():
            mapping[(worker, int(pid))] = (str(run.id), run.name)
    return mapping


def _at(moment: datetime) -> DateTime:
    # Prefect's filters are typed with its own DateTime; pydantic takes a stdlib datetime.
    return cast(DateTime, moment)
