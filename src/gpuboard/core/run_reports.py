"""The board's slow-changing reports from workers and runs: each worker's executor (its
warm runners' state) and where recent runs' time went. Read through `/events/filter`,
two requests, at most every `every_s`: these change with runs, not with every refresh."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from gpuboard.core.prefect.events import read_latest_per_resource, read_recent
from gpuboard.core.run_timings import EVENT_NAME as TIMINGS_EVENT
from gpuboard.core.run_timings import RunTimings, TimeSplit, split_by_worker
from gpuboard.core.warm.state import EVENT_NAME as EXECUTOR_EVENT
from gpuboard.core.warm.state import RESOURCE_PREFIX, ExecutorState

log = logging.getLogger(__name__)

WINDOW = timedelta(minutes=10)  # runs that ended longer ago are not counted


@dataclass(frozen=True)
class RunReports:
    executors: dict[str, ExecutorState] = field(default_factory=dict)
    time_splits: tuple[TimeSplit, ...] = ()


class RunReportsFeed:
    """Reads the reports when `every_s` has passed since the last read; else the last."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self._last = RunReports()
        self._read_at: float | None = None

    async def read(self, client: Any, now: float) -> RunReports:
        if self._read_at is not None and now - self._read_at < self.every_s:
            return self._last
        since = datetime.fromtimestamp(now, tz=timezone.utc) - WINDOW
        executors: dict[str, ExecutorState] = {}
        for event in await read_latest_per_resource(client, EXECUTOR_EVENT, RESOURCE_PREFIX, since):
            try:
                state = ExecutorState.from_payload(event.payload)
            except (KeyError, TypeError, ValueError) as exc:
                log.debug("skipping executor state: %s", exc)
                continue
            executors[state.worker] = state
        timings = []
        for event in await read_recent(client, TIMINGS_EVENT, since):
            try:
                timings.append(RunTimings.from_payload(event.payload))
            except (KeyError, TypeError, ValueError) as exc:
                log.debug("skipping run timings: %s", exc)
        self._last = RunReports(executors, split_by_worker(timings))
        self._read_at = now
        return self._last
