"""One GPU reading per machine: the board's own read first, workers' published ones merged."""

from __future__ import annotations

import dataclasses

from gpuboard.core.board_source import merge_readings
from gpuboard.core.models import GpuReading, GpuSample


def gpu(host: str, used: int) -> GpuSample:
    return GpuSample(host, 0, "GPU-0", "L4", used, 100, 10, (), 0.0)


def test_workers_on_the_boards_machine_are_listed_on_its_own_fresher_read() -> None:
    local = GpuReading("here", 100.0, (gpu("here", 50),), local=True)
    published = [
        GpuReading("here", 95.0, (gpu("here", 40),), workers=("gpu-1",)),
        GpuReading("here", 97.0, (gpu("here", 45),), workers=("gpu-2",)),
        GpuReading("zeta", 96.0, (gpu("zeta", 10),), workers=("gpu-9",)),
        GpuReading("alpha", 96.0, (gpu("alpha", 10),), workers=("gpu-5",)),
    ]
    merged = merge_readings(local, published)
    assert [r.host for r in merged] == ["here", "alpha", "zeta"]
    assert merged[0].local and merged[0].gpus[0].memory_used == 50
    assert merged[0].workers == ("gpu-1", "gpu-2")


def test_a_worker_reading_stands_in_where_nvml_fails_here() -> None:
    local = GpuReading("here", 100.0, unavailable="NVML not available: no permission", local=True)
    published = [GpuReading("here", 99.0, (gpu("here", 40),), workers=("gpu-1",))]
    (only,) = merge_readings(local, published)
    assert not only.local and only.gpus[0].memory_used == 40 and only.workers == ("gpu-1",)


def test_without_a_local_read_every_published_one_is_kept() -> None:
    published = [GpuReading("b", 1.0, workers=("w2",)), GpuReading("a", 1.0, workers=("w1",))]
    assert [r.host for r in merge_readings(None, published)] == ["a", "b"]


def test_only_workers_in_the_boards_pid_namespace_have_their_processes_checked_here() -> None:
    local = GpuReading("here", 100.0, local=True, pid_namespace="pid:[1]")
    published = [
        GpuReading("here", 95.0, workers=("same",), pid_namespace="pid:[1]"),
        # Same host name, another PID namespace (a container): its PIDs are not ours.
        GpuReading("here", 96.0, workers=("boxed",), pid_namespace="pid:[2]"),
        GpuReading("here", 97.0, workers=("older",)),  # a gpuboard that does not say
        GpuReading("there", 97.0, workers=("far",), pid_namespace="pid:[1]"),
    ]
    mine = merge_readings(local, published)[0]
    assert mine.workers == ("boxed", "older", "same")
    assert mine.workers_sharing_pids == ("same",)
    # A board that cannot tell its own namespace checks nobody's processes.
    blind = dataclasses.replace(local, pid_namespace="")
    assert merge_readings(blind, published)[0].workers_sharing_pids == ()


def test_the_pid_namespace_travels_in_the_published_payload() -> None:
    from gpuboard.core.gpu_events import reading_from_payload, reading_to_payload

    reading = GpuReading("here", 5.0, (gpu("here", 1),), pid_namespace="pid:[7]")
    assert reading_from_payload("w", reading_to_payload(reading)).pid_namespace == "pid:[7]"
    payload = reading_to_payload(reading)
    del payload["pid_namespace"]  # published by an older gpuboard
    assert reading_from_payload("w", payload).pid_namespace == ""
