"""The board as an operator console, driven with Pilot against a real Prefect server.

Every key is pressed as an operator would and the result is read back from the server:
limits (`+`, `-`, `=`, `n`), batches (`b`), cancelling (`c`, `C`), and read-only mode,
where every one of them must leave the server as it was.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from textual.pilot import Pilot
from textual.widgets import Input

from fakes.fake_nvml import FakeNvml
from gpuboard.core.board_source import BoardSource
from gpuboard.core.local_server import LocalServer
from gpuboard.core.nvml_source import NvmlSource
from gpuboard.core.prefect.gcl import read_gcl
from gpuboard.core.prefect.poll_client import poll_client
from gpuboard.tui.app import GpuBoardApp
from gpuboard.tui.screens.batch_dialog import BatchDialog
from gpuboard.tui.screens.confirm_dialog import ConfirmDialog
from gpuboard.tui.screens.number_dialog import LimitDialog
from gpuboard.tui.screens.run_picker import QueuedRunPicker
from gpuboard.tui.widgets.workers_table import WorkersTable
from support.pilot import until
from support.seeding import create_gcl, create_pool, create_run, heartbeat

WIDE = (140, 40)


@dataclass
class Console:
    api_url: str
    pool: str
    busy: str  # GCL limit 2
    bare: str  # no GCL
    deployment: str  # "process-image/<name>"
    deployment_id: uuid.UUID


@pytest.fixture
async def console(prefect_server: LocalServer) -> AsyncIterator[Console]:
    tag = uuid.uuid4().hex[:6]
    pool, busy, bare = f"console-{tag}", f"busy-{tag}", f"bare-{tag}"
    name = f"console-{tag}"
    async with poll_client(prefect_server.api_url) as client:
        await create_pool(client, pool)
        for worker in (busy, bare):
            await heartbeat(client, pool, worker)
        await create_gcl(client, f"gpu:{busy}", 2)
        flow_id = await client.create_flow_from_name("process-image")
        deployment_id = await client.create_deployment(
            flow_id=flow_id,
            name=name,
            work_pool_name=pool,
            entrypoint="flows/process_image.py:process_image",
        )
    yield Console(prefect_server.api_url, pool, busy, bare, f"process-image/{name}", deployment_id)


def board(console: Console, *, read_only: bool = False, refresh: float = 0.3) -> GpuBoardApp:
    return GpuBoardApp(
        BoardSource(console.pool, console.api_url, nvml=NvmlSource(FakeNvml(init_error=12))),
        pool=console.pool,
        api_url=console.api_url,
        refresh=refresh,
        read_only=read_only,
        deployment=console.deployment,
    )


async def select(pilot: Pilot[int], app: GpuBoardApp, worker: str) -> None:
    await until(pilot, lambda: app.snapshot is not None and bool(app.snapshot.workers))
    table = app.query_one(WorkersTable)
    await until(pilot, lambda: table.row_count >= 2)
    table.focus()
    table.move_cursor(row=table.get_row_index(worker))
    await pilot.pause()
    assert table.selected_worker == worker


async def server_limit(console: Console, worker: str) -> int | None:
    async with poll_client(console.api_url) as client:
        gcl = await read_gcl(client, f"gpu:{worker}")
    return None if gcl is None else gcl.limit


async def eventually_limit(pilot: Pilot[int], console: Console, worker: str, want: int) -> None:
    for _ in range(100):
        if await server_limit(console, worker) == want:
            return
        await pilot.pause(0.1)
    raise AssertionError(
        f"gpu:{worker} never reached {want}: {await server_limit(console, worker)}"
    )


def slots_cell(app: GpuBoardApp, worker: str) -> str:
    return str(app.query_one(WorkersTable).get_cell(worker, "slots"))


async def runs_of(console: Console, *states: StateType) -> list[dict[str, object]]:
    async with poll_client(console.api_url) as client:
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[console.deployment_id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(states)))
            )
            if states
            else None,
        )
    return [dict(r.parameters, id=r.id, state=r.state_type) for r in runs]


async def type_into(pilot: Pilot[int], field: Input, text: str) -> None:
    field.value = ""
    field.focus()
    await pilot.press(*text) if text else None
    await pilot.pause()


# -- limits ------------------------------------------------------------------------------


async def test_plus_minus_and_dialog_change_the_servers_limit(console: Console) -> None:
    app = board(console)
    async with app.run_test(size=WIDE) as pilot:
        await select(pilot, app, console.busy)
        await pilot.press("plus")
        # Shown at once, before the server has answered.
        assert slots_cell(app, console.busy).endswith("/3")
        await eventually_limit(pilot, console, console.busy, 3)
        await pilot.press("plus", "plus")
        await eventually_limit(pilot, console, console.busy, 5)
        await pilot.press("minus")
        await eventually_limit(pilot, console, console.busy, 4)
        await pilot.press("equals_sign")
        dialog = app.screen
        assert isinstance(dialog, LimitDialog)
        field = dialog.query_one(Input)
        assert field.value == "4"  # pre-filled with the current limit
        await type_into(pilot, field, "7")
        await pilot.press("enter")
        await eventually_limit(pilot, console, console.busy, 7)
        # The server's value, on screen once confirmed by a read.
        await until(pilot, lambda: slots_cell(app, console.busy).endswith("/7"))
        await pilot.press("equals_sign")
        await type_into(pilot, app.screen.query_one(Input), "0")
        await pilot.press("enter")
        await eventually_limit(pilot, console, console.busy, 0)
        await until(pilot, lambda: slots_cell(app, console.busy).startswith("PAUSED"))


async def test_invalid_limits_never_reach_the_server(console: Console) -> None:
    app = board(console)
    async with app.run_test(size=WIDE) as pilot:
        await select(pilot, app, console.busy)
        await pilot.press("equals_sign")
        dialog = app.screen
        assert isinstance(dialog, LimitDialog)
        for bad, reason in (
            ("abc", "not a whole number"),
            ("-1", "not a whole number"),
            ("10001", "between 0 and 10000"),
        ):
            await type_into(pilot, dialog.query_one(Input), bad)
            await pilot.press("enter")
            assert app.screen is dialog  # still open: nothing was applied
            assert reason in str(dialog.query_one("#reason").render())
        await pilot.press("escape")
        await pilot.pause(0.5)
    assert await server_limit(console, console.busy) == 2


async def test_a_rejected_change_is_reverted_with_the_reason(console: Console) -> None:
    app = board(console, refresh=120)  # one read at start: the board cannot see what follows
    async with app.run_test(size=WIDE) as pilot:
        await select(pilot, app, console.busy)
        # The GCL goes away behind the board's back: the next change is refused.
        async with poll_client(console.api_url) as client:
            await client.delete_global_concurrency_limit_by_name(f"gpu:{console.busy}")
        await pilot.press("plus")
        await until(pilot, lambda: any("not changed" in n.message for n in app._notifications))
        messages = [n.message for n in app._notifications]
        assert any(f"has no GCL gpu:{console.busy}" in m for m in messages), messages
        assert slots_cell(app, console.busy).endswith("/2")  # reverted
        assert await server_limit(console, console.busy) is None


async def test_n_gives_a_worker_without_a_gcl_one(console: Console, isolated_home: Path) -> None:
    app = board(console)
    async with app.run_test(size=WIDE) as pilot:
        await select(pilot, app, console.bare)
        assert slots_cell(app, console.bare) == "UNPROTECTED"
        await pilot.press("n")
        await type_into(pilot, app.screen.query_one(Input), "3")
        await pilot.press("enter")
        await eventually_limit(pilot, console, console.bare, 3)
        await until(pilot, lambda: slots_cell(app, console.bare).endswith("0/3"))
    actions = [json.loads(line) for line in (isolated_home / "audit.log").read_text().splitlines()]
    assert any(
        a["action"] == "gcl.create" and a["target"] == f"gpu:{console.bare}" for a in actions
    )


# -- batches -----------------------------------------------------------------------------


async def open_batch(pilot: Pilot[int], app: GpuBoardApp) -> BatchDialog:
    await until(pilot, lambda: app.snapshot is not None)
    await pilot.press("b")
    await until(pilot, lambda: isinstance(app.screen, BatchDialog))
    assert isinstance(app.screen, BatchDialog)
    return app.screen


async def test_batch_dialog_creates_exactly_the_ids_and_never_twice(console: Console) -> None:
    app = board(console)
    async with app.run_test(size=WIDE) as pilot:
        dialog = await open_batch(pilot, app)
        await type_into(pilot, dialog.query_one("#ids", Input), "1-12")
        assert "will submit 12 run(s), ids 1 … 12" in str(dialog.query_one("#preview").render())
        await pilot.click("#submit")
        await until(pilot, lambda: dialog.report is not None, timeout=60)
        assert dialog.report is not None and len(dialog.report.created) == 12
        runs = await runs_of(console)
        assert sorted(r["image_id"] for r in runs) == list(range(1, 13))
        # The same batch again: nothing new, every id reported as existing.
        dialog.report = None
        await pilot.click("#submit")
        await until(pilot, lambda: dialog.report is not None, timeout=60)
        assert dialog.report is not None
        assert (len(dialog.report.created), len(dialog.report.existing)) == (0, 12)
        assert "existing: 12" in str(dialog.query_one("#report").render())
        await pilot.press("escape")
    assert len(await runs_of(console)) == 12


async def test_invalid_batch_inputs_never_reach_the_server(console: Console) -> None:
    app = board(console)
    async with app.run_test(size=WIDE) as pilot:
        dialog = await open_batch(pilot, app)
        cases = [
            ("#ids", "5-2", "runs backwards"),
            ("#ids", "x", "is not an id or a range"),
            ("#count", "0", "count must be between 1"),
            ("#count", "abc", "not a whole number"),
            ("#source", "file:///data/one.png", "no {image_id} placeholder"),
            ("#tags", "batch:x", "gpuboard's own"),
        ]
        for field_id, bad, reason in cases:
            field = dialog.query_one(field_id, Input)
            before = field.value
            await type_into(pilot, field, bad)
            assert reason in str(dialog.query_one("#preview").render()), field_id
            assert dialog.query_one("#submit").disabled
            await pilot.press("enter")  # Enter submits only a valid batch
            await type_into(pilot, field, before)
        await pilot.pause(0.5)
    assert await runs_of(console) == []


# -- cancelling ----------------------------------------------------------------------------


async def test_c_cancels_the_picked_queued_run_and_C_all_after_confirming(console: Console) -> None:
    async with poll_client(console.api_url) as client:
        for image_id in range(1, 5):
            await create_run(client, console.deployment_id, "Scheduled", image_id=image_id)
    app = board(console)
    async with app.run_test(size=WIDE) as pilot:
        await until(pilot, lambda: app.snapshot is not None and len(app.snapshot.next_queued) == 4)
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, QueuedRunPicker))
        picked = app.screen.runs[0]
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("y")
        for _ in range(100):
            if len(await runs_of(console, StateType.CANCELLED)) == 1:
                break
            await pilot.pause(0.1)
        cancelled = await runs_of(console, StateType.CANCELLED)
        assert [str(r["id"]) for r in cancelled] == [picked.id]
        # C: asks with the number first; "n" leaves everything queued.
        await pilot.press("C")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        assert "Cancel all 3 queued runs" in app.screen.question
        await pilot.press("n")
        await pilot.pause(0.5)
        assert len(await runs_of(console, StateType.SCHEDULED)) == 3
        await pilot.press("C")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("y")
        for _ in range(100):
            if not await runs_of(console, StateType.SCHEDULED):
                break
            await pilot.pause(0.1)
    assert len(await runs_of(console, StateType.CANCELLED)) == 4


# -- read-only ---------------------------------------------------------------------------


async def test_read_only_refuses_every_write(console: Console) -> None:
    async with poll_client(console.api_url) as client:
        await create_run(client, console.deployment_id, "Scheduled", image_id=1)
    app = board(console, read_only=True)
    async with app.run_test(size=WIDE) as pilot:
        await select(pilot, app, console.busy)
        for key in ("plus", "minus", "equals_sign", "b", "c", "C"):
            await pilot.press(key)
            await pilot.pause(0.2)
            assert not isinstance(
                app.screen, (LimitDialog, BatchDialog, ConfirmDialog, QueuedRunPicker)
            )
        await select(pilot, app, console.bare)
        await pilot.press("n")
        await pilot.pause(0.3)
        assert not isinstance(app.screen, LimitDialog)
        # Greyed in the footer: Textual disables a binding whose check_action is None.
        for action in app.WRITE_ACTIONS:
            assert app.check_action(action, ()) is None
        # From the palette: a refusal, not the action.
        commands = {c.title: c for c in app.get_system_commands(app.screen)}
        commands["Up"].callback()
        await pilot.pause(0.3)
        assert any("read-only" in n.message for n in app._notifications)
        # The dialog itself refuses too (a second guard).
        dialog = BatchDialog(api_url=console.api_url, deployment=console.deployment, read_only=True)
        await app.push_screen(dialog)
        await pilot.pause()
        dialog.submit()
        await pilot.pause(0.5)
    assert await server_limit(console, console.busy) == 2
    assert await server_limit(console, console.bare) is None
    runs = await runs_of(console)
    assert len(runs) == 1 and runs[0]["state"] == StateType.SCHEDULED
