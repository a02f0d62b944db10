"""The live dashboard: polls a snapshot source about once a second and renders it."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import ClassVar

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Container, Vertical
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Footer

from gpuboard.core.board_source import SnapshotSource
from gpuboard.core.models import Snapshot, SourceError
from gpuboard.tui.history import History
from gpuboard.tui.messages import SnapshotReady
from gpuboard.tui.screens.help import HelpScreen
from gpuboard.tui.widgets.banner import Banner
from gpuboard.tui.widgets.gpu_panel import GpuPanel, memory_key
from gpuboard.tui.widgets.runs_panel import RunsPanel
from gpuboard.tui.widgets.status_line import StatusLine
from gpuboard.tui.widgets.workers_table import WorkersTable, slots_key


class GpuBoardApp(App[int]):
    """gpuboard's dashboard for one work pool; every number comes from `source`."""

    CSS_PATH = "app.tcss"
    TITLE = "gpuboard"
    # Below 120 columns the panels stack; from 120 the GPU and runs panels sit side by side.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]  # noqa: RUF012 (typed by Textual)
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit", id="quit", tooltip="Leave the board"),
        Binding("r", "refresh_now", "Refresh", id="refresh", tooltip="Read every source now"),
        Binding(
            "question_mark",
            "help",
            "Help",
            key_display="?",
            id="help",
            tooltip="Keys and what each column means",
        ),
    ]

    def __init__(
        self,
        source: SnapshotSource,
        *,
        pool: str,
        api_url: str,
        refresh: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.source = source
        self.pool = pool
        self.api_url = api_url
        self.refresh_seconds = max(0.2, refresh)
        self.clock = clock
        self.snapshot: Snapshot | None = None
        self.history = History()
        self.snapshots_shown = 0
        self._polling = False

    def compose(self) -> ComposeResult:
        yield StatusLine(self.pool, self.api_url, id="status")
        yield Banner(id="banner")
        with Vertical(id="workers-panel"):
            yield WorkersTable(id="workers")
        with Container(id="lower"):
            yield GpuPanel(id="gpus")
            yield RunsPanel(id="runs")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#workers-panel").border_title = "Workers"
        self.query_one("#gpus").border_title = "GPU memory"
        self.query_one("#runs").border_title = "Runs"
        self.poll()
        self.set_interval(self.refresh_seconds, self.poll)

    async def on_unmount(self) -> None:
        await self.source.aclose()

    # -- polling ---------------------------------------------------------------------

    def poll(self) -> None:
        """Start a read unless one is still running: refreshes never overlap or pile up."""
        if self._polling:
            self._tick()
            return
        self._polling = True
        self._read_source()

    @work(exclusive=True, group="poll", exit_on_error=False)
    async def _read_source(self) -> None:
        try:
            snapshot = await self.source.read()
        except Exception as exc:  # a source must not raise; if one does, the board stays up
            snapshot = self._failed_read(exc)
        finally:
            self._polling = False
        self.post_message(SnapshotReady(snapshot))

    def _failed_read(self, exc: Exception) -> Snapshot:
        error = SourceError("board", f"reading the sources failed: {type(exc).__name__}: {exc}")
        if self.snapshot is None:
            return Snapshot(self.pool, self.api_url, taken_at=self.clock(), errors=(error,))
        return dataclasses.replace(self.snapshot, taken_at=self.clock(), errors=(error,))

    def on_snapshot_ready(self, message: SnapshotReady) -> None:
        self.snapshot = snapshot = message.snapshot
        self._remember(snapshot)
        try:
            self._show(snapshot)
        except NoMatches:
            # A read that ends while the board closes finds its widgets already removed.
            if self.is_running:
                raise

    def _show(self, snapshot: Snapshot) -> None:
        now = self.clock()
        stale = snapshot.stale
        for panel_id in ("#workers-panel", "#runs"):
            panel = self.query_one(panel_id)
            panel.set_class(stale and snapshot.prefect_read_at is not None, "-stale")
            age = snapshot.prefect_age()
            panel.border_subtitle = f" stale · {age:.0f}s old " if stale and age else ""
        if snapshot.prefect_read_at is not None:
            if not snapshot.workers and not stale:
                hint = f"no worker in pool {snapshot.pool} yet: start one with `gpuboard worker`"
                self.query_one("#workers-panel").border_subtitle = hint
            self.query_one(WorkersTable).show(snapshot, self.history, now)
            self.query_one(RunsPanel).show(snapshot, now)
        self.query_one(GpuPanel).show(snapshot, self.history, now)
        self.snapshots_shown += 1
        self._tick()

    def _remember(self, snapshot: Snapshot) -> None:
        if snapshot.stale:
            return  # old data must not extend the history as if it were new
        keys = set()
        for worker in snapshot.workers:
            if worker.gcl is not None:
                keys.add(slots_key(worker.name))
                self.history.add(slots_key(worker.name), snapshot.taken_at, worker.gcl.active_slots)
        for reading in snapshot.gpu_readings:
            for gpu in reading.gpus:
                keys.add(memory_key(gpu))
                self.history.add(memory_key(gpu), gpu.sampled_at, gpu.memory_used)
        self.history.forget_except(keys)

    def _tick(self) -> None:
        """Refresh what depends on the clock alone: the status line and the banner."""
        now = self.clock()
        self.query_one(StatusLine).show(self.snapshot, now)
        self.query_one(Banner).show(self.snapshot, now, self.refresh_seconds)

    # -- actions -----------------------------------------------------------------------

    def action_refresh_now(self) -> None:
        self.poll()

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.key_help()))

    def key_help(self) -> list[tuple[str, str]]:
        """(key, description) of every binding the board offers, for the help screen."""
        keys = [("ctrl+p", "Command palette: every action by name")]
        for binding in self._own_bindings():
            keys.append(
                (binding.key_display or binding.key, binding.tooltip or binding.description)
            )
        return keys

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        # Every key of the board is also a command in the palette (ctrl+p).
        for binding in self._own_bindings():
            if binding.action != "quit":
                yield SystemCommand(
                    binding.description,
                    binding.tooltip or binding.description,
                    partial(self.run_action, binding.action),
                )
        yield from super().get_system_commands(screen)

    def _own_bindings(self) -> list[Binding]:
        table = self.query(WorkersTable)
        found = [b for b in self.BINDINGS if isinstance(b, Binding)]
        if table:
            found += [b for b in table.first().BINDINGS if isinstance(b, Binding) and b.show]
        return found


def run_dashboard(pool: str, refresh: float, api_url: str | None) -> int:
    """Open the board on `pool` (the entry point of a bare `gpuboard`); returns the exit status."""
    from gpuboard.core.board_source import BoardSource
    from gpuboard.core.config import configured_api_url
    from gpuboard.core.nvml_source import NvmlSource

    url = (api_url or configured_api_url()).rstrip("/")
    app = GpuBoardApp(
        BoardSource(pool, url, nvml=NvmlSource()), pool=pool, api_url=url, refresh=refresh
    )
    result = app.run()
    return result if isinstance(result, int) else (app.return_code or 0)
