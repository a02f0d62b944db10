"""Reads flow-run logs: the Prefect side of run_logs."""

from __future__ import annotations

from datetime import datetime
from typing import cast
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    LogFilter,
    LogFilterFlowRunId,
    LogFilterLevel,
    LogFilterTimestamp,
)
from prefect.client.schemas.objects import Log
from prefect.client.schemas.sorting import LogSort
from prefect.exceptions import ObjectNotFound
from prefect.types import DateTime

# The server's largest page (PREFECT_API_DEFAULT_LIMIT).
LOG_PAGE = 200


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
