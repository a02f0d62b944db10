"""Selecting and filtering the runs panel, driven with Pilot against a real Prefect server:
the selected queued run is the one `c` cancels, and `/` filter terms narrow the rows to
what the server holds for them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from prefect.client.schemas.objects import StateType
from textual.widgets import Input

from fakes.fake_nvml import FakeNvml
from gpuboard.core.batch import batch_tag
from gpuboard.core.board_source import BoardSource
from gpuboard.core.local_server import LocalServer
from gpuboard.core.nvml_source import NvmlSource
from gpuboard.core.prefect.poll_client import poll_client
from gpuboard.tui.app import GpuBoardApp
from gpuboard.tui.screens.confirm_dialog import ConfirmDialog
from gpuboard.tui.widgets.runs_panel import RunsPanel
from support.pilot import until
from support.seeding import create_pool, create_run, heartbeat

WIDE = (140, 40)


@dataclass
class Fleet:
    api_url: str
    pool: str
    deployment_id: uuid.UUID
    workers: tuple[str, str]
    runs: dict[str, str]  # what each seeded run is -> its id


async def seed(api_url: str) -> Fleet:
    """Runs of two workers and two batches, in several states. More finished runs than a
    refresh lists (10 failures, no completed at all): only the filter's read finds them."""
    tag = uuid.uuid4().hex[:6]
    pool, one, two = f"filter-{tag}", f"gpu-a-{tag}", f"gpu-b-{tag}"
    red, blue = f"red-{tag}", f"blue-{tag}"
    runs: dict[str, str] = {}
    async with poll_client(api_url) as client:
        await create_pool(client, pool)
        for worker in (one, two):
            await heartbeat(client, pool, worker)
        flow_id = await client.create_flow_from_name("process-image")
        deployment_id = await client.create_deployment(
            flow_id=flow_id,
            name=f"filter-{tag}",
            work_pool_name=pool,
            entrypoint="flows/process_image.py:process_image",
        )

        async def run(key: str, state: str, image: int, worker: str | None, batch: str) -> None:
            run_id = await create_run(client, deployment_id, state, image_id=image, worker=worker)
            await client.update_flow_run(run_id, tags=[batch_tag(batch)])
            runs[key] = str(run_id)

        await run("running-a", "Running", 1, one, red)
        await run("running-b", "Running", 2, two, blue)
        await run("failed-a", "Failed", 3, one, red)
        await run("queued-red", "Scheduled", 4, None, red)
        await run("queued-blue", "Scheduled", 5, None, blue)
        await run("completed-blue", "Completed", 6, two, blue)
    return Fleet(api_url, pool, deployment_id, (one, two), runs | {"red": red, "blue": blue})


@pytest.fixture
async def fleet(prefect_server: LocalServer) -> AsyncIterator[Fleet]:
    yield await seed(prefect_server.api_url)


def board(fleet: Fleet) -> GpuBoardApp:
    return GpuBoardApp(
        BoardSource(fleet.pool, fleet.api_url, nvml=NvmlSource(FakeNvml(init_error=12))),
        pool=fleet.pool,
        api_url=fleet.api_url,
        refresh=0.3,
    )


async def state_of(fleet: Fleet, run_id: str) -> StateType | None:
    async with poll_client(fleet.api_url) as client:
        run = await client.read_flow_run(uuid.UUID(run_id))
    return run.state_type


async def test_c_cancels_the_selected_queued_run(fleet: Fleet) -> None:
    app = board(fleet)
    async with app.run_test(size=WIDE) as pilot:
        panel = app.query_one(RunsPanel)
        await until(pilot, lambda: app.snapshot is not None and len(app.snapshot.next_queued) == 2)
        await pilot.press("tab")  # from the workers table to the runs panel
        assert app.focused is panel
        ids = [run.id for run in panel.shown_runs()]
        assert app.selected_run() is not None and app.selected_run().id == ids[0]
        target = fleet.runs["queued-blue"]
        for _ in range(ids.index(target)):
            await pilot.press("down")
        selected = app.selected_run()
        assert selected is not None and selected.id == target
        # The selection is kept by run id across refreshes.
        shown = app.snapshots_shown
        await until(pilot, lambda: app.snapshots_shown >= shown + 2)
        assert app.selected_run() is not None and app.selected_run().id == target
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        assert "image 5" in app.screen.question
        await pilot.press("y")
        for _ in range(100):
            if await state_of(fleet, target) == StateType.CANCELLED:
                break
            await pilot.pause(0.1)
    assert await state_of(fleet, target) == StateType.CANCELLED
    assert await state_of(fleet, fleet.runs["queued-red"]) == StateType.SCHEDULED


async def test_a_running_run_selected_leaves_c_to_the_picker(fleet: Fleet) -> None:
    from gpuboard.tui.screens.run_picker import QueuedRunPicker

    app = board(fleet)
    async with app.run_test(size=WIDE) as pilot:
        panel = app.query_one(RunsPanel)
        await until(pilot, lambda: app.snapshot is not None and len(app.snapshot.running) == 2)
        panel.focus()
        await pilot.pause()
        selected = app.selected_run()
        assert selected is not None and selected.state_type == "RUNNING"
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, QueuedRunPicker))


async def test_slash_filter_terms_narrow_the_rows(fleet: Fleet) -> None:
    app = board(fleet)
    one, two = fleet.workers
    runs = fleet.runs
    async with app.run_test(size=WIDE) as pilot:
        panel = app.query_one(RunsPanel)
        await until(pilot, lambda: app.snapshot is not None and len(app.snapshot.running) == 2)

        async def shown_after(typed: str, want: set[str]) -> None:
            field = app.query_one("#run-filter", Input)
            field.value = typed
            await until(pilot, lambda: {r.id for r in panel.shown_runs()} == want, timeout=15)

        await pilot.press("slash")
        field = app.query_one("#run-filter", Input)
        assert app.focused is field and field.display
        await shown_after("state:failed", {runs["failed-a"]})
        assert panel.border_title == "Runs · /state:failed"
        await shown_after(f"worker:{one}", {runs["running-a"], runs["failed-a"]})
        # A batch's runs, its completed one too: no refresh list holds it, the filter reads it.
        await shown_after(
            f"batch:{runs['blue']}",
            {runs["running-b"], runs["queued-blue"], runs["completed-blue"]},
        )
        await shown_after(f"batch:{runs['blue']} state:completed", {runs["completed-blue"]})
        await shown_after(f"batch:{runs['red']} state:queued", {runs["queued-red"]})
        await shown_after(f"worker:{two} state:running,failed", {runs["running-b"]})
        await shown_after("#5", {runs["queued-blue"]})  # free text: the image id
        await shown_after("no-such-run-anywhere", set())
        assert "no run matches no-such-run-anywhere" in str(panel.render())
        # Enter keeps the filter and gives the cursor to the panel; Escape clears it.
        await shown_after(
            f"batch:{runs['red']}", {runs["running-a"], runs["failed-a"], runs["queued-red"]}
        )
        await pilot.press("enter")
        assert app.focused is panel and not field.display
        assert panel.border_title == f"Runs · /batch:{runs['red']}"
        await pilot.press("escape")
        assert panel.border_title == "Runs"
        await until(pilot, lambda: len(panel.shown_runs()) == 5)  # 2 running, 1 failed, 2 queued
        # A term the filter does not know is refused, the last good filter stays.
        await pilot.press("slash")
        field.value = "colour:red"
        await pilot.pause()
        assert "unknown filter colour" in str(field.border_subtitle)
        assert not app.run_filter.active
