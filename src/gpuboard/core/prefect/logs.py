"""Reads flow-run logs and finds a flow run by id or name: the Prefect side of run_logs."""

from __future__ import annotations

from datetime import datetime
from typing import cast
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterName,
    LogFilter,
    LogFilterFlowRunId,
    LogFilterLevel,
    LogFilterTimestamp,
)
from prefect.client.schemas.objects import FlowRun, Log
from prefect.client.schemas.sorting import FlowRunSort, LogSort
from prefect.exceptions import ObjectNotFound
from prefect.types import DateTime

# The server's largest page (PREFECT_API_DEFAULT_LIMIT).
LOG_PAGE = 200


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


async def read_run_logs(
    client: PrefectClient,
    flow_run_id: UUID,
    *,
    since: datetime | None,
    min_level: int,
    offset: int = 0,
) -> list[Log]:
    """One page of the run's logs (its task runs' included), oldest first, from `since`
    (inclusive) and at `min_level` or above."""
    return await client.read_logs(
        log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]),
            level=LogFilterLevel(ge_=min_level) if min_level else None,
            timestamp=LogFilterTimestamp(after_=cast(DateTime, since)) if since else None,
        ),
        limit=LOG_PAGE,
        offset=offset,
        sort=LogSort.TIMESTAMP_ASC,
    )


async def task_run_name(client: PrefectClient, task_run_id: UUID) -> str:
    try:
        return (await client.read_task_run(task_run_id)).name
    except ObjectNotFound:
        return str(task_run_id)[:8]
