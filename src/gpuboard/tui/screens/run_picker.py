"""Picks one of the queued runs the board shows (`c`), to cancel it."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from gpuboard.core.models import RunView


class QueuedRunPicker(ModalScreen[RunView | None]):
    """Up/down and Enter select a queued run; Escape leaves."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "leave", "Close")]

    def __init__(self, runs: tuple[RunView, ...]) -> None:
        super().__init__()
        self.runs = runs

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Cancel which queued run?", classes="dialog-title")
            yield OptionList(
                *(
                    Option(f"{run.name}  image {run.image_id or '?'}  {run.state_name}", id=run.id)
                    for run in self.runs
                ),
                id="queued",
            )
            yield Label("Enter: cancel it (asks first) · Escape: back", classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        chosen = next((run for run in self.runs if run.id == event.option.id), None)
        self.dismiss(chosen)

    def action_leave(self) -> None:
        self.dismiss(None)
