"""The runs panel: counts by state, then running, failed and next queued runs as space allows."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from gpuboard.core.models import RunCounts, RunView, Snapshot, WorkerView
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


class RunsPanel(Widget):
    """Fills its height: every section gets rows in turn, running runs first."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._data: tuple[Snapshot, float] | None = None

    def show(self, snapshot: Snapshot, now: float) -> None:
        self._data = (snapshot, now)
        self.refresh()

    def render(self) -> Text:
        return Text("\n").join(self.lines(self.size.width, self.size.height))

    def lines(self, width: int, height: int) -> list[Text]:
        if self._data is None or self._data[0].runs is None:
            return [Text("reading runs…", style="dim")]
        snapshot, now = self._data
        assert snapshot.runs is not None
        out = [counts_line(snapshot.runs, width)]
        splits = [
            line
            for split in snapshot.time_splits
            for line in time_lines(split, snapshot.worker(split.worker))
        ]
        sections = [
            *([("Where the time goes (median s, last 10 min)", splits)] if splits else []),
            (f"Running ({snapshot.runs.running})", [_running(r, now) for r in snapshot.running]),
            (
                f"Failed, last hour ({snapshot.runs.failed})",
                [_failed(r, now) for r in snapshot.failures],
            ),
            (
                f"Next queued ({snapshot.runs.queued})",
                [_queued(r, now) for r in snapshot.next_queued],
            ),
        ]
        shares = share_lines(height - 1, [len(rows) for _, rows in sections])
        for (title, rows), share in zip(sections, shares, strict=True):
            if share:
                out.append(Text(title, style="bold underline"))
                out.extend(rows[: share - 1])
        for line in out:
            line.truncate(width, overflow="ellipsis")
        return out


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
