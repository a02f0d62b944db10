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


class RunNotFound(LookupError):
    """No flow run has that id or name, or the name is ambiguous; the message says which."""


async def find_flow_run(client: PrefectClient, run: str) -> FlowRun:
    """The flow run `run` names: its id, or its name when exactly one run has it."""
    text = run.strip()
    try:
        run_id = UUID(text)
    except ValueError:
        run_id = None
    if run_id is not None:
        try:
            return await client.read_flow_run(run_id)
        except ObjectNotFound:
            raise RunNotFound(f"no flow run with id {run_id} on this server") from None
    found = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[text])),
        sort=FlowRunSort.START_TIME_DESC,
        limit=6,
    )
    if not found:
        raise RunNotFound(f"no flow run named {text!r} (nor with that id) on this server")
    if len(found) > 1:
        ids = ", ".join(str(r.id) for r in found[:5])
        more = "+" if len(found) > 5 else ""
        raise RunNotFound(
            f"{len(found)}{more} flow runs are named {text!r}: give the id (newest first: {ids})"
        )
    return found[0]


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
