"""Moves a queued flow run to Cancelled/Cancelling on the server, never a started one.

The audit, read-only guard and reporting live in gpuboard.core.cancel; this module is
only the Prefect side: which runs of a pool are queued, and the state change itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.exceptions import ObjectNotFound

from gpuboard.core.prefect.runs import filtered_runs

# Late runs are Scheduled runs the server renamed; Pending ones are taken by a worker but
# not started. Everything else has started or ended.
QUEUED_STATE_TYPES = frozenset({StateType.SCHEDULED, StateType.PENDING})

CancelStatus = Literal["cancelled", "not-queued", "failed"]
CancelProgress = Callable[[int, int], None]
CANCEL_STATUSES: tuple[CancelStatus, ...] = ("cancelled", "not-queued", "failed")


@dataclass(frozen=True)
class CancelOutcome:
    """What cancelling one run did; `reason` says why it was not cancelled."""

    flow_run_id: UUID
    name: str
    status: CancelStatus
    reason: str | None = None


async def queued_run_ids_in(client: PrefectClient, pool: str) -> list[UUID]:
    body: dict[str, Any] = {
        "work_pools": {"name": {"any_": [pool]}},
        "flow_runs": {"state": {"type": {"any_": sorted(t.value for t in QUEUED_STATE_TYPES)}}},
        "sort": "EXPECTED_START_TIME_ASC",
    }
    return [UUID(row["id"]) async for row in filtered_runs(client, body)]


async def cancel_if_queued(client: PrefectClient, flow_run_id: UUID) -> CancelOutcome:
    try:
        run: FlowRun = await client.read_flow_run(flow_run_id)
    except ObjectNotFound:
        return CancelOutcome(flow_run_id, "", "failed", "no such flow run")
    except Exception as exc:
        return CancelOutcome(flow_run_id, "", "failed", failure_reason(exc))
    state = run.state
    if state is None or state.type not in QUEUED_STATE_TYPES:
        shown = state.name if state is not None else "no state"
        return CancelOutcome(flow_run_id, run.name, "not-queued", f"it is {shown}")
    # Cancelling lets the worker stop a process it started; a Pending run with no process
    # yet has nothing to stop, and Cancelled makes its process give up if one starts.
    if state.type == StateType.PENDING and not run.infrastructure_pid:
        wanted = State(type=StateType.CANCELLED, name="Cancelled", message="cancelled by gpuboard")
    else:
        wanted = State(
            type=StateType.CANCELLING, name="Cancelling", message="cancelled by gpuboard"
        )
    try:
        result = await client.set_flow_run_state(flow_run_id, wanted)
    except Exception as exc:
        return CancelOutcome(flow_run_id, run.name, "failed", failure_reason(exc))
    # A run no worker holds is rejected to Cancelled at once; that is the cancel done.
    if result.state is not None and result.state.type in (
        StateType.CANCELLED,
        StateType.CANCELLING,
    ):
        return CancelOutcome(flow_run_id, run.name, "cancelled")
    why = getattr(result.details, "reason", None) or f"server answered {result.status.value}"
    return CancelOutcome(flow_run_id, run.name, "failed", why)


def failure_reason(exc: Exception) -> str:
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}: {exc.response.text[:200]}"
    return f"{type(exc).__name__}: {exc}"
