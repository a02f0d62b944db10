"""The timeline's intervals and lanes: packing inferences onto a worker's slots, slot waits,
live holders, and where each lands on the screen's columns."""

from __future__ import annotations

import itertools

from gpuboard.core.host.state import HostState, SlotHolder
from gpuboard.core.run_timings import RunTimings
from gpuboard.core.timeline import (
    Span,
    build_timelines,
    columns_of,
    pack_lanes,
    waiters_per_column,
)


def span(start: float, end: float, run: str = "r") -> Span:
    return Span(start, end, run)


def timing(run: str, worker: str, began: float, ended: float, wait: float = 0.0) -> RunTimings:
    return RunTimings(
        run, worker, "warm", ended + 0.1, 0.0, 0.0, 0.1, wait, ended - began, 0.1, began, ended
    )


def test_overlapping_inferences_take_separate_lanes_and_touching_ones_share() -> None:
    lanes = pack_lanes([span(0, 10, "a"), span(2, 5, "b"), span(5, 8, "c"), span(10, 12, "d")], 2)
    assert [[s.flow_run_id for s in lane] for lane in lanes] == [["a", "d"], ["b", "c"]]


def test_lanes_are_at_least_the_slots_and_more_only_when_inferences_overlap_more() -> None:
    assert pack_lanes([], 3) == ((), (), ())
    lanes = pack_lanes([span(0, 4, "a"), span(1, 4, "b"), span(2, 4, "c")], 2)
    assert len(lanes) == 3 and [s.flow_run_id for s in lanes[2]] == ["c"]


def test_no_two_spans_of_a_lane_overlap() -> None:
    spans = [span(i * 0.7 % 9, i * 0.7 % 9 + 1.3, str(i)) for i in range(40)]
    for lane in pack_lanes(spans, 4):
        for before, after in itertools.pairwise(lane):
            assert before.end <= after.start


def test_build_takes_reports_waits_and_the_hosts_live_holders() -> None:
    now = 1000.0
    timings = [
        timing("a", "gpu-1", 900, 910, wait=5),
        timing("b", "gpu-1", 905, 915),
        timing("old", "gpu-1", 100, 110, wait=2),  # before the window
        timing("x", "elsewhere", 900, 910),  # not a worker of the pool
    ]
    holder = SlotHolder("lease", 7, "task", "live", held_since=990.0)
    hosts = {"gpu-1": HostState("gpu-1", "ready", now, queued=3, holders=(holder,))}
    (one, two) = build_timelines(timings, hosts, {"gpu-1": 2, "gpu-2": None}, now - 300, now)
    assert one.worker == "gpu-1" and one.slots == 2 and one.inferences == 3
    assert one.waiting_now == 3 and one.extra_lanes == 0
    live = [s for lane in one.lanes for s in lane if s.ongoing]
    assert [(s.flow_run_id, s.image_id, s.start, s.end) for s in live] == [("live", "7", 990, now)]
    assert [(w.flow_run_id, w.start, w.end) for w in one.waits] == [("a", 895, 900)]
    assert two.worker == "gpu-2" and two.slots is None and two.lanes == ()


def test_an_old_report_without_its_inference_window_is_placed_back_from_its_end() -> None:
    old = RunTimings("a", "gpu-1", "process", 100.0, None, None, None, 1.0, 2.0, 0.5)
    assert old.inference_window() == (97.5, 99.5)
    assert RunTimings.from_payload(old.to_payload()) == old


def test_columns_and_waiters_per_column() -> None:
    assert columns_of(span(0, 10), 0, 100, 10) == (0, 0)
    assert columns_of(span(50, 100), 0, 100, 10) == (5, 9)
    assert columns_of(span(-50, 5), 0, 100, 10) == (0, 0)
    assert columns_of(span(100, 120), 0, 100, 10) is None
    assert columns_of(span(33, 33.1), 0, 100, 10) == (3, 3)  # a short one still shows
    waits = [span(0, 30), span(20, 40)]
    assert waiters_per_column(waits, 0, 100, 10) == [1, 1, 2, 1, 0, 0, 0, 0, 0, 0]


def test_busy_fraction_is_slot_time_used() -> None:
    (timeline,) = build_timelines(
        [timing("a", "w", 0, 50), timing("b", "w", 0, 100)], {}, {"w": 2}, 0, 100
    )
    assert timeline.busy_fraction(0, 100) == 0.75
