"""The timeline screen (`t`): per worker, one lane per GPU slot over the last minutes, each
inference a bar, and below the lanes the runs waiting for a slot; a slot left idle while
runs wait is marked red. `+`/`-` zoom, read again every couple of seconds while open."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from gpuboard.core.host.state import HostState
from gpuboard.core.run_timings import RunTimings
from gpuboard.core.timeline import (
    Span,
    WorkerTimeline,
    build_timelines,
    columns_of,
    waiters_per_column,
)
from gpuboard.tui.errors import operator_reason

READ_EVERY_S = 2.0
WINDOWS_MIN = (1, 2, 5, 10, 30)  # the zoom steps, minutes
DEFAULT_WINDOW_MIN = 5
LABEL_WIDTH = 8
BAR_STYLES = ("green", "bright_green")  # alternate, so touching inferences stay two bars
IDLE_WITH_WAITERS = ("░", "red")

ReadTimings = Callable[[float], Awaitable[list[RunTimings]]]
Context = Callable[[], tuple[Mapping[str, HostState], Mapping[str, int | None]]]


class TimelineScreen(Screen[None]):
    """The timelines of the pool's workers, from `read(since)` and `context()` (the hosts'
    live states and the workers' limits, from the board's latest snapshot)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,t", "leave", "Back", key_display="esc"),
        Binding("plus", "zoom(-1)", "Zoom in", key_display="+", tooltip="Show fewer minutes"),
        Binding("minus", "zoom(1)", "Zoom out", key_display="-", tooltip="Show more minutes"),
        Binding("r", "read", "Refresh", tooltip="Read the runs' reports now"),
    ]

    def __init__(
        self,
        read: ReadTimings,
        context: Context,
        *,
        clock: Callable[[], float] = time.time,
        window_min: int = DEFAULT_WINDOW_MIN,
    ) -> None:
        super().__init__()
        self.read = read
        self.context = context
        self.clock = clock
        self.window_min = window_min
        self.timelines: tuple[WorkerTimeline, ...] | None = None
        self._timings: list[RunTimings] = []
        self._read_for = 0  # the window (minutes) the reports were read for
        self._error: str | None = None
        self._reading = False

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="timeline-body"):
            yield Static("reading…", id="timeline")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.action_read()
        self.set_interval(READ_EVERY_S, self.action_read)

    def on_resize(self) -> None:
        self._draw()

    def action_leave(self) -> None:
        self.dismiss(None)

    def action_zoom(self, step: int) -> None:
        index = WINDOWS_MIN.index(self.window_min) if self.window_min in WINDOWS_MIN else 2
        self.window_min = WINDOWS_MIN[max(0, min(len(WINDOWS_MIN) - 1, index + step))]
        self._draw()
        if self.window_min > self._read_for:
            self.action_read()

    def action_read(self) -> None:
        if not self._reading:
            self._reading = True
            self._read()

    @work(group="timeline-read", exit_on_error=False)
    async def _read(self) -> None:
        window = self.window_min
        try:
            self._timings = await self.read(self.clock() - window * 60)
            self._read_for, self._error = window, None
        except Exception as exc:  # shown; the last reports stay, read again next interval
            self._error = f"reading the runs' reports failed: {operator_reason(exc)}"
        finally:
            self._reading = False
        if self.is_attached:
            self._draw()

    def _draw(self) -> None:
        end = self.clock()
        start = end - self.window_min * 60
        hosts, limits = self.context()
        self.timelines = build_timelines(self._timings, hosts, limits, start, end)
        width = max(20, self.size.width - 2)
        lines = timeline_lines(self.timelines, start, end, width, self.window_min)
        if self._error:
            lines.insert(1, Text(self._error, style="bold red"))
        self.query_one("#timeline", Static).update(Text("\n").join(lines))


def timeline_lines(
    timelines: Sequence[WorkerTimeline], start: float, end: float, width: int, window_min: int
) -> list[Text]:
    """The whole screen as lines of `width` cells: a title and an axis, then per worker a
    heading, a lane per slot and a line of waiters."""
    bar_width = max(10, width - LABEL_WIDTH)
    out = [
        Text.assemble(
            ("Timeline", "bold"),
            f" {window_min} min · ",
            ("█", BAR_STYLES[0]),
            " inference · ",
            ("1-9", "yellow"),
            " runs waiting · ",
            IDLE_WITH_WAITERS,
            " idle slot, runs waiting",
        ),
        _axis(window_min, bar_width),
    ]
    if not timelines:
        out.append(Text("no worker in the pool", style="dim"))
    for timeline in timelines:
        waiting = waiters_per_column(timeline.waits, start, end, bar_width)
        if timeline.waiting_now:
            waiting[-1] = max(waiting[-1], timeline.waiting_now)
        out.append(_heading(timeline, start, end))
        for number, lane in enumerate(timeline.lanes, start=1):
            extra = timeline.slots is not None and number > timeline.slots
            label = Text(f" {'+' if extra else 'slot'}{number:<3}"[:LABEL_WIDTH].ljust(LABEL_WIDTH))
            if extra:
                label.stylize("bold red")
            out.append(label + _lane(lane, waiting, start, end, bar_width))
        out.append(Text(" wait".ljust(LABEL_WIDTH), style="dim") + _waiters(waiting))
    for line in out:
        line.truncate(width, overflow="ellipsis")
    return out


def _heading(timeline: WorkerTimeline, start: float, end: float) -> Text:
    slots = "no GPU limit" if timeline.slots is None else f"{timeline.slots} slot"
    slots += "s" if timeline.slots not in (None, 1) else ""
    if timeline.slots == 0:
        slots = "PAUSED"
    busy = timeline.busy_fraction(start, end)
    parts = [slots, f"{timeline.inferences} inferences"]
    if busy is not None:
        parts.append(f"slots busy {busy:.0%}")
    if timeline.waiting_now:
        parts.append(f"{timeline.waiting_now} waiting now")
    heading = Text.assemble((timeline.worker, "bold"), f"  {' · '.join(parts)}")
    if timeline.extra_lanes:
        heading.append(
            f"  {timeline.extra_lanes} lane(s) over the limit (it was lowered?)", "bold red"
        )
    return heading


def _axis(window_min: int, width: int) -> Text:
    """Minute marks under the lanes' columns: `-5m` at the left, `now` at the right."""
    cells = [" "] * width
    for minute in range(window_min, 0, -1):
        column = int((window_min - minute) / window_min * width)
        mark = f"|-{minute}m"
        if column + len(mark) <= width - 4:
            cells[column : column + len(mark)] = mark
    cells[width - 4 :] = " now"
    return Text(" " * LABEL_WIDTH + "".join(cells), style="dim")


def _lane(lane: Sequence[Span], waiting: list[int], start: float, end: float, width: int) -> Text:
    cells: list[tuple[str, str]] = [("·", "dim")] * width
    for index, span in enumerate(lane):
        columns = columns_of(span, start, end, width)
        if columns is None:
            continue
        style = BAR_STYLES[index % 2] + (" bold" if span.ongoing else "")
        for column in range(columns[0], columns[1] + 1):
            cells[column] = ("█", style)
    for column, count in enumerate(waiting):
        if count and cells[column][0] == "·":
            cells[column] = IDLE_WITH_WAITERS
    return Text.assemble(*cells)


def _waiters(waiting: list[int]) -> Text:
    return Text.assemble(
        *(
            (" ", "") if not count else (str(count) if count < 10 else "+", "yellow")
            for count in waiting
        )
    )
