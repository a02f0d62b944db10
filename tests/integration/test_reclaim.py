"""Leaked GPU slots against a real Prefect server: a SIGKILLed holder's slot comes back in
seconds, a live holder's never goes, other GCLs are untouched, stale runs are flagged.

The holders are real child processes running a real flow whose task takes the slot with
`gpu_slot()`, so the lease holder is a real task run, exactly as on a worker.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TypeVar
from uuid import UUID

import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

from gpuboard.core.config import gcl_name
from gpuboard.core.local_server import LocalServer
from gpuboard.core.prefect.client import async_client
from gpuboard.core.prefect.events import read_recent
from gpuboard.core.prefect.leases import LeaseRecord, list_leases
from gpuboard.core.prefect.run_health import StateMark
from gpuboard.core.prefect.slots import read_gcl_now
from gpuboard.core.reclaim import (
    ReclaimReport,
    StaleRun,
    find_stale_runs,
    mark_run_crashed,
    reclaim_forever,
    reclaim_lease,
    reclaim_once,
)
from gpuboard.core.reclaim_events import EVENT_NAME as RECLAIM_EVENT

T = TypeVar("T")

# A flow run that takes its worker's GPU slot in a task and holds it until told to stop.
HOLDER = """
import json, sys, time
from pathlib import Path
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from gpuboard.core.slot import gpu_slot

worker, stop = sys.argv[1], Path(sys.argv[2])

@task(cache_policy=NO_CACHE, persist_result=False)
def infer() -> None:
    run = TaskRunContext.get().task_run
    with gpu_slot(worker):
        ids = {"flow_run_id": str(run.flow_run_id), "task_run_id": str(run.id)}
        print(json.dumps(ids), flush=True)
        while not stop.exists():
            time.sleep(0.1)

@flow(persist_result=False)
def hold_gpu() -> None:
    infer()

hold_gpu()
"""


@dataclass
class Holder:
    worker: str
    process: subprocess.Popen[str]
    stop_file: Path
    flow_run_id: UUID
    task_run_id: UUID
    record: LeaseRecord

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def finish(self) -> int:
        self.stop_file.touch()
        return self.process.wait(timeout=60)


@dataclass
class Holders:
    # Killed in the acceptance test, each with its worker's reclaimer running: one that
    # sees the holder's process (as `gpuboard worker` does), one that judges by run states
    # only (as a reclaimer on another machine would).
    doomed_local: Holder
    doomed_remote: Holder
    live: Holder  # never killed: its slot must never be taken from it
    other: Holder  # killed too, on another GCL that nobody reclaims until the stale test


def api(call: Callable[[PrefectClient], Awaitable[T]]) -> T:
    async def run() -> T:
        async with async_client() as client:
            return await call(client)

    return asyncio.run(run())


def active_slots(worker: str) -> int:
    state = read_gcl_now(gcl_name(worker))
    assert state is not None
    return state.active_slots


def records(worker: str) -> list[LeaseRecord]:
    return api(lambda c: list_leases(c, gcl_name(worker)))


def freed(worker: str) -> Callable[[], bool]:
    return lambda: active_slots(worker) == 0


def crash(holder: Holder, reason: str) -> StateMark:
    return api(lambda c: mark_run_crashed(c, holder.flow_run_id, reason))


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> float:
    """Poll `check` every 0.1 s; the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic()


def start_holder(folder: Path) -> tuple[str, subprocess.Popen[str], Path, Path]:
    worker = f"reclaim-{uuid.uuid4().hex[:8]}"
    api(
        lambda c: c.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=gcl_name(worker), limit=1)
        )
    )
    stop_file, log = folder / f"{worker}.stop", folder / f"{worker}.log"
    env = {**os.environ, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}
    with log.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, worker, str(stop_file)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )
    return worker, process, stop_file, log


def holding(worker: str, process: subprocess.Popen[str], stop_file: Path, log: Path) -> Holder:
    """Wait until the child holds its slot and has published its lease."""
    assert process.stdout is not None
    line = process.stdout.readline()  # the first line is printed inside gpu_slot()
    if not line:
        raise AssertionError(f"holder exited ({process.wait()}):\n{log.read_text()[-3000:]}")
    ids = json.loads(line)
    found: list[LeaseRecord] = []

    def published() -> bool:
        found[:] = records(worker)
        return len(found) == 1

    wait_for(f"the lease record of {worker} (is gpu_slot() recording?)", published, 15)
    assert active_slots(worker) == 1
    return Holder(
        worker=worker,
        process=process,
        stop_file=stop_file,
        flow_run_id=UUID(ids["flow_run_id"]),
        task_run_id=UUID(ids["task_run_id"]),
        record=found[0],
    )


@pytest.fixture(scope="module")
def holders(
    prefect_server: LocalServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Holders]:
    folder = tmp_path_factory.mktemp("holders")
    # Started together: a flow-run process takes seconds to start on a small machine.
    started = [start_holder(folder) for _ in range(4)]
    try:
        local, remote, live, other = (holding(*child) for child in started)
        yield Holders(doomed_local=local, doomed_remote=remote, live=live, other=other)
    finally:
        for _, process, stop_file, _ in started:
            stop_file.touch()
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


def test_a_sigkilled_holders_slot_is_back_in_seconds(holders: Holders) -> None:
    doomed = {"local": holders.doomed_local, "remote": holders.doomed_remote}
    reports: list[ReclaimReport] = []
    said: list[str] = []
    stop = threading.Event()
    reclaimers = [
        threading.Thread(
            target=contextvars.copy_context().run,
            args=(reclaim_forever, holder.worker, 1.0, stop),  # 1 s passes
            kwargs={
                "check_processes": mode == "local",
                "say": said.append,
                "on_report": reports.append,
            },
            daemon=True,
        )
        for mode, holder in doomed.items()
    ]
    for reclaimer in reclaimers:
        reclaimer.start()
    try:
        killed_at = time.monotonic()
        for holder in doomed.values():
            holder.kill()
        holders.other.kill()  # on an unrelated GCL: must stay held while these run
        for holder in doomed.values():
            # What its Prefect worker does as soon as the flow-run process exits.
            mark = crash(holder, "process killed")
            assert mark.marked, mark
        freed_after = {
            mode: wait_for(f"the {mode} slot to come back", freed(holder.worker), 60) - killed_at
            for mode, holder in doomed.items()
        }
    finally:
        stop.set()
        for reclaimer in reclaimers:
            reclaimer.join(timeout=15)
    print(
        f"\nSIGKILL to slot back in service (target <= 15 s): "
        f"{freed_after['local']:.1f} s seeing the process (gpuboard worker), "
        f"{freed_after['remote']:.1f} s by run states only (after the Crashed mark)"
    )
    print("\n".join(said))

    released = sorted(
        (release for report in reports for release in report.released),
        key=lambda release: release.lease_id == holders.doomed_remote.record.lease_id,
    )
    # Exactly those two leases, once each, and each was still holding its slot.
    assert [r.lease_id for r in released] == [h.record.lease_id for h in doomed.values()]
    assert all(r.was_held is True and r.error is None for r in released)
    assert "process" in released[0].reason and released[1].reason == "its flow run is Crashed"
    for holder in doomed.values():
        assert records(holder.worker) == []
    # The unrelated GCL: its dead holder's slot and record are still there.
    other = holders.other
    assert active_slots(other.worker) == 1
    assert [r.lease_id for r in records(other.worker)] == [other.record.lease_id]
    # Each slot that came back is published for `gpuboard metrics` to count (the events
    # persister makes them readable within seconds).
    wanted = {str(h.record.lease_id): h.worker for h in doomed.values()}
    wait_for("the reclaim events", lambda: reclaim_events(wanted) == wanted, 30)


def reclaim_events(wanted: dict[str, str]) -> dict[str, str]:
    """{lease id: worker} of the `gpuboard.slot.reclaimed` events of the last 10 minutes
    that are about the leases in `wanted`."""
    since = datetime.now(timezone.utc) - timedelta(minutes=10)
    events = api(lambda c: read_recent(c, RECLAIM_EVENT, since))
    return {
        e.payload["lease_id"]: e.payload["worker"]
        for e in events
        if e.payload.get("lease_id") in wanted
    }


def test_a_live_holders_slot_is_never_released(holders: Holders) -> None:
    live = holders.live
    for check_processes in (True, False):
        report = reclaim_once(live.worker, check_processes=check_processes)
        assert report.errors == ()
        assert report.released == ()
        [holder] = report.holders
        assert not holder.dead, holder.reason
        assert holder.flow_run is not None and holder.flow_run.state_type == "RUNNING"
    assert report.active_slots == 1 and report.unrecorded_slots == 0
    # Nor from the board: the operator's release of that lease is refused.
    refused = api(lambda c: reclaim_lease(c, gcl_name(live.worker), live.record.lease_id))
    assert refused.error == "holder is alive" and active_slots(live.worker) == 1

    # Its normal end releases the slot and withdraws its record.
    assert live.finish() == 0
    assert active_slots(live.worker) == 0
    assert records(live.worker) == []
    # Marking a finished run Crashed is refused: it keeps its final state.
    mark = crash(live, "test")
    assert not mark.marked and mark.state_name == "Completed"


def test_a_run_without_process_is_flagged_stale_then_reclaimed(holders: Holders) -> None:
    other = holders.other
    other.kill()  # no worker to mark it Crashed: it stays Running
    # Seen from another machine, a Running run's slot is kept: nothing says it is dead.
    remote = reclaim_once(other.worker, check_processes=False)
    assert remote.released == () and not remote.holders[0].dead

    # By heartbeats (what a board on any machine sees): its last one, sent at its start,
    # is older than a short threshold, not than a long one.
    def stale(stale_after_s: float, check_processes: bool) -> dict[UUID, StaleRun]:
        report = api(lambda c: find_stale_runs(c, stale_after_s, check_processes=check_processes))
        assert report.errors == ()
        return {run.flow_run.id: run for run in report.stale}

    def beat_seen() -> bool:
        run = stale(0.5, False).get(other.flow_run_id)
        return run is not None and run.last_heartbeat is not None

    wait_for("its heartbeat to be flagged", beat_seen, 20)
    assert "last heartbeat" in stale(0.5, False)[other.flow_run_id].reason
    assert other.flow_run_id not in stale(3600, False)
    # From its own machine, its slot-holding process is seen gone: certain, at once.
    by_process = stale(3600, True)
    assert by_process[other.flow_run_id].process_gone
    assert holders.doomed_local.flow_run_id not in by_process  # Crashed, not Running

    # The operator marks it Crashed from the board, then releases its slot there.
    mark = crash(other, "no live process")
    assert mark.marked and mark.state_name == "Crashed"
    gcl = gcl_name(other.worker)
    release = api(lambda c: reclaim_lease(c, gcl, other.record.lease_id, check_processes=False))
    assert release.error is None and release.was_held is True
    assert release.reason == "its flow run is Crashed"
    assert active_slots(other.worker) == 0 and records(other.worker) == []
