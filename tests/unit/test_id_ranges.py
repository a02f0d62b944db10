"""Id selections such as `1-20,40,45-50`."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuboard.core.id_ranges import IdRangeError, ids_from_start, parse_id_ranges


def test_ranges_and_single_ids_in_written_order() -> None:
    assert parse_id_ranges("1-3, 7,5-6") == [1, 2, 3, 7, 5, 6]


def test_repeated_ids_are_kept_once() -> None:
    assert parse_id_ranges("1-3,2,3-4") == [1, 2, 3, 4]


@pytest.mark.parametrize("typed", ["", " ", "1-", "-3", "a", "3-1", "1,,2", "1-2-3", "1.5"])
def test_malformed_selections_name_the_problem(typed: str) -> None:
    with pytest.raises(IdRangeError):
        parse_id_ranges(typed)


def test_huge_range_is_refused_without_expanding_it() -> None:
    with pytest.raises(IdRangeError, match="more than"):
        parse_id_ranges("1-999999999999")


def test_start_and_count() -> None:
    assert ids_from_start(40, 3) == [40, 41, 42]
    with pytest.raises(IdRangeError):
        ids_from_start(1, 0)


@given(st.lists(st.tuples(st.integers(0, 500), st.integers(0, 30)), min_size=1, max_size=8))
def test_parsed_ids_are_exactly_the_union(ranges: list[tuple[int, int]]) -> None:
    text = ",".join(f"{a}-{a + n}" if n else str(a) for a, n in ranges)
    ids = parse_id_ranges(text)
    expected = {i for a, n in ranges for i in range(a, a + n + 1)}
    assert len(ids) == len(set(ids))
    assert set(ids) == expected


@given(st.text(max_size=20))
def test_any_text_parses_or_fails_cleanly(text: str) -> None:
    try:
        ids = parse_id_ranges(text)
    except IdRangeError:
        return
    assert ids and all(i >= 0 for i in ids)
