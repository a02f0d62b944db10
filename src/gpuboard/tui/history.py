"""Recent values per key (slots in use, GPU memory) for the board's sparklines."""

from __future__ import annotations

from collections import deque

# The sparklines cover the last five minutes.
SPAN_SECONDS = 300.0


class History:
    """Timestamped values per key, forgotten after `span` seconds."""

    def __init__(self, span: float = SPAN_SECONDS) -> None:
        self.span = span
        self._series: dict[str, deque[tuple[float, float]]] = {}

    def add(self, key: str, at: float, value: float) -> None:
        """Record `value` at time `at`; a repeated time (the same GPU sample again) is ignored."""
        series = self._series.setdefault(key, deque())
        if series and at <= series[-1][0]:
            return
        series.append((at, value))
        while series and series[0][0] < at - self.span:
            series.popleft()

    def buckets(self, key: str, now: float, width: int) -> list[float | None]:
        """`width` values over the last span ending at `now`: each the most seen in its slice.

        A slice with no sample holds the value before it (slots and memory stay put between
        samples); slices before the first sample are None, drawn blank.
        """
        if width <= 0:
            return []
        series = self._series.get(key, deque())
        start = now - self.span
        step = self.span / width
        out: list[float | None] = [None] * width
        previous: float | None = None
        samples = iter(series)
        pending = next(samples, None)
        while pending is not None and pending[0] < start:
            previous = pending[1]
            pending = next(samples, None)
        for index in range(width):
            # The last slice takes everything up to now, a sample taken this instant included.
            end = start + step * (index + 1) if index < width - 1 else float("inf")
            seen: list[float] = []
            while pending is not None and pending[0] < end:
                seen.append(pending[1])
                pending = next(samples, None)
            if seen:
                out[index] = max(seen)
                previous = seen[-1]
            else:
                out[index] = previous
        return out

    def forget_except(self, keys: set[str]) -> None:
        """Drop the series of keys no longer shown (workers removed, machines gone)."""
        for key in list(self._series):
            if key not in keys:
                del self._series[key]
