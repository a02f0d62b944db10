"""The NVML source against the fake NVML: readings, missing drivers, unsupported fields."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fakes.fake_nvml import GIB, FakeGpu, FakeNvml
from gpuboard.core.nvml_source import RETRY_INIT_AFTER, NvmlSource, flow_run_of_pid


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_reads_every_gpu_with_its_processes_mapped_to_runs() -> None:
    fake = FakeNvml(
        [
            FakeGpu(
                name="NVIDIA A10",
                uuid="GPU-1",
                memory_total=24 * GIB,
                memory_used=9 * GIB,
                utilization=73,
                processes=[(10, 2 * GIB), (11, 5 * GIB), (12, None)],
            ),
            FakeGpu(name="NVIDIA A10", uuid="GPU-2", memory_used=0, utilization=0),
        ]
    )
    source = NvmlSource(fake, host="node-1", clock=Clock(), flow_run_of={11: "run-11"}.get)
    reading = source.read()
    assert reading.unavailable is None and reading.local and reading.host == "node-1"
    first, second = reading.gpus
    assert (first.name, first.uuid, first.memory_used, first.memory_total) == (
        "NVIDIA A10",
        "GPU-1",
        9 * GIB,
        24 * GIB,
    )
    assert first.utilization == 73 and first.sampled_at == 1000.0
    # Largest first; unknown memory (None) stays None rather than becoming 0.
    assert [(p.pid, p.memory_used, p.flow_run_id) for p in first.processes] == [
        (11, 5 * GIB, "run-11"),
        (10, 2 * GIB, None),
        (12, None, None),
    ]
    assert second.index == 1 and second.processes == ()
    assert fake.init_calls == 1
    source.read()
    assert fake.init_calls == 1  # initialised once, lazily


def test_unsupported_utilization_is_none_not_an_error() -> None:
    fake = FakeNvml([FakeGpu(utilization=None)])
    reading = NvmlSource(fake, host="h").read()
    assert reading.unavailable is None and reading.gpus[0].utilization is None


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (12, "no NVIDIA driver (libnvidia-ml not found)"),
        (9, "the NVIDIA driver is not loaded"),
        (4, "no permission"),
        (999, "NVML error 999"),
    ],
)
def test_missing_driver_is_a_value_with_the_reason(code: int, reason: str) -> None:
    reading = NvmlSource(FakeNvml(init_error=code), host="h").read()
    assert reading.gpus == ()
    assert reading.unavailable is not None
    assert reading.unavailable.startswith("NVML not available: ") and reason in reading.unavailable


def test_failed_init_is_retried_only_after_a_pause() -> None:
    clock = Clock()
    fake = FakeNvml(init_error=9)
    source = NvmlSource(fake, host="h", clock=clock)
    source.read()
    source.read()
    assert fake.init_calls == 1
    fake.init_error = None  # the driver got loaded
    clock.now += RETRY_INIT_AFTER + 1
    reading = source.read()
    assert fake.init_calls == 2 and reading.unavailable is None and len(reading.gpus) == 1


def test_a_gpu_lost_while_reading_becomes_unavailable_then_recovers() -> None:
    clock = Clock()
    fake = FakeNvml()
    source = NvmlSource(fake, host="h", clock=clock)
    assert source.read().gpus
    fake.lost = True
    reading = source.read()
    assert reading.unavailable is not None and "fell off the bus" in reading.unavailable
    fake.lost = False
    clock.now += RETRY_INIT_AFTER + 1
    assert source.read().gpus


def test_close_shuts_nvml_down_and_tolerates_a_broken_driver() -> None:
    fake = FakeNvml()
    source = NvmlSource(fake, host="h")
    source.read()
    source.close()
    assert not fake.initialised
    source.close()  # twice is fine


def test_real_nvml_never_raises() -> None:
    """With the real pynvml: GPUs where a driver exists, the reason where not."""
    reading = NvmlSource().read()
    assert reading.gpus or (reading.unavailable or "").startswith("NVML not available")


def test_flow_run_of_a_local_process_comes_from_its_environment() -> None:
    env = {**os.environ, "PREFECT__FLOW_RUN_ID": "3f2c-run"}
    child = subprocess.Popen(
        [sys.executable, "-c", "print('ready', flush=True); import time; time.sleep(30)"],
        env=env,
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"  # it runs
    try:
        assert flow_run_of_pid(child.pid) == "3f2c-run"
    finally:
        child.kill()
        child.wait()
    assert flow_run_of_pid(os.getpid()) in (None, os.environ.get("PREFECT__FLOW_RUN_ID"))
    assert flow_run_of_pid(2**22 + 12345) is None  # no such process
