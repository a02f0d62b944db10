"""Reads every event of one name once, from a start time on, page by page: for counters
and histograms that must count each event exactly once, where `read_recent` gives only the
newest page.

Events reach the database late (the server's event persister flushes in batches) and may
carry an `occurred` time before they become readable, so each read looks back `overlap_s`
behind the newest event seen, and events are told apart by their ids. An event that
becomes readable more than `overlap_s` after it occurred is missed.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, cast

from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventOrder
from prefect.types import DateTime

from gpuboard.core.prefect.events import PAGE_SIZE, ReceivedEvent

OVERLAP_S = 60.0
MAX_PAGES = 20  # per read: a backlog larger than this is read over the next refreshes


class EventCursor:
    """The events called `name` that occurred at or after `since` (epoch seconds)."""

    def __init__(
        self, name: str, since: float, *, overlap_s: float = OVERLAP_S, max_pages: int = MAX_PAGES
    ) -> None:
        self.name = name
        self.since = since
        self.overlap_s = overlap_s
        self.max_pages = max_pages
        self._newest = since
        self._seen: dict[str, float] = {}  # event id -> occurred, within the overlap

    async def read_new(self, client: Any) -> list[ReceivedEvent]:
        """The events not returned by an earlier read, oldest first (one request a page)."""
        new: list[ReceivedEvent] = []
        start = max(self.since, self._newest - self.overlap_s)
        for _ in range(self.max_pages):
            page = await client.read_events(
                filter=EventFilter(
                    occurred=EventOccurredFilter(since=cast(DateTime, _utc(start))),
                    event=EventNameFilter(name=[self.name]),
                    order=EventOrder.ASC,
                ),
                limit=PAGE_SIZE,
            )
            for event in page.events:
                occurred = event.occurred.timestamp()
                key = str(event.id)
                if key in self._seen or occurred < self.since:
                    continue
                self._seen[key] = occurred
                self._newest = max(self._newest, occurred)
                new.append(ReceivedEvent(event.resource.id, event.occurred, dict(event.payload)))
            if len(page.events) < PAGE_SIZE:
                break
            last = page.events[-1].occurred.timestamp()
            if last <= start:  # a whole page at one instant: the next read goes on
                break
            start = last
        horizon = self._newest - self.overlap_s
        self._seen = {key: at for key, at in self._seen.items() if at >= horizon}
        return new


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)
