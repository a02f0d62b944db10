"""The limit advisor: peak memory per inference, how many fit, the warning."""

from __future__ import annotations

from fakes.fake_nvml import GIB
from gpuboard.core.advisor import PeakTracker, advice_for_workers, advise, usable_memory
from gpuboard.core.models import GpuProcess, GpuSample


def gpu(
    at: float,
    processes: list[tuple[int, int | None, str | None]],
    *,
    used: int = 20 * GIB,
    total: int = 80 * GIB,
    key: str = "GPU-1",
) -> GpuSample:
    return GpuSample(
        host="node",
        index=0,
        uuid=key,
        name="H100",
        memory_used=used,
        memory_total=total,
        utilization=50,
        processes=tuple(GpuProcess(pid, mem, run) for pid, mem, run in processes),
        sampled_at=at,
    )


def test_peak_is_the_largest_inference_process_within_the_window() -> None:
    tracker = PeakTracker(window_seconds=60)
    tracker.observe(gpu(0, [(1, 3 * GIB, "run-a"), (2, 9 * GIB, None)]))  # pid 2: not a run
    assert tracker.peak("node/GPU-1") == 3 * GIB
    tracker.observe(gpu(10, [(3, 5 * GIB, "run-b")]))
    assert tracker.peak("node/GPU-1") == 5 * GIB
    tracker.observe(gpu(80, [(4, 2 * GIB, "run-c")]))  # the 5 GiB one is now > 60 s old
    assert tracker.peak("node/GPU-1") == 2 * GIB
    tracker.observe(gpu(200, []))
    assert tracker.peak("node/GPU-1") is None
    assert tracker.peak("other") is None


def test_usable_memory_leaves_out_what_other_processes_hold() -> None:
    sample = gpu(0, [(1, 6 * GIB, "run-a"), (2, 4 * GIB, None)], used=12 * GIB)
    # 12 GiB used, 6 of it by the inference: 6 GiB belong to others (pid 2, the driver).
    assert usable_memory(sample) == 74 * GIB


def test_fits_and_the_warning_when_limit_times_peak_exceeds_the_gpu() -> None:
    sample = gpu(0, [(1, 7 * GIB, "run-a")], used=10 * GIB)  # 3 GiB others: 77 usable
    ok = advise(sample, 7 * GIB, {"gpu-1": 4})
    assert ok is not None and ok.fits == 11 and ok.limit == 4 and not ok.over_limit
    over = advise(sample, 7 * GIB, {"gpu-1": 12})
    assert over is not None and over.over_limit and over.fits == 11
    assert advise(sample, None, {"gpu-1": 4}) is None  # nothing seen: no advice


def test_workers_sharing_a_gpu_share_its_memory() -> None:
    tracker = PeakTracker()
    shared = gpu(0, [(1, 10 * GIB, "run-a")], used=10 * GIB)
    tracker.observe(shared)
    advice = advice_for_workers(
        {"gpu-1": (shared,), "gpu-2": (shared,)}, {"gpu-1": 4, "gpu-2": 5}, tracker
    )
    assert advice["gpu-1"].limit == 9 and advice["gpu-1"].over_limit  # 9 × 10 GiB > 80 GiB
    assert advice["gpu-1"].sharing_workers == ("gpu-1", "gpu-2")
    unknown = advice_for_workers(
        {"gpu-1": (shared,), "gpu-3": (shared,)}, {"gpu-1": 4, "gpu-3": None}, tracker
    )
    assert unknown["gpu-1"].limit is None and not unknown["gpu-1"].over_limit
