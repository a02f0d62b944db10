"""Limit changes: every typed form, and that nothing out of range gets through."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuboard.core.limits import (
    MAX_LIMIT,
    LimitChange,
    LimitInputError,
    parse_limit_change,
    validate_limit,
)


@pytest.mark.parametrize(
    ("typed", "current", "expected"),
    [("3", 1, 3), ("+1", 2, 3), ("-1", 2, 1), ("pause", 4, 0), (" 0 ", 2, 0), ("PAUSE", 1, 0)],
)
def test_typed_changes_reach_their_target(typed: str, current: int, expected: int) -> None:
    assert parse_limit_change(typed).target(current) == expected


def test_resume_goes_back_to_the_limit_before_the_pause() -> None:
    assert parse_limit_change("resume").target(0, resume_to=4) == 4
    assert parse_limit_change("resume").target(0) == 1
    with pytest.raises(LimitInputError, match="not paused"):
        parse_limit_change("resume").target(3, resume_to=4)


@pytest.mark.parametrize("typed", ["", "abc", "1.5", "+0", "--1", "3x", "10001", "-"])
def test_malformed_input_is_refused_with_a_reason(typed: str) -> None:
    with pytest.raises(LimitInputError):
        parse_limit_change(typed)


def test_lowering_below_zero_is_refused() -> None:
    with pytest.raises(LimitInputError, match="between 0 and"):
        LimitChange("delta", -1).target(0)


@given(st.text(max_size=12))
def test_any_text_parses_or_fails_cleanly(text: str) -> None:
    try:
        change = parse_limit_change(text)
    except LimitInputError:
        return
    if change.kind == "set":
        assert 0 <= change.value <= MAX_LIMIT


@given(st.integers(min_value=-(10**7), max_value=10**7), st.integers(0, MAX_LIMIT))
def test_any_target_is_in_range_or_refused(delta: int, current: int) -> None:
    try:
        new = LimitChange("delta", delta).target(current)
    except LimitInputError:
        assert not 0 <= current + delta <= MAX_LIMIT
    else:
        assert new == validate_limit(current + delta)


def test_default_runs_per_worker_follow_the_cores() -> None:
    from gpuboard.core.sizing import MAX_DEFAULT_RUNS, default_runs_per_worker

    assert default_runs_per_worker(2, workers=2, cores=2) == 3  # measured best here
    assert default_runs_per_worker(2, workers=1, cores=16) == 10
    assert default_runs_per_worker(1, workers=8, cores=8) == 2
    assert default_runs_per_worker(4, workers=1, cores=256) == MAX_DEFAULT_RUNS
