"""(A) The plain pattern: the GPU step under bare `concurrency("gpu:<WORKER_ID>")`, stock
settings. The steps are bench/flows/pipeline_steps.py's, the same as (B)'s."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from pipeline_steps import run_pipeline
from prefect import flow
from prefect.concurrency.sync import concurrency


def plain_slot(worker: str) -> AbstractContextManager[Any]:
    return concurrency(f"gpu:{worker}", occupy=1)


@flow(name="bench-sleep-plain", persist_result=False)
def sleep_plain(
    index: int,
    download_s: float = 1.0,
    gpu_s: float = 3.0,
    save_s: float = 0.5,
    workload: str = "sleep",
) -> None:
    run_pipeline(plain_slot, index, workload, download_s, gpu_s, save_s)
