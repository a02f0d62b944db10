"""Waiting on a board driven by Textual's Pilot."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.pilot import Pilot


async def until(pilot: Pilot[int], condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Let the board run until `condition()` holds; fail with a clear message if it never does."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"the board never reached the expected state in {timeout:.0f}s")
        await pilot.pause(0.1)
