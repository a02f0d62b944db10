"""A dialog that asks for one GPU-slot limit, checks it where it is typed, returns it or None."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label

from gpuboard.core.limits import LimitInputError, validate_limit


def parse_limit_text(text: str) -> int:
    """The limit typed, or LimitInputError saying what is wrong with it."""
    cleaned = text.strip()
    if not cleaned.isdigit() or len(cleaned) > 6:
        raise LimitInputError(
            f"{cleaned!r} is not a whole number: give 0–10000 (0 pauses)"
            if cleaned
            else "type a limit: 0–10000 (0 pauses)"
        )
    return validate_limit(int(cleaned))


class LimitDialog(ModalScreen[int | None]):
    """Enter applies a valid limit, Escape leaves; an invalid one shows why and sends nothing."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss_none", "Cancel")]

    def __init__(self, title: str, initial: int | None, hint: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.initial = "" if initial is None else str(initial)
        self.hint = hint

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            if self.hint:
                yield Label(self.hint, classes="dialog-hint")
            yield Input(self.initial, placeholder="0–10000 (0 pauses)", id="limit", compact=True)
            yield Label("Enter applies · Escape cancels", id="reason", classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self._check(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        value = self._check(event.value)
        if value is not None:
            self.dismiss(value)

    def _check(self, text: str) -> int | None:
        reason = self.query_one("#reason", Label)
        try:
            value = parse_limit_text(text)
        except LimitInputError as exc:
            reason.update(f"✗ {exc}")
            reason.set_class(True, "-invalid")
            return None
        reason.update(f"Enter sets the limit to {value}" + (" (pause)" if value == 0 else ""))
        reason.set_class(False, "-invalid")
        return value

    def action_dismiss_none(self) -> None:
        self.dismiss(None)
