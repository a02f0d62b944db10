"""What the server holds about a pool that decides whether its queued runs can start: the
pool and its queues paused or not, and the flow runs each worker has taken."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound

WORKER_LABEL = "prefect.worker.name"  # set by a worker on each flow run it takes
_TAKEN_READ_CAP = 200  # the API's page maximum


@dataclass(frozen=True)
class PoolPause:
    """Whether the pool, or which of its queues, is paused."""

    pool_paused: bool = False
    paused_queues: frozenset[str] = frozenset()


async def read_pool_pause(client: PrefectClient, pool: str) -> PoolPause:
    """Two requests: the pool, and its queues. A missing pool pauses nothing."""
    try:
        work_pool, queues = await asyncio.gather(
            client.read_work_pool(pool), client.read_work_queues(work_pool_name=pool)
        )
    except ObjectNotFound:
        return PoolPause()
    return PoolPause(
        pool_paused=bool(work_pool.is_paused),
        paused_queues=frozenset(q.name for q in queues if q.is_paused),
    )


async def runs_taken_by_worker(client: PrefectClient, pool: str) -> Counter[str]:
    """worker -> its flow runs Pending or Running (what its flow-run limit counts)."""
    runs = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING])
            )
        ),
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
        limit=_TAKEN_READ_CAP,
    )
    taken: Counter[str] = Counter()
    for run in runs:
        worker = (run.labels or {}).get(WORKER_LABEL)
        if worker:
            taken[str(worker)] += 1
    return taken
