"""A flow that logs, waits, and logs again: for following a run's logs while it runs."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger, task


@task(name="chatty-step", persist_result=False)
def step() -> None:
    get_run_logger().info("chatty task line")


@flow(name="chatty", persist_result=False)
def chatty(gate: str = "", wait_s: float = 120.0) -> None:
    """Log the first line (and one from a task), wait until file `gate` exists (at most
    `wait_s`), then log the second line at WARNING."""
    logger = get_run_logger()
    logger.info("chatty first line")
    step()
    deadline = time.monotonic() + wait_s
    while gate and not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    logger.warning("chatty second line")
