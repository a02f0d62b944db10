"""The benchmark pipeline both sides run: download, GPU step, save; only the slot differs.

Workload "sleep": the steps sleep `download_s` / `gpu_s` / `save_s`, so only
orchestration is measured. Workload "ocr": the real work of `process-image`: render the
sample image `index` (download), load the OCR model before the slot (as the pipeline
does), read its text with onnxruntime inside the slot (the GPU step), write the result.
Each run writes one JSON record of its timestamps to $BENCH_OUT (see bench/pipeline.py).
"""

from __future__ import annotations

import time

IMPORTED_AT = time.time()  # before this module's own imports

import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable  # noqa: E402
from contextlib import AbstractContextManager  # noqa: E402
from typing import Any  # noqa: E402

from prefect import task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402

PREFECT_IMPORTED_AT = time.time()

Slot = Callable[[str], AbstractContextManager[Any]]


def process_started_at() -> float:
    """When this process was started (Linux /proc), as a Unix time."""
    try:
        with open("/proc/self/stat") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


@task(name="download", cache_policy=NO_CACHE, persist_result=False)
def download(index: int, workload: str, seconds: float) -> Any:
    if workload == "ocr":
        from gpuboard.core.images import load_image

        return load_image(index, "sample").pixels
    time.sleep(seconds)
    return None


@task(name="load_model", cache_policy=NO_CACHE, persist_result=False)
def load(workload: str) -> float:
    """The model, loaded before the slot is asked for; the seconds it took (0: sleep)."""
    if workload != "ocr":
        return 0.0
    from gpuboard.core.inference import load_model

    return load_model()[1]


@task(name="gpu", cache_policy=NO_CACHE, persist_result=False)
def gpu(slot: Slot, worker: str, workload: str, pixels: Any, seconds: float) -> dict[str, Any]:
    text = ""
    asked = time.time()
    with slot(worker):
        started = time.time()
        if workload == "ocr":
            from gpuboard.core.inference import load_model

            text = load_model()[0].read(pixels).text  # cached by `load` in this process
        else:
            time.sleep(seconds)
        ended = time.time()
    return {
        "asked": asked,
        "started": started,
        "ended": ended,
        "released": time.time(),
        "text": text,
    }


@task(name="save", cache_policy=NO_CACHE, persist_result=False)
def save(index: int, workload: str, text: str, seconds: float) -> None:
    if workload == "ocr":
        with tempfile.NamedTemporaryFile("w", suffix=f"-{index}.json", delete=True) as fh:
            json.dump({"index": index, "text": text}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        return
    time.sleep(seconds)


def run_pipeline(
    slot: Slot, index: int, workload: str, download_s: float, gpu_s: float, save_s: float
) -> None:
    """The flow body of both sides."""
    body = time.time()
    worker = os.environ["WORKER_ID"]
    pixels = download(index, workload, download_s)
    model_load_s = load(workload)
    step = gpu(slot, worker, workload, pixels, gpu_s)
    save(index, workload, step.pop("text"), save_s)
    record = {
        "index": index,
        "flow_run_id": str(flow_run.id),
        "worker": worker,
        "pid": os.getpid(),
        "process_started_at": process_started_at(),
        "imported_at": IMPORTED_AT,
        "prefect_imported_at": PREFECT_IMPORTED_AT,
        "body": body,
        "model_load_s": model_load_s,
        **step,
        "end": time.time(),
    }
    out = os.environ["BENCH_OUT"]
    tmp = os.path.join(out, f".{index}.tmp")
    with open(tmp, "w") as fh:
        json.dump(record, fh)
    os.replace(tmp, os.path.join(out, f"{index}.json"))
