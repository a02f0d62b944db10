"""`gpuboard why RUN`: why one flow run (by id or name) waits, in words, with the reason's
code; the same reasons the board shows (core/why.py), read for this run alone."""

from __future__ import annotations

import time
from dataclasses import dataclass

from gpuboard.core.board_source import BoardSource
from gpuboard.core.config import configured_api_url
from gpuboard.core.prefect.client import async_client
from gpuboard.core.prefect.run_lookup import RunNotFound, find_flow_run, scheduled_ahead
from gpuboard.core.prefect.snapshot import run_view
from gpuboard.core.why import PoolWaitFacts, WaitReason, queued_reason

__all__ = ["RunNotFound", "WhyAnswer", "why_run"]

QUEUED_TYPES = ("SCHEDULED", "PENDING")


@dataclass(frozen=True)
class WhyAnswer:
    """One run and why it waits; `reason` None: it is not waiting (`state` says where)."""

    run_id: str
    run_name: str
    pool: str | None
    state: str  # its state's name: Late, Pending, Running...
    worker: str | None
    reason: WaitReason | None

    def sentence(self) -> str:
        where = f" on {self.worker}" if self.worker else ""
        head = f"{self.run_name} ({self.state}{where})"
        if self.reason is not None:
            return f"{head}: {self.reason.text}"
        return f"{head}: not waiting"

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.run_id,
            "name": self.run_name,
            "pool": self.pool,
            "state": self.state,
            "worker": self.worker,
            "wait_reason": None
            if self.reason is None
            else {"code": self.reason.code, "text": self.reason.text},
        }


async def why_run(ref: str, *, api_url: str | None = None) -> WhyAnswer:
    """Why the run with id or name `ref` waits; RunNotFound when none or several match."""
    async with async_client(api_url) as client:
        flow_run = await find_flow_run(client, ref)
        ahead = await scheduled_ahead(client, flow_run)
    run = run_view(flow_run)
    pool = flow_run.work_pool_name
    answer = WhyAnswer(run.id, run.name, pool, run.state_name, run.worker, None)
    if pool is None or run.state_type not in (*QUEUED_TYPES, "RUNNING"):
        return answer
    # The board's own read of the run's pool: its workers, drains, limits and pauses, and
    # the run's current step when it runs.
    source = BoardSource(pool, api_url or configured_api_url(), nvml=None, follow_hosts=False)
    try:
        snapshot = await source.read()
    finally:
        await source.aclose()
    if not snapshot.prefect_ok:
        raise RuntimeError("; ".join(e.message for e in snapshot.errors if e.source == "prefect"))
    shown = next((r for r in snapshot.running + snapshot.next_queued if r.id == run.id), None)
    if shown is not None:
        reason = (
            WaitReason(shown.wait_code or "", shown.wait_reason)
            if shown.wait_reason is not None
            else None
        )
        return _with(answer, shown.state_name, shown.worker, reason)
    if run.state_type not in QUEUED_TYPES:
        return answer
    facts = PoolWaitFacts(
        pool,
        snapshot.workers,
        pool_paused=snapshot.pool_paused,
        paused_queues=frozenset(snapshot.paused_queues),
    )
    return _with(
        answer, run.state_name, run.worker, queued_reason(run, facts, now=time.time(), ahead=ahead)
    )


def _with(
    answer: WhyAnswer, state: str, worker: str | None, reason: WaitReason | None
) -> WhyAnswer:
    return WhyAnswer(answer.run_id, answer.run_name, answer.pool, state, worker, reason)
