"""The board's view of every worker's inference host: the newest state each one published.

Followed live on Prefect's events websocket, so a change on a worker shows on a board
anywhere within a second, not when the server's event persister has written it (up to
5 s later, then the board's next read). The websocket can be refused (a proxy, an old
server) or drop: then, and to fill the board when it opens, the newest state per worker
is also read through `/events/filter`, every POLL_EVERY_S while the stream is up and at
every read while it is not. Nothing here raises to the board: failures are values.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from gpuboard.core.host.publisher import (
    EVENT_NAME,
    RESOURCE_PREFIX,
    read_published_states,
    state_from_event_payload,
)
from gpuboard.core.host.state import HostState
from gpuboard.core.prefect.events import follow_events

log = logging.getLogger(__name__)

POLL_EVERY_S = 15.0  # with the stream up, a read through the API this often anyway
READ_WINDOW = timedelta(minutes=10)  # older states are not shown: that worker is gone
STREAM_RETRY_S = (1.0, 2.0, 5.0, 15.0, 30.0)

Via = Literal["stream", "poll"]


class HostStateFeed:
    """The newest HostState per worker; `read()` once per board refresh."""

    def __init__(
        self,
        api_url: str,
        *,
        stream: bool = True,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api_url = api_url
        self._stream_wanted = stream
        self._on_change = on_change
        self._clock = clock
        self._latest: dict[str, HostState] = {}
        self.via: dict[str, Via] = {}  # how each worker's newest state arrived
        self.stream_up = False
        self.stream_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._polled_at = 0.0

    async def read(self, client: Any) -> dict[str, HostState]:
        """The states to show now; polls the API when the stream cannot be trusted alone."""
        if self._stream_wanted and self._task is None:
            self._task = asyncio.create_task(self._follow(), name="host-state-stream")
        now = self._clock()
        if not self.stream_up or now - self._polled_at >= POLL_EVERY_S:
            since = datetime.fromtimestamp(now, tz=timezone.utc) - READ_WINDOW
            for state in await read_published_states(client, since):
                self._merge(state, "poll")
            self._polled_at = now
        cutoff = now - READ_WINDOW.total_seconds()
        return {worker: s for worker, s in self._latest.items() if s.updated_at >= cutoff}

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _connected(self) -> None:
        self.stream_up, self.stream_error = True, None

    def _merge(self, state: HostState, via: Via) -> bool:
        known = self._latest.get(state.worker)
        if known is not None and known.updated_at >= state.updated_at:
            return False
        self._latest[state.worker] = state
        self.via[state.worker] = via
        return True

    async def _follow(self) -> None:
        failures = 0
        while True:
            try:
                async for event in follow_events(self.api_url, EVENT_NAME, self._connected):
                    if not event.resource_id.startswith(RESOURCE_PREFIX):
                        continue
                    failures = 0
                    state = state_from_event_payload(event.payload)
                    if state is not None and self._merge(state, "stream"):
                        self._on_change()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                message = f"{type(exc).__name__}: {exc}"
                if message != self.stream_error:
                    log.info("host state stream from %s: %s (reading instead)", self.api_url, exc)
                self.stream_error = message
            self.stream_up = False
            delay = STREAM_RETRY_S[min(failures, len(STREAM_RETRY_S) - 1)]
            failures += 1
            await asyncio.sleep(delay)
