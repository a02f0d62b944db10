"""The runs panel shares its lines between sections: running first, every section titled."""

from __future__ import annotations

from gpuboard.core.models import RunCounts
from gpuboard.tui.widgets.runs_panel import counts_line, share_lines


def test_each_section_gets_a_row_in_turn() -> None:
    # 10 lines, three sections with plenty of rows: titles + rows handed out in turn.
    assert share_lines(10, [50, 50, 50]) == [4, 3, 3]
    assert sum(share_lines(10, [50, 50, 50])) == 10


def test_empty_sections_keep_their_title_only_and_leave_the_rest() -> None:
    assert share_lines(10, [3, 0, 1]) == [4, 1, 2]


def test_too_little_room_shows_what_fits() -> None:
    assert share_lines(1, [5, 5, 5]) == [0, 0, 0]  # a title alone would say nothing
    assert share_lines(3, [5, 0, 5]) == [2, 1, 0]
    assert share_lines(0, [5]) == [0]


def test_counts_line_drops_its_breakdowns_when_narrow() -> None:
    runs = RunCounts(scheduled=3, late=1, pending=2, running=4, completed=9, failed=2, crashed=1)
    wide = counts_line(runs, 200).plain
    assert "(sched 3 · late 1 · pending 2)" in wide and "(1 crashed)" in wide
    narrow = counts_line(runs, 50).plain
    assert narrow == "queued 6  running 4  last hour ✓ 9  ✗ 2"
