"""The runs panel's filter read: the pool's runs that a `RunFilter` matches, beyond the few
a refresh lists (10 queued, 10 failures, the running ones).

One `/flow_runs/filter` request of at most MATCH_CAP rows, made only while a filter is
set. The server narrows by state and batch tag where it can; worker, image and free text
are matched here on what comes back (Prefect 3.9 filters neither labels nor parameters).
"""

from __future__ import annotations

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort

from gpuboard.core.batch import BATCH_TAG_PREFIX
from gpuboard.core.models import RunView
from gpuboard.core.prefect.snapshot import run_view
from gpuboard.core.run_filter import RunFilter

# Rows read per refresh while filtering (the API's page maximum): ~75 ms and 400 KB
# measured for 200 rows, so only while the operator has a filter set.
MATCH_CAP = 200
_TYPES = {state.value.lower(): state for state in StateType}
# Prefect's state names that are not a type's own name, lower-cased.
_TYPE_OF_NAME = {
    "late": StateType.SCHEDULED,
    "awaitingretry": StateType.SCHEDULED,
    "awaitingconcurrencyslot": StateType.SCHEDULED,
    "retrying": StateType.RUNNING,
    "timedout": StateType.FAILED,
}


async def read_matching_runs(
    client: PrefectClient, pool: str, run_filter: RunFilter, limit: int = MATCH_CAP
) -> tuple[RunView, ...]:
    """The newest `limit` runs of `pool` the server can narrow to, that `run_filter` matches."""
    runs = await client.read_flow_runs(
        flow_run_filter=server_side(run_filter),
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,
        limit=limit,
    )
    views = (run_view(run) for run in runs)
    return tuple(view for view in views if run_filter.matches(view))


def server_side(run_filter: RunFilter) -> FlowRunFilter:
    """What the server can narrow: the state types the states belong to, the batch tags.
    State names (Late) are matched exactly afterwards by `RunFilter.matches`."""
    types = [_TYPES.get(s) or _TYPE_OF_NAME.get(s) for s in run_filter.states]
    known = [t for t in types if t is not None]
    state = (
        FlowRunFilterState(type=FlowRunFilterStateType(any_=list(dict.fromkeys(known))))
        if known and len(known) == len(types)
        else None  # a state word the server does not know: narrow here only
    )
    tags = (
        FlowRunFilterTags(any_=[f"{BATCH_TAG_PREFIX}{b}" for b in run_filter.batches])
        if run_filter.batches
        else None
    )
    return FlowRunFilter(state=state, tags=tags)
