"""A flow that says where it runs and then sleeps: for executor tests (cancel, kill)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from prefect import flow, get_run_logger


@flow(name="sleepy", persist_result=False)
def sleepy(seconds: float = 5.0, out: str = "") -> int:
    """Write {pid, started} to `out`/<flow run id>.json, log a line, sleep `seconds`."""
    from prefect.runtime import flow_run

    if out:
        record = {"pid": os.getpid(), "started": time.time()}
        Path(out, f"{flow_run.id}.json").write_text(json.dumps(record))
    get_run_logger().info("sleepy %s starts in process %s", flow_run.id, os.getpid())
    time.sleep(seconds)
    get_run_logger().info("sleepy %s is done", flow_run.id)
    return os.getpid()
