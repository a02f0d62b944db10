"""Retry (`R`): pick a batch with failed or crashed runs, confirm, then read the report."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList, Static
from textual.widgets.option_list import Option

from gpuboard.core.retry import BatchFailures


def describe(batch: BatchFailures) -> str:
    counts = ((batch.failed, "failed"), (batch.crashed, "crashed"))
    parts = [f"{n} {what}" for n, what in counts if n]
    return f"{batch.batch}  ({', '.join(parts)})"


class RetryBatchPicker(ModalScreen[BatchFailures | None]):
    """The batches with runs to retry, with their counts; `preselect` starts highlighted."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "leave", "Close")]

    def __init__(self, batches: list[BatchFailures], preselect: str | None = None) -> None:
        super().__init__()
        self.batches = batches
        self.preselect = preselect

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Retry the failed and crashed runs of which batch?", classes="dialog-title")
            yield OptionList(
                *(Option(describe(b), id=f"batch-{n}") for n, b in enumerate(self.batches)),
                id="batches",
            )
            yield Label("Enter: retry it (asks first) · Escape: back", classes="dialog-hint")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.focus()
        names = [b.batch for b in self.batches]
        if self.preselect in names:
            options.highlighted = names.index(self.preselect)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.batches[event.option_index])

    def action_leave(self) -> None:
        self.dismiss(None)


class ReportScreen(ModalScreen[None]):
    """A report to read (what a retry did), scrollable; Escape or Enter closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,enter", "close", "Close", key_display="esc")
    ]

    def __init__(self, title: str, text: str) -> None:
        super().__init__()
        self.title_text = title
        self.text = text

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            with VerticalScroll(id="report-body"):
                yield Static(self.text, id="report", markup=False)
            yield Label("Escape / Enter: close", classes="dialog-hint")

    def action_close(self) -> None:
        self.dismiss(None)
