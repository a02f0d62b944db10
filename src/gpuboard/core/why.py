"""Why a run waits, in words, from what the server holds: for a queued run (Scheduled,
Late, Pending) and for a running one waiting for its worker's GPU slot.

Pure functions over the board's values (no request here): the board source fills
`RunView.wait_reason` with them, `gpuboard status --json` carries the code and the text,
and `gpuboard why RUN` (core/why_run.py) reads what one run needs and asks the same.

A gpuboard pool's queued runs are not bound to a worker: any worker of the pool polling
its queues takes the next one. So a Scheduled run waits on the pool (paused, no worker
online, every worker draining or at its flow-run limit); a Pending run has been taken by
one worker and waits on that one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from gpuboard.core.models import RunView, WorkerView

# Every code a reason can have, for scripts reading `status --json`.
WAIT_CODES = (
    "not_due",  # scheduled for later
    "pool_paused",
    "queue_paused",
    "no_worker_online",
    "worker_draining",  # its worker (or every online worker of the pool) is drained
    "worker_at_run_limit",  # every worker that could take it runs as many as its limit
    "runs_ahead",  # workers have room; older runs go first
    "next_poll",  # a worker has room and takes it at its next poll
    "worker_offline",  # Pending on a worker that went offline
    "starting",  # Pending: its worker is starting it
    "slot_paused",  # in the GPU step, its worker's GPU slot has limit 0
    "slot_busy",  # in the GPU step, every slot in use: N runs ahead of it
)
SLOT_STEPS = ("gpu", "infer", "waiting")
HOLDS_SLOT = -1  # slot_queue_ahead's answer for a run that holds its slot


@dataclass(frozen=True)
class WaitReason:
    code: str  # one of WAIT_CODES
    text: str


@dataclass(frozen=True)
class PoolWaitFacts:
    """What decides whether a pool's runs can start: its workers and what is paused."""

    pool: str
    workers: tuple[WorkerView, ...]
    pool_paused: bool = False
    paused_queues: frozenset[str] = frozenset()

    def worker(self, name: str | None) -> WorkerView | None:
        return next((w for w in self.workers if w.name == name), None)


def queued_reason(
    run: RunView, facts: PoolWaitFacts, *, now: float, ahead: int = 0
) -> WaitReason | None:
    """Why a Scheduled, Late or Pending run has not started; None for any other run.

    `ahead`: the pool's Scheduled runs due before it (they are taken first).
    """
    if run.state_type == "PENDING":
        return _pending_reason(run, facts)
    if run.state_type != "SCHEDULED":
        return None
    pool = facts.pool
    if run.expected_start_time is not None and run.expected_start_time > now:
        at = datetime.fromtimestamp(run.expected_start_time).strftime("%H:%M:%S")
        return WaitReason("not_due", f"scheduled for {at}: not due yet")
    if facts.pool_paused:
        return WaitReason(
            "pool_paused", f"work pool {pool} is paused: no worker takes its runs until resumed"
        )
    if run.work_queue is not None and run.work_queue in facts.paused_queues:
        return WaitReason(
            "queue_paused",
            f"queue {run.work_queue} of pool {pool} is paused: no worker takes its runs "
            "until it is resumed",
        )
    online = [w for w in facts.workers if w.in_pool and w.online]
    if not online:
        return WaitReason("no_worker_online", f"no worker of pool {pool} is online")
    takers = [w for w in online if not w.drained]
    if not takers:
        return WaitReason(
            "worker_draining",
            f"the online worker(s) of pool {pool} ({_names(online)}) are draining: it waits "
            "for an undrain or another worker",
        )
    queue = f"; {ahead} run(s) ahead of it" if ahead else ""
    with_room = [w for w in takers if not _full(w)]
    if not with_room:
        full = ", ".join(f"{w.name} {_taken(w)} of {w.run_limit}" for w in takers)
        return WaitReason(
            "worker_at_run_limit",
            f"every worker that can take it is at its flow-run limit ({full}){queue}",
        )
    room = ", ".join(
        w.name + (f" ({_taken(w)} of {w.run_limit})" if w.run_limit is not None else "")
        for w in with_room
    )
    if ahead:
        return WaitReason(
            "runs_ahead", f"{ahead} run(s) ahead of it in pool {pool}; room on {room}"
        )
    return WaitReason("next_poll", f"room on {room}: taken at the next poll")


def slot_reason(run: RunView, worker: WorkerView | None, *, ahead: int) -> WaitReason | None:
    """Why a Running run in its GPU step waits for a slot; None when it is not waiting.

    `ahead`: runs of its worker waiting for the slot since before it (HOLDS_SLOT: it
    holds one).
    """
    if run.state_type != "RUNNING" or worker is None or worker.gcl is None:
        return None
    waiting = run.step == "waiting" or (run.step == "gpu" and worker.waiting > 0)
    if not waiting or ahead == HOLDS_SLOT:
        return None
    gcl = worker.gcl
    if gcl.paused:
        return WaitReason(
            "slot_paused",
            f"the GPU slot {gcl.name} is paused (limit 0): it waits until the limit is raised",
        )
    return WaitReason(
        "slot_busy",
        f"waits for a GPU slot of {worker.name}: {gcl.active_slots}/{gcl.limit} in use, "
        f"{ahead} run(s) ahead of it",
    )


def explain_runs(
    running: Sequence[RunView], queued: Sequence[RunView], facts: PoolWaitFacts, *, now: float
) -> tuple[tuple[RunView, ...], tuple[RunView, ...]]:
    """`running` and `queued` (sorted by due time) with each waiting run's reason filled in."""
    explained_queued = []
    scheduled_before = 0
    for run in queued:
        reason = queued_reason(run, facts, now=now, ahead=scheduled_before)
        explained_queued.append(_with(run, reason))
        if run.state_type == "SCHEDULED":
            scheduled_before += 1
    ahead = slot_queue_ahead(running, facts.workers)
    explained_running = tuple(
        _with(run, slot_reason(run, facts.worker(run.worker), ahead=ahead.get(run.id, 0)))
        for run in running
    )
    return explained_running, tuple(explained_queued)


def slot_queue_ahead(running: Sequence[RunView], workers: Sequence[WorkerView]) -> dict[str, int]:
    """run id -> runs of its worker waiting for the GPU slot since before it, or
    HOLDS_SLOT for a run presumed to hold one.

    Where the worker's inference host says which runs hold a slot (step `infer`) and
    which wait, the waiting ones that entered the step earlier; otherwise the runs that
    entered the step earlier less the slots in use (the earliest hold them).
    """
    by_worker = {w.name: w for w in workers}
    ahead: dict[str, int] = {}
    for run in running:
        worker = by_worker.get(run.worker or "")
        if worker is None or run.step not in SLOT_STEPS:
            continue
        mine = run.step_since if run.step_since is not None else float("inf")
        earlier = [
            other
            for other in running
            if other.id != run.id
            and other.worker == run.worker
            and other.step in SLOT_STEPS
            and (other.step_since if other.step_since is not None else float("inf")) < mine
        ]
        if worker.counts_from_host:
            ahead[run.id] = sum(other.step == "waiting" for other in earlier)
        elif len(earlier) < (worker.active_slots or 0):
            ahead[run.id] = HOLDS_SLOT  # among the earliest: presumed to hold a slot
        else:
            ahead[run.id] = len(earlier) - (worker.active_slots or 0)
    return ahead


def _pending_reason(run: RunView, facts: PoolWaitFacts) -> WaitReason:
    worker = facts.worker(run.worker)
    if worker is None:
        return WaitReason("starting", "a worker took it and is starting it")
    if worker.drained:
        return WaitReason(
            "worker_draining",
            f"taken by {worker.name} before its drain: it starts and finishes there "
            f"({worker.name} takes no new runs)",
        )
    if not worker.online:
        return WaitReason(
            "worker_offline",
            f"taken by {worker.name}, which is offline: it stays Pending until "
            f"{worker.name} is back or its runs are handed back",
        )
    return WaitReason("starting", f"{worker.name} is starting it")


def _full(worker: WorkerView) -> bool:
    return worker.run_limit is not None and _taken(worker) >= worker.run_limit


def _taken(worker: WorkerView) -> int:
    return worker.runs_in_hand


def _names(workers: Sequence[WorkerView]) -> str:
    return ", ".join(w.name for w in workers)


def _with(run: RunView, reason: WaitReason | None) -> RunView:
    if reason is None:
        return run
    return dataclasses.replace(run, wait_reason=reason.text, wait_code=reason.code)


__all__ = [
    "HOLDS_SLOT",
    "SLOT_STEPS",
    "WAIT_CODES",
    "PoolWaitFacts",
    "WaitReason",
    "explain_runs",
    "queued_reason",
    "slot_queue_ahead",
    "slot_reason",
]
