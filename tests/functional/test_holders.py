"""The holders screen (`h`) driven with Pilot against a real Prefect server: real leases of a
real GCL, published as `gpu_slot()` publishes them, held by real flow runs; one holder's
process is gone, one is this test process (alive). What the keys do is read back from the
server and the audit log; read-only must leave both untouched.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect.client.orchestration import PrefectClient
from textual.pilot import Pilot
from textual.widgets import DataTable

from fakes.fake_nvml import FakeNvml
from gpuboard.core.board_source import BoardSource
from gpuboard.core.local_server import LocalServer
from gpuboard.core.nvml_source import NvmlSource
from gpuboard.core.prefect.client import sync_client
from gpuboard.core.prefect.gcl import read_gcl
from gpuboard.core.prefect.leases import LeaseRecord, list_leases, publish_record
from gpuboard.core.prefect.poll_client import poll_client
from gpuboard.core.process_identity import this_process
from gpuboard.tui.app import GpuBoardApp
from gpuboard.tui.screens.confirm_dialog import ConfirmDialog
from gpuboard.tui.screens.holders import HoldersScreen
from support.pilot import until
from support.seeding import create_deployment, create_gcl, create_pool, create_run, heartbeat

WIDE = (140, 40)


@dataclass
class Fleet:
    api_url: str
    pool: str
    worker: str
    gcl: str
    dead: LeaseRecord  # its process is gone; its flow run still says Running
    alive: LeaseRecord  # held by this test process
    quiet_run: uuid.UUID  # Running, never sent a heartbeat, holds no slot
    stuck_run: uuid.UUID  # Pending, no process: its worker died after taking it


async def hold_slot(
    client: PrefectClient, fleet_gcl: str, flow_run_id: uuid.UUID, *, gone: bool
) -> LeaseRecord:
    """Take one slot of `fleet_gcl` with a real lease and publish its record; `gone`: as
    if held by a process that has exited since (this PID, another start time)."""
    response = await client.increment_concurrency_slots_with_lease(
        names=[fleet_gcl], slots=1, mode="concurrency", lease_duration=300
    )
    me = this_process()
    assert me.start_ticks is not None, "needs /proc (Linux)"
    process = dataclasses.replace(me, start_ticks=me.start_ticks + 1) if gone else me
    record = LeaseRecord(
        lease_id=uuid.UUID(response.json()["lease_id"]),
        gcl=fleet_gcl,
        task_run_id=None,
        flow_run_id=flow_run_id,
        acquired_at=1.0e9,
        process=process,
    )
    with sync_client() as sync:
        publish_record(sync, record)
    return record


@pytest.fixture
async def fleet(prefect_server: LocalServer) -> AsyncIterator[Fleet]:
    tag = uuid.uuid4().hex[:6]
    pool, worker = f"holders-{tag}", f"gpu-{tag}"
    gcl = f"gpu:{worker}"
    async with poll_client(prefect_server.api_url) as client:
        await create_pool(client, pool)
        await heartbeat(client, pool, worker)
        await create_gcl(client, gcl, 3)
        deployment = await create_deployment(client, pool)
        runs = [
            await create_run(client, deployment, "Running", image_id=i, worker=worker)
            for i in (1, 2, 3)
        ]
        stuck = await create_run(client, deployment, "Pending", image_id=4, worker=worker)
        dead = await hold_slot(client, gcl, runs[0], gone=True)
        alive = await hold_slot(client, gcl, runs[1], gone=False)
    yield Fleet(prefect_server.api_url, pool, worker, gcl, dead, alive, runs[2], stuck)


def board(fleet: Fleet, *, read_only: bool = False) -> GpuBoardApp:
    return GpuBoardApp(
        BoardSource(fleet.pool, fleet.api_url, nvml=NvmlSource(FakeNvml(init_error=12))),
        pool=fleet.pool,
        api_url=fleet.api_url,
        refresh=0.3,
        read_only=read_only,
        stale_after_s=0.5,  # the quiet run never sends a heartbeat
        pending_after_s=0.5,  # nor does the stuck one ever start
    )


async def open_holders(pilot: Pilot[int], app: GpuBoardApp) -> HoldersScreen:
    await until(pilot, lambda: app.snapshot is not None and bool(app.snapshot.workers))
    await pilot.press("h")
    await until(pilot, lambda: isinstance(app.screen, HoldersScreen))
    screen = app.screen
    assert isinstance(screen, HoldersScreen)
    await until(pilot, lambda: screen.view is not None and len(screen.view.stale.stale) == 3)
    return screen


def cells(screen: HoldersScreen, table_id: str) -> dict[str, str]:
    """Each row of a table, keyed by row key, as one line of text."""
    table = screen.query_one(table_id, DataTable)
    return {
        str(row.key.value): " | ".join(str(cell) for cell in table.get_row(row.key))
        for row in table.ordered_rows
    }


def move_to(screen: HoldersScreen, table_id: str, key: str) -> None:
    table = screen.query_one(table_id, DataTable)
    table.focus()
    table.move_cursor(row=table.get_row_index(key))


async def server_state(fleet: Fleet) -> tuple[int, set[uuid.UUID], dict[uuid.UUID, str]]:
    """The GCL's slots in use, its published leases, and the fleet's run states."""
    async with poll_client(fleet.api_url) as client:
        gcl = await read_gcl(client, fleet.gcl)
        leases = {record.lease_id for record in await list_leases(client, fleet.gcl)}
        runs = {
            run_id: (await client.read_flow_run(run_id)).state_name or ""
            for run_id in (
                fleet.dead.flow_run_id,
                fleet.alive.flow_run_id,
                fleet.quiet_run,
                fleet.stuck_run,
            )
            if run_id is not None
        }
    assert gcl is not None
    return gcl.active_slots, leases, runs


ServerState = tuple[int, set[uuid.UUID], dict[uuid.UUID, str]]


async def settled(
    pilot: Pilot[int], fleet: Fleet, done: Callable[[ServerState], bool]
) -> ServerState:
    """The server's state once `done` holds of it (or after 10 s, for the caller to assert)."""
    for _ in range(100):
        state = await server_state(fleet)
        if done(state):
            break
        await pilot.pause(0.1)
    return state


async def run_reaches(
    pilot: Pilot[int], fleet: Fleet, run_id: uuid.UUID | None, state_name: str
) -> dict[uuid.UUID, str]:
    """The fleet's run states once `run_id` is in `state_name` (or after 10 s)."""
    return (await settled(pilot, fleet, lambda state: state[2].get(run_id) == state_name))[2]


def audit(home: Path) -> list[dict[str, object]]:
    path = home / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_holders_are_judged_and_a_dead_holders_slot_released(
    fleet: Fleet, isolated_home: Path
) -> None:
    app = board(fleet)
    async with app.run_test(size=WIDE) as pilot:
        screen = await open_holders(pilot, app)
        dead_key = f"{fleet.gcl}|{fleet.dead.lease_id}"
        alive_key = f"{fleet.gcl}|{fleet.alive.lease_id}"
        holders = cells(screen, "#slot-holders")
        assert set(holders) == {dead_key, alive_key}
        assert "DEAD: its process" in holders[dead_key] and "Running" in holders[dead_key]
        assert "alive: its process is running" in holders[alive_key]
        stale = cells(screen, "#stale-runs")
        assert "its slot-holding process is gone" in stale[str(fleet.dead.flow_run_id)]
        assert "no heartbeat" in stale[str(fleet.quiet_run)]
        # No heartbeat either, but its slot-holding process is seen running: not stale.
        assert str(fleet.alive.flow_run_id) not in stale

        # A live holder's slot is not offered for release: no question, nothing changes.
        move_to(screen, "#slot-holders", alive_key)
        await pilot.press("x")
        await pilot.pause(0.3)
        assert not isinstance(app.screen, ConfirmDialog)
        assert (await server_state(fleet))[0] == 2

        # The dead one: asked, `n` declines, `y` releases exactly that lease.
        move_to(screen, "#slot-holders", dead_key)
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("n")
        await pilot.pause(0.3)
        assert (await server_state(fleet))[0] == 2
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("y")
        slots, leases, _ = await settled(pilot, fleet, lambda state: state[0] == 1)
        assert (slots, leases) == (1, {fleet.alive.lease_id})
        await until(pilot, lambda: dead_key not in cells(screen, "#slot-holders"))

        # The quiet run: marked Crashed from its table; the others keep their state.
        move_to(screen, "#stale-runs", str(fleet.quiet_run))
        await pilot.press("k")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("y")
        runs = await run_reaches(pilot, fleet, fleet.quiet_run, "Crashed")
        assert runs[fleet.quiet_run] == "Crashed"
        assert runs[fleet.alive.flow_run_id or uuid.uuid4()] == "Running"
        await until(pilot, lambda: str(fleet.quiet_run) not in cells(screen, "#stale-runs"))

        # The stuck Pending run: `k` is not for it; `s` puts it back to Scheduled.
        move_to(screen, "#stale-runs", str(fleet.stuck_run))
        await pilot.press("k")
        await pilot.pause(0.3)
        assert not isinstance(app.screen, ConfirmDialog)
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("y")
        runs = await run_reaches(pilot, fleet, fleet.stuck_run, "Scheduled")
        assert runs[fleet.stuck_run] == "Scheduled"

        # `K`: every stale run still shown (the dead holder's), after the count is asked.
        await pilot.press("K")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        dialog = app.screen
        assert isinstance(dialog, ConfirmDialog) and "all 1 stale Running runs" in dialog.question
        await pilot.press("y")
        runs = await run_reaches(pilot, fleet, fleet.dead.flow_run_id or uuid.uuid4(), "Crashed")
        assert runs[fleet.dead.flow_run_id or uuid.uuid4()] == "Crashed"
        assert runs[fleet.alive.flow_run_id or uuid.uuid4()] == "Running"

        # The board's keys are off on this screen: `+` changes no limit.
        await pilot.press("plus")
        await pilot.pause(0.5)
        async with poll_client(fleet.api_url) as client:
            gcl = await read_gcl(client, fleet.gcl)
        assert gcl is not None and gcl.limit == 3

        await pilot.press("escape")
        assert not isinstance(app.screen, HoldersScreen)

    entries = {entry["action"]: entry for entry in audit(isolated_home)}
    assert entries["lease.release"]["result"] == "ok"
    assert str(fleet.dead.lease_id) in str(entries["lease.release"]["target"])
    assert entries["lease.release"]["after"] == "slot back"
    crashed = [entry for entry in audit(isolated_home) if entry["action"] == "run.mark-crashed"]
    assert [entry["result"] for entry in crashed] == ["ok", "ok"]
    assert str(fleet.quiet_run) in str(crashed[0]["target"])
    assert str(fleet.dead.flow_run_id) in str(crashed[1]["target"])
    assert entries["run.reschedule"]["result"] == "ok"
    assert entries["run.reschedule"]["after"] == "Scheduled"


async def test_read_only_holders_screen_changes_nothing(fleet: Fleet, isolated_home: Path) -> None:
    before = await server_state(fleet)
    app = board(fleet, read_only=True)
    async with app.run_test(size=WIDE) as pilot:
        screen = await open_holders(pilot, app)
        move_to(screen, "#slot-holders", f"{fleet.gcl}|{fleet.dead.lease_id}")
        await pilot.press("x")
        move_to(screen, "#stale-runs", str(fleet.quiet_run))
        await pilot.press("k")
        await pilot.press("K")
        move_to(screen, "#stale-runs", str(fleet.stuck_run))
        await pilot.press("s")
        await pilot.pause(0.5)
        assert not isinstance(app.screen, ConfirmDialog)
        # The palette's way in is refused too (the actions check read-only themselves).
        screen.action_release()
        screen.action_mark_crashed()
        screen.action_mark_all_crashed()
        screen.action_reschedule()
        await pilot.pause(0.3)
        assert not isinstance(app.screen, ConfirmDialog)
    assert await server_state(fleet) == before
    assert audit(isolated_home) == []
