"""The board and `gpuboard status --json` show each worker's inference host from what it
published to a real Prefect server: its state, its live queue and slot holders as the GPU
step's counts, and a change seen on Prefect's events websocket, not after the persister."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from textual.widgets import DataTable, Label

from fakes.fake_nvml import FakeNvml
from gpuboard.core.board_source import BoardSource
from gpuboard.core.host.publisher import publish_state
from gpuboard.core.host.state import HostState, SlotHolder
from gpuboard.core.local_server import LocalServer
from gpuboard.core.nvml_source import NvmlSource
from gpuboard.core.prefect import leased_slots
from gpuboard.core.prefect.gcl import read_gcl
from gpuboard.core.prefect.poll_client import poll_client
from gpuboard.core.status import read_snapshot, snapshot_to_json
from gpuboard.tui.app import GpuBoardApp
from gpuboard.tui.screens.holders import HoldersScreen
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


@dataclass
class Hosted:
    api_url: str
    pool: str
    worker: str
    runs: list[uuid.UUID]  # three runs in the GPU step


@pytest.fixture(scope="module")
async def hosted(prefect_server: LocalServer) -> AsyncIterator[Hosted]:
    tag = uuid.uuid4().hex[:5]
    fixture = Hosted(prefect_server.api_url, f"hosted-{tag}", f"gpu-{tag}", [])
    async with poll_client(prefect_server.api_url) as client:
        await create_pool(client, fixture.pool)
        await heartbeat(client, fixture.pool, fixture.worker)
        await create_gcl(client, f"gpu:{fixture.worker}", 2, active_slots=2)
        deployment = await create_deployment(client, fixture.pool)
        for image_id in (1, 2, 3):
            run = await create_run(
                client, deployment, "Running", image_id=image_id, worker=fixture.worker
            )
            await start_task(client, run, "run_ml_model")
            fixture.runs.append(run)
    yield fixture


def host_state(hosted: Hosted, **changes: object) -> HostState:
    now = time.time()
    state = HostState(
        worker=hosted.worker,
        status="ready",
        updated_at=now,
        host="gpu-node-9",
        pid=4242,
        provider="CPUExecutionProvider",
        device="cpu",
        load_s=2.5,
        model_loads=1,
        queued=1,
        holders=tuple(
            SlotHolder(f"lease-{i}", i, None, str(run), now - 0.5)
            for i, run in enumerate(hosted.runs[:2])
        ),
        inference_p50_s=0.2,
        inference_p95_s=0.4,
    )
    return state.with_changes(**changes)


async def publish(hosted: Hosted, state: HostState) -> None:
    async with poll_client(hosted.api_url) as client:
        await publish_state(client, state)


def board(hosted: Hosted) -> GpuBoardApp:
    source = BoardSource(
        hosted.pool, hosted.api_url, nvml=NvmlSource(FakeNvml(init_error=12), host="board")
    )
    return GpuBoardApp(source, pool=hosted.pool, api_url=hosted.api_url, refresh=0.3)


def cells(app: GpuBoardApp, worker: str) -> dict[str, str]:
    table = app.query_one(WorkersTable)
    return {
        str(column.key.value): str(cell)
        for column, cell in zip(table.ordered_columns, table.get_row(worker), strict=True)
    }


async def test_the_board_counts_the_gpu_step_from_the_host_and_follows_it_live(
    hosted: Hosted,
) -> None:
    await publish(hosted, host_state(hosted))
    app = board(hosted)
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: app.snapshot is not None and bool(app.snapshot.workers))
        await until(pilot, lambda: cells(app, hosted.worker)["host"] == "ready")
        row = cells(app, hosted.worker)
        # Task runs say 3 runs are in the GPU step; the host says 2 hold a slot, 1 waits.
        assert (row["waiting"], row["infer"]) == ("1", "2")
        assert app.snapshot is not None
        steps = {run.id: run.step for run in app.snapshot.running}
        assert [steps[str(run)] for run in hosted.runs] == ["infer", "infer", "waiting"]
        assert "waiting" in str(app.query_one(RunsPanel).render())
        panel = "\n".join(str(line) for line in app.query_one(GpuPanel).lines(140))
        assert f"{hosted.worker} host: ready · queue 1 · 2 holding" in panel

        # The host dies and is restarted: the board hears it on the events websocket.
        await publish(hosted, host_state(hosted, status="restarting", holders=(), queued=0))
        await until(pilot, lambda: cells(app, hosted.worker)["host"] == "restart", timeout=10)
        source = app.source
        assert isinstance(source, BoardSource)
        assert source.host_feed.via[hosted.worker] == "stream"
        row = cells(app, hosted.worker)
        assert (row["waiting"], row["infer"]) == ("0", "0")


async def test_status_json_carries_the_host(hosted: Hosted) -> None:
    await publish(hosted, host_state(hosted, queued=4))
    # A one-shot read goes through /events/filter: it sees the state once the server's
    # event persister has written it (a few seconds).
    deadline = time.monotonic() + 20
    while True:
        document = snapshot_to_json(await read_snapshot(hosted.pool, hosted.api_url))
        worker = next(w for w in document["workers"] if w["name"] == hosted.worker)
        host = worker["inference_host"]
        if (host is not None and host["queued"] == 4) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert host["status"] == "ready" and host["queued"] == 4 and host["device"] == "cpu"
    assert [h["flow_run_id"] for h in host["holders"]] == [str(r) for r in hosted.runs[:2]]
    assert worker["counts_from_host"] is True and worker["waiting"] == 4
    assert host["stale"] is False


async def test_the_holders_screen_names_the_host_as_holder(hosted: Hosted) -> None:
    """The GCL's 2 slots are held by the host's 2 requests: shown as held by the inference
    host for their flow runs, not as slots with no published lease, and not releasable."""
    await publish(hosted, host_state(hosted))
    app = board(hosted)
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: app.snapshot is not None and bool(app.snapshot.workers))
        await until(pilot, lambda: cells(app, hosted.worker)["host"] == "ready")
        await pilot.press("h")
        await until(pilot, lambda: isinstance(app.screen, HoldersScreen))
        screen = app.screen
        assert isinstance(screen, HoldersScreen)
        await until(pilot, lambda: screen.view is not None and len(screen.view.hosts) == 2)
        table = screen.query_one("#slot-holders", DataTable)
        rows = [" | ".join(str(cell) for cell in table.get_row(r.key)) for r in table.ordered_rows]
        # Other tests' GCLs (the server is shared) show too: ours are the ones that count.
        rows = [row for row in rows if row.startswith(f"gpu:{hosted.worker} |")]
        assert len(rows) == 2
        assert all(f"inference host of {hosted.worker} (pid 4242" in row for row in rows)
        assert all("Running" in row for row in rows)  # the holders' flow runs, read
        note = str(screen.query_one("#holders-note", Label).render())
        assert f"gpu:{hosted.worker}:" not in note  # both slots are accounted for
        table.focus()
        table.move_cursor(row=table.get_row_index(f"gpu:{hosted.worker}|host|lease-0"))
        await pilot.press("x")
        await until(
            pilot,
            lambda: any(
                "not released: held by the inference host" in str(n.message)
                for n in app._notifications
            ),
        )


async def test_a_silent_hosts_slot_is_released_from_the_holders_screen(hosted: Hosted) -> None:
    """A host that stopped publishing (its whole worker died) holds a real lease: x, y
    releases it on the server at once instead of after the lease expires."""
    worker = f"silent-{uuid.uuid4().hex[:5]}"
    async with poll_client(hosted.api_url) as client:
        await create_gcl(client, f"gpu:{worker}", 1)
        answer = await leased_slots.acquire(
            client, f"gpu:{worker}", lease_seconds=60, task_run_id=None, flow_run_id=None
        )
    assert answer.lease_id is not None
    last_heard = time.time() - 120
    await publish(
        hosted,
        host_state(hosted, worker=worker, updated_at=last_heard, queued=0).with_changes(
            holders=(SlotHolder(str(answer.lease_id), 7, None, None, last_heard),)
        ),
    )
    app = board(hosted)
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: app.snapshot is not None and bool(app.snapshot.worker(worker)))
        await until(
            pilot,
            lambda: app.snapshot is not None and app.snapshot.worker(worker).host is not None,
            timeout=30,
        )
        await pilot.press("h")
        await until(pilot, lambda: isinstance(app.screen, HoldersScreen))
        screen = app.screen
        assert isinstance(screen, HoldersScreen)
        key = f"gpu:{worker}|host|{answer.lease_id}"
        await until(pilot, lambda: key in screen._host_holdings)
        table = screen.query_one("#slot-holders", DataTable)
        assert "host silent" in " ".join(str(cell) for cell in table.get_row(key))
        table.focus()
        table.move_cursor(row=table.get_row_index(key))
        await pilot.press("x")
        await pilot.pause(0.3)
        await pilot.press("y")
        await until(
            pilot,
            lambda: any("back in service" in str(n.message) for n in app._notifications),
        )
    async with poll_client(hosted.api_url) as client:
        gcl = await read_gcl(client, f"gpu:{worker}")
    assert gcl is not None and gcl.active_slots == 0
