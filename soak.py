"""The warm-executor soak flow: one short sleep step; each run writes who ran it, when,
and its process's resident memory, to a file of its own (duplicates stay visible)."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@task(name="nap", cache_policy=NO_CACHE, persist_result=False)
def nap(seconds: float) -> None:
    time.sleep(seconds)


@flow(name="soak", persist_result=False)
def soak(index: int, out: str, seconds: float = 0.05) -> None:
    from prefect.runtime import flow_run

    nap(seconds)
    record = {
        "index": index,
        "flow_run_id": str(flow_run.id),
        "pid": os.getpid(),
        "rss_mb": round(_rss_mb(), 1),
        "at": time.time(),
    }
    Path(out, f"{index}-{uuid.uuid4().hex[:8]}.json").write_text(json.dumps(record))
