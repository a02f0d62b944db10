"""The timeline's data: per worker, its inferences of the last minutes packed onto one lane
per GPU slot, and its runs' slot waits, from what the runs and inference hosts publish.

Finished runs report their inference window and slot wait (`gpuboard.run.timings`,
core/run_timings.py); the host's live state adds the inferences holding a slot now and
the requests waiting for one. Lanes are assigned by packing the inference intervals
onto the worker's slot count (its GCL limit): an interval goes to the first lane free at
its start. More overlapping inferences than slots (a limit lowered meanwhile) get extra
lanes, flagged, rather than being hidden. No Textual here: the screen only draws this.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, cast

from prefect.types import DateTime

from gpuboard.core.host.state import HostState
from gpuboard.core.prefect.events import PAGE_SIZE
from gpuboard.core.run_timings import EVENT_NAME, RunTimings

log = logging.getLogger(__name__)

# Reports read for one timeline at most: 20 pages of PAGE_SIZE events.
MAX_REPORTS = 1000


@dataclass(frozen=True)
class Span:
    """One inference (or one slot wait) of a flow run, in epoch seconds."""

    start: float
    end: float
    flow_run_id: str
    image_id: str | None = None
    ongoing: bool = False  # still holding its slot (or still waiting) now

    def overlaps(self, start: float, end: float) -> bool:
        return self.start < end and self.end > start


@dataclass(frozen=True)
class WorkerTimeline:
    """One worker over [start, end]: a lane per slot, its runs' slot waits."""

    worker: str
    slots: int | None  # its GCL's limit; None without one
    lanes: tuple[tuple[Span, ...], ...]
    waits: tuple[Span, ...]
    waiting_now: int = 0  # requests in its host's queue now

    @property
    def inferences(self) -> int:
        return sum(len(lane) for lane in self.lanes)

    @property
    def extra_lanes(self) -> int:
        """Lanes beyond the slot count: inferences overlapped more than the limit allows."""
        return max(0, len(self.lanes) - (self.slots or 0)) if self.slots is not None else 0

    def busy_fraction(self, start: float, end: float) -> float | None:
        """Slot time used by inferences over the window, of the slot time there was."""
        if not self.slots or end <= start:
            return None
        used = sum(
            min(span.end, end) - max(span.start, start) for lane in self.lanes for span in lane
        )
        return max(0.0, used) / (self.slots * (end - start))


def pack_lanes(spans: Iterable[Span], slots: int) -> tuple[tuple[Span, ...], ...]:
    """`spans` on the fewest lanes, at least `slots`: each, by start, on the first lane whose
    last span has ended (touching spans share a lane), else on a new lane."""
    lanes: list[list[Span]] = [[] for _ in range(max(0, slots))]
    for span in sorted(spans, key=lambda s: (s.start, s.end)):
        lane = next((lane for lane in lanes if not lane or lane[-1].end <= span.start), None)
        if lane is None:
            lane = []
            lanes.append(lane)
        lane.append(span)
    return tuple(tuple(lane) for lane in lanes)


def build_timelines(
    timings: Iterable[RunTimings],
    hosts: Mapping[str, HostState],
    limits: Mapping[str, int | None],
    start: float,
    end: float,
) -> tuple[WorkerTimeline, ...]:
    """A timeline per worker of `limits` (the pool's) over [start, end]."""
    inferences: dict[str, dict[str, Span]] = {worker: {} for worker in limits}
    waits: dict[str, list[Span]] = {worker: [] for worker in limits}
    for timing in timings:
        if timing.worker not in limits:
            continue
        window = timing.inference_window()
        if window is None:
            continue
        began, ended = window
        if ended > start and began < end:
            inferences[timing.worker][timing.flow_run_id] = Span(
                began, ended, timing.flow_run_id, timing.image_id
            )
        if timing.slot_wait_s:
            wait = Span(began - timing.slot_wait_s, began, timing.flow_run_id, timing.image_id)
            if wait.overlaps(start, end):
                waits[timing.worker].append(wait)
    queued_now: dict[str, int] = {}
    for worker, host in hosts.items():
        if worker not in limits or host.stale(end):
            continue
        queued_now[worker] = host.queued
        for holder in host.holders:
            run_id = holder.flow_run_id or holder.lease_id
            # A finished run's report wins; a holder is an inference still running.
            inferences[worker].setdefault(
                run_id,
                Span(
                    max(holder.held_since, start),
                    end,
                    run_id,
                    None if holder.image_id is None else str(holder.image_id),
                    ongoing=True,
                ),
            )
    return tuple(
        WorkerTimeline(
            worker=worker,
            slots=limit,
            lanes=pack_lanes(inferences[worker].values(), limit or 0),
            waits=tuple(sorted(waits[worker], key=lambda s: s.start)),
            waiting_now=queued_now.get(worker, 0),
        )
        for worker, limit in sorted(limits.items())
    )


def columns_of(span: Span, start: float, end: float, width: int) -> tuple[int, int] | None:
    """The first and last of `width` columns covering [start, end] that `span` touches."""
    if width <= 0 or end <= start or not span.overlaps(start, end):
        return None
    scale = width / (end - start)
    first = int((max(span.start, start) - start) * scale)
    last = int((min(span.end, end) - start) * scale - 1e-9)
    return min(first, width - 1), max(min(last, width - 1), min(first, width - 1))


def waiters_per_column(waits: Iterable[Span], start: float, end: float, width: int) -> list[int]:
    """How many runs waited for a slot in each of `width` columns over [start, end]."""
    counts = [0] * max(0, width)
    for wait in waits:
        cells = columns_of(wait, start, end, width)
        if cells is not None:
            for column in range(cells[0], cells[1] + 1):
                counts[column] += 1
    return counts


async def read_run_timings(client: Any, since: float, limit: int = MAX_REPORTS) -> list[RunTimings]:
    """The runs' timing reports that arrived since `since` (epoch seconds), newest first,
    page by page up to `limit` (Prefect's `/events/filter`, PAGE_SIZE a page)."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventOrder

    # A run reports when it ends, after its inference: every inference that ended in the
    # window is in a report that occurred in it.
    occurred = cast(DateTime, datetime.fromtimestamp(since, tz=timezone.utc))
    page = await client.read_events(
        filter=EventFilter(
            occurred=EventOccurredFilter(since=occurred),
            event=EventNameFilter(name=[EVENT_NAME]),
            order=EventOrder.DESC,
        ),
        limit=PAGE_SIZE,
    )
    found: list[RunTimings] = []
    while True:
        for event in page.events:
            try:
                found.append(RunTimings.from_payload(dict(event.payload)))
            except (KeyError, TypeError, ValueError) as exc:
                log.debug("skipping run timings: %s", exc)
        if page.next_page is None or len(found) >= limit:
            return found[:limit]
        page = await client.read_events_page(page.next_page)
