"""The workers table: one selectable row per worker with its slots, steps, inference host,
advice and trend."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from gpuboard.core.models import Snapshot, WorkerView
from gpuboard.core.text_format import bar, human_age, sparkline
from gpuboard.tui.history import History

# (key, header) of each column, in order.
COLUMNS = (
    ("worker", "Worker"),
    ("status", "Status"),
    ("slots", "GPU slots"),
    ("waiting", "Wait"),
    ("download", "DL"),
    ("host", "Host"),
    ("infer", "Inf"),
    ("save", "Save"),
    ("fits", "Fits"),
    ("trend", "Last 5 min"),
)


# Longer worker names are cut with an ellipsis, so the table fits 80 columns.
NAME_WIDTH = 12


def slots_key(worker: str) -> str:
    """The History key of a worker's slots in use."""
    return f"slots:{worker}"


class WorkersTable(DataTable[Text]):
    """Rows keyed by worker name, so the cursor stays on its worker across refreshes."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)  # type: ignore[arg-type]
        self._widths = (0, 0)
        self._last: tuple[Snapshot, History, float] | None = None

    def on_mount(self) -> None:
        self._add_columns()

    @property
    def selected_worker(self) -> str | None:
        """The worker under the cursor; the target of the operator's actions."""
        if not self.row_count:
            return None
        row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        return None if row_key.value is None else str(row_key.value)

    def on_resize(self) -> None:
        if self._last is not None:
            self.show(*self._last)

    def show(self, snapshot: Snapshot, history: History, now: float) -> None:
        self._last = (snapshot, history, now)
        widths = self._cell_widths()
        if widths != self._widths:
            # Wider terminals get longer bars and sparklines: rebuild with the new sizes.
            self._widths = widths
            self.clear(columns=True)
            self._add_columns()
        names = [w.name for w in snapshot.workers]
        current = [str(row.value) for row in self.rows]
        data_at = snapshot.prefect_read_at or now
        if names == current:
            for worker in snapshot.workers:
                cells = self._cells(worker, history, now, data_at)
                for (key, _), cell in zip(COLUMNS, cells, strict=True):
                    # Most cells are the same from one second to the next; redrawing only
                    # the changed ones halves the board's idle CPU.
                    if self.get_cell(worker.name, key) != cell:
                        self.update_cell(worker.name, key, cell, update_width=True)
            return
        selected = self.selected_worker
        self.clear()
        for worker in snapshot.workers:
            self.add_row(*self._cells(worker, history, now, data_at), key=worker.name)
        if selected in names:
            self.move_cursor(row=names.index(selected))

    def _add_columns(self) -> None:
        for key, label in COLUMNS:
            self.add_column(label, key=key)

    def _cell_widths(self) -> tuple[int, int]:
        """(slot bar, sparkline) widths: the bar grows a little, the sparkline takes the rest."""
        spare = max(0, self.size.width - 78)
        bar_width = 6 + min(14, spare // 5)
        # Everything but the trend: names up to NAME_WIDTH, status 7, slots bar + " 10/10",
        # four counts, the host's state (7), fits, and one cell of padding either side of
        # each column.
        others = NAME_WIDTH + 7 + bar_width + 6 + 4 + 2 + 7 + 3 + 4 + 4 + 2 * len(COLUMNS)
        return bar_width, max(10, self.size.width - others - 1)

    def _cells(self, w: WorkerView, history: History, now: float, snapshot_at: float) -> list[Text]:
        bar_width, trend_width = self._widths
        capped = "+" if w.counts_capped else ""

        def count(value: int, style: str = "") -> Text:
            return Text(f"{value}{capped}", style=style if value else "dim", justify="right")

        # Stale data: the heartbeat ages keep growing with the data's age.
        late = max(0.0, now - snapshot_at)
        return [
            _name(w),
            _status(w, late),
            _slots(w, bar_width),
            count(w.waiting, "bold yellow"),
            count(w.downloading, "cyan"),
            _host(w, now),
            count(w.inferring, "green"),
            count(w.saving, "blue"),
            _fits(w),
            _trend(w, history, now, trend_width),
        ]


def _name(w: WorkerView) -> Text:
    name = w.name if len(w.name) <= NAME_WIDTH else w.name[: NAME_WIDTH - 1] + "…"
    return Text(name, style="" if w.in_pool else "dim")


def _status(w: WorkerView, late: float) -> Text:
    if not w.in_pool:
        return Text("gone", style="dim")
    if w.drain_state is not None:
        # Taking no new runs (key d): the state says more than the heartbeat's age; red
        # when the worker is offline too.
        return Text(w.drain_state, style="bold magenta" if w.online else "bold red")
    age = human_age(w.heartbeat_age + late) if w.heartbeat_age is not None else "?"
    if w.online:
        return Text.assemble(("● ", "green"), age)
    return Text.assemble(("○ ", "bold red"), (age, "red"))


# How each state of an inference host reads in its cell (at most 7 cells wide).
_HOST_CELLS = {
    "ready": ("ready", "green"),
    "loading": ("loading", "yellow"),
    "starting": ("start", "yellow"),
    "restarting": ("restart", "bold red"),
    "failed": ("FAILED", "bold red"),
    "stopped": ("stopped", "dim"),
}


def _host(w: WorkerView, now: float) -> Text:
    """The worker's inference host: ready, loading, restarting...; dim when not heard of
    lately; a dash for a worker without one (a plain Prefect worker)."""
    host = w.host
    if host is None:
        return Text("—", style="dim")
    label, style = _HOST_CELLS.get(host.status, (host.status[:7], ""))
    return Text(label, style="dim" if host.stale(now) else style)


def _slots(w: WorkerView, width: int) -> Text:
    gcl = w.gcl
    if gcl is None or not gcl.active:
        # No GCL, or a disabled one: the GPU step runs unlimited (the help says which).
        return Text("UNPROTECTED", style="bold red")
    if gcl.paused:
        held = f" ({gcl.active_slots})" if gcl.active_slots else ""
        return Text.assemble(("PAUSED", "bold black on yellow"), held)
    full = gcl.active_slots >= gcl.limit
    return Text.assemble(
        (bar(gcl.active_slots / gcl.limit, width), "yellow" if full else "green"),
        (f" {gcl.active_slots}/{gcl.limit}", "bold" if full else ""),
    )


def _fits(w: WorkerView) -> Text:
    """How many inferences fit in the GPU's memory; red when the limit admits more."""
    advice = w.advice
    if advice is None:
        return Text("—", style="dim", justify="right")
    if advice.over_limit:
        return Text(f"⚠ {advice.fits}", style="bold red", justify="right")
    return Text(str(advice.fits), style="green", justify="right")


def _trend(w: WorkerView, history: History, now: float, width: int) -> Text:
    values = history.buckets(slots_key(w.name), now, width)
    top = max([w.limit or 0, *[v for v in values if v is not None]])
    return Text(sparkline(values, width, top=float(top) or None), style="green")
