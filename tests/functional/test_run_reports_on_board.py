"""Where the time goes, on the board and in `status --json`: from the executor states and
run timings that warm workers and runs publish to a real Prefect server."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timezone

from fakes.fake_nvml import FakeNvml
from gpuboard.core.board_source import BoardSource
from gpuboard.core.local_server import LocalServer
from gpuboard.core.nvml_source import NvmlSource
from gpuboard.core.prefect.events import emit_event
from gpuboard.core.prefect.poll_client import poll_client
from gpuboard.core.run_timings import EVENT_NAME as TIMINGS_EVENT
from gpuboard.core.run_timings import RunTimings
from gpuboard.core.status import read_snapshot, snapshot_to_json
from gpuboard.core.warm.state import EVENT_NAME as EXECUTOR_EVENT
from gpuboard.core.warm.state import ExecutorState
from gpuboard.tui.app import GpuBoardApp
from gpuboard.tui.widgets.runs_panel import RunsPanel
from support.pilot import until
from support.seeding import create_gcl, create_pool, heartbeat


async def seed(api_url: str) -> tuple[str, str]:
    tag = uuid.uuid4().hex[:5]
    pool, worker = f"reports-{tag}", f"warm-{tag}"
    now = time.time()
    async with poll_client(api_url) as client:
        await create_pool(client, pool)
        await heartbeat(client, pool, worker)
        await create_gcl(client, f"gpu:{worker}", 2)
        state = ExecutorState(
            worker, "warm", now, size=3, busy=2, idle=1, starting=0, runs=57, recycled=1, replaced=0
        )
        await emit_event(
            client,
            EXECUTOR_EVENT,
            resource={"prefect.resource.id": f"gpuboard.worker.{worker}"},
            payload=state.to_payload(),
            occurred=datetime.now(timezone.utc),
        )
        for n, inference in enumerate((0.2, 0.4, 0.3)):
            timings = RunTimings(
                str(uuid.uuid4()), worker, "warm", now - n, 0.5, 0.1, 0.05, 1.5, inference, 0.02
            )
            await emit_event(
                client,
                TIMINGS_EVENT,
                resource={"prefect.resource.id": f"prefect.flow-run.{timings.flow_run_id}"},
                payload=timings.to_payload(),
                occurred=datetime.now(timezone.utc),
            )
    return pool, worker


async def test_the_board_says_where_each_workers_time_goes(prefect_server: LocalServer) -> None:
    pool, worker = await seed(prefect_server.api_url)
    source = BoardSource(
        pool,
        prefect_server.api_url,
        nvml=NvmlSource(FakeNvml(init_error=12), host="board"),
        finished_every=1.0,
    )
    app = GpuBoardApp(source, pool=pool, api_url=prefect_server.api_url, refresh=0.3)
    async with app.run_test(size=(140, 40)) as pilot:
        await until(
            pilot,
            lambda: app.snapshot is not None and bool(app.snapshot.time_splits),
            timeout=30,
        )
        assert app.snapshot is not None
        (split,) = [s for s in app.snapshot.time_splits if s.worker == worker]
        assert split.runs == 3 and split.medians["inference_s"] == 0.3
        assert split.medians["slot_wait_s"] == 1.5
        view = app.snapshot.worker(worker)
        assert view is not None and view.executor is not None and view.executor.busy == 2
        text = "\n".join(str(line) for line in app.query_one(RunsPanel).lines(70, 30))
        assert "Where the time goes" in text
        assert f"{worker} · warm runners 2 busy, 1 idle · 3 runs" in text
        assert "wait 1.50" in text and "infer 0.30" in text


async def test_status_json_carries_executor_and_time_splits(prefect_server: LocalServer) -> None:
    pool, worker = await seed(prefect_server.api_url)
    deadline = time.monotonic() + 30
    while True:  # a one-shot read sees events once the server's persister wrote them
        document = snapshot_to_json(await read_snapshot(pool, prefect_server.api_url))
        ours = [s for s in document["time_splits"] if s["worker"] == worker]
        if ours or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    (split,) = [s for s in document["time_splits"] if s["worker"] == worker]
    assert split["runs"] == 3 and split["executor"] == "warm"
    assert split["medians_s"]["queued_s"] == 0.5
    (row,) = [w for w in document["workers"] if w["name"] == worker]
    assert row["executor"]["size"] == 3 and row["executor"]["recycled"] == 1
