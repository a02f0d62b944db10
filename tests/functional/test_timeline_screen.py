"""The timeline (`t`) at 80x24 on a real Prefect server: a worker's recorded inferences
(the `gpuboard.run.timings` events its runs publish) drawn on one lane per GPU slot, its
runs' slot waits below, an idle slot with waiters marked."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone

from fakes.fake_nvml import FakeNvml
from gpuboard.core.board_source import BoardSource
from gpuboard.core.local_server import LocalServer
from gpuboard.core.nvml_source import NvmlSource
from gpuboard.core.prefect.events import emit_event
from gpuboard.core.prefect.poll_client import poll_client
from gpuboard.core.run_timings import EVENT_NAME, RunTimings
from gpuboard.tui.app import GpuBoardApp
from gpuboard.tui.screens.timeline import TimelineScreen
from support.pilot import until
from support.seeding import create_gcl, create_pool, heartbeat


async def publish(api_url: str, timings: list[RunTimings]) -> None:
    async with poll_client(api_url) as client:
        for timing in timings:
            await emit_event(
                client,
                EVENT_NAME,
                resource={"prefect.resource.id": f"prefect.flow-run.{timing.flow_run_id}"},
                payload=timing.to_payload(),
                occurred=datetime.fromtimestamp(timing.ended_at, tz=timezone.utc),
            )


def report(worker: str, began: float, ended: float, wait: float, image: int) -> RunTimings:
    return RunTimings(
        str(uuid.uuid4()),
        worker,
        "warm",
        ended + 0.2,
        0.1,
        0.1,
        0.1,
        wait,
        ended - began,
        0.2,
        inference_started_at=began,
        inference_ended_at=ended,
        image_id=str(image),
    )


async def test_the_timeline_draws_a_lane_per_slot_at_80x24(prefect_server: LocalServer) -> None:
    tag = uuid.uuid4().hex[:5]
    pool, worker = f"timeline-{tag}", f"gpu-t{tag}"
    now = time.time()
    async with poll_client(prefect_server.api_url) as client:
        await create_pool(client, pool)
        await heartbeat(client, pool, worker)
        await create_gcl(client, f"gpu:{worker}", 2)
    # Two inferences at once (both slots), then one alone while another run waited 60 s:
    # an idle slot with a waiter. All within the last 5 minutes.
    await publish(
        prefect_server.api_url,
        [
            report(worker, now - 240, now - 180, 0.0, 1),
            report(worker, now - 230, now - 170, 0.0, 2),
            report(worker, now - 120, now - 60, 0.0, 3),
            report(worker, now - 60, now - 30, 60.0, 4),
        ],
    )
    source = BoardSource(pool, prefect_server.api_url, nvml=NvmlSource(FakeNvml(init_error=12)))
    app = GpuBoardApp(source, pool=pool, api_url=prefect_server.api_url, refresh=0.3)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.snapshot is not None and bool(app.snapshot.workers))
        await pilot.press("t")
        await until(pilot, lambda: isinstance(app.screen, TimelineScreen))
        screen = app.screen
        assert isinstance(screen, TimelineScreen)
        # Events reach /events/filter through the persister, seconds late: read until all 4.
        for _ in range(60):
            if screen.timelines and screen.timelines[0].inferences == 4:
                break
            await pilot.press("r")
            await pilot.pause(0.5)
        (timeline,) = screen.timelines or ()
        assert timeline.worker == worker and timeline.slots == 2
        assert [len(lane) for lane in timeline.lanes] == [3, 1]  # packed onto the 2 slots
        assert len(timeline.waits) == 1
        lines = str(screen.query_one("#timeline").render()).splitlines()
        assert all(len(line) <= 80 for line in lines)
        heading = next(i for i, line in enumerate(lines) if line.startswith(worker))
        slot1, slot2, waits = lines[heading + 1 : heading + 4]
        assert slot1.startswith(" slot1") and slot2.startswith(" slot2")
        assert "█" in slot1 and "█" in slot2
        assert "░" in slot2 and "░" not in slot1  # slot 2 idle while run 4 waited
        assert waits.startswith(" wait") and "1" in waits
        assert "slots busy" in lines[heading] and "4 inferences" in lines[heading]
        # Zoom in: the last minute holds only the last inference.
        await pilot.press("plus")
        assert screen.window_min == 2
        await pilot.press("plus")
        assert screen.window_min == 1 and screen.timelines is not None
        assert screen.timelines[0].inferences == 1
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, TimelineScreen))
