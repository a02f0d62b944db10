"""A flow run's Prefect logs, its task runs' included: read, filtered, and followed live.

`LogReader.read_new()` returns the lines that came since its last call, each once. Log
lines reach the server in batches from several processes (the flow-run process, its
worker), so a line stamped earlier can arrive after a later one: each read looks back
LOOKBACK_S before the newest line seen and drops the ids it gave already. A line that
arrives late is given late, never lost nor twice. `follow_logs` polls until the run is
final and no more lines came for `settle_s`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from prefect.client.orchestration import PrefectClient

from gpuboard.core.prefect.logs import LOG_PAGE, read_run_logs, task_run_name
from gpuboard.core.prefect.run_lookup import RunNotFound, find_flow_run

__all__ = [
    "LEVELS",
    "LogInputError",
    "LogLine",
    "LogReader",
    "RunNotFound",
    "find_flow_run",
    "follow_logs",
    "parse_level",
]

LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# How far before the newest line seen each read looks again, for lines that arrive late.
# Prefect's clients send logs every PREFECT_LOGGING_TO_API_BATCH_INTERVAL (2 s).
LOOKBACK_S = 30.0
DEFAULT_POLL_S = 1.0
# After the run is final, lines still come (the last batch of the flow process, the
# worker's "process exited"): follow until none came for this long.
DEFAULT_SETTLE_S = 4.0


class LogInputError(ValueError):
    """A bad --level or search; the message says what is accepted."""


def parse_level(text: str) -> int:
    """`info` (any case) as logging.INFO; LogInputError names the accepted ones."""
    level = LEVELS.get(text.strip().lower())
    if level is None:
        raise LogInputError(f"level {text!r}: say one of {', '.join(LEVELS)}")
    return level


def level_name(level: int) -> str:
    return logging.getLevelName(level) if level in logging._levelToName else f"L{level}"


@dataclass(frozen=True)
class LogLine:
    """One log line of a run; `task` names the task run that wrote it (None: the flow)."""

    id: str
    timestamp: datetime
    level: int
    message: str
    task: str | None = None

    def format(self) -> str:
        """`12:00:01.234 INFO     [download_image-0] message`, in local time."""
        stamp = self.timestamp.astimezone().strftime("%H:%M:%S.%f")[:-3]
        where = f"[{self.task}] " if self.task else ""
        return f"{stamp} {level_name(self.level):<8} {where}{self.message}"

    def matches(self, search: str) -> bool:
        """Whether `search` (case-insensitive) is in the message or the task's name."""
        wanted = search.casefold()
        return wanted in self.message.casefold() or wanted in (self.task or "").casefold()


class LogReader:
    """Reads a run's log lines in order, each once, at `min_level` or above."""

    def __init__(self, client: PrefectClient, flow_run_id: UUID, *, min_level: int = 0) -> None:
        self.client = client
        self.flow_run_id = flow_run_id
        self.min_level = min_level
        self._newest: datetime | None = None
        self._seen: dict[str, datetime] = {}  # ids given, within the lookback window
        self._task_names: dict[UUID, str] = {}

    async def read_new(self) -> list[LogLine]:
        since = None if self._newest is None else self._newest - timedelta(seconds=LOOKBACK_S)
        new: list[LogLine] = []
        offset = 0
        while True:
            page = await read_run_logs(
                self.client,
                self.flow_run_id,
                since=since,
                min_level=self.min_level,
                offset=offset,
            )
            for log in page:
                key = str(log.id)
                if key in self._seen:
                    continue
                self._seen[key] = log.timestamp
                new.append(
                    LogLine(
                        key,
                        log.timestamp,
                        log.level,
                        log.message,
                        await self._task(log.task_run_id),
                    )
                )
            if len(page) < LOG_PAGE:
                break
            offset += LOG_PAGE
        if new:
            newest = max(line.timestamp for line in new)
            self._newest = newest if self._newest is None else max(self._newest, newest)
            self._forget_old()
        return sorted(new, key=lambda line: line.timestamp)

    async def _task(self, task_run_id: UUID | None) -> str | None:
        if task_run_id is None:
            return None
        if task_run_id not in self._task_names:
            self._task_names[task_run_id] = await task_run_name(self.client, task_run_id)
        return self._task_names[task_run_id]

    def _forget_old(self) -> None:
        # Ids older than the window cannot come back in a read: keep the set small.
        assert self._newest is not None
        horizon = self._newest - timedelta(seconds=LOOKBACK_S * 2)
        self._seen = {k: t for k, t in self._seen.items() if t >= horizon}


async def follow_logs(
    client: PrefectClient,
    flow_run_id: UUID,
    *,
    min_level: int = 0,
    follow: bool = True,
    poll_s: float = DEFAULT_POLL_S,
    settle_s: float = DEFAULT_SETTLE_S,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> AsyncIterator[list[LogLine]]:
    """The run's lines so far, then (with `follow`) each batch of new ones as it comes.

    Ends when the run is final and no line came for `settle_s`; a run that leaves its
    final state (retried) is followed on.
    """
    reader = LogReader(client, flow_run_id, min_level=min_level)
    first = await reader.read_new()
    yield first
    if not follow:
        return
    quiet_since: float | None = None
    while True:
        run = await client.read_flow_run(flow_run_id)
        final = run.state is not None and run.state.is_final()
        await sleep(poll_s)
        lines = await reader.read_new()
        if lines:
            yield lines
        if not final:
            quiet_since = None
        elif lines or quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= settle_s:
            return
