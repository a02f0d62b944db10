"""(B) gpuboard's pattern: the GPU step under `gpu_slot()` (strict, paused at 0, recorded
lease). The steps are bench/flows/pipeline_steps.py's, the same as (A)'s."""

from __future__ import annotations

from pipeline_steps import run_pipeline
from prefect import flow

from gpuboard.core.slot import gpu_slot


@flow(name="bench-sleep-gpuboard", persist_result=False)
def sleep_gpuboard(
    index: int,
    download_s: float = 1.0,
    gpu_s: float = 3.0,
    save_s: float = 0.5,
    workload: str = "sleep",
) -> None:
    run_pipeline(gpu_slot, index, workload, download_s, gpu_s, save_s)
