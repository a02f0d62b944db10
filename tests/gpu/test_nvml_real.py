"""The NVML source on a real NVIDIA GPU: the readings are the driver's, not a fake's."""

from __future__ import annotations

import pytest

from gpuboard.core.nvml_source import NvmlSource
from gpuboard.core.text_format import human_bytes

_reading = NvmlSource().read()

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_reading.unavailable is not None, reason=str(_reading.unavailable)),
]


def test_every_gpu_reads_with_sane_numbers() -> None:
    reading = NvmlSource().read()
    assert reading.unavailable is None and reading.gpus
    for gpu in reading.gpus:
        print(
            f"#{gpu.index} {gpu.name} {gpu.uuid}: {human_bytes(gpu.memory_used)} / "
            f"{human_bytes(gpu.memory_total)}, util {gpu.utilization}%, "
            f"{len(gpu.processes)} processes"
        )
        assert gpu.name and gpu.uuid.startswith(("GPU-", "MIG-"))
        assert gpu.memory_total > 0 and 0 <= gpu.memory_used <= gpu.memory_total
        assert gpu.utilization is None or 0 <= gpu.utilization <= 100
        for process in gpu.processes:
            assert process.pid > 0
            assert process.memory_used is None or process.memory_used <= gpu.memory_total
