"""`gpu_slot()` against a real Prefect server: strict, paused at limit 0, holder recorded."""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.context import TaskRunContext

from gpuboard.core import slot as slot_module
from gpuboard.core.config import ConfigError, gcl_name
from gpuboard.core.local_server import LocalServer
from gpuboard.core.models import GclState
from gpuboard.core.prefect.client import sync_client
from gpuboard.core.prefect.slots import read_gcl_now
from gpuboard.core.slot import (
    HANDOFF_FIRST_S,
    HANDOFF_MAX_S,
    GpuSlotError,
    SlotGrant,
    gpu_slot,
    handoff_delay,
)

FAST_POLL = 0.2  # poll a paused GCL faster than the 1 s default to keep tests short


def new_worker(limit: int | None, active: bool = True) -> str:
    """A fresh worker id; with its `gpu:` GCL created unless `limit` is None."""
    worker = f"test-{uuid.uuid4().hex[:8]}"
    if limit is not None:
        with sync_client() as client:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=gcl_name(worker), limit=limit, active=active)
            )
    return worker


def update_gcl(worker: str, **changes: Any) -> None:
    with sync_client() as client:
        client.update_global_concurrency_limit(
            gcl_name(worker), GlobalConcurrencyLimitUpdate(**changes)
        )


def gcl(worker: str) -> GclState:
    state = read_gcl_now(gcl_name(worker))
    assert state is not None
    return state


class SlotThread(threading.Thread):
    """Enters `gpu_slot(worker)` in a thread (with this test's Prefect settings)."""

    def __init__(self, worker: str, hold_s: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.worker, self.hold_s = worker, hold_s
        self.grant: SlotGrant | None = None
        self.error: BaseException | None = None
        self.interval: tuple[float, float] | None = None
        self._context = contextvars.copy_context()

    def run(self) -> None:
        self._context.run(self._take)

    def _take(self) -> None:
        try:
            with gpu_slot(self.worker, poll_s=FAST_POLL) as grant:
                start = time.time()
                time.sleep(self.hold_s)
                self.interval = (start, time.time())
                self.grant = grant
        except BaseException as exc:
            self.error = exc


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_slot_is_held_inside_and_released_after(fleet_server: LocalServer) -> None:
    worker = new_worker(limit=2)
    with gpu_slot(worker) as grant:
        assert grant.name == f"gpu:{worker}" and 0 <= grant.wait_s < 5
        assert gcl(worker).active_slots == 1
    assert gcl(worker).active_slots == 0


def test_slot_is_released_when_the_work_fails(prefect_server: LocalServer) -> None:
    worker = new_worker(limit=1)
    with pytest.raises(ZeroDivisionError), gpu_slot(worker):
        _ = 1 / 0
    assert gcl(worker).active_slots == 0


def test_worker_comes_from_worker_id(
    prefect_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = new_worker(limit=1)
    monkeypatch.setenv("WORKER_ID", worker)
    with gpu_slot() as grant:
        assert grant.name == f"gpu:{worker}"
    monkeypatch.delenv("WORKER_ID")
    with pytest.raises(ConfigError, match="WORKER_ID is not set"), gpu_slot():
        pass


def test_missing_gcl_fails_and_says_how_to_create_it(prefect_server: LocalServer) -> None:
    worker = new_worker(limit=None)
    with pytest.raises(GpuSlotError) as raised, gpu_slot(worker):
        pytest.fail("ran without a GPU slot")
    message = str(raised.value)
    assert f"'gpu:{worker}' does not exist" in message
    assert f"gpuboard worker --id {worker} --gpu-slots N" in message
    assert f"prefect gcl create gpu:{worker} --limit N" in message


def test_disabled_gcl_fails_instead_of_running_unlimited(prefect_server: LocalServer) -> None:
    worker = new_worker(limit=3, active=False)
    with pytest.raises(GpuSlotError, match=r"is disabled.*prefect gcl enable"), gpu_slot(worker):
        pytest.fail("ran without a GPU slot")


def test_limit_zero_waits_until_raised(
    fleet_server: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    worker = new_worker(limit=0)
    caplog.set_level(logging.INFO, logger="gpuboard.core.slot")
    taker = SlotThread(worker)
    taker.start()
    time.sleep(3.0)
    assert taker.is_alive() and taker.error is None, taker.error  # paused, not failed
    assert gcl(worker).active_slots == 0
    update_gcl(worker, limit=1)
    taker.join(timeout=15)
    assert not taker.is_alive() and taker.error is None, taker.error
    assert taker.grant is not None and taker.grant.wait_s >= 3.0
    paused = [r for r in caplog.records if "is paused (limit 0)" in r.getMessage()]
    assert len(paused) == 1  # logged once, not at every poll


def test_pause_between_read_and_acquire_waits_too(
    prefect_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limit drops to 0 after gpu_slot read it as 1: Prefect answers 422; we wait."""
    worker = new_worker(limit=0)
    reads: list[GclState | None] = []

    def stale_first_read(name: str) -> GclState | None:
        state = read_gcl_now(name)
        if not reads and state is not None:  # the read that happened "before" the pause
            state = GclState(state.name, 1, state.active_slots, state.active)
        reads.append(state)
        return state

    monkeypatch.setattr(slot_module, "read_gcl_now", stale_first_read)
    taker = SlotThread(worker)
    taker.start()
    assert wait_for(lambda: len(reads) >= 3, timeout=10)  # it polls: it is waiting
    assert taker.is_alive() and taker.error is None, taker.error
    update_gcl(worker, limit=1)
    taker.join(timeout=15)
    assert taker.error is None and taker.grant is not None


def test_gcl_deleted_while_paused_fails(prefect_server: LocalServer) -> None:
    worker = new_worker(limit=0)
    taker = SlotThread(worker)
    taker.start()
    time.sleep(0.5)
    with sync_client() as client:
        client.delete_global_concurrency_limit_by_name(gcl_name(worker))
    taker.join(timeout=10)
    assert isinstance(taker.error, GpuSlotError) and "does not exist" in str(taker.error)


def test_one_slot_is_never_held_twice_at_once(fleet_server: LocalServer) -> None:
    worker = new_worker(limit=1)
    takers = [SlotThread(worker, hold_s=0.4) for _ in range(3)]
    for taker in takers:
        taker.start()
    for taker in takers:
        taker.join(timeout=30)
        assert taker.error is None and taker.interval is not None, taker.error
    intervals = sorted(t.interval for t in takers if t.interval)
    for (_, earlier_end), (later_start, _) in itertools.pairwise(intervals):
        assert later_start >= earlier_end


def test_the_task_run_is_recorded_as_holder(fleet_server: LocalServer) -> None:
    worker = new_worker(limit=1)
    leases = Path(fleet_server.home) / "concurrency_leases"

    @task(cache_policy=NO_CACHE, persist_result=False)
    def hold() -> tuple[str, list[dict[str, Any]]]:
        context = TaskRunContext.get()
        assert context is not None
        with gpu_slot(worker):
            holders = [
                json.loads(path.read_text())["metadata"].get("holder")
                for path in leases.glob("*.json")
                if path.name != "expirations.json"
            ]
        return str(context.task_run.id), holders

    @flow(persist_result=False)
    def holds() -> tuple[str, list[dict[str, Any]]]:
        return hold()

    task_run_id, holders = holds()
    assert {"type": "task_run", "id": task_run_id} in holders


def test_a_waiter_on_a_full_gcl_follows_a_pause_and_a_resume(fleet_server: LocalServer) -> None:
    # The waiter is refused (423, full) and asks again by itself; when the operator pauses
    # the GCL meanwhile it waits as paused, and takes the slot once the GCL is raised.
    worker = new_worker(limit=1)
    with gpu_slot(worker, poll_s=FAST_POLL):
        waiter = SlotThread(worker)
        waiter.start()
        time.sleep(0.6)  # refused at least once while full
        assert waiter.grant is None
        update_gcl(worker, limit=0)
    # Leaving the slot at limit 0 does not fail the work (Prefect cannot release it then:
    # the slot stays counted until its lease expires, see gpu_slot).
    time.sleep(0.6)
    assert waiter.grant is None and waiter.error is None  # paused: it waits, not fails
    update_gcl(worker, limit=2)  # room beside the slot still counted
    waiter.join(timeout=20)
    assert waiter.error is None and waiter.grant is not None


def test_pausing_while_a_slot_is_held_lets_the_work_finish(
    prefect_server: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    worker = new_worker(limit=1)
    finished = False
    with caplog.at_level(logging.WARNING), gpu_slot(worker, poll_s=FAST_POLL):
        update_gcl(worker, limit=0)
        finished = True
    assert finished
    assert "paused while held" in caplog.text


def test_a_waiter_on_a_full_gcl_fails_when_the_gcl_is_deleted(
    prefect_server: LocalServer,
) -> None:
    worker = new_worker(limit=1)
    with gpu_slot(worker, poll_s=FAST_POLL):
        waiter = SlotThread(worker)
        waiter.start()
        time.sleep(0.6)
        with sync_client() as client:
            client.delete_global_concurrency_limit_by_name(gcl_name(worker))
        waiter.join(timeout=20)
    assert isinstance(waiter.error, GpuSlotError) and "does not exist" in str(waiter.error)


def test_handoff_delay_grows_to_a_bound_with_jitter() -> None:
    low = [handoff_delay(n, jitter=lambda: 0.0) for n in range(12)]
    high = [handoff_delay(n, jitter=lambda: 1.0) for n in range(12)]
    assert low == sorted(low) and low[0] == HANDOFF_FIRST_S * 0.75
    assert max(high) == HANDOFF_MAX_S * 1.25  # a waiter asks at least every 1.25 s


@pytest.mark.parametrize("limit", [1, 2])
def test_a_waiter_takes_a_released_slot_and_the_server_counts_it(
    fleet_server: LocalServer, limit: int
) -> None:
    # Every slot is held; the waiter is refused (423) and asks again by itself. When one
    # holder leaves, the waiter gets that slot: the server counts `limit` slots again
    # while the waiter holds, and none once everyone is done.
    worker = new_worker(limit=limit)
    holders = [gpu_slot(worker, poll_s=FAST_POLL) for _ in range(limit)]
    for holder in holders:
        holder.__enter__()
    waiter = SlotThread(worker, hold_s=3.0)
    waiter.start()
    time.sleep(0.6)  # refused at least once while full
    assert waiter.interval is None and waiter.error is None
    assert gcl(worker).active_slots == limit
    holders[0].__exit__(None, None, None)
    assert wait_for(lambda: waiter.is_alive() and gcl(worker).active_slots == limit, 10)
    for holder in holders[1:]:
        holder.__exit__(None, None, None)
    waiter.join(timeout=20)
    assert waiter.error is None and waiter.grant is not None
    assert gcl(worker).active_slots == 0
