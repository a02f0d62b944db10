"""Sizes from the machine: flow runs per worker, inference threads per host, memory sizes."""

from __future__ import annotations

import pytest

from gpuboard.core.sizing import (
    default_runs_per_worker,
    inference_threads_per_worker,
    parse_size,
)


def test_each_host_gets_its_share_of_the_cores() -> None:
    assert inference_threads_per_worker(2, cores=2) == 1
    assert inference_threads_per_worker(1, cores=16) == 16
    assert inference_threads_per_worker(3, cores=16) == 5
    assert inference_threads_per_worker(8, cores=2) == 1  # never below one


def test_runs_per_worker_follow_the_cores() -> None:
    assert default_runs_per_worker(2, workers=2, cores=2) == 3
    assert default_runs_per_worker(2, workers=1, cores=16) == 10


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("8GiB", 8 << 30),
        ("512 MiB", 512 << 20),
        ("1.5g", int(1.5 * (1 << 30))),
        ("2000000000", 2_000_000_000),
        ("4GB", 4_000_000_000),
    ],
)
def test_sizes_parse(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GiB", "-1GiB", "0", "8 parsecs", "1e400GiB"])
def test_bad_sizes_say_why(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a size|unknown unit|above 0"):
        parse_size(text)
