"""The holders screen (`h`): who holds each GPU slot, which holders are dead, which Running
or Pending runs have no live process; `x` releases a dead holder's slot, `k` marks a stale
Running run Crashed (`K`: all shown), `s` puts a stuck Pending run back to Scheduled, each
after a y/n. Read every couple of seconds while open."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import ClassVar, TypeVar
from uuid import UUID

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label

from gpuboard.core.holders import (
    HoldersView,
    HostHolding,
    RunRemedy,
    release_dead_holder,
    release_silent_host_slot,
    remedy_run,
)
from gpuboard.core.host.state import HostState
from gpuboard.core.reclaim import PENDING_STUCK_AFTER_S, Holder, StaleRun
from gpuboard.core.text_format import human_age
from gpuboard.tui.errors import operator_reason
from gpuboard.tui.screens.confirm_dialog import ConfirmDialog

READ_EVERY_S = 2.0
_Row = TypeVar("_Row")


class HoldersScreen(Screen[None]):
    """Slot holders per GCL and stale runs, from `read` (a `read_holders` call)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,h", "leave", "Back", key_display="esc"),
        Binding("x", "release", "Release", tooltip="Release the selected dead holder's slot"),
        Binding("k", "mark_crashed", "Crashed", tooltip="Mark the selected stale run Crashed"),
        Binding(
            "K",
            "mark_all_crashed",
            "All crashed",
            key_display="K",
            tooltip="Mark every stale run shown Crashed (asks first, with the number)",
        ),
        Binding("s", "reschedule", "Reschedule", tooltip="Put the selected stuck Pending run back"),
        Binding("r", "read", "Refresh", tooltip="Read the holders now"),
        Binding("tab", "app.focus_next", "Next table", show=False),
    ]
    WRITE_ACTIONS = frozenset({"release", "mark_crashed", "mark_all_crashed", "reschedule"})

    def __init__(
        self,
        read: Callable[[], Awaitable[HoldersView]],
        *,
        api_url: str,
        pool: str,
        read_only: bool = False,
        host_states: Callable[[], Mapping[str, HostState]] | None = None,
    ) -> None:
        super().__init__()
        self.read = read
        self.host_states = host_states
        self.api_url = api_url
        self.pool = pool
        self.read_only = read_only
        self.view: HoldersView | None = None
        self._holders: dict[str, tuple[str, Holder]] = {}  # row key -> (gcl, holder)
        self._stale: dict[str, StaleRun] = {}  # row key (flow run id) -> stale run
        self._host_holdings: dict[str, HostHolding] = {}  # row key -> an inference host's slot
        self._reading = False

    def compose(self) -> ComposeResult:
        with Vertical(id="holders-body"):
            yield Label(f"GPU slot holders · pool {self.pool}", classes="dialog-title")
            yield DataTable(id="slot-holders", cursor_type="row", zebra_stripes=True)
            yield Label("", id="holders-note")
            yield Label("Runs with no live process", classes="dialog-title")
            yield DataTable(id="stale-runs", cursor_type="row", zebra_stripes=True)
            yield Label("reading…", id="holders-status", classes="dialog-hint")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        slots = self.query_one("#slot-holders", DataTable)
        slots.add_columns("GCL", "Flow run", "Run state", "Held for", "Holder")
        stale = self.query_one("#stale-runs", DataTable)
        stale.add_columns("Flow run", "Worker", "State", "For", "Last heartbeat", "Why")
        slots.focus()
        self.action_read()
        self.set_interval(READ_EVERY_S, self.action_read)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if self.read_only and action in self.WRITE_ACTIONS:
            return None  # greyed in the footer
        return True

    # -- reading -------------------------------------------------------------------------

    def action_read(self) -> None:
        if not self._reading:
            self._reading = True
            self._read()

    @work(group="holders-read", exit_on_error=False)
    async def _read(self) -> None:
        try:
            view = await self.read()
        except Exception as exc:  # shown, kept on screen, read again next interval
            self._show_status(f"reading failed: {operator_reason(exc)}", error=True)
            return
        finally:
            self._reading = False
        if self.is_attached:
            self.show(view)

    def show(self, view: HoldersView) -> None:
        """Render `view`, keeping each table's cursor on the same row where it still is."""
        self.view = view
        self._holders = {
            f"{report.gcl}|{holder.record.lease_id}": (report.gcl, holder)
            for report in view.gcls
            for holder in report.holders
        }
        self._stale = {str(run.flow_run.id): run for run in view.stale.stale}
        self._host_holdings = {
            f"{held.gcl}|host|{held.holder.lease_id}": held for held in view.hosts
        }
        now = view.read_at
        rows = {key: _holder_row(gcl, holder, now) for key, (gcl, holder) in self._holders.items()}
        rows.update({key: _host_row(held, now) for key, held in self._host_holdings.items()})
        _fill(self.query_one("#slot-holders", DataTable), rows)
        _fill(
            self.query_one("#stale-runs", DataTable),
            {key: _stale_row(run, now) for key, run in self._stale.items()},
        )
        notes = [
            f"{report.gcl}: {view.unaccounted_slots(report)} slot(s) held with no published"
            " lease (back when the lease expires)"
            for report in view.gcls
            if view.unaccounted_slots(report)
        ]
        if not self._holders and not self._host_holdings:
            notes.insert(0, "no slot is held" if not view.errors else "")
        self.query_one("#holders-note", Label).update("\n".join(n for n in notes if n))
        dead = sum(holder.dead for _, holder in self._holders.values())
        holding = len(self._holders) + len(self._host_holdings)
        summary = (
            f"{holding} holder(s), {dead} dead · {len(self._stale)} stale run(s)"
            f" (Running: no heartbeat for {view.stale_after_s:.0f} s; Pending: stuck"
            f" {PENDING_STUCK_AFTER_S:.0f} s; at once where the process is seen gone)"
        )
        self._show_status("; ".join(view.errors) or summary, error=bool(view.errors))

    def _show_status(self, text: str, *, error: bool) -> None:
        if not self.is_attached:
            return
        status = self.query_one("#holders-status", Label)
        status.update(text)
        status.set_class(error, "-invalid")

    # -- the remedies ---------------------------------------------------------------------

    def _refused_read_only(self, what: str) -> bool:
        """True (and the operator told) where this board is read-only: the palette reaches
        actions whose keys are greyed."""
        if self.read_only:
            self.notify(f"read-only: {what} is disabled", severity="warning")
        return self.read_only

    def action_release(self) -> None:
        if self._refused_read_only("releasing a slot"):
            return
        hosted = self._selected("#slot-holders", self._host_holdings)
        if hosted is not None:
            self._release_host_slot(hosted)
            return
        selected = self._selected("#slot-holders", self._holders)
        if selected is None:
            self.notify("no slot holder selected", severity="warning")
            return
        gcl, holder = selected
        if not holder.dead:
            self.notify(f"not released: {holder.reason}", severity="warning")
            return
        run = holder.flow_run.name if holder.flow_run else str(holder.record.flow_run_id or "?")
        question = f"Release the {gcl} slot held by {run} ({holder.reason})?"

        def confirmed(yes: bool | None) -> None:
            if yes:
                self._release(gcl, holder.record.lease_id, run)

        self.app.push_screen(ConfirmDialog(question), confirmed)

    def _release_host_slot(self, held: HostHolding) -> None:
        """A live host gives its slots back itself; a silent one's (its worker died) can
        be released here, after a question."""
        if held.host_live:
            self.notify(f"not released: held by the {held.reason}", severity="warning")
            return
        run = held.flow_run.name if held.flow_run else str(held.holder.flow_run_id or "?")
        question = f"Release the {held.gcl} slot its silent host held for {run}?"

        def confirmed(yes: bool | None) -> None:
            if yes:
                self._release_from_host(held, run)

        self.app.push_screen(ConfirmDialog(question), confirmed)

    @work(group="holders-act", exit_on_error=False)
    async def _release_from_host(self, held: HostHolding, run: str) -> None:
        try:
            release = await release_silent_host_slot(
                held.gcl,
                UUID(held.holder.lease_id),
                self.host_states().get(held.worker) if self.host_states else None,
                api_url=self.api_url,
                read_only=self.read_only,
            )
        except Exception as exc:
            self.notify(f"slot not released: {operator_reason(exc)}", severity="error")
            return
        if release.error:
            self.notify(f"slot not released: {release.error}", severity="warning")
        else:
            self.notify(f"{held.gcl}: the slot held for {run} is back in service")
        self.action_read()

    @work(group="holders-act", exit_on_error=False)
    async def _release(self, gcl: str, lease_id: UUID, run: str) -> None:
        try:
            release = await release_dead_holder(
                gcl, lease_id, api_url=self.api_url, read_only=self.read_only
            )
        except Exception as exc:
            self.notify(f"slot not released: {operator_reason(exc)}", severity="error")
            return
        if release.error:
            self.notify(f"slot not released: {release.error}", severity="warning")
        elif release.was_held:
            self.notify(f"{gcl}: the slot of {run} is back in service")
        else:
            self.notify(f"{gcl}: the slot of {run} was already free; its record is removed")
        self.action_read()

    def action_mark_crashed(self) -> None:
        if self._refused_read_only("marking a run Crashed"):
            return
        run = self._selected_stale()
        if run is None:
            return
        if run.flow_run.state_type == "PENDING":
            self.notify(f"{run.flow_run.name} is Pending: s puts it back to Scheduled")
            return
        self._ask(f"Mark {run.flow_run.name} Crashed ({run.reason})?", "mark-crashed", [run])

    def action_reschedule(self) -> None:
        if self._refused_read_only("rescheduling a run"):
            return
        run = self._selected_stale()
        if run is None:
            return
        if run.flow_run.state_type != "PENDING":
            self.notify(f"{run.flow_run.name} is {run.flow_run.state_name}: only a Pending run")
            return
        name = run.flow_run.name
        self._ask(
            f"Put {name} back to Scheduled for any worker to take ({run.reason})?",
            "reschedule",
            [run],
        )

    def _ask(self, question: str, remedy: RunRemedy, runs: list[StaleRun]) -> None:
        def confirmed(yes: bool | None) -> None:
            if yes:
                self._remedy(remedy, runs)

        self.app.push_screen(ConfirmDialog(question), confirmed)

    @work(group="holders-act", exit_on_error=False)
    async def _remedy(self, remedy: RunRemedy, runs: list[StaleRun]) -> None:
        """Exactly the runs the question named: a run flagged since is not touched."""
        done: list[str] = []
        refused: list[str] = []
        for run in runs:
            name = run.flow_run.name
            try:
                mark = await remedy_run(
                    remedy,
                    run.flow_run.id,
                    run.reason,
                    name=name,
                    api_url=self.api_url,
                    read_only=self.read_only,
                )
            except Exception as exc:
                refused.append(f"{name}: {operator_reason(exc)}")
                continue
            if mark.marked:
                done.append(name)
            else:
                refused.append(f"{name}: {mark.detail} (it is {mark.state_name or 'gone'})")
        if done and remedy == "mark-crashed":
            self.notify(f"Crashed now: {', '.join(done)}; their slots, if any, can be released")
        elif done:
            self.notify(f"Scheduled again: {', '.join(done)}; the next free worker takes them")
        if refused:
            self.notify("not changed: " + "; ".join(refused), severity="warning", timeout=10)
        self.action_read()

    def _selected_stale(self) -> StaleRun | None:
        run = self._selected("#stale-runs", self._stale)
        if run is None:
            self.notify("no stale run selected (Tab moves to its table)", severity="warning")
        return run

    def action_mark_all_crashed(self) -> None:
        if self._refused_read_only("marking runs Crashed"):
            return
        runs = [run for run in self._stale.values() if run.flow_run.state_type == "RUNNING"]
        if not runs:
            self.notify("no stale Running run to mark", severity="warning")
            return
        self._ask(f"Mark all {len(runs)} stale Running runs shown Crashed?", "mark-crashed", runs)

    def _selected(self, table_id: str, rows: dict[str, _Row]) -> _Row | None:
        table = self.query_one(table_id, DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return rows.get(key or "")

    def action_leave(self) -> None:
        self.dismiss(None)


def _fill(table: DataTable[str | Text], rows: dict[str, tuple[str | Text, ...]]) -> None:
    """Replace the table's rows with `rows`, the cursor staying on its row's key."""
    selected = None
    if table.row_count:
        selected = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
    table.clear()
    for key, cells in rows.items():
        table.add_row(*cells, key=key)
    if selected in rows:
        table.move_cursor(row=table.get_row_index(selected))


def _holder_row(gcl: str, holder: Holder, now: float) -> tuple[str | Text, ...]:
    record = holder.record
    run = holder.flow_run
    verdict = (
        Text(f"DEAD: {holder.reason}", style="bold red")
        if holder.dead
        else Text(f"alive: {holder.reason}", style="green")
    )
    return (
        gcl,
        run.name if run else str(record.flow_run_id or "?"),
        run.state_name if run else "?",
        human_age(now - record.acquired_at),
        verdict,
    )


def _host_row(held: HostHolding, now: float) -> tuple[str | Text, ...]:
    run = held.flow_run
    verdict = Text(
        ("held: " if held.host_live else "host silent: ") + held.reason,
        style="green" if held.host_live else "yellow",
    )
    return (
        held.gcl,
        run.name if run else str(held.holder.flow_run_id or "?"),
        run.state_name if run else "?",
        human_age(held.holder.held_for(now)),
        verdict,
    )


def _stale_row(run: StaleRun, now: float) -> tuple[str | Text, ...]:
    since = run.flow_run.state_since
    return (
        run.flow_run.name,
        run.flow_run.worker or "?",
        run.flow_run.state_name,
        human_age(now - since) if since else "?",
        human_age(now - run.last_heartbeat) + " ago" if run.last_heartbeat else "none seen",
        Text(run.reason, style="bold red" if run.process_gone else "yellow"),
    )
