"""A flow that fails on its first try and completes when run again: for retry tests."""

from __future__ import annotations

from prefect import flow, get_run_logger


@flow(name="fails-once", persist_result=False)
def fails_once() -> int:
    from prefect.runtime import flow_run

    tries = int(flow_run.run_count)
    if tries <= 1:
        raise RuntimeError("fails-once: the first try fails on purpose")
    get_run_logger().info("fails-once: try %d completes", tries)
    return tries
