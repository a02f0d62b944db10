"""The runs panel: counts by state, then running, failed and next queued runs as space
allows; a cursor over the runs shown, and a filter."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.widget import Widget

from gpuboard.core.models import RunCounts, RunView, Snapshot, WorkerView
from gpuboard.core.run_filter import RunFilter
from gpuboard.core.run_timings import TimeSplit
from gpuboard.core.text_format import human_age

STEP_STYLES = {
    "download": "cyan",
    "load": "cyan",
    "waiting": "bold yellow",
    "infer": "green",
    "gpu": "magenta",
    "save": "blue",
}


class RunsPanel(Widget, can_focus=True):
    """Fills its height: every section gets rows in turn, running runs first.

    Focused (Tab), up/down move a cursor over the runs shown; the run under it is the
    target of the board's run actions (`selected_run`). The cursor stays on its run, by
    id, across refreshes; when that run leaves the panel it moves to the row that took
    its place. A filter (`set_filter`) shows only the runs it matches.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("home", "cursor_to(0)", "First", show=False),
        Binding("end", "cursor_to(-1)", "Last", show=False),
    ]

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._data: tuple[Snapshot, float] | None = None
        self.run_filter = RunFilter()
        self.selected_id: str | None = None
        self._selected_index = 0  # where the cursor was, for when its run leaves
        self._shown: list[RunView] = []  # the selectable runs, in the order shown

    def show(self, snapshot: Snapshot, now: float) -> None:
        self._data = (snapshot, now)
        self.refresh()

    def set_filter(self, run_filter: RunFilter) -> None:
        """Show only the runs `run_filter` matches (the empty filter: all)."""
        self.run_filter = run_filter
        self._selected_index = 0
        self.refresh()

    def selected_run(self) -> RunView | None:
        """The run under the cursor, as last shown; None when no run is selected."""
        self._layout(self.size.width, self.size.height)
        return next((run for run in self._shown if run.id == self.selected_id), None)

    def shown_runs(self) -> tuple[RunView, ...]:
        """The runs the panel shows now, top to bottom (those the cursor can reach)."""
        self._layout(self.size.width, self.size.height)
        return tuple(self._shown)

    def action_cursor(self, step: int) -> None:
        self._layout(self.size.width, self.size.height)
        if not self._shown:
            return
        index = self._index()
        index = 0 if index is None else max(0, min(len(self._shown) - 1, index + step))
        self._select(index)

    def action_cursor_to(self, index: int) -> None:
        self._layout(self.size.width, self.size.height)
        if self._shown:
            self._select(index % len(self._shown))

    def clear_selection(self) -> None:
        self.selected_id = None
        self.refresh()

    def on_focus(self) -> None:
        self._layout(self.size.width, self.size.height)
        if self.selected_id is None and self._shown:
            self._select(0)
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    def _index(self) -> int | None:
        return next((i for i, run in enumerate(self._shown) if run.id == self.selected_id), None)

    def _select(self, index: int) -> None:
        self.selected_id = self._shown[index].id
        self._selected_index = index
        self.refresh()

    def render(self) -> Text:
        return Text("\n").join(self._layout(self.size.width, self.size.height))

    def lines(self, width: int, height: int) -> list[Text]:
        return self._layout(width, height)

    def _layout(self, width: int, height: int) -> list[Text]:
        """The panel's lines; remembers which runs they show and keeps the cursor on one."""
        if self._data is None or self._data[0].runs is None:
            self._shown = []
            return [Text("reading runs…", style="dim")]
        snapshot, now = self._data
        assert snapshot.runs is not None
        out = [counts_line(snapshot.runs, width)]
        if self.run_filter.active:
            sections, empty = _filtered_sections(snapshot, self.run_filter, now)
            if empty:
                out.append(Text(empty, style="bold yellow"))
        else:
            sections = _sections(snapshot, now)
        shares = share_lines(height - len(out), [len(rows) for _, rows in sections])
        shown: list[tuple[Text, RunView | None]] = []
        for (title, rows), share in zip(sections, shares, strict=True):
            if share:
                shown.append((Text(title, style="bold underline"), None))
                shown.extend(rows[: share - 1])
        self._shown = [run for _, run in shown if run is not None]
        if height > 1:  # not laid out yet: no cursor to keep
            self._keep_cursor()
        for line, run in shown:
            if run is not None and run.id == self.selected_id:
                line.stylize("reverse" if self.has_focus else "underline")
            out.append(line)
        for line in out:
            line.truncate(width, overflow="ellipsis")
        return out

    def _keep_cursor(self) -> None:
        if self.selected_id is None:
            return
        index = self._index()
        if index is not None:
            self._selected_index = index
        elif self._shown:
            # Its run left (started, finished, cancelled): the row now in its place.
            self._selected_index = min(self._selected_index, len(self._shown) - 1)
            self.selected_id = self._shown[self._selected_index].id
        else:
            self.selected_id = None


_Row = tuple[Text, RunView | None]


def _sections(snapshot: Snapshot, now: float) -> list[tuple[str, list[_Row]]]:
    assert snapshot.runs is not None
    splits: list[_Row] = [
        (line, None)
        for split in snapshot.time_splits
        for line in time_lines(split, snapshot.worker(split.worker))
    ]
    return [
        *([("Where the time goes (median s, last 10 min)", splits)] if splits else []),
        (
            f"Running ({snapshot.runs.running})",
            [(_running(r, now), r) for r in snapshot.running],
        ),
        (
            f"Failed, last hour ({snapshot.runs.failed})",
            [(_failed(r, now), r) for r in snapshot.failures],
        ),
        (
            f"Next queued ({snapshot.runs.queued})",
            [(_queued(r, now), r) for r in snapshot.next_queued],
        ),
    ]


def _filtered_sections(
    snapshot: Snapshot, run_filter: RunFilter, now: float
) -> tuple[list[tuple[str, list[_Row]]], str | None]:
    """The sections with only the runs `run_filter` matches, from the refresh's lists and
    the filter's own read (`snapshot.matching`); and what to say when none matches."""
    seen: dict[str, RunView] = {}
    # The refresh's lists first: their running runs carry their step.
    for run in (*snapshot.running, *snapshot.failures, *snapshot.next_queued):
        seen.setdefault(run.id, run)
    for run in snapshot.matching or ():
        seen.setdefault(run.id, run)
    runs = [run for run in seen.values() if run_filter.matches(run)]
    running = sorted(
        (r for r in runs if r.state_type in ("RUNNING", "CANCELLING")),
        key=lambda r: r.start_time or 0.0,
    )
    failed = sorted(
        (r for r in runs if r.state_type in ("FAILED", "CRASHED")),
        key=lambda r: -(r.end_time or 0.0),
    )
    queued = sorted(
        (r for r in runs if r.state_type in ("SCHEDULED", "PENDING", "PAUSED")),
        key=lambda r: r.expected_start_time or 0.0,
    )
    finished = sorted(
        (r for r in runs if r.state_type in ("COMPLETED", "CANCELLED")),
        key=lambda r: -(r.end_time or 0.0),
    )
    sections: list[tuple[str, list[_Row]]] = [
        (f"Running ({len(running)})", [(_running(r, now), r) for r in running]),
        (f"Failed ({len(failed)})", [(_failed(r, now), r) for r in failed]),
        (f"Queued ({len(queued)})", [(_queued(r, now), r) for r in queued]),
    ]
    if finished:
        sections.append((f"Finished ({len(finished)})", [(_finished(r, now), r) for r in finished]))
    empty = None if runs else f"no run matches {run_filter.source}"
    return sections, empty


def counts_line(runs: RunCounts, width: int = 200) -> Text:
    """The counts in one line; the breakdowns are added only where the width has room."""
    queued_detail = f" (sched {runs.scheduled} · late {runs.late} · pending {runs.pending})"
    crashed = f" ({runs.crashed} crashed)" if runs.crashed else ""

    def build(detail: bool) -> Text:
        return Text.assemble(
            ("queued ", "bold"),
            str(runs.queued),
            (queued_detail if detail else "", "dim"),
            ("  running ", "bold"),
            str(runs.running),
            ("  last hour ", "bold"),
            ("✓ ", "green"),
            str(runs.completed),
            ("  ✗ ", "red"),
            str(runs.failed),
            (crashed if detail else "", "dim"),
        )

    full = build(detail=True)
    return full if full.cell_len <= width else build(detail=False)


def share_lines(height: int, wanted: list[int]) -> list[int]:
    """Lines per section, its title included: a row to each section in turn while lines remain.

    An empty section still gets its title line, so "Failed (0)" says there are none.
    """
    lines = [0] * len(wanted)
    remaining = height
    progress = True
    while remaining > 0 and progress:
        progress = False
        for index, rows in enumerate(wanted):
            if lines[index] == 0:
                need = 2 if rows else 1  # a section's first row brings its title
            elif lines[index] - 1 < rows:
                need = 1
            else:
                continue
            if remaining >= need:
                lines[index] += need
                remaining -= need
                progress = True
    return lines


# The phases of a run as the time line shows them: (label, key, style).
_PHASES = (
    ("queue", "queued_s", ""),
    ("start", "startup_s", "magenta"),
    ("dl", "download_s", "cyan"),
    ("wait", "slot_wait_s", "yellow"),
    ("infer", "inference_s", "green"),
    ("save", "save_s", "blue"),
)


def time_lines(split: TimeSplit, worker: WorkerView | None) -> list[Text]:
    """Two lines per worker: ' gpu-1 · warm runners 2 busy, 1 idle · 20 runs', then
    '   queue 0.31 start 0.28 dl 0.10 wait 0.08 infer 0.19 save 0.05' (median seconds)."""
    executor = worker.executor if worker is not None else None
    runners = f"{split.executor} executor"
    if executor is not None:
        runners = f"warm runners {executor.busy} busy, {executor.idle} idle"
        if executor.starting:
            runners += f", {executor.starting} starting"  # after a recycle, a death, a cancel
    head = Text.assemble(f" {split.worker} · ", (runners, "bold"), (f" · {split.runs} runs", "dim"))
    phases = Text("  ")
    for label, key, style in _PHASES:
        value = split.medians.get(key)
        phases.append(f" {label} ")
        phases.append("—" if value is None else f"{value:.2f}", style=style)
    return [head, phases]


def _label(run: RunView) -> str:
    return f"{run.name} #{run.image_id}" if run.image_id is not None else run.name


def _running(run: RunView, now: float) -> Text:
    elapsed = run.elapsed(now)
    step = run.step or "—"
    return Text.assemble(
        f" {(run.worker or '?'):<10.10} ",
        (f"{step:<8}", STEP_STYLES.get(step, "dim")),
        f" {human_age(elapsed):>7}  ",
        _label(run),
    )


def _failed(run: RunView, now: float) -> Text:
    ago = human_age(now - run.end_time) if run.end_time else "?"
    message = " ".join((run.message or run.state_name).split())
    return Text.assemble(
        f" {ago:>7} ago ",
        (f"{run.state_name:<8} ", "red"),
        f"{_label(run)}: ",
        (message, "dim"),
    )


def _queued(run: RunView, now: float) -> Text:
    since = human_age(now - run.expected_start_time) if run.expected_start_time else "?"
    style = "yellow" if run.state_name == "Late" else ""
    row = Text.assemble((f" {run.state_name:<10}", style), f" due {since:>7} ago  ", _label(run))
    if run.wait_reason:
        row.append(f" · {run.wait_reason}", style="dim")  # why it waits (core/why.py)
    return row


def _finished(run: RunView, now: float) -> Text:
    ago = human_age(now - run.end_time) if run.end_time else "?"
    style = "green" if run.state_type == "COMPLETED" else "dim"
    return Text.assemble(f" {ago:>7} ago ", (f"{run.state_name:<8} ", style), _label(run))
