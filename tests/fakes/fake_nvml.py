"""A stand-in for the `pynvml` module: the same functions, answering from test data.

NVML is the one part of gpuboard that tests may fake (no driver on CI machines); the real
`NvmlSource` code runs against this object, error handling included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, ClassVar

GIB = 1024**3


class FakeNVMLError(Exception):
    """Mirrors pynvml.NVMLError: carries the NVML return code in `value`."""

    _MESSAGES: ClassVar[dict[int, str]] = {
        3: "Not Supported",
        9: "Driver Not Loaded",
        12: "NVML Shared Library Not Found",
        15: "GPU is lost",
    }

    def __init__(self, value: int) -> None:
        super().__init__(self._MESSAGES.get(value, f"NVML error {value}"))
        self.value = value


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    memory_total: int = 80 * GIB
    memory_used: int = 0
    utilization: int | None = 0  # None: "Not Supported", as under MIG
    processes: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, bytes)


class FakeNvml:
    """Pass as `NvmlSource(backend=FakeNvml(...))`; change `gpus` between reads."""

    NVMLError = FakeNVMLError
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_UNINITIALIZED = 1
    NVML_ERROR_DRIVER_NOT_LOADED = 9
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_ERROR_NO_PERMISSION = 4
    NVML_ERROR_GPU_IS_LOST = 15

    def __init__(self, gpus: list[FakeGpu] | None = None, init_error: int | None = None) -> None:
        self.gpus = gpus if gpus is not None else [FakeGpu()]
        self.init_error = init_error
        self.lost = False  # True: every device call fails as if the GPU fell off the bus
        self.init_calls = 0
        self.initialised = False

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    def _check(self) -> None:
        if not self.initialised:
            raise FakeNVMLError(self.NVML_ERROR_UNINITIALIZED)
        if self.lost:
            raise FakeNVMLError(self.NVML_ERROR_GPU_IS_LOST)

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        self._check()
        return self.gpus[index]

    def nvmlDeviceGetName(self, gpu: FakeGpu) -> str:
        self._check()
        return gpu.name

    def nvmlDeviceGetUUID(self, gpu: FakeGpu) -> str:
        self._check()
        return gpu.uuid

    def nvmlDeviceGetMemoryInfo(self, gpu: FakeGpu) -> Any:
        self._check()
        return SimpleNamespace(
            total=gpu.memory_total, used=gpu.memory_used, free=gpu.memory_total - gpu.memory_used
        )

    def nvmlDeviceGetUtilizationRates(self, gpu: FakeGpu) -> Any:
        self._check()
        if gpu.utilization is None:
            raise FakeNVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(gpu=gpu.utilization, memory=0)

    def nvmlDeviceGetComputeRunningProcesses(self, gpu: FakeGpu) -> list[Any]:
        self._check()
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in gpu.processes]
