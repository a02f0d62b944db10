"""Reads what tells whether a Running flow run still has a live process (its flow-run
heartbeats), and the remedies for one that has none: mark it Crashed, or put a Pending run
whose worker died back to Scheduled so that another worker takes it.

Prefect 3.9 flow-run processes emit a `prefect.flow-run.heartbeat` event every
`PREFECT_FLOWS_HEARTBEAT_FREQUENCY` seconds (default 180, minimum 30; first one at
start) while the run is not finished. The server does not act on them by itself (that
takes an automation), so a run whose process and worker both died stays Running.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import State, StateType
from prefect.client.schemas.responses import OrchestrationResult, SetStateStatus
from prefect.client.schemas.sorting import FlowRunSort
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventOrder,
    EventResourceFilter,
)
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed, Scheduled
from prefect.types import DateTime

from gpuboard.core.prefect.leases import RunState, run_state

HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
_FLOW_RUN_RESOURCE = "prefect.flow-run."
_EVENT_PAGE = 50  # the server's page for /events/filter; one event per run with distinct
_RUN_PAGE = 200


@dataclass(frozen=True)
class StateMark:
    """What the server did with a request to move a flow run to another state."""

    flow_run_id: UUID
    marked: bool  # True when the run is in the asked state now because of this request
    state_name: str  # the run's state after the request ("" when the run is gone)
    detail: str  # why not, when not


async def read_flow_runs_in(
    client: PrefectClient, states: Iterable[StateType], work_pool: str | None = None
) -> list[RunState]:
    """Every flow run in one of `states` (of `work_pool` when given), oldest started first."""
    pool_filter = (
        None if work_pool is None else WorkPoolFilter(name=WorkPoolFilterName(any_=[work_pool]))
    )
    found: list[RunState] = []
    offset = 0
    while True:
        page = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(states)))
            ),
            work_pool_filter=pool_filter,
            sort=FlowRunSort.START_TIME_ASC,
            limit=_RUN_PAGE,
            offset=offset,
        )
        found.extend(run_state(run) for run in page)
        if len(page) < _RUN_PAGE:
            return found
        offset += _RUN_PAGE


async def read_last_heartbeats(
    client: PrefectClient, flow_run_ids: Iterable[UUID], since: datetime
) -> dict[UUID, float]:
    """The newest heartbeat (epoch seconds) since `since` of each flow run that sent one.

    One request per 50 runs: the server keeps the newest event per resource (`distinct`).
    """
    ids = sorted(set(flow_run_ids), key=str)
    beats: dict[UUID, float] = {}
    for start in range(0, len(ids), _EVENT_PAGE):
        chunk = ids[start : start + _EVENT_PAGE]
        page = await client.read_events(
            filter=EventFilter(
                occurred=EventOccurredFilter(since=cast(DateTime, since)),
                event=EventNameFilter(name=[HEARTBEAT_EVENT]),
                resource=EventResourceFilter(
                    id=[f"{_FLOW_RUN_RESOURCE}{run_id}" for run_id in chunk], distinct=True
                ),
                order=EventOrder.DESC,
            ),
            limit=_EVENT_PAGE,
        )
        for event in page.events:
            run_id = UUID(event.resource.id.removeprefix(_FLOW_RUN_RESOURCE))
            beats[run_id] = max(beats.get(run_id, 0.0), event.occurred.timestamp())
    return beats


async def mark_crashed(client: PrefectClient, flow_run_id: UUID, message: str) -> StateMark:
    """Propose Crashed for the flow run, through Prefect's orchestration rules (not forced).

    Not forcing is what makes this safe to race with the run itself: a run that finished
    meanwhile stays Completed/Failed (the server refuses to leave a final state).
    """
    return await _propose(client, flow_run_id, Crashed(message=message))


async def reschedule_pending(client: PrefectClient, flow_run_id: UUID, message: str) -> StateMark:
    """Put a Pending flow run back to Scheduled (due now), for any worker of its pool to take.

    Only a run still Pending: one read just before (the API has no compare-and-set, so a run
    whose process reports Running in the few milliseconds between is the one race left;
    its worker is dead or its process gone, which is why it is asked).
    """
    try:
        run = await client.read_flow_run(flow_run_id)
    except ObjectNotFound:
        return StateMark(flow_run_id, marked=False, state_name="", detail="flow run not found")
    if run.state_type != StateType.PENDING:
        name = run.state_name or ""
        return StateMark(flow_run_id, marked=False, state_name=name, detail="no longer Pending")
    return await _propose(client, flow_run_id, Scheduled(message=message))


async def _propose(client: PrefectClient, flow_run_id: UUID, state: State[Any]) -> StateMark:
    try:
        result: OrchestrationResult[Any] = await client.set_flow_run_state(flow_run_id, state)
    except ObjectNotFound:
        return StateMark(flow_run_id, marked=False, state_name="", detail="flow run not found")
    state_name = (result.state.name or "") if result.state is not None else ""
    marked = result.status == SetStateStatus.ACCEPT
    detail = "" if marked else str(getattr(result.details, "reason", "") or result.status.value)
    return StateMark(flow_run_id, marked=marked, state_name=state_name, detail=detail)
