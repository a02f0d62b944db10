"""The dashboard driven with Textual's Pilot against a real Prefect server seeded with a fleet.

Only NVML is faked. Every number asserted on screen was written to the server first, and
the server's own state is read back where the board derives a number from it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from textual.pilot import Pilot

from fakes.fake_nvml import GIB, FakeGpu, FakeNvml
from gpuboard.core.board_source import BoardSource
from gpuboard.core.gpu_events import publish_reading
from gpuboard.core.local_server import LocalServer
from gpuboard.core.nvml_source import NvmlSource
from gpuboard.core.prefect.gcl import read_gcl, set_gcl_limit
from gpuboard.core.prefect.poll_client import poll_client
from gpuboard.tui.app import GpuBoardApp
from gpuboard.tui.screens.help import HelpScreen
from gpuboard.tui.widgets.gpu_panel import GpuPanel
from gpuboard.tui.widgets.runs_panel import RunsPanel
from gpuboard.tui.widgets.workers_table import WorkersTable
from support.pilot import until
from support.seeding import (
    create_deployment,
    create_gcl,
    create_pool,
    create_run,
    heartbeat,
    start_task,
)

WIDE = (140, 40)


@dataclass
class Fleet:
    api_url: str
    pool: str
    busy: str  # limit 4, 3 slots in use, 5 runs in the GPU step, 1 downloading, 1 saving
    paused: str  # limit 0, one run waiting
    bare: str  # no GCL: unprotected
    disabled: str  # a disabled GCL: unprotected too
    gone: str  # a gpu:* GCL with no worker in the pool
    pid_run: tuple[int, str]  # a running run's infrastructure PID and name


@pytest.fixture(scope="module")
async def fleet(prefect_server: LocalServer) -> AsyncIterator[Fleet]:
    tag = uuid.uuid4().hex[:5]
    fleet = Fleet(
        api_url=prefect_server.api_url,
        pool=f"board-{tag}",
        busy=f"busy-{tag}",
        paused=f"paused-{tag}",
        bare=f"bare-{tag}",
        disabled=f"off-{tag}",
        gone=f"gone-{tag}",
        pid_run=(0, ""),
    )
    async with poll_client(prefect_server.api_url) as client:
        await create_pool(client, fleet.pool)
        for worker in (fleet.busy, fleet.paused, fleet.bare, fleet.disabled):
            await heartbeat(client, fleet.pool, worker)
        await create_gcl(client, f"gpu:{fleet.busy}", 4, active_slots=3)
        await create_gcl(client, f"gpu:{fleet.paused}", 0)
        await create_gcl(client, f"gpu:{fleet.disabled}", 2, active=False)
        await create_gcl(client, f"gpu:{fleet.gone}", 2)
        deployment = await create_deployment(client, fleet.pool)
        steps = {
            fleet.busy: ["run_ml_model"] * 5 + ["download_image", "save_results"],
            fleet.paused: ["run_ml_model"],
            fleet.bare: ["run_ml_model", "load_model"],
        }
        image_id = 1
        for worker, tasks in steps.items():
            for task in tasks:
                run = await create_run(
                    client,
                    deployment,
                    "Running",
                    image_id=image_id,
                    worker=worker,
                    infrastructure_pid=5000 + image_id,
                )
                await start_task(client, run, task)
                if image_id == 3:
                    fleet.pid_run = (5003, (await client.read_flow_run(run)).name)
                image_id += 1
        for state in ["Scheduled", "Scheduled", "Late", "Pending", "Pending"]:
            await create_run(client, deployment, state, image_id=image_id)
            image_id += 1
        for _ in range(4):
            await create_run(client, deployment, "Completed", image_id=image_id)
            image_id += 1
        await create_run(client, deployment, "Failed", image_id=101, message="CUDA out of memory")
        await create_run(client, deployment, "Crashed", image_id=102, message="exit -9")
    yield fleet


def board(
    fleet_or_url: Fleet | str, pool: str | None = None, nvml: NvmlSource | None = None
) -> GpuBoardApp:
    api_url = fleet_or_url.api_url if isinstance(fleet_or_url, Fleet) else fleet_or_url
    pool = pool or (fleet_or_url.pool if isinstance(fleet_or_url, Fleet) else "ml-pool")
    nvml = nvml or NvmlSource(FakeNvml(init_error=12), host="board-host")
    return GpuBoardApp(
        BoardSource(pool, api_url, nvml=nvml), pool=pool, api_url=api_url, refresh=0.3
    )


def row(app: GpuBoardApp, worker: str) -> dict[str, str]:
    table = app.query_one(WorkersTable)
    cells = table.get_row(worker)
    return {
        str(column.key.value): str(cell)
        for column, cell in zip(table.ordered_columns, cells, strict=True)
    }


def has_data(app: GpuBoardApp) -> bool:
    return app.snapshot is not None and app.snapshot.prefect_read_at is not None


async def test_workers_panel_shows_slots_steps_and_protection(fleet: Fleet) -> None:
    app = board(fleet)
    async with app.run_test(size=WIDE) as pilot:
        await until(pilot, lambda: has_data(app))
        busy = row(app, fleet.busy)
        assert busy["slots"].strip().endswith("3/4")
        assert (busy["waiting"], busy["download"], busy["infer"], busy["save"]) == (
            "2",
            "1",
            "3",
            "1",
        )
        assert busy["status"].startswith("●")
        paused = row(app, fleet.paused)
        assert paused["slots"] == "PAUSED" and paused["waiting"] == "1" and paused["infer"] == "0"
        assert row(app, fleet.bare)["slots"] == "UNPROTECTED"
        assert row(app, fleet.bare)["infer"] == "1"  # no GCL: nothing makes it wait
        assert row(app, fleet.bare)["host"] == "—"  # a plain worker: no inference host
        assert row(app, fleet.disabled)["slots"] == "UNPROTECTED"
        gone = row(app, fleet.gone)
        assert gone["status"] == "gone" and gone["slots"].strip().endswith("0/2")
        # The slots on screen are the server's.
        async with poll_client(fleet.api_url) as client:
            gcl = await read_gcl(client, f"gpu:{fleet.busy}")
        assert gcl is not None and (gcl.active_slots, gcl.limit) == (3, 4)
        # The table is the selectable list that the operator's actions will act on.
        table = app.query_one(WorkersTable)
        table.focus()
        table.move_cursor(row=table.get_row_index(fleet.paused))
        assert table.selected_worker == fleet.paused


async def test_runs_panel_counts_and_lists(fleet: Fleet) -> None:
    app = board(fleet)
    async with app.run_test(size=WIDE) as pilot:
        await until(pilot, lambda: has_data(app))
        snapshot = app.snapshot
        assert snapshot is not None and snapshot.runs is not None
        runs = snapshot.runs
        # The server's late-runs service may turn a Scheduled run Late while this runs.
        assert (runs.scheduled + runs.late, runs.pending, runs.queued) == (3, 2, 5)
        assert (runs.running, runs.completed, runs.failed, runs.crashed) == (10, 4, 2, 1)
        panel = app.query_one(RunsPanel)
        text = "\n".join(line.plain for line in panel.lines(140, 40))
        assert "queued 5" in text and "running 10" in text and "✓ 4" in text and "✗ 2" in text
        assert "Running (10)" in text and "Failed, last hour (2)" in text
        assert "CUDA out of memory" in text and "exit -9" in text
        running = {r.image_id: r for r in snapshot.running}
        assert running["6"].step == "download" and running["7"].step == "save"
        assert running["1"].step == "gpu"  # busy: 3 of its 5 GPU steps hold a slot
        assert running["8"].step == "waiting"  # paused: its one GPU step waits
        assert running["9"].step == "infer"  # no GCL: it runs
        assert running["10"].step == "load"
        assert all(r.worker for r in snapshot.running)
        assert [r.image_id for r in snapshot.failures] in (["102", "101"], ["101", "102"])
        assert {r.state_name for r in snapshot.next_queued} <= {"Scheduled", "Late", "Pending"}
        assert len(snapshot.next_queued) == 5


async def test_gpu_panel_and_advisor_from_nvml(fleet: Fleet) -> None:
    """A worker's published reading and the board's own NVML, both from the fake."""
    pid, run_name = fleet.pid_run
    worker_gpu = FakeNvml(
        [
            FakeGpu(
                name="NVIDIA H100 80GB HBM3",
                uuid="GPU-busy",
                memory_total=80 * GIB,
                memory_used=31 * GIB,
                utilization=87,
                # Two inference processes the worker machine mapped itself, one mapped by
                # the board from the run's infrastructure PID, one that is not a run.
                processes=[(9001, 6 * GIB), (9002, 7 * GIB), (pid, 5 * GIB), (42, 1 * GIB)],
            )
        ]
    )
    worker_nvml = NvmlSource(
        worker_gpu, host=f"node-{fleet.busy}", flow_run_of={9001: "r-1", 9002: "r-2"}.get
    )
    async with poll_client(fleet.api_url) as client:
        await publish_reading(client, fleet.busy, worker_nvml.read())
    local = NvmlSource(
        FakeNvml([FakeGpu(name="NVIDIA L4", uuid="GPU-here", memory_total=24 * GIB)]),
        host="board-host",
        flow_run_of=lambda _: None,
    )
    app = board(fleet, nvml=local)
    async with app.run_test(size=WIDE) as pilot:
        # The server persists events in batches: the reading shows within seconds.
        await until(pilot, lambda: has_data(app) and bool(row(app, fleet.busy)["fits"] != "—"))
        text = "\n".join(line.plain for line in app.query_one(GpuPanel).lines(140))
        assert "board-host (this machine)" in text and "NVIDIA L4" in text
        assert f"node-{fleet.busy} · {fleet.busy}" in text
        assert "NVIDIA H100 80GB HBM3" in text and "31.0/80.0 GiB" in text and "87%" in text
        assert f"pid {pid} 5.0 GiB {run_name}" in text  # mapped by its infrastructure PID
        # Peak 7 GiB; 1 GiB held by pid 42 and 12 GiB unaccounted leave 67 GiB: 9 fit.
        assert "9 fit (7.0 GiB peak each, 67.0 GiB free) · limit 4 ok" in text
        assert row(app, fleet.busy)["fits"] == "9"
        busy = app.snapshot.worker(fleet.busy) if app.snapshot else None
        assert busy is not None and busy.gpus[0].memory_used == 31 * GIB
        async with poll_client(fleet.api_url) as client:
            await set_gcl_limit(client, f"gpu:{fleet.busy}", 12)
            try:
                await until(pilot, lambda: row(app, fleet.busy)["fits"] == "⚠ 9")
                text = "\n".join(line.plain for line in app.query_one(GpuPanel).lines(140))
                assert "⚠ limit 12 needs 84.0 GiB" in text
            finally:
                await set_gcl_limit(client, f"gpu:{fleet.busy}", 4)


async def test_missing_nvml_says_why_and_the_rest_works(fleet: Fleet) -> None:
    app = board(fleet, nvml=NvmlSource(FakeNvml(init_error=12), host="board-host"))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: has_data(app))
        text = "\n".join(line.plain for line in app.query_one(GpuPanel).lines(200))
        assert "NVML not available: no NVIDIA driver (libnvidia-ml not found)" in text
        assert row(app, fleet.busy)["slots"].strip().endswith("/4")


async def test_help_screen_and_command_palette(fleet: Fleet) -> None:
    app = board(fleet)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        assert ("r", "Read every source now") in app.screen.keys  # type: ignore[attr-defined]
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, HelpScreen))
        titles = [command.title for command in app.get_system_commands(app.screen)]
        assert "Refresh" in titles and "Help" in titles and "Quit" in titles
        shown = await until_footer(pilot, app)
        assert {"q", "?", "+", "-", "=", "n", "b", "c", "C"} <= shown
        # Every key the footer has no room for is in the help.
        keys = {key for key, _ in app.key_help()}
        assert {"r", "+", "-", "=", "n", "b", "c", "C", "ctrl+p"} <= keys


async def until_footer(pilot: Pilot[int], app: GpuBoardApp) -> set[str]:
    await pilot.pause(0.2)
    return {
        binding.key_display or binding.key
        for _, binding, enabled, _ in app.active_bindings.values()
        if binding.show and enabled
    }
