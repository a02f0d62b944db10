"""Key `d` on the workers table, driven with Pilot against a real Prefect server: it asks
first, saying what will happen, then drains the selected worker on the server (and `d`
again undrains it); the Status cell says DRAINED; refused read-only."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from textual.pilot import Pilot

from fakes.fake_nvml import FakeNvml
from gpuboard.core.board_source import BoardSource
from gpuboard.core.local_server import LocalServer
from gpuboard.core.nvml_source import NvmlSource
from gpuboard.core.prefect.drain_flags import is_drained
from gpuboard.core.prefect.poll_client import poll_client
from gpuboard.tui.app import GpuBoardApp
from gpuboard.tui.screens.confirm_dialog import ConfirmDialog
from gpuboard.tui.widgets.workers_table import WorkersTable
from support.pilot import until
from support.seeding import create_gcl, create_pool, heartbeat

WIDE = (140, 40)


@dataclass
class Fleet:
    api_url: str
    pool: str
    first: str
    second: str


@pytest.fixture
async def fleet(prefect_server: LocalServer) -> AsyncIterator[Fleet]:
    tag = uuid.uuid4().hex[:6]
    pool, first, second = f"drainkey-{tag}", f"a-{tag}", f"b-{tag}"
    async with poll_client(prefect_server.api_url) as client:
        await create_pool(client, pool)
        for worker in (first, second):
            await heartbeat(client, pool, worker)
            await create_gcl(client, f"gpu:{worker}", 2)
    yield Fleet(prefect_server.api_url, pool, first, second)


def board(fleet: Fleet, *, read_only: bool = False) -> GpuBoardApp:
    return GpuBoardApp(
        BoardSource(fleet.pool, fleet.api_url, nvml=NvmlSource(FakeNvml(init_error=12))),
        pool=fleet.pool,
        api_url=fleet.api_url,
        refresh=0.3,
        read_only=read_only,
    )


async def select(pilot: Pilot[int], app: GpuBoardApp, worker: str) -> None:
    table = app.query_one(WorkersTable)
    await until(pilot, lambda: table.row_count >= 2)
    table.focus()
    table.move_cursor(row=table.get_row_index(worker))
    await pilot.pause()
    assert table.selected_worker == worker


async def drained_on_server(fleet: Fleet, worker: str) -> bool:
    async with poll_client(fleet.api_url) as client:
        return await is_drained(client, worker)


async def eventually_drained(pilot: Pilot[int], fleet: Fleet, worker: str, want: bool) -> None:
    for _ in range(100):
        if await drained_on_server(fleet, worker) == want:
            return
        await pilot.pause(0.1)
    raise AssertionError(f"{worker} drained on the server never became {want}")


async def test_d_drains_then_undrains_the_selected_worker(fleet: Fleet) -> None:
    app = board(fleet)
    async with app.run_test(size=WIDE) as pilot:
        await select(pilot, app, fleet.first)
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        question = app.screen.question  # type: ignore[attr-defined]
        assert f"Drain {fleet.first}?" in question and f"go to {fleet.second}" in question
        await pilot.press("n")  # declined: nothing changes
        await pilot.pause(0.3)
        assert not await drained_on_server(fleet, fleet.first)

        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("y")
        await eventually_drained(pilot, fleet, fleet.first, True)
        assert not await drained_on_server(fleet, fleet.second)
        table = app.query_one(WorkersTable)
        await until(pilot, lambda: str(table.get_cell(fleet.first, "status")) == "DRAINED")

        await select(pilot, app, fleet.first)
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        assert f"Undrain {fleet.first}?" in app.screen.question  # type: ignore[attr-defined]
        await pilot.press("y")
        await eventually_drained(pilot, fleet, fleet.first, False)
        await until(pilot, lambda: str(table.get_cell(fleet.first, "status")) != "DRAINED")


async def test_d_is_refused_read_only(fleet: Fleet) -> None:
    app = board(fleet, read_only=True)
    async with app.run_test(size=WIDE) as pilot:
        await select(pilot, app, fleet.first)
        await pilot.press("d")
        await pilot.pause(0.3)
        assert not isinstance(app.screen, ConfirmDialog)
        assert app.check_action("drain", ()) is None  # greyed in the footer
        commands = {c.title: c for c in app.get_system_commands(app.screen)}
        commands["Drain"].callback()  # from the palette: a refusal, not the action
        await pilot.pause(0.3)
        assert any("read-only" in n.message for n in app._notifications)
    assert not await drained_on_server(fleet, fleet.first)
