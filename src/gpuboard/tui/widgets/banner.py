"""The banner that says, in one sentence, which source fails and what the board does about it."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from gpuboard.core.models import Snapshot
from gpuboard.core.text_format import human_age


class Banner(Static):
    """Hidden while every source answers; otherwise names the failure and the data's age."""

    def show(self, snapshot: Snapshot | None, now: float, refresh: float) -> None:
        errors = snapshot.errors if snapshot is not None else ()
        self.set_class(bool(errors), "-visible")
        self.set_class(snapshot is not None and not snapshot.connected, "-unreachable")
        if snapshot is None or not errors:
            self.update("")
            return
        text = Text()
        for error in errors:
            if text:
                text.append("\n")
            text.append("⚠ ", style="bold")
            text.append(error.message)
        if any(e.source == "prefect" for e in errors):
            if snapshot.prefect_read_at is None:
                text.append(" · nothing to show yet")
            else:
                old = human_age(now - snapshot.prefect_read_at)
                text.append(f" · showing data from {old} ago, marked stale")
            text.append(f" · retrying every {refresh:g}s", style="dim")
        self.update(text)
