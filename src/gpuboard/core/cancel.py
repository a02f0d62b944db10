"""Cancels flow runs that are still queued (Scheduled, Late, Pending), never a started one.

A queued run is asked to move to Cancelling, as `prefect flow-run cancel` does: the
server turns that into Cancelled at once for a run no worker has taken yet, and a worker
that already started its process (Pending) stops it; a Pending run with no process yet
is set Cancelled directly. A run found Running or finished is
left alone and reported `not-queued`. Each call is recorded in the audit log.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.exceptions import ObjectNotFound

from gpuboard.core.audit import record_action
from gpuboard.core.limit_actions import ReadOnlyError
from gpuboard.core.prefect.client import async_client

# Late runs are Scheduled runs the server renamed; Pending ones are taken by a worker but
# not started. Everything else has started or ended.
QUEUED_STATE_TYPES = frozenset({StateType.SCHEDULED, StateType.PENDING})
_PAGE = 200

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


async def cancel_run(
    flow_run_id: UUID, *, api_url: str | None = None, read_only: bool = False
) -> CancelOutcome:
    """Cancel `flow_run_id` if it is still queued; a started run is `not-queued`, untouched."""
    if read_only:
        record_action("run.cancel", str(flow_run_id), result="refused: read-only")
        raise ReadOnlyError("gpuboard runs read-only: runs cannot be cancelled")
    async with async_client(api_url) as client:
        outcome = await _cancel_if_queued(client, flow_run_id)
    record_action(
        "run.cancel",
        f"{outcome.name} ({flow_run_id})" if outcome.name else str(flow_run_id),
        after=outcome.status,
        result="ok" if outcome.status == "cancelled" else f"{outcome.status}: {outcome.reason}",
    )
    return outcome


async def queued_run_ids(pool: str, *, api_url: str | None = None) -> list[UUID]:
    """Ids of the runs of work pool `pool` that are Scheduled, Late or Pending, oldest first."""
    async with async_client(api_url) as client:
        return await _queued_run_ids(client, pool)


async def cancel_queued(
    pool: str,
    *,
    api_url: str | None = None,
    read_only: bool = False,
    on_progress: CancelProgress | None = None,
) -> list[CancelOutcome]:
    """Cancel every queued run of `pool`, one at a time; `on_progress(done, total)` after each.

    Each run is read again right before it is cancelled, so one that a worker started
    meanwhile is reported `not-queued` and keeps running.
    """
    if read_only:
        record_action("runs.cancel-queued", f"pool {pool}", result="refused: read-only")
        raise ReadOnlyError("gpuboard runs read-only: runs cannot be cancelled")
    try:
        run_ids = await queued_run_ids(pool, api_url=api_url)
    except Exception as exc:
        record_action("runs.cancel-queued", f"pool {pool}", result=f"error: {_reason(exc)}")
        raise
    return await cancel_runs(
        run_ids, api_url=api_url, target=f"pool {pool}", on_progress=on_progress
    )


async def cancel_runs(
    run_ids: Sequence[UUID],
    *,
    api_url: str | None = None,
    target: str = "runs",
    read_only: bool = False,
    on_progress: CancelProgress | None = None,
) -> list[CancelOutcome]:
    """Cancel exactly `run_ids` (those still queued), with one audit entry for all of them.

    For a caller that showed the operator a number and asked to confirm it: runs queued
    after the question are not touched.
    """
    if read_only:
        record_action("runs.cancel-queued", target, result="refused: read-only")
        raise ReadOnlyError("gpuboard runs read-only: runs cannot be cancelled")
    outcomes: list[CancelOutcome] = []
    try:
        async with async_client(api_url) as client:
            for run_id in run_ids:
                outcomes.append(await _cancel_if_queued(client, run_id))
                if on_progress is not None:
                    on_progress(len(outcomes), len(run_ids))
    finally:
        # Recorded even when interrupted: what was cancelled so far stays cancelled.
        counts = {s: sum(o.status == s for o in outcomes) for s in CANCEL_STATUSES}
        record_action(
            "runs.cancel-queued",
            target,
            before={"queued": len(run_ids)},
            after=counts,
            result="ok"
            if not counts["failed"] and len(outcomes) == len(run_ids)
            else f"{counts['failed']} failed, {len(run_ids) - len(outcomes)} not tried",
        )
    return outcomes


async def _queued_run_ids(client: PrefectClient, pool: str) -> list[UUID]:
    body: dict[str, Any] = {
        "work_pools": {"name": {"any_": [pool]}},
        "flow_runs": {"state": {"type": {"any_": sorted(t.value for t in QUEUED_STATE_TYPES)}}},
        "sort": "EXPECTED_START_TIME_ASC",
        "limit": _PAGE,
    }
    ids: list[UUID] = []
    seen: set[UUID] = set()
    offset = 0
    while True:
        response = await client.request(
            "POST", "/flow_runs/filter", json={**body, "offset": offset}
        )
        page = response.json()
        for row in page:
            run_id = UUID(row["id"])
            if run_id not in seen:  # a page boundary may shift while runs come and go
                seen.add(run_id)
                ids.append(run_id)
        if len(page) < _PAGE:
            return ids
        offset += _PAGE


async def _cancel_if_queued(client: PrefectClient, flow_run_id: UUID) -> CancelOutcome:
    try:
        run: FlowRun = await client.read_flow_run(flow_run_id)
    except ObjectNotFound:
        return CancelOutcome(flow_run_id, "", "failed", "no such flow run")
    except Exception as exc:
        return CancelOutcome(flow_run_id, "", "failed", _reason(exc))
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
        return CancelOutcome(flow_run_id, run.name, "failed", _reason(exc))
    # A run no worker holds is rejected to Cancelled at once; that is the cancel done.
    if result.state is not None and result.state.type in (
        StateType.CANCELLED,
        StateType.CANCELLING,
    ):
        return CancelOutcome(flow_run_id, run.name, "cancelled")
    why = getattr(result.details, "reason", None) or f"server answered {result.status.value}"
    return CancelOutcome(flow_run_id, run.name, "failed", why)


def _reason(exc: Exception) -> str:
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}: {exc.response.text[:200]}"
    return f"{type(exc).__name__}: {exc}"
