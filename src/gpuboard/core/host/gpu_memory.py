"""Measures what the inference host holds on its GPU: the model, and the peak one inference
adds on top of it, which is what the limit advisor needs (memory = model + limit x peak).

NVML reports one number per process. The host reads its own once its sessions exist
(the model: weights, CUDA context, workspace) and again after inferences; ONNX Runtime's
arena keeps what the most concurrent inferences needed, so what the process holds beyond
the model, divided by the most inferences it has run at once, is the peak per inference.
On a machine without NVML (or on the CPU provider) every figure is None.
"""

from __future__ import annotations

import os
import time

from gpuboard.core.nvml_source import NvmlSource

SAMPLE_EVERY_S = 1.0  # NVML reads are ~ms, but the host has better things to do per image


class HostGpuMemory:
    """GPU memory of this process on GPU `gpu_index`; `observe()` after each inference."""

    def __init__(self, gpu_index: int, nvml: NvmlSource | None = None) -> None:
        self.gpu_index = gpu_index
        self._nvml = nvml or NvmlSource(flow_run_of=lambda _pid: None)
        self.model_bytes: int | None = None
        self.peak_per_inference: int | None = None
        self._most_at_once = 0
        self._sampled_at = 0.0

    def mark_model_loaded(self) -> None:
        """Read what the loaded model holds (before any inference where possible)."""
        self.model_bytes = self.held()

    def observe(self, in_flight: int, *, force: bool = False) -> None:
        """Called as an inference ends with `in_flight` of them running (it included)."""
        self._most_at_once = max(self._most_at_once, in_flight)
        now = time.monotonic()
        if not force and now - self._sampled_at < SAMPLE_EVERY_S:
            return
        self._sampled_at = now
        held = self.held()
        if held is None or self.model_bytes is None:
            return
        per_inference = max(0, held - self.model_bytes) // max(1, self._most_at_once)
        self.peak_per_inference = max(self.peak_per_inference or 0, per_inference) or None

    def held(self) -> int | None:
        """Bytes this process holds on the GPU now; None where NVML cannot tell."""
        reading = self._nvml.read()
        pid = os.getpid()
        for gpu in reading.gpus:
            if gpu.index != self.gpu_index:
                continue
            for process in gpu.processes:
                if process.pid == pid:
                    return process.memory_used
        return None

    def close(self) -> None:
        self._nvml.close()
