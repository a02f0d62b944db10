"""Shows the progress of a long CLI action on stderr: a bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

_BAR_WIDTH = 30
_REDRAW_S = 0.1  # a terminal redraw at most this often: 1,000 fast steps stay cheap
_PLAIN_STEPS = 10  # plain lines: about one per tenth of the work


class ProgressLine:
    """`update(done, total, detail)` after each step, `close()` at the end.

    On a terminal one line is redrawn in place (`[####------] 120/1000 detail 45/s`); in a
    log or pipe a line is written about every tenth of the work and at the end, so a log
    is not flooded with carriage returns.
    """

    def __init__(self, stream: TextIO | None = None, *, interactive: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self._started = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False
        self._last_plain = -1

    def update(self, done: int, total: int, detail: str = "", *, force: bool = False) -> None:
        if self.interactive:
            now = time.monotonic()
            if force or done == total or now - self._last_draw >= _REDRAW_S:
                self._last_draw = now
                self._drawn = True
                self.stream.write("\r" + self.render(done, total, detail) + "\x1b[K")
                self.stream.flush()
            return
        step = max(1, total // _PLAIN_STEPS)
        if force or done == total or done // step != self._last_plain:
            self._last_plain = done // step
            self.stream.write(f"  {done}/{total} {detail}".rstrip() + "\n")
            self.stream.flush()

    def render(self, done: int, total: int, detail: str) -> str:
        filled = _BAR_WIDTH * done // total if total else _BAR_WIDTH
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = f"{done / elapsed:.1f}/s"
        return f"[{'#' * filled}{'-' * (_BAR_WIDTH - filled)}] {done}/{total} {detail} {rate}"

    def close(self) -> None:
        if self.interactive and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
