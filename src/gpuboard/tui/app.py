"""The live dashboard: polls a snapshot source about once a second and renders it."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable, Hashable, Iterable
from functools import partial
from typing import ClassVar

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Container, Vertical
from textual.css.query import NoMatches
from textual.events import Key
from textual.screen import Screen
from textual.widgets import Footer, Input

from gpuboard.core.board_source import SnapshotSource
from gpuboard.core.config import DEPLOYMENT_FULL_NAME
from gpuboard.core.host.state import HostState
from gpuboard.core.idle import IDLE_AFTER_READS, IDLE_READ_EVERY_S, fingerprint
from gpuboard.core.models import RunView, Snapshot, SourceError
from gpuboard.core.run_filter import RunFilter, RunFilterError, parse_run_filter
from gpuboard.core.run_timings import RunTimings
from gpuboard.tui.errors import operator_reason
from gpuboard.tui.history import History
from gpuboard.tui.messages import SnapshotReady
from gpuboard.tui.screens.batch_dialog import BatchDialog
from gpuboard.tui.screens.confirm_dialog import ConfirmDialog
from gpuboard.tui.screens.help import HelpScreen
from gpuboard.tui.screens.holders import HoldersScreen
from gpuboard.tui.screens.number_dialog import LimitDialog
from gpuboard.tui.screens.retry_dialog import ReportScreen, RetryBatchPicker
from gpuboard.tui.screens.run_log import LogRunPicker, LogScreen
from gpuboard.tui.screens.run_picker import QueuedRunPicker
from gpuboard.tui.widgets.banner import Banner
from gpuboard.tui.widgets.gpu_panel import GpuPanel, memory_key
from gpuboard.tui.widgets.runs_panel import RunsPanel
from gpuboard.tui.widgets.status_line import StatusLine
from gpuboard.tui.widgets.workers_table import WorkersTable, slots_key

FILTER_HINT = "filter runs: text  state:failed  worker:gpu-1  batch:NAME  (enter keeps, esc clears)"


# The states of a run that has not started: what `c` cancels.
QUEUED_TYPES = ("SCHEDULED", "PENDING")


class GpuBoardApp(App[int]):
    """gpuboard's dashboard for one work pool; every number comes from `source`."""

    CSS_PATH = "app.tcss"
    TITLE = "gpuboard"
    # Below 120 columns the panels stack; from 120 the GPU and runs panels sit side by side.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]  # noqa: RUF012 (typed by Textual)
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit", id="quit", tooltip="Leave the board"),
        # Not in the footer (80 columns are scarce): `?` and the palette list it.
        Binding(
            "r", "refresh_now", "Refresh", id="refresh", tooltip="Read every source now", show=False
        ),
        Binding(
            "question_mark",
            "help",
            "Help",
            key_display="?",
            id="help",
            tooltip="Keys and what each column means",
        ),
        Binding(
            "plus",
            "raise_limit",
            "Up",
            key_display="+",
            id="raise",
            tooltip="Raise the selected worker's GPU limit by one",
        ),
        Binding(
            "minus",
            "lower_limit",
            "Down",
            key_display="-",
            id="lower",
            tooltip="Lower the selected worker's GPU limit by one (0 pauses)",
        ),
        Binding(
            "equals_sign",
            "set_limit",
            "Set",
            key_display="=",
            id="set-limit",
            tooltip="Set the selected worker's GPU limit to an exact value",
        ),
        Binding(
            "n",
            "new_limit",
            "New",
            id="new-limit",
            tooltip="Give the selected worker without a GPU limit one",
        ),
        Binding(
            "d",
            "drain",
            "Drain",
            id="drain",
            tooltip="Drain the selected worker (no new runs, its runs finish), or undrain it",
        ),
        Binding("b", "batch", "Batch", id="batch", tooltip="Submit a batch of process-image runs"),
        Binding(
            "c",
            "cancel_run",
            "Cancel",
            id="cancel-run",
            tooltip="Cancel the queued run selected in the runs panel, else pick one shown",
        ),
        Binding(
            "h",
            "holders",
            "Holders",
            id="holders",
            tooltip="Who holds each GPU slot: release a dead holder's, mark a stale run Crashed",
        ),
        Binding(
            "slash",
            "filter_runs",
            "Filter",
            key_display="/",
            id="filter-runs",
            show=False,
            tooltip="Filter the runs: text (name, image id), state:failed worker:gpu-1 "
            "batch:NAME image:42; esc clears",
        ),
        Binding(
            "t",
            "timeline",
            "Timeline",
            id="timeline",
            show=False,
            tooltip="Per worker, one lane per GPU slot: inferences and slot waits of the "
            "last minutes",
        ),
        Binding(
            "R",
            "retry_batch",
            "Retry",
            key_display="R",
            id="retry-batch",
            tooltip="Run the failed and crashed runs of a batch again (pick the batch, confirm)",
            show=False,  # 80 columns are scarce: `?` and the palette list it
        ),
        Binding(
            "l",
            "run_logs",
            "Logs",
            id="run-logs",
            tooltip="The selected run's Prefect logs, followed live (else pick a run shown)",
            show=False,  # 80 columns are scarce: `?` and the palette list it
        ),
        Binding(
            "C",
            "cancel_queued",
            "Cancel all",
            key_display="C",
            id="cancel-queued",
            tooltip="Cancel every queued run of the pool (asks first, with the number)",
        ),
    ]
    # The actions that change the server: disabled (greyed in the footer) when read-only.
    WRITE_ACTIONS = frozenset(
        {
            "raise_limit",
            "lower_limit",
            "set_limit",
            "new_limit",
            "batch",
            "cancel_run",
            "cancel_queued",
            "drain",
            "retry_batch",
        }
    )

    # Every board key but quit and help: they act on the board's rows.
    BOARD_ONLY_ACTIONS = WRITE_ACTIONS | {
        "refresh_now",
        "holders",
        "filter_runs",
        "timeline",
        "run_logs",
    }

    def __init__(
        self,
        source: SnapshotSource,
        *,
        pool: str,
        api_url: str,
        refresh: float = 1.0,
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
        deployment: str = DEPLOYMENT_FULL_NAME,
        stale_after_s: float | None = None,
        pending_after_s: float | None = None,
    ) -> None:
        super().__init__()
        # A Running run is stale after this long without a heartbeat (None: three of
        # gpuboard workers' heartbeat periods, see reclaim.default_stale_after_s); a
        # Pending one after this long Pending (None: reclaim.PENDING_STUCK_AFTER_S).
        self.stale_after_s = stale_after_s
        self.pending_after_s = pending_after_s
        self.read_only = read_only
        self.deployment = deployment
        # Limits shown before the server confirms them: worker -> (limit, confirmed at).
        # A change in flight has `inf`; once written, the next snapshot read after that
        # moment replaces the optimistic value with the server's.
        self.limit_overrides: dict[str, tuple[int, float]] = {}
        self._limit_lock = asyncio.Lock()
        self.source = source
        self.pool = pool
        self.api_url = api_url
        self.refresh_seconds = max(0.2, refresh)
        self.clock = clock
        self.snapshot: Snapshot | None = None
        self.history = History()
        self.snapshots_shown = 0
        self._polling = False
        self._read_at = 0.0  # monotonic time the last read started
        self._fingerprint: Hashable = None  # what the last read showed, clocks left out
        self._unchanged_reads = 0
        self.run_filter = RunFilter()

    def compose(self) -> ComposeResult:
        yield StatusLine(self.pool, self.api_url, id="status")
        yield Banner(id="banner")
        with Vertical(id="workers-panel"):
            yield WorkersTable(id="workers")
        with Container(id="lower"):
            yield GpuPanel(id="gpus")
            yield RunsPanel(id="runs")
        # Disabled while hidden: it must not take the focus (nor the keys) from the board.
        yield Input(placeholder=FILTER_HINT, id="run-filter", select_on_focus=False, disabled=True)
        # The palette (ctrl+p) is listed under `?`: its footer entry costs two keys at 80 cols.
        yield Footer(compact=True, show_command_palette=False)

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
        """Start a read unless one is still running: refreshes never overlap or pile up.
        While nothing has changed for a while, read only every IDLE_READ_EVERY_S."""
        idle = self._unchanged_reads >= IDLE_AFTER_READS
        if self._polling or (idle and time.monotonic() - self._read_at < IDLE_READ_EVERY_S):
            self._tick()
            return
        self._polling = True
        self._read_at = time.monotonic()
        self._read_source()

    def wake(self) -> None:
        """Back to the configured refresh at once (a key, a change made from here)."""
        was_idle = self._unchanged_reads >= IDLE_AFTER_READS
        self._unchanged_reads = 0
        if was_idle:
            self.poll()

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
        seen = fingerprint(message.snapshot)
        self._unchanged_reads = self._unchanged_reads + 1 if seen == self._fingerprint else 0
        self._fingerprint = seen
        self.snapshot = snapshot = message.snapshot
        self._remember(snapshot)
        if not snapshot.stale:
            self.limit_overrides = {
                worker: (limit, confirmed)
                for worker, (limit, confirmed) in self.limit_overrides.items()
                if confirmed >= snapshot.taken_at
            }
        try:
            self._show(self._with_overrides(snapshot))
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

    # -- operator actions: every one refused in read-only mode ------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # The board's keys act on the board: on another screen (holders) they are off
        # and out of its footer (False), except quit and help.
        if action in self.BOARD_ONLY_ACTIONS and self.screen is not self.screen_stack[0]:
            return False
        # None disables the binding: the footer shows it greyed, the key does nothing.
        if self.read_only and action in self.WRITE_ACTIONS:
            return None
        return True

    def _refuse_read_only(self, what: str) -> None:
        self.notify(f"read-only: {what} is disabled on this board", severity="warning")

    def _selected_worker(self) -> str | None:
        worker = self.query_one(WorkersTable).selected_worker
        if worker is None:
            self.notify("no worker selected", severity="warning")
        return worker

    def _shown_limit(self, worker: str) -> int | None:
        """The worker's limit as the board shows it (a pending change included)."""
        if worker in self.limit_overrides:
            return self.limit_overrides[worker][0]
        view = (
            next((w for w in self.snapshot.workers if w.name == worker), None)
            if (self.snapshot)
            else None
        )
        if view is None or view.gcl is None or not view.gcl.active:
            return None
        return view.gcl.limit

    def action_raise_limit(self) -> None:
        self._step_limit(+1)

    def action_lower_limit(self) -> None:
        self._step_limit(-1)

    def _limit_target(self) -> tuple[str, int] | None:
        """The selected worker and its limit as shown, or None (the operator is told why)."""
        worker = self._selected_worker()
        if worker is None:
            return None
        current = self._shown_limit(worker)
        if current is None:
            self.notify(
                f"{worker} has no active GPU limit: press n to create one", severity="warning"
            )
            return None
        return worker, current

    def _step_limit(self, delta: int) -> None:
        selected = self._limit_target()
        if selected is None:
            return
        worker, current = selected
        target = current + delta
        if target < 0:
            self.notify(f"{worker} is paused already (limit 0)", severity="warning")
            return
        self._set_limit(worker, target)

    def action_set_limit(self) -> None:
        selected = self._limit_target()
        if selected is None:
            return
        worker, current = selected

        def chosen(value: int | None) -> None:
            if value is not None and value != current:
                self._set_limit(worker, value)

        self.push_screen(LimitDialog(f"GPU limit of {worker}", current), chosen)

    def _set_limit(self, worker: str, target: int) -> None:
        from gpuboard.core.limits import LimitInputError, validate_limit

        try:
            validate_limit(target)
        except LimitInputError as exc:
            self.notify(str(exc), severity="error")
            return
        self.limit_overrides[worker] = (target, math.inf)
        self._redraw()
        self._write_limit(worker, target)

    @work(group="limits", exit_on_error=False)
    async def _write_limit(self, worker: str, target: int) -> None:
        from gpuboard.core.limit_actions import change_worker_limit
        from gpuboard.core.limits import LimitChange
        from gpuboard.core.prefect.client import async_client

        async with self._limit_lock:  # presses apply in order, each on the last one's result
            try:
                async with async_client(self.api_url) as client:
                    outcome = await change_worker_limit(
                        client, worker, LimitChange("set", target), read_only=self.read_only
                    )
            except Exception as exc:
                if self.limit_overrides.get(worker, (None,))[0] == target:
                    self.limit_overrides.pop(worker, None)
                self._redraw()
                self.notify(
                    f"{worker}: limit not changed: {operator_reason(exc)}",
                    severity="error",
                    timeout=8,
                )
                return
        if self.limit_overrides.get(worker, (None,))[0] == target:
            self.limit_overrides[worker] = (target, self.clock())
        self.notify(outcome.message)
        self.wake()
        self.poll()

    def _redraw(self) -> None:
        if self.snapshot is not None:
            self._show(self._with_overrides(self.snapshot))

    def _with_overrides(self, snapshot: Snapshot) -> Snapshot:
        if not self.limit_overrides:
            return snapshot
        workers = tuple(
            dataclasses.replace(
                w, gcl=dataclasses.replace(w.gcl, limit=self.limit_overrides[w.name][0])
            )
            if w.gcl is not None and w.name in self.limit_overrides
            else w
            for w in snapshot.workers
        )
        return dataclasses.replace(snapshot, workers=workers)

    def action_new_limit(self) -> None:
        worker = self._selected_worker()
        if worker is None:
            return
        view = (
            next((w for w in self.snapshot.workers if w.name == worker), None)
            if (self.snapshot)
            else None
        )
        if view is not None and view.gcl is not None:
            self.notify(f"{worker} has a GPU limit already: use + - =", severity="warning")
            return

        def chosen(value: int | None) -> None:
            if value is not None:
                self._create_limit(worker, value)

        self.push_screen(
            LimitDialog(
                f"New GPU limit for {worker}",
                1,
                hint="How many inferences may run on its GPU at once",
            ),
            chosen,
        )

    @work(group="limits", exit_on_error=False)
    async def _create_limit(self, worker: str, limit: int) -> None:
        from gpuboard.core.limit_actions import create_worker_gcl
        from gpuboard.core.prefect.client import async_client

        try:
            async with async_client(self.api_url) as client:
                state = await create_worker_gcl(client, worker, limit, read_only=self.read_only)
        except Exception as exc:
            self.notify(
                f"{worker}: no GCL created: {operator_reason(exc)}", severity="error", timeout=8
            )
            return
        self.notify(f"{state.name} created with limit {state.limit}")
        self.poll()

    def action_batch(self) -> None:
        def done(report: object) -> None:
            if report is not None:
                self.poll()

        self.push_screen(
            BatchDialog(api_url=self.api_url, deployment=self.deployment, read_only=self.read_only),
            done,
        )

    def action_cancel_run(self) -> None:
        selected = self.selected_run()
        if selected is not None and selected.state_type in QUEUED_TYPES:
            self._confirm_cancel(selected)
            return
        queued = self.snapshot.next_queued if self.snapshot else ()
        if not queued:
            self.notify("no queued run to cancel", severity="warning")
            return

        def picked(run: RunView | None) -> None:
            if run is not None:
                self._confirm_cancel(run)

        self.push_screen(QueuedRunPicker(queued), picked)

    def _confirm_cancel(self, run: RunView) -> None:
        def confirmed(yes: bool | None) -> None:
            if yes:
                self._cancel_one(run)

        self.push_screen(ConfirmDialog(f"Cancel {run.name} (image {run.image_id})?"), confirmed)

    @work(group="cancel", exit_on_error=False)
    async def _cancel_one(self, run: RunView) -> None:
        from uuid import UUID

        from gpuboard.core.cancel import cancel_run

        try:
            outcome = await cancel_run(UUID(run.id), api_url=self.api_url, read_only=self.read_only)
        except Exception as exc:
            self.notify(
                f"{run.name} not cancelled: {operator_reason(exc)}", severity="error", timeout=8
            )
            return
        if outcome.status == "cancelled":
            self.notify(f"{run.name} cancelled")
        else:
            self.notify(f"{run.name} not cancelled: {outcome.reason}", severity="warning")
        self.poll()

    def action_cancel_queued(self) -> None:
        self._ask_cancel_queued()

    @work(group="cancel", exit_on_error=False)
    async def _ask_cancel_queued(self) -> None:
        from gpuboard.core.cancel import cancel_runs, queued_run_ids

        try:
            run_ids = await queued_run_ids(self.pool, api_url=self.api_url)
        except Exception as exc:
            self.notify(f"cannot read the queued runs: {operator_reason(exc)}", severity="error")
            return
        if not run_ids:
            self.notify(f"no queued run in pool {self.pool}")
            return
        question = f"Cancel all {len(run_ids)} queued runs of pool {self.pool}?"
        if not await self.push_screen_wait(ConfirmDialog(question)):
            return
        try:
            # Exactly the runs counted in the question: runs queued since are not touched.
            outcomes = await cancel_runs(
                run_ids, api_url=self.api_url, target=f"pool {self.pool}", read_only=self.read_only
            )
        except Exception as exc:
            self.notify(f"cancelling failed: {operator_reason(exc)}", severity="error", timeout=8)
            return
        cancelled = sum(o.status == "cancelled" for o in outcomes)
        started = sum(o.status == "not-queued" for o in outcomes)
        failed = sum(o.status == "failed" for o in outcomes)
        self.notify(
            f"cancelled {cancelled} of {len(run_ids)}"
            + (f"; {started} had started and keep running" if started else "")
            + (f"; {failed} failed" if failed else ""),
            severity="error" if failed else "information",
        )
        self.poll()

    def action_drain(self) -> None:
        worker = self._selected_worker()
        if worker is not None:
            self._ask_drain(worker)

    @work(group="drain", exit_on_error=False)
    async def _ask_drain(self, worker: str) -> None:
        from gpuboard.core.drain import drain_worker, undrain_worker

        view = self.snapshot.worker(worker) if self.snapshot else None
        drain = view is None or not view.drained
        if drain:
            runs = view.runs_in_hand if view is not None else 0
            others = [
                w.name
                for w in (self.snapshot.workers if self.snapshot else ())
                if w.online and w.in_pool and not w.drained and w.name != worker
            ]
            question = (
                f"Drain {worker}? It takes no new flow runs; its {runs} run(s) finish there; "
                + (
                    f"queued runs go to {', '.join(others)}."
                    if others
                    else f"no other worker of pool {self.pool} takes runs: queued runs wait."
                )
            )
        else:
            question = f"Undrain {worker}? It takes flow runs again."
        if not await self.push_screen_wait(ConfirmDialog(question)):
            return
        action = drain_worker if drain else undrain_worker
        try:
            outcome = await action(
                worker, pool=self.pool, api_url=self.api_url, read_only=self.read_only
            )
        except Exception as exc:
            verb = "drained" if drain else "undrained"
            self.notify(f"{worker} not {verb}: {operator_reason(exc)}", severity="error", timeout=8)
            return
        self.notify(outcome.message, timeout=8)
        self.poll()

    # -- selecting and filtering runs -----------------------------------------------------

    def selected_run(self) -> RunView | None:
        """The run under the runs panel's cursor: the target of the board's run actions."""
        return self.query_one(RunsPanel).selected_run()

    def action_filter_runs(self) -> None:
        field = self.query_one("#run-filter", Input)
        field.disabled = False
        field.add_class("-visible")
        field.value = self.run_filter.source
        field.cursor_position = len(field.value)
        field.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id != "run-filter":
            return
        try:
            run_filter = parse_run_filter(event.value)
        except RunFilterError as exc:
            event.input.border_subtitle = str(exc)
            event.input.add_class("-invalid-filter")
            return  # the last good filter stays until this one reads
        event.input.remove_class("-invalid-filter")
        self._apply_filter(run_filter)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "run-filter":
            self._close_filter()
            self.query_one(RunsPanel).focus()

    def on_key(self, event: Key) -> None:
        self.wake()
        if event.key != "escape":
            return
        field = self.query_one("#run-filter", Input)
        panel = self.query_one(RunsPanel)
        if self.focused is field or (self.focused is panel and self.run_filter.active):
            event.stop()
            self._apply_filter(RunFilter())
            self._close_filter()
            panel.focus()

    def _close_filter(self) -> None:
        field = self.query_one("#run-filter", Input)
        field.remove_class("-visible")
        field.remove_class("-invalid-filter")
        field.disabled = True

    def _apply_filter(self, run_filter: RunFilter) -> None:
        if run_filter == self.run_filter:
            return
        self.run_filter = run_filter
        panel = self.query_one(RunsPanel)
        panel.set_filter(run_filter)
        panel.border_title = f"Runs · /{run_filter.source}" if run_filter.active else "Runs"
        # The source reads what the filter matches beyond the refresh's short lists.
        set_source_filter = getattr(self.source, "set_run_filter", None)
        if set_source_filter is not None:
            set_source_filter(run_filter if run_filter.active else None)
        self.wake()
        self.poll()

    def action_timeline(self) -> None:
        from gpuboard.tui.screens.timeline import TimelineScreen

        self.push_screen(TimelineScreen(self._read_run_timings, self._timeline_context))

    async def _read_run_timings(self, since: float) -> list[RunTimings]:
        from gpuboard.core.prefect.client import async_client
        from gpuboard.core.timeline import read_run_timings

        async with async_client(self.api_url) as client:
            return await read_run_timings(client, since)

    def _timeline_context(self) -> tuple[dict[str, HostState], dict[str, int | None]]:
        """The hosts' live states and the pool's workers' limits, from the latest snapshot."""
        workers = self.snapshot.workers if self.snapshot else ()
        limits = {w.name: (None if w.unprotected else w.limit) for w in workers if w.in_pool}
        return self._host_states(), limits

    def action_retry_batch(self, batch: str | None = None) -> None:
        """Ask which batch to retry (`batch`, else the selected run's, preselected), confirm,
        retry it and show the report."""
        selected = self.selected_run()
        self._retry_batch(batch or (selected.batch if selected else None))

    @work(group="retry", exit_on_error=False)
    async def _retry_batch(self, preselect: str | None) -> None:
        from gpuboard.core.retry import batches_to_retry, format_retry_report, retry_batch

        if self.read_only:  # the key is off; the palette and callers land here
            self._refuse_read_only("Retry")
            return
        try:
            batches = await batches_to_retry(api_url=self.api_url, pool=self.pool)
        except Exception as exc:
            self.notify(f"cannot read the failed runs: {operator_reason(exc)}", severity="error")
            return
        if not batches:
            self.notify(f"no batch of pool {self.pool} has failed or crashed runs")
            return
        chosen = await self.push_screen_wait(RetryBatchPicker(batches, preselect))
        if chosen is None:
            return
        question = f"Retry the {chosen.total} failed and crashed runs of batch {chosen.batch}?"
        if not await self.push_screen_wait(ConfirmDialog(question)):
            return
        try:
            report = await retry_batch(chosen.batch, api_url=self.api_url, read_only=self.read_only)
        except Exception as exc:
            self.notify(f"retry failed: {operator_reason(exc)}", severity="error", timeout=8)
            return
        self.poll()
        await self.push_screen_wait(
            ReportScreen(
                f"Retried batch {chosen.batch}: {len(report.requeued)} re-queued",
                format_retry_report(report),
            )
        )

    def action_run_logs(self) -> None:
        """Open the selected run's logs; with none selected, pick one of the runs shown."""
        selected = self.selected_run()
        if selected is not None:
            self.open_run_logs(selected)
            return
        runs = self._runs_shown()
        if not runs:
            self.notify("no run on the board to show the logs of", severity="warning")
            return

        def picked(run: RunView | None) -> None:
            if run is not None:
                self.open_run_logs(run)

        self.push_screen(LogRunPicker(runs), picked)

    def open_run_logs(self, run: RunView | str) -> None:
        """Open the log screen of `run` (a RunView or a flow run id), following it live."""
        from uuid import UUID

        if isinstance(run, RunView):
            self.push_screen(LogScreen(UUID(run.id), api_url=self.api_url, name=run.name))
        else:
            self.push_screen(LogScreen(UUID(str(run)), api_url=self.api_url))

    def _runs_shown(self) -> list[RunView]:
        """The runs the board lists: running, latest failures, next queued; each once."""
        if self.snapshot is None:
            return []
        runs: dict[str, RunView] = {}
        for run in (*self.snapshot.running, *self.snapshot.failures, *self.snapshot.next_queued):
            runs.setdefault(run.id, run)
        return list(runs.values())

    def action_holders(self) -> None:
        from gpuboard.core.config import gcl_name
        from gpuboard.core.holders import read_holders

        workers = self.snapshot.workers if self.snapshot else ()
        gcls = [gcl_name(w.name) for w in workers if w.gcl is not None]
        # The workers on this machine and in this PID namespace: their runs' processes are
        # visible here, so a dead one is seen at once rather than after missed heartbeats.
        readings = self.snapshot.gpu_readings if self.snapshot else ()
        local = {w for reading in readings if reading.local for w in reading.workers_sharing_pids}
        read = partial(
            read_holders,
            gcls,
            self.pool,
            api_url=self.api_url,
            local_workers=local,
            stale_after_s=self.stale_after_s,
            pending_after_s=self.pending_after_s,
            host_states=self._host_states,
        )
        self.push_screen(
            HoldersScreen(
                read,
                api_url=self.api_url,
                pool=self.pool,
                read_only=self.read_only,
                host_states=self._host_states,
            )
        )

    def _host_states(self) -> dict[str, HostState]:
        """The inference hosts as the latest snapshot has them (live from the websocket)."""
        workers = self.snapshot.workers if self.snapshot else ()
        return {w.name: w.host for w in workers if w.host is not None}

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
                    partial(self._refuse_read_only, binding.description)
                    if self.read_only and binding.action in self.WRITE_ACTIONS
                    else partial(self.run_action, binding.action),
                )
        yield from super().get_system_commands(screen)

    def _own_bindings(self) -> list[Binding]:
        table = self.query(WorkersTable)
        found = [b for b in self.BINDINGS if isinstance(b, Binding)]
        if table:
            found += [b for b in table.first().BINDINGS if isinstance(b, Binding) and b.show]
        return found


def run_dashboard(pool: str, refresh: float, api_url: str | None, read_only: bool = False) -> int:
    """Open the board on `pool` (the entry point of a bare `gpuboard`); returns the exit status."""
    from gpuboard.core.board_source import BoardSource
    from gpuboard.core.config import configured_api_url
    from gpuboard.core.nvml_source import NvmlSource

    url = (api_url or configured_api_url()).rstrip("/")
    app = GpuBoardApp(
        BoardSource(pool, url, nvml=NvmlSource()),
        pool=pool,
        api_url=url,
        refresh=refresh,
        read_only=read_only,
    )
    result = app.run()
    return result if isinstance(result, int) else (app.return_code or 0)
