"""Reads this machine's GPUs through NVML, once per call, never raising.

Modelled on nvitop's NVML layer: the library is loaded and initialised lazily on the first
read, a missing driver or library becomes "NVML not available: <reason>" as a value, and a
field a GPU does not support (utilization under MIG, process memory in some containers)
becomes None rather than an error. The backend is the `pynvml` module by default; tests
pass an object with the same functions (the one fake gpuboard allows).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpuboard.core.models import GpuProcess, GpuReading, GpuSample
from gpuboard.core.process_identity import pid_namespace

FLOW_RUN_ENV = b"PREFECT__FLOW_RUN_ID="  # set by Prefect in every flow-run process
# After a failed initialisation, wait this long before trying again: a driver can be
# installed or loaded while the board runs, but probing every second is wasted work.
RETRY_INIT_AFTER = 60.0


def flow_run_of_pid(pid: int, proc: Path = Path("/proc")) -> str | None:
    """The flow run a local process executes, from its environment; None when unreadable."""
    try:
        environ = (proc / str(pid) / "environ").read_bytes()
    except OSError:  # gone, another user's, or a PID from another namespace
        return None
    for entry in environ.split(b"\0"):
        if entry.startswith(FLOW_RUN_ENV):
            return entry[len(FLOW_RUN_ENV) :].decode(errors="replace") or None
    return None


class NvmlSource:
    """One machine's GPUs; call `read()` once per refresh (from a thread: NVML blocks)."""

    def __init__(
        self,
        backend: Any = None,
        *,
        host: str | None = None,
        clock: Callable[[], float] = time.time,
        flow_run_of: Callable[[int], str | None] = flow_run_of_pid,
    ) -> None:
        self._backend = backend
        self.host = host or socket.gethostname()
        self._clock = clock
        self._flow_run_of = flow_run_of
        self._lock = threading.Lock()  # NVML handles are shared: one read at a time
        self._initialised = False
        self._failure: str | None = None
        self._failed_at = 0.0

    def read(self) -> GpuReading:
        """Every GPU of this machine now, or the reason there is none to read."""
        with self._lock:
            now = self._clock()
            failure = self._ensure_initialised(now)
            if failure is not None:
                return GpuReading(
                    host=self.host,
                    sampled_at=now,
                    unavailable=failure,
                    local=True,
                    pid_namespace=pid_namespace(),
                )
            nvml = self._backend
            try:
                count = nvml.nvmlDeviceGetCount()
                gpus = tuple(self._read_gpu(nvml, index, now) for index in range(count))
            except nvml.NVMLError as exc:
                # The driver went away under us (GPU fell off the bus, driver reload):
                # start over on the next read after the usual pause.
                self._initialised = False
                self._failure, self._failed_at = _reason(nvml, exc), now
                return GpuReading(
                    host=self.host,
                    sampled_at=now,
                    unavailable=self._failure,
                    local=True,
                    pid_namespace=pid_namespace(),
                )
            return GpuReading(
                host=self.host, sampled_at=now, gpus=gpus, local=True, pid_namespace=pid_namespace()
            )

    def close(self) -> None:
        with self._lock:
            if self._initialised:
                # Shutting down a broken driver must not stop the board.
                with contextlib.suppress(Exception):
                    self._backend.nvmlShutdown()
                self._initialised = False

    def _ensure_initialised(self, now: float) -> str | None:
        if self._initialised:
            return None
        if self._failure is not None and now - self._failed_at < RETRY_INIT_AFTER:
            return self._failure
        try:
            if self._backend is None:
                import pynvml  # nvidia-ml-py; imported late so the board starts without it

                self._backend = pynvml
            self._backend.nvmlInit()
        except Exception as exc:  # NVMLError, or ImportError where the package is missing
            self._failure, self._failed_at = _reason(self._backend, exc), now
            return self._failure
        self._initialised, self._failure = True, None
        return None

    def _read_gpu(self, nvml: Any, index: int, now: float) -> GpuSample:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        return GpuSample(
            host=self.host,
            index=index,
            uuid=_text(_optional(nvml, nvml.nvmlDeviceGetUUID, handle) or ""),
            name=_text(_optional(nvml, nvml.nvmlDeviceGetName, handle) or f"GPU {index}"),
            memory_used=int(memory.used),
            memory_total=int(memory.total),
            utilization=_utilization(nvml, handle),
            processes=self._processes(nvml, handle),
            sampled_at=now,
        )

    def _processes(self, nvml: Any, handle: Any) -> tuple[GpuProcess, ...]:
        found = _optional(nvml, nvml.nvmlDeviceGetComputeRunningProcesses, handle) or []
        processes = []
        for info in found:
            pid = int(info.pid)
            memory = getattr(info, "usedGpuMemory", None)  # None: NVML_VALUE_NOT_AVAILABLE
            processes.append(
                GpuProcess(
                    pid=pid,
                    memory_used=None if memory is None else int(memory),
                    flow_run_id=self._flow_run_of(pid),
                )
            )
        return tuple(sorted(processes, key=lambda p: -(p.memory_used or 0)))


def _optional(nvml: Any, call: Callable[[Any], Any], handle: Any) -> Any:
    """`call(handle)`, or None where this GPU does not support it."""
    try:
        return call(handle)
    except nvml.NVMLError as exc:
        if _is_fatal(nvml, exc):
            raise
        return None


def _utilization(nvml: Any, handle: Any) -> int | None:
    rates = _optional(nvml, nvml.nvmlDeviceGetUtilizationRates, handle)
    return None if rates is None else int(rates.gpu)


def _is_fatal(nvml: Any, exc: Exception) -> bool:
    """Errors that mean the driver or GPU is gone, not that one field is unsupported."""
    fatal = {
        getattr(nvml, name, None)
        for name in (
            "NVML_ERROR_UNINITIALIZED",
            "NVML_ERROR_DRIVER_NOT_LOADED",
            "NVML_ERROR_GPU_IS_LOST",
        )
    }
    return getattr(exc, "value", None) in fatal - {None}


# What the common NVML failures mean for the person reading the board.
_EXPLAINED = {
    "NVML_ERROR_LIBRARY_NOT_FOUND": "no NVIDIA driver (libnvidia-ml not found)",
    "NVML_ERROR_DRIVER_NOT_LOADED": "the NVIDIA driver is not loaded",
    "NVML_ERROR_NO_PERMISSION": "no permission to read the GPUs",
    "NVML_ERROR_GPU_IS_LOST": "the GPU fell off the bus",
}


def _reason(nvml: Any, exc: BaseException) -> str:
    if isinstance(exc, ImportError):
        return "NVML not available: the nvidia-ml-py package is not installed"
    code = getattr(exc, "value", None)
    for constant, meaning in _EXPLAINED.items():
        if code is not None and code == getattr(nvml, constant, object()):
            return f"NVML not available: {meaning}"
    return f"NVML not available: {str(exc) or type(exc).__name__}"


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
