"""Whole-screen snapshots of the board (pytest-textual-snapshot) from fixed, known data.

The data is a Snapshot built here with frozen times, so the picture only changes when the
board's rendering does: review the SVGs with `pytest --snapshot-update` after a change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from gpuboard.core.host.state import HostState, SlotHolder
from gpuboard.core.models import (
    GclState,
    GpuProcess,
    GpuReading,
    GpuSample,
    LimitAdvice,
    RefreshCost,
    RunCounts,
    RunView,
    Snapshot,
    SourceError,
    Step,
    WorkerView,
)
from gpuboard.core.run_timings import TimeSplit
from gpuboard.core.warm.state import ExecutorState
from gpuboard.tui.app import GpuBoardApp
from gpuboard.tui.widgets.gpu_panel import memory_key
from gpuboard.tui.widgets.workers_table import slots_key

GIB = 1024**3
NOW = 1_800_000_000.0


class ReplaySource:
    """A source that answers the same snapshot every time (the board's only input here)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    async def read(self) -> Snapshot:
        return self.snapshot

    async def aclose(self) -> None:
        pass


def fleet_snapshot(**changes: Any) -> Snapshot:
    gpu = GpuSample(
        host="gpu-node-1",
        index=0,
        uuid="GPU-1",
        name="NVIDIA H100 80GB HBM3",
        memory_used=int(12.6 * GIB),
        memory_total=80 * GIB,
        utilization=87,
        processes=(
            GpuProcess(4001, int(9.3 * GIB), host_of="gpu-1"),
            GpuProcess(3100, int(3.3 * GIB)),
        ),
        sampled_at=NOW - 2,
    )
    # The host holds a 2.1 GiB model plus 2.4 GiB per inference; another process 3.3 GiB.
    advice = LimitAdvice(gpu.key, int(2.4 * GIB), int(74.6 * GIB), 31, 4, ("gpu-1",))
    host_1 = HostState(
        worker="gpu-1",
        status="ready",
        updated_at=NOW - 1,
        host="gpu-node-1",
        pid=4001,
        provider="CUDAExecutionProvider",
        device="cuda:0",
        model="PP-OCRv6_det_small+PP-OCRv6_rec_small",
        load_s=4.2,
        model_loads=1,
        queued=2,
        holders=tuple(
            SlotHolder(f"lease-{i}", i, f"task-{i}", f"r{i}", NOW - age)
            for i, age in ((1, 0.4), (2, 0.3), (3, 0.1))
        ),
        served=118,
        inference_p50_s=0.21,
        inference_p95_s=0.38,
        gpu_memory_model=int(2.1 * GIB),
        gpu_memory_peak_per_inference=int(2.4 * GIB),
    )
    host_2 = HostState(
        worker="gpu-2",
        status="ready",
        updated_at=NOW - 3,
        host="gpu-node-2",
        pid=5120,
        provider="CUDAExecutionProvider",
        device="cuda:0",
        load_s=3.9,
        model_loads=2,
        restarts=1,
        queued=1,
        paused=True,
        inference_p50_s=0.24,
        inference_p95_s=0.41,
    )
    rows: list[tuple[str, str, Step, int]] = [
        ("brave-otter", "gpu-1", "infer", 12),
        ("calm-heron", "gpu-1", "infer", 9),
        ("lucid-moth", "gpu-1", "infer", 7),
        ("bold-wren", "gpu-1", "waiting", 5),
        ("dusty-kite", "gpu-1", "waiting", 4),
        ("quiet-crane", "gpu-1", "download", 2),
        ("swift-ibis", "gpu-2", "waiting", 30),
    ]
    running = tuple(
        RunView(f"r{i}", name, "RUNNING", "Running", worker, step, str(i), start_time=NOW - age)
        for i, (name, worker, step, age) in enumerate(rows, start=1)
    )
    snapshot = Snapshot(
        pool="ml-pool",
        api_url="http://127.0.0.1:4200/api",
        taken_at=NOW,
        prefect_read_at=NOW,
        workers=(
            WorkerView(
                "gpu-1",
                True,
                True,
                3.2,
                GclState("gpu:gpu-1", 4, 3, True),
                running=6,
                waiting=2,
                downloading=1,
                inferring=3,
                gpus=(gpu,),
                advice=advice,
                host=host_1,
                counts_from_host=True,
                executor=ExecutorState("gpu-1", "warm", NOW - 2, 6, 5, 1, 0, 118, 0, 0),
            ),
            WorkerView(
                "gpu-2",
                True,
                True,
                1.5,
                GclState("gpu:gpu-2", 0, 0, True),
                running=1,
                waiting=1,
                host=host_2,
                counts_from_host=True,
            ),
            WorkerView("gpu-3", True, False, 125.0, None),
            WorkerView("old-box", False, False, None, GclState("gpu:old-box", 2, 0, True)),
        ),
        runs=RunCounts(
            scheduled=14, late=2, pending=1, running=7, completed=120, failed=3, crashed=1
        ),
        running=running,
        next_queued=tuple(
            RunView(
                f"q{i}",
                f"queued-run-{i}",
                "SCHEDULED",
                "Scheduled",
                image_id=str(20 + i),
                expected_start_time=NOW - 40,
            )
            for i in range(3)
        ),
        failures=(
            RunView(
                "f1",
                "rusty-lynx",
                "FAILED",
                "Failed",
                "gpu-1",
                image_id="11",
                end_time=NOW - 95,
                message="Task run 'run_ml_model' failed: CUDA out of memory",
            ),
        ),
        gpu_readings=(
            GpuReading(
                "dash-host",
                NOW,
                unavailable="NVML not available: no NVIDIA driver (libnvidia-ml not found)",
                local=True,
            ),
            GpuReading("gpu-node-1", NOW - 2, (gpu,), workers=("gpu-1",)),
        ),
        time_splits=(
            TimeSplit(
                "gpu-1",
                40,
                "warm",
                {
                    "queued_s": 0.41,
                    "startup_s": 0.12,
                    "download_s": 0.08,
                    "slot_wait_s": 0.35,
                    "inference_s": 0.21,
                    "save_s": 0.03,
                },
            ),
        ),
        cost=RefreshCost(13, 42.0),
    )
    return Snapshot(**{**snapshot.__dict__, **changes})


def board(snapshot: Snapshot) -> GpuBoardApp:
    app = GpuBoardApp(
        ReplaySource(snapshot), pool=snapshot.pool, api_url=snapshot.api_url, clock=lambda: NOW
    )
    # Five minutes of history, so the sparklines have a shape.
    for second in range(0, 300, 10):
        app.history.add(slots_key("gpu-1"), NOW - 300 + second, (second // 30) % 5)
        app.history.add(slots_key("old-box"), NOW - 300 + second, 0)
        app.history.add(
            memory_key(fleet_snapshot_gpu()), NOW - 300 + second, (20 + second // 30) * GIB
        )
    return app


def fleet_snapshot_gpu() -> GpuSample:
    return fleet_snapshot().gpu_readings[1].gpus[0]


async def shown(pilot: Pilot[int]) -> None:
    app = pilot.app
    assert isinstance(app, GpuBoardApp)
    while app.snapshots_shown < 1:
        await pilot.pause(0.05)
    await pilot.pause(0.1)


@pytest.mark.parametrize("size", [(80, 24), (140, 40)], ids=["80x24", "140x40"])
def test_whole_screen(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(board(fleet_snapshot()), terminal_size=size, run_before=shown)


def test_whole_screen_server_unreachable(snap_compare: Any) -> None:
    down = fleet_snapshot(
        prefect_read_at=NOW - 42,
        errors=(
            SourceError(
                "prefect", "Prefect API unreachable (All connection attempts failed)", "unreachable"
            ),
        ),
    )
    assert snap_compare(board(down), terminal_size=(80, 24), run_before=shown)


def test_the_readme_shows_the_current_board() -> None:
    """docs/board.svg (in the README) is the 140x40 snapshot: after `--snapshot-update`,
    copy it there."""
    snapshots = Path(__file__).parent / "__snapshots__" / "test_dashboard_snapshot"
    current = (snapshots / "test_whole_screen[140x40].svg").read_text()
    shown = (Path(__file__).parents[2] / "docs" / "board.svg").read_text()
    assert shown == current, "docs/board.svg is out of date: copy the 140x40 snapshot"
