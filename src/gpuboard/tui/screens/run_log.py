"""A flow run's Prefect logs (`l`), its task runs' included, followed live while it runs;
`v` cycles the lowest level shown, `/` searches (case-insensitive), Escape goes back."""

from __future__ import annotations

from typing import ClassVar
from uuid import UUID

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Input, Label, Log, OptionList
from textual.widgets.option_list import Option

from gpuboard.core.models import RunView
from gpuboard.core.run_logs import LEVELS, LogLine, follow_logs, level_name
from gpuboard.tui.errors import operator_reason

# The lowest levels `v` steps through after "all levels" (0): info, warning, error.
LEVEL_STEPS: tuple[int, ...] = (LEVELS["info"], LEVELS["warning"], LEVELS["error"])


class LogScreen(Screen[None]):
    """The logs of flow run `run_id`; every line is kept, the filters choose what shows."""

    DEFAULT_CSS = """
    #log-screen { height: 1fr; }
    #log-head { height: 1; }
    #log-title { text-style: bold; }
    #log-status { color: $text-muted; }
    #log-search { height: 3; }
    #log-lines { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "leave", "Back", key_display="esc"),
        Binding("v", "next_level", "Level", tooltip="Show from the next level up (cycles)"),
        Binding("slash", "search", "Search", key_display="/", tooltip="Show only lines with text"),
    ]

    def __init__(self, run_id: UUID, *, api_url: str, name: str | None = None) -> None:
        super().__init__()
        self.run_id = run_id
        self.api_url = api_url
        self.run_name = name or str(run_id)
        self.lines: list[LogLine] = []  # every line read, in the order read
        self.min_level = 0
        self.search = ""
        self.following = True  # until the run is final and its log complete

    def compose(self) -> ComposeResult:
        with Vertical(id="log-screen"):
            with Horizontal(id="log-head"):
                yield Label(f"Logs of {self.run_name}", id="log-title")
                yield Label("", id="log-status")
            yield Input(placeholder="search (Enter: apply, Escape: back)", id="log-search")
            yield Log(id="log-lines", highlight=False)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one(Log).focus()
        self._show_status("reading...")
        self._follow()

    @work(exclusive=True, group="log-follow", exit_on_error=False)
    async def _follow(self) -> None:
        from gpuboard.core.prefect.client import async_client

        try:
            async with async_client(self.api_url) as client:
                async for lines in follow_logs(client, self.run_id):
                    self._add(lines)
                    self._show_status("following")
        except Exception as exc:
            self.following = False
            self._show_status(f"cannot read the logs: {operator_reason(exc)}")
            return
        self.following = False
        self._show_status("run finished: end of log")

    def _add(self, lines: list[LogLine]) -> None:
        self.lines.extend(lines)
        log = self.query_one(Log)
        shown = [line.format() for line in lines if self._wanted(line)]
        if shown:
            log.write_lines(shown)

    def _wanted(self, line: LogLine) -> bool:
        return line.level >= self.min_level and (not self.search or line.matches(self.search))

    def shown_lines(self) -> list[str]:
        """The lines the screen shows now, as text (what the filters let through)."""
        return [line.format() for line in self.lines if self._wanted(line)]

    def _redraw(self) -> None:
        log = self.query_one(Log)
        log.clear()
        log.write_lines(self.shown_lines())
        self._show_status("following" if self.following else "run finished: end of log")

    def _show_status(self, what: str) -> None:
        filters = f"level ≥ {level_name(self.min_level)}" if self.min_level else "all levels"
        if self.search:
            filters += f", search {self.search!r}"
        shown = len(self.shown_lines())
        self.query_one("#log-status", Label).update(
            f"  {what} · {filters} · {shown} of {len(self.lines)} lines"
        )

    def action_next_level(self) -> None:
        steps = [level for level in LEVEL_STEPS if level > self.min_level]
        self.min_level = steps[0] if steps else 0
        self._redraw()

    def action_search(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.search = event.value.strip()
        self.query_one(Log).focus()
        self._redraw()

    def action_leave(self) -> None:
        search = self.query_one(Input)
        if search.has_focus:  # Escape in the search box goes back to the log, not the board
            self.query_one(Log).focus()
            return
        self.dismiss(None)


class LogRunPicker(ModalScreen[RunView | None]):
    """The runs the board shows (running, failed, queued): pick one to read its logs."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "leave", "Close")]

    def __init__(self, runs: list[RunView]) -> None:
        super().__init__()
        self.runs = runs

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Logs of which run?", classes="dialog-title")
            yield OptionList(
                *(
                    Option(
                        f"{run.name}  {run.state_name}"
                        + (f"  image {run.image_id}" if run.image_id else "")
                        + (f"  on {run.worker}" if run.worker else ""),
                        id=run.id,
                    )
                    for run in self.runs
                ),
                id="log-runs",
            )
            yield Label("Enter: open its log · Escape: back", classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(next((run for run in self.runs if run.id == event.option.id), None))

    def action_leave(self) -> None:
        self.dismiss(None)
