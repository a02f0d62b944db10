"""Cancels flow runs that are still queued (Scheduled, Late, Pending), never a started one.

A queued run is asked to move to Cancelling, as `prefect flow-run cancel` does: the
server turns that into Cancelled at once for a run no worker has taken yet, and a worker
that already started its process (Pending) stops it; a Pending run with no process yet
is set Cancelled directly. A run found Running or finished is
left alone and reported `not-queued`. Each call is recorded in the audit log.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from gpuboard.core.audit import record_action
from gpuboard.core.limit_actions import ReadOnlyError
from gpuboard.core.prefect.cancelling import (
    CANCEL_STATUSES,
    CancelOutcome,
    CancelProgress,
    cancel_if_queued,
    failure_reason,
    queued_run_ids_in,
)
from gpuboard.core.prefect.client import async_client

__all__ = ["CancelOutcome", "cancel_queued", "cancel_run", "cancel_runs", "queued_run_ids"]


async def cancel_run(
    flow_run_id: UUID, *, api_url: str | None = None, read_only: bool = False
) -> CancelOutcome:
    """Cancel `flow_run_id` if it is still queued; a started run is `not-queued`, untouched."""
    if read_only:
        record_action("run.cancel", str(flow_run_id), result="refused: read-only")
        raise ReadOnlyError("gpuboard runs read-only: runs cannot be cancelled")
    async with async_client(api_url) as client:
        outcome = await cancel_if_queued(client, flow_run_id)
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
        return await queued_run_ids_in(client, pool)


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
        record_action("runs.cancel-queued", f"pool {pool}", result=f"error: {failure_reason(exc)}")
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
                outcomes.append(await cancel_if_queued(client, run_id))
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
