"""Finds one flow run by id or by name, and counts the runs queued ahead of it."""

from __future__ import annotations

from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterName,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound


class RunNotFoundError(LookupError):
    """No flow run has that id or name."""


async def find_run(client: PrefectClient, ref: str) -> FlowRun:
    """The run whose id is `ref`, else the newest whose name is `ref`."""
    ref = ref.strip()
    try:
        run_id = UUID(ref)
    except ValueError:
        run_id = None
    if run_id is not None:
        try:
            return await client.read_flow_run(run_id)
        except ObjectNotFound:
            raise RunNotFoundError(f"no flow run with id {ref}") from None
    runs = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[ref])),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,
        limit=1,
    )
    if not runs:
        raise RunNotFoundError(f"no flow run named {ref!r} (give its name or its id)")
    return runs[0]


async def scheduled_ahead(client: PrefectClient, run: FlowRun) -> int:
    """Scheduled runs of the run's pool due before it: a worker takes them first."""
    if run.work_pool_name is None or run.expected_start_time is None:
        return 0
    return await client.count_flow_runs(
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
            expected_start_time=FlowRunFilterExpectedStartTime(before_=run.expected_start_time),
        ),
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[run.work_pool_name])),
    )
