"""Finds GPU slots whose holder died and releases exactly those leases; finds Running flow
runs that have no live process. Results are frozen reports, failures are values in them.

A slot's holder is dead when the process that holds the lease is gone (seen from the same
host and PID namespace, as `gpuboard worker` sees its own flow runs), or, where the process
cannot be seen, when its flow run is finished (Completed, Failed, Cancelled, Crashed) or
deleted, or its task run is finished. A holder whose process is seen running is alive
whatever its run's state says (it may still be using the GPU). A holder that cannot be
judged is kept: its lease bounds the leak (60 s with `gpu_slot()`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import StateType

from gpuboard.core.config import FLOW_HEARTBEAT_ENV, FLOW_HEARTBEAT_S, gcl_name
from gpuboard.core.prefect.client import async_client
from gpuboard.core.prefect.gcl import read_gcl
from gpuboard.core.prefect.leases import (
    HolderStates,
    LeaseRecord,
    RunState,
    forget_lease,
    list_leases,
    read_holder_states,
    release_lease,
)
from gpuboard.core.prefect.run_health import (
    StateMark,
    mark_crashed,
    read_flow_runs_in,
    read_last_heartbeats,
    reschedule_pending,
)
from gpuboard.core.process_identity import is_running, started_at
from gpuboard.core.reclaim_events import publish_reclaim

log = logging.getLogger(__name__)

FINISHED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})
DEFAULT_INTERVAL_S = 2.0
# Flagged stale after this many heartbeat periods without one: one missed beat can be a
# slow server or a busy event persister, three are not.
STALE_AFTER_BEATS = 3
# A Pending run normally reports Running once its process has started: measured up to
# ~25 s with 10 flow runs starting at once on 2 loaded cores. Four times that is stuck.
PENDING_STUCK_AFTER_S = 120.0
ORPHAN_EVERY = 5  # reclaim passes between two looks for stuck Pending runs (1 request)
FULL_PASS_EVERY = 15  # reclaim passes between two looks at the records of an idle GCL


@dataclass(frozen=True)
class Holder:
    """One published lease of a GCL and the verdict on its holder."""

    record: LeaseRecord
    flow_run: RunState | None  # None: no flow run id recorded, or the server has none
    task_run: RunState | None
    process_running: bool | None  # None: its process cannot be seen from here
    dead: bool
    reason: str  # why dead, or why kept


@dataclass(frozen=True)
class Release:
    """One lease this pass released (or tried to)."""

    lease_id: UUID
    flow_run_id: UUID | None
    reason: str  # why its holder is dead
    was_held: bool | None  # True: a slot came back; False: the lease had already gone
    error: str | None = None  # the release failed; the next pass tries again


@dataclass(frozen=True)
class ReclaimReport:
    """One reclaim pass over GCL `gcl`."""

    gcl: str
    checked_at: float  # epoch seconds
    holders: tuple[Holder, ...]  # every published lease found, dead ones included
    released: tuple[Release, ...]
    limit: int | None = None  # the GCL after the pass; None where it could not be read
    active_slots: int | None = None
    errors: tuple[str, ...] = ()

    @property
    def unrecorded_slots(self) -> int:
        """Slots held with no published lease (a holder killed before publishing, or a
        plain `concurrency()` user): they come back only when their lease expires."""
        if self.active_slots is None:
            return 0
        # `active_slots` is read after the pass: a lease it released holds nothing now; a
        # dead holder it did not release (a dry run, a failed release) may still hold one.
        freed = {r.lease_id for r in self.released if r.error is None}
        recorded = sum(1 for holder in self.holders if holder.record.lease_id not in freed)
        return max(0, self.active_slots - recorded)


@dataclass(frozen=True)
class StaleRun:
    """A Running flow run that shows no sign of a live process."""

    flow_run: RunState
    last_heartbeat: float | None  # epoch seconds; None when none was seen in the window
    process_gone: bool  # True: its slot-holding process was seen gone (certain)
    reason: str


@dataclass(frozen=True)
class StaleReport:
    checked_at: float
    running: int  # Running flow runs looked at
    stale: tuple[StaleRun, ...]
    errors: tuple[str, ...] = ()


def judge(
    record: LeaseRecord, states: HolderStates, process_running: bool | None
) -> tuple[bool, str]:
    """(dead, reason) for the holder of `record`."""
    if process_running is True:
        return False, "its process is running"
    if process_running is False:
        where = f" on {record.process.host}" if record.process else ""
        pid = record.process.pid if record.process else "?"
        return True, f"its process {pid}{where} is gone"
    if record.flow_run_id is None:
        return False, "no flow run recorded and its process cannot be seen: kept"
    flow_run = states.flow_runs.get(record.flow_run_id)
    if flow_run is None:
        return True, "its flow run no longer exists"
    if flow_run.state_type in FINISHED:
        return True, f"its flow run is {flow_run.state_name}"
    task_run = states.task_runs.get(record.task_run_id) if record.task_run_id else None
    if task_run is not None and task_run.state_type in FINISHED:
        return True, f"its task run is {task_run.state_name}"
    return False, f"its flow run is {flow_run.state_name}"


async def reclaim_gcl(
    client: PrefectClient,
    gcl: str,
    *,
    check_processes: bool = True,
    dry_run: bool = False,
    skip_when_idle: bool = False,
) -> ReclaimReport:
    """Release the leases of GCL `gcl` whose holder is dead; report what was found.

    `check_processes=False` judges by run states only, as a machine other than the
    holders' would. `dry_run` finds and judges but releases nothing (for a board that
    asks the operator first). A few requests per pass: the records (1), the holders'
    states (2, only when there are records), the GCL (1), and per dead holder 3.
    `skip_when_idle`: the GCL first, and nothing more when none of its slots is held (no
    slot to reclaim; a leftover record of a released slot waits for a full pass).
    """
    checked_at = time.time()
    errors: list[str] = []
    first_read = None
    if skip_when_idle:
        try:
            first_read = await read_gcl(client, gcl)
        except Exception as exc:
            return ReclaimReport(gcl, checked_at, (), (), errors=(_failure(f"read {gcl}", exc),))
        if first_read is not None and first_read.active_slots == 0:
            return ReclaimReport(gcl, checked_at, (), (), limit=first_read.limit, active_slots=0)
    try:
        records = await list_leases(client, gcl)
        states = (
            await read_holder_states(client, records)
            if records
            else HolderStates(flow_runs={}, task_runs={})
        )
    except Exception as exc:
        return ReclaimReport(gcl, checked_at, (), (), errors=(_failure("read leases", exc),))
    holders = tuple(_holder(record, states, check_processes) for record in records)
    released: list[Release] = []
    if not dry_run:
        for holder in holders:
            if holder.dead:
                released.append(await _release(client, gcl, holder))
    try:
        # Read again only where this pass released something: else the first read stands.
        state = first_read if first_read and not released else await read_gcl(client, gcl)
    except Exception as exc:
        state = None
        errors.append(_failure(f"read GCL {gcl}", exc))
    return ReclaimReport(
        gcl=gcl,
        checked_at=checked_at,
        holders=holders,
        released=tuple(released),
        limit=state.limit if state else None,
        active_slots=state.active_slots if state else None,
        errors=tuple(errors + [r.error for r in released if r.error]),
    )


async def reclaim_lease(
    client: PrefectClient, gcl: str, lease_id: UUID, *, check_processes: bool = True
) -> Release:
    """Release the one lease `lease_id` of GCL `gcl` if its holder is dead (the board's
    confirmed action). Judged again now: a holder alive by now, or a lease whose record
    is gone (released meanwhile), is refused with the reason in `error`; nothing else is
    touched."""
    try:
        records = [r for r in await list_leases(client, gcl) if r.lease_id == lease_id]
        states = await read_holder_states(client, records)
    except Exception as exc:
        return Release(lease_id, None, "", was_held=None, error=_failure("read lease", exc))
    if not records:
        return Release(lease_id, None, "", was_held=None, error="no such lease record")
    holder = _holder(records[0], states, check_processes)
    if not holder.dead:
        return Release(lease_id, holder.record.flow_run_id, holder.reason, None, "holder is alive")
    return await _release(client, gcl, holder)


def reclaim_once(
    worker_id: str, *, api_url: str | None = None, check_processes: bool = True
) -> ReclaimReport:
    """One reclaim pass over worker `worker_id`'s GCL, from synchronous code."""

    async def run() -> ReclaimReport:
        async with async_client(api_url) as client:
            return await reclaim_gcl(client, gcl_name(worker_id), check_processes=check_processes)

    return asyncio.run(run())


def reclaim_forever(
    worker_id: str,
    interval_s: float,
    stop_event: threading.Event,
    *,
    api_url: str | None = None,
    check_processes: bool = True,
    say: Callable[[str], None] | None = None,
    on_report: Callable[[ReclaimReport], None] | None = None,
    pool: str | None = None,
) -> None:
    """Reclaim worker `worker_id`'s orphaned GPU slots every `interval_s` until `stop_event`.

    Made to be a daemon thread's target in `gpuboard worker`: it never raises; a failed
    pass (server away) is said once and retried, with a fresh client, next interval.
    `say` gets one line per released lease and per change of error (default: logging).
    `check_processes` as in `reclaim_gcl`: on where it runs on its flow runs' machine.
    With `pool`, every ORPHAN_EVERY passes it also reschedules the worker's own runs stuck
    Pending (`reschedule_orphans`): only where it runs on the worker's machine.
    """
    speak = say or log.info
    gcl = gcl_name(worker_id)

    async def loop() -> None:
        last_error = ""
        passes = 0
        while not stop_event.is_set():
            try:
                async with async_client(api_url) as client:
                    while not stop_event.is_set():
                        # Idle passes cost one request; every FULL_PASS_EVERY-th looks at
                        # the records too (leftovers of released slots are cleared).
                        report = await reclaim_gcl(
                            client,
                            gcl,
                            check_processes=check_processes,
                            skip_when_idle=passes % FULL_PASS_EVERY != 0,
                        )
                        for line in describe_releases(report):
                            speak(line)
                        error = "; ".join(report.errors)
                        if error != last_error:
                            speak(f"reclaimer {gcl}: {error or 'working again'}")
                        last_error = error
                        if on_report is not None:
                            on_report(report)
                        passes += 1
                        if pool is not None and passes % ORPHAN_EVERY == 0:
                            for line in await _reschedule_stuck(client, pool, worker_id):
                                speak(line)
                        await asyncio.to_thread(stop_event.wait, interval_s)
            except Exception as exc:  # a broken client: build a new one next interval
                error = _failure("reclaim pass", exc)
                if error != last_error:
                    speak(f"reclaimer {gcl}: {error}")
                last_error = error
                await asyncio.to_thread(stop_event.wait, interval_s)

    asyncio.run(loop())


async def _reschedule_stuck(client: PrefectClient, pool: str, worker: str) -> list[str]:
    rescheduled = await reschedule_orphans(
        client, pool, worker, pending_after_s=PENDING_STUCK_AFTER_S
    )
    return [
        f"{run.name}: stuck Pending with no process: put back to Scheduled"
        for run, mark in rescheduled
        if mark.marked
    ]


def describe_releases(report: ReclaimReport) -> list[str]:
    """One line per lease a pass released, for a worker's log."""
    lines = []
    for release in report.released:
        if release.error:
            continue
        outcome = "slot back in service" if release.was_held else "lease had already expired"
        lines.append(
            f"{report.gcl}: released lease {release.lease_id} of flow run "
            f"{release.flow_run_id or '?'} ({release.reason}): {outcome}"
        )
    return lines


async def find_stale_runs(
    client: PrefectClient,
    stale_after_s: float,
    *,
    work_pool: str | None = None,
    worker: str | None = None,
    check_processes: bool = True,
    local_workers: Collection[str] = (),
    pending_after_s: float = PENDING_STUCK_AFTER_S,
    records: Sequence[LeaseRecord] | None = None,
    now: float | None = None,
) -> StaleReport:
    """Running and Pending flow runs (of `work_pool` / Prefect worker `worker` when given)
    with no sign of a live process.

    Certain at once, from this machine: a published slot holder whose process is gone, or
    a run of one of `local_workers` (Prefect workers on this machine) whose recorded
    process (`infrastructure_pid`) is gone. Otherwise by time: a Running run with no
    heartbeat for `stale_after_s` (a few heartbeat periods: see `default_stale_after_s()`),
    a Pending run Pending for `pending_after_s` (its worker died before its process
    reported Running: nothing will ever start it). A run whose process is seen running is
    never stale. `check_processes=False` goes by time only.
    A few requests: the runs, their heartbeats (1 per 50 Running runs), the lease records
    (none where the caller passes `records` it has just read).
    """
    now = time.time() if now is None else now
    try:
        runs = [
            run
            for run in await read_flow_runs_in(
                client, [StateType.RUNNING, StateType.PENDING], work_pool
            )
            if worker is None or run.worker == worker
        ]
        running = [run for run in runs if run.state_type == "RUNNING"]
        beats: dict[UUID, float] = {}
        if running:
            # From the earliest start: the newest beat of each run, however old, is reported.
            earliest = min((run.state_since or now) for run in running)
            since = datetime.fromtimestamp(max(earliest - 60, now - 86400), tz=timezone.utc)
            beats = await read_last_heartbeats(client, [run.id for run in running], since)
        if records is None:
            records = await list_leases(client) if runs else []
    except Exception as exc:
        return StaleReport(
            checked_at=now, running=0, stale=(), errors=(_failure("read runs", exc),)
        )
    # What this machine sees of the runs' processes wins over time, as in `judge`:
    # True running, False gone, absent where it cannot be seen from here.
    seen: dict[UUID, bool] = {}
    if check_processes:
        for record in records:
            running_now = is_running(record.process) if record.process else None
            if record.flow_run_id is not None and running_now is not None:
                # A run retried in a new process may have left an old process's record.
                seen[record.flow_run_id] = seen.get(record.flow_run_id, False) or running_now
        for run in runs:
            if run.worker in local_workers and run.id not in seen:
                local = _local_process_running(run)
                if local is not None:
                    seen[run.id] = local
    stale: list[StaleRun] = []
    for run in runs:
        beat = beats.get(run.id)
        if seen.get(run.id) is True:
            continue
        if seen.get(run.id) is False:
            stale.append(StaleRun(run, beat, True, _gone_reason(run, records)))
            continue
        # Without any beat, the time it entered its state stands in: a run just started
        # has not had time to send one.
        quiet_since = beat if beat is not None else (run.state_since or now)
        age = now - quiet_since
        if run.state_type == "PENDING":
            if age >= pending_after_s:
                reason = f"Pending for {age:.0f} s, no process seen"
                stale.append(StaleRun(run, None, False, reason))
        elif age >= stale_after_s:
            reason = (
                f"no heartbeat in {age:.0f} s Running"
                if beat is None
                else f"last heartbeat {age:.0f} s ago"
            )
            stale.append(StaleRun(run, beat, False, reason))
    return StaleReport(checked_at=now, running=len(running), stale=tuple(stale))


def _local_process_running(run: RunState) -> bool | None:
    """Whether the process a worker on this machine recorded for `run` runs: False for no
    such PID or one started after the run was Running (a later process reusing it); None
    when no PID was recorded."""
    if run.infrastructure_pid is None or run.state_since is None:
        return None
    started = started_at(run.infrastructure_pid)
    # 2 s of slack: /proc's boot time is whole seconds, the server's clock is another's.
    return started is not None and started <= run.state_since + 2.0


def _gone_reason(run: RunState, records: Sequence[LeaseRecord]) -> str:
    if any(record.flow_run_id == run.id for record in records):
        return "its slot-holding process is gone"
    return f"its process {run.infrastructure_pid} on this machine is gone"


def default_stale_after_s() -> float:
    """STALE_AFTER_BEATS heartbeat periods of gpuboard workers' flow runs: the period this
    process's environment sets (a `gpuboard worker` passes its own to its runs), else the
    one `gpuboard worker` sets by default. Runs of plain Prefect workers beat every 180 s:
    where those are watched, set PREFECT_FLOWS_HEARTBEAT_FREQUENCY=180 for the board."""
    try:
        frequency = float(os.environ.get(FLOW_HEARTBEAT_ENV, ""))
    except ValueError:  # unset, or not a number: what gpuboard workers use
        frequency = FLOW_HEARTBEAT_S
    return STALE_AFTER_BEATS * (frequency if frequency > 0 else FLOW_HEARTBEAT_S)


async def reschedule_stuck_run(client: PrefectClient, flow_run_id: UUID, reason: str) -> StateMark:
    """Put a Pending run whose process is gone back to Scheduled, for any worker to take."""
    return await reschedule_pending(client, flow_run_id, f"Rescheduled by gpuboard: {reason}")


async def reschedule_orphans(
    client: PrefectClient, work_pool: str, worker: str, *, pending_after_s: float
) -> list[tuple[RunState, StateMark]]:
    """Put back to Scheduled the runs of Prefect worker `worker` (on this machine) that
    have been Pending for `pending_after_s` with no process of theirs running here.

    Prefect never does: a worker killed between taking a run (Pending) and the run's
    process reporting Running leaves it Pending for ever, and no other worker takes a
    Pending run. Run by `gpuboard worker` on its own machine: with 0 before its Prefect
    worker starts (every Pending run of its name is then a previous life's), and with
    PENDING_STUCK_AFTER_S while it runs (its own runs leave Pending within seconds).
    """
    orphans = [
        run
        for run in await read_flow_runs_in(client, [StateType.PENDING], work_pool)
        if _state_age(run) >= pending_after_s
        and (
            (run.worker == worker and _local_process_running(run) is not True)
            # No worker label: its worker died between taking it and labelling it (a live
            # one labels within a second), so nobody's: any worker of the pool may.
            or (run.worker is None and pending_after_s >= PENDING_STUCK_AFTER_S)
        )
    ]
    done = []
    for run in orphans:
        reason = f"Pending on worker {worker} with no process running"
        done.append((run, await reschedule_stuck_run(client, run.id, reason)))
    return done


def _state_age(run: RunState) -> float:
    """Seconds since `run` entered its state (0 when unknown)."""
    return time.time() - run.state_since if run.state_since else 0.0


async def mark_run_crashed(client: PrefectClient, flow_run_id: UUID, reason: str) -> StateMark:
    """Mark a stale flow run Crashed so that its slot can be reclaimed and its retries or
    automations run. A run that finished meanwhile keeps its final state."""
    return await mark_crashed(client, flow_run_id, f"Marked Crashed by gpuboard: {reason}")


def _holder(record: LeaseRecord, states: HolderStates, check_processes: bool) -> Holder:
    process_running = (
        is_running(record.process) if check_processes and record.process is not None else None
    )
    dead, reason = judge(record, states, process_running)
    return Holder(
        record=record,
        flow_run=states.flow_runs.get(record.flow_run_id) if record.flow_run_id else None,
        task_run=states.task_runs.get(record.task_run_id) if record.task_run_id else None,
        process_running=process_running,
        dead=dead,
        reason=reason,
    )


async def _release(client: PrefectClient, gcl: str, holder: Holder) -> Release:
    record = holder.record
    try:
        was_held = await release_lease(client, record.lease_id)
        await forget_lease(client, record.lease_id)
    except Exception as exc:
        return Release(
            record.lease_id,
            record.flow_run_id,
            holder.reason,
            was_held=None,
            error=_failure(f"release lease {record.lease_id}", exc),
        )
    if was_held:
        # A slot came back before its lease expired: counted by `gpuboard metrics`.
        await publish_reclaim(client, gcl, record.lease_id, record.flow_run_id, holder.reason)
    return Release(record.lease_id, record.flow_run_id, holder.reason, was_held=was_held)


def _failure(what: str, exc: BaseException) -> str:
    return f"{what} failed: {type(exc).__name__}: {exc}"
