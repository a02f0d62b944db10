"""(B) gpuboard's pattern: the GPU step under `gpu_slot()` (strict, paused at 0, recorded lease).

Steps only sleep (download / GPU / save), so the benchmark measures orchestration.
Each run writes one JSON record of its timestamps to $BENCH_OUT (see bench/pipeline.py).
"""

from __future__ import annotations

import time

IMPORTED_AT = time.time()  # after this file's own imports below are not yet done

import json  # noqa: E402
import os  # noqa: E402

from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402

from gpuboard.core.slot import gpu_slot  # noqa: E402

PREFECT_IMPORTED_AT = time.time()


def _process_started_at() -> float:
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
def download(seconds: float) -> None:
    time.sleep(seconds)


@task(name="gpu", cache_policy=NO_CACHE, persist_result=False)
def gpu(worker: str, seconds: float) -> dict[str, float]:
    asked = time.time()
    with gpu_slot(worker):
        started = time.time()
        time.sleep(seconds)
        ended = time.time()
    return {"asked": asked, "started": started, "ended": ended, "released": time.time()}


@task(name="save", cache_policy=NO_CACHE, persist_result=False)
def save(seconds: float) -> None:
    time.sleep(seconds)


@flow(name="bench-sleep-gpuboard", persist_result=False)
def sleep_gpuboard(
    index: int, download_s: float = 1.0, gpu_s: float = 3.0, save_s: float = 0.5
) -> None:
    body = time.time()
    worker = os.environ["WORKER_ID"]
    download(download_s)
    slot = gpu(worker, gpu_s)
    save(save_s)
    record = {
        "index": index,
        "flow_run_id": str(flow_run.id),
        "worker": worker,
        "pid": os.getpid(),
        "process_started_at": _process_started_at(),
        "imported_at": IMPORTED_AT,
        "prefect_imported_at": PREFECT_IMPORTED_AT,
        "body": body,
        **slot,
        "end": time.time(),
    }
    out = os.environ["BENCH_OUT"]
    tmp = os.path.join(out, f".{index}.tmp")
    with open(tmp, "w") as fh:
        json.dump(record, fh)
    os.replace(tmp, os.path.join(out, f"{index}.json"))
