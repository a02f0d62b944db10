"""Sizes, ages, bars and sparklines as the board and `gpuboard status` print them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gpuboard.core.text_format import SPARKS, bar, human_age, human_bytes, sparkline
from gpuboard.tui.history import History


def test_human_bytes() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(80 * 1024**3) == "80.0 GiB"
    assert human_bytes(141 * 1024**3) == "141 GiB"
    assert human_bytes(None) == "n/a"


def test_human_age() -> None:
    assert human_age(0.42) == "0.4s"
    assert human_age(12.4) == "12s"
    assert human_age(185) == "3m05s"
    assert human_age(7800) == "2h10m"
    assert human_age(3 * 86400) == "3d"
    assert human_age(None) == "never"


@given(st.floats(min_value=-1, max_value=2), st.integers(min_value=0, max_value=60))
def test_bar_is_always_its_width(fraction: float, width: int) -> None:
    assert len(bar(fraction, width)) == width


def test_bar_fills_in_eighths() -> None:
    assert bar(0.5, 4) == "██  "
    assert bar(1.0, 3) == "███"
    assert bar(0.0, 3) == "   "
    assert bar(0.5, 1) == "▌"


def test_sparkline_scales_to_top_and_leaves_unknown_blank() -> None:
    assert sparkline([None, 0, 2, 4], 4, top=4) == " ▁▅█"
    assert sparkline([1, 2, 3], 5) == "  ▃▆█"  # right-aligned, scaled to the max
    assert sparkline([5, 5], 2, top=0) == SPARKS[0] * 2


def test_history_buckets_hold_the_last_value_and_the_max_of_a_slice() -> None:
    history = History(span=100)
    for at, value in [(10, 1), (20, 3), (25, 2), (70, 0)]:
        history.add("k", at, value)
    history.add("k", 70, 9)  # the same sample again: ignored
    assert history.buckets("k", now=100, width=4) == [3, 2, 0, 0]
    # Before the first sample there is nothing to draw.
    assert history.buckets("k", now=150, width=2) == [0, 0]
    assert history.buckets("unknown", now=100, width=3) == [None, None, None]
    history.add("k", 500, 4)  # everything older than the span is forgotten
    assert history.buckets("k", now=500, width=2) == [None, 4]
    history.forget_except(set())
    assert history.buckets("k", now=500, width=1) == [None]
