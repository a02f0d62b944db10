"""The top line: which API and pool, whether it answers, how fresh the board is."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from gpuboard.core.models import Snapshot
from gpuboard.core.text_format import human_age


class StatusLine(Widget):
    """API URL and pool on the left; connection, refresh age and refresh cost on the right."""

    DEFAULT_CSS = """
    StatusLine { height: 1; }
    """

    def __init__(self, pool: str, api_url: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.pool = pool
        self.api_url = api_url
        self.snapshot: Snapshot | None = None
        self.now = 0.0

    def show(self, snapshot: Snapshot | None, now: float) -> None:
        self.snapshot, self.now = snapshot, now
        self.refresh()

    def render(self) -> Text:
        width = self.size.width
        left, right = self._where(short=False), self._state(cost=True)
        if left.cell_len + right.cell_len + 1 > width:  # narrow: drop the least useful first
            left = self._where(short=True)
        if left.cell_len + right.cell_len + 1 > width:
            right = self._state(cost=False)
        left.truncate(max(0, width - right.cell_len - 1), overflow="ellipsis")
        gap = max(1, width - left.cell_len - right.cell_len)
        return Text.assemble(left, " " * gap, right)

    def _where(self, *, short: bool) -> Text:
        url = self.api_url
        if short:  # http://127.0.0.1:4200/api -> 127.0.0.1:4200
            url = url.split("://", 1)[-1].removesuffix("/api")
            return Text.assemble(("gpuboard", "bold"), " · ", (self.pool, "bold"), " · ", url)
        return Text.assemble(("gpuboard", "bold"), " · pool ", (self.pool, "bold"), " · ", url)

    def _state(self, *, cost: bool) -> Text:
        snapshot = self.snapshot
        if snapshot is None:
            return Text("connecting…", style="yellow")
        if not snapshot.connected:
            state = Text("● unreachable", style="bold red")
        elif not snapshot.prefect_ok:
            state = Text("● API error", style="bold yellow")
        else:
            state = Text("● connected", style="bold green")
        state.append(" · ")
        if snapshot.prefect_read_at is None:
            state.append("no data yet", style="yellow")
        elif snapshot.stale:
            state.append(f"data {human_age(self.now - snapshot.prefect_read_at)} old", style="red")
        else:
            state.append(f"updated {human_age(self.now - snapshot.prefect_read_at)} ago")
        if cost:
            spent = snapshot.cost
            state.append(f" · {spent.api_calls} req {spent.api_ms:.0f} ms", style="dim")
        return state
