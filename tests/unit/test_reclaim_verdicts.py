"""Which slot holders the reclaimer judges dead, from run states and process checks."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from gpuboard.core.prefect.leases import HolderStates, LeaseRecord, RunState
from gpuboard.core.reclaim import Holder, ReclaimReport, Release, judge

FLOW_RUN, TASK_RUN = uuid.uuid4(), uuid.uuid4()
RECORD = LeaseRecord(
    lease_id=uuid.uuid4(),
    gcl="gpu:w1",
    task_run_id=TASK_RUN,
    flow_run_id=FLOW_RUN,
    acquired_at=0.0,
    process=None,
)


def states(flow: str | None, task: str | None = "RUNNING") -> HolderStates:
    def run(run_id: uuid.UUID, state_type: str) -> RunState:
        return RunState(run_id, "run", state_type, state_type.title(), None)

    return HolderStates(
        flow_runs={} if flow is None else {FLOW_RUN: run(FLOW_RUN, flow)},
        task_runs={} if task is None else {TASK_RUN: run(TASK_RUN, task)},
    )


@pytest.mark.parametrize("flow_state", ["CRASHED", "CANCELLED", "FAILED", "COMPLETED"])
def test_a_finished_flow_run_no_longer_holds_its_slot(flow_state: str) -> None:
    dead, reason = judge(RECORD, states(flow_state), process_running=None)
    assert dead and flow_state.title() in reason


def test_a_deleted_flow_run_no_longer_holds_its_slot() -> None:
    assert judge(RECORD, states(None), process_running=None) == (
        True,
        "its flow run no longer exists",
    )


def test_a_finished_task_run_in_a_running_flow_run_no_longer_holds_its_slot() -> None:
    dead, reason = judge(RECORD, states("RUNNING", "COMPLETED"), process_running=None)
    assert dead and "task run" in reason


@pytest.mark.parametrize("flow_state", ["RUNNING", "PENDING", "CANCELLING", "PAUSED"])
def test_an_unfinished_flow_run_keeps_its_slot(flow_state: str) -> None:
    # A task run the server has not recorded yet (Prefect creates them from events) is
    # no reason either: only the flow run is authoritative about existence.
    assert not judge(RECORD, states(flow_state, task=None), process_running=None)[0]


def test_the_process_check_wins_over_run_states() -> None:
    # Seen running: it may still use the GPU, whatever its (possibly wrong) state says.
    assert not judge(RECORD, states("CRASHED"), process_running=True)[0]
    # Seen gone: its lease can never be renewed or released by it again.
    assert judge(RECORD, states("RUNNING"), process_running=False)[0]


def test_a_holder_that_cannot_be_judged_is_kept() -> None:
    anonymous = LeaseRecord(RECORD.lease_id, "gpu:w1", None, None, 0.0, None)
    assert not judge(anonymous, states(None, None), process_running=None)[0]


def test_unrecorded_slots_are_those_held_beyond_the_records_still_holding() -> None:
    live = Holder(RECORD, None, None, None, dead=False, reason="")
    dead_record = dataclasses.replace(RECORD, lease_id=uuid.uuid4())
    dead = Holder(dead_record, None, None, None, dead=True, reason="")
    # A dry run (the board): the dead holder's slot is still counted, and recorded.
    report = ReclaimReport("gpu:w1", 0.0, (live, dead), (), limit=4, active_slots=3)
    assert report.unrecorded_slots == 1
    # The pass released the dead holder's lease: its slot is no longer among those read.
    release = Release(dead_record.lease_id, None, "dead", was_held=True)
    report = ReclaimReport("gpu:w1", 0.0, (live, dead), (release,), limit=4, active_slots=2)
    assert report.unrecorded_slots == 1
    failed = dataclasses.replace(release, error="HTTP 500")
    report = ReclaimReport("gpu:w1", 0.0, (live, dead), (failed,), limit=4, active_slots=2)
    assert report.unrecorded_slots == 0
